"""One reader for names files and class lists (`pomp.data.names`), and every command reading through it.

Files are written as their producers write them: a Windows editor's UTF-8 with a BOM and CRLF
line ends, macOS-style decomposed (NFD) accents, timm's WordNet lemma lists. Expected values are
written out by hand.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import unicodedata
import warnings
from pathlib import Path

import pytest
from conftest import assert_one_line_error

from pomp.cli import main
from pomp.data.names import clean_classname, read_class_list, read_names_file, warn_coinciding_names

REPO = Path(__file__).resolve().parents[1]
LEMMAS = "n02123045\ttabby, tabby cat\nn02119789\tkit_fox, Vulpes macrotis\nn03063599\tcoffee mug\n"


def one_line_error(capsys, rc: int, command: str, *needles: str) -> str:
    return assert_one_line_error(rc, capsys.readouterr().err, command, *needles)


# --- the reader ------------------------------------------------------------------------------------
def test_first_lemma_in_names_files_and_class_lists(tmp_path):
    names = tmp_path / "names.txt"
    names.write_text(LEMMAS, encoding="utf-8")
    assert read_names_file(names) == {"n02123045": "tabby", "n02119789": "kit fox", "n03063599": "coffee mug"}
    assert read_class_list(names) == ["tabby", "kit fox", "coffee mug"]  # a names file used as a class list
    plain = tmp_path / "vocab.txt"
    plain.write_text("tabby, tabby cat\nkit_fox, Vulpes macrotis\ncoffee mug\n", encoding="utf-8")
    assert read_class_list(plain) == ["tabby", "kit fox", "coffee mug"]


def test_windows_file_with_bom_and_crlf_reads_like_a_unix_one(tmp_path):
    unix, windows = tmp_path / "unix.txt", tmp_path / "windows.txt"
    unix.write_bytes(LEMMAS.encode("utf-8"))
    windows.write_bytes(("\ufeff" + LEMMAS.replace("\n", "\r\n") + "\r\n").encode("utf-8"))  # trailing blank line
    assert read_names_file(windows) == read_names_file(unix)
    assert list(read_names_file(windows))[0] == "n02123045"  # the BOM is not part of the first folder
    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes("\ufeffcat\r\ndog\r\n\r\n\r\n".encode("utf-8"))
    assert read_class_list(vocab) == ["cat", "dog"]


def test_windows_unicode_files_read_like_utf8_ones(tmp_path):
    """Notepad's "Unicode" (UTF-16 LE) and "Unicode big endian" write a byte-order mark; so do UTF-32 tools."""
    unix = tmp_path / "unix.txt"
    unix.write_text(LEMMAS + "n01\tcafé\n", encoding="utf-8")
    for codec in ("utf-16", "utf-16-be", "utf-32"):
        path = tmp_path / f"{codec}.txt"
        text = (LEMMAS + "n01\tcafé\n").replace("\n", "\r\n")
        path.write_bytes(("\ufeff" + text).encode(codec) if codec.endswith("-be") else text.encode(codec))
        assert path.read_bytes()[:2] in (b"\xff\xfe", b"\xfe\xff")
        assert read_names_file(path) == read_names_file(unix), codec
        assert read_class_list(path) == ["tabby", "kit fox", "coffee mug", "café"]


def test_utf16_without_a_byte_order_mark_is_refused_naming_the_line(tmp_path, capsys):
    path = tmp_path / "classes.txt"
    path.write_bytes("cat\r\ndog\r\n".encode("utf-16-le"))  # cat\0\r\0... : valid UTF-8, NULs in every name
    with pytest.raises(ValueError, match=f"^{path}:1: control character U\\+0000"):
        read_class_list(path)
    rc = main(["embed", "--backbone", "x", "--classes", str(path), "--out-dir", str(tmp_path / "e")])
    one_line_error(capsys, rc, "embed", f"{path}:1", "save it as UTF-8")
    assert not (tmp_path / "e").exists()


def test_comments_are_comments_in_class_lists_too(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("# LVIS-style vocabulary, line order = class id\ncat\n  # not a class\ndog\n# end\n", encoding="utf-8")
    assert read_class_list(path) == ["cat", "dog"]
    names = tmp_path / "names.txt"
    names.write_text("# folder, name\nn01\tcat\n# n02\tdog\nn03\tbird\n", encoding="utf-8")
    assert read_names_file(names) == {"n01": "cat", "n03": "bird"} and read_class_list(names) == ["cat", "bird"]
    only = tmp_path / "only.txt"
    only.write_text("# nothing yet\n", encoding="utf-8")
    with pytest.raises(ValueError, match="class list is empty"):
        read_class_list(only)


def test_quoted_names_lose_their_quotes(tmp_path):
    """A spreadsheet saved as CSV quotes every field holding a comma; Python-style lists quote each lemma."""
    path = tmp_path / "classes.txt"
    path.write_text('"tabby, tabby cat"\n\'kit fox\', \'Vulpes macrotis\'\n"coffee mug"\nhot dog\n', encoding="utf-8")
    assert read_class_list(path) == ["tabby", "kit fox", "coffee mug", "hot dog"]
    names = tmp_path / "names.txt"
    names.write_text('n02123045\t"tabby, tabby cat"\n', encoding="utf-8")
    assert read_names_file(names) == {"n02123045": "tabby"}


def test_imagenet_synset_mapping_is_a_names_file_everywhere(tmp_path):
    """ImageNet's LOC_synset_mapping.txt: "<wnid> <lemma list>", space-separated: a names file for --names,
    and so its names (not "n01440764 tench") for --classes too."""
    path = tmp_path / "LOC_synset_mapping.txt"
    path.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish, Carassius auratus\n"
                    "n01484850 great white shark, white shark, man-eater\n", encoding="utf-8")
    assert read_names_file(path) == {"n01440764": "tench", "n01443537": "goldfish", "n01484850": "great white shark"}
    assert read_class_list(path) == ["tench", "goldfish", "great white shark"]
    multiword = tmp_path / "coco.txt"  # names of several words stay class names
    multiword.write_text("traffic light\nfire hydrant\n", encoding="utf-8")
    assert read_class_list(multiword) == ["traffic light", "fire hydrant"]


def test_a_class_list_with_some_tabbed_lines_is_refused(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("n01\tcat\nn02 dog\nn03\tbird\n", encoding="utf-8")  # a names file with one line retyped
    with pytest.raises(ValueError, match=f"^{path}:1: a tab in a class list \\(line 2 has none\\)"):
        read_class_list(path)


def test_unicode_is_nfc_in_names_and_keys(tmp_path):
    decomposed = unicodedata.normalize("NFD", "café")
    assert decomposed != "café"
    path = tmp_path / "names.txt"
    path.write_text(f"{decomposed}_folder\tcrème {decomposed}\n", encoding="utf-8")
    assert read_names_file(path) == {"café_folder": "crème café"}
    assert clean_classname(decomposed) == "café"


@pytest.mark.parametrize("text, line", [("cat\n\ndog\n", 2), ("\ncat\ndog\n", 1), ("cat\r\n \r\ndog\r\n", 2)])
def test_blank_line_inside_a_class_list_is_an_error_naming_the_line(tmp_path, text, line):
    path = tmp_path / "classes.txt"
    path.write_bytes(text.encode("utf-8"))
    with pytest.raises(ValueError, match=f"^{path}:{line}: blank line"):
        read_class_list(path)


def test_blank_line_inside_a_names_file_is_an_error(tmp_path):
    path = tmp_path / "names.txt"
    path.write_text("a\tcat\n\nb\tdog\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"^{path}:2: blank line"):
        read_names_file(path)


def test_coinciding_prompt_texts_are_listed_in_one_warning(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("crane\ndog\nCrane\ncrane_\nbat\nbat, club\n", encoding="utf-8")
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert read_class_list(path) == ["crane", "dog", "Crane", "crane", "bat", "bat"]
    assert len(caught) == 1
    message = str(caught[0].message)
    assert "\n" not in message and message.startswith(f"{path}: 5 classes share a prompt text")
    assert "'crane' (classes 0, 2, 3)" in message and "'bat' (classes 4, 5)" in message
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert warn_coinciding_names(["cat", "dog"], "x") == []
    assert not caught


def test_imagenet21k_p_shares_names_and_says_so_once():
    from pomp.data.imagenet21k import names_mapping

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        mapping = names_mapping("imagenet21k-p")
    assert len(mapping) == 10450
    assert len(caught) == 1
    shared = int(str(caught[0].message).split(": ")[1].split(" classes")[0])
    assert 1000 < shared < 2000 and len(set(mapping.values())) < 10450  # ~1,400 classes share a name


# --- every command reads through it ----------------------------------------------------------------
def test_embed_uses_the_first_lemma_and_refuses_gaps(backbone, tiny_config, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_bytes("\ufefftabby, tabby cat\r\nkit_fox\r\n".encode("utf-8"))
    out = tmp_path / "emb"
    assert main(["embed", "--backbone", tiny_config, "--classes", str(vocab), "--out-dir", str(out)]) == 0
    assert (out / "classnames.txt").read_text().splitlines() == ["tabby", "kit fox"]
    gap = tmp_path / "gap.txt"
    gap.write_text("cat\n\ndog\n", encoding="utf-8")
    rc = main(["embed", "--backbone", tiny_config, "--classes", str(gap), "--out-dir", str(tmp_path / "no")])
    one_line_error(capsys, rc, "embed", f"{gap}:2", "blank line")
    assert not (tmp_path / "no").exists()


def test_segment_class_list_gap_is_refused(tmp_path):
    from pomp.dense.segment import read_name_set, read_voc_split

    root = tmp_path / "voc"
    (root / "ImageSets" / "Segmentation").mkdir(parents=True)
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    (root / "JPEGImages").mkdir()
    (root / "SegmentationClass").mkdir()
    (root / "classes.txt").write_text("background\ntabby, tabby cat\n\ndog\n", encoding="utf-8")
    with pytest.raises(ValueError, match=f"{root / 'classes.txt'}:3: blank line"):
        read_voc_split(root)
    (root / "classes.txt").write_text("background\ntabby, tabby cat\ndog\n\n", encoding="utf-8")
    assert read_voc_split(root).classnames == ["background", "tabby", "dog"]
    (tmp_path / "unseen.txt").write_text("tabby, tabby cat\n", encoding="utf-8")
    assert read_name_set(tmp_path / "unseen.txt") == ["tabby"]


def test_eval_and_data_split_read_names_files_alike(class_folders, tmp_path, capsys):
    from pomp.cli.common import load_eval_data

    names = class_folders / "names.txt"
    lines = names.read_text().splitlines()
    names.write_bytes(("\ufeff" + "\r\n".join(f"{line}, synonym" for line in lines) + "\r\n").encode("utf-8"))
    images = load_eval_data([str(class_folders / "images")], "test", None, str(names))[0]
    assert images.classnames[:2] == ["golden retriever", "tabby cat"]
    split = tmp_path / "split.json"
    assert main(["data", "split", "--train-root", str(class_folders / "images"), "--names", str(names),
                 "--shots", "2", "--val-per-class", "1", "--out", str(split)]) == 0
    assert {entry[2] for entry in json.loads(split.read_text())["train"]} == set(images.classnames)
    names.write_text(lines[0] + "\n\n" + "\n".join(lines[1:]) + "\n")
    capsys.readouterr()
    rc = main(["data", "split", "--train-root", str(class_folders / "images"), "--names", str(names),
               "--out", str(tmp_path / "split2.json")])
    one_line_error(capsys, rc, "data", f"{names}:2", "blank line")
    assert not (tmp_path / "split2.json").exists()


@pytest.mark.slow
def test_cli_warnings_are_one_line(tiny_config, tmp_path):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("crane\ncrane, bird\n", encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pomp.cli", "embed", "--backbone", tiny_config, "--classes", str(vocab),
                           "--out-dir", str(tmp_path / "e")], capture_output=True, text=True, env=env, cwd=REPO)
    assert proc.returncode == 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip() and "No pretrained weights" not in line]
    assert lines == [f"pomp embed: warning: {vocab}: 2 classes share a prompt text with another class and cannot be "
                     "told apart: 'crane' (classes 0, 1)"]
