"""Reads the weights and attributes of a TorchScript archive without PyTorch.

A TorchScript file (`torch.jit.save`) is a zip holding `<root>/data.pkl` (the module tree,
pickled with persistent ids that point at raw tensor storages `<root>/data/<key>`),
`<root>/code/` (the TorchScript source) and `<root>/constants.pkl`. This reader resolves only
what a module tree of plain tensors needs (`torch._utils._rebuild_tensor_v2`, typed storages,
`torch.jit._pickle.build_*list`, `collections.OrderedDict`); every TorchScript class becomes a
plain attribute holder. Nothing else is importable from the pickle, so a file cannot run code.
"""

import collections
import pickle
import zipfile

import numpy as np

__all__ = ["TorchScriptError", "read_module", "flatten"]

_STORAGE_DTYPES = {
    "FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
    "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
    "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_,
}


class TorchScriptError(ValueError):
  pass


class ScriptModule:
  """Attributes of one TorchScript module (`_kind` is its TorchScript class name)."""

  _kind = "?"

  def __init__(self, *args):
    self._args = args

  def __setstate__(self, state):
    if isinstance(state, dict):
      self.__dict__.update(state)
    else:
      self.__dict__["_state"] = state

  def __repr__(self):
    return f"<{self._kind}>"


def _rebuild_tensor(storage, offset, size, stride, *unused):
  size, stride = tuple(size), tuple(stride)
  if not size:
    return storage[offset]
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                         strides=[s * storage.itemsize for s in stride])
  return np.array(view)


def _int_list(values):
  return list(values)


def read_module(path):
  """The root module of the TorchScript archive `path` (attributes: sub-modules, numpy arrays,
  ints, lists). Raises `TorchScriptError` naming the file when it is not one."""
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise TorchScriptError(f"{path} is not a TorchScript archive (not a readable zip: {e})") from e
  with archive:
    names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if not names:
      raise TorchScriptError(f"{path} is a zip without data.pkl: not a TorchScript archive")
    prefix = names[0][:-len("data.pkl")]
    if not any(n.startswith(prefix + "code/") for n in archive.namelist()):
      raise TorchScriptError(f"{path} has no code/ folder: a torch.save checkpoint, not a "
                             "TorchScript archive (torch.jit.save)")
    classes = {}

    class _Unpickler(pickle.Unpickler):

      def find_class(self, module, name):
        if (module, name) == ("torch._utils", "_rebuild_tensor_v2"):
          return _rebuild_tensor
        if module == "torch" and name in _STORAGE_DTYPES:
          return name
        if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
          return _int_list
        if (module, name) == ("collections", "OrderedDict"):
          return collections.OrderedDict
        if module.startswith("__torch__"):
          key = f"{module}.{name}"
          if key not in classes:
            classes[key] = type(name, (ScriptModule,), {"_kind": key})
          return classes[key]
        raise TorchScriptError(f"{path}: refusing to load {module}.{name} from its pickle")

      def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
          raise TorchScriptError(f"{path}: unexpected persistent id {pid!r}")
        _, kind, key, _, numel = pid
        raw = archive.read(f"{prefix}data/{key}")
        data = np.frombuffer(raw, _STORAGE_DTYPES[kind])
        if data.size < numel:
          raise TorchScriptError(f"{path}: storage {key} holds {data.size} values, {numel} "
                                 "expected (truncated file?)")
        return data[:numel].copy()

    try:
      with archive.open(names[0]) as f:
        return _Unpickler(f).load()
    except TorchScriptError:
      raise
    except Exception as e:  # truncated or corrupt pickle / zip member
      raise TorchScriptError(f"{path}: cannot read its module pickle ({type(e).__name__}: "
                             f"{e})") from e


def flatten(module, prefix=""):
  """{'a.b.weight': array or attribute value} for every attribute below `module`."""
  out = {}
  for key, value in vars(module).items():
    if key.startswith("_") or key == "training":
      continue
    if isinstance(value, ScriptModule):
      out.update(flatten(value, f"{prefix}{key}."))
    else:
      out[prefix + key] = value
  return out
