"""Synthetic KITTI object generator: layout, sensor geometry, label semantics and determinism against oracles
(beam angles, independent projections, box membership, hand-built scenes with known truncation/occlusion)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from sparse3d.datasets.synth.kitti import (
    IMAGE_SHAPE,
    MARKER_NAME,
    LidarSpec,
    SyntheticKittiFrame,
    generate_kitti_frames,
    hdl64_elevations_deg,
    is_val_frame,
    kitti_like_calib,
    synthesize_frame,
)
from sparse3d.datasets.synth.kitti_scene import (
    CLASS_SIZE_STATS,
    MATERIALS,
    SENSOR_HEIGHT,
    SceneBuilder,
    add_road_user,
    box_mesh,
    sample_kitti_scene,
    sample_object_size,
)
from sparse3d.geometry.boxes import camera_to_lidar_boxes, count_points_in_boxes, points_in_boxes
from sparse3d.io.kitti import read_calib, read_image_shape, read_label, read_velodyne
from sparse3d.utils.errors import UserError

NUM_FRAMES = 3
SEED = 0


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_kitti_frames(tmp_path_factory.mktemp("kitti") / "out", num_frames=NUM_FRAMES, seed=SEED,
                                 progress=False)  # fmt: skip


@pytest.fixture(scope="module")
def frames() -> list[SyntheticKittiFrame]:
    """The same frames, regenerated in memory from (seed, index) exactly as the generator draws them."""
    calib = kitti_like_calib()
    out = []
    for i in range(NUM_FRAMES):
        rng = np.random.default_rng([SEED, i])
        out.append(synthesize_frame(sample_kitti_scene(rng), calib, rng))
    return out


def _projection(calib_path: Path) -> np.ndarray:
    """4x4-free LiDAR -> image-2 projection (3, 4) built from the raw calib matrices (independent of KittiCalib)."""
    c = read_calib(calib_path)
    r0 = np.eye(4)
    r0[:3, :3] = c.R0_rect
    v2c = np.vstack([c.Tr_velo_to_cam, [0, 0, 0, 1]])
    return c.P2 @ r0 @ v2c


def _box_corners(box: np.ndarray) -> np.ndarray:
    x, y, z, dx, dy, dz, h = box
    sx, sy, sz = np.meshgrid([-0.5, 0.5], [-0.5, 0.5], [-0.5, 0.5], indexing="ij")
    local = np.stack([sx.ravel() * dx, sy.ravel() * dy, sz.ravel() * dz], 1)
    c, s = math.cos(h), math.sin(h)
    return local @ np.array([[c, s, 0], [-s, c, 0], [0, 0, 1]]) + [x, y, z]


# ---------------------------------------------------------------------------------------------- layout


def test_layout_calib_and_splits(root: Path) -> None:
    ids = [f"{i:06d}" for i in range(NUM_FRAMES)]
    for sub, ext in (("velodyne", ".bin"), ("label_2", ".txt"), ("calib", ".txt"), ("image_2", ".png")):
        assert sorted(p.name for p in (root / "training" / sub).iterdir()) == [f"{i}{ext}" for i in ids]
    assert not any(p.name.startswith(".") for p in root.rglob("*"))  # no staging leftovers
    assert read_image_shape(root / "training/image_2/000000.png") == IMAGE_SHAPE == (375, 1242)
    train = (root / "ImageSets/train.txt").read_text().split()
    val = (root / "ImageSets/val.txt").read_text().split()
    assert sorted(train + val) == ids and not set(train) & set(val) and train and val
    text = (root / "training/calib/000000.txt").read_text().splitlines()
    assert [line.split(":")[0] for line in text] == ["P0", "P1", "P2", "P3", "R0_rect", "Tr_velo_to_cam",
                                                     "Tr_imu_to_velo"]  # fmt: skip
    calib = read_calib(root / "training/calib/000000.txt")
    assert calib.P2[0, 0] == pytest.approx(721.5377) and calib.P2[:2, 2] == pytest.approx([609.5593, 172.854])
    assert np.allclose(calib.R0_rect, np.eye(3), atol=0.02)
    # The LiDAR->camera rotation is the axis swap x_cam = -y, y_cam = -z, z_cam = x up to a small mount rotation.
    assert np.allclose(calib.Tr_velo_to_cam[:, :3], [[0, -1, 0], [0, 0, -1], [1, 0, 0]], atol=0.02)
    # The camera sits ~1.65 m above the road: the LiDAR origin is 0.27 m behind and ~0.08 m above it.
    cam_in_lidar = -calib.Tr_velo_to_cam[:, :3].T @ calib.Tr_velo_to_cam[:, 3]
    assert cam_in_lidar == pytest.approx([0.27, 0.0, -0.08], abs=0.02)


def test_val_split_rule_spreads_evenly_and_is_stable() -> None:
    for f in (0.0, 0.25, 0.5, 0.3):
        flags = [is_val_frame(i, f) for i in range(1000)]
        assert sum(flags) == round(1000 * f)
        assert sum(flags[:100]) == round(100 * f)  # a prefix (a shorter generation) has the same split


# ---------------------------------------------------------------------------------------------- sensor


def test_point_count_range_and_intensity(root: Path) -> None:
    for i in range(NUM_FRAMES):
        pts = read_velodyne(root / f"training/velodyne/{i:06d}.bin")
        assert 110_000 <= len(pts) <= 130_000
        r = np.linalg.norm(pts[:, :3].astype(np.float64), axis=1)
        assert r.max() <= 120.0 and r.min() > 0.5
        assert pts[:, 3].min() >= 0.0 and pts[:, 3].max() <= 1.0 and pts[:, 3].std() > 0.05


def test_points_lie_on_the_64_beams(root: Path) -> None:
    beams = hdl64_elevations_deg()
    assert len(beams) == 64 and beams[0] == pytest.approx(2.0) and beams[-1] == pytest.approx(-24.9)
    assert np.all(np.diff(beams) < 0) and np.diff(beams[:32]) == pytest.approx(np.full(31, -10.33 / 31))
    pts = read_velodyne(root / "training/velodyne/000001.bin").astype(np.float64)
    elev = np.degrees(np.arcsin(pts[:, 2] / np.linalg.norm(pts[:, :3], axis=1)))
    nearest = np.abs(elev[:, None] - beams[None, :]).argmin(1)
    assert np.abs(elev - beams[nearest]).max() < 0.01  # float32 rounding only; beams are >= 1/3 deg apart
    counts = np.bincount(nearest, minlength=64)
    assert counts.min() > 200  # every beam returns
    assert counts[-1] <= 2083  # at most one return per azimuth step


def test_road_is_1_73_m_below_the_sensor(frames: list[SyntheticKittiFrame]) -> None:
    for frame in frames:
        p = frame.points.astype(np.float64)
        near = (np.hypot(p[:, 0], p[:, 1]) < 6.0) & (frame.point_object < 0) & (np.abs(p[:, 1]) < 1.0)
        near &= p[:, 0] > 0
        assert near.sum() > 50
        assert np.median(p[near, 2]) == pytest.approx(-SENSOR_HEIGHT, abs=0.15)


def test_reflectance_follows_incidence_and_material() -> None:
    """Walls of two reflectivities at 60 deg yaw: each return's reflectance = reflectivity x |cos(incidence)|,
    the incidence computed from the point's own direction and the wall normal."""
    for refl in (0.8, 0.4):
        yaw = math.radians(60.0)
        b = SceneBuilder()
        b.add_mesh(*box_mesh(np.array([15.0, 0.0, 0.0]), (0.2, 40.0, 30.0), yaw), 5, reflectance=refl)
        frame = synthesize_frame(b.build(), kitti_like_calib(), np.random.default_rng(0),
                                 LidarSpec(dropout=0.0, intensity_noise=0.0))  # fmt: skip
        p = frame.points.astype(np.float64)
        d = p[:, :3] / np.linalg.norm(p[:, :3], axis=1, keepdims=True)
        expected = refl * np.abs(d @ np.array([math.cos(yaw), math.sin(yaw), 0.0]))
        wall = frame.point_object < 0
        assert wall.sum() > 1000
        assert np.abs(p[wall, 3] - expected[wall]).max() < 1e-3


# ---------------------------------------------------------------------------------------------- scenes


def test_object_sizes_follow_kitti_statistics() -> None:
    rng = np.random.default_rng(0)
    for name, (mean, std) in CLASS_SIZE_STATS.items():
        sizes = np.array([sample_object_size(rng, name) for _ in range(3000)])
        assert sizes.mean(0) == pytest.approx(mean, abs=0.05 * max(mean))
        assert sizes.std(0) == pytest.approx(std, rel=0.35)


def test_scene_meshes_stay_in_their_boxes_and_do_not_collide() -> None:
    solid = [m for m, (name, _, _) in MATERIALS.items() if name in ("building", "wall", "fence", "pole", "trunk")]
    for i in range(4):
        scene = sample_kitti_scene(np.random.default_rng([7, i]))
        boxes = scene.object_boxes().astype(np.float64)
        names = set(scene.object_names())
        assert {"Car"} <= names <= {"Car", "Van", "Truck", "Pedestrian", "Cyclist"}
        grown = boxes.copy()
        grown[:, 3:6] += 0.002
        tri_v = scene.vertices[scene.triangles].reshape(-1, 3)
        owner = np.repeat(scene.object_index, 3)
        for k in range(len(boxes)):
            own = tri_v[owner == k]
            assert points_in_boxes(own, grown[k : k + 1]).all(), f"object {k} pokes out of its box"
            others = tri_v[(owner >= 0) & (owner != k)]
            assert not points_in_boxes(others, boxes[k : k + 1]).any(), f"object {k} intersects another object"
            static = tri_v[np.repeat(np.isin(scene.material, solid), 3)]
            assert not points_in_boxes(static, boxes[k : k + 1]).any(), f"object {k} intersects a structure"
        # Vehicles are aligned with the road (the street is axis-aligned up to its yaw): headings agree mod pi.
        vehicles = np.isin(scene.object_names(), ["Car", "Van", "Truck"])
        rel = np.mod(boxes[vehicles, 6] - boxes[vehicles, 6][0] + 0.5, math.pi) - 0.5
        assert np.abs(rel).max() < 0.3


# ---------------------------------------------------------------------------------------------- labels


def test_written_labels_match_generator_boxes(root: Path, frames: list[SyntheticKittiFrame]) -> None:
    for i, frame in enumerate(frames):
        labels = read_label(root / f"training/label_2/{i:06d}.txt")
        assert list(labels.name) == list(frame.labels.name)
        real = labels.name != "DontCare"
        assert real.any()
        calib = read_calib(root / f"training/calib/{i:06d}.txt")
        back = camera_to_lidar_boxes(labels.location[real], labels.hwl[real], labels.rotation_y[real], calib)
        ours = frame.label_lidar_boxes()
        assert np.abs(back[:, :3] - ours[:, :3]).max() < 0.015  # labels are written with 2 decimals
        assert np.abs(back[:, 3:6] - ours[:, 3:6]).max() < 0.006
        dh = np.mod(back[:, 6] - ours[:, 6] + math.pi, 2 * math.pi) - math.pi
        assert np.abs(dh).max() < 0.006
        assert np.all((labels.rotation_y[real] >= -math.pi - 0.005) & (labels.rotation_y[real] <= math.pi + 0.005))
        assert set(labels.occluded[real]) <= {0, 1, 2, 3} and np.all(labels.truncated[real] >= 0)
        dc = ~real
        assert np.all(labels.location[dc] == -1000) and np.all(labels.occluded[dc] == -1)


def test_labelled_cars_contain_lidar_points(root: Path) -> None:
    for i in range(NUM_FRAMES):
        labels = read_label(root / f"training/label_2/{i:06d}.txt")
        calib = read_calib(root / f"training/calib/{i:06d}.txt")
        cars = labels.name == "Car"
        boxes = camera_to_lidar_boxes(labels.location[cars], labels.hwl[cars], labels.rotation_y[cars], calib)
        counts = count_points_in_boxes(read_velodyne(root / f"training/velodyne/{i:06d}.bin"), boxes)
        assert cars.any() and counts.min() >= 3


def test_only_objects_in_the_camera_view_are_labelled(root: Path, frames: list[SyntheticKittiFrame]) -> None:
    w = IMAGE_SHAPE[1]
    for i, frame in enumerate(frames):
        proj = _projection(root / f"training/calib/{i:06d}.txt")
        labelled = set(frame.label_object.tolist())
        boxes = frame.scene.object_boxes().astype(np.float64)
        outside = 0
        for k, box in enumerate(boxes):
            hom = np.concatenate([_box_corners(box), np.ones((8, 1))], 1) @ proj.T
            depth = hom[:, 2]
            u = hom[:, 0] / np.where(depth > 0, depth, np.nan)
            behind = bool(np.all(depth <= 0))
            off_side = bool(np.all(depth > 0) and (np.all(u < 0) or np.all(u >= w)))
            if behind or off_side:
                outside += 1
                assert k not in labelled, f"frame {i}: object {k} outside the camera view is labelled"
            if k in labelled:
                assert box[0] > 0  # in front of the car
        assert outside > 0  # the scenes extend all around the sensor
        # DontCare rule: small, far or nearly point-less objects only.
        ann = frame.annotations
        for row, k in enumerate(frame.label_object):
            height = ann.bbox[k, 3] - ann.bbox[k, 1]
            small = height < 25 or ann.depth[k] > 70 or ann.num_points[k] < 5
            assert (frame.labels.name[row] == "DontCare") == bool(small)


def test_frames_are_deterministic_per_seed(root: Path, frames: list[SyntheticKittiFrame], tmp_path: Path) -> None:
    for i, frame in enumerate(frames):  # the in-memory regeneration equals what was written
        assert np.array_equal(read_velodyne(root / f"training/velodyne/{i:06d}.bin"), frame.points)
    calib = kitti_like_calib()
    other = synthesize_frame(sample_kitti_scene(np.random.default_rng([1, 0])), calib,
                             np.random.default_rng([1, 0]))  # fmt: skip
    assert len(other.points) != len(frames[0].points) or not np.array_equal(other.points, frames[0].points)
    # Extending a generation keeps the existing frames and adds exactly the frames a one-go run writes.
    out = generate_kitti_frames(tmp_path / "ext", num_frames=1, seed=SEED, progress=False)
    first = (out / "training/velodyne/000000.bin").stat().st_mtime_ns
    generate_kitti_frames(out, num_frames=2, seed=SEED, progress=False)
    assert (out / "training/velodyne/000000.bin").stat().st_mtime_ns == first
    for sub, ext in (("velodyne", ".bin"), ("label_2", ".txt"), ("image_2", ".png")):
        for j in range(2):
            name = f"training/{sub}/{j:06d}{ext}"
            assert (out / name).read_bytes() == (root / name).read_bytes(), name
    assert (out / "ImageSets/val.txt").read_text().split() == ["000001"]


def test_output_root_rules(tmp_path: Path) -> None:
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "x.txt").write_text("mine")
    with pytest.raises(UserError, match="not empty"):
        generate_kitti_frames(foreign, num_frames=1, progress=False)
    with pytest.raises(UserError, match="num_frames must be >= 1"):
        generate_kitti_frames(tmp_path / "a", num_frames=0, progress=False)
    with pytest.raises(UserError, match="num_frames must be a whole number"):
        generate_kitti_frames(tmp_path / "a", num_frames="abc", progress=False)  # type: ignore[arg-type]
    with pytest.raises(UserError, match=r"val_fraction must be in \[0, 1\)"):
        generate_kitti_frames(tmp_path / "a", num_frames=1, val_fraction=1.0, progress=False)
    assert not (tmp_path / "a").exists()
    # A folder written with other settings is refused, then replaced with overwrite.
    out = tmp_path / "b"
    out.mkdir()
    (out / MARKER_NAME).write_text('{"seed": 5}\n')
    with pytest.raises(UserError, match="other settings"):
        generate_kitti_frames(out, num_frames=1, progress=False)
    assert sorted(p.name for p in out.iterdir()) == [MARKER_NAME]


# ---------------------------------------------------------------------------------------------- hand-built scenes


def _street(objects: list[tuple[str, tuple[float, float], tuple[float, float, float], float]],
            walls: list[tuple[tuple[float, float, float], tuple[float, float, float]]] = ()) -> SyntheticKittiFrame:
    """Flat road at z = -1.73, the given road users (name, (x, y), (l, w, h), heading) and walls (centre, size)."""
    b = SceneBuilder()
    b.add_mesh(np.array([[-200, -200, -SENSOR_HEIGHT], [200, -200, -SENSOR_HEIGHT], [200, 200, -SENSOR_HEIGHT],
                         [-200, 200, -SENSOR_HEIGHT]]), np.array([[0, 1, 2], [0, 2, 3]]), 0)  # fmt: skip
    rng = np.random.default_rng(0)
    for name, (x, y), size, heading in objects:
        add_road_user(b, rng, name, np.array([x, y, -SENSOR_HEIGHT]), size, heading)
    for centre, size in walls:
        b.add_mesh(*box_mesh(np.array(centre), size, 0.0), 5)
    return synthesize_frame(b.build(), kitti_like_calib(), np.random.default_rng(1))


def test_truncation_of_an_object_half_outside_the_image() -> None:
    """Slide a car sideways until its projected box is centred on the image's left edge: truncation = 0.5."""
    calib = kitti_like_calib()
    r0 = np.eye(4)
    r0[:3, :3] = calib.R0_rect
    proj = calib.P2 @ r0 @ np.vstack([calib.Tr_velo_to_cam, [0, 0, 0, 1]])
    size = (4.0, 1.7, 1.5)

    def centre_u(y: float) -> float:
        hom = np.concatenate([_box_corners(np.array([12.0, y, -SENSOR_HEIGHT + 0.75, *size, 0.0])),
                              np.ones((8, 1))], 1) @ proj.T  # fmt: skip
        u = hom[:, 0] / hom[:, 2]
        return (u.min() + u.max()) / 2.0

    lo, hi = 0.0, 20.0  # centre_u decreases as the car moves left (+y)
    for _ in range(60):
        mid = (lo + hi) / 2.0
        lo, hi = (mid, hi) if centre_u(mid) > 0 else (lo, mid)
    frame = _street([("Car", (12.0, lo), size, 0.0)])
    assert frame.annotations.in_fov[0]
    assert frame.annotations.truncation[0] == pytest.approx(0.5, abs=0.01)
    assert frame.labels.truncated[0] == pytest.approx(0.5, abs=0.01) and frame.labels.bbox[0, 0] == 0.0
    centred = _street([("Car", (12.0, 0.0), size, 0.0)])
    assert centred.annotations.truncation[0] == 0.0


def test_occlusion_behind_a_wall() -> None:
    car = ("Car", (20.0, 0.0), (4.0, 1.7, 1.5), 0.0)
    clear = _street([car])
    assert clear.annotations.hidden_fraction[0] < 0.02 and clear.labels.occluded[0] == 0
    hidden = _street([car], walls=[((10.0, 0.0, 0.0), (0.3, 12.0, 5.0))])
    assert hidden.annotations.hidden_fraction[0] == 1.0 and hidden.annotations.occlusion[0] == 3
    assert hidden.annotations.num_points[0] == 0 and len(hidden.labels) == 0  # seen by neither sensor
    # A low wall hiding the lower part: partly occluded, still labelled, fewer LiDAR returns on the car.
    low = _street([car], walls=[((10.0, 0.0, -SENSOR_HEIGHT + 0.6), (0.3, 12.0, 1.2))])
    frac = float(low.annotations.hidden_fraction[0])
    assert 0.2 < frac < 0.8 and low.labels.occluded[0] in (1, 2)
    assert 5 < low.annotations.num_points[0] < 0.8 * clear.annotations.num_points[0]


def test_far_and_small_objects_are_dontcare() -> None:
    frame = _street([("Car", (15.0, 0.0), (4.0, 1.7, 1.5), 0.0), ("Truck", (85.0, -3.0), (10.0, 2.6, 3.4), 0.0),
                     ("Pedestrian", (60.0, 4.0), (0.8, 0.6, 1.7), 0.0)])  # fmt: skip
    assert list(frame.labels.name) == ["Car", "DontCare", "DontCare"]
    assert frame.annotations.depth[1] > 70 and frame.annotations.bbox[2, 3] - frame.annotations.bbox[2, 1] < 25
    dc = frame.labels.select(frame.labels.name == "DontCare")
    assert np.all(dc.hwl == -1) and np.all(dc.alpha == -10) and np.all(dc.bbox[:, 2] > dc.bbox[:, 0])
