"""Smoke test of benchmarks/step.py: tiny model, one step per configuration, both implementations."""

import importlib.util
import json
from pathlib import Path

STEP_PY = Path(__file__).resolve().parents[1] / "benchmarks" / "step.py"


def _load():
    spec = importlib.util.spec_from_file_location("pomp_bench_step", STEP_PY)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_step_smoke(tiny_config, tmp_path, capsys):
    bench = _load()
    out = tmp_path / "results.json"
    rc = bench.main(["--device", "cpu", "--model", tiny_config, "--ks", "4,all", "--n-ctx", "4", "--steps", "1",
                     "--warmup", "0", "--images-per-step", "2", "--views", "2", "--num-classes", "30",
                     "--text-chunk-size", "8", "--impls", "reference,pomp,pomp-gradcache,pomp-mha",
                     "--isolate", "no", "--threads", "1", "--out", str(out)])
    assert rc == 0
    result = json.loads(out.read_text())
    rows = {(r["impl"], r["K"]): r for r in result["rows"]}
    # gradient caching only where the distinct classes exceed the chunk
    assert set(rows) == {("reference", 4), ("pomp", 4), ("pomp-mha", 4),
                         ("reference", "all"), ("pomp", "all"), ("pomp-gradcache", "all"), ("pomp-mha", "all")}
    for r in rows.values():
        assert r["status"] == "ok" and r["step_s"] > 0 and r["loss_finite"] and r["device"] == "cpu"
        assert {"peak_mem_gib", "images_per_s", "n_ctx", "speedup_vs_reference"} <= set(r)
    # the reference encodes every view's positive (2 x 2) plus K-1 negatives, 77 tokens each
    assert rows[("reference", 4)]["prompts_per_step"] == 4 + 3
    assert rows[("reference", 4)]["text_tokens_per_step"] == 7 * 77
    assert rows[("pomp", 4)]["text_tokens_per_step"] < 7 * 77
    assert rows[("pomp-gradcache", "all")]["prompts_per_step"] == 2 * 30  # two passes over all classes
    assert result["recipe"]["steps_one_device"] == 10450 * 16 / 2 * 5
    assert "reference" in capsys.readouterr().out
