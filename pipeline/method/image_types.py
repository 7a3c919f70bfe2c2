"""Image types: what kind of light-microscopy image an image is, from its colour and background.

Four types (:data:`IMAGE_TYPES`), those of the DSB2018 data: ``fluo-small`` and ``fluo-large``
(a dark background, whatever the colour), ``brightfield`` (grey, a bright background),
``histology`` (stained tissue: colour on a bright background). ``prepare`` stratifies folds by them;
the Segmenter and the watershed treat bright-field and stained images apart (no diameter estimate;
stained thresholds and diameter).

Must not: read files or normalise images (:mod:`pipeline.method.intensity` owns the colour rules used here).
"""

from __future__ import annotations

import numpy as np

from pipeline.config.params import BRIGHTFIELD, FLUO_LARGE, FLUO_SMALL, HISTOLOGY, IMAGE_TYPES  # noqa: F401 (the vocabulary)
from pipeline.method.colour import DARK, is_stained, is_tinted_grey, median_position, subsample


def classify_image(image: np.ndarray, n_pixels: int | None = None, raw: bool = True) -> str:
    """Image type of a DSB2018-like image, from colour, brightness and size.

    Parameters
    ----------
    image : uint8 ndarray of shape (H, W, 3)
    n_pixels : int, optional
        The image's number of pixels, when ``image`` is a subsample of it (default H × W).
    raw : bool
        ``image`` is as read, so a grey scene through a tinted camera can be told from a stain
        (:func:`pipeline.method.intensity.is_tinted_grey` needs black at 0). False for a normalised image
        (:func:`pipeline.model.segmenter.image_type_of`): :func:`pipeline.method.intensity.normalize_image` has
        made such an image grey already, and the contrast stretch, which moves black and clips,
        can make stained tissue look like one (a tissue crop at 4× scale did).

    Returns
    -------
    image_type : str
        ``histology`` for stained tissue (:func:`pipeline.method.colour.is_stained`: no dark
        background and colour in its darkest tiles; and, when ``raw``, not a grey scene through a
        tinted camera), ``brightfield`` for other images with a bright background
        (:func:`has_bright_background`: a mean above
        :data:`pipeline.method.colour.DARK` and the median near the top of the range, so dense
        fluorescence in tissue, bright nuclei over most of the image, stays fluorescence),
        otherwise fluorescence, whatever its colour:
        ``fluo-large`` above 200,000 pixels, else ``fluo-small``.
        The thresholds separate the four groups of stage1_train with wide margins.
    """
    rgb = image.astype(np.float32) / 255.0
    if is_stained(rgb) and not (raw and is_tinted_grey(image)):
        return HISTOLOGY
    if has_bright_background(rgb):
        return BRIGHTFIELD
    n_pixels = image.shape[0] * image.shape[1] if n_pixels is None else n_pixels
    return FLUO_LARGE if n_pixels > 200_000 else FLUO_SMALL


#: A grey image has a bright background (bright-field: nuclei absorb light) when its median grey
#: level lies above this fraction of its 1–99 % range, tile by tile (:func:`median_position`): the
#: background is most of the image and the brightest part of it. Normalised, half of stage1_train
#: and the extra sources (``benchmarks/bench_image_types.py``): bright-field 0.91–0.95 (0.71–0.79
#: under a strong vignette and ramp, or noise); fluorescence at most 0.35 (0.42 shifted); dense
#: fluorescence in tissue (``tissue_fluo_e2f``, nuclei on 50–82 % of the image) at most 0.50, whose
#: mean level is above :data:`DARK` once normalised, so the mean alone typed 30 of its 57 images
#: bright-field.
BRIGHT_BACKGROUND = 0.6


def has_bright_background(image: np.ndarray) -> bool:
    """Whether an (H, W, C) image in [0, 1] has a bright background, as bright-field images do: a
    mean above :data:`DARK` and its median in the top of its range (:data:`BRIGHT_BACKGROUND`).
    Dense fluorescence, bright nuclei over most of a dark background, has the mean but not the
    median. The rule of :func:`classify_image`."""
    return float(image.mean()) > DARK and median_position(image) > BRIGHT_BACKGROUND


def image_type_of(image: np.ndarray) -> str:
    """:func:`pipeline.method.image_types.classify_image` of a normalised (H, W, 3) image: 'histology'
    (colour: stained), 'brightfield' (grey with a bright background), 'fluo-large' or 'fluo-small'.
    A grey scene through a tinted camera is grey here already (:func:`pipeline.method.intensity.normalize_image`)."""
    sample = np.clip(np.rint(subsample(image) * 255), 0, 255).astype(np.uint8)
    return classify_image(sample, n_pixels=image.shape[0] * image.shape[1], raw=False)
