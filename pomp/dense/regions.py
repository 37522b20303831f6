"""Open-vocabulary region classification: score boxes against class features, write COCO detections.

Two ways to get one feature per box:

- `crop`: cut each box out of the image (optionally enlarged around its centre by `context`),
  resize it to the image tower's input size and encode it as an image (ViLD-style crop-and-encode;
  works with any backbone, one forward pass per box).
- `roi`: encode the whole image once through the dense path (`encode_dense_features`) and average
  the dense features inside each box with RoIAlign (`torchvision.ops.roi_align`; one forward pass
  per image, however many boxes).

A box's class probabilities are softmax(logit_scale * cosine) over the vocabulary; each box yields
its `top_k` classes as detections scored `box score * probability` (COCO results format:
`{"image_id", "category_id", "bbox": [x, y, w, h], "score"}`).

Boxes come from a detector's COCO results file (class-agnostic proposals: their category is
ignored) or, without one, from the ground truth (region classification with oracle boxes).
"""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from PIL import Image

from pomp.backbones.base import Backbone
from pomp.data.features import encode_pixels
from pomp.dense.segment import dense_transform
from pomp.ranking import class_scores, top_k_first_index

METHODS = ("roi", "crop")


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    boxes = boxes.float().reshape(-1, 4)
    return torch.cat([boxes[:, :2], boxes[:, :2] + boxes[:, 2:]], dim=1)


def expand_boxes(boxes_xyxy: torch.Tensor, factor: float, width: int, height: int) -> torch.Tensor:
    """Boxes scaled by `factor` about their centres, clipped to the image."""
    centre = (boxes_xyxy[:, :2] + boxes_xyxy[:, 2:]) / 2
    half = (boxes_xyxy[:, 2:] - boxes_xyxy[:, :2]) * factor / 2
    out = torch.cat([centre - half, centre + half], dim=1)
    limit = torch.tensor([width, height, width, height], dtype=out.dtype)
    return torch.minimum(out.clamp(min=0), limit)


@torch.no_grad()
def crop_features(
    backbone: Backbone, image: Image.Image, boxes_xyxy: torch.Tensor, context: float = 1.0, batch_size: int = 32
) -> torch.Tensor:
    """`[N, D]` L2-normalised image features of the box crops (each resized to the tower's input size, no
    aspect kept), encoded in float32 `batch_size` crops at a time (`pomp.data.features.encode_pixels`)."""
    if len(boxes_xyxy) == 0:
        return torch.zeros(0, backbone.embed_dim)
    transform = dense_transform(backbone.image_spec)
    boxes = expand_boxes(boxes_xyxy.float(), context, image.width, image.height)
    crops = []
    for x0, y0, x1, y1 in boxes.tolist():
        left, top = int(x0), int(y0)
        right, bottom = max(left + 1, int(round(x1))), max(top + 1, int(round(y1)))
        crops.append(transform(image.crop((left, top, right, bottom))))
    pixels = torch.stack(crops)
    feats = [encode_pixels(backbone, pixels[i : i + batch_size], "fp32")[:, 0].cpu()
             for i in range(0, len(pixels), batch_size)]
    return torch.cat(feats)


@torch.no_grad()
def roi_features(
    backbone: Backbone,
    image: Image.Image,
    boxes_xyxy: torch.Tensor,
    size: int | None = None,
    output_size: int = 2,
    sampling_ratio: int = 2,
) -> torch.Tensor:
    """`[N, D]` dense features averaged inside each box (RoIAlign on the map of the whole image).

    The image is resized to `size` x `size` (default: the tower's input size); boxes follow it into
    feature-map coordinates. Each box is sampled on an `output_size` x `output_size` grid of bins
    (bilinear, `sampling_ratio` points per bin side, pixel-centre aligned) and the bins averaged.
    """
    from torchvision.ops import roi_align

    if len(boxes_xyxy) == 0:
        return torch.zeros(0, backbone.embed_dim)
    size = size or backbone.image_spec.size
    pixels = dense_transform(backbone.image_spec, size)(image).unsqueeze(0).to(backbone.device)
    dense = backbone.encode_dense_features(pixels).float()
    scale = torch.tensor([size / image.width, size / image.height] * 2, dtype=torch.float32)
    boxes = (boxes_xyxy.float() * scale).to(dense.device)
    if dense.shape[-2] != dense.shape[-1]:
        raise ValueError(f"expected a square dense map for a square input, got {tuple(dense.shape[-2:])}")
    pooled = roi_align(dense, [boxes], output_size=(output_size, output_size), spatial_scale=dense.shape[-1] / size,
                       sampling_ratio=sampling_ratio, aligned=True)
    return pooled.mean(dim=(2, 3)).cpu()


def region_features(backbone: Backbone, image: Image.Image, boxes_xyxy: torch.Tensor, method: str = "roi",
                    size: int | None = None, context: float = 1.0) -> torch.Tensor:
    if method == "roi":
        return roi_features(backbone, image, boxes_xyxy, size=size)
    if method == "crop":
        return crop_features(backbone, image, boxes_xyxy, context=context)
    raise ValueError(f"unknown region method {method!r}; choose from {METHODS}")


def classify_regions(features: torch.Tensor, classifier: torch.Tensor, logit_scale: float) -> torch.Tensor:
    """Class probabilities `[N, C]`: softmax over the vocabulary of logit_scale * cosine."""
    cosines = class_scores(F.normalize(features.float(), dim=-1), F.normalize(classifier.float().cpu(), dim=-1))
    return (logit_scale * cosines).softmax(dim=-1)


def region_detections(
    image_id: int, boxes_xywh: torch.Tensor, box_scores: torch.Tensor, probs: torch.Tensor,
    category_ids: Sequence[int], top_k: int = 5,
) -> list[dict]:
    """COCO results: each box with its `top_k` classes, scored box score x class probability; classes
    with equal probability in the order of their index (`pomp.ranking`)."""
    out = []
    index = top_k_first_index(probs, top_k)
    values = probs.gather(1, index)
    for box, box_score, vals, idx in zip(boxes_xywh.tolist(), box_scores.tolist(), values.tolist(), index.tolist()):
        for v, i in zip(vals, idx):
            out.append({"image_id": image_id, "category_id": int(category_ids[i]),
                        "bbox": [round(float(c), 3) for c in box], "score": float(box_score * v)})
    return out


def boxes_by_image(gt: dict, proposals: list[dict] | None) -> dict[int, tuple[torch.Tensor, torch.Tensor]]:
    """Per image id: `(boxes [N, 4] xywh, scores [N])` from proposals, or from the ground truth (score 1)."""
    grouped: dict[int, list] = defaultdict(list)
    source = proposals if proposals is not None else gt["annotations"]
    for item in source:
        if proposals is None and item.get("iscrowd", 0):
            continue
        grouped[int(item["image_id"])].append((item["bbox"], float(item.get("score", 1.0)) if proposals else 1.0))
    out = {}
    for image in gt["images"]:
        items = grouped.get(int(image["id"]), [])
        boxes = torch.tensor([b for b, _ in items], dtype=torch.float32).reshape(-1, 4)
        out[int(image["id"])] = (boxes, torch.tensor([s for _, s in items], dtype=torch.float32))
    return out


@torch.no_grad()
def detect(
    backbone: Backbone,
    gt: dict,
    image_root: str | Path,
    classifier: torch.Tensor,
    proposals: list[dict] | None = None,
    method: str = "roi",
    size: int | None = None,
    context: float = 1.0,
    top_k: int = 5,
    min_box_size: float = 1.0,
    progress: bool = False,
) -> tuple[list[dict], dict]:
    """Classify the boxes of every image in `gt["images"]`; returns (COCO detections, extra stats).

    `classifier` rows follow `gt["categories"]` in file order. Extra stats: boxes classified and,
    with ground-truth boxes, the fraction whose top-1 class is the annotated one (`box_acc1`).
    """
    from pomp.data.images import load_rgb

    categories = gt["categories"]
    if classifier.shape[0] != len(categories):
        raise ValueError(f"classifier has {classifier.shape[0]} classes, the ground truth {len(categories)} categories")
    cat_ids = [int(c["id"]) for c in categories]
    scale = backbone.logit_scale
    per_image = boxes_by_image(gt, proposals)
    truth = defaultdict(list)
    if proposals is None:
        for ann in gt["annotations"]:
            if not ann.get("iscrowd", 0):
                truth[int(ann["image_id"])].append(int(ann["category_id"]))
    detections, hits, total = [], 0, 0
    images = gt["images"]
    if progress:
        from tqdm import tqdm

        images = tqdm(images, desc="detect")
    for info in images:
        image_id = int(info["id"])
        boxes, scores = per_image[image_id]
        keep = (boxes[:, 2] >= min_box_size) & (boxes[:, 3] >= min_box_size)
        if proposals is None and not bool(keep.all()):
            raise ValueError(f"image {image_id}: a ground-truth box is smaller than {min_box_size} px")
        boxes, scores = boxes[keep], scores[keep]
        if len(boxes) == 0:
            continue
        image = load_rgb(Path(image_root) / info["file_name"])
        feats = region_features(backbone, image, xywh_to_xyxy(boxes), method=method, size=size, context=context)
        probs = classify_regions(feats, classifier, scale)
        detections += region_detections(image_id, boxes, scores, probs, cat_ids, top_k=top_k)
        if proposals is None:
            top1 = [cat_ids[i] for i in top_k_first_index(probs, 1)[:, 0].tolist()]
            hits += sum(int(p == t) for p, t in zip(top1, truth[image_id]))
            total += len(top1)
    stats = {"num_boxes": total if proposals is None else sum(len(per_image[i][0]) for i in per_image),
             "box_source": "proposals" if proposals is not None else "ground truth"}
    if proposals is None:
        stats["box_acc1"] = hits / total if total else None
    return detections, stats


__all__ = [
    "METHODS",
    "boxes_by_image",
    "classify_regions",
    "crop_features",
    "detect",
    "expand_boxes",
    "region_detections",
    "region_features",
    "roi_features",
    "xywh_to_xyxy",
]
