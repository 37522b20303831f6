"""The open_clip backbone: model-config JSONs, local checkpoints, frozen towers."""

import pytest
import torch

import pomp


def test_frozen_eval_and_widths(backbone):
    assert not backbone.training and not any(p.requires_grad for p in backbone.parameters())
    backbone.train()
    assert not backbone.model.training  # frozen towers stay in eval mode
    assert backbone.text_width == 48 and backbone.embed_dim == 32
    assert backbone.image_spec.size == 32


def test_same_config_same_random_weights(tiny_config, backbone):
    again = pomp.load_backbone(tiny_config)
    for a, b in zip(backbone.parameters(), again.parameters()):
        assert torch.equal(a, b)


def test_local_checkpoint_file_is_loaded(tiny_config, backbone, tmp_path):
    state = {k: v.clone() for k, v in backbone.model.state_dict().items()}
    state["text_projection"] = state["text_projection"] * 2.0
    path = tmp_path / "tiny.pt"
    torch.save(state, path)
    loaded = pomp.load_backbone(tiny_config, pretrained=str(path))
    assert torch.equal(loaded.model.text_projection, state["text_projection"])
    assert loaded.pretrained == str(path)


def test_missing_checkpoint_and_unknown_model(tiny_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        pomp.load_backbone(tiny_config, pretrained=str(tmp_path / "nope.pt"))
    with pytest.raises(ValueError, match="unknown open_clip model"):
        pomp.load_backbone("no-such-model")
    bad = tmp_path / "bad.json"
    bad.write_text("{\"embed_dim\": 3}")
    with pytest.raises(ValueError, match="needs"):
        pomp.load_backbone(str(bad))


def test_encode_images_equals_open_clip(backbone):
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(backbone.encode_images(pixels), backbone.model.encode_image(pixels))
