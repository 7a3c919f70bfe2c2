"""Segmentation networks, their padding rule, and the model directory on disk.

Two architectures, both returning logits ``(B, C, H, W)`` with ``C = 3`` for the softmax head
(mask − border, border, background) and ``C = 2`` for the sigmoid head (mask, border):

- ``arch: unet`` — the plain U-Net of Ronneberger et al. (2015): conv–BN–ReLU blocks, ``depth``
  downsamplings by 2×2 max pooling, ``width`` channels at the first level doubling at each
  level, upsampling by transposed convolution, bilinear or nearest interpolation (the
  interpolating variants follow with a 1×1 convolution that halves the channels). Convolutions
  are zero-padded ("same") so that the output has the input's size; the input size must be a
  multiple of :func:`model_stride` (use :func:`pad_to_stride`).
- ``arch: smp`` — ``segmentation_models_pytorch.Unet`` with any encoder smp offers. Encoder
  weights are never downloaded: the network is built with ``encoder_weights=None`` and a local
  state-dict file is loaded into the encoder when ``encoder_weights`` names one.

Default smp encoder: ``resnet34`` (:data:`DEFAULT_ENCODER`). Plain dense 3×3 convolutions run
near peak speed under cuDNN, mixed precision, ``channels_last`` and ``torch.compile``, whereas
the depthwise convolutions of EfficientNet / MobileNet encoders have fewer FLOPs but lower
throughput per FLOP and more activation memory (efficientnet-b0: 0.55× the FLOPs of resnet18
yet slower per training step on CPU), and they train less robustly from scratch, which is the
default here (no download). The smp U-Net decoder at full resolution costs about as much as a
ResNet-18 encoder, so ResNet-34's twice deeper encoder adds only 45 % compute (15.7 vs 10.8
GFLOPs per 256×256 image) — the usual accuracy/compute sweet spot for U-Net encoders, and the
encoder class of the strong DSB2018 solutions — while ResNet-50 adds another 36 % for a
bottleneck encoder that gains little at this data-set size. ``benchmarks/bench_models.py``
prints parameters, GFLOPs and training throughput of the candidates.

Torch is imported by this module; import it lazily from stages that do not need it.
"""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import yaml
from torch import nn

from pipeline.config import ROOT
from pipeline.errors import NucleiError
from pipeline.io import atomic_path

#: Output channels per head.
HEAD_CHANNELS = {"softmax": 3, "sigmoid": 2}
#: Upsampling modes of the plain U-Net.
UPSAMPLING = ("transpose", "bilinear", "nearest")
#: Architectures :func:`build_model` knows.
ARCHS = ("unet", "smp")
#: Encoder used for ``arch: smp`` when the configuration names none (see module docstring).
DEFAULT_ENCODER = "resnet34"
#: Version of the model-directory layout written by :func:`save_model_dir`.
FORMAT_VERSION = 1
CONFIG_NAME = "config.yaml"
_HALF_MAX = torch.finfo(torch.float16).max
WEIGHTS_NAME = "weights.pt"


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


# --------------------------------------------------------------------------- factory


def _check_choice(key: str, value: Any, choices) -> None:
    if value not in choices:
        raise NucleiError(f"model.{key}: {value!r} is not one of {', '.join(map(str, choices))}")


def _head_channels(head: str) -> int:
    _check_choice("head", head, tuple(HEAD_CHANNELS))
    return HEAD_CHANNELS[head]


def build_model(cfg: dict) -> nn.Module:
    """Build a segmentation network from the ``model`` section of ``params.yaml``.

    Parameters
    ----------
    cfg : dict
        ``arch`` ('unet' | 'smp'), ``head`` ('softmax' | 'sigmoid'); for 'unet' ``depth``,
        ``width``, ``upsampling``; for 'smp' ``encoder`` (any smp encoder name, default
        :data:`DEFAULT_ENCODER`), ``encoder_weights`` (None or the path of a local state-dict
        file for the encoder), optional ``encoder_depth`` (default 5). Optional
        ``in_channels`` (default 3). Other keys are ignored.

    Returns
    -------
    model : torch.nn.Module
        In training mode, float32, on the CPU; ``forward`` maps ``(B, in_channels, H, W)`` to
        logits ``(B, C, H, W)`` with ``H, W`` multiples of :func:`model_stride`.

    Raises
    ------
    NucleiError
        An unknown architecture, head, upsampling or encoder, or an encoder weights file that
        is missing or does not fit the encoder.
    """
    arch = cfg.get("arch", "unet")
    _check_choice("arch", arch, ARCHS)
    classes = _head_channels(cfg.get("head", "softmax"))
    in_channels = int(cfg.get("in_channels", 3))
    if arch == "unet":
        upsampling = cfg.get("upsampling", "transpose")
        _check_choice("upsampling", upsampling, UPSAMPLING)
        depth, width = int(cfg.get("depth", 4)), int(cfg.get("width", 16))
        if depth < 1 or width < 1:
            raise NucleiError(f"model: depth ({depth}) and width ({width}) must be ≥ 1")
        return UNet(in_channels, classes, depth, width, upsampling)

    import segmentation_models_pytorch as smp

    encoder = cfg.get("encoder") or DEFAULT_ENCODER
    if encoder not in smp.encoders.get_encoder_names():
        raise NucleiError(f"model.encoder: {encoder!r} is not an encoder of segmentation_models_pytorch")
    model = smp.Unet(
        encoder_name=encoder,
        encoder_weights=None,  # never download; local weights are loaded below
        encoder_depth=int(cfg.get("encoder_depth", 5)),
        in_channels=in_channels,
        classes=classes,
    )
    if cfg.get("encoder_weights"):
        load_encoder_weights(model.encoder, cfg["encoder_weights"])
    return model


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
    state = _torch_load(path)
    for key in ("state_dict", "model"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise NucleiError(f"{path}: not a state dict (found {type(state).__name__})")
    for prefix in ("module.", "encoder."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    _load_state_dict(encoder, state, path, what="encoder weights")


def model_stride(cfg: dict) -> int:
    """Return the factor that input height and width must be multiples of.

    ``2 ** depth`` for the plain U-Net, ``2 ** encoder_depth`` (32) for smp.
    """
    if cfg.get("arch", "unet") == "smp":
        return 2 ** int(cfg.get("encoder_depth", 5))
    return 2 ** int(cfg.get("depth", 4))


def pad_to_stride(x: torch.Tensor, stride: int) -> tuple[torch.Tensor, tuple]:
    """Mirror-pad the last two axes of ``x`` up to multiples of ``stride``.

    Parameters
    ----------
    x : torch.Tensor
        ``(..., H, W)``, e.g. an image batch ``(B, C, H, W)``, floating point.
    stride : int
        From :func:`model_stride`.

    Returns
    -------
    padded : torch.Tensor
        ``(..., H', W')`` with ``H' = ceil(H / stride) * stride`` (same for ``W``); the padding
        is split between both sides and reflects the image (repeatedly when it is wider than
        the image; a 1-pixel axis is replicated).
    crop : tuple
        Index that undoes the padding on any array whose last two axes are ``(H', W')``:
        ``out[crop]`` has shape ``(..., H, W)``.
    """
    h, w = x.shape[-2:]
    ph, pw = -h % stride, -w % stride
    top, left = ph // 2, pw // 2
    padded = _reflect_pad(x, left, pw - left, top, ph - top)
    return padded, (Ellipsis, slice(top, top + h), slice(left, left + w))


def _reflect_pad(x: torch.Tensor, left: int, right: int, top: int, bottom: int) -> torch.Tensor:
    """Reflect padding that also works when a pad is ≥ the axis size (repeated reflection)."""
    lead = x.shape[:-2]
    x = x.reshape(-1, 1, *x.shape[-2:]) if x.ndim != 4 else x
    while left or right or top or bottom:
        h, w = x.shape[-2:]
        mode = "reflect" if min(h, w) > 1 else "replicate"
        cap_w, cap_h = (w - 1, h - 1) if mode == "reflect" else (left + right, top + bottom)
        step = [min(left, cap_w), min(right, cap_w), min(top, cap_h), min(bottom, cap_h)]
        x = F.pad(x, step, mode=mode)
        left, right, top, bottom = (a - b for a, b in zip((left, right, top, bottom), step, strict=True))
    return x.reshape(*lead, *x.shape[-2:])


def logits_to_probs(logits: torch.Tensor, head: str) -> torch.Tensor:
    """Probabilities from logits ``(B, C, H, W)``: softmax over ``C`` or elementwise sigmoid."""
    _head_channels(head)
    if logits.shape[1] != HEAD_CHANNELS[head]:
        raise ValueError(f"{head} head expects {HEAD_CHANNELS[head]} channels, got {logits.shape[1]}")
    return torch.softmax(logits, dim=1) if head == "softmax" else torch.sigmoid(logits)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameters (elements) of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# --------------------------------------------------------------------------- model directory


def unwrap_model(model: nn.Module) -> nn.Module:
    """The plain module under ``DistributedDataParallel`` / ``torch.compile`` wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if not isinstance(inner, nn.Module):
            return model
        model = inner


def available_model_dir() -> Path | None:
    """The shipped model ``models/default``, else the last ``nuclei train`` output
    ``models/trained/model``; None when neither has a ``config.yaml``."""
    for candidate in (ROOT / "models" / "default", ROOT / "models" / "trained" / "model"):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def save_model_dir(path: str | Path, model: nn.Module, config: dict, half: bool = True) -> Path:
    """Write a model directory: ``weights.pt`` then ``config.yaml``, each atomically.

    Parameters
    ----------
    path : str or Path
        The folder (created).
    model : torch.nn.Module
        Built by :func:`build_model` with ``config['model']`` (DDP / compiled wrappers are
        unwrapped).
    config : dict
        Must hold ``model`` (the :func:`build_model` kwargs); usually also ``postprocess``,
        ``normalization`` and ``training``. ``format_version`` and ``weights_sha256`` are set
        here; ``model.encoder_weights`` is cleared (the full state dict is saved).
    half : bool
        Store floating-point tensors as float16 (half the size; loaded back as float32);
        a tensor with values beyond the float16 range stays float32.

    Returns
    -------
    path : Path
    """
    path = Path(path)
    if not isinstance(config.get("model"), dict):
        raise ValueError("config needs a 'model' section (the build_model kwargs)")
    state = {k: _storage(v, half) for k, v in unwrap_model(model).state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    config = {
        "format_version": FORMAT_VERSION,
        **{k: v for k, v in config.items() if k != "format_version"},
        "model": {**config["model"], "encoder_weights": None},
        "weights_sha256": hashlib.sha256(data).hexdigest(),
    }
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS_NAME) as tmp:
        tmp.write_bytes(data)
    with atomic_path(path / CONFIG_NAME) as tmp:
        tmp.write_text(yaml.safe_dump(_plain(config), sort_keys=False))
    return path


def _storage(tensor: torch.Tensor, half: bool) -> torch.Tensor:
    """A CPU copy for saving: float16 when asked and every value fits, else unchanged dtype."""
    tensor = tensor.detach().cpu()
    fits = tensor.numel() == 0 or bool(tensor.abs().max() <= _HALF_MAX)
    return tensor.half() if half and tensor.is_floating_point() and fits else tensor


def _plain(obj: Any) -> Any:
    """Convert paths, tuples and numpy / torch scalars and arrays to YAML-safe Python types."""
    if isinstance(obj, dict):
        return {str(k): _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):  # numpy / torch
        return obj.tolist()
    return obj


def read_model_config(path: str | Path) -> dict:
    """Read and validate ``config.yaml`` of a model directory (see :func:`load_model_dir`)."""
    path = Path(path)
    if not path.is_dir():
        raise NucleiError(f"{path}: model directory not found")
    file = path / CONFIG_NAME
    if not file.is_file():
        raise NucleiError(f"{file}: missing (not a model directory)")
    try:
        config = yaml.safe_load(file.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise NucleiError(f"{file}: unreadable ({first})") from None
    if not isinstance(config, dict):
        raise NucleiError(f"{file}: expected a mapping")
    if "format_version" not in config:
        raise NucleiError(f"{file}: no format_version")
    if config["format_version"] != FORMAT_VERSION:
        raise NucleiError(
            f"{file}: format_version {config['format_version']!r} is not supported "
            f"(this version reads {FORMAT_VERSION})"
        )
    if not isinstance(config.get("model"), dict):
        raise NucleiError(f"{file}: no 'model' section")
    return config


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, dict]:
    """Load a model directory written by :func:`save_model_dir`.

    Parameters
    ----------
    path : str or Path
        Folder with ``config.yaml`` and ``weights.pt``.
    device : str or torch.device
        'cpu', 'cuda', 'cuda:N' or 'auto' (CUDA when available).

    Returns
    -------
    model : torch.nn.Module
        float32, in eval mode, on ``device``.
    config : dict
        The parsed ``config.yaml``.

    Raises
    ------
    NucleiError
        Naming the file: folder or file missing, unreadable or truncated file, unsupported
        ``format_version``, no ``model`` section, weights that do not match the checksum or the
        architecture (missing / unexpected keys, wrong shapes).
    """
    path = Path(path)
    config = read_model_config(path)
    file = path / WEIGHTS_NAME
    if not file.is_file():
        raise NucleiError(f"{file}: missing")
    data = file.read_bytes()
    expected = config.get("weights_sha256")
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise NucleiError(
            f"{file}: contents do not match the checksum in {CONFIG_NAME} (truncated or replaced)"
        )
    state = _torch_load(file, data)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NucleiError(f"{file}: not a state dict of tensors")
    try:
        model = build_model({**config["model"], "encoder_weights": None})
    except NucleiError as exc:
        raise NucleiError(f"{path / CONFIG_NAME}: {exc}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    _load_state_dict(model, state, file, what="weights")
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), config


def _torch_load(file: Path, data: bytes | None = None):
    """``torch.load`` (tensors only, on the CPU) with a one-line NucleiError on failure."""
    try:
        source = io.BytesIO(data) if data is not None else file
        return torch.load(source, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch.load raises many types on a damaged file
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise NucleiError(f"{file}: corrupt or truncated weights file ({first})") from None


def _load_state_dict(module: nn.Module, state: dict, file: Path, what: str) -> None:
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
