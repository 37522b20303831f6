"""What every `pomp` command shares: its parser generated from its config (`pomp.config`), the datasets of
`--data`, the output folders a refused command must not leave behind, and one-line errors and warnings."""

from __future__ import annotations

import argparse
import dataclasses
import functools
import warnings
from collections.abc import Callable
from dataclasses import MISSING
from pathlib import Path
from typing import Any

from pomp.config import Options, default_of, flag, help_text, is_option


class CommandParser(argparse.ArgumentParser):
    """Argument errors as one line, like every other error: `pomp CMD: error: ...` (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def argument(f: dataclasses.Field) -> tuple[list[str], dict]:
    """`add_argument`'s names and keywords for option `f` (a `pomp.config.option` field): `--n-ctx` for `n_ctx`,
    its help (`help_text`), type, choices, default; `--x/--no-x` for a bool; repeatable: `append`; no default:
    required. Bounds are checked by `Options.verify`, after parsing, like every rule across options."""
    meta = f.metadata
    spec = {"help": help_text(f)}
    if meta["positional"]:
        return [f.name], spec
    default = default_of(f)
    if default is MISSING:
        spec["required"] = True
    else:
        spec["default"] = default
    if meta["type"] is bool:
        spec["action"] = argparse.BooleanOptionalAction
    else:
        spec.update(type=meta["type"], choices=meta["choices"], action="append" if meta["repeatable"] else "store")
    return [flag(f.name)], spec


def add_command(sub, name: str, config: type[Options], run: Callable[[Any], int], help: str,
                description: str | None = None) -> argparse.ArgumentParser:
    """Register command `name` on `sub`: one argument per option field of `config`; the command builds its
    config from them, validates it (`Options.verify`: one line naming the option) and passes it to `run`."""
    parser = sub.add_parser(name, help=help, description=description or help[:1].upper() + help[1:] + ".")
    for f in dataclasses.fields(config):
        if is_option(f):
            names, spec = argument(f)
            parser.add_argument(*names, **spec)
    parser.set_defaults(func=functools.partial(_run_command, config, run))
    return parser


def config_from_args(config: type[Options], args: argparse.Namespace) -> Options:
    """The `config` of the parsed options, validated."""
    cfg = config(**{f.name: getattr(args, f.name) for f in dataclasses.fields(config) if is_option(f)})
    cfg.verify()
    return cfg


def _run_command(config: type[Options], run: Callable[[Any], int], args: argparse.Namespace) -> int:
    return run(config_from_args(config, args))


def load_eval_data(specs: list[str], split: str, image_root: str | None, names: str | None):
    """The datasets of `--data` (class folders or split JSON files), each with a distinct name
    (`pomp.data.folder.unique_dataset_names`): result files, table columns and cache folders."""
    from pomp.data.folder import scan_class_folders, unique_dataset_names
    from pomp.data.imagenet21k import resolve_names
    from pomp.data.splits import read_split_file

    datasets = []
    for spec, name in zip(specs, unique_dataset_names(specs)):
        path = Path(spec)
        images = (read_split_file(path, split, image_root) if path.suffix == ".json"
                  else scan_class_folders(path, resolve_names(names)))
        images.name = name
        datasets.append(images)
    return datasets


OUTPUT_DIRS = ("out_dir", "feature_cache")  # argument names of the folders commands write
OUTPUT_FILES = ("out", "dst")  # ... and of the files they write


def new_output_dirs(args: argparse.Namespace) -> list[Path]:
    """The output folders (and their parents) this command would create: removed again, when still
    empty, if it is refused (no folder is left behind by a command that did nothing)."""
    from pomp.io import missing_dirs

    paths = [getattr(args, a) for a in OUTPUT_DIRS if getattr(args, a, None)]
    paths += [Path(getattr(args, a)).parent for a in OUTPUT_FILES if getattr(args, a, None)]
    return [d for p in paths for d in missing_dirs(p)]


# control characters (a macOS `Icon\r` file, ESC in a name from an archive) as escapes: a message stays
# one line and never moves the terminal's cursor or colours it; tabs are left as they are
_CONTROL_ESCAPES = {c: f"\\x{c:02x}" for c in (*range(0x09), *range(0x0A, 0x20), 0x7F, *range(0x80, 0xA0))} | {
    0x2028: "\\u2028", 0x2029: "\\u2029"}


def printable_line(text: str) -> str:
    """`text` as one terminal-safe line: control characters and line separators escaped (`\\x0d`)."""
    return text.translate(_CONTROL_ESCAPES)


def one_line_warnings(command: str) -> None:
    """pomp's own warnings as `pomp CMD: warning: ...` lines (like its errors); others as Python shows them."""
    default = warnings.formatwarning
    package = str(Path(__file__).resolve().parents[1])  # pomp/, this file being pomp/cli/common.py

    def format_warning(message, category, filename, lineno, line=None):
        if str(Path(filename).resolve()).startswith(package):
            return f"pomp {command}: warning: {printable_line(str(message).strip())}\n"
        return default(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
