#!/usr/bin/env bash
# One sitting on one GPU, as few device minutes as possible: groups of `msmt_tf.bench` runs that
# compile concurrently (XLA's compile and autotuning take 1-2 min per configuration) and are then
# timed one at a time (bench --sync_dir: no timing overlaps another timing or a compile).
#
#   bash benchmarks/gpu_session.sh OUT_DIR
#
# Writes OUT_DIR/results.jsonl (one JSON line per run, appended as each finishes, so a run cut
# short keeps what was measured), OUT_DIR/logs.tgz (each run's log) and OUT_DIR/profile_*.tgz
# (jax.profiler XPlane of one step of the fused float32 / bf16 runs; read them with XProf, e.g.
# `xprof.convert.raw_to_tool_data.xspace_to_tool_data([path], "hlo_stats", {})`).
# Environment: PYTHON (default python3), STEPS (default 30), RUN_GROUPS (default "21 22",
# the next sitting's; an unknown group is refused), CUB_FLAGS / DMGAN_FLAGS / COCO_FLAGS
# (the configs; a CPU rehearsal: "--flagfile=configs/smoke.cfg --vocab_size=50" for each), DRY_RUN=1
# (check every command's flags with bench --dry_run_commands, in one process; nothing is compiled
# or timed).
#
# Group 1, configs/cub.cfg, batch 20, with the per-part breakdown (--parts): float32 (TF32) and
#   bf16, each with the reference UpBlock (upsample then conv3x3, the default) and the fused one.
#   (First sitting, 2026-11-26: 7.5 min for the group; the bf16 reference run ran out of device
#   memory beside the three others, each allocating on demand.)
# Group 2: cub_dmgan.cfg float32 reference and fused; cub.cfg float32 with XLA's NHWC
#   convolution layout forced; coco.cfg float32.
# Groups 3, 4 (second sitting, one run each: cub.cfg bf16 reference with parts, then float32
#   reference, each with a one-step profile) were removed: groups 5 and 6 profile the same.
# Groups 5, 6: cub.cfg float32 / bf16, Keras's batch norm (the baseline, same sitting) beside
#   --batch_norm=fused. Group 7 (3 steps with XLA's HLO dump, for the cuDNN call each convolution
#   became) was removed: the profiles' HLO names the cuDNN call (BUILD.md).
# Third sitting (2026-11-26): groups 8 and 9 capped each process at 30% of the device memory
#   (XLA_PYTHON_CLIENT_MEM_FRACTION=0.3) to compile three at once; the float32 CUB step then ran
#   out of memory (one 10.6 GB allocation), so they were removed; groups 5 and 6 (now with a
#   one-step profile of the reference step) ran instead, 6 cut short by the lease.
# Group 10: the bf16 reference step with parts, alone (its part compiles are long).
# Groups 11 and 12 (removed) timed --conv=gemm (kernel gradients as one matrix product per tap);
#   the fourth sitting (2026-11-26) ran their five main runs as one group (13, removed with
#   them): bf16 72.9 ms against 60.0 for the reference; the float32 gemm runs asked for a 28 GB
#   buffer and ran out of memory beside the others. The option was removed (BUILD.md, "H100,
#   fourth and fifth sittings").
# Group 14 (fifth sitting, 2026-11-27; the defaults were then 'separate' and 'conv'): float32 /
#   bf16, the step with the SDM convs separate and the fuse gates as 1x1 convolutions (the
#   layers as written) beside the merged convs and reduced gates (now the defaults), the latter
#   with a one-step profile (which tells the two changes apart per layer). The bf16 merged run
#   ran out of memory at its first step beside the three others, so bf16 is not yet measured:
#   the next sitting's RUN_GROUPS=15 (group 14's bf16 pair alone). Group 14 was then removed
#   (its float32 pair is measured; group 15 holds its bf16 pair).
# Groups 16 (float32) and 17 (bf16), prepared in the sixth session and run in the sixth H100
#   sitting (2026-11-27, tenth session; BUILD.md "H100, sixth sitting"): the then default step
#   (--sdm_convs=merged) beside --sdm_convs=factored, with a one-step profile of the latter,
#   and bf16 with --batch_norm=fused. Factored won in float32 (92.3 against 95.1 ms) and tied
#   in bf16 (54.7 / 54.5), and is now the default; --batch_norm=fused tied in bf16 (54.0).
#   Group 10 then timed the bf16 step's parts (the per-part bf16 table), its step compile a hit
#   of the persistent cache (12 s against 224 s). Groups 15-20 were removed with them (20 was 16
#   and 17 as one group for an H200; 18 and 19, the refinement parts alone, were not needed).
# Groups 21 and 22 (tenth session), the next sitting's: bench now also times the step as
#   train.py runs it (`ms_per_step_pipelined_*`: the next step dispatched before the last is
#   waited for) and the host's part of a call (`ms_per_call_median`). 21: the float32 default
#   step alone, so its compile is timed alone (the 2-minute target; never timed alone); run
#   it without JAX_COMPILATION_CACHE_DIR or with an empty one. 22: bf16 default,
#   cub_dmgan.cfg default, and float32 and bf16 --fuse_gate=matvec (twentieth session: the fuse
#   gates' kernel gradients as matrix-vector products, the largest single group of the sixth
#   sitting's profiles as a column reduction), compiled together (about 50 GB at their peaks;
#   float32 --batch_norm=fused, one pair so far at -2.7%, left to groups 5 and 6).
# --devices 1 is the default placement on a one-GPU machine (no mesh), named to show it.
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:?usage: gpu_session.sh OUT_DIR}
mkdir -p "$OUT_DIR" "$OUT_DIR/work/logs"
PY=${PYTHON:-python3}
STEPS=${STEPS:-30}
export KERAS_BACKEND=jax PYTHONUNBUFFERED=1
# Several processes share the GPU: each allocates what it uses instead of 75% of the memory.
export XLA_PYTHON_CLIENT_PREALLOCATE=false
RESULTS="$OUT_DIR/results.jsonl"
LOGS="$OUT_DIR/work/logs"

group() {  # group NAME "ENV... bench args" ...
  local name=$1; shift
  local sync; sync=$(mktemp -d)
  local i=0
  echo "=== group $name: $# runs, $(date -u +%T)" >&2
  for spec in "$@"; do
    local env_vars=""  # leading NAME=value words of the spec go before the command
    while [[ $spec == [A-Z_]*=* ]]; do env_vars="$env_vars ${spec%% *}"; spec=${spec#* }; done
    if [ "${DRY_RUN:-0}" = 1 ]; then  # checked together at the end, in one process
      echo "$env_vars $spec --steps $STEPS" >>"$OUT_DIR/work/dry_run_commands.txt"
      continue
    fi
    # The wrapper marks the run ready when it ends, so that a run that dies before it compiled
    # does not hold up the group's timings.
    ( eval "$env_vars $PY -m msmt_tf.bench $spec --steps $STEPS --warmup 3 --out $RESULTS \
        --sync_dir $sync --sync_count $# --sync_index $i" >"$LOGS/$name.$i.log" 2>&1
      echo "exit $?: $spec" >>"$LOGS/$name.$i.log"; touch "$sync/ready.$i" ) &
    i=$((i + 1))
  done
  wait
  echo "=== group $name done $(date -u +%T)" >&2
  tail -n 3 "$LOGS/$name".*.log >&2 2>/dev/null || true
  tar czf "$OUT_DIR/logs.tgz" -C "$OUT_DIR/work" logs 2>/dev/null || true
  # One step's device trace per profiled run, XPlane only (the trace.json.gz repeats it), one
  # archive each: files come back from the device machine only up to 16 MB each.
  for p in "$OUT_DIR"/work/profile_*; do
    [ -d "$p" ] || continue
    find "$p" -name '*.trace.json.gz' -delete
    tar czf "$OUT_DIR/$(basename "$p").tgz" -C "$OUT_DIR/work" "$(basename "$p")" 2>/dev/null || true
  done
}

if [ "${DRY_RUN:-0}" != 1 ]; then
  nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.max.sm --format=csv >&2 || true
  $PY -c "import jax, keras; print('jax', jax.__version__, 'keras', keras.__version__, jax.devices())" >&2
fi
CUB=${CUB_FLAGS:---flagfile=configs/cub.cfg}
DMGAN=${DMGAN_FLAGS:---flagfile=configs/cub_dmgan.cfg}
COCO=${COCO_FLAGS:---flagfile=configs/coco.cfg}
for g in ${RUN_GROUPS:-21 22}; do
  case $g in
    1) group 1 \
         "$CUB --parts --devices 1 --upsample_conv=reference" \
         "$CUB --parts --upsample_conv=fused --profile_dir $OUT_DIR/work/profile_f32 --profile_steps 1" \
         "$CUB --parts --mixed_precision --upsample_conv=reference" \
         "$CUB --parts --mixed_precision --upsample_conv=fused --profile_dir $OUT_DIR/work/profile_bf16 --profile_steps 1" ;;
    2) group 2 \
         "$DMGAN --noparts --upsample_conv=reference" \
         "$DMGAN --noparts --upsample_conv=fused" \
         "XLA_FLAGS=--xla_gpu_force_conv_nhwc $CUB --noparts" \
         "$COCO --noparts" ;;
    5) group 5 "$CUB --noparts --profile_dir $OUT_DIR/work/profile_f32_ref --profile_steps 1" \
         "$CUB --noparts --batch_norm=fused" ;;
    6) group 6 "$CUB --noparts --mixed_precision --profile_dir $OUT_DIR/work/profile_bf16_ref --profile_steps 1" \
         "$CUB --noparts --mixed_precision --batch_norm=fused" ;;
    10) group 10 "$CUB --parts --mixed_precision" ;;
    21) group 21 "$CUB --noparts" ;;
    22) group 22 "$CUB --noparts --mixed_precision" "$DMGAN --noparts" \
          "$CUB --noparts --fuse_gate=matvec" "$CUB --noparts --mixed_precision --fuse_gate=matvec" ;;
    *) echo "gpu_session.sh: no group $g (groups: 1 2 5 6 10 21 22)" >&2; exit 2 ;;
  esac
done
if [ "${DRY_RUN:-0}" = 1 ]; then
  status=0
  if [ -f "$OUT_DIR/work/dry_run_commands.txt" ]; then
    $PY -m msmt_tf.bench --dry_run_commands "$OUT_DIR/work/dry_run_commands.txt" || status=$?
  fi
  rm -rf "$OUT_DIR/work"
  exit $status
fi
$PY -m msmt_tf.bench --table "$RESULTS" || true
$PY - "$RESULTS" <<'EOF' || true
import json, re, sys
for l in open(sys.argv[1]):
  r = json.loads(l)
  cmd = re.sub(r" --(out|sync_\w+|profile_\w+|steps|warmup)[= ]\S+", "", r["command"])
  step = (f"{r['ms_per_step_median']} ({r['ms_per_step_min']}-{r['ms_per_step_max']}), pipelined "
          f"{r.get('ms_per_step_pipelined_median')}, call {r.get('ms_per_call_median')} | compile "
          f"{r['compile_s']} | peak MB {r['peak_memory_mb']}" if "ms_per_step_median" in r else
          f"parts only, compile {r.get('parts_compile_s')}")
  print(cmd.split("python -m msmt_tf.bench", 1)[1], r.get("xla_flags", ""), "|", r["precision"],
        "|", step, "| parts", r.get("parts_ms"))
EOF
# What the archives hold, removed: the device machine sends back at most 8 files, 2 folders down.
tar czf "$OUT_DIR/logs.tgz" -C "$OUT_DIR/work" logs 2>/dev/null && rm -rf "$OUT_DIR/work"
