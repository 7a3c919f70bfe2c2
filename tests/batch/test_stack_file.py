"""One stack of ``nuclei segment``: the tracking parts (``--track``: the tracks table and the label stack agree)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import tifffile

from tests.conftest import disks, run_cli


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
