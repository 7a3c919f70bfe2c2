"""The user's labelled images (pipeline.training.finetune_images): large ids, duplicates, names,
the region bound and the memory of a 6000 x 6000 image."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from ..conftest import ROOT, disks, grid_centres
from ..hostile import annotated_folder, finetune_cli, one_error_line


@pytest.mark.hostile
def test_finetune_trains_on_uint32_labels_with_large_ids(model_dir, tmp_path):
    from pipeline.training.finetune import finetune

    images = annotated_folder(tmp_path, n=2)
    for k in range(2):
        labels = tifffile.imread(tmp_path / "labels" / f"i{k}.tif").astype(np.uint32)
        labels[labels > 0] += np.uint32(2**32 - 100)
        tifffile.imwrite(tmp_path / "labels" / f"i{k}.tif", labels)
    lines = []
    out = finetune(images, tmp_path / "labels", base=model_dir, out=tmp_path / "ft", guard=None, device="cpu",
                   steps=4, log=lines.append)
    recorded = yaml.safe_load((out / "config.yaml").read_text())["training"]["images"]
    assert [r["nuclei"] for r in recorded] == [16, 16]


@pytest.mark.hostile
def test_the_same_image_twice_is_used_once(model_dir, tmp_path):
    from pipeline.training.finetune import finetune

    images = annotated_folder(tmp_path, n=3)
    (tmp_path / "copy").mkdir()
    shutil.copy(images[0], tmp_path / "copy" / "dup.png")  # another path and name, the same content
    shutil.copy(tmp_path / "labels" / "i0.tif", tmp_path / "labels" / "dup.tif")
    lines = []
    out = finetune([images[0], images[0], *images[1:], tmp_path / "copy" / "dup.png"], tmp_path / "labels",
                   base=model_dir, out=tmp_path / "ft", guard=None, device="cpu", steps=4, log=lines.append)
    training = yaml.safe_load((out / "config.yaml").read_text())["training"]
    assert [i["name"] for i in training["images"]] == ["i0", "i1", "i2"]
    assert training["validation"]["method"] == "leave-one-out" and training["validation"]["folds"] == 3
    said = [line for line in lines if "same image as" in line]
    assert len(said) == 1 and "dup.png" in said[0], lines


@pytest.mark.hostile
def test_the_same_array_twice_is_used_once(model_dir, tmp_path):
    from pipeline.training.finetune import finetune

    pairs = [disks(shape=(96, 96), centres=grid_centres((96, 96), 24, offset=12 + k), radius=6) for k in range(3)]
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    lines = []
    out = finetune([images[0], *images, images[2]], [labels[0], *labels, labels[2]], base=model_dir,
                   out=tmp_path / "ft", guard=None, device="cpu", steps=4, log=lines.append)
    training = yaml.safe_load((out / "config.yaml").read_text())["training"]
    assert [i["name"] for i in training["images"]] == ["image 1", "image 3", "image 4"]
    said = [line for line in lines if "same image as" in line]
    assert len(said) == 1 and "2 duplicate images" in said[0], lines


@pytest.mark.hostile
def test_two_different_images_of_one_name_are_refused_naming_both(model_dir, tmp_path, capsys):
    annotated_folder(tmp_path, n=1)
    a, b = tmp_path / "a" / "i0.png", tmp_path / "b" / "i0.png"
    a.parent.mkdir(), b.parent.mkdir()
    shutil.copy(tmp_path / "images" / "i0.png", a)
    Image.fromarray(255 - np.asarray(Image.open(a))).save(b)
    status, err = finetune_cli(capsys, a, b, "--labels", tmp_path / "labels", "-o", tmp_path / "ft",
                               "--model", model_dir, "--guard", "none")
    one_error_line(err, str(a), str(b), "i0.tif")
    assert status == 2 and not (tmp_path / "ft").exists()


@pytest.mark.hostile
def test_an_image_beyond_the_region_bound_is_cropped_before_its_examples(model_dir, tmp_path, monkeypatch):
    """The examples (targets, held-out predictions) are built from a bounded region of a large
    image, never from the whole image (the first example stops the run)."""
    import pipeline.training.finetune_run as run
    from pipeline.training.finetune import MAX_REGION_PIXELS, finetune

    shape = (1200, 1500)
    image, labels = disks(shape=shape, centres=grid_centres(shape, 30, offset=15), radius=7)
    seen = []

    class Stop(Exception):
        pass

    def make_example(name, image, labels, *args, **kwargs):
        seen.append(labels.shape)
        raise Stop

    monkeypatch.setattr(run, "make_example", make_example)
    monkeypatch.setattr("pipeline.training.finetune.MAX_REGION_PIXELS", 512 * 512)
    lines = []
    with pytest.raises(Stop):
        finetune([image], [labels], base=model_dir, out=tmp_path / "ft", guard=None, device="cpu", steps=4,
                 log=lines.append)
    assert seen and seen[0][0] * seen[0][1] <= 512 * 512
    assert any("region" in line and "1500x1200" in line for line in lines), lines
    assert MAX_REGION_PIXELS >= 1024 * 1024


BIG_IMAGE_RUN = """
import resource, sys
import pipeline.model.segmenter, pipeline.training.finetune_run, torch  # imports: the baseline
import pipeline.training.finetune as module
module.CHECKPOINTS, module.THRESHOLD_GRID = 1, {k: v[:1] for k, v in module.THRESHOLD_GRID.items()}  # quicker
folder, model = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
module.finetune([f"{folder}/images/big.png"], f"{folder}/labels", base=model, out=f"{folder}/ft", guard=None,
                device="cpu", steps=4, log=lambda m: print(m, file=sys.stderr))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before * 1024, after * 1024)
"""


@pytest.mark.hostile
def test_a_6000_x_6000_image_is_fine_tuned_in_bounded_memory(model_dir, tmp_path):
    """A 36-Mpx image (uint8 on disk, 62,500 nuclei): the peak resident memory of the run grows by
    less than 2 GB (1.4 GB measured: reading, then a 2048 x 2048 region; read as float32 RGB the
    image alone is 432 MB). Before the bound the whole image's targets and held-out predictions
    grew it by 3.8 GB for 3000 x 3000 px, over 400 bytes per pixel (24 GB for 10,000 x 10,000)."""
    (tmp_path / "images").mkdir(), (tmp_path / "labels").mkdir()
    side, spacing = 6000, 24
    yy, xx = np.ogrid[:side, :side]
    inside = ((yy % spacing - spacing // 2) ** 2 + (xx % spacing - spacing // 2) ** 2) <= 64
    Image.fromarray(np.where(inside, 200, 20).astype(np.uint8)).save(tmp_path / "images" / "big.png")
    ids = ((yy // spacing) * (side // spacing) + xx // spacing + 1).astype(np.uint16)
    tifffile.imwrite(tmp_path / "labels" / "big.tif", np.where(inside, ids, np.uint16(0)))
    del inside, ids
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", BIG_IMAGE_RUN, str(tmp_path), str(model_dir)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    before, after = map(int, done.stdout.split())
    assert after - before < 2e9, f"peak grew by {(after - before) / 1e9:.2f} GB"
    assert "2048x2048 px region richest in nuclei" in done.stderr and (tmp_path / "ft" / "weights.pt").is_file()
