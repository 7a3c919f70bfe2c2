"""Whether an image's count can be trusted: the signals of the failures that can be named, and
the words ``flag`` says them in.

Each signal is a number computed from the normalised image, its labels and the diameter it was
segmented for (and, for the scale signals, the network's answers at other scales, which the
Segmenter computes: :meth:`pipeline.model.segmenter.Segmenter.scale_probes`). :func:`count_risk`
weighs them with the confidence, and :func:`trust_flags` turns those over their limits into the
phrases of ``flag`` when the risk is high. Each nucleus's confidence comes from the network's
probabilities in and around it (:func:`nucleus_evidence`, :func:`nucleus_confidence`).
``benchmarks/validate_flags.py`` fits the weights and measures how often they are right.

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

#: Probabilities are clipped to [EPS, 1 - EPS] before their logit.
EPS = 1e-3

#: What an image's count risk is judged on (:func:`image_evidence`): its confidence, the signals, and
#: the mean inner border of its nuclei (:func:`nuclei_signals`).
IMAGE_EVIDENCE = ("confidence", "larger_scale", "smaller_scale", "scale_drift", "fragmented", "uncovered",
                  "saturated", "blurred", "inner_border")
#: A signal not computed (or NaN) enters at its "not over" value (``inner_border``: no border inside).
ABSENT = {"confidence": 1.0, "larger_scale": -0.3, "smaller_scale": -0.3, "scale_drift": 0.0, "fragmented": 0.0,
          "uncovered": 0.0, "saturated": 0.0, "blurred": 0.0, "inner_border": math.log(EPS / (1 - EPS))}
#: The count risk (:func:`count_risk`): a logistic regression (classes balanced, intercept first) of
#: a bad count (off by over 25 %, or a DSB2018 score under 0.30) on :data:`IMAGE_EVIDENCE`, fitted
#: with the shipped model on every 8th image of grouped folds 1-4 of ``evaluation/sources.yaml``
#: (129 images, 43 bad: ``python -m benchmarks.validate_flags --folds all --every 8 --fit``).
IMAGE_WEIGHTS = (21.57, -19.82, 5.791, 0.0, 0.0, 1.247, 0.09569, 0.0, 0.0, 0.5758)
#: The sense of each evidence in the count risk: its weight is held ≥ 0 (+1: the higher, the riskier)
#: or ≤ 0 (−1) when it is fitted.
RISK_SENSE = {"confidence": -1, "larger_scale": 1, "smaller_scale": 1, "scale_drift": 1, "fragmented": 1,
              "uncovered": 1, "saturated": 1, "blurred": 1, "inner_border": 1}
#: The named failures are flagged only at or over this count risk: the threshold of the largest
#: recall less false alarms on folds 1-4 (docs/validation.md gives fold 0 and each source left out).
RISKY = 0.55
#: The phrase of an image at risk whose signals name no failure.
AT_RISK = "count uncertain (confidence and signals together): check the overlay"

#: The evidence behind each nucleus's confidence (:func:`nucleus_evidence`), in this order.
NUCLEUS_EVIDENCE = ("mask", "marker_peak", "halo", "inner_border", "smaller", "larger", "solidity")
#: Each nucleus's confidence is P(it matches a true nucleus at IoU ≥ 0.5): a logistic regression on
#: :data:`NUCLEUS_EVIDENCE` (intercept first), one per kind of image, fitted with the shipped model on
#: every 8th image of grouped folds 1-4 of ``evaluation/sources.yaml`` (``python -m
#: benchmarks.validate_flags --folds all --every 8 --fit``; docs/validation.md gives its
#: fold-0 and leave-one-source-out AUCs: 0.81 and 0.79 pooled, against 0.75 for the mean P(nucleus)
#: alone). Probabilities enter as logits.
NUCLEUS_WEIGHTS = {
    "fluorescence": (-12.949, 0.259, 0.767, -0.622, -0.013, 0.736, -0.685, 9.721),  # 5,355 nuclei
    "histology": (-9.801, 1.826, -0.141, -0.714, -0.162, 1.374, -1.321, 7.623),  # 3,710 nuclei
}

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


def image_evidence(signals: dict[str, float], confidence: float) -> np.ndarray:
    """(len(:data:`IMAGE_EVIDENCE`),) float64: an image's ``confidence`` and ``signals``
    (:meth:`pipeline.model.segmenter.Segmenter.trust_signals`), absent ones at :data:`ABSENT`,
    clipped to [-10, 50]."""
    values = {**signals, "confidence": confidence}
    raw = [values.get(k) for k in IMAGE_EVIDENCE]
    filled = [ABSENT[k] if v is None or not np.isfinite(v) else float(v) for k, v in zip(IMAGE_EVIDENCE, raw, strict=True)]
    return np.clip(filled, -10, 50)


def nuclei_signals(evidence: np.ndarray) -> dict[str, float]:
    """The image's signals from its nuclei's :func:`nucleus_evidence` ((N + 1, 7) float, NaN rows
    for absent labels): ``inner_border``, the mean over the nuclei of their inner border's logit
    (borders running through the nuclei found: merged, or cut unsure; NaN without nuclei)."""
    column = np.asarray(evidence, np.float64)[:, NUCLEUS_EVIDENCE.index("inner_border")]
    column = column[np.isfinite(column)]
    return {"inner_border": float(column.mean()) if column.size else float("nan")}


def count_risk(signals: dict[str, float], confidence: float) -> float:
    """The risk (0-1) that an image's count is bad (off by over 25 %, or a DSB2018 score under
    0.30), from its :func:`image_evidence` by :data:`IMAGE_WEIGHTS`."""
    return float(logistic(IMAGE_WEIGHTS, image_evidence(signals, confidence)))


def trust_flags(signals: dict[str, float], confidence: float | None = None) -> list[str]:
    """The phrases (:data:`PHRASES`) of the signals over their limits, in :data:`PHRASES` order;
    given the image's ``confidence``, only when its :func:`count_risk` is :data:`RISKY` or over
    (then :data:`AT_RISK` when no signal is over its limit)."""
    if confidence is not None and count_risk(signals, confidence) < RISKY:
        return []
    over = {"larger_scale": signals.get("larger_scale", np.nan) >= -PROBE_MARGIN,
            "smaller_scale": signals.get("smaller_scale", np.nan) >= -PROBE_MARGIN,
            "scale_drift": signals.get("scale_drift", np.nan) > DRIFT,
            "fragmented": signals.get("fragmented", np.nan) > FRAGMENTED,
            "uncovered": signals.get("uncovered", np.nan) > UNCOVERED,
            "saturated": signals.get("saturated", np.nan) > SATURATED_NUCLEI,
            "blurred": signals.get("blurred", np.nan) > BLURRED}
    phrases = [PHRASES[k] for k in PHRASES if over[k]]
    return phrases or ([AT_RISK] if confidence is not None else [])


def nucleus_evidence(mask: np.ndarray, marker: np.ndarray, labels: np.ndarray,
                     diameter: float | None = None) -> np.ndarray:
    """What each nucleus's confidence is judged on (:data:`NUCLEUS_EVIDENCE`).

    Parameters
    ----------
    mask, marker : (H, W) float
        P(nucleus) and P(marker) (:func:`pipeline.method.heads.mask_and_marker`) on the labels' grid.
    labels : (H, W) int array
        Instance labels, 0 = background.
    diameter : float, optional
        The nucleus diameter (px) the image was segmented for; None: the median nucleus's.

    Returns
    -------
    evidence : (labels.max() + 1, 7) float64
        Indexed by label value (NaN rows for 0 and values not present), columns
        :data:`NUCLEUS_EVIDENCE`: the logits of the mean P(nucleus) over the nucleus (``mask``), of
        its highest P(marker) (``marker_peak``: a nucleus the network never sees clear of a border),
        of the mean P(nucleus) over the background within 2 px of it (``halo``: the nucleus goes on
        beyond its outline, cut short or cut from a neighbour; none: −logit(EPS)), and of the mean
        P(nucleus) − P(marker) over its pixels 2 px or more inside (``inner_border``: a border runs
        through it, two merged; none: as ``halo``); ``smaller`` and ``larger``, the log of its area
        over a disc's of ``diameter``, split at 0; and its ``solidity``.
    """
    from scipy import ndimage
    from skimage.segmentation import expand_labels

    from pipeline.method.features import solidity

    labels = np.asarray(labels)
    n = int(labels.max(initial=0)) + 1
    area = np.bincount(labels.ravel(), minlength=n).astype(np.float64)
    present = area > 0
    present[0] = False

    near = np.where(labels == 0, expand_labels(labels, distance=2), 0)  # background within 2 px, by nearest nucleus
    deep = np.where(ndimage.grey_erosion(labels, size=5) == labels, labels, 0)  # 2 px or more inside
    peak = np.zeros(n)
    if present.any():
        peak[1:] = ndimage.maximum(marker, labels, index=np.arange(1, n))
    inside_mean, halo = _label_means(mask, labels, n), _label_means(mask, near, n)
    inner = _label_means(np.asarray(mask, np.float64) - marker, deep, n)
    expected = np.pi / 4 * diameter**2 if diameter else (np.median(area[present]) if present.any() else 1.0)
    ratio = np.log(np.where(present, area, 1) / expected)
    evidence = np.column_stack([_logit(inside_mean), _logit(peak), _logit(halo), _logit(inner),
                                np.minimum(ratio, 0), np.maximum(ratio, 0), solidity(labels)])
    evidence[~present] = np.nan
    return evidence


def evidence_from_probabilities(probs: np.ndarray, head: str, labels: np.ndarray,
                                diameter: float | None = None) -> np.ndarray:
    """:func:`nucleus_evidence` of ``labels`` ((H, W) int), segmented for nuclei of ``diameter`` px,
    from the probabilities they were made from ((C, h, w) float32 in ``head``'s layout, at any
    scale: resized to the labels' grid as :func:`pipeline.method.watershed.postprocess_to_shape`
    resizes them)."""
    from pipeline.method.heads import mask_and_marker
    from pipeline.method.scale import resize_probabilities

    mask, marker = mask_and_marker(probs, head)
    if mask.shape != labels.shape:
        mask, marker = resize_probabilities(np.stack([mask, marker]), tuple(labels.shape))
    return nucleus_evidence(mask, marker, labels, diameter)


def nucleus_confidence(evidence: np.ndarray, image_type: str | None) -> np.ndarray:
    """Each nucleus's confidence: P(it matches a true nucleus at IoU ≥ 0.5) from its
    :func:`nucleus_evidence` ((N + 1, 7) float) by :data:`NUCLEUS_WEIGHTS` of the kind of
    ``image_type`` (histology, else fluorescence). Returns (N + 1,) float32 in [0, 1], NaN where
    the evidence is."""
    return logistic(NUCLEUS_WEIGHTS["histology" if image_type == HISTOLOGY else "fluorescence"], evidence).astype(np.float32)


def logistic(weights, evidence: np.ndarray) -> np.ndarray:
    """1 / (1 + exp(−(w₀ + evidence · w))) of ``weights`` (intercept first: :data:`IMAGE_WEIGHTS`,
    :data:`NUCLEUS_WEIGHTS`) and ``evidence`` ((..., k) float, the last axis the k weighed);
    float64, NaN where the evidence is."""
    weights = np.asarray(weights, np.float64)
    score = weights[0] + np.asarray(evidence, np.float64) @ weights[1:]
    return 1.0 / (1.0 + np.exp(-np.clip(score, -50, 50)))


def _label_means(values: np.ndarray, labels: np.ndarray, n: int) -> np.ndarray:
    """(n,) mean of ``values`` over each label value of ``labels`` (0 where it has no pixel)."""
    total = np.bincount(labels.ravel(), weights=np.asarray(values, np.float64).ravel(), minlength=n)
    count = np.bincount(labels.ravel(), minlength=n)
    return np.divide(total, count, out=np.zeros(n), where=count > 0)


def _logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(np.asarray(p, np.float64), EPS, 1 - EPS)
    return np.log(p / (1 - p))
