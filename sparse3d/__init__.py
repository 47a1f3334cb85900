"""sparse3d: sparse 3D perception and reconstruction on shared NVIDIA Warp sparse-voxel kernels."""

from pathlib import Path as _Path

from sparse3d import _checkout

__version__ = "0.1.0"

# In a source checkout, sparse3d.models, .kernels, ... live beside this folder: map them (see sparse3d._checkout).
_checkout.install(_Path(__file__).resolve().parent)
