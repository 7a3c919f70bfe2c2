"""``nuclei segment`` on z-stacks checked against another lab's 3D ground truth (issue 87).

In one run, side by side, for each ``--z-method`` and a baseline:

- **Real** (``gonuclear3d``: two confocal stacks of Arabidopsis ovule nuclei, 100³ voxels, z
  0.284 µm and y/x 0.127 µm, 54 and 32 nuclei; ``../shared/validation/README.md``). Each stack
  is read as ``nuclei segment`` reads it (:func:`pipeline.files.stacks.read_stacks`), its anisotropy
  taken as ``nuclei segment`` takes it (:func:`pipeline.batch.stack_file.stack_anisotropy`: the
  file's voxel size), and segmented by :func:`pipeline.model.stack_segmenter.segment_stack` with the
  shipped default model and the ``segment`` section's settings.
- **Synthetic, StarDist-like** (:mod:`benchmarks.stardist_like`: 64 × 128 × 128, z step twice the
  pixel size, a PSF three times longer along z, shot noise, no voxel size: the anisotropy is
  estimated by the tool), seeds 0, 1, ...

The **baseline** is the plainest 3D from 2D: each plane segmented by the tool as a 2D image
(:meth:`pipeline.model.segmenter.Segmenter.segment`: normalised and its diameter estimated on its
own), the planes' labels linked by overlap (:func:`pipeline.method.volumes.stitch_planes`: mutual
best IoU ≥ 0.25) and nothing else: no end rule.

Scores on voxels (:func:`pipeline.method.volumes.volume_metrics`): the 3D DSB2018 score (mean over IoU
0.50-0.95 of TP / (TP + FP + FN)) and AP@0.5; the median ``z_extent`` (planes) of the true nuclei
and of those found. ``--small`` (CI): the central 32 planes of each real stack (100 × 100 px each)
and one 24 × 64 × 64 synthetic stack.

    python -m benchmarks.validate_stacks [--small] [--synthetic 3] [--threads 2]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2] / "shared/validation/gonuclear3d"
#: ``--small``: the central planes kept of each real stack (all of its 100 × 100 px: a 2D network needs
#: the context of whole planes, a 40³ cube holds a nucleus or two); the synthetic stack's shape.
SMALL_PLANES, SMALL_SYNTHETIC = 32, (24, 64, 64)


def real_stacks(root: Path, small: bool) -> list[tuple[str, np.ndarray, np.ndarray, float | None]]:
    """(name, stack, true labels, anisotropy as ``nuclei segment`` takes it) of each real stack."""
    import tifffile

    from pipeline.batch.stack_file import stack_anisotropy
    from pipeline.files.stacks import read_stacks
    from pipeline.method.watershed import keep_labels

    found = []
    for path in sorted((root / "images").glob("*.tif")):
        stack = read_stacks(path)[0]
        truth = tifffile.imread(root / "labels" / path.name).astype(np.int32)
        image = stack.array
        if small:
            window = slice((len(image) - SMALL_PLANES) // 2, (len(image) - SMALL_PLANES) // 2 + SMALL_PLANES)
            image, truth = image[window], truth[window]
            truth = keep_labels(truth, np.bincount(truth.ravel()) > 0)
        found.append((path.stem, image, truth, stack_anisotropy(stack, stack.pixel_size, None)))
    return found


def synthetic_stacks(count: int, small: bool) -> list[tuple[str, np.ndarray, np.ndarray, None]]:
    """(name, stack, true labels, None: no voxel size) of the StarDist-like stacks, seeds 0.."""
    from benchmarks.stardist_like import SHAPE, stardist_like_stack

    shape = SMALL_SYNTHETIC if small else SHAPE
    n = 12 if small else 200
    return [(f"stardist-like {seed}", *stardist_like_stack(seed, shape, n), None) for seed in range(count)]


def baseline(segmenter, stack: np.ndarray) -> np.ndarray:
    """(Z, H, W) int32: every plane segmented as a 2D image, linked by overlap (no end rule)."""
    from pipeline.method.volumes import stitch_planes

    planes = [segmenter.segment(np.repeat(plane[..., None], 3, axis=2)).labels for plane in stack]
    return stitch_planes(np.stack(planes))


def score(set_name: str, name: str, method: str, truth: np.ndarray, labels: np.ndarray, seconds: float,
          anisotropy: float | None, how: str) -> dict:
    """One row: the 3D scores and the median z extents."""
    from pipeline.method.volumes import measure_volumes, volume_metrics

    metrics = volume_metrics(truth, labels)
    found = measure_volumes(labels)
    return {"set": set_name, "stack": name, "method": method, "dsb_score": metrics["dsb_score"],
            "ap50": metrics["ap50"], "n_pred": metrics["n_pred"], "n_true": metrics["n_true"],
            "z_extent_true": float(measure_volumes(truth)["z_extent"].median()),
            "z_extent_pred": float(found["z_extent"].median()) if len(found) else float("nan"),
            "anisotropy": anisotropy, "anisotropy_from": how, "s": seconds}


def run_set(set_name: str, stacks: list, segmenter, methods: list[str]) -> list[dict]:
    """Rows of every method and the baseline on every stack of one set (printed as they come)."""
    from pipeline.model.stack_segmenter import segment_stack

    rows = []
    for name, image, truth, anisotropy in stacks:
        for method in methods:
            start = time.perf_counter()
            result = segment_stack(segmenter, image, method, anisotropy)
            how = {None: "given", True: "estimated", False: "assumed 1"}[result.anisotropy_estimated]
            rows.append(score(set_name, name, method, truth, result.labels, time.perf_counter() - start,
                              round(result.anisotropy, 2), how))
            _show(rows[-1])
        start = time.perf_counter()
        rows.append(score(set_name, name, "baseline", truth, baseline(segmenter, image), time.perf_counter() - start,
                          None, ""))
        _show(rows[-1])
    return rows


def _show(row: dict) -> None:
    print(f"{row['set']:12s} {row['stack']:16s} {row['method']:8s} 3D score {row['dsb_score']:.3f}  "
          f"AP@0.5 {row['ap50']:.3f}  {row['n_pred']}/{row['n_true']} nuclei  z extent {row['z_extent_pred']:.0f} "
          f"(true {row['z_extent_true']:.0f})  anisotropy {row['anisotropy']} {row['anisotropy_from']}  "
          f"{row['s']:.0f} s", flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the gonuclear3d folder (images/, labels/)")
    parser.add_argument("--small", action="store_true",
                        help=f"CI: the central {SMALL_PLANES} planes of each real stack, one small synthetic stack")
    parser.add_argument("--synthetic", type=int, default=3, help="StarDist-like stacks (seeds 0..N-1)")
    parser.add_argument("--model", default="default", help="a model folder (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path, help="also write the summary here (a record per set and method)")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import torch

    from pipeline.config.params import Z_METHODS, SegmentConfig
    from pipeline.model.segmenter import Segmenter

    torch.set_num_threads(args.threads)
    started = time.perf_counter()
    segmenter = Segmenter.from_model_dir(args.model, **SegmentConfig().segmenter_options())
    methods = list(Z_METHODS)
    print(f"model {args.model}; methods {', '.join(methods)} (default {methods[0]}) and the baseline\n")
    rows = run_set("gonuclear3d", real_stacks(args.root, args.small), segmenter, methods)
    rows += run_set("synthetic", synthetic_stacks(1 if args.small else args.synthetic, args.small), segmenter, methods)
    table = pd.DataFrame(rows)
    summary = table.groupby(["set", "method"], sort=False).agg(
        stacks=("stack", "size"), dsb_score=("dsb_score", "mean"), ap50=("ap50", "mean"),
        n_pred=("n_pred", "sum"), n_true=("n_true", "sum"), z_extent_true=("z_extent_true", "median"),
        z_extent_pred=("z_extent_pred", "median"), s=("s", "mean"))
    print("\n3D DSB2018 score and AP@0.5 on voxels, means over the stacks; median z extents in planes:\n")
    with pd.option_context("display.width", 200):
        print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    if args.json:
        from pipeline.files.io import write_json

        write_json(args.json, summary.reset_index().to_dict(orient="records"))
    print(f"total {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    np.seterr(all="ignore")
    raise SystemExit(run_main(main))
