"""NVIDIA Warp kernels of sparse3d, one module per kernel family.

Each public function takes and returns torch tensors, validates its inputs up front and has a plain-torch
oracle in :mod:`sparse3d.kernels.reference`, in the module of the family's name (the Gaussian rasterizer's
modules, ``gaussian_*``, share ``reference.gaussian_raster``). The same Warp source runs on the CPU (split over
all cores by :func:`sparse3d.kernels.runtime.launch`) and, compiled by NVRTC, on CUDA devices.
"""

KERNEL_MODULES: tuple[str, ...] = (
    "sparse3d.kernels.voxelize",
    "sparse3d.kernels.segment",
    "sparse3d.kernels.occupancy",
    "sparse3d.kernels.hashmap",
    "sparse3d.kernels.kernel_map",
    "sparse3d.kernels.sparse_conv",
    "sparse3d.kernels.set_partition",
    "sparse3d.kernels.knn",
    "sparse3d.kernels.rotated_iou",
    "sparse3d.kernels.gaussian_projection",
    "sparse3d.kernels.gaussian_sh",
    "sparse3d.kernels.gaussian_tiles",
    "sparse3d.kernels.gaussian_composite",
    "sparse3d.kernels.plane_sweep",
    "sparse3d.kernels.flexicubes",
    "sparse3d.kernels.mesh_distance",
    "sparse3d.kernels.ray_mesh",
)
"""Every module that defines Warp kernels; the CUDA AOT compile test and bench walk this list."""
