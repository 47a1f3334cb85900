"""sparse3d: sparse 3D perception and reconstruction on shared NVIDIA Warp sparse-voxel kernels."""

__version__ = "0.1.0"
