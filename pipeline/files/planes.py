"""One image of a file (:class:`Plane`), one multi-channel image (:class:`ChannelImage`), and the
largest image this machine can segment whole.

Shared by :mod:`pipeline.files.io` (every format), :mod:`pipeline.files.tiff` (TIFF series and pages)
and :mod:`pipeline.files.channels` (channels kept together).

Must not: read or write files.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.errors import NucleiError

#: Peak memory of ``nuclei segment`` per image pixel, in bytes: 75 measured for an 8000×8000 RGB
#: image of 18-px nuclei (segmented at ×1.13, see README), with some margin.
SEGMENT_BYTES_PER_PIXEL = 80


class Plane(NamedTuple):
    """One image of a file, in the file's own units (see :func:`pipeline.files.io.read_planes`)."""

    tag: str  #: '' for a file holding one image, else '_p<k>', '_s<j>' or '_s<j>_p<k>'
    series: int  #: TIFF series (0 for every other format)
    index: int  #: plane within its series
    array: np.ndarray  #: (H, W) or (H, W, C), C = 1..4, the file's pixel type, as shown
    orientation: int = 1  #: the file's Orientation tag, applied (:mod:`pipeline.files.orientation`)
    pixel_size: float | None = None  #: µm, from the file's OME / ImageJ metadata (:mod:`pipeline.files.metadata`)


class ChannelImage(NamedTuple):
    """One multi-channel image of a file, its channels kept together (``--nuclear-channel``;
    :func:`pipeline.files.channels.read_channel_images`)."""

    tag: str  #: as :attr:`Plane.tag`, the channel axis left out: '', '_p<k>', '_s<j>' or '_s<j>_p<k>'
    series: int  #: TIFF series (0 for every other format)
    index: int  #: image within its series (the planes of the axes other than Y, X and the channels)
    channels: np.ndarray  #: (C, H, W), the file's pixel type, as shown (orientation applied)
    names: tuple[str, ...]  #: each channel's name from the file's metadata ('' when it has none)
    orientation: int = 1  #: the file's Orientation tag, applied
    pixel_size: float | None = None  #: µm, from the file's OME / ImageJ metadata


def max_image_pixels() -> int | None:
    """Largest image (H × W pixels) read: what ``nuclei segment`` can hold in this machine's memory.

    ``nuclei segment`` peaks at about :data:`SEGMENT_BYTES_PER_PIXEL` bytes per pixel of an
    image (measured for an 8000×8000 RGB image); None where the memory size is unknown.
    """
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, OSError, ValueError):
        return None
    return int(memory // SEGMENT_BYTES_PER_PIXEL)


def check_size(path: Path, height: int, width: int) -> None:
    """Refuse, as 'too large', an image whose pixels exceed :func:`max_image_pixels`."""
    limit = max_image_pixels()
    if limit is not None and height * width > limit:
        raise NucleiError(
            f"{path}: image too large ({width}x{height} px = {height * width / 1e6:.0f} Mpx; this "
            f"machine's memory allows at most {limit / 1e6:.0f} Mpx, about {SEGMENT_BYTES_PER_PIXEL} "
            "bytes per pixel)"
        )
