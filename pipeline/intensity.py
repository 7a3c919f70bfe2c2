"""Intensity normalisation for the network: the one place an image's values become network input.

:func:`normalize_image` maps any image (8/16-bit counts, floats, grey or colour, bright or dark
background) to float32 [0, 1] the same way for training and for segmentation. It is robust to:

- a low dynamic range (dim 12-bit data inside 16-bit, nuclei at grey level 20–60 of 255):
  percentiles, not the type's maximum, set the range;
- a few saturated or very bright objects: on a dark background the upper end is also bounded by
  the typical foreground level (``fg_factor`` × the median foreground intensity above the
  background; foreground: pixels above the median by more than 3 noise deviations and 1 % of
  the range), so a handful of saturated nuclei no longer leave every other nucleus nearly
  black; bright-field images (bright background) get the mirror image of that rule for very
  dark specks.

Measurements never use this: they are made on the image in its own units.

Must not: read files, resize, or know about the network.
"""

from __future__ import annotations

import numpy as np

#: Defaults, also recorded in model directories (``normalization``).
NORMALIZATION = {"low": 1.0, "high": 99.8, "fg_factor": 2.5}
_MAX_SAMPLES = 1_000_000


def intensity_range(image: np.ndarray, low: float = 1.0, high: float = 99.8,
                    fg_factor: float = 2.5) -> tuple[float, float]:
    """The intensities mapped to 0 and 1 by :func:`normalize_image`.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array, any real dtype
    low, high : float
        Percentiles (0–100) of all pixel values: the plain range.
    fg_factor : float
        On a dark background the upper end is at most ``lo + fg_factor · (median foreground − lo)``
        (on a bright background, symmetrically, the lower end at least
        ``hi − fg_factor · (hi − median foreground)``); 0 disables the rule.

    Returns
    -------
    lo, hi : float
        In the image's units; ``hi == lo`` for a constant image.
    """
    values = np.asarray(image, dtype=np.float32)
    grey = values.mean(axis=-1) if values.ndim == 3 else values
    step = max(1, grey.size // _MAX_SAMPLES)  # subsample huge images: percentiles barely move
    flat = values.reshape(-1)[:: max(1, values.size // _MAX_SAMPLES)]
    lo, hi = (float(v) for v in np.percentile(flat, [low, high]))
    if hi - lo < 1e-6 or not fg_factor:
        return lo, hi
    g = grey.reshape(-1)[::step]
    dark_background = np.median(g) <= (lo + hi) / 2
    if not dark_background:  # mirror, so that the background is at the low end
        g = hi + lo - g
    g = np.clip(g, lo, None)
    # g: intensities with the background at the low end. Background level and noise from the
    # lower half of the pixels (background-dominated); foreground: clearly above them.
    background = float(np.median(g))
    lower = g[g <= background]
    noise = 1.4826 * float(np.median(background - lower)) if lower.size else 0.0
    fg = g[g > background + max(3.0 * noise, 0.01 * (hi - lo))]
    if fg.size < 0.001 * g.size:
        return lo, hi
    bound = lo + fg_factor * (float(np.median(fg)) - lo)
    if dark_background:
        return lo, min(hi, max(bound, lo + 1e-6))
    return max(lo, hi + lo - bound), hi


def normalize_image(image: np.ndarray, low: float = 1.0, high: float = 99.8,
                    fg_factor: float = 2.5) -> np.ndarray:
    """Robust intensity normalisation to [0, 1] (see the module docstring).

    Parameters
    ----------
    image : (H, W, 3) array, any real dtype (uint8/uint16 counts, floats)
    low, high, fg_factor : float
        See :func:`intensity_range`.

    Returns
    -------
    normalised : (H, W, 3) float32 in [0, 1]; all zeros for a constant image. A dim 16-bit
        image and an 8-bit image of the same scene give the same result.
    """
    image = np.asarray(image, dtype=np.float32)
    lo, hi = intensity_range(image, low, high, fg_factor)
    if hi - lo < 1e-6:
        return np.zeros_like(image)
    out = (image - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def normalization_kwargs(config: dict | None) -> dict[str, float]:
    """:func:`normalize_image` keywords from a model directory's ``normalization`` section.

    Models written before ``fg_factor`` existed get ``fg_factor = 0`` (the plain percentile
    normalisation they were trained with).
    """
    norm = (config or {}).get("normalization") or {}
    kwargs = {k: float(norm[k]) for k in ("low", "high") if k in norm}
    kwargs["fg_factor"] = float(norm.get("fg_factor", 0.0))
    return kwargs
