"""Files other systems read: class-embedding matrices and the official prompt checkpoint format.

- `class_embeddings.npy`: `[C, D]` float32, rows L2-normalised, in `classnames.txt` order. Detic's
  zero-shot classifier loads exactly this (`--zs_weight_path`, with `ZERO_SHOT_WEIGHT` as .npy).
- `zeroshot_classifier.pt`: `[D, C]` float32 tensor (plain tensor, loads with weights_only=True),
  the layout clip_benchmark's `--load_clfs` expects.
- Official prompt checkpoint: Dassl `{'state_dict': {'ctx': [n_ctx, width]}, 'epoch': ...}` as
  written by the POMP/CoOp code and read by ZSSeg.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from pomp.backbones.base import Backbone
from pomp.evaluate import prompt_classifier, template_classifier
from pomp.io import atomic_write, atomic_write_json, atomic_write_text
from pomp.prompt import Prompt, load_any, load_official, save_official


def write_class_embeddings(
    out_dir: str | Path,
    backbone: Backbone,
    classnames: Sequence[str],
    prompt: Prompt | None = None,
    template: str | None = "a photo of a {}.",
    config: dict | None = None,
) -> list[Path]:
    """Encode a vocabulary with a prompt (or a template) and write the embedding files."""
    out_dir = Path(out_dir)
    if prompt is not None:
        prompt.check_compatible(backbone)
        prompt.to(backbone.device)
        features = prompt_classifier(prompt, backbone, classnames)
    else:
        features = template_classifier(backbone, classnames, [template or "a photo of a {}."])
    features = features.float().cpu().contiguous()
    npy = atomic_write(out_dir / "class_embeddings.npy", lambda p: np.save(open(p, "wb"), features.numpy()))
    pt = atomic_write(out_dir / "zeroshot_classifier.pt", lambda p: torch.save(features.t().contiguous(), p))
    names = atomic_write_text(out_dir / "classnames.txt", "".join(f"{c}\n" for c in classnames))
    meta = atomic_write_json(out_dir / "embed_config.json", {
        **(config or {}), "num_classes": len(classnames), "dim": features.shape[1],
        "source": "prompt" if prompt is not None else f"template:{template}",
        "backbone": backbone.describe(),
    })
    return [npy, pt, names, meta]


def convert_prompt(src: str | Path, dst: str | Path, backbone: str | None = None, epoch: int | None = None) -> Path:
    """Official `.pth.tar` -> pomp `.safetensors`, or pomp -> official (chosen by `dst`'s name)."""
    dst = Path(dst)
    to_official = ".pth" in dst.name or dst.name.startswith("model.pth.tar")
    prompt = load_any(src)
    if to_official:
        return save_official(prompt, dst, epoch=epoch)
    if backbone is not None:
        prompt.meta["backbone"] = {"name": backbone}
    prompt.meta.setdefault("imported_from", "official")
    return prompt.save(dst if dst.suffix in (".safetensors", ".json") else dst)


__all__ = ["write_class_embeddings", "convert_prompt", "load_official", "save_official"]
