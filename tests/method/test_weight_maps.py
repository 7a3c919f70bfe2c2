"""Weight maps: the separation term of the U-Net paper and the class-balancing weight."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import ndimage as ndi

from pipeline.method.weight_maps import (
    class_weights,
    nearest_two,
    separation_margin,
    separation_weights,
    separation_weights_exact,
    weight_map,
)


def discs(shape, centres, radius):
    """Label map with closed discs ``|x - c| <= radius``, labels 1..n in order."""
    yy, xx = np.ogrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, start=1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return labels


# two discs of radius 8 on row 32: A spans columns 12..28, B 36..52; gap columns 29..35
TWO = discs((64, 80), [(32, 20), (32, 44)], 8)


@pytest.mark.parametrize("fn", [separation_weights, separation_weights_exact])
def test_midpoint_of_gap_matches_hand_formula(fn):
    w = fn(TWO, w0=10.0, sigma=5.0)
    # midpoint (32, 32): 4 px to (32, 28) in A and 4 px to (32, 36) in B
    assert w[32, 32] == pytest.approx(10.0 * math.exp(-((4 + 4) ** 2) / (2 * 5.0**2)), rel=1e-6)
    # 2 px from A, 6 px from B: same d1 + d2
    assert w[32, 30] == pytest.approx(10.0 * math.exp(-64 / 50), rel=1e-6)
    assert w.dtype == np.float32 and w.shape == TWO.shape


def test_term_decays_away_from_the_gap():
    w = separation_weights(TWO)
    column = w[32:, 32]  # from the midpoint straight away from the line of centres
    step = np.diff(column)
    assert np.all(step <= 0) and np.all(step[column[:-1] > 1e-3 * 10.0] < 0)  # 0 beyond tolerance
    row = w[32, 29:36]  # along the line of centres d1 + d2 is constant across the gap
    np.testing.assert_allclose(row, row[3], rtol=1e-6)
    assert column[0] > column[5] > column[15]
    assert w[0, 0] < 1e-3 * 10.0 and w[63, 79] < 1e-3 * 10.0
    assert w.max() == pytest.approx(w[TWO == 0].max())
    assert 0 < w.max() <= 10.0


def test_zero_on_nuclei_and_scales_with_w0():
    w = separation_weights(TWO, w0=10.0)
    assert np.all(w[TWO > 0] == 0)
    np.testing.assert_allclose(separation_weights(TWO, w0=3.0), 0.3 * w, rtol=1e-6)


@pytest.mark.parametrize("fn", [separation_weights, separation_weights_exact])
def test_fewer_than_two_nuclei_give_zeros(fn):
    one = discs((40, 40), [(20, 20)], 6)
    for labels in (one, np.zeros((40, 40), np.int32), 7 * (one > 0)):
        w = fn(labels)
        assert w.shape == (40, 40) and w.dtype == np.float32
        assert not w.any()


@pytest.mark.parametrize(("sigma", "tol"), [(0.5, 1e-3), (2.0, 1e-3), (5.0, 1e-3), (5.0, 1e-6), (12.3, 1e-2)])
def test_margin_bounds_the_error(sigma, tol):
    m = separation_margin(sigma, tol)
    # the closest a background pixel outside a window can be: d1 >= 1, d2 >= m + 1
    assert math.exp(-((1 + m + 1) ** 2) / (2 * sigma**2)) < tol
    with pytest.raises(ValueError):
        separation_margin(0.0)


def test_separation_margin_default_is_about_3_7_sigma():
    assert separation_margin(5.0) == 17  # T = 18.58 px: d2 <= T - 1 = 17.58 < m + 1


@st.composite
def label_maps(draw):
    """Small random label maps: rectangles and discs, touching, overlapping, gaps, any ids."""
    h = draw(st.integers(8, 48))
    w = draw(st.integers(8, 48))
    labels = np.zeros((h, w), np.int32)
    yy, xx = np.ogrid[:h, :w]
    n = draw(st.integers(0, 7))
    ids = draw(st.lists(st.integers(1, 60), min_size=n, max_size=n, unique=True))
    for k in ids:
        y, x = draw(st.integers(0, h - 1)), draw(st.integers(0, w - 1))
        r = draw(st.integers(0, 8))
        if draw(st.booleans()):
            labels[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1] = k
        else:
            labels[(yy - y) ** 2 + (xx - x) ** 2 <= r * r] = k
    return labels


@settings(max_examples=60, deadline=None, derandomize=True, database=None)
@given(labels=label_maps(), sigma=st.floats(0.5, 8.0), w0=st.floats(0.5, 20.0))
def test_fast_matches_exact_within_tolerance(labels, sigma, w0):
    fast = separation_weights(labels, w0=w0, sigma=sigma)
    exact = separation_weights_exact(labels, w0=w0, sigma=sigma)
    assert fast.dtype == np.float32 and fast.shape == labels.shape
    assert np.abs(fast.astype(np.float64) - exact).max() <= 1e-3 * w0


@settings(max_examples=40, deadline=None, derandomize=True, database=None)
@given(labels=label_maps(), margin=st.integers(0, 10))
def test_nearest_two_is_exact_within_margin(labels, margin):
    d1, d2, l1, l2 = nearest_two(labels, margin)
    ids = np.unique(labels[labels > 0])
    dist = (
        np.stack([ndi.distance_transform_edt(labels != k) for k in ids])
        if ids.size
        else np.zeros((0, *labels.shape))
    )
    ordered = np.sort(np.concatenate([dist, np.full((2, *labels.shape), np.inf)]), axis=0)
    for got, want in ((d1, ordered[0]), (d2, ordered[1])):
        near = want <= margin
        np.testing.assert_allclose(got[near], want[near])
        assert np.all(got[~near] > margin)  # beyond the margin: a lower bound, never too small
    # the reported labels are at the reported distances
    for d, lab in ((d1, l1), (d2, l2)):
        ok = np.isfinite(d)
        idx = np.searchsorted(ids, lab[ok])
        np.testing.assert_allclose(dist[idx, *np.nonzero(ok)], d[ok])
        assert np.all(lab[~ok] == 0)
    assert np.all(l1[labels > 0] == labels[labels > 0]) and np.all(d1[labels > 0] == 0)
    assert np.all((l1 != l2) | (l2 == 0))


def test_class_weights_balance_frequencies():
    labels = np.zeros((8, 8), np.int32)
    labels[:4, :4] = 1  # a quarter of the image
    w = class_weights(labels)
    assert w.dtype == np.float32
    assert np.all(w[labels > 0] == 3.0) and np.all(w[labels == 0] == 1.0)
    labels[:] = 2
    labels[0, 0] = 0  # background rare now: background gets the weight, clipped
    w = class_weights(labels, max_weight=10.0)
    assert w[0, 0] == 10.0 and np.all(w[labels > 0] == 1.0)
    assert np.all(class_weights(np.zeros((5, 6), np.int32)) == 1.0)


def test_weight_map_is_class_weight_plus_separation():
    w = weight_map(TWO, w0=10.0, sigma=5.0)
    assert w.dtype == np.float32 and w.shape == TWO.shape
    np.testing.assert_allclose(w, class_weights(TWO) + separation_weights(TWO), rtol=1e-6)
    assert w[32, 32] > w[0, 0] >= 1.0
