"""The PyTorch-free `.pth` reader and the AttnGAN DAMSM text-encoder import, against PyTorch.

PyTorch (CPU) is the reference here and only here: the tests write state dicts with
`torch.save` in both formats (zip, and legacy via `_use_new_zipfile_serialization=False`), craft
the Python-2-era legacy files that modern torch cannot write (protocol-2 pickles with byte
strings, `_rebuild_tensor`, storage views), read them with `msmt_tf.interop.torch_io` and compare
with what torch holds; the text encoder is checked against an `RNN_ENCODER` written here from
AttnGAN's code/model.py (packed sequences), and malicious files must be refused unexecuted.
"""

import collections
import io
import json
import os
import pickle
import re
import struct
import subprocess
import sys
import zipfile

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from msmt_tf import config  # pylint: disable=g-import-not-at-top
from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
from msmt_tf.interop import damsm, torch_io  # pylint: disable=g-import-not-at-top

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FORMATS = ("zip", "legacy")


def save(obj, path, fmt):
  torch.save(obj, str(path), _use_new_zipfile_serialization=(fmt == "zip"))
  return str(path)


# ------------------------------------------------------------------ AttnGAN reference module
class RNNEncoderRef(nn.Module):
  """AttnGAN's `RNN_ENCODER` (code/model.py, RNN_TYPE 'LSTM'), written for these tests."""

  def __init__(self, ntoken, ninput=300, drop_prob=0.5, nhidden=256):
    super().__init__()
    self.nhidden = nhidden // 2
    self.encoder = nn.Embedding(ntoken, ninput)
    self.drop = nn.Dropout(drop_prob)
    self.rnn = nn.LSTM(ninput, self.nhidden, 1, batch_first=True, bidirectional=True)
    self.encoder.weight.data.uniform_(-0.1, 0.1)

  def forward(self, captions, cap_lens):
    emb = self.drop(self.encoder(captions))
    packed = nn.utils.rnn.pack_padded_sequence(emb, cap_lens, batch_first=True)
    h0 = torch.zeros(2, captions.shape[0], self.nhidden)
    output, hidden = self.rnn(packed, (h0, h0.clone()))
    output = nn.utils.rnn.pad_packed_sequence(output, batch_first=True)[0]
    words_emb = output.transpose(1, 2)                           # [B, 256, max(cap_lens)]
    sent_emb = hidden[0].transpose(0, 1).contiguous().view(-1, self.nhidden * 2)
    return words_emb, sent_emb


def random_rnn_encoder(vocab_size, seed=0, **widths):
  torch.manual_seed(seed)
  model = RNNEncoderRef(vocab_size, **widths).eval()
  with torch.no_grad():  # LSTM init is U(-1/sqrt(128), ..): widen so the gates saturate too
    for p in model.rnn.parameters():
      p.uniform_(-0.3, 0.3)
  return model


def captions_batch(vocab_size, words_num=18, seed=0):
  """AttnGAN's batch convention: sorted by length (descending), right-padded with 0; lengths
  1 and words_num included."""
  rng = np.random.default_rng(seed)
  lens = np.array(sorted([words_num, 1, 2, 7, 11, words_num - 1, 5, 3], reverse=True))
  tokens = np.zeros((len(lens), words_num), np.int64)
  for i, n in enumerate(lens):
    tokens[i, :n] = rng.integers(1, vocab_size, n)
  return tokens, lens


def compare_text_encoder(ref, ours, tokens, lens):
  """max |diff| of words_emb and sent_emb; our padded positions must be exactly zero."""
  with torch.no_grad():
    w_ref, s_ref = ref(torch.from_numpy(tokens), torch.from_numpy(lens))
  words, sent = ours(tokens, training=False)
  words, sent = np.asarray(words), np.asarray(sent)
  t = int(lens.max())
  width = 2 * ref.nhidden
  assert words.shape == tokens.shape + (width,) and sent.shape == (len(tokens), width)
  for i, n in enumerate(lens):
    assert not words[i, n:].any(), f"caption {i}: padded steps are not zero"
  return (float(np.abs(words[:, :t].transpose(0, 2, 1) - w_ref.numpy()).max()),
          float(np.abs(sent - s_ref.numpy()).max()))


# ------------------------------------------------------------------ legacy / Python-2 writer
class _Py2Pickler(pickle._Pickler):  # pylint: disable=protected-access
  """Protocol-2 pickler that writes `bytes` as Python 2 wrote `str` (SHORT_BINSTRING)."""

  dispatch = pickle._Pickler.dispatch.copy()  # pylint: disable=protected-access

  def __init__(self, file, storages):
    super().__init__(file, protocol=2)
    self._storages = storages

  def save_py2_str(self, obj):
    if len(obj) < 256:
      self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
    else:
      self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
    self.memoize(obj)
  dispatch[bytes] = save_py2_str

  def persistent_id(self, obj):
    if isinstance(obj, FakeStorage):
      view = None if obj.view is None else (obj.view[0].encode(), obj.view[1], obj.view[2])
      return (b"storage", getattr(torch, obj.kind), obj.key.encode(), b"cpu", obj.numel, view)
    return None


class FakeStorage:
  """A storage as the legacy pickle refers to it: root key, kind, numel; optional view."""

  def __init__(self, key, kind, data, view=None):
    self.key, self.kind, self.data, self.view = key, kind, np.ascontiguousarray(data), view
    self.numel = self.data.size


class FakeTensor:
  """Pickles as `torch._utils._rebuild_tensor[_v2](storage, offset, size, stride, ...)`."""

  def __init__(self, storage, offset, size, stride, v2=True):
    self.args = (storage, offset, tuple(size), tuple(stride))
    self.v2 = v2

  def __reduce__(self):
    if self.v2:
      return torch._utils._rebuild_tensor_v2, self.args + (False, PyOrderedDict([]))
    return torch._utils._rebuild_tensor, self.args


class PyOrderedDict:
  """Pickles as Python 2's OrderedDict did: OrderedDict([[key, value], ...]), plus its instance
  dict as BUILD state when there is one (PyTorch 0.4's `state_dict()._metadata`)."""

  def __init__(self, items, state=None):
    self.items = [[k, v] for k, v in items]
    self.state = state

  def __reduce__(self):
    if self.state:
      return collections.OrderedDict, (self.items,), self.state
    return collections.OrderedDict, (self.items,)


def write_legacy_py2(path, obj, storages):
  """The legacy torch.save container with Python-2-style pickles (byte strings)."""
  f = io.BytesIO()
  for header in (0x1950a86a20f9469cfc6c, 1001,
                 {b"protocol_version": 1001, b"little_endian": True,
                  b"type_sizes": {b"short": 2, b"int": 4, b"long": 4}}):
    _Py2Pickler(f, storages).dump(header)
  _Py2Pickler(f, storages).dump(obj)
  keys = sorted(s.key for s in storages)
  _Py2Pickler(f, storages).dump([k.encode() for k in keys])
  by_key = {s.key: s for s in storages}
  for k in keys:
    f.write(struct.pack("<q", by_key[k].numel) + by_key[k].data.astype(
        by_key[k].data.dtype.newbyteorder("<")).tobytes())
  with open(path, "wb") as out:
    out.write(f.getvalue())
  return str(path)


# ------------------------------------------------------------------ reader
def mixed_state_dict():
  """Every storage dtype, non-contiguous and offset views, two tensors sharing one storage, a
  parameter, a 0-d tensor, an empty tensor and a nested dict."""
  g = torch.Generator().manual_seed(1)
  base = torch.randn(5, 7, generator=g)
  sd = collections.OrderedDict()
  sd["float"] = torch.randn(3, 4, generator=g)
  sd["double"] = torch.randn(4, generator=g, dtype=torch.float64)
  sd["half"] = torch.randn(2, 3, generator=g).half()
  sd["bfloat16"] = torch.randn(6, generator=g).bfloat16()
  sd["long"] = torch.randint(-2**40, 2**40, (3,), generator=g)
  sd["int"] = torch.randint(-2**30, 2**30, (2, 2), generator=g, dtype=torch.int32)
  sd["short"] = torch.randint(-2**14, 2**14, (5,), generator=g, dtype=torch.int16)
  sd["char"] = torch.randint(-128, 127, (4,), generator=g, dtype=torch.int8)
  sd["byte"] = torch.randint(0, 255, (4,), generator=g, dtype=torch.uint8)
  sd["bool"] = torch.rand(5, generator=g) > 0.5
  sd["transposed"] = base.t()                     # non-contiguous, shares base's storage
  sd["slice"] = base[1:4, 2:6:2]                  # offset + strides into the same storage
  sd["param"] = nn.Parameter(torch.randn(2, 3, generator=g))
  sd["scalar"] = torch.tensor(7)
  sd["empty"] = torch.zeros(0, 3)
  sd["nested"] = {"inner": {"w": torch.arange(6.0).reshape(2, 3)}}
  return sd


def as_numpy(t):
  t = t.detach()
  return (t.float() if t.dtype == torch.bfloat16 else t).numpy()


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_matches_torch_for_every_dtype_and_layout(tmp_path, fmt):
  sd = mixed_state_dict()
  out = torch_io.load_state_dict(save(sd, tmp_path / "m.pth", fmt))
  assert isinstance(out, collections.OrderedDict)
  expected = {k: v for k, v in sd.items() if k != "nested"}
  assert list(out) == list(expected) + ["nested.inner.w"]
  for k, v in expected.items():
    ref = as_numpy(v)
    assert isinstance(out[k], np.ndarray) and out[k].shape == ref.shape, k
    assert out[k].dtype == ref.dtype, (k, out[k].dtype, ref.dtype)
    np.testing.assert_array_equal(out[k], ref, err_msg=k)
  np.testing.assert_array_equal(out["nested.inner.w"], np.arange(6.0).reshape(2, 3))
  assert out["transposed"].flags.c_contiguous
  out["transposed"][0, 0] = 99  # copies: no aliasing between tensors sharing a storage
  assert out["slice"][0, 0] == as_numpy(sd["slice"])[0, 0]


@pytest.mark.parametrize("fmt", FORMATS)
def test_reader_unwraps_checkpoints_and_dataparallel(tmp_path, fmt):
  w = torch.randn(3, 2)
  for wrapped in ({"state_dict": {"module.fc.weight": w}, "epoch": 4},
                  {"model": collections.OrderedDict([("module.fc.weight", w)]), "it": "x"},
                  {"fc.weight": w}):
    out = torch_io.load_state_dict(save(wrapped, tmp_path / "c.pth", fmt))
    assert list(out) == ["fc.weight"]
    np.testing.assert_array_equal(out["fc.weight"], w.numpy())
  # A training checkpoint of several objects: the model's entry is the one holding the anchor
  # key (the importers pass one their model always has); an optimizer's lists are read too.
  opt = {"state": {0: {"step": torch.tensor(3.0), "exp_avg": torch.ones(3, 2)}},
         "param_groups": [{"lr": 2e-4, "betas": (0.5, 0.999), "params": [0]}]}
  for key in ("netG", "text_encoder"):
    for inner in ({"fc.weight": w, "fc.bias": w[0]},
                  {"module.fc.weight": w, "module.fc.bias": w[0]}):
      path = save({key: inner, "optimizerG": opt, "epoch": 7}, tmp_path / "c.pth", fmt)
      out = torch_io.load_state_dict(path, anchor="fc.weight")
      assert list(out) == ["fc.weight", "fc.bias"], (key, list(out))
      np.testing.assert_array_equal(out["fc.weight"], w.numpy())
      everything = torch_io.load_state_dict(path)  # no anchor: every tensor, named by its path
      assert "optimizerG.state.0.exp_avg" in everything and f"{key}.fc.bias" in {
          k.replace("module.", "") for k in everything}
  # Two entries holding it (a generator and its average): left as they are, the importer's
  # missing keys then name both.
  path = save({"netG": {"fc.weight": w}, "netG_ema": {"fc.weight": w}}, tmp_path / "c.pth", fmt)
  assert list(torch_io.load_state_dict(path, anchor="fc.weight")) == ["netG.fc.weight",
                                                                      "netG_ema.fc.weight"]


def test_reader_reads_a_python2_legacy_file(tmp_path):
  """What PyTorch 0.3 / 0.4 wrote under Python 2: byte-string keys, `_rebuild_tensor` (0.3)
  and `_rebuild_tensor_v2` (0.4), a storage view with an offset, a shared storage, and
  OrderedDict pickled as a list of [key, value] pairs."""
  rng = np.random.default_rng(3)
  emb = rng.standard_normal((6, 4)).astype(np.float32)
  big = rng.standard_normal(40).astype(np.float32)
  ids = rng.integers(-99, 99, 5).astype(np.int64)
  s_emb = FakeStorage("140221", "FloatStorage", emb)
  s_big = FakeStorage("140222", "FloatStorage", big)
  s_view = FakeStorage("140222", "FloatStorage", big, view=("140299", 10, 12))  # big[10:22]
  s_ids = FakeStorage("140223", "LongStorage", ids)
  obj = PyOrderedDict([
      (b"encoder.weight", FakeTensor(s_emb, 0, (6, 4), (4, 1), v2=False)),
      (b"rnn.weight_t", FakeTensor(s_emb, 1, (3, 2), (1, 4))),           # transposed slice
      (b"view.a", FakeTensor(s_view, 2, (2, 3), (3, 1))),                 # big[12:18]
      (b"view.b", FakeTensor(s_view, 0, (4,), (3,), v2=False)),           # big[10:22:3]
      (b"ids", FakeTensor(s_ids, 0, (5,), (1,))),
  ], state={b"_metadata": PyOrderedDict([(b"", {b"version": 1}),
                                         (b"encoder", {b"version": 1})])})
  path = write_legacy_py2(tmp_path / "py2.pth", obj, [s_emb, s_big, s_ids])
  raw = open(path, "rb").read()
  assert pickle.SHORT_BINSTRING + bytes([14]) + b"encoder.weight" in raw  # really Python-2 style
  assert b"_codecs" not in raw
  out = torch_io.load_state_dict(path)
  assert list(out) == ["encoder.weight", "rnn.weight_t", "view.a", "view.b", "ids"]
  np.testing.assert_array_equal(out["encoder.weight"], emb)
  flat = emb.reshape(-1)
  np.testing.assert_array_equal(out["rnn.weight_t"],
                                [[flat[1 + i + 4 * j] for j in range(2)] for i in range(3)])
  np.testing.assert_array_equal(out["view.a"], big[12:18].reshape(2, 3))
  np.testing.assert_array_equal(out["view.b"], big[10:22:3])
  np.testing.assert_array_equal(out["ids"], ids)
  # torch itself reads the crafted file the same way (it is a valid legacy file).
  ref = torch.load(path, weights_only=False, encoding="latin1")
  for k, v in ref.items():
    np.testing.assert_array_equal(out[k], v.numpy(), err_msg=k)


def evil_payload(marker):
  class Evil:
    def __reduce__(self):
      return os.system, (f"touch {marker}",)
  return Evil()


@pytest.mark.parametrize("fmt", FORMATS)
def test_malicious_files_are_refused_without_running(tmp_path, fmt):
  marker = tmp_path / "pwned"
  # 1. Written by torch.save itself: a state dict with an object whose pickle calls os.system.
  path = save({"w": torch.ones(2), "evil": evil_payload(marker)}, tmp_path / "evil.pth", fmt)
  with pytest.raises(torch_io.TorchFileError, match=r"evil\.pth.*refusing to load "
                     r"(posix|os)\.system.*nothing was executed"):
    torch_io.load_state_dict(path)
  # 2. Hand-made: the payload as the whole object pickle.
  payload = pickle.dumps(evil_payload(marker), protocol=2)
  if fmt == "zip":
    with zipfile.ZipFile(tmp_path / "evil2.pth", "w") as z:
      z.writestr("anything/data.pkl", payload)
      z.writestr("anything/version", "3\n")
  else:
    head = b"".join(pickle.dumps(x, protocol=2) for x in (0x1950a86a20f9469cfc6c, 1001, {}))
    (tmp_path / "evil2.pth").write_bytes(head + payload + pickle.dumps([], protocol=2))
  with pytest.raises(torch_io.TorchFileError, match=r"evil2\.pth.*(posix|os)\.system"):
    torch_io.load_state_dict(str(tmp_path / "evil2.pth"))
  # 3. builtins.eval through a rebuild-looking reduce in the header pickle (legacy).
  if fmt == "legacy":
    class EvalIt:
      def __reduce__(self):
        return eval, (f"__import__('os').system('touch {marker}')",)
    (tmp_path / "evil3.pth").write_bytes(pickle.dumps(EvalIt(), protocol=2))
    with pytest.raises(torch_io.TorchFileError, match=r"evil3\.pth.*(__builtin__|builtins)\.eval"):
      torch_io.load_state_dict(str(tmp_path / "evil3.pth"))
  assert not marker.exists()
  # Sanity: the payload does run when unpickled without restriction.
  pickle.loads(payload)
  assert marker.exists()


def test_this_projects_own_files_are_named_as_what_they_are(tmp_path):
  # The files a user of this project has at hand, passed to an importer by mistake: each is
  # named as what it is, with where it is used instead (before: "a zip without exactly one
  # <name>/data.pkl" or "no legacy magic number").
  import keras  # pylint: disable=g-import-not-at-top
  from msmt_tf import checkpoint  # pylint: disable=g-import-not-at-top
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  model.save(str(tmp_path / "generator_ema.keras"))
  model.save_weights(str(tmp_path / "w.weights.h5"))
  ckpt = checkpoint.save(str(tmp_path / "run"), 5, {"generator": model.weights}, {"seed": 0})
  np.savez(str(tmp_path / "arrays.npz"), a=np.zeros(3))
  for path, what in [(tmp_path / "generator_ema.keras", r"a Keras model file \(\.keras\)"),
                     (ckpt, r"an msmt_tf training checkpoint \(ckpt-\*\.npz\), not a torch\.save "
                      r"checkpoint: continue it with msmt_tf\.train --resume"),
                     (tmp_path / "arrays.npz", r"a numpy \.npz archive"),
                     (tmp_path / "w.weights.h5", r"an HDF5 file \(Keras \.h5 weights\?\)")]:
    with pytest.raises(torch_io.TorchFileError, match=re.escape(str(path)) + " is " + what):
      torch_io.load_state_dict(str(path))
  # A zip of none of these is still a zip without a torch.save pickle.
  with zipfile.ZipFile(tmp_path / "other.pth", "w") as z:
    z.writestr("readme.txt", "hello")
  with pytest.raises(torch_io.TorchFileError, match="a zip without exactly one <name>/data.pkl"):
    torch_io.load_state_dict(str(tmp_path / "other.pth"))


@pytest.mark.parametrize("fmt", FORMATS)
def test_damaged_files_name_the_file(tmp_path, fmt):
  path = save({"w": torch.randn(64, 64)}, tmp_path / "w.pth", fmt)
  data = open(path, "rb").read()
  (tmp_path / "cut.pth").write_bytes(data[:len(data) - 4096])
  with pytest.raises(torch_io.TorchFileError, match=r"cut\.pth"):
    torch_io.load_state_dict(str(tmp_path / "cut.pth"))
  (tmp_path / "text.pth").write_bytes(b"<html>404 not found</html>")
  with pytest.raises(torch_io.TorchFileError, match=r"text\.pth is not a torch\.save file"):
    torch_io.load_state_dict(str(tmp_path / "text.pth"))
  with pytest.raises(FileNotFoundError, match=r"none\.pth"):
    torch_io.load_state_dict(str(tmp_path / "none.pth"))
  (tmp_path / "empty.pth").write_bytes(b"")
  with pytest.raises(torch_io.TorchFileError, match=r"empty\.pth is empty \(0 bytes\)"):
    torch_io.load_state_dict(str(tmp_path / "empty.pth"))
  np.save(tmp_path / "array.npy", np.ones(3))
  os.replace(tmp_path / "array.npy", tmp_path / "array.pth")
  with pytest.raises(torch_io.TorchFileError, match=r"array\.pth is a numpy \.npy array file"):
    torch_io.load_state_dict(str(tmp_path / "array.pth"))
  with pytest.raises(torch_io.TorchFileError, match=r"list\.pth holds a list"):
    torch_io.load_state_dict(save([torch.ones(1)], tmp_path / "list.pth", fmt))


@pytest.mark.parametrize("fmt", FORMATS)
def test_a_whole_pickled_model_is_refused_with_advice(tmp_path, fmt):
  path = save(nn.Sequential(nn.Linear(2, 3)), tmp_path / "whole.pth", fmt)
  with pytest.raises(torch_io.TorchFileError, match=r"whole\.pth: refusing to load "
                     r"torch\.nn\.modules\..*nothing was executed.*state_dict\(\)"):
    torch_io.load_state_dict(path)


def test_a_tensor_reaching_past_its_storage_is_refused(tmp_path):
  """A crafted stride must not read memory outside the storage, nor ask for any size."""
  s = FakeStorage("1", "FloatStorage", np.arange(10, dtype=np.float32))
  path = write_legacy_py2(tmp_path / "oob.pth",
                          PyOrderedDict([(b"w", FakeTensor(s, 2, (3, 4), (4, 1)))]), [s])
  with pytest.raises(torch_io.TorchFileError, match=r"oob\.pth.*reaches past its storage"):
    torch_io.load_state_dict(path)
  path = write_legacy_py2(tmp_path / "huge.pth",
                          PyOrderedDict([(b"w", FakeTensor(s, 0, (2**20, 2**20), (0, 0)))]), [s])
  with pytest.raises(torch_io.TorchFileError, match=r"huge\.pth.*implausibly large"):
    torch_io.load_state_dict(path)
  # Under the per-tensor cap, yet 1 GiB of float32 out of a 10-value storage: refused too.
  path = write_legacy_py2(tmp_path / "wide.pth",
                          PyOrderedDict([(b"w", FakeTensor(s, 0, (2**14, 2**14), (1, 0)))]), [s])
  with pytest.raises(torch_io.TorchFileError, match=r"wide\.pth.*implausibly large"):
    torch_io.load_state_dict(path)
  # Rank past numpy's limit: a TorchFileError naming the file, not numpy's ValueError.
  path = write_legacy_py2(tmp_path / "rank.pth",
                          PyOrderedDict([(b"w", FakeTensor(s, 0, (1,) * 100, (1,) * 100))]), [s])
  with pytest.raises(torch_io.TorchFileError, match=r"rank\.pth.*rank 100"):
    torch_io.load_state_dict(path)
  # A negative offset (root[-1:] then 5 values: memory past the buffer) is refused.
  path = write_legacy_py2(tmp_path / "neg.pth",
                          PyOrderedDict([(b"w", FakeTensor(s, -1, (5,), (1,)))]), [s])
  with pytest.raises(torch_io.TorchFileError, match=r"neg\.pth.*offset -1"):
    torch_io.load_state_dict(path)
  # BUILD on a rebuilt tensor would set its slots behind the checks (a negative stride
  # crashed the interpreter): refused.
  class Rebuilt(FakeTensor):
    def __reduce__(self):
      return super().__reduce__() + ((None, {"stride": (-100000,)}),)
  path = write_legacy_py2(tmp_path / "build.pth",
                          PyOrderedDict([(b"w", Rebuilt(s, 0, (4,), (1,)))]), [s])
  with pytest.raises(torch_io.TorchFileError, match=r"build\.pth.*refusing to set the state"):
    torch_io.load_state_dict(path)
  # A legitimate stride-0 (expanded) tensor reads as torch reads it.
  path = save({"e": torch.arange(3.0).expand(4, 3)}, tmp_path / "expand.pth", "zip")
  np.testing.assert_array_equal(torch_io.load_state_dict(path)["e"],
                                np.tile(np.arange(3.0, dtype=np.float32), (4, 1)))


# ------------------------------------------------------------------ text encoder
@pytest.mark.parametrize("fmt", FORMATS)
def test_text_encoder_matches_attngan_rnn_encoder(tmp_path, fmt):
  vocab = 57
  ref = random_rnn_encoder(vocab, seed=4)
  arrays = torch_io.load_state_dict(save(ref.state_dict(), tmp_path / "text.pth", fmt))
  ours = damsm.text_encoder_from_state_dict(arrays, "text.pth")
  tokens, lens = captions_batch(vocab, 18, seed=5)
  w_err, s_err = compare_text_encoder(ref, ours, tokens, lens)
  print(f"{fmt}: words_emb max|diff| {w_err:.2e}, sent_emb {s_err:.2e}")
  assert w_err <= 1e-5 and s_err <= 1e-5, (w_err, s_err)
  # Extra padding columns (words_num 25 at evaluation) change nothing.
  wide = np.pad(tokens, ((0, 0), (0, 7)))
  w_wide, s_wide = ours(wide, training=False)
  np.testing.assert_allclose(np.asarray(w_wide)[:, :18], np.asarray(ours(tokens)[0]), atol=1e-6)
  np.testing.assert_allclose(np.asarray(s_wide), np.asarray(ours(tokens)[1]), atol=1e-6)


def test_text_encoder_of_other_widths_is_read_at_its_widths(tmp_path):
  """AttnGAN's TEXT.EMBEDDING_DIM (nhidden) and ninput are config values: an encoder trained
  with others imports at its own widths (the GAN's --text_dim must then be its nhidden)."""
  ref = random_rnn_encoder(31, seed=2, ninput=40, nhidden=96)
  arrays = torch_io.load_state_dict(save(ref.state_dict(), tmp_path / "text.pth", "zip"))
  ours = damsm.text_encoder_from_state_dict(arrays, "text.pth")
  assert (ours.embedding_dim, ours.hidden_dim) == (40, 96)
  w_err, s_err = compare_text_encoder(ref, ours, *captions_batch(31, 18, seed=1))
  assert w_err <= 1e-5 and s_err <= 1e-5, (w_err, s_err)


def test_text_encoder_checks_keys_and_shapes(tmp_path):
  arrays = torch_io.load_state_dict(save(random_rnn_encoder(20).state_dict(),
                                         tmp_path / "t.pth", "zip"))
  bad = dict(arrays)
  del bad["rnn.bias_hh_l0_reverse"]
  bad["rnn.weight_ih_l1"] = np.zeros((512, 256), np.float32)
  bad["rnn.weight_hh_l0"] = np.zeros((512, 64), np.float32)
  with pytest.raises(damsm.WeightsMismatchError) as e:
    damsm.text_encoder_from_state_dict(bad, "t.pth")
  msg = str(e.value)
  for part in ("t.pth", "missing keys: rnn.bias_hh_l0_reverse", "unexpected keys: "
               "rnn.weight_ih_l1", "rnn.weight_hh_l0: (512, 64) in the file, (512, 128) expected"):
    assert part in msg, msg
  ints = dict(arrays, **{"encoder.weight": arrays["encoder.weight"].astype(np.int64)})
  with pytest.raises(damsm.WeightsMismatchError,
                     match=r"t\.pth does not fit .*not floating point: encoder\.weight \(int64\)"):
    damsm.text_encoder_from_state_dict(ints, "t.pth")
  gru = {k: (v[:384] if k.startswith("rnn.") else v) for k, v in arrays.items()}
  with pytest.raises(damsm.WeightsMismatchError, match="GRU"):
    damsm.text_encoder_from_state_dict(gru, "t.pth")
  with pytest.raises(damsm.WeightsMismatchError, match="missing keys: encoder.weight"):
    damsm.text_encoder_from_state_dict({"fc.weight": np.zeros((2, 2))}, "x.pth")
  # The image encoder given as the text encoder: said so in a line, not ~600 keys listed.
  image = {f"Mixed_{i}.conv{j}.weight": np.zeros(1) for i in range(40) for j in range(10)}
  image.update({"emb_features.weight": np.zeros((256, 768, 1, 1))})
  with pytest.raises(damsm.WeightsMismatchError,
                     match=r"img\.pth is an image encoder .*pass it as --image_encoder") as e:
    damsm.text_encoder_from_state_dict(image, "img.pth")
  assert len(str(e.value)) < 400, str(e.value)
  lots = dict(arrays, **{f"extra.{i}": np.zeros(1) for i in range(100)})
  with pytest.raises(damsm.WeightsMismatchError, match=r"extra\.0, .*\(100 in all\)") as e:
    damsm.text_encoder_from_state_dict(lots, "t.pth")
  assert len(str(e.value)) < 600, str(e.value)


# ------------------------------------------------------------------ CLI, end to end
def run_cli(*args):
  return subprocess.run([sys.executable, "-m", "msmt_tf.import_torch", *args], cwd=REPO,
                        capture_output=True, text=True)


def test_cli_imports_a_text_encoder_the_damsm_loader_accepts(tmp_path, shapes_dir):
  from msmt_tf.runs import load_damsm_encoder  # pylint: disable=g-import-not-at-top
  _, _, vocab = datasets.load_captions(shapes_dir, "shapes")
  ref = random_rnn_encoder(len(vocab), seed=7)
  pth = save(ref.state_dict(), tmp_path / "text_encoder200.pth", "legacy")
  out = tmp_path / "damsm"
  out.mkdir()  # a folder an interrupted pretrain_damsm left its record in (no encoders)
  (out / "pretrain_record.json").write_text('{"complete": false, "epoch": 1, "epochs": 600}')
  res = run_cli("damsm", f"--text_encoder={pth}", f"--data_dir={shapes_dir}", f"--out={out}")
  assert res.returncode == 0, res.stderr[-3000:]
  assert "text_encoder.keras" in res.stdout and "note: no --image_encoder" in res.stdout
  assert not (out / "pretrain_record.json").exists()  # the imported encoders are not a snapshot
  text_path, image_path = config.damsm_paths(str(out))
  assert not os.path.exists(image_path)
  manifest = json.load(open(out / damsm.MANIFEST_FILE))
  assert manifest["vocab_size"] == len(vocab) and manifest["image_encoder"] is None
  model = load_damsm_encoder(text_path, "RNNTextEncoder")  # what train / export use
  assert model.vocab_size == len(vocab)
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  assert runs.damsm_provenance(str(out)).startswith(
      "AttnGAN DAMSM imported from text_encoder200.pth (sha256 ")  # metric records say so
  tokens, lens = captions_batch(len(vocab), 18, seed=8)
  w_err, s_err = compare_text_encoder(ref, model, tokens, lens)
  assert w_err <= 1e-5 and s_err <= 1e-5, (w_err, s_err)
  # A second run does not silently replace the encoders.
  res = run_cli("damsm", f"--text_encoder={pth}", f"--data_dir={shapes_dir}", f"--out={out}")
  assert res.returncode == 1 and "--overwrite" in res.stderr
  # Vocabulary and encoder disagree: one line naming both sizes and both files, nothing written.
  wrong = save(random_rnn_encoder(len(vocab) + 3).state_dict(), tmp_path / "other.pth", "zip")
  res = run_cli("damsm", f"--text_encoder={wrong}", f"--data_dir={shapes_dir}",
                f"--out={tmp_path / 'd2'}")
  assert res.returncode == 1
  line = res.stderr.strip().splitlines()[-1]
  caps = os.path.join(shapes_dir, "captions.pickle")
  for part in (f"{caps} has {len(vocab)} words", f"{wrong} embeds {len(vocab) + 3}"):
    assert part in line, line
  assert not os.path.exists(tmp_path / "d2" / "text_encoder.keras")
  res = run_cli("nope")
  assert res.returncode == 2 and "damsm" in res.stderr


def test_import_writes_both_encoders_for_load_damsm(tmp_path, shapes_dir, monkeypatch):
  """The image half goes through the colleague's `attngan_image` module; here it is replaced by
  a small encoder to check the wiring (arguments, files, the training loader) cheaply."""
  from msmt_tf.interop import attngan_image  # pylint: disable=g-import-not-at-top
  from msmt_tf.models import ImageEncoder  # pylint: disable=g-import-not-at-top
  from msmt_tf.runs import load_damsm  # pylint: disable=g-import-not-at-top
  _, _, vocab = datasets.load_captions(shapes_dir, "shapes")
  text = save(random_rnn_encoder(len(vocab)).state_dict(), tmp_path / "t.pth", "zip")
  image = save({"emb_cnn_code.bias": torch.zeros(256)}, tmp_path / "i.pth", "legacy")
  seen = {}

  def fake(arrays, align_corners=True, source=None):
    seen.update(keys=list(arrays), align_corners=align_corners, source=source)
    enc = ImageEncoder(trunk="small")
    enc.build((None, 128, 128, 3))
    return enc
  monkeypatch.setattr(attngan_image, "image_encoder_from_state_dict", fake)
  res = damsm.import_damsm(text, image, shapes_dir, str(tmp_path / "d"), align_corners=False)
  assert seen == {"keys": ["emb_cnn_code.bias"], "align_corners": False, "source": image}
  text_enc, image_enc = load_damsm(str(tmp_path / "d"), vocab, shapes_dir)
  assert res["image_encoder"] and type(image_enc).__name__ == "ImageEncoder"
  monkeypatch.undo()
  # The real importer refuses a file that is not a CNN_ENCODER, naming it.
  with pytest.raises(ValueError, match=r"t\.pth.*not an AttnGAN image encoder"):
    damsm.import_damsm(text, text, shapes_dir, str(tmp_path / "d3"))
  assert not os.path.exists(tmp_path / "d3")


# ------------------------------------------------------------------ refused before writing
def head_only_image_encoder(nef, path, **changes):
  """A file with only CNN_ENCODER's projections (`emb_features`, `emb_cnn_code`) of width
  `nef`: enough for the checks made before the Inception trunk is built."""
  sd = collections.OrderedDict([("emb_features.weight", torch.zeros(nef, 768, 1, 1)),
                                ("emb_cnn_code.weight", torch.zeros(nef, 2048)),
                                ("emb_cnn_code.bias", torch.zeros(nef))])
  sd.update(changes)
  return save(sd, path, "legacy")


def test_encoders_of_different_widths_are_refused(tmp_path, shapes_dir):
  """AttnGAN's text encoder is 256 wide (2 x 128); an image encoder of nef 128 would import and
  break R-precision later with a broadcast error."""
  _, _, vocab = datasets.load_captions(shapes_dir, "shapes")
  text = save(random_rnn_encoder(len(vocab)).state_dict(), tmp_path / "text_encoder200.pth",
              "zip")
  image = head_only_image_encoder(128, tmp_path / "image_encoder200.pth")
  out = tmp_path / "damsm"
  with pytest.raises(damsm.WeightsMismatchError) as e:
    damsm.import_damsm(text, image, shapes_dir, str(out))
  msg = str(e.value)
  for part in ("differ in width", f"text encoder {text} gives 256-dim",
               f"image encoder {image} 128-dim", "emb_features.weight [128, 768, 1, 1]"):
    assert part in msg, msg
  assert not out.exists()


def test_non_finite_weights_are_refused(tmp_path, shapes_dir):
  _, _, vocab = datasets.load_captions(shapes_dir, "shapes")
  sd = random_rnn_encoder(len(vocab)).state_dict()
  sd["rnn.weight_hh_l0"][3, 5] = float("nan")
  sd["encoder.weight"][0, 0] = float("inf")
  text = save(sd, tmp_path / "text_nan.pth", "legacy")
  out = tmp_path / "damsm"
  with pytest.raises(damsm.WeightsMismatchError,
                     match=r"text_nan\.pth has non-finite values \(NaN or Inf\) in 2 tensor\(s\): "
                           r"encoder\.weight, rnn\.weight_hh_l0 .*nothing was imported"):
    damsm.import_damsm(text, None, shapes_dir, str(out))
  assert not out.exists()
  # The image encoder too, before its trunk is built; integer tensors (num_batches_tracked)
  # are not checked, and more than a few bad keys are counted.
  good = save(random_rnn_encoder(len(vocab)).state_dict(), tmp_path / "text.pth", "zip")
  bad = {f"Mixed_5b.branch{i}.bn.running_var": torch.full((4,), float("nan")) for i in range(6)}
  image = head_only_image_encoder(
      256, tmp_path / "image_nan.pth", **bad,
      **{"Mixed_5b.branch0.bn.num_batches_tracked": torch.tensor(7)})
  with pytest.raises(damsm.WeightsMismatchError,
                     match=r"image_nan\.pth has non-finite values \(NaN or Inf\) in 6 tensor\(s\): "
                           r"Mixed_5b\.branch0\.bn\.running_var, .*\(6 in all\)"):
    damsm.import_damsm(good, image, shapes_dir, str(out))
  assert not out.exists()
  arrays = {"f16": np.array([1, np.inf], np.float16), "f64": np.array([np.nan]),
            "c": np.array([1j * np.inf]), "ok": np.ones(3, np.float32),
            "int": np.array([2**62]), "bool": np.array([True])}
  assert torch_io.non_finite_keys(arrays) == ["f16", "f64", "c"]


def damsm_flags(argv):
  """The damsm subcommand's flags parsed from `argv`, in a FlagValues of their own."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  fv = flags.FlagValues()
  damsm.define_flags(fv)
  fv(["damsm"] + argv)
  return fv


def test_paths_of_the_wrong_kind_are_named(tmp_path, shapes_dir):
  """A folder given as an encoder file says it is a folder (and which .pth files it holds); an
  --out that is a file says so, and nothing is changed."""
  _, _, vocab = datasets.load_captions(shapes_dir, "shapes")
  models = tmp_path / "DAMSMencoders" / "bird"
  models.mkdir(parents=True)
  text = save(random_rnn_encoder(len(vocab)).state_dict(), models / "text_encoder200.pth", "zip")
  save({"w": torch.ones(1)}, models / "image_encoder200.pth", "zip")
  with pytest.raises(FileNotFoundError) as e:
    damsm.run_from_flags(damsm_flags([f"--text_encoder={models}", f"--data_dir={shapes_dir}",
                                      f"--out={tmp_path / 'd'}"]))
  msg = str(e.value)
  for part in (f"--text_encoder {models} is a folder, not a file",
               f"{models / 'image_encoder200.pth'}, {models / 'text_encoder200.pth'}"):
    assert part in msg, msg
  empty = tmp_path / "empty"
  empty.mkdir()
  with pytest.raises(FileNotFoundError, match=r"--image_encoder .*empty is a folder, not a "
                                              r"file.*holds no \.pth"):
    damsm.run_from_flags(damsm_flags([f"--text_encoder={text}", f"--image_encoder={empty}",
                                      f"--data_dir={shapes_dir}", f"--out={tmp_path / 'd'}"]))
  with pytest.raises(FileNotFoundError, match=r"^PyTorch weights file not found: "):
    torch_io.load_state_dict(str(tmp_path / "none.pth"))
  with pytest.raises(FileNotFoundError, match=r"empty is a folder, not a file"):
    torch_io.load_state_dict(str(empty))
  assert not (tmp_path / "d").exists()
  # --out names an existing file: the command's one-line error, the file untouched.
  taken = tmp_path / "x"
  taken.write_text("keep me")
  res = run_cli("damsm", f"--text_encoder={text}", f"--data_dir={shapes_dir}", f"--out={taken}")
  assert res.returncode == 1
  line = res.stderr.strip().splitlines()[-1]
  assert line.startswith(f"error: --out {taken} is a file, not a folder"), line
  assert "Errno" not in res.stderr and taken.read_text() == "keep me"
  with pytest.raises(FileExistsError, match="is a file, not a folder"):
    damsm.import_damsm(text, None, shapes_dir, str(taken))
  assert taken.read_text() == "keep me"
  # --out is a run (a training run or an imported DM-GAN one) or a dataset: refused, unchanged.
  run = tmp_path / "run"
  (run / "checkpoints").mkdir(parents=True)
  (run / "config.json").write_text("{}")
  for folder, kind, marker in ((run, "training or imported run", "config.json"),
                               (shapes_dir, "dataset", "captions.pickle")):
    before = sorted(os.listdir(folder))
    with pytest.raises(FileExistsError, match=rf"--out {folder} is a {kind} \(it holds "
                                              rf"{marker}\).*nothing was changed"):
      damsm.run_from_flags(damsm_flags([f"--text_encoder={text}", f"--data_dir={shapes_dir}",
                                        f"--out={folder}", "--overwrite"]))
    assert sorted(os.listdir(folder)) == before


def test_a_generator_given_as_an_encoder_is_named(tmp_path):
  gnet = {"ca_net.fc.weight": np.zeros((4, 2), np.float32),
          "h_net1.fc.0.weight": np.zeros((3, 3), np.float32),
          "img_net1.img.0.weight": np.zeros((3, 4, 3, 3), np.float32)}
  with pytest.raises(damsm.WeightsMismatchError,
                     match=r"netG\.pth looks like a generator G_NET .*dmgan_generator --netG"):
    damsm.text_encoder_from_state_dict(gnet, "netG.pth")
  from msmt_tf.interop import attngan_image  # pylint: disable=g-import-not-at-top
  with pytest.raises(ValueError, match=r"netG\.pth is not an AttnGAN image encoder.*looks like "
                                       r"a generator G_NET"):
    attngan_image.image_encoder_from_state_dict(gnet, source="netG.pth")
  text = {"encoder.weight": np.zeros((5, 300), np.float32),
          "rnn.weight_ih_l0": np.zeros((512, 300), np.float32)}
  with pytest.raises(ValueError, match=r"looks like AttnGAN's DAMSM text encoder.*--text_encoder"):
    attngan_image.image_encoder_from_state_dict(text, source="t.pth")
