"""Tests of ``nuclei finetune``: a tiny fine-tune on synthetic nuclei, every bad input, and the
fine-tuned model in ``segment`` (tiny U-Net, CPU, seconds)."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
import torch
import yaml
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.config import ROOT
from pipeline.errors import NucleiError
from pipeline.finetune import finetune
from pipeline.metrics import dsb_score
from pipeline.scale import median_diameter
from pipeline.segment import segment_images
from pipeline.segmenter import Segmenter
from pipeline.train import train
from tests.train_fixtures import disc_image, tiny_params, write_prepared


@pytest.fixture(autouse=True)
def _small_and_quick(monkeypatch, tmp_path):
    """One thread, 64-px crops (the synthetic images are small), no DSB2018 guard crops (a fresh
    clone has no ../shared)."""
    import pipeline.finetune as module

    monkeypatch.setattr(module, "CROP", 64)
    monkeypatch.setattr(module, "GUARD_ROOT", tmp_path / "no-shared-data")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def base_model(tmp_path_factory):
    """A tiny model trained on discs of 6-14 px at their own scale, whose config claims nuclei of
    20 px (the default ``targets.diameter``): deliberately mis-sized, ``segment`` enlarges discs ×2
    for a network that never saw them so large."""
    root = tmp_path_factory.mktemp("finetune_base")
    write_prepared(root, n_images=6, size=64, folds=3)
    params = tiny_params(root, epochs=4, samples_per_epoch=32, lr=0.02)
    params["data"]["val_fold"] = None
    return train(params)


def write_annotated(folder, n=3, size=96, seed=1, suffix=".tif"):
    """``n`` synthetic images (PNG) in ``folder/images`` and their labels in ``folder/labels``."""
    rng = np.random.default_rng(seed)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    (folder / "labels").mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        image, labels = disc_image(size, 14, rng)
        path = folder / "images" / f"img{i}.png"
        Image.fromarray(image).save(path)
        if suffix == ".png":
            Image.fromarray(labels.astype(np.uint16)).save(folder / "labels" / f"img{i}_masks.png")
        else:
            tifffile.imwrite(folder / "labels" / f"img{i}{suffix}", labels.astype(np.uint16))
        paths.append(path)
    return paths


def test_finetune_improves_a_mis_sized_base_and_segment_loads_it(base_model, tmp_path):
    images = write_annotated(tmp_path)
    seen = []
    out = finetune(images, tmp_path / "labels", base=base_model, out=tmp_path / "model", steps=48, guard=None,
                   device="cpu", progress=lambda f, m: seen.append((f, m)))
    config = yaml.safe_load((out / "config.yaml").read_text())
    tuning = config["training"]
    validation = tuning["validation"]
    assert validation["method"] == "leave-one-out" and validation["folds"] == 3
    assert validation["after"] > validation["before"] + 0.1
    assert tuning["steps"] > 0 and len(tuning["images"]) == 3
    assert all(len(i["sha256"]) == 64 for i in tuning["images"])
    assert (ROOT / tuning["base"]).resolve() == base_model.resolve()  # written relative to the repository
    assert tuning["summary"].startswith("held-out (leave-one-out): base ")
    assert 6 < config["user_diameter"] < 14  # the discs' own median diameter, px
    assert seen and seen[-1][0] == pytest.approx(1.0) and all(0 < f <= 1 for f, _ in seen)

    # on new images, at their true diameter, the fine-tuned model beats the base (as `segment` runs: no TTA)
    rng = np.random.default_rng(99)
    new = [disc_image(96, 14, rng) for _ in range(6)]
    scores = []
    for model in (base_model, out):
        segmenter = Segmenter.from_model_dir(model, device="cpu", tta="none")
        scores.append(np.mean([dsb_score(lab, segmenter.segment(im, diameter=median_diameter(lab)).labels)
                               for im, lab in new]))
    assert scores[1] > scores[0] + 0.1

    # segment uses the recorded user diameter where it has no estimate (a bright-field image)
    bright = 255 - new[0][0]
    diameter, estimated, _ = Segmenter.from_model_dir(out, device="cpu").scale_for(bright / 255.0)
    assert estimated and diameter == pytest.approx(config["user_diameter"])
    table = segment_images([images[0]], tmp_path / "seg", model_dir=out, device="cpu")
    assert len(table) == 1 and (tmp_path / "seg" / "labels" / "img0.tif").is_file()


def test_one_image_validates_on_its_halves_and_cli_refuses_to_overwrite(base_model, tmp_path, capsys):
    images = write_annotated(tmp_path, n=1, size=200, suffix=".png")
    args = ["finetune", str(images[0]), "--labels", str(tmp_path / "labels"), "-o", str(tmp_path / "m"),
            "--model", str(base_model), "--minutes", "0.2", "--device", "cpu"]
    assert cli_main(args) == 0
    out = capsys.readouterr().out
    assert "held-out (image halves): base " in out and "model written to" in out
    assert cli_main(args) == 1
    assert "already holds a model (use --force" in capsys.readouterr().err
    assert cli_main([*args, "--force"]) == 0


def _one_line_error(tmp_path, images, labels, match, **kwargs):
    out = tmp_path / "never"
    with pytest.raises(NucleiError, match=match) as info:
        finetune(images, labels, out=out, guard=None, device="cpu", steps=4, **kwargs)
    assert "\n" not in str(info.value)
    assert not out.exists()


def test_bad_inputs_are_one_line_and_write_nothing(base_model, tmp_path):
    images = write_annotated(tmp_path, n=2, size=64)
    labels = tmp_path / "labels"
    kw = {"base": base_model}
    (tmp_path / "lonely").mkdir()
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "lonely" / "x.png")
    _one_line_error(tmp_path, [tmp_path / "lonely" / "x.png"], labels, r"x\.png: no labels in", **kw)
    tifffile.imwrite(labels / "stray.tif", np.zeros((64, 64), np.uint16))
    _one_line_error(tmp_path, [tmp_path / "images"], labels, r"stray\.tif: labels without an image", **kw)
    (labels / "stray.tif").unlink()
    lab = tifffile.imread(labels / "img0.tif")
    _one_line_error(tmp_path, images[:1], [lab[:32]], "label image is 64x32 px but the image is 64x64 px", **kw)
    _one_line_error(tmp_path, images[:1], [lab.astype(np.float32)], "float label image", **kw)
    _one_line_error(tmp_path, images[:1], [lab.astype(np.int32) - 1], "negative labels", **kw)
    _one_line_error(tmp_path, images, [lab], r"img1\.png: an image without labels", **kw)
    _one_line_error(tmp_path, images[:1], [lab, lab], "labels without an image", **kw)
    few = np.zeros_like(lab)
    few[5:10, 5:10], few[20:25, 20:25] = 1, 2
    _one_line_error(tmp_path, images[:1], [few], "2 nuclei in all the labels; fine-tuning needs at least 5", **kw)
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.yaml").write_text("format_version: 1\n")
    with pytest.raises(NucleiError, match="already holds a model"):
        finetune(images, labels, out=model, guard=None, device="cpu", steps=4, **kw)
    assert (model / "config.yaml").read_text() == "format_version: 1\n"


def test_binary_mask_is_split_and_an_empty_image_teaches_background(base_model, tmp_path):
    images = write_annotated(tmp_path, n=2, size=64)
    binary = (tifffile.imread(tmp_path / "labels" / "img0.tif") > 0).astype(np.uint8)
    empty = np.zeros((64, 64, 3), np.uint8)
    warnings = []
    out = finetune([images[0], empty], [binary, np.zeros((64, 64), np.uint16)], base=base_model,
                   out=tmp_path / "m", guard=None, device="cpu", steps=4, log=warnings.append)
    assert any("binary mask" in w and "connected components" in w for w in warnings)
    tuning = yaml.safe_load((out / "config.yaml").read_text())["training"]
    assert tuning["images"][0]["nuclei"] > 1 and tuning["images"][1]["nuclei"] == 0
    assert tuning["images"][1]["diameter"] is None
