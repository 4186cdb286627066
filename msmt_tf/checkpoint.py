"""Atomic training checkpoints holding every piece of state a resumed run needs.

A checkpoint `<run_dir>/checkpoints/ckpt-<step>.npz` stores, per named group (generator,
generator_ema, each discriminator, each optimizer, the noise RNG), the group's variables in
creation order, plus a JSON record (step, data position, config). It is written to a temporary
file and renamed, so a crash never leaves a half-written checkpoint; the newest `keep` are kept.
Works for any Keras backend (values go through numpy).
"""

import glob
import json
import os
import re

import keras
import numpy as np

from msmt_tf import fileio

__all__ = ["state_groups", "save", "restore", "latest", "list_checkpoints", "CheckpointError"]

_NAME = re.compile(r"ckpt-(\d+)\.npz$")


class CheckpointError(ValueError):
  pass


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


def latest(run_dir):
  """(step, path) of the newest checkpoint, or None."""
  found = list_checkpoints(run_dir)
  return found[-1] if found else None


def save(run_dir, step, groups, record, keep=3):
  """Writes checkpoint `step` atomically and deletes all but the newest `keep`."""
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
  return path


def restore(path, groups):
  """Assigns the values in `path` to `groups`; returns the checkpoint's record.

  Raises:
    CheckpointError: the file is unreadable or was written for a different model.
  """
  try:
    data = np.load(path)
    meta = json.loads(bytes(data["__meta__"]).decode())
  except Exception as e:  # zipfile / pickle / json errors of a damaged file
    raise CheckpointError(f"cannot read checkpoint {path}: {e}") from e
  with data:
    for name, variables in groups.items():
      saved = meta["shapes"].get(name)
      if saved is None or len(saved) != len(variables):
        raise CheckpointError(
            f"{path} does not match this model: group {name!r} has "
            f"{0 if saved is None else len(saved)} variables in the checkpoint, "
            f"{len(variables)} in the model (were the model flags changed?)")
      for i, v in enumerate(variables):
        value = data[f"{name}/{i}"]
        if tuple(value.shape) != tuple(v.shape):
          raise CheckpointError(
              f"{path} does not match this model: {saved[i][0]} has shape {list(value.shape)} "
              f"in the checkpoint, {list(v.shape)} in the model (were the model flags changed?)")
        v.assign(value)
  return meta
