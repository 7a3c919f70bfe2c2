"""Huge images out of core (pipeline.batch.slide, pipeline.batch.slide_tables): lazy reading, seams, stitching rule,
pixel size metadata, tables streamed and the final pass.

The seam test segments a 4000 × 4000 tiled TIFF with the ideal stand-in network of
test_segmenter.py (P(nucleus) = grey level: the Segmenter, blocks, watershed, stitching and
writing are the real ones, only the U-Net is replaced), so every answer is known.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image
from skimage.draw import disk

from pipeline.batch.slide import Stitcher, sample_mosaic, segment_slide
from pipeline.errors import NucleiError
from pipeline.files.io import read_planes
from pipeline.files.metadata import ome_pixel_size, tiff_pixel_size
from pipeline.files.slide_reader import open_slide, slide_of
from pipeline.method.blocks import iter_blocks

from ..conftest import (
    STAINED_ROUTE,
    InvertedPredictor,
    disks,
    grey_segmenter,
    grid_centres,
    run_cli,
    save_threshold_model,
    stain,
)


def seam_image(side: int, step: int, radius: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Discs on a grid, and discs centred on (and 1 px beside) the block seams and their crossings."""
    centres = [(r, c) for r in range(40, side - 20, 170) for c in range(40, side - 20, 170)]
    seams = list(range(step, side, step))
    for s in seams:
        for t in range(150, side - 150, 400):
            centres += [(s, t), (t, s), (s + 1, t + 200), (t + 200, s - 1)]
        centres += [(s, u) for u in seams]  # on a crossing of four blocks
    image = np.full((side, side), 20, np.uint8)
    truth = np.zeros((side, side), np.int32)
    kept = 0
    for r, c in centres:
        rr, cc = disk((r, c), radius, shape=image.shape)
        if truth[max(r - 2 * radius, 0): r + 2 * radius, max(c - 2 * radius, 0): c + 2 * radius].any():
            continue  # keep the discs apart (a seam disc on a grid disc)
        kept += 1
        image[rr, cc] = 200
        truth[rr, cc] = kept
    return image, truth


def test_nuclei_across_block_seams_are_found_once_whole_with_one_label(tmp_path):
    side, block, margin = 4000, 1024, 64
    image, truth = seam_image(side, block - 2 * margin)
    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(256, 256), compression="zlib")
    slide = open_slide(path)
    assert slide is not None and slide.shape == (side, side)

    row, table, overlay = segment_slide(slide, "slide", tmp_path / "out",
                                        grey_segmenter(block_size=block, block_margin=margin), diameter=20.0)
    n_true = int(truth.max())
    assert row["count"] == n_true > 600

    with tifffile.TiffFile(tmp_path / "out" / "labels" / "slide.tif") as tif:
        page = tif.pages.first
        assert tif.is_bigtiff and page.is_tiled and page.dtype == np.uint32
        labels = page.asarray().astype(np.int64)
    # every true disc is one label covering it, and every label is one disc
    pairs = np.unique(np.stack([truth.ravel(), labels.ravel()]), axis=1)
    pairs = pairs[:, (pairs[0] > 0) & (pairs[1] > 0)]
    assert np.unique(pairs[0]).size == n_true and np.unique(pairs[1]).size == n_true == pairs.shape[1]
    assert np.array_equal(np.unique(labels), np.arange(n_true + 1))
    overlap = np.bincount(truth.ravel(), weights=(labels > 0).ravel(), minlength=n_true + 1)[1:]
    assert (overlap / np.bincount(truth.ravel())[1:] > 0.95).all()  # whole, not cut at the seam

    nuclei = pd.read_csv(table.path)
    assert len(nuclei) == n_true and sorted(nuclei["label"]) == list(range(1, n_true + 1))
    areas = np.bincount(labels.ravel())[1:]
    assert np.array_equal(nuclei.sort_values("label")["area_px"].to_numpy(), areas)
    first = nuclei.set_index("label").loc[labels[truth == 1][0]]
    rows, cols = np.nonzero(truth == 1)
    assert abs(first["centroid_row"] - rows.mean()) < 1 and abs(first["centroid_col"] - cols.mean()) < 1
    assert overlay.dtype == np.uint8 and overlay.shape == (side, side, 3)  # the caller writes it (Tables.write_overlay)


def test_a_stained_slide_is_segmented_block_by_block_by_the_models_stained_network(tmp_path):
    """A model with a stained network (a route by image type) plans a stained slide with it and runs
    every block through it: its dark nuclei are found, and the other network sees no pixel."""
    from pipeline.model.segmenter import Segmenter

    image, truth = seam_image(1200, 512 - 2 * 64)
    path = tmp_path / "stained.tif"
    tifffile.imwrite(path, stain(np.dstack([255 - image] * 3)), tile=(256, 256), photometric="rgb")
    fluorescence = grey_segmenter(block_size=512, block_margin=64)
    inner = Segmenter(InvertedPredictor(fluorescence.predictor.config), block_size=512, block_margin=64)
    fluorescence.predictor.config = fluorescence.predictor.config | STAINED_ROUTE
    routed = Segmenter(fluorescence.predictor, block_size=512, block_margin=64, networks={"stained": inner})
    row, _, _ = segment_slide(open_slide(path), "stained", tmp_path / "out", routed, diameter=20.0)
    assert row["count"] == truth.max() and not fluorescence.predictor.calls and inner.predictor.calls


def test_stitching_keeps_the_earlier_block_and_drops_a_nucleus_seen_twice():
    stitcher = Stitcher(width=20, min_size=3)
    first = np.zeros((10, 12), np.int32)
    first[2:6, 8:12] = 1  # 16 px, reaching into the next block
    kept = stitcher.paste((slice(0, 10), slice(0, 12)), first)
    assert stitcher.count == 1 and kept.max() == 1
    second = np.zeros((10, 12), np.int32)
    second[2:6, 0:5] = 1  # the same nucleus seen again: 12 of its 20 px already taken → dropped
    second[7:10, 6:10] = 2  # a new one, partly over nothing
    second[0:2, 0:5] = 3  # touches nucleus 1's pixels? no: free → kept
    kept = stitcher.paste((slice(0, 10), slice(8, 20)), second)
    assert stitcher.count == 3 and sorted(np.unique(kept)) == [0, 1, 2]
    rows = stitcher.finished(10)
    assert set(np.unique(rows)) == {0, 1, 2, 3}
    assert (rows[2:6, 8:12] == 1).all() and (rows[2:6, 12] == 0).all()  # the duplicate's free pixels not kept
    assert (rows[7:10, 14:18] == 2).all() and (rows[0:2, 8:13] == 3).all()


def test_cores_tile_the_image_so_every_pixel_has_one_owner():
    owners = np.zeros((1000, 1300), np.int32)
    for outer, core in iter_blocks(owners.shape, 300, 40):
        owners[outer][core] += 1
    assert (owners == 1).all()


def test_lazy_reading_and_the_too_large_refusal_only_where_true(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (1000, 1200, 3), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "tiled.tif", image, tile=(256, 256), compression="zlib", photometric="rgb")
    tifffile.imwrite(tmp_path / "whole.tif", image, compression="zlib", rowsperstrip=1000, photometric="rgb")
    tifffile.imwrite(tmp_path / "raw.tif", image, photometric="rgb")  # uncompressed: memory-mapped
    Image.fromarray(image).save(tmp_path / "image.png")
    monkeypatch.setattr("pipeline.files.planes.max_image_pixels", lambda: 500_000)  # a machine too small for 1.2 Mpx

    for name in ("tiled.tif", "raw.tif"):  # read piece by piece: segmented out of core, never refused
        slide = slide_of(tmp_path / name, slide_pixels=50_000_000)
        assert slide is not None and slide.shape == (1000, 1200)
        assert np.array_equal(slide.read(slice(100, 300), slice(500, 900)), image[100:300, 500:900])
    for name in ("whole.tif", "image.png"):  # one compressed piece: must be decoded whole
        assert slide_of(tmp_path / name, slide_pixels=50_000_000) is None
        with pytest.raises(NucleiError, match="too large"):
            read_planes(tmp_path / name)
    mosaic = sample_mosaic(open_slide(tmp_path / "tiled.tif"), n_pixels=200_000, window=100)
    assert mosaic.shape == (400, 400, 3) and np.array_equal(mosaic[:100, :100], image[:100, :100])


def test_ome_zarr_is_read_lazily_with_its_pixel_size(tmp_path):
    zarr = pytest.importorskip("zarr")
    image = np.arange(2 * 300 * 400, dtype=np.uint16).reshape(2, 300, 400)
    group = zarr.open_group(tmp_path / "plate.zarr", mode="w")
    group.create_array("0", data=image, chunks=(1, 128, 128))
    group.attrs["multiscales"] = [{
        "version": "0.4",
        "axes": [{"name": "c", "type": "channel"}, {"name": "y", "type": "space", "unit": "micrometer"},
                 {"name": "x", "type": "space", "unit": "micrometer"}],
        "datasets": [{"path": "0", "coordinateTransformations": [{"type": "scale", "scale": [1, 0.65, 0.65]}]}],
    }]  # fmt: skip
    slide = open_slide(tmp_path / "plate.zarr")
    assert slide.shape == (300, 400) and slide.pixel_size == pytest.approx(0.65)
    assert np.array_equal(slide.read(slice(10, 20), slice(5, 9)), np.moveaxis(image[:, 10:20, 5:9], 0, -1))


def test_ome_and_imagej_pixel_sizes_are_read(tmp_path):
    image = np.zeros((64, 64), np.uint8)
    tifffile.imwrite(tmp_path / "ome.ome.tif", image, metadata={"PhysicalSizeX": 0.325, "PhysicalSizeY": 0.325})
    tifffile.imwrite(tmp_path / "nm.ome.tif", image,
                     metadata={"PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 250,
                               "PhysicalSizeYUnit": "nm"})
    tifffile.imwrite(tmp_path / "ij.tif", image, imagej=True, resolution=(1 / 0.5, 1 / 0.5), metadata={"unit": "micron"})
    tifffile.imwrite(tmp_path / "dpi.tif", image, resolution=(72, 72))  # an editor's 72 dpi is no pixel size
    expected = {"ome.ome.tif": 0.325, "nm.ome.tif": 0.25, "ij.tif": 0.5, "dpi.tif": None}
    for name, size in expected.items():
        with tifffile.TiffFile(tmp_path / name) as tif:
            assert tiff_pixel_size(tif) == (pytest.approx(size) if size else None), name
        assert read_planes(tmp_path / name)[0].pixel_size == (pytest.approx(size) if size else None)
    assert ome_pixel_size("<not xml") is None


def test_segment_reads_the_pixel_size_unless_given(tmp_path):
    image, _ = disks()
    tifffile.imwrite(tmp_path / "cells.ome.tif", image, metadata={"PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    model_dir = tmp_path / "model"
    save_threshold_model(model_dir)
    assert run_cli(tmp_path / "cells.ome.tif", "-o", tmp_path / "meta", "--model", model_dir) == 0
    assert run_cli(tmp_path / "cells.ome.tif", "-o", tmp_path / "given", "--model", model_dir, "--pixel-size", "2") == 0
    meta, given = (pd.read_csv(tmp_path / d / "nuclei.csv") for d in ("meta", "given"))
    assert np.allclose(meta["area_um2"], meta["area_px"] * 0.25) and np.allclose(given["area_um2"], given["area_px"] * 4)
    assert pd.read_csv(tmp_path / "meta" / "counts.csv")["pixel_size_um"].tolist() == [0.5]


def test_a_pyramidal_jpeg_ome_tiff_is_read_at_full_resolution(tmp_path):
    rows, cols = np.mgrid[:512, :768]
    image = np.stack([rows // 2, cols // 3, (rows + cols) // 5], axis=-1).astype(np.uint8)  # smooth: JPEG keeps it
    options = {"tile": (128, 128), "compression": "jpeg", "photometric": "rgb"}
    with tifffile.TiffWriter(tmp_path / "pyramid.ome.tif", bigtiff=True) as tif:
        tif.write(image, subifds=1, metadata={"PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25, "axes": "YXS"}, **options)
        tif.write(image[::2, ::2], subfiletype=1, **options)
    slide = open_slide(tmp_path / "pyramid.ome.tif")
    assert slide.shape == (512, 768) and slide.pixel_size == pytest.approx(0.25)
    block = slide.read(slice(128, 256), slice(256, 512))
    assert block.shape == (128, 256, 3) and np.abs(block.astype(int) - image[128:256, 256:512]).mean() < 2


def test_slides_beside_exports_and_a_later_run_in_the_same_folder(tmp_path):
    """A slide with --export: its flag says no outlines were written (the ordinary image's are);
    nuclei.csv streams its rows; a later run into the same folder keeps them (output_folder.Tables)."""
    from pipeline.batch.one_file import SLIDE_EXPORT_NOTE
    from pipeline.batch.segment import segment_images

    model_dir = tmp_path / "model"
    save_threshold_model(model_dir)
    settings = {"tile_size": 256, "overlap": 32, "block_size": 256, "block_margin": 40, "slide_pixels": 100_000}
    big, _ = disks(shape=(400, 500), centres=grid_centres((400, 500), 33))
    tifffile.imwrite(tmp_path / "big.tif", big, tile=(64, 64), compression="zlib")  # 200,000 px: out of core
    small, _ = disks()
    Image.fromarray(small).save(tmp_path / "small.png")
    out = tmp_path / "out"

    first = segment_images([tmp_path / "big.tif", tmp_path / "small.png"], out, model_dir, "cpu",
                           exports=("geojson",), **settings).set_index("image")
    assert (first["status"] == "ok").all() and first.loc["big", "count"] > 100
    assert SLIDE_EXPORT_NOTE in first.loc["big", "flag"] and pd.isna(first.loc["big", "geojson_file"])
    assert first.loc["small", "geojson_file"] == "geojson/small.geojson" and (out / "geojson" / "small.geojson").is_file()
    assert not (out / "geojson" / "big.geojson").exists()
    nuclei = pd.read_csv(out / "nuclei.csv")
    assert nuclei["image"].value_counts().to_dict() == first["count"].to_dict()
    streamed = pd.read_csv(out / "tables" / "big.csv")

    second = segment_images([tmp_path / "small.png"], out, model_dir, "cpu", **settings)
    assert list(second["image"]) == ["small"]
    counts = pd.read_csv(out / "counts.csv").set_index("image")
    assert sorted(counts.index) == ["big", "small"] and counts.loc["big", "count"] == first.loc["big", "count"]
    kept = pd.read_csv(out / "nuclei.csv")
    assert kept["image"].value_counts().to_dict() == first["count"].to_dict()
    pd.testing.assert_frame_equal(kept[kept["image"] == "big"].reset_index(drop=True)[streamed.columns], streamed,
                                  check_dtype=False)


def test_an_ome_zarr_folder_is_one_input_and_a_turned_tiff_is_read_whole(tmp_path):
    from pipeline.files.inputs import list_inputs

    (tmp_path / "plate.zarr" / "0").mkdir(parents=True)
    (tmp_path / "plate.zarr" / "zarr.json").write_text("{}")
    assert list_inputs([tmp_path / "plate.zarr"]) == ([tmp_path / "plate.zarr"], [])
    image = np.arange(300 * 200, dtype=np.uint16).reshape(300, 200)
    tifffile.imwrite(tmp_path / "turned.tif", image, tile=(64, 64), extratags=[(274, "H", 1, 6, False)])
    assert open_slide(tmp_path / "turned.tif") is None  # read whole, turned as shown (pipeline.files.tiff)
    plane = read_planes(tmp_path / "turned.tif")[0]
    assert plane.array.shape == (200, 300) and plane.orientation == 6


def test_a_multichannel_slide_is_measured_block_by_block_as_whole(tmp_path):
    """A 4-channel tiled OME-TIFF out of core with --nuclear-channel, --positive (a value and auto),
    --spots and --cell-expansion: every channel's columns equal those of the whole image on the same
    labels, the positive calls and spots come out as made, the cells are grown."""
    from pipeline.batch.segment import segment_images
    from pipeline.batch.settings import CellExpansion, MeasureOptions
    from pipeline.files.io import read_labels
    from pipeline.method.features import channel_statistics
    from pipeline.method.spots import spots_per_nucleus

    from ..conftest import MARKER_CHANNELS, MARKER_KEYS, marker_field

    channels, truth, _, positive, _, spots = marker_field(shape=(400, 400), seed=50, contrast=10)
    tifffile.imwrite(tmp_path / "slide.tif", channels, tile=(64, 64), compression="zlib", ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": list(MARKER_CHANNELS)}})
    model_dir = save_threshold_model(tmp_path / "model")
    options = MeasureOptions(nuclear_channel="DAPI", positive=(("Ki-67", None), ("NF-kB", 1000.0)),
                             spots=("gH2AX",), cell_expansion=CellExpansion(3, "px"))
    counts = segment_images([tmp_path / "slide.tif"], tmp_path / "out", model_dir, "cpu", measure=options,
                            tile_size=256, overlap=32, block_size=256, block_margin=40,
                            slide_pixels=100_000).set_index("image")
    row = counts.loc["slide"]
    assert row["status"] == "ok" and row["count"] == truth.max() and row["cells_file"] == "cells/slide.tif"
    out = tmp_path / "out"
    labels = read_labels(out / "labels" / "slide.tif")
    table = pd.read_csv(out / "tables" / "slide.csv").set_index("label").sort_index()
    whole = channel_statistics(labels, channels, list(MARKER_KEYS))
    for key in MARKER_KEYS:
        np.testing.assert_allclose(table[f"mean_{key}"].to_numpy(), whole[f"mean_{key}"], rtol=1e-12)
        np.testing.assert_allclose(table[f"median_{key}"].to_numpy(), whole[f"median_{key}"], rtol=1e-12)
    pairs = labels[truth > 0], truth[truth > 0]
    order = np.zeros(truth.max() + 1, np.int64)
    order[pairs[1]] = pairs[0]
    calls = table.loc[order[1:], "positive_Ki_67"].astype(bool).to_numpy()
    assert np.mean(calls == positive) == 1.0 and row["n_positive_Ki_67"] == positive.sum()
    assert row["threshold_NF_kB"] == 1000.0 and table["positive_NF_kB"].notna().all()
    found = pd.read_csv(out / "spots" / "slide.csv")
    assert len(found) == spots.sum() == row["n_spots_gH2AX"]
    counted = spots_per_nucleus(found, order[1:])
    assert np.mean(counted == spots) == 1.0
    nuclei = pd.read_csv(out / "nuclei.csv")
    assert len(nuclei) == truth.max() and "positive_Ki_67" in nuclei and nuclei["confidence"].between(0, 1).all()


# --------------------------------------------------------------------------- cells and the batch's threshold out of core


@pytest.fixture(scope="module")
def slide_and_memory(tmp_path_factory):
    """One batch run twice, with --cell-expansion and --positive-scope batch: ``mixed`` (400 × 400, 40 %
    Ki-67 positive, a tiled OME-TIFF) out of core beside ``negative`` (256 × 256, all negative) in
    memory, then both in memory. The slide's final pass runs in 64-px tiles and 128-px chunks, so
    that cells cross chunks. Returns {'slide' | 'memory': (output folder, counts by image)}."""
    from pipeline.batch.segment import segment_images
    from pipeline.batch.settings import CellExpansion, MeasureOptions

    from ..conftest import MARKER_CHANNELS, marker_field, write_ome

    folder = tmp_path_factory.mktemp("batch")
    mixed, *_ = marker_field(shape=(400, 400), seed=20, contrast=6)
    negative, *_ = marker_field(seed=21, fraction=0.0)
    tifffile.imwrite(folder / "mixed.tif", mixed, tile=(64, 64), compression="zlib", ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": list(MARKER_CHANNELS)}})
    write_ome(folder / "negative.tif", negative)
    model_dir = save_threshold_model(folder / "model")
    options = MeasureOptions(nuclear_channel="DAPI", positive=(("Ki-67", None), ("NF-kB", 1000.0)),
                             positive_scope="batch", cell_expansion=CellExpansion(4, "px"))
    runs = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("pipeline.batch.slide_tables.LABEL_TILE", 64)
        patch.setattr("pipeline.batch.slide_tables.CELL_CHUNK", 128)
        for name, slide_pixels in (("slide", 100_000), ("memory", 50_000_000)):
            counts = segment_images([folder / "mixed.tif", folder / "negative.tif"], folder / name, model_dir, "cpu",
                                    measure=options, tile_size=256, overlap=32, block_size=256, block_margin=40,
                                    slide_pixels=slide_pixels)
            runs[name] = folder / name, counts.set_index("image")
    return runs


def test_cells_grown_on_a_slide_chunk_by_chunk_are_those_of_the_whole_image(slide_and_memory):
    """cells/<name>.tif of a slide (tiled uint32 BigTIFF, as its labels) equals the cells the in-memory
    path grows on the same image, and so does every column of its nuclei, the cell columns summed
    over the chunks included."""
    from pipeline.files.io import read_labels
    from pipeline.method.features import grow_cells

    (slide, slide_counts), (memory, memory_counts) = slide_and_memory["slide"], slide_and_memory["memory"]
    assert (slide / "tables" / "mixed.csv").is_file() and not (memory / "tables" / "mixed.csv").exists()
    labels = read_labels(slide / "labels" / "mixed.tif")
    np.testing.assert_array_equal(labels, read_labels(memory / "labels" / "mixed.tif"))  # the same nuclei
    with tifffile.TiffFile(slide / slide_counts.loc["mixed", "cells_file"]) as tif:
        page = tif.pages.first
        assert tif.is_bigtiff and page.is_tiled and page.dtype == np.uint32
        cells = page.asarray().astype(np.int32)
    np.testing.assert_array_equal(cells, read_labels(memory / memory_counts.loc["mixed", "cells_file"]))
    np.testing.assert_array_equal(cells, grow_cells(labels, 4))
    assert slide_counts.loc["mixed", "cell_expansion_px"] == 4 and not slide_counts.loc["mixed", "flag"]
    out_of_core, in_memory = (pd.read_csv(folder / "nuclei.csv").query("image == 'mixed'").reset_index(drop=True)
                              for folder in (slide, memory))
    assert list(out_of_core.columns) == list(in_memory.columns)
    grown = [c for c in in_memory.columns if c.startswith(("cell_area", "cyto_mean_", "nuc_cyto_ratio_"))]
    assert len(grown) == 1 + 2 * 4 and out_of_core["cyto_mean_NF_kB"].notna().all()
    pd.testing.assert_frame_equal(out_of_core, in_memory, check_dtype=False, rtol=1e-9)


def test_a_slide_takes_the_batch_threshold_as_in_memory(slide_and_memory):
    """--positive-scope batch with a slide in the batch: the same thresholds, counts and calls as the
    same images in memory; the slide's streamed table and overlay carry the batch's calls."""
    from pipeline.method.overlay import POSITIVE_COLOURS

    (slide, slide_counts), (memory, memory_counts) = slide_and_memory["slide"], slide_and_memory["memory"]
    for image in ("mixed", "negative"):
        for column in ("background_Ki_67", "noise_Ki_67", "threshold_Ki_67", "n_positive_Ki_67",
                       "fraction_positive_Ki_67", "threshold_NF_kB", "n_positive_NF_kB"):
            assert slide_counts.loc[image, column] == pytest.approx(memory_counts.loc[image, column]), (image, column)
    assert slide_counts.loc["mixed", "n_positive_Ki_67"] > 20 and slide_counts.loc["negative", "n_positive_Ki_67"] == 0
    assert (slide_counts["flag"].fillna("") == "").all()  # no image left uncalled
    out_of_core, in_memory = (pd.read_csv(folder / "nuclei.csv") for folder in (slide, memory))
    for column in ("positive_Ki_67", "positive_NF_kB"):
        assert out_of_core[column].notna().all()
        assert out_of_core[column].tolist() == in_memory[column].tolist()
    streamed = pd.read_csv(slide / "tables" / "mixed.csv")
    assert streamed["positive_Ki_67"].tolist() == out_of_core.query("image == 'mixed'")["positive_Ki_67"].tolist()
    magenta = [(np.asarray(Image.open(folder / "overlays" / "mixed.png"))[..., :3] == POSITIVE_COLOURS[0]).all(-1)
               for folder in (slide, memory)]
    assert magenta[0].any() and np.array_equal(*magenta)  # redrawn with the batch's calls


def test_measure_out_of_core_gives_the_tables_of_the_whole_image(tmp_path, monkeypatch):
    """nuclei measure of an image larger than slide_pixels with a tiled label image (ids sparse, up to
    1.6 million): measured block by block, each nucleus whole in one block, the same nuclei.csv, label
    and cell images, spots, calls and counts as measured in memory; a label image of one value or of
    another size is one line naming it."""
    from pipeline.batch.measure import measure_images
    from pipeline.batch.settings import CellExpansion, MeasureOptions

    from ..conftest import MARKER_CHANNELS, marker_field

    for constant, value in (("slide_tables.LABEL_TILE", 64), ("slide_tables.CELL_CHUNK", 128),
                            ("slide.MEASURE_BLOCK", 128)):
        monkeypatch.setattr(f"pipeline.batch.{constant}", value)
    channels, truth, *_ = marker_field(shape=(400, 400), seed=50, contrast=10)
    for name in ("slide", "flat", "small"):
        tifffile.imwrite(tmp_path / f"{name}.tif", channels, tile=(64, 64), compression="zlib", ome=True,
                         metadata={"axes": "CYX", "Channel": {"Name": list(MARKER_CHANNELS)}})
    ids = np.concatenate([[0], 70_000 + 7919 * np.random.default_rng(0).permutation(int(truth.max()))])
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "labels" / "slide.tif", ids[truth].astype(np.uint32), tile=(64, 64), compression="zlib")
    tifffile.imwrite(tmp_path / "labels" / "flat.tif", (truth > 0).astype(np.uint8) * 255, tile=(64, 64))
    tifffile.imwrite(tmp_path / "labels" / "small.tif", truth[:300].astype(np.uint16), tile=(64, 64))
    options = MeasureOptions(nuclear_channel="DAPI", positive=(("Ki-67", None), ("NF-kB", 1000.0)), spots=("gH2AX",),
                             cell_expansion=CellExpansion(5, "px"))
    images = [tmp_path / f"{name}.tif" for name in ("slide", "flat", "small")]
    out_of_core = measure_images(images, tmp_path / "labels", tmp_path / "ooc", measure=options,
                                 slide_pixels=100_000).set_index("image")
    in_memory = measure_images(images[:1], tmp_path / "labels", tmp_path / "mem", measure=options).set_index("image")
    assert out_of_core.loc["flat", "error"] == (f"{tmp_path / 'labels' / 'flat.tif'}: one label value only (a binary "
                                                "mask?): out of core, give instance labels (one value per nucleus)")
    assert out_of_core.loc["small", "error"] == (f"{tmp_path / 'labels' / 'small.tif'}: 400x300 px, but its image "
                                                 f"{tmp_path / 'small.tif'} is 400x400 px")
    assert (tmp_path / "ooc" / "tables" / "slide.csv").is_file() and not (tmp_path / "mem" / "tables").exists()
    row, expected = out_of_core.loc["slide"], in_memory.loc["slide"]
    assert row["status"] == "ok" and row["count"] == truth.max() and not row["flag"]
    for column in expected.index.drop(["pixel_size_um", "orientation"]):
        assert row[column] == expected[column] or (pd.isna(row[column]) and pd.isna(expected[column])), column
    blocks = pd.read_csv(tmp_path / "ooc" / "nuclei.csv")
    pd.testing.assert_frame_equal(blocks.sort_values("label").reset_index(drop=True),
                                  pd.read_csv(tmp_path / "mem" / "nuclei.csv"), rtol=1e-12)
    for folder, dtype in (("labels", np.uint32), ("cells", np.uint32)):
        written = tifffile.imread(tmp_path / "ooc" / folder / "slide.tif")
        assert written.dtype == dtype and np.array_equal(written, tifffile.imread(tmp_path / "mem" / folder / "slide.tif"))
    spots = pd.read_csv(tmp_path / "ooc" / "spots" / "slide.csv").sort_values(["nucleus", "y", "x"])
    pd.testing.assert_frame_equal(spots.reset_index(drop=True), pd.read_csv(tmp_path / "mem" / "spots" / "slide.csv"))
    assert np.array_equal(np.asarray(Image.open(tmp_path / "ooc" / "overlays" / "slide.png")),
                          np.asarray(Image.open(tmp_path / "mem" / "overlays" / "slide.png")))
