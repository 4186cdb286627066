"""absl flag definitions and the frozen configs built from them.

This is the only library module that reads `absl.flags`; layers and models take named
arguments. Flagfiles (`--flagfile=configs/cub.cfg`) hold one `--name=value` per line; lines
starting with `#` or `//` are comments.
"""

import dataclasses
import os

from absl import flags

from msmt_tf.data import datasets

__all__ = ["ModelConfig", "model_config_from_flags", "resolve_vocab_size", "PAPER_TABLE2"]

FLAGS = flags.FLAGS

# --- data -------------------------------------------------------------------------------------
flags.DEFINE_enum("dataset", "birds", sorted(datasets.DATASETS), "Dataset kind.")
flags.DEFINE_string("data_dir", None, "Dataset folder in the AttnGAN layout.")
flags.DEFINE_integer("vocab_size", None, "Vocabulary size incl. index 0. Default: from the "
                     "dataset's captions.pickle (required when that file is absent).")
flags.DEFINE_integer("words_num", None, "Words per training caption (default: 18 birds/shapes, "
                     "12 coco).")
# --- model (paper §3, §7.3; model_spec §5) ----------------------------------------------------
flags.DEFINE_enum("initial_stage", "mtwig", ["mtwig", "ig"], "Initial stage: MTWIG or the "
                  "conventional IG.")
flags.DEFINE_enum("refinement", "imhm", ["imhm", "sdm", "dmgan"], "Refinement: T SDM heads, one "
                  "SDM head, or DM-GAN's memory.")
flags.DEFINE_integer("channels", 48, "N_r, image feature channels (DM-GAN's ngf is 64).")
flags.DEFINE_integer("memory_dim", 96, "N_m, memory slot width.")
flags.DEFINE_integer("grid", 8, "h, SDM grid side.")
flags.DEFINE_integer("num_heads", 6, "T, refinement heads per stage (imhm).")
flags.DEFINE_integer("num_res", 2, "ResBlocks per refinement stage (2 CUB, 3 COCO).")
flags.DEFINE_integer("kernel_size", 3, "MTWIG kernel size ks (n-gram per tail).")
flags.DEFINE_integer("condition_dim", 100, "Size of the CA code s'.")
flags.DEFINE_integer("z_dim", 100, "N_z, noise size.")
flags.DEFINE_integer("text_dim", 256, "N_w = N_s, text feature size (DAMSM).")
flags.DEFINE_integer("embedding_dim", 300, "Word embedding size of the DAMSM text encoder.")
flags.DEFINE_integer("num_stages", 3, "Images produced: 64, 128, 256 (1 = single-stage).")
flags.DEFINE_integer("ndf", 32, "Discriminator width (DM-GAN DF_DIM).")
flags.DEFINE_integer("sdm_kernel_size", 3, "Kernel of M_c, phi_K, phi_V and the query convs.")
flags.DEFINE_enum("key_mode", "split", ["split", "concat", "project"], "How the (N_r + p^2) "
                  "key meets the 3-part query (model_spec §5.2).")
flags.DEFINE_bool("detach_grid", True, "Stop gradients through the SDM grid features C.")
flags.DEFINE_enum("query_mode", "iterative", ["iterative", "previous"], "Head t queries U_{t-1} "
                  "(paper) or R_{k-1}.")
flags.DEFINE_bool("fuse_per_channel", False, "Per-channel instead of scalar fuse gates.")
flags.DEFINE_enum("tail_padding", "valid", ["valid", "same"], "MTWIG tails: L-ks+1 or L.")
flags.DEFINE_bool("skip_padding_tails", True, "Leave tails that cover padding out of the fuse.")

for _name in ("channels", "memory_dim", "num_heads", "kernel_size", "condition_dim", "z_dim",
              "text_dim", "embedding_dim", "num_stages", "ndf", "sdm_kernel_size", "grid"):
  flags.register_validator(_name, lambda v, n=_name: v is not None and v >= 1,
                           message=f"--{_name} must be >= 1")
flags.register_validator("num_res", lambda v: v >= 0, message="--num_res must be >= 0")
flags.register_validator("vocab_size", lambda v: v is None or v >= 2,
                         message="--vocab_size must be >= 2")
flags.register_validator("words_num", lambda v: v is None or v >= 1,
                         message="--words_num must be >= 1")

# Paper Table 2 (millions; text encoder included, image encoder and discriminators excluded).
PAPER_TABLE2 = {
    ("mtwig", "imhm", "birds"): 48.11, ("mtwig", "imhm", "coco"): 55.16,
    ("ig", "dmgan", "birds"): 23.52, ("ig", "dmgan", "coco"): 30.96,
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Everything needed to build the generator, discriminators and text encoder."""
  vocab_size: int
  initial_stage: str = "mtwig"
  refinement: str = "imhm"
  channels: int = 48
  memory_dim: int = 96
  grid: int = 8
  num_heads: int = 6
  num_res: int = 2
  kernel_size: int = 3
  condition_dim: int = 100
  z_dim: int = 100
  text_dim: int = 256
  embedding_dim: int = 300
  num_stages: int = 3
  ndf: int = 32
  sdm_kernel_size: int = 3
  key_mode: str = "split"
  detach_grid: bool = True
  query_mode: str = "iterative"
  fuse_per_channel: bool = False
  tail_padding: str = "valid"
  skip_padding_tails: bool = True

  def __post_init__(self):
    if self.initial_stage == "mtwig" and self.tail_padding == "valid":
      pass  # checked against words_num where the data is known
    for stage in range(1, self.num_stages):
      side = 64 * 2 ** (stage - 1)
      if self.refinement != "dmgan" and side % self.grid:
        raise ValueError(f"--grid {self.grid} does not divide the {side}x{side} features of "
                         f"refinement stage {stage + 1}")

  def generator_kwargs(self):
    names = ("initial_stage", "refinement", "channels", "memory_dim", "grid", "num_heads",
             "num_res", "kernel_size", "condition_dim", "z_dim", "num_stages", "sdm_kernel_size",
             "key_mode", "detach_grid", "query_mode", "fuse_per_channel", "tail_padding",
             "skip_padding_tails")
    return {n: getattr(self, n) for n in names}

  def build_generator(self, words_num=18, seed=None):
    from msmt_tf.models import MSMTGenerator  # pylint: disable=g-import-not-at-top
    if self.initial_stage == "mtwig" and self.tail_padding == "valid" and (
        words_num < self.kernel_size):
      raise ValueError(f"--kernel_size {self.kernel_size} needs --words_num >= "
                       f"{self.kernel_size}, got {words_num}")
    g = MSMTGenerator(**self.generator_kwargs(), seed=seed, name="generator")
    g.build((None, words_num, self.text_dim), (None, self.text_dim), (None, words_num),
            (None, self.z_dim))
    return g

  def build_text_encoder(self, words_num=18):
    from msmt_tf.models import RNNTextEncoder  # pylint: disable=g-import-not-at-top
    enc = RNNTextEncoder(self.vocab_size, self.embedding_dim, self.text_dim, name="text_encoder")
    enc.build((None, words_num))
    return enc

  def build_discriminators(self):
    from msmt_tf.models import StageDiscriminator  # pylint: disable=g-import-not-at-top
    out = []
    for k in range(self.num_stages):
      d = StageDiscriminator(64 * 2 ** k, self.ndf, name=f"d{64 * 2 ** k}")
      d.build((None, 64 * 2 ** k, 64 * 2 ** k, 3), (None, self.text_dim))
      out.append(d)
    return out


def resolve_vocab_size(data_dir, dataset, vocab_size):
  """The dataset's vocabulary size; `vocab_size` is required without a captions.pickle and must
  agree with it otherwise."""
  path = os.path.join(data_dir, "captions.pickle") if data_dir else None
  if path and os.path.isfile(path):
    _, _, vocab = datasets.load_captions(data_dir, dataset)
    if vocab_size is not None and vocab_size != len(vocab):
      raise ValueError(f"--vocab_size={vocab_size} disagrees with {path} ({len(vocab)} words); "
                       "drop --vocab_size or point --data_dir elsewhere")
    return len(vocab)
  if vocab_size is None:
    raise ValueError(f"no vocabulary: {path or '--data_dir'} not found and --vocab_size not set")
  return vocab_size


def words_num_from_flags():
  return FLAGS.words_num or datasets.DATASETS[FLAGS.dataset].words_num_train


def model_config_from_flags(vocab_size=None):
  vocab = vocab_size or resolve_vocab_size(FLAGS.data_dir, FLAGS.dataset, FLAGS.vocab_size)
  names = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"]
  return ModelConfig(vocab_size=vocab, **{n: getattr(FLAGS, n) for n in names})
