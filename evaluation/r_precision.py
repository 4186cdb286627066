r"""R-precision (AttnGAN / DM-GAN protocol; metrics_spec §6, model_spec §7.2).

    python -m evaluation.r_precision --images DIR [--damsm_dir D] [--data_dir D]

For each generated image (made by `python -m msmt_tf.sample`, whose manifest gives its caption
and class): the DAMSM image encoder's global feature of the image, and DAMSM sentence
embeddings of 100 candidates: its own caption plus 99 captions of random images of *other*
classes (a random caption each). Cosine similarity; a hit when the true caption scores highest
(ties count as hits, as `torch.argmax` picks the first). The hit flags are shuffled (seeded) and
split into 10 folds; the result is the mean and standard deviation (ddof 0) of the fold means, in
percent.

Deliberate differences from DM-GAN's code, both documented in the result: images are read back
from the saved PNGs (DM-GAN scores the float images before quantisation), and folds have N // 10
images (DM-GAN's slice drops the last image of each fold). Each candidate caption is encoded once
with one word-drop draw when it is longer than `words_num` (DM-GAN redraws per use).
"""

if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

import os

import numpy as np

__all__ = ["hits_from_codes", "aggregate", "r_precision", "mismatched_candidates"]


def _normalize(x):
  x = np.asarray(x, np.float64)
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-8)


def hits_from_codes(image_codes, candidate_codes):
  """`[N, D]` image codes and `[N, K, D]` candidates (true caption first) -> bool hits `[N]`."""
  scores = np.einsum("nd,nkd->nk", _normalize(image_codes), _normalize(candidate_codes))
  return scores[:, 0] >= scores[:, 1:].max(axis=1)


def aggregate(hits, folds=10, seed=0):
  """(mean, std) in percent of the fold means of the shuffled hit flags."""
  hits = np.asarray(hits, np.float64)
  if len(hits) < folds:
    raise ValueError(f"{len(hits)} images cannot make {folds} folds")
  shuffled = hits[np.random.default_rng(seed).permutation(len(hits))]
  size = len(hits) // folds
  means = [shuffled[i * size:(i + 1) * size].mean() for i in range(folds)]
  return 100 * float(np.mean(means)), 100 * float(np.std(means))


def mismatched_candidates(class_ids, image_class, num, rng):
  """`num` dataset indices whose class differs from `image_class` (drawn with replacement)."""
  pool = np.flatnonzero(np.asarray(class_ids) != image_class)
  if not len(pool):
    raise ValueError(f"every image of the split has class {image_class}: no mismatched captions")
  return pool[rng.integers(len(pool), size=num)]


def _encode_captions(text_encoder, captions, words_num, seed, batch_size=500):
  """Sentence embeddings `[sum of captions, D]` and per-image offsets of every caption."""
  import keras  # pylint: disable=g-import-not-at-top
  from msmt_tf import sample  # pylint: disable=g-import-not-at-top
  flat, offsets = [], []
  for i, caps in enumerate(captions):
    offsets.append(len(flat))
    for j, c in enumerate(caps):
      flat.append(sample.drop_words(c, words_num, np.random.default_rng([seed, 4, i, j])))
  tokens = np.zeros((len(flat), words_num), np.int32)
  for r, ids in enumerate(flat):
    tokens[r, :len(ids)] = ids
  out = []
  for s in range(0, len(tokens), batch_size):
    _, sentence = text_encoder(tokens[s:s + batch_size], training=False)
    out.append(keras.ops.convert_to_numpy(sentence))
  return np.concatenate(out), np.asarray(offsets)


def load_encoders(damsm_dir):
  """(text encoder, image encoder) of `damsm_dir`; errors name the missing or wrong file."""
  from msmt_tf import config  # pylint: disable=g-import-not-at-top
  from msmt_tf.runs import load_damsm_encoder  # pylint: disable=g-import-not-at-top
  if not damsm_dir:
    raise FileNotFoundError("no DAMSM folder: pass --damsm_dir")
  text_path, image_path = config.damsm_paths(damsm_dir)
  return (load_damsm_encoder(text_path, "RNNTextEncoder"),
          load_damsm_encoder(image_path, "ImageEncoder"))


def r_precision(images_dir, damsm_dir=None, data_dir=None, num_candidates=100, folds=10, seed=0,
                batch_size=50, progress=False, encoders=None):
  """R-precision of the images of `msmt_tf.sample` in `images_dir`.

  `encoders`: the (text, image) DAMSM encoders of `damsm_dir`, when already loaded."""
  import keras  # pylint: disable=g-import-not-at-top
  from evaluation import features  # pylint: disable=g-import-not-at-top
  from msmt_tf import progress as progress_lib  # pylint: disable=g-import-not-at-top
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  from msmt_tf import sample  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  manifest = sample.read_manifest(images_dir)
  damsm_dir = damsm_dir or manifest.get("damsm_dir")
  text_encoder, image_encoder = encoders or load_encoders(damsm_dir)
  data = datasets.load_split(data_dir or manifest["data_dir"], manifest["dataset"],
                             manifest["split"])
  # Encoders of another vocabulary would read the captions' word numbers as other words.
  runs.check_damsm_vocabulary(damsm_dir, text_encoder, data.vocab, data.data_dir)
  # Each image is scored against captions of other classes drawn from `data`: images sampled
  # from other captions (another dataset, one rebuilt since) would be scored against the wrong
  # ones, and the number would look as valid as any.
  diff = sample.caption_conflicts(manifest, data, manifest["words_num"], manifest.get("seed"))
  if diff:
    raise ValueError(
        f"{images_dir} holds images generated from other captions than the {data.split} split "
        f"of {data.data_dir} ({'; '.join(diff)}): pass the --data_dir they were sampled from, "
        "or sample them again")
  entries = manifest["images"]
  files = [os.path.join(images_dir, sample.image_name(i)) for i in range(len(entries))]
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise FileNotFoundError(f"{len(missing)} of {len(files)} images missing in {images_dir} "
                            f"(first: {missing[0]}); finish them with python -m msmt_tf.sample")
  words_num = manifest["words_num"]
  bank, offsets = _encode_captions(text_encoder, data.captions, words_num, seed)
  counts = np.asarray([len(c) for c in data.captions])
  rng = np.random.default_rng([seed, 5])
  bar = progress_lib.bar(len(files), unit_name="image") if progress else None
  hits = []
  for s in range(0, len(files), batch_size):
    chunk = entries[s:s + batch_size]
    images = np.stack([features.load_image(f) for f in files[s:s + batch_size]])
    images = images.astype(np.float32) / 127.5 - 1.0
    _, codes = image_encoder(images, training=False)
    tokens = np.zeros((len(chunk), words_num), np.int32)
    for r, e in enumerate(chunk):
      tokens[r, :len(e["tokens"])] = e["tokens"]
    _, true_sent = text_encoder(tokens, training=False)
    cands = np.empty((len(chunk), num_candidates, bank.shape[1]))
    cands[:, 0] = keras.ops.convert_to_numpy(true_sent)
    for r, e in enumerate(chunk):
      idx = mismatched_candidates(data.class_ids, e["class_id"], num_candidates - 1, rng)
      cap = rng.integers(counts[idx])
      cands[r, 1:] = bank[offsets[idx] + cap]
    hits.append(hits_from_codes(keras.ops.convert_to_numpy(codes), cands))
    if bar:
      bar.update(min(s + batch_size, len(files)))
  hits = np.concatenate(hits)
  mean, std = aggregate(hits, folds, seed)
  result = {"r_precision_mean": mean, "r_precision_std": std, "num_images": int(len(hits)),
            "candidates": num_candidates, "folds": folds,
            "damsm_dir": os.path.abspath(damsm_dir), "damsm_encoders": _provenance(damsm_dir),
            "notes": "images read from PNG; folds of N//10; one word-drop draw per caption"}
  # Mismatched captions are drawn with replacement (AttnGAN); from a split with fewer captions
  # of other classes than candidates, they repeat and the choice is easier than 1 in 100.
  warning = few_candidates_warning(data, num_candidates, [e["class_id"] for e in entries])
  if warning:
    result["warning"] = warning
  return result


def few_candidates_warning(data, num_candidates=100, class_ids=None):
  """The warning for a split with fewer captions of other classes than the mismatched
  candidates, for images of `class_ids` (default: any class of the split), or None."""
  counts = np.asarray([len(c) for c in data.captions])
  classes, index = np.unique(np.asarray(data.class_ids), return_inverse=True)
  per_class = np.bincount(index, weights=counts)  # captions per class of the split
  used = np.arange(len(classes)) if class_ids is None else np.searchsorted(classes, class_ids)
  available = int(counts.sum() - per_class[used].max())
  if available >= num_candidates - 1:
    return None
  return (f"the {data.split} split has only {available} caption(s) of other classes for some "
          f"images, fewer than the {num_candidates - 1} mismatched candidates: they repeat, so "
          "this R-precision is easier than the protocol's and not comparable with published "
          "numbers")


def _provenance(damsm_dir):
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  return runs.damsm_provenance(damsm_dir)


def format_result(name, result):
  return (f"{name}: {result['r_precision_mean']:.2f} ± {result['r_precision_std']:.2f} % "
          f"({result['num_images']} images, 1 true + {result['candidates'] - 1} mismatched "
          f"captions, {result['folds']} folds; DAMSM {result['damsm_dir']}: "
          f"{result.get('damsm_encoders', '?')})"
          + (f"; WARNING: {result['warning']}" if result.get("warning") else ""))


def main(argv):
  from evaluation import flags as eval_flags  # pylint: disable=g-import-not-at-top
  from msmt_tf.data.errors import DatasetError  # pylint: disable=g-import-not-at-top
  del argv
  f = eval_flags.FLAGS
  eval_flags.run_cli(("images",), lambda: format_result("R-precision", r_precision(
      f.images, f.damsm_dir, f.data_dir, progress=True)),
                     (FileNotFoundError, ValueError, DatasetError))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  from msmt_tf import config as _  # pylint: disable=g-import-not-at-top (--damsm_dir, --data_dir)
  absl_flags.DEFINE_string("images", None, "Folder made by python -m msmt_tf.sample.")
  app.run(main)
