#!/usr/bin/env python
"""Generate docs/models.md's table of supported open_clip families by checking every `open_clip.list_models()` entry.

Each architecture is shrunk (few layers, small widths, random weights; `pomp.backbones.zoo`), handed to
pomp as a model object with its tokenizer, and checked:

- a prompt initialised from "a photo of a" gives the model's own `encode_text` features of
  "a photo of a {c}." (normalised, max |difference| over a few class names, including a long one);
- `encode_images` runs at the model's own input size; dense features run where pomp has a path.

Entries are grouped into families by what pomp resolved (image tower, text tower, tokenizer, where
the context goes, pooling, whether cutting is exact, dense path). Tokenizers that live on the
Hugging Face Hub are replaced by local ones of the same kind (marked *). Run offline:

    HF_HUB_OFFLINE=1 python scripts/support_table.py --write docs/models.md

`--write` replaces the text between the page's support-table markers; without it the table is
printed. Exit status 1 if any entry fails a check.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from collections import defaultdict
from pathlib import Path

import open_clip
import torch

import pomp
from pomp.backbones.zoo import build_shrunk
from pomp.prompt import Prompt

START, END = "<!-- support-table:start -->", "<!-- support-table:end -->"
CLASSES = ["cat", "golden retriever", "hot air balloon", "x ray"]  # short enough for the 16-token SigLIP context
TOLERANCE = 1e-5


def _image_tower(model) -> str:
    visual = model.visual
    if hasattr(visual, "trunk"):
        return f"timm {type(visual.trunk).__name__}"
    if getattr(visual, "attn_pool", None) is not None:
        return f"open_clip {type(visual).__name__} + attentional pooler"
    return f"open_clip {type(visual).__name__}"


def _text_tower(backbone) -> str:
    text = backbone._path.module
    if type(text).__name__ == "HFTextEncoder":
        return f"HF {text.config.model_type} (inputs_embeds)"
    kind = "causal" if backbone.causal else "bidirectional"
    return f"open_clip TextTransformer, {kind}"


def _tokenizer(tokenizer, name: str) -> str:
    hub = (open_clip.get_model_config(name)["text_cfg"].get("hf_tokenizer_name") or "")
    if type(tokenizer).__name__ == "SimpleTokenizer":
        return "CLIP BPE"
    inner = type(tokenizer.tokenizer).__name__.replace("TokenizerFast", "").replace("Tokenizer", "")
    return f"{inner}{'' if 'bert-base' in hub else '*'}"


def check(name: str, folder: Path) -> dict:
    model, tokenizer = build_shrunk(name, folder)
    backbone = pomp.load_backbone(model, tokenizer=tokenizer)
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, CLASSES)
        reference = model.encode_text(tokenizer([f"a photo of a {c}." for c in CLASSES]), normalize=True)
        size = backbone.image_spec.size
        pixels = torch.randn(1, 3, size, size)
        image_ok = tuple(backbone.encode_images(pixels).shape) == (1, backbone.embed_dim)
        if backbone.dense_path is not None:
            dense = backbone.encode_dense_features(pixels)
            image_ok &= dense.shape[:2] == (1, backbone.embed_dim) and bool(torch.isfinite(dense).all())
    info = backbone.resolved(4)
    dense = (backbone.dense_path.split(" (")[0] if backbone.dense_path
             else "none: " + info["dense_features"].removeprefix("none: "))
    return {
        "name": name,
        "error": float((ours - reference).abs().max()),
        "images": image_ok,
        "key": (
            _image_tower(model),
            _text_tower(backbone),
            _tokenizer(tokenizer, name),
            f"from position {info['prefix_tokens']}" + ("" if info["start_token"] else " (no start token)"),
            info["pooling"],
            "yes" if info["cut_exact"] else "no (full context)",
            dense,
        ),
    }


def table(rows: list[dict]) -> str:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for row in rows:
        groups[row["key"]].append(row)
    header = ["image tower", "text tower", "tokenizer", "context vectors", "pooled from", "cut exact", "dense features",
              "models", "max abs diff vs encode_text"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key in sorted(groups, key=lambda k: (k[1], k[0], k[2])):
        members = groups[key]
        names = ", ".join(f"`{r['name']}`" for r in sorted(members, key=lambda r: r["name"].lower()))
        worst = max(r["error"] for r in members)
        lines.append("| " + " | ".join([*key, names, f"{worst:.1e}"]) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--write", type=Path, default=None, help="page to update between its support-table markers (docs/models.md)")
    parser.add_argument("names", nargs="*", help="only these list_models() entries (default: all)")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_num_threads(2)
    names = args.names or open_clip.list_models()
    rows, failures = [], []
    with tempfile.TemporaryDirectory() as folder:
        for name in names:
            try:
                row = check(name, Path(folder))
            except Exception as err:  # a failing entry is reported, not fatal to the table
                failures.append(f"{name}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}")
                continue
            if row["error"] > TOLERANCE or not row["images"]:
                failures.append(f"{name}: max abs diff {row['error']:.1e}, images ok: {row['images']}")
            rows.append(row)
            print(f"{name:40s} {row['error']:.1e}", file=sys.stderr)
    text = (f"{len(rows)} of {len(names)} `open_clip.list_models()` entries (open_clip {open_clip.__version__}) "
            f"checked; * = a local tokenizer of the same kind stood in for the Hub one.\n\n" + table(rows))
    if args.write:
        readme = args.write.read_text()
        if START not in readme or END not in readme:
            print(f"{args.write}: no {START} ... {END} markers", file=sys.stderr)
            return 2
        head, rest = readme.split(START, 1)
        args.write.write_text(head + START + "\n" + text + END + rest.split(END, 1)[1])
    else:
        print(text)
    for failure in failures:
        print("FAILED " + failure, file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
