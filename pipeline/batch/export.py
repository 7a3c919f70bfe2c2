"""``nuclei export``: label images from any tool → QuPath GeoJSON and/or Fiji ROI sets.

``nuclei export LABELS... --to geojson|imagej -o DIR`` writes, for each label image
``<name>.tif``/``.png`` (0 = background, one integer value per nucleus),
``DIR/geojson/<name>.geojson`` and/or ``DIR/rois/<name>.zip`` (:mod:`pipeline.batch.outlines`, the same
files as ``nuclei segment --export``). Each nucleus carries the ``nuclei.csv`` measurements
(:mod:`pipeline.method.features`): with intensities when its image is found, else the geometric ones.
The image of ``<name>`` is

- the file of ``--images`` whose name is ``<name>``, or ``<name>`` without a label suffix of
  another tool (``_masks``, ``_cp_masks``, ``_labels``, ...: :data:`LABEL_SUFFIXES`);
- else, for ``OUT/labels/<name>.tif`` of a ``nuclei segment`` run, the source (and plane)
  ``OUT/counts.csv`` names, if it is still there.

Must not: segment or import torch.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.arguments import POSITIVE
from pipeline.batch.outlines import FORMATS, export_path, parse_formats, write_export
from pipeline.batch.output_folder import COUNTS_CSV, LABELS
from pipeline.errors import NucleiError, one_line
from pipeline.files.inputs import by_stem, list_inputs
from pipeline.files.io import check_writable_folder, read_planes
from pipeline.method.features import intensity_of, measure_nuclei
from pipeline.method.labels import instance_labels
from pipeline.progress import progress

#: Name endings that label files of other tools add to their image's name (Cellpose, StarDist,
#: ilastik, napari), longest first.
LABEL_SUFFIXES = ("_cp_masks", "_masks", "_mask", "_labels", "_label", "-labels", "_seg")
#: ``nuclei.csv`` columns that need the image.
INTENSITY_COLUMNS = ("mean_intensity", "integrated_intensity")


def read_label_image(path: Path) -> np.ndarray:
    """Read a label image written by any tool → int32 (H, W), 0 = background.

    :func:`pipeline.method.labels.instance_labels` makes the labels, as for ``nuclei finetune``:
    any two-valued image (0 and one other value: 0/1, 0/255, bool) of several separate objects is
    a binary mask, each 4-connected region one nucleus; ids beyond int32 are relabelled 1..N in
    their order (each with a warning). Float files are accepted when their values are whole numbers.

    Raises
    ------
    NucleiError
        Unreadable files, several planes or colour channels, negative or fractional values.
    """
    planes = read_planes(path)
    array = planes[0].array
    if len(planes) > 1 or (array.ndim == 3 and array.shape[-1] > 1):
        raise NucleiError(f"{path}: not a label image (several planes or colour channels; expected one grey plane)")
    array = array.reshape(array.shape[:2])
    if array.dtype.kind == "f":
        if not np.array_equal(array, np.round(array)):
            raise NucleiError(f"{path}: not a label image (fractional values; expected whole numbers, one per nucleus)")
        if array.min(initial=0) < 0 or array.max(initial=0) >= 2.0**63:
            raise NucleiError(f"{path}: not a label image (values outside 0..2**63-1)")
        array = array.astype(np.int64)
    if array.min(initial=0) < 0:
        raise NucleiError(f"{path}: not a label image (negative values; expected 0 = background)")
    labels, note = instance_labels(array, str(path))
    if note:
        _warn(note)
    return labels


def find_image(label_file: Path, images: dict[str, Path]) -> tuple[Path, tuple[int, int] | None] | None:
    """The image of a label file and its (series, plane), or None.

    ``images`` maps names (casefolded stems) to the files of ``--images``; failing a match, a
    ``nuclei segment`` output folder's ``counts.csv`` names the source (see the module's docstring).
    """
    stem = label_file.stem
    for name in (stem, *(stem[: -len(s)] for s in LABEL_SUFFIXES if stem.lower().endswith(s) and len(stem) > len(s))):
        if name.casefold() in images:
            return images[name.casefold()], None
    counts = label_file.parent.parent / COUNTS_CSV
    if label_file.parent.name != LABELS or not counts.is_file():
        return None
    try:
        table = pd.read_csv(counts, dtype={"image": str, "source": str}, keep_default_na=False)
        row = table.loc[table["image"] == stem].iloc[0]
        source = Path(row["source"])
        where = (int(row["series"]), int(row["plane"])) if "series" in row and row["series"] != "" else None
    except (OSError, ValueError, KeyError, IndexError, pd.errors.ParserError):
        return None
    return (source, where) if source.is_file() else None


def image_intensity(image: Path, where: tuple[int, int] | None, shape: tuple[int, int]) -> np.ndarray:
    """The grey level measured (:func:`pipeline.method.features.intensity_of`) of an image plane.

    Raises
    ------
    NucleiError
        The image cannot be read, has several planes and ``where`` does not say which, or its
        size is not the labels'.
    """
    planes = read_planes(image)
    if where is not None:
        planes = [p for p in planes if (p.series, p.index) == where] or planes
    if len(planes) > 1:
        raise NucleiError(f"{image}: {len(planes)} planes; give the image of one plane with --images")
    array = planes[0].array
    if array.shape[:2] != shape:
        raise NucleiError(
            f"{image}: {array.shape[1]}x{array.shape[0]} px, but its labels are {shape[1]}x{shape[0]} px"
        )
    return intensity_of(array)


def export_labels(
    label_files: list[str | Path],
    outdir: str | Path,
    formats: tuple[str, ...],
    images: list[str | Path] = (),
    pixel_size: float | None = None,
) -> pd.DataFrame:
    """Export label images to ``outdir`` in ``formats`` (keys of :data:`pipeline.batch.outlines.FORMATS`).

    Returns
    -------
    done : pandas.DataFrame
        One row per label file: ``labels`` (its path), ``image`` (the image measured, or empty),
        ``count``, one column per format (the file written, relative to ``outdir``) and
        ``error`` (empty, or the one-line problem that stopped this file).

    Raises
    ------
    NucleiError
        Usage problems, before anything is written: missing inputs, no label files, two label
        files of one name, an output folder that cannot be written.
    """
    files, _ = list_inputs(label_files)
    if not files:
        raise NucleiError(f"{', '.join(map(str, label_files))}: no label images found")
    by_stem(files, "export them to different folders")
    image_files = {p.stem.casefold(): p for p in list_inputs(images)[0]} if images else {}
    outdir = check_writable_folder(outdir)
    rows = []
    for path in progress(files, desc="export", unit="img"):
        row = {"labels": str(path), "image": "", "count": None, "error": ""}
        try:
            labels = read_label_image(path)
            found = find_image(path, image_files)
            if found is None:
                intensity = np.zeros(labels.shape, np.float32)
            else:
                intensity = image_intensity(*found, labels.shape)
                row["image"] = str(found[0])
            table = measure_nuclei(labels, intensity, pixel_size).drop(columns="confidence")  # no probabilities
            if found is None:
                table = table.drop(columns=list(INTENSITY_COLUMNS))
            for fmt in formats:
                row[fmt] = export_path(fmt, path.stem)
                write_export(fmt, outdir / row[fmt], labels, table)
            row["count"] = len(table)
        except NucleiError as exc:
            row["error"] = str(exc)
            _warn(f"error: {exc}")
        except Exception as exc:  # a library refusing one file: name it, go on with the others
            row["error"] = f"{path}: unexpected error ({type(exc).__name__}: {one_line(exc)})"
            _warn(f"error: {row['error']}")
        rows.append(row)
    return pd.DataFrame(rows, columns=["labels", "image", "count", *formats, "error"])


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"nuclei: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``nuclei export``."""
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = (
        "writes DIR/geojson/<name>.geojson (QuPath: File > Import objects) and/or DIR/rois/<name>.zip\n"
        "(Fiji: ROI Manager > More > Open), one outline per nucleus named by its label value.\n"
        "Measurements as nuclei.csv: with intensities when the image is found (--images, or the source\n"
        "a nuclei segment run's counts.csv names for OUT/labels/<name>.tif), else geometric only.\n"
        "exit status: 0 all exported, 1 some label files failed, 2 usage error."
    )
    parser.add_argument("labels", nargs="+", metavar="LABELS", help="label images (TIFF, PNG) and/or folders")
    parser.add_argument(
        "--to", required=True, type=parse_formats, metavar="FORMAT",
        help="geojson (QuPath), imagej (Fiji ROI set) or both: geojson,imagej",
    )  # fmt: skip
    parser.add_argument("-o", "--out", required=True, type=Path, metavar="DIR", help="output folder")
    parser.add_argument(
        "--images", nargs="+", default=(), metavar="IMAGE",
        help="the images (files and/or folders), paired by name: <name>.png for <name>.tif, <name>_masks.png, ...",
    )  # fmt: skip
    parser.add_argument("--pixel-size", type=POSITIVE, metavar="UM", help="pixel side in µm (adds µm measurements)")


def main(args: argparse.Namespace) -> int:
    """Run ``nuclei export``; 0 = all exported, 1 = some failed, 2 = usage error."""
    start = time.perf_counter()
    try:
        done = export_labels(args.labels, args.out, args.to, args.images, args.pixel_size)
    except NucleiError as exc:
        print(f"nuclei: error: {exc}", file=sys.stderr)
        return 2
    ok = done["error"] == ""
    measured = int((ok & (done["image"] != "")).sum())
    folders = ", ".join(f"{FORMATS[f].folder}/" for f in args.to)
    print(
        f"{int(ok.sum())} label images exported ({measured} with their image's intensities), "
        f"{int(done.loc[ok, 'count'].sum())} nuclei, {int((~ok).sum())} failed, "
        f"{time.perf_counter() - start:.1f} s -> {args.out}/ ({folders})"
    )
    return 0 if ok.all() else 1
