"""Tracking nuclei through time-lapses (issue 61): track ids, divisions, gaps, and the TrackMate XML export."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import numpy as np
import pandas as pd
import pytest
from skimage.draw import disk

from pipeline.errors import NucleiError
from pipeline.files.trackmate import write_trackmate_xml
from pipeline.method.tracking import TRACK_COLUMNS, frame_objects, track_labels

T, H, W = 8, 96, 128
DIVISION = 4  # first frame of the daughters
GAP = 3  # frame nucleus C is missing from


def scene() -> dict[str, dict[int, tuple[float, float, float]]]:
    """{nucleus: {frame: (row, col, radius)}} of the synthetic movie.

    A walks right 2 px a frame; M divides into D1 and D2 (half its area, 6 px either side) at
    DIVISION; C stands still but is missing at GAP; L walks out of the right edge (gone from frame 5).
    """
    nuclei = {
        "A": {t: (20.0, 15.0 + 2 * t, 7.0) for t in range(T)},
        "M": {t: (60.0, 40.0 + t, 8.0) for t in range(DIVISION)},
        "D1": {t: (60.0 - 6 - (t - DIVISION), 40.0 + DIVISION, 8.0 / np.sqrt(2)) for t in range(DIVISION, T)},
        "D2": {t: (60.0 + 6 + (t - DIVISION), 40.0 + DIVISION, 8.0 / np.sqrt(2)) for t in range(DIVISION, T)},
        "C": {t: (25.0, 70.0, 7.0) for t in range(T) if t != GAP},
        "L": {t: (70.0, 100.0 + 8 * t, 7.0) for t in range(T) if 100 + 8 * t < W + 2},
    }
    return nuclei


def draw(nuclei: dict, seed: int = 0, frames: int = T, shape: tuple[int, int] = (H, W)) -> tuple[np.ndarray, dict]:
    """(T, H, W) uint16 labels, each frame labelled on its own with random values, and {(frame, label): name}."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((frames, *shape), np.uint16)
    truth = {}
    for t in range(frames):
        present = [n for n in nuclei if t in nuclei[n]]
        values = rng.choice(np.arange(1, 60000), size=len(present), replace=False)
        for name, value in zip(present, values, strict=True):
            r, c, radius = nuclei[name][t]
            rr, cc = disk((r, c), radius, shape=shape)
            if rr.size:
                labels[t][rr, cc] = value
                truth[(t, int(value))] = name
    return labels, truth


def names_of(tracks: pd.DataFrame, truth: dict) -> dict[str, set[int]]:
    """{nucleus name: the track ids its rows carry}."""
    out: dict[str, set[int]] = {}
    for t, label, k in tracks[["frame", "label", "track_id"]].to_numpy():
        out.setdefault(truth[(int(t), int(label))], set()).add(int(k))
    return out


@pytest.fixture(scope="module")
def tracked():
    labels, truth = draw(scene())
    stack, tracks = track_labels(labels)
    return labels, truth, stack, tracks


def test_tracks_follow_each_nucleus(tracked):
    labels, truth, stack, tracks = tracked
    assert list(tracks.columns) == TRACK_COLUMNS
    assert len(tracks) == len(truth)  # one row per nucleus per frame
    ids = names_of(tracks, truth)
    # one track each for A, C (across its gap), L, M, D1, D2; all different
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len({next(iter(v)) for v in ids.values()}) == 6
    # ids numbered by first appearance: frame 0 holds four tracks with ids 1..4
    assert set(tracks.loc[tracks.frame == 0, "track_id"]) == {1, 2, 3, 4}
    # C's track skips the frame it is missing from
    c = tracks[tracks.track_id == next(iter(ids["C"]))]
    assert GAP not in set(c.frame) and len(c) == T - 1
    # L leaves the field: its track ends at its last frame in view
    leaving = tracks[tracks.track_id == next(iter(ids["L"]))]
    assert leaving.frame.max() == max(scene()["L"])


def test_division_gives_two_daughter_tracks(tracked):
    labels, truth, stack, tracks = tracked
    ids = {k: next(iter(v)) for k, v in names_of(tracks, truth).items()}
    parent = tracks.drop_duplicates("track_id").set_index("track_id")["parent_track_id"]
    assert parent[ids["D1"]] == parent[ids["D2"]] == ids["M"]
    assert (parent.drop([ids["D1"], ids["D2"]]) == 0).all()
    assert tracks[tracks.track_id == ids["M"]].frame.max() == DIVISION - 1
    assert tracks[tracks.track_id == ids["D1"]].frame.min() == DIVISION


def test_relabelled_stack_matches_the_table(tracked):
    labels, truth, stack, tracks = tracked
    assert stack.dtype == np.int32 and stack.shape == labels.shape
    assert ((stack > 0) == (labels > 0)).all()
    for t, label, k, cy, cx, area in tracks[["frame", "label", "track_id", "centroid_y", "centroid_x", "area"]].to_numpy():
        mask = labels[int(t)] == label
        assert (stack[int(t)][mask] == k).all()
        assert mask.sum() == area
        rr, cc = np.nonzero(mask)
        assert cy == pytest.approx(rr.mean()) and cx == pytest.approx(cc.mean())


def test_without_divisions_or_gaps():
    labels, truth = draw(scene())
    _, tracks = track_labels(labels, divisions=False, gap_frames=0)
    ids = names_of(tracks, truth)
    assert (tracks.parent_track_id == 0).all()
    assert len(ids["C"]) == 2  # no gap closing: C is two tracks
    assert len({next(iter(ids[n])) for n in ("D1", "D2", "M")} | ids["M"]) >= 2


def test_max_distance_cuts_links():
    labels, truth = draw(scene())
    _, tracks = track_labels(labels, max_distance=1.5)  # A moves 2 px a frame
    assert len(names_of(tracks, truth)["A"]) == T


def test_empty_frames_are_bridged_or_kept():
    nuclei = {"A": {t: (30.0, 30.0 + t, 6.0) for t in range(6) if t != 2},
              "B": {t: (60.0, 80.0, 6.0) for t in range(6) if t != 2}}
    labels, truth = draw(nuclei, frames=7)  # frame 2 and frame 6 are empty
    stack, tracks = track_labels(labels)
    assert all(len(v) == 1 for v in names_of(tracks, truth).values())
    assert not stack[2].any() and not stack[6].any()
    stack, tracks = track_labels(np.zeros((3, 10, 10), np.int32))
    assert tracks.empty and list(tracks.columns) == TRACK_COLUMNS and not stack.any()


def test_one_frame_split_is_not_a_division():
    nuclei = {"A": {t: (40.0, 40.0 + t, 9.0) for t in range(8)}}
    labels, _ = draw(nuclei, frames=8)
    cut = labels[4].copy()
    cut[:40][labels[4][:40] > 0] = 999  # the nucleus segmented as two halves in one frame
    labels[4] = cut
    _, tracks = track_labels(labels)
    assert (tracks.parent_track_id == 0).all()
    assert tracks[tracks.frame != 4].track_id.nunique() == 1


def test_frames_of_different_sizes_are_refused():
    frames = [np.zeros((32, 32), np.int32), np.zeros((32, 40), np.int32)]
    with pytest.raises(NucleiError, match=r"movie\.tif: frames differ in size.*frame 1 is 32×40"):
        track_labels(frames, name="movie.tif")
    with pytest.raises(ValueError):
        track_labels(np.zeros((2, 8, 8), np.float32))


def test_frame_objects_large_label_values():
    frame = np.zeros((20, 20), np.int64)
    frame[2:5, 2:6] = 7
    frame[10:12, 10:11] = 10**12
    label, area, centroid = frame_objects(frame)
    cy, cx = centroid.T
    assert label.tolist() == [7, 10**12] and area.tolist() == [12, 2]
    assert cy.tolist() == [3.0, 10.5] and cx.tolist() == [3.5, 10.0]
    stack, tracks = track_labels(frame[None])
    assert sorted(np.unique(stack).tolist()) == [0, 1, 2]


def test_tracks_of_3d_nuclei():
    """A time-lapse of z-stacks: balls moving in z and x keep their tracks; distances count z steps
    by the anisotropy."""
    zz, yy, xx = np.indices((6, 32, 48))
    movie = np.zeros((4, 6, 32, 48), np.int32)
    for t in range(4):
        for k, (z, y, x) in enumerate([(2 + 0.3 * t, 10, 10 + 2 * t), (3, 22, 34 - 2 * t)], start=1):
            movie[t][(zz - z) ** 2 * 4 + (yy - y) ** 2 + (xx - x) ** 2 <= 25] = 3 - k  # labels swap order
    tracked, tracks = track_labels(movie, anisotropy=2.0)
    assert tracked.shape == movie.shape and list(tracks.columns[4:7]) == ["centroid_z", "centroid_y", "centroid_x"]
    assert tracks["track_id"].nunique() == 2 and tracks.groupby("track_id").size().tolist() == [4, 4]
    assert len({tracked[t][(zz - 2) ** 2 + (yy - 10) ** 2 + (xx - 10 - 2 * t) ** 2 == 0][0] for t in range(4)}) == 1


# --------------------------------------------------------------------------- TrackMate XML


def read_trackmate(path) -> dict:
    """Read a TrackMate XML file the way pyTrackMateXML (R. Harkes) does: every numeric spot
    attribute per spot, each track's (source, target) edges, and a track traced from its one start."""
    root = ET.parse(path).getroot()
    assert root.tag == "TrackMate" and root.attrib["version"]
    model = root.find("Model")
    spots = {}
    for in_frame in model.find("AllSpots"):
        assert in_frame.tag == "SpotsInFrame"
        for spot in in_frame:
            values = {k: float(v) for k, v in spot.attrib.items() if k != "name"}  # Java: Double.valueOf
            values["frame_element"] = int(in_frame.attrib["frame"])
            spots[int(spot.attrib["ID"])] = values
    tracks = {}
    for track in model.find("AllTracks"):
        edges = np.array([[int(e.attrib["SPOT_SOURCE_ID"]), int(e.attrib["SPOT_TARGET_ID"])] for e in track],
                         dtype=np.int64).reshape(-1, 2)
        tracks[int(track.attrib["TRACK_ID"])] = (track.attrib, edges)
    return {"root": root, "model": model, "spots": spots, "tracks": tracks}


def test_trackmate_xml_structure(tracked, tmp_path):
    labels, truth, stack, tracks = tracked
    path = tmp_path / "tracks.xml"
    write_trackmate_xml(path, tracks, pixel_size=0.5, frame_interval=60.0, image_name="movie.tif", shape=(H, W),
                        n_frames=T)
    assert [p.name for p in tmp_path.iterdir()] == ["tracks.xml"]  # no temporary file left
    xml = read_trackmate(path)
    spots, model = xml["spots"], xml["model"]
    assert model.attrib == {"spatialunits": "µm", "timeunits": "sec"}
    assert int(model.find("AllSpots").attrib["nspots"]) == len(spots) == len(tracks)
    # spots per frame, one SpotsInFrame per frame (the empty ones too), positions in µm and seconds
    per_frame = pd.Series([s["frame_element"] for s in spots.values()]).value_counts().sort_index()
    assert per_frame.to_dict() == tracks.frame.value_counts().sort_index().to_dict()
    assert len(model.find("AllSpots")) == T
    for s in spots.values():
        assert s["FRAME"] == s["frame_element"] and s["POSITION_T"] == 60.0 * s["FRAME"]
    row = tracks.iloc[0]
    match = [s for s in spots.values() if s["FRAME"] == row.frame and s["LABEL"] == row.label]
    assert len(match) == 1 and match[0]["POSITION_X"] == pytest.approx(0.5 * row.centroid_x)
    assert match[0]["POSITION_Y"] == pytest.approx(0.5 * row.centroid_y)
    # every spot feature and edge feature written is declared
    declared = {f.attrib["feature"] for f in model.find("FeatureDeclarations").iter("Feature")}
    assert {k for s in spots.values() for k in s} - {"ID", "frame_element"} <= declared
    # edges: both spots exist, source before target; one start per track; a division = two outgoing edges
    ids = {k: next(iter(v)) for k, v in names_of(tracks, truth).items()}
    spot_track = {}
    for track_id, (attrib, edges) in xml["tracks"].items():
        assert edges.size and set(edges.ravel()) <= set(spots)
        assert all(spots[a]["FRAME"] < spots[b]["FRAME"] for a, b in edges)
        starts = np.setdiff1d(edges[:, 0], edges[:, 1])
        assert starts.size == 1
        sources, counts = np.unique(edges[:, 0], return_counts=True)
        assert int(attrib["NUMBER_SPLITS"]) == int((counts > 1).sum())
        assert int(attrib["NUMBER_SPOTS"]) == np.unique(edges).size
        for spot_id in np.unique(edges):
            spot_track[int(spot_id)] = track_id
    lineage = {}
    for (t, label), name in truth.items():
        spot = next(i for i, s in spots.items() if s["FRAME"] == t and s["LABEL"] == label)
        lineage.setdefault(name, set()).add(spot_track.get(spot))
    assert lineage["M"] == lineage["D1"] == lineage["D2"] and len(lineage["M"]) == 1
    assert len({next(iter(lineage[n])) for n in ("A", "C", "L", "M")}) == 4
    division = xml["tracks"][next(iter(lineage["M"]))]
    assert int(division[0]["NUMBER_SPLITS"]) == 1
    assert int(xml["tracks"][next(iter(lineage["C"]))][0]["NUMBER_GAPS"]) == 1
    assert ids  # the names were all tracked
    # every track shown; settings TrackMate reads
    shown = {int(t.attrib["TRACK_ID"]) for t in model.find("FilteredTracks")}
    assert shown == set(xml["tracks"])
    settings = xml["root"].find("Settings")
    image = settings.find("ImageData").attrib
    assert (image["filename"], image["width"], image["height"], image["nframes"]) == ("movie.tif", str(W), str(H), str(T))
    assert float(image["pixelwidth"]) == 0.5 and float(image["timeinterval"]) == 60.0
    for tag in ("BasicSettings", "InitialSpotFilter", "SpotFilterCollection", "TrackFilterCollection",
                "DetectorSettings", "TrackerSettings", "AnalyzerCollection"):
        assert settings.find(tag) is not None, tag


def test_trackmate_xml_pixels_and_no_tracks(tmp_path):
    tracks = pd.DataFrame({"track_id": [1, 2], "parent_track_id": [0, 0], "frame": [0, 2], "label": [5, 6],
                           "centroid_y": [3.0, 4.0], "centroid_x": [7.0, 8.0], "area": [10, 12]})
    path = tmp_path / "t.xml"
    write_trackmate_xml(path, tracks)
    xml = read_trackmate(path)
    assert xml["model"].attrib == {"spatialunits": "pixel", "timeunits": "frame"}
    assert xml["tracks"] == {} and len(xml["spots"]) == 2  # single-frame nuclei: spots without tracks
    assert len(xml["model"].find("AllSpots")) == 3  # frames 0..2
    write_trackmate_xml(path, tracks.iloc[:0])
    assert read_trackmate(path)["spots"] == {}


# --------------------------------------------------------------------------- divisions found, none invented


def _parents(tracks: pd.DataFrame, truth: dict) -> dict[str, str]:
    """{nucleus name: its mother's name} of the divisions the tracks report."""
    names = {k: name for name, ks in names_of(tracks, truth).items() for k in ks}
    first = tracks.drop_duplicates("track_id")
    return {names[k]: names[p] for k, p in first[["track_id", "parent_track_id"]].to_numpy() if p}


def test_daughter_segmented_late_is_still_a_daughter():
    """M divides after frame 3; D1 is seen from frame 4, D2 only from frame 6 (missed for two frames),
    on the other side of M: both are M's daughters, M's track ends at frame 3."""
    nuclei = {
        "M": {t: (48.0, 60.0, 10.0) for t in range(4)},
        "D1": {t: (40.0 - (t - 4), 60.0, 10 / np.sqrt(2)) for t in range(4, T)},
        "D2": {t: (56.0 + (t - 4), 61.0, 10 / np.sqrt(2)) for t in range(6, T)},
        "A": {t: (20.0, 20.0 + t, 9.0) for t in range(T)},
    }
    labels, truth = draw(nuclei)
    _, tracks = track_labels(labels)
    assert _parents(tracks, truth) == {"D1": "M", "D2": "M"}
    ids = {k: next(iter(v)) for k, v in names_of(tracks, truth).items()}
    assert all(len(v) == 1 for v in names_of(tracks, truth).values())
    assert tracks[tracks.track_id == ids["M"]].frame.max() == 3
    _, tracks = track_labels(labels, divisions=False)
    assert (tracks.parent_track_id == 0).all()


def test_nucleus_cut_in_two_for_two_frames_is_not_a_division():
    """The segmentation cuts A in two halves in frames 3 and 4, whole again from frame 5: the
    halves fuse again, which daughters never do."""
    labels, _ = draw({"A": {t: (40.0, 40.0 + t, 9.0) for t in range(T)}})
    for t in (3, 4):
        half = labels[t].copy()
        half[:40][labels[t][:40] > 0] = 999
        labels[t] = half
    _, tracks = track_labels(labels)
    assert (tracks.parent_track_id == 0).all()
    assert tracks[~tracks.frame.isin([3, 4])].track_id.nunique() == 1


def test_touching_nuclei_segmented_as_one_then_apart_are_not_a_division():
    """Two touching nuclei segmented as one object, then apart: no division when the two are
    unequal (a third of each other's area), nor when they were one object for a single frame."""
    for big, small, merged_frames in ((9.0, 5.0, 3), (7.0, 7.0, 1)):
        nuclei = {"P": {t: (40.0, 40.0, big) for t in range(T)},
                  "Q": {t: (40.0, 40.0 + big + small - 1, small) for t in range(T)}}
        labels, _ = draw(nuclei)
        for t in range(merged_frames):
            labels[t][labels[t] > 0] = 1
        _, tracks = track_labels(labels)
        assert (tracks.parent_track_id == 0).all(), (big, small, merged_frames)


def test_shifted_field_has_no_division():
    """A field of 30 touching and apart nuclei moved 3 px a frame, with one nucleus in 20 cut in two
    and one pair in 20 merged in each frame (never the same twice running): no division reported."""
    rng = np.random.default_rng(3)
    centres = [(r + rng.uniform(-3, 3), c + rng.uniform(-3, 3)) for r in range(14, 90, 16) for c in range(14, 90, 16)]
    radii = rng.uniform(5.5, 8.5, len(centres))
    nuclei = {f"N{i}": {t: (r, c + 3 * t, radius) for t in range(10)}
              for i, ((r, c), radius) in enumerate(zip(centres, radii, strict=True))}
    labels, _ = draw(nuclei, frames=10, shape=(100, 130))
    for t in range(1, 10, 2):  # every other frame: a nucleus cut, a touching pair merged
        values = [v for v in np.unique(labels[t]) if v]
        cut, pair = rng.choice(values, 3, replace=False)[[0]], rng.choice(values, 2, replace=False)
        rr, cc = np.nonzero(labels[t] == cut[0])
        labels[t][rr[rr < rr.mean()], cc[rr < rr.mean()]] = 65000
        labels[t][np.isin(labels[t], pair)] = pair[0]
    _, tracks = track_labels(labels)
    assert (tracks.parent_track_id == 0).all()
