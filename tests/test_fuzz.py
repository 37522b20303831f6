"""Property-based tests: arbitrary arguments and files give a result or one clear error, never a crash.

- `pomp pretrain` flags: any value is either accepted (the run starts) or refused with one line on
  stderr and exit 2 before anything is loaded or written.
- split files, names files and class lists: any content parses or raises ValueError/FileNotFoundError.
- images, prompt files and official checkpoints with random damage: loaded, or ValueError.

Examples are few and derandomized (the same on every run); raise `max_examples` locally to dig deeper.
"""

from __future__ import annotations

import io
import json
import math
import tempfile
import warnings
from pathlib import Path

import pytest
import torch
from conftest import TINY_CONFIG as TINY
from conftest import one_line
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

import pomp.train as train_module
from pomp.cli import main
from pomp.data.folder import LabelledImages, read_class_list, read_names_file
from pomp.data.images import load_rgb
from pomp.data.splits import load_or_make_split, read_split_file
from pomp.data.synthetic import make_class_folders
from pomp.interop import load_official, save_official
from pomp.prompt import Prompt

REPO = Path(__file__).resolve().parents[1]
FUZZ = dict(deadline=None, derandomize=True, database=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# --- CLI arguments -------------------------------------------------------------------------------
INT_FLAGS = {"n_ctx": 1, "epochs": 1, "batch_size": 1, "views": 1, "shots": 1, "val_per_class": 0,
             "classes_per_step": 0, "warmup_epochs": 0, "text_chunk_size": 1, "num_workers": 0, "checkpoint_every": 1,
             "max_bad_steps": 1, "log_every": 1, "seed": 0, "split_seed": 0, "max_steps": 0}
# name -> (lowest, lowest allowed, upper bound exclusive)
FLOAT_FLAGS = {"lr": (0.0, False, None), "warmup_lr": (0.0, True, None), "momentum": (0.0, True, 1.0),
               "weight_decay": (0.0, True, None), "logit_scale": (0.0, False, None), "margin": (None, True, None)}


def expected_fault(flag: str, text: str) -> str | None:
    """The oracle: 'parse' when argparse refuses the text, 'value' when the run must refuse it, else None."""
    if flag in INT_FLAGS:
        try:
            value = int(text)
        except ValueError:
            return "parse"
        ok = value >= INT_FLAGS[flag] and (flag not in ("seed", "split_seed") or value < 2**32)
        ok = ok and not (flag == "classes_per_step" and value == 1)  # K = 1: no negative to contrast with
        return None if ok else "value"
    try:
        value = float(text)
    except ValueError:
        return "parse"
    low, low_ok, high = FLOAT_FLAGS[flag]
    ok = math.isfinite(value) and (low is None or value > low or (low_ok and value == low))
    return None if ok and (high is None or value < high) else "value"


numbers = st.one_of(
    st.integers(-5, 40), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True), st.sampled_from(["nan", "inf", "-inf", "1e999", "0", "-0.0"]),
)
flag_values = st.one_of(numbers.map(str), st.text(max_size=12))


@settings(max_examples=120, **FUZZ)
@given(values=st.dictionaries(st.sampled_from(sorted(INT_FLAGS) + sorted(FLOAT_FLAGS)), flag_values, max_size=4))
def test_pretrain_flags_run_or_fail_with_one_line(values, capsys, monkeypatch, tmp_path):
    def started(*args, **kwargs):  # every check passed: the run would start here
        raise ValueError("SENTINEL: the run started")

    monkeypatch.setattr(train_module, "init_distributed", started)
    argv = ["pretrain", "--backbone", TINY, "--out-dir", str(tmp_path / "never-created"), "--no-progress",
            "--train-root", str(tmp_path / "data")]
    for flag, text in values.items():
        argv.append(f"--{flag.replace('_', '-')}={text}")  # '=' so that "-3" is a value, not an option
    faults = {flag: expected_fault(flag, text) for flag, text in values.items()}
    try:
        rc = main(argv)
    except SystemExit as exit_info:  # argparse refused a value
        rc = exit_info.code
        line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
        assert rc == 2 and "parse" in faults.values(), (values, line)
        return
    line = one_line(capsys.readouterr().err, "pomp pretrain: error: ")
    assert rc == 2
    assert "parse" not in faults.values(), (values, line)
    refused = [f for f, fault in faults.items() if fault == "value"]
    if refused:
        assert any(f"--{f.replace('_', '-')} " in line for f in refused), (values, line)
    else:
        assert "SENTINEL" in line, (values, line)
    assert not (tmp_path / "never-created").exists()


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    return make_class_folders(tmp_path_factory.mktemp("fuzz-data"), num_classes=4, per_class=3, size=32)


@settings(max_examples=4, **FUZZ)
@given(n_ctx=st.integers(1, 4), views=st.integers(1, 3), batch_size=st.integers(1, 9),
       classes_per_step=st.integers(0, 6), shots=st.integers(1, 3), lr=st.floats(1e-4, 1.0))
def test_valid_small_settings_run_cleanly(small_data, capsys, n_ctx, views, batch_size, classes_per_step, shots, lr):
    with tempfile.TemporaryDirectory() as out:
        argv = ["pretrain", "--backbone", TINY, "--train-root", str(small_data / "images"),
                "--names", str(small_data / "names.txt"), "--out-dir", out, "--no-progress", "--num-workers", "0",
                "--device", "cpu", "--epochs", "1", "--max-steps", "2", "--val-per-class", "1",
                f"--n-ctx={n_ctx}", f"--views={views}", f"--batch-size={batch_size}",
                f"--classes-per-step={classes_per_step}", f"--shots={shots}", f"--lr={lr}"]
        rc = main(argv)
        captured = capsys.readouterr()
        assert rc == 0, captured.err
        summary = json.loads(captured.out)
        assert summary["global_step"] >= 1 and summary["bad_steps"] == 0
        assert Prompt.load(Path(out) / "prompt.safetensors").n_ctx == n_ctx


# --- split files, names files, class lists -------------------------------------------------------
@pytest.fixture(scope="module")
def image_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("split-images")
    for rel in ("a/1.png", "a/2.png", "b/1.png", "c/1.png"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / rel)
    return root


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4),
    max_leaves=20,
)
entries = st.lists(
    st.one_of(
        st.tuples(st.sampled_from(["a/1.png", "a/2.png", "b/1.png", "c/1.png", "missing.png", "", "/etc/hostname",
                                   "../x.png", "a" * 300]),
                  st.one_of(st.integers(-2, 4), st.booleans(), st.floats(0, 3), st.just("1")),
                  st.sampled_from(["cat", "dog", "bird", "", " _ ", "日本", "Ñandú", 7])).map(list),
        json_values,
    ),
    max_size=6,
)
split_like = st.dictionaries(st.sampled_from(["train", "val", "test", "x"]), st.one_of(entries, json_values),
                             max_size=3)


def check_split_result(result: LabelledImages) -> None:
    assert len(result) >= 1 and result.classnames and all(isinstance(c, str) and c for c in result.classnames)
    assert all(0 <= label < len(result.classnames) for _, label in result.samples)
    assert all((result.root / rel).is_file() for rel, _ in result.samples)


@settings(max_examples=150, **FUZZ)
@given(content=st.one_of(split_like, json_values))
def test_split_parser_parses_or_raises_value_error(image_root, content):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "split.json"
        path.write_text(json.dumps(content), encoding="utf-8")
        for split in ("train", "test"):
            try:
                check_split_result(read_split_file(path, split, image_root))
            except (ValueError, FileNotFoundError) as err:
                assert str(path) in str(err)


@settings(max_examples=60, **FUZZ)
@given(raw=st.one_of(st.binary(max_size=64), st.text(max_size=64).map(lambda t: t.encode("utf-8"))))
def test_split_parser_on_raw_bytes(image_root, raw):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "split.json"
        path.write_bytes(raw)
        try:
            check_split_result(read_split_file(path, "train", image_root))
        except (ValueError, FileNotFoundError) as err:
            assert str(path) in str(err)


@settings(max_examples=40, **FUZZ)
@given(content=split_like)
def test_saved_split_reuse_parses_or_raises_value_error(image_root, content):
    images = LabelledImages(image_root, [("a/1.png", 0), ("b/1.png", 1)], ["cat", "dog"])
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "split.json"
        path.write_text(json.dumps(content), encoding="utf-8")
        try:
            splits = load_or_make_split(path, images, shots=1, val_per_class=0, seed=0)
        except (ValueError, FileNotFoundError) as err:
            assert str(path) in str(err)
        else:
            assert splits["train"].classnames == images.classnames


names_text = st.text(alphabet=st.sampled_from(list("ab_ ,#\t\n\r") + ["é", "日", "\u2028", "\x0c"]), max_size=40)


@settings(max_examples=150, **FUZZ)
@given(raw=st.one_of(names_text.map(lambda t: t.encode("utf-8")), st.binary(max_size=40)),
       first_synonym=st.booleans())
def test_names_file_and_class_list_parse_or_raise_value_error(raw, first_synonym):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "names.txt"
        path.write_bytes(raw)
        try:
            mapping = read_names_file(path, first_synonym=first_synonym)
        except (ValueError, FileNotFoundError) as err:
            assert str(path) in str(err)
        else:
            assert mapping and all(isinstance(k, str) and k and isinstance(v, str) and v for k, v in mapping.items())
        try:
            names = read_class_list(path)
        except (ValueError, FileNotFoundError) as err:
            assert str(path) in str(err)
        else:
            assert names and all(isinstance(n, str) and n and n == n.strip() for n in names)


# --- damaged images, prompts, checkpoints --------------------------------------------------------
def _encoded(fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (16, 12), (10, 200, 30)).save(buffer, fmt)
    return buffer.getvalue()


SEED_FILES = {fmt: _encoded(fmt) for fmt in ("JPEG", "PNG", "GIF", "BMP", "TIFF", "WEBP", "PPM")}


@st.composite
def damaged(draw, original: bytes):
    """`original` with a few bytes overwritten, cut, or inserted."""
    data = bytearray(original)
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.sampled_from(["set", "cut", "insert"]))
        at = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "set" and data:
            data[at] = draw(st.integers(0, 255))
        elif kind == "cut":
            del data[at:]
        else:
            data[at:at] = draw(st.binary(min_size=1, max_size=16))
    return bytes(data)


@settings(max_examples=150, **FUZZ)
@given(data=st.sampled_from(sorted(SEED_FILES)).flatmap(lambda fmt: damaged(SEED_FILES[fmt])))
def test_damaged_image_loads_or_raises_value_error(data):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "image.jpg"
        path.write_bytes(data)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                image = load_rgb(path)
            except ValueError as err:
                assert str(err) and "\n" not in str(err)
            else:
                assert image.mode == "RGB" and image.width * image.height >= 1


def _prompt_files() -> dict[str, bytes]:
    with tempfile.TemporaryDirectory() as tmp:
        prompt = Prompt(torch.randn(4, 48) * 0.02)
        tensor = prompt.save(Path(tmp) / "p.safetensors")
        official = save_official(prompt, Path(tmp) / "model.pth.tar-5", epoch=5)
        return {"safetensors": tensor.read_bytes(), "json": (Path(tmp) / "p.json").read_bytes(),
                "official": official.read_bytes()}


PROMPT_FILES = _prompt_files()


@settings(max_examples=100, **FUZZ)
@given(which=st.sampled_from(["safetensors", "json"]), data=st.data())
def test_damaged_prompt_loads_or_raises_value_error(which, data):
    damaged_bytes = data.draw(damaged(PROMPT_FILES[which]))
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "p.safetensors").write_bytes(PROMPT_FILES["safetensors"])
        (Path(tmp) / "p.json").write_bytes(PROMPT_FILES["json"])
        (Path(tmp) / f"p.{which}").write_bytes(damaged_bytes)
        try:
            prompt = Prompt.load(Path(tmp) / "p.safetensors")
        except ValueError as err:
            assert "p." in str(err)
        else:
            assert prompt.n_ctx >= 1 and prompt.width >= 1 and bool(torch.isfinite(prompt.ctx).all())


@settings(max_examples=80, **FUZZ)
@given(data=st.data())
def test_damaged_official_checkpoint_loads_or_raises_value_error(data):
    damaged_bytes = data.draw(damaged(PROMPT_FILES["official"]))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "model.pth.tar-5"
        path.write_bytes(damaged_bytes)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                prompt = load_official(path)
            except ValueError as err:
                assert str(path) in str(err)
            else:
                assert prompt.n_ctx >= 1 and bool(torch.isfinite(prompt.ctx).all())
