"""pomp's zero-shot results against clip_benchmark: its metric definitions and its real `build` step.

Checked against: scikit-learn's `accuracy_score`, `top_k_accuracy_score` and
`balanced_accuracy_score` (clip_benchmark's mean per-class recall is the latter; its own `accuracy`
helper fails under numpy 2.4, `float()` of a 1-element array), clip_benchmark's rule for top-5
(undefined below 5 classes), and `python -m clip_benchmark.cli build` run on the folder `pomp eval`
wrote, exactly as a clip_benchmark user aggregates results.
"""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

clip_benchmark = pytest.importorskip("clip_benchmark")

from sklearn.metrics import accuracy_score, balanced_accuracy_score, top_k_accuracy_score  # noqa: E402

from pomp.cli import main  # noqa: E402
from pomp.evaluate import zero_shot_metrics  # noqa: E402
from pomp.prompt import Prompt  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.filterwarnings("ignore:'k' \\(5\\) greater than or equal")  # sklearn, at exactly 5 classes
@pytest.mark.parametrize("num_classes", [3, 5, 9])
def test_metrics_equal_clip_benchmarks(num_classes):
    generator = torch.Generator().manual_seed(num_classes)
    classifier = F.normalize(torch.randn(num_classes, 16, generator=generator), dim=-1)
    images = F.normalize(torch.randn(200, 16, generator=generator), dim=-1)
    labels = torch.randint(0, num_classes, (200,), generator=generator)
    ours = zero_shot_metrics(images, labels, classifier)
    logits = (images @ classifier.t()).numpy()
    if num_classes >= 5:
        acc5 = top_k_accuracy_score(labels.numpy(), logits, k=5, labels=list(range(num_classes)))
        assert ours["acc5"] == pytest.approx(acc5)
    else:  # clip_benchmark: acc5 = NaN below 5 classes; pomp writes null (JSON has no NaN)
        assert ours["acc5"] is None
    assert ours["acc1"] == pytest.approx(accuracy_score(labels.numpy(), logits.argmax(1)))
    assert ours["mean_per_class_recall"] == pytest.approx(balanced_accuracy_score(labels.numpy(), logits.argmax(1)))


def clip_benchmark_build(folder: Path, table: Path) -> list[dict]:
    """`python -m clip_benchmark.cli build FOLDER --output TABLE`, as a clip_benchmark user aggregates results."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "-m", "clip_benchmark.cli", "build", str(folder), "--output", str(table)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    with open(table, newline="") as f:
        return list(csv.DictReader(f))


@pytest.mark.slow
def test_clip_benchmark_build_reads_pomp_results(backbone, class_folders, tiny_config, tmp_path):
    prompt = Prompt.init(backbone, n_ctx=4, seed=0)
    prompt.save(tmp_path / "p.safetensors")
    three = tmp_path / "three"  # a dataset of 3 classes: acc5 undefined
    three.mkdir()
    for folder in sorted((class_folders / "images").iterdir())[:3]:
        (three / folder.name).symlink_to(folder)
    out = tmp_path / "eval"
    rc = main(["eval", "--backbone", tiny_config, "--prompt", str(tmp_path / "p.safetensors"), "--baseline", "single",
               "--data", str(class_folders / "images"), "--data", str(three), "--out-dir", str(out),
               "--num-workers", "0", "--device", "cpu"])
    assert rc == 0
    results = sorted(out.glob("*.json"))
    records = [json.loads(p.read_text()) for p in results]
    assert len(records) == 4 and all(r["pretrained"] == "random-init" for r in records)
    assert {r["metrics"]["acc5"] is None for r in records} == {True, False}
    assert all(r["backbone"]["activation"] == "gelu" and r["backbone"]["weights"] == {"random_init_seed": 0}
               for r in records)

    rows = clip_benchmark_build(out, tmp_path / "benchmark.csv")
    assert len(rows) == 4
    by_key = {(r["dataset"], r["prompt"]): r for r in rows}
    for record in records:
        row = by_key[(record["dataset"], record["prompt"])]
        assert float(row["acc1"]) == pytest.approx(record["metrics"]["acc1"])
        assert row["model_fullname"] == f"{tiny_config} random-init"


@pytest.mark.slow
def test_clip_benchmark_build_reads_a_benchmark_folder(backbone, tiny_config, tmp_path):
    """`pomp benchmark` writes results beside its tables; its config and summary live in config/."""
    from test_benchmark_suite import ALL_KEYS, make_fake_benchmarks

    root = make_fake_benchmarks(tmp_path / "DATA", skip=tuple(k for k in ALL_KEYS if k not in ("dtd", "eurosat")))
    Prompt.init(backbone, n_ctx=4, seed=0).save(tmp_path / "p.safetensors")
    out = tmp_path / "bench"
    assert main(["benchmark", "--suite", "cross-dataset", "--data-root", str(root), "--prompt",
                 str(tmp_path / "p.safetensors"), "--baseline", "single", "--backbone", tiny_config, "--out-dir",
                 str(out), "--feature-cache", str(tmp_path / "fc"), "--num-workers", "0", "--no-progress"]) == 0
    assert sorted(p.name for p in (out / "config").iterdir()) == ["benchmark_config.json", "benchmark_summary.json"]
    records = [json.loads(p.read_text()) for p in sorted(out.glob("*.json"))]
    assert len(records) == 4 and all(r["metrics"]["acc5"] is None for r in records)  # 3 classes each
    rows = clip_benchmark_build(out, tmp_path / "table.csv")
    by_key = {(r["dataset"], r["prompt"]): r for r in rows}
    assert len(rows) == 4 and set(by_key) == {(r["dataset"], r["prompt"]) for r in records}
    for record in records:
        assert float(by_key[(record["dataset"], record["prompt"])]["acc1"]) == pytest.approx(record["metrics"]["acc1"])
