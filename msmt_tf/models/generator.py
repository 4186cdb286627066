"""The MSMT-GAN generator and its ablation variants (paper §3, Fig. 1; Tables 1 and 4)."""

import keras
from keras import ops

from msmt_tf.layers.blocks import ToImage
from msmt_tf.layers.conditioning import ConditioningAugmentation
from msmt_tf.layers.imhm import DMGANRefinement, IterativeMultiHeadRefinement
from msmt_tf.layers.mtwig import ConventionalInit, MultiTailedWordInit
from msmt_tf.models.initialization import one_program_initialization

__all__ = ["MSMTGenerator", "INITIAL_STAGES", "REFINEMENTS", "stage_names"]

INITIAL_STAGES = ("mtwig", "ig")
REFINEMENTS = ("imhm", "sdm", "dmgan")


def stage_names(initial_stage, num_stages):
  """The layer names of the generator's stages, initial first ("mtwig" or "ig", then "refine1",
  ...): known from the configuration, before anything is built."""
  return ["mtwig" if initial_stage == "mtwig" else "ig"] + [f"refine{k}"
                                                             for k in range(1, num_stages)]


@keras.saving.register_keras_serializable(package="msmt_tf")
class MSMTGenerator(keras.Model):
  """CA -> initial stage (64 x 64) -> refinement stages (128, 256) with an image at each stage.

  Variants (the paper's ablations):
    initial_stage='mtwig' (MTWIG, §3.1) | 'ig' (conventional, DM-GAN's INIT_STAGE_G).
    refinement='imhm' (T SDM heads, §3.3) | 'sdm' (one SDM head) | 'dmgan' (DM-GAN's memory).
  The full MSMT-GAN is mtwig + imhm; DM-GAN is ig + dmgan with channels=64.

  Args:
    channels: N_r (48; DM-GAN's ngf is 64). memory_dim: N_m (96). grid: h (8).
    num_heads: T (6, with 'imhm'). num_res: ResBlocks per refinement (2 CUB, 3 COCO).
    kernel_size: MTWIG's n-gram size (3). condition_dim: size of s' (100). z_dim: N_z (100).
    num_stages: images produced (3: 64/128/256).
    sdm_kernel_size, key_mode, detach_grid, query_mode, fuse_per_channel, tail_padding,
    skip_padding_tails: the documented resolutions of the paper's ambiguities (see
      `MultiTailedWordInit`, `SpatialDynamicMemory`, `IterativeMultiHeadRefinement`).
    dmgan_word_mask: with refinement='dmgan', the word mask of the memory read: 'per_sample'
      (default) or 'official_repeat' (the released DM-GAN models' behaviour; see
      `DMGANRefinement`).
    seed: seed of the CA noise generator.

  Call arguments:
    words: `[B, L, N_w]`; sentence: `[B, N_s]`; word_mask: `[B, L]` bool (True = real word);
    z: `[B, z_dim]`; ca_noise: optional `[B, condition_dim]` eps of the CA (reproducibility).

  Returns:
    dict with `images` (list of `[B, 64 * 2**k, ..., 3]` in [-1, 1]), `mu`, `logvar`,
    `c_code` (`[B, condition_dim]`) and `head_outputs` (per refinement stage, the list of head
    outputs O_t used by the redundancy loss).
  """

  def __init__(self, initial_stage="mtwig", refinement="imhm", channels=48, memory_dim=96,
               grid=8, num_heads=6, num_res=2, kernel_size=3, condition_dim=100, z_dim=100,
               num_stages=3, sdm_kernel_size=3, key_mode="split", detach_grid=True,
               query_mode="iterative", fuse_per_channel=False, tail_padding="valid",
               skip_padding_tails=True, dmgan_word_mask="per_sample", seed=None, **kwargs):
    super().__init__(**kwargs)
    if initial_stage not in INITIAL_STAGES:
      raise ValueError(f"initial_stage must be one of {INITIAL_STAGES}, got {initial_stage!r}")
    if refinement not in REFINEMENTS:
      raise ValueError(f"refinement must be one of {REFINEMENTS}, got {refinement!r}")
    if num_stages < 1:
      raise ValueError(f"num_stages must be >= 1, got {num_stages}")
    if num_heads < 1:
      raise ValueError(f"num_heads must be >= 1, got {num_heads}")
    self.initial_stage = initial_stage
    self.refinement = refinement
    self.channels = channels
    self.memory_dim = memory_dim
    self.grid = grid
    self.num_heads = num_heads
    self.num_res = num_res
    self.kernel_size = kernel_size
    self.condition_dim = condition_dim
    self.z_dim = z_dim
    self.num_stages = num_stages
    self.sdm_kernel_size = sdm_kernel_size
    self.key_mode = key_mode
    self.detach_grid = detach_grid
    self.query_mode = query_mode
    self.fuse_per_channel = fuse_per_channel
    self.tail_padding = tail_padding
    self.skip_padding_tails = skip_padding_tails
    self.dmgan_word_mask = dmgan_word_mask
    self.seed = seed

    self.ca = ConditioningAugmentation(condition_dim, seed=seed, name="ca")
    init_name, *refine_names = stage_names(initial_stage, num_stages)
    if initial_stage == "mtwig":
      self.init_stage = MultiTailedWordInit(channels, kernel_size, tail_padding,
                                            skip_padding_tails, fuse_per_channel, name=init_name)
    else:
      self.init_stage = ConventionalInit(channels, name=init_name)
    self.refine_stages = []
    for name in refine_names:
      if refinement == "dmgan":
        stage = DMGANRefinement(channels, num_res, dmgan_word_mask, name=name)
      else:
        stage = IterativeMultiHeadRefinement(
            num_heads if refinement == "imhm" else 1, num_res, grid, memory_dim, channels,
            sdm_kernel_size, key_mode, detach_grid, query_mode, fuse_per_channel, name=name)
      self.refine_stages.append(stage)
    self.to_images = [ToImage(name=f"to_image{k}") for k in range(num_stages)]

  @property
  def batch_coupled(self):
    """Whether an image depends on the other captions of its batch: DM-GAN's memory read with
    the released models' word mask ('official_repeat'), where pixel q of sample b is masked with
    the padding of sample (b * P + q) mod B."""
    return bool(self.refine_stages) and self.refinement == "dmgan" and (
        self.dmgan_word_mask == "official_repeat")

  @one_program_initialization()
  def build(self, words_shape, sentence_shape=None, word_mask_shape=None, z_shape=None,
            ca_noise_shape=None):
    batch = words_shape[0]
    self.ca.build(sentence_shape)
    c_shape = (batch, self.condition_dim)
    z_shape = z_shape or (batch, self.z_dim)
    if self.initial_stage == "mtwig":
      self.init_stage.build(words_shape, word_mask_shape, c_shape, z_shape)
      shape = self.init_stage.compute_output_shape(words_shape, word_mask_shape, c_shape, z_shape)
    else:
      self.init_stage.build(c_shape, z_shape)
      shape = self.init_stage.compute_output_shape(c_shape, z_shape)
    self.to_images[0].build(shape)
    for stage, to_image in zip(self.refine_stages, self.to_images[1:]):
      stage.build(shape, words_shape, word_mask_shape)
      shape = stage.compute_output_shape(shape, words_shape, word_mask_shape)[0]
      to_image.build(shape)

  def call(self, words, sentence, word_mask, z, ca_noise=None, training=None):
    word_mask = ops.cast(word_mask, "bool")
    c_code, mu, logvar = self.ca(sentence, ca_noise)
    if self.initial_stage == "mtwig":
      h = self.init_stage(words, word_mask, c_code, z, training=training)
    else:
      h = self.init_stage(c_code, z, training=training)
    images = [self.to_images[0](h)]
    head_outputs = []
    for stage, to_image in zip(self.refine_stages, self.to_images[1:]):
      h, heads = stage(h, words, word_mask, training=training)
      images.append(to_image(h))
      head_outputs.append(heads)
    return {"images": images, "mu": mu, "logvar": logvar, "c_code": c_code,
            "head_outputs": head_outputs}

  def get_config(self):
    return {**super().get_config(), **{k: getattr(self, k) for k in (
        "initial_stage", "refinement", "channels", "memory_dim", "grid", "num_heads", "num_res",
        "kernel_size", "condition_dim", "z_dim", "num_stages", "sdm_kernel_size", "key_mode",
        "detach_grid", "query_mode", "fuse_per_channel", "tail_padding", "skip_padding_tails",
        "dmgan_word_mask", "seed")}}
