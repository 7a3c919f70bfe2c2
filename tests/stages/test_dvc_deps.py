"""dvc.yaml's code dependencies cover what each stage imports: editing any module a stage runs
makes ``dvc status`` report that stage (its import closure, lazy imports included, from the same
graph as tests/test_imports.py)."""

from __future__ import annotations

import re

import pytest
import yaml

from pipeline.cli import COMMANDS

from ..conftest import ROOT
from ..import_graph import import_graph


def closure(graph: dict[str, set[str]], module: str) -> set[str]:
    """``module`` and every module it reaches through the graph."""
    seen, todo = set(), [module]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph.get(name, ()))
    return seen


def source_file(module: str) -> str:
    """``pipeline.method.heads`` → ``pipeline/method/heads.py`` (a package: its ``__init__.py``)."""
    path = module.replace(".", "/")
    return f"{path}.py" if (ROOT / f"{path}.py").is_file() else f"{path}/__init__.py"


def covered(file: str, deps: list[str]) -> bool:
    return any(file == d or file.startswith(d.rstrip("/") + "/") for d in deps)


def stage_commands() -> dict[str, tuple[str, list[str]]]:
    """``{stage: (nuclei command, code deps)}`` of dvc.yaml (a ``foreach`` stage's ``do``)."""
    stages = {}
    for name, stage in yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"].items():
        stage = stage.get("do", stage)
        command = re.match(r"nuclei (\w+)", stage["cmd"]).group(1)
        stages[name] = (command, [d for d in stage["deps"] if isinstance(d, str) and d.startswith("pipeline")])
    return stages


def uncovered(graph, stages) -> dict[str, list[str]]:
    missing = {}
    for name, (command, deps) in stages.items():
        files = {source_file(m) for m in closure(graph, COMMANDS[command][0]) if m != "pipeline"}
        if gaps := sorted(f for f in files if not covered(f, deps)):
            missing[name] = gaps
    return missing


def test_every_stage_runs_a_nuclei_command():
    stages = stage_commands()
    assert {"prepare", "targets", "train", "predict", "postprocess", "evaluate", "submit"} <= set(stages)
    assert all(command in COMMANDS for command, _ in stages.values())


def test_stage_deps_cover_every_module_the_stage_imports():
    assert uncovered(import_graph(), stage_commands()) == {}


def test_a_missing_dep_is_found():
    graph = import_graph()
    stages = stage_commands()
    command, deps = stages["targets"]
    stages["targets"] = (command, [d for d in deps if d != "pipeline/method"])
    assert "pipeline/method/heads.py" in uncovered(graph, stages)["targets"]


@pytest.mark.parametrize("dep", sorted({d for _, deps in stage_commands().values() for d in deps}))
def test_every_code_dep_exists(dep):
    assert (ROOT / dep).exists(), dep
