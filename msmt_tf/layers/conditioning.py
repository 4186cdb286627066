"""Conditioning augmentation (StackGAN; DM-GAN `CA_NET`), paper §3.1."""

import keras
from keras import ops

from msmt_tf.layers.blocks import GLU

__all__ = ["ConditioningAugmentation"]


@keras.saving.register_keras_serializable(package="msmt_tf")
class ConditioningAugmentation(keras.layers.Layer):
  """Resamples the sentence vector: `s' = mu + exp(logvar / 2) * eps`.

  `Dense(4c) -> GLU` gives `mu` (first c) and `logvar` (last c), as DM-GAN's `CA_NET`.

  Args:
    condition_dim: c, the size of s' (100).
    seed: seed of the layer's `SeedGenerator` (used when no `noise` is passed).

  Call arguments:
    sentence: `[B, N_s]`.
    noise: optional `[B, c]` standard-normal eps (for reproducible inference).

  Returns:
    `(c_code, mu, logvar)`, each `[B, c]`.
  """

  def __init__(self, condition_dim=100, seed=None, **kwargs):
    super().__init__(**kwargs)
    self.condition_dim = condition_dim
    self.seed = seed
    self.seed_generator = keras.random.SeedGenerator(seed)
    self.fc = keras.layers.Dense(4 * condition_dim, kernel_initializer="orthogonal", name="fc")
    self.glu = GLU()

  def build(self, sentence_shape, noise_shape=None):
    self.fc.build(sentence_shape)

  def call(self, sentence, noise=None):
    h = self.glu(self.fc(sentence))
    mu = h[:, :self.condition_dim]
    logvar = h[:, self.condition_dim:]
    if noise is None:
      noise = keras.random.normal(ops.shape(mu), dtype=mu.dtype, seed=self.seed_generator)
    return mu + ops.exp(0.5 * logvar) * noise, mu, logvar

  def compute_output_shape(self, sentence_shape, noise_shape=None):
    shape = (sentence_shape[0], self.condition_dim)
    return shape, shape, shape

  def get_config(self):
    return {**super().get_config(), "condition_dim": self.condition_dim, "seed": self.seed}
