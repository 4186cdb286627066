r"""Writes PNGs from a TF Serving REST endpoint serving an msmt_tf export, or from the export
itself, run in this process.

    python -m msmt_tf.serving_client --url http://HOST:8501 --model NAME [--seed 0]
        [--out samples/] "a red circle on the left" "a small blue square" ...
    python -m msmt_tf.serving_client --saved_model saved_models/NAME/VERSION [--seed 0]
        [--out samples/] "a red circle on the left" ...

Sends `POST {url}/v1/models/{model}[/versions/V]:predict` with the `generate_png` signature
(columnar `inputs`: captions, seed) and writes `<out>/0000.png`, `0001.png`, ...,
`<out>/captions.txt` (one caption per line, line breaks inside a caption as spaces) and
`<out>/request.json` (the exact request). An `--out` holding the images of another request is
refused unless `--overwrite` (which replaces that whole set); numbered PNGs no recorded request
made are never touched (refused). Needs absl-py and the standard library only (no TensorFlow
on the client).

`--saved_model DIR` calls the same signature of an export in this process instead (needs
TensorFlow; no server): the same captions and seed give the same bytes as TF Serving serving
DIR, so it checks an export before it is deployed, or makes images from one without a server.
"""

import base64
import binascii
import http.client
import json
import os
import re
import shlex
import socket
import sys
import urllib.error
import urllib.request

from absl import app
from absl import flags

__all__ = ["predict_png", "predict_png_here", "check_out", "write_pngs"]

FLAGS = flags.FLAGS


def define_flags():
  """The command's flags (defined when it runs, so the module's functions can be imported
  beside the project's own `--seed`)."""
  flags.DEFINE_string("url", "http://localhost:8501", "TF Serving REST address.")
  flags.DEFINE_string("model", None, "Model name in TF Serving (or give --saved_model).")
  flags.DEFINE_string("saved_model", None, "A SavedModel folder of msmt_tf.export "
                      "(saved_models/NAME/VERSION), run in this process instead of a server "
                      "(needs TensorFlow).")
  flags.DEFINE_integer("version", None, "Model version (default: the newest served).")
  flags.DEFINE_integer("seed", 0, "Noise seed: the same captions and seed give the same images.")
  flags.DEFINE_string("out", "samples", "Folder for the PNGs.")
  flags.DEFINE_float("timeout", 120.0, "HTTP timeout in seconds.")
  flags.DEFINE_bool("overwrite", False, "Replace the images of another request in --out.")

REQUEST_FILE = "request.json"
_NUMBERED_PNG = re.compile(r"^\d+\.png$")  # ours (0000.png) and msmt_tf.sample's (000000.png)
_TIMEOUTS = (TimeoutError, socket.timeout)  # the same class since Python 3.10


def predict_png(url, model, captions, seed=0, version=None, timeout=120.0):
  """Returns the PNG bytes for `captions`; raises RuntimeError naming the endpoint and what went
  wrong (the server's message, no connection, a timeout, a reply that is not the signature's).
  A failed in-graph check of the model comes as its own sentence, the captions it names by index
  quoted, without TensorFlow's lines about graph nodes (`_assertion`)."""
  path = (f"/v1/models/{model}" + (f"/versions/{version}" if version is not None else "")
          + ":predict")
  endpoint = url.rstrip("/") + path
  body = json.dumps({"signature_name": "generate_png",
                     "inputs": {"captions": list(captions), "seed": int(seed)}}).encode()
  request = urllib.request.Request(endpoint, data=body,
                                   headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      raw = response.read()
  except urllib.error.HTTPError as e:
    detail = e.read().decode(errors="replace")
    try:
      detail = json.loads(detail).get("error", detail)
    except (ValueError, AttributeError):
      pass
    if isinstance(detail, str):  # the model's sentence, as --saved_model prints it
      detail = _assertion(detail, captions)
    raise RuntimeError(f"{endpoint}: HTTP {e.code}: {detail}") from e
  except urllib.error.URLError as e:
    if isinstance(e.reason, _TIMEOUTS):  # no connection within the timeout
      raise RuntimeError(f"cannot reach {endpoint} within --timeout {timeout:g} s") from e
    raise RuntimeError(f"cannot reach {endpoint}: {e.reason}") from e
  except _TIMEOUTS as e:
    raise RuntimeError(f"{endpoint}: no reply within --timeout {timeout:g} s (a large batch on a "
                       "CPU server can take longer: raise --timeout)") from e
  except (http.client.HTTPException, OSError) as e:
    raise RuntimeError(f"{endpoint}: the connection failed ({type(e).__name__}: {e})") from e
  try:
    reply = json.loads(raw)
  except ValueError as e:
    raise RuntimeError(f"{endpoint}: the reply is not JSON (is {url} TF Serving's REST port?): "
                       f"{raw[:200]!r}") from e
  outputs = reply.get("outputs") if isinstance(reply, dict) else None
  if isinstance(outputs, dict):
    outputs = outputs.get("images_bytes")
  if not isinstance(outputs, list) or len(outputs) != len(captions):
    raise RuntimeError(f"{endpoint}: unexpected reply (expected {len(captions)} images_bytes)")
  try:
    return [base64.b64decode(o["b64"], validate=True) for o in outputs]
  except (KeyError, TypeError, binascii.Error) as e:
    raise RuntimeError(f"{endpoint}: unexpected reply (images_bytes not base64 PNGs: "
                       f"{type(e).__name__})") from e


def predict_png_here(saved_model, captions, seed=0):
  """Returns the PNG bytes of the export in folder `saved_model` for `captions`, its
  `generate_png` signature called in this process; raises RuntimeError naming the folder and
  what went wrong (no such folder, a model's folder of version folders, not a SavedModel, not an
  msmt_tf export, the model's INVALID_ARGUMENT message)."""
  if not os.path.isdir(saved_model):
    raise RuntimeError(f"--saved_model {saved_model}: no such folder")
  if not os.path.isfile(os.path.join(saved_model, "saved_model.pb")):
    versions = sorted((n for n in os.listdir(saved_model)
                       if n.isdigit() and os.path.isfile(os.path.join(saved_model, n,
                                                                      "saved_model.pb"))),
                      key=int)
    if versions:
      raise RuntimeError(
          f"--saved_model {saved_model} holds version{'s' * (len(versions) > 1)} "
          f"{', '.join(versions)} of a model (TF Serving's layout): give one, e.g. "
          f"--saved_model {shlex.quote(os.path.join(saved_model, versions[-1]))}")
    run = (shlex.quote(saved_model) if os.path.isdir(os.path.join(saved_model, "checkpoints"))
           else "RUN")  # a training run's folder: the export command for it
    raise RuntimeError(f"--saved_model {saved_model}: not a SavedModel (no saved_model.pb); "
                       f"make one with python -m msmt_tf.export --run_dir {run} --output "
                       "saved_models/NAME/1")
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  try:
    model = tf.saved_model.load(saved_model)
  except (OSError, ValueError, tf.errors.OpError) as e:
    raise RuntimeError(f"--saved_model {saved_model}: cannot load it ({type(e).__name__}: "
                       f"{str(e).splitlines()[0] if str(e) else ''})") from e
  if "generate_png" not in model.signatures:
    raise RuntimeError(f"--saved_model {saved_model}: not an msmt_tf export (no generate_png "
                       f"signature; it has {', '.join(sorted(model.signatures)) or 'none'})")
  try:
    out = model.signatures["generate_png"](captions=tf.constant(list(captions), tf.string),
                                           seed=tf.constant(int(seed), tf.int64))
  except tf.errors.InvalidArgumentError as e:
    raise RuntimeError(f"{saved_model}: INVALID_ARGUMENT: {_assertion(e.message, captions)}"
                       ) from e
  return list(out["images_bytes"].numpy())


def _assertion(message, captions):
  """The model's own sentence from a failed in-graph assertion (TensorFlow wraps it in lines
  about graph nodes and the compared values), with the captions named where the sentence ends
  in caption indices; other messages whole."""
  found = re.search(r"assertion failed: \[([^\]]*)\](?: \[([\d ]+)\])?", message)
  if not found:
    return message
  text, values = found.group(1), found.group(2)
  if values is None:
    return text
  named = [f"{i} ({captions[i]!r})" if 0 <= i < len(captions) else str(i)
           for i in map(int, values.split())]
  return f"{text} {', '.join(named)}"


def _png_names(count):
  """The names of a request's `count` images: 0000.png, 0001.png, ..."""
  return [f"{i:04d}.png" for i in range(count)]


def check_out(out, request, overwrite=False):
  """The PNGs of an earlier request in `out` that this one replaces (to remove before writing).

  The same request again (same captions, seed, url, model and version) is written over; another
  request's images are refused unless `overwrite`. Numbered PNGs that no recorded request made
  (the user's, `msmt_tf.sample`'s, a client's from before request.json) are never removed: the
  request is refused while they are there.
  """
  if not os.path.isdir(out):
    if os.path.exists(out):
      raise RuntimeError(f"--out {out} is a file, not a folder")
    return []
  pngs = sorted(n for n in os.listdir(out) if _NUMBERED_PNG.match(n))
  try:
    with open(os.path.join(out, REQUEST_FILE)) as f:
      earlier = json.load(f)
    ours = set(_png_names(len(earlier["captions"])))
  except (OSError, ValueError, KeyError, TypeError):
    earlier, ours = None, set()
  foreign = [n for n in pngs if n not in ours]
  if foreign:
    listed = ", ".join(foreign[:3]) + (", ..." if len(foreign) > 3 else "")
    raise RuntimeError(f"--out {out} holds {len(foreign)} numbered PNGs that no recorded "
                       f"request made ({listed}): they are left alone; choose another --out")
  mine = [n for n in pngs if n in ours]
  if not mine or earlier == request:
    return [n for n in mine if n not in _png_names(len(request["captions"]))]
  if not overwrite:
    raise RuntimeError(f"--out {out} holds the {len(mine)} images of another request "
                       f"({REQUEST_FILE}): choose another --out, or pass --overwrite to replace "
                       "them")
  return mine


def write_pngs(pngs, captions, out, request=None, stale=()):
  """Writes `<out>/<i>.png`, captions.txt and request.json; removes `stale` PNGs of an earlier
  request first."""
  os.makedirs(out, exist_ok=True)
  for name in stale:
    os.remove(os.path.join(out, name))
  paths = []
  for name, png in zip(_png_names(len(pngs)), pngs):
    path = os.path.join(out, name)
    with open(path, "wb") as f:
      f.write(png)
    paths.append(path)
  with open(os.path.join(out, "captions.txt"), "w") as f:
    f.write("".join(" ".join(c.splitlines()) + "\n" for c in captions))
  if request is not None:
    with open(os.path.join(out, REQUEST_FILE), "w") as f:
      json.dump(request, f, indent=1)
  return paths


def main(argv):
  captions = argv[1:]
  if not captions:
    sys.exit("error: give at least one caption")
  here = FLAGS.saved_model
  if here and (FLAGS.model or FLAGS.version is not None):
    sys.exit("error: --saved_model runs an export here; --model and --version name a model a "
             "server serves: give one or the other")
  if not here and not FLAGS.model:
    sys.exit("error: give --model (the name TF Serving serves the export under), or "
             "--saved_model DIR to run an export here without a server")
  if here:
    request = {"saved_model": os.path.abspath(here), "seed": FLAGS.seed,
               "captions": list(captions)}
  else:
    request = {"url": FLAGS.url, "model": FLAGS.model, "version": FLAGS.version,
               "seed": FLAGS.seed, "captions": list(captions)}
  try:
    stale = check_out(FLAGS.out, request, FLAGS.overwrite)  # before the (slow) request
    if here:
      pngs = predict_png_here(here, captions, FLAGS.seed)
    else:
      pngs = predict_png(FLAGS.url, FLAGS.model, captions, FLAGS.seed, FLAGS.version,
                         FLAGS.timeout)
  except RuntimeError as e:
    sys.exit(f"error: {e}")
  for path, caption in zip(write_pngs(pngs, captions, FLAGS.out, request, stale), captions):
    print(f"{path}: {caption}")


if __name__ == "__main__":
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()  # before --saved_model's TensorFlow: its harmless lines off
  define_flags()
  app.run(main)
