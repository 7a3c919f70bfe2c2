"""Reading TIFF files: every series and plane of a TIFF as images (:class:`pipeline.files.io.Plane`).

Owns the mapping of a TIFF's axes (pages, Z, T, channels, colour samples) to planes, their
names (``_p<k>``, ``_s<j>``) and the Orientation tag of each series. Called by
:func:`pipeline.files.io.read_planes`, which checks the planes' values. Must not: write files.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from pipeline.errors import NucleiError, one_line
from pipeline.files.metadata import tiff_pixel_size
from pipeline.files.orientation import apply_orientation, tiff_orientation
from pipeline.files.planes import Plane, check_size


def read_tiff_planes(path: Path) -> list[Plane]:
    """Every series of a TIFF as planes, each (Y, X) or (Y, X, S) where S holds colour samples.

    Every axis other than Y, X and the samples axis S (pages, Z, T, channels) enumerates planes;
    each series' Orientation tag is applied.
    """
    import tifffile

    logging.getLogger("tifffile").setLevel(logging.ERROR)  # our one-line error says it all
    planes: list[Plane] = []
    try:
        with tifffile.TiffFile(path) as tif:
            for s, series in enumerate(tif.series):
                size = tiff_pixel_size(tif, s)  # µm, from OME / ImageJ metadata
                axes = series.axes
                if "Y" in axes and "X" in axes:
                    check_size(path, series.shape[axes.index("Y")], series.shape[axes.index("X")])
                array = series.asarray()
                keep = "YXS"
                order = [i for i, a in enumerate(axes) if a not in keep]
                order += [axes.index(a) for a in keep if a in axes]
                array = np.transpose(array, order)
                n_extra = len(axes) - sum(a in axes for a in keep)
                stack = array.reshape((-1,) + array.shape[n_extra:])
                code = tiff_orientation(series.keyframe)
                for k, plane in enumerate(stack):
                    tag = (f"_s{s}" if s else "") + (f"_p{k}" if len(stack) > 1 else "")
                    planes.append(Plane(tag, s, k, apply_orientation(plane, code), code, size))
    except NucleiError:
        raise
    except MemoryError:
        raise NucleiError(f"{path}: too large for this machine's memory") from None
    except Exception as exc:  # tifffile raises many types for corrupt files
        raise NucleiError(f"{path}: not a readable TIFF ({one_line(exc)})") from None
    if not planes:
        raise NucleiError(f"{path}: not a readable TIFF (no image in it)")
    if len(planes) == 1:
        planes[0] = planes[0]._replace(tag="")
    return planes
