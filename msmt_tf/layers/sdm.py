"""Spatial Dynamic Memory (SDM), one refinement head: paper §3.2, Eq. 4-14.

Shapes (channels last): R, U `[B, s, s, N_r]`; grid h x h with cells of p x p pixels (p = s / h);
words `[B, L, N_w]`. Every step is a batched einsum / reshape: there is no loop over words,
cells or pixels.
"""

import keras
from keras import ops

from msmt_tf.layers import blocks

__all__ = ["SpatialDynamicMemory", "grid_pool", "to_cells", "from_cells", "shifted_cell_sums",
           "pooled_query_convs", "factored_memory_convs"]

_KEY_MODES = ("split", "concat", "project")


def grid_pool(x, grid):
  """Mean over each p x p cell: `[B, s, s, C] -> [B, h, h, C]` (Eq. 5 / Eq. 11)."""
  s, c = x.shape[1], x.shape[-1]
  p = s // grid
  x = ops.reshape(x, (-1, grid, p, grid, p, c))
  return ops.mean(x, axis=(2, 4))


def to_cells(x, grid):
  """`[B, s, s, C] -> [B, h, h, p*p, C]`, in-cell index `a * p + b` (Eq. 12)."""
  s, c = x.shape[1], x.shape[-1]
  p = s // grid
  x = ops.reshape(x, (-1, grid, p, grid, p, c))
  x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
  return ops.reshape(x, (-1, grid, grid, p * p, c))


def from_cells(x, grid):
  """Inverse of `to_cells` (Eq. 14): `[B, h, h, p*p, C] -> [B, s, s, C]`."""
  pp, c = x.shape[3], x.shape[4]
  p = int(round(pp ** 0.5))
  x = ops.reshape(x, (-1, grid, grid, p, p, c))
  x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
  return ops.reshape(x, (-1, grid * p, grid * p, c))


def _same_offsets(kernel_size):
  """Per kernel tap, the input offset a stride-1 'same' convolution reads (pads (k - 1) // 2
  before, the rest after, as TensorFlow and JAX do)."""
  before = (kernel_size - 1) // 2
  return [t - before for t in range(kernel_size)]


def _shift(x, axis, offset):
  """`y[..., i, ...] = x[..., i + offset, ...]` along `axis`, zero where `i + offset` is outside."""
  if offset == 0:
    return x
  n = x.shape[axis]
  widths = [(0, 0)] * len(x.shape)
  widths[axis] = (0, offset) if offset > 0 else (-offset, 0)
  index = [slice(None)] * len(x.shape)
  index[axis] = slice(max(offset, 0), max(offset, 0) + n)
  return ops.pad(x, widths)[tuple(index)]


def _check_same_convs(convs, what, linear=False):
  """The conditions under which the SDM's convolutions may be rewritten (sdm_convs 'factored'):
  `blocks.check_mergeable`, and stride-1 undilated 'same' convolutions (and with `linear`,
  without activation)."""

  def each(conv):
    if (conv.padding, tuple(conv.strides), tuple(conv.dilation_rate)) != ("same", (1, 1), (1, 1)):
      return (f" needs 'same' convolutions of stride and dilation 1; {conv.name} has "
              f"padding={conv.padding!r}, strides={conv.strides}, dilation={conv.dilation_rate}")
    if linear and conv.activation is not None and conv.activation.__name__ != "linear":
      return (f": {conv.name} has the activation {conv.activation.__name__}; the mean of a "
              "convolution is the kernel applied to means only without one")
    return None

  blocks.check_mergeable(convs, what, each)


def shifted_cell_sums(x, grid, kernel_size):
  """`[B, s, s, C] -> [B, h, h, ky, kx, C]` float32: per cell (i, j) and tap (ty, tx) of a
  stride-1 'same' `kernel_size` convolution, the sum over the cell's pixels (y, x) of
  `x[y + dy(ty), x + dx(tx)]` (zero outside the image): the windows the tap reads, summed."""
  ky, kx = kernel_size
  s, c = x.shape[1], x.shape[-1]
  p = s // grid
  x = ops.cast(x, "float32")
  cols = ops.stack([ops.sum(ops.reshape(_shift(x, 2, d), (-1, s, grid, p, c)), axis=3)
                    for d in _same_offsets(kx)], axis=3)                # [B, s, h, kx, C]
  return ops.stack([ops.sum(ops.reshape(_shift(cols, 1, d), (-1, grid, p, grid, kx, c)), axis=2)
                    for d in _same_offsets(ky)], axis=3)                # [B, h, h, ky, kx, C]


def pooled_query_convs(global_conv, grid_conv, x, grid):
  """`(mean(global_conv(x)) [B, F], grid_pool(grid_conv(x), grid) [B, h, h, F])` without either
  convolution: a convolution without activation is linear, so its mean over a set of pixels is
  its kernel applied to the means of the windows each tap reads (`shifted_cell_sums`), plus the
  bias. Float32 sums and products; the results in the layers' compute dtype."""
  _check_same_convs([global_conv, grid_conv], "pooled_query_convs", linear=True)
  ky, kx = global_conv.kernel_size
  s, c = x.shape[1], x.shape[-1]
  sums = ops.reshape(shifted_cell_sums(x, grid, (ky, kx)), (-1, grid, grid, ky * kx * c))

  def apply(conv, means):  # the kernel [ky, kx, C, F] flattened in the order of the sums
    y = ops.matmul(means, ops.reshape(ops.cast(conv.kernel, "float32"), (ky * kx * c, -1)))
    if conv.use_bias:
      y = y + ops.cast(conv.bias, "float32")
    return ops.cast(y, conv.compute_dtype)

  p = s // grid
  return (apply(global_conv, ops.sum(sums, axis=(1, 2)) / float(s * s)),
          apply(grid_conv, sums / float(p * p)))


def factored_memory_convs(convs, word_part, grid_part, gate):
  """`[conv(m) for conv in convs]`, `[B, L, h, h, filters]` each with its layer's activation, for
  the memory `m[b, l, i, j] = word_part[b, l] gate[b, l, i, j] + grid_part[b, i, j] (1 -
  gate[b, l, i, j])` (Eq. 7), without forming m (`[B L, h, h, N_m]`): the convolution is linear
  before its activation, so per tap t its kernel W_t is applied once per word (`W_t word_part`)
  and once per cell (`W_t grid_part`, shifted by the tap), and these are weighted by the shifted
  gates (zero outside the grid, where m is zero-padded). Float32 products and sums; the outputs
  in the layers' compute dtype.
    word_part `[B, L, N_m]`, grid_part `[B, h, h, N_m]`, gate `[B, L, h, h]`."""
  _check_same_convs(convs, "factored_memory_convs")
  first = convs[0]
  ky, kx = first.kernel_size
  taps = [(dy, dx) for dy in _same_offsets(ky) for dx in _same_offsets(kx)]
  f32 = lambda t: ops.cast(t, "float32")
  kernel = ops.concatenate([f32(c.kernel) for c in convs], axis=-1)    # [ky, kx, N_m, F]
  kernel = ops.reshape(kernel, (ky * kx, kernel.shape[2], kernel.shape[3]))

  def shifted(t, axis):  # per tap, t shifted by (dy, dx) on axes (axis, axis + 1), stacked last
    return ops.stack([_shift(_shift(t, axis, dy), axis + 1, dx) for dy, dx in taps], axis=-1)

  gate = f32(gate)
  word_taps = ops.einsum("blm,tmf->bltf", f32(word_part), kernel)            # [B, L, T, F]
  grid_taps = ops.einsum("bijmt,tmf->bijtf", shifted(f32(grid_part), 1), kernel)  # [B,h,h,T,F]
  word_gates = shifted(gate, 2)                                               # [B, L, h, h, T]
  grid_gates = shifted(1.0 - gate, 2)
  y = (ops.einsum("blijt,bltf->blijf", word_gates, word_taps)
       + ops.einsum("blijt,bijtf->blijf", grid_gates, grid_taps))
  if first.use_bias:
    y = y + ops.concatenate([f32(c.bias) for c in convs], axis=-1)
  return blocks.split_outputs(convs, ops.cast(y, first.compute_dtype))


def _conv(filters, kernel_size, activation=None, name=None):
  return blocks.Conv2D(filters, kernel_size, padding="same", use_bias=True,
                       activation=activation, kernel_initializer="orthogonal", name=name)


@keras.saving.register_keras_serializable(package="msmt_tf")
class SpatialDynamicMemory(keras.layers.Layer):
  """One SDM refinement head (paper §3.2).

  Memory writing (Eq. 5-7): `C = grid_pool(R)`; per word l and cell (i, j) a gate
  `g = sigmoid(A w_l + B_ij . C_ij)` (A `[N_w]`, B `[h, h, N_r]`, no bias) and a slot
  `m_lij = M_w(w_l) * g + M_c(C)_ij * (1 - g)` (`M_w`: 1x1, `M_c`: conv on the grid; bias + ReLU
  on both, as DM-GAN's memory writer).
  Key addressing (Eq. 8-12): `K = phi_K(m_l)` (N_r + p^2 filters), queries from three convs on U:
  global mean, cell mean and the pixel itself; `alpha` = softmax over the words (padding masked).
  Value reading (Eq. 13-14): `e = sum_l alpha V_l` with `V = phi_V(m_l)` (N_r filters), scattered
  back to pixels.

  Resolutions of the paper's ambiguities (model_spec §5.2), as arguments:
    key_mode: 'split' (default): the key's first N_r channels are a content key dotted with
      `q_global + q_grid + q_pixel` (the three query parts share it), its last p^2 channels a
      positional key picked by the pixel's in-cell index, i.e. the (N_r + p^2)-wide key is dotted
      with `[q_global + q_grid + q_pixel ; onehot(a p + b)]`. 'concat': phi_K has 3 N_r filters
      dotted with the concatenated query (no positional part). 'project': N_r + p^2 filters; the
      concatenated 3 N_r query is mapped to N_r by a learned 1x1 projection, plus the positional
      part.
    kernel_size: of M_c, phi_K, phi_V and the three query convs (3; the paper gives none).
    detach_grid: stop the gradient through C, as DM-GAN detaches its pooled image feature.

  Args:
    grid: h (8).
    memory_dim: N_m (96).
    channels: N_r (48); also the width of the query / value features.

  Call arguments:
    words: `[B, L, N_w]`.
    word_mask: `[B, L]` bool, True for real words (at least one per caption).
    memory_source: `R_{k-1}` `[B, s, s, N_r]` (memory writing).
    query_source: `[B, s, s, N_r]` (R_{k-1} for the first head, U_{t-1} after).

  Returns:
    O: `[B, s, s, N_r]` refinement features.
  """

  def __init__(self, grid=8, memory_dim=96, channels=48, kernel_size=3, key_mode="split",
               detach_grid=True, **kwargs):
    super().__init__(**kwargs)
    if key_mode not in _KEY_MODES:
      raise ValueError(f"key_mode must be one of {_KEY_MODES}, got {key_mode!r}")
    if grid < 1:
      raise ValueError(f"grid must be >= 1, got {grid}")
    self.grid = grid
    self.memory_dim = memory_dim
    self.channels = channels
    self.kernel_size = kernel_size
    self.key_mode = key_mode
    self.detach_grid = detach_grid
    self.word_gate = keras.layers.Dense(1, use_bias=False, kernel_initializer="orthogonal",
                                        name="A")
    self.word_memory = keras.layers.Dense(memory_dim, activation="relu",
                                          kernel_initializer="orthogonal", name="M_w")
    self.grid_memory = _conv(memory_dim, kernel_size, "relu", name="M_c")
    self.value = _conv(channels, kernel_size, "relu", name="phi_V")
    self.q_global = _conv(channels, kernel_size, name="phi_Q_global")
    self.q_grid = _conv(channels, kernel_size, name="phi_Q_grid")
    self.q_pixel = _conv(channels, kernel_size, name="phi_Q_pixel")

  def cell_size(self, size):
    if size % self.grid:
      raise ValueError(f"feature map side {size} is not divisible by grid {self.grid}")
    return size // self.grid

  def build(self, words_shape, word_mask_shape=None, memory_source_shape=None,
            query_source_shape=None):
    s, nr = memory_source_shape[1], memory_source_shape[-1]
    if nr != self.channels:
      raise ValueError(f"SDM expects {self.channels} image channels, got {nr}")
    p = self.cell_size(s)
    h = self.grid
    self.grid_gate = self.add_weight(shape=(h, h, nr), initializer="glorot_uniform", name="B")
    self.word_gate.build(words_shape)
    self.word_memory.build(words_shape)
    self.grid_memory.build((None, h, h, nr))
    key_width = 3 * nr if self.key_mode == "concat" else nr + p * p
    self.key = _conv(key_width, self.kernel_size, "relu", name="phi_K")
    self.key.build((None, h, h, self.memory_dim))
    self.value.build((None, h, h, self.memory_dim))
    for conv in (self.q_global, self.q_grid, self.q_pixel):
      conv.build(query_source_shape)
    if self.key_mode == "project":
      self.query_proj = keras.layers.Dense(nr, use_bias=False, kernel_initializer="orthogonal",
                                           name="query_proj")
      self.query_proj.build((None, 3 * nr))

  def call(self, words, word_mask, memory_source, query_source):
    h, nr = self.grid, self.channels
    s = memory_source.shape[1]
    p = s // h
    length = words.shape[1]
    # Memory writing (Eq. 5-7).
    c = grid_pool(memory_source, h)                                   # [B, h, h, Nr]
    if self.detach_grid:
      c = ops.stop_gradient(c)
    gate = (ops.squeeze(self.word_gate(words), -1)[:, :, None, None]  # [B, L, 1, 1]
            + ops.sum(c * self.grid_gate, axis=-1)[:, None])          # [B, 1, h, h]
    gate = ops.sigmoid(gate)                                          # [B, L, h, h]
    mw = self.word_memory(words)                                      # [B, L, Nm]
    mc = self.grid_memory(c)                                          # [B, h, h, Nm]
    mode = blocks.implementation("sdm_convs")
    if mode == "factored":  # no m, no global / grid query convolutions (linearity)
      keys, values = factored_memory_convs([self.key, self.value], mw, mc, gate)
      q_glob, q_grid = pooled_query_convs(self.q_global, self.q_grid, query_source, h)
      q_pix = self.q_pixel(query_source)
    else:
      m = (mw[:, :, None, None, :] * gate[..., None]
           + mc[:, None] * (1.0 - gate[..., None]))                   # [B, L, h, h, Nm]
      m = ops.reshape(m, (-1, h, h, self.memory_dim))                 # words folded in batch
      queries = (self.q_global, self.q_grid, self.q_pixel)
      if mode == "merged":  # one convolution per input
        keys, values = blocks.merged_conv([self.key, self.value], m)
        q_maps = blocks.merged_conv(queries, query_source)
      else:
        keys, values = self.key(m), self.value(m)
        q_maps = [conv(query_source) for conv in queries]
      keys = ops.reshape(keys, (-1, length, h, h, self.key.filters))
      values = ops.reshape(values, (-1, length, h, h, nr))
      # Queries (Eq. 9-12).
      q_glob = ops.mean(q_maps[0], axis=(1, 2))                       # [B, Nr]
      q_grid = grid_pool(q_maps[1], h)                                # [B, h, h, Nr]
      q_pix = q_maps[2]
    q_pix = to_cells(q_pix, h)                                        # [B, h, h, p*p, Nr]
    if self.key_mode == "concat":
      k_glob, k_grid, k_pix = ops.split(keys, 3, axis=-1)
      logits = (ops.einsum("blijc,bc->blij", k_glob, q_glob)[..., None]
                + ops.einsum("blijc,bijc->blij", k_grid, q_grid)[..., None]
                + ops.einsum("blijc,bijqc->blijq", k_pix, q_pix))
    else:
      if self.key_mode == "split":
        query = q_glob[:, None, None, None, :] + q_grid[:, :, :, None, :] + q_pix
      else:
        full = ops.concatenate([
            ops.broadcast_to(q_glob[:, None, None, None, :], ops.shape(q_pix)),
            ops.broadcast_to(q_grid[:, :, :, None, :], ops.shape(q_pix)), q_pix], axis=-1)
        query = self.query_proj(full)
      k_content, k_position = keys[..., :nr], keys[..., nr:]
      logits = ops.einsum("blijc,bijqc->blijq", k_content, query) + k_position
    # Addressing over words (Eq. 8), computed in float32; padding gets no weight.
    logits = ops.cast(logits, "float32")
    valid = ops.reshape(ops.cast(word_mask, "bool"), (-1, length, 1, 1, 1))
    logits = ops.where(valid, logits, ops.full_like(logits, -1e30))
    alpha = ops.softmax(logits, axis=1)                               # [B, L, h, h, p*p]
    alpha = ops.where(valid, alpha, ops.zeros_like(alpha))
    alpha = ops.cast(alpha, values.dtype)
    # Value reading (Eq. 13-14).
    e = ops.einsum("blijq,blijc->bijqc", alpha, values)               # [B, h, h, p*p, Nr]
    return from_cells(e, h)

  def compute_output_shape(self, words_shape, word_mask_shape=None, memory_source_shape=None,
                           query_source_shape=None):
    return memory_source_shape

  def get_config(self):
    return {**super().get_config(), "grid": self.grid, "memory_dim": self.memory_dim,
            "channels": self.channels, "kernel_size": self.kernel_size,
            "key_mode": self.key_mode, "detach_grid": self.detach_grid}
