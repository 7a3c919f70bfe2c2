"""One stack of ``nuclei segment``: a z-stack segmented in 3D, or a time-lapse segmented frame by
frame (and tracked with ``--track``); its files and its rows of the tables.

- ``ZYX`` (a z-stack): :func:`pipeline.model.stack_segmenter.segment_stack` (``--z-method stitch|ortho``), the
  nuclei measured in 3D (:func:`pipeline.method.volumes.measure_volumes`); one ``counts.csv`` row.
- ``TYX`` (a time-lapse): every frame segmented at the first frame's diameter; with ``--track`` the
  nuclei linked into tracks (:func:`pipeline.method.tracking.track_labels`), each keeping its track
  id as its label in every frame, ``tracks/<name>.csv`` and ``tracks/<name>.xml`` (TrackMate)
  written; one ``counts.csv`` row per frame (``frame``), ``nuclei.csv`` rows with ``frame``.
- ``TZYX``: both, when both ``--z-method`` and ``--track`` are given.

``labels/<name>.tif`` is the label stack as an ImageJ hyperstack
(:func:`pipeline.files.stacks.write_label_stack`), ``overlays/<name>.png`` a montage of up to
:data:`pipeline.method.overlay.MONTAGE_TILES` planes or frames (:func:`pipeline.method.overlay.montage`).

The channels of a stack read with ``--nuclear-channel`` (:attr:`pipeline.files.stacks.Stack.channels`)
are measured as a plane's are (:func:`pipeline.batch.image_features.measure_image`): a time-lapse's
frame by frame (``--positive``, ``--cell-expansion``: ``cells/<name>.tif`` a label stack,
``--spots``: ``spots/<name>.csv`` with ``frame``); a z-stack's 3D nuclei with every channel and
``--positive`` in 3D (:func:`measure_frame`), ``--cell-expansion`` and ``--spots`` flagged as not
applied (they are grown and found in 2D). A stack without a channel axis flags them all.

Must not: list inputs, read files, or write the tables and report.
"""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.batch.image_features import Channels, Measured, measure_image, problems
from pipeline.batch.output_folder import (
    CELLS_COLUMN,
    SPOTS_COLUMN,
    TRACKMATE_COLUMN,
    TRACKS_COLUMN,
    CountsRow,
    Tables,
    cells_file,
    labels_file,
    spots_file,
    trackmate_file,
    tracks_file,
    warn,
)
from pipeline.batch.settings import MeasureOptions, Settings
from pipeline.errors import NucleiError
from pipeline.files.io import as_rgb01, colour_channel, write_csv
from pipeline.files.stacks import Stack, write_label_stack
from pipeline.method.features import intensity_of, measurement_columns
from pipeline.method.overlay import display_uint8, montage
from pipeline.progress import progress

#: The flag of a z-stack measured with --cell-expansion or --spots.
NOT_IN_3D = "--cell-expansion and --spots are not applied to z-stacks (cells and spots are 2D)"
#: A z-stack's nuclei are flagged when their median depth (z extent × anisotropy, px) is more than this
#: many times their diameter, or less than its inverse: nuclei are roughly as deep as wide, so the
#: voxel size (or --anisotropy) is wrong, or the nuclei run through planes they are not in.
DEPTH_RATIO = 2.0
#: The flag of a stack without a channel axis measured with --positive, --cell-expansion or --spots.
NO_CHANNELS = "--positive, --cell-expansion and --spots are not applied: the stack has no channel axis"


def stack_fields(stack: Stack) -> dict[str, Any]:
    """The ``counts.csv`` fields of one stack as read: series, axes, size, pixel type."""
    shape = stack.array.shape
    return {"series": stack.series, "axes": stack.axes, "height": shape[len(stack.axes) - 2],
            "width": shape[len(stack.axes) - 1], "pixel_type": str(stack.array.dtype)}


def segment_stack_image(stack: Stack, source: Path, name: str, segmenter, cfg: Settings, run: Tables,
                        written: list[Path]) -> list[dict[str, Any]]:
    """Segment, measure and write one stack; returns its ``counts.csv`` rows' fields (one per frame
    of a time-lapse). Files written are appended to ``written``.

    Raises
    ------
    NucleiError
        A time-lapse of z-stacks without both ``--z-method`` and ``--track``; the errors of
        :func:`pipeline.model.stack_segmenter.segment_stack`, :func:`pipeline.method.tracking.track_labels` and
        :func:`pipeline.batch.image_features.measure_image`.
    """
    options = cfg.stacks
    if stack.axes == "TZYX" and not (options.track and options.z_method):
        raise NucleiError(f"{source}: a time-lapse of z-stacks (TZYX): give both --z-method and --track (3D nuclei "
                          "tracked over time), or --axes to read it otherwise")
    flags = _flags(stack, cfg)
    pixel_size = cfg.pixel_size or stack.pixel_size
    grey = _planes(stack, cfg.channel)  # (N, H, W[, S]) what is segmented
    intensity = np.stack([intensity_of(p) for p in grey]).reshape(stack.array.shape[:len(stack.axes)])
    frames = stack.array.shape[0] if "T" in stack.axes else 1
    per_frame = grey.reshape((frames, -1, *grey.shape[1:]))
    del grey
    if "Z" in stack.axes:
        labels, shown, info = _segment_volumes(per_frame, segmenter, cfg, stack, pixel_size, flags, source)
    else:
        labels, shown, info = _segment_frames(per_frame[:, 0], segmenter, cfg, flags)
    files: dict[str, str] = {}
    if options.track and "T" in stack.axes:
        labels, files = _track(labels, stack, source, name, pixel_size, info, run, written)
    written.append(run.outdir / labels_file(name))
    write_label_stack(written[-1], labels.reshape(stack.array.shape[:len(stack.axes)]), stack.axes, pixel_size,
                      stack.z_spacing, stack.frame_interval)
    run.write_overlay(name, montage(shown.reshape((-1, *shown.shape[-3:])), labels.reshape((-1, *labels.shape[-2:]))),
                      cfg.segment.thumbnail, written)
    del shown
    voxel = _voxel_size(stack, pixel_size, options.anisotropy)  # no µm³ from an assumed anisotropy
    measured = [measure_frame(labels[t], intensity if frames == 1 else intensity[t], _frame_channels(stack, t),
                              cfg.measure, pixel_size, voxel, info.get("diameter"), source) for t in range(frames)]
    files.update(_write_cells_and_spots(measured, stack, name, pixel_size, run, written))
    rows = []
    for t, frame in enumerate(measured):
        for problem in problems(frame, source):
            warn(f"warning: {problem}")
        rows.append(_frame_row(frame, t, stack, name, labels, info, flags, pixel_size, {**files, **frame.fields}))
        run.nuclei.append(frame.table)
    if pixel_size is not None:
        run.pixel_size = run.pixel_size or pixel_size
    return rows


def _flags(stack: Stack, cfg: Settings) -> list[str]:
    """The flags a stack has before it is segmented: the options that do not apply to it."""
    flags, measure = [], cfg.measure
    if (measure.positive or measure.cell_expansion or measure.spots) and stack.channels is None:
        flags.append(NO_CHANNELS)
    elif (measure.cell_expansion or measure.spots) and "Z" in stack.axes:
        flags.append(NOT_IN_3D)
    if cfg.stacks.track and "T" not in stack.axes:
        flags.append("--track: no time axis")
    return flags


def _frame_channels(stack: Stack, t: int) -> Channels | None:
    """The channels of frame ``t`` (of the whole stack when it has no time axis): (C, [Z,] H, W)."""
    if stack.channels is None:
        return None
    every = stack.channels[:, t] if "T" in stack.axes else stack.channels
    keys = Channels(every, stack.channel_names).keys
    return Channels(every, stack.channel_names, keys.index(stack.channel) if stack.channel in keys else None)


def measure_frame(labels: np.ndarray, intensity: np.ndarray, channels: Channels | None, options: MeasureOptions,
                  pixel_size: float | None, voxel, diameter: float | None, source: object) -> Measured:
    """One frame of a stack measured: a time-lapse's frame as a plane is
    (:func:`pipeline.batch.image_features.measure_image`); a z-stack's 3D nuclei by
    :func:`pipeline.method.volumes.measure_volumes`, their channels and positive calls by
    ``measure_image`` on the planes laid end to end, (Z·H, W): those depend on each nucleus's voxels,
    not on their neighbours, so they are the 3D nuclei's (cells and spots, which do, are not measured).

    Parameters
    ----------
    labels, intensity : (H, W) or (Z, H, W) arrays
    channels : Channels, optional
        (C, H, W) or (C, Z, H, W), as stored.
    voxel : (z, y, x) µm or None (:func:`_voxel_size`)
    diameter : float, optional
        px, the spots' scale.

    Returns
    -------
    measured : Measured
        Its table has ``image`` first, ``frame`` and ``time_s`` added by the caller.
    """
    if labels.ndim == 2:
        return measure_image(labels, intensity, channels, options, pixel_size, None, diameter, source)
    from pipeline.method.volumes import measure_volumes

    table = measure_volumes(labels, voxel, intensity)  # the 2D rows' names for rows and columns
    table = table.rename(columns={"centroid_y": "centroid_row", "centroid_x": "centroid_col"})
    if channels is None:
        return Measured(table)
    width = labels.shape[-1]
    flat = Channels(channels.array.reshape((len(channels.array), -1, width)), channels.names, channels.nuclear)
    measured = measure_image(labels.reshape((-1, width)), intensity.reshape((-1, width)), flat,
                             replace(options, cell_expansion=None, spots=()), pixel_size, None, None, source)
    shape = set(measurement_columns(pixel_size))
    channel_part = measured.table[[c for c in measured.table.columns if c not in shape]]
    measured.table = pd.concat([table, channel_part.set_axis(table.index)], axis=1)
    return measured


def _track(labels: np.ndarray, stack: Stack, source: Path, name: str, pixel_size: float | None,
           info: dict[str, Any], run: Tables, written: list[Path]) -> tuple[np.ndarray, dict[str, str]]:
    """``--track``: the labels numbered by track, ``tracks/<name>.csv`` and ``tracks/<name>.xml`` written
    (their ``label`` is the nucleus's label in ``labels/<name>.tif``: its track id); returns the labels and
    the ``counts.csv`` fields naming the files."""
    from pipeline.files.trackmate import write_trackmate_xml
    from pipeline.method.tracking import track_labels

    labels, tracks = track_labels(labels, name=str(source), anisotropy=info.get("anisotropy") or 1.0)
    tracks["label"] = tracks["track_id"]  # the written stack labels each nucleus with its track id
    files = {TRACKS_COLUMN: tracks_file(name), TRACKMATE_COLUMN: trackmate_file(name)}
    written.append(run.outdir / files[TRACKS_COLUMN])
    write_csv(written[-1], tracks)
    written.append(run.outdir / files[TRACKMATE_COLUMN])
    write_trackmate_xml(written[-1], tracks, pixel_size=pixel_size, frame_interval=stack.frame_interval,
                        image_name=Path(source).name, shape=labels.shape[-2:], n_frames=len(labels),
                        z_spacing=stack.z_spacing, planes=labels.shape[1] if labels.ndim == 4 else 1)
    return labels, files


def _write_cells_and_spots(measured: list[Measured], stack: Stack, name: str, pixel_size: float | None, run: Tables,
                           written: list[Path]) -> dict[str, str]:
    """``cells/<name>.tif`` (the frames' cells as a label stack) and ``spots/<name>.csv`` (the frames'
    spots, with ``frame``) when measured; returns the ``counts.csv`` fields naming them."""
    files = {}
    if measured[0].cells is not None:
        files[CELLS_COLUMN] = cells_file(name)
        written.append(run.outdir / files[CELLS_COLUMN])
        write_label_stack(written[-1], np.stack([m.cells for m in measured]), stack.axes, pixel_size,
                          stack.z_spacing, stack.frame_interval)
    if measured[0].spots is not None:
        files[SPOTS_COLUMN] = spots_file(name)
        written.append(run.outdir / files[SPOTS_COLUMN])
        write_csv(written[-1], pd.concat([m.spots.assign(frame=t)[["frame", *m.spots.columns]]
                                          for t, m in enumerate(measured)], ignore_index=True))
    return files


def _frame_row(measured: Measured, t: int, stack: Stack, name: str, labels: np.ndarray, info: dict[str, Any],
               flags: list[str], pixel_size: float | None, fields: dict[str, Any]) -> dict[str, Any]:
    """The ``counts.csv`` fields of frame ``t``; its table given ``image``, ``frame``, ``time_s`` and ``track_id``."""
    table = measured.table
    if "T" in stack.axes:
        table.insert(1, "frame", t)
        if stack.frame_interval:
            table.insert(2, "time_s", t * stack.frame_interval)
    if TRACKS_COLUMN in fields:
        table.insert(2, "track_id", table["label"])  # the label is the track id in every frame
    table.insert(0, "image", name)
    extra: dict[str, Any] = {"frame": t} if "T" in stack.axes else {}
    if "Z" in stack.axes:
        extra.update(planes=labels.shape[1], z_method=info.get("z_method"), anisotropy=info.get("anisotropy"),
                     median_volume_voxels=table["volume_voxels"].median())
    size = "volume_voxels" if "Z" in stack.axes else "area_px"
    return CountsRow(
        name=name, count=len(table), median_area_px=table[size].median() if size == "area_px" else math.nan,
        image_type=info.get("image_type"), diameter=info.get("diameter"), estimated=info.get("estimated"),
        scale=info.get("scale"), confidence=info.get("confidence"), count_risk=info.get("count_risk"),
        flag="; ".join([*flags, *measured.flags]),
        pixel_size=pixel_size, median_area_um2=table["area_um2"].median() if "area_um2" in table else None,
        extra={**extra, **fields},
    ).fields()


def _planes(stack: Stack, channel: str | None) -> np.ndarray:
    """(N, H, W[, S]) planes of a stack, frames major; one colour channel alone with ``--channel``."""
    planes = stack.planes
    if channel is not None:
        planes = np.stack([colour_channel(p, channel) for p in planes])
    return planes


def stack_anisotropy(stack: Stack, pixel_size: float | None, given: float | None) -> float | None:
    """A z-stack's anisotropy (z step / pixel size): ``--anisotropy`` when given, else the file's
    voxel size; None when neither says (then :func:`pipeline.model.stack_segmenter.segment_stack`
    estimates it from the nuclei)."""
    if given is not None:
        return given
    if stack.z_spacing and pixel_size:
        return stack.z_spacing / pixel_size
    return None


def anisotropy_note(result) -> str | None:
    """The one line saying that a stack's anisotropy was not given and what was used instead
    (``result``: a :class:`pipeline.model.stack_segmenter.StackSegmentation`); None when it was given."""
    if result.anisotropy_estimated is None:
        return None
    if result.anisotropy_estimated:
        return (f"anisotropy not given (no voxel size in the file, no --anisotropy): {result.anisotropy:.2f} "
                "estimated from the nuclei, taken as deep as wide; give --anisotropy")
    return "anisotropy not given (no voxel size in the file, no --anisotropy) nor estimable: 1 assumed, give --anisotropy"


def depth_note(labels: np.ndarray, anisotropy: float) -> str | None:
    """The line flagging 3D nuclei (``labels``, (Z, H, W)) whose median depth, z extent × ``anisotropy``
    (px), is not within :data:`DEPTH_RATIO` of their median width (the diameter of the disc as large as
    a nucleus's largest section, px); None when it is, or when there are no nuclei."""
    from pipeline.method.volumes import section_profiles

    _, counts = section_profiles(labels, np.zeros(labels.shape, np.float32))
    present = counts[1:].any(axis=1)
    if not present.any():
        return None
    in_plane = counts[1:][present] > 0
    extent = labels.shape[0] - np.argmax(in_plane[:, ::-1], axis=1) - np.argmax(in_plane, axis=1)
    depth = float(np.median(extent)) * anisotropy
    width = float(np.median(2 * np.sqrt(counts[1:][present].max(axis=1) / np.pi)))
    if 1 / DEPTH_RATIO <= depth / width <= DEPTH_RATIO:
        return None
    return (f"nuclei {depth / width:.1f} times as deep as wide (median z extent × anisotropy {depth:.0f} px, "
            f"width {width:.0f} px): check the voxel size or --anisotropy")


def _segment_volumes(per_frame: np.ndarray, segmenter, cfg: Settings, stack: Stack, pixel_size: float | None,
                     flags: list[str], source: Path) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """3D labels (T, Z, H, W) int32 of every frame's z-stack, the planes shown (T, Z, H, W, 3) uint8,
    and the segmentation's fields (diameter, scale, anisotropy). An anisotropy estimated on the
    first frame is used for the others; the line saying so is a flag and a warning."""
    from pipeline.model.stack_segmenter import normalised_plane, segment_stack

    options = cfg.stacks
    anisotropy = stack_anisotropy(stack, pixel_size, options.anisotropy)
    labels, shown, diameter, info = [], [], cfg.diameter, {}
    for planes in per_frame:
        if planes.ndim == 4 and planes.shape[-1] != 3:  # grey + alpha, RGBA: as the 2D path reads them
            planes = np.stack([as_rgb01(p) for p in planes])
        try:
            result = segment_stack(segmenter, planes, options.method, anisotropy, diameter=diameter,
                                   progress=progress)
        except NucleiError as exc:
            raise NucleiError(f"{source}: {exc}") from None
        diameter = diameter or result.diameter  # every frame at the first one's diameter
        if anisotropy is None:
            anisotropy, note = result.anisotropy, anisotropy_note(result)
            flags.append(note)
            warn(f"warning: {source}: {note}")
        if not labels and (note := depth_note(result.labels, result.anisotropy)):
            flags.append(note)
        labels.append(result.labels)
        shown.append(np.stack([display_uint8(normalised_plane(planes, z, result.normalization))
                               for z in range(len(planes))]))  # the contrast the network saw
        info = info or {"diameter": result.diameter, "scale": result.scale, "estimated": result.estimated,
                        "z_method": options.method,
                        "image_type": result.image_type, "anisotropy": round(result.anisotropy, 4)}
    return np.stack(labels), np.stack(shown), info


def _segment_frames(frames: np.ndarray, segmenter, cfg: Settings,
                    flags: list[str]) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """2D labels (T, H, W) int32 of a time-lapse's frames, each normalised on its own and segmented
    at the first frame's diameter; the frames shown (T, H, W, 3) uint8; the segmentation's fields."""
    labels = np.zeros(frames.shape[:3], np.int32)
    shown = np.zeros((*frames.shape[:3], 3), np.uint8)
    diameter, info = cfg.diameter, {}
    for t in progress(range(len(frames)), desc="frames", unit="frame"):
        network = segmenter.normalize(as_rgb01(frames[t]))
        result = segmenter.segment(network, diameter=diameter, normalized=True, image_type=cfg.image_type)
        if t == 0:
            diameter = diameter or result.diameter
            info = {"diameter": result.diameter, "estimated": result.estimated, "scale": result.scale,
                    "image_type": result.image_type, "confidence": result.confidence,
                    "count_risk": result.count_risk}
            if result.flag:
                flags.append(result.flag)
        labels[t], shown[t] = result.labels, display_uint8(network)
    return labels, shown, info


def _voxel_size(stack: Stack, pixel_size: float | None, anisotropy: float | None):
    """(z, y, x) µm of a z-stack's voxels: the z step is ``--anisotropy`` × the pixel size when given,
    else the file's; None when the pixel size or the z step is unknown (no µm³ from a guess)."""
    if "Z" not in stack.axes or pixel_size is None:
        return None
    z = pixel_size * anisotropy if anisotropy else stack.z_spacing
    return None if z is None else (z, pixel_size, pixel_size)
