#!/usr/bin/env bash
# Check gnca on one CUDA GPU, then run every benchmark section there, in one go (about 7 minutes).
#
#   bash benchmarks/gpu.sh [OUT_DIR] [extra benchmarks/run.py options]
#
# First the device tests, `GNCA_TEST_DEVICE=cuda python -m pytest -m device -q` (the core
# computations on the GPU against the CPU and loop references; they need pytest and
# hypothesis, and are reported as not run without them), written to OUT_DIR/tests.txt with
# the GPU's name; then the benchmarks, whatever the tests said.
#
# OUT_DIR defaults to $OUT, else results/gpu. Writes OUT_DIR/results.md (tables) and
# OUT_DIR/results.json (everything, with the GPU name), rewritten after every section, plus
# OUT_DIR/log.txt and OUT_DIR/env.txt. Needs only torch and torch-geometric (gnca is imported
# from this checkout; scikit-learn/pyyaml are needed for the grow and memory sections, which
# say so and are skipped without them). Nothing is downloaded. MNIST is used when its IDX
# files are found ($GNCA_DATA or ../shared/data/mnist), otherwise that part is skipped.
# The benchmarks are limited to BUDGET seconds (default 330) plus a hard timeout, the tests to
# TEST_TIMEOUT seconds (default 240); DEVICE=cpu runs the same script on the CPU (to test it).
# Exit status: the benchmarks', or 1 when they passed but the device tests failed.
set -u
cd "$(dirname "$0")/.."
OUT_DIR="${1:-${OUT:-results/gpu}}"
shift || true
BUDGET="${BUDGET:-330}"
TEST_TIMEOUT="${TEST_TIMEOUT:-240}"
DEV="${DEVICE:-cuda}"
mkdir -p "$OUT_DIR"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

# 1. the device tests, first
{
  echo "device tests: GNCA_TEST_DEVICE=$DEV python -m pytest -m device -q ($(date -u))"
  gpu_name="$(nvidia-smi --query-gpu=name --format=csv,noheader 2>/dev/null | head -n 1)"
  echo "gpu (nvidia-smi): ${gpu_name:-none found}"
  python -c "import torch; print('torch', torch.__version__, 'device name:', torch.cuda.get_device_name() if torch.cuda.is_available() else 'cpu (no CUDA)')" 2>&1
} > "$OUT_DIR/tests.txt"
if python -c "import pytest, hypothesis" > /dev/null 2>&1; then
  GNCA_TEST_DEVICE="$DEV" timeout -k 10 "$TEST_TIMEOUT" python -m pytest -m device -q \
    -p no:cacheprovider >> "$OUT_DIR/tests.txt" 2>&1
  test_rc=$?
  echo "device tests exit status $test_rc" >> "$OUT_DIR/tests.txt"
else
  test_rc=0
  echo "device tests NOT RUN: pytest and hypothesis are needed (pip install pytest hypothesis)" \
    >> "$OUT_DIR/tests.txt"
fi
cat "$OUT_DIR/tests.txt"

# 2. the benchmarks
{
  date -u
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 || true
  python - <<'PY'
import importlib
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("gpu", torch.cuda.get_device_name())
for m in ("torch_geometric", "numpy", "sklearn", "yaml", "tqdm", "triton", "pytest", "hypothesis"):
    try:
        print(m, getattr(importlib.import_module(m), "__version__", "?"))
    except Exception as err:  # report what is missing
        print(m, "MISSING", type(err).__name__)
PY
} > "$OUT_DIR/env.txt" 2>&1
cat "$OUT_DIR/env.txt"
timeout -k 10 $((BUDGET + 90)) python benchmarks/run.py --device "$DEV" --threads 4 \
  --budget "$BUDGET" --out "$OUT_DIR" "$@" 2>&1 | tee "$OUT_DIR/log.txt"
rc=${PIPESTATUS[0]}
echo "device tests exit status $test_rc ($OUT_DIR/tests.txt); benchmarks/run.py exit status $rc; tables in $OUT_DIR/results.md"
if [ "$rc" -eq 0 ] && [ "$test_rc" -ne 0 ]; then
  rc=1
fi
exit "$rc"
