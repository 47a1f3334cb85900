"""Rendering front-ends: the Gaussian rasterizer (gsplat-compatible) and mesh ray casting."""

from sparse3d.render.gaussians import rasterize_gaussians

__all__ = ["rasterize_gaussians"]
