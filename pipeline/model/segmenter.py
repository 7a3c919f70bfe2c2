"""From a model directory to instance labels: the one entry point (``Segmenter.segment``).

A :class:`Segmenter` owns everything between an image as read and its labels:

1. intensity normalisation (:mod:`pipeline.method.intensity`, with the model's own settings);
2. scale: the network works at the model's canonical nucleus ``diameter``; each image's nucleus
   diameter is estimated (:meth:`Segmenter.estimate_diameter`) or given, the image is resized by
   ``canonical / diameter`` and the result mapped back to the original pixel grid;
3. the network (:class:`pipeline.model.predictor.Predictor`: padding, seamless tiling, TTA, mixed
   precision, channels_last);
4. block-wise processing of huge images (bounded memory at any scale);
5. the marker-controlled watershed with the model's own thresholds (sizes in canonical pixels,
   converted to the image's pixels);
6. a per-image confidence and a flag when the count should not be trusted, saying why in words
   (the signals of :mod:`pipeline.method.trust`, two of them from the network asked again at half and
   twice the diameter in one window), and each nucleus's confidence (P(it is a true nucleus), from
   the network's probabilities in and around it: :attr:`Segmentation.nucleus_confidence`, block by
   block).

A model folder may declare further networks (``networks`` in its config: model folders inside it,
each with its rule; :mod:`pipeline.config.routing`). :meth:`Segmenter.network_for` asks the one rule
(:func:`pipeline.config.routing.network_for`): every public method that is given or computes an
image's type runs it through the Segmenter of the network that takes that type (the default's
``stained``), loaded on first use, with its own thresholds and diameters; and an image (or block)
in which the folder's own network finds nuclei over much of the pixels is run again by the network
that takes such images (the default's ``dense``: dense tissue sections, whose touching nuclei a wider
network parts better than the one fast enough for every image).

``nuclei segment``, ``nuclei submit``, ``nuclei predict`` and the evaluation go through it.

Must not: read or write files other than the model directory, parse command lines, or read a model
folder's ``config.yaml`` itself or decide which diameter a model resizes an image to (both are
:class:`pipeline.config.model_folder.ModelDirConfig`'s: :meth:`~pipeline.config.model_folder.ModelDirConfig.diameter_for`).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.config.params import SegmentConfig
from pipeline.config.routing import MAIN, Route, needs_second_pass, network_for
from pipeline.errors import NucleiError
from pipeline.method.blocks import block_geometry, segment_in_blocks
from pipeline.method.heads import confidence
from pipeline.method.image_types import BRIGHTFIELD, HISTOLOGY, image_type_of
from pipeline.method.scale import (
    diameter_problem,
    largest_diameter,
    median_diameter,
    resize_image,
    scale_factor,
    scaled_shape,
)
from pipeline.method.trust import (
    AT_RISK,
    MIN_CONFIDENCE,
    PROBE_FACTORS,
    count_risk,
    image_signals,
    nuclei_signals,
    nucleus_confidence,
    scale_signals,
    trust_flags,
)
from pipeline.model.diameter import DiameterEstimator
from pipeline.shipped import model_folder

#: A fine-tuned model's ``user_diameter`` (the median nucleus diameter of the images it was fine-tuned on,
#: ``nuclei finetune``) replaces an estimate further than this many octaves from it, and a missing one
#: (bright-field images, nothing found); chosen by ``benchmarks/bench_finetune.py --diameters`` (docs/finetune.md).
USER_DIAMETER_OCTAVES = 1.0
#: Flag of bright-field images: the shipped model is weak on them (docs/decisions.md, "Bright-field
#: images segmented at the canonical diameter"), and their nucleus diameter is not estimated
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
        Share of unambiguous pixels (P(nucleus) outside :data:`pipeline.method.heads.AMBIGUOUS`) among the pixels
        the network considers possibly nucleus; 1 = clear-cut.
    flag : str
        '' or why the count should not be trusted.
    image_type : str
        :func:`pipeline.method.image_types.image_type_of` the image ('fluo-small', 'fluo-large', 'histology' or
        'brightfield'): it decides the thresholds and whether the diameter is estimated.
    nucleus_confidence : (N + 1,) float32 or None
        Each nucleus's confidence, P(it matches a true nucleus), from the network's probabilities
        in and around it (:func:`pipeline.method.trust.nucleus_confidence`), indexed by label (NaN at
        0), from the block that made it.
    signals : dict or None
        The trust signals behind ``flag`` (:meth:`Segmenter.trust_signals`: name → float), with the
        scale probes' own figures; empty for bright-field images. :attr:`count_risk` weighs them.
    """

    labels: np.ndarray
    diameter: float | None
    estimated: bool
    scale: float
    confidence: float
    flag: str = ""
    image_type: str = ""
    nucleus_confidence: np.ndarray | None = None
    signals: dict | None = None

    @property
    def count_risk(self) -> float | None:
        """The risk (0-1) that the count is bad (:func:`pipeline.method.trust.count_risk` of
        :attr:`signals` and :attr:`confidence`); None without signals (bright-field)."""
        return count_risk(self.signals, self.confidence) if self.signals else None


def flag_of(image_type: str, confidence: float, estimated: bool = True, diameter: float | None = None,
            shape: tuple[int, ...] | None = None, signals: dict | None = None) -> str:
    """Why the count of an image of ``image_type`` segmented with ``confidence`` should not be
    trusted ('' when it can be): bright-field (the text depends on whether the diameter was
    ``estimated``), low confidence, and, when the ``signals`` (:meth:`Segmenter.trust_signals`) put
    the count at risk, the named failures whose signals are over their limits
    (:func:`pipeline.method.trust.trust_flags`),
    and, for a ``diameter`` (px) given for an image of ``shape`` (H, W), a diameter that cannot hold
    (:func:`pipeline.method.scale.diameter_problem`)."""
    flags = []
    if image_type == BRIGHTFIELD:
        flags.append(BRIGHTFIELD_FLAG if estimated else BRIGHTFIELD_GIVEN_FLAG)
    elif confidence < MIN_CONFIDENCE:
        flags.append(f"low confidence ({confidence:.2f} < {MIN_CONFIDENCE}): check the overlay")
    if signals and image_type != BRIGHTFIELD:
        named = trust_flags(signals, confidence)
        flags.extend([] if flags and named == [AT_RISK] else named)  # low confidence says it already
    if diameter is not None and not estimated and shape is not None:
        flags.insert(0, diameter_problem(diameter, shape))
    return "; ".join(f for f in flags if f)


class Segmenter(DiameterEstimator):
    """A model directory, ready to turn images into labels.

    Parameters
    ----------
    predictor : pipeline.model.predictor.Predictor
        The network; its ``config`` is the model directory's config
        (:class:`pipeline.config.model_folder.ModelDirConfig`, or a mapping checked into one).
    block_size, block_margin : int
        Images larger than ``block_size`` px (at the network's scale) are segmented in blocks with
        ``block_margin`` px of context (at the network's scale) on each side.
    source : str or Path
        The model directory, for error messages.
    networks : dict, optional
        The Segmenter of each route of the config (:attr:`~pipeline.config.model_folder.ModelDirConfig.routes`),
        by route name, or a picklable callable that loads it on first use (:meth:`network_for`);
        a route left out runs on this network.
    route : str
        The name of this network in its model folder (:data:`pipeline.config.routing.MAIN`: the
        folder's own, which alone routes images to the others).

    Raises
    ------
    NucleiError
        An invalid config (a mapping checked here, once), or blocks too small for their margin.
    """

    def __init__(self, predictor, block_size: int = SegmentConfig.block_size, block_margin: int = SegmentConfig.block_margin,
                 source: str | Path = "model", networks: dict | None = None, route: str = MAIN):
        from pipeline.config.model_folder import CONFIG_NAME, as_model_dir_config

        self.predictor = predictor
        self.head = predictor.head
        self.source = Path(source)
        #: The model directory's config (:class:`pipeline.config.model_folder.ModelDirConfig`).
        self.config = as_model_dir_config(predictor.config, self.source / CONFIG_NAME)
        #: :func:`pipeline.method.watershed.postprocess_to_shape` keywords, and
        #: :func:`pipeline.method.intensity.normalize_image` keywords, of the model.
        self.thresholds = self.config.postprocess.thresholds()
        self.normalization = self.config.normalization.to_dict()
        if block_size <= 2 * block_margin:
            raise NucleiError(f"block size {block_size} must exceed twice the block margin {block_margin}")
        self.block_size, self.block_margin = int(block_size), int(block_margin)
        #: Default method of :meth:`estimate_diameter` (chosen by measurement, see the README).
        self.estimator = "blob"
        self.route = route
        #: Diameter factors of the scale probes (:meth:`trust_signals`; () : none).
        self.probe_factors = PROBE_FACTORS
        self._networks = {name: RoutedNetwork(load) for name, load in (networks or {}).items()}

    @property
    def diameter(self) -> float | None:
        """Canonical nucleus diameter (px at the network's scale; None: no rescaling): the
        config's ``diameter`` (stained images: :meth:`pipeline.config.model_folder.ModelDirConfig.diameter_for`)."""
        return self.config.diameter

    @property
    def user_diameter(self) -> float | None:
        """Typical nucleus diameter (px) of the images a fine-tuned model was adapted to (None: not fine-tuned)."""
        return self.config.user_diameter

    @classmethod
    def from_model_dir(cls, path: str | Path, device: str = SegmentConfig.device, tta: str = SegmentConfig.tta,
                       tile_size: int = SegmentConfig.tile_size, overlap: int = SegmentConfig.overlap,
                       batch_size: int = SegmentConfig.batch_size, precision: str = SegmentConfig.precision,
                       block_size: int = SegmentConfig.block_size, block_margin: int = SegmentConfig.block_margin,
                       backend: str = SegmentConfig.backend) -> Segmenter:
        """Load a model directory (``config.yaml`` + ``weights.pt``); ``backend`` is what runs the
        network (:func:`pipeline.model.backends.resolve_backend`: 'auto', the ``segment`` section's
        default, is ONNX Runtime or OpenVINO on a CPU in fp32 when installed, else torch).

        Raises
        ------
        NucleiError
            A missing or broken model directory, an unusable device or invalid settings.
        """
        from pipeline.model.predictor import load_predictor

        path = model_folder(path)
        if not path.is_dir():
            raise NucleiError(f"{path}: model directory not found")
        options = dict(device=device, tta=tta, tile_size=tile_size, overlap=overlap, batch_size=batch_size,
                       precision=precision, backend=backend)
        segmenter = cls(load_predictor(path, **options), block_size, block_margin, source=path)
        inner = dict(options, block_size=block_size, block_margin=block_margin)
        segmenter._networks = {route.name: RoutedNetwork(functools.partial(_load_inner, path, segmenter.config, route, inner))
                               for route in segmenter.config.routes}
        return segmenter

    def network_for(self, image_type: str | None, nucleus_fraction: float | None = None) -> Segmenter:
        """The Segmenter of the network that runs an image (or block, or stack) of ``image_type``:
        the route :func:`pipeline.config.routing.network_for` picks (the one rule) among the
        model's, loaded on first use and run in batches of this network's batch size; this one for
        the folder's own network, and always for a routed network (routes are one level deep).

        ``nucleus_fraction``: share of the pixels, in [0, 1], that this network finds to be nucleus
        (:func:`pipeline.method.watershed.nucleus_fraction` of its probabilities), once it ran: the
        second pass's question (None: the first pass)."""
        if self.route != MAIN or not self._networks:
            return self
        network = self._networks.get(network_for(self.config.routes, image_type, nucleus_fraction).name)
        return self if network is None else network.get(getattr(self.predictor, "batch_size", None))

    def network_for_probs(self, probs: np.ndarray, image_type: str | None = None) -> Segmenter:
        """:meth:`network_for` an image (or block) of ``image_type`` whose probabilities under this
        network are ``probs`` ((C, h, w) float32, at the network's scale): the second pass."""
        from pipeline.method.heads import mask_and_marker
        from pipeline.method.watershed import nucleus_fraction

        if self.route != MAIN or not needs_second_pass(self.config.routes):
            return self
        return self.network_for(image_type, nucleus_fraction(mask_and_marker(probs, self.head)[0]))

    def _routed(self, image: np.ndarray, image_type: str | None) -> tuple[Segmenter, str | None]:
        """(:meth:`network_for`, the type) of a normalised image; the type is computed only when
        the model routes images and it was not given."""
        if not self._networks:
            return self, image_type
        image_type = image_type or image_type_of(image)
        return self.network_for(image_type), image_type

    @property
    def device(self):
        return self.predictor.device

    # ------------------------------------------------------------------ steps

    def normalize(self, image: np.ndarray) -> np.ndarray:
        """(H, W, 3) image in any units → float32 network input in [0, 1]."""
        from pipeline.method.intensity import normalize_image

        return normalize_image(image, **self.normalization)

    def _labels(self, image: np.ndarray, scale: float, image_type: str | None = None,
                tta: str | None = None) -> tuple[np.ndarray, float, np.ndarray]:
        """Labels (on the image's grid), confidence and each label's evidence ((N + 1, k) float32:
        :meth:`nucleus_evidence`) of one normalised image or block (``tta``: :meth:`tta_for` the
        whole image, for a block)."""
        from pipeline.method.watershed import postprocess_to_shape, remove_bright_fragments

        probs, routed = self.probabilities(image, scale, image_type, tta)
        labels = postprocess_to_shape(probs, routed.head, image.shape[:2], scale, image_type, **routed.thresholds)
        if self.diameter and image_type not in (HISTOLOGY, BRIGHTFIELD):  # fluorescence: bright debris
            labels = remove_bright_fragments(labels, image, self.diameter / scale)  # are no nuclei
        evidence = self.nucleus_evidence(probs, routed.head, labels, scale, image_type).astype(np.float32)
        return labels, confidence(probs, routed.head), evidence

    def nucleus_evidence(self, probs: np.ndarray, head: str, labels: np.ndarray, scale: float,
                         image_type: str | None = None) -> np.ndarray:
        """(N + 1, k) :func:`pipeline.method.trust.nucleus_evidence` of ``labels`` (on the image's
        grid) made from ``probs`` (:meth:`probabilities`, in ``head``'s layout) of an image of
        ``image_type`` resized by ``scale``: its nuclei sized as this model resizes them."""
        from pipeline.method.trust import evidence_from_probabilities

        canonical = self.config.diameter_for(image_type)  # over scale: the nuclei's size on the image's grid
        return evidence_from_probabilities(probs, head, labels, canonical / scale if canonical else None)

    def probabilities(self, image: np.ndarray, scale: float, image_type: str | None = None,
                      tta: str | None = None) -> tuple[np.ndarray, Segmenter]:
        """The (C, h, w) float32 probabilities a normalised image (or block) of ``image_type``
        resized by ``scale`` is segmented from, and the network that gave them: this one, or the
        one it routes the image to when the first pass finds it dense (:meth:`network_for_probs`,
        run again); ``tta`` overrides the predictor's test-time augmentation."""
        resized = resize_image(image, scaled_shape(image.shape[:2], scale))
        probs = self.predictor.predict(resized, tta)
        routed = self.network_for_probs(probs, image_type)
        if routed is not self:
            probs = routed.predictor.predict(resized, tta)
        return probs, routed

    def predict_scaled(self, image: np.ndarray, scale: float, tta: str | None = None,
                       image_type: str | None = None) -> np.ndarray:
        """(C, h, w) float32 probabilities of a normalised image resized by ``scale``; ``tta``
        overrides the predictor's test-time augmentation; ``image_type``, when given, picks the
        network (:meth:`network_for`; not computed: a window of an image is not typed apart)."""
        routed = self.network_for(image_type)
        if routed is not self:
            return routed.predict_scaled(image, scale, tta, image_type)
        return self.predictor.predict(resize_image(image, scaled_shape(image.shape[:2], scale)), tta)


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
            One of :data:`pipeline.method.image_types.IMAGE_TYPES`, instead of :func:`image_type_of` the image.

        Returns
        -------
        result : Segmentation
        """
        if not normalized:
            image = self.normalize(image)
        image_type = image_type or image_type_of(image)
        routed = self.network_for(image_type)
        if routed is not self:  # the same normalisation (checked when it was loaded)
            return routed.segment(image, diameter, normalized=True, image_type=image_type)
        diameter, estimated, scale = self.scale_for(image, diameter, image_type)
        probes = self.scale_probes(image, diameter) if self._probed(diameter, estimated, image_type) else None
        labels, conf, evidence = self._segment_blocks(image, scale, image_type)
        signals = self.trust_signals(image, labels, diameter, image_type, probes, conf, evidence)
        flag = flag_of(image_type, conf, estimated, diameter, image.shape[:2], signals)
        return Segmentation(labels, diameter, estimated, scale, conf, flag, image_type,
                            nucleus_confidence(evidence, image_type), signals)

    def _probed(self, diameter: float | None, estimated: bool, image_type: str) -> bool:
        """Whether :meth:`segment` asks the network at other scales (:meth:`scale_probes`): an
        estimated diameter of a model that has one, not a bright-field image (not estimated)."""
        return bool(estimated and diameter and self.diameter is not None and self.probe_factors
                    and image_type != BRIGHTFIELD)

    def trust_signals(self, image: np.ndarray, labels: np.ndarray, diameter: float | None, image_type: str,
                      probes: dict | None = None, conf: float = 1.0, evidence: np.ndarray | None = None) -> dict:
        """The signals of :mod:`pipeline.method.trust` for a normalised image and its ``labels``
        ((H, W) int) segmented for ``diameter`` px: the image's own (:func:`~pipeline.method.trust.image_signals`,
        at the median diameter of the nuclei found; none without nuclei), its nuclei's
        (:func:`~pipeline.method.trust.nuclei_signals` of their ``evidence``, (N + 1, k): :meth:`nucleus_evidence`)
        and the scale signals of ``probes``
        (:meth:`scale_probes`' answer, :func:`~pipeline.method.trust.scale_signals`, against the image's
        confidence ``conf``), with the probes' own figures (``probe_<factor>_<diameter|confidence|count>``).
        Bright-field: none."""
        if image_type == BRIGHTFIELD:
            return {}
        found = median_diameter(labels)
        signals = image_signals(image, labels, found, image_type) if np.isfinite(found) else {}
        if evidence is not None:
            signals |= nuclei_signals(evidence)
        if probes is not None:
            signals |= scale_signals(probes, conf, diameter)
            signals |= {f"probe_{f:g}_{k}": v for f, probe in probes.items()
                        for k, v in zip(("diameter", "confidence", "count"), probe, strict=True) if v is not None}
        return signals

    def scale_probes(self, image: np.ndarray, diameter: float) -> dict[float, tuple]:
        """The network's answer in the window with the most structure of a normalised image at
        each of :attr:`probe_factors` × ``diameter`` px (under :func:`pipeline.method.scale.largest_diameter`),
        by factor: (median diameter found, px, or None under 3 nuclei; confidence; nuclei found)."""
        def probe(d: float) -> tuple:
            scale = scale_factor(d, self.diameter)
            found, conf = self._search_pass(image, scale)
            return (float(np.median(found) / scale) if found.size >= 3 else None), conf, int(found.size)

        cap = largest_diameter(image.shape)
        return {f: probe(f * diameter) for f in self.probe_factors if f * diameter <= cap}

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
            ``canonical / diameter`` (clipped, :func:`pipeline.method.scale.scale_factor`); 1 for a model
            without a canonical diameter. The canonical diameter is the model's for the image's
            type (:meth:`pipeline.config.model_folder.ModelDirConfig.diameter_for`: stained images
            have their own), whether the diameter was estimated or given.
        """
        routed, image_type = self._routed(image, image_type)
        if routed is not self:
            return routed.scale_for(image, diameter, image_type)
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
        return diameter, estimated, scale_factor(diameter, self.config.diameter_for(image_type))

    def _segment_blocks(self, image: np.ndarray, scale: float,
                        image_type: str | None = None) -> tuple[np.ndarray, float, np.ndarray]:
        """Labels (original grid), confidence and each label's evidence (:meth:`_labels`); block by
        block when the image is large.

        Blocks are cut in the image's pixels (:meth:`block_geometry`) and stitched by
        :func:`pipeline.method.blocks.segment_in_blocks`, by the rule a slide's blocks are
        (:func:`pipeline.method.blocks.paste_nuclei`): each block keeps the nuclei whose centroid lies
        in its core, so every nucleus comes from the one block that sees it whole.
        """
        from pipeline.method.watershed import sizes_at_scale

        height, width = image.shape[:2]
        block, margin = self.block_geometry(scale)
        if max(height, width) <= block:
            return self._labels(image, scale, image_type)
        tta = self.tta_for((height, width), scale)  # one augmentation for every block, as for the image whole
        min_size = int(sizes_at_scale(self.thresholds, scale).get("min_size") or 0)
        return segment_in_blocks((height, width), lambda outer: self._labels(image[outer], scale, image_type, tta),
                                 block, margin, min_size)

    def block_geometry(self, scale: float) -> tuple[int, int]:
        """Block side and margin (px of the image) for an image resized by ``scale``
        (:func:`pipeline.method.blocks.block_geometry` of this segmenter's ``block_size``, ``block_margin``)."""
        return block_geometry(self.block_size, self.block_margin, scale)

    def tta_for(self, shape: tuple[int, int], scale: float) -> str:
        """The test-time augmentation of an image of ``shape`` (H, W) px resized by ``scale``
        (:func:`pipeline.model.predictor.resolve_tta` of the predictor's for its pixels at the network's
        scale). Every block of the image takes it: a block at the image's edge is no more augmented than the rest."""
        from pipeline.model.predictor import resolve_tta

        height, width = scaled_shape(tuple(shape), scale)
        return resolve_tta(self.predictor.tta, height * width)

    def segment_block(self, image: np.ndarray, scale: float, image_type: str | None = None,
                      tta: str | None = None) -> tuple[np.ndarray, float, np.ndarray]:
        """Labels (int32 (h, w), on the block's grid), confidence and each label's confidence
        ((labels.max() + 1,) float32) of one normalised block of an image resized by ``scale``
        (:meth:`scale_for` the whole image) of ``image_type``; ``tta``: :meth:`tta_for` the whole image."""
        routed, image_type = self._routed(image, image_type)
        labels, conf, evidence = routed._labels(image, scale, image_type, tta)
        return labels, conf, nucleus_confidence(evidence, image_type)


class RoutedNetwork:
    """One route's network of a model folder, loaded on first use (``load``: a picklable callable
    returning its Segmenter, or the Segmenter itself), shared by the copies of the Segmenter that
    names it (:func:`pipeline.batch.slide.one_tile_at_a_time`'s), each asking for its own batch size:
    the copies share the one network's weights."""

    def __init__(self, load):
        self._load, self._by_batch = load, {}

    def get(self, batch_size: int | None = None) -> Segmenter:
        """The Segmenter, its network run in batches of ``batch_size`` (None: as loaded)."""
        if not self._by_batch:
            loaded = self._load if isinstance(self._load, Segmenter) else self._load()
            self._by_batch[None] = loaded
            self._by_batch[getattr(loaded.predictor, "batch_size", None)] = loaded
        if batch_size not in self._by_batch:
            segmenter, predictor = copy.copy(self._by_batch[None]), copy.copy(self._by_batch[None].predictor)
            predictor.batch_size, segmenter.predictor = batch_size, predictor
            self._by_batch[batch_size] = segmenter
        return self._by_batch[batch_size]


def _load_inner(folder: Path, config, route: Route, options: dict) -> Segmenter:
    """The Segmenter of ``route``'s network, the model folder it names inside the model folder
    ``folder`` whose config is ``config`` (``options``: :meth:`Segmenter.from_model_dir`'s). It must
    normalise as the folder does and declare no network of its own; a network that runs images
    again (``nucleus_fraction_above``), handed them at the folder's scale, must have its ``diameter``.

    Raises
    ------
    NucleiError
        One line naming the inner folder: missing, broken, or not fit for its route.
    """
    inner = config.network_folder(folder, route)
    owner = model_folder(folder) / "config.yaml"
    if not inner.is_dir():
        raise NucleiError(f"{inner}: model directory not found (network {route.name!r} of {owner})")
    loaded = Segmenter.from_model_dir(inner, **options)
    loaded.route = route.name
    if loaded.config.routes:
        raise NucleiError(f"{inner}: the {route.name} network declares networks of its own; only one level is read")
    if loaded.config.normalization != config.normalization:
        raise NucleiError(f"{inner}: normalization differs from {owner}'s; both networks must read the same input")
    if route.nucleus_fraction_above is not None and loaded.config.diameter != config.diameter:
        raise NucleiError(f"{inner}: diameter {loaded.config.diameter} differs from {owner}'s "
                          f"{config.diameter}; a network that runs images again is handed them at the folder's scale")
    return loaded
