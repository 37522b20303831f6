"""The fast causal text path (SDPA is_causal=True on each block's own weights) against open_clip's own."""

import json

import pytest
import torch

import pomp
import pomp.backbones.open_clip as oc
from pomp.prompt import Prompt

NAMES = ["cat", "golden retriever", "hot_air balloon", "a very long class name with many many words in it"]
ATOL = 1e-5


def _config(tmp_path, name: str, **text_cfg) -> str:
    cfg = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 4, "layers": 2, **text_cfg},
    }
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(cfg))
    return str(path)


def _count_fast_calls(monkeypatch) -> list:
    calls = []
    original = oc.causal_blocks_forward

    def counted(x, blocks):
        calls.append(tuple(x.shape))
        return original(x, blocks)

    monkeypatch.setattr(oc, "causal_blocks_forward", counted)
    return calls


def _features_and_grad(prompt, backbone, vocab):
    prompt.ctx.grad = None
    features = prompt(backbone, vocab)
    (features * torch.linspace(-1, 1, features.shape[1])).sum().backward()
    return features.detach(), prompt.ctx.grad.detach().clone()


def test_fast_path_is_default_and_taken(backbone, monkeypatch):
    assert backbone.fast_text and backbone.fast_text_supported and backbone.uses_fast_text
    calls = _count_fast_calls(monkeypatch)
    prompt = Prompt.init(backbone, n_ctx=4, seed=0)
    with torch.no_grad():
        prompt.encode_class_features(backbone, NAMES)
    assert len(calls) == 1 and calls[0][0] == len(NAMES) and calls[0][1] < 77  # cut after the last EOT


def test_init_from_words_equals_open_clip_encode_text(backbone):
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    ref_tokens = backbone.tokenize([f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    with torch.no_grad():
        ref = backbone.model.encode_text(ref_tokens, normalize=True)
        assert backbone.uses_fast_text
        fast = prompt.encode_class_features(backbone, NAMES)
        backbone.fast_text = False
        try:
            slow = prompt.encode_class_features(backbone, NAMES)
        finally:
            backbone.fast_text = True
    torch.testing.assert_close(fast, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(slow, ref, atol=ATOL, rtol=0)


def test_plain_strings_equal_open_clip_encode_text(backbone):
    texts = ["a photo of a dog.", "x", "a very long sentence " * 5]
    tokens = backbone.tokenize(texts)
    with torch.no_grad():
        ref = backbone.model.encode_text(tokens)
        ours = backbone.encode_texts(texts)  # full 77 tokens through the fast path
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("n_ctx", [4, 16])
def test_random_context_fast_equals_open_clip_path(backbone, n_ctx):
    prompt = Prompt.init(backbone, n_ctx=n_ctx, seed=7)
    vocab = prompt.tokenize_classes(backbone, NAMES)
    fast, fast_grad = _features_and_grad(prompt, backbone, vocab)
    backbone.fast_text = False
    try:
        slow, slow_grad = _features_and_grad(prompt, backbone, vocab)
    finally:
        backbone.fast_text = True
    torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)
    torch.testing.assert_close(fast_grad, slow_grad, atol=ATOL * float(slow_grad.abs().max()), rtol=0)


def test_layer_scale_quick_gelu_and_other_heads(tmp_path):
    path = _config(tmp_path, "fast-text-ls", ls_init_value=0.5, heads=3, mlp_ratio=2.0)
    cfg = json.loads(open(path).read())
    cfg["quick_gelu"] = True
    open(path, "w").write(json.dumps(cfg))
    backbone = pomp.load_backbone(path)
    assert backbone.uses_fast_text
    with torch.no_grad():  # non-trivial layer-scale values
        for block in backbone.model.transformer.resblocks:
            block.ls_1.gamma.uniform_(0.2, 1.5)
            block.ls_2.gamma.uniform_(0.2, 1.5)
    prompt = Prompt.init(backbone, n_ctx=5, seed=1)
    vocab = prompt.tokenize_classes(backbone, NAMES)
    with torch.no_grad():
        fast = prompt(backbone, vocab)
        backbone.fast_text = False
        slow = prompt(backbone, vocab)
    torch.testing.assert_close(fast, slow, atol=ATOL, rtol=0)


def test_custom_blocks_fall_back(tmp_path, monkeypatch):
    backbone = pomp.load_backbone(_config(tmp_path, "fast-text-custom", block_type="custom", qk_norm=True))
    assert not backbone.fast_text_supported and not backbone.uses_fast_text
    calls = _count_fast_calls(monkeypatch)
    texts = ["a photo of a cat.", "a photo of a hot air balloon."]
    with torch.no_grad():
        ours = backbone.encode_texts(texts)
        ref = backbone.model.encode_text(backbone.tokenize(texts))
    assert calls == []
    torch.testing.assert_close(ours, ref, atol=ATOL, rtol=0)


def test_non_causal_tower_falls_back(tmp_path):
    backbone = pomp.load_backbone(_config(tmp_path, "fast-text-noncausal", no_causal_mask=True))
    assert not backbone.causal and not backbone.fast_text_supported


def test_grad_checkpointing_falls_back(tmp_path, monkeypatch):
    backbone = pomp.load_backbone(_config(tmp_path, "fast-text-ckpt"))
    backbone.model.transformer.grad_checkpointing = True
    assert backbone.fast_text_supported and not backbone.uses_fast_text
    calls = _count_fast_calls(monkeypatch)
    with torch.no_grad():
        backbone.encode_texts(["a cat."])
    assert calls == []


def test_environment_switch(monkeypatch, tiny_config):
    monkeypatch.setenv(oc.FAST_TEXT_ENV, "0")
    assert not pomp.load_backbone(tiny_config).uses_fast_text
    monkeypatch.setenv(oc.FAST_TEXT_ENV, "1")
    assert pomp.load_backbone(tiny_config).uses_fast_text


def test_compile_is_opt_in_and_lazy(tmp_path):
    backbone = pomp.load_backbone(_config(tmp_path, "fast-text-compile"))
    assert backbone._compiled_blocks is None  # eager unless asked
    assert backbone.compile_text(True) and backbone._compiled_blocks is not None  # torch.compile is lazy: no cost yet
    assert not backbone.compile_text(False) and backbone._compiled_blocks is None
    custom = pomp.load_backbone(_config(tmp_path, "fast-text-compile-custom", block_type="custom"))
    assert not custom.compile_text(True)
