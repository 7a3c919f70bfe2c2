"""Annotations read for fine-tuning (pipeline.data.annotations): label ids of any integer type."""

from __future__ import annotations

import numpy as np
import pytest


@pytest.mark.parametrize("dtype, ids", [
    (np.uint32, [2**31 + 5, 2**32 - 1, 7]),  # beyond int32
    (np.int64, [1, 2**32 + 1, 2**40, 2**33 + 2]),  # 2**32 + 1 wraps onto 1 in int32
    (np.uint64, [2**63 + 1, 3, 2**32 + 3]),
])
@pytest.mark.hostile
def test_large_label_ids_are_relabelled_without_wrapping(dtype, ids):
    import warnings

    from pipeline.data.annotations import check_labels

    labels = np.zeros((40, 40), dtype)
    for k, value in enumerate(ids):
        labels[2 + 9 * k : 8 + 9 * k, 5:12] = value
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no id cast past its type
        checked, note = check_labels(labels, "big.tif", (40, 40))
    assert checked.dtype == np.int32
    assert len(np.unique(checked)) == len(ids) + 1  # every nucleus kept apart, none merged
    for rank, value in enumerate(sorted(ids), start=1):  # 1..N in the order of the ids
        assert np.all(checked[labels == value] == rank)
    assert "relabelled" in note and "big.tif" in note
