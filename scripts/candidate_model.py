"""A copy of a model folder with one of its networks' weights taken from a training run: the
candidate that is measured paired against the folder before it ships.

    python -m scripts.candidate_model --weights RUN/last.ckpt|MODEL_DIR [--model pipeline/shipped/model]
        [--network main|stained|dense] -o OUT

``--weights`` is a run's checkpoint (``last.ckpt``: the weights after its last finished epoch) or a
model directory it exported (its best epoch); its network must have the architecture of the one it
replaces. Everything else is the folder's: the other networks, the routes, the thresholds, the
normalisation. The replaced network loses its int8 file (made from the old weights) and records
where its weights came from in ``training.weights_from``. OUT must not exist yet, so that no
measured candidate is overwritten.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

from pipeline.config.model_folder import read_model_config
from pipeline.config.routing import MAIN
from pipeline.errors import NucleiError, run_main
from pipeline.model.model_dir import load_model_dir, save_model_dir
from pipeline.shipped import DEFAULT_MODEL, model_folder
from pipeline.training.checkpoints import CHECKPOINT_NAME, load_checkpoint


def candidate_model(model: Path, weights: Path, out: Path, network: str = MAIN) -> Path:
    """Write ``out``: ``model`` (a model folder) with the weights of its network named ``network``
    (:data:`pipeline.config.routing.MAIN`: the folder's own) taken from ``weights`` (a training
    checkpoint, or a model directory). Returns ``out``.

    Raises
    ------
    NucleiError
        ``out`` exists; no such network; weights of another architecture.
    """
    model, out = Path(model), Path(out)
    if out.exists():
        raise NucleiError(f"{out}: exists; give a new folder (a measured candidate is not overwritten)")
    folders = {MAIN: "."} | {route.name: route.folder for route in read_model_config(model).routes}
    if network not in folders:
        raise NucleiError(f"{model}: no network {network!r} (it has {', '.join(folders)})")
    net, net_config = load_model_dir(model / folders[network])
    state = load_model_dir(weights)[0].state_dict() if Path(weights).is_dir() else load_checkpoint(weights).get("model")
    try:  # checked before anything is written
        net.load_state_dict(state or {})
    except RuntimeError as exc:
        raise NucleiError(f"{weights}: not the architecture of {model}'s {network} network "
                          f"({' '.join(str(exc).split())[:300]})") from None
    shutil.copytree(model, out)
    target = out / folders[network]
    if net_config.int8_network:  # made from the old weights
        (target / net_config.int8_network).unlink(missing_ok=True)
        (target / net_config.int8_network).with_suffix(".bin").unlink(missing_ok=True)
    tmp = out.parent / f".{out.name}.{network}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    save_model_dir(tmp, net, net_config.replace(int8_network=None,
                                                training={**net_config.training, "weights_from": str(weights)}))
    for name in ("config.yaml", "weights.pt"):
        (tmp / name).replace(target / name)
    shutil.rmtree(tmp)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=model_folder, default=model_folder(DEFAULT_MODEL),
                        help="a model folder, or a shipped model's name")
    parser.add_argument("--weights", type=Path, required=True,
                        help=f"a run's {CHECKPOINT_NAME}, or a model directory")
    parser.add_argument("--network", default=MAIN)
    parser.add_argument("-o", "--out", type=Path, required=True)
    args = parser.parse_args()
    print(candidate_model(args.model, args.weights, args.out, args.network))


if __name__ == "__main__":
    raise SystemExit(run_main(main))
