"""How much do the weight storages of a model directory change its probabilities?

Usage::

    python -m benchmarks.bench_storage --model DIR [--weights CKPT] [--images FILE ...]
                                       [--int8-min-elements N ...] [--crop PX]

Stores the network of ``--model`` (float32 weights from ``--weights``, a training run's
``last.ckpt``, else the folder's own) as float16 and as int8 with each smallest quantised tensor
of ``--int8-min-elements`` (:data:`pipeline.model.model_dir.INT8_MIN_ELEMENTS` by default), reads
each back through :func:`pipeline.model.model_dir.load_model_dir`, and prints, against float32 on
the top-left ``--crop`` px of each image (default: the first four images of three H&E sources
under ``../shared/extra``), the size of ``weights.pt``, the mean, 99.9th percentile and largest
difference of the probabilities, and the fraction of pixels whose P(nucleus) crosses 0.5.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from pipeline.files.io import read_image
from pipeline.method.intensity import normalize_image
from pipeline.model import model_dir
from pipeline.model.model_dir import load_model_dir, save_model_dir
from pipeline.model.predictor import Predictor
from pipeline.training.checkpoints import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]

SOURCES = ("he_tcga_glioma", "he_cpm15", "he_gbm40")


def default_images() -> list[Path]:
    return [f for s in SOURCES for f in sorted((ROOT.parent / "shared" / "extra" / s / "images").glob("*.png"))[:4]]


def probabilities(model, config, images: list[np.ndarray]) -> list[np.ndarray]:
    predictor = Predictor(model, config, precision="fp32")
    return [predictor.predict(image) for image in images]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="model directory (its config and architecture)")
    parser.add_argument("--weights", help="float32 weights: a training run's last.ckpt (default: the folder's)")
    parser.add_argument("--images", nargs="+", type=Path, help="image files (default: 12 H&E images under ../shared)")
    parser.add_argument("--int8-min-elements", nargs="+", type=int, default=[model_dir.INT8_MIN_ELEMENTS])
    parser.add_argument("--crop", type=int, default=512)
    args = parser.parse_args()
    torch.set_num_threads(2)
    model, config = load_model_dir(args.model)
    if args.weights:
        model.load_state_dict(load_checkpoint(args.weights)["model"])
    files = args.images or default_images()
    images = [normalize_image(read_image(f)[: args.crop, : args.crop].astype(np.float32),
                              **config.normalization.to_dict()) for f in files]
    reference = probabilities(model, config, images)
    variants = [("float16", "float16", None)] + [(f"int8, tensors >= {n:,}", "int8", n) for n in args.int8_min_elements]
    print(f"{len(images)} images, {args.crop} px; against float32")
    print(f"{'storage':30s} {'MB':>6s} {'mean |d|':>9s} {'p99.9':>9s} {'max':>9s} {'P>0.5 flips':>11s}")
    for name, storage, minimum in variants:
        with tempfile.TemporaryDirectory() as tmp:
            save_model_dir(tmp, model, config, storage=storage, int8_min_elements=minimum or 0)
            size = (Path(tmp) / model_dir.WEIGHTS_NAME).stat().st_size
            stored, _ = load_model_dir(tmp)
        got = probabilities(stored, config, images)
        d = np.concatenate([np.abs(a - b).ravel() for a, b in zip(got, reference, strict=True)])
        flips = np.mean(np.concatenate([((a[0] > 0.5) != (b[0] > 0.5)).ravel()
                                        for a, b in zip(got, reference, strict=True)]))
        print(f"{name:30s} {size / 1e6:6.1f} {d.mean():9.2e} {np.quantile(d, 0.999):9.2e} {d.max():9.2e} {flips:11.2e}",
              flush=True)
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
