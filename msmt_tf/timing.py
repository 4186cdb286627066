"""Several benchmark processes sharing one device in one sitting (bench --sync_dir): compiles
overlap, timings never do. Standard library only, so that it imports in milliseconds."""

import contextlib
import os
import time

__all__ = ["timing_turn"]


@contextlib.contextmanager
def timing_turn(sync_dir, count, index, timeout_s):
  """With `sync_dir`: announce this process ready, wait for `count` ready processes (or
  `timeout_s`), then hold an exclusive lock on sync_dir/lock for the block. Yields a dict of
  what happened ({} without `sync_dir`)."""
  if not sync_dir:
    yield {}
    return
  import fcntl  # pylint: disable=g-import-not-at-top
  os.makedirs(sync_dir, exist_ok=True)
  # Written aside, then renamed: a member counted ready has its file whole (and final mtime).
  tmp = os.path.join(sync_dir, f".ready.{index}.{os.getpid()}")
  with open(tmp, "w") as f:
    f.write(str(os.getpid()))
  os.replace(tmp, os.path.join(sync_dir, f"ready.{index}"))
  t = time.perf_counter()
  ready = lambda: sum(n.startswith("ready.") for n in os.listdir(sync_dir))
  while ready() < count and time.perf_counter() - t < timeout_s:
    time.sleep(0.2)
  info = {"sync_group": count, "sync_ready": ready(), "sync_wait_s": 0.0}
  with open(os.path.join(sync_dir, "lock"), "a") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    info["sync_wait_s"] = round(time.perf_counter() - t, 1)
    try:
      yield info
    finally:
      fcntl.flock(lock, fcntl.LOCK_UN)
