"""pipeline.model.widen: a plain U-Net widened without changing what it computes."""

import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.errors import NucleiError
from pipeline.model.model_dir import load_model_dir, save_model_dir
from pipeline.model.networks import build_model
from pipeline.model.widen import widen_model_dir, widen_state

from ..hostile import nuclei_cli


def trained_like(cfg: dict, seed: int = 0) -> torch.nn.Module:
    """A network with random weights and moved batch-norm statistics, in eval mode."""
    torch.manual_seed(seed)
    model = build_model(cfg)
    with torch.no_grad():
        for _ in range(3):
            model(torch.rand(2, 3, 32, 32) * 3)  # train mode: running statistics move
    return model.eval()


@pytest.mark.parametrize("upsampling", ["transpose", "bilinear"])
@pytest.mark.parametrize("width", [5, 8])
def test_a_widened_network_computes_what_it_computed_in_inference_and_training(upsampling, width):
    """Every output of the wider network equals the narrow one's, in eval mode (running statistics)
    and in training mode (batch statistics), for the concatenating decoder and either upsampling."""
    cfg = {"arch": "unet", "head": "sigmoid", "depth": 3, "width": 4, "upsampling": upsampling}
    narrow = trained_like(cfg)
    wide = build_model(cfg | {"width": width})
    wide.load_state_dict(widen_state(narrow, wide))
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(wide.eval()(x), narrow.eval()(x), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(wide.train()(x), narrow.train()(x), atol=1e-5, rtol=1e-5)
    assert sum(p.numel() for p in wide.parameters()) > sum(p.numel() for p in narrow.parameters())


def test_the_new_channels_learn():
    """The zeros that keep the old channels blind to the new ones get gradients (no dead units), and
    the new channels' own filters are not zero."""
    cfg = {"arch": "unet", "head": "sigmoid", "depth": 2, "width": 4, "upsampling": "transpose"}
    narrow = trained_like(cfg)
    wide = build_model(cfg | {"width": 6})
    wide.load_state_dict(widen_state(narrow, wide))
    wide.train()(torch.rand(2, 3, 16, 16)).square().mean().backward()
    head = wide.head.weight
    assert torch.all(head.detach()[:, 4:] == 0)  # the head reads only the old channels at first
    assert head.grad[:, 4:].abs().sum() > 0  # and will learn to read the new ones
    conv = wide.down[1][0].weight  # (8 -> 12 out, 4 -> 6 in)
    assert torch.all(conv.detach()[:8, 4:] == 0) and conv.detach()[8:].abs().sum() > 0
    assert conv.grad[:8, 4:].abs().sum() > 0


def test_widen_model_dir_and_the_command(tmp_path, capsys):
    cfg = {"arch": "unet", "head": "sigmoid", "depth": 2, "width": 4, "upsampling": "transpose"}
    source = save_model_dir(tmp_path / "narrow", trained_like(cfg), {
        "model": cfg, "postprocess": {"mask_threshold": 0.6}, "diameter": 20.0, "training": {"epochs": 3}}, storage="float32")
    assert main(["widen", str(source), "--width", "6", "-o", str(tmp_path / "wide")]) == 0
    assert "widened to width 6" in capsys.readouterr().out
    wide, config = load_model_dir(tmp_path / "wide")
    narrow, _ = load_model_dir(source)
    assert config.model.width == 6 and config.postprocess.mask_threshold == 0.6 and config.diameter == 20.0
    recorded = yaml.safe_load((tmp_path / "wide" / "config.yaml").read_text())["training"]["widened"]
    assert recorded["width"] == 4 and recorded["training"] == {"epochs": 3}
    x = torch.rand(1, 3, 32, 32)
    with torch.no_grad():  # weights stored in half precision, as shipped: the old ones were already
        torch.testing.assert_close(wide(x), narrow(x), atol=2e-3, rtol=2e-3)


def test_what_cannot_be_widened_is_refused_in_one_line(tmp_path, capsys):
    cfg = {"arch": "unet", "head": "sigmoid", "depth": 2, "width": 4, "upsampling": "transpose"}
    source = save_model_dir(tmp_path / "narrow", trained_like(cfg), {"model": cfg})
    with pytest.raises(NucleiError, match="width 4: expected a width above the network's 4"):
        widen_model_dir(source, tmp_path / "w", 4)
    with pytest.raises(NucleiError, match="is the source"):
        widen_model_dir(source, source, 8)
    smp_cfg = {"arch": "smp", "head": "sigmoid", "encoder": "resnet18", "depth": 5, "width": 16}
    smp = save_model_dir(tmp_path / "smp", build_model(smp_cfg).eval(), {"model": smp_cfg})
    assert main(["widen", str(smp), "--width", "32", "-o", str(tmp_path / "w")]) != 0
    err = capsys.readouterr().err
    assert "only a plain 'unet' is widened" in err and "Traceback" not in err


def widen_cli(capsys, *argv) -> tuple[int, str]:
    return nuclei_cli(capsys, "widen", *argv)


@pytest.mark.hostile
@pytest.mark.parametrize("width", ["100000", "0", "-3", "8", "16", "many"])
def test_a_width_that_cannot_be_is_a_usage_error_before_any_work(tmp_path, capsys, width):
    cfg = {"arch": "unet", "head": "sigmoid", "depth": 2, "width": 16, "upsampling": "transpose"}
    source = save_model_dir(tmp_path / "narrow", trained_like(cfg), {"model": cfg})
    status, err = widen_cli(capsys, source, "--width", width, "-o", tmp_path / "w")
    assert status == 2, err
    assert "Traceback" not in err and "width" in err.strip().splitlines()[-1]
    assert not (tmp_path / "w").exists()


@pytest.mark.hostile
def test_widen_into_its_source_or_beyond_the_memory_is_a_usage_error(tmp_path, capsys, monkeypatch):
    cfg = {"arch": "unet", "head": "sigmoid", "depth": 2, "width": 4, "upsampling": "transpose"}
    source = save_model_dir(tmp_path / "narrow", trained_like(cfg), {"model": cfg})
    status, err = widen_cli(capsys, source, "--width", 8, "-o", source)
    assert status == 2 and "is the source" in err, err
    from pipeline.model import runtime

    monkeypatch.setattr(runtime, "available_memory", lambda: 1_000_000)  # 1 MB left
    status, err = widen_cli(capsys, source, "--width", 512, "-o", tmp_path / "w")
    assert status == 2 and "too large for this machine" in err and "Traceback" not in err, err
    assert not (tmp_path / "w").exists()
