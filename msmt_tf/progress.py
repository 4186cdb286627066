"""Progress bars that suit where the output goes.

On a terminal: Keras' progress bar (one line redrawn in place). Into a file or a pipe (a Slurm or
nohup log, `| tee`), Keras' bar prints a new line at every update it draws (up to 20 a second:
a line per training step), each with the terminal's bold escape codes. There `bar()` gives a
plain line at most once a minute and at the end instead: count, percent, elapsed time, time
left, and the values passed (the training losses) averaged over the updates since the line
before. Notebooks (Jupyter, PyCharm), whose output is not a terminal but redraws Keras' bar,
keep Keras' bar, as Keras decides.
"""

import os
import sys
import time

__all__ = ["bar", "LogProgress", "LOG_INTERVAL_S"]

LOG_INTERVAL_S = 60.0


def bar(target, unit_name="step", stream=None, **kwargs):
  """A progress bar with Keras' `Progbar.update(current, values=None, finalize=None)`: Keras'
  own where `stream` (default stdout) is a terminal, else `LogProgress`."""
  stream = sys.stdout if stream is None else stream
  isatty = getattr(stream, "isatty", None)
  notebook = "ipykernel" in sys.modules or "PYCHARM_HOSTED" in os.environ
  if notebook or (isatty is not None and isatty()):
    import keras  # pylint: disable=g-import-not-at-top
    return keras.utils.Progbar(target, unit_name=unit_name, **kwargs)
  return LogProgress(target, unit_name, stream=stream)


def _duration(seconds):
  seconds = int(round(seconds))
  h, rest = divmod(seconds, 3600)
  m, s = divmod(rest, 60)
  return f"{h}:{m:02d}:{s:02d}" if h else f"{m}:{s:02d}"


class LogProgress:
  """A progress line for log files: at most every `interval` seconds, and at the end."""

  def __init__(self, target, unit_name="step", stream=None, interval=LOG_INTERVAL_S,
               clock=time.monotonic):
    self.target, self.unit_name, self.interval = target, unit_name, interval
    self._stream, self._clock = stream, clock
    self._start = self._last = None
    self._first = None  # the count at the first update (a resumed run starts past 0)
    # (time, count) when the first unit after it was done: the rate for the time left is taken
    # from there, without the first unit's one-off cost (a step's trace or XLA compile).
    self._warm = None
    self._sums = {}  # name -> [sum, count] since the line before

  def update(self, current, values=None, finalize=None):
    now = self._clock()
    if self._start is None:
      self._start, self._last, self._first = now, now, current
    elif self._warm is None and current > self._first:
      self._warm = (now, current)
    for name, value in values or ():
      total = self._sums.setdefault(name, [0.0, 0])
      total[0] += float(value)
      total[1] += 1
    if finalize is None:
      finalize = self.target is not None and current >= self.target
    if not finalize and now - self._last < self.interval:
      return
    self._last = now
    elapsed = now - self._start
    line = f"{current}/{self.target} {self.unit_name}s" if self.target else f"{current}"
    if self.target:
      line += f" ({100.0 * current / self.target:.0f}%)"
    line += f", {_duration(elapsed)} elapsed"
    if self.target and not finalize and self._warm and current > self._warm[1]:
      rate = (now - self._warm[0]) / (current - self._warm[1])
      line += f", {_duration(rate * (self.target - current))} left"
    if self._sums:
      line += " - " + " - ".join(f"{k}: {t / n:.4g}" for k, (t, n) in self._sums.items() if n)
      self._sums = {k: [0.0, 0] for k in self._sums}
    stream = sys.stdout if self._stream is None else self._stream
    print(line, file=stream, flush=True)
