"""`pomp eval`, `benchmark`, `embed`, `info`, `backbones` and `convert`: apply a prompt (zero-shot classification,
the paper's suites, class embeddings for detectors and segmenters) and look into or convert prompts and models."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

from pomp.cli.common import (BACKBONE_HELP, PRETRAINED_HELP, int_at_least, load_eval_data, refuse_unused,
                             refuse_unused_data_options)


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


def cmd_eval(args: argparse.Namespace) -> int:
    from pomp.backbones import load_backbone
    from pomp.data.features import cached_image_features
    from pomp.data.folder import ImageDataset
    from pomp.evaluate import (CONFIG_DIR, baseline_record, build_classifier, classnames_record, label_filename,
                               percent, result_record, write_classnames, write_result, write_tables, zero_shot_metrics)
    from pomp.interop import load_any
    from pomp.io import atomic_write_json, check_cache_dir, check_writable_dir

    if not args.prompt and not args.baseline:
        raise ValueError("give --prompt and/or --baseline single|ensemble|dataset")
    refuse_unused_data_options(args.data, args.image_root, args.names)
    datasets = load_eval_data(args.data, args.split, args.image_root, args.names)
    prompt = load_any(args.prompt) if args.prompt else None  # a refused prompt leaves no output folder behind
    out_dir = check_writable_dir(args.out_dir)
    if args.feature_cache:
        check_cache_dir(args.feature_cache)
    backbone = load_backbone(args.backbone, args.pretrained, device=args.device)
    device = backbone.device
    if prompt is not None:
        prompt.check_compatible(backbone)
        prompt.to(device)
    runs = ([("prompt:" + Path(args.prompt).name, dict(prompt=prompt))] if prompt is not None else [])
    runs += [(f"baseline:{b}", dict(baseline=b)) for b in args.baseline]
    # Every class text first: a class name that does not fit the text context is reported before any image is encoded.
    classifiers = [[build_classifier(backbone, images.classnames, source=_names_file(spec, args.names),
                                     dataset=_data_name(spec), **kwargs) for _, kwargs in runs]
                   for images, spec in zip(datasets, args.data)]
    # In a folder of its own: clip_benchmark's `build` reads every top-level *.json as a result file.
    atomic_write_json(out_dir / CONFIG_DIR / "eval_config.json",
                      {**vars(args), "func": None, "backbone_info": backbone.describe()})
    records = []
    for spec, images, dataset_classifiers in zip(args.data, datasets, classifiers):
        name = images.name
        cache = Path(args.feature_cache) / name if args.feature_cache else None
        feats = cached_image_features(cache, backbone, ImageDataset(images, backbone.eval_transform()),
                                      batch_size=args.batch_size, num_workers=args.num_workers,
                                      precision=args.precision, desc=f"{name} features")
        if all(re.fullmatch(r"n\d{8}", c) for c in images.classnames):  # "a photo of a n01440764." scores nothing
            print(f"note: {name}: the class names are WordNet ids (e.g. {images.classnames[0]!r}): give --names "
                  "(CoOp's imagenet/classnames.txt, or imagenet21k-p)")
        names_file = write_classnames(out_dir / f"{name}__classnames.txt", images.classnames)
        vocabulary = classnames_record(images.classnames, _names_source(spec, args.names), names_file.name)
        for (label, kwargs), classifier in zip(runs, dataset_classifiers):
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
    md_path, _ = write_tables(out_dir, records)
    print()
    print(md_path.read_text())
    return 0


def cmd_benchmark(args: argparse.Namespace) -> int:
    from pomp.backbones import load_backbone
    from pomp.evaluate import CONFIG_DIR
    from pomp.interop import load_any
    from pomp.io import atomic_write_json, check_writable_dir
    from pomp.suites import run_benchmark, suite_datasets

    if not args.prompt and not args.baseline:
        raise ValueError("give --prompt and/or --baseline single|ensemble|dataset")
    datasets = suite_datasets(args.suite or ["all"], args.datasets.split(",") if args.datasets else None)
    if not datasets:
        raise ValueError("no dataset selected: --datasets names none of the chosen suites' datasets")
    prompts = [(p, load_any(p)) for p in args.prompt]  # a refused prompt leaves no output folder behind
    out_dir = check_writable_dir(args.out_dir)
    cache = Path(args.feature_cache) if args.feature_cache else Path(args.out_dir).resolve().parent / "feature_cache"
    backbone = load_backbone(args.backbone, args.pretrained, device=args.device)
    device = backbone.device
    names = [Path(p).name for p, _ in prompts]
    classifiers = []
    for (path, prompt), name in zip(prompts, names):
        prompt.check_compatible(backbone)
        classifiers.append(("prompt:" + (name if names.count(name) == 1 else path), dict(prompt=prompt.to(device))))
    classifiers += [(f"baseline:{b}", dict(baseline=b)) for b in dict.fromkeys(args.baseline)]
    atomic_write_json(out_dir / CONFIG_DIR / "benchmark_config.json",
                      {**vars(args), "func": None, "datasets_selected": datasets, "feature_cache_root": str(cache),
                       "backbone_info": backbone.describe()})
    run = run_benchmark(args.data_root, datasets, backbone, classifiers, out_dir, cache, batch_size=args.batch_size,
                        num_workers=args.num_workers, precision=args.precision, progress=args.progress)
    if not run.records:
        raise FileNotFoundError(f"{args.data_root}: none of the {len(datasets)} selected datasets could be scored")
    print()
    print(run.tables[0].read_text())
    return 1 if run.failed else 0


def cmd_embed(args: argparse.Namespace) -> int:
    from pomp.backbones import load_backbone
    from pomp.data.names import SINGLE_TEMPLATE, read_class_list
    from pomp.export import write_class_embeddings
    from pomp.interop import load_any
    from pomp.io import check_writable_dir

    refuse_unused([(args.prompt is not None and args.template is not None,
                    "--template and --prompt: give one (the prompt replaces the template)"),
                   (args.template is not None and "{}" not in args.template,
                    f"--template must hold {{}} where the class name goes, got {args.template!r}")])
    classnames = read_class_list(args.classes)
    prompt = load_any(args.prompt) if args.prompt else None
    check_writable_dir(args.out_dir)
    backbone = load_backbone(args.backbone, args.pretrained, device=args.device)
    paths = write_class_embeddings(args.out_dir, backbone, classnames, prompt=prompt,
                                   template=(args.template or SINGLE_TEMPLATE) if prompt is None else None,
                                   config={**vars(args), "func": None}, source=args.classes)
    for p in paths:
        print(p)
    return 0


def cmd_info(args: argparse.Namespace) -> int:
    from pomp.interop import load_any

    print(json.dumps(load_any(args.prompt).describe(), indent=2))
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from pomp.backbones import load_backbone

    if args.name in ("minilm-efficientnet-lite0", "default") or args.name.startswith("hf:"):
        backbone = load_backbone(args.name)
    else:
        from pomp.backbones.open_clip import load_open_clip_structure

        backbone = load_open_clip_structure(args.name)  # structure and tokenizer only: no weights are built
    print(json.dumps(backbone.resolved(args.n_ctx), indent=2))
    return 0


def cmd_convert(args: argparse.Namespace) -> int:
    from pomp.interop import convert_prompt

    out = convert_prompt(args.src, args.dst, backbone=args.backbone, epoch=args.epoch, fmt=args.format,
                         dtype=args.dtype)
    print(out)
    return 0


def add_parsers(sub) -> None:
    """Register `eval`, `benchmark`, `embed`, `info`, `backbones` and `convert` on the `pomp` sub-command parser."""
    p = sub.add_parser("eval", help="zero-shot classification with a prompt and/or hand-crafted baselines",
                       description="Zero-shot top-1/top-5/mean-per-class recall on one or more datasets; writes "
                                   "one clip_benchmark-style JSON per dataset and prompt, and results.md/.csv.")
    p.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    p.add_argument("--pretrained", default=None, help=PRETRAINED_HELP)
    p.add_argument("--prompt", default=None, help="a pomp prompt (.safetensors/.json/dir) or an official .pth.tar")
    p.add_argument("--baseline", action="append", default=[], choices=["single", "ensemble", "dataset"],
                   help="hand-crafted baseline: 'single' = \"a photo of a {}.\", 'ensemble' = CLIP's 80 templates, "
                        "'dataset' = CLIP's template for the dataset as CoOp uses it (known from a CoOp split file's "
                        "name, e.g. split_zhou_OxfordPets.json; else \"a photo of a {}.\") (repeatable)")
    p.add_argument("--data", action="append", required=True,
                   help="a class-folder root, or a CoOp-format split JSON (repeatable)")
    p.add_argument("--split", default="test", help="split to read from split JSON files")
    p.add_argument("--image-root", default=None, help="image root for split JSON files (default: their folder)")
    p.add_argument("--names", default=None, help="names file for class-folder data")
    p.add_argument("--out-dir", default="runs/eval", help="where result files go")
    p.add_argument("--feature-cache", default=None, help="cache image features here (reused by later prompts)")
    p.add_argument("--batch-size", type=int_at_least(1), default=64)
    p.add_argument("--num-workers", type=int_at_least(0), default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="autocast precision of the image tower on CUDA (CPU runs fp32)")
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("benchmark", help="the paper's zero-shot suites: cross-dataset, domain generalization, IN-21K",
                       description="Score prompts and/or baselines on every dataset of the chosen suites found under "
                                   "--data-root (CoOp's DATASETS.md layout; see pomp/data/suite_layouts.py). Missing "
                                   "datasets are skipped with one line. Writes one clip_benchmark-style JSON per "
                                   "dataset and prompt, and benchmark.md/.csv beside the paper's numbers. Image "
                                   "features are cached per backbone, so another prompt costs only the text side.")
    p.add_argument("--suite", action="append", choices=["cross-dataset", "domain-generalization", "imagenet21k", "all"],
                   help="suite to run (repeatable; default: all)")
    p.add_argument("--data-root", required=True, help="folder holding the datasets (imagenet/, caltech-101/, ...)")
    p.add_argument("--datasets", default=None, help="only these dataset keys, comma-separated (e.g. dtd,eurosat)")
    p.add_argument("--prompt", action="append", default=[], help="a pomp prompt or official .pth.tar (repeatable)")
    p.add_argument("--baseline", action="append", default=[], choices=["single", "ensemble", "dataset"],
                   help="hand-crafted baseline: 'single' (\"a photo of a {}.\"), 'ensemble' (CLIP's 80 templates) or "
                        "'dataset' (CLIP's per-dataset template as CoOp uses it: the paper's CLIP row) (repeatable)")
    p.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    p.add_argument("--pretrained", default=None, help=PRETRAINED_HELP)
    p.add_argument("--out-dir", default="runs/benchmark", help="where result files go")
    p.add_argument("--feature-cache", default=None,
                   help="image-feature cache root (default: OUT_DIR/../feature_cache); one folder per backbone")
    p.add_argument("--batch-size", type=int_at_least(1), default=64)
    p.add_argument("--num-workers", type=int_at_least(0), default=2)
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="bf16", choices=["bf16", "fp16", "fp32"],
                   help="autocast precision of the image tower on CUDA")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True, help="show progress bars")
    p.set_defaults(func=cmd_benchmark)

    p = sub.add_parser("embed", help="class embeddings for detectors/segmenters (Detic .npy, clip_benchmark .pt)",
                       description="Write OUT_DIR/class_embeddings.npy ([C, D] float32, L2-normalised; what "
                                   "Detic's zero-shot classifier loads), OUT_DIR/zeroshot_classifier.pt ([D, C], "
                                   "clip_benchmark --load_clfs) and OUT_DIR/classnames.txt.")
    p.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    p.add_argument("--pretrained", default=None, help=PRETRAINED_HELP)
    p.add_argument("--prompt", default=None, help="learned prompt; without it, --template is used")
    p.add_argument("--template", default=None, help="hand-crafted template when no --prompt "
                                                    "(default: 'a photo of a {}.')")
    p.add_argument("--classes", required=True, help="vocabulary: one class name per line, in class-id order (or a "
                                                    "names file); '#' lines are comments; lemma lists give their "
                                                    "first lemma")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--device", default="cpu")
    p.set_defaults(func=cmd_embed)

    p = sub.add_parser("info", help="show a prompt's shape and metadata")
    p.add_argument("prompt", help="a pomp prompt or an official .pth.tar checkpoint")
    p.set_defaults(func=cmd_info)

    p = sub.add_parser("backbones", help="what pomp resolves for a model: prompt layout, pooling, widths, dense path",
                       description="Print what pomp learned from a model and its tokenizer: where the context "
                                   "vectors go (tokens before them, positions), how the text feature is pooled, "
                                   "causal or not, whether cutting sequences is exact, text and joint widths, the "
                                   "dense feature path. open_clip models are built on the meta device (no weights).")
    p.add_argument("name", help="open_clip model name or model-config JSON, hf:<folder>, or minilm-efficientnet-lite0")
    p.add_argument("--n-ctx", type=int, default=4, help="number of context vectors to lay out")
    p.set_defaults(func=cmd_backbones)

    p = sub.add_parser("convert", help="convert prompts: official Dassl .pth.tar <-> pomp safetensors+JSON",
                       description="SRC .pth.tar -> DST .safetensors imports an official POMP/CoOp checkpoint; "
                                   "SRC pomp prompt -> DST .pth.tar (or model.pth.tar-N) exports the official format.")
    p.add_argument("src")
    p.add_argument("dst")
    p.add_argument("--backbone", default=None, help="record this backbone name when importing")
    p.add_argument("--epoch", type=int_at_least(0), default=None,
                   help="epoch written into an exported checkpoint (default: the prompt's own, from its metadata)")
    p.add_argument("--dtype", choices=["fp16", "fp32"], default=None,
                   help="dtype of the exported ctx (default: fp16 for official, as official checkpoints hold and "
                        "Detic's fp16 dump tool needs; fp32 for zsseg)")
    p.add_argument("--format", choices=["auto", "pomp", "official", "zsseg"], default="auto",
                   help="output format: official = Dassl .pth.tar (also ZSSeg PROMPT_LEARNER 'pomp'); zsseg = "
                        "detectron2 {'model': {'clip_adapter.prompt_learner.ctx': ...}} (ZSSeg 'pomp_tuned'); "
                        "auto = official for a .pth name, else pomp")
    p.set_defaults(func=cmd_convert)
