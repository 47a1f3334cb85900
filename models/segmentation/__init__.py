"""Point-cloud semantic segmentation: the task module and its stages."""

from sparse3d.models.segmentation.sparse_unet import SparseUNet
from sparse3d.models.segmentation.stages import PointClassifier, PointVoxelizer
from sparse3d.models.segmentation.task import SegmentationTask

__all__ = ["PointClassifier", "PointVoxelizer", "SegmentationTask", "SparseUNet"]
