"""Data-parallel training over the devices of one machine and over many machines.

JAX backend (`Placement`): the engine is XLA's SPMD partitioner: the jitted
`MSMTGAN.jax_train_step` is the same function of the *global* batch as on one device; its inputs
are placed on a one-axis device mesh ("batch"), the batch sharded along its first axis and the
training state replicated. XLA then inserts the
collectives itself (gradient all-reduce, and the all-gathers that batch-norm statistics, the DAMSM
in-batch negatives and the discriminators' "wrong caption" pairs need), so N devices compute the
single-device step's math at the same global batch (to float32 reduction order).

Several machines (or several processes on one machine, as in the tests): every process runs the
same program; `jax.distributed.initialize` connects them (coordinator address, process count and
id from flags, or from the cluster environment: Slurm, Open MPI, ...). Each process reads its own
rows of every global batch (`DataPipeline(num_shards=..., shard_index=...)`), contributes them
with `jax.make_array_from_process_local_data`, and only process 0 writes files.

TensorFlow backend (`TFPlacement`): `tf.distribute.MirroredStrategy` over this machine's devices
(every local GPU; on a CPU-only machine one device, or `--devices N` logical CPU devices), or
`tf.distribute.MultiWorkerMirroredStrategy` over the workers of `TF_CONFIG`. There is no SPMD
partitioner: each replica runs `MSMTGAN.train_step` on its rows with a `BatchShard`, and the
global-batch math is explicit: its losses are its shares of the global batch's losses, the
optimizers all-reduce (sum) the gradients, batch norm is synchronized
(`BatchNormalization.synchronized`, set while the step is traced), and the DAMSM negatives and
wrong-caption pairs read the global batch through `ReplicaContext.all_gather` (see BUILD.md,
"Multi-GPU and multi-host").
"""

import contextlib
import json
import logging as pylogging
import os
import re

from absl import flags
from absl import logging
import numpy as np

__all__ = ["Placement", "TFPlacement", "initialize_from_flags", "placement_from_flags",
           "check_batch_size", "world_of", "tf_config_world", "tf_placement",
           "note_single_device"]

# Used by train and bench; defined wherever the project's flags are (a run's flags.txt is a
# flagfile for every command), and noted when set for a command that runs on one device.
flags.DEFINE_enum("distribute", "auto", ["auto", "none"],
                  "train and bench: auto: data-parallel over every local accelerator and over "
                  "every process of a multi-host run (JAX: jax.distributed; TensorFlow: the "
                  "workers of TF_CONFIG). "
                  "On a CPU-only machine: JAX uses the CPU devices XLA was asked for (XLA_FLAGS="
                  "--xla_force_host_platform_device_count=4), TensorFlow one device unless "
                  "--devices asks for more; none: one device.")
flags.DEFINE_integer("devices", 0, "With --distribute=auto: use this many devices of each "
                     "process (0: all; TensorFlow on a CPU-only machine: this many logical CPU "
                     "devices, set before TensorFlow initialises).")
flags.DEFINE_string("coordinator_address", None,
                    "Multi-host JAX: host:port of process 0 (jax.distributed.initialize). Unset: "
                    "single process, or taken from the cluster environment (Slurm, Open MPI) "
                    "when --num_processes is set.")
flags.DEFINE_integer("num_processes", None, "Multi-host JAX: number of processes.")
flags.DEFINE_integer("process_id", None, "Multi-host JAX: this process's index (0 writes files).")
flags.DEFINE_enum("cpu_collectives", "gloo", ["gloo", "mpi", "none"],
                  "Multi-process JAX on CPU devices: the collectives implementation.")

FLAGS = flags.FLAGS


def world_of(placement):
  """{'processes', 'devices', 'process_index'} of a placement (None: one device)."""
  if placement is None:
    return {"processes": 1, "devices": 1, "process_index": 0}
  return {"processes": placement.num_processes, "devices": placement.num_devices,
          "process_index": placement.process_index}


_DATA_PARALLEL_FLAGS = ("distribute", "devices", "coordinator_address", "num_processes",
                        "process_id", "cpu_collectives")


def note_single_device(command):
  """For the commands that run on one device (pretrain_damsm, sample, export, metric_main): a note
  on stderr when data-parallel flags are set to other than their defaults (they are defined
  everywhere so that a run's flags.txt reads as a flagfile, but only train and bench use them)."""
  import sys  # pylint: disable=g-import-not-at-top
  changed = [f"--{n}" for n in _DATA_PARALLEL_FLAGS if FLAGS[n].value != FLAGS[n].default]
  if changed:
    print(f"note: {', '.join(changed)} {'applies' if len(changed) == 1 else 'apply'} to train "
          f"and bench only; {command} runs in one process on one device", file=sys.stderr,
          flush=True)


def initialize_from_flags():
  """Connects the processes of a multi-host JAX run (once); a no-op for a single process."""
  import jax  # pylint: disable=g-import-not-at-top
  if FLAGS.num_processes is None and FLAGS.coordinator_address is None:
    return
  if FLAGS.distribute == "none":
    raise ValueError("--distribute=none with --num_processes / --coordinator_address: a "
                     "multi-process run needs --distribute=auto")
  if FLAGS.cpu_collectives != "none":
    jax.config.update("jax_cpu_collectives_implementation", FLAGS.cpu_collectives)
  if (FLAGS.process_id is not None and FLAGS.num_processes is not None
      and not 0 <= FLAGS.process_id < FLAGS.num_processes):
    raise ValueError(f"--process_id {FLAGS.process_id} is not one of the --num_processes "
                     f"{FLAGS.num_processes} processes (0 to {FLAGS.num_processes - 1})")
  if FLAGS.coordinator_address and not re.fullmatch(r".+:\d+", FLAGS.coordinator_address):
    raise ValueError(f"--coordinator_address {FLAGS.coordinator_address!r} is not HOST:PORT "
                     "(process 0's host and a free port, e.g. 10.0.0.1:12345)")
  kwargs = {}
  if FLAGS.coordinator_address:
    kwargs["coordinator_address"] = FLAGS.coordinator_address
  if FLAGS.num_processes is not None:
    kwargs["num_processes"] = FLAGS.num_processes
  if FLAGS.process_id is not None:
    kwargs["process_id"] = FLAGS.process_id
  unset = [f"--{n}" for n in ("coordinator_address", "num_processes", "process_id")
           if getattr(FLAGS, n) is None]
  try:
    jax.distributed.initialize(**kwargs)
  except ValueError as e:
    if not unset:
      raise
    # JAX's own wording ("coordinator_address should be defined") for what it could not find.
    raise ValueError(f"a multi-process JAX run could not start ({e}): {', '.join(unset)} "
                     f"{'is' if len(unset) == 1 else 'are'} not set; give them, or run under a "
                     "cluster launcher JAX detects (Slurm, Open MPI); BUILD.md, 'Multi-GPU and "
                     "multi-host'") from e
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def check_batch_size(batch_size, num_devices, num_processes=1):
  """The global batch must split evenly over the devices (and so over the processes)."""
  if batch_size % num_devices:
    lower, upper = batch_size - batch_size % num_devices, batch_size + (-batch_size) % num_devices
    options = ", ".join(str(b) for b in (lower, upper) if b > 0)
    # --devices counts a process's devices: d per process is d * num_processes in all.
    per_process = num_devices // max(num_processes, 1)
    fewer = [d for d in range(per_process - 1, 0, -1) if batch_size % (d * num_processes) == 0]
    each = " per process" if num_processes > 1 else ""
    raise ValueError(f"--batch_size {batch_size} (the global batch) does not split over "
                     f"{num_devices} devices: use a multiple of {num_devices} (e.g. {options})"
                     + (f", or fewer devices: --devices={fewer[0]}{each}"
                        + (f" (or {', '.join(map(str, fewer[1:4]))})" if len(fewer) > 1 else "")
                        if fewer else ""))
  if batch_size % num_processes:
    raise ValueError(f"--batch_size {batch_size} does not split over {num_processes} processes")


class Placement:
  """Where the JAX train step's arrays live: a one-axis mesh of `devices` ("batch").

  Args:
    devices: the global devices of the mesh (every process's, in process order).
  """

  def __init__(self, devices):
    import jax  # pylint: disable=g-import-not-at-top
    from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=g-import-not-at-top
    self.devices = list(devices)
    self.mesh = Mesh(np.array(self.devices), ("batch",))
    self.replicated = NamedSharding(self.mesh, PartitionSpec())
    self.batch = NamedSharding(self.mesh, PartitionSpec("batch"))
    self.num_devices = len(self.devices)
    self.num_processes = jax.process_count()
    self.process_index = jax.process_index()
    self.is_writer = self.process_index == 0

  @property
  def multi_process(self):
    return self.num_processes > 1

  def put_state(self, values):
    """Replicates host/device values of the training state over the mesh (every process holds
    the same values: same seed, same checkpoint)."""
    import jax  # pylint: disable=g-import-not-at-top
    out = []
    for x in values:
      x = np.asarray(x)
      out.append(jax.make_array_from_callback(x.shape, self.replicated,
                                              lambda index, x=x: x[index]))
    return out

  def put_batch(self, batch):
    """This process's rows of a global batch (a dict of arrays) -> global sharded arrays
    (arrays already placed with the batch sharding are kept)."""
    import jax  # pylint: disable=g-import-not-at-top
    return {k: v if isinstance(v, jax.Array) and v.sharding == self.batch else
            jax.make_array_from_process_local_data(self.batch, np.asarray(v))
            for k, v in batch.items()}

  def barrier(self, name, timeout_s=3600):
    """Waits until every process reaches `name` (the coordination service's barrier, not a
    device collective; a no-op for one process). Gloo's CPU collectives give up when the
    processes' first collective is more than 30 s apart, and a process that writes a checkpoint
    or a sample keeps the others waiting in a collective: the processes meet here first."""
    if not self.multi_process:
      return
    from jax._src import distributed  # pylint: disable=g-import-not-at-top
    distributed.global_state.client.wait_at_barrier(f"msmt_tf:{name}", int(timeout_s * 1000))

  @staticmethod
  def local(x):
    """A replicated global array's copy on this process (readable without collectives)."""
    shards = getattr(x, "addressable_shards", None)
    return shards[0].data if shards else x

  def __repr__(self):
    return (f"Placement({self.num_devices} devices, {self.num_processes} processes, "
            f"platform {self.devices[0].platform})")


def placement_from_flags(batch_size, backend=None):
  """The Placement (JAX) or TFPlacement (TensorFlow) for --distribute/--devices (None: a plain
  single-device step), after checking the batch splits evenly. Call it before any model is
  built: under TensorFlow the strategy becomes the process's current one, so that the models and
  optimizers built afterwards have mirrored variables."""
  import keras  # pylint: disable=g-import-not-at-top
  backend = backend or keras.backend.backend()
  if FLAGS.devices < 0:
    raise ValueError(f"--devices must be >= 0, got {FLAGS.devices}")
  if FLAGS.distribute == "none":
    if FLAGS.devices > 1:
      raise ValueError("--devices > 1 needs --distribute=auto")
    if backend == "tensorflow" and tf_config_world() is not None:
      raise ValueError("--distribute=none with a multi-worker TF_CONFIG: every worker would "
                       "train alone; use --distribute=auto or unset TF_CONFIG")
    return None
  if backend == "tensorflow":
    if (FLAGS.num_processes is not None or FLAGS.coordinator_address is not None
        or FLAGS.process_id is not None):
      raise ValueError("--num_processes / --coordinator_address / --process_id are for "
                       "KERAS_BACKEND=jax; a multi-worker TensorFlow run is described by TF_CONFIG")
    tasks = int(os.environ.get("SLURM_NTASKS", "1") or 1)
    if tasks > 1 and tf_config_world() is None:
      raise ValueError(f"SLURM_NTASKS={tasks} but no multi-worker TF_CONFIG: every task would "
                       "train alone and write the same run directory; set TF_CONFIG for each "
                       "task (BUILD.md, Multi-GPU and multi-host) or use KERAS_BACKEND=jax, "
                       "which reads Slurm's environment")
    placement = tf_placement(batch_size, FLAGS.devices)
    if placement is not None:
      import tensorflow as tf  # pylint: disable=g-import-not-at-top
      tf.distribute.experimental_set_strategy(placement.strategy)
    return placement
  if backend != "jax":
    logging.warning("--distribute=auto: no data-parallel step for KERAS_BACKEND=%s; one device",
                    backend)
    return None
  import jax  # pylint: disable=g-import-not-at-top
  initialize_from_flags()
  local = jax.local_devices()
  accelerators = [d for d in local if d.platform != "cpu"]
  # auto: every local accelerator; on a CPU-only process every CPU device XLA was asked for.
  chosen = accelerators or local
  if FLAGS.devices:
    if FLAGS.devices > len(chosen):
      hint = ("; on a CPU, XLA_FLAGS=--xla_force_host_platform_device_count=N (set before the "
              "command) gives N CPU devices" if chosen[0].platform == "cpu" else "")
      raise ValueError(f"--devices {FLAGS.devices}: this process has only {len(chosen)} "
                       f"{chosen[0].platform} device(s){hint}")
    chosen = chosen[:FLAGS.devices]
  if jax.process_count() == 1 and len(chosen) == 1:
    check_batch_size(batch_size, 1)
    return None
  # Every process contributes the same number of devices, in process order.
  per_process = len(chosen)
  platform = chosen[0].platform
  devices = []
  for p in range(jax.process_count()):
    mine = [d for d in jax.devices(platform) if d.process_index == p]
    devices += mine[:per_process]
  check_batch_size(batch_size, len(devices), jax.process_count())
  return Placement(devices)


# ---------------------------------------------------------------------------------- TensorFlow
def tf_config_world(environ=None):
  """`(num_processes, process_index)` of the multi-worker run `TF_CONFIG` describes, or None when
  it is unset or names a single task. The chief (or, without one, worker 0) is process 0."""
  text = (os.environ if environ is None else environ).get("TF_CONFIG")
  if not text:
    return None
  try:
    conf = json.loads(text)
    cluster, task = conf["cluster"], conf["task"]
    kind, index = task["type"], int(task["index"])
  except (ValueError, KeyError, TypeError) as e:
    raise ValueError(f"TF_CONFIG is not a valid cluster description ({type(e).__name__}: {e}): "
                     f"{text!r}") from e
  chiefs = len(cluster.get("chief", []))
  workers = len(cluster.get("worker", []))
  if kind not in ("chief", "worker") or index >= len(cluster.get(kind, [])):
    raise ValueError(f"TF_CONFIG task {kind}:{index} is not a chief or worker of its cluster "
                     f"{cluster}")
  if chiefs + workers <= 1:
    return None
  return chiefs + workers, (index if kind == "chief" else chiefs + index)


def _logical_cpus(n):
  """Splits the CPU into `n` logical devices (before TensorFlow initialises); their names."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  cpu = tf.config.list_physical_devices("CPU")[0]
  current = tf.config.get_logical_device_configuration(cpu)
  if (len(current) if current else 1) != n:  # raises RuntimeError once TensorFlow initialised
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration() for _ in range(n)])
  return [d.name for d in tf.config.list_logical_devices("CPU")][:n]


def tf_placement(batch_size, devices=0):
  """The TensorFlow backend's placement: None for one device (the plain step, unchanged), else a
  TFPlacement. Devices of each process: every GPU (`devices` of them when > 0); on a CPU-only
  machine one, or `devices` logical CPU devices. Several processes when `TF_CONFIG` describes a
  multi-worker cluster (MultiWorkerMirroredStrategy). Call it before any TensorFlow computation:
  the logical devices and the multi-worker runtime are set up when TensorFlow initialises."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  world = tf_config_world()
  num_processes, process_index = world or (1, 0)
  gpus = tf.config.list_physical_devices("GPU")
  if gpus and devices > len(gpus):
    raise ValueError(f"--devices {devices}: this process has only {len(gpus)} GPU(s)")
  if not gpus and world is not None and devices > 1:
    raise ValueError(f"--devices {devices} with TF_CONFIG: a CPU-only worker of a multi-worker "
                     "run uses one device (start more workers instead)")
  per_process = (devices or len(gpus)) if gpus else max(devices, 1)
  check_batch_size(batch_size, num_processes * per_process, num_processes)
  if world is None and per_process == 1:
    return None
  try:
    if gpus and devices:
      tf.config.set_visible_devices(gpus[:devices], "GPU")
    local = ([f"/gpu:{i}" for i in range(per_process)] if gpus else
             _logical_cpus(per_process) if per_process > 1 else ["/cpu:0"])
  except RuntimeError as e:
    raise ValueError(f"--devices {devices}: TensorFlow is already initialised; the devices must "
                     f"be chosen before any TensorFlow computation ({e})") from e
  if world is None:
    return TFPlacement(tf.distribute.MirroredStrategy(local))
  strategy = tf.distribute.MultiWorkerMirroredStrategy()
  if strategy.num_replicas_in_sync != num_processes * per_process:
    raise ValueError(f"TF_CONFIG: {strategy.num_replicas_in_sync} replicas in sync, expected "
                     f"{num_processes} workers x {per_process} devices (every worker needs the "
                     "same --devices and device count)")
  return TFPlacement(strategy, num_processes, process_index)


@contextlib.contextmanager
def tensorflow_info_off():
  """Within the block, TensorFlow's Python logger shows warnings and errors only (tf.distribute
  logs every collective it traces at INFO: 70 lines per replica and trace); its level is put
  back after the block."""
  tf_logger = pylogging.getLogger("tensorflow")
  level = tf_logger.level
  tf_logger.setLevel(max(tf_logger.getEffectiveLevel(), pylogging.WARNING))
  try:
    yield
  finally:
    tf_logger.setLevel(level)


class TFPlacement:
  """The TensorFlow train step's devices: a `tf.distribute` strategy, one replica per device.

  Build the models and optimizers under `scope()` (or after `placement_from_flags`, which makes the
  strategy the current one); `MSMTGAN.make_train_function(placement=...)` then runs the step on
  every replica. The batch given to each call is this process's rows of the global batch.

  Args:
    strategy: a MirroredStrategy, or a MultiWorkerMirroredStrategy with the same number of
      devices on every worker.
    num_processes, process_index: the workers of a multi-worker run and this one's index (its
      `id_in_cluster`: the chief is 0).
  """

  def __init__(self, strategy, num_processes=1, process_index=0):
    self.strategy = strategy
    self.num_devices = int(strategy.num_replicas_in_sync)
    self.num_processes = int(num_processes)
    self.process_index = int(process_index)
    self.local_devices = len(strategy.extended.worker_devices)
    self.is_writer = self.process_index == 0
    self._meet = None  # barrier's collective, traced once
    if self.local_devices * self.num_processes != self.num_devices:
      raise ValueError(f"{self.num_devices} replicas are not {self.num_processes} processes x "
                       f"{self.local_devices} devices")

  @property
  def multi_process(self):
    return self.num_processes > 1

  def scope(self):
    """The strategy's scope (variables created in it are mirrored)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if tf.distribute.has_strategy() and tf.distribute.get_strategy() is self.strategy:
      return contextlib.nullcontext()
    return self.strategy.scope()

  def put_batch(self, batch):
    """This process's rows of a global batch (a dict of arrays) -> per-replica values, local
    replica i holding the i-th block of rows (values already distributed are kept)."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if any(isinstance(v, tf.distribute.DistributedValues) for v in batch.values()):
      return batch
    batch = {k: tf.convert_to_tensor(v) for k, v in batch.items()}
    rows = {int(v.shape[0]) for v in batch.values()}
    if len(rows) != 1:
      counts = ", ".join(f"{k}: {int(v.shape[0])}" for k, v in batch.items())
      raise ValueError(f"batch arrays have different row counts ({counts})")
    (rows,) = rows
    n = self.local_devices
    if rows % n:
      raise ValueError(f"{rows} rows of this process's batch do not split over its {n} devices")
    b = rows // n

    def rows_of(ctx):
      i = ctx.replica_id_in_sync_group % n
      with tf.device("/cpu:0"):  # sliced on the host, then copied to each replica's device
        return {k: tf.identity(v[i * b:(i + 1) * b]) for k, v in batch.items()}

    return self.strategy.experimental_distribute_values_from_function(rows_of)

  def barrier(self, name, timeout_s=3600):
    """Waits until every worker reaches a barrier (a one-number all-reduce over the replicas; a
    no-op for one process). Where the run goes on, the workers' next collective (in the next
    step) would wait anyway; where it ends (a stop), a worker that does not write waits for the
    chief's checkpoint before it names it. `name`, `timeout_s`: unused (TensorFlow's
    collectives wait without a time limit)."""
    del name, timeout_s
    if not self.multi_process:
      return
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    if self._meet is None:
      strategy = self.strategy

      def meet():
        ones = strategy.run(lambda: tf.ones((), tf.float32))
        return strategy.reduce(tf.distribute.ReduceOp.SUM, ones, axis=None)

      self._meet = tf.function(meet, autograph=False)
    with tensorflow_info_off():
      self._meet()

  @staticmethod
  def local(x):
    return x

  def __repr__(self):
    return (f"{type(self.strategy).__name__} over {self.num_devices} devices in "
            f"{self.num_processes} process{'es' if self.num_processes != 1 else ''}")
