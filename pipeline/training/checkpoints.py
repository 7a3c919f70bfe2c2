"""Training state on disk: checkpoints, random generator states, dvclive tables, folder swaps.

- :func:`save_checkpoint` / :func:`load_checkpoint`: ``last.ckpt``, written atomically, read
  with ``torch.load(weights_only=True)`` (tensors and plain data only);
- :func:`seed_everything`, :func:`rng_state`, :func:`set_rng_state`: the global generators, in a
  form a checkpoint holds, so that a resumed run continues bit-identically;
- :func:`truncate_plots`: drop dvclive rows of epochs a checkpoint does not hold;
- :func:`replace_dir`: swap a fully written folder into place.

Must not: build models, data or optimisers (:mod:`pipeline.training.trainer`), or read params.yaml.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.errors import NucleiError, OutputError, one_line

CHECKPOINT_NAME = "last.ckpt"


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global state is what we restore
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global random generator states, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a different number of GPUs
            torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (a full disk: one-line :class:`OutputError`)."""
    from pipeline.files.io import atomic_path

    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except RuntimeError as exc:  # torch reports write failures as RuntimeError ("iostream error")
        raise OutputError(f"{path}: cannot write the checkpoint ({one_line(exc)})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only).

    Raises
    ------
    NucleiError
        Unreadable or truncated file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise NucleiError(f"{path}: unreadable checkpoint ({one_line(exc)})") from None


def truncate_plots(folder: str | Path, steps: int) -> None:
    """Keep the first ``steps`` steps (rows with ``step < steps``) of dvclive's metric tables.

    An interrupted run may have logged an epoch that its checkpoint does not hold; the resumed
    run logs that epoch again.
    """
    import pandas as pd

    from pipeline.files.io import atomic_path

    for tsv in Path(folder).rglob("*.tsv"):
        table = pd.read_csv(tsv, sep="\t")
        if "step" in table and (table["step"] >= steps).any():
            with atomic_path(tsv) as tmp:
                table[table["step"] < steps].to_csv(tmp, sep="\t", index=False)


def replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder ``tmp`` into place as ``final``."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
