"""DVC experiments keep their metrics: `dvc exp run` -> `dvc exp show` -> `dvc exp diff` in a git
copy of the project with tiny parameters (the metrics files are committed by each experiment, so
they must not be git-ignored), `dvc metrics show` prints the headline only, and `dvc plots show`
writes into a git-ignored folder."""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from ..conftest import ROOT, SAMPLE_ROOT

pytestmark = pytest.mark.slow


def _run(args: list[str], cwd: Path) -> str:
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               PYTHONPATH=str(cwd),  # the stages run the copied pipeline/, whatever is installed
               GIT_AUTHOR_NAME="t", GIT_AUTHOR_EMAIL="t@t", GIT_COMMITTER_NAME="t", GIT_COMMITTER_EMAIL="t@t")
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def _dvc(args: list[str], cwd: Path) -> str:
    return _run([sys.executable, "-m", "dvc", *args], cwd)


def _metrics_of(show: list, name: str) -> tuple[dict, dict]:
    """(metrics, params) of experiment ``name`` in ``dvc exp show --json``."""
    for baseline in show:
        for exp in baseline.get("experiments") or []:
            if exp.get("name") == name:
                data = exp["revs"][0]["data"]
                return data["metrics"], data["params"]
    raise AssertionError(f"experiment {name} not in dvc exp show")


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    """A git copy of the project, tiny parameters, two experiments: a (train.epochs=2), b (a + min_size)."""
    root = tmp_path_factory.mktemp("exp")
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(ROOT / name, root / name)
    shutil.copytree(ROOT / "pipeline", root / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["data"].update(sources={"dsb2018": {"root": str(SAMPLE_ROOT), "layout": "kaggle"}}, workers=0)
    params["targets"]["workers"] = 0
    params["model"].update(arch="unet", depth=2, width=4)
    params["train"].update(epochs=1, batch_size=2, samples_per_epoch=4, workers=0)
    params["augment"]["crop"] = 64
    params["predict"].update(tta="none", device="cpu")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    _run(["git", "init", "-q"], root)
    _dvc(["init", "-q"], root)
    _run(["git", "add", "-A"], root)
    _run(["git", "commit", "-qm", "tiny project"], root)
    _dvc(["exp", "run", "-q", "-n", "a", "-S", "train.epochs=2"], root)
    _dvc(["exp", "run", "-q", "-n", "b", "-S", "postprocess.min_size=11"], root)
    return root


def test_exp_show_has_metrics_and_params_of_every_experiment(repo):
    show = json.loads(_dvc(["exp", "show", "--json"], repo))
    for name in ("a", "b"):
        metrics, params = _metrics_of(show, name)
        evaluate = metrics["metrics/metrics.json"]["data"]
        train = metrics["models/trained/dvclive/metrics.json"]["data"]
        assert 0.0 <= evaluate["dsb_score"] <= 1.0 and "pixel_dice" not in evaluate
        assert "loss" in train["train"]
        assert params["params.yaml"]["data"]["train"]["epochs"] == 2
    assert _metrics_of(show, "b")[1]["params.yaml"]["data"]["postprocess"]["min_size"] == 11
    table = pd.read_csv(io.StringIO(_dvc(["exp", "show", "--csv"], repo)), dtype=str, keep_default_na=False)
    rows = table[table["Experiment"].isin(["a", "b"])]
    assert len(rows) == 2 and not (rows == "!").any().any()  # '!': a metric or param not found


def test_exp_diff_shows_metrics_and_params(repo):
    diff = json.loads(_dvc(["exp", "diff", "a", "b", "--json", "--all"], repo))
    assert "dsb_score" in diff["metrics"]["metrics/metrics.json"]
    assert diff["params"]["params.yaml"]["postprocess.min_size"] == {"old": 10, "new": 11, "diff": 1}


def test_metrics_show_is_the_headline_and_plots_are_ignored(repo):
    table = _dvc(["metrics", "show"], repo)
    assert "dsb_score" in table and "pixel_dice" not in table and "p@0.5" not in table
    assert max(map(len, table.splitlines())) < 200  # was ~100 columns
    _dvc(["plots", "show", "-q"], repo)
    assert (repo / "dvc_plots" / "index.html").is_file()
    assert "dvc_plots" not in _run(["git", "status", "--porcelain"], repo)
