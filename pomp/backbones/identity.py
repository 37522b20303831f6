"""Which model a backbone is: the resolved architecture (activation included) and the weights' identity.

Recorded by the loaders in `Backbone.identity` (and so in `describe()`, prompt.json and result
files), compared when a prompt meets a backbone: a prompt trained on one CLIP and used on another
of the same width runs without error and gives other numbers, so the difference is worth a line.

- `architecture`: the open_clip model name without `-quickgelu` (or the config's name);
- `activation`: `quick_gelu` or `gelu` (OpenAI's CLIP and several other releases use QuickGELU,
  open_clip's plain names build GELU; weights do not say which they were trained with);
- `weights`: `{"tag": ...}` for an open_clip pretrained tag, `{"file", "sha256", "format"}` for a
  local file (plus the `tag` whose published checksum it matches), `{"random_init_seed": 0}`.
"""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

SHA_PREFIX = 16  # hex digits of the sha256 kept in metadata


def sha256_of(path: str | Path, chunk: int = 1 << 22) -> str:
    """Hex sha256 of a file, read in 4 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def published_sha256(url: str) -> str | None:
    """The checksum open_clip checks a download against: OpenAI's URLs carry the full sha256 as the
    folder name; open_clip's own releases end the file name with its first hex digits."""
    if not url:
        return None
    parts = url.rstrip("/").split("/")
    if "openaipublic" in url and len(parts) >= 2 and re.fullmatch(r"[0-9a-f]{64}", parts[-2]):
        return parts[-2]
    tail = os.path.splitext(parts[-1])[0].split("-")[-1]
    return tail if re.fullmatch(r"[0-9a-f]{8,64}", tail) else None


def release_of_file(model_name: str, sha256: str) -> tuple[str, dict] | None:
    """(tag, open_clip's pretrained config) of the release whose published checksum the file matches."""
    import open_clip

    if model_name not in open_clip.list_models():
        return None
    for tag in open_clip.list_pretrained_tags_by_model(model_name):
        cfg = open_clip.get_pretrained_cfg(model_name, tag)
        published = published_sha256(cfg.get("url", ""))
        if published and sha256.startswith(published):
            return tag, cfg
    return None


def describe_weights(weights: dict | None) -> str:
    """A short human label: `tag openai`, `ViT-B-16.pt (sha256 5806e77c...)`, `random init`."""
    if not weights:
        return "unrecorded weights"
    if "random_init_seed" in weights:
        return "random init"
    label = weights.get("file") or ""
    if weights.get("sha256"):
        label += f" (sha256 {weights['sha256'][:12]})"
    if weights.get("tag"):
        label = f"tag {weights['tag']}" + (f", {label}" if label else "")
    return label or "unrecorded weights"


def identity_differences(trained: dict, used: dict) -> list[str]:
    """What two `describe()` records say differently about the model (fields both record), as phrases."""
    diffs = []
    for key in ("family", "architecture", "activation"):
        if trained.get(key) is not None and used.get(key) is not None and trained[key] != used[key]:
            diffs.append(f"{key} {trained[key]} vs {used[key]}")
    a, b = trained.get("weights"), used.get("weights")
    if isinstance(a, dict) and isinstance(b, dict):
        same = None
        if a.get("sha256") and b.get("sha256"):
            same = a["sha256"] == b["sha256"]
        elif a.get("tag") and b.get("tag"):
            same = a["tag"] == b["tag"]
        elif ("random_init_seed" in a) != ("random_init_seed" in b):
            same = False
        elif "random_init_seed" in a:
            same = a["random_init_seed"] == b["random_init_seed"]
        if same is False:
            diffs.append(f"weights {describe_weights(a)} vs {describe_weights(b)}")
    return diffs


__all__ = ["describe_weights", "identity_differences", "published_sha256", "release_of_file", "sha256_of"]
