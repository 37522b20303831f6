"""What every `pomp` command shares: help texts, argument types, option checks, the datasets of `--data`,
the output folders a refused command must not leave behind, and one-line errors and warnings."""

from __future__ import annotations

import argparse
import dataclasses
import warnings
from pathlib import Path

BACKBONE_HELP = ("open_clip model name (ViT-B-16, ViT-B-16-quickgelu...) or model-config JSON; hf:<folder> for a "
                 "transformers CLIP folder (save_pretrained); minilm-efficientnet-lite0 (alias default) for the "
                 "offline default")
PRETRAINED_HELP = ("open_clip pretrained tag (e.g. openai; downloads, needs network) or a local weights file "
                   "(OpenAI's original .pt, an open_clip state dict...)")


class CommandParser(argparse.ArgumentParser):
    """Argument errors as one line, like every other error: `pomp CMD: error: ...` (exit 2)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def int_at_least(low: int):
    """argparse type: an integer >= low (refused while parsing: one line, nothing created)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"must be an integer >= {low}, got {value}")
        return value

    return parse


def config_from_args(cls, args: argparse.Namespace):
    """An instance of dataclass `cls` from the parsed options of the same names."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls) if hasattr(args, f.name)}
    return cls(**values)


def refuse_unused(pairs: list[tuple[bool, str]]) -> None:
    """One error for the first option given where it does nothing (`given`, message)."""
    for given, message in pairs:
        if given:
            raise ValueError(message)


def refuse_unused_data_options(specs: list[str], image_root: str | None, names: str | None,
                                split_file: str | None = None, train_root: str | None = None) -> None:
    """--image-root and --names must apply to some data given (split JSON files, class folders)."""
    json_files = [s for s in specs if Path(s).suffix == ".json"]
    refuse_unused([(bool(image_root) and not json_files and not split_file,
                    "--image-root applies to split JSON files; none is given"),
                   (bool(names) and len(json_files) == len(specs) and not train_root,
                    "--names applies to class folders; none is given")])


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
