"""msmt-tf: MSMT-GAN text-to-image synthesis in Keras 3 (TensorFlow or JAX backend)."""

__version__ = "0.1.0"
