"""SIGTERM stops a long command as Ctrl-C does.

SIGTERM is what a batch system's time limit (Slurm, Kubernetes), `kill` and `docker stop` send.
Python's default is to die at once, without the message each command prints on Ctrl-C (the step
reached, what was kept, the command that continues). Inside `sigterm_as_interrupt()` a SIGTERM
raises `Terminated`, a `KeyboardInterrupt`, so the command's Ctrl-C path runs: the same `finally`
blocks and the same message, which `how_stopped` words for either signal. `exit_stopped` prints
that message and ends the process with the status a shell gives a command the signal killed
(130 for Ctrl-C, 143 for SIGTERM), so a job script can tell a stopped run (resume it) from a
failed one (exit 1). A training loop stops at its next step boundary instead, to save what it
has (`stop_at_step_boundary`); a second signal stops it at once.
"""

import contextlib
import os
import signal
import sys
import threading

__all__ = ["Terminated", "exit_status", "exit_stopped", "how_stopped", "sigterm_as_interrupt",
           "StopRequest", "stop_at_step_boundary", "quiet_startup", "end_startup"]


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


def _handle_stop_signals(handler):
  """Sets `handler` for SIGINT and SIGTERM, except a signal the process was started with
  ignored (a job started with `&` from a script ignores SIGINT): it stays ignored. Returns the
  function that puts back the handlers it replaced (where `handler` is still set). A signal
  that arrives while the handlers are set and raises puts them back before it goes on."""
  previous = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}

  def restore():
    for sig, old in previous.items():
      if signal.getsignal(sig) is handler:
        # None: a handler installed outside Python, which cannot be put back from here.
        signal.signal(sig, signal.SIG_DFL if old is None else old)

  try:
    for sig, old in previous.items():
      if old is not signal.SIG_IGN:
        signal.signal(sig, handler)
  except BaseException:
    restore()
    raise
  return restore


class StopRequest:
  """What `stop_at_step_boundary` hands its block: `error` is None until the first Ctrl-C or
  SIGTERM, then the `KeyboardInterrupt` or `Terminated` it would have raised."""

  def __init__(self):
    self.error = None


def say_in_handler(text):
  """Writes `text` to stderr from a signal handler: straight to its file descriptor. `print`
  raises there ("reentrant call") when the signal came while the program was writing to stderr
  (a progress line), and the line would be lost. Where stderr has no descriptor (a test's
  capture), `print`, its error ignored."""
  try:
    fd = sys.stderr.fileno()
  except (AttributeError, ValueError, OSError):  # io.UnsupportedOperation is both
    fd = None
  try:
    if fd is None:
      print(text, end="", file=sys.stderr, flush=True)
    else:
      os.write(fd, text.encode("utf8", "replace"))
  except (OSError, RuntimeError):  # stderr closed, or re-entered: the stop still holds
    pass


@contextlib.contextmanager
def stop_at_step_boundary(enabled=True, what="step", then="save a checkpoint", when=None):
  """Within the block, the first Ctrl-C or SIGTERM does not stop the code where it is: it is
  noted in the yielded `StopRequest` (and said on stderr: "SIGTERM: stopping after this `what`,
  to `then` ..."; `when` replaces "after this `what`"), for a loop to finish its step, save, and
  raise `request.error` itself. A second one raises at once, as `sigterm_as_interrupt` does.
  The handlers are back after the block. Not `enabled`, outside the main thread, or for a
  signal the process was started with ignored: the handlers are left as they are."""
  request = StopRequest()
  if not enabled or threading.current_thread() is not threading.main_thread():
    yield request
    return

  def note(signum, frame):
    del frame
    error = Terminated() if signum == signal.SIGTERM else KeyboardInterrupt()
    if request.error is not None:  # the second signal: at once
      raise error
    request.error = error
    name = "SIGTERM" if signum == signal.SIGTERM else "Ctrl-C"
    say_in_handler(f"\n{name}: stopping {when or f'after this {what}'}, to {then} (another "
                   f"{name} stops at once)\n")

  restore = _handle_stop_signals(note)
  try:
    yield request
  finally:
    restore()


def how_stopped(error):
  """'stopped by SIGTERM' for `Terminated`, 'interrupted' for Ctrl-C; an error whose
  `other_process` is true (a multi-process run stopped by another process's signal) says so."""
  how = "stopped by SIGTERM" if isinstance(error, Terminated) else "interrupted"
  if getattr(error, "other_process", False):
    how += (" (sent to another process of the run)" if isinstance(error, Terminated) else
            " (by Ctrl-C in another process of the run)")
  return how


def exit_status(error):
  """128 + the signal, as a shell reports a command the signal stopped: 143 for `Terminated`
  (SIGTERM), 130 for Ctrl-C (SIGINT)."""
  return 128 + int(signal.SIGTERM if isinstance(error, Terminated) else signal.SIGINT)


def exit_stopped(error, message):
  """Prints `message` (what was kept, the command that continues) to stderr and exits with
  `exit_status(error)`."""
  print(message, file=sys.stderr, flush=True)
  sys.exit(exit_status(error))



_STARTUP = []  # the restore function of quiet_startup's handlers, until end_startup runs it


def quiet_startup(command=None):
  """Until the command's flags are parsed (absl's `app.call_after_init`: before its `main`, so
  before it reads or writes anything; a command that parses its arguments otherwise calls
  `end_startup` itself), Ctrl-C or SIGTERM ends the process with one line and 130 / 143, instead
  of a traceback from inside TensorFlow's import (or, for SIGTERM, no word at all); then the
  handlers are as they were. A signal the process was started with ignored (a job started
  with `&` from a script ignores SIGINT) stays ignored. `command`: its name in the line
  (default: the module run with `python -m`)."""
  if threading.current_thread() is not threading.main_thread() or _STARTUP:
    return
  if command is None:
    spec = getattr(sys.modules.get("__main__"), "__spec__", None)
    command = f"python -m {spec.name}" if spec else "the command"

  def stop(signum, frame):
    del frame
    how = "stopped by SIGTERM" if signum == signal.SIGTERM else "interrupted"
    say_in_handler(f"{how} while {command} was starting (importing its libraries): nothing "
                   "was done yet; run the same command again\n")
    sys.exit(128 + int(signum))

  _STARTUP.append(_handle_stop_signals(stop))
  from absl import app  # pylint: disable=g-import-not-at-top
  app.call_after_init(end_startup)


def end_startup():
  """Puts back the handlers `quiet_startup` replaced (once; a no-op without it)."""
  while _STARTUP:
    _STARTUP.pop()()
