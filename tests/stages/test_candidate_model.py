"""``scripts/candidate_model.py``: a model folder with one network's weights from a training run,
the rest of the folder as it was (the candidate measured paired before it ships)."""

from __future__ import annotations

import pytest
import torch

from pipeline.errors import NucleiError
from pipeline.model.model_dir import load_model_dir
from pipeline.training.checkpoints import save_checkpoint
from scripts.candidate_model import candidate_model

from ..conftest import add_stained_network, save_threshold_model, threshold_unet


def _changed_state() -> dict:
    state = threshold_unet().state_dict()
    state["head.bias"] = state["head.bias"] + 1.5
    return state


def _quantised(folder):
    """``folder`` as if ``nuclei quantise`` had run on it: an int8 network made from its weights."""
    import yaml

    (folder / "network_int8.xml").write_text("<net/>")
    (folder / "network_int8.bin").write_bytes(b"0")
    config = yaml.safe_load((folder / "config.yaml").read_text())
    (folder / "config.yaml").write_text(yaml.safe_dump({**config, "int8_network": "network_int8.xml"}, sort_keys=False))


def test_one_network_takes_the_runs_weights_and_the_rest_stays(tmp_path):
    folder = add_stained_network(save_threshold_model(tmp_path / "model"), save_threshold_model(tmp_path / "s"))
    _quantised(folder)
    ckpt = tmp_path / "last.ckpt"
    save_checkpoint(ckpt, {"epoch": 3, "model": _changed_state()})
    before = {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()}

    out = candidate_model(folder, ckpt, tmp_path / "cand", network="stained")
    stained, config = load_model_dir(out / "stained")
    main, main_config = load_model_dir(out)
    torch.testing.assert_close(stained.state_dict()["head.bias"], _changed_state()["head.bias"].float(),
                               atol=1e-2, rtol=0)  # stored as float16
    torch.testing.assert_close(main.state_dict()["head.bias"], threshold_unet().state_dict()["head.bias"])
    assert config.training["weights_from"].endswith("last.ckpt") and "weights_from" not in main_config.training
    assert [r.name for r in main_config.routes] == ["stained"] and config.postprocess == main_config.postprocess
    assert {p.name: p.read_bytes() for p in folder.rglob("*") if p.is_file()} == before  # the folder is untouched

    # the main network, from a model directory a run exported; its int8 file goes with the old weights
    save_threshold_model(tmp_path / "exported")
    out = candidate_model(folder, tmp_path / "exported", tmp_path / "cand_main")
    assert not (out / "network_int8.xml").exists() and not (out / "network_int8.bin").exists()
    assert load_model_dir(out)[1].int8_network is None and (out / "stained" / "weights.pt").exists()
    assert (tmp_path / "cand" / "network_int8.xml").exists()  # the stained candidate kept the main one's


def test_refuses_an_existing_folder_an_unknown_network_another_architecture_and_a_bad_file(tmp_path):
    folder = save_threshold_model(tmp_path / "model")
    ckpt = tmp_path / "last.ckpt"
    save_checkpoint(ckpt, {"model": _changed_state()})
    (tmp_path / "taken").mkdir()
    with pytest.raises(NucleiError, match="exists"):
        candidate_model(folder, ckpt, tmp_path / "taken")
    with pytest.raises(NucleiError, match="no network 'dense'"):
        candidate_model(folder, ckpt, tmp_path / "a", network="dense")
    other = {k: v for k, v in _changed_state().items() if not k.startswith("head.")}
    save_checkpoint(ckpt, {"model": other})
    with pytest.raises(NucleiError, match="not the architecture"):
        candidate_model(folder, ckpt, tmp_path / "b")
    (tmp_path / "bad.ckpt").write_bytes(b"not a checkpoint")
    with pytest.raises(NucleiError, match="unreadable checkpoint"):
        candidate_model(folder, tmp_path / "bad.ckpt", tmp_path / "c")
    assert not any((tmp_path / name).exists() for name in "abc")  # checked before anything is written
