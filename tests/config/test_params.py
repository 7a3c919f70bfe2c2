"""Typed configuration: defaults equal params.yaml, one-line errors naming file and key."""

import dataclasses

import pytest
import yaml

from pipeline.config.params import ROOT, SECTIONS, Config, TrainConfig, as_config, load_config
from pipeline.errors import NucleiError


def test_defaults_equal_params_yaml():
    shipped = yaml.safe_load((ROOT / "params.yaml").read_text())
    assert Config().to_dict() == shipped
    assert load_config(ROOT / "params.yaml") == Config()


def test_every_section_has_a_dataclass_with_a_rule_per_key():
    assert [s.NAME for s in SECTIONS] == [k for k in Config().to_dict() if k != "seed"]
    for section in SECTIONS:
        for f in dataclasses.fields(section):
            assert callable(f.metadata.get("rule")), f"{section.NAME}.{f.name}"


def test_missing_sections_and_keys_take_the_defaults():
    config = Config.from_dict({"train": {"epochs": 3}})
    assert config.train.epochs == 3 and config.train.batch_size == TrainConfig.batch_size
    assert config.model == Config().model
    assert Config.from_dict({"targets": {"w0": 7}}).targets.w0 == 7.0  # ints become floats


@pytest.mark.parametrize(
    "params, message",
    [
        ({"train": {"amp": True}}, r"p\.yaml: unknown key 'train\.amp' \(known: out, epochs"),
        ({"trian": {}}, r"p\.yaml: unknown section 'trian'"),
        ({"train": {"batch_size": 0}}, r"p\.yaml: train\.batch_size must be a whole number ≥ 1, got 0"),
        ({"train": {"schedule": "linear"}}, r"train\.schedule must be one of onecycle, cosine, got 'linear'"),
        ({"train": {"precision": "fp8"}}, r"train\.precision must be one of auto, fp32, bf16, fp16"),
        ({"model": {"head": "linear"}}, r"model\.head must be one of softmax, sigmoid, got 'linear'"),
        ({"postprocess": {"mask_threshold": 2.0}}, r"postprocess\.mask_threshold must be a number in \[0, 1\]"),
        ({"postprocess": {"flood": "magic"}}, r"postprocess\.flood must be one of probability, distance"),
        ({"augment": {"invert": 2.0}}, r"augment\.invert must be true, false or a probability in \[0, 1\]"),
        ({"augment": {"scale": [1.2, 0.8]}}, r"augment\.scale must be null or \[low, high\]"),
        ({"augment": {"blur_sigma": [0, 2]}}, r"augment\.blur_sigma must be \[low, high\] with 0 < low"),
        ({"augment": {"blur_sigma": None}}, r"augment\.blur_sigma must be \[low, high\]"),
        ({"targets": {"sigma": "wide"}}, r"targets\.sigma must be a number > 0, got 'wide'"),
        ({"targets": {"border_radius_min": 5}}, r"need targets\.border_radius_min <= targets\.border_radius_max"),
        ({"data": {"split": "random"}}, r"data\.split must be one of stratified, grouped"),
        ({"predict": {"tta": "d8"}}, r"predict\.tta must be one of none, rot180, flips, d4, auto"),
        ({"segment": {"backend": "tensorrt"}}, r"p\.yaml: segment\.backend must be one of torch, onnxruntime, openvino, auto, "
                                              r"got 'tensorrt'"),
        ({"predict": {"backend": "ORT"}}, r"predict\.backend must be one of torch, onnxruntime, openvino, auto"),
        ({"segment": {"block_size": 100, "block_margin": 50}}, r"segment\.block_size must exceed twice"),
        ({"seed": "zero"}, r"p\.yaml: seed must be a whole number"),
    ],
)
def test_bad_values_are_one_line_errors_naming_file_and_key(params, message):
    with pytest.raises(NucleiError, match=message) as info:
        Config.from_dict(params, "p.yaml")
    assert "\n" not in str(info.value)


def test_load_config_names_the_file(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("train:\n  epochs: -1\n")
    with pytest.raises(NucleiError, match=f"{path}: train.epochs must be a whole number ≥ 1, got -1"):
        load_config(path)


def test_replace_checks_and_as_config_passes_configs_through():
    config = Config()
    assert as_config(config) is config
    assert config.train.replace(epochs=2).epochs == 2
    with pytest.raises(NucleiError, match="cli: train.epochs"):
        config.train.replace("cli", epochs=0)


@pytest.mark.parametrize("path", sorted(p.relative_to(ROOT).as_posix() for p in [
    *ROOT.glob("recipes/*.yaml"), *ROOT.glob("evaluation/*.yaml"),
    *ROOT.glob("pipeline/shipped/**/train_params*.yaml")]))
def test_committed_parameter_files_are_valid(path):
    """The recipes committed beside the code (recipes/, evaluation/, the shipped models' stages) still load:
    a renamed or removed key fails here, not on a GPU machine."""
    config = load_config(ROOT / path)
    assert config.data.sources and config.train.epochs >= 1


def test_shell_scripts_read_settings_checked_through_load_config(tmp_path):
    """``python -m scripts.param_value`` (what ``scripts/gpu_train.sh`` reads its paths with) prints the
    checked values, defaults included, and refuses an unknown setting or an invalid file in one line."""
    import subprocess
    import sys

    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({"seed": 3, "data": {"prepared": "elsewhere/prepared"}}))
    script = [sys.executable, "-m", "scripts.param_value"]
    done = subprocess.run([*script, str(params), "data.prepared", "train.out", "seed"], capture_output=True,
                          text=True, check=True, cwd=ROOT)
    assert done.stdout.split() == ["elsewhere/prepared", TrainConfig().out, "3"]
    for args, message in [(["data.nothing"], "no setting 'data.nothing'"), (["data._fields"], "no setting")]:
        done = subprocess.run([*script, str(params), *args], capture_output=True, text=True, cwd=ROOT)
        assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr
    params.write_text(yaml.safe_dump({"data": {"folds": "five"}}))
    done = subprocess.run([*script, str(params), "data.folds"], capture_output=True, text=True, cwd=ROOT)
    assert done.returncode != 0 and "data.folds" in done.stderr and "Traceback" not in done.stderr
