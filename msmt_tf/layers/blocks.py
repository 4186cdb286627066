"""Building blocks shared by the generator stages (DM-GAN `model.py`, model_spec §3).

All convolutions are bias-free 3x3 'same' convolutions with orthogonal initialisation, and batch
norms use PyTorch's defaults (momentum 0.1 -> Keras 0.9, epsilon 1e-5, gamma ~ N(1, 0.02)), as in
DM-GAN's `weights_init`.
"""

import keras
from keras import ops

__all__ = ["GLU", "UpBlock", "ResBlock", "ToImage", "batch_norm", "conv3x3", "count_parameters"]

_PKG = "msmt_tf"


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
    return self.glu(self.bn(self.conv(self.up(x)), training=training))

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
