"""From a model directory to instance labels: the one entry point (``Segmenter.segment``).

A :class:`Segmenter` owns everything between an image as read and its labels:

1. intensity normalisation (:mod:`pipeline.intensity`, with the model's own settings);
2. scale: the network works at the model's canonical nucleus ``diameter``; each image's nucleus
   diameter is estimated (:meth:`Segmenter.estimate_diameter`) or given, the image is resized by
   ``canonical / diameter`` and the result mapped back to the original pixel grid;
3. the network (:class:`pipeline.inference.Predictor`: padding, seamless tiling, TTA, mixed
   precision, channels_last);
4. block-wise processing of huge images (bounded memory at any scale);
5. the marker-controlled watershed with the model's own thresholds (sizes in canonical pixels,
   converted to the image's pixels);
6. a per-image confidence and a flag when the count should not be trusted.

``nuclei segment``, ``nuclei submit``, ``nuclei predict`` and the evaluation go through it.

Must not: read or write files other than the model directory, or parse command lines.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.blocks import block_geometry, segment_in_blocks
from pipeline.errors import NucleiError
from pipeline.image_types import BRIGHTFIELD, HISTOLOGY
from pipeline.scale import (
    content_window,
    diameter_problem,
    largest_diameter,
    nucleus_diameters,
    resize_image,
    scale_factor,
    scaled_shape,
)

#: Diameter search: the passes run at ``canonical · 2**k`` px for these k.
SEARCH_OCTAVES = (-1, 0, 1, 2, 3)
#: Side (px, at the network's scale) of the window each search pass looks at.
SEARCH_WINDOW = 384
#: The ``'blob'`` estimate is refined a second time only when the first refinement moved it by more than
#: this many octaves. Below it, on grouped fold 0 of the five sources (117 of 159 images), the second pass
#: would have moved the estimate by a median 0.010 octave (at most 0.165), well inside the training zoom
#: (±0.5 octave); skipping it changed each source's score by −0.002 to +0.005 and saves one network pass
#: (``benchmarks/bench_refinement.py``, docs/decisions.md).
REFINE_OCTAVES = 0.25

#: Scale-space peaks at least this fraction of the strongest response, more than √2 × the
#: confirmed estimate, are refined too, and the larger size is taken when the network confirms
#: it: the bright spots inside nuclei (the chromocenters of mouse nuclei, H&E grain) give a
#: peak as strong as the nuclei's, and the network, shown them enlarged, confirms the spots.
NESTED_RESPONSE = 0.9

#: Pixels with P(nucleus) in this open interval count as ambiguous (confidence).
AMBIGUOUS = (0.3, 0.7)
#: Below this confidence a count is flagged as not to be trusted: the 2nd percentile of the stage-1
#: model's confidence on the grouped validation images (unshifted, noise, stain, ×0.5–×2); below it
#: their median counting error was 27 %, above it 11–17 %. ``benchmarks/bench_robustness.py`` prints
#: the calibration for any model (the shipped one: 2nd percentile 0.81, a weaker guide).
MIN_CONFIDENCE = 0.78
#: A fine-tuned model's ``user_diameter`` (the median nucleus diameter of the images it was fine-tuned on,
#: ``nuclei finetune``) replaces an estimate further than this many octaves from it, and a missing one
#: (bright-field images, nothing found); chosen by ``benchmarks/bench_finetune.py --diameters`` (docs/finetune.md).
USER_DIAMETER_OCTAVES = 1.0
#: Flag of bright-field images: the shipped model is weak on them (DSB2018 0.23 on the 16 bright-field
#: images of stage1_train, out of fold), and their nucleus diameter is not estimated
#: (:meth:`Segmenter.estimate_diameter`): they are segmented at the canonical diameter unless one is given.
BRIGHTFIELD_FLAG = ("bright-field image (grey, bright background): segmented at the model's nucleus diameter "
                    "unless --diameter is given; counts unreliable, check the overlay")
#: ... and when the diameter was given (``--diameter``).
BRIGHTFIELD_GIVEN_FLAG = "bright-field image (grey, bright background): counts unreliable, check the overlay"


@dataclass
class Segmentation:
    """The result of :meth:`Segmenter.segment` for one image.

    Attributes
    ----------
    labels : (H, W) int32
        0 = background, 1..N nuclei, on the image's own pixel grid.
    diameter : float or None
        Nucleus diameter (px of the image) the image was segmented for; None for a model
        without a canonical diameter (run at the image's own scale).
    estimated : bool
        ``diameter`` was estimated (not given).
    scale : float
        Factor the image was resized by for the network.
    confidence : float
        Share of unambiguous pixels (P(nucleus) outside :data:`AMBIGUOUS`) among the pixels
        the network considers possibly nucleus; 1 = clear-cut.
    flag : str
        '' or why the count should not be trusted.
    image_type : str
        :func:`image_type_of` the image ('fluo-small', 'fluo-large', 'histology' or
        'brightfield'): it decides the thresholds and whether the diameter is estimated.
    """

    labels: np.ndarray
    diameter: float | None
    estimated: bool
    scale: float
    confidence: float
    flag: str = ""
    image_type: str = ""


def flag_of(image_type: str, confidence: float, estimated: bool = True, diameter: float | None = None,
            shape: tuple[int, ...] | None = None) -> str:
    """Why the count of an image of ``image_type`` segmented with ``confidence`` should not be
    trusted ('' when it can be): bright-field (the text depends on whether the diameter was
    ``estimated``), low confidence, and, for a ``diameter`` (px) given for an image of ``shape``
    (H, W), a diameter that cannot hold (:func:`pipeline.scale.diameter_problem`)."""
    flag = ""
    if image_type == BRIGHTFIELD:
        flag = BRIGHTFIELD_FLAG if estimated else BRIGHTFIELD_GIVEN_FLAG
    elif confidence < MIN_CONFIDENCE:
        flag = f"low confidence ({confidence:.2f} < {MIN_CONFIDENCE}): check the overlay"
    if diameter is not None and not estimated and shape is not None:
        flag = "; ".join(f for f in (diameter_problem(diameter, shape), flag) if f)
    return flag


def confidence(probs: np.ndarray, head: str) -> float:
    """Share of unambiguous pixels among the possible nucleus pixels of a probability map.

    Parameters
    ----------
    probs : (C, H, W) float32
        Network probabilities (:func:`pipeline.heads.mask_and_marker` layout).
    head : str

    Returns
    -------
    confidence : float in [0, 1]; 1 when no pixel is possibly a nucleus.
    """
    from pipeline.heads import mask_and_marker

    mask_p, _ = mask_and_marker(probs, head)
    possible = mask_p > 0.1
    n = int(possible.sum())
    if n == 0:
        return 1.0
    ambiguous = int(((mask_p > AMBIGUOUS[0]) & (mask_p < AMBIGUOUS[1])).sum())
    return 1.0 - ambiguous / n


def image_type_of(image: np.ndarray) -> str:
    """:func:`pipeline.image_types.classify_image` of a normalised (H, W, 3) image: 'histology'
    (colour: stained), 'brightfield' (grey with a bright background), 'fluo-large' or 'fluo-small'.
    A grey scene through a tinted camera is grey here already (:func:`pipeline.intensity.normalize_image`)."""
    from pipeline.image_types import classify_image
    from pipeline.intensity import subsample

    sample = np.clip(np.rint(subsample(image) * 255), 0, 255).astype(np.uint8)
    return classify_image(sample, n_pixels=image.shape[0] * image.shape[1], raw=False)


class Segmenter:
    """A model directory, ready to turn images into labels.

    Parameters
    ----------
    predictor : pipeline.inference.Predictor
        The network; its ``config`` is the model directory's config.
    block_size, block_margin : int
        Images larger than ``block_size`` px (at the network's scale) are segmented in blocks with
        ``block_margin`` px of context (at the network's scale) on each side.
    source : str or Path
        The model directory, for error messages.

    Raises
    ------
    NucleiError
        Invalid thresholds or diameter in the model's config (checked once, here).
    """

    def __init__(self, predictor, block_size: int = 2048, block_margin: int = 128,
                 source: str | Path = "model"):
        from pipeline.intensity import normalization_kwargs
        from pipeline.watershed import thresholds

        self.predictor = predictor
        self.config = predictor.config
        self.head = predictor.head
        self.source = Path(source)
        self.thresholds = thresholds(self.config.get("postprocess"), self.source / "config.yaml")
        self.normalization = normalization_kwargs(self.config)
        #: Canonical nucleus diameter (px at the network's scale; None: no rescaling), and that of
        #: stained images (``stained_diameter``; default the same).
        self.diameter = self._positive("diameter")
        self.stained_diameter = self._positive("stained_diameter") or self.diameter
        #: Typical nucleus diameter (px) of the images a fine-tuned model was adapted to (None: not fine-tuned).
        self.user_diameter = self._positive("user_diameter")
        if self.diameter is None and self.stained_diameter is not None:
            raise NucleiError(f"{self.source / 'config.yaml'}: stained_diameter needs a diameter")
        if block_size <= 2 * block_margin:
            raise NucleiError(f"block size {block_size} must exceed twice the block margin {block_margin}")
        self.block_size, self.block_margin = int(block_size), int(block_margin)
        #: Default method of :meth:`estimate_diameter` (chosen by measurement, see the README).
        self.estimator = "blob"

    def _positive(self, key: str) -> float | None:
        """``config[key]`` as a positive float, or None when absent."""
        value = self.config.get(key)
        if value is None:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise NucleiError(f"{self.source / 'config.yaml'}: {key} must be a positive number, got {value!r}")
        return float(value)

    @classmethod
    def from_model_dir(cls, path: str | Path, device: str = "auto", tta: str = "auto", tile_size: int = 1024,
                       overlap: int = 64, batch_size: int = 4, precision: str = "auto",
                       block_size: int = 2048, block_margin: int = 128) -> Segmenter:
        """Load a model directory (``config.yaml`` + ``weights.pt``).

        Raises
        ------
        NucleiError
            A missing or broken model directory, an unusable device or invalid settings.
        """
        from pipeline.inference import load_predictor

        path = Path(path)
        if not path.is_dir():
            raise NucleiError(f"{path}: model directory not found")
        predictor = load_predictor(path, device=device, tta=tta, tile_size=tile_size, overlap=overlap,
                                   batch_size=batch_size, precision=precision)
        return cls(predictor, block_size, block_margin, source=path)

    @property
    def device(self):
        return self.predictor.device

    # ------------------------------------------------------------------ steps

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) image in any units → float32 network input in [0, 1]."""
        from pipeline.intensity import normalize_image

        return normalize_image(image, **self.normalization)

    def _labels(self, image: np.ndarray, scale: float, image_type: str | None = None) -> tuple[np.ndarray, float]:
        """Labels (on the image's grid) and confidence of one normalised image or block."""
        from pipeline.watershed import postprocess_to_shape

        probs = self.predict_scaled(image, scale)
        labels = postprocess_to_shape(probs, self.head, image.shape[:2], scale, image_type, **self.thresholds)
        return labels, confidence(probs, self.head)

    def predict_scaled(self, image: np.ndarray, scale: float, tta: str | None = None) -> np.ndarray:
        """(C, h, w) float32 probabilities of a normalised image resized by ``scale``; ``tta``
        overrides the predictor's test-time augmentation."""
        return self.predictor.predict(resize_image(image, scaled_shape(image.shape[:2], scale)), tta)

    def estimate_diameter(self, image: np.ndarray, method: str | None = None,
                          image_type: str | None = None) -> float | None:
        """Median nucleus diameter of a normalised image, in its pixels (None: the model has no
        canonical diameter, no nucleus was found, or the image is bright-field).

        ``image_type`` is :func:`image_type_of` the image (computed when not given). Bright-field
        images are not estimated: their contrast comes from whole cells, so the scale-space prior
        finds cells (50–220 px on the 16 bright-field images of stage1_train, whose nuclei are
        10–21 px) and the network's refinement drifts from the canonical size to 3–6 px on half of
        them; at the canonical diameter they score 0.23 out of fold, against 0.005 as estimated.

        Two methods (``method``, default :attr:`estimator`), compared in the README:

        - ``'blob'``: a scale-space prior (:func:`pipeline.scale.blob_diameter`), refined by the
          network: the window with the most structure (:data:`SEARCH_WINDOW` px at the network's
          scale) is segmented at the prior's scale and the median diameter of the nuclei found
          replaces the estimate when it is within an octave of it; a second refinement follows
          when the first moved the estimate by more than :data:`REFINE_OCTAVES`;
          a larger scale-space peak nearly as strong (:data:`NESTED_RESPONSE`) is refined too
          and taken when the network confirms it (the bright spots inside nuclei give such
          a peak, and the network, shown them enlarged, confirms the spots);
        - ``'search'``: a first pass at five scales (:data:`SEARCH_OCTAVES`: nuclei of
          ``canonical · 2**k`` px brought to the canonical size). At the right scale the nuclei
          come out at about the canonical size and are confident; at too large a scale they are
          cut into canonical-size pieces, which also changes their implied size from pass to
          pass. Each pass's implied diameter (median nucleus diameter / scale) is scored by those
          three signals; the best is refined once at its own scale.

        ``'blob'`` looks for dark nuclei in stained images and bright ones in fluorescence, as the
        image type says (the image's own grey levels can mislead: one white hole in H&E tissue made
        its texture the nuclei, at a quarter of their size).

        Both keep the estimate at or under :func:`pipeline.scale.largest_diameter` (a quarter of
        the shorter side): beyond it, a bright structure such as an embryo or a tissue section is
        taken for one nucleus and every real nucleus is lost. When the prior lies beyond it,
        ``'blob'`` starts from the strongest scale-space peak under it instead, and from the
        canonical diameter when the network does not confirm that peak.
        """
        if self.diameter is None:
            return None
        image_type = image_type or image_type_of(image)
        if image_type == BRIGHTFIELD:
            return None
        method = method or self.estimator
        if method == "blob":
            return self._estimate_blob(image, dark=image_type == HISTOLOGY)
        if method == "search":
            return self._estimate_search(image)
        raise ValueError(f"method must be 'blob' or 'search', got {method!r}")

    def _measure(self, image: np.ndarray, diameter: float) -> float | None:
        """Median diameter (px of ``image``) of the nuclei the network finds in the window with
        the most structure when the image is resized for nuclei of ``diameter`` px (None: fewer
        than 3 nuclei)."""
        scale = scale_factor(diameter, self.diameter)
        d, _ = self._search_pass(image, scale)
        return float(np.median(d) / scale) if d.size >= 3 else None

    def _estimate_blob(self, image: np.ndarray, dark: bool | None = None) -> float | None:
        from pipeline.scale import blob_peaks, blob_scale_space, strongest_blob

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
        if confirmed:  # nuclei with bright spots inside: the spots' peak, confirmed, beside the nuclei's
            for peak in blob_peaks(*scale_space, NESTED_RESPONSE, cap)[::-1]:
                if peak <= math.sqrt(2) * estimate:
                    break
                nested, nested_confirmed = self._refine(image, float(peak), cap)
                if nested_confirmed and nested > math.sqrt(2) * estimate:
                    return nested
        return float(estimate)

    def _refine(self, image: np.ndarray, start: float, cap: float) -> tuple[float, bool]:
        """The network's refinement of a diameter estimate ``start`` (px of ``image``), and whether
        it confirmed it: measured within an octave and under ``cap``; measured once more when the
        first pass moved it by more than :data:`REFINE_OCTAVES`."""
        estimate, confirmed = start, False
        for _ in range(2):
            measured = self._measure(image, estimate)
            moved = abs(math.log2(measured / estimate)) if measured else math.inf
            if moved > 1 or measured > cap:
                break
            estimate, confirmed = measured, True
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
        network's scale) of a normalised image resized by ``scale``."""
        from pipeline.watershed import for_image_type, postprocess

        window = content_window(image, max(16, int(round(SEARCH_WINDOW / scale))))
        probs = self.predict_scaled(image[window], scale, tta="none")  # a size, not outlines: one pass
        labels = postprocess(probs, self.head, **for_image_type(self.thresholds))
        return nucleus_diameters(labels), confidence(probs, self.head)

    # ------------------------------------------------------------------ the entry point

    def segment(self, image: np.ndarray, diameter: float | None = None, normalized: bool = False,
                image_type: str | None = None) -> Segmentation:
        """Segment the nuclei of one image.

        Parameters
        ----------
        image : (H, W, 3) array
            As read (any units), or normalised when ``normalized``.
        diameter : float, optional
            Median nucleus diameter in px of this image; estimated when not given (models
            with a canonical diameter), ignored for models without one.
        normalized : bool
            ``image`` is already the output of :meth:`normalize`.
        image_type : str, optional
            One of :data:`pipeline.image_types.IMAGE_TYPES`, instead of :func:`image_type_of` the image.

        Returns
        -------
        result : Segmentation
        """
        if not normalized:
            image = self.normalize(image)
        image_type = image_type or image_type_of(image)
        diameter, estimated, scale = self.scale_for(image, diameter, image_type)
        labels, conf = self._segment_blocks(image, scale, image_type)
        flag = flag_of(image_type, conf, estimated, diameter, image.shape[:2])
        return Segmentation(labels, diameter, estimated, scale, conf, flag, image_type)

    def scale_for(self, image: np.ndarray, diameter: float | None = None,
                  image_type: str | None = None) -> tuple[float | None, bool, float]:
        """The nucleus diameter a normalised image is segmented for, and the factor it is resized by.
        ``image_type``: :func:`image_type_of` the image, computed when needed and not given.

        Returns
        -------
        diameter : float or None
            ``diameter`` when given, else the estimate (the canonical diameter when nothing was
            found, and for bright-field images; a fine-tuned model's ``user_diameter`` instead when
            the estimate is missing or over :data:`USER_DIAMETER_OCTAVES` from it); None for a model
            without a canonical diameter.
        estimated : bool
        scale : float
            ``canonical / diameter`` (clipped, :func:`pipeline.scale.scale_factor`); 1 for a model
            without a canonical diameter. The canonical diameter of stained images is the
            model's ``stained_diameter`` (:attr:`stained_diameter`), whether the diameter was
            estimated or given.
        """
        if self.diameter is None:
            return None, False, 1.0
        image_type = image_type or image_type_of(image)
        estimated = diameter is None
        if estimated:
            diameter = self.estimate_diameter(image, image_type=image_type)
            user = self.user_diameter
            if user and (diameter is None or abs(math.log2(diameter / user)) > USER_DIAMETER_OCTAVES):
                diameter = user
            diameter = diameter or self.diameter
        canonical = self.stained_diameter if image_type == HISTOLOGY else self.diameter
        return diameter, estimated, scale_factor(diameter, canonical)

    def _segment_blocks(self, image: np.ndarray, scale: float, image_type: str | None = None) -> tuple[np.ndarray, float]:
        """Labels (original grid) and confidence; block by block when the image is large.

        Blocks are cut in the image's pixels (:meth:`block_geometry`) and stitched by
        :func:`pipeline.blocks.segment_in_blocks`: each block keeps the nuclei whose centroid lies
        in its core, so every nucleus comes from the one block that sees it whole.
        """
        from skimage.segmentation import relabel_sequential

        from pipeline.watershed import remove_small, sizes_at_scale

        height, width = image.shape[:2]
        block, margin = self.block_geometry(scale)
        if max(height, width) <= block:
            return self._labels(image, scale, image_type)
        labels, conf = segment_in_blocks(
            (height, width), lambda outer: self._labels(image[outer], scale, image_type), block, margin)
        labels = remove_small(labels, sizes_at_scale(self.thresholds, scale)["min_size"])
        return relabel_sequential(labels)[0].astype(np.int32), conf

    def block_geometry(self, scale: float) -> tuple[int, int]:
        """Block side and margin (px of the image) for an image resized by ``scale``
        (:func:`pipeline.blocks.block_geometry` of this segmenter's ``block_size``, ``block_margin``)."""
        return block_geometry(self.block_size, self.block_margin, scale)

    def segment_block(self, image: np.ndarray, scale: float, image_type: str | None = None) -> tuple[np.ndarray, float]:
        """Labels (int32 (h, w), on the block's grid) and confidence of one normalised block of an
        image resized by ``scale`` (:meth:`scale_for` the whole image) of ``image_type``."""
        return self._labels(image, scale, image_type)
