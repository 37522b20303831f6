"""The prompted text path against open_clip's own text encoder, and prompt files."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import pomp
from pomp.prompt import Prompt

NAMES = ["cat", "golden retriever", "hot_air balloon", "a very long class name with many many words in it"]


def reference_features(backbone, texts):
    tokens = backbone.tokenize(texts)
    with torch.no_grad():
        return backbone.model.encode_text(tokens, normalize=True)


def test_init_from_words_equals_open_clip_encode_text(backbone):
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    assert prompt.n_ctx == 4
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, NAMES)
    ref = reference_features(backbone, [f"a photo of a {n.replace('_', ' ')}." for n in NAMES])
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)


def test_cut_after_eot_is_exact_for_random_context(backbone):
    prompt = Prompt.init(backbone, n_ctx=6, seed=3)
    vocab = prompt.tokenize_classes(backbone, NAMES)
    with torch.no_grad():
        cut = prompt(backbone, vocab)
        # full 77-token sequences, context spliced in by hand
        emb = backbone.embed_tokens(vocab.tokens).clone()
        emb[:, 1:7] = prompt.ctx
        full = F.normalize(backbone.encode_text_embeddings(emb, vocab.tokens), dim=-1)
    assert int(vocab.lengths.max()) < vocab.tokens.shape[1]
    torch.testing.assert_close(cut, full, atol=2e-6, rtol=0)


def test_chunked_encoding_equals_one_pass(backbone):
    prompt = Prompt.init(backbone, n_ctx=4, seed=1)
    with torch.no_grad():
        whole = prompt.encode_class_features(backbone, NAMES, chunk_size=None)
        chunked = prompt.encode_class_features(backbone, NAMES, chunk_size=3)
    torch.testing.assert_close(chunked, whole, atol=2e-6, rtol=0)


def test_init_n_ctx_must_match_words(backbone):
    with pytest.raises(ValueError, match="n_ctx"):
        Prompt.init(backbone, n_ctx=2, words="a photo of a")


def test_only_ctx_gets_gradient(backbone):
    prompt = Prompt.init(backbone, n_ctx=4, seed=0)
    feats = prompt.encode_class_features(backbone, NAMES[:3])
    feats.sum().backward()
    assert prompt.ctx.grad is not None and prompt.ctx.grad.abs().sum() > 0
    assert all(p.grad is None and not p.requires_grad for p in backbone.parameters())


def test_save_load_round_trip(backbone, tmp_path):
    prompt = Prompt.init(backbone, n_ctx=4, seed=5)
    path = prompt.save(tmp_path / "p.safetensors", num_classes=7)
    loaded = Prompt.load(path)
    assert torch.equal(loaded.ctx, prompt.ctx)
    assert loaded.meta["num_classes"] == 7 and loaded.meta["n_ctx"] == 4
    assert loaded.meta["backbone"]["text_width"] == backbone.text_width
    assert (tmp_path / "p.json").is_file()


def test_width_mismatch_is_a_clear_error(backbone, tmp_path):
    other = Prompt(torch.zeros(4, backbone.text_width + 8))
    other.save(tmp_path / "w.safetensors")
    with pytest.raises(ValueError, match="width"):
        Prompt.load(tmp_path / "w.safetensors").encode_class_features(backbone, ["cat"])


def test_public_api_names():
    assert callable(pomp.load_backbone) and hasattr(pomp.Prompt, "init") and callable(pomp.loss.local_contrast_loss)


def test_length_buckets_give_the_same_features_and_gradient(backbone):
    names = NAMES + ["ox", "a b c d e f g h i j k l m n o p q"]
    grads, feats = [], []
    for buckets in (1, 3):
        prompt = Prompt.init(backbone, n_ctx=4, seed=4)
        vocab = prompt.tokenize_classes(backbone, names)
        f = prompt(backbone, vocab, torch.tensor([5, 0, 3, 1, 4, 2]), length_buckets=buckets)
        (f * torch.arange(f.numel()).view_as(f)).sum().backward()
        feats.append(f.detach())
        grads.append(prompt.ctx.grad)
    torch.testing.assert_close(feats[1], feats[0], atol=2e-6, rtol=0)
    torch.testing.assert_close(grads[1], grads[0], atol=1e-5 * float(grads[0].abs().max()), rtol=1e-4)


# --- renamed keywords: the old names still work, with a DeprecationWarning -------------------------
def test_init_takes_words_and_its_old_name_init_with_a_warning(backbone):
    new = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    with pytest.warns(DeprecationWarning, match=r"Prompt\.init\(init=\.\.\.\) is deprecated: pass words="):
        old = Prompt.init(backbone, n_ctx=None, init="a photo of a")
    assert torch.equal(old.ctx, new.ctx) and old.meta == new.meta and new.meta["init"] == "a photo of a"
    with pytest.warns(DeprecationWarning):
        random_old = Prompt.init(backbone, 4, init=None, seed=2)
    assert torch.equal(random_old.ctx, Prompt.init(backbone, 4, seed=2).ctx)
    with pytest.raises(TypeError, match="give words= only"):
        Prompt.init(backbone, n_ctx=None, words="a photo of", init="a photo of a")


def test_forward_takes_class_tokens_and_its_old_name_vocab_with_a_warning(backbone):
    prompt = Prompt.init(backbone, n_ctx=4, seed=5)
    class_tokens = prompt.tokenize_classes(backbone, NAMES)
    with torch.no_grad():
        positional = prompt(backbone, class_tokens)
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # the new name warns about nothing
            new = prompt(backbone, class_tokens=class_tokens)
        with pytest.warns(DeprecationWarning, match=r"forward\(vocab=\.\.\.\) is deprecated: pass class_tokens="):
            old = prompt(backbone, vocab=class_tokens)
    assert torch.equal(new, positional) and torch.equal(old, positional)
