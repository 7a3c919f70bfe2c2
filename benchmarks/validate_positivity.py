"""``--positive CH=auto`` checked against another lab's marker calls, beside Otsu (issue 87).

In one run, side by side, the tool and the baseline on the same nuclei:

- **Real, true nuclei** (``positivity_e2f8``: six fields of mouse intestine stained for E2F8, 8-bit,
  3 confocal with a background clipped at 0, 3 widefield; the authors' labels and per-nucleus calls;
  ``../shared/validation/README.md``). Measured by ``nuclei measure``'s own function
  (:func:`pipeline.batch.measure.measure_images`, in-process) on the true labels: ``auto`` per image,
  and ``--positive-scope batch`` over the six fields. The baseline: Otsu's threshold on each field's
  nuclear means (``skimage.filters.threshold_otsu``).
- **Real, end to end** (the four fields with a DAPI image): ``nuclei segment --nuclear-channel 0
  --positive 1=auto`` (:func:`pipeline.batch.segment.segment_images`, the shipped default model, CPU)
  on a 2-channel file (DAPI, marker); each true nucleus matched to the predicted nucleus it overlaps
  with IoU > 0.5, the calls scored on the matched ones, the tool's against Otsu on the same predicted
  nuclei's means.
- **Synthetic**: fields of 400 round nuclei (radius 7 px) on a 20 × 20 grid, :data:`FRACTIONS` positive
  at :data:`CONTRASTS` (the median marker level above the background of the positives over the
  negatives'), both log-normal with a spread of :data:`SPREAD` (natural log), pixel noise on top:
  ``16-bit`` (background 100, noise 10, negatives 30 above it) and ``8-bit`` (background 0 with noise
  4, clipped at 0 as a confocal's offset does, negatives 8 above it, saturating at 255);
  :data:`DRAWS` fields per condition, seeds fixed. Measured by
  :func:`pipeline.batch.image_features.measure_image` (the function both commands measure with).

Scores per field: F1 of the positive calls, the fraction called positive beside the true one, and
whether a call was made (a field without one scores F1 0). Pooled: F1 over every nucleus.

Measured (2 shared cores; the shipped model of 2026-11-28), ``python -m benchmarks.validate_positivity``:

    real, true nuclei      auto 0.907 pooled (every field called; 5 of 6 fields above Otsu, one
                           0.800 < 0.816, flagged weak), batch 0.902, Otsu 0.830
    real, end to end       auto 0.921, Otsu 0.820 on the matched nuclei of 3 fields (the confocal
                           E2F3A field: 846 nuclei predicted for 112, 2 matched)
    synthetic, 210 fields  from contrast 5: auto >= Otsu in every condition, no field without a
                           call; contrast 3: below Otsu at 5-25 % and 90-95 % positive (9 fields
                           without a call); contrast 1.5-2: no call in 80 of 84 fields (one
                           population by BIC), Otsu F1 0.17-0.76; in all 89 of 210 without a call

``--small`` (CI, well under a minute): :data:`SMALL_FIELDS` real fields, no end to end, the
synthetic conditions of :data:`SMALL_CONDITIONS`, one draw each.

    python -m benchmarks.validate_positivity [--small] [--no-segment] [--root DIR] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import tifffile

ROOT = Path(__file__).resolve().parents[2] / "shared/validation/positivity_e2f8"
#: Fraction of positive nuclei in the synthetic fields.
FRACTIONS = (0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 0.95)
#: Median marker level above the background of the positives over that of the negatives.
CONTRASTS = (1.5, 2.0, 3.0, 5.0, 10.0)
#: Log-normal spread (sd of the natural log) of the marker levels of each population.
SPREAD = 0.35
#: Synthetic fields per condition.
DRAWS = 3
#: Real fields of ``--small``: one of each microscope.
SMALL_FIELDS = ("Confocal_E2F8_EdU_mouse1_image2", "Widefield_E2F8_pH3_mouse3_image3")
#: (fraction, contrast) of ``--small``, in both bit depths.
SMALL_CONDITIONS = ((0.05, 5.0), (0.5, 2.0), (0.5, 10.0), (0.9, 3.0))
#: Variants of the synthetic fields: (background, pixel noise, negatives' level above it, 8-bit).
VARIANTS = {"16-bit": (100.0, 10.0, 30.0, False), "8-bit": (0.0, 4.0, 8.0, True)}


# --------------------------------------------------------------------------- scores


def f1(calls: np.ndarray, truth: np.ndarray) -> float:
    """F1 of boolean ``calls`` against boolean ``truth`` (both (N,)); 1.0 when neither has a positive."""
    tp, fp, fn = int(np.sum(calls & truth)), int(np.sum(calls & ~truth)), int(np.sum(~calls & truth))
    return 1.0 if tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def otsu_calls(means: np.ndarray) -> np.ndarray:
    """The baseline: Otsu's threshold on a field's nuclear means ((N,) float) → (N,) bool."""
    from skimage.filters import threshold_otsu

    means = np.asarray(means, np.float64)
    if means.size < 2 or np.ptp(means) == 0:
        return np.zeros(means.shape, bool)
    return means > threshold_otsu(means)


def score(calls: np.ndarray | None, truth: np.ndarray) -> dict:
    """F1, fraction called positive and whether a call was made; ``calls`` None: no call (F1 0)."""
    truth = np.asarray(truth, bool)
    made = calls is not None
    calls = np.zeros(truth.shape, bool) if calls is None else np.asarray(calls, bool)
    return {"f1": f1(calls, truth) if made else 0.0, "called": float(calls.mean()) if made else math.nan,
            "true": float(truth.mean()), "call": made}


# --------------------------------------------------------------------------- real fields


def real_fields(root: Path, small: bool) -> list[Path]:
    fields = sorted(p for p in root.iterdir() if (p / "truth.csv").exists())
    return [p for p in fields if p.name in SMALL_FIELDS] if small else fields


def measure_real(fields: list[Path], work: Path, scope: str) -> dict[str, dict]:
    """``nuclei measure`` (in-process) of each field's marker with its true labels; per field: its
    nuclei's ``label``, mean, call (None: no call) and ``counts.csv`` row."""
    from pipeline.batch.measure import measure_images
    from pipeline.batch.settings import MeasureOptions

    images, labels, out = work / "images", work / "labels", work / f"measure_{scope}"
    for folder in (images, labels):
        folder.mkdir(exist_ok=True)
    for field in fields:
        shutil.copyfile(field / "marker.tif", images / f"{field.name}.tif")
        shutil.copyfile(field / "labels.tif", labels / f"{field.name}.tif")
    options = MeasureOptions(nuclear_channel="0", positive=(("0", None),), positive_scope=scope)
    counts = measure_images([images / f"{f.name}.tif" for f in fields], labels, out, measure=options)
    return _read_calls(out, counts)


def _read_calls(out: Path, counts: pd.DataFrame) -> dict[str, dict]:
    """Per image of an output folder: ``label``, ``mean``, ``calls`` (None: no call), counts row."""
    nuclei = pd.read_csv(out / "nuclei.csv")
    column = next(c for c in nuclei.columns if c.startswith("positive_"))
    key = column[len("positive_"):]
    found = {}
    for _, row in counts.iterrows():
        table = nuclei[nuclei["image"] == row["image"]]
        calls = table[column]
        found[row["image"]] = {"label": table["label"].to_numpy(np.int64), "mean": table[f"mean_{key}"].to_numpy(),
                               "calls": None if calls.isna().any() or not len(calls) else calls.astype(bool).to_numpy(),
                               "row": row, "key": key}
    return found


def score_real(fields: list[Path], work: Path) -> list[dict]:
    """Per field: the tool per image, the tool over the batch and Otsu, on the true nuclei."""
    image, batch = measure_real(fields, work, "image"), measure_real(fields, work, "batch")
    rows = []
    for field in fields:
        truth = pd.read_csv(field / "truth.csv").set_index("label")["positive"]
        here = image[field.name]
        known = np.isin(here["label"], truth.index)  # a label without a call in truth.csv is left out
        true = truth.loc[here["label"][known]].to_numpy(bool)

        def cut(calls, known=known):
            return None if calls is None else calls[known]

        key, row = here["key"], here["row"]
        rows.append({"field": field.name, "nuclei": int(known.sum()), "truth": true,
                     "tool": score(cut(here["calls"]), true), "tool_calls": cut(here["calls"]),
                     "batch": score(cut(batch[field.name]["calls"]), true), "batch_calls": cut(batch[field.name]["calls"]),
                     "otsu": score(otsu_calls(here["mean"][known]), true), "otsu_calls": otsu_calls(here["mean"][known]),
                     "separation": row.get(f"separation_{key}"), "flag": row.get("flag"),
                     "batch_flag": batch[field.name]["row"].get("flag")})
    return rows


def score_end_to_end(fields: list[Path], work: Path) -> list[dict]:
    """``nuclei segment`` on (DAPI, marker) of each field with a DAPI image, the calls scored on the
    predicted nuclei matched to true ones (IoU > 0.5): the tool's and Otsu's on the same nuclei."""
    from pipeline.batch.segment import segment_images
    from pipeline.batch.settings import MeasureOptions
    from pipeline.files.io import read_labels

    fields = [f for f in fields if (f / "dapi.tif").exists()]
    if not fields:
        return []
    inputs = work / "two_channel"
    inputs.mkdir(exist_ok=True)
    for field in fields:
        stack = np.stack([tifffile.imread(field / "dapi.tif"), tifffile.imread(field / "marker.tif")])
        tifffile.imwrite(inputs / f"{field.name}.tif", stack, photometric="minisblack")
    out = work / "segment"
    options = MeasureOptions(nuclear_channel="0", positive=(("1", None),))
    counts = segment_images([inputs / f"{f.name}.tif" for f in fields], out, None, "cpu", measure=options)
    found = _read_calls(out, counts)
    rows = []
    for field in fields:
        here = found[field.name]
        truth = pd.read_csv(field / "truth.csv").set_index("label")["positive"]
        true_labels = tifffile.imread(field / "labels.tif").astype(np.int64)
        predicted = read_labels(out / "labels" / f"{field.name}.tif").astype(np.int64)
        pairs = match(true_labels, predicted)
        pairs = {t: p for t, p in pairs.items() if t in truth.index}
        position = {int(label): k for k, label in enumerate(here["label"])}
        rows_of = np.array([position[p] for p in pairs.values()], np.int64)
        true = truth.loc[list(pairs)].to_numpy(bool)
        tool = None if here["calls"] is None else here["calls"][rows_of]
        otsu = otsu_calls(here["mean"])[rows_of]  # Otsu on every predicted nucleus, scored on the matched
        rows.append({"field": field.name, "true nuclei": len(truth), "predicted": len(here["label"]),
                     "matched": len(pairs), "tool": score(tool, true), "otsu": score(otsu, true),
                     "flag": here["row"].get("flag"), "truth": true, "tool_calls": tool, "otsu_calls": otsu})
    return rows


def match(truth: np.ndarray, predicted: np.ndarray) -> dict[int, int]:
    """True label → predicted label for the pairs overlapping with IoU > 0.5 (each at most once)."""
    both = (truth > 0) & (predicted > 0)
    pairs, overlap = np.unique(np.stack([truth[both], predicted[both]]), axis=1, return_counts=True)
    area_t = np.bincount(truth.ravel())
    area_p = np.bincount(predicted.ravel())
    iou = overlap / (area_t[pairs[0]] + area_p[pairs[1]] - overlap)
    keep = iou > 0.5
    return {int(t): int(p) for t, p in zip(pairs[0][keep], pairs[1][keep], strict=True)}


# --------------------------------------------------------------------------- synthetic fields


def synthetic_field(fraction: float, contrast: float, variant: str, seed: int,
                    side: int = 20, spacing: int = 18, radius: int = 7) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One synthetic marker field (module docstring): (image uint16 or uint8 (H, W), labels int32
    (H, W), truth bool (N,) for labels 1..N)."""
    from skimage.draw import disk

    background, noise, base, eight_bit = VARIANTS[variant]
    rng = np.random.default_rng(seed)
    shape = (side * spacing, side * spacing)
    labels = np.zeros(shape, np.int32)
    centres = [(r, c) for r in range(spacing // 2, shape[0], spacing) for c in range(spacing // 2, shape[1], spacing)]
    for k, (r, c) in enumerate(centres, start=1):
        rr, cc = disk((r + rng.integers(-1, 2), c + rng.integers(-1, 2)), radius, shape=shape)
        labels[rr, cc] = k
    truth = rng.random(len(centres)) < fraction
    level = base * np.exp(SPREAD * rng.standard_normal(len(centres))) * np.where(truth, contrast, 1.0)
    image = background + np.concatenate([[0.0], level])[labels] + noise * rng.standard_normal(shape)
    top = 255 if eight_bit else 65535
    return np.clip(np.round(image), 0, top).astype(np.uint8 if eight_bit else np.uint16), labels, truth


def score_synthetic(conditions: list[tuple[str, float, float]], draws: int) -> list[dict]:
    """Per condition (variant, fraction, contrast): the tool (per image) and Otsu on each draw."""
    from pipeline.batch.image_features import Channels, measure_image
    from pipeline.batch.settings import MeasureOptions

    options = MeasureOptions(nuclear_channel="0", positive=(("1", None),))
    rows = []
    for variant, fraction, contrast in conditions:
        for draw in range(draws):
            seed = 1000 * draw + int(round(fraction * 100)) * 10 + int(round(contrast * 10)) + 7 * (variant == "8-bit")
            image, labels, truth = synthetic_field(fraction, contrast, variant, seed)
            measured = measure_image(labels, image.astype(np.float64), Channels(np.stack([image, image]), ("0", "1"), 0),
                                     options, None, None, None, "synthetic")
            column = next(c for c in measured.table.columns if c.startswith("positive_"))
            calls = measured.table[column]
            means = measured.table[f"mean_{column[len('positive_'):]}"].to_numpy(np.float64)
            tool = None if calls.isna().any() else calls.astype(bool).to_numpy()
            rows.append({"variant": variant, "fraction": fraction, "contrast": contrast, "draw": draw,
                         "tool": score(tool, truth), "otsu": score(otsu_calls(means), truth),
                         "flag": "; ".join(measured.flags)})
    return rows


# --------------------------------------------------------------------------- tables


def pooled(rows: list[dict], name: str) -> float:
    """F1 over every nucleus of ``rows`` (``<name>_calls``; a field without a call: all negative)."""
    truth = np.concatenate([r["truth"] for r in rows])
    calls = np.concatenate([np.zeros(len(r["truth"]), bool) if r[f"{name}_calls"] is None else r[f"{name}_calls"]
                            for r in rows])
    return f1(calls, truth)


def _cell(s: dict) -> str:
    return f"{s['f1']:.3f} {s['called']:4.0%}" if s["call"] else "  no call "


def print_real(rows: list[dict]) -> None:
    print("Real fields, true nuclei (nuclei measure): F1, fraction called positive")
    print(f"{'field':36s} {'n':>4s} {'true':>5s}  {'auto':>10s}  {'batch':>10s}  {'Otsu':>10s}  {'D':>5s}  flag")
    for r in rows:
        flag = str(r["flag"]) if isinstance(r["flag"], str) else ""
        print(f"{r['field']:36s} {r['nuclei']:4d} {r['tool']['true']:5.0%}  {_cell(r['tool'])}  {_cell(r['batch'])}  "
              f"{_cell(r['otsu'])}  {_number(r['separation']):5.2f}  {flag[:90]}")
    print(f"{'pooled':36s} {sum(r['nuclei'] for r in rows):4d} {'':5s}  {pooled(rows, 'tool'):10.3f}  "
          f"{pooled(rows, 'batch'):10.3f}  {pooled(rows, 'otsu'):10.3f}")
    worse = [r["field"] for r in rows if r["tool"]["f1"] < r["otsu"]["f1"]]
    print(f"fields without a call: {sum(not r['tool']['call'] for r in rows)} of {len(rows)}; "
          f"auto below Otsu: {len(worse)} ({', '.join(worse) or '-'})")


def print_end_to_end(rows: list[dict]) -> None:
    print("\nReal fields, end to end (nuclei segment, shipped model; calls on matched nuclei, IoU > 0.5)")
    print(f"{'field':36s} {'true':>5s} {'pred.':>5s} {'match':>5s}  {'auto':>10s}  {'Otsu':>10s}  flag")
    for r in rows:
        flag = str(r["flag"]) if isinstance(r["flag"], str) else ""
        print(f"{r['field']:36s} {r['true nuclei']:5d} {r['predicted']:5d} {r['matched']:5d}  {_cell(r['tool'])}  "
              f"{_cell(r['otsu'])}  {flag[:90]}")
    print(f"{'pooled':36s} {'':17s}  {pooled(rows, 'tool'):10.3f}  {pooled(rows, 'otsu'):10.3f}")


def print_synthetic(rows: list[dict]) -> None:
    print("\nSynthetic fields (400 nuclei each): mean F1 auto / Otsu, fields without a call")
    frame = pd.DataFrame([{"variant": r["variant"], "fraction": r["fraction"], "contrast": r["contrast"],
                           "auto": r["tool"]["f1"], "otsu": r["otsu"]["f1"], "none": not r["tool"]["call"],
                           "weak": "weak separation" in r["flag"]} for r in rows])
    for variant, group in frame.groupby("variant", sort=False):
        contrasts = sorted(group["contrast"].unique())
        print(f"{variant:7s} " + "".join(f"{'contrast ' + format(c, 'g'):>22s}" for c in contrasts))
        for fraction, part in group.groupby("fraction"):
            cells = []
            for c in contrasts:
                here = part[part["contrast"] == c]
                if here.empty:
                    cells.append(f"{'':>22s}")
                    continue
                mark = "<" if here["auto"].mean() < here["otsu"].mean() - 1e-9 else " "
                cells.append(f"{here['auto'].mean():7.3f}{mark}/{here['otsu'].mean():6.3f} {int(here['none'].sum()):>2d}  ")
            print(f"{fraction:6.0%}  " + "".join(cells))
    by = frame.groupby(["variant", "fraction", "contrast"])[["auto", "otsu"]].mean()
    below = by[by["auto"] < by["otsu"] - 1e-9]
    print(f"fields without a call: {int(frame['none'].sum())} of {len(frame)}; flagged weak: {int(frame['weak'].sum())}; "
          f"conditions with auto below Otsu (mean F1): {len(below)} of {len(by)}, by at most "
          f"{float((below['otsu'] - below['auto']).max()) if len(below) else 0.0:.3f}; mean F1 auto {frame['auto'].mean():.3f}, "
          f"Otsu {frame['otsu'].mean():.3f}")


def _number(value) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return math.nan


def _plain(rows: list[dict]) -> list[dict]:
    """Rows without arrays, for --json."""
    return [{k: v for k, v in r.items() if not isinstance(v, np.ndarray) and not k.endswith("_calls") and k != "truth"}
            for r in rows]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--small", action="store_true", help="CI: 2 real fields, a few synthetic conditions")
    parser.add_argument("--no-segment", action="store_true", help="leave out the end-to-end runs of nuclei segment")
    parser.add_argument("--root", type=Path, default=ROOT, help="the positivity_e2f8 folder")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    if args.small:
        conditions = [(v, f, c) for v in VARIANTS for f, c in SMALL_CONDITIONS]
        draws = 1
    else:
        conditions = [(v, f, c) for v in VARIANTS for f in FRACTIONS for c in CONTRASTS]
        draws = DRAWS
    report: dict = {}
    with tempfile.TemporaryDirectory(prefix="validate_positivity_") as work:
        if args.root.is_dir():
            fields = real_fields(args.root, args.small)
            report["real"] = real = score_real(fields, Path(work))
            print_real(real)
            if not args.small and not args.no_segment:
                report["end_to_end"] = ends = score_end_to_end(fields, Path(work))
                print_end_to_end(ends)
        else:
            print(f"{args.root}: not found, real fields left out")
        report["synthetic"] = synthetic = score_synthetic(conditions, draws)
        print_synthetic(synthetic)
    if args.json:
        from pipeline.files.io import write_text

        write_text(args.json, json.dumps({k: _plain(v) for k, v in report.items()}, indent=1, default=str))
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
