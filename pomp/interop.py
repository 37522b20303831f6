"""Other systems' prompt files, in and out: Dassl checkpoints (official POMP, CoOp, CoCoOp, MaPLe) and ZSSeg's.

Read (every file through `pomp.torchfile.read_torch_file`: tensors and plain containers are
rebuilt, every other pickled object is an inert placeholder, no code from the file runs):
- Dassl `save_checkpoint` (POMP's and CoOp's `prompt_learner/model.pth.tar-N`): `{'state_dict':
  {...}, 'epoch', 'optimizer', 'scheduler', 'val_result'}`. The official POMP file holds an fp16
  `ctx [n_ctx, width]` and the fixed token buffers `train_/test_token_prefix/suffix`; its
  scheduler state holds a pickled `CosineAnnealingLR` (method.md §7).
- detectron2 / ZSSeg (`PROMPT_LEARNER "pomp_tuned"` or ZSSeg's own learnable prompt):
  `{'model': {'clip_adapter.prompt_learner.ctx' | '...prefix_prompt': ..., <the segmenter's weights>}}`.
- a bare state dict holding `ctx`, or the context tensor alone (`torch.save(prompt_learner.ctx, ...)`).
Keys under `prompt_learner.` are the prompt learner's (MaPLe registers the whole model, so its
file also holds the frozen CLIP towers, which are ignored). Accepted: one shared context
`[n_ctx, width]` and the fixed token buffers (embeddings of the start token, class names and end
token, recomputed from the class names anyway). Refused, in one line naming the tensors: any
other learnable tensor of the prompt learner (CoCoOp's `meta_net.*`, MaPLe's `proj.*`,
`compound_prompts_text.*`, `compound_prompt_projections.*`, a non-empty ZSSeg `suffix_prompt`,
visual prompts `*VPT*`) and class-specific contexts `ctx [n_cls, n_ctx, width]`: pomp's prompt is
one shared context before the class name, and dropping the rest would silently give other numbers
than the system that trained them. A tensor the file's own optimizer state shows was never updated
(KgCoOp's unused, frozen `bias_vectors`) is not learned and is ignored (`untrained_parameters`).

Written: the official Dassl layout (`save_official`, ctx in fp16 by default, as the official
checkpoints and Detic's fp16 feature-dump tool expect) and ZSSeg's (`save_zsseg`). Both build the
same text as pomp: [SOS] ctx_1..ctx_n <name> . [EOS].
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from pomp.io import atomic_write
from pomp.prompt import Prompt
from pomp.torchfile import Opaque, read_torch_file

ZSSEG_KEY = "clip_adapter.prompt_learner.ctx"
CONVERT_FORMATS = ("auto", "pomp", "official", "zsseg")
DTYPES = {"fp16": torch.float16, "fp32": torch.float32}

# Fixed token embeddings a prompt learner keeps as buffers: Dassl learners (CoOp, CoCoOp, MaPLe:
# token_prefix/suffix; POMP: train_/test_ ones) and ZSSeg's learnable prompt (*_signal).
FIXED_BUFFERS = {
    "token_prefix", "token_suffix", "train_token_prefix", "train_token_suffix", "test_token_prefix",
    "test_token_suffix", "start_signal", "dot_signal", "end_signal", "pad_signal",
}
CONTEXT_KEYS = ("ctx", "prefix_prompt")  # Dassl learners; ZSSeg's learnable prompt
# What extra learnable tensors belong to, by name, for the refusal message.
KNOWN_EXTRAS = (
    ("meta_net.", "CoCoOp's meta-net"),
    ("compound_prompts_text.", "MaPLe's deep text prompts"),
    ("compound_prompt_projections.", "MaPLe's deep prompt projections"),
    ("proj.", "MaPLe's text-to-vision projection"),
    ("suffix_prompt", "a learnable suffix"),
    ("VPT", "visual prompts"),
)


# --- reading -------------------------------------------------------------------------------------
def _tensor_dict(value) -> dict[str, torch.Tensor] | None:
    if isinstance(value, dict) and value and all(isinstance(k, str) for k in value):
        return value
    return None


def _describe_extras(names: list[str]) -> str:
    owners = [label for marker, label in KNOWN_EXTRAS if any(marker in n for n in names)]
    shown = ", ".join(names[:12]) + (f" and {len(names) - 12} more" if len(names) > 12 else "")
    return shown + (f" ({', '.join(owners)})" if owners else "")


def untrained_parameters(state: dict, optimizer) -> set[str]:
    """Names of `state`'s parameters the checkpoint's own optimizer never updated, or an empty set.

    A Dassl trainer builds its optimizer over every parameter of the registered module, frozen ones
    included (`build_optimizer` passes `model.parameters()`), and saves `optimizer.state_dict()`:
    `param_groups[*]["params"]` number the parameters in `named_parameters()` order, and `state`
    holds an entry (SGD's momentum buffer, Adam's moments) only for those that received a gradient.
    KgCoOp, for one, keeps an unused, frozen `bias_vectors` parameter in its prompt learner. The
    mapping is trusted only when it is exact: the state dict's tensors other than the known fixed
    buffers are as many as the optimizer's parameters (a state dict lists parameters in
    `named_parameters()` order, buffers beside them) and every optimizer state has the shape of the
    parameter it is mapped to. Anything else gives no evidence (empty set).
    """
    if not isinstance(optimizer, dict) or not isinstance(optimizer.get("state"), dict):
        return set()
    groups = optimizer.get("param_groups")
    if not isinstance(groups, list) or not all(isinstance(g, dict) and isinstance(g.get("params"), list)
                                                for g in groups):
        return set()
    ids = [i for g in groups for i in g["params"]]
    names = [k for k, v in state.items() if isinstance(v, torch.Tensor) and k.rsplit(".", 1)[-1] not in FIXED_BUFFERS]
    if len(ids) != len(names) or len(set(ids)) != len(ids):
        return set()
    updated = {i: entry for i, entry in optimizer["state"].items() if entry}
    if not updated:  # plain SGD without momentum keeps no state, nor does an optimizer that never stepped
        return set()
    for name, i in zip(names, ids):  # a momentum buffer has its parameter's shape: the mapping must agree
        buffers = [v for v in (updated[i].values() if isinstance(updated.get(i), dict) else ())
                   if isinstance(v, torch.Tensor) and v.dim() > 0]
        if any(tuple(b.shape) != tuple(state[name].shape) for b in buffers):
            return set()
    return {name for name, i in zip(names, ids) if i not in updated}


def prompt_from_state_dict(
    path: str | Path, state: dict, layout: str, epoch: int | None = None, untrained: set[str] = frozenset()
) -> Prompt:
    """The shared context of a prompt learner's state dict, or a one-line refusal naming what cannot be kept.

    Args:
        path: the file, for messages and metadata.
        state: tensor name -> tensor (a Dassl `state_dict`, a detectron2 `model`, or a bare dict).
        layout: `dassl`, `zsseg`, `state_dict` or `tensor` (recorded as `imported_from`).
        epoch: the checkpoint's epoch, when it has one.
        untrained: names (as in `state`) the checkpoint's optimizer shows were never updated
            (`untrained_parameters`): ignored, not refused, and listed in the metadata.
    """
    if any("prompt_learner." in k for k in state):
        full_name = {k.split("prompt_learner.", 1)[1]: k for k in state if "prompt_learner." in k}
        outside = [k for k in state if "prompt_learner." not in k]
    else:
        full_name, outside = {k: k for k in state}, []
    learner = {k: state[name] for k, name in full_name.items()}
    context_key = next((k for k in CONTEXT_KEYS if k in learner), None)
    if context_key is None:
        raise ValueError(f"{path}: no prompt context ({' or '.join(CONTEXT_KEYS)}) in the checkpoint's "
                         f"{'state_dict' if layout == 'dassl' else 'model' if layout == 'zsseg' else 'tensors'}")
    ctx = learner.pop(context_key)
    if not isinstance(ctx, torch.Tensor) or not ctx.is_floating_point():
        raise ValueError(f"{path}: {context_key} is not a float tensor")
    if ctx.dim() == 3:
        raise ValueError(f"{path}: {context_key} {tuple(ctx.shape)} holds class-specific contexts "
                         "[n_cls, n_ctx, width]; pomp's prompt is one context shared by all classes")
    if ctx.dim() != 2 or min(ctx.shape) < 1:
        raise ValueError(f"{path}: {context_key} must be a shared [n_ctx, width] context, got {tuple(ctx.shape)}")
    if not bool(torch.isfinite(ctx).all()):
        raise ValueError(f"{path}: {context_key} holds NaN or inf values")
    empty_suffix = isinstance(learner.get("suffix_prompt"), torch.Tensor) and learner["suffix_prompt"].numel() == 0
    if empty_suffix:
        learner.pop("suffix_prompt")
    if full_name[context_key] in untrained:  # the optimizer never moved the context: it tells nothing
        untrained = frozenset()
    never_trained = sorted(k for k in learner if full_name[k] in untrained and k not in FIXED_BUFFERS)
    extras = [k for k, v in learner.items()
              if isinstance(v, torch.Tensor) and k not in FIXED_BUFFERS and k not in never_trained]
    extras += [k for k in outside if "VPT" in k and k not in untrained]
    if extras:
        raise ValueError(f"{path}: holds learnable tensors pomp cannot represent beside the shared context: "
                         f"{_describe_extras(extras)}; pomp's prompt is one shared context only")
    dropped = sorted(k for k in learner if k in FIXED_BUFFERS)
    meta = {"source": str(path), "imported_from": layout, "ctx_dtype": str(ctx.dtype).replace("torch.", "")}
    if epoch is not None:
        meta["epoch"] = epoch
    if dropped:
        meta["fixed_buffers_ignored"] = dropped
    if never_trained:
        meta["untrained_ignored"] = never_trained  # in the file, never updated by its optimizer
    return Prompt(ctx.detach().to(torch.float32).clone(), meta)


def _epoch(checkpoint: dict) -> int | None:
    epoch = checkpoint.get("epoch")
    return epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else None


def load_checkpoint_prompt(path: str | Path) -> Prompt:
    """Import the prompt of a Dassl, ZSSeg/detectron2 or bare-state-dict checkpoint (layout read off the file)."""
    path = Path(path)
    checkpoint = read_torch_file(path)
    if isinstance(checkpoint, torch.Tensor):  # `torch.save(prompt_learner.ctx, ...)`: the context alone
        return prompt_from_state_dict(path, {"ctx": checkpoint}, "tensor")
    if isinstance(checkpoint, Opaque):  # e.g. a TorchScript model (OpenAI's CLIP .pt): weights, not a prompt
        raise ValueError(f"{path}: holds a pickled {checkpoint.target} object, not a prompt checkpoint (model "
                         "weights go to --pretrained)")
    if not isinstance(checkpoint, dict):
        raise ValueError(f"{path}: a checkpoint must hold a dict or a context tensor, found {type(checkpoint).__name__}")
    for key, layout in (("state_dict", "dassl"), ("model", "zsseg")):
        state = _tensor_dict(checkpoint.get(key))
        if state is not None:
            untrained = untrained_parameters(state, checkpoint.get("optimizer"))
            return prompt_from_state_dict(path, state, layout, _epoch(checkpoint), untrained)
    if any(isinstance(v, torch.Tensor) for v in checkpoint.values()):
        return prompt_from_state_dict(path, checkpoint, "state_dict")
    raise ValueError(f"{path}: neither a Dassl checkpoint ('state_dict'), a detectron2/ZSSeg one ('model') "
                     f"nor a state dict (has keys {sorted(map(str, checkpoint))[:8]})")


def load_official(path: str | Path) -> Prompt:
    """Import a Dassl prompt-learner checkpoint (`model.pth.tar-N`: official POMP, CoOp) holding `state_dict['ctx']`."""
    prompt = load_checkpoint_prompt(path)
    if prompt.meta.get("imported_from") != "dassl":
        raise ValueError(f"{path}: not a Dassl checkpoint (no 'state_dict')")
    return prompt


def load_zsseg(path: str | Path) -> Prompt:
    """Import a ZSSeg / detectron2 checkpoint holding `model['...prompt_learner.ctx']`."""
    prompt = load_checkpoint_prompt(path)
    if prompt.meta.get("imported_from") != "zsseg":
        raise ValueError(f"{path}: not a detectron2/ZSSeg checkpoint (no 'model')")
    return prompt


def load_any(path: str | Path) -> Prompt:
    """Our format (`.safetensors` / `.json` / a folder), or any checkpoint `load_checkpoint_prompt` reads."""
    path = Path(path)
    if path.is_dir() and not (path / "prompt.safetensors").is_file():
        # e.g. a Dassl output folder: its checkpoints are `prompt_learner/model.pth.tar-N`
        found = sorted(path.glob("model*.pth*")) + sorted(path.glob("*/model*.pth*"))
        shown = ", ".join(map(str, found[:3])) + (", ..." if len(found) > 3 else "")
        hint = f"; it holds {shown}: pass one of those files" if found else ""
        raise FileNotFoundError(f"{path}: a folder without a pomp prompt (prompt.safetensors){hint}")
    if path.is_dir() or path.suffix in {".safetensors", ".json"}:
        return Prompt.load(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: prompt file not found")
    return load_checkpoint_prompt(path)


# --- writing -------------------------------------------------------------------------------------
def _ctx_as(prompt: Prompt, dtype: torch.dtype, path: str | Path) -> torch.Tensor:
    ctx = prompt.ctx.detach().cpu().to(dtype).clone()
    if not bool(torch.isfinite(ctx).all()):
        raise ValueError(f"{path}: the context does not fit {str(dtype).replace('torch.', '')} (values overflow)")
    return ctx


def _epoch_for(prompt: Prompt, path: Path, epoch: int | None) -> int:
    """The given epoch, else the prompt's own (`epochs` for pomp prompts, `epoch` for imported ones),
    else the N of a `model.pth.tar-N` name, else 0."""
    if epoch is not None:
        return int(epoch)
    for key in ("epochs", "epoch"):
        value = prompt.meta.get(key)
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    match = re.search(r"\.pth\.tar-(\d+)$", path.name)
    return int(match.group(1)) if match else 0


def save_official(prompt: Prompt, path: str | Path, epoch: int | None = None, dtype: str = "fp16") -> Path:
    """Write the Dassl layout the official POMP code, CoOp and ZSSeg (`PROMPT_LEARNER "pomp"`) read.

    `{'state_dict': {'ctx': [n_ctx, width]}, 'epoch', 'optimizer': None, 'scheduler': None, 'val_result': None}`;
    ctx in `dtype` (`fp16`, what official checkpoints hold and Detic's fp16 dump tool needs, or `fp32`).
    """
    path = Path(path)
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    checkpoint = {
        "state_dict": {"ctx": _ctx_as(prompt, DTYPES[dtype], path)},
        "epoch": _epoch_for(prompt, path, epoch),
        "optimizer": None,
        "scheduler": None,
        "val_result": None,
    }
    return atomic_write(path, lambda p: torch.save(checkpoint, p))


def save_zsseg(prompt: Prompt, path: str | Path, dtype: str = "fp32") -> Path:
    """ZSSeg's detectron2-style prompt checkpoint (`PROMPT_LEARNER "pomp_tuned"`): `{'model': {ZSSEG_KEY: ctx}}`."""
    if dtype not in DTYPES:
        raise ValueError(f"unknown dtype {dtype!r}; choose from {sorted(DTYPES)}")
    checkpoint = {"model": {ZSSEG_KEY: _ctx_as(prompt, DTYPES[dtype], path)}, "iteration": 0}
    return atomic_write(path, lambda p: torch.save(checkpoint, p))


def convert_prompt(
    src: str | Path,
    dst: str | Path,
    backbone: str | None = None,
    epoch: int | None = None,
    fmt: str = "auto",
    dtype: str | None = None,
) -> Path:
    """Convert a prompt between pomp (`.safetensors` + `.json`), the official Dassl `.pth.tar` and ZSSeg's
    `model[...]` checkpoint. `fmt` "auto" picks official for a `.pth`/`.pth.tar-N` name, pomp otherwise;
    the source format is read off the file. `dtype` (`fp16`/`fp32`) of the written ctx: default fp16
    for the official format, fp32 for ZSSeg's; pomp's own files are always fp32."""
    if fmt not in CONVERT_FORMATS:
        raise ValueError(f"unknown prompt format {fmt!r}; choose from {CONVERT_FORMATS}")
    dst = Path(dst)
    if fmt == "auto":
        fmt = "official" if ".pth" in dst.name or dst.name.startswith("model.pth.tar") else "pomp"
    if dtype is not None and fmt == "pomp":
        raise ValueError("--dtype applies to the official and zsseg formats; pomp prompts are stored in fp32")
    prompt = load_any(src)
    if fmt == "official":
        return save_official(prompt, dst, epoch=epoch, dtype=dtype or "fp16")
    if fmt == "zsseg":
        return save_zsseg(prompt, dst, dtype=dtype or "fp32")
    if backbone is not None:
        prompt.meta["backbone"] = {"name": backbone}
    return prompt.save(dst)


__all__ = [
    "convert_prompt", "load_any", "load_checkpoint_prompt", "load_official", "load_zsseg",
    "prompt_from_state_dict", "save_official", "save_zsseg", "untrained_parameters",
]
