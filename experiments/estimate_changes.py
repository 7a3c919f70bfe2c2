"""Which images does a change to the diameter estimate move, and how do they score? (issue 90)

Question: a change to :class:`pipeline.model.diameter.DiameterEstimator` should move only the
images it is meant for. Each labelled image of ``--params``' sources (grouped folds ``--folds``)
is estimated as ``nuclei segment`` estimates it (normalisation, image type, routed network) twice:
with the working tree's estimator and with the one of git revision ``--ref`` (its
``pipeline/model/diameter.py``, every method of ``DiameterEstimator`` swapped in). The images whose
estimate differs are segmented at both diameters and scored (DSB2018 score) against their labels.
Session 62 judged "an unconfirmed prior with one or two objects gives way to a surer search" with
it (docs/decisions.md).

Usage::

    python -m experiments.estimate_changes --ref REV [--params evaluation/sources.yaml]
        [--folds 1 2 3 4] [--sources S ...] [--every N] [--model pipeline/shipped/model] [--out changed.csv]

Prints one line per changed image (id, true median diameter, both estimates, both scores) and a
summary: images, changed, better, worse. About 2 s per image on one core (two estimates).
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
from contextlib import contextmanager
from pathlib import Path

import pandas as pd

from benchmarks.bench_sources import read_original
from pipeline.config.params import load_config
from pipeline.data.folds import read_index
from pipeline.method.image_types import image_type_of
from pipeline.method.metrics import image_metrics
from pipeline.method.scale import median_diameter
from pipeline.model import diameter
from pipeline.model.segmenter import Segmenter
from pipeline.progress import progress

ROOT = Path(__file__).resolve().parents[1]
ESTIMATOR = "pipeline/model/diameter.py"


def estimator_at(ref: str) -> type:
    """``DiameterEstimator`` as git revision ``ref`` of this repository defines it."""
    source = subprocess.run(["git", "show", f"{ref}:{ESTIMATOR}"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout
    with tempfile.TemporaryDirectory() as folder:  # the module runs from memory once loaded
        path = Path(folder) / "diameter_at_ref.py"
        path.write_text(source, encoding="utf-8")
        spec = importlib.util.spec_from_file_location("diameter_at_ref", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    return module.DiameterEstimator


@contextmanager
def estimator_swapped(old: type):
    """Every function of ``old``'s class body in place of the working tree's ``DiameterEstimator``'s."""
    cls = diameter.DiameterEstimator
    names = [n for n, v in vars(old).items() if callable(v) and not n.startswith("__")]
    kept = {n: vars(cls).get(n) for n in names}
    for n in names:
        setattr(cls, n, vars(old)[n])
    try:
        yield
    finally:
        for n, v in kept.items():
            if v is None:
                delattr(cls, n)
            else:
                setattr(cls, n, v)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ref", required=True, help="git revision whose estimator is compared (e.g. HEAD)")
    parser.add_argument("--params", default=str(ROOT / "evaluation/sources.yaml"))
    parser.add_argument("--folds", type=int, nargs="+", default=[1, 2, 3, 4], help="grouped folds (default: 1-4)")
    parser.add_argument("--sources", nargs="*", help="sources of --params (default: all)")
    parser.add_argument("--every", type=int, default=1, help="every n-th image of each source")
    parser.add_argument("--model", default=str(ROOT / "pipeline/shipped/model"))
    parser.add_argument("--out", type=Path, help="write the changed images' table here")
    args = parser.parse_args(argv)
    data = load_config(args.params).data
    old = estimator_at(args.ref)
    index = read_index(data.prepared)
    index = index[index.group_fold.isin(args.folds) & index.source.isin(args.sources or list(data.sources))]
    index = pd.concat([g.iloc[:: args.every] for _, g in index.groupby("source", sort=False)])
    segmenter = Segmenter.from_model_dir(args.model)
    rows = []
    for sample in progress(list(index.itertuples()), desc="estimates"):
        spec = data.sources[sample.source]
        image, true = read_original(Path(spec["root"]), spec["layout"], sample.id.split("/", 1)[1])
        normalized = segmenter.normalize(image)
        image_type = image_type_of(normalized)
        routed = segmenter.network_for(image_type)
        now = routed.scale_for(normalized, None, image_type)[0]
        with estimator_swapped(old):
            before = routed.scale_for(normalized, None, image_type)[0]
        if now == before:
            continue
        scores = [image_metrics(true, segmenter.segment(image, diameter=d).labels)["dsb_score"] for d in (before, now)]
        rows.append({"id": sample.id, "image_type": image_type, "true_diameter": median_diameter(true),
                     "before": before, "now": now, "score_before": scores[0], "score_now": scores[1]})
        print(" ".join(f"{k} {v:.3f}" if isinstance(v, float) else f"{k} {v}" for k, v in rows[-1].items()), flush=True)
    table = pd.DataFrame(rows, columns=["id", "image_type", "true_diameter", "before", "now", "score_before",
                                        "score_now"])
    better = int((table.score_now > table.score_before).sum())
    worse = int((table.score_now < table.score_before).sum())
    print(f"{len(index)} images, {len(table)} estimates changed: {better} better, {worse} worse")
    if args.out:
        table.to_csv(args.out, index=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
