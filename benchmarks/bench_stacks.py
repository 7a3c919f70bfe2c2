"""The cost of a z-stack and of a time-lapse frame: seconds and peak memory (issue 61).

Usage::

    python -m benchmarks.bench_stacks [--planes 100] [--size 512] [--anisotropy 4] [--threads 2]
                                      [--cases stitch,ortho,frame] [--model default]

One synthetic fluorescence stack (:func:`pipeline.method.synthetic.synthetic_nuclei_stack`:
``--planes`` × ``--size`` × ``--size`` uint16, nuclei of about 20 px (the shipped model's canonical
diameter), about half of them touching, z step ``--anisotropy`` px) is made once and saved; each case
then runs in a fresh Python process that loads it, loads the model (the ``segment`` section's
settings of ``params.yaml``, as ``nuclei segment`` does) and reports

- ``stitch`` / ``ortho``: ``segment_stack(segmenter, stack, method, anisotropy)``, seconds;
- ``frame``: ``Segmenter.segment`` of one ``--size``² plane (the diameter estimated, as for each
  frame of a time-lapse), median seconds of ``--repeats`` frames: × 100 is a 100-frame movie's
  segmentation;

and the CPU seconds it used (user + system, all threads: less sensitive than seconds to other jobs
on shared cores), with the process's peak resident memory (``ru_maxrss``: model, runtime and work together) and its
resident memory once the model is loaded, before the case (the increment is the case's own).
The machine's cores may be shared (a training run, other jobs): say so beside the figures.
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
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--planes", type=int, default=100)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--anisotropy", type=float, default=4.0, help="z step / pixel size of the stack")
    parser.add_argument("--density", type=float, default=0.15,
                        help="share of the stack's volume asked to be nuclei (fewer when no room is left)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5, help="frames timed by the 'frame' case")
    parser.add_argument("--cases", default="stitch,ortho,frame")
    parser.add_argument("--model", default="default")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # a child process: run this one case
    parser.add_argument("--stack", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.case:
        return run_case(args)

    import numpy as np

    from pipeline.method.synthetic import synthetic_nuclei_stack

    radius = 10.0
    depth = args.planes * args.anisotropy
    n = int(args.density * depth * args.size**2 / (4 / 3 * np.pi * radius**3))
    start = time.perf_counter()
    image, labels = synthetic_nuclei_stack((args.planes, args.size, args.size), n, radius, args.anisotropy, seed=0)
    print(f"stack {args.planes} x {args.size} x {args.size} uint16, anisotropy {args.anisotropy:g}: "
          f"{labels.max()} nuclei (made in {time.perf_counter() - start:.0f} s); {platform.processor() or 'cpu'}, "
          f"{os.cpu_count()} cores visible, {args.threads} threads; load average {os.getloadavg()[0]:.1f}\n",
          flush=True)
    del labels
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "stack.npy"
        np.save(path, image)
        del image
        results = {}
        for case in args.cases.split(","):
            command = [sys.executable, "-m", "benchmarks.bench_stacks", "--case", case, "--stack", str(path),
                       "--anisotropy", str(args.anisotropy), "--threads", str(args.threads), "--repeats", str(args.repeats),
                       "--model", args.model]
            out = subprocess.run(command, capture_output=True, text=True, check=False)
            if out.returncode:
                print(f"{case}: failed\n{out.stderr[-2000:]}")
                continue
            results[case] = json.loads(out.stdout.strip().splitlines()[-1])
            r = results[case]
            print(f"{case:7s}: {r['seconds']:8.1f} s ({r['cpu_s']:.1f} CPU s){' per frame' if case == 'frame' else ''}"
                  f"   peak RSS "
                  f"{r['peak_mb'] / 1024:5.2f} GiB (model loaded: {r['loaded_mb'] / 1024:.2f} GiB)"
                  f"{'   ' + r['note'] if r.get('note') else ''}", flush=True)
    if "frame" in results:
        frame = results["frame"]["seconds"]
        print(f"\n100 frames of {args.size}^2 (segmentation only): {100 * frame:.0f} s")
        for case in ("stitch", "ortho"):
            if case in results:
                print(f"{case}: {results[case]['seconds'] / (args.planes * frame):.2f} x the time of "
                      f"{args.planes} 2D frames ({results[case]['seconds'] / args.planes:.2f} s per plane)")
    return 0


def run_case(args) -> int:
    """One case in this (fresh) process; prints one JSON line."""
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    import numpy as np
    import torch

    from pipeline.config.params import SegmentConfig
    from pipeline.model.segmenter import Segmenter
    from pipeline.model.stack_segmenter import segment_stack

    torch.set_num_threads(args.threads)
    stack = np.load(args.stack)
    segmenter = Segmenter.from_model_dir(args.model, **SegmentConfig().segmenter_options())
    segmenter.predict_scaled(np.zeros((64, 64, 3), np.float32), 1.0)  # the runtime's first-call set-up
    loaded = rss_mb()
    cpu = cpu_seconds()
    note = ""
    if args.case == "frame":
        plane = stack[len(stack) // 2]
        times = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = segmenter.segment(np.repeat(plane[..., None], 3, axis=2))
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times)
        note = f"{int(result.labels.max())} nuclei, diameter {result.diameter:.1f} px"
    else:
        start = time.perf_counter()
        result = segment_stack(segmenter, stack, args.case, args.anisotropy)
        seconds = time.perf_counter() - start
        note = f"{int(result.labels.max())} nuclei, diameter {result.diameter:.1f} px"
    cpu = (cpu_seconds() - cpu) / (args.repeats if args.case == "frame" else 1)
    print(json.dumps({"seconds": seconds, "cpu_s": cpu, "peak_mb": peak_mb(), "loaded_mb": loaded, "note": note}))
    return 0


def cpu_seconds() -> float:
    """User + system CPU seconds of this process so far (all its threads)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def peak_mb() -> float:
    """Peak resident memory of this process, MiB (``ru_maxrss``: KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def rss_mb() -> float:
    """Current resident memory of this process, MiB."""
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
