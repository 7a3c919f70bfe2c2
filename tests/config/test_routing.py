"""Which network runs an image (:mod:`pipeline.config.routing`): the one rule, and a route added to
a model folder's ``config.yaml`` alone reaching every caller: ``nuclei segment`` on a plane and on
a slide, a z-stack by both methods, ``nuclei predict``/``postprocess`` and ``nuclei quantise``."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import tifffile
import yaml

from pipeline.config.routing import MAIN, MAIN_ROUTE, Route, network_for
from pipeline.errors import NucleiError

from ..conftest import add_network, counts_of, disks, run_cli, save_threshold_model

STAINED = Route("stained", "stained", ("histology",))
DENSE = Route("dense", "dense", (), 0.5)


def test_the_rule_routes_by_type_first_then_by_the_first_pass_nucleus_fraction():
    routes = (STAINED, DENSE)
    assert network_for(routes, "histology") is STAINED
    assert network_for(routes, "histology", 0.9) is STAINED  # a routed network is never run again
    assert network_for(routes, "fluo-small") is MAIN_ROUTE  # the first pass
    assert network_for(routes, "fluo-small", 0.5) is MAIN_ROUTE  # not above the fraction
    assert network_for(routes, "fluo-small", 0.51) is DENSE
    assert network_for(routes, None, 0.9) is DENSE  # a rule without types takes any image
    assert network_for((), "histology", 0.9) is MAIN_ROUTE
    typed = Route("dense", "dense", ("fluo-small",), 0.5)
    assert network_for((typed,), "fluo-large", 0.9) is MAIN_ROUTE and network_for((typed,), "fluo-small", 0.9) is typed
    first, second = Route("a", "a", ("brightfield",)), Route("b", "b", ("brightfield",))
    assert network_for((first, second), "brightfield") is first  # the first route that takes it


# --------------------------------------------------------------------------- a route in config.yaml alone


def model_with_route(tmp_path, route: bool):
    """The threshold U-Net's folder, and, when ``route``, one more network in it, ``odd``, for
    fluorescence images: the same weights with thresholds of its own that keep no nucleus
    (``min_size``), so that its use shows in every output. Only files change: a copied folder
    and a ``networks`` entry."""
    model = save_threshold_model(tmp_path / "model")
    if route:
        odd = save_threshold_model(tmp_path / "odd")
        config = yaml.safe_load((odd / "config.yaml").read_text())
        config["postprocess"]["min_size"] = 1_000_000
        (odd / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        add_network(model, odd, "odd", image_type=["fluo-small", "fluo-large"])
    return model


@pytest.mark.parametrize("route", [False, True])
def test_a_route_added_to_config_yaml_is_used_by_segment_on_planes_and_slides(tmp_path, route):
    model = model_with_route(tmp_path, route)
    image, truth = disks(shape=(96, 128))
    tifffile.imwrite(tmp_path / "plane.tif", image)
    big, _ = disks(shape=(600, 700), centres=[(100 + 120 * i, 100 + 120 * j) for i in range(4) for j in range(5)])
    tifffile.imwrite(tmp_path / "slide.tif", big, tile=(256, 256))
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"segment": {"slide_pixels": 300 * 300, "block_size": 512, "block_margin": 64}}))
    for name in ("plane", "slide"):
        assert run_cli(tmp_path / f"{name}.tif", "-o", tmp_path / name, "--model", model, "--params", params,
                       "--device", "cpu") == 0
        counts = counts_of(tmp_path / name)
        assert counts.loc[name, "status"] == "ok"
        assert (counts.loc[name, "count"] == 0) == route, name  # the routed network's own thresholds
    assert route == ("its odd network" in (tmp_path / "plane" / "report.html").read_text())
    assert (tmp_path / "slide" / "tables").is_dir()  # segmented out of core


@pytest.mark.parametrize("route", [False, True])
@pytest.mark.parametrize("method", ["stitch", "ortho"])
def test_a_route_added_to_config_yaml_is_used_for_z_stacks(tmp_path, route, method):
    from pipeline.model.segmenter import Segmenter
    from pipeline.model.stack_segmenter import segment_stack

    segmenter = Segmenter.from_model_dir(model_with_route(tmp_path, route), device="cpu", backend="torch")
    plane, truth = disks(shape=(96, 128))
    result = segment_stack(segmenter, np.stack([plane] * 4), method=method, diameter=14.0)
    assert (result.labels.max() == 0) == route and (route or result.labels.max() == truth.max())


@pytest.mark.parametrize("route", [False, True])
def test_a_route_added_to_config_yaml_is_used_by_predict_and_postprocess(tmp_path, monkeypatch, route):
    """``nuclei predict`` names the network in each prediction file, and ``nuclei postprocess``
    applies that network's thresholds (params.yaml's for the folder's own)."""
    from pipeline.data.predictions import read_prediction
    from pipeline.files.io import read_labels
    from pipeline.stages import postprocess, predict

    model = model_with_route(tmp_path, route)
    image, truth = disks(shape=(96, 128))
    rgb = np.dstack([image] * 3)
    monkeypatch.setattr(predict, "_prediction_inputs", lambda config: [("x", lambda: rgb, rgb.shape[:2])])
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({
        "predict": {"model": str(model), "out": str(tmp_path / "pred"), "tta": "none", "device": "cpu", "backend": "torch"},
        "postprocess": {"out": str(tmp_path / "post"), "marker_threshold": 0.5, "mask_threshold": 0.5}}))
    assert predict.main(argparse.Namespace(params=str(params), device=None)) == 0
    assert read_prediction(tmp_path / "pred" / "x.npz").network == ("odd" if route else MAIN)
    assert postprocess.main(argparse.Namespace(params=str(params))) == 0
    found = read_labels(tmp_path / "post" / "x.tif").max()
    assert (found == 0) == route and (route or found == truth.max())


def test_a_route_added_to_config_yaml_is_quantised_on_the_images_routed_to_it(tmp_path):
    pytest.importorskip("nncf")
    from pipeline.config.model_folder import read_model_config
    from pipeline.model.quantise import INT8_XML, quantise_model_dir

    model = model_with_route(tmp_path, True)
    images = [np.dstack([disks(shape=(96, 128), value=v)[0]] * 3) for v in (150, 200)]
    written = quantise_model_dir(model, images)
    assert written == [model / "odd" / INT8_XML]  # every image is fluorescence: the folder's own got none
    assert read_model_config(model / "odd").int8_network == INT8_XML and read_model_config(model).int8_network is None
    with pytest.raises(NucleiError, match="no calibration image reached main"):
        quantise_model_dir(model, images, networks=["main"])
