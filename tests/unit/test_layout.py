"""The source tree stays in small rooms without circular imports.

Modules over 600 lines mix jobs; an import cycle at module level makes the import order
matter (a half-initialised module) and usually means two modules share one job. Imports
under `if TYPE_CHECKING:` and inside functions run later (or never) and do not count.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = "crypto_sentinel"
MAX_LINES = 600


def module_name(path: Path, root: Path = SRC) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = SRC) -> dict[str, Path]:
    """Every module of the package under `root`, by dotted name."""
    return {module_name(path, root): path for path in sorted((root / PACKAGE).rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def module_level_imports(tree: ast.Module) -> list[ast.Import | ast.ImportFrom]:
    """Imports that run when the module is imported: the body, class bodies and the
    branches of module-level if/try/with blocks (not `if TYPE_CHECKING:`), never function
    bodies."""
    found: list[ast.Import | ast.ImportFrom] = []
    pending: list[ast.stmt] = list(tree.body)
    while pending:
        node = pending.pop()
        if isinstance(node, ast.Import | ast.ImportFrom):
            found.append(node)
        elif isinstance(node, ast.If):
            if not is_type_checking(node.test):
                pending.extend(node.body)
            pending.extend(node.orelse)
        elif isinstance(node, ast.Try):
            pending.extend(node.body + node.orelse + node.finalbody)
            for handler in node.handlers:
                pending.extend(handler.body)
        elif isinstance(node, ast.With | ast.ClassDef):  # a class body runs at import
            pending.extend(node.body)
    return found


def targets(name: str, node: ast.Import | ast.ImportFrom, known: set[str]) -> set[str]:
    """The package modules an import statement in module `name` loads.

    `import a.b` loads `a.b`; `from a import b` loads the submodule `a.b` if there is one,
    else takes the name from `a` itself (its `__init__`, even when `a` is `name`'s own
    package: that one is half-initialised at this point). On the way every package
    `__init__` runs, except `name`'s own packages: those are loading already.
    """
    wanted: set[str] = set()
    if isinstance(node, ast.Import):
        wanted = {alias.name for alias in node.names}
    else:
        base = node.module or ""
        if node.level:  # relative: resolve against this module's package
            package = name.split(".")
            if not any(other.startswith(name + ".") for other in known):
                package = package[:-1]
            package = package[: len(package) - (node.level - 1)]
            base = ".".join(package + ([base] if base else []))
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            wanted.add(sub if sub in known else base)
    own = {".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)}
    loaded = set()
    for module in wanted:
        parts = module.split(".")
        for i in range(1, len(parts) + 1):
            prefix = ".".join(parts[:i])
            if prefix in known and (prefix == module or prefix not in own):
                loaded.add(prefix)
    return loaded - {name}


def import_graph(root: Path = SRC) -> dict[str, set[str]]:
    found = modules(root)
    known = set(found)
    graph: dict[str, set[str]] = {}
    for name, path in found.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        edges: set[str] = set()
        for node in module_level_imports(tree):
            edges |= targets(name, node, known)
        graph[name] = edges
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.get(node, ())):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_no_module_is_over_600_lines() -> None:
    found = modules()
    assert len(found) > 100  # the walk found the tree
    long = {
        name: lines
        for name, path in found.items()
        if (lines := len(path.read_text(encoding="utf-8").splitlines())) > MAX_LINES
    }
    assert long == {}


def test_src_has_no_import_cycle() -> None:
    graph = import_graph()
    assert sum(len(edges) for edges in graph.values()) > 200  # imports were found
    assert cycles(graph) == []


def write(root: Path, files: dict[str, str]) -> Path:
    for relative, text in files.items():
        path = root / PACKAGE / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


@pytest.mark.parametrize(
    ("files", "expected"),
    [
        # a plain two-module cycle
        (
            {"a.py": "import crypto_sentinel.b\n", "b.py": "from crypto_sentinel import a\n"},
            [["crypto_sentinel.a", "crypto_sentinel.b"]],
        ),
        # imports that run later or never do not count
        (
            {
                "a.py": "import crypto_sentinel.b\n",
                "b.py": (
                    "from typing import TYPE_CHECKING\n"
                    "if TYPE_CHECKING:\n    from crypto_sentinel import a\n"
                    "def f():\n    from crypto_sentinel import a\n"
                ),
            },
            [],
        ),
        # a class body runs at import time: its imports count
        (
            {
                "a.py": "import crypto_sentinel.b\n",
                "b.py": "class K:\n    import crypto_sentinel.a\n",
            },
            [["crypto_sentinel.a", "crypto_sentinel.b"]],
        ),
        # a package __init__ importing its submodule, which imports a sibling: no cycle
        (
            {
                "sim/__init__.py": "from crypto_sentinel.sim.server import S\n",
                "sim/server.py": "from crypto_sentinel.sim import level\n",
                "sim/level.py": "X = 1\n",
            },
            [],
        ),
        # an outside module reaching a package __init__ that imports it back: a cycle
        (
            {
                "sim/__init__.py": "from crypto_sentinel.sim.server import S\n",
                "sim/server.py": "from crypto_sentinel import other\n",
                "other.py": "from crypto_sentinel.sim import level\n",
                "sim/level.py": "X = 1\n",
            },
            [["crypto_sentinel.other", "crypto_sentinel.sim", "crypto_sentinel.sim.server"]],
        ),
        # relative imports resolve against the package
        (
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "from . import b\n",
                "pkg/b.py": "from .a import X\n",
            },
            [["crypto_sentinel.pkg.a", "crypto_sentinel.pkg.b"]],
        ),
    ],
)
def test_cycle_finder(tmp_path: Path, files: dict[str, str], expected: list[list[str]]) -> None:
    root = write(tmp_path, {"__init__.py": "", **files})
    assert cycles(import_graph(root)) == expected
