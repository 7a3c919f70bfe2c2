"""Which files are read, and how they are turned: symbolic links, FIFOs, files inside the output
folder, EXIF/TIFF orientation (issue 41, classes 3 and 5)."""

from __future__ import annotations

import io
import os
import threading

import numpy as np
import pytest
import tifffile
from PIL import Image, ImageOps

from pipeline.errors import NucleiError
from pipeline.files.inputs import file_kind, list_inputs
from pipeline.files.io import read_planes
from pipeline.files.orientation import apply_orientation

from ..conftest import counts_of, disks, run_cli

ARRAY = (np.arange(12 * 20).reshape(12, 20) % 251).astype(np.uint8)


def test_recursive_follows_symlinked_folders_once_without_looping(tmp_path):
    (tmp_path / "data" / "real").mkdir(parents=True)
    (tmp_path / "elsewhere").mkdir()
    for path in (tmp_path / "data" / "a.png", tmp_path / "elsewhere" / "b.png"):
        path.write_bytes(b"x")
    (tmp_path / "data" / "linked").symlink_to(tmp_path / "elsewhere", target_is_directory=True)
    (tmp_path / "elsewhere" / "loop").symlink_to(tmp_path / "data", target_is_directory=True)  # a cycle
    images, _ = list_inputs([tmp_path / "data"], recursive=True)
    assert [p.relative_to(tmp_path / "data").as_posix() for p in images] == ["a.png", "linked/b.png"]
    assert list_inputs([tmp_path / "data"])[0] == [tmp_path / "data" / "a.png"]  # not recursive: not entered


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_is_named_for_what_it_is_and_never_opened(tmp_path):
    fifo = tmp_path / "pipe.png"
    os.mkfifo(fifo)
    assert file_kind(fifo) == "a named pipe (FIFO)"
    assert list_inputs([fifo])[0] == [fifo]  # named: kept, so that reading it says what it is
    assert list_inputs([tmp_path]) == ([], [fifo])  # in a folder: left out, and named
    errors = []

    def read():
        try:
            read_planes(fifo)
        except NucleiError as exc:
            errors.append(str(exc))

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(5)
    assert not reader.is_alive()  # opening a FIFO would block until a writer comes
    assert errors == [f"{fifo}: a named pipe (FIFO), not an image file"]
    assert file_kind("/dev/null") == "a character device"


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs here")
def test_a_fifo_among_the_inputs_fails_alone(tmp_path, model_dir, capsys):  # noqa: F811
    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    os.mkfifo(tmp_path / "pipe")
    out = tmp_path / "out"
    assert run_cli(tmp_path / "a.png", tmp_path / "pipe", "-o", out, "--model", model_dir) == 1
    counts = counts_of(out)
    assert counts.loc["a", "status"] == "ok" and counts.loc["pipe", "status"] == "failed"
    assert "named pipe (FIFO), not an image file" in counts.loc["pipe", "error"]
    errors = [line for line in capsys.readouterr().err.splitlines() if "pipe" in line]
    assert len(errors) == 1 and "no such file" not in errors[0]


def test_a_named_image_inside_the_output_folder_is_read(tmp_path, model_dir, monkeypatch):  # noqa: F811
    """``cd data && nuclei segment a.png -o .``: a named file is always read."""
    image, _ = disks()
    Image.fromarray(image).save(tmp_path / "a.png")
    monkeypatch.chdir(tmp_path)
    assert run_cli("a.png", "-o", ".", "--model", model_dir) == 0
    assert counts_of(tmp_path).loc["a", "count"] == 3


# --------------------------------------------------------------------------- orientation


@pytest.mark.parametrize("code", range(1, 9))
def test_orientation_matches_pillows_exif_transpose(code):
    im = Image.fromarray(ARRAY)
    exif = im.getexif()
    exif[274] = code
    buffer = io.BytesIO()
    im.save(buffer, format="PNG", exif=exif.tobytes())
    shown = np.asarray(ImageOps.exif_transpose(Image.open(buffer)))
    np.testing.assert_array_equal(apply_orientation(ARRAY, code), shown)
    rgb = np.dstack([ARRAY, ARRAY // 2, ARRAY // 3])
    np.testing.assert_array_equal(apply_orientation(rgb, code)[..., 1], apply_orientation(ARRAY // 2, code))


@pytest.mark.parametrize("fmt", ["jpeg", "png", "tiff"])
def test_orientation_tags_are_applied_on_reading(tmp_path, fmt):
    """A portrait photo stored landscape with Orientation 6 (turn 90° clockwise) reads as shown."""
    path = tmp_path / f"x.{fmt}"
    if fmt == "tiff":
        tifffile.imwrite(path, ARRAY, extratags=[(274, "H", 1, 6, True)])
    else:
        exif = Image.new("L", (1, 1)).getexif()
        exif[274] = 6
        Image.fromarray(ARRAY).save(path, exif=exif.tobytes(), **({"quality": 100} if fmt == "jpeg" else {}))
    (plane,) = read_planes(path)
    assert plane.orientation == 6 and plane.array.shape == (20, 12)
    expected = np.rot90(ARRAY, -1)
    assert np.abs(plane.array.astype(int) - expected).mean() < (3 if fmt == "jpeg" else 1e-9)


def test_labels_follow_the_orientation_and_counts_say_so(tmp_path, model_dir):  # noqa: F811
    image, truth = disks()  # 96 x 128, three discs
    exif = Image.new("L", (1, 1)).getexif()
    exif[274] = 8  # shown turned 90° counter-clockwise
    Image.fromarray(image).save(tmp_path / "turned.png", exif=exif.tobytes())
    Image.fromarray(image).save(tmp_path / "plain.png")
    out = tmp_path / "out"
    assert run_cli(tmp_path, "-o", out, "--model", model_dir) == 0
    counts = counts_of(out)
    assert counts.loc["turned", "orientation"] == "EXIF 8: turned 90° counter-clockwise"
    assert (counts.loc["turned", "height"], counts.loc["turned", "width"]) == (128, 96)
    assert counts.loc["plain", "orientation"] != counts.loc["plain", "orientation"]  # empty: NaN
    labels = tifffile.imread(out / "labels" / "turned.tif")
    np.testing.assert_array_equal(labels > 0, np.rot90(truth, 1) > 0)
