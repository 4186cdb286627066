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

Memory: every signature generates in chunks of `--serving_chunk` captions (default 8), so a
request's working memory is that of one chunk whatever its size, and refuses (INVALID_ARGUMENT,
naming the limit) a request of more than `--max_batch` captions (default 64), the bound on
its outputs. The noise of the whole request is drawn first, so the images do not depend on the
chunk size (except with the DM-GAN word-mask quirk, where an image depends on its batch-mates)
up to float rounding: another batch size sums in another order, so an exported PNG may differ
in a pixel by 1 of 255. One export gives the same bytes for the same captions and seed.
"""

import json
import os
import re
import shutil
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from msmt_tf import config  # pylint: disable=g-import-not-at-top,unused-import  (--run_dir etc.)

__all__ = ["ServingModule", "noise", "export"]

FLAGS = flags.FLAGS


def noise(batch, seed, z_dim, condition_dim):
  """The (z, CA eps) the SavedModel draws for `batch` captions and `seed` (stateless)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  seed = tf.cast(seed, tf.int64)
  z = tf.random.stateless_normal(tf.stack([batch, z_dim]), seed=tf.stack([seed, 0]))
  eps = tf.random.stateless_normal(tf.stack([batch, condition_dim]), seed=tf.stack([seed, 1]))
  return z, eps


MAX_BATCH = 64
CHUNK = 8


class ServingModule:
  """Tokenizer + text encoder + EMA generator behind string-in, image-out functions.

  Args:
    generator, text_encoder: the built EMA generator and DAMSM text encoder.
    vocab_words: the vocabulary (index 0 = padding).
    words_num: words kept per caption.
    max_batch: the most captions one request may hold (more: INVALID_ARGUMENT).
    chunk: captions generated at once (bounds a request's working memory).
  """

  def __init__(self, generator, text_encoder, vocab_words, words_num, max_batch=MAX_BATCH,
               chunk=CHUNK):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if max_batch < 1 or chunk < 1:
      raise ValueError(f"--max_batch and --serving_chunk must be >= 1, got {max_batch} and "
                       f"{chunk}")
    self.generator = generator
    self.text_encoder = text_encoder
    self.words_num = int(words_num)
    self.max_batch = int(max_batch)
    self.chunk = int(min(chunk, max_batch))
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
    limit = tf.debugging.assert_less_equal(
        tf.size(captions), self.max_batch,
        message=f"too many captions in one request: the limit is max_batch={self.max_batch} "
                "(set at export with --max_batch); split the request")
    with tf.control_dependencies([limit]):
      tokens = self.tokenize(captions)
    n = tf.shape(tokens)[0]
    # The whole request's noise first: the images do not depend on the chunking (to rounding).
    z, eps = noise(n, seed, self.generator.z_dim, self.generator.condition_dim)
    sizes = [64 * 2 ** k for k in range(self.generator.num_stages)]
    chunk = self.chunk

    def body(i, arrays):
      lo = i * chunk
      hi = tf.minimum(lo + chunk, n)
      part = tokens[lo:hi]
      words, sentence = self.text_encoder(part, training=False)
      out = self.generator(words, sentence, tf.not_equal(part, 0), z[lo:hi], eps[lo:hi],
                           training=False)["images"]
      return i + 1, [a.write(i, tf.cast(img, tf.float32)) for a, img in zip(arrays, out)]

    arrays = [tf.TensorArray(tf.float32, size=0, dynamic_size=True, infer_shape=False,
                             element_shape=tf.TensorShape([None, s, s, 3])) for s in sizes]
    # One chunk at a time (parallel_iterations=1): memory is that of one chunk.
    _, arrays = tf.while_loop(lambda i, _: i * chunk < n, body, (tf.constant(0), arrays),
                              parallel_iterations=1)
    images = [tf.ensure_shape(a.concat(), [None, s, s, 3]) for a, s in zip(arrays, sizes)]
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
           overwrite=False, max_batch=MAX_BATCH, chunk=CHUNK):
  """Writes the SavedModel to `output` (`.../<name>/<version>`); returns the module."""
  import keras  # pylint: disable=g-import-not-at-top
  if keras.backend.backend() != "tensorflow":
    raise ValueError(f"export writes a TensorFlow SavedModel, and KERAS_BACKEND is "
                     f"{keras.backend.backend()!r}: run it with KERAS_BACKEND=tensorflow (the "
                     "default); a run trained under JAX exports the same way")
  if max_batch < 1 or chunk < 1:
    raise ValueError(f"--max_batch and --serving_chunk must be >= 1, got {max_batch} and "
                     f"{chunk}")
  if chunk > max_batch:
    raise ValueError(f"--serving_chunk {chunk} is larger than --max_batch {max_batch}: a chunk "
                     "never holds more captions than a request; lower it to at most "
                     f"{max_batch}")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  if not re.fullmatch(r"\d+", os.path.basename(os.path.normpath(output))):
    raise ValueError(f"--output must end in a numeric version folder, as TF Serving expects "
                     f"(e.g. saved_models/cub/1), got {output}")
  if os.path.exists(output) and not overwrite:
    raise FileExistsError(f"{output} already exists; choose a new version or pass --overwrite")
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  generator, text_encoder, vocab, record = runs.load_run(run_dir, step, damsm_dir, data_dir)
  words_num = words_num or datasets.dataset_spec(
      data_dir or record["data"]["data_dir"], record["data"]["dataset"]).words_num_eval
  module = ServingModule(generator, text_encoder, vocab.words, words_num, max_batch, chunk)
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
  from msmt_tf import distribute  # pylint: disable=g-import-not-at-top
  distribute.note_single_device("export")
  import logging  # pylint: disable=g-import-not-at-top
  # tf.saved_model.save's "INFO:tensorflow:Assets written to: ..." (the last line says where).
  logging.getLogger("tensorflow").setLevel(logging.WARNING)
  try:
    if not FLAGS.run_dir:
      raise ValueError("--run_dir is not set")
    # The default chunk follows a smaller --max_batch; a chunk given is checked against it.
    chunk = (FLAGS.serving_chunk if FLAGS["serving_chunk"].present
             else min(FLAGS.serving_chunk, max(FLAGS.max_batch, 1)))
    module = export(FLAGS.run_dir, FLAGS.output, FLAGS.step, FLAGS.damsm_dir, FLAGS.data_dir,
                    FLAGS.serving_words_num, FLAGS.overwrite, FLAGS.max_batch, chunk)
  except (FileNotFoundError, FileExistsError, ValueError) as e:
    sys.exit(f"error: {e}")
  if module.generator.batch_coupled:
    print(f"note: this generator uses DM-GAN's official_repeat word mask (--dmgan_word_mask, as "
          "the released models were trained): an image depends on the other captions of its "
          f"chunk of {module.chunk} (--serving_chunk) in a request; the same captions, order and "
          "seed give the same bytes only from an export of the same --serving_chunk", flush=True)
  print(f"exported SavedModel to {os.path.abspath(FLAGS.output)} (signatures: serving_default, "
        f"generate, generate_png, generate_stages; at most {FLAGS.max_batch} captions a request, "
        f"generated {module.chunk} at a time)")


if __name__ == "__main__":
  # --run_dir (the training run), --damsm_dir and --data_dir (only if they moved since
  # training; the run's config.json records them) come from msmt_tf.config.
  flags.DEFINE_string("output", None, "saved_models/<name>/<version>", required=True)
  flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
  flags.DEFINE_integer("serving_words_num", None, "Words kept per caption (default: the "
                       "dataset's evaluation length, 25 birds/shapes, 20 coco).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing version folder.")
  flags.DEFINE_integer("max_batch", MAX_BATCH, "Most captions one request may hold; a larger "
                       "request fails with INVALID_ARGUMENT naming this limit.")
  flags.DEFINE_integer("serving_chunk", CHUNK, "Captions generated at once inside a request "
                       "(default 8, or --max_batch if smaller; bounds its working memory; the "
                       "same images whatever the value, to "
                       "float rounding, except for a generator with DM-GAN's official_repeat "
                       "word mask, whose images depend on the other captions of their chunk).")
  app.run(main)
