"""Gaussian splatting models: the shared Gaussian parameterisation and fitting loop, and the sparse-view methods
built on it."""
