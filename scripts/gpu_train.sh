#!/usr/bin/env bash
# On a lent GPU machine (docs/pipeline.md, "Training on a GPU machine without ../shared"), in one
# call: install the carried wheels, unpack the carried parts, build the targets, then train every
# PARAMS side by side (their data loaders share the cores: give each train.workers of about
# cores / runs - 1), each for at most TRAIN_S seconds. Each run's model directory comes back as
# $OUT/<name>/{weights.pt,config.yaml} (<name>: the PARAMS file's stem), its log as $OUT/<name>.log.
# Usage: scripts/gpu_train.sh PARAMS [PARAMS ...]   (TRAIN_S=480, PY=python3; OUT is set there)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:?OUT: the folder whose files come back}
T0=$(date +%s)
if compgen -G "carry/wheels/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site carry/wheels/*.whl || exit 1
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
# every PARAMS reads the same data.prepared (the first's), each builds the targets of its sources
prepared=$($PY -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['data']['prepared'])" "$1") || exit 1
{
  nvidia-smi -L; nproc
  for part in carry/prepared*.tar; do $PY -m pipeline pack unpack "$part" "$prepared" || exit 1; done
  for params in "$@"; do $PY -m pipeline targets --params "$params" --workers "$(nproc)" || exit 1; done
  echo "setup $(( $(date +%s) - T0 )) s"
} > "$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
tail -2 "$OUT/setup.log"
for params in "$@"; do
  timeout "${TRAIN_S:-480}" $PY -m pipeline train --params "$params" > "$OUT/$(basename "${params%.*}").log" 2>&1 &
done
wait
for params in "$@"; do
  name=$(basename "${params%.*}")
  model=$($PY -c "import sys, yaml; print(yaml.safe_load(open(sys.argv[1]))['train']['out'])" "$params")/model
  tail -2 "$OUT/$name.log"
  if [ -f "$model/weights.pt" ]; then mkdir -p "$OUT/$name" && cp "$model/weights.pt" "$model/config.yaml" "$OUT/$name/"; fi
done
echo "total $(( $(date +%s) - T0 )) s"
