"""Backbones: frozen dual encoders behind one small protocol (`Backbone`)."""

from __future__ import annotations

import os

import torch

from pomp.backbones.base import Backbone


def load_backbone(
    name_or_config: str | os.PathLike | torch.nn.Module,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
    precision: str = "fp32",
    tokenizer=None,
) -> Backbone:
    """Build a frozen backbone by name, or wrap an open_clip model object you already hold.

    Args:
        name_or_config: an open_clip model name (`ViT-B-16`) or the path of an open_clip
            model-config JSON; `hf:<folder or hub id>` for a transformers CLIP checkpoint; or an
            open_clip model object (then `tokenizer` is required, and the object is used as is:
            frozen in place, moved to `device` if one is given, `pretrained` only recorded; a model
            wrapped in DataParallel / DistributedDataParallel or compiled is unwrapped).
        tokenizer: with a model object, its open_clip tokenizer (`open_clip.get_tokenizer(name)`).
        pretrained: open_clip pretrained tag (needs network) or a local checkpoint file.
        device: `cpu` (default), `cuda`, `cuda:1`..., or `auto` (CUDA when available, else CPU).
        precision: `fp32`, `fp16`, `bf16` (weights cast) or open_clip's `amp` variants.
    """
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if isinstance(name_or_config, os.PathLike):
        name_or_config = os.fspath(name_or_config)
    if isinstance(name_or_config, (tuple, list)) and name_or_config and isinstance(name_or_config[0], torch.nn.Module):
        raise ValueError(f"got a {type(name_or_config).__name__} of {len(name_or_config)} (what "
                         "open_clip.create_model_and_transforms returns); pass its first element, the model")
    if not isinstance(name_or_config, (str, torch.nn.Module)):
        raise ValueError("expected a model name, a model-config path or an open_clip model object, "
                         f"got {type(name_or_config).__name__}")
    if isinstance(name_or_config, torch.nn.Module):
        from pomp.backbones.open_clip import from_open_clip_model

        if precision != "fp32":
            raise ValueError("precision applies when pomp builds the model; cast a model object yourself")
        return from_open_clip_model(name_or_config, tokenizer, pretrained=pretrained, device=device)
    device = device or "cpu"
    if tokenizer is not None:
        raise ValueError("tokenizer= goes with a model object; a model name brings its own tokenizer")
    if name_or_config.startswith("hf:"):
        from pomp.backbones.hf_clip import load_hf_clip

        return load_hf_clip(name_or_config, pretrained=pretrained, device=device, precision=precision)

    if name_or_config in ("minilm-efficientnet-lite0", "default"):
        # The offline default (MiniLM + EfficientNet-Lite0 + ridge map), from installed packages.
        from pomp.backbones.offline import load_minilm_efficientnet

        return load_minilm_efficientnet(pretrained=pretrained, device=device, precision=precision)

    from pomp.backbones.open_clip import load_open_clip

    return load_open_clip(name_or_config, pretrained=pretrained, device=device, precision=precision)


__all__ = ["Backbone", "load_backbone"]
