"""Grid-search the post-processing thresholds of a model folder's stained or dense network on the
images routed to it in the training folds.

    python -m scripts.tune_routed MODEL --network dense|stained --params evaluation/sources.yaml
        [--folds 1 2 3 4] [--write]

MODEL is a model folder that declares a ``dense`` or ``stained`` network (``networks``; the default:
``pipeline/shipped/model``). Every labelled image of the parameter file's sources whose grouped fold
is in ``--folds`` (the networks' training folds; fold 0 stays held out) is read as ``nuclei segment``
reads it. The images the folder routes to the network named by ``--network``
(:meth:`pipeline.model.segmenter.Segmenter.network_for`, as ``nuclei segment`` and ``nuclei
predict`` route them) are run by it at the scale ``nuclei segment`` gives them,
and :func:`pipeline.method.grid_search.grid_search` scores every combination of its object, marker
and mask thresholds on them (mean DSB2018 score over images, or over sources with ``--balance
source``). It prints the table's best rows with each source's mean, and the row of the network's
current thresholds. ``--write`` puts the best row into
that network's ``config.yaml``. Issue 58, session 54: docs/decisions.md, "The dense network trained
further, and its own thresholds".
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from benchmarks.bench_sources import read_original
from pipeline.arguments import number
from pipeline.config.params import load_config
from pipeline.data.folds import read_index
from pipeline.data.sources import list_sample_ids
from pipeline.errors import NucleiError, run_main
from pipeline.method.grid_search import grid_search
from pipeline.method.image_types import image_type_of
from pipeline.method.metrics import dsb_score
from pipeline.method.watershed import postprocess_to_shape
from pipeline.model.model_dir import write_model_config
from pipeline.model.segmenter import Segmenter
from pipeline.progress import progress

#: The thresholds searched, by network: the object threshold, the marker threshold and the mask
#: threshold that applies to the images it is routed (the floor of dense ones; stained ones' own).
KEYS = {"dense": ("object_threshold", "marker_threshold", "dense_mask_threshold"),
        "stained": ("stained_object_threshold", "marker_threshold", "stained_mask_threshold")}


def routed_samples(model: str, params: str, folds: list[int], network: str,
                   sources: list[str] | None = None) -> tuple[Segmenter, list[tuple], list[str]]:
    """The ``network`` ('dense' or 'stained') Segmenter of ``model`` and the :func:`grid_search`
    samples (its probabilities, head, true labels, scale, image type) of the images of ``folds``
    routed to it, with their sources (of ``sources``, default every source of ``params``)."""
    data = load_config(params).data
    unknown = sorted(set(sources or []) - set(data.sources))
    if unknown:
        raise NucleiError(f"{params}: data.sources has no {', '.join(unknown)}")
    segmenter = Segmenter.from_model_dir(model, tta="auto")
    route = segmenter.config.route(network)
    fold_of = read_index(data.prepared, sources=list(data.sources)).set_index("id")["group_fold"]
    samples, names, routed_to = [], [], None
    for source, spec in data.sources.items():
        if sources and source not in sources:
            continue
        root, layout = Path(spec["root"]), spec["layout"]
        ids = [i for i in list_sample_ids(root, layout) if fold_of.get(f"{source}/{i}") in folds]
        for sample_id in progress(ids, desc=source):
            image, true = read_original(root, layout, sample_id)
            x = segmenter.normalize(image)
            image_type = image_type_of(x)
            if route.image_types and image_type not in route.image_types:
                continue  # never routed to it: not run
            first = segmenter.network_for(image_type)
            _, _, scale = first.scale_for(x, None, image_type)
            probs = first.predict_scaled(x, scale)
            routed = first.network_for_probs(probs, image_type)  # run again, when the folder routes such images
            if routed.route != network:
                continue
            routed_to = routed
            samples.append((probs if routed is first else routed.predict_scaled(x, scale), routed.head, true, scale,
                            image_type))
            names.append(source)
    if routed_to is None:
        raise NucleiError(f"{model}: no image of folds {folds} is routed to its {network} network")
    return routed_to, samples, names


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model")
    parser.add_argument("--network", choices=sorted(KEYS), default="dense")
    parser.add_argument("--params", default="evaluation/sources.yaml")
    unit = number(at_least=0, at_most=1)
    parser.add_argument("--sources", nargs="+", help="only these of data.sources (default: all; leave out "
                        "a source the network never trained on, to keep it for the leave-one-source-out check)")
    parser.add_argument("--folds", type=number(integer=True, at_least=0), nargs="+", default=[1, 2, 3, 4],
                        help="grouped folds whose images are scored (default: the training folds 1-4)")
    parser.add_argument("--object", type=unit, nargs="+", default=[0.9, 0.95, 0.98, 0.99])
    parser.add_argument("--marker", type=unit, nargs="+", default=[0.5, 0.6, 0.7, 0.8])
    parser.add_argument("--mask", type=unit, nargs="+", default=[0.3, 0.4, 0.5, 0.6],
                        help="mask thresholds (dense: the floor, dense_mask_threshold; stained: stained_mask_threshold)")
    parser.add_argument("--balance", choices=["image", "source"], default="image",
                        help="objective: mean over images or over sources, each counting once (default: image)")
    parser.add_argument("--write", action="store_true", help="set the best row in the network's config.yaml")
    args = parser.parse_args()
    keys = KEYS[args.network]
    routed, samples, sources = routed_samples(args.model, args.params, args.folds, args.network, args.sources)
    print(f"{len(samples)} images routed: {pd.Series(sources).value_counts().to_dict()}")
    current = {k: routed.thresholds[k] for k in keys}
    grid = dict(zip(keys, ([*args.object], [*args.marker], [*args.mask]), strict=True))
    grid = {k: sorted(set(v) | {current[k]}) for k, v in grid.items()}
    fixed = {k: v for k, v in routed.thresholds.items() if k not in keys}
    groups = sources if args.balance == "source" else None
    table = grid_search(samples, grid, fixed, groups).drop(columns="min_relative_size")
    is_current = (table[list(keys)] == pd.Series(current)).all(axis=1)
    for row in table.index[:5].union(table.index[is_current]):  # each source's mean at the rows shown
        setting = fixed | table.loc[row, list(keys)].to_dict()
        scores = [dsb_score(true, postprocess_to_shape(probs, head, true.shape, scale, image_type, **setting))
                  for probs, head, true, scale, image_type in samples]
        for source, mean in pd.Series(scores).groupby(sources).mean().items():
            table.loc[row, source] = mean
    print(table.head(5).to_string(float_format="%.4f"))
    print("current:\n" + table[is_current].to_string(float_format="%.4f"))
    if args.write:
        best = {k: float(table.loc[0, k]) for k in keys}
        config = routed.config  # checked and written as save_model_dir writes it
        written = write_model_config(Path(config.source).parent,
                                     config.replace(postprocess=config.postprocess.thresholds() | best))
        print(f"{written}: postprocess {best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(run_main(main))
