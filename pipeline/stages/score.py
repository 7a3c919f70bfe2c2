"""``nuclei score SUBMISSION.csv SOLUTION.csv``: the DSB2018 score of a submission, locally.

The submission is a Kaggle ``ImageId,EncodedPixels`` table; the solution is the Kaggle
solution format ``ImageId,EncodedPixels,Height,Width,Usage`` (one row per nucleus). Images of
the solution missing from the submission score 0; submission images the solution lacks are
reported and ignored.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.rle import SUBMISSION_COLUMNS, decode_image, validate_submission
from pipeline.errors import NucleiError, one_line
from pipeline.files.io import check_writable_file, write_csv
from pipeline.method.metrics import PRECISION_KEYS, aggregate, image_metrics
from pipeline.progress import progress

SOLUTION_COLUMNS = ("ImageId", "EncodedPixels", "Height", "Width")
#: Problems printed before the rest are only counted.
MAX_PROBLEMS_SHOWN = 20


def read_table(path: str | Path, columns: tuple[str, ...]) -> pd.DataFrame:
    """Read a submission or solution CSV with every cell as text (empty cells stay '').

    Raises
    ------
    NucleiError
        Missing or unreadable file, not CSV, or missing one of ``columns``.
    """
    path = Path(path)
    if not path.is_file():
        raise NucleiError(f"{path}: no such file")
    try:
        df = pd.read_csv(path, dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise NucleiError(f"{path}: empty file (expected a CSV with columns {','.join(columns)})") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        raise NucleiError(f"{path}: not a readable CSV file ({one_line(exc)})") from None
    missing = [c for c in columns if c not in df.columns]
    if missing:
        raise NucleiError(
            f"{path}: missing column(s) {', '.join(missing)} (expected {','.join(columns)}; "
            f"found {','.join(map(str, df.columns))})"
        )
    df["ImageId"] = df["ImageId"].str.strip()
    return df


def solution_shapes(solution: pd.DataFrame) -> tuple[dict[str, tuple[int, int]], list[str]]:
    """Image sizes from the ``Height``/``Width`` columns of a solution table.

    Returns
    -------
    shapes : dict ImageId → (H, W)
    problems : list of str, one per row with a non-integer or non-positive size and per image
        whose rows disagree on the size.
    """
    problems: list[str] = []
    height = pd.to_numeric(solution["Height"], errors="coerce")
    width = pd.to_numeric(solution["Width"], errors="coerce")
    ok = (height > 0) & (width > 0) & (height % 1 == 0) & (width % 1 == 0)
    for pos in np.flatnonzero(~ok.to_numpy()):
        problems.append(
            f"image {solution['ImageId'].iat[pos]}, line {pos + 2}: Height/Width "
            f"{solution['Height'].iat[pos]!r}/{solution['Width'].iat[pos]!r} is not a positive integer"
        )
    sizes = pd.DataFrame({"ImageId": solution["ImageId"], "H": height, "W": width})[ok]
    per_image = sizes.groupby("ImageId", sort=False).agg(["min", "max"])
    mixed = per_image[(per_image["H", "min"] != per_image["H", "max"]) | (per_image["W", "min"] != per_image["W", "max"])]
    problems.extend(f"image {image_id}: rows disagree on Height/Width" for image_id in mixed.index)
    shapes = {
        image_id: (int(h), int(w))
        for image_id, h, w in zip(per_image.index, per_image["H", "min"], per_image["W", "min"], strict=True)
    }
    return shapes, problems


def check_pair(
    submission: pd.DataFrame, solution: pd.DataFrame, sub_name: str = "submission", sol_name: str = "solution"
) -> list[str]:
    """Every problem of a solution/submission pair, one line each, prefixed by the file name.

    The solution is checked for sizes and run-length strings; the submission's strings are
    checked against the solution's image sizes.
    """
    if solution.empty:
        return [f"{sol_name}: no rows (a solution has one row per nucleus)"]
    shapes, problems = solution_shapes(solution)
    problems = [f"{sol_name}: {p}" for p in problems]
    problems += [f"{sol_name}: {p}" for p in validate_submission(solution, shapes)]
    problems += [f"{sub_name}: {p}" for p in validate_submission(submission, shapes)]
    return problems


def compare_ids(submission: pd.DataFrame, solution: pd.DataFrame) -> tuple[list[str], list[str]]:
    """(solution ids missing from the submission, submission ids absent from the solution)."""
    sub_ids = pd.unique(submission["ImageId"])
    sol_ids = pd.unique(solution["ImageId"])
    sub_set, sol_set = set(sub_ids), set(sol_ids)
    return [i for i in sol_ids if i not in sub_set], [i for i in sub_ids if i not in sol_set]


def score_submission(
    submission: pd.DataFrame,
    solution: pd.DataFrame,
    sub_name: str = "submission",
    sol_name: str = "solution",
    validate: bool = True,
) -> tuple[dict[str, float], pd.DataFrame]:
    """Score a submission table against a solution table.

    Parameters
    ----------
    submission : DataFrame with columns ``ImageId, EncodedPixels``
    solution : DataFrame with columns ``ImageId, EncodedPixels, Height, Width`` (``Usage``
        optional, copied to the per-image table)
    sub_name, sol_name : str
        Names used in error messages (usually the file names).
    validate : bool
        Check both tables first (:func:`check_pair`); pass False only if already checked.

    Returns
    -------
    summary : dict
        :func:`pipeline.method.metrics.aggregate` of the per-image table (``dsb_score`` is the
        competition score) plus ``n_missing`` (solution images without a submission row) and
        ``n_extra`` (submission images the solution lacks, ignored).
    per_image : DataFrame
        One row per solution image, in solution order: ``ImageId``, ``Usage`` (if given),
        ``in_submission``, then the keys of :func:`pipeline.method.metrics.image_metrics`. Missing
        images score 0 (``dsb_score``, ``ap50`` and ``p@t``), even when they have no nucleus.

    Raises
    ------
    NucleiError
        Malformed solution or submission (first problem and the number of problems).
    """
    for table, name, columns in ((submission, sub_name, SUBMISSION_COLUMNS), (solution, sol_name, SOLUTION_COLUMNS)):
        missing = [c for c in columns if c not in table.columns]
        if missing:
            raise NucleiError(f"{name}: missing column(s) {', '.join(missing)}")
    problems = check_pair(submission, solution, sub_name, sol_name) if validate else []
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise NucleiError(problems[0] + more)
    shapes, _ = solution_shapes(solution)
    missing_ids, extra_ids = compare_ids(submission, solution)
    missing_set = set(missing_ids)
    true_rles = solution.groupby("ImageId", sort=False)["EncodedPixels"].agg(list)
    pred_rles = submission.groupby("ImageId", sort=False)["EncodedPixels"].agg(list)
    usage = (
        solution.groupby("ImageId", sort=False)["Usage"].first() if "Usage" in solution.columns else None
    )
    rows = []
    for image_id in progress(true_rles.index, desc="scoring", total=len(true_rles)):
        shape = shapes[image_id]
        true = decode_image(true_rles[image_id], shape)
        pred = decode_image(pred_rles.get(image_id, []), shape)
        metrics = image_metrics(true, pred)
        if image_id in missing_set:
            metrics.update(dict.fromkeys(["dsb_score", "ap50", *PRECISION_KEYS], 0.0))
        row = {"ImageId": image_id}
        if usage is not None:
            row["Usage"] = usage[image_id]
        row["in_submission"] = image_id not in missing_set
        rows.append(row | metrics)
    per_image = pd.DataFrame(rows)
    summary = aggregate(per_image.drop(columns=["in_submission"]))
    summary["n_missing"] = len(missing_ids)
    summary["n_extra"] = len(extra_ids)
    return summary, per_image


def format_summary(summary: Mapping[str, float], per_image: pd.DataFrame | None = None) -> str:
    """Human-readable report: the line ``DSB2018 score 0.xxxx`` first, then the companions."""
    lines = [f"DSB2018 score {summary['dsb_score']:.4f}"]
    if per_image is not None and "Usage" in per_image.columns and per_image["Usage"].nunique() > 1:
        for usage, group in per_image.groupby("Usage"):
            lines.append(f"  {usage or '(no usage)'}: {group['dsb_score'].mean():.4f} ({len(group)} images)")
    lines += [
        f"images {summary['n_images']} (missing from submission: {summary.get('n_missing', 0)}), "
        f"nuclei true {summary['n_true']}, predicted {summary['n_pred']}",
        f"AP@0.5 (TP/(TP+FP+FN)) {summary['ap50']:.4f}",
        f"F1@0.5                 {summary['f1_50']:.4f}",
        f"mean matched IoU       {summary['mean_matched_iou']:.4f}"
        if np.isfinite(summary["mean_matched_iou"])
        else "mean matched IoU       n/a (no match)",
        f"AJI                    {summary['aji']:.4f}",
        f"pixel Dice             {summary['pixel_dice']:.4f}",
        f"pixel IoU              {summary['pixel_iou']:.4f}",
        f"pixel accuracy         {summary['pixel_accuracy']:.4f}",
        f"count error            {summary['count_error']:.4f}",
        "precision per IoU threshold: "
        + "  ".join(f"{key[2:]} {summary[key]:.3f}" for key in PRECISION_KEYS),
    ]
    return "\n".join(lines)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nuclei score``."""
    parser.add_argument("submission", type=Path, help="submission CSV (ImageId,EncodedPixels)")
    parser.add_argument("solution", type=Path, help="solution CSV (ImageId,EncodedPixels,Height,Width,Usage)")
    parser.add_argument("--per-image", type=Path, metavar="OUT.csv", help="also write the per-image metrics here")


def main(args: argparse.Namespace) -> int:
    """Run ``nuclei score``; exit status 0, or 1 when either file is malformed or ``--per-image``
    cannot be written (checked before scoring)."""
    if args.per_image is not None:
        check_writable_file(args.per_image)
    submission = read_table(args.submission, SUBMISSION_COLUMNS)
    solution = read_table(args.solution, SOLUTION_COLUMNS)
    problems = check_pair(submission, solution, str(args.submission), str(args.solution))
    if problems:
        for problem in problems[:MAX_PROBLEMS_SHOWN]:
            print(f"nuclei: error: {problem}", file=sys.stderr)
        if len(problems) > MAX_PROBLEMS_SHOWN:
            print(f"nuclei: error: ... and {len(problems) - MAX_PROBLEMS_SHOWN} more problems", file=sys.stderr)
        return 1
    missing_ids, extra_ids = compare_ids(submission, solution)
    if len(missing_ids) == solution["ImageId"].nunique():
        raise NucleiError(
            f"{args.submission}: no image id in common with {args.solution} "
            f"({submission['ImageId'].nunique()} vs {len(missing_ids)} images); is it the matching solution?"
        )
    if extra_ids:
        shown = ", ".join(extra_ids[:MAX_PROBLEMS_SHOWN]) + (" ..." if len(extra_ids) > MAX_PROBLEMS_SHOWN else "")
        print(
            f"nuclei: warning: {args.submission}: {len(extra_ids)} image id(s) not in the solution, ignored: {shown}",
            file=sys.stderr,
        )
    if missing_ids:
        print(
            f"nuclei: warning: {args.submission}: {len(missing_ids)} solution image(s) missing, scored 0",
            file=sys.stderr,
        )
    summary, per_image = score_submission(
        submission, solution, str(args.submission), str(args.solution), validate=False
    )
    print(format_summary(summary, per_image))
    if args.per_image is not None:
        write_csv(args.per_image, per_image)
        print(f"per-image metrics written to {args.per_image}")
    return 0
