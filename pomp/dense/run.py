"""`pomp segment` and `pomp detect`: one config dataclass each (`pomp.config`); every prompt / baseline side by side.

Outputs of a run, under `out_dir`:
    segment_config.json | detect_config.json     the resolved config and the backbone's identity
    <label>/metrics.json                          one result record per prompt or baseline, naming its
                                                  vocabulary (count, sha256, source) and a baseline's templates
    <label>/classnames.txt                        the names as scored (`sha256sum` gives the record's hash)
    <label>/overlays/<id>.png                     segment: [image | truth | prediction] panels
    <label>/predictions/<id>.png                  segment, with save_predictions: palette label maps
    <label>/detections.json                       detect: COCO results
    results.md                                    the table printed at the end
where <label> is `prompt_<file name>` or `baseline_<single|ensemble>` (`pomp.evaluate.label_filename`:
every run of characters other than ASCII letters, digits, `.`, `_`, `-` becomes one `_`, as in eval's file names).
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

from pomp.config import DetectConfig, SegmentConfig
from pomp.io import atomic_write_json, atomic_write_text, check_writable_dir, read_json


def _setup(cfg, config_name: str, classnames: list[str], source: str, dense: bool):
    """Everything that can refuse the run, before the config is written: prompt, backbone, the dense path
    at the input size, every class text (one that does not fit the text context stops the run here)."""
    from pomp.backbones import load_backbone
    from pomp.classifier_runs import load_classifier_runs, place_on
    from pomp.evaluate import build_classifier

    runs = load_classifier_runs(cfg.prompt_paths(), cfg.baseline)  # a refused prompt leaves no output folder behind
    out_dir = check_writable_dir(cfg.out_dir)
    backbone = load_backbone(cfg.backbone, cfg.pretrained, device=cfg.device)
    if dense:
        backbone.check_dense_input(cfg.size or backbone.image_spec.size)
    place_on(runs, backbone)
    classifiers = [build_classifier(backbone, classnames, source=source, **kwargs) for _, kwargs in runs]
    atomic_write_json(out_dir / config_name, {**dataclasses.asdict(cfg), "backbone_info": backbone.describe()})
    return out_dir, backbone, runs, classifiers


def _record(task: str, dataset: str, backbone, label: str, metrics: dict, vocabulary: dict, kwargs: dict) -> dict:
    """eval's `result_record` of `task`: the metrics, the vocabulary scored and, for a baseline, its templates."""
    from pomp.evaluate import baseline_record, result_record

    extra = {"num_classes": vocabulary["count"], "classnames": vocabulary,
             **(baseline_record(kwargs["baseline"]) if "baseline" in kwargs else {})}
    return result_record(dataset, backbone, metrics, label, extra, task=task)


def _vocabulary(run_dir: Path, classnames: list[str], source: str) -> dict:
    """Write `run_dir/classnames.txt` and return its `classnames_record`."""
    from pomp.evaluate import classnames_record, write_classnames

    return classnames_record(classnames, source, write_classnames(run_dir / "classnames.txt", classnames).name)


def results_markdown(records: list[dict], columns: list[str]) -> str:
    """One row per prompt, metrics in % (blank where undefined)."""
    from pomp.evaluate import markdown_table

    def cell(value):
        return "" if value is None else f"{100 * value:.2f}"

    return markdown_table(["prompt", *columns], [[r["prompt"], *(cell(r["metrics"].get(c)) for c in columns)]
                                                  for r in records])


def run_segment(cfg: SegmentConfig) -> list[dict]:
    """Segment a VOC-layout split with each classifier; write records, overlays and the table."""
    from pomp.dense.segment import evaluate_segmentation, read_name_set, read_voc_split
    from pomp.evaluate import label_filename

    cfg.verify()  # as the command line does, for a config made in Python
    data = read_voc_split(cfg.data, cfg.split, cfg.classes)
    unseen = read_name_set(cfg.unseen)
    source = str(cfg.classes or Path(cfg.data) / "classes.txt")
    out_dir, backbone, runs, classifiers = _setup(cfg, "segment_config.json", data.classnames, source, dense=True)
    records = []
    for (label, kwargs), classifier in zip(runs, classifiers):
        run_dir = out_dir / label_filename(label)
        metrics = evaluate_segmentation(
            backbone, data, classifier, size=cfg.size, bg_threshold=cfg.bg_threshold, unseen=unseen,
            overlay_dir=run_dir / "overlays" if cfg.overlays > 0 else None, max_overlays=cfg.overlays,
            prediction_dir=run_dir / "predictions" if cfg.save_predictions else None, progress=cfg.progress)
        vocabulary = _vocabulary(run_dir, data.classnames, f"class list {source}")
        record = _record("zeroshot_segmentation", data.name, backbone, label, metrics, vocabulary, kwargs)
        atomic_write_json(run_dir / "metrics.json", record)
        records.append(record)
    columns = ["mIoU", "pixel_acc"] + (["mIoU_seen", "mIoU_unseen", "hIoU"] if unseen is not None else [])
    atomic_write_text(out_dir / "results.md", results_markdown(records, columns))
    return records


def run_detect(cfg: DetectConfig) -> list[dict]:
    """Classify boxes with each classifier; write COCO detections, records and the table."""
    from pomp.dense.metrics import detection_metrics
    from pomp.dense.regions import detect
    from pomp.dense.segment import read_name_set
    from pomp.evaluate import label_filename

    cfg.verify()  # as the command line does, for a config made in Python
    gt = read_json(cfg.annotations)
    if not isinstance(gt, dict) or not gt.get("categories"):
        raise ValueError(f"{cfg.annotations}: not a COCO ground-truth file with categories")
    proposals = read_json(cfg.boxes) if cfg.boxes else None
    if proposals is not None and not isinstance(proposals, list):
        raise ValueError(f"{cfg.boxes}: boxes must be a COCO results list")
    unseen = read_name_set(cfg.unseen)
    if unseen is not None:  # match unseen names against the categories' names as the class list cleans them
        from pomp.data.names import clean_classname

        cleaned = {clean_classname(c["name"]): c["name"] for c in gt["categories"]}
        known = [cleaned[name] for name in unseen if name in cleaned]
        if not known:
            raise ValueError(f"{cfg.unseen}: none of the unseen classes is among the categories")
        if len(known) < len(unseen):  # a split shared with segmentation names stuff classes too
            extra = sorted(set(unseen) - set(cleaned))
            print(f"pomp detect: unseen classes without a category ignored: {extra}", file=sys.stderr)
        unseen = known
    classnames = [c["name"] for c in gt["categories"]]
    out_dir, backbone, runs, classifiers = _setup(cfg, "detect_config.json", classnames, cfg.annotations,
                                                  dense=cfg.method == "roi")
    records = []
    for (label, kwargs), classifier in zip(runs, classifiers):
        detections, stats = detect(backbone, gt, cfg.images, classifier, proposals=proposals, method=cfg.method,
                                   size=cfg.size, context=cfg.context, top_k=cfg.top_k, progress=cfg.progress)
        run_dir = out_dir / label_filename(label)
        atomic_write_text(run_dir / "detections.json", json.dumps(detections))
        metrics = {**detection_metrics(gt, detections, unseen), **stats}
        vocabulary = _vocabulary(run_dir, classnames, f"categories of {cfg.annotations}")
        record = _record("zeroshot_detection", Path(cfg.annotations).stem, backbone, label, metrics, vocabulary, kwargs)
        atomic_write_json(run_dir / "metrics.json", record)
        records.append(record)
    columns = ["AP", "AP50"]
    if any("frequency" in c for c in gt["categories"]):
        columns.append("APr")
    if unseen is not None:
        columns += ["AP50_seen", "AP50_unseen"]
    if proposals is None:
        columns.append("box_acc1")
    atomic_write_text(out_dir / "results.md", results_markdown(records, columns))
    return records


__all__ = ["DetectConfig", "SegmentConfig", "results_markdown", "run_detect", "run_segment"]
