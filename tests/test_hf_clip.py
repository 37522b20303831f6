"""Hugging Face transformers CLIP checkpoints behind the `Backbone` protocol (`hf:<folder>`).

Everything runs on a tiny randomly initialised CLIPConfig saved with `save_pretrained`,
with a real CLIP BPE tokenizer built offline from the vocabulary open_clip ships
(`bpe_simple_vocab_16e6.txt.gz`) and a CLIPImageProcessor config. References are computed
independently through transformers' own public entry points (`get_text_features`,
`get_image_features`) and through open_clip's architecture loaded with the same weights.

open_clip equivalence: HF CLIP and open_clip's CLIP are the same network when open_clip is
configured with `quick_gelu: true` (HF's CLIP default `hidden_act="quick_gelu"`),
`mlp_ratio = intermediate_size / hidden_size` (4 here), LayerNorm eps 1e-5 on both sides, and
head counts `width / head_width`. The weights correspond one to one: q/k/v projections are
concatenated into `in_proj_weight`/`in_proj_bias`, and the projections are transposed
(`nn.Linear` weights on the HF side, plain matrices on the open_clip side). Text pooling differs
in form only (open_clip: argmax of ids; HF with eos_token_id 49407: first EOT), which pick the
same position for CLIP's tokenizer. Padding differs (HF pads with EOT, open_clip with 0), which
is invisible to the EOT feature under the causal mask.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

transformers = pytest.importorskip("transformers")

import open_clip  # noqa: E402

import pomp  # noqa: E402
from pomp.backbones.hf_clip import HFCLIPBackbone  # noqa: E402
from pomp.prompt import Prompt  # noqa: E402

TEXT_WIDTH, VISION_WIDTH, EMBED_DIM = 48, 64, 32
NAMES = ["golden retriever", "tabby_cat", "red fox", "sports car", "coffee mug", "hot air balloon", "x"]
MEAN = (0.5, 0.4, 0.3)
STD = (0.2, 0.25, 0.3)


# --- building a tiny checkpoint offline --------------------------------------------------------
def _byte_symbols() -> list[str]:
    """CLIP's printable stand-ins for the 256 bytes, in vocabulary order (printable bytes first)."""
    printable = [
        *range(ord("!"), ord("~") + 1),
        *range(ord("\N{INVERTED EXCLAMATION MARK}"), ord("\N{NOT SIGN}") + 1),
        *range(ord("\N{REGISTERED SIGN}"), ord("\N{LATIN SMALL LETTER Y WITH DIAERESIS}") + 1),
    ]
    rest = [b for b in range(256) if b not in set(printable)]
    return [chr(b) for b in printable] + [chr(256 + i) for i in range(len(rest))]


def write_clip_tokenizer_files(folder: Path) -> Path:
    """vocab.json + merges.txt of CLIP's 49,408-token BPE, from the merges list open_clip ships."""
    bpe = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : 49152 - 256 - 2 + 1]]
    symbols = _byte_symbols()
    vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    assert len(vocab) == 49408
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n")
    return folder


def tiny_clip_config(eos_token_id: int = 49407):
    return transformers.CLIPConfig(
        text_config=dict(
            vocab_size=49408,
            hidden_size=TEXT_WIDTH,
            intermediate_size=4 * TEXT_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            bos_token_id=49406,
            eos_token_id=eos_token_id,
            pad_token_id=49407,
        ),
        vision_config=dict(
            hidden_size=VISION_WIDTH,
            intermediate_size=4 * VISION_WIDTH,
            num_hidden_layers=2,
            num_attention_heads=2,
            image_size=32,
            patch_size=8,
            hidden_act="quick_gelu",
        ),
        projection_dim=EMBED_DIM,
    )


@pytest.fixture(scope="session")
def hf_dir(tmp_path_factory) -> Path:
    """A `save_pretrained` folder: tiny CLIPModel (all weights perturbed), CLIP tokenizer, image processor."""
    root = tmp_path_factory.mktemp("hf-clip")
    torch.manual_seed(0)
    model = transformers.CLIPModel(tiny_clip_config())
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a mis-mapped weight cannot hide
        for name, p in model.named_parameters():
            if name != "logit_scale":
                p.add_(0.05 * torch.randn(p.shape, generator=generator))
        model.logit_scale.fill_(math.log(100.0))  # a trained CLIP's value (HF's init is 2.6592)
    folder = root / "tiny-clip"
    model.save_pretrained(folder)
    tokenizer = transformers.CLIPTokenizer.from_pretrained(str(write_clip_tokenizer_files(root / "bpe")))
    tokenizer.save_pretrained(folder)
    transformers.CLIPImageProcessor(
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
        image_mean=list(MEAN),
        image_std=list(STD),
        resample=3,
    ).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def hf_backbone(hf_dir) -> HFCLIPBackbone:
    return pomp.load_backbone(f"hf:{hf_dir}")


@pytest.fixture(scope="session")
def reference(hf_dir):
    """The same checkpoint loaded independently through transformers."""
    model = transformers.CLIPModel.from_pretrained(str(hf_dir)).eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    return model, tokenizer


def hf_text_features(model, tokenizer, texts: list[str]) -> torch.Tensor:
    """`get_text_features` on plainly tokenized texts (padded to the longest), normalised."""
    inputs = tokenizer(texts, padding=True, return_tensors="pt")
    with torch.no_grad():
        out = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
    out = out if isinstance(out, torch.Tensor) else out.pooler_output
    return F.normalize(out.float(), dim=-1)


def hf_image_features(model, pixels: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        out = model.get_image_features(pixel_values=pixels)
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def word_init_features(backbone, names=NAMES, chunk_size=1024) -> torch.Tensor:
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    assert prompt.n_ctx == 4
    with torch.no_grad():
        return prompt.encode_class_features(backbone, names, chunk_size=chunk_size)


def photo_texts(names=NAMES) -> list[str]:
    return [f"a photo of a {n.replace('_', ' ')}." for n in names]


# --- loading and identity ---------------------------------------------------------------------
def test_load_and_protocol_attributes(hf_backbone, hf_dir):
    assert isinstance(hf_backbone, HFCLIPBackbone)
    assert hf_backbone.text_width == TEXT_WIDTH and hf_backbone.embed_dim == EMBED_DIM
    assert hf_backbone.causal and hf_backbone.prompt_prefix_length == 1
    assert hf_backbone.logit_scale == pytest.approx(100.0, rel=1e-5)  # exp(model.logit_scale)
    assert not hf_backbone.training and not any(p.requires_grad for p in hf_backbone.parameters())
    hf_backbone.train()
    assert not hf_backbone.model.training
    desc = hf_backbone.describe()
    assert desc["family"] == "HFCLIPBackbone"
    assert desc["name"] == f"hf:{hf_dir}" and desc["pretrained"] == str(hf_dir)
    assert desc["library"] == "transformers" and desc["model_type"] == "clip"
    assert (desc["text_width"], desc["embed_dim"]) == (TEXT_WIDTH, EMBED_DIM)
    json.dumps(desc)


def test_tokenize_pads_to_context_with_pad_token(hf_backbone):
    tokens = hf_backbone.tokenize(["X X X X hot air balloon.", "a"])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokens[0, :10].tolist() == [49406, 343, 343, 343, 343, 2069, 1922, 13634, 269, 49407]
    assert (tokens[0, 10:] == hf_backbone.tokenizer.pad_token_id).all()
    assert hf_backbone.sequence_lengths(tokens).tolist() == [10, 3]


def test_too_long_class_name_is_refused(hf_backbone):
    """Truncation keeps the EOT at the last position; the prompt code then refuses the name."""
    tokens = hf_backbone.tokenize(["dog " * 100])
    assert tokens[0, -1] == hf_backbone.eos_token_id and hf_backbone.sequence_lengths(tokens).tolist() == [77]
    with pytest.raises(ValueError, match="does not fit"):
        Prompt.init(hf_backbone, n_ctx=4).tokenize_classes(hf_backbone, ["cat", "dog " * 80])


def test_tokenizer_matches_open_clip(hf_backbone):
    """The offline-built HF tokenizer gives open_clip's ids (padding aside: HF pads with EOT, open_clip with 0)."""
    texts = photo_texts() + ["Tabby_cat, it's   a DOG!! 123", "café naïve über"]
    ours = hf_backbone.tokenize(texts)
    theirs = open_clip.get_tokenizer("ViT-B-32")(texts)
    lengths = hf_backbone.sequence_lengths(ours)
    for row, n in enumerate(lengths.tolist()):
        assert ours[row, :n].tolist() == theirs[row, :n].tolist()
        assert (theirs[row, n:] == 0).all()


def test_image_spec_from_processor_config(hf_backbone):
    spec = hf_backbone.image_spec
    assert spec.size == 32 and spec.interpolation == "bicubic"
    assert spec.mean == pytest.approx(MEAN) and spec.std == pytest.approx(STD)


def test_image_spec_variants(hf_backbone):
    model, tok = hf_backbone.model, hf_backbone.tokenizer
    bilinear = HFCLIPBackbone(model, tok, "hf:x", "x", {"crop_size": {"height": 32, "width": 32}, "resample": 2})
    assert bilinear.image_spec.interpolation == "bilinear" and bilinear.image_spec.size == 32
    bare = HFCLIPBackbone(model, tok, "hf:x", "x", {})
    assert bare.image_spec.size == 32 and bare.image_spec.interpolation == "bicubic"
    assert bare.image_spec.mean == pytest.approx((0.48145466, 0.4578275, 0.40821073))


def _model_and_tokenizer_only(hf_dir: Path, folder: Path) -> Path:
    folder.mkdir()
    for f in hf_dir.iterdir():
        if f.name not in ("preprocessor_config.json", "processor_config.json"):
            shutil.copy(f, folder / f.name)
    return folder


def test_image_settings_from_whichever_processor_file_transformers_wrote(hf_dir, tmp_path):
    """transformers 5's `CLIPProcessor.save_pretrained` nests the image settings in processor_config.json."""
    mean, std = (0.45, 0.35, 0.25), (0.21, 0.22, 0.23)
    folder = _model_and_tokenizer_only(hf_dir, tmp_path / "with-processor")
    image_processor = transformers.CLIPImageProcessor(
        size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}, image_mean=list(mean),
        image_std=list(std), resample=2)
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    transformers.CLIPProcessor(image_processor=image_processor, tokenizer=tokenizer).save_pretrained(folder)
    written = {p.name for p in folder.iterdir()} & {"preprocessor_config.json", "processor_config.json"}
    assert written  # processor_config.json with transformers 5, preprocessor_config.json before
    backbone = pomp.load_backbone(f"hf:{folder}")
    spec = backbone.image_spec
    assert spec.mean == pytest.approx(mean) and spec.std == pytest.approx(std)
    assert spec.size == 32 and spec.interpolation == "bilinear"
    from PIL import Image

    generator = torch.Generator().manual_seed(0)
    image = Image.fromarray(torch.randint(0, 256, (32, 32, 3), generator=generator, dtype=torch.uint8).numpy())
    theirs = transformers.CLIPImageProcessor.from_pretrained(str(folder))(images=image, return_tensors="pt")
    ours = backbone.eval_transform()(image)
    torch.testing.assert_close(ours, theirs["pixel_values"][0], atol=1e-5, rtol=0)


def test_folder_without_image_settings_says_so(hf_dir, tmp_path):
    folder = _model_and_tokenizer_only(hf_dir, tmp_path / "bare")
    with pytest.warns(UserWarning, match="no image processor settings") as caught:
        spec = pomp.load_backbone(f"hf:{folder}").image_spec
    assert len([w for w in caught if "image processor" in str(w.message)]) == 1
    assert spec.mean == pytest.approx(open_clip.OPENAI_DATASET_MEAN)
    (folder / "processor_config.json").write_text("{not json")
    with pytest.raises(ValueError, match="unreadable image processor settings") as err:
        pomp.load_backbone(f"hf:{folder}")
    assert "\n" not in str(err.value)


def _non_square_image():
    """96 x 48 gradients with a red band on the left: cropping and squashing give different pixels."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:48, 0:96]
    pixels = np.stack([x * 255 / 95, y * 255 / 47, (x + y) * 255 / 142], -1).astype(np.uint8)
    pixels[:, :20] = [250, 10, 10]
    return Image.fromarray(pixels)


@pytest.mark.parametrize("processor", ["clip", "siglip"])
def test_image_settings_follow_the_processor_class_the_folder_names(hf_dir, tmp_path, processor):
    """A SigLIP-style processor resizes both sides to {height, width} and never crops; CLIP's resizes the
    short side and crops. pomp's test transform equals transformers' own processor output either way."""
    folder = _model_and_tokenizer_only(hf_dir, tmp_path / processor)
    if processor == "siglip":
        transformers.SiglipImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.5, 0.6],
                                          image_std=[0.2, 0.3, 0.4]).save_pretrained(folder)
    else:
        transformers.CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
                                        image_mean=list(MEAN), image_std=list(STD)).save_pretrained(folder)
    backbone = pomp.load_backbone(f"hf:{folder}")
    assert backbone.image_spec.resize_mode == {"siglip": "squash", "clip": "shortest"}[processor]
    image = _non_square_image()
    theirs = transformers.AutoImageProcessor.from_pretrained(str(folder))(images=image, return_tensors="pt")
    torch.testing.assert_close(backbone.eval_transform()(image), theirs["pixel_values"][0], atol=1e-5, rtol=0)


def test_folders_pomp_cannot_use_are_refused_before_any_work(hf_dir, tmp_path):
    no_tokenizer = tmp_path / "no-tokenizer"  # model and image processor saved, tokenizer forgotten
    transformers.CLIPModel.from_pretrained(str(hf_dir)).save_pretrained(no_tokenizer)
    transformers.CLIPImageProcessor.from_pretrained(str(hf_dir)).save_pretrained(no_tokenizer)
    fallback = transformers.AutoTokenizer.from_pretrained(str(no_tokenizer))  # what transformers gives instead
    assert set(fallback("a photo of a cat", add_special_tokens=False)["input_ids"]) == {fallback.unk_token_id}
    with pytest.raises(ValueError, match="the tokenizer knows no words .* lacks the tokenizer files"):
        pomp.load_backbone(f"hf:{no_tokenizer}")

    wrong_size = _model_and_tokenizer_only(hf_dir, tmp_path / "wrong-size")
    transformers.CLIPImageProcessor().save_pretrained(wrong_size)  # the 224 px defaults beside a 32 px tower
    with pytest.raises(ValueError, match="makes 224 px inputs but the vision tower takes 32 px"):
        pomp.load_backbone(f"hf:{wrong_size}")

    variable = _model_and_tokenizer_only(hf_dir, tmp_path / "naflex")
    transformers.Siglip2ImageProcessor().save_pretrained(variable)
    with pytest.raises(ValueError, match="Siglip2ImageProcessor gives no fixed input size"):
        pomp.load_backbone(f"hf:{variable}")

    from safetensors.torch import load_file, save_file

    partial = _model_and_tokenizer_only(hf_dir, tmp_path / "partial")
    weights = load_file(partial / "model.safetensors")
    del weights["text_projection.weight"]
    save_file(weights, partial / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="1 weights of the CLIP model are missing .*text_projection.weight"):
        pomp.load_backbone(f"hf:{partial}")


@pytest.mark.slow
def test_a_siglip_folder_is_one_line_not_a_load_report(hf_dir, tmp_path):
    """transformers would print a multi-line LOAD REPORT and fail with its own advice; pomp says what it is."""
    import os
    import subprocess
    import sys

    folder = tmp_path / "siglip"
    config = transformers.SiglipConfig(
        text_config=dict(hidden_size=TEXT_WIDTH, intermediate_size=2 * TEXT_WIDTH, num_hidden_layers=1,
                         num_attention_heads=2, vocab_size=49408, bos_token_id=None, eos_token_id=None),
        vision_config=dict(hidden_size=VISION_WIDTH, intermediate_size=2 * VISION_WIDTH, num_hidden_layers=1,
                           num_attention_heads=2, image_size=32, patch_size=8))
    transformers.SiglipModel(config).save_pretrained(folder)
    transformers.SiglipImageProcessor(size={"height": 32, "width": 32}).save_pretrained(folder)
    vocab = tmp_path / "v.txt"
    vocab.write_text("cat\n")
    repo = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-m", "pomp.cli", "embed", "--backbone", f"hf:{folder}", "--classes",
                           str(vocab), "--out-dir", str(tmp_path / "e")], capture_output=True, text=True, cwd=repo,
                          env={**os.environ, "PYTHONPATH": str(repo), "HF_HUB_OFFLINE": "1"}, timeout=300)
    assert proc.returncode == 2 and proc.stderr.strip().splitlines() == [
        f"pomp embed: error: hf:{folder}: a 'siglip' model, not CLIP; the hf: backbone reads transformers CLIPModel "
        "folders (config model_type 'clip')"], proc.stderr


def test_hf_backbones_are_in_the_help(capsys):
    from pomp.cli import main

    with pytest.raises(SystemExit):
        main(["eval", "--help"])
    assert "hf:<folder>" in capsys.readouterr().out


def test_identity_records_activation_and_weights(hf_backbone, hf_dir):
    desc = hf_backbone.describe()
    assert desc["architecture"] == "hf:clip" and desc["activation"] == "quick_gelu"
    assert desc["weights"]["file"] == "model.safetensors"
    assert desc["weights"]["sha256"] == hashlib.sha256((hf_dir / "model.safetensors").read_bytes()).hexdigest()[:16]


def test_load_errors(hf_dir, tmp_path):
    with pytest.raises(ValueError, match="after 'hf:'"):
        pomp.load_backbone("hf:")
    with pytest.raises(FileNotFoundError):
        pomp.load_backbone(f"hf:{tmp_path / 'missing'}")
    with pytest.raises(ValueError, match="cannot override"):
        pomp.load_backbone(f"hf:{hf_dir}", pretrained="other.pt")
    with pytest.raises(ValueError, match="precision"):
        pomp.load_backbone(f"hf:{hf_dir}", precision="fp8")


# --- (1) text: learned-context path == transformers' own text features -------------------------
def test_word_init_prompt_equals_get_text_features(hf_backbone, reference):
    """`Prompt.init(words="a photo of a")` spliced into "X X X X <name>." == HF on "a photo of a <name>."."""
    model, tokenizer = reference
    expected = hf_text_features(model, tokenizer, photo_texts())
    got = word_init_features(hf_backbone)
    assert got.shape == (len(NAMES), EMBED_DIM)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=0)
    # chunked (sorted by length, cut per chunk) gives the same features in the same order
    torch.testing.assert_close(word_init_features(hf_backbone, chunk_size=2), expected, atol=1e-5, rtol=0)


def test_encode_texts_equals_get_text_features(hf_backbone, reference):
    """Full 77-token sequences (no cut) through `encode_text_embeddings` == `get_text_features`."""
    model, tokenizer = reference
    texts = ["a photo of a dog.", "itap of a red fox with a very long tail and a hat."]
    with torch.no_grad():
        got = F.normalize(hf_backbone.encode_texts(texts).float(), dim=-1)
    torch.testing.assert_close(got, hf_text_features(model, tokenizer, texts), atol=1e-5, rtol=0)


@pytest.mark.parametrize("attn", ["eager", "sdpa"])
def test_attention_implementations(hf_dir, attn):
    """Whatever mask form the configured attention takes (materialised for eager, is_causal for SDPA)."""
    try:
        model = transformers.CLIPModel.from_pretrained(str(hf_dir), attn_implementation=attn).eval()
    except ValueError as err:  # transformers < 4.41: CLIP has no SDPA attention
        pytest.skip(f"{attn} attention not available for CLIP in transformers {transformers.__version__}: {err}")
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    backbone = HFCLIPBackbone(model, tokenizer, f"hf:{hf_dir}", str(hf_dir))
    torch.testing.assert_close(
        word_init_features(backbone), hf_text_features(model, tokenizer, photo_texts()), atol=1e-5, rtol=0
    )


def test_legacy_eos_token_id_argmax_pooling(hf_dir):
    """Configs with the pre-#24773 `eos_token_id == 2` pool at the argmax id; same features for CLIP's BPE."""
    config = transformers.CLIPConfig.from_pretrained(str(hf_dir))
    config.text_config.eos_token_id = 2
    model = transformers.CLIPModel.from_pretrained(str(hf_dir), config=config).eval()
    assert model.text_model.eos_token_id == 2
    tokenizer = transformers.AutoTokenizer.from_pretrained(str(hf_dir))
    backbone = HFCLIPBackbone(model, tokenizer, f"hf:{hf_dir}", str(hf_dir))
    tokens = backbone.tokenize(["a photo of a cat."])
    assert backbone.sequence_lengths(tokens).tolist() == [8]
    torch.testing.assert_close(
        word_init_features(backbone), hf_text_features(model, tokenizer, photo_texts()), atol=1e-5, rtol=0
    )


def test_gradient_reaches_context_only(hf_backbone):
    prompt = Prompt.init(hf_backbone, n_ctx=4, seed=0)
    features = prompt.encode_class_features(hf_backbone, NAMES)
    features[:, 0].sum().backward()
    assert prompt.ctx.grad is not None and prompt.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in hf_backbone.parameters())


def test_bf16_weights(hf_dir, reference):
    backbone = pomp.load_backbone(f"hf:{hf_dir}", precision="bf16")
    assert backbone.embed_tokens(backbone.tokenize(["a"])).dtype == torch.bfloat16
    model, tokenizer = reference
    expected = hf_text_features(model, tokenizer, photo_texts())
    cos = (word_init_features(backbone) * expected).sum(-1)
    assert (cos > 0.99).all()


# --- (2) images ---------------------------------------------------------------------------------
def test_encode_images_equals_get_image_features(hf_backbone, reference):
    model, _ = reference
    pixels = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        got = hf_backbone.encode_images(pixels)
    assert got.shape == (3, EMBED_DIM)
    torch.testing.assert_close(got, hf_image_features(model, pixels), atol=1e-5, rtol=1e-5)


# --- (3) the same weights through open_clip's architecture --------------------------------------
def open_clip_state_dict(hf_model) -> dict[str, torch.Tensor]:
    """HF CLIPModel weights under open_clip CLIP names (see the module docstring)."""
    sd = {k: v.detach().clone() for k, v in hf_model.state_dict().items()}
    out: dict[str, torch.Tensor] = {}

    def blocks(hf_prefix: str, oc_prefix: str, layers: int) -> None:
        for i in range(layers):
            h, o = f"{hf_prefix}.encoder.layers.{i}", f"{oc_prefix}.resblocks.{i}"
            for kind in ("weight", "bias"):
                out[f"{o}.ln_1.{kind}"] = sd[f"{h}.layer_norm1.{kind}"]
                out[f"{o}.ln_2.{kind}"] = sd[f"{h}.layer_norm2.{kind}"]
                out[f"{o}.attn.in_proj_{kind}"] = torch.cat(
                    [sd[f"{h}.self_attn.{p}_proj.{kind}"] for p in ("q", "k", "v")]
                )
                out[f"{o}.attn.out_proj.{kind}"] = sd[f"{h}.self_attn.out_proj.{kind}"]
                out[f"{o}.mlp.c_fc.{kind}"] = sd[f"{h}.mlp.fc1.{kind}"]
                out[f"{o}.mlp.c_proj.{kind}"] = sd[f"{h}.mlp.fc2.{kind}"]

    out["token_embedding.weight"] = sd["text_model.embeddings.token_embedding.weight"]
    out["positional_embedding"] = sd["text_model.embeddings.position_embedding.weight"]
    blocks("text_model", "transformer", 2)
    for kind in ("weight", "bias"):
        out[f"ln_final.{kind}"] = sd[f"text_model.final_layer_norm.{kind}"]
        out[f"visual.ln_pre.{kind}"] = sd[f"vision_model.pre_layrnorm.{kind}"]
        out[f"visual.ln_post.{kind}"] = sd[f"vision_model.post_layernorm.{kind}"]
    out["text_projection"] = sd["text_projection.weight"].T.contiguous()
    out["visual.class_embedding"] = sd["vision_model.embeddings.class_embedding"]
    out["visual.positional_embedding"] = sd["vision_model.embeddings.position_embedding.weight"]
    out["visual.conv1.weight"] = sd["vision_model.embeddings.patch_embedding.weight"]
    blocks("vision_model", "visual.transformer", 2)
    out["visual.proj"] = sd["visual_projection.weight"].T.contiguous()
    out["logit_scale"] = sd["logit_scale"]
    return out


def test_same_weights_through_open_clip(hf_backbone, reference, tmp_path):
    config = {
        "embed_dim": EMBED_DIM,
        "quick_gelu": True,
        "vision_cfg": {"image_size": 32, "layers": 2, "width": VISION_WIDTH, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": TEXT_WIDTH, "heads": 2, "layers": 2},
    }
    path = tmp_path / "hf-tiny-clip-equivalent.json"
    path.write_text(json.dumps(config))
    oc = pomp.load_backbone(str(path))
    missing, unexpected = oc.model.load_state_dict(open_clip_state_dict(reference[0]), strict=False)
    assert not unexpected and all(k == "attn_mask" or k.endswith(".attn_mask") for k in missing), missing

    torch.testing.assert_close(word_init_features(oc), word_init_features(hf_backbone), atol=1e-5, rtol=0)
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        torch.testing.assert_close(oc.encode_images(pixels), hf_backbone.encode_images(pixels), atol=1e-5, rtol=1e-5)
    # (the open_clip backbone read its temperature before the weights were swapped in)
    assert float(oc.model.logit_scale.exp()) == pytest.approx(hf_backbone.logit_scale)


# --- (4) end to end: pre-train on class folders, then evaluate, through `hf:` -------------------
def test_pretrain_and_eval_end_to_end(hf_dir, class_folders, tmp_path):
    """The CLI's pre-training and evaluation run unchanged on an `hf:` backbone (tiny, CPU, a few steps)."""
    pytest.importorskip("pomp.train")
    from pomp.cli import main

    backbone_name = f"hf:{hf_dir}"
    images, names = class_folders / "images", class_folders / "names.txt"
    run = tmp_path / "run"
    rc = main(["pretrain", "--backbone", backbone_name, "--train-root", str(images), "--names", str(names),
               "--out-dir", str(run), "--shots", "3", "--val-per-class", "2", "--epochs", "2",
               "--warmup-epochs", "1", "--batch-size", "6", "--views", "2", "--classes-per-step", "3",
               "--ctx-init", "a photo of a", "--num-workers", "0", "--device", "cpu", "--no-progress"])
    assert rc == 0
    prompt = Prompt.load(run / "prompt.safetensors")
    assert prompt.n_ctx == 4 and prompt.width == TEXT_WIDTH
    assert prompt.meta["backbone"]["family"] == "HFCLIPBackbone"
    assert prompt.meta["backbone"]["name"] == backbone_name
    summary = json.loads((run / "summary.json").read_text())
    assert summary["finished"] and summary["global_step"] == summary["total_steps"] > 0
    assert summary["best_val_acc1"] is not None and 0.0 <= summary["best_val_acc1"] <= 1.0
    init = Prompt.init(pomp.load_backbone(backbone_name), n_ctx=None, words="a photo of a")
    assert not torch.allclose(prompt.ctx, init.ctx)  # the context moved

    out = tmp_path / "eval"
    rc = main(["eval", "--backbone", backbone_name, "--prompt", str(run / "prompt.safetensors"),
               "--baseline", "single", "--data", str(images), "--names", str(names), "--out-dir", str(out),
               "--num-workers", "0", "--device", "cpu"])
    assert rc == 0
    results = sorted(out.glob("images__*.json"))
    assert len(results) == 2
    for path in results:
        record = json.loads(path.read_text())
        assert 0.0 <= record["metrics"]["acc1"] <= 1.0
        assert (record["model"], record["pretrained"]) == (backbone_name, str(hf_dir))
