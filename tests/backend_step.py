"""Runs one MSMT-GAN training step with given weights and batch under the current KERAS_BACKEND
and writes the losses and every variable afterwards; used to compare TensorFlow and JAX.

    KERAS_BACKEND=jax python -m tests.backend_step IN.npz OUT.npz
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


def batch_of(rng):
  tokens = np.zeros((BATCH, WORDS_NUM), np.int32)
  for i, n in enumerate((7, 3, 5)):
    tokens[i, :n] = rng.integers(1, 30, n)
  batch = dict(tokens=tokens, class_id=np.array([1, 2, 1], np.int32),
               z=rng.standard_normal((BATCH, SMALL["z_dim"])).astype("float32"),
               ca_noise=rng.standard_normal((BATCH, SMALL["condition_dim"])).astype("float32"))
  for k in range(SMALL["num_stages"]):
    size = 64 * 2 ** k
    batch[f"image_{size}"] = rng.uniform(-1, 1, (BATCH, size, size, 3)).astype("float32")
  return batch


def step(gan, batch, steps=2):
  fn = gan.make_train_function(jit_compile=False)
  logs = [{k: float(v) for k, v in fn(batch).items()} for _ in range(steps)]
  fn.sync()
  return logs


if __name__ == "__main__":
  src = np.load(sys.argv[1])
  model = build()
  names = [n for n, _ in float_state(model)]
  set_float_state(model, [src[f"w{i}"] for i in range(len(names))])
  data = {k[2:]: src[k] for k in src.files if k.startswith("b_")}
  history = step(model, data)
  out = {f"w{i}": x for i, (_, x) in enumerate(float_state(model))}
  out.update({f"loss{s}_{k}": v for s, logs in enumerate(history) for k, v in logs.items()})
  np.savez(sys.argv[2], backend=keras.backend.backend(),
           tensorflow_imported="tensorflow" in sys.modules, names=np.array(names), **out)
