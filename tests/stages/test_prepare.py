"""The prepare stage: labels, index, image types and stratified folds."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage as ndi

from pipeline.cli import main
from pipeline.data.folds import stratified_folds
from pipeline.files.io import load_npz
from pipeline.method.image_types import classify_image


def test_stratified_folds_balance_groups():
    groups = ["a"] * 23 + ["b"] * 7 + ["c"] * 3
    ids = [f"id{i:02d}" for i in range(len(groups))]
    folds = stratified_folds(ids, groups, k=5, seed=0)
    assert np.bincount(folds, minlength=5).max() - np.bincount(folds, minlength=5).min() <= 1
    for g in "abc":
        counts = np.bincount(folds[np.array(groups) == g], minlength=5)
        assert counts.max() - counts.min() <= 1
    assert np.array_equal(folds, stratified_folds(ids, groups, k=5, seed=0))


def test_classify_image():
    dark = np.zeros((256, 256, 3), np.uint8)
    dark[::7, ::7] = 200
    assert classify_image(dark) == "fluo-small"
    assert classify_image(np.zeros((520, 696, 3), np.uint8)) == "fluo-large"
    assert classify_image(np.full((64, 64, 3), 220, np.uint8)) == "brightfield"
    he = np.zeros((64, 64, 3), np.uint8)
    he[...] = (200, 120, 210)
    assert classify_image(he) == "histology"


def test_dense_fluorescence_is_not_bright_field():
    """Bright nuclei packed over most of a dark image (fluorescence in tissue sections) have a mean
    level of bright-field once normalised; they were typed so, and segmented without a diameter
    estimate. Bright-field's background is bright and most of the image, under uneven light too."""
    from pipeline.method.image_types import image_type_of
    from pipeline.method.intensity import normalize_image

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:512, :512]
    cells = (np.sin(yy / 5.0) * np.sin(xx / 5.0)) > 0.1  # nuclei 16 px apart, packed
    cells = np.maximum(cells, ((yy // 4) % 8 < 6) & ((xx // 4) % 8 < 6))  # ~70 % of the image
    labels, n = ndi.label(cells)
    level = 40 + 200 * rng.uniform(0, 1, n + 1) ** 1.3  # nuclei differ in brightness
    dense = np.where(cells, level[labels], 25) + rng.normal(0, 8, cells.shape)
    dense = np.clip(dense, 0, 255).astype(np.uint8)
    image = np.dstack([dense] * 3)
    assert classify_image(image) == "fluo-large"
    assert image_type_of(normalize_image(image)) == "fluo-large"
    bright = np.clip(np.where(cells, 200, 90) * 0 + 210 - 110 * (((yy % 40) < 12) & ((xx % 40) < 12)), 0, 255)
    vignette = 1 - 0.5 * ((yy - 256) ** 2 + (xx - 256) ** 2) / (2 * 256**2)
    field = np.dstack([(bright * vignette).astype(np.uint8)] * 3)
    assert classify_image(field) == "brightfield"
    assert image_type_of(normalize_image(field)) == "brightfield"


@pytest.mark.parametrize("sigma", [4, 8, 12])
def test_a_colour_cameras_pixel_noise_does_not_make_a_grey_image_stained(sigma):
    """Noise independent in each channel (a colour camera's) left bright-field images typed as
    stained tissue pixel by pixel; the type is decided on tile means (COLOUR_BLOCK), as files are
    prepared and as the Segmenter types normalised images (whose contrast stretch amplifies it)."""
    from pipeline.method.image_types import image_type_of
    from pipeline.method.intensity import normalize_image

    rng = np.random.default_rng(sigma)
    grey = np.full((256, 256), 200.0)
    grey[::9, ::9] = 120  # some structure
    dark = np.full((256, 256), 10.0)
    dark[40:60, 40:60] = 180
    for scene, expected in ((grey, "brightfield"), (dark, "fluo-small")):
        noisy = np.clip(scene[..., None] + rng.normal(0, sigma, (256, 256, 3)), 0, 255).astype(np.uint8)
        assert classify_image(noisy) == expected
        assert image_type_of(normalize_image(noisy)) == expected
    he = np.where(rng.random((256, 256, 1)) < 0.3, [120, 60, 160], [235, 190, 215]) + rng.normal(0, sigma, (256, 256, 3))
    he = np.clip(he, 0, 255).astype(np.uint8)
    assert classify_image(he) == image_type_of(normalize_image(he)) == "histology"


def test_prepare_stage_on_sample(tmp_path, sample_root):
    params = tmp_path / "params.yaml"
    params.write_text(f"seed: 0\ndata:\n  sources:\n    dsb2018: {{root: {sample_root}}}\n"
                      f"  prepared: {tmp_path}\n  folds: 5\n  workers: 1\n")
    assert main(["prepare", "--params", str(params)]) == 0
    index = pd.read_csv(tmp_path / "dsb2018" / "index.csv")
    assert (index.source == "dsb2018").all()
    assert len(index) == 20 and set(index.fold) == set(range(5))
    assert set(index.image_type) == {"fluo-small", "fluo-large", "brightfield", "histology"}
    row = index.iloc[0]
    arrays = load_npz(tmp_path / "dsb2018" / f"{row.id}.npz")
    assert arrays["image"].dtype == np.uint8 and arrays["labels"].dtype == np.int32
    assert arrays["labels"].max() == row.n_nuclei == len(list((sample_root / row.id / "masks").glob("*.png")))
    assert index.n_nuclei.max() >= 100

    # the run's seed (crops, initialisation) changes no split; data.fold_seed draws the image folds
    out = {}
    for name, seeds in {"seed": "seed: 7\n", "fold_seed": "seed: 0\n"}.items():
        params.write_text(params.read_text().replace("seed: 0\n", seeds, 1)
                          + ("  fold_seed: 7\n" if name == "fold_seed" else ""))
        assert main(["prepare", "--params", str(params)]) == 0
        out[name] = pd.read_csv(tmp_path / "dsb2018" / "index.csv")
        params.write_text(params.read_text().replace(seeds, "seed: 0\n", 1).replace("  fold_seed: 7\n", ""))
    assert out["seed"]["fold"].tolist() == index["fold"].tolist()
    assert out["fold_seed"]["fold"].tolist() != index["fold"].tolist()
    assert out["fold_seed"]["group_fold"].tolist() == index["group_fold"].tolist()  # experiments: no seed
