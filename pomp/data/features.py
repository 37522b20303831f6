"""Image features of the frozen image tower, computed in batches and optionally cached on disk.

The image tower never trains, so its features can be computed once. A cache folder holds one
sub-folder per key (`cache_key`: backbone and weights, preprocessing, precision, samples and their
files, seed/views), named by the key's hash, with `features.npy` (float16 `[M, V, D]`, memory-mapped
when read: M images, V views), `labels.npy` and `meta.json` (the key). Each sub-folder is
published whole by one rename, so a killed writer never leaves a mixed cache that is then read.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from pomp.backbones.base import AUTOCAST_DTYPES, Backbone
from pomp.data.folder import ImageDataset, collate_skipping, ignore_interrupts_in_worker
from pomp.io import atomic_write, check_writable_dir, process_tag, publish_dir, read_json, write_npy


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
    return torch.autocast("cuda", dtype=AUTOCAST_DTYPES.get(precision, torch.float16))


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


def encode_batches(
    backbone: Backbone,
    batches: Iterable[tuple[torch.Tensor | None, torch.Tensor | None, torch.Tensor | None, int]],
    precision: str = "bf16",
    desc: str = "image features",
    progress: bool = True,
    dtype: torch.dtype = torch.float32,
) -> tuple[ImageFeatures, torch.Tensor | None]:
    """THE image-feature loop: batches `(pixels [B, (V,) 3, H, W] | None, labels [B], indices [B] | None,
    skipped)` (pixels None: no image of the batch was readable) through the image tower (`encode_pixels`).

    Returns the `ImageFeatures` (features `[M, V, D]` on CPU in `dtype`, `[0, 1, D]` when no image was
    readable; labels `[M]`; images skipped) and the batches' indices `[M]` joined (None when they carry none).
    """
    feats, labels, indices, skipped = [], [], [], 0
    for pixels, batch_labels, batch_indices, batch_skipped in tqdm(batches, desc=desc, disable=not progress,
                                                                   leave=False):
        skipped += int(batch_skipped)
        if pixels is None:
            continue
        feats.append(encode_pixels(backbone, pixels, precision).cpu().to(dtype))
        labels.append(batch_labels)
        if batch_indices is not None:
            indices.append(batch_indices)
    if not feats:
        empty = ImageFeatures(torch.zeros(0, 1, backbone.embed_dim, dtype=dtype), torch.zeros(0, dtype=torch.long),
                              skipped)
        return empty, None
    return ImageFeatures(torch.cat(feats), torch.cat(labels), skipped), torch.cat(indices) if indices else None


def _image_loader(backbone: Backbone, dataset, batch_size: int, num_workers: int) -> DataLoader:
    """Batches of `dataset` in order, unreadable images dropped and counted (`collate_skipping`)."""
    return DataLoader(dataset, batch_size=batch_size, num_workers=num_workers, collate_fn=collate_skipping,
                      pin_memory=backbone.device.type == "cuda", worker_init_fn=ignore_interrupts_in_worker)


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
    loader = _image_loader(backbone, dataset, batch_size, num_workers)
    feats, _ = encode_batches(backbone, loader, precision, desc, progress)
    if feats.skipped:
        warnings.warn(f"{desc}: skipped {feats.skipped} unreadable images", stacklevel=2)
    if not len(feats):
        raise ValueError(f"{desc}: no readable images")
    return feats


def effective_precision(backbone: Backbone, precision: str) -> str:
    """The precision the image tower really runs at: autocast applies on CUDA only."""
    return precision if backbone.device.type == "cuda" else "fp32"


def weights_fingerprint(module: torch.nn.Module) -> str:
    """BLAKE2b of every parameter and buffer (name, dtype, shape, bytes): which weights, whatever their name.

    Computed once per module object (the backbone is frozen)."""
    cached = getattr(module, "_pomp_weights_fingerprint", None)
    if cached is not None:
        return cached
    digest = hashlib.blake2b(digest_size=16)
    with torch.no_grad():
        for name, tensor in module.state_dict().items():
            flat = tensor.detach().reshape(-1).contiguous().cpu()
            digest.update(f"{name}|{flat.dtype}|{tuple(tensor.shape)}|".encode())
            digest.update(flat.view(torch.uint8).numpy())
    object.__setattr__(module, "_pomp_weights_fingerprint", digest.hexdigest())
    return module._pomp_weights_fingerprint


def samples_fingerprint(root: str | Path, samples: list[tuple[str, int]]) -> str:
    """SHA-256 of the samples (relative path, label) with each file's size and modification time:
    the same names under another root, or a file replaced in place, give another fingerprint."""
    root = Path(root)
    digest = hashlib.sha256()
    for rel, label in samples:
        try:
            st = os.stat(root / rel)
            stamp = (st.st_size, st.st_mtime_ns)
        except OSError:
            stamp = None  # unreadable now: skipped when encoded
        digest.update(json.dumps([rel, label, stamp], ensure_ascii=False).encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:32]


def cache_key(backbone: Backbone, dataset: ImageDataset, extra: dict | None = None, precision: str = "bf16") -> dict:
    """Everything that determines a cache's content: the backbone and its weights, the preprocessing
    (transform, views), the image tower's precision, the samples and their files, and `extra`
    (e.g. the augmentation seed)."""
    images = dataset.images
    return {"backbone": backbone.describe(), "weights": weights_fingerprint(backbone),
            "transform": repr(dataset.transform), "precision": effective_precision(backbone, precision),
            "root": str(Path(images.root).resolve()), "samples": samples_fingerprint(images.root, images.samples),
            "num_samples": len(images.samples), **(extra or {})}


def _entry(cache_dir: str | Path, key: dict) -> Path:
    """The cache's own sub-folder: named by a hash of its key, so other keys never share it."""
    text = json.dumps(key, sort_keys=True, ensure_ascii=False, default=str)
    return Path(cache_dir) / hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()[:20]


def save_feature_cache(cache_dir: str | Path, feats: ImageFeatures, key: dict) -> Path:
    """Publish a cache as a unit under `cache_dir/<key hash>/`: features.npy, labels.npy, meta.json
    are written into a temporary folder that is renamed in one step (`pomp.io.publish_dir`)."""
    meta = {"key": json.loads(json.dumps(key, default=str)), "skipped": feats.skipped,
            "shape": list(feats.features.shape)}

    def fill(tmp: Path) -> None:
        with open(tmp / "features.npy", "wb") as f:
            write_npy(f, feats.features.half().numpy())
        with open(tmp / "labels.npy", "wb") as f:
            write_npy(f, feats.labels.numpy())
        (tmp / "meta.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="ascii")

    return publish_dir(_entry(cache_dir, key), fill)


def load_feature_cache(cache_dir: str | Path, key: dict) -> ImageFeatures | None:
    """The cache of `key` under `cache_dir` (memory-mapped), or None when there is none."""
    entry = _entry(cache_dir, key)
    if not (entry / "meta.json").is_file():
        return None
    meta = read_json(entry / "meta.json")
    if not isinstance(meta, dict) or meta.get("key") != json.loads(json.dumps(key, default=str)):
        return None
    try:
        features = np.load(entry / "features.npy", mmap_mode="r")
        labels = np.load(entry / "labels.npy")
    except (OSError, ValueError) as err:
        raise ValueError(f"{entry}: damaged feature cache ({err}); delete the folder to rebuild it") from None
    if list(features.shape) != meta.get("shape") or labels.shape[0] != features.shape[0]:
        raise ValueError(f"{entry}: feature cache is inconsistent with its meta.json; delete it to rebuild")
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
    """Features from `cache_dir` when a cache of exactly this key is there, else computed (and
    published there when a folder is given, then returned as read back: float16, as every later
    reader gets them). Folders hold one sub-folder per key, so backbones, transforms and datasets
    can share a cache folder."""
    key = cache_key(backbone, dataset, extra_key, compute_kwargs.get("precision", "bf16"))
    if cache_dir is not None:
        cached = load_feature_cache(cache_dir, key)
        if cached is not None:
            return cached
        # a read-only (shared) cache folder serves what it holds; a miss is refused before computing
        check_writable_dir(cache_dir, "feature cache folder holds no features of this backbone and data and")
    feats = compute_image_features(backbone, dataset, **compute_kwargs)
    if cache_dir is not None:
        save_feature_cache(cache_dir, feats, key)
        # what every later reader gets (float16), so a run resumed from the cache trains on what it started on
        stored = load_feature_cache(cache_dir, key)
        if stored is not None:
            feats = stored
    return feats


# --- extraction split across ranks -------------------------------------------------------------
def _parts_dir(cache_dir: Path, world: int, key: dict, job: str | None) -> Path:
    """The parts of one extraction job (`job`: rank 0's `process_tag()`, the same on every rank), so two
    jobs computing the same cache at once never read or remove each other's parts; swept once rank 0 is gone."""
    return cache_dir / f".parts-{_entry(cache_dir, key).name}-of{world}.{job or process_tag()}.parts.tmp"


@torch.no_grad()
def compute_feature_part(
    cache_dir: str | Path,
    backbone: Backbone,
    dataset: ImageDataset,
    rank: int,
    world: int,
    extra_key: dict | None = None,
    batch_size: int = 64,
    num_workers: int = 0,
    precision: str = "bf16",
    progress: bool = True,
    desc: str = "image features",
    job: str | None = None,
) -> Path:
    """Rank `rank` of `world`: features of images `rank, rank + world, ...` (each with its global index, so
    seeded augmentation matches a single-process run) written to
    `cache_dir/.parts-<key hash>-of<world>.<job>.parts.tmp/rank<r>.npz` (key: `cache_key` with `extra_key`;
    `job`: the same string on every rank of one extraction, default this process's `process_tag()`)."""
    from torch.utils.data import Subset

    loader = _image_loader(backbone, Subset(dataset, range(rank, len(dataset), world)), batch_size, num_workers)
    feats, indices = encode_batches(backbone, loader, precision, desc, progress, dtype=torch.float16)
    part = {"features": feats.features.numpy(), "labels": feats.labels.numpy(),
            "indices": indices.numpy() if indices is not None else np.zeros(0, np.int64),
            "skipped": np.array(feats.skipped)}
    key = cache_key(backbone, dataset, extra_key, precision)
    path = _parts_dir(Path(cache_dir), world, key, job) / f"rank{rank}.npz"

    def write(p: Path) -> None:
        with open(p, "wb") as f:
            np.savez(f, **part)

    return atomic_write(path, write)


def merge_feature_parts(cache_dir: str | Path, world: int, key: dict, job: str | None = None) -> ImageFeatures:
    """Rank 0: join the `world` parts of `job` in image order into one cache (`save_feature_cache`), remove
    the parts."""
    cache_dir = Path(cache_dir)
    parts_dir = _parts_dir(cache_dir, world, key, job)
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
    job: str | None = None,
    **compute_kwargs,
) -> ImageFeatures | None:
    """`cached_image_features` split across ranks: every rank encodes every world-th image, rank 0 merges
    them into one cache under the same key, so `cached_image_features` (eval, cached-feature training)
    reuses it. An existing matching cache is reused as is. Call on every rank with the same `job` (rank
    0's `process_tag()`; the default suits one process); returns the cache, or None on ranks other than
    0 when `barrier` does not synchronise (one-process simulation). Jobs running at once on one cache
    folder each work in their own parts folder (those of killed jobs are swept when a cache is
    published); the first to publish wins, the others' equal caches are dropped."""
    cache_dir = Path(cache_dir)
    key = cache_key(backbone, dataset, extra_key, compute_kwargs.get("precision", "bf16"))
    existing = load_feature_cache(cache_dir, key)
    if existing is not None:
        return existing
    compute_feature_part(cache_dir, backbone, dataset, rank, world, extra_key, job=job, **compute_kwargs)
    barrier()
    if rank == 0:
        merge_feature_parts(cache_dir, world, key, job)
    barrier()
    return load_feature_cache(cache_dir, key)
