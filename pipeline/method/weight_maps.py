"""Pixel weight maps of the U-Net paper (Ronneberger et al. 2015, eq. 6).

``w(x) = w_c(x) + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))``

``d1``, ``d2`` are the Euclidean distances (as :func:`scipy.ndimage.distance_transform_edt`
measures them) from ``x`` to the nearest pixel of the nearest and of the second-nearest nucleus.

The exact definition needs one full-image distance transform per nucleus. The separation term
drops below a tolerance ``tol * w0`` once ``d1 + d2 > T = sigma * sqrt(2 ln(1 / tol))``
(``T ~= 3.72 sigma`` for ``tol = 1e-3``), so :func:`nearest_two` confines the transform of each
nucleus to its bounding box grown by a margin derived from ``T`` (see :func:`separation_margin`),
which makes :func:`separation_weights` agree with :func:`separation_weights_exact` within
``tol * w0`` everywhere at a fraction of the cost.

Must not: know about heads or losses; it only computes weight maps from labels.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

__all__ = [
    "nearest_two",
    "separation_margin",
    "separation_weights",
    "separation_weights_exact",
    "class_weights",
    "weight_map",
]


def separation_margin(sigma: float, tol: float = 1e-3) -> int:
    """Window margin (px) that makes the windowed separation term exact within ``tol * w0``.

    The term ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` is below ``tol * w0`` where
    ``d1 + d2 > T = sigma * sqrt(2 ln(1/tol))``. On a background pixel ``d1 >= 1``, so the term
    can reach the tolerance only where ``d2 <= T - 1``. A pixel outside the bounding box of a
    nucleus grown by ``m`` px lies at distance ``>= m + 1`` from it; with ``m + 1 > T - 1`` the
    two nearest nuclei of every pixel where the term matters are both inside their windows and
    their distances are exact. Elsewhere the windowed ``d1, d2`` can only be larger than the
    exact ones, so the windowed term is in ``[0, exact term] ⊂ [0, tol * w0)``.

    Parameters
    ----------
    sigma : float
        Decay length of the separation term, px (> 0).
    tol : float
        Tolerance relative to ``w0``, in (0, 1).

    Returns
    -------
    margin : int
        Smallest integer ``m`` with ``m + 1 > T - 1``.
    """
    if not sigma > 0 or not 0 < tol < 1:
        raise ValueError(f"need sigma > 0 and 0 < tol < 1, got sigma={sigma}, tol={tol}")
    t = sigma * math.sqrt(2.0 * math.log(1.0 / tol))
    return max(0, math.floor(t - 2.0) + 1)


def nearest_two(labels: np.ndarray, margin: int):
    """Distances to, and labels of, the nearest and second-nearest nucleus of every pixel.

    The distance transform of each nucleus is evaluated only in its bounding box grown by
    ``margin`` px (one loop over nuclei, confined to these windows). Distances up to
    ``margin`` are exact (a pixel outside a window lies more than ``margin`` px from the
    nucleus); larger ones may be reported as larger than they are (``inf`` when no window
    covers the pixel). A pixel inside nucleus ``k`` has ``d1 = 0`` and ``l1 = k``.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background, 1..N = nuclei.
    margin : int
        Window margin around each nucleus bounding box, px (>= 0).

    Returns
    -------
    d1, d2 : (H, W) ndarray of float64
        Euclidean distance (px) to the nearest pixel of the nearest and of the
        second-nearest nucleus; ``inf`` where unknown (beyond ``margin``).
    l1, l2 : (H, W) ndarray of int32
        Labels of these nuclei, 0 where ``d1`` (resp. ``d2``) is ``inf``.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D, got shape {labels.shape}")
    h, w = labels.shape
    d1 = np.full((h, w), np.inf)
    d2 = np.full((h, w), np.inf)
    l1 = np.zeros((h, w), np.int32)
    l2 = np.zeros((h, w), np.int32)
    for k, box in enumerate(ndi.find_objects(labels), start=1):
        if box is None:
            continue
        win = (
            slice(max(box[0].start - margin, 0), min(box[0].stop + margin, h)),
            slice(max(box[1].start - margin, 0), min(box[1].stop + margin, w)),
        )
        d = ndi.distance_transform_edt(labels[win] != k)
        a1, a2, b1, b2 = d1[win], d2[win], l1[win], l2[win]  # views: updated in place
        first = d < a1
        second = ~first & (d < a2)
        b2[...] = np.where(first, b1, np.where(second, k, b2))
        a2[...] = np.where(first, a1, np.where(second, d, a2))
        b1[first] = k
        a1[first] = d[first]
    return d1, d2, l1, l2


def _separation_term(d1, d2, background, w0, sigma):
    """``w0 exp(-(d1 + d2)^2 / 2 sigma^2)`` on background pixels, 0 elsewhere (float32)."""
    out = np.zeros(d1.shape, np.float32)
    s = d1[background] + d2[background]
    out[background] = w0 * np.exp(-(s * s) / (2.0 * sigma * sigma))
    return out


def separation_weights(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    tol: float = 1e-3,
    *,
    nearest=None,
) -> np.ndarray:
    """Separation term of the U-Net weight map (eq. 6), fast, within ``tol * w0`` of exact.

    ``w0 * exp(-(d1 + d2)**2 / (2 sigma**2))`` on background pixels, 0 on nuclei, and 0
    everywhere when the image has fewer than two nuclei. Each nucleus' distance transform is
    confined to its bounding box grown by :func:`separation_margin` (``sigma, tol``) px.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    w0 : float
        Amplitude of the term.
    sigma : float
        Decay length, px.
    tol : float
        Maximum error relative to ``w0``.
    nearest : tuple, optional
        Output of :func:`nearest_two` for ``labels`` with a margin of at least
        ``separation_margin(sigma, tol)``, to share it with other targets.

    Returns
    -------
    weights : (H, W) ndarray of float32
        The separation term, in ``[0, w0]``.
    """
    labels = np.asarray(labels)
    if nearest is None:
        nearest = nearest_two(labels, separation_margin(sigma, tol))
    d1, d2 = nearest[0], nearest[1]
    return _separation_term(d1, d2, (labels == 0) & np.isfinite(d2), w0, sigma)


def separation_weights_exact(labels: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """Reference separation term: one full-image distance transform per nucleus.

    Same definition and output as :func:`separation_weights`, without the window
    approximation. Slow (O(N H W) for N nuclei); for tests and benchmarks.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    w0, sigma : float
        Amplitude and decay length (px) of the term.

    Returns
    -------
    weights : (H, W) ndarray of float32
    """
    labels = np.asarray(labels)
    ids = np.unique(labels[labels > 0])
    if ids.size < 2:
        return np.zeros(labels.shape, np.float32)
    d1 = np.full(labels.shape, np.inf)
    d2 = np.full(labels.shape, np.inf)
    for k in ids:
        d = ndi.distance_transform_edt(labels != k)
        d2 = np.minimum(d2, np.maximum(d1, d))
        d1 = np.minimum(d1, d)
    return _separation_term(d1, d2, labels == 0, w0, sigma)


def class_weights(labels: np.ndarray, max_weight: float = 10.0) -> np.ndarray:
    """Class-balancing weight ``w_c`` of the U-Net weight map.

    Two classes, nucleus (``labels > 0``) and background. Each pixel gets the inverse
    frequency of its class, normalised so that the more frequent class weighs 1:
    ``w_c(x) = f_max / f_c(x)`` with ``f_c`` the fraction of the image's pixels in class ``c``,
    clipped to ``[1, max_weight]``. An image with a single class is all ones.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    max_weight : float
        Upper bound of the weight of the rarer class (>= 1).

    Returns
    -------
    weights : (H, W) ndarray of float32
        Values in ``[1, max_weight]``.
    """
    fg = np.asarray(labels) > 0
    n_fg = int(np.count_nonzero(fg))
    n_bg = fg.size - n_fg
    w = np.ones(fg.shape, np.float32)
    if n_fg == 0 or n_bg == 0:
        return w
    w_fg = min(max(n_bg / n_fg, 1.0), max_weight)
    w_bg = min(max(n_fg / n_bg, 1.0), max_weight)
    w[fg] = w_fg
    w[~fg] = w_bg
    return w


def weight_map(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    max_class_weight: float = 10.0,
    tol: float = 1e-3,
    *,
    nearest=None,
) -> np.ndarray:
    """U-Net weight map ``w_c + separation term`` (eq. 6 of the paper).

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    w0, sigma : float
        Amplitude and decay length (px) of the separation term.
    max_class_weight : float
        Clip of :func:`class_weights`.
    tol : float
        Tolerance of :func:`separation_weights` relative to ``w0``.
    nearest : tuple, optional
        Precomputed :func:`nearest_two` (see :func:`separation_weights`).

    Returns
    -------
    weights : (H, W) ndarray of float32
        Values in ``[1, max_class_weight + w0]``.
    """
    return class_weights(labels, max_class_weight) + separation_weights(
        labels, w0, sigma, tol, nearest=nearest
    )
