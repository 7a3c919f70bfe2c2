"""Marker-positive nuclei: the threshold on a channel's per-nucleus means (``--positive CH=auto|VALUE``).

A nucleus is positive for a channel when its mean (``mean_<ch>``) is above the threshold. A
threshold is given (``VALUE``, in the file's units) or set by :func:`auto_threshold`:

1. **Background.** The channel's level and noise outside every nucleus (and cell):
   their median ``b`` and ``s = 1.4826 × MAD`` (:func:`background_level`; piece by piece on a
   slide, :class:`Background`).
2. **Scale.** Each nucleus's mean becomes ``y = asinh((mean − b) / s)``: linear within a few
   noise units of the background, logarithmic above. Marker levels are log-normal (a log scale
   makes the positive population symmetric), but negative nuclei sit at the background, where a
   log of background-subtracted means is undefined or has a long left tail made of noise, which a
   two-population fit takes for a population of its own (measured: ``benchmarks/bench_measure.py
   --rules``).
3. **Two populations.** A mixture of two Gaussians is fitted to the ``y`` of the nuclei
   (EM started from Otsu's split) and compared with one Gaussian. The split is kept only when
   all of these hold: at least :data:`MIN_NUCLEI` nuclei; at least :data:`MIN_GROUP` in each
   population; the two-population fit better by BIC; the populations separated (Ashman's
   ``D = √2 |μ1 − μ2| / √(σ1² + σ2²) ≥`` :data:`MIN_SEPARATION`, the usual criterion for a clean
   split: two equal Gaussians are bimodal from D = 2); and the fitted mixture bimodal, its density
   between the two means dipping to at most :data:`MAX_DIP` of its lower peak (unequal groups need
   more than D = 2). Measured on 1,000 all-negative populations of 300 nuclei (15 % spread, above
   the background): 2 split by chance (6 without the dip); of 300 populations with 3 % positive
   nuclei at contrast 3, 288 split (289 without it).
4. **Threshold** where the two weighted populations are equally likely (between their means),
   mapped back to the file's units: ``b + s · sinh(y*)``.

When the split is refused there is **no threshold** (NaN, with the reason), never a made-up one:
all nuclei positive, all negative, one nucleus, or a constant channel look alike to a rule that
only sees one population. Callers leave the calls empty and flag the image; give ``VALUE`` then.

Must not: read files or know column names beyond the arguments.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: Fewest nuclei :func:`auto_threshold` splits.
MIN_NUCLEI = 10
#: Fewest nuclei in each of the two populations.
MIN_GROUP = 3
#: Smallest Ashman's D between the two populations.
MIN_SEPARATION = 2.0
#: Largest density of the fitted mixture between the two means, relative to its lower peak: above it
#: the mixture is one population with a shoulder (a small group in the tail of one Gaussian).
MAX_DIP = 0.9
#: Smallest gain in BIC of two populations over one ("very strong" evidence, Kass & Raftery 1995).
MIN_BIC_GAIN = 10.0
#: MAD → standard deviation of a Gaussian.
MAD_SD = 1.4826


@dataclass(frozen=True)
class Threshold:
    """A channel's threshold on its per-nucleus means, in the file's units.

    ``value`` is NaN when none could be set, ``reason`` then says why (for the ``flag``);
    ``separation`` is Ashman's D of the fit (NaN for a given threshold).
    """

    value: float
    reason: str = ""
    separation: float = math.nan

    @property
    def ok(self) -> bool:
        return math.isfinite(self.value)


def background_level(channel: np.ndarray, outside: np.ndarray) -> tuple[float, float]:
    """Median and noise (1.4826 × MAD) of a channel's pixels where ``outside`` is True.

    Parameters
    ----------
    channel : (H, W) array
        As stored in the file.
    outside : (H, W) bool
        The background (no nucleus, no cell).

    Returns
    -------
    level, noise : float
        In the file's units; NaN when there is no background pixel.
    """
    background = Background()
    background.add(np.asarray(channel)[outside])
    return background.level()


class Background:
    """:func:`background_level` of a channel's background seen piece by piece (a slide's tiles, each
    pixel in one piece).

    Integer pixels of up to 16 bits are counted in a histogram, so the level and noise are exactly
    those of all the pixels at once (the mean of the middle two values for an even count, as
    ``np.median``); other pixels (floats, 32-bit) give the median of the pieces' levels and noises.
    """

    def __init__(self):
        self.counts: np.ndarray | None = None  #: pixels of each value, from ``low``
        self.low = 0
        self.pieces: list[tuple[float, float]] = []

    def add(self, pixels: np.ndarray) -> None:
        """Count one piece's background pixels (any shape, as stored)."""
        pixels = np.asarray(pixels)
        if pixels.dtype.kind in "ui" and pixels.dtype.itemsize <= 2:
            info = np.iinfo(pixels.dtype)
            self.low = int(info.min)
            counts = np.bincount((pixels.ravel().astype(np.int32) - self.low), minlength=int(info.max) - self.low + 1)
            self.counts = counts if self.counts is None else self.counts + counts
        elif pixels.size:
            values = pixels.astype(np.float64, copy=False).ravel()
            level = float(np.median(values))
            self.pieces.append((level, float(MAD_SD * np.median(np.abs(values - level)))))

    def level(self) -> tuple[float, float]:
        """Level and noise (1.4826 × MAD), in the file's units; NaN when no pixel was added."""
        if self.counts is not None and self.counts.any():
            values = np.flatnonzero(self.counts)
            counts = self.counts[values]
            level = _middle(values + np.float64(self.low), counts)
            deviation = np.abs(values + np.float64(self.low) - level)
            order = np.argsort(deviation, kind="stable")
            return level, float(MAD_SD * _middle(deviation[order], counts[order]))
        if not self.pieces:
            return math.nan, math.nan
        levels = np.array(self.pieces)
        return float(np.median(levels[:, 0])), float(np.median(levels[:, 1]))


def _middle(values: np.ndarray, counts: np.ndarray) -> float:
    """The median of ``values`` (ascending) repeated ``counts`` times: the mean of the middle two for
    an even total."""
    ends = np.cumsum(counts)
    total = int(ends[-1])
    low, high = (values[np.searchsorted(ends, rank, side="right")] for rank in ((total - 1) // 2, total // 2))
    return float((low + high) / 2)


def noise_scale(noise: float, means: np.ndarray, level: float) -> float:
    """The scale ``s`` of :func:`auto_threshold`: the background noise, else (a background of one
    value: clipped, or synthetic) the median distance of the nuclei's means from it, else 1."""
    if math.isfinite(noise) and noise > 0:
        return noise
    spread = float(np.median(np.abs(means - level))) if means.size else 0.0
    return spread if math.isfinite(spread) and spread > 0 else 1.0


def auto_threshold(means: np.ndarray, level: float | np.ndarray, scale: float) -> Threshold:
    """The threshold separating two populations of per-nucleus means (module docstring).

    Parameters
    ----------
    means : (N,) float
        ``mean_<ch>`` of the nuclei, in the file's units.
    level : float or (N,) float
        The background level (:func:`background_level`) of each nucleus's image.
    scale : float
        ``s`` (:func:`noise_scale`), in the file's units.

    Returns
    -------
    threshold : Threshold
        ``value`` in units of ``y`` mapped back with the first nucleus's level when ``level`` is an
        array (callers of a batch map it per image with :func:`from_scaled`); NaN with a reason
        when the split is refused.
    """
    means = np.asarray(means, np.float64)
    level = np.broadcast_to(np.asarray(level, np.float64), means.shape)
    keep = np.isfinite(means) & np.isfinite(level)
    y = np.arcsinh((means[keep] - level[keep]) / scale)
    scaled = scaled_threshold(y)
    if not scaled.ok:
        return scaled
    return Threshold(from_scaled(scaled.value, float(level[keep][0]), scale), "", scaled.separation)


def from_scaled(y: float, level: float, scale: float) -> float:
    """A threshold on ``asinh((mean − level) / scale)`` in the file's units."""
    return level + scale * math.sinh(y)


def scaled_threshold(y: np.ndarray) -> Threshold:
    """:func:`auto_threshold` on means already scaled (``y``); the value is in ``y``'s units."""
    y = np.asarray(y, np.float64)
    n = y.size
    if n < MIN_NUCLEI:
        return Threshold(math.nan, f"{n} nuclei, fewer than {MIN_NUCLEI} to find two populations in")
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        return Threshold(math.nan, "every nucleus measures the same")
    (w1, w2), (m1, m2), (s1, s2), loglik = _two_gaussians(y)
    one = _one_gaussian(y)
    separation = math.sqrt(2) * abs(m2 - m1) / math.sqrt(s1**2 + s2**2)
    bic_two, bic_one = -2 * loglik + 5 * math.log(n), -2 * one + 2 * math.log(n)
    smaller = min(w1, w2) * n
    if smaller < MIN_GROUP or bic_two > bic_one - MIN_BIC_GAIN or separation < MIN_SEPARATION:
        return Threshold(math.nan, f"one population (Ashman's D {separation:.1f}, at least {MIN_SEPARATION:g} "
                                   f"needed; smaller group {smaller:.0f} nuclei)", separation)
    grid = np.linspace(m1, m2, 2001)
    low = w1 * np.exp(-0.5 * ((grid - m1) / s1) ** 2) / s1
    high = w2 * np.exp(-0.5 * ((grid - m2) / s2) ** 2) / s2
    density = low + high
    dip = float(density.min() / min(density[0], density[-1]))
    if dip > MAX_DIP:
        return Threshold(math.nan, f"one population (the two-population fit has no dip between them: "
                                   f"{dip:.2f} of the lower peak)", separation)
    crossing = np.flatnonzero(high >= low)
    y_star = float(grid[crossing[0]]) if crossing.size else float((m1 + m2) / 2)
    return Threshold(y_star, "", separation)


def _one_gaussian(y: np.ndarray) -> float:
    """Log-likelihood of the maximum-likelihood Gaussian."""
    sd = max(float(y.std()), _floor(y))
    return float(np.sum(-0.5 * ((y - y.mean()) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))))


def _floor(y: np.ndarray) -> float:
    """Smallest standard deviation of a population: no collapse onto tied values."""
    return max(1e-6, 1e-3 * float(np.ptp(y)))


def _two_gaussians(y: np.ndarray, iterations: int = 500) -> tuple[tuple, tuple, tuple, float]:
    """Weights, means (ascending), standard deviations and log-likelihood of a two-Gaussian mixture
    fitted by EM from Otsu's split of ``y``."""
    from skimage.filters import threshold_otsu

    floor = _floor(y)
    split = threshold_otsu(y, nbins=256)
    upper = y > split
    if not upper.any() or upper.all():
        upper = y > np.median(y)
    r = upper.astype(np.float64)  # responsibility of the upper population
    loglik = -math.inf
    for _ in range(iterations):
        w2 = float(np.clip(r.mean(), 1e-9, 1 - 1e-9))
        m1 = float(np.sum((1 - r) * y) / max(np.sum(1 - r), 1e-12))
        m2 = float(np.sum(r * y) / max(np.sum(r), 1e-12))
        s1 = max(math.sqrt(float(np.sum((1 - r) * (y - m1) ** 2) / max(np.sum(1 - r), 1e-12))), floor)
        s2 = max(math.sqrt(float(np.sum(r * (y - m2) ** 2) / max(np.sum(r), 1e-12))), floor)
        d1 = (1 - w2) * np.exp(-0.5 * ((y - m1) / s1) ** 2) / (s1 * math.sqrt(2 * math.pi))
        d2 = w2 * np.exp(-0.5 * ((y - m2) / s2) ** 2) / (s2 * math.sqrt(2 * math.pi))
        total = np.maximum(d1 + d2, 1e-300)
        r = d2 / total
        new = float(np.sum(np.log(total)))
        if new - loglik < 1e-9 * abs(new):
            loglik = new
            break
        loglik = new
    if m1 > m2:
        (m1, m2), (s1, s2), w2 = (m2, m1), (s2, s1), 1 - w2
    return (1 - w2, w2), (m1, m2), (s1, s2), loglik


def call_positive(means: np.ndarray, threshold: float) -> np.ndarray:
    """Positive calls: ``means > threshold``, as a float array (1.0, 0.0; NaN everywhere when the
    threshold is NaN, and for a NaN mean)."""
    means = np.asarray(means, np.float64)
    if not math.isfinite(threshold):
        return np.full(means.shape, np.nan)
    return np.where(np.isfinite(means), (means > threshold).astype(np.float64), np.nan)
