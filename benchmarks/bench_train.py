"""Training throughput and data-loader starvation.

Prints, per device, training images/s, step time and the fraction of step time spent waiting
for the data loader (time blocked in ``next(loader)`` / wall time), with the model, loss,
augmentation and loader settings of ``params.yaml`` (overridable). On CUDA it uses the mixed
precision training uses (bf16 where supported, else fp16 + GradScaler) and reports the GPU
utilisation sampled during the run. With ``--device auto`` it measures the CPU and, when CUDA
is available, the GPU, and prints the GPU/CPU speed ratio.

Data: ``--data prepared`` uses ``data/prepared`` + ``data/targets`` (the stage outputs),
``--data synthetic`` writes disc images to a temporary folder, ``auto`` (default) takes the
prepared data when present.

    python benchmarks/bench_train.py                          # quick: CPU (+ GPU if present)
    python benchmarks/bench_train.py --device cuda --steps 100 --batch-size 32 --workers 8
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.augment import build_augmentation  # noqa: E402
from pipeline.config import load_params  # noqa: E402
from pipeline.dataset import EpochSampler, NucleiDataset, make_loader, read_index  # noqa: E402
from pipeline.losses import build_loss  # noqa: E402
from pipeline.models import build_model, count_parameters  # noqa: E402
from pipeline.train import train_step  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--params", default=str(ROOT / "params.yaml"))
    p.add_argument("--device", default="auto", help="auto (CPU, and GPU if present) | cpu | cuda")
    p.add_argument("--steps", type=int, default=None, help="timed steps (default 8 on CPU, 50 on GPU)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default 2 CPU, 10 GPU)")
    p.add_argument("--batch-size", type=int, default=None, help="default: train.batch_size")
    p.add_argument("--workers", type=int, default=None, help="default: train.workers")
    p.add_argument("--crop", type=int, default=None, help="default: augment.crop")
    p.add_argument("--data", choices=("auto", "prepared", "synthetic"), default="auto")
    p.add_argument("--no-amp", action="store_true", help="float32 on the GPU too")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    return p.parse_args()


def data_folders(params: dict, kind: str, tmp: Path) -> tuple[Path, Path, str]:
    prepared = ROOT / params["data"].get("prepared", "data/prepared")
    targets = ROOT / params["targets"].get("out", "data/targets")
    if kind == "prepared" or (kind == "auto" and (prepared / "index.csv").is_file() and targets.is_dir()):
        return prepared, targets, f"prepared ({prepared.relative_to(ROOT)})"
    from tests.train_fixtures import write_prepared

    prepared, targets = write_prepared(tmp, n_images=16, size=320, folds=4)
    return prepared, targets, "synthetic (16 images of ~320x320 px)"


class GpuSampler:
    """Samples ``torch.cuda.utilization`` (NVML) or nvidia-smi every 0.2 s in a thread."""

    def __init__(self, device: torch.device):
        self.device, self.values, self.stop = device, [], threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)

    def read(self) -> float | None:
        try:
            return float(torch.cuda.utilization(self.device))
        except Exception:
            try:
                out = subprocess.run(
                    [
                        "nvidia-smi",
                        "--query-gpu=utilization.gpu",
                        "--format=csv,noheader,nounits",
                        f"--id={self.device.index or 0}",
                    ],
                    capture_output=True,
                    text=True,
                    timeout=5,
                )
                return float(out.stdout.strip().splitlines()[0])
            except Exception:
                return None

    def run(self) -> None:
        while not self.stop.wait(0.2):
            value = self.read()
            if value is not None:
                self.values.append(value)

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()

    def mean(self) -> float | None:
        return sum(self.values) / len(self.values) if self.values else None


def measure(params: dict, args, device: torch.device, prepared: Path, targets: Path) -> dict:
    train_cfg, model_cfg = params["train"], params["model"]
    cuda = device.type == "cuda"
    steps = args.steps or (50 if cuda else 8)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    batch_size = args.batch_size or int(train_cfg.get("batch_size", 8))
    workers = args.workers if args.workers is not None else int(train_cfg.get("workers", 2))
    augment = dict(params.get("augment") or {})
    if args.crop:
        augment["crop"] = args.crop

    ids = read_index(prepared)["id"].tolist()
    dataset = NucleiDataset(
        ids,
        prepared,
        targets,
        train=True,
        transform=build_augmentation(augment, train=True),
        samples_per_epoch=(steps + warmup) * batch_size,
        seed=0,
    )
    loader = make_loader(dataset, batch_size, EpochSampler(dataset), workers, pin_memory=cuda, drop_last=True)
    torch.manual_seed(0)
    model = build_model(model_cfg).to(device)
    net = model
    if cuda:
        model = net = model.to(memory_format=torch.channels_last)
        torch.backends.cudnn.benchmark = True
        if args.compile:
            net = torch.compile(model)
    net.train()
    loss_fn = build_loss(params.get("loss") or {}, model_cfg.get("head", "softmax"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(train_cfg.get("lr", 1e-3)))
    amp_dtype = None
    if cuda and not args.no_amp:
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    it = iter(loader)
    for _ in range(warmup):
        train_step(net, next(it), loss_fn, optimizer, scaler, device, amp_dtype, cuda)
    sync()
    wait = 0.0
    sampler = GpuSampler(device) if cuda else None
    with sampler or _null():
        start = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            batch = next(it)
            wait += time.perf_counter() - t
            train_step(net, batch, loss_fn, optimizer, scaler, device, amp_dtype, cuda)
            sync()  # attribute GPU time to the step, not to the next wait
        total = time.perf_counter() - start
    crop = batch["image"].shape[-1]
    return {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "precision": {None: "fp32", torch.bfloat16: "bf16 autocast", torch.float16: "fp16 autocast"}[
            amp_dtype
        ],
        "batch": batch_size,
        "crop": crop,
        "workers": workers,
        "steps": steps,
        "images_per_s": steps * batch_size / total,
        "step_ms": 1000 * total / steps,
        "wait_fraction": wait / total,
        "gpu_util": sampler.mean() if sampler else None,
        "params_m": count_parameters(model) / 1e6,
    }


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main() -> int:
    args = parse_args()
    params = load_params(args.params)
    if args.device == "auto":
        devices = [torch.device("cpu")] + ([torch.device("cuda", 0)] if torch.cuda.is_available() else [])
    else:
        if args.device.startswith("cuda") and not torch.cuda.is_available():
            print("bench_train: CUDA is not available", file=sys.stderr)
            return 1
        devices = [torch.device(args.device if ":" in args.device or args.device == "cpu" else "cuda:0")]
    print(
        f"host: {platform.node()} {platform.machine()}, {os.cpu_count()} CPU cores, "
        f"torch {torch.__version__}, {torch.get_num_threads()} torch threads"
    )
    m = params["model"]
    print(
        f"model: arch={m.get('arch')} head={m.get('head')} "
        + (
            f"encoder={m.get('encoder')}"
            if m.get("arch") == "smp"
            else f"depth={m.get('depth')} width={m.get('width')}"
        )
    )
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        prepared, targets, what = data_folders(params, args.data, Path(tmp))
        print(f"data: {what}")
        for device in devices:
            r = measure(params, args, device, prepared, targets)
            results.append(r)
            util = f", GPU utilisation {r['gpu_util']:.0f} %" if r["gpu_util"] is not None else ""
            print(
                f"{r['device']:>7} ({r['name']}, {r['precision']}, batch {r['batch']} x {r['crop']}^2 px, "
                f"{r['workers']} workers, {r['params_m']:.2f} M params): "
                f"{r['images_per_s']:8.1f} images/s, {r['step_ms']:8.1f} ms/step, "
                f"waiting for data {100 * r['wait_fraction']:5.1f} % of step time{util}"
            )
    if len(results) == 2:
        cpu, gpu = results
        print(
            f"GPU / CPU training throughput: {gpu['images_per_s'] / cpu['images_per_s']:.1f}x "
            f"(batch {gpu['batch']} on both)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
