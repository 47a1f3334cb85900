"""The arguments every Gaussian rasterizer in sparse3d takes: those of gsplat 1.5.3's ``rasterization``.

The public front-end (:func:`sparse3d.render.rasterize_gaussians`), its float64 oracle
(:func:`sparse3d.kernels.reference.gaussian_raster.rasterize_gaussians`) and the benchmark's pure-torch peer
(:func:`sparse3d.bench.torch_tiles.rasterize_torch_tiles`) accept the same arguments, in the same positions,
with the same defaults, so that any one of them can stand in for another in a test or a benchmark. The set is
written once, as :class:`RasterizeArgs`; :func:`takes_rasterize_args` gives a function that signature. Names,
order and defaults follow ``gsplat.rasterization`` (gsplat, Ye et al. 2024) up to ``sh_degree``; after it
come the options gsplat also has, by keyword. This module imports only torch, so that the oracle may use it.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any, NamedTuple, TypeVar, get_type_hints

import torch

R = TypeVar("R")


class RasterizeArgs(NamedTuple):
    """Scene, cameras and options of one rasterization call, in the public positional order."""

    means: torch.Tensor
    """(N, 3) world-space centres."""
    quats: torch.Tensor
    """(N, 4) rotations as wxyz quaternions of any norm."""
    scales: torch.Tensor
    """(N, 3) activated (positive) scales."""
    opacities: torch.Tensor
    """(N,) activated opacities in [0, 1]."""
    colors: torch.Tensor
    """(N, D) post-activation colours or features, or (N, K, 3) SH coefficients when ``sh_degree`` is set."""
    viewmats: torch.Tensor
    """(C, 4, 4) world-to-camera transforms, OpenCV axes."""
    Ks: torch.Tensor
    """(C, 3, 3) pinhole intrinsics."""
    width: int
    height: int
    near_plane: float = 0.01
    """Gaussians with camera depth outside [near_plane, far_plane] are culled."""
    far_plane: float = 1e10
    radius_clip: float = 0.0
    """Gaussians whose screen radii are both <= this (pixels) are culled."""
    eps2d: float = 0.3
    """Added to the diagonal of every screen-space covariance (a low-pass filter)."""
    sh_degree: int | None = None
    """None: ``colors`` are the colours; 0..3: ``colors`` are SH coefficients of bands 0..sh_degree."""
    backgrounds: torch.Tensor | None = None
    """(C, D) colour behind the Gaussians (weighted by the final transmittance), or None for black."""
    render_mode: str = "RGB"
    """"RGB", "D" (accumulated depth), "ED" (expected depth, D / alpha), "RGB+D" or "RGB+ED"."""
    rasterize_mode: str = "classic"
    """"classic", or "antialiased": opacity x sqrt(det(Sigma2D) / det(Sigma2D + eps2d I)) (Mip-Splatting)."""
    tile_size: int = 16
    """Side of the square screen tiles, in pixels."""


_FIELD_TYPES = get_type_hints(RasterizeArgs)
_FIELD_PARAMETERS = tuple(
    inspect.Parameter(
        name,
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        default=RasterizeArgs._field_defaults.get(name, inspect.Parameter.empty),
        annotation=_FIELD_TYPES[name],
    )
    for name in RasterizeArgs._fields
)


def takes_rasterize_args(fn: Callable[..., R]) -> Callable[..., R]:
    """Turn ``fn(args: RasterizeArgs, *extra)`` into a function with the public rasterizer signature.

    The result takes :class:`RasterizeArgs`' fields (positionally or by keyword, with their defaults) followed
    by ``fn``'s own parameters after the first, binds a call exactly as Python would bind that signature
    (``TypeError`` on a missing, unknown or repeated argument), and calls ``fn`` with the bound
    :class:`RasterizeArgs` and the extras. ``inspect.signature`` reports the full signature.
    """
    own = inspect.signature(fn, eval_str=True)
    extra = list(own.parameters.values())[1:]
    signature = inspect.Signature([*_FIELD_PARAMETERS, *extra], return_annotation=own.return_annotation)
    n_fields = len(_FIELD_PARAMETERS)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> R:
        bound = signature.bind(*args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.values())
        return fn(RasterizeArgs(*values[:n_fields]), *values[n_fields:])

    wrapper.__signature__ = signature  # type: ignore[attr-defined]
    return wrapper
