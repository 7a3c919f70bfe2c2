"""Does the automatic precision (bf16 + channels_last on a CPU with native bf16) change the scores?

Usage::

    python -m benchmarks.bench_precision [--model DIR] [--params PARAMS] [--split stratified]

Segments the embedded sample (20 images) and the validation fold of ``--params`` (``data.val_fold``
of ``--split``) with the same model through :class:`pipeline.model.segmenter.Segmenter`, in fp32 and in
the automatic precision, and prints the DSB2018 score of each, their difference (goal: at most
0.005) and the seconds each took.

``--train-curves PARAMS`` also trains the model of ``PARAMS`` twice from the same seed, in fp32
and in the automatic precision (``--epochs``, ``--samples`` crops per epoch), on its prepared data
(run ``nuclei prepare`` and ``nuclei targets`` with it first), and prints both validation curves
side by side with the time each run took.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np

from pipeline.config.params import (
    TTA_MODES,
    load_config,
    load_params,
)
from pipeline.data.folds import validation_index
from pipeline.data.kaggle import iter_kaggle_root
from pipeline.files.io import load_npz
from pipeline.method.metrics import dsb_score
from pipeline.model.segmenter import Segmenter

ROOT = Path(__file__).resolve().parents[1]

SAMPLE = ROOT / "data" / "sample" / "stage1_train"


def sample_images():
    return [(image, labels) for _, image, labels in iter_kaggle_root(SAMPLE)]


def fold_images(params_path: str, split: str):
    data = load_config(params_path).data.replace(split=split)
    prepared = Path(data.prepared)
    for image_id in validation_index(data)["id"]:
        data = load_npz(prepared / f"{image_id}.npz")
        yield data["image"], data["labels"]


def score(segmenter: Segmenter, images) -> tuple[float, float, int]:
    t0 = time.perf_counter()
    scores = [dsb_score(labels, segmenter.segment(image).labels) for image, labels in images]
    return float(np.mean(scores)), time.perf_counter() - t0, len(scores)


def train_curves(params_path: str, epochs: int, samples: int) -> None:
    """Two short training runs, fp32 and automatic precision, validation curves side by side."""
    import tempfile

    from pipeline.stages.train import fit
    from pipeline.training.checkpoints import load_checkpoint

    params = load_params(params_path)
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for precision in ("fp32", "auto"):
            params["train"].update(precision=precision, epochs=epochs, samples_per_epoch=samples,
                                   val_every=1, out=f"{tmp}/{precision}")
            t0 = time.perf_counter()
            fit(params)
            seconds = time.perf_counter() - t0
            history = load_checkpoint(f"{tmp}/{precision}/last.ckpt")["history"]
            rows[precision] = ([r["val_dsb_score"] for r in history], seconds)
    (c32, t32), (ca, ta) = rows["fp32"], rows["auto"]
    print(f"\nvalidation DSB2018 per epoch ({params_path}, {samples} crops per epoch):")
    print("epoch   fp32   auto")
    for k, (a, b) in enumerate(zip(c32, ca, strict=True), 1):
        print(f"{k:5d} {a:6.3f} {b:6.3f}")
    print(f"best: fp32 {max(c32):.3f} in {t32:.0f} s, automatic {max(ca):.3f} in {ta:.0f} s "
          f"({t32 / ta:.2f}x faster)")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "pipeline" / "shipped" / "model")
    parser.add_argument("--params", default=None, help="parameters naming the prepared data (data.prepared)")
    parser.add_argument("--split", default="stratified", choices=("stratified", "grouped"))
    parser.add_argument("--train-curves", metavar="PARAMS", default=None)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--samples", type=int, default=96)
    parser.add_argument("--tta", choices=TTA_MODES, default="auto",
                        help="test-time augmentation (default: %(default)s, as nuclei segment; none: one pass)")
    args = parser.parse_args()
    if args.train_curves:
        train_curves(args.train_curves, args.epochs, args.samples)

    from pipeline.model.runtime import set_threads

    threads = set_threads()
    sets = [("embedded sample", sample_images)]
    if args.params:
        sets.append((f"{args.split} fold", lambda: list(fold_images(args.params, args.split))))
    print(f"model {args.model}, {threads} torch threads, tta {args.tta}")
    for name, load in sets:
        images = list(load())
        results = {}
        for precision in ("fp32", "auto"):
            segmenter = Segmenter.from_model_dir(args.model, device="cpu", precision=precision, tta=args.tta)
            results[segmenter.predictor.precision] = score(segmenter, images)
        (p32, (s32, t32, n)), (pa, (sa, ta, _)) = results.items()
        print(f"{name} ({n} images): {p32} {s32:.4f} ({t32:.0f} s), {pa} {sa:.4f} ({ta:.0f} s); "
              f"difference {sa - s32:+.4f} (goal |d| <= 0.005: {'met' if abs(sa - s32) <= 0.005 else 'not met'})")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
