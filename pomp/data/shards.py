"""Class-labelled images in webdataset tar shards: written once, read split across ranks and workers.

Format (`pomp-shards-v1`), one folder per shard set:

    <split>-000000.tar, <split>-000001.tar, ...   tar files; every sample is three members
        <key>.jpg | <key>.png   the image bytes (JPEG and PNG files copied unchanged, others re-encoded as PNG)
        <key>.cls               the class id, ASCII decimal ("17")
        <key>.json              {"label": 17, "classname": "tabby", "path": "<the source image's relative path>"}
    classes.txt   the class names in id order, one a line (line i names class id i)
    shards.json   manifest: {"format": "pomp-shards-v1", "classnames": [...], "splits": {"train": {"pattern":
                  "train-{000000..000009}.tar", "shards": ["train-000000.tar", ...], "counts": [1000, ...],
                  "num_samples": ..., "skipped": ...}, "val": {...}}}

Keys are the sample's position in the written order (`000000123`), unique within a split. Samples
are shuffled (seeded) before writing, so every shard mixes classes; `maxcount` samples a shard.

Reading (`ShardSet`, `ShardStream`): a brace pattern (local paths, `http(s)://`, `pipe:` — anything
webdataset opens) expands to N shards. Rank r of W takes shard group `(r + epoch) % W`, i.e.
shards `g, g+W, g+2W, ...`: groups are disjoint, so no sample is read twice in an epoch, and
rotating the groups over epochs changes which rank sees which samples. Inside a rank the group's
shards are shuffled per epoch and dealt to loader workers round-robin (worker w of K takes every
K-th), and each worker shuffles samples through a seeded buffer. An epoch is one pass over the
rank's group.

DDP needs every rank to take the same number of steps: steps per epoch = (smallest group's sample
count) // batch size, the same on every rank and in every epoch (rotation only permutes the
groups). Samples past that in larger groups are dropped for that epoch (a different tail each
epoch). Shard counts divisible by the world size with equal-size shards drop nothing but the
remainder of a batch; the per-shard counts come from `shards.json`, so planning reads no tar file.
A rank that runs short (a damaged shard) takes empty steps, so DDP stays in step.

Augmentation of a sample is seeded by (seed, epoch, key), independent of worker layout.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import random
import warnings
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pomp.data.folder import LabelledImages
from pomp.data.images import load_rgb
from pomp.data.names import read_class_list
from pomp.io import WriteError, atomic_write_json, atomic_write_text, read_json

FORMAT = "pomp-shards-v1"
MANIFEST = "shards.json"
CLASSES = "classes.txt"
IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
SHUFFLE_BUFFER = 1000  # samples per worker held for shuffling (raw bytes, before decoding)


def _wds():
    try:
        import webdataset
    except ImportError:  # pragma: no cover - depends on the environment
        raise ImportError("reading or writing shards needs the `webdataset` package: "
                          "pip install 'pomp[shards]'") from None
    return webdataset


# --- writing -----------------------------------------------------------------------------------
def _image_member(path: Path) -> tuple[str, bytes]:
    """(extension, bytes) of an image: JPEG/PNG copied unchanged, anything else re-encoded as PNG."""
    with Image.open(path) as img:  # reads the header only; raises on a non-image
        fmt = img.format
    if fmt == "JPEG":
        return "jpg", path.read_bytes()
    if fmt == "PNG":
        return "png", path.read_bytes()
    buf = io.BytesIO()
    load_rgb(path).save(buf, format="PNG")
    return "png", buf.getvalue()


def write_shards(
    images: LabelledImages,
    out_dir: str | Path,
    split: str = "train",
    maxcount: int = 1000,
    seed: int = 0,
    shuffle: bool = True,
    progress: bool = False,
) -> dict:
    """Write `images` as `out_dir/<split>-NNNNNN.tar` shards of at most `maxcount` samples; update the
    manifest (`shards.json`) and `classes.txt`. Returns the split's manifest entry.

    A shard set's splits share one class list: writing a split whose class names differ from the
    manifest's is an error. Unreadable images are skipped with a warning and counted.
    """
    _wds()  # webdataset is needed: say so before anything is written
    if maxcount < 1:
        raise ValueError(f"maxcount must be >= 1, got {maxcount}")
    if not split or any(c in split for c in "/.{}-"):
        raise ValueError(f"split name {split!r} must be a plain word (no / . {{ }} -)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    manifest = _manifest_for(out_dir / MANIFEST, images.classnames)
    for old in out_dir.glob(f"{split}-*.tar"):  # rewriting a split replaces all of its shards
        old.unlink()
    order = list(range(len(images)))
    if shuffle:
        random.Random(seed).shuffle(order)
    writer = _ShardWriter(out_dir, split, maxcount)
    skipped = 0
    try:
        from tqdm.auto import tqdm

        for key_index, i in enumerate(tqdm(order, desc=f"{split} shards", disable=not progress)):
            rel, label = images.samples[i]
            try:
                ext, data = _image_member(images.root / rel)
            except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
                warnings.warn(f"skipping unreadable image {images.root / rel}: {err}", stacklevel=2)
                skipped += 1
                continue
            meta = {"label": label, "classname": images.classnames[label], "path": rel}
            writer.write({"__key__": f"{key_index:09d}", ext: data, "cls": str(label).encode(),
                          "json": json.dumps(meta, ensure_ascii=False).encode()})
        writer.close()
    except BaseException as err:
        writer.abort(err)
        raise
    if not writer.shards:
        raise ValueError(f"{images.name or images.root}: no readable images to write")
    entry = {"pattern": f"{split}-{{000000..{len(writer.shards) - 1:06d}}}.tar", "shards": writer.shards,
             "counts": writer.counts, "num_samples": sum(writer.counts), "skipped": skipped, "maxcount": maxcount,
             "seed": seed, "source": str(images.root)}
    manifest["splits"][split] = entry
    atomic_write_text(out_dir / CLASSES, "".join(f"{name}\n" for name in images.classnames))
    atomic_write_json(out_dir / MANIFEST, manifest)
    return entry


def _manifest_for(path: Path, classnames: list[str]) -> dict:
    """The folder's manifest (a new one when there is none); refused when it lists other classes."""
    manifest = read_json(path) if path.is_file() else {"format": FORMAT, "classnames": list(classnames), "splits": {}}
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: not a {FORMAT} manifest")
    if manifest["classnames"] != list(classnames):
        raise ValueError(f"{path}: holds a different class list ({len(manifest['classnames'])} classes) "
                         f"than these images ({len(classnames)}); write to another folder")
    return manifest


class _ShardWriter:
    """Samples into `<split>-NNNNNN.tar` files of at most `maxcount` samples each; a shard is written as a
    hidden temporary and renamed once complete, so a shard set never holds a partial shard."""

    def __init__(self, out_dir: Path, split: str, maxcount: int):
        self.out_dir, self.split, self.maxcount = out_dir, split, maxcount
        self.shards: list[str] = []
        self.counts: list[int] = []
        self.writer, self.count, self.paths = None, 0, None

    def write(self, sample: dict) -> None:
        if self.writer is None or self.count >= self.maxcount:
            self.close()
            name = f"{self.split}-{len(self.shards):06d}.tar"
            self.shards.append(name)
            self.paths = (self.out_dir / f".{name}.tmp", self.out_dir / name)
            self.writer = _wds().TarWriter(str(self.paths[0]), encoder=False, mtime=0.0)
            self.count = 0
        self.writer.write(sample)
        self.count += 1

    def close(self) -> None:
        """Publish the shard being written."""
        if self.writer is not None:
            self.writer.close()
            os.replace(*self.paths)
            self.counts.append(self.count)
            self.writer = None

    def abort(self, err: BaseException) -> None:
        """Remove the shard being written; an OSError (e.g. ENOSPC) raises a `WriteError` naming it."""
        if self.writer is None:
            return
        try:
            self.writer.close()
        except OSError:
            pass
        self.paths[0].unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise WriteError(err.errno or errno.EIO, f"{self.paths[1]}: could not be written "
                                                     f"({err.strerror or err}); earlier shards are complete") from err


# --- shard lists -------------------------------------------------------------------------------
def _is_local(url: str) -> bool:
    return "://" not in url and not url.startswith("pipe:")


def expand_pattern(pattern: str) -> list[str]:
    """A brace pattern (`dir/train-{000000..000009}.tar`, `::` joins several) -> shard URLs; local ones must exist."""
    urls = _wds().shardlists.expand_urls(pattern)
    if not urls:
        raise ValueError(f"{pattern}: no shards")
    missing = [u for u in urls if _is_local(u) and not Path(u).is_file()]
    if missing:
        raise FileNotFoundError(f"{pattern}: {len(missing)} of {len(urls)} shards not found (e.g. {missing[0]})")
    return urls


def assign_shards(num_shards: int, rank: int, world: int, epoch: int = 0, seed: int = 0, worker: int = 0,
                  num_workers: int = 1, rotate: bool = True) -> list[int]:
    """Shard indices read by one loader worker of one rank in one epoch (see the module docstring)."""
    group = (rank + epoch) % world if rotate else rank
    mine = list(range(group, num_shards, world))
    random.Random(f"{seed}:{epoch}:{group}").shuffle(mine)
    return mine[worker::num_workers]


def _warn_and_continue(exn: Exception) -> bool:
    warnings.warn(f"shard read error, rest of the shard skipped: {exn!r}", stacklevel=2)
    return True


def _seeded_shuffle(items: Iterable, size: int, rng: random.Random) -> Iterator:
    buf: list = []
    for item in items:
        buf.append(item)
        if len(buf) >= size:
            j = rng.randrange(len(buf))
            buf[j], buf[-1] = buf[-1], buf[j]
            yield buf.pop()
    rng.shuffle(buf)
    yield from buf


def _sample_seed(seed: int, epoch: int, key: str) -> int:
    digest = hashlib.blake2b(f"{seed}:{epoch}:{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF_FFFF_FFFF


def count_samples(url: str) -> int:
    """Samples in one shard (reads it through)."""
    return sum(1 for _ in _wds().tarfile_samples(iter([{"url": url}])))


# --- reading -----------------------------------------------------------------------------------
class ShardStream(IterableDataset):
    """The samples one rank reads in one epoch, as chunks `(pixels [n, ...] | None, labels [n], keys, ok [c])`:
    `c` raw samples of which the `n` readable ones (`ok`) are decoded and transformed.

    Use with `DataLoader(stream, batch_size=None, num_workers=K)`: worker w of K reads its own shards.
    """

    def __init__(self, urls: list[str], num_classes: int, transform: Callable, rank: int = 0, world: int = 1,
                 epoch: int = 0, seed: int = 0, rotate: bool = True, shuffle_buffer: int = SHUFFLE_BUFFER,
                 chunk: int = 16):
        self.urls, self.num_classes, self.transform = list(urls), num_classes, transform
        self.rank, self.world, self.epoch, self.seed, self.rotate = rank, world, epoch, seed, rotate
        self.shuffle_buffer, self.chunk = shuffle_buffer, chunk

    def worker_shards(self) -> list[str]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        idx = assign_shards(len(self.urls), self.rank, self.world, self.epoch, self.seed, worker, workers, self.rotate)
        return [self.urls[i] for i in idx]

    def raw_samples(self) -> Iterator[dict]:
        mine = self.worker_shards()
        raw = _wds().tarfile_samples(iter([{"url": u} for u in mine]), handler=_warn_and_continue)
        if self.shuffle_buffer > 1:
            info = get_worker_info()
            rng = random.Random(f"{self.seed}:{self.epoch}:{self.rank}:{info.id if info else 0}")
            raw = _seeded_shuffle(raw, self.shuffle_buffer, rng)
        return raw

    def decode(self, sample: dict):
        """(pixels, label, key), or (None, None, key) when the sample is unreadable."""
        key = sample.get("__key__", "?")
        where = f"{sample.get('__url__', '?')}:{key}"
        try:
            label = int(sample["cls"])
        except (KeyError, ValueError):
            warnings.warn(f"skipping sample {where}: no readable .cls member", stacklevel=2)
            return None, None, key
        if not 0 <= label < self.num_classes:
            raise ValueError(f"{where}: class id {label} outside 0..{self.num_classes - 1}; wrong --train-classes?")
        data = next((sample[k] for k in IMAGE_KEYS if k in sample), None)
        try:
            if data is None:
                raise ValueError(f"no image member ({', '.join(IMAGE_KEYS)})")
            img = load_rgb(io.BytesIO(data))
        except ValueError as err:
            warnings.warn(f"skipping unreadable image {where}: {err}", stacklevel=2)
            return None, None, key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(_sample_seed(self.seed, self.epoch, key))
            return self.transform(img), label, key

    def __iter__(self):
        def flush(items):
            ok = torch.tensor([p is not None for p, _, _ in items], dtype=torch.bool)
            good = [(p, lab) for p, lab, _ in items if p is not None]
            pixels = torch.stack([p for p, _ in good]) if good else None
            labels = torch.tensor([lab for _, lab in good], dtype=torch.long)
            return pixels, labels, [k for _, _, k in items], ok

        items = []
        for sample in self.raw_samples():
            items.append(self.decode(sample))
            if len(items) >= self.chunk:
                yield flush(items)
                items = []
        if items:
            yield flush(items)


@dataclass
class ShardPlan:
    """Steps of one rank over a shard set: equal on every rank and in every epoch (see module docstring)."""

    shards: "ShardSet"
    batch_size: int
    rank: int
    world: int
    steps_per_epoch: int
    dropped_per_epoch: int
    seed: int = 0  # the sample order's seed (`pixel_batches`)

    def pixel_batches(self, transform: Callable, epoch: int, start_step: int = 0, num_workers: int = 0,
                      pin_memory: bool = False) -> Iterator[tuple]:
        """`(pixels [B, ...] | None, labels | None, skipped)` per step (`pomp.data.training.TrainingPlan`):
        `loader` with this plan's seed."""
        for pixels, labels, _, skipped in self.loader(transform, epoch, start_step, self.seed, num_workers, pin_memory):
            yield pixels, labels, skipped

    def loader(self, transform: Callable, epoch: int, start_step: int = 0, seed: int = 0, num_workers: int = 0,
               pin_memory: bool = False) -> Iterator[tuple]:
        """`(pixels [B, ...] | None, labels | None, None, skipped)` for steps `start_step..steps_per_epoch-1`.

        Each step takes `batch_size` raw samples of this rank's stream (unreadable ones counted in
        `skipped`); resuming mid-epoch reads past the first `start_step` steps' samples.
        """
        stream = ShardStream(self.shards.urls, len(self.shards.classnames), transform, self.rank, self.world, epoch,
                             seed, chunk=min(self.batch_size, 32))
        group_size = len(assign_shards(len(self.shards.urls), self.rank, self.world, epoch))
        workers = min(num_workers, group_size)
        chunks = iter(DataLoader(stream, batch_size=None, num_workers=workers, persistent_workers=False))
        pending: deque = deque()  # (pixels | None, label) per raw sample

        def take(n: int) -> list:
            while len(pending) < n:
                chunk = next(chunks, None)
                if chunk is None:
                    break
                pixels, labels, _, ok = chunk
                j = 0
                for good in ok.tolist():
                    pending.append((pixels[j], labels[j]) if good else (None, None))
                    j += good
            return [pending.popleft() for _ in range(min(n, len(pending)))]

        for _ in range(start_step):
            take(self.batch_size)
        short = False
        for step in range(start_step, self.steps_per_epoch):
            items = take(self.batch_size)
            if len(items) < self.batch_size and not short:
                short = True
                warnings.warn(f"rank {self.rank}: shard data ran out at step {step} of epoch {epoch} "
                              f"(damaged or miscounted shards?); taking empty steps to keep ranks in step",
                              stacklevel=2)
            good = [(p, lab) for p, lab in items if p is not None]
            skipped = len(items) - len(good)
            if not good:
                yield None, None, None, skipped
                continue
            pixels = torch.stack([p for p, _ in good])
            yield pixels.pin_memory() if pin_memory else pixels, torch.stack([lab for _, lab in good]), None, skipped
        del chunks  # shuts the workers down


@dataclass
class ShardSet:
    """A shard set to train or validate on: shard URLs, per-shard sample counts, the class names
    (`pomp.data.training.TrainingData`)."""

    urls: list[str]
    counts: list[int]
    classnames: list[str]
    name: str = "shards"
    skipped: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return sum(self.counts)

    @classmethod
    def open(cls, pattern: str, classes: str | Path | None = None) -> "ShardSet":
        """Shards of `pattern` with the class list `classes`: a `shards.json` manifest (class names and
        per-shard counts) or a class-list text file (counts then read from the shards). Without `classes`,
        `shards.json` beside the first (local) shard."""
        urls = expand_pattern(pattern)
        if classes is None:
            guess = Path(urls[0]).parent / MANIFEST
            if not (_is_local(urls[0]) and guess.is_file()):
                raise ValueError(f"{pattern}: give the class list (--train-classes: shards.json or classes.txt)")
            classes = guess
        classes = Path(classes)
        known: dict[str, int] = {}
        if classes.suffix == ".json":
            manifest = read_json(classes)
            if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
                raise ValueError(f"{classes}: not a {FORMAT} manifest (written by `pomp data shard`)")
            classnames = list(manifest["classnames"])
            for entry in manifest["splits"].values():
                known.update(zip(entry["shards"], entry["counts"]))
        else:
            classnames = read_class_list(classes)
        counts = []
        for url in urls:
            base = os.path.basename(url.split("?")[0])
            counts.append(known[base] if base in known else count_samples(url))
        return cls(urls, counts, classnames, name=Path(os.path.basename(urls[0].split("?")[0])).stem.split("-")[0])

    def plan(self, batch_size: int, rank: int, world: int, seed: int = 0) -> ShardPlan:
        """Steps per epoch for `world` ranks: the smallest shard group's samples // batch size, on every rank."""
        if len(self.urls) < world:
            raise ValueError(f"{len(self.urls)} shards cannot be split over {world} processes; write more, smaller "
                             f"shards (pomp data shard --maxcount)")
        groups = [sum(self.counts[g::world]) for g in range(world)]
        smallest = min(groups)
        if smallest == 0:
            raise ValueError(f"a group of shards ({world} processes) holds no samples")
        batch = min(batch_size, smallest)
        steps = smallest // batch
        dropped = len(self) - steps * batch * world
        if dropped > 0.05 * len(self):
            warnings.warn(f"{dropped} of {len(self)} shard samples are left out of each epoch: shard groups per "
                          f"process hold {min(groups)}..{max(groups)} samples; use a shard count divisible by "
                          f"{world} with equal-size shards", stacklevel=2)
        return ShardPlan(self, batch, rank, world, steps, dropped, seed)

    def sample_identity(self) -> list:
        """The shard URLs and their sample counts."""
        return [self.urls, self.counts]

    def cached_features(self, cache_dir, backbone, transform, seed: int, views: int, num_workers: int = 0,
                        precision: str = "bf16", progress: bool = False):
        """Shards are read as a stream, never cached."""
        raise ValueError("--feature-cache needs image files (--train-root/--split-file), not --train-shards")

    def validation_features(self, backbone, rank: int = 0, world: int = 1, num_workers: int = 0,
                            precision: str = "bf16", cache_dir: Path | None = None, progress: bool = False,
                            batch_size: int = 64):
        """Features (eval transform, one view) of this rank's shards `rank, rank+world, ...`: `ImageFeatures`.
        Shards are read as a stream, never cached: `cache_dir` must be None."""
        from pomp.data.features import encode_batches

        if cache_dir is not None:
            raise ValueError("a feature cache needs image files, not shards")
        mine = assign_shards(len(self.urls), rank, world, rotate=False)
        stream = ShardStream(self.urls, len(self.classnames), backbone.eval_transform(), rank, world, rotate=False,
                             shuffle_buffer=0, chunk=batch_size)
        loader = DataLoader(stream, batch_size=None, num_workers=min(num_workers, len(mine))) if mine else []
        batches = ((pixels, labels, None, int((~ok).sum())) for pixels, labels, _, ok in loader)
        features, _ = encode_batches(backbone, batches, precision, desc="val features", progress=progress)
        return features


__all__ = ["ShardPlan", "ShardSet", "ShardStream", "assign_shards", "count_samples", "expand_pattern",
           "write_shards", "FORMAT", "MANIFEST", "CLASSES"]
