"""3D Gaussian splatting scenes as PLY files in the layout of the original 3DGS code (graphdeco-inria).

Every viewer and editor that opens 3DGS scenes (SuperSplat, the SIBR viewer, nerfstudio, gsplat's exporters)
reads one ``vertex`` element with float32 properties, in this order::

    x y z  nx ny nz  f_dc_0..2  f_rest_0..44  opacity  scale_0..2  rot_0..3

The file stores *raw* optimiser parameters: opacity as a logit, scales as logs, the rotation as a quaternion
(w, x, y, z) that need not be unit length. ``f_dc`` are the degree-0 SH coefficients of R, G, B; ``f_rest``
is channel-major (all higher coefficients of R, then of G, then of B). The normals are unused (zeros).

In memory :class:`GaussianCloud` holds *activated* values -- what the rasterizer takes -- so the
logit/log/normalisation conversions happen here and nowhere else. Lower SH degrees are written padded to
the full 45 ``f_rest`` values because SuperSplat accepts only 0 or 45 of them; the loader accepts any
complete degree (0, 9, 24 or 45 ``f_rest``) and reports the degree the file holds.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from sparse3d.io.pointcloud import PathLike, read_ply_points, write_ply_points
from sparse3d.utils.errors import UserError

__all__ = [
    "GaussianCloud", "GaussianPlyError", "save_gaussian_ply", "load_gaussian_ply", "ply_property_names",
    "MAX_SH_DEGREE",
]

MAX_SH_DEGREE = 3
_REST_PER_DEGREE = {3 * ((d + 1) ** 2 - 1): d for d in range(MAX_SH_DEGREE + 1)}  # {0: 0, 9: 1, 24: 2, 45: 3}
_OPACITY_EPS = 1e-7  # opacities are clamped to [eps, 1 - eps] so the stored logit stays finite


class GaussianPlyError(UserError, ValueError):
    """A 3DGS PLY file that cannot be loaded: a one-line message naming the file (and property, and count).

    A :class:`~sparse3d.utils.errors.UserError` for the console scripts and a ValueError for API callers.
    """


@dataclass
class GaussianCloud:
    """N Gaussians with activated parameters (the rasterizer's inputs).

    Attributes:
        means: (N, 3) world positions.
        quats: (N, 4) rotations as quaternions (w, x, y, z); unit length after loading.
        scales: (N, 3) positive standard deviations along the rotated axes.
        opacities: (N,) in (0, 1).
        sh: (N, K, 3) real SH coefficients per colour channel, K = (degree + 1)^2 (K = 1: DC only).
    """

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor

    def __post_init__(self) -> None:
        n = self.means.shape[0] if self.means.dim() == 2 else -1
        expected = {"means": (n, 3), "quats": (n, 4), "scales": (n, 3), "opacities": (n,)}
        for name, shape in expected.items():
            value = getattr(self, name)
            if not isinstance(value, torch.Tensor) or tuple(value.shape) != shape or n < 0:
                got = tuple(value.shape) if isinstance(value, torch.Tensor) else type(value).__name__
                raise ValueError(f"GaussianCloud.{name} must have shape {shape} (N from means), got {got}")
        if not isinstance(self.sh, torch.Tensor) or self.sh.dim() != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            got = tuple(self.sh.shape) if isinstance(self.sh, torch.Tensor) else type(self.sh).__name__
            raise ValueError(f"GaussianCloud.sh must have shape (N, K, 3) with N = {n}, got {got}")
        k = self.sh.shape[1]
        if math.isqrt(k) ** 2 != k or k > (MAX_SH_DEGREE + 1) ** 2:
            raise ValueError(f"GaussianCloud.sh has K = {k} coefficients; K must be 1, 4, 9 or 16")

    def __len__(self) -> int:
        return int(self.means.shape[0])

    @property
    def sh_degree(self) -> int:
        return math.isqrt(int(self.sh.shape[1])) - 1


def ply_property_names(num_rest: int = 45) -> list[str]:
    """The vertex properties of a 3DGS PLY with ``num_rest`` ``f_rest`` values, in file order."""
    return (
        ["x", "y", "z", "nx", "ny", "nz"]
        + [f"f_dc_{i}" for i in range(3)]
        + [f"f_rest_{i}" for i in range(num_rest)]
        + ["opacity"]
        + [f"scale_{i}" for i in range(3)]
        + [f"rot_{i}" for i in range(4)]
    )


def _numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def save_gaussian_ply(path: PathLike, cloud: GaussianCloud) -> Path:
    """Write ``cloud`` as a binary little-endian 3DGS PLY (raw parameters, f_rest padded to degree 3).

    Raises ValueError (naming the file) for non-positive scales, opacities outside [0, 1], zero-length
    quaternions or non-finite values, which viewers would silently render as garbage.
    """
    p = Path(path)
    means, quats, scales = _numpy(cloud.means), _numpy(cloud.quats), _numpy(cloud.scales)
    opac, sh = _numpy(cloud.opacities), _numpy(cloud.sh)
    for name, arr in (("means", means), ("quats", quats), ("scales", scales), ("opacities", opac), ("sh", sh)):
        if not np.isfinite(arr).all():
            raise ValueError(f"cannot write {p}: GaussianCloud.{name} has non-finite values")
    if (scales <= 0).any():
        raise ValueError(f"cannot write {p}: GaussianCloud.scales must be > 0 (they are stored as logs)")
    if ((opac < 0) | (opac > 1)).any():
        raise ValueError(f"cannot write {p}: GaussianCloud.opacities must lie in [0, 1]")
    if (np.linalg.norm(quats, axis=1) == 0).any():
        raise ValueError(f"cannot write {p}: GaussianCloud.quats has zero-length quaternions")

    n, k = sh.shape[0], sh.shape[1]
    rest = np.zeros((n, 3, (MAX_SH_DEGREE + 1) ** 2 - 1))
    rest[:, :, : k - 1] = sh[:, 1:, :].transpose(0, 2, 1)  # channel-major: (N, 3 channels, 15 coefficients)
    rest = rest.reshape(n, -1)
    opac = np.clip(opac, _OPACITY_EPS, 1.0 - _OPACITY_EPS)

    fields: dict[str, np.ndarray] = {"normals": np.zeros((n, 3), np.float32)}
    fields.update({f"f_dc_{c}": sh[:, 0, c] for c in range(3)})
    fields.update({f"f_rest_{i}": rest[:, i] for i in range(rest.shape[1])})
    fields["opacity"] = np.log(opac) - np.log1p(-opac)
    fields.update({f"scale_{i}": np.log(scales[:, i]) for i in range(3)})
    fields.update({f"rot_{i}": quats[:, i] for i in range(4)})
    return write_ply_points(p, means.astype(np.float32), **{name: v.astype(np.float32) for name, v in fields.items()})


def load_gaussian_ply(path: PathLike) -> GaussianCloud:
    """Read a 3DGS PLY (any complete SH degree; extra properties ignored) into activated float32 tensors.

    The SH degree is taken from the number of ``f_rest`` properties (0, 9, 24 or 45); a file written padded
    to 45 loads as degree 3 with zero higher coefficients, which renders identically.

    Raises :class:`GaussianPlyError` (naming the file, the property and how many Gaussians) for missing
    properties, NaN or infinite values in any property used, log scales whose exponential is 0 or inf in
    float32, and zero-length quaternions: the values :func:`save_gaussian_ply` refuses to write.
    """
    p = Path(path)
    cols = read_ply_points(p)
    num_rest = sum(1 for name in cols if name.startswith("f_rest_"))
    if num_rest not in _REST_PER_DEGREE:
        raise GaussianPlyError(
            f"{p}: has {num_rest} f_rest properties; a 3DGS PLY has 0, 9, 24 or 45 (SH degree 0..3)"
        )
    required = [name for name in ply_property_names(num_rest) if name not in ("x", "y", "z", "nx", "ny", "nz")]
    missing = [name for name in required if name not in cols]
    if missing:
        raise GaussianPlyError(f"{p}: not a 3DGS PLY, vertex properties missing: {', '.join(missing)}")

    n = cols["xyz"].shape[0]
    values = {**{axis: cols["xyz"][:, i] for i, axis in enumerate("xyz")}, **{name: cols[name] for name in required}}
    for name, column in values.items():
        bad = int((~np.isfinite(column)).sum())
        if bad:
            raise GaussianPlyError(f"{p}: property {name!r} is NaN or infinite for {bad} of {n} Gaussians")

    def stack(names: list[str]) -> np.ndarray:
        return np.stack([cols[name].astype(np.float64) for name in names], axis=1) if names else np.zeros((n, 0))

    k = num_rest // 3 + 1
    dc = stack([f"f_dc_{c}" for c in range(3)])
    rest = stack([f"f_rest_{i}" for i in range(num_rest)]).reshape(n, 3, k - 1).transpose(0, 2, 1)
    sh = np.concatenate([dc[:, None, :], rest], axis=1)
    quats = stack([f"rot_{i}" for i in range(4)])
    norms = np.linalg.norm(quats, axis=1, keepdims=True)
    if (norms == 0).any():
        raise GaussianPlyError(f"{p}: properties rot_0..rot_3 are all zero (a zero-length rotation quaternion) "
                               f"for {int((norms == 0).sum())} of {n} Gaussians")
    log_scales = stack([f"scale_{i}" for i in range(3)])
    with np.errstate(over="ignore", under="ignore"):
        scales = np.exp(log_scales).astype(np.float32)
    for i in range(3):
        bad = int((~(np.isfinite(scales[:, i]) & (scales[:, i] > 0))).sum())
        if bad:
            raise GaussianPlyError(f"{p}: property 'scale_{i}' (a log scale) gives a scale of 0 or inf in float32 "
                                   f"for {bad} of {n} Gaussians")
    logits = cols["opacity"].astype(np.float64)

    def tensor(a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))

    return GaussianCloud(
        means=tensor(cols["xyz"]),
        quats=tensor(quats / norms),
        scales=torch.from_numpy(np.ascontiguousarray(scales)),
        opacities=tensor(0.5 * (1.0 + np.tanh(0.5 * logits))),  # sigmoid without exp overflow
        sh=tensor(sh),
    )
