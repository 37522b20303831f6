"""Labelled image sets on disk: class folders scanned into `LabelledImages` (one listing every folder reader uses,
with what it left out counted), and the dataset that reads their images through a transform.

Split files and k-shot splits: `pomp.data.splits`; decoding an image file: `pomp.data.images`.
"""

from __future__ import annotations

import os
import signal
import unicodedata
import warnings
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from pomp.data.images import IMAGE_EXTENSIONS, load_rgb
from pomp.data.names import clean_classname
from pomp.data.names import read_class_list, read_names_file  # noqa: F401  (read here before pomp.data.names)

# folders other systems add to archives and disks: never classes, never scanned
SYSTEM_FOLDERS = frozenset({"__MACOSX", "@eaDir", "lost+found", "$RECYCLE.BIN", "System Volume Information"})


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
SKIP_REASONS = {  # key in LabelledImages.skipped -> how a report names it
    "hidden": "hidden (dot) files or folders, macOS ._ files included",
    "system_folders": "system folders (__MACOSX...)",
    "symlinks_into_tree": "links back into the tree",
    "not_images": "files whose extension names no image format PIL reads",
    "undecodable_names": "names that are not UTF-8",
    "not_regular_files": "broken links or special files",
    "unreadable_folders": "folders that cannot be listed",
    "files_outside_class_folders": "files beside the class folders",
    "windows_paths": "files named with Windows paths (`images\\cat\\1.jpg`: a zip made on Windows, unpacked by "
                     "Python's zipfile or shutil; `unzip` makes the folders)",
}


@dataclass
class SkippedFiles:
    """What a scan left out, by reason (keys of `SKIP_REASONS`), with the first path of each."""

    counts: Counter = field(default_factory=Counter)
    examples: dict[str, str] = field(default_factory=dict)

    def add(self, reason: str, path: str | Path) -> None:
        self.counts[reason] += 1
        self.examples.setdefault(reason, printable_path(path))

    def report(self, root: Path) -> str:
        """One line: `<root>: skipped N entries: 2 hidden ... (e.g. a/.x.jpg); ...`."""
        parts = [f"{n} {SKIP_REASONS[k]} (e.g. {self.examples[k]})" for k, n in self.counts.items()]
        return f"{printable_path(root)}: skipped {sum(self.counts.values())} entries: {'; '.join(parts)}"


def printable_path(path: str | Path) -> str:
    """A path as one printable line: bytes that are not UTF-8 shown as `\\xNN` (never an encoding error)."""
    return os.fsencode(str(path)).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:  # os.listdir keeps undecodable bytes as lone surrogates
        return False
    return True


def _skip_reason(entry: os.DirEntry, tree_real: str) -> str | None:
    """Why a directory entry is not scanned, or None. `tree_real`: the real path of the dataset root."""
    if not _is_utf8(entry.name):
        return "undecodable_names"
    if entry.name.startswith("."):  # .DS_Store, .git, macOS resource forks ._x.jpg, hidden images
        return "hidden"
    if entry.name in SYSTEM_FOLDERS and entry.is_dir():
        return "system_folders"
    if entry.is_symlink():
        target = os.path.realpath(entry.path)
        # a link to the root, into it, or to a folder holding it would list the tree again (or forever)
        if target == tree_real or target.startswith(tree_real + os.sep) or tree_real.startswith(target + os.sep):
            return "symlinks_into_tree"
    return None


def _scandir(directory: Path, skipped: SkippedFiles) -> list[os.DirEntry]:
    try:
        with os.scandir(directory) as entries:
            return list(entries)
    except OSError:
        skipped.add("unreadable_folders", directory)
        return []


def list_class_folders(root: str | Path, skipped: SkippedFiles | None = None) -> list[str]:
    """Sub-folder names of `root`, sorted: hidden and system folders, links back into the tree and
    non-UTF-8 names are left out (counted in `skipped`), as are files beside the folders (counted
    apart when named with Windows paths: a Windows zip unpacked by Python, which keeps `\\`)."""
    root = Path(root)
    skipped = skipped if skipped is not None else SkippedFiles()
    tree_real = os.path.realpath(root)
    folders = []
    for entry in _scandir(root, skipped):
        reason = _skip_reason(entry, tree_real)
        if reason:
            skipped.add(reason, entry.path)
        elif entry.is_dir():
            folders.append(entry.name)
        else:
            skipped.add("windows_paths" if "\\" in entry.name else "files_outside_class_folders", entry.path)
    return sorted(folders)


def list_image_files(folder: str | Path, skipped: SkippedFiles | None = None, tree: str | Path | None = None,
                     ) -> list[Path]:
    """Image files under `folder`, at any depth, sorted: the one listing every folder reader uses.

    Kept: files whose extension names a format PIL decodes (`IMAGE_EXTENSIONS`). Left out and
    counted in `skipped`: hidden files and folders at any depth (macOS `._*` included), system
    folders (`SYSTEM_FOLDERS`), links pointing back into `tree` (default: `folder`) and folders
    reached twice (link loops), non-UTF-8 names, other files. Links to elsewhere are followed.
    """
    folder = Path(folder)
    skipped = skipped if skipped is not None else SkippedFiles()
    tree_real = os.path.realpath(tree if tree is not None else folder)
    files, seen, stack = [], set(), [folder]
    while stack:
        directory = stack.pop()
        try:
            st = directory.stat()
        except OSError:
            skipped.add("unreadable_folders", directory)
            continue
        if (st.st_dev, st.st_ino) in seen:
            skipped.add("symlinks_into_tree", directory)
            continue
        seen.add((st.st_dev, st.st_ino))
        for entry in _scandir(directory, skipped):
            reason = _skip_reason(entry, tree_real)
            if reason:
                skipped.add(reason, entry.path)
            elif entry.is_dir():
                stack.append(Path(entry.path))
            elif not entry.is_file():
                skipped.add("not_regular_files", entry.path)
            elif os.path.splitext(entry.name)[1].lower() not in IMAGE_EXTENSIONS:
                skipped.add("not_images", entry.path)
            else:
                files.append(Path(entry.path))
    return sorted(files)


def _nfc(name: str) -> str:
    return unicodedata.normalize("NFC", name)


def scan_class_folders(
    root: str | Path,
    names: dict[str, str] | None = None,
    name: str = "",
) -> LabelledImages:
    """One sub-folder per class. Class order: the names mapping's order when given, else sorted folders.

    Folder names match names-file keys after Unicode NFC normalisation (archives made on macOS
    hold NFD names). What the scan leaves out (see `list_image_files`) is counted in `.skipped`
    and reported in one warning; empty class folders are counted and reported too. Folders
    missing from the names mapping, or a mapping naming absent folders, are errors (before any
    training starts).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: image folder not found")
    skipped = SkippedFiles()
    folders = list_class_folders(root, skipped)
    by_nfc: dict[str, str] = {}
    for folder in folders:
        if _nfc(folder) in by_nfc:
            raise ValueError(f"{root}: folders {by_nfc[_nfc(folder)]!r} and {folder!r} are one name in Unicode NFC")
        by_nfc[_nfc(folder)] = folder
    if names is not None:
        wanted = {_nfc(key): key for key in names}
        unknown = [f for key, f in by_nfc.items() if key not in wanted]
        missing = [key for key in names if _nfc(key) not in by_nfc]
        if unknown:
            by_case = {key.casefold(): names_key for key, names_key in wanted.items()}
            same_but_case = [(f, by_case[_nfc(f).casefold()]) for f in unknown if _nfc(f).casefold() in by_case]
            example = (f"e.g. {same_but_case[0][0]!r}, listed as {same_but_case[0][1]!r}: folder names match with "
                       f"their case" if same_but_case else f"e.g. {unknown[0]!r}")
            raise ValueError(f"{root}: {len(unknown)} class folders have no name in the names file ({example})")
        if missing:
            raise ValueError(f"{root}: names file lists {len(missing)} classes with no folder (e.g. {missing[0]!r})")
        folders = [by_nfc[_nfc(key)] for key in names]
        classnames = list(names.values())
    else:
        classnames = [clean_classname(_nfc(f)) for f in folders]
    samples: list[tuple[str, int]] = []
    empty = 0
    for label, folder in enumerate(folders):
        files = list_image_files(root / folder, skipped, tree=root)
        if not files:
            empty += 1
            warnings.warn(f"{root / folder}: class folder holds no images", stacklevel=2)
        samples.extend((str(p.relative_to(root)), label) for p in files)
    if skipped.counts:
        warnings.warn(skipped.report(root), stacklevel=2)
    if not samples:
        raise ValueError(f"{root}: no images found" + (f" ({skipped.report(root).split(': ', 1)[1]})"
                                                        if skipped.counts else ""))
    counts = dict(skipped.counts) | ({"empty_class_folders": empty} if empty else {})
    return LabelledImages(root, samples, classnames, name or root.name, counts)


def unique_dataset_names(paths: Sequence[str | Path]) -> list[str]:
    """A short, distinct name per dataset path (result files, table columns, cache folders).

    A folder gives its name, a split file its stem; names that collide take parent folder names
    until they differ: `a/images`, `b/images` -> `a_images`, `b_images`. The same dataset given
    twice is an error.
    """
    resolved = [Path(p).resolve() for p in paths]
    for i, p in enumerate(resolved):
        if p in resolved[:i]:
            raise ValueError(f"{paths[i]}: dataset given twice")
    parts = [[*r.parent.parts[1:], r.stem if r.suffix == ".json" else r.name] for r in resolved]
    depth = [1] * len(parts)
    while True:
        names = ["_".join(p[-d:]) for p, d in zip(parts, depth)]
        clashes = [i for i, n in enumerate(names) if names.count(n) > 1 and depth[i] < len(parts[i])]
        if not clashes:
            return names
        for i in clashes:
            depth[i] += 1


# Signals that ask a run to stop: Ctrl-C, a closed terminal (SIGHUP), `kill` and preemption by SLURM or
# torchrun (SIGTERM), the warning a scheduler sends before a time limit (SLURM `--signal`, SGE `-notify`:
# SIGUSR1/SIGUSR2) and the CPU-time limit (SIGXCPU). SIGQUIT (Ctrl-\) and SIGKILL keep their default.
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1, signal.SIGUSR2, signal.SIGXCPU)


def ignore_interrupts_in_worker(_worker_id: int) -> None:
    """DataLoader `worker_init_fn`: the `STOP_SIGNALS` are the main process's to handle (it stops the
    workers); a worker killed by one would otherwise abort the step the main process is finishing."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


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
