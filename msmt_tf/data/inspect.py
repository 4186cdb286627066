r"""Checks a dataset folder through the code path training uses, before a long run.

    python -m msmt_tf.data.inspect --data_dir data/birds --dataset birds [--split train]
    python -m msmt_tf.data.inspect --data_dir data/NAME   # built from your images (--dataset folder)

Checks: the metadata pickles (restricted unpickler), every listed image exists, has a header
training decodes (JPEG, PNG, BMP, GIF), opens and decodes (all of them, also when the metadata has
problems), every birds bounding box leaves a non-empty crop of its image, every caption file exists
and has enough captions, captions.pickle holds the captions of text/, the vocabulary tables agree,
caption ids are in range. Prints counts, vocabulary size and
one batch's shapes; exits 1 listing every problem found in every split.
"""

if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

from concurrent import futures
import os
import shlex
import sys

import numpy as np

from msmt_tf.data import datasets
from msmt_tf.data.errors import DatasetError

__all__ = ["inspect_split"]


def _short(words, n=6):
  return " ".join(words[:n]) + (" ..." if len(words) > n else "")


def _check_text_files(split_data, max_differing=0.01):
  """Reads every caption file of the split, and compares its captions, mapped to word ids the way
  the loader builds captions.pickle from text/ (words the vocabulary lacks dropped), with the
  pickle's. A captions.pickle of other captions with the same counts loads without error, and
  training would pair every image with wrong captions; more than `max_differing` of the captions
  differing says so (a few may differ in a released pickle without harm).

  Returns:
    (problems, skipped caption lines).
  """
  problems, skipped, differing, compared = [], 0, [], 0
  variable = split_data.spec is not None and split_data.spec.variable_captions
  vocab = split_data.vocab
  for i, (key, count) in enumerate(zip(split_data.keys, split_data.caption_counts.tolist())):
    caps, bad_lines, bad = datasets.read_key_captions(split_data.data_dir, key, split_data.dataset,
                                                      count if variable else None)
    problems.extend(bad)
    skipped += len(bad_lines)
    if bad:
      continue
    for j, (tokens, ids) in enumerate(zip(caps, split_data.captions[i])):
      compared += 1
      if [vocab.index(t) for t in tokens if t in vocab] != ids:
        differing.append((key, j, tokens, ids))
  if len(differing) > max_differing * compared:
    first = {}  # the first differing caption of each of the first 3 images
    for d in differing:
      if len(first) < 3:
        first.setdefault(d[0], d)
    examples = "; ".join(f"{key} caption {j}: text/ has {_short(tokens)!r}, captions.pickle "
                         f"{_short(vocab.decode(ids).split())!r}"
                         for key, j, tokens, ids in first.values())
    path = os.path.join(split_data.data_dir, "captions.pickle")
    problems.append(
        f"{path}: {len(differing)} of {compared} {split_data.split} captions differ from the "
        f"text/ files (e.g. {examples}): this captions.pickle belongs to other captions, and "
        f"training would pair images with them; delete it, and the loader rebuilds it from text/ "
        f"(with a new vocabulary: a DAMSM text encoder trained with the old one does not fit it)")
  return problems, skipped


def _listed_images(data_dir, dataset, split):
  """The image paths of a split whose other metadata does not load, or [] when even its file
  list does not read (that problem is already reported)."""
  try:
    spec = datasets.dataset_spec(data_dir, dataset)
    data_dir = os.path.abspath(os.fspath(data_dir))
    keys = datasets.read_keys(data_dir, split)
  except DatasetError:
    return []
  return [os.path.join(data_dir, spec.image_dir, k + spec.image_ext) for k in keys]


def _check_images(split, image_paths, decode, verify=None):
  """Every listed image that is missing, then (`decode`) every other one that `verify(index)`
  (default: `verify_image` of its path) finds a problem with: the header test training applies,
  a full decode and, for a loaded birds split, its bounding box against its size."""
  verify = verify or (lambda i: datasets.verify_image(image_paths[i]))
  present = [i for i, p in enumerate(image_paths) if os.path.isfile(p)]
  problems = [f"image listed in {split}/filenames.pickle but missing: {p}"
              for p in image_paths if not os.path.isfile(p)]
  if decode:
    workers = max(2, os.cpu_count() or 2)
    with futures.ThreadPoolExecutor(workers) as pool:
      problems.extend(p for p in pool.map(verify, present) if p)
  return problems


def inspect_split(data_dir, dataset, split, words_num=None, batch_size=4, check_images=True,
                  out=print):
  """Inspects one split; returns the list of problems (empty when the split is usable)."""
  try:  # missing images are listed below, with the ones that do not decode
    data = datasets.load_split(data_dir, dataset, split, check_files=False)
  except DatasetError as e:  # the metadata has problems: the images are still checked
    return list(e.problems) + _check_images(split, _listed_images(data_dir, dataset, split),
                                            check_images)
  problems, skipped = _check_text_files(data)
  problems.extend(_check_images(split, data.image_paths, check_images, data.image_problem))
  spec = data.spec or datasets.DATASETS[dataset]
  words_num = words_num or (spec.words_num_train if split == "train" else spec.words_num_eval)
  lengths = np.asarray([len(c) for caps in data.captions for c in caps])
  counts = data.caption_counts
  per_image = (f"{counts[0]} per image" if counts.min() == counts.max() else
               f"{counts.min()}-{counts.max()} per image, mean {counts.mean():.2f}")
  out(f"[{split}] {data.num_images} images, {lengths.size} captions "
      f"({per_image}), vocabulary {len(data.vocab)} words, "
      f"{len(data.classes)} classes")
  out(f"[{split}] caption length: min {lengths.min()}, mean {lengths.mean():.1f}, max "
      f"{lengths.max()}; {np.mean(lengths > words_num) * 100:.1f}% longer than words_num="
      f"{words_num} (random word dropping)")
  if skipped:
    out(f"[{split}] note: {skipped} caption lines without any word were skipped (AttnGAN does)")
  if problems:
    return problems
  pipeline = datasets.DataPipeline(data, batch_size=min(batch_size, data.num_images),
                                   words_num=words_num, seed=0, num_epochs=1)
  try:
    batch = next(iter(pipeline))
  except DatasetError as e:
    return list(e.problems)
  for name in sorted(batch):
    v = batch[name]
    rng = f" range [{v.min():.3f}, {v.max():.3f}]" if v.dtype.kind == "f" else ""
    out(f"[{split}] batch {name}: {v.dtype} {list(v.shape)}{rng}")
  out(f"[{split}] first caption: {data.vocab.decode(batch['tokens'][0])!r}")
  return []


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  dataset = f.dataset
  if not os.path.isdir(f.data_dir):
    sys.exit(f"error: dataset folder not found: {os.path.abspath(f.data_dir)}\n"
             f"{datasets.DATASETS[dataset or 'folder'].how_to_get}")
  if dataset is None:  # a folder built by msmt_tf.data.build says what it is
    if not os.path.isfile(os.path.join(f.data_dir, datasets.SPEC_FILE)):
      from msmt_tf.data import build  # pylint: disable=g-import-not-at-top
      source = [n for n in build.METADATA_NAMES if os.path.isfile(os.path.join(f.data_dir, n))]
      if source:
        sys.exit(f"error: {os.path.abspath(f.data_dir)} holds {source[0]}: it is a source "
                 "folder of your own images, not a dataset yet; build the dataset from it first: "
                 "python -m msmt_tf.data.build --source "
                 f"{shlex.quote(f.data_dir)} --out data/NAME, then "
                 "inspect data/NAME")
      sys.exit(f"error: --dataset is not set, and {os.path.abspath(f.data_dir)} has no "
               f"{datasets.SPEC_FILE} (which a folder built by msmt_tf.data.build has): pass "
               f"--dataset={'|'.join(k for k in sorted(datasets.DATASETS) if k != 'folder')}")
    dataset = "folder"
  splits = [f.split] if f.split else list(datasets.SPLITS)
  problems = []
  for split in splits:
    for p in inspect_split(f.data_dir, dataset, split, f.words_num, f.batch_size,
                           check_images=not f.skip_images):
      if p not in problems:  # a problem of the whole folder (captions.pickle) once, not per split
        problems.append(p)
  if problems:
    print(f"\n{len(problems)} problem(s) in {os.path.abspath(f.data_dir)}:", file=sys.stderr)
    for p in problems:
      print(f"  - {p}", file=sys.stderr)
    sys.exit(1)
  print(f"OK: {os.path.abspath(f.data_dir)} is a usable {dataset} dataset")


# What inspect reads of a flagfile: its dataset, and inspect's own flags of the same meaning.
# Not --batch_size or --words_num, which a training flagfile (data/mine/mine.cfg, configs/*.cfg)
# sets for training, nor the training flags inspect does not have (--vocab_size).
FLAGFILE_FLAGS = ("data_dir", "dataset", "split", "skip_images", "noskip_images")


def dataset_flags_of_flagfiles(argv, flag_values):
  """`argv` with each `--flagfile=F` (or `--flagfile F`) replaced by the flags of F in
  `FLAGFILE_FLAGS`: the flagfile a build writes, or a training config, also sets training flags
  inspect does not have (--vocab_size), or has with another meaning (--batch_size, --words_num).
  Flags typed on the command line are kept as they are, in order."""
  out, args = argv[:1], list(argv[1:])
  while args:
    arg = args.pop(0)
    if arg == "--":
      return out + [arg] + args
    if arg in ("--flagfile", "-flagfile") and args:  # the value as the next argument
      arg = f"--flagfile={args.pop(0)}"
    if not arg.startswith(("--flagfile=", "-flagfile=")):
      out.append(arg)
      continue
    for line in flag_values.read_flags_from_files([arg], force_gnu=False):
      name = line.lstrip("-").split("=", 1)[0]
      if name in FLAGFILE_FLAGS:
        out.append(line)
  return out


if __name__ == "__main__":
  from absl import app
  from absl import flags
  flags.DEFINE_string("data_dir", None, "Dataset folder (AttnGAN layout).", required=True)
  flags.DEFINE_enum("dataset", None, sorted(datasets.DATASETS),
                    "Dataset kind (default: folder where --data_dir has dataset_spec.json).")
  flags.DEFINE_enum("split", None, list(datasets.SPLITS), "One split (default: both).")
  flags.DEFINE_integer("words_num", None, "Caption length (default: the dataset's).")
  flags.DEFINE_integer("batch_size", 4, "Images in the sample batch.")
  flags.DEFINE_bool("skip_images", False, "Do not decode every image (faster, less thorough).")
  try:
    args = dataset_flags_of_flagfiles(sys.argv, flags.FLAGS)
  except flags.Error as e:  # a flagfile that cannot be read: said as absl says it
    sys.exit(f"FATAL Flags parsing error: {e}")
  app.run(main, argv=args)
