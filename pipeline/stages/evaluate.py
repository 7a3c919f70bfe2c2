"""``nuclei evaluate``: the competition metric and its companions on the validation fold.

Compares the post-processed labels (``<postprocess.out>/<id>.tif``) with the prepared labels
(``<data.prepared>/<id>.npz``) of the images of fold ``data.val_fold`` and writes, under
``evaluate.out`` (default ``metrics/``):

- ``metrics.json`` — DVC metrics, the headline only (:data:`HEADLINE`: ``dsb_score``,
  ``ap50``, ``f1_50``, ``aji``, ``count_error``, ``n_images``), what ``dvc metrics show`` prints;
- ``details.json`` — every data-set mean (``mean_matched_iou``, pixel Dice/IoU/accuracy,
  ``p@t``, ...) and the same per image type under ``by_type``;
- ``per_image.csv`` — one row per image;
- ``plots/score_vs_threshold.csv`` — ``threshold, precision`` (mean P(t) over images);
- ``plots/score_by_type.csv`` — ``image_type, dsb_score, n_images``.

Must not: compute metrics itself (:mod:`pipeline.method.metrics`) or keep defaults of its sections
(:class:`pipeline.config.params.Config`).
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config.params import load_config
from pipeline.data.folds import validation_index
from pipeline.errors import NucleiError

#: Keys of the summary written to ``metrics.json`` (the rest goes to ``details.json``).
HEADLINE = ("dsb_score", "ap50", "f1_50", "aji", "count_error", "n_images")


def per_image_metrics(pairs: Iterable[tuple[str, np.ndarray, np.ndarray]]) -> pd.DataFrame:
    """:func:`pipeline.method.metrics.image_metrics` for ``(id, true labels, predicted labels)`` pairs.

    Returns
    -------
    per_image : DataFrame
        ``id`` then one column per metric, one row per pair.
    """
    from pipeline.method.metrics import image_metrics

    return pd.DataFrame([{"id": image_id} | image_metrics(true, pred) for image_id, true, pred in pairs])


def _finite(summary: dict[str, Any]) -> dict[str, Any]:
    """NaN → None so that the JSON is standard (DVC reads it)."""
    return {k: None if isinstance(v, float) and math.isnan(v) else v for k, v in summary.items()}


def summarise(per_image: pd.DataFrame) -> tuple[dict[str, Any], pd.DataFrame, pd.DataFrame]:
    """Data-set summaries of a per-image table.

    Parameters
    ----------
    per_image : DataFrame
        From :func:`per_image_metrics`, optionally with ``source`` and ``image_type`` columns.

    Returns
    -------
    metrics : dict
        :func:`pipeline.method.metrics.aggregate` of all images, plus ``by_source`` and ``by_type`` (the
        same per source and per image type) when those columns are given; NaN written as None.
    by_threshold : DataFrame
        ``threshold, precision``: mean P(t) for t = 0.50 ... 0.95.
    by_type : DataFrame
        ``image_type, dsb_score, n_images`` (empty without ``image_type``).
    """
    from pipeline.method.metrics import PRECISION_KEYS, THRESHOLDS, aggregate

    labels = [c for c in ("id", "source", "image_type") if c in per_image.columns]
    metrics = _finite(aggregate(per_image.drop(columns=labels)))
    by_threshold = pd.DataFrame({
        "threshold": np.round(THRESHOLDS, 2),
        "precision": [float(per_image[k].mean()) for k in PRECISION_KEYS],
    })
    rows = []
    for column, key in (("source", "by_source"), ("image_type", "by_type")):
        if column not in per_image.columns:
            continue
        metrics[key] = {}
        for value, group in per_image.groupby(column, sort=True):
            metrics[key][value] = _finite(aggregate(group.drop(columns=labels)))
            if column == "image_type":
                rows.append((value, float(group["dsb_score"].mean()), len(group)))
    by_type = pd.DataFrame(rows, columns=["image_type", "dsb_score", "n_images"])
    return metrics, by_threshold, by_type


def read_pairs(prepared: str | Path, index: pd.DataFrame, labels_dir: str | Path
               ) -> Iterable[tuple[str, np.ndarray, np.ndarray]]:
    """Yield ``(id, prepared/<id>.npz labels, labels_dir/<id>.tif)`` for the ids of ``index``."""
    from pipeline.files.io import load_npz, read_labels
    from pipeline.progress import progress

    prepared = Path(prepared)
    for image_id in progress(index["id"], desc="evaluate", total=len(index)):
        pred_file = Path(labels_dir) / f"{image_id}.tif"
        if not pred_file.is_file():
            raise NucleiError(f"{pred_file}: no such file (run `nuclei postprocess` first)")
        true = load_npz(prepared / f"{image_id}.npz")["labels"]
        pred = read_labels(pred_file)
        if pred.shape != true.shape:
            raise NucleiError(f"{pred_file}: size {pred.shape} differs from the prepared labels {true.shape}")
        yield image_id, true, pred


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei evaluate``."""
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    """``nuclei evaluate``: validation labels vs post-processed labels → ``metrics/``."""
    from pipeline.files.io import write_csv, write_json

    config = load_config(args.params)
    index = validation_index(config.data)
    out = Path(config.evaluate.out)
    per_image = per_image_metrics(read_pairs(config.data.prepared, index, config.postprocess.out))
    for column in ("image_type", "source"):
        if column in index.columns:
            per_image.insert(1, column, index[column].to_numpy())
    metrics, by_threshold, by_type = summarise(per_image)
    write_json(out / "metrics.json", {k: metrics[k] for k in HEADLINE})
    write_json(out / "details.json", metrics)
    write_csv(out / "per_image.csv", per_image)
    write_csv(out / "plots" / "score_vs_threshold.csv", by_threshold)
    write_csv(out / "plots" / "score_by_type.csv", by_type)
    by_source = metrics.get("by_source", {})
    if len(by_source) > 1:  # one source: its figure is the headline below
        for name, scores in by_source.items():
            print(f"  {name:<16} {scores['dsb_score']:.4f} ({scores['n_images']} images)")
    for row in by_type.itertuples():
        print(f"  {row.image_type:<16} {row.dsb_score:.4f} ({row.n_images} images)")
    print(f"validation DSB2018 score {metrics['dsb_score']:.4f} ({metrics['n_images']} images)")
    return 0
