"""Posed images: what every per-scene method is fitted on and scored against.

:class:`PosedImages` holds views of one scene with their :class:`~sparse3d.cameras.Cameras`; :class:`SceneViews`
pairs the input views a method may see with the held-out test views it is scored on, and optionally the scene's
sparse :class:`ScenePoints` (COLMAP ``points3D``, a nerfstudio ``ply_file_path``) that a method may initialise
from. Readers of real formats (SpaRe/DTU, LLFF, nerfstudio, COLMAP) return these types, so methods never see file
layouts.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import cv2
import numpy as np
import torch

from sparse3d.cameras import Cameras


@dataclass(frozen=True)
class PosedImages:
    """Views of one scene.

    Attributes:
        images: (V, H, W, 3) float32 in [0, 1].
        cameras: the V cameras the images were taken with (``width``/``height`` match the images).
        masks: optional (V, H, W) bool object masks.
        scene: the scene's name (for logs and per-scene settings).
        names: optional file names of the views (renders of test views are written under these names).
    """

    images: torch.Tensor
    cameras: Cameras
    masks: torch.Tensor | None = None
    scene: str = ""
    names: tuple[str, ...] = field(default=())

    def __post_init__(self) -> None:
        if self.images.dim() != 4 or self.images.shape[-1] != 3:
            raise ValueError(f"images must be (V, H, W, 3), got {tuple(self.images.shape)}")
        if self.images.shape[0] != len(self.cameras):
            raise ValueError(f"{self.images.shape[0]} images but {len(self.cameras)} cameras")
        if (self.images.shape[2], self.images.shape[1]) != (self.cameras.width, self.cameras.height):
            raise ValueError(
                f"images are {self.images.shape[2]}x{self.images.shape[1]} but cameras are "
                f"{self.cameras.width}x{self.cameras.height}"
            )
        if self.masks is not None and self.masks.shape != self.images.shape[:3]:
            raise ValueError(f"masks must be (V, H, W) = {tuple(self.images.shape[:3])}, got {tuple(self.masks.shape)}")
        if self.names and len(self.names) != self.images.shape[0]:
            raise ValueError(f"{len(self.names)} names for {self.images.shape[0]} images")

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def view_names(self) -> Sequence[str]:
        """File names of the views: the given ones, else ``view_000.png``, ``view_001.png``..."""
        return self.names or tuple(f"view_{i:03d}.png" for i in range(len(self)))


@dataclass(frozen=True)
class ScenePoints:
    """A scene's sparse point cloud (e.g. COLMAP ``points3D``) in the world frame of its cameras.

    Attributes:
        xyz: (P, 3) float32 positions.
        rgb: (P, 3) float32 colours in [0, 1].
        source: where the points came from, for logs (e.g. ``points3D (scene/sparse/0/points3D.txt)``).
    """

    xyz: torch.Tensor
    rgb: torch.Tensor
    source: str = ""

    def __post_init__(self) -> None:
        if self.xyz.dim() != 2 or self.xyz.shape[-1] != 3 or self.xyz.dtype != torch.float32:
            raise ValueError(f"xyz must be a (P, 3) float32 tensor, got {tuple(self.xyz.shape)} {self.xyz.dtype}")
        if self.rgb.shape != self.xyz.shape or self.rgb.dtype != torch.float32:
            raise ValueError(f"rgb must be a (P, 3) float32 tensor like xyz {tuple(self.xyz.shape)}, got "
                             f"{tuple(self.rgb.shape)} {self.rgb.dtype}")
        if self.rgb.device != self.xyz.device:
            raise ValueError(f"xyz and rgb must be on one device, got {self.xyz.device} and {self.rgb.device}")
        if len(self.xyz) and not bool(torch.isfinite(self.xyz).all()):
            raise ValueError("xyz must be finite")
        if len(self.rgb) and not bool(((self.rgb >= 0) & (self.rgb <= 1)).all()):
            raise ValueError("rgb must be in [0, 1]")

    def __len__(self) -> int:
        return int(self.xyz.shape[0])

    @classmethod
    def from_numpy(cls, xyz: np.ndarray, rgb: np.ndarray | None = None, source: str = "") -> ScenePoints:
        """Points from arrays: ``xyz`` (P, 3); ``rgb`` (P, 3) in [0, 1] (clipped), None for mid grey."""
        pos = torch.from_numpy(np.ascontiguousarray(xyz, dtype=np.float32).reshape(-1, 3))
        col = (torch.full_like(pos, 0.5) if rgb is None
               else torch.from_numpy(np.clip(np.asarray(rgb, dtype=np.float32), 0.0, 1.0).reshape(-1, 3)))
        return cls(pos, col, source)

    def to(self, device: torch.device | str) -> ScenePoints:
        return ScenePoints(self.xyz.to(device), self.rgb.to(device), self.source)

    def transformed(self, matrix: np.ndarray | torch.Tensor) -> ScenePoints:
        """The points mapped by a 4x4 affine ``matrix`` (``x' = A x + b``, e.g. a reader's world change)."""
        m = torch.as_tensor(np.asarray(matrix, dtype=np.float64) if not isinstance(matrix, torch.Tensor) else matrix,
                            dtype=torch.float64, device=self.xyz.device)
        if m.shape != (4, 4):
            raise ValueError(f"matrix must be 4x4, got {tuple(m.shape)}")
        xyz = self.xyz.double() @ m[:3, :3].T + m[:3, 3]
        return ScenePoints(xyz.float(), self.rgb, self.source)


@dataclass(frozen=True)
class SceneViews:
    """One scene for a per-scene method: the input views it is fitted on, optional held-out test views and the
    scene's optional sparse points (None when the format or the files have none).

    Scenes made from a mesh (:func:`sparse3d.datasets.meshes.load_mesh_scene`) also carry the target ``mesh``
    (a :class:`sparse3d.io.mesh.TriangleMesh` in the unit box) and the ``normalization`` that maps it back to the
    file's coordinates: methods that fit surfaces render their supervision from it.
    """

    inputs: PosedImages
    test: PosedImages | None = None
    points: ScenePoints | None = None
    mesh: Any = None
    normalization: Any = None

    @property
    def name(self) -> str:
        return self.inputs.scene


def resample_views(views: PosedImages, width: int, height: int) -> PosedImages:
    """The same views at ``width`` x ``height``: images area-averaged (OpenCV ``INTER_AREA``), masks nearest
    neighbour, cameras rescaled with :meth:`~sparse3d.cameras.Cameras.resized`. Returns ``views`` unchanged
    when it already has that size."""
    if int(width) < 1 or int(height) < 1:
        raise ValueError(f"width and height must be >= 1, got {width} x {height}")
    width, height = int(width), int(height)
    if (views.cameras.width, views.cameras.height) == (width, height):
        return views
    images = np.zeros((len(views), height, width, 3), np.float32)
    for i, img in enumerate(views.images.cpu().numpy()):
        images[i] = cv2.resize(img, (width, height), interpolation=cv2.INTER_AREA).reshape(height, width, 3)
    masks = None
    if views.masks is not None:
        masks = torch.zeros(len(views), height, width, dtype=torch.bool)
        for i, m in enumerate(views.masks.cpu().numpy()):
            small = cv2.resize(m.astype(np.uint8), (width, height), interpolation=cv2.INTER_NEAREST)
            masks[i] = torch.from_numpy(small.reshape(height, width) > 0)
    return PosedImages(torch.from_numpy(np.clip(images, 0.0, 1.0)), views.cameras.resized(width, height), masks,
                       views.scene, views.names)
