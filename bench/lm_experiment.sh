#!/bin/bash
# The language-modelling experiment of docs/MODELS.md: a Transformer, Gated DeltaNet and the 3:1
# hybrid (GGGA) at equal width, depth and (within 0.5%) parameters, trained on the same bytes of
# the fortunes corpus with the same options, then validation bits per byte, training tokens/s
# and decode tokens/s at 256 and 4096 tokens of context.
#   bash bench/lm_experiment.sh [STEPS] [OUT_DIR]     (default 480 steps of 16 x 256 bytes: each
#   model 11.5-12.5 min on the 2-core machine, inside the 15-minute budget)
set -euo pipefail
STEPS=${1:-480}
OUT=${2:-deltanet-lm}
TOOL=${TOOL:-./build/deltanet}
COMMON="--layers 4 --width 256 --mlp 704 --heads 2 --head-dim 128 --batch 16 --seq 256 \
  --steps $STEPS --warmup 30 --lr 3e-3 --eval-every 40 --eval-batches 16 --seed 1 --quiet"
mkdir -p "$OUT"
for P in A G GGGA; do
  echo "== $P: training $STEPS steps" >&2
  $TOOL train --pattern $P $COMMON --out "$OUT/$P"
  tail -1 "$OUT/$P/log.jsonl"
done
echo "== decode tokens/s against context (random weights; speed does not depend on them)" >&2
$TOOL bench model --width 256 --layers 4 --batch 16 --seq 256 --reps 1 --patterns A,G,GGGA
