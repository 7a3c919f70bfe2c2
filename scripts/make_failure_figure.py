"""Picture of a model's worst validation images: image, true outlines, predicted outlines.

    python -m scripts.make_failure_figure --params params.yaml -o pipeline/shipped/model/failures.png [-n 4] [--per-type]

Reads the per-image scores written by ``nuclei evaluate`` (``<evaluate.out>/per_image.csv``), the
prepared images and labels (``data.prepared``) and the post-processed labels
(``postprocess.out``) named by the parameter file, and draws the ``n`` images with the lowest
DSB2018 score (with ``--per-type``: the lowest of each image type), one row each, with their
image type and score.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import pandas as pd

from pipeline.config.params import load_params
from pipeline.files.io import atomic_path, load_npz, read_labels
from pipeline.method.overlay import draw_outlines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("-o", "--out", default="docs/failures.png")
    parser.add_argument("-n", type=int, default=4, help="number of images (default: 4)")
    parser.add_argument("--per-type", action="store_true", help="the worst image of each image type")
    args = parser.parse_args()
    params = load_params(args.params)
    per_image = pd.read_csv(Path(params["evaluate"]["out"]) / "per_image.csv")
    worst = per_image.sort_values("dsb_score")
    worst = (worst.groupby("image_type").head(1) if args.per_type else worst).head(args.n)
    fig, axes = plt.subplots(len(worst), 3, figsize=(12, 4 * len(worst)), squeeze=False)
    for row_axes, (_, row) in zip(axes, worst.iterrows(), strict=True):
        arrays = load_npz(Path(params["data"]["prepared"]) / f"{row.id}.npz")
        pred = read_labels(Path(params["postprocess"]["out"]) / f"{row.id}.tif")
        panels = [
            (arrays["image"], f"{row.id[:12]}… ({row.image_type})"),
            (draw_outlines(arrays["image"], arrays["labels"]), f"truth: {int(row.n_true)} nuclei"),
            (draw_outlines(arrays["image"], pred), f"predicted: {int(row.n_pred)}, DSB2018 {row.dsb_score:.3f}"),
        ]
        for ax, (picture, title) in zip(row_axes, panels, strict=True):
            ax.imshow(picture)
            ax.set_title(title, fontsize=10)
            ax.axis("off")
    fig.tight_layout()
    with atomic_path(args.out) as tmp:
        fig.savefig(tmp, dpi=80, format="png")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
