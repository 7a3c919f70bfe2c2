"""One input file of ``nuclei segment`` or ``nuclei measure``: what it is, its images segmented or
measured and written, its rows of the tables.

One path for every input:

1. **What it is** is decided once, by :func:`source_of`: one or more planes (each its own image;
   with ``--nuclear-channel`` multi-channel images), a huge image read piece by piece (a slide), or
   z-stacks and time-lapses (:data:`SOURCE_KINDS`);
2. **its images**, one at a time (:func:`each_image`, the one loop), are segmented into one
   result each (:meth:`pipeline.model.segmenter.Segmenter.segment`; a slide block by block,
   :mod:`pipeline.batch.slide`; a stack in 3D or frame by frame, :mod:`pipeline.batch.stack_file`)
   or read with their label image (``nuclei measure``);
3. **every output** is written through the output folder's writers: the label image, the overlay
   and its thumbnail (:meth:`pipeline.batch.output_folder.Tables.write_overlay`), the ``counts.csv``
   row (:class:`pipeline.batch.output_folder.CountsRow`), the ``nuclei.csv`` rows; a plane's
   measurements, cells, spots and ``--export`` files by :func:`image_outputs`, shared by both
   commands; the channels of every kind measured by :func:`pipeline.batch.image_features.measure_image`.

A bad input never raises: it is a 'failed' row, and its partial files (and the outputs an earlier
run made of the same file) are removed. It runs in :func:`pipeline.batch.segment.segment_images`'s
process or on a Dask worker (:mod:`pipeline.batch.cluster`).

Must not: list inputs, take the output folder's lock, or write the tables and report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.batch.export import read_label_image
from pipeline.batch.image_features import Channels, measure_image, problems
from pipeline.batch.outlines import FORMATS, export_path, write_export
from pipeline.batch.output_folder import (
    CELLS_COLUMN,
    SPOTS_COLUMN,
    CountsRow,
    SlideTable,
    Tables,
    cells_file,
    image_files,
    labels_file,
    overlay_file,
    remove_files,
    rewrite_table,
    spots_file,
    unique_name,
    warn,
)
from pipeline.batch.settings import MeasureOptions, Settings, StackOptions
from pipeline.batch.slide import measure_slide, segment_slide, shown_labels
from pipeline.batch.stack_file import segment_stack_image, stack_fields
from pipeline.config.params import SegmentConfig
from pipeline.errors import NucleiError
from pipeline.files.channels import (
    ChannelPattern,
    channel_keys,
    find_channel,
    read_channel_files,
    read_channel_images,
)
from pipeline.files.io import (
    Plane,
    as_rgb01,
    colour_channel,
    encode_png,
    read_planes,
    write_csv,
    write_labels,
    write_png,
)
from pipeline.files.orientation import describe
from pipeline.files.planes import ChannelImage
from pipeline.files.slide_reader import Slide, open_slide, slide_of
from pipeline.files.stacks import frame_files, read_frames, read_stacks
from pipeline.method.features import intensity_of
from pipeline.method.intensity import normalize_image
from pipeline.method.labels import indexable_labels
from pipeline.method.overlay import display_uint8, draw_outlines, thumbnail

#: Smallest image side accepted, in pixels.
MIN_SIDE = 8
#: The flag of an image segmented out of core when ``--export`` was asked for.
SLIDE_EXPORT_NOTE = "--export: outlines not written for an image segmented out of core (docs/scale-out.md)"
#: What an input is (:func:`source_of`): planes (each an image), a huge image read piece by piece,
#: z-stacks (``ZYX``), time-lapses (``TYX``, ``TZYX``; a ``--frames`` folder).
SOURCE_KINDS = ("plane", "slide", "stack", "movie")

__all__ = ["SOURCE_KINDS", "Source", "each_image", "finish_batch", "image_outputs", "measure_file",
           "segment_file", "segment_plane", "source_of"]


# --------------------------------------------------------------------------- what an input is


@dataclass
class Source:
    """One input as :func:`source_of` found it: ``kind`` (:data:`SOURCE_KINDS`; None when not read)
    and ``items``, its images: :class:`Plane` or :class:`ChannelImage` (planes), one
    :class:`pipeline.files.slide_reader.Slide`, or :class:`pipeline.files.stacks.Stack` (stacks,
    movies). ``labels``: a slide's label image read piece by piece (``nuclei measure``)."""

    path: Path
    kind: str | None
    items: list
    labels: Slide | None = None


def source_of(path: Path, slide_pixels: int, options: MeasureOptions, stacks: StackOptions | None = None,
              labels: dict[str, Path] | None = None, name: str = "", read: bool = True) -> Source:
    """Decide what one input is, and read it: the one place that decides.

    In order: a ``--frames`` folder is a time-lapse; the files of ``--channel-files`` are a plane; a
    file read piece by piece larger than ``slide_pixels`` is a slide
    (:func:`pipeline.files.slide_reader.slide_of`; with ``--axes`` none is: the user says it is a
    stack), and for ``nuclei measure`` (``labels``: its label files by casefolded name,
    :func:`label_index`) only when its label image ``name`` is read piece by piece too; a TIFF with
    Z or T axes is a z-stack or a time-lapse (:func:`pipeline.files.stacks.read_stacks`; ``stacks``
    None: stacks are not read, ``nuclei measure``); anything else is its planes
    (:func:`read_images`). ``read`` False: only a slide is opened, anything else has kind None and
    is not read.

    Raises
    ------
    NucleiError
        The errors of the readers (one line naming the file).
    """
    frames = stacks is not None and stacks.frames
    if not frames and options.channel_files is None and not (stacks is not None and stacks.axes):
        slide = slide_of(path, slide_pixels)  # never a stack without --axes: one plane, up to 4 colours
        nuclei = None if slide is None or labels is None else open_slide(find_labels(name, labels, path))
        if slide is not None and (labels is None or nuclei is not None):
            return Source(path, "slide", [slide], nuclei)
    if not read:
        return Source(path, None, [])
    if frames:
        return Source(path, "movie", [read_frames(frame_files(path))])
    found = None if stacks is None or options.channel_files is not None else read_stacks(
        path, stacks.axes, options.nuclear_channel)
    if found is not None:
        return Source(path, "movie" if any("T" in stack.axes for stack in found) else "stack", found)
    return Source(path, "plane", read_images(path, options))


def each_image(source: Source, base_name: str, run: Tables, fields: Callable[[Any], dict[str, Any]],
               work: Callable[[Any, str, dict[str, Any], list[Path]], list[dict[str, Any]]]) -> None:
    """The one loop over the images of an input: each named (``base_name`` and its tag, unique in
    the batch), its row started with ``fields(image)``, then ``work(image, name, row, written)``
    gives its rows' fields (a time-lapse: one per frame), added to ``run``. An image that fails is
    a failed row and its files (``written``) are removed; the batch goes on. The image is handed
    over, not kept here: its memory is freed once ``work`` is done with it."""
    items = source.items
    for k in range(len(items)):
        item = items[k]
        tag = getattr(item, "tag", "")
        name = unique_name(base_name + tag, run.names) if tag else base_name
        row = {"source": str(source.path), "image": name, **fields(item)}
        del item
        written: list[Path] = []
        try:
            rows = work(_take(items, k), name, row, written)
        except Exception as exc:  # one bad image never stops the batch
            _fail(run, row, exc, source.path, written)
            continue
        run.counts += [{**row, **made} for made in rows]


def _segment_image(image: Plane | ChannelImage, source: Path, name: str, segmenter, settings: Settings,
                   run: Tables, written: list[Path]) -> dict[str, Any]:
    """Segment, measure and write one image; returns its counts.csv row fields.

    A :class:`Plane` (each plane its own image): ``plane.array`` (H, W) or (H, W, C) in the file's
    units (:func:`pipeline.files.io.read_planes`); the nuclei are measured on it (on its
    ``settings.channel`` alone when set). A :class:`ChannelImage` (``--nuclear-channel``): its nuclear
    channel is segmented and ``mean_intensity`` measured on it, and every channel is measured. The
    network sees the image normalised. Files written are appended to ``written``.
    """
    pixel_size = settings.pixel_size or image.pixel_size  # --pixel-size, else the file's metadata
    array, intensity, channels = nuclear_image(image, source, settings.channel, settings.measure)
    del image  # the caller holds no reference: the file's array is freed once measured
    result, shown = segment_plane(array, segmenter, settings.diameter, settings.image_type)
    del array
    return image_outputs(
        name, result.labels, shown, intensity, channels, settings.measure, pixel_size, source,
        run, written, exports=settings.exports, thumbnail_side=settings.segment.thumbnail,
        segmentation=result)


def segment_plane(array: np.ndarray, segmenter, diameter: float | None = None, image_type: str | None = None):
    """One plane segmented as ``nuclei segment`` segments every plane (and the napari plugin a layer).

    Parameters
    ----------
    array : (H, W) or (H, W, C) array
        As stored; normalised as the model was trained (:meth:`pipeline.model.segmenter.Segmenter.normalize`).
    diameter : float, optional
        px; estimated when None.
    image_type : str, optional
        ``--image-type``; typed when None.

    Returns
    -------
    result : pipeline.model.segmenter.Segmentation
    shown : (H, W, 3) uint8
        The image the network saw, to draw the outlines on.
    """
    network = segmenter.normalize(as_rgb01(array))
    result = segmenter.segment(network, diameter=diameter, normalized=True, image_type=image_type)
    return result, display_uint8(network)


def nuclear_image(image: Plane | ChannelImage, source: Path, channel: str | None, options: MeasureOptions,
                  segmented: bool = True):
    """What one image gives the network and the measurements (``channel``: ``--channel``).

    Returns
    -------
    array : (H, W) or (H, W, C) array
        What is segmented: the plane (its ``--channel``), or the nuclear channel.
    intensity : (H, W) float array
        What ``mean_intensity`` is measured on (:func:`pipeline.method.features.intensity_of`).
    channels : Channels or None
        Every channel of a :class:`ChannelImage`.

    Raises
    ------
    NucleiError
        An unknown nuclear channel, or (when ``segmented``) a constant one: nothing to segment.
    """
    if isinstance(image, Plane):
        array = image.array if channel is None else colour_channel(image.array, channel)
        return array, intensity_of(array), None
    k = find_channel(options.nuclear_channel, image.names, source)
    array = image.channels[k]
    if segmented and array.min() == array.max():
        raise NucleiError(f"{source}: the nuclear channel {channel_keys(image.names)[k]} is constant "
                          f"({array.flat[0]:g}): no nuclei to segment")
    return array, intensity_of(array), Channels(image.channels, image.names, k)


def image_outputs(name: str, labels: np.ndarray, shown: np.ndarray, intensity: np.ndarray, channels: Channels | None,
                  options: MeasureOptions, pixel_size: float | None, source: object, run: Tables, written: list[Path],
                  *, exports: tuple[str, ...] = (), thumbnail_side: int = SegmentConfig.thumbnail, segmentation=None,
                  diameter: float | None = None) -> dict[str, Any]:
    """Measure one image's nuclei and write its files: the one home of the outputs of an image,
    segmented (``nuclei segment``) or with labels made elsewhere (``nuclei measure``).

    Writes ``labels/<name>.tif``, ``overlays/<name>.png`` (positive nuclei in their own colours),
    ``cells/<name>.tif``, ``spots/<name>.csv`` and the ``exports``; adds the ``nuclei.csv`` rows and
    the thumbnail to ``run``; returns the ``counts.csv`` fields.

    Parameters
    ----------
    labels : (H, W) int array
    shown : (H, W, 3) uint8
        The image the outlines are drawn on.
    intensity, channels
        :func:`nuclear_image`.
    segmentation : pipeline.model.segmenter.Segmentation, optional
        Its image type, diameter, scale, confidences and flag (None: labels made elsewhere).
    diameter : float, optional
        px, the spots' scale when there is no segmentation (default: the nuclei's median).
    """
    result = segmentation
    spots_diameter = diameter if result is None else result.diameter
    indexed, ids = indexable_labels(labels)  # sparse ids (labels made elsewhere) measured as 1..N, given back below
    confidence = None if result is None else result.nucleus_confidence
    measured = measure_image(indexed, intensity, channels, options, pixel_size,
                             confidence if ids is None or confidence is None else confidence[ids], spots_diameter,
                             source)
    for problem in problems(measured, source):
        warn(f"warning: {problem}")
    written.append(run.outdir / labels_file(name))
    write_labels(written[-1], labels)
    colours = measured.colours(int(indexed.max(initial=0)))
    overlay = draw_outlines(shown, indexed, colours)
    del shown, indexed
    if ids is not None:
        measured.table["label"] = ids[measured.table["label"].to_numpy()]
        measured.cells = None if measured.cells is None else ids[measured.cells]
        if measured.spots is not None:
            measured.spots["nucleus"] = ids[measured.spots["nucleus"].to_numpy(np.int64)]
    run.write_overlay(name, overlay, thumbnail_side, written)
    del overlay
    files: dict[str, Any] = {}
    if measured.cells is not None:
        files[CELLS_COLUMN] = cells_file(name)
        written.append(run.outdir / files[CELLS_COLUMN])
        write_labels(written[-1], measured.cells)
    if measured.spots is not None:
        files[SPOTS_COLUMN] = spots_file(name)
        written.append(run.outdir / files[SPOTS_COLUMN])
        write_csv(written[-1], measured.spots)
    table = measured.table
    for fmt in exports:  # --export: geojson/<name>.geojson, rois/<name>.zip
        files[FORMATS[fmt].column] = export_path(fmt, name)
        written.append(run.outdir / files[FORMATS[fmt].column])
        write_export(fmt, written[-1], labels, table)
    table.insert(0, "image", name)
    run.nuclei.append(table)
    flag = "; ".join(f for f in (result.flag if result else "", *measured.flags) if f)
    median_um2 = None if pixel_size is None else table["area_um2"].median()
    made = dict(name=name, count=len(table), median_area_px=table["area_px"].median(),  # NaN if none
                flag=flag, pixel_size=pixel_size, median_area_um2=median_um2, extra={**files, **measured.fields})
    row = CountsRow(**made) if result is None else CountsRow.segmented(result, **made)
    if pixel_size is not None:
        run.pixel_size = run.pixel_size or pixel_size
    return row.fields()


def segment_file(source: Path, base_name: str, segmenter, cfg: Settings, run: Tables, **dask: Any) -> None:
    """Segment every image of one input file (:func:`source_of`, :func:`each_image`), adding its rows to
    ``run``; never raises for bad input.

    A huge image read piece by piece goes to :mod:`pipeline.batch.slide` (``dask``: its
    ``map_ordered`` and ``block_segmenter``, to segment its blocks on a cluster), stacks to
    :mod:`pipeline.batch.stack_file`, planes to :meth:`pipeline.model.segmenter.Segmenter.segment`."""
    try:
        found = source_of(source, cfg.segment.slide_pixels, cfg.measure, cfg.stacks)
    except Exception as exc:  # one bad file never stops the batch
        _fail(run, {"source": str(source), "image": base_name}, exc, source, [])
        return
    if found.kind == "slide":
        pixel_size = cfg.pixel_size or found.items[0].pixel_size  # --pixel-size, else the file's metadata

        def work(slide, name, row, written):
            return _slide_outputs(run, name, row, written, cfg.exports, pixel_size, cfg.segment.thumbnail, lambda: (
                segment_slide(slide, name, run.outdir, segmenter, pixel_size, cfg.diameter, cfg.channel,
                              image_type=cfg.image_type, options=cfg.measure, **dask)))

        each_image(found, base_name, run, lambda slide: slide_fields(slide, pixel_size), work)
    elif found.kind in ("stack", "movie"):
        each_image(found, base_name, run, stack_fields, lambda stack, name, row, written: segment_stack_image(
            stack, source, name, segmenter, cfg, run, written))
    else:
        found.items = _large_enough(found.items, source, base_name, run)
        each_image(found, base_name, run, image_fields, lambda image, name, row, written: [_segment_image(
            image, source, name, segmenter, cfg, run, written)])


def read_images(source: Path, options: MeasureOptions) -> list[Plane] | list[ChannelImage]:
    """The images of one input: its planes, or with ``--nuclear-channel`` its multi-channel images
    (:func:`pipeline.files.channels.read_channel_images`; ``--channel-files``: the files ``source``
    stands for, :func:`pipeline.files.channels.read_channel_files`)."""
    if options.channel_files is not None:
        return [read_channel_files(source, ChannelPattern(options.channel_files), options.channel_values)]
    if options.channels:
        return read_channel_images(source)
    return read_planes(source)


def image_fields(image: Plane | ChannelImage) -> dict[str, Any]:
    """The ``counts.csv`` fields of one image as read: series, plane, size, pixel type, orientation."""
    array = image.array if isinstance(image, Plane) else image.channels[0]
    return {"series": image.series, "plane": image.index, "height": array.shape[0], "width": array.shape[1],
            "pixel_type": str(array.dtype), "orientation": describe(image.orientation)}


def slide_fields(slide: Slide, pixel_size: float | None) -> dict[str, Any]:
    """The ``counts.csv`` fields of a slide as read (``pixel_size``: µm, given or the file's)."""
    height, width = slide.shape
    return {"series": 0, "plane": 0, "height": height, "width": width, "pixel_type": str(slide.dtype),
            "pixel_size_um": pixel_size}


def _large_enough(planes: list, source: Path, base_name: str, run: Tables) -> list:
    """The planes of at least :data:`MIN_SIDE` px a side; one failed row for the others."""
    def size(plane) -> tuple[int, int]:
        return (plane.array if isinstance(plane, Plane) else plane.channels[0]).shape[:2]

    small = [p for p in planes if min(size(p)) < MIN_SIDE]
    if small:  # one line for them all (an H x W x 2 array saved as 256 pages of 256 x 2 px)
        h, w = size(small[0])
        what = f"{len(small)} of its {len(planes)} planes are" if len(planes) > 1 else "image is"
        error = NucleiError(
            f"{source}: {what} too small to segment ({w}x{h} px; at least {MIN_SIDE} px a side)"
        )
        _fail(run, {"source": str(source), "image": base_name}, error, source, [])
    return [p for p in planes if min(size(p)) >= MIN_SIDE]


def _slide_outputs(run: Tables, name: str, row: dict[str, Any], written: list[Path], exports: tuple[str, ...],
                   pixel_size: float | None, thumbnail_side: int, make: Callable) -> list[dict[str, Any]]:
    """A slide segmented or measured out of core (``make()``: :func:`pipeline.batch.slide.segment_slide`
    or :func:`~pipeline.batch.slide.measure_slide`): its overlay written, its table added to ``run``;
    returns its row's fields, the flag saying that no ``--export`` files were written for it. On an
    error, ``written`` gets the files it wrote (:func:`pipeline.batch.output_folder.image_files` written since)."""
    started = time.time()
    try:
        fields, table, overlay = make()
        run.write_overlay(name, overlay, thumbnail_side, written)
    except Exception:
        outputs = [run.outdir / file for file in image_files(name, ())]
        written += [p for p in outputs if p.is_file() and p.stat().st_mtime >= started]
        raise
    if exports:
        fields["flag"] = "; ".join(f for f in (fields["flag"], SLIDE_EXPORT_NOTE) if f)
    run.nuclei.append(table)
    run.pixel_size = run.pixel_size or pixel_size
    return [fields]


def _fail(run: Tables, row: dict[str, Any], exc: Exception, source: Path, written: list[Path]) -> None:
    """Record a failed image; remove its partial files, and the outputs an earlier run made of it.

    Only files of this input are removed: those it wrote now, and ``labels/<name>.tif``,
    ``overlays/<name>.png``, ``tables/<name>.csv`` (a slide's) and the exports when the earlier
    ``counts.csv`` says they came from the same file.
    Never raises: a file that cannot be removed is one more warning.
    """
    row.update(_failure(exc, source))
    warn(f"error: {row['error']}")
    run.counts.append(row)
    name = row["image"]
    run.thumbnails.pop(name, None)  # its overlay, written before the failure, is removed with it
    if run.earlier.get(name) == str(source):
        written = [*written, *(run.outdir / file for file in image_files(name))]
    for problem in remove_files(written):
        warn(f"error: {problem}")


def _take(items: list, k: int):
    """``items[k]``, leaving ``None`` in its place (so that the caller holds no reference)."""
    item, items[k] = items[k], None
    return item


def _failure(exc: Exception, source: Path) -> dict[str, Any]:
    """counts.csv fields of an image that failed: a one-line error naming the file."""
    from pipeline.model.runtime import is_out_of_memory, requested_bytes

    if isinstance(exc, NucleiError):
        message = str(exc)
    elif is_out_of_memory(exc):  # MemoryError, or torch's allocator refusing
        asked = requested_bytes(exc)
        what = f"asked for {asked / 2**30:.1f} GiB at once; " if asked else ""
        message = f"{source}: too large for this machine ({what}lower segment.block_size in params.yaml)"
    else:  # a bug, or a library refusing this input: name it, keep the batch going
        message = f"{source}: unexpected error ({type(exc).__name__}: {exc})"
    return {"count": None, "status": "failed", "error": " ".join(message.split())}


def finish_batch(run: Tables, options: MeasureOptions, thumbnail_side: int = SegmentConfig.thumbnail) -> None:
    """``--positive-scope batch``, once every image is measured: the calls of each ``auto`` channel
    over the batch (:func:`pipeline.batch.image_features.batch_positivity`), the nuclei of slides
    included (their ids, means and calls read from their streamed tables, :func:`slide_calls`; the
    calls written back in chunks; a time-lapse's frames each on its own), then each image's overlay (its
    thumbnail) and GeoJSON export redone with them (a stack's montage is not). Never raises: a file
    that cannot be rewritten is a warning."""
    if options.positive_scope != "batch" or not any(value is None for _, value in options.positive):
        return
    from pipeline.batch.image_features import batch_positivity

    rows = {(row["image"], row.get("frame")): row for row in run.counts if row.get("status") == "ok"}
    images = []  # (row, table, its SlideTable or None): a time-lapse's frames each with its own row
    for table in run.nuclei:
        if isinstance(table, SlideTable):
            if (table.image, None) in rows and any(c.startswith("positive_") for c in table.columns):
                images.append((rows[table.image, None], slide_calls(table), table))
        elif len(table) and (key := (table["image"].iloc[0], _frame(table))) in rows:
            images.append((rows[key], table, None))
    batch_positivity([(row, table) for row, table, _ in images], options)
    for row, table, slide in images:
        if slide is not None:
            try:
                calls = table[[c for c in table.columns if c.startswith("positive_")]]
                rewrite_table(slide.path, list(slide.columns),
                              lambda chunk, calls=calls: chunk.assign(**{c: calls[c].loc[chunk.index].to_numpy()
                                                                          for c in calls.columns}))
            except Exception as exc:
                warn(f"warning: {row['image']}: {slide.path} not rewritten with the batch's positive calls ({exc})")
        if "axes" in row:  # a stack's montage keeps its outlines (its tables have the calls)
            continue
        try:
            _recolour(run, row, table, thumbnail_side, slide is not None)
        except Exception as exc:  # the tables hold the calls: a picture that cannot be redone is a warning
            warn(f"warning: {row['image']}: overlay not redrawn with the batch's positive calls ({exc})")


def _frame(table: pd.DataFrame) -> int | None:
    """The frame of a time-lapse's ``nuclei.csv`` rows, None for any other image's."""
    return int(table["frame"].iloc[0]) if "frame" in table else None


def slide_calls(table: SlideTable) -> pd.DataFrame:
    """A slide's ``label``, ``area_px``, ``mean_<key>`` and ``positive_<key>`` columns (of its --positive
    channels), read from its streamed table in chunks; the calls as booleans."""
    positive = [c for c in table.columns if c.startswith("positive_")]
    means = [f"mean_{c[len('positive_'):]}" for c in positive]
    frame = table.read(["label", "area_px", *means, *positive])
    return frame.astype({c: "boolean" for c in positive})


def _recolour(run: Tables, row: dict[str, Any], table: pd.DataFrame, thumbnail_side: int, slide: bool = False) -> None:
    """Redraw one image's overlay (outlines in the colours of its positive calls) and GeoJSON (a slide:
    its labels at the overlay's scale, :func:`pipeline.batch.slide.shown_labels`; it has no GeoJSON)."""
    from pipeline.batch.image_features import Measured
    from pipeline.files.io import read_labels

    name = row["image"]
    labels = (shown_labels if slide else read_labels)(run.outdir / labels_file(name))
    indexed, ids = indexable_labels(labels)
    calls = table
    if ids is not None:  # the rows of the labels shown, numbered as ``indexed``
        given = table["label"].to_numpy(np.int64)
        where = np.minimum(np.searchsorted(ids, given), ids.size - 1)
        calls = table[ids[where] == given].assign(label=where[ids[where] == given])
    n_labels = max(int(indexed.max(initial=0)), int(calls["label"].max()) if len(calls) else 0)
    colours = Measured(calls).colours(n_labels)
    overlay = read_planes(run.outdir / overlay_file(name))[0].array[..., :3]
    overlay = draw_outlines(overlay, indexed, colours)
    write_png(run.outdir / overlay_file(name), overlay)
    run.thumbnails[name] = encode_png(thumbnail(overlay, thumbnail_side))
    if not slide and "geojson" in run.exports and row.get(FORMATS["geojson"].column):
        write_export("geojson", run.outdir / row[FORMATS["geojson"].column], labels,
                     table.drop(columns="image"))


# --------------------------------------------------------------------------- nuclei measure


def measure_file(source: Path, base_name: str, labels: dict[str, Path], channel: str | None, options: MeasureOptions,
                 pixel_size: float | None, exports: tuple[str, ...], run: Tables, thumbnail_side: int = SegmentConfig.thumbnail,
                 slide_pixels: int = SegmentConfig.slide_pixels) -> None:
    """Measure every image of one input file with its label image (``nuclei measure``), adding its
    rows to ``run``; never raises for bad input.

    ``labels`` maps casefolded names to the label files of ``--labels`` (:func:`find_labels`); each
    image's label image must be its size. The outputs are those of ``nuclei segment``
    (:func:`image_outputs`) less what only a segmentation knows (image type, diameter, scale,
    confidence: empty). An image larger than ``slide_pixels`` that is read piece by piece, whose label
    image is too, is measured out of core (:func:`pipeline.batch.slide.measure_slide`), as ``nuclei
    segment`` decides (:func:`source_of`; stacks are read plane by plane).
    """
    try:
        found = source_of(source, slide_pixels, options, labels=labels, name=base_name)
    except Exception as exc:  # one bad file never stops the batch
        _fail(run, {"source": str(source), "image": base_name}, exc, source, [])
        return
    if found.kind == "slide":
        nuclei, here = found.labels, pixel_size or found.items[0].pixel_size

        def work(slide, name, row, written):
            return _slide_outputs(run, name, row, written, exports, here, thumbnail_side, lambda: measure_slide(
                slide, nuclei, name, run.outdir, here, channel, options))

        each_image(found, base_name, run, lambda slide: {**slide_fields(slide, here), "labels_source": str(nuclei.path)},
                   work)
        return

    def measure(image, name, row, written):
        found = find_labels(name, labels, source)
        nuclei = read_label_image(found)
        array, intensity, channels = nuclear_image(image, source, channel, options, segmented=False)
        if nuclei.shape != array.shape[:2]:
            raise NucleiError(f"{found}: {nuclei.shape[1]}x{nuclei.shape[0]} px, but its image {source} is "
                              f"{array.shape[1]}x{array.shape[0]} px")
        shown = display_uint8(normalize_image(as_rgb01(array)))
        here = pixel_size or image.pixel_size
        del image, array
        row["labels_source"] = str(found)
        return [image_outputs(name, nuclei, shown, intensity, channels, options, here, source, run, written,
                              exports=exports, thumbnail_side=thumbnail_side)]

    each_image(found, base_name, run, image_fields, measure)


def label_index(folder: Path) -> dict[str, Path]:
    """The label images of a folder (TIFF, PNG), by casefolded file stem; NucleiError naming both
    for two of one stem (``x.tif``, ``x.png``: :func:`pipeline.files.inputs.by_stem`)."""
    from pipeline.files.inputs import by_stem, list_inputs

    files, _ = list_inputs([folder])
    return by_stem(sorted(files), "keep one of them in --labels (which to measure is ambiguous)")


def find_labels(name: str, labels: dict[str, Path], source: object) -> Path:
    """The label image of output ``name``: ``<name>`` or ``<name>`` with the suffix another tool adds
    (:data:`pipeline.batch.export.LABEL_SUFFIXES`: ``_masks``, ``_cp_masks``, ``_labels``, ...).

    Raises
    ------
    NucleiError
        None found, naming the image and what was looked for.
    """
    from pipeline.batch.export import LABEL_SUFFIXES

    for candidate in (name, *(name + suffix for suffix in LABEL_SUFFIXES)):
        if candidate.casefold() in labels:
            return labels[candidate.casefold()]
    raise NucleiError(f"{source}: no label image {name}.tif (or {name}_masks, {name}_labels, ...) in --labels")
