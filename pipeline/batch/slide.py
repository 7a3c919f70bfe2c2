"""Whole slides and other huge images, out of core: lazy reading, blocks, stitching, streamed outputs.

An image larger than ``segment.slide_pixels`` whose file can be read piece by piece is never held
whole (:func:`pipeline.files.slide_reader.open_slide`): a tiled or striped TIFF / OME-TIFF through
tifffile's zarr store, an uncompressed TIFF memory-mapped, an OME-Zarr through zarr. Only an image stored in one compressed
piece (PNG, JPEG, a TIFF in one strip) must be decoded whole, and only that is refused as too
large (:func:`pipeline.files.planes.max_image_pixels`).

1. **Plan** (:func:`plan_slide`): a mosaic of full-resolution windows spread over the image
   (:data:`SAMPLE_PIXELS`) decides the intensity normalisation (one
   :class:`pipeline.method.intensity.Normalization` for every block), the image type and the nucleus
   diameter, hence the scale and the blocks (:meth:`pipeline.model.segmenter.Segmenter.block_geometry`).
2. **Blocks** (:func:`block_labels`): each block, with its margin of context, is read, normalised
   and segmented (:meth:`~pipeline.model.segmenter.Segmenter.segment_block`), and keeps the nuclei it
   owns: those whose centroid lies in its core (:func:`pipeline.method.blocks.owned_nuclei`). Blocks
   are independent: they run in this process or on Dask workers (:mod:`pipeline.batch.cluster`).
3. **Stitching** (:class:`Stitcher`), in row-major block order whatever order blocks finish in, so
   the result is the same on any number of workers: a block's nuclei are pasted where no earlier
   block put a nucleus; a nucleus that would lose more than half of its pixels to earlier blocks is
   the same nucleus seen twice and is dropped, one left smaller than ``min_size`` too. Labels are
   numbered 1, 2, ... in that order. A pasted nucleus is final (later blocks only fill free pixels),
   so it is measured at once, on its block.
4. **Outputs, streamed**: rows finished by every block that can reach them are written as tiles of
   ``labels/<name>.tif`` (uint32 tiled BigTIFF, :func:`pipeline.batch.slide_tables.write_label_tiff`);
   the nuclei's rows go to ``tables/<name>.csv`` block by block; the overlay ``overlays/<name>.png`` is
   drawn at 1/f scale (longest side at most :data:`OVERLAY_SIDE`). Memory: a band of (block + margin)
   rows of labels, a few blocks, the overlay.

Each block's nuclei are measured there, every channel with ``--nuclear-channel``, and streamed; the
final pass over the finished labels (cells, backgrounds, positive calls) follows:
:mod:`pipeline.batch.slide_tables`. ``nuclei measure`` of a slide with its label image
(:func:`measure_slide`) measures it block by block the same way, with the outputs of a segmented slide.

Must not: parse command lines, or load models (callers hand a Segmenter, or a callable giving one).
"""

from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.batch import slide_tables
from pipeline.batch.image_features import measure_image
from pipeline.batch.output_folder import CountsRow, SlideTable, slide_table_file
from pipeline.batch.settings import MeasureOptions
from pipeline.batch.slide_tables import (
    Streams,
    block_channels,
    channel_plan,
    copied_tiles,
    finish_streams,
    label_boxes,
    label_tiles,
    stream_block,
    write_label_tiff,
)
from pipeline.errors import NucleiError
from pipeline.files.io import as_rgb01, colour_channel
from pipeline.files.slide_reader import Slide, open_slide, opened_slide
from pipeline.method.blocks import core_of, paste_nuclei

#: Pixels of the mosaic of windows that plans a slide (normalisation, image type, diameter).
SAMPLE_PIXELS = 4_000_000
#: Side of one window of that mosaic, px.
SAMPLE_WINDOW = 512
#: Longest side of a slide's overlay PNG, px.
OVERLAY_SIDE = 4096
#: Side of the blocks of :func:`measure_slide`, px (a nucleus is measured in the block where its box starts).
MEASURE_BLOCK = 2048


# --------------------------------------------------------------------------- plan


@dataclass(frozen=True)
class SlidePlan:
    """What every block of a slide shares (:func:`plan_slide`)."""

    normalization: Any  #: :class:`pipeline.method.intensity.Normalization`
    image_type: str
    diameter: float | None
    estimated: bool
    scale: float
    block: int  #: block side, px of the image (margins included)
    margin: int  #: px
    min_size: int  #: px², nuclei left smaller by stitching are dropped
    channel: str | None = None  #: ``--channel``
    nuclear: int | None = None  #: ``--nuclear-channel``: the index of the channel segmented
    tta: str | None = None  #: every block's test-time augmentation (:meth:`~pipeline.model.segmenter.Segmenter.tta_for` the slide)


def network_input(raw: np.ndarray, channel: str | None = None, nuclear: int | None = None) -> np.ndarray:
    """Pixels as read → the (h, w, 3) float32 array normalisation starts from; per pixel, so a block
    gives the same values as the whole image would (float pixels are kept as they are: the
    normalisation is decided on their percentiles). ``nuclear``: that channel alone."""
    raw = nuclear_plane(raw, channel, nuclear)
    if np.issubdtype(raw.dtype, np.floating):
        raw = raw.astype(np.float32)
        return np.ascontiguousarray(np.repeat(raw[..., None], 3, -1) if raw.ndim == 2 else _rgb(raw))
    return as_rgb01(raw)


def nuclear_plane(raw: np.ndarray, channel: str | None = None, nuclear: int | None = None) -> np.ndarray:
    """The pixels segmented: ``raw``, its ``--channel`` colour, or its channel ``nuclear``."""
    if nuclear is not None:
        return raw[..., nuclear] if raw.ndim == 3 else raw
    return raw if channel is None else colour_channel(raw, channel)


def _rgb(array: np.ndarray) -> np.ndarray:
    return np.repeat(array[..., :1], 3, -1) if array.shape[-1] < 3 else array[..., :3]


def sample_mosaic(slide: Slide, n_pixels: int = SAMPLE_PIXELS, window: int = SAMPLE_WINDOW) -> np.ndarray:
    """About ``n_pixels`` of full-resolution pixels: the whole image when it is that small, else a
    g × g mosaic of ``window``-px windows spread evenly over it (the file's pixel type)."""
    height, width = slide.shape
    if height * width <= n_pixels:
        return slide.read(slice(0, height), slice(0, width))
    side_h, side_w = min(window, height), min(window, width)
    g = max(1, round(math.sqrt(n_pixels) / window))
    starts_r = np.linspace(0, height - side_h, g).round().astype(int)
    starts_c = np.linspace(0, width - side_w, g).round().astype(int)
    rows = [np.concatenate([slide.read(slice(r, r + side_h), slice(c, c + side_w)) for c in starts_c], axis=1)
            for r in starts_r]
    return np.concatenate(rows, axis=0)


def plan_slide(slide: Slide, segmenter, diameter: float | None = None, channel: str | None = None,
               image_type: str | None = None, nuclear: int | None = None) -> SlidePlan:
    """Decide the normalisation, image type, nucleus diameter and blocks of a slide on
    :func:`sample_mosaic` (``diameter``: given, px, else estimated as for any image; ``image_type``:
    given, else typed as any image)."""
    from pipeline.method.image_types import image_type_of
    from pipeline.method.intensity import normalization_of
    from pipeline.method.watershed import sizes_at_scale

    sample = network_input(sample_mosaic(slide), channel, nuclear)
    normalization = normalization_of(sample, **segmenter.normalization)
    image = normalization(sample)
    image_type = image_type or image_type_of(image)
    segmenter = segmenter.network_for(image_type)  # the network of the slide's type (routing)
    diameter, estimated, scale = segmenter.scale_for(image, diameter, image_type)
    block, margin = segmenter.block_geometry(scale)
    min_size = int(sizes_at_scale(segmenter.thresholds, scale).get("min_size") or 0)
    return SlidePlan(normalization, image_type, diameter, estimated, scale, block, margin, min_size, channel, nuclear,
                     segmenter.tta_for(slide.shape[:2], scale))


# --------------------------------------------------------------------------- one block


def block_labels(path: str, outer: tuple[slice, slice], core: tuple[slice, slice], plan: SlidePlan,
                 segmenter) -> tuple[np.ndarray, float, np.ndarray]:
    """The nuclei one block owns.

    Parameters
    ----------
    path : str
        The slide (opened once per process).
    outer, core : (slice, slice)
        The block in image pixels and its core relative to it (:func:`pipeline.method.blocks.iter_blocks`).
    plan : SlidePlan
    segmenter : Segmenter, or a callable returning one (a Dask worker's cached model)

    Returns
    -------
    owned : (h, w) uint16 or int32 array
        The owned nuclei (:func:`pipeline.method.blocks.owned_nuclei`) numbered 1..k.
    confidence : float
    nuclei : (k + 1,) float32
        Each owned nucleus's confidence (NaN at 0).
    """
    from pipeline.method.blocks import owned_nuclei

    if not hasattr(segmenter, "segment_block"):
        segmenter = segmenter()
    segmenter = segmenter.network_for(plan.image_type)
    image = plan.normalization(network_input(opened_slide(path).read(*outer), plan.channel, plan.nuclear))
    labels, confidence, per_label = one_tile_at_a_time(segmenter).segment_block(image, plan.scale, plan.image_type, plan.tta)
    owned, kept = owned_nuclei(labels, core, return_kept=True)
    nuclei = np.concatenate([[np.nan], np.asarray(per_label, np.float32)[kept]]).astype(np.float32)
    return owned.astype(np.uint16) if owned.max(initial=0) < 2**16 else owned, confidence, nuclei


def one_tile_at_a_time(segmenter):
    """``segmenter`` with its network run on one tile at a time (batch 1), sharing its model.

    On a huge image memory is the limit: a 2048-px block in batches of 4 tiles peaked at 2.3 GB,
    one tile at a time at 1.5 GB, with the same labels (batching only groups tiles). With batch 1
    a block larger than one tile is always tiled (:func:`pipeline.model.predictor.plan_tiles`)."""
    predictor = segmenter.predictor
    if getattr(predictor, "batch_size", 1) <= 1:
        return segmenter
    segmenter, predictor = copy.copy(segmenter), copy.copy(predictor)
    predictor.batch_size, segmenter.predictor = 1, predictor
    return segmenter


# --------------------------------------------------------------------------- stitching


class Stitcher:
    """Pastes blocks' owned nuclei, in row-major block order, into a band of rows of the label
    image by the rule of :func:`pipeline.method.blocks.paste_nuclei` (module docstring, step 3;
    :func:`pipeline.method.blocks.segment_in_blocks` stitches an image in memory by the same one)
    and hands out the rows no later block can change."""

    def __init__(self, width: int, min_size: int):
        self.band = np.zeros((0, width), np.uint32)
        self.top = 0  #: image row of ``band[0]``
        self.count = 0  #: nuclei so far (the last label)
        self.min_size = min_size
        #: the owned values of the nuclei the last :meth:`paste` kept, in their order
        self.last_kept = np.zeros(0, np.int64)

    def paste(self, outer: tuple[slice, slice], owned: np.ndarray) -> np.ndarray:
        """Paste one block's owned nuclei; returns the kept ones as they are in the label image,
        (h, w) int32 numbered 1..k (label ``count_before + j`` in the image)."""
        rows = slice(outer[0].start - self.top, outer[0].stop - self.top)
        if rows.stop > self.band.shape[0]:
            self.band = np.concatenate([self.band, np.zeros((rows.stop - self.band.shape[0], self.band.shape[1]),
                                                            np.uint32)])
        kept, self.last_kept = paste_nuclei(self.band[rows, outer[1]], owned, self.count, self.min_size)
        self.count += self.last_kept.size
        return kept

    def finished(self, upto: int) -> np.ndarray:
        """Rows ``top .. upto`` (exclusive), final: removed from the band and returned."""
        n = upto - self.top
        rows, self.band = self.band[:n], self.band[n:]
        self.top = upto
        return rows


# --------------------------------------------------------------------------- the whole slide


def segment_slide(slide: Slide, name: str, outdir: Path, segmenter, pixel_size: float | None = None,
                  diameter: float | None = None, channel: str | None = None,
                  map_ordered: Callable[[Callable, list[tuple]], Iterator] | None = None,
                  block_segmenter=None, image_type: str | None = None,
                  options: MeasureOptions | None = None) -> tuple[dict[str, Any], SlideTable, np.ndarray]:
    """Segment, measure and write one slide (module docstring).

    Parameters
    ----------
    slide : Slide
    name : str
        Output name: ``labels/<name>.tif``, ``tables/<name>.csv`` (``cells/<name>.tif`` with
        --cell-expansion, ``spots/<name>.csv`` with --spots); the caller writes ``overlays/<name>.png``.
    outdir : Path
    segmenter : Segmenter
        Plans the slide, and segments the blocks unless ``block_segmenter`` is given.
    pixel_size, diameter : float, optional
        µm (adds the µm columns); px (estimated when not given).
    channel, image_type : str, optional
        ``--channel``; ``--image-type`` (default: typed on the sample).
    map_ordered : callable, optional
        ``map_ordered(function, argument_tuples)`` yields ``function(*arguments)`` in order
        (:func:`pipeline.batch.cluster.ordered_map` runs them on Dask workers); default: here, one by one.
    block_segmenter : optional
        What :func:`block_labels` gets (a picklable callable returning a Segmenter on a worker).
    options : MeasureOptions, optional
        ``--nuclear-channel`` and the rest (:mod:`pipeline.batch.image_features`): every channel measured
        block by block, the spots of each block streamed; then the final pass over the label image
        (:func:`pipeline.batch.slide_tables.final_pass`: the cells, their sums, the backgrounds) and
        the table rewritten with the cell columns and the positive calls (those of ``auto`` in
        ``--positive-scope batch`` are set with the batch's, :func:`pipeline.batch.one_file.finish_batch`).

    Returns
    -------
    row : dict
        The ``counts.csv`` fields of the slide (:class:`pipeline.batch.output_folder.CountsRow`).
    table : SlideTable
    overlay : (ceil(H / f), ceil(W / f), 3) uint8
        The outlines drawn at 1/f scale (:func:`overlay_factor`).

    Raises
    ------
    NucleiError
        A channel the slide does not have; --cell-expansion in µm without a pixel size.
    """
    from pipeline.method.blocks import iter_blocks
    from pipeline.method.overlay import draw_outlines
    from pipeline.model.segmenter import flag_of

    options = options or MeasureOptions()
    names, nuclear, distance = channel_plan(slide, options, pixel_size)
    plan = plan_slide(slide, segmenter, diameter, channel, image_type, nuclear)
    blocks = list(iter_blocks(slide.shape, plan.block, plan.margin))
    run = map_ordered or (lambda function, items: (function(*item) for item in items))
    results = run(block_labels, [(str(slide.path), outer, core, plan, block_segmenter or segmenter)
                                 for outer, core in blocks])
    done = _Stitched(slide.shape, plan.min_size)
    with contextlib.ExitStack() as stack:
        streams = Streams(stack, outdir, name, options)
        write_label_tiff(streams.labels, _stitched_tiles(slide, name, blocks, results, plan, options, names,
                                                         pixel_size, streams, done), slide.shape)
        fields, colours, flags, columns = finish_streams(stack, streams, slide, streams.labels, names, options,
                                                         distance, done.stitcher.count, None, done.state, pixel_size)
    confidence = done.confidence[0] / max(done.confidence[1], 1)
    flag = flag_of(plan.image_type, confidence, plan.estimated, plan.diameter, slide.shape)
    row, table = _slide_row(name, outdir, done.stitcher.count, done.areas, pixel_size, fields, columns,
                            [flag, *flags], plan, confidence)
    return row, table, draw_outlines(done.shown, done.shown_labels, colours)


def _slide_row(name: str, outdir: Path, count: int, areas: list[np.ndarray], pixel_size: float | None,
               fields: dict[str, Any], columns: list[str], flags: list[str], plan: SlidePlan | None = None,
               confidence: float | None = None) -> tuple[dict[str, Any], SlideTable]:
    """A slide's ``counts.csv`` fields (:class:`pipeline.batch.output_folder.CountsRow`; ``plan``: how it
    was segmented, None for labels made elsewhere) and its streamed table, from its nuclei's areas
    (px, block by block) and the fields and columns of :func:`pipeline.batch.slide_tables.finish_streams`."""
    areas_px = np.concatenate(areas) if areas else np.zeros(0, np.int64)
    median_area = float(np.median(areas_px)) if areas_px.size else math.nan
    made = dict(name=name, count=count, median_area_px=median_area, flag="; ".join(f for f in flags if f),
                pixel_size=pixel_size, median_area_um2=None if pixel_size is None else median_area * pixel_size**2,
                extra=fields)
    row = CountsRow(**made) if plan is None else CountsRow.segmented(plan, confidence=confidence, **made)
    return row.fields(), SlideTable(outdir / slide_table_file(name), areas_px, pixel_size, tuple(columns), name)


class _Stitched:
    """What :func:`_stitched_tiles` gathers while it stitches a slide: the :class:`Stitcher`, the
    overlay's image and labels at 1/f scale, each block's areas, the confidence (sum, pixels), and the
    streamed table's state (:func:`pipeline.batch.slide_tables.stream_block`)."""

    def __init__(self, shape: tuple[int, int], min_size: int):
        self.f = overlay_factor(shape)
        self.shown = np.zeros((-(-shape[0] // self.f), -(-shape[1] // self.f), 3), np.uint8)
        self.shown_labels = np.zeros(self.shown.shape[:2], np.uint32)
        self.stitcher = Stitcher(shape[1], min_size)
        self.areas: list[np.ndarray] = []
        self.confidence = [0.0, 0]
        self.state: dict[str, Any] = {"columns": None, "fields": {}, "range": {}}


def _stitched_tiles(slide: Slide, name: str, blocks: list, results: Iterator, plan: SlidePlan,
                    options: MeasureOptions, names: tuple[str, ...], pixel_size: float | None, streams: Streams,
                    done: _Stitched) -> Iterator[np.ndarray]:
    """Paste each block's nuclei in block order, measure and stream them, draw the overlay's image,
    and yield the label image's finished rows as bands of its tiles
    (:func:`pipeline.batch.slide_tables.label_tiles`)."""
    from pipeline.method.features import intensity_of

    height, f, stitcher, nuclear = slide.shape[0], done.f, done.stitcher, plan.nuclear
    block_options = replace(options, cell_expansion=None)  # cells are grown on the final labels (final_pass)
    tile = slide_tables.LABEL_TILE  # bands of whole rows of the label TIFF's tiles
    for k, ((outer, core), (owned, confidence, nuclei)) in enumerate(zip(blocks, results, strict=True)):
        done.confidence[0] += confidence * owned.size
        done.confidence[1] += owned.size
        kept = stitcher.paste(outer, owned)
        per_kept = np.concatenate([[np.nan], nuclei[stitcher.last_kept]])
        raw = slide.read(*outer)
        plane = nuclear_plane(raw, plan.channel, nuclear)
        channels = block_channels(raw, names, nuclear, done.state) if options.channels else None
        measured = measure_image(kept, intensity_of(plane), channels, block_options, pixel_size, per_kept,
                                 plan.diameter, slide.path, call=False)
        first = stitcher.count - len(measured.table)
        ids = np.concatenate([[0], np.arange(first + 1, stitcher.count + 1)])
        done.areas.append(stream_block(measured, outer, ids, name, done.state, streams.csv, streams.spots,
                                       pixel_size))
        _show(done.shown, plan.normalization(network_input(raw, plan.channel, nuclear)), outer, core, f)
        last = k + 1 == len(blocks)
        if last or blocks[k + 1][0][0].start != outer[0].start:  # the end of a row of blocks
            upto = height if last else outer[0].start + core[0].stop - plan.margin
            upto = upto if last else stitcher.top + (upto - stitcher.top) // tile * tile
            rows = stitcher.finished(upto)
            first_row = -(-(upto - rows.shape[0]) // f) * f
            done.shown_labels[first_row // f : -(-upto // f)] = rows[first_row - (upto - rows.shape[0]) :: f, ::f]
            yield from label_tiles(rows)


# --------------------------------------------------------------------------- nuclei measure of a slide


def measure_slide(slide: Slide, labels: Slide, name: str, outdir: Path, pixel_size: float | None = None,
                  channel: str | None = None,
                  options: MeasureOptions | None = None) -> tuple[dict[str, Any], SlideTable, np.ndarray]:
    """``nuclei measure`` of a slide with its label image, both read piece by piece: the outputs of
    :func:`segment_slide` but for what only a segmentation knows.

    1. One pass over the labels (:func:`pipeline.batch.slide_tables.label_boxes`): each nucleus's bounding box and area.
    2. Blocks of :data:`MEASURE_BLOCK` px (:func:`_measured_blocks`): each nucleus is measured whole in
       the block where its box starts: the values of the whole image. Rows are streamed in block
       order, each nucleus under its own id.
    3. ``labels/<name>.tif`` copied tile by tile (uint32 tiled BigTIFF); the final pass
       (:func:`pipeline.batch.slide_tables.final_pass`: cells, backgrounds) and the finished table; the
       overlay at 1/f scale.

    Parameters
    ----------
    slide, labels : Slide
        The image and its label image (one plane of whole numbers, 0 = background, ids up to 2**31-1).
    name, outdir
        As :func:`segment_slide`.
    pixel_size : float, optional
        µm.
    channel : str, optional
        ``--channel``.
    options : MeasureOptions, optional

    Returns
    -------
    row, table, overlay
        As :func:`segment_slide`.

    Raises
    ------
    NucleiError
        One line naming the file: labels of another size than the image, not whole numbers, negative,
        beyond 2**31-1, or of one value (a mask); a channel the image does not have; --cell-expansion in
        µm without a pixel size.
    """
    from pipeline.method.intensity import normalization_of
    from pipeline.method.overlay import display_uint8, draw_outlines

    options = options or MeasureOptions()
    if labels.shape != slide.shape:
        raise NucleiError(f"{labels.path}: {labels.shape[1]}x{labels.shape[0]} px, but its image {slide.path} is "
                          f"{slide.shape[1]}x{slide.shape[0]} px")
    names, nuclear, distance = channel_plan(slide, options, pixel_size)
    boxes = label_boxes(labels)
    count = len(boxes)
    given = boxes["label"].to_numpy(np.int64)
    ids = None if np.array_equal(given, np.arange(1, count + 1)) else np.concatenate([[0], given])
    state: dict[str, Any] = {"columns": None, "fields": {}, "range": {}}
    with contextlib.ExitStack() as stack:
        streams = Streams(stack, outdir, name, options)
        write_label_tiff(streams.labels, copied_tiles(labels), slide.shape)
        areas = _measured_blocks(slide, labels, boxes, name, channel, options, names, nuclear, pixel_size, streams,
                                 state)
        fields, colours, flags, columns = finish_streams(stack, streams, slide, labels.path, names, options, distance,
                                                         count, ids, state, pixel_size)
    f = overlay_factor(slide.shape)
    normalization = normalization_of(network_input(sample_mosaic(slide), channel, nuclear))
    small = slide.read(slice(0, None, f), slice(0, None, f))
    shown = labels.read(slice(0, None, f), slice(0, None, f)).astype(np.int64)
    shown = shown if ids is None or colours is None else np.searchsorted(ids, shown)  # colours are by rank
    overlay = draw_outlines(display_uint8(normalization(network_input(small, channel, nuclear))), shown, colours)
    row, table = _slide_row(name, outdir, count, areas, pixel_size, fields, columns, flags)
    return row, table, overlay


def _measured_blocks(slide: Slide, labels: Slide, boxes, name: str, channel: str | None, options: MeasureOptions,
                     names: tuple[str, ...], nuclear: int | None, pixel_size: float | None, streams: Streams,
                     state: dict[str, Any]) -> list[np.ndarray]:
    """Measure the nuclei of ``boxes`` (:func:`pipeline.batch.slide_tables.label_boxes`) block by block,
    each whole in the block where its box starts, whose reach is the boxes of its nuclei and the
    spots' context (spots: their noise is that of the block's nuclei); stream their rows in block
    order under their own ids. Returns each block's areas, px."""
    from pipeline.method.features import intensity_of
    from pipeline.method.labels import indexable_labels
    from pipeline.method.spots import spot_sigmas

    height, width = slide.shape
    diameter = float(np.median(np.sqrt(4 * boxes["area_px"].to_numpy(np.float64) / np.pi))) if len(boxes) else None
    pad = int(3 * spot_sigmas(diameter)[1]) + 1 if options.spots and diameter else 0
    block_of = ((boxes["bbox_min_row"] // MEASURE_BLOCK) * -(-width // MEASURE_BLOCK)
                + boxes["bbox_min_col"] // MEASURE_BLOCK)  # row-major, as iter_chunks
    block_options = replace(options, cell_expansion=None)  # cells are grown on the whole label image (final_pass)
    areas: list[np.ndarray] = []
    for _, owned in boxes.groupby(block_of.to_numpy(), sort=True):
        low = owned[["bbox_min_row", "bbox_min_col"]].min().to_numpy() - pad
        high = owned[["bbox_max_row", "bbox_max_col"]].max().to_numpy() + pad
        outer = (slice(max(int(low[0]), 0), min(int(high[0]), height)),
                 slice(max(int(low[1]), 0), min(int(high[1]), width)))
        part = labels.read(*outer)
        part = np.where(np.isin(part, owned["label"].to_numpy()), part, 0)
        indexed, local = indexable_labels(part)
        local = np.arange(int(part.max(initial=0)) + 1) if local is None else local
        raw = slide.read(*outer)
        channels = block_channels(raw, names, nuclear, state) if options.channels else None
        measured = measure_image(indexed, intensity_of(nuclear_plane(raw, channel, nuclear)), channels,
                                 block_options, pixel_size, None, diameter, slide.path, call=False)
        areas.append(stream_block(measured, outer, local, name, state, streams.csv, streams.spots, pixel_size))
    return areas


# --------------------------------------------------------------------------- the overlay


def overlay_factor(shape: tuple[int, int]) -> int:
    """f: a slide's overlay shows every f-th row and column of it (longest side at most :data:`OVERLAY_SIDE`)."""
    return max(1, math.ceil(max(shape) / OVERLAY_SIDE))


def shown_labels(path: Path) -> np.ndarray:
    """A slide's ``labels/<name>.tif`` at the scale of its overlay: every f-th row and column
    (:func:`overlay_factor`), read lazily; (ceil(H / f), ceil(W / f)) uint32."""
    labels = open_slide(path)
    if labels is None:
        raise NucleiError(f"{path}: cannot be read piece by piece")
    f = overlay_factor(labels.shape)
    return labels.read(slice(0, None, f), slice(0, None, f))


def _show(shown: np.ndarray, image: np.ndarray, outer: tuple[slice, slice], core: tuple[slice, slice], f: int) -> None:
    """Put every f-th row and column of a block's normalised core into the overlay's image."""
    from pipeline.method.overlay import display_uint8

    (r0, r1), (c0, c1) = ((axis.start, axis.stop) for axis in core_of(outer, core))
    fr, fc = -(-r0 // f) * f, -(-c0 // f) * f  # the first rows/columns on the 1/f grid
    part = image[fr - outer[0].start : r1 - outer[0].start : f, fc - outer[1].start : c1 - outer[1].start : f]
    shown[fr // f : fr // f + part.shape[0], fc // f : fc // f + part.shape[1]] = display_uint8(part)
