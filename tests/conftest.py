"""Shared fixtures: paths of the embedded sample and small synthetic label maps."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("OMP_NUM_THREADS", "1")

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
