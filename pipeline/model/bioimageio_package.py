"""The network as a bioimage.io model package (``nuclei export-model``'s ``bioimageio`` format), for
Fiji (deepImageJ), QuPath, ilastik and bioimage.io.

:func:`write_bioimageio` writes, in format :data:`BIOIMAGEIO_FORMAT`: ``rdf.yaml``, both weights
(TorchScript and ONNX), a test input and its expected output (``.npy``; the same as sample tensors,
``.tif``), ``cover.png``, ``README.md`` (its documentation) and ``model.json``. The test input is a
sample image at the network's scale in its own units; the package declares bioimage.io's
``scale_range`` preprocessing (:func:`scale_range`) followed by ``clip``.
:func:`validate_bioimageio` checks a package with ``bioimageio.spec`` (extra ``.[bioimageio]``),
:func:`test_bioimageio` runs ``bioimageio.core``'s test of it, :func:`zip_folder` packs it for
deepImageJ.

Must not: normalise inside the network, or read params.yaml.
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from pipeline import __version__
from pipeline.config.model_folder import ModelDirConfig
from pipeline.errors import NucleiError, UsageError
from pipeline.files.io import atomic_path, write_json, write_png, write_text
from pipeline.method.heads import get_head
from pipeline.model.backends import INPUT_NAME, ONNX_OPSET, OUTPUT_NAME
from pipeline.model.export_docs import DESCRIPTION_FILE, LICENCE, README_FILE, readme_text
from pipeline.model.onnx_export import ONNX_FILE, write_onnx
from pipeline.model.torchscript import TORCHSCRIPT_FILE, save_torchscript

#: Side (px, at the network's scale) of the bioimage.io test input and of the cover.
TEST_SIDE = 256
#: The context (px) a tiling consumer should crop from each side of an output tile: half the
#: overlap of :class:`pipeline.model.predictor.Predictor`'s tiles (64 px).
HALO = 32
#: File names inside the package besides the weights, ``README.md`` and ``model.json``.
RDF_FILE = "rdf.yaml"
TEST_INPUT_FILE, TEST_OUTPUT_FILE, COVER_FILE = "test_input.npy", "test_output.npy", "cover.png"
SAMPLE_INPUT_FILE, SAMPLE_OUTPUT_FILE = "sample_input.tif", "sample_output.tif"
#: bioimage.io model description format the package is written in (read by bioimageio.spec ≥ 0.5.4,
#: deepImageJ 3.1 and QuPath's extension 0.6).
BIOIMAGEIO_FORMAT = "0.5.4"
#: The works a bioimage.io package cites.
CITATIONS = (
    {"text": "Caicedo, J. C. et al. Nucleus segmentation across imaging experiments: the 2018 Data Science "
             "Bowl. Nature Methods 16, 1247-1253 (2019)", "doi": "10.1038/s41592-019-0612-7"},
    {"text": "Ronneberger, O., Fischer, P. & Brox, T. U-Net: Convolutional Networks for Biomedical Image "
             "Segmentation. MICCAI 2015, LNCS 9351, 234-241", "doi": "10.1007/978-3-319-24574-4_28"},
)


def zip_folder(folder: Path, path: Path) -> Path:
    """The files of ``folder`` (not nested) in a zip file at ``path``, written atomically."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                if file.is_file():
                    archive.write(file, file.name)
    return path



def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()



def sample_image(sample: str | Path | None = None) -> np.ndarray:
    """The image of the bioimage.io test input: float32 (H, W, 3) as read (``pipeline.files.io.read_image``).

    ``sample``, else the napari sample shipped with the package, else synthetic bright discs on a
    dark background.
    """
    from pipeline.files.io import read_image

    if sample is None:
        from pipeline.shipped import SAMPLE_IMAGE

        if SAMPLE_IMAGE.is_file():
            sample = SAMPLE_IMAGE
    if sample is not None:
        if not Path(sample).is_file():
            raise UsageError(f"{sample}: sample image not found")
        return read_image(sample)
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:TEST_SIDE, :TEST_SIDE]
    grey = np.full((TEST_SIDE, TEST_SIDE), 0.05, np.float32)
    for cy, cx in rng.uniform(12, TEST_SIDE - 12, (40, 2)):
        grey[(yy - cy) ** 2 + (xx - cx) ** 2 <= 81] = rng.uniform(0.4, 0.9)
    return np.dstack([grey] * 3)


def _at_network_scale(image: np.ndarray, network: nn.Module, config: ModelDirConfig, stride: int) -> np.ndarray:
    """``image`` (as read) resized so that its nuclei are the model's canonical diameter (estimated
    as ``nuclei segment`` does), cut or mirrored to :data:`TEST_SIDE` px square."""
    from pipeline.method.scale import resize_image, scaled_shape
    from pipeline.model.predictor import Predictor
    from pipeline.model.segmenter import Segmenter

    segmenter = Segmenter(Predictor(network.network, config, device="cpu", tta="none"))
    _, _, scale = segmenter.scale_for(segmenter.normalize(image))
    image = resize_image(image, scaled_shape(image.shape[:2], scale)).astype(np.float32)
    side = TEST_SIDE
    pad = [(0, max(0, side - n)) for n in image.shape[:2]] + [(0, 0)]
    image = np.pad(image, pad, mode="reflect")
    top, left = ((n - side) // 2 for n in image.shape[:2])
    return np.ascontiguousarray(image[top : top + side, left : left + side])


def scale_range(x: np.ndarray, low: float, high: float, eps: float = 1e-6) -> np.ndarray:
    """bioimage.io's ``scale_range`` over all axes but the batch, then ``clip`` to [0, 1]:
    ``clip((x − p_low) / (p_high − p_low + eps), 0, 1)`` per sample (float32 (B, C, H, W))."""
    flat = x.reshape(len(x), -1).astype(np.float64)
    lo, hi = (np.percentile(flat, q, axis=1)[:, None, None, None] for q in (low, high))
    return np.clip((x - lo) / (hi - lo + eps), 0.0, 1.0).astype(np.float32)


def cover_image(image: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """uint8 (H, 2W, 3): the normalised input beside P(nucleus) in green and P(border) in magenta."""
    grey = (np.clip(image.mean(axis=2), 0, 1) * 255).astype(np.uint8)
    left = np.dstack([grey] * 3)
    mask, border = probs[0], probs[1] if len(probs) > 1 else np.zeros_like(probs[0])
    right = np.dstack([border, mask, border])
    right = (np.clip(right, 0, 1) * 255).astype(np.uint8)
    return np.concatenate([left, right], axis=1)



def write_bioimageio(folder: Path, network: nn.Module, script: torch.jit.ScriptModule, onnx: bytes,
                     config: ModelDirConfig, stride: int, description: dict[str, Any],
                     sample: str | Path | None = None) -> list[str]:
    """Write a bioimage.io model package (format :data:`BIOIMAGEIO_FORMAT`) into ``folder``: its test
    tensors, cover, weights, ``model.json``, ``README.md`` and ``rdf.yaml``. ``description``
    (:func:`pipeline.model.export_docs.export_description`) gains ``bioimageio_test``. Returns the
    files written."""
    norm = config.normalization
    raw = _at_network_scale(sample_image(sample), network, config, stride)
    test_input = raw.transpose(2, 0, 1)[None].astype(np.float32)  # (1, 3, H, W), the image's own units
    normalised = scale_range(test_input, norm.low, norm.high)
    with torch.inference_mode():
        test_output = script(torch.from_numpy(normalised)).numpy().astype(np.float32)
    from pipeline.method.intensity import normalize_image

    ours = normalize_image(raw, **norm.to_dict()).transpose(2, 0, 1)[None]
    description["bioimageio_test"] = {
        "input": "the sample at the network's scale, float32 in its own units (1, 3, "
                 f"{TEST_SIDE}, {TEST_SIDE})",
        "max_abs_difference_scale_range_vs_pipeline_normalisation": float(np.abs(ours - normalised).max()),
    }
    _write_test_tensors(folder, test_input, test_output)
    write_png(folder / COVER_FILE, cover_image(normalised[0].transpose(1, 2, 0), test_output[0]))
    save_torchscript(script, folder / TORCHSCRIPT_FILE, description)
    write_onnx(folder / ONNX_FILE, onnx)
    files = [RDF_FILE, TORCHSCRIPT_FILE, ONNX_FILE, TEST_INPUT_FILE, TEST_OUTPUT_FILE, SAMPLE_INPUT_FILE,
             SAMPLE_OUTPUT_FILE, COVER_FILE, README_FILE, DESCRIPTION_FILE]
    write_json(folder / DESCRIPTION_FILE, description)
    write_text(folder / README_FILE, readme_text(description, "bioimageio", files))
    rdf = rdf_description(folder, config, stride)  # after the files it hashes
    write_text(folder / RDF_FILE, yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True))
    return files


def _write_test_tensors(folder: Path, test_input: np.ndarray, test_output: np.ndarray) -> None:
    """The test input and output float32 (1, C, H, W) as ``.npy`` (test tensors) and ``.tif`` (samples)."""
    for name, array in ((TEST_INPUT_FILE, test_input), (TEST_OUTPUT_FILE, test_output)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        with atomic_path(folder / name) as tmp:
            tmp.write_bytes(buffer.getvalue())
    import tifffile

    for name, array in ((SAMPLE_INPUT_FILE, test_input), (SAMPLE_OUTPUT_FILE, test_output)):
        with atomic_path(folder / name) as tmp:
            tifffile.imwrite(tmp, array, photometric="minisblack")


def rdf_description(folder: Path, config: ModelDirConfig, stride: int) -> dict[str, Any]:
    """The package's ``rdf.yaml`` (bioimage.io model description :data:`BIOIMAGEIO_FORMAT`), with the
    sha256 of the files already in ``folder``."""
    nuclei = f"nuclei of {config.diameter:g} px" if config.diameter else "nuclei at the image's own scale"
    return {
        "format_version": BIOIMAGEIO_FORMAT,
        "type": "model",
        "name": "DSB2018 nucleus U-Net (nuclei-pipeline)",
        "description": (f"Nuclei in 2-D light microscopy: a U-Net giving P(nucleus) and P(border between touching "
                        f"nuclei) for images resized to {nuclei} across. Probability maps, "
                        "not labels: the marker-controlled watershed is described in the documentation."),
        "version": __version__,
        "authors": [{"name": "nuclei-pipeline contributors"}],
        "cite": [dict(c) for c in CITATIONS],
        "license": LICENCE,
        "documentation": README_FILE,
        "covers": [COVER_FILE],
        "attachments": [{"source": DESCRIPTION_FILE, "sha256": _sha256(folder / DESCRIPTION_FILE)}],
        "tags": ["nuclei", "nucleus-segmentation", "instance-segmentation", "unet", "2d", "fluorescence-light-microscopy",
                 "histology", "pytorch", "torchscript", "onnx", "dsb2018"],
        "inputs": [_rdf_input(folder, config, stride, nuclei)],
        "outputs": [_rdf_output(folder, config)],
        "weights": {
            "torchscript": {"source": TORCHSCRIPT_FILE, "sha256": _sha256(folder / TORCHSCRIPT_FILE),
                            "pytorch_version": torch.__version__.split("+")[0]},
            "onnx": {"source": ONNX_FILE, "sha256": _sha256(folder / ONNX_FILE), "opset_version": ONNX_OPSET,
                     "parent": "torchscript"},
        },
    }


def _rdf_input(folder: Path, config: ModelDirConfig, stride: int, nuclei: str) -> dict[str, Any]:
    """The ``rdf.yaml``'s input tensor: axes (sizes multiples of ``stride``), test tensors, preprocessing."""
    norm = config.normalization
    minimum = -(-(2 * HALO + stride) // stride) * stride
    return {
        "id": INPUT_NAME,
        "description": f"an RGB image (a grey image repeated in three channels) in its own units, {nuclei} across",
        "axes": [
            {"type": "batch"},
            {"type": "channel", "channel_names": ["red", "green", "blue"]},
            *({"type": "space", "id": axis, "size": {"min": minimum, "step": stride}} for axis in ("y", "x")),
        ],
        "test_tensor": {"source": TEST_INPUT_FILE, "sha256": _sha256(folder / TEST_INPUT_FILE)},
        "sample_tensor": {"source": SAMPLE_INPUT_FILE, "sha256": _sha256(folder / SAMPLE_INPUT_FILE)},
        "data": {"type": "float32"},
        "preprocessing": [
            {"id": "scale_range", "kwargs": {"axes": ["channel", "y", "x"], "min_percentile": norm.low,
                                             "max_percentile": norm.high}},
            {"id": "clip", "kwargs": {"min": 0.0, "max": 1.0}},
        ],
    }


def _rdf_output(folder: Path, config: ModelDirConfig) -> dict[str, Any]:
    """The ``rdf.yaml``'s output tensor: the head's channels (probabilities), the halo, test tensors."""
    head = get_head(config.model.head)
    return {
        "id": OUTPUT_NAME,
        "description": "; ".join(f"channel {i}: {m}" for i, (_, m) in enumerate(head.channel_meanings)),
        "axes": [
            {"type": "batch"},
            {"type": "channel", "channel_names": [n for n, _ in head.channel_meanings]},
            {"type": "space", "id": "y", "size": {"tensor_id": INPUT_NAME, "axis_id": "y"}, "halo": HALO},
            {"type": "space", "id": "x", "size": {"tensor_id": INPUT_NAME, "axis_id": "x"}, "halo": HALO},
        ],
        "test_tensor": {"source": TEST_OUTPUT_FILE, "sha256": _sha256(folder / TEST_OUTPUT_FILE)},
        "sample_tensor": {"source": SAMPLE_OUTPUT_FILE, "sha256": _sha256(folder / SAMPLE_OUTPUT_FILE)},
        "data": {"type": "float32", "range": [0.0, 1.0]},
    }


def validate_bioimageio(rdf: Path) -> str | None:
    """Validate a package's ``rdf.yaml`` with ``bioimageio.spec`` (its format and its files' hashes);
    returns the installed version, None when it is not installed.

    Raises
    ------
    NucleiError
        The package does not validate (the first error).
    """
    if importlib.util.find_spec("bioimageio.spec") is None:
        return None
    import bioimageio.spec

    descr = bioimageio.spec.load_description(rdf, perform_io_checks=True)
    summary = descr.validation_summary
    if summary.status not in ("valid-format", "passed"):
        raise NucleiError(f"{rdf}: not a valid bioimage.io package ({_first_error(summary)})")
    return bioimageio.spec.__version__


def test_bioimageio(rdf: Path) -> None:
    """Run ``bioimageio.core``'s test of the package (each weights format on the test input).

    Raises
    ------
    NucleiError
        The test failed (the first error).
    """
    from bioimageio.core import test_model

    summary = test_model(rdf)
    if summary.status not in ("passed", "valid-format"):
        raise NucleiError(f"{rdf}: bioimageio.core's test failed ({_first_error(summary)})")


def _first_error(summary) -> str:
    for detail in getattr(summary, "details", []):
        for error in getattr(detail, "errors", []):
            return f"{'.'.join(map(str, error.loc))}: {error.msg}"[:300]
    return str(summary.status)
