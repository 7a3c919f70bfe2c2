"""The package's import graph, for tests/test_imports.py and tests/stages/test_dvc_deps.py.

A link is any ``import`` / ``from ... import`` of a ``pipeline`` module, at module level or inside
a function, and any string that names a ``pipeline`` module (``importlib.import_module`` targets,
the command table of :mod:`pipeline.cli`).
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

from .conftest import ROOT

PACKAGE = ROOT / "pipeline"
MODULE_STRING = re.compile(r"pipeline(\.\w+)+")


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """``pipeline/method/heads.py`` → ``pipeline.method.heads`` (``__init__`` names its package)."""
    parts = path.relative_to(package.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" and len(parts) > 2 else parts)


def links(path: Path, modules: set[str]) -> set[str]:
    """The modules of ``modules`` that the source file ``path`` links to, lazily or not."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "pipeline":
            names = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in modules else node.module
                     for a in node.names]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and MODULE_STRING.fullmatch(node.value):
            names = [node.value]
        for name in names:
            while name and name not in modules:  # pipeline.a.b.attr → pipeline.a.b
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """``{module: modules of the package it links to}``, over every subpackage."""
    paths = sorted(package.rglob("*.py"))
    modules = {module_name(p, package) for p in paths}
    modules.discard(package.name)  # the package itself: ``from pipeline import __version__``
    return {module_name(p, package): links(p, modules) - {module_name(p, package)} for p in paths}
