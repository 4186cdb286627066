"""Evaluation metrics (FID, IS, R-precision) for msmt-tf; never imported by the model code."""
