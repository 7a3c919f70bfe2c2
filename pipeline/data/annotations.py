"""Annotated images a user hands to ``nuclei finetune``: pairing images with label images, and
checking the labels.

Label images are found by the names ``nuclei segment`` gives (``<labels>/<name>.tif``, ``<name>``
the image's file stem), Cellpose's ``<name>_masks.tif`` and PNG (``<name>.png``,
``<name>_masks.png``). Labels must be integer instance labels (0 = background) of the image's size;
a binary mask (one value, several separate objects) is split into connected components and ids
beyond int32 are relabelled, with a warning (:func:`pipeline.method.labels.instance_labels`, shared
with ``nuclei export``).

Must not: train, rescale or write anything.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.errors import NucleiError
from pipeline.method.labels import instance_labels

#: Label file names tried for an image of stem ``name``, in this order.
LABEL_NAMES = ("{name}.tif", "{name}.tiff", "{name}_masks.tif", "{name}_masks.tiff", "{name}.png", "{name}_masks.png")
LABEL_SUFFIXES = (".tif", ".tiff", ".png")


@dataclass
class Annotated:
    """One annotated image.

    Attributes
    ----------
    name : str
        The image's file stem (or ``image <k>`` for an array).
    image : (H, W, 3) float32
        In [0, 1] as :func:`pipeline.files.io.read_image` reads it.
    labels : (H, W) int32
        0 = background, 1..N nuclei.
    sha256 : str
        Of the image file (or of the array's bytes).
    source : str
        The image file (or ``name``), for messages.
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    sha256: str
    source: str

    @property
    def n_nuclei(self) -> int:
        return int(np.count_nonzero(np.bincount(self.labels.ravel())[1:]))


def find_labels(image: Path, folder: Path) -> Path | None:
    """The label file of ``image`` in ``folder`` (:data:`LABEL_NAMES`), or None."""
    for pattern in LABEL_NAMES:
        candidate = folder / pattern.format(name=image.stem)
        if candidate.is_file():
            return candidate
    return None


def label_stem(path: Path) -> str:
    """The image stem a label file belongs to (``a_masks.tif`` → ``a``)."""
    return path.stem.removesuffix("_masks")


def pair_files(inputs: list[str | Path], folder: str | Path) -> list[tuple[Path, Path]]:
    """Pair image files (or the images of folders) with their label files in ``folder``.

    Raises
    ------
    NucleiError
        No images, an image without labels, the label folder missing, or (when a folder of
        images is given) a label file in ``folder`` that belongs to no image of it.
    """
    from pipeline.files.inputs import list_images

    folder = Path(folder)
    if not folder.is_dir():
        raise NucleiError(f"{folder}: label folder not found")
    images = [p for p in list_images(inputs) if p.resolve().parent != folder.resolve()]
    if not images:
        raise NucleiError(f"{', '.join(map(str, inputs)) or 'IMAGES'}: no images given")
    pairs = []
    for image in images:
        labels = find_labels(image, folder)
        if labels is None:
            raise NucleiError(f"{image}: no labels in {folder} (looked for {image.stem}.tif, "
                              f"{image.stem}_masks.tif, {image.stem}.png)")
        pairs.append((image, labels))
    image_folders = {Path(p).resolve() for p in inputs if Path(p).is_dir()}
    if image_folders:
        stems = {image.stem for image in images}
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() in LABEL_SUFFIXES and label_stem(path) not in stems:
                raise NucleiError(f"{path}: labels without an image in {', '.join(map(str, sorted(image_folders)))}")
    return pairs


def check_labels(labels: np.ndarray, source: str, shape: tuple[int, int]) -> tuple[np.ndarray, str]:
    """Check a label image against its image; returns (int32 labels, warning or '').

    Parameters
    ----------
    labels : (H, W) or (H, W, 1) array
    source : str
        The label file, for messages.
    shape : (int, int)
        (H, W) of the image.

    Raises
    ------
    NucleiError
        Not 2-D, another size than the image, float or negative values.

    A binary mask is split and large ids relabelled by :func:`pipeline.method.labels.instance_labels`.
    """
    labels = np.asarray(labels)
    if labels.ndim == 3 and labels.shape[-1] == 1:
        labels = labels[..., 0]
    if labels.ndim != 2:
        raise NucleiError(f"{source}: label image has shape {labels.shape}; expected one 2-D plane")
    if labels.shape != tuple(shape[:2]):
        raise NucleiError(f"{source}: label image is {labels.shape[1]}x{labels.shape[0]} px but the image is "
                          f"{shape[1]}x{shape[0]} px")
    if np.issubdtype(labels.dtype, np.floating):
        raise NucleiError(f"{source}: float label image; expected integer instance labels (0 = background)")
    if not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
        raise NucleiError(f"{source}: label image of type {labels.dtype}; expected integer instance labels")
    return instance_labels(labels, source)  # binary masks split, ids beyond int32 relabelled


def read_label_file(path: Path) -> np.ndarray:
    """The one plane of a label file, in its own pixel type."""
    from pipeline.files.io import read_planes

    planes = read_planes(path)
    if len(planes) != 1:
        raise NucleiError(f"{path}: {len(planes)} planes; expected one label image")
    return planes[0].array


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def load_annotated(images: list, labels, warn=print) -> list[Annotated]:
    """Read and check annotated images.

    Parameters
    ----------
    images : list of str, Path or (H, W[, C]) arrays
        Image files, folders of images (paths only) or images.
    labels : str or Path (a folder), or list of str, Path or int arrays
        A folder: each image's labels are found by name (:func:`pair_files`); a list: one per
        image, in order.
    warn : callable(str)
        Receives each warning (binary masks).

    Returns
    -------
    annotated : list of :class:`Annotated`

    Raises
    ------
    NucleiError
        One line naming the file: see :func:`pair_files` and :func:`check_labels`; an image
        without labels or labels without an image (lists of different lengths).
    """
    from pipeline.files.io import as_rgb01, read_image

    if isinstance(labels, (str, Path)):
        if not all(isinstance(i, (str, Path)) for i in images):
            raise NucleiError(f"{labels}: a label folder pairs image files by name; give one label per image array")
        pairs: list = pair_files(list(images), labels)
    else:
        images, labels = list(images), list(labels)
        if not images:
            raise NucleiError("finetune: no images given")
        if len(images) != len(labels):
            k = min(len(images), len(labels))
            extra = (f"{_name(images[k], k)}: an image without labels" if len(images) > k
                     else f"{_name(labels[k], k)}: labels without an image")
            raise NucleiError(f"{extra} ({len(images)} images, {len(labels)} label images)")
        pairs = list(zip(images, labels, strict=True))
    out = []
    for k, (image, lab) in enumerate(pairs):
        if isinstance(image, (str, Path)):
            path = Path(image)
            pixels, name, source = read_image(path), path.stem, str(path)
            digest = _digest(path.read_bytes())
        else:
            array = np.asarray(image)
            if array.ndim not in (2, 3):
                raise NucleiError(f"image {k + 1}: expected a 2-D image, got an array of shape {array.shape}")
            pixels, name, source = as_rgb01(array), f"image {k + 1}", f"image {k + 1}"
            digest = _digest(np.ascontiguousarray(array).tobytes())
        if isinstance(lab, (str, Path)):
            lab_source, lab = str(lab), read_label_file(Path(lab))
        else:
            lab_source = f"labels of {source}"
        checked, warning = check_labels(lab, lab_source, pixels.shape[:2])
        if warning:
            warn(warning)
        out.append(Annotated(name, pixels, checked, digest, source))
    return out


def _name(item, k: int) -> str:
    return str(item) if isinstance(item, (str, Path)) else f"item {k + 1}"
