"""Caption tokenizer and word <-> index tables compatible with AttnGAN's `captions.pickle`.

Rules (AttnGAN / DM-GAN `datasets.py`, model_spec §1.2): replace the two-character sequence
U+FFFD U+FFFD with a space, lowercase, take runs of word characters (NLTK `RegexpTokenizer(r'\\w+')`),
drop non-ASCII characters from each token and drop tokens that become empty. Index 0 is `<end>` and
is used only as padding. A rebuilt vocabulary lists words in order of first appearance over the
train captions, then the test captions (what AttnGAN's `build_dictionary` gives on Python 3.7+).
"""

import hashlib
import re

from msmt_tf.data.errors import CaptionError

__all__ = ["END_TOKEN", "tokenize", "altered_words", "Vocabulary"]

END_TOKEN = "<end>"
_WORD_RE = re.compile(r"\w+")


def _words(text):
  """(word, its ASCII letters) for each run of word characters, lowercased (AttnGAN's rules)."""
  return [(w, w.encode("ascii", "ignore").decode("ascii"))
          for w in _WORD_RE.findall(text.replace("\ufffd\ufffd", " ").lower())]


def tokenize(text):
  """Splits one caption into lowercase ASCII word tokens (AttnGAN's rules)."""
  return [kept for _, kept in _words(text) if kept]


def altered_words(text):
  """The words of `text` that `tokenize` changes by dropping non-ASCII letters, as
  (word, what is kept) pairs: `'café' -> ('café', 'caf')`; ('日本', '') for a word dropped whole."""
  return [(w, kept) for w, kept in _words(text) if w != kept]


class Vocabulary:
  """Word <-> index tables; index 0 is `<end>` (padding).

  Args:
    ixtoword: dict int -> str or list of str, with index 0 the padding token.
  """

  def __init__(self, ixtoword):
    if isinstance(ixtoword, dict):
      n = len(ixtoword)
      missing = [i for i in range(n) if i not in ixtoword]
      if missing:
        raise ValueError(f"ixtoword is not a dense table 0..{n - 1}: index {missing[0]} missing")
      words = [ixtoword[i] for i in range(n)]
    else:
      words = list(ixtoword)
    if not words or words[0] != END_TOKEN:
      raise ValueError(f"index 0 of the vocabulary must be {END_TOKEN!r}, got "
                       f"{words[0] if words else None!r}")
    self._words = [w.decode("latin1") if isinstance(w, bytes) else str(w) for w in words]
    self._index = {}
    for i, w in enumerate(self._words):
      if w in self._index:
        raise ValueError(f"word {w!r} appears twice in the vocabulary (indices "
                         f"{self._index[w]} and {i})")
      self._index[w] = i

  @classmethod
  def from_captions(cls, token_lists, min_count=1):
    """Builds the vocabulary from token lists in order of first appearance, keeping the words
    that occur at least `min_count` times (AttnGAN keeps every word: 1)."""
    counts = {}
    for tokens in token_lists:
      for t in tokens:
        counts[t] = counts.get(t, 0) + 1
    return cls([END_TOKEN] + [t for t, n in counts.items() if n >= min_count and t != END_TOKEN])

  def __len__(self):
    return len(self._words)

  @property
  def sha256(self):
    """SHA-256 of the words in index order: the table's identity. Two vocabularies of one size
    but other words or order (a dataset rebuilt from edited captions) give token ids that mean
    other words to a model trained on the first."""
    return hashlib.sha256("\n".join(self._words).encode("utf-8")).hexdigest()

  def __contains__(self, word):
    return word in self._index

  @property
  def words(self):
    return list(self._words)

  @property
  def ixtoword(self):
    return dict(enumerate(self._words))

  @property
  def wordtoix(self):
    return dict(self._index)

  def index(self, word):
    return self._index[word]

  def encode_tokens(self, tokens, source="caption"):
    """Maps tokens to ids, dropping unknown words.

    Raises:
      CaptionError: no tokens, or every token is unknown.
    """
    if not tokens:
      raise CaptionError(f"{source}: empty caption (no word tokens); give at least one word")
    ids = [self._index[t] for t in tokens if t in self._index and self._index[t] != 0]
    if not ids:
      shown = " ".join(tokens[:10])
      raise CaptionError(f"{source}: every word is unknown to the vocabulary ({shown!r}); "
                         f"use words from the training captions ({len(self)} words)")
    return ids

  def encode(self, text, source="caption"):
    """Tokenizes `text` and maps it to ids (unknown words dropped)."""
    return self.encode_tokens(tokenize(text), source=source)

  def decode(self, ids):
    """Ids -> space-joined words; padding (0) is skipped."""
    return " ".join(self._words[int(i)] for i in ids if int(i) != 0)
