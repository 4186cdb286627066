"""MSMT-GAN objective as pure functions of tensors (`keras.ops` only; TF and JAX steps share them).

Paper §7.4 (Eq. 19-23) with the conventions of the code it builds on (model_spec §2.3, §4):
  * discriminator (DM-GAN `discriminator_loss`): `(real + cond_real) / 2 +
    (fake + cond_fake + cond_wrong) / 3`, where `cond_wrong` pairs real images with the next
    sample's sentence;
  * generator adversarial (DM-GAN `generator_loss`): `BCE(D(x_hat), 1) + BCE(D(x_hat, s), 1)`;
  * conditioning augmentation KL: `-0.5 * mean(1 + logvar - mu^2 - exp(logvar))`;
  * redundancy (Eq. 20-21): sum over head pairs of the cosine similarity of the heads' spatially
    averaged outputs, averaged over the batch;
  * DAMSM word and sentence losses (AttnGAN `words_loss` / `sent_loss`) with the class mask.
Logits are pre-sigmoid; binary cross-entropies are computed from logits (stable, same value).

Data-parallel steps that do not see the global batch as one tensor (TensorFlow's tf.distribute:
each replica holds its rows) use the `*_share` functions: a replica's share of each loss over the
global batch of B rows, given its own rows, the global tensors gathered from every replica, and
`rows`, the global indices of its own rows. The shares of all replicas sum to the loss of the
global batch (and so do their gradients, through the gather), whatever the split.
"""

from keras import ops

__all__ = [
    "bce_with_logits", "discriminator_loss", "generator_adversarial_loss", "kl_loss",
    "redundancy_loss", "damsm_word_similarity", "damsm_word_loss", "damsm_sentence_loss",
    "class_mask", "class_mask_rows", "discriminator_loss_share", "damsm_word_loss_share",
    "damsm_sentence_loss_share",
]

_NEG = -1e30


def _bce_elements(logits, target):
  logits = ops.cast(logits, "float32")
  # max(x, 0) - x t + log(1 + exp(-|x|))
  return ops.relu(logits) - logits * target + ops.log1p(ops.exp(-ops.abs(logits)))


def bce_with_logits(logits, target):
  """Mean binary cross-entropy of sigmoid(logits) against a constant target (0 or 1)."""
  return ops.mean(_bce_elements(logits, target))


def discriminator_loss(real_uncond, real_cond, fake_uncond, fake_cond, wrong_cond):
  """One stage's D loss (DM-GAN code weighting); returns (total, parts dict)."""
  real = bce_with_logits(real_uncond, 1.0)
  cond_real = bce_with_logits(real_cond, 1.0)
  fake = bce_with_logits(fake_uncond, 0.0)
  cond_fake = bce_with_logits(fake_cond, 0.0)
  cond_wrong = bce_with_logits(wrong_cond, 0.0)
  total = (real + cond_real) / 2.0 + (fake + cond_fake + cond_wrong) / 3.0
  return total, {"real": real, "cond_real": cond_real, "fake": fake, "cond_fake": cond_fake,
                 "cond_wrong": cond_wrong}


def discriminator_loss_share(real_uncond, real_cond, fake_uncond, fake_cond, wrong_cond,
                             wrong_valid, fraction, num_wrong):
  """A replica's share of `discriminator_loss` over the global batch; returns (total, parts).

  Args:
    real_uncond, real_cond, fake_uncond, fake_cond: logits of this replica's rows (`[b, ...]`).
    wrong_cond: `[b, ...]` logits of each own real image (global row i) with the sentence of
      global row i + 1 (any sentence for the global batch's last row, which has no pair).
    wrong_valid: `[b]`, 1.0 where the pair exists (global row i < B - 1), else 0.0.
    fraction: b / B.
    num_wrong: B - 1, the global number of wrong pairs.
  """
  real = bce_with_logits(real_uncond, 1.0) * fraction
  cond_real = bce_with_logits(real_cond, 1.0) * fraction
  fake = bce_with_logits(fake_uncond, 0.0) * fraction
  cond_fake = bce_with_logits(fake_cond, 0.0) * fraction
  per_pair = ops.mean(ops.reshape(_bce_elements(wrong_cond, 0.0),
                                  (ops.shape(wrong_cond)[0], -1)), axis=1)
  cond_wrong = ops.sum(per_pair * ops.cast(wrong_valid, "float32")) / ops.cast(num_wrong,
                                                                               "float32")
  total = (real + cond_real) / 2.0 + (fake + cond_fake + cond_wrong) / 3.0
  return total, {"real": real, "cond_real": cond_real, "fake": fake, "cond_fake": cond_fake,
                 "cond_wrong": cond_wrong}


def generator_adversarial_loss(fake_uncond, fake_cond):
  """One stage's G adversarial loss: unconditional + conditional, no 1/2 (DM-GAN code)."""
  return bce_with_logits(fake_uncond, 1.0) + bce_with_logits(fake_cond, 1.0)


def kl_loss(mu, logvar):
  """CA KL divergence to N(0, I), averaged over all elements (DM-GAN `KL_loss`)."""
  mu, logvar = ops.cast(mu, "float32"), ops.cast(logvar, "float32")
  return -0.5 * ops.mean(1.0 + logvar - ops.square(mu) - ops.exp(logvar))


def _l2_normalize(x, axis=-1, eps=1e-8):
  return x / ops.maximum(ops.sqrt(ops.sum(ops.square(x), axis=axis, keepdims=True)), eps)


def redundancy_loss(head_outputs):
  """Eq. 20-21: `mean_b sum_{i<j} cos(f_i, f_j)`, `f_t` = spatial mean of head t's output.

  Args:
    head_outputs: list of T tensors `[B, s, s, C]`. Fewer than two heads give 0.
  """
  if len(head_outputs) < 2:
    return ops.convert_to_tensor(0.0)
  f = ops.stack([ops.mean(ops.cast(o, "float32"), axis=(1, 2)) for o in head_outputs], axis=1)
  f = _l2_normalize(f)                                   # [B, T, C]
  sim = ops.einsum("btc,buc->btu", f, f)                 # [B, T, T]
  t = len(head_outputs)
  upper = ops.triu(ops.ones((t, t)), k=1)
  return ops.mean(ops.sum(sim * upper, axis=(1, 2)))


def class_mask(class_ids):
  """`[B, B]` bool: True where j != i and class j == class i (those pairs are not negatives)."""
  c = ops.reshape(class_ids, (-1,))
  same = ops.equal(c[:, None], c[None, :])
  return ops.logical_and(same, ops.logical_not(ops.eye(ops.shape(c)[0], dtype="bool")))


def class_mask_rows(class_ids, all_class_ids, rows):
  """Rows `rows` of `class_mask(all_class_ids)`: `[b, B]`, True where global column j != rows[r]
  and has the class of own row r (`class_ids`, `[b]`)."""
  c = ops.reshape(class_ids, (-1,))
  a = ops.reshape(all_class_ids, (-1,))
  same = ops.equal(c[:, None], a[None, :])
  other = ops.not_equal(ops.reshape(rows, (-1, 1)),
                        ops.arange(ops.shape(a)[0], dtype=rows.dtype)[None, :])
  return ops.logical_and(same, other)


def _cross_entropy_rows(scores, rows, total):
  """Sum over own rows of the cross-entropy of row r against label rows[r], divided by the
  global row count `total` (this replica's share of `_cross_entropy_diag` of the global scores)."""
  logp = scores - ops.logsumexp(scores, axis=1, keepdims=True)
  picked = ops.take_along_axis(logp, ops.reshape(rows, (-1, 1)), axis=1)
  return -ops.sum(picked) / ops.cast(total, scores.dtype)


def _cross_entropy_diag(scores):
  """Mean cross-entropy of each row against its diagonal label (labels = arange(B))."""
  logp = scores - ops.logsumexp(scores, axis=1, keepdims=True)
  return -ops.mean(ops.diagonal(logp))


def damsm_word_similarity(regions, words, word_mask, gamma1=4.0, gamma2=5.0):
  """`R[j, i] = log sum_k exp(gamma2 cos(c_jik, e_ik))` (AttnGAN `words_loss`, before gamma3).

  Args:
    regions: `[B, H, W, D]` (or `[B, N, D]`) local image features v_j.
    words: `[B, L, D]` word features e_i; word_mask `[B, L]` (True = real word).
  Returns:
    `[B_images, B_captions]` similarities.
  """
  regions = ops.cast(regions, "float32")
  b, d = ops.shape(regions)[0], regions.shape[-1]
  v = ops.reshape(regions, (b, -1, d))                                 # [J, N, D]
  e = ops.cast(words, "float32")                                       # [I, K, D]
  valid = ops.cast(word_mask, "bool")[None, :, None, :]                # [1, I, 1, K]
  attn = ops.einsum("jnd,ikd->jink", v, e)                             # [J, I, N, K]
  attn = ops.where(valid, attn, _NEG)
  attn = ops.softmax(attn, axis=-1)                                    # over words
  attn = ops.softmax(gamma1 * attn, axis=2)                            # over regions
  context = ops.einsum("jink,jnd->jikd", attn, v)                      # [J, I, K, D]
  cos = ops.sum(_l2_normalize(context) * _l2_normalize(e)[None], axis=-1)  # [J, I, K]
  cos = ops.where(valid[:, :, 0, :], gamma2 * cos, _NEG)
  return ops.logsumexp(cos, axis=-1)


def damsm_word_loss(regions, words, word_mask, class_ids=None, gamma1=4.0, gamma2=5.0,
                    gamma3=10.0):
  """AttnGAN word-level DAMSM loss; returns `(loss0, loss1)` (image->text, text->image CE)."""
  scores = gamma3 * damsm_word_similarity(regions, words, word_mask, gamma1, gamma2)
  if class_ids is not None:
    scores = ops.where(class_mask(class_ids), _NEG, scores)
  return _cross_entropy_diag(scores), _cross_entropy_diag(ops.transpose(scores))


def damsm_sentence_loss(image_code, sentence, class_ids=None, gamma3=10.0):
  """AttnGAN sentence-level DAMSM loss; returns `(loss0, loss1)`."""
  scores = gamma3 * ops.matmul(_l2_normalize(ops.cast(image_code, "float32")),
                               ops.transpose(_l2_normalize(ops.cast(sentence, "float32"))))
  if class_ids is not None:
    scores = ops.where(class_mask(class_ids), _NEG, scores)
  return _cross_entropy_diag(scores), _cross_entropy_diag(ops.transpose(scores))


def damsm_word_loss_share(regions, words, word_mask, class_ids, all_regions, all_words,
                          all_word_mask, all_class_ids, rows, gamma1=4.0, gamma2=5.0,
                          gamma3=10.0):
  """A replica's share of `damsm_word_loss` over the global batch; returns `(loss0, loss1)`.

  Its images (`regions`, global rows `rows`) against every caption give its rows of the global
  similarity matrix (loss0, image -> text); every image against its captions its columns (loss1).
  `all_*` are the global batch's tensors (every replica's rows, in replica order); class ids may
  be None (no class mask) on both.
  """
  total = ops.shape(all_words)[0]
  rows0 = gamma3 * damsm_word_similarity(regions, all_words, all_word_mask, gamma1, gamma2)
  rows1 = gamma3 * ops.transpose(damsm_word_similarity(all_regions, words, word_mask, gamma1,
                                                       gamma2))
  if class_ids is not None:
    mask = class_mask_rows(class_ids, all_class_ids, rows)  # symmetric: same for both
    rows0, rows1 = ops.where(mask, _NEG, rows0), ops.where(mask, _NEG, rows1)
  return _cross_entropy_rows(rows0, rows, total), _cross_entropy_rows(rows1, rows, total)


def damsm_sentence_loss_share(image_code, sentence, class_ids, all_image_code, all_sentence,
                              all_class_ids, rows, gamma3=10.0):
  """A replica's share of `damsm_sentence_loss` over the global batch (see
  `damsm_word_loss_share`); returns `(loss0, loss1)`."""
  total = ops.shape(all_sentence)[0]

  def unit(x):
    return _l2_normalize(ops.cast(x, "float32"))

  rows0 = gamma3 * ops.matmul(unit(image_code), ops.transpose(unit(all_sentence)))
  rows1 = gamma3 * ops.matmul(unit(sentence), ops.transpose(unit(all_image_code)))
  if class_ids is not None:
    mask = class_mask_rows(class_ids, all_class_ids, rows)
    rows0, rows1 = ops.where(mask, _NEG, rows0), ops.where(mask, _NEG, rows1)
  return _cross_entropy_rows(rows0, rows, total), _cross_entropy_rows(rows1, rows, total)
