"""Configuration: ``params.yaml`` read and checked in one place, one dataclass per section.

:func:`load_config` reads a parameters file once and returns a :class:`Config`: ``seed`` and one
frozen dataclass per section (:class:`DataConfig`, :class:`TargetsConfig`, :class:`ModelConfig`,
:class:`LossConfig`, :class:`AugmentConfig`, :class:`TrainConfig`, :class:`PredictConfig`,
:class:`PostprocessConfig`, :class:`EvaluateConfig`, :class:`SubmitConfig`,
:class:`SegmentConfig`), in the manner of StarDist's ``Config2D``. Each dataclass holds

- the defaults, equal to the values of the repository's ``params.yaml`` (a test checks it), used
  for keys a file does not set (a missing section takes all its defaults);
- the validation of every value (kind, range, choice) and of the rules between values;
- a one-line :class:`~pipeline.errors.NucleiError` naming the file and ``section.key`` for an
  unknown key or an invalid value.

Stages and library functions receive these objects (``config.train.epochs``), or their
:meth:`pipeline.config.rules.Section.to_dict` where a plain mapping is simpler at a boundary (the ``model`` section
stored in a model directory). :func:`load_params` (the raw mapping) remains for code that edits
or forwards the file as it is.

The small vocabularies of params.yaml (splits, floods, TTA modes, precisions, backends, head names) are
declared here, and the modules that act on them import them from here; nothing is looked up
lazily. The architectures are a registry (:data:`pipeline.model.networks.ARCHITECTURES`), checked
when a network is built.

Must not: import any module of the package outside ``pipeline.config`` and ``pipeline.errors``,
or build anything from the values.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from pipeline.config.rules import (
    Section,
    choice,
    factors,
    flag,
    fold,
    mapping,
    number,
    optional,
    positive_range,
    setting,
    sources,
    switch,
    text,
    whole,
    zoom_range,
)
from pipeline.errors import NucleiError

#: Repository root (the folder holding ``params.yaml``, ``models/``, ``data/``).
ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PARAMS = Path("params.yaml")

#: ``data.split``: folds stratified by image type, grouped by experiment, or one source held out
#: (:func:`pipeline.data.folds.split_folds`).
SPLITS = ("stratified", "grouped", "source")
#: ``postprocess.flood``: what the watershed floods (:func:`pipeline.method.watershed.postprocess`).
FLOODS = ("probability", "distance")
#: ``predict.tta`` and ``segment.tta``: test-time augmentation (:class:`pipeline.model.predictor.Predictor`).
TTA_MODES = ("none", "rot180", "flips", "d4", "auto")
#: ``nuclei segment --z-method``: 3D nuclei from the network on three orthogonal slicings and a 3D
#: watershed, or from planes linked by overlap (:func:`pipeline.model.stack_segmenter.segment_stack`).
#: The first is the default: ``ortho`` holds on real stacks where ``stitch`` does not (docs/decisions.md,
#: "The default z-method"; ``benchmarks/validate_stacks.py``).
Z_METHODS = ("ortho", "stitch")
#: ``model.head``: the heads of :data:`pipeline.method.heads.HEADS` (a test checks that they agree).
HEAD_NAMES = ("softmax", "sigmoid")
#: ``train.precision`` and the like (:func:`pipeline.model.runtime.resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: Image types (:func:`pipeline.method.image_types.classify_image`), as written to ``index.csv``,
#: ``counts.csv``, the prediction files and a route's ``image_type`` (:mod:`pipeline.config.routing`):
#: fluorescence (a dark background) small or large, bright-field (grey on a bright background) and
#: ``histology``, stained tissue (H&E, IHC: colour on a bright background).
IMAGE_TYPES = FLUO_SMALL, FLUO_LARGE, BRIGHTFIELD, HISTOLOGY = ("fluo-small", "fluo-large", "brightfield", "histology")
#: ``predict.backend`` and ``segment.backend``: what runs the network's forward pass
#: (:func:`pipeline.model.backends.resolve_backend`; 'auto': the fastest one installed, else torch).
BACKENDS = ("torch", "onnxruntime", "openvino", "auto")


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Read the pipeline parameters as a plain mapping (unchecked; see :func:`load_config`).

    Parameters
    ----------
    path : str or Path, optional
        A YAML file. Default: ``params.yaml`` in the working directory; without one, {} (every
        setting its default: what an installed package runs with, anywhere).

    Returns
    -------
    params : dict
        The parsed file; top-level keys are the stage sections (``data``, ``targets``, ...).
    """
    path = _params_path(path)
    if path is None:
        return {}
    try:
        text = path.read_text()
    except OSError as exc:
        raise NucleiError(f"{path}: cannot read parameters ({exc.strerror or exc})") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NucleiError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise NucleiError(f"{path}: expected a mapping of stage sections")
    return params


def _params_path(path: str | Path | None) -> Path | None:
    """The file to read: ``path``, else ``params.yaml`` in the working directory (the DVC
    pipeline's), else None: the defaults of the dataclasses below."""
    if path is None:
        return DEFAULT_PARAMS if DEFAULT_PARAMS.exists() else None
    return Path(path)


def load_config(path: str | Path | None = None) -> Config:
    """Read and check a parameters file (default as :func:`load_params`).

    Raises
    ------
    NucleiError
        Unreadable file, unknown section or key, or an invalid value; the message names the
        file and ``section.key``.
    """
    path = _params_path(path)
    return Config.from_dict(load_params(path), path or "defaults")


def as_config(params: Config | Mapping, source: str | Path = "params.yaml") -> Config:
    """``params`` itself when it is a :class:`Config`, else the mapping checked into one."""
    return params if isinstance(params, Config) else Config.from_dict(params, source)


# --------------------------------------------------------------------------- sections


@dataclass(frozen=True)
class DataConfig(Section):
    """``data``: where the images are, and the cross-validation folds."""

    NAME: ClassVar[str] = "data"
    sources: dict = setting({"dsb2018": {"root": "data/sample/stage1_train", "layout": "kaggle"}}, sources)
    test_root: str | None = setting(None, optional(text))
    prepared: str = setting("data/prepared", text)
    folds: int = setting(5, whole(2))
    fold_seed: int = setting(0, whole(0))  # shuffles the image-stratified folds (column fold); apart from seed, so that a training run's seed changes no split and prepares nothing again
    val_fold: int | str | None = setting(0, fold)  # None: train on every image; a source name: split 'source'
    split: str = setting("grouped", choice(SPLITS))
    workers: int = setting(2, whole(0))

    @classmethod
    def from_dict(cls, values, source="params.yaml"):
        if isinstance(values, Mapping) and "root" in values:
            raise NucleiError(f"{source}: data.root is now one of data.sources, e.g. "
                              f"sources: {{dsb2018: {{root: {values['root']}, layout: kaggle}}}}")
        return super().from_dict(values, source)

    def check(self, source):
        by_source = self.split == "source"
        if self.val_fold is not None and by_source != isinstance(self.val_fold, str):
            raise self.error(source, "data.val_fold must be a source name with data.split 'source' "
                                     f"(leave one source out) and a fold number otherwise, got {self.val_fold!r}")
        if by_source and self.val_fold is not None and self.val_fold not in self.sources:
            raise self.error(source, f"data.val_fold {self.val_fold!r} is not one of data.sources "
                                     f"({', '.join(self.sources)})")


@dataclass(frozen=True)
class TargetsConfig(Section):
    """``targets``: canonical nucleus diameter, borders and weight maps."""

    NAME: ClassVar[str] = "targets"
    out: str = setting("data/targets", text)
    diameter: float | None = setting(20.0, optional(number(4, 200)))
    w0: float = setting(10.0, number(0))
    sigma: float = setting(5.0, number(0, above=True))
    border_radius_min: int = setting(1, whole(0))
    border_radius_max: int = setting(4, whole(0))
    border_scale: float = setting(0.1, number(0))
    class_weight_max: float = setting(10.0, number(1))
    workers: int = setting(2, whole(0))

    def check(self, source):
        if self.border_radius_min > self.border_radius_max:
            raise self.error(source, "need targets.border_radius_min <= targets.border_radius_max")

    def make_targets_kwargs(self) -> dict[str, Any]:
        """The keyword arguments of :func:`pipeline.method.training_targets.make_targets`."""
        keys = ("w0", "sigma", "border_radius_min", "border_radius_max", "border_scale", "class_weight_max")
        return {k: getattr(self, k) for k in keys}


@dataclass(frozen=True)
class ModelConfig(Section):
    """``model``: architecture and head (also the ``model`` section of a model directory)."""

    NAME: ClassVar[str] = "model"
    arch: str = setting("unet", text)  # checked against pipeline.model.networks.ARCHITECTURES when built
    head: str = setting("sigmoid", choice(HEAD_NAMES))
    encoder: str | None = setting("resnet34", optional(text))
    encoder_weights: str | None = setting(None, optional(text))
    depth: int = setting(4, whole(1))
    width: int = setting(16, whole(1))
    upsampling: str = setting("transpose", choice(("transpose", "bilinear", "nearest")))


@dataclass(frozen=True)
class LossConfig(Section):
    """``loss``: factors of the loss terms (a factor 0 drops the term)."""

    NAME: ClassVar[str] = "loss"
    weighted_ce: float = setting(1.0, number(0))
    dice: float = setting(1.0, number(0))
    focal: float = setting(0.0, number(0))
    focal_gamma: float = setting(2.0, number(0))
    bce: float = setting(1.0, number(0))
    use_weight_maps: bool = setting(True, flag)


@dataclass(frozen=True)
class AugmentConfig(Section):
    """``augment``: the training augmentation (see :mod:`pipeline.training.augment` for each switch)."""

    NAME: ClassVar[str] = "augment"
    crop: int | None = setting(256, optional(whole(1)))
    flips: bool | float = setting(True, switch)
    rot90: bool | float = setting(True, switch)
    scale: list[float] | None = setting([0.7, 1.4], zoom_range)
    elastic: bool | float = setting(False, switch)
    elastic_alpha: float = setting(200.0, number(0))
    elastic_sigma: float = setting(10.0, number(0, above=True))
    brightness_contrast: bool | float = setting(True, switch)
    gamma: bool | float = setting(True, switch)
    color_to_gray: bool | float = setting(True, switch)
    invert: bool | float = setting(True, switch)
    illumination: bool | float = setting(False, switch)
    blur: bool | float = setting(True, switch)
    blur_sigma: list[float] = setting([0.5, 2.0], positive_range)
    dim_saturate: bool | float = setting(True, switch)
    stain: bool | float = setting(True, switch)
    dab: bool | float = setting(False, switch)
    pale: bool | float = setting(False, switch)
    chromo: bool | float = setting(False, switch)
    debris: bool | float = setting(False, switch)
    noise: bool | float = setting(True, switch)
    low_bits: bool | float = setting(True, switch)
    jpeg: bool | float = setting(True, switch)
    normalize: bool = setting(True, flag)


_PRECISION = choice(PRECISIONS)
#: The network settings that ``predict`` and ``segment`` share (:class:`pipeline.model.predictor.Predictor`).
PREDICTOR_KEYS = ("tta", "tile_size", "overlap", "batch_size", "precision", "backend")
_TTA = choice(TTA_MODES)


@dataclass(frozen=True)
class TrainConfig(Section):
    """``train``: optimisation, devices, data loading."""

    NAME: ClassVar[str] = "train"
    out: str = setting("models/trained", text)
    epochs: int = setting(12, whole(1))
    batch_size: int = setting(4, whole(1))
    lr: float = setting(0.003, number(0))
    weight_decay: float = setting(0.0001, number(0))
    schedule: str = setting("onecycle", choice(("onecycle", "cosine")))
    workers: int = setting(2, whole(0))
    precision: str = setting("auto", _PRECISION)
    compile: bool = setting(False, flag)
    samples_per_epoch: int | None = setting(96, optional(whole(1)))
    group_balance: float = setting(1.0, number(0, 1))
    source_balance: float = setting(1.0, number(0, 1))
    source_weights: dict = setting({}, factors)
    device: str = setting("auto", text)
    cache_mb: float = setting(1024, number(0))
    val_every: int = setting(1, whole(1))
    val_balance: str = setting("source", choice(("source", "image")))
    init: str | None = setting(None, optional(text))


@dataclass(frozen=True)
class NetworkSection(Section):
    """The network settings that ``predict`` and ``segment`` share: the model directory, the
    device and the :class:`pipeline.model.predictor.Predictor` options (:data:`PREDICTOR_KEYS`)."""

    model: str = setting("default", text)
    device: str = setting("auto", text)
    tta: str = setting("none", _TTA)
    tile_size: int = setting(1024, whole(1))
    overlap: int = setting(64, whole(0))
    batch_size: int = setting(4, whole(1))
    precision: str = setting("auto", _PRECISION)
    backend: str = setting("auto", choice(BACKENDS))

    def predictor_options(self) -> dict[str, Any]:
        """:class:`pipeline.model.predictor.Predictor` keywords."""
        return {k: getattr(self, k) for k in PREDICTOR_KEYS}


@dataclass(frozen=True)
class PredictConfig(NetworkSection):
    """``predict``: the model and the network settings of ``nuclei predict`` (flip TTA and
    512-px tiles by default: the stage scores a validation fold)."""

    NAME: ClassVar[str] = "predict"
    model: str = setting("models/trained/model", text)
    out: str = setting("data/predictions", text)
    tta: str = setting("flips", _TTA)
    tile_size: int = setting(512, whole(1))


@dataclass(frozen=True)
class PostprocessConfig(Section):
    """``postprocess``: watershed thresholds (also a model directory's ``postprocess``)."""

    NAME: ClassVar[str] = "postprocess"
    out: str = setting("data/postprocessed", text)
    marker_threshold: float = setting(0.5, number(0, 1))
    mask_threshold: float = setting(0.5, number(0, 1))
    min_marker_size: int = setting(4, whole(0))
    min_size: int = setting(10, whole(0))
    min_relative_size: float = setting(0.0, number(0, 1))
    flood: str = setting("probability", choice(FLOODS))
    object_threshold: float = setting(0.0, number(0, 1))
    stained_object_threshold: float | None = setting(None, optional(number(0, 1)))
    stained_mask_threshold: float | None = setting(None, optional(number(0, 1)))
    dense_mask_threshold: float | None = setting(None, optional(number(0, 1)))

    #: The post-processing settings (a model directory's ``postprocess``): the keyword arguments of
    #: :func:`pipeline.method.watershed.postprocess_to_shape`.
    THRESHOLDS: ClassVar[tuple[str, ...]] = (
        "marker_threshold", "mask_threshold", "min_marker_size", "min_size", "min_relative_size", "flood",
        "object_threshold", "stained_object_threshold", "stained_mask_threshold", "dense_mask_threshold",
    )  # fmt: skip

    def thresholds(self) -> dict[str, Any]:
        """The :func:`pipeline.method.watershed.postprocess_to_shape` keyword arguments."""
        return {k: getattr(self, k) for k in self.THRESHOLDS}

    @classmethod
    def of_section(cls, values: PostprocessConfig | Mapping | None, source: str | Path = "params.yaml") -> PostprocessConfig:
        """The :attr:`THRESHOLDS` of a ``postprocess`` section (params.yaml's or a model folder's),
        checked; other keys (``out``) are ignored, missing ones take the defaults."""
        if isinstance(values, PostprocessConfig):
            values = values.thresholds()
        if isinstance(values, Mapping):
            values = {k: v for k, v in values.items() if k in cls.THRESHOLDS}
        return cls.from_dict(values, source)


@dataclass(frozen=True)
class EvaluateConfig(Section):
    """``evaluate``: where the metrics go."""

    NAME: ClassVar[str] = "evaluate"
    out: str = setting("metrics", text)


@dataclass(frozen=True)
class SubmitConfig(Section):
    """``submit``: Kaggle submissions."""

    NAME: ClassVar[str] = "submit"
    out: str = setting("submission.csv", text)
    folder: str = setting("submissions", text)
    test_sets: dict = setting({}, mapping)


@dataclass(frozen=True)
class SegmentConfig(NetworkSection):
    """``segment``: ``nuclei segment`` (command-line flags override these)."""

    NAME: ClassVar[str] = "segment"
    tta: str = setting("auto", _TTA)
    block_size: int = setting(2048, whole(1))
    block_margin: int = setting(128, whole(0))
    slide_pixels: int = setting(50_000_000, whole(1))
    thumbnail: int = setting(320, whole(1))

    def segmenter_options(self) -> dict[str, Any]:
        """:meth:`pipeline.model.segmenter.Segmenter.from_model_dir` keywords."""
        return {k: getattr(self, k) for k in ("device", *PREDICTOR_KEYS, "block_size", "block_margin")}

    def check(self, source):
        if self.block_size <= 2 * self.block_margin:
            raise self.error(source, "segment.block_size must exceed twice segment.block_margin")


SECTIONS: tuple[type[Section], ...] = (
    DataConfig, TargetsConfig, ModelConfig, LossConfig, AugmentConfig, TrainConfig, PredictConfig,
    PostprocessConfig, EvaluateConfig, SubmitConfig, SegmentConfig,
)  # fmt: skip


@dataclass(frozen=True)
class Config:
    """All of ``params.yaml``: ``seed`` and one checked dataclass per section."""

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    targets: TargetsConfig = field(default_factory=TargetsConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    submit: SubmitConfig = field(default_factory=SubmitConfig)
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    #: The file the values came from (error messages).
    source: str = field(default="params.yaml", compare=False)

    @classmethod
    def from_dict(cls, params: Mapping, source: str | Path = "params.yaml") -> Config:
        """Check a parsed parameters mapping; missing sections and keys take the defaults."""
        if not isinstance(params, Mapping):
            raise NucleiError(f"{source}: expected a mapping of stage sections")
        known = {s.NAME: s for s in SECTIONS}
        unknown = [k for k in params if k != "seed" and k not in known]
        if unknown:
            raise NucleiError(f"{source}: unknown section '{unknown[0]}' (known: seed, {', '.join(known)})")
        seed = params.get("seed", 0)
        if seed is None:
            seed = 0
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise NucleiError(f"{source}: seed must be a whole number, got {seed!r}")
        sections = {name: s.from_dict(params.get(name), source) for name, s in known.items()}
        return cls(seed=seed, **sections, source=str(source))

    def to_dict(self) -> dict[str, Any]:
        """All sections as plain mappings, in params.yaml order (what a file would hold)."""
        out: dict[str, Any] = {"seed": self.seed}
        out.update({s.NAME: getattr(self, s.NAME).to_dict() for s in SECTIONS})
        return out

    def replace(self, **sections: Section | int) -> Config:
        """A copy with whole sections (or ``seed``) replaced."""
        return dataclasses.replace(self, **sections)
