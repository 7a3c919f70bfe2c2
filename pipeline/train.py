"""The ``train`` stage: fit the U-Net on the training folds, validate on the held-out fold.

Outputs in ``train.out`` (default ``models/trained``):

- ``model/``: the best model so far (highest DSB2018 score on the validation fold), a model
  directory (see :func:`pipeline.models.save_model_dir`) whose ``config.yaml`` also holds the
  ``postprocess`` thresholds, the normalisation and the training provenance;
- ``last.ckpt``: the state after the last finished epoch (model, optimiser, schedule,
  gradient scaler, random generators, best score), from which ``--resume`` continues exactly;
- ``dvclive/``: ``metrics.json`` and ``plots/metrics/*.tsv`` (per-epoch training and
  validation loss, DSB2018 score, learning rate) for ``dvc metrics show`` / ``dvc plots show``.

Runs on one CPU or GPU, or on several processes under ``torchrun --nproc_per_node N``
(DistributedDataParallel; NCCL on GPUs, gloo on CPUs). ``train.batch_size`` is per process.
Only rank 0 writes files; validation is sharded over the processes and the sums all-reduced.

Reproducibility: on the CPU the same parameters give bit-identical weights, whatever the number
of data-loader workers, and an interrupted run resumed from ``last.ckpt`` ends with the same
weights as an uninterrupted one (see :mod:`pipeline.dataset` for how the data are seeded).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import os
import platform
import random
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.errors import NucleiError, OutputError, one_line
from pipeline.runtime import (
    PRECISIONS,
    autocast,
    prepare_model,
    resolve_device,
    resolve_precision,
    set_threads,
    to_channels_last,
)

CHECKPOINT_NAME = "last.ckpt"
MODEL_DIR_NAME = "model"
DVCLIVE_DIR_NAME = "dvclive"

#: Defaults of the ``train`` section of params.yaml.
DEFAULTS: dict[str, Any] = {
    "out": "models/trained",
    "epochs": 6,
    "batch_size": 8,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "schedule": "onecycle",
    "workers": 2,
    "precision": "auto",
    "compile": False,
    "samples_per_epoch": None,
    "device": "auto",
    "cache_mb": 1024,
    "val_every": 1,
}
SCHEDULES = ("onecycle", "cosine")


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei train``."""
    parser.add_argument("--params", default="params.yaml", help="parameter file (default: %(default)s)")
    parser.add_argument("--resume", action="store_true", help=f"continue from <out>/{CHECKPOINT_NAME}")
    parser.add_argument("--fold", type=int, help="validation fold (default: data.val_fold)")
    parser.add_argument("--epochs", type=int, help="number of epochs (default: train.epochs)")
    parser.add_argument("--out", help="output folder (default: train.out)")
    parser.add_argument("--device", help="auto | cpu | cuda | cuda:N (default: train.device)")


def main(args: argparse.Namespace) -> int:
    """Run the ``train`` stage; returns the exit status."""
    from pipeline.config import load_params

    params = copy.deepcopy(load_params(args.params))
    if not isinstance(params.get("train"), dict):
        raise NucleiError(f"{args.params}: missing section 'train'")
    overrides = {"epochs": args.epochs, "out": args.out, "device": args.device}
    params["train"].update({k: v for k, v in overrides.items() if v is not None})
    if args.fold is not None:
        params.setdefault("data", {})["val_fold"] = args.fold
    model_dir = train(params, resume=args.resume, source=args.params)
    if _rank() == 0:
        print(f"model written to {model_dir}")
    return 0


# --------------------------------------------------------------------------- library


def train(params: dict, resume: bool = False, source: str | Path = "params.yaml") -> Path:
    """Train a model with the parameters of ``params.yaml``.

    Parameters
    ----------
    params : dict
        All sections of params.yaml (``seed``, ``data``, ``targets``, ``model``, ``loss``,
        ``augment``, ``train``, ``postprocess``).
    resume : bool
        Continue from ``<train.out>/last.ckpt`` when it exists (else start afresh).
    source : str or Path
        Where ``params`` came from, for error messages.

    Returns
    -------
    model_dir : Path
        ``<train.out>/model``, the best model directory.
    """
    return fit(params, resume=resume, source=source)[1]


def fit(params: dict, resume: bool = False, source: str | Path = "params.yaml") -> tuple[nn.Module, Path]:
    """:func:`train`, also returning the trained network (final weights, on every rank).

    Returns
    -------
    model : torch.nn.Module
        The plain network after the last epoch, in eval mode.
    model_dir : Path
        ``<train.out>/model``, the best model directory (written by rank 0).
    """
    cfg = train_config(params, source)
    if _rank() == 0:  # before any work: a file or a read-only place as train.out
        from pipeline.io import check_writable_folder

        check_writable_folder(cfg["out"])
    initialised = _init_distributed(cfg["device"])
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return _Run(params, cfg, resume, source).fit()
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if initialised:
            torch.distributed.destroy_process_group()


def train_config(params: dict, source: str | Path = "params.yaml") -> dict[str, Any]:
    """The ``train`` section merged with :data:`DEFAULTS` and checked.

    Raises
    ------
    NucleiError
        A value of the wrong kind or out of range.
    """
    section = params.get("train") or {}
    if not isinstance(section, dict):
        raise NucleiError(f"{source}: section 'train' must be a mapping")
    cfg = {**DEFAULTS, **section}
    for key in ("epochs", "batch_size", "workers", "val_every"):
        value = cfg[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < (0 if key == "workers" else 1):
            raise NucleiError(
                f"{source}: train.{key} must be a whole number ≥ {0 if key == 'workers' else 1}, got {value!r}"
            )
    spe = cfg["samples_per_epoch"]
    if spe is not None and (isinstance(spe, bool) or not isinstance(spe, int) or spe < 1):
        raise NucleiError(
            f"{source}: train.samples_per_epoch must be null or a whole number ≥ 1, got {spe!r}"
        )
    for key in ("lr", "weight_decay", "cache_mb"):
        if isinstance(cfg[key], bool) or not isinstance(cfg[key], (int, float)) or cfg[key] < 0:
            raise NucleiError(f"{source}: train.{key} must be a number ≥ 0, got {cfg[key]!r}")
    if cfg["precision"] not in PRECISIONS:
        raise NucleiError(
            f"{source}: train.precision must be one of {', '.join(PRECISIONS)}, got {cfg['precision']!r}"
        )
    if cfg["schedule"] not in SCHEDULES:
        raise NucleiError(
            f"{source}: train.schedule must be one of {', '.join(SCHEDULES)}, got {cfg['schedule']!r}"
        )
    return cfg


# --------------------------------------------------------------------------- devices, processes


def _rank() -> int:
    dist = torch.distributed
    return (
        dist.get_rank() if dist.is_available() and dist.is_initialized() else int(os.environ.get("RANK", 0))
    )


def _world_size() -> int:
    dist = torch.distributed
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _init_distributed(device_name: str) -> bool:
    """Join the process group when started by ``torchrun`` (``WORLD_SIZE`` > 1)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or torch.distributed.is_initialized():
        return False
    device = resolve_device(device_name, int(os.environ.get("LOCAL_RANK", 0)))
    if device.type == "cuda":
        torch.cuda.set_device(device)
    torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return True


def _all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a few numbers over all processes (identity on one process)."""
    if _world_size() == 1:
        return values
    t = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return t.tolist()


def _average_buffers(model: nn.Module) -> None:
    """Average floating-point buffers (batch-norm statistics) over processes.

    DistributedDataParallel keeps parameters identical but each process updates its running
    statistics on its own batches; averaging them at the end of an epoch gives every process the
    same model (for sharded validation and the checkpoint).
    """
    world = _world_size()
    if world == 1:
        return
    for buf in model.buffers():
        if buf.is_floating_point():
            torch.distributed.all_reduce(buf)
            buf.div_(world)


def hardware_summary(device: torch.device, precision: str = "fp32") -> dict[str, Any]:
    """Provenance: what the training ran on, and in which precision."""
    info = {
        "device": str(device),
        "device_name": (
            torch.cuda.get_device_name(device)
            if device.type == "cuda"
            else platform.processor() or platform.machine()
        ),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "processes": _world_size(),
        "precision": precision,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }
    return info


# --------------------------------------------------------------------------- random state


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)  # noqa: NPY002 - the global state is what we restore
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The global random generator states, in a form ``torch.load(weights_only=True)`` reads."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()  # noqa: NPY002
    state = {
        "python": random.getstate(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(gauss)],
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, cached))  # noqa: NPY002
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        with contextlib.suppress(RuntimeError):  # a different number of GPUs
            torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------- checkpoints


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a training checkpoint atomically (a full disk: one-line :class:`OutputError`)."""
    from pipeline.io import atomic_path

    try:
        with atomic_path(path) as tmp:
            torch.save(state, tmp)
    except RuntimeError as exc:  # torch reports write failures as RuntimeError ("iostream error")
        raise OutputError(f"{path}: cannot write the checkpoint ({one_line(exc)})") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (tensors and plain data only).

    Raises
    ------
    NucleiError
        Unreadable or truncated file.
    """
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt files
        raise NucleiError(f"{path}: unreadable checkpoint ({one_line(exc)})") from None


def truncate_plots(folder: str | Path, steps: int) -> None:
    """Keep the first ``steps`` steps (rows with ``step < steps``) of dvclive's metric tables.

    An interrupted run may have logged an epoch that its checkpoint does not hold; the resumed
    run logs that epoch again.
    """
    import pandas as pd

    from pipeline.io import atomic_path

    for tsv in Path(folder).rglob("*.tsv"):
        table = pd.read_csv(tsv, sep="\t")
        if "step" in table and (table["step"] >= steps).any():
            with atomic_path(tsv) as tmp:
                table[table["step"] < steps].to_csv(tmp, sep="\t", index=False)


def _replace_dir(tmp: Path, final: Path) -> None:
    """Swap a fully written folder ``tmp`` into place as ``final``."""
    old = final.with_name(f".{final.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------- one step


def train_step(
    net: nn.Module,
    batch: dict[str, torch.Tensor],
    loss_fn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler,
    device: torch.device,
    precision: str = "fp32",
) -> torch.Tensor:
    """One optimisation step on a batch of training items.

    Parameters
    ----------
    net : torch.nn.Module
        The network (possibly DDP-wrapped or compiled), in training mode.
    batch : dict of tensors
        ``image`` float32 (B, 3, H, W) and the targets of :class:`pipeline.dataset.NucleiDataset`.
    loss_fn : callable(logits, batch) -> scalar tensor
    optimizer, scaler
        The scaler is a no-op unless float16 autocast is used.
    device : torch.device
    precision : {'fp32', 'bf16', 'fp16'}
        A resolved precision (:func:`pipeline.runtime.resolve_precision`): autocast dtype of the
        forward pass. The image goes in channels-last memory format (the network should be in it
        too, :func:`pipeline.runtime.prepare_model`).

    Returns
    -------
    loss : torch.Tensor
        The detached scalar loss (on ``device``; no host synchronisation).
    """
    image = to_channels_last(batch["image"], device)
    batch = {k: v.to(device, non_blocking=True) for k, v in batch.items() if k != "image"}
    with autocast(device, precision):
        logits = net(image)
    loss = loss_fn(logits.float(), batch)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    scaler.step(optimizer)
    scaler.update()
    return loss.detach()


# --------------------------------------------------------------------------- validation


def _postprocess_function(head: str, postprocess_cfg: dict, source: str | Path):
    """``probs (C, H, W) -> int32 labels``: the watershed of the postprocess stage."""
    from pipeline import watershed

    kwargs = watershed.thresholds(postprocess_cfg, source)
    return lambda probs: watershed.postprocess(probs, head, **kwargs)


@torch.no_grad()
def validate(model: nn.Module, loader, loss_fn, head: str, segment, device: torch.device, precision="fp32"):
    """Loss and DSB2018 score of ``model`` on whole validation images.

    Parameters
    ----------
    model : torch.nn.Module
        Plain network; put in eval mode here, and back in training mode at the end.
    loader : iterable of validation items of :class:`pipeline.dataset.NucleiDataset` (batch 1).
    loss_fn : callable(logits, batch) -> scalar tensor
    head : {'softmax', 'sigmoid'}
    segment : callable, probabilities float32 (C, H, W) -> int32 labels (H, W)
    device : torch.device
    precision : {'fp32', 'bf16', 'fp16'}
        A resolved precision (autocast of the forward pass).

    Returns
    -------
    sums : list of float
        ``[sum of losses, sum of DSB2018 scores, number of images]`` over ``loader``.
    """
    from pipeline.dataset import TARGET_KEYS
    from pipeline.metrics import dsb_score
    from pipeline.models import logits_to_probs

    model.eval()
    loss_sum = score_sum = count = 0.0
    for batch in loader:
        labels = batch["labels"][0].numpy()
        h, w = labels.shape
        image = to_channels_last(batch["image"], device)
        with autocast(device, precision):
            logits = model(image)
        logits = logits[..., :h, :w].float()
        targets = {k: batch[k].to(device, non_blocking=True) for k in TARGET_KEYS}
        targets["classes"] = targets["classes"].long()
        loss_sum += float(loss_fn(logits, targets))
        probs = logits_to_probs(logits, head)[0].cpu().numpy()
        score_sum += dsb_score(labels, segment(probs))
        count += 1
    model.train()
    return [loss_sum, score_sum, count]


# --------------------------------------------------------------------------- the run


class _Run:
    """One training run: data, model, optimisation state, outputs (see :func:`fit`)."""

    def __init__(self, params: dict, cfg: dict, resume: bool, source: str | Path):
        self.params, self.cfg, self.resume, self.source = params, cfg, resume, source
        self.rank, self.world = _rank(), _world_size()
        self.device = resolve_device(cfg["device"], int(os.environ.get("LOCAL_RANK", 0)))
        self.out = Path(cfg["out"])
        self.seed = int(params.get("seed", 0) or 0)
        self.model_cfg = dict(params.get("model") or {})
        self.head = self.model_cfg.get("head", "softmax")

    # -- set-up

    def _setup_determinism(self) -> None:
        seed_everything(self.seed)
        if self.device.type == "cpu":
            set_threads()
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.backends.cudnn.benchmark = True

    def _setup_data(self) -> None:
        from pipeline.augment import build_augmentation
        from pipeline.dataset import EpochSampler, NucleiDataset, make_loader, read_index
        from pipeline.models import model_stride
        from pipeline.prepare import split_folds

        data = self.params.get("data") or {}
        prepared = Path(data.get("prepared", "data/prepared"))
        targets = Path((self.params.get("targets") or {}).get("out", "data/targets"))
        index = read_index(prepared)
        self.val_fold = int(data.get("val_fold", 0))
        self.split = data.get("split", "stratified")
        self.train_ids, self.val_ids = split_folds(index, self.val_fold, self.split, prepared / "index.csv")
        cfg, cuda = self.cfg, self.device.type == "cuda"
        common = dict(prepared=prepared, targets=targets, seed=self.seed, cache_mb=cfg["cache_mb"])
        train_set = NucleiDataset(
            self.train_ids,
            train=True,
            transform=build_augmentation(self.params.get("augment") or {}, train=True),
            samples_per_epoch=cfg["samples_per_epoch"],
            **common,
        )
        self.sampler = EpochSampler(train_set, self.world, self.rank, shuffle=True, seed=self.seed)
        self.loader = make_loader(
            train_set,
            cfg["batch_size"],
            self.sampler,
            cfg["workers"],
            pin_memory=cuda,
            seed=self.seed,
            drop_last=len(self.sampler) >= cfg["batch_size"],  # batch norm dislikes a batch of 1
        )
        if len(self.loader) == 0:
            raise NucleiError(f"{self.source}: train.batch_size is larger than the samples of an epoch")
        shard = self.val_ids[self.rank :: self.world]
        self.val_loader = []
        if shard:
            val_set = NucleiDataset(shard, train=False, stride=model_stride(self.model_cfg), **common)
            self.val_loader = make_loader(val_set, 1, None, min(cfg["workers"], 1), cuda, self.seed)

    def _setup_model(self) -> None:
        from pipeline.losses import build_loss
        from pipeline.models import build_model

        cfg, cuda = self.cfg, self.device.type == "cuda"
        self.model = prepare_model(build_model(self.model_cfg), self.device)
        self.net = self.model  # what the training step calls
        if self.world > 1:
            ids = [self.device.index] if cuda else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg["compile"] and cuda:
            self.net = torch.compile(self.net)
        self.loss_fn = build_loss(self.params.get("loss") or {}, self.head)
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=cfg["lr"], weight_decay=cfg["weight_decay"]
        )
        total = cfg["epochs"] * len(self.loader)
        if cfg["schedule"] == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=cfg["lr"], total_steps=total
            )
        else:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=total, eta_min=cfg["lr"] * 1e-2
            )
        self.precision = resolve_precision(cfg["precision"], self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.segment = _postprocess_function(self.head, self.params.get("postprocess") or {}, self.source)

    def _model_config(self) -> dict[str, Any]:
        from pipeline.intensity import NORMALIZATION

        post = self.params.get("postprocess") or {}
        diameter = (self.params.get("targets") or {}).get("diameter")
        return {
            "model": self.model_cfg,
            "postprocess": {k: v for k, v in post.items() if k != "out"},
            "normalization": dict(NORMALIZATION),
            "diameter": None if diameter is None else float(diameter),
        }

    # -- state

    def _state(self, epoch: int, history: list[dict]) -> dict[str, Any]:
        return {
            "format_version": 1,
            "epoch": epoch,  # finished epochs
            "epochs": self.cfg["epochs"],
            "steps_per_epoch": len(self.loader),
            "processes": self.world,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
            "best_score": self.best_score,
            "best_epoch": self.best_epoch,
            "time_s": self.elapsed(),
            "history": history,
            "config": self._model_config(),
        }

    def _restore(self, path: Path) -> tuple[int, list[dict]]:
        ckpt = load_checkpoint(path)
        expected = {
            "epochs": self.cfg["epochs"],
            "steps_per_epoch": len(self.loader),
            "processes": self.world,
        }
        for key, value in expected.items():
            if ckpt.get(key) != value:
                raise NucleiError(
                    f"{path}: written by a run with {key} = {ckpt.get(key)}, this run has {value}; "
                    "resume with the same parameters or start afresh without --resume"
                )
        try:
            self.model.load_state_dict(ckpt["model"])
        except RuntimeError as exc:
            raise NucleiError(
                f"{path}: does not fit the model of params.yaml ({str(exc).splitlines()[0]})"
            ) from None
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        set_rng_state(ckpt["rng"])
        self.best_score, self.best_epoch = ckpt["best_score"], ckpt["best_epoch"]
        self.time_before = float(ckpt.get("time_s", 0.0))
        return int(ckpt["epoch"]), list(ckpt.get("history", []))

    def elapsed(self) -> float:
        return self.time_before + time.perf_counter() - self.t0

    # -- outputs (rank 0)

    def _export(self, epoch: int, row: dict) -> None:
        from pipeline.models import save_model_dir

        config = self._model_config()
        config["training"] = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "epoch": epoch + 1,
            "epochs": self.cfg["epochs"],
            "scores": {k: float(v) for k, v in row.items() if k != "epoch"},
            "time_s": round(self.elapsed(), 1),
            "data": {
                "train_images": len(self.train_ids),
                "val_images": len(self.val_ids),
                "val_fold": self.val_fold,
                "split": self.split,
            },
            "hardware": hardware_summary(self.device, self.precision),
            "params": copy.deepcopy(self.params),
        }
        final = self.out / MODEL_DIR_NAME
        tmp = self.out / f".{MODEL_DIR_NAME}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_dir(tmp, self.model, config)
        _replace_dir(tmp, final)

    def _open_live(self, resume: bool, start: int):
        """The dvclive logger; on resume, rows of epochs after the checkpoint are dropped."""
        from dvclive import Live

        folder = self.out / DVCLIVE_DIR_NAME
        if resume:
            truncate_plots(folder / "plots" / "metrics", start)
        return Live(str(folder), resume=resume, save_dvc_exp=False, dvcyaml=None)

    # -- loop

    def _train_epoch(self, epoch: int) -> float:
        from pipeline.io import progress

        self.sampler.set_epoch(epoch)
        self.net.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        steps = 0
        batches = self.loader
        if self.rank == 0:
            batches = progress(self.loader, desc=f"epoch {epoch + 1}/{self.cfg['epochs']}", unit="batch")
        for batch in batches:
            loss = train_step(
                self.net,
                batch,
                self.loss_fn,
                self.optimizer,
                self.scaler,
                self.device,
                self.precision,
            )
            self.scheduler.step()
            total += loss.detach()
            steps += 1
        total_sum, count = _all_reduce_sum([float(total), float(steps)], self.device)
        return total_sum / max(count, 1)

    def fit(self) -> tuple[nn.Module, Path]:
        self._setup_determinism()
        self._setup_data()
        self._setup_model()
        self.best_score, self.best_epoch = float("-inf"), -1
        self.time_before, self.t0 = 0.0, time.perf_counter()
        ckpt_path = self.out / CHECKPOINT_NAME
        start, history = 0, []
        resuming = self.resume and ckpt_path.exists()
        if self.resume and not resuming and self.rank == 0:
            print(f"nuclei: no {ckpt_path}; training from the start", file=sys.stderr)
        if resuming:
            start, history = self._restore(ckpt_path)
        live = self._open_live(resuming, start) if self.rank == 0 else None
        epochs = self.cfg["epochs"]
        for epoch in range(start, epochs):
            train_loss = self._train_epoch(epoch)
            _average_buffers(self.model)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": float("nan"),
                   "val_dsb_score": float("nan"), "lr": self.scheduler.get_last_lr()[0]}
            improved = False
            if (epoch + 1) % int(self.cfg["val_every"]) == 0 or epoch + 1 == epochs:
                sums = validate(
                    self.model,
                    self.val_loader,
                    self.loss_fn,
                    self.head,
                    self.segment,
                    self.device,
                    self.precision,
                )
                loss_sum, score_sum, count = _all_reduce_sum(sums, self.device)
                row["val_loss"], row["val_dsb_score"] = loss_sum / count, score_sum / count
                improved = self.best_epoch < 0 or row["val_dsb_score"] > self.best_score
                if improved:
                    self.best_score, self.best_epoch = row["val_dsb_score"], epoch + 1
            history.append(row)
            if self.rank == 0:  # log, export, then checkpoint: a resume redoes an unsaved epoch
                self._log(live, epoch, row)
                if improved:
                    self._export(epoch, row)
                save_checkpoint(ckpt_path, self._state(epoch + 1, history))
            if self.world > 1:
                torch.distributed.barrier()
        if live is not None:
            live.end()
        self.model.eval()
        return self.model, self.out / MODEL_DIR_NAME

    def _log(self, live, epoch: int, row: dict) -> None:
        live.step = epoch
        live.log_metric("train/loss", row["train_loss"])
        if not np.isnan(row["val_dsb_score"]):  # validated this epoch (see train.val_every)
            live.log_metric("val/loss", row["val_loss"])
            live.log_metric("val/dsb_score", row["val_dsb_score"])
            live.log_metric("val/best_dsb_score", self.best_score)
        live.log_metric("lr", row["lr"])
        live.next_step()
        best = " (best)" if self.best_epoch == epoch + 1 else ""
        val = (
            f", val loss {row['val_loss']:.4f}, DSB2018 score {row['val_dsb_score']:.4f}{best}"
            if not np.isnan(row["val_dsb_score"])
            else ""
        )
        print(f"epoch {epoch + 1}/{self.cfg['epochs']}: train loss {row['train_loss']:.4f}{val}", flush=True)
