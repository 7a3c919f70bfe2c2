"""``nuclei finetune``: adapt a model to the user's microscope from a few annotated images.

:func:`finetune` (the Python API, also used by the napari widget) and the command. A call is a
plan (:class:`FinetunePlan`), built from the arguments and the images, checked, run (:func:`run`)
and written (:func:`write`):

1. build and check (before anything is written; every user error is one line): the base model
   folder checked whole (:func:`pipeline.model.model_dir.read_model_dir`), the images and labels
   paired and read one at a time (:func:`pipeline.training.finetune_images.read_annotated`: the
   same image given twice used once, two different images of one name refused, an image larger
   than :data:`MAX_REGION_PIXELS` at the network's scale cut to its region richest in nuclei), and
   the network of the base to adapt chosen (:func:`_starting_network`);
2. run: each image brought to the model's canonical nucleus diameter from the exact median diameter
   of its labels (:func:`pipeline.training.finetune_run.make_example`); honest validation: with >= 3
   images, held-out folds of whole images (leave-one-out up to
   :data:`~pipeline.training.finetune_validation.MAX_FOLDS` folds); with fewer, the two halves of
   every image in turn (:mod:`pipeline.training.finetune_validation`). Each fold is fine-tuned from the base and predicts its
   held-out pixels at :data:`CHECKPOINTS` points; the number of steps with the best mean held-out
   score (0: the base) is chosen, with the watershed thresholds (:data:`THRESHOLD_GRID`) on the
   held-out predictions at that point; then the final fine-tune on every image for those steps;
3. write: a complete model directory with the users' typical diameter (``user_diameter``, the
   median over images), the before/after scores and the provenance in ``config.yaml``.

The time (``minutes``) is planned from measured times (:mod:`pipeline.training.finetune_time`: a training step, the
start of a run, the held-out predictions and threshold search): all runs share it, and when it is
short the plan gives up checkpoints, the guard's check images, held-out validation, then training.
A few crops of the base model's training data (DSB2018 ``stage1_train`` when ``../shared`` holds
it) are mixed into every run against forgetting (:mod:`pipeline.training.guard`), and its check
images are scored at every checkpoint beside the held-out ones: the steps and thresholds chosen are
the best on the held-out images among those that keep the score on these checks within
``max_forgetting`` of the base model's.

Must not: hold a training loop (:class:`pipeline.training.finetune_run.FinetuneTrainer` is the Trainer's),
build targets (:mod:`pipeline.method.training_targets`), segment differently from :class:`pipeline.model.segmenter.Segmenter`,
or read a model folder other than through :func:`pipeline.model.model_dir.read_model_dir` (its one validator).
"""


from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.arguments import number
from pipeline.config.model_folder import ModelDirConfig
from pipeline.errors import NucleiError, before_work
from pipeline.shipped import model_folder
from pipeline.training.finetune_time import (
    CHECKPOINTS,
    DEFAULT_MINUTES,
    MAX_MINUTES,
    MIN_STEPS,
    MINUTES,
    check_minutes,
    plan_time,
)
from pipeline.training.finetune_validation import (
    Choice,
    Validation,
    choose,
    plan_folds,
    training_items,
    validation_runs,
)
from pipeline.training.guard import FORGET_TOLERANCE, GUARD_SHARE, SHIPPED_GUARD, guard_layout

#: Pixels of an annotated image at the network's scale that fine-tuning uses (2048 x 2048):
#: a larger image is cut to its region richest in nuclei
#: (:func:`pipeline.training.finetune_run.bounded_region`), with a note. This bounds the memory of
#: its training targets and held-out predictions whatever the image's size; reading an image
#: still takes about 20 bytes per pixel of it, one image at a time.
MAX_REGION_PIXELS = 2**22
BATCH_SIZE, CROP, LR = 4, 256, 5e-4
MIN_NUCLEI = 5
#: Watershed thresholds searched at every checkpoint (a network fine-tuned for a few steps is less
#: confident than the base: the base's object threshold 0.99 removed most of its nuclei).
THRESHOLD_GRID = {"marker_threshold": [0.5, 0.7, 0.9], "mask_threshold": [0.5, 0.7], "object_threshold": [0.8, 0.99]}


def _check_output(out: Path, force: bool) -> None:
    from pipeline.files.io import check_writable_folder
    from pipeline.model.model_dir import CONFIG_NAME, WEIGHTS_NAME

    if out.exists() and not out.is_dir():
        raise NucleiError(f"{out}: exists and is not a folder")
    if any((out / name).exists() for name in (CONFIG_NAME, WEIGHTS_NAME)) and not force:
        raise NucleiError(f"{out}: already holds a model (use --force to replace it)")
    check_writable_folder(out.parent if not out.exists() else out)


def run_config(base_config: ModelDirConfig, steps: int, chunks: int, seed: int, base: Path, device: str, batch_size: int):
    """The :class:`pipeline.config.params.Config` of one fine-tuning run: the base model's architecture,
    loss and augmentation (from its recorded training parameters, defaults otherwise), ``chunks``
    checkpoints of ``steps // chunks`` steps, cosine schedule, weights from ``base``."""
    from pipeline.config.params import AugmentConfig, Config, LossConfig, TargetsConfig

    params = base_config.training.get("params") or {}

    def known(section, cls):
        return {k: v for k, v in (params.get(section) or {}).items() if k in cls.__dataclass_fields__}

    per_chunk = max(1, steps // chunks)
    return Config.from_dict({
        "seed": seed,
        "model": {k: v for k, v in base_config.model.to_dict().items() if k != "encoder_weights"},
        "loss": known("loss", LossConfig),
        "augment": {**known("augment", AugmentConfig), "crop": CROP},
        "targets": known("targets", TargetsConfig),
        "train": {"epochs": chunks, "batch_size": batch_size, "lr": LR, "schedule": "cosine", "workers": 0,
                  "precision": "auto", "samples_per_epoch": per_chunk * batch_size, "device": device,
                  "val_every": 1, "init": str(base), "out": str(base)},
    }, base / "config.yaml")


@dataclass(frozen=True)
class FinetunePlan:
    """What one :func:`finetune` call fine-tunes: built from its arguments and the annotated images
    (:meth:`build`), checked (:meth:`check`) before any work, then run (:func:`run`) and written
    (:func:`write`).

    Attributes
    ----------
    base : Path
        The model folder of the network fine-tuned (the base's own, or the network its routes
        give most of the images: :func:`_starting_network`).
    config : ModelDirConfig
        That folder's config.
    out : Path
        The model folder to write.
    annotated : tuple of :class:`pipeline.data.annotations.Annotated`
    image_types : tuple of str
        Each image's type (:func:`pipeline.training.finetune_run.image_types_of`).
    guard_root : str, Path or None
        The guard's folder (None: no guard).
    start, budget : float
        ``time.perf_counter()`` at the call, s; the seconds ``minutes`` gives.
    steps : int or None
        Steps of every run (None: planned from the time left).
    seed : int
    device : str
        As given (``auto``, ``cpu``, ``cuda:N``).
    max_forgetting : float or None
    """

    base: Path
    config: ModelDirConfig
    out: Path
    annotated: tuple
    image_types: tuple
    guard_root: str | Path | None
    start: float
    budget: float
    steps: int | None
    seed: int
    device: str
    max_forgetting: float | None

    @classmethod
    def build(cls, images, labels, base, minutes, out, force: bool, guard, device: str, steps: int | None,
              seed: int, max_forgetting: float | None, log, start: float) -> FinetunePlan:
        """The plan of :func:`finetune`'s arguments (as it documents them): the minutes, the base
        model folder and the output checked, then the images read and the network chosen."""
        from pipeline.model.model_dir import available_model_dir, read_model_dir
        from pipeline.training.finetune_images import read_annotated
        from pipeline.training.finetune_run import image_types_of

        budget = 60.0 * check_minutes(DEFAULT_MINUTES if minutes is None else minutes)
        base = model_folder(base) if base is not None else available_model_dir()
        if base is None:
            raise NucleiError("finetune: no base model (the shipped model is missing); give one with --model")
        config, _ = read_model_dir(base)  # the one validator: schema, sizes, weights, memory
        out = Path(out)
        _check_output(out, force)
        annotated = read_annotated(images, labels, config, MAX_REGION_PIXELS, warn=lambda m: log(f"warning: {m}"))
        image_types = image_types_of([a.image for a in annotated], config)  # a stained network normalises alike
        fractions = [float(np.count_nonzero(a.labels)) / a.labels.size for a in annotated]
        base, config = _starting_network(base, config, image_types, fractions, log)
        return cls(base, config, out, tuple(annotated), tuple(image_types), SHIPPED_GUARD if guard == "auto" else guard,
                   start, budget, steps, seed, device, max_forgetting)

    def check(self) -> None:
        """Refuse, in one line, too few nuclei in all the labels and a guard folder that is not one."""
        if self.n_nuclei < MIN_NUCLEI:
            raise NucleiError(f"{self.annotated[0].source}: {self.n_nuclei} nuclei in all the labels; "
                              f"fine-tuning needs at least {MIN_NUCLEI}")
        if self.guard_root is not None:
            guard_layout(self.guard_root)

    @property
    def n_nuclei(self) -> int:
        return sum(a.n_nuclei for a in self.annotated)

    @property
    def what(self) -> str:
        """The time limit, as notes name it."""
        return f"--minutes {self.budget / 60:g}"

    def left(self) -> float:
        """Seconds left of the budget."""
        return self.start + self.budget - time.perf_counter()

    def run_config(self, steps: int, chunks: int, device: str):
        """:func:`run_config` of a run from this plan's network."""
        return run_config(self.config, steps, chunks, self.seed, self.base, device, BATCH_SIZE)


def finetune(images, labels, base=None, minutes: float | None = None, out: str | Path = "finetuned",
             force: bool = False, progress=None, guard: str | Path | None = "auto", device: str = "auto",
             steps: int | None = None, seed: int = 0, max_forgetting: float | None = FORGET_TOLERANCE,
             log=print) -> Path:
    """Fine-tune a model on annotated images and write a model directory.

    Parameters
    ----------
    images : list of str, Path or arrays
        Image files, folders of images, or images ((H, W) or (H, W, C) arrays).
    labels : str or Path (a folder) or list of str, Path or int arrays
        Instance labels (0 = background): a folder paired by name (``<name>.tif``,
        ``<name>_masks.tif``, PNG), or one per image.
    base : str or Path, optional
        The model directory to start from (default: the shipped model).
    minutes : float, optional
        Time bound of the whole call, reading included (default :data:`DEFAULT_MINUTES`; above 0,
        at most :data:`MAX_MINUTES`): the work is planned from measured times to end within it
        (:func:`plan_time`: fewer checkpoints, no guard check images, no held-out validation, no
        training, in this order, when time is short). Reading the images and the base model and
        timing two training steps are not cut: a bound shorter than they take is exceeded by them.
    out : str or Path
        The model directory to write.
    force : bool
        Replace a model already in ``out``.
    progress : callable(fraction: float, message: str), optional
        Called after every training step.
    guard : 'auto', path or None
        Labelled images of the base model's kind, some mixed in against forgetting and others
        scored to measure it (:mod:`pipeline.training.guard`; 'auto': the 32 DSB2018 images
        shipped with the package; None: no guard, said in one line).
    device : str
    steps : int, optional
        Fix the steps of every run instead of planning them from ``minutes``.
    seed : int
    max_forgetting : float or None
        Largest drop of the DSB2018 score on the guard's check images (the base model's kind of
        images) that the chosen steps and thresholds may cost; None: no bound (the best on the
        held-out images). Needs the guard.
    log : callable(str)
        Receives the warnings and the before/after line.

    Returns
    -------
    out : Path
    """
    from pipeline.model.runtime import memory_guard

    start = time.perf_counter()
    with before_work():  # what the user gave: a problem here is a usage error
        plan = FinetunePlan.build(images, labels, base, minutes, out, force, guard, device, steps, seed,
                                  max_forgetting, log, start)
        plan.check()
    with memory_guard(str(plan.base), "while fine-tuning"):  # running out of memory: one line
        write(plan, run(plan, progress, log), log)
    return plan.out


@dataclass(frozen=True)
class Prepared:
    """The plan's images as training examples, and the base network on the device.

    ``examples``: :class:`pipeline.training.finetune_run.Example` per image; ``diameters``: the
    median nucleus diameter of each image's labels, px (NaN: no nucleus); ``user_diameter``: their
    median; ``targets``: the training targets' keyword arguments; ``device``: resolved; ``model``:
    the base network on it."""

    examples: list
    diameters: list
    user_diameter: float
    targets: dict
    device: str
    model: object


@dataclass(frozen=True)
class Runs:
    """The runs planned: the held-out ``validation``, the guard's examples mixed in (``guards``),
    the ``steps`` of every run, the ``checkpoints`` of a validation run, and the seconds kept at
    the end for writing (``reserve``)."""

    validation: Validation
    guards: list
    steps: int
    checkpoints: int
    reserve: float


@dataclass(frozen=True)
class Result:
    """What :func:`run` made: the network to write (``model``) and how it was chosen."""

    model: object
    prepared: Prepared
    runs: Runs
    choice: Choice


def run(plan: FinetunePlan, progress=None, log=print) -> Result:
    """Fine-tune as ``plan`` says: the examples, the runs planned in the time left, the validation
    runs, the steps and thresholds chosen, the final run (:func:`finetune`'s ``progress``, ``log``)."""
    from pipeline.training.finetune_run import RunProgress

    if plan.guard_root is None:
        log("warning: no guard (--guard none): no images of the base model's kind are mixed in, and what "
            "fine-tuning forgets is neither measured nor bounded")
    prepared = _prepare(plan)
    runs = _plan_runs(plan, prepared, log)
    validation = runs.validation
    bar = RunProgress((len(validation.folds) + 1) * runs.steps, progress)
    probs = validation_runs(validation, plan.run_config(runs.steps, runs.checkpoints, prepared.device), runs.guards,
                            bar)
    choice = choose(validation, *probs, runs.steps, runs.checkpoints, plan.config.postprocess.thresholds(),
                    THRESHOLD_GRID, plan.max_forgetting)
    model, choice = _final_run(plan, prepared, runs, choice, bar, log)
    return Result(model, prepared, runs, choice)


def _prepare(plan: FinetunePlan) -> Prepared:
    from pipeline.method.scale import median_diameter
    from pipeline.model.runtime import resolve_device
    from pipeline.training.finetune_run import make_example

    diameters = [median_diameter(a.labels) for a in plan.annotated]
    user_diameter = float(np.nanmedian(diameters))
    tkw = plan.run_config(1, 1, plan.device).targets.make_targets_kwargs()
    examples = [make_example(a.name, a.image, a.labels, d if np.isfinite(d) else user_diameter, plan.config, tkw,
                             image_type=t) for a, d, t in zip(plan.annotated, diameters, plan.image_types, strict=True)]
    device = str(resolve_device(plan.device))
    model, _ = _load(plan.base, device)
    return Prepared(examples, diameters, user_diameter, tkw, device, model)


def _plan_runs(plan: FinetunePlan, prepared: Prepared, log) -> Runs:
    """The runs that fit in the time left (:func:`plan_time`, from a training step timed first and
    the base's held-out predictions), or those of ``plan.steps``; the guard's images read."""
    from pipeline.training.finetune_run import step_time
    from pipeline.training.guard import guard_examples

    config, device, tkw = plan.config, prepared.device, prepared.targets
    timing, times = None, None
    if plan.steps is None:  # plan from measured times: a step, a run's start, the held-out predictions
        times = step_time(plan.run_config(2, 1, device), *training_items(prepared.examples, []))
        timing = plan_time(plan.left(), 0, *times, 0, 0, 0, plan.what)
    trains = timing is None or timing.steps > 0  # no time for a run: nothing more is read or predicted
    t_guard = time.perf_counter()
    guards = guard_examples(plan.guard_root, config, tkw) if plan.guard_root is not None and trains else []
    t_guard = time.perf_counter() - t_guard
    method, folds = plan_folds(prepared.examples, [(a.name, a.image, a.labels) for a in plan.annotated], config, tkw)
    if not trains:
        method, folds = timing.reason, []
    validation, held_cost = Validation.of(method, folds, config, prepared.model, device, THRESHOLD_GRID)
    if plan.steps is None:
        n_checks = _check_count(plan.guard_root) if guards and folds else 0
        held_px = sum(e.arrays["labels"].size for _, h in folds for e in h)
        check_px = n_checks * np.mean([g.arrays["labels"].size for g in guards]) if n_checks else 0
        check_cost = held_cost * check_px / max(held_px, 1)  # per fold and checkpoint
        timing = plan_time(plan.left(), len(folds), *times, held_cost, check_cost,
                           t_guard * n_checks / max(len(guards), 1), plan.what)
        steps, checkpoints = timing.steps, timing.checkpoints
        if not timing.validate:
            validation = Validation(timing.reason or method)
        if timing.note:
            log(f"note: {timing.note}")
    else:
        checkpoints = CHECKPOINTS
        steps = max(checkpoints, plan.steps // checkpoints * checkpoints)
    checks = (guard_examples(plan.guard_root, config, tkw, check=True)
              if guards and validation.folds and (timing is None or timing.checks) else [])
    validation = validation.with_checks(checks, config, prepared.model, device)
    return Runs(validation, guards, steps, checkpoints, timing.reserve if timing else 0)


def _final_run(plan: FinetunePlan, prepared: Prepared, runs: Runs, choice: Choice, bar, log) -> tuple[object, Choice]:
    """The network fine-tuned on every image for the chosen steps (fewer, said in a note, when the
    time left at the rate measured is short; none: the base network with its best thresholds)."""
    from pipeline.training.finetune_run import train_run

    bar.message = "final run"
    left = plan.left() - runs.reserve
    rate = bar.bar.format_dict.get("rate") or 0
    if rate and choice.steps and left < choice.steps / rate:
        fit = int(left * rate * 0.9)
        fit = fit if fit >= MIN_STEPS else 0
        log(f"note: time is short; the final run takes {fit} of the {choice.steps} chosen steps")
        choice = choice.cut(fit)
    bar.set_total(bar.done + choice.steps)
    if choice.steps:
        model = train_run(plan.run_config(choice.steps, 1, prepared.device),
                          *training_items(prepared.examples, runs.guards), on_step=bar.step).model
    else:
        model = prepared.model
    bar.bar.close()
    return model, choice


def write(plan: FinetunePlan, result: Result, log=print) -> None:
    """Write the model folder of ``result`` (its provenance in ``config.yaml``: the images, the
    steps, the guard, the validation, the before/after line, the time and hardware), then log the line."""
    prepared, runs, choice = result.prepared, result.runs, result.choice
    elapsed = time.perf_counter() - plan.start
    line = _summary(plan, runs, choice, elapsed)
    provenance = {
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "base": str(plan.base), "base_weights_sha256": plan.config.weights_sha256,
        "images": [{"name": a.name, "source": a.source, "sha256": a.sha256, "nuclei": a.n_nuclei,
                    "diameter": round(float(d), 2) if np.isfinite(d) else None}
                   for a, d in zip(plan.annotated, prepared.diameters, strict=True)],
        "steps": choice.steps, "batch_size": BATCH_SIZE, "crop": CROP, "lr": LR,
        "guard": {"root": str(plan.guard_root), "images": len(runs.guards), "share": GUARD_SHARE,
                  "forgetting": choice.forgetting} if runs.guards else None,
        "validation": {"method": runs.validation.method, "folds": len(runs.validation.folds), "steps_planned": runs.steps,
                       "held_out_score_by_steps": choice.curve, "before": choice.before, "after": choice.after},
        "summary": line, "time_s": round(elapsed, 1),
        "hardware": _hardware(prepared.device, plan.run_config(1, 1, plan.device)),
        "base_training": plan.config.training or None,
    }
    _save(plan.out, result.model, plan.config, choice.thresholds, prepared.user_diameter, provenance)
    log(line)


def _summary(plan: FinetunePlan, runs: Runs, choice: Choice, elapsed: float) -> str:
    """The before/after line."""
    n = len(plan.annotated)
    nuclei = f"{n} image{'s' * (n > 1)}, {plan.n_nuclei} nuclei, {_duration(elapsed)}"
    if not runs.validation.folds:
        return f"no held-out validation ({runs.validation.method}): fine-tuned {choice.steps} steps ({nuclei})"
    line = f"held-out ({runs.validation.method}): base {choice.before:.2f} -> fine-tuned {choice.after:.2f} ({nuclei})"
    if choice.steps == 0:
        line += " with tuned thresholds; training did not beat the base weights on held-out images: they are kept"
    if choice.forgetting:
        bound = "no bound" if plan.max_forgetting is None else f"at most {plan.max_forgetting:g} lost"
        line += f"; base training images: {choice.forgetting['base']:.2f} -> {choice.forgetting['chosen']:.2f} ({bound})"
    return line


def _load(base: Path, device: str):
    from pipeline.model.model_dir import load_model_dir

    return load_model_dir(base, device)

def _check_count(root) -> int:
    """Images of the guard ``root`` that are scored (its check images)."""
    from pipeline.data.sources import list_sample_ids
    from pipeline.training.guard import CHECK, guard_ids

    layout = guard_layout(root)
    if layout == "parts":
        return len(list_sample_ids(Path(root) / CHECK, "folder"))
    return len(guard_ids(root, check=True, layout=layout))


def _hardware(device: str, config) -> dict:
    import torch

    from pipeline.model.runtime import resolve_precision
    from pipeline.training.trainer import hardware_summary

    return hardware_summary(torch.device(device), resolve_precision(config.train.precision, device))


def _duration(seconds: float) -> str:
    m, s = divmod(int(round(seconds)), 60)
    return f"{m} min {s} s" if m else f"{s} s"


def _starting_network(base: Path, base_config: ModelDirConfig, image_types: list[str], fractions: list[float],
                      log) -> tuple[Path, ModelDirConfig]:
    """The model folder fine-tuning starts from: the network of the base that most of the labelled
    images pick (:attr:`ModelDirConfig.networks`). Each image picks its route by the one rule,
    :func:`pipeline.config.routing.network_for` of its type (``image_types``) and of the labelled
    share of its pixels (``fractions``, the share the Segmenter routes on); a tie keeps the base's
    own network. A base with routes says the choice in one line (the network, and the images each
    network got). Either way the folder written holds the one network it fine-tuned, for the
    user's kind of images."""
    from pipeline.config.routing import MAIN_ROUTE, network_for
    from pipeline.model.model_dir import read_model_dir

    if not base_config.routes:
        return base, base_config
    picks = [network_for(base_config.routes, t, f).name for t, f in zip(image_types, fractions, strict=True)]
    counts = {route.name: picks.count(route.name) for route in base_config.networks}
    leaders = [name for name, n in counts.items() if n == max(counts.values())]
    route = base_config.route(leaders[0]) if len(leaders) == 1 else MAIN_ROUTE
    inner = base_config.network_folder(base, route)
    tie = "a tie, " if len(leaders) > 1 else ""
    log(f"networks your {len(picks)} images pick: {', '.join(f'{name} {n}' for name, n in counts.items())}; "
        f"{tie}fine-tuning the {route.name} network ({inner})")
    if route.name == MAIN_ROUTE.name:
        return base, base_config
    config, _ = read_model_dir(inner)
    return inner, config


def _save(out: Path, model, base_config: ModelDirConfig, thresholds: dict, user_diameter: float,
           training: dict) -> None:
    """Write the model directory: into a temporary sibling, then moved into place file by file."""
    from pipeline.model.model_dir import CONFIG_NAME, WEIGHTS_NAME, save_model_dir

    config = base_config.without_routes(postprocess=thresholds, user_diameter=round(user_diameter, 2),
                                        training=training, weights_sha256=None, source=out / CONFIG_NAME)
    tmp = out.parent / f".{out.name}.finetune-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        save_model_dir(tmp, model, config)
        out.mkdir(parents=True, exist_ok=True)
        for name in (WEIGHTS_NAME, CONFIG_NAME):  # the config last: it names the weights' checksum
            os.replace(tmp / name, out / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# --------------------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei finetune``."""
    parser.add_argument("images", nargs="+", help="annotated images (files or folders)")
    parser.add_argument("--labels", required=True, metavar="DIR",
                        help="folder of their labels: <name>.tif (as `nuclei segment` writes), <name>_masks.tif or PNG")
    parser.add_argument("-o", "--out", required=True, metavar="MODEL_DIR", help="model directory to write")
    parser.add_argument("--model", default=None, help="model to start from (default: the shipped model)")
    parser.add_argument("--minutes", type=MINUTES, default=None, metavar="M",
                        help=f"time bound of the whole command, reading included (default: {DEFAULT_MINUTES:g}; "
                             f"above 0, at most {MAX_MINUTES:g}): the work is planned to end in time (fewer "
                             "checkpoints, no guard check images, no held-out validation, no training, in this "
                             "order, when time is short); starting, reading the images and the model and timing "
                             "two training steps are not cut (10-30 s on 2 cores)")
    parser.add_argument("--force", action="store_true", help="replace a model already in MODEL_DIR")
    parser.add_argument("--max-forgetting", type=number(at_least=0, none=True), default=FORGET_TOLERANCE, metavar="D|none",
                        help="largest DSB2018 drop allowed on the base model's kind of images (default: %(default)s; "
                             "none: no bound, the most for your images)")
    parser.add_argument("--guard", default="auto", type=parse_guard, metavar="DIR|none",
                        help="labelled images of the base model's kind, mixed in against forgetting and scored to "
                             "measure it (default: the 32 DSB2018 images shipped with the package; a folder with "
                             "mix/ and check/, or in the Kaggle or images/ + labels/ layout; none: no guard)")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")


def parse_guard(text: str) -> str | None:
    """``--guard``: a folder, 'auto' (the shipped guard) or 'none'."""
    return None if text.lower() == "none" else text


def main(args: argparse.Namespace) -> int:
    """Run ``nuclei finetune``; returns the exit status."""
    out = finetune(args.images, args.labels, base=args.model, minutes=args.minutes, out=args.out,
                   force=args.force, device=args.device, max_forgetting=args.max_forgetting, guard=args.guard,
                   log=lambda m: print(m, file=sys.stderr if m.startswith("warning") else sys.stdout))
    print(f"model written to {out}  (use it: nuclei segment IMAGES -o OUT --model {out})")
    return 0
