"""``nuclei submit`` on the embedded sample with a tiny untrained model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from pipeline.cli import main as cli
from pipeline.data.rle import decode_image, validate_submission
from pipeline.model.model_dir import save_model_dir
from pipeline.model.networks import build_model
from pipeline.stages.score import score_submission

ROOT = Path(__file__).resolve().parents[2]
SAMPLE_ROOT = ROOT / "data" / "sample" / "stage1_train"
SAMPLE_SOLUTION = ROOT / "data" / "sample" / "solution.csv"
TINY = {"arch": "unet", "head": "softmax", "depth": 2, "width": 4, "upsampling": "bilinear"}


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A tiny untrained model directory with post-processing thresholds in its config."""
    torch.manual_seed(0)
    model = build_model(TINY)
    path = tmp_path_factory.mktemp("model") / "tiny"
    save_model_dir(path, model, {
        "model": TINY,
        "postprocess": {"marker_threshold": 0.3, "mask_threshold": 0.6, "min_marker_size": 2,
                        "min_size": 5, "flood": "probability"},
        "normalization": {"low": 1.0, "high": 99.8},
    })
    return path


@pytest.fixture
def params(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text("predict: {tta: none, tile_size: 512, overlap: 64, batch_size: 4}\nsubmit: {out: sub.csv}\n")
    return path


def test_submit_sample_is_valid_complete_and_scores(tmp_path, model_dir, params):
    out = tmp_path / "submission.csv"
    status = cli(["submit", str(SAMPLE_ROOT), "-o", str(out), "--model", str(model_dir),
                  "--device", "cpu", "--params", str(params)])
    assert status == 0 and out.is_file()
    sub = pd.read_csv(out, keep_default_na=False)
    assert list(sub.columns) == ["ImageId", "EncodedPixels"]
    ids = sorted(p.name for p in SAMPLE_ROOT.iterdir() if (p / "images").is_dir())
    assert sorted(sub["ImageId"].unique()) == ids
    solution = pd.read_csv(SAMPLE_SOLUTION, keep_default_na=False)
    shapes = solution.groupby("ImageId")[["Height", "Width"]].first()
    assert validate_submission(sub, {i: tuple(r) for i, r in shapes.iterrows()}) == []
    # nuclei of one image are disjoint
    first = ids[0]
    labels = decode_image(sub.loc[sub["ImageId"] == first, "EncodedPixels"].tolist(), tuple(shapes.loc[first]))
    assert labels.shape == tuple(shapes.loc[first])
    summary, per_image = score_submission(sub, solution)
    assert summary["n_missing"] == 0 and len(per_image) == len(ids)
    assert 0.0 <= summary["dsb_score"] <= 1.0


def _tiny_root(root: Path, n: int = 3) -> Path:
    from pipeline.files.io import write_png

    rng = np.random.default_rng(0)
    for i in range(n):
        write_png(root / f"img{i}" / "images" / f"img{i}.png", rng.integers(0, 255, (40, 48, 3), dtype=np.uint8))
    return root


def test_submit_empty_images_get_a_row(tmp_path, model_dir, params):
    root = _tiny_root(tmp_path / "test")
    strict = tmp_path / "strict"
    shutil.copytree(model_dir, strict)
    config = (strict / "config.yaml").read_text().replace("mask_threshold: 0.6", "mask_threshold: 1.0")
    (strict / "config.yaml").write_text(config)  # nothing passes a threshold of 1: no nuclei
    out = tmp_path / "sub.csv"
    assert cli(["submit", str(root), "-o", str(out), "--model", str(strict), "--device", "cpu",
                "--params", str(params)]) == 0
    sub = pd.read_csv(out, keep_default_na=False)
    assert sub["ImageId"].tolist() == ["img0", "img1", "img2"] and (sub["EncodedPixels"] == "").all()


def test_submit_unreadable_image_fails_cleanly(tmp_path, model_dir, params, capsys):
    root = _tiny_root(tmp_path / "test")
    bad = root / "img1" / "images" / "img1.png"
    bad.write_bytes(b"not a png")
    out = tmp_path / "sub.csv"
    assert cli(["submit", str(root), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
                "--params", str(params)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert all(line.startswith("nuclei: error:") for line in err) and "img1.png" in err[0]
    assert not out.exists() and not list(tmp_path.glob(".sub*"))


def test_submit_reads_every_image_before_predicting(tmp_path, model_dir, params, monkeypatch, capsys):
    """A corrupt last image is found before the first prediction; every bad file gets one line."""
    from pipeline.model.predictor import Predictor

    root = _tiny_root(tmp_path / "test", n=4)
    for bad in ("img2", "img3"):
        (root / bad / "images" / f"{bad}.png").write_bytes(b"not a png")

    def predict_many(self, images):
        raise AssertionError("predicted before checking the inputs")

    monkeypatch.setattr(Predictor, "predict_many", predict_many)
    assert cli(["submit", str(root), "-o", str(tmp_path / "sub.csv"), "--model", str(model_dir),
                "--device", "cpu", "--params", str(params)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert "img2.png" in err[0] and "img3.png" in err[1] and "2 unreadable" in err[2] and len(err) == 3


@pytest.mark.parametrize("where", ["folder", "under_a_file"])
def test_submit_unwritable_output_is_a_usage_error_before_predicting(
    tmp_path, model_dir, params, monkeypatch, capsys, where
):
    from pipeline.model.predictor import Predictor

    root = _tiny_root(tmp_path / "test")
    (tmp_path / "file").write_text("x")
    out = tmp_path if where == "folder" else tmp_path / "file" / "sub.csv"
    monkeypatch.setattr(Predictor, "predict_many", lambda self, images: pytest.fail("predicted"))
    assert cli(["submit", str(root), "-o", str(out), "--model", str(model_dir), "--device", "cpu",
                "--params", str(params)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(out) in err[0]


def test_submit_usage_errors_exit_2(tmp_path, model_dir, params, capsys):
    args = ["-o", str(tmp_path / "sub.csv"), "--device", "cpu", "--params", str(params)]
    assert cli(["submit", str(tmp_path / "nothing"), "--model", str(model_dir), *args]) == 2
    assert cli(["submit", str(_tiny_root(tmp_path / "t")), "--model", str(tmp_path / "nomodel"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and "nothing" in err[0] and "nomodel" in err[1]
