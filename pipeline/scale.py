"""Nucleus size and resampling: the one home of "bring an image to the canonical nucleus size".

The network works at one canonical nucleus diameter (a model directory's ``diameter``); the
training targets are built from labels rescaled to it, and the Segmenter brings every image to it
and maps the result back to the original pixel grid. Diameters are equivalent diameters
(``sqrt(4 · area / π)``) in pixels.

Must not: run a network or read files.
"""

from __future__ import annotations

import cv2
import numpy as np

#: Factors outside this range are clipped (a guard against absurd estimates and memory blow-up).
MIN_FACTOR, MAX_FACTOR = 1 / 8, 4.0
#: Median of (:func:`blob_diameter` / true median nucleus diameter) on 40 training images of
#: stage1_train (grouped folds 1-4), each at ×0.5, ×1, ×2 and ×4: the estimate is divided by it.
BLOB_CALIBRATION = 1.17
#: A diameter estimate never exceeds the image's shorter side divided by this: an image holds at
#: least this many nuclei across. On stage1_train the true median diameter is at most 1/4.3 of the
#: shorter side; every estimate beyond 1/4 was a whole structure taken for one nucleus (an embryo
#: ringed by small nuclei, a tissue section), off by 2-5 octaves.
MIN_NUCLEI_ACROSS = 4


def nucleus_diameters(labels: np.ndarray) -> np.ndarray:
    """Equivalent diameter of every nucleus.

    Parameters
    ----------
    labels : (H, W) int array
        0 = background, 1..N nuclei (gaps in the numbering are allowed).

    Returns
    -------
    diameters : (n,) float64
        ``sqrt(4 · area / π)`` in pixels, one per label present, in label order.
    """
    areas = np.bincount(np.asarray(labels).ravel().astype(np.int64, copy=False))[1:]
    areas = areas[areas > 0]
    return np.sqrt(4.0 * areas / np.pi)


def median_diameter(labels: np.ndarray) -> float:
    """Median equivalent diameter of the nuclei of ``labels`` in pixels (nan without nuclei)."""
    d = nucleus_diameters(labels)
    return float(np.median(d)) if d.size else float("nan")


def scale_factor(diameter: float, canonical: float) -> float:
    """Factor that brings nuclei of ``diameter`` px to ``canonical`` px, clipped to
    [:data:`MIN_FACTOR`, :data:`MAX_FACTOR`]; 1 when ``diameter`` is not a positive number."""
    if not (np.isfinite(diameter) and diameter > 0):
        return 1.0
    return float(np.clip(canonical / diameter, MIN_FACTOR, MAX_FACTOR))


def scaled_shape(shape: tuple[int, int], factor: float) -> tuple[int, int]:
    """(H, W) of an image of ``shape`` resized by ``factor`` (rounded, at least 1 px)."""
    return tuple(max(1, int(round(s * factor))) for s in shape[:2])


def resize_image(image: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize an image (or a stack of maps) to ``shape``.

    Area averaging when shrinking (no aliasing), bilinear when enlarging.

    Parameters
    ----------
    image : (H, W) or (H, W, C) uint8 / float32 array
    shape : (int, int)
        Target (H', W').

    Returns
    -------
    resized : (H', W') or (H', W', C) array of the same dtype.
    """
    h, w = image.shape[:2]
    if (h, w) == tuple(shape):
        return image
    shrink = shape[0] * shape[1] < h * w
    interp = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
    if image.ndim == 3 and image.shape[2] > 4:  # OpenCV resizes at most 4 channels at once
        return np.stack([resize_image(image[..., c], shape) for c in range(image.shape[2])], axis=-1)
    out = cv2.resize(image, (int(shape[1]), int(shape[0])), interpolation=interp)
    return out.reshape(tuple(shape) + image.shape[2:])


def resize_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label image to ``shape`` (pixel centres aligned).

    Parameters
    ----------
    labels : (H, W) int array
    shape : (int, int)

    Returns
    -------
    resized : (H', W') array of the same dtype; every output pixel takes the label of the input
        pixel under its centre, so a round trip keeps labels aligned with the original pixels.
    """
    h, w = labels.shape
    if (h, w) == tuple(shape):
        return labels
    rows = np.minimum(((np.arange(shape[0]) + 0.5) * h / shape[0]).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(shape[1]) + 0.5) * w / shape[1]).astype(np.int64), w - 1)
    return labels[np.ix_(rows, cols)]


def resize_probabilities(probs: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Resize (C, H, W) float32 probability maps to (C, H', W') (area / bilinear)."""
    if probs.shape[1:] == tuple(shape):
        return probs
    return np.ascontiguousarray(resize_image(np.ascontiguousarray(probs.transpose(1, 2, 0)), shape).transpose(2, 0, 1))


def largest_diameter(shape: tuple[int, ...]) -> float:
    """Largest plausible median nucleus diameter (px) of an image of ``shape`` (H, W[, C]):
    the shorter side over :data:`MIN_NUCLEI_ACROSS`."""
    return min(shape[:2]) / MIN_NUCLEI_ACROSS


def blob_scale_space(image: np.ndarray, max_side: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Laplacian-of-Gaussian scale space of an image's bright blobs: one response per blob size.

    The scale-normalised response ``−σ² ∇²G_σ * image`` is computed for σ from 1.4 to 64 px
    (quarter octaves, on an image pyramid so that no filter is wider than σ = 4 px) on the grey
    image (inverted when the background is bright, so that dark nuclei on bright-field or H&E
    images count as blobs), shrunk to at most ``max_side`` px; its 99th percentile is the
    response at that σ, and ``2√2 σ`` (a disc of that diameter responds most at that σ), divided by
    :data:`BLOB_CALIBRATION`, the diameter. Scale-equivariant: the same image at twice the size
    gives twice the diameters.

    Parameters
    ----------
    image : (H, W) or (H, W, C) float array, normalised to [0, 1]
    max_side : int
        The image is shrunk to at most this many px on its longer side first.

    Returns
    -------
    diameters : (K,) float array
        In px of ``image``, increasing.
    response : (K,) float array
        Both empty for a constant image.
    """
    from scipy import ndimage as ndi

    empty = (np.zeros(0), np.zeros(0))
    grey = np.asarray(image, dtype=np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    if float(grey.max() - grey.min()) < 1e-6:
        return empty
    if np.median(grey) > 0.5 * (float(grey.max()) + float(grey.min())):
        grey = grey.max() - grey  # dark nuclei on a bright background
    factor = min(1.0, max_side / max(grey.shape))
    if factor < 1:
        grey = resize_image(grey, scaled_shape(grey.shape, factor))
    sigmas = 2.0 ** np.arange(0.5, 6.01, 0.25)
    sigmas = sigmas[3 * sigmas <= max(grey.shape)]
    if not sigmas.size:
        return empty
    response = []
    pyramid = {1: grey}
    for s in sigmas:  # an image pyramid keeps every filter small (σ ≤ 4 px at its level)
        step = int(2 ** max(0, np.floor(np.log2(s / 4))))
        if step not in pyramid:
            pyramid[step] = resize_image(grey, scaled_shape(grey.shape, 1 / step))
        level = pyramid[step]
        response.append(np.percentile(-((s / step) ** 2) * ndi.gaussian_laplace(level, s / step), 99))
    return 2 * np.sqrt(2) * sigmas / factor / BLOB_CALIBRATION, np.asarray(response)


def strongest_blob(diameters: np.ndarray, response: np.ndarray, max_diameter: float | None = None) -> float:
    """The diameter of a :func:`blob_scale_space` whose response is strongest.

    Parameters
    ----------
    diameters, response : (K,) float arrays
    max_diameter : float, optional
        Largest diameter to return. When the strongest response lies beyond it (a large bright
        structure such as an embryo or a tissue section, not a nucleus), the strongest local peak
        of the response at or below it is returned instead.

    Returns
    -------
    diameter : float
        nan for an empty scale space, or when no peak lies at or below ``max_diameter``.
    """
    if not response.size:
        return float("nan")
    best = int(np.argmax(response))
    if max_diameter is None or diameters[best] <= max_diameter:
        return float(diameters[best])
    # a response still rising at max_diameter belongs to the larger structure
    padded = np.pad(response, 1, constant_values=-np.inf)
    peaks = (response > padded[:-2]) & (response >= padded[2:]) & (diameters <= max_diameter)
    return float(diameters[np.flatnonzero(peaks)[np.argmax(response[peaks])]]) if peaks.any() else float("nan")


def blob_diameter(image: np.ndarray, max_side: int = 512, max_diameter: float | None = None) -> float:
    """Typical diameter (px of ``image``) of the bright blobs of an image: the
    :func:`strongest_blob` of its :func:`blob_scale_space`; nan for a constant image."""
    return strongest_blob(*blob_scale_space(image, max_side), max_diameter)
