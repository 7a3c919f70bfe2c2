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
#: 1/16 brings nuclei of 320 px (100x oil on an unbinned camera) to the canonical 20; at 1/8,
#: 290-px nuclei reached the network at 36 px and were lost (docs/decisions.md, "A few very large nuclei").
MIN_FACTOR, MAX_FACTOR = 1 / 16, 4.0
#: Median of (:func:`blob_diameter` / true median nucleus diameter) on 40 training images of
#: stage1_train (grouped folds 1-4), each at ×0.5, ×1, ×2 and ×4: the estimate is divided by it.
BLOB_CALIBRATION = 1.17
#: A diameter estimate never exceeds the image's shorter side divided by this: an image holds at
#: least this many nuclei across. On stage1_train the true median diameter is at most 1/4.3 of the
#: shorter side; every estimate beyond 1/4 was a whole structure taken for one nucleus (an embryo
#: ringed by small nuclei, a tissue section), off by 2-5 octaves.
MIN_NUCLEI_ACROSS = 4
#: When the strongest scale-space response lies beyond the cap, a peak under it stands for the nuclei
#: only when its response is at least this fraction of the strongest. On the robustness crops
#: (docs/decisions.md, "A few very large nuclei"), every such peak that was nuclei responded at
#: 0.65-0.99 of the strongest; the rest, at 0.03-0.11, were the finest scale's noise or the seam
#: where the fine scales, computed on crops, meet the shrunk image's: taken for nuclei, they had
#: 2-9 nuclei of 110-360 px cut into hundreds of 4-8-px pieces.
FALLBACK_RESPONSE = 0.3
#: σ (px) of :func:`blob_scale_space`: quarter octaves from 1.4 to 64.
SCALE_SPACE_SIGMAS = 2.0 ** np.arange(0.5, 6.01, 0.25)


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


def diameter_problem(diameter: float, shape: tuple[int, ...]) -> str:
    """'' or why a given nucleus ``diameter`` (px) cannot hold for an image of ``shape`` (H, W[, C]):
    it exceeds :func:`largest_diameter` (fewer than :data:`MIN_NUCLEI_ACROSS` nuclei fit across)."""
    cap = largest_diameter(shape)
    if diameter <= cap:
        return ""
    return (f"given diameter {diameter:g} px is too large for this {shape[1]}x{shape[0]} px image (at most "
            f"{cap:g} px, a quarter of its shorter side): nuclei missed or merged, check --diameter")


def blob_scale_space(image: np.ndarray, max_side: int = 512, dark: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Laplacian-of-Gaussian scale space of an image's bright blobs: one response per blob size.

    The scale-normalised response ``−σ² ∇²G_σ * image`` is computed for σ from 1.4 to 64 px
    (quarter octaves, on an image pyramid so that no filter is wider than σ = 4 px) on the grey
    image (inverted for dark nuclei, on bright-field or H&E images, so that they count as blobs),
    shrunk to at most ``max_side`` px; its 99th percentile is the
    response at that σ, and ``2√2 σ`` (a disc of that diameter responds most at that σ), divided by
    :data:`BLOB_CALIBRATION`, the diameter. Scale-equivariant: the same image at twice the size
    gives twice the diameters.

    A shrunk image resolves no blob under ``3.4 / factor`` px (σ = 1.4 px after shrinking by
    ``factor``): in an 8000-px mosaic of 18-px nuclei every nucleus is under one pixel of the
    512-px image, and its strongest response was a cluster of nuclei or the resolution limit. The
    finer scales (σ from 1.4 px up to the shrunk image's finest) are therefore computed at full
    resolution on 64 crops of 64 px (fewer, larger ones for the largest images) spread over the
    image (:func:`spread_crops`; the percentile pooled over them: as many pixels as the shrunk
    image), so that the scale space reaches 3.4 px at any image size, as it does for images of
    at most ``max_side`` px.

    Parameters
    ----------
    image : (H, W) or (H, W, C) float array, normalised to [0, 1]
    max_side : int
        The image is shrunk to at most this many px on its longer side first.
    dark : bool, optional
        Whether the nuclei are darker than their surroundings (stained and bright-field images).
        None decides from the image: dark when its median grey level lies above the middle of its
        range, which one saturated white patch in an H&E image can flip (give the image type's
        answer when it is known).

    Returns
    -------
    diameters : (K,) float array
        In px of ``image``, increasing.
    response : (K,) float array
        Both empty for a constant image.
    """
    empty = (np.zeros(0), np.zeros(0))
    grey = np.asarray(image, dtype=np.float32)
    grey = grey.mean(axis=-1) if grey.ndim == 3 else grey
    if float(grey.max() - grey.min()) < 1e-6:
        return empty
    if dark is None:
        dark = bool(np.median(grey) > 0.5 * (float(grey.max()) + float(grey.min())))
    if dark:
        grey = grey.max() - grey
    factor = min(1.0, max_side / max(grey.shape))
    shrunk = resize_image(grey, scaled_shape(grey.shape, factor)) if factor < 1 else grey
    sigmas = SCALE_SPACE_SIGMAS[3 * SCALE_SPACE_SIGMAS <= max(shrunk.shape)]
    if not sigmas.size:
        return empty
    diameters = blob_diameters(sigmas, factor)
    response = log_response([shrunk], sigmas)
    if factor < 1:  # the scales the shrunk image cannot resolve, at full resolution
        fine = SCALE_SPACE_SIGMAS[SCALE_SPACE_SIGMAS < sigmas[0] / factor]
        side = max(max_side // 8, int(np.ceil(3 * fine[-1])))
        crops = spread_crops(grey, side, max(16, (max_side // side) ** 2))  # ~ the shrunk image's pixels
        diameters = np.concatenate([blob_diameters(fine), diameters])
        response = np.concatenate([log_response(crops, fine), response])
    return diameters, response


def blob_diameters(sigmas: np.ndarray, factor: float = 1.0) -> np.ndarray:
    """Nucleus diameters (px of the original image) of LoG scales ``sigmas`` (px of the image
    resized by ``factor``): ``2√2 σ``, the disc whose response peaks there, divided by
    :data:`BLOB_CALIBRATION`."""
    return 2 * np.sqrt(2) * sigmas / factor / BLOB_CALIBRATION


def log_response(images: list[np.ndarray], sigmas: np.ndarray) -> np.ndarray:
    """99th percentile of the scale-normalised LoG response ``−σ² ∇²G_σ * image``, pooled over
    ``images`` ((H, W) float32, each filtered on its own), for each σ of ``sigmas`` (px,
    increasing); each image is filtered on a pyramid of itself so that no filter is wider than
    σ = 4 px at its level. Returns a (K,) float array."""
    pyramids: list[dict[int, np.ndarray]] = [{1: im} for im in images]
    response = []
    for s in sigmas:
        step = int(2 ** max(0, np.floor(np.log2(s / 4))))
        levels = []
        for pyramid in pyramids:
            if step not in pyramid:
                pyramid[step] = resize_image(pyramid[1], scaled_shape(pyramid[1].shape, 1 / step))
            levels.append(-((s / step) ** 2) * gaussian_laplace(pyramid[step], s / step))
        response.append(np.percentile(np.concatenate([level.ravel() for level in levels]), 99))
    return np.asarray(response)


def gaussian_laplace(image: np.ndarray, sigma: float, truncate: float = 4.0) -> np.ndarray:
    """Laplacian of Gaussian ``∇²G_σ * image`` of an (H, W) float32 image (σ in px), mirrored at the
    borders: ``scipy.ndimage.gaussian_laplace`` (the same kernels, truncated at ``truncate`` σ,
    and border mode 'reflect'), as two separable OpenCV filters, about 5× faster on 2 cores."""
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    g0 = np.exp(-0.5 * (x / sigma) ** 2)
    g0 /= g0.sum()
    g2 = g0 * (x**2 - sigma**2) / sigma**4
    g0, g2 = g0.astype(np.float32), g2.astype(np.float32)
    image = np.ascontiguousarray(image, dtype=np.float32)
    return (cv2.sepFilter2D(image, cv2.CV_32F, g2, g0, borderType=cv2.BORDER_REFLECT)
            + cv2.sepFilter2D(image, cv2.CV_32F, g0, g2, borderType=cv2.BORDER_REFLECT))


def spread_crops(image: np.ndarray, side: int, count: int) -> list[np.ndarray]:
    """``count`` crops of at most ``side`` × ``side`` px of an (H, W) image, spread over it by a
    low-discrepancy (R2) sequence of centres (views, not copies): a sample of the whole image at
    its own resolution that no periodic pattern (a mosaic of tiles, a well plate) aligns with."""
    h, w = image.shape[:2]
    sh, sw = min(side, h), min(side, w)
    k = np.arange(count)
    fy, fx = (0.5 + k * 0.7548776662466927) % 1, (0.5 + k * 0.5698402909980532) % 1  # R2: 1/φ₂, 1/φ₂²
    y0 = np.clip(np.round(fy * h - sh / 2), 0, h - sh).astype(int)
    x0 = np.clip(np.round(fx * w - sw / 2), 0, w - sw).astype(int)
    return [image[y : y + sh, x : x + sw] for y, x in zip(y0, x0, strict=True)]


def strongest_blob(diameters: np.ndarray, response: np.ndarray, max_diameter: float | None = None) -> float:
    """The diameter of a :func:`blob_scale_space` whose response is strongest.

    Parameters
    ----------
    diameters, response : (K,) float arrays
    max_diameter : float, optional
        Largest diameter to return. When the strongest response lies beyond it (a large bright
        structure such as an embryo or a tissue section, not a nucleus, or a few very large
        nuclei), the strongest local peak of the response at or below it is returned instead,
        if its response is at least :data:`FALLBACK_RESPONSE` of the strongest.

    Returns
    -------
    diameter : float
        nan for an empty scale space, or when no such peak lies at or below ``max_diameter``.
    """
    if not response.size:
        return float("nan")
    best = int(np.argmax(response))
    if max_diameter is None or diameters[best] <= max_diameter:
        return float(diameters[best])
    # a response still rising at max_diameter belongs to the larger structure
    peaks = blob_peaks(diameters, response, FALLBACK_RESPONSE, max_diameter=max_diameter)
    return float(peaks[np.argmax(response[np.searchsorted(diameters, peaks)])]) if peaks.size else float("nan")


def blob_peaks(diameters: np.ndarray, response: np.ndarray, min_response: float = 0.0,
               max_diameter: float = np.inf) -> np.ndarray:
    """Diameters of the local peaks of a :func:`blob_scale_space`.

    Parameters
    ----------
    diameters, response : (K,) float arrays
    min_response : float
        Only peaks whose response is at least this fraction of the strongest (0 to 1).
    max_diameter : float
        Only peaks at or below this diameter (px).

    Returns
    -------
    peaks : (P,) float array
        Increasing; a peak at either end of the scale space counts.
    """
    if not response.size:
        return np.zeros(0)
    padded = np.pad(response, 1, constant_values=-np.inf)
    peaks = (response > padded[:-2]) & (response >= padded[2:]) & (diameters <= max_diameter)
    peaks &= response >= min_response * response.max()
    return diameters[peaks]


def blob_diameter(image: np.ndarray, max_side: int = 512, max_diameter: float | None = None) -> float:
    """Typical diameter (px of ``image``) of the bright blobs of an image: the
    :func:`strongest_blob` of its :func:`blob_scale_space`; nan for a constant image."""
    return strongest_blob(*blob_scale_space(image, max_side), max_diameter)


def content_window(image: np.ndarray, side: int) -> tuple[slice, slice]:
    """The ``side × side`` window (clipped to the image) with the most structure: the largest
    summed absolute deviation from the median grey level, found on a coarse grid."""
    h, w = image.shape[:2]
    if h <= side and w <= side:
        return slice(0, h), slice(0, w)
    cell = max(1, side // 8)
    gh, gw = max(1, h // cell), max(1, w // cell)
    coarse = resize_image(np.ascontiguousarray(image, dtype=np.float32), (gh, gw))  # area mean: linear,
    coarse = coarse.mean(axis=2) if coarse.ndim == 3 else coarse  # so grey after shrinking is grey before
    content = np.abs(coarse - np.median(coarse))
    k_h, k_w = min(gh, max(1, side // cell)), min(gw, max(1, side // cell))
    integral = np.pad(content.cumsum(0).cumsum(1), ((1, 0), (1, 0)))
    sums = integral[k_h:, k_w:] - integral[:-k_h, k_w:] - integral[k_h:, :-k_w] + integral[:-k_h, :-k_w]
    i, j = np.unravel_index(int(np.argmax(sums)), sums.shape)
    r0, c0 = min(i * cell, max(0, h - side)), min(j * cell, max(0, w - side))
    return slice(r0, min(h, r0 + side)), slice(c0, min(w, c0 + side))
