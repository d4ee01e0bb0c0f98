#!/usr/bin/env bash
# Run every gnca benchmark section on one CUDA GPU in one go (about 6 minutes).
#
#   bash benchmarks/gpu.sh [OUT_DIR] [extra benchmarks/run.py options]
#
# OUT_DIR defaults to $OUT, else results/gpu. Writes OUT_DIR/results.md (tables) and
# OUT_DIR/results.json (everything, with the GPU name), rewritten after every section, plus
# OUT_DIR/log.txt and OUT_DIR/env.txt. Needs only torch and torch-geometric (gnca is imported
# from this checkout; scikit-learn/pyyaml are needed for the grow and memory sections, which
# say so and are skipped without them). Nothing is downloaded. MNIST is used when its IDX
# files are found ($GNCA_DATA or ../shared/data/mnist), otherwise that part is skipped.
# The whole run is limited to BUDGET seconds (default 330) plus a hard timeout; DEVICE=cpu
# runs the same script on the CPU (to test it).
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-results/gpu}}"
shift || true
BUDGET="${BUDGET:-330}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  python - <<'PY'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name())
for m in ("torch_geometric", "numpy", "sklearn", "yaml", "tqdm", "triton"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as err:  # report what is missing
        print(m, "MISSING", type(err).__name__)
PY
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"
timeout -k 10 $((BUDGET + 90)) python benchmarks/run.py --device "${DEVICE:-cuda}" --threads 4 \
  --budget "$BUDGET" --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/log.txt"
rc=${PIPESTATUS[0]}
echo "benchmarks/run.py exit status $rc; tables in $OUT_DIR/results.md"
exit "$rc"
