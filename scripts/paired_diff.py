"""Paired per-image differences between two evaluations of the same images, per source.

    python -m scripts.paired_diff OLD/per_image.csv NEW/per_image.csv [--metric dsb_score]

Reads two ``per_image.csv`` files written by ``nuclei evaluate`` (``metrics/per_image.csv``),
pairs the images by ``id`` and prints, per source, the mean of each, the mean difference new − old
with a 95 % bootstrap interval (2,000 resamples of the images, seed 0), and how many images got
better and worse. The comparison behind a model change (docs/decisions.md).
"""

from __future__ import annotations

import argparse

import numpy as np
import pandas as pd


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("--metric", default="dsb_score")
    args = parser.parse_args()
    pairs = pd.read_csv(args.old).merge(pd.read_csv(args.new), on="id", suffixes=("_old", "_new"))
    pairs["source"] = pairs["id"].str.split("/").str[0]
    rng = np.random.default_rng(0)
    print("| source | images | old | new | new − old [95 %] | better / worse |\n|---|---|---|---|---|---|")
    for source, group in pairs.groupby("source"):
        old, new = group[f"{args.metric}_old"].to_numpy(), group[f"{args.metric}_new"].to_numpy()
        diff = new - old
        boots = rng.choice(diff, (2000, diff.size)).mean(axis=1)
        low, high = np.percentile(boots, [2.5, 97.5])
        print(f"| {source} | {diff.size} | {old.mean():.3f} | {new.mean():.3f} | {diff.mean():+.4f} "
              f"[{low:+.4f}, {high:+.4f}] | {(diff > 0).sum()} / {(diff < 0).sum()} |")


if __name__ == "__main__":
    main()
