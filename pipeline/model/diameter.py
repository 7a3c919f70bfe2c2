"""The nucleus diameter of an image, estimated by a scale-space prior that the network refines
(:meth:`DiameterEstimator.estimate_diameter`), as a base of :class:`pipeline.model.segmenter.Segmenter`.

Must not: segment whole images (the Segmenter does), or read files.
"""

from __future__ import annotations

import math
import threading

import numpy as np

from pipeline.method.heads import confidence
from pipeline.method.image_types import BRIGHTFIELD, HISTOLOGY, image_type_of
from pipeline.method.scale import content_window, largest_diameter, nucleus_diameters, scale_factor

#: Diameter search: the passes run at ``canonical · 2**k`` px for these k (those under the cap):
#: up to 16 × the canonical size, as far as :data:`pipeline.method.scale.MIN_FACTOR` shrinks.
SEARCH_OCTAVES = (-1, 0, 1, 2, 3, 4)
#: Side (px, at the network's scale) of the window each search pass looks at.
SEARCH_WINDOW = 384
#: The ``'blob'`` estimate is refined a second time only when the first refinement moved it by more than
#: this many octaves: a smaller move stays well inside the training zoom (±0.5 octave), and skipping
#: the pass saves one network pass (docs/decisions.md, "The speed envelope: a second refinement pass
#: only when the first moved the estimate").
REFINE_OCTAVES = 0.25
#: The second refinement is not kept when it moved the estimate more than DIVERGING times as far as
#: the first (dense nuclei shrunk can merge into clumps, whose size the next pass confirms larger
#: still: ×1.25 then ×2 on a MoNuSeg breast image, 18-px nuclei); a prior far too small climbs in
#: steady steps (×1.34 then ×1.39 on a dense-tissue image), which are kept.
DIVERGING = 2.0
#: Scale-space peaks at least this fraction of the strongest response, more than √2 × the
#: confirmed estimate, are refined too, and the larger size is taken when the network confirms
#: it: the bright spots inside nuclei (the chromocenters of mouse nuclei, H&E grain) give a
#: peak as strong as the nuclei's, and the network, shown them enlarged, confirms the spots.
NESTED_RESPONSE = 0.9
#: Stained images: nuclei this many times the confirmed estimate are looked for too. The scale-space
#: prior and the network can agree on the chromatin specks, rims or nucleoli of large pale
#: (vesicular) nuclei, which give no scale-space peak of their own: shown the image enlarged, the
#: network outlines the specks at its canonical size and so confirms them.
LARGER_PROBES = (2.0, 3.0)
#: Fluorescence nuclei with bright foci (chromocentres) are looked for at these many times the
#: estimate (:meth:`DiameterEstimator._textured_nuclei`): up to 5 ×, since foci of a fifth of
#: their nucleus's diameter are the strongest scale-space blobs. 4 and 5 × as well raised the
#: ``chromo`` condition of 32 fluorescence crops from 0.444 to 0.469 and changed no score of
#: the 174 real fluorescence images of grouped fold 0 (docs/decisions.md).
TEXTURED_PROBES = (2.0, 3.0, 4.0, 5.0)
#: A probe is taken when the network finds nuclei of about the probed size there (within
#: CONSISTENT_OCTAVES) and is more confident than at the estimate by at least CONFIDENCE_GAIN: whole
#: nuclei at their scale give crisper probabilities than their fragments enlarged (MoNuSeg's pale
#: image TCGA-G9-6363, 29-px nuclei: 0.76 at the 9-px specks, 0.85 at 3×). Set on MoNuSeg's 30
#: images, where a gain of 0.05 also took clumps twice the size of a dark image's nuclei (0.78 →
#: 0.84); over DSB2018's 107 stained images and the three other H&E sources no probe is taken.
CONSISTENT_OCTAVES, CONFIDENCE_GAIN = 1 / 3, 0.075

#: The network passes of the estimate under way in this thread, by scale: the steps of one estimate
#: ask for the same pass more than once (an unconfirmed prior is counted again, and a probe's
#: confidence is its refinement's first pass), and each runs once.
_PASSES = threading.local()


#: A clipped object stands alone when the ring 1–2 px around it is under this grey level (the
#: clipped top of a nucleus is ringed by the rest of the nucleus); the objects that stay must still
#: reach it at their top (99.8th percentile), or the clipped objects were the nuclei (saturated).
ALONE = 0.5


def without_bright_objects(image: np.ndarray) -> np.ndarray:
    """A normalised (H, W[, C]) float image with its clipped objects that stand alone (grey level at
    least :data:`pipeline.method.watershed.CLIPPED`, their ring under :data:`ALONE`; grown by 2 px)
    filled with the level around them (the median of the 2 px beyond, per channel), when clipped
    pixels are over :data:`pipeline.method.watershed.BRIGHT_SHARE` of the image and the rest of it
    still reaches :data:`ALONE`; else ``image`` itself. Bright debris left out of the range
    (:func:`pipeline.method.intensity.bright_objects`) clip, and give the strongest scale-space
    response, and the network's refinement, at their own size. Filled with the image's median
    instead, they stay as flat discs of a nucleus's level wherever nuclei cover half the image."""
    import cv2
    from scipy import ndimage as ndi

    from pipeline.method.watershed import bright_clipped

    found = bright_clipped(image)
    if found is None or found[1].all():
        return image
    grey, clipped = found
    n, objects = cv2.connectedComponents(clipped.astype(np.uint8), connectivity=8)
    kernel = np.ones((5, 5), np.uint8)

    def grow(ids: np.ndarray) -> np.ndarray:  # each pixel within 2 px of an object: its (largest) id
        return cv2.dilate(ids.astype(np.float32), kernel).astype(np.int64)

    around = grow(objects)
    ring = (around > 0) & ~clipped
    level = np.bincount(around[ring], grey[ring], n) / np.maximum(np.bincount(around[ring], minlength=n), 1)
    alone = level < ALONE
    alone[0] = False
    grown = grow(np.where(alone, np.arange(n), 0)[objects])
    mask = grown > 0
    if not mask.any() or mask.all() or np.percentile(grey[~mask], 99.8) < ALONE:
        return image
    beyond = np.where(mask | clipped, 0, grow(grown))
    planes = image.reshape(*image.shape[:2], -1)
    ids = np.arange(n)
    fill = np.stack([ndi.median(planes[..., c], beyond, ids) for c in range(planes.shape[-1])], axis=-1)
    none = np.bincount(beyond.ravel(), minlength=n) == 0  # nothing beyond (ndimage gives any value)
    fill[none] = np.median(planes[~mask], axis=0)
    out = planes.copy()
    out[mask] = fill[grown[mask]].astype(image.dtype)
    return out.reshape(image.shape)


class DiameterEstimator:
    """Diameter estimation for a class that has ``diameter`` (the canonical nucleus diameter, px, or
    None), ``estimator`` (the default method), ``head``, ``thresholds`` and
    ``predict_scaled(image, scale, tta)`` (the Segmenter)."""

    def estimate_diameter(self, image: np.ndarray, method: str | None = None,
                          image_type: str | None = None) -> float | None:
        """Median nucleus diameter of a normalised image, in its pixels (None: the model has no
        canonical diameter, ``'search'`` found no nucleus, or the image is bright-field).

        ``image_type`` is :func:`pipeline.method.image_types.image_type_of` the image (computed when not given). Bright-field
        images are not estimated: their contrast comes from whole cells, so the scale-space prior
        finds cells and the network's refinement drifts far from the nuclei (docs/decisions.md,
        "Bright-field images segmented at the canonical diameter").

        Two methods (``method``, default the host's ``estimator``), compared in the README:

        - ``'blob'``: a scale-space prior (:func:`pipeline.method.scale.blob_diameter`), refined by the
          network: the window with the most structure (:data:`SEARCH_WINDOW` px at the network's
          scale) is segmented at the prior's scale and the median diameter of the nuclei found
          replaces the estimate when it is within an octave of it; a second refinement follows
          when the first moved the estimate by more than :data:`REFINE_OCTAVES`, and is kept
          unless it moved the estimate much further than the first did (:data:`DIVERGING`);
          a larger scale-space peak nearly as strong (:data:`NESTED_RESPONSE`) is refined too
          and taken when the network confirms it (the bright spots inside nuclei give such
          a peak, and the network, shown them enlarged, confirms the spots); a prior the network
          does not confirm (under 3 nuclei found) gives way to a larger peak nearly as strong that
          it confirms at least as confidently (:meth:`_larger_peak`: the specks of 20x H&E
          peak at a quarter of the nuclei's size), and to ``'search'``'s answer when the network
          finds no nucleus at all there (a sparse field whose haze peaks at 3-5 times its few
          nuclei) or when it finds one or two and is surer at the search's answer by
          :data:`CONFIDENCE_GAIN` (a dense H&E field whose clumps peak at 3 times its nuclei),
          and the canonical diameter when the search finds none either (an empty field is not
          enlarged for its noise's grain); in stained images
          nuclei 2 and 3 times larger are probed (:data:`LARGER_PROBES`) and taken where the
          network finds nuclei of that size more confidently (large pale nuclei, whose specks
          and rims the prior finds, give no peak of their own);
        - ``'search'``: a first pass at up to six scales (:data:`SEARCH_OCTAVES`: nuclei of
          ``canonical · 2**k`` px brought to the canonical size). At the right scale the nuclei
          come out at about the canonical size and are confident; at too large a scale they are
          cut into canonical-size pieces, which also changes their implied size from pass to
          pass. Each pass's implied diameter (median nucleus diameter / scale) is scored by those
          three signals; the best is refined once at its own scale.

        ``'blob'`` looks for dark nuclei in stained images and bright ones in fluorescence, as the
        image type says (the image's own grey levels can mislead: one white hole in H&E tissue made
        its texture the nuclei, at a quarter of their size).

        Both keep the estimate at or under :func:`pipeline.method.scale.largest_diameter` (a quarter of
        the shorter side): beyond it, a bright structure such as an embryo or a tissue section is
        taken for one nucleus and every real nucleus is lost. When the prior lies beyond it,
        ``'blob'`` starts from the strongest scale-space peak under it instead, and from the
        canonical diameter when the network does not confirm that peak; when it confirms neither
        (a few nuclei that fill a small image, such as a 320-px crop of a 63x image: 1-3 nuclei
        of 50-80 px), the answer is ``'search'``'s.
        """
        if self.diameter is None:
            return None
        image_type = image_type or image_type_of(image)
        if image_type == BRIGHTFIELD:
            return None
        _PASSES.by_scale = {}
        try:
            return self._estimate(image, method or self.estimator, image_type)
        finally:
            _PASSES.by_scale = None

    def _estimate(self, image: np.ndarray, method: str, image_type: str) -> float | None:
        if image_type != HISTOLOGY:  # fluorescence: sized without its bright debris
            image = without_bright_objects(image)
        if method == "blob":
            estimate = self._estimate_blob(image, dark=image_type == HISTOLOGY)
            if estimate is not None:
                cap = largest_diameter(image.shape)
                estimate = (self._larger_nuclei(image, estimate, cap) if image_type == HISTOLOGY
                            else self._textured_nuclei(image, estimate, cap))
            return estimate
        if method == "search":
            return self._estimate_search(image)
        raise ValueError(f"method must be 'blob' or 'search', got {method!r}")

    def _measure(self, image: np.ndarray, diameter: float) -> float | None:
        """Median diameter (px of ``image``) of the nuclei the network finds in the window with
        the most structure when the image is resized for nuclei of ``diameter`` px (None: fewer
        than 3 nuclei)."""
        return self._probe(image, diameter)[0]

    def _probe(self, image: np.ndarray, diameter: float) -> tuple[float | None, float]:
        """:meth:`_measure`, and the network's confidence (:func:`pipeline.method.heads.confidence`) there."""
        scale = scale_factor(diameter, self.diameter)
        d, conf = self._search_pass(image, scale)
        return (float(np.median(d) / scale) if d.size >= 3 else None), conf

    def _larger_nuclei(self, image: np.ndarray, estimate: float, cap: float) -> float:
        """The diameter of larger nuclei than ``estimate`` (px) where the network finds them
        consistently and more confidently (:data:`LARGER_PROBES`, :data:`CONSISTENT_OCTAVES`,
        :data:`CONFIDENCE_GAIN`), else ``estimate``; never over ``cap``."""
        probes = [f * estimate for f in LARGER_PROBES if f * estimate <= cap]
        if not probes:
            return estimate
        _, best_confidence = self._probe(image, estimate)
        best = estimate
        for asked in probes:
            measured, conf = self._probe(image, asked)
            if (measured is not None and measured <= cap and abs(math.log2(measured / asked)) <= CONSISTENT_OCTAVES
                    and conf >= best_confidence + CONFIDENCE_GAIN):
                best, best_confidence = measured, conf
        return float(best)

    def _textured_nuclei(self, image: np.ndarray, estimate: float, cap: float) -> float:
        """The diameter of larger nuclei than ``estimate`` (px) when the network, asked at
        :data:`TEXTURED_PROBES` times it, settles on nuclei over √2 times as large (:meth:`_refine`)
        more confidently by :data:`CONFIDENCE_GAIN` than at the estimate (the most confident such
        size); else ``estimate``. Bright foci inside nuclei (the chromocentres of mouse cells) give
        the strongest scale-space response, and no peak at the nuclei's own size; the network,
        shown them at their size, is less sure than shown the nuclei at theirs (a confocal DAPI
        field: 0.70 at 4 px, 0.92 at 20; a dense-tissue crop with synthetic foci: 0.79 at 5.7 px,
        0.92 at 26). Asked whatever its confidence at the estimate, as :meth:`_larger_nuclei` is
        (docs/decisions.md). Never over ``cap``."""
        _, at_estimate = self._probe(image, estimate)
        best, best_confidence = estimate, at_estimate + CONFIDENCE_GAIN
        for start in [f * estimate for f in TEXTURED_PROBES if f * estimate <= cap]:
            refined, confirmed = self._refine(image, start, cap)
            if confirmed and refined > math.sqrt(2) * estimate:
                conf = self._probe(image, refined)[1]
                if conf >= best_confidence:
                    best, best_confidence = refined, conf
        return float(best)

    def _estimate_blob(self, image: np.ndarray, dark: bool | None = None) -> float | None:
        from pipeline.method.scale import blob_scale_space, strongest_blob

        cap = largest_diameter(image.shape)
        scale_space = blob_scale_space(image, dark=dark)  # stained images: dark nuclei, whatever their grey levels
        prior = strongest_blob(*scale_space)
        if prior <= cap:
            starts = [prior]
        else:  # nan, or a structure larger than any nucleus: the strongest blob peak that fits, and
            # the canonical size when the network does not confirm that peak (or there is none)
            fitted = strongest_blob(*scale_space, max_diameter=cap)
            starts = [d for d in (fitted, min(self.diameter, cap)) if np.isfinite(d)]
        for start in starts:
            estimate, confirmed = self._refine(image, start, cap)
            if confirmed:
                break
        if not confirmed:  # the network finds under 3 nuclei at every start
            if prior <= cap:  # in 20x H&E the texture's specks peak at a quarter of the nuclei's size,
                # and the nuclei's own peak is nearly as strong
                found, confidence = self._search_pass(image, scale_factor(estimate, self.diameter))
                peak = self._larger_peak(image, scale_space, float(estimate), cap,
                                         lambda refined: self._probe(image, refined)[1] >= confidence)
                if peak != estimate:
                    return peak  # a larger peak confirmed
                if found.size:  # nuclei at the prior too few to confirm it: kept unless the search finds
                    # nuclei elsewhere more confidently (a clump-sized peak in a dense H&E field, 1-2 objects)
                    searched = self._estimate_search(image)
                    if searched is not None and self._probe(image, searched)[1] >= confidence + CONFIDENCE_GAIN:
                        return searched
                    return peak
            # no nucleus at all at the prior (haze around a sparse field peaks at 3-5 times its
            # nuclei), or a few nuclei filling a small image (a crop at 63x: no peak under the cap)
            return self._estimate_search(image) or min(self.diameter, cap)  # no nucleus at any scale: none enlarged
        # confirmed; nuclei with bright spots inside: the spots' peak, confirmed, beside the nuclei's
        return self._larger_peak(image, scale_space, float(estimate), cap,
                                 lambda refined: refined > math.sqrt(2) * estimate)

    def _larger_peak(self, image: np.ndarray, scale_space: tuple[np.ndarray, np.ndarray], estimate: float,
                     cap: float, accept) -> float:
        """The refinement of the largest scale-space peak nearly as strong as the strongest
        (:data:`NESTED_RESPONSE`, over ``√2 · estimate``, under ``cap``) that the network confirms
        (3 nuclei or more) and ``accept(refined)`` takes; else ``estimate``. For a confirmed estimate
        the refinement must stay over ``√2 · estimate`` (bright spots inside nuclei); for one the network
        did not confirm, it must be found at least as confidently (20x H&E specks,
        :meth:`_estimate_blob`)."""
        from pipeline.method.scale import blob_peaks

        for peak in blob_peaks(*scale_space, NESTED_RESPONSE, cap)[::-1]:
            if peak <= math.sqrt(2) * estimate:
                break
            refined, confirmed = self._refine(image, float(peak), cap)
            if confirmed and accept(refined):
                return refined
        return estimate

    def _refine(self, image: np.ndarray, start: float, cap: float) -> tuple[float, bool]:
        """The network's refinement of a diameter estimate ``start`` (px of ``image``), and whether
        it confirmed it: measured within an octave and under ``cap``; measured once more when the
        first pass moved it by more than :data:`REFINE_OCTAVES`, that answer kept unless it moved
        the estimate more than :data:`DIVERGING` times as far as the first."""
        estimate, confirmed, first_move = start, False, math.inf
        for _ in range(2):
            measured = self._measure(image, estimate)
            moved = abs(math.log2(measured / estimate)) if measured else math.inf
            if moved > 1 or measured > cap or moved > DIVERGING * first_move:  # lost, or diverging: the first answer stays
                break
            estimate, confirmed, first_move = measured, True, moved
            if moved <= REFINE_OCTAVES:  # converged: a second pass would move it by ~1 %
                break
        return float(estimate), confirmed

    def _estimate_search(self, image: np.ndarray) -> float | None:
        canonical, cap = self.diameter, largest_diameter(image.shape)
        passes = []
        for k in [k for k in SEARCH_OCTAVES if canonical * 2.0**k <= cap] or [min(SEARCH_OCTAVES)]:
            scale = scale_factor(canonical * 2.0**k, canonical)
            passes.append((scale, *self._search_pass(image, scale)))
        implied = [np.median(d) / s if d.size else np.nan for s, d, _ in passes]
        scores = []
        for i, (_, d, conf) in enumerate(passes):
            if not d.size:
                scores.append(np.inf)
                continue
            size_error = abs(math.log2(np.median(d) / canonical))
            neighbours = [implied[j] for j in (i - 1, i + 1) if 0 <= j < len(passes) and np.isfinite(implied[j])]
            agreement = min((abs(math.log2(implied[i] / n)) for n in neighbours), default=1.0)
            scores.append(size_error + 2.0 * (1.0 - conf) + 0.5 * agreement)
        if not np.isfinite(np.min(scores)):
            return None
        estimate = min(float(implied[int(np.argmin(scores))]), cap)
        return min(self._measure(image, estimate) or estimate, cap)

    def _search_pass(self, image: np.ndarray, scale: float) -> tuple[np.ndarray, float]:
        """Equivalent diameters (px at the network's scale) of the nuclei found, and the
        confidence, in the window with the most structure (:data:`SEARCH_WINDOW` px at the
        network's scale) of a normalised image resized by ``scale``; once per scale within one
        estimate (:data:`_PASSES`)."""
        from pipeline.method.watershed import for_image_type, postprocess

        passes = getattr(_PASSES, "by_scale", None)
        if passes is not None and scale in passes:
            return passes[scale]
        window = content_window(image, max(16, int(round(SEARCH_WINDOW / scale))))
        probs = self.predict_scaled(image[window], scale, tta="none")  # a size, not outlines: one pass
        # sizes at the fixed mask threshold the estimate was calibrated with: the lower threshold
        # of dense images (dense_mask_threshold) is for outlines, and would size nuclei ~6 % larger
        settings = for_image_type(self.thresholds) | {"dense_mask_threshold": None}
        labels = postprocess(probs, self.head, **settings)
        found = nucleus_diameters(labels), confidence(probs, self.head)
        if passes is not None:
            passes[scale] = found
        return found
