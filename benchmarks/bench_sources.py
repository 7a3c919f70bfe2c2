"""Every labelled source segmented as ``nuclei segment`` does: per source, DSB2018 score, AP@0.5,
median counting error, predicted / true nuclei and their ratio (the median counting error hides
whether nuclei are split or merged: a ratio over 1 is nuclei cut into pieces), and the image types
the Segmenter gave.

Usage::

    python -m benchmarks.bench_sources [--model pipeline/shipped/model] [--extra ../shared/extra]
        [--sources tissue_fluo_e2f he_cpm15 ...] [--every 1] [--tta auto] [--estimator blob|search]
        [--held-out params.yaml] [--out per_image.csv]

A model that never trained on a source gives its leave-one-source-out figure (the shipped model has
seen none of ``../shared/extra``). A model trained on them is scored on its validation fold only:
``--held-out`` names its training parameters (``data.prepared``, ``data.split``, ``data.val_fold``);
the sources are then that file's ``data.sources``, DSB2018's Kaggle layout included. Otherwise they
are the ``folder`` layouts (``images/`` + ``labels/``) of ``--extra``. Two models' ``--out`` tables
compare image by image with ``scripts/paired_diff.py``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.data.kaggle import read_kaggle_labels
from pipeline.data.sources import image_file, list_sample_ids, read_label_image
from pipeline.files.io import read_image
from pipeline.method.metrics import group_summary, image_metrics
from pipeline.method.scale import median_diameter
from pipeline.model.segmenter import Segmenter
from pipeline.progress import progress

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "pipeline/shipped/model"))
    parser.add_argument("--extra", type=Path, default=ROOT.parent / "shared/extra")
    parser.add_argument("--sources", nargs="*", help="source folders of --extra, or sources of --held-out (default: all)")
    parser.add_argument("--every", type=int, default=1, help="every n-th image of each source")
    parser.add_argument("--tta", default="auto", help="test-time augmentation, as segment.tta")
    parser.add_argument("--estimator", choices=("blob", "search"), help="diameter estimate (default: the Segmenter's)")
    parser.add_argument("--held-out", type=Path, metavar="PARAMS",
                        help="only the validation fold of the model trained with these parameters")
    parser.add_argument("--out", type=Path, help="write the per-image table here")
    args = parser.parse_args()
    held_out = None
    if args.held_out:
        from pipeline.config.params import load_config
        from pipeline.data.folds import validation_index

        data = load_config(args.held_out).data
        held_out = set(validation_index(data)["id"])
        roots = {name: (Path(spec["root"]), spec["layout"]) for name, spec in data.sources.items()}
    else:
        roots = {p.name: (p, "folder") for p in sorted(args.extra.iterdir()) if (p / "images").is_dir()}
    sources = args.sources or list(roots)
    segmenter = Segmenter.from_model_dir(args.model, tta=args.tta)
    segmenter.estimator = args.estimator or segmenter.estimator
    rows, start = [], time.perf_counter()
    for source in sources:
        root, layout = roots[source]
        ids = [i for i in list_sample_ids(root, layout) if held_out is None or f"{source}/{i}" in held_out]
        for sample_id in progress(ids[:: args.every], desc=source):
            image, true = read_original(root, layout, sample_id)
            result = segmenter.segment(image)
            m = image_metrics(true, result.labels)
            rows.append({"source": source, "id": f"{source}/{sample_id}", "image_type": result.image_type,
                         "diameter": result.diameter, "true_diameter": median_diameter(true),
                         **{k: m[k] for k in ("dsb_score", "ap50", "count_error", "n_true", "n_pred")}})
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    print(f"model {args.model}, tta {args.tta}, estimator {segmenter.estimator}, {len(table)} images, {time.perf_counter() - start:.0f} s")
    print(f"{'source':<16} {'n':>3} {'DSB2018':>8} {'AP@0.5':>7} {'count err':>9} {'pred/true':>13}  "
          f"{'diam est/true':>13}  types")
    for s in group_summary(table, "source").itertuples():
        g = table[table.source == s.Index]
        ratio = np.median(g.diameter / g.true_diameter) if g.diameter.notna().any() else np.nan
        types = ", ".join(f"{k} {v}" for k, v in g.image_type.value_counts().items())
        print(f"{s.Index:<16} {s.n_images:>3} {s.dsb_score:8.3f} {s.ap50:7.3f} "
              f"{s.count_error:9.3f} {s.n_pred:>6}/{s.n_true:<6} {s.pred_per_true:5.2f}  {ratio:13.2f}  {types}")


def read_original(root: Path, layout: str, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A labelled sample as ``nuclei segment`` reads its image (the file itself, any bit depth) and its
    labels (int32, shape (H, W))."""
    image = read_image(image_file(root, layout, sample_id))
    if layout == "kaggle":
        return image, read_kaggle_labels(root / sample_id, image.shape[:2])
    return image, read_label_image(next((root / "labels").glob(f"{sample_id}.*")))


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
