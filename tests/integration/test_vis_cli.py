"""`sparse3d-vis` end to end: headless renders (a KITTI frame with ground truth and detections, meshes, 3DGS,
cameras) checked pixel by pixel against the cameras the viewer uses, an MP4 turntable read back with OpenCV, and
one-line errors (exit 2, no output file) for malformed inputs.

The CLI runs as ``python -m sparse3d.cli.vis`` in a subprocess (as a user runs it); the expected pixel positions
come from the same scene and camera code (:func:`build_scene`, :func:`view_camera`) evaluated in this process.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from sparse3d.geometry.boxes import box_corners
from sparse3d.io.gaussian_ply import GaussianCloud, save_gaussian_ply
from sparse3d.io.pointcloud import write_kitti_bin, write_ply_points
from sparse3d.models.splatting.gaussians import rgb_to_sh0
from sparse3d.utils.errors import UserError
from sparse3d.vis import colors as C
from sparse3d.vis import render
from sparse3d.vis.camera import ViewCamera, look_at_camera, view_camera
from sparse3d.vis.geometry import cube_mesh
from sparse3d.vis.scene import Points, Scene
from sparse3d.vis.sources import VisOptions, build_scene

RunCli = Callable[..., subprocess.CompletedProcess[str]]
pytest.importorskip("open3d", exc_type=ImportError)


def vis(run_cli: RunCli, *args: object) -> subprocess.CompletedProcess[str]:
    return run_cli([sys.executable, "-m", "sparse3d.cli.vis", *map(str, args)], timeout=300)


def ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, result.stderr[-3000:]
    assert "wrote" in result.stdout and result.stderr.strip() == ""


def read_rgb(path: Path) -> np.ndarray:
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None, path
    return image[..., ::-1].astype(np.int32)


def color_near(image: np.ndarray, uv: np.ndarray, color: tuple[float, float, float], radius: int = 2,
               tol: int = 3) -> bool:
    """Some pixel within ``radius`` of pixel position ``uv`` (pixel centres at +0.5) has ``color``."""
    col, row = int(math.floor(uv[0])), int(math.floor(uv[1]))
    h, w = image.shape[:2]
    patch = image[max(row - radius, 0): min(row + radius + 1, h), max(col - radius, 0): min(col + radius + 1, w)]
    target = np.rint(np.asarray(color) * 255).astype(np.int32)
    return bool(patch.size) and bool((np.abs(patch - target).max(axis=-1) <= tol).any())


def background_fraction(image: np.ndarray) -> float:
    return float((image.max(axis=-1) == 0).mean())


# ------------------------------------------------------------------------------------------ LiDAR + boxes


@pytest.fixture(scope="module")
def kitti_frame(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, np.ndarray, np.ndarray]:
    """A generated KITTI frame 000000, its ground-truth LiDAR boxes and predictions (each GT box grown by 30 %,
    score 0.9, plus one score-0.1 box on empty ground) written as sparse3d-detect writes them."""
    from sparse3d.datasets.kitti import detections_to_objects, load_frame
    from sparse3d.datasets.synth.kitti import generate_kitti_frames
    from sparse3d.detect import FrameDetections
    from sparse3d.io.kitti import write_label

    base = tmp_path_factory.mktemp("kitti_vis")
    root = generate_kitti_frames(base / "kitti", num_frames=1, num_azimuth=700, progress=False)
    frame = load_frame(root, "000000")
    gt = frame.boxes.astype(np.float64)
    pred = gt * [1, 1, 1, 1.3, 1.3, 1.3, 1]
    pred[:, 2] += 0.15 * gt[:, 5]  # same bottom, taller: the predicted top face lies above the ground truth's
    low = np.array([[gt[:, 0].mean(), gt[:, 1].min() - 6.0, gt[:, 2].mean(), 4.0, 2.0, 1.5, 0.3]])
    boxes, scores = np.concatenate([pred, low]), np.array([0.9] * len(pred) + [0.1], np.float32)
    out = base / "detect_out"
    (out / "label_2").mkdir(parents=True)
    detections = FrameDetections("000000", boxes.astype(np.float32), scores, ["Car"] * len(boxes))
    (out / "detections.json").write_text(json.dumps({"000000": detections.to_json()}))
    write_label(out / "label_2" / "000000.txt",
                detections_to_objects(boxes, scores, ["Car"] * len(boxes), frame.calib, frame.image_shape))
    return root, gt, boxes


def _edge_samples(boxes: np.ndarray) -> list[np.ndarray]:
    """Points along the four top edges of each box (the top face is what the BEV and iso cameras see first)."""
    out = []
    for corners in box_corners(np.asarray(boxes, np.float64)):
        top = corners[4:]
        out.append(np.array([top[i] + f * (top[(i + 1) % 4] - top[i]) for i in range(4) for f in (0.25, 0.5, 0.75)]))
    return out


@pytest.mark.parametrize("view, results", [("bev", "detections.json"), ("iso", "label_2")])
def test_kitti_frame_with_gt_and_detections_renders_boxes_where_they_project(
    run_cli: RunCli, tmp_path: Path, kitti_frame: tuple[Path, np.ndarray, np.ndarray], view: str, results: str
) -> None:
    root, gt, pred = kitti_frame
    detections = root.parent / "detect_out" / results
    paths = [root, detections]
    out = tmp_path / f"{view}.png"
    ok(vis(run_cli, *paths, "--frame", "0", "--score-threshold", "0.5", "--view", view, "--size", "640x480",
           "--save", out))
    image = read_rgb(out)
    assert image.shape == (480, 640, 3)
    assert 0.02 < 1.0 - background_fraction(image) < 0.95  # not empty, not flooded
    camera = view_camera(build_scene(paths, VisOptions(frame="0", score_threshold=0.5)), view, 640, 480)
    for boxes, color in ((gt, C.GT_BOX_COLOR), (pred[:-1], C.PRED_BOX_COLOR)):
        hits = []
        for samples in _edge_samples(boxes):
            uv, depth = camera.project(samples)
            inside = (depth > 0) & (uv[:, 0] >= 2) & (uv[:, 0] < 638) & (uv[:, 1] >= 2) & (uv[:, 1] < 478)
            hits += [color_near(image, p, color, radius=1) for p in uv[inside]]
        assert len(hits) >= 12 * 3 and np.mean(hits) > 0.85, (view, color, np.mean(hits))
    # the score-0.1 box is below the threshold: no prediction colour where it would be
    uv, _ = camera.project(np.concatenate(_edge_samples(pred[-1:])))
    assert not any(color_near(image, p, C.PRED_BOX_COLOR, radius=1) for p in uv)


@pytest.mark.parametrize("case, fragment", [
    ("frame", "--frame: no frame '42'"),
    ("calib", "calib/000000.txt: KITTI calib file not found"),
    ("label", "label_2/000000.txt:1: expected 15 columns"),
    ("results", "detections.json: no frame '0' (frames 000001 .. 000001)"),
])
def test_kitti_malformed_inputs_give_one_line_and_no_output(
    run_cli: RunCli, tmp_path: Path, kitti_frame: tuple[Path, np.ndarray, np.ndarray], case: str, fragment: str
) -> None:
    import shutil

    root = tmp_path / "kitti"
    shutil.copytree(kitti_frame[0], root)
    args: list[object] = [root]
    if case == "calib":
        (root / "training" / "calib" / "000000.txt").unlink()
    elif case == "label":
        (root / "training" / "label_2" / "000000.txt").write_text("Car 0.0 0\n")
    elif case == "results":
        (tmp_path / "detections.json").write_text(json.dumps({"000001": []}))
        args.append(tmp_path / "detections.json")
    args += ["--frame", "42" if case == "frame" else "0"]
    before = sorted(p.name for p in tmp_path.iterdir())
    result = vis(run_cli, *args, "--save", tmp_path / "out.png")
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparse3d-vis: error: ") and fragment in lines[0], result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# ---------------------------------------------------------------------------------------------------- meshes


def _sphere(path: Path, open_top: bool = False) -> None:
    trimesh = pytest.importorskip("trimesh")
    mesh = trimesh.creation.icosphere(subdivisions=3, radius=1.0)
    if open_top:
        mesh.update_faces(mesh.vertices[mesh.faces][:, :, 2].min(axis=1) < 0.5)
    mesh.export(path)


def test_mesh_silhouette_and_open_boundary(run_cli: RunCli, tmp_path: Path) -> None:
    _sphere(tmp_path / "sphere.obj")
    out = tmp_path / "sphere.png"
    ok(vis(run_cli, tmp_path / "sphere.obj", "--lookat", "0,0,0", "--eye", "0,-4,0", "--size", "200x160", "--save", out))
    image = read_rgb(out)
    camera = look_at_camera((0, -4, 0), (0, 0, 0), (0, 0, 1), 200, 160)
    centre_uv, _ = camera.project(np.zeros((1, 3)))
    cx, cy = centre_uv[0]
    radius_px = camera.K[0, 0] * math.tan(math.asin(1 / 4))  # the silhouette of a unit sphere seen from 4 units
    for angle in np.linspace(0, 2 * math.pi, 12, endpoint=False):
        direction = np.array([math.cos(angle), math.sin(angle)])
        inner = np.floor([cx, cy] + 0.85 * radius_px * direction).astype(int)
        outer = np.floor([cx, cy] + 1.15 * radius_px * direction).astype(int)
        assert image[inner[1], inner[0]].max() > 0, angle  # mesh
        assert image[outer[1], outer[0]].max() == 0, angle  # background
    magenta = np.all(image == [255, 0, 255], axis=-1)
    assert not magenta.any()  # a closed mesh has no open boundary

    _sphere(tmp_path / "cut.ply", open_top=True)
    out = tmp_path / "cut.png"
    ok(vis(run_cli, tmp_path / "cut.ply", "--lookat", "0,0,0", "--eye", "0,-4,0", "--size", "200x160", "--save", out))
    image = read_rgb(out)
    rim_z = 0.5  # the cut leaves a rim of boundary edges just below z = 0.5
    rim_uv, _ = camera.project(np.array([[0.0, -math.sqrt(1 - rim_z**2) + 0.05, rim_z - 0.03]]))
    assert color_near(image, rim_uv[0], C.BOUNDARY_COLOR, radius=4, tol=2)


def test_mesh_turntable_is_a_two_second_mp4(run_cli: RunCli, tmp_path: Path) -> None:
    vertices, faces = cube_mesh(np.array([[0.5, 0.0, 0.0]]), 1.0)
    vertices = vertices * [2.0, 1.0, 0.5]  # an asymmetric block, so frames differ as it turns
    lines = ["OFF", f"{len(vertices)} {len(faces)} 0"] + [" ".join(map(str, v)) for v in vertices]
    (tmp_path / "block.off").write_text("\n".join(lines + ["3 " + " ".join(map(str, f)) for f in faces]) + "\n")
    out = tmp_path / "turntable.mp4"
    ok(vis(run_cli, tmp_path / "block.off", "--orbit", 60, "--fps", 30, "--size", "160x120", "--save", out))
    video = cv2.VideoCapture(str(out))
    try:
        assert video.get(cv2.CAP_PROP_FPS) == pytest.approx(30.0)
        frames = []
        while True:
            good, frame = video.read()
            if not good:
                break
            frames.append(frame)
    finally:
        video.release()
    assert len(frames) == 60 and all(f.shape == (120, 160, 3) for f in frames)  # 2 s at 30 fps
    assert all(f.max() > 100 for f in frames)  # the block is in every frame
    assert np.abs(frames[0].astype(int) - frames[15].astype(int)).mean() > 2  # a quarter turn later it looks different
    assert sorted(p.name for p in tmp_path.iterdir()) == ["block.off", "turntable.mp4"]  # no temporary left


# ----------------------------------------------------------------------------------------------------- 3DGS


def _two_cluster_gaussians(path: Path, n: int = 60) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1)
    means = np.concatenate([rng.normal([-2, 0, 0], 0.4, (n, 3)), rng.normal([2, 0, 0], 0.4, (n, 3))])
    rgb = np.repeat(np.array([[0.9, 0.1, 0.1], [0.1, 0.3, 0.9]]), n, axis=0)
    sh = rgb_to_sh0(torch.tensor(rgb, dtype=torch.float32))[:, None, :]
    opacities = torch.linspace(0.1, 0.9, 2 * n)
    save_gaussian_ply(path, GaussianCloud(torch.tensor(means, dtype=torch.float32),
                                          torch.tensor([[1.0, 0, 0, 0]]).repeat(2 * n, 1), torch.full((2 * n, 3), 0.03),
                                          opacities, sh))
    return means, rgb


def assert_dc_colours_at_centres(run_cli: RunCli, source: Path, means: np.ndarray, rgb: np.ndarray, out: Path) -> None:
    """A BEV render of ``source`` shows each Gaussian's DC colour where its centre projects."""
    ok(vis(run_cli, source, "--view", "bev", "--size", "240x180", "--point-size", "3", "--save", out))
    image = read_rgb(out)
    camera = view_camera(build_scene([source], VisOptions(point_size=3)), "bev", 240, 180)
    uv, _ = camera.project(means)
    hits = [color_near(image, p, c, radius=1, tol=2) for p, c in zip(uv, rgb)]
    assert np.mean(hits) > 0.95


def test_gaussian_ply_renders_its_dc_colours(run_cli: RunCli, tmp_path: Path) -> None:
    ply = tmp_path / "splat.ply"
    means, rgb = _two_cluster_gaussians(ply)
    assert_dc_colours_at_centres(run_cli, ply, means, rgb, tmp_path / "splat.png")

    out = tmp_path / "glyphs.png"
    ok(vis(run_cli, ply, "--glyphs", 20, "--view", "bev", "--size", "240x180", "--save", out))
    image = read_rgb(out)
    camera = view_camera(build_scene([ply], VisOptions(glyphs=20)), "bev", 240, 180)
    chosen = np.argsort(-np.linspace(0.1, 0.9, len(means)), kind="stable")[:20]  # the 20 most opaque: blue cluster
    uv, _ = camera.project(means[chosen])
    blue = [image[int(v), int(u), 2] > image[int(v), int(u), 0] + 40 for u, v in uv]
    assert np.mean(blue) > 0.8  # shaded, but blue
    assert not (image[..., 0] > image[..., 2] + 40).any()  # the less opaque red cluster is not drawn


def test_run_directories(run_cli: RunCli, tmp_path: Path) -> None:
    run = tmp_path / "run"
    means, rgb = _two_cluster_gaussians(run / "point_cloud.ply")
    (run / "renders").mkdir()
    (run / "summary.json").write_text(json.dumps({"scene": "toy", "method": "GS3D", "output_dir": str(run),
                                                  "steps": 10, "exports": [str(run / "point_cloud.ply")]}))
    assert_dc_colours_at_centres(run_cli, run, means, rgb, tmp_path / "run.png")

    trained = tmp_path / "dsvt_run"
    trained.mkdir()
    (trained / "summary.json").write_text(json.dumps({"task": "train", "output_dir": str(trained), "steps": 5}))
    result = vis(run_cli, trained, "--save", tmp_path / "none.png")
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert result.stderr.startswith(f"sparse3d-vis: error: {trained}: a dataset-trained run")
    assert not (tmp_path / "none.png").exists()


# ------------------------------------------------------------------------------------------ posed images


def test_spare_scene_renders_its_camera_frusta(run_cli: RunCli, tmp_path: Path) -> None:
    from sparse3d.datasets.synth.spare_scenes import generate_spare_scenes
    from sparse3d.io.spare import load_scene, read_split

    root = generate_spare_scenes(tmp_path / "spare", num_scenes=1, width=64, height=48, lightings=[3], progress=False)
    out = tmp_path / "cams.png"
    ok(vis(run_cli, root, "--size", "320x240", "--save", out))
    image = read_rgb(out)
    scene = build_scene([root])
    camera = view_camera(scene, "iso", 320, 240)
    entry = next(iter(read_split(root / "Track1_split_development.json").values()))
    cams = load_scene(root, entry).cameras_for(list(entry.input_views) + list(entry.test_views))
    uv, depth = camera.project(cams.centers.numpy())
    assert (depth > 0).all()
    colors = [C.INPUT_CAMERA_COLOR] * len(entry.input_views) + [C.TEST_CAMERA_COLOR] * len(entry.test_views)
    hits = [color_near(image, p, c, radius=2, tol=2) for p, c in zip(uv, colors)]  # the apex, where 4 edges meet
    assert np.mean(hits) >= 0.75, hits
    assert 0.005 < 1.0 - background_fraction(image) < 0.9

    result = vis(run_cli, root, "--frame", "NoSuchScene", "--save", tmp_path / "x.png")
    assert result.returncode == 2 and "--frame: no scene 'NoSuchScene'" in result.stderr
    assert result.stderr.count("\n") == 1 and not (tmp_path / "x.png").exists()


# ------------------------------------------------------------------------------------------------- errors


def _inputs(folder: Path) -> None:
    write_kitti_bin(folder / "scan.bin", np.zeros((8, 4), np.float32))
    (folder / "short.bin").write_bytes(b"\0" * 20)
    (folder / "broken.json").write_text("[{")
    (folder / "six.json").write_text(json.dumps({"scan": [{"box_lidar": [0, 0, 0, 1, 1, 1], "name": "Car",
                                                            "score": 0.5}]}))
    write_ply_points(folder / "cloud.ply", np.zeros((4, 3), np.float32))
    (folder / "notes.txt").write_text("hello\n")


@pytest.mark.parametrize("args, fragment", [
    (["missing.bin", "--save", "out.png"], "missing.bin: no such file"),
    (["short.bin", "--save", "out.png"], "short.bin: 20 bytes is not a whole number of KITTI points"),
    (["broken.json", "--save", "out.png"], "broken.json: invalid JSON"),
    (["scan.bin", "six.json", "--save", "out.png"], "six.json: frame scan entry 0: 'box_lidar' must be 7 finite"),
    (["scan.bin", "six.json", "--score-threshold", "nan", "--save", "out.png"], "--score-threshold: expected a finite"),
    (["notes.txt", "--save", "out.png"], "notes.txt: unrecognised content"),
    (["cloud.ply", "--type", "mesh", "--save", "out.png"], "cloud.ply: no triangles found"),
    (["scan.bin", "--color", "label", "--save", "out.png"], "scan.bin: --color label: the point cloud has no labels"),
    (["scan.bin", "--color", "pink", "--save", "out.png"], "--color: invalid choice: 'pink'"),
    (["scan.bin", "--size", "10x10", "--save", "out.png"], "--size: width and height must lie in 16..8192"),
    (["scan.bin", "--size", "big", "--save", "out.png"], "--size: expected WIDTHxHEIGHT"),
    (["scan.bin", "--view", "top", "--save", "out.png"], "--view: invalid choice: 'top'"),
    (["scan.bin", "--save", "out.jpg"], "--save: out.jpg: the file name must end in .png or .mp4"),
    (["scan.bin", "--save", "out.mp4"], "an .mp4 is a turntable; add --orbit N"),
    (["scan.bin", "--orbit", "10"], "--orbit: needs --save FILE.mp4"),
    (["scan.bin", "--orbit", "0", "--save", "out.mp4"], "--orbit: expected a positive integer"),
    (["scan.bin", "--orbit", "5", "--size", "161x120", "--save", "out.mp4"], "--size: an MP4 needs an even width"),
    (["scan.bin", "--lookat", "1,2", "--eye", "0,0,0", "--save", "out.png"], "--lookat: expected three finite numbers"),
    (["scan.bin", "--eye", "1,2,3", "--save", "out.png"], "--lookat/--eye: give both"),
    (["scan.bin", "--frame", "3", "--save", "out.png"], "--frame: '3' selects nothing"),
    (["scan.bin", "--save", "nowhere/out.png"], "folder nowhere does not exist"),
    (["scan.bin", "--voxel-size", "-1", "--save", "out.png"], "--voxel-size: expected a positive number"),
    ([], "PATH: required"),
    (["scan.bin", "--bogus"], "--bogus: unrecognized argument"),
])
def test_malformed_inputs_give_one_line_and_no_output(run_cli: RunCli, tmp_path: Path, args: list[str],
                                                      fragment: str) -> None:
    _inputs(tmp_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = run_cli([sys.executable, "-m", "sparse3d.cli.vis", *args], cwd=tmp_path, timeout=300)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparse3d-vis: error: "), result.stderr
    assert fragment in lines[0]
    assert "Traceback" not in result.stdout + result.stderr and result.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no output file, no temporary


def test_no_display_and_no_save_is_a_one_line_error(run_cli: RunCli, tmp_path: Path) -> None:
    write_kitti_bin(tmp_path / "scan.bin", np.zeros((8, 4), np.float32))
    result = run_cli([sys.executable, "-m", "sparse3d.cli.vis", tmp_path / "scan.bin"],
                     extra_env={"DISPLAY": "", "WAYLAND_DISPLAY": ""}, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "no display found" in result.stderr and "--save out.png" in result.stderr


def test_help_lists_examples(run_cli: RunCli) -> None:
    result = run_cli([sys.executable, "-m", "sparse3d.cli.vis", "--help"], timeout=120)
    assert result.returncode == 0
    assert "examples:" in result.stdout and "--orbit 60 --save turntable.mp4" in result.stdout


def test_failed_render_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    scene = Scene([Points(np.zeros((1, 3)), np.ones((1, 3)))])
    camera = ViewCamera(np.eye(3), np.eye(4), 32, 32)

    def broken(scene: Scene, cameras: list[ViewCamera]):  # one frame, then the renderer fails
        yield np.zeros((32, 32, 3), np.uint8)
        raise UserError("rendering: context lost")

    monkeypatch.setattr(render, "render_images", broken)
    with pytest.raises(UserError, match="context lost"):
        render.save_turntable(scene, [camera] * 3, tmp_path / "t.mp4")

    def failing(scene: Scene, cameras: list[ViewCamera]):
        raise UserError("rendering: no context")
        yield  # a generator, like the real one

    monkeypatch.setattr(render, "render_images", failing)
    with pytest.raises(UserError, match="no context"):
        render.save_png(scene, camera, tmp_path / "p.png")
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------------------------- SparseFlex


def test_sparseflex_grid_renders_its_mesh_and_cubes(run_cli: RunCli, tmp_path: Path) -> None:
    from sparse3d.models.sparseflex.structure import grid_from_sdf_volume

    res, radius, centre = 16, 0.6, np.array([2.0, 0.0, 0.0])
    axis = np.linspace(-1.0, 1.0, res + 1)
    x, y, z = np.meshgrid(axis, axis, axis, indexing="ij")
    grid = grid_from_sdf_volume(np.sqrt(x**2 + y**2 + z**2) - radius, spacing=2.0 / res, origin=tuple(centre - 1))
    grid.save(tmp_path / "grid.npz")
    eye = centre + [0.0, -4.0, 0.0]
    camera = look_at_camera(tuple(eye), tuple(centre), (0, 0, 1), 200, 160)
    (cx, cy) = camera.project(centre[None])[0][0]
    radius_px = camera.K[0, 0] * math.tan(math.asin(radius / 4))
    view = ["--lookat", ",".join(map(str, centre)), "--eye", ",".join(map(str, eye)), "--size", "200x160"]

    out = tmp_path / "mesh.png"
    ok(vis(run_cli, tmp_path / "grid.npz", "--show", "mesh", *view, "--save", out))
    image = read_rgb(out)
    for angle in np.linspace(0, 2 * math.pi, 12, endpoint=False):
        direction = np.array([math.cos(angle), math.sin(angle)])
        inner = np.floor([cx, cy] + 0.75 * radius_px * direction).astype(int)
        outer = np.floor([cx, cy] + 1.3 * radius_px * direction).astype(int)
        assert image[inner[1], inner[0]].max() > 0, angle  # the mesh where the sphere projects (input coordinates)
        assert image[outer[1], outer[0]].max() == 0, angle  # background outside it
    assert not color_near(image, np.array([cx, cy]), C.CUBE_COLOR, radius=30)  # no cubes with --show mesh

    out = tmp_path / "cubes.png"
    result = vis(run_cli, tmp_path / "grid.npz", "--show", "cubes", "--max-cubes", 100, *view, "--save", out)
    ok(result)
    assert f"{grid.num_cubes} active cubes; drawing 100 of them" in result.stdout
    image = read_rgb(out)
    teal = np.abs(image - np.rint(np.asarray(C.CUBE_COLOR) * 255)).max(axis=-1) <= 3
    rows, cols = np.nonzero(teal)
    assert len(rows) > 50  # cube edges drawn in the cube colour ...
    offsets = np.array([[m & 1, (m >> 1) & 1, (m >> 2) & 1] for m in range(8)])
    corners = (grid.cube_coords.numpy()[:, None] + offsets[None]).reshape(-1, 3) * (2.0 / res) + (centre - 1.0)
    corner_uv, _ = camera.project(corners)
    reach = np.hypot(*(corner_uv - [cx, cy]).T).max()  # farthest projected cube corner
    dist = np.hypot(cols + 0.5 - cx, rows + 0.5 - cy)
    assert dist.max() <= reach + 2.0  # ... only where the grid's cubes project
    assert dist.max() > radius_px  # and out past the surface (the band's outer cubes)
