"""The renderer interface every novel-view method implements: fit on posed input images, render cameras.

The SpaRe submission writer, the rendering evaluator and scene sweeps only talk to this interface, so a new
method (a baseline, 3DGS, CoherentGS, RDG-GS) plugs in without touching the benchmark code.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from sparse3d.cameras import Cameras


@dataclass(frozen=True)
class PosedImages:
    """Input views of one scene.

    Attributes:
        images: (V, H, W, 3) float32 in [0, 1].
        cameras: the V cameras the images were taken with (``width``/``height`` match the images).
        masks: optional (V, H, W) bool object masks.
        scene: the scene's name (for logs and per-scene settings).
    """

    images: torch.Tensor
    cameras: Cameras
    masks: torch.Tensor | None = None
    scene: str = ""

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


@runtime_checkable
class NovelViewMethod(Protocol):
    """Cameras in, images out. ``fit`` is called once per scene before ``render``."""

    def fit(self, views: PosedImages) -> None:
        """Reconstruct the scene from its input views."""
        ...

    def render(self, cameras: Cameras) -> torch.Tensor:
        """Render (N, H, W, 3) float32 images in [0, 1] at ``cameras.height`` x ``cameras.width``."""
        ...
