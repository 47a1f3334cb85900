"""3D Gaussians as trainable parameters: initialisation from points, activations and their Adam set-up.

Every splatting method (vanilla 3DGS, CoherentGS, RDG-GS ...) shares this: raw parameters live in an
``nn.Module`` in the space Adam works well in (log-scales, opacity logits, unnormalised quaternions, SH
coefficients), the activated values go to :func:`sparse3d.render.gaussians.rasterize_gaussians`, and
:meth:`GaussianModel.to_cloud` gives the :class:`~sparse3d.io.gaussian_ply.GaussianCloud` that the PLY
exporter writes (same raw layout as the 3DGS files). Learning rates default to the original 3DGS ones
(positions scaled by the scene extent).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from sparse3d.cameras import Cameras
from sparse3d.io.gaussian_ply import GaussianCloud

__all__ = ["GaussianModel", "SH_C0", "rgb_to_sh0", "knn_mean_distance", "DEFAULT_LRS", "make_adam"]

SH_C0 = 0.28209479177387814
"""Degree-0 real SH basis value: colour = SH_C0 * f_dc + 0.5."""

DEFAULT_LRS: dict[str, float] = {
    "means": 1.6e-4,  # x scene extent (3DGS position_lr_init)
    "sh0": 2.5e-3,
    "shN": 2.5e-3 / 20,
    "opacities": 5e-2,
    "scales": 5e-3,
    "quats": 1e-3,
}


def rgb_to_sh0(rgb: torch.Tensor) -> torch.Tensor:
    """DC SH coefficient that renders as ``rgb`` (the inverse of ``SH_C0 * c + 0.5``)."""
    return (rgb - 0.5) / SH_C0


def knn_mean_distance(points: torch.Tensor, k: int = 3, chunk: int = 2048) -> torch.Tensor:
    """(N,) root of the mean squared distance to the ``k`` nearest other points (3DGS's initial scale).

    ``points`` is (N, 3) on the CPU or a CUDA device; distances are computed in float32 by the exact grid
    search :func:`sparse3d.kernels.knn.knn_distances` and returned in ``points``' dtype. A duplicate of a point
    is a neighbour at distance 0; with fewer than ``k`` other points the mean is over all of them, and a lone
    point gets 1. ``chunk`` is accepted for compatibility and ignored (the search needs no row blocks).
    """
    from sparse3d.kernels.knn import knn_distances

    n = points.shape[0]
    if n < 2:
        return torch.ones(n, dtype=points.dtype, device=points.device)
    sqdist, _ = knn_distances(points.detach().to(torch.float32), min(k, n - 1))
    return sqdist.mean(1).sqrt().to(points.dtype)


class GaussianModel(nn.Module):
    """N Gaussians with raw (pre-activation) parameters; properties give the activated values."""

    def __init__(
        self,
        means: torch.Tensor,
        log_scales: torch.Tensor,
        quats: torch.Tensor,
        opacity_logits: torch.Tensor,
        sh0: torch.Tensor,
        sh_rest: torch.Tensor,
    ) -> None:
        super().__init__()
        n = means.shape[0]
        k = 1 + sh_rest.shape[1]
        if (means.shape != (n, 3) or log_scales.shape != (n, 3) or quats.shape != (n, 4)
                or opacity_logits.shape != (n,) or sh0.shape != (n, 1, 3) or sh_rest.shape != (n, k - 1, 3)
                or math.isqrt(k) ** 2 != k or k > 16):
            raise ValueError(
                "GaussianModel expects means (N,3), log_scales (N,3), quats (N,4), opacity_logits (N,), sh0 (N,1,3), "
                f"sh_rest (N,K-1,3) with K in 1,4,9,16; got {tuple(means.shape)}, {tuple(log_scales.shape)}, "
                f"{tuple(quats.shape)}, {tuple(opacity_logits.shape)}, {tuple(sh0.shape)}, {tuple(sh_rest.shape)}"
            )
        self.means = nn.Parameter(means.float().contiguous())
        self.log_scales = nn.Parameter(log_scales.float().contiguous())
        self.quats = nn.Parameter(quats.float().contiguous())
        self.opacity_logits = nn.Parameter(opacity_logits.float().contiguous())
        self.sh0 = nn.Parameter(sh0.float().contiguous())
        self.sh_rest = nn.Parameter(sh_rest.float().contiguous())

    @classmethod
    def from_points(
        cls,
        points: torch.Tensor,
        colors: torch.Tensor | None = None,
        sh_degree: int = 3,
        opacity: float = 0.1,
        scale_multiplier: float = 1.0,
    ) -> GaussianModel:
        """3DGS initialisation: one isotropic Gaussian per point, scale = RMS distance to its 3 nearest
        neighbours, identity rotation, opacity 0.1, DC colour from ``colors`` (N, 3) in [0, 1] or grey."""
        if points.dim() != 2 or points.shape[1] != 3 or points.shape[0] == 0:
            raise ValueError(f"points must be a non-empty (N, 3) tensor, got {tuple(points.shape)}")
        if colors is not None and colors.shape != points.shape:
            raise ValueError(f"colors must be (N, 3) like points {tuple(points.shape)}, got {tuple(colors.shape)}")
        if not 0 <= sh_degree <= 3:
            raise ValueError(f"sh_degree must be in 0..3, got {sh_degree}")
        if not 0 < opacity < 1:
            raise ValueError(f"opacity must be in (0, 1), got {opacity}")
        pts = points.detach().float()
        n = pts.shape[0]
        dist = knn_mean_distance(pts).clamp_min(1e-7) * scale_multiplier
        rgb = colors.detach().float() if colors is not None else torch.full_like(pts, 0.5)
        quats = torch.zeros(n, 4, dtype=pts.dtype, device=pts.device)
        quats[:, 0] = 1.0
        return cls(
            means=pts,
            log_scales=dist.log()[:, None].repeat(1, 3),
            quats=quats,
            opacity_logits=torch.full((n,), math.log(opacity / (1 - opacity)), device=pts.device),
            sh0=rgb_to_sh0(rgb)[:, None, :],
            sh_rest=torch.zeros(n, (sh_degree + 1) ** 2 - 1, 3, device=pts.device),
        )

    @classmethod
    def from_cloud(cls, cloud: GaussianCloud) -> GaussianModel:
        """Raw parameters of an activated cloud (e.g. one loaded from a PLY file)."""
        o = cloud.opacities.double().clamp(1e-7, 1 - 1e-7)
        return cls(cloud.means, cloud.scales.log(), cloud.quats, (o.log() - (-o).log1p()).float(),
                   cloud.sh[:, :1], cloud.sh[:, 1:])

    # ------------------------------------------------------------------------------------- activations
    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return math.isqrt(1 + self.sh_rest.shape[1]) - 1

    @property
    def scales(self) -> torch.Tensor:
        return self.log_scales.exp()

    @property
    def opacities(self) -> torch.Tensor:
        return torch.sigmoid(self.opacity_logits)

    @property
    def unit_quats(self) -> torch.Tensor:
        return F.normalize(self.quats, dim=-1)

    @property
    def sh(self) -> torch.Tensor:
        return torch.cat([self.sh0, self.sh_rest], dim=1)

    def to_cloud(self) -> GaussianCloud:
        """Detached activated values, ready for :func:`sparse3d.io.gaussian_ply.save_gaussian_ply`."""
        with torch.no_grad():
            return GaussianCloud(self.means.detach().clone(), self.unit_quats.detach().clone(),
                                 self.scales.detach().clone(), self.opacities.detach().clone(), self.sh.detach().clone())

    def render(
        self, cameras: Cameras, background: torch.Tensor | None = None, sh_degree: int | None = None,
        *, absgrad: bool = False, meta: dict | None = None, check_values: bool = True,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(C, H, W, 3) colours and (C, H, W, 1) alphas of ``cameras``; ``background`` (3,) or (C, 3).

        ``meta``: a dict that receives the rasterizer's meta (``means2d``, ``radii``, ``width``, ... as
        :func:`sparse3d.render.gaussians.rasterize_gaussians` returns them), for densification statistics;
        ``absgrad`` and ``check_values`` (the rasterizer's value check) are passed to the rasterizer.
        """
        from sparse3d.render.gaussians import rasterize_gaussians

        c = len(cameras)
        bg = None if background is None else background.to(self.means).reshape(-1, 3).expand(c, 3).contiguous()
        colors, alphas, out = rasterize_gaussians(
            self.means, self.quats, self.scales, self.opacities, self.sh,
            cameras.viewmat.to(self.means), cameras.K.to(self.means), cameras.width, cameras.height,
            sh_degree=self.sh_degree if sh_degree is None else sh_degree, backgrounds=bg, absgrad=absgrad,
            check_values=check_values,
        )
        if meta is not None:
            meta.update(out)
        return colors, alphas


def make_adam(model: GaussianModel, scene_extent: float = 1.0, lrs: Mapping[str, float] | None = None) -> torch.optim.Adam:
    """Adam with one parameter group per kind (3DGS learning rates; position lr x ``scene_extent``)."""
    rates = {**DEFAULT_LRS, **(lrs or {})}
    unknown = set(rates) - set(DEFAULT_LRS)
    if unknown:
        raise ValueError(f"unknown learning-rate keys {sorted(unknown)}; expected {sorted(DEFAULT_LRS)}")
    groups = [
        {"params": [model.means], "lr": rates["means"] * scene_extent, "name": "means"},
        {"params": [model.sh0], "lr": rates["sh0"], "name": "sh0"},
        {"params": [model.sh_rest], "lr": rates["shN"], "name": "shN"},
        {"params": [model.opacity_logits], "lr": rates["opacities"], "name": "opacities"},
        {"params": [model.log_scales], "lr": rates["scales"], "name": "scales"},
        {"params": [model.quats], "lr": rates["quats"], "name": "quats"},
    ]
    return torch.optim.Adam(groups, eps=1e-15)
