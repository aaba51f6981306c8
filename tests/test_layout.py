"""The source tree shows the architecture: no import cycle, and a long module says why it is long.

The graph is built from the text of ``src/tether`` (nothing is imported): an
edge for every ``import`` statement that names a tether module, at module level
or inside a function (a deferred import is still a dependency, only a later
one), except those under ``if TYPE_CHECKING:``, which never run. ``from
tether.x import y`` is an edge to ``tether.x.y`` when that is a module, else
to ``tether.x``.

A module over :data:`LONG` lines (as ``wc -l`` counts them) carries a line
``Why this module is long: ...`` in its docstring; a module that is no longer
long drops it.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "tether"
#: Lines past which a module must say why it is long (STYLE.md: aim under ~500).
LONG = 500
#: How a module docstring states that reason.
REASON = "Why this module is long:"


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imported(tree: ast.Module, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that ``tree`` (the source of ``module``) imports."""
    found: set[str] = set()
    here = module.split(".") if is_package else module.split(".")[:-1]
    todo: list[ast.AST] = [tree]
    while todo:
        node = todo.pop()
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                todo.extend(child.orelse)
                continue
            if isinstance(child, ast.Import):
                found.update(a.name for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                if child.level:
                    base = here[: len(here) - (child.level - 1)]
                    target = ".".join([*base, *([child.module] if child.module else [])])
                else:
                    target = child.module or ""
                for alias in child.names:
                    sub = f"{target}.{alias.name}"
                    found.add(sub if sub in modules else target)
            todo.append(child)
    return (found & modules) - {module}


def import_graph(root: Path) -> dict[str, set[str]]:
    """Each module of the package at ``root`` and the package's modules it imports."""
    paths = {_module_name(p, root): p for p in sorted(root.rglob("*.py"))}
    return {
        module: _imported(
            ast.parse(path.read_text(), str(path)), module, path.name == "__init__.py", set(paths)
        )
        for module, path in paths.items()
    }


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One shortest cycle through each strongly connected part of ``graph``, as a path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    parts: list[set[str]] = []

    def visit(v: str) -> None:  # Tarjan's algorithm; the graph is a few dozen modules deep
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            part = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                part.add(w)
                if w == v:
                    break
            if len(part) > 1:
                parts.append(part)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    found = []
    for part in parts:
        start = min(part)
        came_from: dict[str, str] = {}
        queue = deque([start])
        while queue:
            v = queue.popleft()
            if start in graph[v]:
                path = [v]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                found.append([*reversed(path), start])
                break
            for w in sorted(graph[v] & part):
                if w not in came_from and w != start:
                    came_from[w] = v
                    queue.append(w)
    return sorted(found)


def test_the_import_graph_has_no_cycle() -> None:
    """No tether module imports, however late, a module that imports it back."""
    found = cycles(import_graph(SRC))
    assert not found, "import cycles: " + "; ".join(" -> ".join(c) for c in found)


def test_the_graph_sees_every_kind_of_import_but_type_checking(tmp_path: Path) -> None:
    """The cycle check finds a cycle made by a deferred or relative import, not a typing one."""
    pkg = tmp_path / "pkg"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sub" / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.sub.c import name\n")
    (pkg / "sub" / "c.py").write_text("from ..a import thing\n")
    (pkg / "d.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import e\n"
    )
    (pkg / "e.py").write_text("import pkg.d\n")
    graph = import_graph(pkg)
    assert graph["pkg.a"] == {"pkg.b"}
    assert graph["pkg.b"] == {"pkg.sub.c"}
    assert graph["pkg.sub.c"] == {"pkg.a"}
    assert graph["pkg.d"] == set()
    assert graph["pkg.e"] == {"pkg.d"}
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.sub.c", "pkg.a"]]


def _reason(path: Path) -> str | None:
    """The text after :data:`REASON` in the module docstring of ``path``, if any."""
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path))) or ""
    _, found, rest = doc.partition(REASON)
    return rest.strip() if found else None


def test_every_long_module_says_why_in_its_docstring() -> None:
    """A module over 500 lines has a 'Why this module is long:' line; a shorter one has none."""
    unexplained, stale = [], []
    for path in sorted(SRC.rglob("*.py")):
        lines = path.read_text().count("\n")
        reason = _reason(path)
        name = str(path.relative_to(SRC))
        if lines > LONG and not reason:
            unexplained.append(f"{name} ({lines} lines)")
        elif lines <= LONG and reason is not None:
            stale.append(f"{name} ({lines} lines)")
    assert not unexplained, f"over {LONG} lines without '{REASON} ...' in the docstring: " + (
        ", ".join(unexplained)
    )
    assert not stale, f"'{REASON}' in a module of {LONG} lines or fewer: " + ", ".join(stale)
