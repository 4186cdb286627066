"""One home for run directories and model artefacts: reading and writing them.

A run directory (written by `msmt_tf.train`, or by `msmt_tf.import_torch dmgan_generator`):

    <run_dir>/config.json            the resolved configuration (model, loss, data, damsm_dir, ...)
    <run_dir>/flags.txt              the flags it was started with
    <run_dir>/checkpoints/ckpt-<step>.npz   see msmt_tf.checkpoint
    <run_dir>/losses.jsonl, samples/, tb/, generator_ema.keras   (training only)

A DAMSM folder (`--damsm_dir`, written by `msmt_tf.pretrain_damsm` or `import_torch damsm`):

    <damsm_dir>/text_encoder.keras   RNNTextEncoder
    <damsm_dir>/image_encoder.keras  ImageEncoder
    <damsm_dir>/pretrain_record.json finished or a snapshot of an earlier epoch (pretrain_damsm)

Entry points (train, export, sample, import_torch) and `evaluation/` read and write these only
through this module, which imports no entry point.
"""

import copy
import hashlib
import json
import os
import shlex

from msmt_tf import checkpoint
from msmt_tf import config
from msmt_tf import fileio

__all__ = ["CONFIG", "FLAGS_FILE", "PRETRAIN_RECORD", "IMPORT_MANIFEST", "read_config",
           "write_run_files", "load_damsm_encoder", "load_damsm", "read_pretrain_record",
           "damsm_snapshot_note", "save_model", "load_run", "damsm_provenance", "recorded_flags",
           "weights_sha256", "encoder_digests", "changed_encoders", "check_vocabulary",
           "check_damsm_vocabulary", "check_run_vocabulary", "load_run_text_encoder", "step_checkpoint",
           "with_checkpoint_encoders", "FOLDER_MARKERS", "folder_kind"]

CONFIG = "config.json"
FLAGS_FILE = "flags.txt"
PRETRAIN_RECORD = "pretrain_record.json"
IMPORT_MANIFEST = "import_manifest.json"  # import_torch damsm's (interop.damsm.MANIFEST_FILE)

# The files that make a folder a dataset, a DAMSM folder or a run: each gets a folder of its own
# (a dataset's --overwrite deletes the folder; pretrain_damsm and import --overwrite replace the
# encoders a run was trained with).
FOLDER_MARKERS = {
    "dataset": ("captions.pickle", "dataset_spec.json", os.path.join("train", "filenames.pickle")),
    "DAMSM folder": ("text_encoder.keras", "image_encoder.keras", PRETRAIN_RECORD,
                     IMPORT_MANIFEST),
    "run": (CONFIG, "checkpoints"),
}


def folder_kind(folder, kinds):
  """`(kind, file)`: the first of `kinds` (FOLDER_MARKERS' keys) that `folder` holds a marker
  file of, and that file; None when none."""
  for kind in kinds:
    for name in FOLDER_MARKERS[kind]:
      if os.path.exists(os.path.join(folder, name)):
        return kind, name
  return None


# Packages whose flags a run's flags.txt records; absl (--nohelp, --verbosity, --test_tmpdir,
# ...) and TensorFlow define further flags on import that say nothing about the run.
_PROJECT_PACKAGES = ("msmt_tf", "evaluation")


def recorded_flags(flag_values, overrides=None):
  """A run's flags.txt: the project's flags, as `flags_into_string` writes them (by defining
  module, then name; unset flags left out), without absl's and TensorFlow's own (a flagfile
  naming those fails in a process that did not import them: TensorFlow's under JAX).

  Args:
    flag_values: the parsed `FlagValues`.
    overrides: {flag name: value} the run has where it differs from the command line (for an
      imported run: the word mask the import chose, `--run_dir` = `--out`); flags not defined
      are skipped.
  """
  overrides = dict(overrides or {})
  lines, seen = [], set()
  for module, module_flags in sorted(flag_values.flags_by_module_dict().items()):
    if module.split(".")[0] not in _PROJECT_PACKAGES:
      continue
    for flag in sorted(module_flags, key=lambda f: f.name):
      if flag.name in seen:
        continue
      seen.add(flag.name)
      if flag.name in overrides:
        flag = copy.deepcopy(flag)
        flag.value = overrides[flag.name]
      if flag.value is not None:
        lines.append(flag.serialize() + "\n")
  return "".join(lines)


def read_config(run_dir):
  """The run's config.json as a dict; names the file when it is missing or unreadable."""
  path = os.path.join(run_dir, CONFIG)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{path} not found: --run_dir must be a msmt_tf.train run (or an "
                            "imported one)")
  try:
    with open(path) as f:
      return json.load(f)
  except (OSError, ValueError) as e:
    raise ValueError(f"cannot read {path}: {e}") from e


def write_run_files(run_dir, record, flags_text=None):
  """Writes config.json (atomically) and, when given, flags.txt."""
  os.makedirs(run_dir, exist_ok=True)
  if flags_text is not None:
    fileio.atomic_write_bytes(os.path.join(run_dir, FLAGS_FILE), flags_text.encode())
  fileio.atomic_write_bytes(os.path.join(run_dir, CONFIG), json.dumps(record, indent=1).encode())


def save_model(model, path):
  """Writes a Keras model archive (a DAMSM encoder, the EMA generator) atomically: a crash never
  leaves a half file."""
  fileio.atomic_write(path, model.save)


def load_damsm_encoder(path, kind):
  """Loads one DAMSM encoder archive; names the file when it is missing, unreadable or wrong."""
  import keras  # pylint: disable=g-import-not-at-top
  import msmt_tf.models  # pylint: disable=g-import-not-at-top,unused-import  (registers classes)
  if not os.path.isfile(path):
    folder = os.path.dirname(path)
    if os.path.isfile(os.path.join(folder, IMPORT_MANIFEST)):
      raise FileNotFoundError(
          f"DAMSM encoder not found: {path}; {folder} was imported from AttnGAN's files without "
          "this encoder: import it too with python -m msmt_tf.import_torch damsm "
          "--text_encoder ... --image_encoder ... --overwrite")
    moved = ("" if os.path.isdir(folder) else
             f" ({folder} does not exist: if the encoders moved, pass --damsm_dir with their new "
             "folder; a run trained with them needs those same encoders)")
    raise FileNotFoundError(
        f"DAMSM encoder not found: {path}{moved}; make the encoders with: python -m "
        f"msmt_tf.pretrain_damsm --flagfile=<same config> --damsm_dir={shlex.quote(folder)}")
  from msmt_tf.models import initialization  # pylint: disable=g-import-not-at-top
  try:
    with initialization.one_program_initialization():  # weights from the file: none computed
      model = keras.saving.load_model(path)
  except Exception as e:  # zip, h5 and deserialisation errors of a bad file
    raise ValueError(f"cannot load the DAMSM encoder {path} ({type(e).__name__}: {e}); "
                     "re-create it with python -m msmt_tf.pretrain_damsm") from e
  if type(model).__name__ != kind:
    raise ValueError(f"{path} holds a {type(model).__name__}, expected a {kind}")
  return model


def read_pretrain_record(damsm_dir):
  """`damsm_dir`'s pretrain_record.json as a dict (pretrain_damsm's: `complete`, `epoch`,
  `epochs`, `steps`, `max_steps`, `settings`, and `writing` while a snapshot is being saved), or
  None when it is missing or unreadable (imported encoders, or written before the record)."""
  try:
    with open(os.path.join(damsm_dir, PRETRAIN_RECORD)) as f:
      record = json.load(f)
  except (OSError, ValueError):
    return None
  return record if isinstance(record, dict) else None


def damsm_snapshot_note(damsm_dir):
  """A warning when `damsm_dir`'s encoders are a snapshot of an unfinished `pretrain_damsm`, or
  were being written when it stopped (its pretrain_record.json says so), else None (finished,
  imported, or written before the record)."""
  record = read_pretrain_record(damsm_dir)
  if record is None or record.get("complete", True):
    return None
  path = os.path.join(damsm_dir, PRETRAIN_RECORD)
  if record.get("writing"):
    return (f"the DAMSM encoders in {damsm_dir} were being written when pretrain_damsm stopped "
            f"(the snapshot of epoch {record.get('epoch')}; {path}): the two encoders may be of "
            "different epochs; make them again with pretrain_damsm --overwrite")
  return (f"the DAMSM encoders in {damsm_dir} are a snapshot of epoch {record.get('epoch')} of "
          f"{record.get('epochs')}, not finished encoders (pretrain_damsm stopped early; "
          f"{path}; pretrain_damsm --resume continues it): the GAN's DAMSM losses use them as "
          "they are")


def weights_sha256(*models):
  """SHA-256 of the models' weights (values and shapes, in order; not their names, which Keras
  numbers per process, nor dropout's seed states): a frozen encoder's identity. A file rewritten
  with the same weights, or moved, keeps it; encoders pretrained further do not."""
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  digest = hashlib.sha256()
  for model in models:
    for w in model.weights:
      value = np.ascontiguousarray(keras.ops.convert_to_numpy(w))
      digest.update(f"{value.dtype}{value.shape}".encode("utf-8"))
      digest.update(value.tobytes())
  return digest.hexdigest()


def encoder_digests(text_encoder, image_encoder):
  """What a run records of its frozen DAMSM encoders (config.json "damsm_weights_sha256")."""
  return {"text": weights_sha256(text_encoder), "image": weights_sha256(image_encoder)}


def changed_encoders(recorded, text_encoder, image_encoder=None, digests=None):
  """The names ("text", "image") of the encoders whose weights are not the ones a run recorded
  (`recorded`: its "damsm_weights_sha256"); [] when the same or nothing was recorded (runs
  before 2026-11-28). Runs of 2026-11-28 recorded one digest of both, checked only with both.
  `digests`: `encoder_digests` of the two, when already computed."""
  if not recorded:
    return []
  if isinstance(recorded, str):
    if image_encoder is None:
      return []
    same = recorded == weights_sha256(text_encoder, image_encoder)
    return [] if same else ["text", "image"]
  now = {"text": text_encoder, "image": image_encoder}
  return [k for k in ("text", "image")
          if now[k] is not None and k in recorded
          and recorded[k] != (digests[k] if digests else weights_sha256(now[k]))]


def check_vocabulary(trained_on, vocab, what, data_dir, advice):
  """Raises when `vocab` (the Vocabulary of `data_dir`) is not the one `what` was trained on:
  `trained_on` is the `Vocabulary.sha256` it recorded (None: made before 2026-11-28, not
  checked). The same size with other words or order is a dataset rebuilt from other captions,
  and the word numbers would then mean other words."""
  if trained_on and trained_on != vocab.sha256:
    raise ValueError(
        f"{what} was trained on another vocabulary than the one of {data_dir} ({len(vocab)} "
        f"words, but other words or order: SHA-256 {trained_on[:12]}... trained on, "
        f"{vocab.sha256[:12]}... in {data_dir}; a dataset rebuilt from other captions, or with "
        "another split or --min_word_count: the order follows the captions), so its "
        f"word numbers would mean other words: {advice}")


def check_damsm_vocabulary(damsm_dir, text_encoder, vocab, data_dir):
  """Raises unless the DAMSM encoders of `damsm_dir` were trained on `vocab` (that of
  `data_dir`): its size, and the words in order where pretrain_damsm recorded them (encoders
  pretrained since 2026-11-28; imported ones record none)."""
  text_path = config.damsm_paths(damsm_dir)[0] if damsm_dir else "the DAMSM text encoder"
  if text_encoder.vocab_size != len(vocab):
    raise ValueError(f"{text_path} was trained on a {text_encoder.vocab_size}-word vocabulary, "
                     f"the dataset {data_dir} has {len(vocab)} words; pretrain DAMSM on this "
                     "dataset")
  record = read_pretrain_record(damsm_dir) if damsm_dir else None
  trained_on = ((record or {}).get("settings") or {}).get("vocab_sha256")
  check_vocabulary(trained_on, vocab, text_path, data_dir,
                   "pretrain DAMSM on this dataset, or use the dataset it was pretrained on")


def load_damsm(damsm_dir, vocab, data_dir, text_dim=None):
  """Loads the frozen DAMSM encoders; a clear error names the command that makes them. They must
  have been trained on `vocab` (the Vocabulary of `data_dir`). `text_dim`: the GAN's --text_dim,
  which the encoders' width must equal."""
  if not damsm_dir:
    raise FileNotFoundError("--damsm_dir is not set: the GAN needs the DAMSM encoders; make them "
                            "with: python -m msmt_tf.pretrain_damsm --flagfile=<same config> "
                            "--damsm_dir=DIR")
  text_path, image_path = config.damsm_paths(damsm_dir)
  text = load_damsm_encoder(text_path, "RNNTextEncoder")
  image = load_damsm_encoder(image_path, "ImageEncoder")
  check_damsm_vocabulary(damsm_dir, text, vocab, data_dir)
  if text_dim is not None and (text.hidden_dim, image.nef) != (text_dim, text_dim):
    raise ValueError(
        f"the DAMSM encoders in {damsm_dir} have width {text.hidden_dim} (text) / {image.nef} "
        f"(image), the flags say --text_dim={text_dim}: pass the --text_dim they were "
        "pretrained with (the same config as pretrain_damsm), or pretrain them again")
  return text, image


def damsm_provenance(damsm_dir):
  """Which DAMSM encoders a folder holds, for metric records: AttnGAN's released ones imported
  by `import_torch damsm` (its import_manifest.json: source files and SHA-256), or encoders
  pretrained by this project (`pretrain_damsm`)."""
  manifest = os.path.join(damsm_dir, IMPORT_MANIFEST)
  if os.path.isfile(manifest):
    try:
      with open(manifest) as f:
        found = json.load(f)
      text = found.get("text_encoder") or {}
      return (f"AttnGAN DAMSM imported from {os.path.basename(text.get('file', '?'))} "
              f"(sha256 {str(text.get('sha256', '?'))[:12]})")
    except (OSError, ValueError):
      return f"imported (unreadable {manifest})"
  return "msmt_tf.pretrain_damsm (this project's encoders, not AttnGAN's)"


def check_run_vocabulary(record, vocab, run_dir, data_dir):
  """Raises unless `vocab` (that of `data_dir`) is the vocabulary the run (`record`, its
  config.json) was trained on: its size, and the words in order (runs since 2026-11-28)."""
  if len(vocab) != record["model"]["vocab_size"]:
    raise ValueError(f"{data_dir} has {len(vocab)} words, the run {run_dir} was trained on "
                     f"{record['model']['vocab_size']}: use the dataset it was trained on "
                     "(--data_dir)")
  check_vocabulary(record["data"].get("vocab_sha256"), vocab, f"the run {run_dir}", data_dir,
                   "use the dataset it was trained on (--data_dir)")


def with_checkpoint_encoders(record, saved):
  """`record` (config.json) with the DAMSM digests of the checkpoint record `saved`: the
  encoders that step was trained with (a run continued with --accept_new_damsm changed them at
  some step; config.json records the newest). `saved` None: not read, config.json's digests; a
  checkpoint written before the digests (2026-11-28) records none: not checked."""
  if saved is not None:
    record = dict(record, damsm_weights_sha256=saved.get("damsm_weights_sha256"))
  return record


def load_run_text_encoder(record, run_dir, damsm_dir=None):
  """The DAMSM text encoder of the run `run_dir` (`record`: its config.json): that of `damsm_dir`
  or of the folder the run recorded, refused unless it is the one the run was trained with (its
  width, and its weights where the run recorded them: runs since 2026-11-28)."""
  text_dim = record["model"]["text_dim"]
  damsm_dir = damsm_dir or record.get("damsm_dir")
  if not damsm_dir:
    raise FileNotFoundError(f"{os.path.join(run_dir, CONFIG)} records no DAMSM folder; pass "
                            "--damsm_dir")
  text_path = config.damsm_paths(damsm_dir)[0]
  text_encoder = load_damsm_encoder(text_path, "RNNTextEncoder")
  if text_encoder.hidden_dim != text_dim:
    raise ValueError(f"the DAMSM text encoder in {damsm_dir} has width "
                     f"{text_encoder.hidden_dim}, the run {run_dir} was trained with "
                     f"--text_dim={text_dim}: pass the run's own --damsm_dir")
  # The generator was trained on this encoder's word features: another one of the same width
  # (pretrained again or further since) gives other images, silently.
  digest = weights_sha256(text_encoder)
  if changed_encoders(record.get("damsm_weights_sha256"), text_encoder, digests={"text": digest}):
    how = (("imported with", "imported again since") if "imported" in record else
           ("trained with", "pretrained again or further since"))
    raise ValueError(
        f"the DAMSM text encoder {text_path} is not the one the run {run_dir} was {how[0]} "
        f"(other weights: SHA-256 {digest[:12]}..., the run's "
        f"{record['damsm_weights_sha256']['text'][:12]}...; {how[1]}): its generator would "
        f"read other word features; pass the encoders it was {how[0]} (--damsm_dir)")
  return text_encoder


def step_checkpoint(run_dir, step):
  """The checkpoint file of `--step step` in `run_dir`; an error lists the steps there are."""
  path = os.path.join(run_dir, "checkpoints", f"ckpt-{int(step):08d}.npz")
  if not os.path.isfile(path):
    steps = [s for s, _ in checkpoint.list_checkpoints(run_dir)]
    raise FileNotFoundError(f"no checkpoint for --step {step} in {run_dir} (have: {steps})")
  return path


def load_run(run_dir, step=None, damsm_dir=None, data_dir=None, report=None):
  """Returns (EMA generator, text encoder, Vocabulary, record) of a run; `record["step"]` is the
  restored checkpoint's step. Without `step`, the newest checkpoint that reads (damaged newer
  ones are renamed aside and passed to `report`, default: a warning on stderr)."""
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  record = read_config(run_dir)
  cfg = config.ModelConfig(**record["model"])
  words_num = record["data"]["words_num"]
  generator = cfg.build_generator(words_num)
  groups = {"generator_ema": generator.variables}
  if step is None:
    found = checkpoint.restore_newest(run_dir, groups, report=report)
    if found is None:
      raise FileNotFoundError(f"no checkpoint in {os.path.join(run_dir, 'checkpoints')}")
    step, saved = found[0], found[2]
  else:
    saved = checkpoint.restore(step_checkpoint(run_dir, step), groups)
  record = with_checkpoint_encoders(dict(record, step=int(step)), saved)
  text_encoder = load_run_text_encoder(record, run_dir, damsm_dir)
  data_dir = data_dir or record["data"]["data_dir"]
  _, _, vocab = datasets.load_captions(data_dir, record["data"]["dataset"])
  check_run_vocabulary(record, vocab, run_dir, data_dir)
  return generator, text_encoder, vocab, record
