"""The ``targets`` stage (``nuclei targets``): ``data/prepared/<id>.npz`` → ``data/targets/<id>.npz``.

The stage reads the prepared index and ``<prepared>/<id>.npz`` (``image``, ``labels``), brings each
image to the canonical nucleus diameter ``targets.diameter`` (its median nucleus equivalent
diameter rescaled to it: image by area/bilinear resampling, labels by nearest neighbour;
:mod:`pipeline.method.scale`), builds the targets from the rescaled labels
(:func:`pipeline.method.training_targets.rescaled_targets`), and writes ``<out>/<id>.npz`` with the rescaled
``image`` uint8 and ``labels`` int32, ``classes`` uint8, ``mask`` uint8, ``border`` uint8,
``weights`` float16 and the ``scale`` factor, in parallel over images. ``targets.diameter: null``
keeps every image at its own scale.

Must not: compute targets itself (:mod:`pipeline.method.training_targets`), import torch, or keep defaults
of the ``targets`` section (they are :class:`pipeline.config.params.TargetsConfig`).
"""

from __future__ import annotations

import argparse
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from pipeline.config.params import load_config
from pipeline.data.folds import read_index
from pipeline.errors import NucleiError
from pipeline.files.io import load_npz, save_npz
from pipeline.method.scale import median_diameter, scale_factor
from pipeline.method.training_targets import rescaled_targets
from pipeline.progress import progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei targets``."""
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None, help="processes (default: targets.workers)")



def process_one(src: Path, dst: Path, kwargs: dict, diameter: float | None = None) -> None:
    """Read the prepared ``src`` .npz, rescale it to the canonical nucleus ``diameter`` (px; None:
    keep the scale), write image, labels and targets to ``dst`` atomically."""

    data = load_npz(src)
    labels, image = data.get("labels"), data.get("image")
    if labels is None or labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise NucleiError(f"{src}: no 2-D integer array 'labels'")
    if labels.size and labels.min() < 0:
        raise NucleiError(f"{src}: negative labels")
    if image is None or image.shape[:2] != labels.shape:
        raise NucleiError(f"{src}: no 'image' array of the size of the labels (re-run `nuclei prepare`)")
    factor = scale_factor(median_diameter(labels), diameter) if diameter else 1.0
    arrays = rescaled_targets(image, labels, factor, **kwargs)
    arrays["weights"] = arrays["weights"].astype(np.float16)
    save_npz(dst, scale=np.float64(factor), **arrays)



def main(args: argparse.Namespace) -> int:
    """Run the ``targets`` stage; returns the exit status."""
    config = load_config(args.params)
    cfg = config.targets
    kwargs, diameter = cfg.make_targets_kwargs(), cfg.diameter
    prepared, out = Path(config.data.prepared), Path(cfg.out)
    workers = args.workers if args.workers is not None else cfg.workers
    workers = max(1, min(workers, os.cpu_count() or 1))

    index = read_index(prepared, columns=("id",), sources=list(config.data.sources))  # folds do not matter here
    ids = index["id"].tolist()
    if {"height", "width"} <= set(index.columns):  # largest first: the workers finish together
        ids = (
            index.assign(px=index["height"] * index["width"])
            .sort_values("px", ascending=False, kind="stable")["id"]
            .tolist()
        )
    jobs = [(prepared / f"{i}.npz", out / f"{i}.npz") for i in ids]
    missing = [str(src) for src, _ in jobs if not src.is_file()]
    if missing:
        raise NucleiError(f"{missing[0]}: no such file ({len(missing)} prepared images missing)")

    out.mkdir(parents=True, exist_ok=True)
    if workers == 1:
        for src, dst in progress(jobs, desc="targets"):
            process_one(src, dst, kwargs, diameter)
    else:
        with ProcessPoolExecutor(workers) as pool:
            futures = [pool.submit(process_one, src, dst, kwargs, diameter) for src, dst in jobs]
            try:
                for future in progress(as_completed(futures), desc="targets", total=len(futures)):
                    future.result()
            except BaseException:
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    print(f"targets: {len(jobs)} images -> {out}")
    return 0
