"""One stack of ``nuclei segment``: the tracking parts (``--track``: the tracks table and the label stack agree),
and a z-stack's anisotropy (``--anisotropy``, the file's voxel size, else estimated from its nuclei and
said in one line)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import tifffile

from pipeline.batch.stack_file import anisotropy_note, stack_anisotropy
from pipeline.files.stacks import Stack
from pipeline.method.synthetic import synthetic_nuclei_stack
from pipeline.model.stack_segmenter import StackSegmentation
from tests.conftest import counts_of, disks, run_cli


def _movie(frames: int = 6, shape: tuple[int, int] = (64, 96)) -> np.ndarray:
    """uint8 (T, H, W): two discs walking right 2 px a frame, and a third appearing at frame 2 above
    them (the first in raster order from then on: its label in a frame is not its track id)."""
    out = []
    for t in range(frames):
        centres = [(30, 14 + 2 * t), (50, 40 + 2 * t)] + ([(10, 70)] if t >= 2 else [])
        out.append(disks(shape, centres, 6)[0])
    return np.stack(out)


def test_tracks_table_label_is_the_track_id_of_the_label_stack(tmp_path, model_dir):
    path = tmp_path / "movie.tif"
    tifffile.imwrite(path, _movie(), imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "out"
    assert run_cli(path, "-o", out, "--model", model_dir, "--track") == 0
    labels = tifffile.imread(out / "labels" / "movie.tif")
    tracks = pd.read_csv(out / "tracks" / "movie.csv")
    assert tracks["track_id"].nunique() == 3 and len(tracks) == 16
    # each row's nucleus carries, in the written label stack, the row's label, and that label is its track id
    at_centre = labels[tracks["frame"], tracks["centroid_y"].round().astype(int), tracks["centroid_x"].round().astype(int)]
    assert (at_centre == tracks["label"]).all()
    assert (tracks["label"] == tracks["track_id"]).all()
    xml = (out / "tracks" / "movie.xml").read_text()
    assert 'LABEL="3"' in xml and 'LABEL="1"' in xml  # TrackMate's LABEL: the label in the stack


# --------------------------------------------------------------------------- a z-stack's anisotropy


def _stack(z_spacing=None) -> Stack:
    return Stack("", 0, "ZYX", np.zeros((4, 8, 8), np.uint8), 0.5, z_spacing)


@pytest.mark.parametrize("z_spacing, pixel_size, given, expected", [
    (2.0, 0.5, None, 4.0),   # the file's voxel size
    (2.0, 0.5, 3.0, 3.0),    # --anisotropy first
    (None, 0.5, None, None),  # neither: estimated by segment_stack
    (2.0, None, None, None),  # a z step without a pixel size says nothing
])
def test_stack_anisotropy(z_spacing, pixel_size, given, expected):
    assert stack_anisotropy(_stack(z_spacing), pixel_size, given) == expected


def test_anisotropy_note_says_what_was_used():
    labels = np.zeros((2, 4, 4), np.int32)
    assert anisotropy_note(StackSegmentation(labels, 20.0, 1.0, "ortho", 4.0)) is None  # given
    estimated = anisotropy_note(StackSegmentation(labels, 20.0, 1.0, "ortho", 2.345, anisotropy_estimated=True))
    assert "anisotropy not given" in estimated and "2.35 estimated from the nuclei" in estimated
    assumed = anisotropy_note(StackSegmentation(labels, 20.0, 1.0, "ortho", 1.0, anisotropy_estimated=False))
    assert "1 assumed" in assumed and "\n" not in assumed


def test_a_stack_without_voxel_size_has_its_anisotropy_estimated(tmp_path, model_dir, capsys):
    """No voxel size in the file, no --anisotropy: the nuclei (as deep as wide) give it, one line says
    so (flag and warning), and no µm³ is made from it."""
    image, _ = synthetic_nuclei_stack((16, 96, 96), 10, 9.0, 3.0, touching=False, seed=3)
    path = tmp_path / "plain.tif"
    tifffile.imwrite(path, image, imagej=True, metadata={"axes": "ZYX"})
    out = tmp_path / "out"
    assert run_cli(path, "-o", out, "--model", model_dir) == 0
    row = counts_of(out).loc["plain"]
    assert row["z_method"] == "ortho" and "estimated from the nuclei" in row["flag"]
    assert 3.0 / 1.5 <= row["anisotropy"] <= 3.0 * 1.5
    assert "anisotropy not given" in capsys.readouterr().err
    nuclei = pd.read_csv(out / "nuclei.csv")
    assert len(nuclei) and "volume_um3" not in nuclei


def test_depth_note_flags_nuclei_not_as_deep_as_wide():
    from pipeline.batch.stack_file import depth_note

    zz, yy, xx = np.indices((24, 48, 48))
    ball = ((zz - 12) ** 2 + (yy - 24) ** 2 + (xx - 24) ** 2 <= 8**2).astype(np.int32)  # 17 planes, 17 px
    assert depth_note(ball, 1.0) is None
    assert re.match(r"nuclei 4\.\d times as deep as wide", depth_note(ball, 4.0))  # a z step 4x too large
    assert re.match(r"nuclei 0\.\d times as deep as wide", depth_note(ball, 0.25))
    assert depth_note(np.zeros_like(ball), 4.0) is None


def test_a_wrong_anisotropy_is_flagged(tmp_path, model_dir):
    image, _ = synthetic_nuclei_stack((32, 96, 96), 8, 8.0, 1.0, touching=False, seed=4)
    path = tmp_path / "iso.tif"
    tifffile.imwrite(path, image, imagej=True, metadata={"axes": "ZYX"})
    for anisotropy, flagged in (("1", False), ("5", True)):
        out = tmp_path / anisotropy
        assert run_cli(path, "-o", out, "--model", model_dir, "--anisotropy", anisotropy) == 0
        flag = counts_of(out).loc["iso", "flag"]
        assert ("as deep as wide" in str(flag)) == flagged


def test_a_division_in_the_tracks_table_and_trackmate_file(tmp_path, model_dir):
    """A disc dividing after frame 3 into two discs of half its area, 10 px either side: the tracks
    table gives both daughters the mother's track as parent, and the TrackMate file one split."""
    shape, frames = (64, 96), 8
    movie = []
    for t in range(frames):
        if t < 4:
            movie.append(disks(shape, [(32, 40), (14, 80)], 8)[0])
        else:
            image = disks(shape, [(32, 30 - (t - 4)), (32, 50 + (t - 4))], 6)[0]
            movie.append(np.maximum(image, disks(shape, [(14, 80)], 8)[0]))
    path = tmp_path / "division.tif"
    tifffile.imwrite(path, np.stack(movie), imagej=True, metadata={"axes": "TYX"})
    out = tmp_path / "out"
    assert run_cli(path, "-o", out, "--model", model_dir, "--track") == 0
    tracks = pd.read_csv(out / "tracks" / "division.csv")
    first = tracks.drop_duplicates("track_id").set_index("track_id")
    daughters = first[first["parent_track_id"] > 0]
    assert len(daughters) == 2 and daughters["parent_track_id"].nunique() == 1
    mother = int(daughters["parent_track_id"].iloc[0])
    assert tracks.loc[tracks.track_id == mother, "frame"].max() == 3 and (daughters["frame"] == 4).all()
    assert tracks["track_id"].nunique() == 4  # the mother, her daughters and the disc standing still
    xml = (out / "tracks" / "division.xml").read_text()
    assert xml.count('NUMBER_SPLITS="1"') == 1
