"""Per-nucleus measurements (``nuclei.csv``) from an instance label image: shape and intensity
(:func:`measure_nuclei`), every channel of a multi-channel image (:func:`channel_statistics`) and
the cells grown from the nuclei (:func:`grow_cells`, :func:`cell_statistics`; summed piece by piece,
:func:`cell_sums` and :func:`cell_columns`).

The measurements are those of ``skimage.measure.regionprops`` (its definitions of perimeter,
eccentricity and solidity, equal to it to float rounding; ``tests/batch/test_segment.py`` checks), computed
for every nucleus at once: sums over the labelled pixels with ``np.bincount`` and shifted
comparisons of the label image, band by band of :data:`BAND_ROWS` rows so that memory stays
bounded on huge images; only the convex hull of the solidity is a loop over nuclei, each within
its bounding box. A dense field of 1,500 nuclei in 1024 × 1024 measures in a fraction of
regionprops' time (``benchmarks/bench_segment.py``).

Must not: segment, normalise or write files.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

import cv2
import numpy as np
import pandas as pd
from scipy import ndimage as ndi

#: The ``nuclei.csv`` columns of every image (:func:`measurement_columns` adds the others).
_COLUMNS = (
    "label",
    "area_px",
    "centroid_row",
    "centroid_col",
    "bbox_min_row",
    "bbox_min_col",
    "bbox_max_row",
    "bbox_max_col",
    "equivalent_diameter_px",
    "perimeter_px",
    "eccentricity",
    "solidity",
    "mean_intensity",
)
#: Rows of the label image per step of the vectorised measurements (bounded memory).
BAND_ROWS = 1024
#: Columns added when the pixel size is known: column -> (pixel column, power of the size).
_PHYSICAL = {
    "area_um2": ("area_px", 2),
    "equivalent_diameter_um": ("equivalent_diameter_px", 1),
    "perimeter_um": ("perimeter_px", 1),
}


#: ``nuclei.csv`` column -> (unit, meaning); written beside it as ``columns.csv``.
COLUMN_DICTIONARY = {
    "image": ("", "output name of the image (counts.csv: source file, pixel type, output files)"),
    "label": ("", "the nucleus's value in labels/<image>.tif"),
    "area_px": ("px", "area, in pixels"),
    "area_um2": ("µm²", "area (--pixel-size)"),
    "centroid_row": ("px", "centre of mass, row (0 = top)"),
    "centroid_col": ("px", "centre of mass, column (0 = left)"),
    "bbox_min_row": ("px", "bounding box, first row"),
    "bbox_min_col": ("px", "bounding box, first column"),
    "bbox_max_row": ("px", "bounding box, last row + 1"),
    "bbox_max_col": ("px", "bounding box, last column + 1"),
    "equivalent_diameter_px": ("px", "diameter of the disc of the same area"),
    "equivalent_diameter_um": ("µm", "diameter of the disc of the same area (--pixel-size)"),
    "perimeter_px": ("px", "perimeter"),
    "perimeter_um": ("µm", "perimeter (--pixel-size)"),
    "eccentricity": ("", "of the ellipse with the same second moments; 0 = circle"),
    "solidity": ("", "area / convex hull area"),
    "mean_intensity": (
        "image units",
        "mean pixel value (channel mean of grey/RGB, alpha dropped; the --channel alone when given) as stored in the file: "
        "counts for integer images (pixel_type in counts.csv), values for float images; not normalised",
    ),
    "integrated_intensity": ("image units × px", "mean_intensity × area_px"),
    "confidence": (
        "", "P(the nucleus is right: it matches a true nucleus), 0-1, from the network's probabilities in and "
        "around it (empty for nuclei measure: labels made elsewhere have no probabilities)",
    ),
    "cell_area": ("px", "area of the cell grown from the nucleus (--cell-expansion), nucleus included"),
    "cell_area_um2": ("µm²", "cell area (pixel size known)"),
    # time-lapses and z-stacks (docs/stacks.md)
    "frame": ("", "frame of a time-lapse, from 0 (one row per nucleus per frame)"),
    "time_s": ("s", "time of the frame (frame × the file's frame interval)"),
    "track_id": ("", "the nucleus's track (--track; tracks/<image>.csv); its label in every frame"),
    "volume_voxels": ("voxels", "volume of a 3D nucleus of a z-stack"),
    "volume_um3": ("µm³", "volume (voxel size known)"),
    "centroid_z": ("planes", "centre of mass, plane (0 = first)"),
    "z_min": ("planes", "first plane of the nucleus"),
    "z_max": ("planes", "last plane of the nucleus"),
    "z_extent": ("planes", "planes the nucleus spans (z_max - z_min + 1)"),
}
#: Per-channel ``nuclei.csv`` columns: prefix -> (unit, meaning); ``<prefix><key>``, key = :func:`pipeline.files.channels.channel_keys`.
CHANNEL_COLUMNS = {
    "mean_": ("image units", "mean pixel value of channel {key} in the nucleus, as stored in the file (not normalised)"),
    "median_": ("image units", "median pixel value of channel {key} in the nucleus"),
    "std_": ("image units", "standard deviation of the pixel values of channel {key} in the nucleus (population, ddof 0)"),
    "integrated_": ("image units × px", "sum of the pixel values of channel {key} in the nucleus (mean_{key} × area_px)"),
    "cyto_mean_": ("image units", "mean of channel {key} in the cytoplasm: the cell (--cell-expansion) minus its "
                   "nucleus; empty when the cell has no pixel beyond its nucleus"),
    "nuc_cyto_ratio_": ("", "mean_{key} / cyto_mean_{key} (no background subtracted); empty where cyto_mean_{key} <= 0"),
    "positive_": ("", "True when mean_{key} > threshold_{key} of counts.csv (--positive); empty when no threshold "
                  "could be set (flag in counts.csv)"),
    "spots_": ("", "spots (foci) of channel {key} in the nucleus (--spots; each in spots/<image>.csv)"),
}


def column_dictionary(pixel_size: float | None = None, extra: list[str] | tuple[str, ...] = ()) -> pd.DataFrame:
    """``columns.csv``: ``column, unit, meaning`` for every ``nuclei.csv`` column (``extra``: the
    per-channel and cell columns of :func:`describe_column` after the columns of every image)."""
    columns = ["image", *measurement_columns(pixel_size), *extra]
    return pd.DataFrame([(c, *describe_column(c)) for c in columns], columns=["column", "unit", "meaning"])


def describe_column(column: str) -> tuple[str, str]:
    """(unit, meaning) of a ``nuclei.csv`` column: :data:`COLUMN_DICTIONARY`, else a per-channel
    column of :data:`CHANNEL_COLUMNS`; ('', '') for a column unknown here."""
    if column in COLUMN_DICTIONARY:
        return COLUMN_DICTIONARY[column]
    for prefix in sorted(CHANNEL_COLUMNS, key=len, reverse=True):  # cyto_mean_ before mean_
        if column.startswith(prefix):
            unit, meaning = CHANNEL_COLUMNS[prefix]
            key = column[len(prefix):]
            renamed = re.fullmatch(r"(.+)__c(\d+)", key)  # pipeline.files.channels.channel_keys' renaming
            if renamed:
                meaning += (f" (channel {renamed[2]} of the file, named '{renamed[1]}': renamed, as "
                            f"{prefix}{renamed[1]} would be a column of every image or of another channel)")
            return unit, meaning.format(key=key)
    return "", ""


def intensity_of(image: np.ndarray) -> np.ndarray:
    """The grey level measured: the mean of the colour channels, in the image's own units.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array, C = 1..4
        As stored in the file (any pixel type); grey + alpha and RGBA lose their alpha.

    Returns
    -------
    grey : (H, W) float32 array (float64 for 32/64-bit integer or float64 images)
        Unscaled: a uint16 image gives counts in 0..65535, a float image its stored values.
    """
    if image.ndim == 3:
        image = image[..., :3] if image.shape[-1] >= 3 else image[..., :1]
    else:
        image = image[..., None]
    wide = image.dtype.itemsize > 2 and image.dtype != np.float32
    return image.mean(axis=-1, dtype=np.float64 if wide else np.float32)


def measurement_columns(pixel_size: float | None = None) -> list[str]:
    """Column names of :func:`measure_nuclei` (without the leading ``image`` column)."""
    columns = [*_COLUMNS, "integrated_intensity", "confidence"]
    if pixel_size is not None:
        for name, (source, _) in _PHYSICAL.items():
            columns.insert(columns.index(source) + 1, name)
    return columns


def measure_nuclei(
    labels: np.ndarray, intensity: np.ndarray, pixel_size: float | None = None,
    confidence: np.ndarray | None = None,
) -> pd.DataFrame:
    """Measure every nucleus of a label image.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    intensity : (H, W) float array
        The image the intensities are measured on (grey, in the units of the caller; the
        ``segment`` command passes :func:`intensity_of` the image as stored in the file).
    pixel_size : float, optional
        Side of one pixel in µm. When given, ``area_um2`` (= ``area_px * pixel_size**2``),
        ``equivalent_diameter_um`` and ``perimeter_um`` are added.
    confidence : (labels.max() + 1,) float array, optional
        Each label value's confidence (:attr:`pipeline.model.segmenter.Segmentation.nucleus_confidence`);
        the ``confidence`` column is empty (NaN) without it.

    Returns
    -------
    table : pandas.DataFrame
        One row per nucleus, columns :func:`measurement_columns`: ``label``, ``area_px``,
        centroid and bounding box in pixels (row, col; the box's max is exclusive),
        ``equivalent_diameter_px``, ``perimeter_px``, ``eccentricity``, ``solidity``,
        ``mean_intensity``, ``integrated_intensity`` (= mean × area in pixels) and ``confidence``.
    """
    if labels.shape != intensity.shape:
        raise ValueError(f"labels shape {labels.shape} does not match intensity {intensity.shape}")
    labels = np.asarray(labels)
    n = int(labels.max(initial=0)) + 1
    moments = _Moments(labels, intensity)
    boxes = ndi.find_objects(labels) if n > 1 else []
    present = np.flatnonzero(moments.count[1:]) + 1
    count = moments.count[present]
    box = np.array([[b.start for b in boxes[v - 1]] + [b.stop for b in boxes[v - 1]] for v in present],
                   dtype=np.int64).reshape(-1, 4)
    table = pd.DataFrame({
        "label": present.astype(np.int64),
        "area_px": count.astype(np.int64),
        "centroid_row": moments.mean_r[present],
        "centroid_col": moments.mean_c[present],
        "bbox_min_row": box[:, 0],
        "bbox_min_col": box[:, 1],
        "bbox_max_row": box[:, 2],
        "bbox_max_col": box[:, 3],
        "equivalent_diameter_px": np.sqrt(4 * count / np.pi),
        "perimeter_px": perimeters(labels)[present],
        "eccentricity": moments.eccentricity()[present],
        "solidity": solidity(labels, boxes)[present],
        "mean_intensity": moments.intensity_sum[present] / count,
    })  # fmt: skip
    table["integrated_intensity"] = table["mean_intensity"] * table["area_px"]
    table["confidence"] = np.nan if confidence is None else np.asarray(confidence, np.float64)[present]
    if pixel_size is not None:
        for name, (source, power) in _PHYSICAL.items():
            table[name] = table[source] * pixel_size**power
    return table[measurement_columns(pixel_size)]


def labelled_pixels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The labelled pixels of a label image, grouped by label.

    Returns
    -------
    index : (M,) int64
        Flat indices of the labelled pixels, sorted by label (and by position within a label).
    values : (M,) int64
        Their labels, sorted.
    present : (N,) int64
        The label values present, ascending (the rows of :func:`measure_nuclei`).
    """
    flat = np.asarray(labels).ravel()
    index = np.flatnonzero(flat)
    values = flat[index].astype(np.int64)
    order = np.argsort(values, kind="stable")
    index, values = index[order], values[order]
    return index, values, np.unique(values)


def channel_statistics(labels: np.ndarray, channels: np.ndarray, keys: list[str] | tuple[str, ...],
                       pixels: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None) -> pd.DataFrame:
    """Mean, median, standard deviation and sum of every channel in every nucleus.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    channels : (C, H, W) array
        The image's channels as stored in the file (any pixel type; not normalised).
    keys : sequence of C str
        Column key of each channel (:func:`pipeline.files.channels.channel_keys`).
    pixels : optional
        :func:`labelled_pixels` of ``labels``, when the caller has it.

    Returns
    -------
    table : pandas.DataFrame
        One row per label value present, ascending (the rows of :func:`measure_nuclei`), and for
        each key ``mean_<key>``, ``median_<key>``, ``std_<key>`` (population, ddof 0) and
        ``integrated_<key>`` (the sum), float64, in the file's units: those of
        ``skimage.measure.regionprops``' ``intensity_mean``, ``np.median``, ``intensity_std`` and
        ``intensity_mean × area``. One ``np.bincount`` per sum; the median by one sort of each
        channel's labelled pixels by (label, value) (:func:`_ranked`).
    """
    index, values, present = labelled_pixels(labels) if pixels is None else pixels
    if channels.shape[1:] != labels.shape or len(keys) != channels.shape[0]:
        raise ValueError(f"channels {channels.shape} and keys {len(keys)} do not match labels {labels.shape}")
    n = int(present[-1]) + 1 if present.size else 1
    count = np.bincount(values, minlength=n)[present].astype(np.float64)
    starts = (np.cumsum(count) - count).astype(np.int64)
    first, last = starts + (count.astype(np.int64) - 1) // 2, starts + count.astype(np.int64) // 2
    columns: dict[str, np.ndarray] = {}
    for key, channel in zip(keys, channels, strict=True):
        v = channel.ravel()[index].astype(np.float64)
        total = np.bincount(values, v, minlength=n)
        mean = total / np.maximum(np.bincount(values, minlength=n), 1)
        deviation = v - mean[values]
        variance = np.bincount(values, deviation * deviation, minlength=n)[present] / np.maximum(count, 1)
        ranked = _ranked(channel.ravel()[index], values, v)
        columns[f"mean_{key}"] = mean[present]
        columns[f"median_{key}"] = (ranked[first] + ranked[last]) / 2
        columns[f"std_{key}"] = np.sqrt(variance)
        columns[f"integrated_{key}"] = total[present]
    return pd.DataFrame(columns, index=pd.RangeIndex(present.size))


def _ranked(raw: np.ndarray, values: np.ndarray, v: np.ndarray) -> np.ndarray:
    """``v`` (float64 of ``raw``) sorted by (label ``values``, value): integer pixels by one sort of
    ``label << 32 | value`` (about 2.5× faster than a lexsort), others by a lexsort."""
    if raw.dtype.kind in "ui" and raw.dtype.itemsize <= 4 and raw.size:
        low = int(raw.min())
        if int(raw.max()) - low < 2**32:
            key = (values << 32) | (raw.astype(np.int64) - low)
            key.sort()
            return (key & 0xFFFFFFFF).astype(np.float64) + low
    return v[np.lexsort((v, values))]


def grow_cells(labels: np.ndarray, distance: float) -> np.ndarray:
    """Cells grown from nuclei: each nucleus expanded by at most ``distance`` px without overlapping
    (``skimage.segmentation.expand_labels``: a pixel goes to the nearest nucleus within ``distance``).

    Parameters
    ----------
    labels : (H, W) int array
        Nuclei, 0 = background.
    distance : float
        px (Euclidean).

    Returns
    -------
    cells : (H, W) int32
        Each cell has its nucleus's label; the nucleus's pixels are its own.
    """
    from skimage.segmentation import expand_labels

    return expand_labels(np.asarray(labels, np.int32), distance=float(distance)).astype(np.int32, copy=False)


def cell_statistics(labels: np.ndarray, cells: np.ndarray, channels: np.ndarray, keys: list[str] | tuple[str, ...],
                    means: pd.DataFrame, pixel_size: float | None = None) -> pd.DataFrame:
    """The cell of every nucleus: its area, and each channel's cytoplasmic mean and nuclear/cytoplasmic ratio.

    Parameters
    ----------
    labels, cells : (H, W) int arrays
        Nuclei and the cells grown from them (:func:`grow_cells`).
    channels : (C, H, W) array
        As stored in the file.
    keys : sequence of C str
    means : pandas.DataFrame
        :func:`channel_statistics` of ``labels`` (its ``mean_<key>`` columns).
    pixel_size : float, optional
        µm; adds ``cell_area_um2``.

    Returns
    -------
    table : pandas.DataFrame
        Rows as :func:`channel_statistics`: ``cell_area`` (px, nucleus included), ``cell_area_um2``
        (with a pixel size), and per key ``cyto_mean_<key>`` (mean over the cell's pixels outside
        its nucleus; NaN when there are none) and ``nuc_cyto_ratio_<key>`` (``mean_<key> /
        cyto_mean_<key>``, NaN where the cytoplasmic mean is not positive). In the file's units.
    """
    present = np.unique(labels[labels > 0]).astype(np.int64)
    n = int(max(present[-1] if present.size else 0, cells.max(initial=0))) + 1
    return cell_columns(cell_sums(labels, cells, channels, n)[:, present], means, keys, pixel_size)


def cell_sums(labels: np.ndarray, cells: np.ndarray, channels: np.ndarray, n: int) -> np.ndarray:
    """The sums :func:`cell_columns` needs, per label value: summed over pieces of an image (a slide's
    tiles, each pixel in one piece) they give those of the whole image.

    Parameters
    ----------
    labels, cells : (H, W) int arrays
        Nuclei and their cells (:func:`grow_cells`), values below ``n``.
    channels : (C, H, W) array
        As stored in the file.
    n : int
        Label values counted: 0 .. n - 1.

    Returns
    -------
    sums : (2 + C, n) float64
        Row 0 the cell's pixels (nucleus included), row 1 its pixels outside its nucleus (the
        cytoplasm), rows 2.. each channel's sum over the cytoplasm; column ``v`` = label ``v``.
    """
    cell_flat = cells.ravel()
    ring = np.flatnonzero((cell_flat > 0) & (labels.ravel() == 0))
    owner = cell_flat[ring].astype(np.int64)
    sums = np.empty((2 + len(channels), n))
    sums[0] = np.bincount(cell_flat, minlength=n)[:n]
    sums[1] = np.bincount(owner, minlength=n)[:n]
    for k, channel in enumerate(channels):
        sums[2 + k] = np.bincount(owner, channel.ravel()[ring].astype(np.float64), minlength=n)[:n]
    return sums


def cell_columns(sums: np.ndarray, means: pd.DataFrame, keys: list[str] | tuple[str, ...],
                 pixel_size: float | None = None) -> pd.DataFrame:
    """The cell columns of :func:`cell_statistics` from the nuclei's :func:`cell_sums`.

    Parameters
    ----------
    sums : (2 + C, N) float64
        :func:`cell_sums` of the N nuclei of ``means``' rows, in their order.
    means : pandas.DataFrame
        N rows with ``mean_<key>`` of each key.
    keys : sequence of C str
    pixel_size : float, optional
        µm; adds ``cell_area_um2``.

    Returns
    -------
    table : pandas.DataFrame
        N rows (a RangeIndex): ``cell_area``, ``cell_area_um2``, ``cyto_mean_<key>``, ``nuc_cyto_ratio_<key>``.
    """
    area, ring_count = sums[0], sums[1]
    size = area.size
    table: dict[str, np.ndarray] = {"cell_area": area.astype(np.int64)}
    if pixel_size is not None:
        table["cell_area_um2"] = area * pixel_size**2
    for k, key in enumerate(keys):
        cyto = np.divide(sums[2 + k], ring_count, out=np.full(size, np.nan), where=ring_count > 0)
        mean = means[f"mean_{key}"].to_numpy(np.float64)
        table[f"cyto_mean_{key}"] = cyto
        table[f"nuc_cyto_ratio_{key}"] = np.divide(mean, cyto, out=np.full(size, np.nan),
                                                   where=np.nan_to_num(cyto) > 0)
    return pd.DataFrame(table, index=pd.RangeIndex(size))


def _bands(labels: np.ndarray) -> Iterator[tuple[slice, np.ndarray, np.ndarray, np.ndarray]]:
    """Per band of :data:`BAND_ROWS` rows: its rows (a slice of the image), and the label values,
    rows (within the band) and columns of its labelled pixels."""
    for start in range(0, labels.shape[0], BAND_ROWS):
        band = slice(start, start + BAND_ROWS)
        rows, cols = np.nonzero(labels[band])
        yield band, labels[band][rows, cols], rows, cols


class _Moments:
    """Pixel count, centroid, coordinate covariance and intensity sum of every label value
    (arrays indexed by value; the covariance summed about the centroid: no cancellation)."""

    def __init__(self, labels: np.ndarray, intensity: np.ndarray):
        n = int(labels.max(initial=0)) + 1
        self.count, sum_r, sum_c, self.intensity_sum = np.zeros((4, n))
        for band, values, rows, cols in _bands(labels):
            self.count += np.bincount(values, minlength=n)
            sum_r += np.bincount(values, rows + np.float64(band.start), minlength=n)
            sum_c += np.bincount(values, cols.astype(np.float64), minlength=n)
            self.intensity_sum += np.bincount(values, intensity[band][rows, cols], minlength=n)
        count = np.maximum(self.count, 1)
        self.mean_r, self.mean_c = sum_r / count, sum_c / count
        self.var_r, self.var_c, self.cov = np.zeros((3, n))
        for band, values, rows, cols in _bands(labels):
            dr = rows + np.float64(band.start) - self.mean_r[values]
            dc = cols - self.mean_c[values]
            self.var_r += np.bincount(values, dr * dr, minlength=n)
            self.var_c += np.bincount(values, dc * dc, minlength=n)
            self.cov += np.bincount(values, dr * dc, minlength=n)
        self.var_r /= count
        self.var_c /= count
        self.cov /= count

    def eccentricity(self) -> np.ndarray:
        """``sqrt(1 − λ2 / λ1)``, λ1 ≥ λ2 the eigenvalues of the covariance; 0 where λ1 = 0."""
        half_sum = (self.var_r + self.var_c) / 2
        root = np.hypot((self.var_r - self.var_c) / 2, self.cov)
        major, minor = half_sum + root, half_sum - root
        ratio = np.divide(minor, major, out=np.ones_like(major), where=major > 1e-12)
        return np.sqrt(np.clip(1 - ratio, 0, 1))


#: Weight of each code of :func:`perimeters` (skimage's ``perimeter``, after Benkrid & Crookes):
#: 1 for a straight run of border pixels, √2 for a diagonal one, (1 + √2) / 2 for a corner.
_PERIMETER_WEIGHTS = np.zeros(50)
_PERIMETER_WEIGHTS[[5, 7, 15, 17, 25, 27]] = 1
_PERIMETER_WEIGHTS[[21, 33]] = np.sqrt(2)
_PERIMETER_WEIGHTS[[13, 23]] = (1 + np.sqrt(2)) / 2
_CROSS = ((-1, 0), (1, 0), (0, -1), (0, 1))
_DIAGONAL = ((-1, -1), (-1, 1), (1, -1), (1, 1))


def perimeters(labels: np.ndarray) -> np.ndarray:
    """Perimeter of every label, as ``skimage.measure.regionprops``' ``perimeter`` (4-connected).

    A nucleus's border pixels are those with a 4-neighbour outside it (another nucleus, the
    background or beyond the image edge); each border pixel is coded by which of its 8 neighbours
    are border pixels of the same nucleus (1 + 2 per side neighbour + 10 per corner neighbour)
    and the codes' weights (:data:`_PERIMETER_WEIGHTS`) are summed per nucleus. Band by band of
    :data:`BAND_ROWS` rows with two rows of context.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.

    Returns
    -------
    perimeter : (labels.max() + 1,) float64
        In pixels, indexed by label value; 0 for values not present.
    """
    n = int(labels.max(initial=0)) + 1
    total = np.zeros(n)
    height = labels.shape[0]
    for start in range(0, height, BAND_ROWS):
        stop = min(start + BAND_ROWS, height)
        lo, hi = max(start - 2, 0), min(stop + 2, height)
        padded = np.pad(labels[lo:hi], ((2 - (start - lo), 2 - (hi - stop)), (1, 1)))  # 0 beyond the image
        centre = padded[1:-1, 1:-1]  # the band and one row of context on each side
        border = (centre > 0) & (
            (padded[:-2, 1:-1] != centre) | (padded[2:, 1:-1] != centre)
            | (padded[1:-1, :-2] != centre) | (padded[1:-1, 2:] != centre)
        )  # fmt: skip
        border = np.pad(border, ((0, 0), (1, 1)))
        around = padded[1:-1]
        rows, cols = np.nonzero(border[1:-1, 1:-1])  # the band's border pixels: the work is theirs
        rows, cols = rows + 1, cols + 1
        value = around[rows, cols]
        code = np.ones(rows.size, np.int64)
        for weight, offsets in ((2, _CROSS), (10, _DIAGONAL)):
            for dy, dx in offsets:
                code += weight * (border[rows + dy, cols + dx] & (around[rows + dy, cols + dx] == value))
        total += np.bincount(value, _PERIMETER_WEIGHTS[code], minlength=n)
    return total


def solidity(labels: np.ndarray, boxes: list | None = None) -> np.ndarray:
    """Each nucleus's solidity: its area over its convex hull's (:func:`convex_area`), as
    ``skimage.measure.regionprops`` defines it.

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.
    boxes : list of slice pairs, optional
        ``scipy.ndimage.find_objects(labels)``, when the caller has it.

    Returns
    -------
    solidity : (labels.max() + 1,) float64
        Indexed by label value, in (0, 1]; NaN for 0 and for values not present.
    """
    labels = np.asarray(labels)
    n = int(labels.max(initial=0)) + 1
    out = np.full(n, np.nan)
    boxes = ndi.find_objects(labels) if boxes is None else boxes
    area = np.bincount(labels.ravel(), minlength=n)
    for value, box in enumerate(boxes, start=1):
        if box is not None and area[value]:
            out[value] = area[value] / convex_area(labels[box] == value)
    return out


#: Midpoints of a pixel's four edges, relative to its centre (skimage's ``convex_hull_image``).
_EDGE_MIDPOINTS = np.array([[-0.5, 0], [0.5, 0], [0, -0.5], [0, 0.5]], np.float32)


def convex_area(mask: np.ndarray) -> int:
    """Pixels of the convex hull of a binary image, as ``skimage.morphology.convex_hull_image``
    counts them: the pixel centres inside or on the convex hull of the midpoints of the object's
    pixel edges (the solidity's denominator).

    Parameters
    ----------
    mask : (h, w) bool array
        One object (its bounding box), at least one pixel set.

    Returns
    -------
    area : int
        In pixels; equal to ``mask.sum()`` for a digitally convex object.
    """
    rows = np.flatnonzero(mask.any(axis=1))
    inside = mask[rows]
    first = inside.argmax(axis=1)
    last = mask.shape[1] - 1 - inside[:, ::-1].argmax(axis=1)
    ends = np.empty((2 * rows.size, 2), np.float32)  # (col, row): the hull of each row's two ends
    ends[: rows.size, 0], ends[rows.size :, 0] = first, last
    ends[:, 1] = np.concatenate([rows, rows])
    points = (ends[:, None, :] + _EDGE_MIDPOINTS).reshape(-1, 2)
    hull = cv2.convexHull(points).reshape(-1, 2).astype(np.float64)
    x1, y1 = hull.T
    x2, y2 = np.concatenate([hull[1:], hull[:1]]).T
    y = np.arange(rows[0], rows[-1] + 1, dtype=np.float64)[:, None]  # every row of pixel centres
    crosses = (np.minimum(y1, y2) <= y) & (y <= np.maximum(y1, y2))
    flat = y1 == y2
    with np.errstate(divide="ignore", invalid="ignore"):
        x = np.where(flat, x1, x1 + (y - y1) * (x2 - x1) / (y2 - y1))
    left = np.minimum(np.where(crosses, x, np.inf).min(axis=1), np.where(crosses & flat, x2, np.inf).min(axis=1))
    right = np.maximum(np.where(crosses, x, -np.inf).max(axis=1), np.where(crosses & flat, x2, -np.inf).max(axis=1))
    tolerance = 1e-9  # centres on the hull count (its vertices are on a half-pixel grid)
    return int(np.maximum(np.floor(right + tolerance) - np.ceil(left - tolerance) + 1, 0).sum())
