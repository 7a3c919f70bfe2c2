"""pipeline.data.pack: the prepared training set packed into one archive or parts and back, bit for bit."""

import tarfile

import numpy as np
import pandas as pd
import pytest

from pipeline.cli import main
from pipeline.data.pack import decode_sample, encode_sample, pack_prepared, unpack_prepared
from pipeline.errors import NucleiError
from pipeline.files.io import load_npz, save_npz


def _prepared(folder, rng):
    """A prepared folder of a grey, a colour and an empty sample (labels up to 300 > 255)."""
    grey = np.repeat(rng.integers(0, 256, (40, 50, 1), dtype=np.uint8), 3, axis=2)
    colour = rng.integers(0, 256, (30, 20, 3), dtype=np.uint8)
    many = np.arange(40 * 50, dtype=np.int32).reshape(40, 50) % 301
    samples = {
        "grey": (grey, many),
        "colour": (colour, rng.integers(0, 5, (30, 20)).astype(np.int32)),
        "empty": (np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8), np.int32)),
    }
    for name, (image, labels) in samples.items():
        save_npz(folder / f"{name}.npz", image=image, labels=labels)
    pd.DataFrame({"id": list(samples), "fold": [0, 1, 2]}).to_csv(folder / "index.csv", index=False)
    return samples


def test_pack_unpack_round_trip(tmp_path):
    samples = _prepared(tmp_path / "prepared", np.random.default_rng(0))
    archive = tmp_path / "carry" / "prepared.tar"
    assert pack_prepared(tmp_path / "prepared", archive) == [archive]
    with tarfile.open(archive) as tar:
        names = tar.getnames()
    assert set(names) == {"index.csv"} | {f"{s}/{f}.png" for s in samples for f in ("image", "labels")}

    assert unpack_prepared(archive, tmp_path / "out") == 3
    for name, (image, labels) in samples.items():
        back = load_npz(tmp_path / "out" / f"{name}.npz")
        assert back["image"].dtype == np.uint8 and back["labels"].dtype == np.int32
        np.testing.assert_array_equal(back["image"], image)
        np.testing.assert_array_equal(back["labels"], labels)
    assert (tmp_path / "out" / "index.csv").read_bytes() == (tmp_path / "prepared" / "index.csv").read_bytes()


def test_parts_of_whole_samples_unpacked_in_order(tmp_path):
    rng = np.random.default_rng(1)
    prepared = tmp_path / "prepared"
    samples = {}
    for source in ("a", "b"):  # a folder of sources, as the generalist's
        (prepared / source).mkdir(parents=True)
        samples |= {f"{source}/{k}": v for k, v in _prepared(prepared / source, rng).items()}
    part_bytes = 4096 + 2 * tarfile.RECORDSIZE  # room for the largest sample (grey: 4,096 bytes in a tar)
    parts = pack_prepared(prepared, tmp_path / "carry" / "prepared.tar", part_bytes)
    n = len(parts)
    assert n >= 3 and [p.name for p in parts] == [f"prepared.{k}-of-{n}.tar" for k in range(1, n + 1)]
    assert not (tmp_path / "carry" / "prepared.tar").exists()
    assert all(p.stat().st_size <= part_bytes for p in parts)
    with tarfile.open(parts[-1]) as tar:
        assert {"a/index.csv", "b/index.csv"} <= set(tar.getnames())

    out = tmp_path / "out"
    with pytest.raises(NucleiError, match="unpack the earlier parts first"):
        unpack_prepared(parts[-1], out)  # the last part alone: its index is not written
    assert not (out / "a" / "index.csv").exists() and not (out / "b" / "index.csv").exists()
    assert main(["pack", "unpack", *map(str, parts), str(out)]) == 0
    for name, (image, labels) in samples.items():
        back = load_npz(out / f"{name}.npz")
        np.testing.assert_array_equal(back["image"], image)
        np.testing.assert_array_equal(back["labels"], labels)
    for source in ("a", "b"):
        assert (out / source / "index.csv").read_bytes() == (prepared / source / "index.csv").read_bytes()

    with pytest.raises(NucleiError, match="grey/image.png: .* more than a part"):
        pack_prepared(prepared, tmp_path / "small.tar", 3000 + 2 * tarfile.RECORDSIZE)


def test_chosen_sources_are_packed_without_their_validation_fold(tmp_path):
    """``--sources`` and ``--leave-out-fold``: only the sources named, and none of the images of
    the grouped fold left out, in the samples or in the indexes unpacked, the rest as they were."""
    rng = np.random.default_rng(2)
    prepared = tmp_path / "prepared"
    for source in ("a", "b", "c"):
        (prepared / source).mkdir(parents=True)
        _prepared(prepared / source, rng)
        index = pd.read_csv(prepared / source / "index.csv")
        index.assign(group_fold=[0, 1, 2]).to_csv(prepared / source / "index.csv", index=False)
    archive = tmp_path / "carry" / "train.tar"
    assert main(["pack", "pack", str(prepared), str(archive), "--sources", "a", "c", "--leave-out-fold", "0"]) == 0
    with tarfile.open(archive) as tar:
        names = set(tar.getnames())
    assert names == {"a/index.csv", "c/index.csv"} | {f"{s}/{k}/{f}.png" for s in "ac" for k in ("colour", "empty")
                                                      for f in ("image", "labels")}
    out = tmp_path / "out"
    assert unpack_prepared(archive, out) == 4
    for source in ("a", "c"):
        back = pd.read_csv(out / source / "index.csv")
        assert back["id"].tolist() == ["colour", "empty"] and back["group_fold"].tolist() == [1, 2]
        assert back["fold"].tolist() == [1, 2]  # the other columns as they were
        np.testing.assert_array_equal(load_npz(out / source / "colour.npz")["image"],
                                      load_npz(prepared / source / "colour.npz")["image"])
    assert not (out / "b").exists()
    pd.DataFrame({"id": ["x"], "fold": [0]}).to_csv(prepared / "a" / "index.csv", index=False)
    with pytest.raises(NucleiError, match=r"a/index.csv: missing column\(s\) group_fold"):
        pack_prepared(prepared, tmp_path / "no-folds.tar", sources=["a"], leave_out_fold=0)


def test_jpeg_images_are_smaller_and_close_and_labels_stay_exact(tmp_path):
    """``--jpeg``: a smooth image (as microscope images are) comes back within a few grey levels, in a
    fraction of the PNG's bytes; labels and indexes are exact."""
    rng = np.random.default_rng(2)
    prepared = tmp_path / "prepared"
    prepared.mkdir()
    yy, xx = np.mgrid[:96, :128]
    smooth = 128 + 60 * np.sin(xx / 9.0) * np.cos(yy / 13.0) + rng.normal(0, 3, (96, 128))
    image = np.repeat(np.clip(smooth, 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    labels = (np.arange(96 * 128, dtype=np.int32).reshape(96, 128) // 97) % 400
    save_npz(prepared / "s.npz", image=image, labels=labels)
    pd.DataFrame({"id": ["s"], "fold": [0]}).to_csv(prepared / "index.csv", index=False)

    png = pack_prepared(prepared, tmp_path / "png.tar")[0]
    assert main(["pack", "pack", str(prepared), str(tmp_path / "jpg.tar"), "--jpeg", "95"]) == 0
    jpg = tmp_path / "jpg.tar"
    with tarfile.open(jpg) as tar:
        assert set(tar.getnames()) == {"index.csv", "s/image.jpg", "s/labels.png"}
        image_bytes = tar.getmember("s/image.jpg").size
    with tarfile.open(png) as tar:
        assert image_bytes < 0.7 * tar.getmember("s/image.png").size

    assert unpack_prepared(jpg, tmp_path / "out") == 1
    back = load_npz(tmp_path / "out" / "s.npz")
    np.testing.assert_array_equal(back["labels"], labels)
    assert back["image"].shape == image.shape and back["image"].dtype == np.uint8
    error = np.abs(back["image"].astype(int) - image)
    assert 0 < error.max() <= 12 and error.mean() < 2.0  # lossy, but close
    assert (tmp_path / "out" / "index.csv").read_bytes() == (prepared / "index.csv").read_bytes()


def test_grey_images_are_stored_with_one_channel():
    grey = np.repeat(np.arange(64, dtype=np.uint8).reshape(8, 8, 1), 3, axis=2)
    colour = grey.copy()
    colour[0, 0, 2] += 1
    grey_png, _ = encode_sample(grey, np.zeros((8, 8), np.int32))
    colour_png, _ = encode_sample(colour, np.zeros((8, 8), np.int32))
    assert decode_sample(grey_png, _)[0].shape == (8, 8, 3)
    assert len(grey_png) < len(colour_png)


def test_bad_input_is_one_line(tmp_path, capsys):
    with pytest.raises(NucleiError, match="index.csv: no such file"):
        pack_prepared(tmp_path / "missing", tmp_path / "a.tar")
    with pytest.raises(NucleiError, match="cannot be packed"):
        encode_sample(np.zeros((2, 2, 3), np.uint8), np.full((2, 2), 70_000, np.int32))
    (tmp_path / "junk.tar").write_bytes(b"not a tar")
    assert main(["pack", "unpack", str(tmp_path / "junk.tar"), str(tmp_path / "out")]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "junk.tar: not a packed training set" in err
    for option, value, expected in (("--part-mib", "0", "0: expected a number above 0"),
                                    ("--jpeg", "0", "0: expected a whole number from 1 to 100")):
        with pytest.raises(SystemExit) as exit_:  # argparse's usage error, before any work
            main(["pack", "pack", str(tmp_path), str(tmp_path / "x.tar"), option, value])
        assert exit_.value.code == 2
        assert capsys.readouterr().err.endswith(f"error: argument {option}: {expected}\n")
    assert not (tmp_path / "out" / "index.csv").exists()
