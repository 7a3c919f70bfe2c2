"""Write the Kaggle solution file of a Kaggle-layout training root.

Usage: ``python -m scripts.make_sample_solution [ROOT] [OUT.csv]``, by default
``data/sample/stage1_train`` → ``data/sample/solution.csv`` (relative to the repository root).
The file has the Kaggle stage-1 solution columns ``ImageId,EncodedPixels,Height,Width,Usage``
(Usage = Public), one row per nucleus of the label map that ``pipeline.files.io`` reads (overlaps
resolved, holes filled), so that ``nuclei score`` can be shown end to end.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from pipeline.data.kaggle import iter_kaggle_root
from pipeline.data.rle import encode_labels, validate_submission
from pipeline.errors import NucleiError
from pipeline.files.io import write_csv

ROOT = Path(__file__).resolve().parents[1]


def solution_table(root: Path) -> pd.DataFrame:
    """Kaggle solution table of every sample under ``root`` (ids in sorted order)."""
    rows = []
    for image_id, _, labels in iter_kaggle_root(root, masks=True, desc="encoding"):
        height, width = labels.shape
        rows += [(image_id, rle, height, width, "Public") for rle in encode_labels(labels) or [""]]
    return pd.DataFrame(rows, columns=["ImageId", "EncodedPixels", "Height", "Width", "Usage"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=ROOT / "data/sample/stage1_train")
    parser.add_argument("out", nargs="?", type=Path, default=ROOT / "data/sample/solution.csv")
    args = parser.parse_args(argv)
    try:
        table = solution_table(args.root)
    except NucleiError as exc:
        print(f"make_sample_solution: error: {exc}", file=sys.stderr)
        return 1
    shapes = dict(zip(table["ImageId"], zip(table["Height"], table["Width"], strict=True), strict=True))
    problems = validate_submission(table, shapes)
    if problems:  # cannot happen for label maps from pipeline.files.io; guard the shipped file anyway
        print(f"make_sample_solution: error: {problems[0]}", file=sys.stderr)
        return 1
    write_csv(args.out, table)
    print(f"{args.out}: {table['ImageId'].nunique()} images, {len(table)} rows")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
