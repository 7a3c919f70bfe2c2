"""3D nuclei: the 3D DSB2018 score of ``stitch`` and ``ortho`` on synthetic z-stacks (issue 61).

Usage::

    python -m benchmarks.eval_3d [--model default] [--stacks 3] [--threads 2] [--size 160] [--nuclei 40] [--apart]

Synthetic fluorescence stacks (:func:`pipeline.method.synthetic.synthetic_nuclei_stack`: ellipsoids of
mean semi-axis ``--radius`` px, about half of them touching another in a random direction (none with
``--apart``), blurred, noisy), ``--stacks`` per
condition with seeds 0, 1, ...:

- isotropic: ``48 × size × size`` voxels, z step 1 px;
- anisotropic 1:4: ``12 × size × size``, z step 4 px (the same 48 px of depth).

Each is segmented by the model (the shipped one by default, the ``segment`` section's settings of
``params.yaml``: TTA 'auto', the backend 'auto'; the nucleus diameter estimated once per stack) with
``segment_stack(method=...)`` at the true anisotropy, and scored on voxels
(:func:`pipeline.method.volumes.volume_metrics`): the DSB2018 score (mean over IoU 0.50-0.95 of
TP / (TP + FP + FN)) and AP@0.5 (TP / (TP + FP + FN) at IoU 0.5), means over the stacks.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]

#: (name, anisotropy, planes) of the conditions; both hold 48 px of depth.
CONDITIONS = (("isotropic", 1.0, 48), ("anisotropic 1:4", 4.0, 12))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="a model folder (default: the shipped model)")
    parser.add_argument("--stacks", type=int, default=3, help="stacks per condition (seeds 0..N-1)")
    parser.add_argument("--size", type=int, default=160, help="px, height and width of a stack")
    parser.add_argument("--nuclei", type=int, default=40, help="nuclei asked for per stack")
    parser.add_argument("--radius", type=float, default=10.0, help="px, mean semi-axis of a nucleus")
    parser.add_argument("--noise", type=float, default=0.05)
    parser.add_argument("--blur", type=float, default=1.0)
    parser.add_argument("--apart", action="store_true", help="no touching nuclei (the default: about half touch one)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--methods", default="stitch,ortho")
    args = parser.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))

    import torch

    from pipeline.config.params import SegmentConfig
    from pipeline.method.synthetic import synthetic_nuclei_stack
    from pipeline.method.volumes import volume_metrics
    from pipeline.model.segmenter import Segmenter
    from pipeline.model.stack_segmenter import segment_stack

    torch.set_num_threads(args.threads)
    options = SegmentConfig().segmenter_options()
    segmenter = Segmenter.from_model_dir(args.model, **options)
    print(f"model {args.model}: canonical diameter {segmenter.diameter} px; backend {segmenter.predictor.backend}, "
          f"precision {segmenter.predictor.precision}, tta {options['tta']} (stitch planes), {args.threads} threads\n")
    rows = []
    for condition, anisotropy, planes in CONDITIONS:
        for seed in range(args.stacks):
            image, truth = synthetic_nuclei_stack((planes, args.size, args.size), args.nuclei, args.radius,
                                                  anisotropy, touching=not args.apart, noise=args.noise, blur=args.blur,
                                                  seed=seed)
            for method in args.methods.split(","):
                start = time.perf_counter()
                result = segment_stack(segmenter, image, method, anisotropy)
                seconds = time.perf_counter() - start
                metrics = volume_metrics(truth, result.labels)
                rows.append({"condition": condition, "method": method, "seed": seed, "diameter": result.diameter,
                             "seconds": seconds, **{k: metrics[k] for k in
                                                    ("dsb_score", "ap50", "n_true", "n_pred", "mean_matched_iou")}})
                print(f"{condition:16s} seed {seed} {method:6s}: DSB {metrics['dsb_score']:.3f}  "
                      f"AP@0.5 {metrics['ap50']:.3f}  {metrics['n_pred']}/{metrics['n_true']} nuclei  "
                      f"diameter {result.diameter:.1f} px  {seconds:.1f} s", flush=True)
    table = pd.DataFrame(rows)
    summary = table.groupby(["condition", "method"], sort=False).agg(
        stacks=("seed", "size"), dsb_score=("dsb_score", "mean"), ap50=("ap50", "mean"),
        matched_iou=("mean_matched_iou", "mean"), n_pred=("n_pred", "sum"), n_true=("n_true", "sum"),
        diameter=("diameter", "mean"), seconds=("seconds", "mean"))
    print("\n3D DSB2018 score on voxels (mean over stacks):\n")
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    np.seterr(all="ignore")
    raise SystemExit(run_main(main))
