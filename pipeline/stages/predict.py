"""The ``predict`` stage: probability maps of the validation fold (and a test root) on disk.

``nuclei predict`` runs every image through the :class:`pipeline.model.segmenter.Segmenter` of
``predict.model`` (normalisation, diameter estimate, resizing to the canonical diameter, the
network with the ``predict`` section's TTA and tiling) and stores the probabilities at the
network's scale, for ``nuclei postprocess`` / ``tune`` to turn into labels exactly as the
Segmenter does.

Must not: post-process (that is :mod:`pipeline.method.watershed`), or hold the network code (that is
:mod:`pipeline.model.predictor`).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

import numpy as np

from pipeline.config.params import Config, load_config


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei predict``."""
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: predict.device)")


def _image_size(path: Path) -> tuple[int, int]:
    """(H, W) of an image file from its header; (0, 0) when unreadable (reported on loading)."""
    from PIL import Image

    try:
        with Image.open(path) as im:
            return im.height, im.width
    except Exception:  # noqa: BLE001 - read_image reports the problem with the file name
        return 0, 0


def _prediction_inputs(config: Config) -> list[tuple[str, Callable[[], np.ndarray], tuple[int, int]]]:
    """``(id, loader of the image as stored (uint8 RGB), (H, W))`` for the validation fold and the test root."""
    from pipeline.data.folds import validation_index
    from pipeline.data.kaggle import read_kaggle_sample
    from pipeline.files.io import load_npz

    data = config.data
    prepared = Path(data.prepared)
    val = validation_index(data)
    items = [
        (str(row.id), lambda f=prepared / f"{row.id}.npz": load_npz(f)["image"],
         (int(row.height), int(row.width)))
        for row in val.itertuples()
    ]
    if data.test_root:
        from pipeline.data.kaggle import list_kaggle_ids

        root = Path(data.test_root)
        for sample_id in list_kaggle_ids(root):
            file = root / sample_id / "images" / f"{sample_id}.png"
            items.append((sample_id, lambda d=root / sample_id: read_kaggle_sample(d, masks=False)[0],
                          _image_size(file)))
    return items


def main(args: argparse.Namespace) -> int:
    """``nuclei predict``: validation fold (+ test root) → ``<predict.out>/<id>.npz``.

    Each image goes through the :class:`pipeline.model.segmenter.Segmenter` of ``predict.model``:
    normalised, its nucleus diameter estimated, resized to the model's canonical diameter; the
    file holds the probabilities at that scale (``probs`` float16 (C, h, w)), ``head``, the
    original ``shape``, the ``scale`` and the ``image_type``, from which ``nuclei postprocess``
    makes labels on the original pixel grid exactly as the Segmenter does. Each image is predicted
    by the network its model folder routes it to (:meth:`pipeline.model.segmenter.Segmenter.network_for`:
    by type, then again when the first pass finds it dense), and the file names that network
    (``network``), whose thresholds ``nuclei postprocess`` applies: params.yaml's for the folder's
    own network, the network's own ``config.yaml``'s for the others, as ``nuclei segment`` does.
    """
    from pipeline.data.predictions import write_prediction
    from pipeline.method.image_types import image_type_of
    from pipeline.model.segmenter import Segmenter
    from pipeline.progress import progress

    config = load_config(args.params)
    cfg = config.predict
    segmenter = Segmenter.from_model_dir(cfg.model, device=args.device or cfg.device, **cfg.predictor_options())
    items = _prediction_inputs(config)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    for image_id, load, _ in progress(items, desc="predict"):
        image = segmenter.normalize(load())
        image_type = image_type_of(image)
        _, _, scale = segmenter.scale_for(image, image_type=image_type)
        probs, routed = segmenter.network_for(image_type).probabilities(image, scale, image_type)
        write_prediction(out / f"{image_id}.npz", probs, routed.head, image.shape[:2], scale, image_type, routed.route)
    print(f"predict: {len(items)} images on {segmenter.device} (tta {segmenter.predictor.tta}) -> {out}")
    return 0
