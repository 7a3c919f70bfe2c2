"""``nuclei segment``: outputs, measurements, bad inputs, exit codes, block-wise large images.

The model is a tiny plain U-Net (depth 2, width 4) whose weights are set so that it acts as a
per-pixel threshold: P(mask − border) ≈ 1 where the normalised grey level is above 0.5, P(background)
≈ 1 below. Synthetic images of bright disks on a dark background then have a known answer: one
nucleus per disk.
"""

from __future__ import annotations

import argparse
import base64
import io
import re
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile
from PIL import Image

from pipeline.batch.segment import COUNT_COLUMNS, segment_images
from pipeline.errors import NucleiError
from pipeline.files.io import read_labels
from pipeline.method.blocks import iter_blocks
from pipeline.method.features import measure_nuclei, measurement_columns
from pipeline.method.overlay import PALETTE, draw_outlines
from pipeline.method.trust import RISKY

from ..conftest import counts_of, disks, grid_centres, run_cli

torch = pytest.importorskip("torch")
torch.set_num_threads(1)

# --------------------------------------------------------------------------- outputs


def test_outputs_counts_and_label_round_trip(tmp_path, model_dir, capsys):
    image, truth = disks()
    Image.fromarray(image).save(tmp_path / "cells.png")
    out = tmp_path / "out"
    assert run_cli(tmp_path / "cells.png", "-o", out, "--model", model_dir) == 0

    labels = tifffile.imread(out / "labels" / "cells.tif")
    assert labels.dtype == np.uint16 and labels.shape == truth.shape
    assert labels.max() == 3
    # each true disk is exactly one predicted nucleus covering (nearly) the same pixels
    for k in range(1, 4):
        values, n = np.unique(labels[truth == k], return_counts=True)
        assert values.size == 1 and values[0] > 0
        assert abs(int((labels == values[0]).sum()) - n[0]) <= 0.1 * n[0]

    counts = counts_of(out)
    assert list(counts.reset_index().columns) == [
        c for c in COUNT_COLUMNS if not c.endswith(("um2", "geojson_file", "rois_file"))  # no --export
    ]
    assert counts.loc["cells", "count"] == 3 and counts.loc["cells", "status"] == "ok"
    assert counts.loc["cells", "image_type"] == "fluo-small"  # grey, dark background, small
    assert 0 <= counts.loc["cells", "count_risk"] < RISKY and pd.isna(counts.loc["cells", "flag"])  # 3 clear discs
    nuclei = pd.read_csv(out / "nuclei.csv")
    assert list(nuclei.columns) == ["image", *measurement_columns()]
    assert (nuclei["image"] == "cells").all() and sorted(nuclei["label"]) == [1, 2, 3]
    # the table describes the label image on disk
    areas = np.bincount(labels.ravel())[1:]
    assert np.array_equal(nuclei.sort_values("label")["area_px"].to_numpy(), areas)
    assert counts.loc["cells", "median_area_px"] == np.median(areas)

    overlay = np.asarray(Image.open(out / "overlays" / "cells.png"))
    assert overlay.shape == (*truth.shape, 3) and overlay.dtype == np.uint8
    assert len({tuple(c) for c in overlay.reshape(-1, 3)} & {tuple(c) for c in PALETTE[:3]}) == 3

    html = (out / "report.html").read_text()
    assert "cells" in html and 'id="n-nuclei">3<' in html and "data:image/png;base64," in html
    assert not re.search(r"""(src|href)=["']?(https?:)?//|url\((?!#)|@import""", html)  # nothing fetched
    summary = capsys.readouterr().out
    assert "1 images segmented, 3 nuclei, 0 failed" in summary


def test_pixel_size_adds_micrometre_columns(tmp_path, model_dir):
    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    assert (
        run_cli(tmp_path / "a.png", "-o", tmp_path / "out", "--model", model_dir, "--pixel-size", "0.5") == 0
    )
    nuclei = pd.read_csv(tmp_path / "out" / "nuclei.csv")
    assert list(nuclei.columns) == ["image", *measurement_columns(0.5)]
    np.testing.assert_allclose(nuclei["area_um2"], nuclei["area_px"] * 0.25)
    np.testing.assert_allclose(nuclei["equivalent_diameter_um"], nuclei["equivalent_diameter_px"] * 0.5)
    counts = counts_of(tmp_path / "out")
    assert counts.loc["a", "median_area_um2"] == pytest.approx(nuclei["area_um2"].median())


@pytest.mark.parametrize("value", ["0", "-1", "nan", "abc"])
def test_bad_pixel_size_is_a_usage_error(tmp_path, model_dir, value, capsys):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(tmp_path, "-o", tmp_path / "out", "--model", model_dir, "--pixel-size", value)
    assert exit_info.value.code == 2
    assert "--pixel-size" in capsys.readouterr().err


def test_image_without_nuclei(tmp_path, model_dir):
    Image.fromarray(np.full((64, 80), 37, np.uint8)).save(tmp_path / "empty.png")
    assert run_cli(tmp_path / "empty.png", "-o", tmp_path / "out", "--model", model_dir) == 0
    labels = tifffile.imread(tmp_path / "out" / "labels" / "empty.tif")
    assert labels.shape == (64, 80) and not labels.any()
    counts = counts_of(tmp_path / "out")
    assert counts.loc["empty", "count"] == 0 and counts.loc["empty", "status"] == "ok"
    nuclei = pd.read_csv(tmp_path / "out" / "nuclei.csv")
    assert len(nuclei) == 0 and list(nuclei.columns) == ["image", *measurement_columns()]
    assert "No nuclei found" in (tmp_path / "out" / "report.html").read_text()


# --------------------------------------------------------------------------- image kinds


def write_image_kinds(folder: Path) -> dict[str, int]:
    """One file per supported kind of image; returns the expected count per output name."""
    folder.mkdir()
    grey8, _ = disks()
    expected = {}
    # dim, low-contrast 16-bit fluorescence: disks at 1200 on 1000 of 65535
    dim, _ = disks(value=1200, bg=1000, dtype=np.uint16)
    tifffile.imwrite(folder / "dim16.tif", dim)
    Image.fromarray(dim).save(folder / "dim16.png")
    tifffile.imwrite(folder / "float.tif", dim.astype(np.float32) / 7.0)  # float, outside [0, 1]
    rgba = np.dstack([grey8, grey8, grey8, np.full_like(grey8, 255)])
    Image.fromarray(rgba, "RGBA").save(folder / "rgba.png")
    Image.fromarray(np.dstack([grey8 // 2, grey8, grey8 // 3])).save(folder / "rgb.jpg", quality=95)
    tifffile.imwrite(folder / "single.tif", grey8[..., None])  # (H, W, 1)
    expected.update(dict.fromkeys(["dim16-tif", "dim16-png", "float", "rgba", "rgb", "single"], 3))
    # multi-page TIFF: five planes with 0, 1, 2, 3, 3 disks -> <stem>_p0 .. <stem>_p4
    n_disks = [0, 1, 2, 3, 3]
    planes = [disks(centres=[(30, 30), (60, 90), (25, 100)][:n])[0] for n in n_disks]
    tifffile.imwrite(folder / "stack.tif", np.stack(planes), photometric="minisblack")
    expected.update({f"stack_p{k}": n for k, n in enumerate(n_disks)})
    return expected


def test_every_kind_of_image(tmp_path, model_dir):
    expected = write_image_kinds(tmp_path / "in")
    out = tmp_path / "out"
    assert run_cli(tmp_path / "in", "-o", out, "--model", model_dir) == 0
    counts = counts_of(out)
    assert set(counts.index) == set(expected)
    assert (counts["status"] == "ok").all()
    assert counts["count"].to_dict() == expected
    assert counts.loc["stack_p2", "plane"] == 2 and counts.loc["stack_p2", "source"].endswith("stack.tif")
    for name in expected:
        assert tifffile.imread(out / "labels" / f"{name}.tif").max() == expected[name]
        assert (out / "overlays" / f"{name}.png").is_file()


# --------------------------------------------------------------------------- bad inputs


def write_bad_files(folder: Path) -> list[str]:
    folder.mkdir(exist_ok=True)
    good, _ = disks()
    Image.fromarray(good).save(folder / "good.png")
    data = (folder / "good.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    corrupt = bytearray(data)
    corrupt[60:90] = b"\x00" * 30  # bad chunk CRC / data inside the IDAT stream
    (folder / "corrupt.png").write_bytes(bytes(corrupt))
    (folder / "notes.png").write_text("this is not an image\n")
    (folder / "zlib.tif").write_bytes(b"II*\x00" + zlib.compress(b"garbage") * 3)
    (folder / "empty.jpg").write_bytes(b"")
    Image.fromarray(good[:4, :4]).save(folder / "tiny.png")
    (folder / "readme.txt").write_text("ignored: not an image suffix\n")
    return ["corrupt", "empty", "notes", "tiny", "truncated", "zlib"]


def test_bad_files_are_reported_and_the_batch_completes(tmp_path, model_dir, capsys):
    bad = write_bad_files(tmp_path / "in")
    out = tmp_path / "out"
    assert run_cli(tmp_path / "in", "-o", out, "--model", model_dir) == 1
    counts = counts_of(out)
    assert set(counts.index) == {"good", *bad}
    assert counts.loc["good", "status"] == "ok" and counts.loc["good", "count"] == 3
    failed = counts.drop(index="good")
    assert (failed["status"] == "failed").all() and failed["count"].isna().all()
    for name, row in failed.iterrows():
        assert Path(row["source"]).name in row["error"] and "\n" not in row["error"]
        assert not (out / "labels" / f"{name}.tif").exists()
    captured = capsys.readouterr()
    assert all(f"{name}." in captured.err for name in bad)
    skipped = [line for line in captured.err.splitlines() if "skipped" in line]
    assert len(skipped) == 1 and "skipped 1 file not ending in" in skipped[0] and "readme.txt" in skipped[0]
    assert "Traceback" not in captured.err
    assert "1 images segmented, 3 nuclei, 6 failed" in captured.out
    assert not list(out.rglob(".*tmp*"))  # no temporary files left behind


def test_usage_errors_exit_2(tmp_path, model_dir, capsys):
    (tmp_path / "empty").mkdir()
    assert run_cli(tmp_path / "empty", "-o", tmp_path / "out", "--model", model_dir) == 2
    assert "no image files found" in capsys.readouterr().err
    assert run_cli(tmp_path / "missing.png", "-o", tmp_path / "out", "--model", model_dir) == 2
    assert "missing.png" in capsys.readouterr().err
    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    assert run_cli(tmp_path / "a.png", "-o", tmp_path / "out", "--model", tmp_path / "nomodel") == 2
    assert "nomodel" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_info:
        run_cli(tmp_path / "a.png")  # no -o
    assert exit_info.value.code == 2
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_existing_outdir_is_updated_not_wiped(tmp_path, model_dir):
    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image[:, ::-1].copy()).save(tmp_path / "b.png")
    out = tmp_path / "out"
    (out / "labels").mkdir(parents=True)
    (out / "labels" / "a.tif").write_bytes(b"stale")
    (out / "labels" / "other.tif").write_bytes(b"from another run")
    (out / "my-notes.txt").write_text("keep me")
    assert segment_images([tmp_path / "a.png", tmp_path / "b.png"], out, model_dir).shape[0] == 2
    assert tifffile.imread(out / "labels" / "a.tif").max() == 3  # replaced
    assert (out / "labels" / "other.tif").read_bytes() == b"from another run"  # kept
    assert (out / "my-notes.txt").read_text() == "keep me"
    # the outputs inside OUTDIR are never read back as inputs, even recursively
    counts = segment_images([tmp_path], out, model_dir, recursive=True)
    assert sorted(counts["image"]) == ["a", "b"]
    # an image that fails now loses the outputs an earlier run left for it
    (tmp_path / "b.png").write_bytes(b"broken")
    counts = segment_images([tmp_path / "a.png", tmp_path / "b.png"], out, model_dir).set_index("image")
    assert counts.loc["b", "status"] == "failed"
    assert not (out / "labels" / "b.tif").exists() and not (out / "overlays" / "b.png").exists()
    assert (out / "labels" / "a.tif").exists()


def test_same_stem_twice_gets_distinct_stable_names(tmp_path, model_dir):
    image, _ = disks()
    for sub in ("x", "y"):
        (tmp_path / sub).mkdir()
        Image.fromarray(image).save(tmp_path / sub / "cells.png")
    for _ in range(2):  # the same names on a rerun, whatever the order of the inputs
        counts = segment_images([tmp_path / "y", tmp_path / "x"], tmp_path / "out", model_dir)
        assert sorted(counts["image"]) == ["cells-x", "cells-y"]
    assert (tmp_path / "out" / "labels" / "cells-y.tif").is_file()
    counts = counts.set_index("image")
    assert counts.loc["cells-y", "labels_file"] == "labels/cells-y.tif"
    assert counts.loc["cells-y", "overlay_file"] == "overlays/cells-y.png"
    assert counts.loc["cells-y", "source"] == str(tmp_path / "y" / "cells.png")


@pytest.mark.parametrize("layout", ["suffix", "folder"])
def test_a_failing_file_never_removes_another_inputs_outputs(tmp_path, model_dir, layout):
    """A good cells.png and a corrupt cells.tif (or a/x.png good, b/x.png corrupt) together."""
    image, _ = disks()
    if layout == "suffix":
        good, bad = tmp_path / "cells.png", tmp_path / "cells.tif"
    else:
        good, bad = tmp_path / "a" / "x.png", tmp_path / "b" / "x.png"
        good.parent.mkdir(), bad.parent.mkdir()
    Image.fromarray(image).save(good)
    bad.write_bytes(b"corrupt")
    out = tmp_path / "out"
    for _ in range(2):  # a rerun too
        counts = segment_images([good, bad], out, model_dir).set_index("source")
        ok, failed = counts.loc[str(good)], counts.loc[str(bad)]
        assert ok["status"] == "ok" and failed["status"] == "failed" and ok["image"] != failed["image"]
        assert (out / ok["labels_file"]).is_file() and (out / ok["overlay_file"]).is_file()
        assert pd.isna(failed["labels_file"])
        nuclei = pd.read_csv(out / "nuclei.csv")
        assert (nuclei["image"] == ok["image"]).sum() == ok["count"] == 3
        assert sorted(p.name for p in (out / "labels").iterdir()) == [f"{ok['image']}.tif"]


def test_outputs_of_a_partly_written_image_are_removed(tmp_path, model_dir, monkeypatch):
    """An image whose overlay cannot be written loses its label file, not another's."""
    import pipeline.batch.output_folder

    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image).save(tmp_path / "b.png")
    out = tmp_path / "out"
    real = pipeline.batch.output_folder.write_png

    def write_png(path, array):
        if path.name == "b.png":
            raise OSError(28, "No space left on device")
        real(path, array)

    monkeypatch.setattr(pipeline.batch.output_folder, "write_png", write_png)
    counts = segment_images([tmp_path / "a.png", tmp_path / "b.png"], out, model_dir).set_index("image")
    assert list(counts["status"]) == ["ok", "failed"]
    assert [p.name for p in (out / "labels").iterdir()] == ["a.tif"]


def test_an_image_failing_after_its_overlay_leaves_no_thumbnail_in_the_report(tmp_path, model_dir, monkeypatch):
    """An export that cannot be written fails its image after the overlay was drawn: the overlay is
    removed, the report is written without it, the batch goes on."""
    import pipeline.batch.one_file

    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    Image.fromarray(image).save(tmp_path / "b.png")
    real = pipeline.batch.one_file.write_export

    def write_export(fmt, path, labels, table):
        if path.stem == "b":
            raise OSError(28, "No space left on device")
        real(fmt, path, labels, table)

    monkeypatch.setattr(pipeline.batch.one_file, "write_export", write_export)
    out = tmp_path / "out"
    counts = segment_images([tmp_path / "a.png", tmp_path / "b.png"], out, model_dir, exports=("geojson",))
    assert list(counts["status"]) == ["ok", "failed"] and sorted(p.name for p in (out / "overlays").iterdir()) == ["a.png"]
    html = (out / "report.html").read_text()
    assert html.count("<figcaption>") == 1 and '<figcaption><span title="a">' in html  # a's thumbnail alone


# --------------------------------------------------------------------------- large images


def test_iter_blocks_cores_tile_the_image():
    shape = (1000, 700)
    cover = np.zeros(shape, int)
    for outer, core in iter_blocks(shape, block_size=300, margin=50):
        assert outer[0].stop - outer[0].start <= 300 and outer[1].stop - outer[1].start <= 300
        cover[outer][core] += 1
    assert (cover == 1).all()


def test_large_image_in_blocks_matches_whole_image(tmp_path, model_dir):
    shape = (620, 910)
    centres = grid_centres(shape, spacing=37)
    image, truth = disks(shape, centres, radius=9)
    path = tmp_path / "big.tif"
    tifffile.imwrite(path, image)
    whole = segment_images([path], tmp_path / "whole", model_dir, tile_size=256, overlap=32)
    blocks = segment_images(
        [path], tmp_path / "blocks", model_dir, tile_size=128, overlap=32, block_size=256, block_margin=40
    )
    assert whole.loc[0, "count"] == blocks.loc[0, "count"] == len(centres)
    a = tifffile.imread(tmp_path / "whole" / "labels" / "big.tif")
    b = tifffile.imread(tmp_path / "blocks" / "labels" / "big.tif")
    assert np.array_equal(a > 0, b > 0)
    # the same partition of the pixels into nuclei (labels may be numbered differently)
    pairs = np.unique(np.stack([a[a > 0], b[a > 0]]), axis=1)
    assert pairs.shape[1] == len(centres) == np.unique(pairs[0]).size == np.unique(pairs[1]).size


# --------------------------------------------------------------------------- pieces


def test_measure_nuclei_values():
    labels = np.zeros((20, 30), np.int32)
    labels[2:6, 3:13] = 1  # 4 x 10 rectangle
    labels[10:15, 20:25] = 4  # 5 x 5 square
    intensity = np.zeros((20, 30), np.float32)
    intensity[labels == 1] = 0.5
    intensity[labels == 4] = 0.2
    table = measure_nuclei(labels, intensity, pixel_size=2.0).set_index("label")
    assert table.loc[1, "area_px"] == 40 and table.loc[4, "area_px"] == 25
    assert table.loc[1, "area_um2"] == 160.0
    assert (table.loc[1, ["centroid_row", "centroid_col"]] == [3.5, 7.5]).all()
    assert list(table.loc[4, ["bbox_min_row", "bbox_min_col", "bbox_max_row", "bbox_max_col"]]) == [
        10,
        20,
        15,
        25,
    ]
    assert table.loc[1, "mean_intensity"] == pytest.approx(0.5)
    assert table.loc[1, "integrated_intensity"] == pytest.approx(20.0)
    assert table.loc[4, "eccentricity"] == pytest.approx(0.0) and table.loc[4, "solidity"] == 1.0
    assert table.loc[4, "equivalent_diameter_px"] == pytest.approx(np.sqrt(4 * 25 / np.pi))


@pytest.mark.parametrize("band_rows", [7, 1024])
def test_measurements_match_regionprops(monkeypatch, band_rows):
    """The vectorised measurements are regionprops' to float rounding, on ragged shapes that
    span several bands, touch each other and the image edges, far from the origin too."""
    from skimage.measure import regionprops_table
    from skimage.segmentation import expand_labels

    import pipeline.method.features

    monkeypatch.setattr(pipeline.method.features, "BAND_ROWS", band_rows)
    rng = np.random.default_rng(3)
    labels = np.zeros((2000, 90), np.int32)
    points = np.c_[rng.integers(0, 2000, 300), rng.integers(0, 90, 300)]
    labels[points[:, 0], points[:, 1]] = np.arange(1, 301)
    labels = expand_labels(labels, 6)
    labels[rng.random(labels.shape) < 0.05] = 0  # holes and ragged edges
    labels[labels == 5] = 0  # a value not present
    labels[1990:1993, 10] = 301  # a line: eccentricity 1
    labels[1500, 30] = 302  # a single pixel: eccentricity 0, solidity 1
    labels[200:210, 40] = 303  # an L: solidity < 1
    labels[200, 40:50] = 303
    intensity = rng.random(labels.shape).astype(np.float32)
    ours = measure_nuclei(labels, intensity).set_index("label")
    theirs = pd.DataFrame(regionprops_table(labels, intensity, properties=(
        "label", "area", "centroid", "bbox", "equivalent_diameter_area", "perimeter", "eccentricity", "solidity",
        "intensity_mean",
    ))).set_index("label")  # fmt: skip
    assert ours.index.tolist() == theirs.index.tolist() and 5 not in ours.index
    for column, reference in [("area_px", "area"), ("centroid_row", "centroid-0"), ("centroid_col", "centroid-1"),
                              ("bbox_min_row", "bbox-0"), ("bbox_min_col", "bbox-1"), ("bbox_max_row", "bbox-2"),
                              ("bbox_max_col", "bbox-3"), ("equivalent_diameter_px", "equivalent_diameter_area"),
                              ("perimeter_px", "perimeter"), ("eccentricity", "eccentricity"),
                              ("solidity", "solidity"), ("mean_intensity", "intensity_mean")]:
        np.testing.assert_allclose(ours[column], theirs[reference], rtol=1e-6, atol=1e-9, err_msg=column)
    assert ours.loc[301, "eccentricity"] == pytest.approx(1) and ours.loc[302, "eccentricity"] == 0
    assert ours.loc[302, "solidity"] == 1 and ours.loc[303, "solidity"] < 0.5
    empty = measure_nuclei(np.zeros((4, 4), np.int32), np.zeros((4, 4), np.float32), pixel_size=1.0)
    assert empty.empty and list(empty.columns) == measurement_columns(1.0)


def test_draw_outlines_colours_each_nucleus():
    labels = np.zeros((12, 12), np.int32)
    labels[1:5, 1:5] = 1
    labels[6:11, 6:11] = 2
    image = np.zeros((12, 12, 3), np.uint8)
    overlay = draw_outlines(image, labels)
    assert (overlay[1, 1] == PALETTE[0]).all() and (overlay[6, 8] == PALETTE[1]).all()
    assert (overlay[3, 3] == 0).all() and (overlay[8, 8] == 0).all()  # insides untouched
    assert not image.any()  # input unchanged


def test_main_reads_params_section(tmp_path, model_dir, capsys):
    """The ``segment`` section of params.yaml is used; flags override it."""
    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    params = tmp_path / "params.yaml"
    params.write_text(f"segment:\n  model: {model_dir}\n  thumbnail: 16\n")
    from pipeline.batch.segment import add_arguments, main

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args([str(tmp_path / "a.png"), "-o", str(tmp_path / "out"), "--params", str(params)])
    assert main(args) == 0
    html = (tmp_path / "out" / "report.html").read_text()
    (thumb,) = re.findall(r'src="data:image/png;base64,([^"]+)"', html)
    assert max(Image.open(io.BytesIO(base64.b64decode(thumb))).size) == 16

    params.write_text(f"segment:\n  model: {model_dir}\n  tumbnail: 16\n")
    assert main(args) == 2
    assert "tumbnail" in capsys.readouterr().err
    params.write_text(f"segment:\n  model: {model_dir}\n  block_size: 100\n  block_margin: 50\n")
    assert main(args) == 2
    assert "block_size" in capsys.readouterr().err


def test_tta_flag_overrides_params(tmp_path, model_dir, monkeypatch):
    """``--tta`` overrides ``segment.tta`` of params.yaml, which overrides the default 'auto'."""
    import pipeline.batch.segment as segment

    modes, load = [], segment.load_segmenter
    monkeypatch.setattr(segment, "load_segmenter", lambda settings: modes.append(settings.segment.tta) or load(settings))
    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    params = tmp_path / "params.yaml"
    params.write_text(f"segment:\n  model: {model_dir}\n")
    assert run_cli(tmp_path / "a.png", "-o", tmp_path / "out", "--params", params) == 0
    params.write_text(f"segment:\n  model: {model_dir}\n  tta: flips\n")
    assert run_cli(tmp_path / "a.png", "-o", tmp_path / "out", "--params", params) == 0
    assert run_cli(tmp_path / "a.png", "-o", tmp_path / "out", "--params", params, "--tta", "none") == 0
    assert modes == ["auto", "flips", "none"]
    assert counts_of(tmp_path / "out").loc["a", "count"] == 3


# --------------------------------------------------------------------------- hostile inputs (issue 12)


def test_intensities_are_in_the_images_own_units(tmp_path, model_dir):
    """A float image twice as bright measures twice the intensity; uint16 measures counts."""
    grey, _ = disks(value=200, bg=20)
    tifffile.imwrite(tmp_path / "f1.tif", grey.astype(np.float32) * 3.0)  # outside [0, 1]
    tifffile.imwrite(tmp_path / "f2.tif", grey.astype(np.float32) * 6.0)
    tifffile.imwrite(tmp_path / "u16.tif", grey.astype(np.uint16) * 100)
    out = tmp_path / "out"
    counts = segment_images(sorted(tmp_path.glob("*.tif")), out, model_dir).set_index("image")
    assert counts.loc["u16", "pixel_type"] == "uint16" and counts.loc["f1", "pixel_type"] == "float32"
    nuclei = pd.read_csv(out / "nuclei.csv").groupby("image")
    mean = nuclei["mean_intensity"].mean()
    assert mean["f1"] == pytest.approx(600.0, rel=0.05) and mean["f2"] == pytest.approx(2 * mean["f1"])
    assert mean["u16"] == pytest.approx(20000.0, rel=0.05)
    integrated = nuclei["integrated_intensity"].sum()
    assert integrated["f2"] == pytest.approx(2 * integrated["f1"])
    units = pd.read_csv(out / "columns.csv").set_index("column")
    assert list(units.index) == ["image", *measurement_columns()]
    assert "image units" in units.loc["mean_intensity", "unit"]


def test_composites_are_segmented_on_their_nuclear_channel(tmp_path, model_dir, capsys):
    """Composites: nuclei beside a large bright structure of another marker in green. With the
    nuclei in blue (DAPI, Hoechst) the network gets the blue channel by itself; with the nuclei in
    red the channels are averaged and the marker is taken for a nucleus, unless ``--channel red``
    names the nuclear channel, which is then also what is measured."""
    nuclei, true = disks(value=200, bg=20)
    marker = np.full(nuclei.shape, 20, np.uint8)
    marker[60:90, 10:50] = 250  # away from the nuclei
    dark = np.full_like(nuclei, 20)
    Image.fromarray(np.dstack([dark, marker, nuclei])).save(tmp_path / "dapi.png")
    Image.fromarray(np.dstack([nuclei, marker, dark])).save(tmp_path / "red.png")
    Image.fromarray(nuclei).save(tmp_path / "grey.png")  # grey images are unaffected by --channel
    counts = segment_images(sorted(tmp_path.glob("*.png")), tmp_path / "auto", model_dir).set_index("image")
    assert counts.loc["dapi", "count"] == counts.loc["grey", "count"] == 3 and counts.loc["red", "count"] == 4
    assert run_cli(tmp_path / "red.png", tmp_path / "grey.png", "-o", tmp_path / "red",
                   "--model", model_dir, "--channel", "red") == 0
    counts = counts_of(tmp_path / "red")
    assert counts.loc["red", "count"] == counts.loc["grey", "count"] == 3
    assert "red (--channel" in (tmp_path / "red" / "report.html").read_text()
    measured = pd.read_csv(tmp_path / "red" / "nuclei.csv").set_index("image")
    assert measured.loc["red", "mean_intensity"].tolist() == pytest.approx([200.0] * 3, rel=0.05)
    np.testing.assert_array_equal(read_labels(tmp_path / "red" / "labels" / "red.tif"),
                                  read_labels(tmp_path / "red" / "labels" / "grey.tif"))
    with pytest.raises(SystemExit) as exit_:
        run_cli(tmp_path / "grey.png", "-o", tmp_path / "x", "--model", model_dir, "--channel", "cyan")
    assert exit_.value.code == 2 and "invalid choice: 'cyan'" in capsys.readouterr().err
    with pytest.raises(NucleiError, match="--channel must be one of red, green, blue, got 'cyan'"):
        segment_images([tmp_path / "grey.png"], tmp_path / "x", model_dir, channel="cyan")


def test_every_series_of_a_multi_series_tiff(tmp_path, model_dir):
    one, _ = disks(centres=[(30, 30)])
    three, _ = disks()
    with tifffile.TiffWriter(tmp_path / "multi.tif") as tif:
        tif.write(three)
        tif.write(np.stack([one, three]), photometric="minisblack")
    counts = segment_images([tmp_path / "multi.tif"], tmp_path / "out", model_dir).set_index("image")
    assert counts["count"].to_dict() == {"multi": 3, "multi_s1_p0": 1, "multi_s1_p1": 3}
    assert counts.loc["multi_s1_p1", "series"] == 1 and counts.loc["multi_s1_p1", "plane"] == 1


def test_one_bad_file_gives_one_line(tmp_path, model_dir, capsys):
    """An H x W x 2 array saved with tifffile's defaults reads as 256 pages of 96 x 2 px."""
    tifffile.imwrite(tmp_path / "hw2.tif", np.zeros((256, 96, 2), np.uint8))
    assert run_cli(tmp_path / "hw2.tif", "-o", tmp_path / "out", "--model", model_dir) == 1
    err = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(err) == 1 and "256 of its 256 planes are too small" in err[0]
    assert len(counts_of(tmp_path / "out")) == 1


def test_invalid_model_thresholds_are_a_usage_error_reported_once(tmp_path, model_dir, capsys):
    import shutil

    bad = tmp_path / "bad-model"
    shutil.copytree(model_dir, bad)
    config = bad / "config.yaml"
    config.write_text(config.read_text().replace("marker_threshold: 0.5", "marker_threshold: 7.5"))
    image, _ = disks()
    for name in ("a.png", "b.png"):
        Image.fromarray(image).save(tmp_path / name)
    assert run_cli(tmp_path / "a.png", tmp_path / "b.png", "-o", tmp_path / "out", "--model", bad) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "marker_threshold" in err[0] and "config.yaml" in err[0]
    assert not (tmp_path / "out" / "labels").exists()


@pytest.mark.parametrize("how", ["KeyboardInterrupt", "SIGTERM"])
def test_interrupted_batch_keeps_tables_of_the_images_done(tmp_path, model_dir, monkeypatch, capsys, how):
    import os
    import signal

    from pipeline.model.segmenter import Segmenter

    image, _ = disks()
    for name in ("a", "b", "c"):
        Image.fromarray(image).save(tmp_path / f"{name}.png")
    out = tmp_path / "out"
    out.mkdir()
    pd.DataFrame({"image": ["old"], "source": ["old.png"], "count": [9]}).to_csv(out / "counts.csv")
    real = Segmenter.segment

    def segment(self, image, *args, **kwargs):
        if len(list((out / "labels").glob("*.tif"))) == 2:  # a and b done: stop during c
            if how == "SIGTERM":
                os.kill(os.getpid(), signal.SIGTERM)
            raise KeyboardInterrupt
        return real(self, image, *args, **kwargs)

    monkeypatch.setattr(Segmenter, "segment", segment)
    assert run_cli(tmp_path, "-o", out, "--model", model_dir) == 130
    assert sorted(p.stem for p in (out / "labels").glob("*.tif")) == ["a", "b"]
    counts = counts_of(out)
    assert list(counts.index) == ["a", "b"] and (counts["count"] == 3).all()
    assert sorted(pd.read_csv(out / "nuclei.csv")["image"].unique()) == ["a", "b"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored


@pytest.mark.parametrize("errno, target", [(28, "counts.csv"), (30, "report.html")])
def test_write_failure_at_the_end_is_one_line(tmp_path, model_dir, monkeypatch, capsys, errno, target):
    import os

    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    real = os.replace

    def replace(src, dst):
        if Path(dst).name == target:
            raise OSError(errno, os.strerror(errno))
        return real(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    assert run_cli(tmp_path / "a.png", "-o", tmp_path / "out", "--model", model_dir) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and target in err[0] and os.strerror(errno) in err[0]
    assert not list((tmp_path / "out").glob(".*tmp*"))


def test_unwritable_output_folder_is_a_usage_error(tmp_path, model_dir, capsys):
    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    (tmp_path / "file").write_text("a file, not a folder")
    assert run_cli(tmp_path / "a.png", "-o", tmp_path / "file" / "out", "--model", model_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "is a file, not a folder" in err[0]


def test_recursive_kaggle_layout_skips_masks(tmp_path, model_dir):
    image, labels = disks()
    for sample in ("s1", "s2"):
        (tmp_path / "kaggle" / sample / "images").mkdir(parents=True)
        (tmp_path / "kaggle" / sample / "masks").mkdir()
        Image.fromarray(image).save(tmp_path / "kaggle" / sample / "images" / f"{sample}.png")
        for k in range(1, 4):
            Image.fromarray(((labels == k) * 255).astype(np.uint8)).save(tmp_path / "kaggle" / sample / "masks" / f"m{k}.png")
    (tmp_path / "kaggle" / "masks").mkdir()  # a plain folder called masks is read
    Image.fromarray(image).save(tmp_path / "kaggle" / "masks" / "plain.png")
    counts = segment_images([tmp_path / "kaggle"], tmp_path / "out", model_dir, recursive=True)
    assert sorted(counts["image"]) == ["plain", "s1", "s2"]


def test_a_napari_layer_is_segmented_and_measured_as_nuclei_segment_does(tmp_path, model_dir):
    """The plugin's ``segment_array`` goes through the batch's path: the same labels and nuclei rows."""
    from pipeline.napari_plugin.layers import segment_array

    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    segment_images([tmp_path / "a.png"], tmp_path / "out", model_dir, "cpu")
    result, table = segment_array(image, model_dir, device="cpu")
    assert np.array_equal(result.labels, read_labels(tmp_path / "out" / "labels" / "a.tif")) and len(table) == 3
    nuclei = pd.read_csv(tmp_path / "out" / "nuclei.csv").drop(columns="image")
    pd.testing.assert_frame_equal(table.reset_index(drop=True), nuclei, check_dtype=False, rtol=1e-9)


@pytest.mark.hostile
def test_frames_of_a_folder_without_images_is_a_usage_error(tmp_path, model_dir, capsys):
    empty = tmp_path / "movie"
    empty.mkdir()
    (empty / "notes.txt").write_text("no frames here")
    assert run_cli(empty, "-o", tmp_path / "out", "--model", model_dir, "--frames") == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and f"{empty}: no image files" in err
    assert not (tmp_path / "out" / "counts.csv").exists()  # nothing processed
