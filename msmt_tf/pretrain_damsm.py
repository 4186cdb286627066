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
`--resume` continues an interrupted pretraining from its last snapshot (the same data order and
learning rate; Adam is re-created every epoch anyway), with the snapshot's settings.
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
from msmt_tf.data import datasets
from msmt_tf.data.errors import DatasetError

FLAGS = flags.FLAGS

__all__ = ["pretrain"]


# The settings a resumed pretraining must share with its snapshot (the encoders' shapes, or the
# optimisation the remaining epochs continue), and the flag that sets each.
RESUME_SETTINGS = {"vocab_size": "the dataset's vocabulary size", "text_dim": "--text_dim",
                   "trunk": "--image_encoder_trunk", "words_num": "--damsm_words_num",
                   "batch_size": "--damsm_batch_size", "lr": "--damsm_lr",
                   "gammas": "--gamma1/2/3"}


def learning_rate(lr0, epochs_done):
  """The rate of the epoch after `epochs_done` epochs: x0.98 after each epoch while above a tenth
  of the initial rate (AttnGAN)."""
  lr = lr0
  for _ in range(epochs_done):
    if lr > lr0 / 10.0:
      lr *= 0.98
  return lr


def resume_point(damsm_dir, settings, epochs, max_steps):
  """(epochs done, steps done) of the snapshot in `damsm_dir` that `--resume` continues; a
  ValueError names the reason when there is none to continue."""
  path = os.path.join(damsm_dir, runs.PRETRAIN_RECORD)
  record = runs.read_pretrain_record(damsm_dir)
  if record is None:
    raise ValueError(f"--resume: {path} is missing or unreadable: {damsm_dir} holds no "
                     "pretrain_damsm snapshot to continue (its encoders were imported, or written "
                     "before the record was kept); start over with --overwrite")
  if record.get("writing"):
    raise ValueError(f"--resume: pretrain_damsm stopped while writing the snapshot of epoch "
                     f"{record.get('epoch')} ({path}): the two encoders may be of different "
                     "epochs; start over with --overwrite")
  saved = record.get("settings") or {}
  for key, what in RESUME_SETTINGS.items():
    if key in saved and saved[key] != settings[key]:
      raise ValueError(f"--resume: {what} is {settings[key]} here, the snapshot in {damsm_dir} "
                       f"was trained with {saved[key]} ({path}): resume with its settings, or "
                       "start over with --overwrite")
  done, steps = int(record["epoch"]), int(record["steps"])
  if done >= epochs or (max_steps and steps >= max_steps):
    limit = (f"--damsm_max_steps={max_steps}" if max_steps and steps >= max_steps
             else f"--damsm_epochs={epochs}")
    raise ValueError(f"--resume: the encoders in {damsm_dir} are trained to epoch {done} "
                     f"({steps} steps), as far as {limit} goes: nothing to continue; raise it to "
                     "train further")
  return done, steps


def seed_dropout(models, seed, epoch):
  """Sets the random-state variables of the models' dropout layers (Keras seed generators) to a
  function of (seed, epoch, their order): an epoch draws the same dropout masks whether the run
  was resumed before it or not (a saved model does not keep these states: loading draws new
  ones)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  states = [v for m in models for v in m.non_trainable_variables
            if v.path.endswith("seed_generator_state")]
  for index, v in enumerate(states):
    # [seed, counter]: each draw adds 1 to the counter; epochs start 2**32 draws apart.
    v.assign(np.array([(int(seed) * 1_000_003 + index) % 2**31, int(epoch) << 32],
                      dtype=v.dtype))


def _keep_log(log_path, epochs_done):
  """Keeps the log's entries of the epochs the snapshot holds (a stop after the snapshot logged
  epochs the resumed run trains again)."""
  kept = []
  if os.path.isfile(log_path):
    with open(log_path) as f:
      for line in f:
        try:
          if json.loads(line)["epoch"] <= epochs_done:
            kept.append(line.rstrip("\n") + "\n")
        except (ValueError, KeyError, TypeError):
          continue
  fileio.atomic_write_bytes(log_path, "".join(kept).encode())


def pretrain(data, test, model_cfg, damsm_dir, words_num, trunk="inception_v3",
             inception_weights=None, epochs=600, max_steps=None, batch_size=48, lr=0.002,
             snapshot_every=50, gammas=(4.0, 5.0, 10.0), seed=0, verbose=True, resume=False):
  """Trains the encoders; returns the list of per-epoch log dicts (of this call's epochs).
  `resume`: continue the snapshot in `damsm_dir` (its pretrain_record.json) from the next epoch:
  the same data order and learning rate as an uninterrupted run (Adam starts afresh every epoch,
  as in AttnGAN, so no optimizer state is lost); the dropout draws differ."""
  import keras  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from msmt_tf import losses  # pylint: disable=g-import-not-at-top
  from msmt_tf.models import ImageEncoder  # pylint: disable=g-import-not-at-top

  settings = {"vocab_size": len(data.vocab), "text_dim": model_cfg.text_dim, "trunk": trunk,
              "words_num": words_num, "batch_size": batch_size, "lr": lr,
              "gammas": [float(g) for g in gammas]}
  log_path = os.path.join(damsm_dir, "damsm_log.jsonl")
  if resume:
    done, steps = resume_point(damsm_dir, settings, epochs, max_steps)
    keras.utils.set_random_seed(seed)
    text_path, image_path = config.damsm_paths(damsm_dir)
    text_enc = runs.load_damsm_encoder(text_path, "RNNTextEncoder")
    image_enc = runs.load_damsm_encoder(image_path, "ImageEncoder")
    if text_enc.vocab_size != len(data.vocab) or image_enc.trunk_name != trunk:
      raise ValueError(f"--resume: the encoders in {damsm_dir} have a {text_enc.vocab_size}-word "
                       f"vocabulary and the {image_enc.trunk_name} trunk; this dataset has "
                       f"{len(data.vocab)} words and --image_encoder_trunk={trunk}; start over "
                       "with --overwrite")
    _keep_log(log_path, done)
    if verbose:
      print(f"resuming DAMSM pretraining in {damsm_dir} after epoch {done} ({steps} steps)",
            flush=True)
  else:
    check_trunk(trunk, inception_weights)
    keras.utils.set_random_seed(seed)
    os.makedirs(damsm_dir, exist_ok=True)
    done, steps = 0, 0
    text_enc = model_cfg.build_text_encoder(words_num)
    image_enc = ImageEncoder(model_cfg.text_dim, trunk, inception_weights, name="image_encoder")
    image_enc.build((None, image_enc.input_size, image_enc.input_size, 3))
    open(log_path, "w").close()  # this run's losses only (main refuses existing encoders)
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

  def step(batch):
    with tf.GradientTape() as tape:
      w, s = damsm_loss(batch, True)
      total = w + s
    grads = tape.gradient(total, text_vars + image_vars)
    text_grads, _ = tf.clip_by_global_norm(grads[:len(text_vars)], 0.25)
    opt.apply(list(text_grads) + grads[len(text_vars):], text_vars + image_vars)
    return w, s

  eval_step = tf.function(lambda b: damsm_loss(b, False), reduce_retracing=True)
  train_pipe = datasets.DataPipeline(data, batch_size, words_num, base_size=size, num_stages=1,
                                     seed=seed, start_epoch=done)
  test_pipe = datasets.DataPipeline(test, min(batch_size, test.num_images), words_num,
                                    base_size=size, num_stages=1, seed=seed, augment=False,
                                    num_epochs=1)
  history, it = [], train_pipe.iterate(as_numpy=False)
  lr0, lr = lr, learning_rate(lr, done)
  step_fn = tf.function(step, reduce_retracing=True)
  for epoch in range(done, epochs):
    for v in fresh_state:  # a fresh Adam each epoch (AttnGAN)
      v.assign(keras.ops.zeros(v.shape, v.dtype))
    opt.learning_rate = lr
    seed_dropout([text_enc, image_enc], seed, epoch)
    w_sum = s_sum = 0.0
    n = 0
    for _ in range(train_pipe.batches_per_epoch):
      batch = next(it)
      w, s = step_fn({k: batch[k] for k in ("tokens", "class_id", f"image_{size}")})
      w_sum, s_sum, n, steps = w_sum + float(w), s_sum + float(s), n + 1, steps + 1
      if max_steps and steps >= max_steps:
        break
    tw = ts = 0.0
    tn = 0
    for batch in test_pipe.iterate(as_numpy=False):
      w, s = eval_step({k: batch[k] for k in ("tokens", "class_id", f"image_{size}")})
      tw, ts, tn = tw + float(w), ts + float(s), tn + 1
    entry = dict(epoch=epoch + 1, steps=steps, lr=lr, train_word=w_sum / n,
                 train_sent=s_sum / n, test_word=tw / max(tn, 1), test_sent=ts / max(tn, 1))
    history.append(entry)
    with open(log_path, "a") as f:
      f.write(json.dumps(entry) + "\n")
    if verbose:
      print(f"DAMSM epoch {epoch + 1}: train word {entry['train_word']:.3f} sent "
            f"{entry['train_sent']:.3f} | test word {entry['test_word']:.3f} sent "
            f"{entry['test_sent']:.3f} | lr {lr:.5f}", flush=True)
    last = epoch + 1 == epochs or (max_steps and steps >= max_steps)
    if (epoch + 1) % snapshot_every == 0 or last:
      _save_snapshot(damsm_dir, text_enc, image_enc, {
          "complete": bool(last), "epoch": epoch + 1, "epochs": epochs, "steps": steps,
          "max_steps": max_steps, "settings": settings})
    if last:
      break
    if lr > lr0 / 10.0:  # AttnGAN: decay while above a tenth of the initial rate
      lr *= 0.98
  return history


def _save_snapshot(damsm_dir, text_enc, image_enc, record):
  """Saves both encoders (each atomically) between two writes of pretrain_record.json: the first
  says a snapshot is being written (a stop between the two saves would leave encoders of two
  epochs: train warns, --resume refuses), the second what they are (finished, or a snapshot)."""
  record_path = os.path.join(damsm_dir, runs.PRETRAIN_RECORD)
  fileio.atomic_write_bytes(record_path, json.dumps(
      {**record, "complete": False, "writing": True}).encode())
  manifest = os.path.join(damsm_dir, runs.IMPORT_MANIFEST)  # of imported encoders replaced
  if os.path.exists(manifest):
    os.remove(manifest)
  text_path, image_path = config.damsm_paths(damsm_dir)
  runs.save_model(text_enc, text_path)
  runs.save_model(image_enc, image_path)
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
        f"has class {classes[0]}: DAMSM's losses take the other classes of a batch as negatives "
        "and would be 0; give the images several classes (msmt_tf.data.build --class_column), or "
        "build without --class_column (every image its own class)")


def interrupted_message(damsm_dir):
  """What Ctrl-C leaves in `damsm_dir`, and the command that goes on from there."""
  left = [p for p in config.damsm_paths(damsm_dir) if os.path.exists(p)]
  record = runs.read_pretrain_record(damsm_dir) or {}
  head = "interrupted before the encoders were finished: "
  if not left:
    return head + "nothing was written; run the same command again"
  if record.get("writing"):
    return (head + f"stopped while writing the snapshot of epoch {record.get('epoch')}: "
            f"{', '.join(left)} may be of different epochs; start over with --overwrite")
  if record and not record.get("complete", True):
    return (head + f"{', '.join(left)} are a snapshot of epoch {record.get('epoch')} of "
            f"{record.get('epochs')}, not fully trained encoders; continue with the same command "
            "and --resume (or start over with --overwrite)")
  return (head + f"no snapshot of this run was written yet; {', '.join(left)} are the encoders "
          "that were there before it, unchanged")


def main(argv):
  del argv
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
  try:
    data = datasets.load_split(FLAGS.data_dir, FLAGS.dataset, "train")
    test = datasets.load_split(FLAGS.data_dir, FLAGS.dataset, "test")
    model_cfg = config.model_config_from_flags(vocab_size=len(data.vocab))
    datasets.DataPipeline(data, FLAGS.damsm_batch_size, words_num,
                          batch_flag="--damsm_batch_size")
    check_classes(data)
    pretrain(data, test, model_cfg, FLAGS.damsm_dir, words_num, FLAGS.image_encoder_trunk,
             FLAGS.inception_weights, FLAGS.damsm_epochs, FLAGS.damsm_max_steps,
             FLAGS.damsm_batch_size, FLAGS.damsm_lr, FLAGS.damsm_snapshot_every,
             (FLAGS.gamma1, FLAGS.gamma2, FLAGS.gamma3), FLAGS.seed, resume=FLAGS.resume)
  except (DatasetError, ValueError, FileNotFoundError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt:
    sys.exit(interrupted_message(FLAGS.damsm_dir))
  logging.info("DAMSM encoders written to %s", FLAGS.damsm_dir)
  print(f"DAMSM encoders written to {os.path.abspath(FLAGS.damsm_dir)}")


if __name__ == "__main__":
  flags.DEFINE_bool("overwrite", False, "Replace the encoders already in --damsm_dir.")
  app.run(main)
