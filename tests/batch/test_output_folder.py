"""The output folder of ``nuclei segment``: unique and short names, the file system's limits,
cleanup that never throws, one run at a time, tables that list exactly the label files present,
``--image-type`` and ``--diameter`` on the command line (issue 41, classes 1, 2, 4 and 6)."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pandas as pd
import pytest
from PIL import Image

from pipeline.batch.lock import LOCK_NAME, folder_lock
from pipeline.batch.output_folder import MAX_NAME_BYTES, fit_name, output_names, remove_files
from pipeline.batch.segment import segment_images

from ..conftest import counts_of, disks, run_cli


def save(path: Path, flip: bool = False) -> Path:
    image, _ = disks()
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image[:, ::-1].copy() if flip else image).save(path)
    return path


def label_files(out: Path) -> list[str]:
    return sorted(f"labels/{p.name}" for p in (out / "labels").iterdir())


# --------------------------------------------------------------------------- names


def test_output_names_are_unique_letter_case_aside_by_construction(tmp_path):
    sources = [tmp_path / n for n in ("cells.png", "cells.tif", "cells-png.png", "a/x.png", "b/X.png", "Cells-TIF.png", "Y.png", "y.png")]
    names = output_names(sources)
    assert len({n.casefold() for n in names}) == len(names)
    assert names[2] == "cells-png"  # the plain name stays; the disambiguated one moves aside
    assert names[5] == "Cells-TIF" and names[0].startswith("cells-png-") and names[1].startswith("cells-tif-")
    assert names[3:5] == ["x-a", "X-b"]  # told apart by their folders
    assert [n[:2] for n in names[6:]] == ["Y-", "y-"] and len(names[6]) == 10  # by their path's hash
    assert output_names(sources[::-1]) == names[::-1]  # the same whatever the order


def test_same_name_but_for_letter_case_gets_two_outputs(tmp_path, model_dir):  # noqa: F811
    """Names differing only in letter case collide on macOS and Windows: never one file for two."""
    save(tmp_path / "in" / "cells.png"), save(tmp_path / "in" / "cells.tif", flip=True), save(tmp_path / "in" / "cells-png.png")
    save(tmp_path / "in" / "Cells-Tif.png")
    counts = segment_images([tmp_path / "in"], tmp_path / "out", model_dir)
    names = list(counts["image"])
    assert len(names) == 4 and len({n.casefold() for n in names}) == 4
    assert sorted(counts["labels_file"]) == label_files(tmp_path / "out")


def test_long_names_are_shortened_deterministically(tmp_path, model_dir):  # noqa: F811
    stem = "nucleus_" * 31  # 248 characters: the temporary file of its labels would not fit in 255 bytes
    save(tmp_path / f"{stem}.png"), save(tmp_path / f"{stem}.tif", flip=True), save(tmp_path / "after.png")
    out = tmp_path / "out"
    counts = segment_images([tmp_path], out, model_dir).set_index("image")
    assert (counts["status"] == "ok").all() and len(counts) == 3  # the later input was processed too
    assert all(len(name.encode()) <= MAX_NAME_BYTES for name in counts.index)
    assert sorted(counts["labels_file"]) == label_files(out)
    again = segment_images([tmp_path], out, model_dir)
    assert sorted(again["image"]) == sorted(counts.index)  # the same names on a rerun
    assert fit_name("é" * 200) != fit_name("é" * 199 + "e") and len(fit_name("é" * 200).encode()) <= MAX_NAME_BYTES


# --------------------------------------------------------------------------- the file system's limits


def test_an_output_folder_name_too_long_is_one_line(tmp_path, model_dir, capsys):  # noqa: F811
    save(tmp_path / "a.png")
    assert run_cli(tmp_path / "a.png", "-o", tmp_path / ("o" * 300), "--model", model_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write" in err[0] and "Traceback" not in err[0]


@pytest.mark.parametrize("folder", ["labels", "overlays"])
def test_labels_or_overlays_that_are_files_is_one_line(tmp_path, model_dir, capsys, folder):  # noqa: F811
    save(tmp_path / "a.png")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / folder).write_text("a file, not a folder")
    assert run_cli(tmp_path / "a.png", "-o", tmp_path / "out", "--model", model_dir) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and folder in err[0] and "is a file, not a folder" in err[0]


def test_the_cleanup_of_a_failed_image_never_stops_the_batch(tmp_path, model_dir):  # noqa: F811
    """labels/a.tif is a folder: a fails, its cleanup cannot remove it, and b is still segmented."""
    save(tmp_path / "a.png"), save(tmp_path / "b.png")
    out = tmp_path / "out"
    (out / "labels" / "a.tif").mkdir(parents=True)
    counts = segment_images([tmp_path / "a.png", tmp_path / "b.png"], out, model_dir).set_index("image")
    assert list(counts["status"]) == ["failed", "ok"] and "a.tif" in counts.loc["a", "error"]
    assert (out / "labels" / "b.tif").is_file()
    assert remove_files([tmp_path / "a.png" / "x.tif", out / "labels" / "a.tif", tmp_path / "absent"]) == []


# --------------------------------------------------------------------------- one run at a time

HOLD = "import sys; from pipeline.batch.lock import folder_lock\nwith folder_lock(sys.argv[1]):\n print('held', flush=True); sys.stdin.read()"


def hold_lock(folder: Path) -> subprocess.Popen:
    """Another process holding ``folder``'s lock until its stdin is closed."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True, env=env)
    assert holder.stdout.readline().strip() == "held"
    return holder


def test_a_second_run_into_a_folder_in_use_refuses_in_one_line_or_waits(tmp_path, model_dir, capsys):  # noqa: F811
    save(tmp_path / "a.png"), save(tmp_path / "b.png", flip=True)
    out = tmp_path / "out"
    out.mkdir()
    holder = hold_lock(out)
    try:
        assert run_cli(tmp_path / "b.png", "-o", out, "--model", model_dir) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "in use by another nuclei segment run" in err[0] and f"PID {holder.pid}" in err[0]
        assert not (out / "counts.csv").exists()
        threading.Timer(1.0, holder.stdin.close).start()  # the other run ends in a second
        assert run_cli(tmp_path / "b.png", "-o", out, "--model", model_dir, "--wait") == 0
        assert "waiting" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    assert not (out / LOCK_NAME).exists()


def test_a_stale_lock_is_taken_over(tmp_path, model_dir, capsys):  # noqa: F811
    save(tmp_path / "a.png")
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (out / LOCK_NAME).write_text(f"{dead.stdout.strip()}\tsomehost\t2026-01-01 00:00:00\n")
    (out / "labels").mkdir()
    leftover = out / "labels" / ".a.k2x_9abc.tmp.tif"  # what atomic_path leaves when its run is killed
    leftover.write_bytes(b"half")
    assert run_cli(tmp_path / "a.png", "-o", out, "--model", model_dir) == 0
    assert "stale lock" in capsys.readouterr().err and not leftover.exists()
    with folder_lock(out):  # and released again
        assert (out / LOCK_NAME).read_text().split("\t")[0] == str(os.getpid())


def test_the_tables_list_exactly_the_label_files_present(tmp_path, model_dir):  # noqa: F811
    """Two runs one after the other into one folder (as ``--wait`` makes two concurrent runs):
    the tables list both runs' images; an image that a later run replaces or that fails is listed once."""
    for name in ("a", "b", "c"):
        save(tmp_path / f"{name}.png", flip=name == "b")
    out = tmp_path / "out"
    segment_images([tmp_path / "a.png", tmp_path / "b.png"], out, model_dir, pixel_size=0.5)
    segment_images([tmp_path / "b.png", tmp_path / "c.png"], out, model_dir)
    counts, nuclei = counts_of(out), pd.read_csv(out / "nuclei.csv")
    assert sorted(counts.index) == ["a", "b", "c"] and sorted(counts["labels_file"]) == label_files(out)
    assert sorted(nuclei["image"].unique()) == ["a", "b", "c"] and len(nuclei) == counts["count"].sum()
    (out / "labels" / "a.tif").unlink()  # a file the user removed is no longer listed
    (tmp_path / "b.png").write_bytes(b"broken")
    segment_images([tmp_path / "b.png"], out, model_dir)
    counts = counts_of(out)
    assert sorted(counts.index) == ["b", "c"] and counts.loc["b", "status"] == "failed"
    assert sorted(counts["labels_file"].dropna()) == label_files(out) == ["labels/c.tif"]


# --------------------------------------------------------------------------- image type and diameter flags


def test_image_type_and_diameter_on_the_command_line(tmp_path, model_dir):  # noqa: F811
    save(tmp_path / "a.png")
    out = tmp_path / "out"
    assert run_cli(tmp_path / "a.png", "-o", out, "--model", model_dir, "--image-type", "brightfield") == 0
    row = counts_of(out).loc["a"]
    assert row["image_type"] == "brightfield" and "bright-field" in row["flag"]
    assert run_cli(tmp_path / "a.png", "-o", out, "--model", model_dir, "--image-type", "histology") == 0
    assert counts_of(out).loc["a", "image_type"] == "histology"
    with pytest.raises(SystemExit):
        run_cli(tmp_path / "a.png", "-o", out, "--model", model_dir, "--image-type", "phase-contrast")


def test_one_home_for_the_paths_and_the_counts_row():
    """Every module writes the folder's paths and ``counts.csv`` rows through output_folder: a plane's row
    and a slide's row have the same fields, rounded the same way, each one a column of counts.csv."""
    from types import SimpleNamespace

    from pipeline.batch.output_folder import COUNT_COLUMNS, CountsRow, image_files, labels_file, overlay_file

    assert (labels_file("a b"), overlay_file("a b")) == ("labels/a b.tif", "overlays/a b.png")
    assert image_files("x") == ["labels/x.tif", "overlays/x.png", "tables/x.csv", "cells/x.tif", "spots/x.csv",
                                "tracks/x.csv", "tracks/x.xml", "geojson/x.geojson", "rois/x.zip"]
    result = SimpleNamespace(image_type="fluo-small", diameter=17.123456, estimated=True, scale=1.1679999,
                             confidence=0.98765, count_risk=0.12345)
    row = CountsRow.segmented(result, name="x", count=3, median_area_px=12.5, pixel_size=0.5, median_area_um2=3.125,
                              extra={"cells_file": "cells/x.tif"}).fields()
    assert row == {"count": 3, "median_area_px": 12.5, "image_type": "fluo-small", "diameter_px": 17.12,
                   "diameter_estimated": True, "scale": 1.168, "confidence": 0.988, "count_risk": 0.123, "flag": "",
                   "status": "ok",
                   "labels_file": "labels/x.tif", "overlay_file": "overlays/x.png", "median_area_um2": 3.125,
                   "pixel_size_um": 0.5, "cells_file": "cells/x.tif"}
    assert set(row) - {"cells_file"} <= set(COUNT_COLUMNS)
    unscaled = CountsRow(name="x", count=0, median_area_px=float("nan"), image_type="histology", estimated=False,
                         scale=1.0, confidence=1.0, flag="flag").fields()
    assert unscaled["diameter_px"] is None and "median_area_um2" not in unscaled and "pixel_size_um" not in unscaled
    assert unscaled["count_risk"] is None  # labels made elsewhere, a slide: no signals to weigh
    with pytest.raises(TypeError):  # keywords only: no positional 11-argument call
        CountsRow("x", 0, 1.0)
