"""Export tests: raw text in, images equal to the Python generator's; core ops; bad inputs."""

import contextlib
import os
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from msmt_tf import export as export_lib
from msmt_tf import runs
from msmt_tf.data import shapes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLI = os.path.join(os.path.dirname(sys.executable), "saved_model_cli")


def _run(*args):
  res = subprocess.run([sys.executable, "-m", *args], cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  return res


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
  root = tmp_path_factory.mktemp("export")
  data, damsm, run = (str(root / n) for n in ("data", "damsm", "run"))
  shapes.write_dataset(data, num_train=8, num_test=2, seed=2, image_size=64)
  smoke = ["--flagfile=configs/smoke.cfg", f"--data_dir={data}", f"--damsm_dir={damsm}"]
  _run("msmt_tf.pretrain_damsm", *smoke)
  _run("msmt_tf.train", *smoke, f"--run_dir={run}", "--max_steps=2")
  out = str(root / "models" / "shapes" / "1")
  # A small limit and chunk, so that a request of the limit runs in several chunks (3 + 3 + 2).
  res = _run("msmt_tf.export", f"--run_dir={run}", f"--output={out}", "--max_batch=8",
             "--serving_chunk=3")
  assert f"exported SavedModel to {out}" in res.stdout
  assert "INFO:tensorflow" not in res.stderr, res.stderr[-2000:]  # no stray library lines
  return dict(run=run, out=out, model=tf.saved_model.load(out), root=root)


def test_raw_text_matches_python_generator(exported):
  generator, text_encoder, vocab, _ = runs.load_run(exported["run"])
  words_num = 25  # shapes evaluation length
  captions = ["A LARGE red circle, on the left!", "there is a blue square above a star",
              "green   triangle\tin the center"]
  got = exported["model"].signatures["generate_stages"](captions=tf.constant(captions),
                                                         seed=tf.constant(7, tf.int64))
  tokens = np.zeros((3, words_num), np.int32)
  for i, c in enumerate(captions):
    ids = vocab.encode(c)[:words_num]
    tokens[i, :len(ids)] = ids
  np.testing.assert_array_equal(got["tokens"], tokens)
  words, sentence = text_encoder(tokens, training=False)
  z, eps = export_lib.noise(3, 7, generator.z_dim, generator.condition_dim)
  want = generator(words, sentence, tokens != 0, z, eps, training=False)["images"]
  for img in want:
    np.testing.assert_allclose(got[f"stage_{img.shape[1]}"], img, atol=1e-5)
  scaled = np.clip(np.asarray(want[-1]) * 127.5 + 127.5, 0, 255)
  expected_u8 = scaled.astype(np.uint8)  # truncated, as DM-GAN does
  # The floats agree to 1e-5 (1.3e-3 on the 0-255 scale), so a value that close to an integer
  # may truncate to its neighbour (CI: 1 pixel of 147,456); anywhere else the bytes are equal.
  diff = got["images"].numpy().astype(int) - expected_u8
  at_boundary = np.abs(scaled - np.round(scaled)) < 2e-3
  assert np.all((diff == 0) | ((np.abs(diff) == 1) & at_boundary)), np.argwhere(diff)
  png = tf.io.decode_png(got["images_bytes"][0]).numpy()
  np.testing.assert_array_equal(png, got["images"][0].numpy())  # the PNG holds those bytes


def test_requests_run_in_chunks_up_to_the_limit(exported):
  """8 captions (the limit) in chunks of 3 give the images of one unchunked generator call;
  9 are refused with INVALID_ARGUMENT naming the limit."""
  generator, text_encoder, vocab, _ = runs.load_run(exported["run"])
  colours = ["red", "blue", "green", "yellow", "purple", "orange", "red", "blue", "green"]
  captions = [f"a {c} circle on the left" for c in colours]
  fn = exported["model"].signatures["generate_stages"]
  seed = tf.constant(5, tf.int64)
  got = fn(captions=tf.constant(captions[:8]), seed=seed)
  tokens = got["tokens"].numpy()
  assert tokens.shape == (8, 25)
  words, sentence = text_encoder(tokens, training=False)
  z, eps = export_lib.noise(8, 5, generator.z_dim, generator.condition_dim)
  want = generator(words, sentence, tokens != 0, z, eps, training=False)["images"]
  for img in want:
    np.testing.assert_allclose(got[f"stage_{img.shape[1]}"], img, atol=1e-5)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"limit is max_batch=8"):
    fn(captions=tf.constant(captions), seed=seed)
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"limit is max_batch=8"):
    exported["model"].signatures["generate_png"](captions=tf.constant(captions), seed=seed)
  assert exported["model"].signatures["serving_default"](
      captions=tf.constant(captions[:1]))["images"].shape == (1, 128, 128, 3)


def test_same_seed_same_bytes(exported):
  fn = exported["model"].signatures["generate"]
  caps = tf.constant(["a red circle", "a blue square"])
  a = fn(captions=caps, seed=tf.constant(3, tf.int64))["images_bytes"].numpy()
  b = fn(captions=caps, seed=tf.constant(3, tf.int64))["images_bytes"].numpy()
  c = fn(captions=caps, seed=tf.constant(4, tf.int64))["images_bytes"].numpy()
  assert list(a) == list(b) and list(a) != list(c)
  default = exported["model"].signatures["serving_default"](captions=caps)
  assert default["images"].shape == (2, 128, 128, 3) and default["images"].dtype == tf.uint8


def test_graph_uses_only_core_ops(exported):
  from tensorflow.core.protobuf import saved_model_pb2  # pylint: disable=g-import-not-at-top
  from tensorflow.python.framework import op_def_registry  # pylint: disable=g-import-not-at-top
  sm = saved_model_pb2.SavedModel()
  with open(os.path.join(exported["out"], "saved_model.pb"), "rb") as f:
    sm.ParseFromString(f.read())
  ops = set()
  for mg in sm.meta_graphs:
    ops.update(n.op for n in mg.graph_def.node)
    for fn in mg.graph_def.library.function:
      ops.update(n.op for n in fn.node_def)
  functions = {fn.signature.name for mg in sm.meta_graphs for fn in mg.graph_def.library.function}
  missing = sorted(op for op in ops if op not in functions and op_def_registry.get(op) is None)
  assert not missing, missing
  assert {"LookupTableFindV2", "StringSplitV2", "EncodePng"} <= ops
  assert not any(op.startswith(("PyFunc", "EagerPyFunc")) for op in ops)


def test_bad_inputs(exported):
  fn = exported["model"].signatures["generate_stages"]
  seed = tf.constant(0, tf.int64)
  for bad in ["", "!!! ...", "zebra unicorn everywhere"]:
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"without any vocabulary word"):
      fn(captions=tf.constant(["a red circle", bad]), seed=seed)
  long = fn(captions=tf.constant([" ".join(["red circle"] * 5000)]), seed=seed)
  assert long["tokens"].shape == (1, 25) and np.all(long["tokens"].numpy() > 0)
  invalid = fn(captions=tf.constant([b"\xff\xfe a red \xc3 circle"]), seed=seed)
  valid = fn(captions=tf.constant(["a red circle"]), seed=seed)
  np.testing.assert_array_equal(invalid["tokens"], valid["tokens"])
  empty = fn(captions=tf.constant([], tf.string), seed=seed)
  assert empty["images"].shape == (0, 128, 128, 3) and empty["images_bytes"].shape == (0,)


def test_saved_model_cli(exported, tmp_path):
  show = subprocess.run([CLI, "show", "--dir", exported["out"], "--all"], capture_output=True,
                        text=True)
  assert show.returncode == 0, show.stderr[-1000:]
  for name in ("serving_default", "generate", "generate_stages", "images_bytes"):
    assert name in show.stdout
  res = subprocess.run([CLI, "run", "--dir", exported["out"], "--tag_set", "serve",
                        "--signature_def", "serving_default", "--input_exprs",
                        "captions=['a red circle', 'a small blue square']", "--outdir",
                        str(tmp_path)], capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-1000:]
  images = np.load(tmp_path / "images.npy")
  assert images.shape == (2, 128, 128, 3) and images.dtype == np.uint8


def test_a_smaller_max_batch_lowers_the_default_chunk(exported, tmp_path):
  """--max_batch 2 alone exports (the default --serving_chunk 8 follows it down); a chunk given
  larger than the limit is still refused."""
  res = _run("msmt_tf.export", f"--run_dir={exported['run']}", f"--output={tmp_path / '1'}",
             "--max_batch=2")
  assert "at most 2 captions a request, generated 2 at a time" in res.stdout, res.stdout
  fn = tf.saved_model.load(str(tmp_path / "1")).signatures["generate"]
  caps = tf.constant(["a red circle", "a blue square"])
  got = fn(captions=caps, seed=tf.constant(3, tf.int64))["images_bytes"].numpy()
  want = exported["model"].signatures["generate"](captions=caps, seed=tf.constant(3, tf.int64))
  assert len(got) == 2
  for a, b in zip(got, want["images_bytes"].numpy()):  # another chunk: the same to a rounding
    diff = tf.cast(tf.io.decode_png(a), tf.int32) - tf.cast(tf.io.decode_png(b), tf.int32)
    assert int(tf.reduce_max(tf.abs(diff))) <= 1
  with pytest.raises(tf.errors.InvalidArgumentError, match=r"limit is max_batch=2"):
    fn(captions=tf.constant(["a red circle"] * 3), seed=tf.constant(3, tf.int64))


def test_export_refuses_bad_output(exported):
  with pytest.raises(ValueError, match="numeric version folder"):
    export_lib.export(exported["run"], str(exported["root"] / "models" / "shapes" / "latest"))
  with pytest.raises(FileExistsError, match="already exists"):
    export_lib.export(exported["run"], exported["out"])
  with pytest.raises(ValueError, match="--serving_chunk 16 is larger than --max_batch 4"):
    export_lib.export(exported["run"], str(exported["root"] / "m" / "9"), max_batch=4, chunk=16)
  with pytest.raises(ValueError, match="--max_batch and --serving_chunk must be >= 1, got 0 and"):
    export_lib.export(exported["run"], str(exported["root"] / "m" / "9"), max_batch=0)
  assert not (exported["root"] / "m").exists()


def test_export_under_jax_says_it_needs_tensorflow(tmp_path):
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  res = subprocess.run([sys.executable, "-m", "msmt_tf.export", f"--run_dir={tmp_path}",
                        f"--output={tmp_path / 'models' / '1'}"], cwd=REPO, env=env,
                       capture_output=True, text=True)
  assert res.returncode != 0 and "Traceback" not in res.stderr, res.stderr[-2000:]
  assert ("error: export writes a TensorFlow SavedModel, and KERAS_BACKEND is 'jax': run it with "
          "KERAS_BACKEND=tensorflow") in res.stderr
  assert not (tmp_path / "models").exists()


@contextlib.contextmanager
def rest_stub(answer):
  """A 127.0.0.1 HTTP server whose POSTs are answered by `answer(path, body bytes)`: (status,
  reply bytes), or None to close the connection without a reply. Yields its URL."""
  import http.server  # pylint: disable=g-import-not-at-top
  import threading  # pylint: disable=g-import-not-at-top

  class Handler(http.server.BaseHTTPRequestHandler):

    def do_POST(self):  # pylint: disable=invalid-name
      reply = answer(self.path, self.rfile.read(int(self.headers["Content-Length"])))
      if reply is None:
        self.close_connection = True
        return
      code, data = reply
      try:
        self.send_response(code)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
      except (BrokenPipeError, ConnectionResetError):  # the client gave up (its timeout)
        pass

    def log_message(self, *args):
      pass

  class Server(http.server.ThreadingHTTPServer):
    # server_close() waits for the request threads: none is left running into the next test
    # (Python 3.11 tracebacks parse source with `ast`, which is not thread-safe there).
    daemon_threads = False

  server = Server(("127.0.0.1", 0), Handler)
  threading.Thread(target=server.serve_forever, daemon=True).start()
  try:
    yield f"http://127.0.0.1:{server.server_address[1]}"
  finally:
    server.shutdown()
    server.server_close()


def test_serving_client_against_a_local_rest_stub(exported, tmp_path):
  """A 127.0.0.1 stub of TF Serving's REST predict API, answering from the SavedModel."""
  import base64  # pylint: disable=g-import-not-at-top
  import json  # pylint: disable=g-import-not-at-top
  model = exported["model"]
  seen, errors = [], []

  def predict(path, raw):
    body = json.loads(raw)
    seen.append((path, body))
    try:
      out = model.signatures[body["signature_name"]](
          captions=tf.constant(body["inputs"]["captions"]),
          seed=tf.constant(body["inputs"]["seed"], tf.int64))
      reply, code = {"outputs": {"images_bytes": [
          {"b64": base64.b64encode(b).decode()} for b in out["images_bytes"].numpy()]}}, 200
    except tf.errors.InvalidArgumentError as e:
      reply, code = {"error": e.message}, 400
      errors.append(e.message)
    return code, json.dumps(reply).encode()

  with rest_stub(predict) as url:
    out = tmp_path / "pngs"
    res = subprocess.run([sys.executable, "-m", "msmt_tf.serving_client", f"--url={url}",
                          "--model=shapes", f"--out={out}", "--seed=5", "a red circle",
                          "a small blue square"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert seen[0][0] == "/v1/models/shapes:predict"
    assert seen[0][1]["signature_name"] == "generate_png"
    direct = model.signatures["generate"](captions=tf.constant(["a red circle",
                                                                 "a small blue square"]),
                                          seed=tf.constant(5, tf.int64))["images_bytes"].numpy()
    assert (out / "0000.png").read_bytes() == direct[0]
    assert (out / "0001.png").read_bytes() == direct[1]
    res = subprocess.run([sys.executable, "-m", "msmt_tf.serving_client", f"--url={url}",
                          "--model=shapes", f"--out={tmp_path / 'bad'}", "a circle",
                          "zebra unicorn"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode != 0 and "HTTP 400" in res.stderr
    # The server's message as the model's sentence, the caption named (as --saved_model does);
    # TensorFlow's node lines (in what the stub, like TF Serving, sends) left out.
    assert "assertion failed" in errors[-1] and "node" in errors[-1], errors
    assert res.stderr.rstrip().endswith(
        "HTTP 400: caption(s) without any vocabulary word (empty, punctuation only or only "
        "unknown words) at index: 1 ('zebra unicorn')"), res.stderr[-2000:]
    assert not (tmp_path / "bad").exists()
    # Another request into the same --out: refused, the first set kept; --overwrite replaces
    # the whole set (no PNG of the first request left beside the new one); version 0 is asked
    # for; a caption's line break stays inside its line of captions.txt.
    first = {n: (out / n).read_bytes() for n in os.listdir(out)}
    args = [sys.executable, "-m", "msmt_tf.serving_client", f"--url={url}", "--model=shapes",
            f"--out={out}", "--version=0", "a yellow\nsquare"]
    res = subprocess.run(args, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert res.returncode == 1 and "holds the 2 images of another request" in res.stderr
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == first
    res = subprocess.run(args + ["--overwrite"], cwd=REPO, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    assert seen[-1][0] == "/v1/models/shapes/versions/0:predict"
    assert sorted(os.listdir(out)) == ["0000.png", "captions.txt", "request.json"]
    assert (out / "captions.txt").read_text() == "a yellow square\n"
    assert json.loads((out / "request.json").read_text())["captions"] == ["a yellow\nsquare"]


def test_serving_client_runs_an_export_here(exported, tmp_path):
  """`serving_client --saved_model DIR`: the export's generate_png called in the client's
  process gives TF Serving's bytes for the same captions and seed; a model's folder of versions,
  a training run's folder, a caption without a known word and a missing --model each named."""
  import json  # pylint: disable=g-import-not-at-top
  from msmt_tf import serving_client  # pylint: disable=g-import-not-at-top
  out = tmp_path / "pngs"
  res = subprocess.run([sys.executable, "-m", "msmt_tf.serving_client",
                        f"--saved_model={exported['out']}", f"--out={out}", "--seed=5",
                        "a red circle", "a small blue square"], cwd=REPO, capture_output=True,
                       text=True, timeout=300)
  assert res.returncode == 0, res.stderr[-2000:]
  assert res.stderr == "", res.stderr[-2000:]  # no TensorFlow lines on a CPU machine either
  direct = exported["model"].signatures["generate"](
      captions=tf.constant(["a red circle", "a small blue square"]),
      seed=tf.constant(5, tf.int64))["images_bytes"].numpy()
  assert [(out / n).read_bytes() for n in ("0000.png", "0001.png")] == list(direct)
  assert json.loads((out / "request.json").read_text()) == {
      "saved_model": os.path.abspath(exported["out"]), "seed": 5,
      "captions": ["a red circle", "a small blue square"]}
  with pytest.raises(RuntimeError, match=r"holds version 1 of a model .*--saved_model .*/1$"):
    serving_client.predict_png_here(os.path.dirname(exported["out"]), ["a red circle"])
  with pytest.raises(RuntimeError, match=r"not a SavedModel .*export --run_dir " +
                     re.escape(exported["run"])):
    serving_client.predict_png_here(exported["run"], ["a red circle"])
  with pytest.raises(RuntimeError, match=r"no such folder"):
    serving_client.predict_png_here(str(tmp_path / "nothing"), ["a red circle"])
  with pytest.raises(RuntimeError) as bad:
    serving_client.predict_png_here(exported["out"], ["a red circle", "zebra unicorn", "!!"])
  assert str(bad.value).endswith("INVALID_ARGUMENT: caption(s) without any vocabulary word "
                                 "(empty, punctuation only or only unknown words) at index: "
                                 "1 ('zebra unicorn'), 2 ('!!')")
  res = subprocess.run([sys.executable, "-m", "msmt_tf.serving_client", f"--out={out}", "a"],
                       cwd=REPO, capture_output=True, text=True, timeout=120)
  assert res.returncode == 1 and "give --model" in res.stderr and "--saved_model" in res.stderr


def test_serving_client_names_network_and_reply_failures():
  """A timeout, a reply that is not JSON, a dropped connection and a reply of other outputs each
  give one RuntimeError naming the endpoint (main prints it as one error line)."""
  import time  # pylint: disable=g-import-not-at-top
  from msmt_tf import serving_client  # pylint: disable=g-import-not-at-top
  mode = {}

  def answer(path, raw):
    del path, raw
    m = mode["m"]  # once: the slow reply's thread wakes when the test has moved on
    if m == "drop":
      return None
    if m == "slow":
      time.sleep(1.5)
    return 200, {"html": b"<html>proxy login</html>", "slow": b"{}",
                 "other": b'{"outputs": {"images_bytes": [{"x": 1}]}}'}[m]

  with rest_stub(answer) as url:
    # Only the slow reply meets the 0.3 s timeout; the others get 30 s, so that a loaded
    # machine (the other test worker training beside this one) cannot turn them into timeouts.
    for m, timeout, message in (("slow", 0.3, "no reply within --timeout 0.3 s"),
                                ("html", 30, "the reply is not JSON"),
                                ("drop", 30, "the connection failed \\(RemoteDisconnected"),
                                ("other", 30, "unexpected reply \\(images_bytes not base64 PNGs")):
      mode["m"] = m
      with pytest.raises(RuntimeError, match=f"{url}/v1/models/m:predict: {message}"):
        serving_client.predict_png(url, "m", ["a red circle"], timeout=timeout)


def test_serving_client_never_removes_pngs_it_did_not_write(tmp_path):
  from msmt_tf import serving_client  # pylint: disable=g-import-not-at-top
  request = {"url": "u", "model": "m", "version": None, "seed": 0, "captions": ["a", "b", "c"]}
  out = tmp_path / "out"
  assert serving_client.check_out(str(out), request) == []  # a new folder
  serving_client.write_pngs([b"0", b"1", b"2"], request["captions"], str(out), request)
  assert serving_client.check_out(str(out), request) == []  # the same request: written over
  other = {**request, "captions": ["d"]}
  assert serving_client.check_out(str(out), other, overwrite=True) == [
      "0000.png", "0001.png", "0002.png"]
  (out / "0007.png").write_bytes(b"the user's")
  (out / "000008.png").write_bytes(b"msmt_tf.sample's")
  for overwrite in (False, True):
    with pytest.raises(RuntimeError, match="holds 2 numbered PNGs that no recorded request made "
                       "\\(000008.png, 0007.png\\): they are left alone"):
      serving_client.check_out(str(out), other, overwrite=overwrite)
  assert (out / "0007.png").read_bytes() == b"the user's"


def test_export_names_a_bad_text_encoder(exported, tmp_path):
  bad = tmp_path / "damsm"
  bad.mkdir()
  (bad / "text_encoder.keras").write_bytes(b"not a keras archive")
  with pytest.raises(ValueError, match=f"cannot load the DAMSM encoder {bad / 'text_encoder.keras'}"):
    runs.load_run(exported["run"], damsm_dir=str(bad))
  with pytest.raises(FileNotFoundError, match="DAMSM encoder not found"):
    runs.load_run(exported["run"], damsm_dir=str(tmp_path / "nowhere"))


def test_export_without_step_skips_a_damaged_newest_checkpoint(exported, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  run = str(tmp_path / "run")
  shutil.copytree(exported["run"], run)
  newest = os.path.join(run, "checkpoints", "ckpt-00000002.npz")
  with open(newest, "r+b") as f:
    f.truncate(os.path.getsize(newest) // 2)
  said = []
  _, _, _, record = runs.load_run(run, report=said.append)
  assert record["step"] == 1
  assert said[0].startswith(f"skipped damaged checkpoint {newest}") and \
      os.path.exists(newest + ".damaged")
  # An explicit --step of a damaged file is an error naming it, not a silent fallback.
  with open(os.path.join(run, "checkpoints", "ckpt-00000001.npz"), "r+b") as f:
    f.truncate(100)
  with pytest.raises(ValueError, match="cannot read checkpoint .*ckpt-00000001.npz"):
    runs.load_run(run, step=1)
