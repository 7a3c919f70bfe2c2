"""The DSB2018 metric and its companions on hand-made cases and against brute force."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from pipeline.method.metrics import (
    PRECISION_KEYS,
    THRESHOLDS,
    aggregate,
    dsb_score,
    group_summary,
    image_metrics,
    iou_matrix,
    overlaps,
)


def rect(shape, rows, cols, value=1, out=None):
    out = np.zeros(shape, np.int32) if out is None else out
    out[rows[0] : rows[1], cols[0] : cols[1]] = value
    return out


def brute_iou(true, pred):
    """Object-by-object IoU (the slow definition)."""
    t_ids = np.unique(true[true > 0])
    p_ids = np.unique(pred[pred > 0])
    iou = np.zeros((t_ids.size, p_ids.size))
    for i, a in enumerate(t_ids):
        for j, b in enumerate(p_ids):
            inter = np.sum((true == a) & (pred == b))
            union = np.sum((true == a) | (pred == b))
            iou[i, j] = inter / union
    return iou


def brute_aji(true, pred):
    """Kumar et al. 2017, Algorithm 1, object by object."""
    t_ids = np.unique(true[true > 0])
    p_ids = np.unique(pred[pred > 0])
    inter_sum = union_sum = 0
    used = set()
    for a in t_ids:
        g = true == a
        ious = [np.sum(g & (pred == b)) / np.sum(g | (pred == b)) for b in p_ids]
        if p_ids.size and max(ious) > 0:
            b = p_ids[int(np.argmax(ious))]
            used.add(b)
            inter_sum += np.sum(g & (pred == b))
            union_sum += np.sum(g | (pred == b))
        else:
            union_sum += g.sum()
    union_sum += sum(np.sum(pred == b) for b in p_ids if b not in used)
    return inter_sum / union_sum


label_maps = st.tuples(st.integers(1, 16), st.integers(1, 16)).flatmap(
    lambda shape: st.tuples(
        arrays(np.int32, shape, elements=st.integers(0, 6)),
        arrays(np.int32, shape, elements=st.sampled_from([0, 3, 4, 50, 1001])),
    )
)


@settings(max_examples=100, deadline=None)
@given(maps=label_maps)
def test_iou_matrix_and_aji_match_brute_force(maps):
    true, pred = maps
    np.testing.assert_allclose(iou_matrix(true, pred), brute_iou(true, pred))
    if true.any() and pred.any():
        assert image_metrics(true, pred)["aji"] == pytest.approx(brute_aji(true, pred))


def test_overlaps_counts_pixels():
    true = np.array([[1, 1, 0], [2, 2, 2]])
    pred = np.array([[5, 0, 0], [5, 9, 9]])
    inter, true_area, pred_area = overlaps(true, pred)
    np.testing.assert_array_equal(inter, [[1, 0], [1, 2]])
    np.testing.assert_array_equal(true_area, [2, 3])
    np.testing.assert_array_equal(pred_area, [2, 2])
    with pytest.raises(ValueError, match="differ in shape"):
        overlaps(true, pred[:, :2])


def test_many_objects_use_the_sparse_path():
    rng = np.random.default_rng(0)
    true = rng.permutation(np.arange(32 * 32)).reshape(32, 32)  # 1023 one-pixel objects
    pred = np.roll(true, 1, axis=1)
    iou = iou_matrix(true, pred)  # 1024**2 pairs > 4 x pixels: counted with np.unique
    assert iou.shape == (1023, 1023)
    # every pixel but the two background ones pairs a true and a predicted object with IoU 1
    assert iou.sum() == 1022 and set(np.unique(iou)) == {0.0, 1.0}
    assert dsb_score(true, true) == 1.0
    assert dsb_score(true, pred) == pytest.approx(1022 / 1024)  # labels differ, pixels match


def test_thresholds():
    np.testing.assert_allclose(THRESHOLDS, [0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95])
    assert PRECISION_KEYS[0] == "p@0.50" and PRECISION_KEYS[-1] == "p@0.95"


def test_perfect_prediction_with_other_label_values():
    true = rect((20, 20), (2, 8), (2, 8), 1)
    rect((20, 20), (10, 18), (5, 15), 2, out=true)
    pred = np.where(true == 1, 40, np.where(true == 2, 7, 0))
    m = image_metrics(true, pred)
    for key in ["dsb_score", "ap50", "f1_50", "mean_matched_iou", "aji", "pixel_dice", "pixel_iou", "pixel_accuracy"]:
        assert m[key] == 1.0, key
    assert m["count_error"] == 0.0 and m["n_true"] == 2 and m["n_pred"] == 2
    assert all(m[k] == 1.0 for k in PRECISION_KEYS)


def test_nothing_predicted():
    true = rect((20, 20), (2, 8), (2, 8))
    m = image_metrics(true, np.zeros_like(true))
    assert m["dsb_score"] == 0.0 and m["ap50"] == 0.0 and m["f1_50"] == 0.0 and m["aji"] == 0.0
    assert np.isnan(m["mean_matched_iou"])
    assert m["pixel_dice"] == 0.0 and m["pixel_accuracy"] == pytest.approx(1 - 36 / 400)
    assert m["count_error"] == 1.0


def test_empty_images():
    empty = np.zeros((8, 8), np.int32)
    assert dsb_score(empty, empty) == 1.0
    m = image_metrics(empty, empty)
    assert m["aji"] == 1.0 and m["f1_50"] == 1.0 and m["pixel_dice"] == 1.0 and m["count_error"] == 0.0
    spurious = rect((8, 8), (1, 3), (1, 3)) + rect((8, 8), (5, 7), (5, 7), 2)
    m = image_metrics(empty, spurious)
    assert m["dsb_score"] == 0.0 and m["aji"] == 0.0
    assert m["count_error"] == 2.0  # no true nucleus: the number of predicted ones


def test_one_nucleus_split_in_two():
    # true: 10 x 8 = 80 px; predicted: 10 x 5 = 50 px (IoU 0.625) and 10 x 3 = 30 px (IoU 0.375)
    true = rect((12, 12), (1, 11), (2, 10))
    pred = rect((12, 12), (1, 11), (2, 7), 1)
    rect((12, 12), (1, 11), (7, 10), 2, out=pred)
    m = image_metrics(true, pred)
    # t = 0.50, 0.55, 0.60: TP 1, FP 1, FN 0 -> 1/2; t >= 0.65: TP 0, FP 2, FN 1 -> 0
    assert [m[k] for k in PRECISION_KEYS] == [0.5] * 3 + [0.0] * 7
    assert m["dsb_score"] == pytest.approx(0.15)
    assert m["ap50"] == 0.5
    assert m["f1_50"] == pytest.approx(2 / 3)
    assert m["mean_matched_iou"] == pytest.approx(0.625)
    assert m["aji"] == pytest.approx(50 / (80 + 30))  # the unused 30-px piece adds to the union
    assert m["pixel_iou"] == 1.0 and m["count_error"] == 1.0


def test_two_nuclei_merged_into_one():
    true = rect((12, 12), (1, 11), (2, 7), 1)  # 50 px
    rect((12, 12), (1, 11), (7, 10), 2, out=true)  # 30 px
    pred = rect((12, 12), (1, 11), (2, 10))  # 80 px: IoU 0.625 and 0.375
    m = image_metrics(true, pred)
    # t = 0.50..0.60: TP 1, FP 0, FN 1 -> 1/2; above: TP 0, FP 1, FN 2 -> 0
    assert [m[k] for k in PRECISION_KEYS] == [0.5] * 3 + [0.0] * 7
    assert m["dsb_score"] == pytest.approx(0.15)
    assert m["f1_50"] == pytest.approx(2 / 3)
    assert m["aji"] == pytest.approx((50 + 30) / (80 + 80))  # the merged object counts twice
    assert m["count_error"] == 0.5


@pytest.mark.parametrize(
    ("width", "iou", "n_matched_thresholds"),
    [
        (20, 19 / 21, 9),  # 0.9048: just above 0.90 -> matched at 0.50..0.90
        (18, 17 / 19, 8),  # 0.8947: just below 0.90 -> matched at 0.50..0.85
        (8, 7 / 9, 6),  # 0.7778: matched at 0.50..0.75
        (6, 5 / 7, 5),  # 0.7143: just below 0.75 -> matched at 0.50..0.70
    ],
)
def test_shifted_nucleus_around_a_threshold(width, iou, n_matched_thresholds):
    # a 10 x width rectangle shifted right by one pixel: IoU = (width - 1) / (width + 1)
    true = rect((12, 30), (1, 11), (2, 2 + width))
    pred = rect((12, 30), (1, 11), (3, 3 + width))
    assert iou_matrix(true, pred)[0, 0] == pytest.approx(iou)
    expected = n_matched_thresholds / 10
    assert dsb_score(true, pred) == pytest.approx(expected)
    m = image_metrics(true, pred)
    assert [m[k] for k in PRECISION_KEYS] == [1.0] * n_matched_thresholds + [0.0] * (10 - n_matched_thresholds)


def test_iou_of_exactly_one_half_is_no_match():
    true = rect((10, 10), (0, 10), (0, 10))
    pred = rect((10, 10), (0, 10), (0, 5))
    assert iou_matrix(true, pred)[0, 0] == 0.5
    assert dsb_score(true, pred) == 0.0


def test_aggregate_means_and_sums():
    rows = [
        {"ImageId": "a", **image_metrics(rect((6, 6), (0, 3), (0, 3)), rect((6, 6), (0, 3), (0, 3)))},
        {"ImageId": "b", **image_metrics(rect((6, 6), (0, 3), (0, 3)), np.zeros((6, 6), np.int32))},
    ]
    summary = aggregate(pd.DataFrame(rows))
    assert summary["n_images"] == 2
    assert summary["dsb_score"] == 0.5
    assert summary["n_true"] == 2 and summary["n_pred"] == 1
    assert summary["mean_matched_iou"] == 1.0  # NaN of image b ignored
    assert "ImageId" not in summary


def test_group_summary_means_scores_and_takes_the_median_counting_error():
    one, empty = rect((6, 6), (0, 3), (0, 3)), np.zeros((6, 6), np.int32)
    two = one + rect((6, 6), (4, 6), (4, 6)) * 2
    rows = [{"source": "x", **image_metrics(one, one)},     # perfect
            {"source": "y", **image_metrics(two, one)},     # one of two found: count error 0.5
            {"source": "y", **image_metrics(empty, two)},   # two found in an empty image: 2.0
            {"source": "y", **image_metrics(two, two)}]     # perfect: 0.0
    summary = group_summary(pd.DataFrame(rows), "source")
    assert list(summary.index) == ["x", "y"]
    assert summary.loc["x"].to_dict() == {"n_images": 1, "dsb_score": 1.0, "ap50": 1.0, "count_error": 0.0,
                                          "n_pred": 1, "n_true": 1, "pred_per_true": 1.0}
    y = summary.loc["y"]
    assert y["n_images"] == 3 and y["count_error"] == 0.5  # the median of 0.5, 2.0, 0.0, not their mean
    assert y["dsb_score"] == pytest.approx((0.5 + 0.0 + 1.0) / 3) and y["ap50"] == pytest.approx(0.5)
    assert (y["n_pred"], y["n_true"]) == (5, 4) and y["pred_per_true"] == 1.25
    # without counts, by two columns
    table = pd.DataFrame(rows).drop(columns=["n_true", "n_pred"]).assign(run=["a", "a", "b", "b"])
    both = group_summary(table, ["run", "source"])
    assert list(both.columns) == ["n_images", "dsb_score", "ap50", "count_error"]
    assert both.loc[("b", "y"), "n_images"] == 2 and both.loc[("a", "y"), "count_error"] == 0.5


def test_the_robustness_benchmarks_whole_count_leaves_out_only_small_edge_fragments():
    """``bench_robustness.py``'s diagnostic count: a nucleus the crop's edge cut to under
    ``min_area`` px is left out; a large one at the edge, and a small one inside, still count."""
    from pipeline.training.shifts import whole_count

    labels = np.zeros((40, 40), np.int32)
    labels[10:20, 10:20] = 1  # inside, 100 px
    labels[0:3, 5:8] = 2  # edge fragment, 9 px
    labels[30:40, 30:40] = 3  # at the edge, 100 px
    labels[25:27, 5:7] = 4  # small, inside
    labels[37:40, 0:2] = 7  # edge fragment in a corner, 6 px (labels need not be consecutive)
    assert whole_count(labels, 25.0) == 3
    assert whole_count(labels, 25.0, np.bincount(labels.ravel())) == 3  # the areas given
    assert whole_count(labels, 0.0) == 5  # nothing is small enough
    assert whole_count(np.zeros((8, 8), np.int32), 25.0) == 0
