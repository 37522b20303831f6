"""The CLI on other open_clip families, `pomp backbones NAME`, and class texts checked before any image work.

CLI runs use model-config JSONs derived from real `open_clip.list_models()` entries (convnext_base with
timm's smallest ConvNeXt, MobileCLIP-S1 with its bidirectional text tower), shrunk; outputs are pinned
against the library run in-process on the same random weights.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from conftest import assert_one_line_error

import pomp
from pomp.cli import main
from pomp.prompt import Prompt


def derived_config(tmp_path: Path, name: str, file_name: str, **vision) -> str:
    cfg = copy.deepcopy(open_clip.get_model_config(name))
    cfg["embed_dim"] = 32
    cfg["text_cfg"].update(width=32, heads=2, layers=2)
    cfg["vision_cfg"].update(vision)
    path = tmp_path / f"{file_name}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


FAMILY_CONFIGS = {
    # timm image tower: open_clip's convnext_base config around timm's smallest ConvNeXt
    "timm-convnext": ("convnext_base", dict(timm_model_name="convnext_atto", image_size=64)),
    # bidirectional text tower (MobileCLIP-S): every position counts, no cut
    "non-causal": ("MobileCLIP-S1", dict(timm_model_name="fastvit_mci0", image_size=64)),
}


@pytest.mark.parametrize("family", list(FAMILY_CONFIGS))
def test_pretrain_eval_embed(family, class_folders, tmp_path, capsys):
    name, vision = FAMILY_CONFIGS[family]
    cfg = derived_config(tmp_path, name, f"cli-{family.replace('-', '_')}", **vision)
    data = class_folders
    run = tmp_path / "run"
    rc = main(["pretrain", "--backbone", cfg, "--train-root", str(data / "images"), "--names", str(data / "names.txt"),
               "--shots", "2", "--val-per-class", "1", "--classes-per-step", "4", "--batch-size", "4", "--views", "1",
               "--epochs", "1", "--max-steps", "2", "--num-workers", "0", "--device", "cpu", "--out-dir", str(run),
               "--no-progress", "--ctx-init", "a photo of a", "--no-augment"])
    assert rc == 0, capsys.readouterr().err
    prompt_path = run / "prompt.safetensors"
    assert prompt_path.is_file()

    out = tmp_path / "eval"
    rc = main(["eval", "--backbone", cfg, "--prompt", str(prompt_path), "--baseline", "single",
               "--data", str(data / "images"), "--names", str(data / "names.txt"), "--out-dir", str(out),
               "--num-workers", "0", "--device", "cpu"])
    assert rc == 0, capsys.readouterr().err
    assert len(list(out.glob("images__*.json"))) == 2

    vocab = tmp_path / "vocab.txt"
    vocab.write_text("tabby cat\nred fox\ncoffee mug\n")
    rc = main(["embed", "--backbone", cfg, "--prompt", str(prompt_path), "--classes", str(vocab),
               "--out-dir", str(tmp_path / "emb")])
    assert rc == 0, capsys.readouterr().err
    written = np.load(tmp_path / "emb" / "class_embeddings.npy")

    backbone = pomp.load_backbone(cfg)
    assert backbone.causal is (family != "non-causal")
    prompt = Prompt.load(prompt_path)
    with torch.no_grad():
        expected = prompt.encode_class_features(backbone, ["tabby cat", "red fox", "coffee mug"])
    np.testing.assert_allclose(written, expected.numpy(), atol=1e-5, rtol=0)
    assert prompt.meta["backbone"]["embed_dim"] == 32 and prompt.meta["init"] == "a photo of a"


# --- pomp backbones NAME ------------------------------------------------------------------------
def test_backbones_command_prints_the_resolution(capsys):
    assert main(["backbones", "ViT-B-16"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["prefix_tokens"] == 1 and info["start_token"] is True
    assert info["placeholder_positions (n_ctx=4)"] == [1, 2, 3, 4]
    assert info["causal"] is True and info["cut_exact"] is True
    assert info["text_width"] == 512 and info["embed_dim"] == 512 and info["context_length"] == 77
    assert info["dense_features"].startswith("MaskCLIP")

    assert main(["backbones", "MobileCLIP-S2", "--n-ctx", "2"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["causal"] is False and info["cut_exact"] is False
    assert info["placeholder_positions (n_ctx=2)"] == [1, 2]
    assert info["image_tower"] == "timm FastVit" and info["embed_dim"] == 512

    assert main(["backbones", "coca_ViT-L-14"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["dense_features"].startswith("none: the attentional pooler")
    assert info["embed_dim"] == 768 and info["cut_exact"] is False


def test_backbones_command_hub_model_offline_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["backbones", "roberta-ViT-B-32"])
    assert_one_line_error(rc, capsys.readouterr().err, "backbones", "roberta-ViT-B-32", "Hugging Face Hub",
                          "roberta-base", "pomp.load_backbone(model, tokenizer=...)")
    rc = main(["backbones", "no-such-model"])
    assert_one_line_error(rc, capsys.readouterr().err, "backbones", "unknown open_clip model")


def test_text_tower_without_a_pooled_feature_is_one_line(tmp_path, capsys):
    cfg = {"embed_dim": 32, "custom_text": True,
           "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
           "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 1,
                        "pool_type": "none"}}
    path = tmp_path / "no-pool.json"
    path.write_text(json.dumps(cfg))
    rc = main(["backbones", str(path)])
    assert_one_line_error(rc, capsys.readouterr().err, "backbones", "no-pool.json", "pooling 'none'")


def test_eval_hub_model_offline_is_one_line(class_folders, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rc = main(["eval", "--backbone", "ViT-B-16-SigLIP", "--baseline", "single", "--data", str(class_folders / "images"),
               "--out-dir", str(tmp_path / "out"), "--device", "cpu"])
    assert_one_line_error(rc, capsys.readouterr().err, "eval", "ViT-B-16-SigLIP", "tokenizer", "timm/ViT-B-16-SigLIP")


# --- class texts before image work (issue 12, item 6) --------------------------------------------
@pytest.fixture
def images_never_encoded(monkeypatch):
    import pomp.data.features

    def refuse(*args, **kwargs):
        raise AssertionError("image features were computed before the class texts were checked")

    monkeypatch.setattr(pomp.data.features, "cached_image_features", refuse)


@pytest.mark.parametrize("flags", [["--baseline", "single"], ["--baseline", "ensemble"], ["--prompt"]])
def test_eval_names_a_class_that_does_not_fit_before_any_image(flags, class_folders, tiny_config, backbone, tmp_path,
                                                               capsys, images_never_encoded):
    names = class_folders / "names.txt"
    lines = names.read_text().splitlines()
    lines[2] = lines[2].split("\t")[0] + "\t" + " ".join(["red"] * 75)
    names.write_text("\n".join(lines) + "\n")
    if flags == ["--prompt"]:
        Prompt.init(backbone, n_ctx=4).save(tmp_path / "p.safetensors")
        flags = ["--prompt", str(tmp_path / "p.safetensors")]
    rc = main(["eval", "--backbone", tiny_config, *flags, "--data", str(class_folders / "images"),
               "--names", str(names), "--out-dir", str(tmp_path / "out"), "--num-workers", "0", "--device", "cpu"])
    assert_one_line_error(rc, capsys.readouterr().err, "eval", str(names), "class 'red red", "does not fit")
    assert not (tmp_path / "out").exists()  # nothing written: a refused command leaves no output folder


def test_embed_names_the_class_list(tiny_config, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("cat\n" + " ".join(["dog"] * 80) + "\n")
    rc = main(["embed", "--backbone", tiny_config, "--classes", str(vocab), "--out-dir", str(tmp_path / "emb")])
    assert_one_line_error(rc, capsys.readouterr().err, "embed", str(vocab), "class 'dog dog", "does not fit")
    assert not (tmp_path / "emb" / "class_embeddings.npy").exists()


def test_benchmark_checks_every_vocabulary_before_image_features(backbone, tmp_path, monkeypatch):
    from test_benchmark_suite import ALL_KEYS, make_fake_benchmarks

    import pomp.suites as bench

    root = make_fake_benchmarks(tmp_path / "DATA", skip=tuple(k for k in ALL_KEYS if k not in ("dtd", "eurosat")))
    split = root / "eurosat" / "split_zhou_EuroSAT.json"
    data = json.loads(split.read_text())
    for entries in data.values():  # class 0 renamed everywhere: one name per label
        for entry in entries:
            if entry[1] == 0:
                entry[2] = " ".join(["river"] * 80)
    split.write_text(json.dumps(data))
    events = []
    real = bench.cached_image_features

    def recording(cache, backbone_, dataset, *args, **kwargs):
        events.append(f"features {dataset.images.name}")
        return real(cache, backbone_, dataset, *args, **kwargs)

    monkeypatch.setattr(bench, "cached_image_features", recording)
    run = bench.run_benchmark(root, ["eurosat", "dtd"], backbone, [("baseline:single", {"baseline": "single"})],
                              tmp_path / "out", None, num_workers=0, progress=False, log=events.append)
    assert "eurosat" in run.failed
    assert "does not fit" in run.failed["eurosat"] and "river river" in run.failed["eurosat"]
    assert events[0].startswith("error   eurosat:") and events[1:] and events[1] == "features dtd"
    assert {r["dataset"] for r in run.records} == {"dtd"}


# --- segment / detect: refused before anything is written -----------------------------------------
@pytest.fixture(scope="module")
def scenes(tmp_path_factory) -> Path:
    from pomp.dense.scenes import make_scenes

    return make_scenes(tmp_path_factory.mktemp("scenes"), num_images=2, size=64, seed=3, source="shapes")


def _dense_command(command: str, backbone: str, scenes: Path, out: Path, *extra: str) -> list[str]:
    if command == "segment":
        return ["segment", "--backbone", backbone, "--data", str(scenes), "--baseline", "single",
                "--out-dir", str(out), *extra]
    return ["detect", "--backbone", backbone, "--annotations", str(scenes / "annotations.json"), "--images",
            str(scenes / "JPEGImages"), "--baseline", "single", "--method", "roi", "--out-dir", str(out), *extra]


@pytest.mark.parametrize("command", ["segment", "detect"])
def test_dense_input_size_a_timm_vit_cannot_take_is_refused_first(command, scenes, tmp_path, capsys):
    """timm ViTs (EVA, SigLIP, PE...) take only their own input size: --size 112 on a 224 tower is one line."""
    cfg = derived_config(tmp_path, "EVA02-B-16", "eva-tiny", timm_model_name="eva02_tiny_patch14_224")
    out = tmp_path / "out"
    rc = main(_dense_command(command, cfg, scenes, out, "--size", "112"))
    assert_one_line_error(rc, capsys.readouterr().err, command, "eva-tiny.json", "224 x 224", "112 x 112", "--size")
    assert not out.exists() or not list(out.iterdir())
    assert main(["backbones", cfg]) == 0 and json.loads(capsys.readouterr().out)["dense_input"] == "224 x 224 only"
    assert main(_dense_command(command, cfg, scenes, tmp_path / "native", "--size", "224")) == 0  # its own size runs


@pytest.mark.parametrize("command", ["segment", "detect"])
def test_dense_commands_write_nothing_when_refused(command, scenes, tmp_path, capsys, tiny_config):
    """No dense path (CoCa's attentional pooler), a class name that does not fit: refused before any file."""
    from pomp.backbones.zoo import shrunk_config

    cfg, _ = shrunk_config("coca_ViT-B-32", tmp_path / "zoo")
    coca = tmp_path / "coca-shrunk.json"
    coca.write_text(json.dumps(cfg))
    out = tmp_path / "coca-out"
    rc = main(_dense_command(command, str(coca), scenes, out))
    assert_one_line_error(rc, capsys.readouterr().err, command, "coca-shrunk.json", "no dense features")
    assert not out.exists() or not list(out.iterdir())

    long_name = " ".join(["blue"] * 80)
    data = tmp_path / "long"
    import shutil

    shutil.copytree(scenes, data)
    classes = (data / "classes.txt").read_text().splitlines()
    (data / "classes.txt").write_text("\n".join(classes[:-1] + [long_name]) + "\n")
    annotations = json.loads((data / "annotations.json").read_text())
    annotations["categories"][-1]["name"] = long_name
    (data / "annotations.json").write_text(json.dumps(annotations))
    out = tmp_path / "long-out"
    rc = main(_dense_command(command, tiny_config, data, out))
    assert_one_line_error(rc, capsys.readouterr().err, command, "class 'blue blue", "does not fit")
    assert not out.exists() or not list(out.iterdir())


def test_backbones_command_on_a_local_dir_model(tmp_path, capsys, tiny_config):
    """A folder saved by open_clip's `save_for_hf` (what `local-dir:` and `hf-hub:` names load), as eval takes it."""
    from open_clip.push_to_hf_hub import save_for_hf

    open_clip.add_model_config(tiny_config)
    model = open_clip.create_model("tiny-clip")
    config = open_clip.get_model_config("tiny-clip")
    tokenizer = open_clip.get_tokenizer("tiny-clip")
    tokenizer.save_pretrained = lambda folder: None  # CLIP's own tokenizer has no files to write
    save_for_hf(model, tokenizer, config, tmp_path / "saved")
    assert main(["backbones", f"local-dir:{tmp_path / 'saved'}"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["text_width"] == config["text_cfg"]["width"] and info["embed_dim"] == config["embed_dim"]
    assert info["prefix_tokens"] == 1 and info["causal"] is True and info["context_length"] == 77
    rc = main(["backbones", f"local-dir:{tmp_path / 'missing'}"])
    assert_one_line_error(rc, capsys.readouterr().err, "backbones", "missing")


def test_hugging_face_text_tower_loads_quietly(tmp_path, capfd):
    """A Hugging Face text tower saved with its pooler (as the Hub's roberta-base is): transformers' load
    report (terminal escape codes) and progress bars stay off pomp's stderr."""
    import transformers

    from pomp.backbones.zoo import shrunk_config

    cfg, _ = shrunk_config("roberta-ViT-B-32", tmp_path / "zoo")
    folder = tmp_path / "roberta-with-pooler"
    transformers.RobertaModel(transformers.RobertaConfig.from_pretrained(cfg["text_cfg"]["hf_model_name"]),
                              add_pooling_layer=True).save_pretrained(str(folder))
    cfg["text_cfg"]["hf_model_name"] = str(folder)
    cfg["text_cfg"].pop("hf_model_pretrained", None)
    path = tmp_path / "roberta-shrunk.json"
    path.write_text(json.dumps(cfg))
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("tabby cat\nred fox\n")
    capfd.readouterr()
    rc = main(["embed", "--backbone", str(path), "--classes", str(vocab), "--out-dir", str(tmp_path / "emb")])
    err = capfd.readouterr().err
    assert rc == 0, err
    assert "\x1b" not in err and "LOAD REPORT" not in err and "Loading weights" not in err, err


def test_pretrain_help_states_each_default_once(capsys):
    with pytest.raises(SystemExit):
        main(["pretrain", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: ViT-B-16)" in text and "(default: ViT-B-16) (default: ViT-B-16)" not in text
    assert text.count("(default: 0.002)") == 1
