"""The ``postprocess`` stage: ``<predict.out>/<id>.npz`` → ``<postprocess.out>/<id>.tif``, the
marker-controlled watershed (:func:`pipeline.method.watershed.postprocess_to_shape`) of every
prediction file with the thresholds of the network that made it (:func:`thresholds_of`):
params.yaml's for the model folder's own network, a routed network's own (its ``config.yaml``).

Must not: hold the watershed itself (:mod:`pipeline.method.watershed`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config.params import Config, load_config
from pipeline.config.routing import MAIN
from pipeline.data.predictions import read_prediction
from pipeline.errors import NucleiError
from pipeline.files.io import write_labels
from pipeline.method.watershed import postprocess_to_shape
from pipeline.progress import progress


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei postprocess``."""
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")



def main(args: argparse.Namespace) -> int:
    """``nuclei postprocess``: ``<predict.out>/<id>.npz`` → ``<postprocess.out>/<id>.tif``."""

    config = load_config(args.params)
    thresholds = thresholds_of(config)
    pred_dir, out = Path(config.predict.out), Path(config.postprocess.out)
    files = sorted(pred_dir.rglob("*.npz"))  # ids of a folder of sources are <source>/<id>
    if not files:
        raise NucleiError(f"{pred_dir}: no predictions (*.npz); run `nuclei predict` first")
    out.mkdir(parents=True, exist_ok=True)
    counts = []
    for path in progress(files, desc="postprocess"):
        p = read_prediction(path)
        labels = postprocess_to_shape(p.probs, p.head, p.shape, p.scale, p.image_type, **thresholds(p.network))
        write_labels(out / path.relative_to(pred_dir).with_suffix(".tif"), labels)
        counts.append(int(labels.max()))
    print(f"postprocess: {len(files)} images, {sum(counts)} nuclei -> {out}")
    return 0


def thresholds_of(config: Config):
    """A function from a prediction file's ``network`` (a route name of ``predict.model``) to the
    :func:`~pipeline.method.watershed.postprocess_to_shape` keywords its labels are made with:
    params.yaml's ``postprocess`` section for :data:`~pipeline.config.routing.MAIN`, else the
    routed network's own (read once).

    Raises
    ------
    NucleiError
        (when called) a network the model folder does not have, or its unreadable ``config.yaml``.
    """
    import functools

    from pipeline.config.model_folder import read_model_config

    @functools.cache
    def thresholds(network: str) -> dict:
        if network == MAIN:
            return config.postprocess.thresholds()
        model = read_model_config(config.predict.model)
        return read_model_config(model.network_folder(config.predict.model, model.route(network))).postprocess.thresholds()

    return thresholds
