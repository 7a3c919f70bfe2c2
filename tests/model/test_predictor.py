"""Predictor: padding, seamless tiling, test-time augmentation, model directories."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn

from pipeline.errors import NucleiError
from pipeline.model.model_dir import save_model_dir
from pipeline.model.networks import build_model
from pipeline.model.predictor import Predictor, load_predictor, plan_tiles, tta_transforms

torch.set_num_threads(1)
TINY = {"arch": "unet", "head": "softmax", "depth": 2, "width": 4, "upsampling": "bilinear"}


def tiny_unet(head: str = "softmax") -> tuple[nn.Module, dict]:
    torch.manual_seed(0)
    cfg = {**TINY, "head": head}
    return build_model(cfg).eval(), cfg


def local_net() -> nn.Module:
    """Stride-1 fully convolutional net with a 5×5 receptive field."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 3, 3, padding=1)).eval()


class SymmetricNet(nn.Module):
    """Exactly D4-equivariant: a 3×3 conv whose kernel is invariant under rotations and flips."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 3, 3, padding=1)
        with torch.no_grad():
            w = self.conv.weight
            sym = sum(torch.rot90(w, k, (-2, -1)) + torch.rot90(w.flip(-1), k, (-2, -1)) for k in range(4))
            w.copy_(sym / 8)

    def forward(self, x):
        return self.conv(x)


def image(shape, seed=0):
    return np.random.default_rng(seed).random((*shape, 3), dtype=np.float32)


def test_whole_image_shapes_and_probabilities():
    model, cfg = tiny_unet()
    probs = Predictor(model, cfg).predict(image((37, 50)))  # not a multiple of the stride
    assert probs.shape == (3, 37, 50) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(0), 1.0, atol=1e-5)
    model, cfg = tiny_unet("sigmoid")
    probs = Predictor(model, cfg).predict(image((20, 20)))
    assert probs.shape == (2, 20, 20) and probs.min() >= 0 and probs.max() <= 1


def test_tiled_equals_whole_for_local_model():
    net, img = local_net(), image((150, 130))
    whole = Predictor(net, {"head": "softmax"}, stride=1, tile_size=512).predict(img)
    tiled_predictor = Predictor(net, {"head": "softmax"}, stride=1, tile_size=48, overlap=16)
    plan = tiled_predictor.plan(img.shape[:2])
    assert len(plan.ys) > 2 and len(plan.xs) > 2
    tiled = tiled_predictor.predict(img)
    # identical except within the receptive field (2 px) of the image border, where the
    # whole image sees zero padding and the tiles see mirrored context
    np.testing.assert_allclose(tiled[:, 2:-2, 2:-2], whole[:, 2:-2, 2:-2], atol=1e-4)


def test_tiled_equals_whole_for_strided_unet():
    model, cfg = tiny_unet()
    img = image((300, 280), seed=1)
    whole = Predictor(model, cfg, tile_size=512).predict(img)
    tiled = Predictor(model, cfg, tile_size=128, overlap=96).predict(img)
    np.testing.assert_allclose(tiled[:, 40:-40, 40:-40], whole[:, 40:-40, 40:-40], atol=1e-4)
    np.testing.assert_allclose(tiled.sum(0), 1.0, atol=1e-5)


@pytest.mark.parametrize("tta", ["rot180", "flips", "d4", "auto"])
def test_tta_of_equivariant_model_changes_nothing(tta):
    net, img = SymmetricNet(), image((40, 56))
    plain = Predictor(net, {"head": "softmax"}, stride=1, tta="none").predict(img)
    augmented = Predictor(net, {"head": "softmax"}, stride=1, tta=tta).predict(img)
    np.testing.assert_allclose(augmented, plain, atol=1e-6)


def test_tta_inverts_transforms():
    """A non-equivariant model: every TTA branch is mapped back to the image frame, so a
    model that outputs its input (pixel-wise) gives the same map with and without TTA."""

    class Identity(nn.Module):
        def forward(self, x):
            return x * 5.0

    img = image((24, 40))
    for tta in ("rot180", "flips", "d4", "auto"):
        out = Predictor(Identity(), {"head": "softmax"}, stride=1, tta=tta).predict(img)
        ref = Predictor(Identity(), {"head": "softmax"}, stride=1).predict(img)
        np.testing.assert_allclose(out, ref, atol=1e-6)
    assert len(tta_transforms("d4")) == 8 and len(tta_transforms("flips")) == 4
    assert tta_transforms("rot180") == [(0, False), (2, False)]


def test_auto_tta_by_image_size(monkeypatch):
    """'auto': the most augmentation whose passes x pixels fit in AUTO_TTA_BUDGET, decided per
    image within one batch; with the real budget, 512² gets the 4 flips, 724² the half turn and
    1024² one pass."""
    import pipeline.model.predictor as inference

    assert tta_transforms("auto", 512 * 512) == tta_transforms("flips")
    assert tta_transforms("auto", 724 * 724) == tta_transforms("rot180")
    assert tta_transforms("auto", 1024 * 1024) == tta_transforms("none")
    monkeypatch.setattr(inference, "AUTO_TTA_BUDGET", 4 * 32 * 32)
    model, cfg = tiny_unet()
    small, medium, large = image((32, 32), 1), image((32, 48), 2), image((48, 96), 3)
    auto = Predictor(model, cfg, tta="auto", batch_size=2).predict_many([small, medium, large])
    for probs, img, mode in zip(auto, (small, medium, large), ("flips", "rot180", "none"), strict=True):
        np.testing.assert_allclose(probs, Predictor(model, cfg, tta=mode).predict(img), atol=1e-5)
    flips, half_turn = (Predictor(model, cfg, tta=m).predict(small) for m in ("flips", "rot180"))
    assert not np.allclose(flips, half_turn, atol=1e-4)  # the modes differ on this network
    assert not np.allclose(half_turn, Predictor(model, cfg).predict(small), atol=1e-4)
    np.testing.assert_allclose(Predictor(model, cfg, tta="auto").predict(large, tta="flips"),
                               Predictor(model, cfg, tta="flips").predict(large), atol=1e-5)


def test_predict_many_batches_mixed_sizes():
    model, cfg = tiny_unet()
    images = [image((32, 32), 1), image((48, 40), 2), image((32, 32), 3)]
    predictor = Predictor(model, cfg, batch_size=2)
    many = predictor.predict_many(images)
    for img, probs in zip(images, many, strict=True):
        np.testing.assert_allclose(probs, predictor.predict(img), atol=1e-5)


def test_plan_covers_image():
    plan = plan_tiles((1040, 1388), tile_size=512, overlap=64, stride=16)
    ph, pw = plan.padded_shape
    th, tw = plan.tile
    assert th <= 512 and tw <= 512 and th % 16 == 0 and tw % 16 == 0
    assert plan.ys[-1] + th == ph and plan.xs[-1] + tw == pw
    assert plan.pad[0][0] == 32 and plan.pad[0][0] + 1040 <= ph


def test_plan_runs_whole_when_no_larger_than_one_pass_of_tiles():
    """1321² with 1024-px tiles: four 736² tiles (2.17 Mpx, 1.24x the image) in one pass of four;
    the whole image (1328², 1.76 Mpx) is fewer pixels and no more memory. With one tile per pass
    it stays tiled, and so does an image larger than a pass (2048² against 4 x 752²)."""
    whole = plan_tiles((1321, 1321), tile_size=1024, overlap=64, stride=16, batch_size=4)
    assert whole.tile == (1328, 1328) and whole.ys == whole.xs == (0,) and whole.pad == ((0, 7), (0, 7))
    tiled = plan_tiles((1321, 1321), tile_size=1024, overlap=64, stride=16, batch_size=1)
    assert tiled.tile == (736, 736) and len(tiled.ys) == len(tiled.xs) == 2
    assert 1328**2 <= 4 * 736**2
    large = plan_tiles((2048, 2048), tile_size=1024, overlap=64, stride=16, batch_size=4)
    assert large.tile == (752, 752) and len(large.ys) == 3 and 2048**2 > 4 * 752**2


def test_whole_image_beyond_tile_size_runs_alone():
    """Images run whole beyond tile_size go through the network one per pass (memory within one
    pass of tiles), and match a predictor whose tiles hold them."""

    batches = []  # outside the module: the Predictor runs a copy of it

    class Recorder(nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, x):
            batches.append(tuple(x.shape))
            return self.net(x)

    model, cfg = tiny_unet()
    images = [image((100, 100), 1), image((100, 100), 2)]
    recorder = Recorder(model)
    predictor = Predictor(recorder, cfg, tile_size=64, overlap=16, batch_size=4)
    assert predictor.stride == 4 and predictor.plan((100, 100)).tile == (100, 100)  # 9 tiles of 52²: 4 hold 10,816 px
    assert len(Predictor(model, cfg, tile_size=64, overlap=16, batch_size=1).plan((100, 100)).ys) == 3
    probs = predictor.predict_many(images)
    assert batches == [(1, 3, 100, 100), (1, 3, 100, 100)]
    for img, p in zip(images, probs, strict=True):
        np.testing.assert_allclose(p, Predictor(model, cfg, tile_size=128).predict(img), atol=1e-5)


def test_load_predictor_from_model_dir(tmp_path):
    model, cfg = tiny_unet()
    save_model_dir(tmp_path / "m", model, {"model": cfg, "postprocess": {"min_size": 5}})
    predictor = load_predictor(tmp_path / "m", device="auto", tta="flips")
    assert predictor.device.type in ("cpu", "cuda") and predictor.config.postprocess.min_size == 5
    probs = predictor.predict(image((30, 30)))
    ref = Predictor(model, cfg, tta="flips").predict(image((30, 30)))
    np.testing.assert_allclose(probs, ref, atol=2e-2)  # weights stored in float16


# --------------------------------------------------------------------------- backends


@pytest.mark.parametrize("backend", ["onnxruntime", "openvino"])
@pytest.mark.parametrize("head", ["softmax", "sigmoid"])
def test_exported_backends_give_torchs_probabilities(backend, head):
    pytest.importorskip("onnx")
    pytest.importorskip(backend)
    model, cfg = tiny_unet(head)
    images = [image((70, 90)), image((37, 41), seed=1)]  # padded to the stride; two shapes, one batch each
    ref = Predictor(model, cfg, tta="d4", precision="fp32").predict_many(images)
    predictor = Predictor(model, cfg, tta="d4", precision="fp32", backend=backend)
    assert predictor.backend == backend
    for got, expected in zip(predictor.predict_many(images), ref, strict=True):
        assert got.dtype == np.float32 and got.shape == expected.shape
        assert np.abs(got - expected).max() < 1e-4


def test_openvino_networks_dropped_in_any_order_leave_signals_deliverable():
    """OpenVINO's CPU plugin points the thread's alternate signal stack at its own memory: two
    networks dropped in the order they were made once left it on freed memory, and the next signal
    (a DataLoader worker's SIGCHLD in the test suite) was a segmentation fault. Run in a child, so
    that a crash fails this test only."""
    pytest.importorskip("onnx")
    pytest.importorskip("openvino")
    script = textwrap.dedent("""
        import gc, os, signal
        import numpy as np, torch
        from pipeline.model.backends import ExportedNetwork, openvino_core
        first = ExportedNetwork("openvino", torch.nn.Conv2d(3, 3, 1), "softmax", 1, 1)
        second = ExportedNetwork("openvino", torch.nn.Conv2d(3, 3, 1), "softmax", 1, 1)
        assert first(np.zeros((1, 3, 8, 8), np.float32)).shape == (1, 3, 8, 8)
        del first, second
        gc.collect()
        delivered = []
        signal.signal(signal.SIGUSR1, lambda *_: delivered.append(1))
        os.kill(os.getpid(), signal.SIGUSR1)
        assert delivered and openvino_core() is openvino_core()
        print("delivered")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert (done.returncode, done.stdout.split()[-1:]) == (0, ["delivered"]), done.stderr[-2000:]


def test_tiled_prediction_through_onnxruntime_equals_torch():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model, cfg = tiny_unet("sigmoid")
    img = image((150, 170))
    ref = Predictor(model, cfg, tile_size=64, overlap=16, precision="fp32").predict(img)
    got = Predictor(model, cfg, tile_size=64, overlap=16, precision="fp32", backend="onnxruntime").predict(img)
    assert np.abs(got - ref).max() < 1e-4


def test_auto_backend_falls_back_to_torch_without_onnxruntime(monkeypatch):
    import importlib.util

    from pipeline.model import backends

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name.split(".")[0] in ("onnxruntime", "openvino") else real(name, *a))
    model, cfg = tiny_unet()
    predictor = Predictor(model, cfg, precision="fp32", backend="auto")
    assert (predictor.backend, predictor.precision) == ("torch", "fp32")
    np.testing.assert_allclose(predictor.predict(image((30, 30))),
                               Predictor(model, cfg, precision="fp32").predict(image((30, 30))))
    with pytest.raises(NucleiError, match=r"^backend 'onnxruntime' needs onnx and onnxruntime: pip install "
                                          r"'nuclei-pipeline\[export\]'$"):
        backends.resolve_backend("onnxruntime", "cpu", "fp32")


def test_auto_backend_and_precision(monkeypatch):
    from pipeline.model import backends, runtime

    resolve = backends.resolve_backend
    avx512_bf16, amx = frozenset({"avx512f", "avx512_bf16"}), frozenset({"avx512_bf16", "amx_bf16"})
    monkeypatch.setattr(backends, "installed", lambda name: True)
    for flags in (avx512_bf16, amx):
        monkeypatch.setattr(backends, "cpu_flags", lambda flags=flags: flags)
        monkeypatch.setattr(runtime, "cpu_flags", lambda flags=flags: flags)
        assert resolve("auto", "cpu", "auto") == ("openvino", "bf16")  # OpenVINO runs bf16 natively on both
        assert resolve("auto", "cpu", "fp32") == ("openvino", "fp32")
        assert resolve("openvino", "cpu", "auto") == ("openvino", "bf16")
        assert resolve("onnxruntime", "cpu", "auto") == ("onnxruntime", "fp32")
    monkeypatch.setattr(backends, "cpu_flags", lambda: frozenset({"avx2"}))
    monkeypatch.setattr(runtime, "cpu_flags", lambda: frozenset({"avx2"}))
    assert resolve("auto", "cpu", "auto") == ("openvino", "fp32")
    assert resolve("torch", "cpu", "auto") == ("torch", "fp32")
    monkeypatch.setattr(backends, "installed", lambda name: name == "onnxruntime")
    assert resolve("auto", "cpu", "auto") == ("onnxruntime", "fp32")
    assert resolve("auto", "cpu", "bf16") == ("torch", "bf16")  # ONNX Runtime runs fp32 only
    monkeypatch.setattr(backends, "cpu_flags", lambda: amx)
    monkeypatch.setattr(runtime, "cpu_flags", lambda: amx)
    assert resolve("auto", "cpu", "auto") == ("torch", "bf16")  # torch's bf16 with AMX rather than ONNX Runtime's fp32
    monkeypatch.setattr(backends, "installed", lambda name: name == "torch")
    assert resolve("auto", "cpu", "auto") == ("torch", "bf16")


@pytest.mark.parametrize("backend, device, precision, message", [
    ("tensorrt", "cpu", "fp32", r"^backend 'tensorrt' is not one of torch, onnxruntime, openvino, auto$"),
    ("onnxruntime", "cuda:0", "fp32", r"^backend 'onnxruntime' runs on the CPU only"),
    ("onnxruntime", "cpu", "bf16", r"^backend 'onnxruntime' runs in fp32 only \(precision bf16\)"),
    ("openvino", "cpu", "fp16", r"^precision 'fp16' needs a CUDA GPU"),
])
def test_backend_errors_are_one_line(backend, device, precision, message, monkeypatch):
    from pipeline.model import backends

    monkeypatch.setattr(backends, "installed", lambda name: True)
    with pytest.raises(NucleiError, match=message) as info:
        backends.resolve_backend(backend, device, precision)
    assert "\n" not in str(info.value)
    model, cfg = tiny_unet()
    if device == "cpu":
        with pytest.raises(NucleiError, match=message):
            Predictor(model, cfg, backend=backend, precision=precision)


def test_openvino_in_bf16_stays_close_to_fp32():
    pytest.importorskip("onnx")
    pytest.importorskip("openvino")
    model, cfg = tiny_unet("sigmoid")
    img = image((64, 96))
    predictor = Predictor(model, cfg, precision="bf16", backend="openvino")
    assert (predictor.backend, predictor.precision) == ("openvino", "bf16")
    assert np.abs(predictor.predict(img) - Predictor(model, cfg, precision="fp32").predict(img)).max() < 0.05
