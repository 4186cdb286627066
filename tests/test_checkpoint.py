"""Checkpoint files: the newest readable one is used, damaged ones are set aside and kept."""

import os
import zipfile

import keras
import numpy as np
import pytest

from msmt_tf import checkpoint


def _groups(value):
  return {"generator": [keras.Variable(np.full((3, 4), value, np.float32), name="w"),
                        keras.Variable(np.full((5,), value, np.float32), name="b")]}


def _write_run(run_dir, steps=(1, 2, 3)):
  for step in steps:
    checkpoint.save(run_dir, step, _groups(float(step)), {"note": step}, keep=5)
  return dict(checkpoint.list_checkpoints(run_dir))


def _truncate(path):
  with open(path, "rb") as f:
    content = f.read()
  with open(path, "wb") as f:
    f.write(content[:len(content) // 2])
  return content[:len(content) // 2]


def _flip_array_byte(path, member):
  """Damages one array's stored bytes inside an intact zip (the CRC no longer matches)."""
  with zipfile.ZipFile(path) as z:
    info = z.getinfo(member)
  with open(path, "r+b") as f:
    f.seek(info.header_offset + 30 + len(info.filename) + len(info.extra) + info.file_size - 1)
    byte = f.read(1)
    f.seek(-1, os.SEEK_CUR)
    f.write(bytes([byte[0] ^ 0xFF]))


def test_truncated_newest_checkpoint_is_skipped_and_kept(tmp_path):
  paths = _write_run(str(tmp_path))
  damaged = _truncate(paths[3])
  groups = _groups(0.0)
  said = []
  step, path, meta = checkpoint.restore_newest(str(tmp_path), groups, report=said.append)
  assert (step, path, meta["note"]) == (2, paths[2], 2)
  np.testing.assert_array_equal(groups["generator"][0].numpy(), np.full((3, 4), 2.0))
  assert not os.path.exists(paths[3])
  with open(paths[3] + ".damaged", "rb") as f:
    assert f.read() == damaged
  assert said[0].startswith(f"skipped damaged checkpoint {paths[3]} (BadZipFile")
  assert said[0].endswith(f"kept as {paths[3]}.damaged")
  assert "step 2" in said[1]
  # Set aside, it is out of the rotation: the next save cannot push good checkpoints out.
  assert [s for s, _ in checkpoint.list_checkpoints(str(tmp_path))] == [1, 2]


def test_corrupt_array_leaves_the_model_untouched_and_falls_back(tmp_path):
  paths = _write_run(str(tmp_path))
  _flip_array_byte(paths[3], "generator/1.npy")  # the last array read
  groups = _groups(-1.0)
  with pytest.raises(checkpoint.DamagedCheckpointError, match="cannot read checkpoint"):
    checkpoint.restore(paths[3], groups)
  # Nothing was assigned: every array is read and checked before any assignment.
  np.testing.assert_array_equal(groups["generator"][0].numpy(), np.full((3, 4), -1.0))
  with pytest.raises(checkpoint.DamagedCheckpointError):
    checkpoint.verify(paths[3])
  said = []
  step, path, _ = checkpoint.newest_readable(str(tmp_path), report=said.append)
  assert (step, path) == (2, paths[2]) and os.path.exists(paths[3] + ".damaged")
  assert said[0].startswith(f"skipped damaged checkpoint {paths[3]} (BadZipFile: Bad CRC-32")


def test_every_checkpoint_damaged_is_one_clear_error(tmp_path):
  paths = _write_run(str(tmp_path), steps=(1, 2))
  for p in paths.values():
    _truncate(p)
  with pytest.raises(checkpoint.DamagedCheckpointError, match="every one is damaged") as e:
    checkpoint.restore_newest(str(tmp_path), _groups(0.0), report=lambda m: None)
  for p in paths.values():
    assert f"{p}.damaged" in str(e.value) and os.path.exists(p + ".damaged")
  assert checkpoint.restore_newest(str(tmp_path), _groups(0.0)) is None  # none left: no run


def test_a_checkpoint_of_another_model_is_not_skipped(tmp_path):
  paths = _write_run(str(tmp_path))
  other = {"generator": [keras.Variable(np.zeros((2, 2), np.float32))]}
  with pytest.raises(checkpoint.CheckpointError, match="does not match this model") as e:
    checkpoint.restore_newest(str(tmp_path), other)
  assert not isinstance(e.value, checkpoint.DamagedCheckpointError)
  assert all(os.path.exists(p) for p in paths.values())  # nothing renamed


def test_second_damage_of_the_same_step_keeps_both_files(tmp_path):
  paths = _write_run(str(tmp_path), steps=(1, 2))
  _truncate(paths[2])
  checkpoint.newest_readable(str(tmp_path), report=lambda m: None)
  checkpoint.save(str(tmp_path), 2, _groups(2.0), {}, keep=5)
  _truncate(paths[2])
  checkpoint.newest_readable(str(tmp_path), report=lambda m: None)
  assert os.path.exists(paths[2] + ".damaged") and os.path.exists(paths[2] + ".damaged.1")


def test_run_directories_are_read_through_one_library_module():
  """Nothing in msmt_tf/ or evaluation/ imports an entry point that writes runs (train,
  pretrain_damsm, export, the importers' CLI, demo), at module level or inside a function: runs
  and DAMSM folders are read and written through msmt_tf.runs."""
  import ast  # pylint: disable=g-import-not-at-top
  repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  entry = {"msmt_tf.train", "msmt_tf.pretrain_damsm", "msmt_tf.export", "msmt_tf.import_torch",
           "msmt_tf.demo"}
  found = []
  for package in ("msmt_tf", "evaluation"):
    for folder, _, files in os.walk(os.path.join(repo, package)):
      for name in files:
        if not name.endswith(".py"):
          continue
        path = os.path.join(folder, name)
        module = os.path.relpath(path, repo)[:-3].replace(os.sep, ".")
        with open(path) as f:
          tree = ast.parse(f.read())
        for node in ast.walk(tree):
          if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
          elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
          else:
            continue
          found += [(module, n) for n in names if n in entry and n != module]
  assert not found, found
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  assert callable(runs.load_run) and callable(runs.load_damsm) and callable(runs.write_run_files)


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_writes_get_the_mode_of_a_plain_open(tmp_path, umask, mode, monkeypatch):
  """Samples, checkpoints and records are as readable as any file the user writes (mkstemp's
  temporary file is 0600 whatever the umask); also where /proc does not tell the umask."""
  import builtins  # pylint: disable=g-import-not-at-top
  from msmt_tf import fileio  # pylint: disable=g-import-not-at-top
  old = os.umask(umask)
  try:
    with open(tmp_path / "plain", "wb"):
      pass
    assert os.stat(tmp_path / "plain").st_mode & 0o777 == mode
    path = str(tmp_path / "a.png")
    fileio.atomic_write_bytes(path, b"x")
    assert os.stat(path).st_mode & 0o777 == mode

    def no_proc(name, *args, **kwargs):
      if str(name).startswith("/proc/"):
        raise OSError("no /proc here")
      return builtins.open(name, *args, **kwargs)
    monkeypatch.setattr(fileio, "open", no_proc, raising=False)
    monkeypatch.setattr(fileio, "_UMASK", None)
    fileio.atomic_write_bytes(str(tmp_path / "b.png"), b"x")
    assert os.stat(tmp_path / "b.png").st_mode & 0o777 == mode
    assert os.umask(umask) == umask  # the umask is left as it was
  finally:
    os.umask(old)


def test_a_killed_writes_partial_file_goes_with_the_next_save(tmp_path):
  """A write killed by SIGKILL leaves its hidden partial file (no exception ran to remove it);
  the next checkpoint's save removes those of steps up to its own, never a newer one's (whose
  writer may still be at work) nor any other file."""
  folder = tmp_path / "checkpoints"
  _write_run(str(tmp_path), steps=(1,))
  for name in (".ckpt-00000002.npz.k1ll3d.npz", ".ckpt-00000003.npz.ab12cd.npz",
               ".ckpt-00000009.npz.writing.npz", ".flags.txt.x1.txt", "notes.txt"):
    (folder / name).write_bytes(b"x" * 100)
  checkpoint.save(str(tmp_path), 3, _groups(3.0), {"note": 3}, keep=5)
  assert sorted(os.listdir(folder)) == [".ckpt-00000009.npz.writing.npz", ".flags.txt.x1.txt",
                                        "ckpt-00000001.npz", "ckpt-00000003.npz", "notes.txt"]
