"""MSMT-GAN training model: one `train_step` per batch (paper §7.4; DM-GAN `trainer.py`).

Per step (model_spec §4.4): encode the captions with the frozen DAMSM text encoder; sample z;
one generator forward producing every stage's image; one Adam step per stage discriminator on
its loss (fakes detached); one generator Adam step using the *updated* discriminators on the
same fakes; then the EMA generator moves towards the generator (decay 0.999; batch-norm running
statistics are copied, as DM-GAN saves its averaged parameters with the live statistics).
"""

import contextlib
import dataclasses

import keras
from keras import ops
import numpy as np

from msmt_tf import losses
from msmt_tf.models.initialization import one_program_initialization
from msmt_tf.models.stateless import jit_over_variables

__all__ = ["LossConfig", "MSMTGAN", "BatchShard", "clone_generator", "STOP_KEYS"]


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
  with one_program_initialization():  # every value is a copy: nothing to compute
    clone.build((None, words_num, text_dim), (None, text_dim), (None, words_num),
                (None, generator.z_dim))
    for a, b in zip(clone.variables, generator.variables):
      a.assign(b)
  return clone


class BatchShard:
  """One replica's rows of the global batch, for a data-parallel step in which no replica sees
  the global batch as one tensor (TensorFlow's tf.distribute step; under JAX, XLA SPMD computes the
  global batch's math itself). The replica's losses are then its *shares* of the global batch's
  losses (`msmt_tf.losses.*_share`, means scaled by b / B), so that the sum over replicas, and the
  sum of their gradients, is the single-device step's at the global batch. The DAMSM in-batch
  negatives and the discriminators' wrong-caption pairs read the global batch through `gather`.

  Args:
    gather: a nested structure of `[b, ...]` tensors -> the same structure of `[B, ...]`, every
      replica's rows in replica order (differentiable: its gradient goes back to the replica
      that owns the rows). Every replica must call it in the same order.
    replica_id: this replica's index (int or int scalar tensor); it holds global rows
      `replica_id * b ... replica_id * b + b - 1`.
    num_replicas: N (int); every replica holds b = B / N rows.
    local_size: b (int).
  """

  def __init__(self, gather, replica_id, num_replicas, local_size):
    self.gather = gather
    self.num_replicas = int(num_replicas)
    self.local_size = int(local_size)
    self.total = self.local_size * self.num_replicas
    self.fraction = 1.0 / self.num_replicas
    self.rows = (ops.cast(replica_id, "int32") * self.local_size
                 + ops.arange(self.local_size, dtype="int32"))
    self.text = None

  def own(self, x):
    """This replica's rows of a global `[B, ...]` tensor."""
    return ops.take(x, self.rows, axis=0)

  def gather_text(self, words, sentence, mask, class_ids):
    """Gathers the global batch's text once per step (no gradient flows into it). The mask and
    class ids travel as float32 (exact below 2**24): collectives of integer tensors are not
    available on every device."""
    all_words, all_sentence, all_mask, all_class_ids = self.gather(
        (words, sentence, ops.cast(mask, "float32"), ops.cast(class_ids, "float32")))
    nxt = ops.mod(self.rows + 1, self.total)
    self.text = dict(words=all_words, sentence=all_sentence,
                     mask=ops.greater(all_mask, 0.5),
                     class_ids=ops.cast(ops.round(all_class_ids), class_ids.dtype),
                     # the wrong caption of global row i is row i + 1's; row B - 1 has none
                     next_sentence=ops.take(all_sentence, nxt, axis=0),
                     wrong_valid=ops.cast(ops.less(self.rows, self.total - 1), "float32"))


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
    with one_program_initialization():
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

  def discriminator_losses(self, k, real, fake, sentence, training=True, shard=None):
    """Stage k's D loss and its parts; with a `BatchShard` (text gathered), this replica's share
    of the global batch's."""
    d = self.discriminators[k]
    real_code = d.encode(real, training=training)
    fake_code = d.encode(ops.stop_gradient(fake), training=training)
    if shard is not None:
      return losses.discriminator_loss_share(
          d.uncond_logits(real_code), d.cond_logits(real_code, sentence, training=training),
          d.uncond_logits(fake_code), d.cond_logits(fake_code, sentence, training=training),
          d.cond_logits(real_code, shard.text["next_sentence"], training=training),
          shard.text["wrong_valid"], shard.fraction, shard.total - 1)
    return losses.discriminator_loss(
        d.uncond_logits(real_code), d.cond_logits(real_code, sentence, training=training),
        d.uncond_logits(fake_code), d.cond_logits(fake_code, sentence, training=training),
        d.cond_logits(real_code[:-1], sentence[1:], training=training))

  def generator_losses(self, out, words, sentence, mask, class_ids, training=True, shard=None):
    """G's objective and its parts; with a `BatchShard` (text gathered), this replica's share
    of the global batch's."""
    cfg = self.loss_config
    # A replica's share of a per-example mean is the mean over its rows times b / B.
    share = (lambda x: x) if shard is None else (lambda x: x * shard.fraction)
    logs = {}
    adv = 0.0
    for k, (d, fake) in enumerate(zip(self.discriminators, out["images"])):
      code = d.encode(fake, training=training)
      term = share(losses.generator_adversarial_loss(
          d.uncond_logits(code), d.cond_logits(code, sentence, training=training)))
      logs[f"g_adv_{64 * 2 ** k}"] = term
      adv = adv + term
    kl = share(losses.kl_loss(out["mu"], out["logvar"]))
    red = 0.0
    for heads in out["head_outputs"]:
      red = red + share(losses.redundancy_loss(heads))
    stages = out["images"] if cfg.damsm_all_stages else out["images"][-1:]
    w_loss = s_loss = 0.0
    for image in stages:
      regions, code = self.image_encoder(image, training=False)
      if shard is None:
        w0, w1 = losses.damsm_word_loss(regions, words, mask, class_ids, cfg.gamma1, cfg.gamma2,
                                        cfg.gamma3)
        s0, s1 = losses.damsm_sentence_loss(code, sentence, class_ids, cfg.gamma3)
      else:  # in-batch negatives over the global batch
        text = shard.text
        all_regions, all_code = shard.gather((regions, code))
        w0, w1 = losses.damsm_word_loss_share(
            regions, words, mask, class_ids, all_regions, text["words"], text["mask"],
            text["class_ids"], shard.rows, cfg.gamma1, cfg.gamma2, cfg.gamma3)
        s0, s1 = losses.damsm_sentence_loss_share(code, sentence, class_ids, all_code,
                                                  text["sentence"], text["class_ids"],
                                                  shard.rows, cfg.gamma3)
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
  def train_step(self, batch, shard=None):
    """One step on `batch`. With a `BatchShard` (inside `tf.distribute.Strategy.run`): `batch`
    is this replica's rows of the global batch, the losses returned are its shares (their sum
    over replicas is the global batch's), and the noise not given in `batch` is drawn for the
    global batch (as one device would) and this replica's rows taken. The optimizers all-reduce
    (sum) the gradients of the shares."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tokens = batch["tokens"]
    words, sentence, mask = self.encode_text(tokens)
    ca_noise = batch.get("ca_noise")
    if shard is None:
      z = batch["z"] if "z" in batch else self.sample_noise(ops.shape(tokens)[0])
    else:
      z = batch["z"] if "z" in batch else shard.own(self.sample_noise(shard.total))
      if ca_noise is None:  # the draw the CA layer would make for the global batch
        ca = self.generator.ca
        ca_noise = shard.own(keras.random.normal((shard.total, ca.condition_dim),
                                                 dtype=ca.compute_dtype, seed=ca.seed_generator))
      shard.gather_text(words, sentence, mask, batch["class_id"])
    reals = self.reals_of(batch, self.stage_sizes())
    g_tape = tf.GradientTape()
    with g_tape:
      out = self.generator(words, sentence, mask, z, ca_noise, training=True)
    logs = {}
    for k, (real, fake) in enumerate(zip(reals, out["images"])):
      d = self.discriminators[k]
      with tf.GradientTape() as tape:
        d_loss, _ = self.discriminator_losses(k, real, fake, sentence, shard=shard)
      grads = tape.gradient(d_loss, d.trainable_variables)
      self.d_optimizers[k].apply(grads, d.trainable_variables)
      logs[f"d_loss_{64 * 2 ** k}"] = d_loss
    with g_tape:
      g_total, g_logs = self.generator_losses(out, words, sentence, mask, batch["class_id"],
                                              shard=shard)
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

  def frozen_variables(self):
    """The variables a training step only reads: the DAMSM text and image encoders'."""
    return self.text_encoder.variables + self.image_encoder.variables

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

    `placement`: data-parallel; the batch given to each call is then this process's rows of the
    global batch and the logs are the global batch's losses. JAX (`msmt_tf.distribute.Placement`):
    over its device mesh, the batch sharded, the state replicated; the step is the same function
    of the global batch. TensorFlow (`msmt_tf.distribute.TFPlacement`, the model built under its
    strategy): `train_step` with a `BatchShard` on every replica (`strategy.run`), batch norm
    synchronized over the replicas, the replicas' loss shares summed (no `jit_compile`).

    A placed step also takes the batch entries `STOP_KEYS` where given (one float per row: 1
    where this process was asked to stop by that signal, else 0; `msmt_tf.train` gives them in
    a multi-process run), and returns each in its logs as a value > 0 where any process gave 1:
    every process reads the same value from the same step, so all stop after the same one.
    """
    return _StepFunction(self, jit_compile, placement)

  def sample(self, tokens, z, ca_noise=None, ema=True):
    """Images of every stage for token ids `[B, L]` and noise (inference mode).

    On JAX, with `ca_noise` given (nothing drawn inside), one compiled program of the text encoder
    and the generator, reading the variables' current values at each call: run eagerly, every op
    of the forward is an XLA compile of its own (about 200 for the small test model: a cold JAX
    smoke training run compiled 302 programs, 46 with this), paid again by every process."""
    if keras.backend.backend() == "jax" and ca_noise is not None:
      return self._jax_sampler(ema)(tokens, z, ca_noise)
    return self._sample(tokens, z, ca_noise, ema)

  def _sample(self, tokens, z, ca_noise, ema):
    words, sentence, mask = self.encode_text(tokens)
    g = self.generator_ema if ema else self.generator
    return g(words, sentence, mask, z, ca_noise, training=False)["images"]

  def _jax_sampler(self, ema):
    """`(tokens, z, ca_noise) -> images`, jitted once per `ema` (see `sample`)."""
    name = "_jax_sampler_ema" if ema else "_jax_sampler_live"
    fn = self.__dict__.get(name)
    if fn is None:
      variables = list(self.text_encoder.variables) + list(
          (self.generator_ema if ema else self.generator).variables)
      fn = jit_over_variables(lambda tokens, z, eps: self._sample(tokens, z, eps, ema), variables)
      object.__setattr__(self, name, fn)  # a plain attribute: nothing for Keras to track
    return fn


# Batch entries of a placed step that are not training data: each process's stop requests
# (Ctrl-C, SIGTERM), reduced over the processes into the logs (see `make_train_function`).
STOP_KEYS = ("stop_sigint", "stop_sigterm")


def _split_stop_requests(batch):
  """`batch` -> (the batch without `STOP_KEYS`, those entries)."""
  stops = {k: batch[k] for k in STOP_KEYS if k in batch}
  return {k: v for k, v in batch.items() if k not in stops}, stops


class _StepFunction:
  """See `MSMTGAN.make_train_function`."""

  def __init__(self, gan, jit_compile, placement=None):
    self.gan = gan
    self.backend = keras.backend.backend()
    self.placement = placement
    distributed_tf = placement is not None and hasattr(placement, "strategy")
    if placement is not None and (self.backend == "jax") == distributed_tf:
      raise ValueError(f"{type(placement).__name__} does not place a "
                       f"KERAS_BACKEND={self.backend} step")
    if self.backend == "tensorflow" and distributed_tf:
      self._fn = _tf_distributed_step(gan, placement, jit_compile)
    elif self.backend == "tensorflow":
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      self._fn = tf.function(gan.train_step, jit_compile=jit_compile, reduce_retracing=True,
                             autograph=False)
    elif self.backend == "jax":
      import jax  # pylint: disable=g-import-not-at-top
      self._vars = gan.state_variables()
      frozen = {id(v) for v in gan.frozen_variables()}
      self._live = [i for i, v in enumerate(self._vars) if id(v) not in frozen]
      self._frozen = [i for i, v in enumerate(self._vars) if id(v) in frozen]
      self._state = self._constants = None
      self._compiled = False
      step = _split_step(gan, self._vars, self._live, self._frozen)
      if placement is None:
        self._fn = jax.jit(step, donate_argnums=0)
      else:  # XLA SPMD: state replicated, batch sharded on its first axis
        p = placement
        self._fn = jax.jit(step, donate_argnums=0,
                           in_shardings=(p.replicated, p.replicated, p.batch),
                           out_shardings=(p.replicated, p.replicated))
    else:
      raise ValueError(f"no MSMT-GAN train step for KERAS_BACKEND={self.backend}; "
                       "use tensorflow or jax")

  def __call__(self, batch):
    if self.backend == "tensorflow":
      if self.placement is not None:
        batch = self.placement.put_batch(batch)
      return self._fn(batch)
    if self.placement is not None:
      p = self.placement
      if self._state is None:
        self._state, self._constants = (
            p.put_state([keras.ops.convert_to_numpy(self._vars[i].value) for i in part])
            for part in (self._live, self._frozen))
      batch = p.put_batch(batch)
      if p.multi_process and not self._compiled:
        # Compile ahead of time, then meet: compile times differ between processes by more
        # than gloo's 30 s for the first collective.
        self._fn = self._fn.lower(self._state, self._constants, batch).compile()
        self._compiled = True
        p.barrier("step_compiled")
      self._state, logs = self._fn(self._state, self._constants, batch)
      return {k: p.local(v) for k, v in logs.items()}
    if self._state is None:  # a copy: the jitted step donates (frees) its input buffers
      import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
      self._state = [jnp.array(self._vars[i].value, copy=True) for i in self._live]
      self._constants = [self._vars[i].value for i in self._frozen]  # not donated: no copy
    self._state, logs = self._fn(self._state, self._constants, batch)
    return logs

  def sync(self):
    """Writes the JAX state into the Keras variables (no-op on TensorFlow)."""
    if self.backend == "jax" and self._state is not None:
      for i, x in zip(self._live, self._state):
        self._vars[i].assign(x if self.placement is None else self.placement.local(x))
      # re-read on the next call: variables may be restored in between
      self._state = self._constants = None


def _split_step(gan, variables, live, frozen):
  """`gan.jax_train_step` as `(live, constants, batch) -> (live, logs)`: the state's `frozen`
  entries (indices into `variables`, the DAMSM encoders) are an argument of their own, neither
  donated nor returned. Each array a jitted call takes in and gives back costs the host time per
  step (on the H100, the 1,731 arrays of the CUB state took 7-9 ms of host time per blocked
  step); the frozen encoders are 389 of them. Checked when traced: a step that writes one of
  them raises, naming it (its new value would otherwise be dropped)."""

  def step(live_values, constants, batch):
    import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
    batch, stops = _split_stop_requests(batch)
    state = [None] * len(variables)
    for i, x in zip(live, live_values):
      state[i] = x
    for i, x in zip(frozen, constants):
      state[i] = x
    new, logs = gan.jax_train_step(state, batch)
    written = [variables[i].path for i in frozen if new[i] is not state[i]]
    if written:
      raise ValueError(f"the train step writes {len(written)} variable(s) of the frozen "
                       f"encoders, which it takes as constants: {', '.join(written[:5])}")
    logs = dict(logs)
    logs.update((k, jnp.max(v)) for k, v in stops.items())  # over the global batch: all processes
    return [new[i] for i in live], logs

  return step


JIT_REFUSED = ("--jit_compile is not supported by the distributed TensorFlow step ({placement}): "
               "leave it off, or use KERAS_BACKEND=jax (always compiled)")


@contextlib.contextmanager
def _synchronized_batch_norm(models):
  """Batch norm over the replicas' global batch while a distributed step is traced (Keras'
  `BatchNormalization.synchronized`, TensorFlow only). Set for the trace only, not in the layers'
  configs: a saved model stays loadable under JAX (which refuses `synchronized=True`), and a
  single-device step keeps `tf.nn.moments` (the synchronized moments, E[x^2] - E[x]^2, round
  differently even over one replica)."""
  # pylint: disable-next=protected-access
  layers = [layer for m in models for layer in m._flatten_layers(include_self=False)
            if isinstance(layer, keras.layers.BatchNormalization)]
  before = [layer.synchronized for layer in layers]
  for layer in layers:
    layer.synchronized = True
  try:
    yield
  finally:
    for layer, value in zip(layers, before):
      layer.synchronized = value


def _tf_distributed_step(gan, placement, jit_compile):
  """`per-replica batch -> global logs`: `gan.train_step` with a `BatchShard` on every replica of
  the placement's strategy (see `MSMTGAN.make_train_function`)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # The placement came from msmt_tf.distribute: already imported (with its flags).
  from msmt_tf.distribute import tensorflow_info_off  # pylint: disable=g-import-not-at-top
  strategy = placement.strategy
  owners = [("generator", gan.generator), ("generator_ema", gan.generator_ema)]
  owners += [(d.name, d) for d in gan.discriminators]
  owners += [("g_optimizer", gan.g_optimizer)] + [
      (f"d_optimizers[{k}]", o) for k, o in enumerate(gan.d_optimizers)]
  for name, owner in owners:
    stray = [v.path for v in owner.variables
             if getattr(v.value, "distribute_strategy", None) is not strategy]
    if stray:
      raise ValueError(f"{placement}: {name}'s variables ({stray[0]}, {len(stray)} in all) were "
                       "not created under its strategy; build the models and optimizers after "
                       "distribute.placement_from_flags (or under placement.scope())")
  if jit_compile:
    # XLA compiles each replica's step for the first device and cannot read the other replicas'
    # variables there ("Trying to access resource .../replica_1 ... from device ...:0").
    raise ValueError(JIT_REFUSED.format(placement=placement))

  keys = []  # the logs' names, in the order of the vector each replica returns

  def replica_step(batch):
    ctx = tf.distribute.get_replica_context()
    local = batch["tokens"].shape[0]
    if local is None:
      raise ValueError("the distributed TensorFlow step needs a static per-replica batch size")
    n = ctx.num_replicas_in_sync

    def gather(tree):
      # One all-gather per dtype: the tensors are flattened to [b, -1] and concatenated. (Also
      # needed for the gradient: ReplicaContext.all_gather's gradient stacks the gradients of
      # the tensors it gathers together, which fails for different shapes.)
      flat = tf.nest.flatten(tree)
      out = [None] * len(flat)
      for dtype in sorted({x.dtype for x in flat}, key=lambda d: d.name):
        idx = [i for i, x in enumerate(flat) if x.dtype == dtype]
        sizes = [int(np.prod(flat[i].shape[1:])) for i in idx]
        joined = tf.concat([tf.reshape(flat[i], (local, size)) for i, size in zip(idx, sizes)],
                           axis=1)
        gathered = ctx.all_gather(joined, axis=0)
        for i, part in zip(idx, tf.split(gathered, sizes, axis=1)):
          out[i] = tf.reshape(part, [n * local] + flat[i].shape[1:])
      return tf.nest.pack_sequence_as(tree, out)

    batch, stops = _split_stop_requests(batch)
    shard = BatchShard(gather, ctx.replica_id_in_sync_group, n, local)
    logs = dict(gan.train_step(batch, shard))
    # Summed over the replicas with the losses: > 0 where any process asked to stop.
    logs.update((k, tf.reduce_max(v)) for k, v in stops.items())
    keys[:] = list(logs)
    return tf.stack([tf.cast(logs[k], tf.float32) for k in keys])  # one reduction for all

  def step(batch):
    with tensorflow_info_off(), _synchronized_batch_norm([gan.generator, *gan.discriminators]):
      shares = strategy.run(replica_step, args=(batch,))
      total = strategy.reduce(tf.distribute.ReduceOp.SUM, shares, axis=None)
    return {k: total[i] for i, k in enumerate(keys)}

  return tf.function(step, reduce_retracing=True, autograph=False)
