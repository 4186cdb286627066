"""Training tests: exact resume after SIGTERM and SIGKILL, bad flags, NaN guard, DAMSM
pretraining."""

import contextlib
import importlib.util
import json
import os
import pickle
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from msmt_tf import checkpoint
from msmt_tf.data import datasets
from msmt_tf.data import shapes
from tests import cli
from tests import data_fixtures

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
  """A tiny shapes dataset and DAMSM encoders pretrained on it with configs/smoke.cfg."""
  root = tmp_path_factory.mktemp("smoke")
  data = str(root / "data")
  shapes.write_dataset(data, num_train=16, num_test=4, seed=1, image_size=64)
  damsm = str(root / "damsm")
  res = _run("msmt_tf.pretrain_damsm", f"--data_dir={data}", f"--damsm_dir={damsm}")
  assert res.returncode == 0, res.stderr[-2000:]
  return dict(root=root, data=data, damsm=damsm)


def _cmd(module, *args):
  return [sys.executable, "-m", module, "--flagfile=configs/smoke.cfg", *args]


def _run(module, *args):
  return subprocess.run(_cmd(module, *args), cwd=REPO, capture_output=True, text=True)


def _main(module, *args):
  """_run's command in this process, for a check that stops before training (tests/cli.py)."""
  return cli.run_main(*_cmd(module, *args)[2:])


def _train_args(smoke, run_dir, *extra):
  return (f"--data_dir={smoke['data']}", f"--damsm_dir={smoke['damsm']}",
          f"--run_dir={run_dir}", *extra)


def assert_quiet(stderr):
  """TensorFlow's known-harmless native lines are not shown (msmt_tf.console)."""
  for line in ("failed call to cuInit", "remapper failed", "oneDNN supports DT_BOOL",
               "All log messages before absl::InitializeLog"):
    assert line not in stderr, stderr[-2000:]


def _losses(run_dir):
  with open(os.path.join(run_dir, "losses.jsonl")) as f:
    return {e["step"]: e for e in map(json.loads, f)}


def _steps_logged(run_dir):
  """Complete lines of a running run's losses.jsonl."""
  try:
    with open(os.path.join(run_dir, "losses.jsonl")) as f:
      return f.read().count("\n")
  except FileNotFoundError:
    return 0


@pytest.fixture(scope="module")
def reference_run(smoke):
  """A float32 run of configs/smoke.cfg trained to step 8 without a stop (TensorFlow), shared
  read-only: copy it to continue it."""
  ref_dir = str(smoke["root"] / "ref")
  res = _run("msmt_tf.train", *_train_args(smoke, ref_dir, "--max_steps=8"))
  assert res.returncode == 0, res.stderr[-2000:]
  assert sorted(_losses(ref_dir)) == list(range(1, 9))
  return ref_dir


def test_stopped_then_killed_run_resumes_with_identical_losses(smoke, reference_run, tmp_path):
  """SIGTERM (a batch system's time limit) stops the run after the step it came in, with a
  checkpoint of that step though --checkpoint_every is far off; then SIGKILL, whose newest
  checkpoint is damaged; each resume continues exactly."""
  run_dir = str(smoke["root"] / "killed")
  ref = _losses(reference_run)
  ckpt_dir = os.path.join(run_dir, "checkpoints")

  err_path = tmp_path / "stopped.err"
  with open(err_path, "w") as err:
    proc = subprocess.Popen(_cmd("msmt_tf.train", *_train_args(
        smoke, run_dir, "--max_steps=8", "--checkpoint_every=100")), cwd=REPO,
                            stdout=subprocess.DEVNULL, stderr=err)
    deadline = time.time() + 600
    while proc.poll() is None and time.time() < deadline and _steps_logged(run_dir) < 1:
      time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=600)
  stderr = err_path.read_text()
  assert proc.returncode == 143, stderr[-2000:]
  stopped_at = len(_losses(run_dir))
  # Signalled after step 1: stopped after it or the next; the kill below needs steps left.
  assert 1 <= stopped_at < 7, stderr[-2000:]
  stopped_ckpt = os.path.join(ckpt_dir, f"ckpt-{stopped_at:08d}.npz")
  assert os.listdir(ckpt_dir) == [os.path.basename(stopped_ckpt)]
  assert "SIGTERM: stopping after this step, to save a checkpoint (another SIGTERM stops at " \
      "once)" in stderr
  assert stderr.rstrip().endswith(
      f"stopped by SIGTERM at step {stopped_at}; the newest checkpoint is {stopped_ckpt} (step "
      f"{stopped_at}): continue with the same command and --resume"), stderr[-2000:]

  proc = subprocess.Popen(_cmd("msmt_tf.train", *_train_args(smoke, run_dir, "--max_steps=8",
                                                             "--resume")),
                          cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  target = os.path.join(ckpt_dir, f"ckpt-{stopped_at + 1:08d}.npz")
  deadline = time.time() + 600
  while not os.path.exists(target) and proc.poll() is None and time.time() < deadline:
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed"
  from msmt_tf import checkpoint  # pylint: disable=g-import-not-at-top
  killed_at = checkpoint.latest(run_dir)[0]
  assert stopped_at + 1 <= killed_at < 8
  # And the newest checkpoint is damaged afterwards (a truncated copy): the resume skips it,
  # says so, keeps it aside and continues from the one before.
  newest = checkpoint.latest(run_dir)[1]
  with open(newest, "rb") as f:
    content = f.read()
  with open(newest, "wb") as f:
    f.write(content[:len(content) // 2])

  res = _run("msmt_tf.train", *_train_args(smoke, run_dir, "--max_steps=8", "--resume"))
  assert res.returncode == 0, res.stderr[-2000:]
  assert f"skipped damaged checkpoint {newest}" in res.stderr
  assert f"kept as {newest}.damaged" in res.stderr
  previous = os.path.join(run_dir, "checkpoints", f"ckpt-{killed_at - 1:08d}.npz")
  assert f"resumed from {previous} (step {killed_at - 1})" in res.stdout
  assert_quiet(res.stderr)
  with open(newest + ".damaged", "rb") as f:
    assert f.read() == content[:len(content) // 2]  # kept as it was
  got = _losses(run_dir)
  assert sorted(got) == list(range(1, 9))
  for step in range(1, 9):  # before the stop, after it, and steps k.. redone from checkpoint k - 1
    for name, value in ref[step].items():
      assert got[step][name] == value, (step, name)
  names = set(os.listdir(os.path.join(run_dir, "checkpoints")))
  assert names == {"ckpt-00000006.npz", "ckpt-00000007.npz", "ckpt-00000008.npz",
                   os.path.basename(newest) + ".damaged"}  # --keep_checkpoints 3


@pytest.mark.parametrize("extra,message", [
    (("--data_dir=/nonexistent/shapes",), "dataset folder not found: /nonexistent/shapes (if it "
     "moved, pass --data_dir with its new place"),
    (("--kernel_size=0",), "--kernel_size must be >= 1"),
    (("--num_heads=0",), "--num_heads must be >= 1"),
    (("--batch_size=64",), "batch_size 64 is larger than the train split"),
    (("--batch_size=1",), "--batch_size must be >= 2 (the discriminators' mismatched captions"),
    (("--text_dim=8",), "have width 16 (text) / 16 (image), the flags say --text_dim=8: pass"),
    (("--damsm_dir=/nonexistent/damsm",),
     "DAMSM encoder not found: /nonexistent/damsm/text_encoder.keras (/nonexistent/damsm does "
     "not exist: if the encoders moved, pass --damsm_dir with their new folder; a run trained "
     "with them needs those same encoders); make the encoders with: python -m "
     "msmt_tf.pretrain_damsm"),
])
def test_bad_flags_stop_before_training(smoke, tmp_path, extra, message):
  run_dir = str(tmp_path / "run")
  res = _main("msmt_tf.train", *_train_args(smoke, run_dir, "--max_steps=2"), *extra)
  assert res.returncode != 0
  assert message in res.stderr
  assert not os.path.exists(os.path.join(run_dir, "checkpoints"))


def test_a_run_never_shares_the_data_or_encoder_folder(smoke, tmp_path, monkeypatch):
  """--run_dir inside --data_dir (data.build --overwrite deletes the dataset's folder), equal to
  --damsm_dir, or a folder that is another dataset or DAMSM folder (--run_dir and --damsm_dir
  swapped, say) is refused before anything is written there. Folders are compared as they are
  on disk (links resolved), and what is not shared is accepted."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from msmt_tf import train  # pylint: disable=g-import-not-at-top
  other_data, other_damsm = tmp_path / "data2", tmp_path / "damsm2"
  shutil.copytree(smoke["data"], other_data)
  shutil.copytree(smoke["damsm"], other_damsm)
  cases = [(os.path.join(smoke["data"], "run"), "is --data_dir or inside it"),
           (smoke["damsm"], "is --damsm_dir: a run needs a folder of its own"),
           (str(other_data), "is a dataset: it holds captions.pickle"),
           (str(other_damsm), "is a DAMSM folder: it holds text_encoder.keras")]
  for run_dir, message in cases:
    before = sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else None
    res = _main("msmt_tf.train", *_train_args(smoke, run_dir, "--max_steps=1"))
    assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
    assert f"--run_dir {run_dir} {message}" in res.stderr, res.stderr[-2000:]
    assert "choose another --run_dir" in res.stderr
    assert (sorted(os.listdir(run_dir)) if os.path.isdir(run_dir) else None) == before

  def refused(run_dir, data_dir, damsm_dir):
    flags.FLAGS.unparse_flags()
    flags.FLAGS(["train", f"--data_dir={data_dir}", f"--damsm_dir={damsm_dir}"])
    try:
      train._refuse_a_shared_run_dir(run_dir)  # pylint: disable=protected-access
      return None
    except ValueError as e:
      return str(e)
    finally:
      flags.FLAGS.unparse_flags()

  data, damsm = str(other_data), str(other_damsm)
  (tmp_path / "scratch").mkdir()
  os.symlink(tmp_path / "scratch", other_data / "runs")  # data2/runs -> scratch
  os.symlink(other_data, tmp_path / "datalink")
  monkeypatch.chdir(tmp_path)
  accepted = [(str(tmp_path / "runs" / "x"), data, str(tmp_path / "runs" / "damsm")),  # siblings
              (str(other_damsm / "runs" / "a"), data, damsm),  # overwrite deletes nothing there
              (data + "_run", data + "/", damsm),  # a name that starts like the dataset's
              (str(other_data / "runs" / "a"), data, damsm),  # the link leads out of the dataset
              ("runs/rel", data, ".")]  # --damsm_dir=. and a relative run below it
  for run_dir, data_dir, damsm_dir in accepted:
    assert refused(run_dir, data_dir, damsm_dir) is None, (run_dir, data_dir, damsm_dir)
  alias = refused(str(other_data / "run"), str(tmp_path / "datalink"), damsm)
  assert alias and "is --data_dir or inside it" in alias  # the same dataset through a link
  # A run written inside the dataset before this check: how to keep it.
  old_run = other_data / "old_run"
  (old_run / "checkpoints").mkdir(parents=True)
  (old_run / "checkpoints" / "ckpt-00000004.npz").write_bytes(b"")
  said = refused(str(old_run), data, damsm)
  assert "To keep the run already there, move its files (config.json, flags.txt, " in said
  assert "and --resume there" in said and "choose another" not in said


def test_help_lists_the_flags_a_run_needs():
  # --help shows msmt_tf.config's flags (before: only --helpfull, 369 lines mixed with absl's,
  # TensorFlow's and pfor's flags, did).
  res = subprocess.run([sys.executable, "-m", "msmt_tf.train", "--help"], cwd=REPO,
                       capture_output=True, text=True)
  listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", res.stdout + res.stderr, re.M))
  assert {"run_dir", "data_dir", "damsm_dir", "resume", "max_steps", "batch_size",
          "mixed_precision", "distribute", "devices"} <= listed, sorted(listed)
  assert "xla_gpu_cuda_data_dir" not in listed and "test_srcdir" not in listed  # not --helpfull
  res = subprocess.run([sys.executable, "-m", "msmt_tf.pretrain_damsm", "--help"], cwd=REPO,
                       capture_output=True, text=True)
  listed = set(re.findall(r"^  --(?:\[no\])?(\w+):", res.stdout + res.stderr, re.M))
  assert {"data_dir", "damsm_dir", "damsm_epochs", "damsm_batch_size", "inception_weights",
          "image_encoder_trunk", "resume", "overwrite"} <= listed, sorted(listed)


def test_corrupt_damsm_file_is_named(smoke, tmp_path):
  import shutil  # pylint: disable=g-import-not-at-top
  damsm = tmp_path / "damsm"
  shutil.copytree(smoke["damsm"], damsm)
  (damsm / "image_encoder.keras").write_bytes(b"not a keras archive")
  res = _run("msmt_tf.train", f"--data_dir={smoke['data']}", f"--damsm_dir={damsm}",
             f"--run_dir={tmp_path / 'run'}", "--max_steps=1")
  assert res.returncode != 0
  assert f"cannot load the DAMSM encoder {damsm / 'image_encoder.keras'}" in res.stderr
  assert_quiet(res.stderr)  # a command that stops early is as quiet as one that trains


def test_ctrl_c_or_sigterm_in_pretraining_says_what_is_left(smoke, tmp_path, monkeypatch,
                                                               capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from msmt_tf import pretrain_damsm  # pylint: disable=g-import-not-at-top
  damsm = tmp_path / "damsm"

  def interrupted(*args, snapshot=False, progress=None, **kwargs):
    progress.update(resumed=None, snapshot=None)
    if snapshot:  # an epoch's snapshot written before the Ctrl-C
      shutil.copytree(smoke["damsm"], damsm)
      (damsm / "pretrain_record.json").write_text(json.dumps(
          {"complete": False, "epoch": 1, "epochs": 3, "steps": 2, "max_steps": None}))
      progress["snapshot"] = 1
    raise KeyboardInterrupt
  cli.define_main_only_flags("msmt_tf.pretrain_damsm")  # its --overwrite
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["pretrain_damsm", "--flagfile=" + os.path.join(REPO, "configs", "smoke.cfg"),
               f"--data_dir={smoke['data']}", f"--damsm_dir={damsm}"])
  try:
    monkeypatch.setattr(pretrain_damsm, "pretrain", interrupted)
    cli.stops(capsys, 130, "interrupted before the encoders were finished: no encoders were "
              "written yet", pretrain_damsm.main, [])
    monkeypatch.setattr(pretrain_damsm, "pretrain", cli.sigterm_self)  # Slurm's time limit
    cli.stops(capsys, 143, "stopped by SIGTERM before the encoders were finished: no encoders "
              "were written yet", pretrain_damsm.main, [])
    monkeypatch.setattr(pretrain_damsm, "pretrain",
                        lambda *a, **k: interrupted(*a, snapshot=True, **k))
    cli.stops(capsys, 130, "text_encoder.keras, .*image_encoder.keras are a snapshot of epoch 1 "
              "of 3, not fully trained encoders; continue with the same command and --resume",
              pretrain_damsm.main, [])
    # --overwrite stopped before its first snapshot: the encoders there before are untouched
    # (here a snapshot of an earlier pretraining: its record is still there).
    flags.FLAGS.overwrite = True
    monkeypatch.setattr(pretrain_damsm, "pretrain", interrupted)
    cli.stops(capsys, 130, "no snapshot of this run was written yet; .* are the encoders that "
              "were there before it, unchanged \\(a snapshot of epoch 1 of 3 of an earlier "
              "pretraining\\); run the same command again", pretrain_damsm.main, [])
    # ... and after its first one: --resume instead of --overwrite.
    monkeypatch.setattr(pretrain_damsm, "pretrain",
                        lambda *a, **k: interrupted(*a, snapshot=True, **k))
    shutil.rmtree(damsm)
    cli.stops(capsys, 130, "continue with the same command with --resume instead of --overwrite",
              pretrain_damsm.main, [])
    flags.FLAGS.resume = True
    with pytest.raises(SystemExit, match="--resume continues the snapshot in --damsm_dir, "
                       "--overwrite starts over from scratch: pass one of them"):
      pretrain_damsm.main([])
  finally:
    flags.FLAGS.unparse_flags()


def test_a_wrong_inception_weights_file_is_named_in_one_line(smoke, tmp_path):
  import keras  # pylint: disable=g-import-not-at-top
  from msmt_tf import pretrain_damsm  # pylint: disable=g-import-not-at-top
  from msmt_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from msmt_tf.models.text_encoder import ImageEncoder  # pylint: disable=g-import-not-at-top
  garbage = tmp_path / "garbage.h5"
  garbage.write_bytes(b"not hdf5 at all")
  other = str(tmp_path / "other.weights.h5")
  small = keras.Sequential([keras.Input((4,)), keras.layers.Dense(2)])
  small.save_weights(other)
  for path in (str(garbage), other):
    with pytest.raises(ValueError, match=f"{path} is not a Keras InceptionV3 weights file without "
                       "the top") as e:
      ImageEncoder(16, "inception_v3", path)
    assert "\n" not in str(e.value) and len(str(e.value)) < 600, str(e.value)
  # pretrain_damsm stops there, before it makes --damsm_dir (no empty folder left behind).
  data = datasets.load_split(smoke["data"], "shapes", "train")
  cfg = ModelConfig(vocab_size=len(data.vocab), text_dim=16, embedding_dim=12)
  with pytest.raises(ValueError, match="garbage.h5 is not a Keras InceptionV3 weights file"):
    pretrain_damsm.pretrain(data, data, cfg, str(tmp_path / "damsm"), 8, trunk="inception_v3",
                            inception_weights=str(garbage), epochs=1, batch_size=8)
  assert not (tmp_path / "damsm").exists()


def test_a_missing_encoder_names_the_command_that_makes_it(tmp_path):
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  path = str(tmp_path / "image_encoder.keras")
  with pytest.raises(FileNotFoundError, match="python -m msmt_tf.pretrain_damsm"):
    runs.load_damsm_encoder(path, "ImageEncoder")
  # A folder of AttnGAN's encoders imported text-only: the import, not pretrain_damsm.
  (tmp_path / "import_manifest.json").write_text("{}")
  with pytest.raises(FileNotFoundError, match=f"{tmp_path} was imported from AttnGAN's files "
                     "without this encoder: import it too with python -m msmt_tf.import_torch "
                     "damsm"):
    runs.load_damsm_encoder(path, "ImageEncoder")


def test_damsm_pretraining_keeps_existing_encoders_and_refuses_a_random_frozen_trunk(smoke,
                                                                                     tmp_path):
  """pretrain_damsm never replaces encoders a GAN run may use without --overwrite, and refuses an
  Inception trunk without weights (it stays frozen, so its features would stay random)."""
  import hashlib  # pylint: disable=g-import-not-at-top
  damsm = tmp_path / "damsm"
  shutil.copytree(smoke["damsm"], damsm)
  digest = lambda: {f: hashlib.sha256((damsm / f).read_bytes()).hexdigest()
                    for f in sorted(os.listdir(damsm))}
  before = digest()
  res = _main("msmt_tf.pretrain_damsm", f"--data_dir={smoke['data']}", f"--damsm_dir={damsm}",
              "--seed=5")
  assert res.returncode == 1 and "Traceback" not in res.stderr
  assert f"error: {damsm / 'text_encoder.keras'} already exists" in res.stderr
  assert "--overwrite" in res.stderr and "--resume" in res.stderr and digest() == before
  res = _run("msmt_tf.pretrain_damsm", f"--data_dir={smoke['data']}", f"--damsm_dir={damsm}",
             "--seed=5", "--overwrite")
  assert res.returncode == 0, res.stderr[-2000:]
  after = digest()
  assert after["text_encoder.keras"] != before["text_encoder.keras"]
  log = (damsm / "damsm_log.jsonl").read_text().splitlines()
  assert [json.loads(l)["epoch"] for l in log] == [1]  # this run's losses only
  fresh = tmp_path / "fresh"
  for trunk in ("inception_v3", "torchvision_inception_v3"):
    res = _main("msmt_tf.pretrain_damsm", f"--data_dir={smoke['data']}",
                f"--damsm_dir={fresh}", f"--image_encoder_trunk={trunk}")
    assert res.returncode == 1 and "Traceback" not in res.stderr
    assert (f"error: --image_encoder_trunk={trunk} is frozen during DAMSM pretraining and needs "
            "its pretrained weights: pass --inception_weights=PATH") in res.stderr
    assert not fresh.exists()
  # --resume with nothing to continue: exit status 3 (the demo's cue), the reason, no traceback.
  res = _main("msmt_tf.pretrain_damsm", f"--data_dir={smoke['data']}", f"--damsm_dir={fresh}",
              "--resume")
  assert res.returncode == 3 and "Traceback" not in res.stderr
  assert f"error: --resume: {fresh} holds no DAMSM encoders to continue" in res.stderr
  assert not fresh.exists()
  # Weights for the small trunk (trained from scratch) would be ignored: refused, naming the file.
  res = _main("msmt_tf.pretrain_damsm", f"--data_dir={smoke['data']}", f"--damsm_dir={fresh}",
              "--image_encoder_trunk=small", "--inception_weights=/x/inception_notop.h5")
  assert res.returncode == 1 and "Traceback" not in res.stderr
  assert ("error: --inception_weights=/x/inception_notop.h5 is given, but "
          "--image_encoder_trunk=small trains its own trunk from scratch") in res.stderr
  assert not fresh.exists()
  # The batch-too-large error names pretrain_damsm's own flag.
  res = _main("msmt_tf.pretrain_damsm", f"--data_dir={smoke['data']}", f"--damsm_dir={fresh}",
              "--damsm_batch_size=17")
  assert res.returncode == 1 and "Traceback" not in res.stderr
  assert "batch_size 17 is larger than the train split" in res.stderr
  assert res.stderr.rstrip().endswith("lower --damsm_batch_size")
  # A train split of one class: DAMSM's losses would be identically 0 (no negatives): refused.
  one_class = tmp_path / "one_class"
  shutil.copytree(smoke["data"], one_class)
  with open(one_class / "train" / "class_info.pickle", "wb") as f:
    pickle.dump([3] * 16, f)
  res = _main("msmt_tf.pretrain_damsm", f"--data_dir={one_class}", f"--damsm_dir={fresh}")
  assert res.returncode == 1 and "Traceback" not in res.stderr
  assert (f"every image of the train split of {one_class} (16 images) has class 3: DAMSM's "
          "losses take the other classes of a batch as negatives") in res.stderr
  assert not fresh.exists()
  # The GAN trains on it, but says its DAMSM losses are 0.
  res = _run("msmt_tf.train", *_train_args(smoke, str(tmp_path / "run"), "--max_steps=1"),
             f"--data_dir={one_class}")
  assert res.returncode == 0, res.stderr[-2000:]
  assert (f"warning: every image of the train split of {one_class} has class 3: the DAMSM "
          "losses take other classes as negatives and are 0 for this run") in res.stderr


def test_existing_run_is_never_overwritten(smoke, tmp_path):
  run_dir = str(tmp_path / "run")
  # --resume on a folder with no checkpoint starts at step 0, and says so (a mistyped --run_dir).
  res = _run("msmt_tf.train", *_train_args(smoke, run_dir, "--max_steps=1", "--resume"))
  assert res.returncode == 0, res.stderr[-2000:]
  assert f"warning: --resume: {run_dir} does not exist; starting a new run at step 0" in res.stderr
  res = _main("msmt_tf.train", *_train_args(smoke, run_dir, "--max_steps=2"))
  assert res.returncode != 0 and "pass --resume" in res.stderr
  res = _main("msmt_tf.train", *_train_args(smoke, run_dir, "--max_steps=2", "--resume",
                                           "--num_heads=3"))
  assert res.returncode != 0 and "model.num_heads: 2 -> 3" in res.stderr
  # The same dataset moved resumes; one whose training split changed (rebuilt with another
  # split: here one image fewer) is refused, naming the split.
  moved, rebuilt = tmp_path / "moved", tmp_path / "rebuilt"
  shutil.copytree(smoke["data"], moved)
  shutil.copytree(smoke["data"], rebuilt)
  with open(rebuilt / "train" / "filenames.pickle", "rb") as f:
    keys = pickle.load(f)
  with open(rebuilt / "train" / "filenames.pickle", "wb") as f:
    pickle.dump(keys[:-1], f)
  for stale in ("train/class_info.pickle", "captions.pickle"):  # remade by the loader
    (rebuilt / stale).unlink(missing_ok=True)
  args = [a for a in _train_args(smoke, run_dir, "--max_steps=1", "--resume")
          if not a.startswith("--data_dir")]
  res = _main("msmt_tf.train", *args, f"--data_dir={rebuilt}")
  assert res.returncode != 0 and "Traceback" not in res.stderr
  assert "data.train_images: 16 -> 15; data.train_files_sha256: " in res.stderr
  assert "the training split differs (a dataset rebuilt or replaced" in res.stderr
  res = _run("msmt_tf.train", *args, f"--data_dir={moved}")
  assert res.returncode == 0, res.stderr[-2000:]
  assert os.path.exists(os.path.join(run_dir, "checkpoints", "ckpt-00000001.npz"))
  # flags.txt is a flagfile for the same run under JAX too, which defines no TensorFlow flags
  # before parsing: absl's and TensorFlow's own flags are left out of it.
  with open(os.path.join(run_dir, "config.json")) as f:
    assert json.load(f)["compute"] == {"backend": "tensorflow", "mixed_precision": False,
                                       "jit_compile": False}
  flags_txt = os.path.join(run_dir, "flags.txt")
  with open(flags_txt) as f:
    text = f.read()
  assert f"--run_dir={run_dir}\n" in text and "--batch_size=4\n" in text
  assert "--test_tmpdir" not in text and "--verbosity" not in text
  if importlib.util.find_spec("jax") is not None:  # parsed; stops at the (missing) dataset
    missing = str(tmp_path / "no_data")
    res = subprocess.run([sys.executable, "-m", "msmt_tf.train", f"--flagfile={flags_txt}",
                          f"--data_dir={missing}", "--resume"], cwd=REPO, capture_output=True,
                         text=True, env=dict(os.environ, KERAS_BACKEND="jax"))
    assert res.returncode == 1 and "Flags parsing error" not in res.stderr, res.stderr[-2000:]
    assert f"error: dataset folder not found: {missing}" in res.stderr
  # ... and for the other commands that read a run's flags (they define the same flags).
  gone = str(tmp_path / "no_run")
  procs = {m: subprocess.Popen([sys.executable, "-m", m, f"--flagfile={flags_txt}",
                                f"--run_dir={gone}"], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for m in ("msmt_tf.export", "msmt_tf.sample", "evaluation.metric_main",
                     "msmt_tf.params")}
  for m, p in procs.items():
    _, err = p.communicate(timeout=300)
    assert "Unknown command line flag" not in err, (m, err[-2000:])


def test_other_words_or_encoders_never_continue_a_run(smoke, reference_run, tmp_path):
  """A dataset renumbered with the same vocabulary size is refused by train --resume, by the
  DAMSM encoders pretrained on the original and by the commands that load a run (sample,
  export, metric_main: runs.load_run); DAMSM encoders whose weights changed since the run
  started are refused by train --resume (unless --accept_new_damsm) and by runs.load_run.
  Runs and encoders recorded before these checks still resume and load."""
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  renumbered = data_fixtures.renumbered_copy(smoke["data"], tmp_path / "renumbered")
  run_dir = str(tmp_path / "run")
  shutil.copytree(reference_run, run_dir)
  args = [a for a in _train_args(smoke, run_dir, "--max_steps=9", "--resume")
          if not a.startswith("--data_dir")]
  res = _main("msmt_tf.train", *args, f"--data_dir={renumbered}")
  assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
  assert "data.vocab_sha256: '" in res.stderr and "data.train_files_sha256" not in res.stderr
  assert ("the vocabulary differs (other words or order: a dataset rebuilt from other "
          "captions)") in res.stderr
  res = _main("msmt_tf.train", *_train_args(smoke, str(tmp_path / "new"), "--max_steps=1"),
              f"--data_dir={renumbered}")
  assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
  _, _, vocab = datasets.load_captions(renumbered, "shapes")
  assert (f"{smoke['damsm']}/text_encoder.keras was trained on another vocabulary than the one "
          f"of {renumbered} ({len(vocab)} words, but other words or order: SHA-256 ") in res.stderr
  with pytest.raises(ValueError, match=f"the run {run_dir} was trained on another vocabulary "
                     f"than the one of {renumbered} .* words, but other words or order"):
    runs.load_run(run_dir, data_dir=renumbered)
  # Encoders pretrained before the record named the vocabulary are checked on its size only.
  unrecorded = tmp_path / "unrecorded_damsm"
  shutil.copytree(smoke["damsm"], unrecorded)
  kept = json.loads((unrecorded / runs.PRETRAIN_RECORD).read_text())
  del kept["settings"]["vocab_sha256"]
  (unrecorded / runs.PRETRAIN_RECORD).write_text(json.dumps(kept))
  runs.load_damsm(str(unrecorded), vocab, renumbered)
  # Encoders pretrained again since the run started (--overwrite, another seed).
  damsm = str(tmp_path / "damsm")
  res = _run("msmt_tf.pretrain_damsm", f"--data_dir={smoke['data']}", f"--damsm_dir={damsm}",
             "--seed=5")
  assert res.returncode == 0, res.stderr[-2000:]
  args = [a for a in _train_args(smoke, run_dir, "--resume")
          if not a.startswith("--damsm_dir")]
  refusal = (f"--resume: the DAMSM text and image encoders in {damsm} are not the ones the "
             f"checkpoints of {run_dir} were trained with (weights changed")
  res = _main("msmt_tf.train", *args, "--max_steps=9", f"--damsm_dir={damsm}")
  assert res.returncode == 1 and "Traceback" not in res.stderr, res.stderr[-2000:]
  assert refusal in res.stderr and "--accept_new_damsm" in res.stderr
  assert checkpoint.latest(run_dir)[0] == 8  # nothing trained, nothing written
  with pytest.raises(ValueError, match=f"the DAMSM text encoder {damsm}/text_encoder.keras is "
                     f"not the one the run {run_dir} was trained with"):
    runs.load_run(run_dir, damsm_dir=damsm)
  # Older records. A run of 2026-11-28 (one digest of both encoders) is checked on both...
  text, image = runs.load_damsm(smoke["damsm"], datasets.load_captions(smoke["data"], "shapes")[2],
                                smoke["data"])
  config_path = os.path.join(run_dir, "config.json")
  newest = checkpoint.latest(run_dir)[1]

  def older(record):
    record["damsm_weights_sha256"] = runs.weights_sha256(text, image)
    record["data"].pop("vocab_sha256")

  _edit_json(config_path, older)
  _edit_checkpoint_record(newest, older)
  res = _main("msmt_tf.train", *args, "--max_steps=9", f"--damsm_dir={damsm}")
  assert res.returncode == 1 and refusal in res.stderr, res.stderr[-2000:]
  # ... and one recorded before the digests is not checked: it resumes (here with its own
  # encoders, moved: the same weights) and records both from then on.
  for edit in (_edit_json, _edit_checkpoint_record):
    edit(config_path if edit is _edit_json else newest,
         lambda record: record.pop("damsm_weights_sha256"))
  moved = str(tmp_path / "moved_damsm")
  shutil.copytree(smoke["damsm"], moved)
  res = _run("msmt_tf.train", *args, "--max_steps=9", f"--damsm_dir={moved}")
  assert res.returncode == 0, res.stderr[-2000:]
  assert checkpoint.latest(run_dir)[0] == 9
  record = json.loads(open(config_path).read())
  assert record["data"]["vocab_sha256"] == vocab_sha(smoke["data"])
  assert record["damsm_weights_sha256"] == runs.encoder_digests(text, image)
  # Continued with the new encoders on purpose: said and recorded, but not in flags.txt (the
  # run's flagfile: the consent is for one change); each step's generator keeps the text
  # encoder it was trained with.
  res = _run("msmt_tf.train", *args, "--max_steps=10", f"--damsm_dir={damsm}",
             "--accept_new_damsm")
  assert res.returncode == 0, res.stderr[-2000:]
  assert (f"note: --accept_new_damsm: continuing from step 9 with the DAMSM text and image "
          f"encoders of {damsm}") in res.stdout
  record = json.loads(open(config_path).read())
  [change] = record["damsm_changes"]
  assert change["step"] == 9 and change["to"] == record["damsm_weights_sha256"]
  assert change["from"] == runs.encoder_digests(text, image)
  with open(os.path.join(run_dir, "flags.txt")) as f:  # nor --resume (a run's flagfile)
    recorded = f.read().splitlines()
  assert not {"--accept_new_damsm", "--noaccept_new_damsm", "--resume", "--noresume"} & set(
      recorded), recorded
  assert runs.load_run(run_dir, damsm_dir=damsm)[3]["step"] == 10
  assert runs.load_run(run_dir, step=9, damsm_dir=moved)[3]["step"] == 9
  with pytest.raises(ValueError, match="is not the one the run"):
    runs.load_run(run_dir, step=9, damsm_dir=damsm)
  # A change accepted by a resume that wrote no checkpoint (nothing to train here, which leaves
  # config.json alone; a crash or Ctrl-C after the rewrite of config.json alike) is not what
  # checkpoint 10 was trained with: going back to those encoders is no change.
  res = _main("msmt_tf.train", *args, "--max_steps=10", f"--damsm_dir={moved}",
              "--accept_new_damsm")
  assert res.returncode == 0 and "continuing from step 10" in res.stdout, res.stderr[-2000:]
  assert "nothing is trained, so config.json is left as it is" in res.stdout, res.stdout
  res = _main("msmt_tf.train", *args, "--max_steps=10", f"--damsm_dir={damsm}")
  assert res.returncode == 0, res.stderr[-2000:]
  assert json.loads(open(config_path).read())["damsm_changes"] == [change]


def _edit_json(path, edit):
  with open(path) as f:
    record = json.load(f)
  edit(record)
  with open(path, "w") as f:
    json.dump(record, f)


def _edit_checkpoint_record(path, edit):
  """Rewrites the record of checkpoint `path` with `edit` (what an older version wrote)."""
  with np.load(path) as f:
    arrays = {k: f[k] for k in f.files}
  record = json.loads(bytes(arrays["__meta__"]).decode())
  edit(record)
  arrays["__meta__"] = np.frombuffer(json.dumps(record).encode(), dtype=np.uint8)
  with open(path, "wb") as f:
    np.savez(f, **arrays)


def vocab_sha(data_dir):
  return datasets.load_captions(data_dir, "shapes")[2].sha256


def test_nan_guard_and_damaged_checkpoints_keep_the_run(smoke, reference_run, tmp_path, capsys):
  from absl import flags  # pylint: disable=g-import-not-at-top
  from msmt_tf import train  # pylint: disable=g-import-not-at-top
  run_dir = str(tmp_path / "run")
  shutil.copytree(reference_run, run_dir)  # trained to step 8: checkpoints 6, 7 and 8
  good = os.path.join(run_dir, "checkpoints", "ckpt-00000008.npz")
  with open(good, "rb") as f:
    good_bytes = f.read()
  flags.FLAGS.unparse_flags()
  # A new learning rate on --resume is applied (the checkpoint restored the old one), and said.
  flags.FLAGS(["train", "--flagfile=" + os.path.join(REPO, "configs", "smoke.cfg"),
               *_train_args(smoke, run_dir, "--max_steps=10", "--resume", "--lr_g=1e-3")])
  try:
    capsys.readouterr()
    run = train.prepare()
    assert float(run.gan.g_optimizer.learning_rate) == pytest.approx(1e-3)
    assert all(float(o.learning_rate) == pytest.approx(2e-4) for o in run.gan.d_optimizers)
    assert "note: continuing with --lr_g 0.0002 -> 0.001" in capsys.readouterr().out
    assert run.record["optimizer"]["lr_g"] == 1e-3
    var = run.gan.generator.trainable_variables[0]
    var.assign(np.full(var.shape, np.nan, "float32"))
    with pytest.raises(train.TrainingError, match=r"non-finite loss at step 9 .*ckpt-00000008"):
      train.train(run)
    with open(good, "rb") as f:
      assert f.read() == good_bytes
    assert not os.path.exists(os.path.join(run_dir, "checkpoints", "ckpt-00000009.npz"))
    # Every checkpoint damaged: the first --resume sets them aside and stops; a second one (a
    # scheduler retrying the command), or a run without --resume, does not start over the run.
    for _, path in checkpoint.list_checkpoints(run_dir):
      with open(path, "r+b") as f:
        f.truncate(1000)
    loss_log = os.path.join(run_dir, "losses.jsonl")
    with open(loss_log) as f:
      losses = f.read()
    assert '"step": 8' in losses
    with pytest.raises(checkpoint.DamagedCheckpointError, match="every one is damaged"):
      train.prepare()
    for resume in (True, False):
      flags.FLAGS.resume = resume
      with pytest.raises(ValueError, match=f"{run_dir} has no readable checkpoint, only damaged "
                         "ones set aside \\(ckpt-00000006.npz.damaged, ckpt-00000007.npz.damaged"
                         ", ckpt-00000008.npz.damaged\\): nothing to resume from"):
        train.prepare()
    with open(loss_log) as f:
      assert f.read() == losses
    # A file as --run_dir; a run imported by import_torch (generator weights only).
    flags.FLAGS.run_dir = loss_log
    with pytest.raises(ValueError, match=f"--run_dir {loss_log} is a file, not a folder"):
      train.prepare()
    imported = tmp_path / "imported"
    imported.mkdir()
    (imported / "config.json").write_text(json.dumps({"imported": {"from": "DM-GAN G_NET"}}))
    flags.FLAGS.run_dir = str(imported)
    with pytest.raises(ValueError, match="is an imported run \\(DM-GAN G_NET\\): it holds "
                       "generator weights only"):
      train.prepare()
  finally:
    flags.FLAGS.unparse_flags()


def test_a_resume_under_another_backend_or_precision_is_said_and_kept(capsys):
  """Not refused (a run moves to a GPU under JAX, or to bfloat16), but said, and kept in
  config.json's compute_changes; the same compute says nothing."""
  import types  # pylint: disable=g-import-not-at-top
  from msmt_tf import train  # pylint: disable=g-import-not-at-top
  tf_f32 = {"backend": "tensorflow", "mixed_precision": False, "jit_compile": False}
  jax_bf16 = {"backend": "jax", "mixed_precision": True, "jit_compile": False}
  one = {"devices": 1, "processes": 1}

  def at(step, compute, world=one):  # a resumed run at `step` of 20 under `compute`, `world`
    return types.SimpleNamespace(record={"compute": dict(compute), "world": dict(world)},
                                 step=step, max_steps=20, is_writer=True)
  run = at(7, jax_bf16)
  train._note_compute_change(run, {"compute": dict(tf_f32)})
  out = capsys.readouterr().out
  assert "note: continuing under jax (the run was trained under tensorflow to step 7)" in out
  assert "the noise is drawn by the other backend's random number generator" in out
  assert "note: continuing in bfloat16 (--mixed_precision) (the run computed in float32 to " \
      "step 7)" in out
  assert "config.json keeps the change (compute_changes)" in out
  assert run.record["compute_changes"] == [{"step": 7, "from": tf_f32, "to": jax_bf16}]
  # Back to TensorFlow float32 at step 9: both changes kept.
  again = at(9, tf_f32)
  train._note_compute_change(again, {**run.record})
  assert [c["step"] for c in again.record["compute_changes"]] == [7, 9]
  # A run already at --max_steps trains nothing, so config.json is not rewritten: said so.
  done = at(20, jax_bf16)
  capsys.readouterr()
  train._note_compute_change(done, {"compute": dict(tf_f32)})
  out = capsys.readouterr().out
  assert "nothing is trained, so config.json is left as it is" in out
  assert "config.json keeps the change" not in out
  same = at(11, tf_f32)
  capsys.readouterr()
  train._note_compute_change(same, {"compute": dict(tf_f32)})
  assert capsys.readouterr().out == "" and "compute_changes" not in same.record
  train._note_compute_change(same, {})  # a config.json from before the record: nothing said
  assert capsys.readouterr().out == ""
  # Another number of devices: said and kept in world_changes.
  two = {"devices": 2, "processes": 2}
  moved = at(5, tf_f32, two)
  train._note_compute_change(moved, {"compute": dict(tf_f32), "world": dict(one)})
  out = capsys.readouterr().out
  assert "note: continuing on 2 device(s) in 2 process(es) (the run trained on 1 in 1 to step 5)" \
      in out and "config.json keeps the change (world_changes)" in out
  assert moved.record["world_changes"] == [{"step": 5, "from": one, "to": two}]


def test_ctrl_c_or_sigterm_names_the_step_and_the_checkpoint_to_resume_from(tmp_path, monkeypatch,
                                                                             capsys):
  from msmt_tf import train  # pylint: disable=g-import-not-at-top
  run = train.Run()
  run.run_dir, run.step = str(tmp_path), 7
  monkeypatch.setattr(train, "prepare", lambda: run)

  def interrupted(_):
    raise KeyboardInterrupt
  monkeypatch.setattr(train, "train", interrupted)
  cli.stops(capsys, 130, "interrupted at step 7; the newest checkpoint is none yet", train.main, [])
  os.makedirs(tmp_path / "checkpoints")
  (tmp_path / "checkpoints" / "ckpt-00000005.npz").write_bytes(b"")
  cli.stops(capsys, 130, "interrupted at step 7; the newest checkpoint is "
            f"{tmp_path}/checkpoints/ckpt-00000005.npz \\(step 5\\): continue with the same "
            "command and --resume", train.main, [])
  # SIGTERM (Slurm's time limit, `kill`, `docker stop`) stops a run as Ctrl-C does, with the
  # step and the checkpoint, not silently; the process's own SIGTERM handler is back afterwards.
  def killed(_):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(60)  # the handler raises first
    raise AssertionError("SIGTERM did not stop the training")
  monkeypatch.setattr(train, "train", killed)
  before = signal.getsignal(signal.SIGTERM)
  cli.stops(capsys, 143, "stopped by SIGTERM at step 7; the newest checkpoint is "
            f"{tmp_path}/checkpoints/ckpt-00000005.npz \\(step 5\\)", train.main, [])
  assert signal.getsignal(signal.SIGTERM) is before


def test_damsm_pretraining_loss_goes_down(smoke, tmp_path, capsys):
  from msmt_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  from msmt_tf.pretrain_damsm import pretrain  # pylint: disable=g-import-not-at-top
  data = datasets.load_split(smoke["data"], "shapes", "train")
  test = datasets.load_split(smoke["data"], "shapes", "test")
  cfg = ModelConfig(vocab_size=len(data.vocab), text_dim=16, embedding_dim=12)
  hist = pretrain(data, test, cfg, str(tmp_path / "damsm"), 8, trunk="small", epochs=12,
                  batch_size=8, snapshot_every=100, verbose=False)
  first = hist[0]["train_word"] + hist[0]["train_sent"]
  last = hist[-1]["train_word"] + hist[-1]["train_sent"]
  assert last < 0.7 * first, (first, last)
  assert os.path.isfile(str(tmp_path / "damsm" / "text_encoder.keras"))
  assert hist[1]["lr"] == pytest.approx(0.002 * 0.98)
  assert all(h["test_word"] > 0 and h["test_sent"] > 0 for h in hist)
  # A test split of one image, or of one class, has no negatives: its losses are "n/a" (null in
  # the log), not a perfect-looking 0.
  import dataclasses  # pylint: disable=g-import-not-at-top
  one = dataclasses.replace(test, keys=test.keys[:1], image_paths=test.image_paths[:1],
                            captions=test.captions[:1], class_ids=test.class_ids[:1])
  same = dataclasses.replace(test, class_ids=np.full_like(test.class_ids, 3))
  for split, why in ((one, "has 1 image"), (same, "has class 3")):
    hist = pretrain(data, split, cfg, str(tmp_path / "damsm_n"), 8, trunk="small", epochs=1,
                    batch_size=8, snapshot_every=100)
    out = capsys.readouterr().out
    assert hist[0]["test_word"] is None and hist[0]["test_sent"] is None
    assert "note: no DAMSM test losses: " in out and why in out, out
    assert re.search(r"DAMSM epoch 1: train word [\d.]+ sent [\d.]+ \| test n/a \| lr", out), out
    shutil.rmtree(tmp_path / "damsm_n")


def test_interrupted_damsm_pretraining_resumes_exactly(smoke, tmp_path, monkeypatch, capsys):
  """Two interruptions, each resumed with --resume, end where the uninterrupted run ends (the
  same data order, learning rate and dropout masks; Adam afresh every epoch, or as saved inside
  an epoch): Ctrl-C after the epoch-2 snapshot, and a --damsm_max_steps stop inside epoch 2
  continued with a larger budget. What --resume refuses names the reason."""
  import keras  # pylint: disable=g-import-not-at-top
  from msmt_tf import pretrain_damsm, runs  # pylint: disable=g-import-not-at-top
  from msmt_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from msmt_tf.data import datasets  # pylint: disable=g-import-not-at-top
  data = datasets.load_split(smoke["data"], "shapes", "train")  # 16 images: 2 batches of 8
  test = datasets.load_split(smoke["data"], "shapes", "test")
  cfg = ModelConfig(vocab_size=len(data.vocab), text_dim=16, embedding_dim=12)

  def run(damsm, **kw):
    return pretrain_damsm.pretrain(data, test, cfg, str(damsm), 8, trunk="small",
                                   **{"epochs": 3, "batch_size": 8, "snapshot_every": 2,
                                      "verbose": False, **kw})

  def same_encoders(got_dir):
    for kind, name in (("RNNTextEncoder", "text_encoder.keras"),
                       ("ImageEncoder", "image_encoder.keras")):
      a = runs.load_damsm_encoder(str(tmp_path / "ref" / name), kind)
      b = runs.load_damsm_encoder(str(got_dir / name), kind)
      for x, y in zip(a.trainable_variables, b.trainable_variables):
        np.testing.assert_allclose(keras.ops.convert_to_numpy(y), keras.ops.convert_to_numpy(x),
                                   rtol=1e-4, atol=1e-6)
  # Same process, same ops: equal to float rounding (another dropout mask moves these by 10-30%).
  def same_epoch(got, want):
    assert got["epoch"] == want["epoch"] and got["lr"] == want["lr"]
    for key in ("steps", "train_word", "train_sent", "test_word", "test_sent"):
      assert got[key] == pytest.approx(want[key], rel=1e-4), key

  ref = run(tmp_path / "ref")
  damsm = tmp_path / "damsm"
  seed_dropout = pretrain_damsm.seed_dropout

  def ctrl_c_in_epoch_3(models, seed, epoch):
    if epoch == 2:
      raise KeyboardInterrupt
    seed_dropout(models, seed, epoch)
  monkeypatch.setattr(pretrain_damsm, "seed_dropout", ctrl_c_in_epoch_3)
  progress = {}
  with pytest.raises(KeyboardInterrupt):
    run(damsm, progress=progress)
  monkeypatch.setattr(pretrain_damsm, "seed_dropout", seed_dropout)
  assert runs.read_pretrain_record(str(damsm))["complete"] is False
  assert progress == {"resumed": None, "snapshot": 2, "epochs_done": 2}
  assert "are a snapshot of epoch 2 of 3, not fully trained encoders; continue with the same " \
      "command and --resume" in pretrain_damsm.interrupted_message(str(damsm), progress)
  # Stopped before the first snapshot: no encoders, and the epochs done are said to be lost.
  assert pretrain_damsm.interrupted_message(str(tmp_path / "none"), {"epochs_done": 1}) == (
      "interrupted before the encoders were finished: no encoders were written yet; its 1 "
      "finished epoch(s) are lost (their loss lines are in damsm_log.jsonl): encoders are saved "
      "every --damsm_snapshot_every epochs and at the end; run the same command again")
  capsys.readouterr()
  got = run(damsm, resume=True, verbose=True)
  assert [e["epoch"] for e in got] == [3]
  assert "were finished" not in capsys.readouterr().out  # a snapshot, continued
  same_epoch(got[0], ref[2])
  log = [json.loads(l) for l in (damsm / "damsm_log.jsonl").read_text().splitlines()]
  assert [e["epoch"] for e in log] == [1, 2, 3]
  assert runs.read_pretrain_record(str(damsm))["complete"] is True
  same_encoders(damsm)
  # A step budget that ends inside epoch 2 (step 3 of 2 + 2), then a larger one: the rest of
  # epoch 2 with the Adam and dropout state saved at the stop, then epoch 3.
  budget = tmp_path / "budget"
  run(budget, max_steps=3)
  record = runs.read_pretrain_record(str(budget))
  assert (record["complete"], record["epoch"], record["batch"]) == (True, 2, 1)
  assert (budget / pretrain_damsm.STATE_FILE).is_file()
  got = run(budget, resume=True, verbose=True)
  assert [(e["epoch"], e.get("from_batch")) for e in got] == [(2, 1), (3, None)]
  # Finished encoders (as far as their budget went) trained further: said, with what it means.
  out = capsys.readouterr().out
  assert (f"note: the encoders in {budget} were finished; training them further changes them in "
          "place, and a GAN run trained with them will refuse to --resume") in out
  # The resumed epoch's train losses are the mean of its batches after the stop, and say so.
  assert re.search(r"DAMSM epoch 2: train \(batches 2-2 of 2\) word [\d.]+ sent", out), out
  assert re.search(r"DAMSM epoch 3: train word [\d.]+ sent", out), out
  same_epoch(got[1], ref[2])
  same_encoders(budget)
  assert not (budget / pretrain_damsm.STATE_FILE).exists()  # the end is a whole epoch
  # SIGTERM (a batch system's time limit) during step 3 (epoch 2, batch 1 of 2): the step ends,
  # a snapshot of it is written (with the Adam and dropout state inside the epoch), the stop is
  # raised; --resume then ends where the uninterrupted run ends.
  from msmt_tf import stopping  # pylint: disable=g-import-not-at-top
  stopped = tmp_path / "stopped"
  iterate = datasets.DataPipeline.iterate

  def sigterm_at_step(step):
    def sigterm_at(pipe, as_numpy=True):
      for i, batch in enumerate(iterate(pipe, as_numpy), 1):
        if pipe.num_epochs is None and i == step:  # the train pipeline's batch of that step
          os.kill(os.getpid(), signal.SIGTERM)
        yield batch
    return sigterm_at
  monkeypatch.setattr(datasets.DataPipeline, "iterate", sigterm_at_step(3))
  progress = {}
  capsys.readouterr()
  with pytest.raises(stopping.Terminated):
    run(stopped, progress=progress, verbose=True)
  monkeypatch.setattr(datasets.DataPipeline, "iterate", iterate)
  out, err = capsys.readouterr()
  assert "SIGTERM: stopping after this step, to save a snapshot of the encoders" in err
  assert re.search(r"DAMSM epoch 2: train \(batches 1-1 of 2\) word [\d.]+ sent [\d.]+ \| test "
                   r"not computed \(stopped\) \|", out), out
  record = runs.read_pretrain_record(str(stopped))
  assert (record["complete"], record["epoch"], record["batch"], record["steps"]) == (False, 2, 1, 3)
  assert (stopped / pretrain_damsm.STATE_FILE).is_file()
  assert progress["snapshot"] == 2
  assert "are a snapshot of epoch 2 of 3 (taken inside it, after batch 1 of 2), not fully " \
      "trained encoders; continue with the same command and --resume" in \
      pretrain_damsm.interrupted_message(str(stopped), progress, how="stopped by SIGTERM")
  # The line a resumed run killed before its next snapshot would have left (the rest of epoch
  # 2, step 4) is not kept: the resumed run writes it again.
  with open(stopped / "damsm_log.jsonl", "a") as f:
    f.write(json.dumps({"epoch": 2, "steps": 4, "from_batch": 1, "train_word": 0.0}) + "\n")
  got = run(stopped, resume=True)
  assert [(e["epoch"], e.get("from_batch")) for e in got] == [(2, 1), (3, None)]
  same_epoch(got[1], ref[2])
  same_encoders(stopped)
  log = [json.loads(l) for l in (stopped / "damsm_log.jsonl").read_text().splitlines()]
  assert [(e["epoch"], e.get("stopped"), e["steps"]) for e in log] == [
      (1, None, 2), (2, True, 3), (2, None, 4), (3, None, 6)]
  assert log[1]["test_word"] is None and log[2]["test_word"] is not None
  # Stopped inside the last epoch (step 5: epoch 3, batch 1 of 2): a snapshot, not finished
  # encoders (train would take them for finished ones), and the stop goes on.
  last = tmp_path / "stopped_in_the_last_epoch"
  monkeypatch.setattr(datasets.DataPipeline, "iterate", sigterm_at_step(5))
  with pytest.raises(stopping.Terminated):
    run(last)
  monkeypatch.setattr(datasets.DataPipeline, "iterate", iterate)
  record = runs.read_pretrain_record(str(last))
  assert (record["complete"], record["epoch"], record["batch"], record["steps"]) == (False, 3, 1, 5)
  assert runs.damsm_snapshot_note(str(last)) is not None
  got = run(last, resume=True)
  assert [(e["epoch"], e.get("from_batch")) for e in got] == [(3, 1)]
  assert runs.read_pretrain_record(str(last))["complete"] is True
  same_encoders(last)
  # Refused, naming why: finished; other settings; a snapshot half moved in; a record that says
  # nothing; no record; no encoders.
  with pytest.raises(pretrain_damsm.ResumeRefused, match="trained to epoch 3 \\(6 steps\\), as "
                     "far as --damsm_epochs=3 goes: nothing to continue"):
    run(damsm, resume=True)
  with pytest.raises(pretrain_damsm.ResumeRefused, match="--damsm_batch_size is 4 here, the "
                     "snapshot .* was trained with 8"):
    run(damsm, epochs=5, batch_size=4, resume=True)
  with pytest.raises(pretrain_damsm.ResumeRefused, match="--seed is 1 here"):
    run(damsm, epochs=5, seed=1, resume=True)
  record = runs.read_pretrain_record(str(damsm))
  (damsm / runs.PRETRAIN_RECORD).write_text(json.dumps(
      {**record, "settings": {**record["settings"], "vocab_sha256": "0" * 64}}))
  with pytest.raises(pretrain_damsm.ResumeRefused, match="the vocabulary of the dataset is not "
                     "the one the snapshot .* was trained on \\(other words or order: SHA-256 "
                     "000000000000... trained on"):
    run(damsm, epochs=5, resume=True)
  (damsm / runs.PRETRAIN_RECORD).write_text(json.dumps(record))
  record = runs.read_pretrain_record(str(damsm))
  (damsm / runs.PRETRAIN_RECORD).write_text(json.dumps({**record, "complete": False,
                                                        "writing": True}))
  with pytest.raises(pretrain_damsm.ResumeRefused, match="stopped while moving the snapshot of "
                     "epoch 3 into place"):
    run(damsm, resume=True)
  assert "were being written when pretrain_damsm stopped" in runs.damsm_snapshot_note(str(damsm))
  (damsm / runs.PRETRAIN_RECORD).write_text(json.dumps({"complete": False}))
  with pytest.raises(pretrain_damsm.ResumeRefused, match="does not say where the snapshot "
                     "stopped"):
    run(damsm, resume=True)
  (damsm / runs.PRETRAIN_RECORD).unlink()
  with pytest.raises(pretrain_damsm.ResumeRefused, match="pretrain_record.json is missing or "
                     "unreadable"):
    run(damsm, resume=True)
  with pytest.raises(pretrain_damsm.ResumeRefused, match="holds no DAMSM encoders to continue; "
                     "run without --resume"):
    run(tmp_path / "empty", resume=True)


def test_dropout_masks_are_the_epochs_own(smoke):
  """seed_dropout gives each epoch its own masks (Keras reduces a seed generator's state modulo
  2**31 - 2, so counters 2**32 apart would repeat with a shift) and the same masks again for
  the same epoch (what a resumed run relies on)."""
  import keras  # pylint: disable=g-import-not-at-top
  from msmt_tf.config import ModelConfig  # pylint: disable=g-import-not-at-top
  from msmt_tf.pretrain_damsm import seed_dropout  # pylint: disable=g-import-not-at-top
  enc = ModelConfig(vocab_size=20, text_dim=16, embedding_dim=12).build_text_encoder(8)
  ones = keras.ops.ones((4, 32))

  def masks(epoch, draws=12):
    seed_dropout([enc], 0, epoch)
    return [keras.ops.convert_to_numpy(enc.drop(ones, training=True)) != 0
            for _ in range(draws)]
  e0, e1 = masks(0), masks(1)
  assert all((a == b).all() for a, b in zip(e0, masks(0)))
  for a in e1:
    assert not any((a == b).all() for b in e0)


def test_demo_driver_runs_all_steps_and_resumes(tmp_path):
  cfg = tmp_path / "demo.cfg"
  with open(os.path.join(REPO, "configs", "smoke.cfg")) as f:
    base = f.read()
  cfg.write_text(base + f"--data_dir={tmp_path / 'data'}\n--damsm_dir={tmp_path / 'damsm'}\n"
                 f"--run_dir={tmp_path / 'run'}\n--max_steps=2\n--sample_every=2\n")
  args = [sys.executable, "-m", "msmt_tf.demo", f"--config={cfg}", "--shapes_train=8",
          "--shapes_test=2", "--shapes_image_size=64", f"--export_root={tmp_path / 'models'}"]
  res = subprocess.run(args, cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "msmt_tf.data.shapes" in res.stdout and "msmt_tf.pretrain_damsm" in res.stdout
  assert os.path.isfile(tmp_path / "run" / "samples" / "step-00000002.png")
  assert os.path.isfile(tmp_path / "models" / "2" / "saved_model.pb")
  # A second run reuses the data and encoders and resumes the GAN run.
  res = subprocess.run(args + ["--gan_steps=3"], cwd=REPO, capture_output=True, text=True)
  assert res.returncode == 0, res.stderr[-2000:]
  assert "msmt_tf.pretrain_damsm" not in res.stdout and "--resume" in res.stdout
  assert os.path.isfile(tmp_path / "run" / "checkpoints" / "ckpt-00000003.npz")
  assert os.path.isfile(tmp_path / "models" / "3" / "saved_model.pb")


def test_a_snapshot_of_unfinished_pretraining_is_told_apart(smoke, tmp_path):
  """pretrain_damsm records whether its encoders are finished; train warns of a snapshot, and the
  demo pretrains again over a snapshot or a half-written folder (its own)."""
  from msmt_tf import demo  # pylint: disable=g-import-not-at-top
  from msmt_tf import runs  # pylint: disable=g-import-not-at-top
  with open(os.path.join(smoke["damsm"], runs.PRETRAIN_RECORD)) as f:
    assert json.load(f)["complete"] is True  # the fixture's finished pretraining
  assert runs.damsm_snapshot_note(smoke["damsm"]) is None
  assert demo.pretrain_command("c.cfg", smoke["damsm"]) is None
  damsm = tmp_path / "damsm"
  shutil.copytree(smoke["damsm"], damsm)
  (damsm / runs.PRETRAIN_RECORD).write_text(json.dumps(
      {"complete": False, "epoch": 50, "epochs": 600, "steps": 9200, "max_steps": None}))
  assert runs.damsm_snapshot_note(str(damsm)).startswith(
      f"the DAMSM encoders in {damsm} are a snapshot of epoch 50 of 600, not finished encoders")
  assert demo.pretrain_command("c.cfg", str(damsm)) == [
      "msmt_tf.pretrain_damsm", "--flagfile=c.cfg", "--resume"]
  (damsm / runs.PRETRAIN_RECORD).write_text(json.dumps(
      {"complete": False, "writing": True, "epoch": 50, "epochs": 600, "steps": 9200}))
  assert demo.pretrain_command("c.cfg", str(damsm))[-1] == "--overwrite"  # may be mixed
  (damsm / runs.PRETRAIN_RECORD).unlink()  # written before the record, or imported: trusted
  assert runs.damsm_snapshot_note(str(damsm)) is None
  (damsm / "image_encoder.keras").unlink()  # stopped between the two saves
  assert demo.pretrain_command("c.cfg", str(damsm))[-1] == "--overwrite"
  assert demo.pretrain_command("c.cfg", str(tmp_path / "none")) == [
      "msmt_tf.pretrain_damsm", "--flagfile=c.cfg"]


def test_demo_pretrains_again_when_its_snapshot_cannot_be_resumed(tmp_path, monkeypatch):
  """The demo resumes its DAMSM snapshot; when pretrain_damsm refuses (exit status 3: a config
  of other settings), it pretrains again over it (its own folder); other failures stop it."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from msmt_tf import demo  # pylint: disable=g-import-not-at-top
  cfg = tmp_path / "demo.cfg"
  cfg.write_text(f"--data_dir={tmp_path / 'data'}\n--damsm_dir={tmp_path / 'damsm'}\n"
                 f"--run_dir={tmp_path / 'run'}\n")
  os.makedirs(tmp_path / "data")
  (tmp_path / "data" / "captions.pickle").write_bytes(b"")
  calls = []

  class Stop(Exception):
    pass

  def fake_run(args, may_refuse=False):
    calls.append((args[0], args[-1], may_refuse))
    if args[0] == "msmt_tf.train":
      raise Stop
    return None if args[-1] == "--resume" else 1.0
  monkeypatch.setattr(demo, "_run", fake_run)
  monkeypatch.setattr(demo, "pretrain_command",
                      lambda c, d: ["msmt_tf.pretrain_damsm", f"--flagfile={c}", "--resume"])
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["demo", f"--config={cfg}"])
  try:
    with pytest.raises(Stop):
      demo.main([])
  finally:
    flags.FLAGS.unparse_flags()
  assert calls[:2] == [("msmt_tf.pretrain_damsm", "--resume", True),
                       ("msmt_tf.pretrain_damsm", "--overwrite", False)]
  assert calls[2][0] == "msmt_tf.train"
  # A refusal is exit status 3 and nothing else (a crash, exit 1, stops the demo).
  monkeypatch.undo()

  def exits(code):
    return lambda *a, **k: type("P", (), {"wait": lambda self: code})()
  monkeypatch.setattr(demo.subprocess, "Popen", exits(3))
  assert demo._run(["msmt_tf.pretrain_damsm", "--resume"], may_refuse=True) is None
  with pytest.raises(SystemExit, match="step failed \\(exit 3\\)"):
    demo._run(["msmt_tf.pretrain_damsm", "--resume"])
  monkeypatch.setattr(demo.subprocess, "Popen", exits(1))
  with pytest.raises(SystemExit, match="step failed \\(exit 1\\)"):
    demo._run(["msmt_tf.pretrain_damsm", "--resume"], may_refuse=True)


# A demo step as the commands stop: the signal is noted, the step's own shutdown (its message,
# the interpreter's exit) takes argv[1] seconds, then it prints the signals it got and exits with
# 128 + the first.
_STEP = r"""
import signal, sys, time
got = []
for s in (signal.SIGINT, signal.SIGTERM):
  signal.signal(s, lambda s, f: got.append(s))
print("ready", flush=True)
while not got:
  time.sleep(0.01)
time.sleep(float(sys.argv[1]))
print(" ".join(signal.Signals(s).name for s in got), flush=True)
sys.exit(128 + got[0])
"""


@pytest.mark.parametrize("signalled_too", [False, True])
@pytest.mark.parametrize("error", ["ctrl_c", "sigterm"])
def test_a_stopped_demo_stops_its_step_with_one_signal(error, signalled_too):
  """Ctrl-C or SIGTERM while a demo step runs: the step stops as it does alone, from exactly one
  signal. A step the signal reached too (a terminal's Ctrl-C signals the foreground process
  group, Slurm every process of the job) is left to stop by itself: a second signal during its
  shutdown would cut its message short. One the demo alone got (`kill PID`, `docker stop`) gets
  the same signal from the demo."""
  from msmt_tf import demo  # pylint: disable=g-import-not-at-top
  from msmt_tf import stopping  # pylint: disable=g-import-not-at-top
  sig = signal.SIGTERM if error == "sigterm" else signal.SIGINT
  e = stopping.Terminated() if error == "sigterm" else KeyboardInterrupt()
  proc = subprocess.Popen([sys.executable, "-c", _STEP, "1.0"], stdout=subprocess.PIPE,
                          text=True)
  try:
    assert proc.stdout.readline() == "ready\n"
    if signalled_too:
      proc.send_signal(sig)
    # Passed on after 0.3 s when not signalled (the step's shutdown takes 1 s: a step signalled
    # too would get a second signal if the wait were the only guard); waited for when signalled.
    code = demo.stop_step(proc, e, pass_on_after_s=0.3 if not signalled_too else 60)
    assert code == 128 + sig
    assert proc.stdout.read().split() == [sig.name]
  finally:
    proc.kill()
    proc.wait()


def test_sigterm_stops_the_demo_with_its_steps_message(tmp_path, monkeypatch, capfd):
  """SIGTERM to the demo alone (`kill PID`) while its dataset step runs: the step gets it from
  the demo, says what it left and that the same command finishes it; the demo names the step and
  exits 143."""
  import threading  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from msmt_tf import demo  # pylint: disable=g-import-not-at-top
  cfg = tmp_path / "demo.cfg"
  data = tmp_path / "data"
  cfg.write_text(f"--data_dir={data}\n--damsm_dir={tmp_path / 'damsm'}\n"
                 f"--run_dir={tmp_path / 'run'}\n")
  monkeypatch.setattr(demo, "PASS_ON_AFTER_S", 0.5)

  def kill_when_writing():  # once the step writes (its handler installed), SIGTERM to the demo
    deadline = time.time() + 120
    while not (data / "images").is_dir() and time.time() < deadline:
      time.sleep(0.05)
    os.kill(os.getpid(), signal.SIGTERM)
  flags.FLAGS.unparse_flags()
  flags.FLAGS(["demo", f"--config={cfg}", "--shapes_train=100000", "--shapes_image_size=64"])
  killer = threading.Thread(target=kill_when_writing, daemon=True)
  before = signal.getsignal(signal.SIGTERM)
  try:
    killer.start()
    with contextlib.chdir(REPO), pytest.raises(SystemExit) as stopped:
      demo.main([])
  finally:
    flags.FLAGS.unparse_flags()
    killer.join()
  err = capfd.readouterr().err
  assert stopped.value.code == 143, err
  assert f"stopped by SIGTERM: the dataset in {data} is unfinished; the same command finishes " \
         "it" in err
  assert err.rstrip().endswith("stopped by SIGTERM: the demo stopped in `python -m "
                               "msmt_tf.data.shapes` (what it kept is said above); the same "
                               "command continues where it stopped")
  assert signal.getsignal(signal.SIGTERM) is before
  assert (data / "shapes_unfinished.json").is_file()  # what the same command finishes


def test_mixed_precision_step_matches_float32(smoke, reference_run, tmp_path):
  """bfloat16 compute gives the same first-step losses as float32 to bfloat16 accuracy."""
  bf16 = str(tmp_path / "bf16")
  res = _run("msmt_tf.train", *_train_args(smoke, bf16, "--max_steps=1"), "--mixed_precision")
  assert res.returncode == 0, res.stderr[-2000:]
  got, want = _losses(bf16)[1], _losses(reference_run)[1]  # the same first step in float32
  for key in ("d_loss_64", "d_loss_128", "g_adv", "damsm_word", "damsm_sent", "g_total"):
    assert got[key] == pytest.approx(want[key], rel=2e-2), key
  # The float32 run resumed in bfloat16: said, and kept with the step it happened at. A resume
  # that trains nothing (--max_steps reached) rewrites config.json, but the next one reads what
  # computed the restored state from the checkpoint: no change is said or kept for it.
  fp32 = str(tmp_path / "fp32")
  shutil.copytree(reference_run, fp32)
  res = _run("msmt_tf.train", *_train_args(smoke, fp32, "--max_steps=8", "--resume",
                                          "--mixed_precision"))
  assert res.returncode == 0 and "nothing to train" in res.stdout, res.stderr[-2000:]
  res = _run("msmt_tf.train", *_train_args(smoke, fp32, "--max_steps=9", "--resume",
                                          "--mixed_precision"))
  assert res.returncode == 0, res.stderr[-2000:]
  assert "note: continuing in bfloat16 (--mixed_precision) (the run computed in float32 to " \
      "step 8)" in res.stdout
  with open(os.path.join(fp32, "config.json")) as f:
    changes = json.load(f)["compute_changes"]
  assert [(c["step"], c["to"]["mixed_precision"]) for c in changes] == [(8, True)]


@pytest.mark.skipif(importlib.util.find_spec("jax") is None, reason="jax is not installed")
def test_jax_backend_trains_checkpoints_and_resumes_exactly(smoke):
  """KERAS_BACKEND=jax: the jitted step's state reaches the checkpoints (sync), and a run
  resumed from the step-2 checkpoint repeats step 3 exactly."""
  env = dict(os.environ, KERAS_BACKEND="jax", JAX_PLATFORMS="cpu")
  ref_dir, run_dir = str(smoke["root"] / "jax_ref"), str(smoke["root"] / "jax_resumed")

  def train(run, *extra):
    res = subprocess.run(_cmd("msmt_tf.train", *_train_args(smoke, run, *extra)), cwd=REPO,
                         env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr[-2000:]

  train(ref_dir, "--max_steps=3")
  assert os.path.isfile(os.path.join(ref_dir, "generator_ema.keras"))
  shutil.copytree(ref_dir, run_dir)
  os.remove(os.path.join(run_dir, "checkpoints", "ckpt-00000003.npz"))
  train(run_dir, "--max_steps=3", "--resume")
  ref, got = _losses(ref_dir), _losses(run_dir)
  assert sorted(got) == [1, 2, 3]
  assert ref[2] == got[2]  # kept from before the resume
  for name, value in ref[3].items():
    assert got[3][name] == pytest.approx(value, rel=1e-6), name
