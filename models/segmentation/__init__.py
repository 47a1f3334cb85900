"""Point-cloud segmentation models."""

from sparse3d.models.segmentation.sparse_unet import SparseUNetSegmenter

__all__ = ["SparseUNetSegmenter"]
