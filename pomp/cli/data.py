"""`pomp data split`, `pomp data shard` and `pomp features`: the steps run once before a large launch
(and `pomp data check-names`: pomp's ImageNet-21K-P names against MIIL's tree, which POMP names by).

    pomp data split --train-root IN21K-P/train --names imagenet21k-p --shots 16 --val-per-class 50 --out split.json
    pomp data shard --split-file split.json --image-root IN21K-P/train --out-dir shards/   (train and val shards)
    torchrun --nproc_per_node 8 -m pomp.cli features --backbone ViT-B-16 --pretrained openai \\
        --split-file split.json --image-root IN21K-P/train --views 4 --out-dir cache/      (cached-feature training)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from pomp.cli.common import (BACKBONE_HELP, PRETRAINED_HELP, int_at_least, load_eval_data, refuse_unused,
                             refuse_unused_data_options)

NAMES_HELP = "names file ('folder<TAB>name' lines), or 'imagenet21k-p' for timm's ImageNet-21K-P winter-21 synsets"


def cmd_data_split(args: argparse.Namespace) -> int:
    from pomp.data.folder import scan_class_folders
    from pomp.data.imagenet21k import resolve_names
    from pomp.data.splits import few_shot_split, write_split_file

    out = Path(args.out)
    if out.exists() and not args.force:
        raise FileExistsError(f"{out}: exists; a split is made once and reused (pass --force to replace it)")
    images = scan_class_folders(args.train_root, resolve_names(args.names))
    splits = few_shot_split(images, args.shots, args.val_per_class, args.seed)
    if args.val_per_class > 0 and "val" not in splits:
        raise ValueError(f"{args.train_root}: --val-per-class {args.val_per_class} leaves no validation image: no "
                         f"class holds more than --shots {args.shots} images; lower --shots or pass --val-per-class 0")
    write_split_file(out, splits)
    counts = {name: len(s) for name, s in splits.items()}
    print(json.dumps({"out": str(out), "classes": len(images.classnames), "images_scanned": len(images), **counts}))
    root = Path(args.train_root).resolve()
    hint = "" if out.resolve().parent == root else f" --image-root {args.train_root}"
    print(f"pretrain with: --split-file {out}{hint}   (or write shards: pomp data shard --split-file {out}{hint} ...)")
    return 0


def cmd_data_shard(args: argparse.Namespace) -> int:
    from pomp.data.folder import scan_class_folders
    from pomp.data.imagenet21k import resolve_names
    from pomp.data.shards import CLASSES, MANIFEST, write_shards
    from pomp.data.splits import read_split_file
    from pomp.io import read_json

    if bool(args.split_file) == bool(args.train_root):
        raise ValueError("give one of --split-file (CoOp-format split JSON) or --train-root (class folders)")
    refuse_unused([(bool(args.names) and not args.train_root, "--names only applies with --train-root"),
                   (bool(args.image_root) and not args.split_file, "--image-root only applies with --split-file"),
                   (bool(args.splits) and not args.split_file, "--splits only applies with --split-file")])
    if args.split_file:
        names = args.splits.split(",") if args.splits else list(read_json(args.split_file))
        sources = {name: read_split_file(args.split_file, name, args.image_root) for name in names}
    else:
        sources = {args.split_name: scan_class_folders(args.train_root, resolve_names(args.names))}
    out = Path(args.out_dir)
    flags = {"train": "--train-shards", "val": "--val-shards"}
    for name, images in sources.items():
        entry = write_shards(images, out, name, maxcount=args.maxcount, seed=args.seed, progress=args.progress)
        print(json.dumps({"split": name, "shards": len(entry["shards"]), "samples": entry["num_samples"],
                          "skipped": entry["skipped"]}))
        print(f"  {flags.get(name, '--' + name + '-shards')} '{out / entry['pattern']}'")
    print(f"  --train-classes {out / MANIFEST}   (class names also in {out / CLASSES})")
    return 0


def cmd_data_check_names(args: argparse.Namespace) -> int:
    from pomp.data.imagenet21k import resolve_names
    from pomp.data.miil_tree import compare_with_tree, differences_table, read_miil_tree, summary_line
    from pomp.io import atomic_write_json, atomic_write_text, check_writable_dir

    tree = read_miil_tree(args.tree)
    names = resolve_names(args.names)
    if not names:
        raise ValueError("--names: give a class list (e.g. imagenet21k-p) or a names file")
    report = {"tree": str(args.tree), "names": args.names, **compare_with_tree(names, tree)}
    out = check_writable_dir(args.out_dir)
    json_path = atomic_write_json(out / "names_check.json", report)
    tsv_path = atomic_write_text(out / "names_check.tsv", differences_table(report))
    print(f"check-names: {summary_line(report)}")
    print(f"  {json_path}\n  {tsv_path}")
    return 0


def cmd_features(args: argparse.Namespace) -> int:
    from pomp.backbones import load_backbone
    from pomp.data.features import extract_image_features
    from pomp.data.folder import ImageDataset, scan_class_folders
    from pomp.data.imagenet21k import resolve_names
    from pomp.data.splits import few_shot_split, read_split_file
    from pomp.data.transforms import MultiView, train_transform
    from pomp.io import check_writable_dir, process_tag
    from pomp.train import init_distributed

    if not args.data and not (args.split_file or args.train_root):
        raise ValueError("give --data (evaluation caches) and/or --split-file/--train-root (training cache)")
    refuse_unused([(bool(args.split_file and args.train_root), "--split-file and --train-root: give one source of "
                                                                "training images, not 2")])
    refuse_unused_data_options(args.data, args.image_root, args.names, args.split_file, args.train_root)
    if args.precision not in ("bf16", "fp16", "fp32"):
        raise ValueError(f"--precision must be bf16, fp16 or fp32, got {args.precision!r}")
    dist_info, device = init_distributed(args.device)
    out = Path(args.out_dir)
    if dist_info.main:
        check_writable_dir(out)
    dist_info.barrier()
    backbone = load_backbone(args.backbone, args.pretrained, device=device)
    jobs = []  # (cache dir, dataset, extra key): exactly what `pomp eval` / `pomp pretrain` look up
    for images in load_eval_data(args.data, args.split, args.image_root, args.names) if args.data else []:
        jobs.append((out / images.name, ImageDataset(images, backbone.eval_transform()), None))
    if args.split_file or args.train_root:
        if args.split_file:
            train = read_split_file(args.split_file, "train", args.image_root)
        else:
            train = few_shot_split(scan_class_folders(args.train_root, resolve_names(args.names)), args.shots,
                                   0, args.split_seed)["train"]
        aug = MultiView(train_transform(backbone.image_spec, randaugment=args.augment), args.views)
        if not args.augment and args.views == 1:
            aug = backbone.eval_transform()
        jobs.append((out / "train", ImageDataset(train, aug, seed=args.seed), {"seed": args.seed, "views": args.views}))
    job = dist_info.on_main(process_tag, share=True)  # names this extraction's parts folder on every rank
    for cache_dir, dataset, extra in jobs:
        feats = extract_image_features(cache_dir, backbone, dataset, extra, dist_info.rank, dist_info.world,
                                       barrier=dist_info.barrier, job=job, batch_size=args.batch_size,
                                       num_workers=args.num_workers, precision=args.precision,
                                       progress=args.progress and dist_info.main, desc=f"{cache_dir.name} features")
        if dist_info.main:
            print(json.dumps({"cache": str(cache_dir), "images": len(feats), "views": feats.features.shape[1],
                              "skipped": feats.skipped, "world_size": dist_info.world}))
    return 0


def add_parsers(sub) -> None:
    """Register `data` (split, shard, check-names) and `features` on the `pomp` sub-command parser."""
    p = sub.add_parser("data", help="prepare data once before launch: k-shot split files, webdataset shards, "
                                    "name checks")
    data = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")

    q = data.add_parser("split", help="k-shot train split + val split of class folders (CoOp-format JSON)",
                        description="Sample SHOTS training and VAL_PER_CLASS validation images per class, seeded, "
                                    "once before launch (the same split `pomp pretrain --train-root` would make). "
                                    "Pass the file to `pomp pretrain --split-file` or `pomp data shard`.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--train-root", required=True, help="class-folder image root (one sub-folder per class)")
    q.add_argument("--names", default=None, help=NAMES_HELP)
    q.add_argument("--shots", type=int_at_least(1), default=16, help="training images per class")
    q.add_argument("--val-per-class", type=int_at_least(0), default=50,
                   help="validation images per class (after the shots)")
    q.add_argument("--seed", type=int_at_least(0), default=0, help="split seed (pretrain's --split-seed)")
    q.add_argument("--out", required=True, help="split JSON to write")
    q.add_argument("--force", action="store_true", help="replace an existing split file")
    q.set_defaults(func=cmd_data_split)

    q = data.add_parser("shard", help="write webdataset tar shards from a split file or class folders",
                        description="Write OUT_DIR/<split>-NNNNNN.tar shards (<key>.jpg|png, <key>.cls class id, "
                                    "<key>.json {label, classname, path}), OUT_DIR/classes.txt (names in id order) "
                                    "and OUT_DIR/shards.json (manifest with per-shard counts). Samples are shuffled "
                                    "(seeded) so every shard mixes classes. See docs/distributed.md.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--split-file", default=None, help="CoOp-format split JSON: each split becomes a shard set")
    q.add_argument("--image-root", default=None, help="images of --split-file are relative to this")
    q.add_argument("--splits", default=None, help="comma-separated splits of --split-file to write (default: all)")
    q.add_argument("--train-root", default=None, help="or: class folders, all images, written as --split-name")
    q.add_argument("--names", default=None, help=NAMES_HELP + " (with --train-root)")
    q.add_argument("--split-name", default="train", help="shard name prefix with --train-root")
    q.add_argument("--out-dir", required=True)
    q.add_argument("--maxcount", type=int_at_least(1), default=1000, help="samples per shard")
    q.add_argument("--seed", type=int_at_least(0), default=0, help="seed of the sample shuffle before writing")
    q.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    q.set_defaults(func=cmd_data_shard)

    q = data.add_parser("check-names", help="compare class names with MIIL's imagenet21k_miil_tree.pth (POMP's)",
                        description="POMP names its ImageNet-21K-P classes by class_description in Alibaba-MIIL's "
                                    "imagenet21k_miil_tree.pth; pomp by timm's first WordNet lemma. Compare the two "
                                    "for every synset of --names and write OUT_DIR/names_check.json (counts and "
                                    "every difference) and OUT_DIR/names_check.tsv (the differences). The tree is "
                                    "read weights-only: no code in it runs.",
                        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    q.add_argument("--tree", required=True, help="path to imagenet21k_miil_tree.pth (winter-21)")
    q.add_argument("--names", default="imagenet21k-p", help=NAMES_HELP)
    q.add_argument("--out-dir", required=True, help="where names_check.json / names_check.tsv go")
    q.set_defaults(func=cmd_data_check_names)

    p = sub.add_parser("features", help="image features into a cache, split across ranks under torchrun",
                       description="Compute image-tower features once into the cache format `pomp eval "
                                   "--feature-cache` and `pomp pretrain --feature-cache` read (same key, so they "
                                   "reuse it). Under torchrun each rank encodes every WORLD-th image and rank 0 "
                                   "merges; OUT_DIR must be on a file system all ranks share. --data writes "
                                   "OUT_DIR/<dataset name> (eval transform); --split-file/--train-root writes "
                                   "OUT_DIR/train (the pretrain recipe's VIEWS augmented views, seeded by --seed).",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--backbone", required=True, help=BACKBONE_HELP)
    p.add_argument("--pretrained", default=None, help=PRETRAINED_HELP)
    p.add_argument("--out-dir", required=True, help="the cache folder (give the same to pomp eval/pretrain)")
    p.add_argument("--data", action="append", default=[], help="evaluation data: class-folder root or split JSON "
                                                               "(repeatable)")
    p.add_argument("--split", default="test", help="split read from --data split JSON files")
    p.add_argument("--image-root", default=None, help="image root of split JSON files")
    p.add_argument("--names", default=None, help=NAMES_HELP)
    p.add_argument("--split-file", default=None, help="training: the split JSON given to pretrain ('train' split)")
    p.add_argument("--train-root", default=None, help="training: class folders, split k-shot like pretrain does")
    p.add_argument("--shots", type=int_at_least(1), default=16)
    p.add_argument("--split-seed", type=int_at_least(0), default=0)
    p.add_argument("--views", type=int_at_least(1), default=4,
                   help="augmented views per training image (pretrain's --views)")
    p.add_argument("--seed", type=int_at_least(0), default=0, help="pretrain's --seed (seeds the augmentation)")
    p.add_argument("--augment", action=argparse.BooleanOptionalAction, default=True, help="pretrain's --augment")
    p.add_argument("--batch-size", type=int_at_least(1), default=64)
    p.add_argument("--num-workers", type=int_at_least(0), default=4)
    p.add_argument("--precision", default="bf16", help="autocast precision on CUDA: bf16 | fp16 | fp32")
    p.add_argument("--device", default="auto")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_features)


__all__ = ["add_parsers", "cmd_data_check_names", "cmd_data_shard", "cmd_data_split", "cmd_features"]
