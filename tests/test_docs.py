"""The README and docs/ stay true: size, links, the code map, every documented `pomp` command line parses with
today's options, and the documented commands that run offline on generated data are run.

A shell block runs here when the line before its fence is `<!-- runs offline: tests/test_docs.py -->`: in the
folder where the README's CLI quickstart ran (with a link to tests/ for the tiny model), with `pomp` =
`python -m pomp.cli`, `.venv/bin/python` and `python` = this interpreter. Blocks needing real data, weights or
GPUs are parsed only."""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, run_shell

README = REPO / "README.md"
DOCS = sorted((REPO / "docs").glob("*.md"))
PAGES = [README, *DOCS]
RUNS_OFFLINE = "<!-- runs offline: tests/test_docs.py -->"


def shell_blocks(page: Path) -> list[tuple[str, bool]]:
    """(body, runs offline) of every ```bash block of a page."""
    text = page.read_text(encoding="utf-8")
    blocks = []
    for match in re.finditer(r"```bash\n(.*?)^```$", text, flags=re.S | re.M):
        before = text[: match.start()].rstrip("\n").rsplit("\n", 1)[-1]
        blocks.append((match.group(1), before.strip() == RUNS_OFFLINE))
    return blocks


def assignments(page: Path) -> dict[str, list[str]]:
    """`NAME="value"` lines of a page's shell blocks: every value each name is given."""
    assigned: dict[str, list[str]] = {}
    for block, _ in shell_blocks(page):
        for name, value in re.findall(r'^(\w+)=("[^"]*"|\S+)', block.replace("\\\n", " "), flags=re.M):
            assigned.setdefault(name, []).append(shlex.split(value)[0])
    return assigned


def pomp_command_lines(block: str, assigned: dict[str, list[str]] | None = None) -> list[list[str]]:
    """The argv after `pomp` (or torchrun's `-m pomp.cli`) of each command line of a shell block; a `$VAR` set on
    the page is expanded with each value it is given (docs/distributed.md's two kinds of DATA)."""
    joined = block.replace("\\\n", " ")
    assigned = assigned or {}
    argvs = []
    for line in joined.splitlines():
        words = shlex.split(line, comments=True)
        if "pomp.cli" in words:
            argv = words[words.index("pomp.cli") + 1:]
        elif words and Path(words[0]).name == "pomp":
            argv = words[1:]
        else:
            continue
        variables = [w for w in argv if w.startswith("$")]
        if not variables:
            argvs.append(argv)
        for var in variables:  # one variable at most in our docs' command lines
            for value in assigned.get(var[1:], ["X"]):
                argvs.append([*argv[: argv.index(var)], *shlex.split(value), *argv[argv.index(var) + 1:]])
    return argvs


def test_readme_is_short():
    assert len(README.read_bytes()) <= 10 * 1024


def test_relative_links_point_to_files():
    for page in PAGES:
        for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", page.read_text(encoding="utf-8")):
            assert (page.parent / target).exists(), f"{page.relative_to(REPO)}: link to {target} leads nowhere"


def test_readme_links_every_docs_page():
    text = README.read_text(encoding="utf-8")
    assert [p.name for p in DOCS if f"](docs/{p.name})" not in text] == []


def test_code_map_names_every_module_and_only_modules_that_exist():
    text = README.read_text(encoding="utf-8")
    code_map = text.split("\npomp/\n", 1)[1].split("```", 1)[0]
    named = {f"pomp/{path}" for path in re.findall(r"\b((?:\w+/)*\w+\.py)\b", code_map)}
    modules = {p.relative_to(REPO).as_posix() for p in (REPO / "pomp").rglob("*.py")
               if p.name not in ("__init__.py", "__main__.py")}
    assert sorted(named - modules) == [], "the README's code map names files that do not exist"
    assert sorted(modules - named) == [], "modules missing from the README's code map"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.relative_to(REPO).as_posix())
def test_documented_command_lines_parse(page):
    """Every `pomp ...` line of a shell block is accepted by pomp's own parser (no option renamed under it)."""
    from pomp.cli import build_parser

    for block, _ in shell_blocks(page):
        for argv in pomp_command_lines(block, assignments(page)):
            try:
                build_parser().parse_args(argv)
            except SystemExit as stop:
                raise AssertionError(f"{page.name}: `pomp {shlex.join(argv)}` does not parse") from stop


def test_the_parse_check_sees_commands():
    """The extraction above finds the commands (a regex that matched nothing would pass every page)."""
    found = sum(len(pomp_command_lines(block, assignments(page))) for page in PAGES for block, _ in shell_blocks(page))
    assert found >= 30, found
    page = REPO / "docs/distributed.md"
    distributed = [argv for block, _ in shell_blocks(page) for argv in pomp_command_lines(block, assignments(page))]
    assert ["pretrain", "--backbone", "ViT-B-16", "--pretrained", "openai", "--train-shards",
            "/shared/in21k-p/shards/train-{000000..000159}.tar"] == distributed[1][:7]  # DATA expanded, braces kept
    with pytest.raises(SystemExit):
        from pomp.cli import build_parser

        build_parser().parse_args(["pretrain", "--no-such-option"])


def test_walkthrough_script_runs_the_documented_commands():
    """docs/cli.md says examples/tiny_walkthrough.sh runs exactly its walkthrough's commands."""
    documented = next(block for block, runs in shell_blocks(REPO / "docs/cli.md") if runs)
    script = (REPO / "examples/tiny_walkthrough.sh").read_text(encoding="utf-8")
    commands = script.split('rm -rf "$OUT"\n', 1)[1].rsplit("echo ", 1)[0]
    for name, value in (("$OUT", "runs/walkthrough"), ("$POMP", "pomp"), ("$PY", ".venv/bin/python")):
        commands = commands.replace(f'"{name}', value).replace(name, value)
    normal = lambda text: shlex.split(text.replace("\\\n", " ").replace('"', ""))  # noqa: E731
    assert normal(commands) == normal(documented)


def offline_blocks() -> list[tuple[str, int]]:
    return [(page.relative_to(REPO).as_posix(), i) for page in DOCS
            for i, (_, runs) in enumerate(shell_blocks(page)) if runs]


def test_some_blocks_are_marked_to_run():
    assert {page for page, _ in offline_blocks()} >= {"docs/cli.md", "docs/dense.md"}


@pytest.mark.slow
@pytest.mark.parametrize("page,index", offline_blocks())
def test_offline_block_runs(page, index, cli_quickstart):
    """Run in the folder of the README's CLI quickstart (whose prompt docs/dense.md uses)."""
    block = shell_blocks(REPO / page)[index][0]
    if not (cli_quickstart / "tests").exists():
        (cli_quickstart / "tests").symlink_to(REPO / "tests")
    done = run_shell(block.replace(".venv/bin/python", "python"), cli_quickstart)
    assert done.returncode == 0, f"{page} block {index}:\n{done.stderr[-3000:]}"


# --- the supported-models table (scripts/support_table.py writes it into docs/models.md) ------------------
def _support_table_script():
    import importlib.util

    spec = importlib.util.spec_from_file_location("support_table", REPO / "scripts/support_table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_models_page_table_covers_every_open_clip_model():
    """The generated table in docs/models.md names each `open_clip.list_models()` entry once (regenerate it with
    scripts/support_table.py when open_clip adds or drops one). Listed in a fresh process: tests register models."""
    listed = subprocess.run([sys.executable, "-c", "import open_clip; print('\\n'.join(open_clip.list_models()))"],
                            capture_output=True, text=True, check=True).stdout.split()
    script = _support_table_script()
    page = (REPO / "docs/models.md").read_text(encoding="utf-8")
    table = page.split(script.START, 1)[1].split(script.END, 1)[0]
    named = re.findall(r"`([^`]+)`", "".join(line.split(" | ")[7] for line in table.splitlines()
                                             if line.startswith("| ") and not line.startswith("| image tower")))
    assert sorted(named) == sorted(listed)


def test_support_table_writes_between_the_markers_only(tmp_path):
    script = _support_table_script()
    page = tmp_path / "models.md"
    page.write_text(f"before\n{script.START}\nold table\n{script.END}\nafter\n", encoding="utf-8")
    assert script.main(["--write", str(page), "RN50"]) == 0
    head, rest = page.read_text(encoding="utf-8").split(script.START + "\n")
    table, tail = rest.split(script.END)
    assert head == "before\n" and tail == "\nafter\n" and "old table" not in table
    assert table.startswith("1 of 1 `open_clip.list_models()` entries")
    [row] = [line for line in table.splitlines() if "`RN50`" in line]
    assert row.split(" | ")[:2] == ["| open_clip ModifiedResNet", "open_clip TextTransformer, causal"]
    assert float(row.split(" | ")[-1].rstrip(" |")) <= script.TOLERANCE
