r"""Generates the evaluation images of a training run (paper §4; DM-GAN's `sampling` protocol).

    python -m msmt_tf.sample --run_dir RUN --num_images 30000 --split test --out DIR \
        [--step N] [--sample_seed 100] [--sample_words_num 25] [--sample_batch_size 50]

Passes over the split until `--num_images` images exist: each pass visits the split's images in
a seeded random order; each visit picks one of the image's captions at random, keeps at most the
evaluation `words_num` words (AttnGAN's random order-preserving drop; 25 for birds, 20 for coco,
a folder dataset's `words_num_eval`; `--sample_words_num` sets another; the training flag
`--words_num`, e.g. from a run's flagfile, is not used, as in evaluation.metric_main),
draws one z and one CA noise vector, and the EMA generator (inference mode) makes the last
stage's image, saved as `DIR/<index>.png` (uint8 from [-1, 1] as DM-GAN does: x * 127.5 + 127.5,
clipped and truncated). Image i depends only on (seed, i), so the command is resumable: images
already in DIR are skipped. Image i is made with images B * (i // B) .. B * (i // B) + B - 1
(B = --sample_batch_size, recorded in the manifest; those past --num_images made and dropped),
whatever --num_images or a resume, so a resumed folder is byte-identical to an uninterrupted
one (with another B the rest may differ by float rounding: said). A generator with DM-GAN's
`official_repeat` word mask (an imported DM-GAN model) makes an image depend on the other
captions of its batch: a resume with another B is then refused, naming the folder's.
`DIR/manifest.json` records the run, checkpoint step, seed, the caption source (dataset folder,
kind, split and a SHA-256 of the split's keys, captions and class ids) and, per image, the
dataset index, caption index, token ids and class id (R-precision reads it), and a SHA-256 of
the generator's and text encoder's weights. A DIR whose manifest names another setting, caption
source or weights (a run imported again with --overwrite) is refused (choose another --out), and
so is a non-empty DIR without a manifest: its files are never counted as generated nor touched.
A DIR inside the run's folder (evaluation.metric_main's `RUN/eval/...`) follows the run when it
is moved: its images count as the run's.
"""

import hashlib
import itertools
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from msmt_tf import config  # pylint: disable=g-import-not-at-top,unused-import (--run_dir, ...)
from msmt_tf import progress as progress_lib
from msmt_tf import stopping

__all__ = ["plan", "generate", "read_manifest", "caption_source", "caption_conflicts"]

MANIFEST = "manifest.json"


def drop_words(ids, words_num, rng):
  """At most `words_num` ids, chosen uniformly without replacement, order kept."""
  ids = list(ids)
  if len(ids) <= words_num:
    return ids
  keep = np.sort(rng.choice(len(ids), words_num, replace=False))
  return [ids[i] for i in keep]


def plan(split_data, num_images, words_num, seed):
  """Per output image: (dataset index, caption index, token ids, class id); a pure function of
  its arguments."""
  n = split_data.num_images
  entries, orders = [], {}
  for i in range(num_images):
    p, pos = divmod(i, n)
    if p not in orders:
      orders = {p: np.random.default_rng([seed, 1, p]).permutation(n)}
    order = orders[p]
    index = int(order[pos])
    rng = np.random.default_rng([seed, 2, i])
    caps = split_data.captions[index]
    c = int(rng.integers(len(caps)))
    entries.append({"index": index, "caption": c,
                    "tokens": [int(t) for t in drop_words(caps[c], words_num, rng)],
                    "class_id": int(split_data.class_ids[index])})
  return entries


def noise_for(i, seed, z_dim, condition_dim):
  rng = np.random.default_rng([seed, 3, i])
  return (rng.standard_normal(z_dim).astype(np.float32),
          rng.standard_normal(condition_dim).astype(np.float32))


def image_name(i):
  return f"{i:06d}.png"


def images_in(out, num_images):
  """How many of the images 0 .. num_images - 1 are in `out`."""
  return sum(os.path.isfile(os.path.join(out, image_name(i))) for i in range(num_images))


def read_manifest(folder):
  path = os.path.join(folder, MANIFEST)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: make the images with python -m msmt_tf.sample")
  with open(path) as f:
    return json.load(f)


# What a folder's images depend on besides their caption source; a resumed folder must match.
SETTING_KEYS = ("run_dir", "step", "split", "seed", "words_num", "dataset")


def caption_source(split_data):
  """Where the captions of sampled images come from: the dataset folder, its kind, the split and
  a SHA-256 of the split's keys, captions (word ids) and class ids (a rebuilt dataset differs)."""
  digest = hashlib.sha256(json.dumps(
      [list(split_data.keys), split_data.captions,
       [int(c) for c in split_data.class_ids]]).encode("utf8")).hexdigest()
  return {"data_dir": split_data.data_dir, "dataset": split_data.dataset,
          "split": split_data.split, "captions_sha256": digest}


def caption_conflicts(old, split_data, words_num, seed, source=None):
  """How the manifest `old` of a folder differs in caption source from sampling `split_data`
  now: a list of 'what: before vs now' strings, empty when its images fit. A manifest written
  before the captions' SHA-256 was recorded is compared by its per-image plan."""
  source = source or caption_source(split_data)
  found = []
  before = old.get("data_dir")
  # The captions' hash says what the images were made from, wherever the dataset now is (a
  # moved or copied dataset is the same); without it, the folder is the evidence.
  if "captions_sha256" not in old and (
      before is None or os.path.realpath(before) != os.path.realpath(source["data_dir"])):
    found.append(f"data_dir {before!r} vs now {source['data_dir']!r}")
  for key in ("dataset", "split"):
    if old.get(key) != source[key]:
      found.append(f"{key} {old.get(key)!r} vs now {source[key]!r}")
  if "captions_sha256" in old:
    if old["captions_sha256"] != source["captions_sha256"]:
      found.append(f"captions_sha256 {old['captions_sha256'][:12]}... vs now "
                   f"{source['captions_sha256'][:12]}... (the dataset was rebuilt or changed)")
  elif old.get("words_num") == words_num and old.get("seed") == seed:
    images = old.get("images") or []
    if images != plan(split_data, len(images), words_num, seed):
      found.append("its images' captions differ from the split's now (the dataset was rebuilt "
                   "or changed)")
  return found


def _foreign_files(folder):
  """Entries of `folder`, less hidden ones (.DS_Store, the temporary file of an interrupted
  manifest write) and Windows' Thumbs.db / desktop.ini."""
  return sorted(f for f in os.listdir(folder)
                if not f.startswith(".") and f.lower() not in ("thumbs.db", "desktop.ini"))


def _compiled(generator, text_encoder):
  """A compiled `(tokens, z, eps) -> last image` (the text encoder and the generator) on the
  current backend."""
  import keras  # pylint: disable=g-import-not-at-top

  def last(tokens, z, eps):
    words, sentence = text_encoder(tokens, training=False)
    return generator(words, sentence, tokens != 0, z, eps, training=False)["images"][-1]

  if keras.backend.backend() == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return tf.function(last, reduce_retracing=True, autograph=False)
  if keras.backend.backend() == "jax":
    from msmt_tf.models.stateless import jit_over_variables  # pylint: disable=g-import-not-at-top
    return jit_over_variables(last, text_encoder.variables + generator.variables)
  return last


def _inside(path, folder):
  """Whether `path` lies inside `folder`, as written or with links resolved (RUN/eval may be a
  link to scratch storage)."""
  return any(os.path.commonpath([resolve(path), resolve(folder)]) == resolve(folder)
             for resolve in (os.path.abspath, os.path.realpath))


def generate(run_dir, out, num_images, split="test", step=None, seed=100, words_num=None,
             batch_size=50, damsm_dir=None, data_dir=None, progress=True, loaded=None):
  """Writes the images (skipping existing ones) and the manifest; returns the manifest.
  `loaded`: what `runs.load_run(run_dir, step, damsm_dir, data_dir)` returned, used instead of
  loading the run again (evaluation.metric_main, one load for all its metrics)."""
  import keras  # pylint: disable=g-import-not-at-top
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  from msmt_tf import fileio  # pylint: disable=g-import-not-at-top
  from msmt_tf import image_utils  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if num_images < 1:
    raise ValueError(f"--num_images must be >= 1, got {num_images}")
  if batch_size < 1:
    raise ValueError(f"--sample_batch_size must be >= 1, got {batch_size}")
  path = os.path.join(out, MANIFEST)
  if os.path.exists(out) and not os.path.isdir(out):
    raise ValueError(f"--out {out} is a file, not a folder")
  foreign = [] if os.path.isfile(path) or not os.path.isdir(out) else _foreign_files(out)
  if foreign:
    raise ValueError(
        f"{out} is not empty ({len(foreign)} entries, e.g. {', '.join(foreign[:3])}) but has no "
        f"{MANIFEST} of a msmt_tf.sample run: its files would be taken for generated images; "
        f"choose an empty or new --out (nothing in {out} was changed)")
  generator, text_encoder, _, record = loaded or runs.load_run(run_dir, step, damsm_dir, data_dir)
  step = record["step"]  # without --step: the newest checkpoint that reads
  dataset = record["data"]["dataset"]
  data = datasets.load_split(data_dir or record["data"]["data_dir"], dataset, split)
  # The evaluation length, not the training flag --words_num (see the module doc).
  words_num = words_num or data.spec.words_num_eval
  source = caption_source(data)
  coupled = getattr(generator, "batch_coupled", False)
  manifest = {"run_dir": os.path.abspath(run_dir), "step": int(step), "split": split,
              "seed": seed, "words_num": words_num, "num_images": num_images,
              "dataset": dataset, "data_dir": data.data_dir,
              "captions_sha256": source["captions_sha256"],
              "damsm_dir": damsm_dir or record.get("damsm_dir"),
              # The weights that made the images: a run re-imported with --overwrite, or DAMSM
              # encoders replaced, keep the run's folder and step but not its images.
              "weights_sha256": runs.weights_sha256(text_encoder, generator)}
  manifest["batch_size"] = int(batch_size)
  todo = [i for i in range(num_images) if not os.path.isfile(os.path.join(out, image_name(i)))]
  if os.path.isfile(path):
    old = read_manifest(out)
    _check_folder(out, old, manifest, run_dir, data, source, coupled, making=bool(todo))
    if not todo:  # nothing made now: the batch size the images were made with stays recorded
      manifest["batch_size"] = old.get("batch_size")
  os.makedirs(out, exist_ok=True)
  # Image i is made in the batch of images B * (i // B) ... B * (i // B) + B - 1 (B = batch_size;
  # those past num_images made and dropped), whatever num_images and whichever images a resume
  # still needs: the same batch, the same kernels' rounding, the same bytes (and, with
  # `coupled`, the same batch-mates).
  entries = plan(data, -(-num_images // batch_size) * batch_size, words_num, seed)
  manifest["images"] = entries[:num_images]
  fileio.atomic_write_bytes(path, json.dumps(manifest).encode())
  batches = [(list(range(k * batch_size, (k + 1) * batch_size)), list(wanted))
             for k, wanted in itertools.groupby(todo, key=lambda i: i // batch_size)]
  run = _compiled(generator, text_encoder)
  bar = progress_lib.bar(num_images, unit_name="image") if progress else None
  done = num_images - len(todo)
  if bar:
    bar.update(done)
  for rows, wanted in batches:
    tokens = np.zeros((batch_size, words_num), np.int32)
    z = np.zeros((batch_size, generator.z_dim), np.float32)
    eps = np.zeros((batch_size, generator.condition_dim), np.float32)
    for r, i in enumerate(rows):
      ids = entries[i]["tokens"]
      tokens[r, :len(ids)] = ids
      z[r], eps[r] = noise_for(i, seed, generator.z_dim, generator.condition_dim)
    images = image_utils.to_uint8(keras.ops.convert_to_numpy(run(tokens, z, eps)))
    for i in wanted:
      image_utils.save_png(Image.fromarray(images[i - rows[0]]), os.path.join(out, image_name(i)))
    done += len(wanted)
    if bar:
      bar.update(done)
  return manifest


def _check_folder(out, old, manifest, run_dir, data, source, coupled, making):
  """Raises unless the images in `out` (its manifest `old`) are those `manifest` would make:
  the same settings, captions, weights and, where images are to be made (`making`) by a
  batch-coupled generator (`coupled`), batch size; another batch size is only said for other
  generators (the images then differ from an uninterrupted run's by float rounding at most).
  Nothing in `out` is changed."""
  keep = f"(nothing in {out} was changed)"
  diff = [k for k in SETTING_KEYS if old.get(k) != manifest[k]]
  if diff and diff[0] == "run_dir" and _inside(out, run_dir):
    # A folder inside the run (metric_main's RUN/eval/...) moved with it: the same run.
    diff = diff[1:]
  if diff:
    hint = (f"; to continue it, pass --sample_words_num={old['words_num']}"
            if diff == ["words_num"] and old.get("words_num") else "")
    raise ValueError(f"{out} holds images of another setting ("
                     + ", ".join(f"{k} {old.get(k)!r} vs now {manifest[k]!r}" for k in diff)
                     + f"); choose another --out {keep}{hint}")
  diff = caption_conflicts(old, data, manifest["words_num"], manifest["seed"], source)
  if diff:
    raise ValueError(f"{out} holds images generated from other captions ({'; '.join(diff)}); "
                     f"choose another --out {keep}")
  if old.get("weights_sha256", manifest["weights_sha256"]) != manifest["weights_sha256"]:
    # Folders written before 2026-11-29 record no weights: not checked.
    raise ValueError(
        f"{out} holds images of other weights than step {manifest['step']} of {run_dir} has now "
        f"(SHA-256 of the generator and text encoder {old['weights_sha256'][:12]}... then, "
        f"{manifest['weights_sha256'][:12]}... now: the run was trained or imported again "
        "(import_torch --overwrite) since, or its DAMSM text encoder replaced): its images are "
        f"not this model's; choose another --out, or remove {out} to make them again {keep}")
  if not making:  # a complete folder: read as it is, whatever batch size made it
    return
  if not coupled and old.get("batch_size", manifest["batch_size"]) != manifest["batch_size"]:
    print(f"note: the images in {out} were made in batches of {old['batch_size']}, now "
          f"{manifest['batch_size']} (--sample_batch_size): the rest may differ from an "
          "uninterrupted run's by float rounding (a pixel by 1 of 255); pass "
          f"--sample_batch_size={old['batch_size']} for the same bytes", flush=True)
  elif coupled and old.get("batch_size") != manifest["batch_size"]:
    why = (f"they were made in batches of {old['batch_size']}; to continue, pass "
           f"--sample_batch_size={old['batch_size']}" if old.get("batch_size") else
           "they were made before such images were batched by index (2026-11-29), so some may "
           "depend on which images were missing; remove the folder to make them again")
    raise ValueError(
        f"{out}: this run's generator uses DM-GAN's official_repeat word mask, where an image "
        f"depends on the other captions of its batch, and {why}; or choose another --out {keep}")


# --run_dir, --data_dir, --damsm_dir (default: the ones the run recorded) are msmt_tf.config's
# flags; so is --words_num, the training caption length, which sampling does not use: a run's or
# dataset's flagfile sets it, and absl cannot tell a flagfile's value from a typed one.
FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output folder of PNGs (resumable).")
flags.DEFINE_integer("num_images", 30000, "Images to generate (the paper: 30,000).")
flags.DEFINE_enum("split", "test", ["test", "train"], "Captions of this split.")
flags.DEFINE_integer("step", None, "Checkpoint step (default: the newest).")
flags.DEFINE_integer("sample_seed", 100, "Sampling seed (DM-GAN's evaluation seed is 100).")
flags.DEFINE_integer("sample_batch_size", 50, "Images per generator call (image i is made "
                     "with images B*(i//B) .. B*(i//B)+B-1; recorded in the folder's manifest).",
                     lower_bound=1)
flags.DEFINE_integer("sample_words_num", None,
                     "Words kept per caption (default: the dataset's evaluation length, "
                     "words_num_eval: 25 birds/shapes, 20 coco, a folder dataset's from its "
                     "dataset_spec.json; what evaluation.metric_main always uses). The training "
                     "flag --words_num, e.g. from a flagfile, is ignored for sampling.",
                     lower_bound=1)


def main(argv):
  del argv
  from msmt_tf import distribute  # pylint: disable=g-import-not-at-top
  distribute.note_single_device("sample")
  from msmt_tf.data.errors import DatasetError  # pylint: disable=g-import-not-at-top
  if not FLAGS.run_dir or not FLAGS.out:
    sys.exit("error: set --run_dir and --out")
  if FLAGS.words_num is not None and FLAGS.sample_words_num is None:
    print(f"note: --words_num={FLAGS.words_num} (the training caption length, e.g. from a "
          "flagfile) is not used for sampling: captions keep the dataset's evaluation length, as "
          "in evaluation.metric_main; set --sample_words_num to choose another", flush=True)
  try:
    with stopping.sigterm_as_interrupt():
      m = generate(FLAGS.run_dir, FLAGS.out, FLAGS.num_images, FLAGS.split, FLAGS.step,
                   FLAGS.sample_seed, FLAGS.sample_words_num, FLAGS.sample_batch_size,
                   FLAGS.damsm_dir, FLAGS.data_dir)
  except (FileNotFoundError, ValueError, DatasetError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt as e:
    done = images_in(FLAGS.out, FLAGS.num_images)
    stopping.exit_stopped(e, f"{stopping.how_stopped(e)}: {done} of {FLAGS.num_images} images "
                          f"are in {FLAGS.out}; the same command continues where it stopped")
  print(f"{m['num_images']} images of {m['run_dir']} step {m['step']} in {FLAGS.out} (captions "
        f"of at most {m['words_num']} words)")


if __name__ == "__main__":
  app.run(main)
