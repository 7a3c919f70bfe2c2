"""Shared fixtures: paths of the embedded sample and small synthetic label maps."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the napari plugin's tests: no display needed

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ROOT = ROOT / "data" / "sample" / "stage1_train"
SAMPLE_SOLUTION = ROOT / "data" / "sample" / "solution.csv"


@pytest.fixture(scope="session")
def sample_root() -> Path:
    """The embedded Kaggle-layout sample (20 images)."""
    return SAMPLE_ROOT


@pytest.fixture(scope="session")
def sample_solution() -> Path:
    """Kaggle solution CSV of the embedded sample."""
    return SAMPLE_SOLUTION


@pytest.fixture(scope="session")
def sample_ids() -> list[str]:
    return sorted(p.name for p in SAMPLE_ROOT.iterdir() if p.is_dir())


def disc(shape: tuple[int, int], center: tuple[float, float], radius: float) -> np.ndarray:
    """bool (H, W) disc."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


@pytest.fixture
def two_discs() -> np.ndarray:
    """int32 (64, 96) label map: two discs of radius 12 separated by a 4-px gap, and a third
    isolated disc."""
    labels = np.zeros((64, 96), np.int32)
    labels[disc(labels.shape, (32, 20), 12)] = 1
    labels[disc(labels.shape, (32, 48), 12)] = 2
    labels[disc(labels.shape, (14, 84), 6)] = 3
    return labels


@pytest.fixture(scope="session")
def embryo() -> tuple[np.ndarray, np.ndarray]:
    """An embryo-like image: a large dim ellipse (grey 120) ringed by 77 bright nuclei of 10 px
    (grey 150–249) on a dark background (grey 10). Returns (uint8 (300, 640, 3) image, int32 labels).

    The largest bright structure is the ellipse, far larger than a quarter of the image's height:
    the Laplacian-of-Gaussian scale space responds most at its size, not at the nuclei's.
    """
    shape, d = (300, 640), 10
    grey = np.full(shape, 10, np.uint8)
    labels = np.zeros(shape, np.int32)
    cy, cx, ry, rx = shape[0] / 2, shape[1] / 2, shape[0] * 0.4, shape[1] * 0.42
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    grey[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] = 120
    for t in np.arange(0, 2 * np.pi, 1.4 * d / ((ry + rx) / 2)):
        nucleus = disc(shape, (cy + (ry - d) * np.sin(t), cx + (rx - d) * np.cos(t)), d / 2)
        if labels[nucleus].any():
            continue
        labels[nucleus] = labels.max() + 1
        grey[nucleus] = 150 + (37 * int(labels.max())) % 100
    return np.dstack([grey] * 3), labels
