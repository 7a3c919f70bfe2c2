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
image whose normalised channels differ (colour, as :func:`pipeline.image_types.classify_image` measures
it) on a dark background, or with a channel dark where the image is brightest
(:func:`is_colour_fluorescence`), is normalised as one grey image: its
blue channel when the channels hold different images and blue carries signal
(:func:`nuclear_channel`: the nuclear counterstain, DAPI or Hoechst, is blue by convention), else
the mean of its channels. A single coloured channel then gives exactly the grey image, and so does
a tint; one stain with a colour camera's noise in each channel gets the noise averaged; a composite
of blue nuclei and a marker in other channels gives its nuclei, where the blend scored 0.04
(``bench_robustness.py``, ``composite``).
A bright-field image of an unstained sample through a colour camera whose white balance is off
(a halogen lamp's yellow, a blue LED) is grey too: its colours are one grey scene times the
channels' gains (:func:`is_tinted_grey`), and it is normalised as the mean of its channels. Kept in
colour, it was segmented as stained tissue: on the 16 bright-field images of stage1_train the
shipped model scored 0.001 (yellowish) and 0.014 (bluish) against 0.342 for the same images in grey,
with diameter estimates of 49–220 px and no bright-field flag.
Stained images (:func:`is_stained`: colour on a bright background, lit through the sample in every
channel, :func:`is_transmitted`) keep their colour, and their
range is taken over the tissue: empty glass beside it is left out (:func:`tissue_pixels`) and a
round field of view's black surround is filled with the tissue's colour
(:func:`pipeline.field_of_view.outside_field`), since the training crops of tissue fill the field.

Measurements never use this: they are made on the image in its own units.

Must not: read files, resize, or know about the network.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from pipeline.field_of_view import outside_field

#: Defaults, also recorded in model directories (``normalization``).
NORMALIZATION = {"low": 1.0, "high": 99.8, "saturation": True}
#: Shares of all pixels at the image's maximum between which the image counts as saturated (more
#: than that is not a few saturated objects but the image's own upper level, e.g. a binary image).
SATURATED_SHARE = (5e-4, 0.1)
#: A normalised image whose mean |channel − grey| exceeds COLOUR is in colour; one whose mean stays
#: below DARK has a dark background (fluorescence). The image types of
#: :func:`pipeline.image_types.classify_image` use the same two thresholds, so the two rules agree.
#: stage1_train after normalisation: grey images have no colour (< 1e-8); the blue channel of a
#: fluorescence image 0.013–0.34; mean level of fluorescence 0.02–0.26 (blue channel alone at most
#: 0.25), of stained tissue 0.56–0.84.
COLOUR, DARK = 0.01, 0.35
#: :func:`pipeline.image_types.classify_image` measures the colour on the means of COLOUR_BLOCK ×
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


@dataclass(frozen=True)
class Normalization:
    """The map :func:`normalize_image` applies to an image, decided once (:func:`normalization_of`)
    and applicable to any part of it: a huge image is normalised block by block with one
    Normalization decided on a sample of it (:mod:`pipeline.slide`).

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
        return _rescale(self._grey(image), self.lo, self.hi)

    def _grey(self, image: np.ndarray) -> np.ndarray:
        """``image`` with every channel replaced by its grey (as it is when ``grey`` is None)."""
        if self.grey is None:
            return image
        grey = (image.mean(axis=-1, keepdims=True, dtype=np.float32) if self.grey == "mean"
                else image[..., self.grey : self.grey + 1].astype(np.float32))
        return np.repeat(grey, image.shape[-1], axis=-1)


def normalization_of(image: np.ndarray, low: float = 1.0, high: float = 99.8,
                     saturation: bool = True) -> Normalization:
    """The :class:`Normalization` of an (H, W, C) image (or of a representative sample of one):
    the decisions of :func:`normalize_image` (module docstring), without applying them."""
    return _decide(np.asarray(image), low, high, saturation)[0]


def _decide(image: np.ndarray, low: float, high: float, saturation: bool) -> tuple[Normalization, np.ndarray | None]:
    """:func:`normalization_of`, and the field-of-view surround of a stained image (or None)."""
    lo, hi = intensity_range(image, low, high, saturation)
    if hi - lo < 1e-6:
        return Normalization(lo, hi), None
    sample = _rescale(subsample(image), lo, hi)  # the decisions are made on a sample
    if is_colour_fluorescence(sample):  # as the grey fluorescence the network learnt
        channel = nuclear_channel(sample)
    elif colourfulness(sample, COLOUR_BLOCK) > COLOUR and is_tinted_grey(subsample(image)):
        channel = None  # a grey scene through a tinted camera
    elif is_stained(sample):  # range over the tissue (module docstring)
        field = outside_field(image, hi)
        tissue = tissue_pixels(image, lo, hi, field)
        range_ = intensity_range(tissue, low, high, saturation) if tissue is not None else (lo, hi)
        return Normalization(*range_, stained=True, white=hi), field
    else:
        return Normalization(lo, hi), None
    grey = "mean" if channel is None else channel
    inner, _ = _decide(Normalization(0.0, 1.0, grey)._grey(image), low, high, saturation)
    return replace(inner, grey=grey), None


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
        carries signal (:func:`nuclear_channel`), else its channels' mean. A stained image's black
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
    pixels = _tiles(np.asarray(subsample(image, _MAX_SAMPLES), dtype=np.float32), COLOUR_BLOCK)
    level = pixels.mean(axis=(1, 2))
    flat = pixels.reshape(len(pixels), -1).std(axis=1) < GLASS_FLAT * (hi - lo)
    empty = flat & (level > (lo + hi) / 2)
    if outside is not None:
        empty |= _tiles(subsample(outside, _MAX_SAMPLES)[..., None], COLOUR_BLOCK).any(axis=(1, 2))
    if empty.mean() < EMPTY_SHARE or empty.all():
        return None
    return pixels[~empty].reshape(-1, pixels.shape[-1])


#: :func:`is_tinted_grey`: the largest angle (degrees) between the main axis of an image's colours
#: and its mean colour, and the least ratio of the spread along that axis to the spread off it
#: (standard deviations). stage1_train, on COLOUR_BLOCK tile means of the raw image: the 107
#: stained images measure 22–49° (21° once tinted yellow by a camera); its 16 bright-field images
#: put through tinted cameras (gains 1/0.93/0.78, 0.8/0.9/1, 0.85/1/0.8) measure below 0.6°, with
#: noise of σ 12/255, JPEG at quality 75 or a black level of 8–16 grey levels in two channels below
#: 2.6°. Stains lie far off their background's colour (haematoxylin on white 18.5°, eosin 47°).
TINT_ANGLE, TINT_DOMINANCE = 8.0, 5.0
#: ... and the colours must be one scene's whatever the illumination: the tiles' chromaticity (colour ÷
#: its mean level) spread (standard deviation, mean over the channels) below TINT_CHROMA, or their
#: spread off the main axis below TINT_LINE of the mean level (a black level moves the chromaticity
#: but keeps the line). Uneven illumination (a vignette to 0.4 in the corners, a ramp) stretches a
#: stain's colours along the line through black until the angle and dominance pass: it typed 17 of
#: the 190 stained images of stage1_train and the extra sources "one grey scene" (then fluorescence
#: or bright-field). Measured (``benchmarks/bench_image_types.py``): those 190 under that illumination
#: chromaticity ≥ 0.018, off the line ≥ 0.024; stage1_train's 16 bright-field images through tinted
#: cameras with noise and JPEG, a black level of 12 in two channels, or uneven illumination, ≤ 0.009
#: and ≤ 0.015.
TINT_CHROMA, TINT_LINE = 0.013, 0.019
#: Tiles :func:`is_tinted_grey` leaves out: those with a saturated pixel (a channel at TINT_SATURATED
#: of the image's maximum or above: clipped highlights, one overexposed channel) and those with a
#: dark pixel (mean of the channels below TINT_DARK of the 99th percentile of the other tiles' mean
#: levels: black borders, a round field of view's corners). Any image's colours run towards white
#: and black there: judged by their means only, one white saturated nucleus in dim 16-bit tissue
#: made all 107 stained images of stage1_train "one grey scene", black corners 3 of them.
TINT_SATURATED, TINT_DARK = 0.98, 0.2


def is_tinted_grey(image: np.ndarray) -> bool:
    """Whether a colour image is one grey scene seen through per-channel gains: a colour camera
    with its white balance off, or a grey image saved in one colour.

    Such an image's colours lie on a line through black (``gains × grey``), so the main axis of
    its colours (first principal component of :data:`COLOUR_BLOCK` tile means, which average out
    pixel noise; saturated and dark tiles left out, :data:`TINT_SATURATED`) points at its mean
    colour: within :data:`TINT_ANGLE` degrees, and with the colours' spread along it at least
    :data:`TINT_DOMINANCE` times that off it; and the tiles' chromaticity is nearly constant, or
    their colours nearly on that line (:data:`TINT_CHROMA`), however uneven the illumination.
    A stain's colour runs from the background's colour to the stain's, far off that line.

    Parameters
    ----------
    image : (H, W, C) array, any real dtype, C ≥ 2
        In its own units, with black at 0: not normalised (a contrast stretch moves black), e.g.
        :func:`subsample` of the raw image.
    """
    if image.ndim != 3 or image.shape[-1] < 2:
        return False
    pixels = _tiles(np.asarray(image, dtype=np.float32), COLOUR_BLOCK)  # (tiles, pixels, channels)
    if len(pixels) < 3 or pixels.shape[1] == 1:
        return False
    tiles = pixels.mean(axis=1)
    level = pixels.mean(axis=2)
    keep = pixels.max(axis=(1, 2)) < TINT_SATURATED * float(pixels.max())
    if keep.any():
        keep &= level.min(axis=1) >= TINT_DARK * np.percentile(tiles[keep].mean(axis=1), 99)
    tiles = tiles[keep]
    if len(tiles) < 3:
        return False
    mean = tiles.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    spreads, axes = np.linalg.eigh(np.cov(tiles - mean, rowvar=False))
    along, off = spreads[-1], max(float(spreads[:-1].sum()), 0.0)
    if not (along > TINT_DOMINANCE**2 * off and norm > 0):
        return False
    if abs(float(axes[:, -1] @ mean)) / norm < np.cos(np.radians(TINT_ANGLE)):
        return False
    chromaticity = tiles / np.maximum(tiles.mean(axis=1, keepdims=True), 1e-12)  # colour ÷ tile level
    chroma = float(chromaticity.std(axis=0).mean())
    return chroma < TINT_CHROMA or np.sqrt(off) < TINT_LINE * float(mean.mean())


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
    |channel − grey| above :data:`COLOUR`) on a dark background (mean below :data:`DARK`), or
    with a channel that carries no light where the image is brightest (not
    :func:`is_transmitted`: a composite of a nuclear stain and a marker that fills dense tissue is
    bright on average).

    Parameters
    ----------
    image : float (H, W, C) array in [0, 1], normalised by :func:`normalize_image`
        Grey (C = 1, or equal channels) and stained (bright) images give False.
    """
    if image.ndim != 3 or image.shape[-1] < 2:
        return False
    sample = subsample(image)
    return colourfulness(sample) > COLOUR and (float(sample.mean()) < DARK or not is_transmitted(sample))


def colourfulness(image: np.ndarray, block: int = 1) -> float:
    """Mean |channel − grey| of an (H, W, C) image, in its units: 0 for a grey image.

    With ``block`` > 1 it is measured on the means of ``block`` × ``block`` tiles (the image's
    edge rows and columns beyond whole tiles dropped; no averaging for an image smaller than
    a tile): pixel noise that is independent in each channel averages out, while a stain's colour,
    the same over many pixels, stays.
    """
    tiles = _tile_means(image, block)
    return float(np.abs(tiles - tiles.mean(axis=-1, keepdims=True)).mean())


#: :func:`stain_colour` takes the colour of the darkest STAIN_SHARE of an image's
#: :data:`COLOUR_BLOCK` tiles, leaving out black ones (mean level below TINT_DARK of the 99th
#: percentile of the tile levels: a round field of view's corners, black borders).
STAIN_SHARE = 0.1


def is_stained(image: np.ndarray) -> bool:
    """Whether an (H, W, C) image in [0, 1] is stained: a bright background (mean above
    :data:`DARK`), colour where the sample absorbs (:func:`stain_colour` above :data:`COLOUR`) and
    light in every channel where it absorbs least (:func:`is_transmitted`).
    A dark image is fluorescence whatever its colour: its darkest tiles that are not black are a
    tinted camera's nuclei there. The one rule of :func:`normalize_image` and
    :func:`pipeline.image_types.classify_image`."""
    return float(image.mean()) > DARK and stain_colour(image) > COLOUR and is_transmitted(image)


#: :func:`is_transmitted`: the share of an image's :data:`COLOUR_BLOCK` tiles taken as its brightest,
#: and the least ratio of their mean colour's dimmest channel to its brightest.
BRIGHTEST_SHARE, TRANSMITTED = 0.1, 0.15


def is_transmitted(image: np.ndarray) -> bool:
    """Whether an (H, W, C) image is lit through the sample (stained or bright-field): where it is
    brightest, the sample absorbs least and every channel carries the lamp's light, so the mean
    colour of its brightest :data:`BRIGHTEST_SHARE` of tiles has its dimmest channel at least
    :data:`TRANSMITTED` of its brightest. A fluorescence composite is brightest in its markers'
    colours, with an unused channel black: a nuclear stain in blue beside a cell marker in green
    that fills dense tissue has a stained image's mean level and colour, and was typed stained
    (as such composites, ``bench_robustness.py`` ``composite``: 40 of the 57 images of
    ``tissue_fluo_e2f``, 2 of stage1_train's 541 fluorescence images). Measured normalised
    (``benchmarks/bench_image_types.py``): the 190 stained images of stage1_train and the extra
    sources 0.28 and more (0.52 under uneven illumination), stage1_train's bright-field images
    through tinted cameras 0.47 and more, composites with an unused channel 0.

    Parameters
    ----------
    image : (H, W, C) float array, e.g. in [0, 1], black at 0
    """
    tiles = _tile_means(image)
    level = tiles.mean(axis=-1)
    brightest = tiles[level >= np.quantile(level, 1 - BRIGHTEST_SHARE)].mean(axis=0)
    return float(brightest.min()) >= TRANSMITTED * float(brightest.max())


def stain_colour(image: np.ndarray) -> float:
    """The colour of what absorbs light in an image: mean |channel − grey| of the mean colour of
    its darkest :data:`STAIN_SHARE` of :data:`COLOUR_BLOCK` tiles (black tiles left out), in the
    image's units; 0 for a grey image.

    A stain is where the sample is dark, and one colour there: its tiles, however few, set the
    figure, so tissue beside much empty glass or inside a round field of view's black corners is
    still in colour (the mean over all tiles, :func:`colourfulness`, is diluted by them). Taking the
    colour of the tiles' mean, not the mean of their colours, cancels a lens's colour fringes, red
    on one side of a dark edge and blue on the other, which the darkest tiles gather.

    stage1_train's 107 stained images measure 0.051 and more raw (0.091 normalised); 0.012 (0.021)
    beside nine times their area of neutral glass and 0.023 (0.027) in a round field of view (mean
    over all tiles: down to 0.002 and 0.009). Its 16 bright-field images with lateral chromatic
    aberration (red and blue shifted 1–3 px diagonally, in opposite directions) measure at most
    0.0033 (mean over all tiles: up to 0.010), with a colour camera's noise (σ 12/255) at most
    0.0014.

    Parameters
    ----------
    image : (H, W, C) float array, e.g. in [0, 1]
    """
    tiles = _tile_means(image)
    level = tiles.mean(axis=-1)
    lit = np.flatnonzero(level >= TINT_DARK * np.percentile(level, 99))
    if lit.size == 0:
        return 0.0
    darkest = lit[np.argsort(level[lit], kind="stable")[: max(1, round(STAIN_SHARE * lit.size))]]
    colour = tiles[darkest].mean(axis=0)
    return float(np.abs(colour - colour.mean()).mean())


def _tiles(image: np.ndarray, block: int) -> np.ndarray:
    """The pixels of each ``block`` × ``block`` tile of an (H, W, C) image, as an (tiles, block²,
    C) array; the edge rows and columns beyond whole tiles are dropped. Each pixel is a tile of its
    own when ``block`` is 1 or the image is smaller than a tile."""
    c = image.shape[-1]
    h, w = image.shape[0] // block * block, image.shape[1] // block * block
    if block > 1 and h and w:
        tiles = image[:h, :w].reshape(h // block, block, w // block, block, c).swapaxes(1, 2)
        return tiles.reshape(-1, block * block, c)
    return image.reshape(-1, 1, c)


def _tile_means(image: np.ndarray, block: int = COLOUR_BLOCK) -> np.ndarray:
    """(tiles, C) float32 mean colour of each ``block`` × ``block`` tile of an (H, W, C) image
    (:func:`_tiles`)."""
    return _tiles(np.asarray(image, dtype=np.float32), block).mean(axis=1)


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
