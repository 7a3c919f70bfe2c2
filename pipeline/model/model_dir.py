"""Model directories on disk: ``config.yaml`` + ``weights.pt`` (``pipeline/shipped/model/``,
``models/trained/model/``).

``config.yaml`` is a :class:`pipeline.config.model_folder.ModelDirConfig` (the architecture, the
watershed thresholds, the normalisation, the nucleus diameters, the training provenance and
``weights_sha256``); ``weights.pt`` the state dict, stored as float32, float16 or int8
(:data:`STORAGES`; an int8 tensor carries its scales beside it, :func:`quantise`). :func:`save_model_dir`
writes both atomically, :func:`load_model_dir` checks and reads them. :func:`read_model_dir` is the
one validator of a folder (``segment``, ``finetune`` and every loader go through it): the schema of
``config.yaml``, the size of ``weights.pt`` (at most :data:`WEIGHTS_MAX_BYTES`, refused unread),
its checksum, and the architecture ``config.yaml`` asks for against the tensors ``weights.pt``
holds and against the memory left, on a network built on torch's ``meta`` device (no memory)
before any real network is allocated. A model directory travels (it
ships in git), so what it records holds no absolute path of the machine that wrote it:
:func:`portable_paths` rewrites them relative to the repository.

Must not: define networks (:mod:`pipeline.model.networks`), read params.yaml, or check or
interpret ``config.yaml`` (:mod:`pipeline.config.model_folder`: its schema, its reader
:func:`~pipeline.config.model_folder.read_model_config` and the diameter rule
:meth:`~pipeline.config.model_folder.ModelDirConfig.diameter_for`).
"""

from __future__ import annotations

import hashlib
import io
import os
from collections.abc import Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import numpy as np
import torch
import yaml
from torch import nn

from pipeline.config.model_folder import (
    CONFIG_NAME,
    FORMAT_VERSION,
    ModelDirConfig,
    as_model_dir_config,
    byte_size,
    read_model_config,
)
from pipeline.config.params import ROOT
from pipeline.errors import NucleiError
from pipeline.files.io import atomic_path
from pipeline.model import networks, runtime
from pipeline.model.networks import build_model, load_state_strict, read_tensors, unwrap_model
from pipeline.shipped import DEFAULT_MODEL, model_folder

WEIGHTS_NAME = "weights.pt"
#: Largest ``weights.pt`` read (bytes): the largest smp encoder stored in float16 is 1.7 GB, the
#: shipped model 16 MB. A larger file (or a sparse one claiming to be) is refused unread.
WEIGHTS_MAX_BYTES = 2_000_000_000
#: Memory that loading takes per parameter (bytes): the file, its float16 tensors, their float32
#: copies and the float32 network.
LOAD_BYTES_PER_PARAMETER = 12
_HALF_MAX = torch.finfo(torch.float16).max
#: How ``weights.pt`` stores floating-point tensors: ``float16`` (the default: half the size of
#: float32) or ``int8`` (float16, but each tensor of at least :data:`INT8_MIN_ELEMENTS` weights
#: rounded to 255 levels per output channel, :func:`quantise`).
STORAGES = ("float32", "float16", "int8")
#: The smallest tensor ``int8`` storage quantises: the deepest layers of a wide U-Net (most of its
#: size). Quantised too, the middle layers (192–384 channels) multiply the error of the
#: probabilities tenfold; these alone add none to float16's (docs/decisions.md).
INT8_MIN_ELEMENTS = 2**20
#: The key suffix of an int8 tensor's scales in ``weights.pt`` (``down.0.0.weight:scale``): no
#: module's parameter name holds a ``:``.
SCALE_SUFFIX = ":scale"


def available_model_dir() -> Path | None:
    """The shipped model (:func:`pipeline.shipped.model_folder` of ``'default'``), else the last
    ``nuclei train`` output ``models/trained/model`` of a checkout; None when neither has a
    ``config.yaml``."""
    for candidate in (model_folder(DEFAULT_MODEL), ROOT / "models" / "trained" / "model"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return None


def save_model_dir(path: str | Path, model: nn.Module, config: ModelDirConfig | Mapping,
                   storage: str = "float16", int8_min_elements: int = INT8_MIN_ELEMENTS) -> Path:
    """Write a model directory: ``weights.pt`` then ``config.yaml``, each atomically.

    Parameters
    ----------
    path : str or Path
        The folder (created).
    model : torch.nn.Module
        Built by :func:`build_model` with ``config.model`` (DDP / compiled wrappers are
        unwrapped).
    config : ModelDirConfig
        What ``config.yaml`` records (a mapping is checked into one first, naming
        ``<path>/config.yaml``). ``format_version`` and ``weights_sha256`` are set here;
        absolute paths anywhere in it are written relative to the repository
        (:func:`portable_paths`). An ``int8_network`` is dropped: it was made from other weights.
        A network holding NaN or infinite weights is refused, nothing written (:func:`check_finite`).
    storage : {'float16', 'int8', 'float32'}
        How floating-point tensors are stored (:data:`STORAGES`); all are loaded back as
        float32. A tensor with values beyond the float16 range stays float32.
    int8_min_elements : int
        With ``int8``, the smallest tensor quantised (:data:`INT8_MIN_ELEMENTS`).

    Returns
    -------
    path : Path
    """
    path = Path(path)
    config = as_model_dir_config(config, path / CONFIG_NAME)
    if storage not in STORAGES:
        raise NucleiError(f"weights storage {storage!r}: expected one of {', '.join(STORAGES)}")
    check_finite(unwrap_model(model).state_dict(), f"{path / WEIGHTS_NAME}: not written")
    state = {}
    for key, tensor in unwrap_model(model).state_dict().items():
        state.update(_stored(key, tensor, storage, int8_min_elements))
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    config = config.replace(format_version=FORMAT_VERSION, weights_sha256=hashlib.sha256(data).hexdigest(),
                            int8_network=None)
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS_NAME) as tmp:
        tmp.write_bytes(data)
    write_model_config(path, config)
    return path


def write_model_config(path: str | Path, config: ModelDirConfig) -> Path:
    """Write ``<path>/config.yaml`` atomically (paths made portable: :func:`portable_paths`); returns the file."""
    with atomic_path(Path(path) / CONFIG_NAME) as tmp:
        tmp.write_text(yaml.safe_dump(portable_paths(_plain(config.to_dict())), sort_keys=False))
    return Path(path) / CONFIG_NAME


def portable_paths(obj: Any, root: str | Path = ROOT) -> Any:
    """``obj`` with every string that is an absolute path rewritten relative to ``root``.

    Parameters
    ----------
    obj : mapping, list or scalar
        Plain YAML data (e.g. the ``training`` provenance of a model directory).
    root : str or Path
        The repository the paths are made relative to (default: this checkout): a path inside it
        becomes repository-relative (``pipeline/shipped/model``), one beside it keeps the way there
        (``../shared/dsb2018/stage1_train``), with ``/`` separators on every system. A path that
        cannot be made relative (another Windows drive, another system's path) is reduced to its
        last component.

    Returns
    -------
    The same structure; other values are unchanged.
    """
    if isinstance(obj, dict):
        return {k: portable_paths(v, root) for k, v in obj.items()}
    if isinstance(obj, list):
        return [portable_paths(v, root) for v in obj]
    if not isinstance(obj, str) or "\n" in obj:
        return obj
    if Path(obj).is_absolute():
        try:
            return Path(os.path.relpath(obj, root)).as_posix()
        except ValueError:  # another Windows drive: no relative path exists
            return PureWindowsPath(obj).name
    if PurePosixPath(obj).is_absolute() or PureWindowsPath(obj).is_absolute():
        return PureWindowsPath(obj).name  # another system's absolute path: keep only its name
    return obj


def _stored(key: str, tensor: torch.Tensor, storage: str, int8_min_elements: int) -> dict[str, torch.Tensor]:
    """The entries of ``weights.pt`` for one tensor (a CPU copy): int8 with its scales
    (``key:scale``) for a weight of two or more dimensions and ``int8_min_elements`` elements,
    float16 when asked and every value fits, else the tensor unchanged."""
    tensor = tensor.detach().cpu()
    if not tensor.is_floating_point() or storage == "float32" or tensor.numel() == 0:
        return {key: tensor}
    if storage == "int8" and tensor.ndim >= 2 and tensor.numel() >= int8_min_elements:
        q, scale = quantise(tensor)
        return {key: q, key + SCALE_SUFFIX: scale}
    return {key: tensor.half() if bool(tensor.abs().max() <= _HALF_MAX) else tensor}


def quantise(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 quantisation per output channel (the first dimension).

    Parameters
    ----------
    weight : torch.Tensor
        Floating point, shape (C, ...) with at least two dimensions.

    Returns
    -------
    q : torch.Tensor
        int8, the shape of ``weight``, in [-127, 127].
    scale : torch.Tensor
        float32, shape (C,): ``weight ≈ q * scale`` along the first dimension; the largest
        magnitude of each channel over 127 (1 for a channel of zeros). The error of each weight
        is at most half its channel's scale.
    """
    w = weight.detach().float()
    scale = w.abs().reshape(len(w), -1).amax(dim=1) / 127.0
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    q = torch.round(w / _per_channel(scale, w.ndim)).clamp_(-127, 127).to(torch.int8)
    return q, scale


def _per_channel(scale: torch.Tensor, ndim: int) -> torch.Tensor:
    """``scale`` of shape (C,) as float32 of shape (C, 1, ...) with ``ndim`` dimensions, to
    broadcast over a weight's first dimension."""
    return scale.float().reshape((-1,) + (1,) * (ndim - 1))


def dequantised(state: dict[str, torch.Tensor], file: Path) -> dict[str, torch.Tensor]:
    """``state`` with each int8 tensor that has scales (``key:scale``, :func:`quantise`) restored as
    float32 and the scales removed; a state without scales is returned as it is.

    Raises
    ------
    NucleiError
        Naming ``file``: scales without their tensor, or not of its dtype or shape.
    """
    scales = {k[: -len(SCALE_SUFFIX)]: v for k, v in state.items() if k.endswith(SCALE_SUFFIX)}
    if not scales:
        return state
    out = {k: v for k, v in state.items() if not k.endswith(SCALE_SUFFIX)}
    for key, scale in scales.items():
        q = out.get(key)
        if q is None or q.dtype != torch.int8 or q.ndim < 2 or tuple(scale.shape) != (len(q),):
            found = "missing" if q is None else f"{q.dtype} {tuple(q.shape)}"
            raise NucleiError(f"{file}: {key}{SCALE_SUFFIX} {tuple(scale.shape)} does not scale {key} ({found})")
        out[key] = q.float() * _per_channel(scale, q.ndim)
    return out


def check_finite(state: Mapping[str, torch.Tensor], what: str) -> None:
    """Raise NucleiError (``<what>: the network holds non-finite weights (NaN or infinite) in <key>, ...``)
    unless every floating-point tensor of ``state`` is finite: a network of NaN weights finds no nucleus
    and says nothing. One vectorised test per tensor: numpy's on the CPU (torch's float16 ops are slow
    there), about 20 ms for the shipped 7.8 M weights on a busy 2-core machine, 5 % of reading them."""
    bad = [k for k, v in state.items() if v.is_floating_point() and not _finite(v)]
    if bad:
        shown = ", ".join(bad[:3]) + (f" (+{len(bad) - 3} more)" if len(bad) > 3 else "")
        raise NucleiError(f"{what}: the network holds non-finite weights (NaN or infinite) in {shown}")


def _finite(tensor: torch.Tensor) -> bool:
    """Whether every value of a floating-point tensor is finite."""
    if tensor.device.type == "cpu" and tensor.dtype in (torch.float16, torch.float32, torch.float64):
        return bool(np.isfinite(tensor.detach().numpy()).all())
    return bool(torch.isfinite(tensor).all())


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


def read_model_dir(path: str | Path) -> tuple[ModelDirConfig, dict[str, torch.Tensor]]:
    """Check a model directory without building its network: the one validator of a model folder.

    Parameters
    ----------
    path : str or Path
        The folder as the user gave it (``'default'``: the shipped model); messages name it.

    Returns
    -------
    config : ModelDirConfig
        ``config.yaml``, checked (:func:`pipeline.config.model_folder.read_model_config`: types,
        ranges, its size).
    state : dict of str to torch.Tensor
        ``weights.pt`` on the CPU, float16 as stored, int8 tensors restored as float32
        (:func:`dequantised`).

    Raises
    ------
    NucleiError
        One line naming the file or the folder: everything :func:`read_model_config` refuses;
        ``weights.pt`` missing, larger than :data:`WEIGHTS_MAX_BYTES` (refused unread), corrupt,
        not matching the checksum, not a state dict, holding NaN or infinite weights
        (:func:`check_finite`); an architecture whose tensors are not those
        of ``weights.pt`` (``weights.pt holds depth 2, width 4``); a network that needs more
        memory than the machine has left (``too large for this machine``).
    """
    path = model_folder(path)
    config = read_model_config(path)
    file = path / WEIGHTS_NAME
    if not file.is_file():
        raise NucleiError(f"{file}: missing")
    size = file.stat().st_size
    if size > WEIGHTS_MAX_BYTES:
        raise NucleiError(f"{file}: {byte_size(size)}; a model's {WEIGHTS_NAME} is at most "
                          f"{byte_size(WEIGHTS_MAX_BYTES)} (not read: a wrong, damaged or sparse file?)")
    data = file.read_bytes()
    expected = config.weights_sha256
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise NucleiError(
            f"{file}: contents do not match the checksum in {CONFIG_NAME} (truncated or replaced)"
        )
    state = read_tensors(file, data)
    del data
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NucleiError(f"{file}: not a state dict of tensors")
    state = dequantised(state, file)
    check_finite(state, str(file))
    parameters = _check_architecture(path, config, state)
    need, left = LOAD_BYTES_PER_PARAMETER * parameters, runtime.available_memory()
    if left is not None and need > left:
        raise NucleiError(f"{path}: too large for this machine (a network of {parameters:,} parameters needs "
                          f"about {byte_size(need)} to load; {byte_size(left)} of memory left)")
    return config, state


def _check_architecture(path: Path, config: ModelDirConfig, state: dict[str, torch.Tensor]) -> int:
    """The parameters (and buffers) of ``config.model``'s network, built on the ``meta`` device (no
    memory), after checking that its tensors are those of ``state``. An architecture that cannot
    be built there (an encoder that computes with its tensors while it is built, such as smp's
    ``mit_b*``) is checked when it is loaded instead (:func:`load_model_dir`: strictly, within
    :func:`pipeline.model.runtime.memory_guard`), and counted by ``state``."""
    try:
        with torch.device("meta"):
            network = networks.build_model(config.model)
    except NucleiError as exc:
        raise NucleiError(f"{path / CONFIG_NAME}: {exc}") from None
    except Exception:  # noqa: BLE001 - not buildable without memory: checked when loaded
        return sum(v.numel() for v in state.values())
    own = {k: tuple(v.shape) for k, v in network.state_dict().items()}
    held = {k: tuple(v.shape) for k, v in state.items()}
    if own != held:
        differences = {
            "missing": [k for k in own if k not in held],
            "unexpected": [k for k in held if k not in own],
            f"other shapes ({WEIGHTS_NAME} vs asked)": [f"{k} {held[k]} vs {own[k]}" for k in own
                                                       if k in held and held[k] != own[k]],
        }
        problems = [f"{label}: {', '.join(keys[:2])}{f' (+{len(keys) - 2} more)' if len(keys) > 2 else ''}"
                    for label, keys in differences.items() if keys]
        model = config.model
        asked = f"arch {model.arch}, " + (f"depth {model.depth}, width {model.width}" if model.arch == "unet"
                                          else f"encoder {model.encoder}")
        holds = _unet_sizes(held) if config.model.arch == "unet" else None
        raise NucleiError(f"{path / CONFIG_NAME}: the model section ({asked}) does not fit {WEIGHTS_NAME}"
                          f"{f' ({WEIGHTS_NAME} holds {holds})' if holds else ''}: {'; '.join(problems)}")
    return sum(v.numel() for v in network.state_dict().values())


def _unet_sizes(shapes: dict[str, tuple]) -> str | None:
    """``depth D, width W`` of the plain U-Net whose tensors have ``shapes``, or None."""
    first = shapes.get("down.0.0.weight")
    blocks = {k.split(".")[1] for k in shapes if k.startswith("down.")}
    if not first or not all(b.isdigit() for b in blocks):
        return None
    return f"depth {len(blocks) - 1}, width {first[0]}"


def load_model_dir(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelDirConfig]:
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
    config : ModelDirConfig
        ``config.yaml``, checked (:func:`pipeline.config.model_folder.read_model_config`).

    Raises
    ------
    NucleiError
        Naming the file or the folder: everything :func:`read_model_dir` refuses (before any
        network is built), and running out of memory while building it or moving it to
        ``device`` (``<folder>: too large for this machine (asked for ...)``).
    """
    path = model_folder(path)
    config, state = read_model_dir(path)
    parameters = sum(v.numel() for v in state.values())
    with runtime.memory_guard(str(path), f"a network of {parameters:,} parameters"):
        model = build_model(config.model)
        state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
        load_state_strict(model, state, path / WEIGHTS_NAME, what="weights")
        if str(device) == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        return model.to(device).eval(), config
