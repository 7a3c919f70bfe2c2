"""Write the forgetting guard that ships with the package (``pipeline/shipped/guard/``).

    python -m scripts.make_guard [STAGE1_TRAIN]

From DSB2018 ``stage1_train`` (CC0; default ``../shared/dsb2018/stage1_train``) it takes the ids
:func:`pipeline.training.guard.guard_ids` picks there: 8 images whose crops ``nuclei finetune``
mixes into its training (``mix/``) and 24 others it scores to measure forgetting (``check/``),
each in the folder layout (``images/<id>.png`` RGB, ``labels/<id>.tif`` uint16 instance labels).
So a fine-tune with the shipped guard sees the same images as one given the whole training set.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from pipeline.data.kaggle import read_kaggle_sample
from pipeline.files.io import write_labels, write_png
from pipeline.training.guard import guard_ids

ROOT = Path(__file__).resolve().parents[1]

OUT = ROOT / "pipeline" / "shipped" / "guard"
README = """# The forgetting guard of `nuclei finetune`

32 images of the 2018 Data Science Bowl's `stage1_train` (Broad Bioimage Benchmark Collection,
BBBC038v1; Caicedo et al., *Nature Methods* 16, 1247-1253, 2019), released under CC0, with their
instance labels (the union of the competition's masks, a smaller nucleus keeping an overlap):

- `mix/`: 8 images whose crops are mixed into every fine-tuning run (a fifth of the draws);
- `check/`: 24 others, never trained on, scored at every checkpoint: the steps and thresholds
  chosen may not cost more than `--max-forgetting` of the base model's score on them.

Written by `python -m scripts.make_guard` (the ids `pipeline.training.guard.guard_ids` picks in
the whole `stage1_train`). Layout: `images/<id>.png` (RGB), `labels/<id>.tif` (uint16).
"""


def main() -> int:
    root = Path(sys.argv[1] if len(sys.argv) > 1 else ROOT.parent / "shared" / "dsb2018" / "stage1_train")
    if OUT.exists():
        shutil.rmtree(OUT)
    for part, check in (("mix", False), ("check", True)):
        for image_id in guard_ids(root, check=check):
            image, labels = read_kaggle_sample(root / image_id)
            write_png(OUT / part / "images" / f"{image_id}.png", image)
            write_labels(OUT / part / "labels" / f"{image_id}.tif", labels)
    (OUT / "README.md").write_text(README)
    size = sum(f.stat().st_size for f in OUT.rglob("*") if f.is_file())
    print(f"{OUT}: {size / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    from pipeline.errors import run_main

    raise SystemExit(run_main(main))
