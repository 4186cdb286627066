"""Interop with the PyTorch ancestors (AttnGAN, DM-GAN, torchvision): PyTorch-free readers and
importers of their released weights."""
