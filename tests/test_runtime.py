"""Device, precision and memory format selection (pipeline.runtime), and bf16 inference accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline import runtime
from pipeline.errors import NucleiError
from pipeline.runtime import autocast_dtype, resolve_device, resolve_precision


def test_forced_precisions_on_cpu():
    assert resolve_precision("fp32", "cpu") == "fp32"
    assert resolve_precision("bf16", "cpu") == "bf16"
    with pytest.raises(NucleiError, match="fp16.*CUDA"):
        resolve_precision("fp16", "cpu")
    with pytest.raises(NucleiError, match="precision 'half'"):
        resolve_precision("half", "cpu")
    assert autocast_dtype("fp32") is None and autocast_dtype("bf16") == torch.bfloat16


def test_auto_follows_the_cpus_native_bf16(monkeypatch):
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx512f", "avx512_bf16"}))
    assert resolve_precision("auto", "cpu") == "bf16"
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
    from pipeline.inference import Predictor
    from pipeline.networks import build_model

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
