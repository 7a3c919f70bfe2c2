"""A model folder's ``config.yaml`` (:mod:`pipeline.config.model_folder`): one schema, read and
checked in one place, lossless when written and read back, one-line errors naming file and key."""

from __future__ import annotations

import pytest
import yaml

from pipeline.cli import main as cli_main
from pipeline.config.model_folder import (
    NORMALIZATION,
    ModelDirConfig,
    NormalizationConfig,
    read_model_config,
)
from pipeline.config.params import ROOT, ModelConfig, PostprocessConfig
from pipeline.errors import NucleiError

SHIPPED = ROOT / "pipeline" / "shipped" / "model"
TINY = {"arch": "unet", "head": "sigmoid", "depth": 2, "width": 4, "upsampling": "transpose"}


def write_config(folder, values) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))


def shipped_values() -> dict:
    return yaml.safe_load((SHIPPED / "config.yaml").read_text())


def test_the_shipped_config_reads_and_writes_back_unchanged():
    config = read_model_config(SHIPPED)
    assert isinstance(config.model, ModelConfig) and isinstance(config.postprocess, PostprocessConfig)
    assert (config.diameter, config.stained_diameter, config.user_diameter) == (20.0, 24.0, None)
    assert config.normalization == NormalizationConfig(low=1.0, high=99.8, saturation=True)
    assert len(config.weights_sha256) == 64 and config.training["epochs"] == 8
    values = shipped_values()
    assert config.to_dict() == values  # every key it carries, every value (the order aside)
    assert ModelDirConfig.from_dict(yaml.safe_load(yaml.safe_dump(config.to_dict())), "x") == config


def test_write_then_read_is_lossless(tmp_path):
    from pipeline.model.model_dir import load_model_dir, save_model_dir
    from pipeline.model.networks import build_model

    config = ModelDirConfig(model=TINY, postprocess={"mask_threshold": 0.6, "flood": "distance"},
                            normalization={"low": 0.5, "high": 99.0, "saturation": False}, diameter=18,
                            stained_diameter=22.5, user_diameter=11.25,
                            training={"epochs": 2, "scores": {"dsb": 0.5}, "data": ["models/a", None]})
    save_model_dir(tmp_path / "m", build_model(config.model), config)
    model, loaded = load_model_dir(tmp_path / "m")
    assert loaded == config.replace(weights_sha256=loaded.weights_sha256)
    assert loaded.diameter == 18.0 and isinstance(loaded.diameter, float)
    assert read_model_config(tmp_path / "m") == loaded
    save_model_dir(tmp_path / "again", model, loaded, storage="float16")
    assert read_model_config(tmp_path / "again").to_dict() == loaded.to_dict()


def test_writers_cannot_build_a_config_that_would_not_read_back():
    config = ModelDirConfig(model=TINY, diameter=20.0)
    with pytest.raises(NucleiError, match="diameter must be a positive number, got 0"):
        config.replace(diameter=0)
    with pytest.raises(NucleiError, match="stained_diameter needs a diameter"):
        config.replace(diameter=None, stained_diameter=24.0)
    with pytest.raises(NucleiError, match=r"postprocess\.min_size must be a whole number"):
        config.replace(postprocess={"min_size": 2.5})
    assert ModelDirConfig(model={**TINY, "encoder_weights": "/x.pt"}).model.encoder_weights is None


@pytest.mark.parametrize("change, message", [
    ({"diameter": "twenty"}, "diameter must be a positive number, got 'twenty'"),
    ({"diameter": -5}, "diameter must be a positive number, got -5"),
    ({"diameter": True}, "diameter must be a positive number, got True"),
    ({"diameter": None, "stained_diameter": 24.0}, "stained_diameter needs a diameter"),
    ({"stained_diameter": "big"}, "stained_diameter must be a positive number, got 'big'"),
    ({"user_diameter": 0}, "user_diameter must be a positive number, got 0"),
    ({"normalization": {"low": 50, "high": 10}}, r"normalization\.low \(50\) must be below normalization\.high \(10\)"),
    ({"normalization": {"low": "one"}}, r"normalization\.low must be a number in \[0, 100\], got 'one'"),
    ({"normalization": {"high": 101}}, r"normalization\.high must be a number in \[0, 100\], got 101"),
    ({"normalization": {"saturation": "yes"}}, r"normalization\.saturation must be true or false, got 'yes'"),
    ({"normalization": {"gamma": 2}}, r"unknown key 'normalization\.gamma'"),
    ({"format_version": 2}, r"format_version 2 is not supported \(this version reads 1\)"),
    ({"postprocess": {"marker_threshold": 7.5}}, r"postprocess\.marker_threshold must be a number in \[0, 1\], got 7\.5"),
    ({"postprocess": {"flood": "water"}}, r"postprocess\.flood must be one of probability, distance, got 'water'"),
    ({"model": {"head": "linear"}}, r"model\.head must be one of .*, got 'linear'"),
    ({"model": None}, "no 'model' section"),
    ({"training": [1, 2]}, r"training must be a mapping, got \[1, 2\]"),
    ({"weights_sha256": 12}, "weights_sha256 must be a string, got 12"),
    ({"networks": "stained"}, "networks must be a list, got 'stained'"),
    ({"networks": [{"name": "he", "folder": "../other", "image_type": "histology"}]},
     r"networks\[0\]: folder must be a folder inside the model folder \(such as 'stained'\), got '\.\./other'"),
    ({"networks": [{"name": "he", "folder": "/abs/he", "image_type": "histology"}]}, r"networks\[0\]: folder must be"),
    ({"networks": [{"name": "main", "folder": "x", "image_type": "histology"}]}, r"networks\[0\]: name must be a word other than 'main'"),
    ({"networks": [{"name": "x", "folder": "x"}]}, r"networks\[0\]: no rule \(image_type or nucleus_fraction_above\)"),
    ({"networks": [{"name": "x", "folder": "x", "image_type": "tissue"}]}, r"networks\[0\]: image_type must be one or a list of"),
    ({"networks": [{"name": "x", "folder": "x", "nucleus_fraction_above": 1.0}]},
     r"networks\[0\]: nucleus_fraction_above must be a number between 0 and 1, got 1\.0"),
    ({"networks": [{"name": "x", "folder": "x", "image_type": "histology", "diameter": 3}]}, r"networks\[0\]: unknown key 'diameter'"),
    ({"networks": [{"name": "x", "folder": "a", "image_type": "histology"}, {"name": "x", "folder": "b", "image_type": "brightfield"}]},
     "networks: name 'x' given twice"),
    ({"stained_model": "stained"}, "stained_model and networks are given together"),
    ({"diamter": 20}, "unknown key 'diamter'"),
])
def test_each_invalid_value_is_one_line_naming_the_file_and_the_key(tmp_path, change, message):
    folder = tmp_path / "models" / "x"
    write_config(folder, {**shipped_values(), **change})
    with pytest.raises(NucleiError, match=message) as info:
        read_model_config(folder)
    assert str(info.value).startswith(f"{folder / 'config.yaml'}: ")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize(("change", "message"), [
    ({"stained_model": "../other"}, r"networks\[0\]: folder must be a folder inside the model folder"),
    ({"stained_model": 3}, r"networks\[0\]: folder must be a folder inside the model folder"),
    ({"dense_model": "../dense", "dense_fraction": 0.5}, r"networks\[0\]: folder must be a folder inside"),
    ({"dense_model": "dense", "dense_fraction": None}, "dense_model and dense_fraction are given together or not at all"),
    ({"dense_fraction": 0.5}, "dense_model and dense_fraction are given together or not at all"),
    ({"dense_model": "dense", "dense_fraction": 1.0}, "nucleus_fraction_above must be a number between 0 and 1, got 1.0"),
    ({"dense_model": "dense", "dense_fraction": "half"}, "nucleus_fraction_above must be a number between 0 and 1, got 'half'"),
])
def test_a_folder_written_before_networks_is_checked_the_same_way(tmp_path, change, message):
    """``stained_model``, ``dense_model`` and ``dense_fraction`` (folders written before
    ``networks``) are read as routes, with the routes' checks."""
    folder = tmp_path / "x"
    write_config(folder, {**{k: v for k, v in shipped_values().items() if k != "networks"}, **change})
    with pytest.raises(NucleiError, match=message) as info:
        read_model_config(folder)
    assert str(info.value).startswith(f"{folder / 'config.yaml'}: ") and "\n" not in str(info.value)


def test_a_folder_written_before_networks_reads_as_its_routes(tmp_path):
    """The default's routes, written the old way, read as the same routes and write back as ``networks``."""
    from pipeline.config.params import HISTOLOGY, IMAGE_TYPES
    from pipeline.config.routing import Route

    values = {k: v for k, v in shipped_values().items() if k != "networks"}
    write_config(tmp_path / "old", {**values, "stained_model": "stained", "dense_model": "dense", "dense_fraction": 0.5})
    old = read_model_config(tmp_path / "old")
    unstained = tuple(t for t in IMAGE_TYPES if t != HISTOLOGY)  # stained images were never run again
    assert old.routes == (Route("stained", "stained", (HISTOLOGY,)), Route("dense", "dense", unstained, 0.5))
    assert old.to_dict()["networks"][1] == {"name": "dense", "folder": "dense", "image_type": list(unstained),
                                            "nucleus_fraction_above": 0.5}
    assert "stained_model" not in old.to_dict()
    write_config(tmp_path / "plain", values)  # one network
    assert read_model_config(tmp_path / "plain").networks == (old.networks[0],) and old.networks[0].name == "main"


def test_unreadable_folders_keep_their_messages(tmp_path):
    folder = tmp_path / "m"
    with pytest.raises(NucleiError, match="m: model directory not found"):
        read_model_config(folder)
    folder.mkdir()
    with pytest.raises(NucleiError, match=r"config\.yaml: missing \(not a model directory\)"):
        read_model_config(folder)
    for text, message in (("model: [unclosed", "unreadable"), ("- 1\n", "expected a mapping"),
                          ("model: {}\n", "no format_version"), ("format_version: 1\n", "no 'model' section")):
        (folder / "config.yaml").write_text(text)
        with pytest.raises(NucleiError, match=rf"config\.yaml: {message}"):
            read_model_config(folder)


def test_diameter_for_stained_and_other_images():
    from pipeline.config.params import HISTOLOGY, IMAGE_TYPES
    stained = ModelDirConfig(model=TINY, diameter=20.0, stained_diameter=24.0)
    plain = ModelDirConfig(model=TINY, diameter=20.0)
    for image_type in IMAGE_TYPES:
        assert stained.diameter_for(image_type) == (24.0 if image_type == HISTOLOGY else 20.0)
        assert plain.diameter_for(image_type) == 20.0
    assert stained.diameter_for(None) == 20.0
    assert ModelDirConfig(model=TINY).diameter_for(HISTOLOGY) is None  # no rescaling


def test_old_model_folders_keep_plain_percentiles():
    """A folder written before the saturation rule does not say ``saturation``: it gets false."""
    old = ModelDirConfig.from_dict({"model": TINY, "normalization": {"low": 1.0, "high": 99.8}})
    assert old.normalization.to_dict() == {"low": 1.0, "high": 99.8, "saturation": False}
    assert ModelDirConfig.from_dict({"model": TINY}).normalization.saturation is False
    assert ModelDirConfig(model=TINY).normalization.to_dict() == NORMALIZATION  # new models
    assert NORMALIZATION == {"low": 1.0, "high": 99.8, "saturation": True}


def test_segment_reads_the_model_folder_through_the_schema(tmp_path):
    from pipeline.model.segmenter import Segmenter

    folder = tmp_path / "bad"
    write_config(folder, {**shipped_values(), "stained_diameter": -1})
    with pytest.raises(NucleiError, match=r"bad/config\.yaml: stained_diameter must be a positive number, got -1"):
        Segmenter.from_model_dir(folder, device="cpu")


def test_finetune_on_a_model_folder_with_a_bad_diameter_is_a_one_line_usage_error(tmp_path, capsys):
    """It was a TypeError traceback: the diameter reached the arithmetic unchecked."""
    import numpy as np
    import tifffile
    from PIL import Image

    base = tmp_path / "base"
    write_config(base, {**shipped_values(), "diameter": "twenty"})
    (tmp_path / "labels").mkdir()
    labels = np.zeros((64, 64), np.uint16)
    for k in range(6):
        labels[4 + 10 * k : 10 + 10 * k, 4:10] = k + 1
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "img.png")
    tifffile.imwrite(tmp_path / "labels" / "img.tif", labels)
    args = ["finetune", str(tmp_path / "img.png"), "--labels", str(tmp_path / "labels"), "-o", str(tmp_path / "out"),
            "--model", str(base), "--device", "cpu"]
    assert cli_main(args) == 2
    err = capsys.readouterr().err
    assert err == f"nuclei: error: {base / 'config.yaml'}: diameter must be a positive number, got 'twenty'\n"
    assert not (tmp_path / "out").exists()


def test_each_shipped_model_is_found_by_its_name_and_loads_with_its_own_thresholds(tmp_path, monkeypatch):
    """``default`` and ``he`` name the package's folders wherever a model folder is asked for; the H&E
    variant is the default's stained network trained further, so it shares that network's architecture
    and the default's scales; a folder that happens to be called ``he`` is given as ``./he``."""
    from pipeline.model.model_dir import load_model_dir
    from pipeline.shipped import DEFAULT_MODEL, HE_MODEL, SHIPPED_MODELS, model_folder

    assert model_folder(DEFAULT_MODEL) == SHIPPED and model_folder(HE_MODEL) == SHIPPED.parent / "he"
    assert set(SHIPPED_MODELS) == {DEFAULT_MODEL, HE_MODEL}
    default, he = read_model_config(DEFAULT_MODEL), read_model_config(HE_MODEL)
    stained = read_model_config(default.network_folder(DEFAULT_MODEL, default.route("stained")))
    assert he.model == stained.model != default.model and (he.diameter, he.stained_diameter) == (default.diameter, default.stained_diameter)
    assert he.weights_sha256 != default.weights_sha256
    assert set(he.training["params"]["data"]["sources"]) >= {"he_monuseg2018_train", "he_gbm40"}
    network, config = load_model_dir(HE_MODEL)  # the checksum is verified on loading
    assert config == he and sum(p.numel() for p in network.parameters()) > 17_000_000
    monkeypatch.chdir(tmp_path)
    assert model_folder("./he").resolve() == (tmp_path / "he").resolve()
