"""SIGTERM stops a long command as Ctrl-C does.

SIGTERM is what a batch system's time limit (Slurm, Kubernetes), `kill` and `docker stop` send.
Python's default is to die at once, without the message each command prints on Ctrl-C (the step
reached, what was kept, the command that continues). Inside `sigterm_as_interrupt()` a SIGTERM
raises `Terminated`, a `KeyboardInterrupt`, so the command's Ctrl-C path runs: the same `finally`
blocks and the same message, which `how_stopped` words for either signal. `exit_stopped` prints
that message and ends the process with the status a shell gives a command the signal killed
(130 for Ctrl-C, 143 for SIGTERM), so a job script can tell a stopped run (resume it) from a
failed one (exit 1).
"""

import contextlib
import signal
import sys
import threading

__all__ = ["Terminated", "exit_status", "exit_stopped", "how_stopped", "sigterm_as_interrupt"]


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


def exit_status(error):
  """128 + the signal, as a shell reports a command the signal stopped: 143 for `Terminated`
  (SIGTERM), 130 for Ctrl-C (SIGINT)."""
  return 128 + int(signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT)


def exit_stopped(error, message):
  """Prints `message` (what was kept, the command that continues) to stderr and exits with
  `exit_status(error)`."""
  print(message, file=sys.stderr, flush=True)
  sys.exit(exit_status(error))
