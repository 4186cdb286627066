r"""Writes the synthetic ImageFolder source that BUILD.md's "Dataset build throughput" rows used.

    python benchmarks/make_imagefolder.py --out /tmp/bench20k/src [--num_images 20000 --png]
    python benchmarks/make_imagefolder.py --out /tmp/photos/src --num_images 60 \
        --width 4032 --height 3024 --smooth   # phone-photo sized JPEGs (BUILD.md, input pipeline)
    python -m msmt_tf.data.build --source /tmp/bench20k/src --out /tmp/bench20k/data/b20k \
        --class_column label

Image i is `part{i % 20}/img_{i}.jpg` (or `.png` with --png: RGBA), 96 x 96 px, a random colour
plus Gaussian noise (sigma 40); `1 + i % 5` captions of 4-15 words from a 20-word list, as
repeated rows of `metadata.csv`; class `c{i % 50}`. With --width/--height the images are that
size instead; --smooth makes each a smooth colour field (8 x 6 random colours, bicubic) with
mild noise (sigma 4), which JPEG compresses as it does photos (about 1.8 MB at 4032 x 3024). Same
arguments, same bytes.
"""

import argparse
import csv
import os

import numpy as np
from PIL import Image

WORDS = ("a", "small", "large", "red", "blue", "green", "bird", "cat", "dog", "with", "on",
         "the", "grass", "white", "black", "wings", "tail", "sitting", "tree", "head")


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out", required=True)
  parser.add_argument("--num_images", type=int, default=20000)
  parser.add_argument("--size", type=int, default=96)
  parser.add_argument("--width", type=int, default=None, help="default: --size")
  parser.add_argument("--height", type=int, default=None, help="default: --size")
  parser.add_argument("--smooth", action="store_true",
                      help="smooth colour fields with mild noise (photo-like JPEG sizes)")
  parser.add_argument("--png", action="store_true", help="RGBA PNGs (every image converted)")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  rng = np.random.default_rng(args.seed)
  ext = "png" if args.png else "jpg"
  with open(os.path.join(_mkdir(args.out), "metadata.csv"), "w", newline="") as f:
    rows = csv.writer(f)
    rows.writerow(["file_name", "text", "label"])
    for i in range(args.num_images):
      name = f"part{i % 20}/img_{i}.{ext}"
      channels = 4 if args.png else 3
      width, height = args.width or args.size, args.height or args.size
      if args.smooth:
        field = Image.fromarray(rng.integers(0, 256, (6, 8, channels), np.uint8))
        pixels = (np.asarray(field.resize((width, height), Image.BICUBIC), np.float32)
                  + rng.normal(0, 4, (height, width, channels)).astype(np.float32))
      else:
        colour = rng.integers(0, 256, channels)
        pixels = colour + rng.normal(0, 40, (height, width, channels))
      image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
      path = os.path.join(_mkdir(os.path.join(args.out, f"part{i % 20}")), f"img_{i}.{ext}")
      image.save(path, **({} if args.png else {"quality": 90}))
      for _ in range(1 + i % 5):
        caption = " ".join(rng.choice(WORDS, rng.integers(4, 16)))
        rows.writerow([name, caption, f"c{i % 50}"])
  print(f"wrote {args.num_images} images to {args.out}")


def _mkdir(path):
  os.makedirs(path, exist_ok=True)
  return path


if __name__ == "__main__":
  main()
