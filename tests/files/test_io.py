"""Reading images and Kaggle folders; atomic writes."""

from __future__ import annotations

import cv2
import numpy as np
import pytest
import tifffile
from PIL import Image

from pipeline.data.kaggle import iter_kaggle_root, masks_to_labels, read_kaggle_labels, read_kaggle_sample
from pipeline.errors import NucleiError
from pipeline.files.inputs import list_images, list_inputs
from pipeline.files.io import (
    atomic_path,
    colour_channel,
    encode_png,
    read_image,
    read_image_planes,
    read_labels,
    write_labels,
    write_png,
)

from ..conftest import disc

RNG = np.random.default_rng(0)
GREY8 = RNG.integers(0, 256, (20, 30), dtype=np.uint8)


@pytest.mark.parametrize(
    "name, array, expected",
    [
        ("grey8.png", GREY8, np.repeat(GREY8[..., None] / 255.0, 3, -1)),
        ("rgb8.png", np.dstack([GREY8, GREY8 // 2, 255 - GREY8]), np.dstack([GREY8, GREY8 // 2, 255 - GREY8]) / 255.0),
        ("rgba8.png", np.dstack([GREY8, GREY8, GREY8, np.full_like(GREY8, 7)]), np.repeat(GREY8[..., None] / 255.0, 3, -1)),
        ("grey16.png", GREY8.astype(np.uint16) * 257, np.repeat(GREY8[..., None] / 255.0, 3, -1)),
    ],
)
def test_read_png_variants(tmp_path, name, array, expected):
    path = tmp_path / name
    Image.fromarray(array).save(path)
    image = read_image(path)
    assert image.dtype == np.float32 and image.shape == (20, 30, 3)
    np.testing.assert_allclose(image, expected, atol=1e-6)


def test_read_tiff_16bit_and_float(tmp_path):
    tifffile.imwrite(tmp_path / "a.tif", GREY8.astype(np.uint16) * 10)
    np.testing.assert_allclose(read_image(tmp_path / "a.tif")[..., 0], GREY8.astype(np.uint16) * 10 / 65535.0, rtol=1e-6)
    data = GREY8.astype(np.float32) * 3.0 - 5.0  # outside [0, 1]: min-max scaled
    tifffile.imwrite(tmp_path / "f.tif", data)
    image = read_image(tmp_path / "f.tif")
    assert image.min() == 0.0 and image.max() == pytest.approx(1.0)
    tifffile.imwrite(tmp_path / "rgb.tif", np.dstack([GREY8] * 3))
    assert read_image(tmp_path / "rgb.tif").shape == (20, 30, 3)


def test_read_jpeg(tmp_path):
    Image.fromarray(np.dstack([GREY8] * 3)).save(tmp_path / "a.jpg", quality=95)
    image = read_image(tmp_path / "a.jpg")
    assert image.shape == (20, 30, 3) and abs(image.mean() - GREY8.mean() / 255) < 0.02


def test_multipage_tiff(tmp_path):
    stack = RNG.integers(0, 255, (3, 16, 16), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "stack.tif", stack, photometric="minisblack")
    planes = read_image_planes(tmp_path / "stack.tif")
    assert len(planes) == 3 and planes[1].shape == (16, 16, 3)
    np.testing.assert_allclose(planes[2][..., 0], stack[2] / 255.0, atol=1e-6)
    with pytest.raises(NucleiError, match="multi-page TIFF with 3 planes"):
        read_image(tmp_path / "stack.tif")
    rgb = RNG.integers(0, 255, (16, 16, 3), dtype=np.uint8)  # one RGB page is one image
    tifffile.imwrite(tmp_path / "rgb.tif", rgb, photometric="rgb")
    assert len(read_image_planes(tmp_path / "rgb.tif")) == 1


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("notes.png", b"this is not an image", "not an image file"),
        ("empty.png", b"", "not an image file"),
        ("bad.tif", b"II*\x00garbage", "not a readable TIFF"),
    ],
)
def test_unreadable_files(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(NucleiError, match=message) as info:
        read_image(path)
    assert str(path) in str(info.value) and "\n" not in str(info.value)


def test_truncated_png_and_missing(tmp_path):
    Image.fromarray(RNG.integers(0, 256, (200, 200), dtype=np.uint8)).save(tmp_path / "full.png")
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(NucleiError, match="cut.png: unreadable or truncated"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(NucleiError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_nan_float_image(tmp_path):
    data = np.ones((8, 8), np.float32)
    data[2, 2] = np.nan
    tifffile.imwrite(tmp_path / "nan.tif", data)
    with pytest.raises(NucleiError, match="NaN"):
        read_image(tmp_path / "nan.tif")


def test_masks_to_labels_overlap_and_holes():
    big = disc((40, 40), (20, 20), 12)
    big[18:22, 18:22] = False  # a hole
    small = disc((40, 40), (20, 31), 5)  # overlaps the big one
    labels = masks_to_labels([big, small])
    assert labels.dtype == np.int32 and labels.max() == 2
    assert (labels == 2).sum() == small.sum()  # the smaller nucleus keeps the overlap
    assert labels[20, 20] == 1  # hole filled
    # deterministic: same masks, same result; order of equal-size ties is by input order
    a = disc((20, 20), (10, 8), 4)
    b = disc((20, 20), (10, 12), 4)
    tie = masks_to_labels([a, b])
    assert tie[10, 10] == 1 and np.array_equal(tie, masks_to_labels([a, b]))
    assert masks_to_labels([np.zeros((5, 5), bool), a[:5, :5] | True]).max() == 1


def _kaggle_sample(root, sample_id, image, masks):
    (root / sample_id / "images").mkdir(parents=True)
    Image.fromarray(image).save(root / sample_id / "images" / f"{sample_id}.png")
    (root / sample_id / "masks").mkdir()
    for k, m in enumerate(masks):
        Image.fromarray((m * 255).astype(np.uint8)).save(root / sample_id / "masks" / f"m{k}.png")


def test_read_kaggle_sample_and_errors(tmp_path, capsys):
    image = np.dstack([GREY8] * 3 + [np.full_like(GREY8, 255)])  # RGBA like Kaggle
    _kaggle_sample(tmp_path, "good", image, [disc((20, 30), (10, 10), 4), disc((20, 30), (10, 20), 4)])
    _kaggle_sample(tmp_path, "wrongsize", image, [disc((21, 30), (10, 10), 4)])
    _kaggle_sample(tmp_path, "nomasks", image, [])
    rgb, labels = read_kaggle_sample(tmp_path / "good")
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3) and np.array_equal(rgb[..., 0], GREY8)
    assert labels.max() == 2
    assert np.array_equal(read_kaggle_labels(tmp_path / "good", (20, 30)), labels)  # the masks alone, as read with the image
    with pytest.raises(NucleiError, match=r"m0.png: mask size 30x21 differs from image size 30x20"):
        read_kaggle_sample(tmp_path / "wrongsize")
    with pytest.raises(NucleiError, match=r"m0.png: mask size 30x20 differs from image size 31x20"):
        read_kaggle_labels(tmp_path / "good", (20, 31))
    with pytest.raises(NucleiError, match="nomasks/masks: no mask files"):
        read_kaggle_sample(tmp_path / "nomasks")
    seen = [i for i, _, _ in iter_kaggle_root(tmp_path, on_error="warn")]
    assert seen == ["good"]
    err = capsys.readouterr().err
    assert "skipped" in err and "wrongsize" in err and "nomasks" in err


def test_read_sample_dataset(sample_root):
    sample = sorted(sample_root.iterdir())[0]
    image, labels = read_kaggle_sample(sample)
    assert labels.max() == len(list((sample / "masks").glob("*.png")))
    assert image.shape[:2] == labels.shape


def test_list_images(tmp_path):
    (tmp_path / "sub").mkdir()
    for name in ["b.png", "a.TIF", "notes.txt", ".hidden.png", "sub/c.jpg"]:
        (tmp_path / name).write_bytes(b"x")
    assert [p.name for p in list_images([tmp_path])] == ["a.TIF", "b.png"]
    assert [p.name for p in list_images([tmp_path], recursive=True)] == ["a.TIF", "b.png", "c.jpg"]
    assert [p.name for p in list_images([tmp_path / "notes.txt", tmp_path / "b.png", tmp_path])] == [
        "notes.txt", "b.png", "a.TIF"]
    with pytest.raises(NucleiError, match="no such file or folder"):
        list_images([tmp_path / "nope"])
    # what a folder holds besides images, for the caller to name: explicit files are not counted
    assert [p.name for p in list_inputs([tmp_path / "b.png", tmp_path])[1]] == ["notes.txt"]
    assert list_inputs([tmp_path / "notes.txt", tmp_path])[1] == []
    (tmp_path / "sub" / "movie.gif").write_bytes(b"x")
    for hidden in (".git/HEAD", ".thumbs/d.png"):  # hidden folders are neither read nor named
        (tmp_path / hidden).parent.mkdir()
        (tmp_path / hidden).write_bytes(b"x")
    assert [p.name for p in list_images([tmp_path], recursive=True)] == ["a.TIF", "b.png", "c.jpg"]
    assert [p.name for p in list_inputs([tmp_path], recursive=True)[1]] == ["notes.txt", "movie.gif"]
    assert list_inputs([tmp_path / "sub"]) == ([tmp_path / "sub" / "c.jpg"], [tmp_path / "sub" / "movie.gif"])


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "x.txt"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert not target.exists() and list(target.parent.iterdir()) == []
    with atomic_path(target) as tmp:
        tmp.write_text("whole")
    assert target.read_text() == "whole" and len(list(target.parent.iterdir())) == 1


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_atomic_writes_take_the_umask_without_setting_it(tmp_path, monkeypatch, umask):
    import os

    old = os.umask(umask)
    try:
        def refuse(_):  # threaded Dask workers write beside us: the umask must never change
            raise AssertionError("os.umask called while writing")

        monkeypatch.setattr(os, "umask", refuse)
        write_png(tmp_path / "a.png", GREY8)
        with atomic_path(tmp_path / "b.txt") as tmp:
            tmp.write_text("x")
    finally:
        monkeypatch.undo()
        os.umask(old)
    for name in ("a.png", "b.txt"):
        assert (tmp_path / name).stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("channels", [None, 3, 4])
def test_png_round_trip_keeps_channel_order(tmp_path, channels):
    array = GREY8 if channels is None else np.dstack([GREY8, GREY8 // 2, 255 - GREY8, GREY8 // 3][:channels])
    write_png(tmp_path / "a.png", array)
    assert not [p for p in tmp_path.iterdir() if p.name != "a.png"]  # no temporary file left
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "a.png")), array)
    assert Image.open(tmp_path / "a.png").mode == {None: "L", 3: "RGB", 4: "RGBA"}[channels]
    deep = array.astype(np.uint16) * 257  # 16-bit PNG, as packed labels are
    np.testing.assert_array_equal(cv2.imdecode(np.frombuffer(encode_png(deep), np.uint8), cv2.IMREAD_UNCHANGED),
                                  deep if channels is None else cv2.cvtColor(deep, {3: cv2.COLOR_RGB2BGR,
                                                                                   4: cv2.COLOR_RGBA2BGRA}[channels]))
    with pytest.raises(ValueError, match="uint8 or uint16"):
        encode_png(array.astype(np.float32))
    with pytest.raises(ValueError, match="shape"):
        encode_png(np.zeros((4, 4, 2), np.uint8))


def test_colour_channel_of_every_kind_of_plane():
    rgba = np.dstack([GREY8, GREY8 // 2, 255 - GREY8, np.full_like(GREY8, 7)]).astype(np.uint16)
    for name, k in (("red", 0), ("green", 1), ("blue", 2)):
        assert colour_channel(rgba, name).dtype == np.uint16
        np.testing.assert_array_equal(colour_channel(rgba, name), rgba[..., k])
        np.testing.assert_array_equal(colour_channel(rgba[..., :3], name), rgba[..., k])
        np.testing.assert_array_equal(colour_channel(GREY8, name), GREY8)  # grey: every channel is the grey
        np.testing.assert_array_equal(colour_channel(np.dstack([GREY8, GREY8 * 0]), name), GREY8)  # + alpha


def test_label_tiff_round_trip(tmp_path):
    labels = RNG.integers(0, 3000, (33, 17)).astype(np.int32)
    write_labels(tmp_path / "l.tif", labels)
    assert tifffile.imread(tmp_path / "l.tif").dtype == np.uint16
    np.testing.assert_array_equal(read_labels(tmp_path / "l.tif"), labels)
    write_labels(tmp_path / "many.tif", np.full((2, 2), 70000))  # more than 65,535 nuclei: uint32, ids kept
    assert tifffile.imread(tmp_path / "many.tif").dtype == np.uint32
    assert (read_labels(tmp_path / "many.tif") == 70000).all()
    with pytest.raises(NucleiError, match="big.tif: labels out of the uint32 range"):
        write_labels(tmp_path / "big.tif", np.full((2, 2), -1))
    assert not (tmp_path / "big.tif").exists()


def test_large_png_is_read_despite_pillows_bomb_guard(tmp_path, monkeypatch):
    """Pillow refuses > 2 x MAX_IMAGE_PIXELS as a 'bomb'; the limit here is memory, not Pillow's."""
    from PIL import Image as PILImage

    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 1000)  # 64 x 64 = 4096 > 2 x 1000
    PILImage.fromarray(GREY8.repeat(4, 0).repeat(4, 1)).save(tmp_path / "big.png")
    assert read_image(tmp_path / "big.png").shape == (80, 120, 3)
    assert PILImage.MAX_IMAGE_PIXELS == 1000  # the guard is back for other code


@pytest.mark.parametrize("name", ["big.png", "big.jpg", "big.bmp", "big.tif"])
def test_images_beyond_the_memory_limit_are_too_large_not_truncated(tmp_path, monkeypatch, name):
    import pipeline.files.planes

    Image.fromarray(np.dstack([GREY8] * 3)).save(tmp_path / name)
    monkeypatch.setattr(pipeline.files.planes, "max_image_pixels", lambda: 500)  # 30 x 20 = 600 px
    with pytest.raises(NucleiError, match=r"image too large \(30x20 px") as info:
        read_image(tmp_path / name)
    assert "truncated" not in str(info.value) and "\n" not in str(info.value)


def test_read_planes_keeps_the_files_units(tmp_path):
    from pipeline.files.io import read_planes
    from pipeline.method.features import intensity_of

    data = GREY8.astype(np.float32) * 3.0 - 5.0
    tifffile.imwrite(tmp_path / "f.tif", data)
    (plane,) = read_planes(tmp_path / "f.tif")
    assert plane.tag == "" and plane.array.dtype == np.float32
    np.testing.assert_array_equal(intensity_of(plane.array), data)
    Image.fromarray(GREY8.astype(np.uint16) * 257).save(tmp_path / "g16.png")
    np.testing.assert_array_equal(intensity_of(read_planes(tmp_path / "g16.png")[0].array), GREY8 * 257.0)
    rgba = np.dstack([GREY8, GREY8 // 2, GREY8 // 4, np.full_like(GREY8, 9)])
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    expected = rgba[..., :3].astype(np.float64).mean(-1)
    np.testing.assert_allclose(intensity_of(read_planes(tmp_path / "rgba.png")[0].array), expected, rtol=1e-6)


def test_multi_series_tiff_reads_every_series(tmp_path):
    from pipeline.files.io import read_planes

    with tifffile.TiffWriter(tmp_path / "ms.tif") as tif:
        tif.write(GREY8)
        tif.write(np.stack([GREY8, GREY8]).astype(np.uint16), photometric="minisblack")
    planes = read_planes(tmp_path / "ms.tif")
    assert [(p.tag, p.series, p.index) for p in planes] == [("", 0, 0), ("_s1_p0", 1, 0), ("_s1_p1", 1, 1)]
    assert planes[2].array.dtype == np.uint16


def test_list_images_skips_kaggle_masks(tmp_path):
    for folder in ("s/images", "s/masks", "other/masks"):
        (tmp_path / folder).mkdir(parents=True)
        Image.fromarray(GREY8).save(tmp_path / folder / "x.png")
    found = list_images([tmp_path], recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == ["other/masks/x.png", "s/images/x.png"]
