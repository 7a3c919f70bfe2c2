"""Run a benchmark script as it would run on an x86-64 CPU with AVX2 only, on one with AVX-512 or AMX.

Usage: ``python -m benchmarks.as_avx2 [--vnni] (-m MODULE | SCRIPT) [ARGS ...]``, e.g.
``python -m benchmarks.as_avx2 -m benchmarks.bench_segment --threads 2 --repeats 3`` (a module as
``python -m`` runs it, from the repository root; or a script file).
``--vnni``: an AVX2 CPU with AVX-VNNI (8-bit dot products: Intel since Alder Lake, AMD since Zen 4),
whose int8 is faster than plain AVX2's (the costly case in int8: 1.78× against 2.92×, session 52);
the host must have ``avx_vnni`` itself.

Two things make a CPU with AVX-512 BF16 or AMX behave as an AVX2-only laptop or VM:

1. oneDNN, under both torch and OpenVINO, is held to AVX2 kernels (``ONEDNN_MAX_CPU_ISA=AVX2``,
   ``ATEN_CPU_CAPABILITY=avx2``). These are read when the libraries load, so the script re-executes
   itself with them set.
2. The package no longer sees the CPU's AVX-512 and AMX flags
   (:func:`pipeline.model.runtime.cpu_flags`). Precision ``auto`` then picks fp32 for torch and
   for OpenVINO, as it does on such a CPU.

The figures track a real AVX2-only CPU: ``bench_segment.py``'s costly case read 4.88× on the 2-core
AMX Xeon held to AVX2 (session 51), 4.92× on a 2-core AVX2-only AMD EPYC VM. Absolute times still
come from the faster core's clock and caches.
"""

from __future__ import annotations

import importlib.util
import os
import runpy
import sys

#: Environment that holds oneDNN (torch's and OpenVINO's) to AVX2 kernels (``--vnni``: AVX2 with VNNI).
ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
ENV_VNNI = {**ENV, "ONEDNN_MAX_CPU_ISA": "AVX2_VNNI"}
#: Prefixes of the CPU flags an AVX2-only CPU does not have.
HIDDEN = ("avx512", "amx")


def _exists(script_args: list[str]) -> str | None:
    """What is missing from ``SCRIPT ...`` or ``-m MODULE ...``, in one line; None when it is there."""
    module = script_args[:1] == ["-m"]
    name = (script_args[1:2] if module else script_args[:1]) or ["MODULE" if module else "SCRIPT"]
    if not module:
        return None if os.path.isfile(name[0]) else f"{name[0]}: no such script"
    try:
        found = importlib.util.find_spec(name[0]) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else f"{name[0]}: no such module"


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[1])
        return 0 if argv else 2
    vnni = argv[0] == "--vnni"
    script_args = argv[1:] if vnni else argv
    missing = _exists(script_args)
    if missing:
        print(missing, file=sys.stderr)
        return 2
    env = ENV_VNNI if vnni else ENV
    if any(os.environ.get(key) != value for key, value in env.items()):
        this = ["-m", __spec__.name] if __spec__ else [os.path.abspath(__file__)]  # as it was started
        os.execve(sys.executable, [sys.executable, *this, *argv], {**os.environ, **env})
    from pipeline.model import backends, runtime

    flags = frozenset(flag for flag in runtime.cpu_flags() if not flag.startswith(HIDDEN))
    runtime.cpu_flags = backends.cpu_flags = lambda: flags
    if script_args[0] == "-m":
        sys.argv = script_args[1:]
        runpy.run_module(script_args[1], run_name="__main__", alter_sys=True)
    else:
        sys.argv = list(script_args)
        runpy.run_path(script_args[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
