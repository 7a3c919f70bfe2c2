"""What is measured in one image besides its nuclei's shape: every channel, positivity, cells, spots.

The one home of these measurements for ``nuclei segment`` (:mod:`pipeline.batch.one_file`, and
block by block :mod:`pipeline.batch.slide`) and ``nuclei measure``:

- :func:`measure_image`: the ``nuclei.csv`` rows of one image (:func:`pipeline.method.features.measure_nuclei`,
  then per channel :func:`~pipeline.method.features.channel_statistics`, the cells
  :func:`~pipeline.method.features.grow_cells` / :func:`~pipeline.method.features.cell_statistics`, the spots
  :func:`pipeline.method.spots.detect_spots`, the positive calls :mod:`pipeline.method.positivity`), its
  ``counts.csv`` fields and flags, its cells and spots, and the overlay's colours;
- :func:`call_positive` (one image's calls from its thresholds) and :func:`batch_positivity`
  (``--positive-scope batch``: one threshold over the batch, set once every image is measured).

Column keys of the channels are :func:`pipeline.files.channels.channel_keys`. Problems with a
channel are one line naming the file: an unknown channel raises :class:`pipeline.errors.NucleiError`
(the image fails); a constant channel, or a threshold on an all-zero one, leaves that channel's
calls (or spots) empty and flags the image.

Must not: read images or labels, write files, or segment.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from pipeline.batch.settings import MeasureOptions
from pipeline.errors import NucleiError
from pipeline.files.channels import channel_keys, describe_channels, find_channel
from pipeline.method import positivity
from pipeline.method.features import (
    cell_statistics,
    channel_statistics,
    grow_cells,
    labelled_pixels,
    measure_nuclei,
)
from pipeline.method.overlay import positive_colours

#: Columns of ``spots/<name>.csv``.
SPOT_FILE_COLUMNS = ("channel", "nucleus", "y", "x", "intensity")


@dataclass
class Channels:
    """An image's channels, for measurement: ``array`` (C, H, W) as stored, their metadata ``names``,
    and the index of the nuclear one (None: no channel is segmented here, ``nuclei measure``)."""

    array: np.ndarray
    names: tuple[str, ...]
    nuclear: int | None = None

    @property
    def keys(self) -> list[str]:
        return channel_keys(self.names)


@dataclass
class Measured:
    """One image measured (:func:`measure_image`)."""

    table: pd.DataFrame  #: its ``nuclei.csv`` rows (without ``image``)
    fields: dict[str, Any] = field(default_factory=dict)  #: its ``counts.csv`` fields
    flags: list[str] = field(default_factory=list)  #: problems, each one line (the counts.csv ``flag``)
    cells: np.ndarray | None = None  #: (H, W) int32 cells, with --cell-expansion
    spots: pd.DataFrame | None = None  #: ``spots/<name>.csv`` rows, with --spots
    #: per channel key of --positive: (background level, noise) for the batch's threshold
    background: dict[str, tuple[float, float]] = field(default_factory=dict)
    #: the constant channels: key -> their one value
    constant: dict[str, float] = field(default_factory=dict)

    def colours(self, n_labels: int) -> np.ndarray | None:
        """The overlay's colour of each label (:func:`pipeline.method.overlay.positive_colours`), None
        without --positive."""
        columns = positive_columns(self.table)
        if not columns or self.table.empty:  # no nucleus (an empty well): nothing to colour
            return None
        calls = self.table[columns].astype("Float64").to_numpy(np.float64, na_value=np.nan)
        return positive_colours(calls, self.table["label"].to_numpy(np.int64), n_labels)


def positive_columns(table: pd.DataFrame) -> list[str]:
    """The ``positive_<key>`` columns of a table, in the order of the --positive options."""
    return [c for c in table.columns if c.startswith("positive_")]


def positive_keys(options: MeasureOptions, keys: list[str], names: tuple[str, ...], source: object = "") -> list[str]:
    """The keys of the --positive channels, in order.

    Raises
    ------
    NucleiError
        A channel the image does not have, or named twice (by its name and its index).
    """
    found = [keys[find_channel(channel, names, source, "--positive")] for channel, _ in options.positive]
    for key in {k for k in found if found.count(k) > 1}:
        given = ", ".join(repr(c) for (c, _), k in zip(options.positive, found, strict=True) if k == key)
        raise NucleiError(f"{source}: --positive names channel {key} twice ({given})")
    return found


def measure_image(labels: np.ndarray, intensity: np.ndarray, channels: Channels | None, options: MeasureOptions,
                  pixel_size: float | None, confidence: np.ndarray | None, diameter: float | None,
                  source: object, call: bool = True) -> Measured:
    """Measure every nucleus of one image.

    Parameters
    ----------
    labels : (H, W) int array
        Nuclei, 0 = background.
    intensity : (H, W) float array
        What ``mean_intensity`` is measured on (:func:`pipeline.method.features.intensity_of` the
        plane, or the nuclear channel).
    channels : Channels, optional
        The image's channels (with --nuclear-channel / --channel-files): each measured.
    options : MeasureOptions
    pixel_size : float, optional
        µm.
    confidence : (labels.max() + 1,) float, optional
        Each label's confidence (None: labels made elsewhere).
    diameter : float, optional
        Nucleus diameter, px, the spots' size is relative to (default: the median
        ``equivalent_diameter_px`` of the image's nuclei).
    source : object
        The file, named by every error and flag.
    call : bool
        Make the positive calls of ``--positive-scope image`` here, and measure the backgrounds they
        need (False: the caller sets the backgrounds and calls later, :func:`call_positive`: a slide
        measured block by block, its backgrounds from its final labels and cells).

    Returns
    -------
    measured : Measured

    Raises
    ------
    NucleiError
        A channel named by --positive or --spots that the file does not have; --cell-expansion in
        µm without a pixel size.
    """
    table = measure_nuclei(labels, intensity, pixel_size, confidence)
    measured = Measured(table)
    if channels is None:
        return measured
    keys = channels.keys
    marked = positive_keys(options, keys, channels.names, source)  # unknown channels: before any work
    spotted = list(dict.fromkeys(  # a channel named twice (by name, key or index) is one --spots
        keys[find_channel(channel, channels.names, source, "--spots")] for channel in options.spots))
    measured.fields["channels"] = describe_channels(channels.names)
    if channels.nuclear is not None:
        measured.fields["nuclear_channel"] = keys[channels.nuclear]
    pixels = labelled_pixels(labels)
    parts = [table, channel_statistics(labels, channels.array, keys, pixels)]
    measured.constant = {key: float(plane.flat[0]) for key, plane in zip(keys, channels.array, strict=True)
                         if plane.size and plane.min() == plane.max()}
    outside = labels == 0
    if options.cell_expansion is not None:
        distance = options.cell_expansion.pixels(pixel_size, source)
        measured.fields["cell_expansion_px"] = round(distance, 3)
        measured.cells = grow_cells(labels, distance)
        outside = measured.cells == 0
        parts.append(cell_statistics(labels, measured.cells, channels.array, keys, parts[1], pixel_size))
    spot_parts, spot_columns = _count_spots(measured, labels, channels, spotted, diameter)
    table = pd.concat(parts, axis=1)
    for key in marked:
        if call:
            set_background(measured, key, positivity.background_level(channels.array[keys.index(key)], outside))
        table[f"positive_{key}"] = pd.array([pd.NA] * len(table), dtype="boolean")
    for column, values in spot_columns.items():
        table[column] = values
    measured.table = table
    if options.spots:
        measured.spots = (pd.concat(spot_parts, ignore_index=True) if spot_parts
                          else pd.DataFrame(columns=list(SPOT_FILE_COLUMNS)))
    measured.fields.update({f"n_spots_{c[6:]}": int(np.nansum(v)) for c, v in spot_columns.items()})
    if call:
        call_positive(measured, options)
    return measured


def _count_spots(measured: Measured, labels: np.ndarray, channels: Channels, spotted: list[str],
                diameter: float | None) -> tuple[list[pd.DataFrame], dict[str, np.ndarray]]:
    """The spots of each channel key in ``spotted`` (``--spots``), in the nuclei of ``labels``
    (:func:`pipeline.method.spots.detect_spots`; ``diameter`` px as in :func:`measure_image`).

    Returns the ``spots/<name>.csv`` rows of each channel, and the column ``spots_<key>`` of
    ``measured.table`` (the nuclei's spot counts, float (N,); NaN for a constant channel, which
    is flagged on ``measured``).
    """
    table, keys, constant = measured.table, channels.keys, measured.constant
    spot_parts, spot_columns = [], {}
    for key in spotted:
        k = keys.index(key)
        if keys[k] in constant:
            measured.flags.append(f"spots_{keys[k]}: channel {keys[k]} is constant ({constant[keys[k]]:g}), no spots counted")
            spot_columns[f"spots_{keys[k]}"] = np.full(len(table), np.nan)
            continue
        size = diameter if diameter else float(np.median(table["equivalent_diameter_px"])) if len(table) else 0.0
        from pipeline.method.spots import detect_spots, spots_per_nucleus

        found = detect_spots(channels.array[k], labels, size) if size > 0 else None
        found = found if found is not None else pd.DataFrame(columns=["nucleus", "y", "x", "intensity"])
        spot_columns[f"spots_{keys[k]}"] = spots_per_nucleus(found, table["label"].to_numpy(np.int64))
        found.insert(0, "channel", keys[k])
        spot_parts.append(found[list(SPOT_FILE_COLUMNS)])
    return spot_parts, spot_columns


def set_background(measured: Measured, key: str, background: tuple[float, float]) -> None:
    """Record channel ``key``'s background (level, noise) (:func:`pipeline.method.positivity.background_level`)
    for its threshold and as the ``counts.csv`` fields ``background_<key>``, ``noise_<key>``."""
    measured.background[key] = background
    measured.fields[f"background_{key}"], measured.fields[f"noise_{key}"] = background


def thresholds_of(measured: Measured, options: MeasureOptions) -> dict[str, positivity.Threshold]:
    """The threshold of each --positive channel of one image: given, or ``auto`` per image
    (NaN with its reason; ``auto`` over the batch: NaN, set later by :func:`batch_positivity`)."""
    found, constant = {}, measured.constant
    keys = [c[len("positive_"):] for c in positive_columns(measured.table)]
    for (_, value), key in zip(options.positive, keys, strict=True):
        if key in constant:
            what = "all zero" if constant[key] == 0 else f"constant ({constant[key]:g})"
            rule = f"a threshold ({value:g})" if value is not None else "auto"
            found[key] = positivity.Threshold(math.nan, f"channel {key} is {what}: {rule} on it means nothing")
        elif value is not None:
            found[key] = positivity.Threshold(float(value))
        elif options.positive_scope == "batch":
            found[key] = positivity.Threshold(math.nan, "batch")
        else:
            means = measured.table[f"mean_{key}"].to_numpy(np.float64)
            level, noise = measured.background[key]
            if not math.isfinite(level):
                found[key] = positivity.Threshold(math.nan, "no background pixel to set it from")
            else:
                area = measured.table["area_px"] if "area_px" in measured.table else pd.Series([], dtype=float)
                floor = positivity.mean_precision(noise, area.to_numpy(np.float64))
                found[key] = positivity.auto_threshold(means, level, floor=floor)
    return found


def call_positive(measured: Measured, options: MeasureOptions,
                  thresholds: dict[str, positivity.Threshold] | None = None) -> None:
    """Fill ``positive_<key>`` and the ``counts.csv`` fields ``threshold_<key>``, ``n_positive_<key>``,
    ``fraction_positive_<key>``, ``separation_<key>`` of one image from its thresholds (default
    :func:`thresholds_of`); a threshold that could not be set leaves them empty and adds a flag, one
    set on weak evidence adds a flag too."""
    thresholds = thresholds_of(measured, options) if thresholds is None else thresholds
    auto = {c[len("positive_"):] for c, (_, value) in zip(positive_columns(measured.table), options.positive,
                                                           strict=False) if value is None}
    for key, threshold in thresholds.items():
        column = f"positive_{key}"
        calls = positivity.call_positive(measured.table[f"mean_{key}"].to_numpy(np.float64), threshold.value)
        measured.table[column] = pd.array(np.where(np.isnan(calls), None, calls > 0), dtype="boolean")
        n = len(calls)
        measured.fields[f"threshold_{key}"] = threshold.value if threshold.ok else None
        measured.fields[f"n_positive_{key}"] = int(np.nansum(calls)) if threshold.ok else None
        measured.fields[f"fraction_positive_{key}"] = (float(np.nansum(calls) / n) if threshold.ok and n else None)
        if key in auto:
            measured.fields[f"separation_{key}"] = (round(threshold.separation, 3) if math.isfinite(threshold.separation)
                                                    else None)
        if not threshold.ok and threshold.reason != "batch":
            measured.flags.append(f"{column}: no threshold ({threshold.reason})"
                                  + ("" if "means nothing" in threshold.reason else f"; give --positive {key}=VALUE"))
        elif threshold.ok and threshold.weak:
            measured.flags.append(f"{column}: weak separation ({threshold.weak}): best threshold set, check it "
                                  f"or give --positive {key}=VALUE")


def problems(measured: Measured, source: object) -> list[str]:
    """The flags that are bad input (a constant channel), as lines naming the file, to warn of."""
    return [f"{source}: {flag}" for flag in measured.flags if "constant" in flag or "all zero" in flag]


# --------------------------------------------------------------------------- --positive-scope batch


def batch_positivity(images: list[tuple[dict[str, Any], pd.DataFrame]], options: MeasureOptions) -> None:
    """One ``auto`` threshold over the batch for each --positive channel (``--positive-scope batch``).

    Every image's means are put in its own unit, ``(mean − b_image) / u_image`` with its background
    level ``b_image`` and its noise ``u_image`` (:func:`pipeline.method.positivity.noise_scale`), so
    that images scaled differently (a gain, a per-image contrast stretch) pool as one; the threshold
    found there is each image's ``b_image + u_image · z*`` in its own units
    (:func:`pipeline.method.positivity.pool_fields`). An image whose background is one value (noise
    0) is put in units of its nuclei's median distance from it, and flagged.

    Parameters
    ----------
    images : list of (counts row, table)
        Each image of the run that was measured: its ``counts.csv`` row (``background_<key>``,
        ``noise_<key>``, updated here) and its ``nuclei.csv`` rows (``positive_<key>`` set here).
    """
    for j, (_, value) in enumerate(options.positive):
        if value is not None:
            continue
        found = []  # (row, table, key) of the images measured for this option
        for row, table in images:
            columns = positive_columns(table)
            key = columns[j][len("positive_"):] if j < len(columns) else None
            if key is not None and f"background_{key}" in row and not _constant(row, key):
                found.append((row, table, key))
        means = [table[f"mean_{key}"].to_numpy(np.float64) for _, table, key in found]
        levels = [_number(row[f"background_{key}"]) for row, _, key in found]
        noises = [_number(row.get(f"noise_{key}")) for row, _, key in found]
        units = [positivity.noise_scale(noise, m, b) for noise, m, b in zip(noises, means, levels, strict=True)]
        floors = [positivity.mean_precision(1.0, table["area_px"].to_numpy(np.float64)) for _, table, _ in found
                  if "area_px" in table]  # in units of each image's noise
        pooled, here = positivity.pool_fields(means, levels, units, float(np.median(floors)) if floors else 0.0)
        for (row, table, key), threshold, noise, unit in zip(found, here, noises, units, strict=True):
            measured = Measured(table, row)
            call_positive(measured, options, {key: positivity.Threshold(
                threshold, f"{pooled.reason} over the batch", pooled.separation, pooled.weak and f"{pooled.weak} over the batch")})
            if not noise > 0 and len(table):
                measured.flags.append(f"noise_{key}: 0 (a background of one value): means pooled in units of {unit:.4g}, "
                                      "the nuclei's median distance from it")
            if measured.flags:
                row["flag"] = "; ".join(f for f in (row.get("flag"), *measured.flags) if f)


def _constant(row: dict[str, Any], key: str) -> bool:
    return f"channel {key} is" in str(row.get("flag") or "")


def _number(value: Any) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return math.nan
    return number
