"""`pomp <command>`: a thin layer over the library. Each command saves its resolved config beside its outputs.

The parser is assembled from one module per command group, each registering its commands with `add_parsers`:
`pomp.cli.pretrain` (pretrain), `pomp.cli.evaluate` (eval, benchmark, embed, info, backbones, convert),
`pomp.cli.data` (data split / shard / check-names, features) and `pomp.cli.dense` (segment, detect). What they
share is in `pomp.cli.common`. `python -m pomp.cli` (as torchrun launches it) runs `main`.
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings

from pomp.cli import data, dense, evaluate, pretrain
from pomp.cli.common import CommandParser, new_output_dirs, one_line_warnings, printable_line

COMMAND_GROUPS = (pretrain, evaluate, data, dense)  # in the order `pomp --help` lists their commands


def build_parser() -> argparse.ArgumentParser:
    """The `pomp` parser with every command group's sub-commands."""
    from pomp.version import __version__

    parser = CommandParser(
        prog="pomp",
        description="POMP prompt pre-training for vision-language models: pre-train one soft prompt on many "
                    "classes with local contrast and local correction, then apply it zero-shot.",
    )
    parser.add_argument("--version", action="version", version=f"pomp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one `pomp` command; returns the exit status (2 with one `pomp CMD: error: ...` line for bad input)."""
    from pomp.io import remove_empty_dirs

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore", message="No pretrained weights loaded")
    default_format = warnings.formatwarning
    one_line_warnings(args.command)
    created = new_output_dirs(args)
    try:
        return args.func(args)
    except (ValueError, OSError, RuntimeError, KeyError, ImportError) as err:  # OSError: missing file, ENOSPC...
        remove_empty_dirs(created)
        if os.environ.get("POMP_DEBUG"):
            raise
        message = str(err).strip().split("\n")[0] if str(err).strip() else type(err).__name__  # a library's advice
        print(f"pomp {args.command}: error: {printable_line(message.strip())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        remove_empty_dirs(created)
        print(f"pomp {args.command}: interrupted", file=sys.stderr)
        return 130
    finally:
        warnings.formatwarning = default_format


__all__ = ["build_parser", "main"]
