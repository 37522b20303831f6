"""Split files and k-shot splits. A split file (ours and CoOp's `split_zhou_*.json`) maps split names to samples:
`{"train": [[relative_path, label, classname], ...], "val": [...], "test": [...]}`."""

from __future__ import annotations

import hashlib
import json
import random
from collections import defaultdict
from pathlib import Path

from pomp.data.folder import LabelledImages
from pomp.data.names import clean_classname
from pomp.io import atomic_write_json, read_json

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


def split_parameters(images: LabelledImages, shots: int, val_per_class: int, seed: int) -> dict:
    """What makes a k-shot split: data root, class list, shots, val per class, seed."""
    classes = hashlib.sha256(json.dumps(images.classnames, ensure_ascii=False).encode()).hexdigest()[:16]
    return {"root": str(Path(images.root).resolve()), "num_classes": len(images.classnames), "classes": classes,
            "shots": shots, "val_per_class": val_per_class, "split_seed": seed}


def _params_path(split_path: Path) -> Path:
    return split_path.with_name(split_path.stem + "_params.json")


def load_or_make_split(
    split_path: str | Path,
    images: LabelledImages,
    shots: int,
    val_per_class: int,
    seed: int,
    reuse: bool = True,
) -> dict[str, LabelledImages]:
    """A k-shot split saved at `split_path` with the parameters that made it (`<stem>_params.json`).

    With `reuse` (a resumed run) a saved split is read back, provided it was made with these
    parameters and class list; otherwise a `ValueError` names the file and each difference.
    Without `reuse`, or when none is saved, the split is made and saved (replacing a stale one).
    """
    split_path = Path(split_path)
    params = split_parameters(images, shots, val_per_class, seed)
    params_path = _params_path(split_path)
    if reuse and split_path.is_file():
        saved = read_json(params_path) if params_path.is_file() else None  # None: saved by an older pomp
        splits = {s: read_split_file(split_path, s, images.root) for s in read_json(split_path)}
        if "train" not in splits:
            raise ValueError(f"{split_path}: saved split has no 'train' split (has {sorted(splits)})")
        saved_names = splits["train"].classnames
        if saved_names != images.classnames:
            raise ValueError(f"{split_path}: saved split's class list differs from the dataset's "
                             f"({_first_difference(saved_names, images.classnames)})")
        # the root is where the images are, not which: a moved copy keeps its split (the files are checked above)
        diffs = [f"{k} {saved.get(k)!r} -> {params.get(k)!r}" for k in params
                 if saved is not None and k != "root" and saved.get(k) != params.get(k)]
        if diffs:
            raise ValueError(f"{split_path}: the saved split was made with other parameters ({'; '.join(diffs)})")
        return splits
    splits = few_shot_split(images, shots, val_per_class, seed)
    params_path.unlink(missing_ok=True)  # never a new split beside the old one's parameters
    write_split_file(split_path, splits)
    atomic_write_json(params_path, params)
    return splits


def _first_difference(saved: list[str], now: list[str]) -> str:
    for i, (a, b) in enumerate(zip(saved, now)):
        if a != b:
            return f"class {i} is {a!r} in the split, {b!r} now"
    return f"{len(saved)} classes in the split, {len(now)} now"
