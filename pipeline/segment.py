"""``nuclei segment``: count and measure nuclei in a biologist's own images.

For every input image (PNG, TIFF, JPEG, BMP; 8/16-bit or float; grey, RGB or RGBA) the command
writes, under ``OUTDIR``:

- ``labels/<name>.tif``: uint16 instance labels (0 = background), a label layer in napari/Fiji;
- ``overlays/<name>.png``: the normalised image with each nucleus outlined in its own colour;

and for the whole run ``nuclei.csv`` (one row per nucleus), ``counts.csv`` (one row per image,
failures included) and ``report.html``. ``<name>`` is the file's stem; each plane of a
multi-page TIFF is an image of its own, ``<stem>_p<k>`` (k = 0, 1, ...). The work on one image
is :meth:`pipeline.segmenter.Segmenter.segment` (normalisation, nucleus-size estimate and
rescaling, network, block-wise processing of huge images, watershed); this module reads the
inputs and writes, measures and reports.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config import ROOT, SegmentConfig, load_params
from pipeline.errors import NucleiError
from pipeline.io import (
    IMAGE_SUFFIXES,
    list_images,
    progress,
    read_image_planes,
    write_csv,
    write_labels,
    write_png,
    write_text,
)
from pipeline.measure import measure_nuclei, measurement_columns
from pipeline.overlay import display_uint8, draw_outlines, encode_png, thumbnail
from pipeline.report import render_report

#: Columns of ``counts.csv`` (``median_area_um2`` only with a pixel size).
COUNT_COLUMNS = (
    "image", "source", "plane", "height", "width", "count",
    "median_area_px", "median_area_um2", "diameter_px", "diameter_estimated", "scale",
    "confidence", "flag", "status", "error",
)  # fmt: skip
#: Smallest image side accepted, in pixels.
MIN_SIDE = 8


# --------------------------------------------------------------------------- the batch


@dataclass
class Settings:
    """Everything :func:`segment_images` needs besides the inputs (from params.yaml + flags);
    defaults are those of :class:`pipeline.config.SegmentConfig`."""

    model_dir: Path
    device: str = SegmentConfig.device
    pixel_size: float | None = None
    diameter: float | None = None
    tta: str = SegmentConfig.tta
    tile_size: int = SegmentConfig.tile_size
    overlap: int = SegmentConfig.overlap
    batch_size: int = SegmentConfig.batch_size
    precision: str = SegmentConfig.precision
    block_size: int = SegmentConfig.block_size
    block_margin: int = SegmentConfig.block_margin
    thumbnail: int = SegmentConfig.thumbnail

    @classmethod
    def from_params(
        cls, params: dict[str, Any] | None = None, source: str | Path = "params.yaml", **overrides: Any
    ) -> Settings:
        """Build from the ``segment`` section of params.yaml; ``None`` overrides are ignored.

        Raises
        ------
        NucleiError
            Unknown keys or values out of range, naming ``source``.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        flags = {k: overrides.pop(k) for k in ("model_dir", "pixel_size", "diameter") if k in overrides}
        section = dict((params or {}).get("segment") or {})
        cfg = SegmentConfig.from_dict({**section, **overrides}, source).to_dict()
        model = Path(cfg.pop("model"))
        if not model.is_absolute():  # params.yaml paths are relative to the repository
            model = ROOT / model
        settings = cls(model_dir=Path(flags.pop("model_dir", model)), **flags, **cfg)
        if settings.diameter is not None and not (
            math.isfinite(settings.diameter) and settings.diameter > 0
        ):
            raise NucleiError(f"--diameter must be a positive number of px, got {settings.diameter}")
        if settings.pixel_size is not None and not (
            math.isfinite(settings.pixel_size) and settings.pixel_size > 0
        ):
            raise NucleiError(f"--pixel-size must be a positive number of µm, got {settings.pixel_size}")
        return settings


@dataclass
class _Run:
    """What a batch accumulates: rows of counts.csv, measurement tables, thumbnails."""

    counts: list[dict[str, Any]] = field(default_factory=list)
    tables: list[pd.DataFrame] = field(default_factory=list)
    thumbnails: dict[str, bytes] = field(default_factory=dict)
    names: set[str] = field(default_factory=set)

    def unique_name(self, name: str) -> str:
        """``name``, or ``name-2``, ``name-3``, ... when two inputs share a stem."""
        candidate, k = name, 1
        while candidate in self.names:
            k += 1
            candidate = f"{name}-{k}"
        self.names.add(candidate)
        return candidate


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"nuclei: {message}", file=sys.stderr)


def _segment_plane(
    image: np.ndarray,
    source: Path,
    name: str,
    outdir: Path,
    segmenter,
    settings: Settings,
    run: _Run,
) -> dict[str, Any]:
    """Segment, measure and write one plane; returns its counts.csv row fields."""
    if min(image.shape[:2]) < MIN_SIDE:
        raise NucleiError(
            f"{source}: image of {image.shape[1]}x{image.shape[0]} px is too small to segment"
            f" (at least {MIN_SIDE} px a side)"
        )
    grey = image.mean(axis=2, dtype=np.float32)  # intensities are measured on the image as read
    image = segmenter.normalize(image)  # as the model was trained
    result = segmenter.segment(image, diameter=settings.diameter, normalized=True)
    labels = result.labels
    image = display_uint8(image)
    write_labels(outdir / "labels" / f"{name}.tif", labels)
    overlay = draw_outlines(image, labels)
    del image
    write_png(outdir / "overlays" / f"{name}.png", overlay)
    run.thumbnails[name] = encode_png(thumbnail(overlay, settings.thumbnail))
    del overlay
    table = measure_nuclei(labels, grey, settings.pixel_size)
    table.insert(0, "image", name)
    run.tables.append(table)
    row = {
        "count": len(table),
        "median_area_px": table["area_px"].median(),  # NaN if none
        "diameter_px": None if result.diameter is None else round(result.diameter, 2),
        "diameter_estimated": result.estimated,
        "scale": round(result.scale, 4),
        "confidence": round(result.confidence, 3),
        "flag": result.flag,
        "status": "ok",
    }
    if settings.pixel_size is not None:
        row["median_area_um2"] = table["area_um2"].median()
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
    cfg = Settings.from_params(
        params, params_path, model_dir=model_dir, device=device, pixel_size=pixel_size, **settings
    )
    outdir = Path(outdir)
    sources = _find_inputs(inputs, outdir, recursive)
    segmenter = _load(cfg)
    try:
        outdir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NucleiError(f"{outdir}: cannot create the output folder ({exc.strerror or exc})") from None

    run = _Run()
    for source in progress(sources, desc="segment", unit="img"):
        base = {"source": str(source), "plane": None, "height": None, "width": None}
        try:
            planes = read_image_planes(source)
        except Exception as exc:  # one bad file never stops the batch
            run.counts.append({**base, "image": run.unique_name(source.stem), **_failure(exc, source)})
            _warn(f"error: {run.counts[-1]['error']}")
            _remove_outputs(outdir, source.stem)
            continue
        for k in range(len(planes)):
            name = run.unique_name(source.stem if len(planes) == 1 else f"{source.stem}_p{k}")
            height, width = planes[k].shape[:2]
            row = {**base, "image": name, "plane": k, "height": height, "width": width}
            try:  # the plane is handed over, not kept here: its memory is freed once normalised
                row.update(_segment_plane(_take(planes, k), source, name, outdir, segmenter, cfg, run))
            except Exception as exc:  # one bad image never stops the batch
                row.update(_failure(exc, source))
                _warn(f"error: {row['error']}")
                _remove_outputs(outdir, name)
            run.counts.append(row)

    counts = (
        pd.DataFrame(run.counts)
        .reindex(columns=_count_columns(cfg.pixel_size))
        .astype({"plane": "Int64", "height": "Int64", "width": "Int64", "count": "Int64"})
    )
    columns = ["image", *measurement_columns(cfg.pixel_size)]
    nuclei = pd.concat(run.tables, ignore_index=True) if run.tables else pd.DataFrame(columns=columns)
    write_csv(outdir / "nuclei.csv", nuclei[columns])
    write_csv(outdir / "counts.csv", counts)
    area = "area_um2" if cfg.pixel_size is not None else "area_px"
    seconds = time.perf_counter() - start
    info = {
        "model": str(cfg.model_dir),
        "device": str(getattr(segmenter, "device", cfg.device)),
        "time": f"{seconds:.1f} s",
        "written": time.strftime("%Y-%m-%d %H:%M"),
    }
    html = render_report(
        counts, nuclei[area].to_numpy(float), run.thumbnails, pixel_size=cfg.pixel_size, info=info
    )
    write_text(outdir / "report.html", html)
    return counts


def _remove_outputs(outdir: Path, name: str) -> None:
    """Delete the label image and overlay of ``name`` left by an earlier run (it failed now)."""
    for stale in (outdir / "labels" / f"{name}.tif", outdir / "overlays" / f"{name}.png"):
        stale.unlink(missing_ok=True)


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
    """The image files to process (the output folder's own files excluded)."""
    files = list_images(inputs, recursive=recursive)
    out = outdir.resolve()
    files = [f for f in files if out not in f.resolve().parents]
    if not files:
        names = ", ".join(map(str, inputs))
        raise NucleiError(f"{names}: no image files found ({', '.join(IMAGE_SUFFIXES)})")
    return files


def _load(settings: Settings):
    """Load the :class:`pipeline.segmenter.Segmenter`; usage errors as NucleiError."""
    from pipeline.segmenter import Segmenter

    if not settings.model_dir.is_dir():
        raise NucleiError(
            f"{settings.model_dir}: model directory not found (pass --model DIR or set segment.model "
            "in params.yaml)"
        )
    return Segmenter.from_model_dir(
        settings.model_dir,
        device=settings.device,
        tta=settings.tta,
        tile_size=settings.tile_size,
        overlap=settings.overlap,
        batch_size=settings.batch_size,
        precision=settings.precision,
        block_size=settings.block_size,
        block_margin=settings.block_margin,
    )


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
OUTDIR/counts.csv and OUTDIR/report.html; <name> is the file name without its ending, and
<stem>_p<k> for plane k of a multi-page TIFF. Other files in OUTDIR are kept.
exit status: 0 every image segmented, 1 some images failed (see counts.csv), 2 usage error."""


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
    parser.add_argument("--recursive", action="store_true", help="also read images in sub-folders")
    parser.add_argument("--params", type=Path, help="parameters file (default: params.yaml)")


def main(args: argparse.Namespace) -> int:
    """Run ``nuclei segment``; 0 = every image segmented, 1 = some failed, 2 = usage error."""
    start = time.perf_counter()
    try:
        params = load_params(args.params)
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
        )
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
