"""Reliability: bad input, interruptions and untrusted files never lose work (issue 7).

Each test pins one promise: a bad image is skipped with its path and reason and counted; a bad
split, class list or prompt stops the CLI before work starts with one line on stderr (exit 2);
a pickle payload is refused, never run; `kill -9` at any moment loses at most the steps since
the last checkpoint and `--resume` then ends bitwise where an uninterrupted run ends; output
trouble is found at start; non-finite steps are skipped, counted, and stop the run with its
last good checkpoint intact.
"""

from __future__ import annotations

import errno
import io
import json
import os
import pickle
import random
import re
import shutil
import signal
import struct
import subprocess
import sys
import time
import warnings
import zlib
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIG as TINY
from conftest import assert_one_line_error, mounted_tmpfs, reference_run
from PIL import Image

import pomp.train as train_module
from pomp.cli import main
from pomp.data.folder import ImageDataset, read_names_file, scan_class_folders
from pomp.data.images import load_rgb
from pomp.data.splits import write_split_file
from pomp.data.synthetic import make_class_folders
from pomp.data.transforms import ImageSpec, eval_transform
from pomp.interop import load_any, load_official
from pomp.io import (
    atomic_write,
    atomic_write_safetensors,
    atomic_write_text,
    check_writable_dir,
    remove_stale_temp_files,
)
from pomp.prompt import Prompt
from pomp.train import PretrainConfig, load_checkpoint, pretrain

REPO = Path(__file__).resolve().parents[1]
TEXT_WIDTH = 48  # tiny-clip.json text width


# --- helpers -----------------------------------------------------------------------------------
def pretrain_argv(data: Path, out: Path, *extra: str) -> list[str]:
    return ["pretrain", "--backbone", TINY, "--train-root", str(data / "images"), "--names", str(data / "names.txt"),
            "--shots", "4", "--val-per-class", "2", "--classes-per-step", "4", "--batch-size", "4", "--views", "2",
            "--epochs", "2", "--num-workers", "0", "--device", "cpu", "--out-dir", str(out), "--no-progress",
            "--lr", "0.05", *extra]


def config(data: Path, out: Path, **kw) -> PretrainConfig:
    base = dict(backbone=TINY, train_root=str(data / "images"), names=str(data / "names.txt"), shots=4,
                val_per_class=2, classes_per_step=4, batch_size=4, views=2, epochs=2, num_workers=0, device="cpu",
                out_dir=str(out), progress=False, lr=0.05)
    base.update(kw)
    return PretrainConfig(**base)


@pytest.fixture
def no_model(monkeypatch):
    """Fail loudly (an uncaught AssertionError, so a traceback) if a command gets as far as loading a model."""
    import pomp.backbones

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded: the error came after work started")

    monkeypatch.setattr(train_module, "load_backbone", refuse)
    monkeypatch.setattr(pomp.backbones, "load_backbone", refuse)


def png_header(width: int, height: int) -> bytes:
    """A valid PNG signature and IHDR claiming `width x height`, with a few bytes of pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def jpeg_bytes(size: int = 64) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (size, size), (10, 200, 30)).save(buffer, "JPEG")
    return buffer.getvalue()


# kind -> (bytes, a phrase the reason must hold, or None)
BAD_IMAGES = {
    "corrupt": (jpeg_bytes()[:200] + bytes(range(256)) * 4, None),
    "truncated": (jpeg_bytes()[: len(jpeg_bytes()) // 2], "runcated"),
    "zero_byte": (b"", "cannot identify"),
    "text": (b"this is a text file, not a picture\n", "cannot identify"),
    "bomb": (png_header(100_000, 100_000), "decompression bomb"),
    "huge": (png_header(9000, 9000), "exceeds"),
}


def plant_bad_images(images_root: Path, kinds=tuple(BAD_IMAGES)) -> list[Path]:
    """Overwrite one image of each class folder c000, c001, ... with one kind of bad file each."""
    paths = []
    for c, kind in enumerate(kinds):
        path = sorted((images_root / f"c{c:03d}").iterdir())[0]
        path.write_bytes(BAD_IMAGES[kind][0])
        paths.append(path)
    return paths


def warning_texts(caught) -> str:
    return "\n".join(str(w.message) for w in caught)


# --- bad images --------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", list(BAD_IMAGES))
def test_bad_image_gives_its_path_and_reason(tmp_path, kind):
    data, phrase = BAD_IMAGES[kind]
    (tmp_path / "cls").mkdir()
    path = tmp_path / "cls" / f"{kind}.jpg"
    path.write_bytes(data)
    with pytest.raises(ValueError) as info:
        load_rgb(path)
    reason = str(info.value)
    assert reason and "\n" not in reason
    if phrase:
        assert phrase in reason
    dataset = ImageDataset(scan_class_folders(tmp_path), eval_transform(ImageSpec(32, (0.5,) * 3, (0.5,) * 3)))
    with pytest.warns(UserWarning) as caught:
        assert dataset[0] is None
    message = warning_texts(caught)
    assert str(path) in message and reason in message


@pytest.mark.parametrize("cache", [False, True], ids=["image-tower", "feature-cache"])
def test_training_skips_and_counts_bad_images(class_folders, tmp_path, cache):
    bad = plant_bad_images(class_folders / "images")
    cfg = config(class_folders, tmp_path / "run", shots=6, val_per_class=0, validate=False, epochs=1,
                 feature_cache=str(tmp_path / "cache") if cache else None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        summary = pretrain(cfg)
    assert summary["finished"] and summary["skipped_images"] == len(bad)  # 36 images, each read once
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["skipped_images"] == len(bad)
    text = warning_texts(caught)
    for path in bad:
        assert str(path) in text
    assert bool(torch.isfinite(Prompt.load(tmp_path / "run" / "prompt.safetensors").ctx).all())


def test_a_batch_of_only_bad_images_is_survived(tmp_path):
    data = make_class_folders(tmp_path / "data", num_classes=2, per_class=3)
    plant_bad_images(data / "images", kinds=("text", "zero_byte"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        summary = pretrain(config(data, tmp_path / "run", shots=3, val_per_class=0, validate=False, epochs=1,
                                  batch_size=1, classes_per_step=0))
    assert summary["finished"] and summary["global_step"] == 6
    assert summary["skipped_images"] == 2 and summary["bad_steps"] == 0


def test_eval_results_count_bad_images(class_folders, tmp_path, capsys):
    bad = plant_bad_images(class_folders / "images", kinds=("corrupt", "bomb", "text"))
    out = tmp_path / "eval"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(["eval", "--backbone", TINY, "--baseline", "single", "--data", str(class_folders / "images"),
                   "--names", str(class_folders / "names.txt"), "--out-dir", str(out), "--num-workers", "0"])
    assert rc == 0, capsys.readouterr().err
    record = json.loads(next(out.glob("images__*.json")).read_text())
    assert record["skipped_images"] == 3 and record["num_images"] == 33
    for path in bad:
        assert str(path) in warning_texts(caught)


# --- class folders and names ---------------------------------------------------------------------
def non_ascii_folders(root: Path) -> Path:
    data = make_class_folders(root, num_classes=3, per_class=4)
    for old, new in (("c000", "café"), ("c001", "Ñandú"), ("c002", "日本")):
        (data / "images" / old).rename(data / "images" / new)
    (data / "images" / "vacío").mkdir()  # an empty class folder
    names = "café\tcafé au lait\nÑandú\tñandú, rhea\n日本\t日本の猫\nvacío\tclase vacía\n"
    (data / "names.txt").write_text(names, encoding="utf-8")
    return data


def test_non_ascii_class_names_and_an_empty_class_folder_train(tmp_path, capsys):
    data = non_ascii_folders(tmp_path / "data")
    out = tmp_path / "run"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        rc = main(pretrain_argv(data, out, "--shots", "2", "--val-per-class", "1", "--epochs", "1",
                                "--batch-size", "2"))
    assert rc == 0, capsys.readouterr().err
    assert f"{data / 'images' / 'vacío'}: class folder holds no images" in warning_texts(caught)
    assert json.loads((out / "config.json").read_text(encoding="utf-8"))["num_classes"] == 4
    split = (out / "split.json").read_text(encoding="utf-8")
    assert "日本の猫" in split and "ñandú" in split and "café au lait" in split
    assert Prompt.load(out / "prompt.safetensors").n_ctx == 4


def test_names_file_encodings(tmp_path, capsys, no_model):
    data = non_ascii_folders(tmp_path / "data")
    text = (data / "names.txt").read_text(encoding="utf-8")
    (data / "names.txt").write_text(text, encoding="utf-8-sig")  # a BOM is dropped
    assert list(read_names_file(data / "names.txt"))[0] == "café"
    (data / "names.txt").write_bytes(text.split("\n")[0].encode("latin-1") + b"\n")  # not UTF-8
    rc = main(pretrain_argv(data, tmp_path / "run"))
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", str(data / "names.txt"), "not UTF-8")


def _valid_split(class_folders: Path, tmp_path: Path) -> tuple[Path, dict]:
    images = scan_class_folders(class_folders / "images", read_names_file(class_folders / "names.txt"))
    path = tmp_path / "split_zhou_test.json"
    write_split_file(path, {"train": images, "val": images})
    return path, json.loads(path.read_text())


SPLIT_DAMAGE = {
    "missing_image": (lambda d: d["train"][3].__setitem__(0, "c000/nope.jpg"), "missing under"),
    "unknown_label": (lambda d: d["train"][3].__setitem__(1, 17), "labels must be 0..C-1"),
    "negative_label": (lambda d: d["train"][3].__setitem__(1, -1), "negative label"),
    "label_two_names": (lambda d: d["train"][3].__setitem__(2, "some other class"), "named both"),
    "empty_class_name": (lambda d: [e.__setitem__(2, " _ ") for s in d.values() for e in s if e[1] == 0],
                         "empty class name"),
    "malformed_entry": (lambda d: d["train"].append(["c000/img_000.jpg", "zero"]), "malformed entry"),
    "empty_train": (lambda d: d.__setitem__("train", []), "is empty"),
    "no_train": (lambda d: d.pop("train"), "no 'train' split"),
}


@pytest.mark.parametrize("damage", list(SPLIT_DAMAGE) + ["not_json", "not_an_object", "deeply_nested", "a_folder"])
def test_bad_split_file_stops_before_work(class_folders, tmp_path, capsys, no_model, damage):
    path, data = _valid_split(class_folders, tmp_path)
    needle = {"not_json": "not valid JSON", "not_an_object": "no 'train' split", "deeply_nested": "nested too deeply",
              "a_folder": "cannot be read"}.get(damage)
    if damage in SPLIT_DAMAGE:
        change, needle = SPLIT_DAMAGE[damage]
        change(data)
        path.write_text(json.dumps(data), encoding="utf-8")
    elif damage == "not_json":
        path.write_text('{"train": [["c000/img_000.jpg", 0, "x"]', encoding="utf-8")
    elif damage == "not_an_object":
        path.write_text("[1, 2, 3]", encoding="utf-8")
    elif damage == "deeply_nested":
        path.write_text("[" * 100_000 + "]" * 100_000, encoding="utf-8")
    else:
        path.unlink()
        path.mkdir()
    out = tmp_path / "run"
    rc = main(["pretrain", "--backbone", TINY, "--split-file", str(path), "--image-root", str(class_folders / "images"),
               "--out-dir", str(out), "--device", "cpu", "--no-progress", "--num-workers", "0"])
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", str(path), needle)
    assert not (out / "checkpoint.safetensors").exists()


def test_eval_split_naming_missing_images_stops_before_work(class_folders, tmp_path, capsys, no_model):
    path, data = _valid_split(class_folders, tmp_path)
    data["val"][0][0] = "c001/missing.png"
    path.write_text(json.dumps(data))
    rc = main(["eval", "--backbone", TINY, "--baseline", "single", "--data", str(path), "--split", "val",
               "--image-root", str(class_folders / "images"), "--out-dir", str(tmp_path / "eval")])
    assert_one_line_error(rc, capsys.readouterr().err, "eval", str(path), "missing under", "c001/missing.png")


CLASS_LIST_DAMAGE = {
    "names_lists_missing_folder": (lambda d: (d / "names.txt").open("a").write("c999\tghost\n"), "with no folder"),
    "folder_missing_from_names": (lambda d: (d / "images" / "c999").mkdir(), "no name in the names file"),
    "names_listed_twice": (lambda d: (d / "names.txt").open("a").write("c000\tagain\n"), "listed twice"),
    "names_empty_class_name": (lambda d: (d / "names.txt").open("a").write("c999\t ,rhea\n"), "empty folder or class"),
    "names_file_missing": (lambda d: (d / "names.txt").unlink(), "not found"),
    "train_root_missing": (lambda d: shutil.rmtree(d / "images"), "image folder not found"),
}
# a saved split of another class list: replaced by a new run, refused on --resume (tests/test_runs.py)

@pytest.mark.parametrize("damage", list(CLASS_LIST_DAMAGE))
def test_bad_class_list_stops_before_work(class_folders, capsys, no_model, damage):
    change, needle = CLASS_LIST_DAMAGE[damage]
    change(class_folders)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(pretrain_argv(class_folders, class_folders / "run"))
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", needle)
    assert not (class_folders / "run" / "checkpoint.safetensors").exists()


# --- prompt files --------------------------------------------------------------------------------
def test_prompt_for_another_width_is_a_clear_error(class_folders, tmp_path, capsys):
    path = Prompt(torch.zeros(4, TEXT_WIDTH + 16)).save(tmp_path / "wide.safetensors")
    rc = main(["eval", "--backbone", TINY, "--prompt", str(path), "--data", str(class_folders / "images"),
               "--out-dir", str(tmp_path / "eval"), "--num-workers", "0"])
    assert_one_line_error(rc, capsys.readouterr().err, "eval", str(path), "width 64", "text width 48")


def _tamper(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """A damaged copy of a good prompt; returns the path to load and a phrase its error must hold."""
    good = Prompt(torch.randn(4, TEXT_WIDTH) * 0.02)
    tensor = good.save(tmp_path / "p.safetensors")
    sidecar = tmp_path / "p.json"
    raw = tensor.read_bytes()
    from safetensors.torch import save_file

    if kind == "truncated_tensor":
        tensor.write_bytes(raw[: len(raw) // 2])
        return tensor, "not a readable safetensors"
    if kind == "garbage_tensor":
        tensor.write_bytes(b"\x00garbage" * 20)
        return tensor, "not a readable safetensors"
    if kind == "header_claims_too_much":
        tensor.write_bytes(struct.pack("<Q", 10**12) + raw[8:])
        return tensor, "not a readable safetensors"
    if kind == "empty_tensor_file":
        tensor.write_bytes(b"")
        return tensor, "not a readable safetensors"
    if kind == "nan_context":
        save_file({"ctx": torch.full((4, TEXT_WIDTH), float("nan"))}, str(tensor))
        return tensor, "NaN"
    if kind == "empty_context":
        save_file({"ctx": torch.zeros(0, TEXT_WIDTH)}, str(tensor))
        sidecar.unlink()
        return tensor, "non-empty"
    if kind == "integer_context":
        save_file({"ctx": torch.zeros(4, TEXT_WIDTH, dtype=torch.int32)}, str(tensor))
        return tensor, "float"
    if kind == "no_context":
        save_file({"weights": torch.zeros(4, TEXT_WIDTH)}, str(tensor))
        return tensor, "no 'ctx'"
    if kind == "truncated_json":
        sidecar.write_text(sidecar.read_text()[:30])
        return tensor, "not valid JSON"
    if kind == "json_not_object":
        sidecar.write_text("[4, 48]")
        return tensor, "JSON object"
    if kind == "json_other_n_ctx":
        meta = json.loads(sidecar.read_text())
        meta["n_ctx"] = 8
        sidecar.write_text(json.dumps(meta))
        return tensor, "n_ctx=8"
    raise AssertionError(kind)


TAMPERED = ["truncated_tensor", "garbage_tensor", "header_claims_too_much", "empty_tensor_file", "nan_context",
            "empty_context", "integer_context", "no_context", "truncated_json", "json_not_object", "json_other_n_ctx"]


@pytest.mark.parametrize("kind", TAMPERED)
def test_tampered_prompt_file_is_a_clear_error(tmp_path, capsys, kind):
    path, phrase = _tamper(kind, tmp_path)
    with pytest.raises(ValueError, match=None) as info:
        Prompt.load(path)
    assert phrase in str(info.value)
    rc = main(["info", str(path)])
    assert_one_line_error(rc, capsys.readouterr().err, "info", "p.", phrase)


class _CreatesFile:
    """Unpickling this calls `open(path, "w")`: a stand-in for any code a checkpoint could run."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def _evil_checkpoint(path: Path, marker: Path, style: str) -> Path:
    payload = {"state_dict": {"ctx": torch.zeros(4, TEXT_WIDTH)}, "epoch": 5, "x": _CreatesFile(marker)}
    if style == "zip":
        torch.save(payload, path)
    elif style == "legacy":
        torch.save(payload, path, _use_new_zipfile_serialization=False)
    else:  # a bare pickle named like a checkpoint
        path.write_bytes(pickle.dumps(payload))
    return path


@pytest.mark.parametrize("style", ["zip", "legacy", "plain_pickle"])
def test_checkpoint_carrying_code_never_runs_it(tmp_path, capsys, style):
    # the payload is live: an unsafe load does create its file
    proof = tmp_path / "proof-marker"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if style == "plain_pickle":
            unsafe = pickle.loads(_evil_checkpoint(tmp_path / "proof.pth.tar", proof, style).read_bytes())
        else:
            unsafe = torch.load(_evil_checkpoint(tmp_path / "proof.pth.tar", proof, style), weights_only=False)
    unsafe["x"].close()  # the file the payload opened
    assert proof.exists()

    marker = tmp_path / "marker"
    path = _evil_checkpoint(tmp_path / "model.pth.tar-5", marker, style)
    out = tmp_path / "out.safetensors"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch notes the unusual pickle protocol of a bare pickle
        if style in ("zip", "legacy"):  # the restricted unpickler: the payload becomes an inert placeholder
            for load in (load_official, load_any):
                assert torch.equal(load(path).ctx, torch.zeros(4, TEXT_WIDTH))
            assert main(["info", str(path)]) == 0
            assert main(["convert", str(path), str(out)]) == 0 and out.is_file()
        else:  # a bare pickle is no torch file (no magic number): refused in one line
            for load in (load_official, load_any):
                with pytest.raises(ValueError, match=re.escape(str(path))):
                    load(path)
            capsys.readouterr()
            assert_one_line_error(main(["info", str(path)]), capsys.readouterr().err, "info", str(path))
            rc = main(["convert", str(path), str(out)])
            assert_one_line_error(rc, capsys.readouterr().err, "convert", str(path))
            assert not out.exists()
    assert not marker.exists(), "the checkpoint's code ran"


def test_resume_refuses_checkpoints_that_do_not_fit(class_folders, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(pretrain_argv(class_folders, out, "--max-steps", "1", "--no-validate")) == 0
    capsys.readouterr()
    checkpoint = out / "checkpoint.safetensors"
    good = checkpoint.read_bytes()

    rc = main(pretrain_argv(class_folders, out, "--resume", "--n-ctx", "6", "--no-validate"))
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", str(checkpoint), "n_ctx 4 -> 6")

    checkpoint.write_bytes(good[: len(good) // 2])
    rc = main(pretrain_argv(class_folders, out, "--resume", "--no-validate"))
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", str(checkpoint), "unreadable checkpoint")

    from safetensors.torch import save_file

    save_file({"ctx": torch.full((4, TEXT_WIDTH), float("inf"))}, str(checkpoint),
              metadata={"state": json.dumps({"global_step": 1, "best_val_acc1": None, "best_epoch": None,
                                             "bad_steps": 0, "skipped_images": 0, "history": []})})
    rc = main(pretrain_argv(class_folders, out, "--resume", "--no-validate"))
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", str(checkpoint), "NaN or inf")

    save_file({"ctx": torch.zeros(4, TEXT_WIDTH)}, str(checkpoint), metadata={"state": "[1, 2]"})
    rc = main(pretrain_argv(class_folders, out, "--resume", "--no-validate"))
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", str(checkpoint), "not a pomp checkpoint")


# --- interruptions -------------------------------------------------------------------------------
def _assert_outputs_loadable(out: Path) -> None:
    """Every output file is whole: prompts and the checkpoint load, JSON parses; temporaries are hidden."""
    for path in out.iterdir():
        if path.name.startswith("."):
            assert path.name.endswith(".tmp") or path.name.startswith(".pomp-write-test."), path
            continue
        if path.name == "checkpoint.safetensors":
            prompt = Prompt(torch.zeros(4, TEXT_WIDTH))
            state = load_checkpoint(path, prompt, torch.optim.SGD([prompt.ctx], lr=0.1, momentum=0.9))
            assert state["global_step"] >= 1
        elif path.suffix == ".safetensors":
            assert bool(torch.isfinite(Prompt.load(path).ctx).all())
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".jsonl":
            for line in path.read_text().splitlines():
                json.loads(line)


def _checkpoint_stamp(path: Path):
    try:
        return path.stat().st_mtime_ns, path.stat().st_ino
    except FileNotFoundError:
        return None


@pytest.mark.slow
def test_kill_9_then_resume_equals_an_uninterrupted_run(class_folders, tmp_path, capsys):
    argv = pretrain_argv(class_folders, tmp_path / "full", "--checkpoint-every", "1")
    out = tmp_path / "killed"
    expected, argv = reference_run(argv, tmp_path / "full", out)
    capsys.readouterr()
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    kills = []
    for attempt in range(2):  # kill the first run, then kill its resumption too
        before = _checkpoint_stamp(out / "checkpoint.safetensors")
        with open(tmp_path / f"stderr-{attempt}.txt", "w") as log:
            proc = subprocess.Popen([sys.executable, "-m", "pomp.cli", *argv, *(["--resume"] if attempt else [])],
                                    cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=log)
            try:
                deadline = time.monotonic() + 120
                # wait until this process has written a checkpoint of its own: training is under way
                while (proc.poll() is None and time.monotonic() < deadline
                       and _checkpoint_stamp(out / "checkpoint.safetensors") in (None, before)):
                    time.sleep(0.005)
                delay = rng.uniform(0.0, 1.5)
                time.sleep(delay)
                alive = proc.poll() is None
                proc.send_signal(signal.SIGKILL)
            finally:
                proc.kill()
                proc.wait()
        kills.append((round(delay, 3), alive))
        assert alive or proc.returncode == 0, (seed, (tmp_path / f"stderr-{attempt}.txt").read_text()[-2000:])
        _assert_outputs_loadable(out)

    assert main(argv + ["--resume"]) == 0, (seed, kills, capsys.readouterr().err)
    resumed = Prompt.load(out / "prompt.safetensors").ctx
    assert torch.equal(resumed, expected), f"random seed {seed}, kills (delay s, still running) {kills}"
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]  # the resumed run swept them away
    assert json.loads((out / "summary.json").read_text())["finished"]


def test_a_failed_write_leaves_the_previous_file_and_no_temporary(tmp_path):
    path = atomic_write_text(tmp_path / "result.json", '{"good": true}\n')

    def half_then_full_disk(p: Path) -> None:
        p.write_text('{"go')
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(OSError) as info:
        atomic_write(path, half_then_full_disk)
    assert info.value.errno == errno.ENOSPC
    assert str(path) in str(info.value) and "previous version is unchanged" in str(info.value)
    assert json.loads(path.read_text()) == {"good": True}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]

    (tmp_path / ".result.json.abc123.tmp").write_text("half")
    (tmp_path / "notes.tmp").write_text("a user's file")
    assert [p.name for p in remove_stale_temp_files(tmp_path)] == [".result.json.abc123.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.tmp", "result.json"]


def test_disk_full_mid_run_keeps_the_last_checkpoint(class_folders, tmp_path, capsys, monkeypatch):
    """Simulated ENOSPC on the third checkpoint write (the real full file system: test_runs.py)."""
    calls = []

    def save_until_the_disk_fills(path, tensors, metadata=None):
        calls.append(path)
        if len(calls) < 3:
            return atomic_write_safetensors(path, tensors, metadata)

        def partial_then_full(p: Path) -> None:
            p.write_bytes(b"\x00" * 10)  # a partial file, then the disk is full
            raise OSError(errno.ENOSPC, "No space left on device")

        return atomic_write(path, partial_then_full)

    monkeypatch.setattr(train_module, "atomic_write_safetensors", save_until_the_disk_fills)
    out = tmp_path / "run"
    rc = main(pretrain_argv(class_folders, out, "--checkpoint-every", "1", "--no-validate"))
    checkpoint = out / "checkpoint.safetensors"
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", str(checkpoint), "No space left on device")
    prompt = Prompt(torch.zeros(4, TEXT_WIDTH))
    state = load_checkpoint(checkpoint, prompt, torch.optim.SGD([prompt.ctx], lr=0.1, momentum=0.9))
    assert state["global_step"] == 2 and bool(torch.isfinite(prompt.ctx).all())
    assert not [p for p in out.iterdir() if p.name.startswith(".")]


# --- output trouble ------------------------------------------------------------------------------
def _unwritable(kind: str, tmp_path: Path) -> Path:
    if kind == "parent_is_a_file":
        (tmp_path / "a_file").write_text("x")
        return tmp_path / "a_file" / "out"
    if kind == "is_a_file":
        (tmp_path / "a_file").write_text("x")
        return tmp_path / "a_file"
    if kind == "proc":
        if not Path("/proc/self").is_dir():
            pytest.skip("no /proc file system here")
        return Path("/proc/pomp-cannot-write-here/out")
    if kind == "read_only_dir":
        if os.geteuid() == 0:
            pytest.skip("running as root: chmod 555 does not stop root from writing (other cases cover the path)")
        (tmp_path / "ro").mkdir()
        (tmp_path / "ro").chmod(0o555)
        return tmp_path / "ro" / "out"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["parent_is_a_file", "is_a_file", "proc", "read_only_dir"])
def test_unwritable_output_fails_at_start(class_folders, tmp_path, capsys, no_model, kind):
    target = _unwritable(kind, tmp_path)
    try:
        rc = main(pretrain_argv(class_folders, target))
        assert_one_line_error(rc, capsys.readouterr().err, "pretrain", str(target), "not writable")
        rc = main(pretrain_argv(class_folders, tmp_path / "ok", "--feature-cache", str(target)))
        assert_one_line_error(rc, capsys.readouterr().err, "pretrain", str(target), "not writable")
        assert not (tmp_path / "ok" / "split.json").exists()
        rc = main(["eval", "--backbone", TINY, "--baseline", "single", "--data", str(class_folders / "images"),
                   "--out-dir", str(target)])
        assert_one_line_error(rc, capsys.readouterr().err, "eval", str(target), "not writable")
        vocab = tmp_path / "vocab.txt"
        vocab.write_text("cat\ndog\n")
        rc = main(["embed", "--backbone", TINY, "--classes", str(vocab), "--out-dir", str(target)])
        assert_one_line_error(rc, capsys.readouterr().err, "embed", str(target), "not writable")
    finally:
        if kind == "read_only_dir":
            (tmp_path / "ro").chmod(0o755)


def test_full_disk_fails_at_start_simulated(class_folders, tmp_path, capsys, no_model, monkeypatch):
    def no_space(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    rc = main(pretrain_argv(class_folders, tmp_path / "run"))
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", "not writable", "No space left on device")
    assert not (tmp_path / "run").exists()  # the write probe is gone, and the folder the refused run made


def test_full_disk_fails_at_start_real_tmpfs(class_folders, tmp_path, capsys, no_model):
    with mounted_tmpfs(tmp_path / "tiny-fs", "64k", "the simulated ENOSPC test covers this path") as mount:
        with open(mount / "filler", "wb", buffering=0) as f:  # fill it
            try:
                while True:
                    f.write(b"\0" * 4096)
            except OSError as err:
                assert err.errno == errno.ENOSPC
        with pytest.raises(PermissionError, match="No space left on device"):
            check_writable_dir(mount / "out")
        rc = main(pretrain_argv(class_folders, mount / "out"))
        assert_one_line_error(rc, capsys.readouterr().err, "pretrain", "not writable", "No space left on device")


# --- numerics ------------------------------------------------------------------------------------
def _inject_nan(monkeypatch, bad_calls):
    """Make the loss of the given step calls (0-based) NaN; a `-k` entry gives a NaN loss with a finite gradient."""
    real = train_module.local_contrast_loss
    calls = []

    def loss(*args, **kwargs):
        value = real(*args, **kwargs)
        i = len(calls)
        calls.append(i)
        if bad_calls(i) == "graph":
            return value * float("nan")  # NaN loss and NaN gradient
        if bad_calls(i) == "value":
            return value + torch.tensor(float("nan"))  # NaN loss, finite gradient
        return value

    monkeypatch.setattr(train_module, "local_contrast_loss", loss)
    return calls


def test_non_finite_steps_are_skipped_and_counted(class_folders, tmp_path, monkeypatch):
    _inject_nan(monkeypatch, lambda i: {1: "graph", 3: "value", 4: "graph"}.get(i))
    with pytest.warns(UserWarning, match="non-finite loss or gradient"):
        summary = pretrain(config(class_folders, tmp_path / "run", epochs=1, validate=False))
    assert summary["finished"] and summary["global_step"] == 6 and summary["bad_steps"] == 3
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["bad_steps"] == 3
    assert bool(torch.isfinite(Prompt.load(tmp_path / "run" / "prompt.safetensors").ctx).all())


def test_too_many_bad_steps_stop_with_the_last_good_checkpoint(class_folders, tmp_path, capsys, monkeypatch):
    reference = pretrain(config(class_folders, tmp_path / "ref", max_steps=3, validate=False))
    assert reference["global_step"] == 3
    good = Prompt.load(tmp_path / "ref" / "prompt.safetensors").ctx  # the context after the 3 good steps

    _inject_nan(monkeypatch, lambda i: "graph" if i >= 3 else None)
    out = tmp_path / "run"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(pretrain_argv(class_folders, out, "--checkpoint-every", "1", "--max-bad-steps", "3",
                                "--no-validate"))
    checkpoint = out / "checkpoint.safetensors"
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", "3 consecutive non-finite steps",
                          f"last good checkpoint: {checkpoint}")
    prompt = Prompt(torch.zeros(4, TEXT_WIDTH))
    state = load_checkpoint(checkpoint, prompt, torch.optim.SGD([prompt.ctx], lr=0.1, momentum=0.9))
    assert torch.equal(prompt.ctx.detach(), good)
    assert state["bad_steps"] == 2  # the third bad step stopped the run before another checkpoint
    assert not (out / "prompt.safetensors").exists() and not (out / "summary.json").exists()


def test_bad_steps_from_the_start_say_no_checkpoint_was_written(class_folders, tmp_path, capsys, monkeypatch):
    _inject_nan(monkeypatch, lambda i: "graph")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rc = main(pretrain_argv(class_folders, tmp_path / "run", "--max-bad-steps", "2", "--no-validate"))
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", "2 consecutive", "no checkpoint was written")


@pytest.mark.parametrize("flag,value", [("--logit-scale", "inf"), ("--logit-scale", "nan"), ("--lr", "nan"),
                                        ("--margin", "-inf"), ("--weight-decay", "1e999")])
def test_non_finite_settings_are_refused_before_work(class_folders, tmp_path, capsys, no_model, flag, value):
    rc = main(pretrain_argv(class_folders, tmp_path / "run", f"{flag}={value}"))  # "=": "-inf" is no option
    assert_one_line_error(rc, capsys.readouterr().err, "pretrain", flag, "finite")
    assert not (tmp_path / "run").exists()
