#!/usr/bin/env python
"""Check the fast causal text path against open_clip's own on any model and device.

Compares, on real ImageNet-21K-P class names:
  1. `Prompt.init(words="a photo of a")` class features (fast path) with `model.encode_text`;
  2. random-context features and the context gradient, fast path on vs off;
in fp32, and under autocast (bf16 on CUDA) where the device has it. Exits 1 when an fp32
difference exceeds --atol. Usage:
  python benchmarks/fast_text_check.py                       # ViT-B-16 on GPU, tiny model on CPU
  python benchmarks/fast_text_check.py --model tests/assets/tiny-clip.json --device cpu
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from contextlib import nullcontext
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto")
    p.add_argument("--model", default=None, help="default: ViT-B-16 on GPU, tests/assets/tiny-clip.json on CPU")
    p.add_argument("--num-classes", type=int, default=256, help="first N ImageNet-21K-P names")
    p.add_argument("--atol", type=float, default=1e-4, help="largest fp32 difference accepted")
    p.add_argument("--out", default=None, help="write the differences as JSON here")
    args = p.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          ("cpu" if args.device == "auto" else args.device))
    model = args.model or ("ViT-B-16" if device.type == "cuda" else str(ROOT / "tests/assets/tiny-clip.json"))

    import pomp
    from pomp.data.imagenet21k import classnames
    from pomp.prompt import Prompt

    backbone = pomp.load_backbone(model, device=device)
    names = classnames()[: args.num_classes]
    report = {"model": model, "device": str(device), "fast_text_supported": backbone.fast_text_supported,
              "num_classes": len(names), "torch": torch.__version__}
    if not backbone.fast_text_supported:
        print(json.dumps(report, indent=1))
        return 0

    def run(prompt, class_tokens, fast: bool, amp):
        backbone.fast_text = fast
        prompt.ctx.grad = None
        with amp:
            feats = prompt(backbone, class_tokens)
        weights = torch.linspace(-1, 1, feats.shape[1], device=feats.device)
        (feats.float() * weights).sum().backward()
        backbone.fast_text = True
        return feats.detach().float(), prompt.ctx.grad.detach().clone()

    amps = {"fp32": nullcontext}
    if device.type == "cuda":
        amps["bf16-autocast"] = lambda: torch.autocast("cuda", dtype=torch.bfloat16)
    failed = False
    for amp_name, amp in amps.items():
        words = Prompt.init(backbone, n_ctx=None, words="a photo of a")
        tokens = backbone.tokenize([f"a photo of a {n}." for n in names]).to(device)
        with torch.no_grad(), amp():
            ref = torch.nn.functional.normalize(backbone.model.encode_text(tokens).float(), dim=-1)
            ours = words.encode_class_features(backbone, names).float()
        diff = float((ours - ref).abs().max())
        report[f"{amp_name}: 'a photo of a' vs encode_text, max |diff|"] = diff
        failed |= amp_name == "fp32" and diff > args.atol
        for n_ctx in (4, 16):
            prompt = Prompt.init(backbone, n_ctx=n_ctx, seed=1)
            class_tokens = prompt.tokenize_classes(backbone, names)
            f_fast, g_fast = run(prompt, class_tokens, True, amp())
            f_slow, g_slow = run(prompt, class_tokens, False, amp())
            fdiff = float((f_fast - f_slow).abs().max())
            gdiff = float((g_fast - g_slow).abs().max() / g_slow.abs().max().clamp(min=1e-12))
            report[f"{amp_name}: n_ctx {n_ctx} fast vs open_clip path, features max |diff|"] = fdiff
            report[f"{amp_name}: n_ctx {n_ctx} fast vs open_clip path, ctx grad max |diff| / max |grad|"] = gdiff
            failed |= amp_name == "fp32" and (fdiff > args.atol or gdiff > args.atol * 10)
    report["ok"] = not failed
    print(json.dumps(report, indent=1))
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
