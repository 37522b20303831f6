"""Zero-shot classification with a prompt or with hand-crafted templates, and result files.

A classifier is `[C, D]` L2-normalised class features; an image is scored by cosine
similarity. Results per dataset follow clip_benchmark's JSON shape; a table across datasets
(markdown and CSV) adds the average.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from pomp.backbones.base import Backbone
from pomp.io import atomic_write_json, atomic_write_text
from pomp.prompt import Prompt, check_fit, clean_classname

SINGLE_TEMPLATE = "a photo of a {}."


def imagenet_templates() -> list[str]:
    """CLIP's 80 ImageNet prompt templates, as open_clip ships them."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


@torch.no_grad()
def prompt_classifier(prompt: Prompt, backbone: Backbone, classnames: Sequence[str], chunk_size: int = 1024,
                      source: str | None = None) -> torch.Tensor:
    """`[C, D]` class features from a learned prompt (`source`: where the class names came from, for errors)."""
    return prompt.encode_class_features(backbone, classnames, chunk_size=chunk_size, source=source).float()


@torch.no_grad()
def template_classifier(
    backbone: Backbone,
    classnames: Sequence[str],
    templates: Sequence[str] = (SINGLE_TEMPLATE,),
    chunk_size: int = 1024,
    source: str | None = None,
) -> torch.Tensor:
    """`[C, D]` hand-crafted classifier: per class, the mean of the normalised template features, renormalised.

    A text cut by the tokenizer is refused like a learned prompt's, naming `source`, the class and the template.
    """
    names = [clean_classname(c) for c in classnames]
    texts = [t.format(name) for name in names for t in templates]
    labels = [f"class {name!r}" + (f" in template {t!r}" if len(templates) > 1 else "")
              for name in names for t in templates]
    feats = []
    for i in range(0, len(texts), chunk_size):
        tokens = check_fit(backbone, texts[i : i + chunk_size], labels[i : i + chunk_size], source)
        feats.append(F.normalize(backbone.encode_tokens(tokens).float(), dim=-1))
    feats = torch.cat(feats).view(len(names), len(templates), -1).mean(dim=1)
    return F.normalize(feats, dim=-1)


def build_classifier(
    backbone: Backbone, classnames: Sequence[str], prompt: Prompt | None = None, baseline: str | None = None,
    source: str | None = None,
) -> torch.Tensor:
    """A classifier from a prompt, or from `baseline` = "single" ("a photo of a {}.") or "ensemble" (80 templates).

    `source` (the names file or data the classes came from) is named when a class does not fit the text context.
    """
    if prompt is not None:
        return prompt_classifier(prompt, backbone, classnames, source=source)
    if baseline == "single":
        return template_classifier(backbone, classnames, [SINGLE_TEMPLATE], source=source)
    if baseline == "ensemble":
        return template_classifier(backbone, classnames, imagenet_templates(), source=source)
    raise ValueError(f"unknown baseline {baseline!r}; choose 'single' or 'ensemble'")


def zero_shot_metrics(
    image_features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor, chunk_size: int = 8192
) -> dict[str, float]:
    """Top-1, top-5 (as fractions) and mean per-class recall of cosine-similarity classification.

    `image_features` `[M, D]` (or `[M, V, D]`: views are averaged, then renormalised); may be a
    float16 memory map. Scored in chunks of images, so M x C scores never exist at once.
    """
    device = classifier.device
    labels = labels.long().cpu()
    top1, hit5 = [], []
    for start in range(0, image_features.shape[0], chunk_size):
        chunk = image_features[start : start + chunk_size].float()
        if chunk.dim() == 3:
            chunk = F.normalize(chunk.mean(dim=1), dim=-1)
        scores = chunk.to(device) @ classifier.float().t()
        topk = scores.topk(min(5, scores.shape[1]), dim=1).indices.cpu()
        chunk_labels = labels[start : start + chunk_size]
        top1.append(topk[:, 0] == chunk_labels)
        hit5.append((topk == chunk_labels.unsqueeze(1)).any(dim=1))
    correct1, correct5 = torch.cat(top1), torch.cat(hit5)
    num_classes = max(classifier.shape[0], int(labels.max()) + 1)
    counts = torch.bincount(labels, minlength=num_classes).double()
    right = torch.bincount(labels[correct1], minlength=num_classes).double()
    present = counts > 0
    return {
        "acc1": float(correct1.double().mean()),
        "acc5": float(correct5.double().mean()),
        "mean_per_class_recall": float((right[present] / counts[present]).mean()),
    }


def result_record(dataset: str, backbone: Backbone, metrics: dict, prompt_label: str, extra: dict | None = None) -> dict:
    """clip_benchmark's result shape, plus which prompt produced it."""
    return {
        "dataset": dataset,
        "model": backbone.name,
        "pretrained": backbone.pretrained,
        "task": "zeroshot_classification",
        "metrics": metrics,
        "prompt": prompt_label,
        **(extra or {}),
    }


def write_result(path: str | Path, record: dict) -> Path:
    return atomic_write_json(path, record)


def results_table(records: Sequence[dict], metric: str = "acc1") -> tuple[str, str]:
    """Markdown and CSV tables: one row per prompt, one column per dataset, plus the average (in %)."""
    datasets = list(dict.fromkeys(r["dataset"] for r in records))
    prompts = list(dict.fromkeys(r["prompt"] for r in records))
    cell = {(r["prompt"], r["dataset"]): 100.0 * r["metrics"][metric] for r in records}
    rows = []
    for p in prompts:
        values = [cell.get((p, d)) for d in datasets]
        present = [v for v in values if v is not None]
        average = sum(present) / len(present) if present else None
        rows.append([p] + values + [average])
    header = ["prompt"] + datasets + ["average"]

    def fmt(v):
        return "" if v is None else (f"{v:.2f}" if isinstance(v, float) else str(v))

    md = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    md += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows([[fmt(v) for v in row] for row in rows])
    return "\n".join(md) + "\n", buffer.getvalue()


def write_tables(out_dir: str | Path, records: Sequence[dict], metric: str = "acc1") -> tuple[Path, Path]:
    markdown, csv_text = results_table(records, metric)
    out_dir = Path(out_dir)
    return atomic_write_text(out_dir / "results.md", markdown), atomic_write_text(out_dir / "results.csv", csv_text)
