"""`pomp eval`, `benchmark`, `embed`, `info`, `backbones` and `convert`: apply a prompt (zero-shot classification,
the paper's suites, class embeddings for detectors and segmenters) and look into or convert prompts and models."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

from pomp.cli.common import add_command, load_eval_data
from pomp.config import CONFIG_DIR, BackbonesConfig, BenchmarkConfig, ConvertConfig, EmbedConfig, EvalConfig, InfoConfig


def _names_source(spec: str, names: str | None) -> str:
    """Where `load_eval_data` takes class names from, in words (for the result files)."""
    if Path(spec).suffix == ".json":
        return f"split file {spec}"
    return f"names {names}" if names else f"folder names under {spec}"


def _data_name(spec: str) -> str:
    """The data's own name (a split file's stem, a folder's name), by which `--baseline dataset` finds
    CoOp's template even when `unique_dataset_names` prefixed it."""
    path = Path(spec)
    return path.stem if path.suffix == ".json" else path.name


def _names_file(spec: str, names: str | None) -> str:
    """The file (or folder) a dataset's class names come from: its split JSON, else the names file, else the
    folder; named in errors about a class."""
    return spec if Path(spec).suffix == ".json" or not names else names



def _saved_config(command: str, cfg, **extra) -> dict:
    """What a command's config file records: the command, its resolved options and `extra` facts."""
    return {"command": command, **dataclasses.asdict(cfg), **extra}


def cmd_eval(cfg: EvalConfig) -> int:
    from pomp.backbones import load_backbone
    from pomp.classifier_runs import load_classifier_runs, place_on
    from pomp.evaluate import build_classifier, write_tables
    from pomp.io import atomic_write_json, check_cache_dir, check_writable_dir

    datasets = load_eval_data(cfg.data, cfg.split, cfg.image_root, cfg.names)
    runs = load_classifier_runs(cfg.prompt_paths(), cfg.baseline)  # a refused prompt leaves no output folder behind
    out_dir = check_writable_dir(cfg.out_dir)
    if cfg.feature_cache:
        check_cache_dir(cfg.feature_cache)
    backbone = load_backbone(cfg.backbone, cfg.pretrained, device=cfg.device)
    place_on(runs, backbone)
    # Every class text first: a class name that does not fit the text context is reported before any image is encoded.
    classifiers = [[build_classifier(backbone, images.classnames, source=_names_file(spec, cfg.names),
                                     dataset=_data_name(spec), **kwargs) for _, kwargs in runs]
                   for images, spec in zip(datasets, cfg.data)]
    # In a folder of its own: clip_benchmark's `build` reads every top-level *.json as a result file.
    atomic_write_json(out_dir / CONFIG_DIR / "eval_config.json",
                      _saved_config("eval", cfg, backbone_info=backbone.describe()))
    records = []
    for spec, images, dataset_classifiers in zip(cfg.data, datasets, classifiers):
        records += _score_dataset(cfg, spec, images, backbone, runs, dataset_classifiers, out_dir)
    md_path, _ = write_tables(out_dir, records)
    print()
    print(md_path.read_text())
    return 0


def _score_dataset(cfg: EvalConfig, spec: str, images, backbone, runs, classifiers, out_dir: Path) -> list[dict]:
    """Score each run's classifier on one dataset of `pomp eval`; write and print its results."""
    from pomp.data.features import cached_image_features
    from pomp.data.folder import ImageDataset
    from pomp.evaluate import (
        baseline_record,
        classnames_record,
        label_filename,
        percent,
        result_record,
        write_classnames,
        write_result,
        zero_shot_metrics,
    )

    name = images.name
    cache = Path(cfg.feature_cache) / name if cfg.feature_cache else None
    feats = cached_image_features(cache, backbone, ImageDataset(images, backbone.eval_transform()),
                                  batch_size=cfg.batch_size, num_workers=cfg.num_workers, precision=cfg.precision,
                                  progress=cfg.progress, desc=f"{name} features")
    if all(re.fullmatch(r"n\d{8}", c) for c in images.classnames):  # "a photo of a n01440764." scores nothing
        print(f"note: {name}: the class names are WordNet ids (e.g. {images.classnames[0]!r}): give --names "
              "(CoOp's imagenet/classnames.txt, or imagenet21k-p)")
    names_file = write_classnames(out_dir / f"{name}__classnames.txt", images.classnames)
    vocabulary = classnames_record(images.classnames, _names_source(spec, cfg.names), names_file.name)
    records = []
    for (label, kwargs), classifier in zip(runs, classifiers):
        metrics = zero_shot_metrics(feats.features, feats.labels, classifier)
        extra = {"num_classes": len(images.classnames), "num_images": len(feats),
                 "skipped_images": feats.skipped, "skipped_files": images.skipped, "classnames": vocabulary}
        if "baseline" in kwargs:
            extra.update(baseline_record(kwargs["baseline"], _data_name(spec)))
            if extra["templates_source"].startswith("fallback"):
                print(f"note: {name}: {label}: {extra['templates_source']}")
        record = result_record(name, backbone, metrics, label, extra)
        write_result(out_dir / f"{name}__{label_filename(label)}.json", record)
        records.append(record)
        print(f"{name:>20s}  {label:<40s} acc1 {percent(metrics['acc1'])}  acc5 "
              f"{percent(metrics['acc5'])}  mpcr {percent(metrics['mean_per_class_recall'])}")
    return records


def cmd_benchmark(cfg: BenchmarkConfig) -> int:
    from pomp.backbones import load_backbone
    from pomp.classifier_runs import load_classifier_runs, place_on
    from pomp.io import atomic_write_json, check_writable_dir, remove_empty_dirs
    from pomp.suites import run_benchmark, suite_datasets

    datasets = suite_datasets(cfg.suite or ["all"], cfg.datasets.split(",") if cfg.datasets else None)
    if not datasets:
        raise ValueError("no dataset selected: --datasets names none of the chosen suites' datasets")
    if not Path(cfg.data_root).is_dir():
        raise FileNotFoundError(f"{cfg.data_root}: data root not found (the folder holding the suites' datasets)")
    runs = load_classifier_runs(cfg.prompt_paths(), cfg.baseline)  # a refused prompt leaves no output folder behind
    out_dir = check_writable_dir(cfg.out_dir)
    cache = Path(cfg.feature_cache) if cfg.feature_cache else Path(cfg.out_dir).resolve().parent / "feature_cache"
    backbone = load_backbone(cfg.backbone, cfg.pretrained, device=cfg.device)
    place_on(runs, backbone)
    atomic_write_json(out_dir / CONFIG_DIR / "benchmark_config.json",
                      _saved_config("benchmark", cfg, datasets_selected=datasets, feature_cache_root=str(cache),
                                    backbone_info=backbone.describe()))
    run = run_benchmark(cfg.data_root, datasets, backbone, runs, out_dir, cache, batch_size=cfg.batch_size,
                        num_workers=cfg.num_workers, precision=cfg.precision, progress=cfg.progress)
    if not run.records:  # refused: the run's record files go, so that no output folder is left behind
        for name in ("benchmark_config.json", "benchmark_summary.json"):
            (out_dir / CONFIG_DIR / name).unlink(missing_ok=True)
        remove_empty_dirs([out_dir / CONFIG_DIR])
        raise FileNotFoundError(f"{cfg.data_root}: none of the {len(datasets)} selected datasets could be scored")
    print()
    print(run.tables[0].read_text())
    return 1 if run.failed else 0


def cmd_embed(cfg: EmbedConfig) -> int:
    from pomp.backbones import load_backbone
    from pomp.data.names import SINGLE_TEMPLATE, read_class_list
    from pomp.export import write_class_embeddings
    from pomp.interop import load_any
    from pomp.io import check_writable_dir

    classnames = read_class_list(cfg.classes)
    prompt = load_any(cfg.prompt) if cfg.prompt else None
    check_writable_dir(cfg.out_dir)
    backbone = load_backbone(cfg.backbone, cfg.pretrained, device=cfg.device)
    paths = write_class_embeddings(cfg.out_dir, backbone, classnames, prompt=prompt,
                                   template=(cfg.template or SINGLE_TEMPLATE) if prompt is None else None,
                                   config=_saved_config("embed", cfg), source=cfg.classes)
    for p in paths:
        print(p)
    return 0


def cmd_info(cfg: InfoConfig) -> int:
    from pomp.interop import load_any

    print(json.dumps(load_any(cfg.prompt).describe(), indent=2))
    return 0


def cmd_backbones(cfg: BackbonesConfig) -> int:
    from pomp.backbones import load_backbone

    if cfg.name in ("minilm-efficientnet-lite0", "default") or cfg.name.startswith("hf:"):
        backbone = load_backbone(cfg.name)
    else:
        from pomp.backbones.open_clip import load_open_clip_structure

        backbone = load_open_clip_structure(cfg.name)  # structure and tokenizer only: no weights are built
    print(json.dumps(backbone.resolved(cfg.n_ctx), indent=2))
    return 0


def cmd_convert(cfg: ConvertConfig) -> int:
    from pomp.interop import convert_prompt

    print(convert_prompt(cfg.src, cfg.dst, backbone=cfg.backbone, epoch=cfg.epoch, fmt=cfg.format, dtype=cfg.dtype))
    return 0


def add_parsers(sub) -> None:
    """Register `eval`, `benchmark`, `embed`, `info`, `backbones` and `convert` on the `pomp` sub-command parser."""
    add_command(sub, "eval", EvalConfig, cmd_eval,
                help="zero-shot classification with a prompt and/or hand-crafted baselines",
                description="Zero-shot top-1/top-5/mean-per-class recall on one or more datasets; writes one "
                            "clip_benchmark-style JSON per dataset and prompt, and results.md/.csv.")
    add_command(sub, "benchmark", BenchmarkConfig, cmd_benchmark,
                help="the paper's zero-shot suites: cross-dataset, domain generalization, IN-21K",
                description="Score prompts and/or baselines on every dataset of the chosen suites found under "
                            "--data-root (CoOp's DATASETS.md layout; see pomp/data/suite_layouts.py). Missing "
                            "datasets are skipped with one line. Writes one clip_benchmark-style JSON per dataset and "
                            "prompt, and benchmark.md/.csv beside the paper's numbers. Image features are cached per "
                            "backbone, so another prompt costs only the text side.")
    add_command(sub, "embed", EmbedConfig, cmd_embed,
                help="class embeddings for detectors/segmenters (Detic .npy, clip_benchmark .pt)",
                description="Write OUT_DIR/class_embeddings.npy ([C, D] float32, L2-normalised; what Detic's "
                            "zero-shot classifier loads), OUT_DIR/zeroshot_classifier.pt ([D, C], clip_benchmark "
                            "--load_clfs) and OUT_DIR/classnames.txt.")
    add_command(sub, "info", InfoConfig, cmd_info, help="show a prompt's shape and metadata")
    add_command(sub, "backbones", BackbonesConfig, cmd_backbones,
                help="what pomp resolves for a model: prompt layout, pooling, widths, dense path",
                description="Print what pomp learned from a model and its tokenizer: where the context vectors go "
                            "(tokens before them, positions), how the text feature is pooled, causal or not, whether "
                            "cutting sequences is exact, text and joint widths, the dense feature path. open_clip "
                            "models are built on the meta device (no weights).")
    add_command(sub, "convert", ConvertConfig, cmd_convert,
                help="convert prompts: official Dassl .pth.tar <-> pomp safetensors+JSON",
                description="SRC .pth.tar -> DST .safetensors imports an official POMP/CoOp checkpoint; SRC pomp "
                            "prompt -> DST .pth.tar (or model.pth.tar-N) exports the official format.")
