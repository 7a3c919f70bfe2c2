"""Nuclei in z-stacks, on arrays: 2D labels linked across planes (:func:`stitch_planes`), the marker
watershed in 3D (:func:`watershed_3d`, in blocks along z: :func:`watershed_3d_blocks`), nuclei ended
where their signal ends (:func:`trim_to_signal`), the anisotropy of a stack estimated from its
nuclei (:func:`estimate_anisotropy`), one row per 3D nucleus (:func:`measure_volumes`), the
resampling of a stack along z (:func:`resize_z`, :func:`resize_labels_3d`) and the 3D DSB2018 score
(:func:`volume_metrics`).

A stack is ``(Z, H, W)``: Z planes of H × W pixels. Its **anisotropy** is the z step over the
pixel size (``voxel_size[0] / voxel_size[2]``): 4 means the planes are 4 px apart. Sizes inherited
from the 2D post-processing (areas in px² at the network's scale) become volumes of the sphere of
the same diameter (:func:`area_to_voxels`).

Must not: run a network, read files, import torch, or keep threshold defaults
(:class:`pipeline.config.params.PostprocessConfig`; :func:`watershed_3d` takes the 2D keywords).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from pipeline.config.params import FLOODS
from pipeline.errors import NucleiError
from pipeline.method.heads import mask_and_marker
from pipeline.method.metrics import image_metrics, overlaps
from pipeline.method.scale import resize_image
from pipeline.method.watershed import (
    fill_holes,
    for_image_type,
    keep_labels,
    mask_threshold_for,
    remove_faint,
    remove_relatively_small,
    remove_small,
)

#: :func:`stitch_planes` links a label to one of the plane before when their IoU is at least this.
#: Concentric discs of radii r < R have IoU (r / R)²: 0.25 links the cross-sections of one nucleus
#: while its radius changes by up to half from a plane to the next (every plane but the extreme
#: caps when the z step is up to about half a nucleus radius), and tolerates a lateral shift of a
#: third of the radius between planes of equal size, yet keeps apart two side-by-side nuclei, whose
#: cross-sections barely overlap. Cellpose's ``stitch_threshold`` is the same rule (IoU with the
#: previous plane's masks; off by default there, values of 0.25-0.5 in its users' threads).
STITCH_IOU = 0.25
#: :func:`trim_to_signal` keeps the sections of a nucleus whose mean signal above the background is
#: at least this fraction of its brightest section's. A microscope blurs an object's edge
#: symmetrically, so the edge lies where the blurred signal is half way between inside and outside:
#: the full width at half maximum of its z profile is its depth, and the out-of-focus light above and
#: below (which a 2D network still takes for a nucleus) falls under it. A dip under half the peak
#: between two brighter runs is two nuclei stacked along z (Sparrow's criterion, loosely).
HALF_MAXIMUM = 0.5
#: :func:`estimate_anisotropy` measures the autocorrelation of the nuclei's signal up to this many px
#: across (a nucleus 4 times the shipped network's canonical diameter of 20 px is still measured).
ANISOTROPY_MAX_LAG = 80
#: ... on the central window of at most this many px in y and x (a bounded cost for large planes).
ANISOTROPY_WINDOW = 256


def check_anisotropy(anisotropy: Any) -> float:
    """``anisotropy`` (z step / pixel size) as a float; NucleiError unless a positive finite number."""
    try:
        value = float(anisotropy)
    except (TypeError, ValueError):
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise NucleiError(f"--anisotropy must be a positive number (z step / pixel size), got {anisotropy!r}")
    return value


# --------------------------------------------------------------------------- resampling along z


def resize_z(volume: np.ndarray, planes: int, out: np.ndarray | None = None) -> np.ndarray:
    """Resample a stack along z to ``planes`` planes, as :func:`pipeline.method.scale.resize_image`
    resizes an image (bilinear when enlarging, area averaging when shrinking; pixel centres aligned).

    Parameters
    ----------
    volume : (Z, H, W) or (Z, H, W, C) float32 array
    planes : int
    out : (planes, H, W[, C]) float32 array, optional
        Written in place (no other copy of the result is made).

    Returns
    -------
    resized : (planes, H, W[, C]) float32, ``volume`` itself when it has ``planes`` planes already.
    """
    if volume.shape[0] == planes and out is None:
        return volume
    if out is None:
        out = np.empty((planes, *volume.shape[1:]), np.float32)
    width = volume.shape[2]
    for y in range(volume.shape[1]):  # XZ slices: one resize of (Z, W[, C]) each
        out[:, y] = resize_image(np.ascontiguousarray(volume[:, y], dtype=np.float32), (planes, width))
    return out


def resize_labels_3d(labels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """Nearest-neighbour resampling of a (Z, H, W) label volume to ``shape``: every output voxel takes
    the label of the input voxel under its centre (:func:`pipeline.method.scale.resize_labels` in 3D).

    Returns
    -------
    labels : int32 ``shape``; labels left with no voxel are dropped and the others renumbered 1..N
        in their order.
    """
    index = [np.minimum(((np.arange(n) + 0.5) * m / n).astype(np.int64), m - 1)
             for n, m in zip(shape, labels.shape, strict=True)]
    resized = labels[np.ix_(*index)]
    return keep_labels(resized, np.bincount(resized.ravel()) > 0)


# --------------------------------------------------------------------------- stitching 2D labels


def stitch_planes(labels: np.ndarray, iou_threshold: float = STITCH_IOU) -> np.ndarray:
    """Link the labels of independently segmented planes into 3D nuclei.

    Plane by plane from the top, a label of plane z takes the 3D label of the label of plane z − 1
    it overlaps best, when that is mutual (each is the other's best IoU: one-to-one) and their IoU
    is at least ``iou_threshold`` (:data:`STITCH_IOU`, the rule of Cellpose's ``stitch_threshold``);
    any other label starts a new nucleus. The overlaps of each pair of planes come from one joint
    histogram (:func:`pipeline.method.metrics.overlaps`). Nuclei stacked directly on each other, with
    no empty plane between, can be linked into one: ``stitch`` is for coarse z, where the planes cut
    a nucleus a few times; :func:`watershed_3d` separates them.

    Parameters
    ----------
    labels : (Z, H, W) int array
        Each plane labelled on its own (0 = background; values may repeat from plane to plane).
    iou_threshold : float
        In (0, 1].

    Returns
    -------
    labels : (Z, H, W) int32
        0 = background, 1..N 3D nuclei, numbered in order of first appearance from the top plane.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected (Z, H, W) labels, got shape {labels.shape}")
    if not 0 < iou_threshold <= 1:
        raise ValueError(f"iou_threshold must be in (0, 1], got {iou_threshold}")
    out = np.zeros(labels.shape, np.int32)
    next_id = 1
    for z in range(labels.shape[0]):
        plane = labels[z]
        values = np.unique(plane)
        values = values[values > 0]
        if values.size == 0:
            continue
        ids = np.zeros(values.size, np.int32)
        if z > 0 and out[z - 1].any():
            previous = out[z - 1]
            inter, area_prev, area_cur = overlaps(previous, plane)  # objects in ascending label order
            iou = inter / np.maximum(area_prev[:, None] + area_cur[None, :] - inter, 1)
            best_prev = iou.argmax(axis=0)  # for each label of this plane
            best_cur = iou.argmax(axis=1)
            cur = np.arange(values.size)
            linked = (iou[best_prev, cur] >= iou_threshold) & (iou[best_prev, cur] > 0) & (best_cur[best_prev] == cur)
            prev_values = np.unique(previous)
            prev_values = prev_values[prev_values > 0]
            ids[linked] = prev_values[best_prev[linked]]
        new = ids == 0
        ids[new] = next_id + np.arange(int(new.sum()), dtype=np.int32)
        next_id += int(new.sum())
        lookup = np.zeros(int(values[-1]) + 1, np.int32)
        lookup[values] = ids
        out[z] = lookup[plane]
    return out


# --------------------------------------------------------------------------- nuclei ended where their signal ends


def section_profiles(labels: np.ndarray, signal: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each nucleus's sum of ``signal`` and voxel count plane by plane.

    Parameters
    ----------
    labels : (Z, H, W) int array, 0 = background
    signal : (Z, H, W) array (any units)

    Returns
    -------
    sums : (N + 1, Z) float64
        Row k: nucleus k's signal in each plane (row 0: the background).
    counts : (N + 1, Z) int64
        Its voxels in each plane.
    """
    depth, n = labels.shape[0], int(labels.max(initial=0)) + 1
    sums, counts = np.zeros((n, depth)), np.zeros((n, depth), np.int64)
    for z in range(depth):  # one plane at a time: the memory of a plane
        plane = labels[z].ravel().astype(np.int64, copy=False)
        sums[:, z] = np.bincount(plane, np.asarray(signal[z], np.float64).ravel(), minlength=n)
        counts[:, z] = np.bincount(plane, minlength=n)
    return sums, counts


def trim_to_signal(labels: np.ndarray, signal: np.ndarray, fraction: float = HALF_MAXIMUM) -> np.ndarray:
    """End each 3D nucleus where its signal ends: its sections (planes) are kept while their mean
    signal above the background is at least ``fraction`` of the brightest section's (the full
    width at half maximum, :data:`HALF_MAXIMUM`).

    Per nucleus, from its brightest section outwards, the contiguous planes at or over the level are
    kept. The planes beyond are dropped (out-of-focus light) unless they rise to the level again:
    then they are another nucleus, stacked on the first, and given the same rule. The background is
    the median signal outside every nucleus (the least signal when there is no such voxel).

    Parameters
    ----------
    labels : (Z, H, W) int array
        3D nuclei, 0 = background.
    signal : (Z, H, W) array
        The stack's intensity (any units; grey).
    fraction : float
        In (0, 1).

    Returns
    -------
    labels : (Z, H, W) int32
        0 = background, 1..N, in the order of the nuclei given (a nucleus split, its parts in order).
    """
    labels, signal = np.asarray(labels), np.asarray(signal)
    if labels.ndim != 3 or signal.shape != labels.shape:
        raise ValueError(f"expected (Z, H, W) labels and signal of one shape, got {labels.shape} and {signal.shape}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    outside = labels == 0
    background = float(np.median(signal[outside])) if outside.any() else float(signal.min(initial=0))
    del outside
    sums, counts = section_profiles(labels, signal)
    level = np.where(counts > 0, sums / np.maximum(counts, 1) - background, -np.inf)
    lookup = np.zeros(level.shape, np.int32)
    count = 0
    for k in range(1, len(level)):  # a loop over nuclei, each over its planes
        pending = [np.flatnonzero(counts[k] > 0)]
        while pending:
            planes = pending.pop(0)
            profile = level[k, planes]
            peak = int(np.argmax(profile))
            if not profile[peak] > 0:
                continue
            run = _run_around(planes, profile >= fraction * profile[peak], peak)
            count += 1
            lookup[k, planes[run]] = count
            for rest in (planes[:run.start], planes[run.stop:]):
                if rest.size and level[k, rest].max() >= fraction * profile[peak]:
                    pending.append(rest)
    return lookup[labels, np.arange(labels.shape[0])[:, None, None]]


def _run_around(planes: np.ndarray, keep: np.ndarray, peak: int) -> slice:
    """The slice of ``planes`` (sorted plane numbers) around index ``peak`` that is ``keep`` and
    consecutive (no plane missing)."""
    step = np.diff(planes) == 1
    start = peak
    while start > 0 and keep[start - 1] and step[start - 1]:
        start -= 1
    stop = peak + 1
    while stop < len(planes) and keep[stop] and step[stop - 1]:
        stop += 1
    return slice(start, stop)


def estimate_anisotropy(nuclei: np.ndarray, max_lag: int = ANISOTROPY_MAX_LAG) -> float | None:
    """The z step over the pixel size of a stack, from its nuclei, taken as deep as they are wide:
    the autocorrelation half-width of ``nuclei`` across (px, mean of y and x) over its half-width
    along z (planes).

    The autocorrelation of a field of blobs falls to a half at a lag proportional to their size
    along that axis, whatever their number or brightness. Light spread along z by the microscope
    widens the z half-width: the estimate is then low (nuclei taken for deeper than they are).

    Parameters
    ----------
    nuclei : (Z, H, W) array
        Where the nuclei are: a network's P(nucleus), or a 0/1 mask.
    max_lag : int
        Largest lag measured, px or planes.

    Returns
    -------
    anisotropy : float or None
        None when a half-width is not reached (fewer planes than a nucleus is deep, no nuclei).
    """
    if np.ndim(nuclei) != 3:
        raise ValueError(f"expected a (Z, H, W) volume, got shape {np.shape(nuclei)}")
    window = [slice(max(0, (n - ANISOTROPY_WINDOW) // 2), max(0, (n - ANISOTROPY_WINDOW) // 2) + ANISOTROPY_WINDOW)
              for n in np.shape(nuclei)[1:]]
    volume = np.asarray(nuclei[:, window[0], window[1]], np.float32)  # the centre: bounded work
    volume = volume - volume.mean()
    variance = float(np.mean(volume * volume))
    if not variance > 0:
        return None
    widths = [_half_width(volume, axis, variance, max_lag) for axis in (0, 1, 2)]
    if any(w is None for w in widths):
        return None
    return (widths[1] + widths[2]) / 2.0 / widths[0]


def _half_width(volume: np.ndarray, axis: int, variance: float, max_lag: int) -> float | None:
    """Lag (linearly interpolated) at which the autocorrelation of a zero-mean ``volume`` along
    ``axis`` falls to 0.5; None when not within ``max_lag`` or the axis."""
    size, previous = volume.shape[axis], 1.0
    for lag in range(1, min(max_lag, size - 1) + 1):
        ahead = [slice(None)] * 3
        behind = [slice(None)] * 3
        ahead[axis], behind[axis] = slice(lag, None), slice(None, size - lag)
        value = float(np.einsum("ijk,ijk->", volume[tuple(ahead)], volume[tuple(behind)])) / (
            variance * volume[tuple(behind)].size)
        if value < 0.5:
            return lag - 1 + (previous - 0.5) / (previous - value)
        previous = value
    return None


# --------------------------------------------------------------------------- the watershed in 3D


def area_to_voxels(area: float, scale: float = 1.0, anisotropy: float = 1.0) -> int:
    """Voxels of the sphere as wide as a disc of ``area`` px² at the network's scale, on a grid
    whose pixels are ``1 / scale`` network px wide and whose planes are ``anisotropy`` px apart:
    ``π d³ / 6 / (scale³ · anisotropy)`` with ``d = √(4 · area / π)``; at least 1 (0 for 0)."""
    if not area:
        return 0
    d = math.sqrt(4.0 * area / math.pi)
    return max(1, int(round(math.pi * d**3 / 6.0 / (scale**3 * anisotropy))))


def watershed_3d(probs: np.ndarray, head: str, anisotropy: float = 1.0, scale: float = 1.0,
                 image_type: str | None = None, *, marker_threshold: float = 0.5, mask_threshold: float = 0.5,
                 min_marker_size: int = 4, min_size: int = 10, min_relative_size: float = 0.0,
                 flood: str = "probability", object_threshold: float = 0.0, **stained: Any) -> np.ndarray:
    """Marker-controlled watershed of a probability volume into 3D nuclei: the rules of
    :func:`pipeline.method.watershed.postprocess`, in 3D.

    1. foreground = P(mask) > ``mask_threshold``; markers = 6-connected components of
       P(mask − border) > ``marker_threshold`` in the foreground, those under ``min_marker_size``
       dropped;
    2. flood over −P(mask) (or over −(distance to the background), measured with the z step
       ``anisotropy``) inside the foreground; foreground components without a marker become nuclei;
    3. nuclei whose highest P(mask − border) is under ``object_threshold`` are removed, holes
       filled (:func:`pipeline.method.watershed.fill_holes`), nuclei under ``min_size`` removed, then
       those under ``min_relative_size`` times the median volume.

    Sizes are the 2D settings' areas (px² at the network's scale), turned into the voxels of the
    sphere as wide (:func:`area_to_voxels`) on this grid (``scale``, ``anisotropy``).

    Parameters
    ----------
    probs : (C, Z, H, W) float32
        Probabilities in the layout of ``head`` (:mod:`pipeline.method.heads`).
    head : str
    anisotropy : float
        z step / pixel size of the grid of ``probs`` (1 for isotropic voxels).
    scale : float
        Factor the network's input was resized by in y and x from this grid (network px per px).
    image_type : str, optional
        Stained images take the ``stained_*`` settings (:func:`pipeline.method.watershed.for_image_type`).
    marker_threshold, mask_threshold, min_marker_size, min_size, min_relative_size, flood, object_threshold
        As :func:`pipeline.method.watershed.postprocess` (sizes in px² at the network's scale).
    **stained
        ``stained_object_threshold``, ``stained_mask_threshold``, ``dense_mask_threshold`` (a model's
        thresholds as they come; the volume's nucleus fraction lowers its mask threshold as
        :func:`pipeline.method.watershed.mask_threshold_for` says).

    Returns
    -------
    labels : (Z, H, W) int32
        0 = background, 1..N nuclei.
    """
    if flood not in FLOODS:
        raise ValueError(f"flood must be one of {FLOODS}, got {flood!r}")
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 4:
        raise ValueError(f"expected (C, Z, H, W) probabilities, got shape {probs.shape}")
    settings = for_image_type({"object_threshold": object_threshold, "mask_threshold": mask_threshold,
                               **stained}, image_type)
    channels, shape = probs.shape[0], probs.shape[1:]
    mask_p, marker_p = mask_and_marker(probs.reshape(channels, -1, shape[2]), head)  # decoding is per voxel
    mask_p, marker_p = mask_p.reshape(shape), marker_p.reshape(shape)
    foreground = mask_p > mask_threshold_for(mask_p, settings["mask_threshold"], settings.get("dense_mask_threshold"))

    markers, _ = ndi.label((marker_p > marker_threshold) & foreground)
    markers = remove_small(markers, area_to_voxels(min_marker_size, scale, anisotropy))
    if flood == "probability":
        relief = np.negative(mask_p)
    else:
        relief = np.negative(ndi.distance_transform_edt(foreground, sampling=(anisotropy, 1.0, 1.0)),
                             dtype=np.float32)
    labels = watershed(relief, markers, mask=foreground).astype(np.int32, copy=False)
    del relief, markers
    unmarked = foreground & (labels == 0)
    if unmarked.any():
        extra, _ = ndi.label(unmarked)
        labels[unmarked] = extra[unmarked] + labels.max()
    del unmarked, foreground

    labels = remove_faint(labels, marker_p, settings["object_threshold"])
    labels = remove_small(fill_holes(labels), area_to_voxels(min_size, scale, anisotropy))
    return remove_relatively_small(labels, min_relative_size)


def watershed_3d_blocks(probs: np.ndarray, head: str, block: int, margin: int, **kwargs: Any) -> np.ndarray:
    """:func:`watershed_3d` block by block along z, for bounded memory (about 34 bytes per voxel of a
    block on top of ``probs``).

    The blocks hold ``block`` planes at most, ``margin`` of them context on each side of their core;
    the cores tile z once. Each block keeps the nuclei whose centroid lies in its core (the rule of
    :func:`pipeline.method.blocks.owned_nuclei`): with a margin of at least a nucleus's height, every
    nucleus comes whole from the one block that owns it. A voxel claimed by two blocks' nuclei stays
    with the first. ``min_relative_size`` is applied to the whole volume, last.

    Parameters
    ----------
    probs : (C, Z, H, W) float32
    head : str
    block, margin : int
        Planes (``block > 2 * margin``); one block when ``Z <= block``.
    **kwargs
        :func:`watershed_3d` keywords.

    Returns
    -------
    labels : (Z, H, W) int32
        0 = background, 1..N nuclei.
    """
    depth = probs.shape[1]
    if depth <= block:
        return watershed_3d(probs, head, **kwargs)
    if block <= 2 * margin:
        raise ValueError(f"block {block} must exceed twice the margin {margin}")
    fraction = kwargs.pop("min_relative_size", 0.0)
    step = block - 2 * margin
    labels = np.zeros(probs.shape[1:], np.int32)
    count = 0
    for start in range(0, depth, step):
        stop = min(start + step, depth)
        outer = slice(max(start - margin, 0), min(stop + margin, depth))
        part = watershed_3d(probs[:, outer], head, **kwargs)
        table = measure_volumes(part)
        core = (table["centroid_z"] >= start - outer.start) & (table["centroid_z"] < stop - outer.start)
        owned = np.zeros(int(part.max(initial=0)) + 1, np.int32)
        owned[table["label"][core].to_numpy()] = count + np.arange(1, int(core.sum()) + 1, dtype=np.int32)
        part = owned[part]
        target = labels[outer]
        free = (part > 0) & (target == 0)  # a nucleus seen by two blocks is kept once
        target[free] = part[free]
        count += int(core.sum())
        del part, free
    labels = keep_labels(labels, np.bincount(labels.ravel()) > 0)
    return remove_relatively_small(labels, fraction)


# --------------------------------------------------------------------------- measurements and scores


#: :func:`measure_volumes` columns → (unit, meaning).
VOLUME_COLUMNS = {
    "label": ("", "the nucleus's value in the label stack"),
    "volume_voxels": ("voxels", "volume, in voxels"),
    "volume_um3": ("µm³", "volume (voxel size known)"),
    "centroid_z": ("planes", "centre of mass, plane (0 = first)"),
    "centroid_y": ("px", "centre of mass, row (0 = top)"),
    "centroid_x": ("px", "centre of mass, column (0 = left)"),
    "z_min": ("planes", "first plane holding the nucleus"),
    "z_max": ("planes", "last plane holding the nucleus"),
    "z_extent": ("planes", "planes holding the nucleus: z_max − z_min + 1"),
    "mean_intensity": ("image units", "mean intensity of the stack over the nucleus (intensity given)"),
}


def measure_volumes(labels: np.ndarray, voxel_size: tuple[float, float, float] | None = None,
                    intensity: np.ndarray | None = None) -> pd.DataFrame:
    """One row per 3D nucleus: volume, centroid and z extent (:data:`VOLUME_COLUMNS`).

    Sums over the voxels with ``np.bincount``, plane by plane (memory of one plane).

    Parameters
    ----------
    labels : (Z, H, W) int array
        0 = background; gaps in the numbering are allowed.
    voxel_size : (float, float, float), optional
        (z, y, x) in µm: adds ``volume_um3``.
    intensity : (Z, H, W) array, optional
        The stack in its own units: adds ``mean_intensity``.

    Returns
    -------
    table : DataFrame
        Columns ``label, volume_voxels, [volume_um3], centroid_z, centroid_y, centroid_x, z_min,
        z_max, z_extent, [mean_intensity]``, in label order; centroids in planes and px of the stack.
    """
    labels = np.asarray(labels)
    if labels.ndim != 3:
        raise ValueError(f"expected (Z, H, W) labels, got shape {labels.shape}")
    if intensity is not None and np.shape(intensity) != labels.shape:
        raise ValueError(f"intensity {np.shape(intensity)} and labels {labels.shape} differ in shape")
    if voxel_size is not None:
        voxel_size = tuple(float(v) for v in voxel_size)
        if len(voxel_size) != 3 or not all(math.isfinite(v) and v > 0 for v in voxel_size):
            raise NucleiError(f"voxel size must be three positive numbers (z, y, x) in µm, got {voxel_size}")
    n = int(labels.max(initial=0)) + 1
    rows, cols = np.indices(labels.shape[1:])
    rows, cols = rows.ravel().astype(np.float64), cols.ravel().astype(np.float64)
    count = np.zeros(n, np.int64)
    sums = np.zeros((3, n))
    total = np.zeros(n)
    z_min = np.full(n, labels.shape[0], np.int64)
    z_max = np.full(n, -1, np.int64)
    for z in range(labels.shape[0]):
        plane = labels[z].ravel().astype(np.int64, copy=False)
        in_plane = np.bincount(plane, minlength=n)
        count += in_plane
        sums[0] += z * in_plane
        sums[1] += np.bincount(plane, rows, minlength=n)
        sums[2] += np.bincount(plane, cols, minlength=n)
        if intensity is not None:
            total += np.bincount(plane, np.asarray(intensity[z], np.float64).ravel(), minlength=n)
        present = in_plane > 0
        z_min[present] = np.minimum(z_min[present], z)
        z_max[present] = z
    present = count > 0
    present[0] = False
    volume = count[present]
    table = {"label": np.flatnonzero(present), "volume_voxels": volume}
    if voxel_size is not None:
        table["volume_um3"] = volume * float(np.prod(voxel_size))
    for axis, name in enumerate(("centroid_z", "centroid_y", "centroid_x")):
        table[name] = sums[axis, present] / volume
    table |= {"z_min": z_min[present], "z_max": z_max[present], "z_extent": z_max[present] - z_min[present] + 1}
    if intensity is not None:
        table["mean_intensity"] = total[present] / volume
    return pd.DataFrame(table)


def volume_metrics(true: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """:func:`pipeline.method.metrics.image_metrics` of two (Z, H, W) label volumes, on voxels: the
    3D DSB2018 score (mean over IoU 0.50-0.95 of TP / (TP + FP + FN), IoU of voxel sets), ``ap50``...

    The metrics count pairs of labels in one joint histogram, blind to geometry, and accept 2-D
    arrays only: the volumes are viewed as (Z·H, W) images, which gives the voxel counts exactly.
    """
    true, pred = np.asarray(true), np.asarray(pred)
    if true.shape != pred.shape or true.ndim != 3:
        raise ValueError(f"expected two (Z, H, W) label volumes of one shape, got {true.shape} and {pred.shape}")
    return image_metrics(true.reshape(-1, true.shape[-1]), pred.reshape(-1, pred.shape[-1]))
