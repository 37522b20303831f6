"""Other systems' prompt checkpoints, built the way their trainers save them, read by `pomp.interop`.

Checked against what the producer saved: the imported ctx equals the trainer's own parameter;
refusals name the tensors pomp cannot keep. Every file is written by `torch.save` of the
trainer's real objects: `nn.Module.state_dict()` of prompt learners laid out with the trainers'
key names, a real `torch.optim.SGD` and, for Dassl, the `state_dict()` of Dassl's
`ConstantWarmupScheduler` (written out below as Dassl defines it) whose `successor` entry is a
real `CosineAnnealingLR` object. Key names, from the trainers (CoOp/CoCoOp `trainers/*.py`,
MaPLe `trainers/maple.py`, POMP `trainers/pomp.py`, ZSSeg's prompt extractors, Dassl's
`save_checkpoint`, detectron2's `Checkpointer`):
- POMP (prompt learner registered alone): ctx, train_token_prefix/suffix, test_token_prefix/suffix
- CoOp: ctx [n_ctx, dim] or class-specific [n_cls, n_ctx, dim], token_prefix, token_suffix
- CoCoOp: ctx, meta_net.linear1.{weight,bias}, meta_net.linear2.{weight,bias}, token_prefix, token_suffix
- MaPLe (whole CustomCLIP registered): prompt_learner.{ctx, proj.*, compound_prompts_text.<i>,
  compound_prompt_projections.<i>.*, token_prefix, token_suffix}, image_encoder.*, text_encoder.*, logit_scale
- ZSSeg (detectron2 `{'model', 'optimizer', 'scheduler', 'iteration'}`):
  clip_adapter.prompt_learner.{prefix_prompt, suffix_prompt, start_signal, dot_signal, end_signal, pad_signal}
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from collections import OrderedDict
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG as TINY
from conftest import assert_one_line_error
from torch import nn
from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler, PolynomialLR

from pomp.cli import main
from pomp.interop import convert_prompt, load_any, load_official, load_zsseg, save_official, save_zsseg
from pomp.prompt import Prompt
from pomp.torchfile import Opaque, read_torch_file

TEXT_WIDTH = 48  # tiny-clip.json
REPO = Path(__file__).resolve().parents[1]


# --- producers ---------------------------------------------------------------------------------
class ConstantWarmupScheduler(LRScheduler):
    """Dassl's `dassl/optim/lr_scheduler.py` warm-up (constant lr for `warmup_epoch` epochs, then `successor`)."""

    def __init__(self, optimizer, successor, warmup_epoch, cons_lr, last_epoch=-1):
        self.successor = successor
        self.warmup_epoch = warmup_epoch
        self.cons_lr = cons_lr
        super().__init__(optimizer, last_epoch)

    def get_lr(self):
        if self.last_epoch >= self.warmup_epoch:
            return self.successor.get_last_lr()
        return [self.cons_lr for _ in self.base_lrs]

    def step(self, epoch=None):
        if self.last_epoch >= self.warmup_epoch:
            self.successor.step(epoch)
            self._last_lr = self.successor.get_last_lr()
        else:
            super().step(epoch)


class CreatesFile:
    """Unpickling this calls `open(path, "w")`: a stand-in for any code a checkpoint could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def train_one_step(model: nn.Module) -> torch.optim.Optimizer:
    """Dassl's optimisation as the official POMP config sets it: SGD over every parameter of the registered
    module (Dassl's `build_optimizer` passes `model.parameters()`, frozen ones included; they never get a
    gradient), warm-up then cosine; one step taken so the optimizer holds momentum buffers."""
    optim = torch.optim.SGD(model.parameters(), lr=0.002, momentum=0.9, weight_decay=5e-4)
    sched = ConstantWarmupScheduler(optim, CosineAnnealingLR(optim, T_max=5), warmup_epoch=1, cons_lr=1e-5)
    sum((p.float() ** 2).sum() for p in model.parameters() if p.requires_grad).backward()
    optim.step()
    sched.step()
    return optim, sched


def dassl_save(model: nn.Module, path: Path, epoch: int = 5, legacy: bool = False, **extra) -> Path:
    """Dassl `TrainerX.save_model` -> `save_checkpoint`: this dict, `module.` stripped, `torch.save`d
    (`legacy`: in torch's pre-1.6 format, as Dassl wrote it on old torch versions)."""
    optim, sched = train_one_step(model)
    state = {"state_dict": OrderedDict((k.removeprefix("module."), v) for k, v in model.state_dict().items()),
             "epoch": epoch, "optimizer": optim.state_dict(), "scheduler": sched.state_dict(), "val_result": None,
             **extra}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


def normal(*shape, dtype=torch.float16) -> torch.Tensor:
    return (torch.randn(*shape) * 0.02).to(dtype)


class POMPPromptLearner(nn.Module):
    """POMP's prompt learner: a shared fp16 ctx and fixed token buffers for the train and test class lists."""

    def __init__(self, n_ctx=4, width=512, n_train=3, n_test=2):
        super().__init__()
        self.ctx = nn.Parameter(normal(n_ctx, width))
        for split, n in (("train", n_train), ("test", n_test)):
            self.register_buffer(f"{split}_token_prefix", normal(n, 1, width))
            self.register_buffer(f"{split}_token_suffix", normal(n, 77 - 1 - n_ctx, width))


class CoOpPromptLearner(nn.Module):
    def __init__(self, n_ctx=16, width=TEXT_WIDTH, n_cls=3, class_specific=False):
        super().__init__()
        self.ctx = nn.Parameter(normal(n_cls, n_ctx, width) if class_specific else normal(n_ctx, width))
        self.register_buffer("token_prefix", normal(n_cls, 1, width))
        self.register_buffer("token_suffix", normal(n_cls, 77 - 1 - n_ctx, width))


class KgCoOpPromptLearner(CoOpPromptLearner):
    """KgCoOp's prompt learner (`trainers/kgcoop.py`): CoOp's shared context plus a `bias_vectors [1, dim]`
    parameter its forward never uses; its trainer freezes every parameter whose name lacks "ctx"."""

    def __init__(self, n_ctx=4, width=TEXT_WIDTH, n_cls=3):
        super().__init__(n_ctx, width, n_cls)
        self.bias_vectors = nn.Parameter(normal(1, width))
        for name, p in self.named_parameters():
            p.requires_grad_("ctx" in name)


class CoCoOpPromptLearner(CoOpPromptLearner):
    def __init__(self, n_ctx=4, width=TEXT_WIDTH, vis_dim=32, n_cls=3):
        super().__init__(n_ctx, width, n_cls)
        self.meta_net = nn.Sequential(OrderedDict([
            ("linear1", nn.Linear(vis_dim, vis_dim // 16)), ("relu", nn.ReLU(inplace=True)),
            ("linear2", nn.Linear(vis_dim // 16, width)),
        ])).half()


class MaPLeCustomCLIP(nn.Module):
    """MaPLe registers its whole CustomCLIP: the prompt learner plus the frozen towers and logit scale."""

    def __init__(self, n_ctx=2, width=TEXT_WIDTH, vision_width=64, depth=3, n_cls=3):
        super().__init__()
        learner = nn.Module()
        learner.ctx = nn.Parameter(normal(n_ctx, width, dtype=torch.float32))
        learner.proj = nn.Linear(width, vision_width).half()
        learner.compound_prompts_text = nn.ParameterList(
            [nn.Parameter(normal(n_ctx, width, dtype=torch.float32)) for _ in range(depth - 1)])
        learner.compound_prompt_projections = nn.ModuleList([nn.Linear(width, vision_width) for _ in range(depth - 1)])
        learner.register_buffer("token_prefix", normal(n_cls, 1, width))
        learner.register_buffer("token_suffix", normal(n_cls, 77 - 1 - n_ctx, width))
        self.prompt_learner = learner
        self.image_encoder = nn.Linear(8, vision_width)
        self.text_encoder = nn.Linear(8, width)
        self.logit_scale = nn.Parameter(torch.tensor(4.6052))
        for name, p in self.named_parameters():
            p.requires_grad_("prompt_learner" in name)


class ZSSegModel(nn.Module):
    """The parts of a ZSSeg model a checkpoint holds around its learnable prompt (`LearnablePromptExtractor`)."""

    def __init__(self, n_prefix=4, n_suffix=0, width=TEXT_WIDTH):
        super().__init__()
        learner = nn.Module()
        learner.prefix_prompt = nn.Parameter(normal(n_prefix, width, dtype=torch.float32))
        learner.suffix_prompt = nn.Parameter(normal(n_suffix, width, dtype=torch.float32)) if n_suffix else None
        for signal in ("start", "dot", "end", "pad"):
            learner.register_buffer(f"{signal}_signal", normal(1, width))
        self.clip_adapter = nn.Module()
        self.clip_adapter.prompt_learner = learner
        self.sem_seg_head = nn.Linear(8, 4)


def detectron2_save(model: nn.Module, path: Path, iteration: int = 9999, **extra) -> Path:
    """detectron2's `Checkpointer.save`: model, optimizer and scheduler state dicts, iteration (and `extra`
    checkpointables)."""
    optim = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.02, momentum=0.9)
    sched = PolynomialLR(optim, total_iters=10)
    sum((p.float() ** 2).sum() for p in model.parameters() if p.requires_grad).backward()
    optim.step()
    sched.step()
    torch.save({"model": model.state_dict(), "optimizer": optim.state_dict(), "scheduler": sched.state_dict(),
                "iteration": iteration, **extra}, path)
    return path


def one_line_error(capsys, rc: int, command: str, *needles: str) -> str:
    """`assert_one_line_error` on what was printed, which also holds no terminal escape and no torch advice."""
    err = capsys.readouterr().err
    assert "\x1b" not in err and "weights_only" not in err, err
    return assert_one_line_error(rc, err, command, *needles)


# --- the official POMP checkpoint ---------------------------------------------------------------
def test_official_layout_with_payload_is_read_and_its_code_never_runs(tmp_path, capsys):
    learner = POMPPromptLearner()
    marker = tmp_path / "marker"
    path = dassl_save(learner, tmp_path / "prompt_learner" / "model.pth.tar-5", payload=CreatesFile(marker))
    raw = path.read_bytes()
    assert b"CosineAnnealingLR" in raw and b"ConstantWarmupScheduler" not in raw  # the scheduler's __dict__
    with pytest.raises(Exception, match="Weights only load failed"):
        torch.load(path, weights_only=True)  # why a restricted unpickler is needed
    proof = tmp_path / "proof.pth.tar"
    proof.write_bytes(raw)
    torch.load(proof, weights_only=False)["payload"].close()  # the payload is live: an unsafe load runs it
    assert marker.exists()
    marker.unlink()

    tree = read_torch_file(path)  # what the restricted unpickler made of the objects: inert stand-ins
    successor, payload = tree["scheduler"]["successor"], tree["payload"]
    assert isinstance(successor, Opaque) and successor.target == "torch.optim.lr_scheduler.CosineAnnealingLR"
    assert successor.state["T_max"] == 5 and isinstance(payload, Opaque) and payload.target == "io.open"
    assert tree["optimizer"]["param_groups"][0]["lr"] == 0.002 and tree["val_result"] is None

    prompt = load_official(path)
    assert prompt.ctx.dtype == torch.float32 and prompt.ctx.shape == (4, 512)
    assert torch.equal(prompt.ctx, learner.ctx.detach().float())  # what the trainer saved (after its SGD step)
    assert prompt.meta["epoch"] == 5 and prompt.meta["imported_from"] == "dassl"
    assert prompt.meta["ctx_dtype"] == "float16"
    assert prompt.meta["fixed_buffers_ignored"] == sorted(k for k in learner.state_dict() if k != "ctx")
    assert torch.equal(load_any(path).ctx, prompt.ctx)

    assert main(["info", str(path)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["n_ctx"] == 4 and info["width"] == 512 and info["epoch"] == 5
    assert main(["convert", str(path), str(tmp_path / "imported.safetensors")]) == 0
    assert torch.equal(Prompt.load(tmp_path / "imported.safetensors").ctx, prompt.ctx)
    assert not marker.exists(), "the checkpoint's code ran"


def test_official_layout_in_torchs_legacy_format_is_read_without_running_code(tmp_path, capsys):
    """Dassl on torch < 1.6 (or `_use_new_zipfile_serialization=False`) writes a pickle stream, not a zip."""
    learner = POMPPromptLearner()
    marker = tmp_path / "marker"
    path = dassl_save(learner, tmp_path / "model.pth.tar-5", legacy=True, payload=CreatesFile(marker),
                      val_result=np.float64(25.3))  # a numpy scalar, as evaluators return them
    assert not zipfile.is_zipfile(path)
    proof = tmp_path / "proof.pth.tar"
    proof.write_bytes(path.read_bytes())
    torch.load(proof, weights_only=False)["payload"].close()  # an unsafe load runs the payload
    assert marker.exists()
    marker.unlink()

    prompt = load_official(path)
    assert torch.equal(prompt.ctx, learner.ctx.detach().float()) and prompt.meta["epoch"] == 5
    tree = read_torch_file(path)
    assert tree["scheduler"]["successor"].target == "torch.optim.lr_scheduler.CosineAnnealingLR"
    momentum = tree["optimizer"]["state"][0]["momentum_buffer"]  # storages shared and filled in after the tree
    assert momentum.dtype == torch.float16 and momentum.shape == (4, 512)
    assert torch.equal(tree["state_dict"]["train_token_suffix"], learner.train_token_suffix)
    assert main(["info", str(path)]) == 0 and json.loads(capsys.readouterr().out)["epoch"] == 5
    assert not marker.exists(), "the checkpoint's code ran"

    raw = path.read_bytes()
    for cut in (len(raw) // 10, len(raw) // 2, len(raw) - 3):  # in the pickles, in the tensor data, at the end
        short = tmp_path / f"short{cut}.pth.tar"
        short.write_bytes(raw[:cut])
        one_line_error(capsys, main(["info", str(short)]), "info", str(short), "cut short")


def test_official_layout_runs_through_eval(class_folders, tmp_path, capsys):
    learner = POMPPromptLearner(width=TEXT_WIDTH)
    path = dassl_save(learner, tmp_path / "model.pth.tar-5", payload=CreatesFile(tmp_path / "marker"))
    rc = main(["eval", "--backbone", TINY, "--prompt", str(path), "--data", str(class_folders / "images"),
               "--names", str(class_folders / "names.txt"), "--out-dir", str(tmp_path / "eval"),
               "--num-workers", "0", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert len(list((tmp_path / "eval").glob("images__prompt_model.pth.tar-5.json"))) == 1
    assert not (tmp_path / "marker").exists()


# --- what pomp cannot represent ------------------------------------------------------------------
@pytest.mark.parametrize("producer, needles", [
    ("cocoop", ["meta_net.linear1.weight", "meta_net.linear2.bias", "CoCoOp's meta-net"]),
    ("maple", ["proj.weight", "compound_prompts_text.0", "compound_prompt_projections.1.bias", "MaPLe"]),
    ("coop_class_specific", ["class-specific", "(3, 16, 48)"]),
    ("zsseg_suffix", ["suffix_prompt", "a learnable suffix"]),
])
def test_learners_pomp_cannot_represent_are_refused_naming_what(tmp_path, capsys, class_folders, producer, needles):
    path = tmp_path / "model.pth.tar-5"
    if producer == "cocoop":
        dassl_save(CoCoOpPromptLearner(), path)
    elif producer == "maple":
        dassl_save(MaPLeCustomCLIP(), path)
    elif producer == "coop_class_specific":
        dassl_save(CoOpPromptLearner(class_specific=True), path)
    else:
        detectron2_save(ZSSegModel(n_suffix=2), path)
    with pytest.raises(ValueError) as caught:
        load_any(path)
    assert str(caught.value).startswith(f"{path}: ")
    for needle in needles:
        assert needle in str(caught.value)
    out = tmp_path / "out.safetensors"
    one_line_error(capsys, main(["info", str(path)]), "info", str(path), *needles)
    one_line_error(capsys, main(["convert", str(path), str(out)]), "convert", str(path), needles[0])
    assert not out.exists() and not (tmp_path / "out.json").exists()
    rc = main(["eval", "--backbone", TINY, "--prompt", str(path), "--data", str(class_folders / "images"),
               "--names", str(class_folders / "names.txt"), "--out-dir", str(tmp_path / "eval"), "--device", "cpu"])
    one_line_error(capsys, rc, "eval", str(path), needles[0])
    assert not (tmp_path / "eval").exists()


def test_coop_shared_context_is_accepted_with_its_buffers(tmp_path):
    learner = CoOpPromptLearner(n_ctx=16)
    prompt = load_any(dassl_save(learner, tmp_path / "prompt_learner" / "model.pth.tar-50", epoch=50))
    assert torch.equal(prompt.ctx, learner.ctx.detach().float()) and prompt.meta["epoch"] == 50
    assert prompt.meta["fixed_buffers_ignored"] == ["token_prefix", "token_suffix"]


def test_kgcoop_unused_frozen_parameter_is_ignored_on_its_optimizers_evidence(tmp_path, capsys):
    learner = KgCoOpPromptLearner()
    path = dassl_save(learner, tmp_path / "prompt_learner" / "model.pth.tar-10", epoch=10)
    assert torch.load(path, weights_only=False)["optimizer"]["state"].keys() == {0}  # only ctx was updated
    prompt = load_any(path)
    assert torch.equal(prompt.ctx, learner.ctx.detach().float()) and prompt.meta["epoch"] == 10
    assert prompt.meta["untrained_ignored"] == ["bias_vectors"]
    # without an optimizer state saying so, the same tensor is refused by name
    no_evidence = dassl_save(KgCoOpPromptLearner(), tmp_path / "no_optimizer.pth.tar", optimizer=None)
    one_line_error(capsys, main(["info", str(no_evidence)]), "info", "bias_vectors")
    # the evidence only ever excuses tensors the optimizer left alone: a trained meta-net is still refused
    with pytest.raises(ValueError, match="meta_net"):
        load_any(dassl_save(CoCoOpPromptLearner(), tmp_path / "cocoop.pth.tar"))


def test_zsseg_learnable_prompt_without_suffix_is_accepted(tmp_path):
    model = ZSSegModel(n_prefix=4, n_suffix=0)
    marker = tmp_path / "marker"
    prompt = load_zsseg(detectron2_save(model, tmp_path / "model_final.pth", payload=CreatesFile(marker)))
    assert torch.equal(prompt.ctx, model.clip_adapter.prompt_learner.prefix_prompt.detach())
    assert prompt.meta["imported_from"] == "zsseg"
    assert not marker.exists(), "the checkpoint's code ran"


@pytest.mark.parametrize("saved", ["parameter", "tensor", "class_specific"])
def test_a_context_saved_alone_is_a_prompt(tmp_path, capsys, saved):
    """`torch.save(model.prompt_learner.ctx, path)`: an nn.Parameter (or its data) and nothing else."""
    learner = CoOpPromptLearner(n_ctx=4, class_specific=saved == "class_specific")
    path = tmp_path / "ctx.pt"
    torch.save(learner.ctx if saved != "tensor" else learner.ctx.data, path)
    if saved == "class_specific":
        one_line_error(capsys, main(["info", str(path)]), "info", str(path), "class-specific")
        return
    prompt = load_any(path)
    assert torch.equal(prompt.ctx, learner.ctx.detach().float()) and prompt.meta["imported_from"] == "tensor"


def test_files_that_are_not_checkpoints_get_one_line(tmp_path, capsys):
    text = tmp_path / "notes.pth"
    text.write_text("not a checkpoint\n")
    one_line_error(capsys, main(["info", str(text)]), "info", str(text), "not a readable torch file")
    truncated = tmp_path / "model.pth.tar-1"
    full = dassl_save(POMPPromptLearner(width=TEXT_WIDTH), tmp_path / "full.pth.tar").read_bytes()
    truncated.write_bytes(full[: len(full) // 2])
    one_line_error(capsys, main(["info", str(truncated)]), "info", str(truncated), "unreadable torch file")
    no_ctx = tmp_path / "no_ctx.pth.tar"
    torch.save({"state_dict": {"weight": torch.zeros(2)}, "epoch": 1}, no_ctx)
    one_line_error(capsys, main(["info", str(no_ctx)]), "info", str(no_ctx), "no prompt context")
    empty = tmp_path / "empty.pth"
    empty.write_bytes(b"")
    one_line_error(capsys, main(["info", str(empty)]), "info", str(empty), "empty file")
    packed = tmp_path / "prompt_learner.tar.gz"  # a release packed the usual way
    with tarfile.open(packed, "w:gz") as tar:
        tar.add(tmp_path / "full.pth.tar", arcname="prompt_learner/model.pth.tar-5")
    one_line_error(capsys, main(["info", str(packed)]), "info", str(packed), "gzip-compressed", "unpack it first")
    weights = tmp_path / "ViT-B-16.pt"  # model weights handed over as a prompt: a TorchScript archive
    torch.jit.save(torch.jit.trace(nn.Linear(4, 4), torch.zeros(1, 4)), weights)
    one_line_error(capsys, main(["info", str(weights)]), "info", str(weights), "holds a pickled __torch__.",
                   "--pretrained")
    from safetensors.torch import save_file

    state_dict = tmp_path / "open_clip_model.safetensors"
    save_file({f"w{i:02d}": torch.zeros(1) for i in range(40)}, state_dict)
    line = one_line_error(capsys, main(["info", str(state_dict)]), "info", "no 'ctx' tensor", "and 32 more")
    assert "w39" not in line
    run_dir = tmp_path / "output"  # a Dassl output folder handed over instead of its checkpoint
    dassl_save(POMPPromptLearner(width=TEXT_WIDTH), run_dir / "prompt_learner" / "model.pth.tar-5")
    one_line_error(capsys, main(["info", str(run_dir)]), "info", str(run_dir),
                   str(run_dir / "prompt_learner" / "model.pth.tar-5"))


# --- writing the official and ZSSeg formats ------------------------------------------------------
def test_official_export_is_fp16_with_the_prompts_epoch(tmp_path):
    prompt = Prompt(torch.randn(4, TEXT_WIDTH) * 0.02)
    ours = prompt.save(tmp_path / "p.safetensors", epochs=3)
    path = convert_prompt(ours, tmp_path / "prompt_learner" / "model.pth.tar-3")
    raw = torch.load(path, weights_only=True)  # nothing but tensors and plain values: anyone can read it safely
    assert set(raw) == {"state_dict", "epoch", "optimizer", "scheduler", "val_result"}
    assert raw["epoch"] == 3  # from the prompt's metadata
    assert raw["state_dict"]["ctx"].dtype == torch.float16
    assert torch.equal(raw["state_dict"]["ctx"], prompt.ctx.detach().half())
    exact = save_official(prompt, tmp_path / "fp32.pth.tar", dtype="fp32")
    assert torch.equal(torch.load(exact, weights_only=True)["state_dict"]["ctx"], prompt.ctx.detach())
    imported = load_official(path)  # an imported checkpoint keeps its epoch through another conversion
    assert torch.load(save_official(imported, tmp_path / "again.pth"), weights_only=True)["epoch"] == 3
    assert torch.load(save_official(Prompt(prompt.ctx.detach()), tmp_path / "model.pth.tar-7"),
                      weights_only=True)["epoch"] == 7  # no metadata: the file name's


def test_convert_cli_dtype_and_round_trips(tmp_path, capsys):
    prompt = Prompt(torch.randn(4, TEXT_WIDTH) * 0.02)
    ours = prompt.save(tmp_path / "a.safetensors")
    assert main(["convert", str(ours), str(tmp_path / "model.pth.tar-5"), "--dtype", "fp32", "--epoch", "5"]) == 0
    assert main(["convert", str(tmp_path / "model.pth.tar-5"), str(tmp_path / "b.safetensors")]) == 0
    assert torch.equal(Prompt.load(tmp_path / "b.safetensors").ctx, prompt.ctx)
    assert main(["convert", str(ours), str(tmp_path / "z.pth"), "--format", "zsseg"]) == 0
    assert torch.equal(load_zsseg(tmp_path / "z.pth").ctx, prompt.ctx)
    capsys.readouterr()
    one_line_error(capsys, main(["convert", str(ours), str(tmp_path / "c.safetensors"), "--dtype", "fp16"]),
                   "convert", "--dtype")
    huge = Prompt(torch.full((2, TEXT_WIDTH), 1e6)).save(tmp_path / "huge.safetensors")
    one_line_error(capsys, main(["convert", str(huge), str(tmp_path / "huge.pth.tar")]), "convert", "float16")
    assert not (tmp_path / "huge.pth.tar").exists()


def test_zsseg_export_round_trip(tmp_path):
    prompt = Prompt(torch.randn(4, TEXT_WIDTH) * 0.02)
    raw = torch.load(save_zsseg(prompt, tmp_path / "model_final.pth"), weights_only=True)
    assert torch.equal(raw["model"]["clip_adapter.prompt_learner.ctx"], prompt.ctx.detach())


def test_old_import_paths_still_work():
    import pomp.export
    import pomp.prompt

    assert pomp.prompt.load_any is load_any and pomp.prompt.load_official is load_official
    assert pomp.export.load_zsseg is load_zsseg and pomp.export.convert_prompt is convert_prompt
