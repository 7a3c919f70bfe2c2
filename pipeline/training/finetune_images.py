"""The annotated images of ``nuclei finetune``, as it reads them: paired and checked
(:mod:`pipeline.data.annotations`), one image at a time, each image used once, and each cut to
its region richest in nuclei when it holds more than a bound of pixels at the network's scale.

Must not: choose what is trained or how (:mod:`pipeline.training.finetune`), build training
examples (:mod:`pipeline.training.finetune_run`), or write files.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import numpy as np

from pipeline.config.model_folder import ModelDirConfig
from pipeline.errors import NucleiError


def read_annotated(images, labels, model_config: ModelDirConfig, max_pixels: float, warn=print) -> list:
    """The annotated images fine-tuning uses (:class:`pipeline.data.annotations.Annotated`).

    Image files paired with a label folder are read one at a time, each cut to its bounded
    region (at most ``max_pixels`` at the network's scale) before the next is read; arrays and
    explicit label lists are read as :func:`pipeline.data.annotations.load_annotated` reads them,
    then cut.

    - An image whose pixels equal an earlier one's (the same file under two paths or names, a
      copy, the same array twice) is used once, and one line says which.
    - Two different image files of one name (``a/x.png``, ``b/x.png``) would both be paired with
      ``x.tif``: refused in one line naming both (in Python, a list of labels pairs them explicitly).

    Raises
    ------
    NucleiError
        As :func:`pipeline.data.annotations.load_annotated`, and two different images of one name.
    """
    from pipeline.data.annotations import load_annotated, pair_files

    if isinstance(labels, (str, Path)) and all(isinstance(i, (str, Path)) for i in images):
        pairs = pair_files(list(images), labels)
        _refuse_same_names(pairs)
        chunks = [([image], [lab]) for image, lab in pairs]
    else:
        chunks = [(images, labels)]
    out, seen, duplicates = [], {}, []
    for chunk in chunks:
        for annotated in load_annotated(*chunk, warn=warn):
            digest = hashlib.sha256(np.ascontiguousarray(annotated.image).data).hexdigest()
            if digest in seen:
                duplicates.append(f"{annotated.source} is the same image as {seen[digest]}")
                continue
            seen[digest] = annotated.source
            out.append(_bounded(annotated, model_config, max_pixels, warn))
    if duplicates:
        n = len(duplicates)
        warn(f"{n} duplicate image{'s' * (n > 1)}, each used once: {'; '.join(duplicates)}")
    return out


def _refuse_same_names(pairs: list) -> None:
    """Refuse two different image files paired with one label file."""
    first: dict = {}
    for image, lab in pairs:
        other = first.setdefault(Path(lab).resolve(), image)
        if other != image and _file_sha256(other) != _file_sha256(image):
            raise NucleiError(f"{other} and {image}: two different images named {image.stem!r}, both paired with "
                              f"{lab}; rename one of them and its labels")


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _bounded(annotated, model_config: ModelDirConfig, max_pixels: float, warn):
    """``annotated``, or its region richest in nuclei when it holds more than ``max_pixels`` at
    the network's scale (said in one line)."""
    from pipeline.method.scale import median_diameter, scale_factor
    from pipeline.training.finetune_run import bounded_region

    canonical = max((d for d in (model_config.diameter, model_config.stained_diameter) if d), default=None)
    factor = scale_factor(median_diameter(annotated.labels), canonical) if canonical else 1.0
    rows, cols = bounded_region(annotated.labels, max_pixels, factor)
    height, width = annotated.labels.shape
    h, w = rows.stop - rows.start, cols.stop - cols.start
    if (h, w) == (height, width):
        return annotated
    warn(f"{annotated.source}: {width}x{height} px; fine-tuning uses its {w}x{h} px region richest in nuclei "
         f"(at most {max_pixels / 1e6:.1f} Mpx at the network's scale: a bound on memory)")
    return dataclasses.replace(annotated, image=annotated.image[rows, cols].copy(),
                               labels=annotated.labels[rows, cols].copy())
