"""Label images of any tool as instance labels: the one rule for binary masks and label ids.

:func:`instance_labels` is what ``nuclei export`` (:func:`pipeline.batch.export.read_label_image`)
and ``nuclei finetune`` (:func:`pipeline.data.annotations.check_labels`) make of a label image:

- any two-valued image (0 and one other value: 0/1, 0/255, bool, ...) whose objects are several
  separate regions is a binary mask: its 4-connected components become the nuclei 1..N;
- ids beyond int32 (uint32, int64 or uint64 labels) are relabelled 1..N in the order of their
  values, never wrapped (``2**32 + 1`` would otherwise become 1 and merge with nucleus 1);
- anything else keeps its values (a single nucleus of value 255 stays 255).

Measurements index arrays by label id; :func:`indexable_labels` numbers sparse ids (a few nuclei of ids up
to 2**31-1) 1..N for them and gives the ids back, so that the outputs keep the ids as given.

Must not: read files, or accept fractional or negative values (the callers check their files).
"""

from __future__ import annotations

import numpy as np

from pipeline.errors import NucleiError

#: Largest label id kept as it is (int32, the labels' type everywhere in the pipeline).
INT32_MAX = int(np.iinfo(np.int32).max)


def instance_labels(labels: np.ndarray, source: str = "labels") -> tuple[np.ndarray, str]:
    """Instance labels of a label image or a binary mask.

    Parameters
    ----------
    labels : (H, W) bool or integer array
        0 = background.
    source : str
        The file (or array) in messages.

    Returns
    -------
    labels : (H, W) int32
        0 = background, one value per nucleus.
    note : str
        One line naming ``source`` when the image was a binary mask or its ids were relabelled
        (for the caller to warn with), else ''.

    Raises
    ------
    NucleiError
        Not 2-D, not integer or bool, negative values.
    """
    from skimage.measure import label as connected_components

    labels = np.asarray(labels)
    if labels.ndim != 2 or not (labels.dtype == bool or np.issubdtype(labels.dtype, np.integer)):
        raise NucleiError(f"{source}: expected one 2-D plane of integer labels, got {labels.dtype} {labels.shape}")
    if labels.dtype == bool:
        labels = labels.view(np.uint8)
    if labels.size == 0:
        return labels.astype(np.int32), ""
    low, high = labels.min(), labels.max()
    if low < 0:
        raise NucleiError(f"{source}: negative labels; expected 0 = background, 1..N nuclei")
    if high > 0 and not np.any((labels != 0) & (labels != high)):  # two values: 0 and one other
        components, n = connected_components(labels != 0, return_num=True, connectivity=1)
        if n > 1:
            return components.astype(np.int32), (f"{source}: a binary mask (values 0 and {high}, {n} separate "
                                                 "objects); its connected components are used as nuclei")
    if high <= INT32_MAX:
        return labels.astype(np.int32), ""
    relabelled, ids = _numbered(labels)
    return relabelled, f"{source}: label ids up to {high} (beyond 2**31-1) relabelled 1..{len(ids) - 1}"


def indexable_labels(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Labels numbered for arrays indexed by id, and the ids to give back.

    Parameters
    ----------
    labels : (H, W) int array
        0 = background, ids up to 2**31-1 (:func:`instance_labels`).

    Returns
    -------
    indexed : (H, W) int array
        ``labels`` itself when its largest id is at most its number of pixels (arrays indexed by id
        are then no larger than the image), else int32 numbered 1..N in the order of the ids.
    ids : (N + 1,) int64 or None
        ``ids[k]`` the id of ``indexed`` label ``k`` (``ids[0] = 0``); None when ``indexed`` is ``labels``.
    """
    labels = np.asarray(labels)
    if int(labels.max(initial=0)) <= labels.size:
        return labels, None
    return _numbered(labels)


def _numbered(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` (non-empty, ids >= 0) numbered 1..N in the order of their ids, as int32, and the
    (N + 1,) ids (0 first): int64, or uint64 for uint64 labels (ids up to 2**64-1)."""
    values, inverse = np.unique(labels, return_inverse=True)
    ids = np.concatenate([np.zeros(1, values.dtype), values[values != 0]])
    ids = ids.astype(np.int64) if np.can_cast(ids.dtype, np.int64) else ids
    return (inverse.reshape(labels.shape) + (values[0] != 0)).astype(np.int32), ids
