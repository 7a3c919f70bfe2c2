"""Benchmark the rule that stitches blocks (issue 86): one nucleus cut by a block edge, two rules.

Usage::

    python -m benchmarks.bench_stitch [--blocks 256:64 384:96 256:16] [--side 3000] [--cell 22]
        [--slide-blocks 2048:128 512:128 512:8] [--tta none] [--threads 2]

Every block keeps the nuclei it owns (centroid in its core, :func:`pipeline.method.blocks.owned_nuclei`)
and pastes them, in row-major order, where no earlier block put a nucleus. The rules differ on a
nucleus that would lose pixels to earlier blocks:

- **fragments** (the in-memory rule before issue 86): it keeps whatever pixels are free; nuclei
  left smaller than ``min_size`` are removed once the image is done.
- **half** (:func:`pipeline.method.blocks.paste_nuclei`, the slides' rule, now both paths'): one
  that would lose more than half of its pixels is the same nucleus seen twice and is dropped; one
  left smaller than ``min_size`` too, at once.

Each block is segmented once and stitched by both rules, so the columns differ by the rule alone.

1. **The embedded sample** (``data/sample/stage1_train``, 20 images with their masks), segmented
   whole by the shipped model (``--tta``), then in blocks of ``--blocks`` SIDE:MARGIN px at the
   network's scale (a quarter block, the most a margin may be, and a margin narrower than large
   nuclei), at the whole image's scale: nuclei found against the truth and the whole image's, the
   DSB2018 score (:func:`pipeline.method.metrics.dsb_score`) against the truth (every image, and the
   images cut in blocks) and against the whole image's labels, label images identical to the whole
   image's, and images whose labels differ between the rules.
2. **The synthetic slide** of ``benchmarks/bench_scale.py`` (``--side``, ``--cell``), planned and
   segmented block by block as ``nuclei segment`` does out of core
   (:func:`pipeline.batch.slide.plan_slide`, :func:`pipeline.batch.slide.block_labels`; blocks of
   ``--slide-blocks`` SIDE:MARGIN px: ``segment``'s defaults, smaller blocks for more seams, and a
   margin narrower than the nuclei, so that a nucleus on a seam is seen by two blocks), the half
   rule through the slide's own :class:`pipeline.batch.slide.Stitcher`: nuclei found against the
   truth (one per cell) and the DSB2018 score against the true discs.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.bench_scale import _cells, write_slide

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "data" / "sample" / "stage1_train"

RULES = ("fragments", "half")
#: A block size no sample image reaches at the network's scale: the whole image in one piece.
WHOLE = 1 << 16


def _key(outer: tuple[slice, slice]) -> tuple[int, int, int, int]:
    return outer[0].start, outer[0].stop, outer[1].start, outer[1].stop


def fragments_rule(shape: tuple[int, int], blocks: list[tuple[tuple[slice, slice], np.ndarray]],
                   min_size: int) -> np.ndarray:
    """The in-memory rule before issue 86: each block's owned nuclei ((h, w) int, 1..k) pasted on
    free pixels whatever they lose, in block order; nuclei under ``min_size`` px² removed at the
    end. (H, W) int64 labels 1..N."""
    labels = np.zeros(shape, np.int64)
    n = 0
    for outer, owned in blocks:
        part = owned.astype(np.int64)
        part[part > 0] += n
        target = labels[outer]
        free = (part > 0) & (target == 0)
        target[free] = part[free]
        n += int(owned.max(initial=0))
    keep = np.bincount(labels.ravel(), minlength=n + 1) >= max(min_size, 1)
    keep[0] = False
    lut = np.zeros(keep.size, np.int64)
    lut[keep] = np.arange(1, int(keep.sum()) + 1)
    return lut[labels]


def half_rule(shape: tuple[int, int], blocks: list[tuple[tuple[slice, slice], np.ndarray]], min_size: int) -> np.ndarray:
    """The shipped rule, through the slide's Stitcher (as ``nuclei segment`` writes a slide)."""
    from pipeline.batch.slide import Stitcher

    stitcher = Stitcher(shape[1], min_size)
    for outer, owned in blocks:
        stitcher.paste(outer, owned)
    return stitcher.finished(shape[0]).astype(np.int64)


def both_rules(seg, image: np.ndarray, whole) -> dict[str, np.ndarray] | None:
    """An image's labels in blocks by both rules, each block segmented once at the whole image's
    scale and type (``whole``: its Segmentation); None when it fits in one block."""
    from pipeline.method.blocks import iter_blocks, owned_nuclei, segment_in_blocks
    from pipeline.method.watershed import sizes_at_scale

    routed = seg.network_for(whole.image_type)
    block, margin = routed.block_geometry(whole.scale)
    shape = image.shape[:2]
    if max(shape) <= block:
        return None
    normalized, tta = routed.normalize(image), routed.tta_for(shape, whole.scale)
    blocks = list(iter_blocks(shape, block, margin))
    parts = {_key(outer): routed.segment_block(normalized[outer], whole.scale, whole.image_type, tta)
             for outer, _ in blocks}
    min_size = int(sizes_at_scale(routed.thresholds, whole.scale).get("min_size") or 0)
    owned = [(outer, owned_nuclei(parts[_key(outer)][0], core)) for outer, core in blocks]
    return {"fragments": fragments_rule(shape, owned, min_size),  # and the shipped path, on the same blocks:
            "half": segment_in_blocks(shape, lambda outer: parts[_key(outer)], block, margin, min_size)[0]}


def sample_images(segmenter_of, configs: list[tuple[int, int]]) -> None:
    """Part 1: the embedded sample, whole and in blocks of (side, margin) px at the network's scale, both rules."""
    from pipeline.data.kaggle import read_kaggle_sample
    from pipeline.method.metrics import dsb_score

    whole_seg = segmenter_of(WHOLE, 128)
    items = []
    for folder in sorted(p for p in SAMPLE.iterdir() if p.is_dir()):
        image, truth = read_kaggle_sample(folder)
        items.append((image, truth, whole_seg.segment(image)))
    n_true = sum(int(t.max()) for _, t, _ in items)
    n_whole = sum(int(w.labels.max()) for _, _, w in items)
    print(f"\n1. the embedded sample: {len(items)} images, {n_true} true nuclei; whole images: {n_whole} found, "
          f"DSB {np.mean([dsb_score(t, w.labels) for _, t, w in items]):.4f}")
    print(f"   {'block':>8} {'rule':<9} {'in blocks':>9} {'found':>6} {'vs true':>8} {'vs whole':>8} "
          f"{'DSB':>7} {'DSB blocks':>10} {'vs whole':>8} {'same':>5} {'differ':>6}")
    for block, margin in configs:
        seg = segmenter_of(block, margin)
        results = [(both_rules(seg, image, whole), truth, whole.labels) for image, truth, whole in items]
        differ = sum(not np.array_equal(r["fragments"], r["half"]) for r, _, _ in results if r is not None)
        for rule in RULES:
            rows = [(r is not None, whole if r is None else r[rule], truth, whole) for r, truth, whole in results]
            found = sum(int(lab.max()) for _, lab, _, _ in rows)
            dsb = np.array([dsb_score(t, lab) for _, lab, t, _ in rows])
            cut = np.array([b for b, *_ in rows])
            vs_whole = np.mean([dsb_score(w, lab) for b, lab, _, w in rows if b])
            same = sum(np.array_equal(lab, w) for b, lab, _, w in rows if b)
            print(f"   {block:>4}:{margin:<3} {rule:<9} {cut.sum():>9} {found:>6} {100 * (found - n_true) / n_true:+7.2f}% "
                  f"{100 * (found - n_whole) / n_whole:+7.2f}% {dsb.mean():7.4f} {dsb[cut].mean():10.4f} "
                  f"{vs_whole:8.4f} {same:>5} {differ:>6}")


def true_discs(side: int, cell: int) -> np.ndarray:
    """The synthetic slide's true nuclei, (side, side) int32 (1 + the cell's index), as
    :func:`benchmarks.bench_scale.synthetic_tile` draws them (a pixel is inside when the disc's anti-aliased
    edge covers half of it)."""
    n = side // cell
    cells = _cells(n, n, cell)
    truth = np.zeros((side, side), np.int32)
    cols = np.arange(n * cell)[None, :]
    j = cols // cell
    for r0 in range(0, n * cell, 256):
        rows = np.arange(r0, min(r0 + 256, n * cell))[:, None]
        i = rows // cell
        dist = np.hypot(rows - (i * cell + cells[0][i, j]), cols - (j * cell + cells[1][i, j]))
        truth[rows[:, 0], : n * cell] = np.where(cells[2][i, j] - dist >= 0, i * n + j + 1, 0)
    return truth


def synthetic_slide(segmenter_of, side: int, cell: int, configs: list[tuple[int, int]]) -> None:
    """Part 2: the synthetic slide out of core, both rules."""
    from pipeline.batch.slide import block_labels, plan_slide
    from pipeline.files.slide_reader import open_slide
    from pipeline.method.blocks import iter_blocks
    from pipeline.method.metrics import dsb_score

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "slide.tif"
        n_true = write_slide(path, side, cell)
        truth = true_discs(side, cell)
        print(f"\n2. synthetic {side}x{side} slide, {n_true} nuclei (one per {cell} px)")
        print(f"   {'block':>8} {'blocks':>6} {'rule':<9} {'found':>7} {'vs true':>8} {'DSB':>7} {'s':>5}")
        for size, margin in configs:
            start = time.perf_counter()
            slide = open_slide(path)
            seg = segmenter_of(size, margin)
            plan = plan_slide(slide, seg)
            blocks = [(outer, block_labels(str(path), outer, core, plan, seg)[0])
                      for outer, core in iter_blocks(slide.shape, plan.block, plan.margin)]
            seconds = time.perf_counter() - start
            for rule, stitch in (("fragments", fragments_rule), ("half", half_rule)):
                labels = stitch(slide.shape, blocks, plan.min_size)
                found = int(labels.max())
                print(f"   {size:>4}:{margin:<3} {len(blocks):>6} {rule:<9} {found:>7} {100 * (found - n_true) / n_true:+7.3f}% "
                      f"{dsb_score(truth, labels):7.4f} {seconds:5.0f}")


def pairs(values: list[str]) -> list[tuple[int, int]]:
    """``SIDE:MARGIN`` options → (side, margin) px."""
    return [(int(side), int(margin)) for side, margin in (value.split(":") for value in values)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", type=Path, default=ROOT / "pipeline" / "shipped" / "model")
    parser.add_argument("--blocks", nargs="+", default=["256:64", "384:96", "256:16"],
                        help="the sample's blocks, SIDE:MARGIN px at the network's scale (the margin is at most a "
                             "quarter block)")
    parser.add_argument("--side", type=int, default=3000)
    parser.add_argument("--cell", type=int, default=22)
    parser.add_argument("--slide-blocks", nargs="+", default=["2048:128", "512:128", "512:8"],
                        help="the slide's blocks, SIDE:MARGIN px at the network's scale (2048:128: segment's defaults)")
    parser.add_argument("--tta", default="none")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-sample", action="store_true")
    parser.add_argument("--skip-slide", action="store_true")
    args = parser.parse_args()

    from pipeline.model.runtime import set_threads
    from pipeline.model.segmenter import Segmenter

    set_threads(args.threads)

    def segmenter_of(block: int, margin: int) -> Segmenter:
        return Segmenter.from_model_dir(args.model, device="cpu", tta=args.tta, block_size=block, block_margin=margin)

    if not args.skip_sample:
        sample_images(segmenter_of, pairs(args.blocks))
    if not args.skip_slide:
        synthetic_slide(segmenter_of, args.side, args.cell, pairs(args.slide_blocks))


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
