"""pipeline.model.average: the weighted mean of model directories (a model soup)."""

import pytest
import torch
import yaml

from pipeline.cli import main
from pipeline.config.params import ROOT
from pipeline.errors import NucleiError
from pipeline.model.average import average_model_dirs, average_state
from pipeline.model.model_dir import load_model_dir, save_model_dir
from pipeline.model.networks import build_model

from ..hostile import nuclei_cli

TINY = {"arch": "unet", "head": "sigmoid", "depth": 2, "width": 4, "upsampling": "transpose"}


def tiny_dir(path, seed, model_cfg=TINY, mask_threshold=0.5):
    """A tiny model directory with its own weights and batch-norm statistics."""
    torch.manual_seed(seed)
    model = build_model(model_cfg)
    with torch.no_grad():
        model(torch.rand(2, 3, 16, 16) * (seed + 1))  # train mode: running statistics move
    config = {"model": model_cfg, "postprocess": {"mask_threshold": mask_threshold}, "diameter": 20.0,
              "training": {"epochs": seed}}
    save_model_dir(path, model.eval(), config, storage="float32")
    return path


def test_average_state_is_the_weighted_mean_and_keeps_integer_buffers():
    a = {"w": torch.tensor([0.0, 4.0]), "n": torch.tensor(3)}
    b = {"w": torch.tensor([2.0, 0.0]), "n": torch.tensor(7)}
    mean = average_state([a, b], [1.0, 3.0])
    torch.testing.assert_close(mean["w"], torch.tensor([1.5, 1.0]))
    assert mean["n"].item() == 3  # not averaged: taken from the first
    with pytest.raises(ValueError, match="does not match"):
        average_state([a, {"w": torch.zeros(3), "n": torch.tensor(1)}], [1, 1])
    with pytest.raises(ValueError, match="non-negative"):
        average_state([a, b], [1.0, -1.0])


def test_average_of_model_dirs(tmp_path):
    a = tiny_dir(tmp_path / "a", 0, mask_threshold=0.7)
    b = tiny_dir(tmp_path / "b", 1, mask_threshold=0.3)
    out = average_model_dirs([a, b], tmp_path / "soup")
    soup, config = load_model_dir(out)
    (ma, _), (mb, _) = load_model_dir(a), load_model_dir(b)
    sa, sb = ma.state_dict(), mb.state_dict()
    differing = 0
    for key, value in soup.state_dict().items():
        if value.is_floating_point():
            # stored in half precision, as shipped
            torch.testing.assert_close(value, (sa[key] + sb[key]) / 2, atol=2e-3, rtol=2e-3)
            differing += not torch.equal(sa[key], sb[key])
    assert differing > 10  # the two sources really differ (weights and batch-norm statistics)
    assert config.postprocess.mask_threshold == 0.7  # the first source's configuration
    assert config.diameter == 20.0
    assert [s["weight"] for s in config.training["average"]] == [0.5, 0.5]
    second = config.training["average"][1]
    assert {k: second[k] for k in ("weight", "training")} == {"weight": 0.5, "training": {"epochs": 1}}
    assert (ROOT / second["source"]).resolve() == b.resolve()  # written relative to the repository
    x = torch.rand(1, 3, 16, 16)
    with torch.no_grad():
        assert not torch.allclose(soup(x), ma(x)) and not torch.allclose(soup(x), mb(x))

    # weights: all on one source gives that source back (to half precision)
    only_b, _ = load_model_dir(average_model_dirs([a, b], tmp_path / "b_only", [0.0, 2.0]))
    for key, value in only_b.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, sb[key], atol=2e-3, rtol=2e-3)


def test_average_rejects_what_cannot_be_averaged(tmp_path, capsys):
    a = tiny_dir(tmp_path / "a", 0)
    wider = tiny_dir(tmp_path / "wide", 1, model_cfg={**TINY, "width": 8})
    with pytest.raises(NucleiError, match="wide: another architecture"):
        average_model_dirs([a, wider], tmp_path / "x")
    with pytest.raises(NucleiError, match="need two or more"):
        average_model_dirs([a], tmp_path / "x")
    with pytest.raises(NucleiError, match="non-negative with a positive sum"):
        average_model_dirs([a, wider], tmp_path / "x", [1.0, -1.0])
    with pytest.raises(NucleiError, match="one of the sources"):
        average_model_dirs([a, tiny_dir(tmp_path / "b", 1)], a)
    with pytest.raises(NucleiError, match="missing: model directory not found"):
        average_model_dirs([a, tmp_path / "missing"], tmp_path / "x")
    assert main(["average", str(a), str(wider), "-o", str(tmp_path / "x")]) == 2  # a usage error, before any work
    err = capsys.readouterr().err
    assert err.startswith("nuclei: error: ") and "another architecture" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()


def test_command_line(tmp_path, capsys):
    a, b = tiny_dir(tmp_path / "a", 0), tiny_dir(tmp_path / "b", 1)
    assert main(["average", str(a), str(b), "-o", str(tmp_path / "soup"), "--weights", "3", "1"]) == 0
    assert "written to" in capsys.readouterr().out
    config = yaml.safe_load((tmp_path / "soup" / "config.yaml").read_text())
    assert [s["weight"] for s in config["training"]["average"]] == [0.75, 0.25]


def average_cli(capsys, *argv) -> tuple[int, str]:
    return nuclei_cli(capsys, "average", *argv)


@pytest.mark.hostile
@pytest.mark.parametrize("weights", [["nan", "1"], ["inf", "1"], ["1", "-1"], ["0", "0"], ["1"], ["1", "1", "1"]])
def test_bad_weights_are_a_usage_error_before_any_work(tmp_path, capsys, weights):
    a, b = tiny_dir(tmp_path / "a", 0), tiny_dir(tmp_path / "b", 1)
    status, err = average_cli(capsys, a, b, "-o", tmp_path / "soup", "--weights", *weights)
    assert status == 2, err
    assert "Traceback" not in err and "weights" in err.splitlines()[-1]
    assert not (tmp_path / "soup").exists()


@pytest.mark.hostile
def test_average_usage_errors_exit_2(tmp_path, capsys):
    a, b = tiny_dir(tmp_path / "a", 0), tiny_dir(tmp_path / "b", 1)
    for argv, words in (((a, tmp_path / "missing", "-o", tmp_path / "x"), "missing"),
                        ((a, b, "-o", a), "one of the sources")):
        status, err = average_cli(capsys, *argv)
        assert status == 2 and words in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.hostile
def test_a_network_of_non_finite_weights_is_never_written_nor_loaded(tmp_path):
    a = tiny_dir(tmp_path / "a", 0)
    model, config = load_model_dir(a)
    with torch.no_grad():
        next(model.parameters())[0] = float("nan")
    with pytest.raises(NucleiError, match="non-finite"):
        save_model_dir(tmp_path / "nan", model, config)
    assert not (tmp_path / "nan" / "weights.pt").exists()
    # a folder written elsewhere (another tool, an older version): refused on loading, one line
    state = {k: v.clone() for k, v in torch.load(a / "weights.pt").items()}
    state["down.0.0.weight"][0] = float("inf")
    torch.save(state, a / "weights.pt")
    values = yaml.safe_load((a / "config.yaml").read_text())
    values.pop("weights_sha256", None)
    (a / "config.yaml").write_text(yaml.safe_dump(values))
    with pytest.raises(NucleiError, match=r"weights.pt: .*non-finite.*down.0.0.weight"):
        load_model_dir(a)
