r"""Inception Score, official variant (openai/improved-gan).

    python -m evaluation.inception_score --images DIR [--is_source graph|hub] \
        [--inception_graph PB | --inception_hub DIR] [--is_splits 10]

p(y|x) = softmax of the 1008 logits `pool_3 @ softmax/weights` (no bias, as improved-gan); the
images are split in order into 10 parts (rows [i*N//10, (i+1)*N//10)); per part
IS = exp(mean_x KL(p(y|x) || p(y))) with p(y) the part's mean, computed in float64 from
log-softmax (equal to TF-GAN's `classifier_score_from_logits` per part, tested); the result is
the mean and standard deviation (ddof 0) over the parts.

CUB numbers in the literature (AttnGAN, DM-GAN) are another computation, not reproduced here:
StackGAN's `inception_score_bird.py` (DM-GAN's `eval/IS/bird`) runs a CUB-finetuned slim checkpoint
on images scaled to [-1, 1] after scipy's bilinear resize, takes the softmax of its 50 class logits
(`--num_classes 50`, bias included, the background class sliced off), shuffles the images and drops
the last partial batch of 64. Run that script (TensorFlow 1) on the folder `msmt_tf.sample` writes
for a number beside theirs. A classifier given here (`--is_source=graph` with a frozen graph of the
same `ExpandDims` / `pool_3` / `softmax/logits/MatMul` names, or `hub` with a SavedModel returning
`{'pool_3', 'logits'}`) is scored with the pipeline above instead.
"""

if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

import numpy as np

__all__ = ["inception_score", "small_sample_warning", "split_scores"]


def _log_softmax(logits):
  x = np.asarray(logits, np.float64)
  x = x - x.max(axis=1, keepdims=True)
  return x - np.log(np.exp(x).sum(axis=1, keepdims=True))


def _score_numpy(logits):
  logp = _log_softmax(logits)
  p = np.exp(logp)
  q = p.mean(axis=0)
  with np.errstate(divide="ignore", invalid="ignore"):
    terms = np.where(p > 0, p * (logp - np.log(q)[None]), 0.0)  # 0 log 0 = 0
  return float(np.exp(np.mean(np.sum(terms, axis=1))))


def split_scores(logits, splits=10, use_tfgan=False):
  """Per-split scores of `[N, C]` logits, splits taken in order.

  The default float64 numpy route takes 0 * log 0 = 0, so probabilities that underflow to 0
  (logits far apart) stay finite; `use_tfgan=True` uses TF-GAN's `classifier_score_from_logits`
  per split instead (the same value otherwise; NaN when some class has probability exactly 0
  in a whole split).
  """
  logits = np.asarray(logits, np.float64)
  n = len(logits)
  if splits < 1:
    raise ValueError(f"--is_splits must be >= 1, got {splits}")
  if n < splits:
    raise ValueError(f"{n} images cannot make {splits} splits")
  if use_tfgan:
    from evaluation import _tfgan  # pylint: disable=g-import-not-at-top
    score = _tfgan.classifier_score_from_logits
  else:
    score = _score_numpy
  return [score(logits[i * n // splits:(i + 1) * n // splits]) for i in range(splits)]


def inception_score(logits, splits=10, use_tfgan=False):
  """(mean, std) over `splits` parts."""
  scores = split_scores(logits, splits, use_tfgan)
  return float(np.mean(scores)), float(np.std(scores))


def small_sample_warning(num_images, splits, classes):
  """The warning for an Inception Score whose splits hold fewer images than the classifier has
  classes (1008 for the official network), or None. A split of k images scores at most k
  (exp of a mutual information between y and k equally likely images) and estimates its
  marginal p(y) from fewer images than classes: the score is biased low."""
  per_split = num_images // max(splits, 1)
  if per_split >= classes:
    return None
  return (f"IS from {num_images} images in {splits} splits ({per_split} per split, fewer than "
          f"the classifier's {classes} classes; a split of k images scores at most k): not "
          "comparable with published scores (the protocol: 30,000 images in 10 splits)")


def compute(extractor, images, batch_size=50, splits=10, progress=False):
  from evaluation import features  # pylint: disable=g-import-not-at-top
  _, logits = features.activations(extractor, images, batch_size, want_logits=True,
                                   progress=progress)
  mean, std = inception_score(logits, splits)
  result = {"is_mean": mean, "is_std": std, "num_images": len(logits), "splits": splits,
            "extractor": extractor.description, "verified": extractor.verified}
  warning = small_sample_warning(len(logits), splits, logits.shape[1])
  if warning:
    result["warning"] = warning
  return result


def format_result(name, result):
  from evaluation.features import unverified_tag  # pylint: disable=g-import-not-at-top
  return (f"{name}: {result['is_mean']:.4f} ± {result['is_std']:.4f} ({result['num_images']} "
          f"images, {result['splits']} splits; {result['extractor']})"
          f"{unverified_tag(result['verified'])}"
          + (f"; WARNING: {result['warning']}" if result.get("warning") else ""))


def main(argv):
  from evaluation import flags as eval_flags  # pylint: disable=g-import-not-at-top
  del argv
  f = eval_flags.FLAGS
  eval_flags.run_cli(("images",), lambda: format_result("IS", compute(
      eval_flags.is_extractor(), f.images, f.eval_batch_size, f.is_splits, True)))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  absl_flags.DEFINE_string("images", None, "Folder of generated images.")
  from evaluation import flags as _  # pylint: disable=g-import-not-at-top,unused-import
  app.run(main)
