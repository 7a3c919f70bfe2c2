"""Segmentation networks and the architecture registry.

:data:`ARCHITECTURES` maps the ``model.arch`` name of params.yaml to a builder ``(ModelConfig,
channels) -> nn.Module`` (as segmentation-models-pytorch maps names to classes); adding an
architecture is one builder plus :func:`register_architecture`. Every network returns logits
``(B, C, H, W)``, ``C`` the channels of the head (:mod:`pipeline.method.heads`):

- ``unet`` — the plain U-Net of Ronneberger et al. (2015): conv–BN–ReLU blocks, ``depth``
  downsamplings by 2×2 max pooling, ``width`` channels at the first level doubling at each
  level, upsampling by transposed convolution, bilinear or nearest interpolation (the
  interpolating variants follow with a 1×1 convolution that halves the channels). Convolutions
  are zero-padded ("same") so that the output has the input's size; the input size must be a
  multiple of :func:`model_stride` (the data set and the Predictor pad to it).
- ``smp`` — ``segmentation_models_pytorch.Unet`` with any encoder smp offers. Encoder
  weights are never downloaded: the network is built with ``encoder_weights=None`` and a local
  state-dict file is loaded into the encoder when ``encoder_weights`` names one.

Default smp encoder: ``resnet34`` (``model.encoder`` of params.yaml). Plain dense 3×3
convolutions run near peak speed under cuDNN, mixed precision, ``channels_last`` and
``torch.compile``, whereas the depthwise convolutions of EfficientNet / MobileNet encoders have
fewer FLOPs but lower throughput per FLOP and more activation memory, and they train less
robustly from scratch, which is the default here (no download). The smp U-Net decoder at full
resolution costs about as much as a ResNet-18 encoder, so ResNet-34's deeper encoder adds little
compute — the usual accuracy/compute sweet spot for U-Net encoders, and the encoder class of the
strong DSB2018 solutions. ``benchmarks/bench_models.py`` prints parameters, GFLOPs and training
throughput of the candidates.

Must not: read or write model directories (:mod:`pipeline.model.model_dir`), know what the output
channels mean (:mod:`pipeline.method.heads`), or keep defaults of the ``model`` section
(:class:`pipeline.config.params.ModelConfig`). Imports torch: import it lazily from stages that do not
need it.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from pipeline.config.params import ModelConfig
from pipeline.errors import NucleiError
from pipeline.method.heads import get_head

#: Input channels of every network (RGB).
IN_CHANNELS = 3
#: Downsamplings of the smp encoders (smp's default ``encoder_depth``).
SMP_ENCODER_DEPTH = 5


# --------------------------------------------------------------------------- plain U-Net


class ConvBlock(nn.Sequential):
    """Two 3×3 convolution – batch norm – ReLU layers, ``(B, c_in, H, W) -> (B, c_out, H, W)``."""

    def __init__(self, c_in: int, c_out: int):
        super().__init__(
            nn.Conv2d(c_in, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
            nn.Conv2d(c_out, c_out, 3, padding=1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(inplace=True),
        )


class Up(nn.Module):
    """Upsample by 2 and halve the channels: ``(B, c, H, W) -> (B, c // 2, 2H, 2W)``."""

    def __init__(self, c_in: int, mode: str):
        super().__init__()
        c_out = c_in // 2
        if mode == "transpose":
            self.up = nn.ConvTranspose2d(c_in, c_out, kernel_size=2, stride=2)
        else:
            align = dict(align_corners=False) if mode == "bilinear" else {}
            self.up = nn.Sequential(
                nn.Upsample(scale_factor=2, mode=mode, **align), nn.Conv2d(c_in, c_out, 1)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.up(x)


class UNet(nn.Module):
    """Plain U-Net; ``(B, in_channels, H, W) -> logits (B, out_channels, H, W)``.

    ``H`` and ``W`` must be multiples of ``2 ** depth``.

    Parameters
    ----------
    in_channels, out_channels : int
        Input image channels and output classes.
    depth : int
        Number of 2× downsamplings (levels below the first), ≥ 1.
    width : int
        Channels of the first level; level ``i`` has ``width * 2**i``.
    upsampling : {'transpose', 'bilinear', 'nearest'}
        How the decoder upsamples.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        depth: int = 4,
        width: int = 16,
        upsampling: str = "transpose",
    ):
        super().__init__()
        self.depth = depth
        chans = [width * 2**i for i in range(depth + 1)]
        self.down = nn.ModuleList(
            [ConvBlock(in_channels, chans[0])] + [ConvBlock(chans[i], chans[i + 1]) for i in range(depth)]
        )
        self.up = nn.ModuleList([Up(chans[i + 1], upsampling) for i in reversed(range(depth))])
        self.dec = nn.ModuleList([ConvBlock(2 * chans[i], chans[i]) for i in reversed(range(depth))])
        self.head = nn.Conv2d(chans[0], out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            if i:
                x = F.max_pool2d(x, 2)
            x = block(x)
            skips.append(x)
        skips.pop()
        for up, dec in zip(self.up, self.dec, strict=True):
            x = dec(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


# --------------------------------------------------------------------------- registry

#: ``model.arch`` name → builder ``(ModelConfig, output channels) -> nn.Module``.
ARCHITECTURES: dict[str, Callable[[ModelConfig, int], nn.Module]] = {}
#: ``model.arch`` name → the factor input sides must be multiples of.
STRIDES: dict[str, Callable[[ModelConfig], int]] = {}


def register_architecture(name: str, stride: Callable[[ModelConfig], int]):
    """Decorator: register a builder under ``name`` with its stride rule."""

    def decorate(builder):
        ARCHITECTURES[name], STRIDES[name] = builder, stride
        return builder

    return decorate


@register_architecture("unet", stride=lambda cfg: 2**cfg.depth)
def _build_unet(cfg: ModelConfig, channels: int) -> nn.Module:
    return UNet(IN_CHANNELS, channels, cfg.depth, cfg.width, cfg.upsampling)


@register_architecture("smp", stride=lambda cfg: 2**SMP_ENCODER_DEPTH)
def _build_smp(cfg: ModelConfig, channels: int) -> nn.Module:
    import segmentation_models_pytorch as smp

    if cfg.encoder not in smp.encoders.get_encoder_names():
        raise NucleiError(f"model.encoder: {cfg.encoder!r} is not an encoder of segmentation_models_pytorch")
    model = smp.Unet(
        encoder_name=cfg.encoder,
        encoder_weights=None,  # never download; local weights are loaded below
        encoder_depth=SMP_ENCODER_DEPTH,
        in_channels=IN_CHANNELS,
        classes=channels,
    )
    if cfg.encoder_weights:
        load_encoder_weights(model.encoder, cfg.encoder_weights)
    return model


def _model_config(cfg: ModelConfig | Mapping) -> ModelConfig:
    """``cfg`` checked (a mapping by :class:`ModelConfig`) and its ``arch`` known."""
    if not isinstance(cfg, ModelConfig):
        cfg = ModelConfig.from_dict(cfg)
    if cfg.arch not in ARCHITECTURES:
        raise NucleiError(f"model.arch: {cfg.arch!r} is not one of {', '.join(ARCHITECTURES)}")
    return cfg


def build_model(cfg: ModelConfig | Mapping) -> nn.Module:
    """Build a segmentation network from the ``model`` section of ``params.yaml``.

    Parameters
    ----------
    cfg : ModelConfig or mapping
        ``arch`` (a name of :data:`ARCHITECTURES`), ``head`` (a name of
        :data:`pipeline.method.heads.HEADS`); for 'unet' ``depth``, ``width``, ``upsampling``; for 'smp'
        ``encoder`` (any smp encoder name), ``encoder_weights`` (None or the path of a local
        state-dict file for the encoder). A mapping is checked by :class:`ModelConfig`, whose
        defaults fill missing keys.

    Returns
    -------
    model : torch.nn.Module
        In training mode, float32, on the CPU; ``forward`` maps ``(B, 3, H, W)`` to logits
        ``(B, C, H, W)`` with ``H, W`` multiples of :func:`model_stride`.

    Raises
    ------
    NucleiError
        An unknown architecture, head, upsampling or encoder, or an encoder weights file that
        is missing or does not fit the encoder.
    """
    cfg = _model_config(cfg)
    return ARCHITECTURES[cfg.arch](cfg, get_head(cfg.head).channels)


def model_stride(cfg: ModelConfig | Mapping) -> int:
    """Return the factor that input height and width must be multiples of.

    ``2 ** depth`` for the plain U-Net, ``2 ** 5`` (32) for smp.
    """
    cfg = _model_config(cfg)
    return STRIDES[cfg.arch](cfg)


def load_encoder_weights(encoder: nn.Module, path: str | Path) -> None:
    """Load a local state-dict file into an smp encoder, strictly.

    The file may hold the state dict itself or a dict with it under ``state_dict`` or
    ``model``; an ``encoder.`` or ``module.`` prefix of the keys is removed (a torchvision
    ResNet file works: smp drops its ``fc`` keys).

    Raises
    ------
    NucleiError
        The file is missing, unreadable, or its tensors do not match the encoder.
    """
    path = Path(path)
    if not path.is_file():
        raise NucleiError(f"{path}: encoder weights file not found")
    state = read_tensors(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise NucleiError(f"{path}: not a state dict (found {type(state).__name__})")
    for prefix in ("module.", "encoder."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_strict(encoder, state, path, what="encoder weights")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """An inference copy of ``model`` with batch norm folded into the convolution before it.

    Every ``Conv2d`` directly followed by a ``BatchNorm2d`` in an ``nn.Sequential`` (each
    conv–BN–ReLU layer of the plain U-Net, the decoder blocks of smp) becomes one convolution
    with the normalisation's scale and shift in its weights and bias, and the batch norm an
    ``nn.Identity``: the same outputs (to float rounding, ~1e-7) with one pass less over every
    activation map, 18 % less network time on a CPU (docs/decisions.md). ``model`` itself is
    not changed; the copy is in eval mode, for inference only (its batch norms no longer learn).
    """
    import copy

    from torch.nn.utils.fusion import fuse_conv_bn_eval

    fused = copy.deepcopy(unwrap_model(model)).eval()
    for module in fused.modules():
        if not isinstance(module, nn.Sequential):
            continue
        for i in range(len(module) - 1):
            if isinstance(module[i], nn.Conv2d) and isinstance(module[i + 1], nn.BatchNorm2d):
                module[i] = fuse_conv_bn_eval(module[i], module[i + 1])
                module[i + 1] = nn.Identity()
    return fused


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``DistributedDataParallel`` / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def read_tensors(file: Path, data: bytes | None = None):
    """``torch.load`` (tensors only, on the CPU) with a one-line NucleiError on failure."""
    try:
        source = io.BytesIO(data) if data is not None else file
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a damaged file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise NucleiError(f"{file}: corrupt or truncated weights file ({first})") from None


def load_state_strict(module: nn.Module, state: dict, file: Path, what: str) -> None:
    """``load_state_dict(strict=True)`` that reports problems in one line naming ``file``."""
    try:
        module.load_state_dict(state, strict=True)
        return
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
    own = module.state_dict()
    problems = []
    for label, items in (
        ("missing keys", [k for k in own if k not in state]),
        ("unexpected keys", [k for k in state if k not in own]),
        (
            "wrong shapes",
            [
                f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}"
                for k, v in own.items()
                if k in state and state[k].shape != v.shape
            ],
        ),
    ):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            problems.append(f"{label}: {', '.join(items[:3])}{more}")
    raise NucleiError(f"{file}: {what} do not fit the model; {'; '.join(problems) or first}")
