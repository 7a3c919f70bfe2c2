"""StarDist-like synthetic 3D nuclei stacks: dense, blurred along z, z twice as coarse, no metadata.

StarDist's 3D example data (``examples/3D`` of stardist/stardist: "synthetic train and test images")
are 64 × 128 × 128 stacks whose z step is twice the pixel size (the notebooks' anisotropy
``(2, 1, 1)``); their generator is not published (``stardist/data`` only loads two test images).
:func:`stardist_like_stack` follows what is published of them: that shape and anisotropy, round
nuclei of a few sizes packed densely, a point spread function longer along z than across (the
out-of-focus light that makes a 2D network see a nucleus in planes above and below it), shot noise,
and a plain uint16 array with no voxel size. Settings are fixed here, not chosen on a validation set.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

#: (Z, Y, X) of a stack and its z step in px (StarDist's demo: 64 × 128 × 128, anisotropy 2).
SHAPE, Z_STEP = (64, 128, 128), 2
#: Semi-axes of a nucleus, px: a mean radius drawn in this range, each axis ± 15 % of it.
RADII = (6.0, 11.0)
#: Gaussian PSF sigmas (z, y, x) in px of the isotropic grid: axially 3 × longer.
PSF = (4.5, 1.5, 1.5)
#: Photons at the brightest nucleus (Poisson noise), background level, camera offset.
PHOTONS, BACKGROUND, OFFSET = 30.0, 0.08, 100


def stardist_like_stack(seed: int, shape: tuple[int, int, int] = SHAPE, n: int = 200,
                        z_step: int = Z_STEP) -> tuple[np.ndarray, np.ndarray]:
    """A StarDist-like stack and its true labels.

    Nuclei (``n`` asked, fewer when no room is left) are ellipsoids placed one by one at random, a
    nucleus kept when its centre is at least 0.9 × the two mean radii from every other (so some
    touch; a voxel claimed by two goes to the nearer in normalised distance). The isotropic volume
    (``shape[0] · z_step`` planes) holds each nucleus at its own level in [0.6, 1] with a 10 %
    texture, on :data:`BACKGROUND`; it is blurred by :data:`PSF`, sections of ``z_step`` planes are
    averaged into one plane, Poisson noise of :data:`PHOTONS` is drawn; labels are the nuclei at the
    planes' centres.

    Returns
    -------
    image : (Z, Y, X) uint16
    labels : (Z, Y, X) int32, 0 = background, 1..N
    """
    rng = np.random.default_rng(seed)
    depth = shape[0] * z_step
    extent = np.array([depth, shape[1], shape[2]], float)
    centres, semis = [], []
    for _ in range(100 * n):
        if len(centres) == n:
            break
        radius = rng.uniform(*RADII)
        centre = rng.uniform(0, 1, 3) * extent
        if centres:
            gap = np.linalg.norm(np.asarray(centres) - centre, axis=1)
            if np.any(gap < 0.9 * (np.asarray([s.mean() for s in semis]) + radius)):
                continue
        centres.append(centre)
        semis.append(radius * rng.uniform(0.85, 1.15, 3))
    fine = _render(np.arange(depth) + 0.5, shape[1:], centres, semis)
    level = np.concatenate([[BACKGROUND], rng.uniform(0.6, 1.0, len(centres))]).astype(np.float32)
    grey = level[fine]
    texture = ndi.gaussian_filter(rng.standard_normal(grey.shape).astype(np.float32), 1.5)
    grey *= 1 + 0.1 * texture / max(float(texture.std()), 1e-6)
    grey = ndi.gaussian_filter(grey, PSF).reshape(shape[0], z_step, *shape[1:]).mean(axis=1)
    counts = rng.poisson(PHOTONS * np.clip(grey, 0, None))
    image = (OFFSET + counts).astype(np.uint16)
    labels = _render((np.arange(shape[0]) + 0.5) * z_step, shape[1:], centres, semis)
    present = np.bincount(labels.ravel(), minlength=len(centres) + 1) > 0
    present[0] = False
    return image, (np.cumsum(present) * present).astype(np.int32)[labels]


def _render(z_positions, plane_shape, centres, semis) -> np.ndarray:
    """int32 (len(z), Y, X) labels of axis-aligned ellipsoids at those z (px): each voxel to the
    ellipsoid of least normalised distance (≤ 1); ellipsoid k is label k + 1."""
    z_positions = np.asarray(z_positions, float)
    labels = np.zeros((z_positions.size, *plane_shape), np.int32)
    best = np.full(labels.shape, np.inf, np.float32)
    for k, (centre, semi) in enumerate(zip(centres, semis, strict=True), start=1):
        reach = float(semi.max())
        z_in = np.flatnonzero(np.abs(z_positions - centre[0]) <= reach)
        y0, y1 = max(0, int(centre[1] - reach)), min(plane_shape[0], int(math.ceil(centre[1] + reach)) + 1)
        x0, x1 = max(0, int(centre[2] - reach)), min(plane_shape[1], int(math.ceil(centre[2] + reach)) + 1)
        if z_in.size == 0 or y0 >= y1 or x0 >= x1:
            continue
        dz = ((z_positions[z_in] - centre[0]) / semi[0])[:, None, None]
        dy = ((np.arange(y0, y1) - centre[1]) / semi[1])[None, :, None]
        dx = ((np.arange(x0, x1) - centre[2]) / semi[2])[None, None, :]
        rho = np.sqrt(dz**2 + dy**2 + dx**2).astype(np.float32)
        box = (slice(z_in[0], z_in[-1] + 1), slice(y0, y1), slice(x0, x1))
        closer = (rho <= 1) & (rho < best[box])
        labels[box][closer] = k
        best[box][closer] = rho[closer]
    return labels
