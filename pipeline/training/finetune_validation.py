"""Held-out validation of ``nuclei finetune``: the folds (whole images, or the two halves of every
image), the base network's held-out predictions, the validation runs scored at checkpoints, and
the choice of the steps and watershed thresholds, bounded by the guard's check images.

Must not: plan the time or the steps (:mod:`pipeline.training.finetune`), read or write files, or
segment differently from :class:`pipeline.training.finetune_run.HeldOut`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import numpy as np

from pipeline.config.model_folder import ModelDirConfig
from pipeline.training.guard import GUARD_SHARE

if TYPE_CHECKING:  # torch, at run time imported where a run starts
    from pipeline.training.finetune_run import HeldOut

MAX_FOLDS = 3
#: Smallest side (px at the network's scale) of a half image used as a held-out region.
MIN_REGION = 96


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


def training_items(train: list, guards: list) -> tuple[dict, np.ndarray | None]:
    """The training items of the examples ``train`` and ``guards`` (a run's ``items``), and their
    draw weights: the guard's examples share :data:`~pipeline.training.guard.GUARD_SHARE` of the
    draws (None: no guard, every item alike)."""
    items = {f"{k}:{e.name}": e.arrays for k, e in enumerate(train + guards)}
    share = np.r_[np.full(len(train), (1 - GUARD_SHARE) / len(train)),
                  np.full(len(guards), GUARD_SHARE / max(len(guards), 1))]
    return items, (share if guards else None)


@dataclass(frozen=True)
class Validation:
    """Held-out validation: its ``method`` (or why there is none: no ``folds``), the ``folds``
    ((training examples, held-out examples) pairs), their :class:`HeldOut` (``held``) with the
    base network's probabilities and scores, and the guard's check images (``check``, None: not
    scored) with the base's probabilities."""

    method: str
    folds: list = field(default_factory=list)
    held: list = field(default_factory=list)
    base_probs: list = field(default_factory=list)
    base_scores: list = field(default_factory=list)
    check: HeldOut | None = None
    base_check_probs: list | None = None

    @classmethod
    def of(cls, method: str, folds: list, model_config: ModelDirConfig, model, device: str,
           grid: dict) -> tuple[Validation, float]:
        """The validation of ``folds`` with the base ``model``'s held-out predictions, and the
        seconds to predict and score them once (at every setting of the threshold ``grid``)."""
        from pipeline.training.finetune_run import HeldOut

        held = [HeldOut(h, model_config, device) for _, h in folds]
        start = time.perf_counter()
        base_probs = [h.probabilities(model) for h in held]
        t_held = time.perf_counter() - start
        start = time.perf_counter()
        base_scores = [h.scores(p, model_config.postprocess.thresholds()) for h, p in zip(held, base_probs, strict=True)]
        t_tune = (time.perf_counter() - start) * grid_size(model_config.postprocess.thresholds(), grid)
        return cls(method, folds, held, base_probs, base_scores), t_held + t_tune

    def with_checks(self, checks: list, model_config: ModelDirConfig, model, device: str) -> Validation:
        """This validation scoring the guard's ``checks`` examples too (none: unchanged)."""
        from pipeline.training.finetune_run import HeldOut

        if not checks:
            return self
        check = HeldOut(checks, model_config, device)
        return replace(self, check=check, base_check_probs=check.probabilities(model))


def validation_runs(validation: Validation, config, guards: list, bar) -> tuple[list, list]:
    """Run each fold from the base (``config``: a run's Config, ``train.epochs`` checkpoints) with
    the ``guards`` examples mixed in; returns the held-out probabilities (fold -> checkpoint -> one
    (C, h, w) array per held-out example; checkpoint 0: the base's) and the check images' (the
    same; [] without). ``bar``: a :class:`pipeline.training.finetune_run.RunProgress`."""
    from pipeline.training.finetune_run import train_run

    check = validation.check
    probs = [[p] for p in validation.base_probs]
    check_probs = [[validation.base_check_probs] if check else [] for _ in validation.folds]
    for f, (train, _) in enumerate(validation.folds):
        bar.message = f"validation run {f + 1}/{len(validation.folds)}"

        def checkpoint(model, done, f=f):
            probs[f].append(validation.held[f].probabilities(model))
            if check:
                check_probs[f].append(check.probabilities(model))
            return float("nan")  # scored by choose, with the thresholds searched over all folds

        train_run(config, *training_items(train, guards), on_step=bar.step, on_checkpoint=checkpoint)
    return probs, check_probs


@dataclass(frozen=True)
class Choice:
    """The ``steps`` of the final run and the watershed ``thresholds``; with validation, the mean
    held-out score ``before`` (the base) and ``after``, the score by steps (``curve``), the best
    setting at each checkpoint (``settings``: steps -> :func:`tune_thresholds`'s result) and the
    guard's ``forgetting`` record (None without check images)."""

    steps: int
    thresholds: dict
    before: float | None = None
    after: float | None = None
    curve: dict = field(default_factory=dict)
    settings: dict = field(default_factory=dict)
    forgetting: dict | None = None

    def cut(self, steps: int) -> Choice:
        """This choice with fewer ``steps``; none: the base weights with their own best thresholds."""
        if steps or 0 not in self.settings:
            return replace(self, steps=steps)
        setting, score, check_score = self.settings[0]
        forgetting = {**self.forgetting, "chosen": check_score} if self.forgetting else self.forgetting
        return replace(self, steps=0, thresholds={**self.thresholds, **setting}, after=score, forgetting=forgetting)


def choose(validation: Validation, probs: list, check_probs: list, steps: int, checkpoints: int, thresholds: dict,
           grid: dict, max_forgetting: float | None) -> Choice:
    """The steps (of ``steps`` in ``checkpoints`` runs) with the best mean held-out score (0: the
    base; the fewest of equal scores) and their best setting of the threshold ``grid``
    (:func:`tune_thresholds`, from the current ``thresholds``), among those that keep the guard's
    check images within ``max_forgetting`` of the base's; without validation, ``steps``."""
    if not validation.folds:
        return Choice(steps, thresholds)
    folds, check, floor, forgetting, settings = range(len(validation.folds)), validation.check, None, None, {}
    if check:
        base_check = float(np.mean(check.scores(check_probs[0][0], thresholds)))
        floor = None if max_forgetting is None else base_check - max_forgetting
    for c in range(checkpoints + 1):
        check_folds = folds if c else [0]  # checkpoint 0 is the base in every fold
        choice = tune_thresholds([s for f in folds for s in validation.held[f].samples(probs[f][c])], thresholds,
                                 grid, [s for f in check_folds for s in check.samples(check_probs[f][c])]
                                 if check else None, floor)
        if choice is not None:
            settings[c * steps // checkpoints] = choice
    curve = {k: v[1] for k, v in settings.items()}
    chosen = max(curve, key=lambda s: (round(curve[s], 4), -s))
    thresholds = {**thresholds, **settings[chosen][0]}
    before = float(np.mean([s for f in validation.base_scores for s in f]))
    if check:
        forgetting = {"check_images": len(check.examples), "tolerance": max_forgetting, "base": base_check,
                      "chosen": settings[chosen][2]}
    return Choice(chosen, thresholds, before, curve[chosen], curve, settings, forgetting)


def tune_thresholds(samples: list, current: dict, grid: dict, checks: list | None = None,
                    floor: float | None = None) -> tuple[dict, float, float | None] | None:
    """The best setting of the threshold ``grid`` (name -> values) and the ``current`` thresholds
    on held-out ``samples`` among those whose mean DSB2018 score on the ``checks`` samples is at
    least ``floor``: (setting, mean score on ``samples``, mean score on ``checks`` or None); None
    when none is."""
    from pipeline.method.grid_search import best_setting, grid_search

    fixed = {k: v for k, v in current.items() if k not in grid}
    grid = {k: sorted({*values, current[k]} - {None}) for k, values in grid.items()}
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


def grid_size(current: dict, grid: dict) -> int:
    """Threshold settings :func:`tune_thresholds` scores (``grid`` and the ``current`` values)."""
    return int(np.prod([len({*values, current[k]} - {None}) for k, values in grid.items()]))
