"""Scoring as the CoOp/POMP protocol does, checked against independent computations:

- ties: the lowest class index wins (Dassl's evaluator `output.max(1)[1]`, argmax); references are
  numpy's argmax and lexsort, sklearn's balanced accuracy (clip_benchmark's recall) and hand counts,
  on vocabularies that repeat a name, in `zero_shot_metrics`, `pomp eval`, `pomp benchmark`,
  segmentation and region classification;
- ImageNet and its variants named by CoOp's `classnames.txt` (written here as CoOp's DATASETS.md
  lays it out) when present, by open_clip's list otherwise, and the result says which;
- the per-dataset baseline equals open_clip's own `encode_text` on the templates of CoOp's
  trainers/zsclip.py CUSTOM_TEMPLATES (spelled out here, not imported from pomp);
- the class-name hash in result files equals sha256 computed here of the names, one per line;
- `pomp data check-names` on a tree file written with torch.save as MIIL's is laid out.
"""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES
from sklearn.metrics import balanced_accuracy_score
from test_benchmark_suite import IN1K, IN_A, IN_R, _split, make_fake_benchmarks

from pomp.data import imagenet21k
from pomp.evaluate import build_classifier, zero_shot_metrics
from pomp.ranking import argmax_first_index, class_scores, top_k_first_index

# CoOp trainers/zsclip.py CUSTOM_TEMPLATES, by pomp's dataset keys (POMP's copy adds ImageNet21K)
COOP_TEMPLATES = {
    "oxford_pets": "a photo of a {}, a type of pet.",
    "oxford_flowers": "a photo of a {}, a type of flower.",
    "fgvc_aircraft": "a photo of a {}, a type of aircraft.",
    "dtd": "{} texture.",
    "eurosat": "a centered satellite photo of {}.",
    "stanford_cars": "a photo of a {}.",
    "food101": "a photo of {}, a type of food.",
    "sun397": "a photo of a {}.",
    "caltech101": "a photo of a {}.",
    "ucf101": "a photo of a person doing {}.",
    "imagenet": "a photo of a {}.",
    "imagenet_sketch": "a photo of a {}.",
    "imagenetv2": "a photo of a {}.",
    "imagenet_a": "a photo of a {}.",
    "imagenet_r": "a photo of a {}.",
    "imagenet21k_p": "a photo of a {}.",
}


def sha256_of_lines(names: list[str]) -> str:
    return hashlib.sha256("".join(n + "\n" for n in names).encode("utf-8")).hexdigest()


def first_index_top_k(scores: np.ndarray, k: int) -> np.ndarray:
    """Reference: order by score (descending, NaN last), then by index, with numpy's lexsort."""
    out = []
    for row in scores:
        key = np.where(np.isnan(row), -np.inf, row)
        out.append(np.lexsort((np.arange(len(row)), -key))[:k])
    return np.array(out)


# --- the rule --------------------------------------------------------------------------------------
def test_top_k_and_argmax_break_ties_by_the_lowest_index():
    g = torch.Generator().manual_seed(0)
    scores = torch.randint(0, 4, (300, 23), generator=g).float()  # four values over 23 classes: ties everywhere
    scores[5, 3] = float("nan")
    scores[6] = float("nan")
    scores[7] = float("-inf")
    for k in (1, 2, 5, 23, 40):
        ours = top_k_first_index(scores, k)
        np.testing.assert_array_equal(ours.numpy(), first_index_top_k(scores.numpy(), k))
    finite = scores[8:]
    np.testing.assert_array_equal(argmax_first_index(finite, dim=1).numpy(), np.argmax(finite.numpy(), axis=1))
    maps = finite[:64].T.reshape(23, 8, 8)  # class dim first, as a segmentation map
    np.testing.assert_array_equal(argmax_first_index(maps, dim=0).numpy(),
                                  np.argmax(maps.numpy(), axis=0))
    x = torch.tensor([[0.1, 0.5, 0.5, 0.2, 0.5]])
    assert top_k_first_index(x, 3).tolist() == [[1, 2, 4]]


def test_identical_classifier_rows_give_identical_score_columns():
    g = torch.Generator().manual_seed(1)
    classifier = F.normalize(torch.randn(300, 16, generator=g), dim=-1)
    classifier[299] = classifier[0]
    classifier[150] = classifier[0]
    classifier[7] = classifier[3]
    features = F.normalize(torch.randn(50, 16, generator=g), dim=-1)
    scores = class_scores(features, classifier)
    assert torch.equal(scores[:, 0], scores[:, 150]) and torch.equal(scores[:, 0], scores[:, 299])
    assert torch.equal(scores[:, 3], scores[:, 7])
    torch.testing.assert_close(scores, features @ classifier.t(), atol=1e-6, rtol=0)


def test_metrics_synthetic_ties_by_hand():
    # classes 1, 2 and 4 share one feature vector; an image on that vector ties between them
    e = torch.eye(4)
    classifier = torch.stack([e[0], e[1], e[1], e[2], e[1], e[3]])
    feats = torch.stack([e[1], e[1], e[1], e[0], e[1], e[1], e[1], e[1]])
    labels = torch.tensor([1, 2, 4, 0, 4, 4, 2, 1])
    m = zero_shot_metrics(feats, labels, classifier)
    # every tied image is predicted 1: right for the 2 images of class 1 and the 1 of class 0, of 8
    assert m["acc1"] == pytest.approx(3 / 8)
    # top-5 of a tied image: 1, 2, 4 (the tie, by index), then 0, 3, 5 at 0 -> 0 and 3: every label is in
    assert m["acc5"] == pytest.approx(1.0)
    # recall per class: 0 -> 1, 1 -> 1, 2 -> 0, 4 -> 0 (classes 3 and 5 have no images)
    assert m["mean_per_class_recall"] == pytest.approx(2 / 4)


def test_metrics_with_repeated_classes_equal_numpy_argmax_and_lexsort():
    # 12 classes made of 4 distinct vectors, small-integer image features: ties in most rows. torch.topk's
    # own tie order gave acc5 0.47 and recall 0.0866 here (CPU, torch 2.14); the rule gives 0.42 / 0.0909.
    g = torch.Generator().manual_seed(0)
    classifier = torch.eye(4)[torch.tensor([0, 1, 2, 3, 1, 2, 0, 3, 2, 1, 0, 3])]
    feats = torch.randint(0, 3, (200, 4), generator=g).float()
    labels = torch.randint(0, 12, (200,), generator=g)
    scores, truth = (feats @ classifier.t()).numpy(), labels.numpy()
    pred = np.argmax(scores, axis=1)  # numpy: the first maximal index
    top5 = first_index_top_k(scores, 5)
    recall = balanced_accuracy_score(truth, pred)  # clip_benchmark's mean_per_class_recall on argmax
    m = zero_shot_metrics(feats, labels, classifier, chunk_size=37)
    assert m["acc1"] == pytest.approx((pred == truth).mean())
    assert m["acc5"] == pytest.approx((top5 == truth[:, None]).any(axis=1).mean())
    assert m["mean_per_class_recall"] == pytest.approx(recall)
    assert m["acc5"] == pytest.approx(0.42) and m["mean_per_class_recall"] == pytest.approx(0.0908828, abs=1e-6)


def test_top5_cut_inside_a_tie_keeps_the_lowest_indices():
    classifier = torch.ones(7, 3) / 3**0.5  # seven identical classes
    feats = torch.ones(7, 3) / 3**0.5
    m = zero_shot_metrics(feats, torch.arange(7), classifier)
    assert m["acc1"] == pytest.approx(1 / 7)  # only class 0 is ever predicted
    assert m["acc5"] == pytest.approx(5 / 7)  # classes 0-4 make the top 5
    assert m["mean_per_class_recall"] == pytest.approx(1 / 7)


@pytest.mark.parametrize("kind", ["single", "dataset", "prompt"])
def test_repeated_names_get_identical_rows_and_the_first_index(backbone, kind):
    from pomp.prompt import Prompt

    names = ["cat", "dog", "cat", "bird", "cat_", "dog"]  # "cat_" is "cat" once underscores become spaces
    kwargs = {"prompt": Prompt.init(backbone, n_ctx=4, seed=0)} if kind == "prompt" else {"baseline": kind}
    classifier = build_classifier(backbone, names, dataset="dtd", **kwargs)
    assert torch.equal(classifier[0], classifier[2]) and torch.equal(classifier[0], classifier[4])
    assert torch.equal(classifier[1], classifier[5]) and not torch.equal(classifier[0], classifier[1])
    m = zero_shot_metrics(classifier, torch.arange(6), classifier)  # each image = its own class's features
    # predictions by hand: 0, 1, 0, 3, 0, 1 -> right for 0, 1, 3
    assert m["acc1"] == pytest.approx(3 / 6)
    assert m["mean_per_class_recall"] == pytest.approx(3 / 6)


def test_clip_imagenet_names_tie_at_missile_and_sunglasses(backbone):
    assert IMAGENET_CLASSNAMES[657] == IMAGENET_CLASSNAMES[744] == "missile"
    assert IMAGENET_CLASSNAMES[836] == IMAGENET_CLASSNAMES[837] == "sunglasses"
    classifier = build_classifier(backbone, list(IMAGENET_CLASSNAMES), baseline="single")
    assert torch.equal(classifier[657], classifier[744]) and torch.equal(classifier[836], classifier[837])
    feats = classifier[[657, 744, 836, 837]]
    m = zero_shot_metrics(feats, torch.tensor([657, 744, 836, 837]), classifier)
    assert m["acc1"] == pytest.approx(0.5)  # the first of each pair is credited, the second never


# --- everywhere: eval, benchmark, segmentation, detection -----------------------------------------
def _one_name_dtd(root: Path, n: int = 7) -> Path:
    """A DTD split (CoOp layout) whose n classes all carry the same name: every image ties n ways."""
    _split(root / "dtd", "split_zhou_DescribableTextures.json", "images",
           [(f"banded/banded_{i:04d}.jpg", i, "banded") for i in range(n)])
    return root


def _save_prompt(backbone, path: Path) -> str:
    from pomp.prompt import Prompt

    Prompt.init(backbone, n_ctx=4, seed=0).save(path)
    return str(path)


def test_benchmark_and_eval_credit_the_first_of_tied_classes(backbone, tiny_config, tmp_path):
    from pomp.cli import main

    root = _one_name_dtd(tmp_path / "DATA")
    prompt = _save_prompt(backbone, tmp_path / "p.safetensors")
    out = tmp_path / "bench"
    assert main(["benchmark", "--datasets", "dtd", "--data-root", str(root), "--prompt", prompt,
                 "--baseline", "single", "--baseline", "dataset", "--backbone", tiny_config, "--out-dir", str(out),
                 "--num-workers", "0", "--no-progress"]) == 0
    out_eval = tmp_path / "eval"
    assert main(["eval", "--data", str(root / "dtd/split_zhou_DescribableTextures.json"),
                 "--image-root", str(root / "dtd/images"), "--prompt", prompt, "--baseline", "dataset",
                 "--backbone", tiny_config, "--out-dir", str(out_eval), "--num-workers", "0"]) == 0
    results = sorted(out.glob("dtd__*.json")) + sorted(out_eval.glob("split_zhou_*__*.json"))
    assert len(results) == 5
    for path in results:
        m = json.loads(path.read_text())["metrics"]
        # one image per class, all seven classes tie: class 0 is always predicted, classes 0-4 are the top 5
        assert m["acc1"] == pytest.approx(1 / 7), path.name
        assert m["acc5"] == pytest.approx(5 / 7), path.name
        assert m["mean_per_class_recall"] == pytest.approx(1 / 7), path.name


@pytest.mark.parametrize("class_chunk", [1, 2, 32])
def test_segmentation_ties_go_to_the_lowest_class(class_chunk):
    from test_dense import _StubBackbone

    from pomp.dense.segment import dense_cosines, predict_segmentation

    class Constant(_StubBackbone):  # dense features: the same vector at every location
        def encode_dense_features(self, pixels):
            return torch.tensor([0.2, 1.0, 0.1]).view(1, 3, 1, 1).expand(pixels.shape[0], 3, 4, 4)

    e = torch.eye(3)
    classifier = torch.stack([e[0], e[1], e[2], e[1], e[1]])  # classes 1, 3, 4 identical
    stub = Constant()
    labels = predict_segmentation(stub, torch.zeros(3, 8, 8), classifier, (6, 6), class_chunk=class_chunk)
    assert labels.shape == (6, 6) and bool((labels == 1).all())
    cosines = dense_cosines(torch.randn(2, 3, 4, 4), classifier)
    assert torch.equal(cosines[:, 1], cosines[:, 3]) and torch.equal(cosines[:, 1], cosines[:, 4])
    # with a background threshold, background (0) drops out and the same tie still goes to 1
    labels = predict_segmentation(stub, torch.zeros(3, 8, 8), classifier, (6, 6), background=0, bg_threshold=0.1,
                                  class_chunk=class_chunk)
    assert bool((labels == 1).all())


def test_region_detections_order_tied_classes_by_index():
    from pomp.dense.regions import classify_regions, region_detections

    probs = torch.tensor([[0.1, 0.3, 0.3, 0.0, 0.3]])
    dets = region_detections(7, torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([0.5]), probs,
                             [10, 20, 30, 40, 50], top_k=2)
    assert [d["category_id"] for d in dets] == [20, 30]
    assert [d["score"] for d in dets] == pytest.approx([0.15, 0.15])
    e = torch.eye(3)
    probs = classify_regions(torch.tensor([[0.2, 1.0, 0.1]]), torch.stack([e[0], e[1], e[2], e[1]]), 10.0)
    assert probs[0, 1] == probs[0, 3]


def test_detection_box_accuracy_with_a_repeated_class(tmp_path):
    from pomp.dense.regions import detect
    from pomp.dense.scenes import make_scenes
    from test_dense import ColourBackbone, colour_classifier

    scenes = make_scenes(tmp_path / "scenes", num_images=3, size=64, seed=3, source="shapes")
    gt = json.loads((scenes / "annotations.json").read_text())
    names = [c["name"] for c in gt["categories"]]
    classifier = colour_classifier(names)
    classifier[2] = classifier[0]  # the third category now looks exactly like the first
    dets, stats = detect(ColourBackbone(size=64), gt, scenes / "JPEGImages", classifier, top_k=3)
    first, third = gt["categories"][0]["id"], gt["categories"][2]["id"]
    anns = [a for a in gt["annotations"] if not a.get("iscrowd", 0)]
    # boxes of the third category are classified as the first; all others right (the colour backbone is exact)
    assert stats["box_acc1"] == pytest.approx(sum(a["category_id"] != third for a in anns) / len(anns))
    assert any(a["category_id"] == third for a in anns)
    for ann_dets in (dets[i : i + 3] for i in range(0, len(dets), 3)):
        ids = [d["category_id"] for d in ann_dets]
        if first in ids and third in ids:
            assert ids.index(first) < ids.index(third)


# --- ImageNet names: CoOp's classnames.txt -------------------------------------------------------------
COOP_RENAMED = {"n04008634": "projectile", "n04355933": "sunglass"}  # where CoOp's file differs from CLIP's list


def coop_classnames_txt(path: Path, order=None) -> list[str]:
    """`<wnid> <class name>` per line, as CoOp's classnames.txt (DATASETS.md); returns the names in line order."""
    wnids = IN1K if order is None else order
    names = {w: COOP_RENAMED.get(w, n) for w, n in zip(IN1K, IMAGENET_CLASSNAMES)}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{w} {names[w]}\n" for w in wnids), encoding="utf-8")
    return [names[w] for w in wnids]


def _imagenets(root: Path) -> Path:
    return make_fake_benchmarks(root, skip=tuple(k for k in (
        "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft", "sun397", "dtd",
        "eurosat", "ucf101", "imagenet21k_p")))


def test_imagenet_and_variants_read_coop_classnames_txt(tmp_path):
    from pomp.data.suite_layouts import classnames_source, load_test_set

    root = _imagenets(tmp_path / "DATA")
    coop = coop_classnames_txt(root / "imagenet/classnames.txt")
    assert IN1K.index("n04008634") == 744 and coop[744] == "projectile" and coop[657] == "missile"
    # DATASETS.md copies the file into each variant's folder; V2's copy here is in reverse line order,
    # which CoOp's imagenetv2.py follows (label i = line i); ImageNet-R has no copy: imagenet/'s is used
    reversed_names = coop_classnames_txt(root / "imagenetv2/classnames.txt", order=IN1K[::-1])
    for folder in ("imagenet-sketch", "imagenet-adversarial"):
        coop_classnames_txt(root / folder / "classnames.txt")
    by_wnid = dict(zip(IN1K, coop))
    assert load_test_set("imagenet", root).classnames == coop
    assert load_test_set("imagenet_sketch", root).classnames == coop
    assert load_test_set("imagenetv2", root).classnames == reversed_names
    assert load_test_set("imagenet_a", root).classnames == [by_wnid[w] for w in IN_A]
    assert load_test_set("imagenet_r", root).classnames == [by_wnid[w] for w in IN_R]
    assert classnames_source("imagenet_r", root) == f"CoOp classnames.txt: {root / 'imagenet/classnames.txt'}"
    assert classnames_source("imagenetv2", root) == f"CoOp classnames.txt: {root / 'imagenetv2/classnames.txt'}"

    bare = _imagenets(tmp_path / "BARE")
    assert load_test_set("imagenet", bare).classnames == list(IMAGENET_CLASSNAMES)
    assert classnames_source("imagenet", bare).startswith("open_clip IMAGENET_CLASSNAMES (built-in")


def test_broken_coop_classnames_txt_is_an_error_naming_the_file(tmp_path):
    from pomp.data.suite_layouts import load_test_set

    root = _imagenets(tmp_path / "DATA")
    path = root / "imagenet/classnames.txt"
    coop_classnames_txt(path)
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))  # the last synset dropped
    with pytest.raises(ValueError, match=f"{path}: no name for 1 synsets of imagenet"):
        load_test_set("imagenet", root)
    with pytest.raises(ValueError, match="expected the 1000 ImageNet-1K synsets"):
        load_test_set("imagenetv2", root)


def test_benchmark_records_names_source_and_hash(backbone, tiny_config, tmp_path):
    from pomp.cli import main

    with_file = _imagenets(tmp_path / "DATA")
    coop = coop_classnames_txt(with_file / "imagenet/classnames.txt")
    bare = _imagenets(tmp_path / "BARE")
    prompt = _save_prompt(backbone, tmp_path / "p.safetensors")
    for root, out in ((with_file, tmp_path / "a"), (bare, tmp_path / "b")):
        assert main(["benchmark", "--suite", "domain-generalization", "--data-root", str(root), "--prompt", prompt,
                     "--baseline", "dataset", "--backbone", tiny_config, "--out-dir", str(out),
                     "--num-workers", "0", "--no-progress"]) == 0
    rec = json.loads((tmp_path / "a/imagenet__prompt_p.safetensors.json").read_text())
    assert rec["classnames"] == {"count": 1000, "sha256": sha256_of_lines(coop), "file": "imagenet__classnames.txt",
                                 "source": f"CoOp classnames.txt: {with_file / 'imagenet/classnames.txt'}"}
    sidecar = (tmp_path / "a/imagenet__classnames.txt").read_bytes()
    assert hashlib.sha256(sidecar).hexdigest() == rec["classnames"]["sha256"]  # `sha256sum` reproduces it
    assert sidecar.decode().splitlines()[744] == "projectile"
    bare_rec = json.loads((tmp_path / "b/imagenet__prompt_p.safetensors.json").read_text())
    assert bare_rec["classnames"]["sha256"] == sha256_of_lines(list(IMAGENET_CLASSNAMES))
    assert bare_rec["classnames"]["source"].startswith("open_clip IMAGENET_CLASSNAMES (built-in")
    # the same vocabulary, hashed the same by another prompt/baseline and by the variants sharing it
    base = json.loads((tmp_path / "a/imagenet__baseline_dataset.json").read_text())
    sketch = json.loads((tmp_path / "a/imagenet_sketch__baseline_dataset.json").read_text())
    assert base["classnames"]["sha256"] == sketch["classnames"]["sha256"] == rec["classnames"]["sha256"]
    r = json.loads((tmp_path / "a/imagenet_r__baseline_dataset.json").read_text())
    assert r["classnames"]["sha256"] == sha256_of_lines([dict(zip(IN1K, coop))[w] for w in IN_R])
    assert base["templates"] == ["a photo of a {}."]
    assert base["templates_source"] == "CoOp trainers/zsclip.py CUSTOM_TEMPLATES['ImageNet']"


def test_names_hash_is_unicode_normalised(backbone, tiny_config, tmp_path):
    from pomp.cli import main

    root = tmp_path / "DATA"
    _split(root / "dtd", "split_zhou_DescribableTextures.json", "images",
           [("a/1.jpg", 0, "cafe\u0301"), ("b/1.jpg", 1, "lined_paper")])  # NFD "café", an underscore
    assert main(["eval", "--data", str(root / "dtd/split_zhou_DescribableTextures.json"), "--image-root",
                 str(root / "dtd/images"), "--baseline", "single", "--backbone", tiny_config,
                 "--out-dir", str(tmp_path / "out"), "--num-workers", "0"]) == 0
    rec = json.loads((tmp_path / "out/split_zhou_DescribableTextures__baseline_single.json").read_text())
    assert rec["classnames"]["sha256"] == sha256_of_lines(["caf\u00e9", "lined paper"])
    assert rec["classnames"]["source"].startswith("split file ")


# --- the per-dataset template baseline -------------------------------------------------------------
def open_clip_classifier(backbone, names: list[str], template: str) -> torch.Tensor:
    """Independent route: open_clip's own tokenizer and encode_text on the formatted texts, normalised."""
    texts = [template.format(n.replace("_", " ")) for n in names]
    with torch.no_grad():
        return F.normalize(backbone.model.encode_text(backbone.tokenizer(texts)).float(), dim=-1)


@pytest.mark.parametrize("key", sorted(COOP_TEMPLATES))
def test_dataset_baseline_equals_open_clip_with_coop_templates(backbone, key):
    from pomp.evaluate import baseline_templates

    names = ["Annual Crop Land", "abyssinian", "707-320", "Apply_Eye_Makeup"]
    ours = build_classifier(backbone, names, baseline="dataset", dataset=key)
    torch.testing.assert_close(ours, open_clip_classifier(backbone, names, COOP_TEMPLATES[key]), atol=2e-6, rtol=0)
    assert baseline_templates("dataset", key)[0] == [COOP_TEMPLATES[key]]


def test_dataset_baseline_by_coop_name_split_file_or_fallback(backbone):
    from pomp.evaluate import baseline_templates

    assert baseline_templates("dataset", "split_zhou_OxfordPets") == (
        ["a photo of a {}, a type of pet."], "CoOp trainers/zsclip.py CUSTOM_TEMPLATES['OxfordPets']")
    assert baseline_templates("dataset", "EuroSAT")[0] == ["a centered satellite photo of {}."]
    assert baseline_templates("dataset", "imagenet21k_p") == (
        ["a photo of a {}."], "POMP trainers/zsclip.py CUSTOM_TEMPLATES['ImageNet21K']")
    templates, source = baseline_templates("dataset", "my_photos")
    assert templates == ["a photo of a {}."] and source.startswith("fallback: no CoOp template for dataset 'my_photos'")
    names = ["cat", "dog"]
    torch.testing.assert_close(build_classifier(backbone, names, baseline="dataset", dataset="my_photos"),
                               open_clip_classifier(backbone, names, "a photo of a {}."), atol=2e-6, rtol=0)


def test_benchmark_dataset_baseline_beside_the_paper_clip_row(backbone, tiny_config, tmp_path):
    from pomp.cli import main
    from pomp.paper_results import PAPER_RESULTS

    root = make_fake_benchmarks(tmp_path / "DATA", skip=("imagenet", "imagenetv2", "imagenet_sketch", "imagenet_a",
                                                         "imagenet_r", "imagenet21k_p"))
    out = tmp_path / "bench"
    assert main(["benchmark", "--suite", "cross-dataset", "--data-root", str(root), "--baseline", "dataset",
                 "--baseline", "single", "--backbone", tiny_config, "--out-dir", str(out),
                 "--num-workers", "0", "--no-progress"]) == 0
    for key in ("oxford_pets", "eurosat", "dtd", "ucf101", "fgvc_aircraft", "food101", "caltech101"):
        rec = json.loads((out / f"{key}__baseline_dataset.json").read_text())
        assert rec["templates"] == [COOP_TEMPLATES[key]], key
        single = json.loads((out / f"{key}__baseline_single.json").read_text())
        assert single["templates"] == ["a photo of a {}."]
    rows = {line.split(",")[0]: line.split(",") for line in (out / "benchmark.csv").read_text().splitlines()}
    delta = dict(zip(rows["method"], rows["baseline:dataset - paper CLIP"]))
    acc = 100 * json.loads((out / "eurosat__baseline_dataset.json").read_text())["metrics"]["acc1"]
    assert float(delta["eurosat"]) == pytest.approx(acc - PAPER_RESULTS["CLIP"]["eurosat"], abs=0.005)
    assert "baseline:single - paper CLIP" not in rows and "baseline:single - paper POMP" not in rows


def test_eval_dataset_baseline_falls_back_and_says_so(backbone, class_folders, tiny_config, tmp_path, capsys):
    from pomp.cli import main

    out = tmp_path / "eval"
    assert main(["eval", "--data", str(class_folders / "images"), "--names", str(class_folders / "names.txt"),
                 "--baseline", "dataset", "--baseline", "single", "--baseline", "ensemble", "--backbone", tiny_config,
                 "--out-dir", str(out), "--num-workers", "0"]) == 0
    assert "note: images: baseline:dataset: fallback: no CoOp template for dataset 'images'" in capsys.readouterr().out
    fallback = json.loads((out / "images__baseline_dataset.json").read_text())
    single = json.loads((out / "images__baseline_single.json").read_text())
    assert fallback["templates"] == ["a photo of a {}."] and fallback["templates_source"].startswith("fallback")
    assert fallback["metrics"] == single["metrics"]
    ensemble = json.loads((out / "images__baseline_ensemble.json").read_text())
    assert len(ensemble["templates"]) == 80 and ensemble["templates"][0] == "a bad photo of a {}."
    assert fallback["classnames"]["source"] == f"names {class_folders / 'names.txt'}"


# --- MIIL's tree and pomp data check-names ---------------------------------------------------------------
def miil_tree(path: Path, numpy1_names: bool = False) -> dict:
    """A tree dict laid out as MIIL's imagenet21k_miil_tree.pth (class_list, child_2_parent, class_tree_list of
    numpy integers, class_description with underscores), written with torch.save. Differences from timm's first
    lemmas are planted: one in case, one in wording; one synset missing, one extra."""
    wnids = imagenet21k.synsets("imagenet21k-p")
    lemmas = dict(zip(wnids, imagenet21k.classnames("imagenet21k-p")))
    description = {w: lemmas[w].replace(" ", "_") for w in wnids}
    description[wnids[10]] = description[wnids[10]].upper()
    description[wnids[20]] = "something_else"
    del description[wnids[30]]
    description["n99999999"] = "not_in_timm"
    listed = list(description)
    tree = {
        "class_list": np.array(listed),
        "child_2_parent": {w: listed[0] for w in listed[1:]},
        "class_tree_list": [[np.int64(i), np.int64(0)] for i in range(len(listed))],
        "class_description": description,
    }
    buffer = io.BytesIO()
    torch.save(tree, buffer)
    data = buffer.getvalue()
    if numpy1_names:  # as numpy 1.x pickled it (MIIL's file predates numpy 2's numpy._core)
        source, rewritten = zipfile.ZipFile(io.BytesIO(data)), io.BytesIO()
        with zipfile.ZipFile(rewritten, "w", zipfile.ZIP_STORED) as target:
            for name in source.namelist():
                entry = source.read(name)
                if name.endswith("data.pkl"):
                    assert b"numpy._core.multiarray" in entry
                    entry = entry.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
                target.writestr(name, entry)
        data = rewritten.getvalue()
    path.write_bytes(data)
    return tree


@pytest.mark.parametrize("numpy1_names", [False, True])
def test_check_names_against_a_miil_tree(tmp_path, capsys, numpy1_names):
    from pomp.cli import main

    miil_tree(tmp_path / "imagenet21k_miil_tree.pth", numpy1_names)
    wnids = imagenet21k.synsets("imagenet21k-p")
    lemmas = imagenet21k.classnames("imagenet21k-p")
    out = tmp_path / "check"
    assert main(["data", "check-names", "--tree", str(tmp_path / "imagenet21k_miil_tree.pth"),
                 "--out-dir", str(out)]) == 0
    line = capsys.readouterr().out.splitlines()[0]
    assert line == ("check-names: 10449 synsets compared: 10447 equal, 1 differ only in case, 1 differ; "
                    "1 missing from the tree, 1 only in the tree; same order: no")
    report = json.loads((out / "names_check.json").read_text())
    assert report["missing_in_tree"] == [wnids[30]] and report["extra_in_tree"] == ["n99999999"]
    assert report["differences"] == [
        {"index": 10, "wnid": wnids[10], "pomp": lemmas[10], "miil": lemmas[10].upper(), "kind": "case"},
        {"index": 20, "wnid": wnids[20], "pomp": lemmas[20], "miil": "something else", "kind": "different"}]
    table = (out / "names_check.tsv").read_text().splitlines()
    assert table[0] == "index\twnid\tkind\tpomp\tmiil"
    assert table[2] == f"20\t{wnids[20]}\tdifferent\t{lemmas[20]}\tsomething else"


def test_check_names_refuses_a_tree_that_would_run_code(tmp_path, capsys):
    from pomp.cli import main

    class RunsCode:
        def __reduce__(self):
            return (print, ("this must never be printed",))

    path = tmp_path / "imagenet21k_miil_tree.pth"
    torch.save({"class_description": {"n0": "x"}, "extra": RunsCode()}, path)
    out = tmp_path / "check"
    assert main(["data", "check-names", "--tree", str(path), "--out-dir", str(out)]) == 2
    captured = capsys.readouterr()
    assert "this must never be printed" not in captured.out + captured.err
    assert captured.err.startswith(f"pomp data: error: {path}: refused: it holds print") and captured.err.count("\n") == 1
    assert not out.exists()
