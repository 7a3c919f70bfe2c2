"""The network in other runtimes' formats: TorchScript, ONNX and a bioimage.io model package
(``nuclei export-model``).

Every export is the network *with its head's activation*: float32 ``(B, 3, H, W)`` in, float32
probabilities ``(B, C, H, W)`` out (:class:`pipeline.model.backends.ProbabilityNetwork`), batch norm folded into the
convolutions, with dynamic batch, height and width (height and width multiples of the network's
stride, :func:`pipeline.model.networks.model_stride`). The rest of the recipe stays outside the
network and is written down beside each export instead (:func:`export_description`, a
``model.json`` and a ``README.md``): the intensity normalisation, the resizing to the canonical
nucleus diameter, the meaning of the output channels and the watershed that turns them into
nuclei. A Fiji (deepImageJ) or QuPath user therefore gets probability maps, not labels.

``nuclei export-model MODEL -o OUT [--format torchscript|onnx|bioimageio ...]`` writes

- ``OUT/torchscript/``: ``model.torchscript.pt`` (``torch.jit.trace``), ``model.json``, ``README.md``;
- ``OUT/onnx/``: ``model.onnx`` (opset :data:`ONNX_OPSET`), ``model.json``, ``README.md``;
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

Must not: run the watershed or normalise inside the exported network (both are documented, not
exported), or read params.yaml (a model folder carries every setting an export documents).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import io
import json
import warnings
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
from pipeline.method.watershed import NUCLEUS_FRACTION_LEVEL
from pipeline.model.backends import (
    INPUT_NAME,
    ONNX_OPSET,
    OUTPUT_NAME,
    check_input,
    onnx_bytes,
    onnxruntime_session,
    probability_network,
    trace_input,
)

#: The export formats of ``nuclei export-model``, in the order they are written.
FORMATS = ("torchscript", "onnx", "bioimageio")
#: Largest absolute difference allowed between an exported network's probabilities and PyTorch's.
TOLERANCE = 1e-4
#: Side (px, at the network's scale) of the bioimage.io test input and of the cover.
TEST_SIDE = 256
#: The context (px) a tiling consumer should crop from each side of an output tile: half the
#: overlap of :class:`pipeline.model.predictor.Predictor`'s tiles (64 px).
HALO = 32
#: File names inside each export folder.
TORCHSCRIPT_FILE, ONNX_FILE = "model.torchscript.pt", "model.onnx"
DESCRIPTION_FILE, README_FILE, RDF_FILE = "model.json", "README.md", "rdf.yaml"
TEST_INPUT_FILE, TEST_OUTPUT_FILE, COVER_FILE = "test_input.npy", "test_output.npy", "cover.png"
SAMPLE_INPUT_FILE, SAMPLE_OUTPUT_FILE = "sample_input.tif", "sample_output.tif"
_WEIGHTS = {"torchscript": TORCHSCRIPT_FILE, "onnx": ONNX_FILE}
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


#: Licences of the public labelled sources the project trains on (``../shared/extra/README.md``,
#: the model card): the documentation of an export names those of its model's training data.
SOURCE_LICENCES = {
    "dsb2018": "CC0 (2018 Data Science Bowl stage 1, BBBC038v1; Caicedo et al. 2019)",
    "tissue_fluo_e2f": "LGPL-3.0 (the repository's licence; Pécot et al. 2022)",
    "he_gbm40": "none stated; published for research (Kong et al. 2016; Zhang et al. 2017)",
    "he_tcga_glioma": "none stated; published for research (same repository as he_gbm40)",
    "he_cpm15": "none stated; MICCAI 2015 CPM challenge data for research",
    "fluo_kromp2020": "CC0 (Kromp et al. 2020, Scientific Data)",
    "he_monuseg2018_train": "CC BY-NC-SA 4.0 (MoNuSeg 2018; Kumar et al. 2017, 2019)",
    "fluo_ctc": "the Cell Tracking Challenge's terms (free for research; cite Ulman et al. 2017)",
}
#: The licence of an exported package (SPDX): the project's; the documentation adds the data's terms.
LICENCE = "MIT"


# --------------------------------------------------------------------------- the network


def torchscript_module(network: nn.Module, stride: int) -> torch.jit.ScriptModule:
    """``network`` traced by ``torch.jit.trace`` (shapes are not baked in: plain convolutions,
    pooling and concatenations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the head's shape check seen by the tracer
        with torch.no_grad():
            return torch.jit.trace(network, trace_input(stride), check_trace=False)


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


# --------------------------------------------------------------------------- what an export says


def export_description(config: ModelDirConfig, stride: int, source: str = "") -> dict[str, Any]:
    """What a user of an exported network needs besides the network: a JSON-ready mapping.

    Parameters
    ----------
    config : ModelDirConfig
        The model folder's config (normalisation, diameters, thresholds, head).
    stride : int
        The network's stride.
    source : str
        The model folder, as given (recorded).

    Returns
    -------
    description : dict
        ``input`` (layout, channel order, normalisation), ``scale`` (canonical diameter and how to
        resize), ``output`` (channels and their meaning), ``postprocess`` (the watershed's
        thresholds and how to apply them elsewhere).
    """
    head = get_head(config.model.head)
    norm = config.normalization
    mask_formula, marker_formula = head.formulas
    thresholds = config.postprocess.thresholds()
    return {
        "exported_by": f"nuclei-pipeline {__version__} (nuclei export-model)",
        "source_model": source,
        "weights_sha256": config.weights_sha256,
        "architecture": config.model.to_dict(),
        "input": {
            "name": INPUT_NAME,
            "shape": ["batch", 3, "height", "width"],
            "dtype": "float32",
            "height_width_multiple_of": stride,
            "channel_order": "RGB",
            "grey_images": "repeat the grey image in all three channels",
            "range": [0.0, 1.0],
            "normalisation": {
                "low_percentile": norm.low,
                "high_percentile": norm.high,
                "over": "all pixel values of all three channels together",
                "formula": "clip((value - p_low) / (p_high - p_low), 0, 1)",
                "saturation_rule": norm.saturation,
                "saturation_rule_in_words": (
                    "when 0.05-10 % of the pixels sit at the image's maximum (within 1 % of the range: "
                    "saturated nuclei, a pasted-in bright object), the high percentile is taken over the "
                    "other pixels, so the saturated objects clip at 1 and dim nuclei keep their contrast"
                ) if norm.saturation else "off",
                "colour_rules": (
                    "colour fluorescence on a dark background is normalised as one grey image (its blue "
                    "channel when the channels differ and blue carries signal, else the channels' mean); "
                    "stained tissue (H&E, IHC) keeps its colour and takes its range over the tissue only, "
                    "leaving empty glass out"
                ),
            },
        },
        "scale": {
            "diameter_px": config.diameter,
            "stained_diameter_px": config.stained_diameter,
            "how": (
                f"resize the image by {config.diameter:g} / d, d = the median nucleus diameter in the image (px), "
                "so that nuclei are "
                f"{config.diameter:g} px across"
                + (f" ({config.stained_diameter:g} px for stained tissue, H&E or IHC)" if config.stained_diameter else "")
                + "; resize the probabilities back to the image's size afterwards"
            ) if config.diameter else "none: the network runs at the image's own scale",
        },
        "stride": stride,
        "output": {
            "name": OUTPUT_NAME,
            "shape": ["batch", head.channels, "height", "width"],
            "dtype": "float32",
            "activation": f"{head.name} (applied inside the exported network: the outputs are probabilities)",
            "channels": [{"index": i, "name": name, "meaning": meaning}
                         for i, (name, meaning) in enumerate(head.channel_meanings)],
            "nucleus_probability": mask_formula,
            "marker_image": marker_formula,
        },
        "postprocess": {
            "thresholds": thresholds,
            "sizes_in": f"pixels at the network's scale (nuclei {config.diameter:g} px across)" if config.diameter else "pixels",
            "steps": watershed_steps(config),
        },
        "labels": "not part of the network: a Fiji or QuPath user gets probability maps, not labels",
        "stained_model": config.stained_model,
        "image_types": (
            f"unstained images (fluorescence, bright-field); stained tissue (H&E, IHC) is segmented by the "
            f"model's second network, its folder {config.stained_model!r}, which is exported on its own"
        ) if config.stained_model else "every image type",
        "dense_model": config.dense_model,
        "dense_fraction": config.dense_fraction,
        "dense_images": (
            f"unstained images whose nuclei this network finds over more than {config.dense_fraction:.0%} of "
            f"the pixels are segmented again by a third network, its folder {config.dense_model!r}, exported on its own"
        ) if config.dense_model else None,
        "validation": validation_summary(config),
        "training_data": training_sources(config),
        "licence": f"{LICENCE} (the project's licence, under which the weights ship); the training data's own "
                   "terms are listed with the sources: where a source states no licence or a non-commercial one, "
                   "use the weights for research only",
    }


def validation_summary(config: ModelDirConfig) -> dict[str, Any] | None:
    """The held-out scores a model folder records (``training.validation``), or None: the whole
    recipe's (network, watershed, normalisation, resizing) as ``nuclei segment`` runs it."""
    training = config.training if isinstance(config.training, dict) else {}
    scores = training.get("validation")
    if not isinstance(scores, dict) or "dsb_score" not in scores:
        return None
    data = training.get("data") if isinstance(training.get("data"), dict) else {}
    keys = ("n_images", "dsb_score", "ap50", "f1_50", "mean_matched_iou")
    by_source = scores.get("by_source") if isinstance(scores.get("by_source"), dict) else {}
    return {
        "images": f"held out: fold {data.get('val_fold')} ({data.get('split')} split), never trained on",
        **{k: scores[k] for k in keys if k in scores},
        "by_source": {name: {k: m[k] for k in keys if k in m} for name, m in by_source.items() if isinstance(m, dict)},
    }


def training_sources(config: ModelDirConfig) -> list[dict[str, str]]:
    """The labelled sources a model folder says it was trained on, with their licences."""
    training = config.training if isinstance(config.training, dict) else {}
    params = training.get("params") if isinstance(training.get("params"), dict) else {}
    data = params.get("data") if isinstance(params.get("data"), dict) else {}
    sources = data.get("sources") if isinstance(data.get("sources"), dict) else {}
    return [{"source": name, "licence": SOURCE_LICENCES.get(name, "not recorded: check the data's own terms")}
            for name in sources]


def watershed_steps(config: ModelDirConfig) -> list[str]:
    """How to turn the probabilities into nuclei outside this tool, in words (the marker-controlled
    watershed of :mod:`pipeline.method.watershed`, with the model's thresholds)."""
    head = get_head(config.model.head)
    mask, marker = head.formulas
    t = config.postprocess
    stained = (f" (stained images: {t.stained_mask_threshold:g})" if t.stained_mask_threshold is not None else "")
    dense = (f"; in unstained images the threshold is multiplied by 1 minus the share of pixels with {mask} > {NUCLEUS_FRACTION_LEVEL:g}, "
             f"and no lower than {t.dense_mask_threshold:g}" if t.dense_mask_threshold is not None else "")
    steps = [
        f"foreground = {mask} > {t.mask_threshold:g}{stained}{dense}",
        f"markers = connected regions of ({marker}) > {t.marker_threshold:g} inside the foreground, "
        f"each of at least {t.min_marker_size} px",
        f"flood the markers over -({mask}) within the foreground (a marker-controlled watershed); a foreground "
        "region without a marker is a nucleus of its own",
    ]
    if t.object_threshold:
        stained_obj = (f" ({t.stained_object_threshold:g} in stained images)"
                       if t.stained_object_threshold is not None else "")
        steps.append(f"drop nuclei whose highest ({marker}) stays below {t.object_threshold:g}{stained_obj}")
    steps.append(f"fill holes; drop nuclei smaller than {t.min_size} px")
    return steps


def readme_text(description: dict[str, Any], fmt: str, files: list[str]) -> str:
    """The ``README.md`` beside an export of format ``fmt`` holding ``files``."""
    d = description
    inp, out, norm = d["input"], d["output"], d["input"]["normalisation"]
    channels = "\n".join(f"| {c['index']} | `{c['name']}` | {c['meaning']} |" for c in out["channels"])
    steps = "\n".join(f"{i}. {s}" for i, s in enumerate(d["postprocess"]["steps"], 1))
    how_to_load = {
        "torchscript": "```python\nimport torch\nnet = torch.jit.load(\"model.torchscript.pt\")\n"
                       "probabilities = net(x)  # x: float32 (B, 3, H, W), H and W multiples of the stride\n```",
        "onnx": "```python\nimport onnxruntime as ort\nsession = ort.InferenceSession(\"model.onnx\")\n"
                "probabilities = session.run([\"probabilities\"], {\"input\": x})[0]\n```",
        "bioimageio": "Fiji: deepImageJ › *Install model* (from `bioimageio.zip` or this folder's `rdf.yaml`); "
                      "QuPath: the bioimage.io / InstanSeg extension, or a pixel classifier from the ONNX file; "
                      "Python: `bioimageio.core.predict`. The package declares bioimage.io's `scale_range` "
                      "preprocessing (percentiles below) followed by `clip` to [0, 1].",
    }[fmt]
    scale_range = (
        "\nbioimage.io's `scale_range` (percentiles "
        f"{norm['low_percentile']:g} and {norm['high_percentile']:g} over all channels, then `clip`) is this "
        "normalisation without the saturation rule and the colour rules above: it gives the same input for grey "
        "fluorescence without saturated objects, and a lower-contrast one where a few objects saturate.\n"
        if fmt == "bioimageio" else "")
    return f"""# Nucleus segmentation network ({fmt})

Exported by {d['exported_by']} from `{d['source_model']}` (weights sha256 `{d['weights_sha256']}`).
Files: {', '.join(f'`{f}`' for f in files)}; `{DESCRIPTION_FILE}` holds everything below as JSON.

**What you get: probability maps, not labels.** The network is a U-Net ({d['architecture']['arch']},
depth {d['architecture']['depth']}, width {d['architecture']['width']}) with its {out['activation']}. The
marker-controlled watershed that turns probabilities into nuclei is not part of it: a Fiji or QuPath user
gets probability maps and applies the steps at the end of this page there (or runs `nuclei segment`).
Images it is for: {d.get('image_types', 'every image type')}{'; ' + d['dense_images'] if d.get('dense_images') else ''}.

{how_to_load}

## Input

- `{inp['name']}`: float32, shape (batch, 3, height, width), channels first, channel order RGB; a grey
  image is repeated in all three channels. Height and width must be multiples of **{d['stride']}** (the
  network's stride): pad (mirror) to the next multiple and crop the output back.
- Normalisation, per image: p_low, p_high = percentiles {norm['low_percentile']:g} and {norm['high_percentile']:g}
  of all pixel values (all channels together); input = clip((value − p_low) / (p_high − p_low), 0, 1).
- Saturation rule: {norm['saturation_rule_in_words']}.
- Colour: {norm['colour_rules']}.
{scale_range}
## Scale

The network was trained with nuclei of a fixed size: {d['scale']['how']}. Nuclei much smaller or larger
than that are missed or cut.

## Output

`{out['name']}`: float32, shape (batch, {len(out['channels'])}, height, width), each value in [0, 1].

| channel | name | meaning |
|---|---|---|
{channels}

P(nucleus) = {out['nucleus_probability']}; marker image = {out['marker_image']}.

## From probabilities to nuclei (the model's own thresholds)

Sizes are in pixels at the network's scale. In Fiji: *Process › Image Calculator* for the marker image,
*Image › Adjust › Threshold* for the masks, then MorphoLibJ's *Marker-controlled Watershed* (input: the
inverted P(nucleus), markers: the thresholded marker image, mask: the foreground). In QuPath: a pixel
classifier thresholding the marker image, or import the labels `nuclei segment` writes
(`nuclei segment ... --export geojson`). A simpler stand-in for the marker image is
P(mask) − P(border) thresholded at the same value.

{steps}

## Validation

{_validation_text(d.get('validation'))}

## Training data and licence

{_data_text(d)}
"""


def _validation_text(validation: dict[str, Any] | None) -> str:
    if not validation:
        return "The model folder records no held-out scores; see its model card."
    lines = [
        "Scores of the whole recipe as `nuclei segment` runs it (normalisation, resizing, network, watershed), "
        f"on {validation.get('n_images', '?')} images {validation['images']}. DSB2018 score: per image, the mean "
        "over IoU thresholds 0.50-0.95 of TP / (TP + FP + FN), averaged over images (Caicedo et al. 2019).",
        "",
        "| images | n | DSB2018 score | AP@0.5 |",
        "|---|---|---|---|",
    ]
    rows = [("all", validation)] + list(validation.get("by_source", {}).items())
    for name, m in rows:
        ap = f"{m['ap50']:.3f}" if "ap50" in m else ""
        lines.append(f"| {name} | {m.get('n_images', '')} | {m['dsb_score']:.3f} | {ap} |")
    return "\n".join(lines)


def _data_text(d: dict[str, Any]) -> str:
    sources = "\n".join(f"- `{s['source']}`: {s['licence']}" for s in d.get("training_data", []))
    return (f"Licence of this export: {d['licence']}.\n\n"
            + (f"Trained on:\n\n{sources}" if sources else "The model folder does not record its training data."))


# --------------------------------------------------------------------------- writing the exports


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def _save_torchscript(module: torch.jit.ScriptModule, path: Path, description: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; bioimage.io and Fiji read it
        torch.jit.save(module, buffer, _extra_files={DESCRIPTION_FILE: json.dumps(description)})
    _write_bytes(path, buffer.getvalue())


def _onnx_with_metadata(data: bytes, description: dict[str, Any]) -> bytes:
    """``data`` with the description as ONNX metadata (``nuclei``: the JSON) when ``onnx`` is installed."""
    if importlib.util.find_spec("onnx") is None:
        return data
    import onnx

    proto = onnx.load_from_string(data)
    proto.doc_string = "Nucleus segmentation U-Net: probabilities, not labels; see the metadata 'nuclei'."
    entry = proto.metadata_props.add()
    entry.key, entry.value = "nuclei", json.dumps(description)
    return proto.SerializeToString()


def _load(model_dir: str | Path) -> tuple[nn.Module, ModelDirConfig, Path]:
    """The model folder ``model_dir`` (``default``: the shipped model), or a UsageError in one line."""
    from pipeline.model.model_dir import load_model_dir
    from pipeline.shipped import model_folder

    path = model_folder(model_dir)
    if not path.is_dir():
        raise UsageError(f"{path}: model directory not found")
    try:
        model, config = load_model_dir(path, "cpu")
    except NucleiError as exc:
        raise UsageError(str(exc)) from None
    return model, config, path


def export_model(model_dir: str | Path, out: str | Path, formats: tuple[str, ...] | list[str] = FORMATS,
                 sample: str | Path | None = None, zip_package: bool = False,
                 test: bool = False) -> dict[str, Path]:
    """Export a model folder's network to ``formats`` under ``out``.

    Parameters
    ----------
    model_dir : str or Path
        A model folder (``config.yaml`` + ``weights.pt``), or ``default`` for the shipped model.
    out : str or Path
        The output folder; each format gets a sub-folder (``out/torchscript``, ...).
    formats : sequence of str
        Some of :data:`FORMATS`.
    sample : str or Path, optional
        The image of the bioimage.io test input and cover (default: the napari sample shipped with
        the package, a 256 × 256 DSB2018 fluorescence image, else synthetic nuclei).
    zip_package : bool
        Also write ``out/bioimageio.zip``.
    test : bool
        Run ``bioimageio.core``'s test of the package (needs the extra ``.[bioimageio]``).

    Returns
    -------
    written : dict
        Format → its folder (``bioimageio_zip`` → the zip when written).

    Raises
    ------
    UsageError
        An unknown format, a missing or broken model folder, ``test`` without bioimageio.core.
    NucleiError
        An export whose output differs from PyTorch's by more than :data:`TOLERANCE`, a bioimage.io
        package that does not validate or whose test fails.
    """
    unknown = [f for f in formats if f not in FORMATS]
    if unknown:
        raise UsageError(f"unknown export format {unknown[0]!r} (one of {', '.join(FORMATS)})")
    if any(f in formats for f in ("onnx", "bioimageio")) and importlib.util.find_spec("onnx") is None:
        raise UsageError(f"{', '.join(f for f in formats if f != 'torchscript')} export needs the onnx package: "
                         "pip install 'nuclei-pipeline[export]'")
    if test and importlib.util.find_spec("bioimageio.core") is None:
        raise UsageError("--test needs bioimageio.core: pip install bioimageio.core")
    from pipeline.model.networks import model_stride

    model, config, path = _load(model_dir)
    stride = model_stride(config.model)
    network = probability_network(model, config.model.head)
    description = export_description(config, stride, str(model_dir))
    out = Path(out)
    need_onnx = any(f in formats for f in ("onnx", "bioimageio"))
    script = torchscript_module(network, stride) if any(f in formats for f in ("torchscript", "bioimageio")) else None
    onnx = _onnx_with_metadata(onnx_bytes(network, stride), description) if need_onnx else None
    differences = round_trip(network, stride, onnx, script)
    bad = {k: v for k, v in differences.items() if not v <= TOLERANCE}
    if bad:
        raise NucleiError(f"{path}: the exported network differs from PyTorch's by "
                          + ", ".join(f"{v:.2g} ({k})" for k, v in bad.items()) + f" (> {TOLERANCE:g})")
    description["checked"] = {f"max_abs_difference_{k}": v for k, v in differences.items()} | {
        "input_shape": list(check_input(stride).shape)}
    written: dict[str, Path] = {}
    for fmt in formats:
        folder = out / fmt
        if fmt == "bioimageio":
            write_bioimageio(folder, network, script, onnx, config, stride, dict(description), sample)
        else:
            if fmt == "torchscript":
                _save_torchscript(script, folder / TORCHSCRIPT_FILE, description)
            else:
                _write_bytes(folder / ONNX_FILE, onnx)
            write_json(folder / DESCRIPTION_FILE, description)
            write_text(folder / README_FILE, readme_text(description, fmt, [_WEIGHTS[fmt]]))
        written[fmt] = folder
    if "bioimageio" in formats:
        folder = written["bioimageio"]
        validate_bioimageio(folder / RDF_FILE)
        if test:
            test_bioimageio(folder / RDF_FILE)
        if zip_package:
            written["bioimageio_zip"] = zip_folder(folder, out / "bioimageio.zip")
    return written


def zip_folder(folder: Path, path: Path) -> Path:
    """The files of ``folder`` (not nested) in a zip file at ``path``, written atomically."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as archive:
            for file in sorted(folder.iterdir()):
                if file.is_file():
                    archive.write(file, file.name)
    return path


# --------------------------------------------------------------------------- bioimage.io


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
    """Write a bioimage.io model package (format :data:`BIOIMAGEIO_FORMAT`) into ``folder``; the
    ``README.md`` and ``model.json`` are written by the caller. Returns the files written."""
    head = get_head(config.model.head)
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
    for name, array in ((TEST_INPUT_FILE, test_input), (TEST_OUTPUT_FILE, test_output)):
        buffer = io.BytesIO()
        np.save(buffer, array)
        _write_bytes(folder / name, buffer.getvalue())
    import tifffile

    for name, array in ((SAMPLE_INPUT_FILE, test_input), (SAMPLE_OUTPUT_FILE, test_output)):
        with atomic_path(folder / name) as tmp:
            tifffile.imwrite(tmp, array, photometric="minisblack")
    write_png(folder / COVER_FILE, cover_image(normalised[0].transpose(1, 2, 0), test_output[0]))
    _save_torchscript(script, folder / TORCHSCRIPT_FILE, description)
    _write_bytes(folder / ONNX_FILE, onnx)
    # documentation and the description: written by export_model after this; hashed here as written there
    files = [RDF_FILE, TORCHSCRIPT_FILE, ONNX_FILE, TEST_INPUT_FILE, TEST_OUTPUT_FILE, SAMPLE_INPUT_FILE,
             SAMPLE_OUTPUT_FILE, COVER_FILE, README_FILE, DESCRIPTION_FILE]
    write_json(folder / DESCRIPTION_FILE, description)
    write_text(folder / README_FILE, readme_text(description, "bioimageio", files))
    minimum = -(-(2 * HALO + stride) // stride) * stride
    nuclei = f"nuclei of {config.diameter:g} px" if config.diameter else "nuclei at the image's own scale"
    rdf = {
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
        "inputs": [{
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
        }],
        "outputs": [{
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
        }],
        "weights": {
            "torchscript": {"source": TORCHSCRIPT_FILE, "sha256": _sha256(folder / TORCHSCRIPT_FILE),
                            "pytorch_version": torch.__version__.split("+")[0]},
            "onnx": {"source": ONNX_FILE, "sha256": _sha256(folder / ONNX_FILE), "opset_version": ONNX_OPSET,
                     "parent": "torchscript"},
        },
    }
    write_text(folder / RDF_FILE, yaml.safe_dump(rdf, sort_keys=False, allow_unicode=True))
    return files


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


# --------------------------------------------------------------------------- the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei export-model``."""
    parser.description = (
        "Export a model folder's network (with its sigmoid/softmax: probabilities, not labels) as TorchScript, "
        "ONNX and/or a bioimage.io package (Fiji deepImageJ, QuPath, ilastik, bioimage.io). Each export folder "
        "holds README.md and model.json: the input normalisation (percentiles, RGB order), the nucleus diameter "
        "to resize to, the stride, the output channels and the watershed thresholds that turn probabilities "
        "into nuclei. Needs the extra .[export] (onnx, onnxruntime); .[bioimageio] validates the package."
    )
    parser.add_argument("model", help="a model folder (config.yaml + weights.pt), or 'default' or 'he' for a shipped model")
    parser.add_argument("-o", "--out", required=True, type=Path, help="output folder: one sub-folder per format")
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
                     "weights, test tensors, cover, documentation) and exported/bioimageio.zip. Details: "
                     "docs/interop.md, 'Exporting the network'.")


def main(args: argparse.Namespace) -> int:
    """``nuclei export-model``: write the exports and say what was checked."""
    formats = list(dict.fromkeys(args.formats or FORMATS))
    written = export_model(args.model, args.out, formats, sample=args.sample, zip_package=args.zip, test=args.test)
    description = json.loads((next(iter(written.values())) / DESCRIPTION_FILE).read_text())
    checked = description.get("checked", {})
    diffs = ", ".join(f"{k.rsplit('_', 1)[-1]} {v:.1e}" for k, v in checked.items() if k.startswith("max_abs"))
    for fmt, folder in written.items():
        print(f"{fmt}: {folder}")
    notes = [f"max |difference| from PyTorch: {diffs}" if diffs else "round trip not checked (install onnxruntime)"]
    if "bioimageio" in written:
        spec = importlib.util.find_spec("bioimageio.spec")
        notes.append("bioimage.io package valid (bioimageio.spec)" if spec else
                     "bioimage.io package not validated: pip install 'nuclei-pipeline[bioimageio]'")
        if args.test:
            notes.append("bioimageio.core test passed")
    print("; ".join(notes))
    from pipeline.shipped import model_folder

    if description.get("stained_model"):
        print(f"note: this model segments stained images (H&E, IHC) with a second network; export it too: "
              f"nuclei export-model {model_folder(args.model) / description['stained_model']} -o OUT")
    if description.get("dense_model"):
        print(f"note: this model segments dense unstained images (nuclei over more than "
              f"{description['dense_fraction']:.0%} of the pixels) with a third network; export it too: "
              f"nuclei export-model {model_folder(args.model) / description['dense_model']} -o OUT")
    return 0

