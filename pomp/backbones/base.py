"""What a prompt needs from a vision-language model.

A backbone is a frozen dual encoder. The prompt learner never touches model internals: it
tokenizes prompt texts, embeds the tokens, swaps the learned context in after the first
(start) token, and hands the embeddings back to the backbone's text tower.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn


RESIZE_MODES = ("shortest", "squash", "longest")


@dataclass(frozen=True)
class ImageSpec:
    """Preprocessing the image tower expects.

    `resize_mode` (open_clip's names) says how a test image becomes `size x size`: `shortest` resizes the
    short side and center-crops (CLIP); `squash` resizes both sides, aspect ratio lost, no crop (SigLIP,
    DFN, CLIPA); `longest` resizes the long side and pads to the square with zeros.
    """

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bicubic"
    resize_mode: str = "shortest"

    def __post_init__(self):
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"unknown resize mode {self.resize_mode!r} (one of {', '.join(RESIZE_MODES)})")


class Backbone(nn.Module, ABC):
    """A frozen dual encoder behind the small interface the prompt learner uses.

    Attributes:
        name: model name or config path it was built from.
        pretrained: weights it was loaded with (None: random init).
        text_width: width of the token embeddings, i.e. of one context vector.
        embed_dim: width of the joint image-text space.
        logit_scale: the model's own (frozen) temperature, already exponentiated.
        causal: the text tower attends causally, so cutting a sequence after its pooling
            token leaves the pooled feature unchanged.
        prompt_prefix_length: number of tokens before the learned context (the start token).
        identity: what the loader resolved (`architecture`, `activation`, `weights`; see
            `pomp.backbones.identity`), added to `describe()`.
    """

    name: str
    pretrained: str | None
    text_width: int
    embed_dim: int
    logit_scale: float
    causal: bool = True
    prompt_prefix_length: int = 1
    identity: dict | None = None

    @abstractmethod
    def tokenize(self, texts: Sequence[str]) -> torch.Tensor:
        """Token ids `[C, L]` (long), padded to the model's context length."""

    @abstractmethod
    def sequence_lengths(self, tokens: torch.Tensor) -> torch.Tensor:
        """Per sequence, the number of leading tokens that determine its pooled feature."""

    def texts_overflow(self, texts: Sequence[str]) -> list[bool]:
        """Per text, whether it is longer than the text context, so that `tokenize` would cut it.

        This default reads the tokenized texts: on a causal tower a text whose pooling token sits in the
        last position counts as too long, since a text that fills the context exactly and a cut one
        (the end token forced into the last position) look the same there. Backbones whose tokenizer
        counts tokens without cutting override it, so exact fits pass.
        """
        tokens = self.tokenize(texts)
        return ((self.sequence_lengths(tokens) >= tokens.shape[1]) & self.causal).tolist()

    @abstractmethod
    def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """Token embeddings `[C, L, text_width]` (no positional embedding)."""

    @abstractmethod
    def encode_text_embeddings(self, embeddings: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Run the text tower from token embeddings; `tokens` (same `[C, L]`) locate pooling.

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

    @property
    @abstractmethod
    def image_spec(self) -> ImageSpec:
        """Input size, mean/std and interpolation of the image tower."""

    def encode_texts(self, texts: Sequence[str]) -> torch.Tensor:
        """The model's own text features for plain strings (hand-crafted prompts)."""
        tokens = self.tokenize(texts).to(self.device)
        return self.encode_text_embeddings(self.embed_tokens(tokens), tokens)

    def eval_transform(self) -> Callable:
        """Test-time preprocessing: resize short side, center crop, normalise."""
        from pomp.data.transforms import eval_transform

        return eval_transform(self.image_spec)

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    def describe(self) -> dict:
        """Identity of the backbone, stored in prompt and result files."""
        return {
            "family": type(self).__name__,
            "name": self.name,
            "pretrained": self.pretrained,
            "text_width": self.text_width,
            "embed_dim": self.embed_dim,
            **(self.identity or {}),
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
