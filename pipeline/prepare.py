"""The ``prepare`` stage: labelled sources → one label map per image, an index and folds.

A source (``data.sources.<name>``: a root and its layout, :mod:`pipeline.sources`) is prepared into
``<prepared>/<name>/``: ``<id>.npz`` (``image`` uint8 (H, W, 3), ``labels`` int32 (H, W)) and
``index.csv`` with columns ``id, source, height, width, n_nuclei, mean_area, median_diameter,
image_type``, the acquisition features, ``fold`` (stratified by image type), ``group`` (the
experiment, :func:`acquisition_groups`) and ``group_fold`` (folds grouped by experiment: no
experiment straddles training and validation; a source of fewer experiments than folds, which
cannot hold each out, gets its image folds there). Folds are drawn within each source, so adding a
source changes no other source's folds; ``data.split: source`` holds a whole source out. Each source is its own DVC stage (``dvc.yaml``), so a change
in one root re-prepares that source alone.

:func:`read_index` reads a prepared folder of sources as one table: ids ``<source>/<id>`` (the
``.npz`` path below the folder, as for every stage that writes per-image files), groups
``<source>:<group>``. A folder holding ``index.csv`` itself is one source with plain ids.

Must not: compute training targets (:mod:`pipeline.targets`) or import torch.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import DataConfig, load_config
from pipeline.errors import NucleiError
from pipeline.image_types import classify_image
from pipeline.io import progress, save_npz, write_csv
from pipeline.sources import list_sample_ids, read_sample, unlabelled_images

#: Columns every reader of ``index.csv`` relies on.
INDEX_COLUMNS = ("id", "fold")


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


#: Per-image acquisition features clustered into experiments by :func:`acquisition_groups`.
ACQUISITION_FEATURES = ("log_height", "log_width", "mean_r", "mean_g", "mean_b", "grey_std",
                        "log_diameter")
#: Fold columns of ``index.csv`` by ``data.split`` ('source': leave one source out, ``data.val_fold``
#: names the source).
SPLITS = {"stratified": "fold", "grouped": "group_fold", "source": "source"}


def acquisition_groups(features: pd.DataFrame, distance: float = 0.7) -> np.ndarray:
    """Cluster images into experiments (acquisitions) by their size, colour, intensity and
    nucleus size.

    DSB2018 images are tiles of larger acquisitions: tiles of one experiment share image size,
    stain, brightness and nucleus size. Average-linkage hierarchical clustering of the
    standardised :data:`ACQUISITION_FEATURES`, cut at ``distance`` (in standard deviations),
    groups them. On stage1_train the default cut gives 55 groups (the largest 109 images of
    256×256 small fluorescence) and 5 grouped folds that each still hold 3–4 image types.

    Parameters
    ----------
    features : DataFrame with the :data:`ACQUISITION_FEATURES` columns, one row per image.
    distance : float
        Cut height of the dendrogram.

    Returns
    -------
    groups : int64 ndarray of shape (n,), cluster numbers from 0, largest cluster first.
    """
    from scipy.cluster.hierarchy import fcluster, linkage

    x = features.loc[:, list(ACQUISITION_FEATURES)].to_numpy(np.float64)
    if len(x) < 2:
        return np.zeros(len(x), np.int64)
    x = (x - x.mean(0)) / np.where(x.std(0) > 1e-9, x.std(0), 1.0)
    clusters = fcluster(linkage(x, method="average"), t=distance, criterion="distance")
    _, inverse, counts = np.unique(clusters, return_inverse=True, return_counts=True)
    rank = np.argsort(np.argsort(-counts, kind="stable"), kind="stable")
    return rank[inverse].astype(np.int64)


def grouped_folds(groups: np.ndarray, k: int) -> np.ndarray:
    """Assign whole groups to ``k`` folds, largest group first, each to the smallest fold so far.

    Returns
    -------
    folds : int64 ndarray of shape (len(groups),); no group straddles two folds.
    """
    groups = np.asarray(groups)
    folds = np.zeros(len(groups), np.int64)
    sizes = np.zeros(k, np.int64)
    labels, counts = np.unique(groups, return_counts=True)
    for g in labels[np.argsort(-counts, kind="stable")]:
        f = int(np.argmin(sizes))
        members = groups == g
        folds[members] = f
        sizes[f] += int(members.sum())
    return folds


def split_folds(index: pd.DataFrame, val_fold: int | None, split: str = "stratified",
                source: str | Path = "index.csv") -> tuple[list[str], list[str]]:
    """Split image ids into training (all other folds) and validation (``val_fold``).

    Parameters
    ----------
    index : the table of :func:`read_index`.
    val_fold : int, str or None
        None: every image is for training and none for validation (a final model); a source
        name with split 'source'.
    split : {'stratified', 'grouped', 'source'}
        Folds stratified by image type (``fold``), grouped by experiment (``group_fold``), or
        one source held out (``source``).

    Returns
    -------
    train_ids, val_ids : list of str, in index order

    Raises
    ------
    NucleiError
        An unknown split, a missing column, or an empty part.
    """
    if split not in SPLITS:
        raise NucleiError(f"{source}: data.split must be one of {', '.join(SPLITS)}, got {split!r}")
    if val_fold is None:
        return index["id"].tolist(), []
    column = SPLITS[split]
    if column not in index.columns:
        raise NucleiError(f"{source}: no column '{column}' (re-run `nuclei prepare`)")
    is_val = index[column].to_numpy() == (str(val_fold) if split == "source" else int(val_fold))
    train_ids = index.loc[~is_val, "id"].tolist()
    val_ids = index.loc[is_val, "id"].tolist()
    folds = sorted(index[column].unique().tolist())
    if not val_ids:
        raise NucleiError(f"{source}: no image in validation fold {val_fold} of the {split} split (folds: {folds})")
    if not train_ids:
        raise NucleiError(f"{source}: no training image outside fold {val_fold}")
    return train_ids, val_ids


def validation_index(data: DataConfig) -> pd.DataFrame:
    """Rows of ``<data.prepared>/index.csv`` in validation fold ``data.val_fold`` of the
    ``data.split`` split.

    Returns
    -------
    index : DataFrame
        Columns of ``index.csv`` (``id``, ``height``, ``width``, ``image_type``, ``fold``, ...).

    Raises
    ------
    NucleiError
        Missing or unreadable index, an empty validation fold, or none (``data.val_fold`` null).
    """
    if data.val_fold is None:
        raise NucleiError("data.val_fold is null (training on every image): there is no validation fold to use")
    index = read_index(data.prepared)
    _, val_ids = split_folds(index, data.val_fold, data.split, Path(data.prepared) / "index.csv")
    return index[index["id"].isin(set(val_ids))].reset_index(drop=True)


def _prepare_one(task: tuple[Path, str, str, Path]) -> dict | str:
    root, layout, sample_id, out_dir = task
    try:
        image, labels = read_sample(root, layout, sample_id)
    except NucleiError as exc:
        return str(exc)
    save_npz(out_dir / f"{sample_id}.npz", image=image, labels=labels)
    from pipeline.scale import median_diameter

    n = int(labels.max())
    rgb = image.reshape(-1, 3).astype(np.float64) / 255.0
    diameter = median_diameter(labels)
    return {
        "id": sample_id,
        "height": image.shape[0],
        "width": image.shape[1],
        "n_nuclei": n,
        "mean_area": float((labels > 0).sum() / n) if n else 0.0,
        "median_diameter": diameter,
        "image_type": classify_image(image),
        "log_height": float(np.log(image.shape[0])),
        "log_width": float(np.log(image.shape[1])),
        **{f"mean_{c}": float(v) for c, v in zip("rgb", rgb.mean(0), strict=True)},
        "grey_std": float(rgb.mean(1).std()),
        "log_diameter": float(np.log(diameter)) if n else 0.0,
    }


def prepare(root: str | Path, out: str | Path, folds: int = 5, seed: int = 0, workers: int = 1,
            layout: str = "kaggle", source: str = "") -> pd.DataFrame:
    """Convert one labelled source into label maps, an index and folds (``out/index.csv``).

    Bad samples (unreadable image, mask or label image of the wrong size, no masks) are reported
    on stderr in one line each and skipped; so are a ``folder`` source's images without labels.

    Parameters
    ----------
    root, layout : the source folder and its layout (:data:`pipeline.sources.LAYOUTS`).
    source : str
        The source's name, written to the ``source`` column.

    Returns
    -------
    index : DataFrame with one row per prepared image (see module docstring).
    """
    root, out = Path(root), Path(out)
    ids = list_sample_ids(root, layout)
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(root, layout, i, out) for i in ids]
    rows, failures = [], []
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            results = list(progress(pool.map(_prepare_one, tasks, chunksize=4), desc=f"prepare {source}".strip(),
                                    total=len(tasks)))
    else:
        results = [_prepare_one(t) for t in progress(tasks, desc=f"prepare {source}".strip())]
    for result in results:
        (failures if isinstance(result, str) else rows).append(result)
    if layout == "folder" and (unlabelled := unlabelled_images(root)):
        failures.append(f"{len(unlabelled)} images of {root / 'images'} without a label image in "
                        f"{root / 'labels'}: {', '.join(unlabelled[:3])}{' ...' if len(unlabelled) > 3 else ''}")
    for message in failures:
        print(f"nuclei: warning: skipped {message}", file=sys.stderr)
    if not rows:
        raise NucleiError(f"{root}: no sample could be prepared")
    index = pd.DataFrame(rows).sort_values("id").reset_index(drop=True)
    index.insert(1, "source", source)
    index["fold"] = stratified_folds(index["id"].tolist(), index["image_type"].tolist(), folds, seed)
    index["group"] = acquisition_groups(index)
    index["group_fold"] = grouped_folds(index["group"].to_numpy(), folds)
    if index["group"].nunique() < folds:  # too few experiments to hold each out: image folds
        index["group_fold"] = index["fold"]
    write_csv(out / "index.csv", index)
    return index


def read_index(prepared: str | Path, columns: tuple[str, ...] = INDEX_COLUMNS) -> pd.DataFrame:
    """Read the index of a prepared folder (written by :func:`prepare`).

    Parameters
    ----------
    prepared : the prepared-data folder: one source (``index.csv`` in it) or a folder of sources
        (``<name>/index.csv``; read together, see the module docstring).
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
    prepared = Path(prepared)
    path = prepared / "index.csv"
    parts = sorted(prepared.glob("*/index.csv")) if not path.exists() and prepared.is_dir() else []
    index = pd.concat([_source_index(p) for p in parts], ignore_index=True) if parts else _read_csv(path)
    missing = [c for c in columns if c not in index.columns]
    if missing:
        raise NucleiError(f"{path}: missing column(s) {', '.join(missing)}")
    if index.empty:
        raise NucleiError(f"{path}: no images listed")
    return index


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"id": str, "source": str}, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise NucleiError(f"{path}: no such file (run `nuclei prepare` first)") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise NucleiError(f"{path}: unreadable index ({exc})") from None


def _source_index(path: Path) -> pd.DataFrame:
    """One source's index inside a folder of sources: ids and groups prefixed by the source."""
    index = _read_csv(path)
    name = path.parent.name
    index["id"] = name + "/" + index["id"].astype(str)
    index["source"] = name
    if "group" in index.columns:
        index["group"] = name + ":" + index["group"].astype(str)
    return index


def prepare_sources(data: DataConfig, seed: int = 0, names: list[str] | None = None) -> pd.DataFrame:
    """Prepare the sources ``names`` (default all) of ``data.sources`` into ``data.prepared/<name>``.

    Returns
    -------
    index : the whole prepared folder's table (:func:`read_index`).
    """
    names = list(data.sources) if names is None else names
    for name in names:
        if name not in data.sources:
            raise NucleiError(f"no source {name!r} in data.sources ({', '.join(data.sources)})")
        spec = data.sources[name]
        prepare(spec["root"], Path(data.prepared) / name, folds=data.folds, seed=seed, workers=data.workers,
                layout=spec["layout"], source=name)
    return read_index(data.prepared)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: params.yaml)")
    parser.add_argument("--source", action="append", metavar="NAME",
                        help="prepare only this source of data.sources (repeatable; default: all)")
    parser.add_argument("--root", help="prepare this folder alone instead of data.sources (with --out)")
    parser.add_argument("--layout", default="kaggle", choices=("kaggle", "folder"), help="layout of --root")
    parser.add_argument("--out", help="output folder of --root (default: data.prepared of the parameters)")


def main(args: argparse.Namespace) -> int:
    config = load_config(args.params)
    data = config.data
    if args.root:
        index = prepare(args.root, args.out or data.prepared, folds=data.folds, seed=config.seed,
                        workers=data.workers, layout=args.layout, source=Path(args.root).name)
    else:
        index = prepare_sources(data, config.seed, args.source)
        if args.source:
            index = index[index["source"].isin(args.source)]
    counts = index.groupby("image_type").size().to_dict()
    by_source = index.groupby("source").size().to_dict()
    print(f"prepared {len(index)} images, {int(index.n_nuclei.sum())} nuclei; types {counts}; "
          f"sources {by_source}; {index['group'].nunique()} experiment groups")
    return 0
