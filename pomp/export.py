"""Class-embedding matrices other systems read (the prompt checkpoint formats live in `pomp.interop`).

- `class_embeddings.npy`: `[C, D]` float32, rows L2-normalised, in `classnames.txt` order. Detic's
  zero-shot classifier loads exactly this (`MODEL.ROI_BOX_HEAD.ZEROSHOT_WEIGHT_PATH` for training,
  `MODEL.TEST_CLASSIFIERS` with `MODEL.RESET_CLS_TESTS True` for testing), rows in the order of the
  dataset's categories sorted by id.
- `zeroshot_classifier.pt`: `[D, C]` float32 tensor (plain tensor, loads with weights_only=True),
  the layout clip_benchmark's `--load_clfs` expects.
Prompt checkpoints (official Dassl, ZSSeg) are read and written by `pomp.interop`; `convert_prompt`,
`load_official`, `save_official`, `load_zsseg` and `save_zsseg` are re-exported here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch

from pomp.backbones.base import Backbone
from pomp.data.names import SINGLE_TEMPLATE
from pomp.evaluate import prompt_classifier, template_classifier
from pomp.io import atomic_write, atomic_write_json, atomic_write_npy, atomic_write_text
from pomp.interop import convert_prompt, load_official, load_zsseg, save_official, save_zsseg  # noqa: F401
from pomp.prompt import Prompt


def write_class_embeddings(
    out_dir: str | Path,
    backbone: Backbone,
    classnames: Sequence[str],
    prompt: Prompt | None = None,
    template: str | None = SINGLE_TEMPLATE,
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
        features = template_classifier(backbone, classnames, [template or SINGLE_TEMPLATE], source=source)
    features = features.float().cpu().contiguous()
    npy = atomic_write_npy(out_dir / "class_embeddings.npy", features.numpy())
    pt = atomic_write(out_dir / "zeroshot_classifier.pt", lambda p: torch.save(features.t().contiguous(), p))
    names = atomic_write_text(out_dir / "classnames.txt", "".join(f"{c}\n" for c in classnames))
    meta = atomic_write_json(out_dir / "embed_config.json", {
        **(config or {}), "num_classes": len(classnames), "dim": features.shape[1],
        "source": "prompt" if prompt is not None else f"template:{template}",
        "backbone": backbone.describe(),
    })
    return [npy, pt, names, meta]


__all__ = ["write_class_embeddings", "convert_prompt", "load_official", "save_official", "load_zsseg", "save_zsseg"]
