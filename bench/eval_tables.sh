#!/usr/bin/env bash
# The miniature Table 2, Table 1 ablation and fidelity-diversity sweep of docs/benchmarks.md, in
# one resumable run (every step resumes or skips what is done; rerun after a kill).
#   bash bench/eval_tables.sh [OUT=outputs/eval-tables] [STEPS=150]
# Same budget for every ControlNet: STEPS training steps, seed 0, the shipped foundation model,
# the same 96-scene city. Judges train once and score every row.
set -euo pipefail
OUT=${OUT:-outputs/eval-tables}
STEPS=${STEPS:-150}
PY=${PY:-.venv/bin/python}
CITY=$OUT/city
BASE=models/procedural-base-v1
JUDGES=(--segmenter "$OUT/judges/segmenter" --depth-judge "$OUT/judges/depth" --weather-judge "$OUT/judges/weather")
THREADS=${THREADS:-2}  # torch threads; 1 when the machine is shared (2 threads on a busy core spin)
SAMPLING=(--n 8 --seeds 2 --weather-refs 2 --sample-steps 10 --threads "$THREADS")
export HF_HUB_OFFLINE=1 RAY_USAGE_STATS_ENABLED=0 TQDM_MININTERVAL=30

test -d "$CITY/cityscapes" || $PY -m factory.data.procedural --out "$CITY" --n-train 96 --n-val 24 --n-acdc 16 --seed 0
test -f "$OUT/judges/segmenter.safetensors" || $PY -m factory.quality.segmenter --out "$OUT/judges/segmenter" steps=300
test -f "$OUT/judges/depth.safetensors" || $PY -m factory.eval.depth --out "$OUT/judges/depth" steps=200
test -f "$OUT/judges/weather.safetensors" || $PY -m factory.eval.controllability --out "$OUT/judges/weather" steps=200

# Sweep (axis A: N and the Table 1 ablation's backbones; axis B: scale x guidance end on N=20)
$PY -m factory.eval.sweep --data "$CITY/cityscapes" --out "$OUT/sweep" --base-model $BASE \
  --components 4 10 20 --backbones sd-unet vae-latent sd-unet-random \
  --scales 0.25 0.5 1.0 --guidance-ends 0.5 1.0 --steps "$STEPS" --pca-samples 40000 \
  "${SAMPLING[@]}" "${JUDGES[@]}"

# Table 2's baselines at the same budget, then the comparison (the layout row: the sweep's N=20)
for kind in canny disparity semseg; do
  $PY -m factory.train.controlnet --config configs/train/procedural_controlnet_$kind.yaml \
    out="$OUT/controlnet/$kind" base_model=$BASE data.root="$CITY/cityscapes" steps="$STEPS" \
    validation.every="$STEPS" checkpoint_every=50 seed=0 threads="$THREADS"
done
$PY -m factory.eval.compare --data "$CITY/cityscapes" --out "$OUT/compare" \
  --controlnet layout="$OUT/sweep/controlnets/sd-unet-n20" --controlnet canny="$OUT/controlnet/canny" \
  --controlnet depth="$OUT/controlnet/disparity" --controlnet semseg="$OUT/controlnet/semseg" \
  --n 8 --seeds 2 --weather-refs 2 --steps 10 --threads "$THREADS" "${JUDGES[@]}"
