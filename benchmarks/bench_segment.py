"""Benchmark ``nuclei segment``: CPU seconds per 1024×1024 image and counting error.

Usage::

    python -m benchmarks.bench_segment [--model DIR] [--threads 2] [--repeats 3]

1. Time per 1024×1024 image on the CPU (torch threads = ``--threads``), split into stages
   (read, normalise, nucleus-diameter estimate, network at the estimated scale, watershed,
   measure + overlay + write), median of ``--repeats`` runs on the 1024×1024 images of the
   embedded sample, against the 3 s budget of SPEC section 6; in fp32 and in the automatic
   precision (bf16 + channels_last on a CPU with native bf16) side by side, with the ratio.
2. The complete command (``segment_images``: model loading, reading, report) on the whole
   embedded sample, and its counting error: per image |predicted − true| / true count, true
   count = number of mask files; over all images and over the images ``nuclei segment`` does not
   flag (bright-field, low confidence: counts it tells the user not to trust).
3. The measurement of a dense field (1,500 touching nuclei in 1024×1024, synthetic): seconds of
   ``measure_nuclei`` and of regionprops for the same columns.
4. The speed envelope of the network's size: ``Segmenter.segment`` (precision ``auto``, the
   segment section's TTA) of a 1024×1024 mosaic of the sample's 256×256 small-nucleus fluorescence
   tiles, which the network sees enlarged (small nuclei), against one fp32 forward pass of a plain
   U-Net of width 16 and depth 4 at 1024×1024, both on ``--threads`` threads, medians of
   ``--repeats`` runs side by side; goal: at most 2×.
5. The costly case (issue 59, after SPEC section 6): a 4×4 mosaic of the first 16 dark (mean ≤ 60)
   256×256 ``stage1_train`` images with 20–80 nuclei, in sorted id order (:func:`costly_mosaic`;
   ``--stage1 DIR``, default ``../shared/dsb2018/stage1_train``; skipped when absent), which the
   diameter estimate enlarges about 2×: the time per image through ``Segmenter.segment`` (five
   images minus the first, divided by four) against one fp32 forward pass of the same plain U-Net,
   median of ``--repeats`` such ratios (:func:`costly_ratio`; ``benchmarks/bench_backends.py``
   prints it per inference backend).
6. An empty field (a screen's empty well): 1024×1024 of dark camera noise (:func:`empty_field`),
   timed as the costly case; the nuclei found (none expected) and the scale it was segmented at.
7. The dense case, for a model that runs dense images again (a ``networks`` entry with
   ``nucleus_fraction_above``): a 2×2 mosaic of the first four
   ``tissue_fluo_e2f`` images (``--extra DIR``, default ``../shared/extra``; skipped when absent),
   timed as the costly case with the dense network and with the first network alone, side by side.
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

import numpy as np

from pipeline.config.routing import needs_second_pass

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "stage1_train"
STAGE1 = ROOT.parent / "shared" / "dsb2018" / "stage1_train"
BUDGET_S = 3.0
#: The costly case: ``COSTLY_TILES`` tiles of 256×256 whose mean grey level (0–255, all channels) is at most
#: ``COSTLY_MEAN`` and whose mask count lies in ``COSTLY_NUCLEI``, the first in sorted id order.
COSTLY_TILES, COSTLY_MEAN, COSTLY_NUCLEI = 16, 60.0, (20, 80)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=None, help="default: pipeline/shipped/model, else models/trained/model"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--large", type=int, default=0, metavar="N", help="also segment a synthetic NxN image"
    )
    parser.add_argument("--stage1", type=Path, default=STAGE1, help="DSB2018 stage1_train (the costly case)")
    parser.add_argument("--extra", type=Path, default=STAGE1.parents[1] / "extra", help="the extra sources (the dense case)")
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import pandas as pd
    import torch

    from pipeline.batch.segment import Settings, segment_images
    from pipeline.config.params import load_params
    from pipeline.files.io import read_image, write_labels, write_png
    from pipeline.method.features import measure_nuclei
    from pipeline.method.heads import confidence
    from pipeline.method.overlay import display_uint8, draw_outlines
    from pipeline.method.watershed import postprocess_to_shape
    from pipeline.model.model_dir import available_model_dir
    from pipeline.model.segmenter import Segmenter

    torch.set_num_threads(args.threads)
    model_dir = args.model or available_model_dir()
    if model_dir is None:
        print(
            "no model: expected pipeline/shipped/model/ or models/trained/model/ (or pass --model)", file=sys.stderr
        )
        return 2
    print(
        f"model {model_dir}; CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores visible, "
        f"torch threads {torch.get_num_threads()}, torch {torch.__version__}"
    )
    settings = Settings.from_params(load_params()).segment  # the segment section of params.yaml
    big = [
        d
        for d in sorted(SAMPLE.iterdir())
        if read_image(d / "images" / f"{d.name}.png").shape[:2] == (1024, 1024)
    ]

    # ---------------------------------------------------------------- 1. seconds per 1024×1024
    medians = {}
    for precision in ("fp32", "auto"):
        t0 = time.perf_counter()
        segmenter = Segmenter.from_model_dir(
            model_dir, **{**settings.segmenter_options(), "device": "cpu", "precision": precision},
        )  # fmt: skip
        load_s = time.perf_counter() - t0
        print(f"\nprecision {precision} -> {segmenter.predictor.precision} (channels_last); model load "
              f"{load_s:.2f} s (once per run); tta={settings.tta}, tile {segmenter.predictor.tile_size}")
        stages: dict[str, list[float]] = {
            k: [] for k in ("read", "normalise", "diameter", "network", "watershed", "measure+write")
        }
        totals, scales = [], []
        with tempfile.TemporaryDirectory() as tmp:
            for _ in range(args.repeats):
                for sample in big:
                    t = [time.perf_counter()]
                    raw = read_image(sample / "images" / f"{sample.name}.png")
                    t.append(time.perf_counter())
                    image = segmenter.normalize(raw)
                    t.append(time.perf_counter())
                    _, _, scale = segmenter.scale_for(image)
                    t.append(time.perf_counter())
                    probs = segmenter.predict_scaled(image, scale)
                    t.append(time.perf_counter())
                    labels = postprocess_to_shape(probs, segmenter.head, image.shape[:2], scale,
                                                  **segmenter.thresholds)
                    confidence(probs, segmenter.head)
                    t.append(time.perf_counter())
                    measure_nuclei(labels, raw.mean(axis=2))
                    overlay = draw_outlines(display_uint8(image), labels)
                    write_labels(Path(tmp) / "l.tif", labels)
                    write_png(Path(tmp) / "o.png", overlay)
                    t.append(time.perf_counter())
                    for name, a, b in zip(stages, t, t[1:], strict=False):
                        stages[name].append(b - a)
                    totals.append(t[-1] - t[0])
                    scales.append(scale)
        median = statistics.median(totals)
        medians[precision] = {k: statistics.median(v) for k, v in stages.items()} | {"total": median}
        print(f"1024x1024 image, {len(big)} images x {args.repeats} repeats (scales picked: "
              f"{', '.join(f'{s:.2f}' for s in sorted(set(scales)))}), median seconds per stage:")
        for name, values in stages.items():
            print(f"  {name:14s} {statistics.median(values):6.3f} s")
        print(
            f"  {'total':14s} {median:6.3f} s  = {median / BUDGET_S:.2f} x the {BUDGET_S:.0f} s budget "
            f"({'within' if median <= BUDGET_S else 'OVER'} budget)"
        )
    fp32, auto = medians["fp32"], medians["auto"]
    print(f"\nautomatic precision / fp32: network {auto['network'] / fp32['network']:.2f}x the time, "
          f"whole image {auto['total'] / fp32['total']:.2f}x")

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
    table["flag"] = counts["flag"].fillna("").astype(str).str.split(":").str[0].str[:40]
    trusted = table[table["flag"] == ""]
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
    print(
        f"without the {len(table) - len(trusted)} flagged images ({len(trusted)} left): mean "
        f"{trusted['rel_error'].mean():.3f}, median {trusted['rel_error'].median():.3f}; total "
        f"{int(trusted['predicted'].sum())} predicted vs {int(trusted['true'].sum())} true"
    )
    dense()
    envelope(model_dir, settings, args.repeats)
    segmenter = Segmenter.from_model_dir(model_dir, **{**settings.segmenter_options(), "device": "cpu"})
    if args.stage1.is_dir():
        mosaic, _ = costly_mosaic(args.stage1)
        per_image, reference, scale = costly_ratio(segmenter, mosaic, args.repeats)
        print(f"\ncostly case: Segmenter.segment of the 4x4 mosaic of dark 256x256 stage1_train tiles with 20-80 nuclei "
              f"(scale {scale:.2f}, {segmenter.predictor.precision}, backend {segmenter.predictor.backend}) "
              f"{per_image:.2f} s per image; plain w16 d4 U-Net at 1024x1024 {reference:.2f} s: "
              f"{per_image / reference:.2f}x (goal 2x)")
    else:
        print(f"\ncostly case skipped: {args.stage1} not found")
    empty = empty_field()
    per_image, reference, scale = costly_ratio(segmenter, empty, args.repeats)
    print(f"\nempty field: Segmenter.segment of 1024x1024 dark camera noise (scale {scale:.2f}, "
          f"{segmenter.segment(empty).labels.max()} nuclei found) {per_image:.2f} s per image; plain w16 d4 "
          f"U-Net at 1024x1024 {reference:.2f} s: {per_image / reference:.2f}x")
    if needs_second_pass(segmenter.config.routes) and (args.extra / DENSE_SOURCE).is_dir():
        dense_case(segmenter, dense_mosaic(args.extra / DENSE_SOURCE), args.repeats)
    if args.large:
        large(args.large, model_dir)
    return 0


#: The source of the dense case (section 7): intestinal tissue sections, nuclei packed.
DENSE_SOURCE = "tissue_fluo_e2f"


def dense_mosaic(root: Path) -> np.ndarray:
    """The dense case's image: uint8 (2h, 2w, 3), a 2×2 mosaic of the first four images (sorted by
    name) of the ``folder``-layout source ``root``, each cropped to the smallest one's shape."""
    from pipeline.files.io import read_image

    tiles = [(read_image(p) * 255).round().astype(np.uint8) for p in sorted((root / "images").iterdir())[:4]]
    h, w = min(t.shape[0] for t in tiles), min(t.shape[1] for t in tiles)
    tiles = [t[:h, :w] for t in tiles]
    return np.concatenate([np.concatenate(tiles[:2], axis=1), np.concatenate(tiles[2:], axis=1)], axis=0)


def dense_case(segmenter, image: np.ndarray, repeats: int) -> None:
    """Print section 7: seconds of ``segmenter`` on a dense image, with its dense network and with
    its first network alone (a copy without the route), each against the reference pass."""
    import copy

    alone = copy.copy(segmenter)
    alone._networks = {name: network for name, network in segmenter._networks.items()
                       if segmenter.config.route(name).nucleus_fraction_above is None}
    reference = reference_network()
    routed_s, ref_routed, _ = costly_ratio(segmenter, image, repeats, reference)
    alone_s, ref_alone, scale = costly_ratio(alone, image, repeats, reference)
    print(f"\ndense case: Segmenter.segment of a {image.shape[1]}x{image.shape[0]} mosaic of four {DENSE_SOURCE} "
          f"images (scale {scale:.2f}) {routed_s:.2f} s with the dense network, {alone_s:.2f} s with the first "
          f"network alone: {routed_s / ref_routed:.2f}x and {alone_s / ref_alone:.2f}x the plain w16 d4 U-Net's pass "
          f"({routed_s / ref_routed / (alone_s / ref_alone):.2f}x)")


def empty_field(side: int = 1024, seed: int = 0) -> np.ndarray:
    """An empty field: uint8 (side, side, 3) camera noise, grey level 10 ± 3 (a dark well with no
    cell)."""
    return np.random.default_rng(seed).normal(10, 3, (side, side, 3)).clip(0, 255).astype(np.uint8)


def fluo_small_mosaic(side: int = 1024) -> np.ndarray:
    """A ``side`` × ``side`` uint8 RGB mosaic of the embedded sample's 256×256 small-nucleus
    fluorescence tiles (repeated in order until the mosaic is full)."""
    from pipeline.files.io import read_image
    from pipeline.method.image_types import classify_image

    tiles = [image for d in sorted(SAMPLE.iterdir())
             if (image := read_image(d / "images" / f"{d.name}.png")).shape[:2] == (256, 256)
             and classify_image(image) == "fluo-small"]
    n = side // 256
    rows = [np.concatenate([tiles[(r * n + c) % len(tiles)] for c in range(n)], axis=1) for r in range(n)]
    return np.concatenate(rows, axis=0)


def costly_mosaic(root: Path = STAGE1) -> tuple[np.ndarray, list[str]]:
    """The costly case's image: uint8 (1024, 1024, 3), a 4×4 mosaic (row by row) of the first
    :data:`COSTLY_TILES` images of the Kaggle-layout ``root``, in sorted id order, that are 256×256, dark
    (mean ≤ :data:`COSTLY_MEAN` of 255, over every pixel and channel) and hold :data:`COSTLY_NUCLEI`
    nuclei (mask files); and their ids."""
    from PIL import Image

    tiles, ids = [], []
    low, high = COSTLY_NUCLEI
    for folder in sorted(p for p in Path(root).iterdir() if p.is_dir()):
        if not low <= len(list((folder / "masks").glob("*.png"))) <= high:
            continue
        with Image.open(folder / "images" / f"{folder.name}.png") as im:
            tile = np.asarray(im.convert("RGB"))
        if tile.shape[:2] != (256, 256) or tile.mean() > COSTLY_MEAN:
            continue
        tiles.append(tile)
        ids.append(folder.name)
        if len(tiles) == COSTLY_TILES:
            break
    if len(tiles) < COSTLY_TILES:
        raise SystemExit(f"{root}: only {len(tiles)} images fit the costly case, need {COSTLY_TILES}")
    n = int(COSTLY_TILES**0.5)
    return np.concatenate([np.concatenate(tiles[r * n : (r + 1) * n], axis=1) for r in range(n)], axis=0), ids


def reference_network():
    """The yardstick of the speed ratios: a plain fp32 U-Net of width 16 and depth 4 (conv–BN–ReLU ×2
    per level, transposed-convolution upsampling), channels-first, eval mode, batch norm not folded."""
    from pipeline.model.networks import build_model

    return build_model({"arch": "unet", "head": "sigmoid", "depth": 4, "width": 16, "upsampling": "transpose"}).eval()


def time_reference(reference, side: int = 1024, passes: int = 3) -> float:
    """Median seconds of one forward pass of ``reference`` on a (1, 3, side, side) input (after a warm-up)."""
    import torch

    x = torch.rand(1, 3, side, side)
    seconds = []
    with torch.inference_mode():
        reference(x)
        for _ in range(passes):
            t0 = time.perf_counter()
            reference(x)
            seconds.append(time.perf_counter() - t0)
    return statistics.median(seconds)


def per_image_seconds(segmenter, image: np.ndarray, runs: int = 5) -> tuple[float, object]:
    """Seconds per image of ``segmenter.segment(image)`` as the CLI pays them: ``runs`` images in a
    row, the first (warm-up: allocation, an exported backend's compilation) left out, the rest
    averaged ((total − first) / (runs − 1)); and the last result."""
    seconds = []
    for _ in range(runs):
        t0 = time.perf_counter()
        result = segmenter.segment(image)
        seconds.append(time.perf_counter() - t0)
    return sum(seconds[1:]) / (runs - 1), result


def costly_ratio(segmenter, image: np.ndarray, repeats: int = 3, reference=None) -> tuple[float, float, float]:
    """The median over ``repeats`` of (seconds per image of ``segmenter`` on ``image``,
    :func:`per_image_seconds`) and of one reference forward pass at 1024² (:func:`time_reference`,
    timed just before, on the same threads); returns (seconds per image, reference seconds, scale).
    The ratio of the two is the figure to report (the machine's load drifts; each repeat is side by side)."""
    reference = reference or reference_network()
    own, ref = [], []
    for _ in range(repeats):
        ref.append(time_reference(reference))
        seconds, result = per_image_seconds(segmenter, image)
        own.append(seconds)
    ratios = sorted(o / r for o, r in zip(own, ref, strict=True))
    middle = ratios[len(ratios) // 2]
    k = [o / r for o, r in zip(own, ref, strict=True)].index(middle)
    return own[k], ref[k], result.scale


def envelope(model_dir: Path, settings, repeats: int, ratio_goal: float = 2.0) -> None:
    """Print section 4: the seconds of ``Segmenter.segment`` on a small-nucleus mosaic against those of
    one fp32 forward pass of a plain w16 d4 U-Net at 1024², side by side, and their ratio."""
    import torch

    from pipeline.model.networks import build_model
    from pipeline.model.segmenter import Segmenter

    mosaic = fluo_small_mosaic()
    segmenter = Segmenter.from_model_dir(model_dir, **{**settings.segmenter_options(), "device": "cpu"})
    reference = build_model({"arch": "unet", "head": "sigmoid", "depth": 4, "width": 16}).eval()
    x = torch.rand(1, 3, 1024, 1024)
    seg_s, ref_s, bare_s = [], [], []
    probes = segmenter.probe_factors
    with torch.inference_mode():
        reference(x)  # warm-up
        result = segmenter.segment(mosaic)
        for _ in range(repeats):
            t0 = time.perf_counter()
            reference(x)
            ref_s.append(time.perf_counter() - t0)
            t0 = time.perf_counter()
            result = segmenter.segment(mosaic)
            seg_s.append(time.perf_counter() - t0)
            segmenter.probe_factors = ()  # the flag's scale probes (pipeline.method.trust) left out
            t0 = time.perf_counter()
            segmenter.segment(mosaic)
            bare_s.append(time.perf_counter() - t0)
            segmenter.probe_factors = probes
    seg, ref, bare = statistics.median(seg_s), statistics.median(ref_s), statistics.median(bare_s)
    print(f"\nspeed envelope: Segmenter.segment of a 1024x1024 mosaic of small-nucleus fluorescence tiles "
          f"(scale {result.scale:.2f}, {segmenter.predictor.precision}, tta {settings.tta}) {seg:.2f} s; one fp32 "
          f"forward pass of a plain w16 d4 U-Net at 1024x1024 {ref:.2f} s: {seg / ref:.2f}x "
          f"({'within' if seg / ref <= ratio_goal else 'OVER'} the {ratio_goal:g}x envelope); without the "
          f"flag's scale probes {bare:.2f} s ({bare / ref:.2f}x; the probes cost {seg / bare:.2f}x)")


def dense(n: int = 1500, size: int = 1024) -> None:
    """Measure ``n`` touching nuclei of a synthetic size×size label image (a dense field) with
    ``measure_nuclei`` and with regionprops (the same columns), side by side."""
    from skimage.measure import regionprops_table
    from skimage.segmentation import expand_labels

    from pipeline.method.features import measure_nuclei

    rng = np.random.default_rng(0)
    labels = np.zeros((size, size), np.int32)
    points = rng.integers(0, size, (n, 2))
    labels[points[:, 0], points[:, 1]] = np.arange(1, n + 1)
    labels = expand_labels(labels, 8)
    intensity = rng.random((size, size)).astype(np.float32)
    properties = ("label", "area", "centroid", "bbox", "equivalent_diameter_area", "perimeter", "eccentricity",
                  "solidity", "intensity_mean")
    seconds = {}
    for name, run in (
        ("measure_nuclei", lambda: measure_nuclei(labels, intensity)),
        ("regionprops", lambda: regionprops_table(labels, intensity, properties=properties)),
    ):
        t0 = time.perf_counter()
        run()
        seconds[name] = time.perf_counter() - t0
    count = int(np.unique(labels).size - 1)
    print(
        f"\ndense field, {count} nuclei in {size}x{size}: measure_nuclei {seconds['measure_nuclei']:.2f} s "
        f"({1000 * seconds['measure_nuclei'] / count:.2f} ms per nucleus), regionprops "
        f"{seconds['regionprops']:.2f} s: {seconds['regionprops'] / seconds['measure_nuclei']:.1f}x"
    )


def large(size: int, model_dir: Path) -> None:
    """Segment one synthetic size×size 16-bit image (bright disks) and report time and peak memory."""
    import resource

    import tifffile
    from skimage.draw import disk

    from pipeline.batch.segment import segment_images

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
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
