"""Model tests: encoders, discriminators, generator variants, parameter counts, backends."""

import importlib.util
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from msmt_tf import params
from msmt_tf.config import ModelConfig, PAPER_TABLE2
from msmt_tf.layers import count_parameters
from msmt_tf.models import (ImageEncoder, MSMTGenerator, RNNTextEncoder, SNConv2D,
                            StageDiscriminator)
from tests import backend_outputs, backend_step
from tests.layer_testing import assert_allclose_nested

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(1)


def rand(*shape):
  return RNG.standard_normal(shape).astype("float32")


def tokens_of(lengths, length, vocab=30):
  t = np.zeros((len(lengths), length), np.int32)
  for i, n in enumerate(lengths):
    t[i, :n] = RNG.integers(1, vocab, n)
  return t


# ------------------------------------------------------------------------------ text encoder

def test_text_encoder_masking_and_roundtrip(tmp_path):
  enc = RNNTextEncoder(30, embedding_dim=10, hidden_dim=16)
  tok = tokens_of([7, 3, 1], 7)
  words, sent = enc(tok)
  assert words.shape == (3, 7, 16) and sent.shape == (3, 16)
  words = np.asarray(words)
  assert np.all(words[1, 3:] == 0) and np.all(words[2, 1:] == 0)
  assert np.all(np.abs(words[0]).sum(-1) > 0)
  # Changing the padding vector (embedding row 0) and the padded length changes nothing.
  emb = enc.embedding.embeddings
  emb.assign(np.concatenate([100 * rand(1, 10), np.asarray(emb)[1:]]))
  w2, s2 = enc(np.pad(tok, ((0, 0), (0, 4))))
  np.testing.assert_allclose(np.asarray(w2)[:, :7], words, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(s2, sent, rtol=1e-5, atol=1e-6)
  # Sentence = [forward state at the last real word, backward state at the first word].
  fw_last = words[1, 2, :8]
  bw_first = words[1, 0, 8:]
  np.testing.assert_allclose(np.asarray(sent)[1], np.concatenate([fw_last, bw_first]),
                             rtol=1e-5, atol=1e-6)
  path = str(tmp_path / "enc.keras")
  enc.save(path)
  loaded = keras.saving.load_model(path)
  assert_allclose_nested(enc(tok), loaded(tok))


def test_image_encoder_shapes_and_frozen_trunk():
  enc = ImageEncoder(nef=32)
  local, glob = enc(rand(2, 64, 64, 3))
  assert local.shape == (2, 17, 17, 32) and glob.shape == (2, 32)
  assert sum(int(np.prod(w.shape)) for w in enc.trainable_weights) == 768 * 32 + 2048 * 32 + 32
  with pytest.raises(FileNotFoundError, match="no_such_weights.h5"):
    ImageEncoder(trunk_weights="/tmp/no_such_weights.h5")


# ------------------------------------------------------------------------------ discriminator

def test_spectral_norm_normalises_kernel():
  conv = SNConv2D(6, 3)
  conv.build((None, 8, 8, 5))
  for _ in range(50):
    conv(rand(1, 8, 8, 5), training=True)
  w = np.asarray(conv.normalized_kernel()).reshape(-1, 6)
  assert abs(np.linalg.svd(w, compute_uv=False)[0] - 1.0) < 1e-3
  assert count_parameters(conv) == 3 * 3 * 5 * 6 + 6  # u is a buffer
  u_before = np.asarray(conv.u).copy()
  conv(rand(1, 8, 8, 5), training=False)
  np.testing.assert_array_equal(u_before, conv.u)


@pytest.mark.parametrize("resolution,expected", [(64, 1_878_242), (128, 5_155_810),
                                                 (256, 18_264_546)])
def test_discriminator_counts_match_dmgan(resolution, expected):
  d = StageDiscriminator(resolution)
  d.build((None, resolution, resolution, 3), (None, 256))
  # DM-GAN's D_NET64/128/256 with ndf 32 (model_spec §4.1: 1.878M, 5.156M, 18.265M).
  assert count_parameters(d) == expected


def test_discriminator_conditioning_and_roundtrip(tmp_path):
  d = StageDiscriminator(64, ndf=4)
  img, s1, s2 = rand(2, 64, 64, 3), rand(2, 16), rand(2, 16)
  u1, c1 = d(img, s1)
  u2, c2 = d(img, s2)
  assert u1.shape == (2,) and c1.shape == (2,)
  np.testing.assert_allclose(u1, u2)
  assert not np.allclose(c1, c2)
  path = str(tmp_path / "d.keras")
  d.save(path)
  loaded = keras.saving.load_model(path)
  assert_allclose_nested(d(img, s1), loaded(img, s1))
  with pytest.raises(ValueError, match="64 \\* 2\\*\\*k"):
    StageDiscriminator(100)


# ------------------------------------------------------------------------------ generator

SMALL = dict(channels=4, memory_dim=6, grid=4, num_heads=2, num_res=1, condition_dim=8, z_dim=6)


@pytest.mark.parametrize("initial,refinement", [("mtwig", "imhm"), ("mtwig", "sdm"),
                                                ("mtwig", "dmgan"), ("ig", "dmgan"),
                                                ("ig", "imhm")])
def test_generator_variants(tmp_path, initial, refinement):
  g = MSMTGenerator(initial, refinement, seed=3, **SMALL)
  b, length = 2, 6
  words, sent, z, eps = rand(b, length, 16), rand(b, 16), rand(b, 6), rand(b, 8)
  mask = np.arange(length)[None] < np.array([[6], [2]])
  out = g(words, sent, mask, z, eps, training=False)
  assert [tuple(x.shape) for x in out["images"]] == [(b, 64, 64, 3), (b, 128, 128, 3),
                                                      (b, 256, 256, 3)]
  heads = {"imhm": 2, "sdm": 1, "dmgan": 1}[refinement]
  assert [len(h) for h in out["head_outputs"]] == [heads, heads]
  assert out["head_outputs"][1][0].shape == (b, 128, 128, 4)
  noisy = np.where(mask[..., None], words, 30 * rand(b, length, 16))
  assert_allclose_nested(out["images"], g(noisy, sent, mask, z, eps, training=False)["images"],
                         rtol=1e-4, atol=1e-5)
  path = str(tmp_path / "g.keras")
  g.save(path)
  loaded = keras.saving.load_model(path)
  assert_allclose_nested(out, loaded(words, sent, mask, z, eps, training=False))


def test_single_stage_generator():
  g = MSMTGenerator(num_stages=1, **SMALL)
  out = g(rand(2, 5, 16), rand(2, 16), np.ones((2, 5), bool), rand(2, 6))
  assert len(out["images"]) == 1 and out["head_outputs"] == []


def test_generator_bad_arguments():
  with pytest.raises(ValueError, match="initial_stage"):
    MSMTGenerator(initial_stage="stackgan")
  with pytest.raises(ValueError, match="num_heads must be >= 1"):
    MSMTGenerator(num_heads=0)
  with pytest.raises(ValueError, match="kernel_size 3 needs --words_num >= 3"):
    ModelConfig(vocab_size=10).build_generator(words_num=2)
  with pytest.raises(ValueError, match="--grid 7 does not divide"):
    ModelConfig(vocab_size=10, grid=7)


@pytest.fixture(scope="module")
def cub_models():
  cfg = ModelConfig(vocab_size=5450)
  return cfg, cfg.build_text_encoder(18), cfg.build_generator(18, seed=0)


def test_full_size_cub_generator_forward_on_cpu(cub_models):
  _, enc, g = cub_models
  tok = tokens_of([18, 9], 18, vocab=5450)
  words, sent = enc(tok)
  out = g(words, sent, tok != 0, rand(2, 100), training=False)
  assert [tuple(x.shape) for x in out["images"]] == [(2, 64, 64, 3), (2, 128, 128, 3),
                                                      (2, 256, 256, 3)]
  assert all(np.isfinite(np.asarray(x)).all() for x in out["images"])
  assert [len(h) for h in out["head_outputs"]] == [6, 6]


def test_parameter_counts_match_paper_table2(cub_models):
  cfg, enc, g = cub_models
  total = count_parameters(enc) + count_parameters(g)
  assert abs(total / 1e6 - PAPER_TABLE2[("mtwig", "imhm", "birds")]) / 48.11 < 0.01
  # Parts derived independently from the paper's dimensions (model_spec §6).
  assert count_parameters(g.ca) == 102_800
  assert count_parameters(g.init_stage) == 33_619_968 + 49_152 + 7_053_120 + 97
  rows, coco_total = params.parameter_table(ModelConfig(vocab_size=27297, num_res=3), 12)
  assert abs(coco_total / 1e6 - 55.16) / 55.16 < 0.01
  assert coco_total - total == (8_628_396 - 2_074_296) + 2 * 249_408  # one more ResBlock(96) per stage
  for vocab, num_res, paper in ((5450, 2, 23.52), (27297, 3, 30.96)):
    cfg = ModelConfig(vocab_size=vocab, num_res=num_res, initial_stage="ig", refinement="dmgan",
                      channels=64)
    _, dm_total = params.parameter_table(cfg, 18)
    assert abs(dm_total / 1e6 - paper) / paper < 0.001


def test_params_cli():
  res = subprocess.run([sys.executable, "-m", "msmt_tf.params",
                        "--flagfile=configs/cub_dmgan.cfg"], cwd=REPO, capture_output=True,
                       text=True)
  assert res.returncode == 0, res.stderr
  assert "23.52M  (ours +0.01%)" in res.stdout and "DM-GAN memory" in res.stdout
  res = subprocess.run([sys.executable, "-m", "msmt_tf.params", "--flagfile=configs/cub.cfg",
                        "--num_heads=0"], cwd=REPO, capture_output=True, text=True)
  assert res.returncode != 0 and "--num_heads must be >= 1" in res.stderr


# ------------------------------------------------------------------------------ backends

@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_tensorflow_and_jax_give_the_same_numbers(tmp_path):
  models = backend_outputs.build()
  weights = backend_outputs.all_weights(models)
  rng = np.random.default_rng(5)
  weights = [(0.3 * rng.standard_normal(w.shape)).astype(w.dtype) if w.dtype.kind == "f" else w
             for w in weights]
  backend_outputs.set_all_weights(models, weights)
  tok = np.zeros((2, backend_outputs.WORDS_NUM), np.int32)
  tok[0, :7] = rng.integers(1, 30, 7)
  tok[1, :3] = rng.integers(1, 30, 3)
  data = dict(tokens=tok, z=rng.standard_normal((2, 6)).astype("float32"),
              ca_noise=rng.standard_normal((2, 8)).astype("float32"))
  expected = backend_outputs.run(models, data)
  src, dst = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
  np.savez(src, **data, **{f"w{i}": w for i, w in enumerate(weights)})
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-m", "tests.backend_outputs", src, dst], cwd=REPO,
                       env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  got = np.load(dst)
  assert str(got["backend"]) == "jax" and keras.backend.backend() == "tensorflow"
  assert not got["tensorflow_imported"]
  for name, value in expected.items():
    np.testing.assert_allclose(got[name], value, rtol=1e-4, atol=1e-4, err_msg=name)


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_tensorflow_and_jax_train_steps_agree(tmp_path):
  """Two steps from the same weights and batch: same losses and same updated variables (G, EMA,
  every D with its spectral-norm vector, batch-norm statistics, Adam moments) on both backends.

  The backends' float32 kernels round differently (~1e-7). Some random draws of this tiny model
  are ill-conditioned (a 1e-6 relative nudge of the weights changes some gradient elements by
  percent), and Adam turns a gradient element near zero into a full +-lr step of either sign. So a
  few weight elements (at most 0.1%) may miss 1e-4; the updates as a whole must agree to 1e-3
  (measured: about 1e-6, and 3e-4 on an ill-conditioned draw) and the Adam first moments, i.e.
  the gradients, to 2e-2 (measured: about 4e-6, and 7e-3).
  """
  keras.utils.set_random_seed(0)  # reproducible weights (the JAX side gets them from the file)
  gan = backend_step.build()
  rng = np.random.default_rng(11)
  start = [x for _, x in backend_step.float_state(gan)]
  batch = backend_step.batch_of(rng)
  src, dst = str(tmp_path / "in.npz"), str(tmp_path / "out.npz")
  np.savez(src, **{f"w{i}": x for i, x in enumerate(start)},
           **{f"b_{k}": v for k, v in batch.items()})
  history = backend_step.step(gan, batch)
  expected = backend_step.float_state(gan)
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-m", "tests.backend_step", src, dst], cwd=REPO,
                       env=env, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-3000:]
  got = np.load(dst)
  assert str(got["backend"]) == "jax" and not got["tensorflow_imported"]
  assert list(got["names"]) == [n for n, _ in expected]
  for s, logs in enumerate(history):
    assert len(logs) >= 8
    for k, v in logs.items():
      assert float(got[f"loss{s}_{k}"]) == pytest.approx(v, rel=1e-4, abs=1e-4), (s, k)
  sums = dict(update_diff=0.0, update=0.0, moment_diff=0.0, moment=0.0)
  misses, elements, moved = [], 0, 0
  for i, (name, value) in enumerate(expected):
    new = got[f"w{i}"].astype(np.float64)
    value = value.astype(np.float64)
    moved += not np.allclose(value, start[i])
    if backend_step.is_optimizer_variable(name):
      if name.endswith("_momentum"):
        sums["moment_diff"] += np.sum((new - value) ** 2)
        sums["moment"] += np.sum(value ** 2)
      continue
    bad = int(np.sum(~np.isclose(new, value, rtol=1e-4, atol=1e-4)))
    if bad:
      misses.append((name, bad, value.size))
    elements += value.size
    sums["update_diff"] += np.sum((new - value) ** 2)
    sums["update"] += np.sum((value - start[i]) ** 2)
  assert sum(b for _, b, _ in misses) <= 1e-3 * elements, misses
  assert np.sqrt(sums["update_diff"] / sums["update"]) <= 1e-3
  assert sums["moment"] > 0 and np.sqrt(sums["moment_diff"] / sums["moment"]) <= 2e-2
  assert moved > len(expected) // 2  # the step really changed the state it is compared on
