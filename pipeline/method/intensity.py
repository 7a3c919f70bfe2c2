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
  contrast;
- nor do objects far brighter than the nuclei (:func:`bright_objects`): on a dark background, the
  objects whose mean is over :data:`BRIGHT_RATIO` times the typical object's (saturated or not:
  debris, dust, apoptotic fragments, 5–50 × the nuclei) are left out of the upper percentile too,
  and clip at 1. Part of the saturation rule (``saturation``), and off with it.

Fluorescence in colour becomes grey: the network learnt fluorescence from grey images. An image
whose normalised channels differ (colour, as :func:`pipeline.method.image_types.classify_image`
measures it) on a dark background, or with a channel dark where the image is brightest
(:func:`pipeline.method.colour.is_colour_fluorescence`), is normalised as one grey image: its blue channel when the
channels hold different images and blue carries signal (:func:`pipeline.method.colour.nuclear_channel`: the nuclear
counterstain, DAPI or Hoechst, is blue by convention), else the mean of its channels. A bright-field
image of an unstained sample through a colour camera whose white balance is off is grey too: its
colours are one grey scene times the channels' gains (:func:`pipeline.method.colour.is_tinted_grey`). Stained images
(:func:`pipeline.method.colour.is_stained`: colour on a bright background, lit through the sample in every channel,
:func:`pipeline.method.colour.is_transmitted`) keep their colour, and their range is taken over the tissue: empty glass
beside it is left out (:func:`tissue_pixels`) and a round field of view's black surround is
filled with the tissue's colour (:func:`pipeline.method.field_of_view.outside_field`), since the
training crops of tissue fill the field.

Why each rule, and what the alternatives scored: docs/decisions.md, "Intensities and image types"
("Saturated pixels left out of the top percentile", "Fluorescence in colour is normalised grey",
"Grey scenes through a tinted camera are bright-field", "Tissue beside empty glass").

Measurements never use this: they are made on the image in its own units.

Must not: read files, resize, know about the network, or declare the defaults a model folder records
(:data:`pipeline.config.model_folder.NORMALIZATION`, whose values :func:`normalize_image` takes).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.config.model_folder import NORMALIZATION
from pipeline.method.colour import (
    COLOUR,
    COLOUR_BLOCK,
    MAX_SAMPLES,
    colourfulness,
    is_colour_fluorescence,
    is_stained,
    is_tinted_grey,
    nuclear_channel,
    rescaled,
    subsample,
    tile_pixels,
)
from pipeline.method.field_of_view import outside_field
from pipeline.method.image_types import has_bright_background

#: The defaults of :func:`normalize_image` (``low``, ``high``, ``saturation``), those of new models: declared
#: with a model folder's schema (:class:`pipeline.config.model_folder.NormalizationConfig`).
_LOW, _HIGH, _SATURATION = NORMALIZATION["low"], NORMALIZATION["high"], NORMALIZATION["saturation"]
#: Shares of all pixels at the image's maximum between which the image counts as saturated (more
#: than that is not a few saturated objects but the image's own upper level, e.g. a binary image).
SATURATED_SHARE = (5e-4, 0.1)


#: :func:`bright_objects`: an object is far brighter than the nuclei when its mean excess over the
#: background is over BRIGHT_RATIO times that of the typical object (the median over object pixels
#: of their object's mean). A priori, not fitted: a nucleus doubles its DNA before dividing and
#: condenses it when it does (mitotic nuclei are 2–3 × as bright), so 4 × is beyond any nucleus of
#: the same stain; debris, dust and apoptotic fragments are 5–50 ×.
BRIGHT_RATIO = 4.0
#: The typical object's level: this percentile over object pixels of their object's mean excess
#: (the median: bright objects on under half of the object pixels do not set it, :data:`RARE`).
TYPICAL = 50
#: :func:`bright_objects`' first objects: over this many times the noise above the background.
DETECT = 3.0
#: Objects smaller than this (px) are noise to :func:`bright_objects`' typical level.
MIN_OBJECT = 9
#: Bright objects are rare: on under this share of the object pixels. More are nuclei of varied
#: brightness (a GFP-tagged line: 15 × between the dimmest and brightest nuclei of ``fluo_ctc``'s
#: GOWT1 frames), not debris.
RARE = 0.5


def bright_objects(grey: np.ndarray, lo: float) -> np.ndarray | None:
    """The objects far brighter than an image's nuclei (module docstring), which
    :func:`normalize_image` keeps from setting the top of the range.

    Objects are the 8-connected pixels over :data:`DETECT` times the noise above the background
    (the darkest tenth of the pixels; the noise their spread up to the median), then over half the
    typical object's level (:func:`_typical`), so that dim halos join no bright object to the
    nuclei; those whose mean is over :data:`BRIGHT_RATIO` times the typical object's are far
    brighter, when they are rare (:data:`RARE`).

    Parameters
    ----------
    grey : (H, W) real array, a dark-background (fluorescence) image's grey level
    lo : float, the image's black level (its low percentile), in its units

    Returns
    -------
    mask : (H, W) bool, those objects grown by 2 px, or None when there are none, or they are not
        rare.
    """
    import cv2

    excess = np.asarray(grey, np.float32) - np.float32(lo)
    # the background: the darkest tenth of the pixels (dense tissue has its median inside the
    # nuclei), its noise their spread up to the median
    background, middle = (float(v) for v in np.percentile(excess, [10, 50]))
    lower = excess[excess <= middle]
    noise = 1.4826 * float(np.median(np.abs(lower - background)))
    if noise == 0:  # most pixels at one level (8-bit, black clipped): the spread below the top tenth
        noise = float(np.std(excess[excess <= np.percentile(excess, 90)]))
    if float(excess.max()) <= background:
        return None
    objects = excess - background > DETECT * max(noise, 1e-6)
    if not objects.any():
        return None
    # objects at half the typical level, so that dim halos join no bright object to the nuclei
    level, components = _object_levels(excess, objects)
    objects = excess > 0.5 * _typical(level, components)
    level, components = _object_levels(excess, objects)
    bright = level > BRIGHT_RATIO * max(_typical(level, components), 1e-6)
    bright[0] = False
    mask = bright[components]
    if not mask.any() or mask.sum() > RARE * objects.sum():  # many: the nuclei vary (GFP), no debris
        return None
    return cv2.dilate(mask.astype(np.uint8), np.ones((5, 5), np.uint8)).astype(bool)


def _below_bright_objects(image: np.ndarray, lo: float, hi: float, high: float) -> float:
    """The top of a fluorescence image's range with its :func:`bright_objects` left out: the ``high``
    percentile of the other pixels (of a :data:`MAX_SAMPLES` sample), when that is lower than ``hi``."""
    sample = subsample(image, MAX_SAMPLES)
    grey = sample.mean(axis=-1, dtype=np.float32) if sample.ndim == 3 else sample.astype(np.float32)
    mask = bright_objects(grey, lo)
    if mask is None or mask.all():
        return hi
    capped = float(np.percentile(grey[~mask], high))
    return capped if lo < capped < hi else hi


def _typical(level: np.ndarray, components: np.ndarray) -> float:
    """The typical object's level: the :data:`TYPICAL` percentile over the pixels of the objects
    of at least :data:`MIN_OBJECT` px of their object's level."""
    areas = np.bincount(components.ravel(), minlength=level.size)
    counted = areas >= MIN_OBJECT
    counted[0] = False
    if not counted.any():
        return 0.0
    return float(np.percentile(np.repeat(level[counted], areas[counted]), TYPICAL))


def _object_levels(excess: np.ndarray, objects: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The mean of ``excess`` over each 8-connected component of ``objects`` ((n,) float64, 0 for
    the background) and the (H, W) int32 components."""
    import cv2

    n, components = cv2.connectedComponents(objects.astype(np.uint8), connectivity=8)
    flat = components.ravel()
    return np.bincount(flat, excess.ravel(), n) / np.maximum(np.bincount(flat, minlength=n), 1), components


def intensity_range(image: np.ndarray, low: float = _LOW, high: float = _HIGH,
                    saturation: bool = _SATURATION) -> tuple[float, float]:
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
    flat = values.reshape(-1)[:: max(1, values.size // MAX_SAMPLES)].astype(np.float32)
    lo, hi = (float(v) for v in np.percentile(flat, [low, high]))
    if saturation:
        top = float(flat.max())
        below = flat[flat < top - 0.01 * (top - lo)]  # at the maximum, up to noise after clipping
        share = 1.0 - below.size / flat.size
        if SATURATED_SHARE[0] < share < SATURATED_SHARE[1]:
            capped = float(np.percentile(below, high))
            hi = capped if capped > lo else hi
    return lo, hi


@dataclass(frozen=True)
class Normalization:
    """The map :func:`normalize_image` applies to an image, decided once (:func:`normalization_of`)
    and applicable to any part of it: a huge image is normalised block by block with one
    Normalization decided on a sample of it (:mod:`pipeline.batch.slide`).

    ``lo``/``hi`` (image units) map to 0/1; ``grey`` is None (channels kept), ``'mean'`` (the
    channels' mean) or a channel index, repeated into every channel first; ``white`` is the top of
    the image's own range, which :func:`outside_field` needs for stained images (``stained``).
    """

    lo: float
    hi: float
    grey: str | int | None = None
    stained: bool = False
    white: float = 0.0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """(H, W, C) array in the image's units → float32 (H, W, C) in [0, 1]."""
        image = np.asarray(image)
        if self.hi - self.lo < 1e-6:
            return np.zeros(image.shape, np.float32)
        return rescaled(self._grey(image), self.lo, self.hi)

    def _grey(self, image: np.ndarray) -> np.ndarray:
        """``image`` with every channel replaced by its grey (as it is when ``grey`` is None)."""
        if self.grey is None:
            return image
        grey = (image.mean(axis=-1, keepdims=True, dtype=np.float32) if self.grey == "mean"
                else image[..., self.grey : self.grey + 1].astype(np.float32))
        return np.repeat(grey, image.shape[-1], axis=-1)


def normalization_of(image: np.ndarray, low: float = _LOW, high: float = _HIGH,
                     saturation: bool = _SATURATION) -> Normalization:
    """The :class:`Normalization` of an (H, W, C) image (or of a representative sample of one):
    the decisions of :func:`normalize_image` (module docstring), without applying them."""
    return _decide(np.asarray(image), low, high, saturation)[0]


def _decide(image: np.ndarray, low: float, high: float, saturation: bool) -> tuple[Normalization, np.ndarray | None]:
    """:func:`normalization_of`, and the field-of-view surround of a stained image (or None)."""
    lo, hi = intensity_range(image, low, high, saturation)
    if hi - lo < 1e-6:
        return Normalization(lo, hi), None
    sample = rescaled(subsample(image), lo, hi)  # the decisions are made on a sample
    if is_colour_fluorescence(sample):  # as the grey fluorescence the network learnt
        channel = nuclear_channel(sample)
    elif colourfulness(sample, COLOUR_BLOCK) > COLOUR and is_tinted_grey(subsample(image)):
        channel = None  # a grey scene through a tinted camera
    elif is_stained(sample):  # range over the tissue (module docstring)
        field = outside_field(image, hi)
        tissue = tissue_pixels(image, lo, hi, field)
        range_ = intensity_range(tissue, low, high, saturation) if tissue is not None else (lo, hi)
        return Normalization(*range_, stained=True, white=hi), field
    elif saturation and not has_bright_background(sample):  # fluorescence: rare bright objects
        return Normalization(lo, _below_bright_objects(image, lo, hi, high)), None
    else:
        return Normalization(lo, hi), None
    grey = "mean" if channel is None else channel
    inner, _ = _decide(Normalization(0.0, 1.0, grey)._grey(image), low, high, saturation)
    return replace(inner, grey=grey), None


def normalize_image(image: np.ndarray, low: float = _LOW, high: float = _HIGH,
                    saturation: bool = _SATURATION) -> np.ndarray:
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
        (:func:`pipeline.method.colour.is_colour_fluorescence`) comes out grey: its blue channel normalised when that
        carries signal (:func:`pipeline.method.colour.nuclear_channel`), else its channels' mean. A stained image's black
        surround of a round field of view (:func:`outside_field`) is filled with the tissue's
        median colour, as stained training crops, which fill the field, were.
    """
    image = np.asarray(image)
    norm, field = _decide(image, low, high, saturation)
    out = norm(image)
    if field is not None:
        out[field] = np.median(subsample(out)[~subsample(field)], axis=0)
    return out


#: :func:`tissue_pixels` leaves out tiles of empty glass (pixel standard deviation below GLASS_FLAT
#: of the image's range, mean level in the upper half of it) and tiles outside the field of view,
#: when they are at least EMPTY_SHARE of the tiles.
GLASS_FLAT, EMPTY_SHARE = 0.02, 0.05


def tissue_pixels(image: np.ndarray, lo: float, hi: float,
                  outside: np.ndarray | None = None) -> np.ndarray | None:
    """The pixels of a stained image that hold the sample, for its intensity range.

    Stained tissue crops fill the field in training (stage1_train has no glass), so
    :func:`normalize_image` maps a stained image's darkest nuclei to 0 and its brightest tissue to
    1. Beside much empty glass the 1st percentile of all pixels moved into the tissue: nine times a
    tissue crop's area of glass moved it from grey level 27 to 101 and clipped the nuclei to black
    (DSB2018 0.29 against 0.41 as the crop alone, 12 images of stage1_train; 0.38 now). Flat
    bright tiles (glass, lumen) are therefore left out of the range of a stained image.
    stage1_train's stained images change by at most 0.011 of the range (10 of 107), the others not
    at all. A round field of view's black corners move the 1st percentile to black: tiles that
    reach into :func:`outside_field` are left out as well.

    Parameters
    ----------
    image : (H, W, C) array, any real dtype
    lo, hi : float
        The image's range (:func:`intensity_range`), in its units.
    outside : (H, W) bool array, optional
        Pixels outside the field of view (:func:`outside_field`).

    Returns
    -------
    pixels : (N, C) float32 array, or None when under :data:`EMPTY_SHARE` of the
        :data:`COLOUR_BLOCK` tiles (or all of them) are empty.
    """
    pixels = tile_pixels(np.asarray(subsample(image, MAX_SAMPLES), dtype=np.float32), COLOUR_BLOCK)
    level = pixels.mean(axis=(1, 2))
    flat = pixels.reshape(len(pixels), -1).std(axis=1) < GLASS_FLAT * (hi - lo)
    empty = flat & (level > (lo + hi) / 2)
    if outside is not None:
        empty |= tile_pixels(subsample(outside, MAX_SAMPLES)[..., None], COLOUR_BLOCK).any(axis=(1, 2))
    if empty.mean() < EMPTY_SHARE or empty.all():
        return None
    return pixels[~empty].reshape(-1, pixels.shape[-1])


