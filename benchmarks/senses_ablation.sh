#!/bin/bash
# Ablation of the senses: each variant meta-trained 200 steps, then the learning experiment.
cd "$(dirname "$0")/.."
for v in "act" "act,error,loss" "act,delta" "act,hebb,delta" "act,hebb,error,delta,loss"; do
  name=$(echo $v | tr ',' '_')
  python -m gnca experiment learning --config configs/digits_senses.yaml --set train.steps=200 "rule.senses=[$v]" \
     --num 50 --horizon-mult 2 --out results/ablation/$name --threads 1 --no-progress > results/ablation_$name.log 2>&1
done
