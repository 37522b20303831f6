"""`pomp segment` and `pomp detect` (open-vocabulary segmentation and region classification)."""

from __future__ import annotations

from pathlib import Path

from pomp.cli.common import add_command
from pomp.config import DetectConfig, SegmentConfig

SIDE_BY_SIDE = ("Give --prompt and/or --baseline (repeatable): each is run on the same data and the metrics are "
                "printed side by side.")


def cmd_segment(cfg: SegmentConfig) -> int:
    from pomp.dense.run import run_segment

    run_segment(cfg)
    print((Path(cfg.out_dir) / "results.md").read_text())
    return 0


def cmd_detect(cfg: DetectConfig) -> int:
    from pomp.dense.run import run_detect

    run_detect(cfg)
    print((Path(cfg.out_dir) / "results.md").read_text())
    return 0


def add_parsers(sub) -> None:
    """Register `segment` and `detect` on the `pomp` sub-command parser."""
    add_command(sub, "segment", SegmentConfig, cmd_segment,
                help="training-free open-vocabulary semantic segmentation: mIoU, seen/unseen hIoU, overlays",
                description="Dense image features of the frozen image tower (MaskCLIP's value path for CLIP ViTs; "
                            "the map before pooling for CNNs) scored against the class features of a prompt or "
                            "template; upsampled, argmax. Data in the VOC layout: DATA/JPEGImages, "
                            "DATA/SegmentationClass (palette PNGs, 255 = ignore), DATA/ImageSets/Segmentation/"
                            "SPLIT.txt, a class list (line i = label i). " + SIDE_BY_SIDE)
    add_command(sub, "detect", DetectConfig, cmd_detect,
                help="open-vocabulary region classification: COCO detections, AP / AP50 / APr",
                description="Classify boxes (a detector's class-agnostic COCO results via --boxes, or the "
                            "ground-truth boxes) with the class features of a prompt or template, by RoIAlign on the "
                            "dense map (roi) or by encoding each crop (crop). Each box gives its --top-k classes, "
                            "scored box score x probability; AP and AP50 by pycocotools, APr (rare categories, "
                            "LVIS-style) when categories carry 'frequency'. " + SIDE_BY_SIDE)
