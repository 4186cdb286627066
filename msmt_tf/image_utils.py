"""Image conversion and sample grids."""

import io
import re

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

__all__ = ["to_uint8", "to_rgb", "sample_bits", "CONVERT_VERSION", "caption_grid", "save_png"]


def to_uint8(images):
  """`[-1, 1]` float -> uint8 (DM-GAN: `x * 127.5 + 127.5`, clipped, truncated)."""
  x = np.asarray(images, np.float32)
  return np.clip(x * 127.5 + 127.5, 0, 255).astype(np.uint8)


# Bumped whenever `to_rgb` stores some image differently: data.build redoes staged conversions
# made by an older rule (2: a PNG's colour key (tRNS) is white at every bit depth).
CONVERT_VERSION = 2


def sample_bits(im):
  """Bits per sample a PNG stores (1, 2, 4, 8 or 16), read from the decoder's raw mode, so only
  before `im.load()`; None when unknown. Pillow decodes 1/2/4-bit grey to 8 bits and 16-bit RGB
  to its high bytes, but keeps a tRNS colour key at the file's depth."""
  tile = getattr(im, "tile", None)
  raw = tile[0][3] if tile and isinstance(tile[0][3], str) else None
  if raw is None:
    return None
  if raw.endswith(";16B") or raw.endswith(";16"):
    return 16
  m = re.fullmatch(r"[LP];([124])", raw)
  if m:
    return int(m.group(1))
  return 1 if raw == "1" else 8


def _keyed(im, key, bits):
  """Boolean `[H, W]`: the pixels that match a non-palette colour key (tRNS), or None when the
  key is not one. 16-bit RGB can only be matched on its high bytes (what Pillow decodes): every
  pixel within 1/256 of the key on each channel counts as keyed there."""
  mode = im.mode
  if mode == "RGB":
    if not (isinstance(key, tuple) and len(key) == 3):
      return None
    if bits == 16 or max(key) > 255:
      key = tuple(int(k) >> 8 for k in key)
    return (np.asarray(im) == np.asarray(key, np.uint8)).all(axis=-1)
  if not isinstance(key, int):
    return None
  if mode.startswith("I;16"):
    return np.asarray(im) == key
  if mode == "1":  # Pillow keeps a 1-bit key as 0 or 255, as it decodes the pixels
    return np.asarray(im.convert("L")) == (255 if key else 0)
  if mode == "L":
    depth = bits if bits in (1, 2, 4) else 8
    if key > (1 << depth) - 1:
      return None
    level = key * 255 // ((1 << depth) - 1)  # where Pillow puts that grey on 8 bits
    return np.asarray(im.convert("L")) == level
  return None


def to_rgb(im, bits=None):
  """Any PIL mode -> 8-bit RGB: 16-bit and float grey scaled, alpha composited over white,
  CMYK through its ICC profile when it has one (`im.convert("RGB")` clips 16-bit grey to white
  and drops alpha). A PNG's transparent colour key (tRNS) is white too, in RGB, grey (1 to 16
  bits) and palette images; `bits` is the file's bits per sample (`sample_bits`, read before
  `im.load()`; found here when `im` is not loaded yet). What data.build stores and what
  evaluation reads from a user's folder."""
  mode = im.mode
  if mode == "RGB" and "transparency" not in im.info:
    return im
  if bits is None:
    bits = sample_bits(im)
  key = im.info.get("transparency")
  keyed = None if key is None or mode == "P" else _keyed(im, key, bits)
  if mode.startswith("I") or mode == "F":
    a = np.asarray(im).astype(np.float64)
    if mode.startswith("I;16"):
      a = a / 257.0
    elif mode == "I":
      a = a / 257.0 if a.max(initial=0) > 255 else a
    elif a.max(initial=0) <= 1.0:
      a = a * 255.0
    out = np.repeat(np.clip(np.rint(a), 0, 255).astype(np.uint8)[..., None], 3, axis=-1)
  elif mode == "CMYK":
    icc = im.info.get("icc_profile")
    if icc:
      try:
        from PIL import ImageCms  # pylint: disable=g-import-not-at-top
        src = ImageCms.ImageCmsProfile(io.BytesIO(icc))
        return ImageCms.profileToProfile(im, src, ImageCms.createProfile("sRGB"),
                                         outputMode="RGB")
      except Exception:  # No littlecms or a broken profile: the plain conversion below.
        pass
    return im.convert("RGB")
  elif mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and key is not None):
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    return white.convert("RGB")
  else:
    rgb = im if mode == "RGB" else im.convert("RGB")
    if keyed is None:
      return rgb
    out = np.array(rgb)
  if keyed is not None:
    out[keyed] = 255
  return Image.fromarray(out, "RGB")


def _wrap(text, width):
  words, lines, line = text.split(), [], ""
  for w in words:
    if len(line) + len(w) + 1 > width and line:
      lines.append(line)
      line = w
    else:
      line = f"{line} {w}".strip()
  if line:
    lines.append(line)
  return lines


def caption_grid(stage_images, captions, cell=192, text_lines=4):
  """A grid with one column per sample: every stage's image (resized to `cell`), caption below.

  Args:
    stage_images: list over stages of `[N, s, s, 3]` uint8.
    captions: N strings.
  Returns:
    a PIL image.
  """
  n = len(captions)
  rows = len(stage_images)
  text_h = 12 * text_lines + 6
  grid = Image.new("RGB", (n * (cell + 4) + 4, rows * (cell + 4) + 4 + text_h), (255, 255, 255))
  font = ImageFont.load_default()
  draw = ImageDraw.Draw(grid)
  chars = max(8, cell // 6)
  for j in range(n):
    x0 = 4 + j * (cell + 4)
    for r, images in enumerate(stage_images):
      img = Image.fromarray(images[j]).resize((cell, cell), Image.Resampling.NEAREST)
      grid.paste(img, (x0, 4 + r * (cell + 4)))
    y = 4 + rows * (cell + 4)
    for line in _wrap(captions[j], chars)[:text_lines]:
      draw.text((x0, y), line, fill=(0, 0, 0), font=font)
      y += 12
  return grid


def save_png(image, path):
  from msmt_tf import fileio  # pylint: disable=g-import-not-at-top
  return fileio.atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))
