"""How much ``nuclei finetune`` lifts a source the base model never saw, and what it forgets.

The shipped model (``pipeline/shipped/model``) was trained on DSB2018 stage1_train only, so it is the
leave-one-source-out base for ``/work/shared/extra/tissue_fluo_e2f`` (57 grey 512² images of dense
tissue nuclei). Fine-tune on 1, 3 and 10 of its images (one per mouse and marker: no test image
shares a mouse and marker with a training image), score a fixed test set of the other mice, before
and after: DSB2018 score, AP@0.5, counting error, at the diameter ``segment`` estimates and at the
exact one; and the score on DSB2018 images (not among the forgetting guard's), to show what
fine-tuning forgot. ``--guard-ablation N`` repeats a size without the forgetting guard (nor its
checks), ``--unbounded N`` with the guard but no bound on forgetting; ``--lr`` sets the
fine-tuning learning rate (an ablation). ``--base`` names another leave-one-source-out base (a model
that never trained on the source), for when the shipped model has.

    python -m benchmarks.bench_finetune --sizes 1 3 10 --minutes 6 --unbounded 3 --test 12

Prints one table; the CPU (cores, bf16 flags, load) is printed first: wall times depend on it.
"""

from __future__ import annotations

import argparse
import os
import re
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.arguments import number
from pipeline.files.io import read_image, read_labels
from pipeline.method.metrics import image_metrics
from pipeline.method.scale import median_diameter
from pipeline.model.segmenter import Segmenter
from pipeline.training.finetune import finetune
from pipeline.training.guard import guard_ids

ROOT = Path(__file__).resolve().parents[1]

#: DSB2018 stage1_train beside the checkout: the images of its held-out evaluation set.
DSB_ROOT = ROOT.parent / "shared" / "dsb2018" / "stage1_train"

SOURCE = Path("/work/shared/extra/tissue_fluo_e2f")
#: Training pool (one image per mouse and marker); the test images are the other mice-and-markers'.
POOL = 10


def split_source(n_train: int = 10, n_test: int = 16):
    """(training pool, test) image stems: one image per mouse-and-marker for training, the test
    images from the mice-and-markers not in the pool."""
    stems = sorted(p.stem for p in (SOURCE / "labels").glob("*.tif"))
    groups = defaultdict(list)
    for s in stems:
        groups[re.sub(r"_image\d+$", "", s)].append(s)
    keys = sorted(groups)
    pool_keys = keys[::2][:n_train]
    pool = [groups[k][0] for k in pool_keys]
    test = [s for k in keys if k not in pool_keys for s in groups[k]]
    return pool, test[:: max(1, len(test) // n_test)][:n_test]


def load(stem: str):
    return read_image(SOURCE / "images" / f"{stem}.png"), read_labels(SOURCE / "labels" / f"{stem}.tif")


def dsb_eval_set(n: int = 8):
    """``n`` DSB2018 images spread over stage1_train, none of the guard's."""
    from pipeline.data.kaggle import list_kaggle_ids, read_kaggle_sample

    used = {*guard_ids(DSB_ROOT), *guard_ids(DSB_ROOT, check=True)}
    ids = [i for i in list_kaggle_ids(DSB_ROOT) if i not in used]
    chosen = [ids[int(k)] for k in np.linspace(3, len(ids) - 4, n)]
    return [tuple(a.astype(np.float32) / 255 if a.dtype == np.uint8 else a for a in read_kaggle_sample(DSB_ROOT / i))
            for i in chosen]


def score(model: Path, samples, exact: bool) -> dict:
    seg = Segmenter.from_model_dir(model, device="cpu", tta="none")  # as `nuclei segment`
    rows = []
    for image, labels in samples:
        pred = seg.segment(image, diameter=median_diameter(labels) if exact else None).labels
        rows.append(image_metrics(labels, pred))
    df = pd.DataFrame(rows)
    return {"dsb": df.dsb_score.mean(), "ap50": df.ap50.mean(), "count_err": df.count_error.median()}


def diameter_policies(models: list[Path], samples) -> pd.DataFrame:
    """DSB2018 score of fine-tuned models on ``samples`` with the diameter each policy gives:
    ``segment`` (the estimate, or the model's user_diameter when the estimate is missing or over
    USER_DIAMETER_OCTAVES away), ``estimate`` (the estimate alone; the canonical diameter when
    missing), ``user`` (always the user diameter), ``exact`` (from the true labels)."""
    rows = []
    for model in models:
        seg = Segmenter.from_model_dir(model, device="cpu", tta="none")
        user = seg.user_diameter
        row = {"model": model.name, "user_diameter": user}
        for policy in ("segment", "estimate", "user", "exact"):
            seg.config = seg.config.replace(user_diameter=None if policy == "estimate" else user)
            given = {"user": lambda lab, d=user: d, "exact": median_diameter}.get(policy, lambda lab: None)
            row[policy] = np.mean([image_metrics(lab, seg.segment(im, diameter=given(lab)).labels)["dsb_score"]
                                   for im, lab in samples])
        rows.append(row)
    return pd.DataFrame(rows)


def cpu_line() -> str:
    from pipeline.model.runtime import cpu_flags

    bf16 = [f for f in ("avx512_bf16", "amx_bf16") if f in cpu_flags()]
    return (f"nproc {os.cpu_count()}, bf16 flags: {', '.join(bf16) or 'none'}, "
            f"load average {' '.join(f'{x:.1f}' for x in os.getloadavg())}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 3, 10])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--guard-ablation", type=int, nargs="*", default=[], metavar="N",
                        help="also fine-tune on N images without the forgetting guard")
    parser.add_argument("--max-forgetting", type=number(at_least=0, none=True), default=0.03,
                        help="as nuclei finetune's (a number or 'none')")
    parser.add_argument("--unbounded", type=int, nargs="*", default=[], metavar="N",
                        help="also fine-tune on N images with no bound on forgetting")
    parser.add_argument("--base", type=Path, default=ROOT / "pipeline" / "shipped" / "model",
                        help="the model to fine-tune (it must never have trained on the source)")
    parser.add_argument("--lr", type=float, default=None, help="fine-tuning learning rate (default: finetune.LR)")
    parser.add_argument("--test", type=int, default=16, help="test images of the source")
    parser.add_argument("--out", default=None, help="keep the models here")
    parser.add_argument("--diameters", nargs="+", type=Path, default=None, metavar="MODEL_DIR",
                        help="only compare the diameter policies of these fine-tuned models on the test images")
    args = parser.parse_args()
    print(cpu_line(), flush=True)
    if args.lr:
        import pipeline.training.finetune

        pipeline.training.finetune.LR = args.lr
    pool, test_stems = split_source(max(POOL, *args.sizes), args.test)  # the same test set whatever --sizes
    test = [load(s) for s in test_stems]
    if args.diameters:
        table = diameter_policies(args.diameters, test)
        print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
        return 0
    dsb = dsb_eval_set() if DSB_ROOT.is_dir() else []
    base = args.base
    out = Path(args.out or tempfile.mkdtemp(prefix="bench_finetune_"))
    rows = [{"model": "base", "images": 0, **{f"est_{k}": v for k, v in score(base, test, False).items()},
             **{f"exact_{k}": v for k, v in score(base, test, True).items()},
             "dsb2018": score(base, dsb, True)["dsb"] if dsb else np.nan}]
    bound = args.max_forgetting
    runs = ([(n, "auto", bound, "") for n in args.sizes] + [(n, None, None, "-noguard") for n in args.guard_ablation]
            + [(n, "auto", None, "-unbounded") for n in args.unbounded])
    for n, guard, max_forgetting, suffix in runs:
        name = f"ft{n}{suffix}"
        images, labels = zip(*(load(s) for s in pool[:n]), strict=True)
        t0, c0 = time.perf_counter(), time.process_time()
        model = finetune(list(images), [lab for lab in labels], base=base, out=out / name, minutes=args.minutes, force=True,
                         guard=guard, max_forgetting=max_forgetting, log=lambda m, name=name: print(f"  {name}: {m}", flush=True))
        wall, cpu = time.perf_counter() - t0, time.process_time() - c0
        est, exact = score(model, test, False), score(model, test, True)
        rows.append({"model": name, "images": n, **{f"est_{k}": v for k, v in est.items()},
                     **{f"exact_{k}": v for k, v in exact.items()},
                     "dsb2018": score(model, dsb, True)["dsb"] if dsb else np.nan,
                     "wall_min": wall / 60, "cpu_min": cpu / 60, "load": os.getloadavg()[0]})
        print(pd.DataFrame(rows[-1:]).to_string(index=False, float_format=lambda x: f"{x:.3f}"), flush=True)
    table = pd.DataFrame(rows)
    print(f"\n{SOURCE.name}: {len(test)} test images; DSB2018: {len(dsb)} images not in the guard; {cpu_line()}")
    print(table.to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
