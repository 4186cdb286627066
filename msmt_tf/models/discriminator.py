"""Stage discriminators (DM-GAN `D_NET64/128/256`, model_spec §4.1) with spectral norm."""

import keras
from keras import ops

from msmt_tf.models.initialization import one_program_initialization

__all__ = ["SNConv2D", "StageDiscriminator"]


@keras.saving.register_keras_serializable(package="msmt_tf")
class SNConv2D(keras.layers.Layer):
  """Conv2D whose kernel is divided by its largest singular value (Miyato et al.).

  As PyTorch's spectral norm: the stored kernel stays unnormalised, `sigma = u^T W v` with one
  power iteration per training call (u is a persistent buffer, excluded from the parameter
  count), and the gradient flows through sigma with u, v held constant.
  """

  def __init__(self, filters, kernel_size, strides=1, padding="same", use_bias=True,
               power_iterations=1, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.padding = padding
    self.use_bias = use_bias
    self.power_iterations = power_iterations

  def build(self, input_shape):
    k = self.kernel_size
    self.kernel = self.add_weight(shape=(k, k, input_shape[-1], self.filters),
                                  initializer="orthogonal", name="kernel")
    self.bias = self.add_weight(shape=(self.filters,), initializer="zeros",
                                name="bias") if self.use_bias else None
    self.u = self.add_weight(shape=(self.filters,), initializer="random_normal",
                             trainable=False, name="sn_u")

  @property
  def buffer_weights(self):
    return [self.u]

  @staticmethod
  def _normalize(x):
    return x / (ops.sqrt(ops.sum(ops.square(x))) + 1e-12)

  def normalized_kernel(self, training=False):
    w = ops.reshape(self.kernel, (-1, self.filters))      # [k*k*in, out] = W_torch^T
    u = ops.convert_to_tensor(self.u)
    for _ in range(self.power_iterations):
      v = self._normalize(ops.matmul(w, u))
      u = self._normalize(ops.matmul(ops.transpose(w), v))
    u, v = ops.stop_gradient(u), ops.stop_gradient(v)
    if training:
      self.u.assign(u)
    sigma = ops.sum(u * ops.matmul(ops.transpose(w), v))
    return self.kernel / sigma

  def call(self, x, training=None):
    kernel = ops.cast(self.normalized_kernel(bool(training)), x.dtype)
    y = ops.conv(x, kernel, strides=self.strides, padding=self.padding)
    if self.bias is not None:
      y = y + ops.cast(self.bias, y.dtype)
    return y

  def get_config(self):
    return {**super().get_config(), "filters": self.filters, "kernel_size": self.kernel_size,
            "strides": self.strides, "padding": self.padding, "use_bias": self.use_bias,
            "power_iterations": self.power_iterations}


def _sn_lrelu(filters, kernel_size, strides, name):
  return [SNConv2D(filters, kernel_size, strides, name=name), keras.layers.LeakyReLU(0.2)]


@keras.saving.register_keras_serializable(package="msmt_tf")
class StageDiscriminator(keras.Model):
  """DM-GAN discriminator for one resolution (64, 128 or 256).

  Image code: four SN Conv4x4/2 + LeakyReLU(0.2) (`encode_image_by_16times`, 3 -> ndf -> 2ndf
  -> 4ndf -> 8ndf), then for 128: downBlock(8ndf -> 16ndf) + Block3x3(16ndf -> 8ndf); for 256:
  downBlocks to 16ndf and 32ndf, Block3x3 to 16ndf and 8ndf. Result `[B, 4, 4, 8ndf]`.
  Unconditional logit: Conv4x4 stride 4 (no SN). Conditional logit: concat(code, sentence tiled
  to 4x4) -> SN Block3x3(8ndf) -> its own Conv4x4 stride 4. Logits are pre-sigmoid.

  Call arguments:
    images: `[B, r, r, 3]`; sentence: `[B, N_s]` (raw sentence vector, not the CA code).

  Returns:
    `(uncond_logits [B], cond_logits [B])`. Use `encode`, `uncond_logits` and `cond_logits` to
    reuse one image code for several sentences (DM-GAN's mismatched-caption term).
  """

  def __init__(self, resolution=64, ndf=32, **kwargs):
    super().__init__(**kwargs)
    if resolution < 64 or resolution & (resolution - 1):
      raise ValueError(f"resolution must be 64 * 2**k, got {resolution}")
    self.resolution = resolution
    self.ndf = ndf
    layers = []
    for i, mult in enumerate((1, 2, 4, 8)):
      layers += _sn_lrelu(ndf * mult, 4, 2, f"enc{i}")
    extra = (resolution // 64).bit_length() - 1  # 0, 1, 2 for 64, 128, 256
    for i in range(extra):
      layers += _sn_lrelu(ndf * 16 * 2 ** i, 4, 2, f"down{i}")
    for i in reversed(range(extra)):
      layers += _sn_lrelu(ndf * 8 * 2 ** i, 3, 1, f"block{i}")
    self.image_layers = layers
    self.uncond_out = keras.layers.Conv2D(1, 4, strides=4, kernel_initializer="orthogonal",
                                          name="uncond_logits")
    self.joint = _sn_lrelu(ndf * 8, 3, 1, "joint")
    self.cond_out = keras.layers.Conv2D(1, 4, strides=4, kernel_initializer="orthogonal",
                                        name="cond_logits")

  @one_program_initialization()
  def build(self, images_shape, sentence_shape=None):
    shape = images_shape
    for layer in self.image_layers:
      layer.build(shape)
      shape = layer.compute_output_shape(shape) if not isinstance(layer, SNConv2D) else (
          shape[0], None if shape[1] is None else shape[1] // layer.strides,
          None if shape[2] is None else shape[2] // layer.strides, layer.filters)
    code = (None, 4, 4, self.ndf * 8)
    self.uncond_out.build(code)
    self.joint[0].build((None, 4, 4, self.ndf * 8 + (sentence_shape or (None, 256))[-1]))
    self.cond_out.build(code)

  def encode(self, images, training=None):
    x = images
    for layer in self.image_layers:
      x = layer(x, training=training) if isinstance(layer, SNConv2D) else layer(x)
    return x

  def uncond_logits(self, code):
    return ops.reshape(self.uncond_out(code), (-1,))

  def cond_logits(self, code, sentence, training=None):
    s = ops.cast(sentence, code.dtype)
    s = ops.broadcast_to(s[:, None, None, :], (ops.shape(code)[0], 4, 4, s.shape[-1]))
    x = ops.concatenate([code, s], axis=-1)
    x = self.joint[1](self.joint[0](x, training=training))
    return ops.reshape(self.cond_out(x), (-1,))

  def call(self, images, sentence, training=None):
    code = self.encode(images, training=training)
    return self.uncond_logits(code), self.cond_logits(code, sentence, training=training)

  def get_config(self):
    return {**super().get_config(), "resolution": self.resolution, "ndf": self.ndf}
