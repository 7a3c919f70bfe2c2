"""Augmentation: image and targets stay aligned, seeding is deterministic, switches work."""

import numpy as np
import pytest

from pipeline.errors import NucleiError
from pipeline.training.augment import build_augmentation, random_crop, sample_seed, unit_float

#: Every step off: tests switch on what they look at (missing keys take params.yaml's values).
OFF = {
    "crop": None,
    "scale": None,
    **dict.fromkeys(
        ("flips", "rot90", "elastic", "brightness_contrast", "gamma", "color_to_gray", "invert", "blur",
         "dim_saturate", "stain", "noise", "low_bits", "jpeg", "normalize"),
        False,
    ),
}
GEOMETRIC = {
    "crop": 128,
    "flips": True,
    "rot90": True,
    "scale": [0.7, 1.4],
    "elastic": 1.0,
    "brightness_contrast": False,
    "gamma": False,
    "color_to_gray": False,
    "invert": False,
    **dict.fromkeys(("blur", "dim_saturate", "stain", "noise", "low_bits", "jpeg"), False),
    "normalize": False,
}
ALL = {**GEOMETRIC, "brightness_contrast": True, "gamma": True, "color_to_gray": True, "invert": True}


def disc_sample(h=150, w=170, center=(50, 110), radius=25):
    """A bright disc (image) with its targets: classes 0 core / 1 ring / 2 background."""
    yy, xx = np.mgrid[:h, :w]
    dist = np.hypot(yy - center[0], xx - center[1])
    mask = (dist <= radius).astype(np.uint8)
    border = ((dist <= radius) & (dist > radius - 3)).astype(np.uint8)
    classes = np.where(mask == 0, 2, border).astype(np.uint8)
    image = np.repeat((0.1 + 0.8 * mask)[..., None], 3, axis=-1).astype(np.float32)
    weights = (1.0 + 4.0 * mask).astype(np.float32)
    return image, classes, mask, border, weights


def test_disc_moves_with_its_mask():
    aug = build_augmentation(GEOMETRIC, train=True)
    sample = disc_sample()
    moved = 0
    for seed in range(20):
        image, classes, mask, border, weights = aug(*sample, seed=seed)
        assert image.shape == (128, 128, 3) and image.dtype == np.float32
        assert classes.shape == mask.shape == border.shape == weights.shape == (128, 128)
        assert classes.dtype == mask.dtype == border.dtype == np.uint8 and weights.dtype == np.float32
        # targets stay consistent with each other (nearest interpolation keeps labels)
        assert np.array_equal(mask, (classes < 2).astype(np.uint8))
        assert np.array_equal(border, (classes == 1).astype(np.uint8))
        assert np.array_equal(weights, np.where(mask == 1, 5.0, 1.0).astype(np.float32))
        # the bright pixels of the image are the pixels of the mask
        bright = image[..., 0] > 0.5
        union = (bright | (mask == 1)).sum()
        if union:
            iou = (bright & (mask == 1)).sum() / union
            assert iou > 0.95, (seed, iou)
            moved += 1
    assert moved >= 5  # the crop contained (part of) the disc in several draws


def test_flip_alone_is_exact():
    cfg = {**OFF, "flips": 1.0, "normalize": False}  # both flips always: a 180° rotation, no crop
    image, classes, mask, border, weights = disc_sample()
    out = build_augmentation(cfg, train=True)(image, classes, mask, border, weights, seed=0)
    assert np.array_equal(out[0], image[::-1, ::-1])
    assert np.array_equal(out[2], mask[::-1, ::-1])
    assert np.array_equal(out[4], weights[::-1, ::-1])


def test_same_seed_same_output_and_seeds_differ():
    aug = build_augmentation(ALL, train=True)
    sample = disc_sample()
    first = aug(*sample, seed=7)
    aug(*sample, seed=8)
    again = aug(*sample, seed=7)
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    other = build_augmentation(ALL, train=True, seed=7)(*sample)  # construction seed = call seed
    assert all(np.array_equal(a, b) for a, b in zip(first, other, strict=True))
    outputs = {aug(*sample, seed=s)[0].tobytes() for s in range(5)}
    assert len(outputs) == 5


def test_transforms_draw_independently():
    # albumentations' Compose(seed=...) seeds every transform alike, so both flips would fire
    # together; the shared generator gives all four flip combinations.
    image = np.arange(12, dtype=np.float32).reshape(3, 4, 1).repeat(3, -1) / 12
    zeros = np.zeros((3, 4), np.uint8)
    aug = build_augmentation({**OFF, "flips": True}, train=True)
    corners = {
        aug(image, zeros, zeros, zeros, zeros.astype(np.float32), seed=s)[0][0, 0, 0] for s in range(40)
    }
    assert len(corners) == 4


def test_small_images_are_reflect_padded_to_the_crop():
    image, classes, mask, border, weights = disc_sample(40, 30, center=(20, 15), radius=8)
    out = build_augmentation({**OFF, "crop": 64}, train=True)(image, classes, mask, border, weights, seed=1)
    assert out[0].shape == (64, 64, 3) and out[1].shape == (64, 64)
    assert 1 < out[2].sum() / mask.sum() < 4  # mirrored copies of the disc, with their masks
    assert np.array_equal(out[2], (out[0][..., 0] > 0.5).astype(np.uint8))


def test_random_crop_is_one_window_of_every_array_and_reaches_every_position():
    rng = np.random.default_rng(0)
    image = rng.random((40, 21, 3)).astype(np.float32)
    labels = np.arange(40 * 21).reshape(40, 21)
    # albumentations' PadIfNeeded (centred, BORDER_REFLECT_101) then RandomCrop, as training did before
    padded = [np.pad(a, [(0, 0), (2, 3)] + [(0, 0)] * (a.ndim - 2), mode="reflect") for a in (image, labels)]
    rows = set()
    for _ in range(200):
        crop_image, crop_labels = random_crop((image, labels), 26, rng)
        assert crop_image.shape == (26, 26, 3) and crop_labels.shape == (26, 26) and crop_labels.dtype == labels.dtype
        y = int(crop_labels[0, 2]) // 21  # column 2 of the crop is the image's column 0
        assert np.array_equal(crop_labels, padded[1][y : y + 26])
        assert np.array_equal(crop_image, padded[0][y : y + 26])
        rows.add(y)
    assert rows == set(range(40 - 26 + 1))  # every window, the last one included


def test_stored_counts_give_the_crops_of_their_float_image():
    image, classes, mask, border, weights = disc_sample()
    counts = {np.uint8: np.round(image * 255).astype(np.uint8), np.uint16: np.round(image * 65535).astype(np.uint16)}
    aug = build_augmentation({**ALL, "blur": True, "noise": True, "normalize": True}, train=True)
    for dtype, stored in counts.items():
        as_float = unit_float(stored)
        assert as_float.dtype == np.float32 and np.allclose(as_float, image, atol=0.5 / 255)
        for seed in range(3):
            got = aug(stored, classes, mask, border, weights.astype(np.float16), seed=seed)
            want = aug(as_float, classes, mask, border, weights, seed=seed)
            assert all(np.array_equal(a, b) for a, b in zip(got, want, strict=True)), (dtype, seed)
            assert got[0].dtype == np.float32 and got[4].dtype == np.float32

def test_photometric_transforms_leave_targets_alone():
    cfg = {**OFF, "brightness_contrast": 1.0, "gamma": 1.0, "color_to_gray": 1.0}
    sample = disc_sample()
    out = build_augmentation(cfg, train=True)(*sample, seed=3)
    assert not np.array_equal(out[0], sample[0])
    assert out[0].min() >= 0 and out[0].max() <= 1
    for got, want in zip(out[1:], sample[1:], strict=True):
        assert np.array_equal(got, want)


def test_invert():
    sample = disc_sample()
    out = build_augmentation({**OFF, "invert": 1.0, "normalize": False}, train=True)(*sample, seed=0)
    assert np.allclose(out[0], 1 - sample[0])


def test_validation_is_identity():
    sample = disc_sample()
    out = build_augmentation(ALL, train=False)(*sample)
    assert all(a is b for a, b in zip(out, sample, strict=True))


def test_sample_seed_is_stable_and_distinct():
    assert sample_seed(0, 1, 2) == sample_seed(0, 1, 2)
    assert len({sample_seed(0, e, i) for e in range(3) for i in range(50)}) == 150


def test_bad_configuration():
    with pytest.raises(NucleiError, match="augment.invert"):
        build_augmentation({**OFF, "invert": 2.0}, train=True)
    with pytest.raises(NucleiError, match="augment.flips"):
        build_augmentation({**OFF, "flips": "often"}, train=True)
    with pytest.raises(NucleiError, match="augment.scale"):
        build_augmentation({**OFF, "scale": [1.2, 0.8]}, train=True)


def test_elastic_deforms_smoothly():
    yy, xx = np.mgrid[:96, :96].astype(np.float32) / 96
    image = np.dstack([yy, xx, np.zeros_like(xx)])
    zeros = np.zeros((96, 96), np.uint8)
    out = build_augmentation({**OFF, "elastic": 1.0}, train=True)(
        image, zeros, zeros, zeros, zeros.astype(np.float32), seed=0
    )
    shift = np.hypot(*(96 * (out[0][..., :2] - image[..., :2])).transpose(2, 0, 1))[8:-8, 8:-8]
    assert 0.5 < shift.mean() < 5 and shift.max() < 15  # a few pixels, not a scramble


def test_normalize_is_the_segmenters_normalisation():
    from pipeline.method.intensity import normalize_image

    sample = disc_sample()
    dim = (sample[0] * 0.2,) + sample[1:]
    out = build_augmentation({**OFF, "normalize": True}, train=True)(*dim, seed=0)
    np.testing.assert_allclose(out[0], normalize_image(dim[0]), atol=1e-6)


def test_dim_saturate_makes_dim_nuclei_beside_saturated_ones():
    from pipeline.training.augment import acquisition_shift

    labels_mask = np.zeros((200, 200), np.uint8)
    image = np.full((200, 200, 3), 0.1, np.float32)
    yy, xx = np.mgrid[:200, :200]
    for r in (40, 100, 160):
        for c in (40, 100, 160):  # nine separate nuclei
            disc = np.hypot(yy - r, xx - c) < 12
            labels_mask[disc] = 1
            image[disc] = 0.6
    for seed in range(5):
        out = acquisition_shift(image, labels_mask, np.random.default_rng(seed), {"dim_saturate": 1.0})
        nucleus = out[labels_mask == 1, 0]
        saturated = np.mean(nucleus == 1.0) * 9
        assert 0.5 < saturated < 3.5  # one to three nuclei saturate
        assert np.median(nucleus) <= 0.6 * 0.4 + 1e-6  # the others are dimmed to at most 40 %
        assert out[labels_mask == 0].max() <= 0.1 * 0.4 + 1e-6


def test_stain_jitter_only_changes_colour_images():
    from pipeline.training.augment import acquisition_shift

    grey = np.dstack([np.linspace(0.2, 0.8, 64 * 64).reshape(64, 64).astype(np.float32)] * 3)
    colour = grey * np.array([0.8, 0.5, 0.9], np.float32)
    mask = np.zeros((64, 64), np.uint8)
    assert np.array_equal(acquisition_shift(grey, mask, np.random.default_rng(0), {"stain": 1.0}), grey)
    jittered = acquisition_shift(colour, mask, np.random.default_rng(0), {"stain": 1.0})
    assert jittered.shape == colour.shape and not np.allclose(jittered, colour, atol=0.01)
    assert 0.0 <= jittered.min() and jittered.max() <= 1.0


def test_noise_is_grey_on_grey_images_and_per_channel_on_colour_ones():
    """A grey camera's noise is the same in every channel: a noisy grey crop stays grey (so the
    normalisation does not take it for fluorescence in colour and average the noise away)."""
    from pipeline.method.colour import is_colour_fluorescence
    from pipeline.method.intensity import normalize_image
    from pipeline.training.augment import acquisition_shift

    grey = np.dstack([np.full((64, 64), 0.1, np.float32)] * 3)
    colour = grey * np.array([0.8, 0.5, 0.9], np.float32) + np.float32(0.3)
    mask = np.zeros((64, 64), np.uint8)
    noisy = [acquisition_shift(grey, mask, np.random.default_rng(s), {"noise": 1.0}) for s in range(5)]
    for out in noisy:
        assert np.ptp(out, axis=-1).max() == 0 and out.std() > 0
        assert not is_colour_fluorescence(normalize_image(out))
    tinted = acquisition_shift(colour, mask, np.random.default_rng(0), {"noise": 1.0})
    assert np.ptp(tinted - colour, axis=-1).max() > 0  # a colour camera's noise differs by channel


def test_blur_draws_sigma_from_blur_sigma():
    import cv2

    from pipeline.training.augment import acquisition_shift

    image = np.zeros((64, 64, 3), np.float32)
    image[28:36, 28:36] = 1.0
    mask = (image[..., 0] > 0).astype(np.uint8)
    for sigma in (1.0, 3.5):
        out = acquisition_shift(image, mask, np.random.default_rng(0), {"blur": 1.0}, blur_sigma=(sigma, sigma))
        np.testing.assert_allclose(out, cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT_101),
                                   atol=1e-6)
    wide = build_augmentation({**OFF, "normalize": False, "blur": 1.0, "blur_sigma": [3.0, 4.0]}, train=True)
    narrow = build_augmentation({**OFF, "normalize": False, "blur": 1.0, "blur_sigma": [0.5, 0.6]}, train=True)
    sample = disc_sample()

    def edge(img):  # the steepest step across the disc's rim
        return np.abs(np.diff(img[..., 0], axis=1)).max()

    assert edge(wide(*sample, seed=3)[0]) < 0.5 * edge(narrow(*sample, seed=3)[0])


def test_illumination_darkens_away_from_a_centre_and_adds_a_ramp():
    """Uneven illumination: a flat crop comes out brightest near one point and darker away from
    it (the vignette), the targets untouched; the ramp alone rises monotonically across the crop;
    the step is off by default, so the shipped model's recipe is unchanged."""
    from pipeline.config.params import AugmentConfig
    from pipeline.training.augment import acquisition_shift, illumination_field, ramp

    assert AugmentConfig().illumination is False
    flat = np.full((96, 128, 3), 0.5, np.float32)
    for seed in range(5):
        field = illumination_field(flat.shape[:2], np.random.default_rng(seed))
        assert field.shape == (96, 128, 1) and field.dtype == np.float32
        assert 0.1 <= field.min() < field.max() <= 1.0 and field.max() - field.min() > 0.02
        r = ramp(flat + np.linspace(0, 0.4, 128, dtype=np.float32)[None, :, None], np.random.default_rng(seed))
        assert r.min() == 0 and r.max() <= 0.3 * 0.4 + 1e-6
    out = acquisition_shift(flat, np.zeros((96, 128), np.uint8), np.random.default_rng(1), {"illumination": 1.0})
    assert out.shape == flat.shape and 0.0 <= out.min() < 0.5 and out.max() <= 1.0
    assert np.ptp(out, axis=-1).max() < 1e-6  # the same field in every channel: grey stays grey
    sample = disc_sample()
    aug = build_augmentation({**OFF, "illumination": 1.0}, train=True)
    image, *targets = aug(*sample, seed=4)
    assert not np.array_equal(image, sample[0])
    assert all(np.array_equal(t, s) for t, s in zip(targets, sample[1:], strict=True))


def test_acquisition_steps_are_deterministic_and_bounded():
    cfg = {**ALL, "normalize": True, "illumination": 1.0, "blur": 1.0, "dim_saturate": 1.0, "noise": 1.0, "low_bits": 1.0, "jpeg": 1.0}
    aug = build_augmentation(cfg, train=True)
    sample = disc_sample()
    a = aug(*sample, seed=11)
    b = aug(*sample, seed=11)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert a[0].dtype == np.float32 and 0.0 <= a[0].min() and a[0].max() <= 1.0


def test_dab_turns_some_stained_nuclei_brown_and_fades_eosin():
    """Immunohistochemistry from an H&E crop: the nuclei picked turn brown (blue absorbed most,
    unlike haematoxylin's purple), the pink eosin background fades towards white, the targets
    are untouched; grey crops are left alone; off by default, and drawing nothing while off, so
    the shipped model's recipe and its crops are unchanged."""
    from skimage.color import hed2rgb

    from pipeline.config.params import AugmentConfig
    from pipeline.training.augment import acquisition_shift, random_dab

    assert AugmentConfig().dab is False
    yy, xx = np.mgrid[:96, :128]
    centres = [(24 + 48 * (k // 4), 16 + 32 * (k % 4)) for k in range(8)]
    mask = np.zeros((96, 128), np.uint8)
    for cy, cx in centres:
        mask[(yy - cy) ** 2 + (xx - cx) ** 2 < 10**2] = 1
    he = hed2rgb(np.dstack([mask * 0.15, np.full(mask.shape, 0.05), np.zeros(mask.shape)])).astype(np.float32)
    r, g, b = he[centres[0]]
    assert b > g  # haematoxylin: purple-blue
    brown = purple = 0
    for seed in range(6):
        out = random_dab(he, mask, np.random.default_rng(seed))
        assert out.shape == he.shape and out.dtype == np.float32 and 0 <= out.min() and out.max() <= 1
        assert out[mask == 0].mean(axis=0).min() >= he[mask == 0].mean(axis=0).min() - 1e-6  # eosin faded
        _, g, b = out[tuple(np.transpose(centres))].T
        brown += int((b < g).sum())  # DAB absorbs blue most
        purple += int((b > g).sum())
    assert brown > 0 and purple > 0  # some nuclei brown, not all of them always
    grey = np.repeat(he.mean(axis=-1, keepdims=True), 3, axis=-1)
    np.testing.assert_array_equal(acquisition_shift(grey, mask, np.random.default_rng(0), {"dab": 1.0}), grey)
    assert not np.array_equal(acquisition_shift(he, mask, np.random.default_rng(2), {"dab": 1.0}), he)
    rng_off, rng_before = np.random.default_rng(2), np.random.default_rng(2)
    acquisition_shift(he, mask, rng_off, {"dab": 0})
    acquisition_shift(he, mask, rng_before, {})  # the recipe before the step existed
    assert rng_off.random() == rng_before.random()  # off: no draw
    sample = disc_sample()
    colour = (sample[0] * np.array([0.9, 0.5, 0.8], np.float32)).astype(np.float32)
    aug = build_augmentation({**OFF, "dab": 1.0}, train=True)
    image, *targets = aug(colour, *sample[1:], seed=4)
    assert not np.array_equal(image, colour)
    assert all(np.array_equal(t, s) for t, s in zip(targets, sample[1:], strict=True))


def test_pale_makes_stained_nuclei_pale_and_vesicular_keeping_their_rim_and_texture():
    """``augment.pale``: inside each stained nucleus the optical density is brought towards its
    surroundings' (a share ``keep`` of the mean excess stays), the texture kept; its rim (the outer
    ``PALE_RIM`` of its radius) is left as it is, so the nucleus stays outlined, as a vesicular one is;
    nothing made lighter than the surroundings; grey crops are left alone; off by default, and
    drawing nothing while off, so the shipped recipe's crops are unchanged."""
    import cv2

    from pipeline.config.params import AugmentConfig
    from pipeline.training.augment import PALE_RIM, acquisition_shift, pale_nuclei

    assert AugmentConfig().pale is False and PALE_RIM == 0.2
    yy, xx = np.mgrid[:96, :128]
    centre = np.full((96, 128), np.inf)
    for k in range(8):
        centre = np.minimum(centre, np.hypot(yy - 24 - 48 * (k // 4), xx - 16 - 32 * (k % 4)))
    mask = (centre < 10).astype(np.uint8)  # eight discs of radius 10 px
    grain = np.random.default_rng(0).normal(0, 0.06, mask.shape)
    he = np.where(mask[..., None] > 0, np.array([0.35, 0.2, 0.55]) + grain[..., None],
                  [0.92, 0.75, 0.85]).clip(0.01, 1).astype(np.float32)
    _, labels = cv2.connectedComponents(mask, connectivity=4)
    core, rim = centre < 5.5, (centre >= 8.5) & (centre < 10)  # depth > 0.4 r; depth < 0.15 r
    od = [-np.log(x.clip(1 / 255)).mean(-1) for x in (he, pale_nuclei(he, labels, 0.3))]
    around = np.median(od[0][mask == 0])
    assert np.mean(od[1][core]) - around == pytest.approx(0.3 * (np.mean(od[0][core]) - around), rel=0.1)
    assert np.std(od[1][core]) == pytest.approx(np.std(od[0][core]), rel=0.1)  # texture kept
    np.testing.assert_allclose(od[1][rim], od[0][rim], atol=1e-5)  # the rim outlines it still
    np.testing.assert_allclose(od[1][mask == 0], od[0][mask == 0], atol=1e-5)  # outside: untouched
    assert od[1].min() >= min(od[0].min(), around) - 1e-5  # no halo
    grey = np.repeat(he.mean(axis=-1, keepdims=True), 3, axis=-1)
    np.testing.assert_array_equal(acquisition_shift(grey, mask, np.random.default_rng(0), {"pale": 1.0}), grey)
    assert not np.array_equal(acquisition_shift(he, mask, np.random.default_rng(2), {"pale": 1.0}), he)
    rng_off, rng_before = np.random.default_rng(2), np.random.default_rng(2)
    acquisition_shift(he, mask, rng_off, {"pale": 0})
    acquisition_shift(he, mask, rng_before, {})
    assert rng_off.random() == rng_before.random()  # off: no draw


def nine_nuclei(level=0.3, background=0.05):
    """A dark (200, 200, 3) float32 field of nine separate nuclei of radius 12 and its (H, W) uint8 mask."""
    mask = np.zeros((200, 200), np.uint8)
    image = np.full((200, 200, 3), background, np.float32)
    yy, xx = np.mgrid[:200, :200]
    for r in (40, 100, 160):
        for c in (40, 100, 160):
            disc = np.hypot(yy - r, xx - c) < 12
            mask[disc] = 1
            image[disc] = level
    return image, mask


def test_chromo_puts_bright_foci_inside_the_nuclei_only():
    from pipeline.training.augment import acquisition_shift

    image, mask = nine_nuclei()
    for seed in range(4):
        out = acquisition_shift(image, mask, np.random.default_rng(seed), {"chromo": 1.0})
        changed = np.abs(out - image).max(axis=2) > 1e-4
        assert changed.any() and not changed[mask == 0].any()  # foci, in nuclei only
        assert out[mask == 1].max() > 0.3 + 1.4 * 0.25  # 1.5-4 x the nucleus's excess
        assert np.mean(changed[mask == 1]) < 0.5  # spots, not the whole nucleus


def test_debris_adds_bright_objects_off_the_nuclei_saturating_or_taking_the_range():
    """5-50 x the nuclei's brightness on 0.5-3 % of the pixels, never on a nucleus; clipped at 1
    (the nuclei keep their level) or the crop divided by its maximum (the nuclei dimmed)."""
    from pipeline.training.augment import acquisition_shift

    image, mask = nine_nuclei()
    kinds = set()
    for seed in range(8):
        out = acquisition_shift(image, mask, np.random.default_rng(seed), {"debris": 1.0})
        assert out.max() <= 1.0 and out.min() >= 0.0
        nucleus = float(np.median(out[mask == 1, 0]))
        kinds.add("clipped" if abs(nucleus - 0.3) < 1e-4 else "rescaled")
        objects = (out[..., 0] > nucleus + 1e-3) & (mask == 0)
        assert 0.002 < objects.mean() < 0.05 and out[objects, 0].max() > 3 * nucleus
        off = (mask == 0) & ~objects
        flat = np.abs(out[off, 0] - np.median(out[off, 0])) < 1e-3
        assert flat.mean() > 0.97  # the background is left as it was, but for the objects' soft edges
    assert kinds == {"clipped", "rescaled"}


def test_chromo_and_debris_draw_nothing_while_off():
    """Off, they leave the random stream as it was: every other recipe's crops stay the same."""
    from pipeline.training.augment import acquisition_shift

    image, mask = nine_nuclei()
    p = {"blur": 1.0, "noise": 1.0}
    a = acquisition_shift(image, mask, np.random.default_rng(3), p)
    b = acquisition_shift(image, mask, np.random.default_rng(3), {**p, "chromo": 0.0, "debris": 0.0})
    np.testing.assert_array_equal(a, b)
