"""What a prompt needs from a vision-language model.

A backbone is a frozen dual encoder. The prompt learner never touches model internals: it
tokenizes prompt texts, embeds the tokens, swaps the learned context in where the placeholder
words landed, and hands the embeddings back to the backbone's text tower.

Where the placeholders land is not assumed: `prompt_layout` finds them by tokenizing probe
texts with the backbone's own tokenizer (a start token, a language code, or nothing at all
may come first). Which positions the pooled feature depends on is the backbone's to say
(`sequence_lengths`): through the end token on a causal tower, the non-pad tokens when padding
is masked, the whole context otherwise.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Sequence

import torch
from torch import nn

if TYPE_CHECKING:  # the transforms module imports torchvision: loaded when a transform is built
    from pomp.data.transforms import ImageSpec

# Placeholder words tried in order: the first the tokenizer maps to exactly one token per word
# (and a word that cannot merge with a class name after a space) reserves the context positions.
# "X" is the official POMP/CoOp placeholder; its embeddings are replaced, so the word never matters
# to the features, only to where the following class name lands.
PLACEHOLDER_CANDIDATES = ("X", "x", "a", "the")
PROBE_WORD = "cat"  # a class name used only to locate positions; it must differ from the placeholder

# open_clip's precision strings -> the dtype a backbone's weights are cast to; "amp*" keep float32 weights
# (autocast at run time). One table for every backbone family (offline accepts the plain three).
WEIGHT_DTYPES = {
    "fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16,
    "pure_fp16": torch.float16, "pure_bf16": torch.bfloat16,
    "amp": torch.float32, "amp_bf16": torch.float32, "amp_bfloat16": torch.float32,
}
# a run's `--precision` (pomp pretrain, features) -> the autocast dtype on CUDA; fp32 runs without autocast
AUTOCAST_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def weight_dtype(precision: str, accepted=WEIGHT_DTYPES) -> torch.dtype:
    """The weights' dtype of `precision` (a key of `WEIGHT_DTYPES`, or of the `accepted` subset).

    Raises:
        ValueError: `unknown precision '<p>' (one of ...)` for any other string.
    """
    if precision not in accepted:
        raise ValueError(f"unknown precision {precision!r} (one of {', '.join(accepted)})")
    return WEIGHT_DTYPES[precision]


@dataclass(frozen=True)
class PromptLayout:
    """Where a prompt "P P ... P <name>." puts its learned context, as the tokenizer laid it out.

    Attributes:
        start: tokens before the first placeholder (the start token, a language code; 0 for
            tokenizers without a start token, e.g. T5/Gemma sentencepiece).
        n_ctx: number of placeholders (= context vectors).
        placeholder: the placeholder word used in the prompt text.
        placeholder_ids: the `n_ctx` token ids at positions `start .. start + n_ctx - 1` (the first
            may differ from the others: byte-level BPE marks a word after a space).
    """

    start: int
    n_ctx: int
    placeholder: str
    placeholder_ids: tuple[int, ...]

    @property
    def positions(self) -> list[int]:
        return list(range(self.start, self.start + self.n_ctx))


def _common_prefix(a: torch.Tensor, b: torch.Tensor) -> int:
    differ = (a != b).nonzero()
    return int(differ[0, 0]) if len(differ) else int(a.shape[0])


class Backbone(nn.Module, ABC):
    """A frozen dual encoder behind the small interface the prompt learner uses.

    Attributes:
        name: model name or config path it was built from.
        pretrained: weights it was loaded with (None: random init).
        text_width: width of the token embeddings, i.e. of one context vector.
        embed_dim: width of the joint image-text space.
        logit_scale: the model's own (frozen) temperature, already exponentiated.
        logit_bias: the constant a sigmoid-loss model (SigLIP) adds to every logit; None for
            softmax (CLIP) models. A constant shift cancels in softmax cross-entropy and in every
            ranking, so it changes no loss, gradient or prediction of pomp's (see docs/models.md).
        causal: the text tower attends causally.
        identity: what the loader resolved (`architecture`, `activation`, `weights`; see
            `pomp.backbones.identity`), added to `describe()`.
    """

    name: str
    pretrained: str | None
    text_width: int
    embed_dim: int
    logit_scale: float
    logit_bias: float | None = None
    causal: bool = True
    identity: dict | None = None

    @abstractmethod
    def tokenize(self, texts: Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Token ids `[C, L]` (long), padded (and cut) to `context_length`, by default the model's."""

    @abstractmethod
    def sequence_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per sequence, how many leading positions determine its pooled feature.

        Cutting every sequence of a batch after the largest of these leaves every feature unchanged;
        where no cut is exact (a non-causal tower without a padding mask, "last token" pooling), it
        is the full context length.
        """

    @abstractmethod
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings `[C, L, text_width]` (no positional embedding)."""

    @abstractmethod
    def encode_text_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Run the text tower from token embeddings; `tokens` (same `[C, L]`) locate pooling and padding.

        Returns un-normalised features `[C, embed_dim]`.
        """

    @abstractmethod
    def encode_images(self, pixels: torch.Tensor) -> torch.Tensor:
        """Un-normalised image features `[B, embed_dim]` from preprocessed pixels."""

    def encode_dense_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """Un-normalised per-location features `[B, embed_dim, h, w]` in the joint space (optional).

        A location is scored against class features exactly as a whole image is (cosine), which is
        what training-free segmentation and RoI-pooled region classification (`pomp.dense`) need.
        """
        raise NotImplementedError(
            f"backbone {type(self).__name__} ({self.name}) has no dense feature path, which segmentation and "
            "RoI-pooled region classification need; crop-and-encode region classification works without one"
        )

    def check_dense_input(self, size: int) -> None:
        """Raise before any image is read when dense features cannot be computed for `size` x `size` inputs.

        NotImplementedError: the backbone has no dense path; ValueError: its image tower takes no such input.
        """
        if type(self).encode_dense_features is Backbone.encode_dense_features:
            Backbone.encode_dense_features(self, None)  # the one message for a missing dense path

    @property
    @abstractmethod
    def image_spec(self) -> ImageSpec:
        """Input size, mean/std and interpolation of the image tower."""

    # --- derived from the tokenizer ----------------------------------------------------------
    def tokenize_checked(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Tokens `[C, L]` as `tokenize` gives them, and `[C]` bool: the text fits the context whole.

        A text fits when nothing of it was cut: tokenized with one more position of context it gives
        the same `L` tokens followed by padding. So a text whose end token lands in the last position
        (an exact fit) is accepted, and a cut is seen whatever the tokenizer does at the boundary
        (CLIP's tokenizer overwrites the last kept token with the end token, Hugging Face's drops
        text and re-appends its special tokens).
        """
        texts = list(texts)
        tokens = self.tokenize(texts)
        length = tokens.shape[1]
        wider = self.tokenize(texts, context_length=length + 1)
        pad = self.tokenize([""], context_length=length + 1)[0, -1]
        fits = (wider[:, :length] == tokens).all(dim=1) & (wider[:, length] == pad)
        return tokens, fits

    def padding_inside(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[C]` bool: the text holds the pad token before its end, where the text tower would not read it as
        the model reads the same ids (none by default; see `OpenCLIPBackbone`)."""
        return torch.zeros(tokens.shape[0], dtype=torch.bool)

    def prompt_layout(self, n_ctx: int) -> PromptLayout:
        """Where `n_ctx` placeholders land in "P ... P <name>." for this tokenizer (see `PromptLayout`)."""
        return _prompt_layout(self, int(n_ctx))

    @property
    def prompt_prefix_length(self) -> int:
        """Tokens before the learned context (the start token, if the tokenizer adds one)."""
        return self.prompt_layout(1).start

    def words_span(self, words: str) -> tuple[int, int]:
        """`(start, n)`: the tokens of `words` occupy positions `start .. start + n - 1` when a class name follows.

        Found as where "<words> cat." and "<words> P cat." (P the placeholder) first differ.
        """
        placeholder = self.prompt_layout(1).placeholder
        a, b = self.tokenize([f"{words} {PROBE_WORD}.".strip(), f"{words} {placeholder} {PROBE_WORD}.".strip()])
        start = self.prompt_layout(1).start
        return start, _common_prefix(a, b) - start

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """The model's own text features for plain strings (hand-crafted prompts)."""
        tokens = self.tokenize(texts).to(self.device)
        return self.encode_tokens(tokens)

    def encode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Un-normalised text features `[C, embed_dim]` of token ids, cut where exact."""
        tokens = tokens[:, : int(self.sequence_lengths(tokens).max())].to(self.device)
        return self.encode_text_embeddings(self.embed_tokens(tokens), tokens)

    def eval_transform(self) -> Callable:
        """Test-time preprocessing: resize short side, center crop, normalise."""
        from pomp.data.transforms import eval_transform

        return eval_transform(self.image_spec)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def describe(self) -> dict:
        """Identity of the backbone, stored in prompt and result files and keying feature caches.

        `weights_dtype` appears when the weights are not all float32 (e.g. "float16+float32" for
        open_clip's mixed fp16 cast), so features computed at one precision are not taken for another's.
        """
        info = {
            "family": type(self).__name__,
            "name": self.name,
            "pretrained": self.pretrained,
            "text_width": self.text_width,
            "embed_dim": self.embed_dim,
            **(self.identity or {}),
        }
        dtypes = sorted({str(p.dtype).removeprefix("torch.") for p in self.parameters() if p.is_floating_point()})
        if dtypes and dtypes != ["float32"]:
            info["weights_dtype"] = "+".join(dtypes)
        return info

    # What `pomp backbones NAME` prints beyond the layout; subclasses add their tower details.
    pooling: str = "unspecified"
    dense_path: str | None = None

    def resolved(self, n_ctx: int = 4) -> dict:
        """What pomp learned about this model: prompt layout, pooling, causality, widths, dense path."""
        layout = self.prompt_layout(n_ctx)
        probe = self.tokenize([f"{' '.join([layout.placeholder] * n_ctx)} {PROBE_WORD}."])
        length = int(self.sequence_lengths(probe)[0])
        context = int(probe.shape[1])
        return {
            "name": self.name,
            "family": type(self).__name__,
            "context_length": context,
            "prefix_tokens": layout.start,
            "start_token": layout.start > 0,
            "placeholder": layout.placeholder,
            f"placeholder_positions (n_ctx={n_ctx})": layout.positions,
            "causal": bool(self.causal),
            "pooling": self.pooling,
            "cut_exact": length < context,
            "text_width": self.text_width,
            "embed_dim": self.embed_dim,
            "logit_scale": self.logit_scale if self.logit_scale == self.logit_scale else "from the weights",
            "logit_bias": self.logit_bias,
            "dense_features": self.dense_path or "none",
        }

    def freeze(self) -> "Backbone":
        """Eval mode, no parameter takes a gradient."""
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)
        return self

    def train(self, mode: bool = True) -> "Backbone":
        # Frozen towers stay in eval mode (dropout off, norm statistics fixed) whatever the caller asks.
        return super().train(False)


def _prompt_layout(backbone: Backbone, n_ctx: int) -> PromptLayout:
    """Probe the tokenizer: the first placeholder word that gives one token per word, and where it lands.

    With P the placeholder and "cat" a probe class name:
      start    = where "cat." and "P cat." first differ (what comes before any text);
      n tokens = where "P^n cat." and "P^(n+1) cat." first differ, minus start; one token per
                 placeholder means n tokens == n_ctx, and then the n_ctx ids are the placeholders.
    Cached on the backbone per n_ctx (the tokenizer does not change).
    """
    cache = backbone.__dict__.setdefault("_prompt_layouts", {})
    if n_ctx in cache:
        return cache[n_ctx]
    if n_ctx < 1:
        raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
    if not bool(backbone.tokenize_checked([f"{PROBE_WORD}."])[1].all()):
        raise ValueError(f"{backbone.name}: the tokenizer pads or cuts on the left, so the context positions would "
                         "move with each class name; give it padding_side='right' and truncation_side='right'")
    tried = []
    for word in PLACEHOLDER_CANDIDATES:
        if word == PROBE_WORD:
            continue
        run = " ".join([word] * n_ctx)
        bare, one, a, b = backbone.tokenize(
            [f"{PROBE_WORD}.", f"{word} {PROBE_WORD}.", f"{run} {PROBE_WORD}.", f"{run} {word} {PROBE_WORD}."]
        )
        start = _common_prefix(bare, one)
        if bool((a == b).all()):  # both cut at the same length: the placeholders alone fill the context
            raise ValueError(f"n_ctx={n_ctx} does not fit the text context of {a.shape[0]} tokens")
        span = _common_prefix(a, b) - start
        if span == n_ctx:
            ids = tuple(int(t) for t in a[start : start + n_ctx])
            cache[n_ctx] = PromptLayout(start, n_ctx, word, ids)
            return cache[n_ctx]
        tried.append(f"{word!r} -> {span} tokens for {n_ctx}")
    raise ValueError(
        f"{backbone.name}: no placeholder word maps to one token per word with this tokenizer ({'; '.join(tried)}), "
        "so the context positions cannot be reserved"
    )
