"""torchvision's ImageNet Inception-v3 (`torchvision.models.inception_v3`) in Keras 3 (keras.ops).

The network AttnGAN's DAMSM image encoder (`CNN_ENCODER`) is built on, and the one the old
pytorch-fid (before its PR #16, used by DM-GAN's `eval/FID`) computed "PyTorch FID" with. The
architecture follows torchvision's `inception.py` exactly: every `BasicConv2d` is conv (no bias)
-> `BatchNorm2d(eps=0.001)` with affine scale and shift -> ReLU; the pooling branch of the
A/C/E blocks is `F.avg_pool2d(x, 3, stride=1, padding=1)` counting the padded zeros
(`count_include_pad=True`, PyTorch's default; Mixed_7c too); max pools are 3x3 / stride 2,
unpadded, `ceil_mode=False`. This differs from Keras' `InceptionV3` application (whose average
pools do not count padding) and from the official FID network (`evaluation/inception.py`: no BN
scale, padding not counted, max pool in Mixed_7c). Both share their blocks
(`msmt_tf.models.inception_blocks`).

Weights load from a PyTorch state dict read without PyTorch
(`msmt_tf.interop.torch_io.load_state_dict`) with `load_torchvision_weights`: names as in
torchvision (`Conv2d_1a_3x3.conv.weight`, `Mixed_5b.branch1x1.bn.running_var`, ...).
"""

import re

from keras import ops
import numpy as np

from msmt_tf.interop import torch_io
from msmt_tf.models import inception_blocks as blocks

__all__ = ["TorchvisionInceptionV3", "OUTPUTS", "load_torchvision_weights", "load_weights_file",
           "split_state_dict", "transform_input", "state_dict_names", "IMAGENET_MEAN",
           "IMAGENET_STD", "ATTNGAN_HEAD_KEYS"]

OUTPUTS = ("Mixed_6e", "Mixed_7c", "pool")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_BLOCK_KEYS = ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
               "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c")
_BRANCHES = {
    "a": ["branch1x1", "branch5x5_1", "branch5x5_2", "branch3x3dbl_1", "branch3x3dbl_2",
          "branch3x3dbl_3", "branch_pool"],
    "b": ["branch3x3", "branch3x3dbl_1", "branch3x3dbl_2", "branch3x3dbl_3"],
    "c": ["branch1x1", "branch7x7_1", "branch7x7_2", "branch7x7_3", "branch7x7dbl_1",
          "branch7x7dbl_2", "branch7x7dbl_3", "branch7x7dbl_4", "branch7x7dbl_5", "branch_pool"],
    "d": ["branch3x3_1", "branch3x3_2", "branch7x7x3_1", "branch7x7x3_2", "branch7x7x3_3",
          "branch7x7x3_4"],
    "e": ["branch1x1", "branch3x3_1", "branch3x3_2a", "branch3x3_2b", "branch3x3dbl_1",
          "branch3x3dbl_2", "branch3x3dbl_3a", "branch3x3dbl_3b", "branch_pool"],
}
# Parts of torchvision's state dict that the trunk does not use: loaded nowhere, but listed.
IGNORED = (re.compile(r"^AuxLogits\."), re.compile(r"^fc\."),
           re.compile(r"(^|\.)num_batches_tracked$"))
# AttnGAN CNN_ENCODER's own layers on top of the trunk.
ATTNGAN_HEAD_KEYS = ("emb_features.weight", "emb_cnn_code.weight", "emb_cnn_code.bias")
_BN_FIELDS = (("weight", "gamma"), ("bias", "beta"), ("running_mean", "mean"),
              ("running_var", "var"))


def transform_input(x):
  """torchvision's `transform_input=True` step on NHWC input: per channel
  `x * (std / 0.5) + (mean - 0.5) / 0.5` with the ImageNet mean/std (maps ImageNet-normalised
  input to [-1, 1]; DM-GAN's FID applies it to [0, 1] input)."""
  scale = np.array([s / 0.5 for s in IMAGENET_STD], np.float32)
  shift = np.array([(m - 0.5) / 0.5 for m in IMAGENET_MEAN], np.float32)
  return ops.cast(x, "float32") * ops.convert_to_tensor(scale) + ops.convert_to_tensor(shift)


class TorchvisionInceptionV3(blocks.InceptionV3Body):
  """torchvision `Inception3` up to Mixed_7c (+ its global average pool); frozen, no classifier.

  Args:
    outputs: which tensors `call` returns, in this order, from 'Mixed_6e' (`[N, 17, 17, 768]`,
      AttnGAN's region features), 'Mixed_7c' (`[N, 8, 8, 2048]`) and 'pool' (`[N, 2048]`, the
      average pool before `fc`: the old pytorch-fid's 2048-d features).
    transform_input: apply torchvision's `transform_input` step (`transform_input`) first.
      False (torchvision's constructor default, AttnGAN's `CNN_ENCODER`).

  Call arguments:
    x: `[N, 299, 299, 3]` float, already resized and normalised (e.g. [-1, 1]); the network is
      fully convolutional, other sizes >= 75 run too.

  Returns:
    One tensor when `outputs` has one entry, else a tuple in the order of `outputs`.
  """

  bn_scale = True

  @classmethod
  def stem_names(cls):
    return ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3"]

  @classmethod
  def block_names(cls):
    return [(k, [f"{k}.{b}" for b in _BRANCHES[kind]])
            for k, (kind, _, _) in zip(_BLOCK_KEYS, blocks.BLOCKS)]

  def pool(self, index):
    return blocks.avg_pool_include_pad

  def __init__(self, outputs=("pool",), transform_input=False, **kwargs):
    outputs = (outputs,) if isinstance(outputs, str) else tuple(outputs)
    bad = [o for o in outputs if o not in OUTPUTS]
    if bad or not outputs:
      raise ValueError(f"outputs must be a non-empty subset of {OUTPUTS}, got {outputs}")
    super().__init__(**kwargs)
    self.outputs_wanted = outputs
    self.transform_input = transform_input

  def call(self, x):
    if self.transform_input:
      x = transform_input(x)
    keep = ["Mixed_7c" if o == "pool" else o for o in self.outputs_wanted]
    out = self.run_body(ops.cast(x, "float32"), keep=sorted(set(keep)))
    result = tuple(ops.mean(out["Mixed_7c"], axis=(1, 2)) if o == "pool" else out[o]
                   for o in self.outputs_wanted)
    return result[0] if len(result) == 1 else result

  def compute_output_shape(self, input_shape):
    n = input_shape[0]
    shapes = {"Mixed_6e": (n, 17, 17, 768), "Mixed_7c": (n, 8, 8, 2048), "pool": (n, 2048)}
    result = tuple(shapes[o] for o in self.outputs_wanted)
    return result[0] if len(result) == 1 else result

  def get_config(self):
    return {**super().get_config(), "outputs": list(self.outputs_wanted),
            "transform_input": self.transform_input}


def state_dict_names(model, prefix=""):
  """{torchvision state-dict name: (layer, attribute, torch shape)} of the trunk's tensors."""
  names = {}
  for name, layer in model.convs.items():
    names[f"{prefix}{name}.conv.weight"] = (layer, "kernel",
                                            (layer.cout, layer.cin, layer.kh, layer.kw))
    for torch_field, attr in _BN_FIELDS:
      names[f"{prefix}{name}.bn.{torch_field}"] = (layer, attr, (layer.cout,))
  return names


def _short(keys):
  """Sorted, at most 8 (the torchvision loaders' error messages)."""
  return torch_io.key_list(sorted(keys), 8)


def load_torchvision_weights(model, arrays, prefix="", source="state dict"):
  """Sets a `TorchvisionInceptionV3`'s weights from a torchvision-named state dict.

  Args:
    model: the `TorchvisionInceptionV3` (or any `InceptionV3Body` with torchvision names).
    arrays: {name: numpy array} (e.g. `msmt_tf.interop.torch_io.load_state_dict(path)`); conv
      kernels OIHW as PyTorch stores them.
    prefix: prepended to every trunk name (e.g. 'module.' for a `DataParallel` file).
    source: what to call `arrays` in errors (the file name).

  Returns:
    The sorted list of keys that were ignored: `AuxLogits.*`, `fc.*` (the classifier, unused by
    the trunk) and `*.num_batches_tracked`.

  Raises:
    ValueError: listing every missing key, every unexpected key and every shape mismatch (file
      shape vs expected); nothing is assigned then.
  """
  expected = state_dict_names(model, prefix)
  ignored, unexpected = [], []
  for key in arrays:
    if key in expected:
      continue
    rest = key[len(prefix):] if key.startswith(prefix) else None
    if rest is not None and any(p.search(rest) for p in IGNORED):
      ignored.append(key)
    else:
      unexpected.append(key)
  missing = [k for k in expected if k not in arrays]
  mismatched = [f"{k}: {tuple(np.shape(arrays[k]))} in the file, expected {shape}"
                for k, (_, _, shape) in expected.items()
                if k in arrays and tuple(np.shape(arrays[k])) != shape]
  if missing or unexpected or mismatched:
    problems = []
    if missing:
      problems.append(f"{len(missing)} missing key(s): {_short(missing)}")
    if unexpected:
      problems.append(f"{len(unexpected)} unexpected key(s): {_short(unexpected)}")
    if mismatched:
      problems.append(f"{len(mismatched)} shape mismatch(es): {'; '.join(mismatched[:8])}"
                      + (" ..." if len(mismatched) > 8 else ""))
    raise ValueError(f"{source} is not a torchvision Inception-v3 state dict"
                     f"{f' (prefix {prefix!r})' if prefix else ''}: " + "; ".join(problems))
  values = []
  for key, (layer, attr, _) in expected.items():
    value = np.asarray(arrays[key], np.float32)
    if not np.isfinite(value).all():
      raise ValueError(f"{source}: {key} has non-finite values")
    values.append((getattr(layer, attr),
                   np.transpose(value, (2, 3, 1, 0)) if attr == "kernel" else value))  # OIHW->HWIO
  for var, value in values:
    var.assign(value)
  return sorted(ignored)


def split_state_dict(arrays, source="state dict"):
  """Which kind of file a state dict is, and its trunk part.

  Returns:
    `(kind, trunk_arrays, head_arrays)`: kind 'attngan_image_encoder' (AttnGAN's `CNN_ENCODER`,
    e.g. `image_encoder200.pth`: the trunk + `emb_features` / `emb_cnn_code`, which go to
    head_arrays), 'torchvision' (torchvision's `inception_v3` with `fc` and maybe `AuxLogits`,
    kept in trunk_arrays: the loader lists them as ignored) or 'trunk' (the trunk alone).

  Raises:
    ValueError: naming `source` when there is no `Conv2d_1a_3x3.conv.weight` (not an
      Inception-v3 of torchvision's naming).
  """
  if "Conv2d_1a_3x3.conv.weight" not in arrays:
    raise ValueError(f"{source} is neither torchvision's inception_v3 state dict nor AttnGAN's "
                     f"image encoder: no Conv2d_1a_3x3.conv.weight (keys: {_short(arrays)})")
  head = {k: v for k, v in arrays.items() if k.startswith(("emb_features.", "emb_cnn_code."))}
  trunk = {k: v for k, v in arrays.items() if k not in head}
  if head:
    kind = "attngan_image_encoder"
  elif any(k.startswith(("fc.", "AuxLogits.")) for k in arrays):
    kind = "torchvision"
  else:
    kind = "trunk"
  return kind, trunk, head


def load_weights_file(model, path):
  """Loads the trunk weights of a `torch.save` file (torchvision's `inception_v3_google-*.pth`
  or AttnGAN's `image_encoder*.pth`) into `model`, without PyTorch; returns the file's kind
  (see `split_state_dict`)."""
  from msmt_tf.interop import torch_io  # pylint: disable=g-import-not-at-top
  arrays = torch_io.load_state_dict(path, anchor="Conv2d_1a_3x3.conv.weight")
  kind, trunk, _ = split_state_dict(arrays, path)
  load_torchvision_weights(model, trunk, source=path)
  return kind
