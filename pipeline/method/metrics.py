"""The DSB2018 competition metric and its usual companions, for instance label maps.

All object-pair overlaps of an image come from one joint histogram of the true and predicted
label maps (:func:`overlaps`), never from object-by-object comparisons.

Must not: read or write files, or import torch.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.segmentation import relabel_sequential

#: IoU thresholds of the DSB2018 score: 0.50, 0.55, ..., 0.95 (a match needs IoU > t).
THRESHOLDS = np.arange(0.5, 1.0, 0.05)

#: Names of the per-threshold precision keys of :func:`image_metrics`: 'p@0.50' ... 'p@0.95'.
PRECISION_KEYS = [f"p@{t:.2f}" for t in THRESHOLDS]


def _sequential(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0..N keeping the order of label values (0 stays background).

    Returns the relabelled map (int64, same shape) and N. Label values up to a few times the
    number of pixels are mapped through a lookup table built from one ``np.bincount``; larger
    values go through :func:`skimage.segmentation.relabel_sequential`.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2 or not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"expected a 2-D integer label image, got {labels.dtype} {labels.shape}")
    if labels.size == 0:
        return labels.astype(np.int64), 0
    if labels.min() < 0:
        raise ValueError("label images must not contain negative values")
    flat = labels.ravel().astype(np.int64, copy=False)
    if int(flat.max()) > 4 * flat.size:
        relabelled = relabel_sequential(flat)[0]
        return relabelled.reshape(labels.shape), int(relabelled.max())
    present = np.bincount(flat) > 0
    present[0] = False
    n = int(present.sum())
    if present[1 : n + 1].all():  # already 1..N
        return flat.reshape(labels.shape), n
    lookup = np.cumsum(present) * present
    return lookup[flat].reshape(labels.shape), n


def overlaps(true: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel counts of every (true, predicted) object pair, from one joint histogram.

    Parameters
    ----------
    true, pred : int ndarray of shape (H, W)
        Instance label maps, 0 = background; any non-negative label values.

    Returns
    -------
    intersection : int64 ndarray of shape (n_true, n_pred)
        Pixels shared by true object i and predicted object j (objects in ascending order of
        label value).
    true_area : int64 ndarray of shape (n_true,)
    pred_area : int64 ndarray of shape (n_pred,)
    """
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape:
        raise ValueError(f"label images differ in shape: {true.shape} vs {pred.shape}")
    t, n_true = _sequential(true)
    p, n_pred = _sequential(pred)
    bins = (n_true + 1) * (n_pred + 1)
    code = t.ravel() * (n_pred + 1) + p.ravel()
    if bins <= 4 * code.size + 1024:  # dense histogram
        joint = np.bincount(code, minlength=bins)
    else:  # many objects on a small image: count only the pairs that occur
        pairs, counts = np.unique(code, return_counts=True)
        joint = np.zeros(bins, np.int64)
        joint[pairs] = counts
    joint = joint.reshape(n_true + 1, n_pred + 1)
    return joint[1:, 1:], joint[1:, :].sum(axis=1), joint[:, 1:].sum(axis=0)


def iou_matrix(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Intersection over union of every (true, predicted) object pair.

    Parameters
    ----------
    true, pred : int ndarray of shape (H, W)
        Instance label maps, 0 = background; any non-negative label values.

    Returns
    -------
    iou : float64 ndarray of shape (n_true, n_pred)
        Objects in ascending order of label value.
    """
    inter, true_area, pred_area = overlaps(true, pred)
    return _iou(inter, true_area, pred_area)


def _iou(inter: np.ndarray, true_area: np.ndarray, pred_area: np.ndarray) -> np.ndarray:
    union = true_area[:, None] + pred_area[None, :] - inter
    return inter / np.maximum(union, 1)


def _matched_ious(iou: np.ndarray) -> np.ndarray:
    """IoU of the pairs with IoU > 0.5, float64 (n_matches,).

    Above 0.5 an object can overlap at most one object of the other map that much, so these
    pairs are a one-to-one matching and every stricter threshold keeps a subset of them.
    """
    return iou[iou > THRESHOLDS[0]]


def _precisions(matched: np.ndarray, n_true: int, n_pred: int) -> np.ndarray:
    """P(t) = TP / (TP + FP + FN) for every threshold, float64 (len(THRESHOLDS),)."""
    if n_true == 0 and n_pred == 0:
        return np.ones(THRESHOLDS.size)
    tp = (matched[:, None] > THRESHOLDS[None, :]).sum(axis=0)
    return tp / (n_true + n_pred - tp)


def dsb_score(true: np.ndarray, pred: np.ndarray) -> float:
    """DSB2018 score of one image: mean over IoU thresholds 0.50..0.95 of TP / (TP + FP + FN).

    A predicted object matches a true object when their IoU is strictly above the threshold.

    Parameters
    ----------
    true, pred : int ndarray of shape (H, W)
        Instance label maps, 0 = background.

    Returns
    -------
    score : float in [0, 1]; 1.0 when both maps are empty, 0.0 when exactly one is.
    """
    iou = iou_matrix(true, pred)
    return float(_precisions(_matched_ious(iou), *iou.shape).mean())


def aggregated_jaccard(inter: np.ndarray, true_area: np.ndarray, pred_area: np.ndarray) -> float:
    """Aggregated Jaccard index (Kumar et al. 2017, IEEE TMI 36(7)) from pair overlaps.

    Each true object G_i is paired with the predicted object S_j of highest IoU (if any
    overlaps it); AJI = sum |G_i ∩ S_j| / (sum |G_i ∪ S_j| + area of the true objects left
    unpaired + area of the predicted objects never chosen). A predicted object chosen by several
    true objects counts in each of their unions, as in the original definition.

    Parameters
    ----------
    inter : int ndarray (n_true, n_pred); true_area (n_true,); pred_area (n_pred,)
        As returned by :func:`overlaps`.

    Returns
    -------
    aji : float in [0, 1]; 1.0 when both maps are empty, 0.0 when exactly one is.
    """
    n_true, n_pred = inter.shape
    if n_true == 0 and n_pred == 0:
        return 1.0
    if n_true == 0 or n_pred == 0:
        return 0.0
    iou = _iou(inter, true_area, pred_area)
    best = iou.argmax(axis=1)
    rows = np.flatnonzero(iou[np.arange(n_true), best] > 0)
    cols = best[rows]
    paired_inter = inter[rows, cols]
    union = (true_area[rows] + pred_area[cols] - paired_inter).sum()
    unpaired_true = np.ones(n_true, bool)
    unpaired_true[rows] = False
    unused_pred = np.ones(n_pred, bool)
    unused_pred[cols] = False
    union += true_area[unpaired_true].sum() + pred_area[unused_pred].sum()
    return float(paired_inter.sum() / union)


def image_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """The DSB2018 score and its companions for one image.

    Parameters
    ----------
    true, pred : int ndarray of shape (H, W)
        Instance label maps, 0 = background.

    Returns
    -------
    metrics : dict
        ``dsb_score`` (mean of P(t), see :func:`dsb_score`); ``ap50`` = P(0.5) =
        TP / (TP + FP + FN) at IoU 0.5 (the DSB sense of average precision); ``f1_50`` =
        2TP / (2TP + FP + FN) at IoU 0.5; ``mean_matched_iou`` (mean IoU of the pairs matched at
        0.5; NaN when none); ``aji`` (:func:`aggregated_jaccard`); ``pixel_dice``,
        ``pixel_iou``, ``pixel_accuracy`` of the foreground masks (Dice and IoU are 1.0 when
        both are empty); ``count_error`` = |n_pred - n_true| / max(n_true, 1) (so n_pred when
        the image has no nucleus); ``n_true``, ``n_pred``; ``p@0.50`` ... ``p@0.95``.
        Scores are floats in [0, 1].
    """
    inter, true_area, pred_area = overlaps(true, pred)
    n_true, n_pred = inter.shape
    iou = _iou(inter, true_area, pred_area)
    matched = _matched_ious(iou)
    precisions = _precisions(matched, n_true, n_pred)
    tp50 = matched.size
    f1 = 1.0 if n_true + n_pred == 0 else 2 * tp50 / (n_true + n_pred)

    fg_true, fg_pred = np.asarray(true) > 0, np.asarray(pred) > 0
    both = int(np.count_nonzero(fg_true & fg_pred))
    n_fg_true, n_fg_pred = int(np.count_nonzero(fg_true)), int(np.count_nonzero(fg_pred))
    either = n_fg_true + n_fg_pred - both
    size = fg_true.size
    metrics = {
        "dsb_score": float(precisions.mean()),
        "ap50": float(precisions[0]),
        "f1_50": float(f1),
        "mean_matched_iou": float(matched.mean()) if tp50 else float("nan"),
        "aji": aggregated_jaccard(inter, true_area, pred_area),
        "pixel_dice": 2 * both / (n_fg_true + n_fg_pred) if either else 1.0,
        "pixel_iou": both / either if either else 1.0,
        "pixel_accuracy": (size - either + both) / size if size else 1.0,
        "count_error": abs(n_pred - n_true) / max(n_true, 1),
        "n_true": n_true,
        "n_pred": n_pred,
    }
    metrics.update(zip(PRECISION_KEYS, map(float, precisions), strict=True))
    return metrics


def aggregate(per_image: pd.DataFrame) -> dict[str, float]:
    """Data-set summary of a table of :func:`image_metrics` rows.

    Parameters
    ----------
    per_image : DataFrame, one row per image, columns as the keys of :func:`image_metrics`
        (other columns, e.g. ``ImageId``, are ignored unless numeric).

    Returns
    -------
    summary : dict
        ``n_images``; ``n_true`` and ``n_pred`` summed over images; every other numeric column
        averaged over images, ignoring NaN (so ``dsb_score`` is the competition score: the mean
        of the per-image scores).
    """
    numeric = per_image.select_dtypes(include=[np.number])
    summary: dict[str, float] = {"n_images": int(len(per_image))}
    for column in numeric.columns:
        values = numeric[column].astype(float)
        if column in ("n_true", "n_pred"):
            summary[column] = int(values.sum())
        else:
            summary[column] = float(values.mean()) if values.notna().any() else float("nan")
    return summary


def group_summary(per_image: pd.DataFrame, by: str | list[str]) -> pd.DataFrame:
    """What the benchmarks and the model card report per group (source, condition, model...).

    Parameters
    ----------
    per_image : DataFrame, one row per image, with ``dsb_score``, ``ap50`` and ``count_error``
        (as from :func:`image_metrics`), optionally ``n_true`` and ``n_pred``, and the ``by`` columns.
    by : column name or names

    Returns
    -------
    summary : DataFrame indexed by ``by`` in order of appearance
        ``n_images``; ``dsb_score`` and ``ap50``, means over images; ``count_error``, the median
        over images (a few empty images would dominate its mean); ``n_pred``, ``n_true`` (sums)
        and ``pred_per_true`` (their ratio) when the counts are given.
    """
    columns = {"n_images": ("dsb_score", "size"), "dsb_score": ("dsb_score", "mean"),
               "ap50": ("ap50", "mean"), "count_error": ("count_error", "median")}
    if {"n_true", "n_pred"} <= set(per_image.columns):
        columns |= {"n_pred": ("n_pred", "sum"), "n_true": ("n_true", "sum")}
    summary = per_image.groupby(by, sort=False).agg(**columns)
    if "n_true" in summary:
        summary["pred_per_true"] = summary["n_pred"] / summary["n_true"].clip(lower=1)
    return summary
