"""Where and how the network runs: device, numeric precision, memory format, CPU threads.

Owns the one ``resolve_device`` of the project and the ``precision`` setting
(``auto | fp32 | bf16 | fp16``) shared by training and the Segmenter:

- ``auto`` → bf16 autocast on a CPU with native bf16 instructions (``avx512_bf16`` or
  ``amx_bf16``, read from the running CPU's flags, not guessed from its name) and on a CUDA GPU
  that supports bf16; fp16 (+ gradient scaler in training) on an older GPU; fp32 otherwise, so a
  CPU without native bf16 never gets slower;
- channels_last memory format for the network and its inputs, on CPU and GPU.

Must not: read params.yaml (callers hand in the values), or import anything but torch lazily.
"""

from __future__ import annotations

import contextlib
import functools
import os
from pathlib import Path

from pipeline.errors import NucleiError

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
#: CPU flags (``/proc/cpuinfo``) that mean bf16 matrix products run natively.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def resolve_device(name: str | None = "auto", local_rank: int = 0):
    """'auto' | None | 'cpu' | 'cuda' | 'cuda:N' → a :class:`torch.device`.

    'auto' picks this process's GPU (``cuda:<local_rank>``) when CUDA is available, else the CPU.

    Raises
    ------
    NucleiError
        CUDA asked for but not available, or an unknown name.
    """
    import torch

    name = "auto" if name is None else str(name)
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise NucleiError(f"device {name!r}: CUDA is not available on this machine (use --device cpu)")
        return torch.device(name if ":" in name else f"cuda:{local_rank}")
    if name == "cpu":
        return torch.device("cpu")
    raise NucleiError(f"device {name!r} is not one of auto, cpu, cuda, cuda:N")


@functools.cache
def cpu_flags() -> frozenset[str]:
    """The feature flags of the running CPU (``/proc/cpuinfo``); empty where unreadable."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[1].split())
    return frozenset()


def cpu_has_native_bf16() -> bool:
    """True when this CPU runs bf16 matrix products natively (AVX-512 BF16 or AMX)."""
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def resolve_precision(precision: str, device) -> str:
    """The precision actually used: 'fp32', 'bf16' or 'fp16'.

    Parameters
    ----------
    precision : {'auto', 'fp32', 'bf16', 'fp16'}
    device : torch.device or str

    Raises
    ------
    NucleiError
        An unknown name, or fp16 asked for on a CPU (no fast fp16 there).
    """
    import torch

    if precision not in PRECISIONS:
        raise NucleiError(f"precision {precision!r} is not one of {', '.join(PRECISIONS)}")
    cuda = torch.device(device).type == "cuda"
    if precision == "auto":
        if cuda:
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_has_native_bf16() else "fp32"
    if precision == "fp16" and not cuda:
        raise NucleiError("precision 'fp16' needs a CUDA GPU; use auto, bf16 or fp32 on a CPU")
    return precision


def autocast_dtype(precision: str):
    """The autocast dtype of a resolved precision (None for fp32)."""
    import torch

    return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]


def autocast(device, precision: str):
    """A ``torch.autocast`` context for a resolved precision (a no-op for fp32)."""
    import torch

    dtype = autocast_dtype(precision)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def prepare_model(model, device):
    """Move ``model`` to ``device`` in channels_last memory format; returns it."""
    import torch

    return model.to(device).to(memory_format=torch.channels_last)


def to_channels_last(batch, device):
    """A (B, C, H, W) tensor on ``device`` in channels_last memory format."""
    import torch

    return batch.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)


def cpu_count() -> int:
    """CPU cores this process may use (its affinity mask, else ``os.cpu_count()``)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        return os.cpu_count() or 1


def set_threads(threads: int | None = None) -> int:
    """Set torch's intra-op threads; returns the number.

    ``threads``, else ``OMP_NUM_THREADS`` when set, else one per usable core. On a machine
    shared with other busy processes use fewer: OpenMP threads that wait for a core spin, and
    an oversubscribed 2-core machine trains 3–5× slower (``benchmarks/bench_train.py``).
    """
    import torch

    n = int(threads or os.environ.get("OMP_NUM_THREADS") or cpu_count())
    torch.set_num_threads(n)
    return n
