"""The physical pixel size (and channel names) an image file records: OME-TIFF, ImageJ TIFF and OME-Zarr metadata.

``nuclei segment`` adds µm columns for an image whose file records its pixel size, unless
``--pixel-size`` gives one for every image. Only metadata written for microscopy counts: the OME
``PhysicalSizeX``/``Y`` (µm by default, other length units converted), ImageJ's resolution tags
with its ``unit`` (µm, nm, mm, cm), and OME-Zarr's ``scale`` transform with its axis units. Plain
TIFF resolution tags (72 dpi written by every image editor) are not a pixel size.

Must not: read pixel data, or decide what is done with the size.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from typing import Any

#: Length units → µm (OME's ``UnitsLength`` symbols, ImageJ's and OME-Zarr's spellings).
_TO_UM = {
    "um": 1.0, "µm": 1.0, "\u03bcm": 1.0, "micron": 1.0, "microns": 1.0, "micrometer": 1.0,
    "micrometre": 1.0, "nm": 1e-3, "nanometer": 1e-3, "nanometre": 1e-3, "mm": 1e3, "millimeter": 1e3,
    "millimetre": 1e3, "cm": 1e4, "centimeter": 1e4, "centimetre": 1e4, "m": 1e6, "meter": 1e6,
}  # fmt: skip


def _positive(value: Any, factor: float | None = 1.0) -> float | None:
    """``value × factor`` when a positive, finite number, else None."""
    try:
        number = float(value) * factor if factor is not None else math.nan
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) and number > 0 else None


def _um(value: Any, unit: str | None) -> float | None:
    """``value`` in ``unit`` (default µm) as a positive, finite number of µm, else None."""
    return _positive(value, _TO_UM.get((unit or "µm").strip().lower().replace("\\u00b5", "µ")))


def _ome_pixels(xml: str, image: int):
    """The ``Pixels`` element of the ``image``-th image of an OME-XML document, or None."""
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    images = [e for e in root.iter() if e.tag.rsplit("}", 1)[-1] == "Image"]
    if len(images) <= image:
        return None
    return next((e for e in images[image] if e.tag.rsplit("}", 1)[-1] == "Pixels"), None)


def ome_pixel_size(xml: str, image: int = 0) -> float | None:
    """Pixel side (µm) of the ``image``-th image of an OME-XML document (None when not recorded).

    The mean of ``PhysicalSizeX`` and ``PhysicalSizeY`` when both are given (they are equal for
    every camera in practice), else the one given.
    """
    pixels = _ome_pixels(xml, image)
    if pixels is None:
        return None
    sizes = [_um(pixels.get(f"PhysicalSize{a}"), pixels.get(f"PhysicalSize{a}Unit"))
             for a in "XY" if pixels.get(f"PhysicalSize{a}") is not None]
    sizes = [s for s in sizes if s is not None]
    return sum(sizes) / len(sizes) if sizes else None


def ome_channel_names(xml: str, image: int = 0) -> list[str]:
    """The ``Name`` of each ``Channel`` of the ``image``-th image of an OME-XML document, in order
    ('' for a channel without one; an empty list when the document cannot be read)."""
    pixels = _ome_pixels(xml, image)
    if pixels is None:
        return []
    return [c.get("Name") or "" for c in pixels if c.tag.rsplit("}", 1)[-1] == "Channel"]


#: Time units → seconds (OME's ``UnitsTime`` symbols and ImageJ's ``tunit`` spellings).
_TO_S = {"s": 1.0, "sec": 1.0, "second": 1.0, "seconds": 1.0, "ms": 1e-3, "min": 60.0, "minute": 60.0,
         "minutes": 60.0, "h": 3600.0, "hour": 3600.0, "hours": 3600.0}


def tiff_spacing(tif, series: int = 0) -> tuple[float | None, float | None]:
    """The z step (µm) and the frame interval (s) recorded in an open :class:`tifffile.TiffFile`:
    OME ``PhysicalSizeZ`` and ``TimeIncrement``, ImageJ's ``spacing`` (in its ``unit``) and
    ``finterval`` (in its ``tunit``, default s). None for each one not recorded."""
    if tif.is_ome and tif.ome_metadata:
        pixels = _ome_pixels(tif.ome_metadata, series)
        if pixels is None:
            return None, None
        unit = (pixels.get("TimeIncrementUnit") or "s").strip().lower()
        return (_um(pixels.get("PhysicalSizeZ"), pixels.get("PhysicalSizeZUnit")),
                _positive(pixels.get("TimeIncrement"), _TO_S.get(unit)))
    meta = tif.imagej_metadata or {}
    unit = str(meta.get("tunit") or "s").strip().lower()
    return _um(meta.get("spacing"), meta.get("unit")), _positive(meta.get("finterval"), _TO_S.get(unit))


def tiff_pixel_size(tif, series: int = 0) -> float | None:
    """Pixel side (µm) recorded in an open :class:`tifffile.TiffFile` (OME or ImageJ), or None."""
    if tif.is_ome and tif.ome_metadata:
        return ome_pixel_size(tif.ome_metadata, series)
    meta = tif.imagej_metadata
    if meta and meta.get("unit"):
        page = tif.series[series].keyframe if series < len(tif.series) else tif.pages.first
        tag = page.tags.get("XResolution")
        if tag is not None:
            numerator, denominator = tag.value
            if numerator:
                return _um(denominator / numerator, meta["unit"])
    return None


def zarr_pixel_size(multiscales: list[dict]) -> float | None:
    """Pixel side (µm) of the full-resolution level of OME-Zarr ``multiscales`` metadata, or None."""
    try:
        scales = multiscales[0]
        axes = scales["axes"]
        transforms = scales["datasets"][0]["coordinateTransformations"]
        scale = next(t["scale"] for t in transforms if t.get("type") == "scale")
        sizes = [_um(s, a.get("unit")) for s, a in zip(scale, axes, strict=True) if a.get("name") in ("x", "y")]
    except (KeyError, IndexError, TypeError, StopIteration, ValueError):
        return None
    sizes = [s for s in sizes if s is not None]
    return sum(sizes) / len(sizes) if sizes else None
