"""What a pre-training run reads, behind one small protocol: class folders (a k-shot split of them or a
CoOp split file: `FolderData`) or webdataset shards (`pomp.data.shards.ShardSet`).

A run asks its data for a plan (`TrainingData.plan`: images per step and rank, steps per epoch, the
same on every rank), then, epoch by epoch, for the pixels of each step (`TrainingPlan.pixel_batches`);
once, for the features of its rank's share of the validation data (`TrainingData.validation_features`).
Resuming needs what identifies the samples (`TrainingData.sample_identity`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch
from torch.utils.data import DataLoader

from pomp.backbones.base import Backbone
from pomp.data.features import ImageFeatures, cached_image_features
from pomp.data.folder import ImageDataset, LabelledImages, collate_skipping, ignore_interrupts_in_worker

# (pixels [B, V, 3, H, W] | None when no image of the step was readable, labels [B] | None, images skipped)
PixelBatch = tuple[torch.Tensor | None, torch.Tensor | None, int]


class TrainingPlan(Protocol):
    """Which images one rank reads at each step of an epoch."""

    batch_size: int  # images per step on each rank
    steps_per_epoch: int  # equal on every rank

    def pixel_batches(self, transform: Callable, epoch: int, start_step: int = 0, num_workers: int = 0,
                      pin_memory: bool = False) -> Iterator[PixelBatch]:
        """One `PixelBatch` per step `start_step..steps_per_epoch-1` of `epoch`."""
        ...


class TrainingData(Protocol):
    """A training (or validation) set as a run reads it."""

    classnames: list[str]
    skipped: dict[str, int]  # files left out when the data was listed, reported in config.json

    def __len__(self) -> int: ...

    def plan(self, batch_size: int, rank: int, world: int, seed: int = 0) -> TrainingPlan:
        """The steps of rank `rank` of `world`; `seed` fixes the sample order of each epoch."""
        ...

    def sample_identity(self) -> object:
        """What identifies the samples (JSON-serialisable): a resume must see the same."""
        ...

    def validation_features(self, backbone: Backbone, rank: int, world: int, num_workers: int = 0,
                            precision: str = "bf16", cache_dir: Path | None = None,
                            progress: bool = False) -> ImageFeatures:
        """Eval-transform features of rank `rank`'s share of the data (every rank's share disjoint);
        `cache_dir`: a feature cache folder for this share, where the data can be cached."""
        ...

    def cached_features(self, cache_dir: Path, backbone: Backbone, transform: Callable, seed: int, views: int,
                        num_workers: int = 0, precision: str = "bf16", progress: bool = False) -> ImageFeatures:
        """Every sample's features under `transform`, cached in `cache_dir` (`--feature-cache`); ValueError
        where the data cannot be cached."""
        ...


class BatchPlan:
    """Which images each rank sees at each step: one permutation per epoch shared by all ranks,
    each rank taking its own slice, so no image is seen twice in an epoch. `images`: the class-folder
    images the indices refer to (None for a plan over cached features, which reads no pixels)."""

    def __init__(self, num_images: int, batch_size: int, rank: int, world: int, seed: int,
                 images: LabelledImages | None = None):
        self.num_images, self.batch_size, self.rank, self.world, self.seed = num_images, batch_size, rank, world, seed
        self.images = images
        per_step = batch_size * world
        if num_images < per_step:
            self.batch_size = max(1, num_images // world)
            per_step = self.batch_size * world
        if per_step == 0:
            raise ValueError(f"{num_images} training images cannot be split over {world} processes")
        self.steps_per_epoch = num_images // per_step

    def batches(self, epoch: int, start_step: int = 0) -> list[list[int]]:
        """The image indices of this rank's steps `start_step..steps_per_epoch-1` of `epoch`."""
        order = torch.randperm(self.num_images, generator=torch.Generator().manual_seed(self.seed * 100_003 + epoch))
        out = []
        for step in range(start_step, self.steps_per_epoch):
            first = (step * self.world + self.rank) * self.batch_size
            out.append(order[first : first + self.batch_size].tolist())
        return out

    def pixel_batches(self, transform: Callable, epoch: int, start_step: int = 0, num_workers: int = 0,
                      pin_memory: bool = False) -> Iterator[PixelBatch]:
        if self.images is None:
            raise ValueError("a plan over cached features reads no pixels")
        dataset = ImageDataset(self.images, transform, seed=self.seed)
        dataset.set_epoch(epoch)
        loader = DataLoader(dataset, batch_sampler=self.batches(epoch, start_step), num_workers=num_workers,
                            collate_fn=collate_skipping, pin_memory=pin_memory, persistent_workers=False,
                            worker_init_fn=ignore_interrupts_in_worker)
        for pixels, labels, _, skipped in loader:
            yield pixels, labels, skipped


@dataclass
class FolderData:
    """Class-folder images (`LabelledImages`: a k-shot split, or a CoOp split file's part) as `TrainingData`."""

    images: LabelledImages

    @property
    def classnames(self) -> list[str]:
        return self.images.classnames

    @property
    def skipped(self) -> dict[str, int]:
        return self.images.skipped

    def __len__(self) -> int:
        return len(self.images)

    def plan(self, batch_size: int, rank: int, world: int, seed: int = 0) -> BatchPlan:
        return BatchPlan(len(self.images), batch_size, rank, world, seed, self.images)

    def sample_identity(self) -> object:
        return self.images.samples

    def validation_features(self, backbone: Backbone, rank: int, world: int, num_workers: int = 0,
                            precision: str = "bf16", cache_dir: Path | None = None,
                            progress: bool = False) -> ImageFeatures:
        """Images `rank, rank + world, ...`; an empty share gives `[0, 1, 1]` features."""
        images = self.images
        share = LabelledImages(images.root, images.samples[rank::world], images.classnames, images.name)
        if not len(share):
            return ImageFeatures(torch.zeros(0, 1, 1), torch.zeros(0))
        return cached_image_features(cache_dir, backbone, ImageDataset(share, backbone.eval_transform()),
                                     num_workers=num_workers, precision=precision, desc="val features",
                                     progress=progress)

    def cached_features(self, cache_dir: Path, backbone: Backbone, transform: Callable, seed: int, views: int,
                        num_workers: int = 0, precision: str = "bf16", progress: bool = False) -> ImageFeatures:
        """Features of every image under `transform` (`views` augmented views, seeded per image by `seed`),
        from the cache in `cache_dir` or computed into it: what a run with `--feature-cache` trains on."""
        return cached_image_features(cache_dir, backbone, ImageDataset(self.images, transform, seed=seed),
                                     extra_key={"seed": seed, "views": views}, num_workers=num_workers,
                                     precision=precision, desc="train features", progress=progress)


__all__ = ["BatchPlan", "FolderData", "PixelBatch", "TrainingData", "TrainingPlan"]
