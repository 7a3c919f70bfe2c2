"""Benchmark the outline exports (``--export geojson,imagej``) against what segment does anyway.

Usage::

    python -m benchmarks.bench_export [--size 1024] [--nuclei 1500] [--repeats 3]

On a dense synthetic field (``--nuclei`` touching nuclei in ``--size``² px, a watershed of random
seeds: the worst case for tracing), prints the median seconds of

- ``measure_nuclei`` (nuclei.csv, which ``nuclei segment`` always computes),
- ``nucleus_polygons`` (the pixel-edge tracing both exports share),
- ``write_geojson`` and ``write_imagej_rois`` (tracing + encoding + writing),

and each export's cost as a ratio of the measurement's, with the file sizes; then checks that the
GeoJSON rasterises back to the labels (exactly).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np


def dense_field(size: int, n: int, seed: int = 0) -> np.ndarray:
    """int32 (size, size) labels: a watershed of ``n`` random seeds within 10 px of one."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    rng = np.random.default_rng(seed)
    seeds = np.zeros((size, size), np.int32)
    points = rng.integers(0, size, (n, 2))
    seeds[points[:, 0], points[:, 1]] = np.arange(1, n + 1)
    distance = ndi.distance_transform_edt(seeds == 0)
    return watershed(distance, seeds, mask=distance < 10).astype(np.int32)


def fill_even_odd(rings: list[np.ndarray], labels: np.ndarray) -> np.ndarray:
    """bool mask of the pixels whose centre is inside an odd number of the (x, y) rings."""
    from skimage.draw import polygon

    mask = np.zeros(labels.shape, bool)
    for ring in rings:
        rows, cols = polygon(ring[:, 1] - 0.5, ring[:, 0] - 0.5, labels.shape)
        mask[rows, cols] ^= True
    return mask


def median_seconds(function, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--nuclei", type=int, default=1500)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from pipeline.batch.outlines import nucleus_polygons, write_geojson, write_imagej_rois
    from pipeline.method.features import measure_nuclei

    labels = dense_field(args.size, args.nuclei)
    intensity = np.ones(labels.shape, np.float32)
    table = measure_nuclei(labels, intensity)
    print(f"{len(table)} nuclei in {args.size}x{args.size} px, median of {args.repeats} runs")
    with tempfile.TemporaryDirectory() as tmp:
        geojson, rois = Path(tmp) / "x.geojson", Path(tmp) / "x.zip"
        rows = [
            ("measure_nuclei (nuclei.csv)", lambda: measure_nuclei(labels, intensity), None),
            ("nucleus_polygons (tracing)", lambda: nucleus_polygons(labels), None),
            ("write_geojson", lambda: write_geojson(geojson, labels, table), geojson),
            ("write_imagej_rois", lambda: write_imagej_rois(rois, labels), rois),
        ]
        base = None
        for name, function, path in rows:
            seconds = median_seconds(function, args.repeats)
            base = base or seconds
            size = f"  {path.stat().st_size / 1e6:.2f} MB" if path is not None else ""
            print(f"{name:30s} {seconds:7.3f} s  {seconds / base:5.2f}x measure{size}")
        exact = all(
            np.array_equal(fill_even_odd([r for part in parts for r in part], labels), labels == value)
            for value, parts in nucleus_polygons(labels).items()
        )
    print(f"every nucleus's outline rasterises back to its pixels: {exact}")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
