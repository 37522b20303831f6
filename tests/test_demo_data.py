"""Demo data: emoji cleaning rules, class split, and the builders on small hand-made sources (no network)."""

from __future__ import annotations

import gzip
import io
import json
import pickle
import struct
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pomp.data.folder import read_names_file, scan_class_folders
from pomp.data.splits import read_split_file
from pomp.demo import data as demo


def entry(unified, name, category="Smileys & Emotion", subcategory="face-smiling", order=0,
          styles=("google", "apple", "twitter"), skin=0):
    e = {
        "name": name,
        "unified": unified,
        "image": unified.lower() + ".png",
        "category": category,
        "subcategory": subcategory,
        "sort_order": order,
    }
    for s in ("google", "apple", "twitter", "facebook"):
        e[f"has_img_{s}"] = s in styles
    if skin:
        e["skin_variations"] = {f"1F3F{k}": {"unified": f"{unified}-1F3F{k}"} for k in "BCDEF"[:skin]}
    return e


PEOPLE = ("People & Body", "person-activity")
ENTRIES = [
    entry("1F600", "GRINNING FACE", order=1),
    entry("1F3C3", "RUNNER", *PEOPLE, order=2, skin=5),
    entry("1F3C3-200D-2640-FE0F", "WOMAN RUNNING", *PEOPLE, order=3, skin=5),
    entry("1F3C3-200D-2642-FE0F", "MAN RUNNING", *PEOPLE, order=4),
    entry("1F3C3-200D-27A1-FE0F", "PERSON RUNNING FACING RIGHT", *PEOPLE, order=5),
    entry("1F9D1-200D-1F33E", "FARMER", "People & Body", "person-role", order=6),
    entry("1F468-200D-1F33E", "MAN FARMER", "People & Body", "person-role", order=7),
    entry("1F469-200D-1F9B0", "WOMAN: RED HAIR", "People & Body", "person", order=8),
    entry("1F9D1-200D-1F9B0", "PERSON: RED HAIR", "People & Body", "person", order=9),
    entry("1F468", "MAN", "People & Body", "person", order=10),
    entry("1F469", "WOMAN", "People & Body", "person", order=11),
    entry("1F9D1", "ADULT", "People & Body", "person", order=12),
    entry("1F575-FE0F-200D-2640-FE0F", "WOMAN SLEUTH", "People & Body", "person-role", order=13),  # no base: kept
    entry("1F468-200D-1F469-200D-1F466", "FAMILY: MAN, WOMAN, BOY", "People & Body", "family", order=14),
    entry("1F9D1-200D-1F9D2", "FAMILY: ADULT, CHILD", "People & Body", "person-symbol", order=15),
    entry("1F46C", "TWO MEN HOLDING HANDS", "People & Body", "family", order=16),
    entry("1F48F", "KISS", "People & Body", "family", order=17),
    entry("1F469-200D-2764-FE0F-200D-1F48B-200D-1F468", "KISS: WOMAN, MAN", "People & Body", "family", order=18),
    entry("1F46A", "FAMILY", "People & Body", "person-symbol", order=19),
    entry("1F1EB-1F1F7", "FRANCE", "Flags", "country-flag", order=20),
    entry("1F3F4-E0067-E0062-E0065-E006E-E0067-E007F", "ENGLAND", "Flags", "subdivision-flag", order=21),
    entry("1F3C1", "CHEQUERED FLAG", "Flags", "flag", order=22),
    entry("1F3FB", "EMOJI MODIFIER FITZPATRICK TYPE-1-2", "Component", "skin-tone", order=23),
    entry("1F935", "MAN IN TUXEDO", "People & Body", "person-role", order=24),
    entry("1F935-200D-2642-FE0F", "MAN IN TUXEDO", "People & Body", "person-role", order=25),  # gendered dup
    entry("1F9E1", "ORANGE HEART", order=26, styles=()),
    entry("26D1-FE0F", "RESCUE WORKER\u2019S HELMET", "Objects", "clothing", order=27, styles=("google",)),
    entry("002A-FE0F-20E3", "KEYCAP: *", "Symbols", "keycap", order=28),
    entry("1F601", "Grinning  face", order=29),  # same cleaned name as 1F600
]


def test_clean_emoji_rules_and_counts():
    kept, counts = demo.clean_emoji(ENTRIES)
    names = [k["name"] for k in kept]
    assert names == [
        "grinning face", "runner", "farmer", "person red hair", "man", "woman", "adult", "woman sleuth",
        "kiss", "family", "chequered flag", "man in tuxedo", "rescue worker's helmet", "keycap *",
    ]
    assert counts == {
        "component": 1,
        "country_or_region_flag": 2,
        "family_or_couple_combination": 4,
        "direction_variant": 1,
        "gendered_duplicate": 5,  # woman/man running, man farmer, woman: red hair, man in tuxedo (2642)
        "no_image": 1,
        "duplicate_name": 1,
        "skin_tone_variants_ignored": 10,
        "input_entries": len(ENTRIES),
        "kept_classes": len(kept),
    }
    dropped = sum(v for k, v in counts.items() if k in demo.DROP_REASONS)
    assert dropped + counts["kept_classes"] == counts["input_entries"]
    by_name = {k["name"]: k for k in kept}
    assert by_name["rescue worker's helmet"]["styles"] == ["google"]
    assert by_name["runner"]["folder"] == "1f3c3"
    assert by_name["keycap *"]["folder"] == "002a-20e3"  # FE0F dropped: folder names are stable codes
    assert len({k["folder"] for k in kept}) == len(kept)


def test_clean_emoji_is_order_independent_and_style_aware():
    kept, _ = demo.clean_emoji(list(reversed(ENTRIES)))
    assert [k["name"] for k in kept] == [k["name"] for k in demo.clean_emoji(ENTRIES)[0]]
    kept_apple, counts = demo.clean_emoji(ENTRIES, styles=("apple",))
    assert "rescue worker's helmet" not in [k["name"] for k in kept_apple]
    assert counts["no_image"] == 2


def test_classnames_survive_the_names_file_reader(tmp_path):
    kept, _ = demo.clean_emoji(ENTRIES)
    path = tmp_path / "names.txt"
    demo._write_names(path, [(k["folder"], k["name"]) for k in kept])
    assert list(read_names_file(path).values()) == [k["name"] for k in kept]  # no commas, no tabs


def test_split_classes_is_seeded_disjoint_and_70_30():
    seen, held = demo.split_classes(1000, 0.3, seed=0)
    assert len(held) == 300 and len(seen) == 700
    assert not set(seen) & set(held) and sorted(seen + held) == list(range(1000))
    assert demo.split_classes(1000, 0.3, seed=0) == (seen, held)
    assert demo.split_classes(1000, 0.3, seed=1) != (seen, held)


# --- builders on hand-made sources ----------------------------------------------------------------
def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGBA", (64, 64), color).save(buf, format="PNG")
    return buf.getvalue()


def _tarball(path: Path, files: dict[str, bytes]) -> None:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def emoji_sources(tmp_path) -> Path:
    sources = tmp_path / "sources"
    sources.mkdir()
    listing = json.dumps(ENTRIES).encode()
    _tarball(sources / f"emoji-datasource-{demo.EMOJI_VERSION}.tgz", {"package/emoji.json": listing})
    for k, style in enumerate(demo.EMOJI_STYLES):
        files = {f"package/img/{style}/64/{e['image']}": _png((40 * k, 100, 200, 255))
                 for e in ENTRIES if e[f"has_img_{style}"]}
        files[f"package/img/{style}/sheets/32.png"] = b"not wanted"
        _tarball(sources / f"emoji-datasource-{style}-{demo.EMOJI_VERSION}.tgz", files)
    return sources


def test_build_emoji_writes_user_formats_and_is_idempotent(tmp_path, emoji_sources, monkeypatch):
    out = tmp_path / "demo"
    summary = demo.prepare_demo_data(out, emoji_sources, datasets=["emoji"], download=False, progress=False)
    info = summary["emoji"]
    assert info["classes"] == 14 and info["pretrain_classes"] + info["heldout_classes"] == 14
    root = out / "emoji"
    train = read_split_file(root / "split_pretrain.json", "train")
    val = read_split_file(root / "split_pretrain.json", "val")
    test = read_split_file(root / "split_heldout.json", "test")
    assert not set(train.classnames) & set(test.classnames)  # held-out classes never seen in pre-training
    assert len(train) + len(val) == info["pretrain_train_images"] + info["pretrain_val_images"]
    assert len(val) == sum(1 for label in range(len(val.classnames)) if any(lbl == label for _, lbl in val.samples))
    pre = scan_class_folders(root / "pretrain", read_names_file(root / "pretrain_names.txt"))
    assert pre.classnames == train.classnames and len(pre) == len(train) + len(val)
    held = scan_class_folders(root / "heldout", read_names_file(root / "heldout_names.txt"))
    assert held.classnames == test.classnames and len(held) == len(test)
    image = Image.open(root / train.samples[0][0])
    assert image.mode == "RGB" and image.size == (64, 64)
    cleaning = json.loads((root / "cleaning.json").read_text())
    assert cleaning["gendered_duplicate"] == 5 and cleaning["kept_classes"] == 14
    assert json.loads((out / "demo_data.json").read_text())["emoji"]["classes"] == 14

    def refuse(*args, **kwargs):
        raise AssertionError("rebuilt a finished dataset")

    monkeypatch.setattr(demo, "read_emoji_json", refuse)
    assert demo.prepare_demo_data(out, emoji_sources, datasets=["emoji"], download=False, progress=False) == summary
    assert not list(out.glob(".emoji.partial-*"))


def test_missing_sources_give_clear_errors(tmp_path, monkeypatch):
    with pytest.raises(demo.DemoDataError, match="npm pack emoji-datasource@16.0.0 --pack-destination"):
        demo.prepare_demo_data(tmp_path / "out", tmp_path / "nothing", datasets=["emoji"], download=False,
                               progress=False)
    with pytest.raises(demo.DemoDataError, match="apt-get install -y dataset-fashion-mnist"):
        demo.prepare_demo_data(tmp_path / "out", datasets=["fashion_mnist"], fashion_mnist_dir=tmp_path / "nothing",
                               progress=False)
    monkeypatch.setattr(demo.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(demo.DemoDataError, match="pip install --no-deps animal-mnist"):
        demo.prepare_demo_data(tmp_path / "out", datasets=["animal_silhouettes"], progress=False)
    assert not (tmp_path / "out" / "fashion_mnist").exists()


def test_cli_reports_errors_without_traceback(tmp_path, capsys):
    code = demo.main([str(tmp_path / "out"), "--sources", str(tmp_path / "none"), "--datasets", "emoji",
                      "--no-download"])
    assert code == 1 and "npm pack" in capsys.readouterr().err


def _idx(path: Path, array: np.ndarray) -> None:
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_build_fashion_mnist_from_idx_files(tmp_path):
    rng = np.random.default_rng(0)
    src = tmp_path / "fm"
    src.mkdir()
    labels = np.repeat(np.arange(10), 7)
    _idx(src / "t10k-images-idx3-ubyte.gz", rng.integers(0, 256, size=(70, 28, 28)))
    _idx(src / "t10k-labels-idx1-ubyte.gz", labels)
    summary = demo.prepare_demo_data(tmp_path / "out", datasets=["fashion_mnist"], fashion_per_class=5,
                                     fashion_mnist_dir=src, progress=False)["fashion_mnist"]
    assert summary["test_images"] == 50 and set(summary["per_class"].values()) == {5}
    root = tmp_path / "out" / "fashion_mnist"
    test = read_split_file(root / "split_test.json", "test")
    assert test.classnames[0] == "t-shirt" and test.classnames[-1] == "ankle boot" and len(test) == 50
    assert scan_class_folders(root / "images", read_names_file(root / "names.txt")).classnames == test.classnames
    image = Image.open(root / test.samples[0][0])
    assert image.mode == "RGB" and image.size == (112, 112)


def test_read_idx_rejects_bad_files(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write(struct.pack(">BBBB", 0, 0, 0x08, 1) + struct.pack(">I", 10) + b"\x00" * 3)
    with pytest.raises(demo.DemoDataError, match="holds 3 values"):
        demo.read_idx(path)


class _Evil:
    def __reduce__(self):
        return (print, ("pwned",))


def test_animal_unpickler_admits_numpy_arrays_only():
    array = np.arange(12, dtype=np.uint8).reshape(3, 4)
    np.testing.assert_array_equal(demo._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(array))).load(), array)
    with pytest.raises(pickle.UnpicklingError, match="only numpy arrays"):
        demo._NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(_Evil()))).load()


def test_balanced_subset_is_seeded_and_balanced():
    labels = np.repeat(np.arange(4), [10, 3, 8, 8])
    idx = demo.balanced_subset(labels, 5, seed=0)
    assert np.bincount(labels[idx]).tolist() == [5, 3, 5, 5]
    np.testing.assert_array_equal(idx, demo.balanced_subset(labels, 5, seed=0))
    assert len(demo.balanced_subset(labels, None, seed=0)) == len(labels)


# --- the real sources, when installed (fast: no images written) ------------------------------------
def test_real_animal_mnist_loads_with_the_safe_unpickler():
    if demo.importlib.util.find_spec("animal_mnist") is None:
        pytest.skip("animal-mnist not installed")
    x, y = demo.load_animal_silhouettes()
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert np.bincount(y).tolist() == [1000] * 10


def test_real_fashion_mnist_test_set_loads():
    if not (demo.FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Debian dataset-fashion-mnist not installed")
    x, y = demo.load_fashion_mnist_test()
    assert x.shape == (10000, 28, 28) and np.bincount(y).tolist() == [1000] * 10
