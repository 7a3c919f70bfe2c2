"""Z-stacks and time-lapses: a TIFF read as a stack with its axes, a folder of frames read as a
movie, and label stacks written as ImageJ hyperstacks.

A TIFF series is a stack when its OME or ImageJ metadata gives it a Z or a T axis, or when
``--axes`` names them (:func:`stack_axes`); the stack is then :data:`STACK_AXES` ``ZYX`` (a
z-stack), ``TYX`` (a time-lapse) or ``TZYX`` (a time-lapse of z-stacks), with colour samples
(RGB planes) kept last and a channel axis reduced to the nuclear channel (``--nuclear-channel``;
every channel is kept beside it, :attr:`Stack.channels`, to be measured).
Axes of size 1 are dropped. Any other file, or a series without Z and T, is not a stack: it is
read plane by plane as before (:func:`pipeline.files.io.read_planes`).

Must not: segment, or decide what a stack is segmented with.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.errors import NucleiError
from pipeline.files.io import TIFF_SUFFIXES, atomic_path, check_array, check_file, read_planes, uint16_labels
from pipeline.files.metadata import tiff_pixel_size, tiff_spacing
from pipeline.files.orientation import apply_orientation, tiff_orientation

#: The layouts segmented as stacks: a z-stack, a time-lapse and a time-lapse of z-stacks.
STACK_AXES = ("ZYX", "TYX", "TZYX")
#: Axis letters ``--axes`` takes: time, depth, channel, rows, columns (colour samples, S, are not named).
AXIS_LETTERS = "TZCYX"


class Stack(NamedTuple):
    """One stack of a file (:func:`read_stacks`), in the file's own units."""

    tag: str  #: '' for a file holding one stack, else '_s<j>' (TIFF series j)
    series: int  #: TIFF series (0 for a folder of frames)
    axes: str  #: one of :data:`STACK_AXES`
    array: np.ndarray  #: shape per ``axes`` (then colour samples, if any), the file's pixel type
    pixel_size: float | None = None  #: µm, in Y and X
    z_spacing: float | None = None  #: µm between planes
    frame_interval: float | None = None  #: s between frames
    channel: str = ""  #: the nuclear channel's name when the file had several ('' otherwise)
    #: every channel when the file had several: (C, *shape of ``array``), as stored; None otherwise
    channels: np.ndarray | None = None
    channel_names: tuple[str, ...] = ()  #: their names in the metadata

    @property
    def planes(self) -> np.ndarray:
        """(N, Y, X[, S]): every plane, frames major."""
        return self.array.reshape((-1, *self.array.shape[len(self.axes) - 2:]))


def check_axes(axes: str) -> str:
    """``--axes``, upper-cased and checked: letters of :data:`AXIS_LETTERS`, each once, Y and X last.

    Raises
    ------
    NucleiError
        Another letter, a letter twice, or Y and X not the last two.
    """
    given = axes.strip().upper()
    if not re.fullmatch(f"[{AXIS_LETTERS}]+", given) or len(set(given)) != len(given) or not given.endswith("YX"):
        raise NucleiError(f"--axes must name each axis of the stack once from {', '.join(AXIS_LETTERS)} "
                          f"(T time, Z depth, C channel), ending in YX, e.g. ZYX, TYX or TZCYX; got {axes!r}")
    return given


def stack_axes(path: Path, file_axes: str, shape: tuple[int, ...], given: str | None) -> str | None:
    """The axes of a TIFF series read as a stack (its colour samples, ``S``, left as they are), or
    None when it is not one (no Z or T in the metadata, no ``--axes``).

    Parameters
    ----------
    file_axes, shape : the series' axes (tifffile's letters) and shape, size-1 axes dropped.
    given : ``--axes`` (:func:`check_axes`), or None.

    Raises
    ------
    NucleiError
        ``--axes`` that do not fit the shape; a file of one plane given ``--axes`` with Z or T.
    """
    samples = "S" if file_axes.endswith("S") else ""
    if given is None:
        return file_axes if ("Z" in file_axes or "T" in file_axes) else None
    planar = len(shape) - len(samples)
    if planar == 2 and len(given) > 2:
        raise NucleiError(f"{path}: a single plane ({shape[0]}×{shape[1]}), not a stack: --axes {given} does not apply")
    if len(given) != planar:
        raise NucleiError(f"{path}: --axes {given} names {len(given)} axes but the image has {planar} "
                          f"(shape {'×'.join(map(str, shape[:planar]))}{', colour samples last' if samples else ''})")
    return given + samples


def _metadata_problem(tif, series, array: np.ndarray | None = None) -> str | None:
    """What the file's ImageJ or OME metadata says that its planes contradict, or None: before
    reading (``array`` None) the series tifffile could not build from it, after reading
    (``array``, the series as read) a shape other than the metadata's."""
    kind = getattr(series, "kind", "")
    shape = tuple(series.shape) if array is None else array.shape
    planes = int(np.prod(shape[:len(series.axes) - 2 - series.axes.endswith("S")]))
    mismatch = shape != tuple(series.shape)
    if tif.is_imagej and (kind != "imagej" or mismatch):
        meta = tif.imagej_metadata or {}
        told = {k: meta.get(k) for k in ("images", "slices", "frames", "channels") if meta.get(k)}
        return f"its ImageJ metadata ({', '.join(f'{k}={v}' for k, v in told.items())}) does not fit its {planes} planes"
    if tif.is_ome and (kind != "ome" or mismatch):
        return f"its OME metadata does not fit its {planes} planes"
    return None


def read_stacks(path: str | Path, axes: str | None = None, channel: str | None = None) -> list[Stack] | None:
    """Read a TIFF's series as stacks, or None when the file is not one (see the module docstring).

    Parameters
    ----------
    axes : ``--axes`` (checked by :func:`check_axes`), overriding the metadata; None: the metadata's.
    channel : ``--nuclear-channel``, the channel kept of a stack with a C axis.

    Returns
    -------
    stacks : list of :class:`Stack`, or None

    Raises
    ------
    NucleiError
        One line naming the file: unreadable; metadata that contradicts the shape; ``--axes`` that
        do not fit; a stack with a channel axis and no ``--nuclear-channel``; a stack of one plane.
    """
    from pipeline.files.channels import channel_keys, find_channel
    from pipeline.files.tiff import _channel_names, _open_tiff

    path = Path(path)
    if path.suffix.lower() not in TIFF_SUFFIXES:
        if axes is not None:
            raise NucleiError(f"{path}: --axes applies to TIFF stacks (OME-TIFF, ImageJ hyperstacks); this file "
                              "holds one image")
        return None
    check_file(path)
    stacks: list[Stack] = []
    with _open_tiff(path) as tif:
        for s, series in enumerate(tif.series):
            array, problem = None, _metadata_problem(tif, series)
            if not problem:  # read only a stack: a plain image is read plane by plane, by the caller
                layout = stack_axes(path, series.axes, series.shape, axes)
                if layout is None:
                    if stacks:
                        raise NucleiError(f"{path}: series {s} is not a stack ({series.axes}) but series 0 is: give --axes")
                    return None
                array = series.asarray()
                problem = _metadata_problem(tif, series, array)
            if problem:
                if axes is None:
                    raise NucleiError(f"{path}: {problem}; give --axes (e.g. ZYX) to read it as a stack")
                array = series.asarray() if array is None else array
                layout = stack_axes(path, "Q" * (array.ndim - 2) + "YX", array.shape, axes)
            keep = [a for a in layout if a in "TZCYXS"]
            if extra := [a for a in layout if a not in keep]:
                raise NucleiError(f"{path}: axis {extra[0]} of {layout} is neither time, depth nor channel: give --axes")
            name, every, names = "", None, ()
            if "C" in layout:
                names = _channel_names(tif, s, "C", array.shape[layout.index("C")])
                if channel is None:
                    raise NucleiError(f"{path}: a stack of {array.shape[layout.index('C')]} channels: give --nuclear-channel "
                                      "(the channel holding the nuclei)")
                k = find_channel(channel, names, path)
                every = np.moveaxis(array, layout.index("C"), 0)  # (C, the other axes)
                array, layout = np.take(array, k, axis=layout.index("C")), layout.replace("C", "")
                name = channel_keys(names)[k]
            order = [layout.index(a) for a in "TZYXS" if a in layout]
            array, layout = np.transpose(array, order), "".join(a for a in "TZYXS" if a in layout)
            every = None if every is None or "S" in layout else np.transpose(every, [0, *(o + 1 for o in order)])
            planar = layout.replace("S", "")
            if planar not in STACK_AXES:
                raise NucleiError(f"{path}: a stack of a single plane ({'×'.join(map(str, array.shape[-2:]))}): "
                                  "nothing to segment across planes or frames")
            code = tiff_orientation(series.keyframe)
            if code != 1:  # the Orientation tag applied to every plane, as viewers show them
                lead, planes = array.shape[:len(planar) - 2], array.reshape((-1, *array.shape[len(planar) - 2:]))
                planes = np.stack([apply_orientation(p, code) for p in planes])
                array = planes.reshape((*lead, *planes.shape[1:]))
                if every is not None:
                    turned = np.stack([apply_orientation(p, code) for p in every.reshape((-1, *every.shape[-2:]))])
                    every = turned.reshape((*every.shape[:-2], *turned.shape[1:]))
            check_array(array.reshape((-1, *array.shape[len(planar) - 2:]))[0], path)  # type, size
            if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
                raise NucleiError(f"{path}: image contains NaN or infinite values")
            z, dt = tiff_spacing(tif, s)
            stacks.append(Stack(f"_s{s}" if s else "", s, planar, array, tiff_pixel_size(tif, s), z, dt, name, every,
                                tuple(names)))
    return stacks or None  # no series at all: read_planes says what is wrong


def frame_files(folder: Path) -> list[Path]:
    """The image files of a ``--frames`` folder (not its sub-folders), in name order with numbers
    compared as numbers (``t2`` before ``t10``).

    Raises
    ------
    NucleiError
        ``folder`` is not a folder, or holds no image file.
    """
    from pipeline.files.inputs import IMAGE_SUFFIXES, list_inputs

    if not Path(folder).is_dir():
        raise NucleiError(f"{folder}: --frames takes folders (one time-lapse each, its images the frames)")
    files, _ = list_inputs([folder])
    if not files:
        raise NucleiError(f"{folder}: no image files ({', '.join(IMAGE_SUFFIXES)}) to read as frames")
    return sorted(files, key=lambda p: [int(t) if t.isdigit() else t.casefold() for t in re.split(r"(\d+)", p.name)])


def read_frames(paths: list[Path]) -> Stack:
    """A folder's image files, in the order given (name order), as one time-lapse (``--frames``).

    Each file holds one frame (its first plane; the colour channel is chosen by the caller).

    Raises
    ------
    NucleiError
        One line naming the file: unreadable, more than one plane, or not the first frame's size.
    """
    frames, size = [], None
    for path in paths:
        planes = read_planes(path)
        if len(planes) != 1:
            raise NucleiError(f"{path}: {len(planes)} planes in one frame of a --frames movie (one image per file)")
        array = planes[0].array
        if size is not None and array.shape != size:
            raise NucleiError(f"{path}: frame of {'×'.join(map(str, array.shape))}, the movie's first frame "
                              f"({paths[0].name}) is {'×'.join(map(str, size))}: every frame must have the same size")
        size = array.shape
        frames.append(array)
    if len(frames) < 2:
        raise NucleiError(f"{paths[0] if paths else 'folder'}: a --frames movie of a single frame: nothing to track")
    return Stack("", 0, "TYX", np.stack(frames), read_planes(paths[0])[0].pixel_size)


def write_label_stack(path: str | Path, labels: np.ndarray, axes: str, pixel_size: float | None = None,
                      z_spacing: float | None = None, frame_interval: float | None = None) -> None:
    """Write a label stack atomically as an ImageJ hyperstack (uint16, zlib) that Fiji opens with
    its axes and napari as 3D (or 2D + time) labels.

    Parameters
    ----------
    labels : int array, shape per ``axes`` (one of :data:`STACK_AXES`)
    pixel_size, z_spacing : µm, recorded when known
    frame_interval : s, recorded when known

    Raises
    ------
    NucleiError
        More than 65535 labels (they do not fit uint16).
    """
    import tifffile

    labels = uint16_labels(path, labels)
    metadata: dict = {"axes": axes}
    if pixel_size or z_spacing:
        metadata["unit"] = "micron"
    if z_spacing:
        metadata["spacing"] = z_spacing
    if frame_interval:
        metadata["finterval"] = frame_interval
    resolution = (1 / pixel_size, 1 / pixel_size) if pixel_size else None
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels, imagej=True, metadata=metadata, resolution=resolution,
                         compression="zlib")
