"""`pomp pretrain`: pre-train a prompt (single process, or under torchrun for DDP). Its options are the fields
of `pomp.config.PretrainConfig`."""

from __future__ import annotations

import json
import os
import sys
import time

from pomp.cli.common import add_command, printable_line
from pomp.config import PretrainConfig


def cmd_pretrain(cfg: PretrainConfig) -> int:
    from pomp.train import Interrupted, pretrain

    start = time.perf_counter()
    try:
        summary = pretrain(cfg)
    except Interrupted as err:  # SIGTERM, SIGINT, SIGHUP... : the message says what was saved
        print(f"pomp pretrain: {printable_line(str(err))}", file=sys.stderr)
        return err.exit_code
    if int(os.environ.get("RANK", "0")) == 0:
        summary["wall_s"] = round(time.perf_counter() - start, 1)
        print(json.dumps(summary, indent=2))
    return 0


def add_parsers(sub) -> None:
    """Register `pretrain` on the `pomp` sub-command parser."""
    add_command(sub, "pretrain", PretrainConfig, cmd_pretrain,
                help="pre-train a prompt (single process, or under torchrun for DDP)",
                description="Pre-train a POMP prompt. Defaults are the paper's recipe (n_ctx 4, K 1000, SGD 0.002, "
                            "1 warm-up epoch then cosine, 32 images x 4 views, 5 epochs). Run under `torchrun "
                            "--nproc_per_node N` for DDP.")
