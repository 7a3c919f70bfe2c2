"""Network factory (architecture registry) and the model directory (save / load / validation)."""

import os
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import pytest
import torch
import yaml

from pipeline.config.params import ROOT, PostprocessConfig
from pipeline.errors import NucleiError
from pipeline.model import model_dir
from pipeline.model.model_dir import load_model_dir, portable_paths, save_model_dir
from pipeline.model.networks import ARCHITECTURES, build_model, count_parameters, fuse_batchnorm, model_stride

torch.set_num_threads(1)
TINY = {"arch": "unet", "head": "softmax", "depth": 2, "width": 4, "upsampling": "transpose"}
SMP = {"arch": "smp", "head": "softmax", "encoder": "resnet18", "encoder_weights": None}


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear", "nearest"])
@pytest.mark.parametrize("head, channels", [("softmax", 3), ("sigmoid", 2)])
def test_unet_output_shape(upsampling, head, channels):
    cfg = {**TINY, "head": head, "upsampling": upsampling}
    model = build_model(cfg)
    assert model_stride(cfg) == 4
    assert model(torch.rand(2, 3, 40, 24)).shape == (2, channels, 40, 24)


@pytest.mark.parametrize("head, channels", [("softmax", 3), ("sigmoid", 2)])
def test_smp_output_shape(head, channels):
    cfg = {**SMP, "head": head}
    model = build_model(cfg).eval()
    assert model_stride(cfg) == 32
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 32)).shape == (1, channels, 64, 32)


@pytest.mark.parametrize("cfg", [TINY, SMP], ids=["unet", "smp"])
def test_fused_batchnorm_gives_the_same_outputs_and_leaves_the_model_alone(cfg):
    torch.manual_seed(0)
    model = build_model(cfg)
    for module in model.modules():  # statistics far from the identity, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-1, 1)
            module.running_var.uniform_(0.2, 3)
            module.weight.data.uniform_(0.5, 2)
            module.bias.data.uniform_(-1, 1)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fuse_batchnorm(model)
    assert model.training  # the caller's network is not switched to eval mode...
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # ...nor changed
    assert not fused.training
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    left = [m for m in fused.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if cfg["arch"] == "unet":
        assert norms and not left  # every one folded
    else:
        assert 0 < len(left) < len(norms)  # the decoder's folded; the encoder's are attributes
    x = torch.rand(2, 3, 64, 32)
    with torch.no_grad():
        expected = model.eval()(x).numpy()
        # float32 rounding through 34 layers grows with the activations (outputs up to ~10 here):
        # on an AVX2-only CPU oneDNN's kernels differ by up to 5.5e-4 on the smp network
        np.testing.assert_allclose(fused(x).numpy(), expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


def test_architecture_registry():
    assert set(ARCHITECTURES) >= {"unet", "smp"}
    assert build_model({**TINY, "head": "sigmoid"}).head.out_channels == 2  # head from the registry


def test_factory_rejects_bad_choices():
    for key, value in [("arch", "fcn"), ("head", "linear"), ("upsampling", "pixelshuffle")]:
        with pytest.raises(NucleiError, match=f"model.{key}"):
            build_model({**TINY, key: value})
    with pytest.raises(NucleiError, match="model.encoder"):
        build_model({**SMP, "encoder": "no-such-encoder"})


def test_same_seed_same_weights_and_parameter_count():
    torch.manual_seed(0)
    a = build_model(TINY)
    torch.manual_seed(0)
    b = build_model(TINY)
    assert all(
        torch.equal(p, q) for p, q in zip(a.state_dict().values(), b.state_dict().values(), strict=True)
    )
    wider = build_model({**TINY, "width": 8})
    assert count_parameters(a) == sum(p.numel() for p in a.parameters())
    assert 3.5 < count_parameters(wider) / count_parameters(a) < 4.1  # conv weights scale as width²


def test_local_encoder_weights(tmp_path):
    torch.manual_seed(1)
    source = build_model(SMP)
    file = tmp_path / "resnet18_encoder.pt"
    torch.save({"state_dict": {f"encoder.{k}": v for k, v in source.encoder.state_dict().items()}}, file)
    model = build_model({**SMP, "encoder_weights": str(file)})
    for k, v in source.encoder.state_dict().items():
        assert torch.equal(model.encoder.state_dict()[k], v), k
    with pytest.raises(NucleiError, match="missing.pt: encoder weights file not found"):
        build_model({**SMP, "encoder_weights": str(tmp_path / "missing.pt")})
    partial = dict(source.encoder.state_dict())
    partial.pop("conv1.weight")
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(
        NucleiError, match=r"partial.pt: encoder weights do not fit.*missing keys: conv1.weight"
    ):
        build_model({**SMP, "encoder_weights": str(tmp_path / "partial.pt")})
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    with pytest.raises(NucleiError, match="junk.pt: corrupt or truncated"):
        build_model({**SMP, "encoder_weights": str(tmp_path / "junk.pt")})


def trained_tiny(head="softmax"):
    """A tiny U-Net with non-trivial batch-norm statistics, in eval mode."""
    torch.manual_seed(2)
    model = build_model({**TINY, "head": head})
    with torch.no_grad():
        model(torch.rand(4, 3, 16, 16) * 3)  # updates running statistics in train mode
    return model.eval()


@pytest.mark.parametrize("storage, tolerance", [("float32", 0.0), ("float16", 2e-2), ("int8", 5e-2)])
def test_save_load_round_trip(tmp_path, storage, tolerance):
    model = trained_tiny()
    model.down[0][1].running_var[0] = 1e6  # beyond float16: must stay float32
    training = {"epochs": 1, "data": tmp_path, "score": np.float64(0.25), "size": (256, 256)}
    config = {"model": TINY, "postprocess": {"marker_threshold": 0.5}, "training": training}
    save_model_dir(tmp_path / "m", model, config, storage=storage, int8_min_elements=0)  # every weight
    assert sorted(p.name for p in (tmp_path / "m").iterdir()) == ["config.yaml", "weights.pt"]
    loaded, cfg = load_model_dir(tmp_path / "m")
    assert not loaded.training
    assert cfg.format_version == 1 and cfg.model.depth == 2
    assert cfg.postprocess.marker_threshold == 0.5 and cfg.postprocess.min_size == PostprocessConfig.min_size
    data = Path(os.path.relpath(tmp_path, ROOT)).as_posix()  # absolute paths are written relative
    assert cfg.training == {"epochs": 1, "data": data, "score": 0.25, "size": [256, 256]}
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    assert loaded.down[0][1].running_var[0] == 1e6
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        expected, got = model(x), loaded(x)
    assert torch.allclose(expected, got, atol=tolerance, rtol=0)
    if storage == "float32":
        assert torch.equal(expected, got)


def test_int8_storage_is_a_quarter_and_within_half_a_step_per_channel(tmp_path):
    torch.manual_seed(0)
    model = build_model({**TINY, "width": 32}).eval()
    with torch.no_grad():
        model.down[0][0].weight[1] = 0.0  # a channel of zeros stays zeros
        model.down[0][0].weight[2] *= 1000  # channels have their own scales
    sizes = {}
    for storage in ("float32", "float16", "int8"):
        save_model_dir(tmp_path / storage, model, {"model": {**TINY, "width": 32}}, storage=storage,
                       int8_min_elements=100)  # every convolution of the tiny network
        sizes[storage] = (tmp_path / storage / "weights.pt").stat().st_size
    assert sizes["int8"] < 0.3 * sizes["float32"] and sizes["int8"] < 0.6 * sizes["float16"]
    stored = torch.load(tmp_path / "int8" / "weights.pt", weights_only=True)
    assert stored["down.0.0.weight"].dtype == torch.int8 and stored["down.0.0.weight:scale"].shape == (32,)
    assert stored["down.0.1.weight"].dtype == torch.float16  # vectors (batch norm) stay float16
    loaded, _ = load_model_dir(tmp_path / "int8")
    for key, value in model.state_dict().items():
        got = loaded.state_dict()[key]
        if value.ndim >= 2:  # at most half a step of the channel's largest magnitude / 127
            step = value.abs().reshape(len(value), -1).amax(dim=1) / 127
            error = (got - value).abs().reshape(len(value), -1).amax(dim=1)
            assert bool((error <= step / 2 + 1e-6 * step.clamp(min=1)).all()), key
    assert not loaded.down[0][0].weight[1].any()


def test_int8_storage_keeps_small_tensors_float16(tmp_path):
    model = build_model({**TINY, "depth": 3, "width": 64}).eval()  # three tensors of 2^20 or more weights
    save_model_dir(tmp_path, model, {"model": {**TINY, "depth": 3, "width": 64}}, storage="int8")
    stored = torch.load(tmp_path / "weights.pt", weights_only=True)
    quantised = sorted(k for k, v in stored.items() if v.dtype == torch.int8)
    assert quantised == sorted(k for k, v in model.state_dict().items() if v.numel() >= model_dir.INT8_MIN_ELEMENTS)
    assert quantised and all(stored[k].dtype == torch.float16 for k, v in model.state_dict().items()
                             if v.is_floating_point() and k not in quantised)


def test_scales_that_do_not_fit_their_tensor_are_refused(tmp_path):
    model = build_model(TINY).eval()
    save_model_dir(tmp_path, model, {"model": TINY}, storage="int8", int8_min_elements=0)
    config = yaml.safe_load((tmp_path / "config.yaml").read_text())
    state = torch.load(tmp_path / "weights.pt", weights_only=True)
    state["down.0.0.weight:scale"] = state["down.0.0.weight:scale"][:2]
    torch.save(state, tmp_path / "weights.pt")
    config["weights_sha256"] = None
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
    with pytest.raises(NucleiError, match=r"weights\.pt: down\.0\.0\.weight:scale \(2,\) does not scale down\.0\.0\.weight"):
        load_model_dir(tmp_path)
    with pytest.raises(NucleiError, match="weights storage 'int4'"):
        save_model_dir(tmp_path / "x", model, {"model": TINY}, storage="int4")


def test_save_unwraps_wrappers_and_clears_encoder_weights(tmp_path):
    class Wrapper(torch.nn.Module):  # like DistributedDataParallel: the model under .module
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = trained_tiny()
    save_model_dir(tmp_path, Wrapper(model), {"model": {**TINY, "encoder_weights": "/x.pt"}}, storage="float32")
    loaded, cfg = load_model_dir(tmp_path)
    assert cfg.model.encoder_weights is None
    assert torch.equal(loaded.head.weight, model.head.weight)


def absolute_strings(obj) -> list[str]:
    """Every string in nested mappings / lists that is an absolute path on any system."""
    if isinstance(obj, dict):
        return [s for v in obj.values() for s in absolute_strings(v)]
    if isinstance(obj, list):
        return [s for v in obj for s in absolute_strings(v)]
    is_path = isinstance(obj, str) and (PurePosixPath(obj).is_absolute() or PureWindowsPath(obj).is_absolute())
    return [obj] if is_path else []


def test_saved_provenance_holds_no_absolute_path(tmp_path):
    root = Path(ROOT)
    training = {
        "params": {"data": {"root": root.parent / "shared" / "dsb2018" / "stage1_train",
                            "prepared": "data/prepared"},
                   "train": {"init": str(root / "pipeline" / "shipped" / "model"), "out": tmp_path / "run"}},
        "sources": [str(root / "models" / "a"), "models/b"],
        "note": "trained on /work at night",  # prose that mentions a path is left alone
    }
    save_model_dir(tmp_path / "m", trained_tiny(), {"model": TINY, "training": training})
    written = yaml.safe_load((tmp_path / "m" / "config.yaml").read_text())
    assert absolute_strings(written) == []
    params = written["training"]["params"]
    assert params["data"] == {"root": "../shared/dsb2018/stage1_train", "prepared": "data/prepared"}
    assert params["train"]["init"] == "pipeline/shipped/model"
    assert (root / params["train"]["out"]).resolve() == (tmp_path / "run").resolve()
    assert written["training"]["sources"] == ["models/a", "models/b"]
    assert written["training"]["note"] == "trained on /work at night"
    load_model_dir(tmp_path / "m")  # the checksum still matches


def test_portable_paths_of_another_system_keep_the_name():
    assert portable_paths({"a": ["C:\\runs\\final", 3, None]}, root="/repo") == {"a": ["final", 3, None]}
    if os.name != "nt":
        assert portable_paths("/repo/models/x", root="/repo") == "models/x"


def test_shipped_model_config_holds_no_absolute_path():
    config = yaml.safe_load((Path(ROOT) / "pipeline" / "shipped" / "model" / "config.yaml").read_text())
    assert absolute_strings(config) == []


def test_load_rejects_damaged_directories(tmp_path):
    model_dir = tmp_path / "m"
    with pytest.raises(NucleiError, match="model directory not found"):
        load_model_dir(model_dir)
    save_model_dir(model_dir, trained_tiny(), {"model": TINY})
    weights, config_file = model_dir / "weights.pt", model_dir / "config.yaml"
    good_weights, good_config = weights.read_bytes(), config_file.read_text()

    weights.write_bytes(good_weights[: len(good_weights) // 2])  # truncated
    with pytest.raises(NucleiError, match=r"weights.pt: .*(checksum|truncated)"):
        load_model_dir(model_dir)
    config = yaml.safe_load(good_config)
    del config["weights_sha256"]  # without a checksum torch.load itself must fail cleanly
    config_file.write_text(yaml.safe_dump(config))
    with pytest.raises(NucleiError, match="weights.pt: corrupt or truncated weights file"):
        load_model_dir(model_dir)

    weights.write_bytes(good_weights)
    config_file.write_text(yaml.safe_dump({**config, "model": {**TINY, "width": 8}}))
    with pytest.raises(NucleiError, match=r"config.yaml: the model section \(arch unet, depth 2, width 8\) does not fit "
                                          r"weights.pt \(weights.pt holds depth 2, width 4\)"):
        load_model_dir(model_dir)
    config_file.write_text(yaml.safe_dump({**config, "model": {**TINY, "depth": 3}}))
    with pytest.raises(NucleiError, match=r"config.yaml: the model section \(arch unet, depth 3, width 4\) does not fit "
                                          r"weights.pt \(weights.pt holds depth 2, width 4\): missing: down.3"):
        load_model_dir(model_dir)

    config_file.write_text(yaml.safe_dump({**config, "format_version": 99}))
    with pytest.raises(NucleiError, match="config.yaml: format_version 99 is not supported"):
        load_model_dir(model_dir)
    config_file.write_text(yaml.safe_dump({"format_version": 1}))
    with pytest.raises(NucleiError, match="config.yaml: no 'model' section"):
        load_model_dir(model_dir)
    config_file.write_text("model: [unclosed")
    with pytest.raises(NucleiError, match="config.yaml: unreadable"):
        load_model_dir(model_dir)
    config_file.unlink()
    with pytest.raises(NucleiError, match="config.yaml: missing"):
        load_model_dir(model_dir)
    config_file.write_text(good_config)
    weights.unlink()
    with pytest.raises(NucleiError, match="weights.pt: missing"):
        load_model_dir(model_dir)
