"""Data-parallel training (JAX, XLA SPMD): N devices and N processes give the one-device step."""

import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from msmt_tf import distribute
from msmt_tf.data import datasets
from tests import backend_step
from tests.test_models import _step_agreement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
needs_jax = pytest.mark.skipif(importlib.util.find_spec("jax") is None,
                               reason="jax is not installed")


@needs_jax
def test_one_and_two_devices_compute_the_same_step(tmp_path):
  """Two steps of the small model over 1 and 2 CPU devices (XLA_FLAGS forces 2 host devices),
  global batch 4 (2 images per device): same losses and same variables. Batch-norm statistics,
  the DAMSM in-batch negatives and the wrong-caption pairs are over the global batch on every
  device count (a per-device computation of any of them changes the losses by far more than the
  bounds).

  Each step is compared from identical inputs (step 1 from the one-device state after step 0), as
  in test_tensorflow_and_jax_train_steps_agree, with its bounds. Measured on the AMD EPYC: losses
  within 5e-7 relative, no weight element off by more than 1e-4, updates within 2e-5 and Adam
  moments within 5e-4 relative RMS (the cross-device all-reduce only changes summation order).
  """
  seed = int(os.environ.get("MSMT_STEP_SEED", "0"))
  out = tmp_path / "dist.npz"
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu",
             XLA_FLAGS="--xla_force_host_platform_device_count=2")
  res = subprocess.run([sys.executable, "-m", "tests.distributed_step", str(out), str(seed)],
                       cwd=REPO, env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  d = np.load(out)
  assert not d["tensorflow_imported"]
  names = list(d["names"])
  starts = [[d[f"start_w{i}"] for i in range(len(names))],
            [d[f"s1start_w{i}"] for i in range(len(names))]]
  for n in (2,):  # 4 devices too until 2026-11-28 (one more compile of the step)
    for s in (0, 1):
      keys = [k[len(f"d1_loss{s}_"):] for k in d.files if k.startswith(f"d1_loss{s}_")]
      assert len(keys) >= 8
      for k in keys:
        assert float(d[f"d{n}_loss{s}_{k}"]) == pytest.approx(float(d[f"d1_loss{s}_{k}"]),
                                                              rel=1e-4, abs=1e-4), (n, s, k)
      stats = _step_agreement(starts[s], [d[f"d1_s{s}_w{i}"] for i in range(len(names))],
                              [d[f"d{n}_s{s}_w{i}"] for i in range(len(names))], names)
      assert stats["miss_fraction"] <= 1e-3, (n, s, stats["misses"])
      assert stats["update_rel"] <= 5e-3, (n, s)
      assert stats["moment"] > 0 and stats["moment_rel"] <= 5e-2, (n, s)
      assert stats["moved"] > len(names) // 2


def test_shards_of_a_batch_are_the_batch(shapes_dir):
  """Each process reads its rows of every global batch; together they are the unsharded batch,
  from any start position (resume)."""
  train = datasets.load_split(shapes_dir, "shapes", "train")
  whole = datasets.DataPipeline(train, 4, 8, num_stages=1, seed=3, start_epoch=1, start_batch=2,
                                num_epochs=1)
  parts = [datasets.DataPipeline(train, 4, 8, num_stages=1, seed=3, start_epoch=1, start_batch=2,
                                 num_epochs=1, num_shards=2, shard_index=i) for i in range(2)]
  batches = list(whole)
  sharded = list(zip(*[list(p) for p in parts]))
  assert len(batches) == len(sharded) == train.num_images // 4 - 2
  for full, (a, b) in zip(batches, sharded):
    assert a["tokens"].shape[0] == b["tokens"].shape[0] == 2
    for k in full:
      np.testing.assert_array_equal(np.concatenate([a[k], b[k]]), full[k], err_msg=k)
  with pytest.raises(ValueError, match="must split evenly"):
    datasets.DataPipeline(train, 5, 8, num_shards=2, shard_index=0)


def test_batch_not_divisible_by_devices_names_the_numbers():
  with pytest.raises(ValueError, match=r"--batch_size 20 \(the global batch\) does not split "
                     r"over 8 devices: use a multiple of 8 \(e\.g\. 16, 24\), or fewer "
                     r"devices: --devices=5 \(or 4, 2, 1\)$"):
    distribute.check_batch_size(20, 8)
  with pytest.raises(ValueError, match=r"or fewer devices: --devices=1$"):  # 3 on 2 devices
    distribute.check_batch_size(3, 2)
  # 2 processes of 4 devices: --devices is per process (2 x 2 and 2 x 1 fit 20, not 4 or 5).
  with pytest.raises(ValueError, match=r"or fewer devices: --devices=2 per process \(or 1\)$"):
    distribute.check_batch_size(20, 8, 2)
  with pytest.raises(ValueError, match=r"4 devices: .*--devices=1 per process$"):
    distribute.check_batch_size(6, 4, 2)
  with pytest.raises(ValueError, match=r"4 devices: use a multiple of 4 \(e\.g\. 4\)$"):
    distribute.check_batch_size(3, 4, 2)  # 2 x 1 does not fit 3 either: none suggested
  distribute.check_batch_size(20, 4)


@needs_jax
def test_more_devices_than_there_are_says_how_to_get_cpu_devices():
  """The JAX placement on a 1-CPU-device process (this one): --devices 2 names what there is and
  how a CPU gets more devices."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["x", "--devices=2"])
  try:
    with pytest.raises(ValueError, match="--devices 2: this process has only 1 cpu device\\(s\\); "
                       "on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N"):
      distribute.placement_from_flags(4, backend="jax")
  finally:
    flags.FLAGS.unparse_flags()


@needs_jax
def test_multi_process_flags_are_checked_before_jax_starts():
  from absl import flags  # pylint: disable=g-import-not-at-top
  for args, message in (
      (["--coordinator_address=127.0.0.1:1", "--num_processes=2", "--process_id=2"],
       "--process_id 2 is not one of the --num_processes 2 processes \\(0 to 1\\)"),
      (["--coordinator_address=127.0.0.1", "--num_processes=2", "--process_id=0"],
       "--coordinator_address '127.0.0.1' is not HOST:PORT")):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["x", *args])
    try:
      with pytest.raises(ValueError, match=message):
        distribute.initialize_from_flags()
    finally:
      flags.FLAGS.unparse_flags()


def test_commands_on_one_device_note_data_parallel_flags(capsys):
  """sample, export, metric_main and pretrain_damsm accept the data-parallel flags (a run's
  flags.txt names them) and say they do nothing there; at their defaults, nothing is said."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  flags.FLAGS.unparse_flags()
  try:
    flags.FLAGS(["x"])
    distribute.note_single_device("sample")
    assert capsys.readouterr().err == ""
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["x", "--devices=2", "--num_processes=2"])
    distribute.note_single_device("sample")
    assert capsys.readouterr().err == ("note: --devices, --num_processes apply to train and "
                                       "bench only; sample runs in one process on one device\n")
  finally:
    flags.FLAGS.unparse_flags()


def _free_ports(n):
  """`n` distinct ports free now, below the kernel's ephemeral range: a port the kernel hands
  out for "any port" (bind to 0, a client's connection) could be taken by another process (the
  other test worker's training) between this check and the child's bind, tens of seconds later
  under load. Each is checked by binding it, all held until the n are chosen."""
  import random  # pylint: disable=g-import-not-at-top
  try:
    with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
      low = int(f.read().split()[0])
  except (OSError, ValueError, IndexError):
    low = 32768
  rng = random.Random(os.getpid() ^ int(time.time() * 1e6))
  held = []
  try:
    while len(held) < n:
      s = socket.socket()
      try:
        s.bind(("0.0.0.0", rng.randrange(20000, max(20001, low))))
      except OSError:
        s.close()
        continue
      held.append(s)
    return [s.getsockname()[1] for s in held]
  finally:
    for s in held:
      s.close()


def _free_port():
  return _free_ports(1)[0]


def _losses(run_dir):
  with open(os.path.join(run_dir, "losses.jsonl")) as f:
    return {e["step"]: e for e in map(json.loads, f)}


def _logged_lines(path):
  """Complete lines of a log being written (0 before it exists)."""
  try:
    with open(path) as f:
      return f.read().count("\n")
  except FileNotFoundError:
    return 0


def _sigterm_once_logged(log, procs, target, lines=2, timeout_s=600):
  """Sends SIGTERM to `target` alone once `log` has `lines` complete lines, unless one of
  `procs` (the run's processes) has ended first or `timeout_s` passed."""
  deadline = time.time() + timeout_s
  while _logged_lines(log) < lines and all(p.poll() is None for p in procs) and \
      time.time() < deadline:
    time.sleep(0.05)
  if all(p.poll() is None for p in procs):
    target.send_signal(signal.SIGTERM)


def _stopped_together(run_dir, signalled, other, steps):
  """Checks a 2-process run whose process `signalled` (its stderr) alone got SIGTERM once step
  2 was logged: both said they stopped after the same step, before `steps`, naming its
  checkpoint, the other one as another process's signal; returns that step."""
  from msmt_tf import checkpoint  # pylint: disable=g-import-not-at-top
  stopped_at, path = checkpoint.latest(run_dir)
  assert 3 <= stopped_at < steps
  assert "SIGTERM: stopping after a step all processes agree on (one of the next three)" in \
      signalled, signalled[-2000:]
  resume = f"the newest checkpoint is {path} (step {stopped_at}): continue"
  assert f"stopped by SIGTERM at step {stopped_at}; {resume}" in signalled, signalled[-2000:]
  assert (f"stopped by SIGTERM (sent to another process of the run) at step {stopped_at}; "
          f"{resume}") in other, other[-2000:]
  assert not os.path.exists(os.path.join(run_dir, "generator_ema.keras"))
  return stopped_at


@needs_jax
def test_two_processes_train_like_one_and_stop_and_resume_exactly(tmp_path):
  """2 processes x 1 CPU device (coordinator on 127.0.0.1, gloo collectives), each reading its half
  of every batch, give the losses of 1 process x 2 devices bit for bit; only process 0 writes.
  SIGTERM to process 1 alone (a node's time limit) stops both after the same step, with a
  checkpoint of that step (the only one: --checkpoint_every is beyond the run), each saying so
  with exit status 143; `--resume` on both continues exactly."""
  from msmt_tf.data import shapes  # pylint: disable=g-import-not-at-top
  data, damsm = str(tmp_path / "data"), str(tmp_path / "damsm")
  shapes.write_dataset(data, num_train=16, num_test=4, seed=1, image_size=64)
  common = ["--flagfile=configs/smoke.cfg", "--num_stages=1", f"--data_dir={data}",
            f"--damsm_dir={damsm}"]
  res = subprocess.run([sys.executable, "-m", "msmt_tf.pretrain_damsm", *common], cwd=REPO,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  # Signalled once step 2 is logged; the stop comes within 3 steps of the signal: margin to 10.
  steps = 10

  ref_dir = str(tmp_path / "one_process")
  res = subprocess.run([sys.executable, "-m", "msmt_tf.train", *common, f"--run_dir={ref_dir}",
                        f"--max_steps={steps}"], cwd=REPO, capture_output=True, text=True,
                       env=dict(env, XLA_FLAGS="--xla_force_host_platform_device_count=2"),
                       timeout=600)
  assert res.returncode == 0, res.stderr[-2000:]
  ref = _losses(ref_dir)

  run_dir = str(tmp_path / "two_processes")

  def start(*extra):
    port = _free_port()
    return [subprocess.Popen(
        [sys.executable, "-m", "msmt_tf.train", *common, f"--run_dir={run_dir}",
         f"--max_steps={steps}", "--checkpoint_every=1000",
         f"--coordinator_address=127.0.0.1:{port}", "--num_processes=2", f"--process_id={i}",
         *extra], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True) for i in range(2)]

  procs = start()
  try:
    # Process 1 only: process 0 learns it from the step.
    _sigterm_once_logged(os.path.join(run_dir, "losses.jsonl"), procs, procs[1])
    outs = [p.communicate(timeout=600) for p in procs]
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
  assert [p.returncode for p in procs] == [143, 143], [o[1][-2000:] for o in outs]
  stopped_at = _stopped_together(run_dir, signalled=outs[1][1], other=outs[0][1], steps=steps)
  assert os.listdir(os.path.join(run_dir, "checkpoints")) == [f"ckpt-{stopped_at:08d}.npz"]
  assert sorted(_losses(run_dir)) == list(range(1, stopped_at + 1))
  with open(os.path.join(run_dir, "config.json")) as f:
    assert json.load(f)["world"] == {"processes": 2, "devices": 2}

  procs = start("--resume")
  outs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outs):
    assert p.returncode == 0, err[-3000:]
  got = _losses(run_dir)
  assert sorted(got) == list(range(1, steps + 1))  # each step logged once: process 0 writes
  for step in range(1, steps + 1):
    assert got[step] == ref[step], step  # bit for bit: the same SPMD program
  # Piped stdout: progress as plain lines (msmt_tf.progress), on process 0 only.
  assert f"{steps}/{steps} steps (100%)" in outs[0][0], outs[0][0][-2000:]
  assert f"trained to step {steps}" in outs[1][0] and " steps (" not in outs[1][0]
