"""The one place that imports tensorflow-gan (its eval math: Fréchet distance, classifier score).

tensorflow-gan 2.1.0's package `__init__` imports its estimator code, which subclasses
`tf.estimator.SessionRunHook`; `tf.estimator` is gone since TF 2.16, so `import tensorflow_gan`
fails on TF 2.21 (tensorflow/gan#55). The eval modules themselves need only TensorFlow and
TensorFlow Probability, so they are loaded here by file path, under stub parent packages, and the
package `__init__` never runs. Nothing else in the project touches tensorflow_gan.
"""

import importlib.util
import os
import sys
import types

_MODULE = None


def classifier_metrics():
  """tensorflow_gan.python.eval.classifier_metrics, loaded without the package `__init__`."""
  global _MODULE
  if _MODULE is not None:
    return _MODULE
  import tensorflow_probability  # pylint: disable=g-import-not-at-top,unused-import (sets tf.compat)
  spec = importlib.util.find_spec("tensorflow_gan")
  if spec is None or not spec.submodule_search_locations:
    raise ImportError("tensorflow-gan is not installed (pip install -r requirements.txt)")
  root = list(spec.submodule_search_locations)[0]
  parents = ("tensorflow_gan", "tensorflow_gan.python", "tensorflow_gan.python.eval")
  for i, name in enumerate(parents):
    if name not in sys.modules:
      stub = types.ModuleType(name)
      stub.__path__ = [os.path.join(root, *name.split(".")[1:])]
      sys.modules[name] = stub
  for name in ("eval_utils", "classifier_metrics"):
    full = f"tensorflow_gan.python.eval.{name}"
    if full not in sys.modules:
      path = os.path.join(root, "python", "eval", f"{name}.py")
      module_spec = importlib.util.spec_from_file_location(full, path)
      module = importlib.util.module_from_spec(module_spec)
      sys.modules[full] = module
      module_spec.loader.exec_module(module)
      setattr(sys.modules["tensorflow_gan.python.eval"], name, module)
  _MODULE = sys.modules["tensorflow_gan.python.eval.classifier_metrics"]
  return _MODULE


def trace_sqrt_product(sigma1, sigma2):
  """Tr(sqrt(sigma1 @ sigma2)) in float64 by TF-GAN's symmetric-SVD route."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cm = classifier_metrics()
  return float(cm.trace_sqrt_product(tf.constant(sigma1, tf.float64),
                                     tf.constant(sigma2, tf.float64)))


def frechet_distance_from_activations(act1, act2):
  """TF-GAN's `frechet_classifier_distance_from_activations` (float64)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cm = classifier_metrics()
  return float(cm.frechet_classifier_distance_from_activations(
      tf.constant(act1, tf.float64), tf.constant(act2, tf.float64)))


def classifier_score_from_logits(logits):
  """TF-GAN's classifier score (one split) of `[N, classes]` logits, float64."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  return float(classifier_metrics().classifier_score_from_logits(tf.constant(logits, tf.float64)))
