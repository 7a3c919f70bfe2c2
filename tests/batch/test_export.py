"""``nuclei segment --export`` and ``nuclei export``: outline files beside the label images.

The segmentation model is test_segment's threshold U-Net (bright disks → one nucleus each).
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import roifile
import tifffile
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.files.io import read_labels

from ..conftest import disks, rasterise


def features_of(path) -> dict[int, dict]:
    return {f["properties"]["label"]: f for f in json.loads(path.read_text())["features"]}


def assert_outlines_match(labels: np.ndarray, geojson, rois) -> None:
    """Both files hold one outline per nucleus of ``labels``, each filling back to its pixels."""
    values = [int(v) for v in np.unique(labels) if v]
    features = features_of(geojson)
    read = roifile.roiread(rois)
    assert sorted(features) == values and [int(r.name) for r in read] == values
    for value, roi in zip(values, read, strict=True):
        geometry = features[value]["geometry"]
        parts = [geometry["coordinates"]] if geometry["type"] == "Polygon" else geometry["coordinates"]
        assert np.array_equal(rasterise([r for p in parts for r in p], labels.shape), labels == value)
        assert np.array_equal(rasterise(roi.coordinates(multi=True), labels.shape), labels == value)


def test_segment_export_writes_listed_outlines(tmp_path, model_dir, capsys):  # noqa: F811
    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "cells.png")
    out = tmp_path / "out"
    argv = ["segment", str(tmp_path / "cells.png"), "-o", str(out), "--model", str(model_dir)]
    assert cli_main([*argv, "--export", "geojson,imagej", "--pixel-size", "0.5"]) == 0
    assert "geojson/, rois/" in capsys.readouterr().out

    counts = pd.read_csv(out / "counts.csv").set_index("image")
    assert counts.loc["cells", "geojson_file"] == "geojson/cells.geojson"
    assert counts.loc["cells", "rois_file"] == "rois/cells.zip"
    labels = read_labels(out / "labels" / "cells.tif")
    assert labels.max() == 3
    assert_outlines_match(labels, out / "geojson" / "cells.geojson", out / "rois" / "cells.zip")
    nuclei = pd.read_csv(out / "nuclei.csv").set_index("label")
    for value, feature in features_of(out / "geojson" / "cells.geojson").items():
        measured = feature["properties"]["measurements"]
        assert set(measured) == set(nuclei.columns) - {"image"}  # every nuclei.csv measurement
        assert measured["area_um2"] == nuclei.loc[value, "area_um2"]
        assert measured["mean_intensity"] == nuclei.loc[value, "mean_intensity"]
    html = (out / "report.html").read_text()
    assert "geojson/&lt;image&gt;.geojson" in html and "rois/&lt;image&gt;.zip" in html

    # without --export: no outline files and no outline columns
    plain = tmp_path / "plain"
    assert cli_main(["segment", str(tmp_path / "cells.png"), "-o", str(plain), "--model", str(model_dir)]) == 0
    assert not (plain / "geojson").exists() and not (plain / "rois").exists()
    assert "geojson_file" not in pd.read_csv(plain / "counts.csv").columns
    assert "geojson" not in (plain / "report.html").read_text()


def test_export_of_a_segment_output_finds_its_images(tmp_path, model_dir):  # noqa: F811
    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "cells.png")
    out = tmp_path / "out"
    assert cli_main(["segment", str(tmp_path / "cells.png"), "-o", str(out), "--model", str(model_dir)]) == 0
    labels = read_labels(out / "labels" / "cells.tif")
    labels[labels == 2] = 0  # a user's correction: one nucleus erased
    tifffile.imwrite(out / "labels" / "cells.tif", labels.astype(np.uint16))

    assert cli_main(["export", str(out / "labels"), "--to", "geojson", "-o", str(tmp_path / "x")]) == 0
    features = features_of(tmp_path / "x" / "geojson" / "cells.geojson")
    assert sorted(features) == [1, 3]
    nuclei = pd.read_csv(out / "nuclei.csv").set_index("label")  # measured before the correction
    for value in (1, 3):  # the source image named in counts.csv was found and measured
        assert features[value]["properties"]["measurements"]["mean_intensity"] == nuclei.loc[value, "mean_intensity"]


def test_export_labels_of_other_tools(tmp_path, capsys):
    image, truth = disks(shape=(64, 80), centres=((20, 20), (40, 60)), radius=6, value=180)
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(truth.astype(np.uint16)).save(tmp_path / "a_cp_masks.png")  # Cellpose's naming
    tifffile.imwrite(tmp_path / "b.tif", truth.astype(np.float32))  # float labels, no image
    Image.fromarray((truth > 0).astype(np.uint8)).save(tmp_path / "c_mask.png")  # a binary mask
    out = tmp_path / "out"
    labels_in = [str(tmp_path / n) for n in ("a_cp_masks.png", "b.tif", "c_mask.png")]
    assert cli_main(["export", *labels_in, "--to", "imagej,geojson", "-o", str(out), "--images", str(tmp_path / "a.png")]) == 0
    captured = capsys.readouterr()
    assert "3 label images exported (1 with their image's intensities), 6 nuclei, 0 failed" in captured.out
    assert "c_mask.png: a binary mask" in captured.err

    for name in ("a_cp_masks", "b", "c_mask"):
        assert_outlines_match(truth, out / "geojson" / f"{name}.geojson", out / "rois" / f"{name}.zip")
    with_image = features_of(out / "geojson" / "a_cp_masks.geojson")[1]["properties"]["measurements"]
    without = features_of(out / "geojson" / "b.geojson")[1]["properties"]["measurements"]
    assert with_image["mean_intensity"] == 180 and with_image["area_px"] == (truth == 1).sum()
    assert "mean_intensity" not in without and without["area_px"] == (truth == 1).sum()


def test_export_bad_inputs(tmp_path, capsys):
    good = np.zeros((32, 32), np.uint16)
    good[4:10, 4:10] = 1
    good[20:25, 20:30] = 2
    tifffile.imwrite(tmp_path / "good.tif", good)
    tifffile.imwrite(tmp_path / "frac.tif", good.astype(np.float32) / 2)
    Image.fromarray(np.zeros((16, 16), np.uint8)).save(tmp_path / "good.png")  # the wrong size
    out = tmp_path / "out"

    argv = ["export", str(tmp_path / "good.tif"), str(tmp_path / "frac.tif"), "--to", "geojson", "-o", str(out)]
    assert cli_main([*argv, "--images", str(tmp_path / "good.png")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2  # one line per bad file, no traceback
    assert "good.png: 16x16 px, but its labels are 32x32 px" in err[0]
    assert "frac.tif: not a label image (fractional values" in err[1]
    assert not (out / "geojson").exists()  # nothing half-written

    assert cli_main(["export", str(tmp_path / "none.tif"), "--to", "geojson", "-o", str(out)]) == 2
    assert "none.tif: no such file or folder" in capsys.readouterr().err
    (tmp_path / "sub").mkdir()
    tifffile.imwrite(tmp_path / "sub" / "good.tif", good)
    same = ["export", str(tmp_path / "good.tif"), str(tmp_path / "sub" / "good.tif"), "--to", "imagej", "-o", str(out)]
    assert cli_main(same) == 2
    assert "same name as" in capsys.readouterr().err
