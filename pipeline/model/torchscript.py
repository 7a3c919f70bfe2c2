"""The network as a TorchScript file (``nuclei export-model``'s ``torchscript`` format, and the
bioimage.io package's first weights).

The network is :func:`pipeline.model.backends.probability_network`'s (its head's activation
included): float32 ``(B, 3, H, W)`` in, probabilities ``(B, C, H, W)`` out, traced by
``torch.jit.trace`` without baking in a shape (height and width multiples of the stride).

Must not: describe the export (:mod:`pipeline.model.export_docs`) or check it against PyTorch
(:mod:`pipeline.model.interchange`).
"""

from __future__ import annotations

import io
import json
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.files.io import atomic_path
from pipeline.model.backends import trace_input
from pipeline.model.export_docs import DESCRIPTION_FILE

#: The TorchScript file inside an export folder.
TORCHSCRIPT_FILE = "model.torchscript.pt"


def torchscript_module(network: nn.Module, stride: int) -> torch.jit.ScriptModule:
    """``network`` traced by ``torch.jit.trace`` (shapes are not baked in: plain convolutions,
    pooling and concatenations)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the head's shape check seen by the tracer
        with torch.no_grad():
            return torch.jit.trace(network, trace_input(stride), check_trace=False)


def save_torchscript(module: torch.jit.ScriptModule, path: Path, description: dict[str, Any]) -> None:
    """Write ``module`` to ``path`` atomically, with ``description`` as its extra file ``model.json``
    (``torch.jit.load(..., _extra_files={"model.json": ""})`` reads it back)."""
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; bioimage.io and Fiji read it
        torch.jit.save(module, buffer, _extra_files={DESCRIPTION_FILE: json.dumps(description)})
    with atomic_path(path) as tmp:
        tmp.write_bytes(buffer.getvalue())
