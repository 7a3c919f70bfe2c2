"""Robustness of segmentation to the shifts a new microscope brings: scale, contrast, noise, stain, colour.

Usage::

    python -m benchmarks.bench_robustness [--model DIR] [--baseline DIR] [--oracle]
        [--params PARAMS] [--images 40] [--crop 320] [--tta auto] [--out table.csv]

Images: the validation fold (``data.val_fold`` of ``data.split``, by default the fold grouped by
experiment) of the prepared data named by ``--params`` (``data.prepared``); ``--images`` of them,
spread evenly over the fold (sorted by image type and id), each cut to a centred window of at
most ``--crop`` px a side. Prepared data of several sources (``data.sources``: DSB2018 beside dense
tissue fluorescence and H&E) give each source an equal share of the images, and the scale goal
and counting error are printed per source too. Conditions, applied to the image and (for geometry) to its labels:

- ``x0.5`` … ``x4``: rescaled (image by area/bilinear resampling, labels by nearest neighbour),
  so nuclei of 20 px become 10 … 80 px;
- ``dim12+sat``: grey levels squeezed into 1/8 of a 12-bit range inside a 16-bit image (values
  100–612 of 65,535) with the largest nucleus pasted in saturated (65,535);
- ``noise``: Gaussian noise, σ = 10 % of the image's 1–99 % percentile range;
- ``blur``: Gaussian blur, σ = 2 px;
- ``stain``: H&E stain jitter in HED space (every stain scaled ×0.75–1.25, fixed seed);
- ``ihc``: immunohistochemistry of a nuclear antigen (Ki-67, ER) on a stained image: haematoxylin
  counterstain alone (eosin removed) and half of the nuclei DAB-positive, brown (``DAB``,
  :func:`pipeline.training.augment.dab_stain`: their haematoxylin moved into DAB); other images are left as
  they are. The
  brown follows the true outlines, so this measures whether brown nuclei are found (AP@0.5,
  counts) more than how well they are outlined;
- ``pale``: large pale vesicular nuclei with textured chromatin, as in breast carcinoma at 40×
  (``large_pale_nuclei``): a stained crop zoomed ×1.5–2 and the inside of each nucleus brought
  70 % of the way to the optical density around it, its rim (the outer fifth of its radius) and
  chromatin texture kept; other images are left as they are;
- ``blue``: a grey image (fluorescence, bright-field) recorded in colour, its grey level in the
  blue channel alone (Hoechst, DAPI); stained images are left as they are;
- ``tint``: every image through a colour camera whose white balance is off under a halogen lamp
  (channel gains ``TINT``: yellowish);
- ``composite``: a fluorescence image's nuclear stain in blue beside a whole-cell marker in green
  (each nucleus's cell body, the nucleus grown by its radius, at a random level, as bright as the
  nuclei); stained and bright-field images are left as they are.
- ``uneven``: uneven illumination, as a wide-field microscope's: the image times a vignette that
  falls from 1 at the centre to ``VIGNETTE`` in the corners, plus a background ramp rising
  across the image to ``RAMP`` of its 1–99 % range (stray light, autofluorescence).
- ``field8``: a field of view 8 × as wide at the same magnification (a tiled scan, a large camera):
  an 8 × 8 mosaic of the image (``FIELD`` tiles a side; about 2,700 px for a 320-px crop),
  the tiles a nucleus diameter apart on the image's background level, nuclei at their own size:
  whether the diameter estimate sees small nuclei in a large image.
- ``debris``: bright objects that are not nuclei on a fluorescence field's background
  (:func:`pipeline.training.augment.bright_debris`): a few blobs 1–2 diameters wide (even images)
  or clusters of fragments 0.2–0.4 of a diameter (odd images), 5–50 × the nuclei's brightness on
  0.5–3 % of the pixels (``augment.DEBRIS``), stored in 16 bits; stained and bright-field images are left
  as they are. Whether dim nuclei survive bright debris (issue 88).
- ``chromo``: 1–6 bright foci in every nucleus of a fluorescence field, 0.1–0.25 of its diameter
  across, 1.5–4 × its brightness (:func:`pipeline.training.augment.chromocentres`, the
  chromocentres of mouse nuclei): whether the diameter estimate takes the foci for nuclei.

``noise`` is drawn independently in each colour channel, as a colour camera's. The conditions and
their constants (in double back quotes here) are :mod:`pipeline.training.shifts`.

Every model runs through :class:`pipeline.model.segmenter.Segmenter` exactly as ``nuclei segment`` does
(estimated diameter, test-time augmentation ``--tta``, by default 'auto' as ``segment.tta``;
``--oracle`` adds a run given the true median nucleus diameter). Printed per
condition and model: DSB2018 score, AP@0.5, median counting error (|pred − true| / true per
image), and the predicted/true total; per model, the diameter estimate's accuracy, the goals, and
the confidence calibration (the 2nd percentile that ``MIN_CONFIDENCE`` is set to), and, as a
diagnostic, the median counting error without the fragments of nuclei that the crop cut
(``FRAGMENT``, ``whole_count``). Default models:
``--model`` pipeline/shipped/model, ``--baseline`` none.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config.params import TTA_MODES, as_config, load_params
from pipeline.data.folds import validation_index
from pipeline.files.io import load_npz, write_csv
from pipeline.method.image_types import BRIGHTFIELD
from pipeline.method.metrics import group_summary, image_metrics
from pipeline.method.scale import median_diameter
from pipeline.model.segmenter import MIN_CONFIDENCE, Segmenter
from pipeline.training.shifts import CONDITIONS, FRAGMENT, centre_crop, shifted, whole_count

ROOT = Path(__file__).resolve().parents[1]
#: The conditions :data:`pipeline.model.segmenter.MIN_CONFIDENCE` is calibrated on (its 2nd percentile).
CALIBRATION = ("x0.5", "x1", "x2", "noise", "stain")


def confidence_calibration(rows: pd.DataFrame, threshold: float = MIN_CONFIDENCE) -> str:
    """One line on the confidence flag: the 2nd percentile of ``confidence`` over the non-bright-field
    images of :data:`CALIBRATION` (what ``MIN_CONFIDENCE`` should be), and the median counting error
    of the images below and above ``threshold``."""
    rows = rows[rows["condition"].isin(CALIBRATION) & (rows["image_type"] != BRIGHTFIELD)]
    if rows.empty:
        return f"confidence: none of {', '.join(CALIBRATION)} was run"
    low = rows["confidence"] < threshold
    return (f"confidence: 2nd percentile {np.percentile(rows['confidence'], 2):.3f} over {len(rows)} images "
            f"({', '.join(CALIBRATION)}); below MIN_CONFIDENCE {threshold}: {low.sum()} images, median "
            f"counting error {rows.loc[low, 'count_error'].median():.3f} (above: "
            f"{rows.loc[~low, 'count_error'].median():.3f})")


def samples(params: dict, params_path: str, n: int, crop: int) -> list[tuple[str, str, str, np.ndarray, np.ndarray]]:
    """``(id, source, image type, image, labels)`` of ``n`` validation images spread over the fold
    (an equal share of each source's fold when there are several; source '' for a single source)."""
    index = validation_index(as_config(params, params_path).data)
    if "source" not in index.columns:
        index["source"] = ""
    groups = list(index.groupby("source", sort=True))
    prepared = Path(params["data"]["prepared"])
    out = []
    for _, rows in groups:
        rows = rows.sort_values(["image_type", "id"]).reset_index(drop=True)
        share = max(1, int(round(n / len(groups))))
        picks = np.unique(np.linspace(0, len(rows) - 1, min(share, len(rows))).round().astype(int))
        for row in rows.iloc[picks].itertuples():
            data = load_npz(prepared / f"{row.id}.npz")
            image, labels = centre_crop(data["image"], data["labels"], crop)
            out.append((row.id, row.source, row.image_type, image, labels))
    return out


def evaluate(segmenter: Segmenter, items, oracle: bool, conditions=CONDITIONS) -> list[dict]:
    rows = []
    for i, condition in enumerate(conditions, 1):
        t0 = time.perf_counter()
        for k, (image_id, source, image_type, image, labels) in enumerate(items):
            img, true = shifted(condition, image, labels, seed=k)
            true_diameter = median_diameter(true)
            result = segmenter.segment(img, diameter=true_diameter if oracle and true.max() else None)
            m = image_metrics(true, result.labels)
            areas = np.bincount(true.ravel())
            min_area = FRAGMENT * float(np.median(areas[1:][areas[1:] > 0])) if areas[1:].any() else 0.0
            whole_true, whole_pred = whole_count(true, min_area, areas), whole_count(result.labels, min_area)
            rows.append({
                "condition": condition, "id": image_id, "source": source, "image_type": image_type,
                **{k: m[k] for k in ("dsb_score", "ap50", "n_true", "n_pred", "count_error")},
                "count_error_whole": abs(whole_pred - whole_true) / whole_true if whole_true else np.nan,
                "diameter_true": true_diameter, "diameter": result.diameter,
                "confidence": result.confidence,
            })
        done = [r["dsb_score"] for r in rows[-len(items):]]
        print(f"  [{i}/{len(conditions)}] {condition}: mean DSB score {np.mean(done):.3f} "
              f"({time.perf_counter() - t0:.0f} s)", file=sys.stderr, flush=True)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "pipeline" / "shipped" / "model")
    parser.add_argument("--baseline", type=Path, default=None, help="a second model to compare")
    parser.add_argument("--oracle", action="store_true", help="also run --model given the true diameter")
    parser.add_argument("--estimators", nargs="+", default=None, choices=("blob", "search"),
                        help="diameter estimators to run --model with (default: the model's default)")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--images", type=int, default=40)
    parser.add_argument("--conditions", nargs="+", choices=CONDITIONS, default=None,
                        help="a subset of the conditions (default: all; the scale goal needs x1-x4)")
    parser.add_argument("--crop", type=int, default=320)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tta", choices=TTA_MODES, default="auto",
                        help="test-time augmentation of every run (default: %(default)s, as nuclei segment)")
    parser.add_argument("--out", type=Path, default=None, help="write the per-image table here (CSV)")
    args = parser.parse_args()

    import torch

    from pipeline.model.runtime import set_threads

    set_threads(args.threads)
    params = load_params(args.params)
    conditions = tuple(c for c in CONDITIONS if c in (args.conditions or CONDITIONS))
    runs = [("model", args.model, False, None)]
    if args.estimators:
        runs = [(f"model ({e})", args.model, False, e) for e in args.estimators]
    if args.oracle:
        runs.append(("model, true diameter", args.model, True, None))
    if args.baseline:
        runs.insert(0, ("baseline", args.baseline, False, None))
    segmenters = {path: Segmenter.from_model_dir(path, device="cpu", tta=args.tta) for _, path, *_ in runs}  # checked first
    estimators = {path: segmenter.estimator for path, segmenter in segmenters.items()}
    items = samples(params, args.params, args.images, args.crop)
    types = pd.Series([t for _, _, t, _, _ in items]).value_counts().to_dict()
    data = params["data"]
    print(f"{len(items)} images of fold {data['val_fold']} ({data.get('split', 'stratified')} split) of "
          f"{data['prepared']}, centre crops <= {args.crop} px; types {types}; torch threads "
          f"{torch.get_num_threads()}, {os.cpu_count()} CPU cores; tta {args.tta}")
    frames = []
    for name, path, oracle, estimator in runs:
        t0 = time.perf_counter()
        segmenter = segmenters[path]
        segmenter.estimator = estimator or estimators[path]
        frame = pd.DataFrame(evaluate(segmenter, items, oracle, conditions))
        frame.insert(0, "run", name)
        frames.append(frame)
        print(f"{name}: {path} ({time.perf_counter() - t0:.0f} s)", flush=True)
    table = pd.concat(frames, ignore_index=True)
    if args.out:
        write_csv(args.out, table)
    summary = group_summary(table, ["condition", "run"]).rename(
        columns={"dsb_score": "dsb", "pred_per_true": "pred/true"})
    wide = summary[["dsb", "ap50", "count_error", "pred/true"]].unstack("run")
    wide = wide.reindex(conditions)
    wide.columns = [f"{run}: {metric}" for metric, run in wide.columns]
    order = [f"{run}: {m}" for run, *_ in runs for m in ("dsb", "ap50", "count_error", "pred/true")]
    print(wide[order].to_string(float_format=lambda v: f"{v:.3f}"))
    for run, *_ in runs:
        rows = table[(table["run"] == run) & table["diameter"].notna() & (table["diameter_true"] > 0)]
        if len(rows):
            ratio = rows["diameter"].astype(float) / rows["diameter_true"]
            print(f"{run}: diameter estimate within 20 % of the true median diameter for "
                  f"{(ratio.sub(1).abs() < 0.2).mean():.0%} of {len(rows)} images, within x1.41 for "
                  f"{(np.log2(ratio).abs() < 0.5).mean():.0%} (median estimate / true {ratio.median():.2f})")
        dsb = summary.xs(run, level="run")["dsb"]
        err = summary.xs(run, level="run")["count_error"].max()
        if {"x1", "x2", "x3", "x4"} <= set(conditions):
            worst = max(abs(dsb[f"x{s:g}"] - dsb["x1"]) for s in (2, 3, 4))
            print(f"{run}: DSB2018 at x2-x4 within {worst:.3f} of x1 (goal 0.05: "
                  f"{'met' if worst <= 0.05 else 'not met'})")
        print(f"{run}: worst median counting error {err:.3f} over {', '.join(conditions)} "
              f"(goal 0.10: {'met' if err <= 0.10 else 'not met'})")
        whole = table[table["run"] == run].groupby("condition", sort=False)["count_error_whole"].median()
        print(f"{run}: without the crops' edge fragments (under {FRAGMENT:g} of the median nucleus, truth "
              f"and prediction alike; a diagnostic, not the goal): worst {whole.max():.3f} ({whole.idxmax()}), "
              f"x1 {whole.get('x1', np.nan):.3f}")
        print(f"{run}: {confidence_calibration(table[table['run'] == run])}")
    if table["source"].nunique() > 1:
        print(by_source(table, conditions))
    return 0


def by_source(table: pd.DataFrame, conditions) -> str:
    """Per run and source: DSB2018 at every condition, the scale goal (largest |x2-x4 − x1|) and
    the worst median counting error, as a table."""
    dsb = table.pivot_table(index=["run", "source"], columns="condition", values="dsb_score", aggfunc="mean", sort=False)
    dsb = dsb[[c for c in conditions if c in dsb.columns]]
    scales = [f"x{s:g}" for s in (2, 3, 4) if f"x{s:g}" in dsb.columns]
    if "x1" in dsb.columns and scales:
        dsb["x2-x4 vs x1"] = dsb[scales].sub(dsb["x1"], axis=0).abs().max(axis=1)
    err = group_summary(table, ["run", "source", "condition"])["count_error"]
    dsb["worst count err"] = err.groupby(level=["run", "source"], sort=False).max()
    counts = table.groupby(["run", "source"], sort=False)["id"].nunique()
    dsb.insert(0, "images", counts)
    return "per source (DSB2018 by condition):\n" + dsb.to_string(float_format=lambda v: f"{v:.3f}")


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
