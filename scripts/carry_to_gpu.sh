#!/usr/bin/env bash
# Fill carry/ (ignored by git) for training on a GPU machine that has PyTorch but neither ../shared
# nor albumentations (docs/pipeline.md, "Training on a GPU machine"):
#   carry/prepared.<k>-of-<n>.tar  the prepared training set in parts of whole samples, each small
#                                  enough to travel beside the repository (64 MiB in all per call);
#   carry/wheels/                  albumentations and the packages it needs, for Python 3.12 on
#                                  x86-64, at the versions of this .venv.
# Usage: scripts/carry_to_gpu.sh [PREPARED [PACK OPTIONS]] (default data/generalist/prepared; options
# of `nuclei pack pack`, such as --sources NAME ... --leave-out-fold 0); PART_MIB=25;
# JPEG=95 stores the images as JPEG of that quality (the eight sources, folds 1-4: 2 parts of 29 MiB
# instead of 6 lossless ones; the labels stay lossless); JPEG= (empty) keeps them lossless.
set -euo pipefail
cd "$(dirname "$0")/.."
PREPARED=${1:-data/generalist/prepared}
shift || true
PY=${PY:-.venv/bin/python}
rm -rf carry/wheels carry/prepared*.tar
mkdir -p carry/wheels
JPEG=${JPEG-95}
"$PY" -m pipeline pack pack "$PREPARED" carry/prepared.tar --part-mib "${PART_MIB:-25}" ${JPEG:+--jpeg "$JPEG"} "$@"
pins=$("$PY" - <<'EOF'
from importlib.metadata import version
names = ["albumentations", "albucore", "pydantic", "pydantic-core", "annotated-types", "typing-inspection",
         "simsimd", "stringzilla"]
print(" ".join(f"{n}=={version(n)}" for n in names))
EOF
)
# shellcheck disable=SC2086
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d carry/wheels $pins
du -sh carry/wheels carry/prepared*.tar
