"""Shared fixtures: tiny randomly initialised open_clip models and generated class-folder images."""

from __future__ import annotations

import os
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

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


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """6 generated classes x 6 images: tmp_path/images/<c00k>/..., tmp_path/names.txt."""
    from pomp.data.synthetic import make_class_folders

    return make_class_folders(tmp_path, num_classes=6, per_class=6)
