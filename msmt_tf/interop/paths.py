"""Checks of the importers' command-line paths, made before anything is read or written.

An input (`--text_encoder`, `--image_encoder`, `--netG`) must be a file and an output (`--out`)
a folder or nothing yet; the errors say which it is instead of the operating system's
`[Errno 17] File exists` or a bare "not found".
"""

import os

__all__ = ["WEIGHTS_SUFFIXES", "check_file", "check_out_folder"]

WEIGHTS_SUFFIXES = (".pth", ".pt", ".pkl", ".bin")  # what torch.save files are usually called


def _label(path, flag):
  return f"{flag} {path}" if flag else str(path)


def check_file(path, flag=None, what="PyTorch weights file"):
  """Raises `FileNotFoundError` unless `path` is a file.

  A folder is said to be one, listing up to three of the weights files in it (the argument
  likely meant). `FileNotFoundError` either way, so callers that catch a missing file also catch
  a folder.

  Args:
    path: the path given.
    flag: the flag that gave it ('--netG'), named in the message; None names only the path.
    what: what the file should be, for the message of a missing path.
  """
  path = os.fspath(path)
  if os.path.isdir(path):
    found = sorted(n for n in os.listdir(path) if n.endswith(WEIGHTS_SUFFIXES)
                   and os.path.isfile(os.path.join(path, n)))
    shown = ", ".join(os.path.join(path, n) for n in found[:3])
    hint = (f"; it holds {shown}{f' ... ({len(found)} in all)' if len(found) > 3 else ''}: "
            "pass one of them" if found else f"; it holds no {'/'.join(WEIGHTS_SUFFIXES)} file")
    raise FileNotFoundError(f"{_label(path, flag)} is a folder, not a file: expected a {what}"
                            f"{hint}")
  if not os.path.isfile(path):
    prefix = f"{flag}: " if flag else ""
    raise FileNotFoundError(f"{prefix}{what} not found: {path}")


def check_out_folder(path, flag="--out"):
  """Raises `FileExistsError` when `path` exists and is not a folder (an output folder is
  created when missing, used when it is a folder)."""
  path = os.fspath(path)
  if os.path.exists(path) and not os.path.isdir(path):
    raise FileExistsError(f"{_label(path, flag)} is a file, not a folder: {flag} names the "
                          "folder to write (created when missing); choose a folder path "
                          "(nothing was changed)")
