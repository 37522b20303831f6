"""Pre-training: the step's gradient, the schedule, resume equality, gradient caching, torchrun."""

import json
import math
import os
import subprocess
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG, torchrun_command

from pomp.loss import local_contrast_loss
from pomp.prompt import Prompt
from pomp.train import PretrainConfig, encode_and_backward, lr_at_epoch, pretrain, read_checkpoint_state


def test_lr_schedule_is_constant_warmup_then_cosine():
    cfg = PretrainConfig(epochs=5, lr=0.002, warmup_epochs=1, warmup_lr=1e-5)
    lrs = [lr_at_epoch(cfg, e) for e in range(5)]
    assert lrs[0] == 1e-5
    assert lrs[1] == pytest.approx(0.002)
    assert lrs[2] == pytest.approx(0.001 * (1 + math.cos(math.pi / 5)))
    assert lrs[4] == pytest.approx(0.001 * (1 + math.cos(3 * math.pi / 5)))


def _step_inputs(backbone, n_classes=9, batch=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    names = [f"class number {i}" for i in range(n_classes)]
    img = F.normalize(torch.randn(batch, backbone.embed_dim, generator=g), dim=-1)
    labels = torch.randint(0, n_classes, (batch,), generator=g)
    negatives = torch.randperm(n_classes, generator=g)[:4]
    return names, img, labels, negatives


@pytest.mark.parametrize("k", [5, 0])
def test_gradient_caching_equals_one_pass(backbone, k):
    names, img, labels, negatives = _step_inputs(backbone)
    if k == 0:
        negatives = torch.arange(len(names))
    grads, losses = [], []
    for chunk in (1000, 2):  # one pass vs. gradient caching in chunks of 2 classes
        prompt = Prompt.init(backbone, n_ctx=4, seed=0)
        vocab = prompt.tokenize_classes(backbone, names)
        cfg = PretrainConfig(text_chunk_size=chunk)
        losses.append(encode_and_backward(prompt, prompt, backbone, vocab, img, labels, negatives, cfg, 10.0))
        grads.append(prompt.ctx.grad.clone())
    torch.testing.assert_close(losses[1], losses[0], atol=1e-6, rtol=0)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-4 * float(grads[0].abs().max()), rtol=1e-4)


def test_step_matches_direct_loss(backbone):
    """Encoding each distinct class once gives the loss of encoding positives and negatives separately."""
    names, img, labels, negatives = _step_inputs(backbone, seed=1)
    prompt = Prompt.init(backbone, n_ctx=4, seed=0)
    vocab = prompt.tokenize_classes(backbone, names)
    loss = encode_and_backward(prompt, prompt, backbone, vocab, img, labels, negatives, PretrainConfig(), 10.0)
    with torch.no_grad():
        pos = prompt(backbone, vocab, labels)
        neg = prompt(backbone, vocab, negatives)
        direct = local_contrast_loss(img, pos, neg, labels, negatives, len(names), 10.0)
    assert float(loss) == pytest.approx(float(direct), abs=1e-6)


def _config(data: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(backbone=TINY_CONFIG, train_root=str(data / "images"),
                names=str(data / "names.txt"), shots=4, val_per_class=2, classes_per_step=4, batch_size=4, views=2,
                epochs=2, num_workers=0, out_dir=str(out), progress=False, checkpoint_every=2, lr=0.05)
    base.update(kw)
    return PretrainConfig(**base)


@pytest.mark.slow
def test_resume_equals_uninterrupted(class_folders, tmp_path):
    full = _config(class_folders, tmp_path / "full")
    summary = pretrain(full)
    assert summary["finished"] and summary["global_step"] == 12  # 24 images / 4 per step x 2 epochs
    cut = _config(class_folders, tmp_path / "cut", max_steps=5)
    assert not pretrain(cut)["finished"]
    # 5 steps < one epoch (24 images / 4 per step = 6 steps): no validation yet, so no best prompt; the
    # checkpoint the resume starts from holds step 5 (max_steps saves its last step)
    assert not (tmp_path / "cut" / "prompt_best.safetensors").exists()
    assert read_checkpoint_state(tmp_path / "cut" / "checkpoint.safetensors")["global_step"] == 5
    with pytest.raises(FileExistsError, match="--resume"):
        pretrain(_config(class_folders, tmp_path / "cut"))
    resumed = pretrain(_config(class_folders, tmp_path / "cut", resume=True))
    assert resumed["finished"]
    a = Prompt.load(tmp_path / "full" / "prompt.safetensors").ctx
    b = Prompt.load(tmp_path / "cut" / "prompt.safetensors").ctx
    assert torch.equal(a, b)
    init = Prompt.init(__import__("pomp").load_backbone(full.backbone), n_ctx=4, seed=0).ctx
    assert not torch.equal(a, init)
    log = [json.loads(line) for line in (tmp_path / "full" / "log.jsonl").read_text().splitlines()]
    assert any("val_acc1" in r for r in log) and any("loss" in r for r in log)
    assert (tmp_path / "full" / "prompt_best.safetensors").is_file()
    assert json.loads((tmp_path / "full" / "config.json").read_text())["num_classes"] == 6


def test_feature_cache_training_runs(class_folders, tmp_path):
    cfg = _config(class_folders, tmp_path / "run", feature_cache=str(tmp_path / "cache"), epochs=1)
    assert pretrain(cfg)["finished"]
    [meta_path] = (tmp_path / "cache" / "train").glob("*/meta.json")  # one published cache, in its key's folder
    meta = json.loads(meta_path.read_text())
    assert meta["shape"][:2] == [24, 2] and meta["key"]["views"] == 2


@pytest.mark.slow
def test_torchrun_two_processes(class_folders, tmp_path):
    out = tmp_path / "ddp"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    cmd = torchrun_command([
        "pretrain", "--backbone", TINY_CONFIG,
        "--train-root", str(class_folders / "images"), "--names", str(class_folders / "names.txt"),
        "--shots", "4", "--val-per-class", "2", "--classes-per-step", "4", "--batch-size", "2", "--views", "2",
        "--epochs", "2", "--num-workers", "0", "--device", "cpu", "--out-dir", str(out), "--no-progress"])
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    config = json.loads((out / "config.json").read_text())
    assert config["world_size"] == 2 and config["steps_per_epoch"] == 6  # 24 images / (2 per rank x 2 ranks)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["finished"] and summary["global_step"] == 12
    assert Prompt.load(out / "prompt.safetensors").ctx.isfinite().all()


def test_step_takes_class_tokens_and_its_old_name_vocab_with_a_warning(backbone):
    names, img, labels, negatives = _step_inputs(backbone, seed=2)
    results = []
    for keyword in ("class_tokens", "vocab"):
        prompt = Prompt.init(backbone, n_ctx=4, seed=0)
        tokens = {keyword: prompt.tokenize_classes(backbone, names)}
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            loss = encode_and_backward(prompt, prompt, backbone, image_features=img, labels=labels,
                                       negative_ids=negatives, cfg=PretrainConfig(), logit_scale=10.0, **tokens)
        deprecations = [str(w.message) for w in caught if w.category is DeprecationWarning]
        assert deprecations == (["encode_and_backward(vocab=...) is deprecated: pass class_tokens=..."]
                                if keyword == "vocab" else [])
        results.append((loss, prompt.ctx.grad.clone()))
    assert torch.equal(results[1][0], results[0][0]) and torch.equal(results[1][1], results[0][1])
