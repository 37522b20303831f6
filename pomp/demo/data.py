"""Real demo data that installs offline, written in the formats users bring their own data in.

`prepare_demo_data(OUT)` (or `python -m pomp.demo.data OUT`) builds three datasets:

- `OUT/emoji`: a many-class, few-shot, named pre-training set (the shape of ImageNet-21K-P at
  small scale). Names from npm `emoji-datasource` (`emoji.json`), 64 px images from
  `emoji-datasource-{google,apple,twitter}` (one image per style, so up to 3 per class).
  Cleaned (see `clean_emoji`, counts in `OUT/emoji/cleaning.json`), then split, seeded, 70/30 by
  class into pre-training classes and held-out classes that pre-training never sees:
      pretrain/<code>/<style>.png + pretrain_names.txt    class folders of the seen classes
      heldout/<code>/<style>.png  + heldout_names.txt     class folders of the held-out classes
      split_pretrain.json   {"train": 2 images/class, "val": 1 image/class (classes with 3 images)}
      split_heldout.json    {"test": every image of the held-out classes}  (zero-shot test set)
  Images: RGBA composited on white, kept at 64 px.
- `OUT/fashion_mnist`: Fashion-MNIST test set (Debian `dataset-fashion-mnist`), a seeded,
  class-balanced subset (100 per class by default) with prompt-friendly names
  ("T-shirt/top" -> "t-shirt").
- `OUT/animal_silhouettes`: the `animal-mnist` silhouettes (bear ... zebra), a seeded,
  class-balanced subset (100 per class by default).
  Both 28 px grey sets are stored as RGB PNGs upscaled 4x (bicubic) to 112 px, white shapes on
  black as shipped; each gets `images/<folder>/<n>.png`, `names.txt` and `split_test.json`.

Each dataset directory is built in a temporary sibling and renamed into place when complete,
with a `.complete.json` stamp recording its settings: rerunning skips finished datasets, and an
interrupted run leaves no half-written dataset behind.

Sources (nothing else is downloaded):
- emoji tarballs: looked up in `sources_dir` (default `$POMP_CACHE/sources`, i.e.
  `~/.cache/pomp/sources`); when missing and `npm` is on PATH they are fetched with
  `npm pack emoji-datasource-google@16.0.0 --pack-destination DIR` (needs the npm registry).
  The tarballs are only read, member by member; nothing is extracted to disk.
- Fashion-MNIST: `/usr/share/datasets/fashion-mnist/t10k-*-ubyte.gz`
  (`apt-get install -y dataset-fashion-mnist`), or `fashion_mnist_dir`.
- animal-mnist: the data files of the installed package (`pip install --no-deps animal-mnist`;
  the package itself imports tensorflow, so it is located, never imported). Its files are
  pickled numpy arrays; they are read with an unpickler that admits only numpy's array
  reconstruction, so a tampered file cannot run code.
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
import io
import json
import os
import pickle
import random
import shutil
import struct
import subprocess
import sys
import tarfile
import tempfile
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np
from PIL import Image
from tqdm import tqdm

from pomp.io import atomic_write_json, check_writable_dir

EMOJI_VERSION = "16.0.0"
EMOJI_STYLES = ("google", "apple", "twitter")
EMOJI_NAMES_PACKAGE = "emoji-datasource"
DEMO_FORMAT_VERSION = 1
FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")

FASHION_MNIST_CLASSES = [  # (folder, prompt-friendly name), in label order 0..9
    ("tshirt_top", "t-shirt"),
    ("trouser", "trousers"),
    ("pullover", "pullover"),
    ("dress", "dress"),
    ("coat", "coat"),
    ("sandal", "sandal"),
    ("shirt", "shirt"),
    ("sneaker", "sneaker"),
    ("bag", "bag"),
    ("ankle_boot", "ankle boot"),
]
# animal-mnist labels 0..9 follow its documented, alphabetical class list (checked visually).
ANIMAL_CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]


class DemoDataError(RuntimeError):
    """A demo-data source is missing or unreadable; the message says how to get it."""


# --- emoji: cleaning ------------------------------------------------------------------------------
_GENDER_SIGNS = ("200D-2640", "200D-2642")  # ZWJ + female / male sign
_GENDERED_PERSONS = ("1F468", "1F469")  # MAN, WOMAN (ZWJ sequences "MAN COOK" etc.; PERSON is 1F9D1)
_GENDERED_FAMILY_CODEPOINTS = {"1F468", "1F469", "1F466", "1F467", "1F46B", "1F46C", "1F46D", "2640", "2642"}
_DIRECTION_SUFFIX = "-200D-27A1"  # ZWJ + rightwards arrow: "... FACING RIGHT"

DROP_REASONS = (
    "component",
    "country_or_region_flag",
    "family_or_couple_combination",
    "direction_variant",
    "gendered_duplicate",
    "no_image",
    "duplicate_name",
)


def _code(entry: dict) -> str:
    """Unified code without variation selectors (FE0F), upper case: comparable across entries."""
    return "-".join(cp for cp in str(entry["unified"]).upper().split("-") if cp != "FE0F")


def emoji_classname(name: str) -> str:
    """Prompt-friendly class name from an emoji.json name: lower case, no colons/commas."""
    name = name.replace("\u2019", "'").replace(":", " ").replace(",", " ")
    return " ".join(name.lower().split())


def clean_emoji(entries: Sequence[dict], styles: Sequence[str] = EMOJI_STYLES) -> tuple[list[dict], dict]:
    """Keep one class per distinct emoji concept; count every entry dropped, by reason.

    Rules, applied in this order to the base entries of `emoji.json` (each entry is one class;
    its `skin_variations` are never used, they are counted as `skin_tone_variants_ignored`):
      component                    category "Component" (skin-tone modifiers).
      country_or_region_flag       subcategory country-flag / subdivision-flag (no grounding in
                                   image features); generic flags (chequered, pirate...) are kept.
      family_or_couple_combination "FAMILY: ..." combinations, and family / couple emoji that
                                   spell out genders (KISS: MAN, MAN; TWO MEN HOLDING HANDS...);
                                   the neutral FAMILY, KISS, COUPLE WITH HEART and
                                   PEOPLE HOLDING HANDS are kept.
      direction_variant            "... FACING RIGHT" sequences: mirror images of another entry.
      gendered_duplicate           MAN/WOMAN versions of a person entry that exists on its own
                                   (code with the gender sign removed, or MAN/WOMAN replaced by
                                   PERSON, is another entry): "WOMAN RUNNING", "MAN COOK",
                                   "MAN: RED HAIR". Single-codepoint MAN, WOMAN, BOY, GIRL stay.
      no_image                     none of `styles` has an image.
      duplicate_name               same cleaned name as an earlier kept entry (by sort order).

    Returns `(kept, counts)`: kept entries as dicts `{folder, name, image, styles, sort_order,
    category}` sorted by `sort_order`; counts of each reason plus input/kept totals.
    """
    ordered = sorted(entries, key=lambda e: (e.get("sort_order", 0), str(e.get("unified", ""))))
    codes = {_code(e) for e in ordered}
    counts: Counter = Counter({reason: 0 for reason in DROP_REASONS})
    counts["skin_tone_variants_ignored"] = sum(len(e.get("skin_variations") or {}) for e in ordered)
    kept: list[dict] = []
    seen_names: set[str] = set()
    for entry in ordered:
        code, raw_name = _code(entry), str(entry.get("name") or "")
        codepoints = code.split("-")
        subcategory = entry.get("subcategory", "")
        reason = None
        if entry.get("category") == "Component":
            reason = "component"
        elif subcategory in ("country-flag", "subdivision-flag"):
            reason = "country_or_region_flag"
        elif raw_name.upper().startswith("FAMILY:") or (
            subcategory == "family" and (":" in raw_name or _GENDERED_FAMILY_CODEPOINTS & set(codepoints))
        ):
            reason = "family_or_couple_combination"
        elif _DIRECTION_SUFFIX in code:
            reason = "direction_variant"
        elif _is_gendered_duplicate(code, codes):
            reason = "gendered_duplicate"
        else:
            have = [s for s in styles if entry.get(f"has_img_{s}")]
            name = emoji_classname(raw_name)
            if not have:
                reason = "no_image"
            elif not name or name in seen_names:
                reason = "duplicate_name"
            else:
                seen_names.add(name)
                kept.append({
                    "folder": code.lower(),
                    "name": name,
                    "image": entry["image"],
                    "styles": have,
                    "sort_order": entry.get("sort_order", 0),
                    "category": entry.get("category", ""),
                })
        if reason:
            counts[reason] += 1
    counts["input_entries"] = len(ordered)
    counts["kept_classes"] = len(kept)
    return kept, dict(counts)


def _is_gendered_duplicate(code: str, codes: set[str]) -> bool:
    for sign in _GENDER_SIGNS:
        if sign in code:
            base = code.replace("-" + sign, "")
            if base != code and base in codes:
                return True
    first, _, rest = code.partition("-")
    if first in _GENDERED_PERSONS and rest.startswith("200D-"):
        if f"1F9D1-{rest}" in codes:
            return True
    return False


def split_classes(num_classes: int, heldout_fraction: float = 0.3, seed: int = 0) -> tuple[list[int], list[int]]:
    """Seeded split of class indices into (pre-training, held-out), each sorted."""
    order = list(range(num_classes))
    random.Random(seed).shuffle(order)
    n_heldout = int(round(num_classes * heldout_fraction))
    return sorted(order[n_heldout:]), sorted(order[:n_heldout])


# --- emoji: sources -------------------------------------------------------------------------------
def default_sources_dir() -> Path:
    root = os.environ.get("POMP_CACHE")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "pomp") / "sources"


def npm_tarball(sources_dir: Path, package: str, version: str = EMOJI_VERSION, download: bool = True) -> Path:
    """`sources_dir/<package>-<version>.tgz`, fetched with `npm pack` when missing and allowed."""
    path = sources_dir / f"{package}-{version}.tgz"
    if path.is_file():
        return path
    command = f"npm pack {package}@{version} --pack-destination {sources_dir}"
    if not download:
        raise DemoDataError(f"{path}: not found; fetch it with: {command}")
    npm = shutil.which("npm")
    if npm is None:
        raise DemoDataError(f"{path}: not found and npm is not installed; on a machine with npm run: {command}")
    sources_dir.mkdir(parents=True, exist_ok=True)
    result = subprocess.run([npm, "pack", f"{package}@{version}", "--pack-destination", str(sources_dir)],
                            capture_output=True, text=True, timeout=1800)
    if result.returncode != 0 or not path.is_file():
        tail = (result.stderr or result.stdout).strip().splitlines()[-3:]
        raise DemoDataError(f"`{command}` failed (exit {result.returncode}): {' | '.join(tail)}")
    return path


def read_emoji_json(tarball: Path) -> list[dict]:
    try:
        with tarfile.open(tarball, "r:gz") as tar:
            member = tar.getmember("package/emoji.json")
            data = json.load(tar.extractfile(member))
    except (tarfile.TarError, KeyError, OSError, json.JSONDecodeError, EOFError) as err:
        raise DemoDataError(f"{tarball}: no readable package/emoji.json ({err}); delete it and rerun") from None
    if not isinstance(data, list) or not all(isinstance(e, dict) and "unified" in e and "name" in e for e in data):
        raise DemoDataError(f"{tarball}: package/emoji.json is not the emoji-datasource list of entries")
    return data


def read_style_images(tarball: Path, style: str, wanted: set[str], size: int = 64) -> dict[str, bytes]:
    """PNG bytes of `package/img/<style>/<size>/<image>` for the wanted image names (read, never extracted)."""
    prefix = f"package/img/{style}/{size}/"
    found: dict[str, bytes] = {}
    try:
        with tarfile.open(tarball, "r|gz") as tar:  # streaming: one pass over the archive
            for member in tar:
                if member.isfile() and member.name.startswith(prefix):
                    name = member.name[len(prefix):]
                    if name in wanted:
                        found[name] = tar.extractfile(member).read()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DemoDataError(f"{tarball}: unreadable tarball ({err}); delete it and rerun") from None
    if not found:
        raise DemoDataError(f"{tarball}: no images under {prefix} (is it emoji-datasource-{style}?)")
    return found


def _emoji_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        rgba = img.convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(white, rgba).convert("RGB")


# --- grey 28 px sets ------------------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """An IDX file (MNIST format, gzipped) as a uint8 array."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as err:
        raise DemoDataError(f"{path}: unreadable ({err})") from None
    if len(data) < 4 or data[:2] != b"\x00\x00" or data[2] != 0x08:
        raise DemoDataError(f"{path}: not an unsigned-byte IDX file")
    ndim = data[3]
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    body = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise DemoDataError(f"{path}: IDX header says {dims} but holds {body.size} values")
    return body.reshape(dims)


def load_fashion_mnist_test(directory: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    directory = Path(directory) if directory else FASHION_MNIST_DIR
    images, labels = directory / "t10k-images-idx3-ubyte.gz", directory / "t10k-labels-idx1-ubyte.gz"
    if not images.is_file() or not labels.is_file():
        raise DemoDataError(
            f"Fashion-MNIST test files not found in {directory}; install them with "
            f"`apt-get update && apt-get install -y dataset-fashion-mnist` (Debian/Ubuntu), or pass a "
            f"directory holding t10k-images-idx3-ubyte.gz and t10k-labels-idx1-ubyte.gz"
        )
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y) or y.max() >= len(FASHION_MNIST_CLASSES):
        raise DemoDataError(f"{directory}: unexpected Fashion-MNIST shapes {x.shape} / {y.shape}")
    return x, y.astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else (no other global can be loaded, so no code runs)."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: only numpy arrays are allowed")


def animal_mnist_dir() -> Path:
    spec = importlib.util.find_spec("animal_mnist")  # locate without importing (it imports tensorflow)
    if spec is None or not spec.submodule_search_locations:
        raise DemoDataError("the animal-mnist package is not installed; install it with "
                            "`pip install --no-deps animal-mnist` (its data are inside the package)")
    return Path(list(spec.submodule_search_locations)[0]) / "data" / "Animal_MNIST"


def load_animal_silhouettes() -> tuple[np.ndarray, np.ndarray]:
    directory = animal_mnist_dir()
    arrays = []
    for name in ("animal_data_version_3.gz", "animal_label_version_3.gz"):
        path = directory / name
        if not path.is_file():
            raise DemoDataError(
                f"{path}: not found; reinstall with `pip install --no-deps --force-reinstall animal-mnist`"
            )
        try:
            with gzip.open(path, "rb") as f:
                arrays.append(_NumpyOnlyUnpickler(f).load())
        except (pickle.UnpicklingError, OSError, EOFError, ValueError, AttributeError) as err:
            raise DemoDataError(f"{path}: not a plain pickled numpy array ({err})") from None
    x, y = arrays
    if not (isinstance(x, np.ndarray) and isinstance(y, np.ndarray) and x.ndim == 3 and y.ndim == 1
            and len(x) == len(y) and x.dtype == np.uint8 and 0 <= y.min() and y.max() < len(ANIMAL_CLASSES)):
        raise DemoDataError(f"{directory}: unexpected animal-mnist arrays")
    return x, y.astype(np.int64)


def balanced_subset(labels: np.ndarray, per_class: int | None, seed: int) -> np.ndarray:
    """Seeded indices: `per_class` per label (all when None or fewer), in ascending order."""
    if per_class is None:
        return np.arange(len(labels))
    rng = np.random.default_rng(seed)
    picked = []
    for label in np.unique(labels):
        idx = np.flatnonzero(labels == label)
        picked.append(rng.choice(idx, size=min(per_class, len(idx)), replace=False))
    return np.sort(np.concatenate(picked))


def _grey_to_rgb(array: np.ndarray, scale: int = 4) -> Image.Image:
    img = Image.fromarray(array, mode="L").convert("RGB")
    return img.resize((img.width * scale, img.height * scale), Image.BICUBIC)


# --- writing datasets -----------------------------------------------------------------------------
def _stamp(directory: Path) -> dict | None:
    path = directory / ".complete.json"
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None
    except (OSError, json.JSONDecodeError):
        return None


class _DatasetBuilder:
    """Build `out_dir/name` in a temporary sibling; rename into place when complete."""

    def __init__(self, out_dir: Path, name: str, settings: dict):
        self.final = out_dir / name
        self.settings = {"format_version": DEMO_FORMAT_VERSION, "dataset": name, **settings}
        self.tmp: Path | None = None

    def done(self) -> bool:
        stamp = _stamp(self.final)
        return stamp is not None and stamp.get("settings") == self.settings

    def __enter__(self) -> Path:
        if self.final.exists() and _stamp(self.final) is None:
            raise DemoDataError(f"{self.final}: exists but was not written by pomp's demo data; move it away first")
        self.tmp = Path(tempfile.mkdtemp(prefix=f".{self.final.name}.partial-", dir=self.final.parent))
        return self.tmp

    def finish(self, summary: dict) -> None:
        atomic_write_json(self.tmp / ".complete.json", {"settings": self.settings, "summary": summary})
        if self.final.exists():  # an older build with other settings: replaced
            shutil.rmtree(self.final)
        os.replace(self.tmp, self.final)
        self.tmp = None

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.tmp is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)


def _write_names(path: Path, pairs: Iterable[tuple[str, str]]) -> None:
    path.write_text("".join(f"{folder}\t{name}\n" for folder, name in pairs), encoding="utf-8")


def _write_json(path: Path, obj) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False) + "\n", encoding="utf-8")


def build_emoji(out_dir: Path, sources_dir: Path, styles: Sequence[str] = EMOJI_STYLES, seed: int = 0,
                heldout_fraction: float = 0.3, download: bool = True, progress: bool = True) -> dict:
    builder = _DatasetBuilder(out_dir, "emoji", {"version": EMOJI_VERSION, "styles": list(styles), "seed": seed,
                                                 "heldout_fraction": heldout_fraction})
    if builder.done():
        return _stamp(builder.final)["summary"]
    entries = read_emoji_json(npm_tarball(sources_dir, EMOJI_NAMES_PACKAGE, download=download))
    kept, counts = clean_emoji(entries, styles)
    pretrain_ids, heldout_ids = split_classes(len(kept), heldout_fraction, seed)
    part_of = {i: "pretrain" for i in pretrain_ids} | {i: "heldout" for i in heldout_ids}
    with builder as root:
        files: dict[int, list[str]] = {i: [] for i in range(len(kept))}
        missing_images = 0
        for style in styles:
            tarball = npm_tarball(sources_dir, f"emoji-datasource-{style}", download=download)
            wanted = {e["image"] for e in kept if style in e["styles"]}
            images = read_style_images(tarball, style, wanted)
            bar = tqdm(kept, desc=f"emoji {style}", unit="img", disable=not progress, leave=False)
            for i, entry in enumerate(bar):
                if style not in entry["styles"]:
                    continue
                data = images.get(entry["image"])
                if data is None:
                    missing_images += 1
                    continue
                rel = f"{part_of[i]}/{entry['folder']}/{style}.png"
                (root / rel).parent.mkdir(parents=True, exist_ok=True)
                _emoji_png(data).save(root / rel)
                files[i].append(rel)
        empty = [i for i, f in files.items() if not f]
        if empty:
            raise DemoDataError(f"{len(empty)} emoji classes got no image (e.g. {kept[empty[0]]['name']!r}); "
                                f"the tarballs in {sources_dir} may be damaged: delete them and rerun")
        # per pre-training class: one seeded image to val when it has 3, the rest to train
        rng = random.Random(seed)
        split_pretrain: dict[str, list] = {"train": [], "val": []}
        for label, i in enumerate(pretrain_ids):
            paths = sorted(files[i])
            rng.shuffle(paths)
            n_val = 1 if len(paths) >= 3 else 0
            split_pretrain["val"] += [[p, label, kept[i]["name"]] for p in paths[:n_val]]
            split_pretrain["train"] += [[p, label, kept[i]["name"]] for p in sorted(paths[n_val:])]
        split_heldout = {"test": [[p, label, kept[i]["name"]] for label, i in enumerate(heldout_ids)
                                  for p in sorted(files[i])]}
        _write_json(root / "split_pretrain.json", split_pretrain)
        _write_json(root / "split_heldout.json", split_heldout)
        _write_names(root / "pretrain_names.txt", ((kept[i]["folder"], kept[i]["name"]) for i in pretrain_ids))
        _write_names(root / "heldout_names.txt", ((kept[i]["folder"], kept[i]["name"]) for i in heldout_ids))
        counts["images_missing_from_tarballs"] = missing_images
        _write_json(root / "cleaning.json", counts)
        summary = {
            "classes": len(kept),
            "pretrain_classes": len(pretrain_ids),
            "heldout_classes": len(heldout_ids),
            "pretrain_train_images": len(split_pretrain["train"]),
            "pretrain_val_images": len(split_pretrain["val"]),
            "heldout_test_images": len(split_heldout["test"]),
            "cleaning": counts,
        }
        builder.finish(summary)
    return summary


def _build_grey(out_dir: Path, name: str, load, classes: list[tuple[str, str]], per_class: int | None,
                seed: int, progress: bool, source: str) -> dict:
    builder = _DatasetBuilder(out_dir, name, {"per_class": per_class, "seed": seed, "scale": 4, "source": source})
    if builder.done():
        return _stamp(builder.final)["summary"]
    x, y = load()
    keep = balanced_subset(y, per_class, seed)
    with builder as root:
        for folder, _ in classes:
            (root / "images" / folder).mkdir(parents=True, exist_ok=True)
        test = []
        for i in tqdm(keep, desc=name, unit="img", disable=not progress, leave=False):
            folder, classname = classes[int(y[i])]
            rel = f"images/{folder}/{int(i):05d}.png"
            _grey_to_rgb(x[i]).save(root / rel)
            test.append([rel, int(y[i]), classname])
        _write_names(root / "names.txt", classes)
        _write_json(root / "split_test.json", {"test": test})
        summary = {"classes": len(classes), "test_images": len(test),
                   "per_class": dict(Counter(c for _, _, c in test)), "source": source}
        builder.finish(summary)
    return summary


def build_fashion_mnist(out_dir: Path, per_class: int | None = 100, seed: int = 0, directory: Path | None = None,
                        progress: bool = True) -> dict:
    source = str(Path(directory) if directory else FASHION_MNIST_DIR)
    return _build_grey(out_dir, "fashion_mnist", lambda: load_fashion_mnist_test(directory), FASHION_MNIST_CLASSES,
                       per_class, seed, progress, f"Fashion-MNIST test set ({source})")


def build_animal_silhouettes(out_dir: Path, per_class: int | None = 100, seed: int = 0, progress: bool = True) -> dict:
    classes = [(c, c) for c in ANIMAL_CLASSES]
    return _build_grey(out_dir, "animal_silhouettes", load_animal_silhouettes, classes, per_class, seed, progress,
                       "animal-mnist 0.4 (PyPI)")


DATASETS = ("emoji", "fashion_mnist", "animal_silhouettes")


def prepare_demo_data(
    out_dir: str | Path,
    sources_dir: str | Path | None = None,
    datasets: Sequence[str] = DATASETS,
    styles: Sequence[str] = EMOJI_STYLES,
    seed: int = 0,
    heldout_fraction: float = 0.3,
    fashion_per_class: int | None = 100,
    animals_per_class: int | None = 100,
    fashion_mnist_dir: str | Path | None = None,
    download: bool = True,
    progress: bool = True,
) -> dict:
    """Build the demo datasets under `out_dir` (skipping finished ones); returns a summary per dataset.

    Also written to `out_dir/demo_data.json`.
    """
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise ValueError(f"unknown demo datasets {unknown}; choose from {list(DATASETS)}")
    bad_styles = [s for s in styles if s not in ("google", "apple", "twitter", "facebook")]
    if bad_styles or not styles:
        raise ValueError(f"emoji styles must be among google, apple, twitter, facebook; got {list(styles)}")
    if not 0 < heldout_fraction < 1:
        raise ValueError(f"heldout_fraction must be in (0, 1), got {heldout_fraction}")
    out_dir = check_writable_dir(out_dir)
    sources = Path(sources_dir) if sources_dir else default_sources_dir()
    summary = {}
    if "emoji" in datasets:
        summary["emoji"] = build_emoji(out_dir, sources, styles, seed, heldout_fraction, download, progress)
    if "fashion_mnist" in datasets:
        summary["fashion_mnist"] = build_fashion_mnist(out_dir, fashion_per_class, seed, fashion_mnist_dir, progress)
    if "animal_silhouettes" in datasets:
        summary["animal_silhouettes"] = build_animal_silhouettes(out_dir, animals_per_class, seed, progress)
    atomic_write_json(out_dir / "demo_data.json", summary)
    return summary


def _per_class(value: str) -> int | None:
    return None if value == "all" else int(value)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pomp.demo.data", description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir")
    parser.add_argument("--sources", default=None,
                        help="where the npm tarballs are / go (default: $POMP_CACHE/sources)")
    parser.add_argument("--datasets", default=",".join(DATASETS),
                        help=f"comma-separated subset of {','.join(DATASETS)}")
    parser.add_argument("--styles", default=",".join(EMOJI_STYLES), help="emoji image styles")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--heldout-fraction", type=float, default=0.3)
    parser.add_argument("--fashion-per-class", type=_per_class, default=100, help="images per class, or 'all'")
    parser.add_argument("--animals-per-class", type=_per_class, default=100, help="images per class, or 'all'")
    parser.add_argument("--fashion-mnist-dir", default=None, help=f"default: {FASHION_MNIST_DIR}")
    parser.add_argument("--no-download", action="store_true", help="never run npm; fail if a tarball is missing")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    try:
        summary = prepare_demo_data(
            args.out_dir, args.sources, [d for d in args.datasets.split(",") if d],
            [s for s in args.styles.split(",") if s], args.seed, args.heldout_fraction,
            args.fashion_per_class, args.animals_per_class, args.fashion_mnist_dir,
            download=not args.no_download, progress=not args.no_progress,
        )
    except (DemoDataError, ValueError, PermissionError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for name, info in summary.items():
        brief = {k: v for k, v in info.items() if k not in ("cleaning", "per_class")}
        print(f"{name}: {json.dumps(brief)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
