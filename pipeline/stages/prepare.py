"""The ``prepare`` stage: labelled sources → one label map per image, an index and folds.

A source (``data.sources.<name>``: a root and its layout, :mod:`pipeline.data.sources`) is prepared into
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

Must not: compute training targets (:mod:`pipeline.method.training_targets`) or import torch.
"""

from __future__ import annotations

import argparse
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config.params import DataConfig, load_config
from pipeline.data.folds import acquisition_groups, grouped_folds, read_index, stratified_folds, table_groups
from pipeline.data.sources import list_sample_ids, read_sample, unlabelled_images
from pipeline.errors import NucleiError
from pipeline.files.io import save_npz, write_csv
from pipeline.method.image_types import classify_image
from pipeline.progress import progress


def _prepare_one(task: tuple[Path, str, str, Path]) -> dict | str:
    root, layout, sample_id, out_dir = task
    try:
        image, labels = read_sample(root, layout, sample_id)
    except NucleiError as exc:
        return str(exc)
    save_npz(out_dir / f"{sample_id}.npz", image=image, labels=labels)
    from pipeline.method.scale import median_diameter

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
            layout: str = "kaggle", source: str = "", groups: str | None = None,
            group_by: list[str] | None = None) -> pd.DataFrame:
    """Convert one labelled source into label maps, an index and folds (``out/index.csv``).

    Bad samples (unreadable image, mask or label image of the wrong size, no masks) are reported
    on stderr in one line each and skipped; so are a ``folder`` source's images without labels.

    Parameters
    ----------
    root, layout : the source folder and its layout (:data:`pipeline.config.rules.LAYOUTS`).
    folds, seed : the number of folds, and the seed of the image-stratified ones (``data.fold_seed``).
    source : str
        The source's name, written to the ``source`` column.
    groups, group_by : str and list of str, optional
        A table in ``root`` whose first column is the image id, and the columns whose values make
        an image's experiment group (:func:`pipeline.data.folds.table_groups`); default: clusters
        of the acquisition features (:func:`pipeline.data.folds.acquisition_groups`).

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
    index["group"] = (table_groups(index["id"], root / groups, group_by) if groups
                      else acquisition_groups(index))
    index["group_fold"] = grouped_folds(index["group"].to_numpy(), folds)
    if index["group"].nunique() < folds:  # too few experiments to hold each out: image folds
        index["group_fold"] = index["fold"]
    write_csv(out / "index.csv", index)
    return index


def prepare_sources(data: DataConfig, names: list[str] | None = None) -> pd.DataFrame:
    """Prepare the sources ``names`` (default all) of ``data.sources`` into ``data.prepared/<name>``,
    their image-stratified folds drawn with ``data.fold_seed``.

    Returns
    -------
    index : the table of the sources ``names`` in the prepared folder (:func:`read_index`).
    """
    names = list(data.sources) if names is None else names
    for name in names:
        if name not in data.sources:
            raise NucleiError(f"no source {name!r} in data.sources ({', '.join(data.sources)})")
        spec = data.sources[name]
        prepare(spec["root"], Path(data.prepared) / name, folds=data.folds, seed=data.fold_seed, workers=data.workers,
                layout=spec["layout"], source=name, groups=spec.get("groups"), group_by=spec.get("group_by"))
    return read_index(data.prepared, sources=names)  # the others may not be prepared yet (a DVC stage per source)


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
        index = prepare(args.root, args.out or data.prepared, folds=data.folds, seed=data.fold_seed,
                        workers=data.workers, layout=args.layout, source=Path(args.root).name)
    else:
        index = prepare_sources(data, args.source)
    counts = index.groupby("image_type").size().to_dict()
    by_source = index.groupby("source").size().to_dict()
    print(f"prepared {len(index)} images, {int(index.n_nuclei.sum())} nuclei; types {counts}; "
          f"sources {by_source}; {index['group'].nunique()} experiment groups")
    return 0
