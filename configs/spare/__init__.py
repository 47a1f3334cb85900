"""Hydra configs of the SpaRe benchmark tools (sparse3d-spare)."""
