"""Builds the small training model under JAX with the initial values from one program each
(`msmt_tf.models.initialization`) and, for reference, its models with every value computed
eagerly, as Keras does; and `MSMTGAN.sample`'s and the sample command's one program
(`msmt_tf.models.stateless`) against the eager forward; writes
what test_one_program_initialization checks.

    KERAS_BACKEND=jax python -m tests.initialization_check OUT.npz SEED TMP_DIR
"""

import os
import sys

if __name__ == "__main__":
  from tests.backend_outputs import _NoTensorFlow  # pylint: disable=g-import-not-at-top
  sys.meta_path.insert(0, _NoTensorFlow())

import jax  # pylint: disable=g-import-not-at-top
import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from msmt_tf import runs, sample  # pylint: disable=g-import-not-at-top
from msmt_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top
from msmt_tf.models import ImageEncoder, initialization, stateless  # pylint: disable=g-import-not-at-top
from tests import backend_step  # pylint: disable=g-import-not-at-top

COMPILES = []


def _listen(event, seconds, **unused):
  if event == "/jax/core/compile/backend_compile_duration":
    COMPILES.append(seconds)


def _models(seed):
  """The values of every model the GAN is made of (not its EMA copy and optimizers)."""
  keras.utils.set_random_seed(seed)
  cfg = ModelConfig(**backend_step.SMALL)
  image = ImageEncoder(cfg.text_dim, "small", name="image_encoder")
  image.build((None, 128, 128, 3))
  models = [cfg.build_generator(backend_step.WORDS_NUM, seed=seed),
            cfg.build_text_encoder(backend_step.WORDS_NUM), image, *cfg.build_discriminators()]
  return [np.asarray(v.value) for m in models for v in m.variables]


class _BuiltByItsCall(keras.layers.Layer):
  """No `build`: Keras builds it by running it, its Dense's variable made in a StatelessScope
  (Keras' own deferred initialization, inside a context here)."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.dense = keras.layers.Dense(3)

  def call(self, x):
    return self.dense(x)


def _sample_checks(gan, seed, out):
  """`MSMTGAN.sample` on JAX (with the CA noise given): one compiled program, reading the
  variables' values at each call; the eager forward for reference."""
  rng = np.random.default_rng(seed)
  tokens = rng.integers(1, backend_step.SMALL["vocab_size"],
                        (3, backend_step.WORDS_NUM)).astype("int32")
  tokens[0, 5:] = 0  # a padded caption
  z = rng.standard_normal((3, gan.generator.z_dim)).astype("float32")
  eps = rng.standard_normal((3, gan.generator.condition_dim)).astype("float32")
  del COMPILES[:]
  first = [np.asarray(x) for x in gan.sample(tokens, z, eps)]
  out["sample_compiles"] = len(COMPILES)
  second = [np.asarray(x) for x in gan.sample(tokens, z, eps)]
  out["sample_compiles_again"] = len(COMPILES) - out["sample_compiles"]
  out["sample_repeatable"] = all(np.array_equal(a, b) for a, b in zip(first, second))
  eager = [np.asarray(x) for x in gan._sample(tokens, z, eps, True)]  # pylint: disable=protected-access
  out["sample_stages"] = len(first)
  out["sample_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(first, eager))
  # A new value of an EMA weight (as a training step's sync writes them) is read by the next call.
  kernel = next(v for v in reversed(gan.generator_ema.variables)  # the last stage's to-image
                if "to_image" in v.path and v.path.endswith("kernel"))
  kernel.assign(kernel.value * 1.5)
  before = len(COMPILES)
  moved = [np.asarray(x) for x in gan.sample(tokens, z, eps)]
  out["sample_compiles_moved"] = len(COMPILES) - before
  eager = [np.asarray(x) for x in gan._sample(tokens, z, eps, True)]  # pylint: disable=protected-access
  out["sample_moved"] = max(float(np.max(np.abs(a - b))) for a, b in zip(moved, first))
  out["sample_moved_diff"] = max(float(np.max(np.abs(a - b))) for a, b in zip(moved, eager))
  # The sample command's forward (the same helper): the last stage, from tokens.
  run = sample._compiled(gan.generator_ema, gan.text_encoder)  # pylint: disable=protected-access
  out["sample_cli_diff"] = float(np.max(np.abs(np.asarray(run(tokens, z, eps)) - eager[-1])))
  # A forward that writes a variable is refused when traced, naming it (its write would be lost).
  norm = keras.layers.BatchNormalization(name="norm_written")
  norm.build((None, 4))
  # ... its variables given or left out of the list.
  for key, variables in (("write_refused", norm.variables), ("unlisted_write_refused", [])):
    try:
      stateless.jit_over_variables(lambda x: norm(x, training=True), variables)(z[:, :4])
      out[key] = ""
    except ValueError as e:
      out[key] = str(e)


def main(out_path, seed, tmp_dir):
  jax.monitoring.register_event_duration_secs_listener(_listen)
  keras.utils.set_random_seed(seed)
  gan = backend_step.build()
  out = {"build_compiles": len(COMPILES)}
  every = gan.state_variables()
  out["without_value"] = sum(v._value is None for v in every)  # pylint: disable=protected-access
  out["ema_equal"] = all(np.array_equal(np.asarray(a.value), np.asarray(b.value))
                         for a, b in zip(gan.generator_ema.variables, gan.generator.variables))
  # An encoder saved and loaded (runs.load_damsm_encoder: inside a context) keeps its weights.
  path = os.path.join(tmp_dir, "text_encoder.keras")
  runs.save_model(gan.text_encoder, path)
  loaded = runs.load_damsm_encoder(path, "RNNTextEncoder")
  out["loaded_equal"] = all(np.array_equal(np.asarray(a.value), np.asarray(b.value))
                            for a, b in zip(loaded.variables, gan.text_encoder.variables)
                            if "float" in str(a.dtype))  # (dropout seeds are not in the file)
  with initialization.one_program_initialization():
    called = _BuiltByItsCall()
    called(keras.KerasTensor((None, 5)))
  out["built_by_call"] = (len(called.variables) == 2 and all(
      v._value is not None for v in called.variables))  # pylint: disable=protected-access
  _sample_checks(gan, seed, out)
  one = _models(seed)
  again = _models(seed)
  initialization.ENABLED = False
  del COMPILES[:]
  eager = _models(seed)
  out["eager_compiles"] = len(COMPILES)
  out["repeatable"] = all(np.array_equal(a, b) for a, b in zip(one, again))
  for i, (a, b) in enumerate(zip(one, eager)):
    out[f"one_{i}"], out[f"eager_{i}"] = a, b
  out["count"] = len(one)
  np.savez(out_path, **out)


if __name__ == "__main__":
  main(sys.argv[1], int(sys.argv[2]), sys.argv[3])
