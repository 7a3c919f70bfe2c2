"""Folds of the prepared data: the index columns, the splits and the grouped folds.

``<prepared>/<source>/index.csv`` (written by the ``prepare`` stage, :mod:`pipeline.stages.prepare`)
holds one row per image with ``fold`` (stratified by image type), ``group`` (the experiment,
:func:`acquisition_groups`) and ``group_fold`` (folds grouped by experiment). :func:`read_index`
reads a prepared folder of sources as one table: ids ``<source>/<id>`` (the ``.npz`` path below
the folder, as for every stage that writes per-image files), groups ``<source>:<group>``. A folder
holding ``index.csv`` itself is one source with plain ids. :func:`split_folds` turns a split
(``data.split``, :data:`pipeline.config.params.SPLITS`) and a validation fold into training and
validation ids.

Must not: read images or import torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config.params import SPLITS, DataConfig
from pipeline.errors import NucleiError
from pipeline.files.inputs import IMAGE_SUFFIXES

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
SPLIT_COLUMNS = dict(zip(SPLITS, ("fold", "group_fold", "source"), strict=True))



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



def table_groups(ids, table: str | Path, by: list[str]) -> np.ndarray:
    """Experiment groups of images from a table that describes them (a data set's own metadata).

    Parameters
    ----------
    ids : sequence of str
        Image ids (file stems).
    table : str or Path
        CSV file, any separator (``,``, ``;``, tab), whose first column holds the image ids.
    by : list of str
        Columns whose values, joined by ``/``, name an image's group (e.g. diagnosis and
        preparation).

    Returns
    -------
    groups : object ndarray of shape (len(ids),), str group names.

    Raises
    ------
    NucleiError
        An unreadable table, a missing column, or an image the table does not list (naming it).
    """
    table = Path(table)
    try:
        frame = pd.read_csv(table, sep=None, engine="python", dtype=str, keep_default_na=False)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise NucleiError(f"{table}: unreadable table ({exc})") from None
    if missing := [c for c in by if c not in frame.columns]:
        raise NucleiError(f"{table}: no column(s) {', '.join(missing)} (has {', '.join(frame.columns)})")
    names = frame[by].agg("/".join, axis=1)
    names.index = [Path(v).stem if Path(v).suffix.lower() in IMAGE_SUFFIXES else v for v in frame.iloc[:, 0]]  # ids
    ids = [str(i) for i in ids]
    if unlisted := [i for i in ids if i not in names.index]:
        raise NucleiError(f"{table}: image {unlisted[0]} is not listed ({len(unlisted)} images missing)")
    return names.loc[ids].to_numpy(dtype=object)


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
    if split not in SPLIT_COLUMNS:
        raise NucleiError(f"{source}: data.split must be one of {', '.join(SPLITS)}, got {split!r}")
    if val_fold is None:
        return index["id"].tolist(), []
    column = SPLIT_COLUMNS[split]
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
    index = read_index(data.prepared, sources=list(data.sources))
    _, val_ids = split_folds(index, data.val_fold, data.split, Path(data.prepared) / "index.csv")
    return index[index["id"].isin(set(val_ids))].reset_index(drop=True)



def read_index(prepared: str | Path, columns: tuple[str, ...] = INDEX_COLUMNS,
               sources: list[str] | tuple[str, ...] | None = None) -> pd.DataFrame:
    """Read the index of a prepared folder (written by :func:`prepare`).

    Parameters
    ----------
    prepared : the prepared-data folder: one source (``index.csv`` in it) or a folder of sources
        (``<name>/index.csv``; read together, see the module docstring).
    columns : the columns the caller needs (default ``id`` and ``fold``).
    sources : in a folder of sources, read only these (``data.sources``' names): a source prepared
        into the same folder for another run (an evaluation-only source, say) is not trained on.
        None reads every source in the folder.

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
    tables = index_tables(prepared, columns, sources)
    index = pd.concat([_prefixed(path, table) if path.parent != prepared else table for path, table in tables],
                      ignore_index=True)
    if index.empty:
        raise NucleiError(f"{prepared / 'index.csv'}: no images listed")
    return index


def index_tables(prepared: str | Path, columns: tuple[str, ...] = INDEX_COLUMNS,
                 sources: list[str] | tuple[str, ...] | None = None) -> list[tuple[Path, pd.DataFrame]]:
    """The index files of a prepared folder that :func:`read_index` reads, each with its table as
    stored (its own ids, unprefixed): ``[(path, table)]``, one source's ``index.csv``, or the sources'
    ``<name>/index.csv`` in name order. Raises NucleiError naming a missing or unreadable file, or the
    file that lacks one of ``columns``."""
    prepared = Path(prepared)
    path = prepared / "index.csv"
    parts = sorted(prepared.glob("*/index.csv")) if not path.exists() and prepared.is_dir() else []
    if parts and sources is not None:
        found = {p.parent.name: p for p in parts}
        if missing := [name for name in sources if name not in found]:
            raise NucleiError(f"{prepared / missing[0] / 'index.csv'}: no such file (run `nuclei prepare` "
                              f"for source {missing[0]!r})")
        parts = [found[name] for name in sorted(sources)]
    tables = [(p, _read_csv(p)) for p in (parts or [path])]
    for source_path, table in tables:  # the file that lacks a column is the one named
        if missing := [c for c in columns if c not in table.columns]:
            raise NucleiError(f"{source_path}: missing column(s) {', '.join(missing)}")
    return tables


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path, dtype={"id": str, "source": str}, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise NucleiError(f"{path}: no such file (run `nuclei prepare` first)") from None
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise NucleiError(f"{path}: unreadable index ({exc})") from None



def _prefixed(path: Path, table: pd.DataFrame) -> pd.DataFrame:
    """One source's index inside a folder of sources: ids and groups prefixed by the source."""
    index = table.copy()
    name = path.parent.name
    index["id"] = name + "/" + index["id"].astype(str)
    index["source"] = name
    if "group" in index.columns:
        index["group"] = name + ":" + index["group"].astype(str)
    return index
