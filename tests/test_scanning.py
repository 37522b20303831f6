"""Folder scanning, image decoding and feature caches, on files made the way their producers make them
(issue 13).

Checked against independent facts: the files planted by hand (a `__MACOSX` folder and macOS `._`
files as the Finder's zip writes them, symlink loops, non-UTF-8 names written as raw bytes, an NFD
folder name); PIL's own registered extensions; a 16-bit PNG ramp against its exact 8-bit scaling
computed with numpy; caches against features computed afresh, after a real process was killed
with SIGKILL in the middle of publishing one.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import unicodedata
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_CONFIG as TINY
from conftest import tiny_weights
from PIL import Image

from pomp.cli import main
from pomp.data.features import cached_image_features, compute_image_features
from pomp.data.folder import ImageDataset, list_image_files, read_names_file, scan_class_folders
from pomp.data.images import IMAGE_EXTENSIONS, load_rgb
from pomp.data.suite_layouts import LAYOUT_BY_KEY, class_list, load_test_set
from pomp.data.synthetic import make_class_folders

REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1",
       "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def jpeg_bytes(colour=(200, 30, 30), size: int = 40) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), colour).save(buffer, "JPEG")
    return buffer.getvalue()


def apple_double(name: str) -> bytes:
    """A macOS AppleDouble `._name` file as the Finder's zip writes it: magic 0x00051607, version 2."""
    return struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", 0) + name.encode()


# --- what a scan keeps and leaves out ----------------------------------------------------------
def plant_system_files(images: Path) -> dict[str, int]:
    """Hidden files, a __MACOSX copy, links back into the tree, a .jfif image; returns the expected counts."""
    (images / "__MACOSX" / "c000").mkdir(parents=True)
    (images / "__MACOSX" / "c000" / "._img_000.jpg").write_bytes(apple_double("img_000.jpg"))
    (images / "c000" / "._img_000.jpg").write_bytes(apple_double("img_000.jpg"))
    (images / "c000" / ".hidden.jpg").write_bytes(jpeg_bytes())  # a real image, hidden: left out
    (images / "c001" / ".cache").mkdir()
    (images / "c001" / ".cache" / "thumb.jpg").write_bytes(jpeg_bytes())
    (images / "all").symlink_to(".")  # ROOT/all -> ROOT: would be a class holding every image again
    (images / "c001" / "up").symlink_to("..")  # a loop inside a class folder
    (images / "c002" / "sub").mkdir()
    (images / "c002" / "sub" / "scan.jfif").write_bytes(jpeg_bytes((10, 10, 200)))  # JPEG under its other name
    (images / "c002" / "notes.txt").write_text("not an image")
    (images / "README.md").write_text("a file beside the class folders")
    return {"hidden": 3, "system_folders": 1, "symlinks_into_tree": 2, "not_images": 1,
            "files_outside_class_folders": 1}


@pytest.mark.slow
def test_macos_zip_leftovers_and_symlink_loops_are_skipped_and_counted(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", num_classes=3, per_class=4)
    expected = plant_system_files(data / "images")
    with pytest.warns(UserWarning) as caught:
        images = scan_class_folders(data / "images")
    assert images.classnames == ["c000", "c001", "c002"]  # no __MACOSX, no 'all'
    assert len(images) == 13 and ("c002/sub/scan.jfif", 2) in images.samples
    assert not any("/." in "/" + rel or "__MACOSX" in rel or rel.startswith("all/") for rel, _ in images.samples)
    assert images.skipped == expected
    [report] = [str(w.message) for w in caught]
    assert report.startswith(f"{data / 'images'}: skipped 8 entries: ") and "\n" not in report
    assert "2 links back into the tree" in report and "1 system folders (__MACOSX...)" in report

    # the same through the CLI: a split of 3 classes, the warning as one line
    out = tmp_path / "split.json"
    done = subprocess.run([sys.executable, "-m", "pomp.cli", "data", "split", "--train-root", str(data / "images"),
                           "--shots", "2", "--val-per-class", "1", "--out", str(out)], cwd=REPO, env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.splitlines()[0])["classes"] == 3
    assert [line for line in done.stderr.splitlines() if line.strip()] == [f"pomp data: warning: {report}"]


def test_benchmark_class_folders_use_the_same_listing(tmp_path):
    """A CoOp-layout dataset (ImageNet-Sketch: images/<wnid>/...) with a hidden image, a `._x.jpg`
    and a __MACOSX folder: CoOp's readers skip hidden files, so do we."""
    wnids, _, _ = class_list(LAYOUT_BY_KEY["imagenet_sketch"], tmp_path)  # no classnames.txt: the built-in list
    folder = tmp_path / "imagenet-sketch" / "images"
    for wnid in wnids[:2]:
        (folder / wnid).mkdir(parents=True)
        for i in range(2):
            (folder / wnid / f"sketch_{i}.JPEG").write_bytes(jpeg_bytes())
    (folder / wnids[0] / ".sketch_9.JPEG").write_bytes(jpeg_bytes())
    (folder / wnids[0] / "._sketch_0.JPEG").write_bytes(apple_double("sketch_0.JPEG"))
    (folder / "__MACOSX" / wnids[1]).mkdir(parents=True)
    test = load_test_set("imagenet_sketch", tmp_path)
    assert sorted(rel for rel, _ in test.samples) == sorted(f"{w}/sketch_{i}.JPEG" for w in wnids[:2] for i in range(2))
    assert test.skipped["hidden"] == 2 and test.skipped["system_folders"] == 1
    assert list_image_files(folder / wnids[0]) == sorted((folder / wnids[0]).glob("sketch_*.JPEG"))


@pytest.mark.filterwarnings("ignore:IM image format is deprecated:DeprecationWarning")
def test_every_extension_pil_decodes_is_an_image(tmp_path):
    """The extensions come from PIL's registry: each format PIL can write here is found and decoded."""
    registered = Image.registered_extensions()
    assert {".jfif", ".jpe", ".tga", ".pgm", ".webp", ".qoi", ".dib"} <= IMAGE_EXTENSIONS
    assert not {".pdf", ".h5", ".grib", ".txt", ".mpg"} & IMAGE_EXTENSIONS
    folder = tmp_path / "images" / "cls"
    folder.mkdir(parents=True)
    written = []
    for ext, fmt in sorted(registered.items()):
        if fmt not in Image.SAVE or ext not in IMAGE_EXTENSIONS:
            continue
        try:
            Image.new("RGB", (16, 16), (200, 30, 30)).save(folder / f"x{ext}", format=fmt)
            with Image.open(folder / f"x{ext}") as check:
                check.load()
        except (OSError, ValueError, KeyError):  # cannot hold RGB (XBM), or needs a tool not here (Ghostscript)
            (folder / f"x{ext}").unlink(missing_ok=True)
            continue
        written.append(f"cls/x{ext}")
    assert len(written) >= 15
    images = scan_class_folders(tmp_path / "images")
    assert sorted(rel for rel, _ in images.samples) == sorted(written)
    for rel, _ in images.samples:
        decoded = load_rgb(tmp_path / "images" / rel)  # (.icns decodes at its own icon size)
        assert decoded.mode == "RGB" and decoded.getpixel((decoded.width // 2, decoded.height // 2))[0] > 150, rel


def test_non_utf8_file_names_are_skipped_and_named(tmp_path, capsys):
    data = make_class_folders(tmp_path / "data", num_classes=3, per_class=5)
    root = os.fsencode(data / "images")
    with open(os.path.join(root, b"c000", b"caf\xe9.jpg"), "wb") as f:  # a Latin-1 name from an old zip
        f.write(jpeg_bytes())
    os.mkdir(os.path.join(root, b"\xff\xfeclass"))
    with open(os.path.join(root, b"\xff\xfeclass", b"x.jpg"), "wb") as f:
        f.write(jpeg_bytes())
    names = str(data / "names.txt")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        images = scan_class_folders(data / "images", read_names_file(names))
    assert len(images) == 15 and images.skipped == {"undecodable_names": 2}
    [report] = [str(w.message) for w in caught]
    assert "2 names that are not UTF-8 (e.g. " in report and ("caf\\xe9.jpg" in report or "\\xff\\xfeclass" in report)
    # the commands that died with an encoding error naming no file
    out = tmp_path / "out"
    for argv in (["data", "split", "--train-root", str(data / "images"), "--names", names, "--shots", "2",
                  "--val-per-class", "1", "--out", str(out / "split.json")],
                 ["data", "shard", "--train-root", str(data / "images"), "--names", names, "--out-dir",
                  str(out / "shards"), "--no-progress"],
                 ["pretrain", "--backbone", TINY, "--train-root", str(data / "images"), "--names", names,
                  "--shots", "2", "--val-per-class", "1", "--classes-per-step", "3", "--batch-size", "2",
                  "--views", "1", "--epochs", "1", "--num-workers", "0", "--device", "cpu", "--no-progress",
                  "--max-steps", "1", "--out-dir", str(out / "run")]):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(argv) == 0, capsys.readouterr().err
    capsys.readouterr()
    config = json.loads((out / "run" / "config.json").read_text())
    assert config["skipped_files"] == {"undecodable_names": 2} and config["num_train_images"] == 6


@pytest.mark.slow
def test_control_characters_in_file_names_never_reach_the_terminal(tmp_path, capsys):
    """macOS writes a folder's custom icon as a file named `Icon\\r`; archives can carry names holding ESC.
    Messages naming them stay one line each, with the characters escaped, never sent to the terminal."""
    data = make_class_folders(tmp_path / "data", num_classes=2, per_class=2)
    (data / "images" / "Icon\r").write_bytes(b"")  # beside the class folders, as the Finder leaves it
    (data / "images" / "c000" / "Icon\r").write_bytes(b"")
    (data / "images" / "c001" / "\x1b[2Jwiped.txt").write_text("x")
    done = subprocess.run([sys.executable, "-m", "pomp.cli", "data", "split", "--train-root", str(data / "images"),
                           "--shots", "1", "--val-per-class", "0", "--out", str(tmp_path / "split.json")],
                          cwd=REPO, env=ENV, capture_output=True, text=True, timeout=120)
    err = done.stderr
    assert done.returncode == 0, err
    lines = err.split("\n")
    assert lines[-1] == "" and all(ch == "\t" or ch.isprintable() for line in lines for ch in line), repr(err)
    skipped = [line for line in lines if "skipped" in line]
    assert len(skipped) == 1 and "Icon\\x0d" in skipped[0], err

    missing = str(tmp_path / "no\rsuch\x1b[31mfolder")
    rc = main(["data", "split", "--train-root", missing, "--shots", "1", "--out", str(tmp_path / "s2.json")])
    err = capsys.readouterr().err
    assert rc == 2 and err == f"pomp data: error: {tmp_path}/no\\x0dsuch\\x1b[31mfolder: image folder not found\n"


def test_folder_names_differing_only_in_case(tmp_path):
    """A folder named `Cat` on macOS or Windows (case-insensitive) and `cat` in the names file: on Linux they
    differ, and the refusal says so; two folders `Cat` and `cat` side by side are two classes."""
    data = make_class_folders(tmp_path / "data", num_classes=2, per_class=2)
    (data / "images" / "c000").rename(data / "images" / "Cat")
    (data / "names.txt").write_text("cat\ttabby cat\nc001\tred fox\n", encoding="utf-8")
    with pytest.raises(ValueError, match=r"1 class folders have no name in the names file \(e\.g\. 'Cat', listed as "
                                         r"'cat': folder names match with their case\)"):
        scan_class_folders(data / "images", read_names_file(data / "names.txt"))
    (data / "images" / "c001").rename(data / "images" / "cat")
    (data / "names.txt").write_text("Cat\ttabby cat\ncat\tred fox\n", encoding="utf-8")
    images = scan_class_folders(data / "images", read_names_file(data / "names.txt"))
    assert images.classnames == ["tabby cat", "red fox"]
    assert sorted({rel.split("/")[0] for rel, _ in images.samples}) == ["Cat", "cat"]


def test_json_outputs_hold_undecodable_names_as_escapes(tmp_path):
    from pomp.io import atomic_write_json, read_json

    name = os.fsdecode(b"caf\xe9")  # how Python hands over a Latin-1 file name: a lone surrogate
    path = atomic_write_json(tmp_path / "x.json", {"root": name, "class": "café"})
    assert read_json(path) == {"root": name, "class": "café"}
    atomic_write_json(path, {"class": "café"})
    assert "café" in path.read_text(encoding="utf-8")  # readable UTF-8 whenever it can be


def test_folder_names_match_the_names_file_after_nfc(tmp_path):
    data = make_class_folders(tmp_path / "data", num_classes=2, per_class=2)
    nfd = unicodedata.normalize("NFD", "café")
    assert nfd != "café"
    (data / "images" / "c000").rename(data / "images" / nfd)  # as a zip made on macOS unpacks
    (data / "names.txt").write_text("café\tcoffee shop\nc001\ttabby cat\n", encoding="utf-8")
    images = scan_class_folders(data / "images", read_names_file(data / "names.txt"))
    assert images.classnames == ["coffee shop", "tabby cat"]
    assert all((data / "images" / rel).is_file() for rel, _ in images.samples)  # the name on disk is kept
    (data / "images" / "café").mkdir()  # the NFC spelling beside the NFD one: ambiguous
    with pytest.raises(ValueError, match="are one name in Unicode NFC"):
        scan_class_folders(data / "images", read_names_file(data / "names.txt"))


# --- images decoded as the file means ----------------------------------------------------------
def _png_bit_depth(path: Path) -> int:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return data[24]


def test_16_bit_png_ramp_equals_its_exact_8_bit_scaling(tmp_path):
    ramp = np.arange(65536, dtype=np.uint16).reshape(256, 256)  # every 16-bit value once
    path = tmp_path / "ramp.png"
    Image.fromarray(ramp).save(path)
    assert _png_bit_depth(path) == 16
    expected = np.round(ramp.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)  # v / 257, rounded
    rgb = np.asarray(load_rgb(path))
    assert rgb.shape == (256, 256, 3) and rgb.dtype == np.uint8
    for channel in range(3):
        assert np.array_equal(rgb[..., channel], expected)
    assert abs(rgb.mean() - 127.5) < 0.01  # clipped, it averaged 254

    # the same ramp as other producers store it: big-endian 16-bit TIFF, 32-bit TIFF, 16-bit PGM
    for name, image in (("ramp16.tif", Image.fromarray(ramp)), ("ramp32.tif", Image.fromarray(ramp.astype(np.int32))),
                        ("ramp.pgm", Image.fromarray(ramp))):
        image.save(tmp_path / name)
        assert np.array_equal(np.asarray(load_rgb(tmp_path / name))[..., 1], expected), name


def test_float_and_other_deep_modes_are_scaled_not_clipped(tmp_path):
    unit = np.linspace(0.0, 1.0, 64 * 64, dtype=np.float32).reshape(64, 64)
    Image.fromarray(unit).save(tmp_path / "unit.tif")  # mode F in [0, 1]
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "unit.tif"))[..., 0], np.round(unit * 255.0).astype(np.uint8))
    depth = (unit * 40.0 + 10.0).astype(np.float32)  # metres, 10..50: stretched over its own range
    Image.fromarray(depth).save(tmp_path / "depth.tif")
    got = np.asarray(load_rgb(tmp_path / "depth.tif"))[..., 0]
    assert got.min() == 0 and got.max() == 255
    assert np.array_equal(got, np.round((depth.astype(np.float64) - 10.0) / 40.0 * 255.0).astype(np.uint8))


def test_deep_tiffs_pil_misreads_equal_their_exact_8_bit_scaling(tmp_path):
    """TIFFs as microscopes, scanners and scientific software write them (with tifffile, their usual writer):
    PIL garbles 16-bit RGB stored plane by plane, keeps the high byte of 16-bit RGB, does not invert 16-bit
    min-is-white, and cannot open float RGB. Each must equal the exact 8-bit scaling computed with numpy."""
    tifffile = pytest.importorskip("tifffile")
    ramp = np.arange(64 * 48, dtype=np.float64).reshape(64, 48) / (64 * 48 - 1)
    rgb16 = np.round(np.stack([ramp, ramp[::-1], 1.0 - ramp.T.reshape(64, 48)], -1) * 65535).astype(np.uint16)
    exact = np.round(rgb16.astype(np.float64) * 255.0 / 65535.0).astype(np.uint8)
    tifffile.imwrite(tmp_path / "planar.tif", np.moveaxis(rgb16, -1, 0), photometric="rgb", planarconfig="separate")
    tifffile.imwrite(tmp_path / "contig.tif", rgb16, photometric="rgb", compression="zlib", predictor=True)
    for name in ("planar.tif", "contig.tif"):
        assert np.array_equal(np.asarray(load_rgb(tmp_path / name)), exact), name

    unit = (rgb16 / 65535.0).astype(np.float32)
    tifffile.imwrite(tmp_path / "float.tif", unit, photometric="rgb")
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "float.tif")), np.round(unit * 255.0).astype(np.uint8))

    tifffile.imwrite(tmp_path / "white.tif", rgb16[..., 0], photometric="miniswhite")  # 0 is white
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "white.tif"))[..., 1], 255 - exact[..., 0])

    alpha = np.concatenate([rgb16, np.zeros((64, 48, 1), np.uint16)], -1)  # fully transparent
    alpha[:32, :, 3] = 65535  # top half opaque
    tifffile.imwrite(tmp_path / "alpha.tif", alpha, photometric="rgb", extrasamples=["unassalpha"])
    out = np.asarray(load_rgb(tmp_path / "alpha.tif"))
    assert np.array_equal(out[:32], exact[:32]) and (out[32:] == 255).all()

    tifffile.imwrite(tmp_path / "turned.tif", rgb16, photometric="rgb", extratags=[(274, "H", 1, 6, True)])
    assert np.array_equal(np.asarray(load_rgb(tmp_path / "turned.tif")), np.rot90(exact, k=-1))  # 6: 90° clockwise

    with open(tmp_path / "planar.tif", "rb") as f:  # shards hand over file objects
        assert np.array_equal(np.asarray(load_rgb(io.BytesIO(f.read()))), exact)


@pytest.mark.slow
def test_a_jpeg_over_the_pixel_limit_is_decoded_smaller_not_skipped(tmp_path):
    """A 108-megapixel phone photo or a large scan is a readable image, not a decompression bomb: JPEGs
    over the limit are decoded by libjpeg at 1/2 (1/4, 1/8), with no PIL bomb warning. (Other formats
    over the limit stay refused: tests/test_reliability.py, decompression bombs.)"""
    side = 9500  # 90 Mpx: over pomp's 8192 x 8192 and over PIL's warning threshold
    image = Image.new("RGB", (side, side), (200, 30, 30))
    image.paste((30, 30, 200), (0, 0, side // 2, side))  # blue left half, red right half
    image.save(tmp_path / "big.jpg", quality=95)
    del image
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = load_rgb(tmp_path / "big.jpg")
    assert out.size == (side // 2, side // 2)
    pixels = np.asarray(out).astype(int)
    assert np.abs(pixels[:, : side // 4 - 8] - (30, 30, 200)).max() <= 3
    assert np.abs(pixels[:, side // 4 + 8 :] - (200, 30, 30)).max() <= 3


def test_transparency_is_composited_on_white(tmp_path):
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0] = 255  # red under the transparent half
    rgba[:, :4, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    out = np.asarray(load_rgb(tmp_path / "rgba.png"))
    assert (out[:, :4] == (255, 0, 0)).all() and (out[:, 4:] == 255).all()
    la = Image.fromarray(np.stack([np.full((8, 8), 40, np.uint8), rgba[..., 3]], -1), "LA")
    la.save(tmp_path / "la.png")
    out = np.asarray(load_rgb(tmp_path / "la.png"))
    assert (out[:, :4] == 40).all() and (out[:, 4:] == 255).all()
    palette = Image.new("P", (8, 8), 1)
    palette.putpalette([0, 0, 0, 10, 200, 10] + [0] * 762)
    palette.paste(0, (0, 0, 4, 8))
    palette.save(tmp_path / "p.png", transparency=0)  # index 0 transparent (a tRNS chunk)
    out = np.asarray(load_rgb(tmp_path / "p.png"))
    assert (out[:, :4] == 255).all() and (out[:, 4:] == (10, 200, 10)).all()
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # CMYK red
    cmyk.save(tmp_path / "cmyk.jpg", quality=100)
    assert np.abs(np.asarray(load_rgb(tmp_path / "cmyk.jpg")).astype(int) - (255, 0, 0)).max() <= 3


def test_exif_orientation_is_applied(tmp_path):
    pixels = np.zeros((10, 20, 3), np.uint8)
    pixels[:, :10] = 255  # white left half of a landscape image
    image = Image.fromarray(pixels)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    image.save(tmp_path / "phone.jpg", exif=exif, quality=100)
    out = np.asarray(load_rgb(tmp_path / "phone.jpg"))
    assert out.shape == (20, 10, 3)  # upright: portrait
    assert out[:10].mean() > 200 and out[10:].mean() < 50  # the white half now on top


# --- dataset names unique in every output ------------------------------------------------------
def test_eval_of_two_datasets_with_one_folder_name(tmp_path, capsys):
    a = make_class_folders(tmp_path / "a", num_classes=3, per_class=3, seed=1)
    b = make_class_folders(tmp_path / "b", num_classes=4, per_class=2, seed=2)
    out, cache = tmp_path / "eval", tmp_path / "cache"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["eval", "--backbone", TINY, "--baseline", "single", "--data", str(a / "images"), "--data",
                     str(b / "images"), "--out-dir", str(out), "--feature-cache", str(cache), "--num-workers", "0",
                     "--device", "cpu"]) == 0
    capsys.readouterr()
    records = {p.name: json.loads(p.read_text()) for p in out.glob("*__*.json")}
    assert sorted(records) == ["a_images__baseline_single.json", "b_images__baseline_single.json"]
    assert records["a_images__baseline_single.json"]["num_images"] == 9
    assert records["b_images__baseline_single.json"]["num_images"] == 8
    header = (out / "results.md").read_text().splitlines()[0]
    assert "a_images" in header and "b_images" in header
    assert sorted(p.name for p in cache.iterdir()) == ["a_images", "b_images"]


# --- feature caches ----------------------------------------------------------------------------
KILL_DURING_PUBLICATION = """
import os, signal, sys
import numpy as np
real_save = np.save

def save(file, array, *args, **kwargs):
    if str(getattr(file, "name", "")).endswith("labels.npy"):  # features.npy is written: the worst moment
        os.kill(os.getpid(), signal.SIGKILL)
    return real_save(file, array, *args, **kwargs)

np.save = save
from pomp.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.slow
def test_two_backbones_one_cache_root_and_a_kill_during_publication(tmp_path, capsys, monkeypatch):
    import pomp
    import pomp.data.features

    data = make_class_folders(tmp_path / "data", num_classes=3, per_class=3)
    images = scan_class_folders(data / "images")
    weights = tiny_weights(tmp_path / "b.pt", seed=5)
    a = pomp.load_backbone(TINY)
    b = pomp.load_backbone(TINY, str(weights))
    assert a.text_width == b.text_width and a.embed_dim == b.embed_dim
    fresh = {name: compute_image_features(bb, ImageDataset(images, bb.eval_transform()), progress=False).features
             for name, bb in (("a", a), ("b", b))}
    assert not torch.allclose(fresh["a"], fresh["b"])
    cache = tmp_path / "cache"
    eval_argv = ["eval", "--backbone", TINY, "--baseline", "single", "--data", str(data / "images"),
                 "--feature-cache", str(cache), "--num-workers", "0", "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main([*eval_argv, "--out-dir", str(tmp_path / "eval-a")]) == 0
    killed = subprocess.run([sys.executable, "-c", KILL_DURING_PUBLICATION, *eval_argv, "--pretrained", str(weights),
                             "--out-dir", str(tmp_path / "eval-b")], cwd=REPO, env=ENV, capture_output=True, text=True,
                            timeout=120)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-2000:]
    entries = sorted((cache / "images").iterdir())
    assert len([p for p in entries if not p.name.startswith(".")]) == 1  # only A's cache was published
    assert len([p for p in entries if p.name.startswith(".")]) == 1  # B's half-written folder, never read

    def no_image_tower(*args, **kwargs):
        raise AssertionError("computed again: the cache was not used")

    for name, bb in (("a", a), ("b", b)):
        dataset = ImageDataset(images, bb.eval_transform())
        if name == "a":
            monkeypatch.setattr(pomp.data.features, "compute_image_features", no_image_tower)
        got = cached_image_features(cache / "images", bb, dataset, progress=False)
        monkeypatch.undo()
        torch.testing.assert_close(got.features.float(), fresh[name], atol=2e-3, rtol=0)  # float16 cache
    entries = sorted((cache / "images").iterdir())
    assert len(entries) == 2 and not any(p.name.startswith(".") for p in entries)  # the dead writer's folder swept

    # the same file name holding other weights is another backbone
    tiny_weights(weights, seed=6)
    c = pomp.load_backbone(TINY, str(weights))
    got = cached_image_features(cache / "images", c, ImageDataset(images, c.eval_transform()), progress=False)
    expected = compute_image_features(c, ImageDataset(images, c.eval_transform()), progress=False).features
    torch.testing.assert_close(got.features.float(), expected, atol=2e-3, rtol=0)
    assert len(list((cache / "images").iterdir())) == 3


def test_cache_key_follows_the_files(tmp_path, backbone, monkeypatch):
    """Same relative names under another root, or a file replaced in place: not the cached features."""
    import pomp.data.features

    first = make_class_folders(tmp_path / "one", num_classes=2, per_class=2, seed=1)
    second = make_class_folders(tmp_path / "two", num_classes=2, per_class=2, seed=2)
    cache = tmp_path / "cache"
    one = scan_class_folders(first / "images")
    cached_image_features(cache, backbone, ImageDataset(one, backbone.eval_transform()), progress=False)
    computed = []
    real = pomp.data.features.compute_image_features
    monkeypatch.setattr(pomp.data.features, "compute_image_features", lambda *a, **k: computed.append(1) or real(*a, **k))
    two = scan_class_folders(second / "images")
    cached_image_features(cache, backbone, ImageDataset(two, backbone.eval_transform()), progress=False)
    assert computed == [1]
    shutil.copy(second / "images" / two.samples[0][0], first / "images" / one.samples[0][0])
    os.utime(first / "images" / one.samples[0][0], ns=(1, 1))
    cached_image_features(cache, backbone, ImageDataset(one, backbone.eval_transform()), progress=False)
    assert computed == [1, 1]
    cached_image_features(cache, backbone, ImageDataset(one, backbone.eval_transform()), progress=False)
    assert computed == [1, 1]  # unchanged since: reused


@pytest.mark.slow
def test_two_feature_jobs_on_one_cache_folder_at_once(tmp_path, capsys, monkeypatch):
    """`pomp features` twice at once into one cache folder (two terminals, a team disk): the first pauses
    between writing its part and merging it while the second, a real process, runs to its end. Both
    succeed, one complete cache is left, equal to features computed afresh, and no parts folder."""
    import pomp
    from pomp.train import Dist

    data = make_class_folders(tmp_path / "data", num_classes=3, per_class=3)
    weights = tiny_weights(tmp_path / "w.pt", seed=3)  # both processes must hold the same weights
    cache = tmp_path / "cache"
    argv = ["features", "--backbone", TINY, "--pretrained", str(weights), "--data", str(data / "images"),
            "--names", str(data / "names.txt"), "--out-dir", str(cache), "--device", "cpu", "--num-workers", "0",
            "--no-progress"]
    other = []

    def barrier(self) -> None:  # the first job's own part is written: the other job runs now, start to end
        if not other and list(cache.glob("images/.parts-*/rank0.npz")):
            other.append(subprocess.run([sys.executable, "-m", "pomp.cli", *argv], cwd=REPO, env=ENV,
                                        capture_output=True, text=True, timeout=120))

    monkeypatch.setattr(Dist, "barrier", barrier)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(argv)
    assert other and other[0].returncode == 0, other and other[0].stderr[-2000:]
    assert rc == 0, capsys.readouterr().err
    entries = sorted((cache / "images").iterdir())
    assert len(entries) == 1 and not entries[0].name.startswith("."), entries  # one cache, no parts folder left

    bb = pomp.load_backbone(TINY, str(weights))
    images = scan_class_folders(data / "images", read_names_file(data / "names.txt"))
    expected = compute_image_features(bb, ImageDataset(images, bb.eval_transform()), progress=False)
    got = np.load(entries[0] / "features.npy")
    torch.testing.assert_close(torch.from_numpy(got).float(), expected.features, atol=2e-3, rtol=0)  # float16
    assert np.array_equal(np.load(entries[0] / "labels.npy"), expected.labels.numpy())


def test_a_windows_zip_unpacked_by_python_is_named_as_such(tmp_path):
    """Windows tools store `images\\cat\\1.jpg` (MS-DOS host, backslashes); Python's zipfile and
    `shutil.unpack_archive` keep the backslashes in flat file names on Linux. The refusal says so."""
    import zipfile

    archive = tmp_path / "dataset.zip"
    with zipfile.ZipFile(archive, "w") as z:
        for folder in ("cat", "dog"):
            for i in range(2):
                info = zipfile.ZipInfo(f"images\\{folder}\\{i}.jpg")
                info.create_system = 0  # MS-DOS/Windows, as Windows writes it
                z.writestr(info, jpeg_bytes())
    shutil.unpack_archive(archive, tmp_path / "unpacked")
    assert sorted(p.name for p in (tmp_path / "unpacked").iterdir())[0] == "images\\cat\\0.jpg"  # flat files
    with pytest.raises(ValueError, match=r"no images found \(skipped 4 entries: 4 files named with Windows paths "
                                         r"\(`images\\cat\\1\.jpg`: a zip made on Windows, unpacked by Python's "
                                         r"zipfile or shutil; `unzip` makes the folders\)"):
        scan_class_folders(tmp_path / "unpacked")
