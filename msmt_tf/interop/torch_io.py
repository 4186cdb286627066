"""Reads `torch.save` files (`.pth`) without PyTorch, and never runs code from them.

Both formats `torch.save` has written are read:

* legacy (PyTorch <= 1.5, every file AttnGAN and DM-GAN released, often pickled under Python 2):
  five pickles (magic number, protocol version 1001, sys info, the object with persistent ids
  `('storage', type, key, location, numel, view)`, the sorted storage keys), then per key an
  8-byte element count and the raw little-endian storage bytes. Python-2 byte strings are
  decoded as latin1.
* zip (PyTorch >= 1.6): `<any prefix>/data.pkl` with persistent ids
  `('storage', type, key, location, numel)`, the storages `<prefix>/data/<key>` and, in newer
  files, `<prefix>/byteorder`.

The unpickler is restricted: it admits only the tensor rebuild functions of `torch._utils`
(`_rebuild_tensor`, `_rebuild_tensor_v2`, `_rebuild_parameter`,
`_rebuild_parameter_with_state`), the typed storage classes (`torch.FloatStorage`, ...) and
`collections.OrderedDict`, each replaced by a local, data-only stand-in. Any other global (a
class, `os.system`, `builtins.eval`, ...) stops the load with `TorchFileError` before it is
looked up, so a `.pth` from the internet cannot run code. Tensor views are bounds-checked
against their storage (offset, strides, rank, size), and the pickle may not set the state of a
stand-in (BUILD), which would bypass those checks. The TorchScript reader (`evaluation/torchscript.py`) shares this
unpickler and the storage decoding.

Tensors come back as numpy arrays (copies, C-contiguous, native byte order); BFloat16 storages
are widened exactly to float32 (numpy has no bfloat16).
"""

import collections
import io
import os
import pickle
import struct
import zipfile

import numpy as np

from msmt_tf.interop import paths

__all__ = ["TorchFileError", "STORAGE_DTYPES", "RestrictedUnpickler", "load", "load_state_dict",
           "read_zip_pickle", "resolve", "zip_prefix", "key_list", "non_finite_keys",
           "check_finite"]


def key_examples(found, arrays):
  """'a, b, ... (of its N keys)': two of the keys `found` in the state dict `arrays`, and how
  many keys it holds, for an error that says what the file looks like."""
  found = list(found)
  more = ", ..." if len(found) > 2 else ""
  return ", ".join(found[:2]) + more + f" (of its {len(arrays)} keys)"


def key_list(keys, limit=12):
  """The first `limit` of `keys` (state-dict keys, for an error message), and how many there are
  in all when that is more."""
  keys = list(keys)
  return ", ".join(keys[:limit]) + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def non_finite_keys(arrays):
  """The keys of `arrays` whose floating-point (or complex) tensor holds a NaN or an Inf.
  Integer and bool tensors (BatchNorm's `num_batches_tracked`) cannot and are not checked."""
  return [k for k, v in arrays.items()
          if np.asarray(v).dtype.kind in "fc" and not np.isfinite(v).all()]


def check_finite(arrays, source, error=None):
  """Raises `error` (default `TorchFileError`) naming `source`, the count and the first few
  keys of the tensors with NaN / Inf values: a diverged or damaged training run's file, whose
  images (all black) or embeddings would be NaN."""
  bad = non_finite_keys(arrays)
  if bad:
    raise (error or TorchFileError)(
        f"{source} has non-finite values (NaN or Inf) in {len(bad)} tensor(s): "
        f"{key_list(bad, 4)} (saved from a diverged run, or damaged?); nothing was imported")

MAGIC_NUMBER = 0x1950a86a20f9469cfc6c
PROTOCOL_VERSION = 1001

# Storage class name -> numpy dtype of its raw little-endian bytes (BFloat16: raw uint16).
STORAGE_DTYPES = {
    "FloatStorage": np.dtype("<f4"), "DoubleStorage": np.dtype("<f8"),
    "HalfStorage": np.dtype("<f2"), "BFloat16Storage": np.dtype("<u2"),
    "LongStorage": np.dtype("<i8"), "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"), "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"), "BoolStorage": np.dtype("?"),
    "ComplexFloatStorage": np.dtype("<c8"), "ComplexDoubleStorage": np.dtype("<c16"),
    "UntypedStorage": np.dtype("u1"),
}

# The admitted globals: (module, name) -> what stands in for them (resolved per unpickler).
_REBUILD_FUNCTIONS = {
    ("torch._utils", "_rebuild_tensor"): "_rebuild_tensor",
    ("torch._utils", "_rebuild_tensor_v2"): "_rebuild_tensor",
    ("torch._utils", "_rebuild_parameter"): "_rebuild_parameter",
    ("torch._utils", "_rebuild_parameter_with_state"): "_rebuild_parameter",
}


_MAX_ELEMENTS = 2**31  # one tensor; stride-0 views could otherwise ask for any size
# More values than the storage holds come only from overlapping (e.g. stride-0, expanded)
# views; beyond this many a tiny file could ask for gigabytes.
_MAX_OVERLAP = 2**26


class TorchFileError(ValueError):
  """A file that is not a readable `torch.save` file, or asks for something not admitted."""


class _Refused(Exception):
  """Raised by the stand-ins below; `RestrictedUnpickler.load` adds the file name."""


class _NoState:
  """Refuses the pickle BUILD opcode, which would otherwise set any slot of a stand-in (a
  negative stride, a foreign buffer) behind the checks of the rebuild functions."""

  __slots__ = ()

  def __setstate__(self, state):
    raise _Refused(f"refusing to set the state of a {type(self).__name__.lstrip('_')} from its "
                   "pickle (nothing was executed)")


class _StorageType(_NoState):
  """Stands in for `torch.<Kind>Storage` inside a pickle (never instantiated by it)."""

  __slots__ = ("name",)

  def __init__(self, name):
    self.name = name

  def __call__(self, *args):
    raise _Refused(f"a pickle may not construct torch.{self.name}")


class _Storage(_NoState):
  """A typed view `[start, start + numel)` of one raw storage; `buffers[key]` once read."""

  __slots__ = ("kind", "key", "start", "numel", "buffers")

  def __init__(self, kind, key, start, numel, buffers):
    self.kind, self.key, self.start, self.numel, self.buffers = kind, key, start, numel, buffers

  @property
  def dtype(self):
    return STORAGE_DTYPES[self.kind]


class _TensorRef(_NoState):
  """A tensor still to be cut out of its storage (the storage may be read after the pickle)."""

  __slots__ = ("storage", "offset", "size", "stride")

  def __init__(self, storage, offset, size, stride):
    self.storage, self.offset, self.size, self.stride = storage, offset, size, stride


def _as_text(value):
  return value.decode("latin1") if isinstance(value, bytes) else value


def _int_tuple(values, what, path):
  try:
    out = tuple(int(v) for v in values)
  except (TypeError, ValueError) as e:
    raise TorchFileError(f"{path}: tensor {what} {values!r} is not a sequence of integers") from e
  if any(v < 0 for v in out):
    raise TorchFileError(f"{path}: negative tensor {what} {out}")
  return out


def _materialize(ref, path, scalar_arrays=True):
  """The numpy array of a `_TensorRef` (bounds-checked against its storage)."""
  storage = ref.storage
  raw = storage.buffers.get(storage.key)
  if raw is None:
    raise TorchFileError(f"{path}: storage {storage.key!r} is referenced but its data is missing")
  if storage.start < 0 or storage.start + storage.numel > raw.size:
    raise TorchFileError(f"{path}: storage view {storage.key!r}[{storage.start}:"
                         f"{storage.start + storage.numel}] exceeds the storage "
                         f"({raw.size} values)")
  root = raw[storage.start:storage.start + storage.numel]
  size, stride, offset = ref.size, ref.stride, ref.offset
  if offset < 0:  # root[offset:] would start from the end and run past it
    raise TorchFileError(f"{path}: negative tensor offset {offset} into storage {storage.key!r}")
  if len(stride) != len(size):
    raise TorchFileError(f"{path}: tensor size {size} and stride {stride} differ in rank")
  if len(size) > 32:  # numpy stops at 64 dimensions; no weight has more than a few
    raise TorchFileError(f"{path}: a tensor of rank {len(size)} (corrupt or hostile file?)")
  count = int(np.prod(size, dtype=np.float64))
  if count > _MAX_ELEMENTS or count > max(root.size, _MAX_OVERLAP):
    raise TorchFileError(f"{path}: a tensor of size {size} ({np.prod(size, dtype=np.float64):.3g} "
                         "values) is implausibly large (corrupt or hostile file?)")
  if 0 in size:
    out = np.zeros(size, root.dtype)
  else:
    last = offset + sum((n - 1) * s for n, s in zip(size, stride))
    if last >= root.size:
      raise TorchFileError(f"{path}: tensor (offset {offset}, size {size}, stride {stride}) "
                           f"reaches past its storage {storage.key!r} of {root.size} values "
                           "(corrupt file?)")
    view = np.lib.stride_tricks.as_strided(root[offset:], shape=size,
                                           strides=[s * root.itemsize for s in stride],
                                           writeable=False)
    out = np.array(view, dtype=root.dtype.newbyteorder("="), order="C")
  if storage.kind == "BFloat16Storage":
    out = (out.astype(np.uint32) << 16).view(np.float32)
  if not size and not scalar_arrays:
    return out[()]
  return out


class RestrictedUnpickler(pickle.Unpickler):
  """Unpickles a `torch.save` / TorchScript object pickle, admitting only tensors.

  Args:
    file: binary file positioned at the pickle.
    path: the file's name, for error messages.
    load_storage: `f(kind, key, numel, view_metadata) -> _Storage` for each persistent id
      (`kind`: storage class name such as 'FloatStorage'; `view_metadata` None or
      `(view_key, offset, numel)`).
    extra_globals: optional `f(module, name) -> object or None`: further admitted globals (the
      TorchScript reader admits its module classes); None refuses.
    error: the exception class raised (a `TorchFileError` subclass).

  `load()` returns the object with tensors still as `_TensorRef`; pass it through `resolve`
  once every storage's data is in the buffers.
  """

  def __init__(self, file, path, load_storage, extra_globals=None, error=TorchFileError):
    super().__init__(file, encoding="latin1")
    self._path, self._load_storage = path, load_storage
    self._extra_globals, self._error = extra_globals, error

  def load(self):
    try:
      return super().load()
    except _Refused as e:
      raise self._error(f"{self._path}: {e}") from None

  def find_class(self, module, name):
    module, name = _as_text(module), _as_text(name)
    if (module, name) in _REBUILD_FUNCTIONS:
      return getattr(self, _REBUILD_FUNCTIONS[(module, name)])
    if module == "torch" and name in STORAGE_DTYPES:
      return _StorageType(name)
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if self._extra_globals is not None:
      found = self._extra_globals(module, name)
      if found is not None:
        return found
    hint = ("; if it is a whole pickled model (torch.save(model)) or holds other Python "
            "objects, load it once with PyTorch and save model.state_dict() instead"
            if name[:1].isupper() and module not in ("builtins", "__builtin__", "os", "posix",
                                                      "nt", "subprocess") else "")
    raise self._error(f"{self._path}: refusing to load {module}.{name} from its pickle: only "
                      f"tensors, storages and OrderedDict are admitted (nothing was executed)"
                      f"{hint}")

  def persistent_load(self, pid):
    if not isinstance(pid, tuple) or not pid or _as_text(pid[0]) != "storage":
      what = _as_text(pid[0]) if isinstance(pid, tuple) and pid else pid
      hint = (" (a whole pickled nn.Module: save and load model.state_dict() instead)"
              if what == "module" else "")
      raise self._error(f"{self._path}: unexpected persistent id {what!r}{hint}")
    if len(pid) == 5:
      (_, kind, key, _, numel), view = pid, None
    elif len(pid) == 6:
      _, kind, key, _, numel, view = pid
    else:
      raise self._error(f"{self._path}: malformed storage id {pid!r}")
    if not isinstance(kind, _StorageType):
      raise self._error(f"{self._path}: storage {key!r} has no storage type ({kind!r})")
    if view is not None:
      if not (isinstance(view, tuple) and len(view) == 3):
        raise self._error(f"{self._path}: malformed storage view {view!r}")
      view = (_as_text(view[0]), int(view[1]), int(view[2]))
    if not isinstance(numel, int) or numel < 0 or (view is not None and min(view[1:]) < 0):
      raise self._error(f"{self._path}: storage {key!r} has a malformed size {numel!r} or view "
                        f"{view!r}")
    return self._load_storage(kind.name, _as_text(key), numel, view)

  def _rebuild_tensor(self, storage, offset, size, stride, *unused):
    if not isinstance(storage, _Storage):
      raise self._error(f"{self._path}: a tensor is rebuilt from {type(storage).__name__}, "
                        "not a storage")
    if not isinstance(offset, int) or offset < 0:
      raise self._error(f"{self._path}: tensor offset {offset!r} is not a non-negative integer")
    return _TensorRef(storage, offset, _int_tuple(size, "size", self._path),
                      _int_tuple(stride, "stride", self._path))

  def _rebuild_parameter(self, data, *unused):
    if not isinstance(data, _TensorRef):
      raise self._error(f"{self._path}: a parameter is rebuilt from {type(data).__name__}, "
                        "not a tensor")
    return data


def resolve(obj, path, scalar_arrays=True):
  """`obj` with every `_TensorRef` replaced by its numpy array (containers and attribute
  holders updated in place; tuples rebuilt); 0-d tensors as 0-d arrays, or as numpy scalars
  when `scalar_arrays` is False."""
  seen = set()

  def walk(x):
    if isinstance(x, _TensorRef):
      return _materialize(x, path, scalar_arrays)
    if isinstance(x, (str, bytes, int, float, complex, bool, type(None), np.ndarray)):
      return x
    if id(x) in seen:
      return x
    seen.add(id(x))
    if isinstance(x, dict):
      for k in list(x):
        x[k] = walk(x[k])
    elif isinstance(x, list):
      x[:] = [walk(v) for v in x]
    elif isinstance(x, tuple):
      return tuple(walk(v) for v in x)
    if hasattr(x, "__dict__") and not isinstance(x, type):
      for k, v in list(vars(x).items()):
        vars(x)[k] = walk(v)
    return x
  return walk(obj)


class _StorageTable:
  """The storages a pickle refers to: root keys with their kind and size, views of them."""

  def __init__(self, path, error):
    self.path, self.error = path, error
    self.roots = {}      # key -> (kind, numel)
    self.views = {}      # view key -> _Storage
    self.buffers = {}    # key -> flat numpy array (filled by the format reader)

  def __call__(self, kind, key, numel, view):
    if key in self.roots and self.roots[key][0] != kind:
      raise self.error(f"{self.path}: storage {key!r} is read as both {self.roots[key][0]} and "
                       f"{kind}")
    self.roots.setdefault(key, (kind, numel))
    if view is None:
      return _Storage(kind, key, 0, self.roots[key][1], self.buffers)
    view_key, offset, view_numel = view
    if view_key not in self.views:
      self.views[view_key] = _Storage(kind, key, offset, view_numel, self.buffers)
    return self.views[view_key]


class _HeaderUnpickler(pickle.Unpickler):
  """For the legacy header pickles: plain values only."""

  def __init__(self, file, path):
    super().__init__(file, encoding="latin1")
    self._path = path

  def find_class(self, module, name):
    raise TorchFileError(f"{self._path}: refusing to load {module}.{name} from its header pickle "
                         "(nothing was executed)")

  def persistent_load(self, pid):
    raise TorchFileError(f"{self._path}: unexpected persistent id in its header pickle")


def _read_legacy(data, path):
  """The object of a legacy-format `torch.save` file held in `data` (bytes)."""
  f = io.BytesIO(data)
  try:
    magic = _HeaderUnpickler(f, path).load()
  except TorchFileError:
    raise
  except Exception as e:
    raise TorchFileError(f"{path} is not a torch.save file (neither a zip archive nor a legacy "
                         f"pickle: {type(e).__name__}: {e})") from e
  if magic != MAGIC_NUMBER:
    raise TorchFileError(f"{path} is not a torch.save file (no legacy magic number, not a zip)")
  try:
    version = _HeaderUnpickler(f, path).load()
    if version != PROTOCOL_VERSION:
      raise TorchFileError(f"{path}: legacy protocol version {version!r}, expected "
                           f"{PROTOCOL_VERSION}")
    sys_info = _HeaderUnpickler(f, path).load()
    if not isinstance(sys_info, dict):
      raise TorchFileError(f"{path}: malformed sys info {sys_info!r}")
    table = _StorageTable(path, TorchFileError)
    obj = RestrictedUnpickler(f, path, table).load()
    keys = _HeaderUnpickler(f, path).load()
  except TorchFileError:
    raise
  except Exception as e:  # truncated or corrupt pickle
    raise TorchFileError(f"{path}: cannot read its pickle ({type(e).__name__}: {e})") from e
  if not isinstance(keys, list):
    raise TorchFileError(f"{path}: malformed storage key list {keys!r}")
  pos = f.tell()
  for key in keys:
    key = _as_text(key)
    if key not in table.roots:
      raise TorchFileError(f"{path}: storage {key!r} has data but no tensor refers to it")
    kind, numel = table.roots[key]
    dtype = STORAGE_DTYPES[kind]
    head = data[pos:pos + 8]
    if len(head) < 8:
      raise TorchFileError(f"{path}: truncated before the data of storage {key!r}")
    count = struct.unpack("<q", head)[0]
    if count != numel and struct.unpack(">q", head)[0] == numel:  # a big-endian writer
      count, dtype = numel, dtype.newbyteorder(">")
    if count != numel:
      raise TorchFileError(f"{path}: storage {key!r} holds {count} values, its tensors say "
                           f"{numel} (corrupt file?)")
    pos += 8
    end = pos + numel * dtype.itemsize
    if end > len(data):
      raise TorchFileError(f"{path}: storage {key!r} is truncated ({len(data) - pos} of "
                           f"{numel * dtype.itemsize} bytes; incomplete download?)")
    table.buffers[key] = np.frombuffer(data, dtype, count=numel, offset=pos)
    pos = end
  missing = sorted(set(table.roots) - set(table.buffers))
  if missing:
    raise TorchFileError(f"{path}: no data for storages {missing} (truncated file?)")
  return resolve(obj, path)


def zip_prefix(archive, path, error=TorchFileError):
  """The folder `<prefix>/` of the archive's top-level `data.pkl`."""
  names = [n for n in archive.namelist()
           if n.endswith("/data.pkl") and n.count("/") == 1]
  if len(names) != 1:
    raise error(f"{path} is a zip without exactly one <name>/data.pkl ({len(names)} found): not "
                "a torch.save archive")
  return names[0][:-len("data.pkl")]


def read_zip_pickle(archive, path, prefix, extra_globals=None, error=TorchFileError,
                    scalar_arrays=True):
  """The object pickled in `<prefix>data.pkl` of an open torch zip archive, tensors resolved to
  numpy arrays (shared by `torch.save` zip files and TorchScript archives)."""
  names = set(archive.namelist())
  big = False
  if prefix + "byteorder" in names:
    order = archive.read(prefix + "byteorder").decode("ascii", "replace").strip()
    if order not in ("little", "big"):
      raise error(f"{path}: unknown byteorder {order!r}")
    big = order == "big"
  table = _StorageTable(path, error)
  try:
    with archive.open(prefix + "data.pkl") as f:
      obj = RestrictedUnpickler(io.BytesIO(f.read()), path, table, extra_globals, error).load()
  except TorchFileError:
    raise
  except Exception as e:  # truncated or corrupt pickle / zip member
    raise error(f"{path}: cannot read its pickle ({type(e).__name__}: {e})") from e
  for key, (kind, numel) in table.roots.items():
    member = f"{prefix}data/{key}"
    if member not in names:
      raise error(f"{path}: storage {member} is missing from the archive")
    dtype = STORAGE_DTYPES[kind]
    if big:
      dtype = dtype.newbyteorder(">")
    try:
      with archive.open(member) as f:  # no more than the storage needs (a bomb stays unread)
        raw = f.read(numel * dtype.itemsize)
    except Exception as e:  # bad CRC, truncated member
      raise error(f"{path}: cannot read {member} ({type(e).__name__}: {e})") from e
    if len(raw) < numel * dtype.itemsize:
      raise error(f"{path}: storage {key} holds {len(raw) // dtype.itemsize} values, {numel} "
                  "expected (truncated file?)")
    table.buffers[key] = np.frombuffer(raw, dtype, count=numel)
  return resolve(obj, path, scalar_arrays)


def load(path):
  """The object saved by `torch.save` in `path` (either format), tensors as numpy arrays.

  Raises:
    FileNotFoundError: no such file, or a folder (said to be one).
    TorchFileError: not a `torch.save` file, corrupt or truncated, or its pickle asks for a
      global other than tensors, storages and OrderedDict (refused before anything runs).
  """
  path = os.fspath(path)
  paths.check_file(path)
  with open(path, "rb") as f:
    data = f.read()
  if data[:4] == b"PK\x03\x04":  # what torch itself checks (a zip's first local header)
    try:
      archive = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, OSError) as e:
      raise TorchFileError(f"{path}: a damaged zip archive ({e}; incomplete download?)") from e
    with archive:
      other = _other_format(archive.namelist())
      if other:
        raise TorchFileError(f"{path} is {other}")
      prefix = zip_prefix(archive, path)
      if any(n.startswith(prefix + "code/") for n in archive.namelist()):
        raise TorchFileError(f"{path} is a TorchScript archive (torch.jit.save), not a "
                             "torch.save checkpoint")
      return read_zip_pickle(archive, path, prefix)
  if not data:
    raise TorchFileError(f"{path} is empty (0 bytes): an interrupted download or copy?")
  if data[:6] == b"\x93NUMPY":
    raise TorchFileError(f"{path} is a numpy .npy array file, not a torch.save checkpoint: the "
                         "importers read PyTorch's .pth files")
  if data[:8] == b"\x89HDF\r\n\x1a\n":
    raise TorchFileError(f"{path} is an HDF5 file (Keras .h5 weights?), not a torch.save "
                         "checkpoint: the importers read PyTorch's .pth files")
  if data[257:262] == b"ustar":
    raise TorchFileError(f"{path}: the tar format of PyTorch < 0.1.10 is not supported; "
                         "re-save it with torch.save")
  return _read_legacy(data, path)


def _other_format(names):
  """What a zip that is not a torch.save archive is, where it is one of the files a user of this
  project has at hand (and could pass by mistake), else None."""
  names = set(names)
  if {"config.json", "model.weights.h5"} <= names:
    return ("a Keras model file (.keras), not a torch.save checkpoint: msmt_tf's own models "
            "are used as they are (a run's generator_ema.keras, the encoders in --damsm_dir); "
            "the importers read PyTorch's .pth files")
  if names and all(n.endswith(".npy") for n in names):
    if "__meta__.npy" in names:
      return ("an msmt_tf training checkpoint (ckpt-*.npz), not a torch.save checkpoint: "
              "continue it with msmt_tf.train --resume, or sample and export its run with "
              "--run_dir; the importers read PyTorch's .pth files")
    return ("a numpy .npz archive, not a torch.save checkpoint: the importers read PyTorch's "
            ".pth files")
  return None


_WRAPPERS = ("state_dict", "model")
_METADATA = (str, bytes, int, float, bool, type(None))


def load_state_dict(path, anchor=None):
  """The state dict in the `torch.save` file `path`, as `OrderedDict[str, numpy.ndarray]`.

  Unwraps `{'state_dict': ...}` / `{'model': ...}` checkpoints, flattens nested dicts (and
  lists) with dotted keys, drops plain metadata values (epoch numbers, strings), and strips the
  `module.` prefix `nn.DataParallel` puts on every key. `anchor`: a key the wanted model always
  has (`encoder.weight` for AttnGAN's text encoder, ...); in a checkpoint of several objects
  (`{'netG': state_dict, 'optimizerG': ...}`) where it is not at the top but under exactly one
  key, the state dict under that key (its own `module.` prefix stripped).

  Raises:
    FileNotFoundError: no such file.
    TorchFileError: see `load`; also when the file holds no dict of tensors.
  """
  obj = load(path)
  while isinstance(obj, dict):
    inner = next((obj[k] for k in _WRAPPERS if isinstance(obj.get(k), dict)), None)
    if inner is None:
      break
    obj = inner
  if not isinstance(obj, dict):
    raise TorchFileError(f"{path} holds a {type(obj).__name__}, not a state dict of tensors")
  out = collections.OrderedDict()

  def flatten(d, prefix):
    for key, value in d.items():
      name = prefix + _as_text(key) if isinstance(key, (str, bytes)) else f"{prefix}{key}"
      if isinstance(value, np.ndarray):
        out[name] = value
      elif isinstance(value, dict):
        flatten(value, name + ".")
      elif isinstance(value, (list, tuple)):  # an optimizer's param_groups, ...
        flatten(dict(enumerate(value)), name + ".")
      elif not isinstance(value, _METADATA):
        raise TorchFileError(f"{path}: entry {name!r} is a {type(value).__name__}, not a tensor")
  flatten(obj, "")
  if not out:
    raise TorchFileError(f"{path} holds no tensors (keys: {list(obj)[:10]})")
  out = _strip_prefix(out, "module.")
  if anchor and anchor not in out:
    # An owner is one top-level key ('netG.'), or one with its own DataParallel 'module.'.
    owners = sorted({k[:-len(anchor)] for k in out if k.endswith("." + anchor)
                     and k[:-len(anchor)].removesuffix("module.").count(".") == 1})
    if len(owners) == 1:  # {'netG': state_dict, 'optimizerG': ...}: the model's entry
      out = _strip_prefix(collections.OrderedDict(
          (k[len(owners[0]):], v) for k, v in out.items() if k.startswith(owners[0])), "module.")
  return out


def _strip_prefix(arrays, prefix):
  """`arrays` without `prefix` on its keys, if every key has it."""
  if all(k.startswith(prefix) for k in arrays):
    return collections.OrderedDict((k[len(prefix):], v) for k, v in arrays.items())
  return arrays
