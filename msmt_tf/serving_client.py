r"""Writes PNGs from a TF Serving REST endpoint serving an msmt_tf export.

    python -m msmt_tf.serving_client --url http://HOST:8501 --model NAME [--seed 0]
        [--out samples/] "a red circle on the left" "a small blue square" ...

Sends `POST {url}/v1/models/{model}[/versions/V]:predict` with the `generate_png` signature
(columnar `inputs`: captions, seed) and writes `<out>/<i>.png` plus `<out>/captions.txt`.
Standard library only (no TensorFlow needed on the client).
"""

import base64
import json
import os
import sys
import urllib.error
import urllib.request

from absl import app
from absl import flags

__all__ = ["predict_png", "write_pngs"]

FLAGS = flags.FLAGS
flags.DEFINE_string("url", "http://localhost:8501", "TF Serving REST address.")
flags.DEFINE_string("model", None, "Model name in TF Serving.", required=True)
flags.DEFINE_integer("version", None, "Model version (default: the newest served).")
flags.DEFINE_integer("seed", 0, "Noise seed: the same captions and seed give the same images.")
flags.DEFINE_string("out", "samples", "Folder for the PNGs.")
flags.DEFINE_float("timeout", 120.0, "HTTP timeout in seconds.")


def predict_png(url, model, captions, seed=0, version=None, timeout=120.0):
  """Returns the PNG bytes for `captions`; raises RuntimeError with the server's message."""
  path = f"/v1/models/{model}" + (f"/versions/{version}" if version else "") + ":predict"
  body = json.dumps({"signature_name": "generate_png",
                     "inputs": {"captions": list(captions), "seed": int(seed)}}).encode()
  request = urllib.request.Request(url.rstrip("/") + path, data=body,
                                   headers={"Content-Type": "application/json"})
  try:
    with urllib.request.urlopen(request, timeout=timeout) as response:
      reply = json.loads(response.read())
  except urllib.error.HTTPError as e:
    detail = e.read().decode(errors="replace")
    try:
      detail = json.loads(detail).get("error", detail)
    except ValueError:
      pass
    raise RuntimeError(f"{url}{path}: HTTP {e.code}: {detail}") from e
  except urllib.error.URLError as e:
    raise RuntimeError(f"cannot reach {url}{path}: {e.reason}") from e
  outputs = reply.get("outputs")
  if isinstance(outputs, dict):
    outputs = outputs.get("images_bytes")
  if not isinstance(outputs, list) or len(outputs) != len(captions):
    raise RuntimeError(f"{url}{path}: unexpected reply (expected {len(captions)} images_bytes)")
  return [base64.b64decode(o["b64"]) for o in outputs]


def write_pngs(pngs, captions, out):
  os.makedirs(out, exist_ok=True)
  paths = []
  for i, png in enumerate(pngs):
    path = os.path.join(out, f"{i:04d}.png")
    with open(path, "wb") as f:
      f.write(png)
    paths.append(path)
  with open(os.path.join(out, "captions.txt"), "w") as f:
    f.write("\n".join(captions) + "\n")
  return paths


def main(argv):
  captions = argv[1:]
  if not captions:
    sys.exit("error: give at least one caption")
  try:
    pngs = predict_png(FLAGS.url, FLAGS.model, captions, FLAGS.seed, FLAGS.version,
                       FLAGS.timeout)
  except RuntimeError as e:
    sys.exit(f"error: {e}")
  for path, caption in zip(write_pngs(pngs, captions, FLAGS.out), captions):
    print(f"{path}: {caption}")


if __name__ == "__main__":
  app.run(main)
