"""Datasets in the AttnGAN layout (birds, coco, built-in shapes, `folder` datasets built from
your own images by msmt_tf.data.build) and their tf.data pipeline."""

from msmt_tf.data.datasets import (DATASETS, DataPipeline, SplitData, dataset_spec, load_split,
                                   verify_image)
from msmt_tf.data.errors import CaptionError, DatasetError, UnsafePickleError
from msmt_tf.data.vocab import Vocabulary, tokenize

__all__ = [
    "DATASETS", "DataPipeline", "SplitData", "dataset_spec", "load_split", "verify_image",
    "CaptionError",
    "DatasetError", "UnsafePickleError", "Vocabulary", "tokenize",
]
