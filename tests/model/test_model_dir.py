"""A model folder that says absurd things (pipeline.model.model_dir, read by segment and
finetune): one line naming the file, with the exit status of docs/bad-input.md."""

from __future__ import annotations

import os

import pytest

from pipeline.errors import NucleiError

from ..hostile import annotated_folder, edited_model, finetune_cli, one_error_line, segment_cli

BAD_FOLDERS = {
    "diameter: twenty": ({"diameter": "twenty"}, "diameter must be a positive number"),
    "diameter: -5": ({"diameter": -5}, "diameter must be a positive number"),
    "diameter: 1e300": ({"diameter": 1e300}, "diameter must be"),
    "depth 12": ({"model__depth": 12}, "model.depth must be at most"),
    "width 100,000": ({"model__width": 100_000}, "model.width must be at most"),
    "depth 6, weights of depth 2": ({"model__depth": 6}, "does not fit weights.pt"),
    "width 64, weights of width 4": ({"model__width": 64}, "does not fit weights.pt"),
}


@pytest.mark.parametrize("case", list(BAD_FOLDERS))
@pytest.mark.hostile
def test_segment_and_finetune_refuse_an_absurd_model_folder_in_one_line(case, model_dir, tmp_path, capsys):
    changes, words = BAD_FOLDERS[case]
    folder = edited_model(model_dir, tmp_path, "my_model", **changes)
    image = annotated_folder(tmp_path, n=1)[0]
    status, err = segment_cli(capsys, image, "-o", tmp_path / "out", "--model", folder)
    line = one_error_line(err, words, str(folder))  # the folder the user gave
    assert status == 2, line
    status, err = finetune_cli(capsys, image, "--labels", tmp_path / "labels", "-o", tmp_path / "ft",
                               "--model", folder, "--guard", "none", "--device", "cpu")
    line = one_error_line(err, words, str(folder))
    assert status == 2, line
    assert not (tmp_path / "ft").exists()


@pytest.mark.hostile
def test_a_mismatch_names_what_the_weights_hold(model_dir, tmp_path):
    from pipeline.model.model_dir import read_model_dir

    folder = edited_model(model_dir, tmp_path, model__depth=6, model__width=64)
    with pytest.raises(NucleiError) as info:
        read_model_dir(folder)
    assert "weights.pt holds depth 2, width 4" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["weights.pt", "config.yaml"])
@pytest.mark.hostile
def test_a_sparse_file_of_many_gigabytes_is_refused_by_its_size(name, model_dir, tmp_path, capsys):
    folder = edited_model(model_dir, tmp_path, "sparse")
    os.truncate(folder / name, 8 * 2**30)  # 8 GiB that take no room on disk
    image = annotated_folder(tmp_path, n=1)[0]
    status, err = segment_cli(capsys, image, "-o", tmp_path / "out", "--model", folder)
    assert status == 2
    one_error_line(err, str(folder / name), "8.6 GB", "at most")
    status, err = finetune_cli(capsys, image, "--labels", tmp_path / "labels", "-o", tmp_path / "ft",
                               "--model", folder, "--guard", "none")
    assert status == 2
    one_error_line(err, str(folder / name), "8.6 GB")


@pytest.mark.parametrize("error", [
    RuntimeError("[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: "
                 "you tried to allocate 36000000000000 bytes. Error code 12 (Cannot allocate memory)"),
    MemoryError(),
])
@pytest.mark.hostile
def test_a_memory_error_while_building_is_too_large_for_this_machine(error, model_dir, tmp_path, monkeypatch):
    import pipeline.model.model_dir as module
    from pipeline.model.model_dir import load_model_dir

    def build(cfg):
        raise error

    monkeypatch.setattr(module, "build_model", build)
    with pytest.raises(NucleiError) as info:
        load_model_dir(model_dir)
    message = str(info.value)
    assert message.startswith(str(model_dir)) and "too large for this machine" in message and "\n" not in message
    if isinstance(error, RuntimeError):
        assert "36.0 TB" in message  # the size asked for
    else:
        assert "parameters" in message  # the network's size


@pytest.mark.hostile
def test_a_network_larger_than_the_memory_is_refused_before_it_is_built(model_dir, monkeypatch):
    import pipeline.model.model_dir as module
    import pipeline.model.runtime as runtime
    from pipeline.model.model_dir import load_model_dir

    monkeypatch.setattr(runtime, "available_memory", lambda: 1000)  # bytes
    monkeypatch.setattr(module, "build_model", lambda cfg: pytest.fail("built"))
    with pytest.raises(NucleiError, match="too large for this machine") as info:
        load_model_dir(model_dir)
    assert str(model_dir) in str(info.value) and "parameters" in str(info.value)


@pytest.mark.hostile
def test_an_architecture_not_buildable_without_memory_is_checked_when_loaded(model_dir, monkeypatch):
    """smp's ``mit_b*`` encoders call ``.item()`` while they are built: no meta-device check for them."""
    import torch

    import pipeline.model.networks as networks
    from pipeline.model.model_dir import load_model_dir, read_model_dir

    build = networks.build_model

    def item_on_meta(cfg):
        if torch.empty(0).device.type == "meta":
            raise RuntimeError("Tensor.item() cannot be called on meta tensors")
        return build(cfg)

    monkeypatch.setattr(networks, "build_model", item_on_meta)
    config, state = read_model_dir(model_dir)
    assert config.model.arch == "unet" and state
    model, _ = load_model_dir(model_dir)
    assert next(model.parameters()).device.type == "cpu"


@pytest.mark.hostile
def test_an_allocator_error_while_running_is_one_line(model_dir):
    from pipeline.model.runtime import memory_guard

    with pytest.raises(NucleiError) as info, memory_guard("my_model"):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2415919104 bytes.")
    assert str(info.value) == "my_model: too large for this machine (asked for 2.4 GB at once)"
    with pytest.raises(ValueError), memory_guard("my_model"):  # other errors pass through
        raise ValueError("not memory")
