"""Image features of the frozen image tower, computed in batches and optionally cached on disk.

The image tower never trains, so its features can be computed once: a cache is a folder with
`features.npy` (float16 `[M, V, D]`, memory-mapped when read: M images, V views), `labels.npy`
and `meta.json` saying which model, preprocessing and samples produced it.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pomp.backbones.base import Backbone
from pomp.data.folder import ImageDataset, collate_skipping
from pomp.io import atomic_write, atomic_write_json, read_json


@dataclass
class ImageFeatures:
    """L2-normalised features `[M, V, D]` (V views per image), labels `[M]`, and images skipped.

    Features read from a cache stay float16 and memory-mapped; index rows, then cast.
    """

    features: torch.Tensor
    labels: torch.Tensor
    skipped: int = 0

    def __len__(self) -> int:
        return self.features.shape[0]


def autocast_for(device: torch.device, precision: str = "bf16"):
    """Mixed precision on CUDA (`bf16` or `fp16`); full precision elsewhere or with `fp32`."""
    if device.type != "cuda" or precision == "fp32":
        return nullcontext()
    return torch.autocast("cuda", dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def autocast_precision(device: torch.device, precision: str) -> str:
    """The precision the image tower really runs at under `autocast_for` (part of a feature cache's key)."""
    return precision if device.type == "cuda" else "fp32"


@torch.no_grad()
def encode_pixels(backbone: Backbone, pixels: torch.Tensor, precision: str = "bf16") -> torch.Tensor:
    """`[B, 3, H, W]` or `[B, V, 3, H, W]` pixels -> normalised features `[B, V, D]`."""
    if pixels.dim() == 4:
        pixels = pixels.unsqueeze(1)
    b, v = pixels.shape[:2]
    device = backbone.device
    with autocast_for(device, precision):
        feats = backbone.encode_images(pixels.flatten(0, 1).to(device, non_blocking=True))
    return F.normalize(feats.float(), dim=-1).view(b, v, -1)


def compute_image_features(
    backbone: Backbone,
    dataset: ImageDataset,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str = "bf16",
    desc: str = "image features",
    progress: bool = True,
) -> ImageFeatures:
    """Run the image tower over a dataset in order; unreadable images are skipped and counted."""
    loader = DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping,
                        pin_memory=backbone.device.type == "cuda")
    feats, labels, skipped = [], [], 0
    for pixels, batch_labels, _, batch_skipped in tqdm(loader, desc=desc, disable=not progress, leave=False):
        skipped += batch_skipped
        if pixels is None:
            continue
        feats.append(encode_pixels(backbone, pixels, precision).cpu())
        labels.append(batch_labels)
    if skipped:
        warnings.warn(f"{desc}: skipped {skipped} unreadable images", stacklevel=2)
    if not feats:
        raise ValueError(f"{desc}: no readable images")
    return ImageFeatures(torch.cat(feats), torch.cat(labels), skipped)


def cache_key(backbone: Backbone, transform, samples: list[tuple[str, int]], extra: dict | None = None) -> dict:
    """What determines a cache's content: model, preprocessing, the samples, and e.g. seed and views."""
    digest = hashlib.sha256(json.dumps(samples).encode()).hexdigest()[:16]
    return {"backbone": backbone.describe(), "transform": repr(transform), "samples": digest,
            "num_samples": len(samples), **(extra or {})}


def save_feature_cache(path: str | Path, feats: ImageFeatures, key: dict) -> Path:
    """Write a cache folder; meta.json goes last, so a cache without it is incomplete and ignored."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    atomic_write(path / "features.npy", lambda p: np.save(open(p, "wb"), feats.features.half().numpy()))
    atomic_write(path / "labels.npy", lambda p: np.save(open(p, "wb"), feats.labels.numpy()))
    atomic_write_json(path / "meta.json", {**key, "skipped": feats.skipped, "shape": list(feats.features.shape)})
    return path


def load_feature_cache(path: str | Path, key: dict | None = None) -> ImageFeatures | None:
    """A cache whose meta matches `key` (memory-mapped), or None when absent or stale."""
    path = Path(path)
    if not (path / "meta.json").is_file():
        return None
    meta = read_json(path / "meta.json")
    if key is not None and any(meta.get(k) != v for k, v in json.loads(json.dumps(key)).items()):
        return None
    features = np.load(path / "features.npy", mmap_mode="r")
    labels = np.load(path / "labels.npy")
    if list(features.shape) != meta.get("shape") or labels.shape[0] != features.shape[0]:
        raise ValueError(f"{path}: feature cache is inconsistent with its meta.json; delete it to rebuild")
    with warnings.catch_warnings():  # read-only memory map: rows are copied when indexed, never written
        warnings.simplefilter("ignore", UserWarning)
        features = torch.from_numpy(features)
    return ImageFeatures(features, torch.from_numpy(labels), int(meta.get("skipped", 0)))


def cached_image_features(
    cache_dir: str | Path | None,
    backbone: Backbone,
    dataset: ImageDataset,
    extra_key: dict | None = None,
    **compute_kwargs,
) -> ImageFeatures:
    """Features from `cache_dir` when it matches, else computed (and saved there when a dir is given)."""
    key = cache_key(backbone, dataset.transform, dataset.images.samples, extra_key)
    if cache_dir is not None:
        cached = load_feature_cache(cache_dir, key)
        if cached is not None:
            return cached
    feats = compute_image_features(backbone, dataset, **compute_kwargs)
    if cache_dir is not None:
        save_feature_cache(cache_dir, feats, key)
    return feats


# --- extraction split across ranks -------------------------------------------------------------
def _parts_dir(cache_dir: Path, world: int) -> Path:
    return cache_dir / f".parts-of{world}"


@torch.no_grad()
def compute_feature_part(
    cache_dir: str | Path,
    backbone: Backbone,
    dataset: ImageDataset,
    rank: int,
    world: int,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str = "bf16",
    progress: bool = True,
    desc: str = "image features",
) -> Path:
    """Rank `rank` of `world`: features of images `rank, rank + world, ...` (each with its global index, so
    seeded augmentation matches a single-process run) written to `cache_dir/.parts-of<world>/rank<r>.npz`."""
    from torch.utils.data import Subset

    loader = DataLoader(Subset(dataset, range(rank, len(dataset), world)), batch_size=batch_size,
                        num_workers=num_workers, collate_fn=collate_skipping, pin_memory=backbone.device.type == "cuda")
    feats, labels, indices, skipped = [], [], [], 0
    for pixels, batch_labels, batch_indices, batch_skipped in tqdm(loader, desc=desc, disable=not progress,
                                                                   leave=False):
        skipped += batch_skipped
        if pixels is None:
            continue
        feats.append(encode_pixels(backbone, pixels, precision).cpu().half())
        labels.append(batch_labels)
        indices.append(batch_indices)
    dim = backbone.embed_dim
    views = feats[0].shape[1] if feats else 1
    part = {"features": torch.cat(feats).numpy() if feats else np.zeros((0, views, dim), np.float16),
            "labels": torch.cat(labels).numpy() if labels else np.zeros(0, np.int64),
            "indices": torch.cat(indices).numpy() if indices else np.zeros(0, np.int64),
            "skipped": np.array(skipped)}
    path = _parts_dir(Path(cache_dir), world) / f"rank{rank}.npz"
    atomic_write(path, lambda p: np.savez(open(p, "wb"), **part))
    return path


def merge_feature_parts(cache_dir: str | Path, world: int, key: dict) -> ImageFeatures:
    """Rank 0: join the `world` parts in image order into one cache (`save_feature_cache`), remove the parts."""
    cache_dir = Path(cache_dir)
    parts_dir = _parts_dir(cache_dir, world)
    paths = [parts_dir / f"rank{r}.npz" for r in range(world)]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise FileNotFoundError(f"{missing[0]}: feature part missing ({len(missing)} of {world}); the cache folder "
                                f"must be on a file system every rank writes to")
    parts = [np.load(p) for p in paths]
    indices = np.concatenate([p["indices"] for p in parts])
    order = np.argsort(indices, kind="stable")
    non_empty = [p["features"] for p in parts if len(p["features"])]
    if not non_empty:
        raise ValueError(f"{cache_dir}: no readable images")
    feats = np.concatenate(non_empty)[order]
    labels = np.concatenate([p["labels"] for p in parts])[order]
    skipped = int(sum(int(p["skipped"]) for p in parts))
    if skipped:
        warnings.warn(f"{cache_dir}: skipped {skipped} unreadable images", stacklevel=2)
    out = ImageFeatures(torch.from_numpy(feats), torch.from_numpy(labels), skipped)
    save_feature_cache(cache_dir, out, key)
    for p in paths:
        p.unlink()
    parts_dir.rmdir()
    return out


def extract_image_features(
    cache_dir: str | Path,
    backbone: Backbone,
    dataset: ImageDataset,
    extra_key: dict | None = None,
    rank: int = 0,
    world: int = 1,
    barrier=lambda: None,
    **compute_kwargs,
) -> ImageFeatures | None:
    """`cached_image_features` split across ranks: every rank encodes every world-th image, rank 0 merges
    them into one cache under the same key, so `cached_image_features` (eval, cached-feature training)
    reuses it. An existing matching cache is reused as is. Call on every rank; returns the cache, or
    None on ranks other than 0 when `barrier` does not synchronise (one-process simulation)."""
    cache_dir = Path(cache_dir)
    key = cache_key(backbone, dataset.transform, dataset.images.samples, extra_key)
    existing = load_feature_cache(cache_dir, key)
    if existing is not None:
        return existing
    compute_feature_part(cache_dir, backbone, dataset, rank, world, **compute_kwargs)
    barrier()
    if rank == 0:
        merge_feature_parts(cache_dir, world, key)
    barrier()
    return load_feature_cache(cache_dir, key)
