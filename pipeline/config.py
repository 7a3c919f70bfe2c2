"""Reading ``params.yaml``: the one place where configuration is read."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from pipeline.errors import NucleiError

#: Repository root (the folder holding ``params.yaml``, ``models/``, ``data/``).
ROOT = Path(__file__).resolve().parents[1]
DEFAULT_PARAMS = Path("params.yaml")


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Read the pipeline parameters.

    Parameters
    ----------
    path : str or Path, optional
        A YAML file. Default: ``params.yaml`` in the working directory, else the one at the
        repository root.

    Returns
    -------
    params : dict
        The parsed file; top-level keys are the stage sections (``data``, ``targets``, ...).
    """
    if path is None:
        path = DEFAULT_PARAMS if DEFAULT_PARAMS.exists() else ROOT / DEFAULT_PARAMS
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise NucleiError(f"{path}: cannot read parameters ({exc.strerror or exc})") from None
    try:
        params = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise NucleiError(f"{path}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(params, dict):
        raise NucleiError(f"{path}: expected a mapping of stage sections")
    return params


def section(params: dict[str, Any], name: str, path: str | Path = "params.yaml") -> dict[str, Any]:
    """Return ``params[name]``, raising a clear error naming the file if it is missing."""
    value = params.get(name)
    if not isinstance(value, dict):
        raise NucleiError(f"{path}: missing section '{name}'")
    return value
