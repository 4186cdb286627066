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
"""

from keras import ops

__all__ = [
    "bce_with_logits", "discriminator_loss", "generator_adversarial_loss", "kl_loss",
    "redundancy_loss", "damsm_word_similarity", "damsm_word_loss", "damsm_sentence_loss",
    "class_mask",
]

_NEG = -1e30


def bce_with_logits(logits, target):
  """Mean binary cross-entropy of sigmoid(logits) against a constant target (0 or 1)."""
  logits = ops.cast(logits, "float32")
  # max(x, 0) - x t + log(1 + exp(-|x|))
  loss = ops.relu(logits) - logits * target + ops.log1p(ops.exp(-ops.abs(logits)))
  return ops.mean(loss)


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
