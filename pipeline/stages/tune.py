"""``nuclei tune``: grid-search the post-processing thresholds on the validation fold.

Every combination of marker threshold, mask threshold, flood relief, object threshold
(``object_threshold``: the peak probability a nucleus must reach), relative minimum size
(``min_relative_size``) and the object and mask thresholds of stained images
(``stained_object_threshold``, ``stained_mask_threshold``) and the floor of the mask threshold
of dense unstained images (``dense_mask_threshold``) is applied to the
validation predictions (``<predict.out>/<id>.npz``) and scored against the prepared labels by
the DSB2018 score; ``--also`` pools the validation predictions of more parameters files (the other
folds of a cross-validation, each predicted by its own network) so that one set is tuned on all.
The objective is the mean over images (``--balance image``, the default: the competition's average)
or over **experiments** (``--balance experiment``: the mean over the acquisition groups of
``index.csv`` of each group's mean score, so that one large experiment cannot choose thresholds
that fail the others) or over **sources** (``--balance source``: each labelled source of
``data.sources`` counts once, so that DSB2018's many images cannot choose the thresholds of the
other labs'). The table (best first) and the best setting are printed;
the best setting (the current one when nothing in the grid beats it) is written to
``<evaluate.out>/tuned_postprocess.yaml`` and, with ``--write PARAMS``, into the ``postprocess``
section of that parameters file (only the values of those keys change; comments, order and the
rest of the file are kept).

Must not: post-process differently from :func:`pipeline.method.watershed.postprocess`, or change
anything in the parameters file but the values of the ``postprocess`` keys.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.arguments import number
from pipeline.config.params import load_config
from pipeline.config.routing import MAIN
from pipeline.errors import NucleiError
from pipeline.method.grid_search import BALANCE_COLUMNS, best_setting, grid_search

GRID = {
    "marker_threshold": [0.3, 0.4, 0.5, 0.6, 0.7, 0.8],
    "mask_threshold": [0.3, 0.4, 0.5, 0.6, 0.7],
    "flood": ["probability", "distance"],
    "min_relative_size": [0.0, 0.1, 0.2, 0.3],
}


def update_section(text: str, name: str, values: dict[str, Any]) -> str:
    """Replace the values of keys of a top-level YAML section, keeping everything else.

    Each ``key: value  # comment`` line directly under ``name:`` keeps its indentation and
    comment; keys not present are appended at the end of the section.

    Parameters
    ----------
    text : str
        The YAML file's text (block style, as params.yaml).
    name : str
        Top-level section.
    values : dict
        Scalars to set.

    Returns
    -------
    text : str
    """
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if re.match(rf"{re.escape(name)}:\s*(#.*)?$", line.rstrip("\n"))), None)
    if start is None:
        raise ValueError(f"no top-level section {name!r}")
    end = start + 1
    while end < len(lines) and (not lines[end].strip() or lines[end][0] in " \t#"):
        end += 1
    while end > start + 1 and not lines[end - 1].strip():
        end -= 1  # blank lines after the section stay after it
    indent = "  "
    remaining = dict(values)
    for i in range(start + 1, end):
        m = re.match(r"(\s+)([A-Za-z_][\w-]*)(:\s*)([^#\n]*?)(\s*#.*)?(\n?)$", lines[i])
        if m is None:
            continue
        indent = m.group(1)
        key = m.group(2)
        if key in remaining:
            value = yaml.safe_dump(remaining.pop(key), default_flow_style=True).strip().removesuffix("...").strip()
            old = m.group(4)
            comment = m.group(5) or ""
            pad = " " * max(len(old) - len(value), 0) if comment else ""
            lines[i] = f"{m.group(1)}{key}{m.group(3)}{value}{pad}{comment}{m.group(6)}"
    added = [
        f"{indent}{key}: {yaml.safe_dump(v, default_flow_style=True).strip().removesuffix('...').strip()}\n"
        for key, v in remaining.items()
    ]
    if added and end > 0 and not lines[end - 1].endswith("\n"):
        lines[end - 1] += "\n"
    return "".join(lines[:end] + added + lines[end:])


def write_params(path: str | Path, values: dict[str, Any]) -> None:
    """Set ``postprocess`` keys of a parameters file in place (atomically); checks the result."""
    from pipeline.files.io import write_text

    path = Path(path)
    try:
        text = path.read_text()
        new = update_section(text, "postprocess", values)
    except (OSError, ValueError) as exc:
        raise NucleiError(f"{path}: cannot update the postprocess section ({exc})") from None
    parsed = yaml.safe_load(new)
    if any(parsed["postprocess"].get(k) != v for k, v in values.items()):
        raise NucleiError(f"{path}: postprocess section not in the expected `key: value` form; not changed")
    write_text(path, new)


UNIT = number(at_least=0, at_most=1)  # a threshold or fraction


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei tune``."""
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: %(default)s)")
    parser.add_argument("--also", nargs="+", default=[], metavar="PARAMS",
                        help="more parameters files whose validation predictions are pooled with those of "
                             "--params: the other folds of a cross-validation, each with its data.val_fold "
                             "and predict.out, so that one set of thresholds is tuned on all of them")
    parser.add_argument("--marker", type=UNIT, nargs="+", default=GRID["marker_threshold"],
                        help="marker thresholds to try (default: %(default)s)")
    parser.add_argument("--mask", type=UNIT, nargs="+", default=GRID["mask_threshold"],
                        help="mask thresholds to try (default: %(default)s)")
    parser.add_argument("--flood", nargs="+", choices=("probability", "distance"), default=GRID["flood"],
                        help="flood reliefs to try (default: both)")
    parser.add_argument("--relative", type=UNIT, nargs="+", default=GRID["min_relative_size"],
                        help="min_relative_size values to try: nuclei smaller than this fraction of the "
                             "image's median nucleus are removed (default: %(default)s)")
    parser.add_argument("--object", type=UNIT, nargs="+", default=None,
                        help="object_threshold values to try: nuclei whose highest P(mask - border) is "
                             "below it are removed (default: the current value)")
    parser.add_argument("--stained-object", type=UNIT, nargs="+", default=None,
                        help="stained_object_threshold values to try: the object threshold of stained "
                             "(colour, e.g. H&E) images (default: the current value)")
    parser.add_argument("--stained-mask", type=UNIT, nargs="+", default=None,
                        help="stained_mask_threshold values to try: the mask threshold of stained "
                             "images (default: the current value)")
    parser.add_argument("--dense-mask", type=number(at_least=0, at_most=1, none=True), nargs="+", default=None,
                        help="dense_mask_threshold values to try ('none': a fixed mask threshold): the "
                             "lowest the mask threshold of unstained images goes as their nucleus "
                             "fraction grows (default: the current value)")
    parser.add_argument("--write", metavar="PARAMS", default=None,
                        help="also set the best values in the postprocess section of this parameters file")
    parser.add_argument("--balance", choices=tuple(BALANCE_COLUMNS), default="image",
                        help="objective: mean over images, over experiments (acquisition groups) or over "
                             "labelled sources (default: %(default)s)")
    parser.add_argument("--top", type=number(integer=True, at_least=1), default=10, help="rows of the table to print (default: %(default)s)")


def validation_samples(config, by: str | None = "group") -> tuple[
        list[tuple[np.ndarray, str, np.ndarray, float, str | None]], list | None]:
    """The samples :func:`grid_search` takes, for the validation fold of ``config`` (a
    :class:`pipeline.config.params.Config`): the predictions in ``predict.out`` with the prepared labels,
    and the value of each in the ``by`` column of ``index.csv`` (``group``: its experiment;
    ``source``: its labelled source), None without that column or with ``by`` None. Images that a
    routed network of the model folder predicted (their file's ``network``) are left out: their
    labels take that network's own thresholds, not params.yaml's (:mod:`pipeline.stages.postprocess`).

    Raises
    ------
    NucleiError
        A validation image without a prediction.
    """
    from pipeline.data.folds import validation_index
    from pipeline.data.predictions import read_prediction
    from pipeline.files.io import load_npz

    pred_dir, prepared = Path(config.predict.out), Path(config.data.prepared)
    samples, index, kept = [], validation_index(config.data), []
    for image_id in index["id"]:
        file = pred_dir / f"{image_id}.npz"
        if not file.is_file():
            raise NucleiError(f"{file}: no such file (run `nuclei predict` first)")
        p = read_prediction(file)
        kept.append(p.network == MAIN)
        if kept[-1]:
            samples.append((p.probs, p.head, load_npz(prepared / f"{image_id}.npz")["labels"], p.scale, p.image_type))
    if not all(kept):
        print(f"tune: {len(kept) - sum(kept)} of {len(kept)} images predicted by a routed network left out "
              "(they take its own thresholds)")
    return samples, (index[by][kept].tolist() if by is not None and by in index.columns else None)


def pooled_samples(configs, by: str | None = "group") -> tuple[list[tuple], list | None]:
    """:func:`validation_samples` of several configurations (the folds of a cross-validation)
    together; the groups (``by`` column) are None unless every configuration has them."""
    samples, groups = [], []
    for config in configs:
        fold_samples, fold_groups = validation_samples(config, by)
        samples += fold_samples
        groups = None if fold_groups is None or groups is None else groups + fold_groups
    return samples, groups


def main(args: argparse.Namespace) -> int:
    """``nuclei tune``: print the grid, write the best post-processing thresholds."""
    from pipeline.files.io import write_text

    config = load_config(args.params)
    current = config.postprocess.thresholds()
    column = BALANCE_COLUMNS[args.balance]
    samples, groups = pooled_samples([config, *map(load_config, args.also)], column)
    if column is not None and groups is None:
        print(f"index.csv has no '{column}' column (re-run `nuclei prepare`): balancing over images")
    objective = "group_score" if groups is not None else "dsb_score"
    what = (f"mean over {len(set(groups))} {args.balance}s" if groups is not None else "mean over images")
    grid = {"marker_threshold": args.marker, "mask_threshold": args.mask, "flood": args.flood,
            "min_relative_size": args.relative,
            "object_threshold": args.object or [current["object_threshold"]],
            "stained_object_threshold": args.stained_object or [current["stained_object_threshold"]],
            "stained_mask_threshold": args.stained_mask or [current["stained_mask_threshold"]],
            "dense_mask_threshold": args.dense_mask or [current["dense_mask_threshold"]]}
    fixed = {k: v for k, v in current.items() if k not in grid}
    table = grid_search(samples, grid, fixed, groups)
    print(table.head(args.top).to_string(index=False, float_format=lambda x: f"{x:.4f}"))
    best, scores = best_setting(table)
    now = grid_search(samples, {}, current, groups).iloc[0]
    if float(now[objective]) >= scores[objective]:  # no improvement: keep what is there
        best, scores = {k: current[k] for k in grid}, {k: float(now[k]) for k in scores}
        print("the current settings score as well as the best of the grid; keeping them")
    print(f"best {best} -> validation DSB2018 score {scores[objective]:.4f} ({what}; current settings "
          f"{float(now[objective]):.4f}; mean over {len(samples)} images {scores['dsb_score']:.4f})")
    out = Path(config.evaluate.out) / "tuned_postprocess.yaml"
    write_text(out, yaml.safe_dump({"postprocess": best, "objective": what, **scores, "n_images": len(samples)},
                                   sort_keys=False))
    print(f"written to {out}")
    if args.write:
        write_params(args.write, best)
        print(f"updated postprocess in {args.write}")
    return 0
