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


def draw_outlines(image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Outline every nucleus in its own colour.

    Parameters
    ----------
    image : (H, W, 3) uint8 array
        The image to draw on (not modified).
    labels : (H, W) int array
        Instance labels, 0 = background.

    Returns
    -------
    overlay : (H, W, 3) uint8 array
        ``image`` with the inner boundary pixels of nucleus ``k`` set to
        ``PALETTE[(k - 1) % len(PALETTE)]``.
    """
    if image.shape[:2] != labels.shape:
        raise ValueError(f"image shape {image.shape} does not match labels shape {labels.shape}")
    overlay = image.copy()
    edge = find_boundaries(labels, mode="inner")
    overlay[edge] = PALETTE[(labels[edge] - 1) % len(PALETTE)]
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
