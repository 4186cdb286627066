"""MSMT-GAN training model: one `train_step` per batch (paper §7.4; DM-GAN `trainer.py`).

Per step (model_spec §4.4): encode the captions with the frozen DAMSM text encoder; sample z;
one generator forward producing every stage's image; one Adam step per stage discriminator on
its loss (fakes detached); one generator Adam step using the *updated* discriminators on the
same fakes; then the EMA generator moves towards the generator (decay 0.999; batch-norm running
statistics are copied, as DM-GAN saves its averaged parameters with the live statistics).
"""

import dataclasses

import keras
from keras import ops

from msmt_tf import losses

__all__ = ["LossConfig", "MSMTGAN", "clone_generator"]


@dataclasses.dataclass(frozen=True)
class LossConfig:
  """Weights of the generator objective (paper Eq. 19) and the DAMSM smoothing factors."""
  lambda1: float = 1.0          # CA KL
  lambda2: float = 0.5          # redundancy
  lambda3: float = 5.0          # DAMSM (5 CUB, 50 COCO)
  gamma1: float = 4.0
  gamma2: float = 5.0
  gamma3: float = 10.0
  damsm_all_stages: bool = False  # paper Eq. 19 sums over stages; DM-GAN code: last stage only


def clone_generator(generator, words_num, text_dim):
  clone = generator.__class__.from_config(generator.get_config())
  clone.build((None, words_num, text_dim), (None, text_dim), (None, words_num),
              (None, generator.z_dim))
  for a, b in zip(clone.variables, generator.variables):
    a.assign(b)
  return clone


class MSMTGAN(keras.Model):
  """Owns the generator, its EMA copy, the stage discriminators and the frozen DAMSM encoders.

  Args:
    generator: a built `MSMTGenerator`.
    discriminators: one built `StageDiscriminator` per generator stage.
    text_encoder, image_encoder: built DAMSM encoders (frozen here).
    loss_config: `LossConfig`.
    words_num: caption length of the training batches.
    ema_decay: 0.999.
    seed: seed of the noise z.
  """

  def __init__(self, generator, discriminators, text_encoder, image_encoder, loss_config,
               words_num, ema_decay=0.999, seed=0, **kwargs):
    super().__init__(**kwargs)
    if len(discriminators) != generator.num_stages:
      raise ValueError(f"{generator.num_stages} generator stages need as many discriminators, "
                       f"got {len(discriminators)}")
    self.generator = generator
    self.discriminators = list(discriminators)
    self.text_encoder = text_encoder
    self.image_encoder = image_encoder
    self.text_encoder.trainable = False
    self.image_encoder.trainable = False
    self.loss_config = loss_config
    self.words_num = words_num
    self.ema_decay = ema_decay
    self.generator_ema = clone_generator(generator, words_num, text_encoder.hidden_dim)
    self.generator_ema.trainable = False
    self.noise_seed = keras.random.SeedGenerator(seed, name="noise_seed")
    self.g_optimizer = None
    self.d_optimizers = None

  def compile(self, g_optimizer, d_optimizers, **kwargs):
    super().compile(**kwargs)
    self.g_optimizer = g_optimizer
    self.d_optimizers = list(d_optimizers)
    g_optimizer.build(self.generator.trainable_variables)
    for opt, d in zip(self.d_optimizers, self.discriminators):
      opt.build(d.trainable_variables)

  # ------------------------------------------------------------------ pieces shared by backends
  def encode_text(self, tokens):
    words, sentence = self.text_encoder(tokens, training=False)
    return ops.stop_gradient(words), ops.stop_gradient(sentence), ops.not_equal(tokens, 0)

  def sample_noise(self, batch):
    return keras.random.normal((batch, self.generator.z_dim), seed=self.noise_seed)

  @staticmethod
  def reals_of(batch, sizes):
    return [batch[f"image_{s}"] for s in sizes]

  def stage_sizes(self):
    return [64 * 2 ** k for k in range(self.generator.num_stages)]

  def discriminator_losses(self, k, real, fake, sentence, training=True):
    d = self.discriminators[k]
    real_code = d.encode(real, training=training)
    fake_code = d.encode(ops.stop_gradient(fake), training=training)
    return losses.discriminator_loss(
        d.uncond_logits(real_code), d.cond_logits(real_code, sentence, training=training),
        d.uncond_logits(fake_code), d.cond_logits(fake_code, sentence, training=training),
        d.cond_logits(real_code[:-1], sentence[1:], training=training))

  def generator_losses(self, out, words, sentence, mask, class_ids, training=True):
    cfg = self.loss_config
    logs = {}
    adv = 0.0
    for k, (d, fake) in enumerate(zip(self.discriminators, out["images"])):
      code = d.encode(fake, training=training)
      term = losses.generator_adversarial_loss(
          d.uncond_logits(code), d.cond_logits(code, sentence, training=training))
      logs[f"g_adv_{64 * 2 ** k}"] = term
      adv = adv + term
    kl = losses.kl_loss(out["mu"], out["logvar"])
    red = 0.0
    for heads in out["head_outputs"]:
      red = red + losses.redundancy_loss(heads)
    stages = out["images"] if cfg.damsm_all_stages else out["images"][-1:]
    w_loss = s_loss = 0.0
    for image in stages:
      regions, code = self.image_encoder(image, training=False)
      w0, w1 = losses.damsm_word_loss(regions, words, mask, class_ids, cfg.gamma1, cfg.gamma2,
                                      cfg.gamma3)
      s0, s1 = losses.damsm_sentence_loss(code, sentence, class_ids, cfg.gamma3)
      w_loss, s_loss = w_loss + w0 + w1, s_loss + s0 + s1
    total = adv + cfg.lambda1 * kl + cfg.lambda2 * red + cfg.lambda3 * (w_loss + s_loss)
    logs.update(g_adv=adv, kl=kl, redundancy=red, damsm_word=w_loss, damsm_sent=s_loss,
                g_total=total)
    return total, logs

  def ema_update(self):
    d = self.ema_decay
    for ema, var in zip(self.generator_ema.variables, self.generator.variables):
      if var.trainable:
        ema.assign(d * ema + (1.0 - d) * var)
      else:  # batch-norm statistics and RNG state: copied
        ema.assign(var)

  # ------------------------------------------------------------------ TensorFlow train step
  def train_step(self, batch):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tokens = batch["tokens"]
    words, sentence, mask = self.encode_text(tokens)
    z = self.sample_noise(ops.shape(tokens)[0])
    reals = self.reals_of(batch, self.stage_sizes())
    g_tape = tf.GradientTape()
    with g_tape:
      out = self.generator(words, sentence, mask, z, training=True)
    logs = {}
    for k, (real, fake) in enumerate(zip(reals, out["images"])):
      d = self.discriminators[k]
      with tf.GradientTape() as tape:
        d_loss, _ = self.discriminator_losses(k, real, fake, sentence)
      grads = tape.gradient(d_loss, d.trainable_variables)
      self.d_optimizers[k].apply(grads, d.trainable_variables)
      logs[f"d_loss_{64 * 2 ** k}"] = d_loss
    with g_tape:
      g_total, g_logs = self.generator_losses(out, words, sentence, mask, batch["class_id"])
    grads = g_tape.gradient(g_total, self.generator.trainable_variables)
    self.g_optimizer.apply(grads, self.generator.trainable_variables)
    self.ema_update()
    logs.update(g_logs)
    return logs

  def sample(self, tokens, z, ca_noise=None, ema=True):
    """Images of every stage for token ids `[B, L]` and noise (inference mode)."""
    words, sentence, mask = self.encode_text(tokens)
    g = self.generator_ema if ema else self.generator
    return g(words, sentence, mask, z, ca_noise, training=False)["images"]
