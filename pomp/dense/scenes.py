"""Generated scenes with exact masks and boxes, for segmentation and detection walkthroughs and tests.

`python -m pomp.dense.scenes OUT [--num-images 24] [--size 320] [--source photos|shapes]` writes:

    OUT/JPEGImages/<id>.jpg                   scenes
    OUT/SegmentationClass/<id>.png            palette PNG label maps (255 = a 2 px band on object outlines)
    OUT/ImageSets/Segmentation/val.txt        ids
    OUT/classes.txt                           class list (line i = label value i)
    OUT/unseen.txt                            the "unseen" classes of a seen/unseen split
    OUT/annotations.json                      COCO ground truth of the objects (category id = label
                                              value; `frequency` 'r' for unseen things, 'f' otherwise)
    OUT/proposals.json                        class-agnostic COCO results: jittered true boxes + 1
                                              random box per image (a stand-in for a proposal network)

Sources:
- `photos` (needs scikit-image, whose sample images ship in the wheel): a background texture
  (grass, brick wall, gravel; grey textures tinted) with 1-3 non-overlapping objects cut from real
  photos: cat (chelsea), coffee cup (coffee), astronaut (astronaut), motorcycle (stereo_motorcycle),
  each an ellipse or rectangle cut-out, and horse (the exact silhouette, filled brown).
- `shapes` (numpy only): coloured circles, squares and triangles on a noisy grey "background".
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image

from pomp.data.synthetic import check_at_least, errors_as_one_line, generator_parser
from pomp.dense.segment import save_label_png
from pomp.io import atomic_write, atomic_write_json, atomic_write_text

IGNORE = 255
MIN_SIZE = 16  # pixels: the side of a scene that still holds an object (objects are 0.3-0.55 of it)


@dataclass(frozen=True)
class Thing:
    """A pasteable object: `render(w, h, rng) -> (rgb [h, w, 3] uint8, mask [h, w] bool)`."""

    name: str
    render: Callable[[int, int, np.random.Generator], tuple[np.ndarray, np.ndarray]]


# --- masks --------------------------------------------------------------------------------------
def ellipse_mask(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    return ((xx + 0.5 - w / 2) / (w / 2)) ** 2 + ((yy + 0.5 - h / 2) / (h / 2)) ** 2 <= 1.0


def triangle_mask(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    half = (yy + 0.5) / h * (w / 2)  # apex at the top centre, base at the bottom
    return np.abs(xx + 0.5 - w / 2) <= half


def outline_band(mask: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels within `width` of the mask's boundary, inside or outside (VOC marks these 255)."""
    def shifted(m: np.ndarray, grow: bool) -> np.ndarray:
        # 4-neighbour dilation (grow) or erosion; outside the image counts as "inside" for erosion,
        # so an object touching the border gets no band along the border.
        padded = np.pad(m, 1, mode="edge")
        out = m.copy()
        for dy, dx in ((0, 1), (0, -1), (1, 0), (-1, 0)):
            moved = padded[1 + dy : 1 + dy + m.shape[0], 1 + dx : 1 + dx + m.shape[1]]
            out = out | moved if grow else out & moved
        return out

    grown, shrunk = mask, mask
    for _ in range(width):
        grown, shrunk = shifted(grown, True), shifted(shrunk, False)
    return grown & ~shrunk


# --- sources ------------------------------------------------------------------------------------
def _photo_thing(
    name: str, load: Callable[[], np.ndarray], crop: tuple[float, float, float, float], shape: str
) -> Thing:
    cache: dict[str, Image.Image] = {}

    def render(w: int, h: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        if "img" not in cache:
            photo = load()
            ph, pw = photo.shape[:2]
            x0, y0, x1, y1 = crop
            cache["img"] = Image.fromarray(photo).crop((int(x0 * pw), int(y0 * ph), int(x1 * pw), int(y1 * ph)))
        rgb = np.asarray(cache["img"].resize((w, h), Image.Resampling.LANCZOS))
        mask = ellipse_mask(w, h) if shape == "ellipse" else np.ones((h, w), dtype=bool)
        return rgb, mask

    return Thing(name, render)


def _aspect(thing_crop: tuple[float, float, float, float], size: tuple[int, int]) -> float:
    x0, y0, x1, y1 = thing_crop
    return (x1 - x0) * size[1] / ((y1 - y0) * size[0])


def photo_source():
    """(stuff backgrounds, things, aspect ratios w/h) from scikit-image's sample photos."""
    try:
        from skimage import data
    except ImportError as err:
        raise ImportError(f"the 'photos' scenes need scikit-image ({err}); pip install scikit-image, "
                          "or use --source shapes") from None

    def tinted(load, tint):
        def render(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
            grey = np.asarray(Image.fromarray(load()).resize((w, h), Image.Resampling.BILINEAR), dtype=np.float32)
            return np.clip(grey[..., None] / 128.0 * np.array(tint, dtype=np.float32), 0, 255).astype(np.uint8)
        return render

    stuff = {"grass": tinted(data.grass, (70, 150, 50)), "brick wall": tinted(data.brick, (170, 80, 60)),
             "gravel": tinted(data.gravel, (150, 140, 125))}
    specs = [
        ("cat", data.chelsea, (0.0, 0.0, 0.86, 1.0), "ellipse", (300, 451)),
        ("coffee cup", data.coffee, (0.08, 0.0, 0.83, 0.98), "ellipse", (400, 600)),
        ("astronaut", data.astronaut, (0.06, 0.1, 0.8, 1.0), "ellipse", (512, 512)),
        ("motorcycle", lambda: data.stereo_motorcycle()[0], (0.1, 0.1, 0.95, 0.93), "rect", (500, 741)),
    ]
    things = [_photo_thing(n, load, crop, shape) for n, load, crop, shape, _ in specs]
    aspects = {n: _aspect(crop, hw) for n, _, crop, _, hw in specs}

    def horse(w: int, h: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        mask = ~np.asarray(Image.fromarray(data.horse()).resize((w, h), Image.Resampling.NEAREST))
        shade = rng.normal(0, 12, size=(h, w, 1))
        rgb = np.clip(np.array([120, 75, 40], dtype=np.float32) + shade, 0, 255).astype(np.uint8)
        return rgb, mask

    things.append(Thing("horse", horse))
    aspects["horse"] = 400 / 328
    return stuff, things, aspects


SHAPE_COLOURS = {"red circle": (220, 30, 30), "green square": (30, 180, 40), "blue triangle": (30, 60, 220)}


def shape_source():
    def background(w: int, h: int, rng: np.random.Generator) -> np.ndarray:
        return np.clip(rng.normal(128, 20, size=(h, w, 3)), 0, 255).astype(np.uint8)

    def shape(name: str, make_mask) -> Thing:
        def render(w: int, h: int, rng: np.random.Generator):
            rgb = np.clip(np.array(SHAPE_COLOURS[name]) + rng.normal(0, 10, size=(h, w, 3)), 0, 255).astype(np.uint8)
            return rgb, make_mask(w, h)
        return Thing(name, render)

    things = [shape("red circle", ellipse_mask), shape("green square", lambda w, h: np.ones((h, w), dtype=bool)),
              shape("blue triangle", triangle_mask)]
    return {"background": background}, things, {t.name: 1.0 for t in things}


SOURCES = {"photos": photo_source, "shapes": shape_source}
DEFAULT_UNSEEN = {"photos": ["gravel", "cat", "horse"], "shapes": ["blue triangle"]}


# --- scenes -------------------------------------------------------------------------------------
def _place(size: int, w: int, h: int, taken: list[tuple[int, int, int, int]], rng) -> tuple[int, int] | None:
    for _ in range(100):
        x, y = int(rng.integers(0, size - w + 1)), int(rng.integers(0, size - h + 1))
        if all(x + w <= a or a + c <= x or y + h <= b or b + d <= y for a, b, c, d in taken):
            return x, y
    return None


def make_scenes(
    out: str | Path,
    num_images: int = 24,
    size: int = 320,
    seed: int = 0,
    source: str = "photos",
    max_objects: int = 3,
    scale: tuple[float, float] = (0.3, 0.55),
) -> Path:
    """Write `num_images` scenes and their annotations under `out` (layout in the module docstring)."""
    check_at_least(num_images=(num_images, 1), size=(size, MIN_SIZE), seed=(seed, 0), max_objects=(max_objects, 1))
    if source not in SOURCES:
        raise ValueError(f"unknown scene source {source!r}; choose from {sorted(SOURCES)}")
    stuff, things, aspects = SOURCES[source]()
    classnames = list(stuff) + [t.name for t in things]
    label_of = {name: i for i, name in enumerate(classnames)}
    unseen = DEFAULT_UNSEEN[source]
    out = Path(out)
    rng = np.random.default_rng(seed)
    images, annotations, proposals, ids = [], [], [], []
    for n in range(num_images):
        image_id = f"scene_{n:04d}"
        stuff_name = list(stuff)[int(rng.integers(len(stuff)))]
        canvas = stuff[stuff_name](size, size, rng).copy()
        labels = np.full((size, size), label_of[stuff_name], dtype=np.uint8)
        band = np.zeros((size, size), dtype=bool)
        taken: list[tuple[int, int, int, int]] = []
        for _ in range(int(rng.integers(1, max_objects + 1))):
            thing = things[int(rng.integers(len(things)))]
            longest = rng.uniform(*scale) * size
            aspect = aspects[thing.name]
            w, h = (int(longest), int(longest / aspect)) if aspect >= 1 else (int(longest * aspect), int(longest))
            spot = _place(size, w, h, taken, rng)
            if spot is None:
                continue
            x, y = spot
            rgb, mask = thing.render(w, h, rng)
            region = canvas[y : y + h, x : x + w]
            region[mask] = rgb[mask]
            labels[y : y + h, x : x + w][mask] = label_of[thing.name]
            full = np.zeros((size, size), dtype=bool)
            full[y : y + h, x : x + w] = mask
            band |= outline_band(full)
            taken.append((x, y, w, h))
            rows, cols = np.nonzero(full)
            x0, y0, x1, y1 = int(cols.min()), int(rows.min()), int(cols.max()) + 1, int(rows.max()) + 1
            box = [x0, y0, x1 - x0, y1 - y0]
            annotations.append({"id": len(annotations) + 1, "image_id": n + 1, "category_id": label_of[thing.name],
                                "bbox": box, "area": int(full.sum()), "iscrowd": 0})
            jitter = rng.normal(0, 0.05, size=4) * np.array([box[2], box[3], box[2], box[3]])
            jx0, jy0 = max(0.0, x0 + jitter[0]), max(0.0, y0 + jitter[1])
            jx1, jy1 = min(float(size), x1 + jitter[2]), min(float(size), y1 + jitter[3])
            proposals.append({"image_id": n + 1, "category_id": 0, "score": float(rng.uniform(0.6, 1.0)),
                              "bbox": [round(jx0, 2), round(jy0, 2), round(jx1 - jx0, 2), round(jy1 - jy0, 2)]})
        rw, rh = (int(v) for v in rng.uniform(0.15, 0.4, size=2) * size)
        rx, ry = int(rng.integers(0, size - rw)), int(rng.integers(0, size - rh))
        proposals.append({"image_id": n + 1, "category_id": 0, "score": float(rng.uniform(0.05, 0.3)),
                          "bbox": [rx, ry, rw, rh]})
        labels[band] = IGNORE
        image = Image.fromarray(canvas)
        atomic_write(out / "JPEGImages" / f"{image_id}.jpg", lambda p: image.save(p, format="JPEG", quality=95))
        save_label_png(out / "SegmentationClass" / f"{image_id}.png", labels)
        images.append({"id": n + 1, "file_name": f"{image_id}.jpg", "width": size, "height": size})
        ids.append(image_id)
    thing_names = [t.name for t in things]
    categories = [{"id": label_of[name], "name": name, "frequency": "r" if name in unseen else "f"}
                  for name in thing_names]
    atomic_write_text(out / "ImageSets" / "Segmentation" / "val.txt", "".join(f"{i}\n" for i in ids))
    atomic_write_text(out / "classes.txt", "".join(f"{c}\n" for c in classnames))
    atomic_write_text(out / "unseen.txt", "".join(f"{c}\n" for c in unseen))
    atomic_write_json(out / "annotations.json", {"images": images, "annotations": annotations,
                                                 "categories": categories})
    atomic_write_json(out / "proposals.json", proposals)
    return out


def main(argv: list[str] | None = None) -> int:
    """`python -m pomp.dense.scenes`; a bad count is one line and exit status 2, nothing written."""
    parser = generator_parser("python -m pomp.dense.scenes", __doc__)
    parser.add_argument("out", help="folder to write (the VOC and COCO layout above)")
    parser.add_argument("--num-images", type=int, default=24, help="number of scenes")
    parser.add_argument("--size", type=int, default=320, help=f"side of each square scene, in pixels (at least "
                                                              f"{MIN_SIZE})")
    parser.add_argument("--seed", type=int, default=0, help="seed of the layout")
    parser.add_argument("--source", choices=sorted(SOURCES), default="photos", help="what the objects are")
    parser.add_argument("--max-objects", type=int, default=3, help="most objects in a scene")
    args = parser.parse_args(argv)
    with errors_as_one_line(parser, {f.replace("-", "_"): "--" + f for f in ("num-images", "size", "seed",
                                                                            "max-objects")}):
        root = make_scenes(args.out, args.num_images, args.size, args.seed, args.source, args.max_objects)
    gt = json.loads((root / "annotations.json").read_text())
    print(f"{root}: {args.num_images} scenes, {len(gt['annotations'])} objects; classes in {root / 'classes.txt'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
