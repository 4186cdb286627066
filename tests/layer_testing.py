"""Shared checks for layers: config round trip and `.keras` save/load with equal outputs."""

import json
import os

import keras
import numpy as np


def _flat(x):
  return [np.asarray(t) for t in keras.tree.flatten(x)]


def assert_allclose_nested(a, b, rtol=1e-5, atol=1e-6):
  fa, fb = _flat(a), _flat(b)
  assert len(fa) == len(fb)
  for x, y in zip(fa, fb):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=atol)


def assert_layer_roundtrip(layer, inputs, tmp_dir, call_kwargs=None):
  """`layer(*inputs)`: checks get_config/from_config and a `.keras` round trip give equal outputs.

  Args:
    layer: an unbuilt layer.
    inputs: list of numpy arrays (batch first), the layer's positional call arguments.
  Returns:
    The layer's outputs on `inputs`.
  """
  call_kwargs = call_kwargs or {}
  out = layer(*inputs, **call_kwargs)
  config = layer.get_config()
  json.dumps(keras.saving.serialize_keras_object(layer))
  clone = layer.__class__.from_config(config)
  clone(*inputs, **call_kwargs)
  assert len(clone.weights) == len(layer.weights)
  clone.set_weights(layer.get_weights())
  assert_allclose_nested(out, clone(*inputs, **call_kwargs))

  # .keras archive of a functional model around the layer.
  symbolic = [keras.Input(shape=x.shape[1:], dtype=x.dtype) for x in inputs]
  model = keras.Model(symbolic, layer(*symbolic, **call_kwargs))
  path = os.path.join(tmp_dir, f"{layer.name}.keras")
  model.save(path)
  loaded = keras.saving.load_model(path)
  assert_allclose_nested(model(inputs), loaded(inputs))
  assert_allclose_nested(out, loaded(inputs))
  return out
