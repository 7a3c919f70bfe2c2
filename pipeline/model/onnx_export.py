"""The network as an ONNX file (``nuclei export-model``'s ``onnx`` format, and the bioimage.io
package's second weights).

The ONNX model itself (opset :data:`pipeline.model.backends.ONNX_OPSET`, dynamic batch, height and
width) is :func:`pipeline.model.backends.onnx_bytes`, the one the ``onnxruntime`` and ``openvino``
backends run; the file adds the export's description as metadata.

Must not: describe the export (:mod:`pipeline.model.export_docs`) or check it against PyTorch
(:mod:`pipeline.model.interchange`).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

from pipeline.files.io import atomic_path

#: The ONNX file inside an export folder.
ONNX_FILE = "model.onnx"


def onnx_with_metadata(data: bytes, description: dict[str, Any]) -> bytes:
    """``data`` with the description as ONNX metadata (``nuclei``: the JSON) when ``onnx`` is installed."""
    if importlib.util.find_spec("onnx") is None:
        return data
    import onnx

    proto = onnx.load_from_string(data)
    proto.doc_string = "Nucleus segmentation U-Net: probabilities, not labels; see the metadata 'nuclei'."
    entry = proto.metadata_props.add()
    entry.key, entry.value = "nuclei", json.dumps(description)
    return proto.SerializeToString()


def write_onnx(path: Path, data: bytes) -> None:
    """Write the ONNX model ``data`` to ``path`` atomically."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
