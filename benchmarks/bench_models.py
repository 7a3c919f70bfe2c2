"""Compute cost of the candidate networks: parameters, GFLOPs and training-step throughput.

Prints one row per model (params in millions, forward GFLOPs per 256×256 image, forward +
backward images/s) and the ratios against the plain U-Net of the demo parameters, measured in
the same run on the same device, at the precision training uses (``--precision auto``: bf16 on a
CPU with native bf16 and on GPUs) with channels_last. The rates set the crop counts of the
equal-budget variants in ``scripts/compare_variants.py`` (``--threads 1``: one core each, two
variants side by side on the 2-core VM).

    python -m benchmarks.bench_models [--device cpu|cuda] [--threads 2] [--size 256] [--batch 8]
"""

from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from pipeline.model.networks import build_model, count_parameters
from pipeline.model.runtime import autocast, prepare_model, resolve_precision

CANDIDATES = [
    {"arch": "unet", "depth": 4, "width": 16, "upsampling": "transpose"},
    {"arch": "unet", "depth": 4, "width": 32, "upsampling": "transpose"},
    {"arch": "unet", "depth": 5, "width": 16, "upsampling": "transpose"},
    {"arch": "smp", "encoder": "resnet18"},
    {"arch": "smp", "encoder": "resnet34"},
    {"arch": "smp", "encoder": "resnet50"},
    {"arch": "smp", "encoder": "efficientnet-b0"},
    {"arch": "smp", "encoder": "mobilenet_v2"},
]


def name(cfg: dict) -> str:
    return cfg["encoder"] if cfg["arch"] == "smp" else f"unet d{cfg['depth']} w{cfg['width']}"


def measure(cfg: dict, device: torch.device, precision: str, size: int, batch: int, steps: int) -> dict:
    model = build_model({**cfg, "head": "softmax"}).to(device)
    x = torch.rand(batch, 3, size, size, device=device)
    with FlopCounterMode(display=False) as counter:
        model.eval()
        with torch.no_grad():
            model(x[:1])
    gflops = counter.get_total_flops() / 1e9
    model = prepare_model(model, device)
    x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)

    def step():
        with autocast(device, precision):
            loss = model(x).float().logsumexp(1).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    step()  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    elapsed = time.perf_counter() - start
    return {"params_m": count_parameters(model) / 1e6, "gflops": gflops, "img_s": steps * batch / elapsed}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--precision", default="auto", choices=("auto", "fp32", "bf16", "fp16"))
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    device = torch.device(args.device)
    precision = resolve_precision(args.precision, device)
    hw = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {args.threads} threads"
    print(f"device: {hw}; {precision}, channels_last; input {args.batch}×3×{args.size}×{args.size}; "
          "train step = fwd + bwd + SGD")
    rows = [(name(cfg), measure(cfg, device, precision, args.size, args.batch, args.steps)) for cfg in CANDIDATES]
    ref = rows[0][1]
    print(f"{'model':<18}{'params M':>9}{'GFLOPs':>9}{'img/s':>9}{'× GFLOPs':>10}{'× img/s':>9}")
    for label, r in rows:
        print(
            f"{label:<18}{r['params_m']:>9.2f}{r['gflops']:>9.2f}{r['img_s']:>9.1f}"
            f"{r['gflops'] / ref['gflops']:>10.2f}{r['img_s'] / ref['img_s']:>9.2f}"
        )


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
