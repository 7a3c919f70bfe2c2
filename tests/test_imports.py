"""The package's import graph: no two modules of ``pipeline`` import each other, even lazily.

Every ``import`` / ``from ... import`` of a ``pipeline`` module counts, at module level or inside a
function: a lazy import hides a cycle from Python's loader but not from the reader, who can no
longer say which module is the home of a concept.
"""

from __future__ import annotations

import ast

from .conftest import ROOT

PACKAGE = ROOT / "pipeline"


def import_graph() -> dict[str, set[str]]:
    """``{module: modules of pipeline it imports}``, by module stem, from the source's syntax tree."""
    modules = {path.stem for path in PACKAGE.glob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in PACKAGE.glob("*.py"):
        edges = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
                parts = node.module.split(".")
                edges |= {parts[1]} if len(parts) > 1 else {a.name for a in node.names if a.name in modules}
            elif isinstance(node, ast.Import):
                edges |= {a.name.split(".")[1] for a in node.names if a.name.startswith("pipeline.")}
        graph[path.stem] = edges & modules - {path.stem}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each an import cycle)."""
    order, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph has a few dozen nodes
        order[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        for succ in graph[node]:
            if succ not in order:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], order[succ])
        if low[node] == order[node]:
            component = []
            while (member := stack.pop()) != node:
                component.append(member)
            if component:
                found.append(sorted([node, *component]))

    for node in sorted(graph):
        if node not in order:
            visit(node)
    return found


def test_cycle_finder_finds_a_planted_cycle():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_graph_sees_lazy_imports():
    graph = import_graph()
    assert "losses" in graph["train"] or "losses" in graph["steps"] or "losses" in graph["trainer"]
    assert "segmenter" in graph["predict"]  # imported inside predict.main


def test_no_import_cycles_in_the_package():
    assert cycles(import_graph()) == []
