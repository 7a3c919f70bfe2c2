"""``nuclei export-model``: TorchScript, ONNX and bioimage.io exports round-trip to PyTorch's
probabilities, with dynamic shapes, and document what the network does not do."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.cli import main as cli_main
from pipeline.config.model_folder import read_model_config
from pipeline.errors import NucleiError
from pipeline.method.heads import get_head
from pipeline.model import bioimageio_package, interchange
from pipeline.model.export_docs import DESCRIPTION_FILE, README_FILE
from pipeline.model.model_dir import available_model_dir, load_model_dir, save_model_dir
from pipeline.model.networks import build_model, model_stride
from pipeline.model.onnx_export import ONNX_FILE
from pipeline.model.torchscript import TORCHSCRIPT_FILE

from ..conftest import SAMPLE_ROOT, TINY, save_threshold_model

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
    assert set(written) == {"main"} and set(written["main"]) == {"torchscript", "onnx"}
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
                                       zip_package=True)["main"]
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
    folder = interchange.export_model(random_model_dir(tmp_path / "m"), tmp_path / "out", ["bioimageio"])["main"]["bioimageio"]
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


def routed_model_dir(tmp_path: Path) -> Path:
    """A threshold model folder with a stained network (:data:`RANDOM_TINY`, random weights) and a
    dense one (nucleus fraction above 0.45)."""
    from ..conftest import add_dense_network, add_stained_network

    model_dir = add_stained_network(save_threshold_model(tmp_path / "m"), random_model_dir(tmp_path / "s"))
    return add_dense_network(model_dir, save_threshold_model(tmp_path / "d"), fraction=0.45)


def test_every_network_of_a_folder_is_exported_with_its_rule(tmp_path, capsys):
    """The folder's own network into OUT, each route's into OUT/<name>/; each description names the
    images its network runs and lists the folder's networks with their rules."""
    model_dir, out = routed_model_dir(tmp_path), tmp_path / "out"
    assert cli_main(["export-model", str(model_dir), "-o", str(out), "--format", "torchscript"]) == 0
    printed = capsys.readouterr().out
    assert f"torchscript: {out / 'stained' / 'torchscript'}" in printed and "export it too" not in printed
    assert "network stained: images of type histology" in printed
    described = {name: json.loads((out / sub / "torchscript" / DESCRIPTION_FILE).read_text())
                 for name, sub in (("main", "."), ("stained", "stained"), ("dense", "dense"))}
    assert [d["network"] for d in described.values()] == ["main", "stained", "dense"]
    for name, folder in (("main", model_dir), ("stained", model_dir / "stained")):  # each its own network's
        assert described[name]["weights_sha256"] == read_model_config(folder).weights_sha256
    assert described["stained"]["weights_sha256"] != described["main"]["weights_sha256"]
    networks = described["main"]["networks"]
    assert [(n["name"], n["folder"]) for n in networks] == [("main", "."), ("stained", "stained"), ("dense", "dense")]
    assert networks[1]["rule"] == "images of type histology" and "more than 45% of the pixels" in networks[2]["rule"]
    assert all(d["networks"] == networks for d in described.values())
    assert "segmented by network 'stained'" in described["main"]["image_types"]
    assert "segmented again by network 'dense'" in described["main"]["image_types"]
    assert described["dense"]["image_types"].startswith("images in which the folder's own network finds nuclei")
    assert "`stained` (folder `stained`): images of type histology" in (out / "torchscript" / README_FILE).read_text()
    extra = {"model.json": ""}  # the TorchScript file of the stained export is the stained network's
    torch.jit.load(str(out / "stained" / "torchscript" / TORCHSCRIPT_FILE), _extra_files=extra)
    assert json.loads(extra["model.json"])["network"] == "stained"


def test_network_option_exports_that_network_alone_into_out(tmp_path, capsys):
    model_dir, out = routed_model_dir(tmp_path), tmp_path / "out"
    assert cli_main(["export-model", str(model_dir), "-o", str(out), "--format", "torchscript", "--network", "stained"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["torchscript"]
    described = json.loads((out / "torchscript" / DESCRIPTION_FILE).read_text())
    assert described["network"] == "stained"
    assert described["weights_sha256"] == read_model_config(model_dir / "stained").weights_sha256
    assert described["source_model"] == str(model_dir / "stained")
    assert "network stained" not in capsys.readouterr().out  # one network: no heading


def test_unknown_network_is_a_usage_error_in_one_line(tmp_path, capsys):
    model_dir = routed_model_dir(tmp_path)
    status = cli_main(["export-model", str(model_dir), "-o", str(tmp_path / "out"), "--network", "nope"])
    err = capsys.readouterr().err
    assert status == 2 and err.count("\n") == 1
    assert err.startswith("nuclei: error: ") and "'nope'" in err and "main, stained, dense" in err
    assert not (tmp_path / "out").exists()


def test_a_folder_without_routes_describes_one_network(tmp_path):
    written = interchange.export_model(save_threshold_model(tmp_path / "m"), tmp_path / "out", ["torchscript"])
    described = json.loads((written["main"]["torchscript"] / DESCRIPTION_FILE).read_text())
    assert (described["network"], described["image_types"], described["networks"]) == ("main", "every image type", [])
    assert not any(key in described for key in ("stained_model", "dense_model", "dense_fraction"))


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
    interchange.export_model(model_dir, tmp_path / "out", ["torchscript", "onnx"], network="main")
    x = sample_crop(model_stride(config.model))
    expected = pytorch_probabilities(model_dir, x)
    for fmt, got in exported_probabilities(tmp_path / "out", x).items():
        assert np.abs(got - expected).max() < 1e-4, fmt
    assert expected[:, 0].max() > 0.9  # nuclei found: a real image, not noise


@pytest.mark.slow
def test_shipped_model_bioimageio_package_passes_bioimageio_core(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("bioimageio.spec")
    folder = interchange.export_model(shipped_model(), tmp_path / "out", ["bioimageio"], network="main")["main"]["bioimageio"]
    assert bioimageio_package.validate_bioimageio(folder / bioimageio_package.RDF_FILE)
    pytest.importorskip("bioimageio.core")
    bioimageio_package.test_bioimageio(folder / bioimageio_package.RDF_FILE)
