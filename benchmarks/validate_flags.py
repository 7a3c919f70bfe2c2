"""How far ``counts.csv``'s ``flag`` and ``confidence`` and ``nuclei.csv``'s per-nucleus
``confidence`` can be trusted, on every labelled image of grouped fold 0 of every source of
``evaluation/sources.yaml`` (``--folds all``: every fold), each segmented as ``nuclei segment`` does.

A bad image is one whose count is off by more than 25 % or whose DSB2018 score is under 0.30. Per
source and pooled: images, bad, flagged bad (recall) and flagged good (false alarms), today's flag
(``baseline``: bright-field, low confidence) beside the flag with the named signals
(:mod:`pipeline.method.trust`); the AUC of ``confidence`` (bad vs good) and of a score fitted on the
signals (logistic, fitted on folds 1-4 and scored on fold 0 when they were run, and fitted on the other
sources for each source left out); the per-nucleus confidence's AUC (matched at IoU ≥ 0.5 vs not); the
diameter table (estimate within 25 % of the true median diameter; every ``tissue_fluo_e2f`` image
listed); the time per image with and without the scale probes.

Usage::

    python -m benchmarks.validate_flags [--params evaluation/sources.yaml] [--folds 0|all]
        [--sources dsb2018 ...] [--every 1] [--cache DIR] [--out per_image.csv] [--small]

``--cache`` keeps each image's segmentation (labels, confidences, signals) so that a rerun only
recomputes the image signals (``--resignal``) and the tables. ``--small``: 2 images of 2 sources (CI).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from benchmarks.bench_sources import read_original
from pipeline.method.metrics import _iou, image_metrics, overlaps
from pipeline.method.scale import median_diameter
from pipeline.method.trust import PROBE_FACTORS, image_signals, scale_signals
from pipeline.model.segmenter import Segmenter, flag_of
from pipeline.progress import progress

ROOT = Path(__file__).resolve().parents[1]
#: A bad image: count off by more than this fraction, or a DSB2018 score under BAD_SCORE.
BAD_COUNT, BAD_SCORE = 0.25, 0.30
#: The signals a fitted score may use (NaN → 0 after the flags' sense: absent = not over).
FEATURES = ("confidence", "larger_scale", "smaller_scale", "scale_drift", "fragmented", "uncovered", "saturated",
            "blurred")


def main() -> None:
    args = _arguments()
    segmenter = Segmenter.from_model_dir(args.model, tta=args.tta)
    ids = _images(args)
    if args.cached_only and args.cache:
        ids = [i for i in ids if (args.cache / f"{i[0]}/{i[1]}.npz").exists()]
    rows, nuclei = [], []
    for source, sample_id, root, layout, fold in progress(ids, desc="images"):
        image, true = read_original(root, layout, sample_id)
        row, per_nucleus = _one_image(segmenter, image, true, args, f"{source}/{sample_id}")
        rows.append({"source": source, "id": f"{source}/{sample_id}", "fold": fold, **row})
        nuclei.append(per_nucleus.assign(source=source, fold=fold))
    table, nuclei = pd.DataFrame(rows), pd.concat(nuclei, ignore_index=True)
    table["bad"] = (table.count_error > BAD_COUNT) | (table.dsb_score < BAD_SCORE)
    if args.out:
        table.to_csv(args.out, index=False)
    _report(table, nuclei, args)
    if args.timing:
        _timing(segmenter, ids, args.timing)


def _arguments() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(ROOT / "pipeline/shipped/model"))
    parser.add_argument("--params", type=Path, default=ROOT / "evaluation/sources.yaml")
    parser.add_argument("--folds", choices=("0", "all", "others"), default="0")
    parser.add_argument("--sources", nargs="*")
    parser.add_argument("--every", type=int, default=1, help="every n-th image of folds 1-4 (fold 0: all)")
    parser.add_argument("--every0", type=int, default=1, help="every n-th image of fold 0 (a quick look)")
    parser.add_argument("--tta", default="auto")
    parser.add_argument("--cache", type=Path, help="folder keeping each image's segmentation")
    parser.add_argument("--resignal", action="store_true", help="recompute the image signals of cached images")
    parser.add_argument("--cached-only", action="store_true", help="only the images in --cache (a run under way)")
    parser.add_argument("--out", type=Path, help="write the per-image table here")
    parser.add_argument("--small", action="store_true", help="2 images of 2 sources (CI)")
    parser.add_argument("--timing", type=int, default=0, metavar="N",
                        help="also time N images of each source segmented with and without the trust signals")
    args = parser.parse_args()
    if args.small:
        args.sources, args.every = args.sources or ["fluo_ctc", "he_cpm15"], 1
    return args


def _images(args) -> list[tuple[str, str, Path, str, int]]:
    """(source, sample id, root, layout, grouped fold) of the images to run."""
    from pipeline.config.params import load_config
    from pipeline.data.folds import read_index

    data = load_config(args.params).data
    if args.small and not (ROOT / data.prepared / "index.csv").exists():
        return _first_images(data, args.sources)
    index = read_index(data.prepared, sources=list(data.sources))
    out = []
    for name, spec in data.sources.items():
        if args.sources and name not in args.sources:
            continue
        rows = index[index.id.str.startswith(f"{name}/")]
        fold0, others = rows[rows.group_fold == 0].iloc[:: args.every0], rows[rows.group_fold != 0].iloc[:: args.every]
        rows = {"0": fold0, "others": others}.get(args.folds, pd.concat([fold0, others]))
        rows = rows.iloc[:2] if args.small else rows
        root = (ROOT / spec["root"]).resolve()  # relative to the repository root, as nuclei prepare reads it
        out += [(name, i.split("/", 1)[1], root, spec["layout"], int(f)) for i, f in zip(rows.id, rows.group_fold, strict=True)]
    return out


def _first_images(data, sources: list[str]) -> list[tuple[str, str, Path, str, int]]:
    """``--small`` without a prepared index (a clean checkout, CI): the first 2 images of each of
    ``sources``, whatever their fold (counted as fold 0; said in one line)."""
    from pipeline.data.sources import list_sample_ids

    print(f"{data.prepared}/index.csv not found: the first 2 images of each source, whatever their fold")
    out = []
    for name in sources:
        spec = data.sources[name]
        root = (ROOT / spec["root"]).resolve()
        out += [(name, sample_id, root, spec["layout"], 0) for sample_id in list_sample_ids(root, spec["layout"])[:2]]
    return out


def _segment_cached(segmenter: Segmenter, image: np.ndarray, args, key: str) -> dict:
    """The segmentation's fields as plain values (labels, nucleus confidences, signals, seconds),
    from ``--cache`` when there."""
    path = args.cache / f"{key}.npz" if args.cache else None
    if path is not None and path.exists():
        stored = np.load(path, allow_pickle=False)
        return {"labels": stored["labels"], "nucleus_confidence": stored["nucleus_confidence"],
                **json.loads(str(stored["fields"]))}
    start = time.perf_counter()
    result = segmenter.segment(image)
    seconds = time.perf_counter() - start
    fields = {"diameter": result.diameter, "estimated": result.estimated, "confidence": result.confidence,
              "image_type": result.image_type, "signals": {k: float(v) for k, v in (result.signals or {}).items()},
              "seconds": seconds}
    made = {"labels": result.labels, "nucleus_confidence": result.nucleus_confidence, **fields}
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(path, labels=result.labels, fields=json.dumps(fields),
                            nucleus_confidence=np.asarray(result.nucleus_confidence, np.float32))
    return made


def _one_image(segmenter: Segmenter, image: np.ndarray, true: np.ndarray, args, key: str):
    """One image's row and its nuclei's (confidence, matched) table."""
    made = _segment_cached(segmenter, image, args, key)
    labels, signals = made["labels"], dict(made["signals"])
    found = median_diameter(labels)
    if args.resignal and made["image_type"] != "brightfield" and np.isfinite(found):
        signals |= image_signals(segmenter.normalize(image), labels, found, made["image_type"])
    if args.resignal and made["diameter"]:  # the scale signals again, from the probes kept
        probes = {f: (signals.get(f"probe_{f:g}_diameter"), signals[f"probe_{f:g}_confidence"],
                      int(signals[f"probe_{f:g}_count"])) for f in PROBE_FACTORS if f"probe_{f:g}_confidence" in signals}
        if probes:
            signals |= scale_signals(probes, made["confidence"], made["diameter"])
    m = image_metrics(true, labels)
    inter, true_area, pred_area = overlaps(true, labels)
    ids = np.unique(labels[labels > 0])
    matched = (_iou(inter, true_area, pred_area) >= 0.5).any(axis=0) if inter.size else np.zeros(ids.size, bool)
    conf = np.asarray(made["nucleus_confidence"], np.float64)
    per_nucleus = pd.DataFrame({"confidence": conf[ids] if ids.size else [], "matched": matched})
    args_flag = (made["image_type"], made["confidence"], made["estimated"], made["diameter"], labels.shape)
    row = {"image_type": made["image_type"], "n_true": m["n_true"], "n_pred": m["n_pred"],
           "count_error": m["count_error"], "dsb_score": m["dsb_score"], "ap50": m["ap50"],
           "confidence": made["confidence"], "diameter": made["diameter"], "true_diameter": median_diameter(true),
           "seconds": made["seconds"], "flag_baseline": flag_of(*args_flag),
           "flag": flag_of(*args_flag, signals=signals), **{k: signals.get(k, np.nan) for k in signals}}
    return row, per_nucleus


def _auc(score: np.ndarray, positive: np.ndarray) -> float:
    """AUC of ``score`` ranking the positives above the rest (NaN: one class only)."""
    from sklearn.metrics import roc_auc_score

    keep = np.isfinite(np.asarray(score, float))
    positive, score = np.asarray(positive, bool)[keep], np.asarray(score, float)[keep]
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, score))


def _design(table: pd.DataFrame) -> np.ndarray:
    """The fitted score's inputs: :data:`FEATURES`, absent signals at their 'not over' value."""
    fill = {"larger_scale": -0.3, "smaller_scale": -0.3, "scale_drift": 0.0, "fragmented": 0.0, "uncovered": 0.0,
            "saturated": 0.0, "blurred": 0.0}
    cols = [table[c].astype(float).fillna(fill.get(c, 0.0)) if c in table else pd.Series(fill.get(c, 0.0), table.index)
            for c in FEATURES]
    return np.column_stack([np.clip(c.to_numpy(), -5, 50) for c in cols])


def fitted_badness(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """P(bad) of ``test``'s images by a logistic regression on :func:`_design` fitted on ``train``."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    if train.bad.nunique() < 2:
        return np.full(len(test), np.nan)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=0.3, class_weight="balanced", max_iter=1000))
    model.fit(_design(train), train.bad.to_numpy())
    return model.predict_proba(_design(test))[:, 1]


def _flag_rows(table: pd.DataFrame, nuclei: pd.DataFrame, view: str) -> pd.DataFrame:
    """Per source and pooled: images, bad, recall and false alarms of both flags, the AUCs."""
    rows = []
    for name, g in [*table.groupby("source"), ("pooled", table)]:
        bad, nn = g.bad.to_numpy(), nuclei[nuclei.source == name] if name != "pooled" else nuclei
        row = {"view": view, "source": name, "images": len(g), "bad": int(bad.sum())}
        for col in ("flag_baseline", "flag"):
            flagged = g[col].fillna("").astype(bool).to_numpy()
            row[f"{col}:recall"] = flagged[bad].mean() if bad.any() else np.nan
            row[f"{col}:false"] = flagged[~bad].mean() if (~bad).any() else np.nan
        row["auc_confidence"] = _auc(-g.confidence.to_numpy(), bad)
        if "fitted" in g:
            row["auc_fitted"] = _auc(g.fitted.to_numpy(), bad)
        row["auc_nucleus"] = _auc(nn.confidence.fillna(0).to_numpy(), nn.matched.to_numpy())
        rows.append(row)
    return pd.DataFrame(rows)


def _report(table: pd.DataFrame, nuclei: pd.DataFrame, args) -> None:
    has_fold0 = bool((table.fold == 0).any())  # else --folds others: folds 1-4 reported as they are
    fold0 = table[table.fold == 0].copy() if has_fold0 else table.copy()
    n0 = nuclei[nuclei.fold == 0] if has_fold0 else nuclei
    if has_fold0 and (table.fold != 0).any():
        fold0["fitted"] = fitted_badness(table[table.fold != 0], fold0)
    loso = fold0.copy()
    for source in loso.source.unique():
        mine = loso.source == source
        loso.loc[mine, "fitted"] = fitted_badness(fold0[~mine], fold0[mine])
    pd.set_option("display.width", 200, "display.max_columns", 30, "display.max_rows", 200)
    which = "fold 0" if has_fold0 else "folds 1-4 (--folds others: no fold-0 view)"
    print(f"model {args.model}: {len(fold0)} images of {which} ({len(table) - len(fold0)} of folds 1-4 besides), "
          f"{int(fold0.bad.sum())} bad (count off > {BAD_COUNT:.0%} or DSB2018 < {BAD_SCORE})")
    print("\nflags: baseline (today's: bright-field, low confidence) | flag (with the named signals)")
    views = [_flag_rows(loso, n0, "LOSO")] + ([_flag_rows(fold0, n0, "folds1-4")] if "fitted" in fold0 else [])
    print(pd.concat(views).round(3).to_string(index=False))
    print("\nwhich signal flags which image (fold 0): bad / good")
    for phrase_key in ("larger_scale", "smaller_scale", "scale_drift", "fragmented", "uncovered", "saturated", "blurred", "low confidence"):
        hit = fold0.flag.fillna("").str.contains(_phrase_word(phrase_key), regex=False)
        print(f"  {phrase_key:<15} {int((hit & fold0.bad).sum()):>3} / {int((hit & ~fold0.bad).sum()):>3}")
    print("\nseconds per image (with the scale probes):", f"{fold0.seconds.median():.2f} median, {fold0.seconds.sum():.0f} total")
    _diameter_table(fold0)


def _timing(segmenter: Segmenter, ids: list, n: int) -> None:
    """Seconds per image segmented without the trust signals (today's: no probes, no image signals),
    then with them, on ``n`` images per source."""
    import pipeline.model.segmenter as module

    factors, signals, rows = segmenter.probe_factors, module.image_signals, []
    for source in dict.fromkeys(i[0] for i in ids):
        for _, sample_id, root, layout, _ in [i for i in ids if i[0] == source][:n]:
            image, _ = read_original(root, layout, sample_id)
            times = []
            for probes in ((), factors):
                for network in (segmenter, *[r.get() for r in segmenter._networks.values()]):
                    network.probe_factors = probes
                module.image_signals = signals if probes else (lambda *a: {})
                start = time.perf_counter()
                segmenter.segment(image)
                times.append(time.perf_counter() - start)
            rows.append((source, *times))
    t = pd.DataFrame(rows, columns=["source", "without", "with"]).groupby("source").median()
    t["ratio"] = t["with"] / t["without"]
    print("\nseconds per image (median) without / with the trust signals\n" + t.round(2).to_string())


def _phrase_word(key: str) -> str:
    from pipeline.method.trust import PHRASES

    return PHRASES.get(key, key)[:30]


def _diameter_table(table: pd.DataFrame) -> None:
    """The estimate against each image's true median diameter, per source; every tissue_fluo_e2f image."""
    t = table[table.diameter.notna() & table.true_diameter.notna()].copy()
    t["ratio"] = t.diameter / t.true_diameter
    t["within"] = (t.ratio - 1).abs() <= 0.25
    print("\ndiameter estimate vs true median diameter (fold 0)")
    print(t.groupby("source").agg(images=("ratio", "size"), within_25=("within", "mean"),
                                  median_ratio=("ratio", "median"), min_ratio=("ratio", "min"),
                                  max_ratio=("ratio", "max")).round(2).to_string())
    print(f"pooled: {t.within.mean():.3f} within 25 % ({int(t.within.sum())}/{len(t)})")
    e2f = t[t.source == "tissue_fluo_e2f"]
    if len(e2f):
        print(e2f[["id", "diameter", "true_diameter", "ratio", "n_pred", "n_true", "dsb_score", "flag"]].round(2).to_string(index=False))


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))

