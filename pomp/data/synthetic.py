"""Generated class-folder images for walkthroughs and tests: each class a colour with noise.

`python -m pomp.data.synthetic OUT --classes 12 --per-class 10` writes OUT/images/<folder>/*.png|jpg
and OUT/names.txt (`folder<TAB>name`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = [
    "golden retriever", "tabby cat", "red fox", "sports car", "coffee mug", "hot air balloon", "sunflower",
    "fire truck", "lighthouse", "strawberry", "school bus", "snowy owl", "violin", "zebra", "pineapple",
    "sailboat", "teapot", "umbrella", "volcano", "wristwatch", "yellow taxi", "banana", "castle", "dolphin",
]


def make_class_folders(root: str | Path, num_classes: int, per_class: int, size: int = 40, seed: int = 0) -> Path:
    """Write `num_classes` folders `c000, c001...` of `per_class` images and a names file; returns root."""
    if num_classes > len(NAMES):
        raise ValueError(f"at most {len(NAMES)} generated classes")
    root = Path(root)
    rng = np.random.default_rng(seed)
    images = root / "images"
    lines = []
    for c in range(num_classes):
        folder = images / f"c{c:03d}"
        folder.mkdir(parents=True, exist_ok=True)
        base = rng.integers(0, 256, size=3)
        for i in range(per_class):
            pixels = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
            Image.fromarray(pixels).save(folder / f"img_{i:03d}.{'jpg' if i % 2 == 0 else 'png'}")
        lines.append(f"c{c:03d}\t{NAMES[c]}\n")
    (root / "names.txt").write_text("".join(lines))
    return root


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out")
    parser.add_argument("--classes", type=int, default=12)
    parser.add_argument("--per-class", type=int, default=10)
    parser.add_argument("--size", type=int, default=40)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    root = make_class_folders(args.out, args.classes, args.per_class, args.size, args.seed)
    print(f"wrote {args.classes} classes x {args.per_class} images under {root / 'images'}, names in {root / 'names.txt'}")


if __name__ == "__main__":
    main()
