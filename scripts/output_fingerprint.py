"""Fingerprint what ``nuclei segment`` writes, to prove a refactor or a release changes no output.

Who runs it: whoever refactors the code paths of ``nuclei segment`` or cuts a release, once on the
tree before the change and once after, then ``--compare``::

    python -m scripts.output_fingerprint --tree /path/to/before --inputs /tmp/fp_inputs --out before.json
    python -m scripts.output_fingerprint --tree /path/to/after  --inputs /tmp/fp_inputs --out after.json
    python -m scripts.output_fingerprint --compare before.json after.json

``--tree DIR`` runs ``python -m pipeline segment ...`` with ``PYTHONPATH=DIR``, so that DIR's
``pipeline`` package (and its shipped model) shadows the installed one; the package actually
imported is checked and recorded. Every case runs in a fresh temporary folder, on the CPU, with
``CI=1`` (no progress bars) and ``OMP_NUM_THREADS`` fixed (``--threads``).

The inputs are written once into ``--inputs`` (fixed seeds) and reused as they are by every later
run, whichever tree: keep the folder between the two runs that are compared.

Cases (:data:`CASES`):

- ``sample``: the embedded sample's images (``data/sample/stage1_train/*/images/*.png``, as
  ``make demo`` reads them), 20 images of every type;
- ``slide``: a synthetic tiled BigTIFF (``benchmarks/bench_scale.py``'s generator, 2560² px),
  segmented out of core: ``--params`` lowers ``segment.slide_pixels`` to 1 Mpx and
  ``segment.block_size`` to 1024 px, so that it is planned and stitched block by block;
- ``zstack_stitch``, ``zstack_ortho``: a synthetic ZYX stack (``pipeline.method.synthetic``,
  12 × 160² px, z step 2 px) with ``--z-method stitch`` and ``--z-method ortho``;
- ``movie``: a TYX time-lapse (6 frames of 256² px: a window sliding over a sample image) with ``--track``;
- ``positive``: two CYX OME-TIFFs (DAPI from a sample image, Ki67 set per true nucleus) with
  ``--nuclear-channel DAPI --positive Ki67=auto``.

Recorded per case: the md5 of each ``labels/*.tif``'s pixels (decoded array, with its dtype and
shape: TIFF metadata does not count), the md5 of ``counts.csv``, ``nuclei.csv``, ``columns.csv``,
``tracks/*.csv`` and ``tables/*.csv`` (a slide's) with the :data:`VOLATILE` columns dropped, and
the count per image (per frame for a time-lapse). ``--compare`` prints, case by case, same or
differs (which files, which counts), and exits 1 when any case differs.

Cost: about 3 to 5 minutes per tree on 2 shared CPU cores. Two runs of one tree gave the same
fingerprints (the label TIFFs and tables were byte-identical; only ``report.html`` differs).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import importlib.util
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "stage1_train"

#: Columns dropped from the tables before hashing: what differs between two identical runs, or
#: between two trees for reasons other than the outputs. Found by running one tree twice and
#: diffing: none varies (no times, versions or absolute paths: inputs are named relative to the
#: case's folder), so the list is empty; add a column here when a table gains one that varies.
VOLATILE: dict[str, tuple[str, ...]] = {"counts.csv": (), "nuclei.csv": (), "columns.csv": (), "tracks": (),
                                        "tables": ()}

#: Case name -> the arguments of ``nuclei segment`` after the inputs folder link ``in/`` and ``-o out``.
CASES: dict[str, list[str]] = {
    "sample": ["in/sample"],
    "slide": ["in/slide/slide.tif", "--params", "in/slide/params.yaml"],
    "zstack_stitch": ["in/zstack/zstack.tif", "--z-method", "stitch", "--anisotropy", "2"],
    "zstack_ortho": ["in/zstack/zstack.tif", "--z-method", "ortho", "--anisotropy", "2"],
    "movie": ["in/movie/movie.tif", "--track"],
    "positive": ["in/positive", "--nuclear-channel", "DAPI", "--positive", "Ki67=auto"],
}

SLIDE_SIDE = 2560  #: px, the synthetic slide's side
SLIDE_PARAMS = "segment:\n  slide_pixels: 1000000\n  block_size: 1024\n"
MOVIE_IMAGE, MOVIE_FRAMES = "958114e5f37d5e1420b410bd716753b3e874b175f2b6958ebf1ec2bdf776e41f", 6
POSITIVE_IMAGES = ("4185b9369fc8bdcc7e7c68f2129b9a7442237cd0f836a4b6d13ef64bf0ef572a",
                   "9bb6e39d5f4415bc7554842ee5d1280403a602f2ba56122b87f453a62d37c06e")


# --------------------------------------------------------------------------- inputs


def _grey(path: Path) -> np.ndarray:
    """uint8 (H, W): the first channel of a sample PNG (its channels are equal for fluorescence)."""
    from PIL import Image

    array = np.asarray(Image.open(path))
    return array[..., 0] if array.ndim == 3 else array


def make_inputs(folder: Path) -> None:
    """Write every case's inputs into ``folder`` (each sub-folder only when missing); deterministic."""
    import tifffile

    folder.mkdir(parents=True, exist_ok=True)
    if not (folder / "sample").exists():
        tmp = folder / "sample.tmp"
        tmp.mkdir()
        for png in sorted(SAMPLE.glob("*/images/*.png")):
            shutil.copy(png, tmp / png.name)
        tmp.rename(folder / "sample")
    if not (folder / "slide").exists():
        spec = importlib.util.spec_from_file_location("bench_scale", ROOT / "benchmarks" / "bench_scale.py")
        bench_scale = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(bench_scale)
        tmp = folder / "slide.tmp"
        tmp.mkdir()
        bench_scale.write_slide(tmp / "slide.tif", SLIDE_SIDE)
        (tmp / "params.yaml").write_text(SLIDE_PARAMS)
        tmp.rename(folder / "slide")
    if not (folder / "zstack").exists():
        from pipeline.method.synthetic import synthetic_nuclei_stack

        image, _ = synthetic_nuclei_stack((12, 160, 160), n=30, radius=10.0, anisotropy=2.0, seed=0)
        tmp = folder / "zstack.tmp"
        tmp.mkdir()
        tifffile.imwrite(tmp / "zstack.tif", image, imagej=True, metadata={"axes": "ZYX"})
        tmp.rename(folder / "zstack")
    if not (folder / "movie").exists():
        grey = _grey(SAMPLE / MOVIE_IMAGE / "images" / f"{MOVIE_IMAGE}.png")
        frames = np.stack([grey[100 + 2 * t:356 + 2 * t, 150 + 3 * t:406 + 3 * t] for t in range(MOVIE_FRAMES)])
        tmp = folder / "movie.tmp"
        tmp.mkdir()
        tifffile.imwrite(tmp / "movie.tif", frames, imagej=True, metadata={"axes": "TYX", "finterval": 60.0})
        tmp.rename(folder / "movie")
    if not (folder / "positive").exists():
        tmp = folder / "positive.tmp"
        tmp.mkdir()
        for seed, name in enumerate(POSITIVE_IMAGES):
            tifffile.imwrite(tmp / f"{name[:12]}.ome.tif", _two_channels(name, seed), ome=True,
                             metadata={"axes": "CYX", "Channel": {"Name": ["DAPI", "Ki67"]}})
        tmp.rename(folder / "positive")


def _two_channels(name: str, seed: int) -> np.ndarray:
    """uint16 (2, H, W): a sample image as DAPI, and a marker bright in 40 % of its true nuclei."""
    rng = np.random.default_rng(seed)
    dapi = _grey(SAMPLE / name / "images" / f"{name}.png").astype(np.float64)
    masks = sorted((SAMPLE / name / "masks").glob("*.png"))
    level = np.where(rng.random(len(masks)) < 0.4, rng.uniform(800, 1200, len(masks)), rng.uniform(150, 250, len(masks)))
    marker = np.full(dapi.shape, 100.0)
    for mask, value in zip(masks, level, strict=True):
        marker[_grey(mask) > 0] = value
    marker += rng.normal(0, 20, dapi.shape)
    return np.clip(np.rint(np.stack([dapi * 10, marker])), 0, 65535).astype(np.uint16)


# --------------------------------------------------------------------------- fingerprints


def label_md5(path: Path) -> dict:
    """md5 of a label TIFF's decoded pixels, with its dtype and shape."""
    import tifffile

    array = np.ascontiguousarray(tifffile.imread(path))
    digest = hashlib.md5(f"{array.dtype.str}{array.shape}".encode())
    digest.update(array.tobytes())
    return {"md5": digest.hexdigest(), "dtype": str(array.dtype), "shape": list(array.shape)}


def table_md5(path: Path, drop: tuple[str, ...]) -> dict:
    """md5 of a CSV's text with the ``drop`` columns removed (the other cells as written)."""
    with path.open(newline="") as handle:
        rows = list(csv.reader(handle))
    keep = [k for k, column in enumerate(rows[0]) if column not in drop] if rows else []
    out = io.StringIO()
    csv.writer(out, lineterminator="\n").writerows([[row[k] for k in keep if k < len(row)] for row in rows])
    return {"md5": hashlib.md5(out.getvalue().encode()).hexdigest(), "rows": max(len(rows) - 1, 0),
            "dropped": [c for c in drop if rows and c in rows[0]]}


def counts_of(path: Path) -> dict[str, str]:
    """Count per image (``image`` or ``image/frame``) from ``counts.csv``, as written."""
    with path.open(newline="") as handle:
        return {row["image"] + (f"/{row['frame']}" if row.get("frame") else ""): row.get("count", "")
                for row in csv.DictReader(handle)}


def fingerprint(out: Path) -> dict:
    """The fingerprint of one output folder."""
    record: dict = {"labels": {p.name: label_md5(p) for p in sorted((out / "labels").glob("*.tif"))}, "tables": {}}
    for name in ("counts.csv", "nuclei.csv", "columns.csv"):
        if (out / name).exists():
            record["tables"][name] = table_md5(out / name, VOLATILE[name])
    for folder in ("tracks", "tables"):  # a time-lapse's tracks; a slide's own table
        for path in sorted((out / folder).glob("*.csv")):
            record["tables"][f"{folder}/{path.name}"] = table_md5(path, VOLATILE[folder])
    record["counts"] = counts_of(out / "counts.csv") if (out / "counts.csv").exists() else {}
    return record


def run_case(tree: Path, inputs: Path, case: str, threads: int, keep: Path | None = None) -> dict:
    """Segment one case with ``tree``'s code in a fresh folder; its fingerprint, seconds and status
    (``keep``: the output folder copied to ``keep/case``)."""
    env = {**os.environ, "PYTHONPATH": str(tree), "CI": "1", "OMP_NUM_THREADS": str(threads)}
    with tempfile.TemporaryDirectory(prefix=f"fp_{case}_") as work:
        os.symlink(inputs, Path(work) / "in")
        start = time.perf_counter()
        done = subprocess.run([sys.executable, "-m", "pipeline", "segment", *CASES[case], "-o", "out",
                               "--device", "cpu"], cwd=work, env=env, capture_output=True, text=True)
        record = {"seconds": round(time.perf_counter() - start, 1), "returncode": done.returncode,
                  "summary": ((done.stdout + done.stderr).strip().splitlines() or [""])[-1][:300]}
        if (Path(work) / "out").exists():
            record.update(fingerprint(Path(work) / "out"))
            if keep is not None:
                shutil.rmtree(keep / case, ignore_errors=True)
                shutil.copytree(Path(work) / "out", keep / case)
        return record


def package_of(tree: Path) -> str:
    """The ``pipeline/__init__.py`` that ``PYTHONPATH=tree`` imports, checked to lie in ``tree``."""
    with tempfile.TemporaryDirectory() as work:
        done = subprocess.run([sys.executable, "-c", "import pipeline; print(pipeline.__file__)"], cwd=work,
                              env={**os.environ, "PYTHONPATH": str(tree)}, capture_output=True, text=True, check=True)
    where = done.stdout.strip()
    if not Path(where).resolve().is_relative_to(tree.resolve()):
        raise SystemExit(f"PYTHONPATH={tree} imports {where}, not the tree's package")
    return where


def _git(tree: Path) -> str:
    done = subprocess.run(["git", "-C", str(tree), "describe", "--always", "--dirty"], capture_output=True, text=True)
    return done.stdout.strip()


# --------------------------------------------------------------------------- compare


def differences(a: dict, b: dict) -> list[str]:
    """What differs between two cases' records (empty: the same)."""
    if a.get("returncode") != b.get("returncode"):
        return [f"exit status {a.get('returncode')} -> {b.get('returncode')}"]
    found = []
    for kind in ("labels", "tables"):
        left, right = a.get(kind, {}), b.get(kind, {})
        for name in sorted(set(left) | set(right)):
            if name not in left or name not in right:
                found.append(f"{name} only in {'A' if name in left else 'B'}")
            elif left[name]["md5"] != right[name]["md5"]:
                extra = ""
                if kind == "tables" and left[name]["rows"] != right[name]["rows"]:
                    extra = f" ({left[name]['rows']} -> {right[name]['rows']} rows)"
                if kind == "labels" and left[name]["shape"] != right[name]["shape"]:
                    extra = f" (shape {left[name]['shape']} -> {right[name]['shape']})"
                found.append(f"{kind[:-1]} {name}{extra}")
    ca, cb = a.get("counts", {}), b.get("counts", {})
    changed = [f"{k}: {ca.get(k)} -> {cb.get(k)}" for k in sorted(set(ca) | set(cb)) if ca.get(k) != cb.get(k)]
    if changed:
        found.append(f"counts of {len(changed)} image(s): " + "; ".join(changed[:5]) + (" ..." if len(changed) > 5 else ""))
    return found


def compare(path_a: Path, path_b: Path) -> int:
    """Print the table; 0 when every case is the same, else 1."""
    a, b = (json.loads(Path(p).read_text()) for p in (path_a, path_b))
    print(f"A: {path_a} ({a.get('git', '?')})\nB: {path_b} ({b.get('git', '?')})\n")
    print(f"{'case':<15} {'result':<8} details")
    worst = 0
    for case in [*CASES, *sorted((set(a["cases"]) | set(b["cases"])) - set(CASES))]:
        if case not in a["cases"] and case not in b["cases"]:
            continue
        if case not in a["cases"] or case not in b["cases"]:
            print(f"{case:<15} {'missing':<8} only in {'A' if case in a['cases'] else 'B'}")
            worst = 1
            continue
        found = differences(a["cases"][case], b["cases"][case])
        worst |= bool(found)
        n = len(a["cases"][case].get("labels", {}))
        print(f"{case:<15} {'differs' if found else 'same':<8} " + ("; ".join(found) if found else
              f"{n} label file(s), {len(a['cases'][case].get('tables', {}))} table(s)"))
    return worst


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tree", type=Path, help="source tree whose pipeline package runs")
    parser.add_argument("--inputs", type=Path, help="inputs folder (written once when missing)")
    parser.add_argument("--out", type=Path, help="fingerprint JSON to write")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of: " + ", ".join(CASES))
    parser.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of each run (default 2)")
    parser.add_argument("--keep", type=Path, help="also copy each case's output folder to KEEP/<case>")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A.json", "B.json"))
    args = parser.parse_args(argv)
    if args.compare:
        return compare(*args.compare)
    if not (args.tree and args.inputs and args.out):
        parser.error("--tree, --inputs and --out are needed (or --compare A.json B.json)")
    cases = args.cases.split(",")
    unknown = sorted(set(cases) - set(CASES))
    if unknown:
        parser.error(f"unknown case(s): {', '.join(unknown)}")
    make_inputs(args.inputs.resolve())
    record = {"tree": str(args.tree.resolve()), "git": _git(args.tree), "package": package_of(args.tree),
              "threads": args.threads, "volatile_columns": VOLATILE, "cases": {}}
    for case in cases:
        record["cases"][case] = run_case(args.tree.resolve(), args.inputs.resolve(), case, args.threads, args.keep)
        done = record["cases"][case]
        print(f"{case:<15} exit {done['returncode']} {done['seconds']:>6.1f} s  {done['summary'][:110]}", flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(record, indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
