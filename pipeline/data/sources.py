"""Labelled sources: the folder layouts a training source can have, and reading one sample of each.

Two layouts (``data.sources.<name>.layout`` in ``params.yaml``):

- ``kaggle``: ``<id>/images/<id>.png`` + ``<id>/masks/*.png``, one binary mask per nucleus
  (:mod:`pipeline.data.kaggle`); the sample id is the folder name.
- ``folder``: ``images/<id>.<ext>`` (any image :func:`pipeline.files.io.read_image` reads) +
  ``labels/<id>.tif`` (an instance label image of the same size: 0 background, 1..N nuclei), as in
  ``../shared/extra/<source>/`` and as ``nuclei segment`` writes its ``labels/``.

Must not: write files or know the stages that read samples (:mod:`pipeline.stages.prepare` does both).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.errors import NucleiError
from pipeline.files.inputs import IMAGE_SUFFIXES
from pipeline.files.io import read_image, to_uint8

#: Suffixes of a ``folder`` source's label images, in order of preference.
LABEL_SUFFIXES = (".tif", ".tiff", ".png")


def list_sample_ids(root: str | Path, layout: str) -> list[str]:
    """Sorted sample ids of a source folder.

    A ``folder`` source lists the images of ``images/`` that have a label image in ``labels/``;
    the others are named in :func:`unlabelled_images`.

    Raises
    ------
    NucleiError
        The folder is missing, or holds no sample of its layout.
    """
    root = Path(root)
    if layout == "kaggle":
        from pipeline.data.kaggle import list_kaggle_ids

        return list_kaggle_ids(root)
    images = _folder_images(root)
    ids = sorted(stem for stem in images if _label_file(root, stem) is not None)
    if not ids:
        raise NucleiError(f"{root}: no labelled images (expected images/<id>.png and labels/<id>.tif)")
    return ids


def image_file(root: str | Path, layout: str, sample_id: str) -> Path:
    """The image file of a sample of a source, as ``nuclei segment`` would read it.

    Raises
    ------
    NucleiError
        No such image.
    """
    root = Path(root)
    if layout == "kaggle":
        path = root / sample_id / "images" / f"{sample_id}.png"
    else:
        path = _folder_images(root).get(sample_id, root / "images" / sample_id)
    if not path.is_file():
        raise NucleiError(f"{path}: image missing")
    return path


def unlabelled_images(root: str | Path) -> list[str]:
    """Image file names of a ``folder`` source's ``images/`` without a label image."""
    root = Path(root)
    return sorted(path.name for stem, path in _folder_images(root).items() if _label_file(root, stem) is None)


def read_sample(root: str | Path, layout: str, sample_id: str) -> tuple[np.ndarray, np.ndarray]:
    """One labelled sample of a source.

    Returns
    -------
    image : uint8 ndarray of shape (H, W, 3), RGB
    labels : int32 ndarray of shape (H, W); 0 = background, 1..N = nuclei, consecutive

    Raises
    ------
    NucleiError
        Unreadable files, a label image of another size, or one that is not whole and non-negative.
    """
    root = Path(root)
    if layout == "kaggle":
        from pipeline.data.kaggle import read_kaggle_sample

        return read_kaggle_sample(root / sample_id)
    images = _folder_images(root)
    if sample_id not in images:
        raise NucleiError(f"{root / 'images' / sample_id}: image missing")
    label_file = _label_file(root, sample_id)
    if label_file is None:
        raise NucleiError(f"{root / 'labels' / sample_id}.tif: label image missing")
    image = to_uint8(read_image(images[sample_id]))
    labels = read_label_image(label_file)
    if labels.shape != image.shape[:2]:
        raise NucleiError(f"{label_file}: label size {labels.shape[1]}x{labels.shape[0]} differs from image size "
                          f"{image.shape[1]}x{image.shape[0]}")
    return image, labels


def read_label_image(path: str | Path) -> np.ndarray:
    """Read an instance label image (TIFF or PNG, one plane) → int32 (H, W), labels consecutive.

    Raises
    ------
    NucleiError
        Unreadable, more than one plane, float or negative values.
    """
    from pipeline.data.annotations import read_label_file

    path = Path(path)
    array = np.squeeze(read_label_file(path))
    if array.ndim != 2:
        raise NucleiError(f"{path}: a label image needs one plane, got shape {array.shape}")
    if not (np.issubdtype(array.dtype, np.integer) or array.dtype == bool):
        raise NucleiError(f"{path}: label image of type {array.dtype}; expected whole numbers (0 = background)")
    if array.size and int(array.min()) < 0:
        raise NucleiError(f"{path}: negative labels")
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(array.astype(np.int64))[0].astype(np.int32)


def _folder_images(root: Path) -> dict[str, Path]:
    folder = root / "images"
    if not folder.is_dir():
        raise NucleiError(f"{folder}: no such folder (a 'folder' source holds images/ and labels/)")
    files = sorted(p for p in folder.iterdir()
                   if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES)
    images: dict[str, Path] = {}
    for path in files:
        if path.stem in images:
            raise NucleiError(f"{path}: two images named {path.stem!r} ({images[path.stem].name}, {path.name})")
        images[path.stem] = path
    return images


def _label_file(root: Path, stem: str) -> Path | None:
    for suffix in LABEL_SUFFIXES:
        path = root / "labels" / f"{stem}{suffix}"
        if path.is_file():
            return path
    return None
