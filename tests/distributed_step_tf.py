"""Runs the TensorFlow data-parallel train step (tf.distribute) and the single-device step from the
same weights and global batch and writes the losses and every variable after each step; used to
check that N replicas compute the single-device step's math.

    python -m tests.distributed_step_tf OUT.npz SEED

One process: the single-device step, then MirroredStrategy over 2 logical CPU devices (set before
TensorFlow initialises).

The batch has no z or CA noise: the step draws them from the models' seed generators (the same
on both sides). Step 0 starts from the seeded weights; step 1 from the one-device state after
step 0 (see tests/test_models.py, test_tensorflow_and_jax_train_steps_agree, for why each step is
compared from identical inputs). Also written: `replica_spread`, the largest difference between
the replicas' copies of any state variable after the steps (the copies must stay identical).
"""

import os
import sys

os.environ["KERAS_BACKEND"] = "tensorflow"
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # pylint: disable=g-import-not-at-top

REPLICAS = 2
BATCH = 4


def _replica_spread(gan):
  """Largest |difference| between the per-replica copies of any state variable."""
  spread = 0.0
  for v in gan.state_variables():
    strategy = v.value.distribute_strategy
    copies = [np.asarray(x, np.float64) for x in strategy.experimental_local_results(v.value)]
    for c in copies[1:]:
      spread = max(spread, float(np.max(np.abs(c - copies[0]), initial=0.0)))
  return spread


def main(out_path, seed):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpu = tf.config.list_physical_devices("CPU")[0]
  tf.config.set_logical_device_configuration(
      cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(REPLICAS)])
  import keras  # pylint: disable=g-import-not-at-top
  from msmt_tf import distribute  # pylint: disable=g-import-not-at-top
  from tests import backend_step  # pylint: disable=g-import-not-at-top

  keras.utils.set_random_seed(seed)
  ref = backend_step.build()
  names = [n for n, _ in backend_step.float_state(ref)]
  start = [x for _, x in backend_step.float_state(ref)]
  batch = backend_step.batch_of(np.random.default_rng(11 + seed), BATCH)
  # z and the CA noise are drawn by the step (same seeds on both sides): N replicas must draw
  # the global batch's noise and take their rows.
  batch = {k: v for k, v in batch.items() if k not in ("z", "ca_noise")}
  out = {"names": np.array(names), "replicas": REPLICAS}
  out.update({f"start_w{i}": x for i, x in enumerate(start)})
  steps = backend_step.run_steps(ref, batch, [start, None])
  reference = steps[0][1]
  out.update({f"s1start_w{i}": x for i, x in enumerate(reference)})
  for s, (logs, state) in enumerate(steps):
    out.update({f"d1_s{s}_w{i}": x for i, x in enumerate(state)})
    out.update({f"d1_loss{s}_{k}": v for k, v in logs.items()})

  strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(REPLICAS)])
  placement = distribute.TFPlacement(strategy)
  with placement.scope():
    gan = backend_step.build()
  steps = backend_step.run_steps(gan, batch, [start, reference], placement=placement)
  for s, (logs, state) in enumerate(steps):
    out.update({f"d{REPLICAS}_s{s}_w{i}": x for i, x in enumerate(state)})
    out.update({f"d{REPLICAS}_loss{s}_{k}": v for k, v in logs.items()})
  out["replica_spread"] = _replica_spread(gan)
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
