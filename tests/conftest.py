"""Shared fixtures: small datasets made by the project itself (nothing is downloaded)."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # pylint: disable=g-import-not-at-top
import pytest  # pylint: disable=g-import-not-at-top

from msmt_tf.data import shapes  # pylint: disable=g-import-not-at-top


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
  """A small built-in shapes dataset (64x64 images) shared by read-only tests."""
  out = tmp_path_factory.mktemp("shapes") / "data"
  shapes.write_dataset(str(out), num_train=24, num_test=8, seed=3, image_size=64)
  return str(out)


@pytest.fixture(scope="session", autouse=True)
def jax_compilation_cache(tmp_path_factory):
  """The JAX subprocesses of a test session share one persistent XLA compilation cache, every
  compile included (eager Keras ops compile one small program each: a few hundred per process),
  so a second process of the same model (a resumed run, the same step on another test) does not
  compile again. Set JAX_COMPILATION_CACHE_DIR yourself to keep it between sessions."""
  if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = str(tmp_path_factory.mktemp("jax_cache"))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
  return os.environ["JAX_COMPILATION_CACHE_DIR"]


@pytest.fixture(autouse=True)
def seeded_random_state():
  """Every test starts from the same random state (Python's, NumPy's global one, the backend's
  and Keras's), whatever ran before it in its worker. Unseeded initializers (the batch norms'
  gamma, N(1, 0.02)) otherwise drew values that depended on the earlier tests: under `-n 2
  --dist loadfile` on which files a worker had run, so on timing. A bf16 comparison whose
  bound those values decide failed after 4 of 12 other tests (tests/test_layers.py,
  test_up_block_fused_and_reference_agree, now seeded itself). Tests that measure over many
  seeds draw their own."""
  keras.utils.set_random_seed(20261129)


@pytest.fixture
def fresh_shapes_dir(tmp_path):
  """A private copy a test may damage."""
  out = tmp_path / "data"
  shapes.write_dataset(str(out), num_train=12, num_test=4, seed=5, image_size=64)
  return str(out)


def pytest_configure(config):
  if hasattr(config.option, "loadscopereorder"):  # pytest-xdist: keep the order that
    config.option.loadscopereorder = False        # pytest_collection_modifyitems gives
  # Keras 3.15 on numpy 2 warns on every tensor -> array conversion; not ours to fix.
  config.addinivalue_line("filterwarnings",
                          "ignore:__array__ implementation doesn't accept a copy keyword")


# Seconds per test file (`pytest -n 2 --dist loadfile --durations=0`, summed per file; AMD EPYC,
# 2 cores, 2026-11-28, clean clone of e0b2735: 4,384 s in all, so 2,192 s per worker at best, and
# the run took 2,236 s). CI gives each worker whole files (loadfile), in collection order, which
# xdist by default reorders by test count: the longest file (test_train.py, a quarter of the
# total) could start late and finish alone. Handing out the longest files first
# (longest-processing-time-first) lets the short ones fill the gap at the end. A file not listed
# goes last; the weights need only be roughly right.
_FILE_SECONDS = {
    "test_train.py": 1163, "test_models.py": 747, "test_evaluation.py": 566,
    "test_distribute.py": 498, "test_bench.py": 410, "test_distribute_tf.py": 316,
    "test_torchvision_inception.py": 226, "test_export.py": 174, "test_import_dmgan.py": 82,
    "test_build.py": 77, "test_layers.py": 53, "test_import_torch.py": 40, "test_data.py": 31,
}


def pytest_collection_modifyitems(items):
  """Longest test files first; a file's own tests keep their order (a stable sort)."""
  items.sort(key=lambda item: -_FILE_SECONDS.get(item.path.name, 0))
