"""Reading images and Kaggle folders; atomic writing of every output file.

Every reader raises :class:`pipeline.errors.NucleiError` with one line that names the file and
the problem; every writer writes to a temporary file in the destination folder and renames it,
so that an interrupted run never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import sys
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage as ndi

from pipeline.errors import NucleiError

#: File name endings read as images when a folder is given.
IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
TIFF_SUFFIXES = (".tif", ".tiff")
_UMASK = os.umask(0)
os.umask(_UMASK)


# --------------------------------------------------------------------------- progress


def progress(iterable: Iterable, desc: str = "", total: int | None = None, unit: str = "img"):
    """Wrap ``iterable`` in a tqdm progress bar on stderr (hidden when stderr is no terminal)."""
    from tqdm.auto import tqdm

    disable = None if not os.environ.get("CI") else True
    return tqdm(iterable, desc=desc, total=total, unit=unit, disable=disable, file=sys.stderr)


# --------------------------------------------------------------------------- images


def _to_float01(array: np.ndarray, path: Path) -> np.ndarray:
    """Scale an integer, boolean or float array to float32 in [0, 1]."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.min < 0:  # signed: shift to unsigned range
            return ((array.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
        return (array / np.float32(info.max)).astype(np.float32)
    if np.issubdtype(array.dtype, np.floating):
        if not np.all(np.isfinite(array)):
            raise NucleiError(f"{path}: image contains NaN or infinite values")
        lo, hi = float(array.min()), float(array.max())
        if lo >= 0.0 and hi <= 1.0:
            return array.astype(np.float32)
        if hi == lo:
            return np.zeros(array.shape, np.float32)
        return ((array - lo) / (hi - lo)).astype(np.float32)
    raise NucleiError(f"{path}: unsupported pixel type {array.dtype}")


def _to_rgb(array: np.ndarray, path: Path) -> np.ndarray:
    """(H, W) or (H, W, 1|2|3|4) → (H, W, 3); grey repeated, alpha dropped."""
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3:
        raise NucleiError(f"{path}: expected a 2-D image, got an array of shape {array.shape}")
    channels = array.shape[-1]
    if channels in (1, 2):  # grey, or grey + alpha
        array = np.repeat(array[..., :1], 3, axis=-1)
    elif channels in (3, 4):
        array = array[..., :3]
    else:
        raise NucleiError(f"{path}: unsupported number of channels ({channels})")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise NucleiError(f"{path}: empty image")
    return np.ascontiguousarray(array)


def _read_tiff_planes(path: Path) -> list[np.ndarray]:
    """A TIFF as a list of 2-D planes, each (Y, X) or (Y, X, S) where S holds colour samples.

    Every axis other than Y, X and the samples axis S (pages, Z, T, channels) enumerates planes.
    """
    import tifffile

    logging.getLogger("tifffile").setLevel(logging.ERROR)  # our one-line error says it all
    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            array = series.asarray()
            axes = series.axes
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise NucleiError(f"{path}: not a readable TIFF ({exc})") from None
    keep = "YXS"
    order = [i for i, a in enumerate(axes) if a not in keep] + [axes.index(a) for a in keep if a in axes]
    array = np.transpose(array, order)
    n_extra = len(axes) - sum(a in axes for a in keep)
    planes = array.reshape((-1,) + array.shape[n_extra:])
    return list(planes)


def read_image_planes(path: str | Path) -> list[np.ndarray]:
    """Read every plane of an image file.

    A multi-page TIFF (pages, Z, T or channel axes) gives one image per plane; any other file
    gives a list with one image.

    Returns
    -------
    planes : list of float32 ndarray of shape (H, W, 3), values in [0, 1]
    """
    path = Path(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        if not path.is_file():
            raise NucleiError(f"{path}: no such file")
        return [_to_rgb(_to_float01(plane, path), path) for plane in _read_tiff_planes(path)]
    return [read_image(path)]


def read_image(path: str | Path) -> np.ndarray:
    """Read any image a user hands over as RGB.

    PNG, TIFF, JPEG, BMP; 8-bit, 16-bit, float; grey, grey + alpha, RGB, RGBA (alpha dropped).
    Integer images are scaled by the maximum of their type, float images are kept when within
    [0, 1] and min-max scaled otherwise.

    Parameters
    ----------
    path : str or Path

    Returns
    -------
    image : float32 ndarray of shape (H, W, 3), values in [0, 1]

    Raises
    ------
    NucleiError
        Missing, unreadable, truncated or non-image files, multi-page TIFFs (use
        :func:`read_image_planes`), NaN values.
    """
    path = Path(path)
    if not path.is_file():
        raise NucleiError(f"{path}: no such file")
    if path.suffix.lower() in TIFF_SUFFIXES:
        planes = read_image_planes(path)
        if len(planes) > 1:
            raise NucleiError(f"{path}: multi-page TIFF with {len(planes)} planes; read it plane by plane")
        return planes[0]
    from PIL import Image, UnidentifiedImageError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                im.load()
                array = _pil_to_array(im)
    except UnidentifiedImageError:
        raise NucleiError(f"{path}: not an image file") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombWarning) as exc:
        raise NucleiError(f"{path}: unreadable or truncated image ({exc})") from None
    return _to_rgb(_to_float01(array, path), path)


def _pil_to_array(im) -> np.ndarray:
    """PIL image → ndarray keeping the bit depth (16-bit PNGs stay 16-bit)."""
    if im.mode in ("I;16", "I;16B", "I;16L"):
        return np.asarray(im, dtype=np.uint16)
    if im.mode == "I":  # 32-bit signed container, used by PIL for 16-bit PNGs
        array = np.asarray(im, dtype=np.int64)
        return array.astype(np.uint16) if array.min() >= 0 and array.max() <= 65535 else array.astype(np.float64)
    if im.mode == "F":
        return np.asarray(im, dtype=np.float32)
    if im.mode in ("P", "PA", "CMYK", "YCbCr", "LAB", "HSV"):
        im = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
    if im.mode == "1":
        return np.asarray(im, dtype=bool)
    return np.asarray(im)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float image in [0, 1] → uint8 (same shape), rounded."""
    return np.clip(np.rint(np.asarray(image) * 255.0), 0, 255).astype(np.uint8)


def list_images(inputs: Iterable[str | Path], recursive: bool = False) -> list[Path]:
    """Expand files and folders into a sorted list of image files.

    Files named explicitly are kept whatever their ending (reading them reports problems);
    folders contribute the files whose ending is in :data:`IMAGE_SUFFIXES` (hidden files are
    skipped), and their sub-folders too when ``recursive``.

    Raises
    ------
    NucleiError
        An input that does not exist.
    """
    files: list[Path] = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            pattern = "**/*" if recursive else "*"
            files.extend(
                p for p in sorted(path.glob(pattern))
                if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith(".")
            )
        elif path.is_file():
            files.append(path)
        else:
            raise NucleiError(f"{path}: no such file or folder")
    seen: set[Path] = set()
    unique = []
    for f in files:
        key = f.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(f)
    return unique


# --------------------------------------------------------------------------- Kaggle layout


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
    if not masks:
        return image, None
    mask_dir = sample_dir / "masks"
    mask_files = sorted(mask_dir.glob("*.png")) if mask_dir.is_dir() else []
    if not mask_files:
        raise NucleiError(f"{mask_dir}: no mask files (expected masks/*.png)")
    arrays = []
    for mask_file in mask_files:
        mask = read_mask(mask_file)
        if mask.shape != image.shape[:2]:
            raise NucleiError(
                f"{mask_file}: mask size {mask.shape[1]}x{mask.shape[0]} differs from image size "
                f"{image.shape[1]}x{image.shape[0]}"
            )
        arrays.append(mask)
    return image, masks_to_labels(arrays)


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


# --------------------------------------------------------------------------- atomic writing


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name keeps the suffix so that writers that infer the format from it work.
    Parent folders are created. On an exception the temporary file is removed and ``path`` is
    left as it was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_text(path: str | Path, text: str) -> None:
    """Write a text file atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def write_json(path: str | Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON atomically."""
    write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def write_csv(path: str | Path, df) -> None:
    """Write a pandas DataFrame as CSV (no index) atomically."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 (H, W) or (H, W, 3|4) RGB(A) image as PNG atomically."""
    from PIL import Image

    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"write_png expects uint8, got {image.dtype}")
    with atomic_path(path) as tmp:
        Image.fromarray(image).save(tmp, format="PNG")


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write instance labels as a uint16 TIFF (zlib) atomically; opens in napari and Fiji.

    Raises
    ------
    NucleiError
        More than 65535 labels (they do not fit uint16).
    """
    import tifffile

    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise NucleiError(f"{path}: labels out of the uint16 range (max {labels.max()})")
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(np.uint16), compression="zlib", photometric="minisblack")


def read_labels(path: str | Path) -> np.ndarray:
    """Read a label TIFF written by :func:`write_labels` → int32 (H, W)."""
    import tifffile

    try:
        return tifffile.imread(path).astype(np.int32)
    except Exception as exc:
        raise NucleiError(f"{path}: unreadable label image ({exc})") from None


def save_npz(path: str | Path, compress: bool = True, **arrays: np.ndarray) -> None:
    """Save arrays to an ``.npz`` file atomically (zip-compressed unless ``compress`` is False)."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            (np.savez_compressed if compress else np.savez)(fh, **arrays)


def load_npz(path: str | Path) -> dict[str, np.ndarray]:
    """Load every array of an ``.npz`` file into a dict; a clear error naming a bad file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except FileNotFoundError:
        raise NucleiError(f"{path}: no such file") from None
    except Exception as exc:
        raise NucleiError(f"{path}: unreadable array file ({exc})") from None
