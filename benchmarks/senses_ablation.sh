#!/bin/bash
# Ablation of the senses (docs/results.md, section 4): each variant of configs/digits_senses.yaml
# meta-trained for 200 steps (pool of 256, 2 fresh), then gnca experiment learning (50 nets,
# grown to 2 K). Usage: bash benchmarks/senses_ablation.sh [variant ...]
cd "$(dirname "$0")/.."
variants=("$@")
[ ${#variants[@]} -eq 0 ] && variants=("act" "act,error,loss" "act,delta" "act,hebb,delta" "act,hebb,error,delta,loss")
for v in "${variants[@]}"; do
  name=$(echo "$v" | tr ',' '_')
  python -m gnca experiment learning --config configs/digits_senses.yaml \
     --set train.steps=200 pool.size=256 pool.fresh=2 "rule.senses=[$v]" \
     --num 50 --horizon-mult 2 --out "results/ablation/$name" --threads 1 --no-progress --retrain \
     > "results/ablation_$name.log" 2>&1
done
