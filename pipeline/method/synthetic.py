"""Synthetic test data with a known answer: z-stacks of nuclei (:func:`synthetic_nuclei_stack`), for the
tests and the 3D benchmarks (``benchmarks/eval_3d.py``, ``benchmarks/bench_stacks.py``).

Must not: be used by the segmentation itself, read or write files.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage as ndi

#: Grey levels of :func:`synthetic_nuclei_stack` before noise: background, and the range of a nucleus's level.
BACKGROUND, NUCLEUS_LEVELS = 0.1, (0.5, 1.0)
#: Distance between the centres of two touching nuclei, in mean radii summed (< 1: they share a flat face),
#: and the least distance between any other two (> 1: a gap).
TOUCHING, APART = 0.85, 1.1


def synthetic_nuclei_stack(shape: tuple[int, int, int] = (32, 128, 128), n: int = 20, radius: float = 10.0,
                           anisotropy: float = 1.0, touching: bool = True, noise: float = 0.05, blur: float = 1.0,
                           seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A fluorescence z-stack of ellipsoidal nuclei and its true labels.

    Nuclei are ellipsoids with semi-axes ``radius × U(0.8, 1.2)`` (px) each, turned by a random
    angle about z, placed at random wholly inside the stack; with ``touching`` about half of them
    are placed against one already placed (centres :data:`TOUCHING` mean radii apart: the voxels
    they share go to the nearer in normalised distance, so they touch along a flat face), the
    others at least :data:`APART` from every nucleus. Fewer than ``n`` when no room is left.

    The image is drawn on z sub-planes at most 1 px apart: each nucleus at its own level in
    :data:`NUCLEUS_LEVELS` with a 10 % texture, on :data:`BACKGROUND`; blurred by a Gaussian of
    ``blur`` px in y and x and ``2 · blur`` px in z (the axial spread of a microscope); each plane
    averages its sub-planes (a section of the z step's thickness); Gaussian noise of ``noise`` is
    added; the result is scaled to 100 + 1000 × level counts. Labels are taken at the planes' centres.

    Parameters
    ----------
    shape : (Z, H, W)
        Of the stack returned.
    n : int
        Nuclei asked for.
    radius : float
        Mean semi-axis of a nucleus, px.
    anisotropy : float
        z step in px (≥ 1 ... any positive value): plane k covers z from ``k · anisotropy`` to
        ``(k + 1) · anisotropy`` px.
    touching : bool
    noise, blur : float
        Noise sd (grey levels, 1 = the brightest nucleus) and the lateral blur sigma (px).
    seed : int

    Returns
    -------
    image : (Z, H, W) uint16
    labels : (Z, H, W) int32
        0 = background, 1..N.
    """
    rng = np.random.default_rng(seed)
    depth = shape[0] * anisotropy  # px
    centres, axes, angles = _place(rng, (depth, shape[1], shape[2]), n, radius, touching)
    sub = max(1, math.ceil(anisotropy))  # sub-planes per plane
    z_sub = (np.arange(shape[0] * sub) + 0.5) * anisotropy / sub
    z_mid = (np.arange(shape[0]) + 0.5) * anisotropy
    labels = _render(z_mid, shape[1:], centres, axes, angles)
    present = np.bincount(labels.ravel(), minlength=len(centres) + 1) > 0
    present[0] = False
    labels = (np.cumsum(present) * present).astype(np.int32)[labels]  # 1..N: the nuclei the planes cut
    fine = _render(z_sub, shape[1:], centres, axes, angles)
    level = np.concatenate([[BACKGROUND], rng.uniform(*NUCLEUS_LEVELS, len(centres))]).astype(np.float32)
    grey = level[fine]
    del fine
    texture = ndi.gaussian_filter(rng.standard_normal(grey.shape).astype(np.float32), 1.5)
    grey *= 1 + 0.1 * texture / max(float(texture.std()), 1e-6)
    del texture
    if blur > 0:
        grey = ndi.gaussian_filter(grey, (2 * blur * sub / anisotropy, blur, blur))
    grey = grey.reshape(shape[0], sub, *shape[1:]).mean(axis=1)
    grey += noise * rng.standard_normal(grey.shape).astype(np.float32)
    image = np.clip(np.rint(100 + 1000 * grey), 0, 65535).astype(np.uint16)
    return image, labels


def _place(rng, extent, n, radius, touching):
    """Centres (k, 3), semi-axes (k, 3) and angles (k,) of up to ``n`` nuclei inside ``extent`` (z, y, x px)."""
    centres, axes, angles = [], [], []
    for _ in range(200 * n):
        if len(centres) == n:
            break
        semi = radius * rng.uniform(0.8, 1.2, 3)
        mean = semi.mean()
        partner = None
        if touching and centres and rng.random() < 0.5:
            partner = int(rng.integers(len(centres)))
            direction = rng.standard_normal(3)
            direction /= np.linalg.norm(direction)
            centre = centres[partner] + direction * TOUCHING * (mean + axes[partner].mean())
        else:
            centre = rng.uniform(0, 1, 3) * np.asarray(extent)
        reach = semi.max()
        if np.any(centre < reach) or np.any(centre > np.asarray(extent) - reach):
            continue
        if centres:
            distance = np.linalg.norm(np.asarray(centres) - centre, axis=1)
            needed = APART * (np.asarray([a.mean() for a in axes]) + mean)
            if partner is not None:
                needed[partner] = TOUCHING * (axes[partner].mean() + mean) - 1e-6
            if np.any(distance < needed):
                continue
        centres.append(centre)
        axes.append(semi)
        angles.append(rng.uniform(0, np.pi))
    return centres, axes, angles


def _render(z_positions, plane_shape, centres, axes, angles) -> np.ndarray:
    """int32 (len(z_positions), H, W) labels of the ellipsoids at those z (px); a voxel goes to the
    ellipsoid of least normalised distance (≤ 1)."""
    z_positions = np.asarray(z_positions, np.float64)
    labels = np.zeros((z_positions.size, *plane_shape), np.int32)
    best = np.full(labels.shape, np.inf, np.float32)
    for k, (centre, semi, angle) in enumerate(zip(centres, axes, angles, strict=True), start=1):
        reach = semi.max()
        z_in = np.flatnonzero(np.abs(z_positions - centre[0]) <= reach)
        y0, y1 = max(0, int(centre[1] - reach)), min(plane_shape[0], int(centre[1] + reach) + 2)
        x0, x1 = max(0, int(centre[2] - reach)), min(plane_shape[1], int(centre[2] + reach) + 2)
        if z_in.size == 0 or y0 >= y1 or x0 >= x1:
            continue
        dz = (z_positions[z_in] - centre[0])[:, None, None]
        dy = (np.arange(y0, y1) - centre[1])[None, :, None]
        dx = (np.arange(x0, x1) - centre[2])[None, None, :]
        u = dy * math.cos(angle) + dx * math.sin(angle)
        v = -dy * math.sin(angle) + dx * math.cos(angle)
        rho = np.sqrt((dz / semi[0]) ** 2 + (u / semi[1]) ** 2 + (v / semi[2]) ** 2).astype(np.float32)
        box = (slice(z_in[0], z_in[-1] + 1), slice(y0, y1), slice(x0, x1))
        closer = (rho <= 1) & (rho < best[box])
        labels[box][closer] = k
        best[box][closer] = rho[closer]
    return labels
