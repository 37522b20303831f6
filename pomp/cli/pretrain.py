"""`pomp pretrain`: pre-train a prompt (single process, or under torchrun for DDP). Its options are the fields
of `pomp.train.PretrainConfig`, each with its help text here."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import time

from pomp.cli.common import BACKBONE_HELP, PRETRAINED_HELP, config_from_args

PRETRAIN_HELP = {
    "backbone": BACKBONE_HELP,
    "pretrained": PRETRAINED_HELP,
    "out_dir": "where the prompt, checkpoint, split, config and logs go",
    "train_root": "class-folder image root (one sub-folder per class)",
    "names": "names file mapping folder -> class name ('folder<TAB>name' lines), or 'imagenet21k-p' for "
             "timm's ImageNet-21K-P winter-21 synsets and lemmas",
    "split_file": "a CoOp-format split JSON with 'train' (and 'val') instead of --train-root",
    "image_root": "images of --split-file are relative to this (default: the split file's folder)",
    "shots": "k-shot: training images per class (split saved as OUT_DIR/split.json, reused on resume)",
    "val_per_class": "validation images per class, taken after the shots",
    "split_seed": "seed of the k-shot split",
    "train_shards": "webdataset shards instead of image files: a brace pattern such as "
                    "'shards/train-{000000..000167}.tar' (local paths or URLs; see `pomp data shard`)",
    "train_classes": "class list of the shards: their shards.json (names + per-shard counts) or a classes.txt",
    "val_shards": "validation shards (brace pattern), evaluated after each epoch",
    "n_ctx": "number of learned context vectors",
    "ctx_init": "initialise the context from these words (e.g. 'a photo of a'); n_ctx follows the words",
    "classes_per_step": "K: classes contrasted per step (K-1 sampled negatives + own class); 0 = all classes",
    "local_correction": "add m_i = log10(N-1) - log10(n_i) to valid negative logits",
    "margin": "a fixed margin added to negative logits instead of m_i",
    "logit_scale": "temperature (default: the backbone's own, 100 for CLIP)",
    "epochs": "training epochs",
    "batch_size": "images per step per process (each gives --views augmented views)",
    "views": "augmented views per image in a batch",
    "lr": "peak learning rate (SGD)",
    "momentum": "SGD momentum",
    "weight_decay": "SGD weight decay",
    "warmup_epochs": "epochs at the constant warm-up learning rate before the cosine schedule",
    "warmup_lr": "warm-up learning rate",
    "augment": "RandAugment(2 ops, p=0.6) after random resized crop and flip",
    "device": "auto | cpu | cuda (torchrun sets the local GPU)",
    "precision": "autocast precision on CUDA: bf16 | fp16 | fp32",
    "text_chunk_size": "most class prompts encoded with graph at once; above it, gradient caching",
    "length_buckets": "encode a step's classes in this many length-sorted groups, each cut to its own longest "
                      "sequence (less padding; same features)",
    "compile": "torch.compile the fast causal text blocks (first steps pay the compilation)",
    "feature_cache": "cache folder for image features (views computed once, reused across epochs)",
    "num_workers": "data-loader worker processes",
    "seed": "seed of context init, data order, augmentation and negatives (rank r uses seed + r)",
    "validate": "evaluate on the val split after each epoch and keep the best prompt",
    "checkpoint_every": "steps between checkpoints (also at each epoch end)",
    "max_steps": "stop after this many steps in total (a later --resume continues)",
    "max_bad_steps": "stop after this many consecutive non-finite steps",
    "log_every": "steps between log.jsonl records",
    "progress": "show progress bars",
    "resume": "continue the run in --out-dir from its checkpoint (the same run: other settings are refused, "
              "listed; with no checkpoint there, a new run starts)",
    "allow_change": "on --resume, also accept a change of these settings (comma-separated: epochs, device); "
                    "how a run executes (workers, progress, logging, checkpoint cadence, --max-steps...) may always "
                    "change. Changes are recorded in config.json and the checkpoint ('resumes')",
}


def _add_dataclass_flags(parser: argparse.ArgumentParser, cls, help_text: dict[str, str], skip=("extra",)) -> None:
    """One flag per field of dataclass `cls` (`--n-ctx` for `n_ctx`), its type read from the annotation."""
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        typ = f.type if isinstance(f.type, type) else str(f.type)
        text = help_text.get(f.name, "")
        if typ == "bool" or isinstance(default, bool):
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=default,
                                help=f"{text} (default: {default})")
            continue
        kind = int if "int" in str(typ) and "float" not in str(typ) else float if "float" in str(typ) else str
        parser.add_argument(flag, type=kind, default=default, help=f"{text} (default: {default})")


def cmd_pretrain(args: argparse.Namespace) -> int:
    from pomp.train import PretrainConfig, pretrain

    cfg = config_from_args(PretrainConfig, args)
    start = time.perf_counter()
    summary = pretrain(cfg)
    if int(os.environ.get("RANK", "0")) == 0:
        summary["wall_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(summary, indent=2))
    return 0


def add_parsers(sub) -> None:
    """Register `pretrain` on the `pomp` sub-command parser."""
    from pomp.train import PretrainConfig

    p = sub.add_parser("pretrain", help="pre-train a prompt (single process, or under torchrun for DDP)",
                       description="Pre-train a POMP prompt. Defaults are the paper's recipe (n_ctx 4, K 1000, "
                                   "SGD 0.002, 1 warm-up epoch then cosine, 32 images x 4 views, 5 epochs). "
                                   "Run under `torchrun --nproc_per_node N` for DDP.")
    _add_dataclass_flags(p, PretrainConfig, PRETRAIN_HELP)  # each help states its default
    p.set_defaults(func=cmd_pretrain)
