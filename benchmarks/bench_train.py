"""Training throughput and data-loader starvation.

Prints, per device and precision, training images/s, step time and the fraction of step time
spent waiting for the data loader (time blocked in ``next(loader)`` / wall time), and the
images/s of the network alone (the same batch stepped again, no loader), with the model,
loss, augmentation and loader settings of ``params.yaml`` (overridable). Every device is measured
in fp32 and in the precision ``train.precision: auto`` picks (bf16 autocast + channels_last on a
CPU with native bf16 and on GPUs), side by side in one run, with the ratio; on CUDA it also
reports the GPU utilisation sampled during the run. ``--workers-sweep`` measures 0, 1 and 2
data-loader workers in the automatic precision (how many workers the cores can spare). With
``--device auto`` it measures the CPU and, when CUDA is available, the GPU. ``--precision bf16``
measures forced bf16 instead of the automatic choice: on a CPU without native bf16 instructions,
where ``auto`` picks fp32, it shows what that choice avoids (bf16 emulated in software).

``--loader N`` first times N crops of the training set of ``--params`` (its sources, draw weights and
augmentation, as ``nuclei train`` builds it) in this process after a warm-up that fills the cache:
ms per crop, crops/s per loader worker, the share of each step (cProfile, a second pass), and the
cache's bytes per pixel; the device runs then print how many workers keep the network fed. On a
GPU the loader sets the pace: this is the figure that sizes ``train.workers``.

Data: ``--data prepared`` uses ``data/prepared`` + ``data/targets`` (the stage outputs),
``--data synthetic`` writes disc images to a temporary folder, ``auto`` (default) takes the
prepared data when present.

    python -m benchmarks.bench_train                          # quick: CPU (+ GPU if present)
    python -m benchmarks.bench_train --device cuda --steps 100 --batch-size 32 --workers 8
    python -m benchmarks.bench_train --precision bf16 --batch-size 8    # fp32 vs forced bf16
    python -m benchmarks.bench_train --params P --loader 400 --device cpu   # the loader's cost per crop
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

import torch

from pipeline.config.params import load_params
from pipeline.model.networks import build_model, count_parameters
from pipeline.model.runtime import prepare_model, resolve_precision, set_threads
from pipeline.training.augment import build_augmentation
from pipeline.training.dataset import EpochSampler, NucleiDataset, make_loader, read_index
from pipeline.training.losses import build_loss
from pipeline.training.steps import train_step

ROOT = Path(__file__).resolve().parents[1]


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
    p.add_argument("--workers-sweep", action="store_true", help="also measure 0, 1, 2 loader workers")
    p.add_argument("--precision", default="auto", choices=("auto", "bf16"),
                   help="the precision measured beside fp32 (bf16: forced, also on a CPU without native "
                        "bf16, to see what 'auto' avoids there)")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (GPU)")
    p.add_argument("--loader", type=int, default=0, metavar="N",
                   help="first time N crops of the training set of --params in this process")
    return p.parse_args()


def data_folders(params: dict, kind: str, tmp: Path) -> tuple[Path, Path, str]:
    prepared = ROOT / params["data"].get("prepared", "data/prepared")
    targets = ROOT / params["targets"].get("out", "data/targets")
    if kind == "prepared" or (kind == "auto" and (prepared / "index.csv").is_file() and targets.is_dir()):
        return prepared, targets, f"prepared ({prepared})"
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


def measure(params: dict, args, device: torch.device, prepared: Path, targets: Path, precision: str,
            workers: int | None = None) -> dict:
    train_cfg, model_cfg = params["train"], params["model"]
    cuda = device.type == "cuda"
    steps = args.steps or (50 if cuda else 8)
    warmup = args.warmup if args.warmup is not None else (10 if cuda else 2)
    batch_size = args.batch_size or int(train_cfg.get("batch_size", 8))
    if workers is None:
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
    model = net = prepare_model(build_model(model_cfg), device)
    if cuda:
        torch.backends.cudnn.benchmark = True
        if args.compile:
            net = torch.compile(model)
    net.train()
    loss_fn = build_loss(params.get("loss") or {}, model_cfg.get("head", "softmax"))
    optimizer = torch.optim.AdamW(model.parameters(), lr=float(train_cfg.get("lr", 1e-3)))
    precision = resolve_precision(precision, device)
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    def sync():
        if cuda:
            torch.cuda.synchronize(device)

    it = iter(loader)
    for _ in range(warmup):
        train_step(net, next(it), loss_fn, optimizer, scaler, device, precision)
    sync()
    wait = 0.0
    sampler = GpuSampler(device) if cuda else None
    with sampler or _null():
        start = time.perf_counter()
        for _ in range(steps):
            t = time.perf_counter()
            batch = next(it)
            wait += time.perf_counter() - t
            train_step(net, batch, loss_fn, optimizer, scaler, device, precision)
            sync()  # attribute GPU time to the step, not to the next wait
        total = time.perf_counter() - start
        start = time.perf_counter()  # the network alone: the same batch again, no loader
        for _ in range(steps):
            train_step(net, batch, loss_fn, optimizer, scaler, device, precision)
            sync()
        network_only = time.perf_counter() - start
    crop = batch["image"].shape[-1]
    return {
        "device": str(device),
        "name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "precision": precision,
        "batch": batch_size,
        "crop": crop,
        "workers": workers,
        "steps": steps,
        "images_per_s": steps * batch_size / total,
        "network_images_per_s": steps * batch_size / network_only,
        "step_ms": 1000 * total / steps,
        "wait_fraction": wait / total,
        "gpu_util": sampler.mean() if sampler else None,
        "params_m": count_parameters(model) / 1e6,
    }


class _Step:
    """An albumentations Compose of the augmentation, called through a method of its own class
    so that the profile tells geometry and appearance apart."""

    def __init__(self, compose):
        self.compose = compose

    def set_random_state(self, *args):
        self.compose.set_random_state(*args)


class _Geometry(_Step):
    def __call__(self, **data):
        return self.compose(**data)


class _Appearance(_Step):
    def __call__(self, **data):
        return self.compose(**data)


#: The steps of a training crop (functions of the profile), in the order they run.
LOADER_STEPS = {"load or cache": "arrays", "crop": "random_crop", "to float": "unit_float",
                "geometry": _Geometry.__call__, "acquisition": "acquisition_shift",
                "normalise": "normalize_image", "appearance": _Appearance.__call__}


def loader_cost(params_path: str, n: int) -> float:
    """Time ``n`` crops of the training set ``nuclei train`` builds from ``params_path``, in this
    process, after ``n`` crops of warm-up (the cache fills); print the figures and return crops/s."""
    import cProfile
    import pstats

    import cv2

    from pipeline.config.params import load_config
    from pipeline.training.trainer import Trainer

    trainer = Trainer(load_config(params_path))
    trainer.setup_data()
    threads = cv2.getNumThreads()
    cv2.setNumThreads(0)  # as in a loader worker (pipeline.training.dataset.seed_worker)
    dataset = trainer.loader.dataset
    aug = dataset.transform
    if aug.geometric is not None:
        aug.geometric = _Geometry(aug.geometric)
    if aug.photometric is not None:
        aug.photometric = _Appearance(aug.photometric)
    offset = len(dataset)
    for i in range(n):
        dataset[offset + i]
    start = time.perf_counter()
    for i in range(n):
        dataset[2 * offset + i]
    ms = 1000 * (time.perf_counter() - start) / n
    profile = cProfile.Profile()
    profile.enable()
    for i in range(n):
        dataset[3 * offset + i]
    profile.disable()
    cv2.setNumThreads(threads)
    stats = pstats.Stats(profile).stats
    total = max(sum(v[3] for k, v in stats.items() if k[2] == "__getitem__"), 1e-9)
    def cumulative(step) -> float:
        if callable(step):
            code = step.__code__
            return sum(v[3] for k, v in stats.items() if k == (code.co_filename, code.co_firstlineno, code.co_name))
        return sum(v[3] for k, v in stats.items() if k[2] == step)

    shares = {label: cumulative(step) / total for label, step in LOADER_STEPS.items()}
    cached = list(dataset._cache.values())
    pixels = sum(a["image"].shape[0] * a["image"].shape[1] for a in cached)
    nbytes = sum(x.nbytes for a in cached for x in a.values())
    print(f"loader ({len(dataset.ids)} training images, {n} crops of {aug.crop or 'whole'} px after {n} to "
          f"warm up, OpenCV on one thread): {ms:.1f} ms per crop, {1000 / ms:.1f} crops/s per worker; "
          f"cache {len(cached)} images, {nbytes / max(pixels, 1):.1f} bytes per pixel")
    print("  steps (share of a crop's time): "
          + ", ".join(f"{label} {100 * share:.0f} %" for label, share in shares.items()))
    return 1000 / ms


class _null:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def main() -> int:
    args = parse_args()
    params = load_params(args.params)
    set_threads()
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
    per_worker = loader_cost(args.params, args.loader) if args.loader else None
    with tempfile.TemporaryDirectory() as tmp:
        prepared, targets, what = data_folders(params, args.data, Path(tmp))
        print(f"data: {what}")
        for device in devices:
            runs = [("fp32", None), (args.precision, None)]
            if args.workers_sweep:
                runs += [(args.precision, w) for w in (0, 1, 2)]
            for precision, workers in runs:
                r = measure(params, args, device, prepared, targets, precision, workers)
                results.append(r)
                report(r)
                if per_worker:
                    print(f"  loader workers that keep this network fed: {r['network_images_per_s'] / per_worker:.2f}")
            fp32, auto = results[-len(runs)], results[-len(runs) + 1]
            print(
                f"{device}: {auto['precision']} + channels_last / fp32 training throughput: "
                f"{auto['images_per_s'] / fp32['images_per_s']:.2f}x with the data loader, "
                f"{auto['network_images_per_s'] / fp32['network_images_per_s']:.2f}x the network alone"
            )
    cpu = [r for r in results if r["device"] == "cpu"]
    gpu = [r for r in results if r["device"] != "cpu"]
    if cpu and gpu:
        print(f"GPU / CPU training throughput (automatic precision): "
              f"{gpu[1]['images_per_s'] / cpu[1]['images_per_s']:.1f}x")
    return 0


def report(r: dict) -> None:
    util = f", GPU utilisation {r['gpu_util']:.0f} %" if r["gpu_util"] is not None else ""
    print(
        f"{r['device']:>7} ({r['name']}, {r['precision']:>4}, batch {r['batch']} x {r['crop']}^2 px, "
        f"{r['workers']} workers, {r['params_m']:.2f} M params): "
        f"{r['images_per_s']:8.1f} images/s ({r['network_images_per_s']:.1f} network alone), "
        f"{r['step_ms']:8.1f} ms/step, "
        f"waiting for data {100 * r['wait_fraction']:5.1f} % of step time{util}",
        flush=True,
    )


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
