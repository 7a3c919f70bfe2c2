"""Average the weights of model directories fine-tuned from one network (a "model soup").

Two fine-tunes of one network at a low learning rate stay in one basin of the loss, so the mean
of their weights is a network too, and it tends to keep what each of them is good at (Wortsman
et al., "Robust fine-tuning of zero-shot models", CVPR 2022; "Model soups", ICML 2022): e.g. a
network and its fine-tune for a shift such as defocus (model card, "After stage 4")::

    nuclei average models/stage3 runs/illum/model -o runs/mean

The first directory gives the configuration (thresholds, normalisation, diameter); the training
provenance records every source and its weight. Batch-norm running statistics are averaged like
the weights.

Must not: train, or average networks of different architectures.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import torch

from pipeline.arguments import number
from pipeline.errors import NucleiError, before_work
from pipeline.model.model_dir import load_model_dir, save_model_dir


def weight_fractions(weights: list[float]) -> list[float]:
    """``weights`` divided by their sum; ValueError unless finite, non-negative, with a positive sum."""
    weights = [float(w) for w in weights]
    total = sum(weights)
    if not weights or not all(math.isfinite(w) and w >= 0 for w in weights) or not 0 < total < math.inf:
        raise ValueError(f"weights must be finite and non-negative with a positive sum, got {weights}")
    return [w / total for w in weights]


def average_state(states: list[dict[str, torch.Tensor]], weights: list[float]) -> dict[str, torch.Tensor]:
    """The weighted mean of state dicts with the same keys and shapes.

    Parameters
    ----------
    states : list of dict
        State dicts (name → tensor). Floating-point tensors are averaged; the others (e.g. batch
        norm's ``num_batches_tracked``) are taken from the first.
    weights : list of float
        One non-negative weight per state, normalised to sum to 1.

    Returns
    -------
    state : dict
        float32 tensors where the sources were floating point.
    """
    if len(states) != len(weights) or not states:
        raise ValueError("one weight per state dict, at least one of each")
    fractions = weight_fractions(weights)
    first = states[0]
    for i, state in enumerate(states[1:], 1):
        if state.keys() != first.keys() or any(state[k].shape != v.shape for k, v in first.items()):
            raise ValueError(f"state dict {i} does not match the first (keys or shapes)")
    return {
        k: sum(f * s[k].float() for s, f in zip(states, fractions, strict=True)) if v.is_floating_point() else v
        for k, v in first.items()
    }


def average_model_dirs(sources: list[str | Path], out: str | Path, weights: list[float] | None = None) -> Path:
    """Write the weighted mean of model directories as a model directory.

    Parameters
    ----------
    sources : list of str or Path
        Model directories (:func:`pipeline.model.model_dir.save_model_dir`) with the same ``model``
        configuration.
    out : str or Path
        The directory to write (weights in half precision, as shipped); may not be a source.
    weights : list of float, optional
        One per source (default: equal): finite, non-negative, with a positive sum.

    Returns
    -------
    out : Path

    Raises
    ------
    NucleiError
        Naming the directory: unreadable, or of another architecture than the first; weights that
        are not one per source, not finite, negative or all zero; ``out`` a source; an average whose
        weights are not finite (never written: :func:`~pipeline.model.model_dir.save_model_dir`).
    """
    return write_average(out, *read_sources(sources, out, weights))


def read_sources(sources: list[str | Path], out: str | Path, weights: list[float] | None = None) -> tuple:
    """Check what :func:`average_model_dirs` is asked and read its sources, before any work:
    (sources as Paths, their weights' fractions, their networks, their configurations)."""
    sources = [Path(s) for s in sources]
    weights = [1.0] * len(sources) if weights is None else list(weights)
    if len(sources) < 2 or len(weights) != len(sources):
        raise NucleiError(f"{len(sources)} model directories and {len(weights)} weights: need two or more, one weight each")
    try:
        fractions = weight_fractions(weights)
    except ValueError as exc:
        raise NucleiError(str(exc)) from None
    if any(Path(out).resolve() == s.resolve() for s in sources):
        raise NucleiError(f"{out}: is one of the sources; write the average elsewhere")
    models, configs = zip(*(load_model_dir(s) for s in sources), strict=True)
    for source, config in zip(sources[1:], configs[1:], strict=True):
        if config.model != configs[0].model:
            raise NucleiError(f"{source}: another architecture than {sources[0]} ({config.model.to_dict()})")
    return sources, fractions, models, configs


def write_average(out: str | Path, sources: list[Path], fractions: list[float], models: tuple, configs: tuple) -> Path:
    """Write the average of :func:`read_sources`' networks to ``out``; returns ``out``."""
    state = average_state([m.state_dict() for m in models], fractions)
    model = models[0]
    model.load_state_dict(state)
    config = configs[0].without_routes(weights_sha256=None, training={
        "average": [
            {"source": str(s), "weight": round(f, 6), "training": c.training or None}
            for s, f, c in zip(sources, fractions, configs, strict=True)
        ]
    })
    return save_model_dir(out, model, config)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei average``."""
    parser.add_argument("sources", nargs="+", help="model directories (the first gives the configuration)")
    parser.add_argument("-o", "--out", required=True, help="the model directory to write")
    parser.add_argument("--weights", type=number(at_least=0), nargs="+",
                        help="one per source, non-negative, not all 0 (default: equal)")


def main(args: argparse.Namespace) -> int:
    """``nuclei average``: the weighted mean of model directories."""
    with before_work():  # bad weights, a missing or unreadable source, -o a source: exit 2, nothing written
        read = read_sources(args.sources, args.out, args.weights)
    out = write_average(args.out, *read)
    print(f"average of {len(args.sources)} models written to {out}")
    return 0
