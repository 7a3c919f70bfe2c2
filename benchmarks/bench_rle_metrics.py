"""Benchmark: encode a whole Kaggle training root to a submission, decode it, score it.

Usage::

    python -m benchmarks.bench_rle_metrics [ROOT] [--reference-images N]

ROOT defaults to ``../shared/dsb2018/stage1_train`` (relative to the repository root). Reading
the masks is timed separately from the timed work. The submission is scored against a
solution built from the same label maps, so the expected score is 1.0.

Reference measurements in the same run, on the N images with the most nuclei:
- encoding: the classic Kaggle-kernel encoder run once per nucleus on ``labels == k`` (one
  full-image scan per nucleus) vs :func:`pipeline.data.rle.encode_labels` (one scan per image);
- IoU: one full-image mask comparison per true object vs :func:`pipeline.method.metrics.iou_matrix`
  (one joint histogram).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402

from pipeline.data.kaggle import iter_kaggle_root  # noqa: E402
from pipeline.data.rle import decode_image, encode_labels, submission_frame, validate_submission  # noqa: E402
from pipeline.method.metrics import iou_matrix  # noqa: E402
from pipeline.stages.score import score_submission  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def kernel_encode(mask: np.ndarray) -> str:
    """The classic Kaggle-kernel encoder of one binary mask (the reference)."""
    pixels = np.concatenate([[0], mask.T.ravel().astype(np.int8), [0]])
    runs = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    runs[1::2] -= runs[::2]
    return " ".join(map(str, runs))


def per_object_iou(true: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """Reference IoU: one full-image pass per true object (pred labels 1..n_pred)."""
    n_true, n_pred = int(true.max()), int(pred.max())
    pred_area = np.bincount(pred.ravel(), minlength=n_pred + 1)[1:]
    iou = np.zeros((n_true, n_pred))
    for i in range(1, n_true + 1):
        mask = true == i
        inter = np.bincount(pred[mask], minlength=n_pred + 1)[1:]
        iou[i - 1] = inter / (mask.sum() + pred_area - inter)
    return iou


def timed(fn, *args):
    start = time.perf_counter()
    result = fn(*args)
    return result, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=ROOT.parent / "shared/dsb2018/stage1_train")
    parser.add_argument("--reference-images", type=int, default=40, metavar="N")
    args = parser.parse_args()

    print(f"host: {platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores visible, "
          f"OMP_NUM_THREADS={os.environ['OMP_NUM_THREADS']}, numpy {np.__version__}")
    labels, t_read = timed(lambda: {i: lab for i, _, lab in iter_kaggle_root(args.root)})
    n_nuclei = sum(int(lab.max()) for lab in labels.values())
    n_pixels = sum(lab.size for lab in labels.values())
    print(f"data: {args.root}: {len(labels)} images, {n_nuclei} nuclei, {n_pixels / 1e6:.1f} Mpixel")
    print(f"read images + masks (not part of the timed work): {t_read:8.2f} s")

    def encode_all():
        rles = {i: encode_labels(lab) for i, lab in labels.items()}
        return rles, submission_frame(rles)

    (rles, submission), t_encode = timed(encode_all)
    shapes = {i: lab.shape for i, lab in labels.items()}
    solution = submission.assign(
        Height=submission["ImageId"].map(lambda i: shapes[i][0]),
        Width=submission["ImageId"].map(lambda i: shapes[i][1]),
        Usage="Public",
    )
    problems, t_validate = timed(validate_submission, submission, shapes)
    assert not problems, problems[:3]

    def decode_all():
        grouped = submission.groupby("ImageId", sort=False)["EncodedPixels"].agg(list)
        return {i: decode_image(grouped[i], shapes[i]) for i in grouped.index}

    decoded, t_decode = timed(decode_all)
    exact = all(np.array_equal(decoded[i], labels[i]) for i in labels)
    (summary, _), t_score = timed(score_submission, submission, solution)

    print(f"encode (labels -> submission table):   {t_encode:8.2f} s  ({len(submission)} rows)")
    print(f"validate submission (with sizes):      {t_validate:8.2f} s")
    print(f"decode (submission -> label maps):     {t_decode:8.2f} s  (round trip exact: {exact})")
    print(f"score vs itself (validate+decode+metrics): {t_score:5.2f} s")
    total = t_encode + t_decode + t_score
    print(f"encode + decode + score:               {total:8.2f} s")
    print(f"DSB2018 score {summary['dsb_score']:.4f} (expected 1.0000); AJI {summary['aji']:.4f}")

    if args.reference_images > 0:
        busiest = sorted(labels, key=lambda i: -int(labels[i].max()))[: args.reference_images]
        n_ref = sum(int(labels[i].max()) for i in busiest)
        _, t_fast = timed(lambda: [encode_labels(labels[i]) for i in busiest])
        ref, t_ref = timed(
            lambda: [[kernel_encode(labels[i] == k) for k in range(1, labels[i].max() + 1)] for i in busiest]
        )
        assert ref == [rles[i] for i in busiest]
        print(f"reference encode, {len(busiest)} busiest images ({n_ref} nuclei): per-nucleus kernel "
              f"{t_ref:.2f} s vs encode_labels {t_fast:.3f} s -> {t_ref / t_fast:.0f}x faster")
        shifted = {i: np.roll(labels[i], 1, axis=1) for i in busiest}
        fast, t_fast = timed(lambda: [iou_matrix(labels[i], shifted[i]) for i in busiest])
        ref, t_ref = timed(lambda: [per_object_iou(labels[i], shifted[i]) for i in busiest])
        assert all(np.allclose(a, b) for a, b in zip(fast, ref, strict=True))
        print(f"reference IoU, same images (pred shifted 1 px): per-object passes {t_ref:.2f} s vs "
              f"joint histogram {t_fast:.3f} s -> {t_ref / t_fast:.0f}x faster")


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
