"""Bright-field images through colour cameras whose white balance is off.

A grey bright-field scene seen by a colour camera under a halogen lamp (yellowish) or an LED
(bluish) is in colour, like stained tissue. Every bright-field image of the prepared data
(``--prepared``; stage1_train has 16, the embedded sample 2) is segmented as it is (grey) and through such cameras,
with and without a camera's noise (σ 4 of 255, independent in each channel) and JPEG at quality
75, through :class:`pipeline.model.segmenter.Segmenter` as ``nuclei segment`` runs it. Printed per
camera: DSB2018 score, AP@0.5, median counting error, the share of images flagged as bright-field
(their counts are not to be trusted), and the median diameter the image was segmented for.

    python -m experiments.tint --prepared /path/to/prepared --threads 2
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config.params import TTA_MODES, load_params
from pipeline.data.folds import read_index
from pipeline.files.io import load_npz
from pipeline.method.image_types import BRIGHTFIELD
from pipeline.method.metrics import group_summary, image_metrics
from pipeline.model.segmenter import Segmenter
from pipeline.training.shifts import TINT

ROOT = Path(__file__).resolve().parents[1]

#: Channel gains (red, green, blue) of each camera; "grey" is the image as it is.
CAMERAS = {"grey": (1.0, 1.0, 1.0), "yellow": tuple(TINT), "blue": (0.8, 0.9, 1.0)}


def through_camera(image: np.ndarray, gains, noise: float, jpeg: bool, rng: np.random.Generator) -> np.ndarray:
    """(H, W, 3) uint8 image times per-channel ``gains``, plus Gaussian noise of σ ``noise`` grey
    levels drawn in each channel, optionally JPEG-compressed at quality 75; uint8."""
    import cv2

    out = image.astype(np.float32) * np.asarray(gains, np.float32)
    if noise:
        out += rng.normal(0, noise, out.shape).astype(np.float32)
    out = np.clip(np.rint(out), 0, 255).astype(np.uint8)
    if jpeg:
        out = cv2.imdecode(cv2.imencode(".jpg", out, [cv2.IMWRITE_JPEG_QUALITY, 75])[1], cv2.IMREAD_UNCHANGED)
    return out


def prepared_images(description: str, image_type: str | None,
                    add_arguments=None) -> tuple[argparse.Namespace, list[str], Segmenter | None]:
    """Parse ``--model``, ``--prepared``, ``--fold``, ``--threads`` and ``--tta`` (and what
    ``add_arguments(parser)`` adds); return the arguments, the ids of the prepared images of
    ``image_type`` (None: ``args.image_type``; of one grouped fold with ``--fold``) and the
    Segmenter of the model (None when there is no such image, after saying so)."""
    parser = argparse.ArgumentParser(description=description)
    if add_arguments is not None:
        add_arguments(parser)
    parser.add_argument("--model", type=Path, default=ROOT / "pipeline" / "shipped" / "model")
    parser.add_argument("--prepared", type=Path, default=None,
                        help="prepared data (nuclei prepare; default: data.prepared of params.yaml, the embedded sample)")
    parser.add_argument("--fold", type=int, default=None,
                        help="only the images of this grouped fold (group_fold of the index), e.g. one the model never saw")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--tta", choices=TTA_MODES, default="auto",
                        help="test-time augmentation (default: %(default)s, as nuclei segment; none: one pass)")
    args = parser.parse_args()
    image_type = image_type or args.image_type

    from pipeline.model.runtime import set_threads

    set_threads(args.threads)
    args.prepared = args.prepared or ROOT / load_params(ROOT / "params.yaml")["data"]["prepared"]
    index = read_index(args.prepared, ("id", "image_type", "group", "group_fold"))
    if args.fold is not None:
        index = index[index["group_fold"] == args.fold]
    ids = sorted(index.loc[index["image_type"] == image_type, "id"])
    args.group = index.set_index("id")["group"]
    if not ids:
        print(f"no {image_type} image in {args.prepared}")
        return args, ids, None
    fold = "" if args.fold is None else f" (grouped fold {args.fold})"
    print(f"{len(ids)} {image_type} images of {args.prepared}{fold}; model {args.model}; tta {args.tta}", flush=True)
    return args, ids, Segmenter.from_model_dir(args.model, device="cpu", tta=args.tta)


def main() -> int:
    args, ids, segmenter = prepared_images(__doc__.splitlines()[0], BRIGHTFIELD)
    if segmenter is None:
        return 0
    rng = np.random.default_rng(0)
    rows = []
    t0 = time.perf_counter()
    for image_id in ids:
        data = load_npz(args.prepared / f"{image_id}.npz")
        for camera, gains in CAMERAS.items():
            for noise, jpeg in ((0, False), (4, True)):
                result = segmenter.segment(through_camera(data["image"], gains, noise, jpeg, rng))
                rows.append({
                    "camera": camera + (" + noise + JPEG" if noise else ""), "id": image_id,
                    **scores(data["labels"], result), "flagged": result.flag.startswith("bright-field"),
                })
    print_summary(rows, "camera", "flagged", t0)
    return 0


def scores(labels: np.ndarray, result) -> dict:
    """DSB2018 score, AP@0.5, counting error and diameter of one
    :class:`pipeline.model.segmenter.Segmentation` against the true ``labels``."""
    m = image_metrics(labels, result.labels)
    return {"dsb_score": m["dsb_score"], "ap50": m["ap50"], "count_error": m["count_error"],
            "diameter": result.diameter}


def print_summary(rows: list[dict], by: str, share: str, t0: float) -> None:
    """Print, per value of ``by``, the mean DSB2018 score and AP@0.5, the median counting error,
    the mean of the boolean column ``share`` and the median diameter; then the time since ``t0``."""
    table = pd.DataFrame(rows)
    summary = group_summary(table, by).join(table.groupby(by, sort=False).agg(
        **{share: (share, "mean")}, diameter=("diameter", "median")))
    print(summary.to_string(float_format=lambda v: f"{v:.3f}"))
    print(f"{len(table)} segmentations in {time.perf_counter() - t0:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
