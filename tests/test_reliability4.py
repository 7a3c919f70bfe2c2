"""Never lose a result, part 4 (issue 62): model folders that say absurd things, Dask addresses,
fine-tuning's limits, binary masks in ``nuclei export``. Every case is one line naming the file
(no traceback) with the exit status of the bad-input table (docs/bad-input.md).

Models: the threshold U-Net of conftest (``model_dir``) copied and edited; images: small synthetic
disks, and one 6000 x 6000 image for fine-tuning's memory bound (in a child process)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import tifffile
import yaml
from PIL import Image

from pipeline.cli import main as cli_main
from pipeline.errors import NucleiError, UsageError

from .conftest import ROOT, disks, grid_centres

# --------------------------------------------------------------------------- helpers


def edited_model(model_dir, tmp_path, name="model", **changes):
    """A copy of ``model_dir`` whose config.yaml has ``changes`` (``model__depth=6`` for the
    ``depth`` of the ``model`` section)."""
    folder = tmp_path / name
    shutil.copytree(model_dir, folder)
    values = yaml.safe_load((folder / "config.yaml").read_text())
    for key, value in changes.items():
        section, _, sub = key.partition("__")
        if sub:
            values[section][sub] = value
        else:
            values[section] = value
    (folder / "config.yaml").write_text(yaml.safe_dump(values, sort_keys=False))
    return folder


def one_error_line(err: str, *words: str) -> str:
    assert "Traceback" not in err, err[-2000:]
    lines = [line for line in err.strip().splitlines() if line.startswith("nuclei: error:")]
    assert len(lines) == 1, err[-2000:]
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]


def annotated_folder(tmp_path, n=3, shape=(96, 96)):
    """``n`` disk images in ``tmp_path/images`` (PNG) with labels in ``tmp_path/labels`` (TIFF)."""
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "labels").mkdir(exist_ok=True)
    paths = []
    for k in range(n):
        image, labels = disks(shape=shape, centres=grid_centres(shape, 24, offset=12 + k), radius=6)
        Image.fromarray(image).save(tmp_path / "images" / f"i{k}.png")
        tifffile.imwrite(tmp_path / "labels" / f"i{k}.tif", labels.astype(np.uint16))
        paths.append(tmp_path / "images" / f"i{k}.png")
    return paths


def segment_cli(capsys, *argv) -> tuple[int, str]:
    status = cli_main(["segment", *map(str, argv)])
    return status, capsys.readouterr().err


def finetune_cli(capsys, *argv) -> tuple[int, str]:
    try:
        status = cli_main(["finetune", *map(str, argv)])
    except SystemExit as exc:  # argparse
        status = exc.code
    return status, capsys.readouterr().err


@pytest.fixture(autouse=True)
def _quiet(monkeypatch):
    monkeypatch.setenv("CI", "1")  # no progress bars


# --------------------------------------------------------------------------- 1. model folders


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


def test_a_mismatch_names_what_the_weights_hold(model_dir, tmp_path):
    from pipeline.model.model_dir import read_model_dir

    folder = edited_model(model_dir, tmp_path, model__depth=6, model__width=64)
    with pytest.raises(NucleiError) as info:
        read_model_dir(folder)
    assert "weights.pt holds depth 2, width 4" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["weights.pt", "config.yaml"])
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


def test_a_network_larger_than_the_memory_is_refused_before_it_is_built(model_dir, monkeypatch):
    import pipeline.model.model_dir as module
    import pipeline.model.runtime as runtime
    from pipeline.model.model_dir import load_model_dir

    monkeypatch.setattr(runtime, "available_memory", lambda: 1000)  # bytes
    monkeypatch.setattr(module, "build_model", lambda cfg: pytest.fail("built"))
    with pytest.raises(NucleiError, match="too large for this machine") as info:
        load_model_dir(model_dir)
    assert str(model_dir) in str(info.value) and "parameters" in str(info.value)


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


def test_an_allocator_error_while_running_is_one_line(model_dir):
    from pipeline.model.runtime import memory_guard

    with pytest.raises(NucleiError) as info, memory_guard("my_model"):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 2415919104 bytes.")
    assert str(info.value) == "my_model: too large for this machine (asked for 2.4 GB at once)"
    with pytest.raises(ValueError), memory_guard("my_model"):  # other errors pass through
        raise ValueError("not memory")


# --------------------------------------------------------------------------- 2. --scheduler


@pytest.fixture
def scheduler_files(tmp_path):
    files = {"empty": "", "list": "[1, 2]", "no address": '{"type": "Scheduler", "id": "x"}',
             "not JSON": "tcp://", "address not text": '{"address": 8786}',
             "bad address inside": '{"address": "garbage"}'}
    for name, text in files.items():
        (tmp_path / f"{name}.json").write_text(text)
    return {name: tmp_path / f"{name}.json" for name in files}


BAD_ADDRESSES = {
    "garbage": ("garbage", "expected tcp://HOST:PORT"),
    "no port": ("tcp://10.0.0.5", "no port"),
    "port out of range": ("tcp://10.0.0.5:99999", "port"),
    "inproc": ("inproc://10.0.0.5/1234/1", "in-process"),
    "tls without certificates": ("tls://10.0.0.5:8786", "TLS"),
    "ucx": ("ucx://10.0.0.5:8786", "ucx"),
    "ws": ("ws://10.0.0.5:8786", "ws"),
    "empty": ("", "empty"),
    "spaces": ("  ", "empty"),
    "missing file": ("/no/such/sched.json", "no such scheduler file"),
}


@pytest.mark.parametrize("case", list(BAD_ADDRESSES))
def test_a_bad_scheduler_address_is_one_line_before_connecting(case):
    from pipeline.batch.cluster import scheduler_target

    text, words = BAD_ADDRESSES[case]
    with pytest.raises(UsageError) as info:
        scheduler_target(text)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["empty", "list", "no address", "not JSON", "address not text", "bad address inside"])
def test_a_bad_scheduler_file_is_one_line_naming_it(case, scheduler_files):
    from pipeline.batch.cluster import scheduler_target

    with pytest.raises(UsageError) as info:
        scheduler_target(str(scheduler_files[case]))
    assert str(info.value).startswith(str(scheduler_files[case])) and "\n" not in str(info.value)


def test_a_folder_is_not_a_scheduler_file(tmp_path):
    from pipeline.batch.cluster import scheduler_target

    with pytest.raises(UsageError, match="a folder, not a scheduler file"):
        scheduler_target(str(tmp_path))


def test_accepted_scheduler_forms(tmp_path):
    from pipeline.batch.cluster import scheduler_target

    assert scheduler_target("tcp://10.0.0.5:8786") == {"address": "tcp://10.0.0.5:8786"}
    assert scheduler_target("10.0.0.5:8786") == {"address": "tcp://10.0.0.5:8786"}
    assert scheduler_target("tcp://[::1]:8786") == {"address": "tcp://[::1]:8786"}
    file = tmp_path / "sched.json"  # as `dask scheduler --scheduler-file` writes it
    file.write_text(json.dumps({"type": "Scheduler", "id": "Scheduler-1", "address": "tcp://10.0.0.5:8786",
                                "services": {}, "started": 1.0, "workers": {}}))
    assert scheduler_target(str(file)) == {"scheduler_file": str(file)}
    dask_config = pytest.importorskip("dask.config")
    with dask_config.set({"distributed.comm.tls.ca-file": "ca.pem", "distributed.comm.tls.client.cert": "c.pem"}):
        assert scheduler_target("tls://10.0.0.5:8786") == {"address": "tls://10.0.0.5:8786"}  # with its certificates


@pytest.mark.parametrize("address", ["garbage", "inproc://10.0.0.5/1/1", "ucx://10.0.0.5:8786", "tls://10.0.0.5:8786"])
def test_segment_with_a_bad_scheduler_exits_2_in_one_line(address, model_dir, tmp_path, capsys):
    image = annotated_folder(tmp_path, n=1)[0]
    status, err = segment_cli(capsys, image, "-o", tmp_path / "out", "--model", model_dir, "--scheduler", address)
    one_error_line(err, address)
    assert status == 2


def test_segment_with_a_bad_scheduler_file_exits_2_in_one_line(model_dir, tmp_path, scheduler_files, capsys):
    image = annotated_folder(tmp_path, n=1)[0]
    for file in scheduler_files.values():
        status, err = segment_cli(capsys, image, "-o", tmp_path / "out", "--model", model_dir, "--scheduler", file)
        one_error_line(err, str(file))
        assert status == 2


def test_segment_with_an_empty_scheduler_is_a_usage_error(model_dir, tmp_path, capsys):
    image = annotated_folder(tmp_path, n=1)[0]
    status, err = segment_cli(capsys, image, "-o", tmp_path / "out", "--model", model_dir, "--scheduler", "")
    one_error_line(err, "--scheduler")
    assert status == 2


# --------------------------------------------------------------------------- 3. fine-tuning's limits


@pytest.mark.parametrize("minutes", ["nan", "inf", "-inf", "0", "-1", "1e9", "ten"])
def test_minutes_out_of_range_is_a_usage_error(minutes, model_dir, tmp_path, capsys):
    image = annotated_folder(tmp_path, n=1)[0]
    status, err = finetune_cli(capsys, image, "--labels", tmp_path / "labels", "-o", tmp_path / "ft",
                               "--model", model_dir, "--guard", "none", f"--minutes={minutes}")
    assert status == 2 and "Traceback" not in err
    assert f"--minutes: {minutes}: expected" in err and not (tmp_path / "ft").exists()


@pytest.mark.parametrize("minutes", [float("nan"), float("inf"), 0, -1, 1e9])
def test_minutes_out_of_range_in_python(minutes, model_dir, tmp_path):
    from pipeline.training.finetune import finetune

    images = annotated_folder(tmp_path, n=1)
    with pytest.raises(UsageError, match="minutes"):
        finetune(images, tmp_path / "labels", base=model_dir, minutes=minutes, out=tmp_path / "ft", guard=None)


@pytest.mark.parametrize("dtype, ids", [
    (np.uint32, [2**31 + 5, 2**32 - 1, 7]),  # beyond int32
    (np.int64, [1, 2**32 + 1, 2**40, 2**33 + 2]),  # 2**32 + 1 wraps onto 1 in int32
    (np.uint64, [2**63 + 1, 3, 2**32 + 3]),
])
def test_large_label_ids_are_relabelled_without_wrapping(dtype, ids):
    import warnings

    from pipeline.data.annotations import check_labels

    labels = np.zeros((40, 40), dtype)
    for k, value in enumerate(ids):
        labels[2 + 9 * k : 8 + 9 * k, 5:12] = value
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no id cast past its type
        checked, note = check_labels(labels, "big.tif", (40, 40))
    assert checked.dtype == np.int32
    assert len(np.unique(checked)) == len(ids) + 1  # every nucleus kept apart, none merged
    for rank, value in enumerate(sorted(ids), start=1):  # 1..N in the order of the ids
        assert np.all(checked[labels == value] == rank)
    assert "relabelled" in note and "big.tif" in note


def test_finetune_trains_on_uint32_labels_with_large_ids(model_dir, tmp_path):
    from pipeline.training.finetune import finetune

    images = annotated_folder(tmp_path, n=2)
    for k in range(2):
        labels = tifffile.imread(tmp_path / "labels" / f"i{k}.tif").astype(np.uint32)
        labels[labels > 0] += np.uint32(2**32 - 100)
        tifffile.imwrite(tmp_path / "labels" / f"i{k}.tif", labels)
    lines = []
    out = finetune(images, tmp_path / "labels", base=model_dir, out=tmp_path / "ft", guard=None, device="cpu",
                   steps=4, log=lines.append)
    recorded = yaml.safe_load((out / "config.yaml").read_text())["training"]["images"]
    assert [r["nuclei"] for r in recorded] == [16, 16]


def test_the_same_image_twice_is_used_once(model_dir, tmp_path):
    from pipeline.training.finetune import finetune

    images = annotated_folder(tmp_path, n=3)
    (tmp_path / "copy").mkdir()
    shutil.copy(images[0], tmp_path / "copy" / "dup.png")  # another path and name, the same content
    shutil.copy(tmp_path / "labels" / "i0.tif", tmp_path / "labels" / "dup.tif")
    lines = []
    out = finetune([images[0], images[0], *images[1:], tmp_path / "copy" / "dup.png"], tmp_path / "labels",
                   base=model_dir, out=tmp_path / "ft", guard=None, device="cpu", steps=4, log=lines.append)
    training = yaml.safe_load((out / "config.yaml").read_text())["training"]
    assert [i["name"] for i in training["images"]] == ["i0", "i1", "i2"]
    assert training["validation"]["method"] == "leave-one-out" and training["validation"]["folds"] == 3
    said = [line for line in lines if "same image as" in line]
    assert len(said) == 1 and "dup.png" in said[0], lines


def test_the_same_array_twice_is_used_once(model_dir, tmp_path):
    from pipeline.training.finetune import finetune

    pairs = [disks(shape=(96, 96), centres=grid_centres((96, 96), 24, offset=12 + k), radius=6) for k in range(3)]
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    lines = []
    out = finetune([images[0], *images, images[2]], [labels[0], *labels, labels[2]], base=model_dir,
                   out=tmp_path / "ft", guard=None, device="cpu", steps=4, log=lines.append)
    training = yaml.safe_load((out / "config.yaml").read_text())["training"]
    assert [i["name"] for i in training["images"]] == ["image 1", "image 3", "image 4"]
    said = [line for line in lines if "same image as" in line]
    assert len(said) == 1 and "2 duplicate images" in said[0], lines


def test_two_different_images_of_one_name_are_refused_naming_both(model_dir, tmp_path, capsys):
    annotated_folder(tmp_path, n=1)
    a, b = tmp_path / "a" / "i0.png", tmp_path / "b" / "i0.png"
    a.parent.mkdir(), b.parent.mkdir()
    shutil.copy(tmp_path / "images" / "i0.png", a)
    Image.fromarray(255 - np.asarray(Image.open(a))).save(b)
    status, err = finetune_cli(capsys, a, b, "--labels", tmp_path / "labels", "-o", tmp_path / "ft",
                               "--model", model_dir, "--guard", "none")
    one_error_line(err, str(a), str(b), "i0.tif")
    assert status == 2 and not (tmp_path / "ft").exists()


def test_an_image_beyond_the_region_bound_is_cropped_before_its_examples(model_dir, tmp_path, monkeypatch):
    """The examples (targets, held-out predictions) are built from a bounded region of a large
    image, never from the whole image (the first example stops the run)."""
    import pipeline.training.finetune_run as run
    from pipeline.training.finetune import MAX_REGION_PIXELS, finetune

    shape = (1200, 1500)
    image, labels = disks(shape=shape, centres=grid_centres(shape, 30, offset=15), radius=7)
    seen = []

    class Stop(Exception):
        pass

    def make_example(name, image, labels, *args, **kwargs):
        seen.append(labels.shape)
        raise Stop

    monkeypatch.setattr(run, "make_example", make_example)
    monkeypatch.setattr("pipeline.training.finetune.MAX_REGION_PIXELS", 512 * 512)
    lines = []
    with pytest.raises(Stop):
        finetune([image], [labels], base=model_dir, out=tmp_path / "ft", guard=None, device="cpu", steps=4,
                 log=lines.append)
    assert seen and seen[0][0] * seen[0][1] <= 512 * 512
    assert any("region" in line and "1500x1200" in line for line in lines), lines
    assert MAX_REGION_PIXELS >= 1024 * 1024


def test_the_time_plan_gives_up_checkpoints_then_checks_then_validation_then_training():
    """Measured times in, plan out (no clock): each shorter time left gives up one more thing."""
    from pipeline.training.finetune_time import CHECKPOINTS, MAX_STEPS, plan_time

    times = dict(folds=3, t_step=1.0, t_run=2.0, held_cost=50.0, check_cost=10.0, check_setup=3.0, what="--minutes M")
    plans = {left: plan_time(left, **times) for left in (3000, 300, 250, 150, 60, 8)}
    assert [(p.validate, p.checks, p.checkpoints) for p in plans.values()] == [
        (True, True, CHECKPOINTS), (True, True, 2), (True, True, 1), (True, False, 1), (False, False, 1),
        (False, False, 1)]
    assert [p.steps for p in plans.values()] == [616, 4, 12, 9, 55, 0]
    assert "check images are not scored" in plans[150].note and "no time for it in --minutes M" == plans[60].reason
    assert "no time to train in --minutes M" in plans[8].note
    assert plan_time(3000, **{**times, "folds": 0}).steps == MAX_STEPS  # nothing to validate: one run


BIG_IMAGE_RUN = """
import resource, sys
import pipeline.model.segmenter, pipeline.training.finetune_run, torch  # imports: the baseline
import pipeline.training.finetune as module
module.CHECKPOINTS, module.THRESHOLD_GRID = 1, {k: v[:1] for k, v in module.THRESHOLD_GRID.items()}  # quicker
folder, model = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
module.finetune([f"{folder}/images/big.png"], f"{folder}/labels", base=model, out=f"{folder}/ft", guard=None,
                device="cpu", steps=4, log=lambda m: print(m, file=sys.stderr))
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(before * 1024, after * 1024)
"""


def test_a_6000_x_6000_image_is_fine_tuned_in_bounded_memory(model_dir, tmp_path):
    """A 36-Mpx image (uint8 on disk, 62,500 nuclei): the peak resident memory of the run grows by
    less than 2 GB (1.4 GB measured: reading, then a 2048 x 2048 region; read as float32 RGB the
    image alone is 432 MB). Before the bound the whole image's targets and held-out predictions
    grew it by 3.8 GB for 3000 x 3000 px, over 400 bytes per pixel (24 GB for 10,000 x 10,000)."""
    (tmp_path / "images").mkdir(), (tmp_path / "labels").mkdir()
    side, spacing = 6000, 24
    yy, xx = np.ogrid[:side, :side]
    inside = ((yy % spacing - spacing // 2) ** 2 + (xx % spacing - spacing // 2) ** 2) <= 64
    Image.fromarray(np.where(inside, 200, 20).astype(np.uint8)).save(tmp_path / "images" / "big.png")
    ids = ((yy // spacing) * (side // spacing) + xx // spacing + 1).astype(np.uint16)
    tifffile.imwrite(tmp_path / "labels" / "big.tif", np.where(inside, ids, np.uint16(0)))
    del inside, ids
    env = {**os.environ, "PYTHONPATH": str(ROOT), "CI": "1", "OMP_NUM_THREADS": "1"}
    done = subprocess.run([sys.executable, "-c", BIG_IMAGE_RUN, str(tmp_path), str(model_dir)], env=env,
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    before, after = map(int, done.stdout.split())
    assert after - before < 2e9, f"peak grew by {(after - before) / 1e9:.2f} GB"
    assert "2048x2048 px region richest in nuclei" in done.stderr and (tmp_path / "ft" / "weights.pt").is_file()


# --------------------------------------------------------------------------- 4. binary masks


@pytest.mark.parametrize("value, dtype", [(255, np.uint8), (1, np.uint8), (7, np.uint16), (True, bool)])
def test_export_splits_any_two_valued_mask_into_its_objects(value, dtype, tmp_path, capsys):
    _, truth = disks(shape=(64, 96), centres=((20, 20), (40, 60), (15, 80)), radius=6)
    mask = np.where(truth > 0, value, 0).astype(dtype)
    tifffile.imwrite(tmp_path / "m_mask.tif", mask)
    assert cli_main(["export", str(tmp_path / "m_mask.tif"), "--to", "geojson", "-o", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "3 nuclei" in captured.out and "a binary mask" in captured.err
    features = json.loads((tmp_path / "out" / "geojson" / "m_mask.geojson").read_text())["features"]
    assert sorted(f["properties"]["label"] for f in features) == [1, 2, 3]
    assert all(f["geometry"]["type"] == "Polygon" for f in features)


def test_one_object_keeps_its_value_and_labels_are_not_a_mask():
    from pipeline.method.labels import instance_labels

    one = np.zeros((20, 20), np.uint8)
    one[5:10, 5:10] = 255
    labels, note = instance_labels(one, "one.png")
    assert labels.max() == 255 and note == ""  # one nucleus named 255: nothing to split
    several = np.zeros((20, 20), np.uint16)
    several[2:5, 2:5], several[10:15, 10:15], several[2:5, 12:15] = 3, 9, 3  # value 3 in two places
    labels, note = instance_labels(several, "several.tif")
    assert np.array_equal(labels, several) and note == ""  # three values: labels, kept as they are


def test_export_and_finetune_share_the_one_function():
    import pipeline.batch.export as export
    import pipeline.data.annotations as annotations
    from pipeline.method import labels

    assert export.instance_labels is labels.instance_labels is annotations.instance_labels


def test_export_relabels_ids_beyond_int32(tmp_path, capsys):
    labels = np.zeros((32, 32), np.uint32)
    labels[2:8, 2:8], labels[12:18, 12:18], labels[20:30, 2:8] = 2**32 - 1, 2**31, 5
    tifffile.imwrite(tmp_path / "big_ids.tif", labels)
    assert cli_main(["export", str(tmp_path / "big_ids.tif"), "--to", "geojson", "-o", str(tmp_path / "out")]) == 0
    captured = capsys.readouterr()
    assert "3 nuclei" in captured.out and "relabelled" in captured.err
    features = json.loads((tmp_path / "out" / "geojson" / "big_ids.geojson").read_text())["features"]
    assert sorted(f["properties"]["label"] for f in features) == [1, 2, 3]



def test_an_image_out_of_memory_is_named_too_large(tmp_path):
    """An allocator error while segmenting one image is its failed row's one line, not 'unexpected error'."""
    from pipeline.batch.one_file import _failure

    row = _failure(RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate "
                                "36000000000 bytes. Error code 12"), tmp_path / "big.tif")
    assert row["status"] == "failed"
    assert row["error"] == (f"{tmp_path / 'big.tif'}: too large for this machine (asked for 33.5 GiB at once; "
                            "lower segment.block_size in params.yaml)")
    assert "too large for this machine" in _failure(MemoryError(), tmp_path / "big.tif")["error"]
