"""The time plan of ``nuclei finetune``: what of its work fits in ``--minutes`` (:func:`plan_time`,
from measured times), and the ``--minutes`` option itself (:data:`MINUTES`, :func:`check_minutes`).

Must not: measure (:mod:`pipeline.training.finetune` times a step and the held-out predictions and
asks), train, or read files.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from pipeline.arguments import number
from pipeline.errors import NucleiError

DEFAULT_MINUTES = 8.0
#: Largest ``--minutes`` (a day); 0, negative, NaN and infinite values are refused too.
MAX_MINUTES = 24 * 60.0
MIN_STEPS, MAX_STEPS = 4, 800
#: Seconds kept at the end of ``--minutes`` for writing the model (at least; 3 % of the time left).
RESERVE_SECONDS = 3.0
#: Held-out scoring points per fold run (the step counts chosen among).
CHECKPOINTS = 4


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
