r"""Evaluates a training run with named metrics and appends one JSON line per result to
`RUN/metrics.jsonl`.

    python -m evaluation.metric_main --run_dir RUN --metrics fid30k_test,is30k_test,rprec_test \
        [--step N] [--sample_seed 100] [--inception_source keras|graph|hub] ...

Metric names: `<metric><count>_<split>` with metric `fid`, `is` or `rprec`, count like `30k`,
`2k` or `500` (for rprec the count may be left out: it uses the count of the other metrics, else
30k), split `test` (the paper) or `train`. All metrics of one call share one folder of generated
images, `RUN/eval/step-<step>/<split>-seed<seed>/` (made with msmt_tf.sample, resumable, reused
by later calls); FID's real-image statistics are cached in
`RUN/eval/real-<split>-<size>-<id>-<source>.npz` from the split's images prepared once as PNGs of
the generator's output size (256 x 256 for the paper's three stages) in
`RUN/eval/real-<split>-<size>-<id>/` (birds: the CUB bounding-box crop; others: shorter side to
256 and a centre crop; PIL bilinear with antialiasing), the same PNG route as the generated images.

Both caches are keyed by the dataset, never mixed: `<id>` is a hash of the dataset kind, the
split, the image size and the split's image files in order (name, bytes), which the folder's
`dataset.json` records (with the folder it was made from); another dataset or a rebuilt one gets
a fresh folder (the old one is kept, and named in a note), the same files moved or copied
elsewhere reuse it. A generated-image folder whose manifest names other captions (another
dataset, a rebuilt one) is likewise kept as it is, and the images are made in
`<split>-seed<seed>-data<id>/`.

Every metric's needs are checked against its split before any image is generated: FID needs at
least 2 real images in the split, R-precision images of at least 2 classes (for its mismatched
captions) and 10 images (folds), IS at least --is_splits images.
"""

if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

import datetime
import hashlib
import json
import os
import re
import shlex
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from absl import app  # pylint: disable=g-import-not-at-top
from absl import flags
import numpy as np

from evaluation import flags as eval_flags  # pylint: disable=g-import-not-at-top
from msmt_tf import sample  # pylint: disable=g-import-not-at-top,unused-import (its flags)
from msmt_tf import stopping

# --run_dir, --data_dir, --damsm_dir: msmt_tf.config's; --step, --sample_seed,
# --sample_batch_size: msmt_tf.sample's.
FLAGS = flags.FLAGS
flags.DEFINE_list("metrics", ["fid30k_test", "is30k_test", "rprec_test"], "Metrics to compute.")

def _default_metrics():
  """Whether --metrics is its default (not given)."""
  return not FLAGS["metrics"].present


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
    if count == 0:  # not the default count: a typo would make 30,000 images
      raise ValueError(f"{name}: an image count of 0; give the number of images, e.g. "
                       f"{metric}30k_{split}" + ("" if metric != "rprec" else
                                                 f", or none ({metric}_{split})"))
  elif metric != "rprec":
    raise ValueError(f"{name}: {metric} needs an image count, e.g. {metric}30k_{split}")
  return metric, count, split


REFERENCE_FORMAT = "msmt-tf real-image reference"
REFERENCE_RECORD = "dataset.json"  # in a folder of prepared real images: the dataset it shows


def _split_hint(name, split, data):
  """What to do about a split too small for metric `name`."""
  tips = []
  if split == "test":
    tips.append(f"evaluate on the train split ({name.rsplit('_', 1)[0]}_train)")
    if data.split_source() == "folders":  # --test_fraction is not used with split folders
      tips.append("put more images in the source's test folder and rebuild the dataset "
                  "(python -m msmt_tf.data.build --source <your images> --out "
                  f"{shlex.quote(data.data_dir)} --overwrite)")
    elif data.dataset == "folder":
      tips.append("rebuild the dataset with a larger --test_fraction (python -m "
                  f"msmt_tf.data.build --source <your images> --out {shlex.quote(data.data_dir)} "
                  "--test_fraction 0.2 --overwrite)")
  elif data.dataset == "folder":
    tips.append(f"rebuild {data.data_dir} from more images with python -m msmt_tf.data.build")
  return f" ({'; or '.join(tips)})" if tips else ""


def metric_count(count, counts, split):
  """A metric's image count: its own (`fid2k_test`: 2,000), else the largest count of the other
  metrics of its split (`counts`), else the paper's 30,000."""
  return counts.get(split, 30000) if count is None else count


def check_splits(parsed, splits, counts, is_splits=10, folds=10):
  """Raises a ValueError naming every metric of `parsed` ((name, metric, count, split) tuples)
  that its split (`splits[split]`, a SplitData) or its image count cannot serve."""
  problems = []
  for name, metric, count, split in parsed:
    data = splits[split]
    count = metric_count(count, counts, split)
    where = f"the {split} split of {data.data_dir} (--dataset={data.dataset})"
    if metric == "fid":
      if data.num_images < 2:
        problems.append(f"{name}: FID needs at least 2 real images, but {where} has "
                        f"{data.num_images}{_split_hint(name, split, data)}")
      if count < 2:
        problems.append(f"{name}: FID needs at least 2 generated images, got {count}")
    elif metric == "is":
      if count < is_splits:
        problems.append(f"{name}: the Inception Score needs at least --is_splits={is_splits} "
                        f"images, got {count}")
    else:
      classes = data.classes
      if len(classes) < 2:
        problems.append(
            f"{name}: R-precision compares each image's caption with captions of images of "
            f"other classes, but all {data.num_images} image(s) of {where} have class "
            f"{data.class_name(classes[0])}: no mismatched captions"
            f"{_split_hint(name, split, data)}")
      if count < folds:
        problems.append(f"{name}: R-precision needs at least {folds} images (its {folds} "
                        f"folds), got {count}")
  if problems:
    raise ValueError("nothing was generated:\n  " + "\n  ".join(problems))


# Recorded, not compared: the same files in another folder (a moved or copied dataset) are the
# same reference.
_INFORMATIONAL = ("data_dir", "first_files")


def reference_identity(split_data, size):
  """What a folder of the split's prepared real images depends on: the dataset kind, the split,
  the image size, and a SHA-256 of the split's image files in order (path inside the dataset and
  size in bytes) and bounding boxes (birds). The resolved folder and the first file names are
  recorded too, for the reader, not compared: a moved or copied dataset is the same reference."""
  files = []
  for path in split_data.image_paths:
    st = os.stat(path)
    files.append([os.path.relpath(path, split_data.data_dir), st.st_size])
  boxes = None if split_data.bboxes is None else np.asarray(split_data.bboxes).tolist()
  return {"format": REFERENCE_FORMAT, "data_dir": os.path.realpath(split_data.data_dir),
          "dataset": split_data.dataset, "split": split_data.split, "size": int(size),
          "num_images": split_data.num_images,
          "files_sha256": hashlib.sha256(json.dumps([files, boxes]).encode()).hexdigest(),
          "first_files": [f[0] for f in files[:3]]}


def _short_hash(value):
  return hashlib.sha256(json.dumps(value, sort_keys=True).encode()).hexdigest()[:12]


def real_reference(split_data, eval_dir, size=256, progress=False):
  """(folder, id): the split's real images as `size` PNGs in `eval_dir/real-<split>-<size>-<id>/`,
  `id` a hash of `reference_identity`, which the folder's dataset.json records. Another dataset
  (folder, rebuild, split) gets a fresh folder, never a mix of two; a half-made folder of the
  same dataset is continued."""
  from msmt_tf import fileio  # pylint: disable=g-import-not-at-top
  identity = reference_identity(split_data, size)
  ident = _short_hash({k: v for k, v in identity.items() if k not in _INFORMATIONAL})
  prefix = f"real-{split_data.split}-{size}"
  folder = os.path.join(eval_dir, f"{prefix}-{ident}")
  record = os.path.join(folder, REFERENCE_RECORD)
  if os.path.isfile(record):
    try:
      with open(record) as f:
        old = json.load(f)
    except (OSError, ValueError) as e:
      raise ValueError(f"cannot read {record} ({e}); move {folder} away to prepare the real "
                       "images again") from e
    diff = [k for k in identity if k not in _INFORMATIONAL and old.get(k) != identity[k]]
    if diff:
      raise ValueError(f"{folder} holds real images of another dataset ("
                       + ", ".join(f"{k} {old.get(k)!r} vs now {identity[k]!r}" for k in diff)
                       + "); move it away to prepare them again")
  else:
    if os.path.isdir(folder) and os.listdir(folder):
      raise ValueError(f"{folder} is not empty but has no {REFERENCE_RECORD}: not a real-image "
                       "cache made by evaluation.metric_main; move it away")
    others = sorted(d for d in (os.listdir(eval_dir) if os.path.isdir(eval_dir) else [])
                    if (d == prefix or d.startswith(prefix + "-"))
                    and os.path.isdir(os.path.join(eval_dir, d)))
    if others:
      print(f"note: the {split_data.split} split of {split_data.data_dir} "
            f"({split_data.num_images} images) is not what the real-image cache "
            f"{', '.join(others)} in {eval_dir} was made from (another dataset, or an earlier "
            f"version of this program); preparing its images in {folder} (the other cache is "
            "kept: delete it if unused)", flush=True)
    os.makedirs(folder, exist_ok=True)
    fileio.atomic_write_bytes(record, json.dumps(identity, indent=1).encode())
  prepare_real_images(split_data, folder, size)
  return folder, ident


def images_folder(run_dir, step, split, seed, split_data):
  """The generated images' folder `RUN/eval/step-<step>/<split>-seed<seed>`; when it holds
  images made from other captions (another --data_dir, a rebuilt dataset) it is kept as it is,
  and `<that>-data<id>` (id: a hash of the caption source) is used instead, with a note."""
  from msmt_tf import sample  # pylint: disable=g-import-not-at-top
  base = os.path.join(run_dir, "eval", f"step-{step}", f"{split}-seed{seed}")
  if not os.path.isfile(os.path.join(base, sample.MANIFEST)):
    return base
  source = sample.caption_source(split_data)
  diff = sample.caption_conflicts(sample.read_manifest(base), split_data,
                                  split_data.spec.words_num_eval, seed, source)
  if not diff:
    return base
  folder = "{}-data{}".format(base, _short_hash(
      [source["dataset"], source["captions_sha256"]]))
  print(f"note: {base} holds images generated from other captions ({'; '.join(diff)}); they "
        f"are kept, and this dataset's images go to {folder}", flush=True)
  return folder


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
  if not os.path.isdir(run_dir):
    raise FileNotFoundError(f"run folder not found: {run_dir} (--run_dir: a msmt_tf.train run, "
                            "or one imported with msmt_tf.import_torch)")
  if step is None:  # the newest checkpoint that reads (damaged newer ones are set aside, said)
    found = checkpoint.newest_readable(run_dir)
    if found is None:
      raise FileNotFoundError(f"no checkpoint in {os.path.join(run_dir, 'checkpoints')}")
    step = found[0]
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  runs.step_checkpoint(run_dir, step)  # a --step that is not there: named, with the steps there
  record = runs.read_config(run_dir)
  data_dir = data_dir or record["data"]["data_dir"]
  damsm_dir = damsm_dir or record.get("damsm_dir")
  counts = {}
  for _, metric, count, split in parsed:
    if count:
      counts[split] = max(counts.get(split, 0), count)
  # Every split is read and checked against its metrics' needs before any image is made.
  splits = {split: datasets.load_split(data_dir, record["data"]["dataset"], split)
            for split in sorted({split for *_, split in parsed})}
  check_splits(parsed, splits, counts, _flag("is_splits"))
  vocab = next(iter(splits.values())).vocab  # one vocabulary for every split
  runs.check_run_vocabulary(record, vocab, run_dir, data_dir)
  # The generator and its text encoder, checked and loaded once for every metric's images.
  loaded = runs.load_run(run_dir, step, damsm_dir, data_dir)
  # Every network file is opened before any image is made: a missing one fails at once.
  metrics = {m for _, m, _, _ in parsed}
  extractors = {}
  if "fid" in metrics:
    extractors["fid"] = eval_flags.extractor()
  if "is" in metrics:
    try:
      extractors["is"] = eval_flags.is_extractor()
    except FileNotFoundError as e:  # the default --metrics holds is30k_test
      if FLAGS.is_source or FLAGS.inception_source in ("graph", "hub"):
        raise  # a source chosen on purpose: its own error says what is missing
      names = ",".join(n for n, m, _, _ in parsed if m == "is")
      rest = ",".join(n for n, m, _, _ in parsed if m != "is")
      raise FileNotFoundError(
          f"{names} (the Inception Score, in --metrics{' by default' if _default_metrics() else ''}"
          f") needs Inception's 1008-way classifier, which the FID weights lack: {e} (or "
          "--is_source=hub with --inception_hub)"
          + (f"; or leave it out: --metrics={rest}" if rest else "")) from e
  if "rprec" in metrics:
    damsm_encoders = r_precision.load_encoders(damsm_dir)  # loaded once for every rprec metric
    runs.check_damsm_vocabulary(damsm_dir, damsm_encoders[0], vocab, data_dir)
  folders = {split: images_folder(run_dir, step, split, seed, data)
             for split, data in splits.items()}
  announce_plan(parsed, counts, folders, splits, step)
  # So are the real images' statistics (a corrupt real image fails before generation too).
  references = {}
  for split in sorted({split for _, m, _, split in parsed if m == "fid"}):
    ext = extractors["fid"]
    size = 64 * 2 ** (record["model"]["num_stages"] - 1)  # the generator's output size
    eval_dir = os.path.join(run_dir, "eval")
    real, ident = real_reference(splits[split], eval_dir, size, progress)
    cache = os.path.join(eval_dir, f"real-{split}-{size}-{ident}-{ext.name}.npz")
    mu2, s2, n2 = fid_lib.folder_statistics(ext, real, FLAGS.eval_batch_size, cache, progress,
                                            meta={"dataset_id": ident}, role="real images")
    if n2 != splits[split].num_images:
      raise ValueError(f"{cache} holds the statistics of {n2} images, but the {split} split of "
                       f"{splits[split].data_dir} has {splits[split].num_images}; move it away "
                       "to compute them again")
    references[split] = real, mu2, s2, n2
  results = []
  for name, metric, count, split in parsed:
    count = metric_count(count, counts, split)
    folder = folders[split]
    made = sample.generate(run_dir, folder, max(count, counts.get(split, 0)), split, step, seed,
                           batch_size=sample_batch_size, damsm_dir=damsm_dir, data_dir=data_dir,
                           progress=progress, loaded=loaded)
    files = [os.path.join(folder, sample.image_name(i)) for i in range(count)]
    result = {"metric": name, "run_dir": os.path.abspath(run_dir), "step": int(step),
              "images": folder, "num_generated": count, "seed": seed,
              "data_dir": splits[split].data_dir, "weights_sha256": made["weights_sha256"],
              "time": datetime.datetime.now().isoformat(timespec="seconds")}
    if metric == "fid":
      ext = extractors["fid"]
      real, mu2, s2, n2 = references[split]
      act, _ = _activations(ext, files, progress)
      mu1, s1 = fid_lib.statistics(act)
      method = FLAGS.fid_method or fid_lib.default_method()
      result.update(fid=fid_lib.frechet_distance(mu1, s1, mu2, s2, method), num_reference=n2,
                    reference=real, method=method, extractor=ext.description,
                    verified=ext.verified)
      warning = fid_lib.small_sample_warning(count, n2, mu1.size)
      if warning:
        result["warning"] = warning
      line = fid_lib.format_result(name, {**result, "num_images": count})
    elif metric == "is":
      scored = inception_score.compute(extractors["is"], files, FLAGS.eval_batch_size,
                                       FLAGS.is_splits, progress)
      del scored["num_images"]  # the line's num_generated
      result.update(scored)
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


def announce_plan(parsed, counts, folders, splits, step):
  """Says, before the long parts (the real images' statistics, the generation), how many images
  each split's metrics make (and how many are there already), and each number the split's size
  makes not comparable with published ones whatever the image count (the result lines' warnings,
  ahead of the work)."""
  from evaluation import features  # pylint: disable=g-import-not-at-top
  from evaluation import r_precision  # pylint: disable=g-import-not-at-top
  from msmt_tf import sample  # pylint: disable=g-import-not-at-top
  for split, folder in folders.items():
    names = [n for n, _, _, s in parsed if s == split]
    wanted = max(metric_count(c, counts, split) for _, _, c, s in parsed if s == split)
    have = sample.images_in(folder, wanted)
    print(f"plan: {', '.join(names)}: {wanted} images of step {step} from the {split} split's "
          f"captions in {folder}" + (f" ({have} there already)" if have else ""), flush=True)
  for name, metric, count, split in parsed:
    if metric == "fid":
      n2, dim = splits[split].num_images, features.POOL3_DIM
      if n2 <= dim:
        smaller = (f" (a smaller count such as fid2k_{split} takes less time)"
                   if metric_count(count, counts, split) > 2000 else "")
        print(f"note: {name}: the {split} split has {n2} real images for FID's {dim} "
              f"features (a covariance that is not singular needs {dim + 1}): the FID "
              f"is not comparable with published ones whatever the number generated{smaller}",
              flush=True)
    elif metric == "rprec":
      warning = r_precision.few_candidates_warning(splits[split])
      if warning:
        print(f"note: {name}: {warning}", flush=True)


def _flag(name):
  """A flag's value; its default where the flags were not parsed (evaluate called from code)."""
  return getattr(FLAGS, name) if FLAGS.is_parsed() else FLAGS[name].default


def _activations(extractor, files, progress):
  from evaluation import features  # pylint: disable=g-import-not-at-top
  return features.activations(extractor, files, FLAGS.eval_batch_size, progress=progress)


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
    if os.path.lexists(link) and not os.path.exists(link):  # absolute links of before a move
      os.remove(link)
    if not os.path.lexists(link):  # relative: the two folders move together with the run
      os.symlink(os.path.join(os.pardir, os.path.basename(folder), sample.image_name(i)), link)
  m.update(num_images=count, images=m["images"][:count])
  fileio.atomic_write_bytes(os.path.join(sub, sample.MANIFEST), json.dumps(m).encode())
  return sub


def main(argv):
  del argv
  from msmt_tf import distribute  # pylint: disable=g-import-not-at-top
  distribute.note_single_device("metric_main")
  from msmt_tf.data.errors import DatasetError  # pylint: disable=g-import-not-at-top
  if not FLAGS.run_dir:
    sys.exit("error: set --run_dir")
  if FLAGS.sample_words_num is not None:
    sys.exit("error: --sample_words_num is msmt_tf.sample's: metric_main always samples with the "
             "dataset's evaluation caption length (words_num_eval), the protocol's")
  try:
    with stopping.sigterm_as_interrupt():
      evaluate(FLAGS.run_dir, FLAGS.metrics, FLAGS.step, FLAGS.sample_seed, FLAGS.damsm_dir,
               FLAGS.data_dir, FLAGS.sample_batch_size)
  except (FileNotFoundError, ValueError, DatasetError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt as e:
    print(flush=True)  # off the progress bar's line
    stopping.exit_stopped(e, f"{stopping.how_stopped(e)}: the images and statistics made so "
                          f"far are kept in {os.path.join(FLAGS.run_dir, 'eval')}; the same "
                          "command continues from them")
  print(f"results appended to {os.path.join(FLAGS.run_dir, 'metrics.jsonl')}")


if __name__ == "__main__":
  app.run(main)
