"""Copy a trained model directory into ``pipeline/shipped/model`` with its tuned post-processing.

    python -m scripts.ship_model --params PARAMS.yaml [-o pipeline/shipped/model] [--stained-diameter PX] [--last]
                                 [--storage float16|int8]

Reads the trained model named by ``predict.model`` of the parameter file, replaces the
``postprocess`` section of its config with the one of the parameter file (after
``nuclei tune --write PARAMS.yaml``), records the validation figures of
``<evaluate.out>/metrics.json`` when present, and writes the model directory with float16 (or,
``--storage int8``, int8) weights (``pipeline.model.model_dir.save_model_dir``). When the exported
model is the last epoch, the float32 weights of ``<train.out>/last.ckpt`` are the source, and the
script prints the largest difference between float32 and stored probabilities on a sample image. ``--stained-diameter``
sets the canonical diameter of stained images (``stained_diameter`` in ``config.yaml``); the
validation figures are then recorded only if ``predict.model`` resized stained images to the
same diameter (figures measured at another scale would not describe the shipped model).
``--last`` ships the run's last epoch (``<train.out>/last.ckpt``: weights, epoch, training time
and scores) instead of ``predict.model`` (its best validation epoch), keeping the rest of that
model directory's config.
"""

from __future__ import annotations

import argparse
import json
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

from pipeline.arguments import POSITIVE
from pipeline.config.params import (
    ROOT,
    PostprocessConfig,
    load_params,
)
from pipeline.data.kaggle import read_kaggle_sample
from pipeline.method.image_types import HISTOLOGY
from pipeline.method.intensity import normalize_image
from pipeline.model.model_dir import STORAGES, load_model_dir, save_model_dir
from pipeline.model.predictor import Predictor
from pipeline.training.checkpoints import load_checkpoint
from pipeline.training.trainer import epoch_scores


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", required=True, help="parameters of the run (predict.model, postprocess, evaluate.out)")
    parser.add_argument("-o", "--out", default=str(ROOT / "pipeline" / "shipped" / "model"))
    parser.add_argument("--stained-diameter", type=POSITIVE, default=None, metavar="PX",
                        help="canonical nucleus diameter of stained images (default: the source model's, "
                             "else its diameter)")
    parser.add_argument("--last", action="store_true",
                        help="ship the last epoch (<train.out>/last.ckpt), not the best validation epoch")
    parser.add_argument("--storage", choices=STORAGES[1:], default="float16",
                        help="how the weights are stored (int8: tensors of 2^20 weights or more in int8, the rest float16; "
                             "a w24 d5 takes 20.6 MB instead of 35)")
    args = parser.parse_args()
    params = load_params(args.params)
    source = Path(params["predict"]["model"])
    model, config = load_model_dir(source)
    # the exported best model is float16 already; when it is also the last epoch, start from the
    # float32 weights of the checkpoint so that the comparison below measures the float16 loss
    ckpt_path = Path(params["train"]["out"]) / "last.ckpt"
    from_float32 = False
    if args.last and not ckpt_path.is_file():
        parser.error(f"--last: {ckpt_path} not found")
    training = dict(config.training)
    if ckpt_path.is_file():
        ckpt = load_checkpoint(ckpt_path)
        if args.last:
            training.update(epoch=ckpt["epoch"], time_s=round(float(ckpt["time_s"]), 1),
                            scores=epoch_scores(ckpt["history"][-1]),
                            date=datetime.fromtimestamp(ckpt_path.stat().st_mtime, UTC).isoformat(timespec="seconds"))
        if ckpt["epoch"] == training.get("epoch"):
            model.load_state_dict(ckpt["model"])
            from_float32 = True
    evaluated_at = config.diameter_for(HISTOLOGY)  # what `nuclei predict` resized stained images to
    config = config.replace(postprocess=PostprocessConfig.of_section(params["postprocess"], args.params))
    if args.stained_diameter is not None:
        config = config.replace(stained_diameter=args.stained_diameter)
    shipped_at = config.diameter_for(HISTOLOGY)
    metrics_file = Path(params["evaluate"]["out"]) / "details.json"  # every metric, by type too
    if metrics_file.is_file() and shipped_at == evaluated_at:
        training["validation"] = json.loads(metrics_file.read_text())
    elif metrics_file.is_file():
        print(f"{metrics_file}: not recorded: measured with stained images at {evaluated_at} px, shipped at "
              f"{shipped_at} px; evaluate a model directory shipped with --stained-diameter first")
    save_model_dir(args.out, model, config.replace(training=training), storage=args.storage)

    print(f"shipped {source} -> {args.out}")
    if not from_float32:
        print("the best epoch is not the last checkpoint's: its weights were stored in float16 already")
        return 0
    shipped, _ = load_model_dir(args.out)
    sample = sorted((ROOT / "data" / "sample" / "stage1_train").iterdir())[0]
    image = normalize_image(read_kaggle_sample(sample, masks=False)[0], **config.normalization.to_dict())
    a = Predictor(model, config, precision="fp32").predict(image)
    b = Predictor(shipped, config, precision="fp32").predict(image)
    print(f"{args.storage} vs float32 probabilities on {sample.name[:12]}: max |diff| {np.abs(a - b).max():.2e}")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
