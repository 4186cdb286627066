r"""How close `data.build`'s scaled-down images are to a full-resolution reference (BUILD.md,
"Phone photos"): detailed JPEGs (1/f noise, so every scale has content; quality 90) of a few
sizes, each with one of the 8 EXIF orientations, converted by `build.convert_image` with
`--max_short_side` (default 355), against the reference: the whole image decoded, turned upright
(`ImageOps.exif_transpose`) and scaled with Lanczos to the same size.

    python benchmarks/resize_quality.py [--max_short_side 355 --images 16 --seed 0]

Prints the mean and largest per-image mean |difference| (0-255 levels, over all pixels and
channels) of three things:
  * stored: what `convert_image` writes (the JPEG decoded at a DCT scale still at least twice
    the target, Lanczos, the EXIF turn, then the q95 4:4:4 re-encode);
  * draft x2, before encoding: the same decode and Lanczos, not re-encoded (the scaling error
    alone);
  * draft x1, before encoding: a decode at the smallest DCT scale still at least the target
    (what Pillow's `draft` gives when asked for the target itself), for comparison.
Each line is also printed as JSON at the end.
"""

import argparse
import io
import json
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SIZES = [(4032, 3024), (1600, 1200), (1000, 750), (800, 800)]


def detailed_image(width, height, rng):
  """An RGB uint8 image of 1/f noise (natural-image-like spectrum: detail at every scale)."""
  import numpy as np  # pylint: disable=g-import-not-at-top
  fy = np.fft.fftfreq(height)[:, None]
  fx = np.fft.rfftfreq(width)[None, :]
  amplitude = 1.0 / np.maximum(np.hypot(fx, fy), 1.0 / max(width, height))
  channels = []
  for _ in range(3):
    phase = rng.uniform(0, 2 * np.pi, amplitude.shape)
    field = np.fft.irfft2(amplitude * np.exp(1j * phase), s=(height, width))
    field = (field - field.mean()) / field.std()
    channels.append(np.clip(128 + 40 * field, 0, 255))
  return np.stack(channels, -1).astype(np.uint8)


def scaled_before_encoding(path, target_upright, factor):
  """The decode (at a DCT scale still `factor` times the target), Lanczos and EXIF turn that
  `convert_image` makes, without its re-encode."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import build  # pylint: disable=g-import-not-at-top
  im = Image.open(path)
  orientation = im.getexif().get(0x0112, 1)
  turned = orientation in (5, 6, 7, 8)
  stored = target_upright[::-1] if turned else target_upright
  drafted = im.draft(None, (factor * stored[0], factor * stored[1]))
  box = drafted[1] if drafted else None
  return build.turn_upright(im.convert("RGB").resize(stored, Image.LANCZOS, box=box),
                           orientation)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--max_short_side", type=int, default=None)
  parser.add_argument("--images", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  import numpy as np  # pylint: disable=g-import-not-at-top
  from PIL import Image, ImageOps  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import build  # pylint: disable=g-import-not-at-top
  max_short_side = (build.DEFAULT_MAX_SHORT_SIDE if args.max_short_side is None
                    else args.max_short_side)
  if max_short_side < build.MIN_SIDE:
    raise SystemExit(f"--max_short_side must be at least {build.MIN_SIDE} (the images are to be "
                     f"scaled down), got {max_short_side}")
  rng = np.random.default_rng(args.seed)
  diffs = {"stored": [], "draft x2, before encoding": [], "draft x1, before encoding": []}
  with tempfile.TemporaryDirectory() as tmp:
    out_dir = os.path.join(tmp, "images")
    os.makedirs(out_dir)
    for i in range(args.images):
      width, height = SIZES[i % len(SIZES)]
      orientation = i % 8 + 1
      pixels = detailed_image(width, height, rng)  # as stored in the file (not upright)
      exif = Image.Exif()
      exif[0x0112] = orientation
      src = os.path.join(tmp, f"src{i}.jpg")
      Image.fromarray(pixels).save(src, format="JPEG", quality=90, exif=exif)
      with Image.open(src) as im:
        upright = ImageOps.exif_transpose(im).convert("RGB")
      target = build.scaled_size(upright.width, upright.height, max_short_side)
      reference = np.asarray(upright.resize(target, Image.LANCZOS), np.float64)
      result = build.convert_image(src, f"src{i}.jpg", out_dir, max_short_side=max_short_side)
      if result["problem"] or result["action"] != "resized":
        raise SystemExit(f"src{i}.jpg: {result}")
      with Image.open(os.path.join(out_dir, result["key"])) as stored:
        candidates = {"stored": stored.convert("RGB")}
      candidates["draft x2, before encoding"] = scaled_before_encoding(src, target, 2)
      candidates["draft x1, before encoding"] = scaled_before_encoding(src, target, 1)
      for name, image in candidates.items():
        got = np.asarray(image, np.float64)
        if got.shape != reference.shape:
          raise SystemExit(f"src{i}.jpg, {name}: {got.shape} against {reference.shape}")
        diffs[name].append(float(np.abs(got - reference).mean()))
      print(f"{width}x{height} orientation {orientation} -> {target[0]}x{target[1]}: " + ", ".join(
          f"{name} {diffs[name][-1]:.3f}" for name in diffs), flush=True)
  rows = []
  for name, values in diffs.items():
    rows.append(dict(what=name, images=len(values), max_short_side=max_short_side,
                     mean_abs_diff_levels=round(float(np.mean(values)), 3),
                     max_image_mean_abs_diff_levels=round(float(np.max(values)), 3)))
    print(f"{name}: mean |difference| {rows[-1]['mean_abs_diff_levels']:.2f} levels "
          f"(largest image mean {rows[-1]['max_image_mean_abs_diff_levels']:.2f})")
  for row in rows:
    print(json.dumps(row))


if __name__ == "__main__":
  main()
