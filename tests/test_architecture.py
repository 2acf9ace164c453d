"""The house's rules, read from the sources (docs/architecture.md): which package may import which, no
import cycles, and modules and functions a reader can hold in their head."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("core", "train", "eval", "submission")
MAX_MODULE_LINES = 500
MAX_FUNCTION_LINES = 80
LONG_REASON = "# long:"  # the first line of a longer function's body says why it is long
# What each package may import of the others: the foundation none, the three only the foundation.
ALLOWED = {"core": set(), "train": {"core"}, "eval": {"core"}, "submission": {"core"}}


def modules(*roots: str) -> dict[str, Path]:
    found = {}
    for root in roots:
        for path in sorted((ROOT / root).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports(path: Path, name: str) -> set[str]:
    """Every module this one imports, at any depth of its code (function-level imports included)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


def project_graph() -> dict[str, set[str]]:
    known = modules(*PACKAGES)
    return {name: {i for i in imports(path, name) if i in known and i != name} for name, path in known.items()}


def test_packages_import_only_the_foundation():
    broken = []
    for name, targets in project_graph().items():
        package = name.split(".")[0]
        for target in targets:
            other = target.split(".")[0]
            if other != package and other not in ALLOWED[package]:
                broken.append(f"{name} imports {target}")
    assert not broken, "\n".join(broken)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in graph[node]:
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_no_import_cycles():
    graph = project_graph()
    # A package's __init__ importing its own modules is how a package is built, not a cycle of ideas.
    graph = {n: {t for t in ts if not (ROOT.joinpath(*t.split(".")).is_dir() and n.startswith(t + "."))}
             for n, ts in graph.items()}
    assert cycles(graph) == []


def test_cycle_finder_finds_a_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


@pytest.mark.parametrize("root", PACKAGES + ("bench", "docker"))
def test_modules_and_functions_are_short(root):
    too_long = []
    for name, path in modules(root).items():
        text = path.read_text(encoding="utf-8")
        lines = len(text.splitlines())
        if lines > MAX_MODULE_LINES:
            too_long.append(f"{name}: {lines} lines")
        source = text.splitlines()
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                body = node.body[1:] if ast.get_docstring(node) is not None and len(node.body) > 1 else node.body
                first = source[body[0].lineno - 2].strip() if body else ""
                if length > MAX_FUNCTION_LINES and not first.startswith(LONG_REASON):
                    too_long.append(f"{name}.{node.name}: {length} lines")
    assert not too_long, "\n".join(too_long)


def test_every_room_says_what_it_owns():
    missing = [name for name, path in modules(*PACKAGES).items()
               if path.stat().st_size and ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) is None]
    assert not missing, f"modules without a docstring: {missing}"
