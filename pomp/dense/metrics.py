"""Metrics of open-vocabulary segmentation (mIoU, seen/unseen hIoU) and detection (COCO AP via pycocotools).

Segmentation follows the usual semantic-segmentation accounting (mmseg, detectron2's
`SemSegEvaluator`): one confusion matrix summed over all pixels of all images, ignore-label pixels
left out; per class IoU = TP / (TP + FP + FN); mIoU is the mean over classes whose union is not
empty (a class neither in the ground truth nor predicted anywhere has no IoU and is skipped; one
predicted but absent counts as 0). With a seen/unseen split (generalised zero-shot: every pixel is
classified among all classes), mIoU(seen) and mIoU(unseen) average those groups and
hIoU = 2 * s * u / (s + u), as ZSSeg and the POMP paper report.
"""

from __future__ import annotations

import contextlib
import copy
import io
from typing import Iterable, Sequence

import numpy as np

IGNORE_INDEX = 255


# --- segmentation -------------------------------------------------------------------------------
def confusion_matrix(
    pred: np.ndarray, target: np.ndarray, num_classes: int, ignore_index: int = IGNORE_INDEX
) -> np.ndarray:
    """`[C, C]` pixel counts, rows = ground truth, columns = prediction; `ignore_index` pixels skipped.

    Ground-truth values outside `[0, C)` other than `ignore_index` are an error (a class list that does
    not match the label maps).
    """
    pred = np.asarray(pred).astype(np.int64).ravel()
    target = np.asarray(target).astype(np.int64).ravel()
    if pred.shape != target.shape:
        raise ValueError(f"prediction has {pred.size} pixels, ground truth {target.size}")
    keep = target != ignore_index
    pred, target = pred[keep], target[keep]
    if target.size and (target.min() < 0 or target.max() >= num_classes):
        bad = int(target[(target < 0) | (target >= num_classes)][0])
        raise ValueError(f"ground-truth label {bad} is outside the {num_classes} classes (and is not {ignore_index})")
    if pred.size and (pred.min() < 0 or pred.max() >= num_classes):
        raise ValueError(f"predicted label outside the {num_classes} classes")
    return np.bincount(target * num_classes + pred, minlength=num_classes**2).reshape(num_classes, num_classes)


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """IoU of each class; NaN where the class is neither in the ground truth nor predicted."""
    confusion = np.asarray(confusion, dtype=np.float64)
    tp = np.diag(confusion)
    union = confusion.sum(0) + confusion.sum(1) - tp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(union > 0, tp / np.where(union > 0, union, 1), np.nan)


def _nanmean(values: np.ndarray) -> float | None:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else None


def harmonic_mean(a: float | None, b: float | None) -> float | None:
    if a is None or b is None:
        return None
    return 0.0 if a + b == 0 else 2 * a * b / (a + b)


def segmentation_metrics(
    confusion: np.ndarray, classnames: Sequence[str], unseen: Iterable[str] | None = None
) -> dict:
    """mIoU, pixel accuracy and per-class IoU (fractions); with `unseen` names, also seen/unseen mIoU and hIoU."""
    iou = iou_per_class(confusion)
    total = confusion.sum()
    metrics = {
        "mIoU": _nanmean(iou),
        "pixel_acc": float(np.trace(confusion) / total) if total else None,
        "per_class_iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(classnames, iou)},
    }
    if unseen is not None:
        unseen = set(unseen)
        unknown = unseen - set(classnames)
        if unknown:
            raise ValueError(f"unseen classes not in the class list: {sorted(unknown)}")
        is_unseen = np.array([name in unseen for name in classnames])
        metrics["mIoU_seen"] = _nanmean(iou[~is_unseen])
        metrics["mIoU_unseen"] = _nanmean(iou[is_unseen])
        metrics["hIoU"] = harmonic_mean(metrics["mIoU_seen"], metrics["mIoU_unseen"])
    return metrics


# --- detection ----------------------------------------------------------------------------------
def _pycocotools():
    try:
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval
    except ImportError as err:
        raise ImportError(f"detection metrics need pycocotools ({err}); pip install pycocotools") from None
    return COCO, COCOeval


def complete_ground_truth(gt: dict) -> dict:
    """A copy of a COCO ground-truth dict with the fields pycocotools needs filled in (id, area, iscrowd)."""
    gt = copy.deepcopy(gt)
    for key in ("images", "annotations", "categories"):
        if key not in gt:
            raise ValueError(f"COCO ground truth has no {key!r}")
    for i, ann in enumerate(gt["annotations"]):
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        if "area" not in ann:
            ann["area"] = float(ann["bbox"][2] * ann["bbox"][3])
    return gt


def coco_box_ap(gt: dict, detections: list[dict], cat_ids: Sequence[int] | None = None) -> dict[str, float | None]:
    """COCO box AP (IoU .50:.95) and AP50 of `detections` against `gt`, over `cat_ids` (default: all).

    Values are fractions; None when no ground truth falls in the chosen categories.
    """
    COCO, COCOeval = _pycocotools()
    gt = complete_ground_truth(gt)
    if cat_ids is not None and not any(a["category_id"] in set(cat_ids) for a in gt["annotations"]):
        return {"AP": None, "AP50": None}
    if not detections:
        return {"AP": 0.0, "AP50": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO()
        coco_gt.dataset = gt
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes(copy.deepcopy(detections))
        evaluator = COCOeval(coco_gt, coco_dt, iouType="bbox")
        if cat_ids is not None:
            evaluator.params.catIds = sorted(set(cat_ids))
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    ap, ap50 = float(evaluator.stats[0]), float(evaluator.stats[1])
    return {"AP": None if ap < 0 else ap, "AP50": None if ap50 < 0 else ap50}


def detection_metrics(gt: dict, detections: list[dict], unseen: Iterable[str] | None = None) -> dict:
    """AP/AP50 over all categories; APr (AP on 'r'-frequency categories, as LVIS) when categories carry a
    `frequency`; AP/AP50 of seen and unseen categories when unseen names are given."""
    metrics = dict(coco_box_ap(gt, detections))
    categories = gt["categories"]
    if any("frequency" in c for c in categories):
        for freq in ("r", "c", "f"):
            ids = [c["id"] for c in categories if c.get("frequency") == freq]
            metrics[f"AP{freq}"] = coco_box_ap(gt, detections, ids)["AP"] if ids else None
    if unseen is not None:
        unseen = set(unseen)
        names = {c["name"] for c in categories}
        unknown = unseen - names
        if unknown:
            raise ValueError(f"unseen classes not among the categories: {sorted(unknown)}")
        for label, ids in (("unseen", [c["id"] for c in categories if c["name"] in unseen]),
                           ("seen", [c["id"] for c in categories if c["name"] not in unseen])):
            scores = coco_box_ap(gt, detections, ids) if ids else {"AP": None, "AP50": None}
            metrics[f"AP_{label}"], metrics[f"AP50_{label}"] = scores["AP"], scores["AP50"]
    return metrics


__all__ = [
    "IGNORE_INDEX",
    "coco_box_ap",
    "complete_ground_truth",
    "confusion_matrix",
    "detection_metrics",
    "harmonic_mean",
    "iou_per_class",
    "segmentation_metrics",
]
