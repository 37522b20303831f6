"""Generated class-folder images for walkthroughs and tests: each class a colour with noise.

`python -m pomp.data.synthetic OUT --classes 12 --per-class 10` writes OUT/images/<folder>/*.png|jpg
and OUT/names.txt (`folder<TAB>name`).
"""

from __future__ import annotations

import argparse
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = [
    "golden retriever", "tabby cat", "red fox", "sports car", "coffee mug", "hot air balloon", "sunflower",
    "fire truck", "lighthouse", "strawberry", "school bus", "snowy owl", "violin", "zebra", "pineapple",
    "sailboat", "teapot", "umbrella", "volcano", "wristwatch", "yellow taxi", "banana", "castle", "dolphin",
]


def check_at_least(**values: tuple[int, int]) -> None:
    """`ValueError` `<name> must be an integer >= <minimum>, got <value>` for the first `name=(value, minimum)`
    that is not an integer at least its minimum."""
    for name, (value, low) in values.items():
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")


def make_class_folders(root: str | Path, num_classes: int, per_class: int, size: int = 40, seed: int = 0) -> Path:
    """Write `num_classes` folders `c000, c001...` of `per_class` images (`size` x `size` pixels) and a names
    file; returns root. `ValueError` for counts no folder can be made of, before anything is written."""
    check_at_least(num_classes=(num_classes, 1), per_class=(per_class, 1), size=(size, 1), seed=(seed, 0))
    if num_classes > len(NAMES):
        raise ValueError(f"num_classes must be at most {len(NAMES)} (the generated classes' names), got {num_classes}")
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


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, each option's default after its help."""


def generator_parser(prog: str, description: str) -> argparse.ArgumentParser:
    """The parser of a sample-data generator (`python -m pomp.data.synthetic`, `python -m pomp.dense.scenes`):
    defaults shown in `--help`, errors as one line `PROG: error: ...` with exit status 2."""
    parser = argparse.ArgumentParser(prog=prog, description=description, formatter_class=_HelpFormatter)
    parser.error = lambda message: parser.exit(2, f"{prog}: error: {message}\n")
    return parser


@contextmanager
def errors_as_one_line(parser: argparse.ArgumentParser, flags: dict[str, str]):
    """A generator's `ValueError` (`<parameter> must be...`, the parameter shown as its flag) or `OSError`
    (`<file>: <reason>`) as the parser's one-line error."""
    try:
        yield
    except OSError as err:  # e.g. OUT is a file
        parser.error(f"{err.filename}: {err.strerror}" if err.filename else str(err))
    except ValueError as err:
        name, _, reason = str(err).partition(" ")
        parser.error(f"{flags.get(name, name)} {reason}")


def main(argv: list[str] | None = None) -> int:
    """`python -m pomp.data.synthetic`; a bad count is one line and exit status 2, nothing written."""
    parser = generator_parser("python -m pomp.data.synthetic", __doc__)
    parser.add_argument("out", help="folder to write (images/ and names.txt go in it)")
    parser.add_argument("--classes", type=int, default=12, help=f"number of classes (1 to {len(NAMES)})")
    parser.add_argument("--per-class", type=int, default=10, help="images per class")
    parser.add_argument("--size", type=int, default=40, help="side of each square image, in pixels")
    parser.add_argument("--seed", type=int, default=0, help="seed of the colours and the noise")
    args = parser.parse_args(argv)
    with errors_as_one_line(parser, {"num_classes": "--classes", "per_class": "--per-class", "size": "--size",
                                     "seed": "--seed"}):
        root = make_class_folders(args.out, args.classes, args.per_class, args.size, args.seed)
    print(f"wrote {args.classes} classes x {args.per_class} images under {root / 'images'}, "
          f"names in {root / 'names.txt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
