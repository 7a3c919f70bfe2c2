"""What measuring beyond counting costs, and how the ``auto`` positivity rule was chosen (issue 60).

Default: on a synthetic 1024 × 1024 field of about 1,500 nuclei with 4 channels (a nuclear stain, a
marker positive in 40 % of the nuclei, a nuclear/cytoplasmic signal, spots), the time of
:func:`pipeline.batch.image_features.measure_image` measuring every channel with cells (5 px) and spots
(one channel) and an ``auto`` positive call, as a ratio to :func:`pipeline.method.features.measure_nuclei`
alone (the shape and one intensity: what ``nuclei segment`` measured before), median of ``--repeats``.

``--rules``: the candidate ``auto`` rules on synthetic populations of per-nucleus means (300 nuclei,
20 draws each): a fraction positive of 0, 3, 30, 70 or 100 %, marker contrasts 1.5-10, negatives at
the background or above it (non-specific signal). For each, the agreement of the calls with the
truth where a threshold was set, and how often none was (for 0 % and 100 % none is the right
answer). Rules: a two-Gaussian mixture on ``asinh((mean − b) / s)`` (the one kept,
:mod:`pipeline.method.positivity`), Otsu on ``log(mean − b)``, and the mixture on ``log``.

    python -m benchmarks.bench_measure [--repeats 3] [--rules]
"""

from __future__ import annotations

import argparse
import math
import statistics
import time

import numpy as np


def field(size: int = 1024, spacing: int = 26, radius: int = 9, seed: int = 0):
    """(labels int32 (H, W), channels uint16 (4, H, W)): about (size / spacing)² nuclei on a jittered grid."""
    from skimage.draw import disk
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    labels = np.zeros((size, size), np.int32)
    centres = [(r + rng.integers(-3, 4), c + rng.integers(-3, 4))
               for r in range(spacing // 2, size - spacing // 2, spacing)
               for c in range(spacing // 2, size - spacing // 2, spacing)]
    for k, (r, c) in enumerate(centres, start=1):
        rr, cc = disk((r, c), radius * rng.uniform(0.8, 1.1), shape=labels.shape)
        labels[rr, cc] = k
    n = len(centres)
    inside = labels > 0
    index = labels[inside] - 1
    cells = expand_labels(labels, 5)
    channels = np.zeros((4, size, size))
    channels[0] = 200
    channels[0][inside] = 3000
    channels[1] = 200
    channels[1][inside] = np.where(rng.random(n) < 0.4, 800, 300)[index]
    channels[2] = 100
    channels[2][cells > 0] = 400
    channels[2][inside] = 800
    channels[3] = 100
    channels[3][inside] = 500
    spots = rng.integers(0, size, (4 * n, 2))
    channels[3][spots[:, 0], spots[:, 1]] += 2000
    from scipy import ndimage as ndi

    channels[3] = ndi.gaussian_filter(channels[3], 1.0)
    channels += 20 * rng.standard_normal(channels.shape)
    return labels, np.clip(channels, 0, 65535).astype(np.uint16)


def cost(repeats: int) -> None:
    from pipeline.batch.image_features import Channels, measure_image
    from pipeline.batch.settings import CellExpansion, MeasureOptions
    from pipeline.method.features import intensity_of, measure_nuclei

    labels, channels = field()
    n = int(labels.max())
    intensity = intensity_of(channels[0])
    options = MeasureOptions(nuclear_channel="0", positive=(("1", None),), cell_expansion=CellExpansion(5, "px"),
                             spots=("3",))
    image = Channels(channels, ("", "", "", ""), 0)
    runs = {
        "measure_nuclei": lambda: measure_nuclei(labels, intensity),
        "4 channels": lambda: measure_image(labels, intensity, image, MeasureOptions(nuclear_channel="0"), None,
                                            None, 18.0, "bench"),
        "4 channels + cells + spots + auto positive": lambda: measure_image(labels, intensity, image, options, None,
                                                                             None, 18.0, "bench"),
    }
    seconds = {}
    for name, run in runs.items():
        run()  # warm-up (imports)
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            run()
            times.append(time.perf_counter() - t0)
        seconds[name] = statistics.median(times)
    base = seconds["measure_nuclei"]
    print(f"1024x1024 field, {n} nuclei, 4 channels (median of {repeats}):")
    for name, s in seconds.items():
        print(f"  {name:45s} {s:6.2f} s  {s / base:5.1f}x measure_nuclei")


def rules() -> None:
    from skimage.filters import threshold_otsu

    from pipeline.method import positivity

    def gmm_asinh(m, b, s):  # as shipped: the scale chosen, no finer than the precision of a mean
        return positivity.auto_threshold(m, b, floor=positivity.mean_precision(s, np.full(m.shape, area))).value

    def otsu_log(m, b, s):
        return b + math.exp(threshold_otsu(np.log(np.maximum(m - b, 1e-3))))

    def gmm_log(m, b, s):
        found = positivity.scaled_threshold(np.log(np.maximum(m - b, s * 1e-2)))
        return b + math.exp(found.value) if found.ok else math.nan

    rng = np.random.default_rng(0)
    b, s, area = 100.0, 10.0, 300
    candidates = {"mixture on asinh (kept)": gmm_asinh, "Otsu on log": otsu_log, "mixture on log": gmm_log}
    print("rule agreement (where a threshold was set) / draws without a threshold, of 20")
    for above in (0.0, 20.0):
        for fraction in (0.0, 0.03, 0.3, 0.7, 1.0):
            for contrast in (1.5, 2, 3, 10):
                cells = []
                for rule in candidates.values():
                    agree, refused = [], 0
                    for _ in range(20):
                        truth = rng.random(300) < fraction
                        ref = above if above > 0 else 3 * s
                        means = np.where(truth, b + ref * contrast * np.exp(0.3 * rng.standard_normal(300)),
                                         b + above * (1 + 0.15 * rng.standard_normal(300)))
                        means = means + s / math.sqrt(area) * rng.standard_normal(300)
                        t = rule(means, b, s)
                        if not math.isfinite(t):
                            refused += 1
                        else:
                            agree.append(np.mean((means > t) == truth))
                    cells.append(f"{np.mean(agree) if agree else math.nan:5.3f} / {refused:2d}")
                print(f"negatives {above:>4g} above b, {fraction:4.0%} positive, contrast {contrast:4g}: "
                      + " | ".join(f"{name}: {cell}" for name, cell in zip(candidates, cells, strict=True)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--rules", action="store_true", help="compare the candidate auto positivity rules")
    args = parser.parse_args()
    if args.rules:
        rules()
    else:
        cost(args.repeats)


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
