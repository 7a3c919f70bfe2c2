"""Tests of pipeline.training.dataset on synthetic prepared data (discs)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.data import DataLoader

from pipeline.data.folds import split_folds
from pipeline.errors import NucleiError
from pipeline.files.io import load_npz
from pipeline.method.intensity import normalize_image
from pipeline.training.augment import build_augmentation
from pipeline.training.dataset import (
    EpochSampler,
    NucleiDataset,
    group_balance_weights,
    load_item,
    pad_to_multiple,
    read_index,
    seed_worker,
)
from tests.train_fixtures import write_prepared

AUG = {
    "crop": 32,
    "flips": True,
    "rot90": True,
    "scale": [0.8, 1.25],
    "brightness_contrast": True,
    "gamma": True,
    **dict.fromkeys(
        ("elastic", "color_to_gray", "invert", "blur", "dim_saturate", "stain", "noise", "low_bits", "jpeg"), False
    ),
}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    prepared, targets = write_prepared(root, n_images=6, size=48, folds=3)
    return prepared, targets


def train_set(data, **kw):
    prepared, targets = data
    ids = read_index(prepared)["id"].tolist()
    kw.setdefault("transform", build_augmentation(AUG, train=True))
    return NucleiDataset(ids, prepared, targets, train=True, **kw)


def test_read_index_and_split_folds(data, tmp_path):
    prepared, _ = data
    index = read_index(prepared)
    train_ids, val_ids = split_folds(index, 1)
    assert val_ids == ["img01", "img04"]
    assert set(train_ids) | set(val_ids) == set(index["id"]) and not set(train_ids) & set(val_ids)
    with pytest.raises(NucleiError, match="no image in validation fold 7"):
        split_folds(index, 7)
    with pytest.raises(NucleiError, match=r"index\.csv: no such file"):
        read_index(tmp_path)
    pd.DataFrame({"id": ["a"]}).to_csv(tmp_path / "index.csv", index=False)
    with pytest.raises(NucleiError, match="missing column.*fold"):
        read_index(tmp_path)


def test_load_item_arrays_and_errors(data, tmp_path):
    prepared, targets = data
    a = load_item(prepared, targets, "img02")
    raw = load_npz(prepared / "img02.npz")
    h, w = raw["labels"].shape
    assert a["image"].dtype == np.float32 and a["image"].shape == (h, w, 3)
    np.testing.assert_allclose(a["image"], normalize_image(raw["image"] / np.float32(255)), atol=1e-6)
    assert a["labels"].dtype == np.int32 and a["weights"].dtype == np.float32
    assert {k: a[k].shape for k in ("classes", "mask", "border", "weights")} == dict.fromkeys(
        ("classes", "mask", "border", "weights"), (h, w)
    )
    with pytest.raises(NucleiError, match=r"img02\.npz: no such file \(run `nuclei targets`"):
        load_item(prepared, tmp_path, "img02")
    bad = tmp_path / "t"
    bad.mkdir()
    np.savez(
        bad / "img02.npz", classes=a["classes"][:-1], mask=a["mask"], border=a["border"], weights=a["weights"]
    )
    with pytest.raises(NucleiError, match="'classes' has shape"):
        load_item(prepared, bad, "img02")


def test_training_loads_images_as_stored_and_crops_them_as_their_float_images(data):
    prepared, targets = data
    stored = load_item(prepared, targets, "img02", normalize=False, stored=True, labels=False)
    as_float = load_item(prepared, targets, "img02", normalize=False)
    assert "labels" not in stored and stored["image"].dtype == np.uint8 and stored["weights"].dtype == np.float16
    assert as_float["image"].dtype == np.float32 and as_float["weights"].dtype == np.float32
    assert load_npz(targets / "img02.npz", ("mask", "nothing")).keys() == {"mask"}
    with pytest.raises(ValueError, match="cannot be normalised"):
        load_item(prepared, targets, "img02", stored=True)
    # a normalising augmentation crops first: the cache keeps the stored bytes, the crops are the same
    ds = train_set(data, samples_per_epoch=6)
    assert ds.stored and not ds.normalize_on_load
    old = train_set(data, samples_per_epoch=6)
    old.stored = False  # the float32 image, as loaded before the crop came first
    for i in (0, 3, 8):
        a, b = ds[i], old[i]
        assert all(torch.equal(a[k], b[k]) for k in a), i
    image_bytes = {name: d._cache["img00"]["image"].nbytes for name, d in (("stored", ds), ("float", old))}
    assert image_bytes["float"] == 4 * image_bytes["stored"]

def test_pad_to_multiple_reflects_bottom_right():
    a = np.arange(5 * 7 * 3, dtype=np.float32).reshape(5, 7, 3)
    p = pad_to_multiple(a, 4)
    assert p.shape == (8, 8, 3)
    np.testing.assert_array_equal(p[:5, :7], a)
    np.testing.assert_array_equal(p[5, :7], a[3])  # reflection about the last row
    np.testing.assert_array_equal(p[:5, 7], a[:, 5])
    square = a[:4, :4]
    assert pad_to_multiple(square, 4) is square  # already a multiple: untouched
    assert pad_to_multiple(a[:2, :2, 0], 8).shape == (8, 8)  # pad wider than the image


def test_train_items_are_crops_with_aligned_targets(data):
    ds = train_set(data, samples_per_epoch=10)
    assert len(ds) == 10
    item = ds[3]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == torch.float32
    assert item["classes"].dtype == torch.int64 and item["weights"].dtype == torch.float32
    for key in ("classes", "mask", "border", "weights"):
        assert item[key].shape == (32, 32)
    # the targets moved together: core pixels are nucleus pixels, background is not nucleus
    assert torch.all(item["mask"][item["classes"] == 0] == 1)
    assert torch.all(item["mask"][item["classes"] == 2] == 0)
    assert torch.all(item["border"][item["classes"] == 1] == 1)
    assert item["image"][:, item["mask"] == 1].mean() != item["image"][:, item["mask"] == 0].mean()


def test_draws_are_seeded_by_index_and_epoch(data):
    ds = train_set(data, samples_per_epoch=6)
    a, b = ds[2], ds[2]
    assert all(torch.equal(a[k], b[k]) for k in a)
    # index + k * len is the same image in a later epoch: a different random crop
    c = ds[2 + 6 * 5]
    assert not torch.equal(a["image"], c["image"])
    other = train_set(data, samples_per_epoch=6, seed=1)[2]
    assert not torch.equal(a["image"], other["image"])


def test_samples_are_spread_evenly_over_images(data):
    ds = train_set(data, samples_per_epoch=12, transform=None)
    images = [ds.ids[i % len(ds.ids)] for i in range(len(ds))]
    assert pd.Series(images).value_counts().tolist() == [2] * 6


def test_group_balance_weights_share_draws_between_experiments():
    groups = ["a", "a", "a", "b"]
    np.testing.assert_allclose(group_balance_weights(groups, 1.0), [0.25] * 4)
    np.testing.assert_allclose(group_balance_weights(groups, 0.0), [1 / 6, 1 / 6, 1 / 6, 0.5])
    half = group_balance_weights(groups, 0.5)  # group of m images: m ** 0.5 of the draws
    np.testing.assert_allclose(half[:3].sum() / half[3], np.sqrt(3))
    assert half.sum() == pytest.approx(1.0) and half[0] == half[1] == half[2]
    with pytest.raises(ValueError, match=r"exponent must be in \[0, 1\]"):
        group_balance_weights(groups, 1.5)


def test_draw_weights_choose_images_reproducibly(data):
    n = 6
    weights = group_balance_weights(["x"] * 5 + ["y"], 0.0)  # image 5 alone is half the draws
    ds = train_set(data, samples_per_epoch=12, transform=None, draw_weights=weights)
    drawn = np.array([ds.image_of(i) for i in range(3000)])
    share = np.bincount(drawn, minlength=n) / len(drawn)
    np.testing.assert_allclose(share, weights, atol=0.03)
    # the same index draws the same image (and the same crop), whatever came before
    again = train_set(data, samples_per_epoch=12, transform=None, draw_weights=weights)
    assert [again.image_of(i) for i in (2999, 7, 7)] == [drawn[2999], drawn[7], drawn[7]]
    assert all(torch.equal(ds[7][k], again[7][k]) for k in ds[7])
    assert ds.arrays(ds.ids[drawn[7]])["image"].shape[:2] == tuple(ds[7]["image"].shape[1:])
    only_first = train_set(data, samples_per_epoch=12, transform=None, draw_weights=[1, 0, 0, 0, 0, 0])
    assert {only_first.image_of(i) for i in range(50)} == {0}
    with pytest.raises(ValueError, match="one per id"):
        train_set(data, draw_weights=[1, 1])


def test_validation_items_padded_to_stride_with_labels(data):
    prepared, targets = data
    ds = NucleiDataset(["img01", "img02"], prepared, targets, train=False, stride=16)
    item = ds[1]
    labels = load_npz(prepared / "img02.npz")["labels"]
    h, w = labels.shape
    assert item["image"].shape[1] % 16 == 0 and item["image"].shape[2] % 16 == 0
    assert item["image"].shape[1] >= h and item["image"].shape[2] >= w
    np.testing.assert_array_equal(item["labels"].numpy(), labels)
    assert item["classes"].shape == (h, w) and item["index"] == 1
    np.testing.assert_array_equal(
        item["image"][:, :h, :w].numpy(), load_item(prepared, targets, "img02")["image"].transpose(2, 0, 1)
    )


def test_epoch_sampler_encodes_epoch_and_shards():
    ds = list(range(10))
    s = EpochSampler(ds, seed=3)
    s.set_epoch(2)
    idx = list(s)
    assert sorted(i - 20 for i in idx) == list(range(10))
    s.set_epoch(3)
    assert [i % 10 for i in s] != [i % 10 for i in idx]
    shards = [EpochSampler(ds, num_replicas=2, rank=r, seed=3) for r in range(2)]
    for sh in shards:
        sh.set_epoch(1)
    a, b = (list(sh) for sh in shards)
    assert len(a) == len(b) == 5 and sorted(a + b) == list(range(10, 20))


def test_cache_holds_arrays_within_budget(data):
    ds = train_set(data, cache_mb=1)
    ds[0]
    assert "img00" in ds._cache
    off = train_set(data, cache_mb=0)
    off[0]
    assert off._cache == {}


def test_batches_do_not_depend_on_the_number_of_workers(data):
    def batches(workers):
        ds = train_set(data, samples_per_epoch=8)
        sampler = EpochSampler(ds, seed=0)
        loader = DataLoader(
            ds,
            batch_size=4,
            sampler=sampler,
            num_workers=workers,
            worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(0),
            persistent_workers=workers > 0,
        )
        out = []
        for epoch in range(2):
            sampler.set_epoch(epoch)
            out += [b["image"] for b in loader]
        return out

    serial, parallel = batches(0), batches(2)
    assert len(serial) == 4
    assert all(torch.equal(a, b) for a, b in zip(serial, parallel, strict=True))
    assert not torch.equal(serial[0], serial[2])  # epochs differ
