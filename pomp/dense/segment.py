"""Training-free open-vocabulary semantic segmentation: dense image features scored against class features.

    image --resize to size x size--> pixels --frozen image tower, dense path--> [D, h, w]
    per location: cosine with the [C, D] class features (from a prompt or a template) --> [C, h, w]
    --bilinear upsampling to the image--> argmax (ties: lowest class index) --> label map
    (optional background threshold)

Data in the Pascal VOC layout:

    ROOT/JPEGImages/<id>.jpg                  images
    ROOT/SegmentationClass/<id>.png           label maps: palette-index (or greyscale) PNG, value = class
                                              index in the class list, 255 = ignore
    ROOT/ImageSets/Segmentation/<split>.txt   image ids, one per line
    class list                                one name per line, line i = label value i
                                              (default ROOT/classes.txt)
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from pomp.backbones.base import Backbone
from pomp.data.transforms import ImageSpec
from pomp.dense.metrics import IGNORE_INDEX, confusion_matrix, segmentation_metrics
from pomp.io import atomic_write
from pomp.ranking import argmax_first_index, class_scores, distinct_classes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG")


# --- pixels -------------------------------------------------------------------------------------
def dense_transform(spec: ImageSpec, size: int | None = None) -> Callable[[Image.Image], torch.Tensor]:
    """Resize the whole image to `size` x `size` (no crop: every pixel gets a score), normalise."""
    import torchvision.transforms.v2 as T

    from pomp.data.transforms import interpolation_mode

    size = size or spec.size
    return T.Compose([
        T.Resize((size, size), interpolation=interpolation_mode(spec), antialias=True),
        T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean=spec.mean, std=spec.std),
    ])


# --- scoring ------------------------------------------------------------------------------------
def dense_cosines(features: torch.Tensor, classifier: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of each location `[B, D, h, w]` with each class `[C, D]` -> `[B, C, h, w]`
    (identical classes get identical maps: `pomp.ranking.class_scores`)."""
    features = F.normalize(features.float(), dim=1)
    classifier = F.normalize(classifier.float().to(features.device), dim=-1)
    b, d, h, w = features.shape
    scores = class_scores(features.permute(0, 2, 3, 1).reshape(-1, d), classifier)
    return scores.view(b, h, w, -1).permute(0, 3, 1, 2)


@torch.no_grad()
def predict_segmentation(
    backbone: Backbone,
    pixels: torch.Tensor,
    classifier: torch.Tensor,
    out_size: tuple[int, int],
    background: int | None = None,
    bg_threshold: float | None = None,
    logit_scale: float | None = None,
    class_chunk: int = 32,
) -> torch.Tensor:
    """Label map `[H, W]` (long) of one preprocessed image `[3, s, s]`, at `out_size` = (H, W).

    Cosines are upsampled bilinearly to the image, then the best class taken per pixel. Without a
    threshold every class of `classifier` competes, background included (as a text class, when the
    list has one). With `bg_threshold` and a `background` index, the background row does not compete:
    a pixel becomes background when its highest class probability (softmax over the other classes at
    `logit_scale`, the backbone's own by default) is below the threshold. Classes are upsampled
    `class_chunk` at a time (running max and log-sum-exp), so large vocabularies on large images
    never hold all `[C, H, W]` at once.
    """
    features = backbone.encode_dense_features(pixels.unsqueeze(0).to(backbone.device))
    cosines = dense_cosines(features, classifier)[0]
    keep = torch.arange(cosines.shape[0], device=cosines.device)
    if bg_threshold is not None:
        if background is None:
            raise ValueError("a background threshold needs a 'background' class in the class list")
        keep = keep[keep != background]
    # classes with identical rows are upsampled once (upsampling the same map at another channel position
    # can round differently) under the lowest of their indices, counted once per class for the softmax
    first, inverse = distinct_classes(classifier.to(cosines.device)[keep])
    keep, log_count = keep[first], torch.bincount(inverse, minlength=len(first)).float().log()
    scale = logit_scale if logit_scale is not None else backbone.logit_scale
    best = index = lse = None
    for start in range(0, len(keep), class_chunk):
        ids = keep[start : start + class_chunk]
        up = F.interpolate(cosines[ids].unsqueeze(0), size=tuple(out_size), mode="bilinear", align_corners=False)[0]
        arg = argmax_first_index(up, dim=0)  # ties: the lowest class index (pomp.ranking)
        value = up.gather(0, arg.unsqueeze(0))[0]
        value = torch.where(torch.isnan(value), torch.full_like(value, float("-inf")), value)
        arg = ids[arg]
        if best is None:
            best, index = value, arg
        else:
            better = value > best  # strictly better only: a tie keeps the earlier chunk's lower index
            best, index = torch.where(better, value, best), torch.where(better, arg, index)
        if bg_threshold is not None:
            counts = log_count[start : start + class_chunk].view(-1, 1, 1)
            chunk_lse = torch.logsumexp(scale * up + counts, dim=0)
            lse = chunk_lse if lse is None else torch.logaddexp(lse, chunk_lse)
    if bg_threshold is not None:
        top_prob = torch.exp(scale * best - lse)
        index = torch.where(top_prob < bg_threshold, torch.full_like(index, background), index)
    return index.cpu()


# --- data ---------------------------------------------------------------------------------------
@dataclass
class SegmentationSet:
    """Images and label maps of one split in the VOC layout."""

    root: Path
    ids: list[str]
    classnames: list[str]
    image_dir: Path
    label_dir: Path
    name: str = ""

    def __len__(self) -> int:
        return len(self.ids)

    def image_path(self, image_id: str) -> Path:
        for suffix in IMAGE_SUFFIXES:
            path = self.image_dir / f"{image_id}{suffix}"
            if path.is_file():
                return path
        raise FileNotFoundError(f"{self.image_dir}: no image for id {image_id!r}")

    def load(self, image_id: str) -> tuple[Image.Image, np.ndarray]:
        from pomp.data.images import load_rgb

        image = load_rgb(self.image_path(image_id))
        label = read_label_map(self.label_dir / f"{image_id}.png")
        if label.shape != (image.height, image.width):
            raise ValueError(f"{image_id}: label map is {label.shape[1]}x{label.shape[0]}, "
                             f"image {image.width}x{image.height}")
        return image, label


def read_label_map(path: Path) -> np.ndarray:
    """Class indices of a palette ('P') or greyscale ('L') PNG (VOC's SegmentationClass format)."""
    if not path.is_file():
        raise FileNotFoundError(f"{path}: label map not found")
    with Image.open(path) as img:
        if img.mode not in ("P", "L", "I", "I;16"):
            raise ValueError(f"{path}: label maps must be palette or greyscale PNGs of class indices, not {img.mode}")
        return np.array(img).astype(np.int64)


def read_voc_split(root: str | Path, split: str = "val", classes: str | Path | None = None) -> SegmentationSet:
    """A VOC-layout split: ids from `ImageSets/Segmentation/<split>.txt`, class list from `classes`
    (default `ROOT/classes.txt`)."""
    from pomp.data.names import read_class_list

    root = Path(root)
    ids_file = root / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not ids_file.is_file():
        raise FileNotFoundError(f"{ids_file}: split file not found (expected the VOC layout under {root})")
    ids = [ln.split()[0] for ln in ids_file.read_text(encoding="utf-8").splitlines() if ln.strip()]
    if not ids:
        raise ValueError(f"{ids_file}: no image ids")
    classnames = read_class_list(classes or root / "classes.txt")
    for sub in ("JPEGImages", "SegmentationClass"):
        if not (root / sub).is_dir():
            raise FileNotFoundError(f"{root / sub}: folder not found (expected the VOC layout)")
    return SegmentationSet(root, ids, classnames, root / "JPEGImages", root / "SegmentationClass",
                           name=f"{root.name}-{split}")


def read_name_set(path: str | Path | None) -> list[str] | None:
    """Class names, one a line (the unseen classes of a split), or None."""
    if path is None:
        return None
    from pomp.data.names import read_class_list

    return read_class_list(path)


# --- colours and overlays -----------------------------------------------------------------------
def voc_palette(num: int = 256) -> np.ndarray:
    """The Pascal VOC colour map `[num, 3]` uint8: bits of the index spread over R, G, B, high bits first."""
    palette = np.zeros((num, 3), dtype=np.uint8)
    for index in range(num):
        value, r, g, b = index, 0, 0, 0
        for shift in range(7, -1, -1):
            r |= (value & 1) << shift
            g |= ((value >> 1) & 1) << shift
            b |= ((value >> 2) & 1) << shift
            value >>= 3
        palette[index] = (r, g, b)
    return palette


def save_label_png(path: str | Path, labels: np.ndarray) -> Path:
    """A palette PNG of class indices (VOC format), written atomically."""
    img = Image.fromarray(np.asarray(labels).astype(np.uint8))
    img.putpalette(voc_palette().ravel().tolist())  # greyscale + palette -> a 'P' image
    return atomic_write(path, lambda p: img.save(p, format="PNG"))


def overlay(image: Image.Image, labels: np.ndarray, alpha: float = 0.5) -> Image.Image:
    """The image with each pixel tinted by its class colour (ignore pixels left as they are)."""
    pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    labels = np.asarray(labels)
    colours = voc_palette()[np.clip(labels, 0, 255)].astype(np.float32)
    mixed = np.where((labels != IGNORE_INDEX)[..., None], (1 - alpha) * pixels + alpha * colours, pixels)
    return Image.fromarray(mixed.round().clip(0, 255).astype(np.uint8))


def comparison_panel(image: Image.Image, truth: np.ndarray, pred: np.ndarray) -> Image.Image:
    """[image | ground truth overlay | prediction overlay], side by side."""
    w, h = image.size
    panel = Image.new("RGB", (3 * w, h))
    for i, part in enumerate((image.convert("RGB"), overlay(image, truth), overlay(image, pred))):
        panel.paste(part, (i * w, 0))
    return panel


# --- evaluation ---------------------------------------------------------------------------------
def background_index(classnames: Sequence[str]) -> int | None:
    lowered = [c.lower() for c in classnames]
    return lowered.index("background") if "background" in lowered else None


@torch.no_grad()
def evaluate_segmentation(
    backbone: Backbone,
    data: SegmentationSet,
    classifier: torch.Tensor,
    size: int | None = None,
    bg_threshold: float | None = None,
    unseen: Iterable[str] | None = None,
    overlay_dir: str | Path | None = None,
    max_overlays: int = 16,
    prediction_dir: str | Path | None = None,
    progress: bool = False,
) -> dict:
    """Segment every image of `data` and score it (see `pomp.dense.metrics`). Writes up to
    `max_overlays` comparison panels to `overlay_dir` and every label map to `prediction_dir`."""
    if classifier.shape[0] != len(data.classnames):
        raise ValueError(f"classifier has {classifier.shape[0]} classes, the class list {len(data.classnames)}")
    transform = dense_transform(backbone.image_spec, size)
    background = background_index(data.classnames)
    confusion = np.zeros((len(data.classnames),) * 2, dtype=np.int64)
    ids = data.ids
    if progress:
        from tqdm import tqdm

        ids = tqdm(ids, desc=f"segment {data.name}")
    for n, image_id in enumerate(ids):
        image, truth = data.load(image_id)
        pred = predict_segmentation(backbone, transform(image), classifier, (image.height, image.width),
                                    background=background, bg_threshold=bg_threshold).numpy()
        confusion += confusion_matrix(pred, truth, len(data.classnames))
        if overlay_dir is not None and n < max_overlays:
            panel = comparison_panel(image, truth, pred)
            atomic_write(Path(overlay_dir) / f"{image_id}.png", lambda p: panel.save(p, format="PNG"))
        if prediction_dir is not None:
            save_label_png(Path(prediction_dir) / f"{image_id}.png", pred)
    metrics = segmentation_metrics(confusion, data.classnames, unseen)
    metrics["num_images"] = len(data)
    return metrics


__all__ = [
    "SegmentationSet",
    "comparison_panel",
    "dense_cosines",
    "dense_transform",
    "evaluate_segmentation",
    "overlay",
    "predict_segmentation",
    "read_label_map",
    "read_name_set",
    "read_voc_split",
    "save_label_png",
    "voc_palette",
]
