#!/usr/bin/env bash
# On a lent GPU machine (docs/pipeline.md, "Training on a GPU machine without ../shared"): install
# the carried wheels (into carry/site, which stays on the machine between calls), unpack the carried
# parts, build the targets, then train every PARAMS side by side (their data loaders share the cores:
# give each train.workers of about cores / runs - 1), each for at most TRAIN_S seconds. Each run's
# model directory comes back as $OUT/<name>/{weights.pt,config.yaml} (<name>: the PARAMS file's
# stem), its log as $OUT/<name>.log; weights over 15 MiB (a w32 network) as pieces:
# cat $OUT/<name>/weights.pt.part-* > weights.pt. The working tree and what a call carries share
# 64 MiB, so the wheels and the parts can come in earlier calls on the warm machine, each with
# SETUP_ONLY=1 (install and unpack, no training); the last call trains.
# Usage: [SETUP_ONLY=1] scripts/gpu_train.sh PARAMS [PARAMS ...]   (TRAIN_S=480, PY=python3; OUT is set there)
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1
PY=${PY:-python3}
OUT=${OUT:?OUT: the folder whose files come back}
T0=$(date +%s)
shopt -s nullglob
if compgen -G "carry/wheels/*.whl" > /dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target carry/site carry/wheels/*.whl || exit 1
fi
if [ -d carry/site ]; then export PYTHONPATH=$PWD/carry/site${PYTHONPATH:+:$PYTHONPATH}; fi
# every PARAMS reads the same data.prepared (the first's), each builds the targets of its sources
prepared=$($PY -m scripts.param_value "$1" data.prepared) || exit 1
{
  nvidia-smi -L; nproc
  for part in carry/prepared*.tar; do $PY -m pipeline pack unpack "$part" "$prepared" || exit 1; done
  if [ -z "${SETUP_ONLY:-}" ]; then
    for params in "$@"; do $PY -m pipeline targets --params "$params" --workers "$(nproc)" || exit 1; done
  fi
  echo "setup $(( $(date +%s) - T0 )) s"
} > "$OUT/setup.log" 2>&1 || { cat "$OUT/setup.log"; exit 1; }
tail -2 "$OUT/setup.log"
if [ -n "${SETUP_ONLY:-}" ]; then exit 0; fi
for params in "$@"; do
  timeout "${TRAIN_S:-480}" $PY -m pipeline train --params "$params" > "$OUT/$(basename "${params%.*}").log" 2>&1 &
done
wait
for params in "$@"; do
  name=$(basename "${params%.*}")
  model=$($PY -m scripts.param_value "$params" train.out)/model
  tail -2 "$OUT/$name.log"
  if [ -f "$model/weights.pt" ]; then
    mkdir -p "$OUT/$name" && cp "$model/config.yaml" "$OUT/$name/"
    if [ "$(stat -c %s "$model/weights.pt")" -le $((15 * 1024 * 1024)) ]; then cp "$model/weights.pt" "$OUT/$name/"
    else split -b 15M "$model/weights.pt" "$OUT/$name/weights.pt.part-"; fi  # a file comes back only under 16 MiB
  fi
done
echo "total $(( $(date +%s) - T0 )) s"
