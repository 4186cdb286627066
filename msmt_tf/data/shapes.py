r"""Built-in captioned-shapes dataset, written in the exact AttnGAN layout.

Each image (256x256 by default) shows 1-3 shapes (circle, square, triangle, diamond, star) in one of
eight colours, small or large, at varied positions, on a plain, gradient or striped background in one
of five colours. Ten captions per image come from paraphrase templates that name colours, kinds,
sizes, positions, spatial relations between shapes and the background, so word-level conditioning
matters. The class of an image is the (kind, colour) of its first shape: 40 classes, ids 1..40 (used
for DAMSM class masking and R-precision, as CUB's classes are).

Everything is a function of (seed, split, index): the same seed gives the same bytes.

    python -m msmt_tf.data.shapes --out data/shapes [--num_train 2000 --num_test 500 --seed 0]
"""

if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

import json
import os
import shutil
import sys
import time

import numpy as np
from PIL import Image
from PIL import ImageDraw

from msmt_tf import stopping
from msmt_tf.fileio import atomic_write_bytes

__all__ = ["KINDS", "COLOURS", "BACKGROUNDS", "make_scene", "render_scene", "scene_captions",
           "write_dataset", "class_id_of"]

KINDS = ("circle", "square", "triangle", "diamond", "star")
COLOURS = {
    "red": (220, 30, 30), "green": (30, 170, 50), "blue": (30, 70, 220), "yellow": (240, 220, 30),
    "purple": (140, 40, 180), "orange": (245, 140, 20), "pink": (245, 120, 190),
    "cyan": (40, 210, 220),
}
BACKGROUNDS = {
    "gray": (128, 128, 128), "white": (235, 235, 235), "black": (20, 20, 20),
    "beige": (215, 200, 165), "brown": (110, 70, 40),
}
BG_STYLES = ("plain", "gradient", "striped")
CAPTIONS_PER_IMAGE = 10
_SPLIT_ID = {"train": 0, "test": 1}
_MANIFEST = "shapes_manifest.json"
_PARTIAL = "shapes_unfinished.json"  # written first, removed after the manifest: a partial write


def class_id_of(kind, colour):
  """1-based class id of a (kind, colour) pair."""
  return KINDS.index(kind) * len(COLOURS) + list(COLOURS).index(colour) + 1


def _article(word):
  return "an" if word[0] in "aeiou" else "a"


def make_scene(rng):
  """Samples a scene description (a dict) with 1-3 non-overlapping shapes in unit coordinates."""
  n = int(rng.choice([1, 2, 3], p=[0.35, 0.4, 0.25]))
  shapes = []
  for _ in range(n):
    for _attempt in range(100):
      size = "large" if rng.random() < 0.5 else "small"
      r = rng.uniform(0.17, 0.24) if size == "large" else rng.uniform(0.09, 0.13)
      if n == 3:
        r *= 0.8
      cx, cy = rng.uniform(r + 0.02, 1 - r - 0.02, size=2)
      if all(np.hypot(cx - s["cx"], cy - s["cy"]) > r + s["r"] + 0.04 for s in shapes):
        break
    shapes.append(dict(kind=str(rng.choice(KINDS)), colour=str(rng.choice(list(COLOURS))),
                       size=size, r=float(r), cx=float(cx), cy=float(cy),
                       angle=float(rng.uniform(-0.3, 0.3)), jitter=rng.integers(-18, 19, 3)))
  return dict(shapes=shapes, bg=str(rng.choice(list(BACKGROUNDS))),
              bg_style=str(rng.choice(BG_STYLES)), bg_angle=int(rng.integers(0, 2)),
              noise_seed=int(rng.integers(0, 2**31 - 1)))


def _polygon(kind, cx, cy, r, angle):
  if kind == "square":
    pts = [(-1, -1), (1, -1), (1, 1), (-1, 1)]
    pts = [(x * 0.8, y * 0.8) for x, y in pts]
  elif kind == "triangle":
    pts = [(np.cos(a), np.sin(a)) for a in np.pi / 2 + np.arange(3) * 2 * np.pi / 3]
    pts = [(x, -y) for x, y in pts]
  elif kind == "diamond":
    pts = [(0, -1), (0.75, 0), (0, 1), (-0.75, 0)]
  elif kind == "star":
    pts = []
    for k in range(10):
      a = np.pi / 2 + k * np.pi / 5
      rad = 1.0 if k % 2 == 0 else 0.42
      pts.append((rad * np.cos(a), -rad * np.sin(a)))
  else:
    raise ValueError(kind)
  c, s = np.cos(angle), np.sin(angle)
  return [(cx + r * (x * c - y * s), cy + r * (x * s + y * c)) for x, y in pts]


def render_scene(scene, image_size=256, supersample=2):
  """Draws a scene; returns a uint8 RGB array [image_size, image_size, 3]."""
  size = image_size * supersample
  base = np.asarray(BACKGROUNDS[scene["bg"]], np.float32)
  shade = base * 0.75 + (40 if base.mean() < 60 else 0)
  style = scene["bg_style"]
  coord = np.linspace(0.0, 1.0, size, dtype=np.float32)
  if style == "gradient":
    t = coord[:, None] if scene["bg_angle"] else coord[None, :]
    img = base + (shade - base) * t[..., None] * 1.4
    img = np.broadcast_to(img, (size, size, 3))
  elif style == "striped":
    period = size // 8
    idx = np.arange(size)
    band = ((idx // (period // 2)) % 2).astype(np.float32)
    t = band[:, None] if scene["bg_angle"] else band[None, :]
    img = base + (shade - base) * t[..., None]
    img = np.broadcast_to(img, (size, size, 3))
  else:
    img = np.broadcast_to(base, (size, size, 3))
  noise = np.random.default_rng(scene["noise_seed"]).normal(0, 6, (size, size, 1))
  img = np.clip(img + noise, 0, 255).astype(np.uint8)
  pil = Image.fromarray(img)
  draw = ImageDraw.Draw(pil)
  for s in scene["shapes"]:
    colour = tuple(int(v) for v in np.clip(np.asarray(COLOURS[s["colour"]]) + s["jitter"], 0, 255))
    cx, cy, r = s["cx"] * size, s["cy"] * size, s["r"] * size
    if s["kind"] == "circle":
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)
    else:
      draw.polygon(_polygon(s["kind"], cx, cy, r, s["angle"]), fill=colour)
  if supersample > 1:
    pil = pil.resize((image_size, image_size), Image.Resampling.BOX)
  return np.asarray(pil)


def _where(s):
  h = "left" if s["cx"] < 0.36 else ("right" if s["cx"] > 0.64 else "")
  v = "top" if s["cy"] < 0.36 else ("bottom" if s["cy"] > 0.64 else "")
  if h and v:
    return f"in the {v} {h} corner"
  if h:
    return f"on the {h} side"
  if v:
    return f"at the {v}"
  return "in the center"


def _relation(a, b):
  """How shape a stands relative to shape b."""
  dx, dy = b["cx"] - a["cx"], b["cy"] - a["cy"]
  if abs(dx) >= abs(dy):
    return "to the left of" if dx > 0 else "to the right of"
  return "above" if dy > 0 else "below"


def _bg_phrase(scene):
  style = {"plain": "", "gradient": "gradient ", "striped": "striped "}[scene["bg_style"]]
  return f"{style}{scene['bg']}"


def scene_captions(scene, rng, num=CAPTIONS_PER_IMAGE):
  """Ten paraphrased captions naming attributes and spatial relations."""
  sh = scene["shapes"]
  a = sh[0]

  def desc(s, size=True):
    words = ([s["size"]] if size else []) + [s["colour"], s["kind"]]
    return f"{_article(words[0])} {' '.join(words)}"

  bg = _bg_phrase(scene)
  count = ["one", "two", "three"][len(sh) - 1]
  listing = " and ".join(desc(s, size=False) for s in sh)
  single = [
      f"{desc(a)} {_where(a)} on a {bg} background",
      f"the image shows {desc(a)} {_where(a)}",
      f"{desc(a, size=False)} {_where(a)} against a {bg} background",
      f"this {bg} picture contains {desc(a)}",
      f"there is {desc(a)} {_where(a)}",
      f"{_article(a['size'])} {a['size']} {a['kind']} colored {a['colour']} on a {bg} background",
      f"{count} shape{'s' if len(sh) > 1 else ''} on a {bg} background : {listing}",
      f"a picture of {listing} on {bg}",
      f"the {a['colour']} {a['kind']} is {a['size']} and sits {_where(a)}",
      f"{desc(a)} drawn {_where(a)} of a {bg} image",
  ]
  if len(sh) >= 2:
    b = sh[1]
    pair = [
        f"{desc(a)} {_relation(a, b)} {desc(b)}",
        f"{desc(b, size=False)} {_relation(b, a)} {desc(a, size=False)} on a {bg} background",
        f"there is {desc(a, size=False)} {_relation(a, b)} {desc(b, size=False)}",
        f"on a {bg} background {desc(a)} is {_relation(a, b)} {desc(b)}",
    ]
    if len(sh) == 3:
      c = sh[2]
      pair.append(f"{desc(a, size=False)} {_relation(a, b)} {desc(b, size=False)} and "
                  f"{desc(c, size=False)} {_where(c)} on a {bg} background")
    pool = pair + single
  else:
    pool = single
  order = rng.permutation(len(pool))[:num]
  return [pool[i] for i in order]


def write_dataset(out, num_train=2000, num_test=500, seed=0, image_size=256, overwrite=False):
  """Writes the dataset in the AttnGAN layout; returns a summary dict.

  An existing folder made with the same parameters is kept as it is; a folder made with other
  parameters (or any non-empty folder without our manifest) is refused unless `overwrite`. An
  interrupted write (its `shapes_unfinished.json` left, no manifest) is finished by the same
  command (same seed, same bytes); with other parameters it is replaced with `overwrite`.
  """
  import io  # pylint: disable=g-import-not-at-top
  import pickle  # pylint: disable=g-import-not-at-top
  from msmt_tf.data.vocab import Vocabulary, tokenize  # pylint: disable=g-import-not-at-top

  params = dict(num_train=int(num_train), num_test=int(num_test), seed=int(seed),
                image_size=int(image_size), version=1)
  for name in ("num_train", "num_test"):
    if params[name] < 1:
      raise ValueError(f"--{name} must be >= 1, got {params[name]}")
  if params["image_size"] < 64:
    raise ValueError(f"--image_size must be >= 64, got {image_size}")
  out = os.path.abspath(out)
  manifest_path = os.path.join(out, _MANIFEST)
  partial_path = os.path.join(out, _PARTIAL)
  if os.path.isdir(out) and os.listdir(out):
    existing = partial = None
    if os.path.isfile(manifest_path):
      with open(manifest_path) as f:
        existing = json.load(f)
    elif os.path.isfile(partial_path):  # a write that was interrupted (Ctrl-C, a killed job)
      with open(partial_path) as f:
        partial = json.load(f)
    if existing is not None and existing.get("params") == params:
      return dict(existing["summary"], reused=True)
    if not (partial is not None and partial.get("params") == params):
      # (The same parameters as an interrupted write: written again over it, same bytes.)
      if not overwrite:
        what = (f"was made with other parameters {existing.get('params')}" if existing else
                f"holds an unfinished shapes dataset of other parameters {partial.get('params')}"
                if partial else "is not empty and is not a shapes dataset")
        raise FileExistsError(f"{out} {what}; choose another --out or pass --overwrite")
      if existing is None and partial is None:
        raise FileExistsError(f"refusing to --overwrite {out}: it is not a shapes dataset folder")
      shutil.rmtree(out)

  start = time.time()
  for sub in ("images", "text", "train", "test"):
    os.makedirs(os.path.join(out, sub), exist_ok=True)
  atomic_write_bytes(partial_path, json.dumps(dict(params=params)).encode())
  tokens, keys, classes = {}, {}, {}
  for split, n in (("train", params["num_train"]), ("test", params["num_test"])):
    tokens[split], keys[split], classes[split] = [], [], []
    for i in range(n):
      rng = np.random.default_rng([params["seed"], _SPLIT_ID[split], i])
      scene = make_scene(rng)
      caps = scene_captions(scene, rng)
      key = f"{split}_{i:06d}"
      buf = io.BytesIO()
      Image.fromarray(render_scene(scene, params["image_size"])).save(
          buf, format="JPEG", quality=95)
      atomic_write_bytes(os.path.join(out, "images", key + ".jpg"), buf.getvalue())
      atomic_write_bytes(os.path.join(out, "text", key + ".txt"),
                          ("\n".join(caps) + "\n").encode("utf8"))
      tokens[split].extend(tokenize(c) for c in caps)
      keys[split].append(key)
      first = scene["shapes"][0]
      classes[split].append(class_id_of(first["kind"], first["colour"]))
  vocab = Vocabulary.from_captions(tokens["train"] + tokens["test"])
  ids = {s: [[vocab.index(t) for t in toks] for toks in tokens[s]] for s in tokens}
  for split in ("train", "test"):
    atomic_write_bytes(os.path.join(out, split, "filenames.pickle"),
                        pickle.dumps(keys[split], protocol=2))
    atomic_write_bytes(os.path.join(out, split, "class_info.pickle"),
                        pickle.dumps(classes[split], protocol=2))
  atomic_write_bytes(os.path.join(out, "captions.pickle"), pickle.dumps(
      [ids["train"], ids["test"], vocab.ixtoword, vocab.wordtoix], protocol=2))
  summary = dict(
      out=out, train_images=params["num_train"], test_images=params["num_test"],
      captions=CAPTIONS_PER_IMAGE * (params["num_train"] + params["num_test"]),
      vocab_size=len(vocab), classes=len(set(classes["train"]) | set(classes["test"])),
      image_size=params["image_size"], seconds=round(time.time() - start, 1))
  atomic_write_bytes(manifest_path, json.dumps(
      dict(params=params, summary=summary), indent=1).encode())
  os.remove(partial_path)
  return dict(summary, reused=False)


def format_summary(summary):
  head = "reused existing" if summary.get("reused") else f"wrote in {summary['seconds']} s"
  return (f"shapes dataset at {summary['out']} ({head})\n"
          f"  images: {summary['train_images']} train + {summary['test_images']} test, "
          f"{summary['image_size']}x{summary['image_size']}\n"
          f"  captions: {summary['captions']} ({CAPTIONS_PER_IMAGE} per image)\n"
          f"  vocabulary: {summary['vocab_size']} words (index 0 = <end>)\n"
          f"  classes: {summary['classes']}")


def main(argv):
  del argv
  from absl import flags  # pylint: disable=g-import-not-at-top
  f = flags.FLAGS
  try:
    with stopping.sigterm_as_interrupt():
      summary = write_dataset(f.out, f.num_train, f.num_test, f.seed, f.image_size, f.overwrite)
  except (FileExistsError, ValueError) as e:
    sys.exit(f"error: {e}")
  except KeyboardInterrupt as e:
    stopping.exit_stopped(e, f"\n{stopping.how_stopped(e)}: the dataset in {f.out} is "
                          "unfinished; the same command finishes it")
  print(format_summary(summary))


if __name__ == "__main__":
  from absl import app
  from absl import flags
  flags.DEFINE_string("out", None, "Output folder (AttnGAN layout).", required=True)
  flags.DEFINE_integer("num_train", 2000, "Training images.")
  flags.DEFINE_integer("num_test", 500, "Test images.")
  flags.DEFINE_integer("seed", 0, "Seed: the same seed gives the same bytes.")
  flags.DEFINE_integer("image_size", 256, "Image side in pixels (>= 64).")
  flags.DEFINE_bool("overwrite", False, "Replace an existing shapes dataset made with other "
                    "parameters.")
  app.run(main)
