"""Colours of the viewer: fixed colours for boxes and highlights, colour maps for scalar fields, a label palette.

All colours are float32 RGB in [0, 1]. Colour maps use OpenCV's tables (viridis for intensity, turbo for
height, inferno for depth images), so no plotting library is needed.
"""

from __future__ import annotations

import colorsys

import cv2
import numpy as np

__all__ = [
    "COLOR_MODES",
    "GT_BOX_COLOR",
    "PRED_BOX_COLOR",
    "BOUNDARY_COLOR",
    "WIREFRAME_COLOR",
    "NORMAL_COLOR",
    "MESH_COLOR",
    "INPUT_CAMERA_COLOR",
    "TEST_CAMERA_COLOR",
    "OTHER_CAMERA_COLOR",
    "POINT_COLOR",
    "CUBE_COLOR",
    "COLORMAPS",
    "DEPTH_COLORMAP",
    "colormap",
    "depth_colors",
    "label_colors",
    "unit_rgb",
]

COLOR_MODES: tuple[str, ...] = ("auto", "intensity", "height", "label", "rgb")
"""Point colourings: ``auto`` picks rgb, else intensity, else height, whichever the cloud has first."""

GT_BOX_COLOR = (0.0, 0.5, 1.0)
"""Ground-truth boxes and the points inside them (blue, as OpenPCDet draws ground truth)."""
PRED_BOX_COLOR = (0.0, 1.0, 0.0)
"""Predicted boxes and the points inside them (green)."""
BOUNDARY_COLOR = (1.0, 0.0, 1.0)
"""Open-boundary mesh edges (magenta)."""
WIREFRAME_COLOR = (0.1, 0.1, 0.1)
NORMAL_COLOR = (1.0, 0.9, 0.0)
MESH_COLOR = (0.7, 0.7, 0.7)
"""Meshes without colours of their own."""
INPUT_CAMERA_COLOR = (1.0, 0.5, 0.0)
"""Frusta of the views a method is fitted on."""
TEST_CAMERA_COLOR = (0.0, 0.8, 1.0)
"""Frusta of held-out test views."""
OTHER_CAMERA_COLOR = (0.5, 0.5, 0.5)
POINT_COLOR = (0.8, 0.8, 0.8)
CUBE_COLOR = (0.0, 0.8, 0.6)
"""Edges of the active cubes of a SparseFlex grid or field (teal)."""

COLORMAPS: dict[str, int] = {"viridis": cv2.COLORMAP_VIRIDIS, "turbo": cv2.COLORMAP_TURBO,
                              "inferno": cv2.COLORMAP_INFERNO}
DEPTH_COLORMAP = "inferno"
"""The fixed map of depth images: near is bright (yellow-white), far is dark (purple), empty pixels black."""


def colormap(
    values: np.ndarray, name: str = "viridis", lo: float | None = None, hi: float | None = None,
    quantile: float = 0.01,
) -> np.ndarray:
    """(N, 3) colours of scalar ``values`` through the named map.

    Values are scaled linearly from ``lo`` to ``hi`` (default: their ``quantile`` and ``1 - quantile``
    quantiles, so a few extreme values do not flatten the rest) and clipped; a constant field maps to the
    middle of the map; non-finite values are drawn grey.
    """
    if name not in COLORMAPS:
        raise ValueError(f"unknown colour map {name!r}; one of {sorted(COLORMAPS)}")
    v = np.asarray(values, dtype=np.float64).reshape(-1)
    finite = np.isfinite(v)
    if lo is None or hi is None:
        qlo, qhi = np.quantile(v[finite], [quantile, 1.0 - quantile]) if finite.any() else (0.0, 1.0)
        lo = qlo if lo is None else lo
        hi = qhi if hi is None else hi
    span = hi - lo
    scaled = np.full(v.shape, 0.5) if span <= 0 else (np.where(finite, v, lo) - lo) / span
    index = np.clip(np.rint(scaled * 255.0), 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(index.reshape(-1, 1), COLORMAPS[name]).reshape(-1, 3)
    rgb = bgr[:, ::-1].astype(np.float32) / 255.0
    rgb[~finite] = 0.5
    return rgb


def depth_colors(depth: np.ndarray, lo: float | None = None, hi: float | None = None) -> np.ndarray:
    """(H, W, 3) float32 RGB image of a depth map (H, W) through :data:`DEPTH_COLORMAP`, near = bright.

    Pixels with a positive finite depth are scaled linearly so that ``lo`` (default: their minimum) gets the map's
    brightest entry and ``hi`` (default: their maximum) its darkest, clipped outside; pixels whose depth is 0,
    negative or not finite (nothing there) are black. A map whose valid depths are all equal is drawn brightest.
    """
    d = np.asarray(depth, dtype=np.float64)
    if d.ndim != 2:
        raise ValueError(f"depth must have shape (H, W), got {d.shape}")
    valid = np.isfinite(d) & (d > 0)
    out = np.zeros((*d.shape, 3), np.float32)
    if not valid.any():
        return out
    near = float(d[valid].min()) if lo is None else float(lo)
    far = float(d[valid].max()) if hi is None else float(hi)
    span = far - near
    closeness = np.ones(int(valid.sum())) if span <= 0 else (far - d[valid]) / span
    index = np.clip(np.rint(closeness * 255.0), 0, 255).astype(np.uint8)
    bgr = cv2.applyColorMap(index.reshape(-1, 1), COLORMAPS[DEPTH_COLORMAP]).reshape(-1, 3)
    out[valid] = bgr[:, ::-1].astype(np.float32) / 255.0
    return out


def label_colors(labels: np.ndarray) -> np.ndarray:
    """(N, 3) colours of integer labels: label 0 (unlabelled) grey, every other label a fixed hue (golden-ratio
    steps, so neighbouring ids differ strongly); the same label always gets the same colour."""
    lab = np.asarray(labels).reshape(-1)
    if lab.size and not np.issubdtype(lab.dtype, np.integer):
        if not np.all(np.isfinite(lab)) or not np.all(lab == np.round(lab)):
            raise ValueError("labels must be integers")
        lab = lab.astype(np.int64)
    unique, inverse = np.unique(lab, return_inverse=True)
    table = np.empty((len(unique), 3), np.float32)
    for i, value in enumerate(unique.tolist()):
        if value == 0:
            table[i] = 0.5
        else:
            hue = (int(value) * 0.6180339887498949) % 1.0
            table[i] = colorsys.hsv_to_rgb(hue, 0.85, 0.95)
    return table[inverse.reshape(-1)]


def unit_rgb(colors: np.ndarray) -> np.ndarray:
    """(N, 3) float32 RGB in [0, 1] from uint8 (0..255), or floats that are either in [0, 1] or in [0, 255]."""
    arr = np.asarray(colors)
    if arr.ndim != 2 or arr.shape[1] < 3:
        raise ValueError(f"colours must have shape (N, 3+), got {arr.shape}")
    arr = arr[:, :3]
    if np.issubdtype(arr.dtype, np.integer) or (arr.size and np.nanmax(arr) > 1.0):
        return np.clip(arr.astype(np.float32) / 255.0, 0.0, 1.0)
    return np.clip(np.nan_to_num(arr.astype(np.float32)), 0.0, 1.0)
