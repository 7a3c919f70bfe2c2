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
   ``labels/<name>.tif`` (uint32 tiled BigTIFF, zlib: it opens in napari, QuPath and Fiji, and
   tifffile/zarr read it lazily); the nuclei's rows go to ``tables/<name>.csv`` block by block; the
   overlay ``overlays/<name>.png`` is drawn at 1/f scale (longest side at most
   :data:`OVERLAY_SIDE`). Memory: a band of (block + margin) rows of labels, a few blocks, the overlay.
5. **Channels** (``--nuclear-channel``, :mod:`pipeline.batch.measurements`): a slide of up to 4 channels
   (colour samples, or an OME C axis) is segmented on its nuclear channel and every channel measured
   block by block (a nucleus is whole in its block: the same values as the whole image); spots are
   found per block and streamed to ``spots/<name>.csv``; the positive calls need every nucleus's
   mean, so they are set once the table is complete (the background: the median of the blocks') and
   the table is rewritten with them. Cells are not grown out of core (flagged), nor is a slide
   called in ``--positive-scope batch``.

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
import pandas as pd

from pipeline.batch.measurements import SPOT_FILE_COLUMNS, Channels, Measured, call_positive, measure_image
from pipeline.batch.output_folder import (
    SPOTS_COLUMN,
    SlideTable,
    counts_row,
    labels_file,
    overlay_file,
    slide_table_file,
    spots_file,
)
from pipeline.batch.settings import MeasureOptions
from pipeline.files.channels import find_channel
from pipeline.files.io import as_rgb01, atomic_path, colour_channel, encode_png
from pipeline.files.slide_reader import Slide, opened_slide
from pipeline.method.measure import measurement_columns

#: Pixels of the mosaic of windows that plans a slide (normalisation, image type, diameter).
SAMPLE_PIXELS = 4_000_000
#: Side of one window of that mosaic, px.
SAMPLE_WINDOW = 512
#: Side of the label TIFF's tiles, px.
LABEL_TILE = 512
#: Longest side of a slide's overlay PNG, px.
OVERLAY_SIDE = 4096


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
    diameter, estimated, scale = segmenter.scale_for(image, diameter, image_type)
    block, margin = segmenter.block_geometry(scale)
    min_size = int(sizes_at_scale(segmenter.thresholds, scale).get("min_size") or 0)
    return SlidePlan(normalization, image_type, diameter, estimated, scale, block, margin, min_size, channel, nuclear)


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
        Each owned nucleus's mean P(nucleus) (NaN at 0).
    """
    from pipeline.method.blocks import owned_nuclei

    if not hasattr(segmenter, "segment_block"):
        segmenter = segmenter()
    image = plan.normalization(network_input(opened_slide(path).read(*outer), plan.channel, plan.nuclear))
    labels, confidence, per_label = one_tile_at_a_time(segmenter).segment_block(image, plan.scale, plan.image_type)
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
    image (module docstring, step 3) and hands out the rows no later block can change."""

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
        target = self.band[rows, outer[1]]
        owned = owned.astype(np.int64, copy=False)
        total = np.bincount(owned.ravel(), minlength=1)
        taken = np.bincount(owned[target > 0], minlength=total.size)
        keep = (total > 0) & (2 * taken <= total) & (total - taken >= max(self.min_size, 1))
        keep[0] = False
        lut = np.zeros(total.size, np.int32)
        lut[keep] = np.arange(1, int(keep.sum()) + 1, dtype=np.int32)
        kept = lut[owned]
        kept[target > 0] = 0
        target[kept > 0] = kept[kept > 0] + self.count
        self.count += int(keep.sum())
        self.last_kept = np.flatnonzero(keep)
        return kept

    def finished(self, upto: int) -> np.ndarray:
        """Rows ``top .. upto`` (exclusive), final: removed from the band and returned."""
        n = upto - self.top
        rows, self.band = self.band[:n], self.band[n:]
        self.top = upto
        return rows


# --------------------------------------------------------------------------- the whole slide


def segment_slide(slide: Slide, name: str, outdir: Path, segmenter, pixel_size: float | None = None,
                  diameter: float | None = None, channel: str | None = None, thumbnail_side: int = 320,
                  map_ordered: Callable[[Callable, list[tuple]], Iterator] | None = None,
                  block_segmenter=None, image_type: str | None = None,
                  options: MeasureOptions | None = None) -> tuple[dict[str, Any], SlideTable, bytes]:
    """Segment, measure and write one slide (module docstring).

    Parameters
    ----------
    slide : Slide
    name : str
        Output name: ``labels/<name>.tif``, ``overlays/<name>.png``, ``tables/<name>.csv``
        (``spots/<name>.csv`` with --spots).
    outdir : Path
    segmenter : Segmenter
        Plans the slide, and segments the blocks unless ``block_segmenter`` is given.
    pixel_size : float, optional
        µm; adds the µm columns.
    diameter : float, optional
        px; estimated when not given.
    channel : str, optional
        ``--channel``.
    thumbnail_side : int
        px, of the thumbnail returned for the report.
    map_ordered : callable, optional
        ``map_ordered(function, argument_tuples)`` yields ``function(*arguments)`` in order
        (:func:`pipeline.batch.cluster.ordered_map` runs them on Dask workers); default: here, one by one.
    block_segmenter : optional
        What :func:`block_labels` gets (a picklable callable returning a Segmenter on a worker).
    image_type : str, optional
        ``--image-type`` (:data:`pipeline.method.image_types.IMAGE_TYPES`); default: typed on the sample.
    options : MeasureOptions, optional
        ``--nuclear-channel`` and the rest (:mod:`pipeline.batch.measurements`): every channel measured
        block by block, the spots of each block streamed, the positive calls set once every
        nucleus is measured (the table rewritten with them). Cells are not grown out of core
        (flagged).

    Returns
    -------
    row : dict
        The ``counts.csv`` fields of the slide.
    table : SlideTable
    thumbnail : bytes
        PNG of the overlay's thumbnail.
    """
    from pipeline.method.blocks import iter_blocks
    from pipeline.method.measure import intensity_of
    from pipeline.method.overlay import draw_outlines, thumbnail
    from pipeline.model.segmenter import flag_of

    options = options or MeasureOptions()
    names = slide.names or tuple("" for _ in range(slide.n_channels))
    nuclear = find_channel(options.nuclear_channel, names, slide.path) if options.channels else None
    block_options = replace(options, cell_expansion=None)  # cells are not grown out of core
    plan = plan_slide(slide, segmenter, diameter, channel, image_type, nuclear)
    height, width = slide.shape
    blocks = list(iter_blocks((height, width), plan.block, plan.margin))
    run = map_ordered or (lambda function, items: (function(*item) for item in items))
    results = run(block_labels, [(str(slide.path), outer, core, plan, block_segmenter or segmenter)
                                 for outer, core in blocks])
    f = max(1, math.ceil(max(height, width) / OVERLAY_SIDE))
    shown = np.zeros((-(-height // f), -(-width // f), 3), np.uint8)
    shown_labels = np.zeros(shown.shape[:2], np.uint32)
    stitcher = Stitcher(width, plan.min_size)
    areas: list[np.ndarray] = []
    conf = [0.0, 0]
    state: dict[str, Any] = {"columns": None, "fields": {}, "background": {}, "range": {}}

    def tiles() -> Iterator[np.ndarray]:
        for k, ((outer, core), (owned, confidence, nuclei)) in enumerate(zip(blocks, results, strict=True)):
            size = owned.size
            conf[0], conf[1] = conf[0] + confidence * size, conf[1] + size
            kept = stitcher.paste(outer, owned)
            per_kept = np.concatenate([[np.nan], nuclei[stitcher.last_kept]])
            raw = slide.read(*outer)
            plane = nuclear_plane(raw, channel, nuclear)
            channels = None
            if options.channels:
                channels = Channels(np.moveaxis(raw, -1, 0) if raw.ndim == 3 else raw[None], names, nuclear)
                for key, values in zip(channels.keys, channels.array, strict=True):
                    low, high = state["range"].get(key, (math.inf, -math.inf))
                    state["range"][key] = (min(low, float(values.min())), max(high, float(values.max())))
            measured = measure_image(kept, intensity_of(plane), channels, block_options, pixel_size, per_kept,
                                     plan.diameter, slide.path, call=False)
            table = measured.table
            first = stitcher.count - len(table)
            table["label"] += first
            for axis, start in (("row", outer[0].start), ("col", outer[1].start)):
                for column in (f"centroid_{axis}", f"bbox_min_{axis}", f"bbox_max_{axis}"):
                    table[column] += start
            table.insert(0, "image", name)
            if state["columns"] is None:
                state["columns"] = ["image", *measurement_columns(pixel_size), *table.columns[1 + len(
                    measurement_columns(pixel_size)):]]
                pd.DataFrame(columns=state["columns"]).to_csv(csv, index=False)
            table[state["columns"]].to_csv(csv, header=False, index=False)
            if measured.spots is not None and len(measured.spots):
                spots = measured.spots.copy()
                spots["nucleus"] += first
                spots["y"] += outer[0].start
                spots["x"] += outer[1].start
                spots.to_csv(spots_csv, header=False, index=False)
            for field, value in measured.fields.items():  # the spots of every block add up
                state["fields"][field] = state["fields"].get(field, 0) + value if field.startswith("n_spots_") else value
            for key, value in measured.background.items():
                state["background"].setdefault(key, []).append(value)
            areas.append(table["area_px"].to_numpy())
            _show(shown, plan.normalization(network_input(raw, channel, nuclear)), outer, core, f)
            last = k + 1 == len(blocks)
            if last or blocks[k + 1][0][0].start != outer[0].start:  # the end of a row of blocks
                upto = height if last else outer[0].start + core[0].stop - plan.margin
                upto = upto if last else stitcher.top + (upto - stitcher.top) // LABEL_TILE * LABEL_TILE
                rows = stitcher.finished(upto)
                first_row = -(-(upto - rows.shape[0]) // f) * f
                shown_labels[first_row // f : -(-upto // f)] = rows[first_row - (upto - rows.shape[0]) :: f, ::f]
                yield from _tiles(rows, last)

    import tifffile

    with contextlib.ExitStack() as stack:
        labels_tmp = stack.enter_context(atomic_path(outdir / labels_file(name)))
        csv_tmp = stack.enter_context(atomic_path(outdir / slide_table_file(name)))
        csv = stack.enter_context(open(csv_tmp, "w", newline=""))
        spots_csv = None
        if options.spots:
            spots_tmp = stack.enter_context(atomic_path(outdir / spots_file(name)))
            spots_csv = stack.enter_context(open(spots_tmp, "w", newline=""))
            pd.DataFrame(columns=list(SPOT_FILE_COLUMNS)).to_csv(spots_csv, index=False)
        tifffile.imwrite(labels_tmp, tiles(), shape=(height, width), dtype=np.uint32, tile=(LABEL_TILE,) * 2,
                         bigtiff=True, compression="zlib", photometric="minisblack")
        if state["columns"] is None:  # no block (an empty image)
            pd.DataFrame(columns=["image", *measurement_columns(pixel_size)]).to_csv(csv, index=False)
        csv.close()
        fields, colours, flags = _slide_positivity(csv_tmp, state, options, stitcher.count)
    overlay = draw_outlines(shown, shown_labels, colours)
    with atomic_path(outdir / overlay_file(name)) as tmp:
        tmp.write_bytes(encode_png(overlay))
    areas_px = np.concatenate(areas) if areas else np.zeros(0, np.int64)
    confidence = conf[0] / max(conf[1], 1)
    median_area = float(np.median(areas_px)) if areas_px.size else math.nan
    flag = flag_of(plan.image_type, confidence, plan.estimated, plan.diameter, (height, width))
    if options.cell_expansion is not None:
        flags.append(CELLS_NOTE)
    row = counts_row(name, stitcher.count, median_area, plan.image_type, plan.diameter, plan.estimated, plan.scale,
                     confidence, "; ".join(f for f in (flag, *flags) if f), pixel_size,
                     None if pixel_size is None else median_area * pixel_size**2)
    row.update(fields)
    if options.spots:
        row[SPOTS_COLUMN] = spots_file(name)
    table = SlideTable(outdir / slide_table_file(name), areas_px, pixel_size,
                       tuple(state["columns"] or ["image", *measurement_columns(pixel_size)]))
    return row, table, encode_png(thumbnail(overlay, thumbnail_side))


#: The flag of a slide segmented with --cell-expansion.
CELLS_NOTE = "--cell-expansion: no cells grown for an image segmented out of core (docs/scale-out.md)"


def _slide_positivity(path: Path, state: dict[str, Any], options: MeasureOptions,
                      count: int) -> tuple[dict[str, Any], np.ndarray | None, list[str]]:
    """The positive calls of a slide, once every nucleus is measured: its thresholds (the slide's
    background: the median of its blocks'), ``positive_<key>`` written into its streamed table
    (rewritten in chunks), the overlay's colours; returns the ``counts.csv`` fields, colours and flags."""
    fields = dict(state["fields"])
    if not options.positive or state["columns"] is None:
        return fields, None, []
    columns = [c for c in state["columns"] if c.startswith("positive_")]
    keys = [c[len("positive_"):] for c in columns]
    means = pd.read_csv(path, usecols=["label", *(f"mean_{k}" for k in keys)])
    measured = Measured(means.assign(**{c: pd.array([pd.NA] * len(means), dtype="boolean") for c in columns}),
                        fields)
    for key in keys:
        levels = np.array(state["background"].get(key, [(math.nan, math.nan)]), float)
        level, noise = float(np.nanmedian(levels[:, 0])), float(np.nanmedian(levels[:, 1]))
        measured.background[key] = (level, noise)
        fields[f"background_{key}"], fields[f"noise_{key}"] = level, noise
        low, high = state["range"].get(key, (0.0, 0.0))
        if low == high:
            measured.constant[key] = low
    call_positive(measured, options)  # --positive-scope batch: 'auto' left uncalled here
    if options.positive_scope == "batch":
        measured.flags += [f"positive_{key}: not called for an image segmented out of core (--positive-scope batch)"
                           for key, (_, value) in zip(keys, options.positive, strict=True) if value is None]
    calls = measured.table[columns]
    with atomic_path(path) as tmp, open(tmp, "w", newline="") as out:
        pd.DataFrame(columns=state["columns"]).to_csv(out, index=False)
        start = 0
        for chunk in pd.read_csv(path, chunksize=200_000):
            chunk[columns] = calls.iloc[start : start + len(chunk)].to_numpy()
            chunk[state["columns"]].to_csv(out, header=False, index=False)
            start += len(chunk)
    return fields, measured.colours(count), measured.flags


def _show(shown: np.ndarray, image: np.ndarray, outer: tuple[slice, slice], core: tuple[slice, slice], f: int) -> None:
    """Put every f-th row and column of a block's normalised core into the overlay's image."""
    from pipeline.method.overlay import display_uint8

    r0, c0 = outer[0].start + core[0].start, outer[1].start + core[1].start
    r1, c1 = outer[0].start + core[0].stop, outer[1].start + core[1].stop
    fr, fc = -(-r0 // f) * f, -(-c0 // f) * f  # the first rows/columns on the 1/f grid
    part = image[fr - outer[0].start : r1 - outer[0].start : f, fc - outer[1].start : c1 - outer[1].start : f]
    shown[fr // f : fr // f + part.shape[0], fc // f : fc // f + part.shape[1]] = display_uint8(part)


def _tiles(rows: np.ndarray, last: bool) -> Iterator[np.ndarray]:
    """The label TIFF's tiles of whole tile rows (padded with 0 past the image's last row/column)."""
    for r in range(0, rows.shape[0], LABEL_TILE):
        strip = rows[r : r + LABEL_TILE]
        for c in range(0, rows.shape[1], LABEL_TILE):
            tile = np.zeros((LABEL_TILE, LABEL_TILE), np.uint32)
            part = strip[:, c : c + LABEL_TILE]
            tile[: part.shape[0], : part.shape[1]] = part
            yield tile
