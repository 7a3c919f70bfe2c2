"""Kaggle run-length encoding (DSB2018) of instance label maps, and submission validation.

Pixels are numbered from 1, top to bottom then left to right (column-major); a nucleus is the
string ``"start length start length ..."`` with runs in ascending order that do not overlap
(adjacent runs are accepted, though the encoder never writes them). A submission is a table
``ImageId,EncodedPixels`` with one row per nucleus; an image without nuclei is one row with an
empty ``EncodedPixels``.

Must not: read images or run a model.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.errors import NucleiError
from pipeline.files.io import write_csv

#: Largest start or length accepted (far beyond any image; keeps int64 sums exact).
_MAX_VALUE = 2**52

#: Columns of a submission file, in order.
SUBMISSION_COLUMNS = ("ImageId", "EncodedPixels")


class RLEError(ValueError):
    """A malformed run-length string (the message says what is wrong, without location)."""


# --------------------------------------------------------------------------- encoding


def _runs(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Runs of equal non-zero values along the column-major pixel order.

    Returns
    -------
    starts : int64 (R,), 0-based column-major index of the first pixel of each run
    lengths : int64 (R,), run lengths in pixels
    values : (R,) label value of each run; runs ordered by ``starts``
    """
    flat = np.asarray(labels).T.ravel()  # column-major order
    if flat.size == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, flat[:0]
    change = np.flatnonzero(flat[1:] != flat[:-1]) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [flat.size]))
    values = flat[starts]
    keep = values != 0
    return starts[keep].astype(np.int64), (ends - starts)[keep].astype(np.int64), values[keep]


def _format_runs(starts: np.ndarray, lengths: np.ndarray) -> str:
    """0-based run starts and lengths → Kaggle string (1-based starts)."""
    pairs = np.empty(2 * starts.size, np.int64)
    pairs[0::2] = starts + 1
    pairs[1::2] = lengths
    return " ".join(map(str, pairs.tolist()))


def encode_mask(mask: np.ndarray) -> str:
    """Run-length encode one binary mask.

    Parameters
    ----------
    mask : bool ndarray of shape (H, W)
        Non-zero pixels belong to the object.

    Returns
    -------
    rle : str
        ``"start length ..."``, 1-based column-major starts, ascending; ``""`` for an empty mask.
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise ValueError(f"encode_mask expects a 2-D mask, got shape {mask.shape}")
    starts, lengths, _ = _runs(mask.astype(bool))
    return _format_runs(starts, lengths)


def encode_labels(labels: np.ndarray) -> list[str]:
    """Run-length encode every nucleus of an instance label map.

    One pass over the transposed image finds all runs; the runs are then grouped by label, so
    the cost is linear in the number of pixels plus the number of runs.

    Parameters
    ----------
    labels : int ndarray of shape (H, W)
        0 = background; every other value is one nucleus (values need not be consecutive).

    Returns
    -------
    rles : list of str
        One string per nucleus, in ascending order of label value; empty list when there is no
        nucleus.
    """
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"encode_labels expects a 2-D label image, got shape {labels.shape}")
    if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
        raise ValueError(f"encode_labels expects integer labels, got {labels.dtype}")
    starts, lengths, values = _runs(labels)
    if starts.size == 0:
        return []
    order = np.argsort(values, kind="stable")  # stable: runs stay ascending within a label
    starts, lengths, values = starts[order], lengths[order], values[order]
    bounds = np.flatnonzero(np.diff(values)) + 1
    return [
        _format_runs(s, n)
        for s, n in zip(np.split(starts, bounds), np.split(lengths, bounds), strict=True)
    ]


# --------------------------------------------------------------------------- decoding


def _is_empty(rle) -> bool:
    """True for an empty or missing ``EncodedPixels`` value ('' / whitespace / None / NaN)."""
    if rle is None:
        return True
    if isinstance(rle, float):
        return bool(np.isnan(rle))
    return isinstance(rle, str) and not rle.strip()


def parse_rle(rle: str, n_pixels: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Parse and check one run-length string.

    Parameters
    ----------
    rle : str
        ``"start length ..."``; empty string (or None/NaN) for no pixels.
    n_pixels : int, optional
        H * W of the image; when given, runs must lie within pixels 1..n_pixels.

    Returns
    -------
    starts : int64 ndarray (R,), 0-based column-major index of the first pixel of each run
    lengths : int64 ndarray (R,), in pixels

    Raises
    ------
    RLEError
        Non-integer tokens, an odd number of values, non-positive starts or lengths, runs
        beyond the image, runs out of ascending order or overlapping one another.
    """
    if _is_empty(rle):
        empty = np.zeros(0, np.int64)
        return empty, empty
    if not isinstance(rle, str):
        raise RLEError(f"expected a string of integers, got {type(rle).__name__} {rle!r}")
    tokens = rle.split()
    try:
        values = np.array(tokens, dtype=np.int64)
    except (ValueError, OverflowError):
        bad = next(t for t in tokens if not _is_int(t) or abs(int(t)) > _MAX_VALUE)
        if _is_int(bad):
            raise RLEError(f"value {bad} is too large for a pixel index") from None
        raise RLEError(f"non-integer value {bad!r}") from None
    if values.size % 2:
        raise RLEError(f"odd number of values ({values.size}); expected start/length pairs")
    if values.max() > _MAX_VALUE:
        raise RLEError(f"value {values.max()} is too large for a pixel index")
    starts, lengths = values[0::2], values[1::2]
    ends = starts + lengths - 1  # last pixel, 1-based
    # one cheap combined check; the slower diagnosis only runs for invalid strings
    in_image = n_pixels is None or ends[-1] <= n_pixels
    if not (starts.min() >= 1 and lengths.min() >= 1 and in_image and (starts[1:] > ends[:-1]).all()):
        _raise_run_problem(starts, lengths, ends, n_pixels)
    return starts - 1, lengths


def _raise_run_problem(starts: np.ndarray, lengths: np.ndarray, ends: np.ndarray, n_pixels: int | None):
    """Raise :class:`RLEError` describing the first problem of a list of runs."""
    if (bad := np.flatnonzero(starts < 1)).size:
        raise RLEError(f"run {bad[0] + 1}: start {starts[bad[0]]} is not positive (pixels are numbered from 1)")
    if (bad := np.flatnonzero(lengths < 1)).size:
        raise RLEError(f"run {bad[0] + 1}: length {lengths[bad[0]]} is not positive")
    if (bad := np.flatnonzero(starts[1:] < starts[:-1])).size:
        k = bad[0]
        raise RLEError(f"runs not in ascending order (start {starts[k + 1]} after {starts[k]})")
    if (bad := np.flatnonzero(starts[1:] <= ends[:-1])).size:
        k = bad[0]
        raise RLEError(f"runs overlap (pixels {starts[k]}..{ends[k]} and {starts[k + 1]}..{ends[k + 1]})")
    if n_pixels is not None and (bad := np.flatnonzero(ends > n_pixels)).size:
        k = bad[0]
        raise RLEError(f"run {k + 1}: pixels {starts[k]}..{ends[k]} beyond the image's {n_pixels} pixels")
    raise AssertionError("unreachable: runs reported invalid without a problem")


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


def _expand(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """0-based run starts and lengths → int64 indices of every pixel of the runs (vectorised)."""
    total = int(lengths.sum())
    offsets = np.repeat(np.cumsum(lengths) - lengths - starts, lengths)
    return np.arange(total, dtype=np.int64) - offsets


def decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode one run-length string to a mask.

    Parameters
    ----------
    rle : str
        Kaggle run-length string (empty for an empty mask).
    shape : (H, W)

    Returns
    -------
    mask : bool ndarray of shape (H, W)

    Raises
    ------
    RLEError
        A malformed string (see :func:`parse_rle`).
    """
    height, width = (int(s) for s in shape)
    starts, lengths = parse_rle(rle, height * width)
    flat = np.zeros(height * width, bool)
    flat[_expand(starts, lengths)] = True
    return np.ascontiguousarray(flat.reshape(width, height).T)


def decode_image(rles: Sequence[str], shape: tuple[int, int]) -> np.ndarray:
    """Decode the nuclei of one image into an instance label map.

    Parameters
    ----------
    rles : sequence of str
        One run-length string per nucleus; empty strings (an image without nuclei) are skipped.
    shape : (H, W)

    Returns
    -------
    labels : int32 ndarray of shape (H, W); nucleus ``k`` (1-based, among the non-empty
        strings, in order) has label ``k``.

    Raises
    ------
    RLEError
        A malformed string (see :func:`parse_rle`), or two nuclei sharing pixels.
    """
    height, width = (int(s) for s in shape)
    parsed = [parse_rle(r, height * width) for r in rles if not _is_empty(r)]
    flat = np.zeros(height * width, np.int32)
    if parsed:
        starts = np.concatenate([s for s, _ in parsed])
        lengths = np.concatenate([n for _, n in parsed])
        per_nucleus = np.array([n.sum() for _, n in parsed], np.int64)
        index = _expand(starts, lengths)
        flat[index] = np.repeat(np.arange(1, len(parsed) + 1, dtype=np.int32), per_nucleus)
        if np.count_nonzero(flat) != index.size:
            raise RLEError("nuclei overlap (some pixels are encoded more than once)")
    return np.ascontiguousarray(flat.reshape(width, height).T)


# --------------------------------------------------------------------------- submissions


def validate_submission(
    df: pd.DataFrame, shapes: Mapping[str, tuple[int, int]] | None = None
) -> list[str]:
    """Check a submission table; one message per problem.

    Parameters
    ----------
    df : DataFrame with columns ``ImageId`` and ``EncodedPixels`` (one row per nucleus; one row
        with an empty value for an image without nuclei).
    shapes : mapping ImageId → (H, W), optional
        When given, runs are checked against the image size. Ids missing from ``shapes`` are
        checked without a size.

    Returns
    -------
    problems : list of str
        Empty when the submission is valid. Each message names the image id and the line of
        the CSV file (the header is line 1, the first row line 2): non-integer values, odd
        number of values, non-positive or out-of-range starts/lengths, unsorted or overlapping
        runs, and nuclei of one image that share pixels.
    """
    missing = [c for c in SUBMISSION_COLUMNS if c not in df.columns]
    if missing:
        return [f"missing column(s) {', '.join(missing)} (expected {','.join(SUBMISSION_COLUMNS)})"]
    problems: list[str] = []
    ids = df["ImageId"].to_numpy()
    encoded = df["EncodedPixels"].to_numpy()
    lines = np.arange(len(df)) + 2
    runs_by_image: dict[str, list[tuple[np.ndarray, np.ndarray, int]]] = {}
    for image_id, rle, line in zip(ids, encoded, lines, strict=True):
        if _is_empty(image_id):
            problems.append(f"line {line}: empty ImageId")
            continue
        shape = shapes.get(image_id) if shapes is not None else None
        n_pixels = int(shape[0]) * int(shape[1]) if shape is not None else None
        try:
            starts, lengths = parse_rle(rle, n_pixels)
        except RLEError as exc:
            problems.append(f"image {image_id}, line {line}: {exc}")
            continue
        if starts.size:
            runs_by_image.setdefault(image_id, []).append((starts, lengths, line))
    for image_id, runs in runs_by_image.items():
        problems.extend(f"image {image_id}, {msg}" for msg in _overlaps_between_rows(runs))
    return problems


def _overlaps_between_rows(runs: list[tuple[np.ndarray, np.ndarray, int]]) -> list[str]:
    """Pairs of rows of one image whose runs share pixels (each row valid on its own).

    Sorting all runs by start, a run overlaps an earlier one exactly when it starts before the
    furthest end seen so far; it is reported against the run that reaches furthest.
    """
    starts = np.concatenate([s for s, _, _ in runs])
    ends = starts + np.concatenate([n for _, n, _ in runs])  # exclusive
    rows = np.concatenate([np.full(s.size, line) for s, _, line in runs])
    order = np.argsort(starts, kind="stable")
    starts, ends, rows = starts[order], ends[order], rows[order]
    reach = np.maximum.accumulate(ends)
    holder = np.maximum.accumulate(np.where(ends == reach, np.arange(ends.size), 0))
    hits = np.flatnonzero(starts[1:] < reach[:-1]) + 1
    pairs = sorted({tuple(sorted((int(rows[holder[k - 1]]), int(rows[k])))) for k in hits})
    return [f"lines {a} and {b}: nuclei overlap (they share pixels)" for a, b in pairs]


def submission_frame(rles_by_image: Mapping[str, Sequence[str]]) -> pd.DataFrame:
    """Build a submission table from ``{image id: [rle, ...]}``; images without nuclei get one
    row with an empty ``EncodedPixels``."""
    rows = [
        (image_id, rle)
        for image_id, rles in rles_by_image.items()
        for rle in (list(rles) or [""])
    ]
    return pd.DataFrame(rows, columns=list(SUBMISSION_COLUMNS))


def write_submission(
    df: pd.DataFrame, path: str | Path, shapes: Mapping[str, tuple[int, int]] | None = None
) -> None:
    """Validate a submission table and write it atomically as ``ImageId,EncodedPixels`` CSV.

    Raises
    ------
    NucleiError
        The table is invalid (the message names the file, the first problem and the number of
        problems); nothing is written then.
    """
    problems = validate_submission(df, shapes)
    if problems:
        more = f" (and {len(problems) - 1} more problems)" if len(problems) > 1 else ""
        raise NucleiError(f"{path}: invalid submission, not written: {problems[0]}{more}")
    out = df[list(SUBMISSION_COLUMNS)].copy()
    out["EncodedPixels"] = out["EncodedPixels"].map(lambda r: "" if _is_empty(r) else r)
    write_csv(path, out)
