"""Zero-shot classifiers and metrics against open_clip's functions and hand computations."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip import build_zero_shot_classifier

from pomp.evaluate import imagenet_templates, results_table, template_classifier, zero_shot_metrics

NAMES = ["tabby cat", "red fox", "coffee mug"]


@pytest.mark.parametrize("templates", [["a photo of a {}."], ["a photo of a {}.", "a drawing of the {}.", "{}"]])
def test_template_classifier_equals_open_clip(backbone, templates):
    ours = template_classifier(backbone, NAMES, templates)
    ref = build_zero_shot_classifier(backbone.model, backbone.tokenizer, NAMES,
                                     [lambda c, t=t: t.format(c) for t in templates], num_classes_per_batch=2,
                                     device="cpu", use_tqdm=False)
    torch.testing.assert_close(ours, ref.t(), atol=2e-6, rtol=0)


def test_eighty_templates():
    templates = imagenet_templates()
    assert len(templates) == 80 and all("{}" in t for t in templates)


def test_metrics_by_hand():
    classifier = torch.eye(3)
    feats = torch.tensor([[1.0, 0.1, 0.0], [0.0, 1.0, 0.2], [1.0, 0.0, 0.9], [0.0, 0.0, 1.0]])
    labels = torch.tensor([0, 1, 2, 2])
    m = zero_shot_metrics(F.normalize(feats, dim=-1), labels, classifier)
    # predictions: 0, 1, 0, 2 -> 3/4 correct; per class recall: 1, 1, 0.5
    assert m["acc1"] == pytest.approx(0.75)
    assert m["mean_per_class_recall"] == pytest.approx((1 + 1 + 0.5) / 3)
    assert m["acc5"] is None  # fewer than 5 classes: top-5 is undefined (clip_benchmark reports it as NaN)


def test_table_average_by_hand():
    recs = [
        {"dataset": "a", "prompt": "p", "metrics": {"acc1": 0.5}},
        {"dataset": "b", "prompt": "p", "metrics": {"acc1": 0.25}},
        {"dataset": "a", "prompt": "q", "metrics": {"acc1": 1.0}},
    ]
    md, csv_text = results_table(recs)
    rows = [r.split(",") for r in csv_text.strip().splitlines()]
    assert rows[0] == ["prompt", "a", "b", "average"]
    assert rows[1] == ["p", "50.00", "25.00", "37.50"]
    assert rows[2] == ["q", "100.00", "", "100.00"]
    assert "| p | 50.00 | 25.00 | 37.50 |" in md


def test_eval_and_embed_cli(backbone, class_folders, tiny_config, tmp_path):
    from pomp.cli import main
    from pomp.prompt import Prompt

    prompt = Prompt.init(backbone, n_ctx=4, seed=0)
    prompt.save(tmp_path / "p.safetensors")
    out = tmp_path / "eval"
    rc = main(["eval", "--backbone", tiny_config, "--prompt", str(tmp_path / "p.safetensors"), "--baseline", "single",
               "--data", str(class_folders / "images"), "--names", str(class_folders / "names.txt"),
               "--out-dir", str(out), "--num-workers", "0"])
    assert rc == 0
    results = sorted(out.glob("images__*.json"))
    assert len(results) == 2
    rec = json.loads(results[0].read_text())
    assert set(rec) >= {"dataset", "model", "pretrained", "task", "metrics", "prompt"}
    assert set(rec["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert (out / "results.md").is_file() and (out / "results.csv").is_file()
    assert (out / "config" / "eval_config.json").is_file()  # not among the results: clip_benchmark reads *.json

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("tabby cat\nred fox\ncoffee mug\n")
    emb = tmp_path / "emb"
    assert main(["embed", "--backbone", tiny_config, "--prompt", str(tmp_path / "p.safetensors"),
                 "--classes", str(vocab), "--out-dir", str(emb)]) == 0
    arr = np.load(emb / "class_embeddings.npy")
    assert arr.shape == (3, backbone.embed_dim) and arr.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(arr, axis=1), 1.0, rtol=1e-5)
    clf = torch.load(emb / "zeroshot_classifier.pt", weights_only=True)
    assert torch.equal(clf, torch.from_numpy(arr).t())
    assert (emb / "classnames.txt").read_text().splitlines() == ["tabby cat", "red fox", "coffee mug"]
    with torch.no_grad():
        expected = prompt.encode_class_features(backbone, ["tabby cat", "red fox", "coffee mug"])
    np.testing.assert_allclose(arr, expected.numpy(), atol=2e-6)


@pytest.mark.parametrize("command", ["pretrain", "eval", "embed", "info", "convert"])
def test_every_command_has_help(command, capsys):
    from pomp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    assert "usage: pomp " + command in capsys.readouterr().out
