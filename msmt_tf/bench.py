r"""Training-step benchmark on synthetic batches of the real shapes (no dataset, no TensorFlow
needed under JAX).

    python -m msmt_tf.bench --flagfile=configs/cub.cfg [--steps 30 --batch_size 20]
    KERAS_BACKEND=jax python -m msmt_tf.bench --flagfile=configs/cub.cfg --mixed_precision

Runs the full training step (`MSMTGAN.make_train_function`: text encoder, generator, one Adam
step per discriminator, generator step with DAMSM, EMA) on random captions of random lengths and
random images, with randomly initialised weights (speed does not depend on their values), and
prints one JSON line: backend, device, batch size, compile time, ms/step median/min/max (each
step waited for before the next is made: "blocked"), ms/step "pipelined" (the next step
dispatched before the last is waited for, as `train.py` runs them: the host's per-step work
then overlaps the device's), images/s, peak memory, the CUB and COCO epoch times this implies,
and a per-part breakdown (each part compiled and timed on its own, forward + backward where
training needs one; the parts overlap with nothing, so their sum is an upper bound of the fused
step). `--out FILE` appends the line to FILE (the source of BUILD.md's performance table).

Under JAX it adds XLA's cost analysis of the step and of each part: FLOPs, bytes accessed, their
ratio (FLOP/byte) and the roofline bound on an H100 (`--flops_only`: only these, nothing compiled
or run, so it works for the paper configs on a CPU). `--only_parts=refine2,...` times (or
counts) only the named parts, each compiled alone, without the whole step: a quick A/B of one
part (`"mode": "parts"`; not in the step table).

    python -m msmt_tf.bench --pipeline --flagfile=configs/cub.cfg [--pipeline_dir data/birds]

times the training input pipeline instead (tf.data `DataPipeline` at the flags' batch size, on a
real dataset folder or on a synthetic CUB-layout folder of 500 x 375 JPEGs with boxes) and prints
images/s, images/s per core and the cores a training step of `--step_ms` needs.
`benchmarks/h100.sh` runs the GPU rows of BUILD.md's table.
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
if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from msmt_tf import config
from msmt_tf.timing import timing_turn
from msmt_tf import distribute  # pylint: disable=unused-import  (--distribute, --devices)

FLAGS = flags.FLAGS


def define_flags():
  """The benchmark's own flags: defined when it runs as the command only (its --out and --step_ms
  would clash with other commands' flags in a process that imports several, e.g. the tests)."""
  flags.DEFINE_integer("steps", 20, "Timed steps (after --warmup untimed ones).")
  flags.DEFINE_integer("warmup", 2, "Untimed steps after compilation.")
  flags.DEFINE_bool("parts", True, "Also time each part of the step on its own.")
  flags.DEFINE_list("only_parts", None,
                    "Time (and with --flops_only count) only these parts, by their parts_ms "
                    "names (text_encoder, the initial stage, refine1, ..., discriminators, "
                    "damsm, optimizers), each compiled alone: the whole step is neither "
                    "compiled nor timed. A quick A/B of one part, e.g. --only_parts=refine2.")
  flags.DEFINE_string("out", None, "Append the JSON line to this file.")
  flags.DEFINE_bool("flops_only", False,
                    "JAX only: report XLA's FLOP count of the step and its parts (lowered, not "
                    "compiled or run) and exit; works for the paper configs on a CPU.")
  flags.DEFINE_bool("fused_bytes", False,
                    "JAX: also compile each part (not the whole step: too slow on a CPU) for the CPU "
                    "and report the bytes accessed that XLA's CPU fusion leaves "
                    "(`parts_gbytes_cpu_fused`), a closer estimate of the traffic than the unfused "
                    "count; seconds per part.")
  flags.DEFINE_string("table", None, "Print the JSON lines of this file as BUILD.md's markdown "
                      "table and exit (no benchmark).")
  flags.DEFINE_bool("pipeline", False,
                    "Time the training input pipeline (tf.data DataPipeline, the --batch_size of the "
                    "flags) instead of the model: images/s, per core, and the cores a step of "
                    "--step_ms needs. Data: --pipeline_dir, else a synthetic CUB-layout folder of "
                    "--pipeline_images 500x375 JPEGs with boxes, written once in the temp folder.")
  flags.DEFINE_string("pipeline_dir", None, "--pipeline: a real dataset folder of kind --dataset "
                      "(e.g. data/birds) instead of the synthetic CUB folder.")
  flags.DEFINE_integer("pipeline_images", 64, "--pipeline: training images of the synthetic CUB "
                       "folder.")
  flags.DEFINE_integer("pipeline_batches", 30, "--pipeline: timed batches.")
  flags.DEFINE_integer("pipeline_warmup", 3, "--pipeline: untimed batches first.")
  flags.DEFINE_list("step_ms", ["75", "40"], "--pipeline: step times (ms per --batch_size batch) to "
                    "compare the input rate with (default: the H100 targets, float32 and bf16).")
  flags.DEFINE_string("sync_dir", None,
                      "Several bench processes sharing one device in one sitting: each compiles "
                      "everything it will time, writes sync_dir/ready.<--sync_index>, waits until "
                      "--sync_count such files exist (at most --sync_timeout s), then times while "
                      "holding an exclusive lock on sync_dir/lock, so that compiles (and their "
                      "autotuning) overlap while no two timings, and no timing and compile, do. "
                      "compile_s is then measured beside the other compiles.")
  flags.DEFINE_integer("sync_count", 1, "--sync_dir: processes in the group.")
  flags.DEFINE_string("sync_index", "0", "--sync_dir: this process's name in the group.")
  flags.DEFINE_float("sync_timeout", 600, "--sync_dir: longest wait for the group, in seconds.")
  flags.DEFINE_string("profile_dir", None,
                      "JAX: after timing, trace --profile_steps steps with jax.profiler into this "
                      "folder (an .xplane.pb for XProf / TensorBoard's profile plugin).")
  flags.DEFINE_integer("profile_steps", 3, "--profile_dir: steps traced.")
  flags.DEFINE_string("dry_run_commands", None,
                      "A file of bench command lines (flags, after any leading NAME=value "
                      "environment words): --dry_run each of them in this one process, one JSON "
                      "line each; a line that fails is named on stderr and the exit status is 1 "
                      "(benchmarks/gpu_session.sh DRY_RUN=1).")
  flags.DEFINE_bool("dry_run", False,
                    "Check the flags and the model config, print what would be measured as a JSON "
                    "line and exit (nothing built, run or appended to --out; benchmarks/h100.sh "
                    "uses it to check its commands).")


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


def _first_call_s(fn, args):
  """Seconds of the first call (compile and run)."""
  t = time.perf_counter()
  _block(fn(*args))
  return time.perf_counter() - t


def _time(fn, args, steps, warmup, block=None, clock=time.perf_counter):
  """Milliseconds of each of `steps` calls of an already compiled `fn`, after `warmup` calls,
  each waited for before the next is made ("blocked": the host's work for a call, its argument
  handling and dispatch, is counted in series with the device's)."""
  block = block or _block
  for _ in range(warmup):
    block(fn(*args))
  times = []
  for _ in range(steps):
    t = clock()
    block(fn(*args))
    times.append(1000 * (clock() - t))
  return times


def _time_pipelined(fn, args, steps, warmup, block=None, clock=time.perf_counter):
  """`(per_step, calls)`, milliseconds, of `steps` calls made as `train.py` makes its steps: call
  n + 1 is made before waiting for call n (the training loop reads step n's losses after
  dispatching step n + 1), so the host's work for a call overlaps the device's work for the one
  before. `per_step`: the time from one call's completion to the next's as the host sees it; at
  the steady state the larger of the device's time per call and the host's (the first
  interval, which starts from an idle device, is not counted). `calls`: how long each call took
  to return, the host's part of a step where the device runs asynchronously (a GPU; a CPU
  backend may run the step inside the call)."""
  block = block or _block
  for _ in range(warmup):
    block(fn(*args))
  pending = fn(*args)
  block(pending)
  last, pending = clock(), fn(*args)
  per_step, calls = [], []
  for i in range(steps + 1):
    t = clock()
    following = fn(*args)
    calls.append(1000 * (clock() - t))
    block(pending)
    now = clock()
    if i:
      per_step.append(1000 * (now - last))
    last, pending = now, following
  block(pending)
  return per_step, calls[1:]


def _time_parts(parts, steps, warmup):
  """{name: median ms} of each compiled part (`part_functions`' items), timed in turn."""
  return {name: round(statistics.median(_time(fn, inputs, steps, warmup)), 2)
          for name, (fn, inputs) in parts.items()}


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
    run.lower = lambda *inputs, platforms=None: jitted.trace(*_abstract(args(inputs))).lower(
        lowering_platforms=platforms)
    if backward:
      def residuals(*inputs):
        p, d, rest, c = args(inputs)
        return saved_residual_bytes(lambda p, d: loss(p, d, rest, c), p, d)
      run.residuals = residuals
    return run
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function(jit_compile=jit_compile, autograph=False)
  def run(*inputs):
    if not backward:
      return fn(*inputs)
    diff = list(inputs[:num_diff_inputs])
    with tf.GradientTape() as tape:
      tape.watch(diff)
      loss = _sum_of_means(fn(*inputs))
    return tape.gradient(loss, list(train_vars) + diff)

  return run


def saved_residual_bytes(fn, *args):
  """`{dtype: bytes}` that the forward pass of `fn(*args)` keeps for its backward (JAX's
  `saved_residuals`, traced: nothing runs), the arguments and constants (weights, inputs: in
  memory anyway) left out. Written in the forward and read in the backward, they are device
  memory traffic whatever XLA fuses (it recomputes none unless memory runs out), and the
  step's activation memory."""
  from jax._src import ad_checkpoint  # pylint: disable=g-import-not-at-top
  # (jax.ad_checkpoint.print_saved_residuals prints the same list; this reads it.)
  out = {}
  for aval, source in ad_checkpoint.saved_residuals(fn, *args):
    if source.startswith(("from the argument", "from a constant")):
      continue
    dtype = str(aval.dtype)
    out[dtype] = out.get(dtype, 0) + int(aval.size) * aval.dtype.itemsize
  return out


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
    run.lower = lambda platforms=None: jitted.trace(*_abstract((opt_vars, grads, values))).lower(
        lowering_platforms=platforms)
    return run
  import tensorflow as tf  # pylint: disable=g-import-not-at-top

  @tf.function(jit_compile=jit_compile, autograph=False)
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


def part_names(cfg):
  """The names of `part_functions`' parts, in order, from the model configuration (nothing
  built)."""
  from msmt_tf.models.generator import stage_names  # pylint: disable=g-import-not-at-top
  return (["text_encoder"] + stage_names(cfg.initial_stage, cfg.num_stages)
          + ["discriminators", "damsm", "optimizers"])


def part_functions(gan, batch, jit_compile, names=None):
  """{name: (compiled fn, inputs)} for the parts of one training step (`part_names`); `names`:
  only these (the generator's forward pass, for the fake images, only where a part needs
  them)."""
  from keras import ops  # pylint: disable=g-import-not-at-top
  g = gan.generator
  every = gan.state_variables()
  tokens = ops.convert_to_tensor(batch["tokens"])
  words, sentence, mask = gan.encode_text(tokens)
  z = gan.sample_noise(tokens.shape[0])
  with_fakes = names is None or {"discriminators", "damsm"} & set(names)
  fixed = ops.convert_to_tensor(np.zeros((tokens.shape[0], g.condition_dim), np.float32))
  # (the CA noise given: on JAX, one compiled forward instead of ~200 eager compiles)
  out = gan.sample(tokens, z, fixed, ema=False) if with_fakes else []
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
  if with_fakes:
    parts["discriminators"] = (compile_part(d_vars, every, discriminators, len(fakes),
                                            jit_compile), fakes + reals + [sentence])
  cfg = gan.loss_config
  class_ids = ops.convert_to_tensor(batch["class_id"])

  def damsm(image, w, s, m):
    from msmt_tf import losses  # pylint: disable=g-import-not-at-top
    regions, code = gan.image_encoder(image, training=False)
    w0, w1 = losses.damsm_word_loss(regions, w, m, class_ids, cfg.gamma1, cfg.gamma2, cfg.gamma3)
    s0, s1 = losses.damsm_sentence_loss(code, s, class_ids, cfg.gamma3)
    return w0 + w1 + s0 + s1

  if with_fakes:
    parts["damsm"] = (compile_part([], every, damsm, 1, jit_compile),
                      [fakes[-1], words, sentence, mask])
  opt_fns = [compile_optimizer_step(gan.g_optimizer, g.trainable_variables, jit_compile)]
  opt_fns += [compile_optimizer_step(o, d.trainable_variables, jit_compile)
              for o, d in zip(gan.d_optimizers, gan.discriminators)]
  run_optimizers = lambda: [f() for f in opt_fns]
  if _backend() == "jax":
    run_optimizers.lower = lambda platforms=None: [f.lower(platforms=platforms) for f in opt_fns]
  parts["optimizers"] = (run_optimizers, [])
  return parts


def _cost_in(cost):
  """(FLOPs, bytes accessed) in a `cost_analysis()` result (a dict, a list of per-program dicts,
  or None: JAX returns None for a lowered GPU program on some versions); None where missing."""
  if isinstance(cost, (list, tuple)):
    cost = cost[0] if cost else None
  def number(key):
    try:
      return float(cost[key])
    except (TypeError, KeyError, ValueError):
      return None
  return number("flops"), number("bytes accessed")


def _program_cost(lower):
  """(FLOPs, bytes accessed, source) of the programs `lower(platforms)` returns (a jax Lowered or
  a list of them).

  Sources, tried in order: 'lowered' (XLA's HLO cost analysis of the program as lowered for the
  device: the arithmetic the step asks for), 'cpu_lowered' (the same program lowered for the CPU:
  the same StableHLO, so the same count, and it never needs a device compile), 'compiled' (the
  device program after XLA's optimisations; costs a compile). The first source with a FLOP count
  for every program wins; its bytes are those of the same analysis (None where it has none):
  for a lowered program every HLO op's operands and results, as if nothing were fused (an upper
  bound of the memory traffic), for a compiled one those of the fused program. (None, None, why)
  when no source reports FLOPs; this never raises."""
  def total(programs):
    costs = [_cost_in(p.cost_analysis()) for p in programs]
    if any(f is None for f, _ in costs):
      return None
    nbytes = None if any(b is None for _, b in costs) else sum(b for _, b in costs)
    return sum(f for f, _ in costs), nbytes

  def listed(lowered):
    return lowered if isinstance(lowered, list) else [lowered]

  attempts = [("lowered", lambda: total(listed(lower(None)))),
              ("cpu_lowered", lambda: total(listed(lower(("cpu",)))))]
  import jax  # pylint: disable=g-import-not-at-top
  if jax.default_backend() == "cpu":
    # A GPU program's compiled cost analysis leaves out the cuDNN / cuBLAS calls (measured on
    # the H100: 71 GFLOP for the 6,525 GFLOP CUB step), and the compile costs minutes: CPU only.
    attempts.append(("compiled", lambda: total([p.compile() for p in listed(lower(None))])))
  failures = []
  for source, get in attempts:
    try:
      counted = get()
    except Exception as e:  # pylint: disable=broad-except  # best effort: the timing matters more
      failures.append(f"{source}: {type(e).__name__}: {e}"[:200])
      continue
    if counted is not None:
      return counted[0], counted[1], source
    failures.append(f"{source}: no cost analysis")
  return None, None, "; ".join(failures)


def _abstract(tree):
  """Shapes and dtypes only: a program lowered from these is bound to no device's arrays, so it
  can be lowered for the CPU on a GPU machine."""
  import jax  # pylint: disable=g-import-not-at-top
  return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)


def flop_counts(gan, data, parts, fused_bytes=False, with_step=True, residuals=False):
  """XLA cost analysis on JAX: FLOPs and bytes accessed of the step and of each part.

  `{"gflop_per_step": ..., "parts_gflop": {...}, "gbytes_per_step": ..., "parts_gbytes": {...},
  "flop_per_byte": ..., "parts_flop_per_byte": {...}, "gflop_source": ...}`. Counted from the
  lowered (not compiled) HLO where XLA reports it: the arithmetic the step asks for, whatever the
  device (2 FLOP per multiply-add), and the bytes every HLO op reads and writes as if nothing
  were fused (an upper bound of the traffic; `_program_cost`). The intensity (FLOP/byte) is
  computed before rounding. `parts`: `part_functions`' result. A program without any count is
  left out and `gflop_source` (the source of both counts) says why; this never raises.
  `fused_bytes`: also compile each part for the CPU and report its bytes accessed after XLA's
  CPU fusion (`parts_gbytes_cpu_fused`; a part whose compile fails is left out, and
  `fused_bytes_failed` names it). `with_step=False`: the parts only. `residuals`
  (`--flops_only`): also `parts_residual_mb`, per part with a backward, the MB its forward keeps
  for it, by dtype and in total (`saved_residual_bytes`)."""
  import jax  # pylint: disable=g-import-not-at-top
  state = [v.value for v in gan.state_variables()]
  step_fn = jax.jit(gan.jax_train_step)
  programs = {}
  if with_step:
    programs["step"] = lambda platforms=None: step_fn.trace(
        _abstract(state), _abstract(data)).lower(lowering_platforms=platforms)
  programs.update((name, lambda platforms=None, fn=fn, inputs=inputs: fn.lower(
      *inputs, platforms=platforms)) for name, (fn, inputs) in parts.items())
  counted, nbytes, intensity, sources, missing = {}, {}, {}, {}, {}
  for name, lower in programs.items():
    flops, size, source = _program_cost(lower)
    if flops is None:
      missing[name] = source
      continue
    counted[name], sources[name] = round(flops / 1e9, 2), source
    if size:
      nbytes[name] = _significant(size / 1e9)
      intensity[name] = round(flops / size, 2)
  out = {}
  if "step" in counted:
    out["gflop_per_step"] = counted.pop("step")
  if counted:
    out["parts_gflop"] = counted
  if "step" in nbytes:
    out["gbytes_per_step"] = nbytes.pop("step")
    out["flop_per_byte"] = intensity.pop("step")
  if nbytes:
    out["parts_gbytes"] = nbytes
    out["parts_flop_per_byte"] = intensity
  kinds = sorted(set(sources.values()))
  source = kinds[0] if len(kinds) == 1 else ", ".join(f"{n}: {s}" for n, s in sources.items())
  if missing:
    why = "; ".join(f"{n}: {reason}" for n, reason in missing.items())
    source = f"unavailable ({why})" if not sources else f"{source}; not counted ({why})"
  out["gflop_source"] = source
  residual, residual_failed = {}, {}
  for name, (fn, inputs) in parts.items():
    if residuals and hasattr(fn, "residuals"):
      try:
        by_dtype = fn.residuals(*inputs)
      except Exception as e:  # pylint: disable=broad-except  (a JAX without the private API)
        residual_failed[name] = f"{type(e).__name__}: {e}"[:200]
        continue
      residual[name] = {k: _significant(v / 1e6) for k, v in sorted(by_dtype.items())}
      residual[name]["total"] = _significant(sum(by_dtype.values()) / 1e6)
  if residual:
    out["parts_residual_mb"] = residual
  if residual_failed:
    out["residual_failed"] = residual_failed
  if fused_bytes:
    fused, failed = cpu_fused_bytes({n: f for n, f in programs.items() if n != "step"})
    if fused:
      out["parts_gbytes_cpu_fused"] = fused
    if failed:
      out["fused_bytes_failed"] = failed
  return out


def cpu_fused_bytes(programs):
  """`({name: GB}, {name: why})`: the bytes accessed of each program (`{name: lower(platforms)}`,
  a jax Lowered or a list of them) compiled by XLA for the CPU, i.e. after its fusion; a program
  whose compile or cost analysis fails goes to the second dict. Never raises."""
  fused, failed = {}, {}
  for name, lower in programs.items():
    try:
      lowered = lower(("cpu",))
      costs = [_cost_in(p.compile().cost_analysis())[1]
               for p in (lowered if isinstance(lowered, list) else [lowered])]
      if any(c is None for c in costs):
        raise ValueError("no bytes accessed in the compiled cost analysis")
      fused[name] = _significant(sum(costs) / 1e9)
    except Exception as e:  # pylint: disable=broad-except  # best effort, as flop_counts
      failed[name] = f"{type(e).__name__}: {e}"[:200]
  return fused, failed


def _significant(x, digits=5):
  return float(f"{x:.{digits}g}")


# H100 SXM5 (NVIDIA's datasheet): HBM3 bandwidth and dense tensor-core peaks.
H100 = {"name": "H100 SXM", "hbm_tb_per_s": 3.35, "tf32_tflop_per_s": 494.7,
        "bf16_tflop_per_s": 989.4}


def roofline(gflop, gbytes, bf16, device=None):
  """Roofline time of one program on `device` (default: the H100): `(ms, bound)` with
  ms = max(GFLOP / peak TFLOP/s, GB / bandwidth TB/s) (GFLOP / (TFLOP/s) is milliseconds) and
  bound 'compute' or 'memory'. The peak is the dense tensor-core one (bf16 with `bf16`, else TF32),
  which elementwise work cannot reach. A lower bound of the program's time only where `gbytes`
  is no more than the device really moves: the unfused count overstates the traffic, so its
  roofline bounds the time of the program as if nothing were fused."""
  device = device or H100
  peak = device["bf16_tflop_per_s" if bf16 else "tf32_tflop_per_s"]
  compute, memory = gflop / peak, gbytes / device["hbm_tb_per_s"]
  return round(max(compute, memory), 3), "compute" if compute >= memory else "memory"


# ----------------------------------------------------------------------------- input pipeline
_BIRD_WORDS = ("this bird has a white belly and breast with short pointy bill small brown wings "
               "grey black yellow red crown the tail is long orange feet rounded head striped "
               "medium sized throat nape blue green eyes").split()
PIPELINE_IMAGE_SIZE = (500, 375)  # CUB's typical width x height


def _synthetic_bird(rng, width, height):
  """One deterministic CUB-like picture (smooth colour field, blobs, a large ellipse as the bird,
  mild noise: a JPEG of about 57 KB at quality 90) and its bird box `(x, y, w, h)`."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top
  from PIL import ImageFilter  # pylint: disable=g-import-not-at-top
  low = rng.integers(0, 256, (6, 8, 3)).astype(np.uint8)
  image = Image.fromarray(low).resize((width, height), Image.BICUBIC)
  draw = ImageDraw.Draw(image)
  for _ in range(40):
    x, y, r = int(rng.integers(0, width)), int(rng.integers(0, height)), int(rng.integers(3, 30))
    draw.ellipse([x - r, y - r, x + r, y + r], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
  w, h = int(rng.integers(width * 2 // 5, width * 9 // 10)), int(
      rng.integers(height * 2 // 5, height * 9 // 10))
  x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
  draw.ellipse([x, y, x + w, y + h], fill=tuple(int(c) for c in rng.integers(0, 256, 3)))
  image = image.filter(ImageFilter.GaussianBlur(1.0))
  pixels = np.asarray(image, np.float32) + rng.normal(0, 8, (height, width, 3))
  return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)), (x, y, w, h)


def write_synthetic_cub(root, num_images, seed=0, num_test=2, captions_per_image=10):
  """Writes a CUB-layout (`birds`) folder of synthetic 500 x 375 JPEGs with bounding boxes and
  10 captions each: CUB_200_2011/images/<key>.jpg, images.txt, bounding_boxes.txt, text/,
  {train,test}/filenames.pickle and class_info.pickle (the loader builds captions.pickle from
  text/). `num_images` training images plus `num_test` test ones; the same arguments give the
  same bytes. Returns `root`."""
  import pickle  # pylint: disable=g-import-not-at-top
  cub = os.path.join(root, "CUB_200_2011")
  lines_img, lines_box = [], []
  width, height = PIPELINE_IMAGE_SIZE
  for split, count in (("train", num_images), ("test", num_test)):
    keys, classes = [], []
    for _ in range(count):
      i = len(lines_img) + 1
      rng = np.random.default_rng([seed, i])
      cls = 1 + i % 200
      key = f"{cls:03d}.Bird_{cls}/Bird_{cls}_{i:05d}"
      image, box = _synthetic_bird(rng, width, height)
      path = os.path.join(cub, "images", key + ".jpg")
      os.makedirs(os.path.dirname(path), exist_ok=True)
      image.save(path, "JPEG", quality=90)
      caps = [" ".join(rng.choice(_BIRD_WORDS, int(rng.integers(8, 30))))
              for _ in range(captions_per_image)]
      text = os.path.join(root, "text", key + ".txt")
      os.makedirs(os.path.dirname(text), exist_ok=True)
      with open(text, "w") as f:
        f.write("\n".join(caps) + "\n")
      lines_img.append(f"{i} {key}.jpg")
      lines_box.append(f"{i} {box[0]:.1f} {box[1]:.1f} {box[2]:.1f} {box[3]:.1f}")
      keys.append(key)
      classes.append(cls)
    os.makedirs(os.path.join(root, split), exist_ok=True)
    with open(os.path.join(root, split, "filenames.pickle"), "wb") as f:
      pickle.dump(keys, f, protocol=2)
    with open(os.path.join(root, split, "class_info.pickle"), "wb") as f:
      pickle.dump(classes, f, protocol=2)
  with open(os.path.join(cub, "images.txt"), "w") as f:
    f.write("\n".join(lines_img) + "\n")
  with open(os.path.join(cub, "bounding_boxes.txt"), "w") as f:
    f.write("\n".join(lines_box) + "\n")
  return root


def synthetic_cub_folder(num_images, seed=0):
  """The synthetic CUB folder of `num_images` in the temporary directory, written once (in a
  private folder renamed into place, so concurrent runs never see half a folder)."""
  import shutil  # pylint: disable=g-import-not-at-top
  import tempfile  # pylint: disable=g-import-not-at-top
  root = os.path.join(tempfile.gettempdir(), f"msmt_bench_cub_{num_images}_seed{seed}_v1")
  if os.path.isfile(os.path.join(root, ".complete")):
    return root
  work = tempfile.mkdtemp(prefix=os.path.basename(root) + ".", dir=os.path.dirname(root))
  try:
    write_synthetic_cub(work, num_images, seed)
    open(os.path.join(work, ".complete"), "w").close()
    if os.path.isdir(root):  # an interrupted earlier run's leftovers (no .complete)
      shutil.rmtree(root, ignore_errors=True)
    os.rename(work, root)
  except OSError:
    if not os.path.isfile(os.path.join(root, ".complete")):
      raise
  finally:
    shutil.rmtree(work, ignore_errors=True)
  return root


def _loadavg():
  try:
    return round(os.getloadavg()[0], 2)
  except OSError:
    return None


def pipeline_benchmark(data_dir, dataset, batch_size, words_num, num_stages=3, seed=0,
                       batches=30, warmup=3, step_ms=(75.0, 40.0)):
  """Times the training input pipeline (`DataPipeline`, iterated as numpy batches as the JAX
  training loop does) on the train split of `data_dir`; returns the result dict.

  After `warmup` batches (tf.data's threads and prefetch started), `batches` batches are pulled
  as fast as they come. `step_ms`: training-step times (ms at `batch_size`) whose image rate is
  compared with the measured one: `cores_needed_for_step_ms` is that rate over the rate per
  core (the rate on all the process's cores divided by their number). On a shared machine the
  wall-clock rate depends on the other jobs; `images_per_cpu_s` (images per second of this
  process's CPU time, all threads) and `cores_needed_for_step_ms_by_cpu_time` do much less."""
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  split = datasets.load_split(data_dir, dataset, "train")
  pipe = datasets.DataPipeline(split, batch_size, words_num, num_stages=num_stages, seed=seed)
  cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
  load_start = _loadavg()
  it = pipe.iterate(as_numpy=True)
  first = None
  for _ in range(max(1, warmup)):
    first = next(it)
  start, cpu_start = time.perf_counter(), time.process_time()
  times = []
  for _ in range(batches):
    t = time.perf_counter()
    next(it)
    times.append(1000 * (time.perf_counter() - t))
  seconds = time.perf_counter() - start
  cpu_seconds = time.process_time() - cpu_start
  rate = batches * batch_size / seconds
  per_core = rate / cores
  per_cpu_s = batches * batch_size / cpu_seconds if cpu_seconds > 0 else float("inf")
  sizes = [int(first[k].shape[1]) for k in sorted(first) if k.startswith("image_")]
  result = {
      "mode": "pipeline",
      "date": datetime.date.today().isoformat(),
      "command": " ".join(["python", "-m", "msmt_tf.bench"] + sys.argv[1:]),
      "device": f"cpu: {_cpu_name()}",
      "cores": cores,
      "tensorflow": tf.__version__,
      "dataset": dataset,
      "data_dir": data_dir,
      "train_images": split.num_images,
      "batch_size": batch_size,
      "words_num": words_num,
      "image_sizes": sorted(sizes),
      "warmup_batches": max(1, warmup),
      "batches": batches,
      "seconds": _significant(seconds),
      "ms_per_batch_median": round(statistics.median(times), 2),
      "images_per_s": _significant(rate),
      "images_per_s_per_core": _significant(per_core),
      "cpu_s": _significant(cpu_seconds),
      "images_per_cpu_s": _significant(per_cpu_s),
      "loadavg_1min": [load_start, _loadavg()],
  }
  if step_ms:
    need = {f"{ms:g}": batch_size * 1000 / ms for ms in step_ms}
    result["images_per_s_needed_for_step_ms"] = {k: round(v, 1) for k, v in need.items()}
    result["cores_needed_for_step_ms"] = {k: _significant(v / per_core) for k, v in need.items()}
    result["cores_needed_for_step_ms_by_cpu_time"] = {k: _significant(v / per_cpu_s)
                                                      for k, v in need.items()}
  return result


def run_pipeline_benchmark():
  """`--pipeline`: the input pipeline on --pipeline_dir or on the synthetic CUB folder."""
  if FLAGS.pipeline_images < FLAGS.batch_size:
    raise ValueError(f"--pipeline_images={FLAGS.pipeline_images} is smaller than --batch_size="
                     f"{FLAGS.batch_size}")
  if FLAGS.pipeline_batches < 1:
    raise ValueError("--pipeline_batches must be >= 1")
  step_ms = [float(v) for v in FLAGS.step_ms]
  if any(v <= 0 for v in step_ms):
    raise ValueError(f"--step_ms values must be > 0, got {FLAGS.step_ms}")
  if FLAGS.pipeline_dir:
    data_dir, dataset, data = FLAGS.pipeline_dir, FLAGS.dataset, FLAGS.pipeline_dir
  else:
    data_dir, dataset = synthetic_cub_folder(FLAGS.pipeline_images, FLAGS.seed), "birds"
    jpegs = [os.path.join(dp, f) for dp, _, fs in os.walk(os.path.join(data_dir, "CUB_200_2011"))
             for f in fs if f.endswith(".jpg")]
    kb = sum(os.path.getsize(p) for p in jpegs) / len(jpegs) / 1024
    data = (f"synthetic CUB layout: {FLAGS.pipeline_images} train JPEGs "
            f"{PIPELINE_IMAGE_SIZE[0]}x{PIPELINE_IMAGE_SIZE[1]} (quality 90, mean {kb:.0f} KB) "
            "with bounding boxes, 10 captions each")
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  words_num = FLAGS.words_num or datasets.dataset_spec(data_dir, dataset).words_num_train
  result = pipeline_benchmark(data_dir, dataset, FLAGS.batch_size, words_num, FLAGS.num_stages,
                              FLAGS.seed, FLAGS.pipeline_batches, FLAGS.pipeline_warmup, step_ms)
  result["data"] = data
  return result


def run_benchmark(steps, warmup, with_parts):
  """Builds the model from the flags, times it and returns the result dict."""
  import keras  # pylint: disable=g-import-not-at-top
  backend = _backend()
  words_num = config.words_num_from_flags()
  batch_size = FLAGS.batch_size
  # --distribute / --devices (JAX): the step data-parallel over a device mesh, global batch.
  placement = None if FLAGS.flops_only else distribute.placement_from_flags(batch_size, backend)
  only = FLAGS.only_parts
  if only:  # refused before the model is built (the CUB model takes most of a minute)
    names = part_names(config.model_config_from_flags())
    unknown = [n for n in only if n not in names]
    if unknown:
      raise ValueError(f"--only_parts: no part {', '.join(map(repr, unknown))} in this "
                       f"configuration; its parts: {', '.join(names)}")
  started = time.perf_counter()
  gan, cfg, batch = build(batch_size, words_num, FLAGS.seed)
  # Making the models and their initial values (under JAX, XLA compiles for these too: BUILD.md,
  # "Startup under JAX"); compile_s is the step's first call after it.
  build_s = round(time.perf_counter() - started, 2)
  jit = True if backend == "jax" else FLAGS.jit_compile
  step_fn = gan.make_train_function(jit_compile=jit, placement=placement)
  if backend == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    data = {k: tf.constant(v) for k, v in batch.items()}
  else:
    data = {k: keras.ops.convert_to_tensor(v) for k, v in batch.items()}
  step_data = data if placement is None else placement.put_batch(batch)  # placed once
  parts_skipped = None
  if (with_parts or only) and placement is not None and backend == "tensorflow":
    # The parts are plain tf.functions; the strategy's mirrored variables are readable only
    # inside its replica context.
    if only:
      raise ValueError(f"--only_parts is not available with a TensorFlow strategy "
                       f"({placement}): the parts read the variables outside its replicas")
    parts_skipped = (f"--parts is not timed with a TensorFlow strategy ({placement}); the "
                     "step is")
    print(f"warning: {parts_skipped}", file=sys.stderr)
    with_parts = False
  parts = part_functions(gan, batch, jit, only) if with_parts or only else {}
  if only:
    parts = {n: parts[n] for n in only}
  flops = (flop_counts(gan, data, parts, FLAGS.fused_bytes, with_step=not only,
                       residuals=FLAGS.flops_only)
           if backend == "jax" else {})
  if FLAGS.flops_only:
    return (_describe(backend, cfg, batch_size, words_num, jit, build_s)
            | ({"mode": "parts"} if only else {})
            | _flops_keys(flops, batch_size, FLAGS.mixed_precision))
  # Everything timed below is compiled first (with --sync_dir, beside the group's compiles).
  if only:  # the chosen parts alone, --steps each: no step compiled or timed
    parts_compile_s = {name: round(_first_call_s(fn, inputs), 2)
                       for name, (fn, inputs) in parts.items()}
    with timing_turn(FLAGS.sync_dir, FLAGS.sync_count, FLAGS.sync_index,
                     FLAGS.sync_timeout) as sync:
      parts_ms = _time_parts(parts, steps, warmup)
    return (_describe(backend, cfg, batch_size, words_num, jit, build_s)
            | {"mode": "parts", "steps": steps, "parts_ms": parts_ms,
               "parts_sum_ms": round(sum(parts_ms.values()), 2),
               "parts_compile_s": parts_compile_s}
            | _flops_keys(flops, batch_size, FLAGS.mixed_precision) | sync)
  compile_s = _first_call_s(step_fn, [step_data])
  for fn, inputs in parts.values():
    _first_call_s(fn, inputs)
  with timing_turn(FLAGS.sync_dir, FLAGS.sync_count, FLAGS.sync_index,
                   FLAGS.sync_timeout) as sync:
    times = _time(step_fn, [step_data], steps, warmup)
    piped, calls = _time_pipelined(step_fn, [step_data], steps, 0)
    parts_ms = _time_parts(parts, max(3, steps // 2), 1)
    if FLAGS.profile_dir and backend == "jax":
      import jax  # pylint: disable=g-import-not-at-top
      with jax.profiler.trace(FLAGS.profile_dir):
        for _ in range(FLAGS.profile_steps):
          _block(step_fn(step_data))
    logs = {k: float(v) for k, v in step_fn(step_data).items()}
  bad = [k for k, v in logs.items() if not np.isfinite(v)]
  if bad:
    raise RuntimeError(f"non-finite losses in the benchmark step: {bad}")
  median, piped_median = statistics.median(times), statistics.median(piped)
  result = _describe(backend, cfg, batch_size, words_num, jit, build_s)
  result.update({
      "compile_s": round(compile_s, 2),
      "steps": steps,
      "ms_per_step_median": round(median, 2),
      "ms_per_step_min": round(min(times), 2),
      "ms_per_step_max": round(max(times), 2),
      "images_per_s": round(1000 * batch_size / median, 2),
      # As train.py runs its steps (the next dispatched before the last is waited for): what
      # training gets where the host keeps up; the blocked numbers above add the host's
      # per-step work (BUILD.md, "H100, sixth sitting").
      "ms_per_step_pipelined_median": round(piped_median, 2),
      "ms_per_step_pipelined_min": round(min(piped), 2),
      "ms_per_step_pipelined_max": round(max(piped), 2),
      "images_per_s_pipelined": round(1000 * batch_size / piped_median, 2),
      "ms_per_call_median": round(statistics.median(calls), 2),  # the host's part on a GPU
      "devices": distribute.world_of(placement)["devices"],
      "images_per_s_per_device": round(1000 * batch_size / median /
                                       distribute.world_of(placement)["devices"], 2),
  })
  result.update(_flops_keys(flops, batch_size, FLAGS.mixed_precision))
  if "gflop_per_step" in flops:  # GFLOP / ms = TFLOP / s
    result["achieved_tflop_per_s"] = round(flops["gflop_per_step"] / median, 2)
  for name, images in EPOCH_IMAGES.items():
    result[f"{name}_epoch_s"] = round(images // batch_size * median / 1000, 1)
  if backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    result["jax"] = jax.__version__
    if jax.devices()[0].platform == "gpu":
      result["matmul_precision"] = str(jax.config.jax_default_matmul_precision or "default")
  if parts:
    result["parts_ms"] = parts_ms
    result["parts_sum_ms"] = round(sum(parts_ms.values()), 2)
  result.update(sync)
  if parts_skipped:
    result["parts_skipped"] = parts_skipped
  if os.environ.get("XLA_FLAGS"):
    result["xla_flags"] = os.environ["XLA_FLAGS"]
  if os.environ.get("JAX_COMPILATION_CACHE_DIR") and backend == "jax":
    # compile_s may then be a read of the persistent cache, not a compile
    result["jax_compilation_cache_dir"] = os.environ["JAX_COMPILATION_CACHE_DIR"]
  if os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"):  # a cap beside other processes
    result["xla_mem_fraction"] = os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"]
  memory, kind = _peak_memory_mb()
  result["peak_memory_mb"] = round(memory, 1)
  result["peak_memory_kind"] = kind
  return result


def _describe(backend, cfg, batch_size, words_num, jit, build_s):
  """The keys saying what was measured: date, command, backend, device, model, batch (and how
  long making the model took)."""
  import keras  # pylint: disable=g-import-not-at-top
  return {
      "date": datetime.date.today().isoformat(),
      "command": " ".join([f"KERAS_BACKEND={backend}"] +
                          ([f"XLA_FLAGS='{os.environ['XLA_FLAGS']}'"]
                           if os.environ.get("XLA_FLAGS") else []) +
                          ["python", "-m", "msmt_tf.bench"] + sys.argv[1:]),
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
      "build_s": build_s,  # the models and their initial values, before any step compiles
  } | config.implementation_flags() | _jax_version(backend)  # choices always said


def _jax_version(backend):
  if backend != "jax":
    return {}
  import jax  # pylint: disable=g-import-not-at-top
  return {"jax": jax.__version__}


def _flops_keys(flops, batch_size, bf16):
  """`flop_counts`' keys, plus GFLOP per image and the H100 roofline bound of the step and of
  each part (`h100_roofline`; at the dense bf16 peak with `bf16`, else TF32)."""
  out = dict(flops)
  if "gflop_per_step" in out:
    out["gflop_per_image"] = round(out["gflop_per_step"] / batch_size, 2)
  line = {"device": H100["name"], "hbm_tb_per_s": H100["hbm_tb_per_s"],
          "peak_tflop_per_s": H100["bf16_tflop_per_s" if bf16 else "tf32_tflop_per_s"],
          "peak": "dense bf16" if bf16 else "dense TF32",
          "bytes": "XLA's bytes accessed of the unfused lowered HLO (an upper bound of the "
                   "traffic)" if "compiled" not in out.get("gflop_source", "") else
                   "XLA's bytes accessed (lowered: unfused; compiled: fused; see gflop_source)"}
  if "gbytes_per_step" in out:
    line["ms_per_step"], line["step_bound"] = roofline(out["gflop_per_step"],
                                                       out["gbytes_per_step"], bf16)
  if "parts_gbytes" in out:
    bounds = {n: roofline(out["parts_gflop"][n], gb, bf16) for n, gb in out["parts_gbytes"].items()}
    line["parts_ms"] = {n: ms for n, (ms, _) in bounds.items()}
    line["parts_bound"] = {n: bound for n, (_, bound) in bounds.items()}
  fused = {n: gb for n, gb in out.get("parts_gbytes_cpu_fused", {}).items()
           if n in out.get("parts_gflop", {})}
  if fused:
    line["parts_ms_cpu_fused"] = {n: roofline(out["parts_gflop"][n], gb, bf16)[0]
                                  for n, gb in fused.items()}
    line["parts_sum_ms_cpu_fused"] = round(sum(line["parts_ms_cpu_fused"].values()), 3)
  if "ms_per_step" in line or "parts_ms" in line:
    out["h100_roofline"] = line
  return out


def markdown_table(results):
  """BUILD.md's performance table from benchmark result dicts."""
  head = ("| date | backend | device | config | batch | precision | ms/step (median, min-max) | "
          "pipelined ms/step (median) | images/s | CUB epoch (8,855 images) | "
          "COCO epoch (82,783) | peak memory | command |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in results:
    cfg = r["config"]
    command = re.sub(r" --(out|sync_\w+|profile_\w+)[= ]\S+", "", r["command"])
    name = (f"{r['dataset']} {cfg['initial_stage']}+{cfg['refinement']} "
            f"{cfg['num_stages']} stages, N_r {cfg['channels']}")
    lines.append(
        f"| {r['date']} | {r['backend']} | {r['device']} | {name} | {r['batch_size']} | "
        f"{r['precision']} | {r['ms_per_step_median']:.1f} ({r['ms_per_step_min']:.1f}-"
        f"{r['ms_per_step_max']:.1f}) | "
        f"{_number(r.get('ms_per_step_pipelined_median'), '.1f')} | {r['images_per_s']:.1f} | "
        f"{_duration(r['cub_epoch_s']) if r['dataset'] == 'birds' else '-'} | "
        f"{_duration(r['coco_epoch_s']) if r['dataset'] == 'coco' else '-'} | "
        f"{r['peak_memory_mb']:.0f} MB ({r['peak_memory_kind']}) | `{command}` |")
  return "\n".join(lines)


def pipeline_table(results):
  """BUILD.md's input-pipeline table from `--pipeline` result dicts."""
  head = ("| date | device | data | batch | images/s | per core | images per CPU-second | cores "
          "needed at 75 / 40 ms per step (per core; by CPU time) | load (1 min, start-end) | "
          "command |")
  lines = [head, "|" + "---|" * (head.count("|") - 1)]
  for r in results:
    need = r.get("cores_needed_for_step_ms", {})
    by_cpu = r.get("cores_needed_for_step_ms_by_cpu_time", {})
    command = re.sub(r" --(out|sync_\w+|profile_\w+)[= ]\S+", "", r["command"])
    load = "-".join(str(v) for v in r.get("loadavg_1min", []))
    lines.append(
        f"| {r['date']} | {r['device']} ({r['cores']} in affinity) | "
        f"{r.get('data', r['data_dir'])} | {r['batch_size']} | "
        f"{r['images_per_s']:.0f} | {r['images_per_s_per_core']:.0f} | "
        f"{r.get('images_per_cpu_s', float('nan')):.0f} | "
        f"{need.get('75', '-')} / {need.get('40', '-')}; "
        f"{by_cpu.get('75', '-')} / {by_cpu.get('40', '-')} | {load} | `{command}` |")
  return "\n".join(lines)


def _number(value, spec):
  return "-" if value is None else format(value, spec)


def _duration(seconds):
  if seconds < 120:
    return f"{seconds:.0f} s"
  if seconds < 7200:
    return f"{seconds / 60:.1f} min"
  return f"{seconds / 3600:.1f} h"


def dry_run():
  """`--dry_run`: what the flags ask for, checked (flags parsed, model config valid), unrun."""
  out = {"dry_run": True,
         "command": " ".join(["python", "-m", "msmt_tf.bench"] + sys.argv[1:]),
         "mode": ("pipeline" if FLAGS.pipeline else "parts" if FLAGS.only_parts else
                  "flops_only" if FLAGS.flops_only else "step"),
         "only_parts": FLAGS.only_parts,
         "keras_backend": os.environ.get("KERAS_BACKEND"),
         "jax_compilation_cache_dir": os.environ.get("JAX_COMPILATION_CACHE_DIR"),
         "xla_flags": os.environ.get("XLA_FLAGS"),
         "xla_mem_fraction": os.environ.get("XLA_PYTHON_CLIENT_MEM_FRACTION"),
         "dataset": FLAGS.dataset, "batch_size": FLAGS.batch_size,
         "words_num": config.words_num_from_flags(),
         "precision": "mixed_bfloat16" if FLAGS.mixed_precision else "float32",
         "steps": FLAGS.steps, "warmup": FLAGS.warmup, "parts": FLAGS.parts, "out": FLAGS.out}
  if not FLAGS.pipeline:
    cfg = config.model_config_from_flags()
    out["config"] = {"initial_stage": cfg.initial_stage, "refinement": cfg.refinement,
                     "num_stages": cfg.num_stages, "channels": cfg.channels}
    out.update(config.implementation_flags())
  return out


def _flag_problem():
  """What is wrong with the flags' combination, or None."""
  if FLAGS.steps < 1:
    return "--steps must be >= 1"
  if FLAGS.flops_only and FLAGS.pipeline:
    return "--flops_only and --pipeline exclude each other"
  if FLAGS.only_parts:
    for other, given in (("--pipeline", FLAGS.pipeline), ("--profile_dir", FLAGS.profile_dir),
                         ("--noparts", FLAGS["parts"].present and not FLAGS.parts)):
      if given:
        return f"--only_parts and {other} exclude each other"
  return None


def dry_run_commands(path):
  """`--dry_run_commands`: each line's flags parsed and dry-run here (one process for all);
  returns the exit status (1 if any line failed)."""
  import shlex  # pylint: disable=g-import-not-at-top
  with open(path) as f:
    lines = [l.strip() for l in f if l.strip()]
  failed, original = 0, list(sys.argv)
  for line in lines:
    words = shlex.split(line)
    env = {}
    while words and re.fullmatch(r"[A-Z_][A-Z0-9_]*=.*", words[0]):
      key, value = words.pop(0).split("=", 1)
      env[key] = value
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    sys.argv = ["msmt_tf.bench", *words, "--dry_run"]  # what dry_run() reports as the command
    try:
      FLAGS.unparse_flags()
      FLAGS(sys.argv)
      problem = _flag_problem()
      if problem:
        raise ValueError(problem)
      print(json.dumps(dry_run()), flush=True)
    except (flags.Error, ValueError) as e:
      failed += 1
      print(f"DRY RUN FAILED: {line}: {e}", file=sys.stderr, flush=True)
    finally:
      sys.argv = original
      for k, v in saved.items():
        if v is None:
          os.environ.pop(k, None)
        else:
          os.environ[k] = v
  FLAGS.unparse_flags()
  FLAGS(original)  # the command's own flags again (absl reads some at exit)
  return 1 if failed else 0


def _print_table(path):
  """Prints the tables of the JSON lines in `path`; returns None, or the error to exit with."""
  results = []
  try:
    with open(path) as f:
      for number, line in enumerate(f, 1):
        if not line.strip():
          continue
        try:
          results.append(json.loads(line))
        except ValueError as e:
          return f"error: {path} line {number} is not a JSON line of bench ({e})"
  except OSError as e:
    return f"error: cannot read --table {path} ({e.strerror or e})"
  steps = [r for r in results if isinstance(r, dict) and "ms_per_step_median" in r]
  pipes = [r for r in results if isinstance(r, dict) and r.get("mode") == "pipeline"]
  if not steps and not pipes:  # --flops_only and --only_parts lines have no table
    return (f"error: {path} has no step or pipeline timings of bench ({len(results)} JSON lines; "
            "--flops_only and --only_parts lines are not tabled)")
  print("\n\n".join(t for t in (markdown_table(steps) if steps else "",
                                  pipeline_table(pipes) if pipes else "") if t))
  return None


def main(argv):
  del argv
  if FLAGS.table:
    sys.exit(_print_table(FLAGS.table))
  if FLAGS.dry_run_commands:
    sys.exit(dry_run_commands(FLAGS.dry_run_commands))
  problem = _flag_problem()
  if problem:
    sys.exit(f"error: {problem}")
  try:
    if FLAGS.dry_run:
      print(json.dumps(dry_run()))
      return
    if FLAGS.flops_only and _backend() != "jax":
      sys.exit("error: --flops_only needs KERAS_BACKEND=jax (XLA's cost analysis of the lowered "
               "step)")
    if FLAGS.pipeline:
      result = run_pipeline_benchmark()
    else:
      result = run_benchmark(FLAGS.steps, FLAGS.warmup, FLAGS.parts)
  except ValueError as e:
    sys.exit(f"error: {e}")
  line = json.dumps(result)
  print(line)
  if FLAGS.out:
    with open(FLAGS.out, "a") as f:
      f.write(line + "\n")


if __name__ == "__main__":
  define_flags()
  app.run(main)
