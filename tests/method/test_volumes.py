"""3D nuclei in z-stacks (issue 61): stitching planes, the 3D watershed, per-nucleus volumes, the
synthetic stacks, and ``segment_stack`` with both methods on an ideal grey-level predictor."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.errors import NucleiError
from pipeline.method.synthetic import synthetic_nuclei_stack
from pipeline.method.volumes import (
    area_to_voxels,
    check_anisotropy,
    estimate_anisotropy,
    measure_volumes,
    resize_labels_3d,
    resize_z,
    stitch_planes,
    trim_to_signal,
    volume_metrics,
    watershed_3d,
    watershed_3d_blocks,
)
from pipeline.method.watershed import fill_holes
from pipeline.model.stack_segmenter import segment_stack

from ..conftest import grey_segmenter


def balls(shape, centres, radius, anisotropy=1.0):
    """int32 (Z, H, W) labels of balls (centres in px; plane k at z = k · anisotropy)."""
    zz, yy, xx = np.meshgrid(np.arange(shape[0]) * anisotropy, np.arange(shape[1]), np.arange(shape[2]),
                             indexing="ij")
    labels = np.zeros(shape, np.int32)
    for k, (z, y, x) in enumerate(centres, start=1):
        labels[(zz - z) ** 2 + (yy - y) ** 2 + (xx - x) ** 2 <= radius**2] = k
    return labels


def per_plane(labels, seed=0):
    """Each plane's labels renumbered at random, as independent 2D segmentations would give them."""
    rng = np.random.default_rng(seed)
    out = np.zeros_like(labels)
    for z, plane in enumerate(labels):
        values = np.unique(plane[plane > 0])
        lut = np.zeros(int(labels.max()) + 1, np.int32)
        lut[values] = rng.permutation(values.size) + 1 + z % 3  # values reused from plane to plane
        out[z] = lut[plane]
    return out


def same_partition(a, b) -> bool:
    """The two label volumes hold the same objects, whatever their numbering."""
    return volume_metrics(a, b)["dsb_score"] == 1.0


def sigmoid_probs(labels, border_width=1):
    """(2, Z, H, W) ideal sigmoid-head probabilities: mask = labels > 0, border = the voxels of a label
    next to another label (not to background), grown to ``border_width`` voxels."""
    border = np.zeros(labels.shape, bool)
    for axis in range(labels.ndim):
        for step in (1, -1):
            neighbour = np.roll(labels, step, axis=axis)
            border |= (neighbour > 0) & (neighbour != labels) & (labels > 0)
    if border_width > 1:
        border = ndi.binary_dilation(border, iterations=border_width - 1) & (labels > 0)
    return np.stack([labels > 0, border]).astype(np.float32)

# --------------------------------------------------------------------------- stitching


def glowing_balls(shape=(30, 48, 96), centres=((15, 24, 24), (15, 24, 72)), radius=8, glow=0.3):
    """A stack of two uniform balls (grey 1 over a background of 0.1) whose light reaches the planes
    above and below (``glow`` of the ball's level over its disc at mid-plane, out to the stack's
    faces), the true labels, and the labels a 2D segmentation linked across planes gives: each ball's
    sections, and its glowing disc in every plane above and below it (out of focus)."""
    truth = balls(shape, centres, radius)
    signal = np.where(truth > 0, 1.0, 0.1).astype(np.float32)
    through = truth.copy()
    for k, (_, y, x) in enumerate(centres, start=1):
        disc = balls((1, *shape[1:]), [(0, y, x)], radius)[0] > 0
        beyond = ~(truth == k).any(axis=(1, 2))
        ghost = beyond[:, None, None] & disc[None]
        signal[ghost] = 0.1 + glow * 0.9
        through[ghost] = k
    return signal, truth, through


def test_stitch_links_a_balls_planes_and_keeps_touching_balls_apart():
    truth = balls((21, 48, 80), [(10, 24, 22), (10, 24, 42)], 10)  # touching side by side at x = 32
    truth[[0, -1]] = 0  # 1-px caps, which the 2D min size removes (a cap under 1/4 of the next plane's
    # cross-section would start a nucleus of its own: test_stitch_threshold_and_one_to_one)
    assert (truth == 1).any() and (truth == 2).any()
    stitched = stitch_planes(per_plane(truth))
    assert stitched.dtype == np.int32 and stitched.max() == 2
    assert same_partition(truth, stitched)


def test_stitch_threshold_and_one_to_one():
    labels = np.zeros((2, 20, 40), np.int32)
    labels[0, 5:15, 5:15] = 1  # 100 px
    labels[1, 5:15, 12:22] = 1  # shifted by 7: IoU 30 / 170 = 0.18
    assert stitch_planes(labels).max() == 2
    assert stitch_planes(labels, iou_threshold=0.15).max() == 1
    split = np.zeros((2, 20, 40), np.int32)
    split[0, 5:15, 5:25] = 7  # one wide object above two halves
    split[1, 5:15, 5:14] = 3
    split[1, 5:15, 15:25] = 4
    stitched = stitch_planes(split, iou_threshold=0.2)
    assert stitched.max() == 2  # only one half continues the object above: one-to-one
    assert len(np.unique(stitched[1][stitched[1] > 0])) == 2


# --------------------------------------------------------------------------- the 3D watershed


def ellipsoid_pair(anisotropy=1.0):
    """Two ellipsoids touching along a flat face (true labels), sampled every ``anisotropy`` px in z."""
    depth = int(round(40 / anisotropy))
    zz, yy, xx = np.meshgrid(np.arange(depth) * anisotropy, np.arange(48), np.arange(72), indexing="ij")
    first = ((zz - 20) / 12) ** 2 + ((yy - 24) / 10) ** 2 + ((xx - 24) / 14) ** 2
    second = ((zz - 20) / 11) ** 2 + ((yy - 24) / 12) ** 2 + ((xx - 46) / 12) ** 2
    labels = np.zeros(zz.shape, np.int32)
    labels[(first <= 1) & (first <= second)] = 1
    labels[(second <= 1) & (second < first)] = 2
    return labels


@pytest.mark.parametrize("anisotropy", [1.0, 2.0])
@pytest.mark.parametrize("flood", ["probability", "distance"])
def test_watershed_3d_splits_touching_ellipsoids(anisotropy, flood):
    truth = ellipsoid_pair(anisotropy)
    probs = sigmoid_probs(truth, border_width=2)
    labels = watershed_3d(probs, "sigmoid", anisotropy, marker_threshold=0.5, mask_threshold=0.5,
                          min_marker_size=4, min_size=10, flood=flood)
    assert labels.dtype == np.int32 and labels.max() == 2
    assert volume_metrics(truth, labels)["dsb_score"] >= 0.9
    merged = watershed_3d(np.stack([probs[0], np.zeros_like(probs[1])]), "sigmoid", anisotropy,
                          marker_threshold=0.5, mask_threshold=0.5)
    assert merged.max() == 1  # without the border channel they are one object: the split is the watershed's


def test_trim_ends_each_nucleus_where_its_signal_ends():
    signal, truth, through = glowing_balls()
    assert (measure_volumes(through)["z_extent"] == 30).all()  # run through every plane
    trimmed = trim_to_signal(through, signal)
    found, true = measure_volumes(trimmed), measure_volumes(truth)
    assert len(found) == 2 and (np.abs(found["z_extent"].to_numpy() - true["z_extent"].to_numpy()) <= 2).all()
    assert volume_metrics(truth, trimmed)["dsb_score"] >= 0.8
    # a nucleus brighter than the level everywhere is left as it is
    assert same_partition(trim_to_signal(truth, signal), truth)


def test_trim_splits_nuclei_stacked_along_z_and_drops_dim_ghosts():
    truth = balls((40, 40, 40), [(10, 20, 20), (30, 20, 20)], 7)
    signal = np.where(truth > 0, 1.0, 0.1).astype(np.float32)
    merged = (truth > 0).astype(np.int32)  # linked into one object by dim sections between them
    merged[15:26, 17:24, 17:24] = 1
    merged[:, :2] = 2  # a slab of background of its own: no signal above the background
    trimmed = trim_to_signal(merged, signal)
    assert trimmed.max() == 2 and volume_metrics(truth, trimmed)["ap50"] == 1.0
    with pytest.raises(ValueError, match="fraction"):
        trim_to_signal(truth, signal, 1.0)


@pytest.mark.parametrize("anisotropy", [1.0, 2.0, 4.0])
def test_estimate_anisotropy_of_round_nuclei(anisotropy):
    _, labels = synthetic_nuclei_stack((int(64 / anisotropy), 128, 128), 30, 8.0, anisotropy, seed=1)
    found = estimate_anisotropy(labels > 0)
    assert found is not None and abs(math.log2(found / anisotropy)) < math.log2(1.3)


def test_estimate_anisotropy_without_nuclei_or_depth():
    assert estimate_anisotropy(np.zeros((8, 32, 32))) is None
    assert estimate_anisotropy(balls((2, 64, 64), [(0, 32, 32)], 20) > 0) is None  # not a nucleus deep


def test_watershed_3d_sizes_in_voxels():
    assert area_to_voxels(0) == 0
    d = math.sqrt(4 * 100 / math.pi)
    assert area_to_voxels(100) == round(math.pi * d**3 / 6)
    assert area_to_voxels(100, scale=2.0, anisotropy=2.0) == round(math.pi * d**3 / 6 / 16)
    labels = np.zeros((10, 30, 30), np.int32)
    labels[2:8, 5:15, 5:15] = 1  # 600 voxels
    labels[4:6, 20:23, 20:23] = 2  # 18 voxels: under the sphere of a 10 px² disc (24 voxels)
    out = watershed_3d(sigmoid_probs(labels), "sigmoid", min_size=10, min_marker_size=1)
    assert out.max() == 1 and (out > 0).sum() == 600
    out = watershed_3d(sigmoid_probs(labels), "sigmoid", anisotropy=2.0, min_size=10, min_marker_size=1)
    assert out.max() == 2  # planes twice as far apart: the small one holds 36 px³ > 24


def test_watershed_3d_in_blocks_matches_whole():
    _, truth = synthetic_nuclei_stack((40, 64, 64), 12, 6.0, touching=True, seed=3)
    probs = sigmoid_probs(truth, border_width=2)
    kwargs = {"marker_threshold": 0.5, "mask_threshold": 0.5, "min_size": 10}
    whole = watershed_3d(probs, "sigmoid", **kwargs)
    blocks = watershed_3d_blocks(probs, "sigmoid", block=30, margin=10, **kwargs)  # 4 blocks; nuclei <= 15 planes
    assert whole.max() == truth.max()
    assert blocks.max() == whole.max()
    assert volume_metrics(whole, blocks)["dsb_score"] >= 0.99


def test_fill_holes_3d():
    labels = np.zeros((9, 9, 9), np.int32)
    labels[1:8, 1:8, 1:8] = 3
    labels[4, 4, 4] = 0  # a hole inside 3
    labels[0, 0, 0] = 0
    filled = fill_holes(labels)  # the 2D post-processing's, in 3D
    assert filled[4, 4, 4] == 3 and filled[0, 0, 0] == 0
    assert labels[4, 4, 4] == 0  # a copy


# --------------------------------------------------------------------------- measurements, resampling, scores


def test_measure_volumes_exact():
    labels = np.zeros((10, 20, 30), np.int32)
    labels[2:5, 4:8, 10:20] = 5  # 3 × 4 × 10 = 120 voxels
    labels[7, 0, 0] = 9
    intensity = np.zeros(labels.shape, np.uint16)
    intensity[2:5, 4:8, 10:20] = 100
    intensity[3, 4:8, 10:20] = 400  # mean (100 + 400 + 100) / 3
    table = measure_volumes(labels, voxel_size=(2.0, 0.5, 0.5), intensity=intensity)
    assert list(table["label"]) == [5, 9]
    row = table.iloc[0]
    assert row["volume_voxels"] == 120 and row["volume_um3"] == pytest.approx(120 * 0.5)
    assert (row["centroid_z"], row["centroid_y"], row["centroid_x"]) == pytest.approx((3.0, 5.5, 14.5))
    assert (row["z_min"], row["z_max"], row["z_extent"]) == (2, 4, 3)
    assert row["mean_intensity"] == pytest.approx(200.0)
    assert tuple(table.iloc[1][["volume_voxels", "z_extent"]]) == (1, 1)
    assert "volume_um3" not in measure_volumes(labels).columns
    with pytest.raises(NucleiError, match="voxel size"):
        measure_volumes(labels, voxel_size=(0, 1, 1))


def test_resize_z_and_labels():
    ramp = np.broadcast_to(np.arange(4, dtype=np.float32)[:, None, None], (4, 3, 5)).copy()
    up = resize_z(ramp, 16)
    assert up.shape == (16, 3, 5)
    assert np.all(np.diff(up[:, 0, 0]) >= 0) and up[0, 0, 0] == 0 and up[-1, 0, 0] == 3
    assert np.allclose(resize_z(up, 4), ramp, atol=0.2)
    labels = np.zeros((4, 6, 6), np.int32)
    labels[1:3, 2:4, 2:4] = 7
    back = resize_labels_3d(resize_labels_3d(labels, (16, 6, 6)), (4, 6, 6))
    assert np.array_equal(back > 0, labels > 0) and back.max() == 1


def test_volume_metrics():
    truth = balls((20, 32, 48), [(10, 16, 12), (10, 16, 34)], 8)
    assert volume_metrics(truth, truth)["dsb_score"] == 1.0
    merged = (truth > 0).astype(np.int32)
    metrics = volume_metrics(truth, merged)
    assert metrics["ap50"] == 0.0 and metrics["n_pred"] == 1 and metrics["n_true"] == 2


# --------------------------------------------------------------------------- synthetic stacks


def test_synthetic_nuclei_stack():
    image, labels = synthetic_nuclei_stack((24, 96, 96), 10, 8.0, seed=1)
    assert image.dtype == np.uint16 and labels.dtype == np.int32 and image.shape == labels.shape == (24, 96, 96)
    assert labels.max() == 10 and set(np.unique(labels)) == set(range(11))
    again, _ = synthetic_nuclei_stack((24, 96, 96), 10, 8.0, seed=1)
    assert np.array_equal(image, again)
    assert image[labels > 0].mean() > 2 * image[labels == 0].mean()
    touching = (np.diff(labels, axis=2) != 0) & (labels[:, :, 1:] > 0) & (labels[:, :, :-1] > 0)
    assert touching.any()  # some nuclei touch
    coarse_image, coarse = synthetic_nuclei_stack((6, 96, 96), 10, 8.0, anisotropy=4.0, seed=1)
    assert coarse.shape == (6, 96, 96)
    extent = measure_volumes(coarse)["z_extent"]
    assert extent.max() <= 6 and extent.median() < measure_volumes(labels)["z_extent"].median() / 2


# --------------------------------------------------------------------------- segment_stack


def clean_stack(anisotropy):
    """A noiseless uint8 stack of four separate balls of radius 10 (grey 200 on 20) and its labels."""
    centres = [(16, 16, 16), (16, 16, 48), (14, 46, 20), (18, 44, 50)]
    truth = balls((int(32 / anisotropy), 64, 64), centres, 10, anisotropy)
    return np.where(truth > 0, 200, 20).astype(np.uint8), truth


@pytest.mark.parametrize("method", ["stitch", "ortho"])
@pytest.mark.parametrize("anisotropy", [1.0, 4.0])
def test_segment_stack(method, anisotropy):
    stack, truth = clean_stack(anisotropy)
    segmenter = grey_segmenter()
    result = segment_stack(segmenter, stack, method, anisotropy, diameter=20.0)
    assert result.labels.shape == truth.shape and result.labels.dtype == np.int32
    assert (result.method, result.anisotropy, result.diameter, result.scale) == (method, anisotropy, 20.0, 1.0)
    assert result.labels.max() == 4
    assert volume_metrics(truth, result.labels)["dsb_score"] >= 0.8
    shapes = set(segmenter.predictor.calls)
    depth = int(32 / anisotropy)
    if method == "ortho":  # XY planes, then XZ and YZ slices of z resampled to 32 planes
        assert shapes == {(64, 64), (32, 64)}
    else:
        assert shapes == {(64, 64)} and len(segmenter.predictor.calls) == depth


@pytest.mark.parametrize("method", ["stitch", "ortho"])
def test_segment_stack_estimates_one_diameter_and_takes_colour(method):
    stack, truth = clean_stack(2.0)
    segmenter = grey_segmenter()
    result = segment_stack(segmenter, np.repeat(stack[..., None], 3, axis=3), method, 2.0)
    assert result.estimated and 12 <= result.diameter <= 30
    assert result.labels.max() == 4 and volume_metrics(truth, result.labels)["ap50"] == 1.0


@pytest.mark.parametrize("value", [0, -1.0, float("nan"), float("inf"), "x", None])
def test_bad_anisotropy(value):
    stack, _ = clean_stack(4.0)
    if value is not None:  # None: not given, estimated (test_segment_stack_estimates_the_anisotropy)
        with pytest.raises(NucleiError, match="--anisotropy must be a positive number"):
            segment_stack(grey_segmenter(), stack, "ortho", value)
    with pytest.raises(NucleiError, match="--anisotropy"):
        check_anisotropy(value)


def test_bad_stacks():
    stack, _ = clean_stack(4.0)
    with pytest.raises(NucleiError, match="single plane"):
        segment_stack(grey_segmenter(), stack[:1], "stitch")
    with pytest.raises(NucleiError, match="--z-method"):
        segment_stack(grey_segmenter(), stack, "3d")
    with pytest.raises(NucleiError, match="stack"):
        segment_stack(grey_segmenter(), stack[0], "stitch")
