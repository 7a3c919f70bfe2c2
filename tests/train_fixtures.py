"""Synthetic prepared data (discs) for the dataset and training tests and benchmark."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from skimage.draw import disk

from pipeline.files.io import save_npz, write_csv
from pipeline.method.training_targets import make_targets


def disc_image(
    size: int | tuple[int, int], n_discs: int, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """A noisy RGB image of bright discs and its instance labels.

    Returns
    -------
    image : uint8 (H, W, 3)
    labels : int32 (H, W), discs 1..n (later discs drawn over earlier ones, relabelled)
    """
    h, w = (size, size) if np.isscalar(size) else size
    labels = np.zeros((h, w), np.int32)
    for i in range(1, n_discs + 1):
        r = rng.uniform(3, 7)
        centre = rng.uniform(r, h - r), rng.uniform(r, w - r)
        labels[disk(centre, r, shape=(h, w))] = i
    from skimage.segmentation import relabel_sequential

    labels = relabel_sequential(labels)[0].astype(np.int32)
    grey = 0.15 + 0.6 * (labels > 0) + rng.normal(0, 0.05, (h, w))
    image = np.clip(np.repeat(grey[..., None], 3, axis=-1) * 255, 0, 255).astype(np.uint8)
    return image, labels


def write_prepared(
    root: str | Path, n_images: int = 6, size: int = 48, folds: int = 3, seed: int = 0
) -> tuple[Path, Path]:
    """Write ``prepared/`` (npz + index.csv) and ``targets/`` for synthetic disc images.

    Image ``i`` is in fold ``i % folds``; sizes vary a little so validation padding is used.

    Returns
    -------
    prepared, targets : Path
    """
    root = Path(root)
    prepared, targets = root / "prepared", root / "targets"
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n_images):
        image_id = f"img{i:02d}"
        shape = (size + (i % 3) * 3, size + (i % 2) * 5)
        image, labels = disc_image(shape, int(rng.integers(3, 8)), rng)
        save_npz(prepared / f"{image_id}.npz", image=image, labels=labels)
        t = make_targets(labels)
        t["weights"] = t["weights"].astype(np.float16)
        save_npz(targets / f"{image_id}.npz", **t)
        n = int(labels.max())
        rows.append(
            dict(
                id=image_id,
                height=shape[0],
                width=shape[1],
                n_nuclei=n,
                mean_area=float((labels > 0).sum() / max(n, 1)),
                image_type="fluo-small",
                fold=i % folds,
            )
        )
    write_csv(prepared / "index.csv", pd.DataFrame(rows))
    return prepared, targets


def tiny_params(root: str | Path, **train) -> dict:
    """Parameters for a seconds-long CPU run on :func:`write_prepared` data in ``root``."""
    root = Path(root)
    return {
        "seed": 0,
        "data": {"prepared": str(root / "prepared"), "val_fold": 0, "split": "stratified"},
        "targets": {"out": str(root / "targets")},
        "model": {"arch": "unet", "head": "softmax", "depth": 2, "width": 4, "upsampling": "transpose"},
        "loss": {"weighted_ce": 1.0, "dice": 1.0, "focal": 0.0, "use_weight_maps": True},
        "augment": {
            "crop": 32,
            "flips": True,
            "rot90": True,
            "scale": [0.8, 1.25],
            "elastic": False,
            "brightness_contrast": True,
            "gamma": True,
            "color_to_gray": False,
            "invert": False,
            **dict.fromkeys(("blur", "dim_saturate", "stain", "noise", "low_bits", "jpeg"), False),
        },
        "train": {
            "out": str(root / "out"),
            "epochs": 1,
            "batch_size": 2,
            "lr": 0.01,
            "weight_decay": 1e-4,
            "schedule": "onecycle",
            "workers": 0,
            "precision": "fp32",
            "compile": False,
            "samples_per_epoch": 8,
            "device": "cpu",
            **train,
        },
        "postprocess": {
            "marker_threshold": 0.5,
            "mask_threshold": 0.5,
            "min_marker_size": 2,
            "min_size": 4,
            "flood": "probability",
        },
    }
