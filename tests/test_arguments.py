"""Number options: one checker (`pipeline.arguments.number`) and one wording in every command; a user's
error is one line and an exit status (`pipeline.errors.run_main`) in `nuclei` and the maintainers' scripts."""

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.arguments import POSITIVE, number
from pipeline.cli import main
from pipeline.config.params import ROOT
from pipeline.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    NucleiError,
    UsageError,
    run_main,
)

from .conftest import load_script


@pytest.mark.parametrize(("kind", "text", "value"), [
    (POSITIVE, "2.5", 2.5),
    (POSITIVE, "1e-3", 0.001),
    (number(at_least=0, none=True), "0", 0.0),
    (number(at_least=0, none=True), "None", None),
    (number(at_least=0, at_most=1, none=True), "null", None),
    (number(at_least=0, at_most=1), "1", 1.0),
    (number(integer=True, at_least=1, at_most=100), "100", 100),
])
def test_numbers_within_their_bounds_are_read(kind, text, value):
    assert kind(text) == value and type(kind(text)) is type(value)


@pytest.mark.parametrize(("kind", "text", "message"), [
    (POSITIVE, "0", "0: expected a number above 0"),
    (POSITIVE, "-2", "-2: expected a number above 0"),
    (POSITIVE, "nan", "nan: expected a number above 0"),
    (POSITIVE, "inf", "inf: expected a number above 0"),
    (POSITIVE, "twenty", "twenty: expected a number above 0"),
    (POSITIVE, "none", "none: expected a number above 0"),  # 'none' only where it means something
    (number(at_least=0, none=True), "-1", "-1: expected a number >= 0 or 'none'"),
    (number(at_least=0, at_most=1), "1.5", "1.5: expected a number from 0 to 1"),
    (number(integer=True, at_least=1), "2.5", "2.5: expected a whole number >= 1"),
    (number(integer=True, at_least=1, at_most=100), "0", "0: expected a whole number from 1 to 100"),
])
def test_a_number_out_of_bounds_says_what_was_expected(kind, text, message):
    with pytest.raises(argparse.ArgumentTypeError) as error:
        kind(text)
    assert str(error.value) == message


@pytest.mark.parametrize(("argv", "message"), [
    (["segment", "in", "-o", "out", "--diameter", "0"], "argument --diameter: 0: expected a number above 0"),
    (["segment", "in", "-o", "out", "--workers", "0"], "argument --workers: 0: expected a whole number >= 1"),
    (["export", "labels", "-o", "out", "--pixel-size", "-1"],
     "argument --pixel-size: -1: expected a number above 0"),
    (["tune", "--marker", "0.7", "1.5"], "argument --marker: 1.5: expected a number from 0 to 1"),
    (["tune", "--dense-mask", "none", "2"], "argument --dense-mask: 2: expected a number from 0 to 1 or 'none'"),
    (["pack", "pack", "a", "b.tar", "--part-mib", "-5"], "argument --part-mib: -5: expected a number above 0"),
])
def test_commands_reject_a_bad_number_before_any_work(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_:
        main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].endswith(f"error: {message}") and "Traceback" not in err
    assert list(tmp_path.iterdir()) == []  # nothing written


@pytest.mark.parametrize(("script", "argv", "message"), [
    ("ship_model.py", ["--params", "p.yaml", "--stained-diameter", "0"],
     "argument --stained-diameter: 0: expected a number above 0"),
    ("type_subset.py", ["prepared", "-o", "out", "--val-fold", "-1"],
     "argument --val-fold: -1: expected a whole number >= 0"),
    ("tune_routed.py", ["model", "--marker", "0.7", "1.5"], "argument --marker: 1.5: expected a number from 0 to 1"),
])
def test_the_maintainers_scripts_use_the_same_checker(script, argv, message, tmp_path, monkeypatch, capsys):
    """The maintainers' scripts (``ship_model.py``, ``type_subset.py``, ``tune_routed.py``) read their
    numbers with :func:`pipeline.arguments.number` too: one wording, before any work."""
    module = load_script(script)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr("sys.argv", [script, *argv])
    with pytest.raises(SystemExit) as exit_:
        module.main()
    assert exit_.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("raised", "status", "line"), [
    (UsageError("a.tif: no such file"), EXIT_USAGE, "prog: error: a.tif: no such file"),
    (NucleiError("model/config.yaml: bad key"), EXIT_FAILED, "prog: error: model/config.yaml: bad key"),
    (KeyboardInterrupt(), EXIT_INTERRUPTED, "prog: interrupted"),
])
def test_run_main_turns_a_users_error_into_one_line_and_its_exit_status(raised, status, line, capsys):
    def main():
        raise raised

    assert run_main(main, "prog") == status
    assert capsys.readouterr().err.splitlines() == [line]
    assert run_main(lambda: None, "prog") == EXIT_OK and run_main(lambda: 3, "prog") == 3
    with pytest.raises(ZeroDivisionError):  # a bug keeps its traceback
        run_main(lambda: 1 / 0, "prog")


@pytest.mark.parametrize("script", ["benchmarks/bench_sources.py", "benchmarks/bench_robustness.py"])
def test_the_benchmarks_name_a_missing_model_in_one_line(script, tmp_path):
    """The benchmark scripts report a user's error as ``nuclei`` does: one line, exit status 1."""
    missing = tmp_path / "no-model"
    done = subprocess.run([sys.executable, "-m", f"benchmarks.{Path(script).stem}", "--model", str(missing)],
                          capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == EXIT_FAILED, done.stderr
    assert done.stderr.strip().splitlines() == [f"{Path(script).name}: error: {missing}: model directory not found"]
