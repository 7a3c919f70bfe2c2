"""Nuclei tracked through a time-lapse: frame-by-frame labels in, track ids and lineages out (issue 61).

:func:`track_labels` links the nuclei of independently labelled frames with laptrack's LAP tracker
(``laptrack.LapTrack``, Jaqaman et al. 2008, the method of TrackMate's LAP tracker) on the nuclei's
centroids:

1. **Objects.** Each frame's nuclei and their centroid and area in px (:func:`frame_objects`:
   one ``bincount`` per frame).
2. **Links.** Frame-to-frame links by a linear assignment on squared distances, cut at
   ``max_distance`` px per frame; by default :data:`DISTANCE_FACTOR` × the median equivalent
   diameter (``2 √(area / π)``) of all the nuclei of the movie (:func:`default_max_distance`).
3. **Gaps.** A nucleus missing from up to ``gap_frames`` frames keeps its track (laptrack's gap
   closing; cut at ``max_distance`` px as well: a nucleus lost for a frame is almost always a
   segmentation miss, not a jump).
4. **Divisions.** A track that splits (laptrack's splitting, same cut): the mother's track ends at
   its last frame and each daughter starts a new track whose ``parent_track_id`` is the mother's.
   A split is kept as a division only when the mother has at least two nuclei, both daughters are
   smaller than the mother (:data:`MAX_DAUGHTER_AREA`) and alike (:data:`MIN_SISTER_RATIO`), last
   (:data:`MIN_DAUGHTER_FRAMES`; so a division into the last frame is not reported), no area jumps
   at it (:data:`MAX_GROWTH`) and the sisters do not fuse again (:func:`_remerged`); otherwise the
   longest daughter goes on as the mother's track and the other starts a track of its own. Merging
   is not allowed (nuclei do not fuse; two nuclei segmented as one end one of the tracks).
5. **Late daughters.** laptrack splits a track only into the next frame; a daughter first
   segmented up to :data:`DAUGHTER_FRAMES` frames after her mother's last nucleus is found by
   :func:`_late_divisions` under the same rules, her sister on the opposite side of the mother.

What a division looks like, and what only resembles one (issue 87): the mother ends; two
daughters of about half her area start near her, on either side, in the next frame or a few
frames on; neither fuses with her sister again. A nucleus cut in two by the segmentation for a
frame or a few, two touching nuclei segmented as one and then apart (unequal, or as one for a
single frame) are what the rules turn down (``benchmarks/validate_tracking.py``: fields shifted
frame by frame, no division; eval_tracking's synthetic movies with daughters seen late).

Track ids are numbered 1, 2, ... in the order of their first frame, then of their input label
there.

Why laptrack (``benchmarks/eval_tracking.py --compare``: 10 DSB2018 movies, 20 frames, 9,516 links,
45 divisions): links found 0.995 on clean labels and 0.958 of the matchable ones with segmentation
errors (trackpy 0.991 / 0.954, btrack 0.983 / 0.936), divisions 0.96 found at 0.96 precision on
clean labels (trackpy has no divisions; btrack 0.02: its division hypotheses need mitotic-phase
labels from a classifier; with issue 87's rules laptrack's are 0.93 found at 0.96 precision),
14-17 ms a frame (trackpy 3-5, btrack 6-9). laptrack is pure Python on scipy, scikit-learn,
networkx and pydantic (BSD-3, maintained); btrack ships a compiled library (whose 0.7.0 wheel
needs a newer libstdc++ than Debian 12's), cvxopt and h5py.

Must not: read or write files, or import torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from pipeline.errors import NucleiError

#: Default largest move of a nucleus between two frames, as a multiple of the movie's median
#: nucleus diameter (``benchmarks/eval_tracking.py``).
DISTANCE_FACTOR = 0.75

#: A division is kept only if each daughter's area in its first frame is at most this fraction of the
#: mother's in her last frame: a nucleus reappearing beside another is not a daughter of it
#: (``benchmarks/eval_tracking.py``: true daughters 0.26-0.70, such false ones 0.64-3.8, median 1.0).
MAX_DAUGHTER_AREA = 0.75

#: ... and if each daughter's track has at least this many nuclei (or reaches the last frame): a
#: nucleus cut in two by the segmentation for one frame is not a division.
MIN_DAUGHTER_FRAMES = 2

#: ... and if the two daughters' areas in their first frames are within this ratio of each other:
#: divisions are near symmetric, two nuclei segmented as one and then apart need not be (DSB2018
#: training fields shifted frame by frame, ``benchmarks/validate_tracking.py``; the synthetic
#: daughters of ``benchmarks/eval_tracking.py`` are equal, 0.5 leaves room for segmentation noise).
MIN_SISTER_RATIO = 0.5

#: ... and if neither the mother's area in her last frame nor a daughter's in its second frame is more
#: than this many times what it was just before (the median of the mother's three frames before;
#: the daughter's first): a sudden doubling is two nuclei segmented as one, or a nucleus cut in
#: two for a frame and whole again, not a division.
MAX_GROWTH = 1.5

#: A daughter may first be segmented up to this many frames after her mother's last nucleus
#: (daughters are dim just after mitosis; their chromatin decondenses): :func:`_late_divisions`.
#: A modelling choice (missed for up to 3 frames), checked on synthetic movies whose daughters are
#: missed for 0-3 frames (``benchmarks/validate_tracking.py``: divisions found 1/48 → 28/48 at
#: precision 0.93; clean movies unchanged; with segmentation errors 4-6 more false divisions).
DAUGHTER_FRAMES = 4

#: Columns of the tracks table, in order (3D nuclei: ``centroid_z`` before ``centroid_y``, ``area`` in voxels).
TRACK_COLUMNS = ["track_id", "parent_track_id", "frame", "label", "centroid_y", "centroid_x", "area"]
#: The centroid columns of 2D and of 3D nuclei.
_CENTROIDS = {2: ["centroid_y", "centroid_x"], 3: ["centroid_z", "centroid_y", "centroid_x"]}


def track_columns(ndim: int = 2) -> list[str]:
    """The tracks table's columns for nuclei of ``ndim`` dimensions (2: :data:`TRACK_COLUMNS`; 3 adds ``centroid_z``)."""
    return [*TRACK_COLUMNS[:4], *_CENTROIDS[ndim], "area"]


def _as_stack(labels: np.ndarray | Sequence[np.ndarray], name: str) -> np.ndarray:
    """(T, H, W) or (T, Z, H, W) integer array from an array or a sequence of frames; NucleiError on mixed sizes."""
    if not isinstance(labels, np.ndarray):
        frames = [np.asarray(frame) for frame in labels]
        shapes = [frame.shape for frame in frames]
        odd = next((t for t, shape in enumerate(shapes) if shape != shapes[0]), None)
        if odd is not None:
            raise NucleiError(f"{name}: frames differ in size: frame 0 is "
                              f"{'×'.join(map(str, shapes[0]))} px, frame {odd} is {'×'.join(map(str, shapes[odd]))} px")
        labels = np.stack(frames) if frames else np.zeros((0, 0, 0), np.int32)
    if labels.ndim not in (3, 4):
        raise ValueError(f"expected a (T, H, W) or (T, Z, H, W) label stack, got shape {labels.shape}")
    if not (np.issubdtype(labels.dtype, np.integer) or labels.dtype == bool):
        raise ValueError(f"expected integer labels, got {labels.dtype}")
    if labels.size and labels.min() < 0:
        raise ValueError("label images must not contain negative values")
    return labels


def frame_objects(frame: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The nuclei of one label image (2D) or volume (3D): label, size and centroid.

    Parameters
    ----------
    frame : (H, W) or (Z, H, W) int array
        Instance labels, 0 = background; any non-negative values.

    Returns
    -------
    label : (N,) int64
        The labels present, ascending.
    area : (N,) int64
        Pixels (voxels) of each.
    centroid : (N, frame.ndim) float64
        Mean index along each axis (plane, row, column), px.
    """
    frame = np.asarray(frame)
    flat = frame.ravel()
    if flat.size == 0 or not flat.any():
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros((0, frame.ndim))
    coords = np.unravel_index(np.arange(flat.size), frame.shape)
    if int(flat.max()) <= 4 * flat.size:
        codes, n = flat.astype(np.int64), int(flat.max()) + 1
        area = np.bincount(codes, minlength=n)
        present = np.flatnonzero(area[1:]) + 1
        sums = [np.bincount(codes, c, minlength=n)[present] for c in coords]
        area = area[present]
    else:  # very large label values: group the labelled pixels only
        inside = flat > 0
        present, codes = np.unique(flat[inside], return_inverse=True)
        area = np.bincount(codes)
        sums = [np.bincount(codes, c[inside]) for c in coords]
    return present.astype(np.int64), area.astype(np.int64), np.stack(sums, axis=1) / area[:, None]


def stack_objects(labels: np.ndarray) -> pd.DataFrame:
    """Every nucleus of every frame: ``frame, label``, the centroid (``centroid_z`` for 3D nuclei,
    ``centroid_y``, ``centroid_x``, px) and ``area`` (px, voxels in 3D), by frame then label."""
    names = _CENTROIDS[labels.ndim - 1]
    parts = []
    for t, frame in enumerate(labels):
        label, area, centroid = frame_objects(frame)
        parts.append(pd.DataFrame({"frame": np.full(label.size, t, np.int64), "label": label,
                                   **dict(zip(names, centroid.T, strict=True)), "area": area}))
    if not parts:
        return pd.DataFrame({c: pd.Series(dtype=float if c.startswith("centroid") else np.int64)
                             for c in ["frame", "label", *names, "area"]})
    return pd.concat(parts, ignore_index=True)


def default_max_distance(area: np.ndarray, ndim: int = 2) -> float:
    """:data:`DISTANCE_FACTOR` × the median equivalent diameter of the nuclei, px (1 px at least):
    ``2 √(area / π)`` of 2D nuclei, ``2 ∛(3 volume / 4π)`` of 3D ones (``area`` their voxels)."""
    area = np.asarray(area, np.float64)
    if area.size == 0:
        return 1.0
    diameter = 2.0 * (np.sqrt(area / np.pi) if ndim == 2 else np.cbrt(3.0 * area / (4.0 * np.pi)))
    return max(1.0, DISTANCE_FACTOR * float(np.median(diameter)))


def _segments(successors: dict, predecessors: dict, nodes: list) -> tuple[dict, dict]:
    """Track id of every node and parent of every track from a linking graph.

    ``nodes`` in (frame, index) order; a node continues its predecessor's track when it is that
    predecessor's only successor; otherwise it starts a track, whose parent is the predecessor's
    track when the predecessor has several successors (a division).
    """
    track_of, parent = {}, {}
    for node in nodes:
        before = predecessors.get(node, ())
        if len(before) == 1 and len(successors.get(before[0], ())) == 1:
            track_of[node] = track_of[before[0]]
            continue
        track_of[node] = len(parent) + 1
        parent[track_of[node]] = track_of[before[0]] if len(before) == 1 else 0
    return track_of, parent


def _track_rows(track_id: np.ndarray) -> dict[int, np.ndarray]:
    """{track: its rows in frame order} (objects in frame order)."""
    order = np.argsort(track_id, kind="stable")
    ids, first = np.unique(track_id[order], return_index=True)
    return dict(zip(ids.tolist(), np.split(order, first[1:]), strict=True))


def _remerged(daughters: list[np.ndarray], frame: np.ndarray, area: np.ndarray, n_frames: int) -> bool:
    """Whether two daughters' tracks (their rows in frame order) look like one nucleus cut in two
    for a while: one ends before the last frame and, in the sister's next :data:`MIN_DAUGHTER_FRAMES`
    nuclei after that end (or those up to the last frame), the sister is more than
    :data:`MAX_GROWTH` times what she was before (daughters do not fuse again; a one-frame jump is
    two nuclei segmented as one)."""
    for ended, sister in ((daughters[0], daughters[1]), (daughters[1], daughters[0])):
        end = frame[ended[-1]]
        if end >= n_frames - 1:
            continue
        after = np.flatnonzero(frame[sister] > end)[:MIN_DAUGHTER_FRAMES]
        lasting = after.size == MIN_DAUGHTER_FRAMES or (after.size and frame[sister[after[-1]]] == n_frames - 1)
        if lasting and after[0] > 0 and (area[sister[after]] > MAX_GROWTH * area[sister[after[0] - 1]]).all():
            return True
    return False


def _alike(mother: np.ndarray, firsts: list[int], area: np.ndarray) -> bool:
    """Whether a mother (her rows) has at least :data:`MIN_DAUGHTER_FRAMES` nuclei and her two
    daughters' first nuclei are within :data:`MIN_SISTER_RATIO` of each other's area (a nucleus
    segmented as one for a frame is no mother; two nuclei first segmented as one part unequally)."""
    a, b = area[firsts[0]], area[firsts[1]]
    return mother.size >= MIN_DAUGHTER_FRAMES and min(a, b) >= MIN_SISTER_RATIO * max(a, b)


def _opposite(mother_row: int, firsts: list[int], yx: np.ndarray) -> bool:
    """Whether two daughters' first nuclei lie on opposite sides of their mother's last one (the
    angle between them, seen from her centre, over 90°): sisters part from where the mother was."""
    a, b = yx[firsts[0]] - yx[mother_row], yx[firsts[1]] - yx[mother_row]
    return float(np.dot(a, b)) < 0


def _check_divisions(track_id: np.ndarray, parent: dict, frame: np.ndarray, area: np.ndarray,
                     yx: np.ndarray, n_frames: int) -> tuple[np.ndarray, dict]:
    """Undo the splits that do not look like a division (:data:`MAX_DAUGHTER_AREA`,
    :data:`MIN_DAUGHTER_FRAMES`, :data:`MAX_GROWTH`, :func:`_alike`, :func:`_remerged`).

    ``track_id`` (N,) per object (objects in frame order), ``parent`` {track: parent track or 0}.
    An undone division: the longest daughter (then the nearest to the mother) continues the
    mother's track, the others become tracks without a parent.
    """
    rows = _track_rows(track_id)
    children: dict[int, list[int]] = {}
    for k, p in parent.items():
        if p:
            children.setdefault(p, []).append(k)
    alias: dict[int, int] = {}

    def current(k: int) -> int:
        while k in alias:
            k = alias[k]
        return k

    for mother in sorted(children, key=lambda k: frame[rows[k][-1]]):
        mother = current(mother)
        kids = children.get(mother, [])
        if len(kids) < 2:
            continue
        end = rows[mother][-1]
        firsts = [rows[k][0] for k in kids]
        lasting = all(rows[k].size >= MIN_DAUGHTER_FRAMES for k in kids)
        before = area[rows[mother][-4:-1]]
        steady = before.size == 0 or area[end] <= MAX_GROWTH * np.median(before)
        steady &= all(area[rows[k][1]] <= MAX_GROWTH * area[rows[k][0]] for k in kids if rows[k].size > 1)
        pair = len(kids) == 2 and _alike(rows[mother], firsts, area)
        pair = pair and not _remerged([rows[k] for k in kids], frame, area, n_frames)
        if lasting and steady and pair and area[firsts].max() <= MAX_DAUGHTER_AREA * area[end]:
            continue
        distance = np.linalg.norm(yx[firsts] - yx[end], axis=1)
        heir = kids[min(range(len(kids)), key=lambda i: (-rows[kids[i]].size, distance[i]))]
        for k in kids:
            parent[k] = 0
        alias[heir] = mother
        rows[mother] = np.concatenate([rows[mother], rows.pop(heir)])
        children[mother] = children.pop(heir, [])
        for k in children[mother]:
            parent[k] = mother
        del parent[heir]
    if alias:
        ids, inverse = np.unique(track_id, return_inverse=True)
        track_id = np.array([current(k) for k in ids.tolist()], np.int64)[inverse]
    return track_id, parent


def _late_divisions(track_id: np.ndarray, parent: dict, frame: np.ndarray, area: np.ndarray, yx: np.ndarray,
                    max_distance: float, n_frames: int) -> tuple[np.ndarray, dict]:
    """Divisions whose daughters were not both segmented in the frame after the mother's last
    (:data:`DAUGHTER_FRAMES`): laptrack splits a track only into the next frame.

    A mother is a track without daughters at a nucleus ``p`` after which it ends (before the last
    frame) or shrinks to at most :data:`MAX_DAUGHTER_AREA` of ``p``'s area (its heir: a daughter that
    gap closing or linking joined to it). Her daughters are the heir and the tracks without a parent
    that start within :data:`DAUGHTER_FRAMES` frames after ``p``, within ``max_distance`` px of it,
    each at most :data:`MAX_DAUGHTER_AREA` of ``p``'s area in its first frame, lasting
    :data:`MIN_DAUGHTER_FRAMES` and not growing by more than :data:`MAX_GROWTH` into its second
    nucleus; the nearest two. ``p``'s area must be steady (:data:`MAX_GROWTH` × the median of the
    three before). Returns ``track_id`` (N,) with the heir a new track, and ``parent`` updated.
    """
    rows = _track_rows(track_id)
    has_kids = set(parent.values())

    def plausible(r: np.ndarray, mother_row: int) -> bool:
        grows = r.size > 1 and area[r[1]] > MAX_GROWTH * area[r[0]]
        return (r.size >= MIN_DAUGHTER_FRAMES and not grows and area[r[0]] <= MAX_DAUGHTER_AREA * area[mother_row]
                and np.linalg.norm(yx[r[0]] - yx[mother_row]) <= max_distance)

    orphans = {k: r for k, r in rows.items() if not parent.get(k) and frame[r[0]] > 0}
    by_start: dict[int, list[int]] = {}
    for k, r in orphans.items():
        by_start.setdefault(int(frame[r[0]]), []).append(k)
    track_id = track_id.copy()
    next_id = max(rows) + 1
    for mother in sorted(rows, key=lambda k: frame[rows[k][0]]):
        if mother in has_kids:
            continue
        r = rows[mother]
        cuts = [i for i in range(r.size) if (i == r.size - 1 and frame[r[i]] < n_frames - 1)
                or (i < r.size - 1 and area[r[i + 1]] <= MAX_DAUGHTER_AREA * area[r[i]])]
        for i in cuts:
            p = r[i]
            before = area[r[max(i - 3, 0):i]]
            if before.size and area[p] > MAX_GROWTH * np.median(before):
                continue
            heir = [r[i + 1:]] if i < r.size - 1 and plausible(r[i + 1:], p) else []
            starting = [k for t in range(frame[p] + 1, frame[p] + DAUGHTER_FRAMES + 1) for k in by_start.get(t, ())]
            late = sorted((k for k in starting if k in orphans and k != mother and plausible(orphans[k], p)),
                          key=lambda k: np.linalg.norm(yx[orphans[k][0]] - yx[p]))
            daughters = heir + [orphans[k] for k in late[:2 - len(heir)]]
            if (len(daughters) < 2 or not _alike(r[:i + 1], [d[0] for d in daughters], area)
                    or _remerged(daughters, frame, area, n_frames) or not _opposite(p, [d[0] for d in daughters], yx)):
                continue
            if heir:
                track_id[heir[0]] = next_id
                parent[next_id], next_id = mother, next_id + 1
            for k in late[:2 - len(heir)]:
                parent[k] = mother
                del orphans[k]
            break
    return track_id, parent


def track_labels(
    labels: np.ndarray | Sequence[np.ndarray],
    max_distance: float | None = None,
    gap_frames: int = 1,
    divisions: bool = True,
    *,
    name: str = "time-lapse",
    anisotropy: float = 1.0,
) -> tuple[np.ndarray, pd.DataFrame]:
    """Link the nuclei of a time-lapse into tracks.

    Parameters
    ----------
    labels : (T, H, W) or (T, Z, H, W) int array, or a sequence of T (H, W) or (Z, H, W) int arrays
        Each frame labelled on its own, 0 = background (3D nuclei: a time-lapse of z-stacks).
        Empty frames are fine.
    max_distance : float, optional
        Largest move of a nucleus between two frames (and across a gap, and from a mother to a
        daughter), px. Default :func:`default_max_distance`: :data:`DISTANCE_FACTOR` × the median
        nucleus diameter of the movie.
    gap_frames : int
        Frames a nucleus may be missing for and keep its track (0: none).
    divisions : bool
        Allow a track to split in two (a division); without, a daughter is a new track with no parent.
    name : str
        What the error messages call the movie (its file).
    anisotropy : float
        3D nuclei: z step / pixel side; distances are measured in px of y and x.

    Returns
    -------
    tracked : int32, the shape of ``labels``
        ``labels`` relabelled so that a nucleus carries its track id in every frame; 0 = background.
    tracks : pandas.DataFrame
        One row per nucleus per frame, columns :func:`track_columns`: ``track_id`` (1, 2, ...),
        ``parent_track_id`` (the mother's track for a daughter after a division, else 0),
        ``frame`` (0-based), ``label`` (the nucleus's label in ``labels`` at that frame),
        ``centroid_z`` (3D, planes), ``centroid_y``, ``centroid_x`` (px) and ``area`` (px; voxels
        in 3D). Sorted by track, then frame.

    Raises
    ------
    NucleiError
        Frames of different sizes.
    """
    stack = _as_stack(labels, name)
    if max_distance is not None and not max_distance > 0:
        raise ValueError(f"max_distance must be > 0 px, got {max_distance}")
    if gap_frames < 0:
        raise ValueError(f"gap_frames must be >= 0, got {gap_frames}")
    objects = stack_objects(stack)
    columns = track_columns(stack.ndim - 1)
    if objects.empty:
        return np.zeros(stack.shape, np.int32), pd.DataFrame(
            {c: pd.Series(dtype=np.float64 if c.startswith("centroid") else np.int64) for c in columns})
    if max_distance is None:
        max_distance = default_max_distance(objects["area"].to_numpy() * (anisotropy if stack.ndim == 4 else 1),
                                            stack.ndim - 1)
    frame = objects["frame"].to_numpy()
    starts = np.searchsorted(frame, np.arange(stack.shape[0] + 1))
    yx = objects[_CENTROIDS[stack.ndim - 1]].to_numpy()
    if stack.ndim == 4:  # planes → px of y and x
        yx = yx * np.array([anisotropy, 1.0, 1.0])
    coords = [yx[starts[t]:starts[t + 1]] for t in range(stack.shape[0])]
    graph = _tracker(float(max_distance), gap_frames, divisions).predict(coords)
    track_id, parent = _graph_tracks(graph, frame, starts)
    if divisions:
        track_id, parent = _check_divisions(track_id, parent, frame, objects["area"].to_numpy(), yx,
                                            stack.shape[0])
        track_id, parent = _late_divisions(track_id, parent, frame, objects["area"].to_numpy(), yx,
                                           float(max_distance), stack.shape[0])
    track_id, parent_of = _renumber(track_id, parent)
    table = objects.assign(track_id=track_id, parent_track_id=parent_of[track_id - 1])
    table = table[columns].sort_values(["track_id", "frame"], kind="stable").reset_index(drop=True)
    return _relabel(stack, objects["label"].to_numpy(), track_id, starts), table


def _tracker(max_distance: float, gap_frames: int, divisions: bool):
    """laptrack's LAP tracker on squared distances, every link cut at ``max_distance`` px."""
    from laptrack import LapTrack

    cutoff = max_distance ** 2  # the costs are squared distances
    return LapTrack(
        metric="sqeuclidean", cutoff=cutoff,
        gap_closing_metric="sqeuclidean", gap_closing_cutoff=cutoff if gap_frames > 0 else False,
        gap_closing_max_frame_count=gap_frames + 1,
        splitting_metric="sqeuclidean", splitting_cutoff=cutoff if divisions else False,
        merging_cutoff=False,
        # every alternative (a track or segment starting or ending, a split refused) costs what a
        # move of max_distance does: a link, a gap closed or a division within the cut always
        # beats a start and an end (laptrack's default, the 90th percentile of the costs, turns
        # down divisions, whose daughters sit much further apart than a nucleus moves)
        track_start_cost=cutoff, track_end_cost=cutoff,
        segment_start_cost=cutoff, segment_end_cost=cutoff,
        no_splitting_cost=cutoff, no_merging_cost=cutoff,
    )


def _graph_tracks(graph, frame: np.ndarray, starts: np.ndarray) -> tuple[np.ndarray, dict]:
    """Track id (N,) int64 of every object and parent of every track ({track: parent track or 0})
    from laptrack's graph, whose nodes are (frame, index within frame) (:func:`_segments`)."""
    # (frame, index within frame) → row of `objects`; nodes in frame order, then label order
    nodes = [(int(t), int(i)) for t, i in zip(frame, np.arange(len(frame)) - starts[frame], strict=True)]
    successors = {n: sorted(graph.successors(n)) for n in graph.nodes if graph.out_degree(n)}
    predecessors = {n: sorted(graph.predecessors(n)) for n in graph.nodes if graph.in_degree(n)}
    track_of, parent = _segments(successors, predecessors, nodes)
    return np.array([track_of[n] for n in nodes], np.int64), parent


def _renumber(track_id: np.ndarray, parent: dict) -> tuple[np.ndarray, np.ndarray]:
    """Number the tracks 1, 2, ... in the order of their first object (objects in frame, then label
    order). Returns the new ``track_id`` (N,) int64 and ``parent_of`` (number of tracks,) int64: the
    new parent id of track ``k`` at ``k - 1`` (0: none)."""
    first_seen = np.unique(track_id, return_index=True)[1]
    old_ids = track_id[np.sort(first_seen)]
    renumber = dict(zip(old_ids.tolist(), range(1, old_ids.size + 1), strict=True))
    renumber[0] = 0
    track_id = np.array([renumber[k] for k in track_id.tolist()], np.int64)
    parent_of = np.array([renumber[parent[k]] for k in old_ids.tolist()], np.int64)
    return track_id, parent_of


def _relabel(stack: np.ndarray, label: np.ndarray, track_id: np.ndarray, starts: np.ndarray) -> np.ndarray:
    """``stack`` (T, ...) with each nucleus's label replaced by its track id: int32, 0 = background.

    ``label`` and ``track_id`` (N,) per object, objects in frame order (frame ``t``'s at
    ``starts[t]:starts[t + 1]``), labels sorted within a frame.
    """
    tracked = np.zeros(stack.shape, np.int32)
    for t in range(stack.shape[0]):
        rows = slice(starts[t], starts[t + 1])
        present, ids = label[rows], track_id[rows]
        if present.size:
            lookup_size = int(present.max()) + 1
            if lookup_size <= 4 * stack[t].size:
                lookup = np.zeros(lookup_size, np.int32)
                lookup[present] = ids
                tracked[t] = lookup[stack[t]]
            else:
                where = np.searchsorted(present, stack[t])
                hit = stack[t] > 0
                tracked[t][hit] = ids[where[hit]]
    return tracked
