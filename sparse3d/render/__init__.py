"""Rendering front-ends: the novel-view method interface, the Gaussian rasterizer and mesh ray casting."""

from sparse3d.render.interface import NovelViewMethod, PosedImages

__all__ = ["NovelViewMethod", "PosedImages"]
