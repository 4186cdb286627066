r"""Training-step benchmark on synthetic batches of the real shapes (no dataset, no TensorFlow
needed under JAX).

    python -m msmt_tf.bench --flagfile=configs/cub.cfg [--steps 30 --batch_size 20]
    KERAS_BACKEND=jax python -m msmt_tf.bench --flagfile=configs/cub.cfg --mixed_precision

Runs the full training step (`MSMTGAN.make_train_function`: text encoder, generator, one Adam
step per discriminator, generator step with DAMSM, EMA) on random captions of random lengths and
random images, with randomly initialised weights (speed does not depend on their values), and
prints one JSON line: backend, device, batch size, compile time, ms/step median/min/max,
images/s, peak memory, the CUB and COCO epoch times this implies, and a per-part breakdown
(each part compiled and timed on its own, forward + backward where training needs one; the parts
overlap with nothing, so their sum is an upper bound of the fused step). `--out FILE` appends
the line to FILE (the source of BUILD.md's performance table).
"""

import datetime
import json
import os
import platform
import re
import resource
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from msmt_tf import config

FLAGS = flags.FLAGS
flags.DEFINE_integer("steps", 20, "Timed steps (after --warmup untimed ones).")
flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
flags.DEFINE_bool("parts", True, "Also time each part of the step on its own.")
flags.DEFINE_string("out", None, "Append the JSON line to this file.")
flags.DEFINE_bool("flops_only", False,
                  "JAX only: report XLA's FLOP count of the step and its parts (lowered, not "
                  "compiled or run) and exit; works for the paper configs on a CPU.")
flags.DEFINE_string("table", None, "Print the JSON lines of this file as BUILD.md's markdown "
                    "table and exit (no benchmark).")

# Training images per epoch (AttnGAN splits): CUB 8,855, COCO 82,783.
EPOCH_IMAGES = {"cub": 8855, "coco": 82783}


# ----------------------------------------------------------------------------- backend helpers
def _backend():
  import keras  # pylint: disable=g-import-not-at-top
  return keras.backend.backend()


def _block(tree):
  """Waits for every array in `tree` (device work is asynchronous)."""
  import keras  # pylint: disable=g-import-not-at-top
  leaves = keras.tree.flatten(tree)
  if _backend() == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    jax.block_until_ready(leaves)
  else:
    for x in leaves:
      np.asarray(x)


def _device():
  if _backend() == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    d = jax.devices()[0]
    kind = getattr(d, "device_kind", d.platform)
    return f"{d.platform}: {kind}" if d.platform != "cpu" else f"cpu: {_cpu_name()}"
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  gpus = tf.config.list_physical_devices("GPU")
  if gpus:
    return "gpu: " + tf.config.experimental.get_device_details(gpus[0]).get("device_name", "?")
  return f"cpu: {_cpu_name()}"


def _cpu_name():
  name = platform.processor() or platform.machine()
  try:
    with open("/proc/cpuinfo") as f:
      for line in f:
        if line.startswith("model name"):
          name = line.split(":", 1)[1].strip()
          break
  except OSError:
    pass
  return f"{name}, {os.cpu_count()} cores"


def _peak_memory_mb():
  """Peak device memory where the backend reports it, else the process's peak resident set."""
  if _backend() == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    stats = jax.devices()[0].memory_stats() or {}
    if "peak_bytes_in_use" in stats:
      return stats["peak_bytes_in_use"] / 2 ** 20, "device peak"
  else:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if tf.config.list_physical_devices("GPU"):
      return tf.config.experimental.get_memory_info("GPU:0")["peak"] / 2 ** 20, "device peak"
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "host peak RSS"


def _time(fn, args, steps, warmup):
  """(compile seconds, list of per-call milliseconds)."""
  t = time.perf_counter()
  _block(fn(*args))
  compile_s = time.perf_counter() - t
  for _ in range(warmup):
    _block(fn(*args))
  times = []
  for _ in range(steps):
    t = time.perf_counter()
    _block(fn(*args))
    times.append(1000 * (time.perf_counter() - t))
  return compile_s, times


def _sum_of_means(tree):
  from keras import ops  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  total = 0.0
  for x in keras.tree.flatten(tree):
    if "float" in str(x.dtype):
      total = total + ops.mean(ops.cast(x, "float32"))
  return total


def compile_part(train_vars, all_vars, fn, num_diff_inputs=0, jit_compile=True):
  """A compiled `f(*inputs)` running `fn(*inputs)` and, when it has `train_vars` or
  differentiable leading inputs, the gradient of the sum of its outputs' means."""
  backend = _backend()
  train_ids = {id(v) for v in train_vars}
  const_vars = [v for v in all_vars if id(v) not in train_ids]
  backward = bool(train_vars) or num_diff_inputs > 0
  if backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    import keras  # pylint: disable=g-import-not-at-top

    def loss(params, diff, rest, const):
      mapping = list(zip(train_vars, params)) + list(zip(const_vars, const))
      with keras.StatelessScope(mapping):
        out = fn(*diff, *rest)
      return _sum_of_means(out) if backward else out

    jitted = jax.jit(jax.grad(loss, argnums=(0, 1)) if backward else loss)
    params = [v.value for v in train_vars]
    const = [v.value for v in const_vars]

    def args(inputs):
      return params, list(inputs[:num_diff_inputs]), list(inputs[num_diff_inputs:]), const

    run = lambda *inputs: jitted(*args(inputs))
    run.lower = lambda *inputs: jitted.lower(*args(inputs))
    return run
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function(jit_compile=jit_compile)
  def run(*inputs):
    if not backward:
      return fn(*inputs)
    diff = list(inputs[:num_diff_inputs])
    with tf.GradientTape() as tape:
      tape.watch(diff)
      loss = _sum_of_means(fn(*inputs))
    return tape.gradient(loss, list(train_vars) + diff)

  return run


def compile_optimizer_step(optimizer, variables, jit_compile=True):
  """One Adam update of `variables` with fixed gradients (the optimizer part of the step)."""
  from keras import ops  # pylint: disable=g-import-not-at-top
  grads = [ops.ones(v.shape, v.dtype) * 1e-3 for v in variables]
  if _backend() == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    jitted = jax.jit(optimizer.stateless_apply)
    opt_vars = [v.value for v in optimizer.variables]
    values = [v.value for v in variables]
    run = lambda: jitted(opt_vars, grads, values)
    run.lower = lambda: jitted.lower(opt_vars, grads, values)
    return run
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function(jit_compile=jit_compile)
  def run():
    optimizer.apply(grads, variables)
    return optimizer.iterations

  return run


# ----------------------------------------------------------------------------- the model
def build(batch_size, words_num, seed=0):
  """The configured MSMTGAN with random weights and a synthetic batch of the real shapes."""
  import keras  # pylint: disable=g-import-not-at-top
  from msmt_tf.models import ImageEncoder  # pylint: disable=g-import-not-at-top
  from msmt_tf.models.msmt_gan import MSMTGAN  # pylint: disable=g-import-not-at-top
  if FLAGS.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  keras.utils.set_random_seed(seed)
  cfg = config.model_config_from_flags()
  text = cfg.build_text_encoder(words_num)
  image = ImageEncoder(cfg.text_dim, FLAGS.image_encoder_trunk, None, name="image_encoder")
  image.build((None, image.input_size, image.input_size, 3))
  gan = MSMTGAN(cfg.build_generator(words_num, seed=seed), cfg.build_discriminators(), text,
                image, config.loss_config_from_flags(), words_num, ema_decay=FLAGS.ema_decay,
                seed=seed)
  adam = lambda lr: keras.optimizers.Adam(lr, beta_1=FLAGS.beta1, beta_2=FLAGS.beta2)
  gan.compile(adam(FLAGS.lr_g), [adam(FLAGS.lr_d) for _ in gan.discriminators])
  rng = np.random.default_rng(seed)
  lengths = rng.integers(max(cfg.kernel_size, words_num // 2), words_num + 1, batch_size)
  tokens = np.zeros((batch_size, words_num), np.int32)
  for i, n in enumerate(lengths):
    tokens[i, :n] = rng.integers(1, cfg.vocab_size, n)
  batch = {"tokens": tokens,
           "class_id": rng.integers(0, 200, batch_size).astype(np.int32)}
  for k in range(cfg.num_stages):
    size = 64 * 2 ** k
    batch[f"image_{size}"] = rng.uniform(-1, 1, (batch_size, size, size, 3)).astype(np.float32)
  return gan, cfg, batch


def part_functions(gan, batch, jit_compile):
  """{name: (compiled fn, inputs)} for the parts of one training step."""
  from keras import ops  # pylint: disable=g-import-not-at-top
  g = gan.generator
  every = gan.state_variables()
  tokens = ops.convert_to_tensor(batch["tokens"])
  words, sentence, mask = gan.encode_text(tokens)
  z = gan.sample_noise(tokens.shape[0])
  out = gan.sample(tokens, z, ema=False)
  fixed = ops.convert_to_tensor(np.zeros((tokens.shape[0], g.condition_dim), np.float32))
  parts = {}
  parts["text_encoder"] = (compile_part([], every, lambda t: gan.text_encoder(t), 0, jit_compile),
                           [tokens])

  def initial(w, s, m, zz):
    c, _, _ = g.ca(s, fixed)
    init = g.init_stage(w, m, c, zz, training=True) if g.initial_stage == "mtwig" else \
        g.init_stage(c, zz, training=True)
    return g.to_images[0](init)

  init_vars = [v for layer in (g.ca, g.init_stage, g.to_images[0])
               for v in layer.trainable_variables]
  parts[g.init_stage.name] = (compile_part(init_vars, every, initial, 0, jit_compile),
                              [words, sentence, mask, z])
  # Each refinement stage on hidden features of the right shape.
  h = ops.convert_to_tensor(np.random.default_rng(1).standard_normal(
      (tokens.shape[0], 64, 64, g.channels)).astype(np.float32))
  for k, (stage, to_image) in enumerate(zip(g.refine_stages, g.to_images[1:]), start=1):
    def refine(hh, w, m, stage=stage, to_image=to_image):
      hidden, heads = stage(hh, w, m, training=True)
      return to_image(hidden), heads
    stage_vars = stage.trainable_variables + to_image.trainable_variables
    parts[stage.name] = (compile_part(stage_vars, every, refine, 1, jit_compile), [h, words, mask])
    h = ops.convert_to_tensor(np.random.default_rng(k + 1).standard_normal(
        (tokens.shape[0], 64 * 2 ** k, 64 * 2 ** k, g.channels)).astype(np.float32))
  reals = gan.reals_of({k: ops.convert_to_tensor(v) for k, v in batch.items()},
                       gan.stage_sizes())
  fakes = list(out)

  def discriminators(*args):
    n = len(gan.discriminators)
    fk, rl, s = args[:n], args[n:2 * n], args[-1]
    total = 0.0
    for k, d in enumerate(gan.discriminators):
      d_loss, _ = gan.discriminator_losses(k, rl[k], fk[k], s)
      code = d.encode(fk[k], training=True)
      total = total + d_loss + ops.mean(d.uncond_logits(code)) + ops.mean(
          d.cond_logits(code, s, training=True))
    return total

  d_vars = [v for d in gan.discriminators for v in d.trainable_variables]
  parts["discriminators"] = (compile_part(d_vars, every, discriminators, len(fakes), jit_compile),
                             fakes + reals + [sentence])
  cfg = gan.loss_config
  class_ids = ops.convert_to_tensor(batch["class_id"])

  def damsm(image, w, s, m):
    from msmt_tf import losses  # pylint: disable=g-import-not-at-top
    regions, code = gan.image_encoder(image, training=False)
    w0, w1 = losses.damsm_word_loss(regions, w, m, class_ids, cfg.gamma1, cfg.gamma2, cfg.gamma3)
    s0, s1 = losses.damsm_sentence_loss(code, s, class_ids, cfg.gamma3)
    return w0 + w1 + s0 + s1

  parts["damsm"] = (compile_part([], every, damsm, 1, jit_compile),
                    [fakes[-1], words, sentence, mask])
  opt_fns = [compile_optimizer_step(gan.g_optimizer, g.trainable_variables, jit_compile)]
  opt_fns += [compile_optimizer_step(o, d.trainable_variables, jit_compile)
              for o, d in zip(gan.d_optimizers, gan.discriminators)]
  run_optimizers = lambda: [f() for f in opt_fns]
  if _backend() == "jax":
    run_optimizers.lower = lambda: [f.lower() for f in opt_fns]
  parts["optimizers"] = (run_optimizers, [])
  return parts


def _gflop(lowered):
  """GFLOP of lowered JAX programs by XLA's HLO cost analysis (2 per multiply-add)."""
  total = 0.0
  for low in lowered if isinstance(lowered, list) else [lowered]:
    cost = low.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    total += float(cost.get("flops", 0.0))
  return round(total / 1e9, 2)


def flop_counts(gan, data, parts):
  """(GFLOP of one training step, {part: GFLOP}) on JAX, from the lowered (not compiled) HLO:
  the arithmetic the step asks for, whatever the device. `parts`: `part_functions`' result."""
  import jax  # pylint: disable=g-import-not-at-top
  state = [v.value for v in gan.state_variables()]
  step = _gflop(jax.jit(gan.jax_train_step).lower(state, data))
  return step, {name: _gflop(fn.lower(*inputs)) for name, (fn, inputs) in parts.items()}


def run_benchmark(steps, warmup, with_parts):
  """Builds the model from the flags, times it and returns the result dict."""
  import keras  # pylint: disable=g-import-not-at-top
  backend = _backend()
  words_num = config.words_num_from_flags()
  batch_size = FLAGS.batch_size
  gan, cfg, batch = build(batch_size, words_num, FLAGS.seed)
  jit = True if backend == "jax" else FLAGS.jit_compile
  step_fn = gan.make_train_function(jit_compile=jit)
  if backend == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    data = {k: tf.constant(v) for k, v in batch.items()}
  else:
    data = {k: keras.ops.convert_to_tensor(v) for k, v in batch.items()}
  parts = part_functions(gan, batch, jit) if with_parts else {}
  flops = flop_counts(gan, data, parts) if backend == "jax" else None
  if FLAGS.flops_only:
    return _describe(backend, cfg, batch_size, words_num, jit) | _flops_keys(flops, batch_size)
  compile_s, times = _time(step_fn, [data], steps, warmup)
  logs = {k: float(v) for k, v in step_fn(data).items()}
  bad = [k for k, v in logs.items() if not np.isfinite(v)]
  if bad:
    raise RuntimeError(f"non-finite losses in the benchmark step: {bad}")
  median = statistics.median(times)
  result = _describe(backend, cfg, batch_size, words_num, jit)
  result.update({
      "compile_s": round(compile_s, 2),
      "steps": steps,
      "ms_per_step_median": round(median, 2),
      "ms_per_step_min": round(min(times), 2),
      "ms_per_step_max": round(max(times), 2),
      "images_per_s": round(1000 * batch_size / median, 2),
  })
  result.update(_flops_keys(flops, batch_size))
  if flops:
    result["achieved_tflop_per_s"] = round(flops[0] / median, 2)  # GFLOP / ms = TFLOP / s
  for name, images in EPOCH_IMAGES.items():
    result[f"{name}_epoch_s"] = round(images // batch_size * median / 1000, 1)
  if backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    result["jax"] = jax.__version__
    if jax.devices()[0].platform == "gpu":
      result["matmul_precision"] = str(jax.config.jax_default_matmul_precision or "default")
  if parts:
    result["parts_ms"] = {name: round(statistics.median(_time(fn, inputs, max(3, steps // 2),
                                                                1)[1]), 2)
                          for name, (fn, inputs) in parts.items()}
    result["parts_sum_ms"] = round(sum(result["parts_ms"].values()), 2)
  memory, kind = _peak_memory_mb()
  result["peak_memory_mb"] = round(memory, 1)
  result["peak_memory_kind"] = kind
  return result


def _describe(backend, cfg, batch_size, words_num, jit):
  """The keys saying what was measured: date, command, backend, device, model, batch."""
  import keras  # pylint: disable=g-import-not-at-top
  return {
      "date": datetime.date.today().isoformat(),
      "command": " ".join([f"KERAS_BACKEND={backend}", "python", "-m", "msmt_tf.bench"] +
                          sys.argv[1:]),
      "backend": backend,
      "device": _device(),
      "keras": keras.__version__,
      "dataset": FLAGS.dataset,
      "config": {"initial_stage": cfg.initial_stage, "refinement": cfg.refinement,
                 "num_stages": cfg.num_stages, "channels": cfg.channels,
                 "num_heads": cfg.num_heads, "vocab_size": cfg.vocab_size,
                 "image_encoder_trunk": FLAGS.image_encoder_trunk,
                 "damsm_all_stages": FLAGS.damsm_all_stages},
      "batch_size": batch_size,
      "words_num": words_num,
      "precision": "mixed_bfloat16" if FLAGS.mixed_precision else "float32",
      "xla": jit,
  }


def _flops_keys(flops, batch_size):
  if not flops:
    return {}
  step, parts = flops
  out = {"gflop_per_step": step, "gflop_per_image": round(step / batch_size, 2)}
  if parts:
    out["parts_gflop"] = parts
  return out


def markdown_table(results):
  """BUILD.md's performance table from benchmark result dicts."""
  head = ("| date | backend | device | config | batch | precision | ms/step (median, min-max) | "
          "images/s | CUB epoch (8,855 images) | COCO epoch (82,783) | peak memory | command |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in results:
    cfg = r["config"]
    command = re.sub(r" --out[= ]\S+", "", r["command"])
    name = (f"{r['dataset']} {cfg['initial_stage']}+{cfg['refinement']} "
            f"{cfg['num_stages']} stages, N_r {cfg['channels']}")
    lines.append(
        f"| {r['date']} | {r['backend']} | {r['device']} | {name} | {r['batch_size']} | "
        f"{r['precision']} | {r['ms_per_step_median']:.1f} ({r['ms_per_step_min']:.1f}-"
        f"{r['ms_per_step_max']:.1f}) | {r['images_per_s']:.1f} | "
        f"{_duration(r['cub_epoch_s']) if r['dataset'] == 'birds' else '-'} | "
        f"{_duration(r['coco_epoch_s']) if r['dataset'] == 'coco' else '-'} | "
        f"{r['peak_memory_mb']:.0f} MB ({r['peak_memory_kind']}) | `{command}` |")
  return "\n".join(lines)


def _duration(seconds):
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


def main(argv):
  del argv
  if FLAGS.table:
    with open(FLAGS.table) as f:
      print(markdown_table([json.loads(l) for l in f if l.strip()]))
    return
  if FLAGS.steps < 1:
    sys.exit("error: --steps must be >= 1")
  if FLAGS.flops_only and _backend() != "jax":
    sys.exit("error: --flops_only needs KERAS_BACKEND=jax (XLA's cost analysis of the lowered "
             "step)")
  try:
    result = run_benchmark(FLAGS.steps, FLAGS.warmup, FLAGS.parts)
  except ValueError as e:
    sys.exit(f"error: {e}")
  line = json.dumps(result)
  print(line)
  if FLAGS.out:
    with open(FLAGS.out, "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  app.run(main)
