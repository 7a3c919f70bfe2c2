"""Stained images at other canonical diameters: which size should tissue nuclei reach the network at?

Every stained image of the prepared data (``--prepared``; ``--fold K`` keeps one grouped fold, so
that a network that never saw it can be scored) is segmented through
:class:`pipeline.model.segmenter.Segmenter` as ``nuclei segment`` runs it, with the model's
``stained_diameter`` set to each of ``--diameters`` (px at the network's scale), once with the
diameter estimated and once with the true median diameter given. Printed per setting: DSB2018
score, AP@0.5, median counting error and median diameter; then the DSB2018 score per experiment
(acquisition group) with the estimate.

    python experiments/stained_scale.py --prepared /path/to/prepared --fold 2 --model MODEL --threads 2
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from experiments.tint import prepared_images, print_summary, scores  # noqa: E402
from pipeline.files.io import load_npz  # noqa: E402
from pipeline.method.image_types import HISTOLOGY  # noqa: E402
from pipeline.method.scale import median_diameter  # noqa: E402

#: stained_diameter settings compared (px at the network's scale): the canonical 20, ×1.2, ×1.4.
DIAMETERS = (20.0, 24.0, 28.0)


def main() -> int:
    args, ids, segmenter = prepared_images(__doc__.splitlines()[0], HISTOLOGY)
    if segmenter is None:
        return 0
    rows = []
    t0 = time.perf_counter()
    for image_id in ids:
        data = load_npz(args.prepared / f"{image_id}.npz")
        true_diameter = median_diameter(data["labels"])
        for stained in DIAMETERS:
            segmenter.config = segmenter.config.replace(stained_diameter=stained)
            for given in (None, true_diameter):
                result = segmenter.segment(data["image"], diameter=given)
                rows.append({"setting": f"{stained:g} px, diameter {'true' if given else 'estimated'}",
                             "stained": stained, "estimated": given is None, "id": image_id,
                             "group": args.group[image_id], **scores(data["labels"], result),
                             "typed_stained": result.image_type == HISTOLOGY})
    print_summary(rows, "setting", "typed_stained", t0)
    table = pd.DataFrame(rows)
    by_group = table[table.estimated].pivot_table(index="group", columns="stained", values="dsb")
    print(by_group.assign(images=table[table.estimated].groupby("group").id.nunique())
          .to_string(float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
