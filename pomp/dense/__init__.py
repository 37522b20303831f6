"""Open-vocabulary segmentation and region classification with a prompt's class features.

- `segment`: training-free semantic segmentation from the frozen image tower's dense features
  (`Backbone.encode_dense_features`), VOC-layout data, overlays.
- `regions`: box classification (crop-and-encode, or RoIAlign on the dense map), COCO detections.
- `metrics`: mIoU / seen-unseen hIoU, COCO AP / AP50 / APr (pycocotools).
- `scenes`: generated scenes with exact masks and boxes (`python -m pomp.dense.scenes OUT`).
"""

from pomp.dense.metrics import confusion_matrix, detection_metrics, segmentation_metrics
from pomp.dense.regions import classify_regions, crop_features, detect, roi_features
from pomp.dense.segment import dense_cosines, evaluate_segmentation, predict_segmentation, read_voc_split

__all__ = [
    "classify_regions",
    "confusion_matrix",
    "crop_features",
    "dense_cosines",
    "detect",
    "detection_metrics",
    "evaluate_segmentation",
    "predict_segmentation",
    "read_voc_split",
    "roi_features",
    "segmentation_metrics",
]
