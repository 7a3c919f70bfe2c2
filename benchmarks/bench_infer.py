"""Inference speed: network images/s, watershed ms per image, end-to-end ``nuclei submit``.

For 256×256 and 1024×1024 inputs prints

- model images/s through :class:`pipeline.model.predictor.Predictor` (no TTA) on the CPU with
  ``--threads`` threads, and on the GPU with mixed precision when CUDA is available (batch of
  ``--batch`` images; the ratio GPU/CPU is printed);
- watershed (``pipeline.method.watershed.postprocess``) ms per image on one core, on probability maps
  made from the ground truth of real sample images (the softmax target, blurred, plus noise),
  with the ratio to the 50 ms budget for 256×256;
- the cost of tiling a 1024×1024 image (tiles of 512) against running it whole, CPU;
- the network time of a 1024×1024 image with batch norm folded into the convolutions (what
  the Predictor runs, :func:`pipeline.model.networks.fuse_batchnorm`) against the network as trained,
  CPU, automatic precision, and the largest difference of their probabilities;
- seconds for ``nuclei submit`` of the embedded sample (20 images) in a fresh process, CPU,
  without TTA (``flips`` costs about 4×, ``d4`` 8× the network time).

    python -m benchmarks.bench_infer [--model DIR] [--threads 2] [--repeat 3] [--no-submit]

``--model`` defaults to ``pipeline/shipped/model`` when present, else a freshly built (untrained) model
of the ``model`` section of params.yaml (same speed as a trained one).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage as ndi

from pipeline.config.params import ROOT, load_params
from pipeline.data.kaggle import read_kaggle_sample
from pipeline.method.heads import get_head
from pipeline.method.training_targets import border_mask
from pipeline.method.watershed import postprocess
from pipeline.model.model_dir import load_model_dir, save_model_dir
from pipeline.model.networks import build_model
from pipeline.model.predictor import Predictor, load_predictor
from pipeline.model.runtime import prepare_model

SAMPLE = ROOT / "data" / "sample" / "stage1_train"
SIZES = (256, 1024)


def model_dir(arg: str | None, tmp: Path) -> tuple[Path, str]:
    if arg:
        return Path(arg), arg
    default = ROOT / "pipeline" / "shipped" / "model"
    if (default / "config.yaml").is_file():
        return default, "pipeline/shipped/model"
    cfg = load_params(ROOT / "params.yaml")["model"]
    torch.manual_seed(0)
    save_model_dir(tmp / "model", build_model(cfg), {"model": cfg, "normalization": {"low": 1.0, "high": 99.8}})
    return tmp / "model", f"fresh {cfg['arch']} from params.yaml (untrained)"


def time_predict(predictor: Predictor, size: int, batch: int, repeat: int) -> float:
    """Images per second of ``predict_many`` on a batch of random size×size images."""
    rng = np.random.default_rng(0)
    images = [rng.random((size, size, 3), dtype=np.float32) for _ in range(batch)]
    predictor.predict_many(images[:1])  # warm-up (cuDNN autotuning, allocations)
    best = np.inf
    for _ in range(repeat):
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        predictor.predict_many(images)
        if predictor.device.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return batch / best


def realistic_probs(size: int) -> np.ndarray:
    """(3, size, size) float32 softmax-like maps from a sample image's ground truth."""
    shapes = {}
    for sample in sorted(SAMPLE.iterdir()):
        if (sample / "images").is_dir():
            image, labels = read_kaggle_sample(sample)
            shapes.setdefault(labels.shape, labels)
    labels = shapes.get((size, size))
    if labels is None:  # tile the largest sample image
        labels = max(shapes.values(), key=np.size)
        labels = np.pad(labels, [(0, max(0, size - s)) for s in labels.shape], mode="wrap")[:size, :size]
    onehot = np.eye(3, dtype=np.float32)[get_head("softmax").encode_labels(labels, border_mask(labels))].transpose(2, 0, 1)
    probs = ndi.gaussian_filter(onehot, sigma=(0, 1.5, 1.5))
    probs += np.random.default_rng(0).normal(0, 0.05, probs.shape).astype(np.float32)
    probs = np.clip(probs, 1e-3, None)
    return probs / probs.sum(0, keepdims=True)


def time_watershed(size: int, repeat: int) -> tuple[float, int]:
    probs = realistic_probs(size)
    postprocess(probs, "softmax")
    times = []
    for _ in range(max(repeat, 5)):
        start = time.perf_counter()
        labels = postprocess(probs, "softmax")
        times.append(time.perf_counter() - start)
    return 1000 * float(np.median(times)), int(labels.max())


def time_submit(path: Path, threads: int) -> float:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), CI="1")
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pipeline", "submit", str(SAMPLE), "-o", f"{tmp}/submission.csv",
               "--model", str(path), "--device", "cpu", "--tta", "none"]
        start = time.perf_counter()
        subprocess.run(cmd, check=True, env=env, cwd=ROOT, stdout=subprocess.DEVNULL)
        return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None)
    parser.add_argument("--threads", type=int, default=2, help="CPU threads for the network")
    parser.add_argument("--batch", type=int, default=4, help="images per predict_many call")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--no-submit", action="store_true", help="skip the end-to-end submit timing")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        path, what = model_dir(args.model, Path(tmp))
        cpu32 = load_predictor(path, device="cpu", tta="none", precision="fp32")
        cpu = load_predictor(path, device="cpu", tta="none", precision="auto")
        print(f"model: {what}; CPU: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
              f"torch threads {args.threads}; torch {torch.__version__}; automatic precision on this CPU: "
              f"{cpu.precision} + channels_last")
        gpu = None
        if torch.cuda.is_available():
            gpu = load_predictor(path, device="cuda", tta="none", precision="auto", batch_size=args.batch)
            print(f"GPU: {torch.cuda.get_device_name()} ({gpu.precision})")
        print(f"\n{'size':>9} {'CPU fp32':>9} {'CPU auto':>9} {'auto/fp32':>9} {'GPU img/s':>10} {'GPU/CPU':>8} "
              f"{'watershed ms':>13} {'nuclei':>7}")
        for size in SIZES:
            fp32_rate = time_predict(cpu32, size, args.batch if size <= 256 else 1, args.repeat)
            cpu_rate = time_predict(cpu, size, args.batch if size <= 256 else 1, args.repeat)
            gpu_rate = time_predict(gpu, size, args.batch * (4 if size <= 256 else 1), args.repeat) if gpu else None
            ws_ms, n = time_watershed(size, args.repeat)
            gpu_text = f"{gpu_rate:10.1f} {gpu_rate / cpu_rate:7.1f}x" if gpu else f"{'-':>10} {'-':>8}"
            print(f"{size:>4}x{size:<4} {fp32_rate:9.2f} {cpu_rate:9.2f} {cpu_rate / fp32_rate:8.2f}x {gpu_text} "
                  f"{ws_ms:13.1f} {n:7d}")
        print(f"images/s; network time of one 1024x1024 image: fp32 {1 / fp32_rate:.3f} s, automatic "
              f"{1 / cpu_rate:.3f} s = {fp32_rate / cpu_rate:.2f}x fp32")
        whole = load_predictor(path, device="cpu", tta="none", tile_size=1024)
        cpu = load_predictor(path, device="cpu", tta="none", tile_size=512)
        tiled_rate = time_predict(cpu, 1024, 1, args.repeat)
        whole_rate = time_predict(whole, 1024, 1, args.repeat)
        print(f"\n1024x1024 on CPU: tiles of {cpu.tile_size} ({len(cpu.plan((1024, 1024)).ys) ** 2} tiles) "
              f"{1 / tiled_rate:.2f} s, whole image {1 / whole_rate:.2f} s: tiled/whole time {whole_rate / tiled_rate:.2f}")
        unfused = load_predictor(path, device="cpu", tta="none", tile_size=1024)
        unfused.model = prepare_model(load_model_dir(path, unfused.device)[0], unfused.device).eval()
        unfused_rate = time_predict(unfused, 1024, 1, args.repeat)
        image = np.random.default_rng(1).random((1024, 1024, 3), dtype=np.float32)
        diff = float(np.abs(whole.predict(image) - unfused.predict(image)).max())
        print(f"1024x1024 on CPU ({whole.precision}): batch norm folded {1 / whole_rate:.3f} s, as trained "
              f"{1 / unfused_rate:.3f} s: folded/trained time {unfused_rate / whole_rate:.2f}; "
              f"largest probability difference {diff:.1e}")
        ws256, _ = time_watershed(256, args.repeat)
        print(f"\nwatershed 256x256: {ws256:.1f} ms = {ws256 / 50:.2f} x the 50 ms budget (one core)")
        if not args.no_submit:
            seconds = time_submit(path, args.threads)
            n = sum(1 for p in SAMPLE.iterdir() if (p / "images").is_dir())
            print(f"nuclei submit, embedded sample ({n} images), no TTA, CPU {args.threads} threads, "
                  f"fresh process: {seconds:.1f} s ({seconds / n:.2f} s per image)")


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
