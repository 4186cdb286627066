"""A clean console for the command-line tools: TensorFlow's known-harmless native log lines off.

TensorFlow 2.21's C++ runtime writes to the process's stderr (file descriptor 2) directly, and
its lines before `absl::InitializeLog()` ignore `TF_CPP_MIN_LOG_LEVEL`. On a CPU machine every
command therefore printed lines like

    E0000 ... cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: ... (303)
    E0000 ... meta_optimizer.cc:967] remapper failed: INVALID_ARGUMENT: ... LeakyReluGrad ...
    E0000 ... util.cc:131] oneDNN supports DT_BOOL only on platforms with AVX-512. Falling back...

which say nothing about the user's run (no GPU driver on a CPU machine; grappler skipping one
optional graph rewrite; oneDNN using Eigen for one dtype). `quiet_native_logs()`, called first by
every CLI, passes stderr through a filter that drops exactly the lines in `KNOWN_HARMLESS` and,
as `TF_CPP_MIN_LOG_LEVEL` asks (default 2), TensorFlow's native INFO (and WARNING) lines. Every
other line, real errors and Python tracebacks included, passes unchanged and in order.

`--verbose` (any CLI) or `TF_CPP_MIN_LOG_LEVEL=0` in the environment shows everything.
"""

import atexit
import os
import re
import sys
import threading

from absl import flags

__all__ = ["KNOWN_HARMLESS", "is_harmless", "quiet_native_logs"]

flags.DEFINE_bool("verbose", False, "Show TensorFlow's native log lines that are hidden by "
                  "default (cuInit on CPU machines, grappler remapper notes, oneDNN fallbacks); "
                  "TF_CPP_MIN_LOG_LEVEL=0 does the same.")

# (pattern, why it is harmless). Matched anywhere in one line.
KNOWN_HARMLESS = (
    (r"failed call to cuInit", "no GPU driver: a CPU machine"),
    (r"Could not find cuda drivers on your machine", "no GPU driver: a CPU machine"),
    (r"remapper failed: .*LeakyReluGrad",
     "grappler skips one optional fusion of a LeakyRelu gradient; the graph runs unfused"),
    (r"oneDNN supports DT_BOOL only on platforms with AVX-512",
     "oneDNN leaves boolean ops to Eigen on CPUs without AVX-512"),
    (r"oneDNN custom operations are on", "TensorFlow's notice that oneDNN kernels are used"),
    (r"All log messages before absl::InitializeLog\(\) is called are written to STDERR",
     "absl's notice that precedes the lines above"),
    (r"This TensorFlow binary is optimized to use available CPU instructions",
     "TensorFlow's CPU-feature notice"),
    (r"Unable to register cu(DNN|FFT|BLAS) factory", "TensorFlow and JAX in one process"),
    (r"computation placer already registered", "TensorFlow and JAX in one process"),
)
_HARMLESS = re.compile("|".join(f"(?:{p})" for p, _ in KNOWN_HARMLESS))
# absl / TensorFlow native line: severity letter, MMDD, time, thread id, file:line].
_NATIVE = re.compile(r"^([IWEF])\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+:\d+\] ")
_LEVELS = {"I": 0, "W": 1, "E": 2, "F": 3}

_state = {}


def is_harmless(line, min_level=2):
  """True for a line the console drops: a `KNOWN_HARMLESS` one, or a native TensorFlow line
  below `min_level` (TF_CPP_MIN_LOG_LEVEL: 1 drops INFO, 2 also WARNING; never ERROR)."""
  if _HARMLESS.search(line):
    return True
  native = _NATIVE.match(line)
  return bool(native) and _LEVELS[native.group(1)] < min(min_level, 2)


def _verbose_requested(argv):
  for arg in argv[1:]:
    if arg in ("--verbose", "--verbose=true", "--verbose=True", "--verbose=1"):
      return True
  return False


def quiet_native_logs(argv=None):
  """Starts the stderr filter (once per process); a no-op with --verbose or
  TF_CPP_MIN_LOG_LEVEL=0. Call it before TensorFlow is imported (every command does, first).
  Until the command's flags are parsed, Ctrl-C or SIGTERM then stops it with one line
  (`stopping.quiet_startup`), not a traceback from inside an import."""
  if argv is None:  # a command starting (tests call it with their own argv)
    from msmt_tf import stopping  # pylint: disable=g-import-not-at-top
    stopping.quiet_startup()
  argv = sys.argv if argv is None else argv
  if _verbose_requested(argv):
    os.environ["TF_CPP_MIN_LOG_LEVEL"] = "0"
    return False
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  try:
    min_level = int(os.environ["TF_CPP_MIN_LOG_LEVEL"])
  except ValueError:
    min_level = 2
  if min_level <= 0 or _state:
    return False
  try:
    original = os.dup(2)
  except OSError:  # no stderr to filter
    return False
  read_fd, write_fd = os.pipe()
  sys.stderr.flush()
  os.dup2(write_fd, 2)
  os.close(write_fd)
  if os.isatty(original):  # stderr is now a pipe: progress bars must still see the terminal
    sys.stderr = _TerminalStream(sys.stderr)
  thread = threading.Thread(target=_pump, args=(read_fd, original, min_level),
                            name="msmt-stderr-filter", daemon=True)
  thread.start()
  _state.update(original=original, thread=thread)
  atexit.register(_stop)
  return True


class _TerminalStream:
  """`sys.stderr` as before, except that `isatty()` still says True: its file descriptor now
  leads to the filter, but what it writes ends on the terminal (progress bars check isatty)."""

  def __init__(self, stream):
    self._stream = stream

  def isatty(self):
    return True

  def __getattr__(self, name):
    return getattr(self._stream, name)


def _pump(read_fd, out_fd, min_level):
  """Forwards complete lines (ended by \\n or \\r, so progress bars pass at once) unless they
  are harmless; a last unterminated piece is forwarded at the end."""
  pending = b""
  with os.fdopen(read_fd, "rb", buffering=0) as source:
    while True:
      chunk = source.read(65536)
      if not chunk:
        break
      pending += chunk
      pieces = re.split(rb"(?<=[\r\n])", pending)
      pending = pieces.pop()
      out = b"".join(p for p in pieces
                     if not is_harmless(p.decode("utf-8", "replace").rstrip("\r\n"), min_level))
      if out:
        _write_all(out_fd, out)
  if pending and not is_harmless(pending.decode("utf-8", "replace"), min_level):
    _write_all(out_fd, pending)


def _write_all(fd, data):
  while data:
    data = data[os.write(fd, data):]


def _stop():
  """At exit: flush Python's stderr, put the real stderr back (the pipe then reaches its end)
  and let the filter forward what is left."""
  try:
    sys.stderr.flush()
  except (OSError, ValueError):
    pass
  os.dup2(_state["original"], 2)
  _state["thread"].join(timeout=5)
