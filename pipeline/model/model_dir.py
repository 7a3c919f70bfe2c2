"""Model directories on disk: ``config.yaml`` + ``weights.pt`` (``pipeline/shipped/model/``,
``models/trained/model/``).

``config.yaml`` is a :class:`pipeline.config.model_folder.ModelDirConfig` (the architecture, the
watershed thresholds, the normalisation, the nucleus diameters, the training provenance and
``weights_sha256``); ``weights.pt`` the state dict (half precision allowed). :func:`save_model_dir`
writes both atomically, :func:`load_model_dir` checks and reads them. A model directory travels (it
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

import torch
import yaml
from torch import nn

from pipeline.config.model_folder import (
    CONFIG_NAME,
    FORMAT_VERSION,
    ModelDirConfig,
    as_model_dir_config,
    read_model_config,
)
from pipeline.config.params import ROOT
from pipeline.errors import NucleiError
from pipeline.files.io import atomic_path
from pipeline.model.networks import build_model, load_state_strict, read_tensors, unwrap_model
from pipeline.shipped import DEFAULT_MODEL, model_folder

WEIGHTS_NAME = "weights.pt"
_HALF_MAX = torch.finfo(torch.float16).max


def available_model_dir() -> Path | None:
    """The shipped model (:func:`pipeline.shipped.model_folder` of ``'default'``), else the last
    ``nuclei train`` output ``models/trained/model`` of a checkout; None when neither has a
    ``config.yaml``."""
    for candidate in (model_folder(DEFAULT_MODEL), ROOT / "models" / "trained" / "model"):
        if (candidate / CONFIG_NAME).is_file():
            return candidate
    return None


def save_model_dir(path: str | Path, model: nn.Module, config: ModelDirConfig | Mapping, half: bool = True) -> Path:
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
        (:func:`portable_paths`).
    half : bool
        Store floating-point tensors as float16 (half the size; loaded back as float32);
        a tensor with values beyond the float16 range stays float32.

    Returns
    -------
    path : Path
    """
    path = Path(path)
    config = as_model_dir_config(config, path / CONFIG_NAME)
    state = {k: _storage(v, half) for k, v in unwrap_model(model).state_dict().items()}
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    config = config.replace(format_version=FORMAT_VERSION, weights_sha256=hashlib.sha256(data).hexdigest())
    path.mkdir(parents=True, exist_ok=True)
    with atomic_path(path / WEIGHTS_NAME) as tmp:
        tmp.write_bytes(data)
    with atomic_path(path / CONFIG_NAME) as tmp:
        tmp.write_text(yaml.safe_dump(portable_paths(_plain(config.to_dict())), sort_keys=False))
    return path


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
        Naming the file: folder or file missing, unreadable or truncated file, an invalid
        ``config.yaml`` (unsupported ``format_version``, no ``model`` section, a bad value),
        weights that do not match the checksum or the architecture (missing / unexpected keys,
        wrong shapes).
    """
    path = model_folder(path)
    config = read_model_config(path)
    file = path / WEIGHTS_NAME
    if not file.is_file():
        raise NucleiError(f"{file}: missing")
    data = file.read_bytes()
    expected = config.weights_sha256
    if expected and hashlib.sha256(data).hexdigest() != expected:
        raise NucleiError(
            f"{file}: contents do not match the checksum in {CONFIG_NAME} (truncated or replaced)"
        )
    state = read_tensors(file, data)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NucleiError(f"{file}: not a state dict of tensors")
    try:
        model = build_model(config.model)
    except NucleiError as exc:
        raise NucleiError(f"{path / CONFIG_NAME}: {exc}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_strict(model, state, file, what="weights")
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), config
