"""Images of one type at other canonical diameters: which size should their nuclei reach the network at?

Every image of ``--image-type`` (default: stained tissue) of the prepared data (``--prepared``;
``--fold K`` keeps one grouped fold, so that a network that never saw it can be scored) is
segmented through :class:`pipeline.model.segmenter.Segmenter` as ``nuclei segment`` runs it, with
the model's canonical diameter for that type (``stained_diameter`` for stained tissue, else
``diameter``) set to each of ``--diameters`` (px at the network's scale), once with the diameter
estimated (by the model as it is, so that only the final pass's scale changes) and once with the
true median diameter given. Printed per setting: DSB2018 score,
AP@0.5, median counting error and median diameter; then the DSB2018 score per experiment
(acquisition group) with the estimate.

    python -m experiments.stained_scale --prepared /path/to/prepared --fold 2 --model MODEL --threads 2
    python -m experiments.stained_scale --image-type fluo-small --diameters 20 16 14 --fold 0 ...
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

from experiments.tint import prepared_images, print_summary, scores
from pipeline.files.io import load_npz
from pipeline.method.image_types import HISTOLOGY, IMAGE_TYPES
from pipeline.method.scale import median_diameter

ROOT = Path(__file__).resolve().parents[1]

#: stained_diameter settings compared (px at the network's scale): the canonical 20, ×1.2, ×1.4.
DIAMETERS = (20.0, 24.0, 28.0)


def add_arguments(parser) -> None:
    parser.add_argument("--image-type", choices=IMAGE_TYPES, default=HISTOLOGY,
                        help="the images compared (default: %(default)s, at the model's stained_diameter)")
    parser.add_argument("--diameters", type=float, nargs="+", default=DIAMETERS,
                        help="canonical diameters compared, px (default: %(default)s)")
    parser.add_argument("--out", type=Path, default=None,
                        help="write every segmentation's scores here (CSV), for paired differences")


def main() -> int:
    args, ids, segmenter = prepared_images(__doc__.splitlines()[0], None, add_arguments)
    if segmenter is None:
        return 0
    key = "stained_diameter" if args.image_type == HISTOLOGY else "diameter"
    model_config = segmenter.config
    rows = []
    t0 = time.perf_counter()
    for image_id in ids:
        data = load_npz(args.prepared / f"{image_id}.npz")
        true_diameter = median_diameter(data["labels"])
        segmenter.config = model_config
        estimate = segmenter.scale_for(segmenter.normalize(data["image"]))[0]
        for canonical in args.diameters:
            segmenter.config = model_config.replace(**{key: canonical})
            for given, estimated in ((estimate, True), (true_diameter, False)):
                result = segmenter.segment(data["image"], diameter=given)
                rows.append({"setting": f"{canonical:g} px, diameter {'estimated' if estimated else 'true'}",
                             "canonical": canonical, "estimated": estimated, "id": image_id,
                             "group": args.group[image_id], **scores(data["labels"], result),
                             "typed_as_asked": result.image_type == args.image_type})
    print_summary(rows, "setting", "typed_as_asked", t0)
    table = pd.DataFrame(rows)
    if args.out:
        table.to_csv(args.out, index=False)
    by_group = table[table.estimated].pivot_table(index="group", columns="canonical", values="dsb_score")
    print(by_group.assign(images=table[table.estimated].groupby("group").id.nunique())
          .to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
