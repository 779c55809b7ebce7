"""Architecture rules of the package, checked on the source text (nothing is imported).

- The module-level imports between ``dpa1`` modules form no cycle (imports inside functions
  are allowed for lazy loading: with them the graph may only have cycles that pass through
  such a function-level import).
- The model (``dpa1/model/``) reaches the C++ acceleration package ``dpa1.accel`` only
  through its single hook module ``dpa1/model/accel_hook.py``.
- The repository holds no working notes (see ``_NOTE_WORDS``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Iterator
from pathlib import Path

from data_paths import ROOT

PACKAGE = ROOT / "dpa1"
ACCEL = "dpa1.accel"
ACCEL_HOOK = "dpa1.model.accel_hook"


def module_name(path: Path) -> str:
    """``dpa1/model/build.py`` -> ``dpa1.model.build``; a package's ``__init__`` -> the
    package."""
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def import_nodes(tree: ast.Module, lazy: bool) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements run when the module is imported (class bodies, ``if`` and
    ``try`` blocks included; ``if TYPE_CHECKING:`` excluded); with ``lazy`` also those
    inside functions."""
    stack: list[ast.AST] = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        elif isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend(node.orelse)
        elif isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda) and not lazy:
            continue
        else:
            stack.extend(ast.iter_child_nodes(node))


def raw_targets(name: str, is_package: bool, nodes: Iterable[ast.AST]) -> set[str]:
    """The dotted names the import statements ``nodes`` of module ``name`` may load:
    ``import a.b`` -> ``a.b``; ``from a import b`` -> ``a`` and ``a.b`` (``b`` may be a
    module); relative forms resolved against ``name``."""
    out: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                package = name.split(".") if is_package else name.split(".")[:-1]
                package = package[: len(package) - (node.level - 1)]
                base = ".".join(package + ([base] if base else []))
            out.add(base)
            out.update(f"{base}.{alias.name}" for alias in node.names)
    return out


def imported_modules(
    name: str, path: Path, known: dict[str, Path], lazy: bool = False
) -> set[str]:
    """The ``dpa1`` modules that importing ``name`` imports directly (see
    :func:`raw_targets`), plus the packages above each target (their ``__init__`` runs
    first) that are not above ``name`` itself."""
    tree = ast.parse(path.read_text(), str(path))
    targets = raw_targets(name, path.name == "__init__.py", import_nodes(tree, lazy))
    own_parents = {".".join(name.split(".")[:k]) for k in range(1, name.count(".") + 1)}
    out = set()
    for target in targets:
        parts = target.split(".")
        for k in range(1, len(parts) + 1):
            mod = ".".join(parts[:k])
            if mod in known and mod != name and mod not in own_parents:
                out.add(mod)
    return out


def import_graph(lazy: bool = False) -> dict[str, set[str]]:
    known = modules()
    return {name: imported_modules(name, path, known, lazy) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle ``[a, b, ..., a]`` of the directed graph, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_find_cycle_finds_cycles() -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b", "c"}, "b": {"c"}, "c": set()}) is None


def test_import_graph_sees_every_form(tmp_path: Path) -> None:
    """Absolute, from-module, relative and package-parent edges; TYPE_CHECKING and
    function-level imports only where they belong."""
    text = (
        "from typing import TYPE_CHECKING\n"
        "import dpa1.io.atomic\n"
        "from dpa1.io import config\n"
        "from . import env_mat\n"
        "from .network import EmbeddingNet\n"
        "if TYPE_CHECKING:\n    from dpa1.train import loss\n"
        "def f():\n    from dpa1.data import stats\n"
    )
    path = tmp_path / "m.py"
    path.write_text(text)
    known = modules()
    got = imported_modules("dpa1.model.m", path, known)
    assert got == {"dpa1.io", "dpa1.io.atomic", "dpa1.io.config", "dpa1.model.env_mat",
                   "dpa1.model.network"}
    lazy = imported_modules("dpa1.model.m", path, known, lazy=True)
    assert lazy == got | {"dpa1.data", "dpa1.data.stats"}


def test_module_level_imports_have_no_cycle() -> None:
    graph = import_graph()
    assert "dpa1.model.build" in graph and "dpa1.io.config" in graph["dpa1.model.build"]
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle at module level: " + " -> ".join(cycle or [])


def test_every_import_cycle_passes_through_a_lazy_import() -> None:
    """The looser rule: with function-level imports too, a cycle must contain at least one
    function-level edge (it is what breaks the cycle at import time)."""
    eager, full = import_graph(), import_graph(lazy=True)
    lazy_edges = {(a, b) for a, targets in full.items() for b in targets - eager[a]}
    cycle = find_cycle(full)
    while cycle is not None:
        edges = set(zip(cycle, cycle[1:], strict=False))
        assert edges & lazy_edges, "import cycle: " + " -> ".join(cycle)
        # drop one lazy edge of this cycle and look for another one
        a, b = sorted(edges & lazy_edges)[0]
        full[a] = full[a] - {b}
        cycle = find_cycle(full)


def _is_accel(target: str) -> bool:
    return target == ACCEL or target.startswith(ACCEL + ".")


def accel_references(path: Path, name: str) -> list[str]:
    """Every import of ``dpa1.accel`` (or a module in it) in the file ``path`` of module
    ``name``, at any level, as ``line: statement``; also strings naming it (as passed to
    ``importlib.import_module``)."""
    tree = ast.parse(path.read_text(), str(path))
    is_package = path.name == "__init__.py"
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            hit = any(_is_accel(t) for t in raw_targets(name, is_package, [node]))
        else:
            hit = isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and _is_accel(node.value)
        if hit:
            found.append((node.lineno, f"{node.lineno}: {ast.unparse(node)}"))
    return [text for _, text in sorted(found)]


def test_accel_rule_sees_every_form(tmp_path: Path) -> None:
    path = tmp_path / "probe.py"
    path.write_text(
        "from dpa1 import accel\n"
        "from dpa1.model import network\n"
        "def f():\n    from ..accel import ops\n"
        "import importlib\nimportlib.import_module('dpa1.accel.native')\n"
        "import dpa1.accelerate_not\n"
    )
    found = accel_references(path, "dpa1.model.probe")
    assert found == [
        "1: from dpa1 import accel",
        "4: from ..accel import ops",
        "6: 'dpa1.accel.native'",
    ], found


def test_model_reaches_accel_only_through_its_hook() -> None:
    """Holds trivially while dpa1/accel does not exist; enforced from then on."""
    offenders = [
        f"{path.relative_to(ROOT)}:{ref}"
        for name, path in modules().items()
        if name.startswith("dpa1.model.") and name != ACCEL_HOOK
        for ref in accel_references(path, name)
    ]
    assert not offenders, (
        f"dpa1/model must import dpa1.accel only in {ACCEL_HOOK}: " + "; ".join(offenders)
    )


# === no working notes in the repository ======================================================
# Assembled from parts so that this file does not match its own patterns.
_NOTE_WORDS = re.compile(
    "|".join(["st" + r"op [0-9]+", "to" + "night", "late " + "night", "the " + "issue"]),
    re.IGNORECASE,
)
_SCANNED = ["dpa1", "tests", "benchmarks", "docs", "examples", "README.md"]
_SKIPPED_DIRS = {"__pycache__", ".pytest_cache", ".ruff_cache", "build"}


def text_files() -> Iterator[Path]:
    """The text files of the scanned parts of the repository (binary files skipped)."""
    for top in _SCANNED:
        root = ROOT / top
        paths = [root] if root.is_file() else sorted(root.rglob("*"))
        for path in paths:
            if not path.is_file() or _SKIPPED_DIRS & set(path.relative_to(ROOT).parts):
                continue
            data = path.read_bytes()
            if b"\0" in data[:8192]:
                continue
            yield path


def test_no_working_notes() -> None:
    hits = []
    for path in text_files():
        text = path.read_bytes().decode("utf-8", errors="replace")
        for lineno, line in enumerate(text.splitlines(), 1):
            if _NOTE_WORDS.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{lineno}: {line.strip()[:80]}")
    assert not hits, "working notes in the repository:\n" + "\n".join(hits)
    assert _NOTE_WORDS.search("see " + "the " + "Issue") and not _NOTE_WORDS.search("stopped")
