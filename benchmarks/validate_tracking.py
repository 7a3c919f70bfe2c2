"""``nuclei segment --track`` checked against another lab's tracking ground truth (issue 87).

In one run, side by side:

- **Real** (``gowt1_01``: Cell Tracking Challenge Fluo-N2DH-GOWT1 sequence 01, 92 frames downsampled
  2× to 512², 27 tracks, 2 divisions; ``../shared/validation/README.md``). Each frame segmented
  with the shipped default model by the function ``nuclei segment`` runs on a time-lapse
  (:func:`pipeline.batch.stack_file._segment_frames`: every frame at the first frame's diameter),
  then linked by :func:`pipeline.method.tracking.track_labels` (the tool) and, on the same labels,
  by :func:`nearest_neighbour` (the baseline: each nucleus to the nearest one of the next frame
  within the same ``max_distance``, mutual nearest first; no gaps, no divisions).
- **Shifted, no division**: a real field (``gowt1_01`` frame 0 and its labels from the same
  segmentation) moved a few px each frame for :data:`SHIFT_FRAMES` frames and segmented anew each
  frame: any division reported is invented.
- **Shifted fields** (full run): :data:`N_FIELDS` DSB2018 ``stage1_train`` fluorescence fields
  (:func:`fluorescence_fields`), each shifted for 4 and for :data:`SHIFT_FRAMES` frames: the
  divisions reported.
- **Synthetic**: the first :data:`N_SYNTHETIC` movies of ``benchmarks/eval_tracking.py`` (DSB2018
  masks moving, leaving, dividing), clean and with segmentation errors, scored as there.

Scores:

- **TRA, DET**: the Cell Tracking Challenge's own measures (``py-ctcmetrics``: the result written in
  the CTC's format, ``res_track.txt`` and ``maskTTT.tif``; a track with a gap is cut into pieces
  joined parent to child, as the CTC format wants).
- **nuclei detected**: ground-truth markers covered more than half by one nucleus (the CTC's match).
- **links reproduced**: the ground truth's links (a nucleus to itself in its next frame present, a
  mother's last nucleus to each daughter's first) whose two matched nuclei the tracks join (same
  track, or the daughter's track's parent is the mother's).
- **divisions found**: the ground truth's divisions whose mother's last nucleus lies on a track
  that the tracks give two daughter tracks, each holding one of the daughters' matched nuclei
  within :data:`DIVISION_TOLERANCE` frames of its first; **division precision**: those over the
  divisions the tracks report. ``BC(i)`` is the CTC's branching correctness (an F1 of divisions)
  with ``i`` frames of tolerance on the mother's end and the daughters' starts.

Segmentations are cached in ``$TMPDIR/nuclei_validate_tracking/`` (by model folder and frames).
``--small`` (CI): frames :data:`SMALL_FRAMES` of ``gowt1_01`` (a division among them), 5-frame
shifted movies, 2 synthetic movies: about a minute on 2 cores with an empty cache.

    python -m benchmarks.validate_tracking [--small] [--root ../shared/validation/gowt1_01]
"""

from __future__ import annotations

import argparse
import hashlib
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

SHARED = Path(__file__).resolve().parents[2] / "shared"
ROOT = SHARED / "validation/gowt1_01"
DSB_ROOT = str(SHARED / "dsb2018/stage1_train")
#: --small: ten frames of gowt1_01 around its first division (man_track.txt: track 16 ends at frame
#: 16, its daughters start at 17 and 21; the other division's daughters are never segmented).
SMALL_FRAMES = range(13, 23)
SHIFT_FRAMES = 8
#: px per frame (y, x) of the shifted movie.
SHIFT_STEP = (3, 2)
N_SYNTHETIC = 4
#: Fluorescence fields of DSB2018 shifted frame by frame (the full run).
N_FIELDS = 12
#: Frames a daughter may start after the mother's end and still count as found.
DIVISION_TOLERANCE = 5
#: Synthetic "late daughters": each daughter missing from up to this many of her first frames.
LATE_FRAMES = 3
CACHE = Path(tempfile.gettempdir(), "nuclei_validate_tracking")


# --------------------------------------------------------------------------- the real set


def read_truth(root: Path, frames: range) -> tuple[np.ndarray, dict[int, int]]:
    """The CTC TRA markers of ``frames`` (T, H, W) int32 and {daughter track: mother track} of man_track.txt."""
    import tifffile

    stack = np.stack([tifffile.imread(root / "TRA" / f"man_track{t:03d}.tif") for t in frames]).astype(np.int32)
    table = np.loadtxt(root / "TRA" / "man_track.txt", dtype=np.int64, ndmin=2)
    return stack, {int(k): int(p) for k, _, _, p in table if p}


def read_frames(root: Path, frames: range) -> np.ndarray:
    """The movie's frames (T, H, W) as stored."""
    from pipeline.files.io import read_image

    return np.stack([read_image(root / "frames" / f"t{t:03d}.png") for t in frames])


def segment_movie(frames: np.ndarray, key: str) -> np.ndarray:
    """(T, H, W) int32 labels of ``frames`` as ``nuclei segment`` makes them for a time-lapse (the
    default settings and shipped model), cached under :data:`CACHE` by model folder, the code that
    segments (``pipeline/model``, ``method``, ``config``, ``batch/stack_file.py``) and ``key``."""
    from pipeline.batch.settings import Settings, load_segmenter
    from pipeline.batch.stack_file import _segment_frames

    settings = Settings.from_params({})
    model = settings.model_dir
    package = Path(__file__).resolve().parents[1] / "pipeline"
    code = [p for folder in ("model", "method", "config") for p in (package / folder).glob("*.py")
            if p.name != "tracking.py"] + [package / "batch" / "stack_file.py"]
    stamp = "".join(f"{p.name}{p.stat().st_mtime_ns}" for p in sorted(model.rglob("*")) if p.is_file())
    stamp += hashlib.sha1(b"".join(p.read_bytes() for p in sorted(code))).hexdigest()
    digest = hashlib.sha1(f"{model}{stamp}{key}{frames.shape}".encode()).hexdigest()[:16]
    path = CACHE / f"{digest}.npz"
    if path.exists():
        return np.load(path)["labels"]
    started = time.perf_counter()
    labels = _segment_frames(frames, load_segmenter(settings), settings, [])[0]
    print(f"segmented {len(frames)} frames in {time.perf_counter() - started:.0f} s ({key}; cached in {CACHE})")
    CACHE.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(".part.npz")
    np.savez_compressed(partial, labels=labels)
    partial.replace(path)
    return labels


def shifted_movie(image: np.ndarray, frames: int, step: tuple[int, int] = SHIFT_STEP) -> np.ndarray:
    """(frames, H - frames·dy, W - frames·dx) crops of one field, the crop moved by ``step`` px a
    frame: the same nuclei, each moved the same, no division."""
    dy, dx = step
    h, w = image.shape[0] - frames * dy, image.shape[1] - frames * dx
    return np.stack([image[t * dy:t * dy + h, t * dx:t * dx + w] for t in range(frames)])


# --------------------------------------------------------------------------- trackers


def nearest_neighbour(labels: np.ndarray, max_distance: float | None = None) -> pd.DataFrame:
    """The baseline: each nucleus linked to the nearest nucleus of the next frame within
    ``max_distance`` px (default :func:`pipeline.method.tracking.default_max_distance`), nearest
    pairs first, each nucleus used once; no gaps, no divisions. Table as ``track_labels``'s."""
    from scipy.spatial.distance import cdist

    from pipeline.method.tracking import default_max_distance, stack_objects

    objects = stack_objects(labels)
    limit = max_distance or default_max_distance(objects["area"].to_numpy())
    frame, yx = objects["frame"].to_numpy(), objects[["centroid_y", "centroid_x"]].to_numpy()
    track = np.zeros(len(objects), np.int64)
    starts = np.searchsorted(frame, np.arange(labels.shape[0] + 1))
    next_id = 1
    for t in range(labels.shape[0]):
        here = np.arange(starts[t], starts[t + 1])
        if t > 0 and here.size and starts[t] > starts[t - 1]:
            before = np.arange(starts[t - 1], starts[t])
            d = cdist(yx[before], yx[here])
            for flat in np.argsort(d, axis=None):
                i, j = np.unravel_index(flat, d.shape)
                if d[i, j] > limit:
                    break
                if track[here[j]] == 0 and not np.isin(track[before[i]], track[here]):
                    track[here[j]] = track[before[i]]
        for j in here[track[here] == 0]:
            track[j], next_id = next_id, next_id + 1
    return objects.assign(track_id=track, parent_track_id=0)[["track_id", "parent_track_id", "frame", "label",
                                                              "centroid_y", "centroid_x", "area"]]


def relabel(labels: np.ndarray, tracks: pd.DataFrame) -> np.ndarray:
    """``labels`` (T, H, W) with each nucleus given its track id (the table's ``frame, label → track_id``)."""
    out = np.zeros(labels.shape, np.int32)
    for t, rows in tracks.groupby("frame"):
        lookup = np.zeros(int(labels[t].max()) + 1, np.int32)
        lookup[rows["label"].to_numpy()] = rows["track_id"].to_numpy()
        out[t] = lookup[labels[t]]
    return out


# --------------------------------------------------------------------------- scores


def ctc_pieces(stack: np.ndarray, parents: dict[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """A track-labelled stack (T, H, W) and {track: parent track} in the CTC's format: each track
    cut where it skips a frame, a piece after a gap a new label whose parent is the piece before.
    Returns the stack relabelled and the (n, 4) ``L B E P`` table of ``res_track.txt``."""
    out = stack.astype(np.int32, copy=True)
    present = {}
    for t, frame in enumerate(stack):
        for k in np.unique(frame[frame > 0]).tolist():
            present.setdefault(k, []).append(t)
    next_label, last_piece, rows = max(present, default=0) + 1, {}, []
    for k in sorted(present, key=lambda k: present[k][0]):
        times = np.array(present[k])
        runs = np.split(times, np.flatnonzero(np.diff(times) > 1) + 1)
        parent = last_piece.get(parents.get(k, 0), 0) if parents.get(k, 0) in last_piece else 0
        label = k
        for i, run in enumerate(runs):
            if i:
                label, next_label = next_label, next_label + 1
                for t in run:
                    out[t][stack[t] == k] = label
            rows.append((label, int(run[0]), int(run[-1]), parent))
            parent = label
        last_piece[k] = label
    table = np.array(rows, np.int64).reshape(-1, 4)
    return out, table


def write_ctc(folder: Path, stack: np.ndarray, parents: dict[int, int], prefix: str, table_name: str) -> None:
    """``folder/<prefix>TTT.tif`` and ``folder/<table_name>`` of a track-labelled stack (:func:`ctc_pieces`)."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    pieces, table = ctc_pieces(stack, parents)
    for t, frame in enumerate(pieces):
        tifffile.imwrite(folder / f"{prefix}{t:03d}.tif", frame.astype(np.uint16))
    np.savetxt(folder / table_name, table, fmt="%d")


def ctc_scores(truth: np.ndarray, truth_parents: dict[int, int], tracked: np.ndarray,
               parents: dict[int, int]) -> dict[str, float]:
    """TRA, DET, BC(1) and BC(3) of py-ctcmetrics for a track-labelled result against the truth markers."""
    import contextlib
    import io

    from ctc_metrics.scripts.evaluate import evaluate_sequence

    with tempfile.TemporaryDirectory() as tmp:
        write_ctc(Path(tmp, "GT", "TRA"), truth, truth_parents, "man_track", "man_track.txt")
        write_ctc(Path(tmp, "RES"), tracked, parents, "mask", "res_track.txt")
        with contextlib.redirect_stdout(io.StringIO()):
            result = evaluate_sequence(str(Path(tmp, "RES")), str(Path(tmp, "GT")), ["TRA", "DET", "BC"], threads=1)
    return {"TRA": result["TRA"], "DET": result["DET"], **{f"BC({i})": result.get(f"BC({i})", float("nan"))
                                                             for i in (1, 3)}}


def marker_matches(truth: np.ndarray, labels: np.ndarray) -> list[dict[int, int]]:
    """Per frame, {truth marker: nucleus of ``labels`` covering more than half of it} (the CTC's match)."""
    out = []
    for g, r in zip(truth, labels, strict=True):
        codes = g.astype(np.int64).ravel() * (int(r.max()) + 1) + r.ravel()
        pairs, counts = np.unique(codes[g.ravel() > 0], return_counts=True)
        gi, ri = np.divmod(pairs, int(r.max()) + 1)
        area = np.bincount(g.ravel())
        keep = (ri > 0) & (counts > 0.5 * area[gi])
        out.append(dict(zip(gi[keep].tolist(), ri[keep].tolist(), strict=True)))
    return out


def lineage_scores(truth: np.ndarray, truth_parents: dict[int, int], tracked: np.ndarray,
                   parents: dict[int, int]) -> dict[str, float]:
    """Nuclei detected, links reproduced, divisions found / true / reported (see the module's docstring).

    ``tracked``: (T, H, W) track ids; ``parents`` {track: mother track} of the result."""
    match = marker_matches(truth, tracked)
    frames_of: dict[int, list[int]] = {}
    for t, frame in enumerate(truth):
        for g in np.unique(frame[frame > 0]).tolist():
            frames_of.setdefault(g, []).append(t)

    def ancestors(k: int) -> set[int]:
        seen = set()
        while parents.get(k, 0) and k not in seen:
            seen.add(k)
            k = parents[k]
        return seen | {k}

    links = [((t1, g), (t2, g)) for g, ts in frames_of.items() for t1, t2 in zip(ts[:-1], ts[1:], strict=True)]
    links += [((frames_of[m][-1], m), (frames_of[d][0], d)) for d, m in truth_parents.items()
              if d in frames_of and m in frames_of]
    joined = 0
    for (t1, g1), (t2, g2) in links:
        a, b = match[t1].get(g1), match[t2].get(g2)
        joined += a is not None and b is not None and (a == b or a in ancestors(b))
    children: dict[int, list[int]] = {}
    for d, m in truth_parents.items():
        children.setdefault(m, []).append(d)
    result_children: dict[int, list[int]] = {}
    for k, p in parents.items():
        if p:
            result_children.setdefault(p, []).append(k)
    divisions = found = 0
    for m, kids in children.items():
        if m not in frames_of or len(kids) < 2 or not all(d in frames_of for d in kids):
            continue
        divisions += 1
        end = frames_of[m][-1]
        mothers = {match[t].get(m) for t in frames_of[m][-DIVISION_TOLERANCE - 1:]} - {None}
        mothers |= {parents.get(k, 0) for k in mothers} - {0}

        reached = [{match[t].get(d) for t in frames_of[d] if t - end <= DIVISION_TOLERANCE + 1} - {None}
                   for d in kids[:2]]
        found += any(_two_sides(result_children.get(mother, []), reached, ancestors) for mother in mothers)
    detected = sum(len(m) for m in match)
    return {"nuclei detected": detected / max(sum(len(v) for v in frames_of.values()), 1),
            "links reproduced": joined / max(len(links), 1), "divisions": divisions, "divisions found": found,
            "divisions reported": len([k for k, v in result_children.items() if len(v) >= 2])}


def _two_sides(kids: list[int], reached: list[set[int]], ancestors) -> bool:
    """Whether two different tracks of ``kids`` each lead to (are ancestors of) a nucleus of one daughter."""
    sides = [{c for c in kids for r in daughter if c in ancestors(r)} for daughter in reached]
    return any(a != b for a in sides[0] for b in sides[1])


# --------------------------------------------------------------------------- runs


def parents_of(tracks: pd.DataFrame) -> dict[int, int]:
    """{track: mother track} of a tracks table (the tracks with a parent)."""
    first = tracks.drop_duplicates("track_id")
    return {int(k): int(p) for k, p in first[["track_id", "parent_track_id"]].to_numpy() if p}


def score_trackers(name: str, labels: np.ndarray, truth: np.ndarray | None, truth_parents: dict[int, int],
                   ctc: bool = True) -> list[dict]:
    """The tool and the baseline on one segmented movie: a row each."""
    from pipeline.method.tracking import track_labels

    rows = []
    for tracker in ("tool", "nearest"):
        started = time.perf_counter()
        if tracker == "tool":
            tracked, tracks = track_labels(labels)
        else:
            tracks = nearest_neighbour(labels)
            tracked = relabel(labels, tracks)
        row = {"set": name, "tracker": tracker, "s": time.perf_counter() - started}
        parents = parents_of(tracks)
        if truth is not None:
            if ctc:
                row.update(ctc_scores(truth, truth_parents, tracked, parents))
            row.update(lineage_scores(truth, truth_parents, tracked, parents))
        else:
            row["divisions reported"] = len(set(parents.values()))
        rows.append(row)
    return rows


def hide_daughters(truth: np.ndarray, parents: dict[int, int], seed: int) -> np.ndarray:
    """``truth`` with each daughter left out of her first 0 to :data:`LATE_FRAMES` frames (uniform):
    daughters dim or unsegmented just after mitosis. (T, H, W) int32."""
    rng = np.random.default_rng(3000 + seed)
    out = truth.copy()
    for d in sorted(parents):
        frames = np.flatnonzero((truth == d).any(axis=(1, 2)))
        for t in frames[:int(rng.integers(0, LATE_FRAMES + 1))]:
            out[t][out[t] == d] = 0
    return out


def synthetic_rows(n_movies: int) -> list[dict]:
    """The tool and the baseline on ``n_movies`` of eval_tracking's movies, clean and with errors."""
    from benchmarks.eval_tracking import (
        _relabel_randomly,
        add_errors,
        make_movie,
        run_laptrack,
        score,
        select_images,
    )
    from pipeline.data.kaggle import read_kaggle_sample

    totals: dict[tuple[str, str], dict[str, int]] = {}
    for seed, sample in enumerate(select_images(DSB_ROOT)[:n_movies]):
        truth, parents = make_movie(read_kaggle_sample(Path(DSB_ROOT, sample))[1], seed)
        rng = np.random.default_rng(2000 + seed)
        clean = np.stack([_relabel_randomly(f, rng) for f in truth])
        noisy, dropped = add_errors(truth, seed)
        noisy = np.stack([_relabel_randomly(f, rng) for f in noisy])
        late = hide_daughters(truth, parents, seed)
        for tracker in ("tool", "nearest"):
            labels = np.stack([_relabel_randomly(f, rng) for f in late])
            tracks = run_laptrack(labels, None) if tracker == "tool" else nearest_neighbour(labels)
            scores = lineage_scores(late, parents, relabel(labels, tracks), parents_of(tracks))
            key = ("late daughters", tracker)
            totals[key] = {k: totals.get(key, {}).get(k, 0) + v for k, v in scores.items()}
        for condition, labels in (("clean", clean), ("errors", noisy)):
            for tracker, run in (("tool", run_laptrack), ("nearest", nearest_neighbour)):
                counts = score(truth, parents, labels, run(labels, None), dropped if condition == "errors" else ())
                key = (condition, tracker)
                totals[key] = {k: totals.get(key, {}).get(k, 0) + v for k, v in counts.items()}
    rows = []
    for (condition, tracker), c in totals.items():
        row = {"set": f"synthetic {condition} ({n_movies} movies)", "tracker": tracker}
        if condition == "late daughters":
            row.update(c, **{"links reproduced": c["links reproduced"] / n_movies,
                             "nuclei detected": c["nuclei detected"] / n_movies})
        else:
            row.update({"links reproduced": c["links_found"] / max(c["links"], 1), "divisions": c["divisions"],
                        "divisions found": c["divisions_found"], "divisions reported": c["pred_divisions"]})
        rows.append(row)
    return rows


def fluorescence_fields(n: int) -> list[str]:
    """The first ``n`` DSB2018 ``stage1_train`` ids (sorted) of grey fluorescence fields (equal
    colour channels, dark background: mean < 80) with at least 60 nuclei."""
    from pipeline.data.kaggle import read_kaggle_sample

    chosen = []
    for sample in sorted(p.name for p in Path(DSB_ROOT).iterdir()):
        if len(chosen) == n:
            break
        if len(list(Path(DSB_ROOT, sample, "masks").glob("*.png"))) < 60:
            continue
        image = read_kaggle_sample(Path(DSB_ROOT, sample), masks=False)[0][::8, ::8].astype(int)
        if np.ptp(image.mean(axis=2) - image[..., 0]) < 3 and image.mean() < 80:
            chosen.append(sample)
    return chosen


def shifted_fields_rows(n: int) -> list[dict]:
    """Divisions reported on ``n`` fluorescence fields (:func:`fluorescence_fields`), each shifted for
    4 and for :data:`SHIFT_FRAMES` frames and segmented anew: all invented."""
    from pipeline.data.kaggle import read_kaggle_sample

    reported = {"tool": 0, "nearest": 0}
    fields = fluorescence_fields(n)
    for sample in fields:
        image = read_kaggle_sample(Path(DSB_ROOT, sample), masks=False)[0]
        for frames in (4, SHIFT_FRAMES):
            labels = segment_movie(shifted_movie(image, frames), f"dsb {sample} shifted {frames} {SHIFT_STEP}")
            for row in score_trackers("", labels, None, {}):
                reported[row["tracker"]] += row["divisions reported"]
    return [{"set": f"DSB2018 {len(fields)} fields shifted, 4 and {SHIFT_FRAMES} frames", "tracker": tracker,
             "divisions reported": count} for tracker, count in reported.items()]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT)
    parser.add_argument("--small", action="store_true", help=f"frames {SMALL_FRAMES.start}-{SMALL_FRAMES.stop - 1}, "
                        "2 synthetic movies, a 5-frame shifted movie (CI)")
    parser.add_argument("--json", type=Path, help="also write the table here (a record per set and tracker)")
    args = parser.parse_args()
    started = time.perf_counter()
    frames = SMALL_FRAMES if args.small else range(len(list((args.root / "frames").glob("t*.png"))))
    labels = segment_movie(read_frames(args.root, frames), f"{args.root.name} {frames.start}-{frames.stop - 1}")
    truth, truth_parents = read_truth(args.root, frames)
    rows = score_trackers(f"{args.root.name} frames {frames.start}-{frames.stop - 1}", labels, truth, truth_parents)
    shift_frames = 5 if args.small else SHIFT_FRAMES
    field = read_frames(args.root, range(1))[0]
    movie = shifted_movie(field, shift_frames)
    shifted = segment_movie(movie, f"{args.root.name} t000 shifted {shift_frames} {SHIFT_STEP}")
    rows += score_trackers(f"{args.root.name} t000 shifted, {shift_frames} frames", shifted, None, {})
    from benchmarks.eval_tracking import select_images
    from pipeline.data.kaggle import read_kaggle_sample

    sample = select_images(DSB_ROOT)[0]
    image, truth0 = read_kaggle_sample(Path(DSB_ROOT, sample))[:2]
    movie, moved = shifted_movie(image, shift_frames), shifted_movie(truth0, shift_frames)
    shifted = segment_movie(movie, f"dsb {sample} shifted {shift_frames} {SHIFT_STEP}")
    rows += score_trackers(f"DSB2018 {sample[:8]} shifted, {shift_frames} frames", shifted, moved.astype(np.int32),
                           {})
    if not args.small:
        rows += shifted_fields_rows(N_FIELDS)
    rows += synthetic_rows(2 if args.small else N_SYNTHETIC)
    table = pd.DataFrame(rows)
    if "divisions" in table:
        table["divisions found"] = [f"{f:.0f}/{n:.0f}" if n == n else "" for f, n in
                                    zip(table["divisions found"], table["divisions"], strict=True)]
        table = table.drop(columns="divisions")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(table.drop(columns="s").to_string(index=False, float_format=lambda v: f"{v:.3f}", na_rep=""))
    if args.json:
        from pipeline.files.io import write_json

        write_json(args.json, table.drop(columns="s").astype(object).where(table.drop(columns="s").notna(), None)
                   .to_dict(orient="records"))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
