"""The ``prepare`` stage: Kaggle layout → one label map per image, an index and folds.

Writes ``<prepared>/<id>.npz`` (``image`` uint8 (H, W, 3), ``labels`` int32 (H, W)) and
``<prepared>/index.csv`` with columns ``id, height, width, n_nuclei, mean_area, image_type,
fold``.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import load_params, section
from pipeline.errors import NucleiError
from pipeline.io import list_kaggle_ids, progress, read_kaggle_sample, save_npz, write_csv

#: The four image types of the DSB2018 data, used to stratify the folds.
IMAGE_TYPES = ("fluo-small", "fluo-large", "brightfield", "histology")
#: Columns every reader of ``index.csv`` relies on.
INDEX_COLUMNS = ("id", "fold")


def classify_image(image: np.ndarray) -> str:
    """Image type of a DSB2018-like image, from colour, brightness and size.

    Parameters
    ----------
    image : uint8 ndarray of shape (H, W, 3)

    Returns
    -------
    image_type : str
        ``histology`` for stained tissue (colour: mean |channel − grey| above 0.01 of the full
        range), ``brightfield`` for grey images with a bright background (mean above 0.35),
        otherwise fluorescence: ``fluo-large`` above 200,000 pixels, else ``fluo-small``.
        The thresholds separate the four groups of stage1_train with wide margins.
    """
    rgb = image.astype(np.float32) / 255.0
    chroma = float(np.abs(rgb - rgb.mean(axis=-1, keepdims=True)).mean())
    if chroma > 0.01:
        return "histology"
    if float(rgb.mean()) > 0.35:
        return "brightfield"
    return "fluo-large" if image.shape[0] * image.shape[1] > 200_000 else "fluo-small"


def stratified_folds(ids: list[str], groups: list[str], k: int, seed: int = 0) -> np.ndarray:
    """Assign each id to one of ``k`` folds, balancing every group across the folds.

    Within each group the ids are shuffled with ``seed`` and dealt round-robin; each group
    starts dealing where the previous one stopped, so fold sizes differ by at most one.

    Returns
    -------
    folds : int64 ndarray of shape (len(ids),), values in 0..k-1
    """
    rng = np.random.default_rng(seed)
    folds = np.zeros(len(ids), dtype=np.int64)
    groups_arr = np.asarray(groups)
    start = 0
    for group in sorted(set(groups)):
        members = np.flatnonzero(groups_arr == group)
        members = members[np.argsort(np.asarray(ids)[members], kind="stable")]
        members = rng.permutation(members)
        folds[members] = (start + np.arange(len(members))) % k
        start = (start + len(members)) % k
    return folds


def _prepare_one(task: tuple[Path, Path]) -> dict | str:
    sample_dir, out_dir = task
    try:
        image, labels = read_kaggle_sample(sample_dir)
    except NucleiError as exc:
        return str(exc)
    save_npz(out_dir / f"{sample_dir.name}.npz", image=image, labels=labels)
    n = int(labels.max())
    return {
        "id": sample_dir.name,
        "height": image.shape[0],
        "width": image.shape[1],
        "n_nuclei": n,
        "mean_area": float((labels > 0).sum() / n) if n else 0.0,
        "image_type": classify_image(image),
    }


def prepare(root: str | Path, out: str | Path, folds: int = 5, seed: int = 0, workers: int = 1) -> pd.DataFrame:
    """Convert a Kaggle training root into label maps, an index and folds.

    Bad samples (unreadable image, mask of the wrong size, no masks) are reported on stderr in
    one line each and skipped.

    Returns
    -------
    index : DataFrame with one row per prepared image (see module docstring).
    """
    root, out = Path(root), Path(out)
    ids = list_kaggle_ids(root)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(root / i, out) for i in ids]
    rows, failures = [], []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(progress(pool.map(_prepare_one, tasks, chunksize=4), desc="prepare", total=len(tasks)))
    else:
        results = [_prepare_one(t) for t in progress(tasks, desc="prepare")]
    for result in results:
        (failures if isinstance(result, str) else rows).append(result)
    for message in failures:
        print(f"nuclei: warning: skipped {message}", file=sys.stderr)
    if not rows:
        raise NucleiError(f"{root}: no sample could be prepared")
    index = pd.DataFrame(rows).sort_values("id").reset_index(drop=True)
    index["fold"] = stratified_folds(index["id"].tolist(), index["image_type"].tolist(), folds, seed)
    write_csv(out / "index.csv", index)
    return index


def read_index(prepared: str | Path, columns: tuple[str, ...] = INDEX_COLUMNS) -> pd.DataFrame:
    """Read ``<prepared>/index.csv`` (written by :func:`prepare`).

    Parameters
    ----------
    prepared : the prepared-data folder.
    columns : the columns the caller needs (default ``id`` and ``fold``).

    Returns
    -------
    index : pandas.DataFrame
        One row per image with at least ``columns`` (``id`` as str).

    Raises
    ------
    NucleiError
        Missing or unreadable file, missing columns, no rows.
    """
    path = Path(prepared) / "index.csv"
    try:
        index = pd.read_csv(path, dtype={"id": str})
    except FileNotFoundError:
        raise NucleiError(f"{path}: no such file (run `nuclei prepare` first)") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise NucleiError(f"{path}: unreadable index ({exc})") from None
    missing = [c for c in columns if c not in index.columns]
    if missing:
        raise NucleiError(f"{path}: missing column(s) {', '.join(missing)}")
    if index.empty:
        raise NucleiError(f"{path}: no images listed")
    return index


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--root", help="Kaggle training root (default: data.root of the parameters)")
    parser.add_argument("--out", help="output folder (default: data.prepared of the parameters)")


def main(args: argparse.Namespace) -> int:
    params = load_params(args.params)
    data = section(params, "data", args.params)
    index = prepare(
        args.root or data["root"],
        args.out or data["prepared"],
        folds=int(data.get("folds", 5)),
        seed=int(params.get("seed", 0)),
        workers=int(data.get("workers", 1)),
    )
    counts = index.groupby("image_type").size().to_dict()
    print(f"prepared {len(index)} images, {int(index.n_nuclei.sum())} nuclei; types {counts}")
    return 0
