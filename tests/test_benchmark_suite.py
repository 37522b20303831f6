"""`pomp benchmark`: dataset layouts (tiny fake copies written from CoOp's DATASETS.md facts, spelled
out here independently of pomp.data.suite_layouts), missing datasets, feature cache reuse, the table
and its averages against the paper's."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from pomp.data import imagenet21k

IN1K = imagenet21k.synsets("imagenet1k")
IN_A = imagenet21k.synsets("imagenet-a")
IN_R = imagenet21k.synsets("imagenet-r")
IN21K = imagenet21k.synsets("imagenet21k-p")
ALL_KEYS = ["imagenet", "caltech101", "oxford_pets", "stanford_cars", "oxford_flowers", "food101", "fgvc_aircraft",
            "sun397", "dtd", "eurosat", "ucf101", "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r",
            "imagenet21k_p"]

_rng = np.random.default_rng(0)


def _image(path: Path) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)).save(
        path, format="PNG" if path.suffix.lower() == ".png" else "JPEG")
    return path.name


def _split(dataset_dir: Path, split_name: str, image_dir: str, entries: list[tuple[str, int, str]]) -> None:
    """A CoOp split file; test entries are written as images, train/val reuse them (never read)."""
    for rel, _, _ in entries:
        _image(dataset_dir / image_dir / rel)
    data = {"train": [list(e) for e in entries], "val": [list(e) for e in entries[:1]],
            "test": [list(e) for e in entries]}
    (dataset_dir / split_name).write_text(json.dumps(data))


def make_fake_benchmarks(root: Path, skip: tuple[str, ...] = ()) -> Path:
    """Every benchmark dataset, a few classes with one image each, in CoOp's on-disk layout."""
    def want(key):
        return key not in skip

    if want("imagenet"):
        for w in IN1K[:3]:
            _image(root / "imagenet/images/val" / w / f"ILSVRC2012_val_{w}.JPEG")
    if want("caltech101"):
        _split(root / "caltech-101", "split_zhou_Caltech101.json", "101_ObjectCategories",
               [("accordion/image_0001.jpg", 0, "accordion"), ("airplanes/image_0001.jpg", 1, "airplane"),
                ("anchor/image_0001.jpg", 2, "anchor")])
    if want("oxford_pets"):
        _split(root / "oxford_pets", "split_zhou_OxfordPets.json", "images",
               [("Abyssinian_1.jpg", 0, "abyssinian"), ("american_bulldog_10.jpg", 1, "american_bulldog"),
                ("Bengal_1.jpg", 2, "bengal")])
    if want("stanford_cars"):  # image paths relative to stanford_cars/ itself
        _split(root / "stanford_cars", "split_zhou_StanfordCars.json", ".",
               [("cars_test/00001.jpg", 0, "2012 AM General Hummer SUV"),
                ("cars_test/00002.jpg", 1, "2012 Acura RL Sedan")])
    if want("oxford_flowers"):
        _split(root / "oxford_flowers", "split_zhou_OxfordFlowers.json", "jpg",
               [("image_06734.jpg", 0, "pink primrose"), ("image_06735.jpg", 1, "hard-leaved pocket orchid")])
    if want("food101"):
        _split(root / "food-101", "split_zhou_Food101.json", "images",
               [("apple_pie/1005649.jpg", 0, "apple_pie"), ("baby_back_ribs/1005293.jpg", 1, "baby_back_ribs")])
    if want("fgvc_aircraft"):
        base = root / "fgvc_aircraft"
        base.mkdir(parents=True)
        (base / "variants.txt").write_text("707-320\n727-200\nF-16A/B\n")
        (base / "images_variant_test.txt").write_text("1514522 707-320\n0062781 F-16A/B\n1552351 727-200\n")
        (base / "images_variant_train.txt").write_text("1514522 707-320\n")
        for image_id in ("1514522", "0062781", "1552351"):
            _image(base / "images" / f"{image_id}.jpg")
    if want("sun397"):
        _split(root / "sun397", "split_zhou_SUN397.json", "SUN397",
               [("a/abbey/sun_aaalbzqrimafwbiv.jpg", 0, "abbey"),
                ("a/apse/indoor/sun_aaqbgaxgqijxbuyp.jpg", 1, "indoor apse")])
    if want("dtd"):
        _split(root / "dtd", "split_zhou_DescribableTextures.json", "images",
               [("banded/banded_0002.jpg", 0, "banded"), ("blotchy/blotchy_0003.jpg", 1, "blotchy"),
                ("braided/braided_0050.jpg", 2, "braided")])
    if want("eurosat"):  # raw folder names in the split file: renamed as CoOp does
        _split(root / "eurosat", "split_zhou_EuroSAT.json", "2750",
               [("AnnualCrop/AnnualCrop_1.jpg", 0, "AnnualCrop"), ("Forest/Forest_1.jpg", 1, "Forest"),
                ("SeaLake/SeaLake_1.jpg", 2, "SeaLake")])
    if want("ucf101"):
        _split(root / "ucf101", "split_zhou_UCF101.json", "UCF-101-midframes",
               [("Apply_Eye_Makeup/v_ApplyEyeMakeup_g01_c01.jpg", 0, "Apply_Eye_Makeup"),
                ("Archery/v_Archery_g01_c01.jpg", 1, "Archery")])
    if want("imagenetv2"):
        for i in (0, 1, 999):
            _image(root / "imagenetv2/imagenetv2-matched-frequency-format-val" / str(i) / f"{i:03d}abc.jpeg")
    if want("imagenet_sketch"):
        for w in (IN1K[0], IN1K[500]):
            _image(root / "imagenet-sketch/images" / w / "sketch_1.JPEG")
    if want("imagenet_a"):
        (root / "imagenet-adversarial/imagenet-a").mkdir(parents=True)
        (root / "imagenet-adversarial/imagenet-a/README.txt").write_text("ImageNet-A\n")
        for w in (IN_A[0], IN_A[199]):
            _image(root / "imagenet-adversarial/imagenet-a" / w / "0.000116_digital clock _ digital clock_0.86.jpg")
    if want("imagenet_r"):
        for w in (IN_R[0], IN_R[100]):
            _image(root / "imagenet-rendition/imagenet-r" / w / "art_0.jpg")
    if want("imagenet21k_p"):
        for w in (IN21K[0], IN21K[5000], IN21K[-1]):
            _image(root / "imagenet21k_resized/imagenet21k_val" / w / f"{w}_1.JPEG")
    return root


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory) -> Path:
    return make_fake_benchmarks(tmp_path_factory.mktemp("bench") / "DATA")


# --- layouts and class lists -----------------------------------------------------------------------
def test_imagenet_classnames_follow_timm_synset_order():
    from open_clip.zero_shot_metadata import IMAGENET_CLASSNAMES

    lemmas = imagenet21k.synset_lemmas()
    assert len(IN1K) == len(IMAGENET_CLASSNAMES) == 1000 and IN1K == sorted(IN1K)
    for i, w, name in [(0, "n01440764", "tench"), (1, "n01443537", "goldfish"), (100, "n01860187", "black swan"),
                       (999, "n15075141", "toilet paper")]:
        assert IN1K[i] == w and IMAGENET_CLASSNAMES[i] == name and name in lemmas[w]
    # most CLIP names are (part of) a WordNet lemma of the synset at the same index
    agree = sum(IMAGENET_CLASSNAMES[i].lower() in lemmas[w].lower() for i, w in enumerate(IN1K))
    shifted = sum(IMAGENET_CLASSNAMES[i].lower() in lemmas[w].lower() for i, w in enumerate(IN1K[1:]))
    assert agree > 800 and shifted < 50  # CLIP renamed the rest (e.g. "tiger cat"); one off, nothing fits
    # timm's ImageNet-A/-R index lists agree with their synset lists
    info = Path(imagenet21k._info_dir())
    for which, subset in (("imagenet_a", IN_A), ("imagenet_r", IN_R)):
        indices = [int(x) for x in (info / f"{which}_indices.txt").read_text().split()]
        assert [IN1K[i] for i in indices] == subset and len(subset) == 200


def test_every_layout_reads(fake_root):
    from pomp.data.suite_layouts import LAYOUTS, load_test_set

    assert [layout.key for layout in LAYOUTS] == ALL_KEYS
    sets = {layout.key: load_test_set(layout, fake_root) for layout in LAYOUTS}
    assert sets["caltech101"].classnames == ["accordion", "airplane", "anchor"]
    assert sets["stanford_cars"].samples == [("cars_test/00001.jpg", 0), ("cars_test/00002.jpg", 1)]
    assert sets["eurosat"].classnames == ["Annual Crop Land", "Forest", "Sea or Lake"]
    assert sets["ucf101"].classnames == ["Apply Eye Makeup", "Archery"]
    assert sets["food101"].classnames == ["apple pie", "baby back ribs"]
    aircraft = sets["fgvc_aircraft"]
    assert aircraft.classnames == ["707-320", "727-200", "F-16A/B"]
    assert sorted(aircraft.samples) == [("0062781.jpg", 2), ("1514522.jpg", 0), ("1552351.jpg", 1)]
    imagenet = sets["imagenet"]
    assert len(imagenet.classnames) == 1000 and imagenet.classnames[:2] == ["tench", "goldfish"]
    assert [label for _, label in imagenet.samples] == [0, 1, 2]
    assert imagenet.skipped == {"classes_without_images": 997}
    assert sorted(label for _, label in sets["imagenetv2"].samples) == [0, 1, 999]
    assert sets["imagenetv2"].classnames == imagenet.classnames
    assert sorted(label for _, label in sets["imagenet_sketch"].samples) == [0, 500]
    for key, subset in (("imagenet_a", IN_A), ("imagenet_r", IN_R)):
        images = sets[key]
        assert len(images.classnames) == 200
        assert images.classnames == [imagenet.classnames[IN1K.index(w)] for w in subset]
    assert sorted(label for _, label in sets["imagenet_a"].samples) == [0, 199]
    in21k = sets["imagenet21k_p"]
    assert len(in21k.classnames) == 10450 and in21k.classnames == imagenet21k.classnames("imagenet21k-p")
    assert sorted(label for _, label in in21k.samples) == [0, 5000, 10449]


def test_unknown_class_folder_is_an_error(tmp_path):
    from pomp.data.suite_layouts import load_test_set

    _image(tmp_path / "imagenet-sketch/images/not_a_wnid/x.jpg")
    with pytest.raises(ValueError, match="not_a_wnid"):
        load_test_set("imagenet_sketch", tmp_path)


# --- metrics, table, paper averages ----------------------------------------------------------------
def test_chunked_metrics_equal_unchunked():
    from pomp.evaluate import zero_shot_metrics

    g = torch.Generator().manual_seed(0)
    feats = F.normalize(torch.randn(103, 2, 8, generator=g), dim=-1)
    labels = torch.randint(0, 7, (103,), generator=g)
    classifier = F.normalize(torch.randn(9, 8, generator=g), dim=-1)
    ours = zero_shot_metrics(feats.half(), labels, classifier, chunk_size=10)
    ref = zero_shot_metrics(feats.half().float(), labels, classifier, chunk_size=10_000)
    assert ours == pytest.approx(ref, abs=1e-6)


def test_paper_averages_match_the_paper():
    from pomp.paper_results import AVERAGES, PAPER_RESULTS, group_average

    assert len(AVERAGES["xd_avg"]) == 10 and "imagenet" not in AVERAGES["xd_avg"]
    pomp_row = PAPER_RESULTS["POMP"]
    assert [pomp_row[k] for k in AVERAGES["xd_avg"]] == [95.0, 89.5, 66.8, 72.4, 86.3, 25.6, 67.7, 46.2, 52.1, 68.5]
    assert group_average(pomp_row, "xd_avg") == pytest.approx(67.01)  # the paper prints 67.0
    assert group_average(PAPER_RESULTS["CLIP"], "dg_avg") == pytest.approx(57.2)
    assert group_average(pomp_row, "dg_avg") == pytest.approx(60.775)
    for method, row in PAPER_RESULTS.items():
        for group in AVERAGES:
            if group in row:
                # mean of entries rounded to 0.1 vs the paper's rounded mean: at most 0.05 + 0.05 apart
                assert abs(group_average(row, group) - row[group]) <= 0.1 + 1e-9, (method, group)


def test_table_averages_by_hand():
    from pomp.paper_results import CROSS_DATASET
    from pomp.suites import benchmark_rows, benchmark_table

    accs = [0.90, 0.80, 0.70, 0.60, 0.50, 0.40, 0.30, 0.20, 0.10, 0.05]  # mean 45.5 %
    records = [{"dataset": k, "prompt": "prompt:p", "metrics": {"acc1": a}} for k, a in zip(CROSS_DATASET, accs)]
    records += [{"dataset": "imagenet", "prompt": "prompt:p", "metrics": {"acc1": 0.99}},
                {"dataset": "imagenetv2", "prompt": "prompt:p", "metrics": {"acc1": 0.5}},
                {"dataset": "caltech101", "prompt": "baseline:single", "metrics": {"acc1": 0.25}}]
    datasets = ["imagenet", *CROSS_DATASET, "imagenetv2", "imagenet_sketch", "imagenet_a", "imagenet_r"]
    rows = {label: values for _, label, values in benchmark_rows(records, datasets)}
    md, csv_text = benchmark_table(records, datasets)
    lines = csv_text.strip().splitlines()
    header = lines[0].split(",")
    assert header == ["method", "imagenet", *CROSS_DATASET, "xd_avg", "imagenetv2", "imagenet_sketch", "imagenet_a",
                      "imagenet_r", "dg_avg"]
    col = {name: i - 1 for i, name in enumerate(header)}
    ours = rows["prompt:p"]
    assert ours[col["xd_avg"]] == pytest.approx(45.5)  # (90+80+...+5)/10, ImageNet not counted
    assert ours[col["dg_avg"]] is None  # only 1 of the 4 DG sets scored
    assert rows["baseline:single"][col["xd_avg"]] is None
    paper = rows["paper: POMP"]
    assert paper[col["xd_avg"]] == 67.0 and paper[col["dg_avg"]] == 60.8 and paper[col["imagenet"]] is None
    delta = rows["prompt:p - paper POMP"]
    assert delta[col["caltech101"]] == pytest.approx(90 - 95.0)
    assert delta[col["xd_avg"]] == pytest.approx(45.5 - 67.0)
    assert delta[col["imagenetv2"]] == pytest.approx(50 - 63.8)
    assert "baseline:single - paper POMP" not in rows
    by_label = {line.split(",")[0]: line.split(",") for line in lines[1:]}
    assert by_label["prompt:p"][1 + col["xd_avg"]] == "45.50"
    assert by_label["paper: CLIP"][1 + col["caltech101"]] == "93.3"
    assert by_label["prompt:p - paper POMP"][1 + col["xd_avg"]] == "-21.50"
    assert "| method | ImageNet | Caltech101 |" in md and "XD avg" in md and "DG avg" in md


# --- end to end ----------------------------------------------------------------------------------------
def _save_prompt(backbone, path: Path, seed: int) -> str:
    from pomp.prompt import Prompt

    Prompt.init(backbone, n_ctx=4, seed=seed).save(path)
    return str(path)


def test_whole_suite_end_to_end_and_cache_reuse(backbone, tiny_config, fake_root, tmp_path, monkeypatch, capsys):
    import pomp.data.features
    from pomp.cli import main

    p1 = _save_prompt(backbone, tmp_path / "first.safetensors", 0)
    p2 = _save_prompt(backbone, tmp_path / "second.safetensors", 1)
    out = tmp_path / "runs" / "bench1"
    rc = main(["benchmark", "--suite", "all", "--data-root", str(fake_root), "--prompt", p1, "--baseline", "single",
               "--backbone", tiny_config, "--out-dir", str(out), "--num-workers", "0", "--no-progress"])
    assert rc == 0
    assert "skipped" not in capsys.readouterr().out
    for key in ALL_KEYS:
        for label in ("prompt_first.safetensors", "baseline_single"):
            rec = json.loads((out / f"{key}__{label}.json").read_text())
            assert rec["dataset"] == key and rec["task"] == "zeroshot_classification"
            assert set(rec["metrics"]) == {"acc1", "acc5", "mean_per_class_recall"}
    assert json.loads((out / "imagenet_a__baseline_single.json").read_text())["num_classes"] == 200
    assert json.loads((out / "imagenet21k_p__prompt_first.safetensors.json").read_text())["num_classes"] == 10450

    # the table's average is the mean of the 10 cross-dataset results, computed by hand from the JSONs
    from pomp.paper_results import CROSS_DATASET, DOMAIN_GENERALIZATION

    def acc(key, label="prompt_first.safetensors"):
        return 100 * json.loads((out / f"{key}__{label}.json").read_text())["metrics"]["acc1"]

    rows = {line.split(",")[0]: line.split(",") for line in (out / "benchmark.csv").read_text().splitlines()}
    header = rows["method"]
    ours = dict(zip(header, rows["prompt:first.safetensors"]))
    assert float(ours["xd_avg"]) == pytest.approx(sum(acc(k) for k in CROSS_DATASET) / 10, abs=0.005)
    assert float(ours["dg_avg"]) == pytest.approx(sum(acc(k) for k in DOMAIN_GENERALIZATION) / 4, abs=0.005)
    delta = dict(zip(header, rows["prompt:first.safetensors - paper POMP"]))
    assert float(delta["imagenet21k_p"]) == pytest.approx(acc("imagenet21k_p") - 25.3, abs=0.005)
    assert "paper: MaPLe" in rows and (out / "benchmark.md").is_file()

    cache = tmp_path / "runs" / "feature_cache"
    slugs = list(cache.iterdir())
    assert len(slugs) == 1 and sorted(p.name for p in slugs[0].iterdir()) == sorted(ALL_KEYS)
    mtimes = {p: p.stat().st_mtime_ns for p in slugs[0].glob("*/*.npy")}

    # a second prompt: image features all come from the cache
    def no_image_tower(*args, **kwargs):
        raise AssertionError("image features recomputed")

    monkeypatch.setattr(pomp.data.features, "compute_image_features", no_image_tower)
    out2 = tmp_path / "runs" / "bench2"
    rc = main(["benchmark", "--data-root", str(fake_root), "--prompt", p2, "--backbone", tiny_config,
               "--out-dir", str(out2), "--num-workers", "0", "--no-progress"])
    assert rc == 0
    assert {p: p.stat().st_mtime_ns for p in slugs[0].glob("*/*.npy")} == mtimes
    assert len(list(out2.glob("*__prompt_second.safetensors.json"))) == len(ALL_KEYS)


def test_missing_datasets_are_skipped_with_one_line(backbone, tiny_config, tmp_path, capsys):
    from pomp.cli import main

    root = make_fake_benchmarks(tmp_path / "DATA", skip=tuple(k for k in ALL_KEYS if k not in ("dtd", "eurosat")))
    prompt = _save_prompt(backbone, tmp_path / "p.safetensors", 0)
    out = tmp_path / "out"
    rc = main(["benchmark", "--suite", "cross-dataset", "--data-root", str(root), "--prompt", prompt,
               "--backbone", tiny_config, "--out-dir", str(out), "--feature-cache", str(tmp_path / "fc"),
               "--num-workers", "0", "--no-progress"])
    assert rc == 0
    lines = capsys.readouterr().out.splitlines()
    skipped = [ln for ln in lines if ln.startswith("skipped ")]
    assert len(skipped) == 9  # ImageNet + 8 of the 10 targets
    caltech = [ln for ln in skipped if ln.startswith("skipped caltech101:")]
    assert len(caltech) == 1 and str(root / "caltech-101" / "split_zhou_Caltech101.json") in caltech[0]
    assert sorted(p.name for p in out.glob("*.json") if "__" in p.name) == [
        "dtd__prompt_p.safetensors.json", "eurosat__prompt_p.safetensors.json"]
    summary = json.loads((out / "config" / "benchmark_summary.json").read_text())
    assert summary["scored"] == ["dtd", "eurosat"] and "imagenet" in summary["skipped"]
    rows = {line.split(",")[0]: line.split(",") for line in (out / "benchmark.csv").read_text().splitlines()}
    ours = dict(zip(rows["method"], rows["prompt:p.safetensors"]))
    assert ours["xd_avg"] == "" and ours["dtd"] != "" and ours["caltech101"] == ""
    assert (tmp_path / "fc").is_dir()

    # nothing there at all: an error, exit 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["benchmark", "--suite", "imagenet21k", "--data-root", str(empty), "--prompt", prompt,
                 "--backbone", tiny_config, "--out-dir", str(tmp_path / "out3"), "--no-progress"]) == 2


def test_broken_dataset_fails_alone(backbone, tiny_config, tmp_path, capsys):
    from pomp.cli import main

    root = make_fake_benchmarks(tmp_path / "DATA", skip=tuple(k for k in ALL_KEYS if k not in ("dtd", "eurosat")))
    next((root / "dtd/images").rglob("*.jpg")).unlink()
    prompt = _save_prompt(backbone, tmp_path / "p.safetensors", 0)
    rc = main(["benchmark", "--suite", "cross-dataset", "--datasets", "dtd,eurosat", "--data-root", str(root),
               "--prompt", prompt, "--backbone", tiny_config, "--out-dir", str(tmp_path / "out"),
               "--num-workers", "0", "--no-progress"])
    assert rc == 1
    out = capsys.readouterr().out
    assert "error   dtd:" in out and "skipped" not in out
    assert (tmp_path / "out" / "eurosat__prompt_p.safetensors.json").is_file()


def test_benchmark_help(capsys):
    from pomp.cli import main

    with pytest.raises(SystemExit) as exit_info:
        main(["benchmark", "--help"])
    assert exit_info.value.code == 0
    assert "usage: pomp benchmark" in capsys.readouterr().out
