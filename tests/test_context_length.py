"""The text context's boundary, for learned prompts and hand-crafted templates alike.

A prompt text that fills the 77-token context exactly is accepted, and its features equal open_clip's /
transformers' own `encode_text` of the same text; one token more is refused naming the class (and the
template), never cut silently, and `pomp eval` refuses it before any image is encoded. Token counts are
written out by hand: "cat" is one token of CLIP's BPE vocabulary, "a photo of a" four, "." one, plus the
start and end tokens.
"""

from __future__ import annotations

import re

import open_clip
import pytest
import torch
import torch.nn.functional as F

import pomp.data.features
from pomp.cli import main
from pomp.evaluate import build_classifier
from pomp.prompt import Prompt
from test_hf_clip import hf_backbone, hf_dir, hf_text_features, reference  # noqa: F401  (fixtures)

CONTEXT = 77


def cats(n: int) -> str:
    return " ".join(["cat"] * n)


def test_the_token_counts_used_here():
    tokenizer = open_clip.get_tokenizer("ViT-B-16")
    assert len(tokenizer.encode(cats(70))) == 70 and len(tokenizer.encode("a photo of a")) == 4
    assert len(tokenizer.encode(f"a photo of a {cats(70)}.")) + 2 == CONTEXT


def test_a_prompt_that_fills_the_context_exactly_is_accepted(backbone):
    prompt = Prompt.init(backbone, n_ctx=None, words="a photo of a")
    fits = cats(CONTEXT - 1 - 4 - 1 - 1)  # start, context, name, ".", end
    with torch.no_grad():
        ours = prompt.encode_class_features(backbone, [fits, "dog"])
        tokenizer = open_clip.get_tokenizer("ViT-B-16")
        tokens = tokenizer([f"a photo of a {fits}.", "a photo of a dog."])
        theirs = backbone.model.encode_text(tokens, normalize=True)
    assert int(tokens[0, -1]) == tokenizer.eot_token_id  # the whole text, end token in the last position: not cut
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=re.escape(f"class '{fits} cat' (with 4 context vectors) does not fit the text context of 77 tokens")):
        prompt.encode_class_features(backbone, [fits + " cat"])


def test_the_same_boundary_on_a_transformers_clip(hf_backbone, reference):  # noqa: F811
    model, tokenizer = reference
    prompt = Prompt.init(hf_backbone, n_ctx=None, words="a photo of a")
    fits = cats(CONTEXT - 7)
    with torch.no_grad():
        ours = prompt.encode_class_features(hf_backbone, [fits, "dog"])
    theirs = hf_text_features(model, tokenizer, [f"a photo of a {fits}.", "a photo of a dog."])
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="does not fit the text context of 77 tokens"):
        prompt.encode_class_features(hf_backbone, [fits + " cat"])


def test_templates_that_do_not_fit_are_refused_not_cut(backbone):
    fits = cats(CONTEXT - 2 - 5)  # "a photo of a {}." holds 5 tokens around the name
    classifier = build_classifier(backbone, [fits, "dog"], baseline="single")
    tokens = open_clip.get_tokenizer("ViT-B-16")([f"a photo of a {fits}.", "a photo of a dog."])
    with torch.no_grad():
        theirs = backbone.model.encode_text(tokens, normalize=True)
    torch.testing.assert_close(classifier, F.normalize(theirs, dim=-1), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match=r"'.* cat' in template 'a photo of a \{\}\.' does not fit the text context"):
        build_classifier(backbone, [fits + " cat", "dog"], baseline="single")
    # CLIP's 80 templates include longer ones (the first: "a bad photo of a {}.", 6 tokens): the name fits one, not all
    with pytest.raises(ValueError, match=re.escape("in template 'a bad photo of a {}.' (and 39 more) does not fit the text context")):
        build_classifier(backbone, [fits], baseline="ensemble")


def test_eval_refuses_a_long_name_before_encoding_any_image(class_folders, tiny_config, tmp_path, capsys,
                                                             monkeypatch):
    names = tmp_path / "names.txt"
    lines = (class_folders / "names.txt").read_text().splitlines()
    folder = lines[2].split("\t")[0]
    lines[2] = f"{folder}\t{cats(CONTEXT)}"
    names.write_text("\n".join(lines) + "\n")

    def no_images(*args, **kwargs):
        raise AssertionError("image features computed before the class names were checked")

    monkeypatch.setattr(pomp.data.features, "compute_image_features", no_images)
    out = tmp_path / "eval"
    rc = main(["eval", "--backbone", tiny_config, "--baseline", "single", "--data", str(class_folders / "images"),
               "--names", str(names), "--out-dir", str(out), "--num-workers", "0", "--device", "cpu"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith(f"pomp eval: error: {names}: class 'cat cat") and "does not fit" in err[0]
    assert not list(out.rglob("*.json"))


def test_the_refused_class_is_named_whichever_chunk_holds_it(backbone):
    from pomp.evaluate import template_classifier

    long_name = cats(CONTEXT - 4)  # "{}." takes it (start, name, ".", end), "a {} b." does not
    with pytest.raises(ValueError, match=re.escape(f"class '{long_name}' in template 'a {{}} b.' does not fit")):
        template_classifier(backbone, ["dog", "bird", "fox", long_name], templates=("{}.", "a {} b."), chunk_size=3)
