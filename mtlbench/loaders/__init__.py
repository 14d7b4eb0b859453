"""Helpers for dataset loaders (``datasets/*.py``): dense augmentation, tabular splits."""
