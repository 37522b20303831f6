"""Backbone weights as their producers ship them, built with the architecture they were trained with.

- An OpenAI-style TorchScript release, made the way OpenAI made theirs: the CLIP network (QuickGELU),
  its weights cast to fp16 by `convert_weights` (open_clip's `convert_weights_to_lp` is the same
  function), the `input_resolution` / `context_length` / `vocab_size` tensors, `torch.jit.trace`,
  `torch.jit.save`. Checked against open_clip's own `-quickgelu` model built from the same weights.
- open_clip pretrained tags: the tag's config (`quick_gelu`) is honoured; checked against open_clip's
  `create_model` given the same weights and `force_quick_gelu`.
- Plain state dicts: one warning saying which activation is assumed and how to choose the other.
- The identity (architecture, activation, weights) in `describe()`, prompt.json and result files,
  and the one-line warning when a prompt meets another backbone.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import open_clip
import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG as TINY

import pomp
from pomp.backbones.identity import sha256_of
from pomp.backbones.open_clip import _other_activation_hint
from pomp.cli import main
from pomp.prompt import Prompt

REPO = Path(__file__).resolve().parents[1]
TEXTS = ["a photo of a cat.", "a hot air balloon", "X X X X tabby cat."]


@pytest.fixture(scope="module")
def tiny_quickgelu(tmp_path_factory) -> str:
    """The tiny architecture with `quick_gelu: true`, registered with open_clip as `tiny-clip-quickgelu`."""
    cfg = json.loads(Path(TINY).read_text())
    path = tmp_path_factory.mktemp("cfg") / "tiny-clip-quickgelu.json"
    path.write_text(json.dumps({**cfg, "quick_gelu": True}))
    open_clip.add_model_config(path)
    return str(path)


@pytest.fixture(scope="module")
def openai_release(tmp_path_factory, tiny_quickgelu):
    """(TorchScript archive, plain state dict file of the same weights) of a shrunk OpenAI-style CLIP."""
    root = tmp_path_factory.mktemp("openai")
    cfg = json.loads(Path(TINY).read_text())
    torch.manual_seed(3)
    model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"], quick_gelu=True).eval()
    with torch.no_grad():  # non-trivial weights everywhere, so a mis-mapped tensor cannot hide
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    open_clip.model.convert_weights_to_lp(model, torch.float16)  # OpenAI's convert_weights
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    model.register_buffer("input_resolution", torch.tensor(cfg["vision_cfg"]["image_size"]))
    for name, value in (("context_length", 77), ("vocab_size", 49408)):
        delattr(model, name)  # plain ints in open_clip; tensors in OpenAI's released archives
        model.register_buffer(name, torch.tensor(value))
    images = torch.zeros(2, 3, 32, 32, dtype=torch.float16)
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo", "a dog"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, {"encode_image": (images,), "encode_text": (tokens,)},
                                        check_trace=False)
        torch.jit.save(traced, root / "ViT-tiny.pt")
    torch.save(weights, root / "state_dict.pt")
    return root / "ViT-tiny.pt", root / "state_dict.pt"


def features(model_or_backbone, pixels):
    with torch.no_grad():
        if isinstance(model_or_backbone, pomp.Backbone):
            return model_or_backbone.encode_images(pixels).float(), model_or_backbone.encode_texts(TEXTS).float()
        tokens = open_clip.get_tokenizer("ViT-B-16")(TEXTS)
        return model_or_backbone.encode_image(pixels).float(), model_or_backbone.encode_text(tokens).float()


def reference(config: str, state_dict: Path):
    """open_clip's own model of `config`, loaded by open_clip from a state dict file."""
    name = Path(config).stem
    return open_clip.create_model(name, pretrained=str(state_dict), weights_only=True).eval()


# --- OpenAI's TorchScript release -------------------------------------------------------------------
def test_torchscript_release_equals_open_clips_quickgelu_model(openai_release, tiny_quickgelu, monkeypatch):
    archive, state_dict = openai_release

    def refuse(*args, **kwargs):
        raise AssertionError("torch.jit.load runs the archive's code and must not be called")

    monkeypatch.setattr(torch.jit, "load", refuse)
    backbone = pomp.load_backbone(TINY, pretrained=str(archive))  # the GELU config name, as a user would give
    identity = backbone.describe()
    assert identity["architecture"] == "tiny-clip" and identity["activation"] == "quick_gelu"
    assert identity["weights"] == {"file": "ViT-tiny.pt", "sha256": sha256_of(archive)[:16], "format": "torchscript"}
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    ours = features(backbone, pixels)
    theirs = features(reference(tiny_quickgelu, state_dict), pixels)
    for a, b in zip(ours, theirs):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # float32 rounding of two kernel paths; GELU vs QuickGELU differ by > 1e-3
    gelu = features(reference(TINY, state_dict), pixels)  # the same weights in the wrong architecture differ
    assert (gelu[0] - theirs[0]).abs().max() > 1e-3 and (gelu[1] - theirs[1]).abs().max() > 1e-3


def test_torchscript_of_another_architecture_is_refused_in_one_line(openai_release, tmp_path, capsys):
    archive, _ = openai_release
    other = json.loads(Path(TINY).read_text())
    other["vision_cfg"]["width"] = 96
    config = tmp_path / "tiny-wide.json"
    config.write_text(json.dumps(other))
    vocab = tmp_path / "v.txt"
    vocab.write_text("cat\n")
    rc = main(["embed", "--backbone", str(config), "--pretrained", str(archive), "--classes", str(vocab),
               "--out-dir", str(tmp_path / "e")])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1 and "TorchScript weights do not fit" in err[0] and "of another shape" in err[0]


# --- plain state dicts and tags ---------------------------------------------------------------------
def test_plain_state_dict_says_which_activation_it_assumes(openai_release, tiny_quickgelu):
    _, state_dict = openai_release
    with pytest.warns(UserWarning) as caught:
        gelu = pomp.load_backbone(TINY, pretrained=str(state_dict))
    notes = [str(w.message) for w in caught if "activation" in str(w.message)]
    assert notes == [f"{state_dict}: a state dict does not record its activation; assuming GELU as {TINY} says "
                     f'(for the other set "quick_gelu": true in {TINY})']
    assert gelu.describe()["activation"] == "gelu" and gelu.describe()["weights"]["format"] == "state_dict"
    # a config that sets quick_gelu itself (like open_clip's `-quickgelu` names) is the user's explicit choice
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        quick = pomp.load_backbone(tiny_quickgelu, pretrained=str(state_dict))
    assert not [w for w in caught if "activation" in str(w.message)]
    assert quick.describe()["activation"] == "quick_gelu"
    assert all(open_clip.get_model_config(name)["quick_gelu"] is True
               for name in open_clip.list_models() if name.endswith("-quickgelu"))


def _run_cli(*args: str) -> subprocess.CompletedProcess:
    """`python -m pomp.cli ARGS` in a fresh process: what a user's terminal shows, logging included."""
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "pomp.cli", *args], capture_output=True, text=True, env=env,
                          cwd=REPO, timeout=300)


@pytest.mark.slow
def test_local_weights_print_no_false_log_lines(openai_release, tiny_quickgelu, tmp_path):
    """open_clip logs "No pretrained weights loaded ... initialized randomly" when pomp loads the file itself."""
    _, state_dict = openai_release
    vocab = tmp_path / "v.txt"
    vocab.write_text("cat\n")
    proc = _run_cli("embed", "--backbone", TINY, "--pretrained", str(state_dict), "--classes", str(vocab),
                    "--out-dir", str(tmp_path / "gelu"))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("pomp embed: warning: ") and "assuming GELU" in lines[0], lines
    proc = _run_cli("embed", "--backbone", tiny_quickgelu, "--pretrained", str(state_dict), "--classes", str(vocab),
                    "--out-dir", str(tmp_path / "quick"))
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


@pytest.mark.slow
def test_tag_that_cannot_be_downloaded_is_one_line_of_ours(tmp_path):
    vocab = tmp_path / "v.txt"
    vocab.write_text("cat\n")
    proc = _run_cli("embed", "--backbone", "ViT-B-16", "--pretrained", "openai", "--classes", str(vocab),
                    "--out-dir", str(tmp_path / "e"))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("pomp embed: error: ViT-B-16 pretrained='openai': weights could not be downloaded "
                               "(HF_HUB_OFFLINE is set"), lines[0]
    assert "--pretrained /path/to/weights" in lines[0] and "Internet connection" not in lines[0]


def test_open_clip_training_checkpoint_and_safetensors_load_as_open_clip_loads_them(tmp_path):
    """open_clip's `train.py` saves `{"epoch", "name", "state_dict" ('module.' keys under DDP), "optimizer",
    "scaler"}` as `epoch_N.pt`; `open_clip.create_model(pretrained=...)` strips the prefix. Same for safetensors."""
    from safetensors.torch import save_file

    open_clip.add_model_config(TINY)
    torch.manual_seed(5)
    model = open_clip.create_model("tiny-clip")
    wrapped = torch.nn.DataParallel(model)  # the 'module.' prefix DDP/DataParallel put on every key
    optimizer = torch.optim.AdamW(wrapped.parameters(), lr=1e-3)
    sum((p ** 2).sum() for p in wrapped.parameters()).backward()
    optimizer.step()
    checkpoint = {"epoch": 32, "name": "run", "state_dict": wrapped.state_dict(), "optimizer": optimizer.state_dict(),
                  "scaler": torch.amp.GradScaler("cpu").state_dict()}
    assert next(iter(checkpoint["state_dict"])).startswith("module.")
    torch.save(checkpoint, tmp_path / "epoch_32.pt")
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "open_clip_model.safetensors")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name in ("epoch_32.pt", "open_clip_model.safetensors"):
        path = str(tmp_path / name)
        with pytest.warns(UserWarning, match="assuming GELU"):
            backbone = pomp.load_backbone(TINY, pretrained=path)
        theirs = open_clip.create_model("tiny-clip", pretrained=path, weights_only=True).eval()
        for a, b in zip(features(backbone, pixels), features(theirs, pixels)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # the same weights; two text kernel paths round apart
        assert backbone.describe()["weights"]["file"] == name


def test_torchscript_release_of_a_modified_resnet(tmp_path):
    """OpenAI's RN50-style release: a ModifiedResNet image tower (BatchNorm statistics stay fp32 in their fp16
    archive), traced and saved like the ViT one; its architecture is read off the config, QuickGELU off the format."""
    cfg = json.loads(Path(TINY).read_text())
    rn = {"embed_dim": 32, "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 16, "head_width": 16},
          "text_cfg": cfg["text_cfg"]}
    (tmp_path / "tiny-rn.json").write_text(json.dumps(rn))
    (tmp_path / "tiny-rn-quickgelu.json").write_text(json.dumps({**rn, "quick_gelu": True}))
    open_clip.add_model_config(tmp_path / "tiny-rn-quickgelu.json")
    torch.manual_seed(3)
    model = open_clip.model.CLIP(rn["embed_dim"], rn["vision_cfg"], rn["text_cfg"], quick_gelu=True).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2.0)
    open_clip.model.convert_weights_to_lp(model, torch.float16)
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    assert weights["visual.bn1.running_var"].dtype == torch.float32 and weights["visual.conv1.weight"].dtype == torch.float16
    model.register_buffer("input_resolution", torch.tensor(64))
    for name, value in (("context_length", 77), ("vocab_size", 49408)):
        delattr(model, name)
        model.register_buffer(name, torch.tensor(value))
    tokens = open_clip.get_tokenizer("ViT-B-16")(["a photo", "a dog"])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace_module(model, {"encode_image": (torch.zeros(2, 3, 64, 64, dtype=torch.float16),),
                                                "encode_text": (tokens,)}, check_trace=False)
        torch.jit.save(traced, tmp_path / "RN-tiny.pt")
    torch.save(weights, tmp_path / "rn.pt")
    backbone = pomp.load_backbone(str(tmp_path / "tiny-rn.json"), pretrained=str(tmp_path / "RN-tiny.pt"))
    assert backbone.describe()["activation"] == "quick_gelu" and backbone.describe()["architecture"] == "tiny-rn"
    theirs = open_clip.create_model("tiny-rn-quickgelu", pretrained=str(tmp_path / "rn.pt"), weights_only=True).eval()
    pixels = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    for a, b in zip(features(backbone, pixels), features(theirs, pixels)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # float32 rounding of two kernel paths


def test_activation_hints_name_the_twin_model():
    assert _other_activation_hint("ViT-B-16", "ViT-B-16", False) == \
        "for QuickGELU weights (OpenAI's CLIP) use ViT-B-16-quickgelu"
    assert _other_activation_hint("ViT-B-16-quickgelu", "ViT-B-16-quickgelu", True) == "for GELU weights use ViT-B-16"
    assert open_clip.get_pretrained_cfg("ViT-B-16", "openai")["quick_gelu"] is True  # the README's headline tag


def _register_tag(monkeypatch, tag: str, **cfg) -> None:
    """A pretrained tag of the tiny model in open_clip's own registry (what `get_pretrained_cfg` reads)."""
    entry = {"url": "", "hf_hub": "", "mean": open_clip.OPENAI_DATASET_MEAN, "std": open_clip.OPENAI_DATASET_STD,
             "interpolation": "bicubic", "resize_mode": "shortest", **cfg}
    tags = dict(open_clip.pretrained._PRETRAINED.get("tiny-clip", {}), **{tag: entry})
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, "tiny-clip", tags)


def test_tag_config_activation_is_honoured(openai_release, tiny_quickgelu, monkeypatch):
    _, state_dict = openai_release
    open_clip.add_model_config(TINY)
    _register_tag(monkeypatch, "openai_like", file=str(state_dict), quick_gelu=True)  # open_clip reads 'file'
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plain = open_clip.create_model("tiny-clip", pretrained="openai_like")  # what pomp used to do
        backbone = pomp.load_backbone(TINY, pretrained="openai_like")
    mismatch = [str(w.message) for w in caught if "QuickGELU mismatch" in str(w.message)]
    assert len(mismatch) == 1  # open_clip's own warning for its GELU build; none for pomp's
    assert backbone.describe()["activation"] == "quick_gelu" and backbone.describe()["weights"] == {"tag": "openai_like"}
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    honoured = open_clip.create_model("tiny-clip", pretrained="openai_like", force_quick_gelu=True).eval()
    for a, b in zip(features(backbone, pixels), features(honoured, pixels)):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=0)  # float32 rounding of two kernel paths; GELU vs QuickGELU differ by > 1e-3
    assert (features(plain.eval(), pixels)[0] - features(honoured, pixels)[0]).abs().max() > 1e-3


@pytest.mark.parametrize("resize_mode", ["squash", "longest", "shortest"])
def test_tag_preprocessing_is_honoured(openai_release, monkeypatch, resize_mode):
    """DFN5B, CLIPA and SigLIP tags resize by squashing (no crop): the test transform is open_clip's own."""
    import numpy as np
    from PIL import Image

    _, state_dict = openai_release
    open_clip.add_model_config(TINY)
    _register_tag(monkeypatch, "tag", file=str(state_dict), resize_mode=resize_mode, interpolation="bilinear",
                  mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))
    backbone = pomp.load_backbone(TINY, pretrained="tag")
    assert backbone.image_spec.resize_mode == resize_mode
    _, _, preprocess = open_clip.create_model_and_transforms("tiny-clip", pretrained="tag")
    y, x = np.mgrid[0:40, 0:90]
    image = Image.fromarray(np.stack([x * 2.8, y * 6.3, (x + y) * 1.9], -1).astype(np.uint8))
    torch.testing.assert_close(backbone.eval_transform()(image), preprocess(image), atol=1e-5, rtol=0)


def test_local_copy_of_a_release_is_recognised_by_its_checksum(openai_release, monkeypatch):
    _, state_dict = openai_release
    sha = sha256_of(state_dict)
    _register_tag(monkeypatch, "openai_copy", quick_gelu=True,
                  url=f"https://openaipublic.azureedge.net/clip/models/{sha}/tiny.pt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        backbone = pomp.load_backbone(TINY, pretrained=str(state_dict))
    assert not [w for w in caught if "activation" in str(w.message)]
    assert backbone.describe()["activation"] == "quick_gelu"
    assert backbone.describe()["weights"]["tag"] == "openai_copy"


def test_bad_weights_get_one_line(tmp_path, capsys):
    vocab = tmp_path / "v.txt"
    vocab.write_text("cat\n")
    other = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, other)
    pickled = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "sched": torch.optim.lr_scheduler.StepLR(
        torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), 1)}, pickled)
    for weights, needle in ((other, "weights do not fit"), (pickled, "torch.optim.lr_scheduler.StepLR"),
                            ("no-such-tag", "neither a file nor a pretrained tag")):
        rc = main(["embed", "--backbone", TINY, "--pretrained", str(weights), "--classes", str(vocab),
                   "--out-dir", str(tmp_path / "e")])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1 and needle in err[0], err
        assert "weights_only" not in err[0] and "\x1b" not in err[0]


# --- identity in files, and the mismatch warning --------------------------------------------------
def test_identity_recorded_and_other_backbone_warned_once(openai_release, class_folders, tmp_path):
    archive, _ = openai_release
    random_tiny = pomp.load_backbone(TINY)
    prompt = Prompt.init(random_tiny, n_ctx=4, seed=0)
    prompt.save(tmp_path / "p.safetensors")
    recorded = json.loads((tmp_path / "p.json").read_text())["backbone"]
    assert recorded["architecture"] == "tiny-clip" and recorded["activation"] == "gelu"
    assert recorded["weights"] == {"random_init_seed": 0}

    loaded = Prompt.load(tmp_path / "p.safetensors")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        loaded.check_compatible(random_tiny)  # the same backbone: nothing to say
        openai_like = pomp.load_backbone(TINY, pretrained=str(archive))  # same widths, another model
        loaded.encode_class_features(openai_like, ["cat", "dog"])
        loaded.encode_class_features(openai_like, ["cat"])
    messages = [str(w.message) for w in caught if "another backbone" in str(w.message)]
    assert len(messages) == 1 and "\n" not in messages[0]
    assert messages[0].startswith(f"{tmp_path / 'p.safetensors'}: prompt trained with another backbone")
    assert "activation gelu vs quick_gelu" in messages[0] and "weights random init vs ViT-tiny.pt" in messages[0]

    out = tmp_path / "eval"
    with pytest.warns(UserWarning, match="another backbone"):
        assert main(["eval", "--backbone", TINY, "--pretrained", str(archive), "--prompt", str(tmp_path / "p.json"),
                     "--data", str(class_folders / "images"), "--names", str(class_folders / "names.txt"),
                     "--out-dir", str(out), "--num-workers", "0", "--device", "cpu"]) == 0
    record = json.loads(next(out.glob("images__*.json")).read_text())
    assert record["pretrained"] == str(archive)
    assert record["backbone"]["activation"] == "quick_gelu" and record["backbone"]["weights"]["format"] == "torchscript"
    config = json.loads((out / "config" / "eval_config.json").read_text())
    assert config["backbone_info"]["weights"]["sha256"] == sha256_of(archive)[:16]


def test_unknown_precision_is_refused_at_load():
    with pytest.raises(ValueError, match="unknown precision 'fp8'"):
        pomp.load_backbone(TINY, precision="fp8")


def test_texts_equal_open_clip_after_normalisation(openai_release):
    """Sanity of the comparison helper: normalised features of the archive equal open_clip's encode_text."""
    archive, _ = openai_release
    backbone = pomp.load_backbone(TINY, pretrained=str(archive))
    tokens = backbone.tokenize(TEXTS)
    with torch.no_grad():
        ours = F.normalize(backbone.encode_texts(TEXTS).float(), dim=-1)
        theirs = backbone.model.encode_text(tokens, normalize=True).float()
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)  # float32 rounding of two kernel paths; GELU vs QuickGELU differ by > 1e-3


def test_a_release_name_without_weights_says_the_model_is_random():
    """`--backbone ViT-B-32` without `--pretrained` builds open_clip's architecture with random weights: said once,
    with a tag open_clip knows for it; a model-config JSON of one's own (tests, the zoo) stays quiet."""
    tag = open_clip.list_pretrained_tags_by_model("ViT-B-32")[0]
    with pytest.warns(UserWarning, match=rf"^ViT-B-32: no pretrained weights given, so the model is randomly "
                                         rf"initialised \(seeded\), not trained; pass --pretrained {tag} "):
        backbone = pomp.load_backbone("ViT-B-32", device="cpu")
    assert backbone.identity["weights"] == {"random_init_seed": 0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        pomp.load_backbone(TINY)
