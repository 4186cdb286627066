"""The benchmark command runs where the GPU machine runs it: Keras on JAX, TensorFlow absent."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNNER = """
import os, runpy, sys
from tests.backend_outputs import _NoTensorFlow
sys.meta_path.insert(0, _NoTensorFlow())
# MSMT_FAKE_COST=list|none: cost_analysis() as other JAX versions / devices answer it (a list of
# per-program dicts; None, as JAX 0.11 does for a lowered GPU program), for the lowered and the
# compiled program alike; with none, an explicit Lowered.compile() (the count's last resort, not
# the step's jit call) raises too, which saves the test a second compile of the step.
fake = os.environ.get("MSMT_FAKE_COST")
if fake:
  import jax.stages
  for cls in (jax.stages.Lowered, jax.stages.Compiled):
    real = cls.cost_analysis
    cls.cost_analysis = ((lambda self, real=real: [real(self)]) if fake == "list"
                         else (lambda self: None))
  if fake == "none":  # and no compile for a count either (as on a GPU): fails fast, says so
    def no_compile(self, *args, **kwargs):
      raise RuntimeError("simulated: no compiled cost analysis")
    jax.stages.Lowered.compile = no_compile
sys.argv = ["msmt_tf.bench"] + sys.argv[1:]
runpy.run_module("msmt_tf.bench", run_name="__main__")
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_bench_prints_one_json_line_on_jax_without_tensorflow(tmp_path):
  out = tmp_path / "bench.jsonl"
  cache = tmp_path / "jax_cache"  # the persistent compilation cache BUILD.md documents
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", MSMT_FAKE_COST="list",
             JAX_COMPILATION_CACHE_DIR=str(cache))
  res = subprocess.run([sys.executable, "-c", RUNNER, "--flagfile=configs/smoke.cfg",
                        "--vocab_size=60", "--steps=2", "--warmup=0", "--batch_size=3",
                        f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1
  result = json.loads(lines[0])
  # compile_s may be a cache read: the line says a cache was in use, and the step went into it
  assert result["jax_compilation_cache_dir"] == str(cache) and any(cache.iterdir())
  assert json.loads(out.read_text()) == result
  assert result["backend"] == "jax" and result["device"].startswith("cpu")
  assert result["batch_size"] == 3 and result["steps"] == 2 and result["xla"]
  assert 0 < result["build_s"] and 0 < result["compile_s"]  # making the model, then the step
  assert (result["upsample_conv"], result["batch_norm"], result["sdm_convs"],
          result["fuse_gate"]) == ("reference", "keras", "factored", "reduce")  # defaults
  assert 0 < result["ms_per_step_min"] <= result["ms_per_step_median"] <= result["ms_per_step_max"]
  assert (0 < result["ms_per_step_pipelined_min"] <= result["ms_per_step_pipelined_median"]
          <= result["ms_per_step_pipelined_max"]) and result["ms_per_call_median"] > 0
  assert result["images_per_s"] == pytest.approx(3000 / result["ms_per_step_median"], rel=1e-2)
  assert set(result["parts_ms"]) == {"text_encoder", "mtwig", "refine1", "discriminators",
                                     "damsm", "optimizers"}
  assert all(v > 0 for v in result["parts_ms"].values())
  assert result["peak_memory_mb"] > 0 and result["cub_epoch_s"] > 0
  # XLA's FLOP count: the parts (each forward + backward as the step runs it) add up to the step.
  assert set(result["parts_gflop"]) == set(result["parts_ms"])
  assert result["gflop_per_step"] > 0
  assert sum(result["parts_gflop"].values()) == pytest.approx(result["gflop_per_step"], rel=0.1)
  assert result["gflop_per_image"] == pytest.approx(result["gflop_per_step"] / 3, rel=1e-2)
  assert result["gflop_source"] == "lowered"  # a list-valued cost analysis is read too
  _check_bytes_and_roofline(result, 494.7, "dense TF32")
  # The same count without running anything (how the paper configs are counted on a CPU).
  env.pop("MSMT_FAKE_COST")
  res = subprocess.run([sys.executable, "-c", RUNNER, "--flagfile=configs/smoke.cfg",
                        "--vocab_size=60", "--batch_size=3", "--flops_only"], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  counted = json.loads([l for l in res.stdout.splitlines() if l.startswith("{")][0])
  assert counted["gflop_per_step"] == result["gflop_per_step"]
  assert counted["parts_gflop"] == result["parts_gflop"]
  assert "ms_per_step_median" not in counted
  _check_bytes_and_roofline(counted, 494.7, "dense TF32")
  assert counted["parts_gbytes"] == result["parts_gbytes"]
  assert "parts_gbytes_cpu_fused" not in counted  # only with --fused_bytes
  # What each part's forward keeps for its backward (--flops_only only): the parts with one.
  kept = counted["parts_residual_mb"]
  assert set(kept) == {"mtwig", "refine1", "discriminators", "damsm"}, kept
  for part, by_dtype in kept.items():
    assert by_dtype["float32"] > 0, part
    assert by_dtype["total"] == pytest.approx(sum(v for k, v in by_dtype.items()
                                                  if k != "total"), rel=1e-3), part
  assert "parts_residual_mb" not in result
  # No cost analysis at all (lowered and compiled both answer None): still timed, FLOPs left out
  # and said so. The same run, one stage, data-parallel over 2 (forced) CPU devices, global batch 4.
  env.update(MSMT_FAKE_COST="none", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  res = subprocess.run([sys.executable, "-c", RUNNER, "--flagfile=configs/smoke.cfg",
                        "--vocab_size=60", "--steps=2", "--warmup=0", "--batch_size=4",
                        "--num_stages=1", "--noparts", "--devices=2"], cwd=REPO, env=env, capture_output=True,
                       text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  blind = json.loads([l for l in res.stdout.splitlines() if l.startswith("{")][0])
  assert blind["ms_per_step_median"] > 0 and blind["devices"] == 2
  assert blind["images_per_s_per_device"] == pytest.approx(blind["images_per_s"] / 2, rel=1e-2)
  assert result["devices"] == 1
  assert blind["gflop_source"].startswith("unavailable (step: lowered: no cost analysis")
  assert not {"gflop_per_step", "parts_gflop", "achieved_tflop_per_s", "gbytes_per_step",
              "h100_roofline"} & set(blind)
  # One part alone (--only_parts): timed and counted as in the full run, no step compiled; its
  # line (appended to the same file) stays out of the step table. An unknown part is named.
  env.update(MSMT_FAKE_COST="list")
  env.pop("XLA_FLAGS")
  res = subprocess.run([sys.executable, "-c", RUNNER, "--flagfile=configs/smoke.cfg",
                        "--vocab_size=60", "--steps=2", "--warmup=0", "--batch_size=3",
                        "--only_parts=refine1", f"--out={out}"], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  alone = json.loads([l for l in res.stdout.splitlines() if l.startswith("{")][0])
  assert alone["mode"] == "parts" and "ms_per_step_median" not in alone
  assert set(alone["parts_ms"]) == set(alone["parts_compile_s"]) == {"refine1"}
  assert alone["parts_ms"]["refine1"] > 0
  assert alone["parts_gflop"] == {"refine1": result["parts_gflop"]["refine1"]}
  assert "gflop_per_step" not in alone
  res = subprocess.run([sys.executable, "-c", RUNNER, "--flagfile=configs/smoke.cfg",
                        "--vocab_size=60", "--only_parts=refine2"], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert res.returncode == 1
  assert ("--only_parts: no part 'refine2' in this configuration; its parts: text_encoder, mtwig, "
          "refine1, discriminators, damsm, optimizers") in res.stderr
  # BUILD.md's table from the collected lines.
  res = subprocess.run([sys.executable, "-m", "msmt_tf.bench", f"--table={out}"], cwd=REPO,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  rows = res.stdout.strip().splitlines()
  assert rows[0].startswith("| date | backend | device |") and len(rows) == 3
  assert f"| {result['ms_per_step_median']:.1f} (" in rows[2] and "| jax | cpu" in rows[2]
  assert f") | {result['ms_per_step_pipelined_median']:.1f} | " in rows[2]


def test_saved_residual_bytes_counts_what_the_backward_reads():
  """bench.saved_residual_bytes against hand counts: sin(x @ w) keeps cos(x @ w) for its backward
  (x and w, arguments, are not counted), in the dtype it was computed in."""
  jnp = pytest.importorskip("jax.numpy")
  from msmt_tf import bench  # pylint: disable=g-import-not-at-top
  x, w = jnp.ones((6, 5), "float32"), jnp.ones((5, 7), "float32")
  assert bench.saved_residual_bytes(lambda x, w: jnp.sum(jnp.sin(x @ w)), x, w) == {
      "float32": 6 * 7 * 4}
  half = lambda x, w: jnp.sum(jnp.sin((x @ w).astype("bfloat16")).astype("float32"))
  assert bench.saved_residual_bytes(half, x, w) == {"bfloat16": 6 * 7 * 2}
  assert bench.saved_residual_bytes(lambda x, w: jnp.sum(x @ w), x, w) == {}  # linear: nothing


def test_bench_refuses_bad_flags():
  for extra, message in (("--steps=0", "--steps must be >= 1"),
                         ("--flops_only", "--flops_only needs KERAS_BACKEND=jax"),
                         ("--only_parts=refine1 --noparts",
                          "--only_parts and --noparts exclude each other"),
                         ("--only_parts=refine1 --profile_dir=/tmp/p",
                          "--only_parts and --profile_dir exclude each other")):
    res = subprocess.run([sys.executable, "-m", "msmt_tf.bench", "--flagfile=configs/smoke.cfg",
                          "--vocab_size=60", *extra.split()], cwd=REPO, capture_output=True,
                         text=True,  # --flops_only is refused on TensorFlow, whatever the caller's
                         env=dict(os.environ, KERAS_BACKEND="tensorflow"))  # backend
    assert res.returncode != 0 and message in res.stderr, res.stderr[-2000:]


class _FakeProgram:
  """A jax Lowered/Compiled stand-in whose cost analysis answers like a given device would."""

  def __init__(self, flops, platforms, none_unless_cpu=False, compiled_flops=None):
    self.flops, self.platforms = flops, platforms
    self.none_unless_cpu, self.compiled_flops = none_unless_cpu, compiled_flops

  def cost_analysis(self):
    if self.none_unless_cpu and self.platforms != ("cpu",):
      return None
    return {"flops": self.flops, "bytes accessed": 1.0}

  def compile(self):
    return _FakeProgram(self.compiled_flops, None) if self.compiled_flops else _NoCost()


class _NoCost:
  def cost_analysis(self):
    return None


def test_flop_count_falls_back_when_the_device_has_no_cost_analysis():
  """What differs on the GPU: a lowered GPU program has no cost analysis (JAX 0.11.2 returns
  None); the same program lowered for the CPU has. Simulated with programs that answer like that."""
  from msmt_tf import bench  # pylint: disable=g-import-not-at-top
  flops_and_source = lambda lower: bench._program_cost(lower)[::2]
  gpu_like = lambda platforms=None: _FakeProgram(3e9, platforms, none_unless_cpu=True)
  assert flops_and_source(gpu_like) == (3e9, "cpu_lowered")
  # Several programs (the optimizers part): all must be counted.
  pair = lambda platforms=None: [_FakeProgram(1e9, platforms), _FakeProgram(2e9, platforms)]
  assert flops_and_source(pair) == (3e9, "lowered")
  # Nothing before compiling: the compiled program's analysis.
  compiled = lambda platforms=None: _FakeProgram(None, platforms, compiled_flops=5e9)
  assert flops_and_source(compiled) == (5e9, "compiled")
  # A lowering that raises is reported, not raised.
  def broken(platforms=None):
    raise RuntimeError("no lowering for this platform")
  flops, why = flops_and_source(broken)
  assert flops is None and "RuntimeError: no lowering" in why
  flops_in = lambda cost: bench._cost_in(cost)[0]
  assert flops_in([{"flops": 2.0}]) == 2.0 and flops_in(None) is None
  assert flops_in([]) is None and flops_in({"bytes accessed": 1.0}) is None


def test_flop_count_never_takes_a_gpu_compiled_count(monkeypatch):
  """On a GPU the compiled program's cost analysis leaves out the cuDNN / cuBLAS calls (on the
  H100 it gave 71 GFLOP for the 6,525 GFLOP CUB step), so it is a source on the CPU only."""
  import jax  # pylint: disable=g-import-not-at-top
  from msmt_tf import bench  # pylint: disable=g-import-not-at-top
  compiled = lambda platforms=None: _FakeProgram(None, platforms, compiled_flops=5e9)
  monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
  flops, _, why = bench._program_cost(compiled)
  assert flops is None and "compiled" not in why and "cpu_lowered: no cost analysis" in why
  monkeypatch.setattr(jax, "default_backend", lambda: "cpu")
  assert bench._program_cost(compiled)[::2] == (5e9, "compiled")


def test_cost_analysis_reads_bytes_with_the_flops():
  """The bytes accessed come from the same analysis as the FLOPs (whichever source answered)."""
  from msmt_tf import bench  # pylint: disable=g-import-not-at-top
  gpu_like = lambda platforms=None: _FakeProgram(3e9, platforms, none_unless_cpu=True)
  assert bench._program_cost(gpu_like) == (3e9, 1.0, "cpu_lowered")
  pair = lambda platforms=None: [_FakeProgram(1e9, platforms), _FakeProgram(2e9, platforms)]
  assert bench._program_cost(pair) == (3e9, 2.0, "lowered")
  assert bench._cost_in([{"flops": 2.0, "bytes accessed": 8.0}]) == (2.0, 8.0)
  assert bench._cost_in({"flops": 2.0}) == (2.0, None) and bench._cost_in(None) == (None, None)
  # The roofline: the larger of the compute and the memory time (GFLOP / TFLOP/s = ms).
  device = {"hbm_tb_per_s": 2.0, "tf32_tflop_per_s": 100.0, "bf16_tflop_per_s": 200.0}
  assert bench.roofline(1000.0, 12.0, False, device) == (10.0, "compute")
  assert bench.roofline(1000.0, 12.0, True, device) == (6.0, "memory")
  counts = {"gflop_per_step": 200.0, "gbytes_per_step": 1.0, "parts_gflop": {"a": 98.94},
            "parts_gbytes": {"a": 0.335}, "gflop_source": "lowered"}
  line = bench._flops_keys(counts, 4, bf16=True)["h100_roofline"]
  assert line["peak"] == "dense bf16" and line["ms_per_step"] == round(1.0 / 3.35, 3)
  assert line["parts_ms"] == {"a": 0.1} and line["step_bound"] == "memory"
  line = bench._flops_keys(counts, 4, bf16=False)["h100_roofline"]
  assert line["peak"] == "dense TF32" and line["parts_ms"] == {"a": 0.2}
  assert line["step_bound"] == line["parts_bound"]["a"] == "compute"
  assert "h100_roofline" not in bench._flops_keys({"gflop_source": "unavailable"}, 4, False)
  # With --fused_bytes' counts: the roofline of each part at its CPU-fused traffic too.
  line = bench._flops_keys(dict(counts, parts_gbytes_cpu_fused={"a": 0.67}), 4, True)
  assert line["h100_roofline"]["parts_ms_cpu_fused"] == {"a": 0.2}
  assert line["h100_roofline"]["parts_sum_ms_cpu_fused"] == 0.2


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_cpu_fused_bytes_of_a_compiled_program():
  """--fused_bytes compiles each part for the CPU: fusing an elementwise chain into the matmul's
  consumer leaves less traffic than the unfused HLO, whose every op goes through memory."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from msmt_tf import bench  # pylint: disable=g-import-not-at-top
  fn = jax.jit(lambda x, w: jnp.tanh(x @ w) * 2.0 + 1.0)
  args = (jnp.ones((64, 128)), jnp.ones((128, 256)))
  lower = lambda platforms=None: fn.trace(*args).lower(lowering_platforms=platforms)
  flops, unfused, source = bench._program_cost(lower)
  assert source == "lowered" and flops >= 2 * 64 * 128 * 256 and unfused > 0
  def broken(platforms=None):
    raise RuntimeError("cannot lower")
  fused, failed = bench.cpu_fused_bytes({"f": lower, "pair": lambda platforms=None: [
      lower(platforms), lower(platforms)], "broken": broken})
  # At least the inputs and the output cross memory once; the unfused count is larger.
  minimum = 4 * (64 * 128 + 128 * 256 + 64 * 256) / 1e9
  assert minimum <= fused["f"] < unfused / 1e9
  assert fused["pair"] == pytest.approx(2 * fused["f"], rel=1e-4)
  assert set(failed) == {"broken"} and "RuntimeError: cannot lower" in failed["broken"]


def _check_bytes_and_roofline(r, peak, label):
  """XLA's bytes accessed of the step and its parts, their FLOP/byte, the H100 roofline."""
  parts = set(r["parts_gflop"])
  assert set(r["parts_gbytes"]) == set(r["parts_flop_per_byte"]) == parts
  assert r["gbytes_per_step"] > 0 and all(v > 0 for v in r["parts_gbytes"].values())
  assert r["flop_per_byte"] == pytest.approx(r["gflop_per_step"] / r["gbytes_per_step"], rel=2e-2)
  for name, gbytes in r["parts_gbytes"].items():
    if r["parts_gflop"][name] >= 0.1:  # GFLOP are rounded to 0.01
      assert r["parts_flop_per_byte"][name] == pytest.approx(r["parts_gflop"][name] / gbytes,
                                                             rel=5e-2)
  # The unfused bytes of the parts add up to about the step's, as the FLOPs do.
  assert sum(r["parts_gbytes"].values()) == pytest.approx(r["gbytes_per_step"], rel=0.25)
  line = r["h100_roofline"]
  assert line["peak_tflop_per_s"] == peak and line["peak"] == label
  assert line["ms_per_step"] == pytest.approx(max(r["gflop_per_step"] / peak,
                                                  r["gbytes_per_step"] / 3.35), abs=2e-3)
  assert set(line["parts_ms"]) == set(line["parts_bound"]) == parts
  for name, ms in line["parts_ms"].items():
    compute, memory = r["parts_gflop"][name] / peak, r["parts_gbytes"][name] / 3.35
    assert ms == pytest.approx(max(compute, memory), abs=2e-3)
    assert line["parts_bound"][name] == ("compute" if compute >= memory else "memory")


def test_pipeline_mode_times_the_training_input_pipeline(tmp_path):
  """--pipeline on the synthetic CUB folder (written once, deterministic) prints one JSON line."""
  out = tmp_path / "pipe.jsonl"
  env = dict(os.environ, TMPDIR=str(tmp_path))
  cmd = [sys.executable, "-m", "msmt_tf.bench", "--pipeline", "--flagfile=configs/cub.cfg",
         "--pipeline_images=4", "--batch_size=2", "--pipeline_batches=3", "--pipeline_warmup=1",
         "--step_ms=100,20", f"--out={out}"]
  res = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1
  r = json.loads(lines[0])
  assert json.loads(out.read_text()) == r
  assert r["mode"] == "pipeline" and r["dataset"] == "birds" and r["train_images"] == 4
  assert r["batch_size"] == 2 and r["batches"] == 3 and r["words_num"] == 18
  assert r["image_sizes"] == [64, 128, 256]
  assert r["cores"] == len(os.sched_getaffinity(0))
  assert r["images_per_s"] == pytest.approx(3 * 2 / r["seconds"], rel=2e-2)
  assert r["images_per_s_per_core"] == pytest.approx(r["images_per_s"] / r["cores"], rel=2e-2)
  assert r["images_per_s_needed_for_step_ms"] == {"100": 20.0, "20": 100.0}
  for ms, need in r["images_per_s_needed_for_step_ms"].items():
    assert r["cores_needed_for_step_ms"][ms] == pytest.approx(need / r["images_per_s_per_core"],
                                                              rel=2e-2)
  assert r["images_per_cpu_s"] == pytest.approx(3 * 2 / r["cpu_s"], rel=2e-2)
  for ms, need in r["images_per_s_needed_for_step_ms"].items():
    assert r["cores_needed_for_step_ms_by_cpu_time"][ms] == pytest.approx(
        need / r["images_per_cpu_s"], rel=2e-2)
  assert "500x375" in r["data"]
  # The folder it made is a valid birds dataset of 500 x 375 JPEGs whose boxes lie inside them,
  # and the same arguments write the same bytes.
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from msmt_tf import bench  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  split = datasets.load_split(r["data_dir"], "birds", "train")
  assert split.num_images == 4 and all(len(c) == 10 for c in split.captions)
  for path, (x, y, w, h) in zip(split.image_paths, split.bboxes):
    with Image.open(path) as im:
      assert im.format == "JPEG" and im.size == (500, 375)
    assert 0 <= x and x + w <= 500 and 0 <= y and y + h <= 375 and w > 100 and h > 100
  again = bench.write_synthetic_cub(str(tmp_path / "again"), 4)
  first = split.image_paths[2]
  with open(first, "rb") as f, open(os.path.join(again, os.path.relpath(
      first, r["data_dir"])), "rb") as g:
    assert f.read() == g.read()
  # A real folder (--pipeline_dir), and the culprit named when it is not a dataset.
  res = subprocess.run(cmd[:-1] + [f"--pipeline_dir={tmp_path / 'missing'}"], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert res.returncode != 0 and "missing" in res.stderr, res.stderr[-2000:]
  # The table of pipeline lines.
  res = subprocess.run([sys.executable, "-m", "msmt_tf.bench", f"--table={out}"], cwd=REPO,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  rows = res.stdout.strip().splitlines()
  assert rows[0].startswith("| date | device | data |") and len(rows) == 3
  assert f"| {r['images_per_s']:.0f} | {r['images_per_s_per_core']:.0f} |" in rows[2]


def test_h100_script_commands_parse(tmp_path):
  """benchmarks/h100.sh's commands (float32 and bf16 per config, the pipeline), checked by
  --dry_run: parsed flags, valid model configs, the JAX backend and the persistent cache."""
  cache = tmp_path / "jax_cache"
  env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, JAX_COMPILATION_CACHE_DIR=str(cache))
  out = tmp_path / "h100.jsonl"
  res = subprocess.run(["bash", "benchmarks/h100.sh", str(out)], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  lines = [json.loads(l) for l in res.stdout.splitlines() if l.startswith("{")]
  steps = [(l["command"].split("--flagfile=")[1].split()[0], l["precision"])
           for l in lines if l["mode"] == "step"]
  assert steps == [("configs/cub.cfg", "float32"), ("configs/cub.cfg", "mixed_bfloat16"),
                   ("configs/cub_dmgan.cfg", "float32"), ("configs/cub_dmgan.cfg",
                                                          "mixed_bfloat16")]
  for l in lines:
    assert l["dry_run"] and l["keras_backend"] == "jax" and l["batch_size"] == 20
    assert l["jax_compilation_cache_dir"] == str(cache) and l["out"] == str(out)
  assert all(l["parts"] and l["steps"] == 50 for l in lines if l["mode"] == "step")
  assert {l["config"]["refinement"] for l in lines if l["mode"] == "step"} == {"imhm", "dmgan"}
  if importlib.util.find_spec("tensorflow") is not None:
    assert [l["mode"] for l in lines][-1] == "pipeline"
  assert not out.exists() and cache.is_dir()
  # A bad flag in a command fails the script.
  res = subprocess.run(["bash", "benchmarks/h100.sh", str(out)], cwd=REPO,
                       env=dict(env, EXTRA="--no_such_flag=1"), capture_output=True, text=True)
  assert res.returncode != 0 and "no_such_flag" in res.stderr


def test_gpu_session_script_commands_parse(tmp_path):
  """benchmarks/gpu_session.sh, every group, checked by --dry_run (nothing compiled): each
  command's flags parse and build a valid model; each precision has the default step (since the
  sixth sitting --sdm_convs=factored) beside --batch_norm=fused (groups 5, 6) and
  --fuse_gate=matvec (22); the next sitting's groups time the float32 default alone (21: its
  compile alone) and cub_dmgan.cfg (22)."""
  env = dict(os.environ, DRY_RUN="1", PYTHON=sys.executable, RUN_GROUPS="1 2 5 6 10 21 22")
  res = subprocess.run(["bash", "benchmarks/gpu_session.sh", str(tmp_path / "out")], cwd=REPO,
                       env=env, capture_output=True, text=True)
  assert res.returncode == 0 and "DRY RUN FAILED" not in res.stderr, res.stderr[-3000:]
  lines = [json.loads(l) for l in res.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 18 and all(l["dry_run"] and l["keras_backend"] == "jax" for l in lines)
  for precision in ("float32", "mixed_bfloat16"):
    plain = [l for l in lines if l["precision"] == precision and "cub.cfg" in l["command"]
             and l["upsample_conv"] == "reference" and not l["xla_flags"] and not l["parts"]]
    assert {(l["batch_norm"], l["sdm_convs"], l["fuse_gate"]) for l in plain} == {
        ("keras", "factored", "reduce"), ("fused", "factored", "reduce"),
        ("keras", "factored", "matvec")}, plain
  assert [l["command"] for l in lines if "cub_dmgan.cfg --noparts --steps" in l["command"]]
  assert not [l for l in lines if l["mode"] == "parts"]
  assert sum(l["xla_flags"] == "--xla_gpu_force_conv_nhwc" for l in lines) == 1
  assert not (tmp_path / "out" / "results.jsonl").exists()
  # A command whose flags do not parse fails the dry run, named.
  res = subprocess.run(["bash", "benchmarks/gpu_session.sh", str(tmp_path / "out")], cwd=REPO,
                       env=dict(env, RUN_GROUPS="5", CUB_FLAGS="--flagfile=configs/cub.cfg "
                                "--no_such_flag=1"), capture_output=True, text=True)
  assert res.returncode == 1, res.stderr[-2000:]
  assert res.stderr.count("DRY RUN FAILED: --flagfile=configs/cub.cfg --no_such_flag=1 ") == 2
  # A group that does not exist (or no longer does) is refused, not skipped.
  res = subprocess.run(["bash", "benchmarks/gpu_session.sh", str(tmp_path / "out")], cwd=REPO,
                       env=dict(env, RUN_GROUPS="16"), capture_output=True, text=True)
  assert res.returncode == 2 and "gpu_session.sh: no group 16" in res.stderr, res.stderr[-2000:]


_TURN = """
import json, sys, time
from msmt_tf.timing import timing_turn
sync_dir, count, index, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
time.sleep(float(sys.argv[5]))  # a slower 'compile'
with timing_turn(sync_dir, count, index, timeout_s=float(sys.argv[6])) as info:
  start = time.time()
  time.sleep(0.6)  # the 'timing'
  end = time.time()
json.dump({"start": start, "end": end, **info}, open(out, "w"))
"""


class _VirtualDevice:
  """A device stream and the host that feeds it, on a virtual clock: each call costs the host
  `host_ms` (argument handling, dispatch), then queues `device_ms` of device work behind what is
  queued; waiting for a call moves the host's clock to its completion."""

  def __init__(self, host_ms, device_ms):
    self.host_ms, self.device_ms, self.now, self.free, self.calls = host_ms, device_ms, 0.0, 0.0, 0

  def clock(self):
    return self.now / 1000

  def step(self):
    self.calls += 1
    self.now += self.host_ms
    self.free = max(self.now, self.free) + self.device_ms
    return self.free

  def block(self, done):
    self.now = max(self.now, done)


@pytest.mark.parametrize("host_ms,device_ms", [(7.0, 85.0), (4.0, 50.0), (60.0, 40.0)])
def test_pipelined_timing_overlaps_the_host_with_the_device(host_ms, device_ms):
  """bench's two step timings, on a simulated GPU (a device queue and a host that dispatches to
  it, on a virtual clock): "blocked" (each step waited for before the next: what bench reported
  alone until the sixth H100 sitting) is the host's and the device's time in series; "pipelined"
  (step n + 1 dispatched before step n is waited for, as train.py runs its steps) is the larger
  of the two. The first two cases are the H100's float32 and bf16 CUB steps as their profiles
  and blocked timings split them (BUILD.md, "H100, sixth sitting"); the third a host slower than
  the device (many devices, small batches). A pipelined timing that waited for each step would
  give the blocked numbers."""
  from msmt_tf import bench  # pylint: disable=g-import-not-at-top
  dev = _VirtualDevice(host_ms, device_ms)
  time_blocked, time_pipelined = bench._time, bench._time_pipelined  # pylint: disable=protected-access
  blocked = time_blocked(dev.step, [], 10, 2, dev.block, dev.clock)
  assert blocked == [pytest.approx(host_ms + device_ms)] * 10
  assert dev.calls == 12
  dev = _VirtualDevice(host_ms, device_ms)
  piped, calls = time_pipelined(dev.step, [], 10, 2, dev.block, dev.clock)
  assert piped == [pytest.approx(max(host_ms, device_ms))] * 10
  assert calls == [pytest.approx(host_ms)] * 10  # each call returns once dispatched
  assert dev.calls == 2 + 1 + 10 + 2 and dev.now == dev.free  # every call waited for at the end


def test_timing_turn_waits_for_the_group_and_never_overlaps(tmp_path):
  """bench --sync_dir: runs that compile together time one at a time, each after all compiled;
  a missing member only delays the group by --sync_timeout."""
  sync = tmp_path / "sync"
  delays = [0.0, 3.0, 0.3]  # member 0 waits ~3 s; >= 1 s below leaves 2 s for start-up skew
  procs = [subprocess.Popen([sys.executable, "-c", _TURN, str(sync), "3", str(i),
                             str(tmp_path / f"{i}.json"), str(d), "60"], cwd=REPO)
           for i, d in enumerate(delays)]
  assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
  runs = sorted((json.load(open(tmp_path / f"{i}.json")) for i in range(3)),
                key=lambda r: r["start"])
  for a, b in zip(runs, runs[1:]):
    assert a["end"] <= b["start"], runs  # no two timings overlap
  assert all(r["sync_ready"] == 3 and r["sync_group"] == 3 for r in runs)
  # Every timing starts after the slowest member got ready (its 3 s 'compile'), so member 0
  # (no 'compile') waited for it: 3 s, less any difference in the processes' start-up.
  assert min(r["start"] for r in runs) >= max(
      os.path.getmtime(sync / f"ready.{i}") for i in range(3)) - 0.05
  assert json.load(open(tmp_path / "0.json"))["sync_wait_s"] >= 1.0, runs
  # A group of 2 with one member only: it goes ahead after the timeout, and says so.
  res = subprocess.run([sys.executable, "-c", _TURN, str(tmp_path / "alone"), "2", "0",
                        str(tmp_path / "alone.json"), "0", "1.0"], cwd=REPO, timeout=120)
  assert res.returncode == 0
  alone = json.load(open(tmp_path / "alone.json"))
  assert alone["sync_ready"] == 1 and alone["sync_wait_s"] >= 1.0


def test_profile_summary_counts_device_time_by_kind(tmp_path):
  """benchmarks/profile_summary.py (BUILD.md's H100 profile numbers) on trace events of the shape
  XProf's trace viewer gives: kernels of a device stream, command-buffer ones included, sorted
  into library convolutions / GEMMs, XLA fusions (by kind), copies and the rest; host threads
  left out; the busy time and the span of the stream. Then --cudnn_convs on optimized GPU HLO
  lines of the form XLA dumps: each convolution's cuDNN call, counted."""
  import importlib.util as iu  # pylint: disable=g-import-not-at-top,reimported
  spec = iu.spec_from_file_location("profile_summary",
                                    os.path.join(REPO, "benchmarks", "profile_summary.py"))
  ps = iu.module_from_spec(spec)
  spec.loader.exec_module(ps)
  meta = lambda tid, name: {"ph": "M", "name": "thread_name", "pid": 1, "tid": tid,
                            "args": {"name": name}}
  kernel = lambda name, ts, dur, tid=1: {"ph": "X", "pid": 1, "tid": tid, "name": name,
                                         "ts": ts, "dur": dur}
  events = [meta(1, "Stream #14(Compute)"), meta(2, "bench.py"),
            kernel("sm90_xmma_fprop_implicit_gemm_f32", 0, 40),
            kernel("input_transpose_fusion_12", 40, 10), kernel("input_transpose_fusion.3", 50, 5),
            kernel("input_reduce_fusion", 60, 20), kernel("gemm_fusion_dot_290", 80, 4),
            kernel("memcpy32_post", 90, 1), kernel("wrapped_broadcast", 91, 2),
            kernel("python step", 0, 500, tid=2)]
  (name, s), = ps.summarize(events).items()
  assert name == "Stream #14(Compute)" and s["kernels"] == 7
  assert s["span_us"] == 93 and s["busy_us"] == 82
  assert s["kinds"] == {"conv/gemm library": 44, "xla fusion": 35, "copy/memset": 1, "other": 2}
  assert s["fusions"] == {"input_transpose_fusion": 15, "input_reduce_fusion": 20}
  assert s["library"] == {"forward": 40, "gemm": 4}
  assert [ps.library_role(n) for n in ("sm90_xmma_wgrad_indexed_implicit_gemm_f32",
                                       "sm90_xmma_dgrad_implicit_gemm", "cutlass_fprop_tf32",
                                       "void gemv2T_kernel_val", "nhwcAddPaddingKernel")] == [
      "weight gradient", "input gradient", "forward", "gemm", "other"]
  assert "53.7%  conv/gemm library" in ps.report({name: s})
  assert "library: forward 0.04 ms, gemm 0.00 ms" in ps.report({name: s})
  assert s["short"] == {2: (2, 3), 5: (4, 12), 10: (5, 22)}  # kernels of at most 2, 5, 10 us
  assert "short kernels: <= 2 us 2 (0.00 ms), <= 5 us 4 (0.01 ms)," in ps.report({name: s})
  table = {"cols": [{"id": "hlo_op_name"}, {"id": "tf_op_name"}, {"id": "total_self_time"}],
           "rows": [{"c": [{"v": "a"}, None, {"v": 5.0}]},
                    {"c": [{"v": "cudnn-conv.9"}, {"v": "jit(step)/refine2/up/conv"},
                           {"v": 15560.0}]}]}
  rows = ps.hlo_rows(table)
  assert [r["hlo_op_name"] for r in rows] == ["cudnn-conv.9", "a"] and rows[1]["tf_op_name"] is None
  assert "15.56 ms  cudnn-conv.9  jit(step)/refine2/up/conv" in ps.report_ops(rows, 1)
  # --cudnn_convs: which cuDNN call each convolution of an optimized HLO dump became.
  hlo = "\n".join([
      '  %cudnn-conv.1 = (f32[20,129,129,192]{2,1,3,0}, u8[0]{0}) custom-call(f32[20,128,128,48]'
      '{2,1,3,0} %p.1, f32[192,48,2,2]{1,0,2,3} %b.2), window={size=2x2 pad=1_1x1_1}, '
      'dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward", '
      'metadata={op_name="jit(step)/up/conv"}, backend_config={"cudnn_conv_backend_config":{}}',
      '  %cudnn-conv.7 = (f32[48,2,2,192]{3,2,1,0}, u8[0]{0}) custom-call(f32[20,128,128,48]'
      '{2,1,3,0} %p.1, f32[20,129,129,192]{2,1,3,0} %g), window={size=129x129 pad=1_1x1_1}, '
      'dim_labels=f01b_i01o->01bf, custom_call_target="__cudnn$convForward"',
      '  %cudnn-conv-bw-filter.3 = (f32[3,3,96,96]{1,0,2,3}, u8[0]{0}) custom-call(f32[20,256,256,96]'
      '{3,2,1,0} %a, f32[20,256,256,96]{3,2,1,0} %d), window={size=3x3 pad=1_1x1_1}, '
      'dim_labels=b01f_01io->b01f, custom_call_target="__cudnn$convBackwardFilter"',
      '  %cudnn-conv.8 = (f32[20,129,129,192]{2,1,3,0}, u8[0]{0}) custom-call(f32[20,128,128,48]'
      '{2,1,3,0} %p.9, f32[192,48,2,2]{1,0,2,3} %b.3), window={size=2x2 pad=1_1x1_1}, '
      'dim_labels=b01f_o01i->b01f, custom_call_target="__cudnn$convForward"',
      '  %fusion.2 = f32[20,256,256,96]{3,2,1,0} fusion(%a), kind=kLoop, calls=%fused_add'])
  found = ps.cudnn_convs(hlo)
  assert sum(found.values()) == 4 and len(found) == 3
  assert found[("convForward", "f32[20,129,129,192]", "f32[20,128,128,48] f32[192,48,2,2]",
                "size=2x2 pad=1_1x1_1", "b01f_o01i->b01f")] == 2
  assert found[("convForward", "f32[48,2,2,192]", "f32[20,128,128,48] f32[20,129,129,192]",
                "size=129x129 pad=1_1x1_1", "f01b_i01o->01bf")] == 1
  lines = ps.report_cudnn_convs(found).splitlines()
  assert lines[0].startswith("   2  convForward") and "convBackwardFilter" in "".join(lines)
  dump = tmp_path / "dump"
  dump.mkdir()
  (dump / "module_0001.jit_step.sm_9.0_gpu_after_optimizations.txt").write_text(hlo)
  (dump / "module_0001.jit_step.before_optimizations.txt").write_text(hlo)  # not counted
  res = subprocess.run([sys.executable, "benchmarks/profile_summary.py", "--cudnn_convs",
                        str(dump)], cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 0 and res.stdout.splitlines() == lines, res.stderr
  res = subprocess.run([sys.executable, "benchmarks/profile_summary.py", "--cudnn_convs",
                        str(tmp_path)], cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 1 and "no *after_optimizations.txt in" in res.stderr


def test_profile_summary_attributes_kernels_to_layers(tmp_path):
  """profile_summary --layers (BUILD.md's per-layer H100 table) on an XPlane file of the shape a
  JAX GPU profile has: the optimized HLO module in the metadata plane, its schedule with a
  command buffer (a call) inside. Fusion kernels are named after their instruction; the library
  kernels between two of them (cuDNN inside a CUDA graph: no HLO name) go to the custom call
  scheduled between those two, the first where a gap holds two (counted); a node run out of
  schedule order is counted; layers are grouped with stage-local indices as '*', forward apart
  from backward."""
  import importlib.util as iu  # pylint: disable=g-import-not-at-top,reimported
  from tensorflow.compiler.xla.service import hlo_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow.tsl.profiler.protobuf import xplane_pb2  # pylint: disable=g-import-not-at-top
  spec = iu.spec_from_file_location("profile_summary",
                                    os.path.join(REPO, "benchmarks", "profile_summary.py"))
  ps = iu.module_from_spec(spec)
  spec.loader.exec_module(ps)
  step = "jit(jax_train_step)/"
  proto = hlo_pb2.HloProto()
  module = proto.hlo_module
  module.entry_computation_id = 1
  entry, buffer = module.computations.add(), module.computations.add()
  entry.id, buffer.id = 1, 2

  def add(comp, iid, name, opcode, op_name="", target=""):
    ins = comp.instructions.add()
    ins.id, ins.name, ins.opcode, ins.custom_call_target = iid, name, opcode, target
    ins.metadata.op_name = op_name
    return ins
  add(entry, 10, "p.0", "parameter")
  add(entry, 11, "loop_add_fusion.1", "fusion", step + "jvp(generator)/refine2/sdm3/add")
  add(entry, 12, "call.5", "call").called_computation_ids.append(2)
  add(entry, 13, "input_reduce_fusion.9", "fusion", step + "jvp(generator)/up/bn/reduce_sum")
  add(buffer, 20, "cudnn-conv-bw-filter.2", "custom-call",
      step + "transpose(jvp(generator))/refine2/sdm3/phi_Q_pixel/conv_general_dilated",
      "__cudnn$convBackwardFilter")
  add(buffer, 21, "get-tuple-element.3", "get-tuple-element")
  add(buffer, 22, "cudnn-conv.4", "custom-call",
      step + "jvp(generator)/refine1/res0/conv1/conv_general_dilated", "__cudnn$convForward")
  add(buffer, 23, "cudnn-conv.6", "custom-call",
      step + "jvp(generator)/refine1/res1/conv1/conv_general_dilated", "__cudnn$convForward")
  add(buffer, 24, "loop_multiply_fusion.7", "fusion", step + "jvp(generator)/refine1/res0/mul")
  module.schedule.sequences[1].instruction_ids.extend([10, 11, 12, 13])
  module.schedule.sequences[2].instruction_ids.extend([20, 21, 24, 22, 23])
  space = xplane_pb2.XSpace()
  plane = space.planes.add()
  plane.name = "/host:metadata"
  plane.event_metadata[1].name = "jit_jax_train_step(123)"
  plane.event_metadata[1].stats.add().bytes_value = proto.SerializeToString()
  plane.event_metadata[2].name = "jit_loss(7)"  # another module, left alone
  plane.event_metadata[2].stats.add().bytes_value = b"x" * 10
  path = tmp_path / "vm.xplane.pb"
  path.write_bytes(space.SerializeToString())
  rows = ps.hlo_schedule(str(path))
  assert [r[0] for r in rows] == ["loop_add_fusion.1", "cudnn-conv-bw-filter.2",
                                  "loop_multiply_fusion.7", "cudnn-conv.4", "cudnn-conv.6",
                                  "input_reduce_fusion.9"]
  kernels = [dict(name=n, ts=t, dur=d) for n, t, d in (
      ("loop_add_fusion_1", 0, 5), ("sm90_xmma_wgrad_kernel", 10, 30), ("convertTensor", 45, 2),
      ("loop_multiply_fusion_7", 50, 4), ("sm90_xmma_fprop", 60, 7), ("sm90_xmma_fprop", 70, 8),
      ("input_reduce_fusion_9", 80, 3))]
  spent, shared = ps.attribute(kernels, rows)
  assert dict(spent) == {0: 5, 1: 32, 2: 4, 3: 15, 5: 3} and shared == 1
  # A CUDA graph's node run out of schedule order (the multiply fusion first) is counted; the
  # add fusion found behind it moves nothing, and the library kernels that follow go to the
  # gap after the multiply (the first of its two custom calls).
  swapped = [dict(k, ts=-1) if k["name"] == "loop_multiply_fusion_7" else k for k in kernels]
  assert dict(ps.attribute(swapped, rows)[0]) == {2: 4, 0: 5, 3: 47, 5: 3}
  text = ps.report_layers(spent, rows, 3)
  lines = text.splitlines()
  assert lines[0] == "top 3 of 5 (layer, pass, call) groups, 0.06 ms in all:"
  assert "backward cudnn convBackwardFilter" in lines[1] and "refine2/sdm*/phi_Q_pixel" in lines[1]
  assert "forward  cudnn convForward" in lines[2] and "refine1/res*/conv1" in lines[2]
  with pytest.raises(ValueError, match="no HLO module"):
    ps.hlo_schedule(str(path), module_prefix="jit_nothing")
  # --compare: the same step's layers at depth 2 (heads and blocks folded), a baseline beside it
  times = ps.layer_times(spent, rows, 2)
  assert times == {("generator/refine2", "forward"): 0.005,
                   ("generator/refine2", "backward"): 0.032,
                   ("generator/refine1", "forward"): 0.019, ("generator/up", "forward"): 0.003}
  base = ps.layer_times({0: 5, 1: 40, 5: 3}, rows, 2)
  lines = ps.report_compare(base, times, 2).splitlines()
  assert lines[1].split()[:5] == ["generator/refine2", "backward", "0.04", "0.03", "-0.01"]
  assert lines[2].split()[:5] == ["generator/refine1", "forward", "0.00", "0.02", "+0.02"]
  assert lines[-1].split() == ["all", "0.05", "0.06", "+0.01"]
  # --compare refuses a folder without exactly one profile, naming it, and a third path.
  empty = tmp_path / "empty"
  empty.mkdir()
  for args, message in (([str(empty), str(path)], f"one .xplane.pb in {empty}, found 0"),
                        ([str(path)] * 3, "--compare PROFILE_A PROFILE_B")):
    res = subprocess.run([sys.executable, "benchmarks/profile_summary.py", "--compare", *args],
                         cwd=REPO, capture_output=True, text=True)
    assert res.returncode == 1 and message in res.stderr, res.stderr[-2000:]


def test_table_of_a_bad_file_names_it(tmp_path, capsys):
  from msmt_tf import bench  # pylint: disable=g-import-not-at-top
  missing = str(tmp_path / "missing.jsonl")
  assert bench._print_table(missing).startswith(f"error: cannot read --table {missing} (")
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"backend": "jax"}\n\nnot json\n')
  assert bench._print_table(str(bad)).startswith(
      f"error: {bad} line 3 is not a JSON line of bench (")
  empty = tmp_path / "empty.jsonl"
  empty.write_text('{"backend": "jax", "gflop_per_step": 1.0}\n')
  assert bench._print_table(str(empty)) == (
      f"error: {empty} has no step or pipeline timings of bench (1 JSON lines; --flops_only and "
      "--only_parts lines are not tabled)")
  assert capsys.readouterr().out == ""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_fuse_gate_hlo_shows_each_modes_kernel_gradient():
  """benchmarks/fuse_gate_hlo.py (BUILD.md's reading of --fuse_gate=matvec): under JAX, with
  TensorFlow absent, the fuse gate's gradient has its two kernel gradients (one per map) as
  matrix-vector products `[1, B*H*W] x [B*H*W, C]` in the maps' dtype under 'matvec', as
  reductions under 'reduce' (no product), as convolutions under 'conv'; XLA's CPU pipeline keeps
  the products and adds none to 'reduce'."""
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu", PYTHONPATH=REPO)
  runner = ("import runpy, sys\nfrom tests.backend_outputs import _NoTensorFlow\n"
            "sys.meta_path.insert(0, _NoTensorFlow())\nsys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
  for policy, dtype in (("float32", "f32"), ("mixed_bfloat16", "bf16")):
    res = subprocess.run([sys.executable, "-c", runner, "benchmarks/fuse_gate_hlo.py",
                          "--policy", policy, "--shape", "2,8,8,6"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    lines = [json.loads(l) for l in res.stdout.splitlines() if l.startswith("{")]
    found = {l["mode"]: l for l in lines}
    assert sorted(found) == ["conv", "matvec", "reduce"]
    matvec, reduce, conv = found["matvec"], found["reduce"], found["conv"]
    assert matvec["dots"] == [f"(tensor<1x128x{dtype}>, tensor<128x6x{dtype}>) -> "
                              f"tensor<1x6x{dtype}>"] * 2, matvec
    assert matvec["compiled"]["dot"] == 2 and matvec["compiled"]["convolution"] == 0
    assert reduce["dots"] == [] and reduce["compiled"]["dot"] == 0
    assert reduce["lowered"]["reduce"] == matvec["lowered"]["reduce"] + 2
    assert conv["lowered"]["convolution"] == 2 and conv["lowered"]["dot_general"] == 0
  res = subprocess.run([sys.executable, "benchmarks/fuse_gate_hlo.py"], cwd=REPO,
                       env=dict(env, KERAS_BACKEND="tensorflow"), capture_output=True, text=True)
  assert res.returncode == 1 and "run it with KERAS_BACKEND=jax" in res.stderr
