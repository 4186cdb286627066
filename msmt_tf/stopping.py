"""SIGTERM stops a long command as Ctrl-C does.

SIGTERM is what a batch system's time limit (Slurm, Kubernetes), `kill` and `docker stop` send.
Python's default is to die at once, without the message each command prints on Ctrl-C (the step
reached, what was kept, the command that continues). Inside `sigterm_as_interrupt()` a SIGTERM
raises `Terminated`, a `KeyboardInterrupt`, so the command's Ctrl-C path runs: the same `finally`
blocks and the same message, which `how_stopped` words for either signal.
"""

import contextlib
import signal
import threading

__all__ = ["Terminated", "how_stopped", "sigterm_as_interrupt"]


class Terminated(KeyboardInterrupt):
  """SIGTERM inside `sigterm_as_interrupt()`: handled as Ctrl-C is."""


def _raise_terminated(signum, frame):
  del signum, frame
  raise Terminated()


@contextlib.contextmanager
def sigterm_as_interrupt():
  """Within the block, SIGTERM raises `Terminated`; the process's own handler is back after it.
  Python lets only the main thread set handlers: elsewhere (a caller's worker thread) the block
  runs with the handler unchanged."""
  if threading.current_thread() is not threading.main_thread():
    yield
    return
  previous = signal.signal(signal.SIGTERM, _raise_terminated)
  try:
    yield
  finally:
    # None: a handler installed outside Python, which cannot be put back from here.
    signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


def how_stopped(error):
  """'stopped by SIGTERM' for `Terminated`, 'interrupted' for Ctrl-C."""
  return "stopped by SIGTERM" if isinstance(error, Terminated) else "interrupted"
