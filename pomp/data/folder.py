"""Labelled image sets on disk: class folders, names files, k-shot splits and CoOp split files.

A split file (ours and CoOp's `split_zhou_*.json`) maps split names to samples:
`{"train": [[relative_path, label, classname], ...], "val": [...], "test": [...]}`.
"""

from __future__ import annotations

import random
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from PIL import Image
from torch.utils.data import Dataset

from pomp.data.names import clean_classname
from pomp.data.names import read_class_list, read_names_file  # noqa: F401  (read here before pomp.data.names)
from pomp.io import atomic_write_json, read_json

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm"}
MAX_IMAGE_PIXELS = 8192 * 8192


@dataclass
class LabelledImages:
    """Samples of one split: image paths relative to `root`, class ids, and the class names."""

    root: Path
    samples: list[tuple[str, int]]
    classnames: list[str]
    name: str = ""
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.samples)

    @property
    def labels(self) -> torch.Tensor:
        return torch.tensor([label for _, label in self.samples], dtype=torch.long)


# --- class folders -----------------------------------------------------------------------------
def scan_class_folders(
    root: str | Path,
    names: dict[str, str] | None = None,
    name: str = "",
) -> LabelledImages:
    """One sub-folder per class. Class order: the names mapping's order when given, else sorted folders.

    Empty class folders are counted and reported; folders missing from the names mapping, or a
    mapping naming absent folders, are errors (before any training starts).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    folders = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if names is not None:
        unknown = [f for f in folders if f not in names]
        missing = [f for f in names if f not in set(folders)]
        if unknown:
            raise ValueError(f"{root}: {len(unknown)} class folders have no name in the names file (e.g. {unknown[0]!r})")
        if missing:
            raise ValueError(f"{root}: names file lists {len(missing)} classes with no folder (e.g. {missing[0]!r})")
        folders = list(names)
    samples: list[tuple[str, int]] = []
    empty = 0
    for label, folder in enumerate(folders):
        files = sorted(
            p for p in (root / folder).rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        )
        if not files:
            empty += 1
            warnings.warn(f"{root / folder}: class folder holds no images", stacklevel=2)
        samples.extend((str(p.relative_to(root)), label) for p in files)
    if not samples:
        raise ValueError(f"{root}: no images found (extensions: {', '.join(sorted(IMAGE_EXTENSIONS))})")
    classnames = [names[f] for f in folders] if names is not None else [clean_classname(f) for f in folders]
    return LabelledImages(root, samples, classnames, name or root.name, {"empty_class_folders": empty} if empty else {})


# --- split files -------------------------------------------------------------------------------
def read_split_file(path: str | Path, split: str, image_root: str | Path | None = None) -> LabelledImages:
    """Read one split of a CoOp-format split file; class names come from the file.

    Images are relative to `image_root` (default: the split file's directory). Missing images,
    inconsistent names or non-contiguous labels are errors naming the file.
    """
    path = Path(path)
    data = read_json(path)
    if not isinstance(data, dict) or split not in data:
        keys = sorted(data) if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: no {split!r} split (has {keys})")
    root = Path(image_root) if image_root is not None else path.parent
    names: dict[int, str] = {}
    for split_name, entries in data.items():
        if not isinstance(entries, list):
            raise ValueError(f"{path}: split {split_name!r} must be a list of [path, label, classname]")
        for entry in entries:
            if not (isinstance(entry, list) and len(entry) == 3 and isinstance(entry[0], str)
                    and isinstance(entry[1], int) and not isinstance(entry[1], bool) and isinstance(entry[2], str)):
                raise ValueError(f"{path}: split {split_name!r} has a malformed entry {entry!r}")
            label, name = entry[1], clean_classname(entry[2])
            if label < 0:
                raise ValueError(f"{path}: negative label {label} in entry {entry!r}")
            if not name:
                raise ValueError(f"{path}: empty class name in entry {entry!r}")
            if names.setdefault(label, name) != name:
                raise ValueError(f"{path}: label {label} is named both {names[label]!r} and {name!r}")
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: labels must be 0..C-1 without gaps (found {len(names)} labels, max {max(names)})")
    samples = [(rel, label) for rel, label, _ in data[split]]
    if not samples:
        raise ValueError(f"{path}: split {split!r} is empty")
    missing = [rel for rel, _ in samples if not _is_file(root / rel)]
    if missing:
        raise FileNotFoundError(f"{path}: {len(missing)} of {len(samples)} {split!r} images missing under {root} "
                                f"(e.g. {missing[0]!r})")
    classnames = [names[i] for i in range(len(names))]
    return LabelledImages(root, samples, classnames, path.stem)


def _is_file(path: Path) -> bool:
    try:
        return path.is_file()
    except OSError:  # e.g. a name too long for the file system
        return False


def write_split_file(path: str | Path, splits: dict[str, LabelledImages]) -> Path:
    """Write samples in the CoOp split format (atomically)."""
    data = {
        split: [[rel, label, images.classnames[label]] for rel, label in images.samples]
        for split, images in splits.items()
    }
    return atomic_write_json(path, data)


def few_shot_split(
    images: LabelledImages,
    shots: int,
    val_per_class: int = 0,
    seed: int = 0,
) -> dict[str, LabelledImages]:
    """Per class, `shots` training images and up to `val_per_class` validation images, seeded.

    Classes with fewer than `shots` images keep all they have for training (and give no val).
    """
    if shots < 1:
        raise ValueError(f"shots must be >= 1, got {shots}")
    by_class: dict[int, list[str]] = defaultdict(list)
    for rel, label in images.samples:
        by_class[label].append(rel)
    rng = random.Random(seed)
    train, val = [], []
    for label in range(len(images.classnames)):
        files = sorted(by_class.get(label, []))
        rng.shuffle(files)
        train += [(rel, label) for rel in files[:shots]]
        val += [(rel, label) for rel in files[shots : shots + val_per_class]]
    out = {"train": LabelledImages(images.root, train, images.classnames, images.name)}
    if val_per_class > 0 and val:
        out["val"] = LabelledImages(images.root, val, images.classnames, images.name)
    return out


def load_or_make_split(
    split_path: str | Path,
    images: LabelledImages,
    shots: int,
    val_per_class: int,
    seed: int,
) -> dict[str, LabelledImages]:
    """Reuse a saved k-shot split (checked against the class list), or make and save one."""
    split_path = Path(split_path)
    if split_path.is_file():
        splits = {s: read_split_file(split_path, s, images.root) for s in read_json(split_path)}
        if "train" not in splits:
            raise ValueError(f"{split_path}: saved split has no 'train' split (has {sorted(splits)})")
        if splits["train"].classnames != images.classnames:
            raise ValueError(f"{split_path}: saved split's class list differs from the dataset's "
                             f"({len(splits['train'].classnames)} vs {len(images.classnames)} classes)")
        return splits
    splits = few_shot_split(images, shots, val_per_class, seed)
    write_split_file(split_path, splits)
    return splits


# --- reading images ----------------------------------------------------------------------------
def load_rgb(path: Path) -> Image.Image:
    """Open an image as RGB; raises ValueError with the reason on anything unreadable."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{img.width}x{img.height} pixels exceeds the {MAX_IMAGE_PIXELS} limit")
            return img.convert("RGB")
    except Exception as err:  # UnidentifiedImageError, OSError, DecompressionBombError, EOFError, struct.error...
        raise ValueError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None


class ImageDataset(Dataset):
    """Images of a `LabelledImages` through a transform; unreadable images come back as None.

    Items: `(pixels, label, index)`. With `seed` set, the random transform of item i in epoch e
    is seeded by (seed, e, i), so augmentation does not depend on worker layout or on resuming.
    """

    def __init__(self, images: LabelledImages, transform: Callable, seed: int | None = None):
        self.images = images
        self.transform = transform
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __getitem__(self, index: int):
        rel, label = self.images.samples[index]
        path = self.images.root / rel
        try:
            img = load_rgb(path)
        except ValueError as err:
            warnings.warn(f"skipping unreadable image {path}: {err}", stacklevel=2)
            return None
        if self.seed is None:
            return self.transform(img), label, index
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(hash((self.seed, self.epoch, index)) & 0x7FFF_FFFF_FFFF_FFFF)
            return self.transform(img), label, index


def collate_skipping(batch: Sequence):
    """Stack the readable items; returns `(pixels, labels, indices, num_skipped)`."""
    items = [b for b in batch if b is not None]
    skipped = len(batch) - len(items)
    if not items:
        return None, None, None, skipped
    pixels = torch.stack([b[0] for b in items])
    labels = torch.tensor([b[1] for b in items], dtype=torch.long)
    indices = torch.tensor([b[2] for b in items], dtype=torch.long)
    return pixels, labels, indices, skipped
