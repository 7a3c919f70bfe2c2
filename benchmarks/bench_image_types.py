"""Image types over every labelled source: the rule of :func:`pipeline.method.image_types.classify_image`, as
``prepare`` applies it (raw images) and as ``nuclei segment`` does (normalised, optionally under the
acquisition shifts of ``bench_robustness.py`` that keep the type: uneven illumination, noise, ×2,
and fluorescence as a composite with a cell marker).

Usage::

    python -m benchmarks.bench_image_types [--dsb ../shared/dsb2018/stage1_train]
        [--extra ../shared/extra] [--every 1]

Prints, per source and expected type, how many images get each type. Expected: DSB2018 images keep
the type ``prepare`` gives them raw (the reference of its folds); every image of ``tissue_fluo_e2f``
and of the other fluorescence sources is fluorescence; the four H&E sources are ``histology``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.kaggle import list_kaggle_ids, read_kaggle_sample
from pipeline.files.io import read_image, read_labels, to_uint8
from pipeline.method.image_types import (
    FLUO_LARGE,
    FLUO_SMALL,
    HISTOLOGY,
    classify_image,
    image_type_of,
)
from pipeline.method.intensity import normalize_image
from pipeline.method.scale import resize_image
from pipeline.progress import progress
from pipeline.training.shifts import shifted as robustness_shift

ROOT = Path(__file__).resolve().parents[1]

EXPECTED = {"tissue_fluo_e2f": "fluo", "fluo_kromp2020": "fluo", "fluo_ctc": "fluo", "he_cpm15": HISTOLOGY,
            "he_gbm40": HISTOLOGY, "he_tcga_glioma": HISTOLOGY, "he_monuseg2018_train": HISTOLOGY}


def shifted(image: np.ndarray, labels: np.ndarray, fluorescence: bool) -> dict[str, np.ndarray]:
    """The image (float32 (H, W, 3) in [0, 1]) as is, under ``bench_robustness.py``'s uneven
    illumination, with noise, at ×2, and (fluorescence only) as its composite: nuclei in blue
    beside a cell marker in green (``labels``, int (H, W), place the cells)."""
    h, w = image.shape[:2]
    rng = np.random.default_rng(0)
    out = {
        "as is": image,
        "uneven": robustness_shift("uneven", to_uint8(image), labels, 0)[0],
        "noise": np.clip(image + rng.normal(0, 0.05, image.shape).astype(np.float32), 0, 1),
        "x2": resize_image(image, (2 * h, 2 * w)),
    }
    if fluorescence:
        out["composite"] = robustness_shift("composite", to_uint8(image), labels, 0)[0]
    return out


def images(dsb: Path, extra: Path, every: int):
    """Yield ``(source, expected type, image float32 (H, W, 3), labels int32 (H, W))``."""
    if dsb.is_dir():
        for i in list_kaggle_ids(dsb)[::every]:
            image, labels = read_kaggle_sample(dsb / i)
            yield "dsb2018", classify_image(image), image.astype(np.float32) / 255, labels
    for source in sorted(p.name for p in extra.iterdir() if (p / "images").is_dir()) if extra.is_dir() else []:
        for f in sorted((extra / source / "images").iterdir())[::every]:
            yield source, EXPECTED.get(source, "?"), read_image(f), read_labels(extra / source / "labels" / f"{f.stem}.tif")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dsb", type=Path, default=ROOT.parent / "shared/dsb2018/stage1_train")
    parser.add_argument("--extra", type=Path, default=ROOT.parent / "shared/extra")
    parser.add_argument("--every", type=int, default=1, help="every n-th image of each source")
    args = parser.parse_args()
    rows = []
    for source, expected, image, labels in progress(images(args.dsb, args.extra, args.every), desc="types"):
        row = {"source": source, "expected": expected, "raw": classify_image(to_uint8(image))}
        for name, variant in shifted(image, labels, expected in (FLUO_SMALL, FLUO_LARGE, "fluo")).items():
            row[name] = image_type_of(normalize_image(variant))
        rows.append(row)
    if not rows:
        sys.exit(f"no images under {args.dsb} or {args.extra}")
    table = pd.DataFrame(rows).replace({FLUO_SMALL: "fluo", FLUO_LARGE: "fluo"})
    table["expected"] = table["expected"].replace({FLUO_SMALL: "fluo", FLUO_LARGE: "fluo"})
    conditions = ["raw", "as is", "uneven", "noise", "x2", "composite"]
    print(f"{'source':<16} {'expected':<12} {'n':>4}  " + "  ".join(f"{c:>7}" for c in conditions)
          + "   (share of images typed as expected)")
    for (source, expected), group in table.groupby(["source", "expected"], sort=True):
        shares = [(group[c].dropna() == expected).mean() for c in conditions]
        print(f"{source:<16} {expected:<12} {len(group):>4}  " + "  ".join(f"{s:7.3f}" for s in shares))
        wrong = group[conditions].where(group[conditions].ne(expected)).stack().value_counts()
        if len(wrong):
            print(" " * 35 + "wrong: " + ", ".join(f"{k} {v}" for k, v in wrong.items()))
    typed = table[conditions].stack().dropna()  # composites of fluorescence images only
    total = (typed == table["expected"].reindex(typed.index, level=0)).mean()
    print(f"all {len(table)} images, {len(typed)} images x conditions, typed as expected: {total:.4f}")


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
