"""Label images and binary masks into instance labels (pipeline.method.labels), the one function
``nuclei export`` and ``nuclei finetune`` share."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile

from pipeline.cli import main as cli_main

from ..conftest import disks


@pytest.mark.parametrize("value, dtype", [(255, np.uint8), (1, np.uint8), (7, np.uint16), (True, bool)])
@pytest.mark.hostile
def test_export_splits_any_two_valued_mask_into_its_objects(value, dtype, tmp_path, capsys):
    _, truth = disks(shape=(64, 96), centres=((20, 20), (40, 60), (15, 80)), radius=6)
    mask = np.where(truth > 0, value, 0).astype(dtype)
    tifffile.imwrite(tmp_path / "m_mask.tif", mask)
    assert cli_main(["export", str(tmp_path / "m_mask.tif"), "--to", "geojson", "-o", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "3 nuclei" in captured.out and "a binary mask" in captured.err
    features = json.loads((tmp_path / "out" / "geojson" / "m_mask.geojson").read_text())["features"]
    assert sorted(f["properties"]["label"] for f in features) == [1, 2, 3]
    assert all(f["geometry"]["type"] == "Polygon" for f in features)


@pytest.mark.hostile
def test_one_object_keeps_its_value_and_labels_are_not_a_mask():
    from pipeline.method.labels import instance_labels

    one = np.zeros((20, 20), np.uint8)
    one[5:10, 5:10] = 255
    labels, note = instance_labels(one, "one.png")
    assert labels.max() == 255 and note == ""  # one nucleus named 255: nothing to split
    several = np.zeros((20, 20), np.uint16)
    several[2:5, 2:5], several[10:15, 10:15], several[2:5, 12:15] = 3, 9, 3  # value 3 in two places
    labels, note = instance_labels(several, "several.tif")
    assert np.array_equal(labels, several) and note == ""  # three values: labels, kept as they are


@pytest.mark.hostile
def test_export_and_finetune_share_the_one_function():
    import pipeline.batch.export as export
    import pipeline.data.annotations as annotations
    from pipeline.method import labels

    assert export.instance_labels is labels.instance_labels is annotations.instance_labels


@pytest.mark.hostile
def test_export_relabels_ids_beyond_int32(tmp_path, capsys):
    labels = np.zeros((32, 32), np.uint32)
    labels[2:8, 2:8], labels[12:18, 12:18], labels[20:30, 2:8] = 2**32 - 1, 2**31, 5
    tifffile.imwrite(tmp_path / "big_ids.tif", labels)
    assert cli_main(["export", str(tmp_path / "big_ids.tif"), "--to", "geojson", "-o", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "3 nuclei" in captured.out and "relabelled" in captured.err
    features = json.loads((tmp_path / "out" / "geojson" / "big_ids.geojson").read_text())["features"]
    assert sorted(f["properties"]["label"] for f in features) == [1, 2, 3]
