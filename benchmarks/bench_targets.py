"""Benchmark of the targets stage: windowed separation weights against the exact reference.

1. On the largest training images (>= 1024 x 1024 px), time the exact separation term (one
   full-image distance transform per nucleus, :func:`separation_weights_exact`) against the
   windowed one (:func:`separation_weights`) and against all targets + weights
   (:func:`make_targets`), print the ratios and the maximum difference |fast - exact| in
   units of w0 (must be <= 1e-3).
2. Time targets + weight maps of the whole training set with ``--workers`` processes
   (computation only, then computation + writing the compressed ``.npz`` files of the stage).

Usage::

    OMP_NUM_THREADS=1 python -m benchmarks.bench_targets [--root ../shared/dsb2018/stage1_train]
        [--workers 2] [--cache /tmp/dsb_labels.npz] [--largest N]

Reading the 29k mask PNGs into label maps is timed separately and is not part of the budget;
``--cache`` keeps the label maps for a later run.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from pipeline.config.params import load_config
from pipeline.data.kaggle import list_kaggle_ids, read_kaggle_sample
from pipeline.files.io import save_npz
from pipeline.method.training_targets import make_targets
from pipeline.method.weight_maps import separation_weights, separation_weights_exact

ROOT = Path(__file__).resolve().parents[1]
LABELS: list[np.ndarray] = []  # inherited by the forked workers
PARAMS = load_config(ROOT / "params.yaml").targets.make_targets_kwargs()


def _read(sample_dir: str) -> np.ndarray:
    return read_kaggle_sample(sample_dir)[1]


def load_labels(root: Path, workers: int, cache: Path | None) -> tuple[list[str], list[np.ndarray]]:
    """Label maps of every training image (from ``cache`` when it exists)."""
    if cache is not None and cache.is_file():
        with np.load(cache) as data:
            ids = sorted(data.files)
            return ids, [data[i] for i in ids]
    ids = list_kaggle_ids(root)
    t = time.perf_counter()
    with mp.get_context("fork").Pool(workers) as pool:
        labels = pool.map(_read, [str(root / i) for i in ids], chunksize=8)
    print(
        f"read {len(ids)} samples (masks -> labels) in {time.perf_counter() - t:.1f} s (not part of the budget)"
    )
    if cache is not None:
        save_npz(cache, **dict(zip(ids, labels, strict=True)))
    return ids, labels


def _targets(i: int) -> int:
    t = make_targets(LABELS[i], **PARAMS)
    t["weights"] = t["weights"].astype(np.float16)
    return int(t["border"].sum())


def _targets_and_write(args: tuple[int, str]) -> int:
    i, path = args
    t = make_targets(LABELS[i], **PARAMS)
    t["weights"] = t["weights"].astype(np.float16)
    save_npz(path, **t)
    return int(t["border"].sum())


def bench_largest(ids, labels, n_largest: int, w0: float, sigma: float) -> None:
    order = sorted(range(len(ids)), key=lambda i: -labels[i].size)
    large = [i for i in order if labels[i].size >= 1024 * 1024][:n_largest]
    print(f"\n== largest images (>= 1024x1024 px): {len(large)}, w0={w0}, sigma={sigma}, 1 process")
    print(
        f"{'id':>12} {'size':>10} {'nuclei':>6} {'exact s':>8} {'fast s':>7} {'ratio':>6} "
        f"{'targets s':>9} {'ratio':>6} {'max|diff|/w0':>12}"
    )
    tot_exact = tot_fast = tot_targets = 0.0
    worst = 0.0
    for i in large:
        lab = labels[i]
        t0 = time.perf_counter()
        exact = separation_weights_exact(lab, w0, sigma)
        t1 = time.perf_counter()
        fast = separation_weights(lab, w0, sigma)
        t2 = time.perf_counter()
        make_targets(lab, **PARAMS)
        t3 = time.perf_counter()
        diff = float(np.abs(fast.astype(np.float64) - exact).max()) / w0
        worst = max(worst, diff)
        tot_exact, tot_fast, tot_targets = tot_exact + t1 - t0, tot_fast + t2 - t1, tot_targets + t3 - t2
        print(
            f"{ids[i][:12]:>12} {lab.shape[1]:>4}x{lab.shape[0]:<5} {lab.max():>6} {t1 - t0:>8.2f} "
            f"{t2 - t1:>7.3f} {(t1 - t0) / (t2 - t1):>6.0f} {t3 - t2:>9.3f} {(t1 - t0) / (t3 - t2):>6.0f} "
            f"{diff:>12.2e}"
        )
    print(
        f"{'total':>12} {'':>10} {'':>6} {tot_exact:>8.2f} {tot_fast:>7.3f} {tot_exact / tot_fast:>6.0f} "
        f"{tot_targets:>9.3f} {tot_exact / tot_targets:>6.0f} {worst:>12.2e}"
    )
    print(
        f"speed-up of the separation term: {tot_exact / tot_fast:.0f}x (budget >= 20x); of all targets + "
        f"weights: {tot_exact / tot_targets:.0f}x; max |fast - exact| = {worst:.2e} w0 (budget 1e-3 w0): "
        f"{'OK' if worst <= 1e-3 else 'FAILED'}"
    )


def bench_all(ids, labels, workers: int) -> None:
    global LABELS
    LABELS = labels
    n_px = sum(lab.size for lab in labels)
    n_nuclei = sum(len(np.unique(lab)) - 1 for lab in labels)
    print(
        f"\n== whole training set: {len(ids)} images, {n_nuclei} nuclei, {n_px / 1e6:.0f} Mpx, {workers} workers"
    )
    ctx = mp.get_context("fork")
    order = sorted(range(len(ids)), key=lambda i: -labels[i].size)  # largest first: balanced ends
    with ctx.Pool(workers) as pool:
        t = time.perf_counter()
        pool.map(_targets, order, chunksize=1)
        compute = time.perf_counter() - t
        with tempfile.TemporaryDirectory() as tmp:
            t = time.perf_counter()
            pool.map(_targets_and_write, [(i, f"{tmp}/{ids[i]}.npz") for i in order], chunksize=1)
            write = time.perf_counter() - t
            size = sum(p.stat().st_size for p in Path(tmp).iterdir())
    print(
        f"targets + weights, computation only:     {compute:6.1f} s (budget 60 s) = {compute / 60:.2f} of budget"
    )
    print(f"targets + weights + compressed .npz out: {write:6.1f} s, {size / 1e6:.0f} MB on disk")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT.parent / "shared" / "dsb2018" / "stage1_train")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--cache", type=Path, default=None, help="npz file keeping the label maps")
    parser.add_argument("--largest", type=int, default=100, help="at most this many large images")
    args = parser.parse_args()
    print(
        f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, python {platform.python_version()}"
    )
    ids, labels = load_labels(args.root, args.workers, args.cache)
    bench_largest(ids, labels, args.largest, PARAMS["w0"], PARAMS["sigma"])
    bench_all(ids, labels, args.workers)


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
