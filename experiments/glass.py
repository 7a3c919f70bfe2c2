"""Stained tissue beside empty glass and inside a round field of view.

A tissue section rarely fills the field: at the edge of a section or a biopsy most of it can be
empty glass, and a microscope's round field of view leaves black corners. Every stained image of
the prepared data (``--prepared``; stage1_train has 107, the embedded sample 2) is segmented as it
is, beside neutral glass (grey level 242, noise σ 2) filling 75 % and 90 % of the field, and in a
round field of view (black outside a circle through the middle of the longer sides), through
:class:`pipeline.model.segmenter.Segmenter` as ``nuclei segment`` runs it. Printed per condition: DSB2018
score, AP@0.5, median counting error, the share of images typed as stained (``histology``; the
others get no diameter estimate and the thresholds of grey images) and the median diameter the
image was segmented for.

    python -m experiments.glass --prepared /path/to/prepared --threads 2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

from experiments.tint import prepared_images, print_summary, scores
from pipeline.files.io import load_npz
from pipeline.method.image_types import HISTOLOGY

ROOT = Path(__file__).resolve().parents[1]

#: Grey level and noise (σ) of the empty glass.
GLASS, GLASS_NOISE = 242.0, 2.0


def beside_glass(image: np.ndarray, labels: np.ndarray, share: float,
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """(H, W, 3) uint8 image and (H, W) labels widened with neutral glass to the right, so that
    the glass fills ``share`` of the result; the labels are 0 there."""
    h, w = labels.shape
    width = int(round(w * share / (1 - share)))
    glass = np.clip(GLASS + rng.normal(0, GLASS_NOISE, (h, width, image.shape[2])), 0, 255)
    return (np.concatenate([image, glass.astype(np.uint8)], axis=1),
            np.pad(labels, ((0, 0), (0, width))))


def round_field(image: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The image black, and the labels 0, outside a circle centred on the image whose radius is
    √1.3 × half the shorter side (the corners of the field)."""
    h, w = labels.shape
    yy, xx = np.ogrid[:h, :w]
    inside = (yy - h / 2) ** 2 + (xx - w / 2) ** 2 <= 1.3 * (min(h, w) / 2) ** 2
    return image * inside[..., None].astype(image.dtype), labels * inside


def main() -> int:
    args, ids, segmenter = prepared_images(__doc__.splitlines()[0], HISTOLOGY)
    if segmenter is None:
        return 0
    rng = np.random.default_rng(0)
    conditions = {
        "as is": lambda image, labels: (image, labels),
        "glass 75 %": lambda image, labels: beside_glass(image, labels, 0.75, rng),
        "glass 90 %": lambda image, labels: beside_glass(image, labels, 0.9, rng),
        "round field": round_field,
    }
    rows = []
    t0 = time.perf_counter()
    for image_id in ids:
        data = load_npz(args.prepared / f"{image_id}.npz")
        for condition, shift in conditions.items():
            image, labels = shift(data["image"], data["labels"])
            result = segmenter.segment(image)
            rows.append({"condition": condition, "id": image_id, **scores(labels, result),
                         "typed_stained": result.image_type == HISTOLOGY})
    print_summary(rows, "condition", "typed_stained", t0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
