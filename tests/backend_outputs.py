"""Runs a small generator, text encoder and discriminator with given weights under the current
KERAS_BACKEND and writes their outputs; used to compare TensorFlow and JAX.

    KERAS_BACKEND=jax python -m tests.backend_outputs IN.npz OUT.npz
"""

import sys


class _NoTensorFlow:
  """Makes `import tensorflow` fail, as on the GPU machine (JAX and PyTorch, no TensorFlow)."""

  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      raise ImportError(f"{name} is blocked: the model must run without TensorFlow")
    return None


if __name__ == "__main__":
  sys.meta_path.insert(0, _NoTensorFlow())

import keras  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from msmt_tf.config import ModelConfig

SMALL = dict(vocab_size=30, channels=4, memory_dim=6, grid=4, num_heads=2, num_res=1,
             condition_dim=8, z_dim=6, text_dim=16, embedding_dim=10, num_stages=3, ndf=4)
WORDS_NUM = 7


def build():
  cfg = ModelConfig(**SMALL)
  return cfg.build_text_encoder(WORDS_NUM), cfg.build_generator(WORDS_NUM), \
      cfg.build_discriminators()


def run(models, data):
  enc, gen, ds = models
  words, sent = enc(data["tokens"])
  out = gen(words, sent, data["tokens"] != 0, data["z"], data["ca_noise"], training=False)
  result = {"words": words, "sentence": sent, "mu": out["mu"]}
  for k, img in enumerate(out["images"]):
    result[f"image{k}"] = img
  for k, (d, img) in enumerate(zip(ds, out["images"])):
    u, c = d(img, sent, training=False)
    result[f"d{k}_uncond"], result[f"d{k}_cond"] = u, c
  return {k: keras.ops.convert_to_numpy(v) for k, v in result.items()}


def all_weights(models):
  enc, gen, ds = models
  return [w for m in (enc, gen, *ds) for w in m.get_weights()]


def set_all_weights(models, flat):
  i = 0
  for m in (models[0], models[1], *models[2]):
    n = len(m.weights)
    m.set_weights(flat[i:i + n])
    i += n


if __name__ == "__main__":
  src = np.load(sys.argv[1])
  models = build()
  n = len(all_weights(models))
  set_all_weights(models, [src[f"w{i}"] for i in range(n)])
  np.savez(sys.argv[2], backend=keras.backend.backend(),
           tensorflow_imported="tensorflow" in sys.modules,
           **run(models, {k: src[k] for k in ("tokens", "z", "ca_noise")}))
