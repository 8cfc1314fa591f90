"""fastmetro's own import graph, read from the source (``ast``): every ``import`` of a fastmetro
module, at module level or inside a function, except those under ``if TYPE_CHECKING:`` (never
executed). Used by ``test_imports.py``; ``python tests/import_graph.py`` prints the cycles and
the imports inside functions.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "fastmetro"


@dataclass(frozen=True)
class Edge:
    source: str  # importing module, e.g. "fastmetro.model.factory"
    target: str  # imported module
    line: int
    in_function: bool
    reason: str  # the comment on the import's line or the line above ("" when none)


def module_names() -> dict[str, Path]:
    """``{"fastmetro.model.factory": path}`` for every module (``__init__`` names its package)."""
    names = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = ("fastmetro", *path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        names[".".join(parts)] = path
    return names


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _targets(node: ast.Import | ast.ImportFrom, package: str, modules: dict[str, Path]) -> list[str]:
    """The fastmetro modules an import statement loads (``from a import b``: ``a.b`` if it is a module)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names if alias.name.split(".")[0] == "fastmetro"]
    base = node.module or ""
    if node.level:  # relative: resolved against the importing package
        parent = package.split(".")[: len(package.split(".")) - node.level + 1]
        base = ".".join([*parent, base] if base else parent)
    if base.split(".")[0] != "fastmetro":
        return []
    found = [f"{base}.{alias.name}" for alias in node.names if f"{base}.{alias.name}" in modules]
    named_only = [alias for alias in node.names if f"{base}.{alias.name}" not in modules]
    return found + ([base] if named_only or not found else [])


def _reason(lines: list[str], line: int) -> str:
    """The comment explaining an import at ``line`` (1-based): on its line, or on the line above
    the block of imports it belongs to (one reason may cover a function's few lazy imports)."""
    index = line - 1
    if "#" in lines[index]:
        return lines[index].split("#", 1)[1].strip()
    while index > 0 and lines[index - 1].strip().startswith(("import ", "from ")):
        index -= 1
    above = lines[index - 1].strip() if index > 0 else ""
    return above[1:].strip() if above.startswith("#") else ""


def _module_edges(name: str, path: Path, modules: dict[str, Path]) -> list[Edge]:
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                continue
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                for target in _targets(child, package, modules):
                    if target != name:
                        reason = _reason(lines, child.lineno)
                        found.append(Edge(name, target, child.lineno, in_function, reason))
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            visit(child, nested)

    visit(ast.parse(text, filename=str(path)), False)
    return found


def edges() -> list[Edge]:
    """Every import of a fastmetro module by a fastmetro module."""
    modules = module_names()
    return [edge for name, path in modules.items() for edge in _module_edges(name, path, modules)]


def area(module: str) -> str:
    """A module's layer: its first name under fastmetro (``fastmetro`` itself: ``api``)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "api"


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def connect(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                connect(other)
                low[node] = min(low[node], low[other])
            elif other in on_stack:
                low[node] = min(low[node], index[other])
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

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for node in sorted(graph):
        if node not in index:
            connect(node)
    return found


def module_graph(all_edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in all_edges:
        graph.setdefault(edge.source, set()).add(edge.target)
    return graph


def area_graph(all_edges: list[Edge]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for edge in all_edges:
        if area(edge.source) != area(edge.target):
            graph.setdefault(area(edge.source), set()).add(area(edge.target))
    return graph


if __name__ == "__main__":
    every = edges()
    print("module cycles:", cycles(module_graph(every)))
    print("area cycles:", cycles(area_graph(every)))
    inside = [e for e in every if e.in_function]
    print(f"{len(inside)} fastmetro imports inside functions")
    for edge in inside:
        print(f"  {edge.source}:{edge.line} -> {edge.target}  # {edge.reason}")
