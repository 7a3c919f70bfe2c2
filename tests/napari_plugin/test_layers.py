"""pipeline.napari_plugin.layers without napari or Qt: the reader's hook and what it reads (issue 89:
it claims only folders nuclei wrote, reads only files inside them, skips a bad label image in one
line and opens a large one lazily)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from pipeline.batch.measure import measure_images
from pipeline.errors import NucleiError
from pipeline.napari_plugin import layers
from pipeline.napari_plugin.layers import get_reader, read_segment_output

from ..conftest import disks


@pytest.fixture
def measured(tmp_path):
    """A ``nuclei measure`` output folder of two images, a and b (their labels made here)."""
    (tmp_path / "labels").mkdir()
    for name, centres in (("a", ((30, 30), (60, 90))), ("b", ((25, 100),))):
        image, labels = disks(centres=centres)
        Image.fromarray(image).save(tmp_path / f"{name}.png")
        tifffile.imwrite(tmp_path / "labels" / f"{name}.tif", labels.astype(np.uint16))
    out = tmp_path / "out"
    measure_images([tmp_path / "a.png", tmp_path / "b.png"], tmp_path / "labels", out)
    return out


def labels_layers(found) -> dict[str, object]:
    return {meta["name"]: data for data, meta, kind in found if kind == "labels"}


def test_the_reader_opens_a_measure_output_folder(measured):
    assert get_reader(str(measured)) is read_segment_output
    found = labels_layers(read_segment_output(measured))
    assert sorted(found) == ["a nuclei", "b nuclei"] and found["a nuclei"].max() == 2
    assert isinstance(found["a nuclei"], np.ndarray) and found["a nuclei"].dtype == np.int32  # small: read whole


@pytest.mark.hostile
@pytest.mark.parametrize("counts", [b"", b"\x00\xff\xfe binary \x89PNG\r\n", b"ImageNumber,Count_Nuclei\n1,12\n",
                                    b"image,count\nx,3\n"])
def test_a_folder_nuclei_did_not_write_is_not_claimed(tmp_path, counts):
    """A CellProfiler-style folder (a counts.csv and a labels/ folder): no reader, not an exception."""
    (tmp_path / "labels").mkdir()
    (tmp_path / "counts.csv").write_bytes(counts)
    assert get_reader(str(tmp_path)) is None


@pytest.mark.hostile
def test_a_bad_label_image_is_skipped_in_one_line(measured):
    (measured / "labels" / "a.tif").write_bytes(b"")
    with pytest.warns(UserWarning) as caught:
        found = labels_layers(read_segment_output(measured))
    assert list(found) == ["b nuclei"]
    assert len(caught) == 1 and "a.tif" in str(caught[0].message) and "\n" not in str(caught[0].message)


@pytest.mark.hostile
@pytest.mark.parametrize("outside", ["/etc/hostname", "../secret.tif", "labels/../../secret.tif"])
def test_only_files_inside_the_folder_are_read(measured, outside, monkeypatch):
    tifffile.imwrite(measured.parent / "secret.tif", np.full((96, 128), 7, np.uint16))
    counts = pd.read_csv(measured / "counts.csv", dtype=str, keep_default_na=False)
    counts.loc[counts["image"] == "a", ["labels_file", "overlay_file"]] = outside
    counts.to_csv(measured / "counts.csv", index=False)
    opened = []
    real = layers.open_labels
    monkeypatch.setattr(layers, "open_labels", lambda path: opened.append(path) or real(path))
    with pytest.warns(UserWarning, match="outside"):
        found = labels_layers(read_segment_output(measured))
    assert list(found) == ["b nuclei"] and all(p.resolve().parent == (measured / "labels").resolve() for p in opened)


@pytest.mark.hostile
def test_a_large_label_image_opens_lazily(measured, monkeypatch):
    """Beyond segment.slide_pixels a label image is not read at opening: napari reads what it shows."""
    monkeypatch.setattr(layers, "LAZY_PIXELS", 1000)
    labels = np.zeros((96, 128), np.uint32)
    labels[10:20, 10:30] = 70_000
    tifffile.imwrite(measured / "labels" / "a.tif", labels, tile=(32, 32), compression="zlib")
    found = labels_layers(read_segment_output(measured))
    lazy = found["a nuclei"]
    assert not isinstance(lazy, np.ndarray) and lazy.shape == labels.shape
    np.testing.assert_array_equal(np.asarray(lazy[5:25, 5:35]), labels[5:25, 5:35])


@pytest.mark.hostile
def test_a_damaged_counts_table_is_one_clean_error(measured):
    with open(measured / "counts.csv", "ab") as f:
        f.write(b'"unclosed,\x00\xff\n' * 3)
    with pytest.raises(NucleiError, match=r"counts.csv: unreadable") as caught:
        read_segment_output(measured)
    assert "\n" not in str(caught.value)
