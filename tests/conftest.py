"""Shared fixtures: small datasets made by the project itself (nothing is downloaded)."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

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
# 2 cores, 2026-11-27, with another job beside it: 2,053 s in all, so 1,027 s per worker at best,
# and the run took 1,135 s). CI gives each worker whole files (loadfile), in collection order,
# which xdist by default reorders by test count: the longest file (test_train.py, 30% of the
# total) could start late and finish alone. Handing out the longest files first
# (longest-processing-time-first) lets the short ones fill the gap at the end. A file not listed
# goes last; the weights need only be roughly right.
_FILE_SECONDS = {
    "test_train.py": 626, "test_evaluation.py": 246, "test_models.py": 245,
    "test_distribute.py": 231, "test_bench.py": 209, "test_export.py": 152,
    "test_distribute_tf.py": 118, "test_torchvision_inception.py": 106, "test_build.py": 45,
    "test_import_dmgan.py": 38, "test_layers.py": 14, "test_import_torch.py": 12,
    "test_data.py": 11,
}


def pytest_collection_modifyitems(items):
  """Longest test files first; a file's own tests keep their order (a stable sort)."""
  items.sort(key=lambda item: -_FILE_SECONDS.get(item.path.name, 0))
