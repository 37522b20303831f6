"""Zero-shot classification with a prompt or with hand-crafted templates, and result files.

A classifier is `[C, D]` L2-normalised class features; an image is scored by cosine
similarity. Results per dataset follow clip_benchmark's JSON shape; a table across datasets
(markdown and CSV) adds the average.
"""

from __future__ import annotations

import csv
import hashlib
import io
import re
import unicodedata
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from pomp.backbones.base import Backbone
from pomp.io import atomic_write_json, atomic_write_text
from pomp.data.names import SINGLE_TEMPLATE, clean_classname
from pomp.prompt import ClassTokens, Prompt, check_fit
from pomp.ranking import class_scores, top_k_first_index


def imagenet_templates() -> list[str]:
    """CLIP's 80 ImageNet prompt templates, as open_clip ships them."""
    from open_clip.zero_shot_metadata import OPENAI_IMAGENET_TEMPLATES

    return [template("{}") for template in OPENAI_IMAGENET_TEMPLATES]


def distinct_names(classnames: Sequence[str]) -> tuple[list[int], torch.Tensor]:
    """`(first, inverse)`: the index of each distinct name's first occurrence, in order, and for each
    class the position of its name in `first` (`[C]`, long). Names are compared as given."""
    position: dict[str, int] = {}
    first: list[int] = []
    for i, name in enumerate(classnames):
        if name not in position:
            position[name] = len(first)
            first.append(i)
    return first, torch.tensor([position[name] for name in classnames], dtype=torch.long)


# Every classifier built from names encodes each distinct name once and copies its row to every class
# carrying it: the same text encoded in another chunk (another padding length, another batch row) can
# round differently, and repeated names must tie exactly (pomp.ranking).
@torch.no_grad()
def prompt_classifier(
    prompt: Prompt,
    backbone: Backbone,
    classnames: Sequence[str] | ClassTokens,
    chunk_size: int = 1024,
    source: str | None = None,
) -> torch.Tensor:
    """`[C, D]` float32 class features from a learned prompt; repeated names get identical rows.
    `classnames` may be the `ClassTokens` of a training vocabulary (no re-tokenizing); `source`: where the
    class names came from, named when one does not fit the text context."""
    if isinstance(classnames, ClassTokens):
        first, inverse = distinct_names(classnames.classnames)
        features = prompt.encode_class_features(backbone, classnames, chunk_size=chunk_size,
                                                ids=torch.tensor(first, dtype=torch.long))
    else:
        names = [clean_classname(c) for c in classnames]
        first, inverse = distinct_names(names)
        features = prompt.encode_class_features(backbone, [names[i] for i in first], chunk_size=chunk_size,
                                                source=source)
    return features.float()[inverse.to(features.device)]


@torch.no_grad()
def template_classifier(
    backbone: Backbone,
    classnames: Sequence[str],
    templates: Sequence[str] = (SINGLE_TEMPLATE,),
    chunk_size: int = 1024,
    source: str | None = None,
) -> torch.Tensor:
    """`[C, D]` hand-crafted classifier: per class, the mean of the normalised template features,
    renormalised; repeated names get identical rows.

    A text cut by the tokenizer is refused like a learned prompt's, naming `source`, the class and the template.
    """
    names = [clean_classname(c) for c in classnames]
    first, inverse = distinct_names(names)
    texts = [t.format(names[i]) for i in first for t in templates]
    labels = [f"class {names[i]!r} in template {t!r}" for i in first for t in templates]
    feats = []
    for i in range(0, len(texts), chunk_size):
        tokens = check_fit(backbone, texts[i : i + chunk_size], labels[i : i + chunk_size], source)
        feats.append(F.normalize(backbone.encode_tokens(tokens).float(), dim=-1))
    feats = F.normalize(torch.cat(feats).view(len(first), len(templates), -1).mean(dim=1), dim=-1)
    return feats[inverse.to(feats.device)]


# --- hand-crafted baselines ----------------------------------------------------------------------
BASELINES = ("single", "ensemble", "dataset")

# CLIP's hand-crafted prompt per dataset, the one CoOp's zero-shot CLIP (`ZeroshotCLIP`) scores with:
# CUSTOM_TEMPLATES of CoOp's trainers/zsclip.py (github.com/KaiyangZhou/CoOp), keyed by CoOp's dataset
# names. POMP's copy of that file (github.com/amazon-science/prompt-pretraining) adds "ImageNet21K".
# These give the "CLIP" rows of the CoOp/CoCoOp/POMP tables, so `baseline:dataset` is that row.
DATASET_TEMPLATES: dict[str, str] = {
    "OxfordPets": "a photo of a {}, a type of pet.",
    "OxfordFlowers": "a photo of a {}, a type of flower.",
    "FGVCAircraft": "a photo of a {}, a type of aircraft.",
    "DescribableTextures": "{} texture.",
    "EuroSAT": "a centered satellite photo of {}.",
    "StanfordCars": "a photo of a {}.",
    "Food101": "a photo of {}, a type of food.",
    "SUN397": "a photo of a {}.",
    "Caltech101": "a photo of a {}.",
    "UCF101": "a photo of a person doing {}.",
    "ImageNet": "a photo of a {}.",
    "ImageNetSketch": "a photo of a {}.",
    "ImageNetV2": "a photo of a {}.",
    "ImageNetA": "a photo of a {}.",
    "ImageNetR": "a photo of a {}.",
    "ImageNet21K": "a photo of a {}.",  # POMP's trainers/zsclip.py only
}


def coop_dataset_name(dataset: str | None) -> str | None:
    """CoOp's name of a dataset given as a pomp benchmark key ("oxford_pets"), as CoOp's name
    ("OxfordPets") or as a CoOp split file's stem ("split_zhou_OxfordPets"); None for any other."""
    from pomp.data.suite_layouts import LAYOUT_BY_KEY

    if not dataset:
        return None
    if dataset in LAYOUT_BY_KEY:
        return LAYOUT_BY_KEY[dataset].coop_name
    name = dataset.removeprefix("split_zhou_")
    return name if name in DATASET_TEMPLATES else None


def baseline_templates(baseline: str, dataset: str | None = None) -> tuple[list[str], str]:
    """(templates, where they come from) of a hand-crafted baseline.

    "single": "a photo of a {}." on every dataset; "ensemble": CLIP's 80 ImageNet templates;
    "dataset": the template of `dataset` in `DATASET_TEMPLATES` (CLIP's zero-shot protocol as CoOp
    runs it), or "a photo of a {}." for a dataset with no entry, with the source saying so.
    """
    if baseline == "single":
        return [SINGLE_TEMPLATE], "pomp: one template on every dataset"
    if baseline == "ensemble":
        return imagenet_templates(), "CLIP's 80 ImageNet templates (open_clip OPENAI_IMAGENET_TEMPLATES)"
    if baseline == "dataset":
        coop = coop_dataset_name(dataset)
        if coop is None:
            return [SINGLE_TEMPLATE], f"fallback: no CoOp template for dataset {dataset!r}, {SINGLE_TEMPLATE!r} used"
        origin = "POMP" if coop == "ImageNet21K" else "CoOp"
        return [DATASET_TEMPLATES[coop]], f"{origin} trainers/zsclip.py CUSTOM_TEMPLATES[{coop!r}]"
    raise ValueError(f"unknown baseline {baseline!r}; choose from {', '.join(BASELINES)}")


def baseline_record(baseline: str, dataset: str | None = None) -> dict:
    """`{"templates", "templates_source"}` of a baseline on a dataset, for its result file."""
    templates, source = baseline_templates(baseline, dataset)
    return {"templates": templates, "templates_source": source}


def build_classifier(
    backbone: Backbone,
    classnames: Sequence[str],
    prompt: Prompt | None = None,
    baseline: str | None = None,
    dataset: str | None = None,
    source: str | None = None,
) -> torch.Tensor:
    """`[C, D]` classifier from a prompt, or from a hand-crafted `baseline` (see `baseline_templates`;
    "dataset" needs `dataset`, the benchmark key or data name the classes belong to).

    `source` (the names file or data the classes came from) is named when a class does not fit the
    text context. Repeated names (after `clean_classname`) get identical rows and tie exactly
    (`pomp.ranking`).
    """
    if prompt is not None:
        return prompt_classifier(prompt, backbone, classnames, source=source)
    return template_classifier(backbone, classnames, baseline_templates(baseline, dataset)[0], source=source)


# --- the vocabulary a result was scored against ----------------------------------------------------
def classnames_text(classnames: Sequence[str]) -> str:
    """The class names as they are scored (`clean_classname`, Unicode NFC), one per line, each line
    ending in a newline: the text `classnames_record`'s sha256 is taken of (UTF-8)."""
    return "".join(unicodedata.normalize("NFC", clean_classname(c)) + "\n" for c in classnames)


def classnames_record(classnames: Sequence[str], source: str, file: str | None = None) -> dict:
    """`{"count", "sha256", "source"[, "file"]}`: two results with the same sha256 scored the same names
    in the same order. `file`: a sidecar holding `classnames_text` (so `sha256sum FILE` gives the hash)."""
    digest = hashlib.sha256(classnames_text(classnames).encode("utf-8")).hexdigest()
    record = {"count": len(classnames), "sha256": digest, "source": source}
    return {**record, "file": file} if file else record


def write_classnames(path: str | Path, classnames: Sequence[str]) -> Path:
    """The sidecar of `classnames_record`: `classnames_text`, written atomically."""
    return atomic_write_text(path, classnames_text(classnames))


def zero_shot_metrics(
    image_features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor, chunk_size: int = 8192
) -> dict[str, float]:
    """Top-1, top-5 (as fractions) and mean per-class recall of cosine-similarity classification.

    With fewer than 5 classes top-5 is undefined and reported as None (clip_benchmark reports NaN).

    `image_features` `[M, D]` (or `[M, V, D]`: views are averaged, then renormalised); may be a
    float16 memory map. Scored in chunks of images, so M x C scores never exist at once. Ties go to
    the lowest class index, for top-1, top-5 and recall alike (`pomp.ranking`: the rule of Dassl's
    evaluator and of argmax).
    """
    device = classifier.device
    labels = labels.long().cpu()
    classifier = classifier.float()
    top1, hit5 = [], []
    for start in range(0, image_features.shape[0], chunk_size):
        chunk = image_features[start : start + chunk_size].float()
        if chunk.dim() == 3:
            chunk = F.normalize(chunk.mean(dim=1), dim=-1)
        scores = class_scores(chunk.to(device), classifier)
        topk = top_k_first_index(scores, 5).cpu()
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
        "acc5": float(correct5.double().mean()) if classifier.shape[0] >= 5 else None,
        "mean_per_class_recall": float((right[present] / counts[present]).mean()),
    }


def percent(value: float | None) -> str:
    """A metric as a 6-wide percentage; undefined ones (acc5 with fewer than 5 classes) as `n/a`."""
    return "   n/a" if value is None else f"{100 * value:6.2f}"


RANDOM_INIT = "random-init"  # the "pretrained" of a backbone without weights (clip_benchmark needs a string)


def result_record(dataset: str, backbone: Backbone, metrics: dict, prompt_label: str, extra: dict | None = None,
                  task: str = "zeroshot_classification") -> dict:
    """clip_benchmark's result shape (its `build` step reads it as is), plus which prompt and which
    backbone (architecture, activation, weights: `Backbone.describe()`) produced it. `task`: clip_benchmark's
    name of it (`zeroshot_classification`; pomp's dense runs: `zeroshot_segmentation`, `zeroshot_detection`)."""
    return {
        "dataset": dataset,
        "model": backbone.name,
        "pretrained": backbone.pretrained if backbone.pretrained is not None else RANDOM_INIT,
        "task": task,
        "metrics": metrics,
        "prompt": prompt_label,
        "backbone": backbone.describe(),
        **(extra or {}),
    }


# Where a results folder keeps its other JSON (resolved configs, the benchmark's summary): clip_benchmark's
# `build` reads every top-level *.json of the folder as a result file, so nothing else may sit there.
CONFIG_DIR = "config"


def write_result(path: str | Path, record: dict) -> Path:
    return atomic_write_json(path, record)


def label_filename(label: str) -> str:
    """A result label (`prompt:<file name>`, `baseline:single`) as a file or folder name: every run of
    characters other than ASCII letters, digits, `.`, `_` and `-` becomes one `_` (`prompt_p.safetensors`).
    The one rule of every command's per-label outputs (eval, benchmark, segment, detect)."""
    return re.sub(r"[^A-Za-z0-9._-]+", "_", label)


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub markdown table: the header row, a `|---|` rule, one line per row (cells as given, `str`)."""
    lines = ["| " + " | ".join(str(h) for h in header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def csv_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """The same table as CSV (Python's `csv` dialect, `\\n` line ends)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


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

    cells = [[fmt(v) for v in row] for row in rows]
    return markdown_table(header, cells), csv_table(header, cells)


def write_tables(out_dir: str | Path, records: Sequence[dict], metric: str = "acc1") -> tuple[Path, Path]:
    markdown, csv_text = results_table(records, metric)
    out_dir = Path(out_dir)
    return atomic_write_text(out_dir / "results.md", markdown), atomic_write_text(out_dir / "results.csv", csv_text)
