"""DAMSM encoders (AttnGAN `RNN_ENCODER` / `CNN_ENCODER`, model_spec §2), used frozen by the GAN."""

import keras
from keras import ops

from msmt_tf.models.initialization import one_program_initialization

__all__ = ["RNNTextEncoder", "ImageEncoder"]


def _uniform(limit=0.1):
  return keras.initializers.RandomUniform(-limit, limit)


@keras.saving.register_keras_serializable(package="msmt_tf")
class RNNTextEncoder(keras.Model):
  """Bidirectional-LSTM text encoder (AttnGAN `RNN_ENCODER`).

  Embedding `vocab_size x 300` (U(-0.1, 0.1)) -> dropout 0.5 (training only) -> one-layer
  bidirectional LSTM with 128 units per direction.

  Args:
    vocab_size: words including index 0 (padding, `<end>`).
    embedding_dim: 300. hidden_dim: 256 (both directions together, = N_w).

  Call arguments:
    tokens: `[B, L]` int word ids, 0 = padding (right-padded).

  Returns:
    `(words [B, L, 256], sentence [B, 256])`; word vectors at padding positions are exactly
    zero; the sentence vector is concat(forward state at the last real word, backward state at
    the first word). Padding never influences either.
  """

  def __init__(self, vocab_size, embedding_dim=300, hidden_dim=256, dropout=0.5, **kwargs):
    super().__init__(**kwargs)
    if vocab_size < 2:
      raise ValueError(f"vocab_size must be >= 2, got {vocab_size}")
    self.vocab_size = vocab_size
    self.embedding_dim = embedding_dim
    self.hidden_dim = hidden_dim
    self.dropout_rate = dropout
    self.embedding = keras.layers.Embedding(vocab_size, embedding_dim,
                                            embeddings_initializer=_uniform(), name="embedding")
    self.drop = keras.layers.Dropout(dropout)
    self.rnn = keras.layers.Bidirectional(
        keras.layers.LSTM(hidden_dim // 2, return_sequences=True, return_state=True),
        name="rnn")

  @one_program_initialization()
  def build(self, tokens_shape):
    self.embedding.build(tokens_shape)
    self.rnn.build(tuple(tokens_shape) + (self.embedding_dim,))

  def call(self, tokens, training=None):
    mask = ops.not_equal(tokens, 0)
    x = self.drop(self.embedding(tokens), training=training)
    seq, fw_h, _, bw_h, _ = self.rnn(x, mask=mask, training=training)
    words = seq * ops.cast(mask, seq.dtype)[..., None]
    return words, ops.concatenate([fw_h, bw_h], axis=-1)

  def compute_output_shape(self, tokens_shape):
    return tuple(tokens_shape) + (self.hidden_dim,), (tokens_shape[0], self.hidden_dim)

  def get_config(self):
    return {**super().get_config(), "vocab_size": self.vocab_size,
            "embedding_dim": self.embedding_dim, "hidden_dim": self.hidden_dim,
            "dropout": self.dropout_rate}


TRUNKS = ("inception_v3", "small", "torchvision_inception_v3")


def _small_trunk():
  """A small CNN trunk for the built-in demo and tests: 128 x 128 input, 8 x 8 regions."""
  x = inputs = keras.Input((128, 128, 3))
  for i, width in enumerate((32, 64, 128, 256)):
    x = keras.layers.Conv2D(width, 3, strides=2, padding="same", name=f"conv{i}")(x)
    x = keras.layers.BatchNormalization(name=f"bn{i}")(x)
    x = keras.layers.LeakyReLU(0.2)(x)
  local = x                                                     # [8, 8, 256]
  top = keras.layers.Conv2D(512, 3, strides=2, padding="same", name="conv_top")(x)
  top = keras.layers.LeakyReLU(0.2)(top)                        # [4, 4, 512]
  return keras.Model(inputs, [local, top], name="small_trunk")


@keras.saving.register_keras_serializable(package="msmt_tf")
class ImageEncoder(keras.Model):
  """DAMSM image encoder (AttnGAN `CNN_ENCODER`): a CNN trunk + two projections.

  trunk='inception_v3' (AttnGAN): images in [-1, 1] are resized (bilinear) to 299 x 299 and fed
  to Keras' InceptionV3 without further normalisation (Keras' Inception preprocessing also maps
  to [-1, 1]); `mixed7` (Mixed_6e, 17 x 17 x 768) -> 1x1 conv (no bias) -> local features;
  `mixed10` (Mixed_7c) -> global average pool -> Dense -> global feature. The trunk is frozen.
  trunk='torchvision_inception_v3': AttnGAN's exact trunk, torchvision's `inception_v3`
  (`msmt_tf.models.torchvision_inception`: BN with scale, average pools counting padding), so
  AttnGAN's released `image_encoder200.pth` imports exactly
  (`msmt_tf.interop.attngan_image.image_encoder_from_state_dict`); same projections.
  trunk='small': a 5-conv CNN on 128 x 128 input with 8 x 8 regions, trained with the projections
  (for the built-in demo and tests, where no ImageNet weights can be had).

  Args:
    nef: feature width (256).
    trunk: 'inception_v3', 'torchvision_inception_v3' or 'small'.
    trunk_weights: None (random init) or a local weights file, nothing is downloaded:
      inception_v3: a Keras InceptionV3 no-top file
      (`inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5`); torchvision_inception_v3:
      a `torch.save` file, torchvision's `inception_v3_google-*.pth` or AttnGAN's
      `image_encoder*.pth` (its trunk), read without PyTorch.
    align_corners: the bilinear resize to the trunk's input size. True: PyTorch
      `align_corners=True` (corner pixels aligned), what AttnGAN's `nn.Upsample(mode='bilinear')`
      did on the PyTorch <= 0.3 it ran on, and what DM-GAN's copy of `CNN_ENCODER` sets: the
      released DAMSM encoders were trained with it. False: half-pixel centres (TF2 / PyTorch
      >= 0.4 default). None (default): True for torchvision_inception_v3 (to reproduce the
      released encoders), False for the other trunks (their behaviour so far).

  Call arguments:
    images: `[B, H, W, 3]` in [-1, 1].

  Returns:
    `(local [B, R, R, nef], global [B, nef])`; R = 17 (both Inception trunks) or 8 (small).
  """

  def __init__(self, nef=256, trunk="inception_v3", trunk_weights=None, align_corners=None,
               **kwargs):
    super().__init__(**kwargs)
    if trunk not in TRUNKS:
      raise ValueError(f"trunk must be one of {TRUNKS}, got {trunk!r}")
    if align_corners not in (None, True, False):
      raise ValueError(f"align_corners must be None, True or False, got {align_corners!r}")
    self.nef = nef
    self.trunk_name = trunk
    self.trunk_weights = trunk_weights
    self.align_corners = align_corners
    self.resize_align_corners = (trunk == "torchvision_inception_v3" if align_corners is None
                                 else align_corners)
    if trunk_weights is not None:
      import os  # pylint: disable=g-import-not-at-top
      if not os.path.isfile(trunk_weights):
        raise FileNotFoundError(f"Inception-v3 trunk weights not found: {trunk_weights}")
    with one_program_initialization():  # the trunk's variables are made here
      if trunk == "inception_v3":
        import warnings  # pylint: disable=g-import-not-at-top
        try:
          with warnings.catch_warnings():  # another model's file: a warning per layer, then this
            warnings.simplefilter("ignore")
            inception = keras.applications.InceptionV3(include_top=False, weights=trunk_weights,
                                                       input_shape=(299, 299, 3))
        except Exception as e:  # h5py's OSError, Keras's ValueError: not the right weights file
          first = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
          raise ValueError(
              f"{trunk_weights} is not a Keras InceptionV3 weights file without the top "
              "(inception_v3_weights_tf_dim_ordering_tf_kernels_notop.h5, or a .weights.h5 of "
              f"keras.applications.InceptionV3(include_top=False)): {type(e).__name__}: "
              f"{first}") from e
        self.trunk = keras.Model(inception.input, [inception.get_layer("mixed7").output,
                                                   inception.get_layer("mixed10").output],
                                 name="inception_trunk")
        self.trunk.trainable = False
        self.input_size, self.local_shape = 299, (17, 17, 768)
      elif trunk == "torchvision_inception_v3":
        from msmt_tf.models import torchvision_inception  # pylint: disable=g-import-not-at-top
        self.trunk = torchvision_inception.TorchvisionInceptionV3(
            outputs=("Mixed_6e", "Mixed_7c"), name="inception_trunk")
        if trunk_weights is not None:
          torchvision_inception.load_weights_file(self.trunk, trunk_weights)
        self.trunk.trainable = False
        self.input_size, self.local_shape = 299, (17, 17, 768)
      else:
        self.trunk = _small_trunk()
        self.input_size, self.local_shape = 128, (8, 8, 256)
    self.top_channels = (2048 if trunk == "torchvision_inception_v3"
                         else self.trunk.outputs[1].shape[-1])
    self.local_proj = keras.layers.Conv2D(nef, 1, use_bias=False, kernel_initializer=_uniform(),
                                          name="emb_features")
    self.global_proj = keras.layers.Dense(nef, kernel_initializer=_uniform(),
                                          name="emb_cnn_code")

  @one_program_initialization()
  def build(self, images_shape):
    self.local_proj.build((None,) + self.local_shape)
    self.global_proj.build((None, self.top_channels))

  def call(self, images, training=None):
    size = self.input_size
    if self.resize_align_corners:
      from msmt_tf.models import inception_blocks  # pylint: disable=g-import-not-at-top
      x = inception_blocks.resize_bilinear(images, size, mode="align_corners")
    else:
      x = ops.image.resize(images, (size, size), interpolation="bilinear")
    trunk_training = training if self.trunk.trainable else False
    local, top = self.trunk(x, training=trunk_training)
    return self.local_proj(local), self.global_proj(ops.mean(top, axis=(1, 2)))

  def compute_output_shape(self, images_shape):
    return ((images_shape[0],) + self.local_shape[:2] + (self.nef,),
            (images_shape[0], self.nef))

  def get_config(self):
    return {**super().get_config(), "nef": self.nef, "trunk": self.trunk_name,
            "trunk_weights": self.trunk_weights, "align_corners": self.align_corners}

  @classmethod
  def from_config(cls, config):
    """`trunk_weights` is kept in the config as a record of where the trunk came from, not read
    again: a saved encoder's archive holds the trunk's weights, and the file may be gone or on
    another machine. The layer made here has the trunk's architecture; the loader (or the caller
    of `from_config`) sets its weights."""
    config = dict(config)
    source = config.pop("trunk_weights", None)
    layer = cls(**config)
    layer.trunk_weights = source
    return layer
