"""AttnGAN's DAMSM image encoder (`CNN_ENCODER`, e.g. the released `image_encoder200.pth`) as an
`ImageEncoder` with the torchvision Inception-v3 trunk.

AttnGAN's `CNN_ENCODER` (taoxugit/AttnGAN `code/model.py`) keeps torchvision `inception_v3`'s
modules `Conv2d_1a_3x3 ... Mixed_7c` (frozen ImageNet weights) and adds `emb_features`
(1x1 conv 768 -> nef, no bias, on Mixed_6e's 17 x 17 output) and `emb_cnn_code`
(Linear 2048 -> nef on the 8 x 8 average pool of Mixed_7c). Its state dict therefore holds the
trunk's torchvision names plus `emb_features.weight [nef, 768, 1, 1]`,
`emb_cnn_code.weight [nef, 2048]` and `emb_cnn_code.bias [nef]`; no `fc`, no `AuxLogits`.
The trunk's parameters never train, but AttnGAN's `pretrain_DAMSM.py` runs the encoder in train
mode, so the trunk's batch-norm running statistics in a released file are not torchvision's:
they are taken from the file, as AttnGAN's eval-mode encoder uses them.

Input convention: images in [-1, 1], upsampled to 299 x 299 bilinearly, no ImageNet
normalisation. AttnGAN's `nn.Upsample(size=(299, 299), mode='bilinear')` leaves `align_corners`
unset: on the PyTorch <= 0.3 AttnGAN ran on (and trained the released encoders with) that was
`align_corners=True`; from 0.4 on it means False. DM-GAN's copy of the class sets True. The
default here is therefore True; pass False to match a PyTorch >= 0.4 run of the unmodified code.
"""

import numpy as np

from msmt_tf.models import torchvision_inception as tvi

__all__ = ["image_encoder_from_state_dict", "load_image_encoder"]


def _strip_module(arrays):
  if arrays and all(k.startswith("module.") for k in arrays):
    return {k[len("module."):]: v for k, v in arrays.items()}
  return dict(arrays)


def image_encoder_from_state_dict(arrays, align_corners=True, source="state dict",
                                  name="image_encoder"):
  """A built, frozen-trunk `ImageEncoder` (trunk 'torchvision_inception_v3') with the weights of
  an AttnGAN `CNN_ENCODER` state dict.

  Args:
    arrays: {name: numpy array} as `msmt_tf.interop.torch_io.load_state_dict` returns it (a
      `module.` prefix on every key is stripped).
    align_corners: the resize to 299 (see the module doc): True (AttnGAN's PyTorch, default) or
      False.
    source: what to call `arrays` in errors (the file name).
    name: the Keras model's name.

  Returns:
    The `ImageEncoder`; `nef` is read from `emb_features.weight`.

  Raises:
    ValueError: listing the missing keys, the unexpected keys (anything that is neither the
      trunk nor the two projections: `fc.*` / `AuxLogits.*` mean a classifier file, not an
      encoder) and every shape mismatch.
  """
  from msmt_tf.models.text_encoder import ImageEncoder  # pylint: disable=g-import-not-at-top
  arrays = _strip_module(arrays)
  missing = [k for k in tvi.ATTNGAN_HEAD_KEYS if k not in arrays]
  if missing:
    if any(k.startswith(("fc.", "AuxLogits.")) for k in arrays):
      kind = "torchvision's inception_v3 classifier file"
    elif "encoder.weight" in arrays and any(k.startswith("rnn.") for k in arrays):
      kind = "AttnGAN's DAMSM text encoder RNN_ENCODER: pass it as --text_encoder"
    elif any(k.startswith(("ca_net.", "h_net1.", "img_net1.")) for k in arrays):
      kind = ("a generator G_NET (AttnGAN's or DM-GAN's; DM-GAN's imports with python -m "
              "msmt_tf.import_torch dmgan_generator --netG)")
    else:
      kind = "something else"
    raise ValueError(f"{source} is not an AttnGAN image encoder (CNN_ENCODER): missing "
                     f"{', '.join(missing)} (it looks like {kind}; keys: {tvi._short(arrays)})")
  w_local = np.asarray(arrays["emb_features.weight"])
  nef = int(w_local.shape[0]) if w_local.ndim else 0
  expected_head = {"emb_features.weight": (nef, 768, 1, 1), "emb_cnn_code.weight": (nef, 2048),
                   "emb_cnn_code.bias": (nef,)}
  bad = [f"{k}: {tuple(np.shape(arrays[k]))} in the file, expected {shape}"
         for k, shape in expected_head.items() if tuple(np.shape(arrays[k])) != shape]
  encoder = ImageEncoder(max(nef, 1), trunk="torchvision_inception_v3",
                         align_corners=align_corners, name=name)
  trunk_names = tvi.state_dict_names(encoder.trunk)
  unexpected = [k for k in arrays if k not in trunk_names and k not in expected_head
                and not k.endswith("num_batches_tracked")]
  if bad or unexpected:
    problems = ([f"{len(bad)} shape mismatch(es): {'; '.join(bad)}"] if bad else []) + (
        [f"{len(unexpected)} unexpected key(s): {tvi._short(unexpected)}"] if unexpected else [])
    raise ValueError(f"{source} is not an AttnGAN image encoder (CNN_ENCODER): "
                     + "; ".join(problems))
  trunk = {k: v for k, v in arrays.items() if k not in expected_head}
  tvi.load_torchvision_weights(encoder.trunk, trunk, source=source)  # lists missing / shapes
  encoder.build((None, 299, 299, 3))
  encoder.local_proj.kernel.assign(
      np.transpose(w_local[:, :, 0, 0]).reshape(1, 1, 768, nef).astype(np.float32))
  encoder.global_proj.kernel.assign(
      np.transpose(np.asarray(arrays["emb_cnn_code.weight"], np.float32)))
  encoder.global_proj.bias.assign(np.asarray(arrays["emb_cnn_code.bias"], np.float32))
  return encoder


def load_image_encoder(path, align_corners=True, name="image_encoder"):
  """`image_encoder_from_state_dict` of a `torch.save` file (either format), read without
  PyTorch by `msmt_tf.interop.torch_io`."""
  from msmt_tf.interop import torch_io  # pylint: disable=g-import-not-at-top
  arrays = torch_io.load_state_dict(path, anchor="emb_features.weight")
  return image_encoder_from_state_dict(arrays, align_corners, source=str(path), name=name)
