"""Backend selection for kernels that have an optional faster third-party implementation.

Our Warp kernels run everywhere (CPU and CUDA). gsplat's CUDA rasterizer is used only when it can run (a CUDA
tensor and an importable ``gsplat``) and the caller did not force ``backend="warp"``; asking for it explicitly
where it cannot run is an error rather than a silent fallback, so benchmarks never measure the wrong thing.
"""

from __future__ import annotations

import functools
import importlib

import torch

RASTER_BACKENDS = ("auto", "warp", "gsplat")


@functools.cache
def module_importable(name: str) -> bool:
    """True when ``import name`` succeeds (any exception, e.g. a CUDA extension failing to load, counts as no)."""
    try:
        importlib.import_module(name)
    except Exception:
        return False
    return True


def select_raster_backend(backend: str, device: torch.device) -> str:
    """Resolve ``backend`` ("auto" | "warp" | "gsplat") for tensors on ``device`` to "warp" or "gsplat"."""
    if backend not in RASTER_BACKENDS:
        raise ValueError(f"backend must be one of {RASTER_BACKENDS}, got {backend!r}")
    if backend == "warp":
        return "warp"
    on_cuda = torch.device(device).type == "cuda" and torch.cuda.is_available()
    if backend == "gsplat":
        if not on_cuda:
            raise ValueError(
                f"backend='gsplat' needs CUDA tensors and a CUDA device (got device {device}, "
                f"torch.cuda.is_available()={torch.cuda.is_available()}); use backend='warp' or 'auto'"
            )
        if not module_importable("gsplat"):
            raise ValueError("backend='gsplat' but gsplat is not importable; pip install gsplat or use 'warp'")
        return "gsplat"
    return "gsplat" if on_cuda and module_importable("gsplat") else "warp"
