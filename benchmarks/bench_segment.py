"""Benchmark ``nuclei segment``: CPU seconds per 1024×1024 image and counting error.

Usage::

    python benchmarks/bench_segment.py [--model DIR] [--threads 2] [--repeats 3]

1. Time per 1024×1024 image on the CPU (torch threads = ``--threads``), split into stages
   (normalise, network, watershed, measure + overlay + write), median of ``--repeats`` runs on
   the 1024×1024 images of the embedded sample, against the 3 s budget of SPEC section 6.
2. The complete command (``segment_images``: model loading, reading, report) on the whole
   embedded sample, and its counting error: per image |predicted − true| / true count, true
   count = number of mask files.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "stage1_train"
BUDGET_S = 3.0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="default: models/default, else models/trained/model"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--large", type=int, default=0, metavar="N", help="also segment a synthetic NxN image"
    )
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import pandas as pd
    import torch

    from pipeline.config import load_params
    from pipeline.inference import load_predictor, normalize
    from pipeline.io import read_image, write_labels, write_png
    from pipeline.measure import measure_nuclei
    from pipeline.models import available_model_dir
    from pipeline.overlay import display_uint8, draw_outlines
    from pipeline.segment import Settings, label_nuclei, segment_images
    from pipeline.watershed import postprocess, thresholds

    torch.set_num_threads(args.threads)
    model_dir = args.model or available_model_dir()
    if model_dir is None:
        print(
            "no model: expected models/default/ or models/trained/model/ (or pass --model)", file=sys.stderr
        )
        return 2
    print(
        f"model {model_dir}; CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}"
    )

    t0 = time.perf_counter()
    settings = Settings.from_params(load_params())  # the segment section of params.yaml
    predictor = load_predictor(
        model_dir, device="cpu", tta=settings.tta, tile_size=settings.tile_size,
        overlap=settings.overlap, batch_size=settings.batch_size,
    )  # fmt: skip
    load_s = time.perf_counter() - t0
    config = predictor.config
    kwargs = thresholds(config.get("postprocess"))
    print(f"model load {load_s:.2f} s (once per run); tta={predictor.tta}, tile {predictor.tile_size}")

    # ---------------------------------------------------------------- 1. seconds per 1024×1024
    big = [
        d
        for d in sorted(SAMPLE.iterdir())
        if read_image(d / "images" / f"{d.name}.png").shape[:2] == (1024, 1024)
    ]
    stages: dict[str, list[float]] = {
        "read": [],
        "normalise": [],
        "network": [],
        "watershed": [],
        "measure+write": [],
    }
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for _ in range(args.repeats):
            for sample in big:
                t = [time.perf_counter()]
                raw = read_image(sample / "images" / f"{sample.name}.png")
                t.append(time.perf_counter())
                image = normalize(raw, config)
                t.append(time.perf_counter())
                probs = predictor.predict(image)
                t.append(time.perf_counter())
                labels = postprocess(probs, predictor.head, **kwargs)
                t.append(time.perf_counter())
                measure_nuclei(labels, raw.mean(axis=2))
                overlay = draw_outlines(display_uint8(image), labels)
                write_labels(Path(tmp) / "l.tif", labels)
                write_png(Path(tmp) / "o.png", overlay)
                t.append(time.perf_counter())
                for name, a, b in zip(stages, t, t[1:], strict=False):
                    stages[name].append(b - a)
                totals.append(t[-1] - t[0])
        # the block-wise path (used above segment.block_size) on the same image, for comparison
        image = normalize(read_image(big[0] / "images" / f"{big[0].name}.png"), config)
        t0 = time.perf_counter()
        label_nuclei(image, predictor, predictor.head, kwargs, block_size=512, margin=64)
        blockwise_s = time.perf_counter() - t0
    median = statistics.median(totals)
    print(f"\n1024x1024 image, {len(big)} images x {args.repeats} repeats, median seconds per stage:")
    for name, values in stages.items():
        print(f"  {name:14s} {statistics.median(values):6.3f} s")
    print(
        f"  {'total':14s} {median:6.3f} s  = {median / BUDGET_S:.2f} x the {BUDGET_S:.0f} s budget "
        f"({'within' if median <= BUDGET_S else 'OVER'} budget)"
    )
    network_and_ws = statistics.median(stages["network"]) + statistics.median(stages["watershed"])
    print(
        f"  block-wise (512 px blocks, 64 px margins) network + watershed: {blockwise_s:.3f} s "
        f"= {blockwise_s / network_and_ws:.2f} x whole-image"
    )

    # ---------------------------------------------------------------- 2. counting error
    images = [d / "images" / f"{d.name}.png" for d in sorted(SAMPLE.iterdir())]
    true = {d.name: len(list((d / "masks").glob("*.png"))) for d in sorted(SAMPLE.iterdir())}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        counts = segment_images(images, tmp, model_dir, "cpu")
        run_s = time.perf_counter() - t0
    counts = counts.set_index("image")
    table = pd.DataFrame({"true": pd.Series(true), "predicted": counts["count"].astype(float)})
    table["rel_error"] = (table["predicted"] - table["true"]).abs() / table["true"]
    print(
        f"\nwhole embedded sample ({len(images)} images, {sum(true.values())} nuclei) through segment_images: "
        f"{run_s:.1f} s = {run_s / len(images):.2f} s per image (model load and report included)"
    )
    print(table.to_string(float_format=lambda v: f"{v:.3f}"))
    print(
        f"counting error |pred - true| / true: mean {table['rel_error'].mean():.3f}, "
        f"median {table['rel_error'].median():.3f}; total {int(table['predicted'].sum())} predicted vs "
        f"{int(table['true'].sum())} true ({table['predicted'].sum() / table['true'].sum() - 1:+.1%})"
    )
    if args.large:
        large(args.large, model_dir)
    return 0


def large(size: int, model_dir: Path) -> None:
    """Segment one synthetic size×size 16-bit image (bright disks) and report time and peak memory."""
    import resource

    import numpy as np
    import tifffile
    from skimage.draw import disk

    from pipeline.segment import segment_images

    image = np.full((size, size), 1000, np.uint16)
    centres = [(r, c) for r in range(20, size - 10, 40) for c in range(20, size - 10, 40)]
    for r, c in centres:
        image[disk((r, c), 9, shape=image.shape)] = 3000
    with tempfile.TemporaryDirectory() as tmp:
        tifffile.imwrite(Path(tmp) / "large.tif", image)
        del image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        t0 = time.perf_counter()
        counts = segment_images([Path(tmp) / "large.tif"], Path(tmp) / "out", model_dir, "cpu")
        seconds = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    print(
        f"\n{size}x{size} synthetic image ({len(centres)} disks): {counts.loc[0, 'count']} nuclei, "
        f"status {counts.loc[0, 'status']}, {seconds:.1f} s; peak RSS {peak:.2f} GB (before: {before:.2f} GB)"
    )


if __name__ == "__main__":
    sys.exit(main())
