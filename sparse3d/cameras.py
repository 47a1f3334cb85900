"""The one camera type of sparse3d: pinhole intrinsics and world-to-camera extrinsics in OpenCV convention.

Conventions (fixed here so every reader, renderer and metric agrees):

* Camera axes are OpenCV's: x right, y down, z forward (into the scene). ``viewmat`` maps world to camera,
  ``x_cam = R x_world + t``; this is gsplat's ``viewmats`` layout, so a :class:`Cameras` feeds the Gaussian
  rasterizer without conversion.
* Pixel coordinates are continuous with the centre of pixel (row i, column j) at ``(j + 0.5, i + 0.5)``
  (gsplat's convention). A projection matrix ``P = K [R | t]`` read from a file is taken to use the same
  convention, so ``K`` is used exactly as decomposed; round-tripping points through ``P`` is therefore exact.
* Readers convert other conventions (OpenGL/nerfstudio, LLFF, projection matrices) at the IO boundary only.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch


@dataclass(frozen=True)
class Cameras:
    """A batch of ``N`` pinhole cameras sharing one image size.

    Attributes:
        K: (N, 3, 3) float32 intrinsics, ``K[2, 2] == 1``.
        viewmat: (N, 4, 4) float32 world-to-camera transforms (OpenCV axes), last row ``[0, 0, 0, 1]``.
        width: image width in pixels.
        height: image height in pixels.
    """

    K: torch.Tensor
    viewmat: torch.Tensor
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.K.dim() != 3 or self.K.shape[1:] != (3, 3):
            raise ValueError(f"K must have shape (N, 3, 3), got {tuple(self.K.shape)}")
        if self.viewmat.dim() != 3 or self.viewmat.shape[1:] != (4, 4):
            raise ValueError(f"viewmat must have shape (N, 4, 4), got {tuple(self.viewmat.shape)}")
        if self.K.shape[0] != self.viewmat.shape[0]:
            raise ValueError(f"K has {self.K.shape[0]} cameras but viewmat has {self.viewmat.shape[0]}")
        if int(self.width) <= 0 or int(self.height) <= 0:
            raise ValueError(f"image size must be positive, got {self.width}x{self.height}")

    # ------------------------------------------------------------------------------------------ construction
    @classmethod
    def from_Rt(
        cls, K: torch.Tensor | np.ndarray, R: torch.Tensor | np.ndarray, t: torch.Tensor | np.ndarray,
        width: int, height: int,
    ) -> Cameras:
        """Build from intrinsics (N,3,3), world-to-camera rotations (N,3,3) and translations (N,3)."""
        K_t = torch.as_tensor(np.asarray(K), dtype=torch.float32).reshape(-1, 3, 3)
        R_t = torch.as_tensor(np.asarray(R), dtype=torch.float32).reshape(-1, 3, 3)
        t_t = torch.as_tensor(np.asarray(t), dtype=torch.float32).reshape(-1, 3)
        view = torch.eye(4, dtype=torch.float32).repeat(R_t.shape[0], 1, 1)
        view[:, :3, :3] = R_t
        view[:, :3, 3] = t_t
        return cls(K=K_t, viewmat=view, width=int(width), height=int(height))

    @classmethod
    def from_c2w(cls, K: torch.Tensor | np.ndarray, c2w: torch.Tensor | np.ndarray, width: int, height: int) -> Cameras:
        """Build from OpenCV-axis camera-to-world matrices (N,3,4) or (N,4,4)."""
        c2w_t = torch.as_tensor(np.asarray(c2w), dtype=torch.float64)
        R_c2w = c2w_t[:, :3, :3]
        centre = c2w_t[:, :3, 3]
        R = R_c2w.transpose(1, 2)
        t = -(R @ centre.unsqueeze(-1)).squeeze(-1)
        return cls.from_Rt(K, R.numpy(), t.numpy(), width, height)

    @classmethod
    def from_projection_matrices(cls, P: np.ndarray | Sequence[np.ndarray], width: int, height: int) -> Cameras:
        """Decompose (N, 3, 4) projection matrices ``P = K [R | t]`` (see :func:`decompose_projection_matrix`)."""
        mats = np.asarray(P, dtype=np.float64).reshape(-1, 3, 4)
        parts = [decompose_projection_matrix(m) for m in mats]
        return cls.from_Rt(
            np.stack([p[0] for p in parts]), np.stack([p[1] for p in parts]), np.stack([p[2] for p in parts]),
            width, height,
        )

    # ------------------------------------------------------------------------------------------- accessors
    def __len__(self) -> int:
        return int(self.K.shape[0])

    def __getitem__(self, index: int | slice | Sequence[int] | torch.Tensor) -> Cameras:
        """Select cameras; an integer keeps the batch dimension (a batch of one)."""
        if isinstance(index, int):
            index = [index]
        idx = torch.as_tensor(index) if not isinstance(index, slice) else index
        return Cameras(K=self.K[idx], viewmat=self.viewmat[idx], width=self.width, height=self.height)

    @property
    def R(self) -> torch.Tensor:
        """(N, 3, 3) world-to-camera rotations."""
        return self.viewmat[:, :3, :3]

    @property
    def t(self) -> torch.Tensor:
        """(N, 3) world-to-camera translations."""
        return self.viewmat[:, :3, 3]

    @property
    def centers(self) -> torch.Tensor:
        """(N, 3) camera centres in world coordinates, ``-Rᵀ t``."""
        return -(self.R.transpose(1, 2) @ self.t.unsqueeze(-1)).squeeze(-1)

    @property
    def c2w(self) -> torch.Tensor:
        """(N, 4, 4) camera-to-world transforms (OpenCV axes)."""
        return torch.linalg.inv(self.viewmat.double()).to(self.viewmat.dtype)

    def projection_matrices(self) -> torch.Tensor:
        """(N, 3, 4) ``K [R | t]``."""
        return self.K @ self.viewmat[:, :3, :]

    def to(self, device: torch.device | str) -> Cameras:
        return Cameras(K=self.K.to(device), viewmat=self.viewmat.to(device), width=self.width, height=self.height)

    def resized(self, width: int, height: int) -> Cameras:
        """The same cameras for images resampled to ``width`` x ``height`` (pixel-edge scaling of K)."""
        sx, sy = width / self.width, height / self.height
        scale = torch.tensor([[sx, 0.0, 0.0], [0.0, sy, 0.0], [0.0, 0.0, 1.0]], dtype=self.K.dtype, device=self.K.device)
        return Cameras(K=scale @ self.K, viewmat=self.viewmat, width=int(width), height=int(height))

    # -------------------------------------------------------------------------------------------- geometry
    def project(self, points: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Project world points (P, 3) into every camera: pixel coordinates (N, P, 2) and depths (N, P)."""
        pts = points.to(self.viewmat.dtype)
        cam = pts @ self.R.transpose(1, 2) + self.t.unsqueeze(1)
        depth = cam[..., 2]
        uvw = cam @ self.K.transpose(1, 2)
        uv = uvw[..., :2] / uvw[..., 2:3]
        return uv, depth

    def pixel_rays(self, index: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
        """World-space ray origins and unit directions (H, W, 3) through the pixel centres of one camera."""
        K = self.K[index].double()
        c2w = self.c2w[index].double()
        j, i = torch.meshgrid(
            torch.arange(self.width, dtype=torch.float64) + 0.5,
            torch.arange(self.height, dtype=torch.float64) + 0.5,
            indexing="xy",
        )
        dirs_cam = torch.stack([(j - K[0, 2]) / K[0, 0], (i - K[1, 2]) / K[1, 1], torch.ones_like(j)], dim=-1)
        if float(K[0, 1]) != 0.0:  # undo skew: x = (u - cx - s*y) / fx
            dirs_cam[..., 0] = (j - K[0, 2] - K[0, 1] * dirs_cam[..., 1]) / K[0, 0]
        dirs = dirs_cam @ c2w[:3, :3].T
        dirs = dirs / dirs.norm(dim=-1, keepdim=True)
        origins = c2w[:3, 3].expand_as(dirs)
        return origins.float(), dirs.float()


def look_at(
    centre: np.ndarray | Sequence[float], target: np.ndarray | Sequence[float],
    up: Sequence[float] = (0.0, 0.0, 1.0), roll: float = 0.0,
) -> np.ndarray:
    """World-to-camera rotation (OpenCV axes) of a camera at ``centre`` looking at ``target``.

    ``up`` is the world direction that appears upwards in the image (image y points away from it); ``roll``
    turns the camera by that many radians about its optical axis.
    """
    forward = np.asarray(target, dtype=np.float64) - np.asarray(centre, dtype=np.float64)
    forward = forward / np.linalg.norm(forward)
    right = np.cross(forward, np.asarray(up, dtype=np.float64))
    if np.linalg.norm(right) < 1e-9:
        raise ValueError("the viewing direction is parallel to `up`; the camera's roll is undefined")
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    c, s = np.cos(roll), np.sin(roll)
    return np.stack([c * right + s * down, -s * right + c * down, forward])


def decompose_projection_matrix(P: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a 3x4 projection matrix into ``K`` (upper triangular, positive diagonal, ``K[2,2] = 1``), a proper
    rotation ``R`` (det +1) and a translation ``t`` with ``P ~ K [R | t]`` (equal up to a positive or negative scale).

    NumPy only (no OpenCV): an RQ decomposition of the left 3x3 block. The RQ factors are unique only up to the
    signs of K's diagonal, so those are made positive; P is defined up to scale, so a negative determinant is
    fixed by negating P. The small skew ``K[0, 1]`` a DLT calibration may leave is kept, not zeroed.
    """
    P = np.asarray(P, dtype=np.float64)
    if P.shape != (3, 4) or not np.all(np.isfinite(P)):
        raise ValueError(f"a projection matrix must be a finite 3x4 array, got shape {P.shape}")
    M = P[:, :3]
    if abs(np.linalg.det(M)) < 1e-12 * max(1.0, np.abs(M).max() ** 3):
        raise ValueError("projection matrix has a singular left 3x3 block (not a finite pinhole camera)")
    if np.linalg.det(M) < 0:
        P = -P
        M = P[:, :3]
    # RQ via QR of the row-reversed transpose: M = K R with K upper triangular and R orthonormal.
    flip = np.eye(3)[::-1]
    q, r = np.linalg.qr((flip @ M).T)
    K = flip @ r.T @ flip
    R = flip @ q.T
    signs = np.diag(np.sign(np.diag(K)))
    K = K @ signs
    R = signs @ R  # signs is its own inverse, so K R is unchanged
    if np.linalg.det(R) < 0:  # cannot happen when det(M) > 0 and diag(K) > 0, kept as a guard
        raise ValueError("projection matrix decomposition produced an improper rotation")
    scale = K[2, 2]
    t = np.linalg.solve(K, P[:, 3])
    K = K / scale
    return K, R, t

