"""What an exported network says about itself: the ``model.json`` and ``README.md`` beside each
export of ``nuclei export-model`` (and the bioimage.io package's documentation).

The exported network stops at its head's activation (probabilities); the rest of the recipe stays
outside it and is written down here instead: the intensity normalisation, the resizing to the
canonical nucleus diameter, the meaning of the output channels, the watershed that turns them into
nuclei, the held-out scores, the training data and their licences.

Must not: write files, or run the network.
"""

from __future__ import annotations

from typing import Any

from pipeline import __version__
from pipeline.config.model_folder import ModelDirConfig
from pipeline.config.routing import MAIN, MAIN_ROUTE, Route
from pipeline.method.heads import get_head
from pipeline.method.watershed import NUCLEUS_FRACTION_LEVEL
from pipeline.model.backends import INPUT_NAME, OUTPUT_NAME

#: The description (JSON) and the documentation inside each export folder.
DESCRIPTION_FILE, README_FILE = "model.json", "README.md"

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


#: How to run each format's file, in the README.
_HOW_TO_LOAD = {
    "torchscript": "```python\nimport torch\nnet = torch.jit.load(\"model.torchscript.pt\")\n"
                   "probabilities = net(x)  # x: float32 (B, 3, H, W), H and W multiples of the stride\n```",
    "onnx": "```python\nimport onnxruntime as ort\nsession = ort.InferenceSession(\"model.onnx\")\n"
            "probabilities = session.run([\"probabilities\"], {\"input\": x})[0]\n```",
    "bioimageio": "Fiji: deepImageJ › *Install model* (from `bioimageio.zip` or this folder's `rdf.yaml`); "
                  "QuPath: the bioimage.io / InstanSeg extension, or a pixel classifier from the ONNX file; "
                  "Python: `bioimageio.core.predict`. The package declares bioimage.io's `scale_range` "
                  "preprocessing (percentiles below) followed by `clip` to [0, 1].",
}


def export_description(config: ModelDirConfig, stride: int, source: str = "", routes: tuple[Route, ...] = (),
                       network: Route = MAIN_ROUTE) -> dict[str, Any]:
    """What a user of an exported network needs besides the network: a JSON-ready mapping.

    Parameters
    ----------
    config : ModelDirConfig
        The config of the network's own model folder (normalisation, diameters, thresholds, head).
    stride : int
        The network's stride.
    source : str
        The model folder, as given (recorded).
    routes : tuple of Route
        The routes of the model folder the network belongs to (:attr:`ModelDirConfig.routes`; for
        its own network, ``config.routes``).
    network : Route
        Which of that folder's networks this is (:data:`pipeline.config.routing.MAIN_ROUTE`: its own).

    Returns
    -------
    description : dict
        ``input`` (layout, channel order, normalisation), ``scale`` (canonical diameter and how to
        resize), ``output`` (channels and their meaning), ``postprocess`` (the watershed's
        thresholds and how to apply them elsewhere), ``network``, ``image_types`` and ``networks``
        (this network's name, the images it runs, and every network of its model folder with its
        rule).
    """
    return {
        "exported_by": f"nuclei-pipeline {__version__} (nuclei export-model)",
        "source_model": source,
        "weights_sha256": config.weights_sha256,
        "architecture": config.model.to_dict(),
        "input": _input_description(config, stride),
        "scale": _scale_description(config),
        "stride": stride,
        "output": _output_description(config),
        "postprocess": {
            "thresholds": config.postprocess.thresholds(),
            "sizes_in": f"pixels at the network's scale (nuclei {config.diameter:g} px across)" if config.diameter else "pixels",
            "steps": watershed_steps(config),
        },
        "labels": "not part of the network: a Fiji or QuPath user gets probability maps, not labels",
        **_networks_description(routes, network),
        "validation": validation_summary(config),
        "training_data": training_sources(config),
        "licence": f"{LICENCE} (the project's licence, under which the weights ship); the training data's own "
                   "terms are listed with the sources: where a source states no licence or a non-commercial one, "
                   "use the weights for research only",
    }


def _input_description(config: ModelDirConfig, stride: int) -> dict[str, Any]:
    """The description's ``input``: layout, channel order, range and normalisation."""
    norm = config.normalization
    return {
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
                "other pixels, so the saturated objects clip at 1 and dim nuclei keep their contrast; "
                "on a dark background, objects over 4 times as bright as the typical object (debris) "
                "are left out of the high percentile the same way"
            ) if norm.saturation else "off",
            "colour_rules": (
                "colour fluorescence on a dark background is normalised as one grey image (its blue "
                "channel when the channels differ and blue carries signal, else the channels' mean); "
                "stained tissue (H&E, IHC) keeps its colour and takes its range over the tissue only, "
                "leaving empty glass out"
            ),
        },
    }


def _scale_description(config: ModelDirConfig) -> dict[str, Any]:
    """The description's ``scale``: the canonical nucleus diameter(s) and how to resize to it."""
    return {
        "diameter_px": config.diameter,
        "stained_diameter_px": config.stained_diameter,
        "how": (
            f"resize the image by {config.diameter:g} / d, d = the median nucleus diameter in the image (px), "
            "so that nuclei are "
            f"{config.diameter:g} px across"
            + (f" ({config.stained_diameter:g} px for stained tissue, H&E or IHC)" if config.stained_diameter else "")
            + "; resize the probabilities back to the image's size afterwards"
        ) if config.diameter else "none: the network runs at the image's own scale",
    }


def _output_description(config: ModelDirConfig) -> dict[str, Any]:
    """The description's ``output``: the channels (probabilities) and what they mean."""
    head = get_head(config.model.head)
    mask_formula, marker_formula = head.formulas
    return {
        "name": OUTPUT_NAME,
        "shape": ["batch", head.channels, "height", "width"],
        "dtype": "float32",
        "activation": f"{head.name} (applied inside the exported network: the outputs are probabilities)",
        "channels": [{"index": i, "name": name, "meaning": meaning}
                     for i, (name, meaning) in enumerate(head.channel_meanings)],
        "nucleus_probability": mask_formula,
        "marker_image": marker_formula,
    }


def _networks_description(routes: tuple[Route, ...], network: Route) -> dict[str, Any]:
    """The description's ``network`` (this one's name), ``image_types`` (the images it runs, in
    words) and ``networks`` (every network of the model folder: name, folder, rule)."""
    if network.name != MAIN:
        images = (f"{network.describe()} (network {network.name!r} of its model folder"
                  + (f", after network {MAIN!r} ran" if network.nucleus_fraction_above is not None else "") + ")")
    elif not routes:
        images = "every image type"
    else:
        images = "every image, but " + "; ".join(
            f"{route.describe()} are segmented {'again ' if route.nucleus_fraction_above is not None else ''}"
            f"by network {route.name!r}" for route in routes)
    networks = [{"name": MAIN, "folder": ".", "rule": "every image the other networks do not take"}] if routes else []
    networks += [{"name": route.name, "folder": route.folder, "rule": route.describe()} for route in routes]
    return {"network": network.name, "image_types": images, "networks": networks}


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
    how_to_load = _HOW_TO_LOAD[fmt]
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
Images it is for: {d['image_types']}.{_networks_text(d)}

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


def _networks_text(d: dict[str, Any]) -> str:
    networks = d.get("networks") or []
    if not networks:
        return ""
    listed = "; ".join(f"`{n['name']}` (folder `{n['folder']}`): {n['rule']}" for n in networks)
    return (f" This is network `{d['network']}` of a model folder with {len(networks)}, each exported on its own "
            f"by `nuclei export-model` (the folder's own into `OUT`, the others into `OUT/<name>/`): {listed}.")


def _data_text(d: dict[str, Any]) -> str:
    sources = "\n".join(f"- `{s['source']}`: {s['licence']}" for s in d.get("training_data", []))
    return (f"Licence of this export: {d['licence']}.\n\n"
            + (f"Trained on:\n\n{sources}" if sources else "The model folder does not record its training data."))
