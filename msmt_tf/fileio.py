"""Atomic file writes: write to a temporary file beside the target, then rename over it.

A crash mid-write never leaves a truncated checkpoint, model, image or metadata file, and an
existing file is only replaced by a complete new one. The file gets the mode a plain open()
would give it (0666 less the umask).
"""

import contextlib
import hashlib
import os
import tempfile

__all__ = ["write_aside", "removed_on_failure", "atomic_write", "atomic_write_bytes",
           "file_digest"]


def file_digest(path, algorithm="sha256"):
  """Hex digest of a file's bytes, read in 1 MB chunks (weights files are large)."""
  h = hashlib.new(algorithm)
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def _umask():
  """The process's umask. Linux reports it in /proc/self/status; elsewhere it is read by setting
  it and setting it back, which is process-wide (a file another thread creates in between gets
  the temporary mask), so that is done once and remembered."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("Umask:"):
          return int(line.split()[1], 8)
  except (OSError, ValueError, IndexError):
    pass
  global _UMASK
  if _UMASK is None:
    _UMASK = os.umask(0o022)
    os.umask(_UMASK)
  return _UMASK


_UMASK = None


def write_aside(path, write_fn):
  """Calls `write_fn(tmp_path)` for a hidden temporary file beside `path` and returns its name,
  with the mode open() would give: the caller moves it into place (`os.replace`), possibly
  together with others. The temporary file has the same extension as `path` (some writers,
  e.g. Keras, require it) and is removed if `write_fn` fails.
  """
  folder = os.path.dirname(os.path.abspath(path))
  base = os.path.basename(path)
  fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{base}.", suffix=os.path.splitext(base)[1])
  os.close(fd)
  with removed_on_failure([tmp]):
    write_fn(tmp)
    # mkstemp makes the file 0600; give it the mode open() would (0666 less the umask), so
    # samples, checkpoints and records are as readable as any other file the user writes.
    try:
      os.chmod(tmp, 0o666 & ~_umask())
    except OSError:  # a filesystem without modes (some network and FAT mounts): as it is
      pass
  return tmp


def atomic_write(path, write_fn):
  """Calls `write_fn(tmp_path)` and renames the result to `path` (`write_aside`)."""
  tmp = write_aside(path, write_fn)
  with removed_on_failure([tmp]):
    os.replace(tmp, path)
  return path


@contextlib.contextmanager
def removed_on_failure(tmps):
  """Removes the temporary files in the list `tmps` (which the block may extend) when the block
  raises (Ctrl-C included), then re-raises."""
  try:
    yield
  except BaseException:
    for tmp in tmps:
      if os.path.exists(tmp):
        os.remove(tmp)
    raise


def atomic_write_bytes(path, data):
  def write(tmp):
    with open(tmp, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
  return atomic_write(path, write)
