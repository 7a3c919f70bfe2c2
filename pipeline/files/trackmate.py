"""Tracks as a TrackMate XML file, which Fiji opens with Plugins › Tracking › Load a TrackMate file (issue 61).

The file follows TrackMate's own (``fiji.plugin.trackmate.io.TmXmlWriter`` / ``TmXmlReader``,
format of TrackMate 7):

- ``Model`` (``spatialunits``, ``timeunits``): the ``FeatureDeclarations`` of the features written;
  ``AllSpots`` with one ``SpotsInFrame`` per frame and one ``Spot`` per nucleus per frame (``ID``,
  ``name`` = ``track_<track_id>``, ``POSITION_X/Y/Z/T``, ``FRAME``, ``RADIUS`` = √(area / π),
  ``QUALITY`` = 1, ``VISIBILITY`` = 1, ``AREA`` and ``LABEL``, the nucleus's label in its frame);
  ``AllTracks`` with one ``Track`` per lineage (a track and its daughters' tracks: TrackMate's
  track is a connected graph, a division is a spot with two outgoing edges), its ``Edge`` s
  (``SPOT_SOURCE_ID`` → ``SPOT_TARGET_ID``, the earlier spot first; an edge over a gap spans
  frames); ``FilteredTracks`` naming every track (all shown). A nucleus seen in one frame only is
  a spot without a track.
- ``Settings``: ``ImageData`` (the image's file name, size, pixel size and frame interval),
  ``BasicSettings``, the manual detector and tracker (nothing to rerun), no filters.

Positions are the centroids (x = column, y = row) times the pixel size in µm (``spatialunits``
``µm``) or in pixels (``pixel``) without one; ``POSITION_T`` is the frame times the frame interval
in seconds (``sec``) or the frame (``frame``) without one.

Must not: track, or know the output folder's layout.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.files.io import atomic_path

#: The TrackMate version the file declares (the reader refuses files older than 2.1.0).
TRACKMATE_VERSION = "7.13.2"

#: Columns the tracks table must have (:func:`pipeline.method.tracking.track_labels`).
REQUIRED = ("track_id", "parent_track_id", "frame", "label", "centroid_y", "centroid_x", "area")

# feature, name, short name, dimension, is an integer
_SPOT_FEATURES = [
    ("QUALITY", "Quality", "Quality", "QUALITY", False),
    ("POSITION_X", "X", "X", "POSITION", False),
    ("POSITION_Y", "Y", "Y", "POSITION", False),
    ("POSITION_Z", "Z", "Z", "POSITION", False),
    ("POSITION_T", "T", "T", "TIME", False),
    ("FRAME", "Frame", "Frame", "NONE", True),
    ("RADIUS", "Radius", "R", "LENGTH", False),
    ("VISIBILITY", "Visibility", "Visibility", "NONE", True),
    ("AREA", "Area", "Area", "AREA", False),
    ("LABEL", "Label in its frame", "Label", "NONE", True),
]
_EDGE_FEATURES = [
    ("SPOT_SOURCE_ID", "Source spot ID", "Source ID", "NONE", True),
    ("SPOT_TARGET_ID", "Target spot ID", "Target ID", "NONE", True),
    ("LINK_COST", "Edge cost", "Cost", "COST", False),
    ("EDGE_TIME", "Edge time", "Edge T", "TIME", False),
    ("EDGE_X_LOCATION", "Edge X", "Edge X", "POSITION", False),
    ("EDGE_Y_LOCATION", "Edge Y", "Edge Y", "POSITION", False),
    ("EDGE_Z_LOCATION", "Edge Z", "Edge Z", "POSITION", False),
]
_TRACK_FEATURES = [
    ("TRACK_INDEX", "Track index", "Index", "NONE", True),
    ("TRACK_ID", "Track ID", "ID", "NONE", True),
    ("NUMBER_SPOTS", "Number of spots in track", "N spots", "NONE", True),
    ("NUMBER_GAPS", "Number of gaps", "N gaps", "NONE", True),
    ("NUMBER_SPLITS", "Number of split events", "N splits", "NONE", True),
    ("NUMBER_MERGES", "Number of merge events", "N merges", "NONE", True),
    ("TRACK_START", "Track start", "Track start", "TIME", False),
    ("TRACK_STOP", "Track stop", "Track stop", "TIME", False),
    ("TRACK_DURATION", "Track duration", "Duration", "TIME", False),
]


def _f(value: float) -> str:
    """A number as Java's ``Double.valueOf`` reads it."""
    return repr(float(value))


def _declare(parent: ET.Element, tag: str, features: list) -> None:
    group = ET.SubElement(parent, tag)
    for feature, name, short, dimension, is_int in features:
        ET.SubElement(group, "Feature", feature=feature, name=name, shortname=short, dimension=dimension,
                      isint="true" if is_int else "false")


def lineages(tracks: pd.DataFrame) -> pd.Series:
    """The root track (first ancestor) of every track: a ``Series`` of track ids indexed by ``track_id``.

    A parent missing from the table counts as none.
    """
    parent = tracks.drop_duplicates("track_id").set_index("track_id")["parent_track_id"]
    ids, up = parent.index.to_numpy(np.int64), parent.to_numpy(np.int64).copy()
    up[~np.isin(up, ids)] = 0
    where = pd.Index(ids)
    root = ids.copy()
    for _ in range(ids.size):  # one generation a pass
        above = up[where.get_indexer(root)]
        if not (above > 0).any():
            break
        root = np.where(above > 0, above, root)
    return pd.Series(root, index=ids)


def tracks_to_graph(tracks: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Spots and edges of a tracks table, as TrackMate sees them.

    Returns
    -------
    spots : DataFrame
        The table sorted by frame then track, with ``spot_id`` (0, 1, ...) and ``lineage`` (the
        root track id of its track).
    edges : DataFrame
        ``source, target`` spot ids (the earlier first) and the ``lineage``: consecutive nuclei
        of a track, and a mother's last nucleus to each daughter's first.
    """
    missing = [c for c in REQUIRED if c not in tracks.columns]
    if missing:
        raise ValueError(f"tracks table lacks {', '.join(missing)}")
    spots = tracks.sort_values(["frame", "track_id"], kind="stable").reset_index(drop=True)
    spots["spot_id"] = np.arange(len(spots), dtype=np.int64)
    spots["lineage"] = lineages(spots).reindex(spots["track_id"]).to_numpy(np.int64)
    by_track = spots.sort_values(["track_id", "frame"], kind="stable")
    track, ids = by_track["track_id"].to_numpy(), by_track["spot_id"].to_numpy()
    same = track[1:] == track[:-1]
    first = by_track.drop_duplicates("track_id", keep="first").set_index("track_id")["spot_id"]
    last = by_track.drop_duplicates("track_id", keep="last").set_index("track_id")["spot_id"]
    parent = spots.drop_duplicates("track_id").set_index("track_id")["parent_track_id"].reindex(first.index)
    daughter = (parent > 0) & parent.isin(last.index)
    edges = pd.DataFrame({
        "source": np.concatenate([ids[:-1][same], last.reindex(parent[daughter]).to_numpy()]),
        "target": np.concatenate([ids[1:][same], first[daughter].to_numpy()]),
    }).astype(np.int64)
    edges["lineage"] = spots["lineage"].to_numpy()[edges["source"].to_numpy()]
    return spots, edges


def write_trackmate_xml(
    path: str | Path,
    tracks: pd.DataFrame,
    pixel_size: float | None = None,
    frame_interval: float | None = None,
    image_name: str = "",
    *,
    shape: tuple[int, int] | None = None,
    n_frames: int | None = None,
    z_spacing: float | None = None,
    planes: int = 1,
) -> None:
    """Write tracks as a TrackMate XML file (atomically: a new file beside it, then renamed).

    Parameters
    ----------
    path : path
        The ``.xml`` file.
    tracks : pandas.DataFrame
        :func:`pipeline.method.tracking.track_labels`'s table: ``track_id, parent_track_id, frame,
        label, centroid_y, centroid_x, area`` (px; ``parent_track_id`` 0 when none).
    pixel_size : float, optional
        µm per pixel; positions, radii and areas in µm (else in pixels).
    frame_interval : float, optional
        Seconds between frames; times in seconds (else in frames).
    image_name : str
        The movie's file name, which TrackMate opens from the XML file's folder when it is there
        (else it shows the tracks on an empty image).
    shape : (H, W), optional
        The frames' size in pixels (else from the furthest centroid).
    n_frames : int, optional
        Frames in the movie (at least the last frame with a nucleus + 1).
    z_spacing : float, optional
        3D nuclei (``centroid_z`` in ``tracks``): µm between planes (else the pixel size).
    planes : int
        3D nuclei: planes of each z-stack.

    Raises
    ------
    OutputError
        The file cannot be written.
    """
    spots, edges = tracks_to_graph(tracks)
    scale = float(pixel_size) if pixel_size else 1.0
    dt = float(frame_interval) if frame_interval else 1.0
    frames = max(int(n_frames or 1), int(spots["frame"].max()) + 1 if len(spots) else 1)
    if shape is None:
        shape = (int(math.ceil(spots["centroid_y"].max())) + 1, int(math.ceil(spots["centroid_x"].max())) + 1) \
            if len(spots) else (1, 1)
    xyzt = _positions(spots, scale, z_spacing or scale, dt)

    root = ET.Element("TrackMate", version=TRACKMATE_VERSION)
    ET.SubElement(root, "Log").text = f"Tracks written by nuclei-pipeline for {image_name or 'a time-lapse'}.\n"
    model = ET.SubElement(root, "Model", spatialunits="µm" if pixel_size else "pixel",
                          timeunits="sec" if frame_interval else "frame")
    declarations = ET.SubElement(model, "FeatureDeclarations")
    _declare(declarations, "SpotFeatures", _SPOT_FEATURES)
    _declare(declarations, "EdgeFeatures", _EDGE_FEATURES)
    _declare(declarations, "TrackFeatures", _TRACK_FEATURES)
    radius = _add_spots(model, spots, frames, xyzt, scale)
    _add_tracks(model, edges, spots["frame"].to_numpy(np.int64), xyzt)
    _add_settings(root, image_name, shape, frames, planes, (scale, z_spacing or scale, dt), radius)
    ET.SubElement(root, "GUIState", state="ConfigureViews")

    ET.indent(root, space="  ")
    with atomic_path(path) as tmp:
        ET.ElementTree(root).write(tmp, encoding="UTF-8", xml_declaration=True)


def _positions(spots: pd.DataFrame, scale: float, z_step: float, dt: float) -> tuple[np.ndarray, ...]:
    """``(x, y, z, t)``: float64 (N,) each, the spots' positions in the file's units (``z`` 0 for 2D
    nuclei; 3D: planes × ``z_step``)."""
    x = spots["centroid_x"].to_numpy(np.float64) * scale
    y = spots["centroid_y"].to_numpy(np.float64) * scale
    z = (spots["centroid_z"].to_numpy(np.float64) * z_step if "centroid_z" in spots
         else np.zeros(len(spots)))  # 3D nuclei: planes × the z step
    t = spots["frame"].to_numpy(np.int64) * dt
    return x, y, z, t


def _add_spots(model: ET.Element, spots: pd.DataFrame, frames: int, xyzt: tuple[np.ndarray, ...],
               scale: float) -> np.ndarray:
    """Add ``AllSpots`` (one ``SpotsInFrame`` per frame) to ``model``; returns the spots' radii (float64
    (N,), the file's units)."""
    x, y, z, t = xyzt
    all_spots = ET.SubElement(model, "AllSpots", nspots=str(len(spots)))
    starts = np.searchsorted(spots["frame"].to_numpy(np.int64), np.arange(frames + 1))
    size = spots["area"].to_numpy(np.float64)
    radius = (np.sqrt(size / np.pi) if "centroid_z" not in spots else np.cbrt(3 * size / (4 * np.pi))) * scale
    area = size * scale**2  # 3D nuclei: voxels × the pixel area (TrackMate's AREA is 2D)
    track_id, label = spots["track_id"].to_numpy(np.int64), spots["label"].to_numpy(np.int64)
    for f in range(frames):
        in_frame = ET.SubElement(all_spots, "SpotsInFrame", frame=str(f))
        for i in range(starts[f], starts[f + 1]):
            ET.SubElement(in_frame, "Spot", {
                "ID": str(i), "name": f"track_{track_id[i]}", "QUALITY": "1.0", "POSITION_X": _f(x[i]),
                "POSITION_Y": _f(y[i]), "POSITION_Z": _f(z[i]), "POSITION_T": _f(t[i]), "FRAME": str(f),
                "RADIUS": _f(radius[i]), "VISIBILITY": "1", "AREA": _f(area[i]), "LABEL": str(label[i]),
            })
    return radius


def _add_tracks(model: ET.Element, edges: pd.DataFrame, frame_of: np.ndarray, xyzt: tuple[np.ndarray, ...]) -> None:
    """Add ``AllTracks`` (one ``Track`` per lineage, with its edges) and ``FilteredTracks`` (all of
    them) to ``model``; ``frame_of`` (N,) is each spot's frame."""
    x, y, z, t = xyzt
    all_tracks = ET.SubElement(model, "AllTracks")
    filtered = []
    src, tgt = edges["source"].to_numpy(), edges["target"].to_numpy()
    cost = (x[tgt] - x[src]) ** 2 + (y[tgt] - y[src]) ** 2 + (z[tgt] - z[src]) ** 2
    gaps = frame_of[tgt] - frame_of[src] > 1
    order = np.argsort(edges["lineage"].to_numpy(), kind="stable")
    names, firsts = np.unique(edges["lineage"].to_numpy()[order], return_index=True)
    groups = np.split(order, firsts[1:]) if order.size else []
    for index, (lineage, mine) in enumerate(zip(names.tolist(), groups, strict=True)):
        members = np.unique(np.concatenate([src[mine], tgt[mine]]))
        out_degree = np.bincount(src[mine] - members.min(), minlength=members.max() - members.min() + 1)
        start, stop = float(t[members].min()), float(t[members].max())
        track = ET.SubElement(all_tracks, "Track", {
            "name": f"Track_{lineage}", "TRACK_INDEX": str(index), "TRACK_ID": str(lineage),
            "NUMBER_SPOTS": str(members.size), "NUMBER_GAPS": str(int(gaps[mine].sum())),
            "NUMBER_SPLITS": str(int((out_degree > 1).sum())), "NUMBER_MERGES": "0",
            "TRACK_START": _f(start), "TRACK_STOP": _f(stop), "TRACK_DURATION": _f(stop - start),
        })
        for e in mine:
            a, b = src[e], tgt[e]
            ET.SubElement(track, "Edge", {
                "SPOT_SOURCE_ID": str(a), "SPOT_TARGET_ID": str(b), "LINK_COST": _f(cost[e]),
                "EDGE_TIME": _f((t[a] + t[b]) / 2), "EDGE_X_LOCATION": _f((x[a] + x[b]) / 2),
                "EDGE_Y_LOCATION": _f((y[a] + y[b]) / 2), "EDGE_Z_LOCATION": "0.0",
            })
        filtered.append(lineage)
    filtered_tracks = ET.SubElement(model, "FilteredTracks")
    for lineage in filtered:
        ET.SubElement(filtered_tracks, "TrackID", TRACK_ID=str(lineage))


def _add_settings(root: ET.Element, image_name: str, shape: tuple[int, int], frames: int, planes: int,
                  steps: tuple[float, float, float], radius: np.ndarray) -> None:
    """Add ``Settings`` to ``root``: the image's data (``steps``: pixel side, z step, frame interval),
    the manual detector (the spots' median ``radius``) and tracker, no filters."""
    scale, z_step, dt = steps
    settings = ET.SubElement(root, "Settings")
    height, width = shape
    ET.SubElement(settings, "ImageData", filename=image_name, folder="", width=str(width), height=str(height),
                  nslices=str(planes), nframes=str(frames), pixelwidth=_f(scale), pixelheight=_f(scale),
                  voxeldepth=_f(z_step), timeinterval=_f(dt))
    ET.SubElement(settings, "BasicSettings", xstart="0", xend=str(width - 1), ystart="0", yend=str(height - 1),
                  zstart="0", zend=str(planes - 1), tstart="0", tend=str(frames - 1))
    median_radius = float(np.median(radius)) if len(radius) else 1.0
    ET.SubElement(settings, "DetectorSettings", DETECTOR_NAME="MANUAL_DETECTOR", RADIUS=_f(median_radius))
    ET.SubElement(settings, "InitialSpotFilter", feature="QUALITY", value="0.0", isabove="true")
    ET.SubElement(settings, "SpotFilterCollection")
    ET.SubElement(settings, "TrackerSettings", TRACKER_NAME="MANUAL_TRACKER")
    ET.SubElement(settings, "TrackFilterCollection")
    analyzers = ET.SubElement(settings, "AnalyzerCollection")
    for tag in ("SpotAnalyzers", "EdgeAnalyzers", "TrackAnalyzers"):
        ET.SubElement(analyzers, tag)
