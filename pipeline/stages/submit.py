"""``nuclei submit``: a Kaggle test folder → a validated run-length-encoded submission.

Every image of ``TEST_ROOT/<id>/images/<id>.png`` is segmented by the model's
:class:`pipeline.model.segmenter.Segmenter` (normalisation, nucleus-size estimate, network, watershed
with the thresholds stored in the model directory) and run-length encoded (:mod:`pipeline.data.rle`).
The table is validated and written atomically;
an image without nuclei gets one row with an empty ``EncodedPixels``. A Kaggle submission must
contain every image, so every image is read once before any prediction: an unreadable one stops
the command with one line per bad file and nothing is written. The output location is checked
before any work too. Exit status: 0 written, 1 unreadable images or a write failure, 2 usage
error (missing test folder, model, unwritable output).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd

from pipeline.config.params import TTA_MODES, load_params
from pipeline.errors import NucleiError
from pipeline.shipped import DEFAULT_MODEL


def submission_for(root: str | Path, segmenter, check: bool = True
                   ) -> tuple[pd.DataFrame, dict[str, tuple[int, int]]]:
    """Segment and encode every image of a Kaggle test root.

    Parameters
    ----------
    root : str or Path
        Kaggle test layout ``<id>/images/<id>.png``.
    segmenter : pipeline.model.segmenter.Segmenter
        Normalisation, nucleus-size estimate, network and post-processing with the model's own
        thresholds.
    check : bool
        Read every image before segmenting any (False: the caller did).

    Returns
    -------
    submission : DataFrame
        ``ImageId, EncodedPixels``, one row per nucleus, ids in sorted order.
    shapes : dict
        ImageId → (H, W).

    Raises
    ------
    NucleiError
        No samples in ``root``, or images that cannot be read (:func:`unreadable_images`, checked
        before any prediction).
    """
    from pipeline.data.kaggle import list_kaggle_ids, read_kaggle_sample
    from pipeline.data.rle import encode_labels, submission_frame
    from pipeline.progress import progress

    root = Path(root)
    ids = list_kaggle_ids(root)
    problems = unreadable_images(root, ids) if check else []
    if problems:
        more = f" (and {len(problems) - 1} more unreadable images)" if len(problems) > 1 else ""
        raise NucleiError(problems[0] + more)
    rles: dict[str, list[str]] = {}
    shapes: dict[str, tuple[int, int]] = {}
    for sample_id in progress(ids, desc="submit"):
        image = read_kaggle_sample(root / sample_id, masks=False)[0]
        labels = segmenter.segment(image).labels
        rles[sample_id] = encode_labels(labels)
        shapes[sample_id] = labels.shape
    return submission_frame(rles), shapes


def unreadable_images(root: Path, ids: list[str]) -> list[str]:
    """Read every image of a Kaggle test root once; one error line per image that fails."""
    from pipeline.data.kaggle import read_kaggle_sample
    from pipeline.progress import progress

    problems = []
    for sample_id in progress(ids, desc="checking", total=len(ids)):
        try:
            read_kaggle_sample(root / sample_id, masks=False)
        except NucleiError as exc:
            problems.append(str(exc))
    return problems


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``nuclei submit``."""
    parser.add_argument("test_root", metavar="TEST_ROOT", help="Kaggle test folder (<id>/images/<id>.png)")
    parser.add_argument("-o", "--output", default=None, help="submission CSV (default: submit.out of params)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="model directory (default: 'default', the shipped model)")
    parser.add_argument("--device", default=None, help="auto | cpu | cuda (default: predict.device or auto)")
    parser.add_argument("--tta", choices=TTA_MODES, default=None,
                        help="test-time augmentation (default: predict.tta of params)")
    parser.add_argument("--params", default=None, help="parameters file (default: params.yaml)")


def main(args: argparse.Namespace) -> int:
    """``nuclei submit TEST_ROOT -o submission.csv [--model DIR]``."""
    from pipeline.data.kaggle import list_kaggle_ids
    from pipeline.data.rle import write_submission
    from pipeline.files.io import check_writable_file
    from pipeline.model.predictor import predictor_options
    from pipeline.model.segmenter import Segmenter

    try:  # usage errors, before any work
        params = load_params(args.params)
        predict_cfg = params.get("predict") or {}
        output = check_writable_file(args.output or (params.get("submit") or {}).get("out", "submission.csv"))
        root = Path(args.test_root)
        ids = list_kaggle_ids(root)
        options = predictor_options(predict_cfg)
        if args.tta:
            options["tta"] = args.tta
        segmenter = Segmenter.from_model_dir(args.model, device=args.device or predict_cfg.get("device", "auto"),
                                             **options)
    except NucleiError as exc:
        print(f"nuclei: error: {exc}", file=sys.stderr)
        return 2
    problems = unreadable_images(root, ids)
    for problem in problems:
        print(f"nuclei: error: {problem}", file=sys.stderr)
    if problems:
        print(f"nuclei: error: {len(problems)} unreadable image(s); nothing written", file=sys.stderr)
        return 1
    df, shapes = submission_for(root, segmenter, check=False)
    write_submission(df, output, shapes)
    n_nuclei = int((df["EncodedPixels"] != "").sum())
    print(f"submission: {len(shapes)} images, {n_nuclei} nuclei -> {output}")
    return 0
