"""Intensity normalisation for the network: the one place an image's values become network input.

:func:`normalize_image` maps any image (8/16-bit counts, floats, grey or colour, bright or dark
background) to float32 [0, 1] the same way for training and for segmentation:

- percentiles (1st / 99.8th of all pixel values), not the type's maximum, set the range, so a
  low dynamic range (dim 12-bit data inside 16-bit, nuclei at grey level 20–60 of 255) fills
  [0, 1] like an 8-bit image;
- saturated pixels do not set the top: when 0.05–10 % of the pixels (:data:`SATURATED_SHARE`) sit
  at the image's maximum (within 1 % of the range, for noise or compression after clipping) —
  a few saturated nuclei, a pasted-in bright object — the upper percentile is taken over the
  other pixels, so the saturated objects clip at 1 and the dim nuclei beside them keep their
  contrast.

A broader rule was tried and measured first: bounding the top by 2.5× the median "foreground"
level above the background. It rescued dim nuclei but cost 0.40 DSB2018 (0.23 against 0.63 on
30 images of the validation fold grouped by experiment, one mid-training model): beside sparse
nuclei the dimmer cytoplasm became "foreground" and was stretched to the nuclei's brightness.
So only real saturation is treated specially.

Fluorescence in colour becomes grey. The network learnt fluorescence from grey images (stage1_train
has no other), and a Hoechst or DAPI image saved in the blue channel scored 0.61 against 0.73 for
the same images in grey (35 images of grouped fold 0; green 0.72, red 0.71, magenta 0.68). So an
image whose normalised channels differ (colour, as :func:`pipeline.prepare.classify_image` measures
it) on a dark background (:func:`is_colour_fluorescence`) is normalised as one grey image: its
blue channel when the channels hold different images and blue carries signal
(:func:`nuclear_channel`: the nuclear counterstain, DAPI or Hoechst, is blue by convention), else
the mean of its channels. A single coloured channel then gives exactly the grey image, and so does
a tint; one stain with a colour camera's noise in each channel gets the noise averaged; a composite
of blue nuclei and a marker in other channels gives its nuclei, where the blend scored 0.04
(``bench_robustness.py``, ``composite``).
Stained images (colour on a bright background) keep their colour.

Measurements never use this: they are made on the image in its own units.

Must not: read files, resize, or know about the network.
"""

from __future__ import annotations

import numpy as np

#: Defaults, also recorded in model directories (``normalization``).
NORMALIZATION = {"low": 1.0, "high": 99.8, "saturation": True}
#: Shares of all pixels at the image's maximum between which the image counts as saturated (more
#: than that is not a few saturated objects but the image's own upper level, e.g. a binary image).
SATURATED_SHARE = (5e-4, 0.1)
#: A normalised image whose mean |channel − grey| exceeds COLOUR is in colour; one whose mean stays
#: below DARK has a dark background (fluorescence). The image types of
#: :func:`pipeline.prepare.classify_image` use the same two thresholds, so the two rules agree.
#: stage1_train after normalisation: grey images have no colour (< 1e-8); the blue channel of a
#: fluorescence image 0.013–0.34; mean level of fluorescence 0.02–0.26 (blue channel alone at most
#: 0.25), of stained tissue 0.56–0.84.
COLOUR, DARK = 0.01, 0.35
#: :func:`pipeline.prepare.classify_image` measures the colour on the means of COLOUR_BLOCK ×
#: COLOUR_BLOCK tiles, so that a colour camera's pixel noise, independent in each channel, does not
#: make a grey image "stained". Noise of σ = 4/255 made every bright-field image of stage1_train
#: "stained" pixel by pixel (the Segmenter types normalised images, where the contrast stretch
#: amplifies the noise); on 8 × 8 tile means none is, up to σ = 12/255 (4 × 4: up to 8/255). The
#: 664 images keep their types; stained tissue measures 0.013–0.17 on tile means (0.030 and more
#: normalised). :func:`is_colour_fluorescence` keeps the pixels: a dark image whose channels differ
#: only by such noise is then averaged to grey, which is what it is.
COLOUR_BLOCK = 8
_MAX_SAMPLES = 1_000_000


def intensity_range(image: np.ndarray, low: float = 1.0, high: float = 99.8,
                    saturation: bool = True) -> tuple[float, float]:
    """The intensities mapped to 0 and 1 by :func:`normalize_image`.

    Parameters
    ----------
    image : (H, W) or (H, W, C) array, any real dtype
    low, high : float
        Percentiles (0–100) of the pixel values (all channels).
    saturation : bool
        When a share in :data:`SATURATED_SHARE` of the values is at the maximum (within 1 % of the
        range), take the upper percentile over the values below it.

    Returns
    -------
    lo, hi : float
        In the image's units; ``hi == lo`` for a constant image.
    """
    values = np.asarray(image)
    flat = values.reshape(-1)[:: max(1, values.size // _MAX_SAMPLES)].astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(flat, [low, high]))
    if saturation:
        top = float(flat.max())
        below = flat[flat < top - 0.01 * (top - lo)]  # at the maximum, up to noise after clipping
        share = 1.0 - below.size / flat.size
        if SATURATED_SHARE[0] < share < SATURATED_SHARE[1]:
            capped = float(np.percentile(below, high))
            hi = capped if capped > lo else hi
    return lo, hi


def normalize_image(image: np.ndarray, low: float = 1.0, high: float = 99.8,
                    saturation: bool = True) -> np.ndarray:
    """Robust intensity normalisation to [0, 1] (see the module docstring).

    Parameters
    ----------
    image : (H, W, 3) array, any real dtype (uint8/uint16 counts, floats)
    low, high, saturation
        See :func:`intensity_range`.

    Returns
    -------
    normalised : (H, W, 3) float32 in [0, 1]; all zeros for a constant image. A dim 16-bit
        image and an 8-bit image of the same scene give the same result; fluorescence in colour
        (:func:`is_colour_fluorescence`) comes out grey: its blue channel normalised when that
        carries signal (:func:`nuclear_channel`), else its channels' mean.
    """
    image = np.asarray(image)
    lo, hi = intensity_range(image, low, high, saturation)
    if hi - lo < 1e-6:
        return np.zeros(image.shape, np.float32)
    sample = _rescale(subsample(image), lo, hi)
    if is_colour_fluorescence(sample):  # decided on a sample, before the full image
        channel = nuclear_channel(sample)
        grey = (image.mean(axis=-1, keepdims=True, dtype=np.float32) if channel is None
                else image[..., channel : channel + 1].astype(np.float32))
        grey = np.repeat(grey, image.shape[-1], axis=-1)
        return normalize_image(grey, low, high, saturation)  # as the grey fluorescence the network learnt
    return _rescale(image, lo, hi)


#: The channel :func:`nuclear_channel` takes (blue, the nuclear counterstain's by convention), and
#: the range (99.8th − 1st percentile, normalised image) it needs to carry signal.
NUCLEAR_CHANNEL, NUCLEAR_RANGE = 2, 0.1


def nuclear_channel(image: np.ndarray) -> int | None:
    """The channel of a normalised fluorescence image in colour that holds the nuclei: blue
    (:data:`NUCLEAR_CHANNEL`) when the channels hold different images (they differ on
    :data:`COLOUR_BLOCK` tile means, not only pixel by pixel) and blue's own range reaches
    :data:`NUCLEAR_RANGE`; else None, and the channels' mean is used: one stain in several
    channels (their mean averages a colour camera's noise), or nuclei in green or red alone.

    Parameters
    ----------
    image : (H, W, C) float array in [0, 1], C ≥ 3
        Normalised (:func:`normalize_image`'s scale), e.g. a subsample.
    """
    if image.ndim != 3 or image.shape[-1] <= NUCLEAR_CHANNEL or colourfulness(image, COLOUR_BLOCK) <= COLOUR:
        return None
    lo, hi = np.percentile(image[..., NUCLEAR_CHANNEL], [1, 99.8])
    return NUCLEAR_CHANNEL if hi - lo >= NUCLEAR_RANGE else None


def _rescale(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(image − lo) / (hi − lo)`` clipped to [0, 1], float32."""
    out = (np.asarray(image, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)


def is_colour_fluorescence(image: np.ndarray) -> bool:
    """Whether a normalised image is fluorescence in colour: channels that differ (mean
    |channel − grey| above :data:`COLOUR`) on a dark background (mean below :data:`DARK`).

    Parameters
    ----------
    image : float (H, W, C) array in [0, 1], normalised by :func:`normalize_image`
        Grey (C = 1, or equal channels) and stained (bright) images give False.
    """
    if image.ndim != 3 or image.shape[-1] < 2:
        return False
    sample = subsample(image)
    return colourfulness(sample) > COLOUR and float(sample.mean()) < DARK


def colourfulness(image: np.ndarray, block: int = 1) -> float:
    """Mean |channel − grey| of an (H, W, C) image, in its units: 0 for a grey image.

    With ``block`` > 1 it is measured on the means of ``block`` × ``block`` tiles (the image's
    edge rows and columns beyond whole tiles dropped; no averaging for an image smaller than
    a tile): pixel noise that is independent in each channel averages out, while a stain's colour,
    the same over many pixels, stays.
    """
    image = np.asarray(image, dtype=np.float32)
    h, w = image.shape[0] // block * block, image.shape[1] // block * block
    if block > 1 and h and w:
        image = image[:h, :w].reshape(h // block, block, w // block, block, -1).mean(axis=(1, 3))
    return float(np.abs(image - image.mean(axis=-1, keepdims=True)).mean())


def subsample(image: np.ndarray, n_pixels: int = 250_000) -> np.ndarray:
    """Every k-th row and column of an (H, W[, C]) image, k the smallest step that leaves about
    ``n_pixels`` (a view; enough for image-wide statistics)."""
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / n_pixels)))
    return image[::step, ::step]


def normalization_kwargs(config: dict | None) -> dict[str, float | bool]:
    """:func:`normalize_image` keywords from a model directory's ``normalization`` section.

    Models written before the saturation rule get ``saturation = False`` (the plain percentile
    normalisation they were trained with) unless their config says otherwise.
    """
    norm = (config or {}).get("normalization") or {}
    kwargs: dict[str, float | bool] = {k: float(norm[k]) for k in ("low", "high") if k in norm}
    kwargs["saturation"] = bool(norm.get("saturation", False))
    return kwargs
