"""Imports AttnGAN's released DAMSM encoders (`text_encoder200.pth`, `image_encoder200.pth`).

The text encoder is AttnGAN's `RNN_ENCODER` (code/model.py): `encoder` = Embedding
`[ntoken, 300]`, `rnn` = one-layer bidirectional LSTM, 128 units per direction, `batch_first`,
run on packed sequences. Its state dict maps onto `msmt_tf.models.RNNTextEncoder`:

    encoder.weight                 [ntoken, 300]  -> embedding.embeddings
    rnn.weight_ih_l0{,_reverse}    [512, 300]     -> {forward,backward}_lstm kernel (transposed)
    rnn.weight_hh_l0{,_reverse}    [512, 128]     -> recurrent_kernel (transposed)
    rnn.bias_ih_l0 + rnn.bias_hh_l0 [512]         -> bias (Keras has one bias per LSTM)

PyTorch and Keras order the LSTM gates the same way (input, forget, cell, output). Packed
sequences make the backward direction start at each caption's last real word and give zero
outputs at padded steps; `RNNTextEncoder` does the same with its padding mask, so `words`
equals AttnGAN's `words_emb` (transposed, zero-padded to the token width) and `sentence` its
`sent_emb`.

The image encoder (AttnGAN `CNN_ENCODER`, torchvision's Inception-v3 trunk) is converted by
`msmt_tf.interop.attngan_image.image_encoder_from_state_dict`.
"""

import json
import os
import sys

import numpy as np

from msmt_tf.interop import paths
from msmt_tf.interop import torch_io

__all__ = ["WeightsMismatchError", "check_keys", "text_encoder_keys",
           "text_encoder_from_state_dict", "check_vocab", "read_vocab_size", "check_width",
           "import_damsm", "define_flags", "run_from_flags", "main", "MANIFEST_FILE"]

MANIFEST_FILE = "import_manifest.json"  # runs.IMPORT_MANIFEST (this module imports runs lazily)
_TEXT = "AttnGAN's RNN_ENCODER (LSTM, 1 layer, bidirectional)"
_DIRECTIONS = (("", "forward_layer"), ("_reverse", "backward_layer"))
_GNET_PREFIXES = ("ca_net.", "h_net1.", "img_net1.")  # the generator G_NET of AttnGAN, DM-GAN


class WeightsMismatchError(ValueError):
  """A weights file that does not fit the architecture, or a vocabulary that does not fit it."""


def text_encoder_keys(vocab_size, embedding_dim=300, hidden_dim=256):
  """{state-dict key: shape} of AttnGAN's `RNN_ENCODER` (LSTM, one layer, bidirectional)."""
  units = hidden_dim // 2
  keys = {"encoder.weight": (vocab_size, embedding_dim)}
  for suffix, _ in _DIRECTIONS:
    keys.update({f"rnn.weight_ih_l0{suffix}": (4 * units, embedding_dim),
                 f"rnn.weight_hh_l0{suffix}": (4 * units, units),
                 f"rnn.bias_ih_l0{suffix}": (4 * units,),
                 f"rnn.bias_hh_l0{suffix}": (4 * units,)})
  return keys


def check_keys(arrays, expected, source, what="the architecture"):
  """Raises `WeightsMismatchError` naming `source` and listing missing / unexpected keys and every
  tensor whose shape differs from `expected` ({key: shape})."""
  missing = [k for k in expected if k not in arrays]
  unexpected = [k for k in arrays if k not in expected]
  shapes = [f"{k}: {tuple(arrays[k].shape)} in the file, {tuple(v)} expected"
            for k, v in expected.items() if k in arrays and tuple(arrays[k].shape) != tuple(v)]
  problems = []
  if missing:
    problems.append(f"missing keys: {torch_io.key_list(missing)}")
  if unexpected:
    problems.append(f"unexpected keys: {torch_io.key_list(unexpected)}")
  if shapes:
    problems.append("shape mismatch: " + "; ".join(shapes))
  if problems:
    raise WeightsMismatchError(f"{source} does not fit {what}: "
                       + " | ".join(problems))


def _lstm_widths(arrays):
  """(embedding_dim, hidden_dim) of a consistent one-layer bidirectional LSTM `RNN_ENCODER`
  state dict (AttnGAN's `ninput` and `TEXT.EMBEDDING_DIM`: 300 and 256 in the released
  encoders, others where a user trained with another config), else AttnGAN's defaults (the key
  check then names what does not fit)."""
  emb = np.shape(arrays.get("encoder.weight", ()))
  ih = np.shape(arrays.get("rnn.weight_ih_l0", ()))
  hh = np.shape(arrays.get("rnn.weight_hh_l0", ()))
  if (len(emb) == 2 and len(ih) == 2 and len(hh) == 2 and ih[1] == emb[1] and ih[0] == hh[0]
      and hh[0] == 4 * hh[1] and hh[1] > 0):
    return int(emb[1]), 2 * int(hh[1])
  return 300, 256


def text_encoder_from_state_dict(arrays, source="<state dict>", embedding_dim=None,
                                 hidden_dim=None):
  """A built `RNNTextEncoder` holding the weights of AttnGAN's `RNN_ENCODER` state dict.

  Args:
    arrays: {key: numpy array} (`torch_io.load_state_dict`).
    source: the file's name, for errors.
    embedding_dim, hidden_dim: the word embedding's and the LSTM's width (both directions
      together); by default read from the file's shapes (AttnGAN's 300 and 256 in the released
      encoders).

  Raises:
    WeightsMismatchError: missing or unexpected keys, or any tensor of the wrong shape (all listed).
  """
  from msmt_tf.models import RNNTextEncoder  # pylint: disable=g-import-not-at-top
  widths = _lstm_widths(arrays)
  embedding_dim, hidden_dim = embedding_dim or widths[0], hidden_dim or widths[1]
  if "encoder.weight" not in arrays or np.ndim(arrays["encoder.weight"]) != 2:
    if any(k.startswith(("emb_features.", "emb_cnn_code.", "Mixed_")) for k in arrays):
      image_keys = [k for k in arrays if k.startswith(("emb_", "Mixed_"))]
      raise WeightsMismatchError(
          f"{source} is an image encoder (AttnGAN's CNN_ENCODER / Inception-v3 keys such as "
          f"{torch_io.key_examples(image_keys, arrays)}), not "
          f"{_TEXT}: pass it as --image_encoder and text_encoder*.pth as --text_encoder")
    if any(k.startswith(_GNET_PREFIXES) for k in arrays):
      gnet_keys = [k for k in arrays if k.startswith(_GNET_PREFIXES)]
      raise WeightsMismatchError(
          f"{source} looks like a generator G_NET (AttnGAN's or DM-GAN's; keys such as "
          f"{torch_io.key_examples(gnet_keys, arrays)}), not {_TEXT}: DM-GAN's imports with "
          "python -m msmt_tf.import_torch dmgan_generator --netG")
    check_keys(arrays, text_encoder_keys("ntoken", embedding_dim, hidden_dim), source, _TEXT)
  vocab_size = int(arrays["encoder.weight"].shape[0])
  expected = text_encoder_keys(vocab_size, embedding_dim, hidden_dim)
  try:
    check_keys(arrays, expected, source, _TEXT)
  except WeightsMismatchError as e:
    hh = np.shape(arrays.get("rnn.weight_hh_l0", ()))
    hint = (" (a GRU encoder? only AttnGAN's default RNN_TYPE 'LSTM' is supported)"
            if len(hh) == 2 and hh[0] == 3 * hh[1] else "")
    raise WeightsMismatchError(f"{e}{hint}") from None
  ints = [f"{k} ({arrays[k].dtype})" for k in expected if np.asarray(arrays[k]).dtype.kind != "f"]
  if ints:  # an index or count tensor where a weight belongs: not an encoder's weights
    raise WeightsMismatchError(f"{source} does not fit {_TEXT}: tensors that are not floating "
                               f"point: {torch_io.key_list(ints)}")
  model = RNNTextEncoder(vocab_size, embedding_dim=embedding_dim, hidden_dim=hidden_dim,
                         name="rnn_text_encoder")
  model.build((None, 1))
  f32 = lambda k: np.asarray(arrays[k], np.float32)
  model.embedding.embeddings.assign(f32("encoder.weight"))
  for suffix, layer in _DIRECTIONS:
    cell = getattr(model.rnn, layer).cell
    cell.kernel.assign(f32(f"rnn.weight_ih_l0{suffix}").T)
    cell.recurrent_kernel.assign(f32(f"rnn.weight_hh_l0{suffix}").T)
    cell.bias.assign(f32(f"rnn.bias_ih_l0{suffix}") + f32(f"rnn.bias_hh_l0{suffix}"))
  return model


def read_vocab_size(data_dir):
  """(vocabulary size, path) of `<data_dir>/captions.pickle`, read with the project's restricted
  unpickler and checked like the training data."""
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  path = os.path.join(data_dir, "captions.pickle")
  if not os.path.isfile(path):
    raise FileNotFoundError(
        f"{path} not found: the released encoders index words by the captions.pickle shipped "
        "with the preprocessed data (AttnGAN's birds.zip / coco.zip); put it in --data_dir")
  # The file exists, so load_captions only reads and checks it (the dataset name is used only
  # when it has to rebuild the vocabulary).
  _, _, vocab = datasets.load_captions(data_dir, None)
  return len(vocab), path


def check_vocab(vocab_size, vocab_path, rows, weights_path):
  """One-line error when captions.pickle and the embedding table disagree."""
  if vocab_size != rows:
    raise WeightsMismatchError(
        f"vocabulary mismatch: {vocab_path} has {vocab_size} words but the text encoder "
        f"{weights_path} embeds {rows} (encoder.weight [{rows}, ...]); use the captions.pickle "
        "the encoder was trained with")


def check_width(text_width, text_path, image_arrays, image_path):
  """One-line error when the image encoder's projection width (`nef`, the rows of
  `emb_features.weight`) is not the text encoder's feature width: DAMSM compares word and
  sentence features with image features (R-precision, the DAMSM losses), so a mixed pair would
  import and fail later with a broadcast error. A file without a 4-D `emb_features.weight` is
  left to the image importer's own checks."""
  w = image_arrays.get("emb_features.weight")
  if w is None or np.ndim(w) != 4 or w.shape[0] == text_width:
    return
  nef = int(w.shape[0])
  raise WeightsMismatchError(
      f"the DAMSM encoders differ in width: the text encoder {text_path} gives {text_width}-dim "
      f"word / sentence features ({text_width // 2} per LSTM direction), the image encoder "
      f"{image_path} {nef}-dim image features (emb_features.weight [{nef}, 768, 1, 1]); DAMSM "
      "compares the two, so pass the text and image encoder of one pretraining run")


def import_damsm(text_encoder, image_encoder, data_dir, out_dir, align_corners=True):
  """Converts AttnGAN's DAMSM `.pth` files into `out_dir/{text,image}_encoder.keras`.

  Everything is read and checked (vocabulary, keys, shapes, finite values, the two encoders'
  common width) before anything is written; each file is written atomically. `image_encoder`
  may be None (text encoder only; an `image_encoder.keras` already in `out_dir` is then
  removed, as it belongs to another pair).

  Args:
    text_encoder: AttnGAN `text_encoder*.pth` (RNN_ENCODER state dict, either torch.save
      format).
    image_encoder: AttnGAN `image_encoder*.pth` (CNN_ENCODER state dict) or None.
    data_dir: the dataset folder holding the `captions.pickle` the encoders were trained with.
    out_dir: the DAMSM folder to write (`--damsm_dir` of train / evaluation / export).
    align_corners: how CNN_ENCODER's `nn.Upsample(size=299, mode='bilinear')` resized
      (AttnGAN ran on PyTorch <= 0.3, which behaved as True; see the image importer).

  Returns:
    {'text_encoder': path, 'image_encoder': path or None, 'vocab_size': int}.

  Raises:
    FileExistsError: `out_dir` is a file.
    WeightsMismatchError: see `text_encoder_from_state_dict` and `check_vocab`; also a tensor
      with NaN / Inf values, or an image encoder whose width (`nef`) is not the text encoder's.
  """
  from msmt_tf import config, fileio, runs  # pylint: disable=g-import-not-at-top
  paths.check_out_folder(out_dir)
  vocab_size, vocab_path = read_vocab_size(data_dir)
  text_arrays = torch_io.load_state_dict(text_encoder, anchor="encoder.weight")
  rows = text_arrays.get("encoder.weight")
  if rows is not None and rows.ndim == 2:
    check_vocab(vocab_size, vocab_path, rows.shape[0], text_encoder)
  text_model = text_encoder_from_state_dict(text_arrays, text_encoder)
  torch_io.check_finite(text_arrays, text_encoder, WeightsMismatchError)
  image_model = None
  if image_encoder is not None:
    image_arrays = torch_io.load_state_dict(image_encoder, anchor="emb_features.weight")
    check_width(text_model.hidden_dim, text_encoder, image_arrays, image_encoder)
    # Before the (slow) Inception build; the trunk loader would name only the first bad key.
    torch_io.check_finite(image_arrays, image_encoder, WeightsMismatchError)
    from msmt_tf.interop import attngan_image  # pylint: disable=g-import-not-at-top
    try:
      image_model = attngan_image.image_encoder_from_state_dict(
          image_arrays, align_corners=align_corners, source=str(image_encoder))
    except (KeyError, ValueError) as e:
      if str(image_encoder) in str(e):
        raise
      raise WeightsMismatchError(f"{image_encoder}: {e}") from e
  os.makedirs(out_dir, exist_ok=True)
  text_path, image_path = config.damsm_paths(out_dir)
  runs.save_model(text_model, text_path)
  if image_model is not None:
    runs.save_model(image_model, image_path)
  elif os.path.exists(image_path):  # an older image encoder would not belong to this pair
    os.remove(image_path)
  manifest = {
      "source": "AttnGAN DAMSM (PyTorch)", "vocab_size": vocab_size,
      "captions": os.path.abspath(vocab_path),
      "text_encoder": {"file": os.path.abspath(text_encoder),
                       "sha256": fileio.file_digest(text_encoder)},
      "image_encoder": (None if image_encoder is None else
                        {"file": os.path.abspath(image_encoder),
                         "sha256": fileio.file_digest(image_encoder),
                         "align_corners": bool(align_corners)}),
  }
  fileio.atomic_write_bytes(os.path.join(out_dir, MANIFEST_FILE),
                            (json.dumps(manifest, indent=1) + "\n").encode())
  stale = os.path.join(out_dir, runs.PRETRAIN_RECORD)  # pretrain_damsm's, of replaced encoders
  if os.path.exists(stale):
    os.remove(stale)
  return {"text_encoder": text_path, "image_encoder": image_path if image_model else None,
          "vocab_size": vocab_size}


# ----------------------------------------------------------------------------- CLI

def define_flags(flag_values=None):
  """Defines the flags of `python -m msmt_tf.import_torch damsm` (where not yet defined;
  `--data_dir` is `msmt_tf.config`'s)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from msmt_tf import config  # pylint: disable=g-import-not-at-top,unused-import  (--data_dir)
  fv = flags.FLAGS if flag_values is None else flag_values  # an empty FlagValues is falsy
  specs = (
      ("string", "text_encoder", None, "AttnGAN's text encoder (text_encoder200.pth: "
       "RNN_ENCODER state dict, either torch.save format)."),
      ("string", "image_encoder", None, "AttnGAN's image encoder (image_encoder200.pth: "
       "CNN_ENCODER state dict). Without it only text_encoder.keras is written (enough for "
       "export; train and R-precision need both)."),
      ("string", "data_dir", None, "Dataset folder holding the captions.pickle the encoders "
       "were trained with (its vocabulary must have as many words as the embedding)."),
      ("string", "out", None, "DAMSM folder to write (use it as --damsm_dir)."),
      ("bool", "align_corners", True, "Resize of CNN_ENCODER's nn.Upsample to 299: True as "
       "AttnGAN's PyTorch <= 0.3 (and DM-GAN) did; False for PyTorch >= 0.4 semantics."),
      ("bool", "overwrite", False, "Replace encoders already in --out."),
  )
  for kind, name, default, help_text in specs:
    if name not in fv:
      getattr(flags, f"DEFINE_{kind}")(name, default, help_text, flag_values=fv)
    else:  # config's --data_dir: what it means to this command in its --help
      fv[name].help = help_text
  flags.declare_key_flag("data_dir", flag_values=fv)


def run_from_flags(flag_values=None):
  """Runs the import with the parsed flags; returns `import_damsm`'s result."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from msmt_tf import config  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS if flag_values is None else flag_values
  for name, what in (("text_encoder", "AttnGAN's text_encoder*.pth"),
                     ("data_dir", "the dataset folder with captions.pickle"),
                     ("out", "the DAMSM folder to write")):
    if not fv[name].value:
      raise ValueError(f"--{name} ({what}) is not set")
  for name in ("text_encoder", "image_encoder"):
    if fv[name].value:
      paths.check_file(fv[name].value, f"--{name}")
  paths.check_out_folder(fv.out)
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  other = runs.folder_kind(fv.out, ("run", "dataset"))
  if other:
    raise FileExistsError(
        f"--out {fv.out} is a {'training or imported run' if other[0] == 'run' else other[0]} "
        f"(it holds {other[1]}): the DAMSM encoders need a folder of their own (a run's "
        "generator is tied to the encoders it was made with); choose another --out (nothing "
        "was changed)")
  existing = [p for p in config.damsm_paths(fv.out) if os.path.exists(p)]
  if existing and not fv.overwrite:
    raise FileExistsError(f"{', '.join(existing)} already exist(s); pass --overwrite to replace")
  return import_damsm(fv.text_encoder, fv.image_encoder, fv.data_dir, fv.out, fv.align_corners)


def main(argv):
  """absl main of `python -m msmt_tf.import_torch damsm`."""
  del argv
  try:
    result = run_from_flags()
  except (FileNotFoundError, FileExistsError, ValueError) as e:  # incl. TorchFileError
    sys.exit(f"error: {e}")
  written = [p for p in (result["text_encoder"], result["image_encoder"]) if p]
  print(f"imported AttnGAN DAMSM encoders ({result['vocab_size']}-word vocabulary): wrote "
        f"{', '.join(written)}")
  if not result["image_encoder"]:
    print("note: no --image_encoder given: train and R-precision also need image_encoder.keras")
