"""Write the images of one image type of a prepared source, out of its held-out fold, as a new source.

    python -m scripts.type_subset PREPARED -o OUT [--image-type histology] [--val-fold 0]

Reads ``PREPARED/index.csv`` (a source prepared by ``nuclei prepare``: ``data.prepared/<source>``, or
the ``--out`` of ``nuclei prepare --root``), keeps the images of ``--image-type``
whose experiment-grouped fold (``group_fold``) is not ``--val-fold``, and writes each as
``OUT/images/<id>.png`` (RGB, uint8) and ``OUT/labels/<id>.tif`` (its instance labels): a
``layout: folder`` source for ``data.sources``. The H&E variant's second stage trains on
DSB2018's stained images this way (``pipeline/shipped/he/train_params.yaml``) without ever seeing
DSB2018's grouped fold 0. Files already written are kept (the run can be repeated).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline.arguments import number
from pipeline.data.folds import read_index
from pipeline.data.pack import INDEX
from pipeline.errors import NucleiError
from pipeline.files.io import load_npz, write_labels, write_png
from pipeline.method.image_types import IMAGE_TYPES
from pipeline.progress import progress


def type_subset(prepared: Path, out: Path, image_type: str, val_fold: int) -> int:
    """Write the subset (see the module's docstring); returns the number of images in it."""
    index_path = prepared / INDEX
    if not index_path.is_file():  # one source's folder, not a folder of sources (read_index would read it whole)
        raise NucleiError(f"{index_path}: no such file (a source prepared by `nuclei prepare`)")
    index = read_index(prepared, columns=("id", "image_type", "group_fold"))  # ids as text, columns checked
    chosen = index[(index["image_type"] == image_type) & (index["group_fold"] != val_fold)]
    if chosen.empty:
        raise NucleiError(f"{index_path}: no {image_type} image outside grouped fold {val_fold}")
    for sample_id in progress(chosen["id"], desc=f"{prepared.name} {image_type}"):
        image_file, labels_file = out / "images" / f"{sample_id}.png", out / "labels" / f"{sample_id}.tif"
        if image_file.is_file() and labels_file.is_file():
            continue
        arrays = load_npz(prepared / f"{sample_id}.npz", ("image", "labels"))
        write_png(image_file, arrays["image"])
        write_labels(labels_file, arrays["labels"])
    return len(chosen)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("prepared", type=Path, help="a prepared source's folder (its index.csv and .npz files)")
    parser.add_argument("-o", "--out", type=Path, required=True, help="the new source's folder")
    parser.add_argument("--image-type", default="histology", choices=IMAGE_TYPES)
    parser.add_argument("--val-fold", type=number(at_least=0, integer=True), default=0,
                        help="the grouped fold left out (default 0)")
    args = parser.parse_args(argv)
    try:
        n = type_subset(args.prepared, args.out, args.image_type, args.val_fold)
    except NucleiError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{n} {args.image_type} images of {args.prepared} outside grouped fold {args.val_fold} -> {args.out}")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
