"""The CLIs' console: TensorFlow's known-harmless native lines are hidden, real errors are not."""

import os
import subprocess
import sys
import time

import pytest

from msmt_tf import console

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Lines as TensorFlow 2.21 prints them on a CPU machine (copied from a run of msmt_tf.bench).
NOISE = [
    "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR",
    "I0000 00:00:1795696356.717519   11639 port.cc:153] oneDNN custom operations are on. You may "
    "see slightly different numerical results due to floating-point round-off errors.",
    "I0000 00:00:1795696356.717894   11639 cudart_stub.cc:31] Could not find cuda drivers on your "
    "machine, GPU will not be used.",
    "E0000 00:00:1795696362.034627   11639 cuda_platform.cc:52] failed call to cuInit: INTERNAL: "
    "CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)",
    "E0000 00:00:1795696413.380241   11639 meta_optimizer.cc:967] remapper failed: "
    "INVALID_ARGUMENT: Mutation::Apply error: fanout 'gradient_tape/image_encoder_1/small_trunk_1/"
    "leaky_re_lu_4_1/LeakyRelu/LeakyReluGrad' exist for missing node 'image_encoder_1/x'.",
    "E0000 00:00:1795696416.642505   11639 util.cc:131] oneDNN supports DT_BOOL only on platforms "
    "with AVX-512. Falling back to the default Eigen-based implementation if present.",
]
REAL = [
    "E0000 00:00:1795696416.642505   11639 op_kernel.cc:1800] OP_REQUIRES failed at "
    "conv_ops.cc:101 : RESOURCE_EXHAUSTED: OOM when allocating tensor",
    "W0000 00:00:1795696416.642505   11639 meta_optimizer.cc:967] a warning we do not know",
    "Traceback (most recent call last):",
    "  File \"x.py\", line 1, in <module>",
    "E0000 this line is not in the native format",
]


def test_only_known_lines_and_levels_are_hidden():
  assert all(console.is_harmless(line) for line in NOISE)
  assert not any(console.is_harmless(line) for line in REAL[:1] + REAL[2:])
  # TF_CPP_MIN_LOG_LEVEL semantics for other native lines: 2 hides WARNING, 1 keeps it; ERROR
  # is never hidden by level.
  assert console.is_harmless(REAL[1], min_level=2)
  assert not console.is_harmless(REAL[1], min_level=1)
  assert not console.is_harmless(REAL[0], min_level=3)
  # A grappler remapper failure about something else is not known to be harmless.
  assert not console.is_harmless(NOISE[4].replace("LeakyReluGrad", "Conv2DBackpropInput"))


SCRIPT = """
import os, sys
sys.path.insert(0, {repo!r})
from msmt_tf import console
console.quiet_native_logs()
lines = {lines!r}
os.write(2, ("\\n".join(lines) + "\\n").encode())  # as native code writes: straight to fd 2
print("progress 1/2\\rprogress 2/2", file=sys.stderr)
sys.exit("error: the real message")
"""


def _run(extra_args=(), env=None):
  lines = [l for pair in zip(NOISE, REAL + [""]) for l in pair if l]
  code = SCRIPT.format(repo=REPO, lines=lines)
  res = subprocess.run([sys.executable, "-c", code, *extra_args], capture_output=True,
                       env=dict(os.environ, **(env or {})), timeout=60)
  res.stderr = res.stderr.decode()  # bytes as written: "\r" kept
  return res


def test_filter_keeps_real_errors_in_order_and_the_exit_message():
  res = _run(env={"TF_CPP_MIN_LOG_LEVEL": "2"})
  assert res.returncode == 1
  assert res.stderr == "\n".join([REAL[0], REAL[2], REAL[3], REAL[4],
                                   "progress 1/2\rprogress 2/2", "error: the real message\n"])


def test_verbose_or_level_zero_shows_everything():
  for res in (_run(["--verbose"]), _run(env={"TF_CPP_MIN_LOG_LEVEL": "0"})):
    for line in NOISE + REAL:
      assert line in res.stderr
    assert res.stderr.rstrip().endswith("error: the real message")


def test_a_terminal_stays_a_terminal_for_progress_bars():
  """On a terminal, Python's stderr still reports isatty() after the filter is in place (progress
  bars draw in place), and what it writes still reaches the terminal."""
  import pty  # pylint: disable=g-import-not-at-top
  code = ("import sys\n"
          f"sys.path.insert(0, {REPO!r})\n"
          "from msmt_tf import console\n"
          "assert console.quiet_native_logs()\n"
          "print('isatty', sys.stderr.isatty(), file=sys.stderr)\n")
  main, child = pty.openpty()
  try:
    res = subprocess.run([sys.executable, "-c", code], stderr=child, stdout=subprocess.PIPE,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=60)
    os.close(child)
    child = None
    out = b""
    while True:
      try:
        chunk = os.read(main, 4096)
      except OSError:  # the terminal's other end is closed: all is read
        break
      if not chunk:
        break
      out += chunk
  finally:
    if child is not None:
      os.close(child)
    os.close(main)
  assert res.returncode == 0, out.decode(errors="replace")
  assert b"isatty True" in out


def test_sigterm_inside_the_block_is_an_interrupt_and_the_handler_comes_back():
  import signal  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top
  import pytest  # pylint: disable=g-import-not-at-top
  from msmt_tf import stopping  # pylint: disable=g-import-not-at-top
  from tests import cli  # pylint: disable=g-import-not-at-top
  before = signal.getsignal(signal.SIGTERM)
  with pytest.raises(stopping.Terminated) as stopped:
    with stopping.sigterm_as_interrupt():
      cli.sigterm_self()
  assert isinstance(stopped.value, KeyboardInterrupt)  # each command's Ctrl-C path runs
  assert stopping.how_stopped(stopped.value) == "stopped by SIGTERM"
  assert stopping.how_stopped(KeyboardInterrupt()) == "interrupted"
  assert signal.getsignal(signal.SIGTERM) is before
  # Only the main thread may set handlers: elsewhere the block runs with the handler unchanged.
  seen = []

  def worker():
    with stopping.sigterm_as_interrupt():
      seen.append(signal.getsignal(signal.SIGTERM))
  thread = threading.Thread(target=worker)
  thread.start()
  thread.join()
  assert seen == [before]


@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_a_stop_at_the_step_boundary_is_noted_then_a_second_signal_stops_at_once(sig, capsys):
  """A training loop's first Ctrl-C or SIGTERM is noted for the loop to act on at its step's end
  (said on stderr); the second raises where the code is; the handlers come back after the
  block. Disabled (a multi-process run), the handlers are left alone."""
  import signal  # pylint: disable=g-import-not-at-top
  # A process started in the background by a script without job control ignores SIGINT, which
  # the block then leaves ignored: Python's own handler, as in a terminal, for this test.
  previous = signal.signal(signal.SIGINT, signal.default_int_handler)
  try:
    _stop_at_the_step_boundary(getattr(signal, sig), capsys)
  finally:
    signal.signal(signal.SIGINT, previous)


def _stop_at_the_step_boundary(signum, capsys):
  import signal  # pylint: disable=g-import-not-at-top
  from msmt_tf import stopping  # pylint: disable=g-import-not-at-top
  name, error = ("SIGTERM", stopping.Terminated) if signum == signal.SIGTERM else (
      "Ctrl-C", KeyboardInterrupt)
  before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
  steps = []
  with pytest.raises(error) as stopped:
    with stopping.stop_at_step_boundary() as stop:
      for step in range(1, 6):
        if step == 2:
          os.kill(os.getpid(), signum)  # in the middle of step 2: it goes on to its end
          time.sleep(0.1)
        steps.append(step)
        if stop.error is not None:
          raise stop.error
  assert steps == [1, 2] and type(stopped.value) is error  # pylint: disable=unidiomatic-typecheck
  assert capsys.readouterr().err == (f"\n{name}: stopping after this step, to save a checkpoint "
                                     f"(another {name} stops at once)\n")
  assert {s: signal.getsignal(s) for s in before} == before
  with pytest.raises(error):
    with stopping.stop_at_step_boundary(what="epoch", then="save the encoders") as stop:
      os.kill(os.getpid(), signum)
      time.sleep(0.1)
      assert stop.error is not None
      os.kill(os.getpid(), signum)  # the second: at once
      time.sleep(60)
      raise AssertionError("the second signal did not stop the block")
  assert "stopping after this epoch, to save the encoders" in capsys.readouterr().err
  assert {s: signal.getsignal(s) for s in before} == before
  with stopping.stop_at_step_boundary(enabled=False) as stop:
    assert {s: signal.getsignal(s) for s in before} == before and stop.error is None



def test_the_stop_line_is_written_when_the_signal_interrupts_a_write_to_stderr(monkeypatch):
  """A signal that comes while the program writes to stderr (a progress line) runs the handler
  inside that write: `print` then raises "reentrant call" and the stop's line was lost. It goes
  to stderr's file descriptor instead; the stop holds either way."""
  import signal  # pylint: disable=g-import-not-at-top
  from msmt_tf import stopping  # pylint: disable=g-import-not-at-top
  read_end, write_end = os.pipe()

  class BusyStderr:
    """stderr as the handler finds it in the middle of a write of the program's."""

    def fileno(self):
      return write_end

    def write(self, text):
      raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

    def flush(self):
      raise RuntimeError("reentrant call inside <_io.BufferedWriter name='<stderr>'>")

  try:
    monkeypatch.setattr(sys, "stderr", BusyStderr())
    with stopping.stop_at_step_boundary() as stop:
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.1)
      assert isinstance(stop.error, stopping.Terminated)
    monkeypatch.undo()
    os.close(write_end)
    write_end = None
    with os.fdopen(read_end, "rb") as f:
      said = f.read().decode()
  finally:
    if write_end is not None:
      os.close(write_end)
  assert said == ("\nSIGTERM: stopping after this step, to save a checkpoint (another SIGTERM "
                  "stops at once)\n")

def test_progress_in_a_log_file_is_a_plain_line_a_minute():
  """Into a file or pipe (a Slurm log), Keras' bar printed a line per update with escape codes;
  `progress.bar` gives plain lines, at most one a minute and one at the end."""
  import io  # pylint: disable=g-import-not-at-top
  import keras  # pylint: disable=g-import-not-at-top
  from msmt_tf import progress  # pylint: disable=g-import-not-at-top
  out = io.StringIO()
  now = [100.0]
  bar = progress.LogProgress(1000, "step", stream=out, clock=lambda: now[0])
  bar.update(400)  # a resumed run: its first update is past 0, and says nothing yet
  for step in range(401, 1001):
    now[0] += 0.5  # 2 steps a second: 300 s for the 600 steps
    bar.update(step, [("d_loss_64", 1.25), ("g_total", step / 100)])
  lines = out.getvalue().splitlines()
  assert len(lines) == 5, lines  # at 60, 120, 180 and 240 s, and the end (300 s)
  # The values: means over the steps since the line before (401..520: g_total 4.01..5.2).
  assert lines[0] == ("520/1000 steps (52%), 1:00 elapsed, 4:00 left - d_loss_64: 1.25 - "
                      "g_total: 4.605")
  assert lines[-1] == "1000/1000 steps (100%), 5:00 elapsed - d_loss_64: 1.25 - g_total: 9.405"
  assert "\x1b" not in out.getvalue() and "\r" not in out.getvalue()
  # A first step that compiles for 70 s, then 2 s a step: the time left is of the steps after it
  # (the compile once counted in would give 11:40 for 10 steps at the first line's rate).
  def compiled_first(target, last):
    out, now = io.StringIO(), [0.0]
    bar = progress.LogProgress(target, "step", stream=out, clock=lambda: now[0])
    bar.update(0)
    now[0] = 70.0
    bar.update(1)
    for step in range(2, last + 1):
      now[0] += 2.0
      bar.update(step)
    return out.getvalue().splitlines()
  lines = compiled_first(12, 12)
  assert lines[:2] == ["1/12 steps (8%), 1:10 elapsed", "12/12 steps (100%), 1:32 elapsed"], lines
  assert compiled_first(100, 31)[1] == "31/100 steps (31%), 2:10 elapsed, 2:18 left"

  class Terminal(io.StringIO):
    def isatty(self):
      return True
  assert isinstance(progress.bar(10, stream=Terminal()), keras.utils.Progbar)
  assert isinstance(progress.bar(10, stream=io.StringIO()), progress.LogProgress)


STARTUP = """
import os, signal, sys, time
sys.path.insert(0, {repo!r})
from msmt_tf import console
console.quiet_native_logs()  # what every command does first, before TensorFlow's import
if sys.argv[1] == "during_imports":
  os.kill(os.getpid(), getattr(signal, sys.argv[2]))
  time.sleep(30)  # (a long import)
  raise AssertionError("the signal did not stop the start")
if sys.argv[1] == "ignored":  # started with the signal ignored (a job started with & ignores ^C)
  os.kill(os.getpid(), getattr(signal, sys.argv[2]))
  time.sleep(0.2)
  print("still running")
  sys.exit(0)
from absl import app
def main(argv):  # the flags are parsed: the handlers are Python's again, the command's to set
  assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
  assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
  print("main ran")
app.run(main)
"""


@pytest.mark.parametrize("sig,status,how", [("SIGINT", 130, "interrupted"),
                                            ("SIGTERM", 143, "stopped by SIGTERM")])
def test_a_signal_while_a_command_starts_is_one_line(sig, status, how):
  """Ctrl-C in a command's first seconds (TensorFlow importing) printed a long traceback, and
  SIGTERM nothing at all: both now say it in one line, with 130 / 143; from main on, the
  handlers are Python's again (each command sets its own for its work)."""
  import signal  # pylint: disable=g-import-not-at-top
  code = STARTUP.format(repo=REPO)

  def handlers(ignored=None):
    """The child's signals as a terminal's command starts with them (a CI job started with &
    from a script runs with SIGINT ignored, and passes that on), but `ignored`."""
    def reset():
      for s in (signal.SIGINT, signal.SIGTERM):
        signal.signal(s, signal.SIG_IGN if s == ignored else signal.SIG_DFL)
    return reset
  res = subprocess.run([sys.executable, "-c", code, "during_imports", sig], capture_output=True,
                       text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=60,
                       preexec_fn=handlers())
  assert res.returncode == status, (res.returncode, res.stderr)
  assert res.stderr == (f"{how} while the command was starting (importing its libraries): "
                        "nothing was done yet; run the same command again\n"), res.stderr
  res = subprocess.run([sys.executable, "-c", code, "started", sig], capture_output=True,
                       text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=60,
                       preexec_fn=handlers())
  assert res.returncode == 0 and res.stdout == "main ran\n", res.stderr
  res = subprocess.run([sys.executable, "-c", code, "ignored", sig], capture_output=True,
                       text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2"), timeout=60,
                       preexec_fn=handlers(getattr(signal, sig)))
  assert res.returncode == 0 and res.stdout == "still running\n", res.stderr


def test_every_command_ends_its_quiet_startup():
  """A command's quiet start (`console.quiet_native_logs` -> `stopping.quiet_startup`) ends when
  its flags are parsed: absl's app.run does it; a command parsing its arguments otherwise calls
  `stopping.end_startup()` (else Ctrl-C during its work would claim nothing was done yet)."""
  checked = []
  for package in ("msmt_tf", "evaluation"):
    for root, _, names in os.walk(os.path.join(REPO, package)):
      for name in names:
        path = os.path.join(root, name)
        if not name.endswith(".py") or name == "console.py":
          continue
        with open(path) as f:
          text = f.read()
        if "console.quiet_native_logs()" in text:
          checked.append(name)
          assert "app.run(" in text or "stopping.end_startup()" in text, path
  assert {"train.py", "inception.py", "metric_main.py", "build.py"} <= set(checked), checked
