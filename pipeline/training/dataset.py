"""Torch datasets over the prepared images and their training targets.

Training items are random crops drawn through the augmentation; validation items are whole
images mirror-padded to the network stride, with the instance labels for scoring.

Reproducibility does not depend on the number of data-loader workers: the sampler
(:class:`EpochSampler`) hands out indices that encode the epoch, and every training item seeds
the augmentation from ``(seed, epoch, index)``. Resuming at an epoch boundary therefore only
needs the epoch number. With draw weights (:func:`group_balance_weights`) the image of a draw is
chosen from the same seed, so weighted sampling is exactly as reproducible.

Must not: decide what a head's target is (it hands over the arrays of
:data:`pipeline.method.heads.TARGET_KEYS`), augment (:mod:`pipeline.training.augment`) or read params.yaml.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler

from pipeline.data.folds import read_index  # noqa: F401  (part of this module's API)
from pipeline.errors import NucleiError
from pipeline.files.io import load_npz
from pipeline.method.heads import TARGET_KEYS
from pipeline.method.intensity import NORMALIZATION, normalize_image
from pipeline.training.augment import sample_seed, unit_float


def load_item(prepared: str | Path, targets: str | Path | None, image_id: str,
              normalize: bool = True, stored: bool = False, labels: bool = True) -> dict[str, np.ndarray]:
    """Load one image with its labels and (when ``targets`` is given) its training targets.

    The targets file holds the image and labels rescaled to the canonical nucleus diameter
    (:mod:`pipeline.method.training_targets`); they replace the prepared ones when present, and the prepared
    file is then not read.

    Parameters
    ----------
    normalize : bool
        Normalise the image by :func:`pipeline.method.intensity.normalize_image`.
    stored : bool
        Keep the image as stored (uint8/uint16 counts), for an augmentation that crops first and
        converts the crop (:func:`pipeline.training.augment.unit_float`); needs ``normalize`` False.
        Training targets stay as stored too (``weights`` float16).
    labels : bool
        Load the instance labels (training crops do without them).

    Returns
    -------
    arrays : dict
        ``image`` float32 (H, W, 3), normalised when ``normalize`` else raw in [0, 1] (or as
        stored); ``labels`` int32 (H, W) unless ``labels`` is False; with targets also ``classes``
        uint8, ``mask`` uint8, ``border`` uint8 and ``weights`` float32, all (H, W).

    Raises
    ------
    NucleiError
        A missing or unreadable file, a missing array, or targets whose size differs from the
        image.
    """
    if stored and normalize:
        raise ValueError("load_item: a stored image cannot be normalised")
    wanted = ("image", "labels") if labels else ("image",)
    tgt = None
    if targets is not None:
        tpath = Path(targets) / f"{image_id}.npz"
        if not tpath.exists():
            raise NucleiError(f"{tpath}: no such file (run `nuclei targets` first)")
        tgt = load_npz(tpath, (*wanted, *TARGET_KEYS))
    if tgt is not None and all(k in tgt for k in wanted):  # rescaled to the canonical nucleus diameter
        path, prep = tpath, tgt
    else:
        path = Path(prepared) / f"{image_id}.npz"
        prep = load_npz(path, wanted)
    for key in wanted:
        if key not in prep:
            raise NucleiError(f"{path}: no '{key}' array (re-run `nuclei prepare`)")
    image = prep["image"]
    if image.ndim != 3 or image.shape[-1] != 3:
        raise NucleiError(f"{path}: image has shape {image.shape}, expected (H, W, 3)")
    if not stored:
        image = unit_float(image)
    out = {"image": normalize_image(image, **NORMALIZATION) if normalize else image}
    if labels:
        out["labels"] = prep["labels"].astype(np.int32, copy=False)
    if tgt is None:
        return out
    for key in TARGET_KEYS:
        if key not in tgt:
            raise NucleiError(f"{tpath}: no '{key}' array (re-run `nuclei targets`)")
        if tgt[key].shape != image.shape[:2]:
            raise NucleiError(
                f"{tpath}: '{key}' has shape {tgt[key].shape} but the image is {image.shape[:2]} "
                "(re-run `nuclei targets`)"
            )
    out.update({k: tgt[k] for k in TARGET_KEYS})
    if not stored:
        out["weights"] = tgt["weights"].astype(np.float32)
    return out


def pad_to_multiple(array: np.ndarray, multiple: int) -> np.ndarray:
    """Mirror-pad the first two axes at the bottom and right up to multiples of ``multiple``.

    Parameters
    ----------
    array : ndarray of shape (H, W, ...)
    multiple : int

    Returns
    -------
    padded : ndarray of shape (H', W', ...), ``H' = ceil(H / multiple) * multiple``; the
        original occupies ``[:H, :W]``; reflection repeats when the pad exceeds the size.
    """
    h, w = array.shape[:2]
    pad = [(0, -h % multiple), (0, -w % multiple)] + [(0, 0)] * (array.ndim - 2)
    if not (pad[0][1] or pad[1][1]):
        return array
    return np.pad(array, pad, mode="reflect")


def seed_transform(transform, seed: int) -> None:
    """Seed an augmentation callable for one draw.

    Uses its ``reseed`` method (:class:`pipeline.training.augment.Augmentation`) or ``set_random_seed``
    (albumentations ``Compose``) when it has one, else seeds Python's and NumPy's global
    generators (worker-local in data-loader workers).
    """
    setter = getattr(transform, "reseed", None) or getattr(transform, "set_random_seed", None)
    if callable(setter):
        setter(seed)
    else:
        random.seed(seed)
        np.random.seed(seed)  # noqa: NPY002 - fallback for callables using the global state


def group_balance_weights(groups: Sequence, exponent: float) -> np.ndarray:
    """Draw probabilities of images that balance acquisition groups (experiments).

    Parameters
    ----------
    groups : sequence of hashable, shape (n,)
        The group (experiment) of each image, e.g. the ``group`` column of ``index.csv``.
    exponent : float in [0, 1]
        A group of ``m`` images gets ``m ** exponent`` of the draws, shared evenly by its
        images: 1 draws every image equally (large experiments dominate), 0 draws every group
        equally, 0.5 is in between.

    Returns
    -------
    p : float64 ndarray of shape (n,), summing to 1.
    """
    if not 0.0 <= exponent <= 1.0:
        raise ValueError(f"exponent must be in [0, 1], got {exponent}")
    _, inverse, counts = np.unique(np.asarray(groups), return_inverse=True, return_counts=True)
    per_image = counts.astype(np.float64) ** (exponent - 1.0)
    p = per_image[inverse.ravel()]
    return p / p.sum()


def source_balance_weights(sources: Sequence, groups: Sequence, source_exponent: float,
                           group_exponent: float, factors: Mapping[str, float] | None = None) -> np.ndarray:
    """Draw probabilities of images that balance labelled sources, then experiments within each.

    Parameters
    ----------
    sources, groups : sequences of hashable, shape (n,)
        The source (``source`` column of ``index.csv``) and the experiment within it (``group``).
    source_exponent, group_exponent : float in [0, 1]
        A source of ``m`` images gets ``m ** source_exponent`` of the draws (1: in proportion to
        its images; 0: every source equally); within it, :func:`group_balance_weights` with
        ``group_exponent``. Both 1: every image equally.
    factors : mapping of source to float > 0, optional
        Multiplies a source's share before the shares are normalised (``train.source_weights``):
        2 draws a source twice as often as the exponent alone would. Default 1 for every source.

    Returns
    -------
    p : float64 ndarray of shape (n,), summing to 1.
    """
    if not 0.0 <= source_exponent <= 1.0:
        raise ValueError(f"source_exponent must be in [0, 1], got {source_exponent}")
    factors = dict(factors or {})
    if any(f <= 0 for f in factors.values()):
        raise ValueError(f"source factors must be > 0, got {factors}")
    sources, groups = np.asarray(sources), np.asarray(groups)
    p = np.zeros(len(sources), np.float64)
    for source in np.unique(sources):
        members = sources == source
        share = members.sum() ** source_exponent * factors.get(source, 1.0)
        p[members] = group_balance_weights(groups[members], group_exponent) * share
    return p / p.sum()


class NucleiDataset(Dataset):
    """Images, targets and labels of a list of prepared images.

    Parameters
    ----------
    ids : sequence of str
        Image ids (``data/prepared/<id>.npz`` and ``data/targets/<id>.npz``).
    prepared, targets : str or Path
        The prepare and targets stage folders (None for :class:`ArrayDataset`).
    train : bool
        Training items (augmented crops) or validation items (whole padded images).
    transform : callable, optional
        From :func:`pipeline.training.augment.build_augmentation`: ``(image, classes, mask, border,
        weights) -> same``; for training it must return crops of one fixed size.
    samples_per_epoch : int, optional
        Training draws per epoch; draw ``i`` uses image ``ids[i % len(ids)]``, so images are
        sampled evenly. Default: one per image.
    draw_weights : array-like of shape (len(ids),), optional
        Training only: draw the image of each item at random with these probabilities (e.g.
        :func:`group_balance_weights`) instead of evenly; the choice is seeded like the
        augmentation, from ``(seed, index)``.
    stride : int
        Validation images are mirror-padded at the bottom and right to multiples of this.
    seed : int
        Seeds the augmentation of every draw together with the sample index.
    cache_mb : float
        Keep loaded arrays in memory (per process, i.e. per data-loader worker) up to this
        many megabytes; 0 disables the cache. Training images with a normalising augmentation
        take 8 bytes a pixel (image as stored, targets, float16 weights), others 23.

    Notes
    -----
    ``dataset[i]`` accepts any ``i >= 0``: the item is ``i % len(dataset)`` and the whole
    ``i`` seeds the augmentation, so :class:`EpochSampler` gives new crops every epoch.

    Training items are dicts of tensors: ``image`` float32 (3, h, w), ``classes`` int64
    (h, w), ``mask``, ``border``, ``weights`` float32 (h, w). Validation items add ``labels``
    int32 (H, W) and ``index`` (int); their ``image`` is (3, H', W') padded to the stride while
    the targets keep the original (H, W).
    """

    def __init__(
        self,
        ids: Sequence[str],
        prepared: str | Path | None,
        targets: str | Path | None,
        train: bool = True,
        transform=None,
        samples_per_epoch: int | None = None,
        draw_weights: Sequence[float] | np.ndarray | None = None,
        stride: int = 1,
        seed: int = 0,
        cache_mb: float = 1024,
    ):
        if not ids:
            raise ValueError("NucleiDataset needs at least one image id")
        self.ids = list(ids)
        self.prepared = None if prepared is None else Path(prepared)
        self.targets = None if targets is None else Path(targets)
        self.train, self.transform = train, transform
        self.length = int(samples_per_epoch) if train and samples_per_epoch else len(self.ids)
        self.stride, self.seed = int(stride), int(seed)
        self.draw_cdf = None
        if train and draw_weights is not None:
            w = np.asarray(draw_weights, np.float64)
            if w.shape != (len(self.ids),) or not np.all(w >= 0) or w.sum() <= 0:
                raise ValueError("draw_weights must be non-negative, one per id, not all zero")
            self.draw_cdf = np.cumsum(w / w.sum())
        self.cache_bytes = int(cache_mb * 2**20)
        self._cache: dict[str, dict[str, np.ndarray]] = {}
        # training crops are normalised by the augmentation when it does so (as the Segmenter
        # normalises an image), else every image is normalised whole on loading; such an
        # augmentation (pipeline.training.augment.Augmentation) crops first and converts the crop, so
        # images stay as stored (a quarter of float32's bytes in the cache); training items load no labels
        self.normalize_on_load = not (train and getattr(transform, "normalize", None) is not None)
        self.stored = not self.normalize_on_load
        self._cached = 0

    def __len__(self) -> int:
        return self.length

    def arrays(self, image_id: str) -> dict[str, np.ndarray]:
        """The arrays of :func:`load_item` for one id, from the in-memory cache when possible."""
        arrays = self._cache.get(image_id)
        if arrays is None:
            arrays = load_item(self.prepared, self.targets, image_id, normalize=self.normalize_on_load,
                               stored=self.stored, labels=not self.train)
            size = sum(a.nbytes for a in arrays.values())
            if self._cached + size <= self.cache_bytes:
                self._cache[image_id] = arrays
                self._cached += size
        return arrays

    def image_of(self, index: int) -> int:
        """The position in ``ids`` of the image that item ``index`` draws from."""
        if self.draw_cdf is None:
            return int(index) % self.length % len(self.ids)
        u = np.random.default_rng(sample_seed(self.seed, index, 1)).random()
        return min(int(np.searchsorted(self.draw_cdf, u, side="right")), len(self.ids) - 1)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        item = int(index) % self.length
        a = self.arrays(self.ids[self.image_of(index)])
        fields = (a["image"], *(a[k] for k in TARGET_KEYS))
        if self.train and self.transform is not None:
            seed_transform(self.transform, sample_seed(self.seed, index))
            fields = self.transform(*fields)
        image, *targets = (np.ascontiguousarray(f) for f in fields)
        if not self.train:
            image = pad_to_multiple(image, self.stride)
        out = {"image": torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1), dtype=np.float32))}
        for key, target in zip(TARGET_KEYS, targets, strict=True):  # class indices stay integers
            out[key] = torch.from_numpy(target.astype(np.int64 if key == "classes" else np.float32))
        if not self.train:
            out["labels"] = torch.from_numpy(a["labels"])
            out["index"] = item
        return out


class ArrayDataset(NucleiDataset):
    """A :class:`NucleiDataset` over arrays in memory instead of the prepare and targets folders
    (``nuclei finetune``: a few images handed over by the user).

    Parameters
    ----------
    items : dict of str -> dict of arrays
        Per id, what :func:`load_item` returns with targets and ``normalize=False``: ``image``
        float32 (H, W, 3) raw in [0, 1], ``labels`` int32 and the :data:`pipeline.method.heads.TARGET_KEYS`
        arrays (H, W) (e.g. :func:`pipeline.method.training_targets.rescaled_targets`), ``weights`` float32.
    **kwargs
        The other :class:`NucleiDataset` keywords (``train``, ``transform``, ``samples_per_epoch``,
        ``draw_weights``, ``stride``, ``seed``); ids are the keys of ``items`` in order.
    """

    def __init__(self, items: dict[str, dict[str, np.ndarray]], **kwargs):
        super().__init__(list(items), prepared=None, targets=None, cache_mb=0, **kwargs)
        self.items = items

    def arrays(self, image_id: str) -> dict[str, np.ndarray]:
        arrays = self.items[image_id]
        if self.normalize_on_load:
            arrays = {**arrays, "image": normalize_image(arrays["image"], **NORMALIZATION)}
        return arrays


class EpochSampler(DistributedSampler):
    """A :class:`~torch.utils.data.DistributedSampler` whose indices encode the epoch.

    Yields ``epoch * len(dataset) + i`` for the shuffled (and, across ``num_replicas``
    processes, sharded) positions ``i``; :class:`NucleiDataset` maps them back and seeds each
    draw with them. Works without a process group for ``num_replicas=1``. Call
    :meth:`set_epoch` before each epoch.
    """

    def __init__(
        self, dataset: Dataset, num_replicas: int = 1, rank: int = 0, shuffle: bool = True, seed: int = 0
    ):
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed)

    def __iter__(self):
        offset = self.epoch * len(self.dataset)
        return (offset + int(i) for i in super().__iter__())


def seed_worker(worker_id: int) -> None:
    """``worker_init_fn`` for data loaders: seed Python and NumPy from the worker's torch seed.

    The torch seed of a worker derives from the loader's ``generator`` (seeded from params
    ``seed``), so workers are reproducible; they also use one thread each so that several
    workers do not oversubscribe the CPU.
    """
    seed = torch.initial_seed() % 2**32
    random.seed(seed)
    np.random.seed(seed)  # noqa: NPY002 - libraries in workers may use the global state
    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(0)
    except ImportError:  # pragma: no cover - OpenCV is a dependency of albumentations
        pass


def make_loader(
    dataset: Dataset,
    batch_size: int,
    sampler=None,
    workers: int = 0,
    pin_memory: bool = False,
    seed: int = 0,
    drop_last: bool = False,
) -> DataLoader:
    """A data loader with the settings training uses.

    Worker processes stay alive between epochs (``persistent_workers``) and keep their
    in-memory cache; each is seeded by :func:`seed_worker` from a generator seeded with
    ``seed``; pinned memory speeds up host-to-GPU copies.
    """
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=workers,
        pin_memory=pin_memory,
        persistent_workers=workers > 0,
        worker_init_fn=seed_worker,
        generator=torch.Generator().manual_seed(seed),
        drop_last=drop_last,
    )
