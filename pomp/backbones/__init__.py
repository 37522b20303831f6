"""Backbones: frozen dual encoders behind one small protocol (`Backbone`)."""

from __future__ import annotations

import torch

from pomp.backbones.base import Backbone, ImageSpec


def load_backbone(
    name_or_config: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> Backbone:
    """Build a frozen backbone by name.

    Args:
        name_or_config: an open_clip model name (`ViT-B-16`) or the path of an open_clip
            model-config JSON.
        pretrained: open_clip pretrained tag (needs network) or a local checkpoint file.
        device: `cpu`, `cuda`, `cuda:1`...
        precision: `fp32`, `fp16`, `bf16` (weights cast) or open_clip's `amp` variants.
    """
    from pomp.backbones.open_clip import load_open_clip

    return load_open_clip(name_or_config, pretrained=pretrained, device=device, precision=precision)


__all__ = ["Backbone", "ImageSpec", "load_backbone"]
