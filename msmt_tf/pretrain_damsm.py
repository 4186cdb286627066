r"""Pretrains the DAMSM text and image encoders (AttnGAN `pretrain_DAMSM.py`, model_spec §2.4).

    python -m msmt_tf.pretrain_damsm --flagfile=configs/cub.cfg --damsm_dir=runs/damsm_birds \
        --inception_weights=inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5

Recipe: batch 48; Adam(beta 0.5, 0.999) started afresh at every epoch; learning rate
0.002, multiplied by 0.98 after each epoch while above 0.0002; gradient-norm clipping at 0.25 on
the text encoder only; loss = word + sentence DAMSM losses (both directions, class-masked).
Trainable: the text encoder and the image projections (plus the trunk when it is the small demo
CNN; the Inception-v3 trunk stays frozen). Images are the encoder's input size (299 for
Inception). Writes `text_encoder.keras` and `image_encoder.keras` into `--damsm_dir` (atomically)
every `--damsm_snapshot_every` epochs and at the end, then `pretrain_record.json` (whether they
are the finished encoders or a snapshot of an earlier epoch: `train` warns of a snapshot), and
`damsm_log.jsonl` with per-epoch losses.
Ctrl-C or SIGTERM (a batch system's time limit) stops after the step it comes in, with a snapshot
of that step (a second one stops at once).
`--resume` continues an interrupted pretraining from its last snapshot as the uninterrupted run
would have gone on (the same data order, learning rate and dropout masks; Adam starts afresh
every epoch anyway, and a snapshot taken inside an epoch, by a stop or `--damsm_max_steps`,
keeps its state), with the snapshot's settings; when it has nothing to continue it says why
and exits with status 3.
Refuses an Inception trunk without `--inception_weights` (it would stay frozen at random), and a
`--damsm_dir` that already holds encoders unless `--overwrite` (start over) or `--resume` is
given.
"""

import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
from absl import logging

from msmt_tf import config  # pylint: disable=g-import-not-at-top
from msmt_tf import fileio
from msmt_tf import runs
from msmt_tf import stopping
from msmt_tf.data import datasets
from msmt_tf.data.errors import DatasetError

FLAGS = flags.FLAGS
# --help lists msmt_tf.config's flags (data, model, DAMSM, training), not only --helpfull.
flags.adopt_module_key_flags(config)

__all__ = ["pretrain"]


# The settings a resumed pretraining must share with its snapshot (the encoders' shapes, or the
# optimisation and data order the remaining epochs continue), and the flag that sets each.
RESUME_SETTINGS = {"vocab_size": "the dataset's vocabulary size", "text_dim": "--text_dim",
                   "trunk": "--image_encoder_trunk", "words_num": "--damsm_words_num",
                   "batch_size": "--damsm_batch_size", "lr": "--damsm_lr",
                   "gammas": "--gamma1/2/3", "seed": "--seed",
                   "vocab_sha256": "the vocabulary's SHA-256 (its words in order)"}
# Written with a snapshot taken inside an epoch (a --damsm_max_steps stop): the optimizer's and
# the dropout layers' state, which the rest of that epoch continues from.
STATE_FILE = "pretrain_state.npz"
LOG_FILE = "damsm_log.jsonl"


class ResumeRefused(ValueError):
  """`--resume` has nothing it can continue (the message says why); exit status 3."""


def learning_rate(lr0, epochs_done):
  """The rate of the epoch after `epochs_done` epochs: x0.98 after each epoch while above a tenth
  of the initial rate (AttnGAN)."""
  lr = lr0
  for _ in range(epochs_done):
    if lr > lr0 / 10.0:
      lr *= 0.98
  return lr


def resume_point(damsm_dir, settings, epochs, max_steps, batches_per_epoch):
  """Where `--resume` continues the snapshot in `damsm_dir`: (whole epochs done, batches done
  in the next epoch, steps done). ResumeRefused names the reason when there is nothing to
  continue."""
  path = os.path.join(damsm_dir, runs.PRETRAIN_RECORD)
  present = [p for p in config.damsm_paths(damsm_dir) if os.path.isfile(p)]
  if not present:
    raise ResumeRefused(f"--resume: {damsm_dir} holds no DAMSM encoders to continue; run "
                        "without --resume to pretrain them")
  record = runs.read_pretrain_record(damsm_dir)
  if record is None:
    raise ResumeRefused(f"--resume: {path} is missing or unreadable: {damsm_dir} holds no "
                        "pretrain_damsm snapshot to continue (its encoders were imported, or "
                        "written before the record was kept); start over with --overwrite")
  if record.get("writing"):
    raise ResumeRefused(f"--resume: pretrain_damsm stopped while moving the snapshot of epoch "
                        f"{record.get('epoch')} into place ({path}): the two encoders may be "
                        "of different epochs; start over with --overwrite")
  if len(present) < 2:
    missing = [p for p in config.damsm_paths(damsm_dir) if p not in present]
    raise ResumeRefused(f"--resume: {missing[0]} is missing: the snapshot is incomplete; start "
                        "over with --overwrite")
  try:
    epoch, steps = int(record["epoch"]), int(record["steps"])
    batch = int(record.get("batch", batches_per_epoch))
  except (KeyError, TypeError, ValueError) as e:
    raise ResumeRefused(f"--resume: {path} does not say where the snapshot stopped ({e!r}); "
                        "start over with --overwrite") from e
  saved = record.get("settings") or {}
  for key, what in RESUME_SETTINGS.items():
    if key not in saved or saved[key] == settings[key]:
      continue
    if key == "vocab_sha256":
      raise ResumeRefused(f"--resume: the vocabulary of the dataset is not the one the snapshot "
                          f"in {damsm_dir} was trained on (other words or order: SHA-256 "
                          f"{saved[key][:12]}... trained on, {settings[key][:12]}... here; a "
                          f"dataset rebuilt since, {path}): resume it with that dataset, or "
                          "start over with --overwrite")
    raise ResumeRefused(f"--resume: {what} is {settings[key]} here, the snapshot in "
                        f"{damsm_dir} was trained with {saved[key]} ({path}): resume with its "
                        "settings, or start over with --overwrite")
  # Stopped inside an epoch (--damsm_max_steps)? Counted in the batches of the snapshot's run.
  partial = 0 < batch < int(record.get("batches_per_epoch", batches_per_epoch))
  if partial and saved.get("train_images", settings["train_images"]) != settings["train_images"]:
    raise ResumeRefused(f"--resume: the snapshot stopped inside epoch {epoch} of a train split of "
                        f"{saved['train_images']} images; this one has {settings['train_images']}:"
                        " the rest of that epoch cannot be found; start over with --overwrite")
  done = epoch - 1 if partial else epoch
  if done >= epochs or (max_steps and steps >= max_steps):
    limit = (f"--damsm_max_steps={max_steps}" if max_steps and steps >= max_steps
             else f"--damsm_epochs={epochs}")
    raise ResumeRefused(f"--resume: the encoders in {damsm_dir} are trained to epoch {epoch} "
                        f"({steps} steps), as far as {limit} goes: nothing to continue; raise it "
                        "to train further")
  return done, (batch if partial else 0), steps


def seed_dropout(models, seed, epoch):
  """Sets the random-state variables of the models' dropout layers (Keras seed generators) to a
  function of (seed, epoch, their order): an epoch draws the same dropout masks whether the run
  was resumed before it or not (a saved model does not keep these states: loading draws new
  ones), and no epoch repeats another's."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  for index, v in enumerate(_seed_states(models)):
    # [key, counter]: each draw adds 1 to the counter. Keras reduces both modulo 2**31 - 2
    # before drawing, so epochs get their own keys, not counters far apart.
    key = np.random.SeedSequence([int(seed) % 2**32, index, int(epoch)]).generate_state(1)[0]
    v.assign(np.array([int(key) % (2**31 - 2), 0], dtype=v.dtype))


def _seed_states(models):
  return [v for m in models for v in m.non_trainable_variables
          if v.path.endswith("seed_generator_state")]


def _read_log(log_path, epochs_done, steps_done=None):
  """The log's entries of the epochs and steps a snapshot holds (a stop after the snapshot logged
  epochs, or the rest of an epoch it was taken inside, that the resumed run trains again), as
  lines. An entry's `steps` is the run's step count at its end."""
  kept = []
  if os.path.isfile(log_path):
    with open(log_path) as f:
      for line in f:
        try:
          entry = json.loads(line)
          if entry["epoch"] <= epochs_done and (steps_done is None
                                                or entry.get("steps", 0) <= steps_done):
            kept.append(line.rstrip("\n") + "\n")
        except (ValueError, KeyError, TypeError):
          continue
  return kept


def pretrain(data, test, model_cfg, damsm_dir, words_num, trunk="inception_v3",
             inception_weights=None, epochs=600, max_steps=None, batch_size=48, lr=0.002,
             snapshot_every=50, gammas=(4.0, 5.0, 10.0), seed=0, verbose=True, resume=False,
             progress=None):
  """Trains the encoders; returns the list of per-epoch log dicts (of this call's epochs).

  `resume`: continue the snapshot in `damsm_dir` (its pretrain_record.json) where it stopped,
  as the uninterrupted run would have gone on: the same data order, learning rate and dropout
  masks, and Adam afresh at every epoch as in AttnGAN (a snapshot taken inside an epoch by
  `max_steps` also holds Adam's and the dropout's state, STATE_FILE).
  `progress`: a dict this call fills in, for a caller interrupted in it: "resumed" (the epoch
  it continued from, or None) and "snapshot" (the epoch of the last snapshot it wrote).
  """
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from msmt_tf import losses  # pylint: disable=g-import-not-at-top
  from msmt_tf.models import ImageEncoder  # pylint: disable=g-import-not-at-top

  progress = {} if progress is None else progress
  progress.update(resumed=None, snapshot=None)
  settings = {"vocab_size": len(data.vocab), "text_dim": model_cfg.text_dim, "trunk": trunk,
              "words_num": words_num, "batch_size": batch_size, "lr": lr,
              "gammas": [float(g) for g in gammas], "seed": int(seed),
              "train_images": data.num_images,
              # The words themselves: a dataset rebuilt from edited captions can keep the size
              # and renumber the words (train checks it against the dataset it trains on).
              "vocab_sha256": data.vocab.sha256}
  batches_per_epoch = datasets.DataPipeline(data, batch_size, words_num, num_stages=1,
                                            seed=seed).batches_per_epoch
  log_path = os.path.join(damsm_dir, LOG_FILE)
  keras.utils.set_random_seed(seed)
  if resume:
    finished = (runs.read_pretrain_record(damsm_dir) or {}).get("complete")
    done, start_batch, steps = resume_point(damsm_dir, settings, epochs, max_steps,
                                            batches_per_epoch)
    if finished and verbose:
      print(f"note: the encoders in {damsm_dir} were finished; training them further changes "
            "them in place, and a GAN run trained with them will refuse to --resume with the "
            "new ones (start new GAN runs after this, or copy the folder first)", flush=True)
    text_path, image_path = config.damsm_paths(damsm_dir)
    text_enc = runs.load_damsm_encoder(text_path, "RNNTextEncoder")
    image_enc = runs.load_damsm_encoder(image_path, "ImageEncoder")
    if text_enc.vocab_size != len(data.vocab) or image_enc.trunk_name != trunk:
      raise ResumeRefused(f"--resume: the encoders in {damsm_dir} have a "
                          f"{text_enc.vocab_size}-word vocabulary and the {image_enc.trunk_name} "
                          f"trunk; this dataset has {len(data.vocab)} words and "
                          f"--image_encoder_trunk={trunk}; start over with --overwrite")
    progress["resumed"] = done + (1 if start_batch else 0)  # the epoch the snapshot is of
    log_lines = _read_log(log_path, progress["resumed"], steps)
    if verbose:
      where = (f"inside epoch {done + 1} (batch {start_batch} of {batches_per_epoch})"
               if start_batch else f"after epoch {done}")
      print(f"resuming DAMSM pretraining in {damsm_dir} {where}, {steps} steps done",
            flush=True)
  else:
    check_trunk(trunk, inception_weights)
    done, start_batch, steps = 0, 0, 0
    text_enc = model_cfg.build_text_encoder(words_num)
    image_enc = ImageEncoder(model_cfg.text_dim, trunk, inception_weights, name="image_encoder")
    image_enc.build((None, image_enc.input_size, image_enc.input_size, 3))
    os.makedirs(damsm_dir, exist_ok=True)  # once the weights read: a wrong file leaves no folder
    log_lines = []
  # The log on disk follows the encoders on disk: encoders of an earlier pretraining (replaced
  # with --overwrite) keep their log until this run writes its first snapshot.
  log_owned = resume or not any(os.path.exists(p) for p in config.damsm_paths(damsm_dir))
  if log_owned:
    fileio.atomic_write_bytes(log_path, "".join(log_lines).encode())
  size = image_enc.input_size
  g1, g2, g3 = gammas

  def damsm_loss(batch, training):
    words, sent = text_enc(batch["tokens"], training=training)
    regions, code = image_enc(batch[f"image_{size}"], training=training)
    mask = tf.not_equal(batch["tokens"], 0)
    w0, w1 = losses.damsm_word_loss(regions, words, mask, batch["class_id"], g1, g2, g3)
    s0, s1 = losses.damsm_sentence_loss(code, sent, batch["class_id"], g3)
    return w0 + w1, s0 + s1

  text_vars = text_enc.trainable_variables
  image_vars = image_enc.trainable_variables

  # AttnGAN re-creates Adam at the start of every epoch; zeroing one Adam's state (its step
  # count, moments and velocities) is the same and keeps one traced step for the whole run.
  opt = keras.optimizers.Adam(lr, beta_1=0.5, beta_2=0.999)
  opt.build(text_vars + image_vars)
  fresh_state = [v for v in opt.variables if not v.path.endswith("/learning_rate")]
  inner_state = list(opt.variables) + _seed_states([text_enc, image_enc])

  def step(batch):
    with tf.GradientTape() as tape:
      w, s = damsm_loss(batch, True)
      total = w + s
    grads = tape.gradient(total, text_vars + image_vars)
    text_grads, _ = tf.clip_by_global_norm(grads[:len(text_vars)], 0.25)
    opt.apply(list(text_grads) + grads[len(text_vars):], text_vars + image_vars)
    return w, s

  eval_step = tf.function(lambda b: damsm_loss(b, False), reduce_retracing=True,
                          autograph=False)
  train_pipe = datasets.DataPipeline(data, batch_size, words_num, base_size=size, num_stages=1,
                                     seed=seed, start_epoch=done, start_batch=start_batch)
  test_pipe = datasets.DataPipeline(test, min(batch_size, test.num_images), words_num,
                                    base_size=size, num_stages=1, seed=seed, augment=False,
                                    num_epochs=1)
  no_test = test_losses_unavailable(test)
  if no_test and verbose:
    print(f"note: no DAMSM test losses: {no_test}", flush=True)
  history, it = [], train_pipe.iterate(as_numpy=False)
  lr0 = lr
  step_fn = tf.function(step, reduce_retracing=True, autograph=False)
  # Ctrl-C or SIGTERM (a batch system's time limit) stops after the step it comes in, with a
  # snapshot there (inside an epoch: with Adam's and the dropout's state, as --damsm_max_steps
  # does), which --resume continues exactly; a second one stops at once.
  with stopping.stop_at_step_boundary(then="save a snapshot of the encoders") as stop:
    for epoch in range(done, epochs):
      lr = learning_rate(lr0, epoch)
      first_batch = start_batch if epoch == done else 0
      if first_batch:  # inside an epoch: its Adam and dropout state as the snapshot kept them
        _restore_state(os.path.join(damsm_dir, STATE_FILE), inner_state)
      else:
        for v in fresh_state:  # a fresh Adam each epoch (AttnGAN)
          v.assign(keras.ops.zeros(v.shape, v.dtype))
        seed_dropout([text_enc, image_enc], seed, epoch)
      opt.learning_rate = lr
      w_sum = s_sum = 0.0
      n = batch_index = 0
      for batch_index in range(first_batch, batches_per_epoch):
        batch = next(it)
        w, s = step_fn({k: batch[k] for k in ("tokens", "class_id", f"image_{size}")})
        w_sum, s_sum, n, steps = w_sum + float(w), s_sum + float(s), n + 1, steps + 1
        if (max_steps and steps >= max_steps) or stop.error is not None:
          break
      # Stopped inside the epoch: no test losses (a batch system's grace period is short).
      budget_spent = bool(max_steps and steps >= max_steps)
      stopped = (stop.error is not None and batch_index + 1 < batches_per_epoch
                 and not budget_spent)
      tw = ts = 0.0
      tn = 0
      for batch in ([] if no_test or stopped else test_pipe.iterate(as_numpy=False)):
        w, s = eval_step({k: batch[k] for k in ("tokens", "class_id", f"image_{size}")})
        tw, ts, tn = tw + float(w), ts + float(s), tn + 1
      untested = no_test or stopped
      entry = dict(epoch=epoch + 1, steps=steps, lr=lr, train_word=w_sum / max(n, 1),
                   train_sent=s_sum / max(n, 1), test_word=None if untested else tw / max(tn, 1),
                   test_sent=None if untested else ts / max(tn, 1))  # None: null in the log
      if first_batch:
        entry["from_batch"] = first_batch  # the means are of this part of the epoch
      if stopped:
        entry["stopped"] = True  # by Ctrl-C or SIGTERM: the test losses were not computed
      history.append(entry)
      if not stopped:
        progress["epochs_done"] = progress.get("epochs_done", 0) + 1
      log_lines.append(json.dumps(entry) + "\n")
      if log_owned:
        fileio.atomic_write_bytes(log_path, "".join(log_lines).encode())
      if verbose:
        tested = ("test n/a" if no_test else "test not computed (stopped)" if stopped else
                  f"test word {entry['test_word']:.3f} sent {entry['test_sent']:.3f}")
        # A mean of part of the epoch (resumed inside it, or stopped by --damsm_max_steps) says so.
        part = (f" (batches {first_batch + 1}-{first_batch + n} of {batches_per_epoch})"
                if first_batch or n < batches_per_epoch else "")
        print(f"DAMSM epoch {epoch + 1}: train{part} word {entry['train_word']:.3f} sent "
              f"{entry['train_sent']:.3f} | {tested} | lr {lr:.5f}", flush=True)
      # A stop inside the last epoch leaves a snapshot, not finished encoders.
      last = (epoch + 1 == epochs and not stopped) or budget_spent
      stop_now = stop.error is not None  # read once: the snapshot and the stop go together
      if (epoch + 1) % snapshot_every == 0 or last or stop_now:
        batches = batch_index + 1
        inner = ([keras.ops.convert_to_numpy(v.value) for v in inner_state]
                 if batches < batches_per_epoch else None)
        _save_snapshot(damsm_dir, text_enc, image_enc, {
            "complete": bool(last), "epoch": epoch + 1, "batch": batches,
            "batches_per_epoch": batches_per_epoch, "epochs": epochs, "steps": steps,
            "max_steps": max_steps, "settings": settings}, inner)
        progress["snapshot"] = epoch + 1
        if not log_owned:  # the first snapshot of a run over older encoders: their log goes too
          fileio.atomic_write_bytes(log_path, "".join(log_lines).encode())
          log_owned = True
      if last:  # finished: a stop asked for meanwhile has nothing left to stop
        break
      if stop_now:
        raise stop.error
  return history


def _restore_state(path, variables):
  """Sets `variables` (Adam's, then the dropout seed states) from a snapshot's STATE_FILE."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  try:
    with np.load(path) as f:
      values = [f[f"v{i}"] for i in range(len(f.files))]
  except (OSError, ValueError, KeyError) as e:
    raise ResumeRefused(f"--resume: cannot read {path} (the optimizer state of a snapshot taken "
                        f"inside an epoch: {type(e).__name__}: {e}); start over with "
                        "--overwrite") from e
  shapes = [tuple(v.shape) for v in variables]
  if [tuple(x.shape) for x in values] != shapes:
    raise ResumeRefused(f"--resume: {path} holds {len(values)} arrays that do not match the "
                        f"encoders' {len(shapes)} optimizer and dropout states; start over with "
                        "--overwrite")
  for v, x in zip(variables, values):
    v.assign(x.astype(v.dtype))


def _save_snapshot(damsm_dir, text_enc, image_enc, record, inner_state=None):
  """Writes both encoders (and `inner_state`, Adam's and the dropout's state of a snapshot taken
  inside an epoch) to hidden files first, then moves them into place between two writes of
  pretrain_record.json: the first says a snapshot is being moved in (a stop in that instant
  would leave encoders of two epochs: train warns, --resume refuses), the second what they are
  (finished, or a snapshot). A stop while the files are written leaves the last snapshot and its
  record as they were."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  text_path, image_path = config.damsm_paths(damsm_dir)
  state_path = os.path.join(damsm_dir, STATE_FILE)
  moves = [(text_path, text_enc.save), (image_path, image_enc.save)]
  if inner_state is not None:
    moves.append((state_path, lambda p: np.savez(
        p, **{f"v{i}": x for i, x in enumerate(inner_state)})))
  tmps = []
  with fileio.removed_on_failure(tmps):  # the files written so far, if a later one fails
    for path, write in moves:
      tmps.append(fileio.write_aside(path, write))
  record_path = os.path.join(damsm_dir, runs.PRETRAIN_RECORD)
  fileio.atomic_write_bytes(record_path, json.dumps(
      {**record, "complete": False, "writing": True}).encode())
  for tmp, (path, _) in zip(tmps, moves):
    os.replace(tmp, path)
  for stale in ([] if inner_state is not None else [state_path]) + [
      os.path.join(damsm_dir, runs.IMPORT_MANIFEST)]:  # of encoders replaced
    if os.path.exists(stale):
      os.remove(stale)
  fileio.atomic_write_bytes(record_path, json.dumps(record).encode())


def check_trunk(trunk, inception_weights):
  """The Inception trunks stay frozen, so they need pretrained weights: without them DAMSM would
  be trained on a random, frozen feature extractor (and its encoders would be useless). The small
  trunk is trained from scratch: weights given for it would be ignored, so they are refused."""
  if trunk == "small" and inception_weights:
    raise ValueError(
        f"--inception_weights={inception_weights} is given, but --image_encoder_trunk=small "
        "trains its own trunk from scratch and would not use it: pass "
        "--image_encoder_trunk=inception_v3 (a Keras InceptionV3 no-top .h5) or "
        "torchvision_inception_v3 (torchvision's .pth) to use the file, or drop "
        "--inception_weights")
  if trunk != "small" and not inception_weights:
    raise ValueError(
        f"--image_encoder_trunk={trunk} is frozen during DAMSM pretraining and needs its "
        "pretrained weights: pass --inception_weights=PATH (inception_v3: a Keras InceptionV3 "
        "no-top .h5; torchvision_inception_v3: torchvision's inception_v3_google-*.pth), or use "
        "--image_encoder_trunk=small to train a small trunk from scratch (BUILD.md, DAMSM "
        "encoders)")


def check_classes(data):
  """DAMSM's word and sentence losses take the other classes of a batch as negatives (AttnGAN
  masks same-class pairs): a train split of one class leaves none, and the losses are
  identically 0 (nothing would be learned)."""
  classes = data.classes
  if len(classes) < 2:
    raise ValueError(
        f"every image of the {data.split} split of {data.data_dir} ({data.num_images} images) "
        f"has class {data.class_name(classes[0])}: DAMSM's losses take the other classes of a "
        "batch as negatives and would be 0; give the images several classes (msmt_tf.data.build "
        "--class_column), or build without --class_column (every image its own class)")


def test_losses_unavailable(test):
  """Why the test split gives no DAMSM losses, or None. The losses score each image against the
  captions of the other classes in its batch (AttnGAN masks same-class pairs): one image, or one
  class, leaves none, and the losses would print as a perfect 0."""
  if test.num_images < 2:
    return (f"the test split of {test.data_dir} has {test.num_images} image; the losses score "
            "an image against the other images of its batch")
  classes = test.classes
  if len(classes) < 2:
    return (f"every image of the test split of {test.data_dir} has class "
            f"{test.class_name(classes[0])}; the "
            "losses score an image against the other classes of its batch")
  return None


def interrupted_message(damsm_dir, progress=None, resume=False, overwrite=False,
                        how="interrupted"):
  """What Ctrl-C (or SIGTERM: `how`, `stopping.how_stopped`'s words) leaves in `damsm_dir`, and the
  command that goes on from there. `progress`: what the interrupted `pretrain` call filled in;
  `resume`, `overwrite`: its command's flags."""
  progress = progress or {}
  left = [p for p in config.damsm_paths(damsm_dir) if os.path.exists(p)]
  record = runs.read_pretrain_record(damsm_dir) or {}
  head = f"{how} before the encoders were finished: "
  if not left:
    epochs = progress.get("epochs_done")
    done = (f"; its {epochs} finished epoch(s) are lost (their loss lines are in "
            f"damsm_log.jsonl): encoders are saved every --damsm_snapshot_every epochs and at "
            "the end" if epochs else "")
    return head + f"no encoders were written yet{done}; run the same command again"
  if record.get("writing"):
    return (head + f"stopped while moving the snapshot of epoch {record.get('epoch')} into "
            f"place: {', '.join(left)} may be of different epochs; start over with --overwrite")
  if progress.get("snapshot") is None and progress.get("resumed") is None:
    earlier = (f" (a snapshot of epoch {record.get('epoch')} of {record.get('epochs')} of an "
               "earlier pretraining)" if record and not record.get("complete", True) else "")
    return (head + f"no snapshot of this run was written yet; {', '.join(left)} are the "
            f"encoders that were there before it, unchanged{earlier}; run the same command "
            "again to start over")
  go_on = ("the same command" if resume else "the same command with --resume instead of "
           "--overwrite" if overwrite else "the same command and --resume")
  epoch = record.get("epoch")
  if record.get("complete", True):  # a finished pretraining resumed for more epochs
    return (head + f"{', '.join(left)} are as trained to epoch {epoch} (no newer snapshot); "
            f"continue with {go_on}")
  batch, per_epoch = record.get("batch"), record.get("batches_per_epoch")
  inside = (f" (taken inside it, after batch {batch} of {per_epoch})"
            if isinstance(batch, int) and isinstance(per_epoch, int) and batch < per_epoch
            else "")
  return (head + f"{', '.join(left)} are a snapshot of epoch {epoch} of "
          f"{record.get('epochs')}{inside}, not fully trained encoders; continue with {go_on} "
          "(or start over with --overwrite)")


def main(argv):
  del argv
  from msmt_tf import distribute  # pylint: disable=g-import-not-at-top
  distribute.note_single_device("pretrain_damsm")
  if not FLAGS.damsm_dir:
    sys.exit("error: --damsm_dir is not set (where the encoders are written)")
  if not FLAGS.data_dir:
    sys.exit("error: --data_dir is not set")
  if FLAGS.resume and FLAGS.overwrite:
    sys.exit("error: --resume continues the snapshot in --damsm_dir, --overwrite starts over "
             "from scratch: pass one of them")
  existing = [p for p in config.damsm_paths(FLAGS.damsm_dir) if os.path.exists(p)]
  if existing and not (FLAGS.overwrite or FLAGS.resume):
    sys.exit(f"error: {existing[0]} already exists (DAMSM encoders a GAN run may use); pass "
             "--overwrite to replace them, --resume to continue an unfinished pretraining, or "
             "choose another --damsm_dir")
  if not FLAGS.resume:  # a resumed trunk comes from the snapshot
    try:
      check_trunk(FLAGS.image_encoder_trunk, FLAGS.inception_weights)
    except ValueError as e:
      sys.exit(f"error: {e}")
  words_num = FLAGS.damsm_words_num or (15 if FLAGS.dataset == "coco" else 18)
  progress = {}
  try:
    with stopping.sigterm_as_interrupt():
      data = datasets.load_split(FLAGS.data_dir, FLAGS.dataset, "train")
      test = datasets.load_split(FLAGS.data_dir, FLAGS.dataset, "test")
      model_cfg = config.model_config_from_flags(vocab_size=len(data.vocab))
      datasets.DataPipeline(data, FLAGS.damsm_batch_size, words_num,
                            batch_flag="--damsm_batch_size")
      check_classes(data)
      pretrain(data, test, model_cfg, FLAGS.damsm_dir, words_num, FLAGS.image_encoder_trunk,
               FLAGS.inception_weights, FLAGS.damsm_epochs, FLAGS.damsm_max_steps,
               FLAGS.damsm_batch_size, FLAGS.damsm_lr, FLAGS.damsm_snapshot_every,
               (FLAGS.gamma1, FLAGS.gamma2, FLAGS.gamma3), FLAGS.seed, resume=FLAGS.resume,
               progress=progress)
  except ResumeRefused as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(3)
  except (DatasetError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt as e:
    stopping.exit_stopped(e, interrupted_message(FLAGS.damsm_dir, progress, FLAGS.resume,
                                                 FLAGS.overwrite, stopping.how_stopped(e)))
  logging.info("DAMSM encoders written to %s", FLAGS.damsm_dir)
  print(f"DAMSM encoders written to {os.path.abspath(FLAGS.damsm_dir)}")


if __name__ == "__main__":
  flags.DEFINE_bool("overwrite", False, "Replace the encoders already in --damsm_dir.")
  app.run(main)
