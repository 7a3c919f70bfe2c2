"""The network in other runtimes' formats: TorchScript, ONNX and a bioimage.io model package
(``nuclei export-model``).

Every export is the network *with its head's activation*: float32 ``(B, 3, H, W)`` in, float32
probabilities ``(B, C, H, W)`` out (:class:`pipeline.model.backends.ProbabilityNetwork`), batch norm folded into the
convolutions, with dynamic batch, height and width (height and width multiples of the network's
stride, :func:`pipeline.model.networks.model_stride`). The rest of the recipe stays outside the
network and is written down beside each export instead (:func:`pipeline.model.export_docs.export_description`, a
``model.json`` and a ``README.md``): the intensity normalisation, the resizing to the canonical
nucleus diameter, the meaning of the output channels and the watershed that turns them into
nuclei. A Fiji (deepImageJ) or QuPath user therefore gets probability maps, not labels.

``nuclei export-model MODEL -o OUT [--network NAME] [--format torchscript|onnx|bioimageio ...]``
exports every network of the model folder (:attr:`pipeline.config.model_folder.ModelDirConfig.networks`):
its own into ``OUT``, each route's into ``OUT/<name>/`` (``--network NAME``: only that one, into
``OUT``); each export's description names the images its network runs and the folder's networks
with their rules (:mod:`pipeline.config.routing`). For one network it writes

- ``OUT/torchscript/``: ``model.torchscript.pt`` (``torch.jit.trace``), ``model.json``, ``README.md``;
- ``OUT/onnx/``: ``model.onnx`` (opset :data:`pipeline.model.backends.ONNX_OPSET`), ``model.json``, ``README.md``;
- ``OUT/bioimageio/``: a bioimage.io model package (spec 0.5): ``rdf.yaml``, both weights, a test
  input and its expected output (``.npy``; the same as sample tensors, ``.tif``), ``cover.png``,
  ``README.md`` (its documentation), ``model.json``; ``--zip`` also writes ``OUT/bioimageio.zip``
  (what deepImageJ installs).

Each export is checked before it is reported: the exported network's output on an input of
another size than the traced one equals PyTorch's within :data:`TOLERANCE` (ONNX Runtime when
installed), and the bioimage.io package validates with ``bioimageio.spec`` when installed (extra
``.[bioimageio]``; ``--test`` also runs ``bioimageio.core``'s test of the package).

The network with its activation and its ONNX export are those the ``onnxruntime`` and ``openvino``
inference backends run (:mod:`pipeline.model.backends`: :func:`~pipeline.model.backends.probability_network`,
:func:`~pipeline.model.backends.onnx_bytes`).

One module per format: :mod:`pipeline.model.torchscript`, :mod:`pipeline.model.onnx_export`,
:mod:`pipeline.model.bioimageio_package`; what each export says about itself:
:mod:`pipeline.model.export_docs`. This module is the command and the round-trip check.

Must not: run the watershed or normalise inside the exported network (both are documented, not
exported), or read params.yaml (a model folder carries every setting an export documents).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.config.model_folder import ModelDirConfig
from pipeline.config.routing import MAIN, Route
from pipeline.errors import NucleiError, UsageError
from pipeline.files.io import write_json, write_text
from pipeline.model.backends import (
    INPUT_NAME,
    OUTPUT_NAME,
    check_input,
    onnx_bytes,
    onnxruntime_session,
    probability_network,
)
from pipeline.model.bioimageio_package import (
    RDF_FILE,
    test_bioimageio,
    validate_bioimageio,
    write_bioimageio,
    zip_folder,
)
from pipeline.model.export_docs import DESCRIPTION_FILE, README_FILE, export_description, readme_text
from pipeline.model.onnx_export import ONNX_FILE, onnx_with_metadata, write_onnx
from pipeline.model.torchscript import TORCHSCRIPT_FILE, save_torchscript, torchscript_module

#: The export formats of ``nuclei export-model``, in the order they are written.
FORMATS = ("torchscript", "onnx", "bioimageio")
#: Largest absolute difference allowed between an exported network's probabilities and PyTorch's.
TOLERANCE = 1e-4
#: The weights file of each format's own folder.
_WEIGHTS = {"torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE}


def round_trip(network: nn.Module, stride: int, onnx: bytes | None = None,
               script: torch.jit.ScriptModule | None = None) -> dict[str, float]:
    """Largest absolute differences between ``network``'s probabilities and those of its ONNX
    model (run by ONNX Runtime, when installed) and of its TorchScript module, on an input of
    another batch size and shape than the traced one (:func:`_check_input`)."""
    x = check_input(stride)
    with torch.inference_mode():
        expected = network(x).numpy()
    differences = {}
    if script is not None:
        with torch.inference_mode():
            differences["torchscript"] = float(np.abs(script(x).numpy() - expected).max())
    if onnx is not None and importlib.util.find_spec("onnxruntime") is not None:
        got = onnxruntime_session(onnx).run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        differences["onnx"] = float(np.abs(got - expected).max())
    return differences


def _load(model_dir: str | Path) -> tuple[nn.Module, ModelDirConfig, Path]:
    """The model folder ``model_dir`` (``default``: the shipped model), or a UsageError in one line."""
    from pipeline.model.model_dir import load_model_dir

    path = _folder(model_dir)
    try:
        model, config = load_model_dir(path, "cpu")
    except NucleiError as exc:
        raise UsageError(str(exc)) from None
    return model, config, path


def _folder(model_dir: str | Path) -> Path:
    """The model folder ``model_dir`` names (``default``: the shipped model), or a UsageError."""
    from pipeline.shipped import model_folder

    path = model_folder(model_dir)
    if not path.is_dir():
        raise UsageError(f"{path}: model directory not found")
    return path


@dataclass(frozen=True)
class _Request:
    """What to write for each network (:func:`export_model`'s arguments)."""

    formats: tuple[str, ...]
    sample: str | Path | None = None
    zip_package: bool = False
    test: bool = False


def export_model(model_dir: str | Path, out: str | Path, formats: tuple[str, ...] | list[str] = FORMATS,
                 sample: str | Path | None = None, zip_package: bool = False, test: bool = False,
                 network: str | None = None) -> dict[str, dict[str, Path]]:
    """Export the networks of a model folder to ``formats`` under ``out``.

    Parameters
    ----------
    model_dir : str or Path
        A model folder (``config.yaml`` + ``weights.pt``), or ``default`` for the shipped model.
    out : str or Path
        The output folder: the folder's own network's exports in ``out``, each other network's
        (:attr:`ModelDirConfig.routes`) in ``out/<name>``; each format gets a sub-folder
        (``out/torchscript``, ...).
    formats : sequence of str
        Some of :data:`FORMATS`.
    sample : str or Path, optional
        The image of the bioimage.io test input and cover (default: the napari sample shipped with
        the package, a 256 × 256 DSB2018 fluorescence image, else synthetic nuclei).
    zip_package : bool
        Also write ``bioimageio.zip`` beside each ``bioimageio`` folder.
    test : bool
        Run ``bioimageio.core``'s test of the package (needs the extra ``.[bioimageio]``).
    network : str, optional
        Export only this network (``main``: the folder's own; else a route's name), into ``out``.

    Returns
    -------
    written : dict
        Network name → {format → its folder (``bioimageio_zip`` → the zip when written)}.

    Raises
    ------
    UsageError
        An unknown format or network, a missing or broken model folder, ``test`` without bioimageio.core.
    NucleiError
        An export whose output differs from PyTorch's by more than :data:`TOLERANCE`, a bioimage.io
        package that does not validate or whose test fails.
    """
    _check_request(formats, test)
    from pipeline.config.model_folder import read_model_config

    path, out = _folder(model_dir), Path(out)
    try:
        config = read_model_config(path)
        chosen = [(config.route(network), out)] if network is not None else [
            (route, out if route.name == MAIN else out / route.name) for route in config.networks]
    except NucleiError as exc:
        raise UsageError(str(exc)) from None
    request = _Request(tuple(formats), sample, zip_package, test)
    written = {}
    for route, where in chosen:
        folder = config.network_folder(path, route)
        source = str(model_dir) if route.name == MAIN else str(folder)
        written[route.name] = _export_network(folder, source, where, request, config.routes, route)
    return written


def _check_request(formats: tuple[str, ...] | list[str], test: bool) -> None:
    """A UsageError for an unknown format, or a format or ``test`` whose package is not installed."""
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UsageError(f"unknown export format {unknown[0]!r} (one of {', '.join(FORMATS)})")
    if any(f in formats for f in ("onnx", "bioimageio")) and importlib.util.find_spec("onnx") is None:
        raise UsageError(f"{', '.join(f for f in formats if f != 'torchscript')} export needs the onnx package: "
                         "pip install 'nuclei-pipeline[export]'")
    if test and importlib.util.find_spec("bioimageio.core") is None:
        raise UsageError("--test needs bioimageio.core: pip install bioimageio.core")


def _export_network(model_dir: Path, source: str, out: Path, request: _Request, routes: tuple[Route, ...],
                    route: Route) -> dict[str, Path]:
    """The network of the model folder ``model_dir`` (``source``: as the user named it; ``route`` of a
    folder with ``routes``) to the requested formats under ``out``, checked (:func:`round_trip`)."""
    from pipeline.model.networks import model_stride

    model, config, path = _load(model_dir)
    formats = request.formats
    stride = model_stride(config.model)
    network = probability_network(model, config.model.head)
    description = export_description(config, stride, source, routes, route)
    need_onnx = any(f in formats for f in ("onnx", "bioimageio"))
    script = torchscript_module(network, stride) if any(f in formats for f in ("torchscript", "bioimageio")) else None
    onnx = onnx_with_metadata(onnx_bytes(network, stride), description) if need_onnx else None
    differences = round_trip(network, stride, onnx, script)
    bad = {k: v for k, v in differences.items() if not v <= TOLERANCE}
    if bad:
        raise NucleiError(f"{path}: the exported network differs from PyTorch's by "
                          + ", ".join(f"{v:.2g} ({k})" for k, v in bad.items()) + f" (> {TOLERANCE:g})")
    description["checked"] = {f"max_abs_difference_{k}": v for k, v in differences.items()} | {
        "input_shape": list(check_input(stride).shape)}
    written: dict[str, Path] = {}
    for fmt in formats:
        folder = written[fmt] = out / fmt
        if fmt == "bioimageio":
            write_bioimageio(folder, network, script, onnx, config, stride, dict(description), request.sample)
            continue
        if fmt == "torchscript":
            save_torchscript(script, folder / TORCHSCRIPT_FILE, description)
        else:
            write_onnx(folder / ONNX_FILE, onnx)
        write_json(folder / DESCRIPTION_FILE, description)
        write_text(folder / README_FILE, readme_text(description, fmt, [_WEIGHTS[fmt]]))
    if "bioimageio" in formats:
        folder = written["bioimageio"]
        validate_bioimageio(folder / RDF_FILE)
        if request.test:
            test_bioimageio(folder / RDF_FILE)
        if request.zip_package:
            written["bioimageio_zip"] = zip_folder(folder, out / "bioimageio.zip")
    return written


# --------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei export-model``."""
    parser.description = (
        "Export a model folder's networks (with their sigmoid/softmax: probabilities, not labels) as TorchScript, "
        "ONNX and/or a bioimage.io package (Fiji deepImageJ, QuPath, ilastik, bioimage.io): the folder's own "
        "network into OUT, each of its other networks (config.yaml's networks) into OUT/<name>/. Each export folder "
        "holds README.md and model.json: the input normalisation (percentiles, RGB order), the nucleus diameter "
        "to resize to, the stride, the output channels, the watershed thresholds that turn probabilities "
        "into nuclei and the images the network is for. Needs the extra .[export] (onnx, onnxruntime); "
        ".[bioimageio] validates the package."
    )
    parser.add_argument("model", help="a model folder (config.yaml + weights.pt), or 'default' or 'he' for a shipped model")
    parser.add_argument("-o", "--out", required=True, type=Path, help="output folder: one sub-folder per format")
    parser.add_argument("--network", metavar="NAME", default=None,
                        help=f"export only this network, into OUT: {MAIN!r} (the folder's own) or the name of one "
                             "of its networks (default: all)")
    parser.add_argument("--format", dest="formats", action="append", choices=FORMATS, metavar="FORMAT",
                        help=f"one of {', '.join(FORMATS)}; repeat for several (default: all three)")
    parser.add_argument("--sample", type=Path, default=None,
                        help="image for the bioimage.io test input and cover (default: the shipped 256x256 "
                             "DSB2018 fluorescence sample)")
    parser.add_argument("--zip", action="store_true", help="also write OUT/bioimageio.zip (deepImageJ installs it)")
    parser.add_argument("--test", action="store_true",
                        help="also run bioimageio.core's test of the package (pip install bioimageio.core)")
    parser.epilog = ("Example: nuclei export-model default -o exported --format onnx --format bioimageio --zip "
                     "writes exported/onnx/ (model.onnx, model.json, README.md), exported/bioimageio/ (rdf.yaml, "
                     "weights, test tensors, cover, documentation) and exported/bioimageio.zip, and the same for "
                     "the stained and dense networks in exported/stained/ and exported/dense/. Details: "
                     "docs/interop.md, 'Exporting the network'.")


def main(args: argparse.Namespace) -> int:
    """``nuclei export-model``: write the exports and say what was checked."""
    formats = list(dict.fromkeys(args.formats or FORMATS))
    written = export_model(args.model, args.out, formats, sample=args.sample, zip_package=args.zip, test=args.test,
                           network=args.network)
    for name, folders in written.items():
        description = json.loads((next(iter(folders.values())) / DESCRIPTION_FILE).read_text())
        if len(written) > 1:
            print(f"network {name}: {description['image_types']}")
        for fmt, folder in folders.items():
            print(f"{fmt}: {folder}")
        print("; ".join(_checked(description, "bioimageio" in folders, args.test)))
    return 0


def _checked(description: dict, bioimageio: bool, test: bool) -> list[str]:
    """What was checked of one network's exports, in words."""
    checked = description.get("checked", {})
    diffs = ", ".join(f"{k.rsplit('_', 1)[-1]} {v:.1e}" for k, v in checked.items() if k.startswith("max_abs"))
    notes = [f"max |difference| from PyTorch: {diffs}" if diffs else "round trip not checked (install onnxruntime)"]
    if bioimageio:
        spec = importlib.util.find_spec("bioimageio.spec")
        notes.append("bioimage.io package valid (bioimageio.spec)" if spec else
                     "bioimage.io package not validated: pip install 'nuclei-pipeline[bioimageio]'")
        if test:
            notes.append("bioimageio.core test passed")
    return notes
