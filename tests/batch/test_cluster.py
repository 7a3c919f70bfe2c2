"""nuclei segment on Dask (pipeline.batch.cluster): a LocalCluster of 2 worker processes on loopback.

The model is the tiny threshold U-Net of test_segment.py saved as a real model directory (the
workers load it from disk, once each); the inputs are small synthetic images and one tiled TIFF
segmented out of core in blocks, so both kinds of task (whole images, blocks of a huge image)
run on the workers. The shipped model gives identical outputs too (docs/scale-out.md).
"""

from __future__ import annotations

import filecmp
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import tifffile
from PIL import Image

from pipeline.batch.segment import segment_images
from pipeline.errors import UsageError

from ..conftest import disks, grid_centres
from ..hostile import annotated_folder, one_error_line, segment_cli

distributed = pytest.importorskip("distributed")

SETTINGS = {"tile_size": 256, "overlap": 32, "block_size": 256, "block_margin": 40, "slide_pixels": 100_000}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("inputs")
    for k in range(6):
        shape = (96 + 16 * k, 128)
        image, _ = disks(shape=shape, centres=grid_centres(shape, 30, offset=15 + k))
        Image.fromarray(image).save(folder / f"img{k}.png")
    big, _ = disks(shape=(400, 500), centres=grid_centres((400, 500), 33))
    tifffile.imwrite(folder / "big.tif", big, tile=(64, 64), compression="zlib")  # 200,000 px: out of core
    return folder


@pytest.fixture(scope="module")
def local_run(tmp_path_factory, inputs, model_dir) -> Path:
    out = tmp_path_factory.mktemp("local")
    segment_images([inputs], out, model_dir, "cpu", **SETTINGS)
    return out


@pytest.fixture(scope="module")
def cluster():
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                                  dashboard_address=None) as cluster, distributed.Client(cluster) as client:
        yield cluster, client


def assert_same_outputs(a: Path, b: Path) -> None:
    labels = sorted(p.name for p in (a / "labels").glob("*.tif"))
    assert labels == sorted(p.name for p in (b / "labels").glob("*.tif")) and len(labels) == 7
    for name in labels:  # bit for bit
        assert filecmp.cmp(a / "labels" / name, b / "labels" / name, shallow=False), name
    for table in ("nuclei.csv", "counts.csv", "tables/big.csv"):
        assert filecmp.cmp(a / table, b / table, shallow=False), table


def test_two_workers_give_the_local_runs_outputs_and_load_the_model_once_each(tmp_path, inputs, model_dir,
                                                                              local_run, cluster):
    _, client = cluster
    counts = segment_images([inputs], tmp_path, model_dir, "cpu", scheduler=client.scheduler.address, **SETTINGS)
    assert (counts["status"] == "ok").all() and counts.set_index("image").loc["big", "count"] > 100
    assert_same_outputs(local_run, tmp_path)
    loads = client.run(lambda: dict(__import__("pipeline.batch.cluster", fromlist=["LOADS"]).LOADS))
    per_worker = [sum(v for k, v in w.items() if k[0] == str(model_dir.resolve())) for w in loads.values()]
    assert sorted(per_worker) == [1, 1]  # both worked, each loaded the model once


def test_a_worker_killed_mid_run_has_its_tasks_rerun(tmp_path, inputs, model_dir, local_run, cluster):
    _, client = cluster
    pids = client.run(os.getpid)
    done = {}
    run = threading.Thread(target=lambda: done.update(counts=segment_images(
        [inputs], tmp_path, model_dir, "cpu", scheduler=client.scheduler.address, **SETTINGS)))
    run.start()
    victim = None
    deadline = time.monotonic() + 60
    while victim is None and time.monotonic() < deadline and run.is_alive():
        busy = [w for w, tasks in client.processing().items() if tasks]
        victim = busy[0] if busy else None
        time.sleep(0.01)
    assert victim is not None, "no task was seen running"
    os.kill(pids[victim], signal.SIGKILL)  # the worker dies with its tasks
    run.join(timeout=300)
    assert not run.is_alive()
    assert victim not in client.scheduler_info()["workers"]  # it is gone (the nanny started a new one)
    assert (done["counts"]["status"] == "ok").all()
    assert_same_outputs(local_run, tmp_path)


# --------------------------------------------------------------------------- channels, positivity, cells, spots

CHANNEL_OPTIONS = dict(nuclear_channel="DAPI", positive=(("Ki-67", None),), spots=("gH2AX",))


@pytest.fixture(scope="module")
def channel_inputs(tmp_path_factory) -> Path:
    """Two 4-channel OME-TIFFs and a 4-channel tiled OME-TIFF segmented out of core."""
    from ..conftest import MARKER_CHANNELS, marker_field, write_ome

    folder = tmp_path_factory.mktemp("channel_inputs")
    for k in range(2):
        write_ome(folder / f"field{k}.tif", marker_field(shape=(160, 192), seed=60 + k)[0])
    big = marker_field(shape=(400, 500), seed=62)[0]
    tifffile.imwrite(folder / "big.tif", big, tile=(64, 64), compression="zlib", ome=True,
                     metadata={"axes": "CYX", "Channel": {"Name": list(MARKER_CHANNELS)}})
    return folder


def channel_run(inputs: Path, out: Path, model_dir: Path, **dask) -> None:
    from pipeline.batch.settings import CellExpansion, MeasureOptions

    options = MeasureOptions(**CHANNEL_OPTIONS, cell_expansion=CellExpansion(4, "px"))
    counts = segment_images([inputs], out, model_dir, "cpu", measure=options, **SETTINGS, **dask)
    assert (counts["status"] == "ok").all()


def test_channels_positives_cells_and_spots_on_two_workers_are_the_local_runs(tmp_path, channel_inputs, model_dir,
                                                                              cluster):
    _, client = cluster
    channel_run(channel_inputs, tmp_path / "local", model_dir)
    channel_run(channel_inputs, tmp_path / "dask", model_dir, scheduler=client.scheduler.address)
    local, dask = tmp_path / "local", tmp_path / "dask"
    files = sorted(str(p.relative_to(local)) for p in local.rglob("*") if p.is_file() and p.suffix in (".csv", ".tif"))
    assert {"cells/field0.tif", "cells/big.tif", "spots/field0.csv", "spots/big.csv", "tables/big.csv",
            "labels/big.tif"} <= set(files)
    for name in files:  # bit for bit: tables, label images, cells, spots
        assert filecmp.cmp(local / name, dask / name, shallow=False), name
    assert "positive_Ki_67" in (local / "nuclei.csv").read_text().splitlines()[0]


# --------------------------------------------------------------------------- bad --scheduler values


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
@pytest.mark.hostile
def test_a_bad_scheduler_address_is_one_line_before_connecting(case):
    from pipeline.batch.cluster import scheduler_target

    text, words = BAD_ADDRESSES[case]
    with pytest.raises(UsageError) as info:
        scheduler_target(text)
    assert words in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("case", ["empty", "list", "no address", "not JSON", "address not text", "bad address inside"])
@pytest.mark.hostile
def test_a_bad_scheduler_file_is_one_line_naming_it(case, scheduler_files):
    from pipeline.batch.cluster import scheduler_target

    with pytest.raises(UsageError) as info:
        scheduler_target(str(scheduler_files[case]))
    assert str(info.value).startswith(str(scheduler_files[case])) and "\n" not in str(info.value)


@pytest.mark.hostile
def test_a_folder_is_not_a_scheduler_file(tmp_path):
    from pipeline.batch.cluster import scheduler_target

    with pytest.raises(UsageError, match="a folder, not a scheduler file"):
        scheduler_target(str(tmp_path))


@pytest.mark.hostile
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
@pytest.mark.hostile
def test_segment_with_a_bad_scheduler_exits_2_in_one_line(address, model_dir, tmp_path, capsys):
    image = annotated_folder(tmp_path, n=1)[0]
    status, err = segment_cli(capsys, image, "-o", tmp_path / "out", "--model", model_dir, "--scheduler", address)
    one_error_line(err, address)
    assert status == 2


@pytest.mark.hostile
def test_segment_with_a_bad_scheduler_file_exits_2_in_one_line(model_dir, tmp_path, scheduler_files, capsys):
    image = annotated_folder(tmp_path, n=1)[0]
    for file in scheduler_files.values():
        status, err = segment_cli(capsys, image, "-o", tmp_path / "out", "--model", model_dir, "--scheduler", file)
        one_error_line(err, str(file))
        assert status == 2


@pytest.mark.hostile
def test_segment_with_an_empty_scheduler_is_a_usage_error(model_dir, tmp_path, capsys):
    image = annotated_folder(tmp_path, n=1)[0]
    status, err = segment_cli(capsys, image, "-o", tmp_path / "out", "--model", model_dir, "--scheduler", "")
    one_error_line(err, "--scheduler")
    assert status == 2
