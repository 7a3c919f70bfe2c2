"""A model folder's ``config.yaml``: read and checked in one place (:class:`ModelDirConfig`).

A model folder (``pipeline/shipped/model/``: ``config.yaml`` + ``weights.pt``, written and loaded by
:mod:`pipeline.model.model_dir`) records how its network is used. :class:`ModelDirConfig` is that
record as one frozen dataclass, in the manner of StarDist's ``Config2D``:

- ``model``: the architecture (:class:`pipeline.config.params.ModelConfig`; ``encoder_weights``
  always null: the folder holds the whole state dict);
- ``postprocess``: the watershed thresholds (:class:`pipeline.config.params.PostprocessConfig`;
  only its :attr:`~pipeline.config.params.PostprocessConfig.THRESHOLDS` are recorded, other keys
  of the section, such as ``out``, are ignored);
- ``normalization``: the intensity normalisation (:class:`NormalizationConfig`; a folder whose
  section does not say ``saturation`` predates that rule and gets ``saturation: false``);
- ``diameter``, ``stained_diameter``, ``user_diameter``: nucleus diameters in px (positive, at
  most :data:`MAX_DIAMETER`, or null); :meth:`ModelDirConfig.diameter_for` is the one rule for the
  diameter a model resizes an image to;
- ``networks``: the further networks of the folder, each a model folder inside this one with the
  rule saying which images it runs (:mod:`pipeline.config.routing`: :class:`~pipeline.config.routing.Route`,
  and :func:`~pipeline.config.routing.network_for`, the one rule); none: this folder's network runs
  every image. Folders written before it name them with ``stained_model``, ``dense_model`` and
  ``dense_fraction``, read as routes (:func:`~pipeline.config.routing.legacy_routes`) and written
  back as ``networks``;
- ``training``: free-form provenance; ``weights_sha256``: the checksum of ``weights.pt``;
  ``format_version``: :data:`FORMAT_VERSION`.

The sizes a folder may claim are bounded before anything is read or built: ``config.yaml`` at
most :data:`CONFIG_MAX_BYTES` (a sparse file of many GB is refused by its size, unread),
``model.depth`` at most :data:`MAX_DEPTH` and ``model.width`` at most :data:`MAX_WIDTH`. Whether
the architecture fits the weights, and the machine's memory, is checked by
:func:`pipeline.model.model_dir.read_model_dir` (it needs torch), on a network without memory.

Every value is checked whichever way a config is made (:meth:`ModelDirConfig.from_dict`, the
constructor, :meth:`ModelDirConfig.replace`), with a one-line
:class:`~pipeline.errors.NucleiError` naming the file and the key, so nothing is written that would
not be read back. :meth:`ModelDirConfig.to_dict` is the plain YAML mapping; writing it and reading
it back gives an equal config.

Must not: import any module of the package outside ``pipeline.config`` and ``pipeline.errors``,
read weights, or know about networks and images (the image type of stained tissue is
:data:`pipeline.config.params.HISTOLOGY`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import yaml

from pipeline.config.params import HISTOLOGY, ModelConfig, PostprocessConfig
from pipeline.config.routing import MAIN, MAIN_ROUTE, Route, is_inner, legacy_routes, read_routes
from pipeline.config.rules import Section, flag, is_number, number, setting
from pipeline.errors import NucleiError
from pipeline.shipped import model_folder

#: Version of the model-folder layout (``format_version`` in ``config.yaml``).
FORMAT_VERSION = 1
#: The file of a model folder that :class:`ModelDirConfig` describes.
CONFIG_NAME = "config.yaml"
#: Largest ``config.yaml`` read (bytes; the shipped one is 12 kB): a larger file is refused unread.
CONFIG_MAX_BYTES = 1_000_000
#: Largest ``model.depth`` (2**8 = 256 px stride) and ``model.width`` (channels of the first level)
#: of a model folder: a plain U-Net beyond them has billions of parameters.
MAX_DEPTH, MAX_WIDTH = 8, 512
#: Largest nucleus diameter a model folder may record, px.
MAX_DIAMETER = 10_000.0
#: Keys of a model folder's ``config.yaml``, in the order they are written.
KEYS = ("format_version", "model", "postprocess", "normalization", "diameter", "stained_diameter",
        "user_diameter", "networks", "int8_network", "training", "weights_sha256")
#: Keys of folders written before ``networks``, read as routes (:func:`pipeline.config.routing.legacy_routes`).
LEGACY_ROUTE_KEYS = ("stained_model", "dense_model", "dense_fraction")


@dataclass(frozen=True)
class NormalizationConfig(Section):
    """``normalization``: the :func:`pipeline.method.intensity.normalize_image` keywords of a model
    (percentiles ``low`` < ``high`` in [0, 100], and the saturation rule)."""

    NAME: ClassVar[str] = "normalization"
    low: float = setting(1.0, number(0, 100))
    high: float = setting(99.8, number(0, 100))
    saturation: bool = setting(True, flag)

    def check(self, source):
        if not self.low < self.high:
            raise self.error(source, f"normalization.low ({self.low:g}) must be below normalization.high ({self.high:g})")


#: The normalisation of new models (training, and the model folders it writes): the defaults of
#: :class:`NormalizationConfig`, the keywords of :func:`pipeline.method.intensity.normalize_image`.
NORMALIZATION: dict[str, float | bool] = NormalizationConfig().to_dict()
#: ``saturation`` of a model folder whose ``normalization`` does not say it: written before the
#: saturation rule, that model was trained with the plain percentile normalisation.
LEGACY_SATURATION = False


@dataclass(frozen=True)
class ModelDirConfig:
    """A model folder's ``config.yaml``, checked (module docstring).

    The sections may be given as mappings (checked by their dataclass); numbers become floats. A
    ``normalization`` mapping (or null) without ``saturation`` gets :data:`LEGACY_SATURATION`;
    the default, for new models, is :data:`NORMALIZATION`.
    ``source`` names the file in error messages and takes no part in comparisons.

    Raises
    ------
    NucleiError
        ``<source>: <key> must be ..., got ...``, one line, for any invalid value.
    """

    model: ModelConfig = field(default_factory=ModelConfig)
    postprocess: PostprocessConfig = field(default_factory=PostprocessConfig)
    normalization: NormalizationConfig = field(default_factory=NormalizationConfig)
    #: Canonical nucleus diameter, px at the network's scale (None: the model does not rescale).
    diameter: float | None = None
    #: ... of stained images (None: ``diameter``); needs ``diameter``.
    stained_diameter: float | None = None
    #: Median nucleus diameter (px) of the images a fine-tuned model was adapted to (None: not fine-tuned).
    user_diameter: float | None = None
    #: The folder's further networks and their rules (:mod:`pipeline.config.routing`; empty: this
    #: folder's network runs every image). Given as :class:`~pipeline.config.routing.Route` or
    #: ``config.yaml`` mappings.
    routes: tuple[Route, ...] = ()
    #: This folder's network in int8, an OpenVINO IR file inside the folder (``nuclei quantise``,
    #: :mod:`pipeline.model.quantise`; None: none). Made from these weights: new weights drop it.
    int8_network: str | None = None
    training: dict = field(default_factory=dict)
    weights_sha256: str | None = None
    format_version: int = FORMAT_VERSION
    source: str = field(default=CONFIG_NAME, compare=False)

    def __post_init__(self):
        source = str(self.source)
        object.__setattr__(self, "source", source)
        if self.format_version != FORMAT_VERSION or isinstance(self.format_version, bool):
            raise NucleiError(f"{source}: format_version {self.format_version!r} is not supported "
                              f"(this version reads {FORMAT_VERSION})")
        object.__setattr__(self, "model", _model(self.model, source))
        object.__setattr__(self, "postprocess", _postprocess(self.postprocess, source))
        object.__setattr__(self, "normalization", _normalization(self.normalization, source))
        for key in ("diameter", "stained_diameter", "user_diameter"):
            object.__setattr__(self, key, _positive(getattr(self, key), key, source))
        if self.stained_diameter is not None and self.diameter is None:
            raise NucleiError(f"{source}: stained_diameter needs a diameter")
        object.__setattr__(self, "routes", read_routes(list(self.routes), source))
        object.__setattr__(self, "int8_network", _inner_file(self.int8_network, "int8_network", ".xml", source))
        training = {} if self.training is None else self.training
        if not isinstance(training, Mapping):
            raise NucleiError(f"{source}: training must be a mapping, got {training!r}")
        object.__setattr__(self, "training", dict(training))
        if self.weights_sha256 is not None and not isinstance(self.weights_sha256, str):
            raise NucleiError(f"{source}: weights_sha256 must be a string, got {self.weights_sha256!r}")

    @classmethod
    def from_dict(cls, values: Any, source: str | Path = CONFIG_NAME) -> ModelDirConfig:
        """Check a parsed ``config.yaml`` (``format_version`` defaults to :data:`FORMAT_VERSION`).

        Raises
        ------
        NucleiError
            Not a mapping, an unknown key, no ``model`` section, or an invalid value; one line
            naming ``source`` and the key.
        """
        if not isinstance(values, Mapping):
            raise NucleiError(f"{source}: expected a mapping")
        unknown = [k for k in values if k not in KEYS and k not in LEGACY_ROUTE_KEYS]
        if unknown:
            raise NucleiError(f"{source}: unknown key {unknown[0]!r} (known: {', '.join(KEYS)})")
        if not isinstance(values.get("model"), Mapping):
            raise NucleiError(f"{source}: no 'model' section")
        values = dict(values)
        legacy = {key: values.pop(key) for key in LEGACY_ROUTE_KEYS if key in values}
        if legacy and "networks" in values:
            raise NucleiError(f"{source}: {next(iter(legacy))} and networks are given together (networks replaces it)")
        routes = legacy_routes(legacy, str(source)) if legacy else read_routes(values.pop("networks", None), str(source))
        return cls(**{"normalization": None, **values}, routes=routes, source=str(source))  # none recorded: LEGACY_SATURATION

    def to_dict(self) -> dict[str, Any]:
        """The plain ``config.yaml`` mapping (:data:`KEYS` order; null ``stained_diameter``,
        ``user_diameter``, ``int8_network`` and ``weights_sha256``, and empty ``networks``, left out)."""
        out: dict[str, Any] = {
            "format_version": self.format_version,
            "model": self.model.to_dict(),
            "postprocess": self.postprocess.thresholds(),
            "normalization": self.normalization.to_dict(),
            "diameter": self.diameter,
        }
        for key in ("stained_diameter", "user_diameter"):
            if getattr(self, key) is not None:
                out[key] = getattr(self, key)
        if self.routes:
            out["networks"] = [route.to_dict() for route in self.routes]
        if self.int8_network is not None:
            out["int8_network"] = self.int8_network
        out["training"] = dict(self.training)
        if self.weights_sha256 is not None:
            out["weights_sha256"] = self.weights_sha256
        return out

    def replace(self, **changes: Any) -> ModelDirConfig:
        """A copy with ``changes`` (checked like any config)."""
        return dataclasses.replace(self, **changes)

    def diameter_for(self, image_type: str | None = None) -> float | None:
        """The nucleus diameter (px) this model resizes an image of ``image_type`` to: the
        ``stained_diameter`` for stained images (:data:`~pipeline.config.params.HISTOLOGY`) when set, else the
        ``diameter`` (None: no rescaling). The one rule: the Segmenter, ``finetune`` and the
        shipping script all ask it."""
        if image_type == HISTOLOGY and self.stained_diameter is not None:
            return self.stained_diameter
        return self.diameter

    @property
    def networks(self) -> tuple[Route, ...]:
        """Every network of the folder: its own (:data:`pipeline.config.routing.MAIN_ROUTE`) first, then the routes."""
        return (MAIN_ROUTE, *self.routes)

    def route(self, name: str) -> Route:
        """The network called ``name`` (:attr:`networks`).

        Raises
        ------
        NucleiError
            No such network, naming the known ones.
        """
        for route in self.networks:
            if route.name == name:
                return route
        raise NucleiError(f"{self.source}: no network {name!r} (this folder has {', '.join(r.name for r in self.networks)})")

    def network_folder(self, folder: str | Path, route: Route) -> Path:
        """The model folder holding ``route``'s network, inside the model folder ``folder``
        (``folder`` itself for :data:`~pipeline.config.routing.MAIN`)."""
        folder = model_folder(folder)
        return folder if route.name == MAIN else folder / route.folder

    def without_routes(self, **changes: Any) -> ModelDirConfig:
        """A copy naming no further network (``networks``), with ``changes``: the config of a
        folder written with one network (averaged, widened, fine-tuned)."""
        return self.replace(routes=(), **changes)

    def int8_file(self, folder: str | Path) -> Path | None:
        """The IR file of this model's int8 network inside the model folder ``folder``
        (``int8_network``; None: none)."""
        return None if self.int8_network is None else model_folder(folder) / self.int8_network


def as_model_dir_config(config: ModelDirConfig | Mapping, source: str | Path = CONFIG_NAME) -> ModelDirConfig:
    """``config`` itself when it is a :class:`ModelDirConfig`, else the mapping checked into one."""
    return config if isinstance(config, ModelDirConfig) else ModelDirConfig.from_dict(config, source)


def read_model_config(folder: str | Path) -> ModelDirConfig:
    """Read and check ``<folder>/config.yaml`` (``'default'``: the shipped model).

    Raises
    ------
    NucleiError
        One line naming the folder or the file: folder or file missing, larger than
        :data:`CONFIG_MAX_BYTES`, unreadable YAML, not a mapping, no or an unsupported
        ``format_version``, no ``model`` section, an invalid value.
    """
    folder = model_folder(folder)
    if not folder.is_dir():
        raise NucleiError(f"{folder}: model directory not found")
    file = folder / CONFIG_NAME
    if not file.is_file():
        raise NucleiError(f"{file}: missing (not a model directory)")
    size = file.stat().st_size
    if size > CONFIG_MAX_BYTES:
        raise NucleiError(f"{file}: {byte_size(size)}; a model's {CONFIG_NAME} is at most "
                          f"{byte_size(CONFIG_MAX_BYTES)} (not read: a wrong, damaged or sparse file?)")
    try:
        values = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NucleiError(f"{file}: unreadable ({first})") from None
    if not isinstance(values, dict):
        raise NucleiError(f"{file}: expected a mapping")
    if "format_version" not in values:
        raise NucleiError(f"{file}: no format_version")
    return ModelDirConfig.from_dict(values, file)


# --------------------------------------------------------------------------- the values


def byte_size(n: float) -> str:
    """A number of bytes for messages, in decimal units: ``byte_size(36e12) == '36.0 TB'``."""
    for unit, scale in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} bytes"


def _positive(value: Any, key: str, source: str) -> float | None:
    """A diameter: None, or a positive number up to :data:`MAX_DIAMETER` (as a float)."""
    if value is None:
        return None
    if not is_number(value) or not value > 0:
        raise NucleiError(f"{source}: {key} must be a positive number, got {value!r}")
    if value > MAX_DIAMETER:
        raise NucleiError(f"{source}: {key} must be at most {MAX_DIAMETER:g} px, got {value!r}")
    return float(value)


def _inner_file(value: Any, key: str, suffix: str, source: str) -> str | None:
    """A file inside the model folder whose name ends in ``suffix``: None, or a path :func:`~pipeline.config.routing.is_inner`."""
    if value is not None and not (is_inner(value) and value.endswith(suffix)):
        raise NucleiError(f"{source}: {key} must be a {suffix} file inside the model folder, got {value!r}")
    return value


def _model(value: Any, source: str) -> ModelConfig:
    """The ``model`` section, its sizes bounded (:data:`MAX_DEPTH`, :data:`MAX_WIDTH`)."""
    if isinstance(value, ModelConfig):
        value = value.to_dict()
    if not isinstance(value, Mapping):
        raise NucleiError(f"{source}: no 'model' section")
    model = ModelConfig.from_dict({**value, "encoder_weights": None}, source)
    for key, most in (("depth", MAX_DEPTH), ("width", MAX_WIDTH)):
        if getattr(model, key) > most:
            raise NucleiError(f"{source}: model.{key} must be at most {most}, got {getattr(model, key)}")
    return model


def _postprocess(value: Any, source: str) -> PostprocessConfig:
    """The thresholds of a ``postprocess`` section (other keys ignored; missing ones the defaults)."""
    return PostprocessConfig.of_section(value, source)


def _normalization(value: Any, source: str) -> NormalizationConfig:
    if isinstance(value, NormalizationConfig):
        return value
    if value is None:
        value = {}
    if isinstance(value, Mapping):
        value = {"saturation": LEGACY_SATURATION, **value}
    return NormalizationConfig.from_dict(value, source)
