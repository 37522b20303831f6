"""The package's layering: no import cycle, no module reaching into another's private names, a light `import pomp`.

The import graph is read from the source with `ast`: every `import` statement of every module of pomp/, at
module level or inside a function (a lazy import is still a dependency). Imports by a name computed at run time
(`importlib.import_module`) are not statements and are not in the graph; pomp has two on purpose: the package's
lazy attributes (pomp/__init__.py) and the old names of moved functions (`pomp.deprecation.moved_names`).
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def package_modules(root: Path, package: str = "pomp") -> dict[str, Path]:
    """Dotted module name -> file, for every .py file of `root/package` (a package is its __init__.py)."""
    modules = {}
    for path in sorted((root / package).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _containing_module(name: str, modules: dict[str, Path]) -> str | None:
    """`name` if it is a module of the package, else the nearest enclosing one (`pomp.a.b.f` -> `pomp.a.b`)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imported_modules(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package modules `module` imports anywhere in its file. `from pkg import x` imports module `pkg.x`
    when there is one, else (x a name defined in pkg) module `pkg`; relative imports are resolved."""
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            targets.update(_containing_module(alias.name, modules) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
                package = package[: len(package) - node.level + 1]
                base = ".".join(package + ([base] if base else []))
            for alias in node.names:
                full = f"{base}.{alias.name}"
                targets.add(full if full in modules else _containing_module(base, modules))
    return {t for t in targets if t is not None and t != module}


def import_graph(root: Path, package: str = "pomp") -> dict[str, set[str]]:
    modules = package_modules(root, package)
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a path `[a, b, ..., a]`, or None when the graph is acyclic (depth-first search)."""
    state: dict[str, str] = {}  # "open" while on the current path, "done" when fully explored
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = "open"
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == "open":
                return path[path.index(target):] + [target]
            if target not in state and (cycle := visit(target)):
                return cycle
        path.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_package_has_no_import_cycle():
    graph = import_graph(REPO)
    assert len(graph) > 40 and "pomp.cli.common" in graph["pomp.cli.data"]  # the graph was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def _write(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_cycle_finder_sees_lazy_relative_and_from_package_imports(tmp_path):
    """The graph builder on a small package with known edges: every kind of import statement pomp uses."""
    root = _write(tmp_path, {
        "pkg/__init__.py": "def lazy():\n    from pkg import low\n",
        "pkg/low.py": "import os\nfrom pkg.sub import helper\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/helper.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from .. import top\n",
        "pkg/top.py": "def f():\n    import pkg.low as low\n    from pkg.sub.helper import something\n",
    })
    graph = import_graph(root, "pkg")
    assert graph == {"pkg": {"pkg.low"}, "pkg.low": {"pkg.sub.helper"}, "pkg.sub": set(),
                     "pkg.sub.helper": {"pkg.top"}, "pkg.top": {"pkg.low", "pkg.sub.helper"}}
    assert find_cycle(graph) == ["pkg.low", "pkg.sub.helper", "pkg.top", "pkg.low"]
    _write(root, {"pkg/sub/helper.py": "X = 1\n"})
    assert find_cycle(import_graph(root, "pkg")) is None


def test_no_module_imports_another_modules_private_names():
    """Helpers shared across modules are public where they live (e.g. pomp/cli/common.py for the commands)."""
    modules = package_modules(REPO)
    private = []
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] == "pomp":
                private += [f"{name} imports {node.module}.{a.name}" for a in node.names
                            if a.name.startswith("_") and not a.name.startswith("__")]
    assert private == []


def _python(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=REPO, env=env, timeout=300)


def test_import_pomp_is_light_and_its_public_names_load_on_first_use():
    proc = _python(
        "-c",
        "import sys, pomp, pomp.cli\n"
        "light = 'torch' not in sys.modules\n"
        "from pomp.prompt import Prompt\n"
        "from pomp.backbones import load_backbone\n"
        "print(light, pomp.Prompt is Prompt, pomp.load_backbone is load_backbone, pomp.loss.__name__,\n"
        "      pomp.io.__name__, pomp.__version__, 'torch' in sys.modules, {'Prompt', 'loss'} <= set(dir(pomp)))\n"
        "try:\n    pomp.no_such_name\nexcept AttributeError as err:\n    print(err)\n")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == ["True True True pomp.loss pomp.io 0.1.0 True True",
                                        "module 'pomp' has no attribute 'no_such_name'"]


@pytest.mark.slow
def test_module_entry_points_run():
    """`python -m pomp.cli` (how torchrun starts pomp), `python -m pomp.demo` (make demo), `python -m pomp.demo.data`."""
    for args, first_line in ((["-m", "pomp.cli", "--version"], "pomp 0.1.0"),
                             (["-m", "pomp.demo", "--help"], "usage: python -m pomp.demo "),
                             (["-m", "pomp.demo.data", "--help"], "usage: python -m pomp.demo.data ")):
        proc = _python(*args)
        assert proc.returncode == 0, proc.stderr
        assert proc.stdout.startswith(first_line), (args, proc.stdout[:200])


# --- function length ---------------------------------------------------------------------------------------------
MAX_FUNCTION_LINES = 80


def function_lengths(path: Path) -> list[tuple[str, int, int]]:
    """`(qualified name, first line, lines)` of every function and method in `path`, nested ones included; a
    function's lines run from its `def` to its last statement (decorators not counted)."""
    found = []

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                found.append((prefix + child.name, child.lineno, child.end_lineno - child.lineno + 1))
                visit(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                visit(child, f"{prefix}{child.name}.")
            else:
                visit(child, prefix)

    visit(ast.parse(path.read_text(encoding="utf-8"), str(path)), "")
    return found


def test_function_lengths_are_counted_from_def_to_last_line(tmp_path):
    """By hand on a small file: a method, a nested function, a decorated function, a one-liner."""
    source = ("class A:\n"                      # 1
              "    def m(self):\n"              # 2  m: lines 2-6 -> 5
              "        def inner():\n"          # 3  inner: 3-4 -> 2
              "            return 1\n"          # 4
              "        x = inner()\n"           # 5
              "        return x\n"              # 6
              "@staticmethod\n"                 # 7
              "def f(a,\n"                      # 8  f: 8-10 -> 3 (decorator not counted)
              "      b):\n"                     # 9
              "    return a + b\n"              # 10
              "def g(): return 0\n")            # 11 g: 1
    (tmp_path / "m.py").write_text(source)
    assert sorted(function_lengths(tmp_path / "m.py")) == [("A.m", 2, 5), ("A.m.inner", 3, 2), ("f", 8, 3),
                                                           ("g", 11, 1)]


def test_no_function_in_the_package_is_longer_than_80_lines():
    too_long = []
    for path in sorted((REPO / "pomp").rglob("*.py")):
        where = path.relative_to(REPO).as_posix()
        too_long += [f"{where}:{line} {name} ({lines} lines)" for name, line, lines in function_lengths(path)
                     if lines > MAX_FUNCTION_LINES]
    assert too_long == []
