"""The diameter estimate's refinement passes: how far the second one moves the estimate.

Usage::

    python -m experiments.refinement --params PARAMS [--model pipeline/shipped/model] [--threads 2]
        [--out steps.csv]

On the validation fold of ``PARAMS`` (``data.prepared``, ``data.split``, ``data.val_fold``; every
source of a folder of sources), the ``'blob'`` estimate of :class:`pipeline.model.segmenter.Segmenter`
runs with both refinement passes every time. For each tolerance (octaves) the second pass would be
skipped when the first moved the prior by no more than it; printed per tolerance: images that skip
it, how far the skipped second pass would have moved the estimate (median, max), and the error of
the estimate against the true median diameter (mean |log2(estimate / truth)| per source, share
within 20 % and within ×1.41), against always two passes. The row of
:data:`pipeline.model.diameter.REFINE_OCTAVES` is the shipped behaviour.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd

import pipeline.model.segmenter as segmenter_module
from pipeline.config.params import load_config
from pipeline.data.folds import validation_index
from pipeline.files.io import load_npz
from pipeline.method.scale import median_diameter
from pipeline.model.segmenter import Segmenter
from pipeline.progress import progress

ROOT = Path(__file__).resolve().parents[1]

TOLERANCES = (0.0, 0.1, 0.15, 0.2, 0.25, 0.3, math.inf)


def refinement_steps(segmenter: Segmenter, image: np.ndarray) -> list[tuple[float, float | None]]:
    """(diameter asked, diameter measured) of each refinement pass of the blob estimate of a
    normalised image, both passes always run (empty for bright-field images); the passes from
    larger scale-space peaks (:data:`pipeline.model.diameter.NESTED_RESPONSE`) follow the first two."""
    steps, measure = [], segmenter._measure

    def logged(im, diameter):
        steps.append((diameter, measure(im, diameter)))
        return steps[-1][1]

    segmenter._measure = logged
    saved, segmenter_module.REFINE_OCTAVES = segmenter_module.REFINE_OCTAVES, -1.0
    try:
        segmenter.estimate_diameter(image, method="blob")
    finally:
        segmenter_module.REFINE_OCTAVES = saved
        del segmenter._measure
    return steps


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per tolerance, from the per-image ``table`` (columns source, truth, first, second:
    log2 moves of the two passes, est1 and est2: the estimate after one and after two passes)."""
    rows = []
    for tol in TOLERANCES:
        skip = table["first"].abs() <= tol
        estimate = np.where(skip, table.est1, table.est2)
        error = np.abs(np.log2(estimate / table.truth))
        row = {"octaves": tol, "skipped": int(skip.sum()),
               "2nd move median": table.second[skip].abs().median(), "2nd move max": table.second[skip].abs().max(),
               "within 20 %": float(np.mean(error < math.log2(1.2))), "within x1.41": float(np.mean(error < 0.5))}
        row.update({f"|err| {s}": float(error[table.source == s].mean()) for s in sorted(table.source.unique())})
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=Path, required=True)
    parser.add_argument("--model", default=str(ROOT / "pipeline/shipped/model"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, help="write the per-image table here")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    data = load_config(args.params).data
    index = validation_index(data)
    segmenter = Segmenter.from_model_dir(args.model, tta="none")
    rows, start = [], time.perf_counter()
    for item in progress(list(index.itertuples()), desc="images"):
        sample = load_npz(Path(data.prepared) / f"{item.id}.npz")
        if not sample["labels"].any():
            continue
        steps = refinement_steps(segmenter, segmenter.normalize(sample["image"]))
        if len(steps) < 2 or steps[1][0] != steps[0][1] or steps[1][1] is None:
            continue  # bright-field (not estimated), or not confirmed twice from one start
        (prior, first), (_, second) = steps[:2]  # the passes from the prior; larger peaks' after
        rows.append({"source": getattr(item, "source", ""), "id": item.id, "truth": median_diameter(sample["labels"]),
                     "prior": prior, "est1": first, "est2": second,
                     "first": math.log2(first / prior), "second": math.log2(second / first)})
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    print(f"model {args.model}: {len(table)} of {len(index)} validation images refined twice from one start, "
          f"{time.perf_counter() - start:.0f} s; shipped REFINE_OCTAVES = {segmenter_module.REFINE_OCTAVES}")
    print(summary(table).to_string(index=False, float_format=lambda v: f"{v:.3f}"))


if __name__ == "__main__":
    main()
