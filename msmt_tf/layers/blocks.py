"""Building blocks shared by the generator stages (DM-GAN `model.py`, model_spec §3).

All convolutions are bias-free 3x3 'same' convolutions with orthogonal initialisation, and batch
norms use PyTorch's defaults (momentum 0.1 -> Keras 0.9, epsilon 1e-5, gamma ~ N(1, 0.02)), as in
DM-GAN's `weights_init`.
"""

import keras
from keras import ops

__all__ = ["GLU", "UpBlock", "ResBlock", "ToImage", "batch_norm", "conv3x3", "count_parameters",
           "UPSAMPLE_CONV_MODES", "set_upsample_conv", "upsample_conv", "upsample_conv3x3"]

_PKG = "msmt_tf"

# How `UpBlock` computes conv3x3(nearest_upsample_x2(x)); both give the same function of the same
# 3x3 kernel variable (checkpoints and imported weights are unaffected), rounded differently:
#   "reference" (default): upsample, then the 3x3 convolution (DM-GAN's `upBlock` literally).
#   "fused": four 2x2 phase kernels (sums of the 3x3 kernel's taps) in one 2x2 convolution of
#     the low-resolution input with 4x the output channels, then interleaved: 4/9 of the
#     multiply-adds, and the upsampled input is never written to memory. Slower on the H100
#     (BUILD.md, Performance: XLA lowers its kernel gradient to a cuDNN forward convolution with
#     a 129 x 129 window, 15.6 ms of the CUB step for the 256 px stage alone).
UPSAMPLE_CONV_MODES = ("reference", "fused")
_upsample_conv = "reference"


def set_upsample_conv(mode):
  """Selects `UpBlock`'s implementation (see UPSAMPLE_CONV_MODES) for steps traced from now on."""
  global _upsample_conv
  if mode not in UPSAMPLE_CONV_MODES:
    raise ValueError(f"upsample_conv must be one of {UPSAMPLE_CONV_MODES}, got {mode!r}")
  _upsample_conv = mode


def upsample_conv():
  return _upsample_conv


# Phase a of a x2 nearest upsampling followed by a 3-tap 'same' filter: output row 2i + a reads
# low-resolution rows (i - 1, i) for a = 0 and (i, i + 1) for a = 1; row r of _PHASE_TAPS[a]
# says which of the 3 taps fall on the first and second of those rows.
_PHASE_TAPS = (((1, 0, 0), (0, 1, 1)), ((1, 1, 0), (0, 0, 1)))


def _float32_kernel(variable):
  """The variable's value without mixed-precision autocasting, so that the phase sums of its
  taps are formed in the variable's own precision (then cast once, like the plain conv's).
  Keras has no public switch for this: its AutocastScope (Keras 3.15) with no dtype."""
  from keras.src.backend.common.variables import AutocastScope  # pylint: disable=g-import-not-at-top
  with AutocastScope(None):
    return variable.value


def upsample_conv3x3(x, kernel):
  """conv3x3_same(nearest_upsample_x2(x), kernel) without the upsampled tensor.

  Args:
    x: `[B, H, W, C_in]`.
    kernel: `[3, 3, C_in, C_out]`.

  Returns:
    `[B, 2H, 2W, C_out]`.
  """
  b, h, w, _ = x.shape
  b = ops.shape(x)[0] if b is None else b
  c_out = kernel.shape[-1]
  taps = ops.convert_to_tensor(_PHASE_TAPS, dtype=kernel.dtype)          # [2 phases, 2, 3]
  # phase kernels [2, 2, C_in, (a, b, C_out)]: k[u, v] = sum_kl taps[a, u, k] taps[b, v, l] K[k, l]
  phases = ops.einsum("auk,bvl,klio->uviabo", taps, taps, kernel)
  phases = ops.reshape(phases, (2, 2, kernel.shape[2], 4 * c_out))
  padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  y = ops.conv(padded, ops.cast(phases, x.dtype), strides=1, padding="valid")  # [B, H+1, W+1, 4C]
  y = ops.reshape(y, (b, h + 1, w + 1, 2, 2, c_out))
  # phase (a, b) of low-resolution pixel (i, j) is y[i + a, j + b, a, b]
  rows = [ops.stack([y[:, a:a + h, q:q + w, a, q] for q in (0, 1)], axis=3) for a in (0, 1)]
  y = ops.stack(rows, axis=2)                                             # [B, H, 2, W, 2, C]
  return ops.reshape(y, (b, 2 * h, 2 * w, c_out))


def conv3x3(filters, use_bias=False, name=None):
  return keras.layers.Conv2D(filters, 3, padding="same", use_bias=use_bias,
                             kernel_initializer="orthogonal", name=name)


def batch_norm(name=None):
  return keras.layers.BatchNormalization(
      momentum=0.9, epsilon=1e-5, name=name,
      gamma_initializer=keras.initializers.RandomNormal(1.0, 0.02))


def count_parameters(layer):
  """Parameter count in the paper's convention (PyTorch `parameters()`).

  Counts every weight except batch-norm running statistics and spectral-norm power-iteration
  vectors (buffers in PyTorch), whether the weight is trainable or frozen.
  """
  buffers = set()
  for sub in layer._flatten_layers(include_self=True, recursive=True):  # pylint: disable=protected-access
    if isinstance(sub, keras.layers.BatchNormalization):
      buffers.update(id(w) for w in (sub.moving_mean, sub.moving_variance))
    for w in getattr(sub, "buffer_weights", ()):
      buffers.add(id(w))
  return int(sum(int(ops.size(w)) for w in layer.weights if id(w) not in buffers))


@keras.saving.register_keras_serializable(package=_PKG)
class GLU(keras.layers.Layer):
  """Gated linear unit on the last axis: the first half times sigmoid of the second half."""

  def call(self, x):
    a, b = ops.split(x, 2, axis=-1)
    return a * ops.sigmoid(b)

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (input_shape[-1] // 2,)


@keras.saving.register_keras_serializable(package=_PKG)
class UpBlock(keras.layers.Layer):
  """Nearest x2 upsampling -> conv3x3 (2 * filters) -> BN -> GLU (DM-GAN `upBlock`).

  Args:
    filters: output channels.

  Call arguments:
    x: `[B, H, W, C]`.

  Returns:
    `[B, 2H, 2W, filters]`.
  """

  def __init__(self, filters, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.up = keras.layers.UpSampling2D(2, interpolation="nearest")
    self.conv = conv3x3(2 * filters, name="conv")
    self.bn = batch_norm(name="bn")
    self.glu = GLU()

  def build(self, input_shape):
    b, h, w, c = input_shape
    up_shape = (b, None if h is None else 2 * h, None if w is None else 2 * w, c)
    self.conv.build(up_shape)
    self.bn.build(up_shape[:3] + (2 * self.filters,))

  def call(self, x, training=None):
    if _upsample_conv == "fused" and x.shape[1] is not None and x.shape[2] is not None:
      y = upsample_conv3x3(x, _float32_kernel(self.conv.kernel))
    else:
      y = self.conv(self.up(x))
    return self.glu(self.bn(y, training=training))

  def compute_output_shape(self, input_shape):
    b, h, w, _ = input_shape
    return (b, None if h is None else 2 * h, None if w is None else 2 * w, self.filters)

  def get_config(self):
    return {**super().get_config(), "filters": self.filters}


@keras.saving.register_keras_serializable(package=_PKG)
class ResBlock(keras.layers.Layer):
  """x + BN(conv3x3(GLU(BN(conv3x3(x, 2C))), C)) (DM-GAN `ResBlock`, no activation after the add).

  Call arguments:
    x: `[B, H, W, C]`.

  Returns:
    `[B, H, W, C]`.
  """

  def build(self, input_shape):
    channels = input_shape[-1]
    self.conv1 = conv3x3(2 * channels, name="conv1")
    self.bn1 = batch_norm(name="bn1")
    self.conv2 = conv3x3(channels, name="conv2")
    self.bn2 = batch_norm(name="bn2")
    self.glu = GLU()
    self.conv1.build(input_shape)
    self.bn1.build(tuple(input_shape[:-1]) + (2 * channels,))
    self.conv2.build(input_shape)
    self.bn2.build(input_shape)

  def call(self, x, training=None):
    y = self.glu(self.bn1(self.conv1(x), training=training))
    return x + self.bn2(self.conv2(y), training=training)

  def compute_output_shape(self, input_shape):
    return input_shape


@keras.saving.register_keras_serializable(package=_PKG)
class ToImage(keras.layers.Layer):
  """tanh(conv3x3(x -> 3)), bias-free (DM-GAN `GET_IMAGE_G`): an RGB image in [-1, 1]."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.conv = conv3x3(3, name="conv")

  def build(self, input_shape):
    self.conv.build(input_shape)

  def call(self, x):
    return ops.tanh(self.conv(x))

  def compute_output_shape(self, input_shape):
    return tuple(input_shape[:-1]) + (3,)
