"""The diameter estimate's view of an image (:mod:`pipeline.model.diameter`)."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.model.diameter import without_bright_objects

BACKGROUND, NUCLEUS = 0.05, 0.6


def _dense_field_with_debris(channels: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A normalised 256-px field whose nuclei (21 px, grey 0.6) cover over half of it, with 16
    clipped debris fragments (7 px) on its background and one nucleus with a clipped (saturated)
    centre: the image, the debris mask and the saturated centre's mask."""
    image = np.full((256, 256), BACKGROUND, np.float32)
    for y in range(11, 256, 21):
        for x in range(11, 200, 21):
            cv2.circle(image, (x, y), 10, NUCLEUS, -1)
    debris = np.zeros(image.shape, np.uint8)
    for k in range(16):
        cv2.circle(debris, (226 + 18 * (k % 2), 16 + 30 * (k // 2)), 3, 1, -1)
    debris = debris.astype(bool)
    image[debris] = 1.0
    centre = np.zeros(image.shape, np.uint8)
    cv2.circle(centre, (11 + 21 * 4, 11 + 21 * 5), 4, 1, -1)
    centre = centre.astype(bool)
    image[centre] = 1.0
    if channels:
        image = np.repeat(image[..., None], channels, axis=-1)
    return image, debris, centre


@pytest.mark.parametrize("channels", [None, 3])
def test_debris_in_a_dense_field_is_filled_with_the_background_around_it_not_the_nuclei_level(channels):
    image, debris, centre = _dense_field_with_debris(channels)
    assert np.median(image) == pytest.approx(NUCLEUS)  # the image's median is a nucleus's level
    out = without_bright_objects(image)
    assert out.shape == image.shape and out.dtype == image.dtype
    assert np.allclose(out[debris], BACKGROUND)  # filled as the background they sit on
    assert np.array_equal(out[centre], image[centre])  # a clipped centre ringed by its nucleus stays
    far = cv2.dilate(debris.astype(np.uint8), np.ones((9, 9), np.uint8)) == 0
    assert np.array_equal(out[far], image[far])  # nothing else moves


def test_an_image_without_enough_clipped_pixels_is_returned_as_it_is():
    image, debris, _ = _dense_field_with_debris()
    image[debris] = NUCLEUS  # no debris: the one saturated centre is under 0.5 % of the pixels
    assert without_bright_objects(image) is image
