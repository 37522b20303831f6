"""Shared fixtures: tiny randomly initialised open_clip models and generated class-folder images."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

ASSETS = Path(__file__).parent / "assets"
TINY_CONFIG = str(ASSETS / "tiny-clip.json")

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_config() -> str:
    return TINY_CONFIG


@pytest.fixture(scope="session")
def backbone():
    import pomp

    torch.manual_seed(0)
    return pomp.load_backbone(TINY_CONFIG)


def make_class_folders(root: Path, classes: list[str], per_class: int, size: int = 40, seed: int = 0) -> Path:
    """One folder per class, each image a class-specific colour blob with noise (JPEG and PNG)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    for c, name in enumerate(classes):
        folder = root / name
        folder.mkdir(exist_ok=True)
        base = rng.integers(0, 256, size=3)
        for i in range(per_class):
            img = np.clip(base + rng.normal(0, 30, size=(size, size, 3)), 0, 255).astype(np.uint8)
            ext = "jpg" if i % 2 == 0 else "png"
            Image.fromarray(img).save(folder / f"img_{i:03d}.{ext}")
    return root


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    classes = ["n0001", "n0002", "n0003", "n0004", "n0005", "n0006"]
    root = make_class_folders(tmp_path / "images", classes, per_class=6)
    names = ["golden retriever", "tabby_cat", "red fox", "sports car", "coffee mug", "hot air balloon"]
    (tmp_path / "names.txt").write_text("".join(f"{c}\t{n}\n" for c, n in zip(classes, names)))
    return tmp_path
