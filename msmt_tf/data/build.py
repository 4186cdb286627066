r"""Builds a dataset from your own captioned images (Hugging Face `ImageFolder` convention).

    python -m msmt_tf.data.build --source DIR --out data/NAME [--text_column text]
        [--class_column COLUMN] [--test_fraction 0.1] [--seed 0] [--min_word_count 1]
        [--max_short_side 355] [--skip_bad] [--workers N] [--overwrite]

The source folder holds image files (subfolders allowed) and one or more `metadata.jsonl` or
`metadata.csv` files with a `file_name` column (the image's path relative to that metadata file's
folder) and a text column. An image with several captions has several rows, or (JSONL; CSV: a
JSON list in the cell) a list of captions in one row. The output is a `folder` dataset that the
loaders read through the same code path as CUB and COCO (`--dataset=folder`):

    data/NAME/images/<key>              the images (JPEG kept byte for byte when it needs no
                                        change; anything else converted to RGB: JPEG q95 for
                                        JPEG sources, lossless PNG for the others; a shorter
                                        side over --max_short_side scaled down to it)
    data/NAME/text/<key>.txt            the image's captions, one per line
    data/NAME/{train,test}/filenames.pickle, caption_counts.pickle[, class_info.pickle]
    data/NAME/captions.pickle           word ids + vocabulary, made by the loader from text/
                                        (AttnGAN's tokenizer and build_dictionary)
    data/NAME/dataset_spec.json         what was built: counts, words_num, classes, parameters
    data/NAME/NAME.cfg                  flagfile for pretrain_damsm / train / metric_main / export
    data/NAME/skipped.txt               with --skip_bad: every row or file left out, and why

`<key>` is the image's path inside the source folder; a converted image whose extension does
not match its new format gets one appended (`a.webp` -> `a.webp.png`).

Colour: images are stored as sRGB (what TensorFlow's decoder, the training pipeline and the
metrics assume of any pixels). An RGB or grey image that carries an ICC profile other than sRGB
(a phone's Display P3, Adobe RGB, a grey gamma 1.8 profile) is converted from it with littlecms
(relative colorimetric) and stored without it; dataset_spec.json counts these by profile name
("colour_converted"). A CMYK image goes through its profile too (`image_utils.to_rgb`:
littlecms's default, perceptual intent), not counted there.

Image size: the input pipeline resizes each image's shorter side to 304 px before its 256 px
crop (GAN training) and to 355 px before its 299 px crop (DAMSM pretraining), so the build
stores an image whose shorter side is longer than --max_short_side (default 355) scaled down to
it (aspect kept, Lanczos; a 4032x3024 photo becomes 473x355). Kept at full size, a 12 MP photo
costs the pipeline tens of times the CPU of a CUB image at every step. --max_short_side 0 keeps
every image at its size (a warning then counts the images over 710 px and names the largest); a
dataset whose images were scaled below what a configuration resizes to is named when its
pipeline is made.

Every problem (unreadable or truncated image, image under 64 px, file listed but missing, image
without caption, duplicate listing, caption that is not UTF-8, empty or has no word) is reported
with its metadata file, line and file name. By default the build then stops (exit 1, the list also
written to `data/NAME.problems.txt`); `--skip_bad` leaves those rows and images out.

The split: top-level split folders, as Hugging Face's ImageFolder names them (SRC/train/ ->
train; SRC/test/ -> test, or SRC/validation/ when there is no test folder; also training/,
testing/, eval/, val/, dev/, train2017/ ...), else --test_fraction of the images, ranked by a hash
of --seed and their name. dataset_spec.json records which ("split"). The build stops when the
train split has fewer than 2 images (training pairs each image with another image's caption), and
warns (also in dataset_spec.json, "warnings") about a 1-image test split and a single class.

The build writes into `data/.NAME.build/` and renames it to `data/NAME` only when complete, so a
failed or interrupted build leaves no half dataset; rerunning the same command reuses the images
already converted (a changed source file is converted again).
"""

if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

import collections
import concurrent.futures
import csv
import dataclasses
import hashlib
import importlib
import io
import itertools
import json
import math
import multiprocessing
import os
import pickle
import posixpath
import re
import shlex
import shutil
import sys
import time
import unicodedata
import warnings

import numpy as np

from msmt_tf import image_utils
from msmt_tf import stopping
from msmt_tf.data import datasets
from msmt_tf.data import vocab as vocab_lib
from msmt_tf.data.errors import DatasetError

__all__ = ["build", "BuildError", "convert_image", "MIN_SIDE", "IMAGE_EXTENSIONS"]

BUILD_VERSION = 2  # 2: embedded colour profiles other than sRGB converted to sRGB
MIN_SIDE = 64
JPEG_QUALITY = 95
NAME_MAX = 255  # bytes in one file name: ext4, XFS, Btrfs, APFS (NTFS: 255 UTF-16 units)
DEFAULT_TEST_FRACTION = 0.1
# Images are stored with their shorter side at most this long (--max_short_side). The pipeline
# resizes the shorter side to `transforms.load_size_for(size)` (AttnGAN's 76/64) before its
# random crop: 304 for the GAN's 256 px, 355 for DAMSM pretraining's 299 px. Pixels past that
# are decoded at every step only to be averaged away (BUILD.md, "Input pipeline": a 12 MP
# photo costs the pipeline tens of times the CPU of a CUB image).
DEFAULT_MAX_SHORT_SIDE = 355
# A stored image whose shorter side is over this (4x the pixels training uses) is named in a
# warning: the pipeline, not the step, then sets the training speed.
_LARGE_SHORT_SIDE = 2 * DEFAULT_MAX_SHORT_SIDE
METADATA_NAMES = ("metadata.jsonl", "metadata.csv")
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".webp", ".gif", ".bmp", ".tif",
                    ".tiff", ".avif", ".heic", ".heif")
_JPEG_EXTS = (".jpg", ".jpeg", ".jpe", ".jfif")
_IGNORED_DIRS = ("__MACOSX",)
# Hugging Face `datasets` split names (data_files.SPLIT_KEYWORDS): a folder named the keyword, or
# the keyword followed by one of "-._ 0-9" and anything (train2017, test-set, val_1).
_SPLIT_KEYWORDS = (("train", ("train", "training")),
                   ("validation", ("validation", "valid", "dev", "val")),
                   ("test", ("test", "testing", "eval", "evaluation")))
_NON_WORD_CHARS = "-._ 0123456789"
_STATE = "build_state.json"
_PROGRESS = "progress.jsonl"
# Where an image whose stored name another source file could also take is converted (one folder
# per source file), until the clash check says which file keeps the name: converted straight to
# images/, the second file would overwrite the first one's pixels under the first one's caption.
_CONTESTED = "contested"
# Words per caption: the proposal is the 75th / 95th percentile of the training captions'
# lengths (the paper uses 18 / 25 for CUB, 12 / 20 for COCO), at least the MTWIG kernel (3) and
# at most these caps (longer captions keep a random subset of their words, as in AttnGAN).
_WORDS_MIN, _WORDS_TRAIN_MAX, _WORDS_EVAL_MAX = 3, 30, 40


class BuildError(DatasetError):
  """The source folder has problems; `problems` lists each with its file and row."""


@dataclasses.dataclass
class _Row:
  meta: str            # metadata file, relative to the source folder
  line: int            # 1-based line where the row starts
  file_name: str       # as written in the row
  rel: str = None      # resolved image path relative to the source folder
  captions: list = None
  klass: str = None

  @property
  def where(self):
    return f"{self.meta}:{self.line}"


def _sort_key(problem):
  """Problems sorted by metadata file and line; files without a row (unlisted images) last."""
  head = problem.split(": ", 1)[0]
  meta, _, line = head.rpartition(":")
  if meta and line.isdigit():
    return (0, meta, int(line), problem)
  return (1, head, 0, problem)


def _problem(where, file_name, message):
  return f"{where}: {file_name}: {message}" if file_name is not None else f"{where}: {message}"


def _bad_utf8(text):
  """The bytes of `text` (decoded with surrogateescape) that were not UTF-8, or None."""
  bad = [c for c in text if "\udc80" <= c <= "\udcff"]
  if not bad:
    return None
  return "".join(f"\\x{ord(c) - 0xdc00:02x}" for c in bad[:4])


def _not_text(text):
  """Why `text` cannot be written as UTF-8 ("not valid UTF-8 (bytes ...)", "not valid Unicode
  (...)"), or None. The first: bytes that were not UTF-8 (read with surrogateescape). The second:
  a UTF-16 surrogate alone, which JSON may spell ("\\ud83d": half of an emoji's pair, as in a
  caption cut inside it) and json.loads keeps; reported as its row's problem instead of the
  build failing when it writes the captions."""
  bad = _bad_utf8(text)
  if bad:
    return f"not valid UTF-8 (bytes {bad})"
  for c in text:
    if "\ud800" <= c <= "\udfff":
      return (f"not valid Unicode (a lone UTF-16 surrogate U+{ord(c):04X}: half of a character "
              "pair, as when text is cut inside an emoji)")
  return None


# --------------------------------------------------------------------------- metadata reading

def _walk(source, skipped=None):
  """`os.walk(source)`, top-down in sorted order, following links to folders (a linked image
  folder is common) but entering each real folder once: a link loop, or a second link to the same
  folder, is not walked again. Hidden and `_IGNORED_DIRS` folders are skipped. `skipped`, when a
  list, receives `(folder, read_as)` (relative '/' paths) for each folder left out because the
  folder it leads to was read under another name (a link back up, a loop, is not listed)."""
  seen = {}
  for folder, dirs, files in os.walk(source, followlinks=True):
    real = os.path.realpath(folder)
    if real in seen:
      dirs[:] = []
      if skipped is not None and not _leads_up(source, folder, real):
        skipped.append((_rel(source, folder), _rel(source, seen[real])))
      continue
    seen[real] = folder
    dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in _IGNORED_DIRS)
    yield folder, dirs, files


def _leads_up(source, folder, real):
  """Whether `folder` (a path under `source` as walked) leads to one of the folders it is in."""
  source = os.path.normpath(source)
  parent = os.path.dirname(os.path.normpath(folder))
  while len(parent) >= len(source):
    if os.path.realpath(parent) == real:
      return True
    if parent == source:
      break
    parent = os.path.dirname(parent)
  return False


def _rel(source, folder):
  """`folder` relative to `source` with '/' separators; '' for `source` itself."""
  rel = os.path.relpath(folder, source)
  return "" if rel == "." else rel.replace(os.sep, "/")


def find_metadata(source):
  """The metadata files under `source` (relative paths, sorted), skipping hidden folders."""
  found, problems = [], []
  for folder, _, files in _walk(source):
    present = [n for n in METADATA_NAMES if n in files]
    rel = _rel(source, folder)
    if len(present) > 1:
      problems.append(f"{rel or '.'}/ holds both metadata.jsonl and metadata.csv; keep one")
    found.extend(posixpath.join(rel, n) for n in present)
  if problems:
    raise BuildError(problems)
  if not found:
    raise BuildError(f"no metadata.jsonl or metadata.csv in {source} (nor in its subfolders)",
                     hint="Write one row per caption: {\"file_name\": \"img1.jpg\", \"text\": "
                     "\"a caption\"} (JSONL) or a CSV with the header file_name,text.")
  return sorted(found)


def _split_captions(value, from_csv):
  """A cell -> list of captions, or a string saying why it is not one."""
  if isinstance(value, str):
    stripped = value.strip()
    if from_csv and stripped.startswith("[") and stripped.endswith("]"):
      try:
        items = json.loads(stripped)
      except ValueError:
        items = None
      if isinstance(items, list) and all(isinstance(i, str) for i in items):
        return items
    if from_csv and re.match(r'\[\s*"', stripped):  # meant as a list; one caption is not this
      return (f"the cell {stripped[:60]!r} starts like a JSON list of captions but is not one "
              "(a list is [\"caption 1\", \"caption 2\"], with the closing bracket)")
    return [value]
  if isinstance(value, list):
    if not all(isinstance(i, str) for i in value):
      return f"the caption list holds a non-text item ({next(i for i in value if not isinstance(i, str))!r})"
    return list(value)
  return f"the caption is not text ({type(value).__name__} {value!r})"


def _records(meta_path, meta_rel):
  """Yields (line, dict or problem string) for each row of one metadata file; returns columns."""
  with open(meta_path, "rb") as f:
    raw = f.read()
  if raw.startswith(b"\xef\xbb\xbf"):
    raw = raw[3:]
  if raw.startswith((b"\xff\xfe", b"\xfe\xff")):
    raise BuildError(f"{meta_rel}: is UTF-16 text; save it as UTF-8")
  text = raw.decode("utf8", "surrogateescape")
  if meta_rel.endswith(".jsonl"):
    if text.lstrip().startswith("["):  # a JSON array of objects instead of JSON lines
      try:
        items = json.loads(text)
      except ValueError as e:
        raise BuildError(f"{meta_rel}: starts with '[' but is not a JSON array ({e}); write "
                         "one JSON object per line") from e
      for i, obj in enumerate(items if isinstance(items, list) else [items], start=1):
        yield i, obj if isinstance(obj, dict) else f"item {i} is not a JSON object"
      return
    for lineno, line in enumerate(text.split("\n"), start=1):
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except ValueError as e:
        yield lineno, f"not a JSON object ({e})"
        continue
      if not isinstance(obj, dict):
        yield lineno, f"not a JSON object (a {type(obj).__name__})"
        continue
      yield lineno, obj
    return
  first = text.split("\n", 1)[0].rstrip("\r")
  skip_lines = 0
  if first.startswith("sep=") and len(first) == 5:  # Excel's delimiter hint line
    delimiter, skip_lines = first[4], 1
    text = text.split("\n", 1)[1] if "\n" in text else ""
  elif "," not in first:
    delimiter = "\t" if "\t" in first else (";" if ";" in first else ",")
  else:
    delimiter = ","
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
  try:
    header = next(reader)
  except StopIteration:
    raise BuildError(f"{meta_rel}: is empty; it needs a header row with file_name and a text "
                     "column") from None
  header = [h.strip() for h in header]
  last = reader.line_num + skip_lines
  try:
    for record in reader:
      start, last = last + 1, reader.line_num + skip_lines
      if not record or all(not c.strip() for c in record):
        continue
      if len(record) != len(header):
        yield start, f"has {len(record)} fields, the header has {len(header)}"
        continue
      yield start, dict(zip(header, record))
  except csv.Error as e:
    yield last + 1, f"CSV syntax error ({e}); the rest of the file was not read"


def read_metadata(source, meta_rel, text_column, class_column):
  """Reads one metadata file; returns (rows, problems)."""
  rows, problems, seen_columns = [], [], set()
  base = posixpath.dirname(meta_rel)
  for line, obj in _records(os.path.join(source, meta_rel), meta_rel):
    where = f"{meta_rel}:{line}"
    if isinstance(obj, str):
      problems.append(_problem(where, None, obj))
      continue
    seen_columns.update(obj)
    file_name = obj.get("file_name")
    if not isinstance(file_name, str) or not file_name.strip():
      problems.append(_problem(where, None, f"no file_name (got {file_name!r})"))
      continue
    bad = _not_text(file_name)
    if bad:
      shown = (file_name.encode("utf8", "surrogateescape").decode("utf8", "replace")
               if bad.startswith("not valid UTF-8")
               else file_name.encode("utf8", "backslashreplace").decode())
      problems.append(_problem(where, shown, f"file_name is {bad}"))
      continue
    row = _Row(meta_rel, line, file_name)
    if text_column not in obj:  # a JSON row without the field (a CSV row always has it)
      caps = f"no {text_column!r} field in this row"
    elif obj[text_column] is None:
      caps = f"the caption is null ({text_column!r}: null)"
    else:
      caps = _split_captions(obj[text_column], meta_rel.endswith(".csv"))
    if isinstance(caps, str):
      problems.append(_problem(where, file_name, caps))
      caps = None  # reported here; not again as an empty caption
    row.captions = caps
    if class_column:
      value = obj.get(class_column)
      if value is None or (isinstance(value, str) and not value.strip()):
        problems.append(_problem(where, file_name, f"no class in column {class_column!r}"))
        row.klass = None
      elif isinstance(value, (dict, list)):
        problems.append(_problem(where, file_name, f"class {value!r} is not a single value"))
      else:
        klass = str(value).strip()
        bad = _not_text(klass)
        if bad:
          problems.append(_problem(where, file_name, f"class is {bad}"))
        else:
          row.klass = klass
    row.rel = _normalise(source, base, file_name)
    rows.append(row)
  for column in ["file_name", text_column] + ([class_column] if class_column else []):
    if rows or seen_columns:
      if column not in seen_columns:
        flag = {text_column: "--text_column", class_column: "--class_column"}.get(column)
        others = _column_list(c for c in seen_columns if c != "file_name")
        raise BuildError(f"{meta_rel}: no column {column!r}"
                         + (f"; pass {flag} (columns: {others})" if flag else
                            f" (columns: {_column_list(seen_columns)})"))
  return rows, problems


def _column_list(columns):
  """Column names for a message: sorted, an empty header cell named as such."""
  names = sorted({c if c.strip() else "(unnamed column)" for c in columns})
  return ", ".join(names) or "none"


def _normalise(source, base, file_name):
  """The path of `file_name` relative to the source folder, or None if it leaves it. An
  absolute path is accepted when it lies inside the source folder."""
  name = file_name.replace("\\", "/")
  if name.startswith("/"):
    root = source.replace(os.sep, "/").rstrip("/") + "/"
    if not posixpath.normpath(name).startswith(root):
      return None
    return posixpath.normpath(name)[len(root):] or None
  if len(name) > 1 and name[1] == ":":
    return None
  path = posixpath.normpath(posixpath.join(base, name))
  if path == "." or path.startswith("../") or path == "..":
    return None
  return path


# --------------------------------------------------------------------------- images

def _orientation(im):
  try:
    value = im.getexif().get(0x0112, 1)
  except Exception:  # A broken EXIF block: treat as upright.
    return 1
  return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _name_candidates(rel):
  """The stored names `rel` can get (lower case): itself, or with .jpg / .png appended."""
  lower = rel.lower()
  return (lower, lower + ".jpg", lower + ".png")


def scaled_size(width, height, max_short_side):
  """`(width, height)` with the shorter side scaled down to `max_short_side`, the longer side
  `int(max_short_side * long / short)` (truncated, as the pipeline's and torchvision's
  `Resize(int)`), or unchanged when the shorter side is not longer (or `max_short_side` is 0)."""
  short, long_ = min(width, height), max(width, height)
  if not max_short_side or short <= max_short_side:
    return width, height
  other = int(max_short_side * long_ / short)
  return (max_short_side, other) if width == short else (other, max_short_side)


def turn_upright(image, orientation):
  """`image` (pixels as stored in a file of EXIF `orientation`, 1-8) turned upright: the turn
  `ImageOps.exif_transpose` makes, for an image that no longer carries the EXIF tag (resized)."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  if orientation == 1:
    return image
  t = Image.Transpose
  return image.transpose({2: t.FLIP_LEFT_RIGHT, 3: t.ROTATE_180, 4: t.FLIP_TOP_BOTTOM,
                          5: t.TRANSPOSE, 6: t.ROTATE_270, 7: t.TRANSVERSE,
                          8: t.ROTATE_90}[orientation])


_SRGB_TRANSFORMS = {}  # per process: ICC profile bytes -> (transform or None, description)


def srgb_transform(icc, mode):
  """`(transform, description)` taking an image of `mode` ("RGB", or "L" for a grey profile)
  tagged with the ICC profile `icc` (bytes) to sRGB, or `(None, None)` where the pixels are used
  as they are: no profile, a CMYK one (`image_utils.to_rgb` converts those), a profile of another
  colour space than `mode`'s, one littlecms cannot read (untagged, as browsers treat it), or a
  profile that already is sRGB in effect: a transform moving no colour of a 6x6x6 grid (or of
  the grey ramp) by more than one level, whatever the profile calls itself. Relative
  colorimetric intent (the source's white to sRGB's white; out-of-gamut colours clipped), what
  colour-managed viewers show. Cached per profile (a phone's photos share one)."""
  if not icc or mode not in ("RGB", "L"):
    return None, None
  key = (bytes(icc), mode)
  if key not in _SRGB_TRANSFORMS:
    from PIL import Image  # pylint: disable=g-import-not-at-top
    from PIL import ImageCms  # pylint: disable=g-import-not-at-top
    found = (None, None)
    try:
      profile = ImageCms.ImageCmsProfile(io.BytesIO(key[0]))
      space = profile.profile.xcolor_space.strip()
      if (space, mode) in (("RGB", "RGB"), ("GRAY", "L")):
        transform = ImageCms.buildTransform(
            profile, ImageCms.createProfile("sRGB"), mode, "RGB",
            renderingIntent=ImageCms.Intent.RELATIVE_COLORIMETRIC)
        levels = np.arange(0, 256, 51, dtype=np.uint8)
        if mode == "RGB":
          probe = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(1, -1, 3)
          want = probe
        else:
          probe = np.arange(256, dtype=np.uint8).reshape(1, -1)
          want = np.repeat(probe[..., None], 3, axis=-1)
        moved = np.asarray(ImageCms.applyTransform(Image.fromarray(probe, mode), transform))
        if np.abs(moved.astype(np.int16) - want).max() > 1:
          name = (ImageCms.getProfileDescription(profile) or "").strip()
          found = (transform, name or "an unnamed profile")
    except (ImageCms.PyCMSError, OSError, ValueError):  # a profile littlecms cannot read
      found = (None, None)
    if len(_SRGB_TRANSFORMS) >= 64:  # a folder of images with a profile each: bounded
      _SRGB_TRANSFORMS.clear()
    _SRGB_TRANSFORMS[key] = found
  return _SRGB_TRANSFORMS[key]


def to_srgb(rgb, transform, mode):
  """`rgb` (8-bit RGB from `image_utils.to_rgb`, its values still in the source's colour space)
  through `srgb_transform`'s transform; grey (`mode` "L") is read back from the equal channels."""
  from PIL import ImageCms  # pylint: disable=g-import-not-at-top
  return ImageCms.applyTransform(rgb.convert("L") if mode == "L" else rgb, transform)


def convert_image(src, rel, images_dir, min_side=MIN_SIDE, contested=(), max_short_side=0):
  """Checks one source image and writes it (atomically) as `images_dir/<key>`, or, when its key
  (lower case) is in `contested` (another source file may take the same name), as
  `<images_dir>/../contested/<hash of rel>/<key's file name>` (`staged` in the result).

  An image whose shorter side (upright) is longer than `max_short_side` (0: no limit) is scaled
  down to it (`scaled_size`; Lanczos, a JPEG first decoded at the smallest 1/2, 1/4 or 1/8 DCT
  scale still twice the target, as Pillow's `thumbnail`) and stored in its format family (JPEG
  q95 4:4:4, else PNG).

  Returns a dict: key (the stored name, None when the image is not usable), problem (None or
  why), width, height (the source image's, upright), stored_width, stored_height, action
  ('kept', 'converted', 'rotated', 'resized'), src_size, src_mtime_ns, size, staged (the path
  relative to the build folder where it is not images/<key>, else None), colour (the embedded
  colour profile's name when the pixels were converted from it to sRGB, else None:
  `srgb_transform`; a CMYK profile is applied by `image_utils.to_rgb`).
  """
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from PIL import ImageOps  # pylint: disable=g-import-not-at-top
  out = dict(rel=rel, key=None, problem=None, width=0, height=0, action=None, colour=None)
  try:
    st = os.stat(src)
    with open(src, "rb") as f:
      data = f.read()
  except OSError as e:
    out["problem"] = f"cannot read the file ({e.strerror or e})"
    return out
  out.update(src_size=st.st_size, src_mtime_ns=st.st_mtime_ns)
  try:
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      # Pillow refuses to open an image over twice Image.MAX_IMAGE_PIXELS (179 MP: a
      # decompression bomb). The check is made here on the pixels decoded instead: a JPEG scaled
      # down is decoded at a DCT scale (1/2 .. 1/8), so a 400 MP scan costs 6-50 MP.
      limit = Image.MAX_IMAGE_PIXELS
      Image.MAX_IMAGE_PIXELS = None
      try:
        im = Image.open(io.BytesIO(data))
      finally:
        Image.MAX_IMAGE_PIXELS = limit
      fmt = im.format
      rawmode = im.tile[0][3] if im.tile and isinstance(im.tile[0][3], str) else None
      bits = image_utils.sample_bits(im)  # the decoder's raw mode is gone after load()
      frames = getattr(im, "n_frames", 1)
      jpeg = fmt in ("JPEG", "MPO")

      def too_large(size, how):
        if limit and size[0] * size[1] > 2 * limit:
          return (f"image is too large to decode safely: {how} {size[0]}x{size[1]} = "
                  f"{size[0] * size[1]:,} pixels, over Pillow's limit of {2 * limit:,} (a "
                  "decompression bomb); a JPEG scaled down (--max_short_side) is decoded at "
                  "up to 1/8 of its size")
        return None

      if not jpeg:
        out["problem"] = too_large(im.size, "it decodes at")
        if out["problem"]:
          return out
        im.load()  # the first frame; a truncated file raises here (a PNG's EXIF may follow it)
      orientation = _orientation(im)  # a JPEG's EXIF is read with its header: not loaded yet
      turned = orientation in (5, 6, 7, 8)  # stored on its side
      width, height = im.size[::-1] if turned else im.size
      out.update(width=width, height=height)
      if width < min_side or height < min_side:
        out["problem"] = (f"image is {width}x{height} px; images need at least {min_side} px "
                          "on each side")
        return out
      target = scaled_size(width, height, max_short_side)
      resize = target != (width, height)
      stored = target[::-1] if turned else target  # the target in the file's orientation
      box = None
      if jpeg:
        if resize:  # decode at a DCT scale (1/2 .. 1/8) still at least twice the target
          drafted = im.draft(None, (2 * stored[0], 2 * stored[1]))
          box = drafted[1] if drafted else None  # the source area the drafted pixels cover
        out["problem"] = too_large(im.size, "at the DCT scale of its stored size it still "
                                   "decodes at" if resize else "it decodes at")
        if out["problem"]:
          return out
        im.load()  # a truncated file raises here
      # A grey image's profile is grey; any other non-CMYK image's, RGB (to_rgb keeps its space).
      grey = im.mode in ("1", "L", "LA", "La", "F") or im.mode.startswith("I")
      colour_mode = "L" if grey else "RGB"
      transform, out["colour"] = srgb_transform(
          None if im.mode == "CMYK" else im.info.get("icc_profile"), colour_mode)

      def srgb(rgb):
        return rgb if transform is None else to_srgb(rgb, transform, colour_mode)

      plain = (orientation == 1 and frames == 1 and "transparency" not in im.info and
               transform is None)
      if resize:  # Lanczos in the file's orientation, then turned upright
        rgb = turn_upright(srgb(image_utils.to_rgb(im, bits)).resize(stored, Image.LANCZOS,
                                                                     box=box), orientation)
        action = "resized"
      elif fmt == "JPEG" and im.mode == "RGB" and plain:
        payload, ext, action = data, ".jpg", "kept"
      elif fmt == "PNG" and im.mode == "RGB" and rawmode == "RGB" and plain:
        payload, ext, action = data, ".png", "kept"
      else:
        upright = ImageOps.exif_transpose(im) if orientation != 1 else im
        rgb = srgb(image_utils.to_rgb(upright, bits))
        action = "rotated" if orientation != 1 else "converted"
      if action != "kept":
        buf = io.BytesIO()
        if jpeg:
          rgb.save(buf, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
          ext = ".jpg"
        else:
          rgb.save(buf, format="PNG", compress_level=3)
          ext = ".png"
        payload = buf.getvalue()
      out.update(stored_width=target[0], stored_height=target[1])
  except Image.DecompressionBombError as e:
    out["problem"] = f"image is too large to decode safely ({e})"
    return out
  except Image.UnidentifiedImageError:
    out["problem"] = ("empty file (0 bytes)" if not data else
                      "not an image file Pillow can read (unknown or unsupported format)")
    if data and rel.lower().endswith((".heic", ".heif", ".avif")):
      out["problem"] += "; this Pillow cannot read HEIC/AVIF: convert these files to JPEG"
    return out
  except Exception as e:  # PIL raises many types for bad files.
    out["problem"] = f"unreadable or truncated image ({type(e).__name__}: {e})"
    return out
  lower = rel.lower()
  matches = lower.endswith(_JPEG_EXTS) if ext == ".jpg" else lower.endswith(".png")
  key = rel if matches else rel + ext
  staged = None
  if key.lower() in contested:
    digest = hashlib.sha256(rel.encode("utf8")).hexdigest()[:20]
    staged = f"{_CONTESTED}/{digest}/{posixpath.basename(key)}"
    dst = os.path.join(os.path.dirname(images_dir), *staged.split("/"))
  else:
    dst = os.path.join(images_dir, *key.split("/"))
  name_bytes = len(posixpath.basename(key).encode("utf8", "surrogateescape"))
  if name_bytes + len(".txt") > NAME_MAX:
    out["problem"] = (f"file name too long: the stored image is named {name_bytes} bytes and its "
                      f"captions file adds .txt, past the {NAME_MAX} bytes most file systems "
                      "allow in a name; rename the file (and its row)")
    return out
  try:
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    # Beside the image, named shortly: a name near the limit leaves no room for a suffix.
    tmp = os.path.join(os.path.dirname(dst), f".{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
      f.write(payload)
    os.replace(tmp, dst)
  except OSError as e:  # disk full, permissions: stop the build, never skip the image
    out["fatal"] = f"cannot write {dst} ({e.strerror or e})"
    return out
  out.update(key=key, action=action, size=len(payload), staged=staged)
  return out


def usable_cores():
  """The CPU cores this process may run on (its affinity: `taskset`, Slurm, a container's
  cpuset), not the machine's count (`os.cpu_count()`): the default --workers."""
  if hasattr(os, "sched_getaffinity"):
    return len(os.sched_getaffinity(0)) or 1
  return os.cpu_count() or 1


def _convert_task(task):
  return convert_image(*task)


def _convert_chunk(tasks):
  return [convert_image(*task) for task in tasks]


def _pooled(pool, tasks, chunksize, window):
  """`pool.map(_convert_task, tasks, chunksize=...)` in order, at most `window` chunks submitted
  ahead, and never cancelling a future. `Executor.map` cancels its pending futures when it is
  left (Ctrl-C, SIGTERM, a write error); Python 3.11's pool thread, finding a worker stopped,
  then sets an error on every pending future, and on a cancelled one raises InvalidStateError:
  a traceback printed under the stop message (fixed in Python 3.12)."""
  chunks = (tasks[i:i + chunksize] for i in range(0, len(tasks), chunksize))
  # The module's own function (not __main__'s under python -m), so workers import it.
  convert = importlib.import_module("msmt_tf.data.build")._convert_chunk  # pylint: disable=protected-access
  ahead = collections.deque(pool.submit(convert, c) for c in itertools.islice(chunks, window))
  while ahead:
    done = ahead.popleft().result()
    ahead.extend(pool.submit(convert, c) for c in itertools.islice(chunks, 1))
    yield from done


def _ignore_sigint():
  """Workers leave Ctrl-C to the parent, which stops them (a pool interrupted in every process
  at once can hang), and die on SIGTERM: a forked worker inherits the parent's handler
  (`stopping.sigterm_as_interrupt`), which would turn the parent's `terminate()` into a
  traceback in the worker, or a worker that goes on with its queue."""
  import signal  # pylint: disable=g-import-not-at-top
  signal.signal(signal.SIGINT, signal.SIG_IGN)
  signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _terminate(pool):
  """Stops the workers now, not after their queued work: SIGKILL, as a worker not yet past its
  initializer still has the parent's SIGTERM handler (a traceback of its own). No future is
  cancelled (see _pooled): the pool's thread ends the pending ones itself when it finds the
  workers gone. A worker killed mid-write leaves only its `.PID.tmp` file in staging, which the
  build's last clean-up of images/ removes."""
  processes = list((getattr(pool, "_processes", None) or {}).values())
  for p in processes:
    if p.is_alive():
      p.kill()
  pool.shutdown(wait=False)
  for p in processes:
    p.join(5)


def _mp_context():
  """fork on Linux while no threaded library (TensorFlow) is loaded (fast, works from any
  __main__, notebooks included); spawn otherwise."""
  if sys.platform.startswith("linux") and "tensorflow" not in sys.modules and (
      "jax" not in sys.modules):
    return multiprocessing.get_context("fork")
  return multiprocessing.get_context("spawn")


# --------------------------------------------------------------------------- helpers

class _Progress:
  """A progress bar on stderr (a line every 10% when stderr is not a terminal)."""

  def __init__(self, total, label, enabled=True, stream=None, already=0):
    self.total, self.label, self.enabled = total, label, enabled and total > already
    self.stream = stream or sys.stderr
    self.tty = hasattr(self.stream, "isatty") and self.stream.isatty()
    self.done, self.already = already, already
    self.start, self.last, self.next_pct = time.time(), 0.0, 10

  def update(self, n=1):
    self.done += n
    if not self.enabled:
      return
    now = time.time()
    pct = 100 * self.done // self.total
    if self.tty and (now - self.last > 0.2 or self.done == self.total):
      self.last = now
      self.stream.write("\r" + self._line(now))
      self.stream.flush()
    elif not self.tty and (pct >= self.next_pct or self.done == self.total):
      self.next_pct = pct // 10 * 10 + 10
      self.stream.write(self._line(now) + "\n")
      self.stream.flush()

  def _line(self, now):
    elapsed = max(now - self.start, 1e-9)
    rate = (self.done - self.already) / elapsed
    eta = (self.total - self.done) / rate if rate > 0 else 0
    width = 30
    fill = width * self.done // self.total
    return (f"{self.label} [{'#' * fill}{'.' * (width - fill)}] {self.done}/{self.total} "
            f"{rate:.0f}/s, {elapsed:.0f} s, ETA {eta:.0f} s ")

  def close(self):
    if self.enabled and self.tty:
      self.stream.write("\n")
      self.stream.flush()


def _write(path, data):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "wb") as f:
    f.write(data)


def _scan(source, skipped=None):
  """Every image-like file under `source` (relative '/' paths), skipping hidden files/folders;
  `skipped`: see `_walk`."""
  found = []
  for folder, _, files in _walk(source, skipped):
    rel = _rel(source, folder)
    for name in sorted(files):
      if not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS):
        found.append(posixpath.join(rel, name))
  return found


def _resolve(source, rel, by_lower):
  """The existing file `rel` names: as written, in the other Unicode normal form (macOS names
  are NFD), with surrounding spaces removed, or the one file whose name differs only in letter
  case. Returns (rel or None, note or None)."""
  candidates = [rel, unicodedata.normalize("NFC", rel), unicodedata.normalize("NFD", rel),
                rel.strip()]
  for cand in candidates:
    if os.path.isfile(os.path.join(source, *cand.split("/"))):
      return cand, None if cand == rel else f"{rel!r} found as {cand!r}"
  same = by_lower.get(unicodedata.normalize("NFC", rel).lower(), [])
  if len(same) == 1:
    found = same[0]
    if found == rel:  # spelt right but not a readable file (a broken link): reported when read
      return found, None
    nfc = lambda name: unicodedata.normalize("NFC", name)
    why = " (letter case differs)" if nfc(found) != nfc(rel) else ""  # else the Unicode form
    return found, f"{rel!r} found as {found!r}{why}"
  return None, None


def _split_name(folder):
  """The split ('train', 'validation', 'test') a folder's name gives in Hugging Face `datasets`
  (any letter case here), or None."""
  lower = folder.lower()
  for split, keywords in _SPLIT_KEYWORDS:
    for word in keywords:
      if lower == word or (lower.startswith(word) and lower[len(word)] in _NON_WORD_CHARS):
        return split
  return None


def _split_folders(source, scanned):
  """`(folders, warning)`: the split the source's top-level folders give (Hugging Face
  ImageFolder: SRC/train/..., SRC/test/...), as a dict of folder lists: train, test and left_out
  (validation folders when test folders exist: the dataset has no validation split); None when
  no top-level folder holding images is a test or validation folder, or when there is no train
  folder beside it (then the images are split by hash, and `warning` says why)."""
  tops = sorted({rel.split("/", 1)[0] for rel in scanned if "/" in rel}, key=_natural)
  found = {"train": [], "validation": [], "test": []}
  for top in tops:
    split = _split_name(top)
    if split:
      found[split].append(top)
  if not found["test"] and not found["validation"]:
    return None, None
  held_out = found["test"] or found["validation"]
  if not found["train"]:  # a folder of the user's own that happens to be named so (dev_boards/)
    return None, (
        f"{', '.join(t + '/' for t in held_out)}: named like a Hugging Face split folder, but the "
        f"source has no training folder (train/, training/), so the images were split by "
        "--test_fraction; to use split folders, put the training images in SRC/train/")
  return dict(train=found["train"], test=held_out,
              left_out=found["validation"] if found["test"] else []), None


def _nested_split_folders(scanned):
  """Folders below the top level named like a test or validation folder (data/test/): Hugging
  Face reads split folders at any depth, this build only at the top."""
  found = set()
  for rel in scanned:
    parts = rel.split("/")
    for i in range(1, len(parts) - 1):
      if _split_name(parts[i]) in ("test", "validation"):
        found.add("/".join(parts[:i + 1]))
        break
  return sorted(found, key=_natural)


def _natural(text):
  """Sort key: 'c2' before 'c10', '-1' before '3'."""
  if text.lstrip("-").isdigit():
    return (0, [int(text)], text)
  return (1, [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)], text)


def _percentile_words(lengths, q, lo, hi):
  return int(min(hi, max(lo, math.ceil(np.percentile(lengths, q)))))


def _max_epochs(num_train):
  """The paper's budgets: 1000 epochs for CUB (8,855 train images), 210 for COCO (82,783);
  log-linear in between, the nearest one outside."""
  lo, hi = math.log(8855), math.log(82783)
  t = min(1.0, max(0.0, (math.log(max(num_train, 1)) - lo) / (hi - lo)))
  return int(round(1000 + (210 - 1000) * t))


# Floors on the intervals, in steps: on a small train split an epoch is a step or two, and the
# paper-sized model's checkpoint (weights and Adam states of both networks) and sample grid are
# too large to write every few steps.
MIN_CHECKPOINT_STEPS = 200
MIN_SAMPLE_STEPS = 100


def _flagfile(name, out, summary):
  batch = summary["batch_size"]
  steps = max(1, summary["train_images"] // batch)  # per epoch (drop_remainder)
  checkpoint_every = max(5 * steps, MIN_CHECKPOINT_STEPS)
  sample_every = max(steps, MIN_SAMPLE_STEPS)
  damsm_batch = max(2, min(48, summary["train_images"]))  # AttnGAN's 48, or the whole split

  def every(flag, interval, epochs):
    if interval == epochs * steps:
      return f"# --{flag} counts steps: {epochs} epoch(s) of {steps} steps (batch {batch})"
    return (f"# --{flag} counts steps: {interval}, a floor for small datasets ({epochs} "
            f"epoch(s) = {epochs * steps} step(s))")
  per_image = summary["captions_per_image"]
  return "\n".join([
      f"# MSMT-GAN on '{name}', built by python -m msmt_tf.data.build from {summary['source']}",
      f"# data: folder dataset, {summary['train_images']} train + {summary['test_images']} test "
      f"images, {per_image['min']}-{per_image['max']} captions per image (mean "
      f"{per_image['mean']}),",
      f"# words_num = 75th / 95th percentile of the caption lengths: {summary['words_num_train']}"
      f" training, {summary['words_num_eval']} evaluation (dataset_spec.json)",
      "--dataset=folder",
      f"--data_dir={out}",
      f"--vocab_size={summary['vocab_size']}",
      f"--words_num={summary['words_num_train']}",
      "# model: the paper's dimensions (configs/cub.cfg): MTWIG (ks 3) + two IMHM stages of",
      "# T=6 SDM heads; N_r 48, N_m 96, h 8",
      "--initial_stage=mtwig", "--refinement=imhm", "--channels=48", "--memory_dim=96",
      "--grid=8", "--num_heads=6", "--num_res=2", "--kernel_size=3", "--ndf=32",
      "# training (paper): batch 20"
      + ("" if batch == 20 else f" (here {batch}: the train split is smaller)")
      + ", Adam 2e-4 (0.5, 0.999),",
      "# lambda 1 / 0.5 / 5; epochs scaled between the paper's CUB (1000 for 8,855 images) and",
      "# COCO (210 for 82,783) budgets",
      f"--max_epochs={_max_epochs(summary['train_images'])}",
      f"--batch_size={batch}",
      "--lambda1=1", "--lambda2=0.5", "--lambda3=5",
      f"--damsm_dir=runs/{name}/damsm",
      f"--run_dir=runs/{name}/gan",
      every("checkpoint_every", checkpoint_every, 5),
      every("sample_every", sample_every, 1),
      f"--checkpoint_every={checkpoint_every}",
      f"--sample_every={sample_every}",
      "--log_every=50",
      "# DAMSM pretraining (AttnGAN): Inception-v3 trunk (pass --inception_weights=PATH, or",
      "# --image_encoder_trunk=small without ImageNet weights), batch 48"
      + ("" if damsm_batch == 48 else f" (here {damsm_batch}:"),
      *([] if damsm_batch == 48 else ["# the train split is smaller)"]),
      "--image_encoder_trunk=inception_v3",
      f"--damsm_words_num={summary['words_num_train']}",
      f"--damsm_batch_size={damsm_batch}",
      ""])


def _is_folder_dataset(path):
  try:
    datasets.read_spec_json(path)
  except DatasetError:
    return False
  return True


# --------------------------------------------------------------------------- the build

def build(source, out, text_column="text", class_column=None, test_fraction=None, seed=0,
          min_word_count=1, skip_bad=False, workers=None, overwrite=False, progress=True,
          on_image=None, max_short_side=DEFAULT_MAX_SHORT_SIDE):
  """Builds the dataset; returns a summary dict.

  The split: the source's top-level split folders when it has them (train/ and test/ or
  validation/, as Hugging Face's ImageFolder reads them; `test_fraction` is then ignored), else
  `test_fraction` (None: 0.1) of the images ranked by a hash of `seed` and their name.
  Images whose shorter side is longer than `max_short_side` are stored scaled down to it (0:
  every image at its size; see `convert_image`).

  Raises:
    BuildError: the source has problems (each named) and `skip_bad` is False, bad arguments, or a
      split too small to train on (fewer than 2 train images, an empty test split).
  `on_image` (tests) is called after each image is processed.
  """
  t0 = time.time()
  source = os.path.abspath(os.fspath(source))
  out = os.path.abspath(os.fspath(out))
  name = os.path.basename(out)
  if not os.path.isdir(source):
    raise BuildError(f"--source {source} is a file, not a folder: give the folder that holds the "
                     "images and their metadata.jsonl or metadata.csv" if os.path.isfile(source)
                     else f"source folder not found: {source}")
  fraction_given = test_fraction is not None
  test_fraction = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
  if not 0.0 < test_fraction < 1.0:
    raise BuildError(f"--test_fraction must be between 0 and 1 (exclusive), got {test_fraction}")
  if min_word_count < 1:
    raise BuildError(f"--min_word_count must be >= 1, got {min_word_count}")
  if max_short_side != 0 and max_short_side < MIN_SIDE:
    raise BuildError(f"--max_short_side must be 0 (keep every image's size) or at least "
                     f"{MIN_SIDE} (the smallest side training accepts), got {max_short_side}")
  max_short_side = int(max_short_side)
  if not name or name.startswith("."):
    raise BuildError(f"--out {out}: the dataset's folder name must not be empty or hidden")
  if out == source or out.startswith(source + os.sep) or source.startswith(out + os.sep):
    raise BuildError(f"--out {out} and --source {source} must not contain one another")
  if os.path.exists(out):
    if not overwrite:
      raise BuildError(f"{out} already exists; choose another --out, or pass --overwrite to "
                       "replace a dataset made by this command")
    if not _is_folder_dataset(out):
      raise BuildError(f"refusing to --overwrite {out}: it is not a dataset made by "
                       "python -m msmt_tf.data.build (no valid dataset_spec.json)")
  parent = os.path.dirname(out)
  os.makedirs(parent, exist_ok=True)
  staging = os.path.join(parent, f".{name}.build")
  problems_file = os.path.join(parent, f"{name}.problems.txt")
  notes, problems, warnings_ = [], [], []

  # 1. Metadata rows.
  rows, missing_columns = [], []
  for meta in find_metadata(source):
    try:
      got, bad = read_metadata(source, meta, text_column, class_column)
    except BuildError as e:
      if ": no column " not in str(e):
        raise
      missing_columns.append(str(e))  # every metadata file that lacks a column, not the first
      continue
    rows.extend(got)
    problems.extend(bad)
  if missing_columns:
    raise BuildError(missing_columns)  # one problem per file
  if not rows:
    raise BuildError(problems or ["the metadata files list no rows"])
  linked_twice = []
  scanned = _scan(source, linked_twice)
  warnings_.extend(f"{folder}/ leads to the folder already read as {read_as}/: its files are "
                   f"read once, as {read_as}/ (a split folder must be a folder of its own)"
                   for folder, read_as in linked_twice)
  folders, split_warning = _split_folders(source, scanned)
  if split_warning:
    warnings_.append(split_warning)
  by_lower, by_name = collections.defaultdict(list), collections.defaultdict(list)
  for rel in scanned:
    by_lower[unicodedata.normalize("NFC", rel).lower()].append(rel)
    by_name[posixpath.basename(rel).lower()].append(rel)

  # 2. Rows -> images: resolve each file name once; group; duplicates.
  bad_rows = set()   # id(row) of rows left out
  resolved, images = {}, collections.OrderedDict()   # rel -> list of rows
  first_spelling = {}
  for row in rows:
    if row.rel is None:
      problems.append(_problem(row.where, row.file_name, "file_name points outside the source "
                               "folder"))
      bad_rows.add(id(row))
      continue
    if row.rel not in resolved:
      resolved[row.rel] = _resolve(source, row.rel, by_lower)
      if resolved[row.rel][1]:
        notes.append(f"{row.where}: {resolved[row.rel][1]}")
    rel = resolved[row.rel][0]
    if rel is None:
      hint = ""
      same_name = by_name.get(posixpath.basename(row.rel).lower(), [])
      if len(same_name) == 1:
        hint = (f" (a file {same_name[0]!r} exists: file_name is relative to the folder of "
                f"{row.meta})")
      problems.append(_problem(row.where, row.file_name, "file listed but missing" + hint))
      bad_rows.add(id(row))
      continue
    row.rel = rel
    spelling = (row.meta, row.file_name)
    if rel in first_spelling and first_spelling[rel][:2] != spelling:
      m, f, line = first_spelling[rel]
      problems.append(_problem(row.where, row.file_name, f"duplicate file name: the same file is "
                               f"already listed as {f!r} at {m}:{line}"))
      bad_rows.add(id(row))
      continue
    first_spelling.setdefault(rel, (row.meta, row.file_name, row.line))
    images.setdefault(rel, []).append(row)
  left_out = []  # images of validation folders when test folders exist
  if folders:
    in_split = set(folders["train"] + folders["test"])
    named = ", ".join(f + "/" for f in folders["train"] + folders["test"])
    for rel in list(images):
      top = rel.split("/", 1)[0] if "/" in rel else None
      if top in folders["left_out"]:
        left_out.append(rel)
        del images[rel]
      elif top not in in_split:
        row = images[rel][0]
        problems.append(_problem(row.where, row.file_name, f"image outside the split folders "
                                 f"({named}): move it into one of them (Hugging Face's "
                                 "ImageFolder leaves such images out of every split)"))
        bad_rows.update(id(r) for r in images[rel])
        del images[rel]

  # 3. Caption checks (per row and caption).
  tokens_of = {}   # (id(row), j) -> tokens
  for rel, img_rows in images.items():
    for row in img_rows:
      if row.captions is None:  # not text: reported when read
        bad_rows.add(id(row))
        continue
      if not row.captions:
        problems.append(_problem(row.where, row.file_name, "empty caption"))
        bad_rows.add(id(row))
        continue
      for j, cap in enumerate(row.captions):
        which = f"caption {j + 1} of {len(row.captions)}" if len(row.captions) > 1 else "caption"
        bad = _not_text(cap)
        if bad:
          problems.append(_problem(row.where, row.file_name, f"{which} is {bad}"))
          continue
        text = " ".join(cap.split())
        if not text:
          problems.append(_problem(row.where, row.file_name, f"{which} is empty"))
          continue
        toks = [sys.intern(t) for t in vocab_lib.tokenize(text)]
        if not toks:
          problems.append(_problem(
              row.where, row.file_name, f"{which} {text[:60]!r} has no word left after "
              "tokenization (AttnGAN's tokenizer keeps runs of ASCII letters and digits)"))
          continue
        tokens_of[(id(row), j)] = (text, toks)

  # 4. Images: convert in parallel (resuming), check.
  os.makedirs(staging, exist_ok=True)
  # Staged conversions made by an older rule or with another --max_short_side are redone.
  state = dict(version=BUILD_VERSION, source=source, min_side=MIN_SIDE, quality=JPEG_QUALITY,
               convert=image_utils.CONVERT_VERSION, max_short_side=max_short_side)
  state_path = os.path.join(staging, _STATE)
  old_state = None
  if os.path.isfile(state_path):
    try:
      with open(state_path) as f:
        old_state = json.load(f)
    except ValueError:
      old_state = None
  if old_state != state:
    shutil.rmtree(staging)
    os.makedirs(staging)
    with open(state_path, "w") as f:
      json.dump(state, f)
  images_dir = os.path.join(staging, "images")
  progress_path = os.path.join(staging, _PROGRESS)
  previous = {}
  if os.path.isfile(progress_path):
    with open(progress_path, "rb") as f:
      for line in f:
        try:
          rec = json.loads(line)
          previous[rec["rel"]] = rec
        except (ValueError, KeyError, TypeError):
          continue  # a line cut by an interruption
  # Names two source files may both be stored under ('photo.webp' -> 'photo.webp.png' and
  # 'photo.webp.png'): such images are converted aside until the clash check below.
  claims = collections.Counter(c for rel in images for c in _name_candidates(rel))
  results, todo = {}, []
  for rel in images:
    src = os.path.join(source, *rel.split("/"))
    contested = frozenset(c for c in _name_candidates(rel) if claims[c] > 1)
    rec = previous.get(rel)
    if rec is not None:
      try:
        st = os.stat(src)
        same = (rec.get("src_size"), rec.get("src_mtime_ns")) == (st.st_size, st.st_mtime_ns)
        if same and rec["key"] is not None:
          # Converted where this run would convert it (aside when its name is contested now),
          # and still there.
          same = bool(rec.get("staged")) == (rec["key"].lower() in contested)
          dst = (os.path.join(staging, *rec["staged"].split("/")) if rec.get("staged") else
                 os.path.join(images_dir, *rec["key"].split("/")))
          same = same and os.path.isfile(dst) and os.path.getsize(dst) == rec["size"]
        if same:
          results[rel] = rec
          continue
      except OSError:
        pass
    todo.append((src, rel, images_dir, MIN_SIDE, contested, max_short_side))
  reused = sum(rec["key"] is not None for rec in results.values())  # converted, not failed
  already = len(results)
  workers = max(1, int(workers or usable_cores()))
  bar = _Progress(len(images), f"[build] images ({workers} workers)", enabled=progress,
                  already=already)
  t_images = time.time()
  pool = None
  with open(progress_path, "ab") as plog:
    try:
      if workers > 1 and len(todo) > 1:
        pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=_mp_context(),
                                                      initializer=_ignore_sigint)
        stream = _pooled(pool, todo, chunksize=max(1, min(64, len(todo) // (8 * workers))),
                         window=4 * workers)
      else:
        stream = map(_convert_task, todo)
      last_flush = time.time()
      for rec in stream:
        if rec.get("fatal"):
          raise BuildError(rec["fatal"], hint="Nothing was written to --out; free space or fix "
                           "the permissions, then run the same command again to resume.")
        results[rec["rel"]] = rec
        plog.write(json.dumps(rec).encode() + b"\n")
        if time.time() - last_flush > 1.0:
          plog.flush()
          last_flush = time.time()
        bar.update()
        if on_image is not None:
          on_image(rec)
    except BaseException:
      if pool is not None:  # Ctrl-C, a write error: stop the workers now, not after their work
        _terminate(pool)
        pool = None
      bar.close()
      raise
    finally:
      plog.flush()
      if pool is not None:
        pool.shutdown()
  bar.close()
  image_seconds = time.time() - t_images

  bad_images = set()
  for rel, img_rows in images.items():
    rec = results[rel]
    if rec["problem"]:
      row = img_rows[0]
      extra = f" (listed on {len(img_rows)} rows)" if len(img_rows) > 1 else ""
      problems.append(_problem(row.where, row.file_name, rec["problem"] + extra))
      bad_images.add(rel)
  key_owner, lower_owner = {}, {}
  for rel in images:
    key = results[rel]["key"]
    if rel in bad_images or key is None:
      continue
    other = key_owner.get(key) or lower_owner.get(key.lower())
    if other is not None:
      row = images[rel][0]
      problems.append(_problem(row.where, row.file_name, f"duplicate file name: stored as "
                               f"{key!r}, which clashes with {other!r} (listed at "
                               f"{images[other][0].where}); rename one of them"))
      bad_images.add(rel)
      continue
    key_owner[key] = rel
    lower_owner[key.lower()] = rel
  # The file that keeps a contested name goes to images/ now (the others stay aside, unused).
  moved = []
  for key, rel in key_owner.items():
    staged = results[rel].get("staged")
    if staged:
      dst = os.path.join(images_dir, *key.split("/"))
      os.makedirs(os.path.dirname(dst), exist_ok=True)
      os.replace(os.path.join(staging, *staged.split("/")), dst)
      results[rel] = dict(results[rel], staged=None)
      moved.append(results[rel])
  if moved:  # where they are now, for a run that resumes this one
    with open(progress_path, "ab") as plog:
      plog.write(b"".join(json.dumps(rec).encode() + b"\n" for rec in moved))

  # Classes: one per image.
  image_class = {}
  if class_column:
    for rel, img_rows in images.items():
      values = [(r.klass, r) for r in img_rows if r.klass is not None and id(r) not in bad_rows]
      if not values:
        continue
      first = values[0][0]
      image_class[rel] = first
      for value, r in values[1:]:
        if value != first:
          problems.append(_problem(r.where, r.file_name, f"class {value!r} conflicts with class "
                                   f"{first!r} given for the same file at {values[0][1].where}"))
          bad_rows.add(id(r))

  # 5. Usable captions per image; vocabulary with --min_word_count.
  repeated = [0]

  def usable_captions():
    repeated[0] = 0
    out_caps = collections.OrderedDict()
    for rel, img_rows in images.items():
      if rel in bad_images:
        continue
      caps, seen = [], set()
      for row in img_rows:
        if id(row) in bad_rows or (class_column and row.klass is None):
          continue
        for j in range(len(row.captions)):
          got = tokens_of.get((id(row), j))
          if got is not None and got[0] in seen:
            repeated[0] += 1  # the same caption twice for one image: kept once
          elif got is not None:
            seen.add(got[0])
            caps.append((row, got[0], got[1]))
      out_caps[rel] = caps
    return out_caps

  while True:  # until no caption loses its last word (counts fall as captions leave)
    kept = usable_captions()
    counts = collections.Counter()
    for caps in kept.values():
      for _, _, toks in caps:
        counts.update(toks)
    rare_rows = set()
    if min_word_count > 1:
      for rel, caps in kept.items():
        for row, text, toks in caps:
          if not any(counts[t] >= min_word_count for t in toks):
            problems.append(_problem(row.where, row.file_name, f"caption {text[:60]!r} has no "
                                     f"word seen at least --min_word_count={min_word_count} "
                                     "times"))
            rare_rows.add((id(row), text))
    if not rare_rows:
      break
    for key_ in list(tokens_of):
      if (key_[0], tokens_of[key_][0]) in rare_rows:
        del tokens_of[key_]
  for rel, caps in kept.items():
    if not caps:
      row = images[rel][0]
      # Every row of the image left out for a problem already reported (its class, a conflict):
      # no second line blaming a caption that may be fine.
      reported = all(id(r) in bad_rows or (class_column and r.klass is None)
                     for r in images[rel])
      if not reported:
        problems.append(_problem(row.where, row.file_name, "image without a usable caption"))
      bad_images.add(rel)
  listed = set(images) | {r for r, _ in resolved.values() if r}
  for rel in scanned:
    if rel not in listed and not (folders and rel.split("/", 1)[0] in folders["left_out"]):
      problems.append(_problem(rel, None, "image without captions (no metadata row lists it)"))

  problems.sort(key=_sort_key)
  if problems and not skip_bad:
    report = "\n".join(problems) + "\n"
    with open(problems_file, "w", encoding="utf8", errors="replace") as f:
      f.write(report)
    raise BuildError(problems, hint=(
        f"The full list is in {problems_file}. Fix these rows and files, or pass --skip_bad to "
        f"leave them out; the {sum(r['key'] is not None for r in results.values())} images "
        f"already converted are kept in {staging} and reused by the next run."))
  if os.path.isfile(problems_file):
    os.remove(problems_file)

  final = [rel for rel in kept if rel not in bad_images and kept[rel]]

  # 6. Split: the split folders, or deterministic (rank by a hash of the seed and the key).
  if folders:
    test_folders = set(folders["test"])
    split_of = {rel: ("test" if rel.split("/", 1)[0] in test_folders else "train")
                for rel in final}
    split_info = dict(method="folders", train_folders=folders["train"],
                      test_folders=folders["test"], left_out_folders=folders["left_out"],
                      left_out_images=len(left_out))
  else:
    def rank(rel):
      return hashlib.sha256(f"{seed}\0{results[rel]['key']}".encode("utf8")).hexdigest()
    order = sorted(final, key=rank)
    num_test = min(len(final) - 1, max(1, int(round(len(final) * test_fraction))))
    split_of = {rel: ("test" if i < num_test else "train") for i, rel in enumerate(order)}
    split_info = dict(method="hash", test_fraction=test_fraction, seed=int(seed))
  num_train = sum(s == "train" for s in split_of.values())
  num_test = len(final) - num_train
  if folders:
    where = lambda names: ", ".join(f + "/" for f in names)
    sizes = (f"{where(folders['train'])} holds {num_train} usable image(s), "
             f"{where(folders['test'])} {num_test}")
    if num_train < 2:
      raise BuildError(problems + [
          f"{sizes}: training needs at least 2 train images (each batch pairs an image with "
          f"another image's caption); add images to {where(folders['train'])}"])
    if num_test < 1:
      raise BuildError(problems + [
          f"{sizes}: the test split needs at least 1 image; add images to "
          f"{where(folders['test'])}"])
  elif num_train < 2:
    raise BuildError(problems + [
        f"{len(final)} usable image(s) make {num_train} train + {num_test} test with "
        f"--test_fraction {test_fraction:g}: training needs at least 2 train images (each batch "
        "pairs an image with another image's caption); add images"
        + (" or lower --test_fraction" if num_test > 1 else "")
        + (" (a dataset needs at least 3: 2 train, 1 test)" if len(final) < 3 else "")])
  large = [rel for rel in final
           if min(results[rel]["stored_width"], results[rel]["stored_height"]) > _LARGE_SHORT_SIDE]
  if large:
    big = max(large, key=lambda r: results[r]["stored_width"] * results[r]["stored_height"])
    warnings_.append(
        f"{len(large)} of {len(final)} images are stored with a shorter side over "
        f"{_LARGE_SHORT_SIDE} px (the largest: {big}, {results[big]['stored_width']}x"
        f"{results[big]['stored_height']}): training decodes every whole image at every step to "
        "keep 304 px of its shorter side (355 for DAMSM pretraining), so the input pipeline, "
        "not the GAN step, may set the training speed (python -m msmt_tf.bench --pipeline "
        f"--flagfile={shlex.quote(os.path.join(out, name + '.cfg'))} --pipeline_dir="
        f"{shlex.quote(out)} measures it); build with --max_short_side={DEFAULT_MAX_SHORT_SIDE} "
        "(the default) to store them at that size")
  nested = [] if folders else _nested_split_folders(scanned)
  if nested:
    warnings_.append(
        f"{', '.join(n + '/' for n in nested[:3])}{' ...' if len(nested) > 3 else ''}: named like "
        "a split folder, but only the source's top-level folders set the split, so these images "
        "were split by --test_fraction like the others; to use the split folders, pass --source "
        f"{os.path.join(source, *posixpath.dirname(nested[0]).split('/'))}")
  if folders and fraction_given:
    warnings_.append(f"--test_fraction {test_fraction:g} is ignored: the source's split folders "
                     "set the split")
  if num_test < 2:
    warnings_.append(
        f"the test split has {num_test} image: FID and R-precision on it need at least 2 (FID "
        "a covariance, R-precision other images' captions as mismatches); "
        + (f"put more images in {', '.join(f + '/' for f in folders['test'])}" if folders else
           f"pass a larger --test_fraction (now {test_fraction:g}, {len(final)} usable images)"))
  if class_column:
    for split in ("train", "test"):
      names = {image_class[r] for r in final if split_of[r] == split and r in image_class}
      if len(names) != 1 or (split == "test" and num_test < 2):
        continue
      warnings_.append(
          f"--class_column {class_column!r}: every {split} image has class {next(iter(names))!r}"
          + (": DAMSM's losses take the other classes of a batch as negatives and are 0 "
             "(python -m msmt_tf.pretrain_damsm refuses this split); give the images at least 2 "
             "classes, or leave --class_column out (each image its own class)"
             if split == "train" else
             ": R-precision on the test split draws its mismatched captions from other classes "
             "and cannot run; give the test images at least 2 classes"))
  # AttnGAN's tokenizer (kept, for its encoders' vocabularies) drops letters outside ASCII.
  altered = collections.Counter()
  altered_captions = 0
  for rel in final:
    for _, text, _ in kept[rel]:
      words = vocab_lib.altered_words(text)
      altered_captions += bool(words)
      altered.update(words)

  # Classes.
  class_names = sorted({image_class[r] for r in final if r in image_class}, key=_natural)
  class_ids = {c: i + 1 for i, c in enumerate(class_names)}

  # 7. Write text/, split pickles, spec, captions.pickle (through the loader), flagfile.
  for sub in ("text", "train", "test"):
    shutil.rmtree(os.path.join(staging, sub), ignore_errors=True)
  for leftover in ("captions.pickle", datasets.SPEC_FILE, "skipped.txt"):
    if os.path.exists(os.path.join(staging, leftover)):
      os.remove(os.path.join(staging, leftover))
  for leftover in os.listdir(staging):
    if leftover.endswith(".cfg"):
      os.remove(os.path.join(staging, leftover))
  split_keys = {"train": [], "test": []}
  split_counts = {"train": [], "test": []}
  split_classes = {"train": [], "test": []}
  lengths = {"train": [], "test": []}
  for rel in sorted(final, key=lambda r: results[r]["key"]):
    key, split = results[rel]["key"], split_of[rel]
    caps = kept[rel]
    _write(os.path.join(staging, "text", *(key + ".txt").split("/")),
           ("\n".join(text for _, text, _ in caps) + "\n").encode("utf8"))
    split_keys[split].append(key)
    split_counts[split].append(len(caps))
    if class_column:
      split_classes[split].append(class_ids[image_class[rel]])
    lengths[split].extend(sum(counts[t] >= min_word_count for t in toks) for _, _, toks in caps)
  for split in ("train", "test"):
    _write(os.path.join(staging, split, "filenames.pickle"),
           pickle.dumps(split_keys[split], protocol=2))
    _write(os.path.join(staging, split, "caption_counts.pickle"),
           pickle.dumps(split_counts[split], protocol=2))
    if class_column:
      _write(os.path.join(staging, split, "class_info.pickle"),
             pickle.dumps(split_classes[split], protocol=2))
  all_counts = np.asarray(split_counts["train"] + split_counts["test"])
  actions = collections.Counter(results[rel]["action"] for rel in final)
  train_len = np.asarray(lengths["train"])
  summary = dict(
      format=datasets.SPEC_FORMAT, version=BUILD_VERSION, name=name, source=source,
      train_images=len(split_keys["train"]), test_images=len(split_keys["test"]),
      captions=int(all_counts.sum()),
      captions_per_image=dict(min=int(all_counts.min()), max=int(all_counts.max()),
                              mean=round(float(all_counts.mean()), 3)),
      caption_length=dict(min=int(train_len.min()), p50=float(np.percentile(train_len, 50)),
                          p75=float(np.percentile(train_len, 75)),
                          p95=float(np.percentile(train_len, 95)), max=int(train_len.max())),
      words_num_train=_percentile_words(train_len, 75, _WORDS_MIN, _WORDS_TRAIN_MAX),
      words_num_eval=0, vocab_size=0, min_word_count=int(min_word_count),
      classes=len(class_names) if class_column else None,
      class_names=class_names if class_column else None,
      text_column=text_column, class_column=class_column,
      test_fraction=None if folders else test_fraction, seed=int(seed), split=split_info,
      max_short_side=max_short_side, resized=actions.get("resized", 0),
      # Images converted to sRGB from their embedded colour profile, by the profile's name.
      colour_converted=dict(sorted(collections.Counter(
          results[rel].get("colour") for rel in final if results[rel].get("colour")).items())),
      skipped=len(problems), warnings=warnings_,
      batch_size=max(2, min(20, len(split_keys["train"]))))
  summary["words_num_eval"] = max(summary["words_num_train"],
                                  _percentile_words(train_len, 95, _WORDS_MIN, _WORDS_EVAL_MAX))
  _write(os.path.join(staging, datasets.SPEC_FILE), json.dumps(summary, indent=1).encode())
  _, _, vocab = datasets.load_captions(staging, "folder")
  expected = 1 + sum(1 for n in counts.values() if n >= min_word_count)
  if len(vocab) != expected:
    raise RuntimeError(f"internal error: the loader's vocabulary has {len(vocab)} words, the "
                       f"build counted {expected}")
  summary["vocab_size"] = len(vocab)
  _write(os.path.join(staging, datasets.SPEC_FILE), json.dumps(summary, indent=1).encode())
  _write(os.path.join(staging, f"{name}.cfg"), _flagfile(name, out, summary).encode("utf8"))
  if problems:
    _write(os.path.join(staging, "skipped.txt"), ("\n".join(problems) + "\n").encode(
        "utf8", "replace"))

  # Images of earlier runs that are not in the dataset (skipped, renamed) go.
  keep = {results[rel]["key"] for rel in final}
  for folder, _, files in os.walk(images_dir, topdown=False):
    for f in files:
      rel = os.path.relpath(os.path.join(folder, f), images_dir).replace(os.sep, "/")
      if rel not in keep:
        os.remove(os.path.join(folder, f))
    if folder != images_dir and not os.listdir(folder):
      os.rmdir(folder)

  shutil.rmtree(os.path.join(staging, _CONTESTED), ignore_errors=True)

  # 8. Check through the loader, then move into place.
  for split in ("train", "test"):
    datasets.load_split(staging, "folder", split, check_files=True)
  os.remove(progress_path)
  os.remove(state_path)
  if os.path.exists(out):
    trash = os.path.join(parent, f".{name}.old-{os.getpid()}")
    os.rename(out, trash)
    os.rename(staging, out)
    shutil.rmtree(trash)
  else:
    os.rename(staging, out)
  summary.update(
      out=out, seconds=round(time.time() - t0, 1), image_seconds=round(image_seconds, 1),
      images_processed=len(todo), reused=reused, workers=workers,
      images_per_s=round(len(todo) / image_seconds, 1) if todo and image_seconds > 0 else None,
      kept=actions.get("kept", 0), converted=actions.get("converted", 0),
      rotated=actions.get("rotated", 0), notes=notes, repeated_captions=repeated[0],
      non_ascii={"captions": altered_captions,
                 "words": [{"word": w, "kept": k, "count": n} for (w, k), n in
                           sorted(altered.items(), key=lambda item: (-item[1], item[0]))]},
      skipped_file=os.path.join(out, "skipped.txt") if problems else None,
      flagfile=os.path.join(out, f"{name}.cfg"))
  return summary


def format_summary(s):
  per = s["captions_per_image"]
  lines = [
      f"built {s['out']} in {s['seconds']} s",
      f"  images: {s['train_images']} train + {s['test_images']} test "
      f"({s['kept']} kept as they were, {s['converted']} converted, {s['rotated']} rotated by "
      + (f"EXIF, {s['resized']} scaled down to a shorter side of {s['max_short_side']} px)"
         if s["max_short_side"] else "EXIF; --max_short_side 0: none scaled down)"),
      f"  image stage: {s['images_processed']} processed in {s['image_seconds']} s"
      + (f" = {s['images_per_s']} images/s" if s["images_per_s"] else "")
      + f" ({s['workers']} workers)" + (f", {s['reused']} reused from an interrupted build"
                                        if s["reused"] else ""),
      *([f"  colour: {sum(s['colour_converted'].values())} image(s) converted to sRGB from "
         "the colour profile they carry (" + ", ".join(
             f"{k}: {v}" for k, v in s["colour_converted"].items()) + ")"]
        if s.get("colour_converted") else []),
      "  split: " + _split_line(s["split"]),
      f"  captions: {s['captions']} ({per['min']}-{per['max']} per image, mean {per['mean']})",
      f"  caption length (train, words): median {s['caption_length']['p50']:g}, 75% "
      f"{s['caption_length']['p75']:g}, 95% {s['caption_length']['p95']:g}, max "
      f"{s['caption_length']['max']} -> words_num {s['words_num_train']} training, "
      f"{s['words_num_eval']} evaluation",
      f"  vocabulary: {s['vocab_size']} words (index 0 = <end>, --min_word_count "
      f"{s['min_word_count']})",
      f"  classes: {s['classes'] if s['classes'] is not None else 'none (each image its own class)'}",
  ]
  if s["notes"]:
    lines.append(f"  note: {len(s['notes'])} file name(s) matched a file spelled differently:")
    lines.extend(f"    {n}" for n in s["notes"][:10])
    if len(s["notes"]) > 10:
      lines.append(f"    ... and {len(s['notes']) - 10} more")
  if s["repeated_captions"]:
    lines.append(f"  note: {s['repeated_captions']} caption(s) repeated for the same image were "
                 "kept once")
  if s["non_ascii"]["captions"]:
    words = s["non_ascii"]["words"]
    shown = ", ".join(f"{w['word']!r} -> {w['kept']!r}" for w in words[:8])
    lines.append(f"  note: {s['non_ascii']['captions']} caption(s) have letters outside ASCII, "
                 f"which AttnGAN's tokenizer drops ({len(words)} word(s): {shown}"
                 + (", ..." if len(words) > 8 else "") + ")")
  if s["skipped"]:
    lines.append(f"  skipped: {s['skipped']} problem(s), listed in {s['skipped_file']}")
  lines.append(f"  flagfile: {s['flagfile']}")
  lines.extend(f"warning: {w}" for w in s["warnings"])
  # The command shell-quoted, to paste as it is (a path with spaces); the listing above is not.
  lines.append(f"next: python -m msmt_tf.pretrain_damsm --flagfile={shlex.quote(s['flagfile'])} "
               "--inception_weights=PATH (ImageNet Inception-v3, BUILD.md 'DAMSM encoders'; or "
               "--image_encoder_trunk=small)")
  return "\n".join(lines)


def _split_line(split):
  if split["method"] == "hash":
    return (f"--test_fraction {split['test_fraction']:g} of the images, ranked by a hash of "
            f"--seed {split['seed']} and their name")
  folders = lambda names: ", ".join(f + "/" for f in names)
  line = (f"the source's split folders: {folders(split['train_folders'])} -> train, "
          f"{folders(split['test_folders'])} -> test")
  if split["left_out_folders"]:
    line += (f"; the {split['left_out_images']} image(s) listed in "
             f"{folders(split['left_out_folders'])} are left out (a test folder exists; the "
             "dataset has no validation split)")
  return line


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  from absl import logging  # pylint: disable=g-import-not-at-top
  logging.set_verbosity(logging.WARNING)  # the summary says what the loader's INFO lines would
  f = flags.FLAGS
  try:
    test_fraction = f.test_fraction if f["test_fraction"].present else None  # None: the default
    with stopping.sigterm_as_interrupt():
      summary = build(f.source, f.out, f.text_column, f.class_column, test_fraction, f.seed,
                      f.min_word_count, f.skip_bad, f.workers, f.overwrite, f.progress,
                      max_short_side=f.max_short_side)
  except DatasetError as e:
    problems = e.problems
    shown = problems[:100]
    print(f"error: {len(problems)} problem(s) building {os.path.abspath(f.out)}:",
          file=sys.stderr)
    for p in shown:
      print(f"  - {p}", file=sys.stderr)
    if len(problems) > len(shown):
      print(f"  ... and {len(problems) - len(shown)} more", file=sys.stderr)
    if e.hint:
      print(e.hint, file=sys.stderr)
    sys.exit(1)
  except KeyboardInterrupt as e:
    stopping.exit_stopped(e, f"\n{stopping.how_stopped(e)}: nothing was written to --out; run "
                          "the same command again to resume")
  print(format_summary(summary))


if __name__ == "__main__":
  from absl import app
  from absl import flags
  flags.DEFINE_string("source", None, "Folder of images with metadata.jsonl or metadata.csv "
                      "(Hugging Face ImageFolder convention).", required=True)
  flags.DEFINE_string("out", None, "Output dataset folder, e.g. data/NAME.", required=True)
  flags.DEFINE_string("text_column", "text", "Metadata column holding the caption(s).")
  flags.DEFINE_string("class_column", None, "Metadata column holding a class label (default: "
                      "each image is its own class, as COCO).")
  flags.DEFINE_float("test_fraction", DEFAULT_TEST_FRACTION, "Share of the images in the test "
                     "split (ignored when the source has split folders train/ and test/).")
  flags.DEFINE_integer("seed", 0, "Seed of the train/test split.")
  flags.DEFINE_integer("min_word_count", 1, "Words seen fewer times are left out of the "
                       "vocabulary (AttnGAN: 1, every word).")
  flags.DEFINE_bool("skip_bad", False, "Leave bad rows and images out (listed in "
                    "<out>/skipped.txt) instead of stopping.")
  flags.DEFINE_integer("max_short_side", DEFAULT_MAX_SHORT_SIDE, "Store images whose shorter "
                       "side is longer than this many px scaled down to it (aspect kept, "
                       "Lanczos). The pipeline resizes the shorter side to 304 px for 256 px "
                       "training and 355 px for DAMSM pretraining (76/64 of the crop), and "
                       "would decode the rest at every step. 0 keeps every image at its size.")
  flags.DEFINE_integer("workers", None, "Image decode processes (default: one per CPU core this "
                       "process may use: its affinity, as taskset or Slurm set it).",
                       lower_bound=1)
  flags.DEFINE_bool("overwrite", False, "Replace an existing dataset made by this command.")
  flags.DEFINE_bool("progress", True, "Show a progress bar on stderr.")
  app.run(main)
