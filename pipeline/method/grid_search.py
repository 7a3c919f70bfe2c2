"""Grid search of the post-processing thresholds: every combination of a grid applied to
probability maps and scored against true labels (DSB2018 score), per image or balanced over
groups (experiments, sources). Used by ``nuclei tune`` (:mod:`pipeline.stages.tune`) and by
fine-tuning (:mod:`pipeline.training.finetune`).

Must not: read or write files, or post-process differently from
:func:`pipeline.method.watershed.postprocess_to_shape`.
"""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pandas as pd

from pipeline.method.metrics import dsb_score
from pipeline.method.watershed import postprocess_to_shape, remove_relatively_small
from pipeline.progress import progress

#: ``--balance`` → the ``index.csv`` column whose values count once each (None: every image does).
BALANCE_COLUMNS = {"image": None, "experiment": "group", "source": "source"}



def group_mean(scores, groups) -> float:
    """Mean over groups of each group's mean score: every group (an experiment, a source: a
    :data:`BALANCE_COLUMNS` column) counts once, whatever its number of images. ``scores`` and
    ``groups``: one per image."""
    return float(pd.Series(np.asarray(scores, dtype=float)).groupby(np.asarray(groups)).mean().mean())



def grid_search(samples: list[tuple], grid: dict[str, list], fixed: dict[str, Any], groups=None) -> pd.DataFrame:
    """Mean DSB2018 score of every combination of ``grid``.

    Parameters
    ----------
    samples : list of (probs (C, h, w) float32, head, true labels (H, W) int[, scale[, image_type]])
        Probabilities at the network's scale (the image resized by ``scale``, default 1), and the
        image's :func:`pipeline.method.image_types.classify_image` (default None).
    grid : dict
        :func:`pipeline.method.watershed.postprocess_to_shape` keyword → list of values to try.
    fixed : dict
        The other keywords, held fixed.
    groups : sequence, optional
        One experiment (acquisition group) id per sample. When given, the table also has
        ``group_score``, the mean over groups of each group's mean score, and is sorted by it.

    Returns
    -------
    table : DataFrame
        One row per combination: the grid keys, ``dsb_score`` (mean over samples) [and
        ``group_score``], sorted by decreasing ``group_score`` if ``groups`` is given, else
        ``dsb_score`` (ties keep grid order).
    """
    # min_relative_size is applied last (postprocess_to_shape), so each watershed serves all its values
    fractions = grid.get("min_relative_size", [fixed.get("min_relative_size", 0.0)])
    keys = [k for k in grid if k != "min_relative_size"]
    combos = list(itertools.product(*(grid[k] for k in keys)))
    rows = []
    for values in progress(combos, desc="tune", unit="setting"):
        kwargs = fixed | dict(zip(keys, values, strict=True)) | {"min_relative_size": 0.0}
        labels = [postprocess_to_shape(probs, head, true.shape, *rest, **kwargs) for probs, head, true, *rest in samples]
        for fraction in fractions:
            scores = [
                dsb_score(true, remove_relatively_small(pred, fraction))
                for (_, _, true, *_), pred in zip(samples, labels, strict=True)
            ]
            row = dict(zip(keys, values, strict=True)) | {"min_relative_size": fraction}
            row["dsb_score"] = float(np.mean(scores))
            if groups is not None:
                row["group_score"] = group_mean(scores, groups)
            rows.append(row)
    by = "group_score" if groups is not None else "dsb_score"
    return pd.DataFrame(rows).sort_values(by, ascending=False, kind="stable").reset_index(drop=True)



def best_setting(table: pd.DataFrame) -> tuple[dict[str, Any], dict[str, float]]:
    """The first (best) row of a :func:`grid_search` table: the setting (plain Python values) and
    its scores (``dsb_score`` [and ``group_score``])."""
    row = table.iloc[0]
    scores = {k: float(v) for k, v in row.items() if k in ("dsb_score", "group_score")}
    setting = {k: (v.item() if isinstance(v, np.generic) else v) for k, v in row.items() if k not in scores}
    setting = {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in setting.items()}  # unset
    return setting, scores
