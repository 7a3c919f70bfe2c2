"""The guard against forgetting of ``nuclei finetune``: labelled images of the base model's kind
(DSB2018 ``stage1_train``), a few mixed into every fine-tuning run (:data:`GUARD_SHARE` of the
draws) and others scored at every checkpoint (:data:`CHECK_IMAGES`) to measure what the run
forgets (:data:`FORGET_TOLERANCE`).

Must not: train (:mod:`pipeline.training.finetune` plans and runs), or read images other than the
guard's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config.model_folder import ModelDirConfig
from pipeline.config.params import ROOT

GUARD_IMAGES, GUARD_SHARE = 8, 0.2



#: Images of the guard's root scored (never trained on) to measure forgetting (fewer let costly
#: thresholds pass as harmless: docs/decisions.md, "Forgetting bounded").
CHECK_IMAGES = 24



#: Default largest drop of the DSB2018 score on the guard's check images allowed to the chosen
#: setting (``max_forgetting``; None: the best on the held-out images whatever it forgets).
FORGET_TOLERANCE = 0.03



GUARD_ROOT = ROOT.parent / "shared" / "dsb2018" / "stage1_train"



def guard_examples(root: Path, model_config: ModelDirConfig, targets_kwargs: dict, check: bool = False) -> list:
    """:class:`pipeline.training.finetune_run.Example` of the images :func:`guard_ids` names in a Kaggle
    training root (the base model's data), or [] when ``root`` is absent."""
    from pipeline.data.kaggle import read_kaggle_sample
    from pipeline.method.scale import median_diameter
    from pipeline.training.finetune_run import make_example

    if not root or not Path(root).is_dir():
        return []
    out = []
    for image_id in guard_ids(root, check=check):
        image, labels = read_kaggle_sample(Path(root) / image_id)
        out.append(make_example(f"{'check' if check else 'guard'}:{image_id}", image.astype(np.float32) / 255,
                                labels, median_diameter(labels), model_config, targets_kwargs))
    return out



def guard_ids(root: Path, n: int = GUARD_IMAGES, check: bool = False, n_check: int = CHECK_IMAGES) -> list[str]:
    """The ids :func:`guard_examples` uses: ``n`` evenly spaced among the sorted ids (trained on),
    or, with ``check``, ``n_check`` evenly spaced among the others (scored, never trained on)."""
    from pipeline.data.kaggle import list_kaggle_ids

    ids = list_kaggle_ids(root)
    guard = [ids[int(i)] for i in np.linspace(0, len(ids) - 1, min(n, len(ids)))]
    if not check:
        return guard
    rest = sorted(set(ids) - set(guard))
    if not rest:
        return []
    return list(dict.fromkeys(rest[int(i)] for i in np.linspace(0, len(rest) - 1, min(n_check, len(rest)))))
