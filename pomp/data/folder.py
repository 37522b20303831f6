"""Labelled image sets on disk: class folders, names files, k-shot splits and CoOp split files.

A split file (ours and CoOp's `split_zhou_*.json`) maps split names to samples:
`{"train": [[relative_path, label, classname], ...], "val": [...], "test": [...]}`.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import os
import random
import signal
import unicodedata
import warnings
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError
from torch.utils.data import Dataset

from pomp.data.names import clean_classname
from pomp.data.names import read_class_list, read_names_file  # noqa: F401  (read here before pomp.data.names)
from pomp.io import atomic_write_json, read_json


def _openable_extensions() -> frozenset[str]:
    """Every file extension PIL registers for a format it can decode (.jpg, .jfif, .png, .webp, .avif,
    .tga, .tif, .pgm...). Left out: stub formats PIL only identifies (HDF5, GRIB, BUFR, WMF) and
    MPEG, whose plugin parses the header only."""
    Image.init()
    out = set()
    for ext, fmt in Image.registered_extensions().items():
        opener = Image.OPEN.get("JPEG" if fmt == "MPO" else fmt, (None,))[0]  # MPO files open through JPEG
        stub = inspect.isclass(opener) and issubclass(opener, ImageFile.StubImageFile)
        if opener is not None and not stub and fmt != "MPEG":
            out.add(ext.lower())
    return frozenset(out)


IMAGE_EXTENSIONS = _openable_extensions()
MAX_IMAGE_PIXELS = 8192 * 8192
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


# --- reading images ----------------------------------------------------------------------------
def load_rgb(path) -> Image.Image:
    """Open an image (a path or a binary file object) as 8-bit RGB, as the file means it
    (see `to_rgb`); raises ValueError with the reason on anything unreadable.

    TIFFs that PIL reads wrongly or not at all (several samples per pixel of more than 8 bits, as
    16-bit RGB scans and microscopy write them; float RGB) are decoded by tifffile (`tiff_to_rgb`).
    """
    try:
        try:
            with warnings.catch_warnings():  # our own pixel limit applies below (PIL still refuses over 2x its own)
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)
                img = Image.open(path)
        except UnidentifiedImageError:
            if _is_tiff(path):
                return tiff_to_rgb(path)
            raise
        with img:
            if img.width * img.height > MAX_IMAGE_PIXELS and img.format == "JPEG":
                _decode_jpeg_smaller(img)  # a 108-megapixel phone photo or a large scan: decoded at 1/2..1/8
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise ValueError(f"{img.width}x{img.height} pixels exceeds the {MAX_IMAGE_PIXELS} limit")
            if _pil_misreads_tiff(img):
                return tiff_to_rgb(path, fallback=None if img.tag_v2.get(284) == 2 else img)
            return to_rgb(img)
    except Exception as err:  # UnidentifiedImageError, OSError, DecompressionBombError, EOFError, struct.error...
        raise ValueError(str(err).splitlines()[0] if str(err) else type(err).__name__) from None


def _decode_jpeg_smaller(img: Image.Image) -> None:
    """Have the JPEG decoder scale by the smallest of 1/2, 1/4, 1/8 that brings `img` within
    `MAX_IMAGE_PIXELS` (libjpeg's DCT scaling: no full-size image in memory); a no-op if none does."""
    for scale in (2, 4, 8):
        if (img.width // scale) * (img.height // scale) <= MAX_IMAGE_PIXELS:
            img.draft(img.mode if img.mode in ("RGB", "L") else None, (-(-img.width // scale), -(-img.height // scale)))
            return


def _is_tiff(source) -> bool:
    if hasattr(source, "read"):
        source.seek(0)
        head = source.read(4)
        source.seek(0)
    else:
        with open(source, "rb") as f:
            head = f.read(4)
    return head in (b"II*\0", b"MM\0*", b"II+\0", b"MM\0+")  # classic and BigTIFF, both byte orders


def _pil_misreads_tiff(img: Image.Image) -> bool:
    """TIFF samples wider than 8 bits that PIL reads wrongly: several per pixel (16-bit RGB: PIL keeps the
    high byte, and garbles samples stored plane by plane), or min-is-white grey (PIL does not invert it)."""
    if img.format != "TIFF":
        return False
    bits = img.tag_v2.get(258, (8,))  # BitsPerSample
    bits = bits if isinstance(bits, tuple) else (bits,)
    several = int(img.tag_v2.get(277, 1)) > 1  # SamplesPerPixel
    return max(bits) > 8 and (several or img.tag_v2.get(262) == 0)  # PhotometricInterpretation 0: min-is-white


def tiff_to_rgb(source, fallback: Image.Image | None = None) -> Image.Image:
    """The first page of a TIFF as 8-bit RGB, decoded by tifffile (the microscopy community's reader):
    samples scaled as `to_rgb` scales grey ones (16-bit: round(v * 255 / 65535); floats: [0, 1], else
    the image's own range, all channels together), extra alpha composited on white, TIFF orientation
    applied. Photometric RGB, min-is-black (first sample) and min-is-white. When tifffile cannot decode
    the file (a compression that needs the optional imagecodecs package, e.g. LZW), `fallback` (PIL's
    reading, 8 bits kept) is used if given; otherwise the error is raised (source: TIFF 6.0)."""
    import tifffile

    if hasattr(source, "seek"):
        source.seek(0)
    try:
        with tifffile.TiffFile(source) as tif:
            page = tif.pages[0]
            if page.imagewidth * page.imagelength > MAX_IMAGE_PIXELS:
                raise ValueError(f"{page.imagewidth}x{page.imagelength} pixels exceeds the {MAX_IMAGE_PIXELS} limit")
            array, axes, photometric = page.asarray(), page.axes, int(page.photometric)
            extra = tuple(page.extrasamples or ())
            orientation = int(page.tags[274].value) if 274 in page.tags else 1
    except Exception:
        if fallback is not None:
            return to_rgb(fallback)
        raise
    if "S" in axes:  # samples last, whether stored per pixel (YXS) or per plane (SYX)
        array = np.moveaxis(array, axes.index("S"), -1)
    array = array.reshape(array.shape[-3:] if "S" in axes else array.shape[-2:])
    if photometric == 2 and array.ndim == 3 and array.shape[-1] >= 3:  # RGB (+ extra samples)
        alpha = array.shape[-1] > 3 and extra[:1] in ((1,), (2,))  # associated / unassociated alpha
        pixels = np.ascontiguousarray(_high_depth_to_8bit(array)[..., :4 if alpha else 3])
        mode = ("RGBa" if extra[:1] == (1,) else "RGBA") if alpha else "RGB"
        img = Image.frombytes(mode, (pixels.shape[1], pixels.shape[0]), pixels.tobytes())
    elif photometric in (0, 1):  # min-is-white / min-is-black: the first sample is the grey level
        grey = np.ascontiguousarray(_high_depth_to_8bit(array[..., 0] if array.ndim == 3 else array))
        img = Image.frombytes("L", (grey.shape[1], grey.shape[0]), (255 - grey if photometric == 0 else grey).tobytes())
    else:
        raise ValueError(f"TIFF with photometric interpretation {photometric} and {page.bitspersample}-bit samples "
                         f"is not supported")
    img.getexif()[0x0112] = orientation  # applied by to_rgb, as PIL's own TIFF reading does
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    """8-bit RGB of any PIL mode, scaled rather than clipped.

    - 16-bit greyscale (I;16, I;16B, I;16L, and I with values in 0..65535): v -> round(v * 255 / 65535);
      other I images and F images: [0, 1] floats x 255, else the image's own min..max stretched to 0..255.
    - Transparency (RGBA, LA, La, PA, RGBa, P or L/RGB with a transparent colour): composited on
      white, as a viewer shows it (the demo data do the same), not the hidden colour under it.
    - EXIF orientation applied (a phone photo stored sideways is read upright).
    - Everything else (1, L, P, CMYK, YCbCr, LAB, HSV, RGBX): PIL's own conversion.
    """
    img = ImageOps.exif_transpose(img)
    if img.mode.startswith("I") or img.mode.startswith("F"):
        return Image.fromarray(_high_depth_to_8bit(np.asarray(img)), mode="L").convert("RGB")
    if "transparency" in img.info and img.mode in ("P", "L", "RGB"):
        img = img.convert("RGBA")
    elif img.mode == "La":
        img = img.convert("LA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa"):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


def _high_depth_to_8bit(a: np.ndarray) -> np.ndarray:
    """Samples of any depth as uint8, all channels scaled together: uint8 as they are; integers within
    0..65535 as 16-bit (exact rounding of v * 255 / 65535); floats within [0, 1] x 255; else the
    array's own finite min..max stretched to 0..255."""
    if a.dtype == np.uint8:
        return a
    if a.dtype.kind in "ui" and a.size and a.min() >= 0 and a.max() <= 65535:
        return ((a.astype(np.uint64) * 255 + 32767) // 65535).astype(np.uint8)  # round(v / 257), exact
    a = a.astype(np.float64)
    finite = a[np.isfinite(a)]
    if not finite.size:
        return np.zeros(a.shape, np.uint8)
    low, high = float(finite.min()), float(finite.max())
    if a.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        low, high = 0.0, 1.0
    scaled = (np.nan_to_num(a, nan=low, posinf=high, neginf=low) - low) / max(high - low, 1e-12) * 255.0
    return np.clip(np.rint(scaled), 0, 255).astype(np.uint8)


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
