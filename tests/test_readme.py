"""The README's two quickstarts run exactly as written, offline, on the default backbone, in a fresh
folder: the Python block in a fresh interpreter, the shell block in bash with `pomp` and `python` being this
environment's (what `source .venv/bin/activate` gives)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import REPO, RUN_ENV, fenced_block

pytestmark = pytest.mark.slow

README = REPO / "README.md"


def test_python_quickstart_runs_as_written(tmp_path):
    code = fenced_block(README.read_text(encoding="utf-8"), "Python quickstart", "python")
    done = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=RUN_ENV, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stderr == "", done.stderr[-3000:]  # progress=False: nothing else for a newcomer to stumble on
    lines = done.stdout.splitlines()
    assert lines[0] == "trained 6 steps", done.stdout  # 8 classes x 6 shots / 16 per step = 3 steps x 2 epochs
    assert [line.split(" {'")[0] for line in lines[1:]] == ["learned prompt", '"a photo of a {}."'], done.stdout
    summary = json.loads((tmp_path / "quickstart/run/summary.json").read_text())
    assert summary["finished"] and summary["global_step"] == 6
    assert (tmp_path / "quickstart/my_prompt.safetensors").is_file()
    assert (tmp_path / "quickstart/my_prompt.json").is_file()
    assert len(list((tmp_path / "quickstart/data/images").glob("*/*"))) == 64


def test_cli_quickstart_runs_as_written(cli_quickstart):
    out = cli_quickstart / "runs/quickstart"
    # stderr holds pomp's own progress bars (--progress is on by default) and nothing from a library
    shown = [s for s in re.split(r"[\r\n]", (cli_quickstart / "quickstart.stderr").read_text()) if s.strip()]
    assert shown and all(s.split(":")[0] in ("pretrain", "val features", "split features") for s in shown), shown
    assert json.loads((out / "pretrain/summary.json").read_text())["global_step"] == 6
    results = sorted(p.name for p in (out / "eval").glob("*.json"))
    assert results == ["split__baseline_single.json", "split__prompt_prompt.safetensors.json"], results
    # pomp embed's file holds what the library computes from the same prompt (rows in names-file order)
    import pomp

    names = [line.split("\t")[1] for line in (out / "data/names.txt").read_text().splitlines()]
    backbone = pomp.load_backbone("minilm-efficientnet-lite0", device="cpu")
    with torch.no_grad():
        expected = pomp.Prompt.load(out / "pretrain/prompt.safetensors").encode_class_features(backbone, names)
    written = np.load(out / "embeddings/class_embeddings.npy")
    assert written.shape == (8, backbone.embed_dim)
    torch.testing.assert_close(torch.from_numpy(written), expected.float(), atol=1e-5, rtol=0)
    assert (out / "embeddings/classnames.txt").read_text().splitlines() == names
