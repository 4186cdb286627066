r"""Trains MSMT-GAN.

    python -m msmt_tf.train --flagfile=configs/coco.cfg --run_dir=runs/coco [--resume]

The run directory receives `flags.txt` and `config.json` (the resolved configuration),
`losses.jsonl` (every step's losses), `checkpoints/ckpt-<step>.npz` (atomic, newest
`--keep_checkpoints` kept; generator, EMA generator, discriminators, optimizer states, noise RNG,
data position), `samples/step-<step>.png` (fixed test captions, EMA generator), `tb/`
(TensorBoard scalars and grids) and, at the end, `generator_ema.keras`.
`--resume` continues from the newest checkpoint exactly as if the run had not stopped; a damaged
newest checkpoint (truncated copy, full disk) is renamed aside to `ckpt-<step>.npz.damaged`, said
on stderr, and the run continues from the newest one that reads. `--resume` where there is no
checkpoint yet starts at step 0 and says so on stderr; a folder whose checkpoints were all found
damaged (only `*.npz.damaged` left) is refused, with or without `--resume`, and so is a run
imported by `import_torch` (generator weights only). Ctrl-C or SIGTERM (a batch system's time
limit) stops the run after the step it comes in, with a checkpoint of that step, and names it
to `--resume` from; a second one stops at once. In a multi-process run, a signal to any of its
processes once training has started stops all of them after the same step, one of the next
three (the request travels with the step's losses), with a checkpoint of that step (a second
signal, or one while the processes start, stops only the process it comes to).
A non-finite loss stops the run with a message; checkpoints already written are kept.

Data-parallel (`--distribute=auto`, the default; `--batch_size` is the global batch): JAX over
the local devices and the processes of `--coordinator_address/--num_processes/--process_id`;
TensorFlow over every local GPU (`--devices N` logical CPU devices on a CPU-only machine) and the
workers of `TF_CONFIG` (MultiWorkerMirroredStrategy; the chief, or worker 0, is process 0). Only
process 0 writes files; the run directory must be shared by all processes.
"""

import dataclasses
import hashlib
import json
import math
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from msmt_tf import checkpoint  # pylint: disable=g-import-not-at-top
from msmt_tf import config
from msmt_tf import distribute
from msmt_tf import progress as progress_lib
from msmt_tf import runs
from msmt_tf import stopping
from msmt_tf.data import datasets
from msmt_tf.data.errors import DatasetError

FLAGS = flags.FLAGS
# --help lists msmt_tf.config's flags (data, model, DAMSM, training) and distribute's (devices),
# not only --helpfull.
flags.adopt_module_key_flags(config)
flags.adopt_module_key_flags(distribute)

__all__ = ["prepare", "train"]


class TrainingError(RuntimeError):
  pass


class Run:
  """Everything `train` needs, checked before any training starts."""


_SPLIT_KEYS = ("train_images", "train_files_sha256")
_IDENTITY_KEYS = _SPLIT_KEYS + ("vocab_sha256",)


def _keys_digest(keys):
  """SHA-256 of a split's image keys in order (its identity, whatever folder it is in)."""
  return hashlib.sha256("\n".join(keys).encode("utf-8")).hexdigest()


# Files that make a folder a dataset or a DAMSM folder. A run written into a dataset would be
# deleted by its --overwrite (data.build, shapes); one written into a DAMSM folder would mix its
# files with the encoders', which pretrain_damsm --overwrite or --resume change.
_FOREIGN_MARKERS = (("dataset", runs.FOLDER_MARKERS["dataset"],
                     "its --overwrite (data.build, shapes) would delete the run"),
                    ("DAMSM folder", runs.FOLDER_MARKERS["DAMSM folder"],
                     "its files would mix with the encoders', which pretrain_damsm --overwrite "
                     "or --resume change"))
# What a run writes in its folder: what to move to rescue a run written in a place refused now.
_RUN_FILES = ("config.json, flags.txt, checkpoints/, losses.jsonl, samples/, tb/, eval/, "
              "metrics.jsonl and generator_ema.keras")


def _refuse_a_shared_run_dir(run_dir):
  """A run gets a folder of its own: not a dataset (nor a folder inside one: data.build
  --overwrite deletes the dataset's whole folder), not a DAMSM folder (--run_dir swapped with
  --damsm_dir, say). Folders are compared as they are on disk (links resolved): a dataset
  reached through a link is the same dataset."""
  real = os.path.realpath(run_dir)
  refused = None
  if FLAGS.data_dir:
    data = os.path.realpath(FLAGS.data_dir)
    if (real + os.sep).startswith(data.rstrip(os.sep) + os.sep):
      refused = (f"--run_dir {run_dir} is --data_dir or inside it: a run needs a folder of its "
                 "own (data.build --overwrite of the dataset would delete the run)")
  if refused is None and FLAGS.damsm_dir and real == os.path.realpath(FLAGS.damsm_dir):
    refused = (f"--run_dir {run_dir} is --damsm_dir: a run needs a folder of its own (its files "
               "would mix with the encoders', which pretrain_damsm --overwrite or --resume "
               "change)")
  for kind, names, why in _FOREIGN_MARKERS:
    found = [n for n in names if os.path.exists(os.path.join(run_dir, n))]
    if refused is None and found:
      refused = (f"--run_dir {run_dir} is a {kind}: it holds {found[0]}. A run needs a folder "
                 f"of its own ({why})")
  if refused is None:
    return
  if checkpoint.latest(run_dir):  # a run written there before this check (2026-11-28)
    raise ValueError(f"{refused}. To keep the run already there, move its files ({_RUN_FILES}) "
                     "to a folder of their own and --resume there (a run's files name no "
                     "folder of their own, so it resumes anywhere)")
  raise ValueError(f"{refused}; choose another --run_dir")


def prepare():
  """Validates flags, data and encoders and builds the models. Raises on any bad input."""
  import keras  # pylint: disable=g-import-not-at-top
  if not FLAGS.run_dir:
    raise ValueError("--run_dir is not set")
  if not FLAGS.data_dir:
    raise ValueError("--data_dir is not set")
  run = Run()
  run.run_dir = os.path.abspath(FLAGS.run_dir)
  if os.path.exists(run.run_dir) and not os.path.isdir(run.run_dir):
    raise ValueError(f"--run_dir {run.run_dir} is a file, not a folder")
  _refuse_a_shared_run_dir(run.run_dir)
  run.words_num = config.words_num_from_flags()
  # Devices and processes first: a multi-host JAX run connects before any JAX computation, and
  # TensorFlow's logical devices and multi-worker runtime are set up before it initialises. Under
  # TensorFlow the placement's strategy is then the current one: the models, optimizers and
  # DAMSM encoders built below have mirrored variables.
  run.placement = distribute.placement_from_flags(FLAGS.batch_size)
  if FLAGS.jit_compile and run.placement is not None and keras.backend.backend() == "tensorflow":
    from msmt_tf.models.msmt_gan import JIT_REFUSED  # pylint: disable=g-import-not-at-top
    raise ValueError(JIT_REFUSED.format(placement=run.placement))
  run.world = distribute.world_of(run.placement)
  run.is_writer = run.world["process_index"] == 0
  data = datasets.load_split(FLAGS.data_dir, FLAGS.dataset, "train")
  run.test = datasets.load_split(FLAGS.data_dir, FLAGS.dataset, "test")
  model_cfg = config.model_config_from_flags(vocab_size=len(data.vocab))
  loss_cfg = config.loss_config_from_flags()
  run.record = {
      "model": {k: getattr(model_cfg, k) for k in model_cfg.__dataclass_fields__},
      "loss": {k: getattr(loss_cfg, k) for k in loss_cfg.__dataclass_fields__},
      "data": {"dataset": FLAGS.dataset, "data_dir": os.path.abspath(FLAGS.data_dir),
               "words_num": run.words_num, "batch_size": FLAGS.batch_size, "seed": FLAGS.seed,
               # The training split itself (a dataset rebuilt with another split or other
               # images must not resume a run; the folder may move).
               "train_images": data.num_images, "train_files_sha256": _keys_digest(data.keys),
               # The words in order: a rebuild from edited captions may keep the size and
               # renumber them, and the token ids would mean other words.
               "vocab_sha256": data.vocab.sha256},
      "damsm_dir": os.path.abspath(FLAGS.damsm_dir) if FLAGS.damsm_dir else None,
      # What the run continues with (not compared on --resume: a new rate is applied).
      "optimizer": {"lr_g": FLAGS.lr_g, "lr_d": FLAGS.lr_d, "beta1": FLAGS.beta1,
                    "beta2": FLAGS.beta2, "ema_decay": FLAGS.ema_decay},
      # Not compared on --resume: a checkpoint of N devices resumes on M (the state is
      # replicated and the data position is the global step).
      "world": {"processes": run.world["processes"], "devices": run.world["devices"]},
      # Not compared on --resume either (a run may move to a GPU under JAX, or to bfloat16);
      # a change is said and kept in "compute_changes".
      "compute": {"backend": keras.backend.backend(), "mixed_precision": FLAGS.mixed_precision,
                  "jit_compile": FLAGS.jit_compile},
  }
  existing = checkpoint.latest(run.run_dir)
  config_path = os.path.join(run.run_dir, runs.CONFIG)
  recorded = runs.read_config(run.run_dir) if os.path.isfile(config_path) else None
  imported = recorded and recorded.get("imported")
  if imported:
    raise ValueError(
        f"{run.run_dir} is an imported run ({imported.get('from', 'import_torch')}): it holds "
        "generator weights only, no discriminators or optimizer states, so it can be sampled, "
        "evaluated and exported but not trained; choose another --run_dir")
  aside = [] if existing else checkpoint.list_set_aside(run.run_dir)
  if aside:
    # Its checkpoints were all found damaged (by an earlier --resume): starting at step 0 here
    # would rewrite config.json, losses.jsonl and the samples of a run that may yet be restored.
    raise ValueError(
        f"{run.run_dir} has no readable checkpoint, only damaged ones set aside "
        f"({', '.join(os.path.basename(p) for p in aside[:3])}"
        f"{', ...' if len(aside) > 3 else ''}): nothing to resume from, and a new run is not "
        "started over it (nothing was changed). Put a good copy of a checkpoint in "
        f"{os.path.join(run.run_dir, 'checkpoints')}, or choose another --run_dir (or, to start "
        "over in this folder, move the .damaged files away)")
  if existing and not FLAGS.resume:
    raise ValueError(f"{run.run_dir} already has checkpoints (newest: step {existing[0]}); pass "
                     "--resume to continue it or choose another --run_dir")
  if FLAGS.resume and not existing and run.is_writer:
    # Allowed (a job that always passes --resume starts this way), but never silent: a
    # mistyped --run_dir would otherwise train from scratch unnoticed.
    why = ("does not exist" if not os.path.isdir(run.run_dir) else
           f"has no checkpoint in {os.path.join(run.run_dir, 'checkpoints')}")
    print(f"warning: --resume: {run.run_dir} {why}; starting a new run at step 0",
          file=sys.stderr, flush=True)
  if FLAGS.resume and existing and recorded is not None:
    # (Without a checkpoint the run starts at step 0, as it would without --resume.)
    # A model option added after the run started counts as its default (older config.json).
    added = {f.name: f.default for f in dataclasses.fields(config.ModelConfig)}
    # The split's identity is compared where the run recorded it (runs since 2026-11-27).
    unrecorded = {k for k in _IDENTITY_KEYS if k not in recorded.get("data", {})}
    diff = [f"{sec}.{k}: {recorded.get(sec, {}).get(k)!r} -> {v!r}"
            for sec in ("model", "loss", "data") for k, v in run.record[sec].items()
            if sec != "data" or k not in {"data_dir"} | unrecorded
            if recorded.get(sec, {}).get(k, added.get(k) if sec == "model" else None) != v]
    if diff:
      split_changed = any(recorded["data"][k] != run.record["data"][k]
                          for k in set(_SPLIT_KEYS) - unrecorded)
      vocab_changed = ("vocab_sha256" not in unrecorded
                       and recorded["data"]["vocab_sha256"] != run.record["data"]["vocab_sha256"])
      why = ("; the training split differs (a dataset rebuilt or replaced since the run "
             "started): resume it with that data, or start a new --run_dir"
             if split_changed else
             "; the vocabulary differs (other words or order: a dataset rebuilt from other "
             "captions), so the run's word numbers would mean other words: resume it with that "
             "data, or start a new --run_dir" if vocab_changed else "")
      raise ValueError(f"--resume with a different configuration than {config_path}: "
                       + "; ".join(diff) + why)
  # Data pipeline checks (batch larger than the dataset, ...) before building anything big.
  datasets.DataPipeline(data, FLAGS.batch_size, run.words_num, num_shards=run.world["processes"],
                        shard_index=run.world["process_index"])
  run.data = data
  classes = data.classes
  if len(classes) < 2 and run.is_writer:
    print(f"warning: every image of the train split of {data.data_dir} has class "
          f"{data.class_name(classes[0])}: the DAMSM losses take other classes as negatives and "
          "are 0 for this run",
          file=sys.stderr, flush=True)
  text_enc, image_enc = runs.load_damsm(FLAGS.damsm_dir, data.vocab, data.data_dir,
                                       model_cfg.text_dim)
  # The frozen encoders are part of the objective: a resume with others (pretrained further or
  # again since the run started) would not continue the same training. Compared with the record
  # of the checkpoint to be restored (config.json is rewritten by a resume that may not reach a
  # checkpoint), and again with the one restored if that is an older one. sample, export and
  # metric_main check the text encoder against the checkpoint's too (runs.load_run).
  run.record["damsm_weights_sha256"] = runs.encoder_digests(text_enc, image_enc)
  run.damsm_encoders = (text_enc, image_enc)
  run.damsm_change, run.recorded = None, recorded
  if FLAGS.resume and existing:
    try:
      newest = checkpoint.read_record(existing[1])
    except checkpoint.DamagedCheckpointError:
      newest = None  # set aside when restored, and the restored one checked
    _check_damsm(run, newest)
  snapshot = runs.damsm_snapshot_note(FLAGS.damsm_dir)
  if snapshot and run.is_writer:
    print(f"warning: {snapshot}", file=sys.stderr, flush=True)

  if FLAGS.deterministic:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.experimental.enable_op_determinism()
  if FLAGS.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
  keras.utils.set_random_seed(FLAGS.seed)
  from msmt_tf.models.msmt_gan import MSMTGAN  # pylint: disable=g-import-not-at-top
  generator = model_cfg.build_generator(run.words_num, seed=FLAGS.seed)
  ds = model_cfg.build_discriminators()
  gan = MSMTGAN(generator, ds, text_enc, image_enc, loss_cfg, run.words_num,
                ema_decay=FLAGS.ema_decay, seed=FLAGS.seed)

  def adam(lr):
    return keras.optimizers.Adam(lr, beta_1=FLAGS.beta1, beta_2=FLAGS.beta2)

  gan.compile(adam(FLAGS.lr_g), [adam(FLAGS.lr_d) for _ in ds])
  run.gan = gan
  run.groups = checkpoint.state_groups(gan)
  run.batches_per_epoch = data.num_images // FLAGS.batch_size
  if FLAGS.max_steps:
    run.max_steps = FLAGS.max_steps
  elif FLAGS.max_epochs:
    run.max_steps = FLAGS.max_epochs * run.batches_per_epoch
  else:
    raise ValueError("set --max_steps or --max_epochs")
  run.step = 0
  if FLAGS.resume and existing:
    # The newest checkpoint that reads; damaged newer ones are renamed aside and reported.
    found = checkpoint.restore_newest(run.run_dir, run.groups, rename=run.is_writer)
    run.step = found[2]["step"]
    if run.is_writer:
      print(f"resumed from {found[1]} (step {run.step})", flush=True)
    # The learning rates are optimizer variables, so the checkpoint restored the old ones; the
    # run continues with the flags' (a lower rate to fine-tune), and says so.
    changed = []
    for flag, opts, lr in (("lr_g", [gan.g_optimizer], FLAGS.lr_g),
                           ("lr_d", gan.d_optimizers, FLAGS.lr_d)):
      old = float(keras.ops.convert_to_numpy(opts[0].learning_rate))  # a MirroredVariable too
      if not math.isclose(old, lr, rel_tol=1e-6):
        for opt in opts:
          opt.learning_rate = lr
        changed.append(f"--{flag} {old:g} -> {lr:g}")
    if changed and run.is_writer:
      print(f"note: continuing with {', '.join(changed)} (the checkpoint had the old rate)",
            flush=True)
    # What computed the restored state is the checkpoint's record (config.json is rewritten by
    # a resume that may not have reached a checkpoint); older checkpoints: config.json's.
    _note_compute_change(run, found[2] if "compute" in found[2] else recorded)
    if found[1] != existing[1]:  # the newest was damaged: what the restored one was trained with
      _check_damsm(run, found[2])
    _note_damsm_change(run, found[2])
    if run.step >= run.max_steps and run.is_writer:
      print(f"note: the run is at step {run.step}, --max_steps is {run.max_steps}: nothing to "
            "train (raise --max_steps or --max_epochs to continue it)", flush=True)
  return run


def _kept(run, key):
  """Where a resume's note says its change is kept: config.json, rewritten when the command
  trains (not when the run is already at --max_steps)."""
  if run.step < run.max_steps:
    return f"config.json keeps the change ({key})"
  return "nothing is trained, so config.json is left as it is"


def _note_compute_change(run, recorded):
  """Says when a resumed run continues under another backend or precision than the restored
  state was computed with (`recorded`: the checkpoint's record), and keeps the change in
  config.json's "compute_changes" (those after the restored step are dropped: never trained)."""
  before = (recorded or {}).get("compute")
  now = run.record["compute"]
  changes = [c for c in (recorded or {}).get("compute_changes", [])
             if c.get("step", 0) <= run.step]
  if before is not None and before != now:
    changes.append({"step": run.step, "from": before, "to": now})
    if run.is_writer:
      said = []
      if before.get("backend") != now["backend"]:
        said.append(f"under {now['backend']} (the run was trained under {before.get('backend')} "
                    f"to step {run.step}): the same weights, optimizer states and data position, "
                    "but the noise is drawn by the other backend's random number generator, so "
                    "the losses from here differ from a run that stayed on one backend")
      if before.get("mixed_precision") != now["mixed_precision"]:
        said.append(("in bfloat16 (--mixed_precision)" if now["mixed_precision"] else
                     "in float32") + f" (the run computed in "
                    f"{'bfloat16' if before.get('mixed_precision') else 'float32'} to step "
                    f"{run.step})")
      if (before.get("jit_compile") != now["jit_compile"] and now["backend"] == "tensorflow"
          and before.get("backend") == "tensorflow"):
        said.append(f"{'with' if now['jit_compile'] else 'without'} --jit_compile (XLA draws "
                    "other noise from the same seed)")
      for line in said:
        print(f"note: continuing {line}; {_kept(run, 'compute_changes')}", flush=True)
  if changes:
    run.record["compute_changes"] = changes
  # The devices and processes: the same step's math on any number (the global batch split over
  # them), up to float rounding; a change is said and kept in "world_changes".
  before = (recorded or {}).get("world")
  now = run.record["world"]
  moves = [c for c in (recorded or {}).get("world_changes", []) if c.get("step", 0) <= run.step]
  if before is not None and before != now:
    moves.append({"step": run.step, "from": before, "to": now})
    if run.is_writer:
      print(f"note: continuing on {now['devices']} device(s) in {now['processes']} process(es) "
            f"(the run trained on {before.get('devices')} in {before.get('processes')} to step "
            f"{run.step}): the global batch is split over them, the same step to float rounding; "
            f"{_kept(run, 'world_changes')}", flush=True)
  if moves:
    run.record["world_changes"] = moves


def _check_damsm(run, saved):
  """Refuses DAMSM encoders other than those checkpoint record `saved` was trained with (None:
  config.json's), unless --accept_new_damsm: then `run.damsm_change` says what changed."""
  trained_with = runs.with_checkpoint_encoders(run.recorded or {}, saved).get(
      "damsm_weights_sha256")
  now = run.record["damsm_weights_sha256"]
  changed = runs.changed_encoders(trained_with, *run.damsm_encoders, digests=now)
  run.damsm_change = None
  if not changed:
    return
  if not FLAGS.accept_new_damsm:
    digests = ("" if isinstance(trained_with, str) else "; " + ", ".join(
        f"{k}: {trained_with[k][:12]}... trained with, {now[k][:12]}... now" for k in changed))
    many = len(changed) > 1
    raise ValueError(
        f"--resume: the DAMSM {' and '.join(changed)} encoder{'s' * many} in "
        f"{os.path.abspath(FLAGS.damsm_dir)} {'are' if many else 'is'} not the one{'s' * many} "
        f"the checkpoints of {run.run_dir} were trained with (weights changed: pretrained again "
        f"or further since the run started{digests}); the frozen encoders are part of the "
        "objective, so the run would not continue the same training. Resume it with the "
        "encoders it was trained with (--damsm_dir: a copy made before they changed), continue "
        "it with these on purpose (--accept_new_damsm: config.json keeps the change in "
        "damsm_changes), or start a new --run_dir")
  run.damsm_change = {"from": trained_with, "to": now,
                      "damsm_dir": os.path.abspath(FLAGS.damsm_dir), "encoders": changed}


def _note_damsm_change(run, saved):
  """Keeps in config.json's "damsm_changes" the steps at which the run went on with other DAMSM
  encoders (--accept_new_damsm), as the restored checkpoint (record `saved`) has them (older
  checkpoints: config.json's; those after the restored step are dropped: never trained)."""
  source = saved if "damsm_weights_sha256" in saved else (run.recorded or {})
  changes = [c for c in source.get("damsm_changes", []) if c.get("step", 0) <= run.step]
  if run.damsm_change is not None:
    changes.append(dict(step=run.step, **run.damsm_change))
    if run.is_writer:
      print(f"note: --accept_new_damsm: continuing from step {run.step} with the DAMSM "
            f"{' and '.join(run.damsm_change['encoders'])} encoder"
            f"{'s' if len(run.damsm_change['encoders']) > 1 else ''} of "
            f"{run.damsm_change['damsm_dir']}, not the ones the run was trained with so far; "
            f"{_kept(run, 'damsm_changes')}", flush=True)
  if changes:
    run.record["damsm_changes"] = changes


def _trim_loss_log(path, step):
  """Drops entries after `step` (written by a run that died before its next checkpoint)."""
  if not os.path.isfile(path):
    return
  with open(path) as f:
    keep = [l for l in f if l.strip() and json.loads(l)["step"] <= step]
  with open(path, "w") as f:
    f.writelines(keep)


def _fixed_samples(run, n):
  n = min(n, run.test.num_images)
  tokens = np.zeros((n, run.words_num), np.int32)
  captions = []
  for i in range(n):
    ids = run.test.captions[i][0][:run.words_num]
    tokens[i, :len(ids)] = ids
    captions.append(run.test.vocab.decode(ids))
  rng = np.random.default_rng(FLAGS.seed + 12345)
  gen = run.gan.generator
  z = rng.standard_normal((n, gen.z_dim)).astype("float32")
  eps = rng.standard_normal((n, gen.condition_dim)).astype("float32")
  return tokens, z, eps, captions


def write_samples(run, step, writer=None):
  from msmt_tf import image_utils  # pylint: disable=g-import-not-at-top
  tokens, z, eps, captions = run.samples
  images = [image_utils.to_uint8(x) for x in run.gan.sample(tokens, z, eps)]
  grid = image_utils.caption_grid(images, captions)
  folder = os.path.join(run.run_dir, "samples")
  os.makedirs(folder, exist_ok=True)
  path = os.path.join(folder, f"step-{step:08d}.png")
  image_utils.save_png(grid, path)
  if writer is not None:
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with writer.as_default():
      tf.summary.image("samples", np.asarray(grid)[None], step=step)
  return path


def train(run):
  """Runs the training loop from `run.step` to `run.max_steps`.

  Ctrl-C or SIGTERM (a batch system's time limit) stops the run after the step it comes in,
  with a checkpoint of that step (a second one stops at once). A multi-process run's processes
  are signalled at different steps (or only one is), and each must stop after the same step
  (the others would wait for it at the next collective): each gives its request to the step
  (`msmt_gan.STOP_KEYS`), which reduces them over the processes with the losses; all read the
  same result from the same step, and stop after the step in which they read it."""
  multi = run.world["processes"] > 1
  with stopping.stop_at_step_boundary(
      when="after a step all processes agree on (one of the next three)" if multi else None,
  ) as stop:
    step_fn = _train(run, stop, multi)
  step_fn.sync()
  if run.is_writer:
    runs.save_model(run.gan.generator_ema, os.path.join(run.run_dir, "generator_ema.keras"))
  return run.step


def _train(run, stop, multi):
  """`train`'s setup and loop, inside its stop request `stop`: raises the stop it agreed on, or
  returns the step function at --max_steps."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from msmt_tf.models import msmt_gan  # pylint: disable=g-import-not-at-top
  writes = run.is_writer  # only process 0 of a multi-process run writes files
  loss_log = os.path.join(run.run_dir, "losses.jsonl")
  writer = None
  if writes:
    if run.step < run.max_steps:  # a command that trains nothing leaves the run's record as it is
      # --accept_new_damsm is consent to one change: flags.txt (the run's flagfile) never gives
      # it; nor --resume: a run's flagfile used without --resume is refused over its checkpoints.
      # Both are left out (None), so neither undoes the command line's in any flag order.
      runs.write_run_files(run.run_dir, run.record, runs.recorded_flags(
          FLAGS, overrides={"accept_new_damsm": None, "resume": None}))
    _trim_loss_log(loss_log, run.step)
    writer = tf.summary.create_file_writer(os.path.join(run.run_dir, "tb"))
  run.samples = _fixed_samples(run, FLAGS.num_samples)
  epoch, batch = divmod(run.step, run.batches_per_epoch)
  pipeline = datasets.DataPipeline(run.data, FLAGS.batch_size, run.words_num, seed=FLAGS.seed,
                                   start_epoch=epoch, start_batch=batch,
                                   num_shards=run.world["processes"],
                                   shard_index=run.world["process_index"])
  step_fn = run.gan.make_train_function(jit_compile=FLAGS.jit_compile, placement=run.placement)
  record = dict(run.record)
  progbar = None
  start = time.time()

  def record_losses(step, device_logs):
    """Reads one step's losses (waiting for that step only), stops on a non-finite one, logs.
    A multi-process step's stop requests (any process's) are noted in `agreed`."""
    logs = {k: float(v) + 0.0 for k, v in device_logs.items()}  # + 0.0: -0.0 is logged as 0.0
    stops = {k: logs.pop(k) for k in msmt_gan.STOP_KEYS if k in logs}
    if agreed[0] is None and stops.get("stop_sigterm", 0) > 0:
      agreed[0] = stopping.Terminated()
    elif agreed[0] is None and stops.get("stop_sigint", 0) > 0:
      agreed[0] = KeyboardInterrupt()
    bad = sorted(k for k, v in logs.items() if not math.isfinite(v))
    if bad:
      last = checkpoint.latest(run.run_dir)
      raise TrainingError(
          f"non-finite loss at step {step} ({', '.join(f'{k}={logs[k]}' for k in bad)}); "
          f"stopped without saving; the newest good checkpoint is "
          f"{last[1] if last else 'none'}. Lower the learning rates or check the data.")
    if not writes:
      return
    log_file.write(json.dumps({"step": step, **logs}) + "\n")
    log_file.flush()
    progbar.update(step, [(k, v) for k, v in logs.items()
                          if k in ("d_loss_64", "g_total", "damsm_word", "kl")])
    if step % FLAGS.log_every == 0 or step == run.max_steps:
      with writer.as_default():
        for k, v in logs.items():
          tf.summary.scalar(f"loss/{k}", v, step=step)
        tf.summary.scalar("speed/steps_per_second",
                          (step - first_step) / max(time.time() - start, 1e-9), step=step)
      writer.flush()

  def save_checkpoint():
    e, b = divmod(run.step, run.batches_per_epoch)
    record.update(epoch=e, batch_in_epoch=b)
    checkpoint.save(run.run_dir, run.step, run.groups, record, keep=FLAGS.keep_checkpoints)

  # Step n's losses are read after step n + 1 is dispatched, so the device never waits for the
  # host between steps; before anything is saved the pending losses are read and checked, so no
  # checkpoint or sample ever follows a non-finite loss.
  # A stop (see `train`): single-process, the signal's own request; multi-process, the request
  # every process has read from a step's logs.
  agreed = [None]

  def stopping_now():
    return agreed[0] is not None if multi else stop.error is not None

  first_step, pending, saved_step = run.step, None, run.step
  with open(loss_log if writes else os.devnull, "a") as log_file:
    for data in pipeline.iterate(as_numpy=keras.backend.backend() != "tensorflow"):
      if run.step >= run.max_steps or stopping_now():
        break
      if progbar is None and writes:
        progbar = progress_lib.bar(run.max_steps, stateful_metrics=None)
        progbar.update(run.step)
      inputs = {k: v for k, v in data.items() if k not in ("index", "epoch")}
      if multi:
        rows, asked = int(inputs["tokens"].shape[0]), stop.error  # read once: a signal may come
        term = isinstance(asked, stopping.Terminated)
        inputs["stop_sigterm"] = np.full((rows,), float(term), np.float32)
        inputs["stop_sigint"] = np.full((rows,), float(asked is not None and not term),
                                        np.float32)
      device_logs = step_fn(inputs)
      if pending:
        record_losses(*pending)
      run.step += 1
      pending = (run.step, device_logs)
      sample = run.step % FLAGS.sample_every == 0 or run.step == run.max_steps
      save = (run.step % FLAGS.checkpoint_every == 0 or run.step == run.max_steps
              or stopping_now())
      if not (sample or save):
        continue
      record_losses(*pending)
      pending = None
      save = save or stopping_now()  # multi-process: this step's own logs may have asked
      step_fn.sync()
      if writes:
        if save:  # first: a stop asked for here is saved before the samples take their time
          save_checkpoint()
        if sample:
          write_samples(run, run.step, writer)
      saved_step = run.step if save else saved_step
      if run.placement is not None:  # the other processes wait for process 0's writes here
        run.placement.barrier(f"written_{run.step}")
      if stopping_now():
        break
    if pending:
      record_losses(*pending)
    # Asked for while a batch was awaited, or after this step's `save` was decided (during its
    # samples or barrier): saved here. A run that has reached --max_steps finishes (its model
    # file takes seconds). (Multi-process: always saved in the loop; a request that no step
    # carried yet is dropped at --max_steps, as the run ends anyway.)
    if stopping_now() and run.step < run.max_steps:
      if saved_step != run.step:
        step_fn.sync()
        if writes:
          save_checkpoint()
      if stop.error is None:  # another process's signal
        agreed[0].other_process = True
      raise stop.error or agreed[0]
  return step_fn


def main(argv):
  del argv
  try:
    run = prepare()
  except (DatasetError, ValueError, FileNotFoundError, checkpoint.CheckpointError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt as e:
    stopping.exit_stopped(e, f"{stopping.how_stopped(e)} before training started")
  # SIGTERM (Slurm's time limit, `kill`, `docker stop`, Kubernetes) stops a run as Ctrl-C does:
  # with the step reached and the checkpoint to continue from, instead of silently.
  try:
    with stopping.sigterm_as_interrupt():
      step = train(run)
  except (TrainingError, DatasetError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt as e:
    print(flush=True)  # off the progress bar's line
    last = checkpoint.latest(run.run_dir)
    stopping.exit_stopped(e, f"{stopping.how_stopped(e)} at step {run.step}; the newest "
                          "checkpoint is " + (
                              f"{last[1]} (step {last[0]}): continue with the same command and "
                              "--resume" if last else
                              "none yet: run the same command again to start over"))
  print(f"trained to step {step}; run directory: {run.run_dir}")


if __name__ == "__main__":
  app.run(main)
