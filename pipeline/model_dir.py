"""Model directories on disk: ``config.yaml`` + ``weights.pt`` (``models/default/``,
``models/trained/model/``).

``config.yaml`` holds ``format_version``, ``model`` (the :class:`pipeline.config.ModelConfig`
section as a mapping), ``postprocess`` (watershed thresholds), ``normalization``, ``diameter``
(and, optionally, ``stained_diameter`` and a fine-tuned model's ``user_diameter``: see
:meth:`pipeline.segmenter.Segmenter.scale_for`),
``training`` (free-form provenance) and ``weights_sha256``; ``weights.pt`` the state dict (half
precision allowed). :func:`save_model_dir` writes both atomically, :func:`load_model_dir` checks
and reads them. A model directory travels (it ships in git), so what it records holds no
absolute path of the machine that wrote it: :func:`portable_paths` rewrites them relative to the
repository.

Must not: define networks (:mod:`pipeline.networks`) or read params.yaml.
"""

from __future__ import annotations

import hashlib
import io
import os
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
import yaml
from torch import nn

from pipeline.config import ROOT, ModelConfig
from pipeline.errors import NucleiError
from pipeline.io import atomic_path
from pipeline.networks import build_model, load_state_strict, read_tensors, unwrap_model

#: Version of the model-directory layout written by :func:`save_model_dir`.
FORMAT_VERSION = 1
CONFIG_NAME = "config.yaml"
WEIGHTS_NAME = "weights.pt"
_HALF_MAX = torch.finfo(torch.float16).max


def available_model_dir() -> Path | None:
    """The shipped model ``models/default``, else the last ``nuclei train`` output
    ``models/trained/model``; None when neither has a ``config.yaml``."""
    for candidate in (ROOT / "models" / "default", ROOT / "models" / "trained" / "model"):
        if (candidate / "config.yaml").is_file():
            return candidate
    return None


def canonical_diameter(config: dict, image_type: str | None = None) -> float | None:
    """The nucleus diameter (px) a model directory's ``config`` resizes images of ``image_type`` to:
    ``stained_diameter`` for stained images (``'histology'``) when set, else ``diameter`` (None: no
    rescaling). Unvalidated: :class:`pipeline.segmenter.Segmenter` checks both values."""
    from pipeline.image_types import HISTOLOGY

    stained = config.get("stained_diameter") if image_type == HISTOLOGY else None
    return stained or config.get("diameter")


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
        here; ``model.encoder_weights`` is cleared (the full state dict is saved); absolute
        paths anywhere in it are written relative to the repository (:func:`portable_paths`).
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
        tmp.write_text(yaml.safe_dump(portable_paths(_plain(config)), sort_keys=False))
    return path


def portable_paths(obj: Any, root: str | Path = ROOT) -> Any:
    """``obj`` with every string that is an absolute path rewritten relative to ``root``.

    Parameters
    ----------
    obj : mapping, list or scalar
        Plain YAML data (e.g. the ``training`` provenance of a model directory).
    root : str or Path
        The repository the paths are made relative to (default: this checkout): a path inside it
        becomes repository-relative (``models/default``), one beside it keeps the way there
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
    state = read_tensors(file, data)
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise NucleiError(f"{file}: not a state dict of tensors")
    model_cfg = ModelConfig.from_dict({**config["model"], "encoder_weights": None}, path / CONFIG_NAME)
    try:
        model = build_model(model_cfg)
    except NucleiError as exc:
        raise NucleiError(f"{path / CONFIG_NAME}: {exc}") from None
    state = {k: v.float() if v.is_floating_point() else v for k, v in state.items()}
    load_state_strict(model, state, file, what="weights")
    if str(device) == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return model.to(device).eval(), config


