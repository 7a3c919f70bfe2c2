"""``nuclei segment``: count and measure nuclei in a biologist's own images.

For every input image (PNG, TIFF, JPEG, BMP; 8/16-bit or float; grey, RGB or RGBA) the command
writes, under ``OUTDIR``:

- ``labels/<name>.tif``: uint16 instance labels (0 = background), a label layer in napari/Fiji;
- ``overlays/<name>.png``: the normalised image with each nucleus outlined in its own colour;

and for the whole run ``nuclei.csv`` (one row per nucleus; intensities in the image's own
units), ``counts.csv`` (one row per image, failures included, naming its output files),
``columns.csv`` (units and meaning of the ``nuclei.csv`` columns) and ``report.html``. The tables
are rewritten as the batch goes, and on an interruption, so that they describe the label files
present. ``<name>`` is the file's stem (see :func:`output_names` when two inputs share one); each
plane of a multi-page TIFF is an image of its own, ``<name>_p<k>`` (k = 0, 1, ...), and each
further series ``<name>_s<j>`` (``<name>_s<j>_p<k>``). The work on one image is
:meth:`pipeline.segmenter.Segmenter.segment` (normalisation, nucleus-size estimate and rescaling,
network, block-wise processing of huge images, watershed); this module reads the inputs and
writes, measures and reports.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import re
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import ROOT, SegmentConfig, load_params
from pipeline.errors import NucleiError, OutputError
from pipeline.inference import TTA_MODES
from pipeline.io import (
    COLOUR_CHANNELS,
    IMAGE_SUFFIXES,
    Plane,
    as_rgb01,
    check_writable_folder,
    colour_channel,
    encode_png,
    list_inputs,
    progress,
    read_planes,
    write_csv,
    write_labels,
    write_png,
    write_text,
)
from pipeline.measure import column_dictionary, intensity_of, measure_nuclei, measurement_columns
from pipeline.overlay import display_uint8, draw_outlines, thumbnail
from pipeline.report import render_report
from pipeline.slide import segment_slide
from pipeline.slide_reader import slide_of

#: Columns of ``counts.csv`` (``median_area_um2`` only with a pixel size).
COUNT_COLUMNS = (
    "image", "source", "series", "plane", "height", "width", "pixel_type", "pixel_size_um", "count",
    "median_area_px", "median_area_um2", "image_type", "diameter_px", "diameter_estimated", "scale",
    "confidence", "flag", "status", "error", "labels_file", "overlay_file",
)  # fmt: skip
#: Smallest image side accepted, in pixels.
MIN_SIDE = 8
#: How many of the files a folder holds besides images the warning names.
SHOWN_OTHERS = 3


# --------------------------------------------------------------------------- the batch


@dataclass
class Settings:
    """Everything :func:`segment_images` needs besides the inputs: the ``segment`` section of
    params.yaml (:class:`pipeline.config.SegmentConfig`) and the per-run flags."""

    model_dir: Path
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    pixel_size: float | None = None
    diameter: float | None = None
    #: Segment (and measure) this colour channel alone (:data:`pipeline.io.COLOUR_CHANNELS`).
    channel: str | None = None

    @classmethod
    def from_params(
        cls, params: dict[str, Any] | None = None, source: str | Path = "params.yaml", **overrides: Any
    ) -> Settings:
        """Build from the ``segment`` section of params.yaml; ``None`` overrides are ignored.

        ``overrides``: ``model_dir``, ``pixel_size``, ``diameter``, ``channel`` and any ``segment`` key.

        Raises
        ------
        NucleiError
            Unknown keys or values out of range, naming ``source``.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        flags = {k: overrides.pop(k) for k in ("model_dir", "pixel_size", "diameter", "channel") if k in overrides}
        section = dict((params or {}).get("segment") or {})
        segment = SegmentConfig.from_dict({**section, **overrides}, source)
        model = Path(segment.model)
        if not model.is_absolute():  # params.yaml paths are relative to the repository
            model = ROOT / model
        settings = cls(model_dir=Path(flags.pop("model_dir", model)), segment=segment, **flags)
        if settings.diameter is not None and not (
            math.isfinite(settings.diameter) and settings.diameter > 0
        ):
            raise NucleiError(f"--diameter must be a positive number of px, got {settings.diameter}")
        if settings.pixel_size is not None and not (
            math.isfinite(settings.pixel_size) and settings.pixel_size > 0
        ):
            raise NucleiError(f"--pixel-size must be a positive number of µm, got {settings.pixel_size}")
        if settings.channel is not None and settings.channel not in COLOUR_CHANNELS:
            raise NucleiError(f"--channel must be one of {', '.join(COLOUR_CHANNELS)}, got {settings.channel!r}")
        return settings


class _Run:
    """What a batch accumulates (rows of counts.csv, measurement tables, thumbnails) and writes.

    :meth:`write_tables` rewrites ``counts.csv``, ``nuclei.csv`` and ``columns.csv`` so that they
    describe the images done so far; ``throttle`` skips a rewrite when the last one is too
    recent for its cost (at most ~10 % of the time goes to rewriting tables).
    """

    def __init__(self, outdir: Path, pixel_size: float | None, earlier: dict[str, str] | None = None):
        self.outdir, self.pixel_size = outdir, pixel_size
        self.counts: list[dict[str, Any]] = []
        self.tables: list[pd.DataFrame] = []
        self.thumbnails: dict[str, bytes] = {}
        self.names: set[str] = set()
        self.earlier = _earlier_sources(outdir / "counts.csv") if earlier is None else earlier
        self._written_at, self._write_cost = -math.inf, 0.0

    def unique_name(self, name: str) -> str:
        """``name``, or ``name-2``, ``name-3``, ... should a plane's name equal another input's."""
        candidate, k = name, 1
        while candidate.casefold() in self.names:
            k += 1
            candidate = f"{name}-{k}"
        self.names.add(candidate.casefold())
        return candidate

    def frames(self) -> tuple[pd.DataFrame, pd.DataFrame]:
        """``counts.csv`` and ``nuclei.csv`` of the images done so far."""
        counts = (
            pd.DataFrame(self.counts, columns=list(COUNT_COLUMNS))
            .reindex(columns=_count_columns(self.pixel_size))
            .astype({c: "Int64" for c in ("series", "plane", "height", "width", "count")})
        )
        columns = ["image", *measurement_columns(self.pixel_size)]
        tables = [t for t in self.tables if isinstance(t, pd.DataFrame)]  # not the slides' (streamed)
        nuclei = pd.concat(tables, ignore_index=True) if tables else pd.DataFrame(columns=columns)
        return counts, nuclei[columns]

    def write_tables(self, throttle: bool = False) -> tuple[pd.DataFrame, pd.DataFrame]:
        start = time.perf_counter()
        if throttle and start - self._written_at < 10 * self._write_cost:
            return self.frames()
        counts, nuclei = self.frames()
        if any(not isinstance(t, pd.DataFrame) for t in self.tables):  # slides' tables: streamed
            from pipeline.slide import write_nuclei_csv

            write_nuclei_csv(self.outdir / "nuclei.csv", self.tables, list(nuclei.columns))
        else:
            write_csv(self.outdir / "nuclei.csv", nuclei)
        write_csv(self.outdir / "counts.csv", counts)
        write_csv(self.outdir / "columns.csv", column_dictionary(self.pixel_size))
        self._written_at = time.perf_counter()
        self._write_cost = self._written_at - start
        return counts, nuclei


def output_names(sources: list[Path]) -> list[str]:
    """The output name of each input: unique in the batch, and the same on a rerun.

    An input's name is its file stem, unless other inputs share that stem (letter case aside):
    then each gets the stem followed by what tells them apart, their file ending and/or as
    many parent folders as needed: ``a/x.png, b/x.png -> x-a, x-b``;
    ``cells.png, cells.tif -> cells-png, cells-tif``.
    """
    names = [source.stem for source in sources]
    groups: dict[str, list[int]] = defaultdict(list)
    for i, source in enumerate(sources):
        groups[source.stem.casefold()].append(i)
    for members in groups.values():
        if len(members) == 1:
            continue
        paths = [sources[i].absolute() for i in members]
        by_suffix = len({p.suffix.casefold() for p in paths}) > 1
        for depth in range(max(len(p.parts) for p in paths)):
            candidates = []
            for p in paths:
                parts = [re.sub(r"[^\w.+-]", "_", q) for q in p.parent.parts[1:][::-1][:depth][::-1]]
                candidates.append("-".join([p.stem, *parts, *([p.suffix[1:]] if by_suffix else [])]))
            if len({c.casefold() for c in candidates}) == len(candidates):
                break
        for i, candidate in zip(members, candidates, strict=True):
            names[i] = candidate
    return names


def _earlier_sources(counts_csv: Path) -> dict[str, str]:
    """image name → source, from the ``counts.csv`` an earlier run left ({} if none/unreadable)."""
    try:
        table = pd.read_csv(counts_csv, usecols=["image", "source"], dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError):
        return {}
    return dict(zip(table["image"], table["source"], strict=True))


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"nuclei: {message}", file=sys.stderr)


def _segment_plane(
    plane: Plane,
    source: Path,
    name: str,
    segmenter,
    settings: Settings,
    run: _Run,
    written: list[Path],
) -> dict[str, Any]:
    """Segment, measure and write one plane; returns its counts.csv row fields.

    ``plane.array`` is (H, W) or (H, W, C) in the file's units (:func:`pipeline.io.read_planes`);
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
    result = segmenter.segment(image, diameter=settings.diameter, normalized=True)
    labels = result.labels
    image = display_uint8(image)
    files = {"labels_file": f"labels/{name}.tif", "overlay_file": f"overlays/{name}.png"}
    written.append(run.outdir / files["labels_file"])
    write_labels(written[-1], labels)
    overlay = draw_outlines(image, labels)
    del image
    written.append(run.outdir / files["overlay_file"])
    write_png(written[-1], overlay)
    run.thumbnails[name] = encode_png(thumbnail(overlay, settings.segment.thumbnail))
    del overlay
    table = measure_nuclei(labels, intensity, pixel_size)
    table.insert(0, "image", name)
    run.tables.append(table)
    row = {
        "count": len(table),
        "median_area_px": table["area_px"].median(),  # NaN if none
        "image_type": result.image_type,
        "diameter_px": None if result.diameter is None else round(result.diameter, 2),
        "diameter_estimated": result.estimated,
        "scale": round(result.scale, 4),
        "confidence": round(result.confidence, 3),
        "flag": result.flag,
        "status": "ok",
        **files,
    }
    if pixel_size is not None:
        row["median_area_um2"] = table["area_um2"].median()
        row["pixel_size_um"] = pixel_size
        run.pixel_size = run.pixel_size or pixel_size
    return row


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
        segmented on its workers (:mod:`pipeline.cluster`); the outputs are those of a local run.
    workers : int, optional
        Start a local Dask cluster of this many worker processes (when no ``scheduler``).
    **settings
        Overrides of other :class:`Settings` fields (``block_size``, ``tta``, ...).

    Returns
    -------
    counts : pandas.DataFrame
        The rows of ``counts.csv`` (``status`` is 'ok' or 'failed' with ``error``).

    Raises
    ------
    NucleiError
        Usage problems, before any image is processed: an input that does not exist, no image
        files at all, an unusable model directory or device, an output folder that cannot be
        created. Problems with single images are recorded in ``counts`` instead.
    """
    start = time.perf_counter()
    if workers is not None and workers < 1:
        raise NucleiError(f"--workers must be at least 1, got {workers}")
    cfg = Settings.from_params(
        params, params_path, model_dir=model_dir, device=device, pixel_size=pixel_size, **settings
    )
    outdir = Path(outdir)
    sources = _find_inputs(inputs, outdir, recursive)
    segmenter = _load(cfg)  # checks the model's thresholds once, up front
    check_writable_folder(outdir)

    names = output_names(sources)
    run = _Run(outdir, cfg.pixel_size)
    run.names = {name.casefold() for name in names}
    run.write_tables()  # from now on the tables describe this run, even if it is interrupted
    try:
        if scheduler or workers:
            from pipeline.cluster import connect, segment_batch

            with connect(scheduler, workers) as client:
                segment_batch(client, list(zip(sources, names, strict=True)), segmenter, cfg, run,
                              lambda items: progress(items, desc="segment", unit="img"))
        else:
            for source, name in progress(list(zip(sources, names, strict=True)), desc="segment", unit="img"):
                _segment_file(source, name, segmenter, cfg, run)
                run.write_tables(throttle=True)
    finally:  # also on Ctrl-C / SIGTERM: the tables describe the label files written
        counts, nuclei = run.write_tables()
        _write_report(counts, nuclei, run, cfg, segmenter, time.perf_counter() - start)
    return counts


def _segment_file(source: Path, base_name: str, segmenter, cfg: Settings, run: _Run, **dask: Any) -> None:
    """Segment every plane of one input file, adding its rows to ``run``; never raises for bad input.

    A huge image that can be read piece by piece goes to :mod:`pipeline.slide` (``dask``: its
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
        name = run.unique_name(base_name + plane.tag) if plane.tag else base_name
        height, width = plane.array.shape[:2]
        row = {**base, "image": name, "series": plane.series, "plane": plane.index, "height": height,
               "width": width, "pixel_type": str(plane.array.dtype)}
        del plane
        written: list[Path] = []
        try:  # the plane is handed over, not kept here: its memory is freed once converted
            row.update(_segment_plane(_take(planes, k), source, name, segmenter, cfg, run, written))
        except Exception as exc:  # one bad image never stops the batch
            _fail(run, row, exc, source, written)
            continue
        run.counts.append(row)


def _segment_slide(slide, name: str, segmenter, cfg: Settings, run: _Run, **dask: Any) -> None:
    """Segment one huge image out of core (:func:`pipeline.slide.segment_slide`), adding its rows."""
    height, width = slide.shape
    pixel_size = cfg.pixel_size or slide.pixel_size  # --pixel-size, else the file's metadata
    row = {"source": str(slide.path), "image": name, "series": 0, "plane": 0, "height": height, "width": width,
           "pixel_type": str(slide.dtype), "pixel_size_um": pixel_size}
    started = time.time()
    try:
        fields, table, run.thumbnails[name] = segment_slide(
            slide, name, run.outdir, segmenter, pixel_size, cfg.diameter, cfg.channel, cfg.segment.thumbnail, **dask)
    except Exception as exc:  # one bad image never stops the batch
        outputs = [run.outdir / sub / f"{name}{end}" for sub, end in
                   (("labels", ".tif"), ("overlays", ".png"), ("tables", ".csv"))]
        _fail(run, row, exc, slide.path, [p for p in outputs if p.is_file() and p.stat().st_mtime >= started])
        return
    run.counts.append({**row, **fields})
    run.tables.append(table)
    run.pixel_size = run.pixel_size or pixel_size


def _fail(run: _Run, row: dict[str, Any], exc: Exception, source: Path, written: list[Path]) -> None:
    """Record a failed image; remove its partial files, and the outputs an earlier run made of it.

    Only files of this input are removed: those it wrote now, and ``labels/<name>.tif`` and
    ``overlays/<name>.png`` when the earlier ``counts.csv`` says they came from the same file.
    """
    row.update(_failure(exc, source))
    _warn(f"error: {row['error']}")
    run.counts.append(row)
    name = row["image"]
    if run.earlier.get(name) == str(source):
        written = [*written, run.outdir / "labels" / f"{name}.tif", run.outdir / "overlays" / f"{name}.png"]
    for path in written:
        path.unlink(missing_ok=True)


def _write_report(counts: pd.DataFrame, nuclei: pd.DataFrame, run: _Run, cfg: Settings, segmenter,
                  seconds: float) -> None:
    area = "area_um2" if run.pixel_size is not None else "area_px"
    slides = [t.areas(area) for t in run.tables if not isinstance(t, pd.DataFrame)]
    info = {
        "model": str(cfg.model_dir),
        "device": str(getattr(segmenter, "device", cfg.segment.device)),
        "time": f"{seconds:.1f} s",
        "written": time.strftime("%Y-%m-%d %H:%M"),
    }
    if cfg.channel is not None:
        info["channel"] = f"{cfg.channel} (--channel: that channel alone segmented and measured)"
    html = render_report(
        counts, np.concatenate([nuclei[area].dropna().to_numpy(float), *slides]), run.thumbnails,
        pixel_size=run.pixel_size, info=info
    )
    write_text(run.outdir / "report.html", html)


def _take(items: list, k: int):
    """``items[k]``, leaving ``None`` in its place (so that the caller holds no reference)."""
    item, items[k] = items[k], None
    return item


def _count_columns(pixel_size: float | None) -> list[str]:
    return [c for c in COUNT_COLUMNS if pixel_size is not None or not c.endswith("_um2")]


def _failure(exc: Exception, source: Path) -> dict[str, Any]:
    """counts.csv fields of an image that failed: a one-line error naming the file."""
    if isinstance(exc, NucleiError):
        message = str(exc)
    elif isinstance(exc, MemoryError):
        message = f"{source}: out of memory (lower segment.block_size in params.yaml)"
    else:  # a bug, or a library refusing this input: name it, keep the batch going
        message = f"{source}: unexpected error ({type(exc).__name__}: {exc})"
    return {"count": None, "status": "failed", "error": " ".join(message.split())}


def _find_inputs(inputs: list[str | Path], outdir: Path, recursive: bool) -> list[Path]:
    """The image files to process (the output folder's own files excluded); warns once of the
    files of folder inputs left out for their ending (:func:`pipeline.io.list_inputs`)."""
    out = outdir.resolve()
    files, others = (
        [f for f in found if out not in f.resolve().parents] for found in list_inputs(inputs, recursive=recursive)
    )
    if not files:
        names = ", ".join(map(str, inputs))
        raise NucleiError(f"{names}: no image files found ({', '.join(IMAGE_SUFFIXES)})")
    if others:
        shown = ", ".join(map(str, others[:SHOWN_OTHERS])) + (
            f" and {len(others) - SHOWN_OTHERS} more" if len(others) > SHOWN_OTHERS else "")
        _warn(f"skipped {len(others)} file{'s' if len(others) > 1 else ''} not ending in "
              f"{', '.join(IMAGE_SUFFIXES)}: {shown}")
    return files


def _load(settings: Settings):
    """Load the :class:`pipeline.segmenter.Segmenter`; usage errors as NucleiError."""
    from pipeline.segmenter import Segmenter

    if not settings.model_dir.is_dir():
        raise NucleiError(
            f"{settings.model_dir}: model directory not found (pass --model DIR or set segment.model "
            "in params.yaml)"
        )
    return Segmenter.from_model_dir(settings.model_dir, **settings.segment.segmenter_options())


# --------------------------------------------------------------------------- command line


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text!r}")
    return value


_EPILOG = """\
writes OUTDIR/labels/<name>.tif (uint16 labels), OUTDIR/overlays/<name>.png, OUTDIR/nuclei.csv,
OUTDIR/counts.csv, OUTDIR/columns.csv (units) and OUTDIR/report.html; <name> is the file name
without its ending (with its folder or ending added when two inputs share it), <name>_p<k> for
plane k of a multi-page TIFF, <name>_s<j> for series j >= 1. Other files in OUTDIR are kept.
exit status: 0 every image segmented, 1 some images failed (see counts.csv) or an output could
not be written, 2 usage error, 130 interrupted (the tables describe the images done)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nuclei segment``."""
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders")
    parser.add_argument("-o", "--out", required=True, type=Path, metavar="OUTDIR", help="output folder")
    parser.add_argument(
        "--model", type=Path, metavar="DIR", help="model directory (default: the shipped model)"
    )
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), help="default: auto (GPU if present)")
    parser.add_argument(
        "--pixel-size", type=_positive, metavar="UM", help="pixel side in µm (adds µm columns)"
    )
    parser.add_argument(
        "--diameter", type=_positive, metavar="PX",
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
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    parser.add_argument("--params", type=Path, help="parameters file (default: params.yaml)")
    parser.add_argument(
        "--scheduler", metavar="ADDRESS",
        help="segment on a Dask cluster: the scheduler's address (tcp://host:8786) or scheduler file; the "
             "output folder and inputs must be visible to every worker (docs/scale-out.md)",
    )
    parser.add_argument(
        "--workers", type=int, metavar="N", help="start a local Dask cluster of N worker processes"
    )


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


def main(args: argparse.Namespace) -> int:
    """Run ``nuclei segment``; 0 = every image segmented, 1 = some failed, 2 = usage error."""
    start = time.perf_counter()
    try:
        params = load_params(args.params)
        with _sigterm_as_interrupt():
            counts = segment_images(
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
                tta=args.tta,
                scheduler=args.scheduler,
                workers=args.workers,
            )
    except OutputError as exc:  # disk full, read-only: after images were processed
        print(f"nuclei: error: {exc}", file=sys.stderr)
        return 1
    except NucleiError as exc:  # nothing was processed: a usage error
        print(f"nuclei: error: {exc}", file=sys.stderr)
        return 2
    ok = counts["status"] == "ok"
    n_failed = int((~ok).sum())
    print(
        f"{int(ok.sum())} images segmented, {int(counts.loc[ok, 'count'].sum())} nuclei, "
        f"{n_failed} failed, {time.perf_counter() - start:.1f} s -> {args.out}/ "
        "(counts.csv, nuclei.csv, report.html, labels/, overlays/)"
    )
    return 1 if n_failed else 0
