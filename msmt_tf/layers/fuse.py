"""Adaptive gated fusion of two feature maps (paper App. 7.1, Eq. 17-18; DM-GAN's response gate)."""

import keras
from keras import ops

from msmt_tf.layers import blocks

__all__ = ["GatedFusion", "scalar_gate_logits"]

# The blocks.FUSE_GATE_MODES whose scalar gate is `scalar_gate_logits` (its `kernel_grad`).
_CHANNEL_SUM_MODES = ("reduce", "matvec")


def scalar_gate_logits(a, b, kernel, bias, kernel_grad="reduce"):
  """`conv1x1(concat(a, b), kernel) + bias` for a one-channel gate (`kernel` `[1, 1, 2C, 1]`) as
  the per-pixel sums of a * P_a and b * P_b over the channels, accumulated in float32 from the
  values given (blocks.FUSE_GATE_MODES 'reduce' and 'matvec'): `[B, H, W, 1]` float32.

  Its gradient is written out (the one autodiff gives): the backward keeps a and b as given
  (bf16 under mixed precision) and recasts them, where autodiff would keep their float32 copies,
  twice the bytes, for the kernel's gradient. `kernel_grad` says how the kernel's gradient, a sum
  over every pixel of the batch, is computed: 'reduce', `sum(a * g)` over the batch and pixel
  axes in float32 (a column reduction); 'matvec', one matrix-vector product `g^T [N] x a
  [N, C]` (N = B * H * W) in a's dtype, the upstream gradient g rounded to it (bf16 under mixed
  precision, as a convolution's kernel gradient is), accumulated as the backend's matrix
  products accumulate."""
  if kernel_grad not in _CHANNEL_SUM_MODES:
    raise ValueError(f"kernel_grad must be one of {_CHANNEL_SUM_MODES}, not {kernel_grad!r}")
  channels = a.shape[-1]
  kernel = ops.cast(kernel[0, 0, :, 0], "float32")
  axes = tuple(range(len(a.shape) - 1))

  def channel_sums(x, g):  # sum over every pixel of the batch of x * g: [C] float32
    if kernel_grad == "matvec":
      rows = ops.reshape(ops.cast(g, x.dtype), (1, -1))
      return ops.cast(ops.matmul(rows, ops.reshape(x, (-1, channels)))[0], "float32")
    return ops.sum(ops.cast(x, "float32") * g, axis=axes)

  @ops.custom_gradient
  def logits(a, b, p_a, p_b, bias):
    def grad(*args, upstream=None):
      if upstream is None:
        (upstream,) = args
      g = ops.cast(upstream, "float32")                    # [B, H, W, 1]
      return (ops.cast(g * p_a, a.dtype), ops.cast(g * p_b, b.dtype),
              channel_sums(a, g), channel_sums(b, g), ops.sum(g))
    return (ops.sum(ops.cast(a, "float32") * p_a, axis=-1, keepdims=True)
            + ops.sum(ops.cast(b, "float32") * p_b, axis=-1, keepdims=True) + bias), grad

  return logits(a, b, kernel[:channels], kernel[channels:], ops.cast(bias, "float32")[0])


@keras.saving.register_keras_serializable(package="msmt_tf")
class GatedFusion(keras.layers.Layer):
  """`fuse(A, B; P, rho)`: `g = sigmoid(P concat(a, b) + rho)`, `r = a * g + b * (1 - g)`.

  Args:
    per_channel: False (default, DM-GAN's response gate): P is a 1x1 convolution to one channel,
      a scalar gate per pixel. True: one gate per channel (P maps 2C -> C), a paper-compatible
      variant (the paper does not fix the gate's width; model_spec §5.1).

  Call arguments:
    a, b: `[B, H, W, C]`.

  Returns:
    `[B, H, W, C]`.
  """

  def __init__(self, per_channel=False, **kwargs):
    super().__init__(**kwargs)
    self.per_channel = per_channel

  def build(self, a_shape, b_shape=None):
    channels = a_shape[-1]
    self.gate = blocks.Conv2D(channels if self.per_channel else 1, 1, use_bias=True,
                              kernel_initializer="orthogonal", name="gate")
    self.gate.build(tuple(a_shape[:-1]) + (2 * channels,))

  def call(self, a, b):
    mode = blocks.implementation("fuse_gate")
    if mode in _CHANNEL_SUM_MODES and not self.per_channel:
      logits = scalar_gate_logits(a, b, self.gate.kernel, self.gate.bias, mode)
      g = ops.cast(ops.sigmoid(logits), a.dtype)
    else:
      g = ops.sigmoid(self.gate(ops.concatenate([a, b], axis=-1)))
    return a * g + b * (1.0 - g)

  def compute_output_shape(self, a_shape, b_shape=None):
    return a_shape

  def get_config(self):
    return {**super().get_config(), "per_channel": self.per_channel}
