"""``nuclei score``: the sample solution end to end, and every malformed input."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main as nuclei
from pipeline.data.rle import encode_labels
from pipeline.errors import NucleiError
from pipeline.stages.score import score_submission


def score_line(text: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith("DSB2018 score ")]
    assert len(lines) == 1, text
    return float(lines[0].split()[-1])


@pytest.fixture
def tiny_solution(tmp_path):
    """Solution CSV of two 6 x 5 images (two nuclei, and none) and the tables."""
    labels = np.zeros((6, 5), np.int32)
    labels[0:3, 0:2] = 1
    labels[4:6, 2:5] = 2
    rles = encode_labels(labels)
    solution = pd.DataFrame(
        {
            "ImageId": ["img1", "img1", "img2"],
            "EncodedPixels": [*rles, ""],
            "Height": [6, 6, 6],
            "Width": [5, 5, 5],
            "Usage": ["Public", "Public", "Private"],
        }
    )
    path = tmp_path / "solution.csv"
    solution.to_csv(path, index=False)
    return path, solution


def write_sub(tmp_path, rows, name="submission.csv"):
    path = tmp_path / name
    pd.DataFrame(rows, columns=["ImageId", "EncodedPixels"]).to_csv(path, index=False)
    return path


def test_sample_solution_against_itself(sample_solution, tmp_path, capsys):
    per_image = tmp_path / "out" / "per_image.csv"
    assert nuclei(["score", str(sample_solution), str(sample_solution), "--per-image", str(per_image)]) == 0
    out = capsys.readouterr().out
    assert score_line(out) == 1.0
    assert "AJI" in out and "F1@0.5" in out
    table = pd.read_csv(per_image)
    assert len(table) == pd.read_csv(sample_solution)["ImageId"].nunique() >= 16
    assert (table["dsb_score"] == 1.0).all() and table["in_submission"].all()
    assert [p.name for p in per_image.parent.iterdir()] == ["per_image.csv"]


def test_sample_solution_against_an_empty_submission(sample_solution, tmp_path, capsys):
    ids = pd.read_csv(sample_solution)["ImageId"].unique()
    empty = write_sub(tmp_path, [(i, "") for i in ids])
    assert nuclei(["score", str(empty), str(sample_solution)]) == 0
    captured = capsys.readouterr()
    assert score_line(captured.out) == 0.0
    assert "warning" not in captured.err


def test_missing_and_extra_images(tiny_solution, tmp_path, capsys):
    path, solution = tiny_solution
    sub = write_sub(tmp_path, [("img1", r) for r in solution["EncodedPixels"][:2]] + [("other", "1 1")])
    assert nuclei(["score", str(sub), str(path)]) == 0
    captured = capsys.readouterr()
    # img1 perfect, img2 (no nuclei) missing from the submission: scored 0
    assert score_line(captured.out) == 0.5
    assert "Public: 1.0000 (1 images)" in captured.out and "Private: 0.0000 (1 images)" in captured.out
    assert f"warning: {sub}: 1 image id(s) not in the solution, ignored: other" in captured.err
    assert f"warning: {sub}: 1 solution image(s) missing, scored 0" in captured.err


def test_disjoint_image_ids_fail(tiny_solution, tmp_path, capsys):
    path, _ = tiny_solution
    sub = write_sub(tmp_path, [("foo", "1 2"), ("bar", "")])
    assert nuclei(["score", str(sub), str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [
        f"nuclei: error: {sub}: no image id in common with {path} (2 vs 2 images); is it the matching solution?"
    ]


def test_image_without_nuclei_predicted_empty_scores_one(tiny_solution):
    _, solution = tiny_solution
    sub = pd.DataFrame({"ImageId": ["img1", "img2"], "EncodedPixels": ["1 3", ""]})
    summary, per_image = score_submission(sub, solution)
    assert per_image["ImageId"].tolist() == ["img1", "img2"]
    assert per_image.loc[1, "dsb_score"] == 1.0
    # img1: the first nucleus (6 px) predicted as 3 px (IoU 0.5: no match), the second missed
    assert per_image.loc[0, "dsb_score"] == 0.0 and per_image.loc[0, "n_pred"] == 1
    assert summary["dsb_score"] == 0.5 and summary["n_missing"] == 0 and summary["n_images"] == 2


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ("1 2 3", "odd number of values (3); expected start/length pairs"),
        ("29 5", "run 1: pixels 29..33 beyond the image's 30 pixels"),
        ("0 2", "run 1: start 0 is not positive (pixels are numbered from 1)"),
        ("1 4 3 2", "runs overlap (pixels 1..4 and 3..4)"),
        ("7 2 1 2", "runs not in ascending order (start 1 after 7)"),
        ("1 a", "non-integer value 'a'"),
    ],
)
def test_malformed_rle_fails_with_one_line_per_problem(tiny_solution, tmp_path, capsys, rle, message):
    path, _ = tiny_solution
    sub = write_sub(tmp_path, [("img1", "1 1"), ("img1", rle), ("img2", "")])
    assert nuclei(["score", str(sub), str(path)]) == 1
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.splitlines() == [f"nuclei: error: {sub}: image img1, line 3: {message}"]


def test_overlapping_nuclei_and_several_problems(tiny_solution, tmp_path, capsys):
    path, _ = tiny_solution
    sub = write_sub(tmp_path, [("img1", "1 5"), ("img1", "4 2"), ("img2", "3"), ("img2", "40 1")])
    assert nuclei(["score", str(sub), str(path)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert errors == [
        f"nuclei: error: {sub}: image img2, line 4: odd number of values (1); expected start/length pairs",
        f"nuclei: error: {sub}: image img2, line 5: run 1: pixels 40..40 beyond the image's 30 pixels",
        f"nuclei: error: {sub}: image img1, lines 2 and 3: nuclei overlap (they share pixels)",
    ]


def test_malformed_solution(tmp_path, capsys):
    solution = tmp_path / "solution.csv"
    solution.write_text("ImageId,EncodedPixels,Height,Width,Usage\na,1 2,6,5,Public\na,1 2,7,5,Public\nb,1 1,x,5,Public\n")
    sub = write_sub(tmp_path, [("a", "1 2")])
    assert nuclei(["score", str(sub), str(solution)]) == 1
    errors = capsys.readouterr().err.splitlines()
    assert f"nuclei: error: {solution}: image b, line 4: Height/Width 'x'/'5' is not a positive integer" in errors
    assert f"nuclei: error: {solution}: image a: rows disagree on Height/Width" in errors


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "no such file"),
        ("", "empty file"),
        ("ImageId,Pixels\na,1 2\n", "missing column(s) EncodedPixels"),
        ("ImageId,EncodedPixels\n\"a,1 2\n", "not a readable CSV file"),
        (b"\xff\xfe\x00\x81\x00", "not a readable CSV file"),
    ],
)
def test_bad_submission_files(tiny_solution, tmp_path, capsys, content, message):
    path, _ = tiny_solution
    sub = tmp_path / "bad.csv"
    if isinstance(content, bytes):
        sub.write_bytes(content)
    elif content is not None:
        sub.write_text(content)
    assert nuclei(["score", str(sub), str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"nuclei: error: {sub}: ") and message in err and len(err.splitlines()) == 1


def test_solution_missing_columns_names_the_file(tmp_path, capsys):
    solution = tmp_path / "sol.csv"
    solution.write_text("ImageId,EncodedPixels\na,1 2\n")
    sub = write_sub(tmp_path, [("a", "1 2")])
    assert nuclei(["score", str(sub), str(solution)]) == 1
    assert f"{solution}: missing column(s) Height, Width" in capsys.readouterr().err


def test_library_function_raises_on_malformed_tables(tiny_solution):
    _, solution = tiny_solution
    bad = pd.DataFrame({"ImageId": ["img1", "img1"], "EncodedPixels": ["1 2 3", "99 1"]})
    with pytest.raises(NucleiError, match=r"sub\.csv: image img1, line 2: odd number .* \(and 1 more problems\)"):
        score_submission(bad, solution, sub_name="sub.csv")


@pytest.mark.parametrize("where", ["folder", "under_a_file", "disk_full"])
def test_unwritable_per_image_output_is_one_line(sample_solution, tmp_path, capsys, monkeypatch, where):
    import os
    from pathlib import Path

    (tmp_path / "file").write_text("x")
    out = {"folder": tmp_path, "under_a_file": tmp_path / "file" / "p.csv", "disk_full": tmp_path / "p.csv"}[where]
    if where == "disk_full":
        real = os.replace

        def replace(src, dst):
            if Path(dst) == out:
                raise OSError(28, "No space left on device")
            return real(src, dst)

        monkeypatch.setattr(os, "replace", replace)
    assert nuclei(["score", str(sample_solution), str(sample_solution), "--per-image", str(out)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0] and "cannot write" in err[0]
    assert not list(tmp_path.glob(".p.*"))
