"""Inference backends side by side on the CPU: PyTorch, ONNX Runtime and OpenVINO (``segment.backend``).

Usage::

    python -m benchmarks.bench_backends [--model DIR] [--threads 2] [--repeats 3] [--limit N]
                                        [--backends torch onnxruntime openvino] [--bf16] [--int8]

For each backend, in fp32, through ``Segmenter.segment`` (the path of ``nuclei segment``; the segment
section's settings: TTA, tiles, blocks) on ``--threads`` threads:

1. the costly case (issue 59, after SPEC section 6): the 4×4 mosaic of the first 16 dark 256×256
   ``stage1_train`` images with 20–80 nuclei (``bench_segment.costly_mosaic``), seconds per image
   (five images minus the first, divided by four) against one fp32 forward pass of a plain w16 d4
   U-Net at 1024² measured just before, on the same threads: the median of ``--repeats`` ratios;
2. the bright-field smears: the embedded sample's two 1024×1024 bright-field images (segmented at the
   canonical diameter, so the network sees 1024²), the same way and against the same reference;
3. the DSB2018 score on grouped fold 0 (133 images of ``--prepared``, read with
   ``pipeline.data.folds.read_index``; ``--limit N`` for the first N), predictions by
   ``Segmenter.segment`` scored by ``pipeline.method.metrics.dsb_score``, and the largest difference of
   the probabilities from PyTorch's on the first images.

``--bf16`` adds OpenVINO in bf16 (precision 'bf16': its ``INFERENCE_PRECISION_HINT``; precision 'auto'
chooses it on CPUs with native bf16, ``pipeline.model.backends.OPENVINO_BF16_FLAGS``), reported beside
the fp32 backends; ``--int8`` adds the model folder's int8 network (``nuclei quantise``, run by OpenVINO;
precision 'auto' chooses it wherever the folder has one). A lower precision may only be a default where
its DSB2018 score stays within 0.005 of fp32's.
The timings are medians of repeats taken side by side with the reference; on a machine shared with
other work say so beside the figures (docs/benchmarks.md).
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PREPARED = Path("/work/s34/gen2/data/generalist2/prepared/dsb2018")
#: A lower precision may replace fp32 only within this DSB2018 score (issue 59).
SCORE_MARGIN = 0.005


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default", help="model folder (default: the shipped model)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--limit", type=int, default=None, help="score the first N images of fold 0 only")
    parser.add_argument("--backends", nargs="+", default=["torch", "onnxruntime", "openvino"])
    parser.add_argument("--bf16", action="store_true", help="also OpenVINO in bf16")
    parser.add_argument("--int8", action="store_true", help="also the model folder's int8 network, if any (OpenVINO)")
    parser.add_argument("--prepared", type=Path, default=PREPARED, help="prepared DSB2018 with grouped folds")
    parser.add_argument("--stage1", type=Path, default=ROOT.parent / "shared" / "dsb2018" / "stage1_train")
    parser.add_argument("--skip", nargs="*", default=[], choices=["costly", "brightfield", "score"])
    args = parser.parse_args()
    os.environ["OMP_NUM_THREADS"] = str(args.threads)

    import torch

    from benchmarks.bench_segment import costly_mosaic, per_image_seconds, reference_network, time_reference
    from pipeline.config.params import SegmentConfig
    from pipeline.model.segmenter import Segmenter

    torch.set_num_threads(args.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    from pipeline.model.runtime import cpu_flags

    flags = cpu_flags()  # as the package sees them (benchmarks/as_avx2.py hides some)
    isa = "AMX" if "amx_bf16" in flags else "AVX-512 BF16" if "avx512_bf16" in flags else \
        "AVX-512" if "avx512f" in flags else "AVX2" if "avx2" in flags else platform.machine()
    print(f"model {args.model}; CPU {platform.processor() or platform.machine()} ({isa}), {os.cpu_count()} cores visible, "
          f"{args.threads} threads; torch {torch.__version__}; load average {load:.2f} at the start")
    options = {**SegmentConfig().segmenter_options(), "device": "cpu"}
    from pipeline.config.model_folder import read_model_config
    from pipeline.model.backends import resolve_backend

    has_int8 = read_model_config(args.model).int8_network is not None
    print("backend auto, precision auto here: {} in {}".format(*resolve_backend("auto", "cpu", "auto", has_int8)))
    variants = [(b, b, "fp32") for b in args.backends]
    if args.bf16:
        variants.append(("openvino-bf16", "openvino", "bf16"))
    if args.int8 and has_int8:
        variants.append(("openvino-int8", "openvino", "auto"))  # auto: the folder's int8 network
    reference = reference_network()
    costly = None if "costly" in args.skip else costly_mosaic(args.stage1)[0]
    brightfield = [] if "brightfield" in args.skip else brightfield_images()
    fold = [] if "score" in args.skip else fold0(args.prepared, args.limit)
    segmenters, rows, probabilities = {}, {}, {}
    for name, backend, precision in variants:
        t0 = time.perf_counter()
        segmenter = Segmenter.from_model_dir(args.model, **{**options, "backend": backend, "precision": precision})
        segmenter.segment(np.zeros((64, 64, 3), np.uint8))  # the export and compilation, once
        segmenters[name] = segmenter
        rows[name] = {"backend": segmenter.predictor.backend, "precision": segmenter.predictor.precision,
                      "load_s": time.perf_counter() - t0}
    # timings: round robin over the backends, each beside a reference pass timed just before it
    for case, images in (("costly", [] if costly is None else [costly]), ("brightfield", brightfield)):
        if not images:
            continue
        measured = {name: [] for name in segmenters}
        for _ in range(args.repeats):
            for name, segmenter in segmenters.items():
                ref = time_reference(reference)
                own = [per_image_seconds(segmenter, image) for image in images]
                seconds = statistics.mean(o[0] for o in own)
                measured[name].append((seconds / ref, seconds, ref, own[0][1].scale))
        for name, values in measured.items():
            ratio, seconds, ref, scale = sorted(values)[len(values) // 2]
            rows[name] |= {f"{case}_s": seconds, f"{case}_ref_s": ref, f"{case}_ratio": ratio, f"{case}_scale": scale,
                           f"{case}_ratios": [round(v[0], 2) for v in values]}
        print(f"{case}: " + "; ".join(f"{n} {rows[n][case + '_ratios']}" for n in segmenters), flush=True)
    for name, segmenter in segmenters.items():
        if fold:
            scores, probs, t0 = [], [], time.perf_counter()
            for i, (image, labels) in enumerate(fold):
                scores.append(score(segmenter, image, labels))
                if i < 8:
                    probs.append(segmenter.predict_scaled(segmenter.normalize(image), 1.0))
            rows[name] |= {"dsb_score": float(np.mean(scores)), "n_images": len(scores),
                           "score_s_per_image": (time.perf_counter() - t0) / len(fold)}
            probabilities[name] = probs
        print(f"  {name}: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}"
                                       for k, v in rows[name].items()), flush=True)

    print(f"\nload average {os.getloadavg()[0]:.2f} at the end" if hasattr(os, "getloadavg") else "")
    print("\n| backend | precision | costly case s/image (ratio to the plain U-Net) | bright-field 1024² s/image (ratio) | "
          f"DSB2018 fold 0 ({len(fold)} images) | max abs diff from torch |")
    print("|---|---|---|---|---|---|")
    base = probabilities.get("torch")
    for name, row in rows.items():
        diff = (max(float(np.abs(a - b).max()) for a, b in zip(probabilities[name], base, strict=True))
                if base and name in probabilities else float("nan"))
        costly_text = (f"{row['costly_s']:.2f} ({row['costly_ratio']:.2f}×, scale {row['costly_scale']:.2f})"
                       if "costly_s" in row else "-")
        bright_text = f"{row['brightfield_s']:.2f} ({row['brightfield_ratio']:.2f}×)" if "brightfield_s" in row else "-"
        score_text = f"{row['dsb_score']:.4f}" if "dsb_score" in row else "-"
        print(f"| {name} | {row['precision']} | {costly_text} | {bright_text} | {score_text} | {diff:.1e} |")
    if "torch" in rows and "dsb_score" in rows["torch"]:
        for name, row in rows.items():
            if row["precision"] != "fp32" and "dsb_score" in row:
                delta = row["dsb_score"] - rows["torch"]["dsb_score"]
                verdict = "holds" if abs(delta) <= SCORE_MARGIN else "does NOT hold"
                print(f"{name}: DSB2018 {delta:+.4f} against torch fp32: {verdict} the accuracy (margin {SCORE_MARGIN})")
    return 0


def brightfield_images() -> list[np.ndarray]:
    """The embedded sample's 1024×1024 bright-field images (bright-field smears), uint8 RGB."""
    from PIL import Image

    from pipeline.method.image_types import BRIGHTFIELD, image_type_of
    from pipeline.method.intensity import normalize_image

    images = []
    for folder in sorted((ROOT / "data" / "sample" / "stage1_train").iterdir()):
        with Image.open(folder / "images" / f"{folder.name}.png") as im:
            image = np.asarray(im.convert("RGB"))
        if image.shape[:2] == (1024, 1024) and image_type_of(normalize_image(image)) == BRIGHTFIELD:
            images.append(image)
    return images


def fold0(prepared: Path, limit: int | None) -> list[tuple[np.ndarray, np.ndarray]]:
    """(uint8 image, int32 labels) of the images of grouped fold 0, in index order."""
    from pipeline.data.folds import read_index

    index = read_index(prepared, ("id", "group_fold"))
    ids = index.loc[index["group_fold"] == 0, "id"].tolist()[:limit]
    out = []
    for image_id in ids:
        name = str(image_id).split("/")[-1]
        with np.load(prepared / f"{name}.npz") as data:
            out.append((data["image"], data["labels"]))
    return out


def score(segmenter, image: np.ndarray, labels: np.ndarray) -> float:
    from pipeline.method.metrics import dsb_score

    return dsb_score(labels, segmenter.segment(image).labels)


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
