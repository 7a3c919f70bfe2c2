"""Nucleus outlines for other tools: QuPath GeoJSON and ImageJ/Fiji ROI sets.

One home for turning an instance label image into outlines and writing them:

- :func:`nucleus_polygons`: every nucleus's outline, traced on pixel edges (rasterio's
  polygonize, 4-connected), so that filling the polygon (a pixel is in it when its centre is)
  gives back exactly the nucleus's pixels. A nucleus may have holes (a ring around another
  nucleus or the background) and more than one part.
- :func:`geojson_features` / :func:`write_geojson`: a FeatureCollection that QuPath imports as
  detections, one Feature per nucleus with its label value and ``nuclei.csv`` measurements.
- :func:`imagej_rois` / :func:`write_imagej_rois`: an ImageJ RoiSet zip (the ``roifile``
  package) that Fiji's ROI Manager opens, one ROI per nucleus named by its label value.

Coordinates are in pixels, (x, y) = (column, row) of pixel corners: pixel (r, c) is the square
[c, c + 1] × [r, r + 1], as in QuPath and ImageJ. Files are written atomically
(:func:`pipeline.files.io.atomic_path`); :data:`FORMATS` says where each goes in an output folder.

Must not: segment, measure (callers pass the ``nuclei.csv`` table) or read images.
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from pipeline.files.io import atomic_path


class Format(NamedTuple):
    """Where an export goes: ``<folder>/<name><suffix>`` in the output folder, named in the
    ``column`` of ``counts.csv``; ``reader`` is the program that opens it."""

    folder: str
    suffix: str
    column: str
    reader: str


#: The export formats by the name ``--export`` / ``--to`` take.
FORMATS = {
    "geojson": Format("geojson", ".geojson", "geojson_file", "QuPath"),
    "imagej": Format("rois", ".zip", "rois_file", "Fiji's ROI Manager"),
}
#: QuPath's properties of every nucleus (``classification.color`` is QuPath's packed RGB).
QUPATH_CLASS = {"name": "Nucleus", "color": [255, 0, 0]}

#: A ring: (n, 2) int64 (x, y) pixel corners, closed (last point = first).
Ring = np.ndarray
#: A part: its outer ring, then its holes.
Part = list[Ring]


def parse_formats(text: str) -> tuple[str, ...]:
    """``'geojson,imagej'`` → ``('geojson', 'imagej')`` (argparse type of ``--export``/``--to``)."""
    names = [t.strip().lower() for t in text.split(",") if t.strip()]
    unknown = [t for t in names if t not in FORMATS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(
            f"expected one or more of {', '.join(FORMATS)} separated by commas, got {text!r}"
        )
    return tuple(dict.fromkeys(names))


def export_path(fmt: str, name: str) -> str:
    """The file of image ``name`` in format ``fmt``, relative to the output folder
    (``geojson/<name>.geojson``, ``rois/<name>.zip``)."""
    spec = FORMATS[fmt]
    return f"{spec.folder}/{name}{spec.suffix}"


# --------------------------------------------------------------------------- outlines


def nucleus_polygons(labels: np.ndarray) -> dict[int, list[Part]]:
    """Trace every nucleus's outline on pixel edges.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background, values below 2**31.

    Returns
    -------
    polygons : dict of int to list of parts
        Label value → its 4-connected parts (largest first); each part is a list of rings, the
        outer boundary first and then its holes, each an (n, 2) int64 array of (x, y) pixel
        corners, closed. Outer rings run counter-clockwise in (x, y) (positive shoelace area,
        as GeoJSON's right-hand rule), holes clockwise. Sorted by label value.
    """
    from rasterio import features

    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"expected a (H, W) label image, got shape {labels.shape}")
    if labels.size == 0 or labels.max(initial=0) == 0:
        return {}
    if labels.min() < 0 or labels.max() > np.iinfo(np.int32).max:
        raise ValueError("label values must be within 0..2**31-1")
    found: dict[int, list[Part]] = defaultdict(list)
    for geometry, value in features.shapes(labels.astype(np.int32, copy=False), mask=labels > 0, connectivity=4):
        rings = [np.asarray(ring, dtype=np.float64).round().astype(np.int64) for ring in geometry["coordinates"]]
        found[int(value)].append([_oriented(ring, outer=k == 0) for k, ring in enumerate(rings)])
    return {value: sorted(found[value], key=lambda part: -_signed_area(part[0])) for value in sorted(found)}


def _signed_area(ring: Ring) -> float:
    """Shoelace area of a closed ring; positive when counter-clockwise in (x, y)."""
    x, y = ring[:, 0].astype(np.float64), ring[:, 1].astype(np.float64)
    return float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])) / 2


def _oriented(ring: Ring, outer: bool) -> Ring:
    """``ring`` turned counter-clockwise when ``outer``, clockwise otherwise."""
    return ring if (_signed_area(ring) > 0) == outer else ring[::-1].copy()


# --------------------------------------------------------------------------- GeoJSON (QuPath)


def geojson_features(labels: np.ndarray, table: pd.DataFrame | None = None) -> dict[str, Any]:
    """A GeoJSON FeatureCollection of the nuclei, as QuPath imports detections.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    table : pandas.DataFrame, optional
        ``nuclei.csv`` rows of this image (:func:`pipeline.method.features.measure_nuclei`), with a
        ``label`` column; its numeric columns become each nucleus's ``measurements``.

    Returns
    -------
    collection : dict
        ``{"type": "FeatureCollection", "features": [...]}``, one Feature per nucleus, sorted by
        label: geometry a Polygon (a MultiPolygon for a nucleus of several parts) in pixel
        coordinates (:func:`nucleus_polygons`); properties ``objectType: "detection"``,
        ``classification: {"name": "Nucleus", ...}``, ``name`` (the label as text), ``label``
        and ``measurements`` (column → number; NaN as null).
    """
    measurements = _measurements_by_label(table)
    features = []
    for value, parts in nucleus_polygons(labels).items():
        coordinates = [[ring.tolist() for ring in part] for part in parts]
        geometry = (
            {"type": "Polygon", "coordinates": coordinates[0]}
            if len(coordinates) == 1
            else {"type": "MultiPolygon", "coordinates": coordinates}
        )
        properties: dict[str, Any] = {
            "objectType": "detection",
            "classification": dict(QUPATH_CLASS),
            "name": str(value),
            "label": value,
        }
        if value in measurements:
            properties["measurements"] = measurements[value]
        features.append({"type": "Feature", "geometry": geometry, "properties": properties})
    return {"type": "FeatureCollection", "features": features}


def _measurements_by_label(table: pd.DataFrame | None) -> dict[int, dict[str, float | None]]:
    """label → {column: value} of the numeric columns of a ``nuclei.csv`` table (NaN → None; the
    positive calls 1.0 / 0.0)."""
    if table is None or table.empty:
        return {}
    numeric = table.select_dtypes(include=["number", "bool", "boolean"]).drop(columns="label")
    calls = numeric.select_dtypes(include=["bool", "boolean"]).columns  # positive_<ch>: 1, 0 or null
    numeric = numeric.astype({c: "Float64" for c in calls}).astype(object)
    records = numeric.where(numeric.notna(), None).to_dict("records")
    return dict(zip(table["label"].astype(int).tolist(), records, strict=True))


def write_geojson(path: str | Path, labels: np.ndarray, table: pd.DataFrame | None = None) -> None:
    """Write :func:`geojson_features` of ``labels`` to ``path`` atomically (compact JSON)."""
    text = json.dumps(geojson_features(labels, table), separators=(",", ":"), default=_json_number)
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def _json_number(value: Any) -> int | float:
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    raise TypeError(f"not JSON serialisable: {type(value).__name__}")


# --------------------------------------------------------------------------- ImageJ ROIs (Fiji)


def imagej_rois(labels: np.ndarray) -> list:
    """One ImageJ ROI per nucleus (``roifile.ImagejRoi``), named by its label value.

    A nucleus of one part without holes is a traced polygon (what Fiji's wand and Analyze
    Particles make: integer corner coordinates, filled by pixel centres); one with holes or
    several parts is a composite (ShapeRoi) of its rings, filled even-odd. Sorted by label.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.

    Returns
    -------
    rois : list of roifile.ImagejRoi
    """
    from roifile import ROI_TYPE, ImagejRoi

    rois = []
    for value, parts in nucleus_polygons(labels).items():
        if len(parts) == 1 and len(parts[0]) == 1:
            roi = ImagejRoi.frompoints(parts[0][0][:-1], name=str(value))  # ImageJ closes polygons itself
            roi.roitype = ROI_TYPE.TRACED
        else:
            rings = [ring for part in parts for ring in part]
            corners = np.concatenate(rings)
            (left, top), (right, bottom) = corners.min(axis=0), corners.max(axis=0)
            path = np.concatenate([_path_ops(ring) for ring in rings]).astype(np.float32)
            roi = ImagejRoi(
                roitype=ROI_TYPE.RECT, name=str(value), left=int(left), top=int(top),
                right=int(right), bottom=int(bottom), shape_roi_size=path.size, multi_coordinates=path,
            )  # fmt: skip
        rois.append(roi)
    return rois


def _path_ops(ring: Ring) -> np.ndarray:
    """A closed ring as a Java PathIterator sequence: MOVETO x y, LINETO x y ..., CLOSE (0, 1, 4)."""
    points = ring[:-1].astype(np.float64)
    ops = np.ones((len(points), 1))
    ops[0] = 0
    return np.concatenate([np.hstack([ops, points]).ravel(), [4.0]])


def write_imagej_rois(path: str | Path, labels: np.ndarray) -> None:
    """Write :func:`imagej_rois` of ``labels`` as an ImageJ RoiSet zip at ``path``, atomically."""
    from roifile import roiwrite

    rois = imagej_rois(labels)
    with atomic_path(path) as tmp:
        if rois:
            roiwrite(tmp, rois, mode="w")
        else:  # no nucleus: an empty zip, which the ROI Manager opens as an empty set
            import zipfile

            zipfile.ZipFile(tmp, "w").close()


def write_export(fmt: str, path: str | Path, labels: np.ndarray, table: pd.DataFrame | None = None) -> None:
    """Write ``labels`` in format ``fmt`` (a key of :data:`FORMATS`) to ``path``."""
    if fmt == "geojson":
        write_geojson(path, labels, table)
    elif fmt == "imagej":
        write_imagej_rois(path, labels)
    else:
        raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(FORMATS)}")
