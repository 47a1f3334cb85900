"""``sparse3d.vis``: one viewer for the data sparse3d reads and writes.

Scenes are plain numpy data (:mod:`~sparse3d.vis.scene`), built from files (:mod:`~sparse3d.vis.sources`,
types detected by :mod:`~sparse3d.vis.detect`) or from in-memory objects (:mod:`~sparse3d.vis.builders`), and
drawn by :mod:`~sparse3d.vis.render` (Open3D, headless through EGL or in a window) from cameras made by
:mod:`~sparse3d.vis.camera`. ``sparse3d-vis`` (:mod:`sparse3d.cli.vis`) is the command-line front-end. Boxes
(ground truth, ``sparse3d-detect`` results) are read by :mod:`~sparse3d.vis.detections`; :mod:`~sparse3d.vis.bev`
draws bird's-eye views with numpy and OpenCV alone (TensorBoard images during training);
:mod:`~sparse3d.vis.sparseflex` reads SparseFlex grids and fields (active cubes, extracted mesh) and
:func:`~sparse3d.vis.colors.depth_colors` colours depth maps (TensorBoard's render | ground truth | depth).
"""

from typing import Any

from sparse3d.vis.camera import VIEWS, ViewCamera, look_at_camera, orbit_cameras, view_camera
from sparse3d.vis.scene import CoordinateFrame, Drawable, Lines, Mesh, Points, Scene, Voxels

__all__ = [
    "VIEWS",
    "ViewCamera",
    "look_at_camera",
    "orbit_cameras",
    "view_camera",
    "CoordinateFrame",
    "Drawable",
    "Lines",
    "Mesh",
    "Points",
    "Scene",
    "Voxels",
    "VisOptions",
    "build_scene",
]


def __getattr__(name: str) -> Any:
    """``build_scene`` and ``VisOptions`` load the file readers (torch, Open3D) on first use only."""
    if name in ("VisOptions", "build_scene"):
        from sparse3d.vis import sources

        return getattr(sources, name)
    raise AttributeError(f"module 'sparse3d.vis' has no attribute {name!r}")
