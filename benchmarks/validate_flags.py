"""How far ``counts.csv``'s ``flag`` and ``confidence`` and ``nuclei.csv``'s per-nucleus
``confidence`` can be trusted, on every labelled image of grouped fold 0 of every source of
``evaluation/sources.yaml`` (``--folds all``: every fold), each segmented as ``nuclei segment`` does.

A bad image is one whose count is off by more than 25 % or whose DSB2018 score is under 0.30. Per
source and pooled: images, bad, flagged bad (recall) and flagged good (false alarms), the
``baseline`` flag (bright-field, low confidence) beside the shipped one (and the named signals when
the count risk is high: :mod:`pipeline.method.trust`); the AUC of ``confidence`` (bad vs good) and
of the count risk refitted (on folds 1-4 and scored on fold 0 when they were run, and on the other
sources for each source left out); the per-nucleus confidence's AUC (matched at IoU ≥ 0.5 vs not); the
diameter table (estimate within 25 % of the true median diameter; every ``tissue_fluo_e2f`` image
listed); the time per image with and without the scale probes.

Usage::

    python -m benchmarks.validate_flags [--params evaluation/sources.yaml] [--folds 0|all]
        [--sources dsb2018 ...] [--every 1] [--cache DIR] [--out per_image.csv] [--small] [--fit]

``--cache`` keeps each image's segmentation (labels, confidences, signals) so that a rerun only
recomputes the image signals (``--resignal``) and the tables. ``--small``: 2 images of 2 sources (CI).
``--fit`` fits the weights of the count risk and of the per-nucleus confidence
(:data:`pipeline.method.trust.IMAGE_WEIGHTS`, :data:`~pipeline.method.trust.NUCLEUS_WEIGHTS`) on folds 1-4,
prints them, the count risk's recall and false alarms by threshold, and the AUCs on fold 0 and on
each source left out.
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
from pipeline.method.trust import (
    IMAGE_EVIDENCE,
    NUCLEUS_EVIDENCE,
    PROBE_FACTORS,
    RISKY,
    image_evidence,
    image_signals,
    logistic,
    nuclei_signals,
    scale_signals,
)
from pipeline.model.segmenter import Segmenter, flag_of
from pipeline.progress import progress

ROOT = Path(__file__).resolve().parents[1]
#: A bad image: count off by more than this fraction, or a DSB2018 score under BAD_SCORE.
BAD_COUNT, BAD_SCORE = 0.25, 0.30


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
    if args.fit:
        _image_fit_report(table)
        _nucleus_report(nuclei)
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
    parser.add_argument("--fit", action="store_true",
                        help="fit the count risk's and the per-nucleus confidence's weights on folds 1-4 "
                             "(trust.IMAGE_WEIGHTS, trust.NUCLEUS_WEIGHTS) and report them")
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
    """The segmentation's fields as plain values (labels, nucleus confidences and evidence, signals,
    seconds), from ``--cache`` when there (the evidence added to a cached image that lacks it)."""
    path = args.cache / f"{key}.npz" if args.cache else None
    if path is not None and path.exists():
        stored = np.load(path, allow_pickle=False)
        made = {"labels": stored["labels"], "nucleus_confidence": stored["nucleus_confidence"],
                **json.loads(str(stored["fields"]))}
        if "evidence" in stored:
            return made | {"evidence": stored["evidence"]}
        made["evidence"] = _evidence(segmenter, image, made)
    else:
        start = time.perf_counter()
        result = segmenter.segment(image)
        seconds = time.perf_counter() - start
        fields = {"diameter": result.diameter, "estimated": result.estimated, "confidence": result.confidence,
                  "image_type": result.image_type, "scale": result.scale,
                  "signals": {k: float(v) for k, v in (result.signals or {}).items()}, "seconds": seconds}
        made = {"labels": result.labels, "nucleus_confidence": result.nucleus_confidence, **fields}
        made["evidence"] = _evidence(segmenter, image, made)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fields = {k: v for k, v in made.items() if k not in ("labels", "nucleus_confidence", "evidence")}
        np.savez_compressed(path, labels=made["labels"], fields=json.dumps(fields), evidence=made["evidence"],
                            nucleus_confidence=np.asarray(made["nucleus_confidence"], np.float32))
    return made


def _evidence(segmenter: Segmenter, image: np.ndarray, made: dict) -> np.ndarray:
    """Each nucleus's :func:`pipeline.method.trust.nucleus_evidence` ((N + 1, k) float32), from the
    probabilities its image is segmented from (one more pass of the network)."""
    from pipeline.method.scale import scale_factor

    normalized, image_type = segmenter.normalize(image), made["image_type"]
    first, scale = segmenter.network_for(image_type), made.get("scale")
    if scale is None:  # cached before the scale was kept: as Segmenter.scale_for makes it
        scale = scale_factor(made["diameter"] or np.nan, first.config.diameter_for(image_type))
    probs, routed = first.probabilities(normalized, scale, image_type)
    return first.nucleus_evidence(probs, routed.head, made["labels"], scale, image_type).astype(np.float32)


def _one_image(segmenter: Segmenter, image: np.ndarray, true: np.ndarray, args, key: str):
    """One image's row and its nuclei's (confidence, matched) table."""
    made = _segment_cached(segmenter, image, args, key)
    labels, signals = made["labels"], dict(made["signals"])
    if made["image_type"] != "brightfield":  # the nuclei's signals, from the evidence (cached before they were kept)
        signals |= nuclei_signals(made["evidence"])
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
    evidence = np.asarray(made["evidence"], np.float64)[ids] if ids.size else np.zeros((0, len(NUCLEUS_EVIDENCE)))
    per_nucleus = pd.DataFrame({"confidence": conf[ids] if ids.size else [], "matched": matched,
                                "histology": made["image_type"] == "histology",
                                **dict(zip(NUCLEUS_EVIDENCE, evidence.T, strict=True))})
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
    """(images, k): each image's :func:`pipeline.method.trust.image_evidence`."""
    signals = table.reindex(columns=list(IMAGE_EVIDENCE)).astype(float)
    return np.array([image_evidence(row, row["confidence"]) for row in signals.to_dict("records")]).reshape(-1, len(IMAGE_EVIDENCE))


def fit_image_weights(train: pd.DataFrame) -> tuple[float, ...]:
    """(intercept, *weights) of the count risk (:data:`pipeline.method.trust.IMAGE_WEIGHTS`): a
    logistic regression of ``bad`` on :func:`_design`, classes balanced, each weight held to the
    sense of its evidence (:data:`pipeline.method.trust.RISK_SENSE`: a few images with a failure
    must not teach that the failure makes a count better), fitted on standardised evidence and
    given back on the raw one."""
    from pipeline.method.trust import RISK_SENSE

    return _logistic(_design(train), train.bad.to_numpy(bool), C=0.3, balanced=True,
                     signs=[RISK_SENSE[k] for k in IMAGE_EVIDENCE])


def _logistic(x: np.ndarray, y: np.ndarray, C: float, balanced: bool = False, signs=None) -> tuple[float, ...]:
    """(intercept, *weights) on the raw ``x`` (n, k) of an L2-penalised logistic regression of
    ``y`` (n,) bool fitted on ``x`` standardised (sklearn's loss: C × the log-loss + ½|w|²), each
    weight's sign held to ``signs`` (+1, −1 or 0: free) by L-BFGS-B bounds."""
    from scipy.optimize import minimize

    mean, std = x.mean(axis=0), np.maximum(x.std(axis=0), 1e-9)
    z, t = (x - mean) / std, np.where(y, 1.0, -1.0)
    sample = np.where(y, len(y) / (2 * max(y.sum(), 1)), len(y) / (2 * max((~y).sum(), 1))) if balanced else np.ones(len(y))

    def loss(beta: np.ndarray) -> tuple[float, np.ndarray]:
        margin = t * (beta[0] + z @ beta[1:])
        value = C * np.sum(sample * np.logaddexp(0, -margin)) + 0.5 * beta[1:] @ beta[1:]
        d = -C * sample * t / (1 + np.exp(np.clip(margin, -50, 50)))
        return value, np.concatenate([[d.sum()], z.T @ d + beta[1:]])

    signs = [0] * x.shape[1] if signs is None else signs
    bounds = [(None, None)] + [(0, None) if s > 0 else (None, 0) if s < 0 else (None, None) for s in signs]
    beta = minimize(loss, np.zeros(x.shape[1] + 1), jac=True, method="L-BFGS-B", bounds=bounds).x
    weights = beta[1:] / std
    return (float(beta[0] - weights @ mean), *map(float, weights))


def fitted_badness(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """The count risk of ``test``'s images with weights fitted on ``train``'s (NaN: one class only)."""
    if train.bad.nunique() < 2:
        return np.full(len(test), np.nan)
    return logistic(fit_image_weights(train), _design(test))


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
    for source in loso.source.unique():  # fitted on every image of the other sources (as --fit's view)
        mine = loso.source == source
        loso.loc[mine, "fitted"] = fitted_badness(table[table.source != source], fold0[mine])
    pd.set_option("display.width", 200, "display.max_columns", 30, "display.max_rows", 200)
    which = "fold 0" if has_fold0 else "folds 1-4 (--folds others: no fold-0 view)"
    print(f"model {args.model}: {len(fold0)} images of {which} ({len(table) - len(fold0)} of folds 1-4 besides), "
          f"{int(fold0.bad.sum())} bad (count off > {BAD_COUNT:.0%} or DSB2018 < {BAD_SCORE})")
    print("\nflags: baseline (bright-field, low confidence) | flag (shipped: and the named signals when the count risk is high)")
    views = [_flag_rows(loso, n0, "LOSO")] + ([_flag_rows(fold0, n0, "folds1-4")] if "fitted" in fold0 else [])
    print(pd.concat(views).round(3).to_string(index=False))
    print("\nwhich signal flags which image (fold 0): bad / good")
    for phrase_key in ("larger_scale", "smaller_scale", "scale_drift", "fragmented", "uncovered", "saturated", "blurred", "at_risk",
                       "low confidence"):
        hit = fold0.flag.fillna("").str.contains(_phrase_word(phrase_key), regex=False)
        print(f"  {phrase_key:<15} {int((hit & fold0.bad).sum()):>3} / {int((hit & ~fold0.bad).sum()):>3}")
    print("\nseconds per image (with the scale probes):", f"{fold0.seconds.median():.2f} median, {fold0.seconds.sum():.0f} total")
    _diameter_table(fold0)


def fit_nucleus_weights(nuclei: pd.DataFrame) -> tuple[float, ...]:
    """(intercept, *weights) of a logistic regression of ``matched`` on :data:`NUCLEUS_EVIDENCE`
    (the form of :data:`pipeline.method.trust.NUCLEUS_WEIGHTS`), fitted on standardised evidence
    and given back on the raw one."""
    x = nuclei[list(NUCLEUS_EVIDENCE)].to_numpy(np.float64)
    keep = np.isfinite(x).all(axis=1)
    return _logistic(x[keep], nuclei.matched.to_numpy(bool)[keep], C=1.0)


def _refit_confidence(train: pd.DataFrame, test: pd.DataFrame) -> np.ndarray:
    """The per-nucleus confidence of ``test`` with weights fitted on ``train``, kind by kind."""
    out = np.full(len(test), np.nan)
    for histology in (False, True):
        fit, mine = train[train.histology == histology], (test.histology == histology).to_numpy()
        if mine.any() and fit.matched.nunique() == 2:
            out[mine] = logistic(fit_nucleus_weights(fit), test.loc[mine, list(NUCLEUS_EVIDENCE)].to_numpy(np.float64))
    return out


def _image_fit_report(table: pd.DataFrame) -> None:
    """The count risk's weights fitted on folds 1-4, and its recall / false alarms by threshold on
    folds 1-4 (which choose :data:`pipeline.method.trust.RISKY`), on fold 0 and on each source left out."""
    train, fold0 = table[table.fold != 0], table[table.fold == 0].copy()
    if train.bad.nunique() < 2 or fold0.empty:
        print("\n--fit needs bad and good images of folds 1-4 and images of fold 0 (--folds all)")
        return
    print(f"\ncount risk weights fitted on folds 1-4 ({len(train)} images, {int(train.bad.sum())} bad; "
          "trust.IMAGE_WEIGHTS: intercept, " + ", ".join(IMAGE_EVIDENCE) + ")")
    print(f"    ({', '.join(f'{w:.4g}' for w in fit_image_weights(train))})")
    risk = {"folds 1-4": (train, fitted_badness(train, train)), "fold 0": (fold0, fitted_badness(train, fold0))}
    loso = np.full(len(fold0), np.nan)
    for source in fold0.source.unique():
        mine = (fold0.source == source).to_numpy()
        loso[mine] = fitted_badness(table[table.source != source], fold0[mine])
    risk["fold 0, source left out"] = (fold0, loso)
    rows = []
    for threshold in np.round(np.arange(0.3, 0.81, 0.05), 2):
        row = {"threshold": threshold, "shipped": "<-" if abs(threshold - RISKY) < 1e-9 else ""}
        for view, (t, r) in risk.items():
            bad = t.bad.to_numpy(bool)
            row[f"{view}: recall"], row[f"{view}: false"] = (r[bad] >= threshold).mean(), (r[~bad] >= threshold).mean()
        rows.append(row)
    print("\ncount risk over a threshold (flagged): recall / false alarms")
    print(pd.DataFrame(rows).round(3).to_string(index=False))


def _nucleus_report(nuclei: pd.DataFrame) -> None:
    """The weights of the per-nucleus confidence fitted on folds 1-4, kind by kind, and the AUC
    (matched at IoU ≥ 0.5 vs not) per source of fold 0: the confidence as computed, refitted on
    folds 1-4, and refitted on the other sources (all folds) for each source left out."""
    train, fold0 = nuclei[nuclei.fold != 0], nuclei[nuclei.fold == 0].copy()
    if train.empty or fold0.empty:
        print("\n--fit needs images of fold 0 and of folds 1-4 (--folds all)")
        return
    print("\nper-nucleus confidence weights fitted on folds 1-4 (trust.NUCLEUS_WEIGHTS: intercept, "
          + ", ".join(NUCLEUS_EVIDENCE) + ")")
    for kind, histology in (("fluorescence", False), ("histology", True)):
        fit = train[train.histology == histology]
        if fit.matched.nunique() == 2:
            print(f'    "{kind}": ({", ".join(f"{w:.3f}" for w in fit_nucleus_weights(fit))}),  # {len(fit)} nuclei')
    fold0["refit"] = _refit_confidence(train, fold0)
    fold0["loso"] = np.nan
    for source in fold0.source.unique():
        mine = (fold0.source == source).to_numpy()
        fold0.loc[mine, "loso"] = _refit_confidence(nuclei[nuclei.source != source], fold0[mine])
    rows = []
    for name, g in [*fold0.groupby("source"), ("pooled", fold0)]:
        rows.append({"source": name, "nuclei": len(g), "matched": g.matched.mean(),
                     **{f"auc_{c}": _auc(g[c].to_numpy(), g.matched.to_numpy())
                        for c in ("confidence", "refit", "loso")}})
    print("\nper-nucleus confidence, fold 0: AUC as computed | refitted on folds 1-4 | on the other sources")
    print(pd.DataFrame(rows).round(3).to_string(index=False))


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
    from pipeline.method.trust import AT_RISK, PHRASES

    return {**PHRASES, "at_risk": AT_RISK}.get(key, key)[:30]


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

