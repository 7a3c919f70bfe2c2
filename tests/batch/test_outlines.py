"""Outline exports (pipeline.batch.outlines): GeoJSON for QuPath and ImageJ RoiSets for Fiji.

Each format is read back by an independent library (json + skimage.draw / shapely; roifile) and
rasterised again: the nuclei must come back pixel for pixel.
"""

from __future__ import annotations

import json
import zipfile

import numpy as np
import pandas as pd
import pytest
import roifile
import shapely.geometry

from pipeline.batch.outlines import (
    FORMATS,
    export_path,
    geojson_features,
    imagej_rois,
    nucleus_polygons,
    parse_formats,
    write_geojson,
    write_imagej_rois,
)
from pipeline.method.features import measure_nuclei

from ..conftest import disc, rasterise


def tricky_labels() -> np.ndarray:
    """int32 (80, 100) labels: a disc, a ring (hole) around another nucleus and some background,
    a nucleus cut by the image's top-left corner, one touching the right edge, a nucleus of two
    parts, a one-pixel nucleus and a diagonal staircase (pixels touching by corners only)."""
    shape = (80, 100)
    labels = np.zeros(shape, np.int32)
    labels[disc(shape, (20, 30), 9)] = 1
    ring = disc(shape, (50, 50), 14) & ~disc(shape, (50, 50), 8)
    labels[ring] = 2
    labels[disc(shape, (50, 50), 4)] = 3  # inside the ring's hole, background around it
    labels[disc(shape, (0, 0), 7)] = 4  # cut by two image edges
    labels[disc(shape, (40, 97), 6)] = 5  # cut by the right edge
    labels[70:74, 5:10] = 6
    labels[60:63, 20:22] = 6  # a second part of nucleus 6
    labels[5, 60] = 7
    for k in range(5):  # 4-connected: five one-pixel parts of one nucleus
        labels[70 + k, 80 + k] = 8
    return labels


def geometry_rings(geometry: dict) -> list:
    parts = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
    return [ring for part in parts for ring in part]


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return (a & b).sum() / (a | b).sum()


def test_geojson_rasterises_back_to_every_nucleus(tmp_path):
    labels = tricky_labels()
    table = measure_nuclei(labels, np.ones(labels.shape, np.float32))
    path = tmp_path / "geojson" / "cells.geojson"
    write_geojson(path, labels, table)
    collection = json.loads(path.read_text())
    assert collection["type"] == "FeatureCollection"
    features = collection["features"]
    assert [f["properties"]["label"] for f in features] == list(range(1, 9))
    back = np.zeros_like(labels)
    for feature in features:
        value = feature["properties"]["label"]
        nucleus = rasterise(geometry_rings(feature["geometry"]), labels.shape)
        assert iou(nucleus, labels == value) >= 0.99, value
        back[nucleus] = value
    np.testing.assert_array_equal(back, labels)  # traced on pixel edges: exact, not just IoU >= 0.99


def test_geojson_holes_parts_and_qupath_properties():
    labels = tricky_labels()
    table = measure_nuclei(labels, np.full(labels.shape, 2.0, np.float32), pixel_size=0.5)
    by_label = {f["properties"]["label"]: f for f in geojson_features(labels, table)["features"]}
    assert len(by_label[2]["geometry"]["coordinates"]) == 2  # the ring: outer boundary + one hole
    assert by_label[6]["geometry"]["type"] == "MultiPolygon"
    assert len(by_label[6]["geometry"]["coordinates"]) == 2
    assert len(by_label[8]["geometry"]["coordinates"]) == 5  # corner-touching pixels are separate parts
    for value, feature in by_label.items():
        props = feature["properties"]
        assert props["objectType"] == "detection" and props["classification"]["name"] == "Nucleus"
        assert props["name"] == str(value)
        row = table.set_index("label").loc[value]
        assert props["measurements"]["area_px"] == row["area_px"] == (labels == value).sum()
        assert props["measurements"]["area_um2"] == pytest.approx(row["area_um2"])
        assert props["measurements"]["mean_intensity"] == pytest.approx(2.0)
        shape = shapely.geometry.shape(feature["geometry"])  # an independent geometry library
        assert shape.is_valid, value
        assert shape.area == (labels == value).sum()
        x0, y0, x1, y1 = shape.bounds
        assert (y0, x0, y1, x1) == tuple(row[["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]])


def test_geojson_outer_rings_counter_clockwise_holes_clockwise():
    for parts in nucleus_polygons(tricky_labels()).values():
        for outer, *holes in parts:
            assert shapely.geometry.LinearRing(outer).is_ccw
            assert not any(shapely.geometry.LinearRing(h).is_ccw for h in holes)


def test_imagej_roiset_reads_back_one_roi_per_nucleus(tmp_path):
    labels = tricky_labels()
    path = tmp_path / "rois" / "cells.zip"
    write_imagej_rois(path, labels)
    rois = roifile.roiread(path)
    assert [r.name for r in rois] == [str(v) for v in range(1, 9)]
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == [f"{v}.roi" for v in range(1, 9)]
    for roi in rois:
        value = int(roi.name)
        simple = value not in (2, 6, 8)  # those have a hole or several parts: composite ROIs
        assert roi.composite is not simple
        if simple:
            assert roi.roitype == roifile.ROI_TYPE.TRACED
        nucleus = rasterise(roi.coordinates(multi=True), labels.shape)
        np.testing.assert_array_equal(nucleus, labels == value, err_msg=f"ROI {value}")


def test_empty_labels_give_empty_files(tmp_path):
    labels = np.zeros((16, 16), np.int32)
    write_geojson(tmp_path / "e.geojson", labels)
    assert json.loads((tmp_path / "e.geojson").read_text()) == {"type": "FeatureCollection", "features": []}
    write_imagej_rois(tmp_path / "e.zip", labels)
    with zipfile.ZipFile(tmp_path / "e.zip") as zf:
        assert zf.namelist() == []
    assert imagej_rois(labels) == []


def test_large_label_values_and_segmentation_like_labels():
    """Label values beyond uint16 and a dense field of touching nuclei (a watershed's output)."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    rng = np.random.default_rng(0)
    seeds = np.zeros((200, 200), np.int32)
    points = rng.integers(0, 200, (80, 2))
    seeds[points[:, 0], points[:, 1]] = rng.permutation(80) + 70_000
    distance = ndi.distance_transform_edt(seeds == 0)
    labels = watershed(distance, seeds, mask=distance < 12)
    polygons = nucleus_polygons(labels)
    assert sorted(polygons) == sorted(set(np.unique(labels)) - {0})
    back = np.zeros_like(labels)
    for value, parts in polygons.items():
        back[rasterise([ring for part in parts for ring in part], labels.shape)] = value
    np.testing.assert_array_equal(back, labels)


def test_parse_formats_and_paths():
    assert parse_formats("geojson") == ("geojson",)
    assert parse_formats("ImageJ, geojson,imagej") == ("imagej", "geojson")
    for bad in ("", "svg", "geojson,csv"):
        with pytest.raises(Exception, match="geojson, imagej"):
            parse_formats(bad)
    assert export_path("geojson", "a") == "geojson/a.geojson"
    assert export_path("imagej", "a") == "rois/a.zip"
    assert {f.column for f in FORMATS.values()} == {"geojson_file", "rois_file"}


def test_nan_measurements_are_null():
    labels = np.zeros((8, 8), np.int32)
    labels[2:4, 2:4] = 1
    table = pd.DataFrame({"label": [1], "area_px": [4], "eccentricity": [np.nan]})
    props = geojson_features(labels, table)["features"][0]["properties"]
    assert props["measurements"] == {"area_px": 4, "eccentricity": None}
    json.dumps(props, allow_nan=False)
