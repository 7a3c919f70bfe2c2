"""The trust signals on synthetic images that show each failure: bright spots inside dim nuclei
(chromocentres) or pale stained nuclei cut into pieces, dim nuclei missed beside a bright object,
saturated objects, blurred (out-of-focus) nuclei, and other scales that explain the image."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage.draw import disk

from pipeline.method import trust
from pipeline.method.image_types import HISTOLOGY
from pipeline.method.scale import median_diameter


def spotted_nuclei(shape=(240, 240), diameter=22, spacing=40, body=0.35, spot=1.0, bg=0.05, seed=0, spot_radius=(0.1, 0.15)):
    """Dim nuclei of ``diameter`` px, each with 3-5 bright spots, apart, of radius ``spot_radius``
    × its diameter (chromocentres); returns ((H, W, 3) float32 image in [0, 1], nuclei labels, spot labels)."""
    rng = np.random.default_rng(seed)
    grey = np.full(shape, bg, np.float32)
    nuclei, spots = np.zeros(shape, np.int32), np.zeros(shape, np.int32)
    for r in range(spacing // 2, shape[0] - diameter // 2, spacing):
        for c in range(spacing // 2, shape[1] - diameter // 2, spacing):
            rr, cc = disk((r, c), diameter / 2, shape=shape)
            grey[rr, cc], nuclei[rr, cc] = body, nuclei.max() + 1
            n = rng.integers(3, 6)
            for angle in rng.uniform(0, 2 * np.pi) + 2 * np.pi * np.arange(n) / n:  # apart from each other
                dr, dc = 0.27 * diameter * np.sin(angle), 0.27 * diameter * np.cos(angle)
                rr, cc = disk((r + dr, c + dc), rng.uniform(*spot_radius) * diameter, shape=shape)
                grey[rr, cc], spots[rr, cc] = spot, spots.max() + 1
    grey = ndimage.gaussian_filter(grey, 1.0) + rng.normal(0, 0.02, shape).astype(np.float32)
    return np.dstack([np.clip(grey, 0, 1)] * 3), nuclei, spots


def test_spots_inside_dim_nuclei_counted_as_nuclei_are_fragmentation():
    image, nuclei, spots = spotted_nuclei()
    signal = trust.grey_signal(image, "fluo-small")
    assert trust.fragmentation(signal, spots, median_diameter(spots)) > trust.FRAGMENTED
    assert trust.fragmentation(signal, nuclei, median_diameter(nuclei)) == 0.0
    assert trust.uncovered(signal, spots, median_diameter(spots)) > trust.uncovered(signal, nuclei, 22.0)


def test_clusters_of_touching_nuclei_are_not_fragmentation():
    """Four touching nuclei make one blob, which they cover (0.64-0.72): not pieces of one nucleus."""
    rng = np.random.default_rng(0)
    shape = (240, 240)
    labels, grey = np.zeros(shape, np.int32), np.full(shape, 0.05, np.float32)
    for r in range(40, 240, 70):
        for c in range(40, 240, 70):
            for dr, dc in ((0, 0), (0, 20), (20, 0), (20, 20)):
                rr, cc = disk((r + dr, c + dc), 11, shape=shape)
                labels[rr, cc], grey[rr, cc] = labels.max() + 1, rng.uniform(0.5, 0.9)
    assert trust.fragmentation(ndimage.gaussian_filter(grey, 1.0), labels, 20.0) == 0.0


def test_pale_stained_nuclei_cut_into_pieces_are_fragmentation():
    """H&E: large pale nuclei (dark on white once inverted) whose dark specks were outlined."""
    from skimage.color import hed2rgb

    image, nuclei, specks = spotted_nuclei(body=0.3, seed=1)
    hed = np.zeros(image.shape, np.float32)
    hed[..., 0], hed[..., 1] = image[..., 0], 0.1  # haematoxylin where the nuclei are, eosin everywhere
    stained = hed2rgb(hed)  # pale purple nuclei, darker specks, on pink
    signal = trust.grey_signal(stained, HISTOLOGY)
    assert trust.fragmentation(signal, specks, median_diameter(specks)) > trust.FRAGMENTED
    assert trust.fragmentation(signal, nuclei, median_diameter(nuclei)) < trust.FRAGMENTED / 3


def bright_object_field(radius=18):
    """Dim nuclei (0.3) on 0.05 and one bright object (1.0, ``radius`` px) in the middle;
    returns (image, all labels, the object's label alone)."""
    _, nuclei, _ = spotted_nuclei()
    grey = np.where(nuclei > 0, 0.3, 0.05).astype(np.float32)
    rr, cc = disk((120, 120), radius, shape=grey.shape)
    grey[rr, cc] = 1.0
    everything = nuclei.copy()
    everything[rr, cc] = nuclei.max() + 1
    alone = np.zeros_like(nuclei)
    alone[rr, cc] = 1
    return np.dstack([grey] * 3), everything, alone


def test_dim_nuclei_missed_beside_a_bright_object_leave_the_signal_uncovered():
    image, everything, alone = bright_object_field()
    assert (alone > 0).mean() < 0.02  # a rare bright object: Otsu alone would call the dim nuclei background
    signal = trust.grey_signal(image, "fluo-small")
    assert trust.uncovered(signal, alone, 36.0) > trust.UNCOVERED
    assert trust.uncovered(signal, everything, median_diameter(everything)) < 0.05


def test_a_saturated_object_larger_than_the_nuclei_is_seen():
    image, everything, _ = bright_object_field(radius=18)
    assert trust.saturated_nuclei(image, everything) > trust.SATURATED_NUCLEI
    dim, _, _ = bright_object_field(radius=1)
    assert trust.saturated_nuclei(dim * 0.9, everything) == 0.0


def test_blurred_nuclei_have_wider_edges():
    _, nuclei, _ = spotted_nuclei()
    sharp = ndimage.gaussian_filter(np.where(nuclei > 0, 0.8, 0.05).astype(np.float32), 1.0)
    blurred = ndimage.gaussian_filter(sharp, 22 / 3)  # out of focus: edges a third of the diameter wide
    width_sharp = trust.edge_width(sharp, nuclei, 22.0)
    width_blurred = trust.edge_width(blurred / blurred.max(), nuclei, 22.0)
    assert width_sharp < trust.BLURRED < width_blurred


@pytest.mark.parametrize(("probes", "larger", "smaller"), [
    ({2.0: (43.0, 0.90, 12)}, 0.05, np.nan),  # nuclei twice the size, found as confidently: a rival scale
    ({2.0: (22.0, 0.95, 12)}, np.nan, np.nan),  # asked 2×, found the same nuclei: no rival
    ({2.0: (43.0, 0.90, 2)}, np.nan, np.nan),  # too few to say
    ({0.5: (10.0, 0.80, 40), 4.0: (80.0, 0.7, 3)}, -0.15, -0.05),
])
def test_scale_signals_are_the_confidence_gained_at_a_consistent_other_scale(probes, larger, smaller):
    signals = trust.scale_signals(probes, 0.85, 21.0)
    np.testing.assert_allclose([signals["larger_scale"], signals["smaller_scale"]], [larger, smaller])


@pytest.mark.parametrize(("low", "high", "drift"), [
    (20.0, 22.0, np.log2(1.1)),  # the same nuclei whatever the scale asked: they hold
    (12.0, 36.0, np.log2(3.0)),  # the nuclei follow the scale asked: merged when shrunk, cut when enlarged
    (None, 36.0, np.nan),
])
def test_scale_drift_is_how_far_the_nuclei_found_follow_the_scale_asked(low, high, drift):
    probes = {0.5: (low, 0.8, 10), 2.0: (high, 0.8, 10)}
    found = trust.scale_signals(probes, 0.85, 21.0)["scale_drift"]
    np.testing.assert_allclose(found, drift)
    assert bool(trust.trust_flags({"scale_drift": found})) == (drift > trust.DRIFT)


def test_each_signal_over_its_limit_is_one_phrase_and_none_under():
    over = {"larger_scale": 0.02, "smaller_scale": -0.5, "fragmented": 0.9, "uncovered": 0.0,
            "saturated": 5.0, "blurred": np.nan}
    assert trust.trust_flags(over) == [trust.PHRASES["larger_scale"], trust.PHRASES["fragmented"],
                                       trust.PHRASES["saturated"]]
    assert trust.trust_flags({}) == []


def test_a_large_image_is_measured_on_every_nth_pixel_alike(monkeypatch):
    image, nuclei, spots = spotted_nuclei()
    whole = trust.image_signals(image, spots, median_diameter(spots), "fluo-small")
    monkeypatch.setattr(trust, "MAX_PIXELS", image.shape[0] * image.shape[1] // 4)  # every 2nd pixel
    strided = trust.image_signals(image, spots, median_diameter(spots), "fluo-small")
    assert whole["fragmented"] > trust.FRAGMENTED and strided["fragmented"] > trust.FRAGMENTED
    assert set(whole) == set(strided)


# --------------------------------------------------------------------------- each nucleus's confidence


def nucleus_scene():
    """Sigmoid-head probabilities ((2, H, W): P(nucleus), P(border)) of six nuclei of 9 px radius
    and labels that get them right or wrong; returns (probs, labels, {case: label value})."""
    shape = (120, 160)
    mask, border, labels = np.zeros(shape, np.float32), np.zeros(shape, np.float32), np.zeros(shape, np.int32)
    cases = {}
    for k, (name, (r, c)) in enumerate(zip(("whole", "whole2", "cut_short", "merged", "weak", "whole3"),
                                           [(25, 25), (25, 75), (25, 125), (80, 40), (80, 110), (100, 140)], strict=True), 1):
        rr, cc = disk((r, c), 9, shape=shape)
        mask[rr, cc] = 0.97
        labels[rr, cc] = k
        cases[name] = k
        if name == "cut_short":  # the network sees the whole nucleus; the label keeps 3/4 of its radius
            labels[rr, cc] = 0
            rr, cc = disk((r, c), 6.75, shape=shape)
            labels[rr, cc] = k
        if name == "merged":  # two nuclei side by side, a border between them, labelled as one
            rr, cc = disk((r, c + 16), 9, shape=shape)
            mask[rr, cc], labels[rr, cc] = 0.97, k
            border[r - 8:r + 9, c + 7:c + 10] = 0.9
        if name == "weak":
            mask[rr, cc] = 0.6
    return np.stack([mask, border]), labels, cases


def test_nucleus_evidence_reads_what_went_wrong():
    """The evidence of a nucleus cut short (the network's nucleus goes on beyond its outline), of two
    nuclei merged (a border runs through), of a weak one and of sizes apart from the median."""
    probs, labels, case = nucleus_scene()
    evidence = trust.evidence_from_probabilities(probs, "sigmoid", labels)
    column = {name: evidence[:, i] for i, name in enumerate(trust.NUCLEUS_EVIDENCE)}
    assert evidence.shape == (labels.max() + 1, len(trust.NUCLEUS_EVIDENCE)) and np.isnan(evidence[0]).all()
    whole = case["whole"]
    assert column["halo"][case["cut_short"]] > column["halo"][whole] + 5  # logits: 0.97 beyond it, 0 beyond a whole one
    assert column["inner_border"][case["merged"]] > column["inner_border"][whole] + 3
    assert column["mask"][case["weak"]] < column["mask"][whole] - 2
    assert column["larger"][case["merged"]] > 0.5 and column["smaller"][case["cut_short"]] < -0.4
    assert column["solidity"][case["merged"]] < 0.95 < column["solidity"][whole]
    np.testing.assert_allclose(evidence[whole], evidence[case["whole2"]])


def test_nucleus_confidence_ranks_the_failures_below_whole_nuclei():
    """With the shipped weights, of either kind of image, each failure scores under a whole nucleus;
    the confidence is a probability, NaN at 0."""
    probs, labels, case = nucleus_scene()
    evidence = trust.evidence_from_probabilities(probs, "sigmoid", labels)
    for image_type in ("fluo-small", HISTOLOGY):
        conf = trust.nucleus_confidence(evidence, image_type)
        assert conf.dtype == np.float32 and np.isnan(conf[0]) and ((conf[1:] >= 0) & (conf[1:] <= 1)).all()
        for failure in ("cut_short", "merged", "weak"):
            assert conf[case[failure]] < conf[case["whole"]], (image_type, failure)


def test_nuclei_signals_and_the_count_risk_rise_with_borders_inside_the_nuclei():
    """``inner_border`` is the nuclei's mean inner-border logit (absent labels left out, NaN without
    nuclei); nuclei merged across a border raise it, and with it the count risk at the same
    confidence; without nuclei it enters at its "no border" value."""
    probs, labels, case = nucleus_scene()
    evidence = trust.evidence_from_probabilities(probs, "sigmoid", labels)
    column = evidence[:, trust.NUCLEUS_EVIDENCE.index("inner_border")]
    signals = trust.nuclei_signals(evidence)
    assert signals["inner_border"] == pytest.approx(np.nanmean(column))
    whole_only = evidence.copy()
    whole_only[[case["merged"], case["cut_short"], case["weak"]]] = np.nan
    clean = trust.nuclei_signals(whole_only)["inner_border"]
    assert signals["inner_border"] > clean + 0.5
    assert trust.count_risk(signals, 0.85) > trust.count_risk({"inner_border": clean}, 0.85)
    assert np.isnan(trust.nuclei_signals(np.full((1, len(trust.NUCLEUS_EVIDENCE)), np.nan))["inner_border"])
    assert trust.count_risk({"inner_border": float("nan")}, 0.9) == trust.count_risk({}, 0.9)
    assert trust.image_evidence({}, 0.9)[trust.IMAGE_EVIDENCE.index("inner_border")] == trust.ABSENT["inner_border"]
