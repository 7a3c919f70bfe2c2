"""The settings of one ``nuclei segment`` run: the ``segment`` section of params.yaml (read and
checked by :class:`pipeline.config.params.SegmentConfig`) and the per-run flags of the command line, checked
here; and the :class:`pipeline.model.segmenter.Segmenter` they load. The measurement options that
``nuclei segment`` and ``nuclei measure`` share (channels, positivity, cells, spots) are
:class:`MeasureOptions`, with their command-line arguments (:func:`add_measure_arguments`).

Must not: read images or write files.
"""

from __future__ import annotations

import argparse
import math
import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pipeline.config.params import Z_METHODS, SegmentConfig
from pipeline.errors import NucleiError
from pipeline.files.io import COLOUR_CHANNELS
from pipeline.method.image_types import IMAGE_TYPES
from pipeline.shipped import model_folder

#: ``--positive-scope`` values: a threshold per image, or one over the batch.
POSITIVE_SCOPES = ("image", "batch")
#: Units ``--cell-expansion`` takes, as written after the number.
_UNITS = {"um": "um", "µm": "um", "\u03bcm": "um", "micron": "um", "microns": "um", "px": "px", "": None}


@dataclass(frozen=True)
class CellExpansion:
    """``--cell-expansion D[um|px]``: how far cells grow from their nuclei."""

    value: float
    unit: str | None = None  #: 'um', 'px', or None: µm when the image's pixel size is known, else px

    def __str__(self) -> str:
        return f"{self.value:g}{self.unit or ''}"

    def pixels(self, pixel_size: float | None, source: object) -> float:
        """The distance in px for an image of ``pixel_size`` µm (None: unknown).

        Raises
        ------
        NucleiError
            A distance in µm (``5um``) for an image whose pixel size is unknown.
        """
        if self.unit == "px" or (self.unit is None and pixel_size is None):
            return self.value
        if pixel_size is None:
            raise NucleiError(f"{source}: --cell-expansion {self} is in µm but the pixel size is unknown (none in "
                              "the file's metadata): give --pixel-size, or the distance in px (e.g. 10px)")
        return self.value / pixel_size


@dataclass(frozen=True)
class MeasureOptions:
    """What is measured besides the nuclei's shape (``nuclei segment`` and ``nuclei measure``).

    Every option but ``nuclear_channel`` / ``channel_files`` needs one of them: the image is then
    read with its channels together and every channel is measured in every nucleus.
    """

    #: The channel that holds the nuclei (a name, a key or an index from 0), segmented.
    nuclear_channel: str | None = None
    #: ``--channel-files`` pattern (:class:`pipeline.files.channels.ChannelPattern`).
    channel_files: str | None = None
    #: The ``{c}`` of the batch's channel files, in order (set by the batch).
    channel_values: tuple[str, ...] = ()
    #: (channel, threshold in the file's units, or None for the automatic rule), one per ``--positive``.
    positive: tuple[tuple[str, float | None], ...] = ()
    #: :data:`POSITIVE_SCOPES`: the automatic threshold per image or over the batch.
    positive_scope: str = "image"
    cell_expansion: CellExpansion | None = None
    #: Channels whose spots are counted.
    spots: tuple[str, ...] = ()

    @property
    def channels(self) -> bool:
        """Images are read with their channels together."""
        return self.nuclear_channel is not None or self.channel_files is not None

    def check(self) -> None:
        """Raise NucleiError (a usage error) for options that cannot go together."""
        needs = [name for name, on in (("--positive", self.positive), ("--cell-expansion", self.cell_expansion),
                                       ("--spots", self.spots), ("--positive-scope batch",
                                                                 self.positive_scope != "image")) if on]
        if needs and not self.channels:
            raise NucleiError(f"{needs[0]} needs --nuclear-channel C (or --channel-files): the image is then read "
                              "with its channels together and every channel measured")
        if self.channel_files is not None and self.nuclear_channel is None:
            raise NucleiError("--channel-files needs --nuclear-channel C: which channel holds the nuclei")
        if self.channel_files is not None:
            from pipeline.files.channels import ChannelPattern

            ChannelPattern(self.channel_files)
        if self.positive_scope not in POSITIVE_SCOPES:
            raise NucleiError(f"--positive-scope must be one of {', '.join(POSITIVE_SCOPES)}, got {self.positive_scope!r}")
        channels = [c.casefold() for c, _ in self.positive]
        if len(set(channels)) < len(channels):
            raise NucleiError("--positive names a channel twice")
        if self.cell_expansion is not None and not (math.isfinite(self.cell_expansion.value)
                                                    and self.cell_expansion.value > 0):
            raise NucleiError(f"--cell-expansion must be a positive distance, got {self.cell_expansion}")


def parse_positive(text: str) -> tuple[str, float | None]:
    """``CH=auto`` or ``CH=VALUE`` → (CH, None or VALUE) (argparse type of ``--positive``)."""
    channel, sep, value = text.partition("=")
    if not sep or not channel.strip() or not value.strip():
        raise argparse.ArgumentTypeError(f"expected CH=auto or CH=VALUE (a threshold on mean_CH), got {text!r}")
    if value.strip().lower() == "auto":
        return channel.strip(), None
    try:
        number = float(value)
    except ValueError:
        number = math.nan
    if not math.isfinite(number):
        raise argparse.ArgumentTypeError(f"{channel.strip()}: the threshold must be 'auto' or a number, got {value!r}")
    return channel.strip(), number


def parse_expansion(text: str) -> CellExpansion:
    """``5``, ``5um``, ``5 µm``, ``12px`` → :class:`CellExpansion` (argparse type of ``--cell-expansion``)."""
    found = re.fullmatch(r"\s*([0-9.eE+-]+)\s*([a-zA-Zµ\u03bc]*)\s*", text)
    unit = _UNITS.get(found[2].lower()) if found else "?"
    try:
        value = float(found[1]) if found else math.nan
    except ValueError:
        value = math.nan
    if unit == "?" or (found and found[2].lower() not in _UNITS) or not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive distance: 5 (µm when the pixel size is known, else "
                                         f"px), 5um or 12px; got {text!r}")
    return CellExpansion(value, unit)


def add_measure_arguments(parser: argparse.ArgumentParser) -> None:
    """The options :class:`MeasureOptions` holds (``nuclei segment`` and ``nuclei measure``)."""
    group = parser.add_argument_group("channels, markers, cells and spots (docs/user-guide.md#channels-markers-cells-and-spots)")
    group.add_argument(
        "--nuclear-channel", metavar="C",
        help="read each image with its channels together (multi-channel TIFF, OME-TIFF, ImageJ hyperstack, "
             "RGB: red, green, blue) and segment channel C (its name in the file's metadata, or its index "
             "from 0); every channel is measured in every nucleus: mean_<ch>, median_<ch>, std_<ch>, "
             "integrated_<ch>. Without it each plane is an image of its own",
    )
    group.add_argument(
        "--channel-files", metavar="PATTERN",
        help="channels in separate files, e.g. '{stem}_c{c}.tif': the files of one image share {stem}, "
             "{c} is the channel (0, 1, ... or a name); with --nuclear-channel",
    )
    group.add_argument(
        "--positive", action="append", type=parse_positive, default=[], metavar="CH=auto|VALUE",
        help="call nuclei positive for channel CH: mean_CH above VALUE (the file's units), or above a "
             "threshold set between the two populations of nuclei (auto); repeatable",
    )
    group.add_argument(
        "--positive-scope", choices=POSITIVE_SCOPES, default="image",
        help="auto thresholds per image (default) or one over the whole batch",
    )
    group.add_argument(
        "--cell-expansion", type=parse_expansion, metavar="D",
        help="grow a cell around each nucleus by at most D without overlap: 5 (µm when the pixel size is "
             "known, else px), 5um or 12px; adds cells/<name>.tif, cell_area, cyto_mean_<ch>, nuc_cyto_ratio_<ch>",
    )
    group.add_argument(
        "--spots", action="append", default=[], metavar="CH",
        help="count the spots (foci) of channel CH in each nucleus: spots_CH, spots/<name>.csv; repeatable",
    )


def measure_options(args: argparse.Namespace) -> MeasureOptions:
    """The :class:`MeasureOptions` of parsed command-line arguments (:func:`add_measure_arguments`), checked."""
    options = MeasureOptions(
        nuclear_channel=args.nuclear_channel, channel_files=args.channel_files, positive=tuple(args.positive),
        positive_scope=args.positive_scope, cell_expansion=args.cell_expansion, spots=tuple(args.spots),
    )
    options.check()
    return options


@dataclass(frozen=True)
class StackOptions:
    """How z-stacks and time-lapses are read and segmented (docs/stacks.md)."""

    #: ``--axes``: the axes of every stack, overriding its metadata (:func:`pipeline.files.stacks.check_axes`).
    axes: str | None = None
    #: ``--z-method`` as given; None: the first of ``Z_METHODS`` (``ortho``).
    z_method: str | None = None
    #: ``--anisotropy``: z step / pixel side; None: from the file's voxel size, else estimated from the nuclei.
    anisotropy: float | None = None
    #: ``--track``: link the nuclei of a time-lapse's frames into tracks.
    track: bool = False
    #: ``--frames``: each folder given is one time-lapse, its image files the frames in name order.
    frames: bool = False

    @property
    def method(self) -> str:
        return self.z_method or Z_METHODS[0]

    def check(self) -> StackOptions:
        """The options with ``axes`` normalised; NucleiError (a usage error) for bad values."""
        from pipeline.files.stacks import check_axes
        from pipeline.method.volumes import check_anisotropy

        if self.z_method is not None and self.z_method not in Z_METHODS:
            raise NucleiError(f"--z-method must be one of {', '.join(Z_METHODS)}, got {self.z_method!r}")
        if self.anisotropy is not None:
            check_anisotropy(self.anisotropy)
        if self.frames and self.axes is not None:
            raise NucleiError("--frames and --axes: give one (--frames reads a folder of single images as a "
                              "time-lapse; --axes reads the axes of stack files)")
        return replace(self, axes=None if self.axes is None else check_axes(self.axes))


@dataclass
class Settings:
    """Everything :func:`segment_images` needs besides the inputs: the ``segment`` section of
    params.yaml (:class:`pipeline.config.params.SegmentConfig`) and the per-run flags."""

    model_dir: Path
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    pixel_size: float | None = None
    diameter: float | None = None
    #: Segment (and measure) this colour channel alone (:data:`pipeline.files.io.COLOUR_CHANNELS`).
    channel: str | None = None
    #: Image type of every image (:data:`pipeline.method.image_types.IMAGE_TYPES`); None: typed per image.
    image_type: str | None = None
    #: Wait for another run holding the output folder instead of refusing.
    wait: bool = False
    #: Also write the nuclei in these formats (keys of :data:`pipeline.batch.outlines.FORMATS`).
    exports: tuple[str, ...] = ()
    #: Channels, positivity, cells, spots.
    measure: MeasureOptions = field(default_factory=MeasureOptions)
    #: Z-stacks and time-lapses.
    stacks: StackOptions = field(default_factory=StackOptions)

    @classmethod
    def from_params(
        cls, params: dict[str, Any] | None = None, source: str | Path = "params.yaml", **overrides: Any
    ) -> Settings:
        """Build from the ``segment`` section of params.yaml; ``None`` overrides are ignored.

        ``overrides``: the per-run flags (:data:`FLAGS`) and any ``segment`` key.

        Raises
        ------
        NucleiError
            Unknown keys or values out of range, naming ``source``.
        """
        overrides = {k: v for k, v in overrides.items() if v is not None}
        flags = {k: overrides.pop(k) for k in FLAGS if k in overrides}
        section = dict((params or {}).get("segment") or {})
        segment = SegmentConfig.from_dict({**section, **overrides}, source)
        settings = cls(model_dir=model_folder(flags.pop("model_dir", segment.model)), segment=segment, **flags)
        if settings.diameter is not None and not (
            math.isfinite(settings.diameter) and settings.diameter > 0
        ):
            raise NucleiError(f"--diameter must be a positive number of px, got {settings.diameter}")
        if settings.pixel_size is not None and not (
            math.isfinite(settings.pixel_size) and settings.pixel_size > 0
        ):
            raise NucleiError(f"--pixel-size must be a positive number of µm, got {settings.pixel_size}")
        if settings.image_type is not None and settings.image_type not in IMAGE_TYPES:
            raise NucleiError(f"--image-type must be one of {', '.join(IMAGE_TYPES)}, got {settings.image_type!r}")
        check_channels(settings.channel, settings.measure)
        settings.stacks = settings.stacks.check()
        return settings


def check_channels(channel: str | None, measure: MeasureOptions) -> None:
    """Check ``--channel`` (one colour of each image alone) against the measurement options
    (``--nuclear-channel`` and the rest), for ``nuclei segment`` and ``nuclei measure``.

    Raises
    ------
    NucleiError
        An unknown colour, invalid measurement options, or both ``--channel`` and channels.
    """
    if channel is not None and channel not in COLOUR_CHANNELS:
        raise NucleiError(f"--channel must be one of {', '.join(COLOUR_CHANNELS)}, got {channel!r}")
    measure.check()
    if channel is not None and measure.channels:
        raise NucleiError("--channel and --nuclear-channel: give one (--channel segments and measures one colour "
                          "of each image alone; --nuclear-channel segments one channel and measures them all)")


#: The fields of :class:`Settings` that are per-run flags, not keys of the ``segment`` section.
FLAGS = ("model_dir", "pixel_size", "diameter", "channel", "image_type", "wait", "exports", "measure", "stacks")


def load_segmenter(settings: Settings):
    """Load the :class:`pipeline.model.segmenter.Segmenter`; usage errors as NucleiError."""
    from pipeline.model.segmenter import Segmenter

    if not settings.model_dir.is_dir():
        raise NucleiError(
            f"{settings.model_dir}: model directory not found (pass --model DIR or set segment.model "
            "in params.yaml)"
        )
    return Segmenter.from_model_dir(settings.model_dir, **settings.segment.segmenter_options())
