"""Any open_clip CLIP as a POMP backbone: built-in names, model-config JSON files, local checkpoints."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import ResidualAttentionBlock, TextTransformer, text_global_pool
from torch import nn

from pomp.backbones.base import Backbone, ImageSpec

FAST_TEXT_ENV = "POMP_FAST_TEXT"  # "0" turns the fast causal text path off (benchmarks, debugging)


def _is_causal_mask(mask: torch.Tensor | None) -> bool:
    """True for open_clip's additive causal mask: -inf strictly above the diagonal, 0 elsewhere."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    above = torch.ones(mask.shape, dtype=torch.bool, device=mask.device).triu(1)
    return bool((mask[above] == float("-inf")).all()) and bool((mask[~above] == 0).all())


def fast_text_blocks(text: nn.Module) -> list[nn.Module] | None:
    """The text tower's blocks when the fast path reproduces them exactly, else None.

    Exactly open_clip's standard `ResidualAttentionBlock` around a plain self-attention
    `nn.MultiheadAttention` (packed q/k/v projection, no bias_k/bias_v, no zero-attention,
    no cross-attention), under the causal mask. Anything else (CustomResidualAttentionBlock,
    non-causal or padding masks, quantised layers...) keeps open_clip's own path.
    """
    if not _is_causal_mask(getattr(text, "attn_mask", None)):
        return None
    blocks = list(getattr(text.transformer, "resblocks", []))
    if not blocks:
        return None
    for block in blocks:
        attn = getattr(block, "attn", None)
        if type(block) is not ResidualAttentionBlock or type(attn) is not nn.MultiheadAttention:
            return None
        if hasattr(block, "ln_1_kv") or attn.in_proj_weight is None or attn.bias_k is not None:
            return None
        if attn.bias_v is not None or attn.add_zero_attn or not isinstance(attn.out_proj, nn.Linear):
            return None
    return blocks


def causal_blocks_forward(x: torch.Tensor, blocks: Sequence[nn.Module]) -> torch.Tensor:
    """Run standard open_clip residual blocks on `[N, L, width]` with SDPA `is_causal=True`.

    Each block's own modules and weights: ln_1, the packed q/k/v projection, the output
    projection, ls_1, ln_2, mlp, ls_2; the same arithmetic as `nn.MultiheadAttention` with
    an additive causal mask, without building or reading an `[L, L]` mask. The frozen tower is
    in eval mode, so attention dropout is off in both paths.
    """
    n, length, width = x.shape
    for block in blocks:
        attn = block.attn
        qkv = F.linear(block.ln_1(x), attn.in_proj_weight, attn.in_proj_bias)
        q, k, v = qkv.view(n, length, 3, attn.num_heads, attn.head_dim).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        out = attn.out_proj(out.transpose(1, 2).reshape(n, length, width))
        x = x + block.ls_1(out)
        x = x + block.ls_2(block.mlp(block.ln_2(x)))
    return x


class OpenCLIPBackbone(Backbone):
    """A frozen open_clip model whose text tower can be driven from token embeddings.

    Covers `CLIP` (text tower stored on the model) and `CustomTextCLIP` with an open_clip
    `TextTransformer` text tower. Hugging Face text towers inside open_clip are not supported.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer,
        name: str,
        pretrained: str | None,
        fast_text: bool | None = None,
    ):
        """`fast_text`: run the causal text tower through SDPA `is_causal=True` (see
        `causal_blocks_forward`); None reads the environment variable POMP_FAST_TEXT (default on).
        The attribute `fast_text` can be switched at any time; unsupported towers ignore it."""
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
        if fast_text is None:
            fast_text = os.environ.get(FAST_TEXT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        self.fast_text = bool(fast_text)
        self._fast_blocks = fast_text_blocks(text)
        self._compiled_blocks = None  # set by `compile_text()`
        self.freeze()

    @property
    def fast_text_supported(self) -> bool:
        """The text tower is one the fast causal path reproduces exactly."""
        return self._fast_blocks is not None

    @property
    def uses_fast_text(self) -> bool:
        """The next text encoding takes the fast path (switched on, supported, no grad checkpointing)."""
        return self.fast_text and self._fast_blocks is not None and not self._text.transformer.grad_checkpointing

    def compile_text(self, enabled: bool = True, **compile_kwargs) -> bool:
        """Opt in to `torch.compile` of the fast causal block stack (shapes vary: dynamic by default).

        Returns whether compilation is in place; unsupported towers keep the eager path.
        """
        if not enabled or self._fast_blocks is None:
            self._compiled_blocks = None
            return False
        compile_kwargs.setdefault("dynamic", True)
        self._compiled_blocks = torch.compile(causal_blocks_forward, **compile_kwargs)
        return True

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
        if self.uses_fast_text:
            run = self._compiled_blocks or causal_blocks_forward
            x = run(x, self._fast_blocks)
        else:
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

    def encode_dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """MaskCLIP dense features `[B, embed_dim, H / patch, W / patch]` of a ViT image tower."""
        return maskclip_dense_features(self.model.visual, pixels)

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


def _resized_positional_embedding(visual: torch.nn.Module, grid: tuple[int, int]) -> torch.Tensor:
    """The tower's positional embedding `[1 + gh * gw, width]`, patch part resized (bicubic) to `grid`."""
    pos = visual.positional_embedding
    native = tuple(visual.grid_size)
    if tuple(grid) == native:
        return pos
    patches = pos[1:].reshape(1, native[0], native[1], -1).permute(0, 3, 1, 2).float()
    patches = torch.nn.functional.interpolate(patches, size=tuple(grid), mode="bicubic", align_corners=False)
    patches = patches.permute(0, 2, 3, 1).reshape(grid[0] * grid[1], -1).to(pos.dtype)
    return torch.cat([pos[:1], patches])


def maskclip_dense_features(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Per-patch features of an open_clip `VisionTransformer` in the joint space (MaskCLIP, Zhou et al. 2022).

    All blocks but the last run as usual. In the last block the attention is replaced by its value
    path, with no mixing between tokens: `x + out_proj(v_proj(ln_1(x)))` (LayerScale kept where the
    block has it), then the block's MLP with its residual, as MaskCLIP does; then `ln_post` and the
    visual projection on each patch token. Inputs whose patch grid differs from the tower's own get
    a bicubically resized positional embedding. Returns un-normalised `[B, output_dim, gh, gw]`.
    """
    from open_clip.transformer import ResidualAttentionBlock as _Block
    from open_clip.transformer import VisionTransformer

    kind = type(visual).__name__
    if not isinstance(visual, VisionTransformer):
        raise NotImplementedError(f"dense features need an open_clip VisionTransformer image tower, not {kind}")
    if getattr(visual, "attn_pool", None) is not None:
        raise NotImplementedError("dense features are not defined for image towers with attentional pooling (CoCa)")
    blocks = visual.transformer.resblocks
    last = blocks[-1]
    attn = getattr(last, "attn", None)
    if type(last) is not _Block or not isinstance(attn, torch.nn.MultiheadAttention) or hasattr(last, "ln_1_kv"):
        raise NotImplementedError(f"dense features need standard residual attention blocks, got {type(last).__name__}")
    x = visual.conv1(pixels.to(visual.conv1.weight.dtype))  # [B, width, gh, gw]
    batch, width, gh, gw = x.shape
    x = x.flatten(2).transpose(1, 2)
    cls = visual.class_embedding.to(x.dtype).view(1, 1, -1).expand(batch, -1, -1)
    x = torch.cat([cls, x], dim=1) + _resized_positional_embedding(visual, (gh, gw)).to(x.dtype)
    x = visual.ln_pre(visual.patch_dropout(x))
    batch_first = getattr(visual.transformer, "batch_first", True)
    if not batch_first:
        x = x.transpose(0, 1)
    for block in blocks[:-1]:
        x = block(x)
    if not batch_first:
        x = x.transpose(0, 1)
    # The last block, value path only.
    if attn.in_proj_weight is not None:
        v_weight = attn.in_proj_weight[2 * width :]
    else:
        v_weight = attn.v_proj_weight
    v_bias = attn.in_proj_bias[2 * width :] if attn.in_proj_bias is not None else None
    v = attn.out_proj(torch.nn.functional.linear(last.ln_1(x), v_weight, v_bias))
    x = x + last.ls_1(v)
    x = x + last.ls_2(last.mlp(last.ln_2(x)))
    x = visual.ln_post(x[:, 1:])
    if visual.proj is not None:
        x = x @ visual.proj
    return x.transpose(1, 2).reshape(batch, -1, gh, gw)


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
