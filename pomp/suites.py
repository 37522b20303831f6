"""The paper's zero-shot benchmark suites: cross-dataset, domain generalization, ImageNet-21K-P.

`run_benchmark` scores one or more prompts (and hand-crafted baselines) on every dataset of the
chosen suites that is on disk under one data root (layouts: `pomp.data.suite_layouts.LAYOUTS`);
a dataset that is not there is skipped with one line saying where it was looked for.

Per dataset and prompt it writes a clip_benchmark-shaped JSON (with the class names' sha256 and
source; the names themselves in `<dataset>__classnames.txt`); then one table (`benchmark.md`,
`benchmark.csv`) with our top-1 accuracies, the paper's rows for CLIP / CoOp / CoCoOp / MaPLe /
POMP (`pomp.paper_results`), the paper's averages, and our difference to the paper's POMP row
(and, for `baseline:dataset`, the same protocol as the paper's CLIP row, to that row).

Image features of each test set are cached per backbone (`<cache>/<backbone-slug>/<dataset>`,
keyed by model, preprocessing and samples), so scoring another prompt costs only the text side.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

import torch

from pomp.backbones.base import Backbone
from pomp.data.features import cached_image_features
from pomp.data.folder import ImageDataset, LabelledImages
from pomp.data.suite_layouts import LAYOUT_BY_KEY, LAYOUTS, DatasetMissing, classnames_source, load_test_set
from pomp.evaluate import (CONFIG_DIR, baseline_record, build_classifier, classnames_record, csv_table, label_filename,
                           markdown_table, percent, result_record, write_classnames, write_result, zero_shot_metrics)
from pomp.io import atomic_write_json, atomic_write_text
from pomp.paper_results import (AVERAGE_TITLES, AVERAGES, CROSS_DATASET, DOMAIN_GENERALIZATION, METHODS,
                                PAPER_RESULTS, REFERENCE, SOURCE, group_average)

SUITES: dict[str, tuple[str, ...]] = {
    "cross-dataset": ("imagenet",) + CROSS_DATASET,  # ImageNet-1K: the source column
    "domain-generalization": ("imagenet",) + DOMAIN_GENERALIZATION,
    "imagenet21k": ("imagenet21k_p",),
}
SUITE_CHOICES = (*SUITES, "all")
# our rows that score the same protocol as a paper row: CoOp's zero-shot CLIP uses one hand-crafted
# template per dataset (pomp.evaluate.DATASET_TEMPLATES)
LIKE_FOR_LIKE = {"baseline:dataset": "CLIP"}


def suite_datasets(suites: Sequence[str], only: Sequence[str] | None = None) -> list[str]:
    """Dataset keys of the suites ("all" = every suite), once each, in the table's order."""
    wanted = set()
    for suite in suites:
        if suite == "all":
            wanted.update(k for keys in SUITES.values() for k in keys)
        elif suite in SUITES:
            wanted.update(SUITES[suite])
        else:
            raise ValueError(f"unknown suite {suite!r}; choose from {', '.join(SUITE_CHOICES)}")
    if only:
        unknown = [k for k in only if k not in LAYOUT_BY_KEY]
        if unknown:
            raise ValueError(f"unknown dataset {unknown[0]!r}; choose from {', '.join(LAYOUT_BY_KEY)}")
        wanted &= set(only)
    return [layout.key for layout in LAYOUTS if layout.key in wanted]


def backbone_slug(backbone: Backbone) -> str:
    """A folder name per backbone: readable name and weights, plus a hash of `describe()`."""
    name = str(backbone.name)
    if name.endswith(".json"):
        name = Path(name).stem
    weights = Path(str(backbone.pretrained)).name if backbone.pretrained else "random"
    digest = hashlib.sha256(json.dumps(backbone.describe(), sort_keys=True, default=str).encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9._-]+", "-", f"{name}__{weights}").strip("-.")[:80]
    return f"{readable}-{digest}"


@torch.no_grad()
# --- the table -------------------------------------------------------------------------------------
def table_columns(datasets: Sequence[str]) -> list[str]:
    """Dataset keys with each average column placed after the last of its datasets that is shown."""
    columns = list(datasets)
    for group, members in AVERAGES.items():
        shown = [k for k in members if k in columns]
        if shown:
            columns.insert(columns.index(shown[-1]) + 1, group)
    return columns


def _title(column: str) -> str:
    return AVERAGE_TITLES.get(column) or LAYOUT_BY_KEY[column].title


def benchmark_rows(
    records: Sequence[dict], datasets: Sequence[str], metric: str = "acc1"
) -> list[tuple[str, str, list]]:
    """Rows `(kind, label, values)` over `table_columns(datasets)`: kind is "ours", "paper" or "delta".

    Our averages follow the paper: the plain mean over all datasets of a group, and only when
    every one of them was scored. Paper rows carry the paper's own averages. Deltas: each prompt
    minus the paper's POMP row, and `baseline:dataset` (CLIP's per-dataset templates) minus the
    paper's CLIP row, the same protocol; the other baselines have no paper row to compare with.
    """
    columns = table_columns(datasets)
    ours: dict[str, dict[str, float]] = {}
    for r in records:
        ours.setdefault(r["prompt"], {})[r["dataset"]] = 100.0 * r["metrics"][metric]
    for values in ours.values():
        for group in AVERAGES:
            values[group] = group_average(values, group)
    rows = [("ours", label, [values.get(c) for c in columns]) for label, values in ours.items()]
    rows += [("paper", f"paper: {m}", [PAPER_RESULTS[m].get(c) for c in columns]) for m in METHODS]
    for label, values in ours.items():
        method = LIKE_FOR_LIKE.get(label, None if label.startswith("baseline:") else REFERENCE)
        if method is None:
            continue
        reference = PAPER_RESULTS[method]
        delta = [values[c] - reference[c] if values.get(c) is not None and reference.get(c) is not None else None
                 for c in columns]
        rows.append(("delta", f"{label} - paper {method}", delta))
    return rows


def benchmark_table(records: Sequence[dict], datasets: Sequence[str], metric: str = "acc1") -> tuple[str, str]:
    """Markdown (titles as headers) and CSV (dataset keys as headers) of `benchmark_rows`."""
    columns = table_columns(datasets)
    rows = benchmark_rows(records, datasets, metric)

    def fmt(kind: str, v: float | None) -> str:
        if v is None:
            return ""
        return {"ours": f"{v:.2f}", "paper": f"{v:.1f}", "delta": f"{v:+.2f}"}[kind]

    cells = [[label] + [fmt(kind, v) for v in values] for kind, label, values in rows]
    return markdown_table(["method"] + [_title(c) for c in columns], cells), csv_table(["method"] + columns, cells)


def write_benchmark_tables(out_dir: str | Path, records: Sequence[dict], datasets: Sequence[str],
                           notes: Sequence[str] = (), metric: str = "acc1") -> tuple[Path, Path]:
    markdown, csv_text = benchmark_table(records, datasets, metric)
    header = [f"Zero-shot top-1 accuracy (%), test splits. Paper rows: {SOURCE}.",
              "XD avg: mean over the 10 cross-dataset targets (ImageNet excluded); DG avg: mean over "
              "ImageNet-V2/-Sketch/-A/-R; ours only when all of a group's datasets were scored. "
              "Paper averages are the paper's own (computed before rounding).", ""]
    text = "\n".join(header) + markdown + ("\n" + "\n".join(f"- {n}" for n in notes) + "\n" if notes else "")
    out_dir = Path(out_dir)
    return (atomic_write_text(out_dir / "benchmark.md", text),
            atomic_write_text(out_dir / "benchmark.csv", csv_text))


# --- running ---------------------------------------------------------------------------------------
@dataclass
class BenchmarkRun:
    records: list[dict] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)  # dataset -> "not found (looked for ...)"
    failed: dict[str, str] = field(default_factory=dict)  # dataset -> error
    datasets: list[str] = field(default_factory=list)
    tables: tuple[Path, Path] | None = None


def _text_side(cache: dict, backbone: Backbone, key: str, classnames: Sequence[str], label: str,
               kwargs: dict, source: str | None = None) -> torch.Tensor:
    """The classifier of `label` on dataset `key`, built once per (label, templates, class names): ImageNet,
    -V2 and -Sketch share theirs. `source` is named when a class does not fit the text context."""
    baseline = kwargs.get("baseline")
    templates = baseline_record(baseline, key)["templates"] if baseline else ()
    cache_key = (label, tuple(templates), tuple(classnames))
    if cache_key not in cache:
        cache[cache_key] = build_classifier(backbone, classnames, **kwargs, dataset=key, source=source)
    return cache[cache_key]


def run_benchmark(
    data_root: str | Path,
    datasets: Sequence[str],
    backbone: Backbone,
    classifiers: Sequence[tuple[str, dict]],
    out_dir: str | Path,
    feature_cache: str | Path | None,
    batch_size: int = 64,
    num_workers: int = 2,
    precision: str = "bf16",
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> BenchmarkRun:
    """Score each `(label, build_classifier kwargs)` on each dataset found under `data_root`.

    `feature_cache`: root of the image-feature cache (features go to `<root>/<backbone-slug>/<dataset>`),
    or None to compute without caching.
    """
    out_dir = Path(out_dir)
    run = BenchmarkRun(datasets=list(datasets))
    cache_root = Path(feature_cache) / backbone_slug(backbone) if feature_cache is not None else None
    text_side: dict[tuple, torch.Tensor] = {}  # ImageNet, -V2, -Sketch share classifiers
    # Pass 1, text side: every dataset's classifiers before any image is encoded, so a class name that does
    # not fit the text context is reported (as that dataset's error) before the image towers run.
    found: dict[str, LabelledImages] = {}
    for key in datasets:
        try:
            images = load_test_set(key, data_root)
            for label, kwargs in classifiers:
                _text_side(text_side, backbone, key, images.classnames, label, kwargs,
                           source=str(Path(data_root) / LAYOUT_BY_KEY[key].folder))
            found[key] = images
        except DatasetMissing as err:
            run.skipped[key] = str(err).split(": ", 1)[1]
            log(f"skipped {err}")
        except (ValueError, OSError, RuntimeError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            run.failed[key] = message
            log(f"error   {key}: {message}")
    for key, images in found.items():
        try:
            feats = cached_image_features(
                cache_root / key if cache_root is not None else None, backbone,
                ImageDataset(images, backbone.eval_transform()), batch_size=batch_size, num_workers=num_workers,
                precision=precision, desc=f"{key} features", progress=progress)
        except (ValueError, OSError, RuntimeError) as err:
            message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
            run.failed[key] = message
            log(f"error   {key}: {message}")
            continue
        names_file = write_classnames(out_dir / f"{key}__classnames.txt", images.classnames)
        vocabulary = classnames_record(images.classnames, classnames_source(key, data_root), names_file.name)
        for label, kwargs in classifiers:
            baseline = kwargs.get("baseline")
            templates = baseline_record(baseline, key) if baseline else {}
            if baseline == "dataset" and templates["templates_source"].startswith("fallback"):
                log(f"note    {key}: {label}: {templates['templates_source']}")
            classifier = _text_side(text_side, backbone, key, images.classnames, label, kwargs)
            metrics = zero_shot_metrics(feats.features, feats.labels, classifier)
            extra = {"title": LAYOUT_BY_KEY[key].title, "split": "test", "num_classes": len(images.classnames),
                     "num_images": len(feats), "skipped_images": feats.skipped,
                     "classes_without_images": images.skipped.get("classes_without_images", 0),
                     "classnames": vocabulary, **templates}
            record = result_record(key, backbone, metrics, label, extra)
            write_result(out_dir / f"{key}__{label_filename(label)}.json", record)
            run.records.append(record)
            log(f"{key:>16s}  {label:<36s} acc1 {percent(metrics['acc1'])}  acc5 {percent(metrics['acc5'])}  "
                f"({len(feats)} images, {len(images.classnames)} classes)")
    notes = [f"skipped {k}: {v}" for k, v in run.skipped.items()] + [f"error {k}: {v}" for k, v in run.failed.items()]
    if run.records:
        run.tables = write_benchmark_tables(out_dir, run.records, datasets, notes)
    atomic_write_json(out_dir / CONFIG_DIR / "benchmark_summary.json", {
        "data_root": str(data_root), "datasets": list(datasets), "backbone": backbone.describe(),
        "feature_cache": str(cache_root) if cache_root is not None else None,
        "scored": sorted({r["dataset"] for r in run.records}, key=list(datasets).index),
        "skipped": run.skipped, "failed": run.failed,
        "tables": [str(p) for p in run.tables] if run.tables else None,
    })
    return run
