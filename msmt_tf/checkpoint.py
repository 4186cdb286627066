"""Atomic training checkpoints holding every piece of state a resumed run needs.

A checkpoint `<run_dir>/checkpoints/ckpt-<step>.npz` stores, per named group (generator,
generator_ema, each discriminator, each optimizer, the noise RNG), the group's variables in
creation order, plus a JSON record (step, data position, config). It is written to a temporary
file and renamed, so a crash never leaves a half-written checkpoint; the newest `keep` are kept.
Works for any Keras backend (values go through numpy).

A checkpoint can still be damaged after it was written (a full disk during a copy, a truncated
transfer, a bad sector). `restore_newest` then restores the newest checkpoint that reads, and
renames each damaged newer one aside to `ckpt-<step>.npz.damaged` (kept for inspection, never
deleted; out of the rotation, so it can neither be picked again nor push good checkpoints out).
"""

import glob
import json
import os
import re
import sys

import keras
import numpy as np

from msmt_tf import fileio

__all__ = ["state_groups", "save", "restore", "restore_newest", "newest_readable", "verify",
           "set_aside", "latest", "list_checkpoints",
           "CheckpointError", "DamagedCheckpointError"]

_NAME = re.compile(r"ckpt-(\d+)\.npz$")


class CheckpointError(ValueError):
  pass


class DamagedCheckpointError(CheckpointError):
  """The file cannot be read (truncated, not a zip archive, bad CRC, bad record)."""


def state_groups(gan):
  """Ordered {group name: list of variables} of a compiled MSMTGAN."""
  groups = {"generator": gan.generator.variables, "generator_ema": gan.generator_ema.variables}
  for k, d in enumerate(gan.discriminators):
    groups[f"discriminator{k}"] = d.variables
  groups["g_optimizer"] = gan.g_optimizer.variables
  for k, opt in enumerate(gan.d_optimizers):
    groups[f"d_optimizer{k}"] = opt.variables
  groups["noise_seed"] = [gan.noise_seed.state]
  return groups


def list_checkpoints(run_dir):
  paths = glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.npz"))
  return sorted((int(_NAME.search(p).group(1)), p) for p in paths if _NAME.search(p))


def list_set_aside(run_dir):
  """The damaged checkpoints renamed aside (`ckpt-<step>.npz.damaged[.n]`), sorted."""
  return sorted(glob.glob(os.path.join(run_dir, "checkpoints", "ckpt-*.npz.damaged*")))


def latest(run_dir):
  """(step, path) of the newest checkpoint, or None."""
  found = list_checkpoints(run_dir)
  return found[-1] if found else None


def save(run_dir, step, groups, record, keep=3):
  """Writes checkpoint `step` atomically and deletes all but the newest `keep`, and the hidden
  partial files of checkpoints up to `step` whose write was killed (SIGKILL, power loss: a
  Python exception removes its own), which would otherwise stay, as large as a checkpoint."""
  folder = os.path.join(run_dir, "checkpoints")
  os.makedirs(folder, exist_ok=True)
  arrays = {}
  shapes = {}
  for name, variables in groups.items():
    shapes[name] = []
    for i, v in enumerate(variables):
      arrays[f"{name}/{i}"] = keras.ops.convert_to_numpy(v)
      shapes[name].append([v.path, list(v.shape)])
  meta = dict(record, step=int(step), shapes=shapes)
  arrays["__meta__"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
  path = os.path.join(folder, f"ckpt-{int(step):08d}.npz")

  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, **arrays)
      f.flush()
      os.fsync(f.fileno())

  fileio.atomic_write(path, write)
  for _, old in list_checkpoints(run_dir)[:-keep] if keep > 0 else []:
    os.remove(old)
  for partial in glob.glob(os.path.join(folder, ".ckpt-*.npz.*.npz")):
    found = re.fullmatch(r"\.ckpt-(\d+)\.npz\..+\.npz", os.path.basename(partial))
    if found and int(found.group(1)) <= int(step):
      try:
        os.remove(partial)
      except OSError:  # gone meanwhile
        pass
  return path


def _load(path, groups=None):
  """(record, {group: [arrays]}) of checkpoint `path`: the arrays of `groups`, or, when None,
  every array of the file (each decompressed and CRC-checked) without keeping them.

  Raises:
    DamagedCheckpointError: the file cannot be read.
  """
  try:
    with np.load(path) as data:
      meta = json.loads(bytes(data["__meta__"]).decode())
      if groups is None:
        for key in data.files:
          data[key]  # pylint: disable=pointless-statement  (reads and checks the CRC)
        return meta, {}
      return meta, {name: [data[f"{name}/{i}"]
                           for i in range(len(meta["shapes"].get(name, [])))]
                    for name in groups}
  except Exception as e:  # zipfile / zlib / pickle / json / key errors of a damaged file
    raise DamagedCheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def _read(path, groups):
  """{group: [arrays]} and the record of checkpoint `path`, checked against `groups` before
  anything is assigned (a damaged file never leaves the model half restored)."""
  meta, arrays = _load(path, groups)
  for name, variables in groups.items():
    saved = meta["shapes"].get(name)
    if saved is None or len(saved) != len(variables):
      raise CheckpointError(
          f"{path} does not match this model: group {name!r} has "
          f"{0 if saved is None else len(saved)} variables in the checkpoint, "
          f"{len(variables)} in the model (were the model flags changed?)")
    for i, (v, value) in enumerate(zip(variables, arrays[name])):
      if tuple(value.shape) != tuple(v.shape):
        raise CheckpointError(
            f"{path} does not match this model: {saved[i][0]} has shape {list(value.shape)} "
            f"in the checkpoint, {list(v.shape)} in the model (were the model flags changed?)")
  return arrays, meta


def restore(path, groups):
  """Assigns the values in `path` to `groups`; returns the checkpoint's record.

  Raises:
    DamagedCheckpointError: the file is unreadable (nothing was assigned).
    CheckpointError: it was written for a different model (nothing was assigned).
  """
  arrays, meta = _read(path, groups)
  for name, variables in groups.items():
    for v, value in zip(variables, arrays[name]):
      v.assign(value)
  return meta


def set_aside(path):
  """Renames a damaged checkpoint to `<path>.damaged` (`.damaged.1`, ... if taken); returns the
  new path. The file is kept, never deleted."""
  target, n = path + ".damaged", 0
  while os.path.exists(target):
    n += 1
    target = f"{path}.damaged.{n}"
  os.replace(path, target)
  return target


def restore_newest(run_dir, groups, report=None, rename=True):
  """Restores the newest checkpoint of `run_dir` that reads; returns (step, path, record), or None
  when the run has no checkpoint.

  Each newer checkpoint that cannot be read is renamed aside (`set_aside`) and reported with
  `report(message)` (default: a warning on stderr). A checkpoint of another model stops the
  search (all of them would mismatch): the CheckpointError is raised. `rename=False` skips
  damaged files without renaming them (the other processes of a multi-process run: process 0
  renames).

  Raises:
    DamagedCheckpointError: every checkpoint is damaged (all renamed aside, listed).
    CheckpointError: the newest readable checkpoint does not match `groups`.
  """
  return _newest(run_dir, lambda path: restore(path, groups), report, rename)


def verify(path):
  """Reads every array of checkpoint `path` (CRC-checked) and returns its record.

  Raises:
    DamagedCheckpointError: the file cannot be read.
  """
  return _load(path)[0]


def read_record(path):
  """The record of checkpoint `path`, reading nothing else (not a check of its arrays).

  Raises:
    DamagedCheckpointError: the record cannot be read.
  """
  try:
    with np.load(path) as data:
      return json.loads(bytes(data["__meta__"]).decode())
  except Exception as e:  # zipfile / zlib / json / key errors of a damaged file
    raise DamagedCheckpointError(f"cannot read checkpoint {path}: {type(e).__name__}: {e}") from e


def newest_readable(run_dir, report=None):
  """(step, path, record) of the newest checkpoint that reads, without a model (damaged newer
  ones are renamed aside and reported, as in `restore_newest`); None when there is none."""
  return _newest(run_dir, verify, report)


def _warn(message):
  print(f"warning: {message}", file=sys.stderr, flush=True)


def _newest(run_dir, load, report, rename=True):
  report = report or _warn
  damaged = []
  for step, path in reversed(list_checkpoints(run_dir)):
    try:
      meta = load(path)
    except DamagedCheckpointError as e:
      aside = set_aside(path) if rename else path
      damaged.append(aside)
      cause = e.__cause__ or e
      report(f"skipped damaged checkpoint {path} ({type(cause).__name__}: {str(cause)[:200]}); "
             f"kept as {aside}")
      continue
    if damaged:
      report(f"using step {step} ({path}), the newest checkpoint that reads")
    return step, path, meta
  if damaged:
    raise DamagedCheckpointError(
        f"no readable checkpoint in {os.path.join(run_dir, 'checkpoints')}: every one is "
        f"damaged (kept as {', '.join(damaged)})")
  return None
