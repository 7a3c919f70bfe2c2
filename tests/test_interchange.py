"""``nuclei export-model``: TorchScript, ONNX and bioimage.io exports round-trip to PyTorch's
probabilities, with dynamic shapes, and document what the network does not do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main as cli_main
from pipeline.errors import NucleiError
from pipeline.method.heads import get_head
from pipeline.model import bioimageio_package, interchange
from pipeline.model.export_docs import DESCRIPTION_FILE, README_FILE
from pipeline.model.model_dir import available_model_dir, load_model_dir, save_model_dir
from pipeline.model.networks import build_model, model_stride
from pipeline.model.onnx_export import ONNX_FILE
from pipeline.model.torchscript import TORCHSCRIPT_FILE

from .conftest import SAMPLE_ROOT, TINY, save_threshold_model

torch.set_num_threads(1)
#: torch.jit.load's deprecation notice (TorchScript is what bioimage.io and deepImageJ read)
pytestmark = pytest.mark.filterwarnings(r"ignore:.*torch\.jit\.load.* is deprecated:FutureWarning")
#: A tiny U-Net with random weights, the shipped model's head and upsampling (transposed convolutions).
RANDOM_TINY = {"arch": "unet", "head": "sigmoid", "depth": 2, "width": 4, "upsampling": "transpose"}


def random_model_dir(path: Path) -> Path:
    """A model folder of :data:`RANDOM_TINY` with random weights and batch-norm statistics."""
    torch.manual_seed(0)
    model = build_model(RANDOM_TINY)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.running_mean.uniform_(-0.2, 0.2)
                module.running_var.uniform_(0.5, 2.0)
    config = {"model": RANDOM_TINY, "postprocess": {"marker_threshold": 0.6, "mask_threshold": 0.4},
              "normalization": {"low": 1.0, "high": 99.8, "saturation": True}, "diameter": 20.0}
    return save_model_dir(path, model, config, storage="float32")


def pytorch_probabilities(model_dir: Path, x: np.ndarray) -> np.ndarray:
    """The model folder's network as loaded (batch norm not folded) with its head's activation."""
    model, config = load_model_dir(model_dir)
    with torch.inference_mode():
        return get_head(config.model.head).activate(model(torch.from_numpy(x))).numpy()


def exported_probabilities(out: Path, x: np.ndarray) -> dict[str, np.ndarray]:
    """Probabilities of the TorchScript file (torch.jit.load) and of the ONNX file (ONNX Runtime)."""
    import onnxruntime as ort

    script = torch.jit.load(str(out / "torchscript" / TORCHSCRIPT_FILE))
    session = ort.InferenceSession(str(out / "onnx" / ONNX_FILE), providers=["CPUExecutionProvider"])
    with torch.inference_mode():
        ts = script(torch.from_numpy(x)).numpy()
    return {"torchscript": ts, "onnx": session.run(["probabilities"], {"input": x})[0]}


@pytest.mark.parametrize("kind", ["threshold", "random"])
def test_torchscript_and_onnx_equal_pytorch_at_another_size(tmp_path, kind):
    pytest.importorskip("onnxruntime")
    model_dir = (save_threshold_model(tmp_path / "m") if kind == "threshold" else random_model_dir(tmp_path / "m"))
    written = interchange.export_model(model_dir, tmp_path / "out", ["torchscript", "onnx"])
    assert set(written) == {"torchscript", "onnx"}
    stride = model_stride(TINY if kind == "threshold" else RANDOM_TINY)
    x = np.random.default_rng(1).random((3, 3, 9 * stride, 13 * stride), dtype=np.float32)  # not the traced 1×2×2 strides
    expected = pytorch_probabilities(model_dir, x)
    for fmt, got in exported_probabilities(tmp_path / "out", x).items():
        assert got.shape == expected.shape, fmt
        assert np.abs(got - expected).max() < 1e-4, fmt
    assert ((expected >= 0) & (expected <= 1)).all()  # probabilities, not logits


def test_onnx_file_is_opset_17_with_dynamic_batch_height_width(tmp_path):
    onnx = pytest.importorskip("onnx")
    interchange.export_model(random_model_dir(tmp_path / "m"), tmp_path / "out", ["onnx"])
    proto = onnx.load(str(tmp_path / "out" / "onnx" / ONNX_FILE))
    assert max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")) >= 17
    for value in (proto.graph.input[0], proto.graph.output[0]):
        dims = value.type.tensor_type.shape.dim
        assert [d.dim_param for d in dims] == ["batch", "", "height", "width"]
        assert value.type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    metadata = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(metadata["nuclei"])["stride"] == 4


def test_each_export_documents_normalisation_scale_channels_and_watershed(tmp_path):
    interchange.export_model(random_model_dir(tmp_path / "m"), tmp_path / "out", ["torchscript"])
    folder = tmp_path / "out" / "torchscript"
    description = json.loads((folder / DESCRIPTION_FILE).read_text())
    norm = description["input"]["normalisation"]
    assert (norm["low_percentile"], norm["high_percentile"], norm["saturation_rule"]) == (1.0, 99.8, True)
    assert description["input"]["channel_order"] == "RGB" and "grey" in description["input"]["grey_images"]
    assert description["stride"] == 4 and description["input"]["height_width_multiple_of"] == 4
    assert description["scale"]["diameter_px"] == 20.0
    assert [c["name"] for c in description["output"]["channels"]] == ["mask", "border"]
    assert description["postprocess"]["thresholds"]["marker_threshold"] == 0.6
    assert description["postprocess"]["thresholds"]["mask_threshold"] == 0.4
    assert description["checked"]["max_abs_difference_torchscript"] < 1e-4
    readme = (folder / README_FILE).read_text()
    for words in ("probability maps, not labels", "multiples of **4**", "percentiles 1 and 99.8", "20 px across",
                  "mask > 0.4", "> 0.6", "Marker-controlled Watershed", "P(mask) − P(border)"):
        assert words in readme, words
    extra = {"model.json": ""}
    torch.jit.load(str(folder / TORCHSCRIPT_FILE), _extra_files=extra)
    assert json.loads(extra["model.json"])["output"]["name"] == "probabilities"


def test_bioimageio_package_is_complete_and_validates(tmp_path):
    pytest.importorskip("onnxruntime")
    written = interchange.export_model(random_model_dir(tmp_path / "m"), tmp_path / "out", ["bioimageio"],
                                       zip_package=True)
    folder = written["bioimageio"]
    import yaml

    rdf = yaml.safe_load((folder / bioimageio_package.RDF_FILE).read_text())
    files = {rdf["documentation"], *rdf["covers"], rdf["inputs"][0]["test_tensor"]["source"],
             rdf["outputs"][0]["test_tensor"]["source"], *(w["source"] for w in rdf["weights"].values())}
    assert all((folder / f).is_file() for f in files)
    assert set(rdf["weights"]) == {"torchscript", "onnx"} and rdf["weights"]["onnx"]["opset_version"] >= 17
    assert [a["id"] if "id" in a else a["type"] for a in rdf["inputs"][0]["axes"]] == ["batch", "channel", "y", "x"]
    assert rdf["inputs"][0]["preprocessing"][0]["id"] == "scale_range"
    assert rdf["inputs"][0]["preprocessing"][0]["kwargs"]["max_percentile"] == 99.8
    assert rdf["outputs"][0]["data"]["range"] == [0.0, 1.0]
    # the expected output is the exported network's on the test input after bioimage.io's preprocessing
    test_input = np.load(folder / bioimageio_package.TEST_INPUT_FILE)
    normalised = bioimageio_package.scale_range(test_input, 1.0, 99.8)
    expected = pytorch_probabilities(tmp_path / "m", normalised)
    assert np.abs(np.load(folder / bioimageio_package.TEST_OUTPUT_FILE) - expected).max() < 1e-4
    documentation = (folder / rdf["documentation"]).read_text()
    assert "probability maps, not labels" in documentation and "scale_range" in documentation
    assert written["bioimageio_zip"].stat().st_size > 0
    pytest.importorskip("bioimageio.spec")
    assert bioimageio_package.validate_bioimageio(folder / bioimageio_package.RDF_FILE)


def test_an_invalid_package_is_reported_in_one_line(tmp_path):
    pytest.importorskip("bioimageio.spec")
    pytest.importorskip("onnxruntime")
    folder = interchange.export_model(random_model_dir(tmp_path / "m"), tmp_path / "out", ["bioimageio"])["bioimageio"]
    (folder / bioimageio_package.TEST_INPUT_FILE).write_bytes(b"not the file the rdf hashed")
    with pytest.raises(NucleiError, match=r"rdf\.yaml: not a valid bioimage\.io package") as info:
        bioimageio_package.validate_bioimageio(folder / bioimageio_package.RDF_FILE)
    assert "\n" not in str(info.value)


def test_cli_writes_the_requested_formats(tmp_path, capsys):
    pytest.importorskip("onnxruntime")
    model_dir = save_threshold_model(tmp_path / "m")
    status = cli_main(["export-model", str(model_dir), "-o", str(tmp_path / "out"), "--format", "onnx",
                       "--format", "torchscript"])
    assert status == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["onnx", "torchscript"]
    out = capsys.readouterr().out
    assert "max |difference| from PyTorch" in out and "second network" not in out


def test_a_models_stained_network_is_named_for_its_own_export(tmp_path, capsys):
    """A model folder with a stained network exports its own network and names the other's folder."""
    from .conftest import add_stained_network

    model_dir = add_stained_network(save_threshold_model(tmp_path / "m"), save_threshold_model(tmp_path / "s"))
    assert cli_main(["export-model", str(model_dir), "-o", str(tmp_path / "out"), "--format", "torchscript"]) == 0
    assert (f"with a second network; export it too: nuclei export-model {model_dir / 'stained'} -o OUT"
            in capsys.readouterr().out)
    described = json.loads((tmp_path / "out" / "torchscript" / "model.json").read_text())
    assert described["stained_model"] == "stained" and "second network" in described["image_types"]
    assert "stained tissue (H&E, IHC) is segmented by the model's second network" in (
        tmp_path / "out" / "torchscript" / "README.md").read_text()
    assert cli_main(["export-model", str(model_dir / "stained"), "-o", str(tmp_path / "out2"), "--format", "torchscript"]) == 0
    described = json.loads((tmp_path / "out2" / "torchscript" / "model.json").read_text())
    assert described["stained_model"] is None and described["image_types"] == "every image type"


@pytest.mark.parametrize("broken", ["missing", "no_weights", "bad_config"])
def test_bad_model_folder_is_a_usage_error_in_one_line(tmp_path, capsys, broken):
    folder = tmp_path / "m"
    if broken != "missing":
        save_threshold_model(folder)
        if broken == "no_weights":
            (folder / "weights.pt").unlink()
        else:
            (folder / "config.yaml").write_text("model: [unet\n")
    status = cli_main(["export-model", str(folder), "-o", str(tmp_path / "out"), "--format", "torchscript"])
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("nuclei: error: ") and str(folder) in err and err.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_unknown_format_is_an_argparse_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["export-model", "default", "-o", str(tmp_path / "out"), "--format", "tflite"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'tflite'" in capsys.readouterr().err


def test_help_says_what_the_export_holds(capsys):
    with pytest.raises(SystemExit):
        cli_main(["export-model", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for words in ("torchscript, onnx, bioimageio", "probabilities, not labels", "normalisation", "watershed"):
        assert words in text, words


# --------------------------------------------------------------------------- the shipped model


def shipped_model() -> Path:
    path = available_model_dir()
    if path is None:
        pytest.skip("no shipped model")
    return path


def sample_crop(stride: int) -> np.ndarray:
    """A normalised crop of an embedded sample image, sides multiples of ``stride`` (not the trace size)."""
    from pipeline.files.io import read_image
    from pipeline.method.intensity import normalize_image

    folder = sorted(p for p in SAMPLE_ROOT.iterdir() if p.is_dir())[7]  # 256 × 320, fluorescence
    image = normalize_image(read_image(folder / "images" / f"{folder.name}.png"))
    crop = image[: 7 * stride, : 9 * stride]
    return np.ascontiguousarray(crop.transpose(2, 0, 1)[None], dtype=np.float32)


def test_shipped_model_round_trips_on_a_sample_crop(tmp_path):
    pytest.importorskip("onnxruntime")
    model_dir = shipped_model()
    _, config = load_model_dir(model_dir)
    interchange.export_model(model_dir, tmp_path / "out", ["torchscript", "onnx"])
    x = sample_crop(model_stride(config.model))
    expected = pytorch_probabilities(model_dir, x)
    for fmt, got in exported_probabilities(tmp_path / "out", x).items():
        assert np.abs(got - expected).max() < 1e-4, fmt
    assert expected[:, 0].max() > 0.9  # nuclei found: a real image, not noise


@pytest.mark.slow
def test_shipped_model_bioimageio_package_passes_bioimageio_core(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("bioimageio.spec")
    folder = interchange.export_model(shipped_model(), tmp_path / "out", ["bioimageio"])["bioimageio"]
    assert bioimageio_package.validate_bioimageio(folder / bioimageio_package.RDF_FILE)
    pytest.importorskip("bioimageio.core")
    bioimageio_package.test_bioimageio(folder / bioimageio_package.RDF_FILE)


def test_a_models_dense_network_is_named_for_its_own_export(tmp_path, capsys):
    """A model folder with a dense network exports its own network and names the dense one's folder
    and the nucleus fraction that sends an image to it."""
    from .conftest import add_dense_network

    model_dir = add_dense_network(save_threshold_model(tmp_path / "m"), save_threshold_model(tmp_path / "d"), fraction=0.45)
    assert cli_main(["export-model", str(model_dir), "-o", str(tmp_path / "out"), "--format", "torchscript"]) == 0
    assert (f"(nuclei over more than 45% of the pixels) with a third network; export it too: nuclei export-model "
            f"{model_dir / 'dense'} -o OUT" in capsys.readouterr().out)
    described = json.loads((tmp_path / "out" / "torchscript" / "model.json").read_text())
    assert (described["dense_model"], described["dense_fraction"]) == ("dense", 0.45)
    assert "over more than 45% of the pixels are segmented again by a third network, its folder 'dense'" in (
        tmp_path / "out" / "torchscript" / "README.md").read_text()
