"""absl flags shared by the evaluation commands (which Inception copy, where its files are)."""

import sys

from absl import flags

FLAGS = flags.FLAGS

flags.DEFINE_enum("inception_source", "keras", ["keras", "graph", "hub", "torchvision"],
                  "Copy of the official 2015-12-05 Inception: keras (the Keras 3 port, weights "
                  "from `python -m evaluation.inception convert`), graph (frozen "
                  "classify_image_graph_def.pb), hub (TF-GAN's TF-Hub module); or torchvision: "
                  "NOT the official network, torchvision's ImageNet Inception-v3 with DM-GAN's "
                  "eval/FID preprocessing (the old 'PyTorch FID'; --torchvision_inception).")
flags.DEFINE_string("fid_inception_dir", None,
                    "Keras port weights folder (default $MSMT_FID_INCEPTION_DIR or "
                    "~/.cache/msmt_tf/fid_inception; `bash .ci/fid_weights` writes them to "
                    ".cache/fid_inception of the repository).")
flags.DEFINE_string("inception_graph", None, "Path of classify_image_graph_def.pb.")
flags.DEFINE_string("torchvision_inception", None,
                    "torchvision's inception_v3_google-*.pth, or AttnGAN's image_encoder*.pth "
                    "(its trunk), for --inception_source=torchvision and compare_fid's DM-GAN "
                    "column.")
flags.DEFINE_string("inception_hub", None,
                    "TF-Hub Inception module: a local SavedModel directory, or the handle "
                    "(resolved offline from $TFHUB_CACHE_DIR).")
flags.DEFINE_enum("is_source", None, ["graph", "hub"],
                  "Inception Score classifier (default: --inception_source when it has the "
                  "1008-way classifier, else graph): graph or hub.")
flags.DEFINE_integer("eval_batch_size", 50, "Images per Inception batch.")
flags.DEFINE_enum("fid_method", None, ["tfgan", "ttur"],
                  "Trace term: tfgan (TF-GAN's float64 SVD route; default with TensorFlow) or "
                  "ttur (scipy sqrtm with TTUR's fallbacks; default without TensorFlow).")
flags.DEFINE_integer("is_splits", 10, "Inception Score splits.", lower_bound=1)


def extractor(source=None):
  from evaluation import features  # pylint: disable=g-import-not-at-top
  return features.make(source or FLAGS.inception_source, FLAGS.fid_inception_dir,
                       FLAGS.inception_graph, FLAGS.inception_hub, FLAGS.torchvision_inception)


def is_extractor():
  source = FLAGS.is_source or (FLAGS.inception_source if FLAGS.inception_source in ("graph", "hub")
                               else "graph")
  return extractor(source)


def run_cli(required, compute, errors=(FileNotFoundError, ValueError),
            stopped="nothing was written"):
  """A command's main: checks the `required` flags, prints `compute()` (a string) or exits with
  `error: <message>` naming the bad input. Ctrl-C or SIGTERM: exit status 130 / 143 and
  `<how>: no result; <stopped>` (what is left)."""
  missing = [f"--{n}" for n in required if not getattr(FLAGS, n)]
  if missing:
    sys.exit(f"error: set {' and '.join(missing)}")
  from msmt_tf import stopping  # pylint: disable=g-import-not-at-top
  try:
    with stopping.sigterm_as_interrupt():
      text = compute()
  except errors as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (a batch system's time limit)
    print(flush=True)  # off the progress bar's line
    stopping.exit_stopped(e, f"{stopping.how_stopped(e)}: no result; {stopped}")
  print(text)
