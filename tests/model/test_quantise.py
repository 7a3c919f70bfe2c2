"""The int8 network of a model folder (pipeline/model/quantise.py): ``nuclei quantise`` writes it, precision
'auto' and 'int8' run it through OpenVINO, and a folder whose weights changed refuses it."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import yaml

from pipeline.cli import main as cli_main
from pipeline.config.model_folder import ModelDirConfig, read_model_config
from pipeline.errors import NucleiError
from pipeline.files.io import write_png
from pipeline.model import quantise
from pipeline.model.backends import RT_SHA, read_int8_network, resolve_backend
from pipeline.model.predictor import load_predictor
from pipeline.model.runtime import resolve_precision
from pipeline.model.segmenter import Segmenter
from pipeline.shipped import model_folder
from tests.conftest import disks, grid_centres, save_threshold_model

from ..hostile import nuclei_cli

pytest.importorskip("nncf")
pytest.importorskip("openvino")


def rgb(image: np.ndarray) -> np.ndarray:
    """A grey (H, W) image as read: (H, W, 3)."""
    return np.repeat(image[..., None], 3, axis=-1)


def disk_images(n: int = 4) -> list[np.ndarray]:
    """Images of bright disks of a few sizes and brightnesses (uint8 (128, 160, 3))."""
    return [rgb(disks((128, 160), grid_centres((128, 160), 32 + 4 * k), radius=6 + k, value=120 + 30 * k)[0])
            for k in range(n)]


@pytest.fixture(scope="module")
def quantised(tmp_path_factory):
    """The threshold U-Net's model folder with an int8 network, made from :func:`disk_images`."""
    folder = save_threshold_model(tmp_path_factory.mktemp("int8") / "tiny")
    written = quantise.quantise_model_dir(folder, disk_images())
    assert written == [folder / quantise.INT8_XML]
    return folder


def test_quantise_writes_the_network_and_names_it(quantised):
    config = read_model_config(quantised)
    assert config.int8_network == quantise.INT8_XML
    assert (quantised / "network_int8.bin").stat().st_size > 0
    assert not list(quantised.glob(".int8-*"))  # the temporary folder is gone
    model = read_int8_network(quantised / quantise.INT8_XML, config.weights_sha256)
    assert model.get_rt_info(RT_SHA).astype(str) == config.weights_sha256
    # integer convolutions: the quantised graph holds FakeQuantize (activations) and int8 weights
    types = {op.get_type_name() for op in model.get_ops()}
    assert "FakeQuantize" in types


def test_auto_runs_the_int8_network_and_agrees_with_fp32(quantised):
    image, truth = disks((128, 160), grid_centres((128, 160), 40), radius=8)
    image = rgb(image)
    fp32 = Segmenter.from_model_dir(quantised, precision="fp32", backend="openvino")
    auto = Segmenter.from_model_dir(quantised, backend="auto")
    assert (fp32.predictor.backend, fp32.predictor.precision) == ("openvino", "fp32")
    assert (auto.predictor.backend, auto.predictor.precision) == ("openvino", "int8")
    x = fp32.normalize(image)
    p32, p8 = fp32.predictor.predict(x), auto.predictor.predict(x)
    assert p8.shape == p32.shape and p8.dtype == np.float32
    assert np.abs(p8 - p32).mean() < 0.02
    a, b = fp32.segment(image).labels, auto.segment(image).labels
    assert a.max() == b.max() == truth.max()
    assert np.mean((a > 0) == (b > 0)) > 0.99


def test_torch_and_fp32_ignore_it(quantised):
    predictor = load_predictor(quantised, device="cpu", backend="torch")
    assert predictor.backend == "torch" and predictor.precision in ("fp32", "bf16")
    assert load_predictor(quantised, device="cpu", backend="openvino", precision="fp32").precision == "fp32"


def test_auto_is_int8_only_through_openvino_with_an_int8_network():
    assert resolve_backend("auto", "cpu", "auto", int8=True) == ("openvino", "int8")
    assert resolve_backend("openvino", "cpu", "auto", int8=True) == ("openvino", "int8")
    assert resolve_backend("openvino", "cpu", "fp32", int8=True) == ("openvino", "fp32")
    assert resolve_backend("onnxruntime", "cpu", "auto", int8=True) == ("onnxruntime", "fp32")
    assert resolve_backend("torch", "cpu", "auto", int8=True)[0] == "torch"
    assert resolve_backend("openvino", "cpu", "auto", int8=False)[1] in ("fp32", "bf16")
    with pytest.raises(NucleiError, match="not one of"):
        resolve_precision("int8", "cpu")  # not a setting: auto picks it


def test_auto_keeps_the_float_network_off_x86(monkeypatch):
    import platform

    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    assert resolve_backend("openvino", "cpu", "auto", int8=True)[1] in ("fp32", "bf16")


def test_new_weights_drop_it_and_stale_ones_are_refused(quantised, tmp_path):
    from pipeline.model.model_dir import load_model_dir, save_model_dir

    folder = shutil.copytree(quantised, tmp_path / "copy")
    model, config = load_model_dir(folder)
    assert config.int8_network == quantise.INT8_XML
    save_model_dir(folder, model, config, storage="float32")  # new weights.pt bytes
    assert read_model_config(folder).int8_network is None
    # a hand-edited config naming the old int8 network again: refused, naming the file
    values = yaml.safe_load((folder / "config.yaml").read_text()) | {"int8_network": quantise.INT8_XML}
    (folder / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    with pytest.raises(NucleiError, match="network_int8.xml: made from other weights"):
        Segmenter.from_model_dir(folder)  # refused on loading, before any image
    assert Segmenter.from_model_dir(folder, precision="fp32").segment(disk_images(1)[0]).labels.max() > 0
    (folder / "network_int8.bin").unlink()
    with pytest.raises(NucleiError, match="int8 network missing"):
        Segmenter.from_model_dir(folder)


@pytest.mark.parametrize("value", ["../x.xml", "/abs/x.xml", "x.bin", "a//b.xml", 3])
def test_int8_network_key_is_a_file_inside_the_folder(value):
    with pytest.raises(NucleiError, match="int8_network must be a .xml file inside the model folder"):
        ModelDirConfig.from_dict({"model": {"arch": "unet"}, "int8_network": value})
    config = ModelDirConfig.from_dict({"model": {"arch": "unet"}, "int8_network": "sub/n.xml"})
    assert config.to_dict()["int8_network"] == "sub/n.xml"


def test_calibration_crops_lie_on_the_stride():
    rng = np.random.default_rng(0)
    view = np.random.default_rng(1).random((600, 300, 3), dtype=np.float32)
    crops = quantise.calibration_crops(view, 32, rng)
    assert len(crops) == round(4 * 600 * 300 / 256**2)
    assert all(c.shape == (1, 3, 256, 256) and c.dtype == np.float32 for c in crops)
    small = quantise.calibration_crops(view[:100, :70], 32, rng)
    assert [c.shape for c in small] == [(1, 3, 96, 64)]
    assert quantise.calibration_crops(view[:20], 32, rng) == []


def test_cli_quantises_a_folder_of_images(tmp_path):
    folder = save_threshold_model(tmp_path / "model")
    images = tmp_path / "images"
    images.mkdir()
    for k, image in enumerate(disk_images(3)):
        write_png(images / f"{k}.png", image)
    assert cli_main(["quantise", str(folder), str(images)]) == 0
    assert read_model_config(folder).int8_network == quantise.INT8_XML
    assert cli_main(["quantise", str(folder)]) == 2  # neither images nor --params


def test_the_shipped_model_carries_a_valid_int8_network():
    folder = model_folder("default")
    config = read_model_config(folder)
    assert config.int8_network == quantise.INT8_XML
    read_int8_network(config.int8_file(folder), config.weights_sha256)
    # the stained network stays in float (int8 lost up to 0.008 on stained sources: docs/decisions.md)
    assert read_model_config(config.network_folder(folder, config.route("stained"))).int8_network is None


def quantise_cli(capsys, *argv) -> tuple[int, str]:
    return nuclei_cli(capsys, "quantise", *argv)


@pytest.mark.hostile
def test_quantise_usage_errors_exit_2_in_one_line_naming_the_folder(tmp_path, capsys):
    folder = save_threshold_model(tmp_path / "model")
    image = tmp_path / "x.png"
    write_png(image, disk_images(1)[0])
    empty = tmp_path / "empty"
    empty.mkdir()
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(folder / "config.yaml", no_weights / "config.yaml")
    for argv, words in (((no_weights, image), "weights.pt"), ((tmp_path / "missing", image), "missing"),
                        ((folder, empty), "empty")):
        status, err = quantise_cli(capsys, *argv)
        lines = [line for line in err.strip().splitlines() if "error" in line]
        assert status == 2 and len(lines) == 1 and words in lines[0] and "Traceback" not in err, err
    assert read_model_config(folder).int8_network is None  # nothing written
