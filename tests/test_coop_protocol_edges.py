"""Edge cases of the CoOp/POMP scoring protocol (ties, names, result records), each checked against an
independent computation:

- repeated names tie EXACTLY only if their rows are computed once: the same text encoded in another
  chunk, or the same map upsampled at another channel position, rounds differently; references are
  numpy's argmax (first maximal index) and softmax on the distinct vocabulary with its columns copied;
- pre-training's validation, `pomp embed` and segmentation on ImageNet-21K-P's real repeated lemmas;
- every result file (eval, benchmark, segment, detect) names its vocabulary by the same sha256 computed
  here, and eval keeps datasets that share a folder name (CoOp's layout has several `images/`) apart;
- MIIL's tree written with torch.save holding numpy types of any dtype, and refusals that name the
  offending object in our words (no library advice).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from test_coop_protocol import sha256_of_lines
from test_dense import _StubBackbone

from pomp.data import imagenet21k


def repeated_groups(names: list[str]) -> list[list[int]]:
    groups: dict[str, list[int]] = {}
    for i, name in enumerate(names):
        groups.setdefault(name, []).append(i)
    return [ids for ids in groups.values() if len(ids) > 1]


# --- segmentation: upsampling the same map at another channel rounds differently --------------------
class RandomDense(_StubBackbone):
    """Dense features drawn once: a [1, 3, 7, 9] map, the same for every input."""

    def __init__(self, seed: int):
        super().__init__()
        self.map = torch.randn(1, 3, 7, 9, generator=torch.Generator().manual_seed(seed))

    def encode_dense_features(self, pixels):
        return self.map.expand(pixels.shape[0], -1, -1, -1)


def reference_upsampled(dense: torch.Tensor, distinct: torch.Tensor, size) -> np.ndarray:
    """Cosines of the distinct classes `[U, H, W]`, upsampled in one call (the reference never sees a copy)."""
    cos = torch.einsum("dhw,ud->uhw", F.normalize(dense[0], dim=0), F.normalize(distinct, dim=-1))
    return F.interpolate(cos[None], size=size, mode="bilinear", align_corners=False)[0].numpy()


@pytest.mark.parametrize("class_chunk", [1, 8, 32])
def test_segmentation_repeated_classes_on_varying_maps_go_to_the_first(class_chunk):
    from pomp.dense.segment import predict_segmentation

    g = torch.Generator().manual_seed(0)
    distinct = F.normalize(torch.randn(12, 3, generator=g), dim=-1)
    # 20 classes: 12 distinct, then 1, 2, 3, 5 twice. torch's CPU bilinear upsampling runs channels 8 at a
    # time and the rest one by one, so copies at 16-19 (or in a chunk of 4) round unlike their originals
    order = list(range(12)) + [1, 2, 3, 5, 1, 2, 3, 5]
    classifier = distinct[order]
    size = (37, 53)
    for seed in range(6):
        stub = RandomDense(seed)
        labels = predict_segmentation(stub, torch.zeros(3, 8, 8), classifier, size, class_chunk=class_chunk).numpy()
        reference = reference_upsampled(stub.map, distinct, size)
        expected = np.array([order.index(u) for u in range(12)])[np.argmax(reference, axis=0)]
        np.testing.assert_array_equal(labels, expected)
        assert (labels < 12).all()


def test_segmentation_background_threshold_counts_each_repeated_class():
    from pomp.dense.segment import predict_segmentation

    g = torch.Generator().manual_seed(1)
    distinct = F.normalize(torch.randn(5, 3, generator=g), dim=-1)
    order = [0, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2, 3, 4, 1, 2]  # class 0 is "background"; 5-18 repeat 1-4
    classifier = distinct[order]
    stub, size, scale = RandomDense(7), (29, 31), 10.0
    competing = list(range(1, 19))
    upsampled = reference_upsampled(stub.map, distinct, size)[[order[c] for c in competing]]  # copies, by hand
    logits = scale * upsampled
    probs = np.exp(logits - logits.max(axis=0)) / np.exp(logits - logits.max(axis=0)).sum(axis=0)
    best = np.array(competing)[np.argmax(upsampled, axis=0)]
    threshold = float(np.median(probs.max(axis=0)))  # about half the pixels become background
    expected = np.where(probs.max(axis=0) < threshold, 0, best)
    for class_chunk in (1, 8, 32):
        labels = predict_segmentation(stub, torch.zeros(3, 8, 8), classifier, size, background=0,
                                      bg_threshold=threshold, logit_scale=scale, class_chunk=class_chunk).numpy()
        near = np.isclose(probs.max(axis=0), threshold, rtol=0, atol=1e-6)  # rounding may flip these
        np.testing.assert_array_equal(labels[~near], expected[~near])
        assert 0.3 < (labels == 0).mean() < 0.7 and (labels < 5).all()


def test_distinct_classes_against_numpy_unique():
    from pomp.ranking import distinct_classes

    g = torch.Generator().manual_seed(2)
    classifier = torch.randint(0, 3, (40, 2), generator=g).float()  # 9 possible rows over 40 classes
    first, inverse = distinct_classes(classifier)
    _, index, back = np.unique(classifier.numpy(), axis=0, return_index=True, return_inverse=True)
    assert first.tolist() == sorted(index.tolist())  # the lowest index of each distinct row, ascending
    assert torch.equal(classifier[first][inverse], classifier)
    np.testing.assert_array_equal(first[inverse].numpy(), index[back.ravel()])  # each class -> its row's first


# --- repeated names must get identical rows wherever a classifier is built ---------------------------
IN21K_NAMES = imagenet21k.classnames("imagenet21k-p")  # 10,450 first lemmas; 1,415 classes repeat a name


def _assert_repeats_identical(features: torch.Tensor, names: list[str]) -> None:
    groups = repeated_groups(names)
    assert len(groups) == 661
    unequal = [ids for ids in groups if not all(torch.equal(features[ids[0]], features[j]) for j in ids[1:])]
    assert unequal == [], [names[ids[0]] for ids in unequal[:5]]


def test_validation_classifier_ties_repeated_imagenet21k_names(backbone):
    # pre-training validates on its ClassTokens vocabulary in chunks of 2,048 classes sorted by length:
    # the same name in two chunks (cut at different lengths) came out 1e-7 apart
    from pomp.evaluate import prompt_classifier
    from pomp.prompt import Prompt

    prompt = Prompt.init(backbone, n_ctx=4, seed=0)
    vocab = prompt.tokenize_classes(backbone, IN21K_NAMES)
    features = prompt_classifier(prompt, backbone, vocab, chunk_size=2048)
    _assert_repeats_identical(features, IN21K_NAMES)
    reference = prompt.encode_class_features(backbone, vocab, chunk_size=None)  # one batch: no chunk boundary
    torch.testing.assert_close(features, reference.float(), atol=1e-6, rtol=0)


def test_embed_gives_repeated_names_identical_rows(backbone, tiny_config, tmp_path):
    from pomp.cli import main
    from pomp.prompt import Prompt

    prompt = Prompt.init(backbone, n_ctx=4, seed=0)
    prompt.save(tmp_path / "p.safetensors")
    classes = tmp_path / "classes.txt"  # as a Windows editor saves it: BOM, CRLF
    classes.write_bytes(("\ufeff" + "\r\n".join(IN21K_NAMES) + "\r\n").encode("utf-8"))
    out = tmp_path / "embed"
    assert main(["embed", "--backbone", tiny_config, "--prompt", str(tmp_path / "p.safetensors"),
                 "--classes", str(classes), "--out-dir", str(out)]) == 0
    rows = torch.from_numpy(np.load(out / "class_embeddings.npy"))
    _assert_repeats_identical(rows, IN21K_NAMES)
    with torch.no_grad():
        reference = prompt.encode_class_features(backbone, IN21K_NAMES, chunk_size=None).float()
    torch.testing.assert_close(rows, reference, atol=1e-6, rtol=0)


# --- one vocabulary, one hash, in every result file ------------------------------------------------
def test_every_command_records_the_same_hash_for_the_same_vocabulary(tiny_config, tmp_path):
    pytest.importorskip("pycocotools")
    from pomp.cli import main
    from pomp.dense.scenes import make_scenes
    from pomp.data.synthetic import make_class_folders

    scenes = make_scenes(tmp_path / "scenes", num_images=2, size=48, seed=3, source="shapes")
    names = (scenes / "classes.txt").read_text().splitlines()
    assert names == ["background", "red circle", "green square", "blue triangle"]
    gt = json.loads((scenes / "annotations.json").read_text())
    for category in gt["categories"]:  # LVIS spells names with underscores
        category["name"] = category["name"].replace(" ", "_")
    (scenes / "annotations_lvis_style.json").write_text(json.dumps(gt))
    folders = make_class_folders(tmp_path / "cls", num_classes=4, per_class=2)
    folder_names = (folders / "names.txt").read_text().splitlines()
    (folders / "names.txt").write_text("".join(f"{line.split(chr(9))[0]}\t{name}\n"
                                               for line, name in zip(folder_names, names)))

    common = ["--backbone", tiny_config, "--baseline", "single"]
    assert main(["eval", "--data", str(folders / "images"), "--names", str(folders / "names.txt"),
                 "--out-dir", str(tmp_path / "eval"), "--num-workers", "0", *common]) == 0
    assert main(["segment", "--data", str(scenes), "--size", "32", "--overlays", "0",
                 "--out-dir", str(tmp_path / "seg"), *common]) == 0
    assert main(["detect", "--annotations", str(scenes / "annotations_lvis_style.json"),
                 "--images", str(scenes / "JPEGImages"), "--size", "32", "--out-dir", str(tmp_path / "det"),
                 *common]) == 0
    evaluated = json.loads((tmp_path / "eval/images__baseline_single.json").read_text())["classnames"]
    segmented = json.loads((tmp_path / "seg/baseline_single/metrics.json").read_text())
    detected = json.loads((tmp_path / "det/baseline_single/metrics.json").read_text())
    assert evaluated["sha256"] == segmented["classnames"]["sha256"] == sha256_of_lines(names)
    assert detected["classnames"]["sha256"] == sha256_of_lines(names[1:])  # underscores scored as spaces
    assert segmented["classnames"]["source"] == f"class list {scenes / 'classes.txt'}"
    assert detected["classnames"]["source"] == f"categories of {scenes / 'annotations_lvis_style.json'}"
    for record, out in ((segmented, tmp_path / "seg/baseline_single"), (detected, tmp_path / "det/baseline_single")):
        assert record["classnames"]["count"] == len((out / record["classnames"]["file"]).read_text().splitlines())
        sidecar = (out / record["classnames"]["file"]).read_bytes()
        assert hashlib.sha256(sidecar).hexdigest() == record["classnames"]["sha256"]  # `sha256sum` agrees
        assert record["templates"] == ["a photo of a {}."]


# --- pomp eval on CoOp's layout: several datasets keep their images in a folder named images/ --------
def test_eval_keeps_datasets_with_the_same_folder_name_apart(tiny_config, tmp_path):
    from test_benchmark_suite import make_fake_benchmarks

    from pomp.cli import main

    root = make_fake_benchmarks(tmp_path / "DATA", skip=(
        "imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "fgvc_aircraft", "sun397", "dtd",
        "eurosat", "ucf101", "imagenetv2", "imagenet_a", "imagenet_r", "imagenet21k_p"))
    sketch, food = root / "imagenet-sketch/images", root / "food-101/images"  # both class-folder roots
    out = tmp_path / "eval"
    common = ["--baseline", "single", "--backbone", tiny_config, "--out-dir", str(out), "--num-workers", "0",
              "--feature-cache", str(tmp_path / "cache")]
    # the same data twice is a mistake, refused in one line before anything is written
    assert main(["eval", "--data", str(sketch), "--data", str(food), "--data", str(food), *common]) == 2
    assert not out.exists()
    assert main(["eval", "--data", str(sketch), "--data", str(food), *common]) == 0
    records = {p.name: json.loads(p.read_text()) for p in out.glob("*__baseline_single.json")}
    assert sorted(records) == ["food-101_images__baseline_single.json", "imagenet-sketch_images__baseline_single.json"]
    by_folder = {"imagenet-sketch_images": sketch, "food-101_images": food}
    for name, folder in by_folder.items():
        record = records[f"{name}__baseline_single.json"]
        assert record["dataset"] == name
        classes = sorted(p.name for p in folder.iterdir())  # folder names are the class names here
        assert record["classnames"]["sha256"] == sha256_of_lines([c.replace("_", " ") for c in classes])
        assert (out / record["classnames"]["file"]).read_text().splitlines() == [c.replace("_", " ") for c in classes]
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == "prompt,imagenet-sketch_images,food-101_images,average"


# --- MIIL's tree: numpy data of any dtype reads; anything else is refused in our words ---------------
def _saved(path: Path, tree: dict) -> Path:
    torch.save(tree, path)
    return path


def test_miil_tree_with_numpy_data_of_any_dtype(tmp_path):
    from pomp.data.miil_tree import compare_with_tree, read_miil_tree

    wnids = np.array(["n00005787", "n00006484", "n00007846"])  # class_list as an array: keys become np.str_
    tree = {
        "class_list": wnids,
        "child_2_parent": {wnids[1]: wnids[0], wnids[2]: wnids[0]},
        "class_tree_list": np.array([[0], [1, 0], [2, 0]], dtype=object),  # ragged rows: an object array
        "class_description": {w: np.str_(d) for w, d in zip(wnids, ["benthos", "Cell", "Homo_sapiens"])},
        "depth": np.array([0, 1, 1], dtype=np.int16), "weight": np.float16(0.5), "mask": np.array([True, False]),
        "scores": np.array([0.25], dtype=np.float32), "offset": np.uint8(3),
    }
    for legacy in (False, True):
        path = tmp_path / f"tree{int(legacy)}.pth"
        torch.save(tree, path, _use_new_zipfile_serialization=not legacy)
        read = read_miil_tree(path)
        assert [list(map(int, row)) for row in read["class_tree_list"]] == [[0], [1, 0], [2, 0]]
        assert read["depth"].dtype == np.int16 and float(read["weight"]) == 0.5
        report = compare_with_tree({"n00005787": "benthos", "n00006484": "cell", "n00007846": "Homo sapiens"}, read)
        assert (report["equal"], report["case_only"], report["different"], report["same_order"]) == (2, 1, 0, True)


@pytest.mark.parametrize("kind", ["code", "class", "text", "truncated"])
def test_check_names_refusals_are_one_line_in_our_words(tmp_path, capsys, kind):
    import argparse

    from pomp.cli import main

    class RunsCode:
        def __reduce__(self):
            return (print, ("this must never be printed",))

    path = tmp_path / "imagenet21k_miil_tree.pth"
    if kind == "code":
        _saved(path, {"class_description": {"n0": "x"}, "extra": RunsCode()})
    elif kind == "class":  # an object of a class that is not data
        _saved(path, {"class_description": {"n0": "x"}, "args": argparse.Namespace(lr=0.002)})
    elif kind == "text":
        path.write_text("n00005787\tbenthos\n")
    else:
        _saved(path, {"class_description": {"n0": "x"}})
        path.write_bytes(path.read_bytes()[:200])
    assert main(["data", "check-names", "--tree", str(path), "--out-dir", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    assert "this must never be printed" not in captured.out + captured.err
    assert captured.err.startswith(f"pomp data: error: {path}: ") and captured.err.count("\n") == 1
    for advice in ("weights_only=", "Re-running", "torch.load", "add_safe_globals", "file an issue", "miniz", "\x1b"):
        assert advice not in captured.err, captured.err
    expected = {"code": "it holds print, which is not data", "class": "it holds argparse.Namespace, which is not data",
                "text": "not a file saved by torch.save", "truncated": "not a file saved by torch.save"}[kind]
    assert expected in captured.err, captured.err
    assert not (tmp_path / "out").exists()


def _datadings_imagenet21k() -> dict:
    """MIIL's winter-21 tree as datadings ships it: its ImageNet21k_create_meta.py loads MIIL's
    imagenet21k_miil_tree.pth, keeps class_description and class_tree_list (numpy ints made Python
    ints) and stores them as JSON. Read as data; datadings itself is not imported."""
    import importlib.util
    import lzma

    spec = importlib.util.find_spec("datadings")
    if spec is None or spec.origin is None:
        pytest.skip("datadings (test extra) is not installed")
    path = Path(spec.origin).parent / "sets" / "ImageNet21k_synsets.json.xz"
    with lzma.open(path, "rt", encoding="utf-8") as f:
        return json.load(f)


def test_pomp_names_equal_miils_class_description_for_all_10450(tmp_path, capsys):
    """The issue's open question, settled on MIIL's own names: POMP's class names (MIIL's
    class_description, `_` -> space) are timm's first lemmas, all 10,450, in the same order."""
    from pomp.cli import main

    meta = _datadings_imagenet21k()
    description = meta["class_description"]
    wnids = list(description)
    tree = {  # laid out as MIIL's file: numpy integers in class_tree_list, class_list as an array
        "class_list": np.array(wnids),
        "child_2_parent": {wnids[row[0]]: wnids[row[1]] for row in meta["class_tree_list"] if len(row) > 1},
        "class_tree_list": [[np.int64(v) for v in row] for row in meta["class_tree_list"]],
        "class_description": description,
    }
    path = _saved(tmp_path / "imagenet21k_miil_tree.pth", tree)
    assert main(["data", "check-names", "--tree", str(path), "--out-dir", str(tmp_path / "check")]) == 0
    assert capsys.readouterr().out.splitlines()[0] == (
        "check-names: 10450 synsets compared: 10450 equal, 0 differ only in case, 0 differ; "
        "0 missing from the tree, 0 only in the tree; same order: yes")
    assert [description[w].replace("_", " ") for w in imagenet21k.synsets("imagenet21k-p")] == IN21K_NAMES
    assert sum(len(ids) for ids in repeated_groups(IN21K_NAMES)) == 1415  # classes whose name another shares


def test_aircraft_lists_saved_by_a_windows_editor(tmp_path):
    """FGVC-Aircraft's variants.txt and images_variant_test.txt with a BOM and CRLF read as the originals."""
    from test_benchmark_suite import ALL_KEYS, make_fake_benchmarks

    from pomp.data.suite_layouts import load_test_set

    root = make_fake_benchmarks(tmp_path / "DATA", skip=tuple(k for k in ALL_KEYS if k != "fgvc_aircraft"))
    base = root / "fgvc_aircraft"
    for name in ("variants.txt", "images_variant_test.txt"):
        text = (base / name).read_text(encoding="utf-8")
        (base / name).write_bytes(("\ufeff" + text.replace("\n", "\r\n")).encode("utf-8"))
    images = load_test_set("fgvc_aircraft", root)
    assert images.classnames == ["707-320", "727-200", "F-16A/B"]  # variants.txt as written by make_fake_benchmarks
    assert images.samples == [("1514522.jpg", 0), ("0062781.jpg", 2), ("1552351.jpg", 1)]


def test_eval_two_copies_of_a_coop_split_keep_their_dataset_template(tiny_config, tmp_path):
    from test_benchmark_suite import _split

    from pomp.cli import main

    entries = [("banded/banded_0001.jpg", 0, "banded"), ("lined/lined_0001.jpg", 1, "lined")]
    for copy in ("dtd", "dtd_copy"):
        _split(tmp_path / copy, "split_zhou_DescribableTextures.json", "images", entries)
    out = tmp_path / "eval"
    args = ["eval", "--baseline", "dataset", "--backbone", tiny_config, "--out-dir", str(out), "--num-workers", "0"]
    for copy in ("dtd", "dtd_copy"):
        args += ["--data", str(tmp_path / copy / "split_zhou_DescribableTextures.json")]
    args += ["--image-root", str(tmp_path / "dtd" / "images")]
    assert main(args) == 0
    for label in ("dtd_split_zhou_DescribableTextures", "dtd_copy_split_zhou_DescribableTextures"):
        record = json.loads((out / f"{label}__baseline_dataset.json").read_text())
        assert record["templates"] == ["{} texture."]  # CoOp's DescribableTextures template, by the file's name
        assert record["classnames"]["sha256"] == sha256_of_lines(["banded", "lined"])


def test_eval_on_an_imagenet_folder_without_names_says_how_to_name_it(tiny_config, tmp_path, capsys):
    from test_benchmark_suite import ALL_KEYS, make_fake_benchmarks

    from pomp.cli import main

    root = make_fake_benchmarks(tmp_path / "DATA", skip=tuple(k for k in ALL_KEYS if k != "imagenet"))
    val = root / "imagenet/images/val"
    assert main(["eval", "--data", str(val), "--baseline", "single", "--backbone", tiny_config,
                 "--out-dir", str(tmp_path / "eval"), "--num-workers", "0"]) == 0
    out = capsys.readouterr().out
    assert "note: val: the class names are WordNet ids (e.g. 'n01440764'): give --names" in out
