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
    z = batch["z"] if "z" in batch else self.sample_noise(ops.shape(tokens)[0])
    reals = self.reals_of(batch, self.stage_sizes())
    g_tape = tf.GradientTape()
    with g_tape:
      out = self.generator(words, sentence, mask, z, batch.get("ca_noise"), training=True)
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

  # ------------------------------------------------------------------ JAX train step
  def state_variables(self):
    """Every variable a training step reads or writes, in a fixed order (models, then optimizers)."""
    seen, out = set(), []
    groups = [self.variables, self.g_optimizer.variables]
    groups += [opt.variables for opt in self.d_optimizers]
    for group in groups:
      for v in group:
        if id(v) not in seen:
          seen.add(id(v))
          out.append(v)
    return out

  def jax_train_step(self, state, batch):
    """The TensorFlow `train_step`'s math as a pure function: `(state, batch) -> (state, logs)`.

    `state` holds the values of `state_variables()`. The losses are the same methods the
    TensorFlow step calls; only gradients (`jax.vjp` / `jax.value_and_grad`) and state plumbing
    (`keras.StatelessScope`, `optimizer.stateless_apply`) differ. Jit it whole.
    """
    import jax  # pylint: disable=g-import-not-at-top
    variables = self.state_variables()
    values = {id(v): x for v, x in zip(variables, state)}

    def scoped(vals, fn):
      with keras.StatelessScope([(v, vals[id(v)]) for v in variables]) as scope:
        result = fn()
      return result, {id(v): scope.get_current_value(v) for v in variables}

    def with_values(vals, owners, new):
      vals = dict(vals)
      vals.update((id(v), x) for v, x in zip(owners, new))
      return vals

    tokens = batch["tokens"]

    def text_and_noise():
      words, sentence, mask = self.encode_text(tokens)
      z = batch["z"] if "z" in batch else self.sample_noise(ops.shape(tokens)[0])
      return words, sentence, mask, z

    (words, sentence, mask, z), values = scoped(values, text_and_noise)
    reals = self.reals_of(batch, self.stage_sizes())

    g_vars = self.generator.trainable_variables
    g_params = [values[id(v)] for v in g_vars]

    def g_forward(params):
      return scoped(with_values(values, g_vars, params), lambda: self.generator(
          words, sentence, mask, z, batch.get("ca_noise"), training=True))

    out, g_vjp, values = jax.vjp(g_forward, g_params, has_aux=True)

    logs = {}
    for k, (real, fake) in enumerate(zip(reals, out["images"])):
      d_vars = self.discriminators[k].trainable_variables

      def d_loss_fn(params, vals, k=k, real=real, fake=fake, d_vars=d_vars):
        (loss, _), new = scoped(with_values(vals, d_vars, params),
                                lambda: self.discriminator_losses(k, real, fake, sentence))
        return loss, new

      d_params = [values[id(v)] for v in d_vars]
      (d_loss, values), grads = jax.value_and_grad(d_loss_fn, has_aux=True)(d_params, values)
      opt = self.d_optimizers[k]
      new_params, new_opt = opt.stateless_apply([values[id(v)] for v in opt.variables], grads,
                                                d_params)
      values = with_values(with_values(values, d_vars, new_params), opt.variables, new_opt)
      logs[f"d_loss_{64 * 2 ** k}"] = d_loss

    def g_loss_fn(images_and_more):
      (total, g_logs), new = scoped(values, lambda: self.generator_losses(
          images_and_more, words, sentence, mask, batch["class_id"]))
      return total, (g_logs, new)

    (_, (g_logs, values)), out_grads = jax.value_and_grad(g_loss_fn, has_aux=True)(out)
    (g_grads,) = g_vjp(out_grads)
    opt = self.g_optimizer
    new_params, new_opt = opt.stateless_apply([values[id(v)] for v in opt.variables], g_grads,
                                              [values[id(v)] for v in g_vars])
    values = with_values(with_values(values, g_vars, new_params), opt.variables, new_opt)
    _, values = scoped(values, self.ema_update)
    logs.update(g_logs)
    return [values[id(v)] for v in variables], logs

  def make_train_function(self, jit_compile=True, placement=None):
    """A callable `batch -> logs` running one step on the current Keras backend.

    TensorFlow: `tf.function(train_step)` (XLA when `jit_compile`). JAX: the pure
    `jax_train_step` under `jax.jit` (always: `jit_compile` only chooses XLA on TensorFlow),
    holding the state between calls; its `sync()` writes the state back into the Keras variables
    (call it before saving or sampling). Both return scalar losses.

    `placement` (JAX only; `msmt_tf.distribute.Placement`): data-parallel over its device mesh,
    the batch sharded, the state replicated; the step is the same function of the global batch.
    The batch given to each call is then this process's rows of the global batch.
    """
    return _StepFunction(self, jit_compile, placement)

  def sample(self, tokens, z, ca_noise=None, ema=True):
    """Images of every stage for token ids `[B, L]` and noise (inference mode)."""
    words, sentence, mask = self.encode_text(tokens)
    g = self.generator_ema if ema else self.generator
    return g(words, sentence, mask, z, ca_noise, training=False)["images"]


class _StepFunction:
  """See `MSMTGAN.make_train_function`."""

  def __init__(self, gan, jit_compile, placement=None):
    self.gan = gan
    self.backend = keras.backend.backend()
    self.placement = placement
    if placement is not None and self.backend != "jax":
      raise ValueError("a device placement needs KERAS_BACKEND=jax")
    if self.backend == "tensorflow":
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._fn = tf.function(gan.train_step, jit_compile=jit_compile, reduce_retracing=True)
    elif self.backend == "jax":
      import jax  # pylint: disable=g-import-not-at-top
      self._vars = gan.state_variables()
      self._state = None
      self._compiled = False
      step = gan.jax_train_step
      if placement is None:
        self._fn = jax.jit(step, donate_argnums=0)
      else:  # XLA SPMD: state replicated, batch sharded on its first axis
        p = placement
        self._fn = jax.jit(step, donate_argnums=0, in_shardings=(p.replicated, p.batch),
                           out_shardings=(p.replicated, p.replicated))
    else:
      raise ValueError(f"no MSMT-GAN train step for KERAS_BACKEND={self.backend}; "
                       "use tensorflow or jax")

  def __call__(self, batch):
    if self.backend == "tensorflow":
      return self._fn(batch)
    if self.placement is not None:
      p = self.placement
      if self._state is None:
        self._state = p.put_state([keras.ops.convert_to_numpy(v.value) for v in self._vars])
      batch = p.put_batch(batch)
      if p.multi_process and not self._compiled:
        # Compile ahead of time, then meet: compile times differ between processes by more
        # than gloo's 30 s for the first collective.
        self._fn = self._fn.lower(self._state, batch).compile()
        self._compiled = True
        p.barrier("step_compiled")
      self._state, logs = self._fn(self._state, batch)
      return {k: p.local(v) for k, v in logs.items()}
    if self._state is None:  # a copy: the jitted step donates (frees) its input buffers
      import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
      self._state = [jnp.array(v.value, copy=True) for v in self._vars]
    self._state, logs = self._fn(self._state, batch)
    return logs

  def sync(self):
    """Writes the JAX state into the Keras variables (no-op on TensorFlow)."""
    if self.backend == "jax" and self._state is not None:
      for v, x in zip(self._vars, self._state):
        v.assign(x if self.placement is None else self.placement.local(x))
      self._state = None  # re-read on the next call: variables may be restored in between
