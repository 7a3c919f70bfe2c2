"""Reading huge images piece by piece: tiled/striped TIFF and OME-TIFF, uncompressed TIFF, OME-Zarr.

:func:`open_slide` gives a :class:`Slide` whose :meth:`Slide.read` decodes only the tiles, strips
or chunks a region needs (tifffile's zarr store, a memory map, zarr); None for a file that must be
decoded whole (PNG, JPEG, a TIFF in one compressed piece, a TIFF whose Orientation tag turns or
mirrors it), which :func:`pipeline.files.io.read_planes` reads. :func:`slide_of` decides which images
``nuclei segment`` segments out of core (:mod:`pipeline.batch.slide`).

Must not: segment, or write files.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import NucleiError, one_line
from pipeline.files import planes
from pipeline.files.inputs import ZARR_SUFFIX
from pipeline.files.io import TIFF_SUFFIXES

#: A file whose pieces (tiles, strips, chunks) exceed this many pixels is not read lazily.
MAX_CHUNK_PIXELS = 16_000_000


@dataclass
class Slide:
    """An image read piece by piece: ``array`` (a zarr array or a memory map) and where its Y, X
    and colour axes are; other axes have length 1."""

    path: Path
    array: Any
    axes: str  #: one letter per axis of ``array``: 'Y', 'X', 'C' (colour samples) or '1' (length 1)
    pixel_size: float | None = None
    names: tuple[str, ...] = ()  #: the channels' names from the file's metadata (() when none)

    @property
    def n_channels(self) -> int:
        return self.array.shape[self.axes.index("C")] if "C" in self.axes else 1

    @property
    def shape(self) -> tuple[int, int]:
        return self.array.shape[self.axes.index("Y")], self.array.shape[self.axes.index("X")]

    @property
    def dtype(self) -> np.dtype:
        return np.dtype(self.array.dtype)

    def read(self, rows: slice, cols: slice) -> np.ndarray:
        """The pixels of ``rows`` × ``cols``, (h, w) or (h, w, C), in the file's pixel type."""
        key = tuple({"Y": rows, "X": cols, "C": slice(None)}.get(a, 0) for a in self.axes)
        block = np.asarray(self.array[key])
        kept = [a for a in self.axes if a != "1"]
        return np.moveaxis(block, kept.index("C"), -1) if "C" in kept and kept[-1] != "C" else block


def open_slide(path: str | Path) -> Slide | None:
    """Open an image for reading piece by piece; None when it must be decoded whole (or has
    several images, planes or series: read those with :func:`pipeline.files.io.read_planes`).

    Raises
    ------
    NucleiError
        An unreadable OME-Zarr (the other formats are left to :func:`pipeline.files.io.read_planes`).
    """
    path = Path(path)
    if path.suffix.lower() == ZARR_SUFFIX:
        return _open_zarr(path)
    if path.suffix.lower() in TIFF_SUFFIXES and path.is_file():
        try:
            return _open_tiff(path)
        except Exception:  # not readable this way: read_planes says what is wrong
            return None
    return None


def _axes(names: Iterable[str], shape: tuple[int, ...], colour: str) -> str | None:
    """Axis letters of :class:`Slide` for axes ``names`` of ``shape`` (``colour``: the name of the
    colour axis); None when an axis other than Y, X and up to 4 colours has length > 1."""
    letters = ""
    for name, n in zip(names, shape, strict=True):
        name = name.upper()
        if name in ("Y", "X"):
            letters += name
        elif name == colour and 1 < n <= 4:
            letters += "C"
        elif n == 1:
            letters += "1"
        else:
            return None
    return letters if letters.replace("1", "").replace("C", "") == "YX" else None


def _open_tiff(path: Path) -> Slide | None:
    import tifffile
    import zarr

    from pipeline.files.metadata import tiff_pixel_size
    from pipeline.files.orientation import tiff_orientation

    with tifffile.TiffFile(path) as tif:
        if len(tif.series) != 1 or tiff_orientation(tif.series[0].keyframe) != 1:
            return None  # several images, or turned/mirrored (read whole, as shown: pipeline.files.tiff)
        series = tif.series[0]
        axes = _axes(series.axes, series.shape, "S")
        if axes is None and "C" in series.axes and "S" not in series.axes:
            axes = _axes(series.axes, series.shape, "C")
        contiguous = series.dataoffset is not None
        pixel_size = tiff_pixel_size(tif, 0)
        names: tuple[str, ...] = ()
        if axes is not None and "C" in axes:
            n = series.shape[axes.index("C")]
            if "S" in series.axes:
                names = ("red", "green", "blue", "alpha")[:n]
            elif tif.is_ome and tif.ome_metadata:
                from pipeline.files.metadata import ome_channel_names

                found = ome_channel_names(tif.ome_metadata, 0)
                names = tuple(found) if len(found) == n else ()
    if axes is None:
        return None
    array = zarr.open(tifffile.imread(path, aszarr=True, series=0, level=0), mode="r")
    if isinstance(array, zarr.Group):
        array = array["0"]
    largest = min(MAX_CHUNK_PIXELS, planes.max_image_pixels() or MAX_CHUNK_PIXELS)
    if array.chunks[axes.index("Y")] * array.chunks[axes.index("X")] > largest:
        if not contiguous:  # one compressed piece: must be decoded whole
            return None
        array = tifffile.memmap(path, series=0, mode="r")
    return Slide(path, array, axes, pixel_size, names)


def _open_zarr(path: Path) -> Slide:
    """An OME-Zarr image (NGFF 0.4 or 0.5): its full-resolution level."""
    import zarr

    from pipeline.files.metadata import zarr_pixel_size

    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
        multiscales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
        level = multiscales[0]["datasets"][0]["path"]
        names = [a["name"] if isinstance(a, dict) else a for a in multiscales[0]["axes"]]
        array = group[level]
    except Exception as exc:
        raise NucleiError(f"{path}: not a readable OME-Zarr image ({one_line(exc)})") from None
    axes = _axes(names, array.shape, "C")
    if axes is None:
        raise NucleiError(f"{path}: OME-Zarr axes {names} of shape {array.shape}: expected y, x and up to 4 channels")
    labels = [c.get("label", "") for c in (attrs.get("omero") or attrs.get("ome", {}).get("omero") or {}).get(
        "channels", []) if isinstance(c, dict)]
    names = tuple(str(v) for v in labels) if "C" in axes and len(labels) == array.shape[axes.index("C")] else ()
    return Slide(path, array, axes, zarr_pixel_size(multiscales), names)


@functools.lru_cache(maxsize=8)
def opened_slide(path: str) -> Slide:
    """:func:`open_slide`, kept open for the blocks of one process (a Dask worker)."""
    slide = open_slide(path)
    if slide is None:
        raise NucleiError(f"{path}: cannot be read piece by piece")
    return slide


def slide_of(path: str | Path, slide_pixels: int) -> Slide | None:
    """The :class:`Slide` of ``path`` when it is segmented out of core: an OME-Zarr, or a file that
    :func:`open_slide` reads piece by piece and that holds more than ``slide_pixels`` pixels (or
    more than this machine could segment whole, :func:`pipeline.files.planes.max_image_pixels`); else None."""
    path = Path(path)
    slide = open_slide(path)
    if slide is None:
        return None
    limit = min(slide_pixels, planes.max_image_pixels() or slide_pixels)
    height, width = slide.shape
    return slide if path.suffix.lower() == ZARR_SUFFIX or height * width > limit else None
