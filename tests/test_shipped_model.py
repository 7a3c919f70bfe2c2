"""The shipped model (models/default) on the embedded sample: a guard against silent regressions
in loading, normalisation, inference or post-processing.

The floor is the score measured when the model was shipped (see models/default/MODEL_CARD.md)
minus a small margin. The sample images may have been among the model's training images, so
this is a regression guard, not a validation figure.
"""

from __future__ import annotations

import pandas as pd
import pytest

from pipeline.config import ROOT

MODEL = ROOT / "models" / "default"
#: DSB2018 score of the shipped model on the embedded sample, CPU, no TTA, when it was shipped.
SHIPPED_SCORE = 0.5170
FLOOR = SHIPPED_SCORE - 0.025  # room for other CPUs' floating-point paths, not for regressions

pytestmark = pytest.mark.slow


def test_shipped_model_loads_and_keeps_its_score(sample_root, sample_solution):
    from pipeline.score import score_submission
    from pipeline.segmenter import Segmenter
    from pipeline.submit import submission_for

    segmenter = Segmenter.from_model_dir(MODEL, device="cpu", tta="none")
    assert segmenter.config["format_version"] == 1
    submission, shapes = submission_for(sample_root, segmenter)
    assert len(shapes) == 20
    summary, per_image = score_submission(submission, pd.read_csv(sample_solution, keep_default_na=False))
    assert summary["dsb_score"] >= FLOOR, summary
    assert abs(summary["n_pred"] - summary["n_true"]) / summary["n_true"] < 0.5  # 1354 vs 999 when shipped
