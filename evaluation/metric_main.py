r"""Evaluates a training run with named metrics and appends one JSON line per result to
`RUN/metrics.jsonl`.

    python -m evaluation.metric_main --run_dir RUN --metrics fid30k_test,is30k_test,rprec_test \
        [--step N] [--sample_seed 100] [--inception_source keras|graph|hub] ...

Metric names: `<metric><count>_<split>` with metric `fid`, `is` or `rprec`, count like `30k`,
`2k` or `500` (for rprec the count may be left out: it uses the count of the other metrics, else
30k), split `test` (the paper) or `train`. All metrics of one call share one folder of generated
images, `RUN/eval/step-<step>/<split>-seed<seed>/` (made with msmt_tf.sample, resumable, reused
by later calls); FID's real-image statistics are cached in `RUN/eval/real-<split>-<source>.npz`
from the split's images prepared once as PNGs of the generator's output size (256 x 256 for
the paper's three stages) (birds: the CUB bounding-box crop;
others: shorter side to 256 and a centre crop; PIL bilinear with antialiasing), the same PNG
route as the generated images.
"""

if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

import datetime
import json
import os
import re
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags

from evaluation import flags as eval_flags  # pylint: disable=g-import-not-at-top
from msmt_tf import sample  # pylint: disable=g-import-not-at-top,unused-import (its flags)

# --run_dir, --data_dir, --damsm_dir: msmt_tf.config's; --step, --sample_seed,
# --sample_batch_size: msmt_tf.sample's.
FLAGS = flags.FLAGS
flags.DEFINE_list("metrics", ["fid30k_test", "is30k_test", "rprec_test"], "Metrics to compute.")

_NAME = re.compile(r"^(fid|is|rprec)(\d+k?)?_(test|train)$")


def parse(name):
  """(metric, count or None, split) of a metric name; a clear error for unknown ones."""
  m = _NAME.match(name)
  if not m:
    raise ValueError(f"unknown metric {name!r}: use <fid|is|rprec><count>_<test|train>, e.g. "
                     "fid30k_test, is30k_test, rprec_test")
  metric, count, split = m.groups()
  if count is not None:
    count = int(count[:-1]) * 1000 if count.endswith("k") else int(count)
  elif metric != "rprec":
    raise ValueError(f"{name}: {metric} needs an image count, e.g. {metric}30k_{split}")
  return metric, count, split


def prepare_real_images(split_data, out, size=256):
  """The split's real images as `size` x `size` PNGs in `out` (existing files are kept)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from msmt_tf import image_utils  # pylint: disable=g-import-not-at-top
  os.makedirs(out, exist_ok=True)
  for i, path in enumerate(split_data.image_paths):
    target = os.path.join(out, f"{i:06d}.png")
    if os.path.isfile(target):
      continue
    try:
      with Image.open(path) as im:
        im = im.convert("RGB")
    except Exception as e:  # corrupt file
      raise ValueError(f"cannot read image {path} ({type(e).__name__}: {e})") from e
    if split_data.bboxes is not None:
      x, y, w, h = split_data.bboxes[i]
      r = int(max(w, h) * 0.75)
      cx, cy = int((2 * x + w) / 2), int((2 * y + h) / 2)
      im = im.crop((max(0, cx - r), max(0, cy - r), min(im.width, cx + r),
                    min(im.height, cy + r)))
      im = im.resize((size, size), Image.BILINEAR)
    else:
      scale = size / min(im.width, im.height)
      im = im.resize((max(size, round(im.width * scale)), max(size, round(im.height * scale))),
                     Image.BILINEAR)
      left, top = (im.width - size) // 2, (im.height - size) // 2
      im = im.crop((left, top, left + size, top + size))
    image_utils.save_png(im, target)
  return out


def evaluate(run_dir, metric_names, step=None, seed=100, damsm_dir=None, data_dir=None,
             sample_batch_size=50, progress=True):
  """Computes the metrics; appends and returns their result dicts."""
  from evaluation import fid as fid_lib  # pylint: disable=g-import-not-at-top
  from evaluation import inception_score  # pylint: disable=g-import-not-at-top
  from evaluation import r_precision  # pylint: disable=g-import-not-at-top
  from msmt_tf import checkpoint  # pylint: disable=g-import-not-at-top
  from msmt_tf import sample  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  parsed = [(name, *parse(name)) for name in metric_names]
  if step is None:  # the newest checkpoint that reads (damaged newer ones are set aside, said)
    found = checkpoint.newest_readable(run_dir)
    if found is None:
      raise FileNotFoundError(f"no checkpoint in {os.path.join(run_dir, 'checkpoints')}")
    step = found[0]
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  record = runs.read_config(run_dir)
  data_dir = data_dir or record["data"]["data_dir"]
  damsm_dir = damsm_dir or record.get("damsm_dir")
  counts = {}
  for _, metric, count, split in parsed:
    if count:
      counts[split] = max(counts.get(split, 0), count)
  # Every network file is opened before any image is made: a missing one fails at once.
  metrics = {m for _, m, _, _ in parsed}
  extractors = {}
  if "fid" in metrics:
    extractors["fid"] = eval_flags.extractor()
  if "is" in metrics:
    extractors["is"] = eval_flags.is_extractor()
  if "rprec" in metrics:
    damsm_encoders = r_precision.load_encoders(damsm_dir)  # loaded once for every rprec metric
  results = []
  for name, metric, count, split in parsed:
    count = count or counts.get(split, 30000)
    folder = os.path.join(run_dir, "eval", f"step-{step}", f"{split}-seed{seed}")
    sample.generate(run_dir, folder, max(count, counts.get(split, 0)), split, step, seed,
                    batch_size=sample_batch_size, damsm_dir=damsm_dir, data_dir=data_dir,
                    progress=progress)
    files = [os.path.join(folder, sample.image_name(i)) for i in range(count)]
    result = {"metric": name, "run_dir": os.path.abspath(run_dir), "step": int(step),
              "images": folder, "num_generated": count, "seed": seed,
              "time": datetime.datetime.now().isoformat(timespec="seconds")}
    if metric == "fid":
      ext = extractors["fid"]
      size = 64 * 2 ** (record["model"]["num_stages"] - 1)  # the generator's output size
      real = prepare_real_images(datasets.load_split(data_dir, record["data"]["dataset"], split),
                                 os.path.join(run_dir, "eval", f"real-{split}-{size}"), size)
      cache = os.path.join(run_dir, "eval", f"real-{split}-{size}-{ext.name}.npz")
      mu2, s2, n2 = fid_lib.folder_statistics(ext, real, FLAGS.eval_batch_size, cache, progress)
      act, _ = _activations(ext, files, progress)
      mu1, s1 = fid_lib.statistics(act)
      method = FLAGS.fid_method or fid_lib.default_method()
      result.update(fid=fid_lib.frechet_distance(mu1, s1, mu2, s2, method), num_reference=n2,
                    method=method, extractor=ext.description, verified=ext.verified)
      warning = fid_lib.small_sample_warning(count, n2, mu1.size)
      if warning:
        result["warning"] = warning
      line = fid_lib.format_result(name, {**result, "num_images": count, "reference": real})
    elif metric == "is":
      ext = extractors["is"]
      _, logits = _activations(ext, files, progress, want_logits=True)
      mean, std = inception_score.inception_score(logits, FLAGS.is_splits)
      result.update(is_mean=mean, is_std=std, splits=FLAGS.is_splits, extractor=ext.description,
                    verified=ext.verified)
      line = inception_score.format_result(name, {**result, "num_images": count})
    else:
      sub = folder if count == _num_in(folder) else _subset(folder, count)
      result.update(r_precision.r_precision(sub, damsm_dir, data_dir, progress=progress,
                                            encoders=damsm_encoders))
      line = r_precision.format_result(name, result)
    results.append(result)
    with open(os.path.join(run_dir, "metrics.jsonl"), "a") as f:
      f.write(json.dumps(result) + "\n")
    print(line, flush=True)
  return results


def _activations(extractor, files, progress, want_logits=False):
  from evaluation import features  # pylint: disable=g-import-not-at-top
  return features.activations(extractor, files, FLAGS.eval_batch_size, want_logits, progress)


def _num_in(folder):
  from msmt_tf import sample  # pylint: disable=g-import-not-at-top
  return sample.read_manifest(folder)["num_images"]


def _subset(folder, count):
  """A folder whose manifest lists only the first `count` images (links to the images)."""
  from msmt_tf import fileio  # pylint: disable=g-import-not-at-top
  from msmt_tf import sample  # pylint: disable=g-import-not-at-top
  m = sample.read_manifest(folder)
  sub = f"{folder}-first{count}"
  os.makedirs(sub, exist_ok=True)
  for i in range(count):
    link = os.path.join(sub, sample.image_name(i))
    if not os.path.exists(link):
      os.symlink(os.path.join(os.path.abspath(folder), sample.image_name(i)), link)
  m.update(num_images=count, images=m["images"][:count])
  fileio.atomic_write_bytes(os.path.join(sub, sample.MANIFEST), json.dumps(m).encode())
  return sub


def main(argv):
  del argv
  from msmt_tf.data.errors import DatasetError  # pylint: disable=g-import-not-at-top
  if not FLAGS.run_dir:
    sys.exit("error: set --run_dir")
  try:
    evaluate(FLAGS.run_dir, FLAGS.metrics, FLAGS.step, FLAGS.sample_seed, FLAGS.damsm_dir,
             FLAGS.data_dir, FLAGS.sample_batch_size)
  except (FileNotFoundError, ValueError, DatasetError) as e:
    sys.exit(f"error: {e}")
  print(f"results appended to {os.path.join(FLAGS.run_dir, 'metrics.jsonl')}")


if __name__ == "__main__":
  app.run(main)
