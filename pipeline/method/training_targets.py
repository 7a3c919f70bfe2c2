"""Training targets from instance labels (the ``targets`` stage, :mod:`pipeline.stages.targets`,
writes them to disk).

- :func:`nucleus_radii`, :func:`border_mask`: pixels near a contact between two different nuclei;
- :func:`make_targets`: the arrays every head's target is made from (:data:`pipeline.method.heads.TARGET_KEYS`:
  ``classes``, the softmax head's encoding; ``mask``; ``border``) plus the weight map
  (:mod:`pipeline.method.weight_maps`), sharing one nearest-two-nuclei computation; used by the stage and
  usable on the fly. How a head turns labels and border into its own target is
  :meth:`pipeline.method.heads.Head.encode_labels`.

Must not: import torch, know a head's channel layout beyond asking :mod:`pipeline.method.heads`, or
keep defaults of the ``targets`` section (they are :class:`pipeline.config.params.TargetsConfig`).
"""

from __future__ import annotations

import numpy as np

from pipeline.method.heads import get_head
from pipeline.method.weight_maps import class_weights, nearest_two, separation_margin, separation_weights

__all__ = [
    "nucleus_radii",
    "border_mask",
    "make_targets",
    "rescaled_targets",
]


def nucleus_radii(
    labels: np.ndarray, radius_min: int = 1, radius_max: int = 4, scale: float = 0.1
) -> np.ndarray:
    """Border radius of every nucleus, adapted to its size.

    ``r_k = clip(round(scale * D_k), radius_min, radius_max)`` with ``D_k = sqrt(4 A_k / pi)``
    the equivalent diameter (px) of nucleus ``k`` of area ``A_k`` (px²). With the defaults a
    nucleus of diameter < 15 px gets 1 px, 15–25 px gets 2 px, ..., >= 35 px gets 4 px.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    radius_min, radius_max : int
        Bounds of the radius, px.
    scale : float
        Radius per px of equivalent diameter.

    Returns
    -------
    radii : (max_label + 1,) ndarray of int32
        ``radii[k]`` for label ``k``; ``radii[0] = 0`` (background).
    """
    area = np.bincount(np.asarray(labels).ravel(), minlength=1)
    radii = np.clip(np.floor(scale * np.sqrt(4.0 * area / np.pi) + 0.5), radius_min, radius_max).astype(
        np.int32
    )
    radii[0] = 0
    return radii


def border_mask(
    labels: np.ndarray,
    radius_min: int = 1,
    radius_max: int = 4,
    scale: float = 0.1,
    *,
    nearest=None,
) -> np.ndarray:
    """Pixels near a contact between two different nuclei.

    A pixel is border when its closed disk of radius ``r(x)`` contains pixels of at least two
    distinct nuclei, i.e. when its distance ``d2`` to the second-nearest nucleus (its own
    nucleus counts as the nearest, at distance 0) is at most ``r(x)``. The radius adapts to the
    nuclei involved (see :func:`nucleus_radii`):

    - inside nucleus ``k``: ``r(x) = r_k``, so the border reaches ``r_k`` px into each of two
      touching nuclei (thin in small nuclei, wider in large ones);
    - on background: ``r(x) = r_a + r_b`` for the two nearest nuclei ``a, b``, so a background
      gap of up to ``r_a + r_b`` px between them is entirely border (and continues into nucleus
      ``a`` for ``r_a - gap`` px when the gap is narrower than ``r_a``); a gap narrower than
      ``2 (r_a + r_b)`` px has border in its middle.

    An isolated nucleus (no other within ``2 * radius_max`` px) has no border. Computed with
    one distance transform per nucleus confined to its bounding box grown by
    ``2 * radius_max`` px (:func:`pipeline.method.weight_maps.nearest_two`); exact.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    radius_min, radius_max : int
        Bounds of the per-nucleus radius, px.
    scale : float
        Radius per px of nucleus equivalent diameter.
    nearest : tuple, optional
        Output of :func:`pipeline.method.weight_maps.nearest_two` for ``labels`` with a margin of at
        least ``2 * radius_max``.

    Returns
    -------
    border : (H, W) ndarray of bool
    """
    labels = np.asarray(labels)
    if nearest is None:
        nearest = nearest_two(labels, 2 * radius_max)
    _, d2, l1, l2 = nearest
    radii = nucleus_radii(labels, radius_min, radius_max, scale)
    radius = np.where(labels > 0, radii[labels], radii[l1] + radii[l2])
    return d2 <= radius


def make_targets(
    labels: np.ndarray,
    w0: float = 10.0,
    sigma: float = 5.0,
    border_radius_min: int = 1,
    border_radius_max: int = 4,
    border_scale: float = 0.1,
    class_weight_max: float = 10.0,
) -> dict[str, np.ndarray]:
    """All training targets of one image (what the ``targets`` stage stores).

    The nearest/second-nearest nucleus distances are computed once, with the larger of the
    margins the border and the separation term need, and shared.

    Parameters
    ----------
    labels : (H, W) ndarray of int
        Instance labels, 0 = background.
    w0, sigma : float
        Separation term amplitude and decay length (px), see :mod:`pipeline.method.weight_maps`.
    border_radius_min, border_radius_max, border_scale
        Border parameters, see :func:`border_mask`.
    class_weight_max : float
        Clip of :func:`pipeline.method.weight_maps.class_weights`.

    Returns
    -------
    targets : dict
        ``classes`` uint8 (H, W) (0 = mask − border, 1 = border, 2 = background),
        ``mask`` uint8 (H, W) 0/1, ``border`` uint8 (H, W) 0/1, ``weights`` float32 (H, W)
        (class weight + separation term).
    """
    labels = np.asarray(labels)
    margin = max(separation_margin(sigma), 2 * int(border_radius_max))
    nearest = nearest_two(labels, margin)
    border = border_mask(labels, border_radius_min, border_radius_max, border_scale, nearest=nearest)
    weights = class_weights(labels, class_weight_max)
    weights += separation_weights(labels, w0, sigma, nearest=nearest)
    return {
        "classes": get_head("softmax").encode_labels(labels, border),
        "mask": (labels > 0).astype(np.uint8),
        "border": border.astype(np.uint8),
        "weights": weights,
    }


# --------------------------------------------------------------------------- the stage


def rescaled_targets(image: np.ndarray, labels: np.ndarray, factor: float, **kwargs) -> dict[str, np.ndarray]:
    """An image and its labels resized by ``factor``, with the :func:`make_targets` of the resized labels.

    Parameters
    ----------
    image : (H, W, 3) array
        Any dtype; resized by :func:`pipeline.method.scale.resize_image` (dtype kept).
    labels : (H, W) int array
        Resized by nearest neighbour.
    factor : float
        Usually ``canonical / median nucleus diameter`` (:func:`pipeline.method.scale.scale_factor`).
    **kwargs
        :func:`make_targets` keywords.

    Returns
    -------
    arrays : dict
        ``image`` (h, w, 3), ``labels`` int32 (h, w) and the :func:`make_targets` arrays (``weights``
        float32), ``(h, w) = scaled_shape((H, W), factor)``.
    """
    from pipeline.method.scale import resize_image, resize_labels, scaled_shape

    shape = scaled_shape(labels.shape, factor)
    labels = resize_labels(labels, shape).astype(np.int32)
    return {"image": resize_image(image, shape), "labels": labels, **make_targets(labels, **kwargs)}


