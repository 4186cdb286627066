"""Initial generation stages: MTWIG (paper §3.1, Eq. 1-3) and the conventional stage (IG).

Both end in the same trunk as DM-GAN's `INIT_STAGE_G`: a `4 x 4 x 16 C` feature map upsampled by
four `UpBlock`s to `64 x 64 x C` (C = N_r = 48 for MSMT, 64 for DM-GAN).
"""

import keras
from keras import ops

from msmt_tf.layers.blocks import GLU, UpBlock, apply_batch_norm, batch_norm
from msmt_tf.layers.fuse import GatedFusion

__all__ = ["UpsamplingTrunk", "MultiTailedWordInit", "ConventionalInit", "valid_tail_mask"]

_BASE = 4  # spatial side of the first feature map


def valid_tail_mask(word_mask, kernel_size, num_tails):
  """Which tails see only real words: tail t (0-based) of a caption of length n is valid iff
  `t <= max(0, n - kernel_size)`; a caption shorter than the kernel keeps its first tail.

  Args:
    word_mask: `[B, L]` bool, True for real words (right-padded).
  Returns:
    `[B, num_tails]` bool.
  """
  lengths = ops.sum(ops.cast(word_mask, "int32"), axis=1)
  last = ops.maximum(lengths - kernel_size, 0)
  return ops.arange(num_tails, dtype="int32")[None, :] <= last[:, None]


@keras.saving.register_keras_serializable(package="msmt_tf")
class UpsamplingTrunk(keras.layers.Layer):
  """Four `UpBlock`s: `[N, 4, 4, 16C] -> [N, 64, 64, C]` (channels 8C, 4C, 2C, C)."""

  def __init__(self, channels, num_upsamples=4, **kwargs):
    super().__init__(**kwargs)
    self.channels = channels
    self.num_upsamples = num_upsamples
    self.blocks = [UpBlock(channels * 2 ** (num_upsamples - 1 - i), name=f"up{i}")
                   for i in range(num_upsamples)]

  def build(self, input_shape):
    shape = input_shape
    for block in self.blocks:
      block.build(shape)
      shape = block.compute_output_shape(shape)

  def call(self, x, training=None):
    for block in self.blocks:
      x = block(x, training=training)
    return x

  def compute_output_shape(self, input_shape):
    for block in self.blocks:
      input_shape = block.compute_output_shape(input_shape)
    return input_shape

  def get_config(self):
    return {**super().get_config(), "channels": self.channels,
            "num_upsamples": self.num_upsamples}


@keras.saving.register_keras_serializable(package="msmt_tf")
class MultiTailedWordInit(keras.layers.Layer):
  """Multi-Tailed Word-level Initial Generation (MTWIG), paper §3.1, Eq. 1-3.

  `X_l = concat(s', z, w_l)`; `F = V(X)` with V a 1-D convolution of stride 1 and kernel
  `kernel_size`, producing `2 * 16C * 4 * 4` values per tail (the role of DM-GAN's initial fc),
  then BN + GLU -> `[4, 4, 16C]` per tail; every tail goes through the same `UpsamplingTrunk`
  (tails are folded into the batch); tails are fused left to right with one shared
  `GatedFusion` (P^MTWIG, rho^MTWIG): `S_{1:t} = fuse(S_{1:t-1}, S_t)`, `R_1 = S_{1:T}`.

  Resolutions of the paper's ambiguities (model_spec §5.1), as arguments:
    tail_padding: 'valid' (default): T = L - kernel_size + 1 tails, so "T depends on the kernel
      size" as the paper says. 'same': T = L tails (zero-padded n-grams at the end).
    skip_padding_tails: True (default): a tail that covers a padding position is left out of the
      fuse (for captions shorter than the kernel the first tail is kept). False: fuse all T tails.
    Padded word vectors are zeroed before V, so their values never matter. Batch-norm statistics
    are over all B*T tails (model_spec §5.1).

  Args:
    channels: C = N_r (48); the first map has 16C channels.
    kernel_size: n-gram size of V (1, 2 or 3; the paper's best is 3).
    fuse_per_channel: gate width of the fuse (see `GatedFusion`).

  Call arguments:
    words: `[B, L, N_w]` word vectors.
    word_mask: `[B, L]` bool, True for real words.
    c_code: `[B, c]` conditioning-augmented sentence vector s'.
    z: `[B, N_z]` noise.

  Returns:
    `R_1`: `[B, 64, 64, C]`.
  """

  def __init__(self, channels=48, kernel_size=3, tail_padding="valid", skip_padding_tails=True,
               fuse_per_channel=False, **kwargs):
    super().__init__(**kwargs)
    if kernel_size < 1:
      raise ValueError(f"kernel_size must be >= 1, got {kernel_size}")
    if tail_padding not in ("valid", "same"):
      raise ValueError(f"tail_padding must be 'valid' or 'same', got {tail_padding!r}")
    self.channels = channels
    self.kernel_size = kernel_size
    self.tail_padding = tail_padding
    self.skip_padding_tails = skip_padding_tails
    self.fuse_per_channel = fuse_per_channel
    width = 16 * channels * _BASE * _BASE
    self.tail_conv = keras.layers.Conv1D(2 * width, kernel_size, padding=tail_padding,
                                         use_bias=False, kernel_initializer="orthogonal",
                                         name="tail_conv")
    self.tail_bn = batch_norm(name="tail_bn")
    self.glu = GLU()
    self.trunk = UpsamplingTrunk(channels, name="trunk")
    self.fuse = GatedFusion(per_channel=fuse_per_channel, name="fuse")

  def num_tails(self, length):
    return length - self.kernel_size + 1 if self.tail_padding == "valid" else length

  def build(self, words_shape, word_mask_shape=None, c_code_shape=None, z_shape=None):
    length = words_shape[1]
    if length is not None and self.num_tails(length) < 1:
      raise ValueError(f"MTWIG with kernel_size {self.kernel_size} needs at least "
                       f"{self.kernel_size} word positions, got {length}")
    in_dim = words_shape[-1] + c_code_shape[-1] + z_shape[-1]
    self.tail_conv.build((None, length, in_dim))
    width = 2 * 16 * self.channels * _BASE * _BASE
    self.tail_bn.build((None, width))
    trunk_in = (None, _BASE, _BASE, 16 * self.channels)
    self.trunk.build(trunk_in)
    out = self.trunk.compute_output_shape(trunk_in)
    self.fuse.build(out, out)

  def call(self, words, word_mask, c_code, z, training=None):
    batch = ops.shape(words)[0]
    length = words.shape[1]
    mask = ops.cast(word_mask, words.dtype)
    words = words * mask[:, :, None]
    cond = ops.concatenate([c_code, ops.cast(z, c_code.dtype)], axis=-1)
    x = ops.concatenate([ops.repeat(cond[:, None, :], length, axis=1), words], axis=-1)
    f = self.tail_conv(x)                                  # [B, T, 2 * 16C * 16]
    num_tails = f.shape[1]
    f = ops.reshape(f, (-1, f.shape[-1]))                  # tails folded into the batch
    f = self.glu(apply_batch_norm(self.tail_bn, f, training))
    f = ops.reshape(f, (-1, _BASE, _BASE, 16 * self.channels))
    s = self.trunk(f, training=training)                   # [B*T, 64, 64, C]
    s = ops.reshape(s, (batch, num_tails) + tuple(s.shape[1:]))
    if self.skip_padding_tails:
      valid = valid_tail_mask(word_mask, self.kernel_size, num_tails)
    else:
      valid = ops.ones((batch, num_tails), dtype="bool")
    fused = s[:, 0]
    for t in range(1, num_tails):
      new = self.fuse(fused, s[:, t])
      fused = ops.where(valid[:, t][:, None, None, None], new, fused)
    return fused

  def compute_output_shape(self, words_shape, word_mask_shape=None, c_code_shape=None,
                           z_shape=None):
    return (words_shape[0], _BASE * 16, _BASE * 16, self.channels)

  def get_config(self):
    return {**super().get_config(), "channels": self.channels, "kernel_size": self.kernel_size,
            "tail_padding": self.tail_padding, "skip_padding_tails": self.skip_padding_tails,
            "fuse_per_channel": self.fuse_per_channel}


@keras.saving.register_keras_serializable(package="msmt_tf")
class ConventionalInit(keras.layers.Layer):
  """The conventional initial stage (IG; DM-GAN `INIT_STAGE_G`), for the paper's ablations.

  `concat(s', z) -> Dense(2 * 16C * 4 * 4, no bias) -> BN -> GLU -> [4, 4, 16C] -> UpsamplingTrunk`.

  Call arguments:
    c_code: `[B, c]`; z: `[B, N_z]`.

  Returns:
    `[B, 64, 64, C]`.
  """

  def __init__(self, channels=48, **kwargs):
    super().__init__(**kwargs)
    self.channels = channels
    width = 2 * 16 * channels * _BASE * _BASE
    self.fc = keras.layers.Dense(width, use_bias=False, kernel_initializer="orthogonal",
                                 name="fc")
    self.bn = batch_norm(name="bn")
    self.glu = GLU()
    self.trunk = UpsamplingTrunk(channels, name="trunk")

  def build(self, c_code_shape, z_shape=None):
    self.fc.build((None, c_code_shape[-1] + z_shape[-1]))
    width = 2 * 16 * self.channels * _BASE * _BASE
    self.bn.build((None, width))
    self.trunk.build((None, _BASE, _BASE, 16 * self.channels))

  def call(self, c_code, z, training=None):
    x = ops.concatenate([c_code, ops.cast(z, c_code.dtype)], axis=-1)
    x = self.glu(apply_batch_norm(self.bn, self.fc(x), training))
    x = ops.reshape(x, (-1, _BASE, _BASE, 16 * self.channels))
    return self.trunk(x, training=training)

  def compute_output_shape(self, c_code_shape, z_shape=None):
    return (c_code_shape[0], _BASE * 16, _BASE * 16, self.channels)

  def get_config(self):
    return {**super().get_config(), "channels": self.channels}
