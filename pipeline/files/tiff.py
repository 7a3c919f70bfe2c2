"""Reading TIFF files: every series and plane of a TIFF as images (:class:`pipeline.files.io.Plane`),
or with its channels kept together (:class:`pipeline.files.planes.ChannelImage`).

Owns the mapping of a TIFF's axes (pages, Z, T, channels, colour samples) to planes, their
names (``_p<k>``, ``_s<j>``), the Orientation tag of each series and the channel names its OME or
ImageJ metadata records. Called by :func:`pipeline.files.io.read_planes` and
:func:`pipeline.files.channels.read_channel_images`, which check the values. Must not: write files.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.errors import NucleiError, one_line
from pipeline.files.metadata import tiff_pixel_size
from pipeline.files.orientation import apply_orientation, tiff_orientation
from pipeline.files.planes import ChannelImage, Plane, check_size


@contextlib.contextmanager
def _open_tiff(path: Path):
    """The open ``tifffile.TiffFile``; any reading error becomes one line naming the file (tifffile
    raises many types for corrupt files)."""
    import tifffile

    logging.getLogger("tifffile").setLevel(logging.ERROR)  # our one-line error says it all
    try:
        with tifffile.TiffFile(path) as tif:
            yield tif
    except NucleiError:
        raise
    except MemoryError:
        raise NucleiError(f"{path}: too large for this machine's memory") from None
    except Exception as exc:
        raise NucleiError(f"{path}: not a readable TIFF ({one_line(exc)})") from None


def _series_stacks(path: Path, tif, last) -> Iterator[tuple[int, str, np.ndarray, int, float | None]]:
    """Every series of an open TIFF as ``(index, axes, stack, orientation code, pixel size µm)``:
    ``stack`` holds the axes ``last(axes)`` names (those the series has) last, in that order, and
    every other axis flattened into its first."""
    for s, series in enumerate(tif.series):
        axes = series.axes
        if "Y" in axes and "X" in axes:
            check_size(path, series.shape[axes.index("Y")], series.shape[axes.index("X")])
        tail = [a for a in last(axes) if a is not None and a in axes]
        order = [i for i, a in enumerate(axes) if a not in tail] + [axes.index(a) for a in tail]
        array = np.transpose(series.asarray(), order)
        stack = array.reshape((-1, *array.shape[len(axes) - len(tail):]))
        yield s, axes, stack, tiff_orientation(series.keyframe), tiff_pixel_size(tif, s)  # µm, OME / ImageJ


def _tag(series: int, k: int, n: int) -> str:
    """The name suffix of image ``k`` of ``n`` in a series (``_s<series>_p<k>``)."""
    return (f"_s{series}" if series else "") + (f"_p{k}" if n > 1 else "")


def _untag_single(path: Path, items: list):
    """``items`` (planes or channel images of one file); a file of one image needs no tag."""
    if not items:
        raise NucleiError(f"{path}: not a readable TIFF (no image in it)")
    if len(items) == 1:
        items[0] = items[0]._replace(tag="")
    return items


def read_tiff_planes(path: Path) -> list[Plane]:
    """Every series of a TIFF as planes, each (Y, X) or (Y, X, S) where S holds colour samples.

    Every axis other than Y, X and the samples axis S (pages, Z, T, channels) enumerates planes;
    each series' Orientation tag is applied.
    """
    planes: list[Plane] = []
    with _open_tiff(path) as tif:
        for s, _, stack, code, size in _series_stacks(path, tif, lambda axes: "YXS"):
            planes += [Plane(_tag(s, k, len(stack)), s, k, apply_orientation(plane, code), code, size)
                       for k, plane in enumerate(stack)]
    return _untag_single(path, planes)


#: Axis letters a series' channels may lie along, by preference: OME / ImageJ channels, colour samples,
#: then a plain multi-page TIFF's pages ('Q', 'I': the one axis besides Y and X).
CHANNEL_AXES = ("C", "S")
_PAGE_AXES = ("Q", "I")


def channel_axis(axes: str) -> str | None:
    """The axis letter of a TIFF series' channels (:data:`CHANNEL_AXES`; the pages of a series whose
    only other axis is its pages), or None (one channel)."""
    for axis in CHANNEL_AXES:
        if axis in axes:
            return axis
    others = [a for a in axes if a not in "YX"]
    return others[0] if len(others) == 1 and others[0] in _PAGE_AXES else None


def read_tiff_channel_images(path: Path) -> list[ChannelImage]:
    """Every series of a TIFF as multi-channel images, (C, Y, X) each.

    The channels are the series' C axis (OME, ImageJ hyperstacks), else its colour samples S (an
    RGB TIFF: red, green, blue), else the pages of a plain multi-page TIFF (its one axis besides Y
    and X); every other axis (Z, T, ...) enumerates images, tagged ``_p<k>`` as
    :func:`read_tiff_planes` tags planes. Channel names come from the OME ``Channel Name``
    attributes or ImageJ's ``Labels`` ('' where none is recorded; 'red', 'green', 'blue' for
    colour samples).
    """
    images: list[ChannelImage] = []
    with _open_tiff(path) as tif:
        for s, axes, stack, code, size in _series_stacks(path, tif, lambda axes: (channel_axis(axes), "Y", "X")):
            channel = channel_axis(axes)
            if channel is None:
                stack = stack[:, None]
            names = _channel_names(tif, s, channel, stack.shape[1])
            images += [ChannelImage(_tag(s, k, len(stack)), s, k,
                                    np.stack([apply_orientation(plane, code) for plane in image]), names, code, size)
                       for k, image in enumerate(stack)]
    return _untag_single(path, images)


def _channel_names(tif, series: int, axis: str | None, n: int) -> tuple[str, ...]:
    """The names of a series' ``n`` channels along ``axis``: OME ``Channel Name``, ImageJ ``Labels``,
    colour names for RGB samples; '' for each channel without one."""
    names: list[str] = []
    if axis == "S" and n in (3, 4):
        names = ["red", "green", "blue", "alpha"][:n]
    elif tif.is_ome and tif.ome_metadata:
        from pipeline.files.metadata import ome_channel_names

        names = ome_channel_names(tif.ome_metadata, series)
    elif tif.imagej_metadata and axis == "C":
        labels = tif.imagej_metadata.get("Labels")
        names = [str(v) for v in labels[:n]] if isinstance(labels, list | tuple) else []
    names = [str(v or "").strip() for v in names]
    return tuple(names[:n]) if len(names) >= n else tuple(names + [""] * (n - len(names)))
