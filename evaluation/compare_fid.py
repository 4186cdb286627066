r"""Official TensorFlow FID and both PyTorch FIDs on the same image files, one table (paper §7.5).

    python -m evaluation.compare_fid --images DIR --reference DIR|stats.npz \
        [--fid_inception_dir D] [--pytorch_fid auto|package|emulated] \
        [--torchvision_inception inception_v3_google-*.pth|image_encoder200.pth] \
        [--dmgan_batch_size 64] [--nodecompose] [--save_stats DIR]

The three FIDs, each from a different network or preprocessing, all with the same distance code:
- official TF FID (TTUR): the official 2015-12-05 network (Keras port, `--fid_inception_dir`) as
  the TF graph runs it: TF1 legacy bilinear resize to 299 (no half-pixel offset),
  (x - 128) / 128, `pool_3`, every image, float64 statistics.
- current pytorch-fid (0.3.0): the same 2015-12-05 weights with PyTorch preprocessing. With the
  `pytorch-fid` package when it is usable (its own loader, resize and network; it needs
  torchvision and `pt_inception-2015-12-05-6726825d.pth` in `$TORCH_HOME/hub/checkpoints`),
  otherwise emulated on the Keras port: PIL -> [0, 1] -> `F.interpolate(bilinear,
  align_corners=False)` (half-pixel centres) -> 2x - 1.
- DM-GAN-style PyTorch FID (old pytorch-fid before its PR #16, DM-GAN's `eval/FID`, the "PyTorch"
  numbers in DM-GAN's README): torchvision's ImageNet Inception-v3 weights
  (`--torchvision_inception`: torchvision's `inception_v3_google-*.pth`, or, approximately,
  AttnGAN's `image_encoder200.pth`: its trunk has the ImageNet weights but BN running statistics
  updated by AttnGAN's DAMSM pretraining, which ran it in train mode), torchvision's architecture
  (average pools counting padding, no max pool in Mixed_7c), DM-GAN's preprocessing: PIL bilinear
  resize of the uint8 image to 299, `ToTensor` ([0, 1]), `align_corners=True` upsampling (a no-op
  at 299), torchvision's `transform_input` normalisation (x * std/0.5 + (mean - 0.5)/0.5 with the
  ImageNet mean/std); the last partial batch of `--dmgan_batch_size` (DM-GAN's default 64) is
  dropped, in sorted file order (DM-GAN's loader walks folders in os.walk order, recursively).
  Without `--torchvision_inception` this row names the flag instead of a value.
Then (unless --nodecompose) the effect of each preprocessing difference of the current
pytorch-fid alone (resize rule; normalisation). Deltas are against the official FID. Anything
computed with weights that are not a checksummed release is marked UNVERIFIED WEIGHTS.
"""

if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

import importlib.util
import os
import warnings

import numpy as np

__all__ = ["compare", "format_table"]

PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"
# torch.hub's convention: the name's suffix is the first hex digits of the file's SHA-256.
# pytorch-fid loads the file without checking it (metrics_spec.md, 1.6), so this module does.
PYTORCH_FID_SHA256_PREFIX = "6726825d"


def _pytorch_fid_weights_path():
  import torch.hub  # pylint: disable=g-import-not-at-top
  return os.path.join(torch.hub.get_dir(), "checkpoints", PYTORCH_FID_WEIGHTS)


def _pytorch_fid_weights_note():
  """None when the pytorch-fid package's weights file is the released one (its SHA-256 starts
  with the name's suffix), else why its row is labelled UNVERIFIED WEIGHTS."""
  from msmt_tf import fileio  # pylint: disable=g-import-not-at-top
  path = _pytorch_fid_weights_path()
  digest = fileio.file_digest(path)
  if digest.startswith(PYTORCH_FID_SHA256_PREFIX):
    return None
  return (f"the pytorch-fid package's weights {path} are not the released file (SHA-256 "
          f"{digest[:16]}..., the name says {PYTORCH_FID_SHA256_PREFIX}...; pytorch-fid does not "
          "check it): its row is computed with other weights")


def _stats_of(extractor, images, batch_size, progress):
  from evaluation import features  # pylint: disable=g-import-not-at-top
  from evaluation import fid  # pylint: disable=g-import-not-at-top
  act, _ = features.activations(extractor, images, batch_size, progress=progress)
  return (*fid.statistics(act), len(act))


def _pytorch_fid_package_available():
  if importlib.util.find_spec("pytorch_fid") is None:
    return False, "pytorch-fid is not installed"
  try:
    import torch.hub  # pylint: disable=g-import-not-at-top,unused-import
    import torchvision  # pylint: disable=g-import-not-at-top,unused-import
  except Exception as e:  # torchvision fails to import beside some torch builds
    return False, f"pytorch-fid needs torchvision ({type(e).__name__}: {e})"
  path = _pytorch_fid_weights_path()
  if not os.path.isfile(path):
    return False, f"pytorch-fid's weights {path} are missing (they cannot be downloaded here)"
  return True, "pytorch-fid package"


def _package_skips(folder, extensions):
  """The image files of `folder` that the other rows read (`features.list_images`: any letter
  case) and the pytorch-fid package's case-sensitive glob `*.<ext>` does not."""
  from evaluation import features  # pylint: disable=g-import-not-at-top
  return [os.path.basename(f) for f in features.list_images(folder)
          if os.path.splitext(f)[1][1:] not in extensions]


def _package_extensions():
  from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top
  return set(getattr(fid_score, "IMAGE_EXTENSIONS", ()))


def _package_cannot_read(images, reference, notes=None):
  """Why the pytorch-fid package row cannot be computed on these folders (its glob leaves fewer
  than 2 images in one: a camera's *.JPG, say), or None; then the images its glob skips are
  said in `notes`."""
  from evaluation import features  # pylint: disable=g-import-not-at-top
  extensions = _package_extensions()
  said = []
  for folder in (images, reference):
    if extensions and not folder.endswith(".npz"):
      listed = len(features.list_images(folder))
      skipped = _package_skips(folder, extensions)
      if listed - len(skipped) < 2:
        return (f"its glob (lower-case extensions only) finds {listed - len(skipped)} of the "
                f"{listed} images in {folder}")
      if skipped:
        said.append(f"the pytorch-fid package row reads {len(skipped)} fewer images of {folder} "
                    f"than the other rows: its glob takes lower-case extensions only "
                    f"({', '.join(skipped[:3])}{', ...' if len(skipped) > 3 else ''})")
  if notes is not None:
    notes.extend(said)
  return None


def _pytorch_fid_package(images, reference, batch_size):
  from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top
  from pytorch_fid.inception import InceptionV3  # pylint: disable=g-import-not-at-top
  model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  mu1, s1 = fid_score.compute_statistics_of_path(images, model, batch_size, 2048, "cpu")
  if reference.endswith(".npz"):
    raise ValueError("the pytorch-fid package needs a reference folder, not statistics")
  mu2, s2 = fid_score.compute_statistics_of_path(reference, model, batch_size, 2048, "cpu")
  return mu1, s1, mu2, s2


DMGAN_ROW = "DM-GAN-style PyTorch FID (torchvision ImageNet weights, DM-GAN eval/FID)"


def _dmgan_files(folder, batch_size):
  """DM-GAN's DataLoader(drop_last=True): the images of whole batches only."""
  from evaluation import features  # pylint: disable=g-import-not-at-top
  files = features.list_images(folder)
  used = len(files) // batch_size * batch_size
  if not used:
    raise ValueError(f"{folder}: {len(files)} images, fewer than one DM-GAN batch "
                     f"(--dmgan_batch_size={batch_size}; DM-GAN drops the last partial batch)")
  return files[:used], len(files) - used


def _dmgan_fid(images, reference, torchvision_inception, batch_size, dmgan_batch_size, method,
               progress):
  from evaluation import features  # pylint: disable=g-import-not-at-top
  from evaluation import fid  # pylint: disable=g-import-not-at-top
  ext = features.TorchvisionExtractor(torchvision_inception)
  (gen, gen_dropped), (ref, ref_dropped) = (_dmgan_files(images, dmgan_batch_size),
                                            _dmgan_files(reference, dmgan_batch_size))
  g, r = (_stats_of(ext, gen, batch_size, progress), _stats_of(ext, ref, batch_size, progress))
  value = fid.frechet_distance(g[0], g[1], r[0], r[1], method)
  return value, ext, (g, r, gen_dropped, ref_dropped)


def compare(images, reference, fid_inception_dir=None, batch_size=50, pytorch_fid="auto",
            method=None, progress=False, torchvision_inception=None, dmgan_batch_size=64,
            decompose=True, save_stats=None):
  """{'rows': [(name, fid or None, comment)], 'notes': [...], ...} for the table: the official,
  current pytorch-fid and DM-GAN-style FIDs, then (with `decompose`) the FIDs with one
  preprocessing difference at a time (two more passes of the official network per folder).
  `save_stats`: a folder receiving `<row>-images.npz` / `<row>-reference.npz` (keys `mu`, `sigma`,
  the TTUR / pytorch-fid convention, plus `num_images` and `extractor`) per computed row."""
  from evaluation import features  # pylint: disable=g-import-not-at-top
  from evaluation import fid  # pylint: disable=g-import-not-at-top
  method = method or fid.default_method()
  ref_stats = None  # (mu, sigma, meta) of a statistics file given as --reference
  if fid.is_statistics_file(reference):  # read and checked before any network runs
    if not os.path.isfile(reference):
      raise FileNotFoundError(f"--reference {reference} does not exist")
    ref_stats = fid.load_statistics(reference)
    width = getattr(features.KerasExtractor, "feature_dim", None)  # the network's pool_3
    if width:
      fid.check_same_width(width, ref_stats[0], reference)
  # Checked before any network runs (a pass over a large folder takes minutes).
  for flag, folder in (("--images", images), ("--reference", reference)):
    if os.path.isdir(folder) and len(features.list_images(folder)) < 2:
      raise ValueError(f"FID needs at least 2 images in each set, but {flag} {folder} has 1")
  if save_stats and os.path.exists(save_stats) and not os.path.isdir(save_stats):
    raise ValueError(f"--save_stats {save_stats} is a file: give a folder (it receives "
                     "<row>-images.npz and <row>-reference.npz)")
  variants = {
      "official": dict(resize="legacy", normalize="graph"),
      "resize_only": dict(resize="half_pixel", normalize="graph"),
      "normalize_only": dict(resize="legacy", normalize="pytorch_fid"),
      "pytorch_emulated": dict(resize="half_pixel", normalize="pytorch_fid"),
  }
  from evaluation import inception  # pylint: disable=g-import-not-at-top
  notes = []
  use_package = False
  if pytorch_fid in ("auto", "package"):  # decided before any row is computed
    use_package, why = _pytorch_fid_package_available()
    if use_package:
      why = ("it needs a reference folder, not statistics" if ref_stats else
             _package_cannot_read(images, reference, notes))
      use_package = why is None
    if not use_package:
      if pytorch_fid == "package":
        raise RuntimeError(f"--pytorch_fid=package: {why}")
      notes.append(f"pytorch-fid package not used: {why}; its preprocessing is emulated")
  network = inception.load(fid_inception_dir)  # one copy of the weights for every variant
  stats, label, verified, saved = {}, None, None, {}
  for key, kw in variants.items():
    if ref_stats and key != "official":
      continue  # statistics files hold one preprocessing only
    if not decompose and key in ("resize_only", "normalize_only"):
      continue
    ext = features.KerasExtractor(fid_inception_dir, **kw, model=network)
    label, verified = label or ext.description, ext.verified if verified is None else verified
    gen = _stats_of(ext, images, batch_size, progress)
    if ref_stats:
      mu, sigma, meta = ref_stats
      fid.check_same_width(gen[0].size, mu, reference)
      ref = (mu, sigma, 0)  # 0: a statistics file is not written again (save_stats)
      ref_count = int(meta.get("num_images", 0))  # 0: not recorded in the file
    else:
      ref = _stats_of(ext, reference, batch_size, progress)
      ref_count = ref[2]
    stats[key] = fid.frechet_distance(gen[0], gen[1], ref[0], ref[1], method), gen[2], ref_count
    saved[key] = (gen, ref, ext.description)
  tag = "" if verified else "  [UNVERIFIED WEIGHTS]"
  rows = [("official TF FID (TTUR: legacy resize, (x-128)/128)", stats["official"][0], tag)]
  if use_package:
    mu1, s1, mu2, s2 = _pytorch_fid_package(images, reference, batch_size)
    weights_note = _pytorch_fid_weights_note()
    if weights_note:
      notes.append(weights_note)
    rows.append(("PyTorch FID (current pytorch-fid 0.3.0 package)", fid.frechet_distance(
        mu1, s1, mu2, s2, method), "  [UNVERIFIED WEIGHTS]" if weights_note else ""))
  if "pytorch_emulated" in stats:
    rows.append(("PyTorch FID (current pytorch-fid preprocessing, official weights)",
                 stats["pytorch_emulated"][0], tag))
  else:
    rows.append(("PyTorch FID (current pytorch-fid preprocessing, official weights)", None,
                 "n/a: the reference is a statistics file"))
  # DM-GAN-style (old pytorch-fid): torchvision's ImageNet network.
  if not torchvision_inception:
    rows.append((DMGAN_ROW, None, "n/a: set --torchvision_inception"))
    notes.append("DM-GAN-style PyTorch FID not computed: set --torchvision_inception=PATH "
                 "(torchvision's inception_v3_google-1a9a5a14.pth, or AttnGAN's "
                 "image_encoder200.pth; neither can be downloaded here)")
  elif ref_stats:
    rows.append((DMGAN_ROW, None, "n/a: needs a reference folder"))
  else:
    value, ext, (g, r, gen_dropped, ref_dropped) = _dmgan_fid(
        images, reference, torchvision_inception, batch_size, dmgan_batch_size, method, progress)
    n_gen, n_ref = g[2], r[2]
    saved["dmgan"] = (g, r, ext.description)
    rows.append((DMGAN_ROW, value, "" if ext.verified else "  [UNVERIFIED WEIGHTS]"))
    notes.append(f"DM-GAN-style network: {ext.label()}; {n_gen} / {n_ref} images used "
                 f"({gen_dropped} / {ref_dropped} dropped: last partial batch of "
                 f"{dmgan_batch_size})")
  if "resize_only" in stats:
    rows.append(("  resize rule only (half-pixel bilinear)", stats["resize_only"][0], tag))
    rows.append(("  normalisation only (x/127.5-1)", stats["normalize_only"][0], tag))
  elif ref_stats:
    notes.append("reference is a statistics file: only the official row can be computed")
  n_gen, n_ref = stats["official"][1], stats["official"][2]
  warning = fid.small_sample_warning(n_gen, n_ref, features.POOL3_DIM)  # every row: pool_3
  if warning:
    notes.append(warning)
  if not verified:
    notes.append("UNVERIFIED WEIGHTS: the Keras port's weights are not the checksummed official "
                 "ones")
  if save_stats:
    os.makedirs(save_stats, exist_ok=True)
    for key, (g, r, description) in saved.items():
      for part, st in (("images", g), ("reference", r)):
        if st[2]:  # a statistics-file reference is not written again
          fid.save_statistics(os.path.join(save_stats, f"{key}-{part}.npz"), st[0], st[1],
                              num_images=st[2], extractor=description)
    notes.append(f"statistics written to {save_stats} (<row>-images.npz, <row>-reference.npz)")
  return {"rows": rows, "notes": notes, "extractor": label, "verified": verified,
          "num_images": n_gen, "num_reference": n_ref, "method": method}


def format_table(result):
  """One table: per FID its value, and its delta (absolute, relative) to the official one."""
  official = result["rows"][0][1]
  width = max(len(r[0]) for r in result["rows"])
  lines = [f"{'FID':<{width}}  {'value':>10}  {'delta':>9}  {'rel':>8}"]
  for name, value, comment in result["rows"]:
    if value is None:
      lines.append(f"{name:<{width}}  {'-':>10}  {'-':>9}  {'-':>8}  {comment}")
      continue
    delta = value - official
    rel = delta / official if official else float("nan")
    lines.append(f"{name:<{width}}  {value:10.4f}  {delta:+9.4f}  {rel:+8.2%}{comment}")
  lines.append(f"images: {result['num_images']} generated, "
               f"{result['num_reference'] or 'an unknown number of'} reference; "
               f"official network: {result['extractor']}; distance: {result['method']}")
  lines.append("networks: official and current pytorch-fid rows: the 2015-12-05 TF Inception; "
               "DM-GAN-style row: torchvision's ImageNet Inception-v3. Causes of the deltas: "
               "resize rule (TF1 legacy vs half-pixel bilinear vs PIL), normalisation, for the "
               "package row backend numerics, for the DM-GAN row a different network and "
               "weights; the FIDs are not interchangeable (paper §7.5).")
  lines += [f"note: {n}" for n in result["notes"]]
  return "\n".join(lines)


def main(argv):
  from evaluation import flags as eval_flags  # pylint: disable=g-import-not-at-top
  del argv
  f = eval_flags.FLAGS

  def run():
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")  # the table carries the small-sample note itself
      return format_table(compare(f.images, f.reference, f.fid_inception_dir, f.eval_batch_size,
                                  f.pytorch_fid, f.fid_method, progress=True,
                                  torchvision_inception=f.torchvision_inception,
                                  dmgan_batch_size=f.dmgan_batch_size,
                                  decompose=f.decompose, save_stats=f.save_stats))
  eval_flags.run_cli(("images", "reference"), run, (FileNotFoundError, ValueError, RuntimeError))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  absl_flags.DEFINE_string("images", None, "Folder of generated images.")
  absl_flags.DEFINE_string("reference", None, "Folder of real images, or official stats .npz.")
  absl_flags.DEFINE_enum("pytorch_fid", "auto", ["auto", "package", "emulated"],
                         "PyTorch FID from the pytorch-fid package (auto: when usable) or the "
                         "emulation of its preprocessing.")
  absl_flags.DEFINE_string("save_stats", None, "Folder for the statistics of every row: "
                           "<row>-images.npz, <row>-reference.npz (keys mu, sigma).")
  absl_flags.DEFINE_bool("decompose", True, "Also compute the FIDs with only the resize rule "
                         "or only the normalisation of pytorch-fid (two more passes).")
  absl_flags.DEFINE_integer("dmgan_batch_size", 64,
                            "DM-GAN-style FID: batch size whose last partial batch is dropped "
                            "(DM-GAN eval/FID's default 64).")
  from evaluation import flags as _  # pylint: disable=g-import-not-at-top,unused-import
  app.run(main)
