"""Blocks of a large image: their geometry, and the one rule that stitches them.

An image too large for the network at once is cut into overlapping blocks (:func:`iter_blocks`,
sized by :func:`block_geometry`); each block keeps the nuclei it owns, those whose centroid lies in
its core (:func:`owned_nuclei`), and pastes them, in row-major block order, by one rule
(:func:`paste_nuclei`): where no earlier block put a nucleus, a nucleus that would lose more than
half of its pixels to earlier blocks being the same nucleus seen twice, and dropped.
:func:`segment_in_blocks` stitches an image held in memory
(:meth:`pipeline.model.segmenter.Segmenter.segment`); :class:`pipeline.batch.slide.Stitcher`
pastes the blocks of an image read piece by piece into a band of rows with the same rule.

Must not: run a network or load a model (callers hand a function giving a block's labels).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator

import numpy as np

from pipeline.method.scale import MAX_FACTOR


def block_geometry(block_size: int, block_margin: int, scale: float) -> tuple[int, int]:
    """Block side and margin (px of the image) for an image resized by ``scale``: at most
    ``block_size`` px at the network's scale (memory stays bounded when an image is enlarged),
    with ``block_margin`` px of context at the network's scale (at most a quarter block)."""
    block = max(64, int(block_size / max(scale, 1.0)))
    margin = min(int(math.ceil(block_margin / min(scale, MAX_FACTOR))), block // 4)
    return block, margin


def iter_blocks(
    shape: tuple[int, int], block_size: int, margin: int
) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """Cover an image with overlapping blocks.

    Parameters
    ----------
    shape : (int, int)
        Image height and width, in pixels.
    block_size : int
        Largest block side, margins included, in pixels.
    margin : int
        Context added on each side of a block's core, in pixels (``block_size > 2 * margin``).

    Yields
    ------
    outer : (slice, slice)
        The block to segment, in image coordinates.
    core : (slice, slice)
        Its core, relative to ``outer``. The cores tile the image exactly once.
    """
    step = block_size - 2 * margin
    if step <= 0:
        raise ValueError(f"block_size {block_size} must exceed twice the margin {margin}")
    yield from iter_chunks(shape, (step, step), margin)


def iter_chunks(
    shape: tuple[int, int], step: tuple[int, int], halo: int
) -> Iterator[tuple[tuple[slice, slice], tuple[slice, slice]]]:
    """Cover an image with cores of ``step`` (rows, columns) px in row-major order, each with ``halo``
    px of context on every side (clipped to the image); :func:`iter_blocks`' blocks are square ones.

    Yields
    ------
    outer, core : (slice, slice)
        As :func:`iter_blocks`: the chunk with its halo, in image coordinates, and its core relative to it.
    """
    for r0 in range(0, shape[0], step[0]):
        for c0 in range(0, shape[1], step[1]):
            r1, c1 = min(r0 + step[0], shape[0]), min(c0 + step[1], shape[1])
            o_r0, o_c0 = max(r0 - halo, 0), max(c0 - halo, 0)
            o_r1, o_c1 = min(r1 + halo, shape[0]), min(c1 + halo, shape[1])
            outer = (slice(o_r0, o_r1), slice(o_c0, o_c1))
            core = (slice(r0 - o_r0, r1 - o_r0), slice(c0 - o_c0, c1 - o_c0))
            yield outer, core


def core_of(outer: tuple[slice, slice], core: tuple[slice, slice]) -> tuple[slice, slice]:
    """A block's core in image pixels (``core`` is relative to ``outer``)."""
    return (slice(outer[0].start + core[0].start, outer[0].start + core[0].stop),
            slice(outer[1].start + core[1].start, outer[1].start + core[1].stop))


def owned_nuclei(labels: np.ndarray, core: tuple[slice, slice], return_kept: bool = False):
    """The nuclei of a block that the block owns: those whose centroid lies in its ``core``.

    Parameters
    ----------
    labels : (h, w) int array
        A block's labels (0 = background).
    core : (slice, slice)
        The block's core, relative to the block (:func:`iter_blocks`); the cores tile the image,
        so every nucleus seen whole by the blocks around it is owned by exactly one of them.

    Returns
    -------
    owned : (h, w) int32
        The owned nuclei, renumbered 1..k in the order of their labels; the others set to 0.
    kept : (k,) int
        With ``return_kept``: the label in ``labels`` of owned nucleus 1..k.
    """
    from skimage.measure import regionprops_table

    props = regionprops_table(labels, properties=("label", "centroid"))
    rows, cols = props["centroid-0"], props["centroid-1"]
    keep = props["label"][
        (rows >= core[0].start) & (rows < core[0].stop) & (cols >= core[1].start) & (cols < core[1].stop)
    ]
    lut = np.zeros(int(labels.max(initial=0)) + 1, np.int32)
    lut[keep] = np.arange(1, keep.size + 1, dtype=np.int32)
    return (lut[labels], keep) if return_kept else lut[labels]


def paste_nuclei(target: np.ndarray, owned: np.ndarray, count: int, min_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Paste one block's owned nuclei into the label image under it: the stitching rule of every block.

    A nucleus goes where no earlier block put one. One that would lose more than half of its pixels
    to earlier blocks is the same nucleus seen twice (two blocks' outlines of one nucleus, each
    centroid in its own block's core) and is dropped whole; one left smaller than ``min_size`` too.
    A pasted nucleus is final: later blocks only fill free pixels.

    Parameters
    ----------
    target : (h, w) int array
        The label image under the block (0 = free), written in place (a view of it).
    owned : (h, w) int array
        The block's owned nuclei (:func:`owned_nuclei`), numbered 1..k.
    count : int
        Nuclei pasted so far (the last label of ``target``'s image).
    min_size : int
        px²; nuclei left smaller are dropped (at least 1 px is kept).

    Returns
    -------
    kept : (h, w) int32
        The kept nuclei as pasted, numbered 1..k' in the order of ``owned``: label ``count + j`` in
        the image.
    keep : (k',) int64
        The value in ``owned`` of kept nucleus 1..k'.
    """
    owned = owned.astype(np.int64, copy=False)
    taken_px = target > 0
    total = np.bincount(owned.ravel(), minlength=1)
    taken = np.bincount(owned[taken_px], minlength=total.size)
    keep = (total > 0) & (2 * taken <= total) & (total - taken >= max(min_size, 1))
    keep[0] = False
    lut = np.zeros(total.size, np.int32)
    lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
    kept = lut[owned]
    kept[taken_px] = 0
    target[kept > 0] = kept[kept > 0] + count
    return kept, np.flatnonzero(keep)


def segment_in_blocks(
    shape: tuple[int, int], labels_of: Callable[[tuple[slice, slice]], tuple[np.ndarray, float, np.ndarray]],
    block: int, margin: int, min_size: int,
) -> tuple[np.ndarray, float, np.ndarray]:
    """Labels of an image segmented block by block (:func:`iter_blocks`), in memory.

    Parameters
    ----------
    shape : (int, int)
        Image height and width, px.
    labels_of : callable
        ``labels_of(outer)`` → the (h, w) int labels of the block ``outer``, its confidence and
        each of its labels' own figures (an (n + 1, ...) float array indexed by label value: a
        confidence, or a row of evidence).
    block, margin : int
        px (:func:`block_geometry`).
    min_size : int
        px²: nuclei left smaller by stitching are dropped (:func:`paste_nuclei`).

    Returns
    -------
    labels : (H, W) int32
        Each block's owned nuclei (:func:`owned_nuclei`) pasted in block order by
        :func:`paste_nuclei`, numbered 1..N in that order.
    confidence : float
        The blocks' confidences weighted by their area.
    nuclei : (N + 1, ...) float32
        Each label's figures, from the block that owns it (NaN for 0).
    """
    labels = np.zeros(shape, np.int32)
    n_labels, conf_sum, conf_weight = 0, 0.0, 0
    nuclei = []
    for outer, core in iter_blocks(shape, block, margin):
        part, conf, per_label = labels_of(outer)
        per_label = np.asarray(per_label, np.float32)
        if not nuclei:  # label 0: a NaN row of the figures' shape
            nuclei.append(np.full((1, *per_label.shape[1:]), np.nan, np.float32))
        size = (outer[0].stop - outer[0].start) * (outer[1].stop - outer[1].start)
        conf_sum, conf_weight = conf_sum + conf * size, conf_weight + size
        part, owned = owned_nuclei(part, core, return_kept=True)
        _, keep = paste_nuclei(labels[outer], part, n_labels, min_size)
        nuclei.append(per_label[owned[keep - 1]])
        n_labels += keep.size
    return labels, conf_sum / max(conf_weight, 1), np.concatenate(nuclei)
