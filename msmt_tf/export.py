r"""Exports a trained run's EMA generator as a SavedModel that TF Serving can serve: text in,
images out.

    python -m msmt_tf.export --run_dir runs/cub [--step N] --output saved_models/cub/1

The SavedModel holds the EMA generator, the frozen DAMSM text encoder and the vocabulary, and
tokenizes in the graph with the training rules (tokens are runs of Unicode letters, digits and
underscores, lowercased, with non-ASCII characters removed, as AttnGAN's tokenizer; words outside
the vocabulary are dropped; captions longer than `words_num` keep their first `words_num` known
words). Invalid UTF-8 is replaced (U+FFFD) before tokenizing. Noise comes from a seed, so the
same captions and seed give the same bytes. Only core TensorFlow ops are used.

Signatures:
  serving_default(captions: string [B]) -> images uint8 [B, S, S, 3], images_bytes string [B]
      (PNG; TF Serving's REST API returns `*_bytes` outputs base64-encoded); seed 0.
  generate(captions: string [B], seed: int64 []) -> the same, for a chosen seed.
  generate_png(captions, seed) -> images_bytes only (what a REST client needs: TF Serving's
      REST API returns every output of a signature, and the uint8 array is large as JSON).
  generate_stages(captions, seed) -> images, images_bytes, plus `stage_<s>` float32 [-1, 1]
      images of every stage and the `tokens` int32 [B, words_num] that were used.
Bad input: a caption with no vocabulary word (empty, punctuation only, or only unknown words)
fails the request with INVALID_ARGUMENT naming its index; a batch of zero captions returns
empty outputs.
"""

import json
import os
import re
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from msmt_tf import config  # pylint: disable=g-import-not-at-top,unused-import  (--run_dir etc.)

__all__ = ["load_run", "ServingModule", "noise", "export"]

FLAGS = flags.FLAGS


def load_run(run_dir, step=None, damsm_dir=None, data_dir=None):
  """Returns (EMA generator, text encoder, Vocabulary, record) of a training run."""
  from msmt_tf import checkpoint  # pylint: disable=g-import-not-at-top
  from msmt_tf.config import ModelConfig, damsm_paths  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  from msmt_tf.train import load_damsm_encoder  # pylint: disable=g-import-not-at-top
  config_path = os.path.join(run_dir, "config.json")
  if not os.path.isfile(config_path):
    raise FileNotFoundError(f"{config_path} not found: --run_dir must be a msmt_tf.train run")
  with open(config_path) as f:
    record = json.load(f)
  if step is None:
    found = checkpoint.latest(run_dir)
    if found is None:
      raise FileNotFoundError(f"no checkpoint in {os.path.join(run_dir, 'checkpoints')}")
    path = found[1]
  else:
    path = os.path.join(run_dir, "checkpoints", f"ckpt-{int(step):08d}.npz")
    if not os.path.isfile(path):
      steps = [s for s, _ in checkpoint.list_checkpoints(run_dir)]
      raise FileNotFoundError(f"no checkpoint for --step {step} in {run_dir} (have: {steps})")
  cfg = ModelConfig(**record["model"])
  words_num = record["data"]["words_num"]
  generator = cfg.build_generator(words_num)
  checkpoint.restore(path, {"generator_ema": generator.variables})
  damsm_dir = damsm_dir or record.get("damsm_dir")
  if not damsm_dir:
    raise FileNotFoundError(f"{config_path} records no DAMSM folder; pass --damsm_dir")
  text_encoder = load_damsm_encoder(damsm_paths(damsm_dir)[0], "RNNTextEncoder")
  data_dir = data_dir or record["data"]["data_dir"]
  _, _, vocab = datasets.load_captions(data_dir, record["data"]["dataset"])
  if len(vocab) != cfg.vocab_size:
    raise ValueError(f"{data_dir} has {len(vocab)} words, the run was trained on "
                     f"{cfg.vocab_size}")
  return generator, text_encoder, vocab, record


def noise(batch, seed, z_dim, condition_dim):
  """The (z, CA eps) the SavedModel draws for `batch` captions and `seed` (stateless)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  seed = tf.cast(seed, tf.int64)
  z = tf.random.stateless_normal(tf.stack([batch, z_dim]), seed=tf.stack([seed, 0]))
  eps = tf.random.stateless_normal(tf.stack([batch, condition_dim]), seed=tf.stack([seed, 1]))
  return z, eps


class ServingModule:
  """Tokenizer + text encoder + EMA generator behind string-in, image-out functions."""

  def __init__(self, generator, text_encoder, vocab_words, words_num):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    self.generator = generator
    self.text_encoder = text_encoder
    self.words_num = int(words_num)
    self.table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(
            tf.constant(vocab_words[1:]), tf.range(1, len(vocab_words), dtype=tf.int64)),
        default_value=-1)

  def tokenize(self, captions):
    """string [B] -> int32 [B, words_num]; fails (INVALID_ARGUMENT) on captions with no word."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    text = tf.strings.unicode_transcode(captions, "UTF-8", "UTF-8", errors="replace",
                                        replacement_char=0xFFFD)
    text = tf.strings.regex_replace(text, "\ufffd\ufffd", " ")
    text = tf.strings.lower(text, encoding="utf-8")
    text = tf.strings.regex_replace(text, r"[^\pL\pN_]+", " ")
    text = tf.strings.regex_replace(text, r"[^\x00-\x7f]", "")
    ids = self.table.lookup(tf.strings.split(text))
    ids = tf.ragged.boolean_mask(ids, ids > 0)[:, :self.words_num]
    bad = tf.where(tf.equal(ids.row_lengths(), 0))
    check = tf.debugging.Assert(
        tf.equal(tf.size(bad), 0),
        ["caption(s) without any vocabulary word (empty, punctuation only or only unknown "
         "words) at index:", tf.reshape(bad, [-1])], summarize=16)
    with tf.control_dependencies([check]):
      return tf.cast(ids.to_tensor(0, shape=[None, self.words_num]), tf.int32)

  def run(self, captions, seed):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tokens = self.tokenize(captions)
    n = tf.shape(tokens)[0]
    # An empty request runs one placeholder row and returns zero rows.
    feed = tf.cond(n > 0, lambda: tokens, lambda: tf.ones([1, self.words_num], tf.int32))
    words, sentence = self.text_encoder(feed, training=False)
    z, eps = noise(tf.shape(feed)[0], seed, self.generator.z_dim, self.generator.condition_dim)
    images = self.generator(words, sentence, tf.not_equal(feed, 0), z, eps,
                            training=False)["images"]
    images = [img[:n] for img in images]
    last = tf.cast(tf.clip_by_value(images[-1] * 127.5 + 127.5, 0.0, 255.0), tf.uint8)
    png = tf.map_fn(tf.io.encode_png, last, fn_output_signature=tf.string)
    return tokens, images, {"images": last, "images_bytes": png}

  def serving_default(self, captions):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return self.run(captions, tf.constant(0, tf.int64))[2]

  def generate(self, captions, seed):
    return self.run(captions, seed)[2]

  def generate_png(self, captions, seed):
    return {"images_bytes": self.run(captions, seed)[2]["images_bytes"]}

  def generate_stages(self, captions, seed):
    tokens, images, out = self.run(captions, seed)
    out = dict(out, tokens=tokens)
    for img in images:
      out[f"stage_{img.shape[1]}"] = img
    return out


def export(run_dir, output, step=None, damsm_dir=None, data_dir=None, words_num=None,
           overwrite=False):
  """Writes the SavedModel to `output` (`.../<name>/<version>`); returns the module."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  if not re.fullmatch(r"\d+", os.path.basename(os.path.normpath(output))):
    raise ValueError(f"--output must end in a numeric version folder, as TF Serving expects "
                     f"(e.g. saved_models/cub/1), got {output}")
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"{output} already exists; choose a new version or pass --overwrite")
  generator, text_encoder, vocab, record = load_run(run_dir, step, damsm_dir, data_dir)
  words_num = words_num or datasets.DATASETS[record["data"]["dataset"]].words_num_eval
  module = ServingModule(generator, text_encoder, vocab.words, words_num)
  import keras  # pylint: disable=g-import-not-at-top
  archive = keras.export.ExportArchive()
  archive.track(generator)
  archive.track(text_encoder)
  archive.track(module.table)
  captions = tf.TensorSpec([None], tf.string, name="captions")
  seed = tf.TensorSpec([], tf.int64, name="seed")
  archive.add_endpoint("serving_default", module.serving_default, input_signature=[captions])
  archive.add_endpoint("generate", module.generate, input_signature=[captions, seed])
  archive.add_endpoint("generate_png", module.generate_png, input_signature=[captions, seed])
  archive.add_endpoint("generate_stages", module.generate_stages,
                       input_signature=[captions, seed])
  tmp = os.path.join(os.path.dirname(os.path.abspath(output)),
                     f".{os.path.basename(os.path.normpath(output))}.tmp")
  shutil.rmtree(tmp, ignore_errors=True)
  os.makedirs(os.path.dirname(os.path.abspath(output)), exist_ok=True)
  archive.write_out(tmp, verbose=False)
  if os.path.exists(output):
    shutil.rmtree(output)
  os.replace(tmp, output)
  return module


def main(argv):
  del argv
  try:
    if not FLAGS.run_dir:
      raise ValueError("--run_dir is not set")
    export(FLAGS.run_dir, FLAGS.output, FLAGS.step, FLAGS.damsm_dir, FLAGS.data_dir,
           FLAGS.serving_words_num, FLAGS.overwrite)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    sys.exit(f"error: {e}")
  print(f"exported SavedModel to {os.path.abspath(FLAGS.output)} (signatures: serving_default, "
        "generate, generate_png, generate_stages)")


if __name__ == "__main__":
  # --run_dir (the training run), --damsm_dir and --data_dir (only if they moved since
  # training; the run's config.json records them) come from msmt_tf.config.
  flags.DEFINE_string("output", None, "saved_models/<name>/<version>", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_integer("serving_words_num", None, "Words kept per caption (default: the "
                       "dataset's evaluation length, 25 birds/shapes, 20 coco).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing version folder.")
  app.run(main)
