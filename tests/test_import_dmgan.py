"""DM-GAN generator import (`msmt_tf.interop.dmgan`) against a PyTorch `G_NET` written here from
DM-GAN's `code/model.py` (MinfengZhu/DM-GAN @ d515995): both torch.save formats, the word-mask
quirk of the released models on and off, the run directory sample / export read, and errors."""

import collections
import json
import os
import re

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from msmt_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top
from msmt_tf.interop import dmgan  # pylint: disable=g-import-not-at-top
from msmt_tf.interop import torch_io  # pylint: disable=g-import-not-at-top

torch.set_num_threads(2)
TOL = 1e-4


# --------------------------------------------------------------- PyTorch reference (DM-GAN)

class GLU(nn.Module):

  def forward(self, x):
    nc = x.size(1) // 2
    return x[:, :nc] * torch.sigmoid(x[:, nc:])


def conv3x3(cin, cout):
  return nn.Conv2d(cin, cout, 3, 1, 1, bias=False)


def up_block(cin, cout):
  return nn.Sequential(nn.Upsample(scale_factor=2, mode="nearest"), conv3x3(cin, cout * 2),
                       nn.BatchNorm2d(cout * 2), GLU())


class ResBlock(nn.Module):

  def __init__(self, c):
    super().__init__()
    self.block = nn.Sequential(conv3x3(c, 2 * c), nn.BatchNorm2d(2 * c), GLU(), conv3x3(c, c),
                               nn.BatchNorm2d(c))

  def forward(self, x):
    return self.block(x) + x


class CANet(nn.Module):

  def __init__(self, t_dim, c_dim):
    super().__init__()
    self.c_dim = c_dim
    self.fc = nn.Linear(t_dim, c_dim * 4, bias=True)
    self.relu = GLU()

  def forward(self, sent, eps):
    x = self.relu(self.fc(sent))
    mu, logvar = x[:, :self.c_dim], x[:, self.c_dim:]
    return eps * torch.exp(0.5 * logvar) + mu, mu, logvar


class InitStage(nn.Module):

  def __init__(self, ngf16, in_dim):
    super().__init__()
    self.gf_dim = ngf16
    self.fc = nn.Sequential(nn.Linear(in_dim, ngf16 * 4 * 4 * 2, bias=False),
                            nn.BatchNorm1d(ngf16 * 4 * 4 * 2), GLU())
    self.upsample1 = up_block(ngf16, ngf16 // 2)
    self.upsample2 = up_block(ngf16 // 2, ngf16 // 4)
    self.upsample3 = up_block(ngf16 // 4, ngf16 // 8)
    self.upsample4 = up_block(ngf16 // 8, ngf16 // 16)

  def forward(self, z, c):
    x = self.fc(torch.cat((c, z), 1)).view(-1, self.gf_dim, 4, 4)
    return self.upsample4(self.upsample3(self.upsample2(self.upsample1(x))))


def memory_read(h, key, value, mask, per_sample):
  """DM-GAN's `Memory.forward`; per_sample=True replaces `mask.repeat(queryL, 1)` by each
  sample's own mask."""
  b, _, ih, iw = h.shape
  q, length = ih * iw, key.size(2)
  weight = torch.bmm(h.view(b, -1, q).transpose(1, 2), key).view(b * q, length)
  if per_sample:
    rows = mask[:, None, :].expand(b, q, length).reshape(b * q, length)
  else:
    rows = mask.repeat(q, 1)
  weight = torch.softmax(weight.masked_fill(rows, -float("inf")), dim=1)
  weight = weight.view(b, q, length).transpose(1, 2)
  return torch.bmm(value, weight).view(b, -1, ih, iw)


class NextStage(nn.Module):

  def __init__(self, ngf, nef, size, r_num):
    super().__init__()
    self.avg = nn.AvgPool2d(kernel_size=size)
    self.A = nn.Linear(nef, 1, bias=False)
    self.B = nn.Linear(ngf, 1, bias=False)
    self.M_r = nn.Sequential(nn.Conv1d(ngf, ngf * 2, 1), nn.ReLU())
    self.M_w = nn.Sequential(nn.Conv1d(nef, ngf * 2, 1), nn.ReLU())
    self.key = nn.Sequential(nn.Conv1d(ngf * 2, ngf, 1), nn.ReLU())
    self.value = nn.Sequential(nn.Conv1d(ngf * 2, ngf, 1), nn.ReLU())
    self.response_gate = nn.Sequential(nn.Conv2d(ngf * 2, 1, 1), nn.Sigmoid())
    self.residual = nn.Sequential(*[ResBlock(ngf * 2) for _ in range(r_num)])
    self.upsample = up_block(ngf * 2, ngf)
    self.per_sample = False

  def forward(self, h, words, mask):
    length = words.size(2)
    avg = self.avg(h).squeeze(3)                                          # B x ngf x 1
    gate = torch.sigmoid(self.A(words.transpose(1, 2)).transpose(1, 2)
                         + self.B(avg.transpose(1, 2)).repeat(1, 1, length))
    memory = self.M_w(words) * gate + self.M_r(avg.repeat(1, 1, length)) * (1 - gate)
    out = memory_read(h, self.key(memory), self.value(memory), mask, self.per_sample)
    r = self.response_gate(torch.cat((h, out), 1))
    h_new = h * (1 - r) + r * out
    return self.upsample(self.residual(torch.cat((h_new, h_new), 1)))


class GetImage(nn.Module):

  def __init__(self, ngf):
    super().__init__()
    self.img = nn.Sequential(conv3x3(ngf, 3), nn.Tanh())

  def forward(self, h):
    return self.img(h)


class GNet(nn.Module):
  """DM-GAN's G_NET (BRANCH_NUM 3); `forward` takes the CA noise explicitly."""

  def __init__(self, ngf, nef, ncf, z_dim, r_num):
    super().__init__()
    self.ca_net = CANet(nef, ncf)
    self.h_net1 = InitStage(ngf * 16, z_dim + ncf)
    self.img_net1 = GetImage(ngf)
    self.h_net2 = NextStage(ngf, nef, 64, r_num)
    self.img_net2 = GetImage(ngf)
    self.h_net3 = NextStage(ngf, nef, 128, r_num)
    self.img_net3 = GetImage(ngf)

  def set_per_sample_mask(self, on):
    self.h_net2.per_sample = self.h_net3.per_sample = on

  def forward(self, z, sent, words, mask, eps):
    c, _, _ = self.ca_net(sent, eps)
    h1 = self.h_net1(z, c)
    h2 = self.h_net2(h1, words, mask)
    h3 = self.h_net3(h2, words, mask)
    return [self.img_net1(h1), self.img_net2(h2), self.img_net3(h3)]


def make_gnet(ngf, nef, ncf, z_dim, r_num, seed=0):
  """G_NET with random weights and random BatchNorm statistics, in eval mode."""
  torch.manual_seed(seed)
  net = GNet(ngf, nef, ncf, z_dim, r_num)
  with torch.no_grad():
    for m in net.modules():
      if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        m.weight.normal_(1.0, 0.3)
        m.bias.normal_(0.0, 0.3)
        m.running_mean.normal_(0.0, 0.3)
        m.running_var.uniform_(0.3, 2.0)
      elif isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Linear)):
        m.weight.mul_(2.0)
        if m.bias is not None:
          m.bias.normal_(0.0, 0.3)
  return net.eval()


DIMS = dict(ngf=4, nef=16, ncf=5, z_dim=6)


def config_for(ngf, nef, ncf, z_dim, r_num, word_mask, vocab=50):
  return ModelConfig(vocab_size=vocab, initial_stage="ig", refinement="dmgan", channels=ngf,
                     num_res=r_num, condition_dim=ncf, z_dim=z_dim, text_dim=nef,
                     dmgan_word_mask=word_mask)


def inputs(batch, length, lengths, nef, ncf, z_dim, seed=1):
  rng = np.random.default_rng(seed)
  valid = np.arange(length)[None, :] < np.asarray(lengths)[:, None]
  words = rng.standard_normal((batch, length, nef)).astype("float32") * valid[..., None]
  return (words, rng.standard_normal((batch, nef)).astype("float32"), valid,
          rng.standard_normal((batch, z_dim)).astype("float32"),
          rng.standard_normal((batch, ncf)).astype("float32"))


def torch_images(net, words, sent, valid, z, eps):
  with torch.no_grad():
    t = lambda x: torch.from_numpy(np.array(x))  # pylint: disable=unnecessary-lambda-assignment
    out = net(t(z), t(sent), t(words).transpose(1, 2).contiguous(), t(~np.asarray(valid)),
              t(eps))
  return [x.numpy().transpose(0, 2, 3, 1) for x in out]


def keras_images(generator, words, sent, valid, z, eps):
  out = generator(words, sent, valid, z, eps, training=False)["images"]
  return [np.asarray(x) for x in out]


def max_errors(a, b):
  return [float(np.max(np.abs(x - y))) for x, y in zip(a, b)]


def numpy_state_dict(net):
  return collections.OrderedDict((k, v.numpy().copy()) for k, v in net.state_dict().items())


# ------------------------------------------------------------------------------ key mapping

@pytest.mark.parametrize("r_num", [2, 3])
def test_key_map_is_exactly_g_nets_state_dict(r_num):
  net = make_gnet(**DIMS, r_num=r_num)
  g = config_for(**DIMS, r_num=r_num, word_mask="per_sample").build_generator(7)
  mapping = dmgan.key_map(g)
  torch_keys = [k for k in net.state_dict() if not k.endswith("num_batches_tracked")]
  assert sorted(mapping) == sorted(torch_keys)
  mapped = [id(v) for v, _ in mapping.values()]
  assert len(set(mapped)) == len(mapped)
  unmapped = [v for v in g.variables if id(v) not in set(mapped)]
  assert [v.path for v in unmapped] == [g.ca.seed_generator.state.path]  # the CA's RNG
  assert dmgan.describe_state_dict(numpy_state_dict(net)) == {
      "CONDITION_DIM (--condition_dim)": 5, "EMBEDDING_DIM (--text_dim)": 16,
      "Z_DIM (--z_dim)": 6, "GF_DIM (--channels)": 4, "BRANCH_NUM (--num_stages)": 3,
      "R_NUM (--num_res)": r_num}


def test_init_fc_permutation_matches_torch_view():
  """Ours reshapes the fc's GLU output channel-last, DM-GAN `view(-1, 16 ngf, 4, 4)`."""
  c16 = 6
  perm = dmgan._init_fc_permutation(c16)  # pylint: disable=protected-access
  torch_out = np.arange(2 * c16 * 16)
  ours = torch_out[perm]
  torch_value = torch_out[:c16 * 16].reshape(c16, 4, 4).transpose(1, 2, 0)
  np.testing.assert_array_equal(ours[:c16 * 16].reshape(4, 4, c16), torch_value)
  np.testing.assert_array_equal(ours[c16 * 16:].reshape(4, 4, c16), torch_value + c16 * 16)


# ---------------------------------------------------------------- images equal G_NET's

@pytest.fixture(scope="module")
def small():
  """G_NET (R_NUM 2) at reduced widths, its files in both formats, and one batch of 3 captions
  of different lengths (7, 4, 2 words)."""
  net = make_gnet(**DIMS, r_num=2)
  return net, inputs(3, 7, [7, 4, 2], DIMS["nef"], DIMS["ncf"], DIMS["z_dim"])


def save_formats(net, folder, data_parallel=False, drop_tracked=False):
  sd = net.state_dict()
  if drop_tracked:  # as PyTorch 0.4.0 wrote BatchNorm (no num_batches_tracked)
    sd = collections.OrderedDict((k, v) for k, v in sd.items() if "num_batches" not in k)
  if data_parallel:
    sd = collections.OrderedDict((f"module.{k}", v) for k, v in sd.items())
  legacy, zipped = os.path.join(folder, "netG_legacy.pth"), os.path.join(folder, "netG_zip.pth")
  torch.save(sd, legacy, _use_new_zipfile_serialization=False)
  torch.save(sd, zipped)
  return {"legacy": legacy, "zip": zipped}


@pytest.mark.parametrize("word_mask", ["official_repeat", "per_sample"])
def test_images_equal_g_net_from_both_formats(small, tmp_path, word_mask):
  net, batch = small
  net.set_per_sample_mask(word_mask == "per_sample")
  expected = torch_images(net, *batch)
  assert min(float(np.std(x)) for x in expected) > 0.1  # images far from constant
  files = save_formats(net, str(tmp_path), data_parallel=word_mask == "official_repeat",
                       drop_tracked=word_mask == "per_sample")
  g = config_for(**DIMS, r_num=2, word_mask=word_mask).build_generator(7)
  errors = {}
  for fmt, path in files.items():
    for v in g.variables[1:]:
      v.assign(np.zeros(v.shape, v.dtype))
    report = dmgan.assign_state_dict(g, torch_io.load_state_dict(path), path)
    assert report.assigned_keys == len(dmgan.key_map(g))
    errors[fmt] = max_errors(keras_images(g, *batch), expected)
  print(f"max |ours - G_NET| per stage 64/128/256, word_mask={word_mask}: {errors}")
  for fmt, errs in errors.items():
    assert max(errs) <= TOL, (fmt, errs)


def test_word_mask_quirk_changes_images_as_g_net_does(small, tmp_path):
  """With captions of different lengths the quirk changes stages 2-3 (not stage 1), in G_NET
  and in ours alike; with equal lengths it changes nothing. The option survives `.keras`."""
  import keras  # pylint: disable=g-import-not-at-top
  net, (words, sent, valid, z, eps) = small
  state = numpy_state_dict(net)
  outs = {}
  for mode in ("official_repeat", "per_sample"):
    g = config_for(**DIMS, r_num=2, word_mask=mode).build_generator(7)
    dmgan.assign_state_dict(g, state)
    outs[mode] = keras_images(g, words, sent, valid, z, eps)
    if mode == "official_repeat":
      g.save(str(tmp_path / "g.keras"))
      loaded = keras.saving.load_model(str(tmp_path / "g.keras"))
      assert loaded.refine_stages[1].word_mask == mode
      assert max(max_errors(keras_images(loaded, words, sent, valid, z, eps), outs[mode])) == 0
    same_len = np.ones_like(valid)
    outs[mode + "_full"] = keras_images(g, words, sent, same_len, z, eps)
  net.set_per_sample_mask(False)
  quirk_ref = torch_images(net, words, sent, valid, z, eps)
  net.set_per_sample_mask(True)
  sample_ref = torch_images(net, words, sent, valid, z, eps)
  diff = max_errors(outs["official_repeat"], outs["per_sample"])
  ref_diff = max_errors(quirk_ref, sample_ref)
  print(f"quirk on vs off, max |diff| per stage: ours {diff}, G_NET {ref_diff}")
  assert diff[0] == 0.0 and min(diff[1:]) > 1e-2 and min(ref_diff[1:]) > 1e-2
  assert max(max_errors(outs["official_repeat"], quirk_ref)) <= TOL
  assert max(max_errors(outs["per_sample"], sample_ref)) <= TOL
  assert max(max_errors(outs["official_repeat_full"], outs["per_sample_full"])) <= 1e-6


def test_a_wrong_mapping_is_caught(small, monkeypatch):
  """The comparison is sharp: without the fc's channel-first permutation the images differ."""
  net, batch = small
  net.set_per_sample_mask(True)
  g = config_for(**DIMS, r_num=2, word_mask="per_sample").build_generator(7)
  monkeypatch.setattr(dmgan, "_init_fc_permutation", lambda c16: np.arange(2 * c16 * 16))
  dmgan.assign_state_dict(g, numpy_state_dict(net))
  assert max(max_errors(keras_images(g, *batch), torch_images(net, *batch))) > 1e-2


def test_real_cub_dims(tmp_path):
  """CUB's released dimensions (ngf 64, z 100, condition 100, text 256, R_NUM 2), legacy file."""
  dims = dict(ngf=64, nef=256, ncf=100, z_dim=100)
  net = make_gnet(**dims, r_num=2, seed=3)
  batch = inputs(2, 6, [6, 3], 256, 100, 100, seed=4)
  expected = torch_images(net, *batch)
  path = str(tmp_path / "netG_epoch_600.pth")
  sd = collections.OrderedDict((f"module.{k}", v) for k, v in net.state_dict().items())
  torch.save(sd, path, _use_new_zipfile_serialization=False)
  del net, sd
  g = config_for(**dims, r_num=2, word_mask="official_repeat", vocab=5450).build_generator(18)
  dmgan.assign_state_dict(g, torch_io.load_state_dict(path), path)
  errs = max_errors(keras_images(g, *batch), expected)
  print(f"CUB dims, legacy + module.: max |ours - G_NET| per stage {errs}")
  assert min(float(np.std(x)) for x in expected) > 0.1
  assert max(errs) <= TOL, errs


# ------------------------------------------------------------------------------- bad input

def test_errors_name_the_file_and_keys(small, tmp_path):
  net, _ = small
  state = numpy_state_dict(net)
  g = config_for(**DIMS, r_num=2, word_mask="per_sample").build_generator(7)
  before = [np.asarray(v).copy() for v in g.variables]
  bad = collections.OrderedDict(state)
  del bad["h_net3.key.0.bias"]
  bad["h_net2.extra.weight"] = np.zeros(3, np.float32)
  with pytest.raises(dmgan.DMGANImportError, match=r"f\.pth.*missing keys: h_net3\.key\.0\.bias"
                     r".*unexpected keys: h_net2\.extra\.weight"):
    dmgan.assign_state_dict(g, bad, "f.pth")
  coco_like = numpy_state_dict(make_gnet(**DIMS, r_num=3))
  with pytest.raises(dmgan.DMGANImportError,
                     match=r"unexpected keys: h_net2\.residual\.2.*R_NUM \(--num_res\) = 3 in "
                           r"the file, 2 in the flags"):
    dmgan.assign_state_dict(g, coco_like, "coco.pth")
  wide = numpy_state_dict(make_gnet(8, 16, 5, 6, 2))
  with pytest.raises(dmgan.DMGANImportError,
                     match=r"wide\.pth: \d+ tensor\(s\) do not fit.*h_net1\.fc\.0\.weight"
                           r".*GF_DIM \(--channels\) = 8 in the file, 4 in the flags"):
    dmgan.assign_state_dict(g, wide, "wide.pth")
  # A kernel of another size: the shape the config expects, in the file's (PyTorch's) layout.
  big = collections.OrderedDict(state)
  key = [k for k in state if k.startswith("img_net") and k.endswith(".weight")][-1]
  o, i, kh, kw = state[key].shape
  big[key] = np.zeros((o, i, kh + 2, kw + 2), np.float32)
  with pytest.raises(dmgan.DMGANImportError, match=re.escape(
      f"{key} {[o, i, kh + 2, kw + 2]} does not fit ") + r"\S+: " + re.escape(
          f"{[o, i, kh, kw]} expected")):
    dmgan.assign_state_dict(g, big, "big.pth")
  ints = collections.OrderedDict(state)
  ints["ca_net.fc.bias"] = ints["ca_net.fc.bias"].astype(np.int64)
  with pytest.raises(dmgan.DMGANImportError, match=r"ca_net\.fc\.bias has dtype int64"):
    dmgan.assign_state_dict(g, ints, "i.pth")
  for v, old in zip(g.variables, before):  # all or nothing
    np.testing.assert_array_equal(np.asarray(v), old)
  msmt = ModelConfig(vocab_size=50, channels=4, memory_dim=6, grid=4, num_heads=1, num_res=1,
                     condition_dim=5, z_dim=6, text_dim=16).build_generator(7)
  with pytest.raises(dmgan.DMGANImportError, match="--initial_stage=ig --refinement=dmgan"):
    dmgan.assign_state_dict(msmt, state)
  cfg = config_for(**DIMS, r_num=2, word_mask="per_sample")
  with pytest.raises(FileNotFoundError, match="nope.pth"):
    dmgan.load_generator(str(tmp_path / "nope.pth"), cfg, 7)
  junk = tmp_path / "junk.pth"
  junk.write_bytes(b"not a torch file at all")
  with pytest.raises(torch_io.TorchFileError, match="junk.pth"):
    dmgan.load_generator(str(junk), cfg, 7)


# ------------------------------------------------------------------ the run directory

def _damsm_folder(shapes_dir, tmp_path):
  """(vocabulary size, a DAMSM folder holding a random text encoder of that vocabulary)."""
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  from msmt_tf.models import RNNTextEncoder  # pylint: disable=g-import-not-at-top
  vocab = len(datasets.load_captions(shapes_dir, "shapes")[2])
  damsm = tmp_path / "damsm"
  damsm.mkdir()
  enc = RNNTextEncoder(vocab, 12, DIMS["nef"], name="text_encoder")
  enc.build((None, 25))
  enc.save(str(damsm / "text_encoder.keras"))
  return vocab, damsm


def test_run_directory_samples_like_g_net(small, shapes_dir, tmp_path):
  """write_run -> runs.load_run restores the released weights; msmt_tf.sample's PNGs equal
  G_NET's images of the same tokens (through the run's text encoder), z and CA noise."""
  from msmt_tf import checkpoint  # pylint: disable=g-import-not-at-top
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  from msmt_tf import sample  # pylint: disable=g-import-not-at-top
  import copy  # pylint: disable=g-import-not-at-top
  net = copy.deepcopy(small[0])
  with torch.no_grad():  # a memory read that matters: sharper word scores, its output let in
    for stage in (net.h_net2, net.h_net3):
      stage.key[0].weight.mul_(8.0)
      stage.M_w[0].weight.mul_(8.0)
      stage.value[0].weight.mul_(3.0)
      stage.response_gate[0].bias.fill_(4.0)
  vocab, damsm = _damsm_folder(shapes_dir, tmp_path)
  files = save_formats(net, str(tmp_path), data_parallel=True)
  cfg = config_for(**DIMS, r_num=2, word_mask="official_repeat", vocab=vocab)
  run = tmp_path / "run"
  data = {"dataset": "shapes", "data_dir": shapes_dir, "words_num": 18}
  path, report = dmgan.write_run(files["legacy"], str(run), cfg, data, str(damsm),
                                 flags_text="--netG=x\n")
  assert report.ignored and all(k.endswith("num_batches_tracked") for k in report.ignored)
  assert checkpoint.latest(str(run)) == (0, path)
  record = json.loads((run / "config.json").read_text())
  assert record["model"]["dmgan_word_mask"] == "official_repeat"
  assert record["damsm_dir"] == str(damsm) and record["imported"]["keys"] == report.assigned_keys
  with pytest.raises(FileExistsError, match="already holds a run"):
    dmgan.write_run(files["zip"], str(run), cfg, data, str(damsm))
  with pytest.raises(FileNotFoundError, match="text_encoder.keras not found"):
    dmgan.write_run(files["zip"], str(tmp_path / "r2"), cfg, data, str(tmp_path))
  other = config_for(**DIMS, r_num=2, word_mask="official_repeat", vocab=vocab + 1)
  with pytest.raises(ValueError, match=f"{vocab}-word vocabulary"):
    dmgan.write_run(files["zip"], str(tmp_path / "r3"), other, data, str(damsm))
  # Encoders of another width (the run could never be sampled): refused, nothing written.
  narrow = tmp_path / "damsm_narrow"
  narrow.mkdir()
  from msmt_tf.models import RNNTextEncoder  # pylint: disable=g-import-not-at-top
  enc = RNNTextEncoder(vocab, 12, 8, name="text_encoder")
  enc.build((None, 25))
  enc.save(str(narrow / "text_encoder.keras"))
  with pytest.raises(ValueError, match=f"damsm_narrow/text_encoder.keras has width 8, the "
                     f"generator reads {DIMS['nef']}-wide word features .*nothing was written"):
    dmgan.write_run(files["zip"], str(tmp_path / "r4"), cfg, data, str(narrow))
  assert not (tmp_path / "r4").exists()

  generator, text_encoder, _, _ = runs.load_run(str(run))
  assert generator.refine_stages[0].word_mask == "official_repeat" and generator.batch_coupled
  from PIL import Image  # pylint: disable=g-import-not-at-top
  net.set_per_sample_mask(False)

  def g_net_pngs(manifest, rows):
    """G_NET's last images of the sample plan's `rows`, in one batch, as 0..255 floats."""
    entries = sample.plan(datasets.load_split(shapes_dir, "shapes", "test"), max(rows) + 1,
                          manifest["words_num"], manifest["seed"])
    tokens = np.zeros((len(rows), manifest["words_num"]), np.int32)
    z = np.zeros((len(rows), DIMS["z_dim"]), np.float32)
    eps = np.zeros((len(rows), DIMS["ncf"]), np.float32)
    for r, i in enumerate(rows):
      tokens[r, :len(entries[i]["tokens"])] = entries[i]["tokens"]
      z[r], eps[r] = sample.noise_for(i, manifest["seed"], DIMS["z_dim"], DIMS["ncf"])
    words, sent = (np.asarray(x) for x in text_encoder(tokens, training=False))
    return np.clip(torch_images(net, words, sent, tokens != 0, z, eps)[-1] * 127.5 + 127.5,
                   0, 255)

  def png(folder, i):
    return np.asarray(Image.open(folder / sample.image_name(i)), dtype=np.float64)

  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  out = tmp_path / "images"
  manifest = sample.generate(str(run), str(out), 3, batch_size=3, progress=False)
  assert len({len(e["tokens"]) for e in manifest["images"]}) > 1  # different lengths: quirk on
  assert manifest["batch_size"] == 3
  expected = g_net_pngs(manifest, [0, 1, 2])
  for i in range(3):
    assert np.max(np.abs(png(out, i) - expected[i])) <= 1.0 + 1e-3, i
  # With the quirk an image depends on its batch-mates (G_NET's images of 3 and 4 batched with 4
  # again, as a padded last batch was before 2026-11-29, differ by up to 1.9 of 255): images are
  # made in batches of fixed indices (3 and 4 with 5, made and dropped), never with a padded or
  # resumed batch's rows, whatever --num_images and whichever images a resume needs.
  five, four = tmp_path / "five", tmp_path / "four"
  sample.generate(str(run), str(five), 5, batch_size=3, progress=False)
  sample.generate(str(run), str(four), 4, batch_size=3, progress=False)
  expected = g_net_pngs(manifest, [3, 4, 5])
  assert np.max(np.abs(g_net_pngs(manifest, [3, 4, 4])[:2] - expected[:2])) > 0.5
  for i in (3, 4):
    assert np.max(np.abs(png(five, i) - expected[i - 3])) <= 1.0 + 1e-3, i
  made = {i: (five / sample.image_name(i)).read_bytes() for i in range(5)}
  assert all(made[i] == (out / sample.image_name(i)).read_bytes() for i in range(3))
  assert made[3] == (four / sample.image_name(3)).read_bytes()
  for i in (1, 4):
    os.remove(five / sample.image_name(i))
  sample.generate(str(run), str(five), 5, batch_size=3, progress=False)
  assert made == {i: (five / sample.image_name(i)).read_bytes() for i in range(5)}
  with pytest.raises(ValueError, match=r"official_repeat word mask.*made in batches of 3; to "
                                       r"continue, pass --sample_batch_size=3"):
    sample.generate(str(run), str(five), 6, batch_size=2, progress=False)
  sample.generate(str(run), str(five), 5, batch_size=2, progress=False)  # complete: read as is
  assert made == {i: (five / sample.image_name(i)).read_bytes() for i in range(5)}
  # Imported again with --overwrite (other weights, same run and step): its images are refused.
  # (This file is a training checkpoint of several objects: the generator's entry is found.)
  state = numpy_state_dict(net)
  state["img_net3.img.0.weight"] *= 0.5
  other_file = str(tmp_path / "netG_other.pth")
  torch.save({"netG": collections.OrderedDict((k, torch.from_numpy(v)) for k, v in state.items()),
              "optimizerG": torch.optim.Adam(net.parameters()).state_dict(), "epoch": 600},
             other_file)
  dmgan.write_run(other_file, str(run), cfg, data, str(damsm), overwrite=True)
  before = folder_state(five)
  with pytest.raises(ValueError, match=r"five holds images of other weights than step 0 .*"
                                       r"trained or imported again \(import_torch --overwrite\)"):
    sample.generate(str(run), str(five), 5, batch_size=3, progress=False)
  assert folder_state(five) == before
  # The DAMSM text encoder replaced in its folder (same vocabulary and width): refused.
  from msmt_tf.models import RNNTextEncoder  # pylint: disable=g-import-not-at-top
  enc = RNNTextEncoder(vocab, 12, DIMS["nef"], name="text_encoder")
  enc.build((None, 25))
  enc.save(str(damsm / "text_encoder.keras"))
  with pytest.raises(ValueError, match=r"text_encoder.keras is not the one the run .* was "
                                       r"imported with .*imported again since"):
    runs.load_run(str(run))


def test_cli_writes_the_same_run(small, shapes_dir, tmp_path):
  """`python -m msmt_tf.import_torch dmgan_generator`: an explicit --dmgan_word_mask is kept,
  the checkpoint holds the file's weights; a missing file fails naming it."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  net, _ = small
  vocab, damsm = _damsm_folder(shapes_dir, tmp_path)
  path = save_formats(net, str(tmp_path))["zip"]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [sys.executable, "-m", "msmt_tf.import_torch", "dmgan_generator",
          "--flagfile=configs/cub_dmgan.cfg", "--dataset=shapes", f"--data_dir={shapes_dir}",
          f"--vocab_size={vocab}", "--channels=4", "--condition_dim=5", "--z_dim=6",
          "--text_dim=16", f"--damsm_dir={damsm}", "--dmgan_word_mask=per_sample"]
  res = subprocess.run(args + [f"--netG={path}", f"--out={tmp_path / 'run'}"], cwd=repo,
                       capture_output=True, text=True, timeout=300)
  assert res.returncode == 0, res.stderr
  assert "word mask per_sample" in res.stdout
  record = json.loads((tmp_path / "run" / "config.json").read_text())
  assert record["model"]["dmgan_word_mask"] == "per_sample" and record["model"]["num_res"] == 2
  assert f"--netG={path}" in (tmp_path / "run" / "flags.txt").read_text()
  ckpt = np.load(str(tmp_path / "run" / "checkpoints" / "ckpt-00000000.npz"))
  meta = json.loads(bytes(ckpt["__meta__"]).decode())
  ema_paths = [p for p, _ in meta["shapes"]["generator_ema"]]
  kernel = ckpt[f"generator_ema/{ema_paths.index('generator/to_image2/conv/kernel')}"]
  np.testing.assert_array_equal(kernel, net.img_net3.img[0].weight.detach().numpy()
                                .transpose(2, 3, 1, 0))
  for name in meta["shapes"]["generator"]:
    assert name in meta["shapes"]["generator_ema"]
  res = subprocess.run(args + [f"--netG={tmp_path / 'missing.pth'}", f"--out={tmp_path / 'r'}"],
                       cwd=repo, capture_output=True, text=True, timeout=300)
  assert res.returncode != 0 and f"not found: {tmp_path / 'missing.pth'}" in res.stderr


# ------------------------------------------------------------ refused before anything changes

def folder_state(folder):
  """{relative path: bytes} of every file under `folder`."""
  out = {}
  for root, _, names in os.walk(folder):
    for n in names:
      p = os.path.join(root, n)
      with open(p, "rb") as f:
        out[os.path.relpath(p, folder)] = f.read()
  return out


def test_non_finite_weights_are_refused(small, shapes_dir, tmp_path):
  """A netG whose last image conv is NaN would import and sample all-black PNGs."""
  net, _ = small
  state = numpy_state_dict(net)  # num_batches_tracked (int64) included: not checked
  state["img_net3.img.0.weight"][0, 0, 0, 0] = np.nan
  state["h_net2.A.weight"][:] = -np.inf
  g = config_for(**DIMS, r_num=2, word_mask="per_sample").build_generator(7)
  before = [np.asarray(v).copy() for v in g.variables]
  with pytest.raises(dmgan.DMGANImportError,
                     match=r"nan\.pth has non-finite values \(NaN or Inf\) in 2 tensor\(s\): "
                           r"h_net2\.A\.weight, img_net3\.img\.0\.weight"):
    dmgan.assign_state_dict(g, state, "nan.pth")
  for v, old in zip(g.variables, before):
    np.testing.assert_array_equal(np.asarray(v), old)
  vocab, damsm = _damsm_folder(shapes_dir, tmp_path)
  path = str(tmp_path / "netG_nan.pth")
  torch.save(collections.OrderedDict((k, torch.from_numpy(v)) for k, v in state.items()), path)
  cfg = config_for(**DIMS, r_num=2, word_mask="official_repeat", vocab=vocab)
  data = {"dataset": "shapes", "data_dir": shapes_dir, "words_num": 18}
  with pytest.raises(dmgan.DMGANImportError, match=r"netG_nan\.pth has non-finite values"):
    dmgan.write_run(path, str(tmp_path / "run"), cfg, data, str(damsm))
  assert not (tmp_path / "run").exists()


def test_damsm_encoders_given_as_net_g_are_named(small):
  g = config_for(**DIMS, r_num=2, word_mask="per_sample").build_generator(7)
  text = {"encoder.weight": np.zeros((50, 300), np.float32)}
  for d in ("", "_reverse"):
    text.update({f"rnn.weight_ih_l0{d}": np.zeros((512, 300), np.float32),
                 f"rnn.weight_hh_l0{d}": np.zeros((512, 128), np.float32),
                 f"rnn.bias_ih_l0{d}": np.zeros(512, np.float32),
                 f"rnn.bias_hh_l0{d}": np.zeros(512, np.float32)})
  with pytest.raises(dmgan.DMGANImportError) as e:
    dmgan.assign_state_dict(g, text, "text_encoder200.pth")
  msg = str(e.value)
  assert ("text_encoder200.pth is not a DM-GAN G_NET state dict: it looks like AttnGAN's DAMSM "
          "text encoder (RNN_ENCODER)") in msg and "damsm --text_encoder" in msg, msg
  assert "missing keys" not in msg and len(msg) < 300, msg
  image = {"Conv2d_1a_3x3.conv.weight": np.zeros((32, 3, 3, 3), np.float32),
           "Conv2d_1a_3x3.bn.num_batches_tracked": np.zeros((), np.int64),
           "Mixed_7c.branch_pool.conv.weight": np.zeros((192, 2048, 1, 1), np.float32),
           "emb_features.weight": np.zeros((256, 768, 1, 1), np.float32),
           "emb_cnn_code.weight": np.zeros((256, 2048), np.float32),
           "emb_cnn_code.bias": np.zeros(256, np.float32)}
  with pytest.raises(dmgan.DMGANImportError,
                     match=r"image_encoder200\.pth is not a DM-GAN G_NET state dict: it looks "
                           r"like AttnGAN's DAMSM image encoder \(CNN_ENCODER\) \(keys such as "
                           r"emb_features\.weight, emb_cnn_code\.weight, \.\.\. \(of its 6 "
                           r"keys\)\): .*damsm --image_encoder"):
    dmgan.assign_state_dict(g, image, "image_encoder200.pth")
  # AttnGAN's generator: G_NET's names, but word attention where DM-GAN has its memory.
  net = make_gnet(**DIMS, r_num=2)
  attn = collections.OrderedDict(
      (k, v) for k, v in numpy_state_dict(net).items()
      if not re.search(r"h_net[23]\.(A|B|M_r|M_w|key|value|response_gate)\.", k))
  for stage in ("h_net2", "h_net3"):
    attn[f"{stage}.att.conv_context.weight"] = np.zeros((4, 16, 1, 1), np.float32)
  with pytest.raises(dmgan.DMGANImportError,
                     match=r"bird_AttnGAN2\.pth looks like AttnGAN's generator .*keys such as "
                           r"h_net2\.att\.conv_context\.weight.*not DM-GAN's G_NET"):
    dmgan.assign_state_dict(g, attn, "bird_AttnGAN2.pth")


def _training_run(folder):
  """What msmt_tf.train leaves in a run directory (stand-ins of its files)."""
  (folder / "checkpoints").mkdir(parents=True)
  (folder / "checkpoints" / "ckpt-00000500.npz").write_bytes(b"trained")
  (folder / "config.json").write_text(json.dumps({"model": {"refinement": "dmgan"}}))
  (folder / "flags.txt").write_text("--run_dir=runs/cub_dmgan\n")
  (folder / "losses.jsonl").write_text('{"step": 1}\n')
  (folder / "generator_ema.keras").write_bytes(b"trained generator")
  (folder / "samples").mkdir()
  (folder / "samples" / "step-00000500.png").write_bytes(b"png")
  (folder / "tb").mkdir()
  (folder / "tb" / "events").write_bytes(b"tb")


def test_overwrite_replaces_only_an_earlier_import(small, shapes_dir, tmp_path):
  net, _ = small
  vocab, damsm = _damsm_folder(shapes_dir, tmp_path)
  path = save_formats(net, str(tmp_path))["zip"]
  cfg = config_for(**DIMS, r_num=2, word_mask="official_repeat", vocab=vocab)
  data = {"dataset": "shapes", "data_dir": shapes_dir, "words_num": 18}
  trained = tmp_path / "cub_dmgan"
  _training_run(trained)
  before = folder_state(trained)
  for overwrite in (True, False):
    with pytest.raises(FileExistsError) as e:
      dmgan.write_run(path, str(trained), cfg, data, str(damsm), overwrite=overwrite)
    msg = str(e.value)
    for part in (f"{trained} holds a training run (config.json, checkpoints, losses.jsonl, "
                 "generator_ema.keras, samples, tb;", "choose another --out",
                 "nothing was changed"):
      assert part in msg, msg
  assert folder_state(trained) == before
  # --out is a file: said so, the file untouched.
  taken = tmp_path / "x"
  taken.write_text("keep me")
  with pytest.raises(FileExistsError, match=f"--out {taken} is a file, not a folder"):
    dmgan.write_run(path, str(taken), cfg, data, str(damsm))
  assert taken.read_text() == "keep me"
  # An earlier import's folder is replaced with --overwrite, as before.
  run = tmp_path / "run"
  dmgan.write_run(path, str(run), cfg, data, str(damsm))
  with pytest.raises(FileExistsError, match="already holds a run.*--overwrite"):
    dmgan.write_run(path, str(run), cfg, data, str(damsm))
  ckpt, _ = dmgan.write_run(path, str(run), cfg, data, str(damsm), overwrite=True)
  assert os.listdir(run / "checkpoints") == [os.path.basename(ckpt)]
  assert "imported" in json.loads((run / "config.json").read_text())
  # A DAMSM folder (--out swapped with --damsm_dir) or a dataset: refused, nothing written.
  for folder, kind, marker in ((damsm, "DAMSM folder", "text_encoder.keras"),
                               (shapes_dir, "dataset", "captions.pickle")):
    before = folder_state(folder)
    with pytest.raises(FileExistsError, match=rf"--out {folder} is a {kind} \(it holds "
                                              rf"{marker}\).*nothing was changed"):
      dmgan.write_run(path, str(folder), cfg, data, str(damsm), overwrite=True)
    assert folder_state(folder) == before


def test_cli_records_the_run_and_names_wrong_paths(small, shapes_dir, tmp_path):
  """flags.txt holds the run's values (the word mask the import chose, --run_dir = --out) and
  no absl flags; a folder as --netG and a file as --out are named as such."""
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  net, _ = small
  vocab, damsm = _damsm_folder(shapes_dir, tmp_path)
  models = tmp_path / "models"
  models.mkdir()
  path = save_formats(net, str(models))["zip"]
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  args = [sys.executable, "-m", "msmt_tf.import_torch", "dmgan_generator",
          "--flagfile=configs/cub_dmgan.cfg", "--dataset=shapes", f"--data_dir={shapes_dir}",
          f"--vocab_size={vocab}", "--channels=4", "--condition_dim=5", "--z_dim=6",
          "--text_dim=16", f"--damsm_dir={damsm}"]

  def run(*extra):
    return subprocess.run(args + list(extra), cwd=repo, capture_output=True, text=True,
                          timeout=300)
  out = tmp_path / "released"
  res = run(f"--netG={path}", f"--out={out}")
  assert res.returncode == 0, res.stderr
  record = json.loads((out / "config.json").read_text())
  assert record["model"]["dmgan_word_mask"] == "official_repeat"
  lines = (out / "flags.txt").read_text().splitlines()
  for line in ("--dmgan_word_mask=official_repeat", f"--run_dir={out}", f"--netG={path}",
               f"--out={out}", "--channels=4", "--refinement=dmgan"):
    assert line in lines, lines
  noise = [l for l in lines if l.split("=")[0] in (
      "--nohelp", "--test_tmpdir", "--verbosity", "--nologtostderr", "--nopdb",
      "--hbm_oom_exit")]
  assert not noise and len({l.split("=")[0] for l in lines}) == len(lines), noise
  res = run(f"--netG={models}", f"--out={tmp_path / 'r2'}")
  assert res.returncode == 1
  line = res.stderr.strip().splitlines()[-1]
  assert line == (f"error: --netG {models} is a folder, not a file: expected a DM-GAN generator "
                  f"file; it holds {models / 'netG_legacy.pth'}, {path}: pass one of them"), line
  assert not (tmp_path / "r2").exists()
  taken = tmp_path / "x"
  taken.write_text("keep me")
  res = run(f"--netG={path}", f"--out={taken}")
  assert res.returncode == 1 and "Errno" not in res.stderr
  assert f"error: --out {taken} is a file, not a folder" in res.stderr
  assert taken.read_text() == "keep me"
