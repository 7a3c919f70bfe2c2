"""Tests of pipeline.intensity: robust normalisation for the network."""

from __future__ import annotations

import numpy as np

from pipeline.intensity import (
    COLOUR,
    COLOUR_BLOCK,
    colourfulness,
    intensity_range,
    is_colour_fluorescence,
    is_tinted_grey,
    normalization_kwargs,
    normalize_image,
    nuclear_channel,
)

RNG = np.random.default_rng(0)


def discs(shape=(256, 256), spacing=32, radius=10):
    """Labels of a grid of discs, 1..N."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    k = 0
    for cy in range(spacing // 2, shape[0], spacing):
        for cx in range(spacing // 2, shape[1], spacing):
            k += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 < radius**2] = k
    return labels


def test_normalize_dim_16bit_matches_8bit():
    base = RNG.random((64, 64)).astype(np.float32)
    dim16 = np.round(base * 600 + 100).astype(np.uint16)  # a dim 16-bit image: 100..700 of 65535
    bright8 = np.round(base * 255).astype(np.uint8)
    a = normalize_image(np.dstack([dim16] * 3))
    b = normalize_image(np.dstack([bright8] * 3))
    assert a.dtype == np.float32 and a.min() == 0.0 and a.max() == 1.0
    assert np.abs(a - b).mean() < 0.01
    assert not normalize_image(np.full((4, 4, 3), 0.3, np.float32)).any()


def test_saturated_nuclei_do_not_wipe_out_dim_ones():
    labels = discs()
    grey = np.full(labels.shape, 5.0)
    dim = RNG.uniform(20, 60, labels.max() + 1)
    grey[labels > 0] = dim[labels[labels > 0]]
    grey[np.isin(labels, [1, 2, 3])] = 255  # three saturated nuclei, 5 % of the nuclei
    grey += RNG.normal(0, 1, grey.shape)
    image = np.dstack([np.clip(grey, 0, 255).astype(np.uint8)] * 3)
    plain = normalize_image(image, saturation=False)  # percentiles only: set by the saturated nuclei
    robust = normalize_image(image)
    dim_nuclei = (labels > 3)
    assert np.median(plain[dim_nuclei]) < 0.2
    assert np.median(robust[dim_nuclei]) > 0.35  # dim nuclei now clearly above background
    assert robust[labels == 0].mean() < 0.05
    assert robust[labels == 1].min() == 1.0  # the saturated ones saturate


def test_ordinary_images_keep_the_percentile_range():
    labels = discs()
    for grey in (np.where(labels > 0, 200.0, 10.0), np.where(labels > 0, 55.0, 245.0)):  # dark, bright bg
        grey = grey + RNG.normal(0, 3, grey.shape)
        image = np.dstack([grey] * 3).astype(np.float32)
        lo, hi = intensity_range(image)
        plo, phi = intensity_range(image, saturation=False)
        assert abs(lo - plo) < 0.05 * (phi - plo) and abs(hi - phi) < 0.05 * (phi - plo)


def test_float_images_in_any_units():
    labels = discs()
    grey = np.where(labels > 0, 3.5e4, 1.2e3).astype(np.float32) + RNG.normal(0, 50, labels.shape).astype(np.float32)
    a = normalize_image(np.dstack([grey] * 3))
    b = normalize_image(np.dstack([grey * 2] * 3))  # twice as bright: same network input
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_old_model_configs_keep_plain_percentiles():
    assert normalization_kwargs({"normalization": {"low": 1.0, "high": 99.8}}) == {
        "low": 1.0, "high": 99.8, "saturation": False}
    assert normalization_kwargs({"normalization": {"low": 1.0, "high": 99.8, "saturation": True}})["saturation"]


def test_sparse_nuclei_beside_dim_cytoplasm_keep_their_contrast():
    # the case a foreground-level rule got wrong: few bright nuclei, much dim cytoplasm
    labels = discs(spacing=64, radius=8)
    grey = np.full(labels.shape, 10.0)
    grey[64:192, :] = 60.0  # a band of dim cytoplasm over half of the image
    grey[labels > 0] = 220.0
    grey += RNG.normal(0, 2, grey.shape)
    image = np.dstack([np.clip(grey, 0, 255).astype(np.uint8)] * 3)
    out = normalize_image(image)
    assert np.median(out[labels > 0]) > 0.9
    assert np.median(out[64:192][labels[64:192] == 0]) < 0.3


def test_fluorescence_in_colour_is_normalised_as_grey():
    """A Hoechst image in the blue channel, GFP in green, a two-channel composite: normalised as
    the grey image of the same nuclei (what the network learnt). Stained tissue keeps its colour."""
    labels = discs()
    signal = (30 + 900 * (labels > 0) + RNG.normal(0, 20, labels.shape)).clip(0).astype(np.uint16)
    grey = normalize_image(np.dstack([signal] * 3))
    blank = np.zeros_like(signal)
    for image in (np.dstack([blank, blank, signal]),  # blue
                  np.dstack([blank, signal, blank]),  # green
                  np.dstack([signal, blank, signal]),  # magenta
                  np.dstack([signal // 2, signal // 4, signal])):  # a tint
        assert is_colour_fluorescence(np.clip(image / np.percentile(image, 99.8), 0, 1))
        out = normalize_image(image)
        assert np.ptp(out, axis=-1).max() == 0  # grey
        np.testing.assert_allclose(out, grey, atol=2e-3)
    assert not is_colour_fluorescence(grey)

    # H&E-like: pink background, purple nuclei; bright, so stained, not fluorescence
    stained = np.where(labels[..., None] > 0, [120, 60, 160], [235, 190, 215]).astype(np.uint8)
    out = normalize_image(stained)
    assert not is_colour_fluorescence(out)
    assert np.ptp(out, axis=-1).max() > 0.3  # still in colour


def test_a_grey_scene_through_a_tinted_camera_is_normalised_as_grey():
    """A bright-field image from a colour camera whose white balance is off: gains × one grey scene,
    with noise, JPEG or a black level. Kept in colour it was segmented as stained tissue
    (stage1_train's bright-field images: DSB2018 0.001 against 0.342 in grey,
    benchmarks/bench_tint.py); it is normalised as grey and typed bright-field. Stains keep their
    colour, through a tinted camera too, and so does haematoxylin alone, in a round field of view or
    beside a saturated nucleus."""
    import cv2
    from skimage.color import hed2rgb

    from pipeline.prepare import classify_image
    from pipeline.segmenter import image_type_of

    labels = discs()
    scene = 200.0 - 60 * (labels > 0) + RNG.normal(0, 3, labels.shape)  # dark nuclei, bright background
    for gains, noise, black, jpeg in (((1, 0.93, 0.78), 0, 0, False), ((0.8, 0.9, 1), 4, 0, True),
                                      ((0.85, 1, 0.8), 8, (0, 8, 16), False)):
        tinted = scene[..., None] * gains + np.asarray(black) + RNG.normal(0, noise, (*labels.shape, 3))
        tinted = np.clip(np.rint(tinted), 0, 255).astype(np.uint8)
        if jpeg:
            tinted = cv2.imdecode(cv2.imencode(".jpg", tinted, [cv2.IMWRITE_JPEG_QUALITY, 75])[1], cv2.IMREAD_COLOR)
        assert colourfulness(tinted / 255, COLOUR_BLOCK) > COLOUR  # in colour: once typed "stained"
        assert is_tinted_grey(tinted)
        out = normalize_image(tinted)
        assert np.ptp(out, axis=-1).max() == 0  # grey
        np.testing.assert_array_equal(out, normalize_image(np.repeat(tinted.mean(-1, keepdims=True), 3, -1)))
        assert out[labels == 0].mean() - out[labels > 0].mean() > 0.5  # the scene's dark nuclei
        assert classify_image(tinted) == image_type_of(out) == "brightfield"
        # image_type_of types normalised images, whose tint normalize_image has removed; it does
        # not look for one (a contrast stretch moves black: a tissue crop at 4x passed as a tint)
        assert image_type_of(tinted / 255) == "histology"

    nuclei = (labels > 0) * (0.1 + 0.02 * RNG.random(labels.shape))
    for eosin in (0.03, 0.0):  # H&E; haematoxylin alone
        he = hed2rgb(np.dstack([nuclei, np.full(labels.shape, eosin), np.zeros(labels.shape)])) * 255
        for gains in ((1, 1, 1), (1, 0.93, 0.78)):
            stained = np.clip(np.rint(he * gains + RNG.normal(0, 3, he.shape)), 0, 255).astype(np.uint8)
            assert not is_tinted_grey(stained)
            out = normalize_image(stained)
            assert np.ptp(out, axis=-1).max() > 0.1  # still in colour
            assert classify_image(stained) == image_type_of(out) == "histology"
    # their colours run along the line through black: black corners (a round field of view) and a
    # saturated white nucleus are left out, not taken for one grey scene
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    stained[(yy - 128) ** 2 + (xx - 128) ** 2 > 128**2] = 0
    assert not is_tinted_grey(stained)
    dim = (100 + stained.astype(np.uint16) * 2).astype(np.uint16)
    dim[labels == 1] = 65535
    assert not is_tinted_grey(dim)
    # no main axis to speak of: a flat colour, or noise alone, is not a tinted grey scene
    assert not is_tinted_grey(np.full((64, 64, 3), (200, 120, 210), np.uint8))
    assert not is_tinted_grey(RNG.normal(100, 5, (64, 64, 3)))


def test_composite_is_normalised_as_its_blue_nuclear_channel():
    """DAPI in blue beside a whole-cell marker in green: the network gets the nuclei, not the blend
    (whose cells it took for nuclei: DSB2018 0.04 against 0.69, bench_robustness ``composite``)."""
    from skimage.segmentation import expand_labels

    labels = discs(radius=7)
    nuclei = (30 + 900 * (labels > 0) + RNG.normal(0, 20, labels.shape)).clip(0).astype(np.uint16)
    cells = (30 + 1500 * (expand_labels(labels, 7) > 0) + RNG.normal(0, 20, labels.shape)).clip(0).astype(np.uint16)
    grey = normalize_image(np.dstack([nuclei] * 3))
    for dapi in (nuclei, nuclei // 4):  # bright or dim beside the marker
        composite = np.dstack([np.zeros_like(nuclei), cells, dapi])
        out = normalize_image(composite)
        assert np.ptp(out, axis=-1).max() == 0  # grey
        np.testing.assert_allclose(out, grey, atol=2e-2)
    # one stain in every channel with a colour camera's noise: their mean (it averages the noise)
    noisy = np.dstack([nuclei + RNG.normal(0, 60, labels.shape) for _ in range(3)]).clip(0)
    noisy = np.clip(noisy / np.percentile(noisy, 99.8), 0, 1)
    assert is_colour_fluorescence(noisy) and nuclear_channel(noisy) is None
    # nuclei in green with no blue: the channels' mean, which is the nuclei
    assert nuclear_channel(np.dstack([np.zeros((8, 8))] * 2 + [np.full((8, 8), 0.01)])) is None
    green = normalize_image(np.dstack([np.zeros_like(nuclei), nuclei, np.zeros_like(nuclei)]))
    np.testing.assert_allclose(green, grey, atol=2e-3)

