"""Marker-positive nuclei: the threshold on a channel's per-nucleus means (``--positive CH=auto|VALUE``).

A nucleus is positive for a channel when its mean (``mean_<ch>``) is above the threshold. A
threshold is given (``VALUE``, in the file's units) or set by :func:`auto_threshold`:

1. **Background.** The channel's level ``b`` outside every nucleus (and cell), the median, and its
   noise, 1.4826 × MAD (:func:`background_level`; piece by piece on a slide, :class:`Background`).
   A background more than half of one value (clipped at zero, as 8-bit confocal images often are)
   has a MAD of 0: its noise is then 1.4826 × the median distance from ``b`` of the pixels that
   differ from it (exact for a Gaussian clipped at its centre), so ``noise_<ch>`` is never a
   silent 0.
2. **Scale.** Each nucleus's mean becomes ``y = asinh((mean − b) / s)``: linear within ``s`` of the
   background, logarithmic above (marker levels are log-normal, negatives sit near the
   background). ``s`` is chosen by maximum likelihood (as Box and Cox choose a power): the
   likelihood of the means themselves (the fit on ``y`` times the Jacobian ``1/√((mean − b)² + s²)``)
   over ``s`` = ``m · 2^k``, ``k = −6..6``, ``m`` the median of ``|mean − b|``: the scale on which
   the means look most like two Gaussians, from logarithmic to linear. Never under the precision
   of a nucleus's mean, ``noise / √(median area)`` (:func:`mean_precision`): below it the log
   scale stretches noise, and nuclei tied at a clipped background become a population of zero
   width that the likelihood prefers to any other.
3. **Two populations.** A mixture of two Gaussians is fitted to ``y`` (EM from Otsu's split) and
   compared with one Gaussian (at its own best scale). **No threshold** (NaN, with the reason) only
   when: fewer than :data:`MIN_NUCLEI` nuclei; every nucleus the same; the smaller population under
   :data:`MIN_GROUP` nuclei; one Gaussian as good by BIC (all positive, all negative). Otherwise
   the threshold is set, and marked **weak** (``Threshold.weak``, flagged by callers) when the
   evidence is: a BIC gain under :data:`MIN_BIC_GAIN`, Ashman's ``D = √2 |μ1 − μ2| / √(σ1² + σ2²)``
   under :data:`MIN_SEPARATION` (two equal Gaussians are bimodal from D = 2), or a fitted mixture
   that does not dip between its means to :data:`MAX_DIP` of its lower peak.
4. **Threshold** at the valley of the fitted mixture between the two means (its lowest density,
   where one cuts a bimodal histogram); a mixture with no valley there: where the two weighted
   populations are equally likely. Mapped back to the file's units: ``b + s · sinh(y*)``.

Chosen on synthetic fields (``python -m benchmarks.validate_positivity``: 5-95 % positive,
contrasts 1.5-10, 16-bit and clipped 8-bit): the rule of the noise scale, equal likelihood and
refusal below D = 2 made no call in 43 of 70 conditions; the chosen scale and the valley agree with
the truth as well as Otsu's threshold on the means or better from a contrast of 3.

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
    ``separation`` is Ashman's D of the fit (NaN for a given threshold); ``weak`` says why a
    threshold that was set rests on weak evidence ('' when it does not); ``scale`` is the ``s`` of
    ``asinh((mean − b) / s)`` it was set on, in the file's units.
    """

    value: float
    reason: str = ""
    separation: float = math.nan
    weak: str = ""
    scale: float = math.nan

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
    pixel in one piece). A background more than half of one value (clipped) gets the noise of the
    pixels that differ from it (module docstring).

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
            deviation = np.abs(values - level)
            noise = float(np.median(deviation))
            if noise == 0 and (deviation > 0).any():  # more than half of one value: the others' distance
                noise = float(np.median(deviation[deviation > 0]))
            self.pieces.append((level, MAD_SD * noise))

    def level(self) -> tuple[float, float]:
        """Level and noise (1.4826 × MAD), in the file's units; NaN when no pixel was added."""
        if self.counts is not None and self.counts.any():
            values = np.flatnonzero(self.counts)
            counts = self.counts[values]
            level = _middle(values + np.float64(self.low), counts)
            deviation = np.abs(values + np.float64(self.low) - level)
            order = np.argsort(deviation, kind="stable")
            noise = _middle(deviation[order], counts[order])
            if noise == 0 and (deviation > 0).any():  # more than half of one value: the others' distance
                order = order[deviation[order] > 0]
                noise = _middle(deviation[order], counts[order])
            return level, float(MAD_SD * noise)
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
    """A field's unit of intensity above its background: its noise, else (a background of one value:
    synthetic) the median distance of the nuclei's means from it, else 1. The unit on which
    ``--positive-scope batch`` pools fields (:func:`pool_fields`)."""
    if math.isfinite(noise) and noise > 0:
        return noise
    spread = float(np.median(np.abs(means - level))) if means.size else 0.0
    return spread if math.isfinite(spread) and spread > 0 else 1.0


def auto_threshold(means: np.ndarray, level: float | np.ndarray, scale: float | None = None,
                   floor: float = 0.0) -> Threshold:
    """The threshold separating two populations of per-nucleus means (module docstring).

    Parameters
    ----------
    means : (N,) float
        ``mean_<ch>`` of the nuclei, in the file's units.
    level : float or (N,) float
        The background level (:func:`background_level`) of each nucleus's image.
    scale : float, optional
        ``s``, in the file's units (default: chosen by maximum likelihood, :func:`choose_scale`).
    floor : float
        The smallest ``s`` to choose: the precision of a nucleus's mean (:func:`mean_precision`).

    Returns
    -------
    threshold : Threshold
        ``value`` mapped back with the first nucleus's level when ``level`` is an array (a batch's
        fields pooled: :func:`pool_fields`); NaN with a reason when the split is refused.
    """
    means = np.asarray(means, np.float64)
    level = np.broadcast_to(np.asarray(level, np.float64), means.shape)
    keep = np.isfinite(means) & np.isfinite(level)
    d = means[keep] - level[keep]
    if d.size < MIN_NUCLEI:
        return Threshold(math.nan, f"{d.size} nuclei, fewer than {MIN_NUCLEI} to find two populations in")
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):
        return Threshold(math.nan, "every nucleus measures the same")
    if scale is None:
        scale, one = choose_scale(d, floor)
    else:
        one = _one_gaussian_x(d, scale)
    y = np.arcsinh(d / scale)
    found = _split(y, _two_gaussians(y), one - float(np.sum(_log_jacobian(d, scale))))
    value = from_scaled(found.value, float(level[keep][0]), scale) if found.ok else math.nan
    return Threshold(value, found.reason, found.separation, found.weak, float(scale))


#: Scales tried by :func:`choose_scale`: ``2**k`` times the median distance of the means from the background.
SCALE_STEPS = tuple(2.0**k for k in range(-6, 7))
#: Most nuclei :func:`choose_scale` fits at each scale (an even subset of the sorted means beyond).
SCALE_SAMPLE = 5000


def mean_precision(noise: float, area: np.ndarray) -> float:
    """The noise of a nucleus's mean, ``noise / √(median area)``: the smallest ``s`` worth choosing
    (below it asinh stretches noise, and nuclei tied at a clipped background, into a population of
    their own); 0 when unknown. ``area`` (N,) px."""
    area = np.asarray(area, np.float64)
    area = area[np.isfinite(area) & (area > 0)]
    if not area.size or not (math.isfinite(noise) and noise > 0):
        return 0.0
    return float(noise / math.sqrt(float(np.median(area))))


def choose_scale(d: np.ndarray, floor: float = 0.0) -> tuple[float, float]:
    """The ``s`` of ``asinh(d / s)`` on which ``d`` (means minus background, (N,) float) is most
    likely a mixture of two Gaussians, of :data:`SCALE_STEPS` times their median distance from 0
    and ``floor`` (the steps under ``floor`` left out), and the best log-likelihood of one Gaussian
    over the same scales (both of ``d`` itself, Jacobian included)."""
    d = np.asarray(d, np.float64)
    sample = np.sort(d)[np.linspace(0, d.size - 1, SCALE_SAMPLE).astype(int)] if d.size > SCALE_SAMPLE else d
    typical = float(np.median(np.abs(d)))
    typical = typical if typical > 0 else float(np.abs(d).max())
    best, best_one = (-math.inf, typical), -math.inf
    scales = [typical * step for step in SCALE_STEPS if typical * step > floor]
    for s in ([floor] if floor > 0 else []) + scales:
        jacobian = float(np.sum(_log_jacobian(sample, s)))
        likelihood = _two_gaussians(np.arcsinh(sample / s))[3] + jacobian
        best = max(best, (likelihood, s))
        best_one = max(best_one, _one_gaussian_x(d, s))
    return best[1], best_one


def pool_fields(means: list[np.ndarray], levels: list[float], units: list[float],
                floor: float = 0.0) -> tuple[Threshold, list[float]]:
    """One :func:`auto_threshold` over several fields (``--positive-scope batch``), each field's means
    put in its own unit first: ``(mean − b_i) / u_i``, so that fields scaled differently (a gain, a
    per-image contrast stretch) pool as one.

    Parameters
    ----------
    means : list of (N_i,) float
        Each field's ``mean_<ch>``, in its file's units.
    levels, units : list of float
        Each field's background level ``b_i`` and unit ``u_i`` (:func:`noise_scale`).
    floor : float
        The smallest ``s``, in units of ``u`` (:func:`auto_threshold`).

    Returns
    -------
    pooled : Threshold
        Set on the pooled fields (its ``value`` and ``scale`` in units of ``u``).
    thresholds : list of float
        Each field's threshold in its own units, ``b_i + u_i · value`` (NaN without one).
    """
    pooled = [(np.asarray(m, np.float64) - b) / u for m, b, u in zip(means, levels, units, strict=True)]
    found = auto_threshold(np.concatenate(pooled) if pooled else np.zeros(0), 0.0, floor=floor)
    return found, [b + u * found.value for b, u in zip(levels, units, strict=True)]


def _log_jacobian(d: np.ndarray, s: float) -> np.ndarray:
    """log |dy/dd| of ``y = asinh(d / s)``."""
    return -0.5 * np.log(d * d + s * s)


def _one_gaussian_x(d: np.ndarray, s: float) -> float:
    """Log-likelihood of ``d`` as one Gaussian on ``asinh(d / s)`` (Jacobian included)."""
    return _one_gaussian(np.arcsinh(d / s)) + float(np.sum(_log_jacobian(d, s)))


def from_scaled(y: float, level: float, scale: float) -> float:
    """A threshold on ``asinh((mean − level) / scale)`` in the file's units."""
    return level + scale * math.sinh(y)


def scaled_threshold(y: np.ndarray) -> Threshold:
    """The split of means already scaled (``y``, (N,) float), the one Gaussian compared on ``y``
    itself; the value is in ``y``'s units."""
    y = np.asarray(y, np.float64)
    if y.size < MIN_NUCLEI:
        return Threshold(math.nan, f"{y.size} nuclei, fewer than {MIN_NUCLEI} to find two populations in")
    if np.ptp(y) <= 1e-12 * max(1.0, float(np.abs(y).max())):
        return Threshold(math.nan, "every nucleus measures the same")
    return _split(y, _two_gaussians(y), _one_gaussian(y))


def _split(y: np.ndarray, two: tuple, one: float) -> Threshold:
    """Decide on the two-Gaussian fit ``two`` of ``y`` (:func:`_two_gaussians`) against one Gaussian
    of log-likelihood ``one`` (on ``y``): the threshold in ``y``'s units, or NaN with the real
    reason; weak evidence named in ``weak``."""
    n = y.size
    (w1, w2), (m1, m2), (s1, s2), loglik = two
    separation = math.sqrt(2) * abs(m2 - m1) / math.sqrt(s1**2 + s2**2)
    gain = (-2 * one + 2 * math.log(n)) - (-2 * loglik + 5 * math.log(n))
    smaller = min(w1, w2) * n
    if smaller < MIN_GROUP:
        return Threshold(math.nan, f"one population: the smaller of two would hold {smaller:.1f} nuclei, "
                                   f"fewer than {MIN_GROUP}", separation)
    if gain <= 0:
        return Threshold(math.nan, f"one population: one Gaussian fits as well as two (BIC gain {gain:.1f})",
                         separation)
    grid = np.linspace(m1, m2, 2001)
    low = w1 * np.exp(-0.5 * ((grid - m1) / s1) ** 2) / s1
    high = w2 * np.exp(-0.5 * ((grid - m2) / s2) ** 2) / s2
    density = low + high
    valley = int(np.argmin(density))
    dip = float(density[valley] / min(density[0], density[-1]))
    weak = [f"BIC gain {gain:.1f}, under {MIN_BIC_GAIN:g}" if gain < MIN_BIC_GAIN else "",
            f"Ashman's D {separation:.2f}, under {MIN_SEPARATION:g}" if separation < MIN_SEPARATION else "",
            f"no dip between them ({dip:.2f} of the lower peak)" if dip > MAX_DIP else ""]
    if 0 < valley < grid.size - 1:
        y_star = float(grid[valley])
    else:
        crossing = np.flatnonzero(high >= low)
        y_star = float(grid[crossing[0]]) if crossing.size else float((m1 + m2) / 2)
    return Threshold(y_star, "", separation, "; ".join(w for w in weak if w))


def _one_gaussian(y: np.ndarray) -> float:
    """Log-likelihood of the maximum-likelihood Gaussian."""
    sd = max(float(y.std()), _floor(y))
    return float(np.sum(-0.5 * ((y - y.mean()) / sd) ** 2 - math.log(sd * math.sqrt(2 * math.pi))))


def _floor(y: np.ndarray) -> float:
    """Smallest standard deviation of a population: no collapse onto tied values."""
    return max(1e-6, 1e-3 * float(np.ptp(y)))


#: Where EM starts besides Otsu's split: the splits at these quantiles of ``y`` (small groups at
#: either end, which a start from Otsu's split can miss).
EM_STARTS = (0.1, 0.9)


def _two_gaussians(y: np.ndarray) -> tuple[tuple, tuple, tuple, float]:
    """Weights, means (ascending), standard deviations and log-likelihood of a two-Gaussian mixture
    fitted to ``y`` by EM, the best of the starts from Otsu's split and from :data:`EM_STARTS`."""
    from skimage.filters import threshold_otsu

    splits = [threshold_otsu(y, nbins=256), *np.quantile(y, EM_STARTS)]
    fits = [_em(y, y > split) for split in splits]
    return max(fits, key=lambda fit: fit[3])


def _em(y: np.ndarray, upper: np.ndarray, iterations: int = 500) -> tuple[tuple, tuple, tuple, float]:
    """:func:`_two_gaussians` from one start: ``upper`` (N,) bool, the nuclei of the upper population."""
    floor = _floor(y)
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
