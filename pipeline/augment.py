"""Data augmentation for training, applied identically to the image and all targets.

Built on albumentations. The four targets (``classes``, ``mask``, ``border``, ``weights``) are
stacked into one float32 ``(H, W, 4)`` mask so that every geometric transform moves them
together with the image in one call, with nearest-neighbour interpolation (class labels stay
labels; the weight map is resampled by nearest neighbour too, which keeps its peaks on the
gaps between nuclei). Geometric transforms fill borders by reflection.

Train pipeline (each step switchable in the ``augment`` section of ``params.yaml``; ``true``
uses the default probability below, a number in [0, 1] sets it, ``false`` / 0 disables):

- ``crop`` (int or null): reflect-pad to ``crop`` if smaller, then a random ``crop × crop``
  window (p 1);
- ``scale`` ([lo, hi] or null): isotropic zoom by a factor uniform in [lo, hi] (Affine, p 0.5);
- ``flips``: horizontal and vertical flips, drawn independently (p 0.5 each);
- ``rot90``: rotation by 0, 90, 180 or 270° (p 1);
- ``elastic``: elastic deformation, ``elastic_alpha`` / ``elastic_sigma`` (p 0.3);
- ``brightness_contrast``: brightness ± 0.2, contrast ± 0.2 (p 0.5);
- ``gamma``: gamma in [0.8, 1.2] (p 0.5);
- ``color_to_gray``: colour → grey (ToGray) and grey → colour (random per-channel gain in
  [0.6, 1.4]), each with p 0.2;
- ``invert``: colour inversion ``1 − image`` (p 0.2), so that dark-on-bright brightfield and
  bright-on-dark fluorescence look alike to the network.

Validation (``train=False``) is the identity; pad to the network stride at the model
(``pipeline.models.pad_to_stride``).

Determinism. albumentations 2 ignores the global ``random`` / ``numpy`` seeds: a pipeline draws
from its own generators. :class:`Augmentation` therefore takes a ``seed`` and can be reseeded;
the data set should pass a per-sample seed derived from (run seed, epoch, sample index) —
``augment(..., seed=sample_seed(seed, epoch, index))`` — which makes every crop independent
of the number of workers, of DDP ranks and of resuming. (Reseeding once per worker in
``worker_init_fn`` with ``aug.reseed(torch.initial_seed() % 2**32)`` is also deterministic for
a fixed number of workers.) Note that albumentations' own ``Compose(seed=...)`` gives every
transform an identically seeded generator, which correlates their random draws (both flips
fire together); :meth:`Augmentation.reseed` shares one generator among all transforms instead.
"""

from __future__ import annotations

import random

import albumentations as A
import cv2
import numpy as np

from pipeline.errors import NucleiError

#: Default probability of each switchable transform when its key is ``true``.
DEFAULT_P = {
    "scale": 0.5,
    "flips": 0.5,
    "rot90": 1.0,
    "elastic": 0.3,
    "brightness_contrast": 0.5,
    "gamma": 0.5,
    "color_to_gray": 0.2,
    "invert": 0.2,
}
REFLECT = cv2.BORDER_REFLECT_101


def _probability(cfg: dict, key: str) -> float:
    """``true`` → default p, a number → that p, ``false`` / missing / null → 0."""
    value = cfg.get(key, False)
    if value is True:
        return DEFAULT_P[key]
    if value is False or value is None:
        return 0.0
    try:
        p = float(value)
    except (TypeError, ValueError):
        raise NucleiError(f"augment.{key}: expected true, false or a probability, got {value!r}") from None
    if not 0.0 <= p <= 1.0:
        raise NucleiError(f"augment.{key}: probability {p} is not in [0, 1]")
    return p


def sample_seed(*keys: int) -> int:
    """A 32-bit seed from integers such as (run seed, epoch, sample index); stable across runs."""
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0])


def _transforms(cfg: dict) -> list:
    """The albumentations transforms of the train pipeline described in the module docstring."""
    t = []
    crop = cfg.get("crop")
    if crop:
        crop = int(crop)
        t += [
            A.PadIfNeeded(crop, crop, border_mode=REFLECT),
            A.RandomCrop(crop, crop),
        ]
    scale = cfg.get("scale")
    p = DEFAULT_P["scale"] if scale not in (None, False) else 0.0
    if p:
        try:
            lo, hi = (float(s) for s in scale)
        except (TypeError, ValueError):
            raise NucleiError(f"augment.scale: expected [low, high] or null, got {scale!r}") from None
        if not 0 < lo <= hi:
            raise NucleiError(f"augment.scale: need 0 < low <= high, got {scale!r}")
        t.append(A.Affine(scale=(lo, hi), keep_ratio=True, border_mode=REFLECT, p=p))
    if p := _probability(cfg, "flips"):
        t += [A.HorizontalFlip(p=p), A.VerticalFlip(p=p)]
    if p := _probability(cfg, "rot90"):
        t.append(A.RandomRotate90(p=p))
    if p := _probability(cfg, "elastic"):
        alpha = float(cfg.get("elastic_alpha", 200.0))
        sigma = float(cfg.get("elastic_sigma", 10.0))
        t.append(A.ElasticTransform(alpha=alpha, sigma=sigma, border_mode=REFLECT, p=p))
    if p := _probability(cfg, "brightness_contrast"):
        t.append(A.RandomBrightnessContrast(0.2, 0.2, p=p))
    if p := _probability(cfg, "gamma"):
        t.append(A.RandomGamma((80, 120), p=p))
    if p := _probability(cfg, "color_to_gray"):
        t += [
            A.ToGray(num_output_channels=3, p=p),
            A.MultiplicativeNoise((0.6, 1.4), per_channel=True, elementwise=False, p=p),
        ]
    if p := _probability(cfg, "invert"):
        t.append(A.InvertImg(p=p))
    return t


class Augmentation:
    """``callable(image, classes, mask, border, weights, seed=None) -> same tuple``.

    Parameters (of the call)
    ------------------------
    image : ndarray
        float32 (H, W, 3) in [0, 1].
    classes, mask, border : ndarray
        uint8 (H, W).
    weights : ndarray
        float32 (H, W) (float16 is accepted and returned as float32).
    seed : int, optional
        Reseed before transforming (see :meth:`reseed`); same seed + same input → same output.

    Returns
    -------
    The five arrays transformed alike: image float32 (h, w, 3) clipped to [0, 1], the targets
    uint8 (h, w), weights float32 (h, w); ``(h, w) = (crop, crop)`` when cropping.
    """

    def __init__(self, transforms: list, seed: int | None = None):
        self.transforms = transforms
        self.compose = A.Compose(transforms, p=1.0) if transforms else None
        self.reseed(seed)

    def reseed(self, seed: int | None) -> None:
        """Seed one numpy and one python generator shared by all transforms."""
        self.seed = seed
        if self.compose is not None:
            self.compose.set_random_state(np.random.default_rng(seed), random.Random(seed))

    def __call__(self, image, classes, mask, border, weights, seed: int | None = None):
        if self.compose is None:
            return image, classes, mask, border, weights
        if seed is not None:
            self.reseed(seed)
        targets = np.stack([classes, mask, border, weights], axis=-1).astype(np.float32)
        out = self.compose(image=np.ascontiguousarray(image, dtype=np.float32), mask=targets)
        t = out["mask"]
        image = np.clip(out["image"], 0.0, 1.0, dtype=np.float32)
        cls, msk, brd = (np.ascontiguousarray(t[..., i]).astype(np.uint8) for i in range(3))
        return image, cls, msk, brd, np.ascontiguousarray(t[..., 3])

    def __repr__(self) -> str:
        names = ", ".join(type(t).__name__ for t in self.transforms)
        return f"Augmentation([{names}], seed={self.seed})"


def build_augmentation(cfg: dict, train: bool, seed: int | None = None) -> Augmentation:
    """Build the augmentation from the ``augment`` section of ``params.yaml``.

    Parameters
    ----------
    cfg : dict
        Keys in the module docstring table, plus optional ``elastic_alpha`` (displacement scale, default
        200: about 2 px mean shift at the default ``elastic_sigma`` of 10 px).
    train : bool
        True: the random train pipeline; False: the identity (validation, inference).
    seed : int, optional
        Initial seed of the shared generators (None: fresh entropy).

    Returns
    -------
    augment : Augmentation
        ``augment(image, classes, mask, border, weights, seed=None) -> same tuple``.
    """
    return Augmentation(_transforms(cfg) if train else [], seed)
