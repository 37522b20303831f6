"""Hugging Face `transformers` CLIP checkpoints as POMP backbones (`hf:<folder or hub id>`).

The learned context enters through the text embeddings: `embed_tokens` is the token
embedding table alone, and `encode_text_embeddings` replays the installed transformers
version's CLIP text forward module by module from there (position embeddings, causal mask
through the version's attention interface, encoder, final LayerNorm, pooling at the EOT,
text projection). Two calling conventions exist among supported versions:

- transformers 4.x (`CLIPTextTransformer`): the encoder takes a separate 4D additive
  `causal_attention_mask` built by `_create_4d_causal_attention_mask`;
- transformers 5.x (`CLIPTextModel` holds the modules itself): the mask comes from
  `masking_utils.create_causal_mask` for the configured attention implementation (None for
  SDPA, which then runs with `is_causal=True`), and the encoder is called with `is_causal=True`.

Which one applies is read off the encoder's signature, not off a version number.
"""

from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Sequence

import torch

from pomp.backbones.base import Backbone, weight_dtype
from pomp.backbones.identity import SHA_PREFIX, sha256_of
from pomp.data.transforms import ImageSpec

PREFIX = "hf:"

_OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
_OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL resampling codes as stored in processor configs ("resample": 3 == bicubic).
_RESAMPLE_NAMES = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}


def _interpolation_name(resample) -> str:
    if resample is None:
        return "bicubic"
    if isinstance(resample, str):
        return resample.lower()
    try:
        return _RESAMPLE_NAMES.get(int(resample), "bicubic")
    except (TypeError, ValueError):
        return "bicubic"


def _edge(value, default: int) -> int:
    """An int side length from the several forms `size` / `crop_size` take in processor configs."""
    if value is None:
        return default
    if isinstance(value, int):
        return value
    if isinstance(value, dict):
        for key in ("shortest_edge", "height", "width"):
            if key in value and value[key] is not None:
                return int(value[key])
        return default
    if isinstance(value, (list, tuple)) and value:
        return int(value[0])
    return default


class HFCLIPBackbone(Backbone):
    """A frozen `transformers.CLIPModel` whose text tower can be driven from token embeddings.

    Args:
        model: the CLIPModel (any dtype, any device).
        tokenizer: its CLIPTokenizer / CLIPTokenizerFast (must have a pad token).
        name: what it was loaded by (`hf:<folder or hub id>`).
        pretrained: the folder or hub id holding the weights.
        processor_config: the image processor's settings (`_processor_config`; empty: CLIP defaults).
    """

    pooling = "end token (eos id; the largest id in legacy configs)"

    def __init__(self, model, tokenizer, name: str, pretrained: str | None, processor_config: dict | None = None):
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.name = name
        self.pretrained = pretrained
        self.processor_config = dict(processor_config or {})
        text_config = model.config.text_config
        self._text = model.text_model
        self.eos_token_id = getattr(self._text, "eos_token_id", getattr(text_config, "eos_token_id", None))
        self.context_length = int(text_config.max_position_embeddings)
        self.text_width = int(self._text.embeddings.token_embedding.weight.shape[1])
        self.embed_dim = int(model.text_projection.weight.shape[0])
        self.logit_scale = float(model.logit_scale.detach().float().exp().item())
        self.causal = True  # CLIP's text tower always builds a causal mask
        params = inspect.signature(self._text.encoder.forward).parameters
        self._legacy_causal_mask = "causal_attention_mask" in params
        if self.eos_token_id is None:
            raise ValueError(f"{name}: the text config has no eos_token_id; the pooling position is undefined")
        if tokenizer.pad_token_id is None:
            raise ValueError(f"{name}: the tokenizer has no pad token; cannot pad to {self.context_length} tokens")
        # The prompt sits at fixed positions after the start token: pad and truncate at the end.
        tokenizer.padding_side = "right"
        tokenizer.truncation_side = "right"
        self.freeze()

    # --- identity ----------------------------------------------------------------------------
    def describe(self) -> dict:
        import transformers

        desc = super().describe()
        desc.update(
            {
                "library": "transformers",
                "library_version": transformers.__version__,
                "model_type": getattr(self.model.config, "model_type", None),
            }
        )
        commit = getattr(self.model.config, "_commit_hash", None)
        if commit:
            desc["commit"] = commit
        return desc

    # --- text side ---------------------------------------------------------------------------
    def tokenize(self, texts: Sequence[str], context_length: int | None = None) -> torch.Tensor:
        encoded = self.tokenizer(
            list(texts),
            padding="max_length",
            truncation=True,
            max_length=context_length or self.context_length,
            return_tensors="pt",
        )
        return encoded["input_ids"].long()

    def _pool_index(self, tokens: torch.Tensor) -> torch.Tensor:
        """Position of the pooled token, exactly as the text model picks it."""
        ids = tokens.to(dtype=torch.int)
        if self.eos_token_id == 2:
            # Legacy configs (before transformers PR #24773): the EOT is the largest id in the sequence.
            return ids.argmax(dim=-1)
        return (ids == self.eos_token_id).int().argmax(dim=-1)

    def sequence_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.eos_token_id != 2:
            missing = ~(tokens == self.eos_token_id).any(dim=-1)
            if bool(missing.any()):
                row = int(missing.nonzero()[0, 0])
                raise ValueError(
                    f"{self.name}: sequence {row} holds no end token (id {self.eos_token_id}); "
                    "the tokenizer and the model config disagree"
                )
        return self._pool_index(tokens).long() + 1

    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._text.embeddings.token_embedding(tokens)

    def _causal_mask(self, hidden: torch.Tensor) -> tuple[dict, torch.Tensor | None]:
        """Encoder keyword arguments that make its attention causal, as the text model passes them."""
        if self._legacy_causal_mask:
            from transformers.modeling_attn_mask_utils import _create_4d_causal_attention_mask

            mask = _create_4d_causal_attention_mask(hidden.shape[:2], hidden.dtype, device=hidden.device)
            return {"causal_attention_mask": mask}, None
        from transformers.masking_utils import create_causal_mask

        mask = create_causal_mask(config=self._text.config, inputs_embeds=hidden, attention_mask=None, cache=None)
        return {"is_causal": True}, mask

    def encode_text_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        text = self._text
        length = embeddings.shape[1]
        if length > self.context_length:
            raise ValueError(f"sequence of {length} tokens exceeds the context length {self.context_length}")
        dtype = text.embeddings.token_embedding.weight.dtype
        hidden = text.embeddings(inputs_embeds=embeddings.to(dtype))  # + position embeddings [0, length)
        extra, attention_mask = self._causal_mask(hidden)
        out = text.encoder(inputs_embeds=hidden, attention_mask=attention_mask, **extra)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        hidden = text.final_layer_norm(hidden)
        index = self._pool_index(tokens.to(hidden.device))
        pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), index]
        return self.model.text_projection(pooled)

    # --- image side --------------------------------------------------------------------------
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        dtype = self.model.visual_projection.weight.dtype
        features = self.model.get_image_features(pixel_values=pixels.to(dtype))
        if not isinstance(features, torch.Tensor):  # transformers 5 returns the output object
            features = features.pooler_output
        return features

    @property
    def image_spec(self) -> ImageSpec:
        """From the image processor's settings: crop size (the tower's input), resize mode, mean/std, resample.

        A processor that resizes the short side (`size: {"shortest_edge"}`, CLIP) gives `shortest`; one
        that resizes to `{"height", "width"}` without cropping (SigLIP's) gives `squash`. `ImageSpec`
        holds one size: a processor that resizes to a larger short side than it crops (e.g. 256 -> 224)
        is approximated by resizing straight to the crop size.
        """
        cfg = self.processor_config
        image_size = int(self.model.config.vision_config.image_size)
        resize = cfg.get("size")
        crop = cfg.get("crop_size") if cfg.get("do_center_crop") else None
        size = _edge(crop, _edge(resize, image_size))
        squash = isinstance(resize, dict) and "shortest_edge" not in resize and crop is None
        mean = tuple(float(v) for v in cfg.get("image_mean", _OPENAI_MEAN))
        std = tuple(float(v) for v in cfg.get("image_std", _OPENAI_STD))
        return ImageSpec(size=size, mean=mean, std=std, interpolation=_interpolation_name(cfg.get("resample")),
                         resize_mode="squash" if squash else "shortest")


PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")  # transformers 4 / 5 image settings
IMAGE_SETTINGS = ("size", "crop_size", "do_center_crop", "image_mean", "image_std", "resample")


def _processor_config(source: str) -> dict:
    """The image settings of a folder or hub repo, read by transformers' own `AutoImageProcessor.from_pretrained`.

    It finds them wherever transformers wrote them (`preprocessor_config.json` from an image processor's
    `save_pretrained`, `processor_config.json` with an `image_processor` entry from transformers 5's
    `CLIPProcessor.save_pretrained`) and builds the processor class the file names, with that class's
    defaults for what the file leaves out (a SigLIP processor has no center crop; CLIP's has). Returns
    the settings (size, crop_size, do_center_crop, image_mean, image_std, resample); {} with one warning
    when there are none (CLIP's defaults are then used).

    Raises:
        ValueError: a damaged settings file, or a processor without a fixed input size (SigLIP2's
            variable-resolution patches).
    """
    from transformers import AutoImageProcessor

    folder = Path(source)
    present = folder.is_dir() and any((folder / f).is_file() for f in PROCESSOR_FILES)
    try:
        with quiet_transformers():
            processor = AutoImageProcessor.from_pretrained(source)
    except (OSError, ValueError, KeyError) as err:
        if present:  # a damaged file is an error; a missing one means CLIP's defaults
            reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
            raise ValueError(f"{source}: unreadable image processor settings ({reason})") from None
        warnings.warn(f"{source}: no image processor settings ({' or '.join(PROCESSOR_FILES)}); using CLIP's "
                      "default size, mean and std", stacklevel=3)
        return {}
    settings = processor.to_dict()
    if not settings.get("size") and not (settings.get("do_center_crop") and settings.get("crop_size")):
        raise ValueError(f"{source}: {type(processor).__name__} gives no fixed input size (variable-resolution "
                         "inputs); pomp needs a processor that resizes to one size")
    return {k: settings[k] for k in IMAGE_SETTINGS if settings.get(k) is not None}


@contextmanager
def quiet_transformers():
    """transformers' loading chatter kept off the user's terminal while a model is built: its load report (a
    table with terminal escape codes, e.g. the Hub's roberta-base pooler that open_clip's text tower leaves
    out) and progress bars; pomp reports what matters in one line. Nothing to quiet without transformers."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:
        yield
        return
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def _check_tokenizer(label: str, tokenizer, vocab_size: int) -> None:
    """Refuse a tokenizer that cannot serve the model: one without a vocabulary (transformers builds a
    CLIPTokenizer of its special tokens alone when a folder lacks the tokenizer files, and every word
    becomes the unknown token) or with more tokens than the model embeds."""
    words = tokenizer("a photo of a cat", add_special_tokens=False)["input_ids"]
    if not words or all(t == tokenizer.unk_token_id for t in words):
        raise ValueError(f"{label}: the tokenizer knows no words ({len(tokenizer)} tokens): the folder lacks the "
                         "tokenizer files (vocab.json and merges.txt, or tokenizer.json); save the tokenizer too")
    if len(tokenizer) > vocab_size:
        raise ValueError(f"{label}: the tokenizer has {len(tokenizer)} tokens, the model embeds {vocab_size}")


def _weights_identity(source: str, model) -> dict:
    """`{"folder"|"hub_id", "file", "sha256", "commit"}` of the weights a CLIP folder or hub repo holds."""
    folder = Path(source)
    identity: dict = {"folder": folder.name} if folder.is_dir() else {"hub_id": source}
    for name in ("model.safetensors", "pytorch_model.bin"):
        if (folder / name).is_file():
            identity.update(file=name, sha256=sha256_of(folder / name)[:SHA_PREFIX])
            break
    commit = getattr(model.config, "_commit_hash", None)
    if commit:
        identity["commit"] = commit
    return identity


def load_hf_clip(
    name: str,
    pretrained: str | None = None,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
) -> HFCLIPBackbone:
    """Build a frozen backbone from `hf:<folder>` or `hf:<hub id>` (hub ids need network or the HF cache).

    Args:
        name: `hf:` followed by a local folder written by `save_pretrained` (config, weights,
            tokenizer files, the image processor's settings in `preprocessor_config.json` or
            transformers 5's `processor_config.json`) or a hub id.
        pretrained: must be None or the same folder / hub id: the weights come from there.
        device: where the model lives.
        precision: `fp32`, `fp16`, `bf16` (weights cast); `amp...` keep fp32 weights.
    """
    source = name[len(PREFIX) :] if name.startswith(PREFIX) else name
    if not source:
        raise ValueError(f"{name!r}: give a folder or hub id after 'hf:'")
    if pretrained is not None and pretrained != source:
        raise ValueError(f"{name}: weights come from {source!r}; pretrained={pretrained!r} cannot override them")
    dtype = weight_dtype(precision)
    looks_local = source.startswith((".", "/", "~")) or Path(source).exists() or source.count("/") > 1
    if looks_local and not Path(source).expanduser().is_dir():
        raise FileNotFoundError(f"{source}: no such model folder (expected a save_pretrained directory)")
    if looks_local:
        source_path = str(Path(source).expanduser())
    else:
        source_path = source
    try:
        from transformers import AutoConfig, AutoTokenizer, CLIPModel
    except ImportError as err:  # pragma: no cover - transformers is a dependency of pomp
        raise ImportError(f"{name}: hf: backbones need the transformers package, which failed to import ({err})") from None
    label = name if name.startswith(PREFIX) else PREFIX + name
    try:
        with quiet_transformers():
            model_type = getattr(AutoConfig.from_pretrained(source_path), "model_type", None)
            if model_type != "clip":
                raise ValueError(f"{label}: a {model_type!r} model, not CLIP; the hf: backbone reads transformers "
                                 "CLIPModel folders (config model_type 'clip')")
            model, loading = CLIPModel.from_pretrained(source_path, output_loading_info=True)
            tokenizer = AutoTokenizer.from_pretrained(source_path)
    except OSError as err:
        reason = (str(err).strip().splitlines() or [type(err).__name__])[0]
        raise OSError(f"{label}: could not load a CLIP model and tokenizer ({reason})") from None
    absent = sorted(loading.get("missing_keys", ())) + sorted(k for k, *_ in loading.get("mismatched_keys", ()))
    if absent:
        raise ValueError(f"{label}: {len(absent)} weights of the CLIP model are missing from the folder or have "
                         f"another shape (e.g. {absent[0]}); they would be random")
    _check_tokenizer(label, tokenizer, int(model.config.text_config.vocab_size))
    model = model.to(device=device, dtype=dtype)
    backbone = HFCLIPBackbone(
        model, tokenizer, name=label, pretrained=source, processor_config=_processor_config(source_path),
    )
    tower_size = int(model.config.vision_config.image_size)
    if backbone.image_spec.size != tower_size:  # the vision embeddings refuse any other size at the first image
        raise ValueError(f"{label}: the image processor makes {backbone.image_spec.size} px inputs but the vision "
                         f"tower takes {tower_size} px (vision_config.image_size)")
    text_config = model.config.text_config
    backbone.identity = {
        "architecture": f"hf:{getattr(model.config, 'model_type', 'clip')}",
        "activation": getattr(text_config, "hidden_act", None),
        "weights": _weights_identity(source_path, model),
    }
    return backbone


__all__ = ["HFCLIPBackbone", "load_hf_clip"]
