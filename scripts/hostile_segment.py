"""Hostile pass over ``nuclei segment`` with the shipped model, and over the newer commands.

Issue 41's cases are here: output names, the file system's limits, odd files, two runs into one
folder, image orientation, image type and diameter flags. The newer commands' cases (issue 62: model folders that say absurd things, ``--scheduler``
addresses, fine-tuning's limits, binary masks in ``nuclei export``) have their one home beside the
tests of the module each checks, marked ``@pytest.mark.hostile``; this pass runs them (``pytest -m
hostile``) after its own cases and counts them too.

Each case here builds its inputs in a fresh temporary folder, runs the command line as a user would
(in this process, or in other processes where two runs meet), and checks what a demanding user
expects: one line per problem and no traceback, every other image still segmented, label files
and tables that agree. Prints one line per case, then the count of both parts, and exits 1 if any
case is not handled.

    python -m scripts.hostile_segment [--model DIR] [--keep] [-k WORDS] [--no-tests]
"""

from __future__ import annotations

import argparse
import contextlib
import io
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from xml.etree import ElementTree

import numpy as np
import pandas as pd
import tifffile
from PIL import Image
from skimage.draw import disk

from pipeline.errors import NucleiError

ROOT = Path(__file__).resolve().parents[1]
MODEL = ROOT / "pipeline" / "shipped" / "model"
#: The newer commands' cases (issue 62): the tests marked ``hostile`` under this folder.
TESTS = ROOT / "tests"
#: The pytest marker of those cases.
MARKER = "hostile"
CASES: list[tuple[str, Callable[[Path], str]]] = []


def case(title: str):
    def register(check):
        CASES.append((title, check))
        return check
    return register


def nuclei_image(shape=(160, 200), spacing=40, radius=8, bright=200, bg=20, seed=0) -> np.ndarray:
    """uint8 grey image: a grid of bright discs (``bright``) on a flat background (``bg``)."""
    image = np.full(shape, bg, np.uint8)
    rng = np.random.default_rng(seed)
    for r in range(spacing // 2, shape[0] - radius, spacing):
        for c in range(spacing // 2, shape[1] - radius, spacing):
            rr, cc = disk((r + rng.integers(-3, 4), c + rng.integers(-3, 4)), radius, shape=shape)
            image[rr, cc] = bright
    return image


def save(path: Path, image: np.ndarray | None = None, **kwargs) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(nuclei_image() if image is None else image).save(path, **kwargs)
    return path


def segment(*argv, cwd: Path | None = None) -> tuple[int, str]:
    """``nuclei segment ARGV --model MODEL`` in this process: (exit status, stderr)."""
    return nuclei("segment", *argv, "--model", MODEL, cwd=cwd)


def nuclei(*argv, cwd: Path | None = None) -> tuple[int, str]:
    """``nuclei ARGV`` (any command, no model added) in this process: (exit status, stderr)."""
    from pipeline.cli import main

    err, here = io.StringIO(), Path.cwd()
    try:
        if cwd:
            os.chdir(cwd)
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            try:
                status = main([*map(str, argv)])
            except SystemExit as exc:  # argparse
                status = exc.code
    finally:
        os.chdir(here)
    return status, err.getvalue()


def spawn(*argv) -> subprocess.Popen:
    """``nuclei segment ARGV --model MODEL`` in another process."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "1"}
    return subprocess.Popen([sys.executable, "-m", "pipeline", "segment", *map(str, argv), "--model", str(MODEL)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def counts(out: Path) -> pd.DataFrame:
    return pd.read_csv(out / "counts.csv", keep_default_na=False, na_values=[""]).set_index("image")


def tables_match_files(out: Path) -> None:
    """counts.csv lists exactly the label files present, and nuclei.csv exactly its images' nuclei."""
    table = counts(out)
    listed = sorted(table["labels_file"].dropna())
    present = sorted(f"labels/{p.name}" for p in (out / "labels").iterdir())
    assert listed == present, f"tables list {listed}, folder holds {present}"
    nuclei = pd.read_csv(out / "nuclei.csv")
    assert len(nuclei) == table["count"].sum(), "nuclei.csv and counts.csv disagree"
    assert len({n.casefold() for n in table.index}) == len(table), "names equal letter case aside"


def one_line(err: str, *words: str) -> str:
    lines = [line for line in err.strip().splitlines() if line.startswith("nuclei:")]
    assert "Traceback" not in err, "a traceback"
    assert len(lines) == 1, f"{len(lines)} lines: {err.strip()[:300]}"
    for word in words:
        assert word in lines[0], f"{word!r} not in {lines[0]!r}"
    return lines[0]


# --------------------------------------------------------------------------- 1. names


@case("cells.png, cells.tif, cells-png.png in one folder: three outputs")
def _(tmp: Path) -> str:
    for i, name in enumerate(("cells.png", "cells.tif", "cells-png.png")):
        save(tmp / "in" / name, nuclei_image(seed=i))
    status, err = segment(tmp / "in", "-o", tmp / "out")
    assert status == 0, err
    tables_match_files(tmp / "out")
    assert len(counts(tmp / "out")) == 3
    return ", ".join(counts(tmp / "out").index)


@case("Cells.png and cells.png (letter case only): two outputs, safe on macOS/Windows")
def _(tmp: Path) -> str:
    save(tmp / "in" / "Cells.png"), save(tmp / "in" / "cells.png", nuclei_image(seed=3))
    status, err = segment(tmp / "in", "-o", tmp / "out")
    assert status == 0, err
    tables_match_files(tmp / "out")
    return ", ".join(counts(tmp / "out").index)


@case("x.tif with two pages beside x_p0.png: three outputs")
def _(tmp: Path) -> str:
    (tmp / "in").mkdir()
    tifffile.imwrite(tmp / "in" / "x.tif", np.stack([nuclei_image(), nuclei_image(seed=1)]))
    save(tmp / "in" / "x_p0.png", nuclei_image(seed=2))
    status, err = segment(tmp / "in", "-o", tmp / "out")
    assert status == 0, err
    tables_match_files(tmp / "out")
    assert len(counts(tmp / "out")) == 3
    return ", ".join(counts(tmp / "out").index)


@case("the same inputs in another order: the same names")
def _(tmp: Path) -> str:
    files = [save(tmp / "in" / n, nuclei_image(seed=i)) for i, n in enumerate(("cells.png", "cells.tif", "cells-png.png"))]
    names = []
    for order in (files, files[::-1]):
        status, err = segment(*order, "-o", tmp / "out")
        assert status == 0, err
        names.append(dict(zip(counts(tmp / "out")["source"], counts(tmp / "out").index, strict=True)))
    assert names[0] == names[1], names
    return "stable"


# --------------------------------------------------------------------------- 2. file system limits


@case("output folder name of 300 characters: one line, exit 2")
def _(tmp: Path) -> str:
    status, err = segment(save(tmp / "a.png"), "-o", tmp / ("o" * 300))
    assert status == 2, status
    return one_line(err, "cannot write")[:90] + "..."


for _sub in ("labels", "overlays"):
    @case(f"'{_sub}' is a file in the output folder: one line, exit 2")
    def _(tmp: Path, sub: str = _sub) -> str:
        (tmp / "out").mkdir()
        (tmp / "out" / sub).write_text("not a folder")
        status, err = segment(save(tmp / "a.png"), "-o", tmp / "out")
        assert status == 2, status
        return one_line(err, sub, "is a file, not a folder")[-60:]


@case("labels/a.tif is a folder: a fails in one line, its cleanup does not stop b")
def _(tmp: Path) -> str:
    (tmp / "out" / "labels" / "a.tif").mkdir(parents=True)
    status, err = segment(save(tmp / "a.png"), save(tmp / "b.png"), "-o", tmp / "out")
    assert status == 1, status
    table = counts(tmp / "out")
    assert list(table["status"]) == ["failed", "ok"], table["status"]
    return one_line(err, "a.tif")[-70:]


@case("248-character file name, in .png and .tif: shortened names, the next input done")
def _(tmp: Path) -> str:
    stem = "nucleus_" * 31
    save(tmp / "in" / f"{stem}.png"), save(tmp / "in" / f"{stem}.tif", nuclei_image(seed=1))
    save(tmp / "in" / "zz-after.png", nuclei_image(seed=2))
    status, err = segment(tmp / "in", "-o", tmp / "out")
    assert status == 0, err
    tables_match_files(tmp / "out")
    names = list(counts(tmp / "out").index)
    assert len(names) == 3 and max(len(n) for n in names) <= 120
    return f"longest name {max(len(n) for n in names)} characters"


@case("248-character file name alone, twice: the same short name")
def _(tmp: Path) -> str:
    source = save(tmp / ("nucleus_" * 31 + ".png"))
    names = []
    for _ in range(2):
        status, err = segment(source, "-o", tmp / "out")
        assert status == 0, err
        names.append(counts(tmp / "out").index[0])
    assert names[0] == names[1]
    return names[0][-24:]


# --------------------------------------------------------------------------- 3. odd inputs


@case("--recursive into a symbolic link to a folder: its images are read")
def _(tmp: Path) -> str:
    save(tmp / "data" / "a.png"), save(tmp / "elsewhere" / "b.png", nuclei_image(seed=1))
    (tmp / "data" / "linked").symlink_to(tmp / "elsewhere", target_is_directory=True)
    status, err = segment(tmp / "data", "--recursive", "-o", tmp / "out")
    assert status == 0, err
    assert sorted(counts(tmp / "out").index) == ["a", "b"]
    return "a, linked/b"


@case("--recursive through a loop of symbolic links: ends, each image once")
def _(tmp: Path) -> str:
    save(tmp / "data" / "a.png"), save(tmp / "data" / "sub" / "b.png", nuclei_image(seed=1))
    (tmp / "data" / "sub" / "up").symlink_to(tmp / "data", target_is_directory=True)
    status, err = segment(tmp / "data", "--recursive", "-o", tmp / "out")
    assert status == 0, err
    assert sorted(counts(tmp / "out").index) == ["a", "b"]
    return "2 images"


@case("cd data && nuclei segment a.png -o . : a named file inside the output folder is read")
def _(tmp: Path) -> str:
    save(tmp / "a.png")
    status, err = segment("a.png", "-o", ".", cwd=tmp)
    assert status == 0, err
    return f"{counts(tmp).loc['a', 'count']} nuclei"


@case("a named FIFO among the inputs: one line saying what it is, the rest segmented")
def _(tmp: Path) -> str:
    os.mkfifo(tmp / "pipe.png")
    status, err = segment(save(tmp / "a.png"), tmp / "pipe.png", "-o", tmp / "out")
    assert status == 1, status
    assert counts(tmp / "out").loc["a", "status"] == "ok"
    return one_line(err, "named pipe")[-60:]


@case("a named device (/dev/null): one line, the rest segmented")
def _(tmp: Path) -> str:
    status, err = segment(save(tmp / "a.png"), "/dev/null", "-o", tmp / "out")
    assert status == 1, status
    assert counts(tmp / "out").loc["a", "status"] == "ok"
    return one_line(err, "character device")[-60:]


@case("a folder holding a FIFO named x.png and a broken link: not opened, named as skipped")
def _(tmp: Path) -> str:
    save(tmp / "in" / "a.png")
    os.mkfifo(tmp / "in" / "x.png")
    (tmp / "in" / "gone.png").symlink_to(tmp / "nowhere.png")
    status, err = segment(tmp / "in", "-o", tmp / "out")
    assert status == 0, err
    return one_line(err, "skipped 2 files", "x.png", "gone.png")[:70] + "..."


# --------------------------------------------------------------------------- 4. two runs, one folder


def holder(out: Path) -> subprocess.Popen:
    """Another process holding the output folder's lock until its stdin closes."""
    code = "import sys; from pipeline.batch.lock import folder_lock\nwith folder_lock(sys.argv[1]):\n print('held', flush=True); sys.stdin.read()"
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.stdout.readline().strip() == "held"
    return proc


@case("a second run while another writes to the folder: refused in one line naming its PID")
def _(tmp: Path) -> str:
    (tmp / "out").mkdir()
    other = holder(tmp / "out")
    try:
        status, err = segment(save(tmp / "a.png"), "-o", tmp / "out")
    finally:
        other.kill(), other.wait()
    assert status == 2, status
    return one_line(err, f"PID {other.pid}", "--wait")[:90] + "..."


@case("the same with --wait: waits, then runs")
def _(tmp: Path) -> str:
    (tmp / "out").mkdir()
    other = holder(tmp / "out")
    start = time.perf_counter()
    run = spawn(save(tmp / "a.png"), "-o", tmp / "out", "--wait")
    time.sleep(8)
    assert run.poll() is None, "did not wait"
    other.stdin.close(), other.wait()
    _, err = run.communicate(timeout=300)
    assert run.returncode == 0, err
    tables_match_files(tmp / "out")
    return f"waited, done after {time.perf_counter() - start:.0f} s"


@case("a stale lock left by a killed run: taken over with a note")
def _(tmp: Path) -> str:
    (tmp / "out").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (tmp / "out" / ".nuclei.lock").write_text(f"{dead.stdout.strip()}\tlab-pc\t2026-01-01 09:00:00\n")
    status, err = segment(save(tmp / "a.png"), "-o", tmp / "out")
    assert status == 0, err
    return one_line(err, "stale lock")[-50:]


@case("two runs started together with --wait: both finish, the tables list every label file")
def _(tmp: Path) -> str:
    runs = [spawn(save(tmp / f"{n}.png", nuclei_image(seed=k)), "-o", tmp / "out", "--wait")
            for k, n in enumerate("ab")]
    for run in runs:
        _, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
    tables_match_files(tmp / "out")
    assert sorted(counts(tmp / "out").index) == ["a", "b"]
    return "a, b listed"


@case("a run killed (SIGKILL) mid-batch, then rerun: the lock is free, the tables match")
def _(tmp: Path) -> str:
    for k in range(4):
        save(tmp / "in" / f"i{k}.png", nuclei_image(seed=k))
    run = spawn(tmp / "in", "-o", tmp / "out")
    deadline = time.time() + 120
    while not list((tmp / "out").glob("labels/*.tif")) and time.time() < deadline:
        time.sleep(0.2)
    run.kill(), run.wait()
    status, err = segment(tmp / "in", "-o", tmp / "out")
    assert status == 0, err
    tables_match_files(tmp / "out")
    return f"{len(counts(tmp / 'out'))} images listed"


# --------------------------------------------------------------------------- 5. orientation


@case("a JPEG with EXIF Orientation 6: labels as viewers show it, noted in counts.csv")
def _(tmp: Path) -> str:
    image = nuclei_image((160, 240))
    exif = Image.new("L", (1, 1)).getexif()
    exif[274] = 6
    save(tmp / "photo.jpg", image, exif=exif.tobytes(), quality=95)
    status, err = segment(tmp / "photo.jpg", "-o", tmp / "out")
    assert status == 0, err
    row = counts(tmp / "out").loc["photo"]
    assert tifffile.imread(tmp / "out" / "labels" / "photo.tif").shape == (240, 160)
    return f"{row['orientation']}; {row['count']} nuclei"


@case("a TIFF with Orientation 3 (upside down): labels turned, noted")
def _(tmp: Path) -> str:
    image = nuclei_image()
    image[:40] = 20  # top empty as stored: bottom empty as shown
    tifffile.imwrite(tmp / "t.tif", image, extratags=[(274, "H", 1, 3, True)])
    status, err = segment(tmp / "t.tif", "-o", tmp / "out")
    assert status == 0, err
    labels = tifffile.imread(tmp / "out" / "labels" / "t.tif")
    assert labels[-40:].max() == 0 and labels[:40].max() > 0
    return counts(tmp / "out").loc["t", "orientation"]


# --------------------------------------------------------------------------- 6. image type, diameter


@case("--image-type brightfield on a fluorescence image: typed and flagged so")
def _(tmp: Path) -> str:
    status, err = segment(save(tmp / "a.png"), "-o", tmp / "out", "--image-type", "brightfield")
    assert status == 0, err
    row = counts(tmp / "out").loc["a"]
    assert row["image_type"] == "brightfield" and "bright-field" in row["flag"]
    return f"{row['image_type']}, diameter {row['diameter_px']} (estimated: {row['diameter_estimated']})"


@case("--image-type fluo-small on dark nuclei on a bright background: the diameter is estimated")
def _(tmp: Path) -> str:
    save(tmp / "bf.png", 255 - nuclei_image(radius=12, spacing=48))
    status, err = segment(tmp / "bf.png", "-o", tmp / "out", "--image-type", "fluo-small")
    assert status == 0, err
    row = counts(tmp / "out").loc["bf"]
    assert row["image_type"] == "fluo-small" and bool(row["diameter_estimated"])
    return f"diameter {row['diameter_px']} px estimated, {row['count']} nuclei"


@case("--diameter on a bright-field image: the flag does not say 'unless --diameter is given'")
def _(tmp: Path) -> str:
    save(tmp / "bf.png", 255 - nuclei_image())
    status, err = segment(tmp / "bf.png", "-o", tmp / "out", "--diameter", "16")
    assert status == 0, err
    row = counts(tmp / "out").loc["bf"]
    assert row["image_type"] == "brightfield" and "--diameter" not in row["flag"], row["flag"]
    return row["flag"][:60] + "..."


@case("--diameter 10000 on a 256 x 256 image: flagged")
def _(tmp: Path) -> str:
    status, err = segment(save(tmp / "a.png", nuclei_image((256, 256))), "-o", tmp / "out", "--diameter", "10000")
    assert status == 0, err
    row = counts(tmp / "out").loc["a"]
    assert "too large" in str(row["flag"]), row["flag"]
    return f"{row['count']} nuclei, flag: {row['flag'][:50]}..."


@case("--image-type phase-contrast (unknown): usage error, exit 2")
def _(tmp: Path) -> str:
    status, err = segment(save(tmp / "a.png"), "-o", tmp / "out", "--image-type", "phase-contrast")
    assert status == 2, status
    return err.strip().splitlines()[-1][-60:]


def run_cases(words: str, keep: bool) -> tuple[int, int]:
    """Run the cases of :data:`CASES` whose title holds ``words``: (handled, run)."""
    handled = 0
    root = tempfile.mkdtemp(prefix="hostile-")
    try:
        for k, (title, check) in enumerate(CASES, start=1):
            if words not in title:
                continue
            tmp = Path(root) / f"case{k:02d}"
            tmp.mkdir()
            start = time.perf_counter()
            try:
                detail, ok = check(tmp), True
            except Exception as exc:  # noqa: BLE001 - a case not handled, whatever the reason
                detail, ok = f"{type(exc).__name__}: {str(exc).strip()[:200]}", False
            handled += ok
            print(f"{'handled' if ok else 'NOT HANDLED'}  {k:2d}. {title} ({time.perf_counter() - start:.1f} s)\n"
                  f"              {detail}", flush=True)
    finally:
        if not keep:
            shutil.rmtree(root, ignore_errors=True)
    return handled, sum(words in title for title, _ in CASES)


def run_tests(path: Path = TESTS) -> tuple[int, int]:
    """Run the tests marked :data:`MARKER` under ``path`` (the newer commands' cases) with pytest in a
    child process, one line per test that failed: (passed or skipped, run)."""
    with tempfile.TemporaryDirectory(prefix="hostile-tests-") as tmp:
        report = Path(tmp) / "report.xml"
        done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={report}",
                               "-m", MARKER, str(path)], cwd=ROOT, capture_output=True, text=True)
        if not report.is_file():
            raise NucleiError(f"{path}: pytest wrote no report (exit {done.returncode}): {done.stdout[-300:]}")
        cases = list(ElementTree.parse(report).getroot().iter("testcase"))
    failed = 0
    for case in cases:
        problem = case.find("failure") if case.find("failure") is not None else case.find("error")
        if problem is not None:
            failed += 1
            print(f"NOT HANDLED  {case.get('classname')}::{case.get('name')}\n"
                  f"              {(problem.get('message') or '').strip()[:200]}", flush=True)
    return len(cases) - failed, len(cases)


def main() -> int:
    global MODEL
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=MODEL)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders")
    parser.add_argument("-k", metavar="WORDS", default="",
                        help=f"run only the cases whose title holds WORDS (and not the tests marked {MARKER})")
    parser.add_argument("--no-tests", action="store_true", help=f"leave out the tests marked {MARKER}")
    args = parser.parse_args()
    MODEL = args.model.resolve()
    os.environ.setdefault("CI", "1")  # no progress bars
    handled, ran = run_cases(args.k, args.keep)
    print(f"{handled} of {ran} cases handled")
    if args.no_tests or args.k:
        return 0 if handled == ran else 1
    passed, tests = run_tests()
    print(f"tests marked {MARKER} (the newer commands' cases): {passed} of {tests} handled\n"
          f"{handled + passed} of {ran + tests} cases handled in all")
    return 0 if handled == ran and passed == tests else 1


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
