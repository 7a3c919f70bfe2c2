"""CPU network time with glibc's default allocator vs freed memory kept for reuse.

Usage::

    python -m experiments.allocator [--model DIR] [--threads 2] [--size 1024] [--repeats 5]
        [--arch unet-w32-d4 --arch smp-resnet18 ...]

``pipeline.model.runtime.prepare_model`` makes a process that runs a network on the CPU keep freed
memory for reuse (``runtime.reuse_freed_memory``: glibc's mmap and trim thresholds raised to
1 GiB). This script measures what that changes, side by side in one run: each setting in a fresh
child process (the allocator setting is process-wide and cannot be undone), the same work in
both:

1. inference: the model's Predictor (batch norm folded, channels_last, the automatic precision)
   on one ``--size``² image in one pass, as ``nuclei segment`` runs a 1024² image: the first
   pass and the median of ``--repeats`` more;
2. training: ``--steps`` training steps of the model's architecture on a fixed batch of
   ``--batch-size`` × 256² crops (forward, loss, backward, AdamW), as ``nuclei train`` runs them,
   no data loader.

``--arch`` repeats both for untrained networks of other architectures (the model's head), for
the network time a candidate would have in ``nuclei segment``. For each it prints seconds, system (kernel) seconds and minor page faults of the child, and the
ratio reuse / default; then each child's peak resident memory (what the reuse costs). Needs a Linux with glibc; elsewhere the setting does nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def timed(step, runs: int) -> dict:
    """Run ``step()`` ``runs`` times: seconds of the first run and median of the others, and the
    system seconds and minor page faults of this process over all of them."""
    before = resource.getrusage(resource.RUSAGE_SELF)
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    after = resource.getrusage(resource.RUSAGE_SELF)
    return {"first": times[0], "median": statistics.median(times[1:]), "sys": after.ru_stime - before.ru_stime,
            "faults": after.ru_minflt - before.ru_minflt, "runs": runs}


def architecture(spec: str) -> dict:
    """``unet-w32-d4`` → plain U-Net width 32 depth 4; ``smp-resnet18`` → smp U-Net, that encoder."""
    kind, *rest = spec.split("-", 1)
    if kind == "smp" and rest:
        return {"arch": "smp", "encoder": rest[0]}
    parts = dict((part[0], int(part[1:])) for part in rest[0].split("-")) if kind == "unet" and rest else {}
    if kind != "unet" or set(parts) != {"w", "d"}:
        raise SystemExit(f"--arch {spec!r}: expected unet-wW-dD or smp-ENCODER")
    return {"arch": "unet", "width": parts["w"], "depth": parts["d"]}


def child(args: argparse.Namespace) -> dict:
    """Run the measurements in this process; ``args.reuse`` decides the allocator setting."""
    import numpy as np
    import torch

    from pipeline.config.params import LossConfig
    from pipeline.method.heads import TARGET_KEYS
    from pipeline.method.training_targets import make_targets
    from pipeline.model import runtime
    from pipeline.model.model_dir import load_model_dir
    from pipeline.model.networks import build_model
    from pipeline.model.predictor import Predictor
    from pipeline.training.losses import build_loss
    from pipeline.training.steps import train_step

    if not args.reuse:
        runtime.reuse_freed_memory = lambda: False  # what prepare_model would call
    torch.set_num_threads(args.threads)
    model, config = load_model_dir(args.model)
    if args.arch:  # an untrained network of another architecture, the model's head
        config = config.replace(model={**config.model.to_dict(), **architecture(args.arch)})
        torch.manual_seed(0)
        model = build_model(config.model).eval()
    out: dict = {"applied": runtime.reuse_freed_memory() if args.reuse else False}

    predictor = Predictor(model, config, device="cpu", tta="none", tile_size=args.size, batch_size=1)
    image = np.random.default_rng(0).random((args.size, args.size, 3), dtype=np.float32)
    out["infer"] = timed(lambda: predictor.predict(image), args.repeats + 1)

    # training: a fixed batch of disc nuclei with their real targets, stepped as the trainer does
    yy, xx = np.mgrid[:256, :256]
    labels = np.zeros((256, 256), np.int32)
    for k, (cy, cx) in enumerate(((y, x) for y in range(16, 256, 24) for x in range(16, 256, 24)), 1):
        labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= 100] = k
    targets = make_targets(labels)
    batch = {"image": torch.from_numpy(image[:256, :256].transpose(2, 0, 1).copy())[None].repeat(args.batch_size, 1, 1, 1)}
    for key in TARGET_KEYS:
        dtype = torch.int64 if key == "classes" else torch.float32
        batch[key] = torch.from_numpy(targets[key]).to(dtype)[None].repeat(args.batch_size, 1, 1)
    torch.manual_seed(0)
    net = runtime.prepare_model(build_model(config.model), "cpu").train()
    loss_fn = build_loss(LossConfig(), config.model.head)
    optimizer = torch.optim.AdamW(net.parameters(), lr=1e-4)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    precision = runtime.resolve_precision("auto", "cpu")
    out["train"] = timed(lambda: train_step(net, batch, loss_fn, optimizer, scaler, torch.device("cpu"), precision),
                         args.steps + 1)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", type=Path, default=ROOT / "pipeline" / "shipped" / "model")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", type=int, default=1024, help="side of the inference image, px")
    p.add_argument("--repeats", type=int, default=5, help="inference passes after the first")
    p.add_argument("--steps", type=int, default=5, help="training steps after the first")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--arch", action="append", default=[], metavar="SPEC",
                   help="also an untrained network of this architecture with the model's head: "
                        "unet-w32-d4, smp-resnet18, ... (repeatable)")
    p.add_argument("--child", choices=("default", "reuse"), help=argparse.SUPPRESS)
    p.add_argument("--child-arch", default=None, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        args.reuse, args.arch = args.child == "reuse", args.child_arch
        print(json.dumps(child(args)))
        return 0
    for spec in args.arch:
        architecture(spec)  # a bad spec stops here, before any child runs

    print(f"{platform.machine()}, {os.cpu_count()} cores visible, {args.threads} torch threads, "
          f"C library {' '.join(platform.libc_ver()) or 'unknown'}; model {args.model}")
    env = {**os.environ, "OMP_NUM_THREADS": str(args.threads)}
    for arch in (None, *args.arch):
        results = {}
        for setting in ("default", "reuse"):
            cmd = [sys.executable, "-m", "experiments.allocator", "--child", setting, "--model", str(args.model),
                   "--threads", str(args.threads), "--size", str(args.size), "--repeats", str(args.repeats),
                   "--steps", str(args.steps), "--batch-size", str(args.batch_size)]
            run = subprocess.run(cmd + (["--child-arch", arch] if arch else []), env=env, capture_output=True,
                                 text=True, check=False)
            if run.returncode:
                lines = run.stderr.strip().splitlines()
                print(lines[-1] if lines else f"child exit {run.returncode}", file=sys.stderr)
                return 1
            results[setting] = json.loads(run.stdout.strip().splitlines()[-1])
        print(f"\n=== {arch + ' (untrained)' if arch else 'the model'}")
        if not results["reuse"]["applied"]:
            print("reuse_freed_memory() did not apply here (not glibc): both columns are the default allocator")
        report(results, args)
    return 0


def report(results: dict, args: argparse.Namespace) -> None:
    """Print the default / reuse table of one network."""
    rows = (("infer", f"network pass, one {args.size}² image (Predictor, tta none)", "passes"),
            ("train", f"training step, {args.batch_size} x 256² crops", "steps"))
    for key, title, unit in rows:
        d, r = results["default"][key], results["reuse"][key]
        print(f"{title}: {d['runs']} {unit} each")
        print(f"  {'':10s} {'first s':>8s} {'median s':>9s} {'system s':>9s} {'minor faults':>13s}")
        for name, v in (("default", d), ("reuse", r)):
            print(f"  {name:10s} {v['first']:8.3f} {v['median']:9.3f} {v['sys']:9.2f} {v['faults']:13,d}")
        print(f"  reuse / default: median {r['median'] / d['median']:.2f}x the time, first {r['first'] / d['first']:.2f}x")
    d, r = results["default"]["peak_rss_mb"], results["reuse"]["peak_rss_mb"]
    print(f"peak resident memory of the child: default {d:,.0f} MB, reuse {r:,.0f} MB ({r / d:.2f}x)")


if __name__ == "__main__":
    raise SystemExit(main())
