"""Shifts of acquisition: an image and its labels as another microscope, stain or camera would have
recorded them (the conditions of ``benchmarks/bench_robustness.py``: scale, contrast, noise, stain,
colour, illumination, field of view), and the count of whole nuclei in a crop. Built on the training
augmentations (:mod:`pipeline.training.augment`), fixed instead of drawn; for the robustness
benchmark, the experiments on colour and the tests.

Must not: read or write files, or run a model.
"""

from __future__ import annotations

import numpy as np

from pipeline.method.image_types import BRIGHTFIELD, classify_image
from pipeline.method.scale import median_diameter, resize_image, resize_labels, scaled_shape

SCALES = (0.5, 1.0, 2.0, 3.0, 4.0)
CONDITIONS = tuple(f"x{s:g}" for s in SCALES) + (
    "dim12+sat", "noise", "blur", "stain", "ihc", "pale", "blue", "tint", "composite", "uneven", "field8",
    "debris", "chromo")
#: The ``ihc`` condition: the share of nuclei that are DAB-positive, the share of their haematoxylin
#: optical density that stays, and their DAB optical density per unit of their haematoxylin's.
DAB = {"positive": 0.5, "haematoxylin": 0.3, "dab": 1.0}
#: The ``pale`` condition: the zoom that enlarges a stained crop's nuclei (drawn per image), and the
#: share of each nucleus's mean optical density's excess over its surroundings that stays.
PALE = {"zoom": (1.5, 2.0), "keep": 0.3}
#: Channel gains of the ``tint`` condition (red, green, blue).
TINT = np.array([1.0, 0.93, 0.78], np.float32)
#: The ``uneven`` condition: illumination in the corners (centre 1) and the background ramp's top.
VIGNETTE, RAMP = 0.4, 0.3
#: Tiles a side of the ``field8`` condition's mosaic.
FIELD = 8
#: Grey levels (8-bit) are stored ×DEPTH in 16 bits by ``debris`` and ``chromo``, so that objects
#: brighter than the image's own maximum keep their level.
DEPTH = 16


def centre_crop(image: np.ndarray, labels: np.ndarray, side: int) -> tuple[np.ndarray, np.ndarray]:
    """The centred window of at most ``side`` px a side of an image and its labels."""
    h, w = labels.shape
    r0, c0 = max(0, (h - side) // 2), max(0, (w - side) // 2)
    window = (slice(r0, r0 + side), slice(c0, c0 + side))
    return image[window], labels[window]


#: A nucleus touching the crop's edge with less than this fraction of the truth's median area is a
#: fragment the crop made; the diagnostic count (``count_error_whole``) leaves such fragments out of
#: the truth and the prediction alike.
FRAGMENT = 0.25


def whole_count(labels: np.ndarray, min_area: float, areas: np.ndarray | None = None) -> int:
    """Nuclei of an int32 (H, W) label image, less those touching its edge with under ``min_area`` px;
    ``areas``: the label image's ``np.bincount``, when the caller has it."""
    areas = np.bincount(labels.ravel()) if areas is None else areas
    edge = np.zeros(areas.size, bool)
    edge[np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]])] = True
    present = areas > 0
    present[0] = False
    return int((present & ~(edge & (areas < min_area))).sum())


def shifted(condition: str, image: np.ndarray, labels: np.ndarray, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(image, labels)`` under ``condition``; image uint8/uint16/float (H, W, 3), labels int32."""
    rng = np.random.default_rng(seed)
    if condition.startswith("x"):
        shape = scaled_shape(labels.shape, float(condition[1:]))
        return resize_image(image, shape), resize_labels(labels, shape)
    grey = image.astype(np.float32)
    if condition == "dim12+sat":
        out = (100 + grey / 255.0 * 512).astype(np.uint16)
        if labels.max():
            areas = np.bincount(labels.ravel())[1:]
            out[labels == int(np.argmax(areas)) + 1] = 65535
        return out, labels
    if condition == "noise":
        lo, hi = np.percentile(grey, [1, 99])
        noisy = grey + rng.normal(0, 0.1 * max(hi - lo, 1.0), grey.shape)
        return np.clip(noisy, 0, 255).astype(np.uint8), labels
    if condition == "blur":
        import cv2

        return cv2.GaussianBlur(image, (0, 0), 2.0), labels
    if condition == "stain":
        from skimage.color import hed2rgb, rgb2hed

        hed = rgb2hed(np.clip(grey / 255.0, 1e-6, 1.0)) * rng.uniform(0.75, 1.25, 3)
        return np.clip(hed2rgb(hed) * 255, 0, 255).astype(np.uint8), labels
    if condition == "ihc":
        if not np.ptp(image, axis=-1).any():  # not stained
            return image, labels
        from pipeline.training.augment import dab_stain

        positive = np.concatenate([[False], rng.random(int(labels.max())) < DAB["positive"]])[labels]
        out = dab_stain(grey / 255.0, positive, DAB["haematoxylin"], DAB["dab"])
        return np.clip(out * 255, 0, 255).astype(np.uint8), labels
    if condition == "pale":
        if not np.ptp(image, axis=-1).any():  # not stained
            return image, labels
        return large_pale_nuclei(image, labels, rng)
    if condition == "blue":
        if np.ptp(image, axis=-1).any():  # stained: already in colour
            return image, labels
        blue = np.zeros_like(image)
        blue[..., 2] = image[..., 0]
        return blue, labels
    if condition == "tint":  # a colour camera under a halogen lamp, white balance off: yellowish
        return np.clip(grey * TINT, 0, 255).astype(np.uint8), labels
    if condition == "composite":
        if np.ptp(image, axis=-1).any() or classify_image(image) == BRIGHTFIELD:  # stained, bright-field: no
            return image, labels  # fluorescent nuclear stain to combine
        import cv2
        from skimage.segmentation import expand_labels

        radius = max(2.0, median_diameter(labels) / 2) if labels.max() else 5.0
        cells = expand_labels(labels, distance=radius)  # cell bodies around the nuclei
        level = np.concatenate([[0.0], rng.uniform(0.4, 1.0, int(cells.max()))])[cells]
        body = cv2.GaussianBlur(level.astype(np.float32), (0, 0), radius / 4)
        lo, hi = np.percentile(grey[..., 0], [1, 99.8])
        out = np.zeros_like(image)
        out[..., 2] = image[..., 0]  # the nuclear stain in blue
        out[..., 1] = np.clip(lo + body * (hi - lo), 0, 255).astype(image.dtype)  # a cell marker in green
        return out, labels
    if condition == "uneven":  # the training augmentation's vignette and ramp, fixed: centred, left to right
        from pipeline.training.augment import linear_ramp, vignette

        centre = ((labels.shape[0] - 1) / 2, (labels.shape[1] - 1) / 2)
        lo, hi = np.percentile(grey, [1, 99])
        field = (grey * vignette(labels.shape, centre, float(np.hypot(*centre)), VIGNETTE)
                 + np.float32(RAMP * (hi - lo)) * linear_ramp(labels.shape, 0.0))
        return np.clip(field, 0, 255).astype(np.uint8), labels
    if condition == "field8":
        return mosaic(image, labels, FIELD)
    if condition in ("debris", "chromo"):
        if not labels.max() or np.ptp(image, axis=-1).any() or classify_image(image) == BRIGHTFIELD:
            return image, labels  # stained or bright-field: not a fluorescence field
        from pipeline.training.augment import bright_debris, chromocentres, debris_draw

        level = grey[..., 0]
        if condition == "debris":  # blobs (even seeds) or clusters of fragments (odd seeds)
            share, brightness = debris_draw(rng)
            level = bright_debris(level, labels, rng, share, brightness, fragments=bool(seed % 2))
        else:
            level = chromocentres(level, labels, rng)
        out = np.clip(np.rint(level * DEPTH), 0, 65535).astype(np.uint16)
        return np.repeat(out[..., None], image.shape[-1], axis=-1), labels
    raise ValueError(condition)


def large_pale_nuclei(image: np.ndarray, labels: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Large pale nuclei, as in breast carcinoma at 40×, made from a stained uint8 (H, W, 3) crop and
    its int32 labels: the crop zoomed ×1.5–2 (:data:`PALE`, centre kept, same size), then
    :func:`pipeline.training.augment.pale_nuclei` with ``PALE['keep']``: the inside of each
    nucleus brought most of the way to the optical density around it, its rim and chromatin
    texture kept."""
    from pipeline.training.augment import pale_nuclei

    h, w = labels.shape
    shape = scaled_shape(labels.shape, float(rng.uniform(*PALE["zoom"])))
    r0, c0 = (shape[0] - h) // 2, (shape[1] - w) // 2
    window = np.s_[r0:r0 + h, c0:c0 + w]
    image, labels = resize_image(image, shape)[window], resize_labels(labels, shape)[window]
    return pale_nuclei(image, labels, PALE["keep"]), labels


def mosaic(image: np.ndarray, labels: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    """An ``n`` × ``n`` mosaic of an image with its labels (each tile's nuclei labelled apart), the
    tiles a nucleus diameter apart on the image's background level (the median of its pixels
    outside the nuclei), so that no nucleus cut by the image's edge meets another across a seam."""
    gap = int(round(median_diameter(labels))) if labels.max() else 8
    background = np.median(image[labels == 0], axis=0) if (labels == 0).any() else np.median(image, axis=(0, 1))
    h, w = labels.shape
    step_y, step_x = h + gap, w + gap
    out_image = np.empty((n * step_y - gap, n * step_x - gap, *image.shape[2:]), image.dtype)
    out_image[...] = background.astype(image.dtype)
    out_labels = np.zeros(out_image.shape[:2], np.int32)
    count = int(labels.max())
    for k in range(n * n):
        window = np.s_[(k // n) * step_y:(k // n) * step_y + h, (k % n) * step_x:(k % n) * step_x + w]
        out_image[window] = image
        out_labels[window] = np.where(labels > 0, labels + k * count, 0)
    return out_image, out_labels
