"""What runs the network's forward pass: PyTorch, ONNX Runtime or OpenVINO (``backend`` of the
``predict`` and ``segment`` sections).

:class:`pipeline.model.predictor.Predictor` keeps the padding, tiling, test-time augmentation and
batching; only the call of the network changes. The ``onnxruntime`` and ``openvino`` backends run
the network with its head's activation (:class:`ProbabilityNetwork`), exported to ONNX in memory on
first use (:func:`onnx_bytes`, under a second for the shipped network; nothing is written to disk),
on the CPU in float32, on as many threads as torch uses (:class:`ExportedNetwork`). ``nuclei
export-model`` (:mod:`pipeline.model.interchange`) writes the same exports to files.

``auto`` is the fastest backend that holds the accuracy and is installed, on a CPU in float32:
:data:`AUTO_ORDER` (measured by ``benchmarks/bench_backends.py``, docs/benchmarks.md), else torch.
On a GPU ``auto`` is torch; on a CPU with AMX (torch in bf16) it is OpenVINO when installed, else
torch. A model folder with an int8 network (``int8_network``, :mod:`pipeline.model.quantise`) has
OpenVINO run it at precision ``auto`` on x86-64 (:func:`read_int8_network`) instead of exporting its
float network; ``fp32`` and ``bf16`` run the float one.

Must not: tile, augment or batch (the Predictor's), pick a device or a precision
(:mod:`pipeline.model.runtime`), or write files (:mod:`pipeline.model.interchange`).
"""

from __future__ import annotations

import functools
import importlib.util
import inspect
import io
import platform
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipeline.config.model_folder import CONFIG_NAME
from pipeline.config.params import BACKENDS
from pipeline.errors import NucleiError, one_line
from pipeline.method.heads import get_head
from pipeline.model.runtime import cpu_flags, resolve_precision

#: The backends ``auto`` tries, fastest first (CPU, fp32; ``benchmarks/bench_backends.py``).
AUTO_ORDER = ("openvino", "onnxruntime")
#: The packages each backend needs (ONNX export needs ``onnx``): the extras ``.[export]`` and ``.[openvino]``.
PACKAGES = {"torch": (), "onnxruntime": ("onnx", "onnxruntime"), "openvino": ("onnx", "openvino")}
EXTRAS = {"onnxruntime": "export", "openvino": "openvino"}
#: ONNX opset of the exports (17: what ONNX Runtime ≥ 1.14, OpenVINO ≥ 2023 and deepImageJ read).
ONNX_OPSET = 17
#: Names of the exported network's input and output.
INPUT_NAME, OUTPUT_NAME = "input", "probabilities"
#: CPU flags with which OpenVINO runs bf16 natively, about twice as fast as its fp32, and precision
#: 'auto' means bf16 for it: on grouped fold 0 of DSB2018 (133 images) bf16 scored 0.6870 against fp32's
#: 0.6878 (``benchmarks/bench_backends.py --bf16``; the margin allowed: 0.005). torch's bf16 without AMX
#: is slower than its fp32 (:data:`pipeline.model.runtime.FAST_BF16_FLAGS`).
OPENVINO_BF16_FLAGS = ("avx512_bf16", "amx_bf16")
#: OpenVINO's ``INFERENCE_PRECISION_HINT`` of each precision (its own default is bf16 where it can).
OPENVINO_HINTS = {"fp32": "f32", "bf16": "bf16"}
#: ``platform.machine()`` of the CPUs on which precision 'auto' runs a model folder's int8 network: x86-64,
#: where it was measured faster at the same score (AVX2, AVX2 with VNNI, AVX-512). Elsewhere (ARM: Apple
#: silicon) OpenVINO's int8 is unmeasured, and 'auto' keeps the float network.
INT8_MACHINES = ("x86_64", "amd64")
#: Where a model folder's int8 network (:mod:`pipeline.model.quantise`) records the sha-256 of the weights it was made from.
RT_SHA = ["nuclei", "weights_sha256"]


@functools.cache
def openvino_core():
    """The process's one ``openvino.Core``, kept until exit.

    OpenVINO's CPU plugin points the creating thread's alternate signal stack at its own memory
    and, when destroyed, restores the stack it found. Two plugins destroyed in the order they were
    made leave the thread on freed memory, and the next signal it takes (a child's SIGCHLD) is a
    segmentation fault. One Core, never destroyed, makes one plugin (tests/test_backends.py).
    """
    import openvino as ov

    return ov.Core()


def installed(backend: str) -> bool:
    """Whether the packages of ``backend`` can be imported."""
    for package in PACKAGES[backend]:
        try:
            if importlib.util.find_spec(package) is None:
                return False
        except (ImportError, ValueError):
            return False
    return True


def resolve_backend(backend: str, device, precision: str, int8: bool = False) -> tuple[str, str]:
    """The backend and the precision actually used.

    Parameters
    ----------
    backend : {'torch', 'onnxruntime', 'openvino', 'auto'}
    device : torch.device or str
        The resolved device.
    precision : {'auto', 'fp32', 'bf16', 'fp16'}
        As asked (``precision`` of the ``predict`` / ``segment`` section).
    int8 : bool
        The model folder has an int8 network (``int8_network``, :mod:`pipeline.model.quantise`).

    Returns
    -------
    backend : {'torch', 'onnxruntime', 'openvino'}
        'auto': on a CPU, OpenVINO when installed, else ONNX Runtime when installed and torch would
        run fp32 (:data:`AUTO_ORDER`), else torch; torch on a GPU.
    precision : {'fp32', 'bf16', 'fp16', 'int8'}
        openvino: 'auto' is int8 when the folder has an int8 network and the CPU is x86-64
        (:data:`INT8_MACHINES`), else bf16 on CPUs with native bf16 (:data:`OPENVINO_BF16_FLAGS`),
        else fp32; torch:
        :func:`pipeline.model.runtime.resolve_precision` (bf16 with AMX and on GPUs); onnxruntime: fp32.

    Raises
    ------
    NucleiError
        An unknown backend or precision; 'onnxruntime' or 'openvino' asked for on a GPU or without
        its package; 'onnxruntime' in bf16.
    """
    if backend not in BACKENDS:
        raise NucleiError(f"backend {backend!r} is not one of {', '.join(BACKENDS)}")
    torch_precision = resolve_precision(precision, device)  # checks the name; fp16 on a CPU refused
    cpu = str(device).split(":")[0] == "cpu"
    if backend == "auto":
        if cpu:
            for name in AUTO_ORDER:
                if installed(name) and (name == "openvino" or torch_precision == "fp32"):
                    return name, _exported_precision(name, precision, int8)
        return "torch", torch_precision
    if backend == "torch":
        return backend, torch_precision
    if not cpu:
        raise NucleiError(f"backend {backend!r} runs on the CPU only (device {device}); use backend torch or auto")
    if backend == "onnxruntime" and precision not in ("auto", "fp32"):
        raise NucleiError(f"backend 'onnxruntime' runs in fp32 only (precision {precision}); use precision fp32 "
                          "or auto, or backend openvino")
    if not installed(backend):
        raise NucleiError(f"backend {backend!r} needs {' and '.join(PACKAGES[backend])}: "
                          f"pip install 'nuclei-pipeline[{EXTRAS[backend]}]'")
    return backend, _exported_precision(backend, precision, int8)


def _exported_precision(backend: str, precision: str, int8: bool = False) -> str:
    """The precision ``backend`` (onnxruntime, openvino) runs for ``precision`` as asked (``int8``:
    the model folder has an int8 network)."""
    if backend == "openvino" and precision == "auto":
        if int8 and platform.machine().lower() in INT8_MACHINES:
            return "int8"
        return _openvino_float_precision()
    return "fp32" if backend == "onnxruntime" or precision == "auto" else precision


def _openvino_float_precision() -> str:
    """OpenVINO's float precision on this CPU: bf16 where it is native (:data:`OPENVINO_BF16_FLAGS`), else fp32."""
    return "bf16" if any(flag in cpu_flags() for flag in OPENVINO_BF16_FLAGS) else "fp32"


# --------------------------------------------------------------------------- the network, exported


class ProbabilityNetwork(nn.Module):
    """A segmentation network followed by its head's activation.

    ``forward``: float32 ``(B, 3, H, W)`` normalised images → float32 ``(B, C, H, W)``
    probabilities (:meth:`pipeline.method.heads.Head.activate`), ``H``, ``W`` multiples of the
    network's stride.
    """

    def __init__(self, network: nn.Module, head: str):
        super().__init__()
        self.network = network
        self.head = head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return get_head(self.head).activate(self.network(x))


def probability_network(model: nn.Module, head: str) -> ProbabilityNetwork:
    """An export copy of ``model`` with its head's activation: batch norm folded
    (:func:`pipeline.model.networks.fuse_batchnorm`), float32, on the CPU, channels-first, eval
    mode, no gradients. ``model`` itself is not changed."""
    from pipeline.model.networks import fuse_batchnorm

    network = fuse_batchnorm(model).float().cpu().to(memory_format=torch.contiguous_format)
    network = ProbabilityNetwork(network, head).eval()
    for p in network.parameters():
        p.requires_grad_(False)
    return network


def trace_input(stride: int) -> torch.Tensor:
    """The input exports are traced with: one image of 2 × 2 strides (a fixed pattern)."""
    side = 2 * stride
    ramp = torch.linspace(0, 1, side * side * 3).reshape(1, 3, side, side)
    return ramp.contiguous()


def check_input(stride: int) -> torch.Tensor:
    """An input of another batch size and shape than :func:`trace_input` (dynamic shapes)."""
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 3 * stride, 5 * stride, generator=generator)


def onnx_bytes(network: nn.Module, stride: int, opset: int = ONNX_OPSET) -> bytes:
    """The ONNX model of ``network`` (a :class:`ProbabilityNetwork`) as bytes.

    Input ``input`` float32 ``(batch, 3, height, width)``, output ``probabilities`` float32
    ``(batch, C, height, width)``, all three dynamic. Torch's TorchScript-based exporter is used
    (``dynamo=False``: under a second for the shipped network, every torch since 2.2); where a
    torch no longer has it, the ``torch.export``-based one (needs ``onnxscript``; several
    seconds). Both need the ``onnx`` package (extra ``.[export]``).

    Raises
    ------
    NucleiError
        ``onnx`` is not installed, or neither exporter could export the network.
    """
    if importlib.util.find_spec("onnx") is None:
        raise NucleiError("ONNX export needs the onnx package: pip install 'nuclei-pipeline[export]'")
    x = trace_input(stride)
    axes = {0: "batch", 2: "height", 3: "width"}
    legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        # the legacy exporter's deprecation notice; the head's shape check seen by the tracer
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(network, (x,), buffer, opset_version=opset, input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes},
                              **legacy)
            return buffer.getvalue()
        except Exception as exc:  # the exporter raises many types: try the other one
            first = one_line(exc)
    try:
        from torch.export import Dim

        side = {"min": 1, "max": 4096}
        shapes = {"x": {0: Dim("batch", min=1, max=1024), 2: stride * Dim("height_strides", **side),
                        3: stride * Dim("width_strides", **side)}}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = torch.onnx.export(network, (x,), None, dynamo=True, opset_version=opset,
                                        input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                        dynamic_shapes=shapes, verbose=False)
        return program.model_proto.SerializeToString()
    except Exception as exc:  # the exporter raises many types
        raise NucleiError(f"the network cannot be exported to ONNX ({first}; {one_line(exc)})") from None


def onnxruntime_session(model: bytes | str | Path, threads: int | None = None):
    """An ONNX Runtime CPU ``InferenceSession`` of ``model`` (bytes or a file) on ``threads``
    intra-op threads (default: torch's)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = int(threads or torch.get_num_threads())
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])



# --------------------------------------------------------------------------- running it


def read_int8_network(path: str | Path, weights_sha256: str | None):
    """The int8 network of a model folder, checked, as an ``openvino.Model``.

    Raises
    ------
    NucleiError
        One line naming the file: missing, unreadable, or made from other weights than
        ``weights_sha256`` (the folder's ``config.yaml``).
    """
    path = Path(path)
    if not path.is_file() or not path.with_suffix(".bin").is_file():
        raise NucleiError(f"{path}: int8 network missing (its .xml and .bin); run nuclei quantise again "
                          f"or remove int8_network from {CONFIG_NAME}")
    try:
        model = openvino_core().read_model(str(path))
    except Exception as exc:  # OpenVINO raises its own RuntimeError subclasses
        raise NucleiError(f"{path}: unreadable int8 network ({str(exc).strip().splitlines()[0]})") from None
    made_from = model.get_rt_info(RT_SHA).astype(str) if model.has_rt_info(RT_SHA) else None
    if weights_sha256 is not None and made_from != weights_sha256:
        raise NucleiError(f"{path}: made from other weights than this folder's weights.pt; run nuclei quantise "
                          f"again or remove int8_network from {CONFIG_NAME}")
    return model


class ExportedNetwork:
    """A network with its head's activation, exported to ONNX and run by ONNX Runtime or OpenVINO.

    Parameters
    ----------
    backend : {'onnxruntime', 'openvino'}
    network : torch.nn.Module
        Logits ``(B, 3, h, w) -> (B, C, h, w)`` (batch norm may be folded already).
    head : str
        The head whose activation the export includes.
    stride : int
        The network's stride.
    threads : int
        Intra-op threads (torch's, :func:`torch.get_num_threads`, when the Predictor makes it).
    precision : {'fp32', 'bf16', 'int8'}
        OpenVINO's inference precision (ONNX Runtime: fp32 only), as resolved; 'int8' runs ``int8_file``
        instead of exporting ``network`` (its float parts in bf16 where the CPU has it).
    int8_file : Path, optional
        The model folder's int8 network (:func:`read_int8_network` checks that
        it was made from ``network``'s weights, ``weights_sha256``).
    weights_sha256 : str, optional

    Calling it maps float32 ``(B, 3, h, w)`` (``h``, ``w`` multiples of the stride) to float32
    probabilities ``(B, C, h, w)``.
    """

    def __init__(self, backend: str, network, head: str, stride: int, threads: int, precision: str = "fp32",
                 int8_file: Path | None = None, weights_sha256: str | None = None):
        self.backend = backend
        if precision == "int8":
            model = read_int8_network(int8_file, weights_sha256)
            precision = _openvino_float_precision()  # of the parts left in float
        else:
            model = onnx_bytes(probability_network(network, head), stride)
        if backend == "onnxruntime":
            session = onnxruntime_session(model, threads)
            self._run = lambda x: session.run(None, {session.get_inputs()[0].name: x})[0]
        elif backend == "openvino":
            core = openvino_core()
            compiled = core.compile_model(core.read_model(model) if isinstance(model, bytes) else model, "CPU", {
                "INFERENCE_NUM_THREADS": int(threads),
                "INFERENCE_PRECISION_HINT": OPENVINO_HINTS[precision],
                "PERFORMANCE_HINT": "LATENCY",
            })
            self._run = lambda x: compiled(x)[0]
        else:
            raise NucleiError(f"backend {backend!r} does not run an exported network")

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return np.asarray(self._run(np.ascontiguousarray(batch, dtype=np.float32)), dtype=np.float32)
