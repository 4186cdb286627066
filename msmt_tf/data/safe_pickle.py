"""Restricted reading of the AttnGAN metadata pickles.

`captions.pickle`, `filenames.pickle` and `class_info.pickle` come from the internet. A normal
`pickle.load` runs whatever callable the file names, so these files are read with an unpickler
that resolves no global at all, apart from the one that protocol-2 pickles written by Python 3 use
to spell `bytes` (`_codecs.encode(text, "latin1")`, checked to be exactly that). After loading, the
object tree is walked and anything other than list, tuple, dict, int, float, str, bytes, bool or
None is refused. Python-2 pickles are read with `encoding="latin1"`, as AttnGAN's own code does.
"""

import codecs
import io
import os
import pickle

from msmt_tf.data.errors import UnsafePickleError

__all__ = ["safe_load_pickle", "safe_loads", "ALLOWED_TYPES"]

ALLOWED_TYPES = (list, tuple, dict, int, float, str, bytes, bool, type(None))


def _latin1_bytes(text, encoding="latin1"):
  if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
    raise pickle.UnpicklingError(
        f"_codecs.encode called with unexpected arguments ({type(text).__name__}, {encoding!r})")
  return codecs.encode(text, "latin1")


class _RestrictedUnpickler(pickle.Unpickler):

  def __init__(self, file, source):
    super().__init__(file, encoding="latin1")
    self._source = source

  def find_class(self, module, name):
    if (module, name) == ("_codecs", "encode"):
      return _latin1_bytes
    raise UnsafePickleError(
        f"{self._source}: refused to load: the pickle names {module}.{name}, but a dataset pickle "
        "may only hold lists, tuples, dicts, ints, floats, strings and bytes. The file is not an "
        "AttnGAN metadata pickle or it was tampered with; re-create it from the dataset's text/ "
        "folder (delete it and the loader rebuilds captions.pickle).")

  def persistent_load(self, pid):
    raise UnsafePickleError(f"{self._source}: refused to load: the pickle uses persistent ids")


def _check_tree(obj, source):
  stack = [obj]
  while stack:
    item = stack.pop()
    if type(item) not in ALLOWED_TYPES:
      raise UnsafePickleError(
          f"{source}: refused to load: it holds a {type(item).__name__}, but a dataset pickle may "
          "only hold lists, tuples, dicts, ints, floats, strings and bytes.")
    if isinstance(item, (list, tuple)):
      stack.extend(item)
    elif isinstance(item, dict):
      stack.extend(item.keys())
      stack.extend(item.values())


def safe_loads(data, source="<bytes>"):
  """Loads a pickle from bytes with the restrictions described in the module docstring."""
  try:
    obj = _RestrictedUnpickler(io.BytesIO(data), source).load()
  except UnsafePickleError:
    raise
  except Exception as e:  # Truncated or not a pickle at all.
    raise UnsafePickleError(f"{source}: not a readable pickle ({type(e).__name__}: {e})") from e
  _check_tree(obj, source)
  return obj


def safe_load_pickle(path):
  """Reads `path` with the restricted unpickler.

  Raises:
    DatasetError: the file does not exist.
    UnsafePickleError: the file is not a plain-data pickle.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    from msmt_tf.data.errors import DatasetError
    raise DatasetError(f"missing file: {path}")
  with open(path, "rb") as f:
    return safe_loads(f.read(), source=path)
