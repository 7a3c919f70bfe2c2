"""Reading images; atomic writing of every output file (Kaggle folders: :mod:`pipeline.data.kaggle`;
which files to read: :mod:`pipeline.files.inputs`; TIFF series and planes: :mod:`pipeline.files.tiff`;
orientation tags: :mod:`pipeline.files.orientation`).

Every reader raises :class:`pipeline.errors.NucleiError` with one line that names the file and
the problem; every writer writes to a temporary file in the destination folder and renames it,
so that an interrupted run never leaves a half-written output behind.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.errors import NucleiError, OutputError, one_line
from pipeline.files.planes import SEGMENT_BYTES_PER_PIXEL, Plane, check_size, max_image_pixels  # noqa: F401 (re-exported)

TIFF_SUFFIXES = (".tif", ".tiff")


# --------------------------------------------------------------------------- images


def _to_float01(array: np.ndarray) -> np.ndarray:
    """Scale a checked (:func:`check_array`) integer, boolean or float array to float32 in [0, 1]."""
    if array.dtype == bool:
        return array.astype(np.float32)
    if np.issubdtype(array.dtype, np.integer):
        info = np.iinfo(array.dtype)
        if info.min < 0:  # signed: shift to unsigned range
            return ((array.astype(np.float64) - info.min) / (info.max - info.min)).astype(np.float32)
        return (array / np.float32(info.max)).astype(np.float32, copy=False)
    lo, hi = float(array.min()), float(array.max())
    if lo >= 0.0 and hi <= 1.0:
        return array.astype(np.float32)
    if hi == lo:
        return np.zeros(array.shape, np.float32)
    return ((array - lo) / (hi - lo)).astype(np.float32, copy=False)


def _to_rgb(array: np.ndarray) -> np.ndarray:
    """Checked (H, W) or (H, W, 1|2|3|4) → (H, W, 3); grey repeated, alpha dropped."""
    if array.ndim == 2:
        array = array[..., None]
    if array.shape[-1] in (1, 2):  # grey, or grey + alpha
        array = np.repeat(array[..., :1], 3, axis=-1)
    return np.ascontiguousarray(array[..., :3])


def read_planes(path: str | Path) -> list[Plane]:
    """Read every image of a file in the file's own units (for measurement).

    A TIFF gives every plane of every series (pages, Z, T or channel axes enumerate planes);
    any other file gives one plane. Orientation tags (EXIF, TIFF) are applied: the arrays are
    the images as viewers show them.

    Returns
    -------
    planes : list of :class:`Plane`
        ``array`` (H, W) or (H, W, C) with C = 1..4 channels (grey, grey + alpha, RGB, RGBA),
        in the file's pixel type (bool, integer or float; float values finite), unscaled.

    Raises
    ------
    NucleiError
        Missing, unreadable, truncated, too large or non-image files, NaN values; a FIFO or a
        device (never opened: :func:`pipeline.files.inputs.file_kind`).
    """
    path = Path(path)
    check_file(path)
    if path.suffix.lower() in TIFF_SUFFIXES:
        from pipeline.files.tiff import read_tiff_planes

        planes = read_tiff_planes(path)
    else:
        planes = [Plane("", 0, 0, *_read_pillow(path))]
    for plane in planes:
        check_array(plane.array, path)
    return planes


def check_file(path: Path) -> None:
    """Raise a one-line NucleiError unless ``path`` is a regular file: missing, a folder, a FIFO or
    a device (never opened: :func:`pipeline.files.inputs.file_kind`)."""
    from pipeline.files.inputs import file_kind

    kind = file_kind(path)
    if kind is not None:
        what = {"missing": "no such file"}.get(kind, kind + (", not an image file" if kind.startswith("a ") else ""))
        raise NucleiError(f"{path}: {what}")


def check_array(array: np.ndarray, path: Path) -> None:
    """Raise unless ``array`` is a (H, W) or (H, W, 1..4) image of a supported, finite type."""
    if array.ndim not in (2, 3):
        raise NucleiError(f"{path}: expected a 2-D image, got an array of shape {array.shape}")
    if array.ndim == 3 and not 1 <= array.shape[-1] <= 4:
        raise NucleiError(f"{path}: unsupported number of channels ({array.shape[-1]})")
    if array.shape[0] == 0 or array.shape[1] == 0:
        raise NucleiError(f"{path}: empty image")
    if not (array.dtype == bool or np.issubdtype(array.dtype, np.integer) or np.issubdtype(array.dtype, np.floating)):
        raise NucleiError(f"{path}: unsupported pixel type {array.dtype}")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise NucleiError(f"{path}: image contains NaN or infinite values")


#: The colour channels ``nuclei segment --channel`` can select, and their index.
COLOUR_CHANNELS = {"red": 0, "green": 1, "blue": 2}


def colour_channel(array: np.ndarray, channel: str) -> np.ndarray:
    """One colour channel of a plane of :func:`read_planes`, as a grey (H, W) plane.

    Parameters
    ----------
    array : (H, W) or (H, W, C) array, C = 1..4
        As stored in the file (any pixel type).
    channel : {'red', 'green', 'blue'}
        A key of :data:`COLOUR_CHANNELS`.

    Returns
    -------
    grey : (H, W) array, same pixel type
        That channel of an RGB(A) image; a grey image (with or without alpha) as it is, since
        each of its colour channels is the grey.
    """
    if array.ndim == 2:
        return array
    if array.shape[-1] < 3:  # grey, grey + alpha
        return array[..., 0]
    return array[..., COLOUR_CHANNELS[channel]]


def as_rgb01(array: np.ndarray) -> np.ndarray:
    """A plane of :func:`read_planes` → float32 (H, W, 3) in [0, 1], the network's input.

    Integer images are scaled by the maximum of their type, float images are kept when within
    [0, 1] and min-max scaled otherwise (intensities in the image's units stay in the plane).
    """
    return _to_rgb(_to_float01(array))


def read_image_planes(path: str | Path) -> list[np.ndarray]:
    """Read every plane of an image file (:func:`read_planes`) scaled by :func:`as_rgb01`.

    Returns
    -------
    planes : list of float32 ndarray of shape (H, W, 3), values in [0, 1]
    """
    return [as_rgb01(plane.array) for plane in read_planes(path)]


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
        Missing, unreadable, truncated, too large or non-image files, multi-page TIFFs (use
        :func:`read_image_planes`), NaN values.
    """
    planes = read_image_planes(path)
    if len(planes) > 1:
        raise NucleiError(f"{path}: multi-page TIFF with {len(planes)} planes; read it plane by plane")
    return planes[0]


def _read_pillow(path: Path) -> tuple[np.ndarray, int]:
    """A PNG, JPEG or BMP file as an array in its own pixel type, turned as its EXIF Orientation
    says, and that orientation code (:func:`pipeline.files.orientation.pillow_orientation`).

    Pillow's decompression-bomb guard (89.5 Mpx) is lifted for this read: the limit is
    :func:`max_image_pixels`, tied to memory, and its error says 'too large'.
    """
    from PIL import Image, UnidentifiedImageError

    from pipeline.files.orientation import pillow_orientation

    guard = Image.MAX_IMAGE_PIXELS
    try:
        Image.MAX_IMAGE_PIXELS = None
        with Image.open(path) as im:
            check_size(path, im.height, im.width)
            im.load()
            shown, code = pillow_orientation(im)
            return _pil_to_array(shown), code
    except UnidentifiedImageError:
        raise NucleiError(f"{path}: not an image file") from None
    except MemoryError:
        raise NucleiError(f"{path}: too large for this machine's memory") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise NucleiError(f"{path}: unreadable or truncated image ({one_line(exc)})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = guard


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


# --------------------------------------------------------------------------- atomic writing


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success rename it to ``path``.

    The temporary name keeps the suffix so that writers that infer the format from it work.
    Parent folders are created. On an exception the temporary file is removed and ``path`` is
    left as it was; an ``OSError`` (disk full, read-only, a folder in the way) becomes a
    one-line :class:`pipeline.errors.OutputError` naming ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_file(path.parent, f".{path.stem}.", f".tmp{path.suffix}")
        yield tmp
        os.replace(tmp, path)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or one_line(exc)})") from None
    finally:
        if tmp is not None and tmp.exists():
            tmp.unlink()


def _new_file(folder: Path, prefix: str, suffix: str) -> Path:
    """Create an empty file of a new random name in ``folder`` with mode 0666 less the process's
    umask (as any new file gets; ``tempfile.mkstemp`` would give 0600), without changing the umask:
    reading it means setting it, a race with other threads."""
    for _ in range(100):
        name = folder / f"{prefix}{secrets.token_hex(6)}{suffix}"
        try:
            os.close(os.open(name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
            return name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary name", str(folder))


def check_writable_folder(folder: str | Path, for_file: str | Path | None = None) -> Path:
    """Create ``folder`` if needed and check that files can be written in it.

    Raises
    ------
    NucleiError
        Naming ``for_file`` (default ``folder``): a file stands where a folder is needed, or the
        folder cannot be created or written to (read-only, no permission, a name too long).
    """
    folder = Path(folder)
    target = for_file or folder
    try:
        existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
        if existing is not None and not existing.is_dir():
            raise NucleiError(f"{target}: cannot write ({existing} is a file, not a folder)")
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-test.", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise NucleiError(f"{target}: cannot write ({exc.strerror or one_line(exc)})") from None
    return folder


def check_writable_file(path: str | Path) -> Path:
    """Check, before any work, that the file ``path`` can be written (see :func:`atomic_path`).

    Raises
    ------
    NucleiError
        ``path`` is a folder, or its folder cannot be created or written to.
    """
    path = Path(path)
    if path.is_dir():
        raise NucleiError(f"{path}: cannot write (a folder; give a file name)")
    check_writable_folder(path.parent, for_file=path)
    return path


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


#: zlib level of the PNGs written (overlays, report thumbnails): level 1 writes a 1024 × 1024
#: overlay in about a third of the time of the usual level 6, for files about 1.2× as large
#: (README, "Benchmarks").
PNG_COMPRESSION = 1


def encode_png(image: np.ndarray, compression: int = PNG_COMPRESSION) -> bytes:
    """Encode a uint8 or uint16 (H, W) grey or (H, W, 3|4) RGB(A) image as PNG bytes (zlib level
    ``compression``, 0-9)."""
    import cv2

    image = np.asarray(image)
    if image.dtype not in (np.uint8, np.uint16):
        raise ValueError(f"encode_png expects uint8 or uint16, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] in (3, 4):  # OpenCV's channel order is BGR(A)
        image = cv2.cvtColor(image, cv2.COLOR_RGB2BGR if image.shape[2] == 3 else cv2.COLOR_RGBA2BGRA)
    elif image.ndim != 2:
        raise ValueError(f"encode_png expects (H, W), (H, W, 3) or (H, W, 4), got shape {image.shape}")
    ok, buffer = cv2.imencode(".png", np.ascontiguousarray(image), [cv2.IMWRITE_PNG_COMPRESSION, compression])
    if not ok:  # pragma: no cover - OpenCV only fails on invalid arrays
        raise ValueError("could not encode the image as PNG")
    return buffer.tobytes()


def write_png(path: str | Path, image: np.ndarray) -> None:
    """Write a uint8 or uint16 (H, W) or (H, W, 3|4) RGB(A) image as PNG atomically (:func:`encode_png`)."""
    data = encode_png(image)
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_labels(path: str | Path, labels: np.ndarray) -> None:
    """Write instance labels as a TIFF (zlib) atomically; opens in napari and Fiji.

    uint16 when every id fits (up to 65,535), else uint32 (:func:`label_dtype`): ids are kept as given.

    Raises
    ------
    NucleiError
        Negative ids, or ids beyond uint32.
    """
    import tifffile

    labels = np.asarray(labels)
    labels = labels.astype(label_dtype(path, labels), copy=False)
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels, compression="zlib", photometric="minisblack")


def label_dtype(path: str | Path, labels: np.ndarray) -> type:
    """The pixel type a label file ``path`` stores ``labels`` in: uint16 when their ids fit, else uint32.

    Raises
    ------
    NucleiError
        Naming ``path``: negative ids, or ids beyond uint32.
    """
    low, high = (int(labels.min()), int(labels.max())) if labels.size else (0, 0)
    if low < 0 or high > np.iinfo(np.uint32).max:
        raise NucleiError(f"{path}: labels out of the uint32 range (min {low}, max {high})")
    return np.uint16 if high <= np.iinfo(np.uint16).max else np.uint32


def uint16_labels(path: str | Path, labels: np.ndarray) -> np.ndarray:
    """``labels`` as uint16, for the label file ``path``; NucleiError naming it when they do not fit."""
    labels = np.asarray(labels)
    if labels.size and (labels.min() < 0 or labels.max() > np.iinfo(np.uint16).max):
        raise NucleiError(f"{path}: labels out of the uint16 range (max {labels.max()})")
    return labels.astype(np.uint16)


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


def load_npz(path: str | Path, keys: Iterable[str] | None = None) -> dict[str, np.ndarray]:
    """Load the arrays of an ``.npz`` file into a dict: all of them, or those of ``keys`` that it
    holds (the others are not decompressed); a clear error naming a bad file."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: data[k] for k in data.files if keys is None or k in keys}
    except FileNotFoundError:
        raise NucleiError(f"{path}: no such file") from None
    except Exception as exc:
        raise NucleiError(f"{path}: unreadable array file ({exc})") from None
