"""The training loop: a :class:`Trainer` that fits the network of a :class:`~pipeline.config.params.Config`.

:class:`Trainer` owns one run: data loaders, network (DDP-wrapped and compiled when asked), loss
(:func:`pipeline.training.losses.build_loss`, for the configured head), optimiser, schedule, gradient
scaler, validation and the outputs (best model directory, ``last.ckpt``, dvclive). Its named
hooks, in call order, can be overridden by a subclass:

- :meth:`Trainer.setup` (``setup_determinism``, ``setup_data``, ``setup_model``);
- per epoch :meth:`Trainer.train_epoch` (over :meth:`Trainer.batches`), :meth:`Trainer.validate_epoch` (every
  ``train.val_every`` epochs and after the last), :meth:`Trainer.on_epoch_end` (log, export the
  best model, checkpoint); with no validation images (``data.val_fold`` null) the latest
  validation epoch is exported instead;
- :meth:`Trainer.on_fit_end`.

:func:`pipeline.training.steps.train_step` and :func:`pipeline.training.steps.validate` are the step functions.

Must not: parse command lines or read params.yaml (:mod:`pipeline.stages.train`), define networks,
heads or losses, or write files other than ``train.out``.
"""

from __future__ import annotations

import os
import platform
import shutil
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.config.model_folder import CONFIG_NAME, ModelDirConfig
from pipeline.config.params import Config
from pipeline.errors import NucleiError
from pipeline.model.runtime import prepare_model, resolve_device, resolve_precision, set_threads
from pipeline.training.checkpoints import (
    CHECKPOINT_NAME,
    load_checkpoint,
    replace_dir,
    rng_state,
    save_checkpoint,
    seed_everything,
    set_rng_state,
    truncate_plots,
)
from pipeline.training.distributed import all_reduce_sum, average_buffers, rank, world_size
from pipeline.training.steps import postprocess_function, train_step, validate, validation_score

MODEL_DIR_NAME = "model"
DVCLIVE_DIR_NAME = "dvclive"


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
        "processes": world_size(),
        "precision": precision,
        "torch": str(torch.__version__),
        "python": platform.python_version(),
    }
    return info


# --------------------------------------------------------------------------- the run


def sources_of(index, ids) -> np.ndarray:
    """The ``source`` of each image of ``ids`` in a prepared ``index`` (DataFrame with ``id``);
    one unnamed source ("") when the index has no ``source`` column."""
    if "source" not in index.columns:
        return np.full(len(ids), "", dtype=object)
    return index.set_index("id").loc[list(ids), "source"].to_numpy()


def epoch_scores(row: dict) -> dict[str, float]:
    """What a model directory records of one epoch's history ``row`` (``training.scores``): every
    value but the epoch number, without those not measured that epoch (NaN: no validation)."""
    return {k: float(v) for k, v in row.items() if k != "epoch" and not np.isnan(v)}


class Trainer:
    """One training run of ``config`` (see the module docstring for the hooks).

    Parameters
    ----------
    config : Config
        All sections (``seed``, ``data``, ``targets``, ``model``, ``loss``, ``augment``,
        ``train``, ``postprocess`` are used).
    resume : bool
        Continue from ``<train.out>/last.ckpt`` when it exists.
    """

    #: source (index into the validation sources) of each validation image of this process,
    #: and the number of those sources; set by :meth:`setup_data` (one source otherwise)
    val_groups: list[int] | None = None
    n_val_groups: int = 1

    def __init__(self, config: Config, resume: bool = False):
        self.config, self.cfg, self.resume = config, config.train, resume
        self.source = config.source
        self.rank, self.world = rank(), world_size()
        self.device = resolve_device(self.cfg.device, int(os.environ.get("LOCAL_RANK", 0)))
        self.out = Path(self.cfg.out)
        self.seed = config.seed
        self.model_cfg = config.model
        self.head = self.model_cfg.head

    # -- set-up

    def setup(self) -> None:
        """Seed and configure determinism, build the data loaders, the model and its optimiser."""
        self.setup_determinism()
        self.setup_data()
        self.setup_model()

    def setup_determinism(self) -> None:
        seed_everything(self.seed)
        if self.device.type == "cpu":
            set_threads()
            torch.use_deterministic_algorithms(True, warn_only=True)
        else:
            torch.backends.cudnn.benchmark = True

    def setup_data(self) -> None:
        from pipeline.data.folds import split_folds
        from pipeline.model.networks import model_stride
        from pipeline.training.augment import build_augmentation
        from pipeline.training.dataset import EpochSampler, NucleiDataset, make_loader, read_index

        data = self.config.data
        prepared = Path(data.prepared)
        targets = Path(self.config.targets.out)
        index, source = read_index(prepared, sources=list(data.sources)), prepared / "index.csv"
        self.val_fold, self.split = data.val_fold, data.split
        self.train_ids, self.val_ids = split_folds(index, self.val_fold, self.split, source)
        cfg, cuda = self.cfg, self.device.type == "cuda"
        common = dict(prepared=prepared, targets=targets, seed=self.seed, cache_mb=cfg.cache_mb)
        train_set = NucleiDataset(
            self.train_ids,
            train=True,
            transform=build_augmentation(self.config.augment, train=True),
            samples_per_epoch=cfg.samples_per_epoch,
            draw_weights=self.draw_weights(index, cfg, source),
            **common,
        )
        self.sampler = EpochSampler(train_set, self.world, self.rank, shuffle=True, seed=self.seed)
        self.loader = make_loader(
            train_set,
            cfg.batch_size,
            self.sampler,
            cfg.workers,
            pin_memory=cuda,
            seed=self.seed,
            drop_last=len(self.sampler) >= cfg.batch_size,  # batch norm dislikes a batch of 1
        )
        if len(self.loader) == 0:
            raise NucleiError(f"{self.source}: train.batch_size is larger than the samples of an epoch")
        shard = self.val_ids[self.rank :: self.world]
        names, groups = np.unique(sources_of(index, self.val_ids), return_inverse=True)
        self.val_groups, self.n_val_groups = groups[self.rank :: self.world].tolist(), len(names)
        self.val_loader = []
        if shard:
            val_set = NucleiDataset(shard, train=False, stride=model_stride(self.model_cfg), **common)
            self.val_loader = make_loader(val_set, 1, None, min(cfg.workers, 1), cuda, self.seed)

    def draw_weights(self, index, cfg, source: Path):
        """Draw probabilities of the training images for ``train.source_balance``,
        ``train.source_weights`` and ``train.group_balance`` (None when all are neutral: every
        image equally, the even schedule of :class:`pipeline.training.dataset.NucleiDataset`);
        ``source`` is the index file, for the errors of an unknown source and a missing ``group``
        column."""
        from pipeline.training.dataset import source_balance_weights

        if cfg.group_balance == 1.0 and cfg.source_balance == 1.0 and not cfg.source_weights:
            return None
        names = sources_of(index, self.train_ids)
        unknown = sorted(set(cfg.source_weights) - set(names))
        if unknown:
            raise NucleiError(f"{source}: train.source_weights names {', '.join(unknown)}, "
                              f"not among the training sources ({', '.join(sorted(set(names)))})")
        if "group" not in index.columns:
            raise NucleiError(f"{source}: no column 'group' for train.group_balance (re-run `nuclei prepare`)")
        groups = index.set_index("id").loc[self.train_ids, "group"].to_numpy()
        return source_balance_weights(names, groups, cfg.source_balance, cfg.group_balance, cfg.source_weights)

    def setup_model(self) -> None:
        from pipeline.model.networks import build_model
        from pipeline.training.losses import build_loss

        cfg, cuda = self.cfg, self.device.type == "cuda"
        network = build_model(self.model_cfg)
        if cfg.init:  # a resumed run's checkpoint then replaces these weights
            self.initialise(network, Path(cfg.init))
        self.model = prepare_model(network, self.device)
        self.net = self.model  # what the training step calls
        if self.world > 1:
            ids = [self.device.index] if cuda else None
            self.net = nn.parallel.DistributedDataParallel(self.model, device_ids=ids)
        if cfg.compile and cuda:
            self.net = torch.compile(self.net)
        self.loss_fn = build_loss(self.config.loss, self.head)
        self.optimizer = torch.optim.AdamW(self.model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        total = cfg.epochs * len(self.loader)
        if cfg.schedule == "onecycle":
            self.scheduler = torch.optim.lr_scheduler.OneCycleLR(self.optimizer, max_lr=cfg.lr, total_steps=total)
        else:
            self.scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(
                self.optimizer, T_max=total, eta_min=cfg.lr * 1e-2
            )
        self.precision = resolve_precision(cfg.precision, self.device)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.precision == "fp16")
        self.segment = postprocess_function(self.head, self.config.postprocess)

    def initialise(self, network: nn.Module, source: Path) -> None:
        """Start from the weights of ``source`` (``train.init``: fine-tuning, or the next stage).

        ``source`` is a model directory (a run's best epoch, float16 when shipped) or a run's
        checkpoint file (``<train.out>/last.ckpt``: its last epoch, float32). It must hold the
        architecture of ``model`` in params.yaml; optimiser and schedule start afresh.
        """
        from pipeline.model.model_dir import load_model_dir

        if source.is_file():
            checkpoint = load_checkpoint(source)
            config, weights = ModelDirConfig.from_dict(checkpoint["config"], source), checkpoint["model"]
        else:
            trained, config = load_model_dir(source)
            weights = trained.state_dict()
        ours = {k: v for k, v in self.model_cfg.to_dict().items() if k != "encoder_weights"}
        theirs = {k: getattr(config.model, k) for k in ours}
        if ours != theirs:
            diff = ", ".join(f"{k} {theirs[k]!r} (params.yaml: {ours[k]!r})" for k in ours if ours[k] != theirs[k])
            raise NucleiError(f"{source}: train.init has another architecture: {diff}")
        network.load_state_dict(weights)

    def model_config(self) -> ModelDirConfig:
        """What a model directory records besides provenance (the normalisation of new models)."""
        return ModelDirConfig(model=self.model_cfg, postprocess=self.config.postprocess,
                              diameter=self.config.targets.diameter, source=self.out / MODEL_DIR_NAME / CONFIG_NAME)

    # -- state

    def state(self, epoch: int, history: list[dict]) -> dict[str, Any]:
        """The checkpoint after ``epoch`` finished epochs."""
        return {
            "format_version": 1,
            "epoch": epoch,  # finished epochs
            "epochs": self.cfg.epochs,
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
            "config": self.model_config().to_dict(),
        }

    def restore(self, path: Path) -> tuple[int, list[dict]]:
        """Load a checkpoint; returns (finished epochs, history)."""
        ckpt = load_checkpoint(path)
        expected = {"epochs": self.cfg.epochs, "steps_per_epoch": len(self.loader), "processes": self.world}
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

    def export(self, epoch: int, row: dict) -> None:
        """Write the model of ``epoch`` as ``<out>/model`` (swapped in whole)."""
        from pipeline.model.model_dir import save_model_dir

        config = self.model_config().replace(training={
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "epoch": epoch + 1,
            "epochs": self.cfg.epochs,
            "scores": epoch_scores(row),
            "time_s": round(self.elapsed(), 1),
            "data": {
                "train_images": len(self.train_ids),
                "val_images": len(self.val_ids),
                "val_fold": self.val_fold,
                "split": self.split,
            },
            "hardware": hardware_summary(self.device, self.precision),
            "params": self.config.to_dict(),
        })
        final = self.out / MODEL_DIR_NAME
        tmp = self.out / f".{MODEL_DIR_NAME}.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        save_model_dir(tmp, self.model, config)
        replace_dir(tmp, final)

    def open_live(self, resume: bool, start: int):
        """The dvclive logger; on resume, rows of epochs after the checkpoint are dropped. None,
        with a one-line notice, where dvclive is not installed (a bare GPU machine): the epochs are
        then in the printed log and in ``last.ckpt``'s history alone."""
        try:
            from dvclive import Live
        except ImportError:
            print(f"nuclei: dvclive is not installed; no {DVCLIVE_DIR_NAME}/ metrics (the epochs are in "
                  f"{CHECKPOINT_NAME})", file=sys.stderr)
            return None
        folder = self.out / DVCLIVE_DIR_NAME
        if resume:
            truncate_plots(folder / "plots" / "metrics", start)
        return Live(str(folder), resume=resume, save_dvc_exp=False, dvcyaml=None)

    # -- hooks of the loop

    def batches(self, epoch: int):
        """The training batches of ``epoch``, with a progress bar on rank 0."""
        from pipeline.progress import progress

        if self.rank != 0:
            return self.loader
        return progress(self.loader, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch")

    def train_epoch(self, epoch: int) -> float:
        """One epoch of optimisation; returns the mean training loss over all processes."""
        self.sampler.set_epoch(epoch)
        self.net.train()
        total = torch.zeros((), dtype=torch.float64, device=self.device)
        steps = 0
        for batch in self.batches(epoch):
            loss = train_step(
                self.net, batch, self.loss_fn, self.optimizer, self.scaler, self.device, self.precision
            )
            self.scheduler.step()
            total += loss.detach()
            steps += 1
        total_sum, count = all_reduce_sum([float(total), float(steps)], self.device)
        return total_sum / max(count, 1)

    def validate_epoch(self) -> tuple[float, float]:
        """(mean validation loss, DSB2018 score) over all processes; the score is the mean over
        sources or over images (``train.val_balance``, :func:`pipeline.training.steps.validation_score`)."""
        sums = validate(
            self.model, self.val_loader, self.loss_fn, self.head, self.segment, self.device, self.precision,
            groups=self.val_groups, n_groups=self.n_val_groups,
        )
        sums = all_reduce_sum(sums, self.device)
        return sums[0] / sums[2], validation_score(sums, self.cfg.val_balance)

    def on_epoch_end(self, epoch: int, row: dict, improved: bool, history: list[dict]) -> None:
        """Rank 0: log, export the model when it improved, then checkpoint (a resume redoes an
        epoch whose checkpoint was not written)."""
        if self.rank == 0:
            self.log(epoch, row)
            if improved:
                self.export(epoch, row)
            save_checkpoint(self.out / CHECKPOINT_NAME, self.state(epoch + 1, history))
        if self.world > 1:
            torch.distributed.barrier()

    def on_fit_end(self) -> None:
        if self.live is not None:
            self.live.end()
        self.model.eval()

    # -- the loop

    def fit(self) -> tuple[nn.Module, Path]:
        """Run every epoch; returns (the network after the last epoch, the best model directory)."""
        self.setup()
        self.best_score, self.best_epoch = float("-inf"), -1
        self.time_before, self.t0 = 0.0, time.perf_counter()
        ckpt_path = self.out / CHECKPOINT_NAME
        start, history = 0, []
        resuming = self.resume and ckpt_path.exists()
        if self.resume and not resuming and self.rank == 0:
            print(f"nuclei: no {ckpt_path}; training from the start", file=sys.stderr)
        if resuming:
            start, history = self.restore(ckpt_path)
        self.live = self.open_live(resuming, start) if self.rank == 0 else None
        epochs = self.cfg.epochs
        for epoch in range(start, epochs):
            train_loss = self.train_epoch(epoch)
            average_buffers(self.model)
            row = {"epoch": epoch + 1, "train_loss": train_loss, "val_loss": float("nan"),
                   "val_dsb_score": float("nan"), "lr": self.scheduler.get_last_lr()[0]}
            improved = False
            if (epoch + 1) % self.cfg.val_every == 0 or epoch + 1 == epochs:
                if self.val_ids:
                    row["val_loss"], row["val_dsb_score"] = self.validate_epoch()
                    improved = self.best_epoch < 0 or row["val_dsb_score"] > self.best_score
                else:  # data.val_fold null: nothing to choose by, the latest epoch is exported
                    improved = True
                if improved:
                    self.best_score, self.best_epoch = row["val_dsb_score"], epoch + 1
            history.append(row)
            self.on_epoch_end(epoch, row, improved, history)
        self.on_fit_end()
        return self.model, self.out / MODEL_DIR_NAME

    def score_label(self) -> str:
        """How the logged validation score averages, where it is not over images."""
        balanced = self.cfg.val_balance == "source" and self.n_val_groups > 1
        return f" (mean over {self.n_val_groups} sources)" if balanced else ""

    def log(self, epoch: int, row: dict) -> None:
        """Log one epoch to dvclive (where there is one) and print it."""
        live = self.live
        if live is not None:
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
            f", val loss {row['val_loss']:.4f}, DSB2018 score {row['val_dsb_score']:.4f}{self.score_label()}{best}"
            if not np.isnan(row["val_dsb_score"])
            else ""
        )
        print(f"epoch {epoch + 1}/{self.cfg.epochs}: train loss {row['train_loss']:.4f}{val}", flush=True)
