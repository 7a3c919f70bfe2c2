"""MkDocs hook (``hooks:`` in mkdocs.yml): put the shipped models' cards into the site.

``pipeline/shipped/model/MODEL_CARD.md`` lives beside the model it describes, outside ``docs/``; this hook
adds it to the site as ``model-card.md``, with the figure it shows (``failures.png``), and the H&E
variant's (``pipeline/shipped/he/MODEL_CARD.md``) as ``model-card-he.md``, so that each
card has one home and the site shows it. Build with ``make docs`` (``mkdocs build --strict``).
"""

from __future__ import annotations

from pathlib import Path

from mkdocs.structure.files import File, Files

SHIPPED = Path(__file__).resolve().parents[1] / "pipeline" / "shipped"
MODEL = SHIPPED / "model"


def on_files(files: Files, config) -> Files:
    files.append(File.generated(config, "model-card.md", content=(MODEL / "MODEL_CARD.md").read_text(encoding="utf-8")))
    files.append(File.generated(config, "failures.png", abs_src_path=str(MODEL / "failures.png")))
    files.append(File.generated(config, "model-card-he.md",
                                content=(SHIPPED / "he" / "MODEL_CARD.md").read_text(encoding="utf-8")))
    return files
