"""Names files, class folders, k-shot splits, CoOp split files, unreadable images."""

import json

import pytest
import torch

from pomp.data.folder import ImageDataset, collate_skipping, read_names_file, scan_class_folders
from pomp.data.imagenet21k import classnames, names_mapping, synsets
from pomp.data.splits import few_shot_split, load_or_make_split, read_split_file, write_split_file
from pomp.data.transforms import ImageSpec, MultiView, eval_transform, train_transform


def test_names_file_first_synonym(tmp_path):
    f = tmp_path / "n.txt"
    f.write_text("n01\ttabby, tabby cat\nn02\tgolden_retriever\n")
    assert read_names_file(f) == {"n01": "tabby", "n02": "golden retriever"}
    assert read_names_file(f, first_synonym=False)["n01"] == "tabby, tabby cat"
    f.write_text("n01\tx\nn01\ty\n")
    with pytest.raises(ValueError, match="listed twice"):
        read_names_file(f)


def test_imagenet21k_p_lists():
    assert len(synsets("imagenet21k-p")) == 10450
    names = classnames("imagenet21k-p")
    assert len(names) == 10450 and all(names)
    assert list(names_mapping())[:3] == synsets()[:3]


def test_scan_and_mismatch(class_folders):
    names = read_names_file(class_folders / "names.txt")
    images = scan_class_folders(class_folders / "images", names)
    assert len(images.classnames) == 6 and len(images) == 36
    assert images.classnames[0] == "golden retriever"
    names.pop("c005")
    with pytest.raises(ValueError, match="no name in the names file"):
        scan_class_folders(class_folders / "images", names)
    names["zzz"] = "ghost"
    names["c005"] = "x"
    with pytest.raises(ValueError, match="with no folder"):
        scan_class_folders(class_folders / "images", names)


def test_empty_dataset_is_an_error(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.warns(UserWarning, match="no images"), pytest.raises(ValueError, match="no images found"):
        scan_class_folders(tmp_path)


def test_few_shot_split_reproducible_and_saved(class_folders, tmp_path):
    images = scan_class_folders(class_folders / "images", read_names_file(class_folders / "names.txt"))
    a = few_shot_split(images, shots=2, val_per_class=1, seed=3)
    b = few_shot_split(images, shots=2, val_per_class=1, seed=3)
    c = few_shot_split(images, shots=2, val_per_class=1, seed=4)
    assert a["train"].samples == b["train"].samples != c["train"].samples
    assert len(a["train"]) == 12 and len(a["val"]) == 6
    assert not set(a["train"].samples) & set(a["val"].samples)
    split = tmp_path / "split.json"
    first = load_or_make_split(split, images, 2, 1, seed=3)
    again = load_or_make_split(split, images, 2, 1, seed=3)  # read back
    assert first["train"].samples == again["train"].samples == a["train"].samples
    data = json.loads(split.read_text())
    assert data["train"][0][2] == images.classnames[data["train"][0][1]]
    # kept only with the parameters that made it: other ones are refused by name, or the split rebuilt
    with pytest.raises(ValueError, match=r"the saved split was made with other parameters \(split_seed 3 -> 99"):
        load_or_make_split(split, images, 2, 1, seed=99)
    with pytest.raises(ValueError, match="shots 2 -> 3; val_per_class 1 -> 0"):
        load_or_make_split(split, images, 3, 0, seed=3)
    rebuilt = load_or_make_split(split, images, 2, 1, seed=4, reuse=False)
    assert rebuilt["train"].samples == c["train"].samples
    assert json.loads((tmp_path / "split_params.json").read_text())["split_seed"] == 4


def test_coop_split_file_errors(class_folders, tmp_path):
    images = scan_class_folders(class_folders / "images", read_names_file(class_folders / "names.txt"))
    split = tmp_path / "split_zhou_Test.json"
    write_split_file(split, {"train": images, "test": images})
    test = read_split_file(split, "test", class_folders / "images")
    assert test.classnames == images.classnames and len(test) == 36
    with pytest.raises(FileNotFoundError, match="missing under"):
        read_split_file(split, "test", tmp_path)
    bad = json.loads(split.read_text())
    bad["test"][0][2] = "other name"
    split.write_text(json.dumps(bad))
    with pytest.raises(ValueError, match="named both"):
        read_split_file(split, "test", class_folders / "images")
    split.write_text("{not json")
    with pytest.raises(ValueError, match="not valid JSON"):
        read_split_file(split, "test")


def test_unreadable_image_is_skipped_and_counted(class_folders):
    images = scan_class_folders(class_folders / "images")
    (class_folders / "images" / images.samples[0][0]).write_bytes(b"not an image")
    (class_folders / "images" / images.samples[1][0]).write_bytes(b"")
    ds = ImageDataset(images, eval_transform(ImageSpec(32, (0.5,) * 3, (0.5,) * 3)))
    with pytest.warns(UserWarning, match="skipping unreadable image"):
        batch = collate_skipping([ds[i] for i in range(4)])
    pixels, labels, indices, skipped = batch
    assert skipped == 2 and pixels.shape == (2, 3, 32, 32) and indices.tolist() == [2, 3]


def test_train_transform_views_seeded(class_folders):
    images = scan_class_folders(class_folders / "images")
    spec = ImageSpec(32, (0.5,) * 3, (0.5,) * 3)
    ds = ImageDataset(images, MultiView(train_transform(spec), 4), seed=1)
    x1, x2 = ds[0][0], ds[0][0]
    assert x1.shape == (4, 3, 32, 32) and torch.equal(x1, x2)
    assert not torch.equal(x1[0], x1[1])
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], x1)


# --- the sample-data generators' command lines (the README's CLI quickstart starts with one) ----------------------
GENERATOR_CASES = [
    ("pomp.data.synthetic", ["--classes", "0"], "--classes must be an integer >= 1, got 0"),
    ("pomp.data.synthetic", ["--classes", "25"], "--classes must be at most 24"),
    ("pomp.data.synthetic", ["--per-class", "0"], "--per-class must be an integer >= 1, got 0"),
    ("pomp.data.synthetic", ["--size", "0"], "--size must be an integer >= 1, got 0"),
    ("pomp.data.synthetic", ["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    ("pomp.data.synthetic", ["--classes", "two"], "argument --classes: invalid int value: 'two'"),
    ("pomp.dense.scenes", ["--num-images", "0"], "--num-images must be an integer >= 1, got 0"),
    ("pomp.dense.scenes", ["--size", "15"], "--size must be an integer >= 16, got 15"),
    ("pomp.dense.scenes", ["--seed", "-1"], "--seed must be an integer >= 0, got -1"),
    ("pomp.dense.scenes", ["--max-objects", "0"], "--max-objects must be an integer >= 1, got 0"),
    ("pomp.dense.scenes", ["--source", "cars"], "argument --source: invalid choice: 'cars'"),
]


@pytest.mark.parametrize("module,argv,says", GENERATOR_CASES)
def test_generators_refuse_a_bad_count_in_one_line(tmp_path, capsys, module, argv, says):
    import importlib

    out = tmp_path / "data"
    with pytest.raises(SystemExit) as exit_info:
        importlib.import_module(module).main([str(out), *argv])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and err.startswith(f"python -m {module}: error: {says}"), err
    assert err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("module,defaults", [
    ("pomp.data.synthetic", {"--classes": 12, "--per-class": 10, "--size": 40, "--seed": 0}),
    ("pomp.dense.scenes", {"--num-images": 24, "--size": 320, "--seed": 0, "--source": "photos", "--max-objects": 3}),
])
def test_generators_help_states_each_default(capsys, module, defaults):
    import importlib

    with pytest.raises(SystemExit):
        importlib.import_module(module).main(["--help"])
    shown = " ".join(capsys.readouterr().out.split())
    for option, default in defaults.items():
        assert f"{option} " in shown and f"(default: {default})" in shown.split(option, 2)[-1], (option, shown)


def test_generated_folders_as_written(tmp_path):
    """3 classes x 2 images: folders c000..c002, names from NAMES in order, jpg and png alternating."""
    from pomp.data.synthetic import NAMES, make_class_folders

    root = make_class_folders(tmp_path, num_classes=3, per_class=2, size=8)
    assert (root / "names.txt").read_text() == "".join(f"c{c:03d}\t{NAMES[c]}\n" for c in range(3))
    assert sorted(p.relative_to(root).as_posix() for p in (root / "images").glob("*/*")) == [
        f"images/c{c:03d}/img_{i:03d}.{ext}" for c in range(3) for i, ext in ((0, "jpg"), (1, "png"))]
