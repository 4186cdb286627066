"""Building blocks shared by the generator stages (DM-GAN `model.py`, model_spec §3).

All convolutions are bias-free 3x3 'same' convolutions with orthogonal initialisation, and batch
norms use PyTorch's defaults (momentum 0.1 -> Keras 0.9, epsilon 1e-5, gamma ~ N(1, 0.02)), as in
DM-GAN's `weights_init`.
"""

import itertools

import keras
from keras import ops

__all__ = ["GLU", "UpBlock", "ResBlock", "ToImage", "batch_norm", "conv3x3", "count_parameters",
           "UPSAMPLE_CONV_MODES", "set_upsample_conv", "upsample_conv", "upsample_conv3x3",
           "BATCH_NORM_MODES", "set_batch_norm_mode", "batch_norm_mode", "apply_batch_norm",
           "one_pass_moments", "set_implementation", "implementation", "implementation_names",
           "SDM_CONVS_MODES",
           "FUSE_GATE_MODES", "Conv2D", "check_mergeable", "split_outputs", "merged_conv"]

_PKG = "msmt_tf"

# How `UpBlock` computes conv3x3(nearest_upsample_x2(x)); both give the same function of the same
# 3x3 kernel variable (checkpoints and imported weights are unaffected), rounded differently:
#   "reference" (default): upsample, then the 3x3 convolution (DM-GAN's `upBlock` literally).
#   "fused": four 2x2 phase kernels (sums of the 3x3 kernel's taps) in one 2x2 convolution of
#     the low-resolution input with 4x the output channels, then interleaved: 4/9 of the
#     multiply-adds, and the upsampled input is never written to memory. Slower on the H100
#     (BUILD.md, Performance: its kernel gradient, a convolution with a 129 x 129 window, takes
#     15.6 ms of the CUB step for the 256 px stage alone).
UPSAMPLE_CONV_MODES = ("reference", "fused")

# Implementation choices (same function, different kernels), read when a step is traced; the
# first of each tuple of modes is the default.
_MODES = {"upsample_conv": UPSAMPLE_CONV_MODES}
_chosen = {}


def set_implementation(name, mode):
  """Selects implementation `mode` of `name` (a key of _MODES) for steps traced from now on."""
  if mode not in _MODES[name]:
    raise ValueError(f"{name} must be one of {_MODES[name]}, got {mode!r}")
  _chosen[name] = mode


def implementation(name):
  return _chosen.get(name, _MODES[name][0])


def implementation_names():
  """The implementation choices (each has a flag of the same name, msmt_tf/config.py)."""
  return tuple(_MODES)


def set_upsample_conv(mode):
  """Selects `UpBlock`'s implementation (see UPSAMPLE_CONV_MODES)."""
  set_implementation("upsample_conv", mode)


def upsample_conv():
  return implementation("upsample_conv")


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


# How the generator's batch norms train (inference always uses Keras's layer); both compute the
# same function of the same variables, rounded differently:
#   "keras" (default): `keras.layers.BatchNormalization` as it is. Its statistics take two
#     dependent passes over the activation (mean, then the variance about it) and autodiff adds
#     its own reductions; under mixed precision the whole normalisation is float32.
#   "fused": one pass for both statistics (shifted sums, below) and a hand-written backward: one
#     pass for the two sums the gradient needs (dbeta, dgamma) and one for dx, which keeps only
#     the layer's input (bf16 under mixed precision) for the backward instead of float32
#     intermediates. Moving statistics are updated exactly as the layer does.
# Layers set `synchronized` (the TensorFlow distributed step) always use Keras's path.
BATCH_NORM_MODES = ("keras", "fused")
_MODES["batch_norm"] = BATCH_NORM_MODES


def set_batch_norm_mode(mode):
  """Selects how `apply_batch_norm` trains (see BATCH_NORM_MODES)."""
  set_implementation("batch_norm", mode)


def batch_norm_mode():
  return implementation("batch_norm")


def one_pass_moments(x):
  """Float32 mean and (biased) variance over every axis but the last, in one pass over `x`.

  Sums of d = x - s and d^2, with s the first element of each channel (held constant): the
  variance is E[d^2] - E[d]^2, whose float32 cancellation error scales with (mean - s)^2 /
  variance, about 1 for activations, instead of mean^2 / variance unshifted (an activation of
  mean 1000 and variance 1 would lose the variance entirely).
  """
  xf = ops.cast(x, "float32")
  axes = tuple(range(len(x.shape) - 1))
  shift = ops.stop_gradient(ops.reshape(xf[(slice(0, 1),) * len(axes)], (-1,)))
  d = xf - shift
  s1 = ops.mean(d, axis=axes)
  s2 = ops.mean(ops.square(d), axis=axes)
  return shift + s1, ops.maximum(s2 - ops.square(s1), 0.0)


def _normalize_with_batch_gradient(x, mean, variance, gamma, beta, epsilon, out_dtype):
  """(x - mean) / sqrt(variance + epsilon) * gamma + beta, where mean and variance are x's batch
  statistics (given, without gradient): the gradient w.r.t. x is the whole batch-norm gradient,
  through the statistics too: dx = gamma r (g - (sum g + xhat sum g xhat) / n)."""
  axes = tuple(range(len(x.shape) - 1))
  count = ops.cast(ops.size(x) // ops.shape(x)[-1], "float32")

  @ops.custom_gradient
  def normalize(x, mean, variance, gamma, beta):
    rstd = ops.rsqrt(variance + epsilon)
    scale = rstd * gamma
    y = ops.cast((ops.cast(x, "float32") - mean) * scale + beta, out_dtype)

    def grad(*args, upstream=None):
      if upstream is None:
        (upstream,) = args
      g = ops.cast(upstream, "float32")
      xhat = (ops.cast(x, "float32") - mean) * rstd  # recomputed: only x is kept
      dbeta = ops.sum(g, axis=axes)
      dgamma = ops.sum(g * xhat, axis=axes)
      dx = scale * (g - (dbeta + xhat * dgamma) / count)
      return (ops.cast(dx, x.dtype), ops.zeros_like(mean), ops.zeros_like(variance), dgamma,
              dbeta)
    return y, grad

  return normalize(x, mean, variance, gamma, beta)


def apply_batch_norm(layer, x, training=None):
  """`layer(x, training=training)` for a `keras.layers.BatchNormalization` of the generator
  (made by `batch_norm`), computed the way `set_batch_norm_mode` selected."""
  if (implementation("batch_norm") == "keras" or not training or not layer.trainable
      or layer.synchronized or layer.axis not in (-1, len(x.shape) - 1)
      or not (layer.center and layer.scale) or layer.renorm):
    return layer(x, training=training)
  if not layer.built:
    layer.build(x.shape)
  mean, variance = one_pass_moments(ops.stop_gradient(x))
  momentum = layer.momentum
  layer.moving_mean.assign(ops.cast(layer.moving_mean, "float32") * momentum
                           + mean * (1.0 - momentum))
  layer.moving_variance.assign(ops.cast(layer.moving_variance, "float32") * momentum
                               + variance * (1.0 - momentum))
  return _normalize_with_batch_gradient(
      x, mean, variance, ops.cast(layer.gamma, "float32"), ops.cast(layer.beta, "float32"),
      layer.epsilon, layer.compute_dtype)


# How each SDM head computes its convolutions that read the same input: its three query convs
# (phi_Q_global, phi_Q_grid, phi_Q_pixel, all on the query source U) and its key and value convs
# (phi_K, phi_V, both on the memory m); the same function of the same variables, rounded
# differently:
#   "factored" (default): the same function with less arithmetic, by linearity (sdm.py): phi_K
#     and phi_V are applied per word and per cell, not per (word, cell) slot of the memory
#     (`factored_memory_convs`; m is never formed), and the global and grid queries are the
#     kernels applied to window means (`pooled_query_convs`), only phi_Q_pixel stays a
#     convolution. The CUB step: 6,525 -> 5,648 GFLOP (bench --flops_only); on the H100 92.3
#     against 95.1 ms float32 (the SDM layers' backward 4.3 ms shorter), bf16 unchanged (54.7
#     against 54.5 ms); on the CPU the refinement parts 11-18% faster (BUILD.md, "H100, sixth
#     sitting").
#   "merged": the kernels (and biases) concatenated along the output channels, one convolution
#     per input (`merged_conv`), its output split: one cuDNN call of 3 x 48 (or 304 + 48)
#     channels instead of three (two) thin ones, whose kernel gradients ran at 12-36 TFLOP/s in
#     the H100 profile of the CUB step. There it took the SDM layers from 21.5 to 17.8 ms of
#     device time (float32; BUILD.md, "H100, fourth and fifth sittings").
#   "separate": one Keras convolution per layer, as the layers are written.
SDM_CONVS_MODES = ("factored", "merged", "separate")
_MODES["sdm_convs"] = SDM_CONVS_MODES

# How `GatedFusion`'s scalar gate (a 1x1 convolution of concat(a, b) to one channel) computes its
# logits; the same function of the same variables, rounded differently:
#   "reduce" (default): sum over channels of a * P_a and b * P_b, accumulated in float32
#     (`fuse.scalar_gate_logits`; P as the layer reads it, bf16 under mixed precision), which
#     XLA fuses with the gating that follows: no concatenation, no cuDNN call for one output
#     channel. The fuse layers: 6.8 -> 5.9 ms of the float32 CUB step on the H100 (faster
#     forward, slower backward; BUILD.md).
#   "matvec": the forward of "reduce"; the kernel's gradient (a sum over every pixel of the
#     batch) as one matrix-vector product per map instead of a column reduction. In the H100
#     profiles of the CUB step the 256-px stage's gate gradients are the largest single group
#     (2.8 ms bf16, 3.8 ms float32) at 3.6-5.3x their bandwidth bound (BUILD.md, "The sixth
#     sitting's profiles read again on the CPU"); untimed on a GPU so far.
#   "conv": the concatenation, then the 1x1 convolution, as the layer is written.
#   A per-channel gate (--fuse_per_channel) is always the convolution.
FUSE_GATE_MODES = ("reduce", "conv", "matvec")
_MODES["fuse_gate"] = FUSE_GATE_MODES


@keras.saving.register_keras_serializable(package=_PKG)
class Conv2D(keras.layers.Conv2D):
  """`keras.layers.Conv2D`, the class of the generator's convolutions (conv3x3, the SDM's, the
  fuse gates). It adds nothing today; `.keras` files saved since it was introduced name it
  (`msmt_tf>Conv2D`), so it stays registered."""


def check_mergeable(convs, what, each=None):
  """Raises ValueError (prefixed `what`, naming the layer) unless the `keras.layers.Conv2D`
  layers `convs` are built, ungrouped, channels last and alike in kernel size, strides, padding,
  dilation, bias use and compute dtype. `each(conv)`: a further condition per layer, checked
  first, returning what is wrong or None."""
  first = convs[0]
  for conv in convs:
    if not conv.built:
      raise ValueError(f"{what}: {conv.name} is not built")
    if conv.groups != 1 or conv.data_format != "channels_last":
      raise ValueError(f"{what} needs ungrouped channels_last convolutions, {conv.name} "
                       f"has groups={conv.groups}, {conv.data_format}")
    problem = each(conv) if each else None
    if problem:
      raise ValueError(f"{what}{problem}")
    if (tuple(conv.kernel_size), tuple(conv.strides), conv.padding, tuple(conv.dilation_rate),
        conv.use_bias, conv.compute_dtype) != (
            tuple(first.kernel_size), tuple(first.strides), first.padding,
            tuple(first.dilation_rate), first.use_bias, first.compute_dtype):
      raise ValueError(f"{what}: {conv.name} and {first.name} differ in kernel size, "
                       "strides, padding, dilation, bias or compute dtype")


def split_outputs(convs, y):
  """The output `y` of `convs` computed as one (their filters concatenated, in order), split
  back per layer, each given its layer's activation."""
  ends = list(itertools.accumulate(c.filters for c in convs))
  outs = ops.split(y, ends[:-1], axis=-1)
  return [c.activation(o) if c.activation is not None else o for c, o in zip(convs, outs)]


def merged_conv(convs, x):
  """`[conv(x) for conv in convs]` as one convolution: the built `keras.layers.Conv2D` layers
  `convs` (same kernel size, strides, padding, dilation and bias use; ungrouped; channels last)
  with their kernels and biases concatenated along the output channels, each output then given
  its layer's activation. Computes in the first layer's compute dtype, as its call would."""
  check_mergeable(convs, "merged_conv")
  first = convs[0]
  dtype = first.compute_dtype
  kernel = ops.concatenate([ops.cast(c.kernel, dtype) for c in convs], axis=-1)
  y = ops.conv(ops.cast(x, dtype), kernel, strides=first.strides, padding=first.padding,
               dilation_rate=first.dilation_rate, data_format="channels_last")
  if first.use_bias:
    y = y + ops.concatenate([ops.cast(c.bias, dtype) for c in convs], axis=-1)
  return split_outputs(convs, y)


def conv3x3(filters, use_bias=False, name=None):
  return Conv2D(filters, 3, padding="same", use_bias=use_bias, kernel_initializer="orthogonal",
                name=name)


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
    if (implementation("upsample_conv") == "fused" and x.shape[1] is not None
        and x.shape[2] is not None):
      y = upsample_conv3x3(x, _float32_kernel(self.conv.kernel))
    else:
      y = self.conv(self.up(x))
    return self.glu(apply_batch_norm(self.bn, y, training))

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
    y = self.glu(apply_batch_norm(self.bn1, self.conv1(x), training))
    return x + apply_batch_norm(self.bn2, self.conv2(y), training)

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
