"""The 2D model on a z-stack: 3D nuclei by stitching planes or from three orthogonal views
(:func:`segment_stack`).

- ``stitch`` (coarse z): every plane is segmented in 2D by the Segmenter, at one scale for the
  whole stack, and the labels are linked across planes by overlap
  (:func:`pipeline.method.volumes.stitch_planes`).
- ``ortho`` (fine z): the stack is resampled along z to isotropic voxels, the network runs on its
  XY, XZ and YZ slices, the three probability volumes are averaged and a 3D marker watershed
  (:func:`pipeline.method.volumes.watershed_3d`) makes the nuclei, whose labels are resampled back
  to the stack's planes (nearest). Cellpose's ``do_3D`` is the peer.

Both end each nucleus where its signal ends (:func:`pipeline.method.volumes.trim_to_signal`: the
planes of a nucleus whose signal is under half its brightest plane's are out-of-focus light, not
nucleus). With no anisotropy given (no voxel size in the file, no ``--anisotropy``), it is
estimated from the nuclei, taken as deep as they are wide
(:func:`pipeline.method.volumes.estimate_anisotropy`): on the XY planes' P(nucleus) (``ortho``,
before the stack is resampled), on the stitched nuclei (``stitch``, where it is only reported).

Both normalise the stack once (one intensity map for every plane: an empty plane stays dark rather
than being stretched to noise) and estimate one nucleus diameter, on the planes with the most
signal. A model's network for dense images (:meth:`pipeline.model.segmenter.Segmenter.network_for`) takes a
plane, with ``stitch``, as it takes a 2D image; with ``ortho``, the whole stack when its network
finds nuclei over more than the model's ``dense_fraction`` of the XY planes.

Memory (``ortho``): checked before the work grid is allocated (:func:`check_work_grid`); it holds the normalised stack (one float32 per voxel, grey) and the
sum of the three views' probabilities (one float32 per voxel and channel); the network sees one
slice at a time. Its y and x are the stack's, or the network's scale when that is coarser (large
nuclei), and it has ``Z · anisotropy`` planes at that pixel size: 512 × 512 × 100 planes at
anisotropy 4 is a grid of 512 × 512 × 400 (``benchmarks/bench_stacks.py`` measures time and peak
memory).

Must not: read or write files, parse options, or know the 2D post-processing's defaults.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from pipeline.config.params import BRIGHTFIELD, HISTOLOGY, Z_METHODS
from pipeline.errors import NucleiError
from pipeline.method.heads import mask_and_marker
from pipeline.method.image_types import image_type_of
from pipeline.method.intensity import Normalization, normalization_of
from pipeline.method.scale import resize_image, resize_probabilities, scaled_shape
from pipeline.method.volumes import (
    STITCH_IOU,
    check_anisotropy,
    estimate_anisotropy,
    resize_labels_3d,
    resize_z,
    stitch_planes,
    trim_to_signal,
    watershed_3d_blocks,
)
from pipeline.method.watershed import nucleus_fraction

#: Test-time augmentation of the ``ortho`` slices unless asked otherwise: the three views are averaged
#: already, and the four flips would make the costliest path four times as costly.
ORTHO_TTA = "none"
#: ``ortho``'s watershed runs in blocks along z of at most this many voxels (about 34 bytes each:
#: 1.6 GB; :func:`pipeline.method.volumes.watershed_3d_blocks`), with a margin of
#: :data:`BLOCK_MARGIN` nucleus diameters of context on each side.
BLOCK_VOXELS, BLOCK_MARGIN = 48_000_000, 2.0
#: The diameter is estimated on this many planes spread evenly through the stack (the centres of equal
#: slabs), and the median of the estimates taken. The planes with the most signal (the largest
#: standard deviation of their grey levels; 3 of them until issue 87) are, in a noisy stack, the
#: noisiest, often side by side, and a noisy plane can be taken for one of small nuclei (6 px for
#: nuclei of 25 on a real confocal stack); nuclei lie through the whole depth, and a median of 9
#: outvotes up to 4 such planes.
DIAMETER_PLANES = 9
#: ``ortho``'s work grid (floats per voxel: the grey planes, the probabilities' sum) may take at most
#: this share of the memory this machine has left (:func:`pipeline.model.runtime.available_memory`):
#: the network, the watershed's blocks and the slices need the rest.
WORK_GRID_SHARE = 0.5


@dataclass
class StackSegmentation:
    """The result of :func:`segment_stack`.

    Attributes
    ----------
    labels : (Z, H, W) int32
        0 = background, 1..N 3D nuclei, on the stack's own grid.
    diameter : float or None
        Nucleus diameter (px, in y and x) the stack was segmented for (None: a model without one).
    scale : float
        Factor the planes (and slices) were resized by for the network.
    method : str
        'stitch' or 'ortho'.
    anisotropy : float
        z step / pixel size: as given, or estimated (``anisotropy_estimated``; 1 when it could not be).
    estimated : bool
        ``diameter`` was estimated.
    image_type : str
        :func:`pipeline.method.image_types.image_type_of` the plane with the most signal.
    normalization : Normalization or None
        The stack's one intensity map (:func:`stack_normalization`): what the network saw, for
        showing the planes (:func:`normalised_plane`).
    """

    labels: np.ndarray
    diameter: float | None
    scale: float
    method: str
    anisotropy: float
    estimated: bool = False
    image_type: str = ""
    normalization: Normalization | None = None
    #: None: the anisotropy was given; True: estimated from the nuclei; False: not estimable, 1 assumed.
    anisotropy_estimated: bool | None = None


def segment_stack(segmenter, stack: np.ndarray, method: str = Z_METHODS[0], anisotropy: float | None = None,
                  diameter: float | None = None, iou_threshold: float = STITCH_IOU,
                  progress: Callable[..., Iterable] | None = None, tta: str = ORTHO_TTA) -> StackSegmentation:
    """Segment the nuclei of a z-stack in 3D.

    Parameters
    ----------
    segmenter : pipeline.model.segmenter.Segmenter
    stack : (Z, H, W) or (Z, H, W, 3) array
        Raw pixel values (any units), Z ≥ 2.
    method : {'ortho', 'stitch'}
        See the module docstring (the first of :data:`pipeline.config.params.Z_METHODS` by default).
    anisotropy : float, optional
        z step / pixel size (from the voxel size or ``--anisotropy``); ``ortho`` resamples z by it.
        None: estimated from the nuclei (1 when it cannot be; ``result.anisotropy_estimated``).
    diameter : float, optional
        Nucleus diameter in px (y, x); estimated once for the stack when not given.
    iou_threshold : float
        ``stitch``: :func:`pipeline.method.volumes.stitch_planes`'s threshold.
    progress : callable, optional
        Wraps the loops over planes and slices, called as :func:`pipeline.progress.progress`
        (``progress(iterable, desc=..., total=..., unit=...)``).
    tta : str
        ``ortho``: test-time augmentation of the slices (:data:`ORTHO_TTA`); ``stitch`` segments the
        planes as 2D images, with the segmenter's own.

    Returns
    -------
    result : StackSegmentation

    Raises
    ------
    NucleiError
        An anisotropy that is not a positive number, a stack of one plane, an unknown method;
        ``ortho``'s work grid larger than this machine's memory allows (:func:`check_work_grid`).
    """
    anisotropy = None if anisotropy is None else check_anisotropy(anisotropy)
    if method not in Z_METHODS:
        raise NucleiError(f"--z-method must be one of {', '.join(Z_METHODS)}, got {method!r}")
    stack = np.asarray(stack)
    if not (stack.ndim == 3 or (stack.ndim == 4 and stack.shape[3] == 3)):
        raise NucleiError(f"expected a (Z, H, W) or (Z, H, W, 3) stack, got shape {stack.shape}")
    if stack.shape[0] < 2:
        raise NucleiError("a single plane: a z-stack needs at least 2 planes (segment it as a 2D image)")
    progress = progress or _quiet
    norm = stack_normalization(segmenter, stack)
    diameter, estimated, scale, image_type = _scale_of(segmenter, stack, norm, diameter)
    segmenter = segmenter.network_for(image_type)  # the network of the stack's type (routing)
    if method == "stitch":
        labels = _stitch(segmenter, stack, norm, diameter, image_type, iou_threshold, progress)
    else:
        labels, found = _ortho(segmenter, stack, norm, diameter, scale, anisotropy, image_type, progress, tta)
    labels = trim_to_signal(labels, nucleus_signal(stack, image_type))
    how = None  # given
    if anisotropy is None:
        found = found if method == "ortho" else estimate_anisotropy(labels > 0)
        how, anisotropy = found is not None, float(found or 1.0)
    return StackSegmentation(labels, diameter, scale, method, anisotropy, estimated, image_type, norm, how)


def nucleus_signal(stack: np.ndarray, image_type: str) -> np.ndarray:
    """(Z, H, W) float32: the grey levels of a (Z, H, W[, 3]) stack in its own units, negated for the
    image types whose nuclei are darker than their background (bright-field, stained tissue), so
    that a nucleus is always brighter than the background."""
    grey = stack.mean(axis=-1, dtype=np.float32) if stack.ndim == 4 else stack.astype(np.float32)
    return np.negative(grey, out=grey) if image_type in (BRIGHTFIELD, HISTOLOGY) else grey


def check_work_grid(shape: tuple[int, ...], floats: int, available: int | None) -> None:
    """NucleiError unless ``ortho``'s work grid of ``shape`` voxels (z, y, x), ``floats`` float32
    each, fits in :data:`WORK_GRID_SHARE` of ``available`` bytes (None: unknown, not checked)."""
    from pipeline.config.model_folder import byte_size

    need = 4 * floats * math.prod(shape)
    if available is not None and need > WORK_GRID_SHARE * available:
        raise NucleiError(f"--z-method ortho: a work grid of {' x '.join(map(str, shape))} voxels "
                          f"({byte_size(need)}) is more than this machine can hold ({byte_size(available)} free); "
                          "check the anisotropy (z step / pixel size), or give --z-method stitch")


def stack_normalization(segmenter, stack: np.ndarray) -> Normalization:
    """The one intensity map (:class:`pipeline.method.intensity.Normalization`) of every plane of a
    (Z, H, W[, 3]) stack: the decisions :meth:`Segmenter.normalize` makes for an image, made on the
    planes side by side as one tall image."""
    tall = stack.reshape(-1, *stack.shape[2:])
    if tall.ndim == 2:
        tall = np.repeat(tall[..., None], 3, axis=2)
    return normalization_of(tall, **segmenter.normalization)


def normalised_plane(stack: np.ndarray, z: int, norm: Normalization) -> np.ndarray:
    """Plane ``z`` of a (Z, H, W[, 3]) stack as the network sees it (``norm``: :func:`stack_normalization`):
    float32 (H, W, 3) in [0, 1]."""
    plane = stack[z]
    if plane.ndim == 2:
        plane = np.repeat(plane[..., None], 3, axis=2)
    return norm(plane)


def _scale_of(segmenter, stack, norm, diameter):
    """(diameter, estimated, scale, image type) of a stack: the median of the estimates on
    :data:`DIAMETER_PLANES` planes spread through it (the given diameter when there is one); the
    image type of the plane with the most signal."""
    sample = stack[:, ::4, ::4].astype(np.float32)
    grey = sample.mean(axis=-1) if sample.ndim == 4 else sample
    order = np.argsort(grey.reshape(len(grey), -1).std(axis=1))[::-1]
    best = normalised_plane(stack, int(order[0]), norm)
    image_type = image_type_of(best)
    if diameter is not None:
        diameter, estimated, scale = segmenter.scale_for(best, diameter, image_type)
        return diameter, estimated, scale, image_type
    depth = len(stack)
    spread = np.unique(((np.arange(DIAMETER_PLANES) + 0.5) * depth / DIAMETER_PLANES).astype(int))
    found = [segmenter.scale_for(normalised_plane(stack, int(z), norm), None, image_type)[0] for z in spread]
    found = [d for d in found if d is not None]
    if not found:  # a model without a canonical diameter
        return None, False, 1.0, image_type
    diameter, _, scale = segmenter.scale_for(best, float(np.median(found)), image_type)
    return diameter, True, scale, image_type


def _stitch(segmenter, stack, norm, diameter, image_type, iou_threshold, progress):
    """(Z, H, W) int32: each plane by :meth:`Segmenter.segment` at the stack's diameter, then stitched."""
    labels = np.zeros(stack.shape[:3], np.int32)
    for z in progress(range(stack.shape[0]), desc="planes", total=stack.shape[0], unit="plane"):
        labels[z] = segmenter.segment(normalised_plane(stack, z, norm), diameter=diameter, normalized=True,
                                      image_type=image_type).labels
    return stitch_planes(labels, iou_threshold)


def _ortho(segmenter, stack, norm, diameter, scale, anisotropy, image_type, progress, tta):
    """(Z, H, W) int32 from the averaged XY, XZ and YZ probabilities on an isotropic work grid, and
    the anisotropy estimated from the XY planes' P(nucleus) (None: given, or not estimable, 1 used)."""
    from pipeline.method.heads import get_head
    from pipeline.model.runtime import available_memory

    depth, height, width = stack.shape[:3]
    factor = min(scale, 1.0)  # the work grid: the stack's pixels, or the network's when coarser
    net_scale = scale / factor  # the slices' further resize for the network (≥ 1)
    work_h, work_w = scaled_shape((height, width), factor)
    channels = _channels(norm, stack)
    floats = get_head(segmenter.head).channels + channels
    if anisotropy is not None:  # refused before any network runs
        planes = max(2, int(round(depth * anisotropy * factor)))
        check_work_grid((planes, work_h, work_w), floats, available_memory())

    # XY: the acquired planes (interpolated planes would hold nothing new), then resampled along z;
    # a dense stack is run again by the network the model routes dense images to (Segmenter.network_for)
    batch = max(1, int(getattr(segmenter.predictor, "batch_size", 1)))
    grey, xy = _xy(segmenter, stack, norm, (work_h, work_w), channels, net_scale, tta, batch, progress)
    fraction = float(np.mean([nucleus_fraction(mask_and_marker(xy[:, z], segmenter.head)[0]) for z in range(depth)]))
    dense = segmenter.network_for(image_type, fraction)
    if dense is not segmenter:  # the same planes, not normalised and resized again
        segmenter = dense
        grey, xy = _xy(segmenter, stack, norm, (work_h, work_w), channels, net_scale, tta, batch, progress, grey)
    found = None
    if anisotropy is None:
        found = estimate_anisotropy(np.stack([mask_and_marker(xy[:, z], segmenter.head)[0] for z in range(depth)]))
        anisotropy = found or 1.0
        planes = max(2, int(round(depth * anisotropy * factor)))
        check_work_grid((planes, work_h, work_w), floats, available_memory())
    total = np.empty((xy.shape[0], planes, work_h, work_w), np.float32)
    for c in range(xy.shape[0]):
        resize_z(xy[c], planes, out=total[c])
    del xy
    volume = resize_z(grey, planes)
    del grey

    # XZ and YZ: every row and every column of the work grid, a batch of slices at a time
    for axis, count, name in ((2, work_h, "XZ slices"), (3, work_w, "YZ slices")):
        for start in progress(range(0, count, batch), desc=name, total=-(-count // batch), unit="batch"):
            index = range(start, min(start + batch, count))
            slices = [_rgb(np.take(volume, i, axis=axis - 1)) for i in index]
            for i, probs in zip(index, _predict(segmenter, slices, net_scale, tta), strict=True):
                if axis == 2:
                    total[:, :, i, :] += probs
                else:
                    total[:, :, :, i] += probs
    del volume
    total /= 3.0

    margin = int(np.ceil(BLOCK_MARGIN * (diameter or segmenter.diameter or 32.0) * factor))
    block = max(BLOCK_VOXELS // (work_h * work_w), 3 * margin)
    labels = watershed_3d_blocks(total, segmenter.head, block, margin, anisotropy=1.0, scale=net_scale,
                                 image_type=image_type, **segmenter.thresholds)
    del total
    return resize_labels_3d(labels, (depth, height, width)), found


def _xy(segmenter, stack, norm, shape, channels, net_scale, tta, batch, progress, grey=None):
    """The planes of a stack on the work grid ``shape`` (float32 (Z, h, w, channels)) and their
    probabilities (float32 (C, Z, h, w)), ``batch`` planes at a time. ``grey``: those planes, made
    by an earlier call (another network's pass), read instead of normalising the stack again: with
    one channel, every channel of a plane is that one (:func:`_channels`)."""
    depth = stack.shape[0]
    made = grey is not None
    grey = grey if made else np.empty((depth, *shape, channels), np.float32)
    xy = None
    for start in progress(range(0, depth, batch), desc="XY slices", total=-(-depth // batch), unit="batch"):
        index = range(start, min(start + batch, depth))
        if made:
            planes_xy = [np.repeat(grey[z], 3 // channels, axis=-1) for z in index]
        else:
            planes_xy = [resize_image(normalised_plane(stack, z, norm), shape) for z in index]
        for z, plane, probs in zip(index, planes_xy, _predict(segmenter, planes_xy, net_scale, tta), strict=True):
            if xy is None:
                xy = np.empty((probs.shape[0], depth, *shape), np.float32)
            grey[z] = plane[..., :channels]
            xy[:, z] = probs
    return grey, xy


def _channels(norm: Normalization, stack: np.ndarray) -> int:
    """Channels the work grid keeps: 1 for a grey stack (every channel the same after ``norm``: one
    channel, a grey made by the normalisation, or three equal ones), else 3."""
    if stack.ndim == 3 or norm.grey is not None:
        return 1
    return 1 if all(np.array_equal(stack[..., 0], stack[..., c]) for c in (1, 2)) else 3


def _rgb(image: np.ndarray) -> np.ndarray:
    """(h, w, 1 or 3) float32 → (h, w, 3) network input."""
    return np.repeat(image, 3, axis=2) if image.shape[2] == 1 else np.ascontiguousarray(image)


def _predict(segmenter, images: Sequence[np.ndarray], scale: float, tta: str | None) -> list[np.ndarray]:
    """(C, h, w) float32 probabilities of normalised (h, w, 3) images resized by ``scale`` for the
    network (:meth:`Segmenter.predict_scaled`), mapped back to each image's grid; images of one
    shape share forward passes when the predictor batches (``predict_many``)."""
    predictor = segmenter.predictor
    if len(images) > 1 and hasattr(predictor, "predict_many"):
        resized = [resize_image(image, scaled_shape(image.shape[:2], scale)) for image in images]
        probs = predictor.predict_many(resized, tta)
    else:
        probs = [segmenter.predict_scaled(image, scale, tta) for image in images]
    return [resize_probabilities(p, image.shape[:2]) for p, image in zip(probs, images, strict=True)]


def _quiet(iterable: Iterable, **_) -> Iterable:
    return iterable
