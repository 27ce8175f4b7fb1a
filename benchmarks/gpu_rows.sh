#!/usr/bin/env bash
# The benchmark's accelerator rows: MEND's meta-training step at gpt2-xl shape in float32 and in
# bfloat16, each with its FLOP utilisation against the device's datasheet peak (bench_mend.py).
#
#   bash benchmarks/gpu_rows.sh [OUT_DIR]     # tables also saved as OUT_DIR/bench_DTYPE.md (benchmarks/out)
#   MODELS=gpt2-xl ALGS=mend,enn,efk STEPS=5 PYTHON=python3 bash benchmarks/gpu_rows.sh
set -euo pipefail
out=${1:-$(dirname "$0")/out}
mkdir -p "$out"
out=$(cd "$out" && pwd)  # a relative OUT_DIR is the caller's
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}  # mend_jax from this checkout, installed or not
python=${PYTHON:-python3}
"$python" -c 'import jax, mend_jax; print("JAX", jax.__version__, jax.devices(), "mend_jax:", mend_jax.__file__)'
for dtype in float32 bfloat16; do
  "$python" benchmarks/bench_mend.py --models "${MODELS:-gpt2-xl}" --algs "${ALGS:-mend}" --dtype "$dtype" \
    --steps "${STEPS:-5}" --rounds 2 | tee "$out/bench_$dtype.md"
done
