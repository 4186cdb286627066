#!/usr/bin/env bash
# The tests that hold numeric bounds (layers against slow references, TensorFlow against JAX,
# replicas against one device, bfloat16 against float32) run under float32 kernels other than
# this CPU's defaults, as a CPU of another kind (the CI machines are AMD EPYC or Intel Xeon)
# would pick other ones:
#   1. oneDNN (TensorFlow) and XLA's CPU code generation (JAX) limited to SSE4 instructions;
#   2. TensorFlow without its oneDNN ops (Eigen's kernels).
# Prints pytest's summary line per variant; exit status 1 when a variant fails. About 20 minutes
# on 2 cores. Usage: bash benchmarks/kernel_variants.sh   (PYTHON=... to choose the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
TESTS=(tests/test_layers.py tests/test_losses.py tests/test_models.py
       tests/test_torchvision_inception.py
       tests/test_distribute_tf.py::test_two_replicas_compute_the_one_device_step
       tests/test_distribute_tf.py::test_two_workers_train_like_one_device
       tests/test_distribute.py::test_one_and_two_devices_compute_the_same_step
       tests/test_train.py::test_mixed_precision_step_matches_float32)
status=0
variant() {
  local name=$1
  shift
  echo "== $name: $*"
  local out rc
  out=$(env "$@" "$PY" -m pytest -q -rfs -n 2 --dist loadfile -p no:cacheprovider \
        "${TESTS[@]}" 2>&1)
  rc=$?
  grep -E "^(FAILED|SKIPPED|ERROR)|passed|failed" <<<"$out"
  [ "$rc" -eq 0 ] || status=1
}
variant "oneDNN and XLA limited to SSE4" ONEDNN_MAX_CPU_ISA=SSE41 XLA_FLAGS=--xla_cpu_max_isa=SSE4_2
variant "TensorFlow without oneDNN (Eigen)" TF_ENABLE_ONEDNN_OPTS=0
exit $status
