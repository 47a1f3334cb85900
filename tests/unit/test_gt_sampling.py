"""GT-database sampling: the database builder against the frames it cuts objects from, the sampler's guarantees
(no overlaps, checked with shapely polygons; targets reached; covered scene points removed; filters; same draws
for the same generator state) and the detection dataset with GT sampling on."""

from __future__ import annotations

import math
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from shapely.geometry import Polygon

from sparse3d.datasets.gt_sampling import GtSampler, build_gt_database, load_db_infos
from sparse3d.datasets.kitti import load_frame, read_split
from sparse3d.datasets.kitti_detection import KittiDetectionDataset
from sparse3d.datasets.synth.kitti import MARKER_NAME, generate_kitti_frames
from sparse3d.utils.errors import UserError

RANGE = [0.0, -39.68, -3.0, 69.12, 39.68, 1.0]
CLASSES = ["Car", "Pedestrian", "Cyclist"]


# ----------------------------------------------------------------------------------------------- oracles
def _footprint(box: np.ndarray) -> Polygon:
    """The BEV rectangle of a box, built here from its centre, extents and heading."""
    x, y, _, dx, dy, _, heading = (float(v) for v in box[:7])
    c, s = math.cos(heading), math.sin(heading)
    local = [(dx / 2, dy / 2), (-dx / 2, dy / 2), (-dx / 2, -dy / 2), (dx / 2, -dy / 2)]
    return Polygon([(x + u * c - v * s, y + u * s + v * c) for u, v in local])


def _overlapping_pairs(boxes: np.ndarray) -> list[tuple[int, int]]:
    polys = [_footprint(b) for b in boxes]
    return [(i, j) for i in range(len(polys)) for j in range(i + 1, len(polys))
            if polys[i].intersection(polys[j]).area > 1e-6 * min(polys[i].area, polys[j].area)]


def _in_box(points: np.ndarray, box: np.ndarray, margin: float = 0.0) -> np.ndarray:
    """Points within the box's half-extents (+ margin) in the box frame (float64)."""
    p = points[:, :3].astype(np.float64) - box[:3].astype(np.float64)
    c, s = math.cos(float(box[6])), math.sin(float(box[6]))
    u, v = p[:, 0] * c + p[:, 1] * s, -p[:, 0] * s + p[:, 1] * c
    half = box[3:6].astype(np.float64) / 2 + margin
    return (np.abs(u) <= half[0]) & (np.abs(v) <= half[1]) & (np.abs(p[:, 2]) <= half[2])


# ------------------------------------------------------------------------------------------ the database
@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("kitti_gt")
    generate_kitti_frames(root=root, num_frames=6, val_fraction=0.34, seed=1, num_azimuth=700, progress=False)
    build_gt_database(root, progress=False)
    return root


def test_database_holds_every_train_object_with_its_points(kitti_root: Path) -> None:
    infos = pickle.loads((kitti_root / "kitti_dbinfos_train.pkl").read_bytes())
    train, val = read_split(kitti_root, "train"), read_split(kitti_root, "val")
    assert train and val
    seen = set()
    for name, entries in infos.items():
        for info in entries:
            assert info["name"] == name and info["image_idx"] in train and info["score"] == -1.0
            frame = load_frame(kitti_root, info["image_idx"])
            i = info["gt_idx"]
            assert frame.names[i] == name and info["difficulty"] == frame.difficulty[i]
            np.testing.assert_array_equal(info["box3d_lidar"], frame.boxes[i])
            stored = np.fromfile(kitti_root / info["path"], dtype="<f4").reshape(-1, 4)
            assert stored.shape[0] == info["num_points_in_gt"]
            back = stored.astype(np.float64)
            back[:, :3] += info["box3d_lidar"][:3]
            assert _in_box(back, info["box3d_lidar"], margin=1e-4).all()
            # exactly the scan's points in the box, in scan order (all of the scan, not only the camera's view)
            expected = frame.points[_in_box(frame.points, frame.boxes_float64[i])]
            np.testing.assert_allclose(back, expected, atol=1e-5)
            seen.add((info["image_idx"], i))
    labelled = {(fid, i) for fid in train for i in range(len(load_frame(kitti_root, fid)))}
    assert seen == labelled and len(seen) > 10
    assert sum(info["num_points_in_gt"] for e in infos.values() for info in e) > 100


def test_database_write_is_all_or_nothing(kitti_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "kitti"
    shutil.copytree(kitti_root, root)
    before = {p.name: p.read_bytes() for p in (root / "gt_database").iterdir()}
    info_before = (root / "kitti_dbinfos_train.pkl").read_bytes()
    last = read_split(root, "train")[-1]
    (root / "training" / "label_2" / f"{last}.txt").write_text("Car 0 0 0 1 2 3\n")
    with pytest.raises(UserError, match=f"{last}.txt"):
        build_gt_database(root, progress=False)
    assert {p.name: p.read_bytes() for p in (root / "gt_database").iterdir()} == before
    assert (root / "kitti_dbinfos_train.pkl").read_bytes() == info_before
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging left
    with pytest.raises(UserError, match="overwrite"):
        build_gt_database(root, overwrite=False, progress=False)
    fresh = tmp_path / "fresh_out"
    with pytest.raises(UserError, match=f"{last}.txt"):
        build_gt_database(root, out_dir=fresh, progress=False)
    assert not fresh.exists()


def test_database_class_selection(kitti_root: Path, tmp_path: Path) -> None:
    build_gt_database(kitti_root, classes=["Pedestrian"], out_dir=tmp_path, progress=False)
    infos = load_db_infos(tmp_path / "kitti_dbinfos_train.pkl")
    assert list(infos) == ["Pedestrian"]
    assert sorted(p.name for p in (tmp_path / "gt_database").iterdir()) == sorted(
        Path(i["path"]).name for i in infos["Pedestrian"])


# ------------------------------------------------------------------------------------------- the sampler
def _box(x: float, y: float, dx: float, dy: float, heading: float, z: float = -1.0, dz: float = 1.6) -> np.ndarray:
    return np.array([x, y, z, dx, dy, dz, heading], dtype=np.float32)


def _points_in(box: np.ndarray, n: int, rng: np.random.Generator, feature: float) -> np.ndarray:
    local = rng.uniform(-0.45, 0.45, (n, 3)) * box[3:6]
    c, s = math.cos(box[6]), math.sin(box[6])
    xyz = np.column_stack([local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c, local[:, 2]])
    return np.column_stack([xyz + box[:3], np.full(n, feature)]).astype(np.float32)


def _make_db(root: Path, specs: list[tuple[str, np.ndarray, int, int]], seed: int = 0) -> Path:
    """A database of hand-placed objects: (name, box, points, difficulty); object k's points carry feature k."""
    rng = np.random.default_rng(seed)
    (root / "gt_database").mkdir(parents=True)
    infos: dict[str, list[dict]] = {}
    for k, (name, box, n, difficulty) in enumerate(specs):
        pts = _points_in(box, n, rng, float(k))
        pts[:, :3] -= box[:3]
        path = f"gt_database/{k:06d}_{name}_0.bin"
        pts.tofile(root / path)
        infos.setdefault(name, []).append({"name": name, "path": path, "image_idx": f"{k:06d}", "gt_idx": 0,
                                           "box3d_lidar": box, "num_points_in_gt": n, "difficulty": difficulty,
                                           "bbox": np.zeros(4, np.float32), "score": -1.0})
    info_path = root / "kitti_dbinfos_train.pkl"
    info_path.write_bytes(pickle.dumps(infos))
    return info_path


def _scene(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    boxes = np.stack([_box(10, 0, 4, 1.8, 0.3), _box(20, 5, 4.2, 1.9, -1.0), _box(15, -6, 0.8, 0.7, 2.0)])
    names = np.array(["Car", "Car", "Pedestrian"])
    background = np.column_stack([rng.uniform([0, -30, -2], [60, 30, 0], (6000, 3)), np.full(6000, -1.0)])
    return background.astype(np.float32), boxes, names


def test_sampler_fills_targets_without_overlaps_and_replaces_covered_points(tmp_path: Path) -> None:
    # 12 cars and 8 pedestrians on a grid far from the scene's boxes: all fit, so the targets are reached exactly
    specs = [("Car", _box(35 + 7 * (k % 4), -20 + 8 * (k // 4), 4, 1.8, 0.1 * k), 30 + k, 0) for k in range(12)]
    specs += [("Pedestrian", _box(5 + 3 * k, 20, 0.8, 0.7, 0.5 * k), 12, 1) for k in range(8)]
    sampler = GtSampler.from_file(_make_db(tmp_path, specs), {"Car": 6, "Pedestrian": 4},
                                  {"Car": 5, "Pedestrian": 5})
    points, boxes, names = _scene(np.random.default_rng(0))
    out = sampler(points, boxes, names, np.random.default_rng(1))
    assert out.sampled == 4 + 3
    assert list(out.names).count("Car") == 6 and list(out.names).count("Pedestrian") == 4
    np.testing.assert_array_equal(out.boxes[:3], boxes)
    assert _overlapping_pairs(out.boxes) == []
    new = out.boxes[3:]
    scene_left = out.points[out.points[:, 3] == -1.0]
    for box in new:  # no scene point is left inside a pasted box, and none outside was removed
        assert not _in_box(scene_left, box).any()
    outside = ~np.any([_in_box(points, b) for b in new], axis=0)
    assert len(scene_left) == outside.sum() < len(points)
    for box, name in zip(new, out.names[3:]):  # each pasted box carries exactly its own object's points
        k = next(k for k, s in enumerate(specs) if s[0] == name and np.array_equal(s[1], box))
        mine = out.points[out.points[:, 3] == k]
        assert len(mine) == specs[k][2] and _in_box(mine, box, margin=1e-5).all()


def test_sampler_rejects_overlaps_in_crowded_draws(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    specs = [("Car", _box(rng.uniform(5, 25), rng.uniform(-8, 8), 4, 1.8, rng.uniform(-np.pi, np.pi)), 20, 0)
             for _ in range(60)]
    sampler = GtSampler.from_file(_make_db(tmp_path, specs), {"Car": 40})
    points, boxes, names = _scene(np.random.default_rng(0))
    total = 0
    for seed in range(5):
        out = sampler(points, boxes, names, np.random.default_rng(seed))
        assert _overlapping_pairs(out.boxes) == []
        assert 0 < out.sampled < 38  # the area cannot hold 38 more cars
        total += out.sampled
    assert total > 5


def test_sampler_draws_depend_on_the_generator_only(tmp_path: Path) -> None:
    specs = [("Car", _box(30 + 6 * (k % 5), -15 + 7 * (k // 5), 4, 1.8, 0.0), 25, 0) for k in range(20)]
    sampler = GtSampler.from_file(_make_db(tmp_path, specs), {"Car": 8})
    points, boxes, names = _scene(np.random.default_rng(0))
    a = sampler(points, boxes, names, np.random.default_rng(11))
    b = sampler(points, boxes, names, np.random.default_rng(11))
    c = sampler(points, boxes, names, np.random.default_rng(12))
    assert np.array_equal(a.points, b.points) and np.array_equal(a.boxes, b.boxes) and list(a.names) == list(b.names)
    assert not np.array_equal(a.boxes, c.boxes)


def test_sampler_filters_min_points_and_difficulty(tmp_path: Path) -> None:
    specs = [("Car", _box(30 + 6 * (k % 5), -15 + 7 * (k // 5), 4, 1.8, 0.0), n, d)
             for k, (n, d) in enumerate([(3, 0), (4, 1), (10, -1), (12, 2), (5, 0), (30, -1), (6, 1), (2, 2)])]
    sampler = GtSampler.from_file(_make_db(tmp_path, specs), {"Car": 10}, {"Car": 5})
    allowed = {k for k, s in enumerate(specs) if s[2] >= 5 and s[3] != -1}
    assert sampler.pool_size("Car") == len(allowed) == 3
    points, boxes, names = _scene(np.random.default_rng(0))
    for seed in range(4):
        out = sampler(points, boxes, names, np.random.default_rng(seed))
        used = {int(f) for f in np.unique(out.points[:, 3]) if f >= 0}
        assert used == allowed and out.sampled == 3
    # OpenPCDet's list form and no difficulty filter: objects of difficulty -1 become drawable
    loose = GtSampler.from_file(tmp_path / "kitti_dbinfos_train.pkl", ["Car:10"], ["Car:5"], filter_difficulty=[])
    assert loose.pool_size("Car") == 5


def test_sampler_refuses_a_point_file_that_disagrees_with_its_info(tmp_path: Path) -> None:
    info_path = _make_db(tmp_path, [("Car", _box(40, 0, 4, 1.8, 0.0), 20, 0)])
    (tmp_path / "gt_database" / "000000_Car_0.bin").write_bytes(bytes(16 * 7))
    sampler = GtSampler.from_file(info_path, {"Car": 5})
    points, boxes, names = _scene(np.random.default_rng(0))
    with pytest.raises(UserError, match="000000_Car_0.bin"):
        sampler(points, boxes, names, np.random.default_rng(0))


# ------------------------------------------------------------------------------------------- the dataset
def test_dataset_with_gt_sampling_has_more_objects(kitti_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "generated"
    shutil.copytree(kitti_root, root, ignore=shutil.ignore_patterns("gt_database", "kitti_dbinfos_*"))
    augment = {"flip_x": True, "rotation": [-0.78, 0.78]}
    plain = KittiDetectionDataset(root, "train", CLASSES, RANGE, augment=augment, seed=3)
    # a generated root builds its database on first use
    sampled = KittiDetectionDataset(root, "train", CLASSES, RANGE, augment={**augment, "gt_sampling": {}}, seed=3)
    assert (root / "kitti_dbinfos_train.pkl").is_file()
    more = 0
    for i in range(len(plain)):
        a, b = sampled[i], plain[i]
        assert len(a["gt_boxes"]) >= len(b["gt_boxes"])
        more += len(a["gt_boxes"]) - len(b["gt_boxes"])
        assert _overlapping_pairs(a["gt_boxes"].numpy()) == []
        assert torch.equal(a["points"], sampled[i]["points"])  # same (seed, epoch, index), same sample
    assert more >= len(plain)
    sampled.set_epoch(1)
    assert any(not torch.equal(sampled[i]["gt_boxes"], plain[i]["gt_boxes"]) for i in range(len(plain)))


def test_dataset_refuses_a_missing_database_for_real_data(kitti_root: Path, tmp_path: Path) -> None:
    root = tmp_path / "real"
    shutil.copytree(kitti_root, root, ignore=shutil.ignore_patterns("gt_database", "kitti_dbinfos_*", MARKER_NAME))
    with pytest.raises(UserError, match="sparse3d-data kitti_gt_database root="):
        KittiDetectionDataset(root, "train", CLASSES, RANGE, augment={"gt_sampling": {}})
    assert not (root / "kitti_dbinfos_train.pkl").exists()
    ds = KittiDetectionDataset(root, "train", CLASSES, RANGE, augment={"gt_sampling": {"build_if_missing": True}})
    assert ds.gt_sampler is not None and ds.gt_sampler.pool_size("Car") > 0
