r"""Fréchet Inception Distance with the official network (TTUR semantics).

    python -m evaluation.fid --images DIR --reference DIR|stats.npz \
        [--inception_source keras|graph|hub|torchvision] [--save_stats OUT.npz]

Activations (`pool_3`, every image, no dropped tail) -> float64 mean and unbiased covariance
(`np.cov`, ddof 1), cacheable as `.npz` with keys `mu` and `sigma` (the format TTUR and pytorch-fid
read and write) -> FID = |mu1 - mu2|^2 + Tr S1 + Tr S2 - 2 Tr sqrt(S1 S2).

The trace term comes from tensorflow-gan's eval math (`trace_sqrt_product`: symmetric square roots
by SVD, float64) by default, or `--fid_method=ttur`: TTUR's `calculate_frechet_distance`
behaviour, reproduced: `scipy.linalg.sqrtm(S1 @ S2)`; if the result has a non-finite entry, a
warning and `eps * I` (1e-6) added to both covariances; if it is complex with any diagonal
imaginary part above 1e-3 a `ValueError('Imaginary component ...')`, otherwise its real part.
Without TensorFlow (the GPU machine) the ttur route is used. Fewer images than the 2048 feature
dimensions make the covariances singular: allowed, but warned, as FID is then not comparable.
"""

if __name__ == "__main__":  # before TensorFlow is imported: its known-harmless native lines off
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

import hashlib
import os
import warnings
import zipfile

import numpy as np

__all__ = ["statistics", "save_statistics", "load_statistics", "frechet_distance",
           "frechet_distance_ttur", "fid_from_activations", "reference_statistics"]


def statistics(act):
  """(mu, sigma) of `[N, D]` activations in float64; sigma unbiased (N - 1)."""
  act = np.asarray(act, np.float64)
  if act.ndim != 2 or act.shape[0] < 2:
    raise ValueError(f"need [N >= 2, D] activations (at least 2 images), got shape {act.shape}")
  return act.mean(axis=0), np.cov(act, rowvar=False)


def save_statistics(path, mu, sigma, **meta):
  from msmt_tf import fileio  # pylint: disable=g-import-not-at-top

  def write(tmp):
    with open(tmp, "wb") as f:
      np.savez(f, mu=mu, sigma=sigma, **{k: np.asarray(v) for k, v in meta.items()})
  fileio.atomic_write(path, write)
  return path


def load_statistics(path):
  """(mu, sigma, meta) from a TTUR / pytorch-fid style `.npz`; names the file when wrong."""
  try:
    with np.load(path) as f:
      data = {k: f[k] for k in f.files}
  except FileNotFoundError:
    raise FileNotFoundError(f"FID statistics not found: {path}") from None
  except Exception as e:
    what = (("it holds Python objects (object arrays), not numeric statistics"
             if zipfile.is_zipfile(path) else "not a .npz file") if "allow_pickle" in str(e)
            else f"{type(e).__name__}: {e}")
    raise ValueError(f"cannot read FID statistics {path} ({what})") from e
  if "mu" not in data or "sigma" not in data:
    raise ValueError(f"{path} has no 'mu'/'sigma' arrays (keys: {sorted(data)})")
  mu, sigma = data.pop("mu").astype(np.float64), data.pop("sigma").astype(np.float64)
  if mu.ndim != 1 or sigma.shape != (mu.size, mu.size):
    raise ValueError(f"{path}: mu {mu.shape} and sigma {sigma.shape} do not match")
  if not (np.isfinite(mu).all() and np.isfinite(sigma).all()):
    raise ValueError(f"{path}: mu or sigma has non-finite values (NaN or inf)")
  return mu, sigma, {k: v.item() if v.ndim == 0 else v for k, v in data.items()}


def frechet_distance_ttur(mu1, sigma1, mu2, sigma2, eps=1e-6):
  """TTUR's / pytorch-fid's `calculate_frechet_distance` numerics (see the module doc)."""
  from scipy import linalg  # pylint: disable=g-import-not-at-top
  mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
  sigma1 = np.atleast_2d(sigma1).astype(np.float64)
  sigma2 = np.atleast_2d(sigma2).astype(np.float64)
  if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
    raise ValueError(f"statistics of different sizes: {mu1.shape} vs {mu2.shape}")
  diff = mu1 - mu2
  covmean = linalg.sqrtm(sigma1 @ sigma2)  # no `disp` argument: removed in SciPy 1.18
  if not np.isfinite(covmean).all():
    warnings.warn(f"fid calculation produces singular product; adding {eps} to diagonal of "
                  "cov estimates")
    offset = np.eye(sigma1.shape[0]) * eps
    covmean = linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise ValueError(f"Imaginary component {np.max(np.abs(covmean.imag))}")
    covmean = covmean.real
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def frechet_distance(mu1, sigma1, mu2, sigma2, method="tfgan"):
  """FID between two Gaussians; `method` 'tfgan' (TF-GAN's trace, float64) or 'ttur' (scipy)."""
  if method == "ttur":
    return frechet_distance_ttur(mu1, sigma1, mu2, sigma2)
  if method != "tfgan":
    raise ValueError(f"unknown FID method {method!r}: tfgan or ttur")
  from evaluation import _tfgan  # pylint: disable=g-import-not-at-top
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  if mu1.shape != mu2.shape or np.shape(sigma1) != np.shape(sigma2):
    raise ValueError(f"statistics of different sizes: {mu1.shape} vs {mu2.shape}")
  diff = mu1 - mu2
  return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2)
               - 2 * _tfgan.trace_sqrt_product(sigma1, sigma2))


def default_method():
  import importlib.util  # pylint: disable=g-import-not-at-top
  return "tfgan" if importlib.util.find_spec("tensorflow") else "ttur"


def small_sample_warning(num_images, num_reference, dim):
  """The warning for an FID from too few images, or None. `num_reference` 0 / None: unknown (a
  statistics file that does not record it), judged by `num_images` alone."""
  if min(num_images, num_reference or num_images) > dim:
    return None
  return (f"FID from {num_images} and {num_reference or 'an unknown number of'} images with "
          f"{dim}-d features: the covariances are singular; the value is not comparable with "
          "published FIDs (use >= 10,000 images, the paper uses 30,000)")


def fid_from_activations(act1, act2, method=None):
  warning = small_sample_warning(len(act1), len(act2), np.shape(act1)[1])
  if warning:
    warnings.warn(warning)
  return frechet_distance(*statistics(act1), *statistics(act2), method=method or default_method())


def _files_digest(files):
  """SHA-256 of the image files' names and contents: which images a cache's statistics are of
  (a moved or copied folder keeps it; an image added, removed or replaced changes it, also by
  one of the same size). Reading 30,000 PNGs takes seconds, Inception on them minutes."""
  from msmt_tf import fileio  # pylint: disable=g-import-not-at-top
  h = hashlib.sha256()
  for path in files:
    h.update(f"{os.path.basename(path)}\t{fileio.file_digest(path)}\n".encode("utf-8"))
  return h.hexdigest()


def folder_statistics(extractor, folder, batch_size=50, cache=None, progress=False, meta=None,
                      role="image"):
  """(mu, sigma, n) of an image folder, read from / written to `cache` (.npz) when given.

  `meta`: more values to record in a new cache and to require of an existing one (e.g. which
  dataset the folder shows). `role` names the folder in errors ('generated images', ...)."""
  from evaluation import features  # pylint: disable=g-import-not-at-top
  from msmt_tf import image_utils  # pylint: disable=g-import-not-at-top
  meta = {k: str(v) for k, v in (meta or {}).items()}
  if cache and os.path.isfile(cache):
    mu, sigma, found = load_statistics(cache)
    if found.get("extractor") not in (None, extractor.description):
      raise ValueError(f"{cache} was computed with {found.get('extractor')!r}, not "
                       f"{extractor.description!r}; delete it or choose another path")
    if found.get("convert") not in (None, str(image_utils.CONVERT_VERSION)):
      # None: a cache written before this check (by rule 1 or 2: unknown), accepted as before
      raise ValueError(f"{cache} was computed from images read by conversion rule "
                       f"{found.get('convert')}, and this version reads them by rule "
                       f"{image_utils.CONVERT_VERSION} (msmt_tf.image_utils.CONVERT_VERSION: "
                       "16-bit, palette or transparent images may give other pixels); delete it "
                       "or choose another path")
    for key, value in meta.items():
      if str(found.get(key)) != value:
        raise ValueError(f"{cache} was computed for {key} {found.get(key)!r}, not {value!r} "
                         f"(the {role} folder {folder}); delete it or choose another path")
    if not os.path.isdir(folder):  # statistics kept to score without the images
      warnings.warn(f"the {role} folder {folder} is not there: using the statistics in {cache} "
                    f"({found.get('num_images')} images of {found.get('folder')}) unchecked")
    elif found.get("files_sha256") not in (  # None: a cache written before 2026-11-27
        None, _files_digest(features.list_images(folder))):
      raise ValueError(f"{cache} holds the statistics of {found.get('num_images')} images of "
                       f"{found.get('folder')}, not of the images now in the {role} folder "
                       f"{folder} (their names or contents differ); delete it or choose another "
                       "path")
    return mu, sigma, int(found.get("num_images", 0))
  act, _ = features.activations(extractor, folder, batch_size, progress=progress)
  if len(act) < 2:
    raise ValueError(f"FID needs at least 2 images in each set, but the {role} folder {folder} "
                     f"has {len(act)}")
  mu, sigma = statistics(act)
  if cache:
    save_statistics(cache, mu, sigma, num_images=len(act), extractor=extractor.description,
                    convert=str(image_utils.CONVERT_VERSION), folder=os.path.abspath(folder),
                    files_sha256=_files_digest(features.list_images(folder)), **meta)
  return mu, sigma, len(act)


def is_statistics_file(reference):
  """Whether `--reference` names a statistics file (`.npz` in any letter case, or any file that
  exists) rather than a folder of images."""
  return reference.lower().endswith(".npz") or os.path.isfile(reference)


def check_same_width(width, mu_reference, reference):
  """Raises a ValueError naming the statistics file `reference` when its features are not
  `width` wide, the images' (statistics of another network or layer, e.g. pytorch-fid's
  --dims 768)."""
  if np.shape(mu_reference) != (width,):
    raise ValueError(f"{reference} holds statistics of {np.size(mu_reference)}-d features, the "
                     f"images' are {width}-d (FID's Inception pool_3: 2048): statistics of "
                     "another network or layer")


def reference_statistics(extractor, reference, batch_size=50, progress=False,
                         role="reference images (--reference)"):
  """(mu, sigma, n, label) of `reference`: a `.npz` of statistics or an image folder; n is 0
  for a statistics file that does not record its image count (TTUR's, pytorch-fid's)."""
  if is_statistics_file(reference):
    mu, sigma, meta = load_statistics(reference)
    made_by = meta.get("extractor")
    if made_by is not None and made_by != extractor.description:
      warnings.warn(f"{reference} was computed with {made_by!r}; comparing with "
                    f"{extractor.description!r} mixes pipelines")
    return mu, sigma, int(meta.get("num_images", 0)), reference
  mu, sigma, n = folder_statistics(extractor, reference, batch_size, progress=progress,
                                   role=role)
  return mu, sigma, n, reference


def check_stats_path(path):
  """Raises a ValueError naming `path` (--save_stats: a statistics .npz to write) when it cannot
  be written there: a folder, or in a folder that does not exist."""
  if os.path.isdir(path):
    raise ValueError(f"--save_stats {path} is a folder: give the path of a .npz file to write")
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise ValueError(f"--save_stats {path}: its folder {parent} does not exist")


def compute(extractor, images, reference, batch_size=50, method=None, save_stats=None,
            progress=False):
  """{'fid', 'num_images', 'num_reference', 'extractor', 'verified', ...} for two sources."""
  if save_stats:  # before the images are read: minutes of Inception otherwise lost
    check_stats_path(save_stats)
  ref_stats = None
  if is_statistics_file(reference):  # so is a statistics file, read and checked first
    ref_stats = reference_statistics(extractor, reference, batch_size, progress)
    if getattr(extractor, "feature_dim", None):
      check_same_width(extractor.feature_dim, ref_stats[0], reference)
  mu1, sigma1, n1 = folder_statistics(extractor, images, batch_size, save_stats, progress,
                                      role="generated images (--images)")
  mu2, sigma2, n2, ref = ref_stats or reference_statistics(extractor, reference, batch_size,
                                                           progress)
  check_same_width(mu1.size, mu2, reference)
  method = method or default_method()
  result = {"fid": frechet_distance(mu1, sigma1, mu2, sigma2, method), "num_images": n1,
            "num_reference": n2, "reference": ref, "method": method,
            "extractor": extractor.description, "verified": extractor.verified}
  warning = small_sample_warning(n1, n2, mu1.size)
  if warning:
    result["warning"] = warning
  return result


def format_result(name, result):
  from evaluation.features import unverified_tag  # pylint: disable=g-import-not-at-top
  fid = result["fid"]
  fid = 0.0 if -5e-5 < fid < 0 else fid  # rounding of identical statistics: not "-0.0000"
  return (f"{name}: {fid:.4f} ({result['num_images']} images vs "
          f"{result['num_reference'] or 'an unknown number of'} reference; "
          f"{result['extractor']})"
          f"{unverified_tag(result['verified'])}"
          + (f"; WARNING: {result['warning']}" if result.get("warning") else ""))


def main(argv):
  from evaluation import flags as eval_flags  # pylint: disable=g-import-not-at-top
  del argv
  f = eval_flags.FLAGS
  eval_flags.run_cli(("images", "reference"), lambda: format_result("FID", compute(
      eval_flags.extractor(), f.images, f.reference, f.eval_batch_size, f.fid_method,
      f.save_stats, progress=True)),
      stopped="a --save_stats file is written once the --images statistics are complete (one "
      "written is read by the same command instead of the images)" if f.save_stats else
      "nothing was written")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags as absl_flags  # pylint: disable=g-import-not-at-top
  absl_flags.DEFINE_string("images", None, "Folder of generated images.")
  absl_flags.DEFINE_string("reference", None, "Folder of real images, or statistics .npz.")
  absl_flags.DEFINE_string("save_stats", None, "Write/read the --images statistics here (.npz).")
  from evaluation import flags as _  # pylint: disable=g-import-not-at-top,unused-import
  app.run(main)
