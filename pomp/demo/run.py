"""`make demo`: the main job end to end on the offline default model, on 2 CPU cores.

1. Prepare real demo data (emoji pre-training classes + held-out emoji classes, Fashion-MNIST,
   animal silhouettes) in the class-folder / split-file formats users bring.
2. Pre-train a prompt on the seen emoji classes (image features cached once: the image tower is
   frozen), validating on the seen classes' third art style each epoch and keeping the best.
3. Apply it zero-shot to classes it never saw and to other datasets, next to the hand-crafted
   prompt "a photo of a {}.", and write a table, result JSONs, wall time and peak memory.

The offline default is MiniLM + EfficientNet-Lite0 joined by a ridge map: it is not CLIP and its
numbers are not comparable to the paper's.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

from pomp.backbones import load_backbone
from pomp.data.features import cached_image_features
from pomp.data.folder import ImageDataset
from pomp.data.splits import read_split_file
from pomp.data.names import SINGLE_TEMPLATE
from pomp.evaluate import build_classifier, markdown_table, result_record, write_result, zero_shot_metrics
from pomp.io import atomic_write_json, atomic_write_text, check_writable_dir
from pomp.prompt import Prompt
from pomp.train import PretrainConfig, pretrain

BACKBONE = "minilm-efficientnet-lite0"


def demo_config(data: Path, out: Path, **overrides) -> PretrainConfig:
    """Settings suited to 2 cores: cached features (no augmentation: emoji arrows differ only by
    direction, so flips would mislabel them), many steps of a small text batch."""
    cfg = dict(
        backbone=BACKBONE, split_file=str(data / "emoji" / "split_pretrain.json"), image_root=str(data / "emoji"),
        out_dir=str(out / "pretrain"), feature_cache=str(out / "cache" / "pretrain"),
        n_ctx=4, ctx_init="a photo of a", classes_per_step=256, epochs=8, batch_size=128, views=1, augment=False,
        lr=0.1, warmup_epochs=1, warmup_lr=0.01, length_buckets=8, num_workers=1, checkpoint_every=50, log_every=5,
        seed=0,
    )
    cfg.update(overrides)
    return PretrainConfig(**cfg)


def eval_sets(data: Path) -> dict[str, tuple[str, str, Path]]:
    """name -> (split file, split, image root)."""
    return {
        "emoji held-out classes": (str(data / "emoji" / "split_heldout.json"), "test", data / "emoji"),
        "emoji seen classes (3rd style)": (str(data / "emoji" / "split_pretrain.json"), "val", data / "emoji"),
        "fashion-mnist": (str(data / "fashion_mnist" / "split_test.json"), "test", data / "fashion_mnist"),
        "animal silhouettes": (str(data / "animal_silhouettes" / "split_test.json"), "test", data / "animal_silhouettes"),
    }


def peak_memory_gib() -> float:
    """Peak resident memory: this process plus its largest finished child, an upper bound (Linux reports KiB)."""
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return (own + children) / 2**20


def run_demo(out: Path, data: Path | None = None, **overrides) -> list[dict]:
    """Prepare data, pre-train, evaluate; returns the result records."""
    from pomp.demo.data import prepare_demo_data

    start = time.perf_counter()
    out = check_writable_dir(out)
    data = data or out / "data"
    print(f"[1/3] demo data -> {data}", flush=True)
    prepare_demo_data(data, fashion_per_class=50, animals_per_class=50)

    backbone = load_backbone(BACKBONE)
    cfg = demo_config(data, out, **overrides)
    print(f"[2/3] pre-training a prompt on seen emoji classes -> {cfg.out_dir}", flush=True)
    summary = pretrain(cfg, backbone=backbone)
    prompt = Prompt.load(Path(cfg.out_dir) / "prompt_best.safetensors")

    print("[3/3] zero-shot evaluation", flush=True)
    records = []
    for name, (split_file, split, root) in eval_sets(data).items():
        images = read_split_file(split_file, split, root)
        slug = name.split(" (")[0].replace(" ", "_")
        # the seen classes' third style is pre-training's validation set: reuse its feature cache
        cache = out / "cache" / "pretrain" / "val-rank0-of1" if split == "val" else out / "cache" / "eval" / slug
        feats = cached_image_features(cache, backbone,
                                      ImageDataset(images, backbone.eval_transform()), num_workers=1,
                                      desc=f"{name} features")
        for label, kwargs in ((SINGLE_TEMPLATE, {"baseline": "single"}), ("learned", {"prompt": prompt})):
            metrics = zero_shot_metrics(feats.features.float(), feats.labels,
                                        build_classifier(backbone, images.classnames, **kwargs))
            record = result_record(name, backbone, metrics, label,
                                   {"num_classes": len(images.classnames), "num_images": len(feats)})
            write_result(out / "results" / f"{slug}__{'learned' if 'prompt' in kwargs else 'hand'}.json", record)
            records.append(record)

    wall = time.perf_counter() - start
    table = demo_table(records)
    footer = (f"\nwall time {wall / 60:.1f} min, peak memory {peak_memory_gib():.2f} GiB; pre-training: "
              f"{summary['global_step']} steps, best seen-class val top-1 {100 * (summary['best_val_acc1'] or 0):.1f}% "
              f"at epoch {summary['best_epoch']}\n")
    atomic_write_text(out / "results.md", table + footer)
    atomic_write_json(out / "demo_summary.json", {"wall_s": round(wall, 1), "peak_memory_gib": peak_memory_gib(),
                                                  "pretrain": summary, "config": asdict(cfg), "results": records})
    print()
    print(table + footer)
    print("The offline default (MiniLM + EfficientNet-Lite0 + ridge map) is not CLIP: these numbers are not "
          "comparable to the paper's.")
    return records


def demo_table(records: list[dict]) -> str:
    """One row per dataset: classes, images, then top-1/top-5 for the hand-crafted and the learned prompt."""
    header = ["dataset", "classes", "images", "hand top-1", "learned top-1", "hand top-5", "learned top-5"]
    rows = []
    by_name: dict[str, dict[str, dict]] = {}
    for r in records:
        by_name.setdefault(r["dataset"], {})[r["prompt"]] = r
    for name, pair in by_name.items():
        hand, learned = pair[SINGLE_TEMPLATE], pair["learned"]
        cells = [name, hand["num_classes"], hand["num_images"]]
        for metric in ("acc1", "acc5"):
            cells += [f"{100 * hand['metrics'][metric]:.1f}", f"{100 * learned['metrics'][metric]:.1f}"]
        rows.append(cells)
    return markdown_table(header, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m pomp.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", nargs="?", default="runs/demo")
    parser.add_argument("--data", default=None, help="demo data folder (default: OUT/data)")
    args = parser.parse_args(argv)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    out = Path(args.out)
    if (out / "pretrain" / "checkpoint.safetensors").exists():
        import shutil

        shutil.rmtree(out / "pretrain")  # a fresh pre-training each demo run; data and feature caches are kept
    run_demo(out, Path(args.data) if args.data else None)
    return 0


if __name__ == "__main__":
    sys.exit(main())
