"""Tests of the train stage: outputs, exact resume, determinism, DDP (tiny U-Net, CPU)."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import pipeline.training.checkpoints as checkpoints_module
import pipeline.training.trainer as trainer_module
from pipeline.cli import main as cli_main
from pipeline.errors import NucleiError
from pipeline.model.model_dir import load_model_dir, save_model_dir
from pipeline.stages.train import as_config, fit, train
from pipeline.training.checkpoints import load_checkpoint
from tests.train_fixtures import tiny_params, write_prepared

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("train")
    write_prepared(root, n_images=6, size=48, folds=3)
    return root


@pytest.fixture(autouse=True)
def _few_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def params_for(data_root: Path, out: Path, **train_cfg) -> dict:
    params = tiny_params(data_root, **train_cfg)
    params["train"]["out"] = str(out)
    return params


def assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def test_one_epoch_writes_checkpoint_model_dir_and_metrics(data_root, tmp_path):
    out = tmp_path / "run"
    model_dir = train(params_for(data_root, out))
    assert model_dir == out / "model"
    model, config = load_model_dir(model_dir)
    assert config.model.depth == 2 and config.postprocess.min_size == 4
    assert config.normalization.to_dict() == {"low": 1.0, "high": 99.8, "saturation": True}
    training = config.training
    assert training["epoch"] == 1 and training["params"]["train"]["epochs"] == 1
    assert training["hardware"]["device"] == "cpu" and training["data"]["val_images"] == 2
    assert 0.0 <= training["scores"]["val_dsb_score"] <= 1.0

    ckpt = load_checkpoint(out / "last.ckpt")
    assert ckpt["epoch"] == 1 and ckpt["epochs"] == 1
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "best_score"} <= ckpt.keys()
    # the exported best model is the epoch-1 model (float16 in the model directory)
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, ckpt["model"][key].float(), atol=2e-3, rtol=2e-3)

    metrics = json.loads((out / "dvclive" / "metrics.json").read_text())
    assert set(metrics["val"]) >= {"loss", "dsb_score", "best_dsb_score"} and "loss" in metrics["train"]
    assert (out / "dvclive" / "plots" / "metrics" / "val" / "dsb_score.tsv").is_file()
    assert not list(out.glob(".*"))  # no temporary files left


def test_trains_without_dvclive(data_root, tmp_path, monkeypatch, capsys):
    """A bare GPU machine has no dvclive (it needs dvc): training goes on, the epochs in last.ckpt."""
    monkeypatch.setitem(sys.modules, "dvclive", None)  # import dvclive raises ImportError
    out = tmp_path / "run"
    params = params_for(data_root, out, epochs=2)
    assert train(params) == out / "model"
    assert "dvclive is not installed" in capsys.readouterr().err
    assert not (out / "dvclive").exists()
    assert [row["epoch"] for row in load_checkpoint(out / "last.ckpt")["history"]] == [1, 2]
    assert train(params, resume=True) == out / "model"  # a finished run resumed: nothing to do, no dvclive
    assert load_checkpoint(out / "last.ckpt")["epoch"] == 2


def test_init_starts_from_a_model_directory(data_root, tmp_path):
    trained = train(params_for(data_root, tmp_path / "a", lr=0.01))
    reference, _ = load_model_dir(trained)

    def convolutions(model_dir):
        model, _ = load_model_dir(model_dir)
        return {k: v for k, v in model.state_dict().items() if k.endswith("weight") and v.ndim == 4}

    # with a vanishing learning rate the run keeps the weights it started from
    tuned = train(params_for(data_root, tmp_path / "b", lr=1e-12, init=str(trained)))
    fresh = train(params_for(data_root, tmp_path / "c", lr=1e-12))
    start = {k: v for k, v in reference.state_dict().items() if k in convolutions(tuned)}
    for key, value in convolutions(tuned).items():
        torch.testing.assert_close(value, start[key], atol=1e-3, rtol=1e-3)
    assert any(not torch.allclose(v, start[k], atol=1e-3) for k, v in convolutions(fresh).items())

    other = params_for(data_root, tmp_path / "d", init=str(trained))
    other["model"]["width"] = 8
    with pytest.raises(NucleiError, match=r"train\.init has another architecture: width"):
        train(other)
    with pytest.raises(NucleiError, match="model directory not found"):
        train(params_for(data_root, tmp_path / "e", init=str(tmp_path / "missing")))


def test_init_starts_from_a_runs_last_checkpoint(data_root, tmp_path):
    """``train.init`` naming ``last.ckpt`` starts from the last epoch's float32 weights."""
    first = train(params_for(data_root, tmp_path / "a", lr=0.01))
    checkpoint = load_checkpoint(first.parent / "last.ckpt")
    tuned = train(params_for(data_root, tmp_path / "b", lr=1e-12, init=str(first.parent / "last.ckpt")))
    model, _ = load_model_dir(tuned)
    for key, value in model.state_dict().items():
        if key.endswith("weight") and value.ndim == 4:
            torch.testing.assert_close(value, checkpoint["model"][key].to(value.dtype), atol=1e-3, rtol=1e-3)
    other = params_for(data_root, tmp_path / "c", init=str(first.parent / "last.ckpt"))
    other["model"]["width"] = 8
    with pytest.raises(NucleiError, match=r"last\.ckpt: train\.init has another architecture: width"):
        train(other)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
@pytest.mark.parametrize("when", ["after the first checkpoint", "while writing the second checkpoint"])
def test_resume_after_interruption_gives_identical_weights(data_root, tmp_path, monkeypatch, when, precision):
    reference, _ = fit(params_for(data_root, tmp_path / "a", epochs=2, precision=precision))

    params = params_for(data_root, tmp_path / "b", epochs=2, precision=precision)
    save = trainer_module.save_checkpoint
    calls = []

    def killed(path, state):
        calls.append(path)
        if when.startswith("after"):
            save(path, state)
            raise KeyboardInterrupt
        if len(calls) == 2:  # epoch 2 was trained and logged, but its checkpoint is lost
            raise KeyboardInterrupt
        save(path, state)

    monkeypatch.setattr(trainer_module, "save_checkpoint", killed)
    with pytest.raises(KeyboardInterrupt):
        fit(params)
    assert load_checkpoint(tmp_path / "b" / "last.ckpt")["epoch"] == 1
    monkeypatch.setattr(trainer_module, "save_checkpoint", save)

    resumed, _ = fit(params, resume=True)
    assert_same_weights(reference.state_dict(), resumed.state_dict())
    assert load_checkpoint(tmp_path / "b" / "last.ckpt")["epoch"] == 2
    # dvclive holds one row per epoch, however the run was interrupted
    for run in ("a", "b"):
        rows = (
            (tmp_path / run / "dvclive" / "plots" / "metrics" / "val" / "loss.tsv").read_text().splitlines()
        )
        assert [line.split("\t")[0] for line in rows] == ["step", "0", "1"]
    metrics = [json.loads((tmp_path / run / "dvclive" / "metrics.json").read_text()) for run in ("a", "b")]
    assert metrics[0] == metrics[1]


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_same_seed_same_weights_whatever_the_workers(data_root, tmp_path, precision):
    a, _ = fit(params_for(data_root, tmp_path / "a", workers=0, precision=precision))
    b, _ = fit(params_for(data_root, tmp_path / "b", workers=2, precision=precision))
    assert_same_weights(a.state_dict(), b.state_dict())
    if precision == "bf16":  # bf16 autocast really ran: the weights differ from fp32's
        f, _ = fit(params_for(data_root, tmp_path / "f", workers=0, precision="fp32"))
        assert not torch.equal(a.state_dict()["head.weight"], f.state_dict()["head.weight"])
        return
    params = params_for(data_root, tmp_path / "c")
    params["seed"] = 1
    c, _ = fit(params)
    assert not torch.equal(a.state_dict()["head.weight"], c.state_dict()["head.weight"])


def test_cli_overrides_and_resume_checks(data_root, tmp_path):
    params = params_for(data_root, tmp_path / "unused", epochs=5)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    out = tmp_path / "cli"
    argv = [
        "train",
        "--params",
        str(path),
        "--epochs",
        "1",
        "--out",
        str(out),
        "--fold",
        "1",
        "--device",
        "cpu",
    ]
    assert cli_main(argv) == 0
    config = yaml.safe_load((out / "model" / "config.yaml").read_text())
    assert config["training"]["epochs"] == 1 and config["training"]["data"]["val_fold"] == 1
    # resuming with a different schedule length is refused with a one-line error
    params["train"].update(out=str(out), epochs=3)
    with pytest.raises(NucleiError, match=r"last\.ckpt: written by a run with epochs = 1"):
        train(params, resume=True)


def test_bad_parameters_are_reported(data_root, tmp_path):
    with pytest.raises(NucleiError, match="train.schedule"):
        train(params_for(data_root, tmp_path, schedule="linear"))
    with pytest.raises(NucleiError, match="train.precision"):
        train(params_for(data_root, tmp_path, precision="fp8"))
    with pytest.raises(NucleiError, match="train.batch_size"):
        train(params_for(data_root, tmp_path, batch_size=0))
    params = params_for(data_root, tmp_path)
    params["data"]["val_fold"] = 9
    with pytest.raises(NucleiError, match="no image in validation fold 9"):
        train(params)
    (tmp_path / "last.ckpt").write_bytes(b"truncated")
    with pytest.raises(NucleiError, match=r"last\.ckpt: unreadable checkpoint"):
        train(params_for(data_root, tmp_path), resume=True)


def test_group_balance_draws_from_experiments(data_root, tmp_path):
    import pandas as pd

    params = params_for(data_root, tmp_path / "plain", group_balance=0.0)
    index_csv = data_root / "prepared" / "index.csv"
    with pytest.raises(NucleiError, match=r"index\.csv: no column 'group' for train\.group_balance"):
        train(params)
    index = pd.read_csv(index_csv)
    grouped = data_root / "grouped"
    (grouped / "prepared").mkdir(parents=True)
    for f in (data_root / "prepared").iterdir():
        (grouped / "prepared" / f.name).symlink_to(f)
    (grouped / "prepared" / "index.csv").unlink()
    index.assign(group=[0, 0, 0, 0, 0, 1]).to_csv(grouped / "prepared" / "index.csv", index=False)
    params["data"]["prepared"] = str(grouped / "prepared")
    trainer = trainer_module.Trainer(as_config(params))
    trainer.setup_data()
    ds = trainer.loader.dataset
    # training ids are folds 1 and 2 (img01, img02, img04, img05): group 0 has 3 images, group 1 one
    assert ds.ids == ["img01", "img02", "img04", "img05"]
    np.testing.assert_allclose(np.diff(ds.draw_cdf, prepend=0), [1 / 6, 1 / 6, 1 / 6, 1 / 2])
    with pytest.raises(NucleiError, match="train.group_balance"):
        train(params_for(data_root, tmp_path / "bad", group_balance=2))


def sourced_prepared(data_root: Path, folder: Path, **columns) -> Path:
    """The prepared sample under ``folder`` (links) with ``columns`` added to its index."""
    import pandas as pd

    folder.mkdir(parents=True)
    for f in (data_root / "prepared").iterdir():
        if f.name != "index.csv":
            (folder / f.name).symlink_to(f)
    pd.read_csv(data_root / "prepared" / "index.csv").assign(**columns).to_csv(folder / "index.csv", index=False)
    return folder


def test_source_weights_multiply_a_sources_share_of_the_crops(data_root, tmp_path):
    # training ids are folds 1 and 2: img01, img02 (source b) and img04, img05 (source a)
    sourced = sourced_prepared(data_root, tmp_path / "sourced", source=["b", "b", "b", "a", "a", "a"],
                               group=[0, 1, 1, 2, 3, 3])
    params = params_for(data_root, tmp_path / "run", source_balance=0.0, source_weights={"a": 3})
    params["data"]["prepared"] = str(sourced)
    trainer = trainer_module.Trainer(as_config(params))
    trainer.setup_data()
    assert trainer.loader.dataset.ids == ["img01", "img02", "img04", "img05"]
    np.testing.assert_allclose(np.diff(trainer.loader.dataset.draw_cdf, prepend=0), [1 / 8, 1 / 8, 3 / 8, 3 / 8])
    params["train"]["source_weights"] = {"a": 1, "c": 2}
    with pytest.raises(NucleiError, match=r"index\.csv: train\.source_weights names c, not among the training "
                                          r"sources \(a, b\)"):
        trainer_module.Trainer(as_config(params)).setup_data()
    with pytest.raises(NucleiError, match=r"train\.source_weights.*a mapping \{source: factor > 0\}"):
        train(params_for(data_root, tmp_path / "bad", source_weights={"a": 0}))


def test_validation_groups_images_by_source(data_root, tmp_path, capsys):
    """With a ``source`` column the best epoch is chosen by the mean over sources (``train.val_balance``)."""
    sourced = sourced_prepared(data_root, tmp_path / "sourced" / "prepared", source=["b", "b", "b", "a", "a", "a"])
    params = params_for(data_root, tmp_path / "run", epochs=1)
    params["data"]["prepared"] = str(sourced)
    trainer = trainer_module.Trainer(as_config(params))
    trainer.setup_data()
    assert trainer.val_ids == ["img00", "img03"] and trainer.val_groups == [1, 0] and trainer.n_val_groups == 2
    train(params)
    assert "(mean over 2 sources)" in capsys.readouterr().out
    params["train"].update(val_balance="image", out=str(tmp_path / "run_image"))
    train(params)
    assert "mean over" not in capsys.readouterr().out
    with pytest.raises(NucleiError, match="train.val_balance"):
        train(params_for(data_root, tmp_path / "bad", val_balance="experiment"))


def _ddp_rank(rank: int, world: int, port: int, params: dict, folder: str) -> None:
    """One process of a DDP run, configured through the environment like torchrun does."""
    os.environ.update(
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )
    torch.set_num_threads(1)
    model, _ = fit(params)
    state = model.state_dict()
    digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
    Path(folder, f"rank{rank}.txt").write_text(digest)


def test_distributed_two_cpu_processes_end_with_identical_weights(data_root, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    params = params_for(data_root, tmp_path / "out")
    # spawn, not fork: a fork after bf16 (oneDNN) or OpenMP work in this process can deadlock
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_ddp_rank, args=(r, 2, port, params, str(tmp_path))) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
    assert [p.exitcode for p in procs] == [0, 0]
    digests = [(tmp_path / f"rank{r}.txt").read_text() for r in range(2)]
    assert digests[0] == digests[1]
    ckpt = load_checkpoint(tmp_path / "out" / "last.ckpt")
    assert ckpt["processes"] == 2 and ckpt["steps_per_epoch"] == 2  # 8 samples / 2 ranks / batch 2
    assert (tmp_path / "out" / "model" / "weights.pt").is_file()


DDP_SCRIPT = """
import hashlib, json, os, sys
import torch
torch.set_num_threads(1)
from pipeline.stages.train import fit
params = json.loads(open(sys.argv[1]).read())
model, _ = fit(params)
state = model.state_dict()
digest = hashlib.sha256(b"".join(state[k].numpy().tobytes() for k in sorted(state))).hexdigest()
open(os.path.join(sys.argv[2], f"rank{os.environ['RANK']}.txt"), "w").write(digest)
"""


@pytest.mark.slow
def test_torchrun_two_cpu_processes(data_root, tmp_path):
    """The real launcher (slow: torchrun and both processes import torch afresh)."""
    params = params_for(data_root, tmp_path / "out")
    (tmp_path / "params.json").write_text(json.dumps(params))
    (tmp_path / "ddp.py").write_text(DDP_SCRIPT)
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": path}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        str(tmp_path / "ddp.py"),
        str(tmp_path / "params.json"),
        str(tmp_path),
    ]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (tmp_path / "rank0.txt").read_text() == (tmp_path / "rank1.txt").read_text()
    assert load_checkpoint(tmp_path / "out" / "last.ckpt")["processes"] == 2


def test_val_every_validates_only_every_nth_and_last_epoch(data_root, tmp_path, capsys):
    out = tmp_path / "run"
    train(params_for(data_root, out, epochs=3, val_every=2))
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(printed) == 3
    assert "DSB2018 score" not in printed[0] and "DSB2018 score" in printed[1] and "DSB2018 score" in printed[2]
    rows = (out / "dvclive" / "plots" / "metrics" / "val" / "dsb_score.tsv").read_text().splitlines()
    assert [r.split("\t")[0] for r in rows[1:]] == ["1", "2"]  # dvclive steps of epochs 2 and 3
    assert load_checkpoint(out / "last.ckpt")["epoch"] == 3


def test_null_validation_fold_trains_on_every_image_and_exports_the_latest_epoch(data_root, tmp_path, capsys):
    from pipeline.config.params import load_config
    from pipeline.data.folds import validation_index

    out = tmp_path / "run"
    params = params_for(data_root, out, epochs=3, val_every=2)
    params["data"]["val_fold"] = None
    train(params)
    printed = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(printed) == 3 and not any("DSB2018 score" in line for line in printed)
    config = yaml.safe_load((out / "model" / "config.yaml").read_text())
    assert config["training"]["epoch"] == 3  # the last epoch, exported without a score to choose by
    assert set(config["training"]["scores"]) == {"train_loss", "lr"}  # no NaN validation scores
    assert config["training"]["data"] == {"train_images": 6, "val_images": 0, "val_fold": None, "split": "stratified"}
    exported, last = load_model_dir(out / "model")[0].state_dict(), load_checkpoint(out / "last.ckpt")["model"]
    assert all(torch.allclose(exported[k].float(), last[k].float(), rtol=1e-3, atol=1e-4) for k in last)  # float16
    # the stages that need a validation fold say so in one line
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    with pytest.raises(NucleiError, match="data.val_fold is null"):
        validation_index(load_config(path).data)


def test_zero_byte_checkpoint_is_one_line(data_root, tmp_path):
    (tmp_path / "last.ckpt").write_bytes(b"")
    with pytest.raises(NucleiError, match=r"last\.ckpt: unreadable checkpoint \(EOFError\)"):
        train(params_for(data_root, tmp_path), resume=True)


def test_out_that_is_a_file_is_one_line_before_training(data_root, tmp_path, capsys):
    params = params_for(data_root, tmp_path / "unused")
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    (tmp_path / "taken").write_text("a file")
    for out in (tmp_path / "taken", tmp_path / "taken" / "run"):
        assert cli_main(["train", "--params", str(path), "--out", str(out), "--device", "cpu"]) == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "cannot write" in err[0] and "taken is a file" in err[0]


def test_checkpoint_write_failure_is_one_line(tmp_path, monkeypatch):
    def full_disk(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 64 vs 0\niostream error")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(NucleiError, match=r"last\.ckpt: cannot write the checkpoint \(\[enforce fail") as info:
        checkpoints_module.save_checkpoint(tmp_path / "last.ckpt", {"epoch": 1})
    assert "\n" not in str(info.value)
    assert not list(tmp_path.iterdir())  # no temporary file left


def pixel_iou(model, data_root: Path, params: dict) -> float:
    """Pixel IoU of P(nucleus) > 0.5 against the labels on the validation images (fold 0)."""
    import numpy as np

    from pipeline.data.folds import read_index, split_folds
    from pipeline.method.heads import get_head
    from pipeline.training.dataset import load_item, pad_to_multiple

    head = get_head(params["model"]["head"])
    _, val_ids = split_folds(read_index(data_root / "prepared"), 0, "stratified")
    inter = union = 0
    model.eval()
    for image_id in val_ids:
        item = load_item(data_root / "prepared", data_root / "targets", image_id)
        h, w = item["labels"].shape
        image = torch.from_numpy(pad_to_multiple(item["image"], 4).transpose(2, 0, 1).copy())[None]
        with torch.no_grad():
            probs = head.activate(model(image))[0, :, :h, :w].numpy()
        pred, true = head.mask_and_marker(probs)[0] > 0.5, item["labels"] > 0
        inter, union = inter + np.sum(pred & true), union + np.sum(pred | true)
    return float(inter / max(union, 1))


def test_training_lowers_the_loss_and_beats_the_untrained_network(data_root, tmp_path):
    from pipeline.model.networks import build_model

    params = params_for(data_root, tmp_path / "run", epochs=6, samples_per_epoch=16, lr=0.02)
    torch.manual_seed(0)
    untrained = pixel_iou(build_model(params["model"]), data_root, params)
    model, _ = fit(params)
    history = load_checkpoint(tmp_path / "run" / "last.ckpt")["history"]
    losses = [row["train_loss"] for row in history]
    trained = pixel_iou(model, data_root, params)
    print(f"train loss {losses}, pixel IoU untrained {untrained:.3f} trained {trained:.3f}")
    assert losses[-1] < 0.8 * losses[0]
    assert trained > untrained + 0.2 and trained > 0.5


class _FixedLogits(torch.nn.Module):
    """A stand-in network whose logits are fixed, whatever the image."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.register_buffer("logits", logits)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(image.shape[0], -1, -1, -1)


def test_validation_applies_the_stained_object_threshold():
    """Training-time validation post-processes as `nuclei postprocess` does: a stained (colour)
    validation image takes postprocess.stained_object_threshold, a grey one object_threshold."""
    from pipeline.config.params import PostprocessConfig
    from pipeline.training.steps import postprocess_function, validate
    from tests.conftest import disc

    shape = (64, 96)
    labels = np.zeros(shape, np.int32)
    labels[disc(shape, (32, 24), 12)] = 1
    labels[disc(shape, (32, 70), 12)] = 2
    mask = np.where(labels == 1, 0.999, np.where(labels == 2, 0.97, 0.001))  # less sure of nucleus 2
    probs = np.stack([mask, np.full(shape, 0.001)]).astype(np.float32)  # sigmoid: mask, border
    model = _FixedLogits(torch.logit(torch.from_numpy(probs))[None])
    grey = np.full((*shape, 3), 0.2, np.float32)
    stained = np.full((*shape, 3), (0.8, 0.5, 0.9), np.float32)  # colour on a bright background
    post = PostprocessConfig(marker_threshold=0.9, mask_threshold=0.9, min_size=4,
                             object_threshold=0.99, stained_object_threshold=0.95)
    segment = postprocess_function("sigmoid", post)

    def score(image: np.ndarray) -> float:
        batch = {"image": torch.from_numpy(image.transpose(2, 0, 1))[None],
                 "labels": torch.from_numpy(labels)[None],
                 **{k: torch.zeros((1, *shape)) for k in ("classes", "mask", "border", "weights")}}
        _, total, count, *_ = validate(model, [batch], lambda logits, t: torch.zeros(()), "sigmoid",
                                       segment, torch.device("cpu"))
        return total / count

    assert score(stained) == pytest.approx(1.0)  # both nuclei kept
    assert score(grey) == pytest.approx(0.5)  # nucleus 2 dropped: 1 TP, 1 FN at every IoU threshold

    # per source: two grey images and one stained one, in groups 1, 1, 0
    batches = [{"image": torch.from_numpy(im.transpose(2, 0, 1))[None], "labels": torch.from_numpy(labels)[None],
                **{k: torch.zeros((1, *shape)) for k in ("classes", "mask", "border", "weights")}}
               for im in (grey, grey, stained)]
    sums = validate(model, batches, lambda logits, t: torch.zeros(()), "sigmoid", segment, torch.device("cpu"),
                    groups=[1, 1, 0], n_groups=3)
    assert sums[1:] == pytest.approx([2.0, 3, 1.0, 1.0, 0.0, 1, 2, 0])  # totals; scores of groups 0-2; images


def test_validation_score_means_over_images_or_over_sources():
    """``train.val_balance``: a source of many images does not outvote the others under 'source'."""
    from pipeline.training.steps import validation_score

    # loss, score sum, images; per source: score sums (0.8 over 8 images, 0.9 over 1, none), image counts
    sums = [4.0, 0.8 * 8 + 0.9, 9, 0.8 * 8, 0.9, 0.0, 8, 1, 0]
    assert validation_score(sums, "image") == pytest.approx((0.8 * 8 + 0.9) / 9)
    assert validation_score(sums, "source") == pytest.approx((0.8 + 0.9) / 2)  # the empty source left out
    assert validation_score([1.0, 0.6, 2, 0.6, 2], "source") == pytest.approx(0.3)  # one source: the image mean


def test_ship_model_last_ships_the_last_epochs_float32_checkpoint(data_root, tmp_path):
    out = tmp_path / "run"
    params = params_for(data_root, out, epochs=2, lr=0.01)
    train(params)
    # stand in for a best validation epoch before the last: epoch 1, other weights
    best, best_config = load_model_dir(out / "model")
    torch.nn.init.zeros_(next(best.parameters()))
    save_model_dir(out / "model", best, best_config.replace(training={**best_config.training, "epoch": 1}))
    params["predict"] = {"model": str(out / "model")}
    params["evaluate"] = {"out": str(tmp_path / "no-metrics")}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(json.loads(json.dumps(params, default=str))))
    result = ship_model(tmp_path / "params.yaml", tmp_path / "shipped", "--last", "--stained-diameter", "24")
    model, config = load_model_dir(tmp_path / "shipped")
    ckpt = load_checkpoint(out / "last.ckpt")
    assert config.training["epoch"] == 2 and config.stained_diameter == 24
    assert config.training["scores"]["train_loss"] == ckpt["history"][-1]["train_loss"]
    assert config.training["time_s"] == round(float(ckpt["time_s"]), 1)
    for key, value in model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, ckpt["model"][key].float(), atol=2e-3, rtol=2e-3)
    assert "float16 vs float32 probabilities" in result.stdout


def test_ship_model_records_validation_figures_only_at_the_stained_scale_they_were_measured(tmp_path):
    """Figures of a model evaluated with stained images at 20 px do not describe it shipped at 24 px."""
    from pipeline.model.networks import build_model

    cfg = {"arch": "unet", "head": "sigmoid", "depth": 2, "width": 4, "upsampling": "transpose"}
    save_model_dir(tmp_path / "evaluated", build_model(cfg), {"model": cfg, "diameter": 20.0})
    (tmp_path / "metrics").mkdir()
    (tmp_path / "metrics" / "details.json").write_text(json.dumps({"dsb_score": 0.5, "n_images": 3}))
    params = {"predict": {"model": str(tmp_path / "evaluated")}, "evaluate": {"out": str(tmp_path / "metrics")},
              "train": {"out": str(tmp_path / "no-run")}, "postprocess": {"marker_threshold": 0.6}}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))

    ship_model(tmp_path / "params.yaml", tmp_path / "same", "--stained-diameter", "20")
    config = load_model_dir(tmp_path / "same")[1]
    assert config.training["validation"]["dsb_score"] == 0.5
    assert config.postprocess.marker_threshold == 0.6
    stdout = ship_model(tmp_path / "params.yaml", tmp_path / "rescaled", "--stained-diameter", "24").stdout
    config = load_model_dir(tmp_path / "rescaled")[1]
    assert config.stained_diameter == 24 and "validation" not in config.training
    assert "not recorded: measured with stained images at 20.0 px, shipped at 24.0 px" in stdout


def ship_model(params: Path, out: Path, *options: str) -> subprocess.CompletedProcess:
    """Run ``python -m scripts.ship_model --params params -o out *options``; assert that it succeeded."""
    command = [sys.executable, "-m", "scripts.ship_model", "--params", str(params), "-o", str(out), *options]
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    return result
