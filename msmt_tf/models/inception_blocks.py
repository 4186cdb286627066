"""Building blocks shared by the two Inception-v3 networks of the project (`keras.ops` only).

Both the official FID network (TF graph `inception-2015-12-05`, `evaluation/inception.py`) and
torchvision's ImageNet `inception_v3` (`msmt_tf/models/torchvision_inception.py`, the trunk of
AttnGAN's DAMSM image encoder and of DM-GAN's "PyTorch FID") have the same convolutions: the same
stem, the same eleven mixed blocks (3 x A, B, 4 x C, D, 2 x E) with the same kernel sizes,
strides, paddings and channel counts, concatenated in the same order. They differ only in

* the batch norm: the TF graph has no scale (gamma); torchvision's `BasicConv2d` has one
  (both eps 0.001);
* the pooling branch of the A/C/E blocks: the TF graph's 3x3 average pool does not count padded
  zeros and Mixed_7c pools with a max pool; torchvision's `F.avg_pool2d(x, 3, 1, 1)` counts the
  padding (`count_include_pad=True`) everywhere;
* the names of the weights.

`InceptionV3Body` holds the convolutions and runs the network; subclasses name the weights and
choose the pools. Every convolution is conv (no bias) -> batch norm (moving statistics) -> ReLU
(`ConvBN`). Max pools of the stem and the B/D blocks are 3x3 / stride 2 without padding
(PyTorch's `ceil_mode=False`, TF's VALID).
"""

import keras
from keras import ops
import numpy as np

__all__ = ["BN_EPS", "STEM", "BLOCKS", "ConvBN", "InceptionV3Body", "avg_pool_exclude_pad",
           "avg_pool_include_pad", "block_convs", "max_pool_same", "max_pool_valid",
           "resize_bilinear", "RESIZE_MODES"]

BN_EPS = 1e-3
RESIZE_MODES = ("legacy", "half_pixel", "align_corners")

# Stem convolutions (cin, cout, kernel, stride, padding); max pools after the 3rd and the 5th.
STEM = ((3, 32, 3, 2, 0), (32, 32, 3, 1, 0), (32, 64, 3, 1, 1), (64, 80, 1, 1, 0),
        (80, 192, 3, 1, 0))
# Mixed blocks: (kind, input channels, pool features (A) / channels_7x7 (C)).
BLOCKS = (("a", 192, 32), ("a", 256, 64), ("a", 288, 64), ("b", 288, 0), ("c", 768, 128),
          ("c", 768, 160), ("c", 768, 160), ("c", 768, 192), ("d", 768, 0), ("e", 1280, 0),
          ("e", 2048, 0))


def _spec(cin, cout, kernel, stride=1, pad=(0, 0)):
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  pad = (pad, pad) if isinstance(pad, int) else tuple(pad)
  return dict(cin=cin, cout=cout, kh=kh, kw=kw, stride=stride, pad=pad)


def block_convs(kind, cin, arg):
  """Specs of one mixed block's convolutions in the canonical order (torchvision's order of
  definition: `branch1x1, branch5x5_1, ...`, the same as the TF graph's `conv, tower.conv, ...`)."""
  s = _spec
  if kind == "a":
    return [s(cin, 64, 1), s(cin, 48, 1), s(48, 64, 5, pad=2), s(cin, 64, 1),
            s(64, 96, 3, pad=1), s(96, 96, 3, pad=1), s(cin, arg, 1)]
  if kind == "b":
    return [s(cin, 384, 3, 2), s(cin, 64, 1), s(64, 96, 3, pad=1), s(96, 96, 3, 2)]
  if kind == "c":
    c7 = arg
    return [s(cin, 192, 1), s(cin, c7, 1), s(c7, c7, (1, 7), pad=(0, 3)),
            s(c7, 192, (7, 1), pad=(3, 0)), s(cin, c7, 1), s(c7, c7, (7, 1), pad=(3, 0)),
            s(c7, c7, (1, 7), pad=(0, 3)), s(c7, c7, (7, 1), pad=(3, 0)),
            s(c7, 192, (1, 7), pad=(0, 3)), s(cin, 192, 1)]
  if kind == "d":
    return [s(cin, 192, 1), s(192, 320, 3, 2), s(cin, 192, 1), s(192, 192, (1, 7), pad=(0, 3)),
            s(192, 192, (7, 1), pad=(3, 0)), s(192, 192, 3, 2)]
  if kind == "e":
    return [s(cin, 320, 1), s(cin, 384, 1), s(384, 384, (1, 3), pad=(0, 1)),
            s(384, 384, (3, 1), pad=(1, 0)), s(cin, 448, 1), s(448, 384, 3, pad=1),
            s(384, 384, (1, 3), pad=(0, 1)), s(384, 384, (3, 1), pad=(1, 0)), s(cin, 192, 1)]
  raise ValueError(f"unknown Inception block kind {kind!r}")


# ----------------------------------------------------------------------------- ops
def _resize_indices(in_size, out_size, mode):
  i = np.arange(out_size, dtype=np.float32)
  if mode == "align_corners":
    scale = (np.float32(in_size - 1) / np.float32(out_size - 1) if out_size > 1
             else np.float32(0.0))
    src = i * scale
  else:
    scale = np.float32(in_size) / np.float32(out_size)
    src = (i + np.float32(0.5)) * scale - np.float32(0.5) if mode == "half_pixel" else i * scale
  src = np.maximum(src, np.float32(0.0))
  lo = np.floor(src).astype(np.int32)
  hi = np.minimum(lo + 1, in_size - 1).astype(np.int32)
  lo = np.minimum(lo, in_size - 1)
  return lo, hi, (src - lo).astype(np.float32)


def resize_bilinear(images, size, half_pixel=False, mode=None):
  """Bilinear resize of `[N, H, W, C]` to `size` x `size` without antialiasing.

  Args:
    images: `[N, H, W, C]` float.
    size: output height and width.
    half_pixel: shorthand for `mode='half_pixel'` (kept for the FID code).
    mode: 'legacy': TF1 `ResizeBilinear` (align_corners=False, half_pixel_centers=False; source
      index `i * in / out`), the rule inside the official Inception graph. 'half_pixel': TF2
      `tf.image.resize` / PyTorch `F.interpolate(mode='bilinear', align_corners=False)` (as
      pytorch-fid and PyTorch >= 0.4's `nn.Upsample` resize). 'align_corners': PyTorch
      `align_corners=True` (source index `i * (in - 1) / (out - 1)`: corner pixels map onto
      corner pixels), as `nn.Upsample(mode='bilinear')` behaved up to PyTorch 0.3 and as DM-GAN's
      FID code asks explicitly.

  Returns:
    `[N, size, size, C]` float32. Resizing to the input's own size is the identity in every mode.
  """
  mode = mode or ("half_pixel" if half_pixel else "legacy")
  if mode not in RESIZE_MODES:
    raise ValueError(f"resize mode must be one of {RESIZE_MODES}, got {mode!r}")
  h, w = images.shape[1], images.shape[2]
  x = ops.cast(images, "float32")
  y0, y1, fy = _resize_indices(h, size, mode)
  x0, x1, fx = _resize_indices(w, size, mode)
  top, bottom = ops.take(x, y0, axis=1), ops.take(x, y1, axis=1)
  fy = ops.reshape(ops.convert_to_tensor(fy), (1, size, 1, 1))
  x = top + (bottom - top) * fy
  left, right = ops.take(x, x0, axis=2), ops.take(x, x1, axis=2)
  fx = ops.reshape(ops.convert_to_tensor(fx), (1, 1, size, 1))
  return left + (right - left) * fx


def avg_pool_exclude_pad(x):
  """3x3 stride-1 average pool, padding 1, padded zeros not counted (TF SAME avg pool)."""
  padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  total = ops.average_pool(padded, 3, 1, "valid") * 9.0
  h, w = x.shape[1], x.shape[2]
  ones = np.pad(np.ones((h, w), np.float32), 1)
  count = sum(ones[i:i + h, j:j + w] for i in range(3) for j in range(3))
  return total / ops.convert_to_tensor(count[None, :, :, None].astype(np.float32))


def avg_pool_include_pad(x):
  """3x3 stride-1 average pool over zero padding 1, always divided by 9 (PyTorch
  `F.avg_pool2d(x, 3, 1, 1)` with its default `count_include_pad=True`)."""
  return ops.average_pool(ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0))), 3, 1, "valid")


def max_pool_same(x):
  """3x3 stride-1 max pool, padding 1 (padded values never win; TF SAME max pool)."""
  padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  return ops.max_pool(padded, 3, 1, "valid")


def max_pool_valid(x):
  """3x3 stride-2 max pool without padding (TF VALID; PyTorch `max_pool2d(3, 2)`)."""
  return ops.max_pool(x, 3, 2, "valid")


@keras.saving.register_keras_serializable(package="msmt_tf")
class ConvBN(keras.layers.Layer):
  """conv (no bias) -> batch norm with moving statistics (eps 1e-3) -> ReLU; frozen.

  Args:
    cin, cout: channels. kh, kw: kernel. stride: int. pad: (rows, columns) of zero padding.
    scale: whether the batch norm has a scale `gamma` (torchvision's `BasicConv2d`: yes; the TF
      FID graph: no).
  """

  def __init__(self, cin, cout, kh, kw, stride=1, pad=(0, 0), scale=False, **kwargs):
    super().__init__(**kwargs)
    self.cin, self.cout, self.kh, self.kw, self.stride = cin, cout, kh, kw, stride
    self.pad, self.scale = tuple(pad), scale
    self.kernel = self.add_weight(name="kernel", shape=(kh, kw, cin, cout), trainable=False)
    self.gamma = (self.add_weight(name="gamma", shape=(cout,), initializer="ones",
                                  trainable=False) if scale else None)
    self.beta = self.add_weight(name="beta", shape=(cout,), initializer="zeros", trainable=False)
    self.mean = self.add_weight(name="mean", shape=(cout,), initializer="zeros", trainable=False)
    self.var = self.add_weight(name="var", shape=(cout,), initializer="ones", trainable=False)

  def call(self, x):
    ph, pw = self.pad
    if ph or pw:
      x = ops.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    y = ops.conv(x, self.kernel, strides=self.stride, padding="valid")
    mult = ops.rsqrt(self.var + BN_EPS)
    if self.gamma is not None:
      mult = mult * self.gamma
    return ops.relu(y * mult + (self.beta - self.mean * mult))

  def get_config(self):
    return {**super().get_config(), "cin": self.cin, "cout": self.cout, "kh": self.kh,
            "kw": self.kw, "stride": self.stride, "pad": self.pad, "scale": self.scale}


class InceptionV3Body(keras.Model):
  """The Inception-v3 convolutions up to Mixed_7c; subclasses name them and choose the pools.

  Subclasses define `stem_names()` (the 5 stem convolutions), `block_names()` (per entry of
  `BLOCKS`: `(key, [conv names in the canonical order of block_convs])`), `bn_scale` and
  `pool(index)` (the pooling-branch function of block `index`, for A/C/E blocks).
  """

  bn_scale = False

  @classmethod
  def stem_names(cls):
    raise NotImplementedError

  @classmethod
  def block_names(cls):
    raise NotImplementedError

  def pool(self, index):
    raise NotImplementedError

  @classmethod
  def conv_specs(cls):
    """[(name, spec)] of the 94 convolutions (stem first, then block by block)."""
    specs = [(name, _spec(cin, cout, k, stride, pad))
             for name, (cin, cout, k, stride, pad) in zip(cls.stem_names(), STEM)]
    for (kind, cin, arg), (_, names) in zip(BLOCKS, cls.block_names()):
      specs += list(zip(names, block_convs(kind, cin, arg)))
    return specs

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.convs = {}
    for name, spec in self.conv_specs():
      self.convs[name] = ConvBN(**spec, scale=self.bn_scale, name=name.replace(".", "__"))

  def build(self, input_shape):
    del input_shape  # every weight is made in __init__ (the network is fully convolutional)

  def _run_block(self, index, x):
    kind = BLOCKS[index][0]
    c = [self.convs[n] for n in self.block_names()[index][1]]
    if kind == "a":
      out = [c[0](x), c[2](c[1](x)), c[5](c[4](c[3](x))), c[6](self.pool(index)(x))]
    elif kind == "b":
      out = [c[0](x), c[3](c[2](c[1](x))), max_pool_valid(x)]
    elif kind == "c":
      out = [c[0](x), c[3](c[2](c[1](x))), c[8](c[7](c[6](c[5](c[4](x))))),
             c[9](self.pool(index)(x))]
    elif kind == "d":
      out = [c[1](c[0](x)), c[5](c[4](c[3](c[2](x)))), max_pool_valid(x)]
    else:
      a, b = c[1](x), c[5](c[4](x))
      out = [c[0](x), c[2](a), c[3](a), c[6](b), c[7](b), c[8](self.pool(index)(x))]
    return ops.concatenate(out, axis=-1)

  def run_body(self, x, keep=None):
    """Runs `[N, 299, 299, 3]` (already resized and normalised) through the network.

    Args:
      x: network input, NHWC.
      keep: block keys (as in `block_names`) whose outputs to return; None: the last block's.

    Returns:
      {key: output} for the kept blocks; stops after the last one needed.
    """
    names = self.block_names()
    keep = [names[-1][0]] if keep is None else list(keep)
    unknown = [k for k in keep if k not in dict(names)]
    if unknown:
      raise ValueError(f"unknown block(s) {unknown}: one of {[k for k, _ in names]}")
    stem = [self.convs[n] for n in self.stem_names()]
    x = max_pool_valid(stem[2](stem[1](stem[0](x))))
    x = max_pool_valid(stem[4](stem[3](x)))
    out = {}
    for i, (key, _) in enumerate(names):
      x = self._run_block(i, x)
      if key in keep:
        out[key] = x
        if len(out) == len(keep):
          break
    return out
