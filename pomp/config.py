"""Every `pomp` command's options, each defined once: dataclass fields that carry their default and their help
together (PEFT's style, `field(default=..., metadata={"help": ...})`, written here through `option`).

Option groups (`BackboneOptions`, `LoaderOptions`, `PromptOrBaselineOptions`, `EvalDataOptions`, `OutputOptions`...)
are shared by the commands that take them; each command has one config dataclass composed of its groups
(`PretrainConfig`, `EvalConfig`, `SegmentConfig`...), whose fields stay flat (`cfg.backbone`), as the files a run
writes record them. `pomp.cli` generates every parser from these fields: the flag is the field's name with dashes,
its type, choices and repetition come from the field's metadata (never guessed from the annotation).
`Options.verify` refuses, with one `ValueError` naming the flag, any value no run can use, before a command
loads or writes anything.

This module imports no torch (nor any other pomp module): `pomp --help` stays light. The choices below are the
library's own constants, repeated here for that reason; tests/test_config.py pins each equal to the library's.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

# --- choices (the library's own constants; tests/test_config.py pins them equal) -------------------------------
PRECISIONS = ("bf16", "fp16", "fp32")  # pomp.data.features.autocast_for
BASELINES = ("single", "ensemble", "dataset")  # pomp.evaluate.BASELINES
DENSE_BASELINES = ("single", "ensemble")  # a dense run knows no dataset, so no CoOp template
SUITES = ("cross-dataset", "domain-generalization", "imagenet21k", "all")  # pomp.suites.SUITE_CHOICES
REGION_METHODS = ("roi", "crop")  # pomp.dense.regions.METHODS
CONVERT_FORMATS = ("auto", "pomp", "official", "zsseg")  # pomp.interop.CONVERT_FORMATS
CTX_DTYPES = ("fp16", "fp32")  # pomp.interop.DTYPES
CONFIG_DIR = "config"  # pomp.evaluate.CONFIG_DIR
DEVICE_PATTERN = r"auto|cpu|cuda(:\d+)?"
SEED_LIMIT = 2**32  # numpy's and torch's seeds
# What `--resume` may change when named in --allow-change (the rest: pomp.train.RESUME_FREE / RESUME_BY_CONTENT)
RESUME_WITH_PERMISSION = frozenset({"epochs", "device"})

BACKBONE_HELP = ("open_clip model name (ViT-B-16, ViT-B-16-quickgelu...) or model-config JSON; hf:<folder> for a "
                 "transformers CLIP folder (save_pretrained); minilm-efficientnet-lite0 (alias default) for the "
                 "offline default")
NAMES_HELP = ("names file mapping folder -> class name ('folder<TAB>name' lines), or 'imagenet21k-p' for timm's "
              "ImageNet-21K-P winter-21 synsets and lemmas")
PROMPT_HELP = "a pomp prompt (.safetensors/.json/dir) or an official .pth.tar"


def option(default: Any = MISSING, *, help: str, type: Callable = str, choices: Sequence | None = None,
           repeatable: bool = False, positional: bool = False, minimum: float | None = None,
           above: float | None = None, below: float | None = None, maximum: float | None = None,
           ignored_with: str | None = None) -> Any:
    """A config field that is also a command-line option (`--field-name`, or a positional argument).

    `type`: how the command line's text is parsed (`bool` makes `--x/--no-x`); `choices`: the values allowed;
    `repeatable`: the option may be given several times (a list); no `default`: the option is required.
    Bounds, checked by `Options.verify`: `minimum`/`maximum` inclusive, `above`/`below` exclusive; a float must
    also be finite. `ignored_with`: the bounds are not checked when that other field is set.
    """
    metadata = {"help": help, "type": type, "choices": tuple(choices) if choices else None, "repeatable": repeatable,
                "positional": positional, "minimum": minimum, "above": above, "below": below, "maximum": maximum,
                "ignored_with": ignored_with}
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata=metadata)
    return field(default=default, metadata=metadata)


def same_as(group: type, name: str, **changes) -> Any:
    """Option `name` of `group` again, with `changes` (another default, a longer help...): for a command whose
    default differs from the group's, so that what the option is stays defined once."""
    base = next(f for f in fields(group) if f.name == name)
    return option(changes.pop("default", default_of(base)), **{**base.metadata, **changes})


def flag(name: str) -> str:
    """The command-line spelling of field `name`: `--n-ctx` for `n_ctx`."""
    return "--" + name.replace("_", "-")


def default_of(f: dataclasses.Field) -> Any:
    """Field `f`'s default (a fresh list for a list); `MISSING` for a required option."""
    if f.default_factory is not MISSING:
        return f.default_factory()
    return MISSING if f.default is MISSING else f.default


def is_option(f: dataclasses.Field) -> bool:
    """Whether field `f` is a command-line option (`extra` and other plain fields are not)."""
    return "help" in f.metadata


def help_text(f: dataclasses.Field) -> str:
    """The `--help` line of option `f`: its help, then its default when it has one worth stating."""
    default = default_of(f)
    if f.metadata["positional"] or default is MISSING or default is None or default == [] or default == "":
        return f.metadata["help"]
    return f"{f.metadata['help']} (default: {default})"


def _number_text(value: float) -> str:
    return "2**32" if value == SEED_LIMIT else f"{value:g}"


def _words(values: Sequence) -> str:
    values = [str(v) for v in values]
    return values[0] if len(values) == 1 else ", ".join(values[:-1]) + " or " + values[-1]


def check_number(name: str, value: Any, meta: dict) -> None:
    """Refuse `value` of option `name` outside the bounds of its metadata (`option`): one ValueError."""
    bounds = {k: meta.get(k) for k in ("minimum", "above", "below", "maximum")}
    if meta["type"] is int:
        if not isinstance(value, int) or isinstance(value, bool) or (bounds["minimum"] is not None
                                                                     and value < bounds["minimum"]):
            raise ValueError(f"{flag(name)} must be an integer >= {_number_text(bounds['minimum'] or 0)}, "
                             f"got {value!r}")
        if bounds["below"] is not None and value >= bounds["below"]:
            raise ValueError(f"{flag(name)} must be < {_number_text(bounds['below'])}, got {value}")
        return
    finite = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    checks = [(bounds["minimum"], ">=", lambda v, b: v >= b), (bounds["above"], ">", lambda v, b: v > b),
              (bounds["below"], "<", lambda v, b: v < b), (bounds["maximum"], "<=", lambda v, b: v <= b)]
    if not finite or not all(ok(value, b) for b, _, ok in checks if b is not None):
        bound = " and".join(f" {sign} {_number_text(b)}" for b, sign, _ in checks if b is not None)
        raise ValueError(f"{flag(name)} must be a finite number{bound}, got {value!r}")


@dataclass(kw_only=True)
class Options:
    """Base of every option group and command config. A group may define `check(self)`: its rules across options
    (e.g. "give --prompt and/or --baseline"); `verify` runs them all. A command lists its groups last-shown
    first: a dataclass orders the fields of its bases from the last base to the first."""

    def __post_init__(self) -> None:
        """A path given as a `pathlib.Path` (natural in Python) is kept as the text the command line gives, so that
        every file a run writes can record it."""
        for f in fields(self):
            if is_option(f) and f.metadata["type"] is str:
                value = getattr(self, f.name)
                if isinstance(value, os.PathLike):
                    setattr(self, f.name, os.fspath(value))
                elif isinstance(value, (list, tuple)) and any(isinstance(v, os.PathLike) for v in value):
                    setattr(self, f.name, [os.fspath(v) if isinstance(v, os.PathLike) else v for v in value])

    def verify(self) -> None:
        """Refuse values no run can use, before anything is loaded or written: a `ValueError` naming the option.

        Bounds and choices of every field (its metadata), then `check` of the command, then of each group."""
        for f in fields(self):
            if is_option(f):
                _check_field(self, f)
        for cls in type(self).__mro__:
            if "check" in vars(cls):
                vars(cls)["check"](self)


def _check_field(config: Options, f: dataclasses.Field) -> None:
    meta, value = f.metadata, getattr(config, f.name)
    if value is None and default_of(f) is None:  # an optional option not given
        return
    if meta["repeatable"]:  # the command line gives a list; a config made in Python must too
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{flag(f.name)} takes a list of values (the option repeated), got {value!r}")
        if not value and default_of(f) is MISSING:
            raise ValueError(f"{flag(f.name)} is required: give at least one value")
    for item in (value if meta["repeatable"] else [value]):
        _check_kind(f.name, item, meta)
        if meta["choices"] and item not in meta["choices"]:
            raise ValueError(f"{flag(f.name)} must be {_words(meta['choices'])}, got {item!r}")
    ignored = meta["ignored_with"] and getattr(config, meta["ignored_with"], None)
    if not ignored and meta["type"] in (int, float):
        for item in (value if meta["repeatable"] else [value]):
            check_number(f.name, item, meta)


def _check_kind(name: str, value: Any, meta: dict) -> None:
    """Refuse a value of another kind than the command line gives (a config made in Python): `--augment 'no'`
    would otherwise read as true, `--backbone None` fail deep in a run."""
    if meta["type"] is bool and not isinstance(value, bool):
        raise ValueError(f"{flag(name)} must be True or False, got {value!r}")
    if meta["type"] is str and not isinstance(value, str):
        raise ValueError(f"{flag(name)} must be a string, got {value!r}")


def _seed(help: str) -> Any:
    """A seed: an integer in [0, 2**32)."""
    return option(0, help=help, type=int, minimum=0, below=SEED_LIMIT)


# --- shared option groups ---------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class BackboneOptions(Options):
    """The frozen model: which, with what weights, on which device."""

    backbone: str = option(help=BACKBONE_HELP)
    pretrained: str | None = option(None, help="open_clip pretrained tag (e.g. openai; downloads, needs network) or "
                                                "a local weights file (OpenAI's original .pt, an open_clip state "
                                                "dict...)")
    device: str = option("auto", help="auto (CUDA when available, else CPU) | cpu | cuda | cuda:N (under torchrun "
                                      "each process takes its local GPU)")

    def check(self) -> None:
        if not isinstance(self.device, str) or not re.fullmatch(DEVICE_PATTERN, self.device):
            raise ValueError(f"--device must be auto, cpu, cuda or cuda:N, got {self.device!r}")
        if self.device.startswith("cuda"):
            import torch  # only here: the help and the other checks stay light

            if not torch.cuda.is_available():
                raise ValueError(f"--device {self.device}: no CUDA device is available")


@dataclass(kw_only=True)
class ProgressOptions(Options):
    progress: bool = option(True, type=bool, help="show progress bars (on stderr)")


@dataclass(kw_only=True)
class LoaderOptions(ProgressOptions):
    """How images go through the image tower: batches, loader processes, autocast precision."""

    batch_size: int = option(64, type=int, minimum=1, help="images per batch of the image tower")
    num_workers: int = option(4, type=int, minimum=0,
                              help="data-loader worker processes (0: load in the main process)")
    precision: str = option("bf16", choices=PRECISIONS, help="autocast precision on CUDA (CPU runs fp32)")


@dataclass(kw_only=True)
class PromptOrBaselineOptions(Options):
    """What is scored: a learned prompt and/or hand-crafted baselines, side by side on the same data
    (`pomp.classifier_runs`)."""

    prompt: str | None = option(None, help=PROMPT_HELP)
    baseline: list[str] = option([], repeatable=True, choices=BASELINES,
                                 help="hand-crafted baseline: 'single' = \"a photo of a {}.\", 'ensemble' = CLIP's 80 "
                                      "templates, 'dataset' = CLIP's template for the dataset as CoOp uses it (the "
                                      "paper's CLIP row; known from a CoOp split file's name, e.g. "
                                      "split_zhou_OxfordPets.json, or a suite's dataset; else \"a photo of a {}.\") "
                                      "(repeatable)")

    def check(self) -> None:
        if not self.prompt and not self.baseline:
            choices = next(f for f in fields(self) if f.name == "baseline").metadata["choices"]
            raise ValueError(f"give --prompt and/or --baseline {'|'.join(choices)}")

    def prompt_paths(self) -> list[str]:
        """The prompts to score (none, one or, where --prompt repeats, several)."""
        if isinstance(self.prompt, list):
            return list(self.prompt)
        return [self.prompt] if self.prompt else []


@dataclass(kw_only=True)
class ImageSourceOptions(Options):
    """Options of the images' own files: class names of folders, the root of split files' paths."""

    names: str | None = option(None, help=NAMES_HELP + "; for class-folder data")
    image_root: str | None = option(None, help="images of split JSON files are relative to this (default: the "
                                               "split file's folder)")


@dataclass(kw_only=True)
class EvalDataOptions(ImageSourceOptions):
    """Labelled test images: class folders or CoOp-format split files."""

    data: list[str] = option(repeatable=True, help="a class-folder root, or a CoOp-format split JSON (repeatable)")
    split: str = option("test", help="split to read from split JSON files")

    def training_sources(self) -> tuple[str | None, str | None]:
        """(split file, class-folder root) of training images the same --image-root / --names apply to."""
        return None, None

    def check(self) -> None:
        split_file, train_root = self.training_sources()
        json_files = [s for s in self.data if Path(s).suffix == ".json"]
        if self.image_root and not json_files and not split_file:
            raise ValueError("--image-root applies to split JSON files; none is given")
        if self.names and len(json_files) == len(self.data) and not train_root:
            raise ValueError("--names applies to class folders; none is given")


@dataclass(kw_only=True)
class TrainingImagesOptions(ImageSourceOptions):
    """Training images as files: class folders split k-shot, or a CoOp-format split file."""

    train_root: str | None = option(None, help="class-folder image root (one sub-folder per class)")
    split_file: str | None = option(None, help="a CoOp-format split JSON with 'train' (and 'val') instead of "
                                               "--train-root")
    shots: int = option(16, type=int, minimum=1, help="k-shot: training images per class of --train-root")
    split_seed: int = _seed("seed of the k-shot split")


@dataclass(kw_only=True)
class AugmentOptions(Options):
    """The training views of an image (pretrain's recipe; `pomp features` caches the same)."""

    views: int = option(4, type=int, minimum=1, help="augmented views per image in a batch")
    augment: bool = option(True, type=bool, help="RandAugment(2 ops, p=0.6) after random resized crop and flip")
    seed: int = _seed("seed of context init, data order, augmentation and negatives (rank r uses seed + r)")


@dataclass(kw_only=True)
class OutputOptions(Options):
    out_dir: str = option(help="where the outputs go (created if needed)")


@dataclass(kw_only=True)
class FeatureCacheOptions(Options):
    feature_cache: str | None = option(None, help="cache image features in this folder (reused by later runs "
                                                  "with the same backbone and images)")


@dataclass(kw_only=True)
class DenseOptions(Options):
    """The dense path of segmentation and region classification."""

    unseen: str | None = option(None, help="file of unseen class names (one a line): adds seen/unseen metrics")
    size: int | None = option(None, type=int, minimum=1,
                              help="side of the square input of the dense path (default: the backbone's input size; "
                                   "timm ViT and Swin towers take only their own)")


# --- pretrain -----------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class PretrainConfig(FeatureCacheOptions, LoaderOptions, AugmentOptions, TrainingImagesOptions, OutputOptions,
                     BackboneOptions):
    """Everything a pre-training run depends on. Defaults are the paper's recipe (method.md §4)."""

    backbone: str = same_as(BackboneOptions, "backbone", default="ViT-B-16")
    out_dir: str = same_as(OutputOptions, "out_dir", default="runs/pretrain",
                           help="where the prompt, checkpoint, split, config and logs go")
    names: str | None = same_as(ImageSourceOptions, "names", help=NAMES_HELP + "; with --train-root")
    image_root: str | None = same_as(ImageSourceOptions, "image_root", help="images of --split-file are relative "
                                                                            "to this (default: the split file's folder)")
    shots: int = same_as(TrainingImagesOptions, "shots", help="k-shot: training images per class (split saved as "
                                                              "OUT_DIR/split.json, reused on resume)")
    val_per_class: int = option(50, type=int, minimum=0, help="validation images per class, taken after the shots")
    # or webdataset shards (pomp.data.shards): brace pattern(s) + class list (shards.json or classes.txt)
    train_shards: str | None = option(None, help="webdataset shards instead of image files: a brace pattern such as "
                                                 "'shards/train-{000000..000167}.tar' (local paths or URLs; see "
                                                 "`pomp data shard`)")
    train_classes: str | None = option(None, help="class list of the shards: their shards.json (names + per-shard "
                                                  "counts) or a classes.txt")
    val_shards: str | None = option(None, help="validation shards (brace pattern), evaluated after each epoch")
    # prompt
    n_ctx: int = option(4, type=int, minimum=1, ignored_with="ctx_init", help="number of learned context vectors")
    ctx_init: str | None = option(None, help="initialise the context from these words (e.g. 'a photo of a'); n_ctx "
                                             "follows the words")
    # local contrast / local correction
    classes_per_step: int = option(1000, type=int, minimum=0, help="K: classes contrasted per step (K-1 sampled "
                                                                   "negatives + own class); 0 = all classes")
    local_correction: bool = option(True, type=bool, help="add m_i = log10(N-1) - log10(n_i) to valid negative "
                                                          "logits")
    margin: float | None = option(None, type=float, help="a fixed margin added to negative logits instead of m_i")
    logit_scale: float | None = option(None, type=float, above=0.0,
                                       help="temperature (default: the backbone's own, 100 for CLIP)")
    # optimisation
    epochs: int = option(5, type=int, minimum=1, help="training epochs")
    batch_size: int = same_as(LoaderOptions, "batch_size", default=32,
                              help="images per step per process (each gives --views augmented views)")
    lr: float = option(0.002, type=float, above=0.0, help="peak learning rate (SGD)")
    momentum: float = option(0.9, type=float, minimum=0.0, below=1.0, help="SGD momentum")
    weight_decay: float = option(5e-4, type=float, minimum=0.0, help="SGD weight decay")
    warmup_epochs: int = option(1, type=int, minimum=0, help="epochs at the constant warm-up learning rate before "
                                                             "the cosine schedule")
    warmup_lr: float = option(1e-5, type=float, minimum=0.0, help="warm-up learning rate")
    # execution
    text_chunk_size: int = option(2048, type=int, minimum=1, help="most class prompts encoded with graph at once; "
                                                                  "above it, gradient caching")
    length_buckets: int = option(1, type=int, minimum=1,
                                 help="encode a step's classes in this many length-sorted groups, each cut to its own "
                                      "longest sequence (less padding; same features)")
    compile: bool = option(False, type=bool, help="torch.compile the fast causal text blocks (first steps pay the "
                                                  "compilation)")
    feature_cache: str | None = same_as(FeatureCacheOptions, "feature_cache", help="cache folder for image features "
                                        "(views computed once, reused across epochs)")
    validate: bool = option(True, type=bool, help="evaluate on the val split after each epoch and keep the best "
                                                  "prompt")
    checkpoint_every: int = option(200, type=int, minimum=1, help="steps between checkpoints (also at each epoch "
                                                                  "end)")
    max_steps: int | None = option(None, type=int, minimum=0, help="stop after this many steps in total (a later "
                                                                   "--resume continues)")
    max_bad_steps: int = option(10, type=int, minimum=1, help="stop after this many consecutive non-finite steps")
    log_every: int = option(10, type=int, minimum=1, help="steps between log.jsonl records")
    resume: bool = option(False, type=bool, help="continue the run in --out-dir from its checkpoint (the same run: "
                                                 "other settings are refused, listed; with no checkpoint there, a "
                                                 "new run starts)")
    allow_change: str = option("", help="on --resume, also accept a change of these settings (comma-separated: "
                                        "epochs, device); how a run executes (workers, progress, logging, checkpoint "
                                        "cadence, --max-steps...) may always change. Changes are recorded in "
                                        "config.json and the checkpoint ('resumes')")
    extra: dict = field(default_factory=dict)  # not an option: free-form notes of a run made from Python

    def check(self) -> None:
        if self.classes_per_step == 1:
            raise ValueError("--classes-per-step 1 leaves no negative class to contrast with (the loss is 0, nothing "
                             "is learned): give 0 (all classes) or at least 2")
        if self.ctx_init is not None and not self.ctx_init.strip():
            raise ValueError(f"--ctx-init must hold words to start the context from (e.g. 'a photo of a'), "
                             f"got {self.ctx_init!r}")
        sources = [flag(n) for n in ("train_root", "split_file", "train_shards") if getattr(self, n)]
        if not sources:
            raise ValueError("give the training data: --train-root (class folders), --split-file or --train-shards")
        if len(sources) > 1:
            raise ValueError(f"{' and '.join(sources)}: give one source of training data, not {len(sources)}")
        for name, needs in (("names", "train_root"), ("image_root", "split_file"), ("train_classes", "train_shards"),
                            ("val_shards", "train_shards")):
            if getattr(self, name) and not getattr(self, needs):
                raise ValueError(f"{flag(name)} only applies with {flag(needs)}, which is not given")
        if self.train_shards and self.feature_cache:
            raise ValueError("--feature-cache needs image files (--train-root/--split-file), not --train-shards")
        unknown = sorted({c.strip() for c in self.allow_change.split(",") if c.strip()} - RESUME_WITH_PERMISSION)
        if unknown:
            raise ValueError(f"--allow-change {unknown[0]!r}: only {', '.join(sorted(RESUME_WITH_PERMISSION))} may "
                             f"be changed on --resume (settings of how a run executes always may; see docs/reliability.md)")

    def recipe(self) -> dict:
        """The settings of the paper's recipe, as a prompt's metadata records them."""
        keys = ["n_ctx", "ctx_init", "classes_per_step", "local_correction", "margin", "epochs", "batch_size",
                "views", "lr", "momentum", "weight_decay", "warmup_epochs", "warmup_lr", "augment", "shots", "seed"]
        recipe = {k: getattr(self, k) for k in keys}
        if not self.train_root:  # a split file or shards fix the shots, not --shots
            recipe["shots"] = None
        return recipe


# --- eval, benchmark, embed, info, backbones, convert ---------------------------------------------------------
@dataclass(kw_only=True)
class EvalConfig(LoaderOptions, FeatureCacheOptions, OutputOptions, EvalDataOptions, PromptOrBaselineOptions,
                 BackboneOptions):
    out_dir: str = same_as(OutputOptions, "out_dir", default="runs/eval", help="where result files go")


@dataclass(kw_only=True)
class BenchmarkConfig(LoaderOptions, FeatureCacheOptions, OutputOptions, PromptOrBaselineOptions, BackboneOptions):
    suite: list[str] | None = option(None, repeatable=True, choices=SUITES,
                                     help="suite to run (repeatable; default: all)")
    data_root: str = option(help="folder holding the datasets (imagenet/, caltech-101/, ...)")
    datasets: str | None = option(None, help="only these dataset keys, comma-separated (e.g. dtd,eurosat)")
    prompt: list[str] = same_as(PromptOrBaselineOptions, "prompt", default=[], repeatable=True,
                                help=PROMPT_HELP + " (repeatable)")
    out_dir: str = same_as(OutputOptions, "out_dir", default="runs/benchmark", help="where result files go")
    feature_cache: str | None = same_as(FeatureCacheOptions, "feature_cache", help="image-feature cache root "
                                        "(default: OUT_DIR/../feature_cache); one folder per backbone")


@dataclass(kw_only=True)
class EmbedConfig(OutputOptions, BackboneOptions):
    prompt: str | None = same_as(PromptOrBaselineOptions, "prompt",
                                 help=PROMPT_HELP + "; without it, --template is used")
    template: str | None = option(None, help="hand-crafted template when no --prompt (default: 'a photo of a {}.')")
    classes: str = option(help="vocabulary: one class name per line, in class-id order (or a names file); '#' lines "
                               "are comments; lemma lists give their first lemma")

    def check(self) -> None:
        if self.prompt is not None and self.template is not None:
            raise ValueError("--template and --prompt: give one (the prompt replaces the template)")
        if self.template is not None and "{}" not in self.template:
            raise ValueError(f"--template must hold {{}} where the class name goes, got {self.template!r}")


@dataclass(kw_only=True)
class InfoConfig(Options):
    prompt: str = option(positional=True, help="a pomp prompt or an official .pth.tar checkpoint")


@dataclass(kw_only=True)
class BackbonesConfig(Options):
    name: str = option(positional=True, help="open_clip model name or model-config JSON, hf:<folder>, or "
                                             "minilm-efficientnet-lite0")
    n_ctx: int = same_as(PretrainConfig, "n_ctx", help="number of context vectors to lay out")


@dataclass(kw_only=True)
class ConvertConfig(Options):
    src: str = option(positional=True, help="the prompt to convert: an official .pth.tar, or a pomp prompt")
    dst: str = option(positional=True, help="where the converted prompt goes")
    backbone: str | None = option(None, help="record this backbone name when importing")
    epoch: int | None = option(None, type=int, minimum=0, help="epoch written into an exported checkpoint (default: "
                                                               "the prompt's own, from its metadata)")
    dtype: str | None = option(None, choices=CTX_DTYPES,
                               help="dtype of the exported ctx (default: fp16 for official, as official checkpoints "
                                    "hold and Detic's fp16 dump tool needs; fp32 for zsseg)")
    format: str = option("auto", choices=CONVERT_FORMATS,
                         help="output format: official = Dassl .pth.tar (also ZSSeg PROMPT_LEARNER 'pomp'); zsseg = "
                              "detectron2 {'model': {'clip_adapter.prompt_learner.ctx': ...}} (ZSSeg 'pomp_tuned'); "
                              "auto = official for a .pth name, else pomp")


# --- data split / shard / check-names, features ---------------------------------------------------------------
@dataclass(kw_only=True)
class DataSplitConfig(Options):
    train_root: str = same_as(TrainingImagesOptions, "train_root", default=MISSING)
    names: str | None = same_as(ImageSourceOptions, "names", help=NAMES_HELP)
    shots: int = same_as(TrainingImagesOptions, "shots")
    val_per_class: int = same_as(PretrainConfig, "val_per_class")
    seed: int = same_as(TrainingImagesOptions, "split_seed", help="split seed (pretrain's --split-seed)")
    out: str = option(help="split JSON to write")
    force: bool = option(False, type=bool, help="replace an existing split file")


@dataclass(kw_only=True)
class DataShardConfig(ProgressOptions):
    split_file: str | None = option(None, help="CoOp-format split JSON: each split becomes a shard set")
    image_root: str | None = same_as(PretrainConfig, "image_root")
    splits: str | None = option(None, help="comma-separated splits of --split-file to write (default: all)")
    train_root: str | None = same_as(TrainingImagesOptions, "train_root",
                                     help="or: class folders, all images, written as --split-name")
    names: str | None = same_as(PretrainConfig, "names")
    split_name: str = option("train", help="shard name prefix with --train-root")
    out_dir: str = same_as(OutputOptions, "out_dir", help="where the shards, classes.txt and shards.json go")
    maxcount: int = option(1000, type=int, minimum=1, help="samples per shard")
    seed: int = _seed("seed of the sample shuffle before writing")

    def check(self) -> None:
        if bool(self.split_file) == bool(self.train_root):
            raise ValueError("give one of --split-file (CoOp-format split JSON) or --train-root (class folders)")
        for name, needs in (("names", "train_root"), ("image_root", "split_file"), ("splits", "split_file")):
            if getattr(self, name) and not getattr(self, needs):
                raise ValueError(f"{flag(name)} only applies with {flag(needs)}")


@dataclass(kw_only=True)
class CheckNamesConfig(OutputOptions):
    tree: str = option(help="path to imagenet21k_miil_tree.pth (winter-21)")
    names: str = same_as(ImageSourceOptions, "names", default="imagenet21k-p", help=NAMES_HELP)
    out_dir: str = same_as(OutputOptions, "out_dir", help="where names_check.json / names_check.tsv go")


@dataclass(kw_only=True)
class FeaturesConfig(LoaderOptions, AugmentOptions, TrainingImagesOptions, EvalDataOptions, OutputOptions,
                     BackboneOptions):
    out_dir: str = same_as(OutputOptions, "out_dir", help="the cache folder (give the same to pomp eval/pretrain)")
    data: list[str] = same_as(EvalDataOptions, "data", default=[],
                              help="evaluation data: class-folder root or split JSON (repeatable)")
    split_file: str | None = same_as(TrainingImagesOptions, "split_file",
                                     help="training: the split JSON given to pretrain ('train' split)")
    train_root: str | None = same_as(TrainingImagesOptions, "train_root",
                                     help="training: class folders, split k-shot like pretrain does")
    views: int = same_as(AugmentOptions, "views", help="augmented views per training image (pretrain's --views)")
    seed: int = same_as(AugmentOptions, "seed", help="pretrain's --seed (seeds the augmentation)")

    def training_sources(self) -> tuple[str | None, str | None]:
        return self.split_file, self.train_root

    def check(self) -> None:
        if not self.data and not (self.split_file or self.train_root):
            raise ValueError("give --data (evaluation caches) and/or --split-file/--train-root (training cache)")
        if self.split_file and self.train_root:
            raise ValueError("--split-file and --train-root: give one source of training images, not 2")


# --- segment, detect ------------------------------------------------------------------------------------------
@dataclass(kw_only=True)
class DenseRunConfig(ProgressOptions, OutputOptions, DenseOptions, PromptOrBaselineOptions, BackboneOptions):
    backbone: str = same_as(BackboneOptions, "backbone", help=BACKBONE_HELP + "; dense features need an open_clip "
                                                                              "ViT (MaskCLIP) or the offline default")
    baseline: list[str] = same_as(PromptOrBaselineOptions, "baseline", choices=DENSE_BASELINES,
                                  help="hand-crafted baseline: 'single' = \"a photo of a {}.\", 'ensemble' = CLIP's "
                                       "80 templates (repeatable)")


@dataclass(kw_only=True)
class SegmentConfig(DenseRunConfig):
    data: str = option(help="VOC-layout root")
    split: str = option("val", help="ImageSets/Segmentation/SPLIT.txt")
    classes: str | None = option(None, help="class list (default DATA/classes.txt)")
    bg_threshold: float | None = option(None, type=float, minimum=0.0, maximum=1.0,
                                        help="with a 'background' class: it does not compete; pixels whose best "
                                             "class probability is below this become background")
    overlays: int = option(8, type=int, minimum=0, help="comparison panels written per prompt (0: none)")
    save_predictions: bool = option(False, type=bool, help="write every predicted label map (palette PNG)")
    out_dir: str = same_as(OutputOptions, "out_dir", default="runs/segment")


@dataclass(kw_only=True)
class DetectConfig(DenseRunConfig):
    annotations: str = option(help="COCO ground truth; its categories are the vocabulary")
    images: str = option(help="folder the images' file_name values are relative to")
    boxes: str | None = option(None, help="COCO results file of boxes to classify (default: ground truth)")
    method: str = option("roi", choices=REGION_METHODS, help="region features")
    context: float = option(1.0, type=float, above=0.0, help="crop: enlarge each box by this factor")
    top_k: int = option(5, type=int, minimum=1, help="classes kept per box")
    out_dir: str = same_as(OutputOptions, "out_dir", default="runs/detect")


__all__ = [
    "BackboneOptions", "BackbonesConfig", "BenchmarkConfig", "CheckNamesConfig", "ConvertConfig", "DataShardConfig",
    "DataSplitConfig", "DetectConfig", "EmbedConfig", "EvalConfig", "FeaturesConfig", "InfoConfig", "LoaderOptions",
    "Options", "PretrainConfig", "PromptOrBaselineOptions", "SegmentConfig", "option", "same_as",
]
