"""The Kaggle (2018 Data Science Bowl) folder layout: ``<id>/images/<id>.png`` and ``<id>/masks/*.png``.

Reading one sample (image and its instance labels, overlaps resolved), listing and iterating over
a train or test root. Errors are :class:`pipeline.errors.NucleiError` naming the file.

Must not: write files (:mod:`pipeline.files.io` does), or know anything of the stages that read samples.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

from pipeline.errors import NucleiError
from pipeline.files.io import read_image, to_uint8
from pipeline.progress import progress


def read_mask(path: str | Path) -> np.ndarray:
    """Read one Kaggle mask PNG as bool (H, W) (any non-zero pixel is nucleus)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            array = np.asarray(im)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise NucleiError(f"{path}: unreadable mask ({exc})") from None
    if array.ndim == 3:
        array = array[..., :3].max(axis=-1) if array.shape[-1] >= 3 else array[..., 0]
    return array > 0


def masks_to_labels(masks: list[np.ndarray]) -> np.ndarray:
    """Combine binary nucleus masks into one instance label map.

    Overlaps are resolved deterministically: where masks overlap, the smaller nucleus keeps the
    pixel (so a small nucleus is never swallowed by a large one); equal areas keep the earlier
    mask. Holes inside each nucleus are filled (pixels of other nuclei are not taken). Empty
    masks are dropped and labels are consecutive.

    Parameters
    ----------
    masks : list of bool ndarray of shape (H, W)

    Returns
    -------
    labels : int32 ndarray of shape (H, W); 0 = background, 1..N = nuclei in input order.
    """
    if not masks:
        raise ValueError("masks_to_labels needs at least one mask to know the image shape")
    shape = masks[0].shape
    labels = np.zeros(shape, np.int32)
    areas = np.array([int(m.sum()) for m in masks])
    # paint largest first so smaller nuclei overwrite; among equal areas the earlier mask wins
    order = sorted(range(len(masks)), key=lambda i: (-areas[i], -i))
    for i in order:
        if areas[i] == 0:
            continue
        sl = ndi.find_objects(masks[i].astype(np.uint8))[0]
        filled = ndi.binary_fill_holes(masks[i][sl])
        labels[sl][filled] = i + 1
    from skimage.segmentation import relabel_sequential

    return relabel_sequential(labels)[0].astype(np.int32)


def read_kaggle_sample(sample_dir: str | Path, masks: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Read one Kaggle sample folder ``<id>/images/<id>.png`` (+ ``<id>/masks/*.png``).

    Returns
    -------
    image : uint8 ndarray of shape (H, W, 3), RGB (alpha dropped)
    labels : int32 ndarray of shape (H, W) (see :func:`masks_to_labels`), or None when
        ``masks`` is False.

    Raises
    ------
    NucleiError
        Missing or unreadable image, missing or empty ``masks/`` folder, a mask whose size
        differs from the image.
    """
    sample_dir = Path(sample_dir)
    image_path = sample_dir / "images" / f"{sample_dir.name}.png"
    if not image_path.is_file():
        candidates = sorted((sample_dir / "images").glob("*")) if (sample_dir / "images").is_dir() else []
        if len(candidates) != 1:
            raise NucleiError(f"{image_path}: image missing (expected <id>/images/<id>.png)")
        image_path = candidates[0]
    image = to_uint8(read_image(image_path))
    return image, (read_kaggle_labels(sample_dir, image.shape[:2]) if masks else None)


def read_kaggle_labels(sample_dir: str | Path, shape: tuple[int, int]) -> np.ndarray:
    """The labels of one Kaggle sample folder, from its ``<id>/masks/*.png``.

    Parameters
    ----------
    sample_dir : the sample's folder
    shape : (H, W) of its image, in pixels; every mask must have it

    Returns
    -------
    labels : int32 ndarray of shape (H, W) (see :func:`masks_to_labels`)

    Raises
    ------
    NucleiError
        Missing or empty ``masks/`` folder, a mask whose size differs from ``shape``.
    """
    mask_dir = Path(sample_dir) / "masks"
    mask_files = sorted(mask_dir.glob("*.png")) if mask_dir.is_dir() else []
    if not mask_files:
        raise NucleiError(f"{mask_dir}: no mask files (expected masks/*.png)")
    arrays = []
    for mask_file in mask_files:
        mask = read_mask(mask_file)
        if mask.shape != tuple(shape):
            raise NucleiError(
                f"{mask_file}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
                f"{shape[1]}x{shape[0]}"
            )
        arrays.append(mask)
    return masks_to_labels(arrays)


def list_kaggle_ids(root: str | Path) -> list[str]:
    """Sorted sample ids (sub-folder names holding ``images/``) of a Kaggle train or test root."""
    root = Path(root)
    if not root.is_dir():
        raise NucleiError(f"{root}: no such folder")
    ids = sorted(p.name for p in root.iterdir() if (p / "images").is_dir())
    if not ids:
        raise NucleiError(f"{root}: no Kaggle samples (<id>/images/<id>.png) found")
    return ids


def iter_kaggle_root(
    root: str | Path, masks: bool = True, on_error: str = "raise", desc: str = "reading"
) -> Iterator[tuple[str, np.ndarray, np.ndarray | None]]:
    """Iterate over a Kaggle root with a progress bar.

    Parameters
    ----------
    root : folder with ``<id>/images/<id>.png`` (and ``<id>/masks/*.png`` when ``masks``).
    masks : read the masks into labels (train layout) or not (test layout).
    on_error : 'raise' stops at the first bad sample; 'warn' prints the one-line error on
        stderr and goes on with the next sample.

    Yields
    ------
    id, image uint8 (H, W, 3), labels int32 (H, W) or None
    """
    root = Path(root)
    for sample_id in progress(list_kaggle_ids(root), desc=desc):
        try:
            image, labels = read_kaggle_sample(root / sample_id, masks=masks)
        except NucleiError as exc:
            if on_error == "raise":
                raise
            print(f"nuclei: warning: skipped {exc}", file=sys.stderr)
            continue
        yield sample_id, image, labels
