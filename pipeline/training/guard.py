"""The guard against forgetting of ``nuclei finetune``: labelled images of the base model's kind,
a few mixed into every fine-tuning run (:data:`GUARD_SHARE` of the draws) and others scored at every
checkpoint (:data:`CHECK_IMAGES`) to measure what the run forgets (:data:`FORGET_TOLERANCE`).

The guard ships with the package (:data:`SHIPPED_GUARD`: 8 + 24 CC0 images of DSB2018
``stage1_train`` with their labels, ``mix/`` and ``check/`` in the folder layout; written by
``scripts/make_guard.py``). ``--guard DIR`` points elsewhere: a folder with ``mix/`` and ``check/``
like it, or any labelled folder (the Kaggle layout, or ``images/`` + ``labels/``), of which
:func:`guard_ids` takes :data:`GUARD_IMAGES` images to mix in and :data:`CHECK_IMAGES` others to
check.

Must not: train (:mod:`pipeline.training.finetune` plans and runs), or read images other than the
guard's own.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline.config.model_folder import ModelDirConfig
from pipeline.errors import NucleiError
from pipeline.shipped import shipped

#: Images of the guard mixed into training, and the share of the draws they get.
GUARD_IMAGES, GUARD_SHARE = 8, 0.2
#: Images of the guard scored (never trained on) to measure forgetting (fewer let costly
#: thresholds pass as harmless: docs/decisions.md, "Forgetting bounded").
CHECK_IMAGES = 24
#: Default largest drop of the DSB2018 score on the guard's check images allowed to the chosen
#: setting (``max_forgetting``; None: the best on the held-out images whatever it forgets).
FORGET_TOLERANCE = 0.03
#: The guard that ships with the package.
SHIPPED_GUARD = shipped("guard")
#: The two parts of a guard folder like the shipped one.
MIX, CHECK = "mix", "check"


def guard_layout(root: str | Path) -> str:
    """How a guard folder holds its images: ``'parts'`` (``mix/`` and ``check/``, each in the
    folder layout), ``'kaggle'`` or ``'folder'`` (a labelled source: :mod:`pipeline.data.sources`).

    Raises
    ------
    NucleiError
        ``root`` is not a folder, or holds none of these.
    """
    from pipeline.data.kaggle import list_kaggle_ids

    root = Path(root)
    if not root.is_dir():
        raise NucleiError(f"{root}: no such guard folder")
    if (root / MIX / "images").is_dir() and (root / CHECK / "images").is_dir():
        return "parts"
    if (root / "images").is_dir() and (root / "labels").is_dir():
        return "folder"
    try:
        if list_kaggle_ids(root):
            return "kaggle"
    except NucleiError:
        pass
    raise NucleiError(f"{root}: not a guard folder (expected mix/ and check/, images/ and labels/, "
                      "or the Kaggle layout <id>/images, <id>/masks)")


def guard_examples(root: str | Path, model_config: ModelDirConfig, targets_kwargs: dict,
                   check: bool = False) -> list:
    """:class:`pipeline.training.finetune_run.Example` of the guard's images to mix in, or with
    ``check`` of those to score (:func:`guard_layout` says which images those are)."""
    from pipeline.data.sources import read_sample
    from pipeline.method.scale import median_diameter
    from pipeline.training.finetune_run import make_example

    root, layout = Path(root), guard_layout(root)
    if layout == "parts":
        root, layout = root / (CHECK if check else MIX), "folder"
        ids = _ids(root, layout)
    else:
        ids = guard_ids(root, check=check, layout=layout)
    out = []
    for image_id in ids:
        image, labels = read_sample(root, layout, image_id)
        out.append(make_example(f"{'check' if check else 'guard'}:{image_id}", image.astype(np.float32) / 255,
                                labels, median_diameter(labels), model_config, targets_kwargs))
    return out


def guard_ids(root: str | Path, n: int = GUARD_IMAGES, check: bool = False, n_check: int = CHECK_IMAGES,
              layout: str = "kaggle") -> list[str]:
    """The ids of a labelled folder that :func:`guard_examples` uses: ``n`` evenly spaced among
    the sorted ids (mixed in), or, with ``check``, ``n_check`` evenly spaced among the others
    (scored, never trained on)."""
    ids = _ids(root, layout)
    guard = [ids[int(i)] for i in np.linspace(0, len(ids) - 1, min(n, len(ids)))]
    if not check:
        return guard
    rest = sorted(set(ids) - set(guard))
    if not rest:
        return []
    return list(dict.fromkeys(rest[int(i)] for i in np.linspace(0, len(rest) - 1, min(n_check, len(rest)))))


def _ids(root: str | Path, layout: str) -> list[str]:
    from pipeline.data.sources import list_sample_ids

    return list_sample_ids(root, layout)
