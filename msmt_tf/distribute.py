"""Data-parallel training over the devices of one machine and over many machines (JAX backend).

The engine is XLA's SPMD partitioner: the jitted `MSMTGAN.jax_train_step` is the same function of
the *global* batch as on one device; its inputs are placed on a one-axis device mesh ("batch"),
the batch sharded along its first axis and the training state replicated. XLA then inserts the
collectives itself (gradient all-reduce, and the all-gathers that batch-norm statistics, the DAMSM
in-batch negatives and the discriminators' "wrong caption" pairs need), so N devices compute the
single-device step's math at the same global batch (to float32 reduction order).

Several machines (or several processes on one machine, as in the tests): every process runs the
same program; `jax.distributed.initialize` connects them (coordinator address, process count and
id from flags, or from the cluster environment: Slurm, Open MPI, ...). Each process reads its own
rows of every global batch (`DataPipeline(num_shards=..., shard_index=...)`), contributes them
with `jax.make_array_from_process_local_data`, and only process 0 writes files.

TensorFlow's `tf.distribute` is not wired into the TensorFlow train step yet: under
KERAS_BACKEND=tensorflow `--distribute=auto` uses one device (see BUILD.md, "Multi-GPU and
multi-host").
"""

from absl import flags
from absl import logging
import numpy as np

__all__ = ["Placement", "initialize_from_flags", "placement_from_flags", "check_batch_size",
           "world_of"]

flags.DEFINE_enum("distribute", "auto", ["auto", "none"],
                  "auto: data-parallel over every local accelerator (JAX backend; on a CPU-only "
                  "machine only the CPU devices XLA was asked for, e.g. XLA_FLAGS="
                  "--xla_force_host_platform_device_count=4) and over every process of a "
                  "multi-host run; none: one device.")
flags.DEFINE_integer("devices", 0, "With --distribute=auto: use this many devices of each "
                     "process (0: all).")
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
  kwargs = {}
  if FLAGS.coordinator_address:
    kwargs["coordinator_address"] = FLAGS.coordinator_address
  if FLAGS.num_processes is not None:
    kwargs["num_processes"] = FLAGS.num_processes
  if FLAGS.process_id is not None:
    kwargs["process_id"] = FLAGS.process_id
  jax.distributed.initialize(**kwargs)
  logging.info("process %d of %d, %d local / %d global devices", jax.process_index(),
               jax.process_count(), jax.local_device_count(), jax.device_count())


def check_batch_size(batch_size, num_devices, num_processes=1):
  """The global batch must split evenly over the devices (and so over the processes)."""
  if batch_size % num_devices:
    lower, upper = batch_size - batch_size % num_devices, batch_size + (-batch_size) % num_devices
    options = ", ".join(str(b) for b in (lower, upper) if b > 0)
    raise ValueError(f"--batch_size {batch_size} (the global batch) does not split over "
                     f"{num_devices} devices: use a multiple of {num_devices} (e.g. {options}), "
                     f"or --devices with a divisor of {batch_size}")
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
  """The Placement for --distribute/--devices (None: a plain single-device step), after checking
  the batch splits evenly. Under TensorFlow: None (one device), with a warning when more than one
  would have been used."""
  import keras  # pylint: disable=g-import-not-at-top
  backend = backend or keras.backend.backend()
  if FLAGS.devices < 0:
    raise ValueError(f"--devices must be >= 0, got {FLAGS.devices}")
  if FLAGS.distribute == "none":
    if FLAGS.devices > 1:
      raise ValueError("--devices > 1 needs --distribute=auto")
    return None
  if backend != "jax":
    logging.warning("--distribute=auto: data-parallel training runs on the JAX backend; the "
                    "TensorFlow step uses one device (KERAS_BACKEND=jax for several)")
    return None
  import jax  # pylint: disable=g-import-not-at-top
  initialize_from_flags()
  local = jax.local_devices()
  accelerators = [d for d in local if d.platform != "cpu"]
  # auto: every local accelerator; on a CPU-only process every CPU device XLA was asked for.
  chosen = accelerators or local
  if FLAGS.devices:
    if FLAGS.devices > len(chosen):
      raise ValueError(f"--devices {FLAGS.devices}: this process has only {len(chosen)} "
                       f"{chosen[0].platform} device(s)")
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

