"""A command's `main` run in the test's own process, for the checks that stop before training.

A subprocess pays Python, TensorFlow and Keras imports (about 6 s of CPU on the 2-core CI
machines) before a flag check that takes milliseconds; the suite ran ~30 of them. `run_main`
parses the flags as `app.run` would, calls the module's `main` and turns its `sys.exit` into an
exit status and stderr text as the interpreter would, so a test asserts on the same
`returncode` / `stdout` / `stderr`. A real run (one that trains, or checks what a process prints
at startup) stays a subprocess.
"""

import contextlib
import importlib
import io
import os
import re
import subprocess
import sys

from absl import app
from absl import flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Flags a module defines only when run as a program (so that importing it defines none). Not for
# msmt_tf.bench: its own flags (--out, --steps) clash with other commands' in one process.
_MAIN_ONLY_FLAGS = {
    "msmt_tf.pretrain_damsm": [("overwrite", "Replace the encoders already in --damsm_dir.")],
}


def define_main_only_flags(module):
  """Defines the flags `module` defines only under `__main__` (once per process), for a test that
  calls its code in this process."""
  for name, help_text in _MAIN_ONLY_FLAGS.get(module, ()):
    if name not in flags.FLAGS:
      flags.DEFINE_bool(name, False, help_text)


def stops(capsys, status, pattern, fn, *args):
  """Calls `fn(*args)` (a command's `main`) and asserts that it exits with `status` (130 for
  Ctrl-C, 143 for SIGTERM: `stopping.exit_stopped`) after printing to stderr a message
  `pattern` (a regular expression) finds."""
  capsys.readouterr()
  try:
    fn(*args)
  except SystemExit as e:
    err = capsys.readouterr().err
    assert e.code == status, (e.code, err)
    assert re.search(pattern, err), err
    return err
  raise AssertionError(f"{fn} did not exit")


def run_main(module, *argv):
  """`python -m module *argv` run from the repository root (as the tests' subprocesses are, so a
  relative `--flagfile=configs/...` reads the same file) in this process: a CompletedProcess with
  the exit status (0, the code given to sys.exit, or 1 and the message on stderr for
  sys.exit(text)) and what was printed. The flags are reset before and after. An exception other
  than SystemExit propagates (a subprocess would print a traceback: the test fails either way).
  absl `logging` lines are not in the captured stderr (app.run's handler is not installed):
  assert on what the command prints or exits with."""
  mod = importlib.import_module(module)
  define_main_only_flags(module)
  out, err = io.StringIO(), io.StringIO()
  flags.FLAGS.unparse_flags()
  try:
    with contextlib.chdir(REPO), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
      try:
        raise SystemExit(mod.main(app.parse_flags_with_usage([module, *argv])))  # as app.run
      except SystemExit as e:
        if e.code is None or isinstance(e.code, int):
          code = e.code or 0
        else:
          print(e.code, file=sys.stderr)
          code = 1
  finally:
    flags.FLAGS.unparse_flags()
  return subprocess.CompletedProcess([module, *argv], code, out.getvalue(), err.getvalue())


def sigterm_self(*args, **kwargs):
  """A stand-in for a command's long call: this process gets SIGTERM (as from Slurm's time
  limit, `kill` or `docker stop`) in the middle of it. The command's handler raises at once; if
  none is installed the default action ends the test process, which fails the test too."""
  del args, kwargs
  import signal  # pylint: disable=g-import-not-at-top
  import time  # pylint: disable=g-import-not-at-top
  os.kill(os.getpid(), signal.SIGTERM)
  time.sleep(60)  # the handler raises first
  raise AssertionError("SIGTERM did not stop the command")
