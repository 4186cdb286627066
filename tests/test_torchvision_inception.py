"""torchvision's Inception-v3 in Keras, AttnGAN's DAMSM image encoder import, the DM-GAN-style
"PyTorch FID" extractor and compare_fid's three FIDs, checked against PyTorch reference modules
written here after torchvision `models/inception.py`, AttnGAN `code/model.py` (`CNN_ENCODER`) and
DM-GAN `eval/FID/{inception,fid_score}.py` (random weights, randomised batch-norm statistics)."""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import torch.nn.functional as F  # pylint: disable=g-import-not-at-top,wrong-import-position
from torch import nn  # pylint: disable=g-import-not-at-top,wrong-import-position

from evaluation import compare_fid, features, inception  # pylint: disable=wrong-import-position
from msmt_tf.interop import attngan_image  # pylint: disable=wrong-import-position
from msmt_tf.models import inception_blocks  # pylint: disable=wrong-import-position
from msmt_tf.models import torchvision_inception as tvi  # pylint: disable=wrong-import-position
from msmt_tf.models.text_encoder import ImageEncoder  # pylint: disable=wrong-import-position

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WEIGHTS_DIR = os.environ.get("MSMT_FID_INCEPTION_DIR", os.path.join(REPO, ".cache",
                                                                    "fid_inception"))
HAVE_FID_WEIGHTS = os.path.isfile(os.path.join(WEIGHTS_DIR, inception.WEIGHTS_FILE))
TOL = 1e-4  # max |ours - torch| / max |torch|


# ------------------------------------------------------------------------------ PyTorch reference
class BasicConv2d(nn.Module):

  def __init__(self, cin, cout, **kw):
    super().__init__()
    self.conv = nn.Conv2d(cin, cout, bias=False, **kw)
    self.bn = nn.BatchNorm2d(cout, eps=0.001)

  def forward(self, x):
    return F.relu(self.bn(self.conv(x)))


class InceptionA(nn.Module):

  def __init__(self, cin, pool_features):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch5x5_1 = BasicConv2d(cin, 48, kernel_size=1)
    self.branch5x5_2 = BasicConv2d(48, 64, kernel_size=5, padding=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, padding=1)
    self.branch_pool = BasicConv2d(cin, pool_features, kernel_size=1)

  def forward(self, x):
    pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
    return torch.cat([self.branch1x1(x), self.branch5x5_2(self.branch5x5_1(x)),
                      self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))), pool], 1)


class InceptionB(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3 = BasicConv2d(cin, 384, kernel_size=3, stride=2)
    self.branch3x3dbl_1 = BasicConv2d(cin, 64, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(64, 96, kernel_size=3, padding=1)
    self.branch3x3dbl_3 = BasicConv2d(96, 96, kernel_size=3, stride=2)

  def forward(self, x):
    return torch.cat([self.branch3x3(x),
                      self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x))),
                      F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionC(nn.Module):

  def __init__(self, cin, c7):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7_2 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7_3 = BasicConv2d(c7, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_1 = BasicConv2d(cin, c7, kernel_size=1)
    self.branch7x7dbl_2 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_3 = BasicConv2d(c7, c7, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7dbl_4 = BasicConv2d(c7, c7, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7dbl_5 = BasicConv2d(c7, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    d = x
    for i in range(1, 6):
      d = getattr(self, f"branch7x7dbl_{i}")(d)
    pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
    return torch.cat([self.branch1x1(x), b7, d, pool], 1)


class InceptionD(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch3x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch3x3_2 = BasicConv2d(192, 320, kernel_size=3, stride=2)
    self.branch7x7x3_1 = BasicConv2d(cin, 192, kernel_size=1)
    self.branch7x7x3_2 = BasicConv2d(192, 192, kernel_size=(1, 7), padding=(0, 3))
    self.branch7x7x3_3 = BasicConv2d(192, 192, kernel_size=(7, 1), padding=(3, 0))
    self.branch7x7x3_4 = BasicConv2d(192, 192, kernel_size=3, stride=2)

  def forward(self, x):
    d = x
    for i in range(1, 5):
      d = getattr(self, f"branch7x7x3_{i}")(d)
    return torch.cat([self.branch3x3_2(self.branch3x3_1(x)), d,
                      F.max_pool2d(x, kernel_size=3, stride=2)], 1)


class InceptionE(nn.Module):

  def __init__(self, cin):
    super().__init__()
    self.branch1x1 = BasicConv2d(cin, 320, kernel_size=1)
    self.branch3x3_1 = BasicConv2d(cin, 384, kernel_size=1)
    self.branch3x3_2a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3_2b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch3x3dbl_1 = BasicConv2d(cin, 448, kernel_size=1)
    self.branch3x3dbl_2 = BasicConv2d(448, 384, kernel_size=3, padding=1)
    self.branch3x3dbl_3a = BasicConv2d(384, 384, kernel_size=(1, 3), padding=(0, 1))
    self.branch3x3dbl_3b = BasicConv2d(384, 384, kernel_size=(3, 1), padding=(1, 0))
    self.branch_pool = BasicConv2d(cin, 192, kernel_size=1)

  def forward(self, x):
    a = self.branch3x3_1(x)
    b = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
    pool = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1))
    return torch.cat([self.branch1x1(x), self.branch3x3_2a(a), self.branch3x3_2b(a),
                      self.branch3x3dbl_3a(b), self.branch3x3dbl_3b(b), pool], 1)


class InceptionAux(nn.Module):

  def __init__(self, cin, num_classes):
    super().__init__()
    self.conv0 = BasicConv2d(cin, 128, kernel_size=1)
    self.conv1 = BasicConv2d(128, 768, kernel_size=5)
    self.fc = nn.Linear(768, num_classes)


class Inception3(nn.Module):
  """torchvision's Inception3 (aux_logits=True, transform_input=False): names and modules."""

  def __init__(self, num_classes=1000):
    super().__init__()
    self.Conv2d_1a_3x3 = BasicConv2d(3, 32, kernel_size=3, stride=2)
    self.Conv2d_2a_3x3 = BasicConv2d(32, 32, kernel_size=3)
    self.Conv2d_2b_3x3 = BasicConv2d(32, 64, kernel_size=3, padding=1)
    self.Conv2d_3b_1x1 = BasicConv2d(64, 80, kernel_size=1)
    self.Conv2d_4a_3x3 = BasicConv2d(80, 192, kernel_size=3)
    self.Mixed_5b = InceptionA(192, 32)
    self.Mixed_5c = InceptionA(256, 64)
    self.Mixed_5d = InceptionA(288, 64)
    self.Mixed_6a = InceptionB(288)
    self.Mixed_6b = InceptionC(768, 128)
    self.Mixed_6c = InceptionC(768, 160)
    self.Mixed_6d = InceptionC(768, 160)
    self.Mixed_6e = InceptionC(768, 192)
    self.AuxLogits = InceptionAux(768, num_classes)
    self.Mixed_7a = InceptionD(768)
    self.Mixed_7b = InceptionE(1280)
    self.Mixed_7c = InceptionE(2048)
    self.fc = nn.Linear(2048, num_classes)

  def features(self, x):
    """(Mixed_6e, Mixed_7c, 2048-d average pool), as Inception3._forward computes them."""
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
    for name in ("5b", "5c", "5d", "6a", "6b", "6c", "6d", "6e"):
      x = getattr(self, f"Mixed_{name}")(x)
    m6e = x
    x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
    return m6e, x, F.adaptive_avg_pool2d(x, (1, 1)).flatten(1)


TRUNK = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
         "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d",
         "Mixed_6e", "Mixed_7a", "Mixed_7b", "Mixed_7c"]


class CNNEncoder(nn.Module):
  """AttnGAN `CNN_ENCODER`: torchvision's trunk modules + emb_features + emb_cnn_code."""

  def __init__(self, inception_model, nef=256, align_corners=True):
    super().__init__()
    for name in TRUNK:
      setattr(self, name, getattr(inception_model, name))
    self.emb_features = nn.Conv2d(768, nef, kernel_size=1, stride=1, padding=0, bias=False)
    self.emb_cnn_code = nn.Linear(2048, nef)
    self.emb_features.weight.data.uniform_(-0.1, 0.1)
    self.emb_cnn_code.weight.data.uniform_(-0.1, 0.1)
    self.align_corners = align_corners

  def forward(self, x):
    x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=self.align_corners)
    x = self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x)))
    x = F.max_pool2d(x, kernel_size=3, stride=2)
    x = F.max_pool2d(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)), kernel_size=3, stride=2)
    for name in TRUNK[5:13]:
      x = getattr(self, name)(x)
    features = x
    x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
    x = F.avg_pool2d(x, kernel_size=8).view(x.size(0), -1)
    return self.emb_features(features), self.emb_cnn_code(x)


def dmgan_reference_features(model, uint8_images):
  """DM-GAN eval/FID: PIL Resize((299, 299)) -> ToTensor -> upsample(align_corners=True) ->
  per-channel x * std/0.5 + (mean-0.5)/0.5 -> blocks up to the final average pool."""
  from PIL import Image
  batch = []
  for im in uint8_images:
    r = Image.fromarray(im).resize((299, 299), Image.BILINEAR)
    batch.append(torch.from_numpy(np.asarray(r, np.float32) / 255.0).permute(2, 0, 1))
  x = torch.stack(batch)
  x = F.interpolate(x, size=(299, 299), mode="bilinear", align_corners=True).clone()
  for c, (m, s) in enumerate(zip((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))):
    x[:, c] = x[:, c] * (s / 0.5) + (m - 0.5) / 0.5
  with torch.no_grad():
    return model.features(x)[2].numpy().astype(np.float64)


def randomize(model, seed):
  """Random weights and non-trivial BN statistics that keep activations O(1): one forward in
  training mode sets the running statistics to the batch's, then they are perturbed."""
  gen = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        m.momentum = 1.0
    model.train()
    model.features(torch.rand(2, 3, 299, 299, generator=gen) * 2 - 1)
    model.eval()
    for m in model.modules():
      if isinstance(m, nn.BatchNorm2d):
        n = m.num_features
        std = m.running_var.clamp_min(1e-4).sqrt()
        m.running_mean += 0.2 * std * torch.randn(n, generator=gen)
        m.running_var *= 0.6 + 0.8 * torch.rand(n, generator=gen)
        m.weight.copy_(0.6 + 0.8 * torch.rand(n, generator=gen))
        m.bias.copy_(0.2 * torch.randn(n, generator=gen))
  return model


def rel_err(ours, ref):
  ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
  assert ours.shape == ref.shape, (ours.shape, ref.shape)
  return float(np.abs(ours - ref).max() / np.abs(ref).max())


def numpy_state(module):
  return {k: v.detach().numpy().copy() for k, v in module.state_dict().items()}


@pytest.fixture(scope="module")
def torch_inception():
  torch.manual_seed(0)
  return randomize(Inception3(), seed=1)


@pytest.fixture(scope="module")
def keras_inception(torch_inception):
  model = tvi.TorchvisionInceptionV3(outputs=("Mixed_6e", "Mixed_7c", "pool"))
  ignored = tvi.load_torchvision_weights(model, numpy_state(torch_inception))
  return model, ignored


# ------------------------------------------------------------------------------ ops
def test_resize_modes_match_torch_interpolate():
  rng = np.random.default_rng(3)
  for h, w, size in ((37, 29, 61), (64, 64, 299), (80, 70, 33)):
    img = rng.uniform(-1, 1, (2, h, w, 3)).astype(np.float32)
    t = torch.from_numpy(img).permute(0, 3, 1, 2)
    for align in (True, False):
      ours = np.asarray(inception_blocks.resize_bilinear(
          img, size, mode="align_corners" if align else "half_pixel"))
      ref = F.interpolate(t, size=(size, size), mode="bilinear", align_corners=align)
      np.testing.assert_allclose(ours, ref.permute(0, 2, 3, 1).numpy(), atol=2e-5)
  same = rng.uniform(0, 1, (1, 299, 299, 3)).astype(np.float32)
  for mode in inception_blocks.RESIZE_MODES:
    np.testing.assert_array_equal(np.asarray(inception_blocks.resize_bilinear(same, 299,
                                                                              mode=mode)), same)
  with pytest.raises(ValueError, match="resize mode"):
    inception_blocks.resize_bilinear(same, 10, mode="nearest")


def test_pools_follow_torchvision_conventions():
  x = np.random.default_rng(4).standard_normal((2, 9, 7, 5)).astype(np.float32) + 2.0
  t = torch.from_numpy(x).permute(0, 3, 1, 2)
  include = F.avg_pool2d(t, kernel_size=3, stride=1, padding=1).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(inception_blocks.avg_pool_include_pad(x)), include,
                             rtol=1e-5, atol=1e-6)
  exclude = F.avg_pool2d(t, 3, 1, 1, count_include_pad=False).permute(0, 2, 3, 1).numpy()
  np.testing.assert_allclose(np.asarray(inception_blocks.avg_pool_exclude_pad(x)), exclude,
                             rtol=1e-5, atol=1e-6)
  assert np.abs(include - exclude).max() > 0.1  # the two conventions really differ at borders
  np.testing.assert_array_equal(np.asarray(inception_blocks.max_pool_valid(x)),
                                F.max_pool2d(t, 3, 2).permute(0, 2, 3, 1).numpy())


# ------------------------------------------------------------------------------ trunk
def test_torchvision_trunk_matches_pytorch(torch_inception, keras_inception):
  model, ignored = keras_inception
  assert len(model.weights) == 94 * 5
  assert any(k.startswith("AuxLogits.") for k in ignored) and "fc.weight" in ignored
  assert "Conv2d_1a_3x3.bn.num_batches_tracked" in ignored
  x = np.random.default_rng(5).uniform(-1, 1, (2, 299, 299, 3)).astype(np.float32)
  with torch.no_grad():
    ref = torch_inception.features(torch.from_numpy(x).permute(0, 3, 1, 2))
  ours = model(x)
  errors = {}
  for name, o, r in zip(("Mixed_6e", "Mixed_7c", "pool"), ours, ref):
    r = r.numpy()
    if r.ndim == 4:
      r = r.transpose(0, 2, 3, 1)
    errors[name] = rel_err(o, r)
  print("torchvision trunk max |diff| / max |ref|:", errors)
  assert max(errors.values()) <= TOL, errors
  assert float(np.std(ref[2].numpy())) > 1e-2  # the reference is not degenerate


def test_outputs_selection_and_config():
  model = tvi.TorchvisionInceptionV3(outputs="Mixed_6e")
  out = model(np.zeros((1, 299, 299, 3), np.float32))
  assert tuple(out.shape) == (1, 17, 17, 768)
  cfg = model.get_config()
  assert cfg["outputs"] == ["Mixed_6e"] and cfg["transform_input"] is False
  with pytest.raises(ValueError, match="outputs must be"):
    tvi.TorchvisionInceptionV3(outputs=("logits",))


def test_load_errors_list_missing_unexpected_and_shapes(torch_inception):
  model = tvi.TorchvisionInceptionV3()
  before = np.asarray(model.convs["Conv2d_1a_3x3"].kernel).copy()
  state = numpy_state(torch_inception)
  del state["Mixed_6b.branch7x7_2.bn.running_var"]
  state["Mixed_6b.branch7x7_9.conv.weight"] = np.zeros((1,), np.float32)
  state["Mixed_7c.branch_pool.conv.weight"] = np.zeros((192, 2048, 3, 3), np.float32)
  state["Conv2d_1a_3x3.conv.weight"] = state["Conv2d_1a_3x3.conv.weight"] + 1
  with pytest.raises(ValueError) as e:
    tvi.load_torchvision_weights(model, state, source="some.pth")
  msg = str(e.value)
  for part in ("some.pth", "1 missing key(s): Mixed_6b.branch7x7_2.bn.running_var",
               "1 unexpected key(s): Mixed_6b.branch7x7_9.conv.weight",
               "Mixed_7c.branch_pool.conv.weight: (192, 2048, 3, 3) in the file, expected "
               "(192, 2048, 1, 1)"):
    assert part in msg, msg
  np.testing.assert_array_equal(np.asarray(model.convs["Conv2d_1a_3x3"].kernel), before)
  prefixed = {f"module.{k}": v for k, v in numpy_state(torch_inception).items()}
  assert "module.fc.weight" in tvi.load_torchvision_weights(model, prefixed, prefix="module.")
  with pytest.raises(ValueError, match="no Conv2d_1a_3x3.conv.weight"):
    tvi.split_state_dict({"encoder.weight": np.zeros(3)}, "text_encoder200.pth")


# ------------------------------------------------------------------------------ AttnGAN encoder
def save(obj, path, legacy):
  torch.save(obj, str(path), _use_new_zipfile_serialization=not legacy)
  return str(path)


def test_attngan_image_encoder_round_trip_both_formats(torch_inception, tmp_path):
  torch.manual_seed(6)
  encoder = CNNEncoder(torch_inception, nef=256, align_corners=True).eval()
  images = np.random.default_rng(6).uniform(-1, 1, (2, 256, 256, 3)).astype(np.float32)
  with torch.no_grad():
    ref_local, ref_code = encoder(torch.from_numpy(images).permute(0, 3, 1, 2))
  ref_local = ref_local.numpy().transpose(0, 2, 3, 1)
  keras_enc = None
  for legacy in (False, True):
    path = save(encoder.state_dict(), tmp_path / f"image_encoder{int(legacy)}.pth", legacy)
    keras_enc = attngan_image.load_image_encoder(path)
    assert keras_enc.nef == 256 and keras_enc.align_corners is True
    local, code = keras_enc(images)
    errors = rel_err(local, ref_local), rel_err(code, ref_code.numpy())
    print(f"AttnGAN image encoder ({'legacy' if legacy else 'zip'} file): features, code max "
          f"|diff| / max |ref| = {errors[0]:.2e}, {errors[1]:.2e}")
    assert max(errors) <= TOL, errors
  # Config round trip and a .keras save / load keep the convention and the weights.
  cfg = keras_enc.get_config()
  assert cfg["trunk"] == "torchvision_inception_v3" and cfg["align_corners"] is True
  clone = ImageEncoder.from_config(cfg)
  assert clone.resize_align_corners and clone.trunk_name == "torchvision_inception_v3"
  keras_enc.save(tmp_path / "image_encoder.keras")
  import keras
  loaded = keras.saving.load_model(tmp_path / "image_encoder.keras")
  np.testing.assert_allclose(np.asarray(loaded(images)[1]), np.asarray(code), rtol=1e-6,
                             atol=1e-6)


def test_attngan_import_errors_name_the_problem(torch_inception, tmp_path):
  state = numpy_state(torch_inception)
  with pytest.raises(ValueError, match="missing emb_features.weight.*torchvision's inception_v3 "
                     "classifier"):
    attngan_image.image_encoder_from_state_dict(state, source="inception_v3_google.pth")
  trunk = {k: v for k, v in state.items() if not k.startswith(("fc.", "AuxLogits."))}
  head = {"emb_features.weight": np.zeros((256, 768, 1, 1), np.float32),
          "emb_cnn_code.weight": np.zeros((256, 1024), np.float32),
          "emb_cnn_code.bias": np.zeros((256,), np.float32),
          "emb_extra.weight": np.zeros((3,), np.float32)}
  with pytest.raises(ValueError) as e:
    attngan_image.image_encoder_from_state_dict({**trunk, **head}, source="enc.pth")
  msg = str(e.value)
  assert "enc.pth" in msg and "emb_cnn_code.weight: (256, 1024) in the file, expected (256, " \
      "2048)" in msg and "unexpected key(s): emb_extra.weight" in msg, msg
  bad = tmp_path / "not_a_pth.pth"
  bad.write_bytes(b"hello")
  with pytest.raises(ValueError, match="not_a_pth.pth"):
    attngan_image.load_image_encoder(str(bad))
  with pytest.raises(ValueError, match="align_corners"):
    ImageEncoder(trunk="torchvision_inception_v3", align_corners="yes")


# ------------------------------------------------------------------------------ FID extractor
def test_dmgan_preprocessing_matches_pil_numpy():
  from PIL import Image
  rng = np.random.default_rng(7)
  for size in (64, 256, 299, 333):
    images = rng.integers(0, 256, (2, size, size, 3), dtype=np.uint8)
    ours = features.dmgan_preprocess(images.astype(np.float32))
    for image, got in zip(images, ours):
      ref = np.asarray(Image.fromarray(image).resize((299, 299), Image.BILINEAR)) / 255.0
      np.testing.assert_array_equal(got, ref.astype(np.float32))
  x = rng.uniform(0, 1, (1, 5, 5, 3)).astype(np.float32)
  mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
  np.testing.assert_allclose(np.asarray(tvi.transform_input(x)),
                             x * (std / 0.5) + (mean - 0.5) / 0.5, rtol=1e-6, atol=1e-6)


def test_torchvision_extractor_matches_dmgan_reference(torch_inception, tmp_path, monkeypatch):
  from PIL import Image
  rng = np.random.default_rng(8)
  images = np.stack([np.asarray(Image.fromarray(rng.integers(0, 256, (8, 8, 3), np.uint8)).resize(
      (64, 64), Image.BILINEAR)) for _ in range(3)])
  ref = dmgan_reference_features(torch_inception, images)
  path = save(torch_inception.state_dict(), tmp_path / "inception_v3_google-0123abcd.pth", True)
  ext = features.make("torchvision", torchvision_inception=path)
  assert ext.kind == "torchvision" and not ext.verified
  assert ext.label().startswith("UNVERIFIED WEIGHTS") and "does not start with" in ext.label()
  err = rel_err(ext(images.astype(np.float32))["pool_3"], ref)
  print(f"DM-GAN-style extractor vs PyTorch reference: max |diff| / max |ref| = {err:.2e}")
  assert err <= TOL
  # The trunk of an AttnGAN image encoder file gives the same features.
  enc_path = save(CNNEncoder(torch_inception).state_dict(), tmp_path / "image_encoder200.pth",
                  False)
  ext2 = features.TorchvisionExtractor(enc_path)
  assert ext2.kind == "attngan_image_encoder" and not ext2.verified
  assert rel_err(ext2(images.astype(np.float32))["pool_3"], ref) <= TOL
  # The same file as ImageEncoder trunk weights (torch OIHW -> Keras HWIO).
  enc = ImageEncoder(32, trunk="torchvision_inception_v3", trunk_weights=path)
  np.testing.assert_array_equal(
      np.asarray(enc.trunk.convs["Mixed_7c.branch3x3dbl_3b"].kernel),
      torch_inception.Mixed_7c.branch3x3dbl_3b.conv.weight.detach().numpy().transpose(2, 3, 1, 0))
  # Verified only when the name is a known release and its SHA-256 starts with the name's hex.
  digest = hashlib.sha256(open(path, "rb").read()).hexdigest()
  good = tmp_path / f"inception_v3_google-{digest[:8]}.pth"
  os.rename(path, good)
  assert features.torchvision_weights_check(str(good))[0] is False  # unknown name
  monkeypatch.setitem(features.TORCHVISION_RELEASES, good.name, "test release")
  ok, why = features.torchvision_weights_check(str(good))
  assert ok and "test release" in why
  with pytest.raises(FileNotFoundError, match="--torchvision_inception is not set"):
    features.make("torchvision")
  with pytest.raises(FileNotFoundError, match="--torchvision_inception .*nope.pth"):
    features.make("torchvision", torchvision_inception=str(tmp_path / "nope.pth"))


# ------------------------------------------------------------------------------ compare_fid
def write_pngs(folder, n, offset, rng):
  from PIL import Image
  os.makedirs(folder)
  for i in range(n):
    im = np.clip(rng.uniform(0, 190, (4, 4, 3)) + offset, 0, 255).astype(np.uint8)
    Image.fromarray(im).resize((48, 48), Image.BILINEAR).save(os.path.join(folder, f"{i}.png"))


@pytest.mark.skipif(not HAVE_FID_WEIGHTS, reason=f"no official FID weights in {WEIGHTS_DIR} "
                    "(bash .ci/fid_weights)")
def test_compare_fid_prints_three_fids_on_the_same_files(torch_inception, tmp_path):
  """The official, current pytorch-fid and DM-GAN-style FIDs of the same files in one table,
  then (by default) the two preprocessing differences one at a time, deltas to the official."""
  rng = np.random.default_rng(9)
  write_pngs(tmp_path / "a", 7, 0, rng)
  write_pngs(tmp_path / "b", 7, 60, rng)
  pth = save(torch_inception.state_dict(), tmp_path / "standin_inception.pth", True)
  res = subprocess.run([sys.executable, "-m", "evaluation.compare_fid",
                        f"--images={tmp_path / 'a'}", f"--reference={tmp_path / 'b'}",
                        f"--fid_inception_dir={WEIGHTS_DIR}", "--eval_batch_size=7",
                        f"--torchvision_inception={pth}", "--dmgan_batch_size=3",
                        f"--save_stats={tmp_path / 'stats'}"],
                       cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  lines = res.stdout.splitlines()
  rows = {}
  for prefix in ("official TF FID", "PyTorch FID (current pytorch-fid", "DM-GAN-style",
                 "  resize rule only", "  normalisation only"):
    line = next(l for l in lines if l.startswith(prefix))
    rows[prefix] = [float(v.rstrip("%")) for v in line.split("  [")[0].split()[-3:]]
  values = [v[0] for v in rows.values()]
  assert all(v > 0 for v in values) and len(set(values[:3])) == 3, res.stdout
  assert rows["official TF FID"][1] == 0.0
  for value, delta, _ in rows.values():
    assert abs(value - values[0] - delta) < 1e-3
  assert "resize rule (TF1 legacy vs half-pixel bilinear vs PIL)" in res.stdout
  assert ("note: FID from 7 and 7 images with 2048-d features: the covariances are singular"
          in res.stdout)
  dm_line = next(l for l in lines if l.startswith("DM-GAN-style"))
  assert "[UNVERIFIED WEIGHTS]" in dm_line
  assert "6 / 6 images used (1 / 1 dropped" in res.stdout, res.stdout
  # The DM-GAN row's statistics are those of the PyTorch reference's features of the same
  # files (the first 6 of each folder in sorted order).
  from PIL import Image
  for d, part in (("a", "images"), ("b", "reference")):
    act = dmgan_reference_features(torch_inception, np.stack([np.asarray(Image.open(
        tmp_path / d / f"{i}.png").convert("RGB")) for i in range(6)]))
    with np.load(tmp_path / "stats" / f"dmgan-{part}.npz") as f:
      assert int(f["num_images"]) == 6
      assert rel_err(f["mu"], act.mean(axis=0)) <= TOL
      assert rel_err(f["sigma"], np.cov(act, rowvar=False)) <= 10 * TOL
  assert os.path.isfile(tmp_path / "stats" / "official-images.npz")
