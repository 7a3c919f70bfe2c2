"""The Segmenter: scale estimate, rescaling round trip, blocks at any scale, confidence, model checks.

The network is replaced by an ideal stand-in whose nucleus probability is the normalised grey
level (bright discs on a dark background), so every answer is known: one nucleus per disc at
any scale. The shipped model is tested on the same kind of images in test_shipped_model.py.
"""

from __future__ import annotations

import numpy as np
import pytest
from skimage.draw import disk

from pipeline.errors import NucleiError
from pipeline.method.heads import confidence
from pipeline.method.metrics import image_metrics
from pipeline.method.scale import median_diameter
from pipeline.model.segmenter import MIN_CONFIDENCE, Segmenter

from ..conftest import CANONICAL, STAINED_ROUTE, GreyPredictor, InvertedPredictor, grey_segmenter, stain


def disc_image(diameter: float, n: int = 4, dtype=np.uint8, bright=200, bg=20):
    """An n × n grid of separate discs of ``diameter`` px; returns (RGB image, labels)."""
    spacing = int(diameter * 2)
    side = spacing * n
    shape = (side, side)
    labels = np.zeros(shape, np.int32)
    for i in range(n):
        for j in range(n):
            rr, cc = disk((spacing * i + spacing / 2, spacing * j + spacing / 2), diameter / 2, shape=shape)
            labels[rr, cc] = i * n + j + 1
    grey = np.where(labels > 0, bright, bg).astype(dtype)
    return np.dstack([grey] * 3), labels


@pytest.mark.parametrize("method", ["blob", "search"])
@pytest.mark.parametrize("diameter", [8, 30, 120, 250])  # 250: over 8 × the canonical 20 px (100x oil)
def test_discs_of_any_size_are_found_once_without_a_diameter(diameter, method):
    image, true = disc_image(diameter)
    seg = grey_segmenter()
    seg.estimator = method
    estimate = seg.estimate_diameter(seg.normalize(image))
    assert estimate == pytest.approx(median_diameter(true), rel=0.2)
    result = seg.segment(image)
    assert result.estimated and result.diameter == pytest.approx(estimate)
    assert result.scale == pytest.approx(CANONICAL / estimate, rel=0.01)
    assert result.labels.shape == true.shape and result.labels.dtype == np.int32
    assert result.labels.max() == true.max()
    m = image_metrics(true, result.labels)
    assert m["ap50"] == 1.0 and m["mean_matched_iou"] > 0.85


def test_small_nuclei_in_a_large_image_are_estimated_at_their_size():
    """A 3000-px field of 8-px nuclei (a tiled scan, a large camera at low magnification): the
    scale-space prior no longer stops at what a 512-px thumbnail resolves (20 px, beyond the
    network's octave of refinement), so the estimate is the nuclei's size."""
    image, true = disc_image(8, n=188)
    assert image.shape[:2] == (3008, 3008)
    seg = grey_segmenter()
    assert seg.estimate_diameter(seg.normalize(image)) == pytest.approx(median_diameter(true), rel=0.2)


@pytest.mark.parametrize("moved, expected", [(1.1, [10.0]), (1.5, [10.0, 15.0])])
def test_the_blob_estimate_is_refined_again_only_when_the_first_pass_moved_it(monkeypatch, moved, expected):
    """The first refinement moves the prior (10 px) by ×1.1 (0.14 octave: converged, one network
    pass) or by ×1.5 (0.58 octave: measured again at 15 px, and that answer taken)."""
    seg = grey_segmenter()
    monkeypatch.setattr("pipeline.method.scale.strongest_blob", lambda *a, **k: 10.0)
    asked: list[float] = []

    def measure(image, diameter):
        asked.append(diameter)
        return diameter * (moved if len(asked) == 1 else 1.02)

    monkeypatch.setattr(seg, "_measure", measure)
    image, _ = disc_image(10)
    estimate = seg.estimate_diameter(seg.normalize(image))
    assert asked == pytest.approx(expected)
    assert estimate == pytest.approx(expected[-1] * (moved if len(expected) == 1 else 1.02))


def test_a_second_refinement_that_moves_the_estimate_further_than_the_first_is_not_kept(monkeypatch):
    """Diverging: ×1.25 then ×2 (dense nuclei shrunk merge into clumps, a MoNuSeg breast image):
    the first answer stays. Converging (×1.5 then ×1.02, the test above) takes the second."""
    seg = grey_segmenter()
    monkeypatch.setattr("pipeline.method.scale.strongest_blob", lambda *a, **k: 16.0)
    asked: list[float] = []

    def measure(image, diameter):
        asked.append(diameter)
        return diameter * (1.25 if len(asked) == 1 else 2.0)

    monkeypatch.setattr(seg, "_measure", measure)
    image, _ = disc_image(10)
    assert seg.estimate_diameter(seg.normalize(image)) == pytest.approx(20.0)
    assert asked == pytest.approx([16.0, 20.0])


@pytest.mark.parametrize(("prior", "measured", "expected", "searched"), [
    (1000.0, None, 70.0, True),  # a few nuclei filling a small image: nothing under the cap confirmed
    (1000.0, 19.0, 19.0, False),  # the canonical start confirmed: no search
    (30.0, None, 30.0, True),  # under the cap, nuclei found there but too few to confirm it: the prior stays,
    # the search asked too and the network no surer at its answer
])
def test_when_nothing_under_the_cap_is_confirmed_the_search_estimate_is_taken(monkeypatch, prior, measured,
                                                                              expected, searched):
    """A 320-px crop of a 63x image holds 2-3 nuclei of 50-80 px: the whole crop's blob response
    rises past the cap (80 px) with no peak under it, and the network confirms no start (fewer
    than 3 nuclei). The canonical size found nothing there; the multi-scale search finds them."""
    seg = grey_segmenter()
    monkeypatch.setattr("pipeline.method.scale.strongest_blob",
                        lambda d, r, max_diameter=None: prior if max_diameter is None or prior <= max_diameter
                        else float("nan"))
    monkeypatch.setattr(seg, "_measure", lambda image, diameter: measured)
    calls: list[bool] = []
    monkeypatch.setattr(seg, "_estimate_search", lambda image: calls.append(True) or 70.0)
    image, _ = disc_image(40)
    assert seg.estimate_diameter(seg.normalize(image)) == pytest.approx(expected)
    assert bool(calls) == searched


@pytest.mark.parametrize(("peaks", "refined_confidence", "found_at_prior", "searched", "search_confidence",
                          "expected"), [
    ([4.0, 8.0], 0.81, 2, 12.0, 0.74, 15.5),  # 20x H&E: specks at 4 px, nuclei at 16; the larger peak refined and taken
    ([4.0, 8.0], 0.70, 2, 12.0, 0.74, 4.0),  # found less confidently than the prior: the prior stays
    ([4.0, 5.0], 0.81, 2, 12.0, 0.80, 4.0),  # no peak beyond sqrt(2) x the prior, the search not surer: the prior stays
    ([4.0, 5.0], 0.81, 2, 12.0, 0.85, 12.0),  # ... the search surer by CONFIDENCE_GAIN: its answer (a clump-sized prior)
    ([4.0, 5.0], 0.81, 2, None, 0.85, 4.0),  # ... the search finds nothing: the prior stays
    ([4.0, 5.0], 0.81, 0, 12.0, 0.74, 12.0),  # no nucleus at all at the prior: the search's answer
    ([4.0, 5.0], 0.81, 0, None, 0.74, CANONICAL),  # nor does the search anywhere: the canonical size, nothing enlarged
])
def test_an_unconfirmed_prior_gives_way_to_a_larger_peak_the_network_confirms(monkeypatch, peaks, refined_confidence,
                                                                             found_at_prior, searched,
                                                                             search_confidence, expected):
    """The prior (texture specks) finds under 3 nuclei; the nuclei's own peak, nearly as strong,
    refines 8 -> 11 -> 15.5 px and is confirmed: it replaces the unconfirmed prior when the network is
    at least as confident there. Where the network finds no nucleus at all at the prior (haze around
    a sparse field peaks at 3-5 times its few nuclei), the multi-scale search answers; where it finds
    one or two objects there (a clump-sized peak in dense H&E: 109 px for 31-px nuclei), the search's
    answer replaces the prior only when the network is surer there by CONFIDENCE_GAIN (0.66 -> 0.85)."""
    seg = grey_segmenter()
    monkeypatch.setattr("pipeline.method.scale.strongest_blob", lambda *a, **k: 4.0)
    monkeypatch.setattr("pipeline.method.scale.blob_peaks", lambda *a, **k: np.array(peaks))
    answers = {4.0: None, 8.0: 11.0, 11.0: 15.5, 15.5: 15.6}  # elsewhere: under 3 nuclei
    monkeypatch.setattr(seg, "_measure", lambda image, diameter: answers.get(round(diameter, 1)))
    confidences = {4.0: 0.74, searched: search_confidence}
    monkeypatch.setattr(seg, "_probe", lambda image, diameter: (answers.get(round(diameter, 1)),
                                                                confidences.get(diameter, refined_confidence)))
    monkeypatch.setattr(seg, "_estimate_search", lambda image: searched)
    monkeypatch.setattr(seg, "_search_pass", lambda image, scale: (np.full(found_at_prior, 4.0), 0.74))
    image, _ = disc_image(16)
    estimate = seg.estimate_diameter(seg.normalize(image), image_type="fluo-small")
    assert estimate == pytest.approx(expected)


@pytest.mark.parametrize(("at_prior", "at_nuclei", "expected"), [
    (0.70, 0.92, 20.5),  # unsure at the foci, sure at the nuclei: the nuclei's size
    (0.83, 0.92, 20.5),  # sure at the foci, surer at the nuclei: the nuclei's size (was the foci's)
    (0.86, 0.92, 4.0),  # not surer by CONFIDENCE_GAIN at the larger size: the prior stays
    (0.70, 0.74, 4.0),  # no more confident at the larger size: the prior stays
])
def test_nuclei_with_bright_foci_are_sized_by_the_nuclei_when_the_network_is_surer_of_them(
        monkeypatch, at_prior, at_nuclei, expected):
    """Chromocentres: the prior (4 px foci) is confirmed by the network; asked at 2 to 5 times it,
    the network settles on nuclei of 20 px, more confidently by CONFIDENCE_GAIN: that size is
    taken, however confident the network was at the foci (a real confocal DAPI field of mouse
    tissue: 3.95 px for nuclei of 22.8 px, now 20.5)."""
    seg = grey_segmenter()
    monkeypatch.setattr("pipeline.method.scale.strongest_blob", lambda *a, **k: 4.0)
    monkeypatch.setattr("pipeline.method.scale.blob_peaks", lambda *a, **k: np.array([4.0]))
    answers = {4.0: 4.0, 8.0: 16.0, 12.0: 19.0, 16.0: 20.5, 19.0: 20.5, 20.5: 20.5}
    monkeypatch.setattr(seg, "_measure", lambda image, diameter: answers.get(round(diameter, 1)))
    monkeypatch.setattr(seg, "_probe", lambda image, diameter: (answers.get(round(diameter, 1)),
                                                                at_prior if diameter == 4.0 else at_nuclei))
    image, _ = disc_image(16)
    assert seg.estimate_diameter(seg.normalize(image), image_type="fluo-small") == pytest.approx(expected)


def test_an_image_where_the_network_finds_no_nucleus_at_any_scale_is_not_enlarged(monkeypatch):
    """An empty field (a screen's empty well: camera noise) gives a scale-space prior at the noise's
    grain, about 3 px; enlarged ~6x for it, the field took 3 s and found nothing. When the network
    finds no nucleus at the prior nor at any of the search's scales, the estimate is the canonical
    diameter: the image is segmented as it is."""
    seg = grey_segmenter()
    asked: list[float] = []
    monkeypatch.setattr(seg, "_search_pass", lambda image, scale: asked.append(scale) or (np.zeros(0), 0.5))
    noise = np.random.default_rng(0).normal(10, 3, (256, 256, 3)).clip(0, 255).astype(np.uint8)
    assert seg.estimate_diameter(seg.normalize(noise)) == pytest.approx(CANONICAL)
    assert len(asked) > 1  # the prior, then the search's scales


def test_one_estimate_runs_each_network_pass_once(monkeypatch):
    """The steps of one estimate ask for the same pass more than once (an unconfirmed prior is counted
    by its refinement and again for its confidence); each scale runs the network once per estimate,
    with the same answer, and a second estimate runs its own passes."""
    from pipeline.model import diameter

    class NoMemory:  # every pass runs, as before the memory of passes
        by_scale = None

        def __setattr__(self, name, value):
            pass

    seg = grey_segmenter()
    scales: list[float] = []
    predict = seg.predict_scaled
    monkeypatch.setattr(seg, "predict_scaled", lambda image, scale, tta=None: scales.append(scale)
                        or predict(image, scale, tta))
    noise = seg.normalize(np.random.default_rng(0).normal(10, 3, (256, 256, 3)).clip(0, 255).astype(np.uint8))
    with monkeypatch.context() as m:
        m.setattr(diameter, "_PASSES", NoMemory())
        unshared = seg.estimate_diameter(noise)
    assert len(scales) > len(set(scales))  # this image's estimate repeats passes
    scales.clear()
    assert seg.estimate_diameter(noise) == unshared
    assert len(scales) == len(set(scales))
    first = len(scales)
    seg.estimate_diameter(noise)
    assert sorted(scales[first:]) == sorted(scales[:first])


@pytest.mark.parametrize(("probes", "image_type", "expected"), [
    ({9: (9.0, 0.73), 18: (11.0, 0.75), 27: (28.0, 0.85)}, "histology", 28.0),  # vesicular: whole nuclei at 3x
    ({9: (9.0, 0.80), 18: (19.0, 0.85), 27: (30.0, 0.86)}, "histology", 9.0),  # not enough more confident: kept
    ({9: (9.0, 0.73), 18: (40.0, 0.90), 27: (60.0, 0.90)}, "histology", 9.0),  # clumps, not nuclei of that size
])
def test_stained_images_are_probed_for_nuclei_two_and_three_times_the_estimate(monkeypatch, probes, image_type,
                                                                               expected):
    """Large pale nuclei in H&E: the prior and the network agree on their specks (9 px); at 3x
    the network finds nuclei of that size, more confidently, and they are taken."""
    seg = grey_segmenter()
    monkeypatch.setattr(seg, "_estimate_blob", lambda image, dark=None: 9.0)
    monkeypatch.setattr(seg, "_probe", lambda image, diameter: probes[int(round(diameter))])
    image, _ = disc_image(10, n=60)
    assert seg.estimate_diameter(seg.normalize(image), image_type=image_type) == pytest.approx(expected)


@pytest.mark.parametrize(("larger_response", "confirms_larger", "expected_asked", "expected"), [
    (0.95, True, [4.5, 16.0], 16.0),  # spots inside nuclei: the nuclei's peak, confirmed, wins
    (0.95, False, [4.5, 16.0], 4.5),  # the network does not confirm the larger peak
    (0.5, True, [4.5], 4.5),  # a weak larger peak (clusters, a tissue section) is not tried
])
def test_a_larger_scale_space_peak_as_strong_as_the_estimate_is_tried_too(
        monkeypatch, larger_response, confirms_larger, expected_asked, expected):
    """Mouse nuclei's chromocenters (bright spots of ~4.5 px inside 19-px nuclei) give a scale-space
    peak as strong as the nuclei's, and the network, shown the image 4x enlarged, confirms the
    spots (4 of 57 dense-tissue images): the larger peak is refined too and taken when confirmed."""
    seg = grey_segmenter()
    diameters = np.array([3.0, 4.5, 6.0, 8.0, 11.0, 16.0, 22.0, 30.0])
    response = np.array([0.5, 1.0, 0.7, 0.4, 0.6, larger_response, 0.5, 0.3])
    monkeypatch.setattr("pipeline.method.scale.blob_scale_space", lambda *a, **k: (diameters, response))
    asked: list[float] = []

    def measure(image, diameter):
        asked.append(diameter)
        return diameter if diameter < 10 or confirms_larger else diameter / 3

    monkeypatch.setattr(seg, "_measure", measure)
    image, _ = disc_image(10)
    assert seg.estimate_diameter(seg.normalize(image)) == pytest.approx(expected)
    assert asked[:len(expected_asked)] == pytest.approx(expected_asked)  # then the textured probes
    assert (16.0 in asked) == (16.0 in expected_asked)  # the weak peak is never tried


def test_blob_peaks_are_the_local_maxima_above_a_fraction_of_the_strongest():
    from pipeline.method.scale import blob_peaks

    diameters = np.array([3.0, 4.5, 6.0, 8.0, 11.0, 16.0, 22.0])
    response = np.array([0.9, 0.5, 0.7, 0.4, 0.6, 1.0, 0.5])
    assert blob_peaks(diameters, response).tolist() == [3.0, 6.0, 16.0]
    assert blob_peaks(diameters, response, 0.8).tolist() == [3.0, 16.0]
    assert blob_peaks(diameters, response, 0.0, max_diameter=12).tolist() == [3.0, 6.0]
    assert blob_peaks(np.zeros(0), np.zeros(0)).size == 0


@pytest.mark.parametrize("method", ["blob", "search"])
def test_an_embryo_is_not_taken_for_one_nucleus(embryo, method):
    """The scale-space prior peaks at the embryo (163 px, a quarter of the image's height is 75
    px): the estimate stays under that cap and the ring of 10-px nuclei is found."""
    image, true = embryo
    seg = grey_segmenter()
    seg.estimator = method
    result = seg.segment(image)
    assert result.diameter == pytest.approx(median_diameter(true), rel=0.25)
    assert image_metrics(true, result.labels)["ap50"] > 0.7  # 69 of 77 nuclei; 5 without the cap


def test_stained_images_take_the_stained_object_threshold():
    """A colour (stained) image is post-processed with stained_object_threshold; the same grey
    image with object_threshold. Dim dark discs (P(nucleus) 0.6–0.75 for the stand-in network)
    fall under the object threshold 0.9 but not under the stained one, 0.5."""
    from pipeline.method.image_types import image_type_of

    image, true = disc_image(20, n=4)
    dim = (true > 0) & (true % 2 == 0)
    image[dim] = 155
    image = 255 - image  # dark discs on a bright background: nuclei 55, dim ones 100, background 235
    seg = Segmenter(InvertedPredictor(grey_segmenter().predictor.config))
    seg.thresholds |= {"object_threshold": 0.9, "stained_object_threshold": 0.5}
    stained = stain(image)
    assert image_type_of(seg.normalize(image)) == "brightfield"
    assert image_type_of(seg.normalize(stained)) == "histology"
    assert seg.segment(image, diameter=20).labels.max() == true.max() // 2
    assert seg.segment(stained, diameter=20).labels.max() == true.max()


def test_a_white_hole_in_stained_tissue_does_not_flip_the_nuclei_to_bright():
    """Textured tissue whose median grey lies below the middle of its range once a white hole
    (a lumen, a saturated patch) sets the top: the image alone would have its bright texture
    taken for nuclei (the prior at a quarter of their size); a stained image's nuclei are dark."""
    from scipy import ndimage as ndi

    from pipeline.method.scale import blob_scale_space, strongest_blob

    _, true = disc_image(20, n=8)
    texture = ndi.gaussian_filter(np.random.default_rng(0).normal(0, 1, true.shape), 1.5)
    grey = np.where(true > 0, 40, 120 + 35 * texture / texture.std())
    grey[10:50, 10:50] = 255  # the white hole
    image = stain(np.dstack([np.clip(grey, 0, 255).astype(np.uint8)] * 3))
    seg = Segmenter(InvertedPredictor(grey_segmenter().predictor.config))
    normalized = seg.normalize(image)
    assert strongest_blob(*blob_scale_space(normalized)) < 0.4 * median_diameter(true)  # by the image alone
    assert seg.estimate_diameter(normalized) == pytest.approx(median_diameter(true), rel=0.25)
    assert seg.segment(image).image_type == "histology"


@pytest.mark.parametrize("given", [None, 20.0])
def test_stained_images_reach_the_network_at_the_stained_diameter(given):
    """With ``stained_diameter`` 30 in the model's config, 20-px nuclei of a stained image are
    resized to 30 px (scale 1.5), estimated or given; the same image in grey stays at the
    canonical 20 px. The labels map back to the image's own pixels either way."""
    image, true = disc_image(20, n=4)
    image = 255 - image
    config = grey_segmenter().predictor.config | {"stained_diameter": 30.0}
    seg = Segmenter(InvertedPredictor(config))
    assert (seg.diameter, seg.config.diameter_for("histology")) == (20.0, 30.0)
    grey, stained = seg.segment(image, diameter=given), seg.segment(stain(image), diameter=given)
    assert stained.image_type == "histology" and grey.image_type == "brightfield"
    assert stained.diameter == pytest.approx(20, rel=0.2)
    assert stained.scale == pytest.approx(30 / stained.diameter) and grey.scale == 1.0
    assert stained.labels.shape == true.shape and stained.labels.max() == true.max()
    assert image_metrics(true, stained.labels)["dsb_score"] > 0.9
    assert Segmenter(InvertedPredictor(grey_segmenter().predictor.config)).config.diameter_for("histology") == 20.0


def test_bright_field_images_are_segmented_at_the_canonical_diameter_unless_one_is_given():
    """Dark 40-px discs on a bright background (bright-field): the diameter is not estimated (on
    real bright-field images the estimate finds whole cells), so the image is segmented at the
    canonical 20 px and flagged; a given diameter is used as given. The same discs bright on dark
    (fluorescence) are estimated."""
    from pipeline.method.image_types import image_type_of
    from pipeline.model.segmenter import BRIGHTFIELD_FLAG

    image, true = disc_image(40, n=3)
    dark = 255 - image
    seg = Segmenter(InvertedPredictor(grey_segmenter().predictor.config))
    assert image_type_of(seg.normalize(dark)) == "brightfield"
    assert seg.estimate_diameter(seg.normalize(dark)) is None
    assert seg.estimate_diameter(seg.normalize(dark), image_type="fluo-small") == pytest.approx(40, rel=0.2)
    result = seg.segment(dark)
    assert (result.diameter, result.scale, result.flag) == (CANONICAL, 1.0, BRIGHTFIELD_FLAG)
    given = seg.segment(dark, diameter=40)
    assert (given.diameter, given.estimated, given.scale) == (40, False, 0.5)
    assert image_metrics(true, given.labels)["ap50"] == 1.0
    assert grey_segmenter().segment(image).diameter == pytest.approx(median_diameter(true), rel=0.2)


def test_a_given_image_type_decides_the_estimate_thresholds_and_flag():
    """``image_type`` overrides the rule (``nuclei segment --image-type``): fluorescence discs typed
    bright-field are not estimated and are flagged; the bright-field flag no longer says 'unless
    --diameter is given' once a diameter was given."""
    from pipeline.method.image_types import image_type_of
    from pipeline.model.segmenter import BRIGHTFIELD_FLAG

    image, true = disc_image(40, n=3)
    seg = grey_segmenter()
    assert image_type_of(seg.normalize(image)) == "fluo-small"
    typed = seg.segment(image, image_type="brightfield")
    assert (typed.image_type, typed.diameter, typed.flag) == ("brightfield", CANONICAL, BRIGHTFIELD_FLAG)
    assert seg.segment(image).diameter == pytest.approx(40, rel=0.2)  # the rule's own type: estimated
    given = seg.segment(image, diameter=40.0, image_type="brightfield")
    assert "bright-field" in given.flag and "--diameter" not in given.flag
    assert image_metrics(true, given.labels)["ap50"] == 1.0


def test_a_given_diameter_far_larger_than_the_image_is_flagged():
    """``--diameter 10000`` on a 256-px image: no nucleus can be that large; flagged, not a silent
    0 nuclei at confidence 1.0. A plausible diameter is not flagged."""
    image, _ = disc_image(32, n=4)  # 256 x 256
    seg = grey_segmenter()
    absurd = seg.segment(image, diameter=10_000.0)
    assert "too large" in absurd.flag and "10000" in absurd.flag
    assert seg.segment(image, diameter=32.0).flag == ""
    assert seg.segment(image, diameter=64.0).flag == ""  # a quarter of the shorter side: still possible


def test_fluorescence_in_colour_is_segmented_as_grey():
    """Bright discs in the blue channel, or tinted, on a dark background: fluorescence in colour,
    normalised grey (pipeline.method.intensity), so segmented exactly as the grey image and not taken
    for a stained one."""
    from pipeline.method.image_types import image_type_of

    image, true = disc_image(20, n=4)
    seg = grey_segmenter()
    grey = seg.segment(image)
    blue = np.zeros_like(image)
    blue[..., 2] = image[..., 0]
    tinted = np.clip(image.astype(np.int16) + np.array([12, 0, -12], np.int16), 0, 255).astype(np.uint8)
    for coloured in (blue, tinted):
        assert image_type_of(seg.normalize(coloured)) == "fluo-small"
        result = seg.segment(coloured)
        assert result.diameter == pytest.approx(grey.diameter)
        np.testing.assert_array_equal(result.labels, grey.labels)
    assert image_metrics(true, grey.labels)["ap50"] == 1.0


def test_the_diameter_estimate_runs_one_pass_and_the_segmentation_the_predictors_tta():
    """Test-time augmentation sharpens outlines, not a size: the estimate's network passes ask for
    tta 'none' (it is the same, and costs the same, whatever ``segment.tta`` says); the final
    segmentation takes the predictor's own mode."""
    seg = grey_segmenter()
    image, _ = disc_image(30.0)
    seg.segment(image)
    assert len(seg.predictor.modes) >= 2
    assert seg.predictor.modes[:-1] == ["none"] * (len(seg.predictor.modes) - 1)
    assert seg.predictor.modes[-1] is None


def test_given_diameter_overrides_the_estimate_and_maps_back_to_original_pixels():
    image, true = disc_image(40, n=3)
    seg = grey_segmenter()
    result = seg.segment(image, diameter=40.0)
    assert not result.estimated and result.diameter == 40.0 and result.scale == 0.5
    assert max(seg.predictor.calls[-1]) == 120  # the network saw the image at half size
    assert image_metrics(true, result.labels)["mean_matched_iou"] > 0.9


def test_model_without_canonical_diameter_runs_at_the_images_own_scale():
    image, true = disc_image(16, n=3)
    seg = grey_segmenter(diameter=None)
    result = seg.segment(image)
    assert result.diameter is None and result.scale == 1.0 and not result.estimated
    assert seg.predictor.calls == [true.shape]  # one pass, no search
    assert result.labels.max() == true.max()


@pytest.mark.parametrize("diameter", [10.0, 60.0])
def test_blocks_at_any_scale_match_the_whole_image(diameter):
    image, true = disc_image(diameter, n=10 if diameter < 20 else 6)
    whole = grey_segmenter().segment(image, diameter=diameter)
    seg = grey_segmenter(block_size=256, block_margin=32)
    blocks = seg.segment(image, diameter=diameter)
    assert len(seg.predictor.calls) > 1  # it did run block by block
    assert max(max(c) for c in seg.predictor.calls) <= 256  # each block bounded at the network's scale
    assert blocks.labels.max() == whole.labels.max() == true.max()
    assert image_metrics(whole.labels, blocks.labels)["mean_matched_iou"] > 0.99


def test_every_block_takes_the_whole_images_augmentation():
    """'auto' TTA is decided on the whole image at the network's scale: a block at its edge (here
    64–112 px wide) is not augmented more than the rest, and every block gets the image's mode."""
    from pipeline.model.predictor import resolve_tta

    image, _ = disc_image(CANONICAL, n=10)  # 400²: 'flips'
    for shape, mode in (((400, 400), "flips"), ((600, 600), "rot180"), ((800, 800), "none")):
        field = np.tile(image, (2, 2, 1))[: shape[0], : shape[1]]
        seg = grey_segmenter(block_size=208, block_margin=16)
        seg.predictor.tta = "auto"
        seg.segment(field, diameter=CANONICAL)
        assert len(seg.predictor.calls) > 4 and min(min(c) for c in seg.predictor.calls) < 128  # a sliver
        assert resolve_tta("auto", shape[0] * shape[1]) == seg.tta_for(shape, 1.0) == mode
        assert set(seg.predictor.modes) == {mode}  # without it: 'flips' for every block of 208² or less


def test_confidence_and_flag():
    clear = np.stack([np.r_[np.zeros(50), np.ones(50)].reshape(10, 10).astype(np.float32), np.zeros((10, 10), np.float32)])
    assert confidence(clear, "sigmoid") == 1.0
    murky = np.full((2, 10, 10), 0.5, np.float32)
    assert confidence(murky, "sigmoid") == 0.0
    image = np.full((64, 64, 3), 20, np.uint8)
    image[20:40, 20:40] = 60  # a faint square fading in: ambiguous everywhere on it
    image[25:35, 25:35] = 70
    seg = grey_segmenter(diameter=None)
    seg.predictor.predict = lambda x, tta=None: np.stack([np.full(x.shape[:2], 0.5, np.float32), np.zeros(x.shape[:2], np.float32)])
    result = seg.segment(image)
    assert result.confidence < MIN_CONFIDENCE and "low confidence" in result.flag


def test_bright_field_images_are_flagged():
    image, _ = disc_image(16, n=3, bright=60, bg=220)  # dark nuclei on a bright grey background
    seg = grey_segmenter()
    assert "bright-field" in seg.segment(image, diameter=16.0).flag
    fluo, _ = disc_image(16, n=3)
    assert seg.segment(fluo, diameter=16.0).flag == ""


def test_invalid_model_settings_are_reported_once_up_front():
    config = {"model": {"head": "sigmoid"}, "postprocess": {"marker_threshold": 7.5}}
    with pytest.raises(NucleiError, match=r"config\.yaml: postprocess\.marker_threshold"):
        Segmenter(GreyPredictor(config))
    with pytest.raises(NucleiError, match="diameter must be a positive number"):
        Segmenter(GreyPredictor({"model": {"head": "sigmoid"}, "diameter": -3}))
    with pytest.raises(NucleiError, match="stained_diameter must be a positive number"):
        Segmenter(GreyPredictor({"model": {"head": "sigmoid"}, "diameter": 20, "stained_diameter": "big"}))
    with pytest.raises(NucleiError, match="stained_diameter needs a diameter"):
        Segmenter(GreyPredictor({"model": {"head": "sigmoid"}, "stained_diameter": 24}))
    with pytest.raises(NucleiError, match="block size"):
        grey_segmenter(block_size=100, block_margin=60)


def test_the_diameter_estimate_sizes_nuclei_at_the_fixed_mask_threshold(monkeypatch):
    """The estimate was calibrated on outlines at the fixed mask threshold: a dense field's lower
    threshold (dense_mask_threshold) draws the unsure rims too and would size its nuclei larger,
    so the search pass measures without it (cores of 11 px, not wholes of 17)."""
    seg = grey_segmenter()
    seg.thresholds = seg.thresholds | {"marker_threshold": 0.9, "mask_threshold": 0.875, "min_size": 4,
                                       "dense_mask_threshold": 0.5}
    shape = (96, 120)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    centers = [(12 + 24 * i, 12 + 24 * j) for i in range(4) for j in range(5)]
    probs = np.zeros((2, *shape), np.float32)
    for cy, cx in centers:
        r2 = (yy - cy) ** 2 + (xx - cx) ** 2
        probs[0][r2 <= 8**2] = np.maximum(probs[0][r2 <= 8**2], 0.75)  # unsure rim
        probs[0][r2 <= 5**2] = 1.0  # sure core
    monkeypatch.setattr(seg, "predict_scaled", lambda image, scale, tta=None: probs)
    diameters, _ = seg._search_pass(np.zeros((*shape, 3), np.float32), 1.0)
    assert diameters.size == 20
    assert np.median(diameters) == pytest.approx(2 * np.sqrt(np.count_nonzero(
        (yy - 12) ** 2 + (xx - 12) ** 2 <= 25) / np.pi), rel=0.01)


# --------------------------------------------------------------------------- a stained network of its own


class Loads:
    """A picklable stand-in loader of a stained Segmenter that counts its calls."""

    def __init__(self, segmenter):
        self.segmenter, self.calls = segmenter, 0

    def __call__(self):
        self.calls += 1
        return self.segmenter


def test_a_models_stained_network_segments_its_stained_images_and_only_those():
    """With a stained network (a route by image type), a stained image goes to it whole
    (diameter, network, thresholds) and a fluorescence image never does: the stand-in for
    fluorescence would take an H&E image's bright background for nuclei, the stained one finds its
    dark discs. The stained network is loaded once, on the first stained image."""
    fluo, true = disc_image(20, n=4)
    stained_image = stain(255 - fluo)
    inner = Segmenter(InvertedPredictor(grey_segmenter().predictor.config | {"stained_diameter": 30.0}))
    loads = Loads(inner)
    seg = Segmenter(GreyPredictor(grey_segmenter().predictor.config | STAINED_ROUTE), networks={"stained": loads})
    assert seg.network_for("fluo-large") is seg and loads.calls == 0
    grey = seg.segment(fluo)
    assert loads.calls == 0 and grey.labels.max() == true.max() and not inner.predictor.calls
    result = seg.segment(stained_image)
    assert loads.calls == 1 and result.image_type == "histology" and result.scale == pytest.approx(30 / result.diameter)
    assert image_metrics(true, result.labels)["dsb_score"] > 0.9
    assert seg.network_for("histology") is inner and loads.calls == 1
    calls = len(seg.predictor.calls)
    normalized = seg.normalize(stained_image)
    assert seg.scale_for(normalized)[2] == pytest.approx(30 / 20, rel=0.2)  # the stained network's diameter
    labels, _, _ = seg.segment_block(normalized, 1.5)
    assert labels.max() == true.max()
    seg.predict_scaled(normalized, 1.0, image_type="histology")
    assert len(seg.predictor.calls) == calls  # none of it reached the fluorescence network
    seg.predict_scaled(normalized, 1.0)  # untyped (a window of an image): this model's own network
    assert len(seg.predictor.calls) == calls + 1


def test_a_model_folders_stained_network_is_loaded_on_first_use_and_checked(tmp_path):
    """A ``networks`` entry names a model folder inside the folder; the Segmenter stays
    picklable until it is loaded (a Dask worker loads its own), and a missing or unfit inner folder
    is one line naming it, when the first stained image comes."""
    import pickle

    import yaml

    from ..conftest import add_stained_network, save_threshold_model

    network = save_threshold_model(tmp_path / "network")

    def folder(name, **changes):
        path = add_stained_network(save_threshold_model(tmp_path / name), network)
        for key, value in changes.items():
            inner = yaml.safe_load((path / "stained" / "config.yaml").read_text()) | {key: value}
            (path / "stained" / "config.yaml").write_text(yaml.safe_dump(inner))
        return path

    seg = Segmenter.from_model_dir(folder("m"), device="cpu", backend="torch")
    assert seg.config.route("stained").folder == "stained"
    pickle.loads(pickle.dumps(seg)).network_for("fluo-small")
    inner = seg.network_for("histology")
    assert inner.source == tmp_path / "m" / "stained" and not inner.config.routes and inner.route == "stained"
    assert seg.network_for("histology") is inner and seg.network_for("brightfield") is seg
    with pytest.raises(NucleiError, match=r"normalization differs from .*m2/config\.yaml's"):
        Segmenter.from_model_dir(folder("m2", normalization={"low": 2.0, "high": 99.8}), backend="torch").network_for("histology")
    with pytest.raises(NucleiError, match="the stained network declares networks of its own"):
        Segmenter.from_model_dir(folder("m3", stained_model="stained"), backend="torch").network_for("histology")
    missing = folder("m4")
    import shutil

    shutil.rmtree(missing / "stained")
    with pytest.raises(NucleiError, match=r"m4/stained: model directory not found \(network 'stained' of .*m4/config\.yaml\)"):
        Segmenter.from_model_dir(missing, backend="torch").network_for("histology")


# --------------------------------------------------------------------------- a dense network of its own


class LeftHalfPredictor(GreyPredictor):
    """A stand-in dense network: the grey level's nuclei in the left half of the image only, so
    that its labels are told apart from the first network's."""

    def predict(self, image: np.ndarray, tta: str | None = None) -> np.ndarray:
        probs = super().predict(image, tta)
        probs[:, :, probs.shape[2] // 2:] = 0.0
        return probs


def packed_discs(diameter: int = 20, gap: int = 3, n: int = 6):
    """An n × n grid of discs ``gap`` px apart (nuclei over about 60 % of the image); (RGB, labels)."""
    spacing = diameter + gap
    labels = np.zeros((spacing * n, spacing * n), np.int32)
    for i in range(n):
        for j in range(n):
            rr, cc = disk((spacing * i + spacing / 2, spacing * j + spacing / 2), diameter / 2, shape=labels.shape)
            labels[rr, cc] = i * n + j + 1
    grey = np.where(labels > 0, 200, 20).astype(np.uint8)
    return np.dstack([grey] * 3), labels


def dense_pair(fraction: float = 0.5):
    """(Segmenter over the grey level with a dense network, that network's Segmenter, its loader)."""
    config = grey_segmenter().predictor.config | {"dense_model": "dense", "dense_fraction": fraction}
    inner = Segmenter(LeftHalfPredictor(grey_segmenter().predictor.config))
    loads = Loads(inner)
    return Segmenter(GreyPredictor(config), networks={"dense": loads}), inner, loads


def test_a_dense_image_is_run_again_by_the_models_dense_network_and_a_sparse_one_never():
    """With a dense network (a folder written before ``networks``: ``dense_model``, ``dense_fraction``,
    read as a route for unstained images), an unstained image whose nuclei
    this network finds over more than the fraction of its pixels is segmented by the dense one
    (its probabilities, at the same scale), loaded once on first use; sparse and stained images
    never reach it."""
    from pipeline.method.watershed import nucleus_fraction

    seg, inner, loads = dense_pair()
    sparse, sparse_true = disc_image(20, n=4)
    result = seg.segment(sparse)
    assert loads.calls == 0 and result.labels.max() == sparse_true.max() and not inner.predictor.calls

    packed, true = packed_discs()
    assert nucleus_fraction(true > 0) > 0.5
    result = seg.segment(packed)
    assert loads.calls == 1 and len(inner.predictor.calls) == 1
    assert inner.predictor.calls[0] == seg.predictor.calls[-1]  # the same resized image
    left = np.unique(true[:, : true.shape[1] // 2 - 12])  # the discs wholly in the left half
    assert 0 < result.labels.max() < true.max() and result.labels.max() >= len(left) - 1
    assert result.scale == pytest.approx(CANONICAL / result.diameter)
    seg.segment(packed)
    assert loads.calls == 1 and len(inner.predictor.calls) == 2  # loaded once

    calls = len(inner.predictor.calls)
    labels, _, _ = seg.segment_block(seg.normalize(packed), 1.0, "fluo-large")
    assert len(inner.predictor.calls) == calls + 1 and labels.max() == result.labels.max()
    stained = stain(255 - packed)
    assert seg.segment(stained).image_type == "histology" and len(inner.predictor.calls) == calls + 1

    normalized = seg.normalize(packed)
    assert seg.network_for_probs(seg.predictor.predict(normalized), "fluo-large") is inner  # what `nuclei predict` asks
    assert seg.network_for_probs(seg.predictor.predict(seg.normalize(sparse)), "fluo-small") is seg
    assert seg.network_for_probs(seg.predictor.predict(normalized), "histology") is seg
    assert inner.network_for_probs(inner.predictor.predict(normalized), "fluo-large") is inner  # one level deep

    higher, inner2, loads2 = dense_pair(fraction=0.9)
    assert higher.segment(packed).labels.max() == true.max() and loads2.calls == 0


def test_the_dense_network_keeps_each_copys_batch_size_and_loads_once():
    """:func:`pipeline.batch.slide.one_tile_at_a_time` copies a Segmenter to run its network one
    tile at a time; the copies share one dense network, each asking for its own batch size."""
    from pipeline.batch.slide import one_tile_at_a_time

    seg, inner, loads = dense_pair()
    seg.predictor.batch_size = inner.predictor.batch_size = 4
    assert seg.network_for("fluo-small", 0.2) is seg and seg.network_for("histology", 0.7) is seg and loads.calls == 0
    assert seg.network_for("fluo-small") is seg and loads.calls == 0  # the first pass
    assert seg.network_for("fluo-small", 0.7) is inner and loads.calls == 1
    copy = one_tile_at_a_time(seg)
    one = copy.network_for("fluo-small", 0.7)
    assert one is not inner and one.predictor.batch_size == 1 and inner.predictor.batch_size == 4
    assert copy.network_for("fluo-large", 0.8) is one and one_tile_at_a_time(seg).network_for("fluo-small", 0.9) is one
    assert loads.calls == 1


def test_a_model_folders_dense_network_is_loaded_on_first_use_and_checked(tmp_path):
    """A ``networks`` entry with ``nucleus_fraction_above`` names a model folder inside the folder: the Segmenter stays picklable
    until it is loaded, and an unfit inner folder (another diameter or normalisation, a second
    network of its own, missing) is one line naming it, when the first dense image comes."""
    import pickle
    import shutil

    import yaml

    from ..conftest import add_dense_network, save_threshold_model

    network = save_threshold_model(tmp_path / "network")
    (network / "config.yaml").write_text(yaml.safe_dump(yaml.safe_load((network / "config.yaml").read_text())
                                                        | {"diameter": 20.0}, sort_keys=False))

    def folder(name, **changes):
        path = add_dense_network(shutil.copytree(network, tmp_path / name), network)
        for key, value in changes.items():
            inner = yaml.safe_load((path / "dense" / "config.yaml").read_text()) | {key: value}
            (path / "dense" / "config.yaml").write_text(yaml.safe_dump(inner))
        return path

    seg = Segmenter.from_model_dir(folder("m"), device="cpu", backend="torch")
    assert seg.config.route("dense").nucleus_fraction_above == 0.5
    assert pickle.loads(pickle.dumps(seg)).network_for("fluo-small", 0.1) is not None
    inner = seg.network_for("fluo-small", 0.8)
    assert inner.source == tmp_path / "m" / "dense" and inner is seg.network_for(None, 0.9)
    assert seg.network_for("fluo-small", 0.5) is seg
    pickle.loads(pickle.dumps(seg)).network_for("fluo-small", 0.9)  # loaded, still picklable (a Dask worker's copy)
    cases = {"m2": ({"normalization": {"low": 2.0, "high": 99.8}}, r"normalization differs from .*m2/config\.yaml's"),
             "m3": ({"diameter": 30.0}, r"diameter 30\.0 differs from .*m3/config\.yaml's 20\.0"),
             "m4": ({"dense_model": "dense", "dense_fraction": 0.5}, "the dense network declares networks of its own")}
    for name, (changes, message) in cases.items():
        with pytest.raises(NucleiError, match=message):
            Segmenter.from_model_dir(folder(name, **changes), backend="torch").network_for("fluo-small", 0.9)
    missing = folder("m6")
    shutil.rmtree(missing / "dense")
    with pytest.raises(NucleiError, match=r"m6/dense: model directory not found \(network 'dense' of .*m6/config\.yaml\)"):
        Segmenter.from_model_dir(missing, backend="torch").network_for("fluo-small", 0.9)


def test_bright_spots_inside_dim_nuclei_counted_as_nuclei_are_flagged_in_words():
    """Chromocentres: a network that outlines the bright spots of dim nuclei gets a count of spots;
    the flag says so (fragments of one nucleus counted apart), and the signals come with the result."""
    from ..method.test_trust import spotted_nuclei

    image, nuclei, _ = spotted_nuclei(shape=(280, 280), diameter=32, spacing=56, spot_radius=(0.08, 0.12))
    result = grey_segmenter().segment((image * 255).astype(np.uint8))  # spots 0.16-0.24 of the nuclei's diameter
    assert result.labels.max() > 3 * nuclei.max()  # the spots, not the 25 nuclei
    assert "several to one larger blob" in result.flag
    assert result.signals["fragmented"] > 0.3


def test_the_scale_probes_ask_the_network_at_other_scales_and_change_no_label():
    """The scale signals cost one window pass per probe (tta 'none', before the segmentation's own);
    the labels are those of a Segmenter that probes nothing; a given diameter is not probed."""
    from pipeline.method.trust import PROBE_FACTORS

    image, _ = disc_image(20.0, n=5)
    plain = grey_segmenter()
    plain.probe_factors = ()
    probing = grey_segmenter()
    quiet, probed = plain.segment(image), probing.segment(image)
    np.testing.assert_array_equal(quiet.labels, probed.labels)
    asked = [f for f in PROBE_FACTORS if f * probed.diameter <= image.shape[0] / 4]  # those under the cap
    assert len(probing.predictor.modes) - len(plain.predictor.modes) == len(asked) == 2
    assert probing.predictor.modes[-1] is None  # the segmentation's pass comes last
    assert {f"probe_{f:g}_confidence" for f in asked} <= set(probed.signals)
    assert np.isnan(probed.signals["larger_scale"])  # separate discs: no other scale explains them
    given = probing.segment(image, diameter=20.0)
    assert "probe_2_confidence" not in given.signals and given.flag == ""


def test_flag_of_joins_the_named_signals_of_a_count_at_risk_but_not_for_bright_field():
    """The named signals over their limits are said when the count risk is at or over RISKY (a
    fragmented image at confidence 0.8), not for a confident one (0.95); an image at risk with none
    over says so in general words, unless low confidence says it already."""
    from pipeline.method.trust import AT_RISK, PHRASES, RISKY, count_risk
    from pipeline.model.segmenter import BRIGHTFIELD_FLAG, flag_of

    signals = {"fragmented": 0.8, "blurred": 0.1}
    assert count_risk(signals, 0.8) >= RISKY > count_risk(signals, 0.95)
    assert flag_of("fluo-small", 0.8, signals=signals) == PHRASES["fragmented"]
    assert flag_of("fluo-small", 0.95, signals=signals) == ""
    unsure = {"fragmented": 0.1, "inner_border": -4.0}  # borders inside the nuclei, none over its limit
    assert flag_of("fluo-small", 0.8, signals=unsure) == AT_RISK
    assert flag_of("fluo-small", 0.5, signals=unsure) == "low confidence (0.50 < 0.78): check the overlay"
    assert flag_of("fluo-small", 0.5, signals=signals).startswith("low confidence (0.50 < 0.78)")
    assert flag_of("brightfield", 0.9, signals=signals) == BRIGHTFIELD_FLAG
    assert flag_of("fluo-small", 0.9) == ""
    from pipeline.model.segmenter import Segmentation  # counts.csv's count_risk: the same weighing

    labels = np.zeros((4, 4), np.int32)
    assert Segmentation(labels, 20.0, True, 1.0, 0.8, signals=signals).count_risk == count_risk(signals, 0.8)
    assert Segmentation(labels, 20.0, True, 1.0, 0.8, image_type="brightfield", signals={}).count_risk is None
