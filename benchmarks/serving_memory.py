r"""Peak host memory of one request to an exported SavedModel (BUILD.md, "Serving").

    python benchmarks/serving_memory.py saved_models/NAME/1 512 [--signature generate_png]

Loads the SavedModel, sends N identical captions in one request and prints the seconds and the
process's peak RSS after loading and after the request. Run each (model, N) in a fresh process:
the peak RSS never goes down.
"""

import argparse
import resource
import time


def peak_rss_mb():
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("saved_model")
  parser.add_argument("num_captions", type=int)
  parser.add_argument("--signature", default="generate_png")
  parser.add_argument("--caption", default="a large red circle on the left of a blue square")
  args = parser.parse_args()
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model = tf.saved_model.load(args.saved_model)
  loaded = peak_rss_mb()
  start = time.time()
  out = model.signatures[args.signature](captions=tf.constant([args.caption] * args.num_captions),
                                         seed=tf.constant(0, tf.int64))
  print(f"{args.saved_model}: {args.num_captions} captions -> {out['images_bytes'].shape[0]} "
        f"images in {time.time() - start:.1f} s; peak RSS {peak_rss_mb():.0f} MB "
        f"(after loading {loaded:.0f} MB)")


if __name__ == "__main__":
  main()
