"""Benchmark ``nuclei segment`` beyond one image in memory: a huge tiled TIFF, and Dask workers.

Usage::

    python -m benchmarks.bench_scale [--side 20000] [--cell 40] [--images 12] [--skip-slide] [--skip-workers]

1. **A huge image, out of core.** A synthetic grey fluorescence image of ``--side``² px (tiled
   BigTIFF, zlib, written tile by tile), one nucleus of 16–22 px per 40 × 40 px cell at a random
   place and brightness, noise added: the truth is the number of cells. ``--cell 22`` packs them
   (nuclei over about 60 % of the image, touching): a model's dense network then runs every block. ``nuclei segment`` (the
   shipped model, ``--tta none``) runs under GNU ``/usr/bin/time -v``: peak resident memory,
   wall time, time per gigapixel, count against the truth.
2. **Images per second on Dask workers.** ``--images`` images of the embedded sample segmented
   by the plain local run (torch's threads: one per core, and one thread: ``OMP_NUM_THREADS=1``,
   as Dask's workers have), ``--workers 1`` and ``--workers 2`` (a LocalCluster on this machine),
   back to back: images/s of each, the ratio to the local run (cluster start-up included, and
   without it: the time of the same command on one image subtracted), and whether the label
   files and tables are identical to the local run's.

The machine is shared: the load average is printed before each part.
"""

from __future__ import annotations

import argparse
import filecmp
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
CELL = 40  #: px, one nucleus per cell (``--cell``)
TILE = 512


def _cells(n_rows: int, n_cols: int, cell: int = CELL, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Per cell of ``cell`` px: centre offset (row, col) within the cell (up to 6 px from its
    centre, less where a 22-px nucleus would leave it), radius and brightness."""
    rng = np.random.default_rng(seed)
    shape = (n_rows, n_cols)
    shift = float(np.clip((cell - 22) / 2 - 1, 0, 6))
    return (cell / 2 + rng.uniform(-shift, shift, shape), cell / 2 + rng.uniform(-shift, shift, shape),
            rng.uniform(8, 11, shape), rng.uniform(110, 230, shape))


def synthetic_tile(r0: int, c0: int, side: int, cells: tuple[np.ndarray, ...], cell: int = CELL) -> np.ndarray:
    """The uint8 (TILE, TILE) tile at (r0, c0) of the synthetic image (0 beyond ``side``)."""
    rows = np.arange(r0, r0 + TILE)[:, None]
    cols = np.arange(c0, c0 + TILE)[None, :]
    i, j = np.minimum(rows // cell, cells[0].shape[0] - 1), np.minimum(cols // cell, cells[0].shape[1] - 1)
    dist = np.hypot(rows - (i * cell + cells[0][i, j]), cols - (j * cell + cells[1][i, j]))
    inside = np.clip(cells[2][i, j] + 0.5 - dist, 0, 1)  # anti-aliased disc edge
    rng = np.random.default_rng(r0 * 7919 + c0)
    tile = 20 + inside * (cells[3][i, j] - 20) + rng.normal(0, 4, (TILE, TILE))
    tile[(rows >= side) | (cols >= side)] = 0
    return np.clip(np.rint(tile), 0, 255).astype(np.uint8)


def write_slide(path: Path, side: int, cell: int = CELL) -> int:
    """Write the synthetic ``side``² tiled BigTIFF (one nucleus per ``cell`` px) tile by tile;
    returns the true nucleus count."""
    import tifffile

    n = side // cell
    cells = _cells(n, n, cell)
    tiles = (synthetic_tile(r, c, n * cell, cells, cell) for r in range(0, side, TILE) for c in range(0, side, TILE))
    tifffile.imwrite(path, tiles, shape=(side, side), dtype=np.uint8, tile=(TILE, TILE), bigtiff=True,
                     compression="zlib", photometric="minisblack")
    return n * n


def load() -> str:
    return "load average " + " ".join(f"{x:.2f}" for x in os.getloadavg()) + f" on {os.cpu_count()} CPUs"


def nuclei(*argv: str, timed: bool = False, env: dict[str, str] | None = None) -> tuple[float, str]:
    """Run ``nuclei segment ARGV`` (``env``: added variables); returns (wall seconds, stderr)."""
    command = [sys.executable, "-m", "pipeline", "segment", *argv]
    if timed:
        command = ["/usr/bin/time", "-v", *command]
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "PYTHONPATH": str(ROOT), **(env or {})})
    if done.returncode != 0:
        raise SystemExit(f"nuclei segment failed:\n{done.stderr[-3000:]}")
    return time.perf_counter() - start, done.stderr


def bench_slide(side: int, work: Path, cell: int = CELL) -> None:
    import pandas as pd

    path = work / "slide.tif"
    start = time.perf_counter()
    truth = write_slide(path, side, cell)
    print(f"\n1. synthetic {side}x{side} tiled BigTIFF ({path.stat().st_size / 1e6:.0f} MB, {truth} nuclei, one per "
          f"{cell} px) "
          f"written in {time.perf_counter() - start:.0f} s; {load()}")
    seconds, err = nuclei(str(path), "-o", str(work / "slide-out"), "--tta", "none", timed=True)
    peak = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", err).group(1)) * 1024
    count = int(pd.read_csv(work / "slide-out" / "counts.csv")["count"].iloc[0])
    gpx = side * side / 1e9
    print(f"   peak RSS {peak / 2**30:.2f} GiB (goal <= 3 GB), wall {seconds:.0f} s = {seconds / gpx:.0f} s per "
          f"gigapixel ({seconds / gpx / 60:.1f} min/Gpx), count {count} vs truth {truth}: "
          f"{100 * (count - truth) / truth:+.2f} % (goal within 1 %); {load()}")


def bench_workers(n_images: int, work: Path) -> None:
    sources = sorted((ROOT / "data" / "sample" / "stage1_train").glob("*/images/*.png"))
    images = work / "images"
    images.mkdir()
    for k in range(n_images):
        shutil.copy(sources[k % len(sources)], images / f"{k:03d}_{sources[k % len(sources)].name}")
    one = work / "one"
    one.mkdir()
    shutil.copy(next(images.iterdir()), one)
    print(f"\n2. {n_images} images of the embedded sample; {load()}")
    runs = {"local": ([], None), "local 1 thr": ([], {"OMP_NUM_THREADS": "1"}),
            "--workers 1": (["--workers", "1"], None), "--workers 2": (["--workers", "2"], None)}
    results = {}
    for name, (extra, env) in runs.items():
        out = work / f"out-{name.strip('-').replace(' ', '')}"
        seconds, _ = nuclei(str(images), "-o", str(out), *extra, env=env)
        start_up, _ = nuclei(str(one), "-o", str(work / "startup"), *extra, env=env)
        shutil.rmtree(work / "startup")
        results[name] = (seconds, start_up, out)
    base, base_one, base_out = results["local"]
    single, single_one, _ = results["local 1 thr"]
    print(f"   {'run':<12} {'wall s':>7} {'images/s':>9} {'vs local':>9} {'w/o start-up':>13} "
          f"{'vs 1 thr':>9} {'w/o start-up':>13}  identical to local")
    for name, (seconds, start_up, out) in results.items():
        same = all(filecmp.cmp(base_out / f, out / f, shallow=False) for f in ("nuclei.csv", "counts.csv")) and all(
            filecmp.cmp(p, out / "labels" / p.name, shallow=False) for p in (base_out / "labels").iterdir())
        steady = (seconds - start_up) / max(base - base_one, 1e-9)
        steady_single = (seconds - start_up) / max(single - single_one, 1e-9)
        print(f"   {name:<12} {seconds:7.1f} {n_images / seconds:9.2f} {seconds / base:9.2f} {steady:13.2f} "
              f"{seconds / single:9.2f} {steady_single:13.2f}  {same}")
    print(f"   (overhead goal: --workers 2 <= 1.15 x local; {load()})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=20000)
    parser.add_argument("--cell", type=int, default=CELL, help="px per nucleus (22: packed, the dense network's case)")
    parser.add_argument("--images", type=int, default=12)
    parser.add_argument("--skip-slide", action="store_true")
    parser.add_argument("--skip-workers", action="store_true")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = args.keep or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if not args.skip_workers:
            bench_workers(args.images, work)
        if not args.skip_slide:
            bench_slide(args.side, work, args.cell)


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
