"""Blocks and their one stitching rule (pipeline.method.blocks): an image in memory
(Segmenter, segment_in_blocks) and a slide out of core (pipeline.batch.slide) stitch alike.

The nuclei here are wider than the blocks' margin, so a nucleus cut by a block's edge is seen by
two blocks, truncated differently, each copy's centroid in its own block's core: the same nucleus
seen twice, which the rule must keep once.
"""

from __future__ import annotations

import numpy as np
import tifffile
from skimage.draw import disk

from pipeline.batch.slide import Stitcher, segment_slide
from pipeline.files.slide_reader import open_slide
from pipeline.method.blocks import iter_blocks, owned_nuclei, paste_nuclei, segment_in_blocks

from ..conftest import CANONICAL, grey_segmenter

BLOCK, MARGIN, RADIUS = 256, 8, 12  # px; step 240


def seam_discs(side: int, step: int = BLOCK - 2 * MARGIN) -> tuple[np.ndarray, np.ndarray]:
    """Discs of ``RADIUS`` px centred on the block seams, 4 px either side of them, and on their
    crossings, with discs between them: (side, side) uint8 image and int32 true labels."""
    seams = list(range(step, side, step))
    centres = [(s, u) for s in seams for u in seams]  # crossings
    for s in seams:
        for k, t in enumerate(range(60, side - 30, 45)):
            offset = k % 9 - 4
            centres += [(s + offset, t), (t, s - offset)]
    centres += [(r, c) for r in range(120, side, step) for c in range(120, side, step)]
    image = np.full((side, side), 20, np.uint8)
    truth = np.zeros((side, side), np.int32)
    for r, c in centres:
        near = truth[max(r - 2 * RADIUS - 4, 0): r + 2 * RADIUS + 4, max(c - 2 * RADIUS - 4, 0): c + 2 * RADIUS + 4]
        if near.any():
            continue  # keep the discs apart
        rr, cc = disk((r, c), RADIUS, shape=truth.shape)
        truth[rr, cc] = truth.max() + 1
        image[rr, cc] = 200
    return image, truth


def one_label_per_disc(labels: np.ndarray, truth: np.ndarray) -> bool:
    """Every true disc is covered by exactly one label, and every label lies in exactly one disc."""
    pairs = np.unique(np.stack([truth.ravel(), labels.ravel()]), axis=1)
    pairs = pairs[:, pairs[1] > 0]
    n = int(truth.max())
    return (pairs[0] > 0).all() and np.unique(pairs[0]).size == n == np.unique(pairs[1]).size == pairs.shape[1]


def test_a_nucleus_seen_by_two_blocks_is_pasted_once_by_both_paths():
    """The rule itself: blocks that see the true discs cut at their edges, stitched in memory
    (segment_in_blocks) and in a slide's band of rows (Stitcher), give the same labels, one per disc;
    keeping each copy's free pixels instead would leave a second label on each seen-twice disc."""
    _, truth = seam_discs(720)
    min_size = 10

    def labels_of(outer):
        part = truth[outer]
        return part, 1.0, np.ones(int(part.max()) + 1, np.float32)

    in_memory, _, nuclei = segment_in_blocks(truth.shape, labels_of, BLOCK, MARGIN, min_size)
    stitcher = Stitcher(truth.shape[1], min_size)
    copies = 0
    for outer, core in iter_blocks(truth.shape, BLOCK, MARGIN):
        owned = owned_nuclei(truth[outer], core)
        copies += int(owned.max())
        stitcher.paste(outer, owned)
    out_of_core = stitcher.finished(truth.shape[0])
    assert copies - truth.max() > 10  # the case is exercised: discs owned by two blocks
    assert np.array_equal(in_memory, out_of_core)
    assert in_memory.max() == truth.max() == nuclei.size - 1
    assert one_label_per_disc(in_memory, truth)


def test_paste_nuclei_drops_a_copy_losing_more_than_half_and_keeps_a_neighbour_losing_less():
    target = np.zeros((10, 10), np.int32)
    target[0:4, 0:10] = 7  # an earlier block's nucleus
    owned = np.zeros((10, 10), np.int32)
    owned[2:6, 0:4] = 1  # 16 px, 8 taken: half, kept (its 8 free px)
    owned[1:4, 5:9] = 2  # 12 px, 9 taken: dropped
    owned[8:10, 0:2] = 3  # 4 px, free but under min_size 5: dropped
    kept, keep = paste_nuclei(target, owned, count=7, min_size=5)
    assert keep.tolist() == [1]
    assert (target[4:6, 0:4] == 8).all() and (target[0:4] == 7).all() and target[8:].max() == 0
    assert np.array_equal(kept > 0, target == 8)


def test_in_memory_blocks_and_a_slide_out_of_core_give_the_same_labels(tmp_path):
    """End to end, the stand-in network of conftest: the Segmenter's blocks in memory and
    segment_slide's blocks of the same image read piece by piece stitch to the same label image,
    every disc once."""
    image, truth = seam_discs(720)
    seg = grey_segmenter(block_size=BLOCK, block_margin=MARGIN)
    in_memory = seg.segment(np.dstack([image] * 3), diameter=CANONICAL)
    assert in_memory.scale == 1.0 and len(seg.predictor.calls) > 4  # block by block

    path = tmp_path / "slide.tif"
    tifffile.imwrite(path, image, tile=(128, 128))
    row, _, _ = segment_slide(open_slide(path), "slide", tmp_path / "out",
                              grey_segmenter(block_size=BLOCK, block_margin=MARGIN), diameter=CANONICAL)
    out_of_core = tifffile.imread(tmp_path / "out" / "labels" / "slide.tif").astype(np.int32)
    assert np.array_equal(in_memory.labels, out_of_core)
    assert row["count"] == in_memory.labels.max() == truth.max()
    assert one_label_per_disc(in_memory.labels, truth)
