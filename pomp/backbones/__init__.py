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
            model-config JSON; `hf:<folder or hub id>` for a transformers CLIP checkpoint.
        pretrained: open_clip pretrained tag (needs network) or a local checkpoint file.
        device: `cpu`, `cuda`, `cuda:1`..., or `auto` (CUDA when available, else CPU).
        precision: `fp32`, `fp16`, `bf16` (weights cast) or open_clip's `amp` variants.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if name_or_config.startswith("hf:"):
        from pomp.backbones.hf_clip import load_hf_clip

        return load_hf_clip(name_or_config, pretrained=pretrained, device=device, precision=precision)

    if name_or_config in ("minilm-efficientnet-lite0", "default"):
        # The offline default (MiniLM + EfficientNet-Lite0 + ridge map), from installed packages.
        from pomp.backbones.minilm_efficientnet import load_minilm_efficientnet

        return load_minilm_efficientnet(pretrained=pretrained, device=device, precision=precision)

    from pomp.backbones.open_clip import load_open_clip

    return load_open_clip(name_or_config, pretrained=pretrained, device=device, precision=precision)


__all__ = ["Backbone", "ImageSpec", "load_backbone"]
