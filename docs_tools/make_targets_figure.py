"""Draw ``docs/targets.png``: image, labels, 3-class target and weight map of two samples.

Usage::

    python -m docs_tools.make_targets_figure [--root data/sample/stage1_train] [--ids ID ID]
        [-o docs/targets.png]

Targets are computed with the ``targets`` parameters of ``params.yaml``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.patches import Patch  # noqa: E402
from skimage.color import label2rgb  # noqa: E402

from pipeline.config.params import load_config  # noqa: E402
from pipeline.data.kaggle import read_kaggle_sample  # noqa: E402
from pipeline.files.io import atomic_path  # noqa: E402
from pipeline.method.training_targets import make_targets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
#: a crowded small-fluorescence image and an H&E-like tissue image, both with touching nuclei
DEFAULT_IDS = (
    "9bb6e39d5f4415bc7554842ee5d1280403a602f2ba56122b87f453a62d37c06e",
    "e49fc2b4f1f39d481a6525225ab3f688be5c87f56884456ad54c953315efae83",
)
CLASS_COLOURS = ("#f2f2f2", "#e8402b", "#1b2a49")  # mask − border, border, background
CLASS_NAMES = ("mask − border", "border", "background")


def shuffled_label_colours(labels: np.ndarray, seed: int = 0) -> np.ndarray:
    """RGB float (H, W, 3) with a random colour per nucleus, black background."""
    rng = np.random.default_rng(seed)
    perm = np.concatenate([[0], rng.permutation(int(labels.max())) + 1])
    return label2rgb(perm[labels], bg_label=0, bg_color=(0, 0, 0))


def draw(root: Path, ids: list[str], out: Path, params: dict) -> None:
    """Render the figure for ``ids`` under ``root`` to ``out`` (PNG, written atomically)."""
    fig, axes = plt.subplots(len(ids), 4, figsize=(16, 3.9 * len(ids)), layout="constrained")
    axes = np.atleast_2d(axes)
    for row, sample_id in zip(axes, ids, strict=True):
        image, labels = read_kaggle_sample(root / sample_id)
        t = make_targets(labels, **params)
        row[0].imshow(image)
        row[0].set_title(f"image {sample_id[:8]}… ({labels.shape[1]}×{labels.shape[0]})")
        row[1].imshow(shuffled_label_colours(labels), interpolation="nearest")
        row[1].set_title(f"labels ({labels.max()} nuclei)")
        row[2].imshow(t["classes"], cmap=ListedColormap(CLASS_COLOURS), vmin=0, vmax=2, interpolation="nearest")
        row[2].set_title("3-class target")
        im = row[3].imshow(t["weights"], cmap="magma", interpolation="nearest")
        row[3].set_title(f"weight map w_c + separation (w0={params['w0']:g}, σ={params['sigma']:g} px)")
        fig.colorbar(im, ax=row[3], shrink=0.85)
        for ax in row:
            ax.set_axis_off()
    axes[0, 2].legend(
        handles=[Patch(color=c, label=n) for c, n in zip(CLASS_COLOURS, CLASS_NAMES, strict=True)],
        loc="upper left",
        bbox_to_anchor=(0.0, -0.01),
        ncol=3,
        fontsize=8,
        frameon=False,
    )
    with atomic_path(out) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT / "data" / "sample" / "stage1_train")
    parser.add_argument("--ids", nargs="+", default=list(DEFAULT_IDS))
    parser.add_argument("--params", type=Path, default=ROOT / "params.yaml")
    parser.add_argument("-o", "--out", type=Path, default=ROOT / "docs" / "targets.png")
    args = parser.parse_args()
    params = load_config(args.params).targets.make_targets_kwargs()
    draw(args.root, args.ids, args.out, params)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
