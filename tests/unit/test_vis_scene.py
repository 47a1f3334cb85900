"""Scene building for sparse3d-vis without a renderer: box geometry, in-box masks, mesh edges, frusta, colours,
view cameras, type detection and the file readers behind ``build_scene`` (KITTI frames, detection results)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sparse3d.cameras import Cameras, look_at
from sparse3d.geometry.boxes import BOX_EDGES, box_corners, points_in_boxes
from sparse3d.io.gaussian_ply import GaussianCloud, save_gaussian_ply
from sparse3d.io.pointcloud import write_kitti_bin, write_ply_points, write_semantic_kitti_label
from sparse3d.models.splatting.gaussians import SH_C0
from sparse3d.utils.errors import UserError
from sparse3d.views import PosedImages
from sparse3d.vis import builders as B
from sparse3d.vis import colors as C
from sparse3d.vis.camera import orbit_cameras, view_camera
from sparse3d.vis.detect import detect_type, resolve_frame_files
from sparse3d.vis.detections import BoxSet, parse_detections_json, read_detections_json
from sparse3d.vis.geometry import (
    boundary_edges,
    cube_mesh,
    ellipsoid_mesh,
    frustum_corners,
    heading_segments,
    mesh_edges,
    uv_sphere,
    vertex_normals,
)
from sparse3d.vis.render import display_available
from sparse3d.vis.scene import CoordinateFrame, Lines, Mesh, Points, Scene, Voxels
from sparse3d.vis.sources import VisOptions, build_scene, load_mesh, load_points

# ------------------------------------------------------------------------------------------------- boxes


def test_box_corners_of_a_known_box() -> None:
    # Centre (1, 2, 3), length 4 along the heading, width 2, height 1, heading 90 degrees: the length runs along +y.
    corners = box_corners(np.array([[1.0, 2.0, 3.0, 4.0, 2.0, 1.0, math.pi / 2]]))[0]
    expected = np.array([
        [0, 4, 2.5], [2, 4, 2.5], [2, 0, 2.5], [0, 0, 2.5],  # bottom: front-left, front-right, back-right, back-left
        [0, 4, 3.5], [2, 4, 3.5], [2, 0, 3.5], [0, 0, 3.5],
    ], dtype=float)
    np.testing.assert_allclose(corners, expected, atol=1e-12)
    edges = np.array(BOX_EDGES)
    lengths = np.linalg.norm(corners[edges[:, 0]] - corners[edges[:, 1]], axis=1)
    assert sorted(np.round(lengths, 9).tolist()) == [1.0] * 4 + [2.0] * 4 + [4.0] * 4


@pytest.mark.parametrize("heading", [0.0, 0.4, math.pi / 2, -2.5, math.pi])
def test_heading_line_runs_from_centre_to_front_face(heading: float) -> None:
    box = np.array([[5.0, -1.0, 0.5, 3.0, 1.5, 1.2, heading]])
    start, end = heading_segments(box)
    np.testing.assert_allclose(start[0], box[0, :3])
    np.testing.assert_allclose(end[0] - start[0], 1.5 * np.array([math.cos(heading), math.sin(heading), 0.0]), atol=1e-12)
    front_face = box_corners(box)[0][[0, 1, 4, 5]].mean(axis=0)
    np.testing.assert_allclose(end[0], front_face, atol=1e-12)
    lines = B.box_lines(box, C.GT_BOX_COLOR)
    assert lines.segments.shape == (13, 2)  # 12 edges + heading
    np.testing.assert_allclose(lines.vertices[lines.segments[-1]], np.stack([start[0], end[0]]), atol=1e-6)
    assert np.allclose(lines.colors, C.GT_BOX_COLOR)


def test_points_in_rotated_box_on_constructed_points() -> None:
    box = np.array([10.0, 0.0, 1.0, 4.0, 2.0, 2.0, math.pi / 4])
    c, s = math.cos(math.pi / 4), math.sin(math.pi / 4)

    def world(lx: float, ly: float, lz: float) -> list[float]:  # box-local -> world
        return [10.0 + c * lx - s * ly, s * lx + c * ly, 1.0 + lz]

    pts = np.array([
        world(0, 0, 0), world(1.9, 0, 0), world(-1.9, 0.9, 0.9), world(2.0, 1.0, 1.0),  # inside (faces included)
        world(2.1, 0, 0), world(0, 1.1, 0), world(0, 0, -1.1),  # just outside along each axis
        [10.0 + 1.9, 1.9, 1.0],  # inside the rotated box's axis-aligned bounds, outside the box
    ])
    mask = points_in_boxes(pts, box[None]).T
    assert mask.shape == (8, 1)
    assert mask[:, 0].tolist() == [True, True, True, True, False, False, False, False]


def test_points_in_boxes_matches_a_half_space_oracle() -> None:
    rng = np.random.default_rng(3)
    boxes = np.concatenate([rng.uniform(-5, 5, (6, 3)), rng.uniform(0.5, 3, (6, 3)), rng.uniform(-4, 4, (6, 1))], axis=1)
    pts = rng.uniform(-7, 7, (4000, 3))
    mask = points_in_boxes(pts, boxes).T
    for j, corners in enumerate(box_corners(boxes)):
        # Inside = on the inner side of the six face planes spanned by the (separately tested) corners.
        faces = [(0, 1, 2), (4, 7, 6), (0, 4, 5), (2, 6, 7), (1, 5, 6), (0, 3, 7)]
        centre = corners.mean(axis=0)
        inside = np.ones(len(pts), bool)
        for a, b, c in faces:
            n = np.cross(corners[b] - corners[a], corners[c] - corners[a])
            n *= np.sign(np.dot(n, corners[a] - centre))  # outward
            inside &= (pts - corners[a]) @ n <= 1e-9
        assert np.array_equal(mask[:, j], inside), j
    assert mask.any() and not mask.all()


def test_highlight_recolours_only_points_inside() -> None:
    pts = Points(np.array([[0.0, 0, 0], [5, 0, 0]]), np.full((2, 3), 0.2))
    out = B.highlight_points_in_boxes(pts, np.array([[0.0, 0, 0, 1, 1, 1, 0]]), C.PRED_BOX_COLOR)
    assert np.allclose(out.colors[0], C.PRED_BOX_COLOR) and np.allclose(out.colors[1], 0.2)
    assert np.allclose(pts.colors, 0.2)  # the input is not modified


def _detections(entries: dict[str, list[tuple[list[float], float]]]) -> dict:
    """``detections.json`` content as sparse3d-detect writes it (FrameDetections.to_json)."""
    from sparse3d.detect import FrameDetections

    return {fid: FrameDetections(fid, np.array([b for b, _ in rows], np.float32).reshape(-1, 7),
                                 np.array([sc for _, sc in rows], np.float32), ["Car"] * len(rows)).to_json()
            for fid, rows in entries.items()}


def test_box_drawables_split_ground_truth_and_predictions(tmp_path: Path) -> None:
    path = tmp_path / "detections.json"
    path.write_text(json.dumps(_detections({"000003": [([3, 0, 0, 1, 1, 1, 0], 0.75)],
                                            "000004": [([5, 0, 0, 1, 1, 1, 0], 0.5), ([6, 0, 0, 1, 1, 1, 0], 0.25)]})))
    pred = read_detections_json(path, "3")  # by number
    assert pred.names == ("Car",) and pred.is_prediction.tolist() == [True] and pred.scores.tolist() == [0.75]
    assert len(read_detections_json(path, "000004").above(0.3)) == 1
    gt = BoxSet(np.zeros((1, 7)) + [0, 0, 0, 1, 1, 1, 0], ("Car",), np.array([np.nan]))
    gt_lines, pred_lines = B.box_drawables(BoxSet.concatenate([gt, pred]))
    assert np.allclose(gt_lines.colors, C.GT_BOX_COLOR) and np.allclose(pred_lines.colors, C.PRED_BOX_COLOR)
    assert np.allclose(pred_lines.vertices[8], [3, 0, 0])  # box centre vertex of the predicted box
    assert BoxSet.concatenate([gt, pred]).above(0.9).is_prediction.tolist() == [False]  # GT kept, low score not
    with pytest.raises(UserError, match="holds 2 frames"):
        read_detections_json(path)
    with pytest.raises(UserError, match="no frame '7'"):
        read_detections_json(path, "7")


@pytest.mark.parametrize("data, message", [
    ([{"box_lidar": []}], "JSON object"),
    ({"0": [{"box_lidar": [0, 0, 0, 1, 1, 1], "name": "Car", "score": 1}]}, "frame 0 entry 0: 'box_lidar' must be 7"),
    ({"0": [{"box_lidar": [0, 0, 0, 1, -1, 1, 0], "name": "Car", "score": 1}]}, "sizes"),
    ({"0": [{"box_lidar": [0, 0, 0, 1, 1, 1, 0], "score": 1}]}, "'name'"),
    ({"0": [{"box_lidar": [0, 0, 0, 1, 1, 1, 0], "name": "Car", "score": "high"}]}, "'score'"),
    ({"0": [{"box_lidar": [0, 0, 0, 1, 1, 1, 0], "name": "Car"}]}, "'score'"),
    ({"0": [{"box_lidar": [0, 0, 0, 1, 1, 1, float("nan")], "name": "Car", "score": 1}]}, "finite"),
])
def test_detections_json_errors_name_frame_entry_and_field(data: object, message: str) -> None:
    with pytest.raises(UserError, match="detections.json") as err:
        parse_detections_json(data, "detections.json", "0")
    assert message in str(err.value)


# -------------------------------------------------------------------------------------------------- meshes


def _open_box() -> tuple[np.ndarray, np.ndarray]:
    vertices, faces = cube_mesh(np.zeros((1, 3)), 1.0)
    return vertices, faces[2:]  # drop the two triangles of the bottom (-z) face


def test_boundary_edges_of_open_and_closed_meshes() -> None:
    vertices, faces = cube_mesh(np.zeros((1, 3)), 1.0)
    edges, counts = mesh_edges(faces)
    assert len(edges) == 18 and set(counts.tolist()) == {2}  # 12 cube edges + 6 face diagonals, all shared
    assert boundary_edges(faces).shape == (0, 2)
    _, open_faces = _open_box()
    rim = boundary_edges(open_faces)
    assert len(rim) == 4
    assert np.allclose(vertices[rim.reshape(-1), 2], -0.5)  # the rim is the missing bottom face's outline
    drawables = B.mesh_drawables(vertices, open_faces, wireframe=True)
    mesh, wire, boundary = drawables
    assert isinstance(mesh, Mesh) and len(wire.segments) == 17 and len(boundary.segments) == 4
    assert np.allclose(boundary.colors, C.BOUNDARY_COLOR)
    assert len(B.mesh_drawables(vertices, faces)) == 1  # closed: no boundary line set


def test_vertex_normals_point_outward() -> None:
    unit, faces = uv_sphere(8, 12)
    normals = vertex_normals(unit, faces)
    assert np.all(np.sum(normals * unit, axis=1) > 0.95)
    vertices, cube_faces = cube_mesh(np.array([[2.0, 0, 0]]), 2.0)
    assert np.all(np.sum(vertex_normals(vertices, cube_faces) * (vertices - [2, 0, 0]), axis=1) > 0)
    mesh_normals = B.mesh_drawables(unit, faces, normals=True)[-1]
    assert mesh_normals.name.endswith("normals") and len(mesh_normals.segments) == len(unit)


def test_ellipsoid_glyph_axes_follow_scale_and_rotation() -> None:
    quat = np.array([[math.cos(math.pi / 4), 0, 0, math.sin(math.pi / 4)]])  # 90 degrees about z
    vertices, faces = ellipsoid_mesh(np.array([[1.0, 2.0, 3.0]]), quat, np.array([[0.5, 0.1, 0.2]]), sigma=2.0)
    offset = vertices - [1, 2, 3]
    # The local x axis (scale 0.5 -> 1.0 at 2 sigma) now runs along world y.
    assert np.isclose(np.abs(offset[:, 1]).max(), 1.0, atol=0.05) and np.abs(offset[:, 0]).max() <= 0.2 + 1e-9
    assert np.isclose(np.abs(offset[:, 2]).max(), 0.4)
    assert boundary_edges(faces).shape == (0, 2)


# -------------------------------------------------------------------------------------------------- cameras


def _ring_cameras(n: int = 4, width: int = 40, height: int = 30) -> Cameras:
    centres = [np.array([3 * math.cos(a), 3 * math.sin(a), 1.0]) for a in np.linspace(0, 2 * math.pi, n, endpoint=False)]
    R = np.stack([look_at(c, [0, 0, 0]) for c in centres])
    t = -np.einsum("nij,nj->ni", R, np.stack(centres))
    K = np.tile(np.array([[30.0, 0, 20], [0, 30, 15], [0, 0, 1]]), (n, 1, 1))
    return Cameras.from_Rt(K, R, t, width, height)


def test_frustum_apex_is_the_camera_centre_and_corners_project_to_image_corners() -> None:
    cams = _ring_cameras()
    lines = B.camera_frusta(cams, depth=0.5)[0]
    apexes = lines.vertices.reshape(len(cams), 6, 3)[:, 0]
    np.testing.assert_allclose(apexes, cams.centers.numpy(), atol=1e-5)
    centres, corners = frustum_corners(cams.K.numpy(), cams.viewmat.numpy(), 40, 30, 0.5)
    uv, depth = cams.project(torch.from_numpy(corners.reshape(-1, 3)).float())
    for i in range(len(cams)):
        np.testing.assert_allclose(uv[i, 4 * i: 4 * i + 4].numpy(), [[0, 0], [40, 0], [40, 30], [0, 30]], atol=1e-3)
        np.testing.assert_allclose(depth[i, 4 * i: 4 * i + 4].numpy(), 0.5, atol=1e-5)
    # Apex-to-corner segments and the up marker (a tip above the top edge, i.e. at negative image v).
    assert len(lines.segments) == 10 * len(cams)
    tip_uv, _ = cams[0].project(torch.from_numpy(lines.vertices[5:6]).float())
    assert tip_uv[0, 0, 1] < 0 and abs(float(tip_uv[0, 0, 0]) - 20) < 1e-3


def test_posed_images_become_frusta_with_their_images() -> None:
    cams = _ring_cameras(2)
    images = torch.zeros(2, 30, 40, 3)
    images[0, ..., 0] = 1.0  # red
    images[1, ..., 2] = 1.0  # blue
    out = B.posed_images_drawables(PosedImages(images, cams, scene="ring"), depth=0.4)
    lines, plane0, plane1 = out
    assert isinstance(lines, Lines) and not plane0.shaded
    assert np.allclose(plane0.vertex_colors, [1, 0, 0]) and np.allclose(plane1.vertex_colors, [0, 0, 1])
    # The planes lie at depth 0.4 in front of their cameras.
    depth = (plane0.vertices - cams.centers[0].numpy()) @ cams.R[0, 2].numpy()
    np.testing.assert_allclose(depth, 0.4, atol=1e-5)
    up, forward = B.camera_up_forward(cams)
    np.testing.assert_allclose(up, [0, 0, 1], atol=0.35)  # cameras look slightly down at the origin
    assert abs(float(np.dot(up, forward))) < 1e-9


def test_view_cameras_frame_the_scene() -> None:
    scene = Scene([Points(np.array([[-10.0, -4, -1], [30, 4, 2], [10, 0, 0.5]]), np.ones((3, 3)))])
    lo, hi = scene.bounds()  # what the views frame
    corners = np.array([[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])])
    for view in ("bev", "front", "iso"):
        cam = view_camera(scene, view, 320, 240)
        uv, depth = cam.project(corners)
        assert (depth > 0).all() and (uv >= 0).all() and (uv[:, 0] <= 320).all() and (uv[:, 1] <= 240).all(), view
        edges = [np.isclose(uv[:, 0], x, atol=0.5) for x in (8, 312)] + [np.isclose(uv[:, 1], y, atol=0.5) for y in (6, 234)]
        touches = np.any(edges)
        assert touches, view  # tight: the bounds reach the 95 % margin on one axis
    bev = view_camera(scene, "bev", 320, 240)
    (centre_uv, ahead_uv, left_uv), _ = bev.project(np.array([[10.0, 0, 0.5], [20, 0, 0.5], [10, 2, 0.5]]))
    np.testing.assert_allclose(centre_uv, [160, 120], atol=1e-6)
    assert ahead_uv[1] < centre_uv[1] and abs(ahead_uv[0] - 160) < 1e-6  # +x is up in the image
    assert left_uv[0] < centre_uv[0]  # +y (LiDAR left) is left
    front = view_camera(scene, "front", 320, 240)
    assert np.allclose(front.extrinsic[2, :3], [1, 0, 0])  # looking along +x


def test_orbit_turns_around_the_up_axis() -> None:
    scene = Scene([Points(np.array([[-1.0, -1, -1], [1, 1, 1]]), np.ones((2, 3)))])
    cams = orbit_cameras(scene, 8, 64, 48)
    iso = view_camera(scene, "iso", 64, 48)
    np.testing.assert_allclose(cams[0].extrinsic[:3, :3], iso.extrinsic[:3, :3], atol=1e-12)  # same direction
    assert np.linalg.norm(cams[0].center) >= np.linalg.norm(iso.center) - 1e-9  # no closer than the still view
    centres = np.stack([c.center for c in cams])
    np.testing.assert_allclose(np.linalg.norm(centres[:, :2], axis=1), np.linalg.norm(centres[0, :2]), rtol=1e-9)
    np.testing.assert_allclose(centres[:, 2], centres[0, 2])
    angles = np.unwrap(np.arctan2(centres[:, 1], centres[:, 0]))
    np.testing.assert_allclose(np.diff(angles), -2 * math.pi / 8, atol=1e-9)  # clockwise seen from above
    corners = np.array([[x, y, z] for x in (-1, 1) for y in (-1, 1) for z in (-1, 1)], float)
    for cam in cams:  # every frame keeps the whole scene in view
        uv, depth = cam.project(corners)
        assert (depth > 0).all() and (uv >= 0).all() and (uv[:, 0] <= 64).all() and (uv[:, 1] <= 48).all()


# -------------------------------------------------------------------------------------------------- colours


def test_colormap_scales_between_quantiles_and_marks_bad_values() -> None:
    values = np.array([0.0, 0.5, 1.0, np.nan])
    colors = C.colormap(values, "viridis", lo=0.0, hi=1.0)
    table = cv2.applyColorMap(np.array([[0], [128], [255]], np.uint8), cv2.COLORMAP_VIRIDIS)[:, 0, ::-1] / 255.0
    np.testing.assert_allclose(colors[:3], table, atol=1e-6)
    assert np.allclose(colors[3], 0.5)
    constant = C.colormap(np.full(5, 7.0), "turbo")
    assert np.allclose(constant, constant[0])
    # Default range: 1 %/99 % quantiles, so one huge outlier does not flatten the rest.
    spread = C.colormap(np.concatenate([np.linspace(0, 1, 1000), [1e6]]), "viridis")
    assert len({tuple(c) for c in np.round(spread[:1000], 3)}) > 100


def test_label_palette_is_stable_and_distinct() -> None:
    labels = np.array([0, 1, 2, 1, 40, 0])
    colors = C.label_colors(labels)
    assert np.allclose(colors[0], 0.5) and np.allclose(colors[0], colors[5]) and np.allclose(colors[1], colors[3])
    palette = C.label_colors(np.arange(1, 21))
    gaps = np.linalg.norm(palette[:, None] - palette[None], axis=-1) + np.eye(20)
    assert gaps.min() > 0.05
    np.testing.assert_allclose(C.label_colors(np.array([40]))[0], colors[4])


def test_point_colour_modes() -> None:
    data = B.PointData(np.array([[0.0, 0, 0], [0, 0, 1], [0, 0, 2]]), intensity=np.array([0.0, 0.5, 1.0]),
                       rgb=np.array([[255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8), source="scan.bin")
    np.testing.assert_allclose(B.point_colors(data, "rgb"), np.eye(3))
    np.testing.assert_allclose(B.point_colors(data, "auto"), np.eye(3))  # rgb first
    np.testing.assert_allclose(B.point_colors(data, "intensity"), C.colormap(data.intensity, "viridis"))
    height = B.point_colors(data, "height")
    turbo = cv2.applyColorMap(np.array([[0], [255]], np.uint8), cv2.COLORMAP_TURBO)[:, 0, ::-1] / 255.0
    np.testing.assert_allclose(height[[0, 2]], turbo, atol=1e-6)  # lowest and highest point at the map's ends
    with pytest.raises(UserError, match=r"scan.bin: --color label: .*no labels"):
        B.point_colors(data, "label")


def test_gaussian_dc_colours_and_glyph_selection() -> None:
    sh = torch.zeros(3, 1, 3)
    sh[:, 0] = torch.tensor([[1.0, 0.0, -1.0], [5.0, 5.0, 5.0], [0.0, 0.0, 0.0]])
    cloud = GaussianCloud(torch.tensor([[0.0, 0, 0], [5, 0, 0], [10, 0, 0]]), torch.tensor([[1.0, 0, 0, 0]] * 3),
                          torch.full((3, 3), 0.1), torch.tensor([0.2, 0.9, 0.5]), sh)
    colors = B.gaussian_colors(cloud)
    np.testing.assert_allclose(colors[0], [0.5 + SH_C0, 0.5, 0.5 - SH_C0], atol=1e-6)
    np.testing.assert_allclose(colors[1], 1.0)  # clipped
    glyphs = B.gaussian_glyphs(cloud, 2)
    per = len(glyphs.vertices) // 2
    np.testing.assert_allclose(glyphs.vertices[:per].mean(axis=0), [5, 0, 0], atol=1e-6)  # most opaque first
    np.testing.assert_allclose(glyphs.vertices[per:].mean(axis=0), [10, 0, 0], atol=1e-6)
    np.testing.assert_allclose(glyphs.vertex_colors[per:], 0.5)


def test_voxels_from_points_pool_colours() -> None:
    pts = Points(np.array([[0.1, 0.1, 0.1], [0.2, 0.2, 0.2], [1.5, 0.1, 0.1]]),
                 np.array([[1.0, 0, 0], [0, 0, 1.0], [0, 1.0, 0]]), name="p")
    vox = B.voxelize_points(pts, 1.0)
    assert isinstance(vox, Voxels) and len(vox.centers) == 2
    order = np.argsort(vox.centers[:, 0])
    np.testing.assert_allclose(vox.centers[order], [[0.6, 0.6, 0.6], [1.6, 0.6, 0.6]], atol=1e-6)
    np.testing.assert_allclose(vox.colors[order], [[0.5, 0, 0.5], [0, 1, 0]], atol=1e-6)
    mesh = vox.to_mesh()
    assert mesh.faces.shape == (24, 3) and boundary_edges(mesh.faces).shape == (0, 2)


def test_scene_bounds_ignore_frames_and_trim_point_outliers() -> None:
    rng = np.random.default_rng(0)
    pts = rng.uniform(-1, 1, (1000, 3))
    pts[0] = [1000, 0, 0]
    scene = Scene([Points(pts, np.ones((1000, 3))), CoordinateFrame(np.array([50.0, 50, 50]), 1.0)])
    lo, hi = scene.bounds()
    assert hi[0] < 2 and hi[1] < 2 and lo[2] > -2
    with_mesh = Scene([Mesh(np.array([[0, 0, 0], [5, 0, 0], [0, 5, 0]]), np.array([[0, 1, 2]]), np.ones((3, 3)))])
    np.testing.assert_allclose(with_mesh.bounds()[1], [5, 5, 0])


# ------------------------------------------------------------------------------------- detection and files


def _gaussians(n: int = 4) -> GaussianCloud:
    return GaussianCloud(torch.randn(n, 3), torch.tensor([[1.0, 0, 0, 0]]).repeat(n, 1), torch.full((n, 3), 0.05),
                         torch.full((n,), 0.5), torch.zeros(n, 1, 3))


def test_type_detection_from_content(tmp_path: Path) -> None:
    trimesh = pytest.importorskip("trimesh")
    write_kitti_bin(tmp_path / "a.bin", np.zeros((4, 4), np.float32))
    np.save(tmp_path / "a.npy", np.zeros((4, 3), np.float32))
    write_ply_points(tmp_path / "cloud.ply", np.zeros((4, 3), np.float32))
    save_gaussian_ply(tmp_path / "splat.ply", _gaussians())
    box = trimesh.creation.box()
    for ext in ("ply", "obj", "glb", "off", "stl"):
        box.export(tmp_path / f"box.{ext}")
    (tmp_path / "detections.json").write_text(json.dumps(_detections({"a": [([0, 0, 0, 1, 1, 1, 0], 0.5)]})))
    (tmp_path / "result.txt").write_text("Car 0 0 0 1 2 3 4 1.5 1.6 3.9 1 2 10 0.1 0.9\n")
    (tmp_path / "mesh_without_extension").write_bytes((tmp_path / "box.obj").read_bytes())
    expected = {"a.bin": "points", "a.npy": "points", "cloud.ply": "points", "splat.ply": "gaussians",
                "box.ply": "mesh", "box.obj": "mesh", "box.glb": "mesh", "box.off": "mesh", "box.stl": "mesh",
                "detections.json": "detections", "result.txt": "detections", "mesh_without_extension": "mesh"}
    for name, kind in expected.items():
        assert detect_type(tmp_path / name) == kind, name
    (tmp_path / "renamed.dat").write_bytes((tmp_path / "splat.ply").read_bytes())
    assert detect_type(tmp_path / "renamed.dat") == "gaussians"  # content, not the extension
    (tmp_path / "bad.bin").write_bytes(b"\0" * 17)
    (tmp_path / "noise.xyz").write_bytes(b"\x01\x02 not a format")
    (tmp_path / "transforms.json").write_text(json.dumps({"frames": []}))
    (tmp_path / "old_boxes.json").write_text(json.dumps([{"box": [0, 0, 0, 1, 1, 1, 0], "name": "Car"}]))
    (tmp_path / "calib.txt").write_text("P0: " + " ".join(["1"] * 12) + "\n")
    for name, message in (("bad.bin", "16 bytes"), ("noise.xyz", "unrecognised"), ("transforms.json", "not supported"),
                          ("old_boxes.json", "not a detections file"), ("calib.txt", "unrecognised")):
        with pytest.raises(UserError, match=message):
            detect_type(tmp_path / name)


def test_frame_folders_resolve_by_id(tmp_path: Path) -> None:
    for i in (11, 12):
        write_kitti_bin(tmp_path / f"{i:06d}.bin", np.zeros((2, 4), np.float32))
    np.save(tmp_path / "000012.npy", np.zeros((2, 3), np.float32))
    assert [p.name for p in resolve_frame_files(tmp_path, "12")] == ["000012.bin", "000012.npy"]
    with pytest.raises(UserError, match="holds 2 frames .*--frame"):
        resolve_frame_files(tmp_path, None)
    with pytest.raises(UserError, match="--frame: no frame '7'"):
        resolve_frame_files(tmp_path, "7")


def test_point_files_carry_their_fields(tmp_path: Path) -> None:
    seq = tmp_path / "sequences" / "00"
    scan = np.array([[1, 2, 3, 0.25], [4, 5, 6, 0.75]], np.float32)
    bin_path = write_kitti_bin(seq / "velodyne" / "000000.bin", scan)
    write_semantic_kitti_label(seq / "labels" / "000000.label", np.array([10, 40], np.int64))
    data = load_points(bin_path)
    np.testing.assert_array_equal(data.xyz, scan[:, :3])
    np.testing.assert_array_equal(data.intensity, scan[:, 3])
    assert data.labels.tolist() == [10, 40]
    ply = write_ply_points(tmp_path / "c.ply", scan[:, :3], colors=np.array([[255, 0, 0], [0, 0, 255]], np.uint8),
                           intensity=scan[:, 3], label=np.array([3, 4], np.int32))
    data = load_points(ply)
    np.testing.assert_allclose(data.rgb, [[1, 0, 0], [0, 0, 1]])
    assert data.labels.tolist() == [3, 4] and np.allclose(data.intensity, scan[:, 3])
    arr = np.concatenate([scan[:, :3], np.array([[255, 0, 0], [0, 255, 0]], np.float32)], axis=1)
    np.save(tmp_path / "c.npy", arr)
    assert load_points(tmp_path / "c.npy").intensity.tolist() == [255, 0]  # column 3 is intensity by default
    np.testing.assert_allclose(load_points(tmp_path / "c.npy", color="rgb").rgb, [[1, 0, 0], [0, 1, 0]])
    pcd = pytest.importorskip("open3d", exc_type=ImportError)
    cloud = pcd.t.geometry.PointCloud()
    cloud.point.positions = pcd.core.Tensor(scan[:, :3])
    cloud.point.intensity = pcd.core.Tensor(scan[:, 3:4])
    assert pcd.t.io.write_point_cloud(str(tmp_path / "c.pcd"), cloud)
    data = load_points(tmp_path / "c.pcd")
    np.testing.assert_allclose(data.xyz, scan[:, :3]) and np.testing.assert_allclose(data.intensity, scan[:, 3])


@pytest.mark.parametrize("backend", ["trimesh", "open3d"])
def test_mesh_readers_agree(tmp_path: Path, backend: str) -> None:
    trimesh = pytest.importorskip("trimesh") if backend == "trimesh" else pytest.importorskip("open3d", exc_type=ImportError)
    del trimesh
    vertices, faces = cube_mesh(np.zeros((1, 3)), 2.0)
    lines = ["OFF", f"{len(vertices)} {len(faces)} 0"] + [" ".join(map(str, v)) for v in vertices]
    lines += ["3 " + " ".join(map(str, f)) for f in faces]
    (tmp_path / "cube.off").write_text("\n".join(lines) + "\n")
    v, f, colors = load_mesh(tmp_path / "cube.off", backend=backend)
    assert v.shape == (8, 3) and f.shape == (12, 3) and colors is None
    assert boundary_edges(f).shape == (0, 2)
    np.testing.assert_allclose(np.sort(v, axis=0), np.sort(vertices, axis=0))
    write_ply_points(tmp_path / "points.ply", np.zeros((3, 3), np.float32))
    with pytest.raises(UserError, match="no triangles"):
        load_mesh(tmp_path / "points.ply", backend=backend)


def test_build_scene_for_lidar_frame_with_detections(tmp_path: Path) -> None:
    pts = np.array([[0, 0, 0, 0.1], [10, 0, 0, 0.9], [20, 0, 0, 0.5], [30, 0, 0, 0.5]], np.float32)
    write_kitti_bin(tmp_path / "frames" / "000003.bin", pts)
    write_kitti_bin(tmp_path / "frames" / "000004.bin", pts)
    det = tmp_path / "out" / "detections.json"
    det.parent.mkdir()
    det.write_text(json.dumps(_detections({"000003": [([20.0, 0, 0, 2, 2, 2, 0], 0.8), ([30.0, 0, 0, 2, 2, 2, 0], 0.2)],
                                           "000004": [([10.0, 0, 0, 2, 2, 2, 0], 0.8)]})))
    scene = build_scene([tmp_path / "frames", det.parent], VisOptions(frame="3", color="intensity",
                                                                       score_threshold=0.5))
    (points,) = scene.of_type(Points)
    assert np.allclose(points.colors[2], C.PRED_BOX_COLOR)
    assert not np.allclose(points.colors[[0, 1, 3]], C.PRED_BOX_COLOR)  # frame 4's box and the low score are not used
    assert [len(x.segments) for x in scene.of_type(Lines)] == [13]
    assert len(scene.of_type(CoordinateFrame)) == 1 and np.allclose(scene.up, [0, 0, 1])
    # without --frame, the detections follow the scan's stem
    scene = build_scene([tmp_path / "frames" / "000004.bin", det])
    assert np.allclose(scene.of_type(Points)[0].colors[1], C.PRED_BOX_COLOR)
    with pytest.raises(UserError, match="--frame: '9' selects nothing"):
        build_scene([tmp_path / "frames" / "000004.bin"], VisOptions(frame="9"))


def test_build_scene_for_runs(tmp_path: Path) -> None:
    per_scene = tmp_path / "scene_run"
    save_gaussian_ply(per_scene / "point_cloud.ply", _gaussians(5))
    (per_scene / "summary.json").write_text(json.dumps({"scene": "s", "output_dir": str(per_scene), "steps": 3,
                                                         "exports": ["/elsewhere/point_cloud.ply"]}))
    (points,) = build_scene([per_scene]).of_type(Points)
    assert len(points.positions) == 5
    dataset_run = tmp_path / "dataset_run"
    dataset_run.mkdir()
    (dataset_run / "summary.json").write_text(json.dumps({"task": "train", "output_dir": "x", "steps": 3}))
    with pytest.raises(UserError, match="dataset-trained run"):
        build_scene([dataset_run])
    (per_scene / "point_cloud.ply").unlink()
    with pytest.raises(UserError, match="exported no point cloud"):
        build_scene([per_scene])


def test_no_display_means_no_window() -> None:
    assert not display_available({})
    assert not display_available({"DISPLAY": ":4242"})  # no X server there
    assert not display_available({"WAYLAND_DISPLAY": "wayland-42", "XDG_RUNTIME_DIR": "/nonexistent"})


# ------------------------------------------------------------------------------------------------- KITTI


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from sparse3d.datasets.synth.kitti import generate_kitti_frames

    return generate_kitti_frames(tmp_path_factory.mktemp("kitti"), num_frames=2, num_azimuth=300, progress=False)


def _label_rows(path: Path) -> list[list[str]]:
    return [line.split() for line in path.read_text().splitlines() if line.strip()]


def test_kitti_frame_forms_give_the_label_boxes(kitti_root: Path) -> None:
    training = kitti_root / "training"
    rows = _label_rows(training / "label_2" / "000001.txt")
    cared = [r for r in rows if r[0] != "DontCare"]
    assert len(cared) < len(rows)  # the generator writes DontCare rows, which are not drawn
    scenes = [build_scene([kitti_root], VisOptions(frame="1")), build_scene([training], VisOptions(frame="000001")),
              build_scene([training / "velodyne" / "000001.bin"])]
    for scene in scenes:
        (gt,) = scene.of_type(Lines)
        assert np.allclose(gt.colors, C.GT_BOX_COLOR) and len(gt.segments) == 13 * len(cared)
        # the box lengths (dx) and heights (dz) are the label's l and h columns (independent text parse)
        corners = gt.vertices.reshape(len(cared), 10, 3)[:, :8]
        lengths = np.linalg.norm(corners[:, 0] - corners[:, 3], axis=1)
        heights = corners[:, 4, 2] - corners[:, 0, 2]
        np.testing.assert_allclose(lengths, [float(r[10]) for r in cared], atol=1e-4)
        np.testing.assert_allclose(heights, [float(r[8]) for r in cared], atol=1e-4)
        (points,) = scene.of_type(Points)
        scan = np.fromfile(training / "velodyne" / "000001.bin", np.float32).reshape(-1, 4)
        assert len(points.positions) == len(scan)
        assert np.all(points.colors == np.float32(C.GT_BOX_COLOR), axis=1).sum() > 0  # in-box points highlighted
    with pytest.raises(UserError, match="holds 2 frames"):
        build_scene([kitti_root])


def test_kitti_detection_results_in_both_formats_match(kitti_root: Path, tmp_path: Path) -> None:
    from sparse3d.datasets.kitti import detections_to_objects, load_frame
    from sparse3d.io.kitti import write_label

    frame = load_frame(kitti_root, "000000")
    pred = frame.boxes[:3].astype(np.float64) + [0.5, -0.3, 0.0, 0.2, 0.1, 0.0, 0.2]
    scores = np.array([0.9, 0.6, 0.1], np.float32)
    (tmp_path / "label_2").mkdir()
    write_label(tmp_path / "label_2" / "000000.txt",
                detections_to_objects(pred, scores, ["Car"] * 3, frame.calib, frame.image_shape))
    from_rows = build_scene([kitti_root, tmp_path / "label_2"], VisOptions(frame="0", score_threshold=0.5))
    assert detect_type(tmp_path / "label_2" / "000000.txt") == "detections"
    (tmp_path / "detections.json").write_text(json.dumps(_detections(
        {"000000": [(b.tolist(), float(s)) for b, s in zip(pred, scores)]})))
    from_json = build_scene([kitti_root / "training" / "velodyne" / "000000.bin", tmp_path],
                            VisOptions(score_threshold=0.5))
    for scene in (from_rows, from_json):
        gt, pr = scene.of_type(Lines)
        assert np.allclose(pr.colors, C.PRED_BOX_COLOR) and len(pr.segments) == 2 * 13  # score 0.1 dropped
        centres = pr.vertices.reshape(2, 10, 3)[:, 8]
        np.testing.assert_allclose(centres, pred[:2, :3], atol=2e-3)  # camera-frame rows convert back to LiDAR
    with pytest.raises(UserError, match="calib"):
        build_scene([tmp_path / "label_2" / "000000.txt"])


@pytest.mark.parametrize("case, fragment", [
    ("frame", "--frame: no frame '42'"),
    ("calib", "calib/000000.txt"),
    ("label", "label_2/000000.txt:1"),
    ("json", "detections.json: invalid JSON"),
])
def test_kitti_malformed_inputs_name_the_file(kitti_root: Path, tmp_path: Path, case: str, fragment: str) -> None:
    import shutil

    root = tmp_path / "kitti"
    shutil.copytree(kitti_root, root)
    paths = [root]
    options = VisOptions(frame="42" if case == "frame" else "0")
    if case == "calib":
        (root / "training" / "calib" / "000000.txt").unlink()
    elif case == "label":
        (root / "training" / "label_2" / "000000.txt").write_text("Car 0 0 nope\n")
    elif case == "json":
        (tmp_path / "detections.json").write_text("{")
        paths.append(tmp_path / "detections.json")
    with pytest.raises(UserError) as err:
        build_scene(paths, options)
    assert fragment in str(err.value) and "\n" not in str(err.value)


# --------------------------------------------------------------------------------------------- SparseFlex


def _sphere_grid(path: Path, res: int = 12, radius: float = 0.6, centre: tuple[float, float, float] = (3.0, -1.0, 0.5)):
    """A sphere's SparseSDFGrid saved at ``path`` (box of side 2 around ``centre``: a non-trivial normalisation)."""
    from sparse3d.models.sparseflex.structure import grid_from_sdf_volume

    axis = np.linspace(-1.0, 1.0, res + 1)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    grid = grid_from_sdf_volume(np.sqrt(x**2 + y**2 + z**2) - radius, spacing=2.0 / res,
                                origin=tuple(np.asarray(centre) - 1.0))
    grid.save(path)
    return grid


def _field_from_grid(grid, path: Path, **override: np.ndarray) -> None:
    """A fit's field.npz with the grid's structure and zero raw weights / deformations (plain DMC)."""
    n, v = grid.num_cubes, len(grid.corner_keys)
    arrays = {"sdf": grid.sdf.numpy(), "deform": np.zeros((v, 3), np.float32), "beta": np.zeros((n, 12), np.float32),
              "alpha": np.zeros((n, 8), np.float32), "gamma": np.zeros(n, np.float32),
              "resolution": np.int64(grid.resolution), "cube_coords": grid.cube_coords.numpy(),
              "center": grid.normalization.center, "scale": np.float64(grid.normalization.scale), **override}
    with open(path, "wb") as f:
        np.savez(f, **arrays)


def test_cube_lines_draw_each_grid_edge_once_in_input_coordinates() -> None:
    from sparse3d.vis.sparseflex import cube_lines

    lines = cube_lines(np.array([[0, 0, 0], [1, 0, 0]]), 2, center=np.array([10.0, 0.0, 0.0]), scale=4.0)
    assert len(lines.segments) == 20 and len(lines.vertices) == 12  # 12 + 12 edges, 4 shared; 12 corners
    ends = lines.vertices[lines.segments]
    step = ends[:, 1] - ends[:, 0]
    assert np.allclose(np.sort(np.abs(step), axis=1), [0.0, 0.0, 2.0])  # axis-aligned, one voxel = 4 / 2 long
    assert np.allclose(lines.vertices.min(axis=0), [8.0, -2.0, -2.0])  # local -0.5 -> 10 - 2
    assert np.allclose(lines.vertices.max(axis=0), [12.0, 0.0, 0.0])
    assert len({tuple(sorted(map(tuple, e.round(5)))) for e in ends}) == 20  # no edge twice
    assert np.allclose(lines.colors, C.CUBE_COLOR)


def test_sparseflex_grid_and_field_are_detected_and_drawn(tmp_path: Path) -> None:
    from sparse3d.vis.scene import Lines as L

    grid = _sphere_grid(tmp_path / "grid.npz")
    _field_from_grid(grid, tmp_path / "field.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    assert detect_type(tmp_path / "grid.npz") == "grid" and detect_type(tmp_path / "field.npz") == "field"
    with pytest.raises(UserError, match=r"other.npz: .npz is neither .* it holds a"):
        detect_type(tmp_path / "other.npz")

    centre = np.array([3.0, -1.0, 0.5])
    meshes = {}
    for name in ("grid", "field"):
        scene = build_scene([tmp_path / f"{name}.npz"], VisOptions(show="mesh"))
        (mesh,) = scene.of_type(Mesh)
        assert not scene.of_type(L) and not scene.notes  # a closed sphere: no boundary edges, no cubes
        r = np.linalg.norm(mesh.vertices - centre, axis=1)
        assert np.all(np.abs(r - 0.6) < 2.0 / 12)  # on the sphere, within a voxel, in input coordinates
        meshes[name] = mesh.vertices[np.lexsort(mesh.vertices.T)]
    assert np.allclose(meshes["grid"], meshes["field"], atol=1e-5)  # zero raw weights = plain DMC

    scene = build_scene([tmp_path / "grid.npz"], VisOptions(show="cubes", max_cubes=50))
    (lines,) = scene.of_type(L)
    assert not scene.of_type(Mesh)
    assert scene.notes == [f"{tmp_path / 'grid.npz'}: {grid.num_cubes} active cubes; drawing 50 of them (evenly "
                           "spaced in storage order)"]
    assert len(lines.segments) <= 50 * 12
    everything = build_scene([tmp_path / "grid.npz"], VisOptions(show="both"))
    assert len(everything.of_type(Mesh)) == 1 and not everything.notes
    (all_lines,) = everything.of_type(L)
    local = (all_lines.vertices - centre) / 2.0 * 12 + 6  # back to grid vertex indices
    assert np.allclose(local, np.round(local), atol=1e-4)  # cube corners sit on the grid's vertices
    expected_corners = {tuple(c) for c in (grid.cube_coords.numpy()[:, None] + np.array(
        [[m & 1, (m >> 1) & 1, (m >> 2) & 1] for m in range(8)])[None]).reshape(-1, 3)}
    assert {tuple(c) for c in np.round(local).astype(int)} == expected_corners


def test_sparseflex_errors_and_run_folder(tmp_path: Path) -> None:
    grid = _sphere_grid(tmp_path / "grid.npz")
    _field_from_grid(grid, tmp_path / "bad.npz", beta=np.zeros((3, 12), np.float32))
    with pytest.raises(UserError, match=r"bad.npz: beta must have shape \(\d+, 12\)"):
        build_scene([tmp_path / "bad.npz"])
    with pytest.raises(UserError, match="not a SparseSDFGrid file"):
        build_scene([tmp_path / "bad.npz"], VisOptions(type="grid"))
    with pytest.raises(UserError, match="missing entries deform"):
        build_scene([tmp_path / "grid.npz"], VisOptions(type="field"))
    with pytest.raises(UserError, match="--show"):
        build_scene([tmp_path / "grid.npz"], VisOptions(show="voxels"))

    run = tmp_path / "run"
    run.mkdir()
    _field_from_grid(grid, run / "field.npz")
    vertices, faces = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]], np.float32), np.array(
        [[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])
    (run / "mesh.ply").write_text("ply\nformat ascii 1.0\nelement vertex 4\nproperty float x\nproperty float y\n"
                                  "property float z\nelement face 4\nproperty list uchar int vertex_indices\n"
                                  "end_header\n" + "".join(f"{a} {b} {c}\n" for a, b, c in vertices)
                                  + "".join(f"3 {a} {b} {c}\n" for a, b, c in faces))
    assert detect_type(run) == "run"
    (mesh,) = build_scene([run]).of_type(Mesh)
    assert np.allclose(np.sort(mesh.vertices, axis=0), np.sort(vertices, axis=0))


def test_sparseflex_field_of_a_fit_run_gives_the_fits_own_mesh(tmp_path: Path) -> None:
    from sparse3d.datasets.meshes import load_mesh_scene
    from sparse3d.datasets.synth.fit_shapes import write_fit_shapes
    from sparse3d.models.sparseflex.fit import SparseFlexFit

    shape = write_fit_shapes(tmp_path / "shapes", ("sphere",))["sphere"]
    scene = load_mesh_scene(shape, num_views=4, test_views=0, width=32, height=32)
    fit = SparseFlexFit(resolution=16, max_init_points=1000)
    fit.setup(scene.inputs, 3, mesh=scene.mesh, normalization=scene.normalization)
    for step in range(3):  # trained weights and deformations: not the plain DMC surface any more
        fit.training_step(step)
    run = tmp_path / "run"
    run.mkdir()
    fit.export(run)
    assert detect_type(run / "field.npz") == "field" and detect_type(run) == "run"
    (mesh,) = build_scene([run / "field.npz"], VisOptions(show="mesh")).of_type(Mesh)
    exported, _, _ = load_mesh(run / "mesh.ply")
    ours = mesh.vertices[np.lexsort(mesh.vertices.T)]
    assert ours.shape == exported.shape
    assert np.allclose(ours, exported[np.lexsort(exported.T)], atol=1e-5)  # the input mesh's coordinates
    (run_mesh,) = build_scene([run]).of_type(Mesh)  # the run folder shows the exported mesh.ply
    assert np.allclose(np.sort(run_mesh.vertices, axis=0), np.sort(exported, axis=0))
