"""Marker-controlled watershed: probability maps → instance labels (the ``postprocess`` stage).

``postprocess`` turns the network's class probabilities into non-overlapping nuclei:

1. foreground = P(mask) > ``mask_threshold``;
2. markers = connected components of P(mask − border) > ``marker_threshold`` inside the
   foreground; components smaller than ``min_marker_size`` pixels are dropped;
3. the markers are flooded over −P(mask) (``flood='probability'``) or over the negated
   Euclidean distance to the background (``flood='distance'``), restricted to the foreground;
   foreground components that hold no marker at all become nuclei of their own;
4. holes are filled (background enclosed by one nucleus), nuclei smaller than ``min_size``
   pixels are removed and the labels are renumbered 1..N.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi
from skimage.segmentation import watershed

from pipeline.config import load_params, section
from pipeline.errors import NucleiError

#: Keys of the ``postprocess`` section (and of a model directory's ``postprocess``) that are
#: keyword arguments of :func:`postprocess`, with their defaults.
DEFAULTS: dict[str, Any] = {
    "marker_threshold": 0.5,
    "mask_threshold": 0.5,
    "min_marker_size": 4,
    "min_size": 10,
    "flood": "probability",
}
FLOODS = ("probability", "distance")
HEADS = {"softmax": 3, "sigmoid": 2}


def mask_and_marker(probs: np.ndarray, head: str) -> tuple[np.ndarray, np.ndarray]:
    """Split the network output into the nucleus and the marker probability.

    Parameters
    ----------
    probs : (C, H, W) float array
        Probabilities in [0, 1]. ``head='softmax'``: C = 3 classes (mask − border, border,
        background) summing to 1. ``head='sigmoid'``: C = 2 independent channels (mask, border).
    head : {'softmax', 'sigmoid'}

    Returns
    -------
    mask : (H, W) float32
        P(pixel belongs to a nucleus): p0 + p1 (softmax) or channel 0 (sigmoid).
    marker : (H, W) float32
        P(pixel is nucleus interior, away from a contact): p0 (softmax) or
        mask · (1 − border) (sigmoid).
    """
    if head not in HEADS:
        raise ValueError(f"head must be one of {sorted(HEADS)}, got {head!r}")
    probs = np.asarray(probs, dtype=np.float32)
    if probs.ndim != 3 or probs.shape[0] != HEADS[head]:
        raise ValueError(
            f"{head} head expects probabilities of shape ({HEADS[head]}, H, W), got {probs.shape}"
        )
    if head == "softmax":
        return probs[0] + probs[1], probs[0]
    return probs[0], probs[0] * (1.0 - probs[1])


def remove_small(labels: np.ndarray, min_size: int) -> np.ndarray:
    """Remove every label with fewer than ``min_size`` pixels and renumber the rest 1..N.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    min_size : int
        Minimum object area in pixels.

    Returns
    -------
    labels : (H, W) int32
        Small objects set to 0; the others keep their order and are numbered consecutively.
    """
    keep = np.bincount(labels.ravel()) >= min_size
    keep[0] = False
    lut = (np.cumsum(keep) * keep).astype(np.int32)
    return lut[labels]


def fill_holes(labels: np.ndarray) -> np.ndarray:
    """Fill the holes of every object: background enclosed by that object alone.

    A hole is a 4-connected background component that does not touch the image edge; it takes
    the label of the object around it when all its 4-neighbours belong to one object (a gap
    enclosed by several nuclei stays background). Vectorised; the work is proportional to the
    number of hole pixels.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.

    Returns
    -------
    labels : (H, W) int array
        A copy with the holes filled.
    """
    labels = labels.copy()
    background, n = ndi.label(labels == 0)
    if n == 0:
        return labels
    touches_edge = np.zeros(n + 1, bool)
    touches_edge[0] = True  # object pixels
    for edge in (background[0], background[-1], background[:, 0], background[:, -1]):
        touches_edge[edge] = True
    ys, xs = np.nonzero(~touches_edge[background])
    if ys.size == 0:
        return labels
    hole = background[ys, xs]
    neighbour_holes, neighbour_labels = [], []
    for dy, dx in ((-1, 0), (1, 0), (0, -1), (0, 1)):  # holes never touch the edge: no clipping
        values = labels[ys + dy, xs + dx]
        inside = values > 0
        neighbour_holes.append(hole[inside])
        neighbour_labels.append(values[inside])
    pairs = np.unique(np.stack([np.concatenate(neighbour_holes), np.concatenate(neighbour_labels)]), axis=1)
    n_owners = np.bincount(pairs[0], minlength=n + 1)
    owner = np.zeros(n + 1, labels.dtype)
    single = n_owners[pairs[0]] == 1
    owner[pairs[0][single]] = pairs[1][single]
    labels[ys, xs] = owner[hole]
    return labels


def postprocess(
    probs: np.ndarray,
    head: str,
    marker_threshold: float = 0.5,
    mask_threshold: float = 0.5,
    min_marker_size: int = 4,
    min_size: int = 10,
    flood: str = "probability",
) -> np.ndarray:
    """Marker-controlled watershed of a probability map into instance labels.

    Parameters
    ----------
    probs : (C, H, W) float array
        Network probabilities; see :func:`mask_and_marker` for the channel layout.
    head : {'softmax', 'sigmoid'}
        The network head that produced ``probs``.
    marker_threshold : float
        Markers are P(mask − border) > this value.
    mask_threshold : float
        Foreground is P(mask) > this value.
    min_marker_size : int
        Marker components smaller than this (pixels) are dropped.
    min_size : int
        Nuclei smaller than this (pixels) are removed.
    flood : {'probability', 'distance'}
        Flood over −P(mask) or over −(distance to the background).

    Returns
    -------
    labels : (H, W) int32
        0 = background, 1..N = nuclei; every pixel belongs to at most one nucleus.
    """
    if flood not in FLOODS:
        raise ValueError(f"flood must be one of {FLOODS}, got {flood!r}")
    mask_p, marker_p = mask_and_marker(probs, head)
    foreground = mask_p > mask_threshold

    markers, _ = ndi.label((marker_p > marker_threshold) & foreground)
    markers = remove_small(markers, min_marker_size)
    if flood == "probability":
        relief = -mask_p
    else:
        relief = -ndi.distance_transform_edt(foreground).astype(np.float32)
    labels = watershed(relief, markers, mask=foreground).astype(np.int32)

    unmarked = foreground & (labels == 0)
    if unmarked.any():
        extra, _ = ndi.label(unmarked)
        labels[unmarked] = extra[unmarked] + labels.max()

    return remove_small(fill_holes(labels), min_size)


def postprocess_to_shape(probs: np.ndarray, head: str, shape: tuple[int, int], scale: float = 1.0,
                         **kwargs: Any) -> np.ndarray:
    """:func:`postprocess` of probabilities computed on an image resized by ``scale``, giving labels
    on the original pixel grid of ``shape``.

    Sizes in ``kwargs`` (``min_marker_size``, ``min_size``) are in px at the network's scale.
    Enlarged images (``scale > 1``, small nuclei) are post-processed at the network's scale and
    the labels resized back by nearest neighbour, so that the 1–2 px gaps between touching nuclei
    survive; others get their probabilities resized back and are post-processed at full
    resolution (smooth outlines), with the sizes converted to px².

    Parameters
    ----------
    probs : (C, h, w) float32
        At the network's scale, ``(h, w) = scaled_shape(shape, scale)``.
    head : str
    shape : (int, int)
        (H, W) of the original image.
    scale : float

    Returns
    -------
    labels : (H, W) int32
    """
    from pipeline.scale import resize_labels, resize_probabilities

    if scale > 1:
        return remove_small(resize_labels(postprocess(probs, head, **kwargs), tuple(shape)), 1)
    kwargs = dict(kwargs)
    for key in ("min_marker_size", "min_size"):
        if kwargs.get(key):
            kwargs[key] = max(1, int(round(kwargs[key] / scale**2)))
    return postprocess(resize_probabilities(probs, tuple(shape)), head, **kwargs)


def thresholds(cfg: dict[str, Any] | None, source: str | Path = "params.yaml") -> dict[str, Any]:
    """Pick and check the :func:`postprocess` keyword arguments from a configuration section.

    Parameters
    ----------
    cfg : dict or None
        A ``postprocess`` section (params.yaml or a model directory's config.yaml); keys not
        given fall back to :data:`DEFAULTS`, other keys (``out``, ...) are ignored.
    source : str or Path
        The file the section came from, for error messages.

    Returns
    -------
    kwargs : dict
        ``marker_threshold``, ``mask_threshold``, ``min_marker_size``, ``min_size``, ``flood``.
    """
    cfg = cfg or {}
    kwargs = {key: cfg.get(key, default) for key, default in DEFAULTS.items()}
    for key in ("marker_threshold", "mask_threshold"):
        value = kwargs[key]
        if not isinstance(value, (int, float)) or not 0.0 <= value <= 1.0:
            raise NucleiError(f"{source}: postprocess.{key} must be a number in [0, 1], got {value!r}")
    for key in ("min_marker_size", "min_size"):
        value = kwargs[key]
        if not isinstance(value, int) or isinstance(value, bool) or value < 0:
            raise NucleiError(f"{source}: postprocess.{key} must be a whole number >= 0, got {value!r}")
    if kwargs["flood"] not in FLOODS:
        raise NucleiError(
            f"{source}: postprocess.flood must be one of {', '.join(FLOODS)}, got {kwargs['flood']!r}"
        )
    return kwargs


def read_prediction(path: str | Path) -> tuple[np.ndarray, str, tuple[int, int], float]:
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
    """
    path = Path(path)
    try:
        with np.load(path) as data:
            probs = data["probs"].astype(np.float32)
            head = str(data["head"])
            shape = tuple(int(v) for v in data["shape"]) if "shape" in data else probs.shape[1:]
            scale = float(data["scale"]) if "scale" in data else 1.0
    except (OSError, ValueError, KeyError, EOFError) as exc:
        raise NucleiError(f"{path}: not a readable prediction file ({exc})") from None
    if head not in HEADS or probs.ndim != 3 or probs.shape[0] != HEADS[head]:
        raise NucleiError(f"{path}: probs of shape {probs.shape} do not match the {head!r} head")
    return probs, head, shape, scale


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei postprocess``."""
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")


def main(args: argparse.Namespace) -> int:
    """``nuclei postprocess``: ``<predict.out>/*.npz`` → ``<postprocess.out>/<id>.tif``."""
    from pipeline.io import progress, write_labels

    params = load_params(args.params)
    cfg = section(params, "postprocess", args.params)
    kwargs = thresholds(cfg, args.params)
    pred_dir = Path(section(params, "predict", args.params)["out"])
    out = Path(cfg["out"])
    files = sorted(pred_dir.glob("*.npz"))
    if not files:
        raise NucleiError(f"{pred_dir}: no predictions (*.npz); run `nuclei predict` first")
    out.mkdir(parents=True, exist_ok=True)
    counts = []
    for path in progress(files, desc="postprocess"):
        probs, head, shape, scale = read_prediction(path)
        labels = postprocess_to_shape(probs, head, shape, scale, **kwargs)
        write_labels(out / f"{path.stem}.tif", labels)
        counts.append(int(labels.max()))
    print(f"postprocess: {len(files)} images, {sum(counts)} nuclei -> {out}")
    return 0
