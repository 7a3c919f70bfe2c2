"""``nuclei measure``: the tables and report of ``nuclei segment`` from label images you already have.

``nuclei measure IMAGES --labels DIR -o OUT`` measures, for every image of ``IMAGES``, the nuclei of
its label image in ``DIR`` (corrected in napari, or made by Cellpose, StarDist, QuPath, ...): the same
``nuclei.csv``, ``counts.csv``, ``columns.csv``, ``report.html``, ``labels/``, ``overlays/`` and, with
the same options, the same channels, positive calls, cells and spots as ``nuclei segment`` writes
(:func:`pipeline.batch.one_file.image_outputs`, one home for both), without segmenting again. What
only a segmentation knows is left empty: ``image_type``, ``diameter_px``, ``scale`` and the
``confidence`` of the image and of each nucleus (labels made elsewhere have no probabilities).

The label image of ``<name>`` (the output name ``nuclei segment`` would give the image, ``<name>_p<k>``
for a plane) is ``DIR/<name>.tif`` (or ``.tiff``, ``.png``), or ``<name>`` with another tool's suffix
(``_masks``, ``_cp_masks``, ``_labels``: :data:`pipeline.batch.export.LABEL_SUFFIXES`); so a
``nuclei segment`` output's ``labels/`` folder, corrected, is measured as it is. Each label image
must be one grey plane of whole numbers of its image's size; a binary mask is split into its
connected regions (:func:`pipeline.batch.export.read_label_image`). Label ids are kept as given (up to
2**31-1; labels/ in uint32 beyond 65,535).

An image larger than ``segment.slide_pixels`` (50 Mpx) read piece by piece, with a label image read
piece by piece too (a tiled TIFF, as ``nuclei segment`` writes for a slide), is measured out of core
(:func:`pipeline.batch.slide.measure_slide`), block by block, its table streamed.

Must not: segment or import torch.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from pipeline.arguments import POSITIVE
from pipeline.batch.lock import folder_lock
from pipeline.batch.one_file import finish_batch, label_index, measure_file
from pipeline.batch.outlines import parse_formats
from pipeline.batch.output_folder import (
    Tables,
    check_output_folder,
    remove_leftovers,
    warn,
)
from pipeline.batch.segment import find_images, run_batch, write_report
from pipeline.batch.settings import MeasureOptions, add_measure_arguments, check_channels, measure_options
from pipeline.config.params import SegmentConfig
from pipeline.errors import NucleiError, before_work
from pipeline.files.io import COLOUR_CHANNELS
from pipeline.progress import progress


def measure_images(inputs: list[str | Path], labels: str | Path, outdir: str | Path, pixel_size: float | None = None,
                   recursive: bool = False, *, channel: str | None = None,
                   measure: MeasureOptions | None = None, exports: tuple[str, ...] = (), wait: bool = False,
                   thumbnail: int = SegmentConfig.thumbnail, slide_pixels: int = SegmentConfig.slide_pixels) -> pd.DataFrame:
    """Measure the nuclei of existing label images (module docstring).

    Parameters
    ----------
    inputs : list of str or Path
        Image files and folders.
    labels : str or Path
        The folder of label images.
    outdir : str or Path
        Output folder, as ``nuclei segment``'s.
    pixel_size : float, optional
        µm per pixel (default: the files' metadata).
    recursive : bool
    channel : str, optional
        ``--channel``: measure one colour of each image alone.
    measure : MeasureOptions, optional
        Channels, positivity, cells, spots.
    exports : tuple of str
        ``--export`` formats.
    wait : bool
        Wait for another run holding the output folder.
    thumbnail : int
        px, the report's thumbnails.
    slide_pixels : int
        An image larger than this, read piece by piece with its label image, is measured out of core
        (``segment.slide_pixels``' default, as ``nuclei segment``).

    Returns
    -------
    counts : pandas.DataFrame
        This run's rows of ``counts.csv`` (``labels_source``: the label image measured).

    Raises
    ------
    UsageError
        Before any work: no labels folder, no images, two label images of one name (``x.tif`` and
        ``x.png``: one line naming both), bad options, an unusable output folder.
    """
    start = time.perf_counter()
    options = measure or MeasureOptions()
    labels = Path(labels)
    outdir = Path(outdir)
    with before_work():
        check_channels(channel, options)
        if not labels.is_dir():
            raise NucleiError(f"{labels}: no such folder (--labels: the folder of label images)")
        found = label_index(labels)
        if not found:
            raise NucleiError(f"{labels}: no label images in it (TIFF or PNG)")
        sources, options, names = find_images(inputs, outdir, recursive, options)
        check_output_folder(outdir)
    with folder_lock(outdir, wait=wait, what="nuclei measure", note=warn):
        for problem in remove_leftovers(outdir):
            warn(f"error: {problem}")
        run = Tables(outdir, pixel_size, names, exports)
        run.write()
        try:
            for source, name in progress(list(zip(sources, names, strict=True)), desc="measure", unit="img"):
                measure_file(source, name, found, channel, options, pixel_size, exports, run, thumbnail, slide_pixels)
                run.write_soon()
        finally:
            finish_batch(run, options, thumbnail)
            counts, nuclei = run.write()
            info = {"labels": f"{labels} (measured, not segmented: no confidence)",
                    "time": f"{time.perf_counter() - start:.1f} s", "written": time.strftime("%Y-%m-%d %H:%M")}
            if channel is not None:
                info["channel"] = f"{channel} (--channel: that channel alone measured)"
            write_report(counts, nuclei, run, options, info)
    return counts.iloc[: len(run.counts)]


_EPILOG = """\
for each image, its label image in DIR: DIR/<name>.tif (.tiff, .png), or <name>_masks, <name>_cp_masks,
<name>_labels, ... (Cellpose, StarDist, napari), <name> as nuclei segment names outputs (<name>_p<k> for
plane k). Writes what nuclei segment writes: OUTDIR/nuclei.csv, counts.csv, columns.csv, report.html,
labels/, overlays/ (and cells/, spots/, geojson/, rois/ when asked); confidence columns stay empty.
exit status: 0 every image measured, 1 some failed (see counts.csv), 2 usage error, 130 interrupted."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nuclei measure``."""
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    parser.add_argument("--labels", required=True, type=Path, metavar="DIR", help="the folder of label images")
    parser.add_argument("-o", "--out", required=True, type=Path, metavar="OUTDIR", help="output folder")
    parser.add_argument("--pixel-size", type=POSITIVE, metavar="UM", help="pixel side in µm (adds µm columns)")
    parser.add_argument("--channel", choices=tuple(COLOUR_CHANNELS), help="measure this colour channel alone")
    parser.add_argument("--export", type=parse_formats, default=(), metavar="FORMATS",
                        help="also write the outlines: geojson (QuPath), imagej (Fiji), or geojson,imagej")
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    parser.add_argument("--wait", action="store_true", help="wait for another run writing to OUTDIR")
    add_measure_arguments(parser)


def main(args: argparse.Namespace) -> int:
    """Run ``nuclei measure``; 0 = every image measured, 1 = some failed, 2 = usage error."""
    return run_batch(lambda: measure_images(args.inputs, args.labels, args.out, args.pixel_size, args.recursive,
                                            channel=args.channel, measure=measure_options(args),
                                            exports=args.export, wait=args.wait),
                     "measured", args.out, args.export)
