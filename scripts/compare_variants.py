"""Train and score model variants on one fold: the comparison behind the shipped model.

For each variant (a set of parameter overrides on top of a base parameter file) this runs
``nuclei train``, ``nuclei predict``, ``nuclei tune`` (post-processing thresholds, written into
the variant's parameters), ``nuclei postprocess`` and ``nuclei evaluate``, each in its own folder
``RUNS/<variant>/``, and prints a markdown table of the validation figures (DSB2018 score,
AP@0.5, F1@0.5, counting error) with the training time and hardware.

    python scripts/compare_variants.py --base params.yaml --runs runs/ \
        --variants unet-softmax unet-softmax-noweights unet-sigmoid smp-resnet18-softmax

Variants are defined in :data:`VARIANTS`; ``--set key=value`` adds overrides to all of them
(for example ``--set train.epochs=3 --set train.samples_per_epoch=400``).
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

#: name → overrides (dotted keys) on top of the base parameters.
VARIANTS: dict[str, dict] = {
    "unet-softmax": {"model.arch": "unet", "model.head": "softmax", "loss.use_weight_maps": True},
    "unet-softmax-noweights": {"model.arch": "unet", "model.head": "softmax", "loss.use_weight_maps": False},
    "unet-sigmoid": {"model.arch": "unet", "model.head": "sigmoid", "loss.use_weight_maps": True},
    "unet-sigmoid-noweights": {"model.arch": "unet", "model.head": "sigmoid", "loss.use_weight_maps": False},
    "smp-resnet18-softmax": {"model.arch": "smp", "model.encoder": "resnet18", "model.head": "softmax"},
    "smp-resnet34-softmax": {"model.arch": "smp", "model.encoder": "resnet34", "model.head": "softmax"},
    "smp-mobilenet_v2-softmax": {"model.arch": "smp", "model.encoder": "mobilenet_v2", "model.head": "softmax"},
}


def set_dotted(params: dict, key: str, value) -> None:
    """``params['a']['b'] = value`` for ``key = 'a.b'``."""
    *parents, last = key.split(".")
    node = params
    for p in parents:
        node = node.setdefault(p, {})
    node[last] = value


def run(cmd: list[str], log: Path) -> float:
    """Run a command, appending its output to ``log``; returns the wall time in seconds."""
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"$ {' '.join(cmd)}\n")
        fh.flush()
        result = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=ROOT, env=None)
    if result.returncode != 0:
        raise SystemExit(f"{cmd[1]} failed for {log.parent.name} (exit {result.returncode}); see {log}")
    return time.perf_counter() - t0


def run_variant(name: str, base: dict, overrides: dict, runs: Path, tune_args: list[str]) -> dict:
    """Train, predict, tune, post-process and evaluate one variant; returns its table row."""
    out = (runs / name).resolve()
    out.mkdir(parents=True, exist_ok=True)
    params = copy.deepcopy(base)
    for key, value in overrides.items():
        set_dotted(params, key, value)
    set_dotted(params, "train.out", str(out / "train"))
    set_dotted(params, "predict.model", str(out / "train" / "model"))
    set_dotted(params, "predict.out", str(out / "predictions"))
    set_dotted(params, "postprocess.out", str(out / "postprocessed"))
    set_dotted(params, "evaluate.out", str(out / "metrics"))
    params_path = out / "params.yaml"
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    log = out / "log.txt"
    nuclei = str(Path(sys.executable).with_name("nuclei"))
    p = ["--params", str(params_path)]
    times = {"train": run([nuclei, "train", *p], log)}
    times["predict"] = run([nuclei, "predict", *p], log)
    times["tune"] = run([nuclei, "tune", *p, *tune_args, "--write", str(params_path)], log)
    run([nuclei, "postprocess", *p], log)
    run([nuclei, "evaluate", *p], log)
    metrics = json.loads((out / "metrics" / "metrics.json").read_text())
    tuned = yaml.safe_load(params_path.read_text())["postprocess"]
    row = {
        "variant": name,
        "dsb_score": metrics["dsb_score"],
        "ap50": metrics["ap50"],
        "f1_50": metrics["f1_50"],
        "count_error": metrics["count_error"],
        "train_s": round(times["train"]),
        "predict_s": round(times["predict"]),
        "thresholds": f"{tuned['marker_threshold']}/{tuned['mask_threshold']}/{tuned['flood']}",
    }
    (out / "row.json").write_text(json.dumps(row, indent=2))
    return row


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="params.yaml", help="base parameter file")
    parser.add_argument("--runs", default="runs", help="output folder, one sub-folder per variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every variant, e.g. train.epochs=3 (value parsed as YAML)")
    parser.add_argument("--tune", default="--marker 0.4 0.5 0.6 0.7 --mask 0.4 0.5 0.6",
                        help="arguments for nuclei tune")
    args = parser.parse_args()
    base = yaml.safe_load(Path(args.base).read_text())
    for item in args.set:
        key, _, value = item.partition("=")
        set_dotted(base, key, yaml.safe_load(value))
    runs = Path(args.runs)
    rows = []
    for name in args.variants:
        row = run_variant(name, base, VARIANTS[name], runs, args.tune.split())
        rows.append(row)
        print(json.dumps(row), flush=True)
    hardware = f"{platform.machine()}, {len(__import__('os').sched_getaffinity(0))} CPU cores"
    print(f"\nfold {base['data'].get('val_fold', 0)}, {hardware}\n")
    print("| variant | DSB2018 | AP@0.5 | F1@0.5 | count error | train s | predict s | marker/mask/flood |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {r['dsb_score']:.4f} | {r['ap50']:.4f} | {r['f1_50']:.4f} | "
              f"{r['count_error']:.3f} | {r['train_s']} | {r['predict_s']} | {r['thresholds']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
