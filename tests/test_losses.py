"""Loss tests: hand-computed values and a literal per-caption port of AttnGAN's DAMSM loops."""

import numpy as np
import pytest

from msmt_tf import losses

RNG = np.random.default_rng(2)
LOG2 = np.log(2.0)


def f(x):
  return float(np.asarray(x))


def test_bce_with_logits_hand_values():
  assert f(losses.bce_with_logits(np.zeros(4, "float32"), 1.0)) == pytest.approx(LOG2)
  x = np.array([2.0, -1.0], "float32")
  expected = np.mean([np.log1p(np.exp(-2.0)), np.log1p(np.exp(1.0))])
  assert f(losses.bce_with_logits(x, 1.0)) == pytest.approx(expected, rel=1e-6)
  assert f(losses.bce_with_logits(np.array([100.0], "float32"), 0.0)) == pytest.approx(100.0)


def test_discriminator_loss_weighting():
  z = np.zeros(3, "float32")
  total, parts = losses.discriminator_loss(z, z, z, z, z)
  assert f(total) == pytest.approx(2 * LOG2, rel=1e-6)  # (2 log2)/2 + (3 log2)/3
  big = np.full(3, 30.0, "float32")
  total, parts = losses.discriminator_loss(big, big, -big, -big, big)
  # Only the wrong-pair term is wrong: 30 / 3.
  assert f(total) == pytest.approx(10.0, rel=1e-4)
  assert f(parts["cond_wrong"]) == pytest.approx(30.0, rel=1e-4)


def test_generator_adversarial_loss():
  assert f(losses.generator_adversarial_loss(np.zeros(2, "float32"),
                                             np.zeros(2, "float32"))) == pytest.approx(2 * LOG2)


def test_kl_loss_hand_values():
  assert f(losses.kl_loss(np.zeros((2, 3), "float32"), np.zeros((2, 3), "float32"))) == 0.0
  mu = np.array([[1.0, 0.0]], "float32")
  logvar = np.array([[0.0, np.log(2.0)]], "float32")
  # -0.5 * mean([1 + 0 - 1 - 1, 1 + log2 - 0 - 2]) = -0.5 * (-1 + log2 - 1) / 2
  assert f(losses.kl_loss(mu, logvar)) == pytest.approx(-0.25 * (LOG2 - 2.0), rel=1e-6)


def test_redundancy_loss():
  o = RNG.standard_normal((2, 4, 4, 3)).astype("float32")
  assert f(losses.redundancy_loss([o] * 6)) == pytest.approx(15.0, rel=1e-5)
  a = np.zeros((1, 2, 2, 3), "float32")
  a[..., 0] = 1
  b = np.zeros((1, 2, 2, 3), "float32")
  b[..., 1] = 1
  assert f(losses.redundancy_loss([a, b])) == pytest.approx(0.0, abs=1e-7)
  assert f(losses.redundancy_loss([a, -a, b])) == pytest.approx(-1.0, abs=1e-6)
  assert f(losses.redundancy_loss([a])) == 0.0


def test_class_mask():
  m = np.asarray(losses.class_mask(np.array([3, 5, 3, 3])))
  np.testing.assert_array_equal(m, [[0, 0, 1, 1], [0, 0, 0, 0], [1, 0, 0, 1], [1, 0, 1, 0]])


# --------------------------------------------------------------------- AttnGAN literal port

def _softmax(x, axis):
  x = x - x.max(axis=axis, keepdims=True)
  e = np.exp(x)
  return e / e.sum(axis=axis, keepdims=True)


def _cos(a, b):
  return (a * b).sum(-1) / np.maximum(np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1),
                                      1e-8)


def _ce(scores):
  # nn.CrossEntropyLoss with labels = arange(B); -inf entries contribute exp(-inf) = 0.
  loss = 0.0
  for i, row in enumerate(scores):
    finite = row[np.isfinite(row)]
    m = finite.max()
    loss += -(row[i] - (m + np.log(np.exp(finite - m).sum())))
  return loss / len(scores)


def attngan_words_loss(img_features, words_emb, cap_lens, class_ids, g1, g2, g3):
  """AttnGAN `words_loss` caption by caption (NHWC inputs, float64)."""
  batch = img_features.shape[0]
  context = img_features.reshape(batch, -1, img_features.shape[-1])  # [B, 289, D]
  similarities, masks = [], []
  for i in range(batch):
    mask = (class_ids == class_ids[i]).astype(bool)
    mask[i] = False
    masks.append(mask)
    word = words_emb[i, :cap_lens[i]]                                 # [n, D]
    row = []
    for j in range(batch):
      attn = context[j] @ word.T                                      # [289, n]
      attn = _softmax(attn, axis=1)                                   # over words
      attn = _softmax(g1 * attn.T, axis=1)                            # [n, 289] over regions
      wei = attn @ context[j]                                         # [n, D]
      sim = np.exp(g2 * _cos(word, wei)).sum()
      row.append(np.log(sim))
    similarities.append(row)                                          # caption i, image j
  sims = g3 * np.asarray(similarities).T                              # [image j, caption i]
  sims[np.asarray(masks)] = -np.inf
  return _ce(sims), _ce(sims.T)


def attngan_sent_loss(cnn_code, rnn_code, class_ids, g3):
  masks = []
  for i in range(len(class_ids)):
    mask = class_ids == class_ids[i]
    mask[i] = False
    masks.append(mask)
  scores = g3 * (cnn_code @ rnn_code.T) / np.maximum(
      np.linalg.norm(cnn_code, axis=1)[:, None] * np.linalg.norm(rnn_code, axis=1)[None], 1e-8)
  scores[np.asarray(masks)] = -np.inf
  return _ce(scores), _ce(scores.T)


@pytest.mark.parametrize("class_ids", [np.array([1, 2, 1, 3, 2]), np.arange(5)])
def test_damsm_losses_match_attngan_loops(class_ids):
  b, length, d = 5, 7, 6
  regions = RNG.standard_normal((b, 3, 3, d))
  words = RNG.standard_normal((b, length, d))
  lens = np.array([7, 3, 5, 1, 6])
  mask = np.arange(length)[None] < lens[:, None]
  words = words * mask[..., None]
  got = losses.damsm_word_loss(regions.astype("float32"), words.astype("float32"), mask,
                               class_ids, 4.0, 5.0, 10.0)
  want = attngan_words_loss(regions, words, lens, class_ids, 4.0, 5.0, 10.0)
  np.testing.assert_allclose([f(g) for g in got], want, rtol=2e-4)
  code, sent = RNG.standard_normal((b, d)), RNG.standard_normal((b, d))
  got = losses.damsm_sentence_loss(code.astype("float32"), sent.astype("float32"), class_ids)
  np.testing.assert_allclose([f(g) for g in got], attngan_sent_loss(code, sent, class_ids, 10.0),
                             rtol=1e-4)


def test_damsm_word_loss_ignores_padding_and_rewards_matching():
  b, length, d = 4, 5, 8
  regions = RNG.standard_normal((b, 2, 2, d)).astype("float32")
  mask = np.arange(length)[None] < np.array([[5], [2], [3], [4]])
  words = RNG.standard_normal((b, length, d)).astype("float32")
  base = losses.damsm_word_loss(regions, words, mask)
  noisy = np.where(mask[..., None], words, 50 * RNG.standard_normal(words.shape)).astype("float32")
  np.testing.assert_allclose([f(x) for x in base],
                             [f(x) for x in losses.damsm_word_loss(regions, noisy, mask)],
                             rtol=1e-6)
  # Identical words attend uniformly, so their context is the mean region: words equal to
  # their own image's mean region match it perfectly and the loss drops.
  aligned = np.repeat(regions.reshape(b, 4, d).mean(1, keepdims=True), length, axis=1)
  good = losses.damsm_word_loss(regions, aligned, mask)
  assert f(good[0]) < f(base[0]) and f(good[1]) < f(base[1])
