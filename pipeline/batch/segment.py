"""``nuclei segment``: count and measure nuclei in a biologist's own images.

For every input image (PNG, TIFF, JPEG, BMP; 8/16-bit or float; grey, RGB or RGBA) the command
writes, under ``OUTDIR``:

- ``labels/<name>.tif``: uint16 instance labels (uint32 beyond 65,535; 0 = background), a label layer in napari/Fiji;
- ``overlays/<name>.png``: the normalised image with each nucleus outlined in its own colour;
- with ``--export``: ``geojson/<name>.geojson`` (QuPath) and/or ``rois/<name>.zip`` (Fiji's ROI
  Manager), the outlines of :mod:`pipeline.batch.outlines`;
- with ``--nuclear-channel`` (:class:`pipeline.batch.settings.MeasureOptions`): every channel measured,
  positive calls, ``cells/<name>.tif`` and ``spots/<name>.csv`` (:mod:`pipeline.batch.image_features`);

and for the whole run ``nuclei.csv`` (one row per nucleus; intensities in the image's own
units), ``counts.csv`` (one row per image, failures included, naming its output files),
``columns.csv`` (units and meaning of the ``nuclei.csv`` columns) and ``report.html``. The tables
are rewritten as the batch goes, and on an interruption, so that they describe the label files
present (:class:`pipeline.batch.output_folder.Tables`, which also owns the output names: ``<name>`` is
the file's stem, see :func:`pipeline.batch.output_folder.output_names` when two inputs share one); each
plane of a multi-page TIFF is an image of its own, ``<name>_p<k>`` (k = 0, 1, ...), and each
further series ``<name>_s<j>`` (``<name>_s<j>_p<k>``). The work on one file is
:func:`pipeline.batch.one_file.segment_file` (through :meth:`pipeline.model.segmenter.Segmenter.segment`,
or out of core for huge images, :mod:`pipeline.batch.slide`); this module lists the inputs, runs the
batch here or on a Dask cluster (``--workers``, ``--scheduler``: :mod:`pipeline.batch.cluster`) and
writes the tables and report, holding the output folder's lock (:func:`pipeline.batch.lock.folder_lock`).
"""

from __future__ import annotations

import argparse
import contextlib
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.arguments import POSITIVE, number
from pipeline.batch.lock import folder_lock
from pipeline.batch.one_file import finish_batch, segment_file
from pipeline.batch.outlines import FORMATS, parse_formats
from pipeline.batch.output_folder import (
    COUNT_COLUMNS,
    COUNTS_CSV,
    IMAGE_FOLDERS,
    NUCLEI_CSV,
    REPORT_HTML,
    Tables,
    check_output_folder,
    output_names,
    remove_leftovers,
    warn,
)
from pipeline.batch.report import render_report
from pipeline.batch.settings import (
    MeasureOptions,
    Settings,
    StackOptions,
    add_measure_arguments,
    load_segmenter,
    measure_options,
)
from pipeline.config.params import TTA_MODES, Z_METHODS, load_params
from pipeline.errors import NucleiError, OutputError
from pipeline.files.channels import ChannelPattern, output_stem
from pipeline.files.inputs import IMAGE_SUFFIXES, file_kind, list_inputs
from pipeline.files.io import COLOUR_CHANNELS, write_text
from pipeline.method.image_types import IMAGE_TYPES
from pipeline.progress import progress

__all__ = ["COUNT_COLUMNS", "Settings", "segment_images", "add_arguments", "main"]
#: How many of the files a folder holds besides images the warning names.
SHOWN_OTHERS = 3


# --------------------------------------------------------------------------- the batch


def segment_images(
    inputs: list[str | Path],
    outdir: str | Path,
    model_dir: str | Path | None = None,
    device: str | None = None,
    pixel_size: float | None = None,
    recursive: bool = False,
    *,
    params: dict[str, Any] | None = None,
    params_path: str | Path = "params.yaml",
    scheduler: str | None = None,
    workers: int | None = None,
    **settings: Any,
) -> pd.DataFrame:
    """Segment, count and measure the nuclei of a batch of images.

    Parameters
    ----------
    inputs : list of str or Path
        Image files and folders (their image files; sub-folders too when ``recursive``).
    outdir : str or Path
        Output folder (created; existing files of other images are kept).
    model_dir : str or Path, optional
        Model directory; default ``segment.model`` of params.yaml (the shipped model).
    device : {'auto', 'cpu', 'cuda'}, optional
        Default ``segment.device``.
    pixel_size : float, optional
        Pixel side in µm; adds µm columns.
    recursive : bool
        Look into sub-folders of folder inputs.
    params : dict, optional
        Parsed params.yaml (its ``segment`` section is used); default: built-in defaults.
    params_path : str or Path
        Where ``params`` came from, for error messages.
    scheduler : str, optional
        Address (or scheduler file) of a Dask scheduler: images, and blocks of huge images, are
        segmented on its workers (:mod:`pipeline.batch.cluster`); the outputs are those of a local run.
    workers : int, optional
        Start a local Dask cluster of this many worker processes (when no ``scheduler``).
    **settings
        Overrides of other :class:`Settings` fields (``block_size``, ``tta``, ...).

    Returns
    -------
    counts : pandas.DataFrame
        This run's rows of ``counts.csv`` (``status`` is 'ok' or 'failed' with ``error``); the
        file also keeps the rows of earlier runs' images still present.

    Raises
    ------
    NucleiError
        Usage problems, before any image is processed: an input that does not exist, no image
        files at all, an unusable model directory or device, an output folder that cannot be
        created or is in use by another run (unless ``wait=True``). Problems with single images
        are recorded in ``counts`` instead.
    """
    start = time.perf_counter()
    _check_cluster(scheduler, workers)  # before the output folder is touched
    cfg = Settings.from_params(params, params_path, model_dir=model_dir, device=device, pixel_size=pixel_size,
                               **settings)
    outdir = Path(outdir)
    sources, cfg.measure, names = find_images(inputs, outdir, recursive, cfg.measure, cfg.stacks.frames)
    segmenter = load_segmenter(cfg)  # checks the model's thresholds once, up front
    check_output_folder(outdir)
    with folder_lock(outdir, wait=cfg.wait, what="nuclei segment", note=warn):  # one run at a time
        for problem in remove_leftovers(outdir):  # of a killed run: no other run writes here now
            warn(f"error: {problem}")
        run = Tables(outdir, cfg.pixel_size, names, cfg.exports)
        run.write()  # from now on the tables describe the label files present, even if interrupted
        try:
            _segment_items(list(zip(sources, names, strict=True)), segmenter, cfg, run, scheduler, workers)
        finally:  # also on Ctrl-C / SIGTERM
            finish_batch(run, cfg.measure, cfg.segment.thumbnail)
            counts, nuclei = run.write()
            _write_report(counts, nuclei, run, cfg, segmenter, time.perf_counter() - start)
    return counts.iloc[: len(run.counts)]


def _check_cluster(scheduler: str | None, workers: int | None) -> None:
    """``--scheduler`` and ``--workers`` checked (:func:`pipeline.batch.cluster.scheduler_target`)."""
    if workers is not None and workers < 1:
        raise NucleiError(f"--workers must be at least 1, got {workers}")
    if scheduler is not None:
        from pipeline.batch.cluster import scheduler_target

        scheduler_target(scheduler)


def _segment_items(items: list[tuple[Path, str]], segmenter, cfg: Settings, run: Tables, scheduler: str | None,
                   workers: int | None) -> None:
    """Segment ``items`` (source, output name), adding their rows to ``run`` in order: here, one
    file at a time (:func:`pipeline.batch.one_file.segment_file`), or on a Dask cluster
    (:func:`pipeline.batch.cluster.segment_batch`)."""
    if scheduler is not None or workers:
        from pipeline.batch.cluster import connect, segment_batch

        with connect(scheduler, workers) as client:
            segment_batch(client, items, segmenter, cfg, run, lambda todo: progress(todo, desc="segment", unit="img"))
        return
    for source, name in progress(items, desc="segment", unit="img"):
        segment_file(source, name, segmenter, cfg, run)
        run.write_soon()


def _write_report(counts: pd.DataFrame, nuclei: pd.DataFrame, run: Tables, cfg: Settings, segmenter,
                  seconds: float) -> None:
    info = {
        "model": str(cfg.model_dir) + _networks_note(segmenter, cfg.model_dir),
        "device": str(getattr(segmenter, "device", cfg.segment.device)),
        "time": f"{seconds:.1f} s",
        "written": time.strftime("%Y-%m-%d %H:%M"),
    }
    if cfg.channel is not None:
        info["channel"] = f"{cfg.channel} (--channel: that channel alone segmented and measured)"
    write_report(counts, nuclei, run, cfg.measure, info)


def _networks_note(segmenter, model_dir: Path) -> str:
    """'' or, for a model with more networks than one, which images its other networks segmented."""
    config = getattr(segmenter, "config", None)
    if config is None:
        return ""
    notes = [f"{route.describe()}: its {route.name} network {config.network_folder(model_dir, route)}"
             for route in config.routes]
    return f" ({'; '.join(notes)})" if notes else ""


def write_report(counts: pd.DataFrame, nuclei: pd.DataFrame, run: Tables, options: MeasureOptions,
                 info: dict[str, str]) -> None:
    """``report.html`` of a run (``nuclei segment`` and ``nuclei measure``): areas, each measured
    channel's histogram of nucleus means (with the thresholds of the --positive ones), overlays."""
    area = "area_um2" if run.pixel_size is not None else "area_px"
    slides = [t.areas(area) for t in run.nuclei if not isinstance(t, pd.DataFrame)]  # streamed tables
    if options.channels:
        info["channels"] = (f"--nuclear-channel {options.nuclear_channel} segmented, every channel measured"
                            + (f" (--channel-files {options.channel_files})" if options.channel_files else ""))
    if options.positive:
        info["overlay colours"] = overlay_legend(counts)
    html = render_report(
        counts, np.concatenate([nuclei[area].dropna().to_numpy(float), *slides]), run.thumbnails,
        pixel_size=run.pixel_size, info=info, channels=channel_means(nuclei, run.nuclei),
    )
    write_text(run.outdir / REPORT_HTML, html)


def overlay_legend(counts: pd.DataFrame) -> str:
    """The overlay's colours, in words (:data:`pipeline.method.overlay.POSITIVE_COLOURS`)."""
    names = ("magenta", "yellow", "green", "orange")
    keys = [c[len("threshold_"):] for c in counts.columns if c.startswith("threshold_")]
    parts = [f"positive for {key}: {names[k % len(names)]}" for k, key in enumerate(keys)]
    return ", ".join([*parts, "for several: white", "negative or not called: azure"])


def channel_means(nuclei: pd.DataFrame, tables: list) -> dict[str, np.ndarray]:
    """The nucleus means (``mean_<key>``) of every measured channel (each has a ``median_<key>`` column:
    :data:`pipeline.method.features.CHANNEL_COLUMNS`), streamed slide tables included."""
    keys = [key for key in (c[len("median_"):] for c in nuclei.columns if c.startswith("median_"))
            if f"mean_{key}" in nuclei]
    means = {key: [nuclei[f"mean_{key}"].dropna().to_numpy(float)] for key in keys}
    for table in tables:
        if not isinstance(table, pd.DataFrame):
            wanted = [f"mean_{key}" for key in means if f"mean_{key}" in table.columns]
            if wanted:
                streamed = table.read(wanted)
                for column in wanted:
                    means[column[len("mean_"):]].append(streamed[column].dropna().to_numpy(float))
    return {key: np.concatenate(parts) for key, parts in means.items()}


def find_images(inputs: list[str | Path], outdir: Path, recursive: bool, options: MeasureOptions,
                frames: bool = False) -> tuple[list[Path], MeasureOptions, list[str]]:
    """The images of a batch, the options with the batch's channels, and the output names.

    With ``frames`` (``--frames``) each input is a folder, one time-lapse whose image files are its
    frames (:func:`pipeline.files.stacks.frame_files`).

    With ``--channel-files`` the files are grouped into images
    (:meth:`pipeline.files.channels.ChannelPattern.group`): each source stands for one image's files
    and is named by its ``{stem}``; files the pattern does not name are skipped with a warning.

    Raises
    ------
    NucleiError
        No image at all, or (``frames``) an input that is not a folder of images (usage error).
    """
    if frames:
        from pipeline.files.stacks import frame_files

        folders = [Path(i) for i in inputs]
        for folder in folders:  # each a folder holding frames, or a usage error
            frame_files(folder)
        return folders, options, output_names(folders)
    sources = _find_inputs(inputs, outdir, recursive)
    if options.channel_files is None:
        return sources, options, output_names(sources)
    pattern = ChannelPattern(options.channel_files)
    grouped, unmatched, values = pattern.group(sources)
    if unmatched:
        shown = ", ".join(map(str, unmatched[:SHOWN_OTHERS])) + (
            f" and {len(unmatched) - SHOWN_OTHERS} more" if len(unmatched) > SHOWN_OTHERS else "")
        warn(f"skipped {len(unmatched)} file{'s' if len(unmatched) > 1 else ''} that --channel-files "
             f"{options.channel_files!r} does not name: {shown}")
    if not grouped:
        raise NucleiError(f"{', '.join(map(str, inputs))}: no files named as --channel-files {options.channel_files!r}")
    names = output_names([output_stem(source, pattern) for source in grouped])
    return grouped, replace(options, channel_values=values), names


def _find_inputs(inputs: list[str | Path], outdir: Path, recursive: bool) -> list[Path]:
    """The files to process (:func:`pipeline.files.inputs.list_inputs`: every file named, the image files
    of folders outside the output folder); warns once of the files of folders left out."""
    files, others = list_inputs(inputs, recursive=recursive, exclude=outdir)
    if not files:
        names = ", ".join(map(str, inputs))
        raise NucleiError(f"{names}: no image files found ({', '.join(IMAGE_SUFFIXES)})")
    if others:
        shown = ", ".join(map(str, others[:SHOWN_OTHERS])) + (
            f" and {len(others) - SHOWN_OTHERS} more" if len(others) > SHOWN_OTHERS else "")
        odd = " or not regular files (links to nothing, FIFOs)" if any(map(file_kind, others)) else ""
        warn(f"skipped {len(others)} file{'s' if len(others) > 1 else ''} not ending in "
              f"{', '.join(IMAGE_SUFFIXES)}{odd}: {shown}")
    return files


# --------------------------------------------------------------------------- command line


_EPILOG = """\
writes OUTDIR/labels/<name>.tif (uint16 labels; uint32 beyond 65535), OUTDIR/overlays/<name>.png,
OUTDIR/nuclei.csv, OUTDIR/counts.csv, OUTDIR/columns.csv (units) and OUTDIR/report.html; <name> is the
file name without its ending (with its folder or ending added when two inputs share it), <name>_p<k> for
plane k of a multi-page TIFF, <name>_s<j> for series j >= 1. Other files in OUTDIR are kept, and
the tables keep listing the images of earlier runs whose label files remain. One run at a time
writes to OUTDIR (a second one refuses, or waits with --wait).
--export geojson,imagej adds OUTDIR/geojson/<name>.geojson (QuPath) and OUTDIR/rois/<name>.zip (Fiji).
--nuclear-channel C measures every channel of each image (mean_<ch>, ...); --cell-expansion adds
OUTDIR/cells/<name>.tif, --spots OUTDIR/spots/<name>.csv. Labels you already have: nuclei measure.
A z-stack or time-lapse (Z or T axes in its OME / ImageJ metadata, or --axes; --frames: folders of frames)
is segmented in 3D or frame by frame: labels/<name>.tif is a label stack; --track adds OUTDIR/tracks/.
exit status: 0 every image segmented, 1 some images failed (see counts.csv) or an output could
not be written, 2 usage error, 130 interrupted (the tables describe the images done)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nuclei segment``."""
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    parser.add_argument("-o", "--out", required=True, type=Path, metavar="OUTDIR", help="output folder")
    parser.add_argument(
        "--model", type=Path, metavar="DIR",
        help="model directory, or 'he': the shipped H&E variant, non-commercial (default: the shipped model)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto (GPU if present)")
    parser.add_argument(
        "--pixel-size", type=POSITIVE, metavar="UM", help="pixel side in µm (adds µm columns)"
    )
    parser.add_argument(
        "--diameter", type=POSITIVE, metavar="PX",
        help="median nucleus diameter in px (default: estimated per image)",
    )
    parser.add_argument(
        "--channel", choices=tuple(COLOUR_CHANNELS),
        help="segment and measure this colour channel alone: the nuclear stain of a composite whose nuclei "
             "are not blue (default: a fluorescence composite is segmented on its blue channel, DAPI or "
             "Hoechst, when that carries signal, else on the channels' mean, and measured on their mean; "
             "grey images are unaffected)",
    )
    parser.add_argument(
        "--tta", choices=TTA_MODES,
        help="test-time augmentation (default: segment.tta of params.yaml, auto: the four flips of images up "
             "to 512x512 px at the network's scale, the half turn up to 724x724, one pass above; none: "
             "one pass, fastest)",
    )
    parser.add_argument(
        "--image-type", choices=IMAGE_TYPES,
        help="image type of every image, instead of typing each by its colour and background: decides "
             "whether the nucleus diameter is estimated (not for brightfield) and the watershed thresholds",
    )
    parser.add_argument(
        "--export", type=parse_formats, default=(), metavar="FORMATS",
        help="also write the outlines: geojson (QuPath, geojson/<name>.geojson), imagej (Fiji ROI "
             "Manager, rois/<name>.zip), or both: geojson,imagej",
    )
    parser.add_argument(
        "--recursive", action="store_true",
        help="also read images in sub-folders (symbolic links to folders followed, each folder once)",
    )
    parser.add_argument(
        "--wait", action="store_true",
        help="when another run is writing to OUTDIR, wait for it to finish (default: refuse, exit 2)",
    )
    parser.add_argument("--params", type=Path, help="parameters file (default: params.yaml)")
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="segment on a Dask cluster: tcp://HOST:PORT (or HOST:PORT), tls://HOST:PORT with Dask's TLS settings, "
             "or a scheduler file written by `dask scheduler --scheduler-file`; checked before connecting; the "
             "output folder and inputs must be visible to every worker (docs/scale-out.md)",
    )
    parser.add_argument(
        "--workers", type=number(integer=True, at_least=1), metavar="N", help="start a local Dask cluster of N worker processes"
    )
    add_measure_arguments(parser)
    add_stack_arguments(parser)


def add_stack_arguments(parser: argparse.ArgumentParser) -> None:
    """The z-stack and time-lapse options of ``nuclei segment`` (:class:`StackOptions`)."""
    group = parser.add_argument_group("z-stacks and time-lapses (docs/stacks.md)")
    group.add_argument(
        "--axes", metavar="AXES",
        help="the axes of every stack file, overriding its OME / ImageJ metadata: T time, Z depth, C channel, "
             "then YX, e.g. ZYX, TYX, TZYX, ZCYX (default: the metadata's; a TIFF without Z or T is read plane "
             "by plane)",
    )
    group.add_argument(
        "--z-method", choices=Z_METHODS,
        help="3D nuclei of a z-stack: ortho (the network on XY, XZ and YZ slices, a 3D watershed; the default) or "
             "stitch (each plane in 2D, labels linked across planes by overlap; coarse z)",
    )
    group.add_argument(
        "--anisotropy", type=float, metavar="A",
        help="z step / pixel side of the stacks (default: from the file's voxel size, else estimated from the "
             "nuclei, taken as deep as wide)",
    )
    group.add_argument(
        "--track", action="store_true",
        help="link the nuclei of a time-lapse into tracks (divisions, gaps of one frame): tracks/<name>.csv and "
             "tracks/<name>.xml (TrackMate); each nucleus keeps its track id as its label",
    )
    group.add_argument(
        "--frames", action="store_true",
        help="each INPUT is a folder holding one time-lapse, its image files the frames in name order",
    )


def stack_options(args: argparse.Namespace) -> StackOptions:
    """The :class:`StackOptions` of parsed arguments (checked by :meth:`StackOptions.check`)."""
    return StackOptions(axes=args.axes, z_method=args.z_method, anisotropy=args.anisotropy, track=args.track,
                        frames=args.frames)


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """Within the block, SIGTERM (``kill``, a job scheduler) interrupts like Ctrl-C."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_batch(work: Callable[[], pd.DataFrame], verb: str, out: Path, exports: tuple[str, ...] = ()) -> int:
    """Run a batch command's ``work`` (it returns the run's ``counts.csv`` rows) and print its summary.

    Returns the exit status: 0 every image done; 1 some failed, or an output could not be written
    after images were processed (:class:`~pipeline.errors.OutputError`); 2 any other
    :class:`~pipeline.errors.NucleiError`, raised before any image was processed (a usage error).
    """
    start = time.perf_counter()
    try:
        counts = work()
    except OutputError as exc:  # disk full, read-only: after images were processed
        print(f"nuclei: error: {exc}", file=sys.stderr)
        return 1
    except NucleiError as exc:  # nothing was processed: a usage error
        print(f"nuclei: error: {exc}", file=sys.stderr)
        return 2
    ok = counts["status"] == "ok"
    n_failed = int((~ok).sum())
    print(
        f"{counts.loc[ok, 'image'].nunique()} images {verb}, {int(counts.loc[ok, 'count'].sum())} nuclei, "
        f"{n_failed} failed, {time.perf_counter() - start:.1f} s -> {out}/ "
        f"({', '.join([COUNTS_CSV, NUCLEI_CSV, REPORT_HTML, *(f'{d}/' for d in IMAGE_FOLDERS)])}"
        f"{''.join(f', {FORMATS[f].folder}/' for f in exports)})"
    )
    return 1 if n_failed else 0


def main(args: argparse.Namespace) -> int:
    """Run ``nuclei segment``; 0 = every image segmented, 1 = some failed, 2 = usage error."""

    def work() -> pd.DataFrame:
        params = load_params(args.params)
        measure = measure_options(args)
        with _sigterm_as_interrupt():
            return segment_images(
                args.inputs,
                args.out,
                args.model,
                args.device,
                args.pixel_size,
                args.recursive,
                params=params,
                params_path=args.params or "params.yaml",
                diameter=args.diameter,
                channel=args.channel,
                image_type=args.image_type,
                wait=args.wait,
                tta=args.tta,
                exports=args.export,
                scheduler=args.scheduler,
                workers=args.workers,
                measure=measure,
                stacks=stack_options(args),
            )

    return run_batch(work, "segmented", args.out, args.export)
