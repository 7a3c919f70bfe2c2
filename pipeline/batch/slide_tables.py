"""A slide's tables out of core: every channel measured block by block and streamed, the final pass
over the finished labels (cells, backgrounds, positive calls), and the label TIFF they are read from.

:mod:`pipeline.batch.slide` segments a slide (``nuclei segment``) or takes its label image (``nuclei
measure``), block by block; each block's nuclei are measured there and their rows streamed here
(:class:`Streams`, :func:`stream_block`), and once every block is done the rest is made here
(:func:`finish_streams`):

1. **Channels** (``--nuclear-channel``, :mod:`pipeline.batch.image_features`): a slide of up to 4 channels
   (colour samples, or an OME C axis) is segmented on its nuclear channel and every channel measured
   block by block (a nucleus is whole in its block: the same values as the whole image); each block's
   rows are streamed to ``tables/<name>.csv`` (:func:`stream_block`) and its spots to
   ``spots/<name>.csv``.
2. **The final pass** (:func:`final_pass`), with ``--cell-expansion`` or ``--positive``: the finished
   ``labels/<name>.tif`` is read again, band by band of tile rows and chunk by chunk of
   :data:`CELL_CHUNK` columns, each chunk with a halo of ``floor(D) + 1`` px: the cells are grown
   there (every nucleus within ``D`` of the chunk is in its halo, so they are the cells grown on the
   whole image) and written as the tiles of ``cells/<name>.tif`` (as the labels); each cell's pixels,
   cytoplasm pixels and cytoplasm sums per channel are added up over the chunks (each pixel in one
   chunk: every cell measured once, in total), and so are the backgrounds of the --positive channels
   outside the nuclei and cells (:class:`pipeline.method.positivity.Background`: exact for pixels of
   up to 16 bits). Then the table is rewritten in chunks with the cell columns and the positive calls
   (which need every nucleus's mean); those of ``auto`` in ``--positive-scope batch`` are set with the
   batch's (:func:`pipeline.batch.one_file.finish_batch`: the slide's means read in chunks, its table
   rewritten and its overlay redrawn). Memory: the sums, a band of chunks.

A slide's label images (``labels/<name>.tif``, ``cells/<name>.tif``) are written tile by tile
(:func:`write_label_tiff`): uint32 tiled BigTIFF of :data:`LABEL_TILE` px tiles, zlib; they open in
napari, QuPath and Fiji, and tifffile/zarr read them lazily. A label image made elsewhere is read
piece by piece too (:func:`label_boxes`).

Must not: parse command lines, load models or segment.
"""

from __future__ import annotations

import collections
import contextlib
import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.batch.image_features import (
    SPOT_FILE_COLUMNS,
    Channels,
    Measured,
    call_positive,
    positive_keys,
    set_background,
)
from pipeline.batch.output_folder import (
    CELLS_COLUMN,
    SPOTS_COLUMN,
    cells_file,
    labels_file,
    rewrite_table,
    slide_table_file,
    spots_file,
    table_chunks,
)
from pipeline.batch.settings import MeasureOptions
from pipeline.errors import NucleiError
from pipeline.files.channels import channel_keys, find_channel
from pipeline.files.io import atomic_path
from pipeline.files.slide_reader import Slide, open_slide
from pipeline.method.blocks import core_of, iter_chunks
from pipeline.method.features import labelled_pixels, measurement_columns
from pipeline.method.labels import INT32_MAX
from pipeline.method.positivity import Background

#: Side of the label TIFF's tiles, px.
LABEL_TILE = 512
#: Columns of one chunk of the final pass (:func:`final_pass`), px: a multiple of :data:`LABEL_TILE`.
CELL_CHUNK = 8 * LABEL_TILE


# --------------------------------------------------------------------------- the label TIFF


def write_label_tiff(path: Path, tiles: Iterator[np.ndarray], shape: tuple[int, int]) -> None:
    """Write a slide's label image (nuclei or cells) from its :data:`LABEL_TILE` tiles in row-major
    order: uint32 tiled BigTIFF, zlib (module docstring)."""
    import tifffile

    tifffile.imwrite(path, tiles, shape=shape, dtype=np.uint32, tile=(LABEL_TILE,) * 2, bigtiff=True,
                     compression="zlib", photometric="minisblack")


def label_tiles(rows: np.ndarray) -> Iterator[np.ndarray]:
    """The label TIFF's tiles of whole tile rows, or of a chunk of them (padded with 0 past the image's
    last row/column)."""
    for r in range(0, rows.shape[0], LABEL_TILE):
        strip = rows[r : r + LABEL_TILE]
        for c in range(0, rows.shape[1], LABEL_TILE):
            tile = np.zeros((LABEL_TILE, LABEL_TILE), np.uint32)
            part = strip[:, c : c + LABEL_TILE]
            tile[: part.shape[0], : part.shape[1]] = part
            yield tile


def copied_tiles(labels: Slide) -> Iterator[np.ndarray]:
    """The label TIFF's tiles of a label image read piece by piece: a copy of it, tile by tile."""
    for outer, _ in iter_chunks(labels.shape, (LABEL_TILE,) * 2, 0):
        yield from label_tiles(labels.read(*outer))


# --------------------------------------------------------------------------- streamed tables


def channel_plan(slide: Slide, options: MeasureOptions,
                 pixel_size: float | None) -> tuple[tuple[str, ...], int | None, float | None]:
    """A slide's channel names ('' where none), the index of its nuclear channel (None without
    --nuclear-channel) and the cells' --cell-expansion in px (None: no cells).

    Raises
    ------
    NucleiError
        An unknown nuclear channel; --cell-expansion in µm without a pixel size.
    """
    names = slide.names or tuple("" for _ in range(slide.n_channels))
    nuclear = find_channel(options.nuclear_channel, names, slide.path) if options.channels else None
    distance = (options.cell_expansion.pixels(pixel_size, slide.path)
                if options.channels and options.cell_expansion is not None else None)
    return names, nuclear, distance


def block_channels(raw: np.ndarray, names: tuple[str, ...], nuclear: int | None, state: dict[str, Any]) -> Channels:
    """A block's channels as read (h, w[, C]), for measurement; each channel's range kept in ``state``
    (a constant channel is one whose range is one value over the slide)."""
    channels = Channels(np.moveaxis(raw, -1, 0) if raw.ndim == 3 else raw[None], names, nuclear)
    for key, values in zip(channels.keys, channels.array, strict=True):
        low, high = state["range"].get(key, (math.inf, -math.inf))
        state["range"][key] = (min(low, float(values.min())), max(high, float(values.max())))
    return channels


def stream_block(measured: Measured, outer: tuple[slice, slice], ids: np.ndarray, name: str, state: dict[str, Any],
                 csv, spots_csv, pixel_size: float | None) -> np.ndarray:
    """Write one block's measured nuclei to the slide's streamed table (the header with the first
    block) and its spots to ``spots_csv``: labels ``ids[k]`` for the block's ``k``, positions in
    image pixels; the ``counts.csv`` fields kept in ``state`` (spots added up). Returns the rows' ``area_px``."""
    table = measured.table
    table["label"] = ids[table["label"].to_numpy(np.int64)]
    for axis, start in (("row", outer[0].start), ("col", outer[1].start)):
        for column in (f"centroid_{axis}", f"bbox_min_{axis}", f"bbox_max_{axis}"):
            table[column] += start
    table.insert(0, "image", name)
    if state["columns"] is None:
        fixed = ["image", *measurement_columns(pixel_size)]
        state["columns"] = [*fixed, *table.columns[len(fixed):]]
        pd.DataFrame(columns=state["columns"]).to_csv(csv, index=False)
    table[state["columns"]].to_csv(csv, header=False, index=False)
    if measured.spots is not None and len(measured.spots):
        spots = measured.spots.copy()
        spots["nucleus"] = ids[spots["nucleus"].to_numpy(np.int64)]
        spots["y"] += outer[0].start
        spots["x"] += outer[1].start
        spots.to_csv(spots_csv, header=False, index=False)
    for entry, value in measured.fields.items():  # the spots of every block add up
        state["fields"][entry] = state["fields"].get(entry, 0) + value if entry.startswith("n_spots_") else value
    return table["area_px"].to_numpy()


class Streams:
    """The files a slide's outputs stream to, each written atomically (committed when ``stack`` closes):
    ``labels`` (the label TIFF's temporary path), ``table`` and ``csv`` (the streamed table, open),
    ``spots`` (``spots/<name>.csv`` open, with --spots, else None)."""

    def __init__(self, stack: contextlib.ExitStack, outdir: Path, name: str, options: MeasureOptions):
        self.outdir, self.name = outdir, name
        self.labels = stack.enter_context(atomic_path(outdir / labels_file(name)))
        self.table = stack.enter_context(atomic_path(outdir / slide_table_file(name)))
        self.csv = stack.enter_context(open(self.table, "w", newline=""))
        self.spots = None
        if options.spots:
            spots = stack.enter_context(atomic_path(outdir / spots_file(name)))
            self.spots = stack.enter_context(open(spots, "w", newline=""))
            pd.DataFrame(columns=list(SPOT_FILE_COLUMNS)).to_csv(self.spots, index=False)


def finish_streams(stack: contextlib.ExitStack, streams: Streams, slide: Slide, labels: Path, names: tuple[str, ...],
                   options: MeasureOptions, distance: float | None, count: int, ids: np.ndarray | None,
                   state: dict[str, Any], pixel_size: float | None) -> tuple[dict[str, Any], np.ndarray | None,
                                                                             list[str], list[str]]:
    """Once every block is streamed: the table's header if no block had a nucleus, the final pass over
    the label image ``labels`` (with cells or positive calls to make: ``cells/<name>.tif`` written) and
    the finished table (:func:`_finish_table`, whose results it returns, the fields naming the cells and
    spots files added)."""
    if state["columns"] is None:  # no nucleus
        pd.DataFrame(columns=["image", *measurement_columns(pixel_size)]).to_csv(streams.csv, index=False)
    streams.csv.close()
    final = None
    if options.channels and state["columns"] is not None and (distance is not None or options.positive):
        keys = channel_keys(names)
        final = FinalSums(keys, count, distance,
                          {key: keys.index(key) for key in positive_keys(options, keys, names, slide.path)}, ids)
        cell_tiles = final_pass(open_slide(labels), slide, final)
        if distance is None:
            collections.deque(cell_tiles, maxlen=0)
        else:
            write_label_tiff(stack.enter_context(atomic_path(streams.outdir / cells_file(streams.name))), cell_tiles,
                             slide.shape)
    fields, colours, flags, columns = _finish_table(streams.table, state, options, final, count, pixel_size)
    if final is not None and final.cells is not None:
        fields[CELLS_COLUMN] = cells_file(streams.name)
    if options.spots:
        fields[SPOTS_COLUMN] = spots_file(streams.name)
    return fields, colours, flags, columns


# --------------------------------------------------------------------------- a label image read piece by piece


def label_boxes(labels: Slide) -> pd.DataFrame:
    """Each nucleus's bounding box and area in a label image read piece by piece (tile rows ×
    :data:`CELL_CHUNK` columns).

    Returns
    -------
    boxes : pandas.DataFrame
        One row per label id, ascending: ``label``, ``area_px``, ``bbox_min_row``, ``bbox_min_col``,
        ``bbox_max_row``, ``bbox_max_col`` (px; the max exclusive), int64.

    Raises
    ------
    NucleiError
        Naming the file: not whole numbers, negative ids, ids beyond 2**31-1, or one id only (a binary
        mask, whose objects cannot be told apart out of core).
    """
    if labels.dtype.kind not in "ui" or labels.n_channels != 1:
        raise NucleiError(f"{labels.path}: not a label image ({labels.dtype}, {labels.n_channels} channels; expected "
                          "one plane of whole numbers stored as integers, 0 = background)")
    parts = []
    for outer, _ in iter_chunks(labels.shape, (LABEL_TILE, CELL_CHUNK), 0):
        tile = labels.read(*outer)
        if tile.size and (tile.min() < 0 or tile.max() > INT32_MAX):
            raise NucleiError(f"{labels.path}: label ids out of 0..2**31-1 (from {tile.min()} to {tile.max()})")
        where, values, found = labelled_pixels(tile)
        starts = np.searchsorted(values, found)
        counts = np.diff(np.append(starts, values.size))
        rows, cols = where // tile.shape[1] + outer[0].start, where % tile.shape[1] + outer[1].start
        if found.size:
            parts.append(pd.DataFrame({
                "label": found, "area_px": counts,
                "bbox_min_row": np.minimum.reduceat(rows, starts), "bbox_min_col": np.minimum.reduceat(cols, starts),
                "bbox_max_row": np.maximum.reduceat(rows, starts) + 1, "bbox_max_col": np.maximum.reduceat(cols, starts) + 1,
            }))  # fmt: skip
    columns = ["label", "area_px", "bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]
    if not parts:
        return pd.DataFrame({c: np.zeros(0, np.int64) for c in columns})
    boxes = pd.concat(parts).groupby("label", sort=True).agg(
        area_px=("area_px", "sum"), bbox_min_row=("bbox_min_row", "min"), bbox_min_col=("bbox_min_col", "min"),
        bbox_max_row=("bbox_max_row", "max"), bbox_max_col=("bbox_max_col", "max")).reset_index()
    if len(boxes) == 1:
        raise NucleiError(f"{labels.path}: one label value only (a binary mask?): out of core, give instance labels "
                          "(one value per nucleus)")
    return boxes[columns].astype(np.int64)


# --------------------------------------------------------------------------- the final pass: cells, backgrounds


@dataclass
class FinalSums:
    """What :func:`final_pass` sums over a slide's final labels (module docstring, step 2)."""

    keys: list[str]  #: the slide's channel keys
    count: int  #: its nuclei, labels 1..count (or ``ids[1:]``)
    distance: float | None  #: --cell-expansion, px (None: no cells)
    marked: dict[str, int]  #: the --positive channels: key -> channel index
    #: (count + 1,) the labels' ids, ascending, 0 first, when they are not 1..count (labels made elsewhere)
    ids: np.ndarray | None = None
    #: (2 + C, count + 1) :func:`pipeline.method.features.cell_sums` by label (by rank in ``ids``; None: no cells)
    cells: np.ndarray | None = None
    #: each --positive channel's background outside the nuclei (and cells)
    background: dict[str, Background] = field(default_factory=dict)

    def __post_init__(self):
        if self.distance is not None:
            self.cells = np.zeros((2 + len(self.keys), self.count + 1))
        self.background = {key: Background() for key in self.marked}

    def rank(self, labels: np.ndarray) -> np.ndarray:
        """Labels (any shape) as 0..count: their column in the sums (their rank in ``ids``)."""
        return np.asarray(labels) if self.ids is None else np.searchsorted(self.ids, labels)


def final_pass(labels: Slide, image: Slide, sums: FinalSums) -> Iterator[np.ndarray]:
    """The final pass over a slide's finished label image, band by band of :data:`LABEL_TILE` rows and
    chunk by chunk of :data:`CELL_CHUNK` columns: the cells grown from the nuclei
    (:func:`pipeline.method.features.grow_cells`) on each chunk with a halo of ``floor(D) + 1`` px (every
    nucleus within ``D`` of the chunk's pixels: the same cells as grown on the whole image), their
    :func:`~pipeline.method.features.cell_sums` and the backgrounds of the --positive channels outside
    the nuclei and cells, each pixel counted once, added to ``sums``.

    Parameters
    ----------
    labels : Slide
        The slide's ``labels/<name>.tif`` (:func:`write_label_tiff`), labels 1..``sums.count``.
    image : Slide
        The slide, as stored (its channels).
    sums : FinalSums

    Yields
    ------
    tile : (LABEL_TILE, LABEL_TILE) uint32
        The cells' label TIFF tiles in row-major order (with --cell-expansion; none without).
    """
    from pipeline.method.features import cell_sums, grow_cells

    halo = 0 if sums.distance is None else int(math.floor(sums.distance)) + 1
    for outer, core in iter_chunks(labels.shape, (LABEL_TILE, CELL_CHUNK), halo):
        nuclei = sums.rank(labels.read(*outer)).astype(np.int32)
        cells = None if sums.distance is None else grow_cells(nuclei, sums.distance)[core]
        nuclei = nuclei[core]
        raw = image.read(*core_of(outer, core))
        channels = np.moveaxis(raw, -1, 0) if raw.ndim == 3 else raw[None]
        outside = (nuclei if cells is None else cells) == 0
        for key, k in sums.marked.items():
            sums.background[key].add(channels[k][outside])
        if cells is not None:
            sums.cells += cell_sums(nuclei, cells, channels, sums.count + 1)
            yield from label_tiles(cells if sums.ids is None else sums.ids[cells])


def _finish_table(path: Path, state: dict[str, Any], options: MeasureOptions, final: FinalSums | None,
                  count: int, pixel_size: float | None) -> tuple[dict[str, Any], np.ndarray | None, list[str], list[str]]:
    """A slide's table once every nucleus is measured and the final pass done: the cell columns
    (:func:`pipeline.method.features.cell_columns` of the final pass's sums) and the positive calls
    (thresholds from the final pass's backgrounds; ``auto`` in ``--positive-scope batch`` left for
    the batch) written in, the table rewritten in chunks.

    Returns the ``counts.csv`` fields, the overlay's colours (None without --positive; by rank,
    :meth:`FinalSums.rank`), the flags and the table's columns.
    """
    from pipeline.method.features import cell_columns

    fields, columns = dict(state["fields"]), list(state["columns"] or ["image", *measurement_columns(pixel_size)])
    if final is None:
        return fields, None, [], columns
    cells = None
    if final.cells is not None:
        fields["cell_expansion_px"] = round(final.distance, 3)
        cells = final.cells
        added = list(cell_columns(cells[:, :0], pd.DataFrame({f"mean_{k}": [] for k in final.keys}), final.keys,
                                  pixel_size).columns)
        at = next((i for i, c in enumerate(columns) if c.startswith(("positive_", "spots_"))), len(columns))
        columns[at:at] = added
    calls, colours, flags = None, None, []
    if final.marked:
        positive = [f"positive_{key}" for key in final.marked]
        means = pd.concat(list(table_chunks(path, ["label", "area_px", *(f"mean_{key}" for key in final.marked)])))
        measured = Measured(means.assign(**{c: pd.array([pd.NA] * len(means), dtype="boolean") for c in positive}),
                            fields)
        for key in final.marked:
            set_background(measured, key, final.background[key].level())
            low, high = state["range"].get(key, (0.0, 0.0))
            if low == high:
                measured.constant[key] = low
        call_positive(measured, options)  # --positive-scope batch: 'auto' left uncalled here
        calls, flags = measured.table[positive], measured.flags
        colours = Measured(measured.table.assign(label=final.rank(means["label"].to_numpy()))).colours(count)

    def change(chunk: pd.DataFrame) -> pd.DataFrame:
        if cells is not None:
            grown = cell_columns(cells[:, final.rank(chunk["label"].to_numpy(np.int64))], chunk, final.keys, pixel_size)
            chunk = chunk.assign(**{c: grown[c].to_numpy() for c in grown.columns})
        if calls is not None:
            chunk[calls.columns] = calls.loc[chunk.index].to_numpy()
        return chunk

    rewrite_table(path, columns, change)
    return fields, colours, flags, columns
