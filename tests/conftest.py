"""Shared fixtures and helpers: paths of the embedded sample, small synthetic label maps and images,
the threshold U-Net saved as a model directory (``model_dir``), a Segmenter over an ideal grey-level
predictor (``grey_segmenter``). Test modules import helpers from here, never from each other."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest
from skimage.draw import disk

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("QT_QPA_PLATFORM", "offscreen")  # the napari plugin's tests: no display needed

ROOT = Path(__file__).resolve().parents[1]
SAMPLE_ROOT = ROOT / "data" / "sample" / "stage1_train"
SAMPLE_SOLUTION = ROOT / "data" / "sample" / "solution.csv"
#: Canonical nucleus diameter (px) of :func:`grey_segmenter`.
CANONICAL = 20.0


def load_script(name: str) -> ModuleType:
    """A maintainer's script of ``scripts/`` (``name``: its file name) imported as a module."""
    spec = importlib.util.spec_from_file_location(Path(name).stem, ROOT / "scripts" / name)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


# --------------------------------------------------------------------------- the threshold U-Net


TINY = {"arch": "unet", "head": "softmax", "depth": 2, "width": 4, "upsampling": "bilinear"}


def threshold_unet():
    """The tiny U-Net (:data:`TINY`) turned into a per-pixel grey-level threshold at 0.5:
    P(mask − border) ≈ 1 where the normalised grey level is above 0.5, P(background) ≈ 1 below, so
    that bright disks on a dark background have a known answer (one nucleus per disk)."""
    import torch

    from pipeline.model.networks import build_model

    model = build_model(TINY)
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, torch.nn.Conv2d | torch.nn.ConvTranspose2d):
                module.weight.zero_()  # every convolution off; batch norms (eval) are identities
                if module.bias is not None:
                    module.bias.zero_()
        first, last = model.down[0], model.dec[-1]
        first[0].weight[0, :, 1, 1] = 1 / 3  # channel 0 = grey level (centre tap)
        first[3].weight[0, 0, 1, 1] = 1.0
        last[0].weight[0, 0, 1, 1] = 1.0  # the skip connection's channel 0 passes through
        last[3].weight[0, 0, 1, 1] = 1.0
        model.head.weight[:, 0, 0, 0] = torch.tensor([40.0, 0.0, -40.0])
        model.head.bias[:] = torch.tensor([-20.0, -30.0, 20.0])
    return model.eval()


def save_threshold_model(path: Path) -> Path:
    """Write the threshold U-Net as a model directory (float16 weights, as shipped)."""
    from pipeline.model.model_dir import save_model_dir

    config = {
        "model": TINY,
        "postprocess": {"marker_threshold": 0.5, "mask_threshold": 0.5, "min_marker_size": 4, "min_size": 10},
        "normalization": {"low": 1.0, "high": 99.8},
    }
    save_model_dir(path, threshold_unet(), config)
    return path


#: A model folder's ``networks`` entry routing stained images to its ``stained/`` network.
STAINED_ROUTE = {"networks": [{"name": "stained", "folder": "stained", "image_type": ["histology"]}]}


def add_stained_network(folder: Path, network: Path, name: str = "stained") -> Path:
    """Give the model folder ``folder`` the model folder ``network`` as its stained network
    (:func:`add_network`, for images typed stained tissue)."""
    return add_network(folder, network, name, image_type=["histology"])


def add_dense_network(folder: Path, network: Path, name: str = "dense", fraction: float = 0.5) -> Path:
    """Give the model folder ``folder`` the model folder ``network`` as its dense network, for
    images whose nuclei cover more than ``fraction`` of them (:func:`add_network`)."""
    return add_network(folder, network, name, nucleus_fraction_above=fraction)


def add_network(folder: Path, network: Path, name: str, **rule) -> Path:
    """Give the model folder ``folder`` one more network: ``network`` copied to ``folder/name`` and
    a ``networks`` entry with the ``rule`` (:mod:`pipeline.config.routing`) in its ``config.yaml``,
    the only change; returns ``folder``."""
    import shutil

    import yaml

    shutil.copytree(network, folder / name)
    config = yaml.safe_load((folder / "config.yaml").read_text())
    config["networks"] = [*config.get("networks", []), {"name": name, "folder": name, **rule}]
    (folder / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return folder


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    """A model directory holding the threshold U-Net (:func:`save_threshold_model`)."""
    return save_threshold_model(tmp_path_factory.mktemp("model") / "tiny")


def disks(
    shape=(96, 128), centres=((30, 30), (60, 90), (25, 100)), radius=7, value=200, bg=20, dtype=np.uint8
):
    """A grey image with bright disks; returns (image, true labels)."""
    image = np.full(shape, bg, dtype=dtype)
    labels = np.zeros(shape, np.int32)
    for k, (r, c) in enumerate(centres, start=1):
        rr, cc = disk((r, c), radius, shape=shape)
        image[rr, cc] = value
        labels[rr, cc] = k
    return image, labels


def grid_centres(shape, spacing, offset=20):
    """Disk centres on a square grid of ``spacing`` px inside ``shape``."""
    return [
        (r, c) for r in range(offset, shape[0] - 10, spacing) for c in range(offset, shape[1] - 10, spacing)
    ]


def run_cli(*argv) -> int:
    """``nuclei segment ARGV``; the exit status."""
    from pipeline.cli import main as cli_main

    return cli_main(["segment", *map(str, argv)])


def counts_of(outdir: Path):
    """``counts.csv`` of an output folder, indexed by image."""
    import pandas as pd

    return pd.read_csv(outdir / "counts.csv", keep_default_na=False, na_values=[""]).set_index("image")


def rasterise(rings, shape) -> np.ndarray:
    """Fill closed (x, y) rings even-odd with pixel-centre sampling (skimage.draw.polygon)."""
    from skimage.draw import polygon as fill_polygon

    mask = np.zeros(shape, bool)
    for ring in rings:
        x, y = np.asarray(ring, np.float64).T
        rows, cols = fill_polygon(y - 0.5, x - 0.5, shape)  # pixel (r, c) has its centre at (c + .5, r + .5)
        inside = np.zeros(shape, bool)
        inside[rows, cols] = True
        mask ^= inside
    return mask


# --------------------------------------------------------------------------- an ideal predictor


class GreyPredictor:
    """Stands in for :class:`pipeline.model.predictor.Predictor`: P(nucleus) = grey level, no border."""

    head = "sigmoid"
    device = "cpu"
    tta = "none"

    def __init__(self, config: dict):
        self.config = config
        self.calls: list[tuple[int, int]] = []
        self.modes: list[str | None] = []  # the tta of each call (None: the predictor's own)

    def predict(self, image: np.ndarray, tta: str | None = None) -> np.ndarray:
        self.calls.append(image.shape[:2])
        self.modes.append(tta)
        grey = image.mean(axis=2).astype(np.float32)
        return np.stack([grey, np.zeros_like(grey)])


def grey_segmenter(diameter=CANONICAL, **kw):
    """A :class:`pipeline.model.segmenter.Segmenter` over :class:`GreyPredictor`."""
    from pipeline.model.segmenter import Segmenter

    config = {
        "model": {"arch": "unet", "head": "sigmoid"},
        "postprocess": {"marker_threshold": 0.5, "mask_threshold": 0.5, "min_marker_size": 4, "min_size": 10},
        "normalization": {"low": 1.0, "high": 99.8, "saturation": True},
        "diameter": diameter,
    }
    return Segmenter(GreyPredictor(config), **kw)


class InvertedPredictor(GreyPredictor):
    """P(nucleus) = 1 − grey level: dark nuclei on a bright background, as in H&E."""

    def predict(self, image: np.ndarray, tta: str | None = None) -> np.ndarray:
        probs = super().predict(image, tta)
        probs[0] = 1.0 - probs[0]
        return probs


def stain(image: np.ndarray) -> np.ndarray:
    """A grey image of dark nuclei on a bright background (uint8 RGB) as a stained one: a pink
    cast, and the darker the more purple (a stain's hue, not a tinted camera's gains:
    pipeline.method.intensity.is_tinted_grey); the same grey mean."""
    darkness = (235 - image.astype(np.float32))[..., :1]
    stained = image + np.array([12, 0, -12]) + darkness * np.array([0, -0.3, 0.3])
    return np.clip(np.rint(stained), 0, 255).astype(np.uint8)


# --------------------------------------------------------------------------- multi-channel images with known truth

#: Channel names of :func:`marker_field`'s images, and their column keys.
MARKER_CHANNELS = ("DAPI", "Ki-67", "NF-kB", "gH2AX")
MARKER_KEYS = ("DAPI", "Ki_67", "NF_kB", "gH2AX")


def marker_field(shape=(256, 256), radius=8, spacing=28, seed=0, contrast=4.0, fraction=0.4, expansion=5,
                 max_spots=4, spot_height=250.0, noise=20.0):
    """A synthetic 4-channel fluorescence field with known truth (uint16 (4, H, W), ``MARKER_CHANNELS``).

    - DAPI: discs of ``radius`` px (3000) on a grid of ``spacing`` px (jittered ±2) on 200;
    - Ki-67: a random ``fraction`` of the nuclei positive at ``200 + 100 · contrast · lognormal(0, 0.2)``,
      the others at ``200 + 100 · (1 + 0.1 N(0, 1))``, background 200;
    - NF-kB: each cell (the nucleus grown by ``expansion`` px) at a cytoplasmic level c in 300..600 (even) and
      its nucleus at ``ratio · c``, the ratio one of 0.5, 1, 2, 4; background 100;
    - gH2AX: nuclei at 500 with 0..``max_spots`` Gaussian spots (sigma 1.2 px, height ``spot_height``, at
      least 5 px apart) each, background 100.

    Gaussian noise of sd ``noise`` on every channel. Returns (channels, labels int32, cells int32,
    positive bool (N,), ratio (N,), spots int (N,)).
    """
    from skimage.segmentation import expand_labels

    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    centres = [(r + rng.integers(-2, 3), c + rng.integers(-2, 3))
               for r in range(spacing // 2 + 2, shape[0] - spacing // 2, spacing)
               for c in range(spacing // 2 + 2, shape[1] - spacing // 2, spacing)]
    for k, (r, c) in enumerate(centres, start=1):
        rr, cc = disk((r, c), radius, shape=shape)
        labels[rr, cc] = k
    n = len(centres)
    cells = expand_labels(labels, expansion)
    inside = labels > 0
    index = labels[inside] - 1
    positive = rng.random(n) < fraction
    level = np.where(positive, 200 + 100 * contrast * np.exp(0.2 * rng.standard_normal(n)),
                     200 + 100 * (1 + 0.1 * rng.standard_normal(n)))
    dapi = np.full(shape, 200.0)
    dapi[inside] = 3000
    marker = np.full(shape, 200.0)
    marker[inside] = level[index]
    cyto_level = 2.0 * rng.integers(150, 301, n)  # even: every nuclear level a whole number
    ratio = rng.choice([0.5, 1.0, 2.0, 4.0], n)
    nfkb = np.full(shape, 100.0)
    ring = (cells > 0) & ~inside
    nfkb[ring] = cyto_level[cells[ring] - 1]
    nfkb[inside] = (ratio * cyto_level)[index]
    spots = np.full(shape, 100.0)
    spots[inside] = 500.0
    counts = rng.integers(0, max_spots + 1, n)
    yy, xx = np.mgrid[-6:7, -6:7]
    for k, (r, c) in enumerate(centres):
        placed: list[tuple[float, float]] = []
        for _ in range(200):
            if len(placed) == counts[k]:
                break
            angle, distance = rng.uniform(0, 2 * np.pi), rng.uniform(0, radius - 3)
            y, x = r + distance * np.sin(angle), c + distance * np.cos(angle)
            if all((y - py) ** 2 + (x - px) ** 2 >= 25 for py, px in placed):
                placed.append((y, x))
        counts[k] = len(placed)
        for y, x in placed:
            iy, ix = int(round(y)), int(round(x))
            spots[iy - 6 : iy + 7, ix - 6 : ix + 7] += spot_height * np.exp(
                -((yy + iy - y) ** 2 + (xx + ix - x) ** 2) / (2 * 1.2**2))
    channels = np.stack([dapi, marker, nfkb, spots]) + noise * rng.standard_normal((4, *shape))
    return np.clip(channels, 0, 65535).astype(np.uint16), labels, cells, positive, ratio, counts


def write_ome(path: Path, channels: np.ndarray, names=MARKER_CHANNELS, pixel_size: float | None = None) -> Path:
    """Write (C, H, W) channels as an OME-TIFF with channel names (and a pixel size, µm)."""
    import tifffile

    metadata = {"axes": "CYX", "Channel": {"Name": list(names)}}
    if pixel_size is not None:
        metadata.update(PhysicalSizeX=pixel_size, PhysicalSizeY=pixel_size)
    tifffile.imwrite(path, channels, metadata=metadata, ome=True)
    return path


@pytest.fixture(autouse=True)
def _quiet_hostile(request, monkeypatch):
    """The hostile cases (``@pytest.mark.hostile``) read their one error line without progress bars."""
    if request.node.get_closest_marker("hostile"):
        monkeypatch.setenv("CI", "1")
