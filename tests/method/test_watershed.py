"""Marker-controlled watershed on synthetic probability maps."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from scipy import ndimage as ndi

from pipeline.config.params import PostprocessConfig
from pipeline.errors import NucleiError
from pipeline.files.io import read_labels, save_npz
from pipeline.method.watershed import (
    fill_holes,
    for_image_type,
    mask_threshold_for,
    nucleus_fraction,
    postprocess,
    postprocess_to_shape,
    remove_faint,
    remove_relatively_small,
    remove_small,
)
from pipeline.stages.postprocess import main

SHAPE = (96, 128)


def thresholds(section: dict) -> dict:
    """The watershed keywords of a ``postprocess`` section, checked."""
    return PostprocessConfig.of_section(section).thresholds()


def disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    """bool (H, W) disc."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def touching_scene() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Two discs that touch (overlap by 4 px along x) and one isolated disc: bool masks."""
    a = disc(SHAPE, (40, 40), 16)
    b = disc(SHAPE, (40, 68), 16) & ~a
    c = disc(SHAPE, (75, 105), 10)
    return a, b, c


def probs_for(objects: list[np.ndarray], head: str) -> np.ndarray:
    """Ideal probabilities: border = 2-px band around contacts between different objects."""
    mask = np.any(objects, axis=0)
    grown = [ndi.binary_dilation(o, iterations=2) for o in objects]
    border = (np.sum(grown, axis=0) >= 2).astype(np.float32)
    mask = mask.astype(np.float32)
    if head == "softmax":
        p_border = border
        p_inner = mask * (1 - border)
        return np.stack([p_inner, p_border, 1 - p_inner - p_border]).astype(np.float32)
    return np.stack([np.maximum(mask, border), border]).astype(np.float32)


def match(labels: np.ndarray, obj: np.ndarray) -> tuple[int, float]:
    """(label covering most of ``obj``, fraction of ``obj`` it covers)."""
    values, counts = np.unique(labels[obj], return_counts=True)
    best = np.argmax(counts)
    return int(values[best]), counts[best] / obj.sum()


@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
@pytest.mark.parametrize("flood", ["probability", "distance"])
def test_splits_touching_discs_and_keeps_isolated_whole(head, flood):
    a, b, c = touching_scene()
    labels = postprocess(probs_for([a, b, c], head), head, flood=flood)
    assert labels.dtype == np.int32 and labels.shape == SHAPE
    assert labels.max() == 3
    la, fa = match(labels, a)
    lb, fb = match(labels, b)
    lc, fc = match(labels, c)
    assert len({la, lb, lc}) == 3 and 0 not in {la, lb, lc}
    assert fa > 0.9 and fb > 0.9
    assert fc == 1.0 and (labels == lc).sum() == c.sum()  # isolated disc exactly, nothing more
    assert np.array_equal(np.unique(labels), np.arange(4))  # sequential


def test_output_objects_are_connected_and_disjoint():
    rng = np.random.default_rng(0)
    objects = []
    for _ in range(12):
        centre = rng.uniform(10, [SHAPE[0] - 10, SHAPE[1] - 10])
        objects.append(disc(SHAPE, tuple(centre), rng.uniform(5, 12)))
    probs = probs_for(objects, "softmax")
    noise = rng.uniform(-0.2, 0.2, probs.shape).astype(np.float32)
    labels = postprocess(np.clip(probs + noise, 0, 1), "softmax")
    # a label image cannot overlap by construction; check each nucleus is one 8-connected piece
    for value in range(1, labels.max() + 1):
        assert ndi.label(labels == value, structure=np.ones((3, 3)))[1] == 1


def test_small_objects_and_markers_dropped():
    big = disc(SHAPE, (40, 40), 12)
    small = disc(SHAPE, (80, 100), 1.5)  # 9 px < min_size 10
    labels = postprocess(probs_for([big, small], "softmax"), "softmax", min_size=10)
    assert labels.max() == 1 and not labels[small].any()
    # with min_size 0 the small one survives as its own nucleus
    assert postprocess(probs_for([big, small], "softmax"), "softmax", min_size=0).max() == 2


def test_relatively_small_objects_dropped_at_any_scale():
    nuclei = [disc(SHAPE, (30, 30), 12), disc(SHAPE, (30, 90), 11), disc(SHAPE, (75, 40), 12)]
    speck = disc(SHAPE, (75, 100), 3)  # 29 px, 6 % of the median nucleus
    probs = probs_for([*nuclei, speck], "softmax")
    assert postprocess(probs, "softmax", min_size=10).max() == 4
    labels = postprocess(probs, "softmax", min_size=10, min_relative_size=0.2)
    assert labels.max() == 3 and not labels[speck].any() and set(np.unique(labels)) == {0, 1, 2, 3}
    # the rule is relative: the same scene at half or double the size loses the same speck
    for scale in (0.5, 2.0):
        shape = (round(SHAPE[0] * scale), round(SHAPE[1] * scale))
        resized = ndi.zoom(probs, (1, shape[0] / SHAPE[0], shape[1] / SHAPE[1]), order=1)
        kwargs = dict(min_size=2, min_relative_size=0.2)
        assert postprocess_to_shape(resized, "softmax", SHAPE, scale, **kwargs).max() == 3
        assert postprocess_to_shape(resized, "softmax", SHAPE, scale, min_size=2).max() == 4
    empty = np.zeros(SHAPE, np.int32)
    assert remove_relatively_small(empty, 0.5).max() == 0
    one = np.zeros(SHAPE, np.int32)
    one[:3, :3] = 7
    assert remove_relatively_small(one, 0.9).max() == 1  # the median of one nucleus is itself


def test_enlarged_small_nuclei_come_back_on_the_original_grid_whole_and_apart():
    """Nuclei of 10 px seen by the network enlarged 2.5x: post-processed on the original grid
    (probabilities area-averaged back), each touching pair stays apart and every nucleus covers
    its disc of the original grid (IoU >= 0.8 at 10 px, where one pixel of outline is 1/3 of the radius)."""
    scale = 2.5
    centres = [(20, 20), (20, 30.5), (45, 60), (70, 30), (70, 41)]  # two touching pairs, one apart
    truth = [disc(SHAPE, c, 5) for c in centres]
    big = (round(SHAPE[0] * scale), round(SHAPE[1] * scale))
    enlarged = [disc(big, (y * scale + (scale - 1) / 2, x * scale + (scale - 1) / 2), 5 * scale) for y, x in centres]
    for head in ("softmax", "sigmoid"):
        labels = postprocess_to_shape(probs_for(enlarged, head), head, SHAPE, scale, min_size=10, min_marker_size=4)
        assert labels.shape == SHAPE and labels.max() == len(centres)
        found = [match(labels, obj) for obj in truth]
        assert len({value for value, _ in found}) == len(centres) and all(value for value, _ in found)
        for (value, _), obj in zip(found, truth, strict=True):
            iou = (obj & (labels == value)).sum() / (obj | (labels == value)).sum()
            assert iou >= 0.8, (head, iou)


def test_faint_objects_dropped_whatever_their_size():
    """object_threshold removes the nuclei the network is unsure of (peak P(mask - border) below
    it), large or small, and keeps a confident nucleus even when the image edge cuts it small."""
    nuclei = [disc(SHAPE, (30, 30), 12), disc(SHAPE, (30, 90), 11)]
    cut = disc(SHAPE, (75, -3), 6) & disc(SHAPE, (75, 0), 12)  # 3 px inside the left edge
    faint = disc(SHAPE, (75, 60), 12)
    probs = probs_for([*nuclei, cut, faint], "sigmoid")
    probs[0][faint] = 0.95  # a confident mask everywhere but on the faint object
    kwargs = dict(marker_threshold=0.9, mask_threshold=0.9, min_size=4)
    assert postprocess(probs, "sigmoid", **kwargs).max() == 4
    labels = postprocess(probs, "sigmoid", object_threshold=0.99, **kwargs)
    assert labels.max() == 3 and set(np.unique(labels)) == {0, 1, 2, 3}
    assert not labels[faint].any() and match(labels, cut)[1] == 1.0
    # the relative size rule would have removed the cut nucleus (under 0.2 of the median) instead
    assert match(postprocess(probs, "sigmoid", min_relative_size=0.2, **kwargs), cut)[0] == 0
    assert remove_faint(np.zeros(SHAPE, np.int32), probs[0], 0.99).max() == 0
    np.testing.assert_array_equal(remove_faint(labels, probs[0], 0.0), labels)


def test_stained_images_take_their_own_object_threshold(tmp_path, monkeypatch):
    """stained_object_threshold replaces object_threshold for stained (colour) images only, in
    postprocess_to_shape and in the postprocess command (image_type stored by `nuclei predict`)."""
    nucleus, faint = disc(SHAPE, (30, 30), 12), disc(SHAPE, (60, 90), 12)
    probs = probs_for([nucleus, faint], "sigmoid")
    probs[0][faint] = 0.97  # the network is less sure of this one
    settings = dict(marker_threshold=0.9, mask_threshold=0.9, min_size=4, object_threshold=0.99,
                    stained_object_threshold=0.95)
    assert for_image_type(settings, "histology")["object_threshold"] == 0.95
    assert for_image_type(settings, "fluo-small")["object_threshold"] == 0.99
    assert "stained_object_threshold" not in for_image_type(settings)
    unset = settings | {"stained_object_threshold": None}
    assert for_image_type(unset, "histology")["object_threshold"] == 0.99
    assert postprocess_to_shape(probs, "sigmoid", SHAPE, 1.0, None, **settings).max() == 1
    assert postprocess_to_shape(probs, "sigmoid", SHAPE, 1.0, "fluo-small", **settings).max() == 1
    assert postprocess_to_shape(probs, "sigmoid", SHAPE, 1.0, "histology", **settings).max() == 2
    assert postprocess_to_shape(probs, "sigmoid", SHAPE, 1.0, "histology", **unset).max() == 1

    monkeypatch.chdir(tmp_path)
    for name, image_type in (("tissue", "histology"), ("cells", "fluo-small")):
        save_npz(f"pred/{name}.npz", probs=probs.astype(np.float16), head=np.array("sigmoid"),
                 image_type=np.array(image_type))
    (tmp_path / "params.yaml").write_text(
        "predict: {out: pred}\n"
        "postprocess: {out: post, marker_threshold: 0.9, mask_threshold: 0.9, min_size: 4,"
        " object_threshold: 0.99, stained_object_threshold: 0.95}\n"
    )
    assert main(argparse.Namespace(params="params.yaml")) == 0
    assert read_labels(tmp_path / "post" / "tissue.tif").max() == 2
    assert read_labels(tmp_path / "post" / "cells.tif").max() == 1
    with pytest.raises(NucleiError, match="postprocess.stained_object_threshold"):
        thresholds({"stained_object_threshold": 1.5})


def test_stained_images_take_their_own_mask_threshold():
    """stained_mask_threshold replaces mask_threshold for stained images only: a soft-edged
    nucleus (rim at P 0.8) keeps its rim in a stained image and loses it in a grey one."""
    core, whole = disc(SHAPE, (40, 40), 10), disc(SHAPE, (40, 40), 14)
    probs = probs_for([whole], "sigmoid")
    probs[0][whole & ~core] = 0.8
    settings = dict(marker_threshold=0.9, mask_threshold=0.9, min_size=4, stained_mask_threshold=0.7)
    assert for_image_type(settings, "histology")["mask_threshold"] == 0.7
    assert "stained_mask_threshold" not in for_image_type(settings, "fluo-small")
    stained = postprocess_to_shape(probs, "sigmoid", SHAPE, 1.0, "histology", **settings)
    grey = postprocess_to_shape(probs, "sigmoid", SHAPE, 1.0, "fluo-small", **settings)
    np.testing.assert_array_equal(stained > 0, whole)
    np.testing.assert_array_equal(grey > 0, core)
    unset = settings | {"stained_mask_threshold": None}
    np.testing.assert_array_equal(postprocess_to_shape(probs, "sigmoid", SHAPE, 1.0, "histology", **unset), grey)
    with pytest.raises(NucleiError, match="postprocess.stained_mask_threshold"):
        thresholds({"stained_mask_threshold": -0.1})


def test_mask_threshold_follows_the_nucleus_fraction():
    """mask_threshold × (1 − share of pixels with P(mask) > 0.5), floored at dense_mask_threshold;
    None keeps it fixed, and a floor above mask_threshold never raises it."""
    mask_p = np.zeros((10, 10), np.float32)
    assert nucleus_fraction(mask_p) == 0.0 and mask_threshold_for(mask_p, 0.875, 0.6) == 0.875
    mask_p[:2] = 0.9  # 20 % nucleus
    assert nucleus_fraction(mask_p) == pytest.approx(0.2)
    assert mask_threshold_for(mask_p, 0.875, 0.6) == pytest.approx(0.7)
    mask_p[:6] = 0.51  # 60 %: 0.35, floored
    assert mask_threshold_for(mask_p, 0.875, 0.6) == pytest.approx(0.6)
    assert mask_threshold_for(mask_p, 0.875, None) == 0.875
    assert mask_threshold_for(mask_p, 0.5, 0.9) == 0.5


def soft_nuclei(centers: list[tuple[int, int]], shape=SHAPE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sigmoid probabilities of nuclei of radius 8 whose outer 3 px the network is unsure of
    (P(mask) 0.75), with the bool masks of their cores and wholes."""
    cores = np.any([disc(shape, c, 5) for c in centers], axis=0)
    wholes = np.any([disc(shape, c, 8) for c in centers], axis=0)
    probs = np.zeros((2, *shape), np.float32)
    probs[0][wholes] = 0.75
    probs[0][cores] = 1.0
    return probs, cores, wholes


def test_dense_images_keep_the_soft_rims_that_sparse_ones_lose():
    """With dense_mask_threshold set, 20 nuclei filling a third of the image are drawn whole (their
    threshold drops to about 0.58), one nucleus alone is drawn to its sure core (about 0.86), and
    a stained image keeps its fixed threshold; in 3D the volume's fraction decides the same way."""
    from pipeline.method.volumes import watershed_3d

    settings = dict(marker_threshold=0.9, mask_threshold=0.875, min_size=4, dense_mask_threshold=0.5)
    dense, dense_cores, dense_wholes = soft_nuclei([(12 + 24 * i, 16 + 24 * j) for i in range(4) for j in range(5)])
    sparse, sparse_cores, sparse_wholes = soft_nuclei([(48, 64)])
    assert nucleus_fraction(dense[0]) > 0.3

    labels = postprocess_to_shape(dense, "sigmoid", SHAPE, 1.0, "fluo-small", **settings)
    assert labels.max() == 20
    np.testing.assert_array_equal(labels > 0, dense_wholes)
    np.testing.assert_array_equal(postprocess(dense, "sigmoid", **settings) > 0, dense_wholes)
    fixed = settings | {"dense_mask_threshold": None}
    np.testing.assert_array_equal(postprocess_to_shape(dense, "sigmoid", SHAPE, 1.0, "fluo-small", **fixed) > 0,
                                  dense_cores)
    np.testing.assert_array_equal(postprocess_to_shape(dense, "sigmoid", SHAPE, 1.0, "histology", **settings) > 0,
                                  dense_cores)
    np.testing.assert_array_equal(postprocess_to_shape(sparse, "sigmoid", SHAPE, 1.0, "fluo-small", **settings) > 0,
                                  sparse_cores)

    volume = np.repeat(dense[:, None], 3, axis=1)  # (C, Z, H, W): the same plane three times
    labels_3d = watershed_3d(volume, "sigmoid", **settings)
    np.testing.assert_array_equal(labels_3d > 0, np.repeat(dense_wholes[None], 3, axis=0))
    with pytest.raises(NucleiError, match="postprocess.dense_mask_threshold"):
        thresholds({"dense_mask_threshold": 1.5})


def test_empty_map_gives_no_nuclei():
    probs = np.zeros((2, *SHAPE), np.float32)
    labels = postprocess(probs, "sigmoid")
    assert labels.shape == SHAPE and labels.max() == 0


def test_holes_filled_and_unmarked_foreground_kept():
    ring = disc(SHAPE, (40, 40), 15) & ~disc(SHAPE, (40, 40), 3)
    probs = probs_for([ring], "softmax")
    labels = postprocess(probs, "softmax")
    assert labels.max() == 1 and labels[40, 40] == 1
    # no marker anywhere (marker threshold 1): the foreground component is still one nucleus
    assert postprocess(probs, "softmax", marker_threshold=1.0).max() == 1


def test_fill_holes_and_remove_small_helpers():
    labels = np.zeros((20, 30), np.int32)
    labels[2:12, 2:12] = 1
    labels[5:8, 5:8] = 0  # a hole of label 1
    labels[2:12, 15:25] = 2
    labels[6, 19] = 0  # a hole of label 2
    labels[15, 28] = 3  # one pixel
    filled = fill_holes(labels)
    assert (filled[5:8, 5:8] == 1).all() and filled[6, 19] == 2
    assert labels[6, 19] == 0  # input untouched
    assert np.array_equal(np.unique(remove_small(filled, 2)), [0, 1, 2])  # label 3 gone, renumbered
    # a gap enclosed by two nuclei together is no hole of either
    shared = np.zeros((12, 12), np.int32)
    shared[1:11, 1:6], shared[1:11, 6:11] = 1, 2
    shared[4:7, 4:8] = 0
    assert (fill_holes(shared)[4:7, 4:8] == 0).all()


def test_bad_inputs():
    with pytest.raises(ValueError):
        postprocess(np.zeros((2, 8, 8), np.float32), "softmax")
    with pytest.raises(ValueError):
        postprocess(np.zeros((3, 8, 8), np.float32), "softmax", flood="magic")
    with pytest.raises(NucleiError, match="params.yaml: postprocess.mask_threshold"):
        thresholds({"mask_threshold": 2.0})
    assert thresholds({"out": "x", "min_size": 3})["min_size"] == 3


def test_postprocess_command(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    a, b, c = touching_scene()
    save_npz("pred/img1.npz", probs=probs_for([a, b, c], "softmax").astype(np.float16), head=np.array("softmax"))
    (tmp_path / "params.yaml").write_text(
        "predict: {out: pred}\n"
        "postprocess: {out: post, marker_threshold: 0.5, mask_threshold: 0.5, min_marker_size: 4,"
        " min_size: 10, flood: probability}\n"
    )
    assert main(argparse.Namespace(params="params.yaml")) == 0
    labels = read_labels(tmp_path / "post" / "img1.tif")
    assert labels.shape == SHAPE and labels.max() == 3


def test_small_clipped_objects_are_removed_and_a_saturated_nucleus_is_kept():
    """Bright fragments (under a quarter of a nucleus's area, clipped at the top of the normalised
    range) are no nuclei; a dim nucleus of the same size and a saturated nucleus stay."""
    from pipeline.method.watershed import remove_bright_fragments

    labels = np.zeros((64, 96), np.int32)
    labels[5:25, 5:25] = 1  # a nucleus, 20 px (segmented for 20 px)
    labels[5:25, 40:60] = 2  # a saturated nucleus
    labels[40:46, 5:11] = 3  # a bright fragment: 6 x 6 px
    labels[40:46, 40:46] = 4  # a dim one of the same size
    labels[5:25, 70:90] = 5  # another nucleus
    image = np.where(labels > 0, 0.4, 0.02).astype(np.float32)
    image[np.isin(labels, [2, 3])] = 1.0
    out = remove_bright_fragments(labels, np.dstack([image] * 3), diameter=20.0)
    assert out.max() == 4 and not out[40:46, 5:11].any() and out[40:46, 40:46].all() and out[5:25, 40:60].all()
    assert remove_bright_fragments(labels, image, diameter=5.0) is labels  # at 5 px, 6 px is no fragment
    few = np.pad(labels * np.isin(labels, [1, 3, 4, 5]), ((0, 400), (0, 400)))  # one of a large image's brightest
    shown = np.pad(np.where(labels == 2, 0.4, image), ((0, 400), (0, 400)), constant_values=0.02)
    assert remove_bright_fragments(few, shown, diameter=20.0) is few  # under 0.5 % clipped: no debris
    saturated = np.where(labels > 0, 1.0, 0.02).astype(np.float32)  # every nucleus clips: none is debris
    assert remove_bright_fragments(labels, saturated, diameter=20.0) is labels
