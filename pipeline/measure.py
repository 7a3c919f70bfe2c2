"""Per-nucleus measurements (``nuclei.csv``) from an instance label image.

Must not: segment, normalise or write files.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.measure import regionprops_table

#: ``skimage.measure.regionprops_table`` property -> ``nuclei.csv`` column.
_RENAME = {
    "label": "label",
    "area": "area_px",
    "centroid-0": "centroid_row",
    "centroid-1": "centroid_col",
    "bbox-0": "bbox_min_row",
    "bbox-1": "bbox_min_col",
    "bbox-2": "bbox_max_row",
    "bbox-3": "bbox_max_col",
    "equivalent_diameter_area": "equivalent_diameter_px",
    "perimeter": "perimeter_px",
    "eccentricity": "eccentricity",
    "solidity": "solidity",
    "intensity_mean": "mean_intensity",
}
_PROPERTIES = (
    "label",
    "area",
    "centroid",
    "bbox",
    "equivalent_diameter_area",
    "perimeter",
    "solidity",
    "intensity_mean",
)
#: Rows of the label image per step of :func:`eccentricities` (bounded memory for huge images).
_BAND_ROWS = 1024
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
        "mean pixel value (channel mean of grey/RGB, alpha dropped) as stored in the file: "
        "counts for integer images (pixel_type in counts.csv), values for float images; not normalised",
    ),
    "integrated_intensity": ("image units × px", "mean_intensity × area_px"),
}


def column_dictionary(pixel_size: float | None = None) -> pd.DataFrame:
    """``columns.csv``: ``column, unit, meaning`` for every ``nuclei.csv`` column."""
    columns = ["image", *measurement_columns(pixel_size)]
    return pd.DataFrame(
        [(c, *COLUMN_DICTIONARY[c]) for c in columns], columns=["column", "unit", "meaning"]
    )


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
    columns = list(_RENAME.values())
    columns.insert(columns.index("mean_intensity") + 1, "integrated_intensity")
    if pixel_size is not None:
        for name, (source, _) in _PHYSICAL.items():
            columns.insert(columns.index(source) + 1, name)
    return columns


def measure_nuclei(
    labels: np.ndarray, intensity: np.ndarray, pixel_size: float | None = None
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

    Returns
    -------
    table : pandas.DataFrame
        One row per nucleus, columns :func:`measurement_columns`: ``label``, ``area_px``,
        centroid and bounding box in pixels (row, col; the box's max is exclusive),
        ``equivalent_diameter_px``, ``perimeter_px``, ``eccentricity``, ``solidity``,
        ``mean_intensity`` and ``integrated_intensity`` (= mean × area in pixels).
    """
    if labels.shape != intensity.shape:
        raise ValueError(f"labels shape {labels.shape} does not match intensity {intensity.shape}")
    table = pd.DataFrame(regionprops_table(labels, intensity_image=intensity, properties=_PROPERTIES)).rename(
        columns=_RENAME
    )
    table["area_px"] = table["area_px"].astype(np.int64)
    table["eccentricity"] = eccentricities(labels)[table["label"].to_numpy()]
    table["integrated_intensity"] = table["mean_intensity"] * table["area_px"]
    if pixel_size is not None:
        for name, (source, power) in _PHYSICAL.items():
            table[name] = table[source] * pixel_size**power
    return table[measurement_columns(pixel_size)]


def eccentricities(labels: np.ndarray) -> np.ndarray:
    """Eccentricity of the ellipse with the same second moments as each label.

    As ``skimage.measure.regionprops``' ``eccentricity`` (``sqrt(1 − λ2 / λ1)``, λ the eigenvalues
    of the covariance of the pixel coordinates; 0 for a circle or a single pixel), for every label
    at once: the moments are summed with ``np.bincount``, band by band of :data:`_BAND_ROWS` rows,
    instead of one nucleus at a time (regionprops spends about 0.6 ms per nucleus on it).

    Parameters
    ----------
    labels : (H, W) int array
        Instance labels, 0 = background.

    Returns
    -------
    eccentricity : (labels.max() + 1,) float64
        Indexed by label value; 0 for values not present (and for the background).
    """
    n = int(labels.max(initial=0)) + 1

    def bands():  # (label values, rows, cols) of the labelled pixels, band by band
        for start in range(0, labels.shape[0], _BAND_ROWS):
            band = labels[start : start + _BAND_ROWS]
            rows, cols = np.nonzero(band)
            yield band[rows, cols], rows.astype(np.float64) + start, cols.astype(np.float64)

    count, sum_r, sum_c = np.zeros(n), np.zeros(n), np.zeros(n)
    for values, rows, cols in bands():
        count += np.bincount(values, minlength=n)
        sum_r += np.bincount(values, rows, minlength=n)
        sum_c += np.bincount(values, cols, minlength=n)
    count = np.maximum(count, 1)
    mean_r, mean_c = sum_r / count, sum_c / count
    var_r, var_c, cov = np.zeros(n), np.zeros(n), np.zeros(n)
    for values, rows, cols in bands():  # about the means: no cancellation far from the origin
        dr, dc = rows - mean_r[values], cols - mean_c[values]
        var_r += np.bincount(values, dr * dr, minlength=n)
        var_c += np.bincount(values, dc * dc, minlength=n)
        cov += np.bincount(values, dr * dc, minlength=n)
    var_r, var_c, cov = var_r / count, var_c / count, cov / count
    half_sum, root = (var_r + var_c) / 2, np.hypot((var_r - var_c) / 2, cov)
    major, minor = half_sum + root, half_sum - root
    ratio = np.divide(minor, major, out=np.ones(n), where=major > 1e-12)
    return np.sqrt(np.clip(1 - ratio, 0, 1))
