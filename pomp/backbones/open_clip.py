"""Any open_clip model as a POMP backbone: built-in names, model-config JSON files, local checkpoints, model objects.

Every model class open_clip builds (CLIP, CustomTextCLIP, CoCa) with any of its image towers (open_clip
ViT, ModifiedResNet, timm) and text towers (open_clip TextTransformer, causal or not; Hugging Face
encoders). What the prompt needs is read from the model and its tokenizer (`pomp backbones NAME`).
"""

from __future__ import annotations

import inspect
import json
import logging
import math
import os
import re
import warnings
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, TextTransformer, text_global_pool
from torch import nn

from pomp.backbones.base import Backbone, weight_dtype
from pomp.backbones.hf_clip import quiet_transformers
from pomp.backbones.identity import SHA_PREFIX, release_of_file, sha256_of
from pomp.data.transforms import ImageSpec
from pomp.torchfile import is_torchscript_archive, torchscript_tensors

CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".npz", ".tar"}
FAST_TEXT_ENV = "POMP_FAST_TEXT"  # "0" turns the fast causal text path off (benchmarks, debugging)


def _is_causal_mask(mask: torch.Tensor | None) -> bool:
    """True for open_clip's additive causal mask: -inf strictly above the diagonal, 0 elsewhere."""
    if mask is None or mask.dim() != 2 or mask.shape[0] != mask.shape[1]:
        return False
    if mask.is_meta:  # built without values (`load_open_clip_structure`): open_clip builds no other square mask
        return True
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


class TransformerTextPath:
    """open_clip's own `TextTransformer`, or the text modules a `CLIP` model holds itself.

    Read from the tower, never assumed: causal or not (`attn_mask`), the padding mask
    (`use_pad_mask`, bidirectional towers only), CoCa's class token appended after the text
    (`cls_emb`, with its own mask), the pooling type and end-token id. The forward is
    `TextTransformer.forward` / `CLIP.encode_text` from token embeddings instead of token ids.
    """

    def __init__(self, model: nn.Module):
        custom = hasattr(model, "text")
        text = model.text if custom else model
        self.module = text
        self.pool_type = text.pool_type if custom else text.text_pool_type
        self.eos_id = getattr(text, "eos_id", None) if custom else getattr(text, "text_eos_id", None)
        self.pad_id = getattr(text, "pad_id", 0)
        self.cls_emb = getattr(text, "cls_emb", None) if custom else None
        self.pad_mask = bool(getattr(text, "use_pad_mask", False)) if custom else False
        self.causal = text.attn_mask is not None
        self.width = int(text.token_embedding.weight.shape[1])
        self.vocab_size = int(text.token_embedding.weight.shape[0])
        # positions the token ids may fill (CoCa's class token takes one more)
        self.max_length = int(text.positional_embedding.shape[0]) - (1 if self.cls_emb is not None else 0)
        self.fast_blocks = None if (self.cls_emb is not None or self.pad_mask) else fast_text_blocks(text)

    @property
    def pooling(self) -> str:
        if self.cls_emb is not None:
            return "class token appended after the text (CoCa), padding masked"
        return {
            "argmax": "end token (largest id)",
            "eos": f"first end token (id {self.eos_id})",
            "first": "first token",
            "last": "last position of the context",
        }.get(self.pool_type, f"none ({self.pool_type})")

    @property
    def grad_checkpointing(self) -> bool:
        return bool(getattr(self.module.transformer, "grad_checkpointing", False))

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.module.token_embedding(tokens)

    def sequence_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        full = torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device)
        if self.cls_emb is not None or self.pool_type not in ("argmax", "eos", "first"):
            return full  # the appended class token's / the last position moves with the length: no cut is exact
        if self.pool_type == "argmax":
            pooled = tokens.argmax(dim=-1) + 1
        elif self.pool_type == "eos":
            pooled = (tokens == self.eos_id).int().argmax(dim=-1) + 1
        else:
            pooled = torch.ones_like(full)
        if self.causal:
            return pooled  # nothing before the pooled token sees what follows it
        if self.pad_mask:  # padding is masked out of attention: the last real token bounds what matters
            real = (tokens != self.pad_id).long()
            last_real = (real * torch.arange(1, tokens.shape[1] + 1, device=tokens.device)).amax(dim=-1)
            return torch.maximum(pooled, last_real)
        return full  # every position, padding included, feeds every output

    def encode(self, embeddings: torch.Tensor, tokens: torch.Tensor, fast_run=None) -> torch.Tensor:
        text = self.module
        cast_dtype = text.transformer.get_cast_dtype()
        x = embeddings.to(cast_dtype)
        length = x.shape[1]
        if self.cls_emb is not None:
            x = torch.cat([x, self.cls_emb.to(cast_dtype).view(1, 1, -1).expand(x.shape[0], -1, -1)], dim=1)
            length += 1
        attn_mask = text.attn_mask[:length, :length] if text.attn_mask is not None else None
        if self.pad_mask or self.cls_emb is not None:
            pad_mask = text._build_additive_mask(tokens, length, x.dtype)
            attn_mask = pad_mask if attn_mask is None else attn_mask.unsqueeze(0) + pad_mask
        x = x + text.positional_embedding[:length].to(cast_dtype)
        if fast_run is not None:
            x = fast_run(x, self.fast_blocks)
        else:
            x = text.transformer(x, attn_mask=attn_mask)
        if self.cls_emb is not None:
            pooled = text.ln_final(x[:, -1])
        else:
            pooled = text_global_pool(text.ln_final(x), tokens, self.pool_type, eos_token_id=self.eos_id)
        projection = text.text_projection
        if projection is None:
            return pooled
        if isinstance(projection, nn.Linear):
            return projection(pooled)
        return pooled @ projection

    def output_width(self) -> int:
        projection = self.module.text_projection
        if projection is None:
            return self.width
        if isinstance(projection, nn.Linear):
            return int(projection.out_features)
        return int(projection.shape[1])


class HFTextPath:
    """A Hugging Face encoder inside open_clip (`HFTextEncoder`: RoBERTa, XLM-R, mT5, NLLB...).

    Hugging Face encoders take `inputs_embeds`: the prompt's embeddings enter there, with the
    attention mask the adapter builds from the pad id, then the adapter's own pooler and projection
    (`HFTextEncoder.forward`). Learned position embeddings are computed from the embeddings as
    consecutive positions, which equal the ones computed from ids for every non-pad token (padding
    is on the right); pad outputs are masked out of attention and of the pooling.
    """

    causal = False
    fast_blocks = None
    grad_checkpointing = False

    def __init__(self, text: nn.Module):
        from open_clip.hf_model import ClsLastHiddenStatePooler, ClsPooler, MeanPooler

        self.module = text
        self.encoder = text.transformer
        if text.config.pad_token_id is None:
            raise ValueError(f"{type(self.encoder).__name__}: the Hugging Face text config has no pad_token_id, "
                             "so the attention mask of the text tower is undefined")
        self.pad_id = int(text.config.pad_token_id)
        self.width = int(self.encoder.get_input_embeddings().weight.shape[1])
        self.vocab_size = int(self.encoder.get_input_embeddings().weight.shape[0])
        self.max_length = None  # position limits are the Hugging Face model's own
        self._maskable = isinstance(text.pooler, (MeanPooler, ClsPooler, ClsLastHiddenStatePooler))

    @property
    def pooling(self) -> str:
        kind = type(self.module.pooler).__name__
        if kind == "MeanPooler":
            return "mean over non-pad tokens"
        if kind in ("ClsPooler", "ClsLastHiddenStatePooler"):
            return "first token, padding masked"
        return f"{kind} (whole context)"

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.encoder.get_input_embeddings()(tokens)

    def padding_inside(self, tokens: torch.Tensor) -> torch.Tensor:
        """A pad id before the last non-pad token: the model masks it out of attention and (RoBERTa, XLM-R,
        NLLB) numbers positions from the ids, skipping it; from embeddings positions are consecutive."""
        real = tokens != self.pad_id
        after_last_real = real.flip(-1).cumsum(-1).flip(-1) == 0
        return (~real & ~after_last_real).any(dim=-1)

    def sequence_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self._maskable:
            return torch.full((tokens.shape[0],), tokens.shape[1], dtype=torch.long, device=tokens.device)
        real = (tokens != self.pad_id).long()
        return (real * torch.arange(1, tokens.shape[1] + 1, device=tokens.device)).amax(dim=-1)

    def encode(self, embeddings: torch.Tensor, tokens: torch.Tensor, fast_run=None) -> torch.Tensor:
        mask = (tokens != self.pad_id).long()
        dtype = self.encoder.get_input_embeddings().weight.dtype
        out = self.encoder(inputs_embeds=embeddings.to(dtype), attention_mask=mask)
        return self.module.proj(self.module.pooler(out, mask))

    def output_width(self) -> int:
        proj = self.module.proj
        linears = [m for m in proj.modules() if isinstance(m, nn.Linear)]
        return int(linears[-1].out_features) if linears else self.width


def text_path_of(model: nn.Module, name: str):
    """The text path of an open_clip model, or a one-line error naming what cannot be driven."""
    text = getattr(model, "text", None)
    if text is None:
        if all(hasattr(model, a) for a in ("token_embedding", "positional_embedding", "transformer", "ln_final")):
            return TransformerTextPath(model)
    else:
        from open_clip.hf_model import HFTextEncoder

        if isinstance(text, TextTransformer):
            if text.cls_emb is None and text.pool_type not in ("argmax", "eos", "first", "last"):
                raise ValueError(f"{name}: text pooling {text.pool_type!r} gives no single text feature to "
                                 "match images against")
            return TransformerTextPath(model)
        if isinstance(text, HFTextEncoder):
            return HFTextPath(text)
    kind = type(text if text is not None else model).__name__
    raise ValueError(f"{name}: text tower {kind} cannot be driven from token embeddings "
                     "(supported: open_clip TextTransformer, Hugging Face encoders through HFTextEncoder)")


def check_tokenizer(tokenizer, path, name: str) -> None:
    """Refuse, in one line, a tokenizer pomp cannot drive or that is not this model's.

    pomp calls `tokenizer(texts)` and `tokenizer(texts, context_length=L)` and expects `[N, L]` integer
    ids (what `open_clip.get_tokenizer(name)` returns). Ids past the text tower's vocabulary, or more
    positions than it has, mean another model's tokenizer (e.g. CLIP's with a SigLIP model).
    """
    probe = ["a photo of a cat."]
    try:
        tokens = tokenizer(probe)
        if isinstance(tokens, torch.Tensor):
            tokenizer(probe, context_length=int(tokens.shape[-1]) + 1)
    except Exception as err:  # any failure of a foreign callable: its kind and first line, in ours
        cause = (str(err).strip().splitlines() or [""])[0]
        raise ValueError(f"{name}: the tokenizer cannot be called as tokenizer(texts, context_length=...) "
                         f"({type(err).__name__}: {cause}); give open_clip.get_tokenizer(...)'s") from None
    if not isinstance(tokens, torch.Tensor) or tokens.dim() != 2 or tokens.is_floating_point():
        kind = type(tokens).__name__ if not isinstance(tokens, torch.Tensor) else f"a {tokens.dim()}-d {tokens.dtype}"
        raise ValueError(f"{name}: the tokenizer returns {kind}, not [N, L] token ids; give the open_clip "
                         "tokenizer (open_clip.get_tokenizer(...), which wraps a transformers tokenizer)")
    if int(tokens.max()) >= path.vocab_size:
        raise ValueError(f"{name}: the tokenizer gives id {int(tokens.max())} but the text tower has "
                         f"{path.vocab_size} token embeddings: the tokenizer of another model?")
    if path.max_length is not None and tokens.shape[1] > path.max_length:
        raise ValueError(f"{name}: the tokenizer gives {tokens.shape[1]} positions but the text tower has "
                         f"{path.max_length}: the tokenizer of another model?")


def _scalar(parameter: torch.Tensor | None) -> float | None:
    """A frozen scalar parameter's value (None for an absent or not-yet-materialised one)."""
    if parameter is None or parameter.is_meta:
        return None
    return float(parameter.detach().float().reshape(-1)[0])


class OpenCLIPBackbone(Backbone):
    """A frozen open_clip model whose text tower can be driven from token embeddings.

    Every model class open_clip builds: `CLIP`, `CustomTextCLIP` and `CoCa`; open_clip,
    ModifiedResNet and timm image towers; open_clip text towers (causal or not, padding mask or
    not, CoCa's appended class token) and Hugging Face text towers (`HFTextEncoder`). What the
    prompt needs is read from the model and its tokenizer (see `pomp backbones NAME`).
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
        if not callable(tokenizer):
            raise ValueError(f"{name}: the tokenizer must be callable (an open_clip tokenizer), "
                             f"got {type(tokenizer).__name__}")
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self._path = text_path_of(model, name)
        check_tokenizer(tokenizer, self._path, name)
        self.text_width = self._path.width
        self.embed_dim = joint_width(model, self._path, name)
        scale = _scalar(getattr(model, "logit_scale", None))
        self.logit_scale = math.exp(scale) if scale is not None else float("nan")
        self.logit_bias = _scalar(getattr(model, "logit_bias", None))
        self.causal = self._path.causal
        self._autocast_dtype = mixed_low_precision(model, name)
        self.pooling = self._path.pooling
        self.dense_path = dense_path_of(model.visual)[0]
        if fast_text is None:
            fast_text = os.environ.get(FAST_TEXT_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
        self.fast_text = bool(fast_text)
        self._fast_blocks = self._path.fast_blocks
        self._compiled_blocks = None  # set by `compile_text()`
        self.freeze()

    @property
    def fast_text_supported(self) -> bool:
        """The text tower is one the fast causal path reproduces exactly."""
        return self._fast_blocks is not None

    @property
    def uses_fast_text(self) -> bool:
        """The next text encoding takes the fast path (switched on, supported, no grad checkpointing)."""
        return self.fast_text and self._fast_blocks is not None and not self._path.grad_checkpointing

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
    def tokenize(self, texts: Sequence[str], context_length: int | None = None) -> torch.Tensor:
        if context_length is None:
            return self.tokenizer(list(texts))
        return self.tokenizer(list(texts), context_length=context_length)

    def sequence_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._path.sequence_lengths(tokens)

    def padding_inside(self, tokens: torch.Tensor) -> torch.Tensor:
        inside = getattr(self._path, "padding_inside", None)
        return inside(tokens) if inside is not None else super().padding_inside(tokens)

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._path.embed(tokens)

    def encode_text_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        fast_run = (self._compiled_blocks or causal_blocks_forward) if self.uses_fast_text else None
        with self._mixed_precision():
            return self._path.encode(embeddings, tokens.to(embeddings.device), fast_run)

    def _mixed_precision(self):
        """Autocast to the low-precision dtype of a model whose weights mix it with fp32 (`mixed_low_precision`)."""
        if self._autocast_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self._autocast_dtype)

    # --- image side --------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        # fp16/bf16 weights (precision="fp16"/"bf16") take pixels of their own dtype, on CPU as on CUDA
        with self._mixed_precision():
            return self.model.encode_image(pixels.to(_pixel_dtype(self.model.visual)), normalize=False)

    def encode_dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Per-location features `[B, embed_dim, h, w]` in the joint space; `dense_path` says which method."""
        path, reason = dense_path_of(self.model.visual)
        if path is None:
            raise NotImplementedError(f"{self.name}: no dense features: {reason}")
        with self._mixed_precision():
            return _DENSE[type(self.model.visual).__name__](self.model.visual, pixels)

    def check_dense_input(self, size: int) -> None:
        path, reason = dense_path_of(self.model.visual)
        if path is None:
            raise NotImplementedError(f"{self.name}: no dense features: {reason}")
        fixed = fixed_input_size(self.model.visual)
        if fixed is not None and fixed != (size, size):
            raise ValueError(f"{self.name}: its image tower (timm {type(self.model.visual.trunk).__name__}) takes "
                             f"only {fixed[0]} x {fixed[1]} inputs, not {size} x {size}; leave --size out")

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
            resize_mode=cfg.get("resize_mode") or "shortest",  # e.g. "squash" for DFN / SigLIP / CLIPA tags
        )

    def eval_transform(self):
        """The model's own test-time preprocessing, as open_clip builds it (`image_transform_v2`): resize mode
        (shortest side + centre crop for CLIP; the whole image squashed to the input size for the SigLIP, CLIPA,
        PE-Core and DFN-5B releases), interpolation, mean/std from the weights' pretrained config."""
        from open_clip.transform import PreprocessCfg, image_transform_v2

        return image_transform_v2(PreprocessCfg(**open_clip.get_model_preprocess_cfg(self.model)), is_train=False)

    def describe(self) -> dict:
        info = super().describe()
        if self.logit_bias is not None:
            info["logit_bias"] = self.logit_bias
        return info

    def resolved(self, n_ctx: int = 4) -> dict:
        info = super().resolved(n_ctx)
        visual = self.model.visual
        info["image_tower"] = (f"timm {type(visual.trunk).__name__}" if hasattr(visual, "trunk")
                               else type(visual).__name__)
        text = self._path.module
        info["text_tower"] = "TextTransformer" if text is self.model else type(text).__name__
        info["model_class"] = type(self.model).__name__
        info["fast_causal_text_path"] = self.fast_text_supported
        if self.dense_path is None:
            info["dense_features"] = "none: " + dense_path_of(visual)[1]
        else:
            fixed = fixed_input_size(visual)
            info["dense_input"] = f"{fixed[0]} x {fixed[1]} only" if fixed else "any size"
        return info


def joint_width(model: nn.Module, path, name: str) -> int:
    """Width of the joint space, from the model's structure: the text projection's output.

    `visual.output_dim` is checked against it where the image tower has one (timm towers do not).
    """
    width = path.output_width()
    visual = getattr(getattr(model, "visual", None), "output_dim", None)
    if visual is not None and int(visual) != width:
        raise ValueError(f"{name}: image features are {visual}-d but text features {width}-d")
    return width


def mixed_low_precision(model: nn.Module, name: str) -> torch.dtype | None:
    """fp16/bf16 when the model's weights mix it with fp32 (then every encode path autocasts to it), else None.

    open_clip's `precision="fp16"/"bf16"` (OpenAI's mixed precision, `convert_weights_to_lp`) casts the
    layers of its own towers (linear, convolution, attention, projections) and leaves everything else
    fp32: a Hugging Face text tower's embeddings and norms, CoCa's pooler queries... Such towers would
    multiply fp32 activations with fp16 weights. Under `torch.autocast` every matrix product runs in the
    one low-precision dtype whichever tensors the cast reached. Models in one dtype need no autocast.
    """
    dtypes = {p.dtype for p in model.parameters() if p.is_floating_point()}
    low = dtypes & {torch.float16, torch.bfloat16}
    if len(low) > 1:
        raise ValueError(f"{name}: weights in both float16 and bfloat16; cast the model to one precision")
    return next(iter(low)) if low and torch.float32 in dtypes else None


def _pixel_dtype(visual: torch.nn.Module) -> torch.dtype:
    """The dtype an image tower takes: its patch/stem convolution's (open_clip keeps embeddings fp32
    when it casts the rest to fp16/bf16), else its first parameter's (timm towers)."""
    weight = getattr(getattr(visual, "conv1", None), "weight", None)
    return weight.dtype if isinstance(weight, torch.Tensor) else next(visual.parameters()).dtype


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
    x = visual.conv1(pixels.to(_pixel_dtype(visual)))  # [B, width, gh, gw]
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


def resnet_dense_features(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Per-location features of an open_clip `ModifiedResNet` in the joint space (MaskCLIP, Zhou et al. 2022).

    The attention pool's value path on each location of the final feature map, as MaskCLIP does for
    CLIP's ResNets: `c_proj(v_proj(x))`, no mixing between locations (and, as there, no positional
    embedding). Returns un-normalised `[B, output_dim, h, w]` (h, w = input / 32).
    """
    x = visual.stem(pixels.to(visual.conv1.weight.dtype))
    for layer in (visual.layer1, visual.layer2, visual.layer3, visual.layer4):
        x = layer(x)
    pool = visual.attnpool
    batch, _, h, w = x.shape
    x = pool.c_proj(pool.v_proj(x.flatten(2).transpose(1, 2)))
    return x.transpose(1, 2).reshape(batch, -1, h, w)


def _identity_attention_forward(block: nn.Module):
    """`block.forward` with each token attending to itself only (an additive mask, -inf off the diagonal)."""
    forward = block.forward

    def run(x, *args, **kwargs):
        n = x.shape[1]
        mask = torch.full((n, n), float("-inf"), dtype=x.dtype, device=x.device)
        kwargs["attn_mask"] = mask.fill_diagonal_(0.0)
        return forward(x, *args, **kwargs)

    return run


def _latent_pool_value_path(pool: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """timm `AttentionPoolLatent` (MAP head) applied to each token alone: `proj(v) + mlp(norm(proj(v)))`."""
    if pool.pos_embed is not None:
        x = x + pool.pos_embed.unsqueeze(0).to(x.dtype)
    width = x.shape[-1]
    v = F.linear(x, pool.kv.weight[width:], pool.kv.bias[width:] if pool.kv.bias is not None else None)
    x = pool.proj_drop(pool.proj(v))
    return x + pool.mlp(pool.norm(x))


def timm_dense_features(visual: torch.nn.Module, pixels: torch.Tensor) -> torch.Tensor:
    """Per-location features of an open_clip `TimmModel` image tower in the joint space.

    - ViT-like trunks (`blocks` whose last block takes an attention mask: ViT, EVA, PE, SigLIP...):
      MaskCLIP's value path, obtained by running the trunk's own `forward_features` with the last
      block's attention restricted to the diagonal (each token attends to itself, so its attention
      output is exactly the projected value: rotary embeddings, gates and norms stay the block's
      own); then per patch token the head: the MAP pool's value path where there is one, `fc_norm`,
      the trunk's head and open_clip's projection head.
    - Convolutional trunks (a `[B, C, h, w]` map; NHWC for Swin): the map before pooling, each
      location run through the trunk's own `forward_head` as a 1 x 1 map (pooling a single location
      is the identity), then open_clip's projection head. For heads linear after average pooling
      the mean of the map is exactly the image feature.
    Inputs at the tower's own image size (timm ViTs take no other). Returns un-normalised `[B, embed_dim, h, w]`.
    """
    trunk = visual.trunk
    pixels = pixels.to(next(trunk.parameters()).dtype)
    blocks = getattr(trunk, "blocks", None)
    if blocks is not None and len(blocks):
        last = blocks[-1]
        last.forward = _identity_attention_forward(last)
        try:
            tokens = trunk.forward_features(pixels)
        finally:
            del last.forward
        tokens = tokens[:, getattr(trunk, "num_prefix_tokens", 0) :]
        grid = _token_grid(tokens.shape[1], pixels.shape[-2:])
        if getattr(trunk, "attn_pool", None) is not None:
            tokens = _latent_pool_value_path(trunk.attn_pool, tokens)
        tokens = visual.head(trunk.head(trunk.fc_norm(tokens)))
        return tokens.transpose(1, 2).reshape(tokens.shape[0], -1, *grid)
    fmap = trunk.forward_features(pixels)
    nhwc = getattr(trunk, "output_fmt", "NCHW") == "NHWC"
    if nhwc:
        fmap = fmap.permute(0, 3, 1, 2)
    batch, channels, h, w = fmap.shape
    cells = fmap.permute(0, 2, 3, 1).reshape(batch * h * w, 1, 1, channels)
    out = visual.head(trunk.forward_head(cells if nhwc else cells.permute(0, 3, 1, 2)))
    return out.reshape(batch, h, w, -1).permute(0, 3, 1, 2)


def fixed_input_size(visual: nn.Module) -> tuple[int, int] | None:
    """(H, W) when the image tower takes no other input size, else None.

    timm's ViT-like and Swin trunks built without `dynamic_img_size` hold position embeddings (or
    attention windows) for one input size and assert it; convolutional trunks, open_clip's own ViT
    (pomp resizes its position embedding) and ModifiedResNet take any size.
    """
    trunk = getattr(visual, "trunk", None)
    if trunk is None or getattr(trunk, "dynamic_img_size", True):
        return None
    size = getattr(getattr(trunk, "patch_embed", None), "img_size", None) or visual.image_size
    return (int(size[0]), int(size[1])) if isinstance(size, (tuple, list)) else (int(size), int(size))


def _token_grid(count: int, image: tuple[int, int]) -> tuple[int, int]:
    """The (rows, columns) grid `count` patch tokens form for an image of this (H, W) aspect."""
    rows = max(1, round(math.sqrt(count * image[0] / image[1])))
    if count % rows:
        raise ValueError(f"dense features: {count} patch tokens form no grid for a {image[0]} x {image[1]} image")
    return rows, count // rows


def dense_path_of(visual: nn.Module) -> tuple[str | None, str]:
    """(method, "") for an image tower with a dense feature path, else (None, why not)."""
    from open_clip.modified_resnet import ModifiedResNet
    from open_clip.transformer import ResidualAttentionBlock as _Block
    from open_clip.transformer import VisionTransformer

    if isinstance(visual, VisionTransformer):
        if getattr(visual, "attn_pool", None) is not None:
            return None, "the attentional pooler (CoCa) mixes all patches into learned queries"
        last = visual.transformer.resblocks[-1]
        if type(last) is not _Block or not isinstance(getattr(last, "attn", None), nn.MultiheadAttention):
            return None, f"the last block ({type(last).__name__}) is not a standard residual attention block"
        return "MaskCLIP value path of the last block (open_clip ViT)", ""
    if isinstance(visual, ModifiedResNet):
        return "MaskCLIP value path of the attention pool (ModifiedResNet)", ""
    trunk = getattr(visual, "trunk", None)
    if trunk is None:
        return None, f"image tower {type(visual).__name__} is not one pomp knows"
    head = [type(m).__name__ for m in visual.head.children() if not isinstance(m, (nn.Dropout, nn.Identity))]
    if any(kind not in ("Linear", "Mlp") for kind in head):
        return None, f"the tower's pooling head ({', '.join(head)}) mixes locations"
    blocks = getattr(trunk, "blocks", None)
    if blocks is not None and len(blocks):
        if "attn_mask" not in inspect.signature(blocks[-1].forward).parameters:
            return None, f"the last block ({type(blocks[-1]).__name__}) takes no attention mask"
        return f"MaskCLIP value path of the last block (timm {type(trunk).__name__})", ""
    if hasattr(trunk, "forward_features") and hasattr(trunk, "forward_head"):
        return f"feature map before pooling, head per location (timm {type(trunk).__name__})", ""
    return None, f"timm {type(trunk).__name__} exposes no feature map"


_DENSE = {"VisionTransformer": maskclip_dense_features, "ModifiedResNet": resnet_dense_features,
          "TimmModel": timm_dense_features}


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


QUICKGELU_SUFFIX = "-quickgelu"


def _other_activation_hint(name_or_config: str, model_name: str, quick_gelu: bool) -> str:
    """How to ask for the other activation: the `-quickgelu` twin of a built-in name, or the config key."""
    if name_or_config != model_name:  # a model-config JSON
        return f'for the other set "quick_gelu": {str(not quick_gelu).lower()} in {name_or_config}'
    if model_name.endswith(QUICKGELU_SUFFIX) and model_name[: -len(QUICKGELU_SUFFIX)] in open_clip.list_models():
        return f"for GELU weights use {model_name[: -len(QUICKGELU_SUFFIX)]}"
    if not quick_gelu and model_name + QUICKGELU_SUFFIX in open_clip.list_models():
        return f"for QuickGELU weights (OpenAI's CLIP) use {model_name + QUICKGELU_SUFFIX}"
    return f'for the other set "quick_gelu": {str(not quick_gelu).lower()} in {name_or_config}'


def _weights_error(path: str, model_name: str, err: Exception) -> ValueError:
    """One line for open_clip's / torch's failures to load a local weights file (never their advice text)."""
    text = str(err)
    if "Weights only load failed" in text:
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = found.group(1) if found else "objects other than tensors"
        return ValueError(f"{path}: holds pickled {what} besides tensors; backbone weights are read as tensors only")
    lines = [line.strip() for line in text.splitlines() if line.strip()] or [type(err).__name__]
    cause = lines[1] if lines[0].startswith("Error(s) in loading state_dict") and len(lines) > 1 else lines[0]
    cause = cause if len(cause) <= 200 else cause[:197] + "..."
    return ValueError(f"{path}: weights do not fit {model_name} ({cause})")


def _load_torchscript_weights(model: torch.nn.Module, path: str, model_name: str) -> None:
    """Copy the tensors of a TorchScript archive (OpenAI's CLIP `.pt` release format) into `model`.

    The archive is read by `pomp.torchfile` (no code from it runs). Like open_clip's OpenAI loader,
    the `input_resolution`, `context_length` and `vocab_size` entries are dropped; every tensor the
    model's state dict holds must be present with its shape, and nothing else may be left over but
    buffers the model keeps out of its state dict (its causal mask).
    """
    tensors = torchscript_tensors(path)
    for key in ("input_resolution", "context_length", "vocab_size"):
        tensors.pop(key, None)
    expected = model.state_dict()
    transient = {name for name, _ in model.named_buffers()} - set(expected)
    missing = [k for k in expected if k not in tensors]
    reshaped = [k for k in expected if k in tensors and tuple(tensors[k].shape) != tuple(expected[k].shape)]
    unexpected = [k for k in tensors if k not in expected and k not in transient]
    problems = []
    if missing:
        problems.append(f"{len(missing)} tensors missing (e.g. {missing[0]})")
    if reshaped:
        k = reshaped[0]
        problems.append(f"{len(reshaped)} of another shape (e.g. {k}: {tuple(tensors[k].shape)} in the file, "
                        f"{tuple(expected[k].shape)} in {model_name})")
    if unexpected:
        problems.append(f"{len(unexpected)} unknown to {model_name} (e.g. {unexpected[0]})")
    if problems:
        raise ValueError(f"{path}: TorchScript weights do not fit {model_name}: {'; '.join(problems)}")
    model.load_state_dict({k: tensors[k] for k in expected}, strict=True)


@dataclass
class _WeightsPlan:
    """How to build and fill a model: the activation resolved for its weights, and where they come from."""

    quick_gelu: bool
    weights: dict
    tag_cfg: dict = field(default_factory=dict)  # open_clip's pretrained config of the tag (or matched release)
    torchscript: bool = False
    notice: str | None = None  # said once the weights have loaded


def _plan_weights(name_or_config: str, model_name: str, pretrained: str | None) -> _WeightsPlan:
    """Resolve the activation weights need (see `load_open_clip`) and the weights' identity."""
    config = open_clip.get_model_config(model_name) or {}
    quick_gelu = bool(config.get("quick_gelu", False))
    if pretrained is None:  # a model-config JSON of one's own is random on purpose (tests); a release's name is not
        tags = open_clip.list_pretrained_tags_by_model(model_name)
        notice = None if Path(name_or_config).suffix == ".json" else (
            f"{name_or_config}: no pretrained weights given, so the model is randomly initialised (seeded), not "
            f"trained; pass --pretrained {tags[0] if tags else 'TAG'} (downloads) or a local weights file")
        return _WeightsPlan(quick_gelu, {"random_init_seed": 0}, notice=notice)
    if not Path(pretrained).is_file():
        if any(sep in pretrained for sep in "/\\") or Path(pretrained).suffix in CHECKPOINT_SUFFIXES:
            raise FileNotFoundError(f"{pretrained}: checkpoint file not found")
        tag_cfg = open_clip.get_pretrained_cfg(model_name, pretrained)
        if not tag_cfg:
            known = ", ".join(open_clip.list_pretrained_tags_by_model(model_name)) or "none"
            raise ValueError(f"{pretrained!r}: neither a file nor a pretrained tag of {model_name} (tags: {known})")
        return _WeightsPlan(bool(tag_cfg.get("quick_gelu", False)), {"tag": pretrained}, tag_cfg)
    sha = sha256_of(pretrained)
    torchscript = is_torchscript_archive(pretrained)
    weights = {"file": Path(pretrained).name, "sha256": sha[:SHA_PREFIX],
               "format": "torchscript" if torchscript else "state_dict"}
    release = release_of_file(model_name, sha)
    if release is not None:
        weights["tag"], tag_cfg = release
        return _WeightsPlan(bool(tag_cfg.get("quick_gelu", False)), weights, tag_cfg, torchscript)
    if torchscript:  # OpenAI's CLIP, the only TorchScript release, was trained with QuickGELU
        return _WeightsPlan(True, weights, torchscript=True)
    if "quick_gelu" in config:  # chosen explicitly (a `-quickgelu` name, or the key in the user's config)
        return _WeightsPlan(quick_gelu, weights)
    notice = (f"{pretrained}: a state dict does not record its activation; assuming "
              f"{'QuickGELU' if quick_gelu else 'GELU'} as {name_or_config} says "
              f"({_other_activation_hint(name_or_config, model_name, quick_gelu)})")
    return _WeightsPlan(quick_gelu, weights, notice=notice)


# open_clip log lines pomp replaces: the first is false when pomp loads the file itself, the second
# precedes the error pomp reports in its own words.
_OPEN_CLIP_LOGS_REPLACED = ("No pretrained weights loaded", "Failed to download weights")


def _drop_replaced_logs(record: logging.LogRecord) -> bool:
    return not str(record.msg).startswith(_OPEN_CLIP_LOGS_REPLACED)


def _download_error(name_or_config: str, pretrained: str, err: Exception) -> OSError:
    """One line of ours for a tag whose weights could not be fetched (not the hub client's advice)."""
    offline = os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")
    reason = ("HF_HUB_OFFLINE is set and they are not in the local cache" if offline
              else f"no network, or the download failed: {type(err.__context__ or err).__name__}")
    return OSError(f"{name_or_config} pretrained={pretrained!r}: weights could not be downloaded ({reason}); "
                   "where there is no network, pass the downloaded file: --pretrained /path/to/weights")


def _built_activation(model: torch.nn.Module) -> str:
    """The activation the built model's MLPs actually use."""
    return "quick_gelu" if any(isinstance(m, QuickGELU) for m in model.modules()) else "gelu"


def load_open_clip(
    name_or_config: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> OpenCLIPBackbone:
    """Build a frozen open_clip backbone, with the architecture its weights were trained with.

    Activation (QuickGELU or GELU), which weights never record, is resolved as follows:
    - an open_clip pretrained tag: the tag's own config (`quick_gelu`), as `open_clip.get_pretrained_cfg`
      says (`ViT-B-16` + `openai` builds QuickGELU, open_clip's plain `create_model` builds GELU and warns);
    - a TorchScript archive (OpenAI's original `.pt` files): QuickGELU, as open_clip's OpenAI loader
      does; its tensors are read without running its code (`pomp.torchfile`);
    - a local file whose sha256 matches a release's published checksum: that release's config;
    - any other local state dict: the model config's; one warning says which was assumed and how to
      choose the other (e.g. `ViT-B-16-quickgelu`), unless the config sets `quick_gelu` explicitly
      (`-quickgelu` names, or the key in a model-config JSON): then the choice is the user's;
    - `hf-hub:` / `local-dir:` names: the config stored with the weights (open_clip's).
    The result is recorded in `identity` (architecture, activation, weights: tag or file + sha256).

    Args:
        name_or_config: an open_clip model name (`ViT-B-16`) or a path to a model-config JSON.
        pretrained: an open_clip pretrained tag (downloads; needs network) or a local checkpoint file;
            None gives random weights from a fixed seed (tests, benchmarks).
        device: where the model lives.
        precision: open_clip precision string (`fp32`, `fp16`, `bf16`, `pure_fp16`, `pure_bf16`, `amp`...).

    Raises:
        ValueError / FileNotFoundError: one line naming the model or file and the cause.
    """
    weight_dtype(precision)  # refuses an unknown precision string
    path = Path(name_or_config)
    model_name = _register_config(path) if path.suffix == ".json" and path.is_file() else name_or_config
    schema = ":" in model_name  # hf-hub: / local-dir: carry their own config and weights
    if model_name not in open_clip.list_models() and not schema:
        raise ValueError(f"unknown open_clip model {name_or_config!r} (not a built-in name or an existing .json config)")
    if schema:
        plan = _WeightsPlan(False, {"source": model_name})
        overrides = {}
    else:
        plan = _plan_weights(name_or_config, model_name, pretrained)
        preprocess = {k: plan.tag_cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in plan.tag_cfg}
        overrides = {"quick_gelu": plan.quick_gelu, "force_preprocess_cfg": preprocess}
    from_file = pretrained is not None and Path(pretrained).is_file() and not schema
    # Without weights, initialise from a fixed seed: the same config always gives the same random
    # model, so separate commands (pretrain, eval, embed) see one model. The caller's RNG is untouched.
    tokenizer = _from_hub(model_name, "tokenizer", lambda: open_clip.get_tokenizer(model_name))
    model = _create_model(name_or_config, model_name, None if from_file else pretrained, device, precision,
                          overrides)
    if from_file and plan.torchscript:
        _load_torchscript_weights(model, pretrained, name_or_config)
    elif from_file:
        try:
            open_clip.load_checkpoint(model, pretrained, strict=True, weights_only=True)
        except Exception as err:  # torch and open_clip raise many kinds; the cause goes into one line
            raise _weights_error(pretrained, name_or_config, err) from None
    if plan.notice:
        warnings.warn(plan.notice, stacklevel=3)
    backbone = OpenCLIPBackbone(model, tokenizer, name=str(name_or_config), pretrained=pretrained)
    architecture = model_name.removesuffix(QUICKGELU_SUFFIX)
    backbone.identity = {"architecture": architecture, "activation": _built_activation(model), "weights": plan.weights}
    return backbone


def _create_model(name_or_config: str, model_name: str, pretrained: str | None, device, precision: str,
                  overrides: dict) -> nn.Module:
    """`open_clip.create_model` from a fixed seed (the caller's RNG untouched), its failures said in one line
    naming the model: a failed download, a mixed-precision cast open_clip cannot make."""
    root_logger = logging.getLogger()
    root_logger.addFilter(_drop_replaced_logs)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")  # resolved by the caller, from the tag
            torch.manual_seed(0)
            return _from_hub(model_name, "text tower", lambda: open_clip.create_model(
                model_name, pretrained=pretrained, device=device, precision=precision, weights_only=True,
                **overrides))
    except RuntimeError as err:
        if str(err).startswith("Failed to download weights"):
            raise _download_error(name_or_config, pretrained, err) from None
        raise
    except AttributeError as err:
        if precision not in ("fp16", "bf16"):
            raise
        # open_clip's mixed cast (`convert_weights_to_lp`) knows only the layer kinds of OpenAI's CLIP
        raise ValueError(f"{name_or_config}: open_clip cannot cast this model to {precision} ({err}); "
                         f"use pure_{precision} (every weight cast) or amp") from None
    finally:
        root_logger.removeFilter(_drop_replaced_logs)


def _from_hub(model_name: str, part: str, build):
    """`build()`, with a Hub download that fails (offline, no network) said in one line naming the model."""
    cfg = open_clip.get_model_config(model_name) or {}
    text_cfg = cfg.get("text_cfg", {})
    hub = [r for r in (text_cfg.get("hf_tokenizer_name") if part == "tokenizer" else text_cfg.get("hf_model_name"),)
           if r and not Path(r).is_dir()]
    try:
        with quiet_transformers():
            return build()
    except OSError as err:
        if not hub:
            raise
        where = "HF_HUB_OFFLINE=1 is set" if os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0") else "no connection"
        raise OSError(
            f"{model_name}: its {part} comes from the Hugging Face Hub ({hub[0]}), not reachable here ({where}) "
            f"and not in the local cache; with network it is downloaded once, or build the model and tokenizer "
            f"yourself and hand them over: pomp.load_backbone(model, tokenizer=...)"
        ) from err


def load_open_clip_structure(name_or_config: str) -> OpenCLIPBackbone:
    """The architecture alone, built on the meta device (no weights, no memory), with its real tokenizer.

    Enough for everything pomp resolves from structure and tokenizer (`Backbone.resolved`), even
    for models too large to build here; nothing can be encoded with it.
    """
    path = Path(name_or_config)
    model_name = _register_config(path) if path.suffix == ".json" and path.is_file() else name_or_config
    schema = ":" in model_name  # hf-hub: / local-dir: carry their own config (and weights, not loaded here)
    if model_name not in open_clip.list_models() and not schema:
        raise ValueError(f"unknown open_clip model {name_or_config!r} (not a built-in name or an existing "
                         ".json config)")
    tokenizer = _from_hub(model_name, "tokenizer", lambda: open_clip.get_tokenizer(model_name))

    def build():
        with torch.device("meta"):
            return open_clip.create_model(model_name, device="meta", pretrained_text=False, load_weights=False)

    model = _from_hub(model_name, "text tower", build)
    return OpenCLIPBackbone(model, tokenizer, name=str(name_or_config), pretrained=None)


def from_open_clip_model(
    model: nn.Module,
    tokenizer,
    name: str | None = None,
    pretrained: str | None = None,
    device: str | torch.device | None = None,
) -> OpenCLIPBackbone:
    """A backbone around an open_clip model object you already hold (no copy is made).

    `tokenizer`: what `open_clip.get_tokenizer(...)` returns for it (any callable taking a list of
    texts and an optional `context_length`, returning `[N, L]` token ids). The model is frozen in
    place (eval mode, no gradients) and moved to `device` when one is given. `name` defaults to the
    model's class name; `pretrained` is recorded as given. A model wrapped in `DataParallel` /
    `DistributedDataParallel` (`.module`) or compiled by `torch.compile` (`._orig_mod`) is unwrapped:
    pomp calls the open_clip model's own methods, never the wrapper's forward.
    """
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)) or hasattr(model, "_orig_mod"):
        model = model.module if hasattr(model, "module") else model._orig_mod
    if not isinstance(model, nn.Module) or not hasattr(model, "visual"):
        raise ValueError(f"expected an open_clip model (with .visual and a text tower), got {type(model).__name__}")
    if tokenizer is None:
        raise ValueError("give the model's tokenizer: "
                         "pomp.load_backbone(model, tokenizer=open_clip.get_tokenizer(name))")
    if device is not None:
        model = model.to("cuda" if device == "auto" and torch.cuda.is_available() else
                         "cpu" if device == "auto" else device)
    backbone = OpenCLIPBackbone(model, tokenizer, name=name or type(model).__name__, pretrained=pretrained)
    backbone.identity = {"architecture": backbone.name, "activation": _built_activation(model),
                         "weights": {"source": pretrained or "model object handed over by the caller"}}
    return backbone
