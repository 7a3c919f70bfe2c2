"""What an image's colours say: colour or grey, a grey scene through a tinted camera, fluorescence in
colour and its nuclear channel, stained tissue in transmitted light. :mod:`pipeline.method.intensity`
normalises by these answers and :mod:`pipeline.method.image_types` types images by them.

Why each rule and its thresholds: docs/decisions.md, "Intensities and image types".

Must not: read files or change an image (every function answers a question about one).
"""

from __future__ import annotations

import numpy as np

#: A normalised image whose mean |channel − grey| exceeds COLOUR is in colour; one whose mean stays
#: below DARK has a dark background (fluorescence). The image types of
#: :func:`pipeline.method.image_types.classify_image` use the same two thresholds, so the two rules agree.
#: stage1_train after normalisation: grey images have no colour (< 1e-8); the blue channel of a
#: fluorescence image 0.013–0.34; mean level of fluorescence 0.02–0.26 (blue channel alone at most
#: 0.25), of stained tissue 0.56–0.84.
COLOUR, DARK = 0.01, 0.35



#: :func:`pipeline.method.image_types.classify_image` measures the colour on the means of COLOUR_BLOCK ×
#: COLOUR_BLOCK tiles, so that a colour camera's pixel noise, independent in each channel, does not
#: make a grey image "stained". Noise of σ = 4/255 made every bright-field image of stage1_train
#: "stained" pixel by pixel (the Segmenter types normalised images, where the contrast stretch
#: amplifies the noise); on 8 × 8 tile means none is, up to σ = 12/255 (4 × 4: up to 8/255). The
#: 664 images keep their types; stained tissue measures 0.013–0.17 on tile means (0.030 and more
#: normalised). :func:`is_colour_fluorescence` keeps the pixels: a dark image whose channels differ
#: only by such noise is then averaged to grey, which is what it is.
COLOUR_BLOCK = 8



MAX_SAMPLES = 1_000_000



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
    pixels = tile_pixels(np.asarray(image, dtype=np.float32), COLOUR_BLOCK)  # (tiles, pixels, channels)
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
        Normalised (:func:`pipeline.method.intensity.normalize_image`'s scale), e.g. a subsample.
    """
    if image.ndim != 3 or image.shape[-1] <= NUCLEAR_CHANNEL or colourfulness(image, COLOUR_BLOCK) <= COLOUR:
        return None
    lo, hi = np.percentile(image[..., NUCLEAR_CHANNEL], [1, 99.8])
    return NUCLEAR_CHANNEL if hi - lo >= NUCLEAR_RANGE else None



def rescaled(image: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """``(image − lo) / (hi − lo)`` clipped to [0, 1], float32."""
    out = (np.asarray(image, dtype=np.float32) - np.float32(lo)) / np.float32(hi - lo)
    return np.clip(out, 0.0, 1.0, out=out)



def is_colour_fluorescence(image: np.ndarray) -> bool:
    """Whether a normalised image is fluorescence in colour: channels that differ (mean
    |channel − grey| above :data:`COLOUR`) on a dark background (:func:`has_dark_background`), or
    with a channel that carries no light where the image is brightest (not
    :func:`is_transmitted`: a composite of a nuclear stain and a marker that fills dense tissue is
    bright on average).

    Parameters
    ----------
    image : float (H, W, C) array in [0, 1], normalised by :func:`pipeline.method.intensity.normalize_image`
        Grey (C = 1, or equal channels) and stained (bright) images give False.
    """
    if image.ndim != 3 or image.shape[-1] < 2:
        return False
    sample = subsample(image)
    return colourfulness(sample) > COLOUR and (has_dark_background(sample) or not is_transmitted(sample))



def is_grey(image: np.ndarray) -> bool:
    """Whether every channel of an (H, W, C) array holds the same values as the first, bit for bit
    (compared as unsigned integers: five times faster than as floats; a channel that holds -0.0
    where another holds 0.0 counts as not grey). True for one channel."""
    image = np.ascontiguousarray(image)
    if image.ndim < 3 or image.shape[-1] < 2:
        return True
    bits = image.reshape(-1, image.shape[-1]).view(f"u{image.dtype.itemsize}")
    return all(np.array_equal(bits[:, 0], bits[:, c]) for c in range(1, bits.shape[-1]))


def colourfulness(image: np.ndarray, block: int = 1) -> float:
    """Mean |channel − grey| of an (H, W, C) image, in its units: 0 for a grey image.

    With ``block`` > 1 it is measured on the means of ``block`` × ``block`` tiles (the image's
    edge rows and columns beyond whole tiles dropped; no averaging for an image smaller than
    a tile): pixel noise that is independent in each channel averages out, while a stain's colour,
    the same over many pixels, stays.
    """
    if is_grey(image):
        return 0.0  # the fast answer (most training crops are grey, and each needs it three times)
    tiles = _tile_means(image, block)
    return float(np.abs(tiles - tiles.mean(axis=-1, keepdims=True)).mean())



#: :func:`stain_colour` takes the colour of the darkest STAIN_SHARE of an image's
#: :data:`COLOUR_BLOCK` tiles, leaving out black ones (mean level below TINT_DARK of the 99th
#: percentile of the tile levels: a round field of view's corners, black borders).
STAIN_SHARE = 0.1



def is_stained(image: np.ndarray) -> bool:
    """Whether an (H, W, C) image in [0, 1] is stained: no dark background
    (:func:`has_dark_background`), colour where the sample absorbs (:func:`stain_colour` above
    :data:`COLOUR`) and light in every channel where it absorbs least (:func:`is_transmitted`).
    An image on a dark background is fluorescence whatever its colour: its darkest tiles that are
    not black are a tinted camera's nuclei there. The one rule of
    :func:`pipeline.method.intensity.normalize_image` and
    :func:`pipeline.method.image_types.classify_image`."""
    if image.ndim != 3 or is_grey(image):
        return False  # grey: no stain colour (the fast answer for every grey image)
    return stain_colour(image) > COLOUR and is_transmitted(image) and not has_dark_background(image)



#: An image has a dark background (fluorescence) when its mean level is below :data:`DARK` and its
#: median lies in the bottom DARK_MEDIAN of its 1–99 % range (:func:`median_position`). The mean alone
#: typed densely stained H&E fluorescence: nuclei over most of the image bring its mean under
#: :data:`DARK` (4 of MoNuSeg's 30 training images, mean 0.25–0.35), but their median stays in the
#: tissue (0.22–0.44 of the range), where a fluorescence image's median is its black background:
#: stage1_train's 541 fluorescence images 0–0.12 (one at 0.35), ``fluo_ctc`` at most 0.03 (normalised,
#: ``benchmarks/bench_image_types.py``). Dense grey fluorescence in tissue reaches 0.50
#: (``tissue_fluo_e2f``, Kromp's sections), but grey has no stain colour, and a tinted grey copy is
#: told apart by :func:`is_tinted_grey`.
DARK_MEDIAN = 0.2



def has_dark_background(image: np.ndarray) -> bool:
    """Whether an (H, W, C) image in [0, 1] lies on a dark background: a mean level below
    :data:`DARK` and its median at the bottom of its range (:data:`DARK_MEDIAN`)."""
    return float(image.mean()) < DARK and median_position(image) < DARK_MEDIAN



def median_position(image: np.ndarray, tiles: int = 4) -> float:
    """Where the median grey level lies in the 1–99 % percentile range, measured in each of
    ``tiles × tiles`` tiles and taken as the median over the tiles with contrast (a range of at least
    a quarter of the widest tile's): 0 at the 1st percentile, 1 at the 99th; 1 for a constant image
    (all background).
    Unchanged by a gain and an offset, and nearly so by smooth uneven illumination (a vignette, a
    ramp), which a single image-wide range mixes into the levels.

    Parameters
    ----------
    image : (H, W) or (H, W, C) real array (a subsample is enough)
    tiles : int
        Tiles a side (fewer where the image has fewer than 8 px a tile).
    """
    grey = np.asarray(image, dtype=np.float32)
    grey = grey.mean(axis=2) if grey.ndim == 3 else grey
    n = max(1, min(tiles, grey.shape[0] // 8, grey.shape[1] // 8))
    th, tw = grey.shape[0] // n, grey.shape[1] // n
    blocks = grey[: n * th, : n * tw].reshape(n, th, n, tw).transpose(0, 2, 1, 3).reshape(n * n, th * tw)
    lo, mid, hi = np.percentile(blocks, [1, 50, 99], axis=1)
    span = hi - lo
    if float(span.max()) <= 0:
        return 1.0
    keep = span >= 0.25 * span.max()
    return float(np.median((mid[keep] - lo[keep]) / span[keep]))



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



def tile_pixels(image: np.ndarray, block: int) -> np.ndarray:
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
    (:func:`tiles`)."""
    image = np.asarray(image, dtype=np.float32)
    c = image.shape[-1]
    h, w = image.shape[0] // block * block, image.shape[1] // block * block
    if block > 1 and h and w:  # tile_pixels' tiles averaged in place, without copying them
        return image[:h, :w].reshape(h // block, block, w // block, block, c).mean(axis=(1, 3)).reshape(-1, c)
    return image.reshape(-1, c)



def subsample(image: np.ndarray, n_pixels: int = 250_000) -> np.ndarray:
    """Every k-th row and column of an (H, W[, C]) image, k the smallest step that leaves about
    ``n_pixels`` (a view; enough for image-wide statistics)."""
    step = max(1, int(np.sqrt(image.shape[0] * image.shape[1] / n_pixels)))
    return image[::step, ::step]
