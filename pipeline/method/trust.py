"""Whether an image's count can be trusted: the signals of the failures that can be named, and
the words ``flag`` says them in.

Each signal is a number computed from the normalised image, its labels and the diameter it was
segmented for (and, for the scale signals, the network's answers at other scales, which the
Segmenter computes: :meth:`pipeline.model.segmenter.Segmenter.scale_probes`). :func:`trust_flags`
turns them into the phrases of ``flag``; ``benchmarks/validate_flags.py`` measures how often
they are right.

Must not: run a network, read files or choose a diameter.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.method.image_types import BRIGHTFIELD, HISTOLOGY

#: The diameter factors (× the diameter the image was segmented for) at which the Segmenter asks
#: the network again, in the window with the most structure (one pass each, tta 'none'): the scale
#: signals. A probe at 4 × was never consistent on the 300 images of
#: grouped fold 0 (benchmarks/validate_flags.py) and cost a pass: left out.
PROBE_FACTORS = (0.5, 2.0)
#: Below this confidence a count is flagged as not to be trusted: the 2nd percentile of a model's
#: confidence on the grouped validation images under controlled shifts (docs/decisions.md,
#: "Confidence flag at 0.78"); ``benchmarks/bench_robustness.py`` prints the calibration for any
#: model. The diameter estimate looks for textured nuclei at larger scales under it too
#: (:meth:`pipeline.model.diameter.DiameterEstimator._textured_nuclei`).
MIN_CONFIDENCE = 0.78
#: A probe "explains the image" when the nuclei it finds are of about the size asked (within this
#: many octaves), at least 3 of them, and the network is at least as confident there as at the
#: diameter used, less this margin.
PROBE_OCTAVES, PROBE_MARGIN = 1 / 3, 0.0
#: Scale drift: the size of the nuclei found at 2 × the diameter over that at 0.5 × (octaves). An
#: answer that holds whatever scale it is asked at drifts by 0; one that follows the scale asked, by 2
#: (nuclei cut or merged as told). Flagged over half an octave: the nuclei found change size by
#: more than √2 over a 4-fold change of scale (set a priori, between the two).
DRIFT = 0.5
#: Fragmentation: the share of the nuclei that lie, 3 or more, in one smoothed blob of signal of
#: which they cover under :data:`BLOB_COVER` (bright spots inside dim nuclei, pieces of pale H&E
#: nuclei); flagged over :data:`FRAGMENTED`. The cover limit lies between what chromocentres can
#: cover of their nucleus (issue 88's generator: up to 6 spots of a quarter of its diameter, 0.375)
#: and what touching nuclei cover of their cluster (synthetic: 0.64-0.72), set a priori, not fitted to
#: any source (0.3, fitted to Kromp's clustered nuclei, missed the chromocentres it is for:
#: tests/model/test_segmenter.py). 0.3 of the nuclei in pieces is a count off by more than the 25 %
#: that makes an image bad (benchmarks/validate_flags.py).
BLOB_COVER, FRAGMENTED = 0.5, 0.3
#: Missed signal: the share of the image's foreground (smoothed signal over its Otsu level) more
#: than a quarter diameter from any nucleus; flagged over :data:`UNCOVERED`: a quarter of the signal
#: missed, as a quarter of the count makes an image bad (synthetic: 0.92 with only a bright object
#: found among dim nuclei, 0 with all).
UNCOVERED = 0.25
#: Saturation: a clipped plateau (normalised value 1 in every channel) larger than this many
#: median nuclei is a saturated object that took the image's contrast.
SATURATED_NUCLEI = 2.0
#: Out of focus: nucleus edges wider than this fraction of the diameter (10-90 % rise): synthetic
#: discs of 22 px with σ 1 px edges measure 0.13, blurred by σ = diameter / 4 0.45, by σ = diameter / 3 0.51.
BLURRED = 0.45

#: An Otsu class this rare (share of the pixels) is a few bright objects, not the nuclei
#: (:func:`foreground_level`).
RARE_BRIGHT = 0.05

#: Images over this many pixels are measured on every n-th pixel (:func:`image_signals`).
MAX_PIXELS = 4_000_000

#: The phrases of ``flag``, by signal.
PHRASES = {
    "larger_scale": "nuclei may be larger than the diameter used (spots inside nuclei, such as chromocentres, "
                    "or pieces of pale nuclei, counted as nuclei): check the overlay, or give --diameter",
    "smaller_scale": "nuclei may be smaller than the diameter used (clumps counted as one): check the overlay, "
                     "or give --diameter",
    "scale_drift": "the nuclei found change size with the scale they are looked for at (touching nuclei "
                   "merged, or nuclei cut): count uncertain, check the overlay, or give --diameter",
    "fragmented": "many nuclei lie several to one larger blob (spots or fragments of one nucleus counted apart)",
    "uncovered": "much of the stained signal lies outside the nuclei found (dim nuclei missed?)",
    "saturated": "saturated objects larger than a nucleus (debris, dust, clumps): dim nuclei may be missed",
    "blurred": "out of focus (blurred nucleus edges): outlines and splits unreliable",
}


def grey_signal(image: np.ndarray, image_type: str) -> np.ndarray:
    """(H, W) float32 nuclear signal of a normalised (H, W, 3) image in [0, 1]: its mean grey level;
    for stained (histology) images the haematoxylin of a colour deconvolution (eosin and cytoplasm
    left out), for bright-field ones the grey level inverted (their nuclei are dark)."""
    grey = np.asarray(image, np.float32)
    if image_type == HISTOLOGY and grey.ndim == 3 and grey.shape[2] == 3:
        from skimage.color import rgb2hed

        return rgb2hed(np.clip(grey, 0, 1))[..., 0].astype(np.float32)
    grey = grey.mean(axis=2) if grey.ndim == 3 else grey
    return 1.0 - grey if image_type == BRIGHTFIELD else grey


def _smooth(signal: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(signal, max(0.5, float(sigma)), truncate=3.0)


def foreground_level(values: np.ndarray) -> float:
    """The level over which a smoothed signal is foreground: Otsu's, or, when its upper class is
    rare (under :data:`RARE_BRIGHT` of the values: a few bright objects set it), the lower of the
    three-class Otsu levels, under which dim nuclei would otherwise fall."""
    from skimage.filters import threshold_multiotsu, threshold_otsu

    values = values[:: max(1, values.size // 200_000)]
    if np.ptp(values) == 0:
        return float(values.max(initial=0.0))
    level = float(threshold_otsu(values))
    if np.mean(values > level) < RARE_BRIGHT and np.unique(values).size > 3:
        level = float(threshold_multiotsu(values, classes=3)[0])
    return level


def fragmentation(signal: np.ndarray, labels: np.ndarray, diameter: float) -> float:
    """Share of the nuclei (0-1) lying 3 or more in one blob of the smoothed ``signal`` ((H, W)
    float, σ = diameter / 4 px, over half its :func:`foreground_level` above the background) of which they cover
    under :data:`BLOB_COVER` of the pixels. ``labels`` (H, W) int; ``diameter`` px. NaN without nuclei."""
    return _fragmentation(*_foreground(signal, diameter), labels)


def uncovered(signal: np.ndarray, labels: np.ndarray, diameter: float) -> float:
    """Share (0-1) of the foreground of ``signal`` ((H, W) float smoothed at σ = diameter / 4 px,
    over its :func:`foreground_level`) further than diameter / 4 px from every nucleus of ``labels``."""
    return _uncovered(*_foreground(signal, diameter), labels, diameter)


def _foreground(signal: np.ndarray, diameter: float) -> tuple[np.ndarray, float]:
    """``signal`` smoothed at σ = diameter / 4 px, and its :func:`foreground_level`."""
    smooth = _smooth(signal, diameter / 4)
    return smooth, foreground_level(smooth.ravel())


def _fragmentation(smooth: np.ndarray, level: float, labels: np.ndarray) -> float:
    from scipy import ndimage

    n = int(labels.max(initial=0))
    if n == 0:
        return float("nan")
    background = float(np.median(smooth[smooth < level])) if (smooth < level).any() else 0.0
    blobs, _ = ndimage.label(smooth > background + 0.5 * (level - background))
    ids, first = np.unique(labels[labels > 0], return_index=True)
    coords = np.flatnonzero(labels.ravel() > 0)[first]  # one pixel of each nucleus: its blob
    blob_of = blobs.ravel()[coords]
    per_blob = np.bincount(blob_of, minlength=blobs.max() + 1)
    blob_area = np.bincount(blobs.ravel(), minlength=blobs.max() + 1)
    covered = np.bincount(blobs.ravel(), weights=(labels.ravel() > 0), minlength=blobs.max() + 1)
    cover = covered / np.maximum(blob_area, 1)
    crowded = (blob_of > 0) & (per_blob[blob_of] >= 3) & (cover[blob_of] < BLOB_COVER)
    return float(crowded.sum() / max(ids.size, 1))


def _uncovered(smooth: np.ndarray, level: float, labels: np.ndarray, diameter: float) -> float:
    from scipy import ndimage

    foreground = smooth > level
    total = int(foreground.sum())
    if total == 0:
        return 0.0
    near = ndimage.distance_transform_edt(labels == 0) <= max(1.0, diameter / 4)
    return float((foreground & ~near).sum() / total)


def saturated_nuclei(image: np.ndarray, labels: np.ndarray) -> float:
    """Area of the largest clipped plateau (normalised value ≥ 0.999 in every channel of the
    (H, W, C) or (H, W) ``image``), in median nucleus areas of ``labels`` (0: none or no nuclei)."""
    from scipy import ndimage

    clipped = np.asarray(image) >= 0.999
    clipped = clipped.all(axis=2) if clipped.ndim == 3 else clipped
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    if not clipped.any() or not areas.size:
        return 0.0
    plateaus, n = ndimage.label(clipped)
    return float(np.bincount(plateaus.ravel())[1:].max() / np.median(areas))


def edge_width(signal: np.ndarray, labels: np.ndarray, diameter: float) -> float:
    """Width (as a fraction of ``diameter``) of the nuclei's edges: their contrast (the 90th
    percentile of ``signal`` inside them less its median further than diameter / 2 px from any) over
    the median gradient magnitude on their outlines, × 0.8 (the 10-90 % rise of a linear ramp).
    ``signal``, ``labels``: (H, W); ``diameter`` px. NaN without nuclei, background or contrast."""
    from scipy import ndimage

    inside = labels > 0
    if not inside.any():
        return float("nan")
    far = ndimage.distance_transform_edt(~inside) > max(2.0, diameter / 2)
    edge = inside & ~ndimage.binary_erosion(inside)
    if not far.any() or not edge.any():
        return float("nan")
    contrast = float(np.percentile(signal[inside], 90) - np.median(signal[far]))
    slope = float(np.median(np.hypot(*np.gradient(_smooth(signal, 0.7)))[edge]))
    if contrast <= 0 or slope <= 0:
        return float("nan")
    return 0.8 * contrast / slope / diameter


def scale_signals(probes: dict[float, tuple[float | None, float, int]], confidence: float,
                  diameter: float) -> dict[str, float]:
    """The scale signals from the network's answers in one window: ``probes`` maps a factor of
    :data:`PROBE_FACTORS` to (median diameter found, px of the image, or None; confidence; nuclei
    found), ``confidence`` the network's at ``diameter`` px itself (the Segmenter gives the whole
    image's). Returns ``larger_scale`` / ``smaller_scale``:
    the confidence gained (may be < 0; NaN: no probe consistent) at the best larger / smaller probe whose
    nuclei are about the size asked (:data:`PROBE_OCTAVES`, 3 or more); ``scale_drift``: log2 of
    the diameter found at 2 × over that at 0.5 × (NaN unless both found some)."""
    out = {"larger_scale": float("nan"), "smaller_scale": float("nan"), "scale_drift": float("nan")}
    for factor, (found, conf, count) in probes.items():
        if found is None or count < 3 or abs(math.log2(found / (factor * diameter))) > PROBE_OCTAVES:
            continue
        key = "larger_scale" if factor > 1 else "smaller_scale"
        gain = conf - confidence
        out[key] = gain if not np.isfinite(out[key]) else max(out[key], gain)
    low, high = probes.get(0.5, (None,))[0], probes.get(2.0, (None,))[0]
    if low and high:
        out["scale_drift"] = math.log2(high / low)
    return out


def image_signals(image: np.ndarray, labels: np.ndarray, diameter: float, image_type: str) -> dict[str, float]:
    """Every signal computed from a normalised (H, W, 3) ``image``, its ``labels`` ((H, W) int) and
    the ``diameter`` (px) it was segmented for: ``fragmented``, ``uncovered``, ``saturated``, ``blurred``;
    on every n-th pixel of an image over :data:`MAX_PIXELS` (bounded time and memory)."""
    step = max(1, math.ceil(math.sqrt(labels.size / MAX_PIXELS)))
    if step > 1:  # a large image: every step-th pixel (the signals are shares and widths, not counts)
        image, labels, diameter = image[::step, ::step], labels[::step, ::step], diameter / step
    signal = grey_signal(image, image_type)
    smooth, level = _foreground(signal, diameter)  # one smoothing for both signals
    return {"fragmented": _fragmentation(smooth, level, labels),
            "uncovered": _uncovered(smooth, level, labels, diameter),
            "saturated": saturated_nuclei(image, labels),
            "blurred": edge_width(signal, labels, diameter)}


def trust_flags(signals: dict[str, float]) -> list[str]:
    """The phrases (:data:`PHRASES`) of the signals over their limits, in :data:`PHRASES` order."""
    over = {"larger_scale": signals.get("larger_scale", np.nan) >= -PROBE_MARGIN,
            "smaller_scale": signals.get("smaller_scale", np.nan) >= -PROBE_MARGIN,
            "scale_drift": signals.get("scale_drift", np.nan) > DRIFT,
            "fragmented": signals.get("fragmented", np.nan) > FRAGMENTED,
            "uncovered": signals.get("uncovered", np.nan) > UNCOVERED,
            "saturated": signals.get("saturated", np.nan) > SATURATED_NUCLEI,
            "blurred": signals.get("blurred", np.nan) > BLURRED}
    return [PHRASES[k] for k in PHRASES if over[k]]
