#!/bin/bash
# Meta-train a gnca rule on several GPU nodes under SLURM: one torchrun agent per node, one
# process per GPU, rendezvous on the first node. Submit from the repository root:
#
#   sbatch examples/slurm_train.sh                       # configs/mnist_cpu.yaml, 2 x 4 GPUs
#   CONFIG=configs/iris.yaml SET="train.device=cuda train.batch_size=16 pool.size=256" \
#       sbatch --nodes=1 examples/slurm_train.sh --dist-timeout 600
#
# CONFIG, OUT and SET (the config overrides) come from the environment; extra arguments go to
# `gnca train`. The run directory must be on a filesystem that every node
# sees (rank 0 writes last.pt; every rank reads it on --resume). A requeued or resubmitted job
# continues from the last checkpoint, whatever its number of GPUs, as long as that number divides
# train.batch_size and pool.size (see docs/distributed.md). On SIGTERM (the time limit, scancel,
# preemption) every process finishes its meta-step and rank 0 saves it before the job ends.
#SBATCH --job-name=gnca-train
#SBATCH --nodes=2
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=16
#SBATCH --time=04:00:00
#SBATCH --output=%x-%j.out
#SBATCH --requeue

set -euo pipefail

CONFIG=${CONFIG:-configs/mnist_cpu.yaml}
OUT=${OUT:-runs/${SLURM_JOB_NAME}-${SLURM_JOB_ID}}
GPUS_PER_NODE=${GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-4}}
PORT=${PORT:-29500}
export GNCA_DATA=${GNCA_DATA:-$HOME/data/mnist}     # MNIST IDX files, on every node
SET=${SET:-"train.device=cuda train.batch_size=32 pool.size=256 data.data_dir=$GNCA_DATA"}
HEAD=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
WORLD=$((SLURM_NNODES * GPUS_PER_NODE))

CPUS=${SLURM_CPUS_PER_TASK:-$GPUS_PER_NODE}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-$((CPUS / GPUS_PER_NODE > 0 ? CPUS / GPUS_PER_NODE : 1))}

RESUME=()
if [ -f "$OUT/last.pt" ]; then
    RESUME=(--resume)
fi

echo "gnca: $WORLD processes on $SLURM_NNODES node(s), rendezvous $HEAD:$PORT, run $OUT"

# The global batch is split over all processes: train.batch_size and pool.size must be
# multiples of $WORLD (2 nodes x 4 GPUs: 8).
# shellcheck disable=SC2086  # $SET is a list of KEY=VALUE words
srun --kill-on-bad-exit=1 torchrun \
    --nnodes "$SLURM_NNODES" \
    --nproc-per-node "$GPUS_PER_NODE" \
    --rdzv-backend c10d \
    --rdzv-endpoint "$HEAD:$PORT" \
    --rdzv-id "$SLURM_JOB_ID" \
    -m gnca train --config "$CONFIG" --out "$OUT" --no-progress ${RESUME[@]+"${RESUME[@]}"} \
    "$@" --set $SET
