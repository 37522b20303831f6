"""Any open_clip CLIP as a POMP backbone: built-in names, model-config JSON files, local checkpoints."""

from __future__ import annotations

import json
import logging
import os
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import open_clip
import torch
import torch.nn.functional as F
from open_clip.transformer import QuickGELU, ResidualAttentionBlock, TextTransformer, text_global_pool
from torch import nn

from pomp.backbones.base import Backbone, ImageSpec
from pomp.backbones.identity import SHA_PREFIX, release_of_file, sha256_of
from pomp.torchfile import is_torchscript_archive, torchscript_tensors

CHECKPOINT_SUFFIXES = {".pt", ".pth", ".bin", ".safetensors", ".npz", ".tar"}
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

    def texts_overflow(self, texts: Sequence[str]) -> list[bool]:
        """Exact for open_clip's CLIP tokenizer: start token + BPE tokens + end token vs the context length."""
        tok = self.tokenizer
        if isinstance(tok, open_clip.tokenizer.SimpleTokenizer) and tok.reduction_fn is None:
            return [len(tok.encode(text)) + 2 > tok.context_length for text in texts]
        return super().texts_overflow(texts)

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
        # fp16/bf16 weights (precision="fp16"/"bf16") take pixels of their own dtype, on CPU as on CUDA
        return self.model.encode_image(pixels.to(_pixel_dtype(self.model.visual)))

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
            resize_mode=cfg.get("resize_mode") or "shortest",  # e.g. "squash" for DFN / SigLIP / CLIPA tags
        )


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


# open_clip precision strings: weights cast to fp16/bf16 ("fp16", "bf16", "pure_*") or kept fp32.
PRECISIONS = ("fp32", "fp16", "bf16", "pure_fp16", "pure_bf16", "amp", "amp_bf16", "amp_bfloat16")
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
    if pretrained is None:
        return _WeightsPlan(quick_gelu, {"random_init_seed": 0})
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
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r} (one of {', '.join(PRECISIONS)})")
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
    root_logger = logging.getLogger()
    root_logger.addFilter(_drop_replaced_logs)
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="QuickGELU mismatch")  # resolved above, from the tag's config
            torch.manual_seed(0)
            model = open_clip.create_model(model_name, pretrained=None if from_file else pretrained, device=device,
                                           precision=precision, weights_only=True, **overrides)
    except RuntimeError as err:
        if str(err).startswith("Failed to download weights"):
            raise _download_error(name_or_config, pretrained, err) from None
        raise
    finally:
        root_logger.removeFilter(_drop_replaced_logs)
    if from_file and plan.torchscript:
        _load_torchscript_weights(model, pretrained, name_or_config)
    elif from_file:
        try:
            open_clip.load_checkpoint(model, pretrained, strict=True, weights_only=True)
        except Exception as err:  # torch and open_clip raise many kinds; the cause goes into one line
            raise _weights_error(pretrained, name_or_config, err) from None
    if plan.notice:
        warnings.warn(plan.notice, stacklevel=3)
    tokenizer = open_clip.get_tokenizer(model_name)
    backbone = OpenCLIPBackbone(model, tokenizer, name=str(name_or_config), pretrained=pretrained)
    architecture = model_name.removesuffix(QUICKGELU_SUFFIX)
    backbone.identity = {"architecture": architecture, "activation": _built_activation(model), "weights": plan.weights}
    return backbone
