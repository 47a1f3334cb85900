"""LiDAR box geometry (``sparse3d.geometry.boxes``).

Oracles: hand-computed conversions with an axis-swap calibration, camera <-> LiDAR round trips on random boxes
with the published KITTI calibration, points-in-box against a per-point brute force in the box frame and
against the half-spaces of the corner faces, hand cases on faces and rotated boxes, and 2-D boxes against
densely sampled projections.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

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
from sparse3d.io.kitti import KittiCalib

# Published KITTI calibration (2011_09_26): P2, R0_rect, Tr_velo_to_cam.
KITTI_CALIB = KittiCalib(
    P2=np.array([[721.5377, 0.0, 609.5593, 44.85728], [0.0, 721.5377, 172.854, 0.2163791], [0.0, 0.0, 1.0, 0.002745884]]),
    R0_rect=np.array([[0.9999239, 0.00983776, -0.007445048], [-0.009869795, 0.9999421, -0.004278459],
                      [0.007402527, 0.004351614, 0.9999631]]),
    Tr_velo_to_cam=np.array([[0.007533745, -0.9999714, -0.000616602, -0.004069766],
                             [0.01480249, 0.0007280733, -0.9998902, -0.07631618],
                             [0.9998621, 0.00752379, 0.01480755, -0.2717806]]),
)
# Ideal rig: camera at the LiDAR origin, x_cam = -y, y_cam = -z, z_cam = x; focal 100 px, principal point (50, 40).
AXIS_CALIB = KittiCalib(
    P2=np.array([[100.0, 0.0, 50.0, 0.0], [0.0, 100.0, 40.0, 0.0], [0.0, 0.0, 1.0, 0.0]]),
    R0_rect=np.eye(3),
    Tr_velo_to_cam=np.array([[0.0, -1.0, 0.0, 0.0], [0.0, 0.0, -1.0, 0.0], [1.0, 0.0, 0.0, 0.0]]),
)


def _random_boxes(rng: np.random.Generator, m: int) -> np.ndarray:
    centre = rng.uniform([2, -30, -2.5], [70, 30, 1.0], size=(m, 3))
    dims = rng.uniform(0.3, 6.0, size=(m, 3))
    heading = rng.uniform(-np.pi, np.pi, size=(m, 1))
    return np.concatenate([centre, dims, heading], axis=1)


# --------------------------------------------------------------------------------------------- conversions
def test_camera_to_lidar_hand_case() -> None:
    # a car 10 m ahead, 2 m to the right, bottom on the ground 1.7 m below the sensor, facing the camera's +x
    # (ry = 0), i.e. the LiDAR's -y: heading -pi/2
    boxes = camera_to_lidar_boxes(np.array([[2.0, 1.7, 10.0]]), np.array([[1.5, 1.6, 4.0]]), np.array([0.0]), AXIS_CALIB)
    assert boxes.dtype == np.float32 and boxes.shape == (1, 7)
    np.testing.assert_allclose(boxes[0], [10.0, -2.0, -1.7 + 0.75, 4.0, 1.6, 1.5, -np.pi / 2], atol=1e-6)
    # ry turns about the camera's y axis (down): ry = -pi/2 faces +z_cam, the LiDAR's +x, i.e. heading 0
    boxes = camera_to_lidar_boxes(np.array([[0.0, 0.0, 5.0]]), np.ones((1, 3)), np.array([-np.pi / 2]), AXIS_CALIB)
    np.testing.assert_allclose(boxes[0, 6], 0.0, atol=1e-7)
    assert camera_to_lidar_boxes(np.zeros((0, 3)), np.zeros((0, 3)), np.zeros(0), AXIS_CALIB).shape == (0, 7)


def test_camera_lidar_round_trips_with_kitti_calib() -> None:
    rng = np.random.default_rng(0)
    boxes = _random_boxes(rng, 200)
    location, hwl, ry = lidar_to_camera_boxes(boxes, KITTI_CALIB)
    assert location.dtype == np.float64
    back = camera_to_lidar_boxes(location, hwl, ry, KITTI_CALIB, dtype=np.float64)
    np.testing.assert_allclose(back, boxes, rtol=0, atol=1e-9)
    # and the other way round, from camera labels
    loc = rng.uniform([-20, 0.5, 3], [20, 2.5, 70], size=(100, 3))
    dims = rng.uniform(0.5, 5, size=(100, 3))
    rot = rng.uniform(-np.pi, np.pi, size=100)
    lidar = camera_to_lidar_boxes(loc, dims, rot, KITTI_CALIB, dtype=np.float64)
    loc2, dims2, rot2 = lidar_to_camera_boxes(lidar, KITTI_CALIB)
    np.testing.assert_allclose(loc2, loc, atol=1e-9)
    np.testing.assert_array_equal(dims2, dims)
    np.testing.assert_allclose(rot2, rot, atol=1e-12)
    # the bottom centre is the LiDAR centre moved down by dz/2 (the calibration's small rotations do not
    # change that along the rectified camera's vertical: check against the matrices directly)
    bottom = lidar[:, :3] - np.stack([np.zeros(100), np.zeros(100), lidar[:, 5] / 2], axis=1)
    np.testing.assert_allclose(KITTI_CALIB.lidar_to_rect(bottom), loc, atol=1e-9)
    # float32 in, float32 out
    loc32, _, _ = lidar_to_camera_boxes(boxes.astype(np.float32), KITTI_CALIB)
    assert loc32.dtype == np.float32
    with pytest.raises(ValueError, match="boxes"):
        lidar_to_camera_boxes(boxes[:, :6], KITTI_CALIB)


# --------------------------------------------------------------------------------------------- corners
def test_box_corners_hand_cases() -> None:
    corners = box_corners(np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, 0.0]]))[0]
    expected = [[3, 3, 2.5], [3, 1, 2.5], [-1, 1, 2.5], [-1, 3, 2.5], [3, 3, 3.5], [3, 1, 3.5], [-1, 1, 3.5], [-1, 3, 3.5]]
    np.testing.assert_allclose(corners, expected, atol=1e-12)
    # heading pi/2: the length now runs along +y; corner 0 is front (+y) left (-x)
    corners = box_corners(np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, np.pi / 2]]))[0]
    np.testing.assert_allclose(corners[0], [-1, 2, -1], atol=1e-12)
    np.testing.assert_allclose(corners[2], [1, -2, -1], atol=1e-12)
    # every edge of BOX_EDGES has the length of one extent
    box = np.array([[5.0, -3.0, 1.0, 4.2, 1.8, 1.5, 0.7]])
    c = box_corners(box)[0]
    lengths = sorted(round(float(np.linalg.norm(c[a] - c[b])), 9) for a, b in BOX_EDGES)
    assert lengths == [1.5] * 4 + [1.8] * 4 + [4.2] * 4
    assert box_corners(box.astype(np.float32)).dtype == np.float32


# --------------------------------------------------------------------------------------------- points in boxes
def _brute_force_inside(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Per point and box: rotate the offset by -heading with an explicit matrix and compare half-extents."""
    out = np.zeros((len(boxes), len(points)), dtype=bool)
    for m, (cx, cy, cz, dx, dy, dz, h) in enumerate(boxes):
        rot = np.array([[math.cos(h), math.sin(h)], [-math.sin(h), math.cos(h)]])  # world -> box frame
        for n, p in enumerate(points):
            lx, ly = rot @ np.array([p[0] - cx, p[1] - cy])
            out[m, n] = abs(lx) <= dx / 2 and abs(ly) <= dy / 2 and abs(p[2] - cz) <= dz / 2
    return out


def _half_space_inside(points: np.ndarray, boxes: np.ndarray, tol: float = 0.0) -> np.ndarray:
    """A point is inside the convex hull of the 8 corners iff it is on the inner side of all 6 faces."""
    faces = [(0, 1, 2, 3), (4, 5, 6, 7), (0, 1, 5, 4), (1, 2, 6, 5), (2, 3, 7, 6), (3, 0, 4, 7)]
    corners = box_corners(boxes.astype(np.float64))
    out = np.ones((len(boxes), len(points)), dtype=bool)
    for m, c in enumerate(corners):
        centre = c.mean(axis=0)
        for face in faces:
            a, b, d = c[face[0]], c[face[1]], c[face[3]]
            normal = np.cross(b - a, d - a)
            if np.dot(normal, a - centre) < 0:
                normal = -normal
            out[m] &= (points[:, :3] - a) @ normal <= tol * np.linalg.norm(normal)
    return out


def test_points_in_boxes_matches_brute_force_and_half_spaces() -> None:
    rng = np.random.default_rng(1)
    boxes = np.concatenate([rng.uniform([-5, -5, -1], [5, 5, 1], (12, 3)), rng.uniform(0.5, 4, (12, 3)),
                            rng.uniform(-4, 4, (12, 1))], axis=1)
    points = rng.uniform([-8, -8, -3, 0], [8, 8, 3, 1], size=(3000, 4)).astype(np.float32)
    inside = points_in_boxes(points, boxes)
    assert inside.shape == (12, 3000) and inside.dtype == bool
    assert inside.sum() > 100  # the test exercises both outcomes
    np.testing.assert_array_equal(inside, _brute_force_inside(points.astype(np.float64), boxes))
    np.testing.assert_array_equal(inside, _half_space_inside(points.astype(np.float64), boxes, tol=1e-12))
    np.testing.assert_array_equal(count_points_in_boxes(points[:, :3], boxes), inside.sum(axis=1))
    assert count_points_in_boxes(points, boxes).dtype == np.int64
    assert points_in_boxes(points, np.zeros((0, 7))).shape == (0, 3000)
    assert points_in_boxes(np.zeros((0, 3)), boxes).shape == (12, 0)


def test_points_in_boxes_hand_cases() -> None:
    axis = np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, 0.0]])
    pts = np.array([
        [2.0, 0.0, 0.0],        # on the front face: inside (faces included)
        [2.0, 1.0, 1.0],        # on a corner
        [2.0 + 1e-9, 0.0, 0.0],  # just past the front face
        [0.0, 0.0, -1.0],       # on the bottom face
        [0.0, 0.0, -1.0 - 1e-9],
        [1.9, 0.9, 0.9],
    ])
    assert points_in_boxes(pts, axis)[0].tolist() == [True, True, False, True, False, True]
    # rotated 45 degrees: the box's front tip reaches (2 cos 45, 2 sin 45); the axis-aligned point (1.9, 0, 0)
    # is outside although it would be inside the unrotated box
    rotated = np.array([[0.0, 0.0, 0.0, 4.0, 2.0, 2.0, np.pi / 4]])
    s = math.sqrt(0.5)
    pts = np.array([[1.99 * s, 1.99 * s, 0.0], [1.9, 0.0, 0.0], [-0.99 * s, 0.99 * s, 0.0], [-1.01 * s, 1.01 * s, 0.0],
                    [0.0, 0.0, 0.5]])
    assert points_in_boxes(pts, rotated)[0].tolist() == [True, False, True, False, True]
    # heading and heading + 2 pi, and heading + pi (a box is symmetric), give the same membership
    rng = np.random.default_rng(2)
    many = rng.uniform(-3, 3, size=(500, 3))
    base = points_in_boxes(many, rotated)
    for delta in (2 * np.pi, np.pi, -np.pi):
        turned = rotated.copy()
        turned[0, 6] += delta
        np.testing.assert_array_equal(points_in_boxes(many, turned), base)
    with pytest.raises(ValueError, match="points"):
        points_in_boxes(np.zeros((4, 2)), rotated)


# --------------------------------------------------------------------------------------------- image boxes
def _sampled_bbox(box: np.ndarray, calib: KittiCalib, shape: tuple[int, int], near: float = 1e-3) -> np.ndarray | None:
    """Extent of densely sampled surface points of the box that are in front of the camera, clipped."""
    g = np.linspace(-0.5, 0.5, 41)
    u, v = np.meshgrid(g, g)
    u, v = u.ravel(), v.ravel()
    faces = []
    for axis in range(3):
        for sign in (-0.5, 0.5):
            local = np.zeros((u.size, 3))
            others = [a for a in range(3) if a != axis]
            local[:, axis] = sign
            local[:, others[0]] = u
            local[:, others[1]] = v
            faces.append(local)
    local = np.concatenate(faces) * box[3:6]
    c, s = math.cos(box[6]), math.sin(box[6])
    world = np.stack([local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c, local[:, 2]], 1) + box[:3]
    hom = np.concatenate([calib.lidar_to_rect(world), np.ones((len(world), 1))], 1) @ calib.P2.T
    front = hom[:, 2] > near
    if not front.any():
        return None
    uv = hom[front, :2] / hom[front, 2:3]
    lo, hi = uv.min(0), uv.max(0)
    return np.array([np.clip(lo[0], 0, shape[1] - 1), np.clip(lo[1], 0, shape[0] - 1),
                     np.clip(hi[0], 0, shape[1] - 1), np.clip(hi[1], 0, shape[0] - 1)])


def test_boxes_to_image_bbox_in_front_equals_projected_corners() -> None:
    rng = np.random.default_rng(3)
    boxes = np.concatenate([rng.uniform([8, -6, -1.5], [40, 6, -0.5], (20, 3)), rng.uniform(0.5, 4, (20, 3)),
                            rng.uniform(-np.pi, np.pi, (20, 1))], axis=1)
    shape = (375, 1242)
    bbox = boxes_to_image_bbox(boxes, KITTI_CALIB, shape)
    assert bbox.dtype == np.float32 and bbox.shape == (20, 4)
    for i, box in enumerate(boxes):
        rect = KITTI_CALIB.lidar_to_rect(box_corners(box[None])[0])
        uv, depth = KITTI_CALIB.rect_to_image(rect)
        assert (depth > 0).all()
        expected = [max(uv[:, 0].min(), 0), max(uv[:, 1].min(), 0), min(uv[:, 0].max(), 1241), min(uv[:, 1].max(), 374)]
        np.testing.assert_allclose(bbox[i], expected, rtol=1e-6, atol=1e-3)
        np.testing.assert_allclose(bbox[i], _sampled_bbox(box, KITTI_CALIB, shape), atol=1e-2)


def test_boxes_to_image_bbox_behind_and_outside_the_camera() -> None:
    shape = (80, 100)
    boxes = np.array([
        [1.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0],    # straddles the camera plane (x from -1 to 3)
        [0.5, 1.0, 0.3, 3.0, 1.0, 0.5, 0.4],    # straddles it, off-centre and turned
        [-10.0, 0.0, 0.0, 4.0, 2.0, 1.0, 0.0],  # wholly behind
        [10.0, 40.0, 0.0, 2.0, 2.0, 1.0, 0.0],  # in front but far to the left of the image
    ])
    bbox = boxes_to_image_bbox(boxes, AXIS_CALIB, shape)
    # the first box fills the whole image: its visible part spans the view from edge to edge
    np.testing.assert_allclose(bbox[0], [0, 0, 99, 79])
    np.testing.assert_allclose(bbox[1], _sampled_bbox(boxes[1], AXIS_CALIB, shape), atol=0.5)
    np.testing.assert_array_equal(bbox[2], [0, 0, 0, 0])
    assert bbox[3, 0] == bbox[3, 2] == 0.0  # clipped to the left border: zero width
    assert boxes_to_image_bbox(np.zeros((0, 7)), AXIS_CALIB, shape).shape == (0, 4)


# --------------------------------------------------------------------------------------------- alpha
def test_observation_angle_hand_cases() -> None:
    # straight ahead (x_cam = 0): alpha = ry; heading 0 (LiDAR +x) is ry = -pi/2
    boxes = np.array([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]])
    np.testing.assert_allclose(observation_angle(boxes, AXIS_CALIB), [-np.pi / 2], atol=1e-6)
    # 45 degrees to the right (x_cam = z_cam), heading -pi/2 (ry = 0): alpha = -pi/4
    boxes = np.array([[10.0, -10.0, 0.0, 4.0, 2.0, 1.5, -np.pi / 2]])
    np.testing.assert_allclose(observation_angle(boxes, AXIS_CALIB), [-np.pi / 4], atol=1e-6)
    # wrapping: heading pi (ry = pi/2) to the left at 45 degrees (atan2 = -pi/4) -> 3 pi / 4
    boxes = np.array([[10.0, 10.0, 0.0, 4.0, 2.0, 1.5, -np.pi]])
    np.testing.assert_allclose(observation_angle(boxes, AXIS_CALIB), [3 * np.pi / 4], atol=1e-6)
    boxes = np.array([[10.0, -10.0, 0.0, 4.0, 2.0, 1.5, np.pi / 2]])  # ry = -pi, minus atan2 pi/4 -> wraps
    np.testing.assert_allclose(observation_angle(boxes, AXIS_CALIB), [3 * np.pi / 4], atol=1e-6)
    rng = np.random.default_rng(4)
    alpha = observation_angle(_random_boxes(rng, 500), KITTI_CALIB)
    assert alpha.dtype == np.float32 and (alpha >= -np.pi - 1e-6).all() and (alpha < np.pi + 1e-6).all()


def test_wrap_angle() -> None:
    np.testing.assert_allclose(wrap_angle([0.0, np.pi, -np.pi, 3 * np.pi, 2 * np.pi + 0.5]), [0, -np.pi, -np.pi, -np.pi, 0.5],
                               atol=1e-12)
