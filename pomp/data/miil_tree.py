"""Alibaba-MIIL's ImageNet-21K-P semantic tree (`imagenet21k_miil_tree.pth`, winter-21) and the names in it.

POMP's own code names its 10,450 pre-training classes `class_description[wnid]` from this file
(datasets/imagenet_21k.py, `_` -> space in the prompt); pomp names them by timm's first WordNet lemma
(`pomp.data.imagenet21k`). `compare_with_tree` says where the two differ.

The file is `torch.save` of a dict: `class_list` (the synsets), `child_2_parent` (synset -> parent),
`class_tree_list` (per class, its index path up the tree, as numpy integers), `class_description`
(synset -> name), as MIIL's `semantics.py` and datadings' ImageNet21k metadata tool read it. It is
read with `torch.load(weights_only=True)`, admitting only numpy's scalar and array rebuilders and its
dtypes (data, no code) beyond torch's own safe types: any other object in the file refuses the load.
"""

from __future__ import annotations

import re
import unicodedata
from pathlib import Path
from typing import Mapping

import numpy as np
import torch

from pomp.data.names import clean_classname

TREE_FILE = "imagenet21k_miil_tree.pth"


def _numpy_safe_globals() -> list:
    """numpy's rebuilders of scalars and arrays and every numpy dtype class (data: numbers, strings, and
    object arrays whose items the same restricted unpickler rebuilds), under the module names numpy 1.x
    (which wrote MIIL's file) and numpy 2.x pickle them with."""
    core = np._core.multiarray if hasattr(np, "_core") else np.core.multiarray
    admitted: list = [np.dtype, np.ndarray, core.scalar, core._reconstruct]
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        admitted += [(core.scalar, f"{module}.scalar"), (core._reconstruct, f"{module}._reconstruct")]
    admitted += [getattr(np.dtypes, name) for name in np.dtypes.__all__]
    return admitted


def _refusal(path: Path, err: Exception) -> ValueError:
    """Why `torch.load(weights_only=True)` did not read `path`, in our words (torch's text advises
    loading untrusted files unsafely and carries terminal escape codes)."""
    text = str(err)
    found = re.search(r"GLOBAL (\S+) was not an allowed global", text) or re.search(r"got <class '([^']+)'>", text)
    if found:
        return ValueError(f"{path}: refused: it holds {found.group(1)}, which is not data "
                          "(read weights-only: nothing in the file was run)")
    return ValueError(f"{path}: not a file saved by torch.save, or damaged ({type(err).__name__})")


def read_miil_tree(path: str | Path) -> dict:
    """The tree dict of `imagenet21k_miil_tree.pth`; `class_description` checked to map synsets to names.

    Raises FileNotFoundError, or ValueError naming the file when it is refused or malformed.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: MIIL tree file not found")
    try:
        with torch.serialization.safe_globals(_numpy_safe_globals()):
            tree = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises UnpicklingError, RuntimeError, EOFError... depending on the damage
        raise _refusal(path, err) from None
    if not isinstance(tree, dict) or not isinstance(tree.get("class_description"), Mapping):
        raise ValueError(f"{path}: not a MIIL tree (no 'class_description' mapping)")
    bad = [k for k, v in tree["class_description"].items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise ValueError(f"{path}: class_description must map synset ids to names (bad entry {bad[0]!r})")
    return tree


def miil_classname(description: str) -> str:
    """A `class_description` entry as POMP's prompt uses it: `_` -> space (whitespace collapsed)."""
    return clean_classname(description)


def _same(a: str, b: str) -> bool:
    return unicodedata.normalize("NFC", a) == unicodedata.normalize("NFC", b)


def compare_with_tree(names: Mapping[str, str], tree: Mapping) -> dict:
    """Compare pomp's class names (synset -> name, in class order) with the tree's `class_description`.

    Returns `{"compared", "equal", "case_only", "different", "missing_in_tree", "extra_in_tree",
    "same_order", "differences"}`; `differences` lists `{"index", "wnid", "pomp", "miil", "kind"}` for
    every synset whose names differ (kind "case": only in letter case, which CLIP's tokenizer lowercases
    away, so the prompts are the same tokens; "different": anything else). Names are compared as they
    enter prompts (`clean_classname`, NFC).
    """
    described = {w: miil_classname(d) for w, d in tree["class_description"].items()}
    differences, missing = [], []
    for index, (wnid, name) in enumerate(names.items()):
        if wnid not in described:
            missing.append(wnid)
            continue
        ours, theirs = clean_classname(name), described[wnid]
        if _same(ours, theirs):
            continue
        kind = "case" if _same(ours.lower(), theirs.lower()) else "different"
        differences.append({"index": index, "wnid": wnid, "pomp": ours, "miil": theirs, "kind": kind})
    extra = [w for w in described if w not in names]
    case_only = sum(d["kind"] == "case" for d in differences)
    return {
        "compared": len(names) - len(missing),
        "equal": len(names) - len(missing) - len(differences),
        "case_only": case_only,
        "different": len(differences) - case_only,
        "missing_in_tree": missing,
        "extra_in_tree": extra,
        "same_order": list(names) == list(described),
        "differences": differences,
    }


def differences_table(report: dict) -> str:
    """The differing names as a tab-separated table with a header (index, wnid, kind, pomp, miil)."""
    lines = ["index\twnid\tkind\tpomp\tmiil"]
    lines += [f"{d['index']}\t{d['wnid']}\t{d['kind']}\t{d['pomp']}\t{d['miil']}" for d in report["differences"]]
    return "\n".join(lines) + "\n"


def summary_line(report: dict) -> str:
    return (f"{report['compared']} synsets compared: {report['equal']} equal, {report['case_only']} differ only in "
            f"case, {report['different']} differ; {len(report['missing_in_tree'])} missing from the tree, "
            f"{len(report['extra_in_tree'])} only in the tree; same order: {'yes' if report['same_order'] else 'no'}")


__all__ = ["TREE_FILE", "compare_with_tree", "differences_table", "miil_classname", "read_miil_tree", "summary_line"]
