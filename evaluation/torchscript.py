"""Reads the weights and attributes of a TorchScript archive without PyTorch.

A TorchScript file (`torch.jit.save`) is a zip holding `<root>/data.pkl` (the module tree,
pickled with persistent ids that point at raw tensor storages `<root>/data/<key>`),
`<root>/code/` (the TorchScript source) and `<root>/constants.pkl`. This reader resolves only
what a module tree of plain tensors needs (`torch._utils._rebuild_tensor_v2`, typed storages,
`torch.jit._pickle.build_*list`, `collections.OrderedDict`); every TorchScript class becomes a
plain attribute holder. Nothing else is importable from the pickle, so a file cannot run code.
"""

import zipfile

from msmt_tf.interop import torch_io

__all__ = ["TorchScriptError", "read_module", "flatten"]


class TorchScriptError(torch_io.TorchFileError):
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


def _int_list(values):
  return list(values)


def read_module(path):
  """The root module of the TorchScript archive `path` (attributes: sub-modules, numpy arrays,
  ints, lists). Raises `TorchScriptError` naming the file when it is not one.

  The pickle is read by the restricted unpickler of `msmt_tf.interop.torch_io` (tensors,
  storages, OrderedDict), which here also admits `torch.jit._pickle.build_*list` and turns every
  `__torch__` class into a plain attribute holder; nothing else is importable."""
  try:
    archive = zipfile.ZipFile(path)
  except (OSError, zipfile.BadZipFile) as e:
    raise TorchScriptError(f"{path} is not a TorchScript archive (not a readable zip: {e})") from e
  with archive:
    names = [n for n in archive.namelist() if n.endswith("/data.pkl")]
    if not names:
      raise TorchScriptError(f"{path} is a zip without data.pkl: not a TorchScript archive")
    prefix = torch_io.zip_prefix(archive, path, TorchScriptError)
    if not any(n.startswith(prefix + "code/") for n in archive.namelist()):
      raise TorchScriptError(f"{path} has no code/ folder: a torch.save checkpoint, not a "
                             "TorchScript archive (torch.jit.save)")
    classes = {}

    def script_globals(module, name):
      if module == "torch.jit._pickle" and name.startswith("build_") and name.endswith("list"):
        return _int_list
      if module.startswith("__torch__"):
        key = f"{module}.{name}"
        if key not in classes:
          classes[key] = type(name, (ScriptModule,), {"_kind": key})
        return classes[key]
      return None

    return torch_io.read_zip_pickle(archive, path, prefix, script_globals, TorchScriptError,
                                    scalar_arrays=False)


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
