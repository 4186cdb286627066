#!/usr/bin/env bash
# The H100 rows of BUILD.md's performance table ("Performance"), as one script.
#
#   bash benchmarks/h100.sh [OUT.jsonl] [CONFIG ...]
#
# Runs, under KERAS_BACKEND=jax with a persistent JAX compilation cache, the full-step benchmark
# with the per-part breakdown (--parts) in float32 (TF32 matmuls, JAX's default on the GPU) and
# in bfloat16 (--mixed_precision) for each config (default: configs/cub.cfg configs/cub_dmgan.cfg,
# batch 20), then the input-pipeline benchmark where TensorFlow is installed, appending one JSON
# line each to OUT (default bench_h100.jsonl), and prints the markdown rows (--table).
#
# Environment: PYTHON (default python), STEPS (default 50), EXTRA (more bench flags),
# JAX_COMPILATION_CACHE_DIR (default ~/.cache/jax; a second run of a configuration reads its
# compiled step from there: compare compile_s), DRY_RUN=1 (check every command's flags with
# --dry_run: nothing is compiled, run or appended).
# Each bench command takes the step's compile time (target <= 2 min per configuration) plus the
# parts' compiles; on a session with a per-command limit run one config at a time:
#   bash benchmarks/h100.sh bench_h100.jsonl configs/cub.cfg
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-bench_h100.jsonl}
shift || true
CONFIGS=("$@")
[ ${#CONFIGS[@]} -eq 0 ] && CONFIGS=(configs/cub.cfg configs/cub_dmgan.cfg)
PY=${PYTHON:-python}
STEPS=${STEPS:-50}
export KERAS_BACKEND=jax
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-$HOME/.cache/jax}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=${JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS:-1}
mkdir -p "$JAX_COMPILATION_CACHE_DIR"
CHECK=()
[ "${DRY_RUN:-0}" = 1 ] && CHECK=(--dry_run)

run() {
  echo "+ $*" >&2
  "$PY" -m msmt_tf.bench "$@" ${EXTRA:-} --out "$OUT" ${CHECK[@]+"${CHECK[@]}"}
}

if [ "${DRY_RUN:-0}" != 1 ]; then
  "$PY" - <<'PYEOF' >&2
import jax
print("jax", jax.__version__, jax.devices())
PYEOF
fi
for cfg in "${CONFIGS[@]}"; do
  run --flagfile="$cfg" --steps "$STEPS" --parts
  run --flagfile="$cfg" --steps "$STEPS" --parts --mixed_precision
done
# The input pipeline at the paper's batch (tf.data; needs TensorFlow, absent on some GPU hosts).
if "$PY" -c "import tensorflow" 2>/dev/null; then
  run --pipeline --flagfile=configs/cub.cfg
else
  echo "tensorflow not importable: input-pipeline benchmark skipped" >&2
fi
[ "${DRY_RUN:-0}" = 1 ] || "$PY" -m msmt_tf.bench --table "$OUT"
