"""How well :func:`pipeline.method.tracking.track_labels` links nuclei over time (issue 61).

Synthetic movies made from labelled DSB2018 ``stage1_train`` images, whose truth is known:

- **Images.** The first :data:`N_IMAGES` ids of ``stage1_train`` in sorted order with 20-150
  masks (labels from :func:`pipeline.data.kaggle.read_kaggle_sample`).
- **Movie.** :data:`FRAMES` frames. Every nucleus keeps its mask's shape and moves by a Gaussian
  random walk of :data:`STEP` px per axis per frame. :data:`P_LEAVE` of the nuclei, the ones
  nearest the border, also drift out of the field within 6-16 frames. :data:`P_DIVIDE` of the
  others divide once, at a frame drawn from 3 to ``FRAMES - 4``: the mother's track ends and two
  daughters (the mother's mask scaled by 1/√2, half its area) start 0.35 × its diameter either
  side of its centre along its long axis, each walking on its own. Overlaps are resolved by a fixed
  random drawing order; a nucleus with less than half its pixels in view (hidden or leaving) is
  left out of that frame.
- **Input.** Each frame relabelled in a random order (the tracker sees no identities); with
  segmentation errors, in each frame :data:`P_DROP` of the nuclei are dropped (never in two frames
  running), :data:`P_MERGE` merged with a touching neighbour, :data:`P_SPLIT` cut in two across
  their long axis.

Scores, each truth object matched to the input object it overlaps with IoU > 0.5:

- **links**: the truth's frame-to-frame links (a nucleus to itself in the next frame, a mother to
  each daughter) that the tracks join (same track, or a daughter track whose parent is the
  mother's track), over all truth links (``links``) and over those whose two ends were matched
  (``links matched``); ``link prec.``: the tracks' frame-to-frame links between matched objects
  that are truth links.
- **divisions**: the truth divisions found (the mother's track ends, both daughters' tracks start
  with it as parent), over the truth divisions whose three nuclei are in view; ``div. prec.``: the
  found ones over the divisions the tracker made.
- **gaps**: nuclei dropped for a frame whose track id is the same before and after.

Seeds are fixed (movie ``i`` uses seed ``i``). Default: laptrack (``track_labels``) on clean and
noisy labels; ``--compare`` adds trackpy and btrack (installed apart, e.g. ``pip install --target
/tmp/trackers trackpy btrack`` and ``PYTHONPATH=/tmp/trackers``) on the same objects with the same
scoring, and the time per frame of each; ``--factors`` sweeps the ``max_distance`` rule.

btrack 0.7.0's wheel ships a ``libtracker.so`` that needs GLIBCXX_3.4.32 (GCC 13's libstdc++) and
does not load on Debian 12; for the comparison it was rebuilt from the sources in the wheel:
``g++ -O3 -std=c++17 -fPIC -shared -I include -I DIR src/*.cc -o libs/libtracker.so`` in the
package folder, where ``DIR/eigen`` links to ``/usr/include/eigen3`` (apt ``libeigen3-dev``). Its
configuration is its example cell model (:data:`BTRACK_CONFIG`) with the search radius set to the
same ``max_distance``; trackpy links with ``search_range = max_distance`` and ``memory = 1``.

Measured (2 shared cores; laptrack 0.17.1, trackpy 0.7, btrack 0.7.0), 9,516 truth links, 45
divisions, 421 one-frame gaps:

    tracker  labels  links  links matched  link prec.  divisions  div. prec.  gaps   ms/frame
    laptrack clean   0.995  0.995          0.994       0.956      0.956       -      14-17
    laptrack errors  0.833  0.958          0.984       0.533      0.558       0.905  12-17
    trackpy  clean   0.991  0.991          0.995       0          -           -      4.6-5.3
    trackpy  errors  0.829  0.954          0.989       0          -           0.924  2.6-3.3
    btrack   clean   0.983  0.983          0.990       0.022      0.083       -      7-9
    btrack   errors  0.814  0.936          0.980       0.022      0.024       0.857  4.7-6.2

With issue 87's division rules (sisters alike, no fusing again, a one-nucleus mother refused,
daughters seen up to 4 frames late: :mod:`pipeline.method.tracking`), laptrack's divisions are
0.933 found at 0.955 precision on clean labels (was 0.956 / 0.956: one division lost to the
sisters' area rule) and 0.489 at 0.611 with errors (was 0.533 / 0.558); links unchanged
(``benchmarks/validate_tracking.py`` scores the late daughters and real movies).

``--factors 0.5,0.75,1,1.5`` (laptrack): links matched with errors 0.952 / 0.958 / 0.956 / 0.940,
divisions found (clean) 0.756 / 0.956 / 0.956 / 0.933: :data:`~pipeline.method.tracking.DISTANCE_FACTOR` 0.75.
Cost: a 100-frame 512 × 512 movie of 361 nuclei, 3.2-4.4 s (32-44 ms a frame), peak RSS +33 MB.

    python -m benchmarks.eval_tracking [--root /work/shared/dsb2018/stage1_train] [--compare] [--factors 0.5,0.75,1] [--no-cost]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage as ndi

from pipeline.method.metrics import iou_matrix
from pipeline.method.tracking import DISTANCE_FACTOR, default_max_distance, stack_objects, track_labels

ROOT = "/work/shared/dsb2018/stage1_train"
N_IMAGES, MIN_NUCLEI, MAX_NUCLEI = 10, 20, 150
FRAMES = 20
STEP = 2.0  # px per axis per frame (Gaussian sd)
P_LEAVE, P_DIVIDE = 0.10, 0.10
P_DROP, P_MERGE, P_SPLIT = 0.05, 0.03, 0.03


# --------------------------------------------------------------------------- the movies


def select_images(root: str) -> list[str]:
    """The first N_IMAGES sorted ids with MIN_NUCLEI..MAX_NUCLEI mask files."""
    chosen = []
    for sample in sorted(os.listdir(root)):
        masks = Path(root, sample, "masks")
        if masks.is_dir() and MIN_NUCLEI <= len(list(masks.glob("*.png"))) <= MAX_NUCLEI:
            chosen.append(sample)
            if len(chosen) == N_IMAGES:
                break
    return chosen


@dataclass
class Track:
    """One truth track: its shape (pixel offsets from its centre) and its centre in each frame."""

    dr: np.ndarray
    dc: np.ndarray
    start: int
    pos: dict = field(default_factory=dict)  # frame -> (y, x)
    parent: int = 0  # truth track id (1-based) of the mother, 0 if none


def _long_axis(dr: np.ndarray, dc: np.ndarray) -> np.ndarray:
    cov = np.cov(np.stack([dr, dc]).astype(np.float64)) if dr.size > 2 else np.eye(2)
    return np.linalg.eigh(cov)[1][:, -1]


def _shape_of(mask: np.ndarray, scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pixel offsets of a mask from its centroid (scaled by ``scale``) and the centroid."""
    rr, cc = np.nonzero(mask)
    centre = np.array([rr.mean(), cc.mean()])
    if scale != 1.0:
        box = mask[rr.min():rr.max() + 1, cc.min():cc.max() + 1]
        small = ndi.zoom(box.astype(np.uint8), scale, order=0) > 0
        r2, c2 = np.nonzero(small)
        return np.round(r2 - r2.mean()).astype(int), np.round(c2 - c2.mean()).astype(int), centre
    return np.round(rr - centre[0]).astype(int), np.round(cc - centre[1]).astype(int), centre


def make_movie(labels0: np.ndarray, seed: int, frames: int = FRAMES) -> tuple[np.ndarray, dict[int, int]]:
    """Truth movie (T, H, W) int32 of track ids, and {daughter track id: mother track id}."""
    rng = np.random.default_rng(seed)
    h, w = labels0.shape
    objects = ndi.find_objects(labels0)
    tracks: list[Track] = []
    for k, box in enumerate(objects, start=1):
        if box is None:
            continue
        dr, dc, c = _shape_of(labels0[box] == k)
        tracks.append(Track(dr, dc, 0, {0: c + [box[0].start, box[1].start]}))
    n0 = len(tracks)
    diam = np.array([2 * np.sqrt(t.dr.size / np.pi) for t in tracks])
    centres = np.array([t.pos[0] for t in tracks])
    border = np.minimum.reduce([centres[:, 0], h - centres[:, 0], centres[:, 1], w - centres[:, 1]])
    leavers = np.argsort(border, kind="stable")[: round(P_LEAVE * n0)]
    drift = np.zeros((n0, 2))
    for i in leavers:
        y, x = centres[i]
        direction = min([(y, (-1, 0)), (h - y, (1, 0)), (x, (0, -1)), (w - x, (0, 1))])[1]
        drift[i] = np.array(direction) * (border[i] + diam[i]) / rng.uniform(6, 16)
    others = np.setdiff1d(np.arange(n0), leavers)
    dividers = set(rng.choice(others, size=round(P_DIVIDE * n0), replace=False).tolist())
    for i in range(n0):
        t_div = int(rng.integers(3, frames - 3)) if i in dividers else frames
        track = tracks[i]
        for t in range(1, t_div):
            track.pos[t] = track.pos[t - 1] + rng.normal(0, STEP, 2) + drift[i]
        if t_div < frames:
            mask = np.zeros((np.ptp(track.dr) + 1, np.ptp(track.dc) + 1), bool)
            mask[track.dr - track.dr.min(), track.dc - track.dc.min()] = True
            axis = _long_axis(track.dr, track.dc)
            for sign in (-1, 1):
                dr, dc, _ = _shape_of(mask, 1 / np.sqrt(2))
                daughter = Track(dr, dc, t_div, parent=i + 1)
                daughter.pos[t_div] = track.pos[t_div - 1] + sign * 0.35 * diam[i] * axis + rng.normal(0, STEP / 2, 2)
                for t in range(t_div + 1, frames):
                    daughter.pos[t] = daughter.pos[t - 1] + rng.normal(0, STEP, 2)
                tracks.append(daughter)
    order = rng.permutation(len(tracks))
    full = np.array([0] + [t.dr.size for t in tracks])
    movie = np.zeros((frames, h, w), np.int32)
    for t in range(frames):
        frame = movie[t]
        for i in order:
            if t not in tracks[i].pos:
                continue
            y, x = np.round(tracks[i].pos[t]).astype(int)
            r, c = tracks[i].dr + y, tracks[i].dc + x
            keep = (r >= 0) & (r < h) & (c >= 0) & (c < w)
            frame[r[keep], c[keep]] = i + 1
        seen = np.bincount(frame.ravel(), minlength=full.size)
        gone = seen < 0.5 * full
        gone[0] = False
        frame[gone[frame]] = 0
    parents = {i + 1: t.parent for i, t in enumerate(tracks) if t.parent}
    return movie, parents


def _relabel_randomly(frame: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    present = np.unique(frame[frame > 0])
    lookup = np.zeros(int(frame.max()) + 1, np.int32)
    lookup[present] = rng.permutation(present.size) + 1
    return lookup[frame]


def add_errors(movie: np.ndarray, seed: int) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """Segmentation errors on a truth movie: (T, H, W) int32 labels, and the (frame, truth id) dropped."""
    rng = np.random.default_rng(1000 + seed)
    out = movie.copy()
    dropped, last_dropped = [], set()
    ring = ndi.generate_binary_structure(2, 1)
    for t, frame in enumerate(out):
        present = np.unique(frame[frame > 0])
        shuffled = rng.permutation(present)
        n_drop, n_merge, n_split = (round(p * present.size) for p in (P_DROP, P_MERGE, P_SPLIT))
        drop = [g for g in shuffled if g not in last_dropped][:n_drop]
        rest = [g for g in shuffled if g not in drop]
        merge, split = rest[:n_merge], rest[n_merge:n_merge + n_split]
        used = set(drop) | set(split)
        boxes = ndi.find_objects(frame)
        for g in merge:
            if g in used:
                continue
            box = tuple(slice(max(s.start - 3, 0), s.stop + 3) for s in boxes[g - 1])
            crop = frame[box]
            around = ndi.binary_dilation(crop == g, ring, iterations=2) & (crop != g) & (crop > 0)
            others = [o for o in np.unique(crop[around]) if o not in used]
            if not others:
                continue
            partner = max(others, key=lambda o: int((crop[around] == o).sum()))
            frame[frame == partner] = g
            used |= {g, partner}
        next_label = int(movie.max()) + 1
        for g in split:
            rr, cc = np.nonzero(frame[boxes[g - 1]] == g)
            if rr.size < 8:
                continue
            dr, dc = rr - rr.mean(), cc - cc.mean()
            side = dr * _long_axis(dr, dc)[0] + dc * _long_axis(dr, dc)[1] > 0
            sub = frame[boxes[g - 1]]
            sub[rr[side], cc[side]] = next_label
            next_label += 1
        for g in drop:
            frame[frame == g] = 0
            dropped.append((t, int(g)))
        last_dropped = set(drop)
    return out, dropped


# --------------------------------------------------------------------------- scoring


def _matches(truth: np.ndarray, labels: np.ndarray) -> dict[int, int]:
    """{truth id: input label} of the pairs with IoU > 0.5 in one frame."""
    g, i = np.unique(truth[truth > 0]), np.unique(labels[labels > 0])
    if g.size == 0 or i.size == 0:
        return {}
    gi, ii = np.nonzero(iou_matrix(truth, labels) > 0.5)
    return dict(zip(g[gi].tolist(), i[ii].tolist(), strict=True))


def score(truth: np.ndarray, parents: dict[int, int], labels: np.ndarray, tracks: pd.DataFrame,
          dropped: list[tuple[int, int]] = ()) -> dict[str, int]:
    """Counts of truth links, divisions and gaps found (see the module's docstring).

    ``tracks``: ``track_id, parent_track_id, frame, label`` (parent 0 when none).
    """
    frames = truth.shape[0]
    match = [_matches(truth[t], labels[t]) for t in range(frames)]
    track_of = {(int(f), int(lab)): int(k) for f, lab, k in tracks[["frame", "label", "track_id"]].to_numpy()}
    parent = dict(zip(tracks["track_id"], tracks["parent_track_id"], strict=False))
    first = tracks.groupby("track_id")["frame"].min().to_dict()
    last = tracks.groupby("track_id")["frame"].max().to_dict()

    def linked(t: int, a: int, b: int) -> bool:
        ka, kb = track_of.get((t, a)), track_of.get((t + 1, b))
        if ka is None or kb is None:
            return False
        return ka == kb or (parent.get(kb, 0) == ka and last[ka] == t and first[kb] == t + 1)

    present = [set(np.unique(truth[t][truth[t] > 0]).tolist()) for t in range(frames)]
    first_truth = {g: min(t for t in range(frames) if g in present[t]) for g in set().union(*present)}
    counts = dict.fromkeys(["links", "links_found", "links_matched", "pred_links", "pred_links_true",
                            "divisions", "divisions_found", "pred_divisions", "gaps", "gaps_closed"], 0)
    truth_links = set()
    for t in range(frames - 1):
        pairs = [(g, g) for g in present[t] & present[t + 1]]
        pairs += [(m, d) for d, m in parents.items() if d in present[t + 1] and first_truth.get(d) == t + 1
                  and m in present[t]]
        for g1, g2 in pairs:
            counts["links"] += 1
            a, b = match[t].get(g1), match[t + 1].get(g2)
            if a is None or b is None:
                continue
            truth_links.add((t, a, b))
            counts["links_matched"] += 1
            counts["links_found"] += linked(t, a, b)
    # the tracks' own links between matched objects
    matched_labels = [set(m.values()) for m in match]
    ordered = tracks.sort_values(["track_id", "frame"])
    rows = ordered[["track_id", "frame", "label"]].to_numpy()
    pred_links = [(int(f1), int(l1), int(l2)) for (k1, f1, l1), (k2, f2, l2) in zip(rows[:-1], rows[1:], strict=True)
                  if k1 == k2 and f2 == f1 + 1]
    ends = {int(k): (int(f), int(lab)) for k, f, lab in rows[np.r_[rows[1:, 0] != rows[:-1, 0], True]]}
    starts = {int(k): (int(f), int(lab)) for k, f, lab in rows[np.r_[True, rows[1:, 0] != rows[:-1, 0]]]}
    for k, p in parent.items():
        if p and p in ends and ends[p][0] + 1 == starts[k][0]:
            pred_links.append((ends[p][0], ends[p][1], starts[k][1]))
    for t, a, b in pred_links:
        if a in matched_labels[t] and b in matched_labels[t + 1]:
            counts["pred_links"] += 1
            counts["pred_links_true"] += (t, a, b) in truth_links
    # divisions
    children: dict[int, list[int]] = {}
    for d, m in parents.items():
        children.setdefault(m, []).append(d)
    for m, (d1, d2) in children.items():
        t = first_truth.get(d1)
        if t is None or t == 0 or m not in present[t - 1] or d1 not in present[t] or d2 not in present[t]:
            continue
        counts["divisions"] += 1
        a, b1, b2 = match[t - 1].get(m), match[t].get(d1), match[t].get(d2)
        if None in (a, b1, b2):
            continue
        km, k1, k2 = track_of.get((t - 1, a)), track_of.get((t, b1)), track_of.get((t, b2))
        if None in (km, k1, k2):
            continue
        counts["divisions_found"] += bool(k1 != k2 and parent.get(k1) == km and parent.get(k2) == km
                                          and first[k1] == t and first[k2] == t and last[km] == t - 1)
    counts["pred_divisions"] = int((tracks.drop_duplicates("track_id")["parent_track_id"] > 0).sum()) // 2
    for t, g in dropped:
        if 0 < t < frames - 1 and g in present[t - 1] and g in present[t + 1]:
            a, b = match[t - 1].get(g), match[t + 1].get(g)
            if a is None or b is None:
                continue
            counts["gaps"] += 1
            counts["gaps_closed"] += track_of.get((t - 1, a)) is not None and \
                track_of.get((t - 1, a)) == track_of.get((t + 1, b))
    return counts


# --------------------------------------------------------------------------- trackers


def run_laptrack(labels: np.ndarray, max_distance: float | None) -> pd.DataFrame:
    return track_labels(labels, max_distance=max_distance)[1]


def run_trackpy(labels: np.ndarray, max_distance: float | None) -> pd.DataFrame:
    import trackpy

    trackpy.quiet()
    objects = stack_objects(labels)
    distance = max_distance or default_max_distance(objects["area"].to_numpy())
    linked = trackpy.link(objects.rename(columns={"centroid_y": "y", "centroid_x": "x"}), search_range=distance,
                          memory=1, pos_columns=["y", "x"], t_column="frame")
    return pd.DataFrame({"track_id": linked["particle"].to_numpy() + 1, "parent_track_id": 0,
                         "frame": linked["frame"].to_numpy(), "label": linked["label"].to_numpy()})


#: btrack's example cell configuration (btrack's ``models/cell_config.json``), 2D, search radius set per movie.
BTRACK_CONFIG = {"TrackerConfig": {
    "MotionModel": {"name": "cell_motion", "dt": 1.0, "measurements": 3, "states": 6, "accuracy": 7.5,
                    "prob_not_assign": 0.001, "max_lost": 5,
                    "A": {"matrix": [1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0,
                                     0, 1, 0, 0, 0, 0, 0, 0, 1]},
                    "H": {"matrix": [1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0]},
                    "P": {"sigma": 150.0, "matrix": [0.1, 0, 0, 0, 0, 0, 0, 0.1, 0, 0, 0, 0, 0, 0, 0.1, 0, 0, 0, 0, 0,
                                                     0, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1]},
                    "G": {"sigma": 15.0, "matrix": [0.5, 0.5, 0.5, 1, 1, 1]},
                    "R": {"sigma": 5.0, "matrix": [1, 0, 0, 0, 1, 0, 0, 0, 1]}},
    "ObjectModel": {},
    "HypothesisModel": {"name": "cell_hypothesis",
                        "hypotheses": ["P_FP", "P_init", "P_term", "P_link", "P_branch", "P_dead"],
                        "lambda_time": 5.0, "lambda_dist": 3.0, "lambda_link": 10.0, "lambda_branch": 50.0,
                        "eta": 1e-10, "theta_dist": 20.0, "theta_time": 5.0, "dist_thresh": 40, "time_thresh": 2,
                        "apop_thresh": 5, "segmentation_miss_rate": 0.1, "apoptosis_rate": 0.001, "relax": True}}}


def run_btrack(labels: np.ndarray, max_distance: float | None) -> pd.DataFrame:
    import logging

    import btrack
    from btrack.io.utils import objects_from_array

    logging.getLogger("btrack").setLevel(logging.ERROR)
    objects = stack_objects(labels)
    distance = max_distance or default_max_distance(objects["area"].to_numpy())
    array = objects[["frame", "centroid_x", "centroid_y"]].to_numpy(np.float64)
    array = np.column_stack([array, np.zeros(len(array))])  # t, x, y, z
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp, "cell_config.json")
        config.write_text(json.dumps(BTRACK_CONFIG))
        with btrack.BayesianTracker(verbose=False) as tracker:
            tracker.configure(config)
            tracker.max_search_radius = distance
            tracker.append(objects_from_array(array))
            tracker.volume = ((0, labels.shape[2]), (0, labels.shape[1]))
            tracker.track(step_size=100)
            sys.stdout.flush()
            saved = os.dup(1)
            with open(os.devnull, "w") as null:  # GLPK prints its progress on the C stdout
                os.dup2(null.fileno(), 1)
                try:
                    tracker.optimize()
                finally:
                    os.dup2(saved, 1)
                    os.close(saved)
            rows = []
            for tr in tracker.tracks:
                parent = tr.parent if tr.parent != tr.ID else 0
                for ref in tr.refs:
                    if ref >= 0:
                        rows.append((tr.ID, parent, ref))
    table = pd.DataFrame(rows, columns=["track_id", "parent_track_id", "ref"])
    table["frame"] = objects["frame"].to_numpy()[table["ref"]]
    table["label"] = objects["label"].to_numpy()[table["ref"]]
    return table.drop(columns="ref")


TRACKERS = {"laptrack": run_laptrack, "trackpy": run_trackpy, "btrack": run_btrack}


def cost(frames: int = 100, size: int = 512, spacing: int = 26, radius: int = 9) -> None:
    """Time of :func:`track_labels` on a ``frames``-frame ``size``² movie of discs on a jittered grid."""
    import resource

    from skimage.draw import disk

    rng = np.random.default_rng(0)
    labels0 = np.zeros((size, size), np.int32)
    centres = [(r + rng.integers(-3, 4), c + rng.integers(-3, 4))
               for r in range(spacing // 2, size - spacing // 2, spacing)
               for c in range(spacing // 2, size - spacing // 2, spacing)]
    for k, centre in enumerate(centres, start=1):
        labels0[disk(centre, radius * rng.uniform(0.8, 1.1), shape=labels0.shape)] = k
    truth, _ = make_movie(labels0, 0, frames)
    labels = np.stack([_relabel_randomly(f, rng) for f in truth])
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    t0 = time.perf_counter()
    tracked, tracks = track_labels(labels)
    seconds = time.perf_counter() - t0
    grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
    print(f"cost: {frames} frames of {size}x{size}, {len(centres)} nuclei in frame 0, {len(tracks)} nuclei in all: "
          f"track_labels {seconds:.1f} s ({1000 * seconds / frames:.0f} ms/frame), peak RSS +{grown:.0f} MB "
          f"(the label stack: {labels.nbytes / 2**20:.0f} MB)")


# --------------------------------------------------------------------------- main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", default=ROOT)
    parser.add_argument("--compare", action="store_true", help="also trackpy and btrack")
    parser.add_argument("--factors", default="", help="max_distance as these multiples of the median diameter")
    parser.add_argument("--no-cost", action="store_true", help="skip the 100-frame 512x512 timing")
    args = parser.parse_args()
    from pipeline.data.kaggle import read_kaggle_sample

    ids = select_images(args.root)
    print(f"images ({len(ids)}): {', '.join(i[:8] for i in ids)}")
    movies = []
    started = time.perf_counter()
    for seed, sample in enumerate(ids):
        truth, parents = make_movie(read_kaggle_sample(Path(args.root, sample))[1], seed)
        rng = np.random.default_rng(2000 + seed)
        clean = np.stack([_relabel_randomly(f, rng) for f in truth])
        noisy, dropped = add_errors(truth, seed)
        noisy = np.stack([_relabel_randomly(f, rng) for f in noisy])
        movies.append((truth, parents, clean, noisy, dropped))
    n_nuclei = sum(int(np.unique(m[0][0]).size - 1) for m in movies)
    n_div = sum(len(m[1]) // 2 for m in movies)
    print(f"{len(movies)} movies of {FRAMES} frames, {n_nuclei} nuclei in frame 0, {n_div} divisions; "
          f"made in {time.perf_counter() - started:.1f} s")

    trackers = list(TRACKERS) if args.compare else ["laptrack"]
    factors = [float(f) for f in args.factors.split(",")] if args.factors else [None]
    results = []
    for name in trackers:
        for factor in factors:
            for condition in ("clean", "errors"):
                total: dict[str, int] = {}
                seconds = 0.0
                for truth, parents, clean, noisy, dropped in movies:
                    labels = clean if condition == "clean" else noisy
                    distance = None
                    if factor is not None:
                        distance = factor * default_max_distance(stack_objects(labels)["area"].to_numpy()) / DISTANCE_FACTOR
                    t0 = time.perf_counter()
                    tracks = TRACKERS[name](labels, distance)
                    seconds += time.perf_counter() - t0
                    counts = score(truth, parents, labels, tracks, dropped if condition == "errors" else ())
                    total = {k: total.get(k, 0) + v for k, v in counts.items()}
                results.append({
                    "tracker": name, "factor": factor or DISTANCE_FACTOR, "labels": condition,
                    "links": total["links_found"] / total["links"],
                    "links matched": total["links_found"] / max(total["links_matched"], 1),
                    "link prec.": total["pred_links_true"] / max(total["pred_links"], 1),
                    "divisions": total["divisions_found"] / max(total["divisions"], 1),
                    "div. prec.": total["divisions_found"] / max(total["pred_divisions"], 1),
                    "gaps": (total["gaps_closed"] / total["gaps"]) if total["gaps"] else float("nan"),
                    "ms/frame": 1000 * seconds / (FRAMES * len(movies)),
                    "n": f"{total['links']} links, {total['divisions']} div., {total['pred_divisions']} pred. div., "
                         f"{total['gaps']} gaps",
                })
                print(pd.DataFrame(results[-1:]).to_string(index=False, float_format=lambda v: f"{v:.3f}"),
                      flush=True)
    print()
    print(pd.DataFrame(results).to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    if not args.no_cost:
        cost()
    print(f"total {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
