"""Pictures of a segmentation: nucleus outlines drawn over the image, and thumbnails.

Must not: segment or write files (callers write the bytes).
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.segmentation import find_boundaries

#: Outline colours, uint8 (N, 3) RGB: matplotlib's tab10 without its grey, bright enough to
#: stand out on dark fluorescence and on pink H&E alike. Nucleus ``k`` gets colour
#: ``PALETTE[(k - 1) % N]``, so touching nuclei (consecutive labels) differ.
PALETTE = np.array(
    [
        [31, 119, 180],
        [255, 127, 14],
        [44, 160, 44],
        [214, 39, 40],
        [148, 103, 189],
        [140, 86, 75],
        [227, 119, 194],
        [188, 189, 34],
        [23, 190, 207],
    ],
    dtype=np.uint8,
)


#: Outline colour of the nuclei negative for every ``--positive`` channel (azure) ...
NEGATIVE_COLOUR = np.array([0, 160, 255], np.uint8)
#: ... of those positive for the k-th ``--positive`` channel (magenta, yellow, green, orange, then again) ...
POSITIVE_COLOURS = np.array([[255, 0, 255], [255, 230, 0], [0, 255, 120], [255, 120, 0]], np.uint8)
#: ... and of those positive for more than one (white); no call (no threshold): the negative colour.
SEVERAL_COLOUR = np.array([255, 255, 255], np.uint8)


def positive_colours(positive: np.ndarray, labels_present: np.ndarray, n_labels: int) -> np.ndarray:
    """Outline colour of every label from its positive calls.

    Parameters
    ----------
    positive : (N, K) float array
        1.0 positive, 0.0 negative, NaN no call, for each nucleus of ``labels_present`` and each of
        the K ``--positive`` channels.
    labels_present : (N,) int
        The label of each row.
    n_labels : int
        ``labels.max()``.

    Returns
    -------
    colours : (n_labels + 1, 3) uint8
        :data:`NEGATIVE_COLOUR`, :data:`POSITIVE_COLOURS` ``[k]`` or :data:`SEVERAL_COLOUR`.
    """
    colours = np.tile(NEGATIVE_COLOUR, (n_labels + 1, 1))
    calls = np.nan_to_num(np.asarray(positive, np.float64).reshape(len(labels_present), -1)) > 0
    count = calls.sum(axis=1)
    first = calls.argmax(axis=1)
    chosen = np.where((count > 1)[:, None], SEVERAL_COLOUR, POSITIVE_COLOURS[first % len(POSITIVE_COLOURS)])
    colours[labels_present[count > 0]] = chosen[count > 0]
    return colours


def display_uint8(image: np.ndarray) -> np.ndarray:
    """Convert an image in [0, 1] to 8 bits for display, with no full-size float temporaries.

    Parameters
    ----------
    image : (H, W, 3) float32 array
        Intensities in [0, 1] (values outside are clipped).

    Returns
    -------
    image8 : (H, W, 3) uint8 array
        ``floor(255 * image)``; the extra memory is one band of rows at a time, so that an 8000 × 8000
        image does not need gigabytes (unlike ``pipeline.files.io.to_uint8``, which goes via float64).
    """
    out = np.empty(image.shape, dtype=np.uint8)
    rows = max(1, 4_000_000 // max(1, image[0].size))  # ~16 MB of float32 per step
    for start in range(0, image.shape[0], rows):
        chunk = np.clip(image[start : start + rows], 0.0, 1.0) * np.float32(255.0)
        out[start : start + rows] = chunk
    return out


def draw_outlines(image: np.ndarray, labels: np.ndarray, colours: np.ndarray | None = None) -> np.ndarray:
    """Outline every nucleus in its own colour (or the colour ``colours`` gives its label).

    Parameters
    ----------
    image : (H, W, 3) uint8 array
        The image to draw on (not modified).
    labels : (H, W) int array
        Instance labels, 0 = background.
    colours : (labels.max() + 1, 3) uint8, optional
        The colour of each label (:func:`positive_colours`).

    Returns
    -------
    overlay : (H, W, 3) uint8 array
        ``image`` with the inner boundary pixels of nucleus ``k`` set to ``colours[k]``, else
        ``PALETTE[(k - 1) % len(PALETTE)]``.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image shape {image.shape} does not match labels shape {labels.shape}")
    overlay = image.copy()
    edge = find_boundaries(labels, mode="inner")
    overlay[edge] = PALETTE[(labels[edge] - 1) % len(PALETTE)] if colours is None else colours[labels[edge]]
    return overlay


def thumbnail(image: np.ndarray, max_side: int) -> np.ndarray:
    """Shrink an image so that its longer side is at most ``max_side`` pixels.

    Parameters
    ----------
    image : (H, W, 3) uint8 array
    max_side : int
        Longest side of the result, in pixels.

    Returns
    -------
    small : (h, w, 3) uint8 array
        Area-averaged (``cv2.INTER_AREA``); ``image`` itself when it is already small enough.
    """
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


#: Most planes or frames a stack's overlay shows (:func:`montage`).
MONTAGE_TILES = 16


def montage(planes: np.ndarray, labels: np.ndarray, tiles: int = MONTAGE_TILES, gap: int = 4) -> np.ndarray:
    """The overlay of a stack: up to ``tiles`` evenly spaced planes (or frames), each outlined,
    side by side in rows, first to last, left to right.

    A nucleus keeps its colour in every tile (the colour of its label: the same 3D nucleus, or
    the same track). A montage rather than a maximum projection: a projection's outlines of
    nuclei above one another would cross.

    Parameters
    ----------
    planes : (N, H, W, 3) uint8
        The planes as shown.
    labels : (N, H, W) int
    tiles : int
    gap : int
        Black px between tiles.

    Returns
    -------
    overlay : (rows·(H + gap) − gap, cols·(W + gap) − gap, 3) uint8
    """
    n, height, width = labels.shape
    picks = np.unique(np.linspace(0, n - 1, min(n, tiles)).round().astype(int))
    cols = int(np.ceil(np.sqrt(len(picks))))
    rows = int(np.ceil(len(picks) / cols))
    out = np.zeros((rows * (height + gap) - gap, cols * (width + gap) - gap, 3), np.uint8)
    for k, z in enumerate(picks):  # a loop over at most `tiles` planes
        r, c = divmod(k, cols)
        out[r * (height + gap): r * (height + gap) + height, c * (width + gap): c * (width + gap) + width] = \
            draw_outlines(planes[z], labels[z])
    return out
