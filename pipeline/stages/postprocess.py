"""The ``postprocess`` stage: ``<predict.out>/<id>.npz`` → ``<postprocess.out>/<id>.tif``, the
marker-controlled watershed (:func:`pipeline.method.watershed.postprocess_to_shape`) of every
prediction file with the thresholds of params.yaml.

Must not: hold the watershed itself (:mod:`pipeline.method.watershed`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from pipeline.config.params import load_config
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
    kwargs = config.postprocess.thresholds()
    pred_dir, out = Path(config.predict.out), Path(config.postprocess.out)
    files = sorted(pred_dir.rglob("*.npz"))  # ids of a folder of sources are <source>/<id>
    if not files:
        raise NucleiError(f"{pred_dir}: no predictions (*.npz); run `nuclei predict` first")
    out.mkdir(parents=True, exist_ok=True)
    counts = []
    for path in progress(files, desc="postprocess"):
        probs, head, shape, scale, image_type = read_prediction(path)
        labels = postprocess_to_shape(probs, head, shape, scale, image_type, **kwargs)
        write_labels(out / path.relative_to(pred_dir).with_suffix(".tif"), labels)
        counts.append(int(labels.max()))
    print(f"postprocess: {len(files)} images, {sum(counts)} nuclei -> {out}")
    return 0
