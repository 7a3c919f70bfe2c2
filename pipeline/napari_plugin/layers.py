"""napari layer data ↔ the pipeline's arrays, for the plugin's widgets, reader and sample.

Layer data tuples are napari's ``(data, metadata, layer_type)``. Nothing here imports Qt or
napari, so that it is testable and usable without a window.

Must not: segment or measure but through ``nuclei segment``'s own path
(:func:`pipeline.batch.one_file.segment_plane`, :func:`pipeline.batch.image_features.measure_image`), or
draw widgets.
"""

from __future__ import annotations

import csv
import math
import threading
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pipeline.config.params import SegmentConfig
from pipeline.errors import NucleiError, one_line
from pipeline.files.io import read_labels, read_planes
from pipeline.method.features import intensity_of
from pipeline.shipped import SAMPLE_IMAGE

LayerData = tuple[Any, dict[str, Any], str]

#: napari layer properties (features) carried by the centroid points.
POINT_FEATURES = ("label", "area_px", "equivalent_diameter_px", "mean_intensity", "confidence")

#: ``counts.csv`` columns every ``nuclei segment`` / ``nuclei measure`` output has: a folder whose
#: ``counts.csv`` header lacks one is not claimed by the reader (another tool's table).
OWN_COLUMNS = ("image", "source", "count", "status")
#: A label image of more pixels than this is opened lazily (the size ``nuclei segment`` reads piece
#: by piece, ``segment.slide_pixels``): napari reads the tiles it shows.
LAZY_PIXELS = SegmentConfig.slide_pixels
#: Most bytes of ``counts.csv``'s first line read to decide whether a folder is ours.
HEADER_BYTES = 65_536

_segmenters: dict[tuple[str, str, str], Any] = {}
_segmenters_lock = threading.Lock()


def image_array(data: Any, rgb: bool, name: str = "image") -> np.ndarray:
    """An image layer's data as one plane: (H, W) grey or (H, W, 3|4) RGB(A), values as stored.

    Raises
    ------
    NucleiError
        The layer is not 2-D (a stack, a volume) or is empty.
    """
    if isinstance(data, list):  # a multiscale image: its full-resolution level
        data = data[0]
    array = np.asarray(data)
    planar = array.ndim - (1 if rgb else 0)
    if planar != 2 or 0 in array.shape:
        raise NucleiError(f"{name}: a 2-D image is needed (grey or RGB), got shape {array.shape}")
    return array


def get_segmenter(model_dir: str | Path, tta: str = "auto", device: str = "auto"):
    """The :class:`pipeline.model.segmenter.Segmenter` of a model folder, loaded once per process."""
    from pipeline.model.segmenter import Segmenter

    key = (str(Path(model_dir).resolve()), tta, device)
    with _segmenters_lock:
        if key not in _segmenters:
            _segmenters[key] = Segmenter.from_model_dir(model_dir, device=device, tta=tta)
        return _segmenters[key]


def segment_array(
    array: np.ndarray, model_dir: str | Path, diameter: float | None = None, tta: str = "auto",
    device: str = "auto",
) -> tuple[Any, pd.DataFrame]:
    """Segment one image plane as ``nuclei segment`` does (:func:`pipeline.batch.one_file.segment_plane`),
    and measure its nuclei as it does (:func:`pipeline.batch.image_features.measure_image`).

    Parameters
    ----------
    array : (H, W) or (H, W, C) array, C = 1..4
        The image as stored (any pixel type).
    model_dir : str or Path
        A model folder (``config.yaml`` + ``weights.pt``).
    diameter : float, optional
        Median nucleus diameter in px; estimated when None.
    tta : str
        A mode of :data:`pipeline.config.params.TTA_MODES`.

    Returns
    -------
    result : pipeline.model.segmenter.Segmentation
        ``labels`` int32 (H, W), diameter, confidence, flag.
    table : pandas.DataFrame
        The ``nuclei.csv`` rows (intensities in the image's units).
    """
    from pipeline.batch.image_features import measure_image
    from pipeline.batch.one_file import segment_plane
    from pipeline.batch.settings import MeasureOptions

    result, _ = segment_plane(array, get_segmenter(model_dir, tta, device), diameter)
    measured = measure_image(result.labels, intensity_of(array), None, MeasureOptions(), None,
                             result.nucleus_confidence, result.diameter, "layer")
    return result, measured.table


def result_layers(name: str, result: Any, table: pd.DataFrame, **placement: Any) -> list[LayerData]:
    """The Labels layer and the Points layer (one point per nucleus, at its centroid) of a result.

    ``placement``: ``scale`` / ``translate`` of the image layer, so that both overlay it.
    """
    n = len(table)
    labels = (result.labels, {"name": f"{name} nuclei", **placement}, "labels")
    points = (
        table[["centroid_row", "centroid_col"]].to_numpy(np.float64).reshape(n, 2),
        {
            "name": f"{name} centroids ({n})",
            "features": table[list(POINT_FEATURES)].reset_index(drop=True),
            "size": 4,
            "face_color": "yellow",
            **placement,
        },
        "points",
    )
    return [labels, points]


def summary(result: Any, table: pd.DataFrame) -> str:
    """One line: count, diameter (estimated or given), and a warning flag if any."""
    text = f"{len(table)} nuclei"
    if result.diameter is not None:
        text += f" · diameter {result.diameter:.1f} px ({'estimated' if result.estimated else 'given'})"
    return text + (f" · {result.flag}" if result.flag else "")


# --------------------------------------------------------------------------- reader


def is_segment_output(path: str | Path) -> bool:
    """Whether ``path`` is a folder ``nuclei segment`` or ``nuclei measure`` wrote: a ``labels/``
    folder and a ``counts.csv`` whose header holds :data:`OWN_COLUMNS` (only its first line is read)."""
    path = Path(path)
    if not (path.is_dir() and (path / "counts.csv").is_file() and (path / "labels").is_dir()):
        return False
    try:
        with open(path / "counts.csv", "rb") as f:
            header = next(csv.reader([f.readline(HEADER_BYTES).decode("utf-8")]), [])
    except (OSError, UnicodeDecodeError, csv.Error):
        return False
    return set(OWN_COLUMNS) <= set(header)


def get_reader(path: str | list[str]):
    """napari's reader hook: :func:`read_segment_output` for a ``nuclei segment`` output folder,
    None (not ours) for anything else."""
    if isinstance(path, list):
        path = path[0] if len(path) == 1 else ""
    return read_segment_output if path and is_segment_output(path) else None


def read_segment_output(folder: str | Path | list) -> list[LayerData]:
    """Every image of a ``nuclei segment`` (or ``nuclei measure``) output folder with its labels.

    Each segmented image (``counts.csv`` status ok) gives an Image layer (its source file's
    plane, as stored; with ``--nuclear-channel`` every channel, one layer each; the overlay PNG if
    the source is gone) and a Labels layer (``labels/<name>.tif``, as corrected since, if it was:
    :func:`open_labels`) whose features are the image's rows of ``nuclei.csv`` (every column,
    ``index`` = the label: napari shows them under the pointer). A label image that cannot be read,
    or a ``labels_file`` / ``overlay_file`` outside the folder, skips that image with one warning.

    Raises
    ------
    NucleiError
        ``counts.csv`` unreadable, in one line.
    """
    folder = Path(folder[0] if isinstance(folder, list) else folder)
    try:
        counts = pd.read_csv(folder / "counts.csv", dtype={"image": str, "source": str}, keep_default_na=False)
        missing = [c for c in OWN_COLUMNS if c not in counts.columns]
        if missing:
            raise ValueError(f"no {missing[0]} column: not written by nuclei segment")
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError) as exc:
        raise NucleiError(f"{folder / 'counts.csv'}: unreadable ({one_line(exc)})") from None
    try:
        nuclei = pd.read_csv(folder / "nuclei.csv", dtype={"image": str})
        tables = {name: table.drop(columns="image") for name, table in nuclei.groupby("image", sort=False)}
    except (OSError, ValueError, KeyError, UnicodeDecodeError, pd.errors.ParserError):
        tables = {}
    layers: list[LayerData] = []
    for row in counts[counts["status"] == "ok"].to_dict("records"):
        labels_file = _inside(folder, row.get("labels_file") or f"labels/{row['image']}.tif", row["image"])
        if labels_file is None or not labels_file.is_file():
            continue
        try:
            labels = open_labels(labels_file)
        except NucleiError as exc:
            warnings.warn(f"{exc}; skipped", stacklevel=2)
            continue
        layers += _image_layers(folder, row)
        meta: dict[str, Any] = {"name": f"{row['image']} nuclei"}
        if row["image"] in tables:
            meta["features"] = tables[row["image"]].rename(columns={"label": "index"}).reset_index(drop=True)
        layers.append((labels, meta, "labels"))
    return layers


def open_labels(path: Path) -> Any:
    """A label image for a Labels layer: read whole (int32 (H, W)) up to :data:`LAZY_PIXELS`, beyond
    opened lazily (a dask array over tifffile's zarr store or a memory map: napari reads the tiles
    it shows; a label image in one compressed piece is read whole).

    Raises
    ------
    NucleiError
        Naming the file: unreadable (empty, truncated, not an image).
    """
    from pipeline.files.slide_reader import open_slide

    slide = open_slide(path) if path.stat().st_size else None
    if slide is not None and math.prod(slide.shape) > LAZY_PIXELS and "C" not in slide.axes:
        import dask.array as da

        key = tuple(0 if axis == "1" else slice(None) for axis in slide.axes)
        return da.from_array(slide.array, chunks=getattr(slide.array, "chunks", "auto"))[key]
    return read_labels(path)


def _inside(folder: Path, name: Any, image: str) -> Path | None:
    """``folder / name`` when it lies inside ``folder``; else None, said in one warning."""
    path = folder / str(name)
    if path.resolve().is_relative_to(folder.resolve()):
        return path
    warnings.warn(f"{folder / 'counts.csv'}: {image}: {name} lies outside the folder; not read, skipped", stacklevel=3)
    return None


def _image_layers(folder: Path, row: dict[str, Any]) -> list[LayerData]:
    """The Image layers of one ``counts.csv`` row: its source's channels or plane, else its overlay."""
    if row.get("nuclear_channel"):
        return _source_channels(Path(row["source"]), row)
    image = _source_plane(Path(row["source"]), row.get("series"), row.get("plane"))
    overlay = _inside(folder, row["overlay_file"], row["image"]) if row.get("overlay_file") else None
    if image is None and overlay is not None and overlay.is_file():
        image = read_planes(overlay)[0].array
    if image is None:
        return []
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    image = image if rgb or image.ndim == 2 else image[..., 0]
    return [(image, {"name": row["image"], "rgb": rgb}, "image")]


def _source_channels(source: Path, row: dict[str, Any]) -> list[LayerData]:
    """The channels of one multi-channel image (``--nuclear-channel``), one Image layer each; none
    when the source cannot be read (channel files: ``source`` holds ``{c}``)."""
    from pipeline.files.channels import channel_keys, read_channel_images

    try:
        images = read_channel_images(source)
    except NucleiError:
        return []
    found = [i for i in images if str(i.series) == str(row.get("series")) and str(i.index) == str(row.get("plane"))]
    if not found:
        return []
    image = found[0]
    return [(plane, {"name": f"{row['image']} {key}", "blending": "additive"}, "image")
            for plane, key in zip(image.channels, channel_keys(image.names), strict=True)]


def _source_plane(source: Path, series: Any, plane: Any) -> np.ndarray | None:
    """The plane ``(series, plane)`` of ``source`` as stored; None when it cannot be read."""
    try:
        planes = read_planes(source)
    except NucleiError:
        return None
    for p in planes:
        if str(p.series) == str(series) and str(p.index) == str(plane):
            return p.array
    return planes[0].array if len(planes) == 1 else None


# --------------------------------------------------------------------------- sample


def sample_image() -> list[LayerData]:
    """The plugin's sample: a 256 × 256 fluorescence image of DSB2018 shipped with the package
    (:data:`pipeline.shipped.SAMPLE_IMAGE`)."""
    if not SAMPLE_IMAGE.is_file():
        raise NucleiError(f"{SAMPLE_IMAGE}: the sample image is missing from the installed package")
    return [(read_planes(SAMPLE_IMAGE)[0].array, {"name": "nuclei sample", "rgb": True}, "image")]
