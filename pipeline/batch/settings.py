"""The settings of one ``nuclei segment`` run: the ``segment`` section of params.yaml (read and
checked by :class:`pipeline.config.params.SegmentConfig`) and the per-run flags of the command line, checked
here; and the :class:`pipeline.model.segmenter.Segmenter` they load.

Must not: read images or write files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config.params import ROOT, SegmentConfig
from pipeline.errors import NucleiError
from pipeline.files.io import COLOUR_CHANNELS
from pipeline.method.image_types import IMAGE_TYPES


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
        model = Path(segment.model)
        if not model.is_absolute():  # params.yaml paths are relative to the repository
            model = ROOT / model
        settings = cls(model_dir=Path(flags.pop("model_dir", model)), segment=segment, **flags)
        if settings.diameter is not None and not (
            math.isfinite(settings.diameter) and settings.diameter > 0
        ):
            raise NucleiError(f"--diameter must be a positive number of px, got {settings.diameter}")
        if settings.pixel_size is not None and not (
            math.isfinite(settings.pixel_size) and settings.pixel_size > 0
        ):
            raise NucleiError(f"--pixel-size must be a positive number of µm, got {settings.pixel_size}")
        if settings.channel is not None and settings.channel not in COLOUR_CHANNELS:
            raise NucleiError(f"--channel must be one of {', '.join(COLOUR_CHANNELS)}, got {settings.channel!r}")
        if settings.image_type is not None and settings.image_type not in IMAGE_TYPES:
            raise NucleiError(f"--image-type must be one of {', '.join(IMAGE_TYPES)}, got {settings.image_type!r}")
        return settings


#: The fields of :class:`Settings` that are per-run flags, not keys of the ``segment`` section.
FLAGS = ("model_dir", "pixel_size", "diameter", "channel", "image_type", "wait", "exports")


def load_segmenter(settings: Settings):
    """Load the :class:`pipeline.model.segmenter.Segmenter`; usage errors as NucleiError."""
    from pipeline.model.segmenter import Segmenter

    if not settings.model_dir.is_dir():
        raise NucleiError(
            f"{settings.model_dir}: model directory not found (pass --model DIR or set segment.model "
            "in params.yaml)"
        )
    return Segmenter.from_model_dir(settings.model_dir, **settings.segment.segmenter_options())
