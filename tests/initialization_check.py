"""Builds the small training model under JAX with the initial values from one program each
(`msmt_tf.models.initialization`) and, for reference, the generator and text encoder with every
value computed eagerly, as Keras does; writes what test_one_program_initialization checks.

    KERAS_BACKEND=jax python -m tests.initialization_check OUT.npz SEED
"""

import sys

if __name__ == "__main__":
  from tests.backend_outputs import _NoTensorFlow  # pylint: disable=g-import-not-at-top
  sys.meta_path.insert(0, _NoTensorFlow())

import jax  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from msmt_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top
from msmt_tf.models import initialization  # pylint: disable=g-import-not-at-top
from tests import backend_step  # pylint: disable=g-import-not-at-top

COMPILES = []


def _listen(event, seconds, **unused):
  if event == "/jax/core/compile/backend_compile_duration":
    COMPILES.append(seconds)


def _generator_and_text(seed):
  keras.utils.set_random_seed(seed)
  cfg = ModelConfig(**backend_step.SMALL)
  return [np.asarray(v.value) for m in (cfg.build_generator(backend_step.WORDS_NUM, seed=seed),
                                        cfg.build_text_encoder(backend_step.WORDS_NUM))
          for v in m.variables]


def main(out_path, seed):
  jax.monitoring.register_event_duration_secs_listener(_listen)
  keras.utils.set_random_seed(seed)
  gan = backend_step.build()
  out = {"build_compiles": len(COMPILES)}
  every = gan.state_variables()
  out["without_value"] = sum(v._value is None for v in every)  # pylint: disable=protected-access
  out["ema_equal"] = all(np.array_equal(np.asarray(a.value), np.asarray(b.value))
                         for a, b in zip(gan.generator_ema.variables, gan.generator.variables))
  one = _generator_and_text(seed)
  again = _generator_and_text(seed)
  initialization.ENABLED = False
  del COMPILES[:]
  eager = _generator_and_text(seed)
  out["eager_compiles"] = len(COMPILES)
  out["repeatable"] = all(np.array_equal(a, b) for a, b in zip(one, again))
  for i, (a, b) in enumerate(zip(one, eager)):
    out[f"one_{i}"], out[f"eager_{i}"] = a, b
  out["count"] = len(one)
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]))
