"""Geometry in numpy at the IO boundary: LiDAR boxes, their KITTI camera-frame form, corners, point membership
and image projections (:mod:`sparse3d.geometry.boxes`)."""

from __future__ import annotations

from sparse3d.geometry.boxes import (
    BOX_EDGES,
    box_corners,
    boxes_to_image_bbox,
    camera_to_lidar_boxes,
    count_points_in_boxes,
    lidar_to_camera_boxes,
    observation_angle,
    points_in_boxes,
    wrap_angle,
)

__all__ = [
    "BOX_EDGES",
    "box_corners",
    "boxes_to_image_bbox",
    "camera_to_lidar_boxes",
    "count_points_in_boxes",
    "lidar_to_camera_boxes",
    "observation_angle",
    "points_in_boxes",
    "wrap_angle",
]
