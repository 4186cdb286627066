"""Image and caption transforms of the AttnGAN / DM-GAN data pipeline, as TensorFlow ops.

Facts (model_spec §1.3-§1.4): CUB images are cropped to a square-ish box around the bird's
bounding box (`r = int(0.75 max(w, h))`), resized so the shorter side is `int(size * 76 / 64)`
(304 for 256), randomly cropped to `size`, flipped with p = 0.5, and the 64/128 targets are
resized from that crop. Captions longer than `words_num` keep `words_num` words chosen uniformly
without replacement, in their original order. All randomness is stateless: it is a function of
the `seed` tensor passed in, so a pipeline is deterministic whatever its parallelism.
"""

import tensorflow as tf

__all__ = [
    "cub_crop_box", "load_size_for", "resized_size", "resize_shorter_side", "random_crop_flip",
    "center_crop", "resized_crop", "image_pyramid", "drop_words", "pad_tokens",
]


def cub_crop_box(bbox, width, height):
  """DM-GAN's bounding-box crop: returns `[left, top, right, bottom]` as int32.

  A box outside its image gives right <= left or bottom <= top (an empty crop): the pipeline
  stops there naming the file, and `datasets.cub_crop_region` (the same arithmetic in Python)
  lets inspect find such boxes first.

  Args:
    bbox: `[x, y, w, h]` float (CUB `bounding_boxes.txt`).
    width, height: image size in pixels.
  """
  bbox = tf.cast(bbox, tf.float64)
  x, y, w, h = bbox[0], bbox[1], bbox[2], bbox[3]
  # int() truncates towards zero; every quantity here is non-negative, so floor is the same.
  r = tf.floor(tf.maximum(w, h) * 0.75)
  cx = tf.floor((2.0 * x + w) / 2.0)
  cy = tf.floor((2.0 * y + h) / 2.0)
  width = tf.cast(width, tf.float64)
  height = tf.cast(height, tf.float64)
  zero = tf.constant(0.0, tf.float64)
  box = tf.stack([
      tf.maximum(zero, cx - r), tf.maximum(zero, cy - r),
      tf.minimum(width, cx + r), tf.minimum(height, cy + r)])
  return tf.cast(box, tf.int32)


def load_size_for(image_size):
  """Shorter-side size before the random crop: `int(image_size * 76 / 64)` (304 for 256)."""
  return int(image_size * 76 / 64)


def resized_size(height, width, size):
  """`[new_h, new_w]` int32 with the shorter side `size` (torchvision `Resize(int)` arithmetic:
  the long side becomes int(size * long / short), truncated)."""
  size_t = tf.constant(size, tf.int32)
  new_h = tf.where(height <= width, size_t, tf.cast(size * height // width, tf.int32))
  new_w = tf.where(height <= width, tf.cast(size * width // height, tf.int32), size_t)
  return tf.stack([new_h, new_w])


def resize_shorter_side(image, size):
  """Resizes so the shorter side is `size` (torchvision `Resize(int)` arithmetic), bilinear.
  With `random_crop_flip` / `center_crop`: the two-step form of `resized_crop`, which the
  pipeline uses; kept as its reference (tests/test_data.py)."""
  shape = tf.shape(image)
  return tf.image.resize(tf.cast(image, tf.float32), resized_size(shape[0], shape[1], size),
                         method="bilinear", antialias=True)


def _crop_offsets(seed, height, width, size):
  """(top, left, flip) of `random_crop_flip` on a `height` x `width` image (stateless)."""
  seeds = tf.random.experimental.stateless_split(seed, 3)
  top = tf.random.stateless_uniform([], seeds[0], 0, height - size + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], seeds[1], 0, width - size + 1, dtype=tf.int32)
  return top, left, tf.random.stateless_uniform([], seeds[2]) < 0.5


def random_crop_flip(image, size, seed):
  """Random `size` x `size` crop then horizontal flip with p = 0.5 (stateless)."""
  shape = tf.shape(image)
  top, left, flip = _crop_offsets(seed, shape[0], shape[1], size)
  image = image[top:top + size, left:left + size, :]
  return tf.cond(flip, lambda: tf.reverse(image, axis=[1]), lambda: image)


def center_crop(image, size):
  shape = tf.shape(image)
  top = (shape[0] - size) // 2
  left = (shape[1] - size) // 2
  return image[top:top + size, left:left + size, :]


def resized_crop(image, load_size, size, seed=None):
  """`random_crop_flip(resize_shorter_side(image, load_size), size, seed)` (or `center_crop`
  when `seed` is None) without resizing the pixels the crop throws away: the same antialiased
  bilinear filter (TensorFlow's ScaleAndTranslate, which `tf.image.resize` runs), the same
  scale and the same crop offsets, evaluated on the `size` x `size` window only. The CUB crop
  keeps 256 x 256 of a 304 x >= 304 resize: about half the resize's work. Equal to the two-step
  version up to float rounding of the sample positions (tests/test_data.py)."""
  shape = tf.shape(image)
  new = resized_size(shape[0], shape[1], load_size)
  if seed is None:
    top, left, flip = (new[0] - size) // 2, (new[1] - size) // 2, None
  else:
    top, left, flip = _crop_offsets(seed, new[0], new[1], size)
  scale = tf.cast(new, tf.float32) / tf.cast(shape[:2], tf.float32)
  # The decoded uint8 pixels go in as they are: the kernel reads each as float (the same
  # output, bit for bit, as casting the whole image first, without writing a float32 copy of it).
  out = tf.raw_ops.ScaleAndTranslate(
      images=image[None], size=tf.constant([size, size], tf.int32),
      scale=scale, translation=-tf.cast(tf.stack([top, left]), tf.float32),
      kernel_type="triangle", antialias=True)[0]
  if flip is None:
    return out
  return tf.cond(flip, lambda: tf.reverse(out, axis=[1]), lambda: out)


def image_pyramid(image, sizes):
  """Returns the crop resized to each of `sizes` (the largest is the crop itself), in [-1, 1]."""
  out = []
  largest = max(sizes)
  for s in sizes:
    img = image if s == largest else tf.image.resize(
        image, [s, s], method="bilinear", antialias=True)
    img = tf.clip_by_value(img, 0.0, 255.0)
    img.set_shape([s, s, 3])
    out.append(img / 127.5 - 1.0)
  return out


def drop_words(tokens, words_num, seed):
  """Keeps `words_num` tokens chosen uniformly without replacement, in original order.

  Captions not longer than `words_num` are returned unchanged.
  """
  n = tf.shape(tokens)[0]

  def _drop():
    scores = tf.random.stateless_uniform([n], seed)
    keep = tf.sort(tf.math.top_k(scores, k=words_num).indices)
    return tf.gather(tokens, keep)

  return tf.cond(n > words_num, _drop, lambda: tokens)


def pad_tokens(tokens, words_num):
  """Zero-pads (right) to `words_num`; returns (ids [words_num] int32, length int32)."""
  tokens = tf.cast(tokens[:words_num], tf.int32)
  length = tf.shape(tokens)[0]
  ids = tf.pad(tokens, [[0, words_num - length]])
  ids.set_shape([words_num])
  return ids, length
