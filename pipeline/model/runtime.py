"""Where and how the network runs: device, numeric precision, memory format, CPU threads.

Owns the one ``resolve_device`` of the project and the ``precision`` setting
(``auto | fp32 | bf16 | fp16``) shared by training and the Segmenter:

- ``auto`` → bf16 autocast on a CPU with bf16 matrix units (AMX, ``amx_bf16``, read from the
  running CPU's flags, not guessed from its name) and on a CUDA GPU that supports bf16; fp16
  (+ gradient scaler in training) on an older GPU; fp32 otherwise, so that no CPU gets slower
  (docs/decisions.md, "bf16 only with AMX");
- channels_last memory format for the network and its inputs, on CPU and GPU;
- on a CPU, the C library's allocator keeps freed activation memory for reuse
  (:func:`reuse_freed_memory`) instead of handing it back to the kernel after every layer;
- the memory this machine has left (:func:`available_memory`), and a network too large for it:
  :func:`memory_guard` turns a ``MemoryError`` or an allocator's ``RuntimeError`` (CPU or CUDA)
  into one line, "too large for this machine", naming the model and the size asked for.

Must not: read params.yaml (callers hand in the values), or import anything but torch lazily.
"""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import platform
import re
import sys
from collections.abc import Iterator
from pathlib import Path

from pipeline.config.model_folder import byte_size
from pipeline.config.params import PRECISIONS
from pipeline.errors import NucleiError

#: CPU flags (``/proc/cpuinfo``) that mean bf16 matrix products run faster than fp32 (AMX tiles;
#: ``avx512_bf16`` alone ran slower than fp32 on a 2-core Sapphire Rapids VM without AMX).
FAST_BF16_FLAGS = ("amx_bf16",)


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


def cpu_has_fast_bf16() -> bool:
    """True when this CPU runs bf16 matrix products faster than fp32 (AMX)."""
    return any(flag in cpu_flags() for flag in FAST_BF16_FLAGS)


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
        return "bf16" if cpu_has_fast_bf16() else "fp32"
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


#: glibc ``mallopt`` parameters (``<malloc.h>``) and the values :func:`reuse_freed_memory` sets.
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3
MMAP_THRESHOLD_BYTES = 1 << 30  # blocks up to 1 GiB come from the heap, not from their own mmap
TRIM_THRESHOLD_BYTES = 1 << 30  # free memory kept at the top of the heap before it is returned


@functools.cache
def reuse_freed_memory() -> bool:
    """Let the C library's ``malloc`` reuse freed memory instead of unmapping it (glibc only).

    glibc serves every block above 32 MiB from an ``mmap`` of its own and unmaps it on
    ``free``; a 16-channel float32 feature map of a 1024 × 1024 image is 64 MiB, so every layer
    of a CPU network pass (and every training step on 8 × 256² crops) mapped fresh pages that
    the kernel then zeroed one 4-KiB fault at a time. Raising the mmap threshold to 1 GiB and
    the trim threshold with it keeps those blocks in the heap, where the next layer reuses
    them. The price is memory: the process keeps up to 1 GiB of freed memory mapped, and aligned
    blocks leave remnants in the heap that raise the peak. Times and peaks:
    docs/decisions.md, "Keeping freed memory for reuse" (``experiments/allocator.py``). Applies
    to the whole process, once.

    Returns
    -------
    applied : bool
        False where the C library is not glibc (macOS, Windows, musl): nothing changes there.
    """
    if sys.platform != "linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):  # pragma: no cover - glibc always has mallopt
        return False
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    return bool(mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES))


def prepare_model(model, device):
    """Move ``model`` to ``device`` in channels_last memory format; returns it.

    On a CPU it also makes the process reuse freed activation memory (:func:`reuse_freed_memory`).
    """
    import torch

    if torch.device(device).type == "cpu":
        reuse_freed_memory()
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
    an oversubscribed machine trains several times slower (``benchmarks/bench_train.py``).
    """
    import torch

    n = int(threads or os.environ.get("OMP_NUM_THREADS") or cpu_count())
    torch.set_num_threads(n)
    return n


# --------------------------------------------------------------------------- memory

#: Parts of the messages of allocators that ran out of memory (torch's CPU allocator, CUDA, the C library).
OUT_OF_MEMORY = ("can't allocate memory", "defaultcpuallocator", "out of memory", "cannot allocate memory")
_UNITS = {"": 1, "b": 1, "bytes": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
          "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}


def available_memory() -> int | None:
    """Bytes of memory this process may still take: ``MemAvailable`` of ``/proc/meminfo``, within
    the cgroup's limit (a container's ``memory.max``) when there is one; elsewhere the free
    physical pages; None when unknown."""
    found = []
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        limit = Path("/sys/fs/cgroup/memory.max").read_text().strip()
        if limit != "max":
            found.append(int(limit) - int(Path("/sys/fs/cgroup/memory.current").read_text()))
    except (OSError, ValueError):
        pass
    if not found:
        try:
            found.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES"))
        except (AttributeError, OSError, ValueError):
            return None
    return max(0, min(found))


def is_out_of_memory(exc: BaseException) -> bool:
    """Whether ``exc`` says that memory ran out (``MemoryError``, ``torch.cuda.OutOfMemoryError``,
    the ``RuntimeError`` of torch's CPU allocator)."""
    if isinstance(exc, MemoryError):
        return True
    return isinstance(exc, RuntimeError) and any(part in str(exc).lower() for part in OUT_OF_MEMORY)


def requested_bytes(exc: BaseException) -> float | None:
    """The allocation an out-of-memory error names (``you tried to allocate 36000000000000 bytes``,
    CUDA's ``Tried to allocate 20.00 GiB``), in bytes; None when it names none."""
    match = re.search(r"allocate ([\d.]+) ?([KMGT]i?B|bytes|B)?", str(exc), re.IGNORECASE)
    if not match:
        return None
    return float(match.group(1)) * _UNITS[(match.group(2) or "").lower()]


@contextlib.contextmanager
def memory_guard(what: str, size: str | None = None) -> Iterator[None]:
    """A block that builds or runs a network: running out of memory in it is one line.

    Parameters
    ----------
    what : str
        What the message names first: the model folder as the user gave it.
    size : str, optional
        What was being built, e.g. ``a network of 7,763,041 parameters``.

    Raises
    ------
    NucleiError
        ``<what>: too large for this machine (asked for 36.0 TB at once; <size>)`` in place of a
        ``MemoryError`` or an allocator's ``RuntimeError``; other errors pass unchanged.
    """
    try:
        yield
    except (MemoryError, RuntimeError) as exc:
        if not is_out_of_memory(exc):
            raise
        asked = requested_bytes(exc)
        parts = ([f"asked for {byte_size(asked)} at once"] if asked else []) + ([size] if size else [])
        detail = f" ({'; '.join(parts)})" if parts else ""
        raise NucleiError(f"{what}: too large for this machine{detail}") from None
