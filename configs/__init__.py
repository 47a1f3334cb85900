"""Hydra configuration tree of sparse3d, shipped as package data (``pkg://sparse3d.configs``).

Hydra imports this package to read the YAML files, so registering the structured-config schemas here
guarantees they exist before any composition, for the console scripts and for
``initialize_config_module("sparse3d.configs")`` alike.
"""

from sparse3d.config_schema import register as _register

_register()
