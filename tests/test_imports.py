"""The package's import graph: every link seen, no cycle, no import up the floors.

A link is any ``import`` / ``from ... import`` of a ``pipeline`` module, at module level or inside
a function, and any string that names a ``pipeline`` module (``importlib.import_module`` targets,
the command table of :mod:`pipeline.cli`): a lazy link hides a cycle from Python's loader but not
from the reader, who can no longer say which module is the home of a concept.

The floors are those of ``docs/ARCHITECTURE.md``: a module may import its own folder and the
folders of lower floors, never a folder of its own floor or of a higher one.
"""

from __future__ import annotations

import ast

from .conftest import ROOT
from .import_graph import PACKAGE, import_graph

#: Folder (or top-level module) of ``pipeline`` → its floor (docs/ARCHITECTURE.md, "Floors").
FLOORS = {
    "__init__": 0, "arguments": 0, "errors": 0, "progress": 0, "shipped": 0,
    "config": 1,
    "files": 2, "method": 2,
    "data": 3,
    "model": 4,
    "training": 5, "batch": 5,
    "stages": 6, "napari_plugin": 6,
    "commands": 7,
}
#: Top-level modules that belong to one unit.
UNITS = {"cli": "commands", "__main__": "commands"}
#: Folders whose modules must not import torch at module level (usable without a network).
NO_TORCH_AT_IMPORT = ("config", "files", "method", "data")
def floor_of(module: str) -> tuple[str, int]:
    unit = module.split(".")[1] if "." in module else "__init__"
    unit = UNITS.get(unit, unit)
    return unit, FLOORS[unit]


def upward_links(graph: dict[str, set[str]]) -> list[str]:
    """Links to a folder of the same or a higher floor (other than the module's own folder)."""
    bad = []
    for module, targets in sorted(graph.items()):
        unit, floor = floor_of(module)
        for target in sorted(targets):
            other, other_floor = floor_of(target)
            if other != unit and other_floor >= floor:
                bad.append(f"{module} (floor {floor}) -> {target} (floor {other_floor})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (each an import cycle)."""
    order, low, stack, found, counter = {}, {}, [], [], [0]

    def visit(node: str) -> None:  # Tarjan's algorithm; the graph has a few dozen nodes
        order[node] = low[node] = counter[0]
        counter[0] += 1
        stack.append(node)
        for succ in graph.get(node, ()):
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


def test_graph_walks_subpackages_and_sees_lazy_links(tmp_path):
    package = tmp_path / "pipeline"
    for folder in ("method", "stages"):
        (package / folder).mkdir(parents=True)
        (package / folder / "__init__.py").write_text("")
    (package / "__init__.py").write_text("")
    (package / "method" / "heads.py").write_text("def f():\n    from pipeline.stages import train\n")
    (package / "stages" / "train.py").write_text("import importlib\nM = importlib.import_module('pipeline.method.heads')\n")
    graph = import_graph(package)
    assert graph["pipeline.method.heads"] == {"pipeline.stages.train"}  # inside a function
    assert graph["pipeline.stages.train"] == {"pipeline.method.heads"}  # a module named in a string
    assert upward_links(graph) == ["pipeline.method.heads (floor 2) -> pipeline.stages.train (floor 6)"]


def test_graph_sees_the_real_lazy_links():
    graph = import_graph()
    assert "pipeline.model.segmenter" in graph["pipeline.stages.predict"]  # imported inside predict.main
    assert "pipeline.batch.segment" in graph["pipeline.cli"]  # the command table's strings
    assert len(graph) > 70  # every subpackage walked


def test_every_folder_has_a_floor():
    units = {floor_of(m)[0] for m in import_graph()}
    assert units <= set(FLOORS), units - set(FLOORS)


def test_no_import_cycles_in_the_package():
    assert cycles(import_graph()) == []


def test_no_upward_imports():
    assert upward_links(import_graph()) == []


def test_nothing_below_the_stages_imports_a_stage():
    graph = import_graph()
    offenders = [m for m, targets in graph.items() if not m.startswith("pipeline.stages")
                 and m != "pipeline.cli" and any(t.startswith("pipeline.stages") for t in targets)]
    assert offenders == []


def test_array_floors_do_not_import_torch_at_module_level():
    offenders = []
    for folder in NO_TORCH_AT_IMPORT:
        for path in (PACKAGE / folder).rglob("*.py"):
            for node in ast.parse(path.read_text(encoding="utf-8")).body:
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                    [node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names if n.split(".")[0] == "torch"]
    assert offenders == []
