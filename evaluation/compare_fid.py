r"""Official TensorFlow FID and PyTorch FID on the same image files, side by side (paper §7.5).

    python -m evaluation.compare_fid --images DIR --reference DIR|stats.npz \
        [--fid_inception_dir D] [--pytorch_fid auto|package|emulated]

Rows:
- official (TTUR): the official network as the TF graph runs it: TF1 legacy bilinear resize to
  299 (no half-pixel offset), (x - 128) / 128, `pool_3`, float64 statistics.
- PyTorch FID (pytorch-fid 0.3.0): with the `pytorch-fid` package when it is installed (its own
  loader, resize and network; it needs torchvision and its weights file
  `pt_inception-2015-12-05-6726825d.pth` in `$TORCH_HOME/hub/checkpoints`), otherwise its
  preprocessing emulated on the same official weights: PIL -> [0, 1] -> `F.interpolate(bilinear,
  align_corners=False)` (half-pixel centres) -> 2x - 1. pytorch-fid's network is the same
  2015-12-05 graph ported to PyTorch, so the emulation isolates the preprocessing.
- the effect of each preprocessing difference alone (resize rule; normalisation).

Both FIDs use the same distance code. What the delta is made of: the resize rule (the main term
for 64/128/256 px images upsampled to 299), the normalisation ((x-128)/128 vs x/127.5-1), and with
the real pytorch-fid package also backend numerics (convolution kernels) and the weights file.
The older pytorch-fid (before May 2019, used by DM-GAN's evaluation code) used torchvision's
ImageNet Inception weights instead and is not reproduced here (its weights cannot be had offline);
DM-GAN's README shows it differs from TF FID by 10-71 % on CUB and COCO.
"""

import importlib.util
import os
import warnings

import numpy as np

__all__ = ["compare", "format_table"]

PYTORCH_FID_WEIGHTS = "pt_inception-2015-12-05-6726825d.pth"


def _stats_of(extractor, images, batch_size, progress):
  from evaluation import features  # pylint: disable=g-import-not-at-top
  from evaluation import fid  # pylint: disable=g-import-not-at-top
  act, _ = features.activations(extractor, images, batch_size, progress=progress)
  return (*fid.statistics(act), len(act))


def _pytorch_fid_package_available():
  if importlib.util.find_spec("pytorch_fid") is None:
    return False, "pytorch-fid is not installed"
  try:
    import torch.hub  # pylint: disable=g-import-not-at-top
    import torchvision  # pylint: disable=g-import-not-at-top,unused-import
  except Exception as e:  # torchvision fails to import beside some torch builds
    return False, f"pytorch-fid needs torchvision ({type(e).__name__}: {e})"
  path = os.path.join(torch.hub.get_dir(), "checkpoints", PYTORCH_FID_WEIGHTS)
  if not os.path.isfile(path):
    return False, f"pytorch-fid's weights {path} are missing (they cannot be downloaded here)"
  return True, "pytorch-fid package"


def _pytorch_fid_package(images, reference, batch_size):
  from pytorch_fid import fid_score  # pylint: disable=g-import-not-at-top
  from pytorch_fid.inception import InceptionV3  # pylint: disable=g-import-not-at-top
  model = InceptionV3([InceptionV3.BLOCK_INDEX_BY_DIM[2048]]).eval()
  mu1, s1 = fid_score.compute_statistics_of_path(images, model, batch_size, 2048, "cpu")
  if reference.endswith(".npz"):
    raise ValueError("the pytorch-fid package needs a reference folder, not statistics")
  mu2, s2 = fid_score.compute_statistics_of_path(reference, model, batch_size, 2048, "cpu")
  return mu1, s1, mu2, s2


def compare(images, reference, fid_inception_dir=None, batch_size=50, pytorch_fid="auto",
            method=None, progress=False):
  """Rows of (name, fid, description) and notes, for the table."""
  from evaluation import features  # pylint: disable=g-import-not-at-top
  from evaluation import fid  # pylint: disable=g-import-not-at-top
  method = method or fid.default_method()
  if reference.endswith(".npz") and not os.path.isfile(reference):
    raise FileNotFoundError(f"--reference {reference} does not exist")
  variants = {
      "official": dict(resize="legacy", normalize="graph"),
      "resize_only": dict(resize="half_pixel", normalize="graph"),
      "normalize_only": dict(resize="legacy", normalize="pytorch_fid"),
      "pytorch_emulated": dict(resize="half_pixel", normalize="pytorch_fid"),
  }
  from evaluation import inception  # pylint: disable=g-import-not-at-top
  network = inception.load(fid_inception_dir)  # one copy of the weights for every variant
  stats, label, verified = {}, None, None
  for key, kw in variants.items():
    if reference.endswith(".npz") and key != "official":
      continue  # statistics files hold one preprocessing only
    ext = features.KerasExtractor(fid_inception_dir, **kw, model=network)
    label, verified = label or ext.description, ext.verified if verified is None else verified
    gen = _stats_of(ext, images, batch_size, progress)
    if reference.endswith(".npz"):
      mu, sigma, _ = fid.load_statistics(reference)
      ref = (mu, sigma, 0)
    else:
      ref = _stats_of(ext, reference, batch_size, progress)
    stats[key] = fid.frechet_distance(gen[0], gen[1], ref[0], ref[1], method), gen[2], ref[2]
  rows = [("official TF FID (TTUR: legacy resize, (x-128)/128)", stats["official"][0])]
  notes = []
  use_package = False
  if pytorch_fid in ("auto", "package"):
    use_package, why = _pytorch_fid_package_available()
    if not use_package:
      if pytorch_fid == "package":
        raise RuntimeError(why)
      notes.append(f"pytorch-fid package not used: {why}; its preprocessing is emulated")
  if use_package:
    mu1, s1, mu2, s2 = _pytorch_fid_package(images, reference, batch_size)
    rows.append(("PyTorch FID (pytorch-fid 0.3.0 package)", fid.frechet_distance(
        mu1, s1, mu2, s2, method)))
  if "pytorch_emulated" in stats:
    rows.append(("PyTorch FID (pytorch-fid preprocessing, official weights)",
                 stats["pytorch_emulated"][0]))
    rows.append(("  resize rule only (half-pixel bilinear)", stats["resize_only"][0]))
    rows.append(("  normalisation only (x/127.5-1)", stats["normalize_only"][0]))
  else:
    notes.append("reference is a statistics file: only the official row can be computed")
  n_gen, n_ref = stats["official"][1], stats["official"][2]
  if min(n_gen, n_ref or n_gen) <= 2048:
    notes.append(f"{n_gen} / {n_ref or '?'} images: fewer than 2048, covariances are singular; "
                 "absolute values are not comparable with published FIDs")
  if not verified:
    notes.append("UNVERIFIED WEIGHTS: the Keras port's weights are not the checksummed official "
                 "ones")
  return {"rows": rows, "notes": notes, "extractor": label, "verified": verified,
          "num_images": n_gen, "num_reference": n_ref, "method": method}


def format_table(result):
  official = result["rows"][0][1]
  width = max(len(r[0]) for r in result["rows"])
  lines = [f"{'FID':<{width}}  {'value':>10}  {'delta':>9}  {'rel':>8}"]
  for name, value in result["rows"]:
    delta = value - official
    rel = delta / official if official else float("nan")
    lines.append(f"{name:<{width}}  {value:10.4f}  {delta:+9.4f}  {rel:+8.2%}")
  lines.append(f"images: {result['num_images']} generated, {result['num_reference']} reference; "
               f"network: {result['extractor']}; distance: {result['method']}")
  lines.append("causes of the delta: resize rule (TF1 legacy vs half-pixel bilinear to 299), "
               "normalisation ((x-128)/128 vs x/127.5-1), and for the package row backend "
               "numerics; the two FIDs are not interchangeable (paper §7.5).")
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
                                  f.pytorch_fid, f.fid_method, progress=True))
  eval_flags.run_cli(("images", "reference"), run, (FileNotFoundError, ValueError, RuntimeError))


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  absl_flags.DEFINE_string("images", None, "Folder of generated images.")
  absl_flags.DEFINE_string("reference", None, "Folder of real images, or official stats .npz.")
  absl_flags.DEFINE_enum("pytorch_fid", "auto", ["auto", "package", "emulated"],
                         "PyTorch FID from the pytorch-fid package (auto: when usable) or the "
                         "emulation of its preprocessing.")
  from evaluation import flags as _  # pylint: disable=g-import-not-at-top,unused-import
  app.run(main)
