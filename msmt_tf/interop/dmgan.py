r"""Imports DM-GAN's released generator (`G_NET` of DM-GAN's `code/model.py`) into our DM-GAN
ablation generator (`initial_stage='ig'`, `refinement='dmgan'`), and writes a run directory that
`msmt_tf.sample`, `evaluation.metric_main` and `msmt_tf.export` read like a training run.

    python -m msmt_tf.import_torch dmgan_generator --netG bird_DMGAN.pth \
        --flagfile=configs/cub_dmgan.cfg --damsm_dir runs/damsm_birds --out runs/cub_dmgan_released

The `.pth` file is read without PyTorch (`msmt_tf.interop.torch_io`: both `torch.save` formats,
`module.` prefixes of `nn.DataParallel` stripped). Key mapping (DM-GAN name -> ours; Linear
`[out, in]` and Conv1d `[out, in, 1]` weights are transposed to Dense kernels, Conv2d
`[out, in, kh, kw]` to `[kh, kw, in, out]`):

| DM-GAN `G_NET` | ours (`MSMTGenerator`) |
|---|---|
| `ca_net.fc` | `ca.fc` |
| `h_net1.fc.0` (Linear, no bias), `h_net1.fc.1` (BatchNorm1d) | `ig.fc`, `ig.bn` (outputs permuted, below) |
| `h_net1.upsample{1..4}.1` (conv), `.2` (BN) | `ig.trunk.up{0..3}.conv`, `.bn` |
| `h_net{2,3}.A`, `.B` | `refine{1,2}.A`, `.B` |
| `h_net{k}.M_w.0`, `.M_r.0`, `.key.0`, `.value.0` (Conv1d k=1) | `refine.M_w`, `.M_r`, `.key`, `.value` |
| `h_net{k}.response_gate.0` (Conv2d 1x1) | `refine.response_gate.gate` |
| `h_net{k}.residual.{i}.block.{0,1,3,4}` | `refine.res{i}.conv1`, `.bn1`, `.conv2`, `.bn2` |
| `h_net{k}.upsample.1`, `.2` | `refine.up.conv`, `.bn` |
| `img_net{1..3}.img.0` | `to_image{0..2}.conv` |

BatchNorm `weight, bias, running_mean, running_var` -> `gamma, beta, moving_mean,
moving_variance` (the live statistics the released file holds); `num_batches_tracked`
(PyTorch >= 0.4.1) is ignored. DM-GAN views the initial fc's output (after the GLU) as
channel-first `[16 ngf, 4, 4]`, ours as channel-last `[4, 4, 16 ngf]`: the fc's output columns
and its BatchNorm's parameters are permuted accordingly (the same function, reindexed).

The released `netG` holds DM-GAN's averaged (EMA) parameters with the live BatchNorm statistics;
the run's checkpoint (`checkpoints/ckpt-00000000.npz`, groups `generator` and `generator_ema`,
both the released weights; no discriminators or optimizer states, so the run can be sampled,
evaluated and exported but not resumed) is what `msmt_tf.runs.load_run` restores. Before
anything is written the file is checked: keys, shapes, dtypes and finite values (a NaN
weight would sample black images). The run's `flags.txt` holds the project's flags with the
values the run has (`--dmgan_word_mask` as recorded, `--run_dir` = `--out`), not absl's own.
`--overwrite` replaces only a folder an earlier import wrote (config.json has `imported`); a
training run's folder is refused, whatever the flags.

The memory read's word mask: DM-GAN's `Memory.forward` masks pixel q of sample b with the
padding of sample `(b * queryL + q) mod B` (interop.md §3). The imported run uses that
behaviour (`dmgan_word_mask='official_repeat'`) so its images equal `G_NET`'s for the same
batch, unless `--dmgan_word_mask` is given explicitly (`per_sample`: each pixel its own
caption's padding).
"""

import collections
import dataclasses
import os
import re
import shlex
import sys

import numpy as np

from msmt_tf import fileio
from msmt_tf.interop import paths
from msmt_tf.interop import torch_io

__all__ = ["DMGANImportError", "ImportReport", "key_map", "describe_state_dict",
           "assign_state_dict", "load_generator", "write_run", "define_flags",
           "run_from_flags", "main"]


class DMGANImportError(ValueError):
  """The state dict does not fit the configured DM-GAN generator (names the file and keys)."""


@dataclasses.dataclass
class ImportReport:
  """What an import assigned: counts and the keys it ignored."""
  source: str
  assigned_keys: int
  assigned_values: int
  ignored: list


# ----------------------------------------------------------------------------- transforms

def _linear(w):
  """torch Linear `[out, in]` -> Dense kernel `[in, out]`."""
  return np.ascontiguousarray(w.T) if w.ndim == 2 else w


def _conv1d(w):
  """torch Conv1d `[out, in, 1]` -> Dense kernel `[in, out]`."""
  return np.ascontiguousarray(w[:, :, 0].T) if w.ndim == 3 and w.shape[2] == 1 else w


def _conv2d(w):
  """torch Conv2d `[out, in, kh, kw]` -> Keras `[kh, kw, in, out]`."""
  return np.ascontiguousarray(w.transpose(2, 3, 1, 0)) if w.ndim == 4 else w


def _same(w):
  return w


def _init_fc_permutation(channels16, base=4):
  """Index map of the initial fc's outputs: ours `j` <- DM-GAN's `perm[j]`.

  Both split the `2 N` outputs (N = 16 ngf * 4 * 4) into GLU value / gate halves; inside a half
  ours is `(h * 4 + w) * 16 ngf + c` (channel-last reshape), DM-GAN's `c * 16 + h * 4 + w`
  (`view(-1, 16 ngf, 4, 4)`).
  """
  n = channels16 * base * base
  j = np.arange(2 * n)
  half, v = np.divmod(j, n)
  hw, c = np.divmod(v, channels16)
  return half * n + c * base * base + hw


def _permuted(perm, transform):
  def apply(w):
    w = transform(w)
    return np.ascontiguousarray(w[..., perm]) if w.shape and w.shape[-1] == perm.size else w
  return apply


# ----------------------------------------------------------------------------- key map

def _check_generator(generator):
  if generator.initial_stage != "ig" or generator.refinement != "dmgan":
    raise DMGANImportError(
        "DM-GAN's G_NET imports into the DM-GAN generator (--initial_stage=ig "
        f"--refinement=dmgan, e.g. --flagfile=configs/cub_dmgan.cfg); this config has "
        f"--initial_stage={generator.initial_stage} --refinement={generator.refinement}")


def key_map(generator):
  """`OrderedDict[DM-GAN key -> (our variable, transform)]` for an ig + dmgan generator."""
  _check_generator(generator)
  out = collections.OrderedDict()

  def add(key, variable, transform=_same):
    out[key] = (variable, transform)

  def bn(prefix, layer, transform=_same):
    add(f"{prefix}.weight", layer.gamma, transform)
    add(f"{prefix}.bias", layer.beta, transform)
    add(f"{prefix}.running_mean", layer.moving_mean, transform)
    add(f"{prefix}.running_var", layer.moving_variance, transform)

  def conv_bn(prefix_conv, prefix_bn, block_conv, block_bn):
    add(f"{prefix_conv}.weight", block_conv.kernel, _conv2d)
    bn(prefix_bn, block_bn)

  add("ca_net.fc.weight", generator.ca.fc.kernel, _linear)
  add("ca_net.fc.bias", generator.ca.fc.bias)
  init = generator.init_stage
  perm = _init_fc_permutation(16 * init.channels)
  add("h_net1.fc.0.weight", init.fc.kernel, _permuted(perm, _linear))
  bn("h_net1.fc.1", init.bn, _permuted(perm, _same))
  for i, block in enumerate(init.trunk.blocks):
    conv_bn(f"h_net1.upsample{i + 1}.1", f"h_net1.upsample{i + 1}.2", block.conv, block.bn)
  for k, stage in enumerate(generator.refine_stages):
    p = f"h_net{k + 2}"
    add(f"{p}.A.weight", stage.word_gate.kernel, _linear)
    add(f"{p}.B.weight", stage.image_gate.kernel, _linear)
    for name, layer in (("M_r", stage.image_memory), ("M_w", stage.word_memory),
                        ("key", stage.key), ("value", stage.value)):
      add(f"{p}.{name}.0.weight", layer.kernel, _conv1d)
      add(f"{p}.{name}.0.bias", layer.bias)
    add(f"{p}.response_gate.0.weight", stage.fuse.gate.kernel, _conv2d)
    add(f"{p}.response_gate.0.bias", stage.fuse.gate.bias)
    for i, block in enumerate(stage.res_blocks):
      r = f"{p}.residual.{i}.block"
      conv_bn(f"{r}.0", f"{r}.1", block.conv1, block.bn1)
      conv_bn(f"{r}.3", f"{r}.4", block.conv2, block.bn2)
    conv_bn(f"{p}.upsample.1", f"{p}.upsample.2", stage.up.conv, stage.up.bn)
  for k, to_image in enumerate(generator.to_images):
    add(f"img_net{k + 1}.img.0.weight", to_image.conv.kernel, _conv2d)
  return out


def describe_state_dict(state_dict):
  """DM-GAN's config values a `G_NET` state dict implies (for error messages), or {}."""
  info = {}
  try:
    if "ca_net.fc.weight" in state_dict:
      rows, text_dim = state_dict["ca_net.fc.weight"].shape
      info["CONDITION_DIM (--condition_dim)"] = rows // 4
      info["EMBEDDING_DIM (--text_dim)"] = text_dim
      if "h_net1.fc.0.weight" in state_dict:
        info["Z_DIM (--z_dim)"] = state_dict["h_net1.fc.0.weight"].shape[1] - rows // 4
    if "img_net1.img.0.weight" in state_dict:
      info["GF_DIM (--channels)"] = state_dict["img_net1.img.0.weight"].shape[1]
    branches = {int(m.group(1)) for k in state_dict for m in [re.match(r"img_net(\d+)\.", k)]
                if m}
    if branches:
      info["BRANCH_NUM (--num_stages)"] = max(branches)
    res = {int(m.group(1)) for k in state_dict
           for m in [re.match(r"h_net2\.residual\.(\d+)\.", k)] if m}
    if res:
      info["R_NUM (--num_res)"] = max(res) + 1
  except (AttributeError, ValueError, TypeError, IndexError):
    pass
  return info


def _strip_module(state_dict):
  keys = list(state_dict)
  if keys and all(k.startswith("module.") for k in keys):
    return collections.OrderedDict((k[len("module."):], v) for k, v in state_dict.items())
  return state_dict


# Keys that tell what a file other than G_NET is: (prefixes, what it is, where it goes).
_OTHER_FILES = (
    (("encoder.weight", "rnn.weight_ih_l0", "rnn.weight_hh_l0"),
     "AttnGAN's DAMSM text encoder (RNN_ENCODER)",
     "pass it to python -m msmt_tf.import_torch damsm --text_encoder"),
    (("emb_features.", "emb_cnn_code."),
     "AttnGAN's DAMSM image encoder (CNN_ENCODER)",
     "pass it to python -m msmt_tf.import_torch damsm --image_encoder"),
    (("Conv2d_1a_3x3.", "Mixed_"),
     "torchvision's Inception-v3 (an image network)", "it holds no generator"),
)


def _other_file_hint(state_dict):
  """What a state dict with none of G_NET's keys looks like instead, or None."""
  for prefixes, what, advice in _OTHER_FILES:
    found = [k for k in state_dict if k.startswith(prefixes)]
    if found:
      return (f"looks like {what} (keys such as {torch_io.key_examples(found, state_dict)}): "
              f"{advice}")
  return None


def _config_hint(state_dict, generator):
  info = describe_state_dict(state_dict)
  if not info:
    return ""
  ours = {"CONDITION_DIM (--condition_dim)": generator.condition_dim,
          "Z_DIM (--z_dim)": generator.z_dim, "GF_DIM (--channels)": generator.channels,
          "BRANCH_NUM (--num_stages)": generator.num_stages,
          "R_NUM (--num_res)": generator.num_res,
          "EMBEDDING_DIM (--text_dim)": generator.ca.fc.kernel.shape[0]}
  diff = [f"{k} = {v} in the file, {ours[k]} in the flags" for k, v in info.items()
          if k in ours and ours[k] != v]
  if diff:
    return "; the file looks like a DM-GAN generator with " + "; ".join(diff)
  return ""


def assign_state_dict(generator, state_dict, source="<state dict>"):
  """Assigns DM-GAN `G_NET` weights to `generator` (all or nothing).

  Args:
    generator: a built `MSMTGenerator` with initial_stage='ig', refinement='dmgan'.
    state_dict: mapping DM-GAN key -> numpy array (a `module.` prefix on every key is dropped).
    source: the file name, for error messages.

  Returns:
    `ImportReport`.

  Raises:
    DMGANImportError: missing or unexpected keys (or a DAMSM encoder file, said to be one), a
      shape mismatch, a non-float value or a NaN / Inf value; the message names `source`, the
      keys and (where it can tell) the config the file implies.
  """
  state_dict = _strip_module(state_dict)
  mapping = key_map(generator)
  ignored = [k for k in state_dict if k.endswith(".num_batches_tracked")
             and k[:-len("num_batches_tracked")] + "running_mean" in mapping]
  missing = [k for k in mapping if k not in state_dict]
  unexpected = [k for k in state_dict if k not in mapping and k not in ignored]
  if missing or unexpected:
    other = _other_file_hint(state_dict)
    if other and not any(k in mapping for k in state_dict):
      raise DMGANImportError(f"{source} is not a DM-GAN G_NET state dict: it {other}")
    attention = [k for k in unexpected if ".att.conv_context." in k]
    if attention and not any(".memory_operation." in k or ".key." in k for k in state_dict):
      raise DMGANImportError(
          f"{source} looks like AttnGAN's generator (its refinement stages hold AttnGAN's word "
          f"attention, keys such as {torch_io.key_examples(attention, state_dict)}, and no "
          "dynamic memory), not DM-GAN's G_NET: only DM-GAN's generators import (AttnGAN's "
          "DAMSM encoders import with python -m msmt_tf.import_torch damsm)")
    parts = []
    if missing:
      parts.append(f"missing keys: {torch_io.key_list(missing)}")
    if unexpected:
      parts.append(f"unexpected keys: {torch_io.key_list(unexpected)}")
    raise DMGANImportError(f"{source} is not a DM-GAN G_NET state dict for this config "
                           f"({'; '.join(parts)}){_config_hint(state_dict, generator)}")
  values, bad = [], []
  for key, (variable, transform) in mapping.items():
    raw = np.asarray(state_dict[key])
    if raw.dtype.kind != "f":
      bad.append(f"{key} has dtype {raw.dtype}, expected floating point")
      continue
    value = transform(raw.astype(np.float32, copy=False))
    if tuple(value.shape) != tuple(variable.shape):
      want = _torch_shape(transform, tuple(variable.shape))
      bad.append(f"{key} {list(raw.shape)} does not fit {variable.path}: "
                 + (f"{list(want)} expected" if want else
                    f"{list(variable.shape)} expected in Keras' layout"))
      continue
    values.append((variable, value))
  if bad:
    raise DMGANImportError(f"{source}: {len(bad)} tensor(s) do not fit this config: "
                           f"{torch_io.key_list(bad, 6)}{_config_hint(state_dict, generator)}")
  # NaN weights would import and sample all-black images.
  torch_io.check_finite(state_dict, source, DMGANImportError)
  for variable, value in values:
    variable.assign(value)
  return ImportReport(source=source, assigned_keys=len(values),
                      assigned_values=int(sum(v.size for _, v in values)), ignored=ignored)


def load_generator(netg_path, model_cfg, words_num, seed=0):
  """Builds the generator of `model_cfg` and loads DM-GAN's `netG` file into it.

  Returns:
    `(generator, ImportReport)`.

  Raises:
    FileNotFoundError, torch_io.TorchFileError: the file is missing (or a folder) or not a
      torch.save file.
    DMGANImportError: the weights do not fit `model_cfg`.
  """
  paths.check_file(netg_path, what="DM-GAN generator file")
  if model_cfg.initial_stage != "ig" or model_cfg.refinement != "dmgan":
    raise DMGANImportError(
        f"{netg_path}: DM-GAN's G_NET needs --initial_stage=ig --refinement=dmgan "
        f"(--flagfile=configs/cub_dmgan.cfg or coco_dmgan.cfg); got "
        f"--initial_stage={model_cfg.initial_stage} --refinement={model_cfg.refinement}")
  state_dict = torch_io.load_state_dict(netg_path, anchor="ca_net.fc.weight")
  generator = model_cfg.build_generator(words_num, seed=seed)
  report = assign_state_dict(generator, state_dict, netg_path)
  return generator, report


# What msmt_tf.train writes into a run directory besides config.json and checkpoints/.
_TRAINING_FILES = ("losses.jsonl", "generator_ema.keras", "samples", "tb")


def _check_out(out, overwrite):
  """Refuses an `out` that is a file, that holds a run not written by an import (`overwrite`
  would delete its checkpoints and leave its generator_ema.keras, losses and samples beside
  the imported weights), or an earlier import without `overwrite`."""
  from msmt_tf import checkpoint  # pylint: disable=g-import-not-at-top
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  paths.check_out_folder(out)
  if not os.path.isdir(out):
    return
  other = runs.folder_kind(out, ("dataset", "DAMSM folder"))
  if other:
    raise FileExistsError(
        f"--out {out} is a {other[0]} (it holds {other[1]}): an imported run needs a folder of "
        "its own (a DAMSM folder's encoders are replaced by its own --overwrite; a dataset's "
        "--overwrite deletes its folder); choose another --out (nothing was changed)")
  config_path = os.path.join(out, runs.CONFIG)
  has_config = os.path.isfile(config_path)
  if not (has_config or checkpoint.latest(out)):
    return
  try:
    imported = has_config and "imported" in runs.read_config(out)
  except ValueError:  # unreadable config.json: not known to be an import's
    imported = False
  if not imported:
    found = [n for n in (runs.CONFIG, "checkpoints") + _TRAINING_FILES
             if os.path.exists(os.path.join(out, n))]
    raise FileExistsError(
        f"{out} holds a training run ({', '.join(found)}; no \"imported\" in its config.json): "
        "choose another --out; --overwrite replaces only the folder of an earlier import "
        "(nothing was changed)")
  if not overwrite:
    raise FileExistsError(f"{out} already holds a run (config.json or checkpoints); choose "
                          "another --out or pass --overwrite")


def write_run(netg_path, out, model_cfg, data, damsm_dir, loss=None, flags_text=None,
              seed=0, overwrite=False):
  """Imports `netg_path` and writes the run directory `out`.

  Args:
    netg_path: DM-GAN's `netG_*.pth` (either torch.save format).
    out: run directory to create.
    model_cfg: `ModelConfig` (ig + dmgan; ngf, z, condition, R_NUM as the file).
    data: dict with `dataset`, `data_dir`, `words_num` (the training caption length the
      config names), optionally `batch_size`; recorded as a training run records it.
    damsm_dir: folder with the DAMSM `text_encoder.keras` (AttnGAN's encoders imported with
      `python -m msmt_tf.import_torch damsm`); recorded for sample / metric_main / export.
      Its vocabulary must be the config's.
    loss: optional dict recorded as the run's loss config (informational).
    flags_text: written to `flags.txt` (the command's flags).
    seed: seed of the generator's CA noise generator (sampling passes its own noise).
    overwrite: replace the config and checkpoints of a run an earlier import wrote (config.json
      has "imported"); a training run's folder is never replaced.

  Returns:
    `(checkpoint path, ImportReport)`.

  Raises:
    FileExistsError: `out` is a file, holds a training run, or (without `overwrite`) an
      earlier import; nothing is changed then.
  """
  from msmt_tf import checkpoint  # pylint: disable=g-import-not-at-top
  from msmt_tf import config  # pylint: disable=g-import-not-at-top
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  from msmt_tf.runs import load_damsm_encoder  # pylint: disable=g-import-not-at-top
  if not out:
    raise ValueError("--out (the run directory to write) is not set")
  _check_out(out, overwrite)
  if not damsm_dir:
    raise FileNotFoundError("--damsm_dir is not set: the run needs the DAMSM text encoder "
                            "(import AttnGAN's with python -m msmt_tf.import_torch damsm)")
  text_path = config.damsm_paths(damsm_dir)[0]
  if not os.path.isfile(text_path):
    raise FileNotFoundError(f"{text_path} not found: import AttnGAN's DAMSM encoders first "
                            "(python -m msmt_tf.import_torch damsm ... --out "
                            f"{shlex.quote(damsm_dir)})")
  text_encoder = load_damsm_encoder(text_path, "RNNTextEncoder")
  if text_encoder.vocab_size != model_cfg.vocab_size:
    raise ValueError(f"{text_path} has a {text_encoder.vocab_size}-word vocabulary, the config "
                     f"{model_cfg.vocab_size} (--vocab_size / the dataset's captions.pickle)")
  if text_encoder.hidden_dim != model_cfg.text_dim:  # the run could never be sampled
    raise ValueError(f"{text_path} has width {text_encoder.hidden_dim}, the generator reads "
                     f"{model_cfg.text_dim}-wide word features (--text_dim, DM-GAN's "
                     "TEXT.EMBEDDING_DIM: 256 for the released models): pass the DAMSM "
                     "encoders it was trained with (--damsm_dir); nothing was written")
  generator, report = load_generator(netg_path, model_cfg, data["words_num"], seed)
  record = {
      "model": {f.name: getattr(model_cfg, f.name) for f in dataclasses.fields(model_cfg)},
      "loss": dict(loss or {}),
      "data": {"dataset": data["dataset"], "data_dir": os.path.abspath(data["data_dir"]),
               "words_num": int(data["words_num"]),
               "batch_size": int(data.get("batch_size", 0)) or None, "seed": int(seed)},
      "damsm_dir": os.path.abspath(damsm_dir),
      # The text encoder the generator is imported with: sample / metric_main / export refuse
      # another one of the same width (an import into --damsm_dir with --overwrite since).
      "damsm_weights_sha256": {"text": runs.weights_sha256(text_encoder)},
      "imported": {"from": "DM-GAN G_NET (MinfengZhu/DM-GAN code/model.py)",
                   "netG": os.path.abspath(netg_path), "sha256": fileio.file_digest(netg_path),
                   "keys": report.assigned_keys, "values": report.assigned_values,
                   "ignored_keys": report.ignored,
                   "note": "generator and generator_ema hold the released (averaged) weights; "
                           "no discriminators or optimizer states: sample / evaluate / export "
                           "only, not resumable"},
  }
  os.makedirs(out, exist_ok=True)
  if overwrite:
    for _, old in checkpoint.list_checkpoints(out):
      os.remove(old)
  runs.write_run_files(out, record, flags_text or "")
  path = checkpoint.save(out, 0, {"generator": generator.variables,
                                  "generator_ema": generator.variables},
                         dict(record, epoch=0, batch_in_epoch=0), keep=1)
  return path, report


def _torch_shape(transform, keras_shape):
  """The shape, in the file's (PyTorch's) layout, that `transform` maps to `keras_shape` (a
  permutation of its dimensions: a transposed kernel), or None when none does."""
  import itertools  # pylint: disable=g-import-not-at-top
  if int(np.prod(keras_shape)) > 1 << 24:  # an error message is not worth 64 MB
    return None
  for shape in dict.fromkeys(itertools.permutations(keras_shape)):
    try:
      if tuple(transform(np.zeros(shape, np.float32)).shape) == keras_shape:
        return shape
    except Exception:  # pylint: disable=broad-except  (a reshape that cannot take it)
      continue
  return None


# ----------------------------------------------------------------------------- CLI

def define_flags(flag_values=None):
  """Defines the subcommand's flags (`--netG`, `--out`, `--overwrite`) where not yet defined.

  The model, data and `--damsm_dir` / `--dmgan_word_mask` flags are `msmt_tf.config`'s.
  """
  from absl import flags  # pylint: disable=g-import-not-at-top
  from msmt_tf import config  # pylint: disable=g-import-not-at-top,unused-import
  fv = flags.FLAGS if flag_values is None else flag_values  # an empty FlagValues is falsy
  if "netG" not in fv:
    flags.DEFINE_string("netG", None, "DM-GAN's released generator (netG_epoch_*.pth, "
                        "bird_DMGAN.pth, coco_DMGAN.pth).", flag_values=fv)
  if "out" not in fv:
    flags.DEFINE_string("out", None, "Output folder.", flag_values=fv)
  if "overwrite" not in fv:
    flags.DEFINE_bool("overwrite", False, "Replace an existing output.", flag_values=fv)
  for name in ("damsm_dir", "data_dir", "dmgan_word_mask"):
    flags.declare_key_flag(name, flag_values=fv)


def run_from_flags(flag_values=None):
  """Runs the import with the parsed flags; returns (checkpoint path, report, record path)."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from msmt_tf import config, runs  # pylint: disable=g-import-not-at-top
  fv = flags.FLAGS if flag_values is None else flag_values
  if not fv.netG:
    raise ValueError("--netG (DM-GAN's netG_*.pth) is not set")
  if not fv.out:
    raise ValueError("--out (the run directory to write) is not set")
  paths.check_file(fv.netG, "--netG", "DM-GAN generator file")
  paths.check_out_folder(fv.out)
  if not fv.data_dir:
    raise ValueError("--data_dir is not set (the dataset the run samples captions from)")
  vocab = config.resolve_vocab_size(fv.data_dir, fv.dataset, fv.vocab_size)
  names = [f.name for f in dataclasses.fields(config.ModelConfig) if f.name != "vocab_size"]
  values = {n: getattr(fv, n) for n in names}
  if not fv["dmgan_word_mask"].present:
    values["dmgan_word_mask"] = "official_repeat"  # the released models' behaviour
  model_cfg = config.ModelConfig(vocab_size=vocab, **values)
  loss = dataclasses.asdict(config.loss_config_from_flags())
  data = {"dataset": fv.dataset, "data_dir": fv.data_dir,
          "words_num": config.words_num_from_flags(), "batch_size": fv.batch_size}
  recorded = runs.recorded_flags(fv, {"dmgan_word_mask": model_cfg.dmgan_word_mask,
                                      "run_dir": fv.out})
  path, report = write_run(fv.netG, fv.out, model_cfg, data, fv.damsm_dir, loss, recorded,
                           fv.seed, fv.overwrite)
  return path, report, model_cfg


def main(argv):
  """absl main of `python -m msmt_tf.import_torch dmgan_generator`."""
  del argv
  try:
    path, report, model_cfg = run_from_flags()
  except (FileNotFoundError, FileExistsError, ValueError, torch_io.TorchFileError) as e:
    sys.exit(f"error: {e}")
  ignored = f", ignored {len(report.ignored)} num_batches_tracked" if report.ignored else ""
  print(f"imported {report.assigned_keys} tensors ({report.assigned_values:,} values{ignored}) "
        f"from {report.source}; word mask {model_cfg.dmgan_word_mask}; wrote {path}")
