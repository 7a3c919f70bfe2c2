"""Tests of pipeline.method.intensity: robust normalisation for the network."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.method.colour import (
    COLOUR,
    COLOUR_BLOCK,
    DARK,
    colourfulness,
    is_colour_fluorescence,
    is_grey,
    is_tinted_grey,
    is_transmitted,
    nuclear_channel,
    rescaled,
    tile_pixels,
)
from pipeline.method.intensity import intensity_range, normalize_image

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


def test_normalize_image_defaults_are_those_a_model_folder_records():
    import inspect

    from pipeline.config.model_folder import NORMALIZATION, NormalizationConfig

    defaults = {k: p.default for k, p in inspect.signature(normalize_image).parameters.items() if k != "image"}
    assert defaults == NORMALIZATION == NormalizationConfig().to_dict() == {"low": 1.0, "high": 99.8, "saturation": True}


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
    experiments/tint.py); it is normalised as grey and typed bright-field. Stains keep their
    colour, through a tinted camera too, and so does haematoxylin alone, in a round field of view or
    beside a saturated nucleus."""
    import cv2
    from skimage.color import hed2rgb

    from pipeline.method.image_types import classify_image, image_type_of

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



def test_the_stain_is_measured_where_the_sample_absorbs():
    """stain_colour: the colour of the darkest tiles' mean. Tissue filling a tenth of the field
    beside empty glass, or inside a round field of view's black corners, stays stained (averaged
    over the whole image its colour was diluted under COLOUR: a third of stage1_train's tissue
    images beside nine times their area of glass were typed bright-field); a lens's colour
    fringes, red on one side of a dark edge and blue on the other, cancel in that mean, so a grey
    bright-field image stays grey (the mean of the darkest tiles' |colour| would not)."""
    from scipy.ndimage import gaussian_filter
    from skimage.color import hed2rgb

    from pipeline.method.colour import stain_colour, tile_pixels
    from pipeline.method.image_types import classify_image, image_type_of

    labels = discs()
    nuclei = (labels > 0) * (0.05 + 0.01 * RNG.random(labels.shape))  # pale H&E
    he = hed2rgb(np.dstack([nuclei, np.full(labels.shape, 0.01), np.zeros(labels.shape)])) * 255
    tissue = np.clip(np.rint(he + RNG.normal(0, 2, he.shape)), 0, 255).astype(np.uint8)
    glass = np.clip(np.rint(242 + RNG.normal(0, 2, (256, 9 * 256, 3))), 0, 255).astype(np.uint8)
    beside_glass = np.concatenate([tissue, glass], axis=1)
    assert colourfulness(beside_glass / 255, COLOUR_BLOCK) < COLOUR  # diluted
    yy, xx = np.mgrid[:256, :256]
    round_field = tissue * ((yy - 128) ** 2 + (xx - 128) ** 2 <= 1.3 * 128**2)[..., None].astype(np.uint8)
    for image in (tissue, beside_glass, round_field):
        assert stain_colour(image / 255) > 3 * COLOUR
        assert classify_image(image) == image_type_of(normalize_image(image)) == "histology"

    rng = np.random.default_rng(1)
    dark = np.zeros((256, 256), bool)
    for cy, cx in rng.uniform(10, 246, (40, 2)):
        dark |= (yy - cy) ** 2 + (xx - cx) ** 2 < rng.uniform(8, 12) ** 2
    scene = gaussian_filter(200.0 - 60 * dark, 1.5)  # grey bright-field, through optics
    fringes = np.dstack([np.roll(scene, 1, axis=(0, 1)), scene, np.roll(scene, -1, axis=(0, 1))])
    fringes = np.clip(np.rint(fringes + rng.normal(0, 2, fringes.shape)), 0, 255).astype(np.uint8)
    assert classify_image(fringes) == image_type_of(normalize_image(fringes)) == "brightfield"
    stretched = np.clip((fringes - 135.0) / 70, 0, 1)  # as the contrast stretch shows it
    assert stain_colour(stretched) < COLOUR
    tiles = tile_pixels(stretched, COLOUR_BLOCK).mean(axis=1)
    darkest = tiles[np.argsort(tiles.mean(axis=1))[: len(tiles) // 10]]
    assert np.abs(darkest - darkest.mean(axis=1, keepdims=True)).mean() > COLOUR  # |colour| adds fringes up
    assert stain_colour(np.zeros((16, 16, 3))) == 0.0  # all black: nothing to measure
    # grey fluorescence through a tinted camera: the darkest tiles that are not black are its
    # nuclei, in the camera's colour; a dark image is fluorescence whatever its colour
    fluorescence = np.where(labels[..., None] > 0, 200.0, 5.0) * (1, 0.93, 0.78)
    fluorescence = np.clip(np.rint(fluorescence + RNG.normal(0, 2, fluorescence.shape)), 0, 255).astype(np.uint8)
    assert stain_colour(fluorescence / 255) > COLOUR
    assert classify_image(fluorescence) == image_type_of(normalize_image(fluorescence)) == "fluo-small"


def test_stained_tissue_is_normalised_over_the_sample_not_the_glass():
    """Beside much empty glass the 1st percentile of all pixels moved into the tissue and clipped
    its nuclei to black; the range of a stained image is taken over its sample (tissue_pixels),
    so the tissue comes out as it does filling the field, as the training crops do. The black
    surround of a round field of view, which the network took for the dark of nuclei, is filled
    with the tissue's colour. Grey images, whose training images had their glass, keep the range
    over all pixels."""
    from skimage.color import hed2rgb

    from pipeline.method.field_of_view import outside_field
    from pipeline.method.image_types import image_type_of
    from pipeline.method.intensity import tissue_pixels

    labels = discs()
    nuclei = (labels > 0) * (0.1 + 0.05 * RNG.random(labels.shape))
    he = hed2rgb(np.dstack([nuclei, np.full(labels.shape, 0.05), np.zeros(labels.shape)])) * 255
    tissue = np.clip(np.rint(he * 0.85 + RNG.normal(0, 4, he.shape)), 0, 255).astype(np.uint8)
    glass = np.clip(np.rint(245 + RNG.normal(0, 2, (256, 9 * 256, 3))), 0, 255).astype(np.uint8)
    alone = normalize_image(tissue)
    assert tissue_pixels(tissue, *intensity_range(tissue)) is None  # nothing empty: as before
    assert np.array_equal(alone, rescaled(tissue, *intensity_range(tissue)))
    wide = np.concatenate([tissue, glass], axis=1)
    before = rescaled(wide, *intensity_range(wide))[:, :256]
    assert (before[labels > 0] == 0).mean() > 0.2  # the nuclei clipped to black
    np.testing.assert_allclose(normalize_image(wide)[:, :256], alone, atol=0.03)

    # a round field of view: its black surround is filled with the tissue's median colour, and
    # the tissue inside comes out as it does alone
    yy, xx = np.mgrid[:256, :256]
    field = (yy - 128) ** 2 + (xx - 128) ** 2 <= 1.3 * 128**2
    in_field = tissue * field[..., None].astype(np.uint8)
    assert np.array_equal(outside_field(in_field, intensity_range(in_field)[1]), ~field)
    out = normalize_image(in_field)
    np.testing.assert_allclose(out[field], alone[field], atol=0.03)
    np.testing.assert_allclose(out[~field], np.broadcast_to(np.median(alone, axis=(0, 1)), out[~field].shape), atol=0.03)
    before = rescaled(in_field, *intensity_range(in_field))
    assert np.abs(out[field] - alone[field]).mean() < np.abs(before[field] - alone[field]).mean() / 3
    assert outside_field(tissue, intensity_range(tissue)[1]) is None
    assert outside_field(wide, intensity_range(wide)[1]) is None
    # dim 16-bit tissue beside one saturated nucleus: its white is the top of its range, not the
    # saturated value, so the tissue is not "black" (it was all filled with its median colour)
    dim = (100 + tissue.astype(np.uint16) * 2).astype(np.uint16)
    dim[labels == 1] = 65535
    assert outside_field(dim, intensity_range(dim)[1]) is None
    out = normalize_image(dim)
    assert out[labels == 0].std() > 0.05 and image_type_of(out) == "histology"
    # a dark fluorescence background is not a surround: such images never get here
    dark = np.where(labels[..., None] > 0, 180, 0).astype(np.uint8) * np.array([0, 0, 1], np.uint8)
    np.testing.assert_array_equal(normalize_image(dark), normalize_image(dark[..., 2:].repeat(3, -1)))

    bright_field = np.concatenate([tissue.mean(-1, keepdims=True).repeat(3, -1).astype(np.uint8), glass], axis=1)
    np.testing.assert_array_equal(normalize_image(bright_field), rescaled(bright_field, *intensity_range(bright_field)))


def test_stained_tissue_under_uneven_illumination_keeps_its_colour():
    """A vignette (0.4 in the corners) and a ramp of stray light stretch a stain's colours along
    the line through black, as a tinted camera's grey scene's are: 17 of the 190 stained images of
    stage1_train and the extra sources were then normalised as grey and typed fluorescence or
    bright-field (``bench_robustness.py`` ``uneven``: CPM-15 0.46 → 0.00). Their chromaticity still
    varies with the stain; a tinted grey scene's does not, under the same illumination too."""
    from skimage.color import hed2rgb

    from pipeline.method.image_types import classify_image, image_type_of

    labels = discs(spacing=24, radius=8)
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    r2 = ((yy - 127.5) ** 2 + (xx - 127.5) ** 2) / (2 * 127.5**2)  # 1 in the corners
    vignette = (1 - 0.6 * r2)[..., None]
    ramp = (0.3 * 150 * xx / xx.max())[..., None]
    for eosin in (0.03, 0.0):  # a light H&E; haematoxylin alone
        nuclei = (labels > 0) * (0.05 + 0.02 * RNG.random(labels.shape))
        he = hed2rgb(np.dstack([nuclei, np.full(labels.shape, eosin), np.zeros(labels.shape)])) * 255
        uneven = np.clip(np.rint(he * vignette + ramp), 0, 255).astype(np.uint8)
        assert not is_tinted_grey(uneven)
        out = normalize_image(uneven)
        assert np.ptp(out, axis=-1).max() > 0.1  # still in colour
        assert classify_image(uneven) == image_type_of(out) == "histology"
    # a grey bright-field scene through a tinted camera under the same illumination stays one grey scene
    scene = 200.0 - 60 * (labels > 0) + RNG.normal(0, 3, labels.shape)
    tinted = np.clip(np.rint(scene[..., None] * (1, 0.93, 0.78) * vignette + ramp), 0, 255).astype(np.uint8)
    assert is_tinted_grey(tinted)
    assert np.ptp(normalize_image(tinted), axis=-1).max() == 0


def test_a_composite_bright_over_dense_tissue_is_fluorescence():
    """DAPI in blue beside a cell marker in green that fills dense tissue: bright on average and
    in colour, like stained tissue, but black in its unused red channel where it is brightest
    (not transmitted light). It was typed stained and lost every nucleus (40 of the 57 images of
    ``tissue_fluo_e2f`` as such composites; ``bench_robustness.py`` ``composite``); it is
    normalised as its blue channel, the grey fluorescence the network learnt."""
    from skimage.segmentation import expand_labels

    from pipeline.method.image_types import classify_image, image_type_of

    labels = discs(spacing=16, radius=6)
    nuclei = (30 + 900 * (labels > 0) + RNG.normal(0, 20, labels.shape)).clip(0).astype(np.uint16)
    level = np.concatenate([[0.0], RNG.uniform(0.6, 1.0, labels.max())])[expand_labels(labels, 8)]
    cells = (30 + 1000 * level + RNG.normal(0, 20, labels.shape)).clip(0).astype(np.uint16)
    composite = np.dstack([np.zeros_like(nuclei), cells, nuclei])
    scaled = np.clip(composite / np.percentile(composite, 99.8), 0, 1)
    assert scaled.mean() > DARK and not is_transmitted(scaled)  # bright on average, black in red
    out = normalize_image(composite)
    assert np.ptp(out, axis=-1).max() == 0  # grey
    np.testing.assert_allclose(out, normalize_image(np.dstack([nuclei] * 3)), atol=2e-2)
    assert image_type_of(out) != "histology"
    assert classify_image(np.clip(composite / 4, 0, 255).astype(np.uint8)) != "histology"  # as read, 8-bit
    # stained tissue transmits in every channel where it is brightest, and stays stained
    stained = np.where(labels[..., None] > 0, [120, 60, 160], [235, 190, 215]).astype(np.uint8)
    assert is_transmitted(stained / 255)
    assert classify_image(stained) == image_type_of(normalize_image(stained)) == "histology"


def test_densely_stained_tissue_is_not_taken_for_fluorescence():
    """Dark H&E: nuclei and dense eosin over most of the image bring its mean level under DARK
    (4 of MoNuSeg's 30 images), but its median lies in the tissue, not on a black background:
    it stays stained (normalised over its tissue, in colour, typed histology). Fluorescence in a
    tint, on its black background, stays fluorescence."""
    from pipeline.method.colour import has_dark_background, median_position
    from pipeline.method.image_types import HISTOLOGY, classify_image, image_type_of

    labels = discs(spacing=24, radius=8)  # nuclei on 35 % of the image
    yy, xx = np.mgrid[: labels.shape[0], : labels.shape[1]]
    lumen = (yy - 128) ** 2 + (xx - 128) ** 2 < 28**2  # a little white
    image = np.where(labels[..., None] > 0, [45, 12, 85], [130, 50, 115]).astype(np.float32)
    image[lumen & (labels == 0)] = [240, 232, 240]
    image = np.clip(image + RNG.normal(0, 6, image.shape), 0, 255).astype(np.uint8)
    sample = rescaled(image, *intensity_range(image))
    assert sample.mean() < DARK and median_position(sample) > 0.2  # the case: dark, median in the tissue
    assert not has_dark_background(sample)
    out = normalize_image(image)
    assert not is_colour_fluorescence(out) and np.ptp(out, axis=-1).max() > 0.3  # still in colour
    assert classify_image(image) == HISTOLOGY and image_type_of(out) == HISTOLOGY

    signal = (30 + 900 * (labels > 0) + RNG.normal(0, 20, labels.shape)).clip(0).astype(np.uint16)
    tinted = np.dstack([signal // 2, signal // 4, signal])
    assert has_dark_background(rescaled(tinted, *intensity_range(tinted)))
    assert image_type_of(normalize_image(tinted)) != HISTOLOGY


def test_the_pale_robustness_condition_enlarges_and_pales_stained_nuclei_keeping_their_texture():
    """``bench_robustness.py``'s ``pale``: a stained crop's nuclei 1.5–2× larger, the optical
    density inside them brought most of the way to their surroundings, the chromatin texture
    (deviation from it) as strong as in the crop zoomed alone, their rim kept; fluorescence is left
    as it is."""
    from scipy import ndimage as ndi

    from pipeline.method.scale import median_diameter, resize_image, scaled_shape
    from pipeline.training.shifts import PALE, shifted

    labels = discs(spacing=40, radius=9)
    grain = RNG.normal(0, 25, labels.shape)[..., None]
    image = np.where(labels[..., None] > 0, np.array([90, 50, 140]) + grain, [235, 190, 215])
    image = np.clip(image, 0, 255).astype(np.uint8)
    out, big = shifted("pale", image, labels, seed=0)
    assert out.shape == image.shape and big.shape == labels.shape
    zoom = median_diameter(big) / median_diameter(labels)
    assert PALE["zoom"][0] - 0.05 <= zoom <= PALE["zoom"][1] + 0.05
    h, w = labels.shape
    shape = scaled_shape(labels.shape, zoom)
    zoomed = resize_image(image, shape)[(shape[0] - h) // 2:][:h, (shape[1] - w) // 2:][:, :w]
    density = [-np.log(np.clip(x.astype(np.float32), 1, 255) / 255).mean(-1) for x in (zoomed, out)]
    depth = ndi.distance_transform_edt(big > 0) / (median_diameter(big) / 2)  # per radius
    inner, rim = depth > 0.45, (big > 0) & (depth < 0.15)
    around = np.median(density[0][big == 0])
    excess = [np.mean(d[inner]) - around for d in density]
    assert excess[1] < (PALE["keep"] + 0.1) * excess[0]  # paled
    assert 0.8 < np.std(density[1][inner]) / np.std(density[0][inner]) < 1.25  # texture kept
    assert np.abs(density[1][rim] - density[0][rim]).mean() < 0.01  # the rim still outlines it
    grey = np.dstack([np.where(labels > 0, 200, 10).astype(np.uint8)] * 3)
    same, same_labels = shifted("pale", grey, labels, seed=0)
    assert same is grey and same_labels is labels


def test_grey_and_colourfulness_fast_paths_answer_as_the_full_measure():
    grey = np.repeat(RNG.random((37, 53, 1)).astype(np.float32), 3, axis=-1)
    colour = grey.copy()
    colour[5, 7, 2] += 0.5
    assert is_grey(grey) and is_grey(grey[::3, ::2]) and is_grey(grey[..., :1]) and is_grey(np.zeros((4, 4, 3), bool))
    assert not is_grey(colour) and not is_grey(colour.astype(np.float64))
    assert colourfulness(grey) == 0.0 == colourfulness(grey, COLOUR_BLOCK)
    for block in (1, COLOUR_BLOCK):  # the tiles' means, as tile_pixels' tiles averaged one by one
        tiles = tile_pixels(colour, block).mean(axis=1)
        want = float(np.abs(tiles - tiles.mean(axis=-1, keepdims=True)).mean())
        assert colourfulness(colour, block) == pytest.approx(want, rel=1e-5) and want > 0


def _field(labels, levels=(40, 80), background=5.0):
    """A uint8 (H, W, 3) fluorescence field of ``labels``, each nucleus at a level in ``levels``."""
    grey = np.full(labels.shape, background)
    level = RNG.uniform(*levels, labels.max() + 1)
    grey[labels > 0] = level[labels[labels > 0]]
    grey += RNG.normal(0, 1.5, grey.shape)
    return np.dstack([np.clip(grey, 0, 255).astype(np.uint8)] * 3)


@pytest.mark.parametrize("seed", [0, 1])  # saturated blobs, clusters of bright fragments
def test_bright_debris_does_not_set_the_top_of_the_range(seed):
    """``debris``: objects 5–50× as bright as the nuclei beside them on 0.5–3 % of the pixels are
    left out of the top percentile, so the dim nuclei keep the contrast they have without them."""
    from pipeline.training.shifts import shifted

    labels = discs(spacing=40, radius=9)
    image = _field(labels)
    debris, same = shifted("debris", image, labels, seed=seed)
    assert same is labels and debris.dtype == np.uint16
    extra = (debris[..., 0].astype(np.float32) / 16 - image[..., 0]) > 100
    assert not extra[labels > 0].any() and 0.002 < extra.mean() < 0.04  # on the background only
    clean = np.median(normalize_image(image)[labels > 0])
    plain = np.median(normalize_image(debris, saturation=False)[labels > 0])
    robust = normalize_image(debris)
    assert plain < 0.3 * clean
    assert np.median(robust[labels > 0]) > 0.8 * clean
    assert robust[extra].mean() > 0.95  # the debris saturate


def test_nuclei_of_ordinary_brightness_set_the_top_as_before():
    """Nuclei 2–3× as bright as the others (mitotic, 4N) and chromocentres up to 4× their nucleus
    are no debris: the range stays the percentile range."""
    from pipeline.training.shifts import shifted

    labels = discs(spacing=40, radius=9)
    image = _field(labels, levels=(30, 90))
    for shown in (image, shifted("chromo", image, labels, seed=0)[0]):
        assert intensity_range(shown) == intensity_range(shown, saturation=False)
        assert normalize_image(shown).max() == 1.0
        np.testing.assert_array_equal(normalize_image(shown), normalize_image(shown, saturation=False))


def test_the_chromocentre_condition_puts_bright_foci_inside_the_nuclei_only():
    from pipeline.training.shifts import shifted

    labels = discs(spacing=40, radius=9)
    image = _field(labels, levels=(60, 60))
    out, same = shifted("chromo", image, labels, seed=3)
    level = out[..., 0].astype(np.float32) / 16
    assert same is labels
    assert np.abs(level - image[..., 0])[labels == 0].max() == 0  # nothing outside the nuclei
    foci = level - image[..., 0] > 20
    per_nucleus = np.bincount(labels[foci], minlength=labels.max() + 1)[1:]
    assert (per_nucleus > 0).mean() > 0.9 and foci.sum() < 0.3 * (labels > 0).sum()
    assert level.max() <= 5 + 4.0 * 55 + 10  # at most 4× the nucleus's excess over the background
    stained = np.dstack([np.full(labels.shape, 200, np.uint8), np.full(labels.shape, 100, np.uint8),
                         np.full(labels.shape, 150, np.uint8)])
    assert shifted("chromo", stained, labels, seed=0)[0] is stained
