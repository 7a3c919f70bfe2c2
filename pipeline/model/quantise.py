"""A model folder's network in int8: its convolutions in 8-bit integers, run by OpenVINO on a CPU.

``nuclei quantise MODEL --params P`` (or ``nuclei quantise MODEL IMAGES...``) calibrates the
network on images as ``nuclei segment`` shows them to it (normalised, resized to the model's nucleus
diameter; crops of :data:`CROP` px), quantises it with NNCF's post-training quantisation (weights
per channel, activations per tensor; the ``mixed`` preset) and writes it into the folder as an
OpenVINO IR (:data:`INT8_XML` and its ``.bin``), named by ``int8_network`` in ``config.yaml``; every
network of a folder (:attr:`~pipeline.config.model_folder.ModelDirConfig.networks`) is calibrated on
the images routed to it and written into its own folder, or those named (``--network``). The
IR records the sha-256 of the weights it was made from:
:func:`pipeline.model.backends.read_int8_network` refuses it for any other weights, and new weights
(:func:`pipeline.model.model_dir.save_model_dir`) drop the key.

Precision ``auto`` then runs it wherever OpenVINO runs on an x86-64 CPU
(:func:`pipeline.model.backends.resolve_backend`): on the costly small-nucleus case it is about 1.4×
faster than bf16 on AVX-512 CPUs without AMX and 1.7× faster than fp32 on AVX2-only ones, at the same
score (docs/decisions.md, "int8 through OpenVINO").

Quantising needs the ``nncf`` package (extra ``.[quantise]``); running the result needs only OpenVINO.

Must not: train, change the float weights, or pick the precision at run time (the backends' rule).
"""

from __future__ import annotations

import argparse
import os
import tempfile
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from pipeline.config.model_folder import read_model_config
from pipeline.config.routing import MAIN, needs_second_pass
from pipeline.errors import NucleiError
from pipeline.shipped import model_folder

#: The int8 network's file in a model folder (its weights: the ``.bin`` beside it).
INT8_XML = "network_int8.xml"
#: Side (px at the network's scale) of the calibration crops.
CROP = 256
#: At most this many crops per image, and in all (NNCF's statistics subset).
CROPS_PER_IMAGE, CROPS = 16, 300
#: Modules whose convolutions stay in float (:func:`quantise_network`): the 1×1 head, whose logits the
#: 0.99 object threshold reads (in int8 one robustness crop lost its only nucleus; docs/decisions.md).
FLOAT_LAYERS = ("head",)


def network_view(segmenter, image: np.ndarray):
    """The Segmenter whose network runs ``image`` and the image as that network sees it.

    Parameters
    ----------
    segmenter : pipeline.model.segmenter.Segmenter
    image : (H, W, 3) array, as read (any units)

    Returns
    -------
    routed : Segmenter
        The network the model routes the image to (:meth:`~pipeline.model.segmenter.Segmenter.network_for`,
        by type, then, when the model runs dense images again, by the first pass's nucleus fraction).
    view : (h, w, 3) float32
        Normalised and resized by the estimated scale (:meth:`~pipeline.model.segmenter.Segmenter.scale_for`).
    """
    from pipeline.method.image_types import image_type_of
    from pipeline.method.scale import resize_image, scaled_shape

    normalised = segmenter.normalize(image)
    image_type = image_type_of(normalised)
    routed = segmenter.network_for(image_type)
    _, _, scale = routed.scale_for(normalised, None, image_type)
    view = resize_image(normalised, scaled_shape(normalised.shape[:2], scale))
    if needs_second_pass(routed.config.routes) and routed.route == MAIN:
        routed = routed.network_for_probs(routed.predictor.predict(view), image_type)
    return routed, view


def calibration_crops(view: np.ndarray, stride: int, rng: np.random.Generator, side: int = CROP,
                      most: int = CROPS_PER_IMAGE) -> list[np.ndarray]:
    """Random crops of a network's view of an image, as its input.

    Parameters
    ----------
    view : (h, w, 3) float32
        :func:`network_view`'s.
    stride : int
        The network's stride; crops start and end on it.
    rng : numpy.random.Generator
    side : int
        Crop side, px (a smaller view gives one crop of its largest stride multiples).
    most : int
        At most this many crops; four per ``side``² of the view (they overlap).

    Returns
    -------
    crops : list of (1, 3, s, s') float32
    """
    height, width = (min(n, side) // stride * stride for n in view.shape[:2])
    if not height or not width:
        return []
    count = int(np.clip(round(4 * view.shape[0] * view.shape[1] / side**2), 1, most))
    tops = rng.integers(0, view.shape[0] - height + 1, count) // stride * stride
    lefts = rng.integers(0, view.shape[1] - width + 1, count) // stride * stride
    return [np.ascontiguousarray(view[t:t + height, s:s + width].transpose(2, 0, 1)[None], dtype=np.float32)
            for t, s in zip(tops, lefts, strict=True)]


def quantise_network(predictor, crops: Sequence[np.ndarray], weights_sha256: str | None,
                     float_layers: Sequence[str] = FLOAT_LAYERS):
    """A Predictor's network with its head's activation, quantised to int8 by NNCF on ``crops``
    (:func:`calibration_crops`); an ``openvino.Model`` recording ``weights_sha256``. The convolutions
    of the modules named in ``float_layers`` (torch names, e.g. 'head', 'dec.4') stay in float.

    Raises
    ------
    NucleiError
        ``nncf`` or ``openvino`` missing, no crops, or a float layer that names no convolution.
    """
    from pipeline.model.backends import RT_SHA, installed, onnx_bytes, openvino_core, probability_network

    try:
        import nncf
    except ImportError:
        raise NucleiError("quantising needs nncf: pip install 'nuclei-pipeline[quantise]'") from None
    if not installed("openvino"):
        raise NucleiError("quantising needs openvino: pip install 'nuclei-pipeline[openvino]'")
    if not crops:
        raise NucleiError("no calibration images: give images, or --params with training images")
    model = openvino_core().read_model(onnx_bytes(probability_network(predictor.model, predictor.head),
                                                  predictor.stride))
    convolutions = [op.get_friendly_name() for op in model.get_ordered_ops()
                    if op.get_type_name().startswith(("Convolution", "GroupConvolution"))]
    kept = []
    for name in float_layers:
        matched = [conv for conv in convolutions if f"/network/{name}/" in conv]
        if not matched:
            raise NucleiError(f"float layer {name!r}: no convolution of the network lies in that module")
        kept += matched
    quantised = nncf.quantize(model, nncf.Dataset(list(crops)), preset=nncf.QuantizationPreset.MIXED,
                              subset_size=len(crops), ignored_scope=nncf.IgnoredScope(names=kept))
    if weights_sha256 is not None:
        quantised.set_rt_info(weights_sha256, RT_SHA)
    return quantised


def write_int8_network(folder: str | Path, model) -> Path:
    """Write ``model`` (an int8 ``openvino.Model``) into the model folder ``folder`` as
    :data:`INT8_XML` and its ``.bin``, then name it in ``config.yaml`` (``int8_network``), each file
    atomically; returns the ``.xml``."""
    import openvino as ov

    from pipeline.model.model_dir import write_model_config

    folder = Path(folder)
    config = read_model_config(folder)
    xml = folder / INT8_XML
    with tempfile.TemporaryDirectory(dir=folder, prefix=".int8-") as tmp:
        ov.save_model(model, str(Path(tmp) / INT8_XML))
        os.replace(Path(tmp) / xml.with_suffix(".bin").name, xml.with_suffix(".bin"))
        os.replace(Path(tmp) / INT8_XML, xml)
    write_model_config(folder, config.replace(int8_network=INT8_XML))
    return xml


def quantise_model_dir(folder: str | Path, images: Iterable[np.ndarray], networks: Sequence[str] | None = None,
                       seed: int = 0, crops: int = CROPS, float_layers: Sequence[str] = FLOAT_LAYERS) -> list[Path]:
    """Quantise a model folder's networks in place, each on the calibration images routed to it.

    Parameters
    ----------
    folder : str or Path
        A model folder (``'default'``: the shipped one).
    images : iterable of (H, W, 3) arrays
        Calibration images as read (any units); each goes to the network that runs it.
    networks : sequence of str, optional
        The names of the networks to quantise (:attr:`~pipeline.config.model_folder.ModelDirConfig.networks`;
        None: every network of the folder).
    seed : int
        Draws the crops.
    crops : int
        At most this many crops per network, drawn evenly from all images' crops.
    float_layers : sequence of str
        Modules kept in float (:func:`quantise_network`).

    Returns
    -------
    written : list of Path
        The ``.xml`` of each network quantised.

    Raises
    ------
    NucleiError
        An unknown network name, or no calibration image routed to a network asked for.
    """
    from pipeline.model.segmenter import Segmenter

    folder = model_folder(folder)
    segmenter = Segmenter.from_model_dir(folder, precision="fp32", backend="torch")
    wanted = {segmenter.config.route(name).name for name in networks} if networks else None
    rng = np.random.default_rng(seed)
    pools: dict[str, tuple[object, list[np.ndarray]]] = {}
    for image in images:
        routed, view = network_view(segmenter, image)
        if wanted is None or routed.route in wanted:
            pools.setdefault(routed.route, (routed, []))[1].extend(calibration_crops(view, routed.predictor.stride, rng))
    missing = sorted(wanted - set(pools)) if wanted is not None else ([] if pools else ["any network"])
    if missing:
        raise NucleiError(f"no calibration image reached {', '.join(missing)}: give images of the kind it runs")
    written = []
    for name, (routed, pool) in pools.items():
        chosen = [pool[i] for i in sorted(rng.choice(len(pool), size=min(crops, len(pool)), replace=False))]
        print(f"quantise: network {name}: {len(chosen)} crops of {len(pool)}")
        model = quantise_network(routed.predictor, chosen, routed.config.weights_sha256, float_layers)
        written.append(write_int8_network(segmenter.config.network_folder(folder, segmenter.config.route(name)), model))
    return written


# --------------------------------------------------------------------------- the command


def training_images(params: str | Path, sources: Sequence[str] | None, per_source: int, seed: int) -> list[Path]:
    """Image files of the training folds (all but ``data.val_fold``) of a parameter file's sources,
    ``per_source`` drawn from each (seeded)."""
    from pipeline.config.params import load_config
    from pipeline.data.folds import read_index, split_folds
    from pipeline.data.sources import image_file

    data = load_config(params).data
    names = list(sources or data.sources)
    unknown = [name for name in names if name not in data.sources]
    if unknown:
        raise NucleiError(f"{params}: no source {unknown[0]!r} in data.sources")
    index = read_index(data.prepared, sources=names)
    train_ids, _ = split_folds(index, data.val_fold, data.split, Path(data.prepared) / "index.csv")
    rng = np.random.default_rng(seed)
    files = []
    for name in names:
        ids = sorted(i.split("/", 1)[1] for i in train_ids if i.startswith(f"{name}/"))
        chosen = rng.choice(len(ids), size=min(per_source, len(ids)), replace=False) if ids else []
        root, layout = data.sources[name]["root"], data.sources[name]["layout"]
        files += [image_file(root, layout, ids[i]) for i in sorted(chosen)]
    return files


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``nuclei quantise`` options."""
    parser.add_argument("model", help="the model directory to add an int8 network to ('default': the shipped one)")
    parser.add_argument("images", nargs="*", help="calibration images or folders of them (as nuclei segment reads)")
    parser.add_argument("--params", help="calibrate on the training folds of this parameter file's sources instead")
    parser.add_argument("--sources", nargs="+", help="with --params: only these sources")
    parser.add_argument("--per-source", type=int, default=16, help="with --params: images per source (default 16)")
    parser.add_argument("--network", action="append", metavar="NAME",
                        help="quantise only this network of the folder (repeatable; 'main': its own; "
                             "default: every network, each on the images routed to it)")
    parser.add_argument("--seed", type=int, default=0, help="draws the images and crops (default 0)")
    parser.add_argument("--float-layers", nargs="*", default=list(FLOAT_LAYERS), metavar="MODULE",
                        help=f"modules kept in float (default: {' '.join(FLOAT_LAYERS)})")


def main(args: argparse.Namespace) -> int:
    """``nuclei quantise``: usage errors (no images or --params, a missing or unusable model folder,
    a folder without images) exit 2 before any work."""
    from pipeline.errors import before_work
    from pipeline.files.inputs import IMAGE_SUFFIXES, list_images
    from pipeline.files.io import read_image
    from pipeline.model.model_dir import read_model_dir
    from pipeline.progress import progress

    with before_work():
        if bool(args.images) == bool(args.params):
            raise NucleiError("give calibration images or --params, one of the two")
        read_model_dir(args.model)  # the one validator of a model folder: config.yaml, weights.pt
        if args.params:
            files = training_images(args.params, args.sources, args.per_source, args.seed)
        else:
            files = list_images(args.images)
        if not files:
            named = args.params or ", ".join(args.images)
            raise NucleiError(f"{named}: no calibration images found ({', '.join(IMAGE_SUFFIXES)})")
    images = (read_image(path) for path in progress(files, desc="calibration images"))
    for xml in quantise_model_dir(args.model, images, networks=args.network, seed=args.seed,
                                  float_layers=args.float_layers):
        print(f"wrote {xml} (and {xml.with_suffix('.bin').name})")
    return 0
