"""Synthetic data generators (images rendered from sampled data, with exactly computed answers)."""
