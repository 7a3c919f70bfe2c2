"""The prediction file of the ``predict`` stage, ``<predict.out>/<id>.npz``: written by
:mod:`pipeline.stages.predict`, read by the ``postprocess`` and ``tune`` stages.

It holds ``probs`` float16 (C, h, w) at the network's scale, ``head`` (a name of
:data:`pipeline.method.heads.HEADS`), ``shape`` (H, W) of the original image, ``scale`` (the
factor the image was resized by) and ``image_type``.

Must not: import torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import NucleiError
from pipeline.files.io import save_npz
from pipeline.method.heads import HEADS


def write_prediction(path: str | Path, probs: np.ndarray, head: str, shape: tuple[int, int], scale: float,
                     image_type: str) -> None:
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
    """
    save_npz(path, probs=np.asarray(probs).astype(np.float16), head=np.array(head), shape=np.array(shape),
             scale=np.float64(scale), image_type=np.array(image_type))


def read_prediction(path: str | Path) -> tuple[np.ndarray, str, tuple[int, int], float, str | None]:
    """Read ``data/predictions/<id>.npz``.

    Returns
    -------
    probs : (C, h, w) float32
        At the network's scale.
    head : str
    shape : (int, int)
        (H, W) of the original image (``(h, w)`` in files without ``shape``).
    scale : float
        Factor the image was resized by (1 in files without ``scale``).
    image_type : str or None
        :func:`pipeline.method.image_types.classify_image` of the image (None in files without it).
    """
    path = Path(path)
    try:
        with np.load(path) as data:
            probs = data["probs"].astype(np.float32)
            head = str(data["head"])
            shape = tuple(int(v) for v in data["shape"]) if "shape" in data else probs.shape[1:]
            scale = float(data["scale"]) if "scale" in data else 1.0
            image_type = str(data["image_type"]) if "image_type" in data else None
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise NucleiError(f"{path}: not a readable prediction file ({exc})") from None
    if head not in HEADS or probs.ndim != 3 or probs.shape[0] != HEADS[head].channels:
        raise NucleiError(f"{path}: probs of shape {probs.shape} do not match the {head!r} head")
    return probs, head, shape, scale, image_type
