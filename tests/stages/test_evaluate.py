"""predict → postprocess → evaluate → tune stage commands on a synthetic prepared folder."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from scipy import ndimage as ndi

from pipeline.files.io import load_npz, save_npz, write_png
from pipeline.method import grid_search
from pipeline.model.model_dir import save_model_dir
from pipeline.model.networks import build_model
from pipeline.stages import evaluate, postprocess, predict, tune
from pipeline.stages.tune import update_section

from ..conftest import load_script

TINY = {"arch": "unet", "head": "softmax", "depth": 2, "width": 4, "upsampling": "bilinear"}
IDS = ["a", "b", "c", "d"]
TYPES = ["fluo-small", "fluo-small", "histology", "fluo-small"]

PARAMS = """\
# test parameters
data:
  prepared: prepared
  test_root: {test_root}
  val_fold: 0
  split: stratified

predict:
  model: model
  out: predictions
  device: cpu
  tta: none
  tile_size: 64
  overlap: 16
  batch_size: 2

postprocess:
  out: postprocessed
  marker_threshold: 0.5                # on P(mask - border)
  mask_threshold: 0.5                  # on P(mask)
  min_marker_size: 4                   # px
  min_size: 10                         # px
  flood: probability                   # probability | distance

evaluate:
  out: metrics
"""


def labels_for(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    labels = np.zeros((48, 80), np.int32)
    for k in range(1, 5):
        cy, cx = rng.integers(10, 38), rng.integers(10, 70)
        yy, xx = np.mgrid[:48, :80]
        labels[((yy - cy) ** 2 + (xx - cx) ** 2 <= 36) & (labels == 0)] = k
    return labels


def ideal_probs(labels: np.ndarray) -> np.ndarray:
    """Softmax-head probabilities that the watershed turns back into ``labels`` (roughly)."""
    fg = labels > 0
    inner = ndi.binary_erosion(fg, iterations=1)
    p0 = inner.astype(np.float32) * 0.9
    p1 = (fg & ~inner).astype(np.float32) * 0.8
    return np.stack([p0, p1, 1 - p0 - p1]).astype(np.float16)


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rows = []
    for i, (image_id, image_type) in enumerate(zip(IDS, TYPES, strict=True)):
        labels = labels_for(i)
        image = np.where(labels[..., None] > 0, 200, 30).astype(np.uint8).repeat(3, axis=-1)
        save_npz(f"prepared/{image_id}.npz", image=image, labels=labels)
        rows.append({"id": image_id, "height": 48, "width": 80, "n_nuclei": int(labels.max()),
                     "mean_area": 100.0, "image_type": image_type, "fold": 0 if image_id != "d" else 1})
    pd.DataFrame(rows).to_csv("prepared/index.csv", index=False)
    write_png("test/t1/images/t1.png", np.full((70, 90, 3), 128, np.uint8))
    torch.manual_seed(0)
    save_model_dir("model", build_model(TINY), {"model": TINY, "normalization": {"low": 1.0, "high": 99.8}})
    (tmp_path / "params.yaml").write_text(PARAMS.format(test_root="test"))
    return tmp_path


def run(module, **kwargs) -> int:
    return module.main(argparse.Namespace(params="params.yaml", **kwargs))


def test_predict_writes_validation_and_test_predictions(workspace):
    assert run(predict, device=None) == 0
    files = sorted(p.stem for p in (workspace / "predictions").glob("*.npz"))
    assert files == ["a", "b", "c", "t1"]  # fold 0 + test root; "d" is in fold 1
    pred = load_npz(workspace / "predictions" / "t1.npz")
    assert pred["probs"].dtype == np.float16 and pred["probs"].shape == (3, 70, 90)
    assert str(pred["head"]) == "softmax"
    assert str(pred["image_type"]) in ("histology", "brightfield", "fluo-small")  # as the Segmenter sees it
    np.testing.assert_allclose(pred["probs"].astype(np.float32).sum(0), 1.0, atol=3e-3)


def write_ideal_predictions(workspace):
    for i, image_id in enumerate(IDS[:3]):
        save_npz(workspace / "predictions" / f"{image_id}.npz", probs=ideal_probs(labels_for(i)),
                 head=np.array("softmax"))


def test_evaluate_writes_metrics(workspace, capsys):
    write_ideal_predictions(workspace)
    assert run(postprocess) == 0
    assert run(evaluate) == 0
    out = capsys.readouterr().out
    assert "validation DSB2018 score" in out
    headline = json.loads((workspace / "metrics" / "metrics.json").read_text())
    metrics = json.loads((workspace / "metrics" / "details.json").read_text())
    assert headline == {k: metrics[k] for k in evaluate.HEADLINE} and "dsb_score" in headline
    for key in ("dsb_score", "ap50", "f1_50", "mean_matched_iou", "aji", "pixel_dice", "pixel_iou",
                "pixel_accuracy", "count_error"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["n_images"] == 3 and metrics["dsb_score"] > 0.5
    assert set(metrics["by_type"]) == {"fluo-small", "histology"}
    assert metrics["by_type"]["histology"]["n_images"] == 1
    per_image = pd.read_csv(workspace / "metrics" / "per_image.csv")
    assert per_image["id"].tolist() == IDS[:3] and "image_type" in per_image.columns
    assert per_image["dsb_score"].mean() == pytest.approx(metrics["dsb_score"])
    curve = pd.read_csv(workspace / "metrics" / "plots" / "score_vs_threshold.csv")
    assert curve["threshold"].tolist() == pytest.approx(np.arange(0.5, 1.0, 0.05))
    assert curve["precision"].is_monotonic_decreasing
    by_type = pd.read_csv(workspace / "metrics" / "plots" / "score_by_type.csv")
    assert by_type.columns.tolist() == ["image_type", "dsb_score", "n_images"]


def test_evaluate_missing_labels_is_a_clear_error(workspace):
    from pipeline.errors import NucleiError

    with pytest.raises(NucleiError, match=r"postprocessed/a\.tif: no such file"):
        run(evaluate)


def test_tune_finds_and_writes_best(workspace, capsys):
    write_ideal_predictions(workspace)
    # the ideal maps have P(mask) = 0.8 on the rim: a mask threshold of 0.85 loses it
    assert run(tune, marker=[0.5, 0.95], mask=[0.5, 0.85], flood=["probability"], write="params.yaml", top=5,
               balance="image", relative=[0.0], object=None, stained_object=None, stained_mask=None, dense_mask=None, also=[]) == 0
    out = capsys.readouterr().out
    assert "best" in out
    best = yaml.safe_load((workspace / "metrics" / "tuned_postprocess.yaml").read_text())
    assert best["postprocess"]["marker_threshold"] == 0.5 and best["postprocess"]["mask_threshold"] == 0.5
    text = (workspace / "params.yaml").read_text()
    assert "# on P(mask - border)" in text and text.startswith("# test parameters")
    assert yaml.safe_load(text)["postprocess"]["flood"] == "probability"


def test_tune_tries_the_dense_mask_floor(workspace):
    """--dense-mask takes thresholds and 'none'; at a mask threshold of 0.85, which loses the ideal
    maps' 0.8 rims, a floor lets the threshold of images this full of nuclei drop below 0.8, and
    tune keeps it."""
    import argparse

    parser = argparse.ArgumentParser()
    tune.add_arguments(parser)
    assert parser.parse_args(["--dense-mask", "0.5", "none"]).dense_mask == [0.5, None]
    with pytest.raises(SystemExit):
        parser.parse_args(["--dense-mask", "1.5"])
    write_ideal_predictions(workspace)
    tune.write_params(workspace / "params.yaml", {"mask_threshold": 0.85})  # what is there loses the rims
    assert run(tune, marker=[0.5], mask=[0.85], flood=["probability"], write=None, top=5, balance="image",
               relative=[0.0], object=None, stained_object=None, stained_mask=None, dense_mask=[None, 0.5],
               also=[]) == 0
    best = yaml.safe_load((workspace / "metrics" / "tuned_postprocess.yaml").read_text())
    assert best["postprocess"]["dense_mask_threshold"] == 0.5


def test_update_section_keeps_comments_and_other_sections():
    text = PARAMS.format(test_root="null")
    new = update_section(text, "postprocess", {"marker_threshold": 0.35, "flood": "distance", "extra": 3})
    parsed, before = yaml.safe_load(new), yaml.safe_load(text)
    assert parsed["postprocess"]["marker_threshold"] == 0.35
    assert parsed["postprocess"]["flood"] == "distance" and parsed["postprocess"]["extra"] == 3
    assert {k: v for k, v in parsed.items() if k != "postprocess"} == {
        k: v for k, v in before.items() if k != "postprocess"}
    assert "  marker_threshold: 0.35                # on P(mask - border)" in new
    assert len(new.splitlines()) == len(text.splitlines()) + 1


def test_thresholds_are_tuned_on_all_folds_together(workspace):
    """compare_variants tunes one set of thresholds on the pooled out-of-fold predictions."""
    compare_variants = load_script("compare_variants.py")
    write_ideal_predictions(workspace)  # fold 0: a, b, c (rim P(mask) 0.8)
    # fold 1 (image d) from a second "model" whose rim is at P(mask) 0.9: alone it would be
    # indifferent between mask thresholds 0.5 and 0.85; pooled, fold 0 decides for 0.5
    probs = ideal_probs(labels_for(3)).astype(np.float32)
    probs[1][probs[1] > 0] = 0.9
    save_npz(workspace / "fold1" / "predictions" / "d.npz", probs=probs.astype(np.float16), head=np.array("softmax"))
    params = yaml.safe_load((workspace / "params.yaml").read_text())
    params["data"]["val_fold"], params["predict"]["out"] = 1, "fold1/predictions"
    (workspace / "fold1.yaml").write_text(yaml.safe_dump(params))
    grid = {"marker_threshold": [0.5], "mask_threshold": [0.85, 0.5], "flood": ["probability"]}
    best, score = compare_variants.pooled_thresholds([workspace / "params.yaml", workspace / "fold1.yaml"], grid)
    assert best == {"marker_threshold": 0.5, "mask_threshold": 0.5, "flood": "probability", "min_relative_size": 0.0}
    alone, _ = compare_variants.pooled_thresholds([workspace / "fold1.yaml"], grid)
    assert alone["mask_threshold"] == 0.85  # first of the tied grid values: fold 1 alone cannot tell
    assert 0.5 < score <= 1.0
    # every labelled source counting once: the index's source column groups the images
    folds = [workspace / "params.yaml", workspace / "fold1.yaml"]
    index = pd.read_csv(workspace / "prepared" / "index.csv")
    index["source"] = index["group"] = ["dsb2018", "other", "other", "other"]
    index.to_csv(workspace / "prepared" / "index.csv", index=False)
    by_source = compare_variants.pooled_thresholds(folds, grid, balance="source")
    assert by_source == compare_variants.pooled_thresholds(folds, grid, balance="experiment")
    assert by_source[0]["mask_threshold"] == 0.5 and 0.5 < by_source[1] < score  # image a weighs 1/2, not 1/4
    index["group"] = index["id"]  # one experiment per image: the image mean; sources unchanged
    index.to_csv(workspace / "prepared" / "index.csv", index=False)
    assert compare_variants.pooled_thresholds(folds, grid, balance="source") == by_source
    assert compare_variants.pooled_thresholds(folds, grid, balance="experiment") == (best, score)
    per_image = pd.DataFrame({"source": ["x", "y", "y", "y"], "dsb_score": [0.2, 0.4, 0.6, 0.8],
                              "ap50": [0.5, 1.0, 1.0, 0.7], "count_error": [0.1, 0.0, 0.3, 0.05]})
    summary = compare_variants.source_summary(per_image)
    assert summary["x"] == {"dsb_score": 0.2, "ap50": 0.5, "median_count_error": 0.1, "n_images": 1}
    assert summary["y"]["dsb_score"] == pytest.approx(0.6) and summary["y"]["median_count_error"] == 0.05
    assert compare_variants.source_summary(per_image.drop(columns="source")) == {}
    # nuclei tune --also pools the same way
    assert run(tune, marker=[0.5], mask=[0.85, 0.5], flood=["probability"], write=None, top=5, balance="image",
               relative=[0.0], object=None, stained_object=None, stained_mask=None, dense_mask=None, also=["fold1.yaml"]) == 0
    tuned = yaml.safe_load((workspace / "metrics" / "tuned_postprocess.yaml").read_text())
    assert tuned["postprocess"]["mask_threshold"] == 0.5 and tuned["n_images"] == 4


def test_relative_size_is_tuned_as_postprocess_applies_it():
    """grid_search scores each min_relative_size on one watershed per setting: the scores must be
    those of postprocess_to_shape with that value, and a speck of predicted noise is dropped."""
    from pipeline.method.metrics import dsb_score
    from pipeline.method.watershed import postprocess_to_shape

    samples = []
    for seed, scale in ((0, 1.0), (1, 0.5), (2, 2.0)):
        labels = labels_for(seed)
        probs = ideal_probs(labels).astype(np.float32)
        probs[:, 40:43, 2:5] = [[0.9], [0.0], [0.1]]  # a 9-px speck, 8 % of a nucleus (113 px)
        if scale != 1.0:
            probs = ndi.zoom(probs, (1, scale, scale), order=1)
        samples.append((probs, "softmax", labels, scale))
    grid = {"min_relative_size": [0.0, 0.2], "mask_threshold": [0.5]}
    fixed = {"marker_threshold": 0.5, "flood": "probability", "min_size": 2, "min_marker_size": 1}
    table = grid_search.grid_search(samples, grid, fixed).set_index("min_relative_size")
    for fraction in (0.0, 0.2):
        direct = np.mean([dsb_score(true, postprocess_to_shape(p, h, true.shape, s, **fixed, mask_threshold=0.5,
                                                                min_relative_size=fraction))
                          for p, h, true, s in samples])
        assert table.loc[fraction, "dsb_score"] == pytest.approx(direct)
    assert table.loc[0.2, "dsb_score"] > table.loc[0.0, "dsb_score"]


def test_object_threshold_is_tuned_as_postprocess_applies_it():
    """A faint blob of nucleus size (peak P(mask - border) 0.6 against 0.9 for the nuclei) costs
    the score unless object_threshold removes it; the grid scores what postprocess gives."""
    from pipeline.method.metrics import dsb_score
    from pipeline.method.watershed import postprocess

    samples = []
    for seed in (0, 1):
        labels = labels_for(seed)
        probs = ideal_probs(labels).astype(np.float32)
        probs[:, 36:46, 2:12] = np.array([0.6, 0.0, 0.4])[:, None, None]
        samples.append((probs, "softmax", labels, 1.0))
    fixed = {"marker_threshold": 0.5, "mask_threshold": 0.5, "flood": "probability", "min_size": 2,
             "min_marker_size": 1, "min_relative_size": 0.0}
    table = grid_search.grid_search(samples, {"object_threshold": [0.0, 0.8]}, fixed).set_index("object_threshold")
    for value in (0.0, 0.8):
        direct = np.mean([dsb_score(true, postprocess(p, h, **fixed, object_threshold=value))
                          for p, h, true, _ in samples])
        assert table.loc[value, "dsb_score"] == pytest.approx(direct)
    assert table.loc[0.8, "dsb_score"] > table.loc[0.0, "dsb_score"]
    # a stained threshold applies to the stained samples only (the 5th element: the image type)
    typed = [samples[0] + ("histology",), samples[1] + ("fluo-small",)]
    grid = {"object_threshold": [0.8], "stained_object_threshold": [None, 0.0]}
    stained = grid_search.grid_search(typed, grid, fixed).set_index("stained_object_threshold", drop=False)
    (p0, h0, true0, _), (p1, h1, true1, _) = samples
    kept = np.mean([dsb_score(true0, postprocess(p0, h0, **fixed, object_threshold=0.0)),
                    dsb_score(true1, postprocess(p1, h1, **fixed, object_threshold=0.8))])
    assert stained.loc[0.0, "dsb_score"] == pytest.approx(kept)
    assert stained["dsb_score"].max() == pytest.approx(table.loc[0.8, "dsb_score"])
    best, _ = grid_search.best_setting(stained)
    assert best["stained_object_threshold"] is None  # unset, not nan
    # so does the stained mask threshold
    grid = {"mask_threshold": [0.5], "stained_mask_threshold": [None, 0.95]}
    masked = grid_search.grid_search(typed, grid, fixed).set_index("stained_mask_threshold", drop=False)
    assert masked.loc[0.95, "dsb_score"] == pytest.approx(np.mean([
        dsb_score(true0, postprocess(p0, h0, **(fixed | {"mask_threshold": 0.95}))),
        dsb_score(true1, postprocess(p1, h1, **(fixed | {"mask_threshold": 0.5})))]))
    unset = masked.loc[masked["stained_mask_threshold"].isna(), "dsb_score"].iloc[0]
    assert masked.loc[0.95, "dsb_score"] != pytest.approx(unset)  # the stained image's speck went


def test_tuning_weighs_experiments_equally():
    """Three images of one experiment want a low mask threshold, one image of another a high one:
    the mean over images follows the big experiment, the mean over experiments does not."""
    labels = labels_for(0)
    good_low = ideal_probs(labels).astype(np.float32)           # rim P(mask) 0.8: threshold 0.85 loses it
    halo = ideal_probs(labels).astype(np.float32)
    grown = ndi.binary_dilation(labels > 0, iterations=3) & (labels == 0)
    halo[1][grown] = 0.8                                         # a 3-px halo at P(mask) 0.8, rim at 0.9
    halo[1][(labels > 0) & (halo[0] == 0)] = 0.9
    samples = [(good_low, "softmax", labels, 1.0)] * 3 + [(halo, "softmax", labels, 1.0)]
    grid, fixed = {"mask_threshold": [0.5, 0.85]}, {"marker_threshold": 0.5, "flood": "probability"}
    by_image = grid_search.grid_search(samples, grid, fixed)
    by_experiment = grid_search.grid_search(samples, grid, fixed, groups=["a", "a", "a", "b"])
    assert by_image["mask_threshold"].iloc[0] == 0.5
    assert by_experiment["mask_threshold"].iloc[0] == 0.85
    row = by_experiment.set_index("mask_threshold").loc[0.85]
    assert row["group_score"] > row["dsb_score"]  # experiment b counts as much as the three images of a


def test_tune_balances_experiments_from_the_index(workspace, capsys):
    write_ideal_predictions(workspace)
    assert run(tune, marker=[0.5], mask=[0.5], flood=["probability"], write=None, top=5, balance="experiment",
               relative=[0.0], object=None, stained_object=None, stained_mask=None, dense_mask=None, also=[]) == 0
    assert "no 'group' column" in capsys.readouterr().out  # index.csv without a group column
    index = pd.read_csv(workspace / "prepared" / "index.csv")
    index["group"] = [0, 0, 1, 2]
    index["source"] = ["x", "y", "y", "y"]
    index.to_csv(workspace / "prepared" / "index.csv", index=False)
    for balance, objective in (("experiment", "mean over 2 experiments"),  # a, b | c
                               ("source", "mean over 2 sources")):  # a | b, c
        assert run(tune, marker=[0.5], mask=[0.5], flood=["probability"], write=None, top=5, balance=balance,
                   relative=[0.0], object=None, stained_object=None, stained_mask=None, dense_mask=None, also=[]) == 0
        tuned = yaml.safe_load((workspace / "metrics" / "tuned_postprocess.yaml").read_text())
        assert tuned["objective"] == objective and tuned["n_images"] == 3
        assert 0.0 < tuned["group_score"] <= 1.0 and 0.0 < tuned["dsb_score"] <= 1.0
    scores = pd.Series([0.9, 0.5, 0.7])  # by source: (0.9 + 0.6) / 2, not the image mean 0.7
    assert grid_search.group_mean(scores, ["x", "y", "y"]) == pytest.approx(0.75)
