"""Device, precision and memory format selection (pipeline.model.runtime), and bf16 inference accuracy."""

from __future__ import annotations

import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.errors import NucleiError
from pipeline.model import runtime
from pipeline.model.runtime import autocast_dtype, resolve_device, resolve_precision

from ..conftest import ROOT


def test_forced_precisions_on_cpu():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(NucleiError, match="fp16.*CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(NucleiError, match="precision 'half'"):
        resolve_precision("half", "cpu")
    assert autocast_dtype("fp32") is None and autocast_dtype("bf16") == torch.bfloat16


def test_auto_picks_bf16_only_where_the_cpu_runs_it_faster_than_fp32(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}))
    assert resolve_precision("auto", "cpu") == "bf16"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))  # slower than fp32
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))  # no native bf16
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset())  # flags unreadable
    assert resolve_precision("auto", "cpu") == "fp32"


def test_resolve_device():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with pytest.raises(NucleiError, match="not one of"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(NucleiError, match="CUDA is not available"):
            resolve_device("cuda")


def test_bf16_channels_last_inference_matches_fp32():
    from pipeline.model.networks import build_model
    from pipeline.model.predictor import Predictor

    torch.manual_seed(0)
    cfg = {"arch": "unet", "head": "sigmoid", "depth": 3, "width": 8, "upsampling": "transpose"}
    model = build_model(cfg).eval()
    image = np.random.default_rng(0).random((96, 128, 3), dtype=np.float32)
    fp32 = Predictor(model, {"model": cfg}, device="cpu", precision="fp32").predict(image)
    bf16 = Predictor(model, {"model": cfg}, device="cpu", precision="bf16")
    assert bf16.precision == "bf16"
    convs = [p for p in bf16.model.parameters() if p.ndim == 4 and p.shape[-1] > 1]
    assert convs and all(p.is_contiguous(memory_format=torch.channels_last) for p in convs)
    probs = bf16.predict(image)
    assert probs.dtype == np.float32 and probs.shape == fp32.shape
    assert np.abs(probs - fp32).max() < 0.03 and np.abs(probs - fp32).mean() < 0.005


# A child process that allocates, fills and frees a 64 MiB tensor twenty times (one thread, as a
# network layer's output) and prints the minor page faults of each round; with argv[1] == "reuse"
# it calls reuse_freed_memory() first.
_FAULTS_CHILD = """
import resource, sys
import torch
from pipeline.model.runtime import reuse_freed_memory
torch.set_num_threads(1)
applied = reuse_freed_memory() if sys.argv[1] == "reuse" else False
faults = []
for _ in range(20):
    start = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    block = torch.empty(1 << 24).fill_(1.0)  # 64 MiB: above glibc's largest automatic mmap threshold
    del block
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - start)
print(applied, *faults)
"""


def _huge_pages_always() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[always]" in path.read_text()


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="the allocator setting is glibc's")
def test_reuse_freed_memory_stops_refaulting_freed_blocks():
    """glibc maps a fresh 64 MiB block (16,384 page faults of 4 KiB) for every allocation; with
    freed memory kept for reuse, the heap grows for a few rounds (the aligned blocks leave
    remnants between them until enough freed memory has merged) and then no page faults."""
    faults = {}
    for setting in ("default", "reuse"):
        out = subprocess.run([sys.executable, "-c", _FAULTS_CHILD, setting], capture_output=True, text=True,
                             check=True, cwd=ROOT).stdout.split()
        assert out[0] == str(setting == "reuse")
        faults[setting] = [int(f) for f in out[1:]]
    pages = (64 << 20) // resource.getpagesize()
    assert sum(faults["reuse"][10:]) <= pages // 16  # the freed block is reused, not mapped again
    if not _huge_pages_always():  # (with 2 MiB pages for every mapping, a fresh block costs only 32)
        assert sum(faults["default"][10:]) >= 9 * pages  # every round maps and zeroes its pages anew


def test_reuse_freed_memory_is_a_no_op_without_glibc(monkeypatch):
    monkeypatch.setattr(runtime.platform, "libc_ver", lambda: ("", ""))
    assert runtime.reuse_freed_memory.__wrapped__() is False


def test_prepare_model_reuses_freed_memory_on_cpu_only(monkeypatch):
    calls = []
    monkeypatch.setattr(runtime, "reuse_freed_memory", lambda: calls.append(1) or True)
    model = runtime.prepare_model(torch.nn.Conv2d(3, 4, 3), "cpu")
    assert calls == [1] and model.weight.is_contiguous(memory_format=torch.channels_last)


AS_AVX2 = [sys.executable, "-m", "benchmarks.as_avx2"]
AS_AVX2_PROBE = """
import json, os, sys
from pipeline.model import runtime
from pipeline.model.backends import resolve_backend
print(json.dumps({"argv": sys.argv[1:], "isa": os.environ.get("ONEDNN_MAX_CPU_ISA"),
                  "aten": os.environ.get("ATEN_CPU_CAPABILITY"),
                  "wide": sorted(f for f in runtime.cpu_flags() if f.startswith(("avx512", "amx"))),
                  "avx2": "avx2" in runtime.cpu_flags() or not runtime.cpu_flags(),
                  "torch": runtime.resolve_precision("auto", "cpu"),
                  "auto": resolve_backend("auto", "cpu", "auto")}))
"""


def probe_as_avx2(tmp_path, *argv: str) -> dict:
    """What :data:`AS_AVX2_PROBE` sees when ``benchmarks/as_avx2.py`` runs it (``argv``: the options
    before the probe, then the probe's own arguments after ``--``), from an environment without
    oneDNN's settings."""
    probe = tmp_path / "probe.py"
    probe.write_text(AS_AVX2_PROBE)
    split = argv.index("--")
    env = {k: v for k, v in os.environ.items() if k not in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY")}
    run = subprocess.run([*AS_AVX2, *argv[:split], str(probe), *argv[split + 1:]],
                         capture_output=True, text=True, env=env, timeout=120, cwd=ROOT)
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout.strip().splitlines()[-1])


def test_as_avx2_runs_a_script_as_on_an_avx2_only_cpu(tmp_path):
    """benchmarks/as_avx2.py: oneDNN held to AVX2 in a re-executed process, the AVX-512 and AMX
    flags hidden, so precision 'auto' is fp32 for every backend; the script's own arguments kept."""
    seen = probe_as_avx2(tmp_path, "--", "--threads", "2")
    assert seen["argv"] == ["--threads", "2"]
    assert (seen["isa"], seen["aten"]) == ("AVX2", "avx2")
    assert seen["wide"] == [] and seen["avx2"]
    assert seen["torch"] == "fp32" and seen["auto"][1] == "fp32"


def test_as_avx2_vnni_lets_onednn_use_avx_vnni(tmp_path):
    seen = probe_as_avx2(tmp_path, "--vnni", "--", "x")
    assert seen["argv"] == ["x"] and seen["isa"] == "AVX2_VNNI" and seen["wide"] == []


def test_as_avx2_names_a_missing_script_in_one_line(tmp_path):
    run = subprocess.run([*AS_AVX2, str(tmp_path / "nope.py")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 2 and run.stderr.strip() == f"{tmp_path / 'nope.py'}: no such script"
