"""Run a benchmark script as it would run on an x86-64 CPU with AVX2 only, on one with AVX-512 or AMX.

Usage: ``python benchmarks/as_avx2.py [--vnni] SCRIPT [ARGS ...]``, e.g.
``python benchmarks/as_avx2.py benchmarks/bench_segment.py --threads 2 --repeats 3``.
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

import os
import runpy
import sys

#: Environment that holds oneDNN (torch's and OpenVINO's) to AVX2 kernels (``--vnni``: AVX2 with VNNI).
ENV = {"ONEDNN_MAX_CPU_ISA": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
ENV_VNNI = {**ENV, "ONEDNN_MAX_CPU_ISA": "AVX2_VNNI"}
#: Prefixes of the CPU flags an AVX2-only CPU does not have.
HIDDEN = ("avx512", "amx")


def main(argv: list[str]) -> int:
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__.split("\n\n")[1])
        return 0 if argv else 2
    vnni = argv[0] == "--vnni"
    script_args = argv[1:] if vnni else argv
    if not script_args or not os.path.isfile(script_args[0]):
        print(f"{script_args[0] if script_args else 'SCRIPT'}: no such script", file=sys.stderr)
        return 2
    env = ENV_VNNI if vnni else ENV
    if any(os.environ.get(key) != value for key, value in env.items()):
        os.execve(sys.executable, [sys.executable, os.path.abspath(__file__), *argv], {**os.environ, **env})
    argv = script_args
    from pipeline.model import backends, runtime

    flags = frozenset(flag for flag in runtime.cpu_flags() if not flag.startswith(HIDDEN))
    runtime.cpu_flags = backends.cpu_flags = lambda: flags
    sys.argv = list(argv)
    runpy.run_path(argv[0], run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
