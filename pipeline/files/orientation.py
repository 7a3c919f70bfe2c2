"""Image orientation tags: the EXIF Orientation of JPEG/PNG files and TIFF's Orientation tag
(the same tag, 274), applied so that an image is read as every viewer shows it.

Owns the meaning of the eight orientation codes. Must not: read or write files (the readers in
:mod:`pipeline.files.io` hand over the tag's value).
"""

from __future__ import annotations

import numpy as np

#: The Orientation tag (EXIF and TIFF).
ORIENTATION_TAG = 274

#: Orientation code → what it does, and how an (H, W[, C]) array as stored becomes the image as
#: shown (what Pillow's ``ImageOps.exif_transpose`` does; codes 5-8 swap height and width).
_TURNS = {
    2: ("mirrored left-right", lambda a: a[:, ::-1]),
    3: ("turned 180°", lambda a: a[::-1, ::-1]),
    4: ("mirrored top-bottom", lambda a: a[::-1]),
    5: ("transposed", lambda a: a.swapaxes(0, 1)),
    6: ("turned 90° clockwise", lambda a: np.rot90(a, -1)),
    7: ("transversed", lambda a: np.rot90(a, 2).swapaxes(0, 1)),
    8: ("turned 90° counter-clockwise", lambda a: np.rot90(a, 1)),
}


def orientation_code(value) -> int:
    """A tag's value (int, enum, None, or junk) → an orientation code 1..8 (1: as stored)."""
    try:
        code = int(value)
    except (TypeError, ValueError):
        return 1
    return code if code in _TURNS else 1


def apply_orientation(array: np.ndarray, code: int) -> np.ndarray:
    """Turn or mirror an (H, W) or (H, W, C) array as stored into the image as shown.

    Parameters
    ----------
    array : (H, W) or (H, W, C) ndarray, any dtype
    code : int
        Orientation tag value, 1..8; 1 and unknown values leave the array as it is.

    Returns
    -------
    shown : ndarray, same dtype, (H, W[, C]) or (W, H[, C]) for codes 5-8; C-contiguous.
    """
    if code not in _TURNS:
        return array
    return np.ascontiguousarray(_TURNS[code][1](array))


def pillow_orientation(im) -> tuple[object, int]:
    """A PIL image and the orientation code it was shown in (``ImageOps.exif_transpose``).

    Returns
    -------
    shown : PIL.Image.Image
        ``im`` turned as its EXIF Orientation says (``im`` itself when as stored).
    code : int
        The Orientation code applied, 1 when none.
    """
    from PIL import ImageOps

    try:
        code = orientation_code(im.getexif().get(ORIENTATION_TAG))
    except Exception:  # a malformed EXIF block: the pixels are still good
        return im, 1
    if code == 1:
        return im, 1
    return ImageOps.exif_transpose(im), code


def tiff_orientation(page) -> int:
    """Orientation code of a tifffile page (its keyframe's tag 274; 1 when absent)."""
    tag = page.tags.get(ORIENTATION_TAG)
    return orientation_code(None if tag is None else tag.value)


def describe(code: int) -> str:
    """What orientation ``code`` did, for ``counts.csv``: '' for 1, e.g. 'EXIF 6: turned 90° clockwise'."""
    return f"EXIF {code}: {_TURNS[code][0]}" if code in _TURNS else ""
