"""Rendering front-ends: the novel-view method interface, the Gaussian rasterizer and mesh ray casting."""

from sparse3d.render.gaussians import rasterize_gaussians
from sparse3d.render.interface import NovelViewMethod, PosedImages

__all__ = ["NovelViewMethod", "PosedImages", "rasterize_gaussians"]
