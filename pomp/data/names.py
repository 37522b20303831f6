"""THE reader of class names: names files (`folder<TAB>name`) and class lists (one name per line).

Every command reads names through here (pretrain, eval, embed, segment, detect, data split /
shard, features, benchmark), so a file means the same everywhere:
- UTF-8; a byte-order mark says otherwise (Windows Notepad's "Unicode" is UTF-16 with a BOM) and is
  dropped; control characters (a NUL from UTF-16 saved without a BOM) are an error naming the line;
  line ends `\\n`, `\\r\\n` or `\\r`;
- lines starting with `#` are comments, in names files and class lists alike;
- a name wrapped in quotes, whole or lemma by lemma (`"tabby, tabby cat"`, as CSV tools write a
  field holding a comma), loses them;
- Unicode normalised to NFC (names and folder keys), so "café" typed two ways is one class;
- a WordNet lemma list ("tabby, tabby cat") gives its first lemma ("tabby"), as POMP trains with;
- underscores become spaces, runs of whitespace one space (`clean_classname`);
- in a class list the i-th name line is class i, so a blank line before the last name is an error
  naming the file and line (every later class id would shift); trailing blank lines are fine;
- class names whose prompt texts coincide (equal once cleaned, compared case-insensitively as
  CLIP's lower-casing tokenizer sees them) are listed in one warning: such classes cannot be told
  apart by any prompt (the ImageNet-21K-P list itself has such names, so it is not an error).
"""

from __future__ import annotations

import re
import unicodedata
import warnings
from pathlib import Path
from typing import Iterable, Sequence

MAX_LISTED = 8  # coinciding names shown in the warning (the count covers them all)
# CLIP's single hand-crafted zero-shot template (its paper, §3.1.4): the "single" baseline, the offline
# default's fitted map and `pomp embed` without a prompt all write a class name into it
SINGLE_TEMPLATE = "a photo of a {}."


def clean_classname(name: str) -> str:
    """Class names as they enter a prompt: NFC, underscores become spaces, whitespace collapsed."""
    return " ".join(unicodedata.normalize("NFC", name).replace("_", " ").split())


def first_lemma(name: str) -> str:
    """The first entry of a WordNet lemma list: "tabby, tabby cat" -> "tabby". Quotes that open and close
    the whole text, around the list or around each entry, are dropped: '"tabby, tabby cat"' and
    "'tabby', 'tabby cat'" give "tabby" too (an apostrophe inside a name stays)."""
    text = name.strip()
    quote = text[0] if len(text) >= 2 and text[0] == text[-1] and text[0] in "\"'" else ""
    first = text.split(",")[0].strip()
    if quote:
        first = first.removeprefix(quote).removesuffix(quote)
    return first


# Byte-order marks, longest first (UTF-32's little-endian mark begins with UTF-16's).
_BOMS = ((b"\xff\xfe\x00\x00", "utf-32"), (b"\x00\x00\xfe\xff", "utf-32"), (b"\xef\xbb\xbf", "utf-8-sig"),
         (b"\xff\xfe", "utf-16"), (b"\xfe\xff", "utf-16"))


def read_text_lines(path: str | Path, what: str) -> list[str]:
    """Lines of a UTF-8 text file (BOM dropped, any line ending), NFC-normalised; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: {what} not found")
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise ValueError(f"{path}: {what} cannot be read ({err.strerror or err})") from None
    encoding = next((codec for bom, codec in _BOMS if raw.startswith(bom)), "utf-8")
    try:
        text = raw.decode(encoding)
    except UnicodeDecodeError as err:
        label = "UTF-8" if encoding == "utf-8" else f"{encoding.upper()} (as its byte-order mark says)"
        raise ValueError(f"{path}: {what} is not {label} text (byte {err.start}: {err.reason})") from None
    text = unicodedata.normalize("NFC", text.removeprefix("\ufeff").replace("\r\n", "\n").replace("\r", "\n"))
    lines = text.split("\n")
    while lines and not lines[-1].strip():
        lines.pop()
    for number, line in enumerate(lines, start=1):
        bad = next((ch for ch in line if ch != "\t" and unicodedata.category(ch) == "Cc"), None)
        if bad is not None:
            raise ValueError(f"{path}:{number}: control character U+{ord(bad):04X} in the {what} (UTF-16 saved "
                             "without a byte-order mark reads like this); save it as UTF-8")
    return lines


def _is_comment(line: str) -> bool:
    return line.lstrip().startswith("#")


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
        if _is_comment(line):
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


# A WordNet id, then the name: ImageNet's `LOC_synset_mapping.txt` ("n01440764 tench, Tinca tinca").
_WNID_LINE = re.compile(r"n\d{8}\s+\S")


def read_class_list(path: str | Path) -> list[str]:
    """A vocabulary file, class i = the i-th name line (comments skipped): one class name per line, or a
    names file (its names, in order): every line `folder<TAB>name`, or every line a WordNet id and the
    name as in ImageNet's `LOC_synset_mapping.txt`.

    First lemma of lemma lists, cleaned like prompt texts. Raises as `read_names_file` does, and for a
    file where some name lines hold a tab and others do not (neither format).
    """
    path = Path(path)
    lines = read_text_lines(path, "class list")
    _check_no_gaps(path, lines, "class list")
    entries = [(number, line) for number, line in enumerate(lines, start=1) if not _is_comment(line)]
    if not entries:
        raise ValueError(f"{path}: class list is empty")
    tabbed = [number for number, line in entries if "\t" in line]
    if len(tabbed) == len(entries) or all(_WNID_LINE.match(line) for _, line in entries):
        return list(read_names_file(path).values())
    if tabbed:
        plain = next(number for number, line in entries if "\t" not in line)
        raise ValueError(f"{path}:{tabbed[0]}: a tab in a class list (line {plain} has none): a names file needs "
                         "'folder<TAB>name' on every line, a class list one name per line without tabs")
    names = []
    for number, line in entries:
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
