"""Data-parallel training on the TensorFlow backend (tf.distribute): 2 replicas on one process and
2 worker processes compute the one-device step at the same global batch."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from msmt_tf import distribute
from msmt_tf import losses
from tests.test_distribute import _free_ports
from tests.test_distribute import _sigterm_once_logged
from tests.test_distribute import _stopped_together
from tests.test_models import _step_agreement

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, KERAS_BACKEND="tensorflow", CUDA_VISIBLE_DEVICES="")
ENV.pop("TF_CONFIG", None)

# Bounds (see test_two_replicas_compute_the_one_device_step for the measured values).
LOSS_REL = 2e-5
MISS_FRACTION = 1e-3
UPDATE_REL = 5e-3
MOMENT_REL = 5e-2


@pytest.fixture(scope="module")
def two_replicas(tmp_path_factory):
  """The one-device step and MirroredStrategy over 2 logical CPU devices (one process, global
  batch 4), from the same weights: tests/distributed_step_tf.py."""
  seed = int(os.environ.get("MSMT_STEP_SEED", "0"))
  out = tmp_path_factory.mktemp("tf_distribute") / "local.npz"
  res = subprocess.run([sys.executable, "-m", "tests.distributed_step_tf", str(out),
                        str(seed)], cwd=REPO, env=ENV, capture_output=True, text=True,
                       timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  return out


def _check_step(ref, got, s, where):
  """Step `s` of `got` (a dict: losses `loss{s}_*`, state `s{s}_w*`) against the one-device step
  in `ref`, from the same start state."""
  names = list(ref["names"])
  start = [ref[f"{'start' if s == 0 else 's1start'}_w{i}"] for i in range(len(names))]
  keys = [k[len(f"d1_loss{s}_"):] for k in ref.files if k.startswith(f"d1_loss{s}_")]
  assert len(keys) >= 8
  for k in keys:
    assert float(got[f"loss{s}_{k}"]) == pytest.approx(float(ref[f"d1_loss{s}_{k}"]),
                                                       rel=LOSS_REL, abs=1e-9), (where, s, k)
  stats = _step_agreement(start, [ref[f"d1_s{s}_w{i}"] for i in range(len(names))],
                          [got[f"s{s}_w{i}"] for i in range(len(names))], names)
  assert stats["miss_fraction"] <= MISS_FRACTION, (where, s, stats["misses"])
  assert stats["update_rel"] <= UPDATE_REL, (where, s, stats["update_rel"])
  assert stats["moment"] > 0 and stats["moment_rel"] <= MOMENT_REL, (where, s,
                                                                      stats["moment_rel"])
  assert stats["moved"] > len(names) // 2  # the step really changed the state compared


def _replicas_of(ref, n):
  """The `d{n}_` entries of the local run as the keys `_check_step` reads."""
  prefix = f"d{n}_"
  return {k[len(prefix):]: ref[k] for k in ref.files if k.startswith(prefix)}


def test_two_replicas_compute_the_one_device_step(two_replicas):
  """Two steps of the small model, global batch 4, no z or CA noise given (the step draws them):
  MirroredStrategy over 2 logical CPU devices gives the one-device step's losses and variables
  (generator, EMA generator, discriminators with their spectral-norm vectors, batch-norm
  statistics, Adam moments), and both replicas' copies of every variable stay identical. Each step
  from identical inputs (step 1 from the one-device state after step 0), as in
  test_tensorflow_and_jax_train_steps_agree.

  Measured over MSMT_STEP_SEED=0..9 on a 2-core AMD EPYC (`python -m tests.distributed_step_tf
  OUT.npz SEED`; BUILD.md "Multi-GPU and multi-host"), largest over seeds and both steps: losses
  2.3e-6 relative (every loss, kl included), model-weight elements off by more than 1e-4 1.6e-4
  of them (Adam's sign flips on near-zero gradients, almost all in step 0), updates 1.0e-3 and
  Adam moments 4.7e-3 relative RMS; the replicas' copies equal (spread 0) on every seed.
  Bounds, 5-10x those for other CPUs' float32 kernels: losses 2e-5, elements 1e-3, updates 5e-3,
  moments 5e-2 (the moments are the gradients of an ill-conditioned tiny-batch step: batch norm
  over 2-4 rows, DAMSM softmaxes).
  Each synchronisation left out fails by far (measured, seed 0): per-replica DAMSM negatives
  (local rows only) change damsm_word by 52%; per-replica wrong-caption pairs d_loss_64 by 5.7%;
  per-replica batch norm damsm_word by 30% (and the replicas' statistics differ); per-replica
  noise draws damsm_sent by 28%.
  """
  ref = np.load(two_replicas)
  assert int(ref["replicas"]) == 2
  assert float(ref["replica_spread"]) == 0.0
  got = _replicas_of(ref, 2)
  for s in (0, 1):
    _check_step(ref, got, s, "2 replicas")


def _losses(run_dir):
  with open(os.path.join(run_dir, "losses.jsonl")) as f:
    return [json.loads(line) for line in f]


def _checkpoint(run_dir, step):
  with np.load(os.path.join(run_dir, "checkpoints", f"ckpt-{step:08d}.npz")) as d:
    return {k: d[k] for k in d.files if k != "__meta__"}


def test_two_workers_train_like_one_device(tmp_path):
  """`msmt_tf.train` on 2 localhost workers (TF_CONFIG, MultiWorkerMirroredStrategy, one CPU
  device each, each reading its 2 rows of the global batch of 4) against the same run on one
  device: only the chief writes (each step logged once, no progress bar on worker 1); the run
  records 2 processes x 1 device; step 1 (from the same seeded weights and batch) has the
  one-device losses and state within the bounds above, the same noise-RNG state and optimizer
  counters; step 2's losses (from states that already differ by rounding) within 1e-3
  (measured 2e-4). SIGTERM to worker 1 alone, once step 2 is logged, stops both workers after
  the same step (exit status 143, each naming it and its checkpoint), long before their
  --max_steps. Bounded: every process is killed after 600 s."""
  from msmt_tf.data import shapes  # pylint: disable=g-import-not-at-top
  data, damsm = str(tmp_path / "data"), str(tmp_path / "damsm")
  shapes.write_dataset(data, num_train=16, num_test=4, seed=1, image_size=64)
  common = ["--flagfile=configs/smoke.cfg", f"--data_dir={data}", f"--damsm_dir={damsm}"]
  res = subprocess.run([sys.executable, "-m", "msmt_tf.pretrain_damsm", *common], cwd=REPO,
                       env=ENV, capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-2000:]
  train = [sys.executable, "-m", "msmt_tf.train", *common, "--max_steps=2"]
  one, two = str(tmp_path / "one_device"), str(tmp_path / "two_workers")
  workers = [f"127.0.0.1:{port}" for port in _free_ports(2)]
  procs = [subprocess.Popen(train + [f"--run_dir={one}"], cwd=REPO, env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)]
  for i in range(2):
    env = dict(ENV, TF_CONFIG=json.dumps({"cluster": {"worker": workers},
                                          "task": {"type": "worker", "index": i}}))
    procs.append(subprocess.Popen(train[:-1] + ["--max_steps=40", "--keep_checkpoints=100",
                                              f"--run_dir={two}"],
                                  cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True))
  outs = []
  try:
    # Worker 1 only: the chief learns it from the step.
    _sigterm_once_logged(os.path.join(two, "losses.jsonl"), procs[1:], procs[2])
    for p in procs:
      outs.append(p.communicate(timeout=600))
  finally:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.communicate()
  assert procs[0].returncode == 0, outs[0][1][-3000:]
  assert "trained to step 2" in outs[0][0]
  assert [p.returncode for p in procs[1:]] == [143, 143], [o[1][-3000:] for o in outs[1:]]
  stopped_at = _stopped_together(two, signalled=outs[2][1], other=outs[1][1], steps=40)
  assert " steps (" not in outs[2][0]  # no progress lines but the chief's (stopped in < 60 s)
  with open(os.path.join(two, "config.json")) as f:
    assert json.load(f)["world"] == {"processes": 2, "devices": 2}
  ref, got = _losses(one), _losses(two)
  # each step logged once: only the chief writes
  assert [e["step"] for e in got] == list(range(1, stopped_at + 1))
  for k, v in ref[0].items():
    assert got[0][k] == pytest.approx(v, rel=LOSS_REL, abs=1e-9), k
  for k, v in ref[1].items():
    assert got[1][k] == pytest.approx(v, rel=1e-3, abs=1e-9), k
  want, have = _checkpoint(one, 1), _checkpoint(two, 1)
  assert sorted(want) == sorted(have)
  misses = elements = 0
  moment = moment_diff = 0.0
  for k, w in want.items():
    h = have[k]
    if not np.issubdtype(w.dtype, np.floating):  # optimizer counters, noise RNG state
      np.testing.assert_array_equal(h, w, err_msg=k)
    elif k.startswith(("g_optimizer", "d_optimizer")):
      moment += float(np.sum(w.astype(np.float64) ** 2))
      moment_diff += float(np.sum((h.astype(np.float64) - w) ** 2))
    else:
      misses += int(np.sum(~np.isclose(h, w, rtol=1e-4, atol=1e-4)))
      elements += w.size
  assert misses <= MISS_FRACTION * elements, (misses, elements)
  assert moment > 0 and np.sqrt(moment_diff / moment) <= MOMENT_REL
  # The one-device run resumed data-parallel (2 logical CPU devices, MirroredStrategy) with a new
  # discriminator rate: the restored rates are read and set through mirrored variables.
  res = subprocess.run(train[:-1] + ["--max_steps=3", f"--run_dir={one}", "--resume",
                                     "--devices=2", "--lr_d=1e-4"], cwd=REPO, env=ENV,
                       capture_output=True, text=True, timeout=600)
  assert res.returncode == 0, res.stderr[-3000:]
  assert "note: continuing with --lr_d 0.0002 -> 0.0001" in res.stdout
  assert ("note: continuing on 2 device(s) in 1 process(es) (the run trained on 1 in 1 to step "
          "2)") in res.stdout, res.stdout
  assert [e["step"] for e in _losses(one)] == [1, 2, 3]
  with open(os.path.join(one, "config.json")) as f:
    record = json.load(f)
  assert record["world"] == {"processes": 1, "devices": 2}
  assert record["world_changes"] == [{"step": 2, "from": {"processes": 1, "devices": 1},
                                      "to": {"processes": 1, "devices": 2}}]


@pytest.mark.parametrize("shards", [1, 2, 3, 6])
@pytest.mark.parametrize("class_ids", [np.array([1, 2, 1, 3, 2, 1]), None])
def test_loss_shares_sum_to_the_global_batch_loss(shards, class_ids):
  """The `*_share` losses of the replicas' rows, against the gathered global batch, sum to the
  global batch's loss: DAMSM word and sentence losses (negatives and class mask over the global
  batch) and the discriminator loss (wrong caption of row i = row i + 1's; none for the last)."""
  rng = np.random.default_rng(5)
  big, length, d = 6, 5, 4
  regions = rng.standard_normal((big, 3, 3, d)).astype("float32")
  lens = np.array([5, 2, 4, 1, 3, 5])
  mask = np.arange(length)[None] < lens[:, None]
  words = (rng.standard_normal((big, length, d)) * mask[..., None]).astype("float32")
  code, sent = (rng.standard_normal((big, d)).astype("float32") for _ in range(2))
  logits = [rng.standard_normal(big).astype("float32") * 3 for _ in range(4)]
  wrong_pairs = rng.standard_normal(big).astype("float32") * 3  # logit of (image i, sentence i+1)
  want_w = losses.damsm_word_loss(regions, words, mask, class_ids, 4.0, 5.0, 10.0)
  want_s = losses.damsm_sentence_loss(code, sent, class_ids, 10.0)
  want_d, want_parts = losses.discriminator_loss(*logits, wrong_pairs[:-1])
  b = big // shards
  got_w, got_s, got_d = np.zeros(2), np.zeros(2), 0.0
  got_parts = dict.fromkeys(want_parts, 0.0)
  for r in range(shards):
    rows = np.arange(r * b, (r + 1) * b, dtype="int32")
    own = None if class_ids is None else class_ids[rows]
    got_w += [float(x) for x in losses.damsm_word_loss_share(
        regions[rows], words[rows], mask[rows], own, regions, words, mask, class_ids, rows,
        4.0, 5.0, 10.0)]
    got_s += [float(x) for x in losses.damsm_sentence_loss_share(
        code[rows], sent[rows], own, code, sent, class_ids, rows, 10.0)]
    wrong = np.where(rows < big - 1, wrong_pairs[rows], 1e4).astype("float32")  # masked out
    total, parts = losses.discriminator_loss_share(
        *[x[rows] for x in logits], wrong, (rows < big - 1).astype("float32"), 1.0 / shards,
        big - 1)
    got_d += float(total)
    for k in parts:
      got_parts[k] += float(parts[k])
  np.testing.assert_allclose(got_w, [float(x) for x in want_w], rtol=1e-5)
  np.testing.assert_allclose(got_s, [float(x) for x in want_s], rtol=1e-5)
  assert got_d == pytest.approx(float(want_d), rel=1e-5)
  for k, v in want_parts.items():
    assert got_parts[k] == pytest.approx(float(v), rel=1e-5), k


def test_tf_config_world():
  def world(conf):
    return distribute.tf_config_world({"TF_CONFIG": json.dumps(conf)})

  hosts = ["h:1", "h:2", "h:3"]
  assert distribute.tf_config_world({}) is None
  assert world({"cluster": {"worker": hosts[:1]}, "task": {"type": "worker", "index": 0}}) is None
  assert world({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": 2}}) == (3, 2)
  chief = {"chief": hosts[:1], "worker": hosts[1:]}
  assert world({"cluster": chief, "task": {"type": "chief", "index": 0}}) == (3, 0)
  assert world({"cluster": chief, "task": {"type": "worker", "index": 0}}) == (3, 1)
  with pytest.raises(ValueError, match="TF_CONFIG task ps:0 is not a chief or worker"):
    world({"cluster": {"worker": hosts, "ps": hosts[:1]}, "task": {"type": "ps", "index": 0}})
  with pytest.raises(ValueError, match="TF_CONFIG task worker:3"):
    world({"cluster": {"worker": hosts}, "task": {"type": "worker", "index": 3}})
  with pytest.raises(ValueError, match="TF_CONFIG is not a valid cluster description"):
    distribute.tf_config_world({"TF_CONFIG": "{not json"})


def test_tensorflow_placement_from_flags(monkeypatch):
  """On a CPU-only process: one device is the plain step (None, as before); a batch that does not
  split over the devices asked for, or JAX's multi-process flags, are refused by name before any
  device is set up."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  if tf.config.list_physical_devices("GPU"):
    pytest.skip("checks the CPU-only choices")
  monkeypatch.delenv("TF_CONFIG", raising=False)
  fl = flags.FLAGS
  fl.unparse_flags()
  try:
    fl(["x"])
    assert distribute.placement_from_flags(4, "tensorflow") is None
    fl.unparse_flags()
    fl(["x", "--devices=3"])
    with pytest.raises(ValueError, match=r"--batch_size 4 \(the global batch\) does not split "
                       r"over 3 devices: use a multiple of 3 \(e\.g\. 3, 6\)"):
      distribute.placement_from_flags(4, "tensorflow")
    fl.unparse_flags()
    fl(["x", "--num_processes=2"])
    with pytest.raises(ValueError, match="TF_CONFIG"):
      distribute.placement_from_flags(4, "tensorflow")
    fl.unparse_flags()
    fl(["x", "--process_id=1"])  # JAX's multi-host flag: refused, not ignored
    with pytest.raises(ValueError, match="--process_id are for KERAS_BACKEND=jax"):
      distribute.placement_from_flags(4, "tensorflow")
    fl.unparse_flags()
    # Several Slurm tasks without TF_CONFIG would each train alone into the same run directory.
    monkeypatch.setenv("SLURM_NTASKS", "2")
    fl(["x"])
    with pytest.raises(ValueError, match="SLURM_NTASKS=2 but no multi-worker TF_CONFIG"):
      distribute.placement_from_flags(4, "tensorflow")
    fl.unparse_flags()
    monkeypatch.delenv("SLURM_NTASKS")
    monkeypatch.setenv("TF_CONFIG", json.dumps({"cluster": {"worker": ["h:1", "h:2"]},
                                                "task": {"type": "worker", "index": 1}}))
    fl(["x"])
    with pytest.raises(ValueError, match=r"--batch_size 5 \(the global batch\) does not split "
                       r"over 2 devices: use a multiple of 2 \(e\.g\. 4, 6\)"):
      distribute.placement_from_flags(5, "tensorflow")
  finally:
    fl.unparse_flags()


def test_distributed_step_refuses_a_model_built_outside_its_strategy_and_xla():
  """A TFPlacement needs the model's variables mirrored by its strategy, and no --jit_compile;
  a JAX placement is refused under TensorFlow. Each is said by name, before anything runs."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from tests import backend_step  # pylint: disable=g-import-not-at-top
  placement = distribute.TFPlacement(tf.distribute.MirroredStrategy(["/cpu:0"]))
  plain = backend_step.build()
  with pytest.raises(ValueError, match=r"generator's variables \(\S+, \d+ in all\) were not "
                     r"created under its strategy"):
    plain.make_train_function(jit_compile=False, placement=placement)
  with placement.scope():
    half = backend_step.build()
  # Models mirrored, one discriminator replaced by one built outside the strategy: named.
  half.discriminators[0] = plain.discriminators[0]
  with pytest.raises(ValueError, match=f"{plain.discriminators[0].name}'s variables"):
    half.make_train_function(jit_compile=False, placement=placement)
  with placement.scope():
    mirrored = backend_step.build()
  with pytest.raises(ValueError, match="--jit_compile is not supported by the distributed "
                     "TensorFlow step"):
    mirrored.make_train_function(jit_compile=True, placement=placement)
  assert mirrored.make_train_function(jit_compile=False, placement=placement) is not None

  class JaxLike:  # a placement without a strategy (msmt_tf.distribute.Placement's interface)
    num_devices = 2

  with pytest.raises(ValueError, match="JaxLike does not place a KERAS_BACKEND=tensorflow step"):
    plain.make_train_function(jit_compile=False, placement=JaxLike())
