"""MSMT-GAN layers, written with `keras.ops` only (TensorFlow and JAX backends)."""

from msmt_tf.layers.blocks import (GLU, ResBlock, ToImage, UpBlock, apply_batch_norm,
                                   count_parameters, set_batch_norm_mode, set_upsample_conv,
                                   upsample_conv3x3)
from msmt_tf.layers.conditioning import ConditioningAugmentation
from msmt_tf.layers.fuse import GatedFusion
from msmt_tf.layers.imhm import DMGANRefinement, IterativeMultiHeadRefinement
from msmt_tf.layers.mtwig import ConventionalInit, MultiTailedWordInit, UpsamplingTrunk
from msmt_tf.layers.sdm import SpatialDynamicMemory

__all__ = [
    "GLU", "ResBlock", "ToImage", "UpBlock", "count_parameters", "ConditioningAugmentation",
    "GatedFusion", "DMGANRefinement", "IterativeMultiHeadRefinement", "ConventionalInit",
    "MultiTailedWordInit", "UpsamplingTrunk", "SpatialDynamicMemory", "set_upsample_conv",
    "upsample_conv3x3", "apply_batch_norm", "set_batch_norm_mode",
]
