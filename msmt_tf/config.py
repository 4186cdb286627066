"""absl flag definitions and the frozen configs built from them.

This is the only library module that reads `absl.flags`; layers and models take named
arguments. Flagfiles (`--flagfile=configs/cub.cfg`) hold one `--name=value` per line; lines
starting with `#` or `//` are comments.
"""

import dataclasses
import os

from absl import flags

# The data-parallel flags (--distribute, --devices, ...; train and bench use them) are defined
# wherever the project's flags are, so a run's flags.txt is a flagfile for every command.
from msmt_tf import distribute  # pylint: disable=unused-import,g-bad-import-order
from msmt_tf.data import datasets
from msmt_tf.layers import blocks

__all__ = ["ModelConfig", "model_config_from_flags", "resolve_vocab_size", "PAPER_TABLE2"]

FLAGS = flags.FLAGS

# --- data -------------------------------------------------------------------------------------
flags.DEFINE_enum("dataset", "birds", sorted(datasets.DATASETS), "Dataset kind.")
flags.DEFINE_string("data_dir", None, "Dataset folder in the AttnGAN layout.")
flags.DEFINE_integer("vocab_size", None, "Vocabulary size incl. index 0. Default: from the "
                     "dataset's captions.pickle (required when that file is absent).")
flags.DEFINE_integer("words_num", None, "Words per training caption (default: 18 birds/shapes, "
                     "12 coco, a folder dataset's words_num_train). Sampling and evaluation use "
                     "the evaluation length instead (msmt_tf.sample --sample_words_num).")
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
# The implementation choices: each default is the first of its modes in blocks.py, where the
# layers read it (blocks.implementation) when no flag set one.
flags.DEFINE_enum("upsample_conv", blocks.UPSAMPLE_CONV_MODES[0], list(blocks.UPSAMPLE_CONV_MODES),
                  "How UpBlocks compute conv3x3(upsample x2): 'reference' (upsample, then conv) "
                  "or 'fused' (2x2 phase kernels on the low-resolution input: 4/9 of the "
                  "multiply-adds, but slower on the H100, BUILD.md Performance). Same weights "
                  "and function; rounding differs.")
flags.DEFINE_enum("batch_norm", blocks.BATCH_NORM_MODES[0], list(blocks.BATCH_NORM_MODES),
                  "How the generator's batch norms train: 'keras' (keras.layers."
                  "BatchNormalization as it is) or 'fused' (one-pass statistics and a "
                  "hand-written backward that keeps only the input, BUILD.md Performance). Same "
                  "variables and function; rounding differs. Inference is the same either way.")
flags.DEFINE_enum("sdm_convs", blocks.SDM_CONVS_MODES[0], list(blocks.SDM_CONVS_MODES),
                  "How each SDM head runs its convolutions that share an input (the three query "
                  "convs; phi_K and phi_V): 'factored' (by linearity: phi_K / phi_V applied per "
                  "word and per cell instead of per memory slot, the global and grid queries "
                  "from window means; 13% fewer FLOPs in the CUB step, float32 3% faster on the "
                  "H100, bf16 the same: BUILD.md Performance), 'merged' (kernels concatenated, "
                  "one convolution per input) or 'separate' (one per layer, as written). Same "
                  "variables and function; rounding differs.")
flags.DEFINE_enum("fuse_gate", blocks.FUSE_GATE_MODES[0], list(blocks.FUSE_GATE_MODES),
                  "How the scalar fuse gates' logits are computed: 'reduce' (per-pixel weighted "
                  "sums over the channels of each map, in float32, no concatenation), 'conv' "
                  "(a 1x1 convolution of the concatenated maps, as written) or 'matvec' (reduce's "
                  "forward; the kernel's gradient as a matrix-vector product, not a column "
                  "reduction: a lead for the GPU, untimed). Same variables and "
                  "function; rounding differs.")
flags.DEFINE_bool("fuse_per_channel", False, "Per-channel instead of scalar fuse gates.")
flags.DEFINE_enum("tail_padding", "valid", ["valid", "same"], "MTWIG tails: L-ks+1 or L.")
flags.DEFINE_bool("skip_padding_tails", True, "Leave tails that cover padding out of the fuse.")
flags.DEFINE_enum("dmgan_word_mask", "per_sample", ["per_sample", "official_repeat"],
                  "--refinement=dmgan: word mask of the memory read: each pixel its own "
                  "caption's (per_sample) or DM-GAN's released code's mask.repeat quirk "
                  "(official_repeat, needed to reproduce the released models, and import_torch "
                  "dmgan_generator's default; interop.md §3).")

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
# The vocabularies Table 2's counts hold (AttnGAN's CUB and COCO captions.pickle).
PAPER_VOCAB = {"birds": 5450, "coco": 27297}


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
  dmgan_word_mask: str = "per_sample"

  def __post_init__(self):
    # (MTWIG's kernel against words_num is checked in build_generator, where L is known.)
    for stage in range(1, self.num_stages):
      side = 64 * 2 ** (stage - 1)
      if self.refinement != "dmgan" and side % self.grid:
        raise ValueError(f"--grid {self.grid} does not divide the {side}x{side} features of "
                         f"refinement stage {stage + 1}")

  def generator_kwargs(self):
    names = ("initial_stage", "refinement", "channels", "memory_dim", "grid", "num_heads",
             "num_res", "kernel_size", "condition_dim", "z_dim", "num_stages", "sdm_kernel_size",
             "key_mode", "detach_grid", "query_mode", "fuse_per_channel", "tail_padding",
             "skip_padding_tails", "dmgan_word_mask")
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
      raise ValueError(f"--vocab_size={vocab_size} (given, or set by a flagfile: the paper "
                       f"configs name their dataset's) disagrees with {path} ({len(vocab)} "
                       f"words): pass --vocab_size={len(vocab)} after the flagfile, or point "
                       "--data_dir at the dataset the config is for")
    return len(vocab)
  if vocab_size is None:
    if path:
      raise ValueError(f"no vocabulary: {path} not found and --vocab_size is not set: build the "
                       "dataset first (README, 'Data'; the demo's: python -m msmt_tf.data.shapes "
                       f"--out {data_dir}), or pass --vocab_size")
    raise ValueError("no vocabulary: --data_dir and --vocab_size are not set (pass a config, "
                     "e.g. --flagfile=configs/cub.cfg, or one of them)")
  return vocab_size


def words_num_from_flags():
  return FLAGS.words_num or datasets.dataset_spec(FLAGS.data_dir,
                                                  FLAGS.dataset).words_num_train


def implementation_flags():
  """{name: mode} of every implementation choice (blocks.implementation_names), from its flag."""
  return {name: getattr(FLAGS, name) for name in blocks.implementation_names()}


def model_config_from_flags(vocab_size=None):
  # Implementation choices, not part of the model: applied here, where every command builds it.
  for name, mode in implementation_flags().items():
    blocks.set_implementation(name, mode)
  vocab = vocab_size or resolve_vocab_size(FLAGS.data_dir, FLAGS.dataset, FLAGS.vocab_size)
  names = [f.name for f in dataclasses.fields(ModelConfig) if f.name != "vocab_size"]
  return ModelConfig(vocab_size=vocab, **{n: getattr(FLAGS, n) for n in names})

# --- training (paper §7.3, §7.4; model_spec §4.4) ---------------------------------------------
flags.DEFINE_string("run_dir", None, "Run directory: flags, checkpoints, samples, TensorBoard.")
flags.DEFINE_string("damsm_dir", None, "Folder with the DAMSM text_encoder.keras and "
                    "image_encoder.keras (made by python -m msmt_tf.pretrain_damsm).")
flags.DEFINE_integer("max_steps", None, "Stop after this many generator steps (total).")
flags.DEFINE_integer("max_epochs", None, "Stop after this many epochs (paper: 1000 CUB, 210 "
                     "COCO); used when --max_steps is not set.")
flags.DEFINE_bool("resume", False, "Continue from the newest checkpoint in --run_dir (train); "
                  "continue the unfinished pretraining in --damsm_dir (pretrain_damsm).")
flags.DEFINE_bool("accept_new_damsm", False, "train --resume: continue the run with DAMSM "
                  "encoders whose weights differ from those it was trained with (pretrained "
                  "further or again); config.json keeps the change (damsm_changes).")
flags.DEFINE_integer("seed", 0, "Seed of the weights, the data order and the noise.")
flags.DEFINE_integer("batch_size", 20, "Batch size (paper: 20).")
flags.DEFINE_float("lr_g", 2e-4, "Generator Adam learning rate.")
flags.DEFINE_float("lr_d", 2e-4, "Discriminator Adam learning rate.")
flags.DEFINE_float("beta1", 0.5, "Adam beta1.")
flags.DEFINE_float("beta2", 0.999, "Adam beta2.")
flags.DEFINE_float("lambda1", 1.0, "Weight of the CA KL loss.")
flags.DEFINE_float("lambda2", 0.5, "Weight of the redundancy loss.")
flags.DEFINE_float("lambda3", 5.0, "Weight of the DAMSM loss (5 CUB, 50 COCO).")
flags.DEFINE_float("gamma1", 4.0, "DAMSM gamma1.")
flags.DEFINE_float("gamma2", 5.0, "DAMSM gamma2.")
flags.DEFINE_float("gamma3", 10.0, "DAMSM gamma3.")
flags.DEFINE_bool("damsm_all_stages", False, "DAMSM on every stage's image (paper Eq. 19) "
                  "instead of the last only (DM-GAN code).")
flags.DEFINE_float("ema_decay", 0.999, "Decay of the EMA generator.")
flags.DEFINE_integer("checkpoint_every", 1000, "Steps between checkpoints.")
flags.DEFINE_integer("keep_checkpoints", 3, "Checkpoints kept.")
flags.DEFINE_integer("sample_every", 500, "Steps between sample grids.")
flags.DEFINE_integer("log_every", 50, "Steps between TensorBoard scalar writes.")
flags.DEFINE_integer("num_samples", 8, "Fixed test captions in the sample grids.")
flags.DEFINE_bool("jit_compile", False,
                  "TensorFlow backend: compile the whole train step with XLA (slower than plain "
                  "tf.function on CPU, see BUILD.md). KERAS_BACKEND=jax always jits the step.")
flags.DEFINE_bool("mixed_precision", False, "bfloat16 compute with float32 weights.")
flags.DEFINE_bool("deterministic", False, "Deterministic TensorFlow ops (slower).")
# --- DAMSM pretraining (AttnGAN pretrain_DAMSM.py; model_spec §2.4) ----------------------------
flags.DEFINE_enum("image_encoder_trunk", "inception_v3",
                  ["inception_v3", "small", "torchvision_inception_v3"],
                  "DAMSM image trunk: Inception-v3 (Keras application, frozen), a small CNN "
                  "(demo), or torchvision_inception_v3: AttnGAN's exact torchvision trunk "
                  "(frozen; resize with align_corners=True as AttnGAN's PyTorch did).")
flags.DEFINE_string("inception_weights", None, "Local trunk weights: a Keras InceptionV3 no-top "
                    "file (inception_v3), or torchvision's inception_v3_google-*.pth / AttnGAN's "
                    "image_encoder*.pth (torchvision_inception_v3).")
flags.DEFINE_integer("damsm_epochs", 600, "DAMSM pretraining epochs.")
flags.DEFINE_integer("damsm_max_steps", None, "Cap on DAMSM pretraining steps.")
flags.DEFINE_integer("damsm_batch_size", 48, "DAMSM batch size.")
flags.DEFINE_float("damsm_lr", 0.002, "DAMSM initial learning rate (x0.98 per epoch, floor /10).")
flags.DEFINE_integer("damsm_words_num", None, "Words per caption in DAMSM pretraining "
                     "(default 18; 15 for coco).")
flags.DEFINE_integer("damsm_snapshot_every", 50, "Epochs between DAMSM snapshots.")

for _name in ("checkpoint_every", "sample_every", "log_every", "keep_checkpoints",
              "damsm_epochs", "damsm_snapshot_every"):
  flags.register_validator(_name, lambda v, n=_name: v is not None and v >= 1,
                           message=f"--{_name} must be >= 1")
# A batch of one image has no mismatched caption for the discriminators and no negative for
# DAMSM's contrastive losses (they would be 0): both need two images at least.
for _name in ("batch_size", "damsm_batch_size"):
  flags.register_validator(_name, lambda v, n=_name: v is not None and v >= 2,
                           message=f"--{_name} must be >= 2 (the discriminators' mismatched "
                           "captions and DAMSM's negatives are other images of the batch)")
for _name in ("max_steps", "max_epochs", "damsm_max_steps"):
  flags.register_validator(_name, lambda v, n=_name: v is None or v >= 1,
                           message=f"--{_name} must be >= 1")


def loss_config_from_flags():
  from msmt_tf.models.msmt_gan import LossConfig  # pylint: disable=g-import-not-at-top
  return LossConfig(FLAGS.lambda1, FLAGS.lambda2, FLAGS.lambda3, FLAGS.gamma1, FLAGS.gamma2,
                    FLAGS.gamma3, FLAGS.damsm_all_stages)


def damsm_paths(damsm_dir):
  return (os.path.join(damsm_dir, "text_encoder.keras"),
          os.path.join(damsm_dir, "image_encoder.keras"))
