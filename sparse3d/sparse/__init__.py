"""Sparse-voxel core: the tensor type, its layers and the kernel operations every pipeline shares."""

from sparse3d.kernels.hashmap import VoxelHashTable, unique_keys_with_inverse
from sparse3d.kernels.kernel_map import inverse_map, strided_map, submanifold_map
from sparse3d.kernels.kernel_map_types import KernelMap
from sparse3d.kernels.segment import segment_count, segment_max, segment_mean, segment_sum
from sparse3d.kernels.set_partition import dsvt_stage_partitions, dynamic_set_partition, window_partition
from sparse3d.kernels.sparse_conv import sparse_conv
from sparse3d.kernels.voxelize import voxelize
from sparse3d.kernels.voxelize_types import Voxelization, grid_size_from_range
from sparse3d.sparse.nn import (
    SparseConv3d,
    SparseInverseConv3d,
    SparseSequential,
    SubMConv3d,
    conv3d_weight_from_torch,
)
from sparse3d.sparse.tensor import SparseVoxelTensor

__all__ = [
    "KernelMap",
    "SparseConv3d",
    "SparseInverseConv3d",
    "SparseSequential",
    "SparseVoxelTensor",
    "SubMConv3d",
    "Voxelization",
    "VoxelHashTable",
    "conv3d_weight_from_torch",
    "dsvt_stage_partitions",
    "dynamic_set_partition",
    "grid_size_from_range",
    "inverse_map",
    "segment_count",
    "segment_max",
    "segment_mean",
    "segment_sum",
    "sparse_conv",
    "strided_map",
    "submanifold_map",
    "unique_keys_with_inverse",
    "voxelize",
    "window_partition",
]
