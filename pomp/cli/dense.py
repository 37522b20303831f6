"""`pomp segment` and `pomp detect` (open-vocabulary segmentation and region classification)."""

from __future__ import annotations

import argparse
from pathlib import Path

from pomp.cli.common import BACKBONE_HELP, PRETRAINED_HELP, config_from_args, int_at_least

SIDE_BY_SIDE = ("Give --prompt and/or --baseline (repeatable): each is run on the same data and the metrics are "
                "printed side by side.")


def cmd_segment(args: argparse.Namespace) -> int:
    from pomp.dense.run import SegmentConfig, run_segment

    cfg = config_from_args(SegmentConfig, args)
    run_segment(cfg)
    print((Path(cfg.out_dir) / "results.md").read_text())
    return 0


def cmd_detect(args: argparse.Namespace) -> int:
    from pomp.dense.run import DetectConfig, run_detect

    cfg = config_from_args(DetectConfig, args)
    run_detect(cfg)
    print((Path(cfg.out_dir) / "results.md").read_text())
    return 0


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--backbone", required=True,
                   help=BACKBONE_HELP + "; dense features need an open_clip ViT (MaskCLIP) or the offline default")
    p.add_argument("--pretrained", default=None, help=PRETRAINED_HELP)
    p.add_argument("--prompt", default=None, help="a pomp prompt (.safetensors/.json/dir) or an official .pth.tar")
    p.add_argument("--baseline", action="append", default=[], choices=["single", "ensemble"],
                   help="hand-crafted baseline: 'single' = \"a photo of a {}.\", 'ensemble' = CLIP's 80 templates")
    p.add_argument("--unseen", default=None, help="file of unseen class names (one a line): adds seen/unseen metrics")
    p.add_argument("--size", type=int_at_least(1), default=None,
                   help="side of the square input of the dense path (default: the backbone's input size; "
                        "timm ViT and Swin towers take only their own)")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", action="store_true", help="show a progress bar")


def add_parsers(sub) -> None:
    p = sub.add_parser(
        "segment", help="training-free open-vocabulary semantic segmentation: mIoU, seen/unseen hIoU, overlays",
        description="Dense image features of the frozen image tower (MaskCLIP's value path for CLIP ViTs; the "
                    "map before pooling for CNNs) scored against the class features of a prompt or template; "
                    "upsampled, argmax. Data in the VOC layout: DATA/JPEGImages, DATA/SegmentationClass (palette "
                    "PNGs, 255 = ignore), DATA/ImageSets/Segmentation/SPLIT.txt, a class list (line i = label i). "
                    + SIDE_BY_SIDE)
    _add_common(p)
    p.add_argument("--data", required=True, help="VOC-layout root")
    p.add_argument("--split", default="val", help="ImageSets/Segmentation/SPLIT.txt")
    p.add_argument("--classes", default=None, help="class list (default DATA/classes.txt)")
    p.add_argument("--bg-threshold", type=float, default=None,
                   help="with a 'background' class: it does not compete; pixels whose best class probability "
                        "is below this become background")
    p.add_argument("--overlays", type=int_at_least(0), default=8, help="comparison panels written per prompt (0: none)")
    p.add_argument("--save-predictions", action="store_true", help="write every predicted label map (palette PNG)")
    p.add_argument("--out-dir", default="runs/segment")
    p.set_defaults(func=cmd_segment)

    p = sub.add_parser(
        "detect", help="open-vocabulary region classification: COCO detections, AP / AP50 / APr",
        description="Classify boxes (a detector's class-agnostic COCO results via --boxes, or the ground-truth "
                    "boxes) with the class features of a prompt or template, by RoIAlign on the dense map (roi) "
                    "or by encoding each crop (crop). Each box gives its --top-k classes, scored box score x "
                    "probability; AP and AP50 by pycocotools, APr (rare categories, LVIS-style) when categories "
                    "carry 'frequency'. " + SIDE_BY_SIDE)
    _add_common(p)
    p.add_argument("--annotations", required=True, help="COCO ground truth; its categories are the vocabulary")
    p.add_argument("--images", required=True, help="folder the images' file_name values are relative to")
    p.add_argument("--boxes", default=None, help="COCO results file of boxes to classify (default: ground truth)")
    p.add_argument("--method", choices=["roi", "crop"], default="roi", help="region features (default: roi)")
    p.add_argument("--context", type=float, default=1.0, help="crop: enlarge each box by this factor")
    p.add_argument("--top-k", type=int_at_least(1), default=5, help="classes kept per box")
    p.add_argument("--out-dir", default="runs/detect")
    p.set_defaults(func=cmd_detect)
