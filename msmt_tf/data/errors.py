"""Errors raised for bad datasets and bad text input.

Every message names the file or value at fault and says what to do about it.
"""

__all__ = ["DatasetError", "CaptionError", "UnsafePickleError"]


class DatasetError(ValueError):
  """A dataset folder is missing, incomplete or inconsistent.

  Attributes:
    problems: list of one-line problem descriptions (at least one).
  """

  def __init__(self, problems, hint=None):
    if isinstance(problems, str):
      problems = [problems]
    self.problems = list(problems)
    self.hint = hint
    shown = self.problems[:20]
    lines = list(shown)
    if len(self.problems) > len(shown):
      lines.append(f"... and {len(self.problems) - len(shown)} more problems")
    if hint:
      lines.append(hint)
    super().__init__("\n".join(lines))


class CaptionError(ValueError):
  """A caption cannot be turned into word ids (empty, or only unknown words)."""


class UnsafePickleError(DatasetError):
  """A pickle file names a class or callable that a dataset pickle never needs."""
