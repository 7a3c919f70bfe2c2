"""``nuclei finetune``: adapt a model to the user's microscope from a few annotated images.

:func:`finetune` (the Python API, also used by the napari widget) and the command:

1. pair and check the images and labels (:mod:`pipeline.data.annotations`), one image at a time
   (:func:`read_annotated`): the same image given twice is used once, two different images of
   one name are refused, an image larger than :data:`MAX_REGION_PIXELS` at the network's scale is
   cut to its region richest in nuclei; every user error is one line, raised before anything is
   written, and the base model folder is checked whole first
   (:func:`pipeline.model.model_dir.read_model_dir`);
2. bring each image to the model's canonical nucleus diameter from the exact median diameter of
   its labels (:func:`pipeline.training.finetune_run.make_example`); record the users' typical diameter
   (``user_diameter``, the median over images) in the model;
3. honest validation: with >= 3 images, held-out folds of whole images (leave-one-out up to
   :data:`MAX_FOLDS` folds); with fewer, the two halves of every image in turn. Each fold is
   fine-tuned from the base and predicts its held-out pixels at :data:`CHECKPOINTS` points; the
   number of steps with the best mean held-out score (0: the base) is chosen, with the watershed
   thresholds (:data:`THRESHOLD_GRID`) on the held-out predictions at that point;
4. the final fine-tune on every image for the chosen steps, written as a complete model
   directory with the before/after scores and the provenance in ``config.yaml``.

The time (``minutes``) is planned from measured times (:func:`plan_time`: a training step, the
start of a run, the held-out predictions and threshold search): all runs share it, and when it is
short the plan gives up checkpoints, the guard's check images, held-out validation, then training. A few crops of
the base model's training data (DSB2018 ``stage1_train`` when ``../shared`` holds it) are mixed
into every run against forgetting (:mod:`pipeline.training.guard`), and its check images
other images of it are scored at every checkpoint beside the held-out ones: the steps and thresholds chosen are the
best on the held-out images among those that keep the score on these checks within
``max_forgetting`` of the base model's.

Must not: hold a training loop (:class:`pipeline.training.finetune_run.FinetuneTrainer` is the Trainer's),
build targets (:mod:`pipeline.method.targets`), segment differently from :class:`pipeline.model.segmenter.Segmenter`,
or read a model folder other than through :func:`pipeline.model.model_dir.read_model_dir` (its one validator).
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
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
from pipeline.training.guard import FORGET_TOLERANCE, GUARD_SHARE, SHIPPED_GUARD, guard_examples, guard_layout

DEFAULT_MINUTES = 8.0
#: Largest ``--minutes`` (a day); 0, negative, NaN and infinite values are refused too.
MAX_MINUTES = 24 * 60.0
#: Pixels of an annotated image at the network's scale that fine-tuning uses (2048 x 2048):
#: a larger image is cut to its region richest in nuclei
#: (:func:`pipeline.training.finetune_run.bounded_region`), with a note. This bounds the memory of
#: its training targets and held-out predictions whatever the image's size; reading an image
#: still takes about 20 bytes per pixel of it, one image at a time.
MAX_REGION_PIXELS = 2**22
MIN_STEPS, MAX_STEPS = 4, 800
#: Seconds kept at the end of ``--minutes`` for writing the model (at least; 3 % of the time left).
RESERVE_SECONDS = 3.0
#: Held-out scoring points per fold run (the step counts chosen among).
CHECKPOINTS = 4
MAX_FOLDS = 3
BATCH_SIZE, CROP, LR = 4, 256, 5e-4
MIN_NUCLEI = 5
#: Smallest side (px at the network's scale) of a half image used as a held-out region.
MIN_REGION = 96
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


def _train(config, items, weights, on_step=None, on_checkpoint=None):
    """Run a :class:`FinetuneTrainer`; returns it (its ``model`` and ``history``)."""
    import torch

    from pipeline.training.finetune_run import FinetuneTrainer

    deterministic = torch.are_deterministic_algorithms_enabled()
    try:
        trainer = FinetuneTrainer(config, items, weights, on_step, on_checkpoint)
        trainer.fit()
        return trainer
    finally:
        torch.use_deterministic_algorithms(deterministic)


def plan_folds(examples: list, parts: list, model_config: ModelDirConfig, targets_kwargs: dict) -> tuple[str, list]:
    """Held-out folds: (method, [(training examples, held-out examples), ...])."""
    from pipeline.training.finetune_run import make_example, split_regions

    if len(examples) >= 3:
        k = min(len(examples), MAX_FOLDS)
        return "leave-one-out" if k == len(examples) else f"{k}-fold", [
            ([e for i, e in enumerate(examples) if i % k != f], [e for i, e in enumerate(examples) if i % k == f])
            for f in range(k)]
    halves = [[make_example(n, i, lab, e.diameter, model_config, targets_kwargs) for n, i, lab in split_regions(p)]
              for e, p in zip(examples, parts, strict=True)]
    if any(min(h.arrays["labels"].shape) < MIN_REGION for pair in halves for h in pair):
        return "none (images too small to split into regions)", []
    folds = [([pair[1 - f] for pair in halves], [pair[f] for pair in halves]) for f in range(2)]
    if not all(any(e.labels.any() for e in held) for _, held in folds):
        return "none (a half image without nuclei)", []
    return "image halves", folds


class _Progress:
    """One progress bar over all planned steps (tqdm, time left) and the caller's callback."""

    def __init__(self, total: int, callback=None):
        from pipeline.progress import progress

        self.bar = progress(None, desc="finetune", total=total, unit="step")
        self.callback, self.done, self.message = callback, 0, "training"

    def step(self) -> None:
        self.done += 1
        self.bar.update(1)
        if self.callback is not None:
            self.callback(min(self.done / max(self.bar.total, 1), 1.0), self.message)

    def set_total(self, total: int) -> None:
        self.bar.total = total
        self.bar.refresh()


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
    from pipeline.model.model_dir import available_model_dir, read_model_dir
    from pipeline.model.runtime import memory_guard

    t0 = time.perf_counter()
    with before_work():  # what the user gave: a problem here is a usage error
        budget = 60.0 * check_minutes(DEFAULT_MINUTES if minutes is None else minutes)
        base = model_folder(base) if base is not None else available_model_dir()
        if base is None:
            raise NucleiError("finetune: no base model (the shipped model is missing); give one with --model")
        base_config, _ = read_model_dir(base)  # the one validator: schema, sizes, weights, memory
        out = Path(out)
        _check_output(out, force)
        annotated = read_annotated(images, labels, base_config, warn=lambda m: log(f"warning: {m}"))
        from pipeline.training.finetune_run import image_types_of

        image_types = image_types_of([a.image for a in annotated], base_config)  # a stained network normalises alike
        fractions = [float(np.count_nonzero(a.labels)) / a.labels.size for a in annotated]
        base, base_config = _starting_network(base, base_config, image_types, fractions, log)
        n_nuclei = sum(a.n_nuclei for a in annotated)
        if n_nuclei < MIN_NUCLEI:
            raise NucleiError(f"{annotated[0].source}: {n_nuclei} nuclei in all the labels; "
                              f"fine-tuning needs at least {MIN_NUCLEI}")
        guard_root = SHIPPED_GUARD if guard == "auto" else guard
        if guard_root is not None:
            guard_layout(guard_root)
    with memory_guard(str(base), "while fine-tuning"):  # running out of memory: one line
        if guard_root is None:
            log("warning: no guard (--guard none): no images of the base model's kind are mixed in, and what "
                "fine-tuning forgets is neither measured nor bounded")
        from pipeline.method.scale import median_diameter
        from pipeline.training.finetune_run import HeldOut, make_example

        diameters = [median_diameter(a.labels) for a in annotated]
        user_diameter = float(np.nanmedian(diameters))
        config = run_config(base_config, 1, 1, seed, base, device, BATCH_SIZE)
        tkw = config.targets.make_targets_kwargs()
        examples = [make_example(a.name, a.image, a.labels, d if np.isfinite(d) else user_diameter, base_config, tkw,
                                 image_type=t) for a, d, t in zip(annotated, diameters, image_types, strict=True)]
        guards: list = []

        def items_of(train):
            items = {f"{k}:{e.name}": e.arrays for k, e in enumerate(train + guards)}
            share = np.r_[np.full(len(train), (1 - GUARD_SHARE) / len(train)),
                          np.full(len(guards), GUARD_SHARE / max(len(guards), 1))]
            return items, (share if guards else None)

        from pipeline.model.runtime import resolve_device

        device = str(resolve_device(device))
        base_model, _ = _load(base, device)
        plan, what = None, f"--minutes {budget / 60:g}"
        if steps is None:  # plan from measured times: a step, a run's start, the held-out predictions
            t_step, t_run = _step_time(run_config(base_config, 2, 1, seed, base, device, BATCH_SIZE), *items_of(examples))
            plan = plan_time(t0 + budget - time.perf_counter(), 0, t_step, t_run, 0, 0, 0, what)
        trains = plan is None or plan.steps > 0  # no time for a run: nothing more is read or predicted
        t_guard = time.perf_counter()
        guards = guard_examples(guard_root, base_config, tkw) if guard_root is not None and trains else []
        t_guard = time.perf_counter() - t_guard
        method, folds = plan_folds(examples, [(a.name, a.image, a.labels) for a in annotated], base_config, tkw)
        if not trains:
            method, folds = plan.reason, []
        held = [HeldOut(h, base_config, device) for _, h in folds]
        t_held = time.perf_counter()
        base_probs = [h.probabilities(base_model) for h in held]
        t_held = time.perf_counter() - t_held
        t_tune = time.perf_counter()
        base_scores = [h.scores(p, base_config.postprocess.thresholds()) for h, p in zip(held, base_probs, strict=True)]
        t_tune = (time.perf_counter() - t_tune) * _grid_size(base_config.postprocess.thresholds())
        if steps is None:
            n_checks = _check_count(guard_root) if guards and folds else 0
            held_px = sum(e.arrays["labels"].size for _, h in folds for e in h)
            check_px = n_checks * np.mean([g.arrays["labels"].size for g in guards]) if n_checks else 0
            check_cost = (t_held + t_tune) * check_px / max(held_px, 1)  # per fold and checkpoint
            plan = plan_time(t0 + budget - time.perf_counter(), len(folds), t_step, t_run, t_held + t_tune,
                             check_cost, t_guard * n_checks / max(len(guards), 1), what)
            steps, checkpoints = plan.steps, plan.checkpoints
            if not plan.validate:
                method, folds, held, base_probs, base_scores = plan.reason or method, [], [], [], []
            if plan.note:
                log(f"note: {plan.note}")
        else:
            checkpoints = CHECKPOINTS
            steps = max(checkpoints, steps // checkpoints * checkpoints)
        checks = (guard_examples(guard_root, base_config, tkw, check=True)
                  if guards and folds and (plan is None or plan.checks) else [])
        check = HeldOut(checks, base_config, device) if checks else None
        base_check_probs = check.probabilities(base_model) if check else None
        check_probs = [[base_check_probs] if check else [] for _ in folds]  # fold -> checkpoint
        bar = _Progress((len(folds) + 1) * steps, progress)

        # validation runs: held-out probabilities at every checkpoint
        probs = [[p] for p in base_probs]  # fold -> checkpoint -> list of probs
        for f, (train, _) in enumerate(folds):
            bar.message = f"validation run {f + 1}/{len(folds)}"

            def checkpoint(model, done, f=f):
                probs[f].append(held[f].probabilities(model))
                if check:
                    check_probs[f].append(check.probabilities(model))
                return float("nan")  # scored below, with the thresholds searched over all folds

            _train(run_config(base_config, steps, checkpoints, seed, base, device, BATCH_SIZE), *items_of(train),
                   on_step=bar.step, on_checkpoint=checkpoint)
        chosen, thresholds, before, after, curve = steps, base_config.postprocess.thresholds(), None, None, {}
        forgetting, settings = None, {}
        if folds:
            floor = None
            if check:
                base_check = float(np.mean(check.scores(check_probs[0][0], thresholds)))
                floor = None if max_forgetting is None else base_check - max_forgetting
            for c in range(checkpoints + 1):
                check_folds = range(len(folds)) if c else [0]  # checkpoint 0 is the base in every fold
                choice = _tune([s for f in range(len(folds)) for s in held[f].samples(probs[f][c])], thresholds,
                               [s for f in check_folds for s in check.samples(check_probs[f][c])] if check else None,
                               floor)
                if choice is not None:
                    settings[c * steps // checkpoints] = choice
            curve = {k: v[1] for k, v in settings.items()}
            chosen = max(curve, key=lambda s: (round(curve[s], 4), -s))
            thresholds.update(settings[chosen][0])
            before = float(np.mean([s for f in base_scores for s in f]))
            after = curve[chosen]
            if check:
                forgetting = {"check_images": len(checks), "tolerance": max_forgetting, "base": base_check,
                              "chosen": settings[chosen][2]}
        bar.message = "final run"
        left = t0 + budget - time.perf_counter() - (plan.reserve if plan else 0)
        rate = bar.bar.format_dict.get("rate") or 0
        if rate and chosen and left < chosen / rate:
            fit = int(left * rate * 0.9)
            fit = fit if fit >= MIN_STEPS else 0
            log(f"note: time is short; the final run takes {fit} of the {chosen} chosen steps")
            chosen = fit
            if not chosen and 0 in settings:  # the base weights: their own best thresholds
                thresholds.update(settings[0][0])
                after = curve[0]
                if forgetting:
                    forgetting["chosen"] = settings[0][2]
        bar.set_total(bar.done + chosen)
        if chosen:
            model = _train(run_config(base_config, chosen, 1, seed, base, device, BATCH_SIZE), *items_of(examples),
                           on_step=bar.step).model
        else:
            model = base_model
        bar.bar.close()
        elapsed = time.perf_counter() - t0
        nuclei = f"{len(annotated)} image{'s' * (len(annotated) > 1)}, {n_nuclei} nuclei, {_duration(elapsed)}"
        if folds:
            line = f"held-out ({method}): base {before:.2f} -> fine-tuned {after:.2f} ({nuclei})"
            if chosen == 0:
                line += " with tuned thresholds; training did not beat the base weights on held-out images: they are kept"
            if forgetting:
                bound = "no bound" if max_forgetting is None else f"at most {max_forgetting:g} lost"
                line += f"; base training images: {forgetting['base']:.2f} -> {forgetting['chosen']:.2f} ({bound})"
        else:
            line = f"no held-out validation ({method}): fine-tuned {chosen} steps ({nuclei})"
        provenance = {
            "date": datetime.now(UTC).isoformat(timespec="seconds"),
            "base": str(base), "base_weights_sha256": base_config.weights_sha256,
            "images": [{"name": a.name, "source": a.source, "sha256": a.sha256, "nuclei": a.n_nuclei,
                        "diameter": round(float(d), 2) if np.isfinite(d) else None}
                       for a, d in zip(annotated, diameters, strict=True)],
            "steps": chosen, "batch_size": BATCH_SIZE, "crop": CROP, "lr": LR,
            "guard": {"root": str(guard_root), "images": len(guards), "share": GUARD_SHARE,
                      "forgetting": forgetting} if guards else None,
            "validation": {"method": method, "folds": len(folds), "steps_planned": steps,
                           "held_out_score_by_steps": curve, "before": before, "after": after},
            "summary": line, "time_s": round(elapsed, 1),
            "hardware": _hardware(device, config),
            "base_training": base_config.training or None,
        }
        _write(out, model, base_config, thresholds, user_diameter, provenance)
        log(line)
        return out


@dataclass(frozen=True)
class TimePlan:
    """What fits in the time left (:func:`plan_time`): held-out validation or not, with the guard's
    check images or not, at how many checkpoints, and the steps of every run (0: no training)."""

    validate: bool
    checks: bool
    checkpoints: int
    steps: int
    reserve: float
    reason: str = ""
    note: str = ""


def plan_time(left: float, folds: int, t_step: float, t_run: float, held_cost: float, check_cost: float,
              check_setup: float, what: str = "the time given") -> TimePlan:
    """Fit fine-tuning's work into ``left`` seconds, from measured times.

    The plan asks, in this order, for the first that leaves every run at least :data:`MIN_STEPS`
    steps: validation at :data:`CHECKPOINTS`, 2 then 1 checkpoints with the guard's check images,
    then without them; then no validation (the final run only); else no training at all (the
    model written is the base with the user's diameter). Steps are as many as fit, at most
    :data:`MAX_STEPS`.

    Parameters
    ----------
    left : float
        Seconds left of ``--minutes`` (reading, the model and the step time already spent).
    folds : int
        Validation runs (0: none possible).
    t_step, t_run : float
        Seconds per training step, and to start a run (build, load, first step's extra).
    held_cost : float
        Seconds to predict and score (every threshold setting) all held-out examples once.
    check_cost : float
        The same for the guard's check images, once per fold and checkpoint (0: no guard).
    check_setup : float
        Seconds to read the check images and build their examples.
    what : str
        The time limit in notes (``--minutes 2``).
    """
    reserve = max(RESERVE_SECONDS, 0.03 * left)  # the model written, the last line
    left -= reserve

    def fitting(fixed: float, runs: int, multiple: int = 1) -> int:
        steps = int(max(0.0, left - fixed - runs * t_run) / (runs * max(t_step, 1e-6)))
        return min(steps, MAX_STEPS) // multiple * multiple

    if folds:
        for checks in ((True, False) if check_cost else (False,)):
            per_checkpoint = held_cost + folds * check_cost * checks
            once = (check_setup + 2 * check_cost) * checks + per_checkpoint  # base predictions, checkpoint 0
            for k in sorted({CHECKPOINTS, 2, 1}, reverse=True):
                steps = fitting(once + k * per_checkpoint, folds + 1, k)
                if steps >= max(MIN_STEPS, k):
                    note = "" if (checks or not check_cost) else (
                        f"time is short ({what}): the guard's check images are not scored, forgetting is not measured")
                    return TimePlan(True, checks, k, steps, reserve, note=note)
    steps = fitting(0.0, 1)
    reason = f"no time for it in {what}" if folds else ""
    if steps >= MIN_STEPS:
        return TimePlan(False, False, 1, steps, reserve, reason)
    return TimePlan(False, False, 1, 0, reserve, reason or f"no time to train in {what}",
                    f"no time to train in {what} after reading the images and the model; the model written "
                    "is the base model with your images' nucleus diameter")


#: ``--minutes``: above 0 and at most :data:`MAX_MINUTES` (the argparse type; :func:`check_minutes` for Python callers).
MINUTES = number(above=0, at_most=MAX_MINUTES)


def check_minutes(minutes) -> float:
    """``minutes`` as a float in (0, :data:`MAX_MINUTES`] (:data:`MINUTES`); a one-line NucleiError otherwise."""
    try:
        return MINUTES(str(float(minutes)))
    except (TypeError, ValueError, argparse.ArgumentTypeError):
        raise NucleiError(f"--minutes {minutes}: expected {MINUTES.__name__}") from None


def read_annotated(images, labels, model_config: ModelDirConfig, warn=print) -> list:
    """The annotated images fine-tuning uses (:class:`pipeline.data.annotations.Annotated`).

    Image files paired with a label folder are read one at a time, each cut to its bounded
    region (:data:`MAX_REGION_PIXELS`) before the next is read; arrays and explicit label lists
    are read as :func:`pipeline.data.annotations.load_annotated` reads them, then cut.

    - An image whose pixels equal an earlier one's (the same file under two paths or names, a
      copy, the same array twice) is used once, and one line says which.
    - Two different image files of one name (``a/x.png``, ``b/x.png``) would both be paired with
      ``x.tif``: refused in one line naming both (in Python, a list of labels pairs them explicitly).

    Raises
    ------
    NucleiError
        As :func:`pipeline.data.annotations.load_annotated`, and two different images of one name.
    """
    from pipeline.data.annotations import load_annotated, pair_files

    if isinstance(labels, (str, Path)) and all(isinstance(i, (str, Path)) for i in images):
        pairs = pair_files(list(images), labels)
        _refuse_same_names(pairs)
        chunks = [([image], [lab]) for image, lab in pairs]
    else:
        chunks = [(images, labels)]
    out, seen, duplicates = [], {}, []
    for chunk in chunks:
        for annotated in load_annotated(*chunk, warn=warn):
            digest = hashlib.sha256(np.ascontiguousarray(annotated.image).data).hexdigest()
            if digest in seen:
                duplicates.append(f"{annotated.source} is the same image as {seen[digest]}")
                continue
            seen[digest] = annotated.source
            out.append(_bounded(annotated, model_config, warn))
    if duplicates:
        n = len(duplicates)
        warn(f"{n} duplicate image{'s' * (n > 1)}, each used once: {'; '.join(duplicates)}")
    return out


def _refuse_same_names(pairs: list) -> None:
    """Refuse two different image files paired with one label file."""
    first: dict = {}
    for image, lab in pairs:
        other = first.setdefault(Path(lab).resolve(), image)
        if other != image and _file_sha256(other) != _file_sha256(image):
            raise NucleiError(f"{other} and {image}: two different images named {image.stem!r}, both paired with "
                              f"{lab}; rename one of them and its labels")


def _file_sha256(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _bounded(annotated, model_config: ModelDirConfig, warn):
    """``annotated``, or its region richest in nuclei when it holds more than
    :data:`MAX_REGION_PIXELS` at the network's scale (said in one line)."""
    from pipeline.method.scale import median_diameter, scale_factor
    from pipeline.training.finetune_run import bounded_region

    canonical = max((d for d in (model_config.diameter, model_config.stained_diameter) if d), default=None)
    factor = scale_factor(median_diameter(annotated.labels), canonical) if canonical else 1.0
    rows, cols = bounded_region(annotated.labels, MAX_REGION_PIXELS, factor)
    height, width = annotated.labels.shape
    h, w = rows.stop - rows.start, cols.stop - cols.start
    if (h, w) == (height, width):
        return annotated
    warn(f"{annotated.source}: {width}x{height} px; fine-tuning uses its {w}x{h} px region richest in nuclei "
         f"(at most {MAX_REGION_PIXELS / 1e6:.1f} Mpx at the network's scale: a bound on memory)")
    return dataclasses.replace(annotated, image=annotated.image[rows, cols].copy(),
                               labels=annotated.labels[rows, cols].copy())


def _tune(samples: list, current: dict, checks: list | None = None,
          floor: float | None = None) -> tuple[dict, float, float | None] | None:
    """The best setting of :data:`THRESHOLD_GRID` and the ``current`` thresholds on held-out
    ``samples`` among those whose mean DSB2018 score on the ``checks`` samples is at least ``floor``:
    (setting, mean score on ``samples``, mean score on ``checks`` or None); None when none is."""
    from pipeline.method.grid_search import best_setting, grid_search

    fixed = {k: v for k, v in current.items() if k not in THRESHOLD_GRID}
    grid = {k: sorted({*values, current[k]} - {None}) for k, values in THRESHOLD_GRID.items()}
    table = grid_search(samples, grid, fixed)
    if checks:
        guard = grid_search(checks, grid, fixed).rename(columns={"dsb_score": "check_score"})
        table = table.merge(guard[[*grid, "check_score"]], on=list(grid), sort=False)
        table = table[table.check_score >= floor - 1e-9] if floor is not None else table
    if table.empty:
        return None
    setting, scores = best_setting(table.drop(columns="check_score", errors="ignore"))
    check_score = float(table.iloc[0]["check_score"]) if checks else None
    return {k: setting[k] for k in grid}, scores["dsb_score"], check_score


def _load(base: Path, device: str):
    from pipeline.model.model_dir import load_model_dir

    return load_model_dir(base, device)


def _step_time(config, items, weights) -> tuple[float, float]:
    """Seconds per training step of ``config`` (measured on its steps after the first), and the
    seconds a run takes besides its steps (building, loading, the first step's extra)."""
    stamps = []
    start = time.perf_counter()
    _train(config, items, weights, on_step=lambda: stamps.append(time.perf_counter()))
    total = time.perf_counter() - start
    step = float(np.mean(np.diff(stamps))) if len(stamps) > 1 else total
    return step, max(0.0, total - step * len(stamps))


def _grid_size(current: dict) -> int:
    """Threshold settings :func:`_tune` scores (:data:`THRESHOLD_GRID` and the ``current`` values)."""
    return int(np.prod([len({*values, current[k]} - {None}) for k, values in THRESHOLD_GRID.items()]))


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
    """The model folder fine-tuning starts from: the base's stained network (``stained_model``) when
    most of the labelled images (their ``image_types``) are stained; else its dense network
    (``dense_model``) when most have nuclei over more than its ``dense_fraction`` of their pixels
    (``fractions``: the labelled share of each image, the share the Segmenter routes on); else the
    base itself. Either way the folder written holds the one network it fine-tuned, for the user's
    kind of images."""
    from pipeline.config.model_folder import STAINED_IMAGE_TYPE
    from pipeline.model.model_dir import read_model_dir

    stained = image_types.count(STAINED_IMAGE_TYPE)
    dense = 0 if base_config.dense_model is None else sum(f > base_config.dense_fraction for f in fractions)
    if base_config.stained_model is not None and 2 * stained > len(image_types):
        inner = base_config.stained_folder(base)
        log(f"{stained} of {len(image_types)} images are stained: fine-tuning the model's stained network ({inner})")
    elif 2 * dense > len(fractions):
        inner = base_config.dense_folder(base)
        log(f"{dense} of {len(fractions)} images have nuclei over more than {base_config.dense_fraction:.0%} of their "
            f"pixels: fine-tuning the model's dense network ({inner})")
    else:
        return base, base_config
    config, _ = read_model_dir(inner)
    return inner, config


def _write(out: Path, model, base_config: ModelDirConfig, thresholds: dict, user_diameter: float,
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
