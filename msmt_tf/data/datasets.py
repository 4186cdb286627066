"""AttnGAN-layout datasets (CUB `birds`, `coco`, built-in `shapes`) and their tf.data pipeline.

One code path reads every dataset (model_spec §1.1):

    <data_dir>/captions.pickle               [train_caps, test_caps, ixtoword, wordtoix]
    <data_dir>/{train,test}/filenames.pickle list of keys
    <data_dir>/{train,test}/class_info.pickle optional; without it every image is its own class
    <data_dir>/text/<key>.txt                one caption per line
    birds:  <data_dir>/CUB_200_2011/images/<key>.jpg (+ images.txt, bounding_boxes.txt)
    coco, shapes: <data_dir>/images/<key>.jpg
    folder: <data_dir>/images/<key> (the key is the stored file name, JPEG or PNG), plus
            <data_dir>/dataset_spec.json (words_num, classes, ...) and
            <data_dir>/{train,test}/caption_counts.pickle (captions per image, 1 or more)

A `folder` dataset is one `python -m msmt_tf.data.build` made from an ImageFolder-style folder;
its images may have different numbers of captions, so `captions.pickle` holds, per split, the
captions of image 0, then image 1, ... and `caption_counts.pickle` says how many each image has.

`load_split` reads and checks the metadata (pickles through the restricted unpickler);
`DataPipeline` turns a split into batches of the image pyramid, token ids, lengths and class ids.
The epoch order is a numpy PCG64 permutation of (seed, epoch) and every random choice inside an
element is a stateless function of (seed, epoch, image index), so a pipeline started at
(epoch, batch) yields exactly the batches an uninterrupted one would.
"""

import dataclasses
import math
import os
import pickle
import shlex

from absl import logging
import numpy as np

from msmt_tf import fileio
from msmt_tf.data import vocab as vocab_lib
from msmt_tf.data.errors import DatasetError
from msmt_tf.data.safe_pickle import safe_load_pickle

__all__ = [
    "DatasetSpec", "DATASETS", "SplitData", "load_split", "load_captions", "read_caption_file",
    "verify_image", "DataPipeline", "epoch_order", "dataset_spec", "SPEC_FILE", "read_keys",
    "IMAGE_MAGIC", "header_problem", "cub_crop_region",
]

SPLITS = ("train", "test")
SPEC_FILE = "dataset_spec.json"  # in a `folder` dataset: what the build recorded
SPEC_FORMAT = "msmt-tf folder dataset"
# The leading bytes of the formats the pipeline decodes (tf.io.decode_image: JPEG, PNG, BMP, GIF).
# The pipeline's header test and `header_problem` (inspect, `DataPipeline.diagnose`) both read
# this table, so a file inspect accepts is one the pipeline decodes.
IMAGE_MAGIC = ((b"\xff\xd8\xff", "JPEG"), (b"\x89PNG", "PNG"), (b"BM", "BMP"), (b"GIF8", "GIF"))


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
  captions_per_image: int
  image_dir: str
  uses_bbox: bool
  words_num_train: int
  words_num_eval: int
  how_to_get: str
  # `folder` datasets: the key is the image's file name under image_dir (no ".jpg" added), the
  # number of captions varies per image ({split}/caption_counts.pickle; captions_per_image is
  # 0) and words_num etc. come from <data_dir>/dataset_spec.json (see `dataset_spec`).
  variable_captions: bool = False
  image_ext: str = ".jpg"
  min_word_count: int = 1


DATASETS = {
    "birds": DatasetSpec(
        10, "CUB_200_2011/images", True, 18, 25,
        "Get CUB-200-2011 and AttnGAN's preprocessed birds metadata (see BUILD.md, 'Datasets')."),
    "coco": DatasetSpec(
        5, "images", False, 12, 20,
        "Get COCO 2014 images and AttnGAN's preprocessed coco metadata (see BUILD.md, 'Datasets')."),
    "shapes": DatasetSpec(
        10, "images", False, 18, 25,
        "Make it with: python -m msmt_tf.data.shapes --out <data_dir>"),
    # Defaults only: a built folder's own values are in its dataset_spec.json (`dataset_spec`).
    "folder": DatasetSpec(
        0, "images", False, 18, 25,
        "Make it from a folder of captioned images with: python -m msmt_tf.data.build "
        "--source <images folder> --out <data_dir> (README, 'Your own data').",
        variable_captions=True, image_ext=""),
}


def _spec(dataset):
  if dataset not in DATASETS:
    raise DatasetError(f"unknown dataset {dataset!r}; choose one of {sorted(DATASETS)}")
  return DATASETS[dataset]


def read_spec_json(data_dir):
  """The checked dataset_spec.json of a `folder` dataset, as a dict."""
  import json  # pylint: disable=g-import-not-at-top
  path = os.path.join(data_dir, SPEC_FILE)
  if not os.path.isfile(path):
    raise DatasetError(f"missing file: {path} (a folder dataset records its spec there)",
                       hint=DATASETS["folder"].how_to_get)
  try:
    with open(path, "rb") as f:
      spec = json.loads(f.read().decode("utf8"))
  except (ValueError, UnicodeDecodeError) as e:
    raise DatasetError(f"{path}: not a readable JSON file ({e})") from e
  if not isinstance(spec, dict) or spec.get("format") != SPEC_FORMAT:
    raise DatasetError(f"{path}: not a folder dataset spec (no \"format\": {SPEC_FORMAT!r})")
  for name in ("words_num_train", "words_num_eval", "min_word_count"):
    if not isinstance(spec.get(name), int) or isinstance(spec.get(name), bool) or spec[name] < 1:
      raise DatasetError(f"{path}: {name} must be an integer >= 1, got {spec.get(name)!r}")
  return spec


def dataset_spec(data_dir, dataset):
  """The DatasetSpec of one dataset folder: the fixed one of birds/coco/shapes, or, for a
  `folder` dataset, the defaults completed from its dataset_spec.json (words_num, ...)."""
  spec = _spec(dataset)
  if dataset != "folder" or data_dir is None:
    return spec
  found = read_spec_json(os.path.abspath(os.fspath(data_dir)))
  per_image = found.get("captions_per_image", {})
  fixed = per_image.get("min") if per_image.get("min") == per_image.get("max") else 0
  return dataclasses.replace(
      spec, words_num_train=found["words_num_train"], words_num_eval=found["words_num_eval"],
      min_word_count=found["min_word_count"], captions_per_image=int(fixed or 0))


@dataclasses.dataclass
class SplitData:
  """The metadata of one split, checked.

  Attributes:
    captions: per image, `captions_per_image` lists of word ids (each non-empty).
    bboxes: `[N, 4]` float64 `(x, y, w, h)` for birds, else None.
    class_ids: `[N]` int64.
    bbox_sources: for birds, per image the `bounding_boxes.txt:<line>` its box comes from (named
      by the messages about a box), else None.
  """
  dataset: str
  data_dir: str
  split: str
  keys: list
  image_paths: list
  captions: list
  class_ids: np.ndarray
  bboxes: object
  vocab: vocab_lib.Vocabulary
  spec: object = None
  bbox_sources: object = None

  @property
  def num_images(self):
    return len(self.keys)

  def image_problem(self, index):
    """`verify_image` of image `index`, with its bounding box (birds) checked against its size."""
    if self.bboxes is None:
      return verify_image(self.image_paths[index])
    source = self.bbox_sources[index] if self.bbox_sources is not None else "bounding box"
    return verify_image(self.image_paths[index], self.bboxes[index],
                        f"{source} (the box of {self.keys[index]})")

  @property
  def classes(self):
    """The distinct class ids, sorted."""
    return np.unique(self.class_ids)

  def _built_spec(self):
    """A built folder dataset's dataset_spec.json (for the messages), else {}."""
    if self.dataset != "folder":
      return {}
    try:
      return read_spec_json(self.data_dir)
    except DatasetError:
      return {}

  def class_name(self, class_id):
    """Class `class_id` as the messages name it: with the value it stands for in a built folder
    dataset ("1 ('cat')", its --class_column value, from dataset_spec.json), else the id."""
    class_id = int(class_id)
    names = self._built_spec().get("class_names")
    if isinstance(names, list) and 1 <= class_id <= len(names):
      return f"{class_id} ({names[class_id - 1]!r})"
    return str(class_id)

  def split_source(self):
    """How a built folder dataset's split was made: 'folders' (the source's split folders, e.g.
    train/ and test/), 'hash' (--test_fraction), or None (another dataset, or not recorded)."""
    split = self._built_spec().get("split")
    return split.get("method") if isinstance(split, dict) else None

  @property
  def captions_per_image(self):
    """Captions of every image; for a folder dataset with varying counts, the largest."""
    if self.spec is not None and self.spec.variable_captions:
      return max(len(c) for c in self.captions)
    return DATASETS[self.dataset].captions_per_image

  @property
  def caption_counts(self):
    return np.asarray([len(c) for c in self.captions], np.int64)


def read_caption_file(path, needed):
  """Reads the first `needed` captions of a text file as token lists (AttnGAN's rules).

  Blank lines and lines with no word token are skipped, as AttnGAN does.

  Returns:
    (token_lists, skipped_lines): `token_lists` has at most `needed` entries.
  Raises:
    DatasetError: the file is missing or is not UTF-8 text.
  """
  if not os.path.isfile(path):
    raise DatasetError(f"missing caption file: {path}")
  try:
    with open(path, "rb") as f:
      text = f.read().decode("utf8")
  except UnicodeDecodeError as e:
    raise DatasetError(f"caption file is not UTF-8 text: {path} ({e})") from e
  out, skipped = [], []
  for lineno, line in enumerate(text.split("\n"), start=1):
    if not line.strip():
      continue
    tokens = vocab_lib.tokenize(line)
    if not tokens:
      skipped.append(lineno)
      continue
    out.append(tokens)
    if len(out) == needed:
      break
  return out, skipped


def read_key_captions(data_dir, key, dataset, needed=None):
  """Reads the captions of one image key; returns (token_lists, skipped_lines, problems).

  `problems` is empty when the file exists, is UTF-8 and has `needed` usable captions
  (default: the dataset's `captions_per_image`; a folder dataset passes each image's count).
  """
  per_image = needed or _spec(dataset).captions_per_image
  path = os.path.join(data_dir, "text", key + ".txt")
  try:
    caps, skipped = read_caption_file(path, per_image)
  except DatasetError as e:
    return [], [], list(e.problems)
  if len(caps) < per_image:
    return caps, skipped, [f"{path}: has {len(caps)} usable captions, {dataset} needs "
                           f"{per_image}"]
  return caps, skipped, []


def read_keys(data_dir, split):
  """The split's image keys (`<split>/filenames.pickle`), checked: a non-empty list of strings."""
  path = os.path.join(data_dir, split, "filenames.pickle")
  keys = safe_load_pickle(path)
  if not isinstance(keys, (list, tuple)) or not all(isinstance(k, str) for k in keys):
    raise DatasetError(f"{path}: expected a list of file keys (strings)")
  if not keys:
    raise DatasetError(f"{path}: lists no images")
  return list(keys)


def _read_caption_counts(data_dir, split, num_keys):
  """A folder dataset's captions per image, one positive int per key of the split."""
  path = os.path.join(data_dir, split, "caption_counts.pickle")
  counts = safe_load_pickle(path)
  if (not isinstance(counts, (list, tuple)) or len(counts) != num_keys
      or not all(isinstance(c, int) and not isinstance(c, bool) and c >= 1 for c in counts)):
    raise DatasetError(f"{path}: expected {num_keys} caption counts (integers >= 1), one per "
                       f"image of {split}/filenames.pickle")
  return list(counts)


def _rebuild_captions(data_dir, dataset):
  """Builds [train_caps, test_caps, ixtoword, wordtoix] from text/ (AttnGAN's build_dictionary).

  A folder dataset reads each image's recorded number of captions, and leaves words seen fewer
  than its recorded `min_word_count` times out of the vocabulary (and out of the captions).
  """
  spec = dataset_spec(data_dir, dataset)
  problems, token_lists = [], {}
  for split in SPLITS:
    lists = []
    keys = read_keys(data_dir, split)
    counts = (_read_caption_counts(data_dir, split, len(keys)) if spec.variable_captions
              else [None] * len(keys))
    for key, needed in zip(keys, counts):
      caps, _, bad = read_key_captions(data_dir, key, dataset, needed)
      problems.extend(bad)
      if not bad:
        lists.extend(caps)
    token_lists[split] = lists
  if problems:
    raise DatasetError(problems, hint="Fix or replace these caption files, then run again.")
  all_tokens = token_lists["train"] + token_lists["test"]
  vocab = vocab_lib.Vocabulary.from_captions(all_tokens, min_count=spec.min_word_count)
  caps = [[[vocab.index(t) for t in tokens if t in vocab] for tokens in token_lists[s]]
          for s in SPLITS]
  empty = [f"{os.path.join(data_dir, 'text')}: a {s} caption has no word seen at least "
           f"{spec.min_word_count} times" for s, lists in zip(SPLITS, caps) if any(not c for c in lists)]
  if empty:
    raise DatasetError(empty, hint="Rebuild the dataset with python -m msmt_tf.data.build.")
  return [caps[0], caps[1], vocab.ixtoword, vocab.wordtoix]


_CAPTIONS_CACHE = {}


def load_captions(data_dir, dataset):
  """Returns (train_captions, test_captions, Vocabulary) from captions.pickle.

  When captions.pickle is absent it is rebuilt from text/ and written (atomically) so later runs
  use the same word indices; a read-only folder only gets a warning. A pickle already read (same
  path, size and modification time) is not read again.
  """
  path = os.path.join(data_dir, "captions.pickle")
  if os.path.isfile(path):
    stat = os.stat(path)
    key = (os.path.abspath(path), stat.st_size, stat.st_mtime_ns)
    if key not in _CAPTIONS_CACHE:
      _CAPTIONS_CACHE.clear()
      _CAPTIONS_CACHE[key] = _check_captions(safe_load_pickle(path), path)
    return _CAPTIONS_CACHE[key]
  logging.info("%s not found: rebuilding the vocabulary from %s", path,
               os.path.join(data_dir, "text"))
  obj = _rebuild_captions(data_dir, dataset)
  try:
    fileio.atomic_write_bytes(path, pickle.dumps(obj, protocol=2))
    logging.info("wrote %s", path)
  except OSError as e:
    logging.warning("could not write %s (%s); using the rebuilt vocabulary in memory", path, e)
  return _check_captions(obj, path)


def _check_captions(obj, path):
  """Validates a [train_caps, test_caps, ixtoword, wordtoix] object; returns (train, test, vocab)."""
  if not isinstance(obj, (list, tuple)) or len(obj) != 4:
    raise DatasetError(f"{path}: expected [train_captions, test_captions, ixtoword, wordtoix]")
  train_caps, test_caps, ixtoword, wordtoix = obj
  try:
    vocab = vocab_lib.Vocabulary(ixtoword)
  except ValueError as e:
    raise DatasetError(f"{path}: bad ixtoword table: {e}") from e
  if not isinstance(wordtoix, dict):
    raise DatasetError(f"{path}: wordtoix must be a dict")
  bad = [w for w, i in wordtoix.items()
         if not isinstance(i, int) or i >= len(vocab) or vocab.words[i] != (
             w.decode("latin1") if isinstance(w, bytes) else w)]
  if bad or len(wordtoix) != len(vocab):
    raise DatasetError(f"{path}: wordtoix and ixtoword disagree (e.g. {bad[:3]}, "
                       f"{len(wordtoix)} vs {len(vocab)} entries)")
  return list(train_caps), list(test_caps), vocab


def _read_bboxes(data_dir, keys):
  """The `[N, 4]` boxes of `keys` and, per key, the `bounding_boxes.txt:<line>` it comes from.

  A box whose values are not finite, or whose width or height is not positive, is refused here,
  naming its line: the crop around it would be empty or undefined, and the pipeline would fail
  only at the step that reads it.
  """
  cub = os.path.join(data_dir, "CUB_200_2011")
  images_txt = os.path.join(cub, "images.txt")
  boxes_txt = os.path.join(cub, "bounding_boxes.txt")
  for p in (images_txt, boxes_txt):
    if not os.path.isfile(p):
      raise DatasetError(f"missing file: {p}", hint=DATASETS["birds"].how_to_get)
  id_to_key = {}
  with open(images_txt) as f:
    for lineno, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      if len(parts) != 2:
        raise DatasetError(f"{images_txt}:{lineno}: expected '<id> <path.jpg>', got {line!r}")
      id_to_key[parts[0]] = os.path.splitext(parts[1])[0]
  key_to_box, problems = {}, []
  with open(boxes_txt) as f:
    for lineno, line in enumerate(f, 1):
      parts = line.split()
      if not parts:
        continue
      try:
        box = [float(v) for v in parts[1:]]
        if len(box) != 4:
          raise ValueError
      except ValueError:
        raise DatasetError(f"{boxes_txt}:{lineno}: expected '<id> x y w h', got {line!r}")
      if not all(np.isfinite(box)) or box[2] <= 0 or box[3] <= 0:
        problems.append(f"{boxes_txt}:{lineno}: bounding box x y w h = {' '.join(parts[1:])} "
                        f"needs finite values and a width and height > 0")
        continue
      if parts[0] in id_to_key:
        key_to_box[id_to_key[parts[0]]] = (box, f"{boxes_txt}:{lineno}")
  if problems:
    raise DatasetError(problems, hint="Fix these lines (CUB's own bounding_boxes.txt has none).")
  missing = [k for k in keys if k not in key_to_box]
  if missing:
    raise DatasetError([f"no bounding box for {k} in {boxes_txt}" for k in missing])
  return (np.asarray([key_to_box[k][0] for k in keys], np.float64),
          [key_to_box[k][1] for k in keys])


def load_split(data_dir, dataset, split, check_files=True):
  """Reads and checks one split of an AttnGAN-layout dataset.

  Args:
    data_dir: the dataset folder (e.g. `data/birds`).
    dataset: 'birds', 'coco' or 'shapes'.
    split: 'train' or 'test'.
    check_files: check that every listed image exists.

  Raises:
    DatasetError: listing every problem found (missing folder, pickle, image, bad captions...).
  """
  spec = _spec(dataset)
  if split not in SPLITS:
    raise DatasetError(f"unknown split {split!r}; choose 'train' or 'test'")
  data_dir = os.path.abspath(os.fspath(data_dir))
  if not os.path.isdir(data_dir):
    raise DatasetError(f"dataset folder not found: {data_dir} (if it moved, pass --data_dir "
                       "with its new place: a run records where its dataset was)",
                       hint=spec.how_to_get)
  if dataset != "folder" and os.path.isfile(os.path.join(data_dir, SPEC_FILE)):
    raise DatasetError(
        f"{data_dir} is a folder dataset (it has {SPEC_FILE}), but --dataset={dataset}: pass "
        f"--dataset=folder (after any flagfile that sets --dataset, e.g. configs/smoke.cfg)")
  spec = dataset_spec(data_dir, dataset)
  keys = read_keys(data_dir, split)
  train_caps, test_caps, vocab = load_captions(data_dir, dataset)
  flat = train_caps if split == "train" else test_caps
  cap_path = os.path.join(data_dir, "captions.pickle")
  problems = []
  if spec.variable_captions:
    counts = _read_caption_counts(data_dir, split, len(keys))
    if len(flat) != sum(counts):
      raise DatasetError(
          f"{cap_path}: the {split} list has {len(flat)} captions, but "
          f"{split}/caption_counts.pickle counts {sum(counts)} for its {len(keys)} images")
  else:
    per_image = spec.captions_per_image
    counts = [per_image] * len(keys)
    if len(flat) != len(keys) * per_image:
      raise DatasetError(
          f"{cap_path}: the {split} list has {len(flat)} captions, but {split}/filenames.pickle "
          f"lists {len(keys)} images x {per_image} captions = {len(keys) * per_image}")
  starts = np.concatenate([[0], np.cumsum(counts)]).tolist()
  captions = []
  for i, key in enumerate(keys):
    caps = []
    for j in range(counts[i]):
      cap = flat[starts[i] + j]
      if not isinstance(cap, (list, tuple)) or not cap:
        problems.append(f"{cap_path}: caption {j} of {key} ({split}) is empty")
      elif any((not isinstance(t, int)) or t <= 0 or t >= len(vocab) for t in cap):
        problems.append(f"{cap_path}: caption {j} of {key} ({split}) has word ids outside "
                        f"1..{len(vocab) - 1}")
      caps.append([int(t) for t in cap] if isinstance(cap, (list, tuple)) else [])
    captions.append(caps)

  class_path = os.path.join(data_dir, split, "class_info.pickle")
  if os.path.isfile(class_path):
    class_ids = safe_load_pickle(class_path)
    if (not isinstance(class_ids, (list, tuple)) or len(class_ids) != len(keys)
        or not all(isinstance(c, int) for c in class_ids)):
      problems.append(f"{class_path}: expected {len(keys)} integer class ids, one per image")
      class_ids = range(len(keys))
    class_ids = np.asarray(class_ids, np.int64)
  else:
    class_ids = np.arange(len(keys), dtype=np.int64)

  bboxes, bbox_sources = _read_bboxes(data_dir, keys) if spec.uses_bbox else (None, None)
  image_paths = [os.path.join(data_dir, spec.image_dir, k + spec.image_ext) for k in keys]
  if check_files:
    problems.extend(f"image listed in {split}/filenames.pickle but missing: {p}"
                    for p in image_paths if not os.path.isfile(p))
  if problems:
    raise DatasetError(problems, hint="Run: python -m msmt_tf.data.inspect --data_dir "
                       f"{shlex.quote(data_dir)} "
                       f"--dataset {dataset} for a full report.")
  return SplitData(dataset, data_dir, split, keys, image_paths, captions, class_ids, bboxes, vocab,
                   spec, bbox_sources)


def header_problem(path):
  """The pipeline's header test on one file: None when it starts like a JPEG, PNG, BMP or GIF
  (`IMAGE_MAGIC`), else a one-line problem naming the file and, where Pillow knows it, its real
  format (a WebP or TIFF saved as .jpg opens in Pillow, but TensorFlow does not decode it)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  with open(path, "rb") as f:
    head = f.read(4)
  if any(head.startswith(magic) for magic, _ in IMAGE_MAGIC):
    return None
  try:
    with Image.open(path) as im:
      real = im.format
  except Exception:  # pylint: disable=broad-except  # not an image Pillow knows either
    real = None
  if real is None:
    return f"corrupt or unreadable image: {path} (no JPEG, PNG, BMP or GIF header)"
  return (f"image is {real}, which training cannot decode (only JPEG, PNG, BMP or GIF): {path}; "
          f"convert it, e.g. to JPEG")


def cub_crop_region(bbox, width, height):
  """`transforms.cub_crop_box` in plain Python: `[left, top, right, bottom]` of DM-GAN's crop
  around `bbox` (`[x, y, w, h]`) in a `width` x `height` image; empty when right <= left or
  bottom <= top (a box outside its image)."""
  x, y, w, h = (float(v) for v in bbox)
  r = math.floor(max(w, h) * 0.75)
  cx, cy = math.floor((2.0 * x + w) / 2.0), math.floor((2.0 * y + h) / 2.0)
  return [int(max(0.0, cx - r)), int(max(0.0, cy - r)), int(min(width, cx + r)),
          int(min(height, cy + r))]


def verify_image(path, bbox=None, bbox_source="bounding box"):
  """Applies the pipeline's header test, then fully decodes one image with PIL; with `bbox`
  (birds), also checks that DM-GAN's crop around it keeps some of the image. Returns None, or a
  one-line problem naming the file (and `bbox_source`, e.g. `bounding_boxes.txt:<line>`)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    problem = header_problem(path)
    if problem:
      return problem
    with Image.open(path) as im:
      im.load()
      if im.width < 1 or im.height < 1:
        return f"empty image: {path}"
      im.convert("RGB")
      size = im.size
  except FileNotFoundError:
    return f"missing image: {path}"
  except Exception as e:  # PIL raises many types for bad files.
    return f"corrupt or unreadable image: {path} ({type(e).__name__}: {e})"
  if bbox is not None:
    left, top, right, bottom = cub_crop_region(bbox, *size)
    if right <= left or bottom <= top:
      x, y, w, h = (float(v) for v in bbox)
      return (f"{bbox_source}: bounding box x={x:g} y={y:g} w={w:g} h={h:g} lies outside its "
              f"{size[0]}x{size[1]} image {path}: the crop around it (centre +- 0.75 max(w, h), "
              f"clamped to the image) is empty")
  return None


def epoch_order(num_images, seed, epoch, batch_size):
  """Image indices of one epoch, truncated to whole batches (drop_last)."""
  rng = np.random.Generator(np.random.PCG64([int(seed), int(epoch)]))
  order = rng.permutation(num_images)
  return order[:(num_images // batch_size) * batch_size]


_WARNED_SMALLER = set()


def stored_smaller_message(split_data, load_size):
  """What to say when a built folder dataset scaled some images down to a shorter side below
  `load_size` (the pipeline's resize before its crop), else None: the pipeline scales them up
  again, and a rebuild would keep more of the source."""
  spec = split_data._built_spec()  # pylint: disable=protected-access
  stored, resized = spec.get("max_short_side"), spec.get("resized")
  if not all(isinstance(v, int) and not isinstance(v, bool) for v in (stored, resized)):
    return None
  if not (0 < stored < load_size and resized > 0):
    return None
  return (f"{split_data.data_dir} was built with --max_short_side {stored}: {resized} of its "
          f"images were scaled down to {stored} px on the shorter side, which this pipeline "
          f"scales up to {load_size} px before its crop; rebuild it with --max_short_side "
          f"{load_size} (or 0) to train on the source's detail")


def _warn_if_stored_smaller(split_data, load_size):
  key = (split_data.data_dir, load_size)
  if key in _WARNED_SMALLER:
    return
  message = stored_smaller_message(split_data, load_size)
  if message:
    _WARNED_SMALLER.add(key)
    logging.warning("%s", message)


class DataPipeline:
  """tf.data batches of one split.

  Each batch is a dict:
    `image_<s>`: float32 `[B, s, s, 3]` in [-1, 1] for every pyramid size s (64, 128, 256 by default);
    `tokens`: int32 `[B, words_num]`, zero-padded; `length`: int32 `[B]`;
    `class_id`: int64 `[B]`; `index`: int64 `[B]` image index; `epoch`: int64 `[B]`.

  Args:
    split_data: from `load_split`.
    batch_size: images per batch; incomplete final batches of an epoch are dropped.
    words_num: caption length (18/12 training, 25/20 evaluation for birds/coco).
    base_size, num_stages: pyramid sizes `base_size * 2**i` (64/128/256 by default).
    seed: determines the epoch orders, caption choices, word dropping, crops and flips.
    augment: random crop + flip (training). False: centre crop, no flip.
    shuffle: False keeps the file order (e.g. for sampling every test image once).
    start_epoch, start_batch: where to begin (resume); the batches equal an uninterrupted run's.
    num_epochs: stop after this many epochs (None: repeat forever).
    num_parallel_calls: decode threads (tf.data.AUTOTUNE by default).
    num_shards, shard_index: multi-process training: this process reads rows
      `[shard_index * b, (shard_index + 1) * b)` of every global batch, b = batch_size /
      num_shards; the shards of a batch together are exactly the unsharded batch (same order,
      captions, crops and flips), so the run stays deterministic and resumable at any batch.
    batch_flag: the command-line flag of `batch_size`, named by the batch-too-large error.
  """

  def __init__(self, split_data, batch_size, words_num, base_size=64, num_stages=3, seed=0,
               augment=True, shuffle=True, start_epoch=0, start_batch=0, num_epochs=None,
               num_parallel_calls=None, num_shards=1, shard_index=0, batch_flag="--batch_size"):
    if batch_size < 1:
      raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if num_shards < 1 or not 0 <= shard_index < num_shards or batch_size % num_shards:
      raise ValueError(f"cannot read shard {shard_index} of {num_shards} of batches of "
                       f"{batch_size}: the batch must split evenly over the shards")
    if batch_size > split_data.num_images:
      raise ValueError(
          f"batch_size {batch_size} is larger than the {split_data.split} split of "
          f"{split_data.data_dir} ({split_data.num_images} images); lower {batch_flag}")
    if words_num < 1:
      raise ValueError(f"words_num must be >= 1, got {words_num}")
    self.data = split_data
    self.batch_size = batch_size
    self.words_num = words_num
    self.sizes = [base_size * 2 ** i for i in range(num_stages)]
    self.seed = int(seed)
    self.augment = augment
    self.shuffle = shuffle
    self.start_epoch = int(start_epoch)
    self.start_batch = int(start_batch)
    self.num_epochs = num_epochs
    self.num_parallel_calls = num_parallel_calls
    self.num_shards, self.shard_index = int(num_shards), int(shard_index)
    self.local_batch_size = batch_size // self.num_shards
    self.batches_per_epoch = split_data.num_images // batch_size
    if not 0 <= self.start_batch < self.batches_per_epoch:
      raise ValueError(f"start_batch {start_batch} outside 0..{self.batches_per_epoch - 1}")
    if split_data.dataset == "folder":  # built by data.build, maybe with --max_short_side
      from msmt_tf.data import transforms  # pylint: disable=g-import-not-at-top
      _warn_if_stored_smaller(split_data, transforms.load_size_for(max(self.sizes)))

  def order(self, epoch):
    if self.shuffle:
      return epoch_order(self.data.num_images, self.seed, epoch, self.batch_size)
    return np.arange(self.batches_per_epoch * self.batch_size)

  def _index_generator(self):
    epoch = self.start_epoch
    first = self.start_batch
    lo = self.shard_index * self.local_batch_size
    while self.num_epochs is None or epoch < self.start_epoch + self.num_epochs:
      order = self.order(epoch)
      for b in range(first, self.batches_per_epoch):
        rows = order[b * self.batch_size:(b + 1) * self.batch_size]
        for idx in rows[lo:lo + self.local_batch_size]:
          yield np.int64(epoch), np.int64(idx)
      first = 0
      epoch += 1

  def dataset(self):
    """Builds the `tf.data.Dataset` of batches."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from msmt_tf.data import transforms  # pylint: disable=g-import-not-at-top

    data = self.data
    counts = data.caption_counts
    first_caption = tf.constant(np.concatenate([[0], np.cumsum(counts)[:-1]]), tf.int64)
    caption_count = tf.constant(counts, tf.int64)
    flat = [cap for caps in data.captions for cap in caps]
    captions = tf.RaggedTensor.from_row_lengths(
        tf.constant(np.concatenate(flat).astype(np.int32)),
        tf.constant([len(c) for c in flat], tf.int64))
    paths = tf.constant(data.image_paths)
    class_ids = tf.constant(data.class_ids, tf.int64)
    use_bbox = data.bboxes is not None
    bboxes = tf.constant(data.bboxes if use_bbox else np.zeros((data.num_images, 4)), tf.float64)
    words_num, sizes, augment = self.words_num, self.sizes, self.augment
    load_size = transforms.load_size_for(max(sizes))
    base_seed = tf.constant(self.seed, tf.int64)
    num_images = tf.constant(data.num_images, tf.int64)

    def load(epoch, index):
      seed = tf.stack([base_seed, epoch * num_images + index])
      s_cap, s_drop, s_img = tf.unstack(tf.random.experimental.stateless_split(seed, 3))
      j = tf.random.stateless_uniform([], s_cap, 0, caption_count[index], dtype=tf.int64)
      tokens = transforms.drop_words(captions[first_caption[index] + j], words_num, s_drop)
      ids, length = transforms.pad_tokens(tokens, words_num)

      path = paths[index]
      raw = tf.io.read_file(path)
      is_image = tf.reduce_any(tf.stack([  # the same test as `header_problem`
          tf.strings.substr(raw, 0, len(magic)) == magic for magic, _ in IMAGE_MAGIC]))
      with tf.control_dependencies([tf.debugging.Assert(
          is_image, ["corrupt or non-image file (bad header):", path])]):
        image = tf.io.decode_image(raw, channels=3, expand_animations=False)
      if use_bbox:
        shape = tf.shape(image)
        box = transforms.cub_crop_box(bboxes[index], shape[1], shape[0])
        # A box outside its image leaves an empty crop, which the resize would divide by (an
        # unnamed "Integer division by zero"): stop here instead; `diagnose` names the file, the
        # bounding_boxes.txt line and the image size.
        with tf.control_dependencies([tf.debugging.Assert(
            tf.logical_and(box[2] > box[0], box[3] > box[1]),
            ["bounding box outside its image:", path])]):
          image = tf.identity(image[box[1]:box[3], box[0]:box[2], :])
      image = transforms.resized_crop(image, load_size, max(sizes), s_img if augment else None)
      out = {f"image_{s}": img for s, img in zip(sizes, transforms.image_pyramid(image, sizes))}
      out.update(tokens=ids, length=length, class_id=class_ids[index], index=index, epoch=epoch)
      return out

    ds = tf.data.Dataset.from_generator(
        self._index_generator,
        output_signature=(tf.TensorSpec([], tf.int64), tf.TensorSpec([], tf.int64)))
    ds = ds.map(load, num_parallel_calls=self.num_parallel_calls or tf.data.AUTOTUNE,
                deterministic=True)
    ds = ds.batch(self.local_batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE)

  def diagnose(self, epoch, batch, lookahead=2):
    """Names the images the pipeline fails on among batch `batch` of `epoch` and the next
    `lookahead`: unreadable, not a format TensorFlow decodes (`header_problem`), or (birds)
    with a bounding box outside the image; one line each."""
    problems = []
    for b in range(batch, batch + 1 + lookahead):
      e, bb = epoch + b // self.batches_per_epoch, b % self.batches_per_epoch
      for idx in self.order(e)[bb * self.batch_size:(bb + 1) * self.batch_size]:
        problem = self.data.image_problem(idx)
        if problem and problem not in problems:  # the lookahead may reach the same image again
          problems.append(problem)
    return problems

  def __iter__(self):
    return self.iterate(as_numpy=True)

  def iterate(self, as_numpy=True):
    """Iterates batches (numpy dicts, or tensors); a decode failure becomes a DatasetError
    naming the file."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    epoch, batch = self.start_epoch, self.start_batch
    it = iter(self.dataset())
    while True:
      try:
        out = next(it)
      except StopIteration:
        return
      except tf.errors.OpError as e:
        problems = self.diagnose(epoch, batch) or [f"{type(e).__name__}: {e.message.strip()}"]
        raise DatasetError(problems, hint="Replace or remove these images, or fix their boxes "
                           "(python -m msmt_tf.data.inspect lists every bad file).") from e
      yield {k: v.numpy() for k, v in out.items()} if as_numpy else out
      batch += 1
      if batch == self.batches_per_epoch:
        epoch, batch = epoch + 1, 0
