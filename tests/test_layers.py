"""Layer tests: shapes, config and `.keras` round trips, formulas, SDM against its equations."""

import json
import os

import keras
from keras import ops
import numpy as np
import pytest

from msmt_tf import layers as L
from msmt_tf.layers import mtwig as mtwig_lib
from msmt_tf.layers import sdm as sdm_lib
from tests import sdm_reference
from tests.layer_testing import assert_layer_roundtrip

RNG = np.random.default_rng(0)


def rand(*shape):
  return RNG.standard_normal(shape).astype("float32")


def word_mask(lengths, length):
  return np.arange(length)[None, :] < np.asarray(lengths)[:, None]


# ------------------------------------------------------------------------------------ blocks

def test_glu():
  x = rand(2, 3, 6)
  np.testing.assert_allclose(L.GLU()(x), x[..., :3] / (1 + np.exp(-x[..., 3:])), rtol=1e-5)


def test_up_block_res_block_to_image(tmp_path):
  x = rand(2, 4, 4, 8)
  up = assert_layer_roundtrip(L.UpBlock(5, name="up"), [x], str(tmp_path))
  assert up.shape == (2, 8, 8, 5)
  res = assert_layer_roundtrip(L.ResBlock(name="res"), [x], str(tmp_path))
  assert res.shape == x.shape
  img = assert_layer_roundtrip(L.ToImage(name="img"), [x], str(tmp_path))
  assert img.shape == (2, 4, 4, 3) and np.abs(img).max() <= 1.0
  # Parameter convention: BN running stats are not parameters (PyTorch buffers).
  assert L.count_parameters(L.UpBlock(5)) == 0  # unbuilt
  up2 = L.UpBlock(5)
  up2.build((None, 4, 4, 8))
  assert L.count_parameters(up2) == 8 * 9 * 10 + 2 * 10


def _upsample_then_conv64(x, kernel):
  """float64 reference of conv3x3_same(nearest_upsample_x2(x)): DM-GAN's upBlock, literally."""
  up = np.repeat(np.repeat(x.astype(np.float64), 2, 1), 2, 2)
  pad = np.pad(up, ((0, 0), (1, 1), (1, 1), (0, 0)))
  h, w = up.shape[1:3]
  return sum(np.einsum("bhwi,io->bhwo", pad[:, dy:dy + h, dx:dx + w], kernel[dy, dx])
             for dy in range(3) for dx in range(3))


def test_fused_upsample_conv_equals_upsample_then_conv():
  """The phase-kernel form against the float64 upsample-then-conv over 30 random draws, odd and
  1-pixel sizes included. Measured max |err| / max |ref|: 2.1e-7 (float32 rounding of sums of
  up to 9 C_in products); a wrong tap or phase order is O(1)."""
  rng = np.random.default_rng(11)
  worst = 0.0
  for _ in range(30):
    b, h, w = rng.integers(1, 4), rng.integers(1, 7), rng.integers(1, 7)
    c_in, c_out = rng.integers(1, 9), rng.integers(1, 9)
    x = rng.standard_normal((b, h, w, c_in)).astype("float32")
    kernel = rng.standard_normal((3, 3, c_in, c_out)).astype("float32")
    got = np.asarray(L.upsample_conv3x3(ops.convert_to_tensor(x), ops.convert_to_tensor(kernel)))
    ref = _upsample_then_conv64(x, kernel)
    assert got.shape == ref.shape == (b, 2 * h, 2 * w, c_out)
    worst = max(worst, np.abs(got - ref).max() / np.abs(ref).max())
  assert worst < 1e-5, worst


def _rel_rms(x, y, floor=0.0):
  """RMS(x - y) / max(RMS(y), floor)."""
  return float(np.sqrt(np.mean((x - y) ** 2)) / max(np.sqrt(np.mean(y ** 2)), floor))


def _output_and_grads(call, inputs, wrt, params, weights):
  """`y = call(*inputs)` and the gradients of sum(y * weights) w.r.t. the inputs at indices
  `wrt`, then w.r.t. the variables `params`, on the current backend, as float32 numpy."""
  inputs = [ops.convert_to_tensor(x) for x in inputs]
  if keras.backend.backend() == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.GradientTape() as tape:
      tape.watch([inputs[i] for i in wrt])
      y = call(*inputs)
      loss = tf.reduce_sum(tf.cast(y, "float32") * weights)
    grads = tape.gradient(loss, [inputs[i] for i in wrt] + [p.value for p in params])
  else:
    import jax  # pylint: disable=g-import-not-at-top

    def loss(xs, values):
      full = list(inputs)
      for i, x in zip(wrt, xs):
        full[i] = x
      with keras.StatelessScope(list(zip(params, values))):
        y = call(*full)
      return ops.sum(ops.cast(y, "float32") * weights), y
    (_, y), (gx, gp) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
        [inputs[i] for i in wrt], [p.value for p in params])
    grads = list(gx) + list(gp)
  return [np.asarray(ops.cast(v, "float32")) for v in (y, *grads)]


def _value_and_grads(layer, x):
  """UpBlock output (training) and the gradients of a weighted sum w.r.t. its input and kernel."""
  weights = np.random.default_rng(5).standard_normal(
      layer.compute_output_shape(x.shape)).astype("float32")
  return _output_and_grads(lambda xx: layer(xx, training=True), [x], [0], [layer.conv.kernel],
                           weights)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_up_block_fused_and_reference_agree(policy):
  """UpBlock's two implementations of one kernel variable: same output and gradients (input and
  kernel) in training mode. Every weight is drawn from the seed: the batch norm's gamma too
  (its initializer, N(1, 0.02), is unseeded, and with it left as made the bf16 differences
  moved with whatever earlier tests had drawn: 0.017-0.0195 for the kernel gradient at one
  seed, against a bound then of 0.02). Relative RMS difference, largest over 60 seeds (AMD
  EPYC, 2026-11-29, TensorFlow / JAX): float32 2.2e-7 / 2.2e-7 (output), 2.5e-7 / 2.8e-7
  (d/dx), 3.6e-7 / 3.5e-7 (d/dkernel), bound 1e-5; mixed_bfloat16 0.0050 / 0.0048, 0.013 /
  0.0058, 0.021 / 0.0050, bound 0.05. TensorFlow's bf16 kernel gradient is the loosest in both
  paths: against the layer in float32 (an ad-hoc run, 60 seeds) the reference path's is up to
  0.018 off, the fused path's 0.015 (JAX: 0.0062 / 0.0060), so their difference is bf16
  rounding, not a term of the formula (the output phases swapped: 87% off). The measurement:
  MSMT_LAYER_SEEDS=60 MSMT_LAYER_REPORT=FILE KERAS_BACKEND=... pytest -k up_block_fused."""
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  bound = 1e-5 if policy == "float32" else 5e-2
  before = blocks.upsample_conv()
  keras.mixed_precision.set_global_policy(policy)
  largest = {}
  try:
    for seed in range(int(os.environ.get("MSMT_LAYER_SEEDS", "3"))):
      rng = np.random.default_rng(seed)
      x = rng.standard_normal((3, 5, 6, 8)).astype("float32")
      layer = L.UpBlock(6)
      layer.build(x.shape)
      layer.conv.kernel.assign(rng.standard_normal(layer.conv.kernel.shape) * 0.2)
      layer.bn.gamma.assign(1.0 + 0.02 * rng.standard_normal(layer.bn.gamma.shape))
      layer.bn.beta.assign(0.02 * rng.standard_normal(layer.bn.beta.shape))
      results, calls = {}, []
      fused_fn = blocks.upsample_conv3x3
      blocks.upsample_conv3x3 = lambda *a: calls.append(1) or fused_fn(*a)
      try:
        for mode in blocks.UPSAMPLE_CONV_MODES:
          blocks.set_upsample_conv(mode)
          results[mode] = _value_and_grads(layer, x)
          assert bool(calls) == (mode == "fused"), (mode, len(calls))  # the mode's own path
          calls.clear()
      finally:
        blocks.upsample_conv3x3 = fused_fn
      for name, a, b in zip(("output", "d/dx", "d/dkernel"), results["fused"],
                            results["reference"]):
        rel = _rel_rms(a, b)
        largest[name] = max(largest.get(name, 0.0), rel)
        if not os.environ.get("MSMT_LAYER_REPORT"):  # (the measurement takes every seed)
          assert rel < bound, (policy, seed, name, rel)
    if os.environ.get("MSMT_LAYER_REPORT"):
      with open(os.environ["MSMT_LAYER_REPORT"], "a") as f:
        f.write(json.dumps(dict(test="up_block", backend=keras.backend.backend(), policy=policy,
                                largest=largest)) + "\n")
  finally:
    blocks.set_upsample_conv(before)
    keras.mixed_precision.set_global_policy("float32")


def test_set_upsample_conv_refuses_unknown_mode():
  with pytest.raises(ValueError, match="upsample_conv must be one of"):
    L.set_upsample_conv("bilinear")


def _bn_value_and_grads(layer, x, weights, mode):
  """One training call of a batch-norm layer through `apply_batch_norm` in `mode`: output, the
  gradients of a weighted sum w.r.t. input, gamma and beta, and the new moving statistics."""
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  before = blocks.batch_norm_mode()
  blocks.set_batch_norm_mode(mode)
  moving = [layer.moving_mean, layer.moving_variance]
  saved = [np.asarray(v) for v in moving]
  x = ops.convert_to_tensor(x)
  try:
    if keras.backend.backend() == "tensorflow":
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      with tf.GradientTape() as tape:
        tape.watch(x)
        y = blocks.apply_batch_norm(layer, x, training=True)
        loss = tf.reduce_sum(tf.cast(y, "float32") * weights)
      grads = tape.gradient(loss, [x, layer.gamma, layer.beta])
      new_moving = [np.asarray(v) for v in moving]
    else:
      import jax  # pylint: disable=g-import-not-at-top
      gamma, beta = layer.gamma, layer.beta

      def loss(xx, g, b):
        with keras.StatelessScope([(gamma, g), (beta, b)]) as scope:
          y = blocks.apply_batch_norm(layer, xx, training=True)
        return (ops.sum(ops.cast(y, "float32") * weights),
                (y, [scope.get_current_value(v) for v in moving]))
      (_, (y, new_moving)), grads = jax.value_and_grad(loss, argnums=(0, 1, 2), has_aux=True)(
          x, gamma.value, beta.value)
    return [np.asarray(v, np.float32) for v in (y, *grads, *new_moving)]
  finally:
    blocks.set_batch_norm_mode(before)
    for v, a in zip(moving, saved):
      v.assign(a)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_equals_keras_batch_norm(policy):
  """--batch_norm=fused against keras.layers.BatchNormalization, training mode: output,
  d/dx, d/dgamma, d/dbeta and both moving statistics, for a 4-D activation of mean 3 and a 2-D
  one (MTWIG's fc), 3 seeds. Largest relative RMS difference measured over 20 seeds
  (AMD EPYC, TensorFlow / JAX): float32 output 2.6e-7 / 9.7e-7, gradients 6.5e-7 / 1.9e-6,
  statistics 1.4e-7 / 4.0e-7; mixed_bfloat16 output 0 / 1.3e-4, d/dx 2.6e-4 / 2.6e-4 (bf16
  outputs: a few elements one bf16 step apart), d/dgamma 3.8e-7 / 1.1e-6, statistics
  1.2e-7 / 5.9e-7 (float32 in both). A missing term of the gradient (the statistics' path) or a
  momentum the wrong way round is O(1)."""
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  bound = 2e-5 if policy == "float32" else 5e-3
  keras.mixed_precision.set_global_policy(policy)
  try:
    for seed in range(3):
      rng = np.random.default_rng(seed)
      for shape, offset in (((4, 5, 6, 8), 3.0), ((6, 10), 0.0)):
        x = (offset + 2.0 * rng.standard_normal(shape)).astype("float32")
        if policy != "float32":
          x = ops.cast(x, "bfloat16")
        layer = blocks.batch_norm()
        layer.build(shape)
        layer.gamma.assign(1 + 0.3 * rng.standard_normal(shape[-1]))
        layer.beta.assign(0.3 * rng.standard_normal(shape[-1]))
        layer.moving_mean.assign(rng.standard_normal(shape[-1]))
        layer.moving_variance.assign(1 + rng.random(shape[-1]))
        weights = rng.standard_normal(shape).astype("float32")
        got = _bn_value_and_grads(layer, x, weights, "fused")
        want = _bn_value_and_grads(layer, x, weights, "keras")
        names = ("output", "d/dx", "d/dgamma", "d/dbeta", "moving_mean", "moving_variance")
        for name, a, b in zip(names, got, want):
          assert a.shape == b.shape, name
          rel = _rel_rms(a, b)
          assert rel < (2e-5 if name.startswith("moving") else bound), (policy, seed, shape,
                                                                         name, rel)
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_one_pass_moments_survive_a_large_mean():
  """Shifted one-pass statistics against float64, activations of mean 1000 and standard deviation
  1 (the unshifted E[x^2] - E[x]^2 loses the variance there: computed below, relative error
  > 1e-2). Largest relative error of the variance over 20 seeds: 4.2e-5 TensorFlow (its float32
  reduction order), 7.6e-7 JAX."""
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(3)
  x = (1000.0 + rng.standard_normal((16, 32, 32, 4))).astype("float32")
  mean, var = (np.asarray(v) for v in blocks.one_pass_moments(ops.convert_to_tensor(x)))
  x64 = x.astype(np.float64)
  want_mean, want_var = x64.mean(axis=(0, 1, 2)), x64.var(axis=(0, 1, 2))
  np.testing.assert_allclose(mean, want_mean, rtol=1e-6)
  assert np.max(np.abs(var - want_var) / want_var) < 1e-3
  xt = ops.convert_to_tensor(x)
  naive = np.asarray(ops.mean(ops.square(xt), axis=(0, 1, 2))
                     - ops.square(ops.mean(xt, axis=(0, 1, 2))))
  assert np.max(np.abs(naive - want_var) / want_var) > 1e-2  # what the shift is for


def test_batch_norm_mode_keeps_keras_where_it_must():
  """Inference, frozen layers and synchronized (TF distributed) layers take Keras's own call in
  the fused mode; an unknown mode is refused."""
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  x = ops.convert_to_tensor(rand(4, 3, 3, 6))
  layer = blocks.batch_norm()
  layer.build(x.shape)
  calls = []
  original = layer.call
  layer.call = lambda *a, **k: calls.append(k.get("training")) or original(*a, **k)
  before = blocks.batch_norm_mode()
  try:
    blocks.set_batch_norm_mode("fused")
    blocks.apply_batch_norm(layer, x, training=True)
    assert not calls  # the fused path
    blocks.apply_batch_norm(layer, x, training=False)
    layer.trainable = False
    blocks.apply_batch_norm(layer, x, training=True)
    layer.trainable = True
    if keras.backend.backend() == "tensorflow":  # JAX refuses synchronized batch norms
      layer.synchronized = True
      blocks.apply_batch_norm(layer, x, training=True)
    assert len(calls) == 2 + (keras.backend.backend() == "tensorflow")
  finally:
    blocks.set_batch_norm_mode(before)
  with pytest.raises(ValueError, match="batch_norm must be one of"):
    blocks.set_batch_norm_mode("cudnn")


def _mode_value_and_grads(layer, inputs, weights, name, mode):
  """`layer(*inputs)` with implementation `name` set to `mode`: its output and the gradients of
  sum(output * weights) w.r.t. the float inputs and every trainable weight, as float32 numpy."""
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  before = blocks.implementation(name)
  blocks.set_implementation(name, mode)
  wrt = [i for i, x in enumerate(inputs) if "float" in str(ops.convert_to_tensor(x).dtype)]
  try:
    return _output_and_grads(layer, inputs, wrt, list(layer.trainable_weights), weights)
  finally:
    blocks.set_implementation(name, before)


@pytest.mark.parametrize("policy", ["float32", "mixed_bfloat16"])
def test_merged_sdm_convs_and_reduced_fuse_gate_equal_the_literal_layers(policy, monkeypatch):
  """--sdm_convs=merged (an SDM head's three query convs as one, phi_K and phi_V as one; the
  default), --sdm_convs=factored (phi_K / phi_V per word and per cell, pooled global and grid
  queries), --fuse_gate=reduce (the scalar gate's logits as channel sums, no concatenation;
  the default) and --fuse_gate=matvec (reduce, its kernel gradients as matrix-vector products)
  against the Keras layers as written (separate convs; a 1x1 conv of the concatenation):
  output and the gradient w.r.t. every float input and trainable weight, SDM in its 'split',
  'concat' (and for factored 'project') key modes (3 seeds; each case on its path).
  float32: relative RMS difference < 1e-4, a gradient's taken against its RMS or a tenth of the
  median over the case's gradients, whichever is larger (a sum of cancelling terms, such as the
  gate's bias gradient at seed 4, is relatively far off in either implementation). Largest over
  60 seeds (AMD EPYC, 2026-11-29, TensorFlow / JAX): outputs <= 3.5e-7 in every case;
  gradients merged 1.4e-5 / 2.7e-5, factored 1.9e-5 / 2.2e-5, fuse 7.7e-6 / 1.2e-5, matvec
  4.5e-6 / 8.6e-7. (Against the gradient's own RMS alone the gate's bias was 4.5e-5 off at
  seed 4, and with the bound then 2e-5, JAX's merged SDM failed at seed 51: 2.7e-5.)
  mixed_bfloat16: each implementation rounds differently, and a bias gradient summed from many
  cancelling terms, or one through a near-tie of the word softmax, can be 40-99% off float32 in
  either; so each is compared with the same layer in float32. Per seed, the output and the
  median over the gradients within 0.05 / 0.3 of float32; largest over 60 seeds: outputs 0.015 /
  0.015, gradient medians factored 0.094 / 0.090, merged (the literal layers' own) 0.087 /
  0.134, fuse 0.006 / 0.006, matvec 0.007 / 0.006. Over the seeds, the median of the new
  path's errors over the literal layers' <= 1.25: merged 1.0 / 1.0, factored 0.86-0.89 /
  0.82-0.88 (it sums in float32), fuse 0.82-0.90 / 0.78-0.86, matvec 0.84-0.92 / 0.79-0.89.
  Mutations: a merged kernel's outputs split in the wrong order fails the SDM's reshape; a gate
  with a's and b's halves swapped puts the fusion 71% off; matvec's kernel gradient scaled by
  1.001 fails float32. The measurement:
  MSMT_LAYER_SEEDS=60 MSMT_LAYER_REPORT=FILE KERAS_BACKEND=... pytest -k merged_sdm_convs."""
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  from msmt_tf.layers import fuse  # pylint: disable=g-import-not-at-top
  calls = []
  hooks = {"merged": [(blocks, "merged_conv")] * 2, "reduce": [(fuse, "scalar_gate_logits")],
           "matvec": [(fuse, "scalar_gate_logits")],
           "factored": [(sdm_lib, "factored_memory_convs"), (sdm_lib, "pooled_query_convs")]}
  for module, fn in {hook for hooked in hooks.values() for hook in hooked}:
    monkeypatch.setattr(module, fn, lambda *a, fn=fn, f=getattr(module, fn):
                        calls.append(fn) or f(*a))
  seeds = int(os.environ.get("MSMT_LAYER_SEEDS", "3"))
  largest, ratios = {}, {}
  keras.mixed_precision.set_global_policy(policy)
  try:
    for seed in range(seeds):
      rng = np.random.default_rng(seed)
      b, length, size, nr = 2, 4, 8, 4
      words = rng.standard_normal((b, length, 7)).astype("float32")
      mask = word_mask([length, 2], length)
      r = rng.standard_normal((b, size, size, nr)).astype("float32")
      u = rng.standard_normal((b, size, size, nr)).astype("float32")
      cases = []
      for key_mode, mode in (("split", "merged"), ("concat", "merged"), ("split", "factored"),
                             ("concat", "factored"), ("project", "factored")):
        make = lambda k=key_mode: L.SpatialDynamicMemory(grid=2, memory_dim=6, channels=nr,
                                                         key_mode=k, detach_grid=False)
        cases.append((f"sdm {key_mode} {mode}", make, [words, mask, r, u], "sdm_convs", mode,
                      "separate"))
      cases.append(("fuse", L.GatedFusion, [r, u], "fuse_gate", "reduce", "conv"))
      cases.append(("fuse matvec", L.GatedFusion, [r, u], "fuse_gate", "matvec", "conv"))
      for case, make, inputs, name, mode, literal in cases:
        layer = make()
        keras.mixed_precision.set_global_policy("float32")
        exact = make()  # the same weights in float32: the rounding-free answer
        exact(*inputs)  # built (its sublayers made) under float32
        keras.mixed_precision.set_global_policy(policy)
        layer(*inputs)
        layer.set_weights([0.5 * rng.standard_normal(w.shape) for w in layer.get_weights()])
        exact.set_weights(layer.get_weights())
        weights = rng.standard_normal((b, size, size, nr)).astype("float32")
        del calls[:]  # (building the layers went through the default paths)
        got = _mode_value_and_grads(layer, inputs, weights, name, mode)
        assert calls == [fn for _, fn in hooks[mode]], (case, calls)
        want = _mode_value_and_grads(layer, inputs, weights, name, literal)
        truth = _mode_value_and_grads(exact, inputs, weights, name, literal)
        assert len(calls) == len(hooks[mode]), (case, calls)  # none on the literal path
        assert len(got) == len(want) == len(truth) > 3
        # A gradient's float32 rounding follows the size of the terms it sums, not its value: a
        # bias gradient summed from cancelling terms (the gate's, 0.0105 against ~0.5 for the
        # others at seed 4) is relatively far off in either implementation (4.5e-5). So each
        # gradient's difference is taken relative to its RMS or a tenth of the median RMS of
        # the case's gradients, whichever is larger (the docstring's mutations still fail).
        floor = 0.1 * float(np.median([np.sqrt(np.mean(g ** 2)) for g in want[1:]]))
        for i, (x, y) in enumerate(zip(got, want)):
          assert x.shape == y.shape == truth[i].shape, (case, i)
          what = f"{case} {'output' if i == 0 else 'gradients'}"
          rel = _rel_rms(x, y) if i == 0 else _rel_rms(x, y, floor)
          largest[what] = max(largest.get(what, 0.0), rel)
          if policy == "float32":
            assert rel < 1e-4, (seed, case, i, rel)
        if policy != "float32":
          # bf16 rounds each implementation differently, and a gradient summed from many
          # cancelling terms (a bias's), or through a near-tie of the word softmax, can be
          # 10-40% off float32 in either. Per seed: the new path's output, and its median over
          # the gradients, within 0.05 / 0.3 of float32 (a wrong term is ~100% off); over the
          # seeds (below): its errors no larger than the literal layers' (median of the ratios).
          errs = [(_rel_rms(a, t), _rel_rms(d, t)) for a, d, t in zip(got, want, truth)]
          for what, pairs, bound in (("output", errs[:1], 0.05), ("gradients", errs[1:], 0.3)):
            error = float(np.median([e for e, _ in pairs]))
            key = f"{case} {what}: bf16 error (median)"
            largest[key] = max(largest.get(key, 0.0), error)
            assert error <= bound, (seed, case, what, pairs)
            ratios.setdefault((case, what), []).extend(e / max(e_literal, 1e-6)
                                                        for e, e_literal in pairs)
    for (case, what), values in ratios.items():
      ratio = float(np.median(values))
      largest[f"{case} {what}: bf16 error / literal's (median over seeds)"] = ratio
      assert ratio <= 1.25, (case, what, ratio)
    if os.environ.get("MSMT_LAYER_REPORT"):  # the measurement behind the docstring
      with open(os.environ["MSMT_LAYER_REPORT"], "a") as f:
        f.write(json.dumps(dict(backend=keras.backend.backend(), policy=policy, seeds=seeds,
                                largest=largest)) + "\n")
  finally:
    keras.mixed_precision.set_global_policy("float32")


def test_merged_conv_refuses_what_it_cannot_merge(monkeypatch):
  """blocks.merged_conv names the layer that differs; a per-channel fuse gate keeps its
  convolution under --fuse_gate=reduce; an unknown mode is refused."""
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  from msmt_tf.layers import fuse  # pylint: disable=g-import-not-at-top
  x = ops.convert_to_tensor(rand(2, 6, 6, 3))
  convs = [blocks.Conv2D(4, 3, padding="same", name="three"),
           blocks.Conv2D(2, 5, padding="same", name="five")]
  for conv in convs:
    conv.build(x.shape)
  with pytest.raises(ValueError, match="five and three differ"):
    blocks.merged_conv(convs, x)
  with pytest.raises(ValueError, match="grouped"):
    grouped = blocks.Conv2D(3, 3, padding="same", groups=3, name="grouped")
    grouped.build(x.shape)
    blocks.merged_conv([grouped, grouped], x)
  with pytest.raises(ValueError, match="unbuilt is not built"):
    blocks.merged_conv([convs[0], blocks.Conv2D(4, 3, padding="same", name="unbuilt")], x)
  # Two that agree: the merged outputs are the layers' own.
  same = [convs[0], blocks.Conv2D(2, 3, padding="same", activation="relu")]
  same[1].build(x.shape)
  for got, conv in zip(blocks.merged_conv(same, x), same):
    np.testing.assert_allclose(np.asarray(got), np.asarray(conv(x)), rtol=1e-5, atol=1e-6)
  calls = []
  monkeypatch.setattr(fuse, "scalar_gate_logits", lambda *a: calls.append(1))
  monkeypatch.setitem(blocks._chosen, "fuse_gate", "reduce")  # pylint: disable=protected-access
  L.GatedFusion(per_channel=True)(x, x)
  assert not calls
  with pytest.raises(ValueError, match="sdm_convs must be one of"):
    blocks.set_implementation("sdm_convs", "gemm")
  # The factored SDM rewrites only what linearity allows, and names the layer it cannot.
  linear = blocks.Conv2D(4, 3, padding="same", name="linear")
  relu = blocks.Conv2D(4, 3, padding="same", activation="relu", name="relu")
  valid = blocks.Conv2D(4, 3, padding="valid", name="valid")
  strided = blocks.Conv2D(4, 3, strides=2, padding="same", name="strided")
  for conv in (linear, relu, valid, strided):
    conv.build(x.shape)
  with pytest.raises(ValueError, match="relu has the activation relu"):
    sdm_lib.pooled_query_convs(linear, relu, x, 2)
  for bad in (valid, strided):
    with pytest.raises(ValueError, match=f"'same' convolutions of stride and dilation 1; "
                                         f"{bad.name} has"):
      sdm_lib.factored_memory_convs([linear, bad], x[:, None, 0, 0], x[:, :2, :2], x[:, None,
                                                                                    :2, :2, 0])
  np.testing.assert_allclose(  # the pooled means are those of the convolution
      np.asarray(sdm_lib.pooled_query_convs(linear, linear, x, 2)[1]),
      np.asarray(sdm_lib.grid_pool(linear(x), 2)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("gate_mode", ["conv", "reduce", "matvec"])
def test_gated_fusion_formula(tmp_path, gate_mode, monkeypatch):
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  from msmt_tf.layers import fuse as fuse_lib  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(blocks._chosen, "fuse_gate", gate_mode)  # pylint: disable=protected-access
  calls = []
  monkeypatch.setattr(fuse_lib, "scalar_gate_logits", lambda *a, f=fuse_lib.scalar_gate_logits:
                      calls.append(per_channel) or f(*a))
  a, b = rand(2, 5, 5, 4), rand(2, 5, 5, 4)
  for per_channel in (False, True):
    fuse = L.GatedFusion(per_channel, name=f"fuse{int(per_channel)}")
    out = assert_layer_roundtrip(fuse, [a, b], str(tmp_path))
    kernel = np.asarray(fuse.gate.kernel)[0, 0]
    bias = np.asarray(fuse.gate.bias)
    g = 1 / (1 + np.exp(-(np.concatenate([a, b], -1) @ kernel + bias)))
    np.testing.assert_allclose(out, a * g + b * (1 - g), rtol=1e-5, atol=1e-6)
    assert kernel.shape == ((8, 4) if per_channel else (8, 1))
  # the channel sums for the scalar gate only, in the reduce and matvec modes only
  assert bool(calls) == (gate_mode != "conv") and not any(calls)


def test_conditioning_augmentation(tmp_path):
  s, eps = rand(3, 16), rand(3, 5)
  ca = L.ConditioningAugmentation(5, seed=1, name="ca")
  c, mu, logvar = assert_layer_roundtrip(ca, [s, eps], str(tmp_path))
  np.testing.assert_allclose(c, mu + np.exp(0.5 * np.asarray(logvar)) * eps, rtol=1e-5)
  # Without explicit noise it samples: two calls differ, the mean path does not.
  c1, mu1, _ = ca(s)
  c2, mu2, _ = ca(s)
  np.testing.assert_allclose(mu1, mu2)
  assert not np.allclose(c1, c2)


# ------------------------------------------------------------------------------------ MTWIG

def test_valid_tail_mask():
  mask = word_mask([5, 2, 9], 9)
  got = np.asarray(mtwig_lib.valid_tail_mask(mask, 3, 7))
  np.testing.assert_array_equal(got, [[1, 1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0],
                                      [1, 1, 1, 1, 1, 1, 1]])


@pytest.mark.parametrize("kernel_size", [1, 2, 3])
def test_mtwig_shapes_roundtrip_and_padding_invariance(tmp_path, kernel_size):
  b, length = 3, 6
  words, c, z = rand(b, length, 8), rand(b, 5), rand(b, 4)
  mask = word_mask([6, 2, 4], length)
  layer = L.MultiTailedWordInit(channels=2, kernel_size=kernel_size, name=f"mtwig{kernel_size}")
  out = assert_layer_roundtrip(layer, [words, mask, c, z], str(tmp_path))
  assert out.shape == (b, 64, 64, 2)
  assert layer.tail_conv.kernel.shape == (kernel_size, 8 + 5 + 4, 2 * 16 * 2 * 16)
  noisy = np.where(mask[..., None], words, 100 * rand(b, length, 8))
  for training in (False, True):
    np.testing.assert_allclose(layer(words, mask, c, z, training=training),
                               layer(noisy, mask, c, z, training=training), rtol=1e-5, atol=1e-5)


def test_mtwig_fuses_tails_left_to_right():
  """R_1 equals the explicit recursion S_{1:t} = fuse(S_{1:t-1}, S_t) over valid tails."""
  b, length = 2, 5
  words, c, z = rand(b, length, 4), rand(b, 3), rand(b, 3)
  mask = word_mask([5, 3], length)
  layer = L.MultiTailedWordInit(channels=2, kernel_size=2)
  out = np.asarray(layer(words, mask, c, z))
  x = np.concatenate([np.repeat(np.concatenate([c, z], -1)[:, None], length, 1),
                      words * mask[..., None]], -1)
  f = np.asarray(layer.tail_conv(x))
  tails = np.asarray(layer.trunk(ops.reshape(
      layer.glu(layer.tail_bn(ops.reshape(f, (-1, f.shape[-1])))), (-1, 4, 4, 32))))
  tails = tails.reshape(b, 4, 64, 64, 2)
  for n, valid_tails in ((0, 4), (1, 2)):
    fused = tails[n, 0]
    for t in range(1, valid_tails):
      fused = np.asarray(layer.fuse(fused[None], tails[n, t][None]))[0]
    np.testing.assert_allclose(out[n], fused, rtol=1e-4, atol=1e-5)


def test_mtwig_rejects_short_sequences():
  layer = L.MultiTailedWordInit(channels=2, kernel_size=4)
  with pytest.raises(ValueError, match="at least 4 word positions"):
    layer(rand(1, 3, 4), word_mask([3], 3), rand(1, 2), rand(1, 2))
  with pytest.raises(ValueError, match="kernel_size must be >= 1"):
    L.MultiTailedWordInit(kernel_size=0)


def test_conventional_init(tmp_path):
  out = assert_layer_roundtrip(L.ConventionalInit(2, name="ig"), [rand(2, 5), rand(2, 3)],
                               str(tmp_path))
  assert out.shape == (2, 64, 64, 2)


# ------------------------------------------------------------------------------------ SDM

def test_cell_reshapes_are_inverse_and_follow_eq12():
  x = rand(2, 8, 8, 3)
  cells = np.asarray(sdm_lib.to_cells(x, 2))
  assert cells.shape == (2, 2, 2, 16, 3)
  # In-cell index a * p + b of cell (i, j) is pixel (i p + a, j p + b).
  np.testing.assert_array_equal(cells[1, 1, 0, 2 * 4 + 3], x[1, 4 + 2, 3])
  np.testing.assert_array_equal(np.asarray(sdm_lib.from_cells(cells, 2)), x)
  # Cell (i, j) pools pixels (i p + a, j p + b), against float64. An absolute bound: the cell
  # means of unit-normal pixels are near 0, where a relative one fails on float32 rounding
  # (largest error over 300 seeds, AMD EPYC: 6.9e-8 TensorFlow, 1.3e-7 JAX).
  want = x.astype(np.float64).reshape(2, 2, 4, 2, 4, 3).mean(axis=(2, 4))
  np.testing.assert_allclose(np.asarray(sdm_lib.grid_pool(x, 2)), want, rtol=0, atol=1e-6)
  np.testing.assert_allclose(want[0, 1, 0], x[0, 4:8, 0:4].reshape(-1, 3).mean(0), atol=1e-6)


@pytest.mark.parametrize("sdm_convs", ["separate", "merged", "factored"])
@pytest.mark.parametrize("size,grid,length,key_mode,kernel_size", [
    (8, 2, 4, "split", 3), (8, 4, 3, "split", 3), (12, 3, 5, "split", 3), (8, 2, 4, "concat", 3),
    (8, 2, 3, "project", 3), (8, 2, 3, "split", 5), (8, 2, 3, "split", 2),
    (12, 3, 4, "concat", 4), (8, 2, 3, "split", (3, 2))])
def test_sdm_matches_literal_equations(size, grid, length, key_mode, kernel_size, sdm_convs,
                                       monkeypatch):
  """Every implementation against the float64 loops of tests/sdm_reference.py, odd, even and
  rectangular kernels ('same' pads (k - 1) // 2 before). Largest relative error measured (both
  backends, the cases here): 5.4e-7."""
  from msmt_tf.layers import blocks  # pylint: disable=g-import-not-at-top
  monkeypatch.setitem(blocks._chosen, "sdm_convs", sdm_convs)  # pylint: disable=protected-access
  b, nr = 2, 4
  layer = L.SpatialDynamicMemory(grid=grid, memory_dim=6, channels=nr, key_mode=key_mode,
                                 kernel_size=kernel_size)
  words = rand(b, length, 7)
  mask = word_mask([length, 2], length)
  r, u = rand(b, size, size, nr), rand(b, size, size, nr)
  layer(words, mask, r, u)
  # Random, non-degenerate weights (biases too), so every term matters.
  layer.set_weights([0.5 * RNG.standard_normal(w.shape) for w in layer.get_weights()])
  out = np.asarray(layer(words, mask, r, u), np.float64)
  ref = sdm_reference.sdm_reference(layer, words, mask, r, u)
  rel = np.abs(out - ref).max() / np.abs(ref).max()
  assert rel < 1e-5, rel
  assert out.shape == (b, size, size, nr)


def test_sdm_roundtrip_padding_invariance_and_key_width(tmp_path):
  b, length, size = 2, 5, 16
  layer = L.SpatialDynamicMemory(grid=4, memory_dim=6, channels=3, name="sdm")
  words, r, u = rand(b, length, 7), rand(b, size, size, 3), rand(b, size, size, 3)
  mask = word_mask([5, 2], length)
  out = assert_layer_roundtrip(layer, [words, mask, r, u], str(tmp_path))
  assert layer.key.filters == 3 + 4 * 4  # N_r + p^2
  noisy = np.where(mask[..., None], words, 50 * rand(b, length, 7))
  np.testing.assert_allclose(out, layer(noisy, mask, r, u), rtol=1e-6, atol=1e-6)
  # The words do matter.
  assert not np.allclose(out, layer(rand(b, length, 7), mask, r, u))


def test_sdm_grid_gradient_is_detached_by_default():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  words, mask = rand(1, 3, 4), word_mask([3], 3)
  r, u = tf.constant(rand(1, 8, 8, 2)), tf.constant(rand(1, 8, 8, 2))
  for detach, expect_zero in ((True, True), (False, False)):
    layer = L.SpatialDynamicMemory(grid=2, memory_dim=4, channels=2, detach_grid=detach)
    with tf.GradientTape() as tape:
      tape.watch(r)
      loss = tf.reduce_sum(layer(words, mask, r, u))
    grad = tape.gradient(loss, r)
    assert (grad is None or np.allclose(grad, 0)) == expect_zero


def test_sdm_bad_sizes():
  layer = L.SpatialDynamicMemory(grid=3, channels=2)
  with pytest.raises(ValueError, match="not divisible by grid 3"):
    layer(rand(1, 2, 4), word_mask([2], 2), rand(1, 8, 8, 2), rand(1, 8, 8, 2))
  with pytest.raises(ValueError, match="key_mode"):
    L.SpatialDynamicMemory(key_mode="dot")


# ------------------------------------------------------------------------------------ IMHM

def test_imhm_iterates_heads_and_skip_fuses(tmp_path):
  b, length, size = 2, 4, 8
  layer = L.IterativeMultiHeadRefinement(num_heads=3, num_res=1, grid=2, memory_dim=4,
                                         channels=2, name="imhm")
  feats, words = rand(b, size, size, 2), rand(b, length, 5)
  mask = word_mask([4, 1], length)
  out, heads = assert_layer_roundtrip(layer, [feats, words, mask], str(tmp_path))
  assert out.shape == (b, 16, 16, 2) and len(heads) == 3
  # Re-derive with Eq. 15-16: head t queries U_{t-1}, memory from R.
  u = feats
  for t in range(3):
    o = layer.heads[t](words, mask, feats, u)
    np.testing.assert_allclose(heads[t], o, rtol=1e-5, atol=1e-6)
    u = layer.fuses[t](u, o)
  response = layer.skip_fuse(u, feats)
  x = ops.concatenate([response, response], -1)
  for block in layer.res_blocks:
    x = block(x)
  np.testing.assert_allclose(out, layer.up(x), rtol=1e-5, atol=1e-5)
  noisy = np.where(mask[..., None], words, 9 * rand(b, length, 5))
  np.testing.assert_allclose(out, layer(feats, noisy, mask)[0], rtol=1e-5, atol=1e-5)


def test_single_head_has_no_skip_fuse():
  layer = L.IterativeMultiHeadRefinement(num_heads=1, num_res=0, grid=2, memory_dim=4,
                                         channels=2)
  assert layer.skip_fuse is None
  with pytest.raises(ValueError, match="num_heads must be >= 1"):
    L.IterativeMultiHeadRefinement(num_heads=0)


def test_dmgan_refinement(tmp_path):
  b, length = 2, 4
  layer = L.DMGANRefinement(channels=3, num_res=1, name="dmgan")
  feats, words = rand(b, 8, 8, 3), rand(b, length, 5)
  mask = word_mask([4, 2], length)
  out, heads = assert_layer_roundtrip(layer, [feats, words, mask], str(tmp_path))
  assert out.shape == (b, 16, 16, 3) and heads[0].shape == feats.shape
  noisy = np.where(mask[..., None], words, 9 * rand(b, length, 5))
  np.testing.assert_allclose(out, layer(feats, noisy, mask)[0], rtol=1e-5, atol=1e-5)
