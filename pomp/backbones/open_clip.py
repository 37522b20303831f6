"""Any open_clip CLIP as a POMP backbone: built-in names, model-config JSON files, local checkpoints."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import open_clip
import torch
from open_clip.transformer import TextTransformer, text_global_pool

from pomp.backbones.base import Backbone, ImageSpec


class OpenCLIPBackbone(Backbone):
    """A frozen open_clip model whose text tower can be driven from token embeddings.

    Covers `CLIP` (text tower stored on the model) and `CustomTextCLIP` with an open_clip
    `TextTransformer` text tower. Hugging Face text towers inside open_clip are not supported.
    """

    def __init__(self, model: torch.nn.Module, tokenizer, name: str, pretrained: str | None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        text = model.text if hasattr(model, "text") else model
        if hasattr(model, "text") and not isinstance(model.text, TextTransformer):
            raise ValueError(f"{name}: text tower {type(model.text).__name__} is not an open_clip TextTransformer")
        if getattr(text, "cls_emb", None) is not None:
            raise ValueError(f"{name}: text towers with an appended class token (CoCa) are not supported")
        self._text = text
        self.pool_type = text.text_pool_type if hasattr(text, "text_pool_type") else text.pool_type
        self.eos_id = getattr(text, "text_eos_id", getattr(text, "eos_id", None))
        self.text_width = int(text.token_embedding.weight.shape[1])
        self.embed_dim = int(model.visual.output_dim)
        self.logit_scale = float(model.logit_scale.detach().exp().item())
        self.causal = text.attn_mask is not None
        self.freeze()

    # --- text side ---------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        return self.tokenizer(list(texts))

    def sequence_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        full = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device)
        if not self.causal:
            return full
        if self.pool_type == "argmax":
            return tokens.argmax(dim=-1) + 1
        if self.pool_type == "eos":
            return (tokens == self.eos_id).int().argmax(dim=-1) + 1
        if self.pool_type == "first":
            return torch.ones_like(full)
        return full

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._text.token_embedding(tokens)

    def encode_text_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        text = self._text
        cast_dtype = text.transformer.get_cast_dtype()
        length = embeddings.shape[1]
        x = embeddings.to(cast_dtype) + text.positional_embedding[:length].to(cast_dtype)
        attn_mask = text.attn_mask[:length, :length] if text.attn_mask is not None else None
        x = text.transformer(x, attn_mask=attn_mask)
        x = text.ln_final(x)
        x = text_global_pool(x, tokens, self.pool_type, eos_token_id=self.eos_id)
        projection = text.text_projection
        if projection is None:
            return x
        if isinstance(projection, torch.nn.Linear):
            return projection(x)
        return x @ projection

    # --- image side --------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model.encode_image(pixels)

    @property
    def image_spec(self) -> ImageSpec:
        cfg = open_clip.get_model_preprocess_cfg(self.model)
        size = cfg.get("size", 224)
        size = size if isinstance(size, int) else int(size[0])
        return ImageSpec(
            size=size,
            mean=tuple(cfg.get("mean", open_clip.OPENAI_DATASET_MEAN)),
            std=tuple(cfg.get("std", open_clip.OPENAI_DATASET_STD)),
            interpolation=cfg.get("interpolation", "bicubic"),
        )


def _register_config(config_path: Path) -> str:
    """Register a model-config JSON with open_clip; returns the name to build it by."""
    try:
        cfg = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise ValueError(f"{config_path}: not a readable open_clip model config ({err})") from err
    if not isinstance(cfg, dict) or "vision_cfg" not in cfg or "text_cfg" not in cfg:
        raise ValueError(f"{config_path}: an open_clip model config needs 'embed_dim', 'vision_cfg' and 'text_cfg'")
    open_clip.add_model_config(config_path)
    return config_path.stem


def load_open_clip(
    name_or_config: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> OpenCLIPBackbone:
    """Build a frozen open_clip backbone.

    Args:
        name_or_config: an open_clip model name (`ViT-B-16`) or a path to a model-config JSON.
        pretrained: an open_clip pretrained tag (downloads; needs network) or a local checkpoint file;
            None gives random weights from a fixed seed (tests, benchmarks).
        device: where the model lives.
        precision: open_clip precision string (`fp32`, `fp16`, `bf16`, `amp`...).
    """
    path = Path(name_or_config)
    model_name = _register_config(path) if path.suffix == ".json" and path.is_file() else name_or_config
    if model_name not in open_clip.list_models() and ":" not in model_name:
        raise ValueError(f"unknown open_clip model {name_or_config!r} (not a built-in name or an existing .json config)")
    if pretrained is not None and Path(pretrained).suffix and not Path(pretrained).exists():
        if any(sep in pretrained for sep in "/\\") or Path(pretrained).suffix in {".pt", ".pth", ".bin", ".safetensors"}:
            raise FileNotFoundError(f"{pretrained}: checkpoint file not found")
    # Without weights, initialise from a fixed seed: the same config always gives the same random
    # model, so separate commands (pretrain, eval, embed) see one model. The caller's RNG is untouched.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = open_clip.create_model(
            model_name, pretrained=pretrained, device=device, precision=precision, weights_only=True
        )
    tokenizer = open_clip.get_tokenizer(model_name)
    return OpenCLIPBackbone(model, tokenizer, name=str(name_or_config), pretrained=pretrained)
