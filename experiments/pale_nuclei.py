"""Large pale nuclei: cut into pieces by the watershed, or merged and missed by the network? (issue 90)

Question: the issue's breast images show vesicular nuclei cut into several pieces. Are large pale
nuclei split (by the scale, the marker threshold or the border channel), or is the count wrong for
another reason? Each image of one ``--set`` runs through the shipped model as ``nuclei segment``
runs it (:class:`pipeline.model.segmenter.Segmenter`: normalisation, image type, routed network and
its second pass, resize, ``--tta``), once at the estimated and once at the true median diameter;
the network's probabilities are cached under ``--cache`` (one ``.npz`` per image, reused by a
later run of the same set; another ``--model`` or ``--tta`` wants another folder) and
post-processed with the model's thresholds. Sets (folds are ``--params``' grouped folds; "folds
1-4" = all but its ``data.val_fold``):

- ``nuinsseg-large``: NuInsSeg images of folds 1-4 with a median true diameter over ``LARGE`` px
  and at least ``MIN_NUCLEI`` nuclei, the first ``PER_TISSUE`` of each tissue by id (34 images,
  18 tissues); read as ``nuclei segment`` reads them;
- ``monuseg-breast``: MoNuSeg 2018's breast images (TCGA sites ``BREAST_SITES``; 6 images);
- ``pale``: every ``PALE_EVERY``-th NuInsSeg image of folds 1-4 by id (34), cut to its centred
  ``CROP`` px and put through bench_robustness's ``pale`` condition
  (:func:`pipeline.training.shifts.shifted`, seed = its place in the set).

Each prediction and true nucleus is put in one category (:func:`categories`): matched (IoU > 0.5),
a fragment (unmatched, half or more inside one true nucleus), outside any nucleus; true nuclei
merged (unmatched, and one prediction holds ``MERGED`` of it and of another) or missed (under half
covered); split: a true nucleus covered by two or more predictions, each holding ``SPLIT`` of it
and lying mostly inside it. The result: no post-processing change (docs/decisions.md, "Large pale
nuclei: split by the watershed, or missed by the network?").

Usage::

    python -m experiments.pale_nuclei --set nuinsseg-large [--cache /tmp/pale_nuclei] [--images N | --every N]
        [--model pipeline/shipped/model] [--params evaluation/sources.yaml] [--tta none] [--threads 2]
        [--out per_image.csv]

Prints, at the estimated and at the true diameter: images, true nuclei, mean DSB2018 score,
predicted/true, split % of true nuclei, fragments, predictions outside any nucleus, true nuclei
merged and missed.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.bench_sources import read_original
from pipeline.config.params import TTA_MODES, load_config
from pipeline.data.folds import read_index
from pipeline.data.sources import list_sample_ids
from pipeline.files.io import load_npz, save_npz
from pipeline.method.metrics import image_metrics, overlaps
from pipeline.method.scale import median_diameter, resize_image, scale_factor, scaled_shape
from pipeline.method.watershed import postprocess_to_shape
from pipeline.model.segmenter import Segmenter, image_type_of
from pipeline.training.shifts import centre_crop, shifted

ROOT = Path(__file__).resolve().parents[1]
SETS = ("nuinsseg-large", "monuseg-breast", "pale")
#: nuinsseg-large: median true diameter (px) over which an image's nuclei are large, the fewest
#: nuclei an image needs, and the images taken per tissue (the first by id).
LARGE, MIN_NUCLEI, PER_TISSUE = 30.0, 15, 2
#: TCGA tissue source sites of MoNuSeg 2018's breast carcinoma images (BRCA).
BREAST_SITES = ("A7", "AR", "E2")
#: pale: every n-th NuInsSeg image of folds 1-4, cut to a centred window of this side (px).
PALE_EVERY, CROP = 16, 320
#: A true nucleus is split when two predictions each hold this share of it; merged when one
#: prediction holds this share of it and of another.
SPLIT, MERGED = 0.15, 0.3
COLUMNS = ("images", "n_true", "dsb_score", "pred_per_true", "split_pct", "fragment", "outside", "merged", "missed")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--set", choices=SETS, default="nuinsseg-large", help="the images (default: %(default)s)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "pale_nuclei",
                        help="folder for the probabilities, outside the repo (default: %(default)s)")
    parser.add_argument("--model", type=Path, default=ROOT / "pipeline/shipped/model")
    parser.add_argument("--params", type=Path, default=ROOT / "evaluation/sources.yaml",
                        help="sources, prepared data and grouped folds (default: %(default)s)")
    parser.add_argument("--tta", choices=TTA_MODES, default="none", help="test-time augmentation (default: %(default)s)")
    parser.add_argument("--images", type=int, default=None, help="only the first N images of the set")
    parser.add_argument("--every", type=int, default=1, help="every n-th image of the set")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=None, help="write the per-image table here (CSV)")


def select(name: str, data) -> list[tuple[str, str, int]]:
    """``(source, sample id, seed)`` of the images of set ``name``, in order (``data``: the
    :class:`pipeline.config.params.DataConfig` of ``--params``)."""
    if name == "monuseg-breast":
        root = Path(data.sources["he_monuseg2018_train"]["root"])
        ids = list_sample_ids(root, "folder")
        return [("he_monuseg2018_train", i, k) for k, i in enumerate(ids) if i.split("-")[1] in BREAST_SITES]
    index = read_index(data.prepared, ("id", "group", "group_fold", "median_diameter", "n_nuclei"),
                       sources=["he_nuinsseg"])
    index = index[index["group_fold"] != data.val_fold].sort_values("id")
    if name == "pale":
        picks = index["id"].iloc[::PALE_EVERY]
    else:
        large = index[(index["median_diameter"] > LARGE) & (index["n_nuclei"] >= MIN_NUCLEI)]
        picks = large.groupby("group", sort=False).head(PER_TISSUE)["id"]
    return [("he_nuinsseg", i.split("/", 1)[1], k) for k, i in enumerate(picks)]


def read_item(name: str, data, source: str, sample_id: str, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Image and true labels (int32 (H, W)) of one image of set ``name``."""
    if name != "pale":
        spec = data.sources[source]
        return read_original(Path(spec["root"]), spec["layout"], sample_id)
    prepared = load_npz(Path(data.prepared) / source / f"{sample_id}.npz")
    image, labels = centre_crop(prepared["image"], prepared["labels"], CROP)
    return shifted("pale", image, labels, seed=seed)


def probabilities(segmenter: Segmenter, x: np.ndarray, scale: float, image_type: str) -> tuple[np.ndarray, Segmenter]:
    """(C, h, w) float32 probabilities of a normalised image resized by ``scale`` and the network
    that gave them, as :meth:`Segmenter.segment` computes them for an image in one block."""
    first = segmenter.network_for(image_type)
    resized = resize_image(x, scaled_shape(x.shape[:2], scale))
    tta = first.tta_for(x.shape[:2], scale)
    probs = first.predictor.predict(resized, tta)
    routed = first.network_for_probs(probs, image_type)
    if routed is not first:
        probs = routed.predictor.predict(resized, tta)
    return probs, routed


def cached(path: Path, segmenter: Segmenter, image: np.ndarray, labels: np.ndarray) -> dict[str, np.ndarray]:
    """The cache entry of one image: probabilities (float16) at the estimated and at the true
    median diameter, their scales, the estimate, image type, route and true labels; computed once."""
    if path.exists():
        return load_npz(path)
    x = segmenter.normalize(image)
    image_type = image_type_of(x)
    first = segmenter.network_for(image_type)
    diameter, _, scale = first.scale_for(x, None, image_type)
    probs, routed = probabilities(segmenter, x, scale, image_type)
    true_scale = scale_factor(median_diameter(labels), first.config.diameter_for(image_type))
    probs_true, routed_true = probabilities(segmenter, x, true_scale, image_type)
    entry = {"probs": probs.astype(np.float16), "scale": np.float64(scale), "diameter": np.float64(diameter),
             "probs_true": probs_true.astype(np.float16), "scale_true": np.float64(true_scale),
             "image_type": np.str_(image_type), "route": np.str_(routed.route),
             "route_true": np.str_(routed_true.route), "labels": labels.astype(np.int32)}
    save_npz(path, **entry)
    return entry


def categories(true: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """Counts of each error category of two label images (int (H, W), 0 = background): predictions
    matched, fragments and outside any nucleus; true nuclei split, merged and missed."""
    inter, true_area, pred_area = overlaps(true, pred)
    inside = inter / np.maximum(pred_area, 1)[None, :]
    held = inter / np.maximum(true_area, 1)[:, None]
    iou = inter / np.maximum(true_area[:, None] + pred_area[None, :] - inter, 1)
    matched_pred, matched_true = (iou > 0.5).any(axis=0), (iou > 0.5).any(axis=1)
    most_inside = inside.max(axis=0, initial=0.0)
    big = (inter > 0) & (held >= MERGED)
    merging = big.sum(axis=0) >= 2
    split = ((inter > 0) & (held >= SPLIT) & (inside >= 0.5)).sum(axis=1) >= 2
    return {"n_true": len(true_area), "n_pred": len(pred_area), "matched": int(matched_pred.sum()),
            "split": int(split.sum()),
            "fragment": int((~matched_pred & (most_inside >= 0.5)).sum()),
            "outside": int((~matched_pred & (most_inside < 0.5)).sum()),
            "merged": int(((big & merging[None, :]).any(axis=1) & ~matched_true).sum()),
            "missed": int((~matched_true & (held.sum(axis=1, initial=0.0) < 0.5)).sum())}


def rows_of(entry: dict, networks: dict[str, Segmenter], image_id: str) -> list[dict]:
    """The per-image rows (estimated and true diameter) of one cache entry."""
    rows = []
    for diameter, suffix in (("estimated", ""), ("true", "_true")):
        network = networks[str(entry["route" + suffix])]
        labels = postprocess_to_shape(entry["probs" + suffix].astype(np.float32), network.head,
                                      entry["labels"].shape, float(entry["scale" + suffix]),
                                      str(entry["image_type"]), **network.thresholds)
        rows.append({"diameter": diameter, "id": image_id, "image_type": str(entry["image_type"]),
                     "scale": float(entry["scale" + suffix]),
                     "dsb_score": image_metrics(entry["labels"], labels)["dsb_score"],
                     **categories(entry["labels"], labels)})
    return rows


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per diameter (estimated, true) of :data:`COLUMNS`."""
    g = table.groupby("diameter", sort=False)
    out = g[["n_true", "n_pred", "split", "fragment", "outside", "merged", "missed"]].sum()
    out["images"], out["dsb_score"] = g.size(), g["dsb_score"].mean()
    out["pred_per_true"] = out["n_pred"] / out["n_true"]
    out["split_pct"] = 100 * out["split"] / out["n_true"]
    return out[list(COLUMNS)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args()
    from pipeline.model.runtime import set_threads

    set_threads(args.threads)
    data = load_config(args.params).data
    items = select(args.set, data)[:: args.every][: args.images]
    segmenter = Segmenter.from_model_dir(args.model, device="cpu", tta=args.tta)
    folder = args.cache / f"{args.set}-tta_{args.tta}"
    folder.mkdir(parents=True, exist_ok=True)
    networks = {segmenter.route: segmenter}
    rows, t0 = [], time.perf_counter()
    print(f"{args.set}: {len(items)} images; model {args.model}; tta {args.tta}; cache {folder}", flush=True)
    for source, sample_id, seed in items:
        entry = cached(folder / f"{source}__{sample_id}.npz", segmenter,
                       *read_item(args.set, data, source, sample_id, seed))
        for route in {str(entry["route"]), str(entry["route_true"])} - set(networks):
            networks[route] = segmenter._networks[route].get()  # a routed network, loaded once
        rows += rows_of(entry, networks, f"{source}/{sample_id}")
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    print(f"{time.perf_counter() - t0:.0f} s")
    print(summary(table).to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
