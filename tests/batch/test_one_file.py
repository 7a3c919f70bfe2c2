"""One input file of nuclei segment (pipeline.batch.one_file): a failure's one line."""

from __future__ import annotations

import pytest


@pytest.mark.hostile
def test_an_image_out_of_memory_is_named_too_large(tmp_path):
    """An allocator error while segmenting one image is its failed row's one line, not 'unexpected error'."""
    from pipeline.batch.one_file import _failure

    row = _failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                "36000000000 bytes. Error code 12"), tmp_path / "big.tif")
    assert row["status"] == "failed"
    assert row["error"] == (f"{tmp_path / 'big.tif'}: too large for this machine (asked for 33.5 GiB at once; "
                            "lower segment.block_size in params.yaml)")
    assert "too large for this machine" in _failure(MemoryError(), tmp_path / "big.tif")["error"]
