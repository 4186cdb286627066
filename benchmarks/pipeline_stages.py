r"""Where one core's time per image goes in the training input pipeline (BUILD.md, "Input
pipeline"): each stage of `DataPipeline`'s per-image work timed alone, single-threaded, on the
synthetic CUB folder `python -m msmt_tf.bench --pipeline` reads (written once if missing).

    taskset -c 1 python benchmarks/pipeline_stages.py [--images 64 --repeats 3]

Prints one line per stage (ms per image); the whole pipeline's rate on the same folder is
`python -m msmt_tf.bench --pipeline --flagfile=configs/cub.cfg`, pinned the same way. The
stages: JPEG decode; the windowed resize to 304 and 256 crop (`transforms.resized_crop`, on the
whole image: the box crop is left out); the 128 / 64 pyramid; a `tf.function` call of an
identity (the per-call cost the stages above include); an index stream from a Python generator
(`from_generator`, as `DataPipeline` makes it); batching 20 float32 pyramids (1 MB an image) and
their conversion to numpy.
"""

import argparse
import glob
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--images", type=int, default=64)
  parser.add_argument("--repeats", type=int, default=3)
  args = parser.parse_args()
  import numpy as np  # pylint: disable=g-import-not-at-top
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from msmt_tf import bench  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import transforms  # pylint: disable=g-import-not-at-top

  root = bench.synthetic_cub_folder(args.images)
  files = sorted(glob.glob(os.path.join(root, "CUB_200_2011", "images", "*", "*.jpg")))
  raws = [open(f, "rb").read() for f in files]

  def timed(name, fn, count=len(raws)):
    fn()  # warm-up (tracing)
    t = time.perf_counter()
    for _ in range(args.repeats):
      fn()
    print(f"{name}: {(time.perf_counter() - t) / args.repeats / count * 1e3:.2f} ms/image",
          flush=True)

  decode = lambda r: tf.io.decode_image(r, channels=3, expand_animations=False)
  images = [decode(r) for r in raws]
  timed("JPEG decode (500x375)", lambda: [decode(r) for r in raws])
  crop = tf.function(lambda im: transforms.resized_crop(im, 304, 256, tf.constant([1, 2],
                                                                                  tf.int64)),
                     autograph=False)
  timed("resize to 304 + 256 crop (windowed)", lambda: [crop(im) for im in images])
  crops = [crop(im) for im in images]
  pyramid = tf.function(lambda im: transforms.image_pyramid(im, [64, 128, 256]), autograph=False)
  timed("64/128/256 pyramid", lambda: [pyramid(c) for c in crops])
  identity = tf.function(lambda im: im + 0, autograph=False)
  timed("tf.function call (identity)", lambda: [identity(c) for c in crops])

  def indices():
    i = 0
    while True:
      yield np.int64(i // len(raws)), np.int64(i % len(raws))
      i += 1
  spec = (tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64))
  stream = iter(tf.data.Dataset.from_generator(indices, output_signature=spec).batch(20))
  timed("index generator (from_generator)", lambda: [next(stream) for _ in range(10)], 200)
  one = {f"image_{s}": tf.zeros([s, s, 3]) for s in (64, 128, 256)}
  batches = tf.data.Dataset.from_tensors(one).repeat().batch(20).as_numpy_iterator()
  timed("batch of 20 float32 pyramids -> numpy", lambda: [next(batches) for _ in range(10)], 200)


if __name__ == "__main__":
  main()
