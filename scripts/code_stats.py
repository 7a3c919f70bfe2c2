"""The package's shape: modules per folder, the longest functions, the largest modules.

    python -m scripts.code_stats [REPO]

Prints what the layout decisions quote (docs/decisions.md, "The package's folders follow the data's
path"); ``REPO`` defaults to this checkout (give another worktree to compare a revision).
"""

from __future__ import annotations

import ast
import collections
import sys
from pathlib import Path


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).resolve().parents[1]) / "pipeline"
    lengths, per_folder, sizes = [], collections.Counter(), []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        per_folder[rel.parent.as_posix()] += 1
        text = path.read_text(encoding="utf-8")
        sizes.append((len(text.splitlines()), rel.as_posix()))
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lengths.append((node.end_lineno - node.lineno + 1, f"{rel.as_posix()}:{node.name}"))
    lengths.sort(reverse=True)
    sizes.sort(reverse=True)
    print("modules per folder:", ", ".join(f"{k} {v}" for k, v in sorted(per_folder.items())))
    print(f"functions: {len(lengths)}, over 60 lines: {sum(n > 60 for n, _ in lengths)}")
    print("longest functions:", ", ".join(f"{name} {n}" for n, name in lengths[:5]))
    print("largest modules:", ", ".join(f"{name} {n}" for n, name in sizes[:5]))
    print(f"modules over 450 lines: {sum(n > 450 for n, _ in sizes)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
