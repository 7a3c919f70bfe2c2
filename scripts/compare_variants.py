"""Train and score model variants by cross-validation: the comparison behind the shipped model.

For each variant (a set of parameter overrides on top of a base parameter file) and each
validation fold this runs ``nuclei train`` and ``nuclei predict`` in ``RUNS/<variant>/fold<k>/``.
The post-processing thresholds are then tuned once per variant on the pooled out-of-fold
predictions of all its folds (not on one fold or one image type; for the best mean over images,
or over experiments with ``--balance experiment``, as ``nuclei tune``), written into every fold's
parameters, and ``nuclei postprocess`` and ``nuclei evaluate`` score each fold with them. The
script prints a markdown table: the mean DSB2018 score over the folds (the CV figure), each
fold's score, the mean over experiments (acquisition groups) of their mean score, and AP@0.5,
F1@0.5 and counting error over all out-of-fold images, with the
training time (summed over folds) and hardware.

    python -m scripts.compare_variants --base params.yaml --runs runs/ --folds 0 1 2 3 4 \\
        --variants budget-unet-w16-d4-sigmoid budget-unet-w32-d4-sigmoid

Variants are defined in :data:`VARIANTS`; ``--set key=value`` adds overrides to all of them,
after the variant's own (for example ``--set data.split=stratified``). ``--reuse`` keeps a fold
whose model and predictions already exist (to add folds or re-tune without training again).
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

#: The training schedule of the equal-budget variants (validation only after the last epoch, no TTA).
BUDGET = {"train.epochs": 4, "train.val_every": 4, "train.batch_size": 8, "train.workers": 0, "predict.tta": "none"}

#: A run from scratch (stage 1's peak learning rate) instead of the base parameters' warm start.
FROM_SCRATCH = {"train.init": None, "train.lr": 0.003, "model.head": "sigmoid"}

#: name → overrides (dotted keys) on top of the base parameters.
VARIANTS: dict[str, dict] = {
    "unet-softmax": {"model.arch": "unet", "model.head": "softmax", "loss.use_weight_maps": True},
    "unet-softmax-noweights": {"model.arch": "unet", "model.head": "softmax", "loss.use_weight_maps": False},
    "unet-sigmoid": {"model.arch": "unet", "model.head": "sigmoid", "loss.use_weight_maps": True},
    "unet-sigmoid-noweights": {"model.arch": "unet", "model.head": "sigmoid", "loss.use_weight_maps": False},
    "smp-resnet18-softmax": {"model.arch": "smp", "model.encoder": "resnet18", "model.head": "softmax"},
    "smp-resnet34-softmax": {"model.arch": "smp", "model.encoder": "resnet34", "model.head": "softmax"},
    "smp-mobilenet_v2-softmax": {"model.arch": "smp", "model.encoder": "mobilenet_v2", "model.head": "softmax"},
    # Equal compute budget (issue 14): about 12 minutes of bf16 training on one core of the 2-core
    # VM for each, at the network rates of `benchmarks/bench_models.py --threads 1` plus ~13 ms of
    # augmentation a crop (4 epochs of samples_per_epoch crops; w16 d4 = the shipped configuration).
    "budget-unet-w16-d4-sigmoid": {**BUDGET, "model.arch": "unet", "model.head": "sigmoid", "model.width": 16,
                                   "model.depth": 4, "train.samples_per_epoch": 1600},
    "budget-unet-w16-d4-softmax": {**BUDGET, "model.arch": "unet", "model.head": "softmax", "model.width": 16,
                                   "model.depth": 4, "train.samples_per_epoch": 1600},
    "budget-unet-w16-d5-sigmoid": {**BUDGET, "model.arch": "unet", "model.head": "sigmoid", "model.width": 16,
                                   "model.depth": 5, "train.samples_per_epoch": 1600},
    "budget-unet-w32-d4-sigmoid": {**BUDGET, "model.arch": "unet", "model.head": "sigmoid", "model.width": 32,
                                   "model.depth": 4, "train.samples_per_epoch": 675},
    "budget-smp-resnet18-sigmoid": {**BUDGET, "model.arch": "smp", "model.encoder": "resnet18",
                                    "model.head": "sigmoid", "train.samples_per_epoch": 1425},
    # Equal compute budget on the five sources (issue 36): about 30 minutes of fp32 training on one
    # core each, from scratch (`bench_models.py --threads 1` on an AVX-512 VM without AMX: 5.6, 1.7,
    # 5.0 and 3.9 crops/s, plus ~13 ms of augmentation a crop); run with `--base
    # pipeline/shipped/model/train_params.yaml --balance source`.
    **{f"budget5-{arch}": {**BUDGET, **FROM_SCRATCH, **cfg, "train.samples_per_epoch": n}
       for arch, cfg, n in (
           ("unet-w16-d4", {"model.arch": "unet", "model.width": 16, "model.depth": 4}, 2350),
           ("unet-w32-d4", {"model.arch": "unet", "model.width": 32, "model.depth": 4}, 750),
           ("unet-w16-d5", {"model.arch": "unet", "model.width": 16, "model.depth": 5}, 2110),
           ("smp-resnet18", {"model.arch": "smp", "model.encoder": "resnet18"}, 1675))},
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
        raise SystemExit(f"{cmd[1]} failed for {log.parent} (exit {result.returncode}); see {log}")
    return time.perf_counter() - t0


def nuclei(command: str, params_path: Path, *extra: str) -> list[str]:
    """The ``nuclei`` command line of this interpreter's environment."""
    return [str(Path(sys.executable).with_name("nuclei")), command, "--params", str(params_path), *extra]


def fold_params(base: dict, overrides: dict, out: Path, fold: int) -> Path:
    """Write the parameters of one variant and fold into ``out/params.yaml`` (outputs under ``out``)."""
    params = copy.deepcopy(base)
    for key, value in overrides.items():
        set_dotted(params, key, value)
    set_dotted(params, "data.val_fold", fold)
    set_dotted(params, "train.out", str(out / "train"))
    set_dotted(params, "predict.model", str(out / "train" / "model"))
    set_dotted(params, "predict.out", str(out / "predictions"))
    set_dotted(params, "postprocess.out", str(out / "postprocessed"))
    set_dotted(params, "evaluate.out", str(out / "metrics"))
    path = out / "params.yaml"
    if not path.is_file() or yaml.safe_load(path.read_text()) != params:
        path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def train_and_predict(params_path: Path, reuse: bool) -> dict:
    """``nuclei train`` and ``nuclei predict`` for one fold; with ``reuse``, skipped when done."""
    out, log = params_path.parent, params_path.parent / "log.txt"
    times_file = out / "times.json"
    if reuse and times_file.is_file() and (out / "train" / "model").is_dir():
        return json.loads(times_file.read_text())
    times = {"train": run(nuclei("train", params_path), log)}
    times["predict"] = run(nuclei("predict", params_path), log)
    times_file.write_text(json.dumps(times))
    return times


def pooled_thresholds(param_paths: list[Path], grid: dict[str, list], balance: str = "image"
                      ) -> tuple[dict, float]:
    """Best post-processing thresholds on the out-of-fold predictions of all folds together.

    ``balance``: the objective, as ``nuclei tune --balance``: the mean over images, over
    experiments (acquisition groups) or over labelled sources. Returns the grid values of the best
    row and its score.
    """
    from pipeline.config.params import load_config
    from pipeline.method.grid_search import BALANCE_COLUMNS, best_setting, grid_search
    from pipeline.stages.tune import pooled_samples

    configs = [load_config(path) for path in param_paths]
    samples, groups = pooled_samples(configs, BALANCE_COLUMNS[balance])
    fixed = {k: v for k, v in configs[-1].postprocess.thresholds().items() if k not in grid}
    table = grid_search(samples, grid, fixed, groups)
    best, scores = best_setting(table)
    return best, scores.get("group_score", scores["dsb_score"])


def source_summary(per_image) -> dict[str, dict]:
    """Per labelled source of an ``evaluate`` per-image table (DataFrame with a ``source`` column):
    mean DSB2018 score and AP@0.5, median counting error, number of images; {} without the column."""
    from pipeline.method.metrics import group_summary

    if "source" not in per_image:
        return {}
    table = group_summary(per_image, "source").sort_index()
    return {str(name): {"dsb_score": float(row.dsb_score), "ap50": float(row.ap50),
                        "median_count_error": float(row.count_error), "n_images": int(row.n_images)}
            for name, row in table.iterrows()}


def run_variant(name: str, base: dict, overrides: dict, runs: Path, folds: list[int],
                grid: dict[str, list], reuse: bool, balance: str = "image") -> dict:
    """Cross-validate one variant; returns its table row."""
    import pandas as pd

    from pipeline.config.params import load_config
    from pipeline.data.folds import read_index
    from pipeline.method.grid_search import group_mean
    from pipeline.stages.evaluate import summarise
    from pipeline.stages.tune import write_params

    paths = [fold_params(base, overrides, _mkdir(runs.resolve() / name / f"fold{k}"), k) for k in folds]
    times = [train_and_predict(p, reuse) for p in paths]
    thresholds, _ = pooled_thresholds(paths, grid, balance)
    tables, fold_scores = [], []
    for path in paths:
        write_params(path, thresholds)
        run(nuclei("postprocess", path), path.parent / "log.txt")
        run(nuclei("evaluate", path), path.parent / "log.txt")
        fold_scores.append(json.loads((path.parent / "metrics" / "metrics.json").read_text())["dsb_score"])
        tables.append(pd.read_csv(path.parent / "metrics" / "per_image.csv"))
    per_image = pd.concat(tables, ignore_index=True)
    pooled, _, by_type = summarise(per_image)
    by_source = source_summary(per_image)
    index = read_index(load_config(paths[0]).data.prepared)  # the folds' data, after --set
    groups = per_image["id"].map(dict(zip(index["id"], index.get("group", index["id"]), strict=True)))
    row = {
        "variant": name,
        "cv_dsb": sum(fold_scores) / len(fold_scores),
        "folds": dict(zip(map(str, folds), fold_scores, strict=True)),
        "experiment_dsb": group_mean(per_image["dsb_score"], groups),
        "n_experiments": int(groups.nunique()),
        "ap50": pooled["ap50"],
        "f1_50": pooled["f1_50"],
        "count_error": pooled["count_error"],
        "by_type": dict(zip(by_type["image_type"], by_type["dsb_score"], strict=True)),
        "by_source": by_source,
        "source_dsb": group_mean(per_image["dsb_score"], per_image["source"]) if by_source else None,
        "n_images": pooled["n_images"],
        "train_s": round(sum(t["train"] for t in times)),
        "predict_s": round(sum(t["predict"] for t in times)),
        "thresholds": thresholds,
    }
    (runs / name / "row.json").write_text(json.dumps(row, indent=2))
    return row


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def main() -> int:
    from pipeline.method.grid_search import BALANCE_COLUMNS

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", default="params.yaml", help="base parameter file")
    parser.add_argument("--runs", default="runs", help="output folder, one sub-folder per variant")
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--folds", type=int, nargs="+", default=None,
                        help="validation folds (default: data.val_fold of the base parameters)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override for every variant, e.g. train.epochs=3 (value parsed as YAML)")
    parser.add_argument("--marker", type=float, nargs="+", default=[0.7, 0.8, 0.85, 0.9, 0.95],
                        help="marker thresholds to tune over")
    parser.add_argument("--mask", type=float, nargs="+", default=[0.7, 0.8, 0.9, 0.93, 0.95, 0.97, 0.98, 0.99],
                        help="mask thresholds to tune over")
    parser.add_argument("--flood", nargs="+", default=["probability"], choices=("probability", "distance"))
    parser.add_argument("--relative", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.3],
                        help="min_relative_size values to tune over")
    parser.add_argument("--object", type=float, nargs="+", default=[0.0],
                        help="object_threshold values to tune over (default: %(default)s)")
    parser.add_argument("--stained-mask", type=float, nargs="+", default=None,
                        help="stained_mask_threshold values to tune over (default: the base's)")
    parser.add_argument("--stained-object", type=float, nargs="+", default=None,
                        help="stained_object_threshold values to tune over (default: the base's)")
    parser.add_argument("--balance", choices=tuple(BALANCE_COLUMNS), default="image",
                        help="tuning objective, as `nuclei tune --balance` (default: %(default)s)")
    parser.add_argument("--reuse", action="store_true", help="keep folds already trained and predicted")
    args = parser.parse_args()
    base = yaml.safe_load(Path(args.base).read_text())
    extra = {}  # applied after each variant's own overrides
    for item in args.set:
        key, _, value = item.partition("=")
        extra[key] = yaml.safe_load(value)
    folds = args.folds if args.folds is not None else [int(extra.get("data.val_fold", base["data"].get("val_fold", 0)))]
    grid = {"marker_threshold": args.marker, "mask_threshold": args.mask, "flood": args.flood,
            "min_relative_size": args.relative, "object_threshold": args.object}
    for key, values in (("stained_mask_threshold", args.stained_mask), ("stained_object_threshold", args.stained_object)):
        if values:
            grid[key] = values
    runs = Path(args.runs)
    rows = []
    for name in args.variants:
        row = run_variant(name, base, VARIANTS[name] | extra, runs, folds, grid, args.reuse, args.balance)
        rows.append(row)
        print(json.dumps(row), flush=True)
    hardware = f"{platform.machine()}, {len(os.sched_getaffinity(0))} CPU cores"
    split = extra.get("data.split", base["data"].get("split", "stratified"))
    print(f"\n{split} folds {' '.join(map(str, folds))}, {hardware}\n")
    print("| variant | CV DSB2018 | per fold | per experiment | AP@0.5 | F1@0.5 | count error | train s "
          "| marker/mask/flood/relative/object |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        t = r["thresholds"]
        per_fold = " ".join(f"{s:.3f}" for s in r["folds"].values())
        print(f"| {r['variant']} | {r['cv_dsb']:.4f} | {per_fold} | {r['experiment_dsb']:.4f} "
              f"({r['n_experiments']}) | {r['ap50']:.4f} | {r['f1_50']:.4f} | "
              f"{r['count_error']:.3f} | {r['train_s']} | "
              f"{t['marker_threshold']}/{t['mask_threshold']}/{t['flood']}/{t['min_relative_size']}/"
              f"{t['object_threshold']} |")
    sources = sorted({name for r in rows for name in r["by_source"]})
    if len(sources) > 1:  # several labelled sources: score / AP@0.5 / median counting error of each
        print(f"\n| variant | mean over sources | {' | '.join(sources)} |")
        print("|---|---|" + "---|" * len(sources))
        for r in rows:
            cells = [(f"{m['dsb_score']:.3f} / {m['ap50']:.2f} / {m['median_count_error']:.2f}"
                      if (m := r["by_source"].get(name)) else "") for name in sources]
            print(f"| {r['variant']} | {r['source_dsb']:.4f} | {' | '.join(cells)} |")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
