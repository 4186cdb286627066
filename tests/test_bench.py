"""The benchmark command runs where the GPU machine runs it: Keras on JAX, TensorFlow absent."""

import importlib.util
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RUNNER = """
import runpy, sys
from tests.backend_outputs import _NoTensorFlow
sys.meta_path.insert(0, _NoTensorFlow())
sys.argv = ["msmt_tf.bench"] + sys.argv[1:]
runpy.run_module("msmt_tf.bench", run_name="__main__")
"""


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_bench_prints_one_json_line_on_jax_without_tensorflow(tmp_path):
  out = tmp_path / "bench.jsonl"
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", RUNNER, "--flagfile=configs/smoke.cfg",
                        "--vocab_size=60", "--steps=2", "--warmup=0", "--batch_size=3",
                        f"--out={out}"], cwd=REPO, env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  lines = [l for l in res.stdout.splitlines() if l.startswith("{")]
  assert len(lines) == 1
  result = json.loads(lines[0])
  assert json.loads(out.read_text()) == result
  assert result["backend"] == "jax" and result["device"].startswith("cpu")
  assert result["batch_size"] == 3 and result["steps"] == 2 and result["xla"]
  assert 0 < result["ms_per_step_min"] <= result["ms_per_step_median"] <= result["ms_per_step_max"]
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
  # The same count without running anything (how the paper configs are counted on a CPU).
  res = subprocess.run([sys.executable, "-c", RUNNER, "--flagfile=configs/smoke.cfg",
                        "--vocab_size=60", "--batch_size=3", "--flops_only"], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  counted = json.loads([l for l in res.stdout.splitlines() if l.startswith("{")][0])
  assert counted["gflop_per_step"] == result["gflop_per_step"]
  assert "ms_per_step_median" not in counted
  # BUILD.md's table from the collected lines.
  res = subprocess.run([sys.executable, "-m", "msmt_tf.bench", f"--table={out}"], cwd=REPO,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  rows = res.stdout.strip().splitlines()
  assert rows[0].startswith("| date | backend | device |") and len(rows) == 3
  assert f"| {result['ms_per_step_median']:.1f} (" in rows[2] and "| jax | cpu" in rows[2]


def test_bench_refuses_bad_flags():
  for extra, message in (("--steps=0", "--steps must be >= 1"),
                         ("--flops_only", "--flops_only needs KERAS_BACKEND=jax")):
    res = subprocess.run([sys.executable, "-m", "msmt_tf.bench", "--flagfile=configs/smoke.cfg",
                          "--vocab_size=60", extra], cwd=REPO, capture_output=True, text=True)
    assert res.returncode != 0 and message in res.stderr, res.stderr[-2000:]
