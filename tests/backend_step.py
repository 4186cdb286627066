"""Runs MSMT-GAN training steps from given states and batch under the current KERAS_BACKEND and
writes the losses and every variable after each step; used to compare TensorFlow and JAX.

    KERAS_BACKEND=jax python -m tests.backend_step IN.npz OUT.npz

IN holds the batch (`b_*`) and, per step s, the float state to start that step from (`s{s}_w*`):
step 0 starts from the initial weights, step 1 from the *other* backend's state after step 0, so
each step is compared from identical inputs (see the test's docstring for why).
"""

import re
import sys

if __name__ == "__main__":
  from tests.backend_outputs import _NoTensorFlow  # pylint: disable=g-import-not-at-top
  sys.meta_path.insert(0, _NoTensorFlow())

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from msmt_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top

SMALL = dict(vocab_size=30, channels=4, memory_dim=6, grid=4, num_heads=2, num_res=1,
             condition_dim=8, z_dim=6, text_dim=16, embedding_dim=10, num_stages=2, ndf=4)
WORDS_NUM = 7
BATCH = 3


def build():
  from msmt_tf.models import ImageEncoder  # pylint: disable=g-import-not-at-top
  from msmt_tf.models.msmt_gan import LossConfig, MSMTGAN  # pylint: disable=g-import-not-at-top
  cfg = ModelConfig(**SMALL)
  text = cfg.build_text_encoder(WORDS_NUM)
  image = ImageEncoder(cfg.text_dim, "small", name="image_encoder")
  image.build((None, 128, 128, 3))
  gan = MSMTGAN(cfg.build_generator(WORDS_NUM, seed=1), cfg.build_discriminators(), text, image,
                LossConfig(lambda3=5.0), WORDS_NUM, ema_decay=0.9, seed=1)
  adam = lambda lr: keras.optimizers.Adam(lr, beta_1=0.5, beta_2=0.999)
  gan.compile(adam(2e-4), [adam(2e-4) for _ in gan.discriminators])
  return gan


def canonical_path(path):
  """A variable path without Keras' uniquifying suffixes (`forward_lstm_11` -> `forward_lstm`),
  which depend on how many layers the process made before."""
  return re.sub(r"_\d+(?=/|$)", "", path)


def float_state(gan):
  """Names and values of the float variables (RNG states differ by backend by design)."""
  return [(canonical_path(v.path), keras.ops.convert_to_numpy(v.value))
          for v in gan.state_variables() if "float" in str(v.dtype)]


def is_optimizer_variable(name):
  """True for the optimizers' variables (canonical paths `adam/...`)."""
  return name.startswith("adam/")


def set_float_state(gan, values):
  floats = [v for v in gan.state_variables() if "float" in str(v.dtype)]
  assert len(floats) == len(values), (len(floats), len(values))
  for v, x in zip(floats, values):
    v.assign(x)


def batch_of(rng, size=BATCH):
  """A batch of captions of lengths 7, 3, 5, 6, 7, 3, ... (classes 1, 2, 1, 3, ...)."""
  tokens = np.zeros((size, WORDS_NUM), np.int32)
  for i in range(size):
    n = (7, 3, 5, 6)[i % 4]
    tokens[i, :n] = rng.integers(1, 30, n)
  batch = dict(tokens=tokens, class_id=np.array([(1, 2, 1, 3)[i % 4] for i in range(size)],
                                                np.int32),
               z=rng.standard_normal((size, SMALL["z_dim"])).astype("float32"),
               ca_noise=rng.standard_normal((size, SMALL["condition_dim"])).astype("float32"))
  for k in range(SMALL["num_stages"]):
    side = 64 * 2 ** k
    batch[f"image_{side}"] = rng.uniform(-1, 1, (size, side, side, 3)).astype("float32")
  return batch


def run_steps(gan, batch, starts, steps=2, placement=None):
  """Runs `steps` training steps with one train function; before step s the float state is set to
  `starts[s]` when given (None: continue from the previous step). Integer state (optimizer
  iteration counters, RNG seeds) always carries over. Returns per step (logs, float state after).
  `placement`: a `msmt_tf.distribute.Placement` (data-parallel JAX step)."""
  fn = gan.make_train_function(jit_compile=False, placement=placement)
  out = []
  for s in range(steps):
    if starts[s] is not None:
      fn.sync()
      set_float_state(gan, starts[s])
    logs = {k: float(v) for k, v in fn(batch).items()}
    fn.sync()
    out.append((logs, [x for _, x in float_state(gan)]))
  return out


def frozen_encoder_checks(gan, batch):
  """JAX: the step takes the frozen DAMSM encoders as constants (`MSMTGAN.frozen_variables`):
  returns how many arrays one step gives back (the state without them), and the error a step
  that writes one of them raises when traced."""
  fn = gan.make_train_function(jit_compile=False)
  fn(batch)
  returned = len(fn._state)  # pylint: disable=protected-access
  fn.sync()
  step, frozen = gan.jax_train_step, gan.frozen_variables()
  index = [id(v) for v in gan.state_variables()].index(id(frozen[-1]))

  def writes_an_encoder(state, data):
    new, logs = step(state, data)
    new[index] = new[index] * 0.5
    return new, logs

  gan.jax_train_step = writes_an_encoder
  try:
    gan.make_train_function(jit_compile=False)(batch)
    error = ""
  except ValueError as e:
    error = str(e)
  finally:
    del gan.jax_train_step
  return returned, error, frozen[-1].path


if __name__ == "__main__":
  src = np.load(sys.argv[1])
  model = build()
  names = [n for n, _ in float_state(model)]
  data = {k[2:]: src[k] for k in src.files if k.startswith("b_")}
  starts = [[src[f"s{s}_w{i}"] for i in range(len(names))] for s in range(2)]
  out = {}
  for s, (logs, state) in enumerate(run_steps(model, data, starts)):
    out.update({f"s{s}_w{i}": x for i, x in enumerate(state)})
    out.update({f"loss{s}_{k}": v for k, v in logs.items()})
  returned, error, written = frozen_encoder_checks(model, data)
  out.update(frozen_returned=returned, frozen_error=error, frozen_written=written,
             state_count=len(model.state_variables()), frozen_count=len(model.frozen_variables()))
  np.savez(sys.argv[2], backend=keras.backend.backend(),
           tensorflow_imported="tensorflow" in sys.modules, names=np.array(names), **out)
