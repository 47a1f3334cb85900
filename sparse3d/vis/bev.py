"""Bird's-eye-view rasters of a LiDAR frame with boxes, in numpy and OpenCV (no Open3D, no OpenGL).

What training logs to TensorBoard (ground truth against detections) and what a quick look at a frame needs
without a renderer. Layout: +x (forward) points up the image and +y (left) to the left, so the picture is the
scene seen from above with the sensor looking up the page; pixel ``(row, col)`` covers

    x in [x_max - (row + 1) * resolution, x_max - row * resolution)
    y in [y_max - (col + 1) * resolution, y_max - col * resolution)

of a :class:`BevGrid`. Points are single pixels coloured by height (turbo) or intensity (viridis); boxes are
their bottom rectangles in BEV with a heading tick from the centre to the middle of the front edge, ground
truth in :data:`~sparse3d.vis.colors.GT_BOX_COLOR` and predictions in
:data:`~sparse3d.vis.colors.PRED_BOX_COLOR`, drawn over the points (predictions last).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from sparse3d.geometry.boxes import box_corners
from sparse3d.vis import colors as C

__all__ = ["BEV_COLOR_MODES", "BevGrid", "bev_image", "bev_point_colors"]

BEV_COLOR_MODES: tuple[str, ...] = ("height", "intensity")
_MAX_PIXELS = 8192


@dataclass(frozen=True)
class BevGrid:
    """The ground rectangle a BEV image covers and its pixel size (metres).

    Attributes:
        x_range: (x_min, x_max), shown bottom to top.
        y_range: (y_min, y_max), shown right to left.
        resolution: metres per pixel.
    """

    x_range: tuple[float, float] = (0.0, 70.4)
    y_range: tuple[float, float] = (-40.0, 40.0)
    resolution: float = 0.2

    def __post_init__(self) -> None:
        for name in ("x_range", "y_range"):
            lo, hi = (float(v) for v in getattr(self, name))
            if not (math.isfinite(lo) and math.isfinite(hi) and hi > lo):
                raise ValueError(f"BevGrid.{name} must be finite (min, max) with max > min, got {(lo, hi)}")
            object.__setattr__(self, name, (lo, hi))
        if not (math.isfinite(self.resolution) and self.resolution > 0):
            raise ValueError(f"BevGrid.resolution must be positive, got {self.resolution}")
        h, w = self.shape
        if h > _MAX_PIXELS or w > _MAX_PIXELS:
            raise ValueError(f"BevGrid gives a {h}x{w} image; at most {_MAX_PIXELS} pixels a side (coarser "
                             "resolution or a smaller range)")

    @classmethod
    def from_point_range(cls, point_range: Sequence[float], resolution: float = 0.2) -> BevGrid:
        """The grid of a detector's ``(x_min, y_min, z_min, x_max, y_max, z_max)`` point range."""
        r = [float(v) for v in point_range]
        if len(r) != 6:
            raise ValueError(f"point_range must have 6 values (x_min, y_min, z_min, x_max, y_max, z_max), got {r}")
        return cls((r[0], r[3]), (r[1], r[4]), resolution)

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width) in pixels (the ranges rounded up to whole pixels)."""
        h = math.ceil((self.x_range[1] - self.x_range[0]) / self.resolution - 1e-9)
        w = math.ceil((self.y_range[1] - self.y_range[0]) / self.resolution - 1e-9)
        return max(h, 1), max(w, 1)

    def to_pixel(self, xy: np.ndarray) -> np.ndarray:
        """(N, 2) continuous pixel coordinates ``(col, row)`` (OpenCV's x, y) of (N, 2+) LiDAR ``(x, y)``;
        pixel ``(c, r)`` spans ``[c, c + 1) x [r, r + 1)``."""
        p = np.asarray(xy, dtype=np.float64)
        if p.ndim != 2 or p.shape[1] < 2:
            raise ValueError(f"xy must have shape (N, 2+), got {p.shape}")
        col = (self.y_range[1] - p[:, 1]) / self.resolution
        row = (self.x_range[1] - p[:, 0]) / self.resolution
        return np.stack([col, row], axis=1)


def bev_point_colors(points: np.ndarray, mode: str = "height") -> np.ndarray:
    """(N, 3) float32 colours of (N, 3+) points: ``height`` turbo over z, ``intensity`` viridis over column 3
    (both over the 1..99 % quantiles, :func:`~sparse3d.vis.colors.colormap`)."""
    pts = np.asarray(points)
    if mode not in BEV_COLOR_MODES:
        raise ValueError(f"mode must be one of {BEV_COLOR_MODES}, got {mode!r}")
    if mode == "intensity":
        if pts.shape[1] < 4:
            raise ValueError(f"intensity colouring needs (N, 4+) points, got {pts.shape}")
        return C.colormap(pts[:, 3], "viridis")
    return C.colormap(pts[:, 2], "turbo")


def _to_uint8(color: Sequence[float]) -> tuple[int, int, int]:
    return tuple(int(round(255 * float(c))) for c in color)  # type: ignore[return-value]


def _draw_boxes(image: np.ndarray, grid: BevGrid, boxes: np.ndarray, color: Sequence[float], thickness: int) -> None:
    b = np.asarray(boxes, dtype=np.float64).reshape(-1, 7)
    if not len(b):
        return
    rgb = _to_uint8(color)
    shift = 4  # sub-pixel precision of the OpenCV drawing calls
    scale = float(1 << shift)
    bottom = box_corners(b)[:, :4, :2]  # (M, 4, 2): corners 0-1 are the front edge
    for m in range(len(b)):
        # pixel (c, r) covers [c, c + 1): OpenCV draws integer coordinates at pixel centres, hence the -0.5
        poly = np.round((grid.to_pixel(bottom[m]) - 0.5) * scale).astype(np.int32)
        cv2.polylines(image, [poly], isClosed=True, color=rgb, thickness=thickness, lineType=cv2.LINE_8,
                      shift=shift)
        ends = grid.to_pixel(np.stack([b[m, :2], bottom[m, :2].mean(axis=0)]))
        a, z = np.round((ends - 0.5) * scale).astype(np.int32)
        cv2.line(image, (int(a[0]), int(a[1])), (int(z[0]), int(z[1])), rgb, thickness, cv2.LINE_8, shift)


def bev_image(
    points: np.ndarray | None = None,
    gt_boxes: np.ndarray | None = None,
    pred_boxes: np.ndarray | None = None,
    *,
    grid: BevGrid | None = None,
    color: str = "height",
    thickness: int = 1,
    background: Sequence[float] = (0.0, 0.0, 0.0),
) -> np.ndarray:
    """An (H, W, 3) uint8 RGB BEV picture (layout in the module docstring) of ``points`` (N, 3+) and LiDAR
    boxes (M, 7) ``(x, y, z, dx, dy, dz, heading)``; any of them may be None or empty. Points outside the grid
    are dropped; boxes are clipped at the image border."""
    g = grid or BevGrid()
    if thickness < 1:
        raise ValueError(f"thickness must be >= 1, got {thickness}")
    h, w = g.shape
    image = np.empty((h, w, 3), np.uint8)
    image[:] = _to_uint8(background)
    if points is not None and len(points):
        pts = np.asarray(points)
        if pts.ndim != 2 or pts.shape[1] < 3:
            raise ValueError(f"points must have shape (N, 3+), got {pts.shape}")
        pts = pts[np.isfinite(pts[:, :3]).all(axis=1)]
        pix = np.floor(g.to_pixel(pts[:, :2])).astype(np.int64)
        keep = (pix[:, 0] >= 0) & (pix[:, 0] < w) & (pix[:, 1] >= 0) & (pix[:, 1] < h)
        if keep.any():
            colors = np.round(bev_point_colors(pts[keep], color) * 255).astype(np.uint8)
            # draw the highest points last so that, per pixel, the top of the column shows
            order = np.argsort(pts[keep][:, 2], kind="stable")
            image[pix[keep][order, 1], pix[keep][order, 0]] = colors[order]
    for boxes, box_color in ((gt_boxes, C.GT_BOX_COLOR), (pred_boxes, C.PRED_BOX_COLOR)):
        if boxes is not None:
            arr = np.asarray(boxes, dtype=np.float64)
            if arr.size and (arr.ndim != 2 or arr.shape[1] != 7):
                raise ValueError(f"boxes must have shape (M, 7), got {arr.shape}")
            _draw_boxes(image, g, arr.reshape(-1, 7), box_color, thickness)
    return image
