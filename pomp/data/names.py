"""THE reader of class names: names files (`folder<TAB>name`) and class lists (one name per line).

Every command reads names through here (pretrain, eval, embed, segment, detect, data split /
shard, features, benchmark), so a file means the same everywhere:
- UTF-8, a leading BOM dropped; line ends `\\n`, `\\r\\n` or `\\r`;
- Unicode normalised to NFC (names and folder keys), so "café" typed two ways is one class;
- a WordNet lemma list ("tabby, tabby cat") gives its first lemma ("tabby"), as POMP trains with;
- underscores become spaces, runs of whitespace one space (`clean_classname`);
- in a class list line i is class i, so a blank line before the last name is an error naming the
  file and line (every later class id would shift); trailing blank lines are fine;
- class names whose prompt texts coincide (equal once cleaned, compared case-insensitively as
  CLIP's lower-casing tokenizer sees them) are listed in one warning: such classes cannot be told
  apart by any prompt (the ImageNet-21K-P list itself has such names, so it is not an error).
"""

from __future__ import annotations

import unicodedata
import warnings
from pathlib import Path
from typing import Iterable, Sequence

MAX_LISTED = 8  # coinciding names shown in the warning (the count covers them all)


def clean_classname(name: str) -> str:
    """Class names as they enter a prompt: NFC, underscores become spaces, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFC", name).replace("_", " ").split())


def first_lemma(name: str) -> str:
    """The first entry of a WordNet lemma list: "tabby, tabby cat" -> "tabby"."""
    return name.split(",")[0]


def read_text_lines(path: str | Path, what: str) -> list[str]:
    """Lines of a UTF-8 text file (BOM dropped, any line ending), NFC-normalised; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        text = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise ValueError(f"{path}: {what} is not UTF-8 text (byte {err.start}: {err.reason})") from None
    except OSError as err:
        raise ValueError(f"{path}: {what} cannot be read ({err.strerror or err})") from None
    text = unicodedata.normalize("NFC", text.replace("\r\n", "\n").replace("\r", "\n"))
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _check_no_gaps(path: Path, lines: Sequence[str], what: str) -> None:
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise ValueError(f"{path}:{number}: blank line inside the {what} (every later class id would shift)")


def warn_coinciding_names(classnames: Sequence[str], source: str) -> list[list[int]]:
    """Warn once, in one line, about classes whose prompt texts coincide; returns the groups of class ids."""
    groups: dict[str, list[int]] = {}
    for index, name in enumerate(classnames):
        groups.setdefault(clean_classname(name).casefold(), []).append(index)
    shared = [ids for ids in groups.values() if len(ids) > 1]
    if shared:
        count = sum(len(ids) for ids in shared)
        shown = "; ".join(f"{classnames[ids[0]]!r} (classes {', '.join(map(str, ids[:4]))}"
                          f"{', ...' if len(ids) > 4 else ''})" for ids in shared[:MAX_LISTED])
        more = f"; and {len(shared) - MAX_LISTED} more names" if len(shared) > MAX_LISTED else ""
        warnings.warn(f"{source}: {count} classes share a prompt text with another class and cannot be told "
                      f"apart: {shown}{more}", stacklevel=3)
    return shared


def _parse_names_line(path: Path, number: int, line: str) -> tuple[str, str]:
    parts = line.split("\t", 1) if "\t" in line else line.strip().split(None, 1)
    if len(parts) != 2 or not parts[1].strip() or not parts[0].strip():
        raise ValueError(f"{path}:{number}: expected 'folder<TAB>class name', got {line!r}")
    return parts[0].strip(), parts[1]


def read_names_file(path: str | Path, first_synonym: bool = True) -> dict[str, str]:
    """Read `folder<TAB>name` lines (also `folder name words...`): folder -> class name, in file order.

    With `first_synonym` (the default everywhere in pomp), a lemma list "tabby, tabby cat" keeps
    "tabby". Lines starting with `#` are comments (entries are keyed by folder, so no id shifts).

    Raises:
        FileNotFoundError: no such file. ValueError: `"<file>:<line>: <reason>"` for blank lines
        between entries, malformed lines, a folder listed twice, empty names; `"<file>: ..."` when empty.
    """
    path = Path(path)
    lines = read_text_lines(path, "names file")
    _check_no_gaps(path, lines, "names file")
    mapping: dict[str, str] = {}
    for number, line in enumerate(lines, start=1):
        if line.lstrip().startswith("#"):
            continue
        key, name = _parse_names_line(path, number, line)
        name = clean_classname(first_lemma(name) if first_synonym else name)
        if key in mapping:
            raise ValueError(f"{path}:{number}: folder {key!r} is listed twice")
        if not name:
            raise ValueError(f"{path}:{number}: empty folder or class name in {line!r}")
        mapping[key] = name
    if not mapping:
        raise ValueError(f"{path}: names file is empty")
    warn_coinciding_names(list(mapping.values()), str(path))
    return mapping


def read_class_list(path: str | Path) -> list[str]:
    """A vocabulary file, line i = class i: one class name per line, or a names file (its names, in order).

    First lemma of lemma lists, cleaned like prompt texts. Raises as `read_names_file` does.
    """
    path = Path(path)
    lines = read_text_lines(path, "class list")
    if not lines:
        raise ValueError(f"{path}: class list is empty")
    _check_no_gaps(path, lines, "class list")
    if all("\t" in line for line in lines):
        return list(read_names_file(path).values())
    names = []
    for number, line in enumerate(lines, start=1):
        name = clean_classname(first_lemma(line))
        if not name:
            raise ValueError(f"{path}:{number}: the line {line!r} holds no class name")
        names.append(name)
    warn_coinciding_names(names, str(path))
    return names


def names_mapping_from(pairs: Iterable[tuple[str, str]], source: str) -> dict[str, str]:
    """A folder -> name mapping from (key, lemma list) pairs of a built-in list, read like a names file."""
    mapping = {unicodedata.normalize("NFC", key): clean_classname(first_lemma(name)) for key, name in pairs}
    warn_coinciding_names(list(mapping.values()), source)
    return mapping


__all__ = [
    "clean_classname", "first_lemma", "names_mapping_from", "read_class_list", "read_names_file",
    "read_text_lines", "warn_coinciding_names",
]
