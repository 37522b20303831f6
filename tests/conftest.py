"""Shared fixtures and helpers: tiny randomly initialised open_clip models, generated class-folder images,
the one-line error contract, and the torchrun launcher."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "tests" / "assets"
TINY_CONFIG = str(ASSETS / "tiny-clip.json")  # the tiny random open_clip model every test may use

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(scope="session")
def tiny_config() -> str:
    return TINY_CONFIG


@pytest.fixture(scope="session")
def backbone():
    import pomp

    torch.manual_seed(0)
    return pomp.load_backbone(TINY_CONFIG)


@pytest.fixture
def class_folders(tmp_path: Path) -> Path:
    """6 generated classes x 6 images: tmp_path/images/<c00k>/..., tmp_path/names.txt."""
    from pomp.data.synthetic import make_class_folders

    return make_class_folders(tmp_path, num_classes=6, per_class=6)


# --- helpers (imported by test modules: `from conftest import ...`) ---------------------------------
def tiny_weights(path: Path, seed: int) -> Path:
    """The tiny architecture with other random weights (seed `seed`), saved as open_clip saves a state dict."""
    import open_clip

    open_clip.add_model_config(TINY_CONFIG)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = open_clip.create_model(Path(TINY_CONFIG).stem, pretrained=None)
    torch.save(model.state_dict(), path)
    return path


def reference_run(argv: list[str], full: Path, out: Path) -> tuple[torch.Tensor, list[str]]:
    """Run pomp command `argv` (whose --out-dir is `full`) to its end: its final prompt's ctx, and the same
    command line writing to `out` instead (the run that is interrupted and must end where this one ends)."""
    from pomp.cli import main
    from pomp.prompt import Prompt

    assert main(argv) == 0
    return Prompt.load(full / "prompt.safetensors").ctx, [str(out) if a == str(full) else a for a in argv]


@contextlib.contextmanager
def mounted_tmpfs(folder: Path, size: str, why_skip: str):
    """A real tmpfs of `size` (mount's `size=`, e.g. "64k") mounted at `folder` (created), unmounted after; the
    test is skipped (`why_skip` says what covers the path instead) without root or a working `mount`."""
    folder.mkdir()
    if os.geteuid() != 0 or not shutil.which("mount"):
        pytest.skip(f"mounting a tmpfs needs root ({why_skip})")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode(errors='replace').strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True)


def one_line(err: str, prefix: str, ignore: str | None = None) -> str:
    """The only non-blank line of `err` (lines holding `ignore` left out); it starts with `prefix`, and no
    traceback was printed. Returns the line."""
    lines = [line for line in err.splitlines() if line.strip() and not (ignore and ignore in line)]
    assert "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith(prefix), err
    return lines[0]


def assert_one_line_error(rc: int, err: str, command: str, *needles: str) -> str:
    """The error contract: exit status 2, exactly one line on stderr `pomp CMD: error: ...` holding every
    needle, no traceback. Returns the line."""
    assert rc == 2, err
    line = one_line(err, f"pomp {command}: error: ")
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def torchrun_command(args: list[str], nproc: int = 2) -> list[str]:
    """`python -m pomp.cli ARGS` under torchrun with `nproc` local processes. `--standalone` makes torchrun
    pick a free port itself (a rendezvous on localhost:0), so parallel runs never collide on a port."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
            "-m", "pomp.cli", *args]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for a process group made in this process: MASTER_PORT)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --- documented commands (tests/test_readme.py, tests/test_docs.py) -----------------------------------
RUN_ENV = {**os.environ, "HF_HUB_OFFLINE": "1",
           "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def fenced_block(markdown: str, heading: str, language: str) -> str:
    """The one ```language block in the section under `## heading`."""
    section = markdown.split(f"\n## {heading}", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(rf"^```{language}\n(.*?)^```$", section, flags=re.S | re.M)
    assert len(blocks) == 1, f"expected one {language} block under '## {heading}', found {len(blocks)}"
    return blocks[0]


def run_shell(script: str, cwd: Path, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run a documented shell block in bash (`set -euo pipefail`) with `pomp` = `python -m pomp.cli` and
    `python` = this interpreter: what `source .venv/bin/activate` gives."""
    prelude = (f'set -euo pipefail\npython() {{ "{sys.executable}" "$@"; }}\n'
               f'pomp() {{ "{sys.executable}" -m pomp.cli "$@"; }}\n')
    return subprocess.run(["bash", "-c", prelude + script], cwd=cwd, env=RUN_ENV, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="session")
def cli_quickstart(tmp_path_factory) -> Path:
    """A fresh folder in which the README's CLI quickstart ran, as written; its outputs are under runs/quickstart."""
    folder = tmp_path_factory.mktemp("cli-quickstart")
    done = run_shell(fenced_block((REPO / "README.md").read_text(encoding="utf-8"), "CLI quickstart", "bash"), folder)
    assert done.returncode == 0, done.stderr[-3000:]
    (folder / "quickstart.stderr").write_text(done.stderr)
    return folder
