"""The ``train`` stage: fit the U-Net on the training folds, validate on the held-out fold.

Outputs in ``train.out`` (default ``models/trained``):

- ``model/``: the best model so far (highest DSB2018 score on the validation fold; the mean over
  sources, each source's mean over its images, by ``train.val_balance``), a model directory
  (see :func:`pipeline.model.model_dir.save_model_dir`) whose ``config.yaml`` also holds the
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
weights as an uninterrupted one (see :mod:`pipeline.training.dataset` for how the data are seeded).

This module is the stage: the command line and :func:`train` / :func:`fit`. The loop is
:class:`pipeline.training.trainer.Trainer`, the files of a run :mod:`pipeline.training.checkpoints`, the processes
:mod:`pipeline.training.distributed`. Must not: hold training logic or defaults of the ``train`` section
(:class:`pipeline.config.params.TrainConfig`).
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from pipeline.config.params import Config, as_config, load_config
from pipeline.training.checkpoints import CHECKPOINT_NAME
from pipeline.training.distributed import init_distributed, rank
from pipeline.training.trainer import Trainer

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
    config = load_config(args.params)
    overrides = {"epochs": args.epochs, "out": args.out, "device": args.device}
    overrides = {k: v for k, v in overrides.items() if v is not None}
    config = config.replace(train=config.train.replace(args.params, **overrides))
    if args.fold is not None:
        config = config.replace(data=config.data.replace(args.params, val_fold=args.fold))
    model_dir = train(config, resume=args.resume)
    if rank() == 0:
        print(f"model written to {model_dir}")
    return 0


# --------------------------------------------------------------------------- library


def train(params: Config | Mapping, resume: bool = False, source: str | Path = "params.yaml") -> Path:
    """Train a model with the parameters of ``params.yaml``.

    Parameters
    ----------
    params : Config or mapping
        All sections of params.yaml (a mapping is checked into a :class:`Config`; missing
        sections and keys take the defaults).
    resume : bool
        Continue from ``<train.out>/last.ckpt`` when it exists (else start afresh).
    source : str or Path
        Where a mapping ``params`` came from, for error messages.

    Returns
    -------
    model_dir : Path
        ``<train.out>/model``, the best model directory.
    """
    return fit(params, resume=resume, source=source)[1]


def fit(params: Config | Mapping, resume: bool = False,
        source: str | Path = "params.yaml") -> tuple[nn.Module, Path]:
    """:func:`train`, also returning the trained network (final weights, on every rank).

    Returns
    -------
    model : torch.nn.Module
        The plain network after the last epoch, in eval mode.
    model_dir : Path
        ``<train.out>/model``, the best model directory (written by rank 0).
    """
    config = as_config(params, source)
    if rank() == 0:  # before any work: a file or a read-only place as train.out
        from pipeline.files.io import check_writable_folder

        check_writable_folder(config.train.out)
    initialised = init_distributed(config.train.device)
    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        return Trainer(config, resume).fit()
    finally:
        torch.use_deterministic_algorithms(deterministic)
        if initialised:
            torch.distributed.destroy_process_group()
