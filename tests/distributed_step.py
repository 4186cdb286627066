"""Runs the data-parallel JAX train step over 1 and 2 CPU devices from the same weights and
global batch and writes the losses and every variable after each step; used to check that N
devices compute the single-device step's math.

    XLA_FLAGS=--xla_force_host_platform_device_count=4 KERAS_BACKEND=jax \
        python -m tests.distributed_step OUT.npz SEED

Step 0 starts from the seeded weights on every device count; step 1 starts from the one-device
state after step 0 (see tests/test_models.py, test_tensorflow_and_jax_train_steps_agree, for
why each step is compared from identical inputs).
"""

import sys

if __name__ == "__main__":
  from tests.backend_outputs import _NoTensorFlow  # pylint: disable=g-import-not-at-top
  sys.meta_path.insert(0, _NoTensorFlow())

import jax  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from msmt_tf import distribute  # pylint: disable=g-import-not-at-top
from tests import backend_step  # pylint: disable=g-import-not-at-top

COUNTS = (1, 2)  # 2 images per device at global batch 4: a device axis mixed up with the
# per-device batch axis shows (with one image per device, both orders agree)
BATCH = 4


def main(out_path, seed):
  keras.utils.set_random_seed(seed)
  gan = backend_step.build()
  names = [n for n, _ in backend_step.float_state(gan)]
  start = [x for _, x in backend_step.float_state(gan)]
  batch = backend_step.batch_of(np.random.default_rng(11 + seed), BATCH)
  assert len(jax.devices()) >= max(COUNTS), jax.devices()
  out = {"names": np.array(names), "devices": np.array(COUNTS)}
  for i, x in enumerate(start):
    out[f"start_w{i}"] = x
  integers = [(v, keras.ops.convert_to_numpy(v.value)) for v in gan.state_variables()
              if "float" not in str(v.dtype)]  # optimizer iterations, RNG states
  reference = None
  for n in COUNTS:
    for v, x in integers:  # every device count starts from the same integer state
      v.assign(x)
    placement = distribute.Placement(jax.devices()[:n]) if n > 1 else None
    starts = [start, None if reference is None else reference]
    steps = backend_step.run_steps(gan, batch, starts, placement=placement)
    if reference is None:
      reference = steps[0][1]
    for s, (logs, state) in enumerate(steps):
      out.update({f"d{n}_s{s}_w{i}": x for i, x in enumerate(state)})
      out.update({f"d{n}_loss{s}_{k}": v for k, v in logs.items()})
  for i, x in enumerate(reference):
    out[f"s1start_w{i}"] = x
  np.savez(out_path, tensorflow_imported="tensorflow" in sys.modules, **out)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
