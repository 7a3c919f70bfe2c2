"""Data augmentation for training, applied identically to the image and all targets.

Built on albumentations. The four targets (``classes``, ``mask``, ``border``, ``weights``) are
stacked into one float32 ``(H, W, 4)`` mask so that every geometric transform moves them
together with the image in one call, with nearest-neighbour interpolation (class labels stay
labels; the weight map is resampled by nearest neighbour too, which keeps its peaks on the
gaps between nuclei). Geometric transforms fill borders by reflection.

Train pipeline (each step switchable in the ``augment`` section of ``params.yaml``; ``true``
uses the default probability below, a number in [0, 1] sets it, ``false`` / 0 disables):

Geometry (image and targets together):

- ``crop`` (int or null): a random ``crop × crop`` window, reflect-padded (centred) where the
  image is smaller (p 1; :func:`random_crop`). It comes first, so that everything after it, the
  conversion of a stored 8- or 16-bit image to float included, works on the crop's pixels only;
- ``scale`` ([lo, hi] or null): isotropic zoom by a factor uniform in [lo, hi] (Affine, p 1):
  the jitter around the canonical nucleus diameter the training images were rescaled to;
- ``flips``: horizontal and vertical flips, drawn independently (p 0.5 each);
- ``rot90``: rotation by 0, 90, 180 or 270° (p 1);
- ``elastic``: elastic deformation, ``elastic_alpha`` / ``elastic_sigma`` (p 0.3);

Acquisition (the image only, on its raw values, in the order a microscope would do it; see
:func:`acquisition_shift`):

- ``pale`` (default off): on colour images, large pale (vesicular) nuclei, as in breast carcinoma:
  the inside of each nucleus (4-connected components of the nucleus mask) brought towards the
  optical density around it, keeping a share in [0.2, 0.6] of its excess, its rim (the outer
  fifth of its radius), nucleoli and grain kept (:func:`pale_nuclei`; p 0.3 when switched on);
- ``chromo`` (default off): on a dark background, bright foci inside the nuclei (1–6 per nucleus,
  0.1–0.25 of its diameter, 1.5–4 × its brightness: the chromocentres of mouse nuclei;
  :func:`chromocentres`; p 0.3 when switched on);
- ``debris`` (default off): on a dark background, bright objects that are not nuclei (blobs 1–2
  diameters wide, or clusters of fragments), 5–50 × the nuclei's brightness on 0.5–3 % of the
  pixels, never on a nucleus (:func:`bright_debris`), then clipped at 1 (a saturating camera) or
  the crop divided by its maximum (one that does not), each half the time (p 0.3 when switched on).
  Neither is a target: the network learns that they are not nuclei, nor the nuclei's size;
- ``illumination`` (default off): uneven illumination, as an uncorrected wide-field microscope's:
  the crop times a vignette falling to 0.4–0.9 at a distance of one crop side from its centre
  (placed anywhere within half a crop of the crop's centre: a crop is a part of a larger field),
  plus a background ramp across the crop up to 0.3 of its 1–99 % range in a random direction
  (p 0.3 when switched on);
- ``blur``: Gaussian defocus, σ uniform in ``blur_sigma`` px (default [0.5, 2]; p 0.2), in the
  pixels of the crop, i.e. at the canonical nucleus diameter;
- ``dim_saturate``: on a dark background, the whole crop dimmed to 5–40 % of its range and 1–3
  nuclei (at most a third of them) made 5–40× brighter, clipped at 1 — dim nuclei beside
  saturated ones (p 0.3);
- ``stain``: on colour images, H&E stain jitter in HED space (``skimage.color.rgb2hed``): each
  stain scaled by [0.7, 1.3] and shifted by ±0.03 (p 0.5);
- ``dab`` (default off): on colour images, immunohistochemistry of a nuclear antigen (Ki-67, ER)
  made from the crop: in HED space eosin scaled by [0, 0.3] and a share in [0, 1] of the nuclei
  (components of the nucleus mask) DAB-positive, their haematoxylin times [0.1, 0.5] and DAB
  [0.5, 1.5] times it, edges softened by σ 1 px (:func:`random_dab`; p 0.3 when switched on);
- ``noise``: Gaussian noise, σ in [0.005, 0.05] of the full range (p 0.3); the same in every
  channel of a grey image (a grey camera's), per channel in a colour one;
- ``low_bits``: quantisation to 6–8 bits (p 0.3);
- ``jpeg``: JPEG compression at quality 30–90 (p 0.2);

then ``normalize`` (default true): the crop is normalised by
:func:`pipeline.method.intensity.normalize_image`, exactly as the Segmenter normalises an image.

Appearance (after normalisation):

- ``brightness_contrast``: brightness ± 0.2, contrast ± 0.2 (p 0.5);
- ``gamma``: gamma in [0.8, 1.2] (p 0.5);
- ``color_to_gray``: colour → grey (ToGray) and grey → colour (random per-channel gain in
  [0.6, 1.4]), each with p 0.2;
- ``invert``: colour inversion ``1 − image`` (p 0.2), so that dark-on-bright brightfield and
  bright-on-dark fluorescence look alike to the network.

Validation (``train=False``) is the identity (the data set pads to the network stride).

Determinism. albumentations 2 ignores the global ``random`` / ``numpy`` seeds: a pipeline draws
from its own generators. :class:`Augmentation` therefore takes a ``seed`` and can be reseeded;
the data set should pass a per-sample seed derived from (run seed, epoch, sample index) —
``augment(..., seed=sample_seed(seed, epoch, index))`` — which makes every crop independent
of the number of workers, of DDP ranks and of resuming. (Reseeding once per worker in
``worker_init_fn`` with ``aug.reseed(torch.initial_seed() % 2**32)`` is also deterministic for
a fixed number of workers.) Note that albumentations' own ``Compose(seed=...)`` gives every
transform an identically seeded generator, which correlates their random draws (both flips
fire together); :meth:`Augmentation.reseed` shares one generator among all transforms instead.

Must not: read files or params.yaml (the ``augment`` section arrives as a
:class:`pipeline.config.params.AugmentConfig`, which also checks it), or know what the targets mean.
"""

from __future__ import annotations

import random
from collections.abc import Mapping

import albumentations as A
import cv2
import numpy as np

from pipeline.config.params import AugmentConfig
from pipeline.method.colour import colourfulness
from pipeline.method.intensity import normalize_image

#: Default probability of each switchable transform when its key is ``true``.
DEFAULT_P = {
    "scale": 1.0,
    "flips": 0.5,
    "rot90": 1.0,
    "elastic": 0.3,
    "brightness_contrast": 0.5,
    "gamma": 0.5,
    "color_to_gray": 0.2,
    "invert": 0.2,
    "illumination": 0.3,
    "blur": 0.2,
    "dim_saturate": 0.3,
    "stain": 0.5,
    "dab": 0.3,
    "pale": 0.3,
    "chromo": 0.3,
    "debris": 0.3,
    "noise": 0.3,
    "low_bits": 0.3,
    "jpeg": 0.2,
}
#: The acquisition steps of :func:`acquisition_shift`, in the order they are applied.
ACQUISITION = ("pale", "chromo", "debris", "illumination", "blur", "dim_saturate", "stain", "dab", "noise", "low_bits",
               "jpeg")
#: Default range of the defocus σ, px (``augment.blur_sigma``, whose default it is).
BLUR_SIGMA = tuple(AugmentConfig().blur_sigma)
REFLECT = cv2.BORDER_REFLECT_101


def _probability(cfg: AugmentConfig, key: str) -> float:
    """A switch (checked by :class:`~pipeline.config.params.AugmentConfig`): ``true`` → the default p
    of :data:`DEFAULT_P`, a number → that p, ``false`` → 0."""
    value = getattr(cfg, key)
    if value is True:
        return DEFAULT_P[key]
    return float(value or 0.0)


def sample_seed(*keys: int) -> int:
    """A 32-bit seed from integers such as (run seed, epoch, sample index); stable across runs."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def unit_float(image: np.ndarray) -> np.ndarray:
    """A stored image as float32 in [0, 1]: integer counts divided by the dtype's maximum (8-bit by
    255, 16-bit by 65535), floats as they are. (H, W, C) in, (H, W, C) float32 out.

    The training loader's hot path, for images that ``prepare`` stored: not
    ``pipeline.files.io``'s reader scaling, which also takes signed, boolean and any-range float
    input (a user's file), at the cost of checks per call."""
    if np.issubdtype(image.dtype, np.integer):
        return image.astype(np.float32) * np.float32(1.0 / np.iinfo(image.dtype).max)
    return np.asarray(image, dtype=np.float32)


def random_crop(arrays: tuple[np.ndarray, ...], size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The same random ``size`` × ``size`` window of arrays of one shape.

    Where the arrays are smaller than ``size``, the window is their whole extent, reflect-padded
    (``cv2.BORDER_REFLECT_101``, numpy's ``'reflect'``) evenly on both sides, as albumentations'
    ``PadIfNeeded`` then ``RandomCrop`` do; reflection repeats where the pad exceeds the array.

    Parameters
    ----------
    arrays : tuple of (H, W[, C]) arrays, any dtype
    size : int
    rng : numpy Generator
        Draws the window's corner, uniform over every position.

    Returns
    -------
    crops : list of (size, size[, C]) arrays, each of its input's dtype (views where no padding
        was needed).
    """
    h, w = arrays[0].shape[:2]
    y, x = int(rng.integers(0, max(h - size, 0) + 1)), int(rng.integers(0, max(w - size, 0) + 1))
    ph, pw = max(size - h, 0), max(size - w, 0)
    crops = []
    for a in arrays:
        a = a[y : y + size, x : x + size]
        if ph or pw:
            pad = [(ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2)] + [(0, 0)] * (a.ndim - 2)
            a = np.pad(a, pad, mode="reflect")
        crops.append(a)
    return crops


def _geometric(cfg: AugmentConfig) -> list:
    """The albumentations transforms of image and targets after the crop (module docstring, "Geometry")."""
    t = []
    if cfg.scale:
        lo, hi = cfg.scale
        t.append(A.Affine(scale=(lo, hi), keep_ratio=True, border_mode=REFLECT, p=DEFAULT_P["scale"]))
    if p := _probability(cfg, "flips"):
        t += [A.HorizontalFlip(p=p), A.VerticalFlip(p=p)]
    if p := _probability(cfg, "rot90"):
        t.append(A.RandomRotate90(p=p))
    if p := _probability(cfg, "elastic"):
        t.append(A.ElasticTransform(alpha=cfg.elastic_alpha, sigma=cfg.elastic_sigma, border_mode=REFLECT, p=p))
    return t


def _photometric(cfg: AugmentConfig) -> list:
    """The albumentations transforms of the normalised image (module docstring, "Appearance")."""
    t = []
    if p := _probability(cfg, "brightness_contrast"):
        t.append(A.RandomBrightnessContrast(0.2, 0.2, p=p))
    if p := _probability(cfg, "gamma"):
        t.append(A.RandomGamma((80, 120), p=p))
    if p := _probability(cfg, "color_to_gray"):
        t += [
            A.ToGray(num_output_channels=3, p=p),
            A.MultiplicativeNoise((0.6, 1.4), per_channel=True, elementwise=False, p=p),
        ]
    if p := _probability(cfg, "invert"):
        t.append(A.InvertImg(p=p))
    return t


def _hed_jitter(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """H&E stain variation: scale and shift each stain in HED space (float32 RGB in [0, 1])."""
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(image, 1e-6, 1.0))
    hed = hed * rng.uniform(0.7, 1.3, 3) + rng.uniform(-0.03, 0.03, 3)
    return hed2rgb(hed).astype(np.float32)


def dab_stain(image: np.ndarray, positive: np.ndarray, haematoxylin: float = 0.3, dab: float = 1.0,
              eosin: float = 0.0) -> np.ndarray:
    """Immunohistochemistry of a nuclear antigen made from a stained image, in HED space
    (``skimage.color.rgb2hed``): the ``positive`` nuclei keep ``haematoxylin`` of their
    haematoxylin optical density and take ``dab`` times it as DAB (brown), edges softened by
    σ 1 px; eosin is scaled by ``eosin`` (a haematoxylin counterstain has none).

    Parameters
    ----------
    image : (H, W, 3) float RGB in [0, 1]
    positive : (H, W) bool, the DAB-positive nuclei's pixels

    Returns
    -------
    image : (H, W, 3) float32 RGB in [0, 1]
    """
    from skimage.color import hed2rgb, rgb2hed

    hed = rgb2hed(np.clip(image, 1e-6, 1.0))
    soft = cv2.GaussianBlur(positive.astype(np.float32), (0, 0), 1.0)
    density = hed[..., 0] - hed[..., 0].min()
    out = np.zeros_like(hed)
    out[..., 0] = hed[..., 0] - (1 - haematoxylin) * soft * density
    out[..., 1] = hed[..., 1] * eosin
    out[..., 2] = dab * soft * density
    return np.clip(hed2rgb(out), 0.0, 1.0).astype(np.float32)


#: The share of a nucleus's equivalent radius, inward from its outline, that :func:`pale_nuclei` keeps
#: as it is (the paling ramps up over as much again): the nuclear membrane with its marginated
#: chromatin, which outlines a vesicular nucleus (about a tenth of its diameter).
PALE_RIM = 0.2


def pale_nuclei(image: np.ndarray, labels: np.ndarray, keep: float, rim: float = PALE_RIM) -> np.ndarray:
    """Stained nuclei made pale and vesicular, their rim and texture kept: in each colour channel's
    optical density, the inside of each nucleus brought towards the median level outside the
    nuclei by its mean excess over that level, ``keep`` of the excess staying; the density's
    deviation from that mean (nucleoli, chromatin grain) kept; the rim, ``rim`` of the nucleus's
    equivalent radius inward from its outline, kept as it is, the paling ramping up over as much
    again; no pixel made lighter than the level around it (no halo). Large pale vesicular nuclei,
    as in breast carcinoma at 40× (``augment.pale``, ``bench_robustness.py`` ``pale``).

    Parameters
    ----------
    image : (H, W, 3) float RGB in [0, 1] or uint8
    labels : (H, W) int, 0 = background, one id per nucleus
    keep : float in [0, 1]
    rim : float >= 0
        Share of each nucleus's equivalent radius (px: sqrt(area / π)) kept as it is.

    Returns
    -------
    image : (H, W, 3) of ``image``'s dtype and range
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    if not labels.max() or labels.all():
        return image
    scale = 255.0 if image.dtype == np.uint8 else 1.0
    density = -np.log(np.clip(image.astype(np.float32) / np.float32(scale), 1 / 255, 1.0))
    flat = labels.ravel()
    count = np.maximum(np.bincount(flat), 1)
    level = np.stack([np.bincount(flat, density[..., c].ravel(), count.size) / count for c in range(3)], -1)
    around = np.median(density[labels == 0], axis=0)
    excess = np.maximum(level - around, 0).astype(np.float32)[labels]
    # depth inside its own nucleus (px from the outline or a touching neighbour), per equivalent radius
    depth = ndi.distance_transform_edt((labels > 0) & ~find_boundaries(labels, mode="inner"))
    radius = np.sqrt(count / np.pi)
    ramp = np.clip((depth / radius[labels] - rim) / max(rim, 1e-6), 0, 1) * (labels > 0)
    cut = (1 - keep) * ramp.astype(np.float32)[..., None] * excess
    density = np.maximum(density - cut, np.minimum(density, around))
    out = np.exp(-density) * scale
    return (np.clip(np.rint(out), 0, 255).astype(np.uint8) if image.dtype == np.uint8
            else np.clip(out, 0, 1).astype(image.dtype))


def random_dab(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """:func:`dab_stain` of a stained crop with random settings (module docstring, ``dab``):
    a share in [0, 1] of the nuclei (4-connected components of ``mask``, (H, W) uint8) positive,
    haematoxylin kept [0.1, 0.5], DAB [0.5, 1.5], eosin [0, 0.3]; float32 (H, W, 3) in [0, 1]."""
    n, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    chosen = np.concatenate([[False], rng.random(max(n - 1, 0)) < rng.uniform(0, 1)])
    return dab_stain(image, chosen[components], rng.uniform(0.1, 0.5), rng.uniform(0.5, 1.5), rng.uniform(0, 0.3))


def vignette(shape: tuple[int, int], centre: tuple[float, float], radius: float, edge_gain: float) -> np.ndarray:
    """(H, W, 1) float32 gain of an uneven illumination: 1 at ``centre`` (row, col in px; it may
    lie outside the image), falling quadratically with the distance to ``edge_gain`` at ``radius``
    px, never below 0.1."""
    h, w = shape
    y, x = np.ogrid[0:h, 0:w]
    r2 = ((y - centre[0]) ** 2 + (x - centre[1]) ** 2).astype(np.float32) / np.float32(radius**2)
    return np.maximum(1 - (1 - edge_gain) * r2, 0.1).astype(np.float32)[..., None]


def linear_ramp(shape: tuple[int, int], angle: float) -> np.ndarray:
    """(H, W, 1) float32 rising linearly from 0 to 1 across an image in the direction ``angle``
    (radians; 0: left to right, π/2: top to bottom)."""
    h, w = shape
    y, x = np.ogrid[0:h, 0:w]
    t = (np.cos(angle) * x / max(w - 1, 1) + np.sin(angle) * y / max(h - 1, 1)).astype(np.float32)
    return ((t - t.min()) / max(float(t.max() - t.min()), 1e-6))[..., None]


def illumination_field(shape: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    """A random :func:`vignette`: (H, W, 1) float32 gain, 1 at its centre (within half a crop of the
    crop's centre), falling to 0.4–0.9 at one crop side (max(H, W)) from it, never below 0.1."""
    h, w = shape
    side = float(max(h, w))
    centre = ((h - 1) / 2 + rng.uniform(-0.5, 0.5) * side, (w - 1) / 2 + rng.uniform(-0.5, 0.5) * side)
    return vignette(shape, centre, side, rng.uniform(0.4, 0.9))


def ramp(image: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A random background ramp for an (H, W, C) image: (H, W, 1) float32 rising linearly from 0
    across the image, in a random direction, to up to 0.3 of the image's 1–99 % range."""
    h, w = image.shape[:2]
    lo, hi = np.percentile(image[:: max(1, h // 64), :: max(1, w // 64)], [1, 99])
    angle = rng.uniform(0, 2 * np.pi)
    return np.float32(rng.uniform(0, 0.3) * (hi - lo)) * linear_ramp((h, w), angle)


def acquisition_shift(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator,
                      p: dict[str, float], blur_sigma: tuple[float, float] = BLUR_SIGMA) -> np.ndarray:
    """Simulate another microscope on raw intensities (module docstring, "Acquisition").

    Parameters
    ----------
    image : (H, W, 3) float32 in [0, 1]
        Raw (not yet normalised) intensities.
    mask : (H, W) uint8
        1 on nuclei (picks the nuclei made saturated by ``dim_saturate``).
    rng : numpy Generator
    p : dict
        Probability of each step of :data:`ACQUISITION` (0 skips it).
    blur_sigma : (low, high)
        Range of the defocus σ in px.

    Returns
    -------
    image : (H, W, 3) float32 in [0, 1]
    """
    image = np.asarray(image, dtype=np.float32)
    dark_background = float(np.median(image)) < 0.5
    colour = colourfulness(image) > 0.02
    # no draw while the step is off, so that the crops of the recipes before it stay the same
    if colour and p.get("pale", 0) and rng.random() < p["pale"]:
        _, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
        image = pale_nuclei(image, components, rng.uniform(0.2, 0.6))
    if dark_background and (p.get("chromo", 0) or p.get("debris", 0)):
        image = _bright_objects(image, mask, rng, p)
    if p.get("illumination", 0) and rng.random() < p["illumination"]:
        image = np.clip(image * illumination_field(image.shape[:2], rng) + ramp(image, rng), 0.0, 1.0)
    if rng.random() < p.get("blur", 0):
        sigma = rng.uniform(*blur_sigma)
        image = cv2.GaussianBlur(image, (0, 0), sigma, borderType=REFLECT)
    if dark_background and rng.random() < p.get("dim_saturate", 0):
        image = image * np.float32(rng.uniform(0.05, 0.4))
        n, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
        if n > 1:
            k = min(int(rng.integers(1, 4)), max(1, (n - 1) // 3))  # a minority of the nuclei
            chosen = rng.choice(np.arange(1, n), size=k, replace=False)
            bright = np.isin(components, chosen)
            image[bright] *= np.float32(rng.uniform(5.0, 40.0))
        image = np.minimum(image, 1.0)
    if colour and rng.random() < p.get("stain", 0):
        image = _hed_jitter(image, rng)
    if colour and p.get("dab", 0) and rng.random() < p["dab"]:
        image = random_dab(image, mask, rng)
    if rng.random() < p.get("noise", 0):
        # grey noise on a grey image: per-channel noise would make fluorescence look coloured and
        # pipeline.method.intensity would average it back to grey, at a third of the variance
        shape = image.shape if colour else (*image.shape[:2], 1)
        image = image + rng.normal(0.0, rng.uniform(0.005, 0.05), shape).astype(np.float32)
    image = np.clip(image, 0.0, 1.0)
    if rng.random() < p.get("low_bits", 0):
        levels = np.float32(2 ** int(rng.integers(6, 9)) - 1)
        image = np.round(image * levels) / levels
    if rng.random() < p.get("jpeg", 0):
        quality = int(rng.integers(30, 91))
        ok, buf = cv2.imencode(".jpg", np.round(image * 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality])
        image = cv2.imdecode(buf, cv2.IMREAD_COLOR).astype(np.float32) / np.float32(255.0)
    return np.ascontiguousarray(image, dtype=np.float32)


def _bright_objects(image: np.ndarray, mask: np.ndarray, rng: np.random.Generator, p: dict[str, float]) -> np.ndarray:
    """The ``chromo`` and ``debris`` steps of :func:`acquisition_shift` (module docstring) on an
    (H, W, 3) float32 image in [0, 1] whose nuclei are ``mask`` (H, W) 1; the same objects in every
    channel. Drawn only for the steps switched on (the crops of other recipes stay the same)."""
    n, components = cv2.connectedComponents(mask.astype(np.uint8), connectivity=4)
    if n < 2:
        return image
    grey = image.mean(axis=2) * np.float32(255.0)  # the generators' floor of 1 grey level is 8-bit's
    level = grey
    if p.get("chromo", 0) and rng.random() < p["chromo"]:
        level = chromocentres(level, components, rng)
    debris = bool(p.get("debris", 0)) and rng.random() < p["debris"]
    if debris:
        share, brightness = debris_draw(rng)
        level = bright_debris(level, components, rng, share, brightness, fragments=bool(rng.random() < 0.5))
    out = image + ((level - grey) / np.float32(255.0))[..., None]
    if debris and rng.random() >= 0.5:  # a camera that does not saturate: the crop over its maximum
        return out / max(float(out.max()), 1.0)
    return np.minimum(out, 1.0)


class Augmentation:
    """``callable(image, classes, mask, border, weights, seed=None) -> same tuple``.

    Geometry (image and targets), then the acquisition shift and the normalisation (image only),
    then appearance transforms (image only); see the module docstring.

    Parameters
    ----------
    geometric, photometric : list of albumentations transforms
    crop : int, optional
        :func:`random_crop` of this size first (None: the whole image goes on).
    acquisition : dict
        Probabilities of the :func:`acquisition_shift` steps (empty: none).
    normalize : dict or None
        Keywords of :func:`pipeline.method.intensity.normalize_image` for the crop; None: do not
        normalise (the image is then expected normalised already).
    seed : int, optional
    blur_sigma : (low, high)
        Defocus σ range of :func:`acquisition_shift`, px.

    Parameters (of the call)
    ------------------------
    image : ndarray
        (H, W, 3): float in [0, 1], or uint8/uint16 counts as stored (converted by
        :func:`unit_float` after the crop).
    classes, mask, border : ndarray
        uint8 (H, W).
    weights : ndarray
        float32 (H, W) (float16 is accepted and returned as float32).
    seed : int, optional
        Reseed before transforming (see :meth:`reseed`); same seed + same input → same output.

    Returns
    -------
    The five arrays transformed alike: image float32 (h, w, 3) clipped to [0, 1], the targets
    uint8 (h, w), weights float32 (h, w); ``(h, w) = (crop, crop)`` when cropping.
    """

    def __init__(self, geometric: list, photometric: list | None = None, acquisition: dict | None = None,
                 normalize: dict | None = None, seed: int | None = None,
                 blur_sigma: tuple[float, float] = BLUR_SIGMA, crop: int | None = None):
        self.crop = int(crop) if crop else None
        self.transforms = list(geometric) + list(photometric or [])
        self.geometric = A.Compose(geometric, p=1.0) if geometric else None
        self.photometric = A.Compose(photometric, p=1.0) if photometric else None
        self.acquisition = {k: v for k, v in (acquisition or {}).items() if v}
        self.normalize = normalize
        self.blur_sigma = tuple(blur_sigma)
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Seed the generators shared by all transforms (one numpy and one python generator for
        the albumentations steps, independent numpy generators for the acquisition shift and the
        crop)."""
        self.seed = seed
        for k, compose in enumerate((self.geometric, self.photometric)):
            if compose is not None:
                sub = None if seed is None else sample_seed(seed, k)
                compose.set_random_state(np.random.default_rng(sub), random.Random(sub))
        self.rng = np.random.default_rng(None if seed is None else sample_seed(seed, 2))
        self.crop_rng = np.random.default_rng(None if seed is None else sample_seed(seed, 3))

    def __call__(self, image, classes, mask, border, weights, seed: int | None = None):
        if seed is not None:
            self.reseed(seed)
        if self.crop:
            image, classes, mask, border, weights = random_crop(
                (image, classes, mask, border, weights), self.crop, self.crop_rng)
        image = np.ascontiguousarray(unit_float(image))
        if self.geometric is not None:
            targets = np.stack([classes, mask, border, weights], axis=-1).astype(np.float32)
            out = self.geometric(image=image, mask=targets)
            t = out["mask"]
            image = np.clip(out["image"], 0.0, 1.0, dtype=np.float32)
            classes, mask, border = (np.ascontiguousarray(t[..., i]).astype(np.uint8) for i in range(3))
            weights = np.ascontiguousarray(t[..., 3])
        if self.acquisition:
            image = acquisition_shift(image, mask, self.rng, self.acquisition, self.blur_sigma)
        if self.normalize is not None:
            image = normalize_image(image, **self.normalize)
        if self.photometric is not None:
            image = np.clip(self.photometric(image=image)["image"], 0.0, 1.0, dtype=np.float32)
        return image, classes, mask, border, np.asarray(weights, dtype=np.float32)

    def __repr__(self) -> str:
        names = ", ".join([f"RandomCrop({self.crop})"] * bool(self.crop) + [type(t).__name__ for t in self.transforms])
        steps = ", ".join(self.acquisition)
        return f"Augmentation([{names}], acquisition=[{steps}], seed={self.seed})"


def build_augmentation(cfg: AugmentConfig | Mapping, train: bool, seed: int | None = None) -> Augmentation:
    """Build the augmentation from the ``augment`` section of ``params.yaml``.

    Parameters
    ----------
    cfg : AugmentConfig or mapping
        The ``augment`` section (keys in the module docstring; a mapping is checked by
        :class:`pipeline.config.params.AugmentConfig`, whose defaults fill missing keys).
    train : bool
        True: the random train pipeline; False: the identity (validation, inference).
    seed : int, optional
        Initial seed of the shared generators (None: fresh entropy).

    Returns
    -------
    augment : Augmentation
        ``augment(image, classes, mask, border, weights, seed=None) -> same tuple``.
    """
    if not train:
        return Augmentation([], seed=seed)
    from pipeline.method.intensity import NORMALIZATION

    if not isinstance(cfg, AugmentConfig):
        cfg = AugmentConfig.from_dict(cfg)
    normalize = dict(NORMALIZATION) if cfg.normalize else None
    acquisition = {k: _probability(cfg, k) for k in ACQUISITION}
    return Augmentation(_geometric(cfg), _photometric(cfg), acquisition, normalize, seed, cfg.blur_sigma, cfg.crop)


def _discs(shape: tuple[int, int], centres: np.ndarray, radii: np.ndarray, levels: np.ndarray) -> np.ndarray:
    """(H, W) float32 of filled discs (rows of ``centres`` (row, col) px, ``radii`` px), each at its
    level (the brightest where they overlap), edges softened by a Gaussian of σ 0.5 px."""
    out = np.zeros(shape, np.float32)
    order = np.argsort(levels, kind="stable")  # the brightest drawn last
    for (y, x), r, v in zip(np.rint(centres[order]).astype(int), radii[order], levels[order], strict=True):
        cv2.circle(out, (int(x), int(y)), max(1, int(round(r))), float(v), -1)
    return cv2.GaussianBlur(out, (0, 0), 0.5)


#: Bright debris (``augment.debris``, ``bench_robustness.py``'s ``debris``): the share of pixels the
#: objects cover and their brightness (a multiple of the nuclei's excess over the background), each
#: drawn per image, log-uniform (:func:`debris_draw`).
DEBRIS = {"share": (0.005, 0.03), "brightness": (5.0, 50.0)}


def debris_draw(rng: np.random.Generator) -> tuple[float, float]:
    """(share, brightness) of one image's debris, each log-uniform in :data:`DEBRIS`."""
    share, brightness = (float(np.exp(rng.uniform(*np.log(DEBRIS[k])))) for k in ("share", "brightness"))
    return share, brightness


def bright_debris(level: np.ndarray, labels: np.ndarray, rng: np.random.Generator, share: float,
                  brightness: float, fragments: bool) -> np.ndarray:
    """Bright objects that are not nuclei pasted on the background of a fluorescence field: a few
    blobs 1–2 nucleus diameters wide (saturated debris, dust, a mitotic clump), or small bright
    fragments 0.2–0.4 of a diameter in 1–3 clusters (apoptotic bodies), ``brightness`` times the
    nuclei's median excess over the background and covering ``share`` of the pixels, never on a
    nucleus (``bench_robustness.py`` ``debris``).

    Parameters
    ----------
    level : (H, W) float32, the field's grey level
    labels : (H, W) int, 0 = background, one id per nucleus (with at least one nucleus)
    share : float, the share of pixels to cover (fewer when the background has no room)
    brightness, fragments
        The objects' excess over the background, as a multiple of the nuclei's; fragments or blobs.

    Returns
    -------
    level : (H, W) float32, the objects added (unclipped)
    """
    from scipy import ndimage as ndi

    from pipeline.method.scale import median_diameter

    diameter = max(median_diameter(labels), 4.0)
    background = float(np.median(level[labels == 0]))
    excess = max(float(np.median(level[labels > 0])) - background, 1.0)
    room = ndi.distance_transform_edt(labels == 0)  # px to the nearest nucleus
    target, covered, objects = share * labels.size, 0.0, []
    clusters = rng.uniform(0, 1, (int(rng.integers(1, 4)), 2)) * labels.shape
    for _ in range(10_000):
        if covered >= target:
            break
        if fragments:
            r = diameter * rng.uniform(0.1, 0.2)
            centre = clusters[rng.integers(len(clusters))] + rng.normal(0, 1.5 * diameter, 2)
        else:
            r = diameter * rng.uniform(0.5, 1.0)
            centre = rng.uniform(0, 1, 2) * labels.shape
        y, x = np.clip(np.rint(centre).astype(int), 0, np.array(labels.shape) - 1)
        if room[y, x] > r + 1:
            objects.append((y, x, r))
            covered += np.pi * r * r
    if not objects:
        return level
    centres, radii = np.array([o[:2] for o in objects], float), np.array([o[2] for o in objects])
    return np.maximum(level, background + _discs(labels.shape, centres, radii,
                                                 np.full(len(objects), brightness * excess)))


def chromocentres(level: np.ndarray, labels: np.ndarray, rng: np.random.Generator,
                  spots: tuple[int, int] = (1, 6), size: tuple[float, float] = (0.1, 0.25),
                  brightness: tuple[float, float] = (1.5, 4.0)) -> np.ndarray:
    """Bright sub-nuclear foci, as the chromocentres of mouse nuclei: in each nucleus, a number of
    spots in ``spots`` (inclusive), each ``size`` of the nucleus's equivalent diameter across and
    ``brightness`` times the nucleus's mean excess over the background, inside the nucleus
    (``bench_robustness.py`` ``chromo``).

    Parameters
    ----------
    level : (H, W) float32, the field's grey level
    labels : (H, W) int, 0 = background, one id per nucleus

    Returns
    -------
    level : (H, W) float32, the spots added (unclipped)
    """
    from scipy import ndimage as ndi

    n = int(labels.max())
    if not n:
        return level
    background = float(np.median(level[labels == 0])) if (labels == 0).any() else 0.0
    flat = labels.ravel()
    area = np.bincount(flat, minlength=n + 1)[1:]
    mean = np.bincount(flat, level.ravel(), n + 1)[1:] / np.maximum(area, 1)
    depth = ndi.distance_transform_edt(labels > 0)
    counts = rng.integers(spots[0], spots[1] + 1, n)
    owner = np.repeat(np.arange(1, n + 1), counts)
    diameters = 2 * np.sqrt(area / np.pi)
    radii = diameters[owner - 1] * rng.uniform(*size, owner.size) / 2
    # a random pixel of the nucleus at least a spot radius from its edge (its deepest pixel if none)
    pixels = np.flatnonzero(flat)
    order = pixels[np.argsort(flat[pixels], kind="stable")]
    start = np.concatenate([[0], np.cumsum(area)])[:-1]
    picks = order[start[owner - 1] + (rng.random(owner.size) * area[owner - 1]).astype(int)]
    inside = depth.ravel()[picks] > radii
    deepest = ndi.maximum_position(depth, labels, np.arange(1, n + 1))
    centres = np.where(inside[:, None], np.column_stack(np.unravel_index(picks, labels.shape)),
                       np.array(deepest, float).reshape(-1, 2)[owner - 1])
    levels = background + rng.uniform(*brightness, owner.size) * np.maximum(mean[owner - 1] - background, 1.0)
    spots_ = _discs(labels.shape, centres, radii, levels)
    return np.where(labels > 0, np.maximum(level, spots_), level).astype(np.float32)
