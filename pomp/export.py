"""Files other systems read: class-embedding matrices and the official prompt checkpoint format.

- `class_embeddings.npy`: `[C, D]` float32, rows L2-normalised, in `classnames.txt` order. Detic's
  zero-shot classifier loads exactly this (`MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH` for training,
  `MODEL.TEST_CLASSIFIERS` with `MODEL.RESET_CLS_TESTS True` for testing), rows in the order of the
  dataset's categories sorted by id.
- `zeroshot_classifier.pt`: `[D, C]` float32 tensor (plain tensor, loads with weights_only=True),
  the layout clip_benchmark's `--load_clfs` expects.
- Official prompt checkpoint: Dassl `{'state_dict': {'ctx': [n_ctx, width]}, 'epoch': ...}` as
  written by the POMP/CoOp code. ZSSeg (the POMP repository's `third_party/zsseg.baseline`) reads it
  with `MODEL.CLIP_ADAPTER.PROMPT_LEARNER "pomp"`: `torch.load(f)["state_dict"]`, keys containing
  "ctx", into a `POMPPromptExtractor` whose `ctx` is `[PROMPT_SHAPE[0], PROMPT_DIM]`.
- ZSSeg checkpoint: detectron2's `{'model': {'clip_adapter.prompt_learner.ctx': ctx}}`, what
  `PROMPT_LEARNER "pomp_tuned"` reads (keys containing "prompt_learner", first two dotted parts
  dropped), i.e. the layout of ZSSeg's own prompt-tuning output (`model_final.pth`).
Both prompt layouts build the same text as pomp: [SOS] ctx_1..ctx_n <name> . [EOS].
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
    source: str | None = None,
) -> list[Path]:
    """Encode a vocabulary with a prompt (or a template) and write the embedding files.

    `source` (the class list file) is named when a class does not fit the text context; nothing is written then.
    """
    out_dir = Path(out_dir)
    if prompt is not None:
        prompt.check_compatible(backbone)
        prompt.to(backbone.device)
        features = prompt_classifier(prompt, backbone, classnames, source=source)
    else:
        features = template_classifier(backbone, classnames, [template or "a photo of a {}."], source=source)
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


ZSSEG_KEY = "clip_adapter.prompt_learner.ctx"
CONVERT_FORMATS = ("auto", "pomp", "official", "zsseg")


def save_zsseg(prompt: Prompt, path: str | Path) -> Path:
    """ZSSeg's detectron2-style prompt checkpoint (`PROMPT_LEARNER "pomp_tuned"`): `{'model': {ZSSEG_KEY: ctx}}`."""
    checkpoint = {"model": {ZSSEG_KEY: prompt.ctx.detach().float().cpu().clone()}, "iteration": 0}
    return atomic_write(path, lambda p: torch.save(checkpoint, p))


def load_zsseg(path: str | Path) -> Prompt:
    """Import a ZSSeg checkpoint holding `model[...prompt_learner.ctx]` (read weights-only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: checkpoint not found")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # refused pickles and damaged files alike
        first_line = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(f"{path}: refused or unreadable as a weights-only checkpoint ({first_line})") from None
    model = checkpoint.get("model") if isinstance(checkpoint, dict) else None
    keys = [k for k in (model or {}) if "prompt_learner" in k and k.split(".")[-1] in ("ctx", "prefix_prompt")]
    if not keys:
        raise ValueError(f"{path}: no model['...prompt_learner.ctx'] in checkpoint")
    ctx = model[keys[0]]
    if not isinstance(ctx, torch.Tensor) or ctx.dim() != 2 or not ctx.is_floating_point() or min(ctx.shape) < 1:
        raise ValueError(f"{path}: {keys[0]} must be a float [n_ctx, width] tensor")
    return Prompt(ctx.float(), {"source": str(path), "imported_from": "zsseg"})


def _load_prompt(src: str | Path) -> Prompt:
    try:
        return load_any(src)
    except ValueError as first:
        try:
            return load_zsseg(src)
        except (ValueError, FileNotFoundError):
            raise first from None


def convert_prompt(
    src: str | Path, dst: str | Path, backbone: str | None = None, epoch: int | None = None, fmt: str = "auto"
) -> Path:
    """Convert a prompt between pomp (`.safetensors` + `.json`), the official Dassl `.pth.tar` and ZSSeg's
    `model[...]` checkpoint. `fmt` "auto" picks official for a `.pth`/`.pth.tar-N` name, pomp otherwise;
    the source format is recognised from the file."""
    if fmt not in CONVERT_FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; choose from {CONVERT_FORMATS}")
    dst = Path(dst)
    if fmt == "auto":
        fmt = "official" if ".pth" in dst.name or dst.name.startswith("model.pth.tar") else "pomp"
    prompt = _load_prompt(src)
    if fmt == "official":
        return save_official(prompt, dst, epoch=epoch)
    if fmt == "zsseg":
        return save_zsseg(prompt, dst)
    if backbone is not None:
        prompt.meta["backbone"] = {"name": backbone}
    return prompt.save(dst if dst.suffix in (".safetensors", ".json") else dst)


__all__ = ["write_class_embeddings", "convert_prompt", "load_official", "save_official", "load_zsseg", "save_zsseg"]
