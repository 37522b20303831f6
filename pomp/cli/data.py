"""`pomp data split`, `pomp data shard` and `pomp features`: the steps run once before a large launch
(and `pomp data check-names`: pomp's ImageNet-21K-P names against MIIL's tree, which POMP names by).

    pomp data split --train-root IN21K-P/train --names imagenet21k-p --shots 16 --val-per-class 50 --out split.json
    pomp data shard --split-file split.json --image-root IN21K-P/train --out-dir shards/   (train and val shards)
    torchrun --nproc_per_node 8 -m pomp.cli features --backbone ViT-B-16 --pretrained openai \\
        --split-file split.json --image-root IN21K-P/train --views 4 --out-dir cache/      (cached-feature training)
"""

from __future__ import annotations

import json
from pathlib import Path

from pomp.cli.common import add_command, load_eval_data
from pomp.config import CheckNamesConfig, DataShardConfig, DataSplitConfig, FeaturesConfig


def cmd_data_split(cfg: DataSplitConfig) -> int:
    from pomp.data.folder import scan_class_folders
    from pomp.data.imagenet21k import resolve_names
    from pomp.data.splits import few_shot_split, write_split_file

    out = Path(cfg.out)
    if out.exists() and not cfg.force:
        raise FileExistsError(f"{out}: exists; a split is made once and reused (pass --force to replace it)")
    images = scan_class_folders(cfg.train_root, resolve_names(cfg.names))
    splits = few_shot_split(images, cfg.shots, cfg.val_per_class, cfg.seed)
    if cfg.val_per_class > 0 and "val" not in splits:
        raise ValueError(f"{cfg.train_root}: --val-per-class {cfg.val_per_class} leaves no validation image: no "
                         f"class holds more than --shots {cfg.shots} images; lower --shots or pass --val-per-class 0")
    write_split_file(out, splits)
    counts = {name: len(s) for name, s in splits.items()}
    print(json.dumps({"out": str(out), "classes": len(images.classnames), "images_scanned": len(images), **counts}))
    root = Path(cfg.train_root).resolve()
    hint = "" if out.resolve().parent == root else f" --image-root {cfg.train_root}"
    print(f"pretrain with: --split-file {out}{hint}   (or write shards: pomp data shard --split-file {out}{hint} ...)")
    return 0


def cmd_data_shard(cfg: DataShardConfig) -> int:
    from pomp.data.folder import scan_class_folders
    from pomp.data.imagenet21k import resolve_names
    from pomp.data.shards import CLASSES, MANIFEST, write_shards
    from pomp.data.splits import read_split_file
    from pomp.io import read_json

    if cfg.split_file:
        names = cfg.splits.split(",") if cfg.splits else list(read_json(cfg.split_file))
        sources = {name: read_split_file(cfg.split_file, name, cfg.image_root) for name in names}
    else:
        sources = {cfg.split_name: scan_class_folders(cfg.train_root, resolve_names(cfg.names))}
    out = Path(cfg.out_dir)
    flags = {"train": "--train-shards", "val": "--val-shards"}
    for name, images in sources.items():
        entry = write_shards(images, out, name, maxcount=cfg.maxcount, seed=cfg.seed, progress=cfg.progress)
        print(json.dumps({"split": name, "shards": len(entry["shards"]), "samples": entry["num_samples"],
                          "skipped": entry["skipped"]}))
        print(f"  {flags.get(name, '--' + name + '-shards')} '{out / entry['pattern']}'")
    print(f"  --train-classes {out / MANIFEST}   (class names also in {out / CLASSES})")
    return 0


def cmd_data_check_names(cfg: CheckNamesConfig) -> int:
    from pomp.data.imagenet21k import resolve_names
    from pomp.data.miil_tree import compare_with_tree, differences_table, read_miil_tree, summary_line
    from pomp.io import atomic_write_json, atomic_write_text, check_writable_dir

    tree = read_miil_tree(cfg.tree)
    names = resolve_names(cfg.names)
    if not names:
        raise ValueError("--names: give a class list (e.g. imagenet21k-p) or a names file")
    report = {"tree": str(cfg.tree), "names": cfg.names, **compare_with_tree(names, tree)}
    out = check_writable_dir(cfg.out_dir)
    json_path = atomic_write_json(out / "names_check.json", report)
    tsv_path = atomic_write_text(out / "names_check.tsv", differences_table(report))
    print(f"check-names: {summary_line(report)}")
    print(f"  {json_path}\n  {tsv_path}")
    return 0


def cmd_features(cfg: FeaturesConfig) -> int:
    from pomp.backbones import load_backbone
    from pomp.data.features import extract_image_features
    from pomp.data.folder import ImageDataset, scan_class_folders
    from pomp.data.imagenet21k import resolve_names
    from pomp.data.splits import few_shot_split, read_split_file
    from pomp.data.transforms import MultiView, train_transform
    from pomp.io import check_writable_dir, process_tag
    from pomp.train import init_distributed

    dist_info, device = init_distributed(cfg.device)
    out = Path(cfg.out_dir)
    if dist_info.main:
        check_writable_dir(out)
    dist_info.barrier()
    backbone = load_backbone(cfg.backbone, cfg.pretrained, device=device)
    jobs = []  # (cache dir, dataset, extra key): exactly what `pomp eval` / `pomp pretrain` look up
    for images in load_eval_data(cfg.data, cfg.split, cfg.image_root, cfg.names) if cfg.data else []:
        jobs.append((out / images.name, ImageDataset(images, backbone.eval_transform()), None))
    if cfg.split_file or cfg.train_root:
        if cfg.split_file:
            train = read_split_file(cfg.split_file, "train", cfg.image_root)
        else:
            train = few_shot_split(scan_class_folders(cfg.train_root, resolve_names(cfg.names)), cfg.shots,
                                   0, cfg.split_seed)["train"]
        aug = MultiView(train_transform(backbone.image_spec, randaugment=cfg.augment), cfg.views)
        if not cfg.augment and cfg.views == 1:
            aug = backbone.eval_transform()
        jobs.append((out / "train", ImageDataset(train, aug, seed=cfg.seed), {"seed": cfg.seed, "views": cfg.views}))
    job = dist_info.on_main(process_tag, share=True)  # names this extraction's parts folder on every rank
    for cache_dir, dataset, extra in jobs:
        feats = extract_image_features(cache_dir, backbone, dataset, extra, dist_info.rank, dist_info.world,
                                       barrier=dist_info.barrier, job=job, batch_size=cfg.batch_size,
                                       num_workers=cfg.num_workers, precision=cfg.precision,
                                       progress=cfg.progress and dist_info.main, desc=f"{cache_dir.name} features")
        if dist_info.main:
            print(json.dumps({"cache": str(cache_dir), "images": len(feats), "views": feats.features.shape[1],
                              "skipped": feats.skipped, "world_size": dist_info.world}))
    return 0


def add_parsers(sub) -> None:
    """Register `data` (split, shard, check-names) and `features` on the `pomp` sub-command parser."""
    p = sub.add_parser("data", help="prepare data once before launch: k-shot split files, webdataset shards, "
                                    "name checks")
    data = p.add_subparsers(dest="data_command", required=True, metavar="DATA_COMMAND")
    add_command(data, "split", DataSplitConfig, cmd_data_split,
                help="k-shot train split + val split of class folders (CoOp-format JSON)",
                description="Sample SHOTS training and VAL_PER_CLASS validation images per class, seeded, once "
                            "before launch (the same split `pomp pretrain --train-root` would make). Pass the file "
                            "to `pomp pretrain --split-file` or `pomp data shard`.")
    add_command(data, "shard", DataShardConfig, cmd_data_shard,
                help="write webdataset tar shards from a split file or class folders",
                description="Write OUT_DIR/<split>-NNNNNN.tar shards (<key>.jpg|png, <key>.cls class id, <key>.json "
                            "{label, classname, path}), OUT_DIR/classes.txt (names in id order) and "
                            "OUT_DIR/shards.json (manifest with per-shard counts). Samples are shuffled (seeded) so "
                            "every shard mixes classes. See docs/distributed.md.")
    add_command(data, "check-names", CheckNamesConfig, cmd_data_check_names,
                help="compare class names with MIIL's imagenet21k_miil_tree.pth (POMP's)",
                description="POMP names its ImageNet-21K-P classes by class_description in Alibaba-MIIL's "
                            "imagenet21k_miil_tree.pth; pomp by timm's first WordNet lemma. Compare the two for every "
                            "synset of --names and write OUT_DIR/names_check.json (counts and every difference) and "
                            "OUT_DIR/names_check.tsv (the differences). The tree is read weights-only: no code in it "
                            "runs.")
    add_command(sub, "features", FeaturesConfig, cmd_features,
                help="image features into a cache, split across ranks under torchrun",
                description="Compute image-tower features once into the cache format `pomp eval --feature-cache` and "
                            "`pomp pretrain --feature-cache` read (same key, so they reuse it). Under torchrun each "
                            "rank encodes every WORLD-th image and rank 0 merges; OUT_DIR must be on a file system "
                            "all ranks share. --data writes OUT_DIR/<dataset name> (eval transform); "
                            "--split-file/--train-root writes OUT_DIR/train (the pretrain recipe's VIEWS augmented "
                            "views, seeded by --seed).")


__all__ = ["add_parsers", "cmd_data_check_names", "cmd_data_shard", "cmd_data_split", "cmd_features"]
