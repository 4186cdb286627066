"""Image conversion and sample grids."""

import io

import numpy as np
from PIL import Image
from PIL import ImageDraw
from PIL import ImageFont

__all__ = ["to_uint8", "to_rgb", "caption_grid", "save_png"]


def to_uint8(images):
  """`[-1, 1]` float -> uint8 (DM-GAN: `x * 127.5 + 127.5`, clipped, truncated)."""
  x = np.asarray(images, np.float32)
  return np.clip(x * 127.5 + 127.5, 0, 255).astype(np.uint8)


def to_rgb(im):
  """Any PIL mode -> 8-bit RGB: 16-bit and float grey scaled, alpha composited over white,
  CMYK through its ICC profile when it has one (`im.convert("RGB")` clips 16-bit grey to white
  and drops alpha). A PNG's transparent colour key (tRNS, in RGB, grey or palette images) counts
  as alpha. What data.build stores and what evaluation reads from a user's folder."""
  mode = im.mode
  if mode == "RGB" and "transparency" not in im.info:  # an RGB PNG may key a colour (tRNS)
    return im
  if mode.startswith("I") or mode == "F":
    a = np.asarray(im).astype(np.float64)
    if mode.startswith("I;16"):
      a = a / 257.0
    elif mode == "I":
      a = a / 257.0 if a.max(initial=0) > 255 else a
    elif a.max(initial=0) <= 1.0:
      a = a * 255.0
    return Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L").convert("RGB")
  if mode == "CMYK":
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
  if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
    rgba = im.convert("RGBA")
    white = Image.new("RGBA", im.size, (255, 255, 255, 255))
    white.alpha_composite(rgba)
    return white.convert("RGB")
  return im.convert("RGB")


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
