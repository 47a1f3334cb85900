"""Benchmarks behind ``sparse3d-bench`` (installed as ``sparse3d.bench``)."""
