"""Marker-controlled watershed: probability maps → instance labels (the ``postprocess`` stage).

``postprocess`` turns the network's class probabilities into non-overlapping nuclei:

P(mask) and P(mask − border) come from the head's decoding
(:meth:`pipeline.method.heads.Head.mask_and_marker`).

1. foreground = P(mask) > ``mask_threshold``, lowered in dense images when
   ``dense_mask_threshold`` is set (:func:`mask_threshold_for`);
2. markers = connected components of P(mask − border) > ``marker_threshold`` inside the
   foreground; components smaller than ``min_marker_size`` pixels are dropped;
3. the markers are flooded over −P(mask) (``flood='probability'``) or over the negated
   Euclidean distance to the background (``flood='distance'``), restricted to the foreground;
   foreground components that hold no marker at all become nuclei of their own;
4. nuclei whose highest P(mask − border) is below ``object_threshold`` are removed: faint specks
   the network is unsure of (a real nucleus, even one cut by the image edge, peaks near 1).
   Stained (colour, e.g. H&E) images take ``stained_object_threshold`` instead when it is set
   (:func:`for_image_type`): the network is less sure of tissue nuclei;
5. holes are filled (background enclosed by one nucleus), nuclei smaller than ``min_size``
   pixels are removed, then those smaller than ``min_relative_size`` times the median area of
   the image's nuclei (specks beside real nuclei, whatever the scale), and the labels are
   renumbered 1..N.

Must not: know a head's channel layout (ask :mod:`pipeline.method.heads`), keep threshold defaults
(:class:`pipeline.config.params.PostprocessConfig`), or import torch.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from pipeline.config.params import FLOODS, HISTOLOGY
from pipeline.method.heads import mask_and_marker


def keep_labels(labels: np.ndarray, keep: np.ndarray) -> np.ndarray:
    """The labels flagged in ``keep``, renumbered 1..N in their order; the others set to 0.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    keep : (labels.max() + 1,) bool array
        One flag per label value; ``keep[0]`` is ignored (background stays 0).

    Returns
    -------
    labels : (H, W) int32
    """
    keep = keep.copy()
    keep[0] = False
    return (np.cumsum(keep) * keep).astype(np.int32)[labels]


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Remove every label with fewer than ``min_size`` pixels and renumber the rest 1..N.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    min_size : int
        Minimum object area in pixels.

    Returns
    -------
    labels : (H, W) int32
        Small objects set to 0; the others keep their order and are numbered consecutively.
    """
    return keep_labels(labels, np.bincount(labels.ravel()) >= min_size)


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of every object: background enclosed by that object alone.

    A hole is a background component (4-connected in 2D, 6-connected in 3D: neighbours along one
    axis) that touches no edge or face of the image; it takes the label of the object around it
    when all its neighbours belong to one object (a gap enclosed by several nuclei stays
    background). Any dimension (2D images, 3D stacks). Vectorised; the work is proportional to
    the number of hole pixels.

    Parameters
    ----------
    labels : (H, W) or (Z, H, W) int array
        Instance labels, 0 = background.

    Returns
    -------
    labels : int array of the same shape
        A copy with the holes filled.
    """
    labels = labels.copy()
    background, n = ndi.label(labels == 0)
    if n == 0:
        return labels
    touches_edge = np.zeros(n + 1, bool)
    touches_edge[0] = True  # object pixels
    for axis in range(labels.ndim):
        for end in (0, -1):
            touches_edge[np.take(background, end, axis=axis)] = True
    coords = np.nonzero(~touches_edge[background])
    hole = background[coords]
    del background
    if hole.size == 0:
        return labels
    neighbour_holes, neighbour_labels = [], []
    for axis in range(labels.ndim):
        for step in (-1, 1):  # holes never touch the edge: no clipping
            shifted = list(coords)
            shifted[axis] = coords[axis] + step
            values = labels[tuple(shifted)]
            inside = values > 0
            neighbour_holes.append(hole[inside])
            neighbour_labels.append(values[inside])
    pairs = np.unique(np.stack([np.concatenate(neighbour_holes), np.concatenate(neighbour_labels)]), axis=1)
    n_owners = np.bincount(pairs[0], minlength=n + 1)
    owner = np.zeros(n + 1, labels.dtype)
    single = n_owners[pairs[0]] == 1
    owner[pairs[0][single]] = pairs[1][single]
    labels[coords] = owner[hole]
    return labels


def postprocess(
    probs: np.ndarray,
    head: str,
    marker_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    min_marker_size: int = 4,
    min_size: int = 10,
    min_relative_size: float = 0.0,
    flood: str = "probability",
    object_threshold: float = 0.0,
    markers: np.ndarray | None = None,
    dense_mask_threshold: float | None = None,
) -> np.ndarray:
    """Marker-controlled watershed of a probability map into instance labels.

    Parameters
    ----------
    probs : (C, H, W) float array
        Network probabilities in the layout of ``head`` (:mod:`pipeline.method.heads`).
    head : str
        The network head that produced ``probs`` (a name of :data:`pipeline.method.heads.HEADS`).
    marker_threshold : float
        Markers are P(mask − border) > this value.
    mask_threshold : float
        Foreground is P(mask) > this value.
    min_marker_size : int
        Marker components smaller than this (pixels) are dropped.
    min_size : int
        Nuclei smaller than this (pixels) are removed.
    min_relative_size : float
        Then nuclei smaller than this fraction of the median nucleus area (of those left) are
        removed; 0 keeps them all.
    flood : {'probability', 'distance'}
        Flood over −P(mask) or over −(distance to the background).
    object_threshold : float
        Nuclei whose maximum P(mask − border) is below this value are removed; 0 keeps them all.
    markers : (H, W) int array, optional
        The markers (0 = none), instead of :func:`find_markers` of these probabilities.
    dense_mask_threshold : float, optional
        The lowest the mask threshold goes in dense images (:func:`mask_threshold_for`); None
        keeps ``mask_threshold`` as it is.

    Returns
    -------
    labels : (H, W) int32
        0 = background, 1..N = nuclei; every pixel belongs to at most one nucleus.
    """
    if flood not in FLOODS:
        raise ValueError(f"flood must be one of {FLOODS}, got {flood!r}")
    mask_p, marker_p = mask_and_marker(probs, head)
    mask_threshold = mask_threshold_for(mask_p, mask_threshold, dense_mask_threshold)
    foreground = mask_p > mask_threshold
    if markers is None:
        markers = find_markers(mask_p, marker_p, marker_threshold, mask_threshold, min_marker_size)
    if flood == "probability":
        relief = -mask_p
    else:
        relief = -ndi.distance_transform_edt(foreground).astype(np.float32)
    labels = watershed(relief, markers, mask=foreground).astype(np.int32)

    unmarked = foreground & (labels == 0)
    if unmarked.any():
        extra, _ = ndi.label(unmarked)
        labels[unmarked] = extra[unmarked] + labels.max()

    labels = remove_faint(labels, marker_p, object_threshold)
    labels = remove_small(fill_holes(labels), min_size)
    return remove_relatively_small(labels, min_relative_size)


#: P(mask) above which a pixel counts towards an image's nucleus fraction (:func:`mask_threshold_for`).
NUCLEUS_FRACTION_LEVEL = 0.5


def nucleus_fraction(mask_p: np.ndarray) -> float:
    """The share of an image (or volume) that is nucleus: the fraction of its pixels with P(mask)
    > :data:`NUCLEUS_FRACTION_LEVEL`, in [0, 1]. ``mask_p``: any shape, float."""
    return float(np.count_nonzero(mask_p > NUCLEUS_FRACTION_LEVEL)) / max(mask_p.size, 1)


def mask_threshold_for(mask_p: np.ndarray, mask_threshold: float, dense_mask_threshold: float | None = None) -> float:
    """The mask threshold of one image: ``mask_threshold`` times the share of the image that is not
    nucleus (1 − :func:`nucleus_fraction`), and no lower than ``dense_mask_threshold``.

    Nuclei that fill much of an image (cytospins, confluent cell lines, tissue sections) have
    outlines the network draws too tight at the threshold that suits sparse nuclei; the lower
    threshold draws them whole. The rule and its floor were fitted on DSB2018's grouped folds 1–4
    and checked on sources it never saw (docs/decisions.md, "The mask threshold follows the
    nucleus fraction").

    Parameters
    ----------
    mask_p : float array, any shape
        P(mask) of the whole image (or block, or volume) being post-processed.
    mask_threshold : float
        The threshold of an image with (almost) no nuclei, in [0, 1].
    dense_mask_threshold : float or None
        The floor, in [0, 1]; None returns ``mask_threshold`` unchanged.

    Returns
    -------
    threshold : float
    """
    if dense_mask_threshold is None:
        return float(mask_threshold)
    lowered = mask_threshold * (1.0 - nucleus_fraction(mask_p))
    return float(max(lowered, min(dense_mask_threshold, mask_threshold)))


def find_markers(mask_p: np.ndarray, marker_p: np.ndarray, marker_threshold: float = 0.5,
                 mask_threshold: float = 0.5, min_marker_size: int = 4) -> np.ndarray:
    """The watershed's markers: connected components of P(mask − border) > ``marker_threshold``
    within P(mask) > ``mask_threshold``, those under ``min_marker_size`` px dropped.

    Parameters
    ----------
    mask_p, marker_p : (H, W) float arrays
        P(mask) and P(mask − border), as :func:`pipeline.method.heads.mask_and_marker` gives them.

    Returns
    -------
    markers : (H, W) int32
        0 = none, 1..N.
    """
    markers, _ = ndi.label((marker_p > marker_threshold) & (mask_p > mask_threshold))
    return remove_small(markers, min_marker_size)


def remove_faint(labels: np.ndarray, probability: np.ndarray, threshold: float) -> np.ndarray:
    """Remove the labels whose highest ``probability`` is below ``threshold``; renumber 1..N.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    probability : (H, W) float array
        Per-pixel probability (here P(mask − border)), in [0, 1].
    threshold : float
        In [0, 1]; 0 returns ``labels`` unchanged.

    Returns
    -------
    labels : (H, W) int32
    """
    if threshold <= 0:
        return labels
    keep = np.zeros(int(labels.max()) + 1, bool)
    keep[labels[probability >= threshold]] = True  # a label reaches the threshold somewhere
    return keep_labels(labels, keep)


def remove_relatively_small(labels: np.ndarray, fraction: float) -> np.ndarray:
    """Remove the labels smaller than ``fraction`` times the median label area; renumber 1..N.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    fraction : float
        In [0, 1]; 0 returns ``labels`` unchanged.

    Returns
    -------
    labels : (H, W) int32
    """
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if fraction <= 0 or areas.size == 0:
        return labels
    return remove_small(labels, int(np.ceil(fraction * np.median(areas))))


#: :func:`remove_bright_fragments`: a label is a bright fragment when over half its pixels reach
#: CLIPPED (the top of the normalised range, where :func:`pipeline.method.intensity.bright_objects`
#: clips the objects far brighter than the nuclei) and its area is under FRAGMENT_AREA times a
#: nucleus's (of the diameter segmented for): apoptotic bodies and bright debris
#: (``bench_robustness.py`` ``debris``: 0.2–0.4 of a diameter, outlined larger and in clusters by
#: the network), not nuclei; a saturated nucleus of its own size stays.
CLIPPED, FRAGMENT_AREA = 0.99, 0.5
#: The share of an image's pixels at :data:`CLIPPED` over which it holds objects far brighter than
#: its nuclei. The top percentile leaves 0.2 % of the pixels at the top (99.8th,
#: :data:`pipeline.config.model_folder.NORMALIZATION`); the objects that
#: :func:`pipeline.method.intensity.bright_objects` left out of it add theirs (debris: 0.5–3 %). Under
#: it, a small clipped nucleus is one of the image's brightest nuclei, and stays.
BRIGHT_SHARE = 0.005


def bright_clipped(image: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The grey level of a normalised (H, W[, C]) float image ((H, W): its channels' mean) and its
    pixels at :data:`CLIPPED` ((H, W) bool), when those are over :data:`BRIGHT_SHARE` of it: an
    image with objects far brighter than its nuclei, or whose nuclei saturate; else None."""
    grey = image.mean(axis=-1) if image.ndim == 3 else image
    top = grey >= CLIPPED
    return (grey, top) if top.mean() > BRIGHT_SHARE else None


def remove_bright_fragments(labels: np.ndarray, image: np.ndarray, diameter: float) -> np.ndarray:
    """Remove the labels that are clipped bright (over half their pixels at :data:`CLIPPED`) and
    under :data:`FRAGMENT_AREA` of the area of a nucleus ``diameter`` px across, in an image with
    bright objects (over :data:`BRIGHT_SHARE` of its pixels clipped) whose nuclei do not clip
    themselves (the clipped labels cover under half of the labels' area: in a saturated image, the
    small ones are the poles of nuclei in a z-stack's planes); renumber 1..N.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    image : (H, W) or (H, W, C) float array
        The normalised image (grey: its channels' mean), in [0, 1], on the labels' grid.
    diameter : float
        The nucleus diameter (px of ``labels``) the image was segmented for.

    Returns
    -------
    labels : (H, W) int32; ``labels`` itself when none is removed
    """
    found = bright_clipped(image)
    if not labels.max() or found is None:
        return labels
    top = found[1]
    areas = np.bincount(labels.ravel())
    clipped = np.bincount(labels.ravel(), top.ravel(), areas.size) > 0.5 * areas
    clipped[0] = False
    if areas[clipped].sum() >= 0.5 * areas[1:].sum():  # the nuclei themselves clip (saturated)
        return labels
    fragment = clipped & (areas < FRAGMENT_AREA * np.pi / 4 * diameter**2)
    fragment[0] = False
    return keep_labels(labels, ~fragment) if fragment.any() else labels


#: The settings a stained image takes from ``stained_<name>`` when that is set.
STAINED_SETTINGS = ("object_threshold", "mask_threshold")


def for_image_type(settings: dict[str, Any], image_type: str | None = None) -> dict[str, Any]:
    """The :func:`postprocess` keyword arguments of post-processing ``settings`` (a ``postprocess``
    section's thresholds) for an image of ``image_type``: a stained image (:data:`~pipeline.config.params.HISTOLOGY`) takes
    ``stained_object_threshold`` as its ``object_threshold`` and ``stained_mask_threshold`` as its
    ``mask_threshold`` when they are set (not None), and keeps its mask threshold whatever its
    nucleus fraction (``dense_mask_threshold`` None: the rule was fitted on fluorescence only).
    """
    kwargs = dict(settings)
    for name in STAINED_SETTINGS:
        stained = kwargs.pop(f"stained_{name}", None)
        if stained is not None and image_type == HISTOLOGY:
            kwargs[name] = stained
    if image_type == HISTOLOGY and "dense_mask_threshold" in kwargs:
        kwargs["dense_mask_threshold"] = None
    return kwargs


def postprocess_to_shape(probs: np.ndarray, head: str, shape: tuple[int, int], scale: float = 1.0,
                         image_type: str | None = None, **kwargs: Any) -> np.ndarray:
    """:func:`postprocess` of probabilities computed on an image resized by ``scale``, giving labels
    on the original pixel grid of ``shape``, with the settings ``kwargs`` for an image of
    ``image_type`` (:func:`for_image_type`).

    Sizes in ``kwargs`` (``min_marker_size``, ``min_size``) are in px at the network's scale.
    The probabilities are resized back to the original grid (area averaging when the image was
    enlarged, bilinear when it was shrunk) and flooded there, with the sizes converted to px².
    The markers of an enlarged image (``scale > 1``, small nuclei) are found at the network's
    scale, where the 1–2 px gaps between touching nuclei are wide enough to part them, and resized
    back by nearest neighbour. Enlarged images were once post-processed wholly at the network's
    scale and their labels resized back by nearest neighbour, which jagged the outlines
    (docs/decisions.md, "Enlarged images: outlines on the original grid").
    A dense image's mask threshold (``dense_mask_threshold``, :func:`mask_threshold_for`) is decided
    once, from the probabilities at the network's scale. ``min_relative_size`` is applied last, on
    the original grid.

    Parameters
    ----------
    probs : (C, h, w) float32
        At the network's scale, ``(h, w) = scaled_shape(shape, scale)``.
    head : str
    shape : (int, int)
        (H, W) of the original image.
    scale : float
    image_type : str, optional
        :func:`pipeline.method.image_types.classify_image` of the image.

    Returns
    -------
    labels : (H, W) int32
    """
    from pipeline.method.scale import resize_labels, resize_probabilities

    kwargs = for_image_type(kwargs, image_type)
    fraction = kwargs.pop("min_relative_size", 0.0)
    dense = kwargs.pop("dense_mask_threshold", None)
    markers = None
    if scale > 1 or dense is not None:
        mask_p, marker_p = mask_and_marker(probs, head)  # the nucleus fraction at the network's scale
        kwargs["mask_threshold"] = mask_threshold_for(mask_p, kwargs.get("mask_threshold", 0.5), dense)
    if scale > 1:
        keys = ("marker_threshold", "mask_threshold", "min_marker_size")
        settings = {k: kwargs[k] for k in keys if k in kwargs}
        markers = resize_labels(find_markers(mask_p, marker_p, **settings), tuple(shape))
    labels = postprocess(resize_probabilities(probs, tuple(shape)), head, markers=markers, **sizes_at_scale(kwargs, scale))
    return remove_relatively_small(labels, fraction)


def sizes_at_scale(kwargs: dict[str, Any], scale: float) -> dict[str, Any]:
    """:func:`postprocess` keywords with the sizes (px² at the network's scale, ``min_marker_size``,
    ``min_size``) converted to px² of the original image, which was resized by ``scale``."""
    kwargs = dict(kwargs)
    for key in ("min_marker_size", "min_size"):
        if kwargs.get(key):
            kwargs[key] = max(1, int(round(kwargs[key] / scale**2)))
    return kwargs


