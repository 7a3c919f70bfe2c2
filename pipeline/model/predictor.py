"""Probability maps from a trained network: :class:`Predictor` (padding, tiling, TTA).

:class:`Predictor` runs a segmentation network on images of any size:

- an image that fits in one tile, or holds no more pixels than one batch of its tiles, is
  mirror-padded (bottom/right) to a multiple of the network stride and run whole;
- a larger image is mirror-padded by ``overlap / 2`` on every side (context for the border
  pixels, as in the U-Net paper) and cut into equal overlapping tiles; the tiles are blended
  with a smooth partition-of-unity window that is zero within ``overlap / 4`` of a tile edge,
  so that every output pixel comes from tile interiors (seamless tiling);
- test-time augmentation ('rot180': the image and its half turn, 'flips': the 4 flips, 'd4': the
  8 rotations/reflections; 'auto': the most of 'flips', 'rot180' and none that fits in
  :data:`AUTO_TTA_BUDGET`, per image) is applied per tile, inverted on the probabilities and
  averaged;
- tiles of the same shape are batched, across images too; mixed precision on CUDA;
- the forward pass runs in PyTorch, or in ONNX Runtime or OpenVINO on the network exported in
  memory (``backend``, :mod:`pipeline.model.backends`); everything above stays here.

The head (:mod:`pipeline.method.heads`) turns logits into probabilities. Must not: post-process,
rescale or normalise images (that is :class:`pipeline.model.segmenter.Segmenter`), import the Segmenter
(it imports this module; the ``predict`` stage that runs it is :mod:`pipeline.stages.predict`), or keep
defaults of the ``predict`` section (:class:`pipeline.config.params.PredictConfig`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config.model_folder import ModelDirConfig
from pipeline.config.params import TTA_MODES, ModelConfig, PredictConfig
from pipeline.method.heads import get_head
from pipeline.model.runtime import (
    autocast,
    prepare_model,
    resolve_device,
    to_channels_last,
)

#: 'auto' test-time augmentation: passes × pixels (at the network's scale) an image may cost, one
#: pass over a 1024 × 1024 image: 'flips' (4 passes) up to 512 × 512 px, 'rot180' (2) up to
#: 724 × 724, one pass above.
AUTO_TTA_BUDGET = 1024 * 1024


def resolve_tta(mode: str, pixels: int | None = None) -> str:
    """The test-time augmentation ``mode`` means for an image of ``pixels`` (H × W as the network
    sees it): 'auto' → the first of 'flips', 'rot180' and 'none' whose passes × ``pixels`` fit in
    :data:`AUTO_TTA_BUDGET` ('flips' when ``pixels`` is None); any other mode is itself."""
    if mode != "auto":
        return mode
    return next((m for m in ("flips", "rot180") if pixels is None or len(tta_transforms(m)) * pixels
                 <= AUTO_TTA_BUDGET), "none")


def tta_transforms(mode: str, pixels: int | None = None) -> list[tuple[int, bool]]:
    """Test-time augmentations as ``(quarter turns k, flip first)`` pairs.

    'none' → identity; 'rot180' → identity and the half turn; 'flips' → identity, left-right,
    up-down and both flips (k = 0 or 2); 'd4' → all 8 symmetries of the square; 'auto' →
    :func:`resolve_tta` for ``pixels``.
    """
    mode = resolve_tta(mode, pixels)
    if mode == "none":
        return [(0, False)]
    if mode == "rot180":
        return [(0, False), (2, False)]
    if mode == "flips":
        return [(0, False), (0, True), (2, True), (2, False)]  # id, lr, ud (= rot180 ∘ lr), rot180
    if mode == "d4":
        return [(k, f) for f in (False, True) for k in range(4)]
    raise ValueError(f"tta must be one of {TTA_MODES}, got {mode!r}")


def _axis_tiles(length: int, tile: int, overlap: int, stride: int) -> tuple[int, int, int]:
    """Tiling of one (already margin-padded) axis: ``(n tiles, tile length, padded length)``.

    The tiles are as equal as possible, multiples of ``stride``, at most ``tile`` long, start
    every ``tile length − overlap`` pixels and exactly cover ``padded length ≥ length``.
    """
    if length <= tile:
        size = -(-length // stride) * stride
        return 1, size, size
    n = math.ceil((length - overlap) / (tile - overlap))
    size = -(-(math.ceil((length - overlap) / n) + overlap) // stride) * stride
    return n, size, n * (size - overlap) + overlap


def _axis_window(size: int, overlap: int, first: bool, last: bool) -> np.ndarray:
    """Blending weights (float32, ``size``) of one tile along one axis.

    Towards a neighbouring tile the weight rises as sin² from 0 (over the outer quarter of the
    overlap) to 1 (from the inner quarter of the overlap on). With tiles ``overlap`` apart
    and at least ``2 * overlap`` long, the weights of neighbours sum to exactly 1; in general
    the blended sum is divided by the summed weights.
    """
    x = (np.arange(size, dtype=np.float64) + 0.5 - overlap / 4) / (overlap / 2) if overlap else np.full(size, np.inf)
    rise = np.sin(np.pi / 2 * np.clip(x, 0.0, 1.0)) ** 2
    w = np.ones(size)
    if not first:
        w *= rise
    if not last:
        w *= rise[::-1]
    return w.astype(np.float32)


@dataclass(frozen=True)
class TilePlan:
    """How one image is padded and tiled.

    ``pad`` are the ``np.pad`` widths of the (H, W) axes; ``tile`` the tile shape; ``ys``, ``xs``
    the tile origins in the padded frame; ``wy``, ``wx`` the blending windows per tile row and
    column.
    """

    shape: tuple[int, int]
    pad: tuple[tuple[int, int], tuple[int, int]]
    tile: tuple[int, int]
    ys: tuple[int, ...]
    xs: tuple[int, ...]
    wy: tuple[np.ndarray, ...]
    wx: tuple[np.ndarray, ...]

    @property
    def padded_shape(self) -> tuple[int, int]:
        return tuple(s + a + b for s, (a, b) in zip(self.shape, self.pad, strict=True))


def plan_tiles(shape: tuple[int, int], tile_size: int, overlap: int, stride: int,
               batch_size: int = 1) -> TilePlan:
    """Plan the padding and tiling of an image of ``shape`` (H, W).

    An image whose sides fit in ``tile_size`` runs whole. So does a larger one whose area is at
    most that of one forward pass of its tiles (``min(batch_size, tiles)`` tiles): fewer pixels
    through the network (no overlaps recomputed, no blending) and no more memory.

    Parameters
    ----------
    shape : (int, int)
        Image height and width in pixels.
    tile_size : int
        Largest tile side (a multiple of ``stride``).
    overlap : int
        Overlap of neighbouring tiles (a multiple of ``2 * stride``, < ``tile_size``).
    stride : int
        The network's stride.
    batch_size : int
        Tiles per forward pass.

    Returns
    -------
    plan : TilePlan
    """
    h, w = shape
    th, tw = -(-h // stride) * stride, -(-w // stride) * stride
    whole = TilePlan(shape, ((0, th - h), (0, tw - w)), (th, tw), (0,), (0,),  # mirrored at the bottom and right
                     (np.ones(th, np.float32),), (np.ones(tw, np.float32),))
    if th <= tile_size and tw <= tile_size:
        return whole
    margin = overlap // 2
    pads, tiles, origins, windows = [], [], [], []
    for length in (h, w):
        n, size, padded = _axis_tiles(length + 2 * margin, tile_size, overlap, stride)
        pads.append((margin, padded - length - margin))
        tiles.append(size)
        origins.append(tuple(i * (size - overlap) for i in range(n)))
        windows.append(tuple(_axis_window(size, overlap, i == 0, i == n - 1) for i in range(n)))
    one_pass = min(batch_size, len(origins[0]) * len(origins[1])) * tiles[0] * tiles[1]
    if th * tw <= one_pass:
        return whole
    return TilePlan(shape, tuple(pads), tuple(tiles), origins[0], origins[1], windows[0], windows[1])


class Predictor:
    """Run a segmentation network on whole images of any size.

    Parameters
    ----------
    model : torch.nn.Module
        Maps ``(B, 3, h, w)`` float32 to logits ``(B, C, h, w)`` for ``h, w`` multiples of the
        stride (e.g. from :func:`pipeline.model.networks.build_model`).
    config : ModelDirConfig, ModelConfig or dict
        A model directory's config (:class:`pipeline.config.model_folder.ModelDirConfig`, as
        :func:`load_predictor` gives it), or the ``model`` section itself (a
        :class:`~pipeline.config.params.ModelConfig` or a mapping); gives the ``head`` and the
        stride. Kept as the ``config`` attribute.
    device : str
        'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available).
    tta : {'none', 'rot180', 'flips', 'd4', 'auto'}
        Test-time augmentation, averaged (:func:`tta_transforms`; 'auto' chooses per image by
        its size; a block of a larger image gets that image's mode, passed as ``tta``).
    tile_size : int
        Images whose padded sides fit are run whole; larger ones are tiled with tiles of at most
        this side (rounded up to the stride), unless the whole image holds no more pixels than
        one forward pass of its tiles (:func:`plan_tiles`); such an image runs alone.
    overlap : int
        Overlap of neighbouring tiles in pixels (rounded up to twice the stride); half of it is
        mirrored context around a tiled image.
    batch_size : int
        Tiles per forward pass.
    precision : {'auto', 'fp32', 'bf16', 'fp16'}
        Autocast of the forward pass (:func:`pipeline.model.runtime.resolve_precision`: 'auto' is bf16
        on a CPU with AMX and on CUDA, fp32 elsewhere; OpenVINO's 'auto' is bf16 on CPUs with native
        bf16, or int8 where the folder has an int8 network; ONNX Runtime's fp32:
        :func:`pipeline.model.backends.resolve_backend`). The network and its inputs are
        in channels-last memory format; the network is an eval-mode copy of ``model`` with batch
        norm folded into its convolutions (:func:`pipeline.model.networks.fuse_batchnorm`).
    stride : int, optional
        Override :func:`pipeline.model.networks.model_stride` (for custom modules).
    backend : {'torch', 'onnxruntime', 'openvino', 'auto'}
        What runs the forward pass (:func:`pipeline.model.backends.resolve_backend`; the resolved
        name is the ``backend`` attribute, the precision it runs the ``precision`` attribute).
        'onnxruntime' and 'openvino' export the network to ONNX on the first forward pass (in
        memory) and run it on the CPU on torch's threads; 'auto' is OpenVINO, else ONNX Runtime,
        when installed, on a CPU; torch otherwise.
    int8_file : Path, optional
        The model folder's int8 network (``int8_network``, :mod:`pipeline.model.quantise`), which OpenVINO
        runs at precision 'auto' (:func:`pipeline.model.backends.resolve_backend`; the resolved
        ``precision`` attribute is then 'int8').
    """

    def __init__(self, model, config: ModelDirConfig | ModelConfig | dict, device: str = "cpu", tta: str = "none",
                 tile_size: int = PredictConfig.tile_size, overlap: int = PredictConfig.overlap,
                 batch_size: int = PredictConfig.batch_size, precision: str = PredictConfig.precision,
                 stride: int | None = None, backend: str = "torch", int8_file: Path | None = None):
        from pipeline.model.backends import resolve_backend
        from pipeline.model.networks import fuse_batchnorm, model_stride

        self.config = config
        if isinstance(config, ModelDirConfig):
            model_cfg = config.model
        elif isinstance(config, ModelConfig):
            model_cfg = config
        else:
            model_cfg = ModelConfig.from_dict(config["model"] if isinstance(config.get("model"), dict) else config,
                                              "model config")
        self.head = model_cfg.head
        self.channels = get_head(self.head).channels
        self.stride = int(stride or model_stride(model_cfg))
        tta_transforms(tta)  # ValueError for an unknown mode
        self.tta = tta
        self.overlap = -(-int(overlap) // (2 * self.stride)) * 2 * self.stride
        self.tile_size = max(-(-int(tile_size) // self.stride) * self.stride, self.overlap + self.stride)
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.batch_size = int(batch_size)
        self.device = resolve_device(device)
        self.backend, self.precision = resolve_backend(backend, self.device, precision, int8_file is not None)
        self.int8_file = int8_file
        if self.precision == "int8":  # a missing or stale int8 network is refused before any image
            from pipeline.model.backends import read_int8_network

            read_int8_network(int8_file, self._weights_sha256())
        self.model = prepare_model(fuse_batchnorm(model), self.device)
        self._exported = None  # the network in self.backend, made on the first forward pass

    def _weights_sha256(self) -> str | None:
        """The model folder's weights checksum (None: the config is not a folder's)."""
        return self.config.weights_sha256 if isinstance(self.config, ModelDirConfig) else None

    def plan(self, shape: tuple[int, int]) -> TilePlan:
        """The :class:`TilePlan` for an image of ``shape`` (H, W)."""
        return plan_tiles(tuple(shape), self.tile_size, self.overlap, self.stride, self.batch_size)

    def predict(self, image: np.ndarray, tta: str | None = None) -> np.ndarray:
        """Probabilities for one image.

        Parameters
        ----------
        image : (H, W, 3) float32
            Normalised to [0, 1] (:func:`pipeline.method.intensity.normalize_image`).
        tta : str, optional
            A :data:`TTA_MODES` mode for this call instead of the predictor's.

        Returns
        -------
        probs : (C, H, W) float32
            Softmax classes (mask − border, border, background) or sigmoid channels (mask,
            border), in [0, 1].
        """
        return self.predict_many([image], tta)[0]

    def predict_many(self, images: Sequence[np.ndarray], tta: str | None = None) -> list[np.ndarray]:
        """Probabilities for several images; tiles of equal shape share forward passes.

        Parameters
        ----------
        images : sequence of (H, W, 3) float32
            Any sizes.
        tta : str, optional
            A :data:`TTA_MODES` mode for this call instead of the predictor's.

        Returns
        -------
        probs : list of (C, H, W) float32, one per image.
        """
        plans, padded, sums, weights = [], [], [], []
        for image in images:
            image = np.asarray(image, dtype=np.float32)
            if image.ndim != 3 or image.shape[2] != 3:
                raise ValueError(f"expected an (H, W, 3) image, got shape {image.shape}")
            plan = self.plan(image.shape[:2])
            plans.append(plan)
            padded.append(np.pad(image, (*plan.pad, (0, 0)), mode="reflect"))
            single = len(plan.ys) == len(plan.xs) == 1  # one tile: its prediction is the result (no buffers)
            sums.append(None if single else np.zeros((self.channels, *plan.padded_shape), np.float32))
            weights.append(None if single else np.zeros(plan.padded_shape, np.float32))

        jobs: dict[tuple[tuple[int, int], tuple], list[tuple[int, int, int]]] = {}
        for k, plan in enumerate(plans):
            transforms = tuple(tta_transforms(tta or self.tta, plan.shape[0] * plan.shape[1]))
            for i in range(len(plan.ys)):
                for j in range(len(plan.xs)):
                    jobs.setdefault((plan.tile, transforms), []).append((k, i, j))
        for ((th, tw), transforms), tiles in jobs.items():
            per_pass = self.batch_size if max(th, tw) <= self.tile_size else 1  # a larger whole image runs alone
            for start in range(0, len(tiles), per_pass):
                chunk = tiles[start : start + per_pass]
                batch = np.stack([
                    padded[k][plans[k].ys[i] : plans[k].ys[i] + th, plans[k].xs[j] : plans[k].xs[j] + tw]
                    for k, i, j in chunk
                ])
                probs = self.forward(batch.transpose(0, 3, 1, 2), transforms)
                for p, (k, i, j) in zip(probs, chunk, strict=True):
                    plan = plans[k]
                    if weights[k] is None:  # the whole image in one tile: no blending
                        sums[k] = p
                        continue
                    y, x = plan.ys[i], plan.xs[j]
                    window = np.outer(plan.wy[i], plan.wx[j])
                    sums[k][:, y : y + th, x : x + tw] += p * window
                    weights[k][y : y + th, x : x + tw] += window
        results = []
        for total, weight, plan in zip(sums, weights, plans, strict=True):
            (top, _), (left, _) = plan.pad
            crop = (slice(top, top + plan.shape[0]), slice(left, left + plan.shape[1]))
            total = total[:, crop[0], crop[1]]
            results.append(np.ascontiguousarray(total) if weight is None else total / weight[crop])
        return results

    def forward(self, batch: np.ndarray, transforms: Sequence[tuple[int, bool]]) -> np.ndarray:
        """TTA-averaged probabilities of a batch of tiles.

        Parameters
        ----------
        batch : (B, 3, h, w) float32
            ``h``, ``w`` multiples of the stride.
        transforms : sequence of (k, flip)
            :func:`tta_transforms` to average (chosen per image by :meth:`predict_many`).

        Returns
        -------
        probs : (B, C, h, w) float32
        """
        if self.backend != "torch":
            return self._forward_exported(batch, transforms)
        import torch

        x = to_channels_last(torch.from_numpy(np.ascontiguousarray(batch)), self.device)
        total = None
        with torch.inference_mode(), autocast(self.device, self.precision):
            for k, flip in transforms:
                t = torch.rot90(x.flip(-1) if flip else x, k, dims=(-2, -1))
                p = get_head(self.head).activate(self.model(t).float())
                p = torch.rot90(p, -k, dims=(-2, -1))
                p = p.flip(-1) if flip else p
                total = p if total is None else total + p
        return (total / len(transforms)).float().cpu().numpy()

    def _forward_exported(self, batch: np.ndarray, transforms: Sequence[tuple[int, bool]]) -> np.ndarray:
        """:meth:`forward` through the exported network (the same transforms, in numpy)."""
        if self._exported is None:
            import torch

            from pipeline.model.backends import ExportedNetwork

            self._exported = ExportedNetwork(self.backend, self.model, self.head, self.stride, torch.get_num_threads(),
                                             self.precision, self.int8_file, self._weights_sha256())
        total = None
        for k, flip in transforms:
            x = np.rot90(batch[..., ::-1] if flip else batch, k, axes=(-2, -1))
            p = np.rot90(self._exported(x), -k, axes=(-2, -1))
            p = p[..., ::-1] if flip else p
            total = p if total is None else total + p
        return np.ascontiguousarray(total / len(transforms), dtype=np.float32)


def load_predictor(model_dir: str | Path, device: str = "auto", **overrides: Any) -> Predictor:
    """Load a model directory into a :class:`Predictor`.

    Parameters
    ----------
    model_dir : str or Path
        Folder with ``config.yaml`` and ``weights.pt`` (:func:`pipeline.model.model_dir.save_model_dir`).
    device : str
        'auto', 'cpu', 'cuda', ...
    **overrides
        :class:`Predictor` keywords (``tta``, ``tile_size``, ``overlap``, ``batch_size``, ``precision``,
        ``backend``).

    Returns
    -------
    predictor : Predictor
        Its ``config`` attribute is the model directory's config
        (:class:`pipeline.config.model_folder.ModelDirConfig`: ``postprocess``, ``normalization``, ...).
    """
    from pipeline.model.model_dir import load_model_dir

    device = resolve_device(device)
    model, config = load_model_dir(model_dir, device)
    return Predictor(model, config, device=device, int8_file=config.int8_file(model_dir), **overrides)


def predictor_options(cfg: PredictConfig | dict[str, Any]) -> dict[str, Any]:
    """:class:`Predictor` keywords from a ``predict`` section of params.yaml (checked)."""
    if not isinstance(cfg, PredictConfig):
        cfg = PredictConfig.from_dict(cfg)
    return cfg.predictor_options()
