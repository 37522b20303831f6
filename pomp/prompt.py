"""The learned prompt: one shared context `ctx [n_ctx, width]`, placed where its placeholders land.

Text of class c: "X X ... X <name>." (n_ctx placeholders). After tokenizing, the embeddings of
the placeholder positions (after the start token, or first where the tokenizer adds none) are
replaced by `ctx`; everything else is the frozen model's own.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from pomp.backbones.base import PROBE_WORD, Backbone
from pomp.backbones.identity import identity_differences
from pomp.data.names import clean_classname  # re-exported: the prompt side has always offered it
from pomp.deprecation import moved_names, renamed_keywords
from pomp.io import atomic_write_json, atomic_write_safetensors, read_json
from pomp.version import __version__

PLACEHOLDER = "X"
FORMAT_NAME = "pomp-prompt"
FORMAT_VERSION = 1


@dataclass
class ClassTokens:
    """A vocabulary's prompt tokens, tokenized once and reused every step.

    Attributes:
        classnames: the cleaned class names, in class-id order.
        tokens: `[N, L]` token ids of "X ... X <name>.".
        lengths: `[N]` leading tokens that determine each pooled feature (`Backbone.sequence_lengths`).
        start: position of the first context vector (tokens before it: the start token, if any).
    """

    classnames: list[str]
    tokens: torch.Tensor
    lengths: torch.Tensor
    start: int = 1

    def __len__(self) -> int:
        return len(self.classnames)


def check_fit(backbone: Backbone, texts: Sequence[str], labels: Sequence[str], source: str | None) -> torch.Tensor:
    """Tokens `[N, L]` of `texts`; a ValueError naming `source` and the first text that was cut (or that holds
    the pad token where the text tower would read it otherwise than the model does, `Backbone.padding_inside`).

    `labels[i]` says what `texts[i]` is in the message (e.g. "class 'tabby cat'"). An exact fit (the
    end token in the last position) is accepted (`Backbone.tokenize_checked`).
    """
    tokens, fits = backbone.tokenize_checked(texts)
    if not bool(fits.all()):
        bad = (~fits).nonzero()[:, 0].tolist()
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"{source or 'class list'}: {labels[bad[0]]}{more} does not fit the text context of "
                         f"{tokens.shape[1]} tokens of backbone {backbone.name!r}; shorten it")
    inside = backbone.padding_inside(tokens)
    if bool(inside.any()):
        bad = inside.nonzero()[:, 0].tolist()
        more = f" (and {len(bad) - 1} more)" if len(bad) > 1 else ""
        raise ValueError(f"{source or 'class list'}: {labels[bad[0]]}{more} holds the tokenizer's padding token, "
                         f"which the text tower of backbone {backbone.name!r} masks out; rename it")
    return tokens


def _paths(path: str | Path) -> tuple[Path, Path]:
    """`x.safetensors` -> (x.safetensors, x.json); a directory -> (dir/prompt.safetensors, dir/prompt.json)."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return path, path.with_suffix(".json")
    if path.suffix == ".json":
        return path.with_suffix(".safetensors"), path
    return path / "prompt.safetensors", path / "prompt.json"


class Prompt(nn.Module):
    """A learned context shared by all classes (CoOp-style, class token at the end)."""

    def __init__(self, ctx: torch.Tensor, meta: dict | None = None):
        super().__init__()
        if ctx.dim() != 2:
            raise ValueError(f"context must be [n_ctx, width], got shape {tuple(ctx.shape)}")
        self.ctx = nn.Parameter(ctx.detach().clone().float())
        self.meta = dict(meta or {})

    @property
    def n_ctx(self) -> int:
        return self.ctx.shape[0]

    @property
    def width(self) -> int:
        return self.ctx.shape[1]

    # --- construction ------------------------------------------------------------------------
    @classmethod
    @renamed_keywords(init="words")
    def init(cls, backbone: Backbone, n_ctx: int | None = 4, words: str | None = None, seed: int = 0) -> "Prompt":
        """A new context: N(0, 0.02) from `seed`, or the token embeddings of `words` (e.g. "a photo of a").

        With `words`, n_ctx is their number of tokens (as they tokenize before a class name, so the
        prompt then equals the hand-crafted "<words> <name>." exactly); a different n_ctx is an
        error. The context must leave room for a one-word class name and the end of the prompt.
        The words are recorded as `meta["init"]` (the prompt file's key); `init=` is the old name of
        `words=`, still accepted with a DeprecationWarning.
        """
        if words:
            words = " ".join(words.split())
            text = f"{words} {PROBE_WORD}."
            check_fit(backbone, [text], [f"init {words!r}"], "ctx_init")
            start, n_words = backbone.words_span(words)
            if n_ctx is not None and n_ctx != n_words:
                raise ValueError(f"init {words!r} is {n_words} tokens but n_ctx={n_ctx}; pass n_ctx={n_words}")
            tokens = backbone.tokenize([text]).to(backbone.device)
            with torch.no_grad():
                ctx = backbone.embed_tokens(tokens)[0, start : start + n_words].float().cpu()
        else:
            if n_ctx is None or n_ctx < 1:
                raise ValueError(f"n_ctx must be >= 1, got {n_ctx}")
            layout = backbone.prompt_layout(n_ctx)
            run = " ".join([layout.placeholder] * n_ctx)
            tokens, fits = backbone.tokenize_checked([f"{run} {PROBE_WORD}."])
            if not bool(fits.all()):
                raise ValueError(f"n_ctx={n_ctx} leaves no room for a class name in the text context of "
                                 f"{tokens.shape[1]} tokens")
            generator = torch.Generator().manual_seed(seed)
            ctx = torch.randn(n_ctx, backbone.text_width, generator=generator) * 0.02
        meta = {"backbone": backbone.describe(), "init": words, "seed": seed}
        return cls(ctx, meta).to(backbone.device)

    # --- text preparation --------------------------------------------------------------------
    def prompt_texts(self, classnames: Sequence[str], placeholder: str = PLACEHOLDER) -> list[str]:
        prefix = " ".join([placeholder] * self.n_ctx)
        return [f"{prefix} {clean_classname(name)}." for name in classnames]

    def tokenize_classes(self, backbone: Backbone, classnames: Sequence[str], source: str | None = None) -> ClassTokens:
        """Tokenize every class prompt once.

        The context positions come from the backbone's tokenizer (`Backbone.prompt_layout`): after a
        start token or at position 0. Refused with one line naming `source` (the names file or data
        the classes came from) and the class: a prompt that does not fit the text context whole
        (an exact fit is accepted), or placeholders the class name merged into.
        """
        self.check_compatible(backbone)
        names = [clean_classname(n) for n in classnames]
        if not names:
            raise ValueError(f"{source or 'class list'}: empty class list")
        layout = backbone.prompt_layout(self.n_ctx)
        texts = self.prompt_texts(names, layout.placeholder)
        tokens = check_fit(backbone, texts, [f"class {n!r} (with {self.n_ctx} context vectors)" for n in names], source)
        placeholders = tokens[:, layout.start : layout.start + self.n_ctx]
        merged = (placeholders != torch.tensor(layout.placeholder_ids)).any(dim=1)
        if bool(merged.any()):
            bad = names[int(merged.nonzero()[0, 0])]
            raise ValueError(f"{source or 'class list'}: the tokenizer merged class name {bad!r} into the context "
                             "placeholders")
        return ClassTokens(names, tokens, backbone.sequence_lengths(tokens), layout.start)

    def check_compatible(self, backbone: Backbone) -> None:
        """Refuse a backbone of another text width; warn once, in one line, about one that is another model.

        A context trained on one CLIP runs on any CLIP of the same width and gives other numbers there, so
        the backbone the prompt records (`meta["backbone"]`: architecture, activation, weights) is compared
        with `backbone.describe()` (see `pomp.backbones.identity`).
        """
        source = self.meta.get("source", "prompt")
        if backbone.text_width != self.width:
            raise ValueError(
                f"{source}: context width {self.width} does not match the text width {backbone.text_width} "
                f"of backbone {backbone.name!r}"
            )
        trained = self.meta.get("backbone")
        used = backbone.describe()
        key = repr(sorted(used.items()))
        if isinstance(trained, dict) and key not in getattr(self, "_identity_checked", set()):
            self._identity_checked = getattr(self, "_identity_checked", set()) | {key}
            differences = identity_differences(trained, used)
            if differences:
                warnings.warn(f"{source}: prompt trained with another backbone than {backbone.name} "
                              f"({'; '.join(differences)}); its class features will differ from training",
                              stacklevel=2)

    # --- encoding ----------------------------------------------------------------------------
    @renamed_keywords(vocab="class_tokens")
    def forward(
        self, backbone: Backbone, class_tokens: ClassTokens, ids: torch.Tensor | None = None, length_buckets: int = 1
    ) -> torch.Tensor:
        """L2-normalised class features `[len(ids), D]` of classes `ids` (all when None), with graph to ctx.

        Sequences are cut after the longest `class_tokens.lengths` among `ids` (`Backbone.sequence_lengths`):
        exact on causal text towers, since no token before the EOT attends to what follows it, and
        with a padding mask on non-causal ones; towers where no cut is exact run the full context.
        With `length_buckets` > 1 the classes are sorted by length and encoded in that many groups,
        each cut to its own longest sequence: less padding, same features, still one call (so DDP
        sees one forward).
        """
        if ids is None:
            ids = torch.arange(len(class_tokens))
        ids = ids.cpu()
        if length_buckets > 1 and len(ids) > length_buckets:
            order = torch.argsort(class_tokens.lengths[ids], stable=True)
            groups = torch.tensor_split(ids[order], length_buckets)
            features = torch.cat([self._encode(backbone, class_tokens, g) for g in groups if len(g)])
            return features[torch.argsort(order)]
        return self._encode(backbone, class_tokens, ids)

    def _encode(self, backbone: Backbone, class_tokens: ClassTokens, ids: torch.Tensor) -> torch.Tensor:
        lengths = class_tokens.lengths[ids]
        tokens = class_tokens.tokens[ids, : int(lengths.max())].to(backbone.device)
        with torch.no_grad():
            embeddings = backbone.embed_tokens(tokens)
        start = class_tokens.start
        ctx = self.ctx.to(embeddings.dtype).unsqueeze(0).expand(len(ids), -1, -1)
        embeddings = torch.cat([embeddings[:, :start], ctx, embeddings[:, start + self.n_ctx :]], dim=1)
        features = backbone.encode_text_embeddings(embeddings, tokens)
        return F.normalize(features.float(), dim=-1)

    def encode_class_features(
        self,
        backbone: Backbone,
        classnames: Sequence[str] | ClassTokens,
        chunk_size: int | None = 1024,
        ids: torch.Tensor | None = None,
        source: str | None = None,
    ) -> torch.Tensor:
        """Class features `[C, D]`, L2-normalised, in chunks of similar lengths.

        Keeps the graph to `ctx` when grad is enabled (use `torch.no_grad()` for evaluation). `source`
        (the names file or data the classes came from) is named if a class does not fit.
        """
        class_tokens = (classnames if isinstance(classnames, ClassTokens)
                 else self.tokenize_classes(backbone, classnames, source))
        ids = torch.arange(len(class_tokens)) if ids is None else ids.cpu()
        if chunk_size is None or len(ids) <= chunk_size:
            return self(backbone, class_tokens, ids)
        order = torch.argsort(class_tokens.lengths[ids], stable=True)
        chunks = [self(backbone, class_tokens, ids[order[i : i + chunk_size]]) for i in range(0, len(ids), chunk_size)]
        features = torch.cat(chunks)
        return features[torch.argsort(order)]

    # --- files -------------------------------------------------------------------------------
    def save(self, path: str | Path, **extra_meta) -> Path:
        """Write `<name>.safetensors` (the context) and `<name>.json` (metadata), each atomically."""
        tensor_path, meta_path = _paths(path)
        meta = {
            **self.meta,
            **extra_meta,
            "format": FORMAT_NAME,
            "format_version": FORMAT_VERSION,
            "pomp_version": __version__,
            "n_ctx": self.n_ctx,
            "width": self.width,
            "class_token_position": "end",
            "placeholder": PLACEHOLDER,
        }
        meta.pop("source", None)
        ctx = self.ctx.detach().float().cpu().contiguous()
        atomic_write_safetensors(tensor_path, {"ctx": ctx}, metadata={"format": FORMAT_NAME})
        atomic_write_json(meta_path, meta)
        return tensor_path

    @classmethod
    def load(cls, path: str | Path, map_location: str | torch.device = "cpu") -> "Prompt":
        """Load a prompt saved by `save` (the .safetensors, the .json, or their directory)."""
        tensor_path, meta_path = _paths(path)
        if not tensor_path.is_file():
            raise FileNotFoundError(f"{tensor_path}: prompt tensor file not found")
        meta = read_json(meta_path) if meta_path.is_file() else {}
        if not isinstance(meta, dict):
            raise ValueError(f"{meta_path}: prompt metadata must be a JSON object")
        try:
            tensors = load_file(str(tensor_path), device=str(map_location))
        except (SafetensorError, OSError, RuntimeError, ValueError) as err:
            raise ValueError(f"{tensor_path}: not a readable safetensors file ({err})") from None
        if "ctx" not in tensors:
            held = sorted(tensors)
            shown = ", ".join(held[:8]) + (f" and {len(held) - 8} more" if len(held) > 8 else "")
            raise ValueError(f"{tensor_path}: no 'ctx' tensor in file (it holds {len(held)}: {shown})")
        ctx = tensors["ctx"]
        if ctx.dim() != 2 or not ctx.is_floating_point() or min(ctx.shape) < 1:
            raise ValueError(f"{tensor_path}: 'ctx' must be a non-empty float [n_ctx, width] tensor, "
                             f"got {ctx.dtype} {tuple(ctx.shape)}")
        if not bool(torch.isfinite(ctx).all()):
            raise ValueError(f"{tensor_path}: 'ctx' holds NaN or inf values")
        for key, actual in (("n_ctx", ctx.shape[0]), ("width", ctx.shape[1])):
            if key in meta and meta[key] != actual:
                raise ValueError(f"{meta_path}: says {key}={meta[key]} but the tensor has {actual}")
        meta["source"] = str(tensor_path)
        return cls(ctx, meta)

    def describe(self) -> dict:
        """A summary for `pomp info`."""
        ctx = self.ctx.detach().float()
        return {
            "n_ctx": self.n_ctx,
            "width": self.width,
            "ctx_norm_per_token": [round(float(v), 4) for v in ctx.norm(dim=1)],
            "ctx_std": round(float(ctx.std()), 6) if ctx.numel() > 1 else 0.0,
            **{k: v for k, v in self.meta.items() if k != "source"},
        }


# The readers and writers of other systems' prompt files moved to pomp.interop, which builds on this module.
__getattr__ = moved_names(__name__, dict.fromkeys(("load_official", "save_official", "load_any"), "pomp.interop"))


__all__ = ["Prompt", "ClassTokens", "clean_classname"]
