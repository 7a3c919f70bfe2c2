"""One fine-tuning run of ``nuclei finetune``: annotated images at the network's scale, the
:class:`pipeline.training.trainer.Trainer` over them in memory, and held-out scoring at checkpoints.

- :func:`bounded_region`: where to cut an annotated image so that it holds at most a given number
  of pixels at the network's scale (the part richest in nuclei): what bounds fine-tuning's memory
  whatever the image size;
- :func:`make_example`: an annotated image brought to the model's canonical nucleus diameter from
  the exact median diameter of its labels (as ``segment`` brings an image given ``--diameter``),
  with the training targets of :func:`pipeline.method.training_targets.rescaled_targets`;
- :class:`HeldOut`: probabilities and DSB2018 scores of a network on held-out examples, through
  the Segmenter's own steps (normalisation, rescaling, network, watershed);
- :class:`FinetuneTrainer`: the Trainer's loop with an :class:`pipeline.training.dataset.ArrayDataset`,
  no files written, a callback after every step and the held-out scoring as its validation;
  :func:`train_run` runs one, :func:`step_time` times one, :class:`RunProgress` is the one
  progress bar over all runs.

Must not: parse command lines, pair files, choose the plan (:mod:`pipeline.training.finetune`), write files,
or decide the diameter a model resizes an image to (:meth:`pipeline.config.model_folder.ModelDirConfig.diameter_for`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np

from pipeline.config.model_folder import ModelDirConfig
from pipeline.training.trainer import Trainer


def image_types_of(images: list[np.ndarray], model_config: ModelDirConfig) -> list[str]:
    """:func:`pipeline.method.image_types.image_type_of` each image (float32 (H, W, 3) in [0, 1]),
    normalised as the model directory ``model_config`` normalises."""
    from pipeline.method.image_types import image_type_of
    from pipeline.method.intensity import normalize_image

    norm = model_config.normalization.to_dict()
    return [image_type_of(normalize_image(image, **norm)) for image in images]


@dataclass
class Example:
    """An annotated image (or region) ready for training and held-out scoring.

    Attributes
    ----------
    name : str
    image : (H, W, 3) float32 raw in [0, 1]; labels : (H, W) int32 — on the image's own grid.
    diameter : float
        Median nucleus diameter of ``labels``, px (the user's median when it has no nucleus).
    scale : float
        Factor to the canonical diameter (:func:`pipeline.method.scale.scale_factor`).
    image_type : str
        :func:`pipeline.model.segmenter.image_type_of` the normalised image.
    arrays : dict
        At the network's scale: ``image`` float32 raw, ``labels`` int32 and the training targets
        (:class:`pipeline.training.dataset.ArrayDataset` items).
    """

    name: str
    image: np.ndarray
    labels: np.ndarray
    diameter: float
    scale: float
    image_type: str
    arrays: dict = field(repr=False)


def make_example(name: str, image: np.ndarray, labels: np.ndarray, diameter: float, model_config: ModelDirConfig,
                 targets_kwargs: dict, image_type: str | None = None) -> Example:
    """An :class:`Example` of ``image`` (float32 (H, W, 3) in [0, 1]) and ``labels`` (int32 (H, W))
    whose nuclei are ``diameter`` px, for a model directory's ``model_config``; ``image_type``: the
    image's type (:func:`image_types_of`), when the caller has it."""
    from pipeline.method.scale import scale_factor
    from pipeline.method.training_targets import rescaled_targets

    image_type = image_type or image_types_of([image], model_config)[0]
    canonical = model_config.diameter_for(image_type)
    factor = scale_factor(diameter, canonical) if canonical else 1.0
    arrays = rescaled_targets(image.astype(np.float32), labels, factor, **targets_kwargs)
    arrays["weights"] = arrays["weights"].astype(np.float32)
    return Example(name, image, labels, float(diameter), factor, image_type, arrays)


def bounded_region(labels: np.ndarray, max_pixels: float, factor: float = 1.0) -> tuple[slice, slice]:
    """The window of an annotated image that holds at most ``max_pixels`` at the network's scale.

    Parameters
    ----------
    labels : (H, W) int array
        0 = background.
    max_pixels : float
        Pixels the window may hold once resized by ``factor``.
    factor : float
        The image's scale factor to the network (:func:`pipeline.method.scale.scale_factor`).

    Returns
    -------
    rows, cols : slice
        The whole image when it fits; else a window of at most ``max_pixels / factor**2`` pixels
        (as square as the image allows) whose share of labelled pixels is the largest, found on
        a grid of blocks (about 1/256 of a side) by one summed-area table.
    """
    height, width = labels.shape
    area = max_pixels / factor**2
    if height * width <= area:
        return slice(0, height), slice(0, width)
    h = int(min(height, np.sqrt(area)))
    w = int(min(width, area // max(h, 1)))
    h = int(min(height, area // max(w, 1)))
    block = max(1, max(height, width) // 256)
    grid = (labels[: height // block * block, : width // block * block] != 0)
    grid = grid.reshape(height // block, block, width // block, block).sum(axis=(1, 3), dtype=np.int64)
    bh, bw = max(1, min(h // block, grid.shape[0])), max(1, min(w // block, grid.shape[1]))
    table = np.zeros((grid.shape[0] + 1, grid.shape[1] + 1), np.int64)
    table[1:, 1:] = grid.cumsum(0).cumsum(1)
    sums = table[bh:, bw:] - table[:-bh, bw:] - table[bh:, :-bw] + table[:-bh, :-bw]
    r, c = np.unravel_index(int(np.argmax(sums)), sums.shape)
    top, left = min(int(r) * block, height - h), min(int(c) * block, width - w)
    return slice(top, top + h), slice(left, left + w)


def split_regions(example_parts: tuple[str, np.ndarray, np.ndarray]) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Two halves (along the longer side) of an annotated image: ``(name, image, labels)`` →
    ``[(name + '#1', top or left half...), (name + '#2', ...)]``; nuclei cut by the split are cut."""
    name, image, labels = example_parts
    axis = 0 if labels.shape[0] >= labels.shape[1] else 1
    half = labels.shape[axis] // 2
    cut = [slice(None)] * 2
    parts = []
    for k, sl in enumerate((slice(0, half), slice(half, None))):
        cut[axis] = sl
        parts.append((f"{name}#{k + 1}", image[tuple(cut)], labels[tuple(cut)]))
    return parts


class HeldOut:
    """Score networks on held-out examples the way ``segment`` would segment them at their exact
    nucleus diameter (no test-time augmentation).

    Parameters
    ----------
    examples : list of :class:`Example`
    model_config : ModelDirConfig
        The model directory's config (normalisation, head, thresholds).
    device, precision : str
    """

    def __init__(self, examples: list[Example], model_config: ModelDirConfig, device: str = "cpu",
                 precision: str = "auto"):
        from pipeline.method.intensity import normalize_image

        self.examples, self.config = examples, model_config
        self.device, self.precision = device, precision
        norm = model_config.normalization.to_dict()
        self.normalized = [normalize_image(e.image, **norm) for e in examples]

    def probabilities(self, model) -> list[np.ndarray]:
        """(C, h, w) float32 probabilities of each example at its scale, by ``model`` (any mode)."""
        from pipeline.model.predictor import Predictor
        from pipeline.model.segmenter import Segmenter

        predictor = Predictor(model, self.config, device=self.device, tta="none", tile_size=1024,
                              precision=self.precision)
        segmenter = Segmenter(predictor)
        return [segmenter.predict_scaled(image, e.scale) for image, e in zip(self.normalized, self.examples, strict=True)]

    def samples(self, probs: list[np.ndarray]) -> list[tuple]:
        """:func:`pipeline.method.grid_search.grid_search` samples of these probabilities."""
        head = self.config.model.head
        return [(p, head, e.labels, e.scale, e.image_type) for p, e in zip(probs, self.examples, strict=True)]

    def scores(self, probs: list[np.ndarray], thresholds: dict) -> list[float]:
        """DSB2018 score of each example with watershed ``thresholds`` (a ``postprocess`` section)."""
        from pipeline.method.metrics import dsb_score
        from pipeline.method.watershed import postprocess_to_shape

        return [dsb_score(true, postprocess_to_shape(p, head, true.shape, scale, kind, **thresholds))
                for p, head, true, scale, kind in self.samples(probs)]


class FinetuneTrainer(Trainer):
    """The :class:`~pipeline.training.trainer.Trainer` over examples in memory (one process, no files).

    Batch norm is frozen (:meth:`batches`). Each "epoch" is one stretch of ``train.samples_per_epoch`` crops between two checkpoints; the
    validation of an epoch is ``on_checkpoint(model, steps_done) -> score`` (or none).

    Parameters
    ----------
    config : Config
        ``train.init`` is the base model directory; ``train.out`` is not written.
    items : dict of id -> arrays
        :class:`pipeline.training.dataset.ArrayDataset` items.
    draw_weights : array-like, optional
        Draw probability of each item (:class:`pipeline.training.dataset.NucleiDataset`).
    on_step : callable(), optional
        Called after every optimisation step.
    on_checkpoint : callable(model, steps) -> float, optional
        The held-out score after each epoch.
    """

    def __init__(self, config, items: dict, draw_weights=None, on_step=None, on_checkpoint=None):
        super().__init__(config, resume=False)
        self.items, self.item_weights = items, draw_weights
        self.on_step, self.on_checkpoint = on_step, on_checkpoint
        self.history: list[dict] = []

    def setup_data(self) -> None:
        from pipeline.training.augment import build_augmentation
        from pipeline.training.dataset import ArrayDataset, EpochSampler, make_loader

        cfg = self.cfg
        train_set = ArrayDataset(self.items, train=True, transform=build_augmentation(self.config.augment, train=True),
                                 samples_per_epoch=cfg.samples_per_epoch, draw_weights=self.item_weights, seed=self.seed)
        self.train_ids, self.val_ids = list(self.items), (["held-out"] if self.on_checkpoint else [])
        self.val_fold, self.split = None, "finetune"
        self.sampler = EpochSampler(train_set, 1, 0, shuffle=True, seed=self.seed)
        self.loader = make_loader(train_set, cfg.batch_size, self.sampler, 0, seed=self.seed, drop_last=True)
        self.val_loader = []

    def batches(self, epoch: int):
        """The batches, each followed by ``on_step``; batch norm uses (and keeps) the base model's
        statistics: the batch statistics of a few crops of one microscope differ from them (the
        base's loss on tissue crops was 3.5 with batch statistics, 1.6 with its own), and training
        with them lowered the held-out score at every step."""
        from torch import nn

        for module in self.model.modules():
            if isinstance(module, nn.modules.batchnorm._BatchNorm):
                module.eval()
        for batch in self.loader:
            yield batch
            if self.on_step is not None:
                self.on_step()

    def validate_epoch(self) -> tuple[float, float]:
        steps = (len(self.history) + 1) * len(self.loader)
        return float("nan"), float(self.on_checkpoint(self.model, steps))

    def open_live(self, resume: bool, start: int):
        return None

    def on_epoch_end(self, epoch: int, row: dict, improved: bool, history: list[dict]) -> None:
        self.history.append(dict(row))


def train_run(config, items: dict, draw_weights=None, on_step=None, on_checkpoint=None) -> FinetuneTrainer:
    """Run a :class:`FinetuneTrainer` (its arguments); returns it (its ``model`` and ``history``).
    Torch's deterministic-algorithms setting is as before, whatever the run set."""
    import torch

    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        trainer = FinetuneTrainer(config, items, draw_weights, on_step, on_checkpoint)
        trainer.fit()
        return trainer
    finally:
        torch.use_deterministic_algorithms(deterministic)


def step_time(config, items: dict, draw_weights=None) -> tuple[float, float]:
    """Seconds per training step of a run of ``config`` (measured on its steps after the first), and
    the seconds a run takes besides its steps (building, loading, the first step's extra)."""
    stamps = []
    start = time.perf_counter()
    train_run(config, items, draw_weights, on_step=lambda: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    step = float(np.mean(np.diff(stamps))) if len(stamps) > 1 else total
    return step, max(0.0, total - step * len(stamps))


class RunProgress:
    """One progress bar over all planned steps of all runs (tqdm, time left), and the caller's
    ``callback(fraction, message)`` after every step; ``message`` names the run."""

    def __init__(self, total: int, callback=None):
        from pipeline.progress import progress

        self.bar = progress(None, desc="finetune", total=total, unit="step")
        self.callback, self.done, self.message = callback, 0, "training"

    def step(self) -> None:
        self.done += 1
        self.bar.update(1)
        if self.callback is not None:
            self.callback(min(self.done / max(self.bar.total, 1), 1.0), self.message)

    def set_total(self, total: int) -> None:
        self.bar.total = total
        self.bar.refresh()
