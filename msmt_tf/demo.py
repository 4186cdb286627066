r"""The built-in demo: shapes dataset -> DAMSM pretraining -> MSMT-GAN training -> sample grids.

    python -m msmt_tf.demo [--config configs/shapes.cfg] [--gan_steps N]

Runs, in order, the same commands a user runs for CUB or COCO:
  1. `python -m msmt_tf.data.shapes` (only if the dataset folder is absent),
  2. `python -m msmt_tf.pretrain_damsm` (only if the encoders are absent, half written, or a
     snapshot of an interrupted pretraining, which it resumes when the config allows),
  3. `python -m msmt_tf.train` (resuming if the run already has checkpoints),
  4. `python -m msmt_tf.export` to `saved_models/shapes_demo/<step>` (if not there yet),
with `--flagfile=configs/shapes.cfg`, a reduced-size MSMT-GAN (two stages, 64 and 128) sized
to finish in about a quarter of an hour on two CPU cores. Prints where the sample grids are.

Ctrl-C or SIGTERM stops the step that is running as it stops that command alone (its message
says what it kept), then the demo (exit status 130 / 143); the same command continues.
"""

import os
import signal
import subprocess
import sys
import time

if __name__ == "__main__":  # its known-harmless native lines off (this and every step it runs)
  from msmt_tf import console  # pylint: disable=g-import-not-at-top
  console.quiet_native_logs()

from absl import app
from absl import flags

from msmt_tf import stopping

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/shapes.cfg", "Flagfile of the demo.")
flags.DEFINE_integer("gan_steps", None, "Override the GAN steps of the config.")
flags.DEFINE_integer("shapes_train", 2000, "Training images of the demo dataset.")
flags.DEFINE_integer("shapes_test", 200, "Test images of the demo dataset.")
flags.DEFINE_integer("shapes_image_size", 128, "Image side of the demo dataset.")
flags.DEFINE_string("export_root", "saved_models/shapes_demo", "Where the SavedModel versions go.")


def _flag_value(path, name):
  value = None
  with open(path) as f:
    for line in f:
      line = line.strip()
      if line.startswith(f"--{name}="):
        value = line.split("=", 1)[1]
  if value is None:
    sys.exit(f"error: {path} does not set --{name}")
  return value


# A step that got the demo's signal too (a terminal's Ctrl-C reaches the whole foreground process
# group; Slurm signals every process of the job) stops by itself, and a second signal could cut
# its message short: it gets this long before the demo passes the signal on (`kill PID` and
# `docker stop` signal the demo alone). Training stops after its step, to save a checkpoint of it,
# which a second signal would skip: the demo's steps take well under a second once traced.
PASS_ON_AFTER_S = 10.0


def stop_step(proc, error, pass_on_after_s=None):
  """Waits for the step `proc` after the demo's Ctrl-C or SIGTERM (`error`), passing the same
  signal on if it is still running after `pass_on_after_s` (default `PASS_ON_AFTER_S`); returns
  its exit status."""
  try:
    return proc.wait(timeout=PASS_ON_AFTER_S if pass_on_after_s is None else pass_on_after_s)
  except subprocess.TimeoutExpired:
    proc.send_signal(signal.SIGTERM if isinstance(error, stopping.Terminated) else signal.SIGINT)
  return proc.wait()


def _run(args, may_refuse=False):
  """Runs one step; stops the demo when it fails. `may_refuse`: returns None instead when the
  step exits with status 3 (pretrain_damsm --resume has nothing it can continue). Ctrl-C or
  SIGTERM: the step stops as it does alone (`stop_step`), and the interrupt goes on with the
  step's name (`step`)."""
  print("\n$ python -m " + " ".join(args), flush=True)
  start = time.time()
  proc = subprocess.Popen([sys.executable, "-m", *args])
  try:
    code = proc.wait()
  except KeyboardInterrupt as e:
    e.step = args[0]
    stop_step(proc, e)
    raise
  if may_refuse and code == 3:
    return None
  if code:
    sys.exit(f"error: step failed (exit {code}): {' '.join(args)}")
  return time.time() - start


def pretrain_command(cfg, damsm_dir):
  """The pretrain_damsm command when `damsm_dir` lacks finished encoders, else None: a snapshot
  of an interrupted pretraining is continued (`--resume`); what else is there (half written) is
  replaced (`--overwrite`: the folder is the demo's own, and pretrain_damsm refuses existing
  encoders)."""
  from msmt_tf import config, runs  # pylint: disable=g-import-not-at-top
  present = [os.path.isfile(p) for p in config.damsm_paths(damsm_dir)]
  if all(present) and not runs.damsm_snapshot_note(damsm_dir):
    return None
  record = runs.read_pretrain_record(damsm_dir) or {}
  resumable = all(present) and not record.get("writing")
  return (["msmt_tf.pretrain_damsm", f"--flagfile={cfg}"]
          + (["--resume"] if resumable else ["--overwrite"] if any(present) else []))


def main(argv):
  del argv
  try:
    with stopping.sigterm_as_interrupt():
      demo()
  except KeyboardInterrupt as e:
    step = getattr(e, "step", None)
    stopping.exit_stopped(e, f"{stopping.how_stopped(e)}: the demo stopped"
                          + (f" in `python -m {step}` (what it kept is said above)" if step
                             else "") + "; the same command continues where it stopped")


def demo():
  """The demo's steps, in order (the module doc)."""
  cfg = FLAGS.config
  if not os.path.isfile(cfg):
    sys.exit(f"error: config not found: {cfg}")
  data_dir = _flag_value(cfg, "data_dir")
  damsm_dir = _flag_value(cfg, "damsm_dir")
  run_dir = _flag_value(cfg, "run_dir")
  start = time.time()
  timings = {}
  if not os.path.isfile(os.path.join(data_dir, "captions.pickle")):
    timings["dataset"] = _run(["msmt_tf.data.shapes", f"--out={data_dir}",
                               f"--num_train={FLAGS.shapes_train}",
                               f"--num_test={FLAGS.shapes_test}",
                               f"--image_size={FLAGS.shapes_image_size}"])
  pretrain = pretrain_command(cfg, damsm_dir)
  if pretrain:
    timings["damsm"] = _run(pretrain, may_refuse=pretrain[-1] == "--resume")
    if timings["damsm"] is None:  # a snapshot of other settings: the demo's folder, so again
      print("the DAMSM snapshot cannot be continued with this config: pretraining again",
            flush=True)
      timings["damsm"] = _run(pretrain[:-1] + ["--overwrite"])
  train = ["msmt_tf.train", f"--flagfile={cfg}"]
  if os.path.isdir(os.path.join(run_dir, "checkpoints")):
    train.append("--resume")
  if FLAGS.gan_steps:
    train.append(f"--max_steps={FLAGS.gan_steps}")
  timings["gan"] = _run(train)
  from msmt_tf import checkpoint  # pylint: disable=g-import-not-at-top
  step = checkpoint.latest(run_dir)[0]
  export_dir = os.path.join(FLAGS.export_root, str(step))
  if not os.path.exists(export_dir):
    timings["export"] = _run(["msmt_tf.export", f"--run_dir={run_dir}",
                              f"--output={export_dir}"])
  samples = os.path.join(run_dir, "samples")
  grids = sorted(os.listdir(samples)) if os.path.isdir(samples) else []
  print(f"\ndemo finished in {(time.time() - start) / 60:.1f} min "
        f"({', '.join(f'{k} {v:.0f} s' for k, v in timings.items())})")
  if grids:
    print(f"sample grids (columns: fixed test captions; rows: 64 and 128 px): {samples}/")
    print(f"newest: {os.path.join(samples, grids[-1])}")
  print(f"SavedModel for TF Serving: {export_dir} (see BUILD.md, 'Serving')")


if __name__ == "__main__":
  app.run(main)
