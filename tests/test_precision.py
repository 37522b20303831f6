"""`load_backbone(..., precision="fp16" | "bf16")` on every encode path of every backbone family.

Checked against the same backbone loaded in fp32: features of hand-crafted texts, of a prompt's
classes, of images and (where the family has them) dense maps stay within a stated tolerance,
relative L2 error <= 1% in fp16 (10-bit mantissa) and <= 6% in bf16 (7-bit mantissa), cosine per
feature >= 0.999 / 0.99. On CUDA when a GPU is present, on CPU always.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import TINY_CONFIG as TINY
from test_hf_clip import hf_dir  # noqa: F401  (the transformers-saved tiny CLIP folder fixture)

import pomp
from pomp.prompt import Prompt

TOLERANCE = {"fp16": (0.01, 0.999), "bf16": (0.06, 0.99)}  # (relative L2 error, minimum cosine)
DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU"))]


def encode_all(backbone) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(0)
    size = backbone.image_spec.size
    pixels = torch.randn(3, 3, size, size, generator=generator).to(backbone.device)
    prompt = Prompt(torch.randn(4, backbone.text_width, generator=generator) * 0.02).to(backbone.device)
    with torch.no_grad():
        out = {
            "texts": backbone.encode_texts(["a photo of a cat.", "a dog", "hot air balloon"]),
            "prompt": prompt.encode_class_features(backbone, ["cat", "dog", "tabby cat"]),
            "images": backbone.encode_images(pixels),
        }
        try:
            dense = backbone.encode_dense_features(pixels)
            out["dense"] = dense.permute(0, 2, 3, 1).reshape(-1, dense.shape[1])
        except NotImplementedError:
            pass
    return {k: v.float().cpu() for k, v in out.items()}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("family", ["open_clip", "hf", "minilm-efficientnet-lite0"])
def test_low_precision_features_match_fp32(family, device, hf_dir):  # noqa: F811
    name = {"open_clip": TINY, "hf": f"hf:{hf_dir}"}.get(family, family)
    reference = encode_all(pomp.load_backbone(name, device=device, precision="fp32"))
    for precision, (max_error, min_cosine) in TOLERANCE.items():
        got = encode_all(pomp.load_backbone(name, device=device, precision=precision))
        assert got.keys() == reference.keys()
        for path, ref in reference.items():
            error = float((got[path] - ref).norm() / ref.norm())
            cosine = float(F.cosine_similarity(got[path], ref, dim=-1).min())
            assert error <= max_error and cosine >= min_cosine, (precision, path, error, cosine)


def test_eval_takes_precision_like_every_command_that_encodes_images(class_folders, tmp_path, monkeypatch):
    """`pomp eval` ran the image tower under bf16 autocast on CUDA with no way to ask for another precision."""
    import json

    import pomp.data.features
    from pomp.cli import build_parser, main

    assert build_parser().parse_args(["eval", "--backbone", "x", "--data", "d"]).precision == "bf16"  # as pretrain
    requested = []
    original = pomp.data.features.autocast_for
    monkeypatch.setattr(pomp.data.features, "autocast_for", lambda device, precision="bf16": (
        requested.append(precision), original(device, precision))[1])
    cache = tmp_path / "cache"
    assert main(["eval", "--backbone", TINY, "--baseline", "single", "--data", str(class_folders / "images"),
                 "--out-dir", str(tmp_path / "eval"), "--feature-cache", str(cache), "--precision", "fp16",
                 "--num-workers", "0", "--device", "cpu"]) == 0
    assert requested and set(requested) == {"fp16"}
    (meta_file,) = (cache / "images").glob("*/meta.json")  # one keyed entry
    meta = json.loads(meta_file.read_text())
    assert meta["key"]["precision"] == "fp32"  # what the CPU really ran, so a CUDA run never reuses it as fp16
