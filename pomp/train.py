"""POMP pre-training: one process or many (torchrun + DDP), the same code.

Each step: image features of B images x V views (frozen image tower, or a feature cache);
K-1 negative classes drawn for this rank and step; the distinct classes among the batch's
labels and the negatives encoded once through the prompt; local-contrast loss with local
correction; SGD on the context only. When more distinct classes than `text_chunk_size` are
needed (e.g. K = all), the class features are computed without graph, the loss gradient with
respect to them is taken, and the chunks are re-encoded with graph to push it into the
context (gradient caching): same loss and gradient, memory bounded by the chunk.

Randomness is a function of (seed, rank, step) and (seed, epoch, image), never of process
history, so a resumed run continues exactly where an uninterrupted one would be.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import signal
import socket
import threading
import time
import warnings
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Iterator, Protocol

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.nn.parallel import DistributedDataParallel
from tqdm.auto import tqdm

from pomp.backbones import Backbone, load_backbone
from pomp.config import RESUME_WITH_PERMISSION, PretrainConfig
from pomp.data.features import ImageFeatures, autocast_for, encode_pixels, weights_fingerprint
from pomp.data.folder import STOP_SIGNALS, scan_class_folders
from pomp.data.imagenet21k import resolve_names
from pomp.data.splits import load_or_make_split, read_split_file
from pomp.data.training import BatchPlan, FolderData, TrainingData, TrainingPlan
from pomp.data.transforms import MultiView, train_transform
from pomp.deprecation import renamed_keywords
from pomp.evaluate import prompt_classifier, zero_shot_metrics
from pomp.io import (
    RunLock,
    append_line,
    atomic_write_json,
    atomic_write_safetensors,
    atomic_write_text,
    check_cache_dir,
    check_writable_dir,
    read_json,
    read_json_lines,
    remove_stale_temp_files,
)
from pomp.loss import local_contrast_loss, sample_negatives
from pomp.prompt import ClassTokens, Prompt


# What `--resume` may change. Settings of how a run executes (not what it computes) change freely;
# those in RESUME_WITH_PERMISSION only when named in --allow-change; the files and folders a run
# reads (RESUME_BY_CONTENT) may move when what they hold is unchanged (`run_facts`: the backbone and
# its weights, the class list, the training samples), as when a requeued job copies its data to a
# node-local disk; every other setting, the backbone's weights and the data must equal the
# checkpoint's run. Every change is recorded in the checkpoint's and config.json's "resumes" history.
RESUME_FREE = frozenset({"out_dir", "resume", "allow_change", "num_workers", "progress", "log_every",
                         "checkpoint_every", "max_steps", "max_bad_steps", "feature_cache", "text_chunk_size",
                         "length_buckets", "compile", "validate"})
_PATH_FIELDS = ("backbone", "pretrained", "train_root", "names", "split_file", "image_root", "train_classes")
RESUME_BY_CONTENT = frozenset(_PATH_FIELDS)


# --- schedule ----------------------------------------------------------------------------------
def lr_at_epoch(cfg: PretrainConfig, epoch: int) -> float:
    """Constant warm-up lr for the first epochs, then cosine from `lr` (Dassl's per-epoch schedule)."""
    if epoch < cfg.warmup_epochs:
        return cfg.warmup_lr
    return 0.5 * cfg.lr * (1 + math.cos(math.pi * (epoch - cfg.warmup_epochs) / cfg.epochs))


def step_generator(seed: int, rank: int, step: int) -> torch.Generator:
    """The negatives' random stream of one rank at one step: a function of (seed + rank, step) alone."""
    state = np.random.SeedSequence([seed + rank, step]).generate_state(2, dtype=np.uint32)
    return torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))


# --- distributed -------------------------------------------------------------------------------
@dataclass
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def sum(self, values: list[float], device: torch.device) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        dist.all_reduce(t)
        return t.tolist()

    def max(self, value: int, device: torch.device) -> int:
        if self.world == 1:
            return value
        t = torch.tensor([value], dtype=torch.int64, device=device)
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def on_main(self, fn, share: bool = False):
        """Run `fn` on rank 0 only; when it raises, every rank raises the same error (none waits forever).
        Returns its result on rank 0, and on every rank with `share` (a small picklable value)."""
        result, error = None, None
        if self.main:
            try:
                result = fn()
            except Exception as err:  # noqa: BLE001 - passed to every rank, then raised
                error = err
        if self.world > 1:
            box = [None if error is None else (type(error).__name__, str(error)), result if share else None]
            dist.broadcast_object_list(box, src=0)
            if share:
                result = box[1]
            if box[0] is not None and error is None:
                kind = {"FileNotFoundError": FileNotFoundError, "FileExistsError": FileExistsError,
                        "ValueError": ValueError, "PermissionError": PermissionError}.get(box[0][0], RuntimeError)
                error = kind(box[0][1])
        if error is not None:
            raise error
        return result

    def on_every(self, fn):
        """Run `fn` on every rank; when it raises on any rank, every rank raises (the others name that rank)."""
        result, error = None, None
        try:
            result = fn()
        except Exception as err:  # noqa: BLE001 - passed to every rank, then raised
            error = err
        if self.world > 1:
            messages = [None] * self.world
            dist.all_gather_object(messages, None if error is None else str(error))
            failed = [(r, m) for r, m in enumerate(messages) if m is not None]
            if failed and error is None:
                error = RuntimeError(f"rank {failed[0][0]}: {failed[0][1]}")
        if error is not None:
            raise error
        return result


class Interrupted(BaseException):
    """The run stopped on one of `STOP_SIGNALS`; `exit_code` is 128 + the signal number (SIGINT 130,
    SIGTERM 143, SIGHUP 129, SIGUSR1 138...).

    A BaseException (like KeyboardInterrupt): no `except Exception` on the way mistakes it for an error."""

    def __init__(self, signum: int, message: str):
        super().__init__(message)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


def _stop_message(signum: int, step: int | None, total: int | None, checkpoint: Path | None,
                  checkpoint_step: int | None, when: str = "") -> str:
    name = signal.Signals(signum).name
    where = f"after step {step} of {total}" if step is not None else when
    if checkpoint is not None and checkpoint_step is not None:
        kept = f"checkpoint of step {checkpoint_step}: {checkpoint} (continue with --resume)"
    else:
        kept = "no checkpoint was written"
    return f"stopped by {name} {where}; {kept}"


class StopOnSignal:
    """How a run answers the `STOP_SIGNALS` (Ctrl-C, SIGTERM of SLURM/torchrun/`kill`, a closed
    terminal's SIGHUP, a scheduler's SIGUSR1/SIGUSR2 warning, SIGXCPU).

    While `deferred` (the training loop), a signal only records itself: the loop finishes the
    step, writes a checkpoint and stops. Otherwise (loading, caching features: nothing to save)
    it raises `Interrupted` at once; so does a second Ctrl-C. Installed only in the main thread,
    and only for signals not ignored when the run started: under `nohup` (SIGHUP) or as a
    script's background job (SIGINT) the run keeps running, as the user asked.
    """

    SIGNALS = STOP_SIGNALS

    def __init__(self):
        self.signum = 0
        self.deferred = False
        self.checkpoint_path: Path | None = None
        self.last_checkpoint: int | None = None  # step of the last checkpoint written or resumed from
        self._previous: dict[int, object] = {}

    def _handle(self, signum, frame) -> None:
        again = self.signum == signum == signal.SIGINT
        self.signum = self.signum or signum
        if not self.deferred or again:
            when = "again, mid-step" if again else "before training started"
            raise Interrupted(signum, _stop_message(signum, None, None, self.checkpoint_path, self.last_checkpoint,
                                                    when))

    def __enter__(self) -> "StopOnSignal":
        if threading.current_thread() is threading.main_thread():
            for sig in self.SIGNALS:
                if signal.getsignal(sig) is not signal.SIG_IGN:
                    self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def init_distributed(device: str) -> tuple[Dist, torch.device]:
    """torchrun sets WORLD_SIZE/RANK/LOCAL_RANK; NCCL on CUDA, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if world > 1:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        d = Dist(dist.get_rank(), dist.get_world_size(), local_rank)
    else:
        d = Dist()
    if use_cuda:
        torch.cuda.set_device(d.local_rank)
        return d, torch.device("cuda", d.local_rank)
    return d, torch.device("cpu")


# --- data --------------------------------------------------------------------------------------
def load_training_data(cfg: PretrainConfig, out_dir: Path, reuse_split: bool = True,
                       ) -> tuple[TrainingData, TrainingData | None]:
    """Train (and val) samples: from a split file, shards, or a k-shot split of class folders saved in
    out_dir (`reuse_split`: read back the saved one, as a resumed run and ranks other than 0 do).

    Validation asked for (`validate`) but impossible is an error when `--val-per-class` leaves no
    image after `--shots`, a warning when the data has no validation part at all.
    """
    if cfg.train_shards:  # webdataset shards, split across ranks and loader workers as they are read
        from pomp.data.shards import ShardSet

        val = ShardSet.open(cfg.val_shards, cfg.train_classes) if cfg.val_shards and cfg.validate else None
        if cfg.validate and val is None:
            warnings.warn("no validation data (--val-shards not given): the last prompt is also kept as the best; "
                          "pass --no-validate to say so", stacklevel=2)
        return ShardSet.open(cfg.train_shards, cfg.train_classes), val
    if cfg.split_file:
        train = read_split_file(cfg.split_file, "train", cfg.image_root)
        has_val = "val" in read_json(cfg.split_file)
        if cfg.validate and not has_val:
            warnings.warn(f"{cfg.split_file}: no 'val' split, so no validation: the last prompt is also kept as "
                          f"the best; pass --no-validate to say so", stacklevel=2)
        val = read_split_file(cfg.split_file, "val", cfg.image_root) if has_val and cfg.validate else None
        return FolderData(train), FolderData(val) if val is not None else None
    images = scan_class_folders(cfg.train_root, resolve_names(cfg.names))
    most = max(np.bincount([label for _, label in images.samples]).tolist())
    if cfg.validate and cfg.val_per_class > 0 and most <= cfg.shots:
        raise ValueError(f"{cfg.train_root}: --val-per-class {cfg.val_per_class} leaves no validation image: no "
                         f"class holds more than --shots {cfg.shots} images (at most {most}); lower --shots, or "
                         f"pass --val-per-class 0 or --no-validate")
    # the split always holds --val-per-class images (unused with --no-validate): its train part never changes
    splits = load_or_make_split(out_dir / "split.json", images, cfg.shots, cfg.val_per_class, cfg.split_seed,
                                reuse=reuse_split)
    val = splits.get("val") if cfg.validate else None
    splits["train"].skipped = dict(images.skipped)  # what the scan left out, reported in config.json
    if cfg.validate and val is not None:
        covered = len({label for _, label in val.samples})
        if covered < len(images.classnames):
            warnings.warn(f"{cfg.train_root}: validation covers {covered} of {len(images.classnames)} classes (the "
                          f"others hold no image beyond --shots {cfg.shots})", stacklevel=2)
    if cfg.validate and cfg.val_per_class == 0:
        warnings.warn("--val-per-class 0: no validation, the last prompt is also kept as the best; pass "
                      "--no-validate to say so", stacklevel=2)
    return FolderData(splits["train"]), FolderData(val) if val is not None else None


# --- one step ----------------------------------------------------------------------------------
@renamed_keywords(vocab="class_tokens")
def encode_and_backward(
    model: torch.nn.Module,
    prompt: Prompt,
    backbone: Backbone,
    class_tokens: ClassTokens,
    image_features: torch.Tensor,
    labels: torch.Tensor,
    negative_ids: torch.Tensor,
    cfg: PretrainConfig,
    logit_scale: float,
    grad_scale: float = 1.0,
) -> torch.Tensor:
    """Loss of one step and its gradient in `prompt.ctx`; each distinct class encoded once.

    `model` is the prompt itself or its DDP wrapper. Returns the (detached) loss.
    """
    device = image_features.device
    class_ids, inverse = torch.unique(torch.cat([labels.cpu(), negative_ids]), return_inverse=True)
    b = labels.shape[0]

    def loss_of(class_features: torch.Tensor) -> torch.Tensor:
        return local_contrast_loss(
            image_features, class_features[inverse[:b].to(device)], class_features[inverse[b:].to(device)],
            labels, negative_ids.to(device), len(class_tokens), logit_scale, cfg.local_correction, cfg.margin,
        )

    amp = autocast_for(device, cfg.precision)
    if b == 0:  # every image of this batch was unreadable: contribute a zero gradient (keeps DDP in step)
        with amp:
            loss = model(backbone, class_tokens, class_ids[:1]).sum() * 0.0
        loss.backward()
        return loss.detach()
    if len(class_ids) <= cfg.text_chunk_size:
        with amp:
            class_features = model(backbone, class_tokens, class_ids, cfg.length_buckets)
        loss = loss_of(class_features)
        (loss * grad_scale).backward()
        return loss.detach()

    # gradient caching: features without graph -> dL/dfeatures -> re-encode chunks with graph
    chunks = list(torch.split(class_ids, cfg.text_chunk_size))
    with torch.no_grad(), amp:
        cached = torch.cat([prompt(backbone, class_tokens, chunk, cfg.length_buckets) for chunk in chunks])
    cached.requires_grad_(True)
    loss = loss_of(cached)
    loss.backward()
    grad = cached.grad * grad_scale
    offset = 0
    for j, chunk in enumerate(chunks):
        sync = j == len(chunks) - 1 or not isinstance(model, DistributedDataParallel)
        with (contextlib.nullcontext() if sync else model.no_sync()), amp:
            features = model(backbone, class_tokens, chunk, cfg.length_buckets)
        features.backward(grad[offset : offset + len(chunk)])
        offset += len(chunk)
    return loss.detach()


# --- checkpoints -------------------------------------------------------------------------------
CHECKPOINT_STATE_KEYS = {"global_step", "best_val_acc1", "best_epoch", "bad_steps", "skipped_images", "history"}


@dataclass
class RunState:
    """Where a run stands: what a checkpoint's header holds (as JSON, under "state"), beside the context
    and its momentum. Checkpoints of older pomp versions lack `resumes` and `run`."""

    global_step: int = 0
    best_val_acc1: float | None = None  # None: not validated (yet)
    best_epoch: int | None = None
    bad_steps: int = 0  # steps skipped for a non-finite loss or gradient
    skipped_images: int = 0  # unreadable images left out of steps
    history: list[dict] = field(default_factory=list)  # one record per epoch: epoch, step, val_acc1
    resumes: list[dict] = field(default_factory=list)  # one record per --resume: step, time, host, changed
    run: dict | None = None  # {"settings": `run_settings`, "facts": `run_facts`}: what a resume must equal

    @classmethod
    def from_json(cls, state: dict) -> "RunState":
        """From a checkpoint's header (`read_checkpoint_state`); keys this version does not know are dropped."""
        known = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in state.items() if k in known})

    def to_json(self) -> dict:
        return asdict(self)


def save_checkpoint(path: Path, prompt: Prompt, optimizer: torch.optim.Optimizer, state: RunState) -> None:
    """One safetensors file (context + momentum, run state in its header), replaced atomically."""
    tensors = {"ctx": prompt.ctx.detach().cpu().contiguous()}
    buffer = optimizer.state.get(prompt.ctx, {}).get("momentum_buffer")
    if buffer is not None:
        tensors["momentum_buffer"] = buffer.detach().cpu().contiguous()
    atomic_write_safetensors(path, tensors, metadata={"state": json.dumps(state.to_json())})


def read_checkpoint_state(path: Path) -> dict:
    """The run state in a checkpoint's header (no tensor is read); errors name the file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as f:
            state = json.loads((f.metadata() or {})["state"])
    except Exception as err:  # a damaged file must not crash with a traceback from deep inside
        raise ValueError(f"{path}: unreadable checkpoint ({str(err).splitlines()[0] if str(err) else err!r})") from None
    if not isinstance(state, dict) or not CHECKPOINT_STATE_KEYS <= set(state):
        raise ValueError(f"{path}: not a pomp checkpoint (run state or 'ctx' missing)")
    return state


def load_checkpoint(path: Path, prompt: Prompt, optimizer: torch.optim.Optimizer) -> dict:
    """Restore the context and its momentum from a checkpoint; returns its run state as stored (JSON: a
    `RunState.from_json` reads it). Errors name the file."""
    state = read_checkpoint_state(path)
    try:
        tensors = load_file(str(path))
    except Exception as err:
        raise ValueError(f"{path}: unreadable checkpoint ({err})") from None
    if "ctx" not in tensors:
        raise ValueError(f"{path}: not a pomp checkpoint (run state or 'ctx' missing)")
    if not bool(torch.isfinite(tensors["ctx"]).all()):
        raise ValueError(f"{path}: checkpoint context holds NaN or inf values")
    if "momentum_buffer" in tensors and tensors["momentum_buffer"].shape != tensors["ctx"].shape:
        raise ValueError(f"{path}: checkpoint momentum buffer does not match its context")
    if tensors["ctx"].shape != prompt.ctx.shape:
        raise ValueError(f"{path}: checkpoint context {tuple(tensors['ctx'].shape)} does not match "
                         f"this run's {tuple(prompt.ctx.shape)}")
    with torch.no_grad():
        prompt.ctx.copy_(tensors["ctx"])
    if "momentum_buffer" in tensors:
        optimizer.state[prompt.ctx]["momentum_buffer"] = tensors["momentum_buffer"].to(prompt.ctx.device)
    return state


# --- what a resume must equal --------------------------------------------------------------------
def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, ensure_ascii=False, default=str).encode("utf-8", "surrogateescape")
                          ).hexdigest()[:16]


def run_settings(cfg: PretrainConfig) -> dict:
    """A run's settings as a resume compares them (`check_resume`): all but `resume`; existing paths
    made absolute, so the same file named from another folder is the same setting."""
    settings = {k: v for k, v in asdict(cfg).items() if k != "resume"}
    for k in _PATH_FIELDS:
        if isinstance(settings.get(k), str) and Path(settings[k]).exists():
            settings[k] = str(Path(settings[k]).resolve())
    return settings


def comparable_settings(settings: dict) -> dict:
    """`run_settings` as a resume compares them: where the feature cache is may change (RESUME_FREE),
    whether one is used may not: cached views are drawn once, the image tower's views every epoch."""
    return {**settings, "feature_cache_used": bool(settings.get("feature_cache"))}


def legacy_settings(config_path: Path) -> dict:
    """The settings a pomp older than stored settings in its checkpoint wrote to the run's config.json
    (`asdict` of its config), as `comparable_settings`; {} when there is none. Left out: the paths (relative
    to a folder not recorded, so compared by content only when a checkpoint stores its facts) and
    `logit_scale` (that config.json held the resolved value)."""
    try:
        config = read_json(config_path)
    except (FileNotFoundError, ValueError):
        return {}
    if not isinstance(config, dict):
        return {}
    names = {f.name for f in fields(PretrainConfig)} - {"resume", "logit_scale", *_PATH_FIELDS}
    return comparable_settings({k: config[k] for k in names if k in config})


def run_facts(backbone: Backbone, train: TrainingData, world: int, steps_per_epoch: int,
              shard_workers: int | None = None) -> dict:
    """What the settings resolved to, which must also be equal on resume: the backbone (its weights
    included; its name and file are settings), the classes, the training samples, the processes
    and steps per epoch, and for shards the loader workers (they deal the shards: the sample order)."""
    samples = train.sample_identity()
    described = {k: v for k, v in backbone.describe().items() if k not in ("name", "pretrained")}
    return {"backbone": described, "backbone_weights": weights_fingerprint(backbone),
            "classes": _digest(train.classnames), "num_classes": len(train.classnames),
            "train_samples": _digest(samples), "world_size": world, "steps_per_epoch": steps_per_epoch,
            "shard_loader_workers": shard_workers}


def _differences(saved: dict, now: dict, prefix: str = "") -> dict[str, tuple]:
    """`{key: (saved, now)}` of the values that differ; within dicts on both sides, per sub-key
    (`backbone.weights.sha256`)."""
    out = {}
    for k in {**saved, **now}:
        a, b = saved.get(k), now.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out.update(_differences(a, b, f"{prefix}{k}."))
        elif a != b:
            out[prefix + k] = (a, b)
    return out


def comparable_facts(facts: dict) -> dict:
    """`run_facts` as a resume compares them: the weights file's name says where the weights are, not
    which (their sha256 and fingerprint do), so a copy under another name is the same backbone."""
    backbone = dict(facts.get("backbone") or {})
    if isinstance(backbone.get("weights"), dict):
        backbone["weights"] = {k: v for k, v in backbone["weights"].items() if k != "file"}
    return {**facts, "backbone": backbone}


def _show(value) -> str:
    text = json.dumps(value, ensure_ascii=False, default=str)
    if len(text) <= 60:
        return text
    return '"...' + text[-56:] if isinstance(value, str) else text[:57] + "..."  # paths differ at their end


def check_resume(saved: dict, now: dict, allowed: set[str], checkpoint: Path,
                 causes: dict[str, tuple] | None = None) -> dict[str, tuple]:
    """Differences between a checkpoint's run and this one: refused (ValueError listing each, one
    line, after the `causes`: changed settings that explain them) unless every one is RESUME_FREE or
    named in `allowed`; returns the changes taken."""
    changes = _differences(saved, now)
    refused = {k: v for k, v in changes.items() if k not in RESUME_FREE and k not in allowed}
    if refused:
        listed = "; ".join(f"{k} {_show(a)} -> {_show(b)}"
                           for k, (a, b) in [*sorted((causes or {}).items()), *sorted(refused.items())])
        hint = [k for k in refused if k in RESUME_WITH_PERMISSION]
        advice = (f"pass --allow-change {','.join(sorted(hint))} to accept" if hint and len(hint) == len(refused)
                  else "resume with the run's own settings, or start a new run in another --out-dir")
        raise ValueError(f"{checkpoint}: --resume would continue another run ({listed}); {advice}")
    return changes


# --- the run -----------------------------------------------------------------------------------
class _Logger:
    """JSON-lines log (+ TensorBoard when installed), main process only.

    Each record is appended whole or not at all (`pomp.io.append_line`). A resumed run first
    rewrites the log to what its checkpoint had seen: a torn last line and the records of steps
    after the checkpoint (which are re-run) are dropped, so the log never repeats a step.
    """

    def __init__(self, out_dir: Path, enabled: bool):
        self.enabled = enabled
        self.path = out_dir / "log.jsonl"
        self.tb = None

    def start(self, resume_step: int | None) -> None:
        """A new log, or (resuming from step `resume_step`) the log as the checkpoint saw it."""
        if not self.enabled:
            return
        if resume_step is None:
            atomic_write_text(self.path, "")
        else:
            records, dropped = read_json_lines(self.path)
            kept = [r for r in records if self._seen_by_checkpoint(r, resume_step)]
            if dropped or len(kept) != len(records):
                atomic_write_text(self.path, "".join(json.dumps(r) + "\n" for r in kept))
        try:
            from torch.utils.tensorboard import SummaryWriter

            self.tb = SummaryWriter(str(self.path.parent / "tensorboard"))
        except ImportError:
            pass

    @staticmethod
    def _seen_by_checkpoint(record: dict, step: int) -> bool:
        at = record.get("step")
        if not isinstance(at, int):
            return True
        return at < step or (at == step and ("val_acc1" in record or "event" in record))

    def log(self, record: dict) -> None:
        if not self.enabled:
            return
        append_line(self.path, json.dumps(record))
        if self.tb is not None:
            for k, v in record.items():
                if isinstance(v, (int, float)) and k not in ("step", "epoch"):
                    self.tb.add_scalar(k, v, record.get("step", 0))

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def _validate(prompt, backbone, class_tokens, val_features, dist_info, device) -> float | None:
    if val_features is None:
        return None
    with torch.no_grad():
        classifier = prompt_classifier(prompt, backbone, class_tokens, chunk_size=2048)  # repeated names tie exactly
        feats, labels = val_features
        correct = 0.0
        if len(labels):
            metrics = zero_shot_metrics(feats.to(device), labels.to(device), classifier)
            correct = metrics["acc1"] * len(labels)
    correct, total = dist_info.sum([correct, float(len(labels))], device)
    return correct / max(total, 1.0)


# outputs of a run in its --out-dir; those of a run that never wrote a checkpoint are replaced by a new
# run (the best prompt removed at once: a new run rewrites it only at its first epoch's end)
LEFTOVERS = ("log.jsonl", "config.json", "split.json", "split_params.json", "prompt_best.safetensors",
             "prompt_best.json")
FINISHED = ("prompt.safetensors", "summary.json")


@dataclass
class _SetUpFiles:
    """The run files (`LEFTOVERS`) a refused set-up must not leave behind: a bad backbone, a class name that
    does not fit, unreadable data... found after the split was written. Those already in the out-dir when the
    run locked it (a run being resumed, an earlier run's) stay; a run stopped by a signal keeps what it wrote
    (an earlier run that stopped before its first checkpoint: the next run replaces or reuses it)."""

    out_dir: Path
    present: set[str] | None = None  # None until the out-dir is locked by this run: nothing of ours to remove

    def record(self) -> None:
        self.present = {name for name in LEFTOVERS if (self.out_dir / name).exists()}

    def remove_new(self) -> None:
        for name in set(LEFTOVERS) - (self.present if self.present is not None else set(LEFTOVERS)):
            (self.out_dir / name).unlink(missing_ok=True)


def _claim_out_dir(cfg: PretrainConfig, out_dir: Path, checkpoint_path: Path, lock: RunLock,
                   set_up_files: _SetUpFiles) -> dict | None:
    """Rank 0: lock the out-dir for this run, then return the state of the checkpoint it resumes
    (its settings checked against this run's), or None for a new run (leftovers removed)."""
    check_writable_dir(out_dir)
    if cfg.feature_cache:
        check_cache_dir(cfg.feature_cache)
    lock.acquire(command="pomp pretrain")
    set_up_files.record()  # only now: before the lock, another run may still be writing these files
    remove_stale_temp_files(out_dir)  # temporaries of a killed run: never outputs
    if checkpoint_path.exists():
        if not cfg.resume:
            raise FileExistsError(f"{checkpoint_path}: a run already exists here; pass --resume to continue it "
                                  f"or choose another --out-dir")
        saved = read_checkpoint_state(checkpoint_path)
        if "run" in saved:  # moved files are accepted here and compared by content once loaded (`run_facts`)
            check_resume(comparable_settings(saved["run"]["settings"]), comparable_settings(run_settings(cfg)),
                         _allowed_changes(cfg) | RESUME_BY_CONTENT,
                         checkpoint_path)
        else:
            legacy = legacy_settings(out_dir / "config.json")
            if legacy:  # the recipe as that pomp recorded it at the run's start
                now = comparable_settings(run_settings(cfg))
                check_resume(legacy, {k: now.get(k) for k in legacy}, _allowed_changes(cfg) | RESUME_BY_CONTENT,
                             checkpoint_path)
            warnings.warn(f"{checkpoint_path}: written by an older pomp without its settings; "
                          + ("they were compared with its config.json, its weights and data cannot be" if legacy
                             else "they cannot be compared with this run's"), stacklevel=2)
        return saved
    if cfg.resume:
        warnings.warn(f"--resume: {out_dir} holds no checkpoint.safetensors, nothing to resume: starting a new run",
                      stacklevel=2)
    finished = [name for name in FINISHED if (out_dir / name).exists()]
    if finished:
        raise FileExistsError(f"{out_dir / finished[0]}: output of a finished run whose checkpoint is gone (a "
                              f"--resume needs it); choose another --out-dir")
    stale = [name for name in LEFTOVERS if (out_dir / name).exists()]
    for name in ("prompt_best.safetensors", "prompt_best.json"):
        (out_dir / name).unlink(missing_ok=True)
    if stale:
        warnings.warn(f"{out_dir}: replacing {', '.join(stale)} of an earlier run that stopped before its first "
                      f"checkpoint", stacklevel=2)
    return None


def _allowed_changes(cfg: PretrainConfig) -> set[str]:
    return {c.strip() for c in cfg.allow_change.split(",") if c.strip()}


def pretrain(cfg: PretrainConfig, backbone: Backbone | None = None) -> dict:
    """Run (or resume) pre-training; returns a summary. Writes everything under `cfg.out_dir`.

    The out-dir is locked for the life of the run (`pomp.io.RunLock`, held by rank 0); a resume
    continues only the same run (`check_resume`). SIGTERM, SIGINT, SIGHUP, SIGUSR1... (`StopOnSignal`)
    finish the current step on every rank, write a checkpoint and raise `Interrupted` (exit status
    128 + the signal number from the CLI: 143, 130, 129, 138...).

    The phases: `_set_up` (out-dir, data, backbone, prompt, optimizer), `_prepare_features` (training
    features: cached or encoded each step; validation features), `_start_or_resume` (run state, resume
    checks, config.json), then `_train_epoch` per epoch (each step `_train_step`; at its end
    `_end_of_epoch`: validation, best prompt; `_checkpoint_or_stop` after every step) and `_finish`.
    """
    cfg.verify()  # one line naming the option, before anything is loaded or written
    dist_info, device = init_distributed(cfg.device)
    lock = RunLock(cfg.out_dir)
    set_up_files = _SetUpFiles(Path(cfg.out_dir))
    with StopOnSignal() as stop:
        try:
            try:
                run = _set_up(cfg, backbone, dist_info, device, lock, stop, set_up_files)
                _prepare_features(run)
                state = _start_or_resume(run)
            except Exception:  # refused before training started: this run leaves no file behind
                if dist_info.main:
                    set_up_files.remove_new()
                raise
            loop = _Loop.start(run, state)
            while state.global_step < loop.stop_at and not loop.stopped_early:
                _train_epoch(run, state, loop, *divmod(state.global_step, run.features.plan.steps_per_epoch))
            return _finish(run, state, loop)
        finally:
            lock.release()


class _TrainFeatures(Protocol):
    """Where a run's image features come from, step by step: the feature cache or the image tower."""

    plan: TrainingPlan | BatchPlan
    skipped: int  # images already left out (unreadable when the cache was made)

    def epoch(self, epoch: int, start_step: int) -> Iterator[tuple[torch.Tensor | None, torch.Tensor | None, int]]:
        """`(features [B*V, D] | None, labels [B*V] | None, images skipped)` per step of `epoch` from `start_step`."""
        ...


class _CachedFeatures:
    """Training features read from the cache (`--feature-cache`): views drawn once, indexed per step."""

    def __init__(self, cached: ImageFeatures, plan: BatchPlan, device: torch.device):
        self.cached, self.plan, self.device, self.skipped = cached, plan, device, cached.skipped

    def epoch(self, epoch: int, start_step: int):
        for idx in self.plan.batches(epoch, start_step):
            feats = self.cached.features[idx].float()
            labels = self.cached.labels[idx].repeat_interleave(feats.shape[1])
            yield feats.flatten(0, 1).to(self.device), labels.to(self.device), 0


class _EncodedFeatures:
    """Training features from the image tower every step: new augmented views each epoch."""

    def __init__(self, cfg: PretrainConfig, backbone: Backbone, plan: TrainingPlan, device: torch.device):
        self.cfg, self.backbone, self.plan, self.device, self.skipped = cfg, backbone, plan, device, 0

    def epoch(self, epoch: int, start_step: int):
        cfg = self.cfg
        transform = MultiView(train_transform(self.backbone.image_spec, randaugment=cfg.augment), cfg.views)
        for pixels, labels, skipped in self.plan.pixel_batches(transform, epoch, start_step, cfg.num_workers,
                                                               self.device.type == "cuda"):
            if pixels is None:
                yield None, None, skipped
                continue
            feats = encode_pixels(self.backbone, pixels, cfg.precision)
            yield feats.flatten(0, 1), labels.repeat_interleave(feats.shape[1]).to(self.device), skipped


@dataclass
class _Run:
    """What the phases of one run share; fixed by `_set_up` and `_prepare_features`."""

    cfg: PretrainConfig
    dist: Dist
    device: torch.device
    out_dir: Path
    checkpoint_path: Path
    stop: StopOnSignal
    saved: dict | None  # the header state of the checkpoint this run resumes, or None for a new run
    train: TrainingData
    val: TrainingData | None
    backbone: Backbone
    prompt: Prompt
    class_tokens: ClassTokens
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler | None
    model: torch.nn.Module  # the prompt, or its DDP wrapper
    logit_scale: float
    negatives_per_step: int  # K - 1
    features: _TrainFeatures | None = None
    val_features: tuple[torch.Tensor, torch.Tensor] | None = None
    logger: _Logger | None = None
    meta: dict = field(default_factory=dict)  # written into every saved prompt

    @property
    def num_classes(self) -> int:
        return len(self.train.classnames)

    @property
    def total_steps(self) -> int:
        return self.features.plan.steps_per_epoch * self.cfg.epochs


@dataclass
class _Loop:
    """The training loop's own counters (not checkpointed)."""

    stop_at: int
    bar: tqdm
    last_checkpoint: int | None
    consecutive_bad: int = 0
    stopped_early: bool = False  # max_bad_steps consecutive non-finite steps

    @classmethod
    def start(cls, run: _Run, state: RunState) -> "_Loop":
        cfg, total, stop = run.cfg, run.total_steps, run.stop
        last_checkpoint = stop.last_checkpoint
        stop.deferred = True  # from here a signal stops the run after the current step, with a checkpoint
        if stop.signum:  # a signal during the set-up: stop before the first step
            raise Interrupted(stop.signum, _stop_message(stop.signum, state.global_step, total, run.checkpoint_path,
                                                         last_checkpoint))
        return cls(stop_at=min(total, cfg.max_steps) if cfg.max_steps is not None else total,
                   bar=tqdm(total=total, initial=state.global_step, disable=not (cfg.progress and run.dist.main),
                            desc="pretrain", dynamic_ncols=True),
                   last_checkpoint=last_checkpoint)


def _set_up(cfg: PretrainConfig, backbone: Backbone | None, dist_info: Dist, device: torch.device, lock: RunLock,
            stop: StopOnSignal, set_up_files: _SetUpFiles) -> _Run:
    """Phase 1: claim the out-dir (or the checkpoint to resume), load the data and the backbone, make the
    prompt, its class tokens and the optimizer."""
    out_dir = Path(cfg.out_dir)
    checkpoint_path = out_dir / "checkpoint.safetensors"
    saved = dist_info.on_main(lambda: _claim_out_dir(cfg, out_dir, checkpoint_path, lock, set_up_files),
                              share=True)
    stop.checkpoint_path = checkpoint_path
    stop.last_checkpoint = saved["global_step"] if saved is not None else None  # what a signal during set-up leaves
    # rank 0 makes (or re-reads) the split; the others then read the file it wrote: made once, never per rank
    loaded = dist_info.on_main(lambda: load_training_data(cfg, out_dir, reuse_split=saved is not None))
    train, val = loaded if dist_info.main else load_training_data(cfg, out_dir, reuse_split=True)
    backbone = backbone or load_backbone(cfg.backbone, cfg.pretrained, device=device)
    if cfg.compile and not (hasattr(backbone, "compile_text") and backbone.compile_text(True)):
        warnings.warn(f"--compile: backbone {backbone.name!r} has no compilable text path; running eager",
                      stacklevel=1)
    num_classes = len(train.classnames)
    if num_classes < 2:
        raise ValueError(f"pre-training needs at least 2 classes, got {num_classes}")

    torch.manual_seed(cfg.seed + dist_info.rank)
    prompt = Prompt.init(backbone, n_ctx=None if cfg.ctx_init else cfg.n_ctx, words=cfg.ctx_init, seed=cfg.seed)
    prompt.to(device)
    class_tokens = prompt.tokenize_classes(backbone, train.classnames,
                                           source=cfg.names or cfg.split_file or cfg.train_classes or cfg.train_root)
    optimizer = torch.optim.SGD([prompt.ctx], lr=cfg.warmup_lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    scaler = torch.amp.GradScaler("cuda") if device.type == "cuda" and cfg.precision == "fp16" else None
    all_classes = cfg.classes_per_step <= 0 or cfg.classes_per_step > num_classes
    return _Run(cfg, dist_info, device, out_dir, checkpoint_path, stop, saved, train, val, backbone, prompt,
                class_tokens, optimizer, scaler,
                model=DistributedDataParallel(prompt) if dist_info.world > 1 else prompt,
                logit_scale=cfg.logit_scale if cfg.logit_scale is not None else backbone.logit_scale,
                negatives_per_step=num_classes if all_classes else cfg.classes_per_step - 1)


def _prepare_features(run: _Run) -> None:
    """Phase 2: the training features' source (a feature cache: views precomputed once, by rank 0 then read
    by the others; or the image tower every step), the step plan, and this rank's validation features."""
    cfg, dist_info, backbone = run.cfg, run.dist, run.backbone
    cached = None
    if cfg.feature_cache:
        aug = MultiView(train_transform(backbone.image_spec, randaugment=cfg.augment), cfg.views)
        if not cfg.augment and cfg.views == 1:
            aug = backbone.eval_transform()

        def train_features() -> ImageFeatures:
            return run.train.cached_features(Path(cfg.feature_cache) / "train", backbone, aug, cfg.seed, cfg.views,
                                             cfg.num_workers, cfg.precision, cfg.progress and dist_info.main)

        cached = dist_info.on_main(train_features)  # rank 0 computes (or finds) the cache; a failure stops all
        if not dist_info.main:
            cached = train_features()  # ... then the others read it
    if run.val is not None and cfg.validate:
        cache_dir = Path(cfg.feature_cache) / f"val-rank{dist_info.rank}-of{dist_info.world}" if cfg.feature_cache else None
        vf = dist_info.on_every(lambda: run.val.validation_features(
            backbone, dist_info.rank, dist_info.world, cfg.num_workers, cfg.precision, cache_dir,
            cfg.progress and dist_info.main))
        run.val_features = (vf.features.float(), vf.labels)
    if cached is not None:
        plan = BatchPlan(len(cached), cfg.batch_size, dist_info.rank, dist_info.world, cfg.seed)
        run.features = _CachedFeatures(cached, plan, run.device)
    else:
        plan = run.train.plan(cfg.batch_size, dist_info.rank, dist_info.world, cfg.seed)
        run.features = _EncodedFeatures(cfg, backbone, plan, run.device)


def _start_or_resume(run: _Run) -> RunState:
    """Phase 3: a new run's state, or the checkpoint's (its run checked against this one: `check_resume`,
    the change recorded in `resumes`); writes config.json and starts the log."""
    cfg, dist_info, saved = run.cfg, run.dist, run.saved
    steps_per_epoch = run.features.plan.steps_per_epoch
    facts = run_facts(run.backbone, run.train, dist_info.world, steps_per_epoch,
                      cfg.num_workers if cfg.train_shards else None)
    this_run = {"settings": run_settings(cfg), "facts": facts}
    state, resume_record = RunState(skipped_images=run.features.skipped), None
    if saved is not None:
        changes = dist_info.on_main(lambda: _check_resumed_run(run, this_run), share=True)
        state = RunState.from_json(load_checkpoint(run.checkpoint_path, run.prompt, run.optimizer))
        resume_record = {"step": state.global_step, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                         "host": socket.gethostname(),
                         "changed": {k: [a, b] for k, (a, b) in sorted(changes.items())}}
        state.resumes.append(resume_record)
    state.run = this_run
    run.logger = _Logger(run.out_dir, dist_info.main)

    def start_writes() -> None:
        config_record = {**asdict(cfg), "num_classes": run.num_classes, "num_train_images": len(run.train),
                         "num_val_images": len(run.val) if run.val is not None else 0, "world_size": dist_info.world,
                         "steps_per_epoch": steps_per_epoch, "images_per_step_per_rank": run.features.plan.batch_size,
                         "logit_scale": run.logit_scale,
                         "backbone_info": {**run.backbone.describe(), "weights": facts["backbone_weights"]},
                         "skipped_files": dict(run.train.skipped or {}), "resumes": state.resumes}
        atomic_write_json(run.out_dir / "config.json", config_record)
        run.logger.start(state.global_step if saved is not None else None)
        if resume_record is not None:
            run.logger.log({"event": "resume", **resume_record})

    dist_info.on_main(start_writes)
    run.meta = {"recipe": cfg.recipe(), "num_classes": run.num_classes,
                "trained_on": cfg.train_root or cfg.split_file or cfg.train_shards}
    if state.resumes:
        run.meta["resumes"] = state.resumes
    return state


def _check_resumed_run(run: _Run, this_run: dict) -> dict[str, tuple]:
    """Rank 0: the checkpoint's run against this one, now that its facts are known (settings of moved files
    compared by content, `RESUME_BY_CONTENT`); returns the changes taken, refuses the others."""
    saved, cfg = run.saved, run.cfg
    changes = {}
    if "run" in saved:
        changes = _differences(saved["run"]["settings"], this_run["settings"])
        moved = {k: v for k, v in changes.items() if k in RESUME_BY_CONTENT}
        changes.update(check_resume(comparable_facts(saved["run"]["facts"]), comparable_facts(this_run["facts"]),
                                    _allowed_changes(cfg), run.checkpoint_path, causes=moved))
        if moved:
            listed = "; ".join(f"--{k.replace('_', '-')} {a} -> {b}" for k, (a, b) in sorted(moved.items()))
            warnings.warn(f"--resume: {listed}: taken as the same run (the same backbone weights, class list "
                          f"and image file names; recorded in config.json 'resumes')", stacklevel=2)
    if saved["global_step"] > run.total_steps:
        raise ValueError(f"{run.checkpoint_path}: the run is at step {saved['global_step']}, past the "
                         f"{run.total_steps} steps of --epochs {cfg.epochs}")
    return changes


def _train_epoch(run: _Run, state: RunState, loop: _Loop, epoch: int, start: int) -> None:
    """Phase 4: the steps of `epoch` from step `start` of it, until its end, `loop.stop_at`, a signal
    (`Interrupted`) or too many non-finite steps in a row (`loop.stopped_early`)."""
    cfg, dist_info = run.cfg, run.dist
    lr = lr_at_epoch(cfg, epoch)
    for group in run.optimizer.param_groups:
        group["lr"] = lr
    t0 = time.perf_counter()
    for image_features, labels, skipped in run.features.epoch(epoch, start):
        step = state.global_step
        state.skipped_images += skipped
        loss, num_images = _train_step(run, state, loop, image_features, labels)
        n_img = num_images * dist_info.world
        elapsed = time.perf_counter() - t0
        t0 = time.perf_counter()
        loop.bar.update(1)
        loop.bar.set_postfix(loss=f"{float(loss):.4f}", lr=f"{lr:.2e}", img_s=f"{n_img / max(elapsed, 1e-9):.0f}")
        if step % cfg.log_every == 0 or state.global_step == run.total_steps:
            record = {"step": step, "epoch": epoch, "loss": float(loss), "lr": lr,
                      "images_per_s": n_img / max(elapsed, 1e-9)}
            dist_info.on_main(lambda: run.logger.log(record))  # a failed write stops every rank alike
        if loop.consecutive_bad >= cfg.max_bad_steps:
            loop.stopped_early = True
            return
        end_of_epoch = state.global_step % run.features.plan.steps_per_epoch == 0
        if end_of_epoch:
            _end_of_epoch(run, state, epoch)
        _checkpoint_or_stop(run, state, loop, end_of_epoch)
        if state.global_step >= loop.stop_at:
            return


def _train_step(run: _Run, state: RunState, loop: _Loop, image_features: torch.Tensor | None,
                labels: torch.Tensor | None) -> tuple[torch.Tensor, int]:
    """One optimisation step (`encode_and_backward`, then SGD on the context), or, when the loss or the
    gradient is not finite on any rank, the step skipped on every rank and counted. Returns the loss and
    this rank's images."""
    cfg, dist_info, device, optimizer, scaler = run.cfg, run.dist, run.device, run.optimizer, run.scaler
    step = state.global_step
    if image_features is None:  # every image of this batch was unreadable: nothing to learn from
        image_features = torch.zeros(0, run.backbone.embed_dim, device=device)
        labels = torch.zeros(0, dtype=torch.long, device=device)
    negatives = sample_negatives(run.num_classes, run.negatives_per_step, step_generator(cfg.seed, dist_info.rank, step))
    optimizer.zero_grad(set_to_none=True)
    grad_scale = scaler.get_scale() if scaler is not None else 1.0
    loss = encode_and_backward(run.model, run.prompt, run.backbone, run.class_tokens, image_features, labels,
                               negatives, cfg, run.logit_scale, grad_scale)
    if scaler is not None:
        scaler.unscale_(optimizer)
    finite_loss = bool(torch.isfinite(loss).all())
    if dist_info.world > 1:  # all ranks must agree to take or skip the step
        finite_loss = dist_info.sum([float(not finite_loss)], device)[0] == 0
    ctx_grad = run.prompt.ctx.grad
    if finite_loss and ctx_grad is not None and bool(torch.isfinite(ctx_grad).all()):
        if scaler is not None:
            scaler.step(optimizer)
        else:
            optimizer.step()
        loop.consecutive_bad = 0
    else:
        state.bad_steps += 1
        loop.consecutive_bad += 1
        warnings.warn(f"step {step}: non-finite loss or gradient (loss={float(loss):.4g}); step skipped",
                      stacklevel=1)
    if scaler is not None:
        scaler.update()
    state.global_step = step + 1
    return loss, labels.numel()


def _end_of_epoch(run: _Run, state: RunState, epoch: int) -> None:
    """Phase 5: validate (every rank its share), record the epoch, keep the prompt when it is the best yet."""
    val_acc = _validate(run.prompt, run.backbone, run.class_tokens, run.val_features, run.dist, run.device)
    record = {"epoch": epoch, "step": state.global_step, "val_acc1": val_acc}
    state.history.append(record)
    improved = val_acc is None or state.best_val_acc1 is None or val_acc > state.best_val_acc1
    if improved:
        state.best_val_acc1, state.best_epoch = val_acc, epoch

    def epoch_end_writes() -> None:
        run.logger.log(record)
        if improved:
            run.prompt.save(run.out_dir / "prompt_best.safetensors", **run.meta, epochs=epoch + 1, val_acc1=val_acc)

    run.dist.on_main(epoch_end_writes)


def _checkpoint_or_stop(run: _Run, state: RunState, loop: _Loop, end_of_epoch: bool) -> None:
    """After a step: a checkpoint at an epoch's end, every `checkpoint_every` steps, at the last step and on
    a signal (every rank stops after the same step: `Interrupted`)."""
    dist_info, done = run.dist, state.global_step
    saved_now = end_of_epoch or done % run.cfg.checkpoint_every == 0 or done >= loop.stop_at
    signum = dist_info.max(run.stop.signum, run.device)  # every rank stops after the same step
    if saved_now or signum:
        dist_info.on_main(lambda: save_checkpoint(run.checkpoint_path, run.prompt, run.optimizer, state))
        loop.last_checkpoint = run.stop.last_checkpoint = state.global_step
    if signum and state.global_step < run.total_steps:
        loop.bar.close()
        dist_info.barrier()
        raise Interrupted(signum, _stop_message(signum, state.global_step, run.total_steps, run.checkpoint_path,
                                                loop.last_checkpoint))


def _finish(run: _Run, state: RunState, loop: _Loop) -> dict:
    """Phase 6: close the log; unless stopped by non-finite steps (RuntimeError), save the final prompt
    and summary.json (rank 0). Returns the summary."""
    loop.bar.close()
    run.logger.close()
    run.dist.barrier()
    summary = {"global_step": state.global_step, "best_val_acc1": state.best_val_acc1, "best_epoch": state.best_epoch,
               "bad_steps": state.bad_steps, "skipped_images": state.skipped_images, "total_steps": run.total_steps,
               "finished": state.global_step >= run.total_steps, "num_classes": run.num_classes,
               "out_dir": str(run.out_dir)}
    if loop.stopped_early:
        path = run.checkpoint_path
        kept = f"last good checkpoint: {path}" if path.exists() else "no checkpoint was written"
        raise RuntimeError(f"stopped after {run.cfg.max_bad_steps} consecutive non-finite steps at step "
                           f"{state.global_step}; {kept}")
    if run.dist.main:
        final_epoch = state.global_step // run.features.plan.steps_per_epoch
        run.prompt.save(run.out_dir / "prompt.safetensors", **run.meta, epochs=final_epoch, steps=state.global_step)
        atomic_write_json(run.out_dir / "summary.json", summary)
    return summary
