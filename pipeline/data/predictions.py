"""The prediction file of the ``predict`` stage, ``<predict.out>/<id>.npz``: written by
:mod:`pipeline.stages.predict`, read by the ``postprocess`` and ``tune`` stages.

It holds ``probs`` float16 (C, h, w) at the network's scale, ``head`` (a name of
:data:`pipeline.method.heads.HEADS`), ``shape`` (H, W) of the original image, ``scale`` (the
factor the image was resized by), ``image_type`` and ``network``: the route of the model folder
whose network predicted it (:mod:`pipeline.config.routing`; :data:`~pipeline.config.routing.MAIN`
in files without it), whose thresholds ``nuclei postprocess`` applies.

Must not: import torch.
"""

from __future__ import annotations

from pathlib import Path
from typing import NamedTuple

import numpy as np

from pipeline.config.routing import MAIN
from pipeline.errors import NucleiError
from pipeline.files.io import save_npz
from pipeline.method.heads import HEADS


class Prediction(NamedTuple):
    """One prediction file's content (:func:`read_prediction`)."""

    #: (C, h, w) float32, at the network's scale.
    probs: np.ndarray
    head: str
    #: (H, W) of the original image.
    shape: tuple[int, int]
    #: Factor the image was resized by.
    scale: float
    #: :func:`pipeline.method.image_types.classify_image` of the image (None in files without it).
    image_type: str | None
    #: The route whose network predicted it (:data:`pipeline.config.routing.MAIN` in files without it).
    network: str = MAIN


def write_prediction(path: str | Path, probs: np.ndarray, head: str, shape: tuple[int, int], scale: float,
                     image_type: str, network: str = MAIN) -> None:
    """Write one prediction file atomically.

    Parameters
    ----------
    probs : (C, h, w) float array
        Probabilities at the network's scale; stored as float16.
    head : str
    shape : (int, int)
        (H, W) of the original image.
    scale : float
        Factor the image was resized by.
    image_type : str
    network : str
        The route whose network predicted it.
    """
    save_npz(path, probs=np.asarray(probs).astype(np.float16), head=np.array(head), shape=np.array(shape),
             scale=np.float64(scale), image_type=np.array(image_type), network=np.array(network))


def read_prediction(path: str | Path) -> Prediction:
    """Read ``data/predictions/<id>.npz`` (``shape`` ``(h, w)`` and ``scale`` 1 in files without them)."""
    path = Path(path)
    try:
        with np.load(path) as data:
            probs = data["probs"].astype(np.float32)
            head = str(data["head"])
            shape = tuple(int(v) for v in data["shape"]) if "shape" in data else probs.shape[1:]
            scale = float(data["scale"]) if "scale" in data else 1.0
            image_type = str(data["image_type"]) if "image_type" in data else None
            network = str(data["network"]) if "network" in data else MAIN
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise NucleiError(f"{path}: not a readable prediction file ({exc})") from None
    if head not in HEADS or probs.ndim != 3 or probs.shape[0] != HEADS[head].channels:
        raise NucleiError(f"{path}: probs of shape {probs.shape} do not match the {head!r} head")
    return Prediction(probs, head, shape, scale, image_type, network)
