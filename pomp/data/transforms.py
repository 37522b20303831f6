"""Image preprocessing: what the image tower expects (`ImageSpec`), the recipe's training augmentation (with V
views) and the test transform.

Training (method.md §4): random resized crop (scale 0.08-1, bicubic), horizontal flip,
RandAugment with 2 ops each applied with p = 0.6 at a random magnitude, then the model's
mean/std. Test: resize the short side and center crop (or the model's own resize mode).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torchvision.transforms.v2 as T
import torchvision.transforms.v2.functional as TF
from PIL import Image

RESIZE_MODES = ("shortest", "squash", "longest")


@dataclass(frozen=True)
class ImageSpec:
    """Preprocessing the image tower expects.

    `resize_mode` (open_clip's names) says how a test image becomes `size x size`: `shortest` resizes the
    short side and center-crops (CLIP); `squash` resizes both sides, aspect ratio lost, no crop (SigLIP,
    DFN, CLIPA); `longest` resizes the long side and pads to the square with zeros.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize_mode!r} (one of {', '.join(RESIZE_MODES)})")


_INTERPOLATION = {
    "bicubic": T.InterpolationMode.BICUBIC,
    "bilinear": T.InterpolationMode.BILINEAR,
    "nearest": T.InterpolationMode.NEAREST,
}


def interpolation_mode(spec: ImageSpec) -> T.InterpolationMode:
    """torchvision's mode for `spec.interpolation` (bicubic for a name it does not know)."""
    return _INTERPOLATION.get(spec.interpolation, T.InterpolationMode.BICUBIC)


def _to_normalized_tensor(spec: ImageSpec) -> list:
    return [T.ToImage(), T.ToDtype(torch.float32, scale=True), T.Normalize(mean=spec.mean, std=spec.std)]


def eval_transform(spec: ImageSpec) -> Callable[[Image.Image], torch.Tensor]:
    """To `size x size` as `spec.resize_mode` says (short side + center crop; both sides; long side + zero
    padding, as open_clip's test transforms do), then normalise."""
    mode = interpolation_mode(spec)
    if spec.resize_mode == "squash":
        resize = [T.Resize((spec.size, spec.size), interpolation=mode, antialias=True)]
    elif spec.resize_mode == "longest":
        resize = [T.Resize(None, max_size=spec.size, interpolation=mode, antialias=True), T.CenterCrop(spec.size)]
    else:
        resize = [T.Resize(spec.size, interpolation=mode, antialias=True), T.CenterCrop(spec.size)]
    return T.Compose(resize + _to_normalized_tensor(spec))


def _uniform() -> float:
    return float(torch.rand(()))


def _signed(limit: float, magnitude: float) -> float:
    return limit * magnitude * (1 if _uniform() < 0.5 else -1)


# Each op: (image, magnitude in [0, 1]) -> image. Ranges follow the usual RandAugment table.
_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "identity": lambda img, m: img,
    "autocontrast": lambda img, m: TF.autocontrast(img),
    "equalize": lambda img, m: TF.equalize(img),
    "invert": lambda img, m: TF.invert(img),
    "rotate": lambda img, m: TF.rotate(img, _signed(30.0, m)),
    "posterize": lambda img, m: TF.posterize(img, int(round(8 - 4 * m))),
    "solarize": lambda img, m: TF.solarize(img, int(round(256 - 256 * m))),
    "color": lambda img, m: TF.adjust_saturation(img, 1.0 + _signed(0.9, m)),
    "contrast": lambda img, m: TF.adjust_contrast(img, 1.0 + _signed(0.9, m)),
    "brightness": lambda img, m: TF.adjust_brightness(img, 1.0 + _signed(0.9, m)),
    "sharpness": lambda img, m: TF.adjust_sharpness(img, 1.0 + _signed(0.9, m)),
    "shear_x": lambda img, m: TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                                        shear=[math.degrees(math.atan(_signed(0.3, m))), 0.0]),
    "shear_y": lambda img, m: TF.affine(img, angle=0.0, translate=[0, 0], scale=1.0,
                                        shear=[0.0, math.degrees(math.atan(_signed(0.3, m)))]),
    "translate_x": lambda img, m: TF.affine(img, angle=0.0, translate=[int(_signed(0.3, m) * img.size[0]), 0],
                                            scale=1.0, shear=[0.0, 0.0]),
    "translate_y": lambda img, m: TF.affine(img, angle=0.0, translate=[0, int(_signed(0.3, m) * img.size[1])],
                                            scale=1.0, shear=[0.0, 0.0]),
}


class RandAugmentP:
    """RandAugment as the recipe uses it: `num_ops` ops drawn at random, each applied with
    probability `p` at a magnitude drawn uniformly from [0, 1] (not a fixed magnitude)."""

    def __init__(self, num_ops: int = 2, p: float = 0.6):
        self.num_ops = num_ops
        self.p = p
        self.names = list(_OPS)

    def __call__(self, img: Image.Image) -> Image.Image:
        for i in torch.randint(len(self.names), (self.num_ops,)).tolist():
            if _uniform() < self.p:
                img = _OPS[self.names[i]](img, _uniform())
        return img

    def __repr__(self) -> str:
        return f"RandAugmentP(num_ops={self.num_ops}, p={self.p})"


def train_transform(
    spec: ImageSpec,
    scale: tuple[float, float] = (0.08, 1.0),
    flip: bool = True,
    randaugment: bool = True,
) -> Callable[[Image.Image], torch.Tensor]:
    """The recipe's augmentation: random resized crop, flip, RandAugment(2 ops, p=0.6), normalise."""
    steps: list = [T.RandomResizedCrop(spec.size, scale=scale, interpolation=interpolation_mode(spec), antialias=True)]
    if flip:
        steps.append(T.RandomHorizontalFlip())
    if randaugment:
        steps.append(RandAugmentP(num_ops=2, p=0.6))
    return T.Compose(steps + _to_normalized_tensor(spec))


class MultiView:
    """Apply a random transform `views` times to one image: `[views, 3, H, W]`."""

    def __init__(self, transform: Callable[[Image.Image], torch.Tensor], views: int):
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.transform = transform
        self.views = views

    def __call__(self, img: Image.Image) -> torch.Tensor:
        return torch.stack([self.transform(img) for _ in range(self.views)])

    def __repr__(self) -> str:
        return f"MultiView(views={self.views}, transform={self.transform!r})"
