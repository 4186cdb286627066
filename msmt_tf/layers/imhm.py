"""Refinement stages: IMHM over SDM heads (paper §3.3, Eq. 15-16) and DM-GAN's memory stage."""

import keras
from keras import ops

from msmt_tf.layers.blocks import ResBlock, UpBlock
from msmt_tf.layers.fuse import GatedFusion
from msmt_tf.layers.sdm import SpatialDynamicMemory

__all__ = ["IterativeMultiHeadRefinement", "DMGANRefinement", "WORD_MASKS"]


def _build_tail(res_blocks, up, shape):
  """Builds concat(x, x) -> ResBlocks -> UpBlock for a `[B, s, s, C]` response."""
  doubled = tuple(shape[:-1]) + (2 * shape[-1],)
  for block in res_blocks:
    block.build(doubled)
  up.build(doubled)


def _run_tail(res_blocks, up, response, training):
  x = ops.concatenate([response, response], axis=-1)  # DM-GAN duplicates the response
  for block in res_blocks:
    x = block(x, training=training)
  return up(x, training=training)


@keras.saving.register_keras_serializable(package="msmt_tf")
class IterativeMultiHeadRefinement(keras.layers.Layer):
  """One refinement stage with T SDM heads (paper §3.3).

  `U_0 = R`; for t = 1..T: `O_t = SDM_t(W, memory from R, queries from U_{t-1})`,
  `U_t = fuse_t(U_{t-1}, O_t)` (separate P_t, rho_t per head);
  `response = fuse_skip(U_T, R)` when T > 1 (with a single head U_1 is the response, as the
  paper says); then `concat(response, response)` (2 N_r channels, DM-GAN style) ->
  `num_res` ResBlocks -> UpBlock -> `R_k [B, 2s, 2s, N_r]`.
  With `num_heads=1` this is the paper's single-headed "SDM refinement" ablation.

  Args:
    num_heads: T (6).
    num_res: ResBlocks (2 for CUB, 3 for COCO; model_spec §5.3).
    query_mode: 'iterative' (default, paper): head t queries U_{t-1}. 'previous': every head
      queries R_{k-1}.
    grid, memory_dim, channels, kernel_size, key_mode, detach_grid: of every SDM head.
    fuse_per_channel: gate width of every fuse.

  Call arguments:
    features: `R_{k-1}` `[B, s, s, N_r]`.
    words: `[B, L, N_w]`; word_mask: `[B, L]` bool (True for real words).

  Returns:
    `(R_k [B, 2s, 2s, N_r], [O_1, ..., O_T])`, the head outputs for the redundancy loss.
  """

  def __init__(self, num_heads=6, num_res=2, grid=8, memory_dim=96, channels=48, kernel_size=3,
               key_mode="split", detach_grid=True, query_mode="iterative",
               fuse_per_channel=False, **kwargs):
    super().__init__(**kwargs)
    if num_heads < 1:
      raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    if query_mode not in ("iterative", "previous"):
      raise ValueError(f"query_mode must be 'iterative' or 'previous', got {query_mode!r}")
    self.num_heads = num_heads
    self.num_res = num_res
    self.grid = grid
    self.memory_dim = memory_dim
    self.channels = channels
    self.kernel_size = kernel_size
    self.key_mode = key_mode
    self.detach_grid = detach_grid
    self.query_mode = query_mode
    self.fuse_per_channel = fuse_per_channel
    self.heads = [SpatialDynamicMemory(grid, memory_dim, channels, kernel_size, key_mode,
                                       detach_grid, name=f"sdm{t}") for t in range(num_heads)]
    self.fuses = [GatedFusion(fuse_per_channel, name=f"fuse{t}") for t in range(num_heads)]
    self.skip_fuse = GatedFusion(fuse_per_channel, name="fuse_skip") if num_heads > 1 else None
    self.res_blocks = [ResBlock(name=f"res{i}") for i in range(num_res)]
    self.up = UpBlock(channels, name="up")

  def build(self, features_shape, words_shape=None, word_mask_shape=None):
    for head, fuse in zip(self.heads, self.fuses):
      head.build(words_shape, word_mask_shape, features_shape, features_shape)
      fuse.build(features_shape, features_shape)
    if self.skip_fuse is not None:
      self.skip_fuse.build(features_shape, features_shape)
    _build_tail(self.res_blocks, self.up, features_shape)

  def call(self, features, words, word_mask, training=None):
    u = features
    outputs = []
    for head, fuse in zip(self.heads, self.fuses):
      query = u if self.query_mode == "iterative" else features
      o = head(words, word_mask, features, query)
      outputs.append(o)
      u = fuse(u, o)
    response = self.skip_fuse(u, features) if self.skip_fuse is not None else u
    return _run_tail(self.res_blocks, self.up, response, training), outputs

  def compute_output_shape(self, features_shape, words_shape=None, word_mask_shape=None):
    b, s, _, c = features_shape
    up = (b, None if s is None else 2 * s, None if s is None else 2 * s, c)
    return up, [features_shape] * self.num_heads

  def get_config(self):
    return {**super().get_config(), "num_heads": self.num_heads, "num_res": self.num_res,
            "grid": self.grid, "memory_dim": self.memory_dim, "channels": self.channels,
            "kernel_size": self.kernel_size, "key_mode": self.key_mode,
            "detach_grid": self.detach_grid, "query_mode": self.query_mode,
            "fuse_per_channel": self.fuse_per_channel}


WORD_MASKS = ("per_sample", "official_repeat")


def _official_repeat_mask(word_mask, num_pixels):
  """The word mask DM-GAN's `Memory.forward` applies, `[B, P, L]` for `[B, L]`.

  The official code flattens the scores to rows `b * P + q` (sample b, pixel q) and masks them
  with `mask.repeat(P, 1)`, whose row r is `mask[r mod B]`: pixel q of sample b gets the padding
  pattern of sample `(b * P + q) mod B`. (Both terms are reduced mod B first, so nothing
  overflows.)
  """
  batch = ops.shape(word_mask)[0]
  b = ops.arange(batch, dtype="int32")[:, None]
  q = ops.arange(num_pixels, dtype="int32")[None, :]
  source = ops.mod(ops.mod(b * ops.mod(num_pixels, batch), batch) + ops.mod(q, batch), batch)
  return ops.take(word_mask, source, axis=0)                               # [B, P, L]


@keras.saving.register_keras_serializable(package="msmt_tf")
class DMGANRefinement(keras.layers.Layer):
  """DM-GAN's dynamic-memory refinement stage (`NEXT_STAGE_G` of DM-GAN's `code/model.py`).

  `h_bar = mean(h)` (stop-gradient); per word `g_l = sigmoid(A w_l + B h_bar)`;
  `m_l = ReLU(M_w w_l) g_l + ReLU(M_r h_bar) (1 - g_l)` (2C wide); key / value = ReLU(1x1(m));
  each pixel's feature is the query: `o = softmax_l(h . key_l) value` (padded words masked);
  response gate `r = sigmoid(conv1x1(concat(h, o)))`, `h' = h (1 - r) + o r`;
  `concat(h', h')` -> `num_res` ResBlocks(2C) -> UpBlock(C).

  Args:
    channels: C, DM-GAN's ngf (64).
    num_res: ResBlocks (DM-GAN's R_NUM: 2 CUB, 3 COCO).
    word_mask: which padding mask each pixel's word softmax uses.
      'per_sample' (default): every pixel masks its own caption's padding (what the model is
        meant to do; used for our own training).
      'official_repeat': DM-GAN's released code, `mask.repeat(queryL, 1)` on scores flattened
        to rows `b * queryL + q`, so pixel q of sample b masks with the padding of sample
        `(b * queryL + q) mod B` (interop.md §3). The released DM-GAN models were trained and
        evaluated this way; reproducing their images needs it. Outputs then depend on the
        other captions of the batch (their order included), and on padded word vectors, which
        must be zero (as DM-GAN's and our text encoders give them).

  Call arguments / returns: as `IterativeMultiHeadRefinement` (the head list holds `o`).
  """

  def __init__(self, channels=64, num_res=2, word_mask="per_sample", **kwargs):
    super().__init__(**kwargs)
    if word_mask not in WORD_MASKS:
      raise ValueError(f"word_mask must be one of {WORD_MASKS}, got {word_mask!r}")
    self.channels = channels
    self.num_res = num_res
    self.word_mask = word_mask
    init = "orthogonal"
    self.word_gate = keras.layers.Dense(1, use_bias=False, kernel_initializer=init, name="A")
    self.image_gate = keras.layers.Dense(1, use_bias=False, kernel_initializer=init, name="B")
    self.word_memory = keras.layers.Dense(2 * channels, activation="relu",
                                          kernel_initializer=init, name="M_w")
    self.image_memory = keras.layers.Dense(2 * channels, activation="relu",
                                           kernel_initializer=init, name="M_r")
    self.key = keras.layers.Dense(channels, activation="relu", kernel_initializer=init,
                                  name="key")
    self.value = keras.layers.Dense(channels, activation="relu", kernel_initializer=init,
                                    name="value")
    # Holds the response gate's 1x1 convolution (2C -> 1, bias); `call` applies it the way
    # DM-GAN does (the gate weighs the memory output), not as GatedFusion's `a g + b (1 - g)`.
    self.fuse = GatedFusion(name="response_gate")
    self.res_blocks = [ResBlock(name=f"res{i}") for i in range(num_res)]
    self.up = UpBlock(channels, name="up")

  def build(self, features_shape, words_shape=None, word_mask_shape=None):
    c = features_shape[-1]
    self.word_gate.build(words_shape)
    self.word_memory.build(words_shape)
    self.image_gate.build((None, c))
    self.image_memory.build((None, c))
    self.key.build((None, None, 2 * self.channels))
    self.value.build((None, None, 2 * self.channels))
    self.fuse.build(features_shape, features_shape)
    _build_tail(self.res_blocks, self.up, features_shape)

  def call(self, features, words, word_mask, training=None):
    s, c = features.shape[1], features.shape[-1]
    h_bar = ops.stop_gradient(ops.mean(features, axis=(1, 2)))              # [B, C]
    gate = ops.sigmoid(ops.squeeze(self.word_gate(words), -1)
                       + self.image_gate(h_bar))[..., None]                   # [B, L, 1]
    m = (self.word_memory(words) * gate
         + self.image_memory(h_bar)[:, None, :] * (1.0 - gate))              # [B, L, 2C]
    keys, values = self.key(m), self.value(m)                                # [B, L, C]
    query = ops.reshape(features, (-1, s * s, c))
    logits = ops.cast(ops.einsum("bpc,blc->bpl", query, keys), "float32")
    word_mask = ops.cast(word_mask, "bool")
    if self.word_mask == "official_repeat":
      valid = _official_repeat_mask(word_mask, s * s)                         # [B, P, L]
    else:
      valid = word_mask[:, None, :]
    logits = ops.where(valid, logits, ops.full_like(logits, -1e30))
    alpha = ops.cast(ops.where(valid, ops.softmax(logits, axis=-1), 0.0), values.dtype)
    o = ops.reshape(ops.einsum("bpl,blc->bpc", alpha, values), (-1, s, s, c))
    r = ops.sigmoid(self.fuse.gate(ops.concatenate([features, o], axis=-1)))
    response = features * (1.0 - r) + o * r
    return _run_tail(self.res_blocks, self.up, response, training), [o]

  def compute_output_shape(self, features_shape, words_shape=None, word_mask_shape=None):
    b, s, _, c = features_shape
    up = (b, None if s is None else 2 * s, None if s is None else 2 * s, c)
    return up, [features_shape]

  def get_config(self):
    return {**super().get_config(), "channels": self.channels, "num_res": self.num_res,
            "word_mask": self.word_mask}
