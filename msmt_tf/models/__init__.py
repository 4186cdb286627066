"""MSMT-GAN models: generator (and ablation variants), discriminators, DAMSM encoders."""

from msmt_tf.models.discriminator import SNConv2D, StageDiscriminator
from msmt_tf.models.generator import INITIAL_STAGES, REFINEMENTS, MSMTGenerator
from msmt_tf.models.text_encoder import ImageEncoder, RNNTextEncoder

__all__ = ["SNConv2D", "StageDiscriminator", "INITIAL_STAGES", "REFINEMENTS", "MSMTGenerator",
           "ImageEncoder", "RNNTextEncoder"]
