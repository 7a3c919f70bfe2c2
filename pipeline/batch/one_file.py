"""One input file of ``nuclei segment``: its images segmented, measured and written, its rows of the tables.

:func:`segment_file` reads a file's planes (:func:`pipeline.files.io.read_planes`) and, for each,
normalises, segments (:meth:`pipeline.model.segmenter.Segmenter.segment`), writes ``labels/<name>.tif``,
``overlays/<name>.png`` and the ``--export`` files, and measures the nuclei, adding the rows to a
:class:`pipeline.batch.output_folder.Tables`. A huge image that can be read piece by piece goes to
:mod:`pipeline.batch.slide` instead (out of core). A bad input never raises: it is a 'failed' row, and its
partial files (and the outputs an earlier run made of the same file) are removed. It runs in
:func:`pipeline.batch.segment.segment_images`'s process or on a Dask worker (:mod:`pipeline.batch.cluster`).

Must not: list inputs, take the output folder's lock, or write the tables and report.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from pipeline.batch.outlines import FORMATS, export_path, write_export
from pipeline.batch.output_folder import (
    Tables,
    counts_row,
    image_files,
    labels_file,
    overlay_file,
    remove_files,
    slide_table_file,
    unique_name,
)
from pipeline.batch.settings import Settings
from pipeline.batch.slide import segment_slide
from pipeline.errors import NucleiError
from pipeline.files.io import (
    Plane,
    as_rgb01,
    colour_channel,
    encode_png,
    read_planes,
    write_labels,
    write_png,
)
from pipeline.files.orientation import describe
from pipeline.files.slide_reader import slide_of
from pipeline.method.measure import intensity_of, measure_nuclei
from pipeline.method.overlay import display_uint8, draw_outlines, thumbnail

#: Smallest image side accepted, in pixels.
MIN_SIDE = 8
#: The flag of an image segmented out of core when ``--export`` was asked for.
SLIDE_EXPORT_NOTE = "--export: outlines not written for an image segmented out of core (docs/scale-out.md)"


def warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"nuclei: {message}", file=sys.stderr)


def _segment_plane(
    plane: Plane,
    source: Path,
    name: str,
    segmenter,
    settings: Settings,
    run: Tables,
    written: list[Path],
) -> dict[str, Any]:
    """Segment, measure and write one plane; returns its counts.csv row fields.

    ``plane.array`` is (H, W) or (H, W, C) in the file's units (:func:`pipeline.files.io.read_planes`);
    the nuclei are measured on it (on its ``settings.channel`` alone when set), the network sees
    it normalised. Files written are appended to ``written``.
    """
    array = plane.array if settings.channel is None else colour_channel(plane.array, settings.channel)
    pixel_size = settings.pixel_size or plane.pixel_size  # --pixel-size, else the file's metadata
    del plane  # the caller holds no reference: the file's array is freed here
    intensity = intensity_of(array)  # in the image's own units, whatever its pixel type
    image = as_rgb01(array)
    del array
    image = segmenter.normalize(image)  # as the model was trained
    result = segmenter.segment(image, diameter=settings.diameter, normalized=True, image_type=settings.image_type)
    labels = result.labels
    image = display_uint8(image)
    written.append(run.outdir / labels_file(name))
    write_labels(written[-1], labels)
    overlay = draw_outlines(image, labels)
    del image
    written.append(run.outdir / overlay_file(name))
    write_png(written[-1], overlay)
    run.thumbnails[name] = encode_png(thumbnail(overlay, settings.segment.thumbnail))
    del overlay
    table = measure_nuclei(labels, intensity, pixel_size)
    exported = {}
    for fmt in settings.exports:  # --export: geojson/<name>.geojson, rois/<name>.zip
        exported[FORMATS[fmt].column] = export_path(fmt, name)
        written.append(run.outdir / exported[FORMATS[fmt].column])
        write_export(fmt, written[-1], labels, table)
    table.insert(0, "image", name)
    run.nuclei.append(table)
    row = counts_row(name, len(table), table["area_px"].median(),  # NaN if none
                     result.image_type, result.diameter, result.estimated, result.scale, result.confidence,
                     result.flag, pixel_size, None if pixel_size is None else table["area_um2"].median())
    if pixel_size is not None:
        run.pixel_size = run.pixel_size or pixel_size
    return {**row, **exported}


def segment_file(source: Path, base_name: str, segmenter, cfg: Settings, run: Tables, **dask: Any) -> None:
    """Segment every plane of one input file, adding its rows to ``run``; never raises for bad input.

    A huge image that can be read piece by piece goes to :mod:`pipeline.batch.slide` (``dask``: its
    ``map_ordered`` and ``block_segmenter``, to segment its blocks on a cluster)."""
    base = {"source": str(source)}
    try:
        slide = slide_of(source, cfg.segment.slide_pixels)
    except Exception as exc:  # one bad file never stops the batch
        _fail(run, {**base, "image": base_name}, exc, source, [])
        return
    if slide is not None:
        _segment_slide(slide, base_name, segmenter, cfg, run, **dask)
        return
    try:
        planes = read_planes(source)
    except Exception as exc:  # one bad file never stops the batch
        _fail(run, {**base, "image": base_name}, exc, source, [])
        return
    small = [p for p in planes if min(p.array.shape[:2]) < MIN_SIDE]
    if small:  # one line for them all (an H x W x 2 array saved as 256 pages of 256 x 2 px)
        h, w = small[0].array.shape[:2]
        what = f"{len(small)} of its {len(planes)} planes are" if len(planes) > 1 else "image is"
        error = NucleiError(
            f"{source}: {what} too small to segment ({w}x{h} px; at least {MIN_SIDE} px a side)"
        )
        _fail(run, {**base, "image": base_name}, error, source, [])
        planes = [p for p in planes if min(p.array.shape[:2]) >= MIN_SIDE]
    for k in range(len(planes)):
        plane: Plane = planes[k]
        name = unique_name(base_name + plane.tag, run.names) if plane.tag else base_name
        height, width = plane.array.shape[:2]
        row = {**base, "image": name, "series": plane.series, "plane": plane.index, "height": height,
               "width": width, "pixel_type": str(plane.array.dtype), "orientation": describe(plane.orientation)}
        del plane
        written: list[Path] = []
        try:  # the plane is handed over, not kept here: its memory is freed once converted
            row.update(_segment_plane(_take(planes, k), source, name, segmenter, cfg, run, written))
        except Exception as exc:  # one bad image never stops the batch
            _fail(run, row, exc, source, written)
            continue
        run.counts.append(row)


def _segment_slide(slide, name: str, segmenter, cfg: Settings, run: Tables, **dask: Any) -> None:
    """Segment one huge image out of core (:func:`pipeline.batch.slide.segment_slide`), adding its rows.
    ``--export`` files are not written for it: its flag says so."""
    height, width = slide.shape
    pixel_size = cfg.pixel_size or slide.pixel_size  # --pixel-size, else the file's metadata
    row = {"source": str(slide.path), "image": name, "series": 0, "plane": 0, "height": height, "width": width,
           "pixel_type": str(slide.dtype), "pixel_size_um": pixel_size}
    started = time.time()
    try:
        fields, table, run.thumbnails[name] = segment_slide(
            slide, name, run.outdir, segmenter, pixel_size, cfg.diameter, cfg.channel, cfg.segment.thumbnail,
            image_type=cfg.image_type, **dask)
    except Exception as exc:  # one bad image never stops the batch
        outputs = [run.outdir / file for file in (labels_file(name), overlay_file(name), slide_table_file(name))]
        _fail(run, row, exc, slide.path, [p for p in outputs if p.is_file() and p.stat().st_mtime >= started])
        return
    if cfg.exports:
        fields["flag"] = "; ".join(f for f in (fields["flag"], SLIDE_EXPORT_NOTE) if f)
    run.counts.append({**row, **fields})
    run.nuclei.append(table)
    run.pixel_size = run.pixel_size or pixel_size


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
    if isinstance(exc, NucleiError):
        message = str(exc)
    elif isinstance(exc, MemoryError):
        message = f"{source}: out of memory (lower segment.block_size in params.yaml)"
    else:  # a bug, or a library refusing this input: name it, keep the batch going
        message = f"{source}: unexpected error ({type(exc).__name__}: {exc})"
    return {"count": None, "status": "failed", "error": " ".join(message.split())}
