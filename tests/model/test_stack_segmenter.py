"""Z-stacks and time-lapses: reading a stack with its axes (OME, ImageJ, --axes), folders of frames,
label stacks written as ImageJ hyperstacks, and ``nuclei segment`` on stacks (3D labels, tracks,
one row per frame, bad input)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import tifffile

from pipeline.batch.settings import StackOptions
from pipeline.errors import NucleiError
from pipeline.files.io import write_png
from pipeline.files.stacks import check_axes, frame_files, read_frames, read_stacks, write_label_stack
from tests.conftest import counts_of, run_cli


def _imagej(path, array, axes, spacing=None, pixel=None, **meta):
    metadata = {"axes": axes, **meta}
    if spacing:
        metadata.update(spacing=spacing, unit="micron")
    tifffile.imwrite(path, array, imagej=True, metadata=metadata, resolution=(1 / pixel, 1 / pixel) if pixel else None)
    return path


def test_stack_axes_from_metadata_and_from_the_user(tmp_path):
    z = _imagej(tmp_path / "z.tif", np.zeros((5, 16, 20), np.uint16), "ZYX", spacing=2.0, pixel=0.5)
    (stack,) = read_stacks(z)
    assert (stack.axes, stack.array.shape, stack.z_spacing, stack.pixel_size) == ("ZYX", (5, 16, 20), 2.0, 0.5)
    ome = tmp_path / "t.ome.tif"
    tifffile.imwrite(ome, np.zeros((3, 4, 16, 16), np.uint8), ome=True,
                     metadata={"axes": "TZYX", "PhysicalSizeZ": 3.0, "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25,
                               "TimeIncrement": 2, "TimeIncrementUnit": "min"})
    (stack,) = read_stacks(ome)
    assert (stack.axes, stack.array.shape, stack.z_spacing, stack.frame_interval) == ("TZYX", (3, 4, 16, 16), 3.0, 120.0)
    plain = tmp_path / "plain.tif"
    tifffile.imwrite(plain, np.arange(3 * 8 * 8, dtype=np.uint16).reshape(3, 8, 8), photometric="minisblack")
    assert read_stacks(plain) is None  # no metadata, no --axes: plane by plane as before
    (stack,) = read_stacks(plain, "TYX")
    assert stack.axes == "TYX" and stack.array[2, 0, 0] == 128
    assert read_stacks(tmp_path / "x.png") is None


def test_channels_of_a_stack_need_the_nuclear_channel(tmp_path):
    path = _imagej(tmp_path / "c.tif", np.stack([np.zeros((4, 8, 8), np.uint8), np.ones((4, 8, 8), np.uint8)], 1),
                   "ZCYX", Labels=["DAPI", "GFP"] * 4)
    with pytest.raises(NucleiError, match=r"c.tif: a stack of 2 channels: give --nuclear-channel"):
        read_stacks(path)
    (stack,) = read_stacks(path, channel="GFP")
    assert stack.axes == "ZYX" and stack.array.shape == (4, 8, 8) and stack.array.max() == 1 and stack.channel == "GFP"


@pytest.mark.parametrize("axes, shape, message", [
    ("TZYX", (5, 8, 8), r"--axes TZYX names 4 axes but the image has 3"),
    ("ZYX", (8, 8), r"a single plane \(8×8\), not a stack"),
    ("QYX", (5, 8, 8), r"--axes must name each axis"),
    ("ZZX", (5, 8, 8), r"--axes must name each axis"),
    ("YXZ", (5, 8, 8), r"--axes must name each axis"),
])
def test_axes_that_do_not_fit(tmp_path, axes, shape, message):
    path = tmp_path / "s.tif"
    tifffile.imwrite(path, np.zeros(shape, np.uint8), photometric="minisblack")
    with pytest.raises(NucleiError, match=message):
        read_stacks(path, check_axes(axes))


def test_metadata_that_contradicts_the_shape(tmp_path):
    path = tmp_path / "bad.tif"  # ImageJ says 10 slices, the file holds 5 pages
    tifffile.imwrite(path, np.zeros((5, 8, 8), np.uint8), description="ImageJ=1.11a\nimages=10\nslices=10\n",
                     metadata=None)
    with pytest.raises(NucleiError, match=r"bad.tif: its ImageJ metadata \(images=10, slices=10\) does not fit its 5 "
                                          r"planes; give --axes"):
        read_stacks(path)
    assert read_stacks(path, "ZYX")[0].array.shape == (5, 8, 8)  # the user says what it is


def test_single_plane_stack(tmp_path):
    path = _imagej(tmp_path / "one.tif", np.zeros((1, 2, 8, 8), np.uint8), "TCYX")
    with pytest.raises(NucleiError, match="one.tif"):
        read_stacks(path, "TZYX")


def test_frames_in_name_order_and_of_one_size(tmp_path):
    for t in (10, 2, 1):
        write_png(tmp_path / f"f{t}.png", np.full((8, 8), t, np.uint8))
    paths = frame_files(tmp_path)
    assert [p.name for p in paths] == ["f1.png", "f2.png", "f10.png"]
    stack = read_frames(paths)
    assert stack.axes == "TYX" and stack.array[:, 0, 0].tolist() == [1, 2, 10]
    write_png(tmp_path / "f11.png", np.zeros((8, 9), np.uint8))
    with pytest.raises(NucleiError, match=r"f11.png: frame of 8×9, the movie's first frame \(f1.png\) is 8×8"):
        read_frames(frame_files(tmp_path))


def test_label_stack_is_an_imagej_hyperstack(tmp_path):
    labels = np.zeros((3, 4, 8, 8), np.int32)
    labels[1, 2, 3:5, 3:5] = 7
    write_label_stack(tmp_path / "l.tif", labels, "TZYX", pixel_size=0.5, z_spacing=2.0, frame_interval=30.0)
    with tifffile.TiffFile(tmp_path / "l.tif") as tif:
        assert tif.series[0].axes == "TZYX" and tif.series[0].dtype == np.uint16
        meta = tif.imagej_metadata
        assert (meta["frames"], meta["slices"], meta["spacing"], meta["finterval"]) == (3, 4, 2.0, 30.0)
        np.testing.assert_array_equal(tif.asarray(), labels)
    with pytest.raises(NucleiError, match="out of the uint16 range"):
        write_label_stack(tmp_path / "big.tif", np.full((2, 4, 4), 70000), "ZYX")


@pytest.mark.parametrize("options, message", [
    (StackOptions(anisotropy=0.0), "--anisotropy must be a positive number"),
    (StackOptions(anisotropy=float("nan")), "--anisotropy must be a positive number"),
    (StackOptions(z_method="cubes"), "--z-method must be one of ortho, stitch"),
    (StackOptions(frames=True, axes="TYX"), "--frames and --axes: give one"),
])
def test_stack_options_refused(options, message):
    with pytest.raises(NucleiError, match=message):
        options.check()


def test_the_default_z_method_is_ortho():
    """``ortho`` holds on real stacks, ``stitch`` does not (docs/decisions.md, benchmarks/validate_stacks.py)."""
    from pipeline.model.stack_segmenter import segment_stack

    assert StackOptions().method == "ortho" == StackOptions().check().method
    assert StackOptions(z_method="stitch").method == "stitch"
    assert segment_stack.__defaults__[0] == "ortho"


# --------------------------------------------------------------------------- segment_stack on hard stacks


def _glowing(shape=(30, 48, 96), centres=((15, 24, 24), (15, 24, 72)), radius=8):
    """A uint8 stack of two balls (200 on 20) whose out-of-focus light fills their discs in every
    plane above and below them (at 80: a third of the way up), and the true labels."""
    zz, yy, xx = np.indices(shape)
    image, truth = np.full(shape, 20, np.uint8), np.zeros(shape, np.int32)
    for k, (z, y, x) in enumerate(centres, start=1):
        disc = (yy - y) ** 2 + (xx - x) ** 2 <= radius**2
        ball = disc & ((zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= radius**2)
        image[disc], image[ball], truth[ball] = 80, 200, k
    return image, truth


def _sees_dim_light():
    """The grey-level stand-in network calling nucleus down to a quarter of the brightest level: as a
    2D network takes a nucleus's out-of-focus light above and below it for a nucleus."""
    from tests.conftest import grey_segmenter

    segmenter = grey_segmenter()
    segmenter.thresholds = {**segmenter.thresholds, "mask_threshold": 0.25, "marker_threshold": 0.25}
    return segmenter


@pytest.mark.parametrize("method", ["ortho", "stitch"])
def test_nuclei_end_where_their_signal_ends(method):
    """Nuclei seen by the network through every plane are ended at half their peak signal: their
    depth is the true one, not the stack's."""
    from pipeline.method.volumes import measure_volumes, volume_metrics
    from pipeline.model.stack_segmenter import segment_stack

    image, truth = _glowing()
    result = segment_stack(_sees_dim_light(), image, method, 1.0, diameter=16.0)
    found = measure_volumes(result.labels)
    # the balls are 17 planes deep, not 30; ``ortho`` takes their caps' planes with the light around
    # them (the disc of the glow), whose mean falls under half the peak a few planes early
    assert len(found) == 2 and found["z_extent"].between(12, 19).all()
    assert volume_metrics(truth, result.labels)["ap50"] == 1.0


@pytest.mark.parametrize("method", ["ortho", "stitch"])
@pytest.mark.parametrize("anisotropy", [1.0, 2.0])
def test_segment_stack_estimates_the_anisotropy(method, anisotropy):
    """Without a voxel size, the anisotropy is estimated from nuclei taken as deep as wide."""
    from pipeline.method.synthetic import synthetic_nuclei_stack
    from pipeline.model.stack_segmenter import segment_stack
    from tests.conftest import grey_segmenter

    image, _ = synthetic_nuclei_stack((int(48 / anisotropy), 96, 96), 12, 9.0, anisotropy, touching=False, seed=2)
    result = segment_stack(grey_segmenter(), image, method, None, diameter=18.0)
    assert result.anisotropy_estimated is True
    assert anisotropy / 1.4 <= result.anisotropy <= anisotropy * 1.4
    given = segment_stack(grey_segmenter(), image, method, anisotropy, diameter=18.0)
    assert given.anisotropy_estimated is None and given.anisotropy == anisotropy


@pytest.mark.hostile
def test_ortho_refuses_a_work_grid_too_large_before_allocating_it(tmp_path, model_dir, monkeypatch):
    """Issue 89: a huge --anisotropy is one line naming the file and the size, before any network runs."""
    import pipeline.model.stack_segmenter as stack_segmenter

    calls = []
    monkeypatch.setattr(stack_segmenter, "_xy", lambda *a, **k: calls.append(a) or (_ for _ in ()).throw(AssertionError))
    image = _imagej(tmp_path / "deep.tif", _spheres()[0], "ZYX")
    out = tmp_path / "out"
    assert run_cli(image, "-o", out, "--model", model_dir, "--z-method", "ortho", "--anisotropy", "1e9") == 1
    error = counts_of(out).loc["deep", "error"]
    assert error.startswith(f"{image}: --z-method ortho: a work grid of 10000000000 x 64 x 80 voxels")
    assert "TB" in error and "\n" not in error and not calls


# --------------------------------------------------------------------------- nuclei segment on stacks


def _spheres(shape=(10, 64, 80), centres=((5, 20, 20), (5, 40, 56), (4, 20, 58)), radius=7):
    """A uint8 z-stack of bright balls (radius in px, isotropic voxels) and its true labels."""
    zz, yy, xx = np.indices(shape)
    image, labels = np.full(shape, 20, np.uint8), np.zeros(shape, np.int32)
    for k, (z, y, x) in enumerate(centres, start=1):
        ball = (zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= radius ** 2
        image[ball], labels[ball] = 200, k
    return image, labels


def _movie(frames=6, shape=(64, 80), step=2):
    """A uint8 time-lapse of three discs moving ``step`` px right per frame."""
    from tests.conftest import disks

    return np.stack([disks(shape, ((20, 14 + step * t), (44, 30 + step * t), (20, 50 + step * t)), 7)[0]
                     for t in range(frames)])


def test_segment_a_z_stack_in_3d(tmp_path, model_dir):
    image, truth = _spheres()
    stack = _imagej(tmp_path / "cells.tif", image, "ZYX", spacing=1.0, pixel=1.0)
    for method in ("stitch", "ortho"):
        out = tmp_path / method
        assert run_cli(stack, "-o", out, "--model", model_dir, "--z-method", method) == 0
        row = counts_of(out).loc["cells"]
        assert (row["axes"], row["count"], row["planes"], row["z_method"]) == ("ZYX", 3, 10, method)
        with tifffile.TiffFile(out / "labels" / "cells.tif") as tif:
            assert tif.series[0].axes == "ZYX"
            labels = tif.asarray()
        assert labels.shape == truth.shape and len(np.unique(labels)) == 4  # three 3D nuclei
        nuclei = pd.read_csv(out / "nuclei.csv")
        assert len(nuclei) == 3 and (nuclei["z_extent"] >= 9).all()  # each ball spans its planes as one nucleus
        true_volume = (truth == 1).sum()
        assert nuclei["volume_voxels"].between(0.7 * true_volume, 1.3 * true_volume).all()
        assert np.isclose(nuclei["volume_um3"], nuclei["volume_voxels"]).all()  # 1 µm voxels
        columns = pd.read_csv(out / "columns.csv", keep_default_na=False).set_index("column")
        assert columns.loc["volume_um3", "unit"] == "µm³" and columns.loc["z_extent", "meaning"]


def test_segment_and_track_a_time_lapse(tmp_path, model_dir):
    movie = _imagej(tmp_path / "movie.tif", _movie(), "TYX", finterval=30.0)
    out = tmp_path / "out"
    assert run_cli(movie, "-o", out, "--model", model_dir, "--track") == 0
    counts = counts_of(out).loc["movie"]
    assert counts["frame"].tolist() == list(range(6)) and (counts["count"] == 3).all()  # one row per frame
    with tifffile.TiffFile(out / "labels" / "movie.tif") as tif:
        assert tif.series[0].axes == "TYX"
        labels = tif.asarray()
    # each nucleus keeps its track id as its label in every frame
    centre_ids = [labels[t, 20, 14 + 2 * t] for t in range(6)]
    assert len(set(centre_ids)) == 1 and centre_ids[0] > 0
    tracks = pd.read_csv(out / "tracks" / "movie.csv")
    assert tracks["track_id"].nunique() == 3 and len(tracks) == 18 and (tracks["parent_track_id"] == 0).all()
    assert (out / "tracks" / "movie.xml").read_text().count("<Track ") == 3
    nuclei = pd.read_csv(out / "nuclei.csv")
    assert set(nuclei["frame"]) == set(range(6)) and (nuclei["track_id"] == nuclei["label"]).all()
    assert nuclei["time_s"].max() == 150.0


def test_track_3d_nuclei_of_a_time_lapse_of_z_stacks(tmp_path, model_dir):
    image = _spheres()[0]
    movie = np.stack([np.roll(image, 2 * t, axis=2) for t in range(3)])  # balls moving 2 px right per frame
    path = _imagej(tmp_path / "tz.tif", movie, "TZYX", spacing=1.0, pixel=1.0)
    out = tmp_path / "out"
    assert run_cli(path, "-o", out, "--model", model_dir, "--z-method", "stitch", "--track") == 0
    counts = counts_of(out).loc["tz"]
    assert counts["frame"].tolist() == [0, 1, 2] and (counts["count"] == 3).all()
    tracks = pd.read_csv(out / "tracks" / "tz.csv")
    assert tracks["track_id"].nunique() == 3 and "centroid_z" in tracks
    labels = tifffile.imread(out / "labels" / "tz.tif")
    assert labels.shape == movie.shape and len({labels[t, 5, 20, 20 + 2 * t] for t in range(3)}) == 1
    xml = (out / "tracks" / "tz.xml").read_text()
    assert 'nslices="10"' in xml and 'POSITION_Z="4.7' in xml and 'POSITION_Z="0.0"' not in xml


def test_frames_folders_and_bad_stacks_fail_alone(tmp_path, model_dir, capsys):
    good, uneven = tmp_path / "good", tmp_path / "uneven"
    for t, frame in enumerate(_movie(4)):
        write_png(good / f"t{t}.png", frame)
        write_png(uneven / f"t{t}.png", frame if t < 3 else frame[:, :70])
    out = tmp_path / "frames"
    assert run_cli(good, uneven, "-o", out, "--model", model_dir, "--frames", "--track") == 1
    counts = counts_of(out)
    assert (counts.loc["good", "status"] == "ok").all() and len(counts.loc["good"]) == 4
    assert "t3.png: frame of 64×70" in counts.loc["uneven", "error"]
    # a TZYX stack needs both --z-method and --track; metadata that contradicts the shape
    (tmp_path / "st").mkdir()
    _imagej(tmp_path / "st" / "tz.tif", np.stack([_spheres()[0]] * 2), "TZYX")
    tifffile.imwrite(tmp_path / "st" / "bad.tif", np.zeros((5, 32, 32), np.uint8),
                     description="ImageJ=1.11a\nimages=10\nslices=10\n", metadata=None)
    _imagej(tmp_path / "st" / "z.tif", _spheres()[0], "ZYX")
    out = tmp_path / "st_out"
    assert run_cli(tmp_path / "st", "-o", out, "--model", model_dir, "--track") == 1
    counts = counts_of(out)
    assert "tz.tif: a time-lapse of z-stacks (TZYX): give both --z-method and --track" in counts.loc["tz", "error"]
    assert "bad.tif: its ImageJ metadata (images=10, slices=10) does not fit its 5 planes" in counts.loc["bad", "error"]
    assert counts.loc["z", "status"] == "ok" and counts.loc["z", "flag"].startswith("--track: no time axis; ")
    assert "anisotropy not given" in counts.loc["z", "flag"]  # no voxel size in z.tif: said in one line
    err = capsys.readouterr().err
    assert "Traceback" not in err and "tz.tif" in err


@pytest.mark.parametrize("argv, message", [
    (("--anisotropy", "0"), "--anisotropy must be a positive number"),
    (("--axes", "ZQX"), "--axes must name each axis"),
    (("--frames",), "--frames takes folders"),
])
def test_stack_usage_errors(tmp_path, model_dir, capsys, argv, message):
    image = _imagej(tmp_path / "z.tif", _spheres()[0], "ZYX")
    assert run_cli(image, "-o", tmp_path / "out", "--model", model_dir, *argv) == 2
    assert message in capsys.readouterr().err


IMAGEJ = Path("/usr/share/java/ij.jar")


@pytest.mark.skipif(not (IMAGEJ.exists() and shutil.which("xvfb-run") and shutil.which("java")),
                    reason="ImageJ not installed (apt-get install imagej xvfb)")
def test_imagej_opens_the_label_stacks_as_hyperstacks(tmp_path, model_dir):
    """Fiji / ImageJ 1.x, headless, reads our label stacks with their axes, voxel size and frame interval."""
    image = _spheres()[0]
    movie = np.stack([np.roll(image, 2 * t, axis=2) for t in range(3)])
    path = _imagej(tmp_path / "tz.tif", movie, "TZYX", spacing=2.0, pixel=0.5, finterval=30.0)
    out = tmp_path / "out"
    assert run_cli(path, "-o", out, "--model", model_dir, "--z-method", "stitch", "--track") == 0
    macro = tmp_path / "dims.ijm"
    macro.write_text('open(getArgument()); getDimensions(w, h, c, z, t); getVoxelSize(pw, ph, pd, unit);\n'
                     'print("dims " + w + " " + h + " " + z + " " + t + " " + pw + " " + pd + " " + unit + " "'
                     ' + Stack.getFrameInterval() + " " + bitDepth());\n')
    run = subprocess.run(["xvfb-run", "-a", "java", "-jar", str(IMAGEJ), "-batch", str(macro),
                          str(out / "labels" / "tz.tif")], capture_output=True, text=True, timeout=120)
    line = next(line for line in run.stdout.splitlines() if line.startswith("dims "))
    assert line.split()[1:] == ["80", "64", "10", "3", "0.5", "2", "microns", "30", "16"]


@pytest.mark.parametrize("method", ["stitch", "ortho"])
def test_a_stained_stack_is_segmented_by_the_models_stained_network(method):
    """A model with a stained network (a route by image type) segments a stained z-stack with it, plane
    by plane or slice by slice: the dark discs are found, and the other network sees no pixel."""
    from pipeline.model.segmenter import Segmenter
    from pipeline.model.stack_segmenter import segment_stack

    from ..conftest import STAINED_ROUTE, InvertedPredictor, grey_segmenter, stain

    plane = np.full((96, 96), 235, np.uint8)
    yy, xx = np.mgrid[:96, :96]
    centres = [(24, 24), (24, 72), (72, 24), (72, 72)]
    for cy, cx in centres:
        plane[(yy - cy) ** 2 + (xx - cx) ** 2 <= 10**2] = 60
    stack = np.stack([stain(np.dstack([plane] * 3))] * 4)
    fluorescence = grey_segmenter()
    inner = Segmenter(InvertedPredictor(fluorescence.predictor.config))
    fluorescence.predictor.config = fluorescence.predictor.config | STAINED_ROUTE
    routed = Segmenter(fluorescence.predictor, networks={"stained": inner})
    result = segment_stack(routed, stack, method=method, diameter=20.0)
    assert result.image_type == "histology" and result.labels.max() == len(centres)
    assert not fluorescence.predictor.calls and inner.predictor.calls


@pytest.mark.parametrize("method", ["stitch", "ortho"])
def test_a_dense_stack_is_segmented_by_the_models_dense_network_and_a_sparse_one_is_not(method):
    """A model with a dense network (a route by nucleus fraction) runs it on a stack whose nuclei cover
    more than its fraction: plane by plane (``stitch``, as 2D images) or once for the whole stack
    (``ortho``, decided on the XY planes); a sparse stack never reaches it."""
    from pipeline.model.stack_segmenter import segment_stack

    from ..model.test_segmenter import dense_pair, packed_discs

    packed, true = packed_discs(n=4)
    sparse = np.where(true % 4 == 1, packed[..., 0], 20).astype(np.uint8)  # a quarter of the discs
    for image, dense in ((sparse, False), (packed[..., 0], True)):
        seg, inner, loads = dense_pair()
        result = segment_stack(seg, np.stack([image] * 4), method=method, diameter=20.0)
        assert loads.calls == int(dense) and bool(inner.predictor.calls) == dense
        found = result.labels.max()
        # the dense stand-in sees only the left half of each plane
        assert found < true.max() if dense else found == np.count_nonzero(np.unique(true) % 4 == 1)


# --------------------------------------------------------------------------- channels of stacks


def _marked(image: np.ndarray, labels: np.ndarray, positive: set[int]) -> np.ndarray:
    """A marker channel for ``image``: bright (180) in the nuclei of ``positive``, dim (30) in the
    others, 10 outside."""
    marker = np.full(image.shape, 10, np.uint8)
    marker[labels > 0] = 30
    marker[np.isin(labels, list(positive))] = 180
    return marker


def test_a_two_channel_movie_measures_each_frame_as_a_plane(tmp_path, model_dir):
    """A TCYX time-lapse with --nuclear-channel: every frame's channels measured as a plane's, the
    positive nuclei (two of three, known) called in every frame, the cells a label stack."""
    from tests.conftest import disks

    centres = [((20, 14 + 2 * t), (44, 30 + 2 * t), (20, 50 + 2 * t)) for t in range(4)]
    frames = [disks((64, 80), c, 7) for c in centres]
    dapi = np.stack([image for image, _ in frames])
    marker = np.stack([_marked(image, labels, {1, 3}) for image, labels in frames])
    path = _imagej(tmp_path / "movie.tif", np.stack([dapi, marker], 1), "TCYX", Labels=["DAPI", "Ki67"] * 4)
    out = tmp_path / "out"
    assert run_cli(path, "-o", out, "--model", model_dir, "--nuclear-channel", "DAPI", "--positive", "Ki67=100",
                   "--cell-expansion", "3px", "--spots", "Ki67") == 0
    counts = counts_of(out).loc["movie"]
    assert counts["frame"].tolist() == [0, 1, 2, 3] and (counts["count"] == 3).all()
    assert (counts["n_positive_Ki67"] == 2).all() and (counts["threshold_Ki67"] == 100).all()
    assert (counts["cells_file"] == "cells/movie.tif").all() and counts["flag"].isna().all()
    nuclei = pd.read_csv(out / "nuclei.csv")
    assert len(nuclei) == 12 and set(nuclei["frame"]) == {0, 1, 2, 3}
    for _, row in nuclei.iterrows():  # the nuclei at the 1st and 3rd centres are the positive ones
        true = frames[row["frame"]][1][int(round(row["centroid_row"])), int(round(row["centroid_col"]))]
        assert bool(row["positive_Ki67"]) == (true in (1, 3))
        assert row["mean_Ki67"] == pytest.approx(180 if true in (1, 3) else 30, abs=10)
    with tifffile.TiffFile(out / "cells" / "movie.tif") as tif:
        assert tif.series[0].axes == "TYX" and tif.series[0].shape == (4, 64, 80)
    spots = pd.read_csv(out / "spots" / "movie.csv")
    assert list(spots.columns[:2]) == ["frame", "channel"]


def test_a_two_channel_z_stack_measures_its_3d_nuclei_channels(tmp_path, model_dir):
    """A ZCYX z-stack with --nuclear-channel: each 3D nucleus's channels measured over its voxels (as
    :func:`pipeline.method.features.channel_statistics` of the 3D labels), the positive ones (known)
    called in 3D; --cell-expansion is flagged as not applied (cells are 2D)."""
    from pipeline.batch.stack_file import NOT_IN_3D
    from pipeline.method.features import channel_statistics

    image, truth = _spheres()
    marker = _marked(image, truth, {2})
    path = _imagej(tmp_path / "cells.tif", np.stack([image, marker], 1), "ZCYX", spacing=1.0, pixel=1.0,
                   Labels=["DAPI", "Ki67"] * 10)
    out = tmp_path / "out"
    assert run_cli(path, "-o", out, "--model", model_dir, "--z-method", "stitch", "--nuclear-channel", "DAPI",
                   "--positive", "Ki67=100", "--cell-expansion", "3px") == 0
    row = counts_of(out).loc["cells"]
    assert (row["count"], row["n_positive_Ki67"], row["flag"]) == (3, 1, NOT_IN_3D)
    assert not (out / "cells").exists()
    labels = tifffile.imread(out / "labels" / "cells.tif")
    nuclei = pd.read_csv(out / "nuclei.csv").set_index("label")
    whole = channel_statistics(labels, np.stack([image, marker]), ["DAPI", "Ki67"]).set_index(nuclei.index)
    for column in ("mean_DAPI", "median_Ki67", "integrated_Ki67"):
        np.testing.assert_allclose(nuclei[column], whole[column])
    positive = nuclei.index[nuclei["positive_Ki67"].astype(bool)]
    assert list(positive) == [labels[5, 40, 56]]  # the second ball, and only it
    assert (nuclei["volume_voxels"] > 1000).all()  # the 3D measurements kept beside the channels'
