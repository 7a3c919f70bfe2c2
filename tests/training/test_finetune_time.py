"""Fine-tuning's time (pipeline.training.finetune_time): --minutes bounded, the plan of what a
shorter time gives up."""

from __future__ import annotations

import pytest

from pipeline.errors import UsageError

from ..hostile import annotated_folder, finetune_cli


@pytest.mark.parametrize("minutes", ["nan", "inf", "-inf", "0", "-1", "1e9", "ten"])
@pytest.mark.hostile
def test_minutes_out_of_range_is_a_usage_error(minutes, model_dir, tmp_path, capsys):
    image = annotated_folder(tmp_path, n=1)[0]
    status, err = finetune_cli(capsys, image, "--labels", tmp_path / "labels", "-o", tmp_path / "ft",
                               "--model", model_dir, "--guard", "none", f"--minutes={minutes}")
    assert status == 2 and "Traceback" not in err
    assert f"--minutes: {minutes}: expected" in err and not (tmp_path / "ft").exists()


@pytest.mark.parametrize("minutes", [float("nan"), float("inf"), 0, -1, 1e9])
@pytest.mark.hostile
def test_minutes_out_of_range_in_python(minutes, model_dir, tmp_path):
    from pipeline.training.finetune import finetune

    images = annotated_folder(tmp_path, n=1)
    with pytest.raises(UsageError, match="minutes"):
        finetune(images, tmp_path / "labels", base=model_dir, minutes=minutes, out=tmp_path / "ft", guard=None)


@pytest.mark.hostile
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
