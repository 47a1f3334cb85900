"""Synthetic LiDAR generator + SemanticKITTI reader: determinism, format, and physics/geometry oracles."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from sparse3d.datasets.semantic_kitti import SemanticKittiDataset, collate_point_batches
from sparse3d.datasets.synth.lidar import (
    CONFIG_NAME,
    LEARNING_MAP,
    SENSOR_HEIGHT,
    beam_elevations_deg,
    generate_lidar_scenes,
)
from sparse3d.io.pointcloud import read_kitti_bin, read_semantic_kitti_label

RAW_IDS = {10, 40, 50, 70, 71, 80}
MAX_RANGE = 60.0
NOISE = 0.01
TOL = 6 * NOISE + 1e-3  # range noise is along the ray, so a point is within ~6 sigma of its surface


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four default-sized scenes: three training, one validation."""
    return generate_lidar_scenes(tmp_path_factory.mktemp("lidar"), num_scenes=4, val_scenes=1, progress=False)


def _scans(root: Path) -> list[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict, dict]]:
    """(frame_id, points, semantic, instance, layout, sequence-doc) for every generated scan."""
    out = []
    for seq_dir in sorted((root / "sequences").iterdir()):
        doc = json.loads((seq_dir / "scene_layout.json").read_text())
        for scan in sorted((seq_dir / "velodyne").glob("*.bin")):
            pts = read_kitti_bin(scan)
            sem, inst = read_semantic_kitti_label(seq_dir / "labels" / f"{scan.stem}.label", len(pts))
            out.append((f"{seq_dir.name}/{scan.stem}", pts, sem, inst, doc["frames"][scan.stem], doc))
    return out


def _small(root: Path, seed: int) -> Path:
    return generate_lidar_scenes(
        root, num_scenes=2, val_scenes=1, seed=seed, num_beams=8, points_per_beam=256, progress=False
    )


# ---------------------------------------------------------------------------------------------- generator


def test_layout_and_config_match_semantic_kitti(root: Path) -> None:
    assert sorted(p.name for p in (root / "sequences/00/velodyne").iterdir()) == [
        "000000.bin",
        "000001.bin",
        "000002.bin",
    ]
    assert sorted(p.name for p in (root / "sequences/00/labels").iterdir()) == [
        "000000.label",
        "000001.label",
        "000002.label",
    ]
    assert sorted(p.name for p in (root / "sequences/01/velodyne").iterdir()) == ["000000.bin"]
    cfg = yaml.safe_load((root / CONFIG_NAME).read_text())
    assert cfg["labels"] == {
        0: "unlabeled",
        10: "car",
        40: "road",
        50: "building",
        70: "vegetation",
        71: "trunk",
        80: "pole",
    }
    assert cfg["learning_map"] == {0: 0, 10: 1, 40: 2, 50: 3, 70: 4, 71: 4, 80: 5}
    assert cfg["learning_map_inv"] == {0: 0, 1: 10, 2: 40, 3: 50, 4: 70, 5: 80}
    assert cfg["split"]["train"] == [0] and cfg["split"]["valid"] == [1]
    assert all(cfg["learning_map"][cfg["learning_map_inv"][i]] == i for i in range(6))


def test_points_per_scene_labels_and_reflectance(root: Path) -> None:
    for _, pts, sem, inst, _, _ in _scans(root):
        assert 28_000 <= len(pts) <= 32 * 1024
        assert set(np.unique(sem).tolist()) <= RAW_IDS
        assert {10, 40} <= set(np.unique(sem).tolist())
        assert np.all((pts[:, 3] >= 0) & (pts[:, 3] <= 1))
        assert np.all((inst > 0) == (sem == 10)), "instance ids exactly on car points"


def test_instance_ids_unique_within_a_sequence(root: Path) -> None:
    seen: dict[str, set[int]] = {}
    for frame_id, _, _, inst, layout, _ in _scans(root):
        ids = {b["instance"] for b in layout["boxes"] if b["kind"] == "car"}
        assert set(np.unique(inst[inst > 0]).tolist()) <= ids
        seq = frame_id.split("/")[0]
        assert not (seen.setdefault(seq, set()) & ids)
        seen[seq] |= ids


def test_range_and_beam_angles(root: Path) -> None:
    elev = np.deg2rad(beam_elevations_deg(32))
    for _, pts, _, _, layout, doc in _scans(root):
        xyz = pts[:, :3].astype(np.float64)
        rng = np.linalg.norm(xyz, axis=1)
        assert rng.max() <= MAX_RANGE
        e = np.arctan2(xyz[:, 2], np.hypot(xyz[:, 0], xyz[:, 1]))
        assert np.abs(e[:, None] - elev[None, :]).min(axis=1).max() < 1e-4
        step = 2 * math.pi / doc["points_per_beam"]
        k = (np.arctan2(xyz[:, 1], xyz[:, 0]) - layout["azimuth_offset_rad"]) / step
        assert np.abs(k - np.round(k)).max() * step < 1e-4


def test_ground_points_lie_on_the_ground_plane(root: Path) -> None:
    for _, pts, sem, _, layout, _ in _scans(root):
        g = layout["ground"]
        assert g["z0"] == pytest.approx(-SENSOR_HEIGHT)
        road = pts[sem == 40].astype(np.float64)
        height = g["z0"] + g["slope"][0] * road[:, 0] + g["slope"][1] * road[:, 1]
        assert np.abs(road[:, 2] - height).max() < TOL
        # ... and nothing else is below ground.
        other = pts[sem != 40].astype(np.float64)
        assert np.all(
            other[:, 2] >= g["z0"] + g["slope"][0] * other[:, 0] + g["slope"][1] * other[:, 1] - TOL
        )


def _box_surface_distance(p: np.ndarray, box: dict) -> tuple[np.ndarray, np.ndarray]:
    """(outside distance, distance to the nearest face from inside) of points p to an oriented box."""
    c, h = np.asarray(box["center"]), box["heading"]
    q = p - c
    local = np.stack(
        [
            math.cos(h) * q[:, 0] + math.sin(h) * q[:, 1],
            -math.sin(h) * q[:, 0] + math.cos(h) * q[:, 1],
            q[:, 2],
        ],
        1,
    )
    excess = np.abs(local) - np.asarray(box["size"]) / 2
    outside = np.linalg.norm(np.maximum(excess, 0), axis=1)
    return outside, np.abs(excess).min(axis=1)


def test_every_point_lies_on_a_primitive_of_its_class(root: Path) -> None:
    """Labels agree with geometry: car points on their own instance's box, buildings on a building box,
    poles/trunks on a cylinder side, vegetation on a crown sphere."""
    for _, pts, sem, inst, layout, _ in _scans(root):
        xyz = pts[:, :3].astype(np.float64)
        for box in [b for b in layout["boxes"] if b["kind"] == "car"]:
            mine = xyz[inst == box["instance"]]
            if len(mine):
                outside, to_face = _box_surface_distance(mine, box)
                assert outside.max() < TOL and to_face.max() < TOL
        buildings = xyz[sem == 50]
        best = np.full(len(buildings), np.inf)
        for box in [b for b in layout["boxes"] if b["kind"] == "building"]:
            outside, to_face = _box_surface_distance(buildings, box)
            best = np.minimum(best, np.where(outside > 0, outside, to_face))
        assert len(buildings) == 0 or best.max() < TOL
        for raw, kind in ((80, "pole"), (71, "trunk")):
            pts_k = xyz[sem == raw]
            best = np.full(len(pts_k), np.inf)
            for cyl in [c for c in layout["cylinders"] if c["kind"] == kind]:
                radial = np.abs(
                    np.hypot(pts_k[:, 0] - cyl["center_xy"][0], pts_k[:, 1] - cyl["center_xy"][1])
                    - cyl["radius"]
                )
                in_z = (pts_k[:, 2] >= cyl["z_min"] - TOL) & (pts_k[:, 2] <= cyl["z_max"] + TOL)
                best = np.minimum(best, np.where(in_z, radial, np.inf))
            assert len(pts_k) == 0 or best.max() < TOL
        veg = xyz[sem == 70]
        best = np.full(len(veg), np.inf)
        for s in layout["spheres"]:
            best = np.minimum(
                best, np.abs(np.linalg.norm(veg - np.asarray(s["center"]), axis=1) - s["radius"])
            )
        assert len(veg) == 0 or best.max() < TOL


def test_cars_are_clear_of_each_other_buildings_and_the_sensor(root: Path) -> None:
    for *_, layout, _ in _scans(root):
        boxes = layout["boxes"]
        cars = [b for b in boxes if b["kind"] == "car"]
        assert cars
        for car in cars:
            outside, _ = _box_surface_distance(np.zeros((1, 3)), car)
            assert outside[0] > 0.5, "sensor inside or touching a car"
            # A grid over the car's volume must not enter any other car or building.
            g = np.stack(np.meshgrid(*[np.linspace(-0.45, 0.45, 5)] * 3, indexing="ij"), -1).reshape(-1, 3)
            local = g * np.asarray(car["size"])
            h = car["heading"]
            world = np.asarray(car["center"]) + np.stack(
                [
                    math.cos(h) * local[:, 0] - math.sin(h) * local[:, 1],
                    math.sin(h) * local[:, 0] + math.cos(h) * local[:, 1],
                    local[:, 2],
                ],
                1,
            )
            for other in boxes:
                if other is not car:
                    outside, _ = _box_surface_distance(world, other)
                    assert np.all(outside > 0), (car, other)


def test_nearest_hit_wins_no_point_behind_a_car(root: Path) -> None:
    """Occlusion oracle: a ray that ends on a non-car surface never passed through a car box first."""
    _, pts, sem, _, layout, _ = _scans(root)[0]
    far = pts[sem != 10, :3].astype(np.float64)
    r = np.linalg.norm(far, axis=1)
    d = far / r[:, None]
    grazing = 0
    for box in [b for b in layout["boxes"] if b["kind"] == "car"]:
        c = np.asarray(box["center"])
        radius = np.linalg.norm(box["size"]) / 2
        along = d @ c
        near = (np.linalg.norm(c - along[:, None] * d, axis=1) < radius) & (along > 0) & (r > along - radius)
        grazing += int(near.sum())
        for frac in np.linspace(0.0, 1.0, 60):  # probe each candidate ray up to 0.1 m before its end
            t = np.clip(along[near] - radius + 2 * radius * frac, 0.0, r[near] - 0.1)
            probe = d[near] * t[:, None]
            outside, to_face = _box_surface_distance(probe, box)
            assert not np.any((outside == 0) & (to_face > 0.03))
    assert grazing > 100  # the check is not vacuous: many rays pass by cars


def test_same_seed_same_bytes_different_seed_differs(tmp_path: Path) -> None:
    a, b, c = _small(tmp_path / "a", 7), _small(tmp_path / "b", 7), _small(tmp_path / "c", 8)
    files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
    assert len(files) == 7  # 2 scans + 2 labels + 2 layouts + yaml
    for rel in files:
        assert (a / rel).read_bytes() == (b / rel).read_bytes(), rel
    assert (a / "sequences/00/velodyne/000000.bin").read_bytes() != (
        c / "sequences/00/velodyne/000000.bin"
    ).read_bytes()


def test_existing_set_is_reused_mismatch_refused_overwrite_regenerates(tmp_path: Path) -> None:
    root = _small(tmp_path / "s", 1)
    scan = root / "sequences/00/velodyne/000000.bin"
    scan.write_bytes(b"\x00" * 16)  # sentinel: reuse must not touch it
    _small(root, 1)
    assert scan.read_bytes() == b"\x00" * 16
    with pytest.raises(FileExistsError, match="overwrite=True"):
        _small(root, 2)
    generate_lidar_scenes(root, num_scenes=3, val_scenes=1, seed=1, num_beams=8, points_per_beam=256,
                          overwrite=True, progress=False)  # fmt: skip
    assert len(read_kitti_bin(scan)) > 1
    assert len(list((root / "sequences/00/velodyne").glob("*.bin"))) == 2
    # Shrinking the set with overwrite removes the stale scans.
    generate_lidar_scenes(root, num_scenes=2, val_scenes=1, seed=1, num_beams=8, points_per_beam=256,
                          overwrite=True, progress=False)  # fmt: skip
    assert len(list((root / "sequences/00/velodyne").glob("*.bin"))) == 1


def test_refuses_to_write_into_a_foreign_dataset(tmp_path: Path) -> None:
    foreign = tmp_path / "kitti" / "sequences" / "00" / "velodyne"
    foreign.mkdir(parents=True)
    (foreign / "000000.bin").write_bytes(b"\x00" * 16)
    with pytest.raises(FileExistsError, match="not generated by sparse3d"):
        _small(tmp_path / "kitti", 0)


def test_generator_argument_validation(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="val_scenes"):
        generate_lidar_scenes(tmp_path, num_scenes=2, val_scenes=2, progress=False)
    with pytest.raises(ValueError, match="num_scenes"):
        generate_lidar_scenes(tmp_path, num_scenes=0, progress=False)


# ---------------------------------------------------------------------------------------------- dataset


def test_dataset_returns_learning_mapped_labels(root: Path) -> None:
    ds = SemanticKittiDataset(root, split="train")
    assert len(ds) == 3 and ds.frame_ids == ["00/000000", "00/000001", "00/000002"]
    assert ds.num_classes == 6
    assert ds.class_names == ["unlabeled", "car", "road", "building", "vegetation", "pole"]
    item = ds[1]
    raw, _ = read_semantic_kitti_label(root / "sequences/00/labels/000001.label")
    pts = read_kitti_bin(root / "sequences/00/velodyne/000001.bin")
    assert item["frame_id"] == "00/000001"
    assert item["points"].dtype == torch.float32 and item["labels"].dtype == torch.int64
    assert torch.equal(item["points"], torch.from_numpy(pts))
    assert item["labels"].tolist() == [LEARNING_MAP[int(r)] for r in raw]
    assert 0 < item["labels"].min() and item["labels"].max() <= 5

    val = SemanticKittiDataset(root, split="val")
    assert val.frame_ids == ["01/000000"]


def test_dataset_crop_subsample_and_augment(root: Path) -> None:
    pr = [0.0, -20.0, -3.0, 40.0, 20.0, 1.0]
    full = SemanticKittiDataset(root)[0]["points"].numpy()
    cropped = SemanticKittiDataset(root, point_range=pr)[0]["points"].numpy()
    lo, hi = np.array(pr[:3]), np.array(pr[3:])
    expected = full[np.all((full[:, :3] >= lo) & (full[:, :3] < hi), axis=1)]
    assert len(expected) > 1000 and np.array_equal(cropped, expected)

    sub = SemanticKittiDataset(root, max_points=5000)
    first, again = sub[0], sub[0]
    assert len(first["points"]) == 5000 and torch.equal(first["points"], again["points"])

    aug = SemanticKittiDataset(root, augment=True, seed=3)
    plain = SemanticKittiDataset(root)[0]
    a = aug[0]
    assert torch.equal(aug[0]["points"], a["points"])  # the draws depend on (seed, epoch, index) only
    aug.set_epoch(1)
    assert not torch.equal(aug[0]["points"], a["points"])  # a new epoch draws anew
    assert torch.equal(a["labels"], plain["labels"])
    # Rotation about z and a y flip preserve norms; the scale multiplies them all by one factor in [0.95, 1.05].
    ratio = a["points"][:, :3].norm(dim=1) / plain["points"][:, :3].norm(dim=1)
    assert 0.95 <= ratio.min() and ratio.max() <= 1.05 and (ratio.max() - ratio.min()) < 1e-4
    assert torch.allclose(a["points"][:, 2], plain["points"][:, 2] * ratio.mean(), atol=1e-4)
    assert torch.equal(a["points"][:, 3], plain["points"][:, 3])


def test_collate_concatenates_with_batch_index(root: Path) -> None:
    ds = SemanticKittiDataset(root, point_range=[-30, -30, -3, 30, 30, 2])
    items = [ds[0], ds[2]]
    batch = collate_point_batches(items)
    n0, n1 = len(items[0]["points"]), len(items[1]["points"])
    assert batch["points"].shape == (n0 + n1, 4) and batch["points"].dtype == torch.float32
    assert batch["batch_idx"].dtype == torch.int32 and batch["labels"].dtype == torch.int64
    assert torch.equal(batch["batch_idx"], torch.cat([torch.zeros(n0), torch.ones(n1)]).int())
    assert torch.equal(batch["points"][n0:], items[1]["points"]) and torch.equal(
        batch["labels"][:n0], items[0]["labels"]
    )
    assert batch["batch_size"] == 2 and batch["frame_ids"] == ["00/000000", "00/000002"]
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=collate_point_batches)
    assert next(iter(loader))["batch_idx"].max().item() == 2


def test_dataset_reads_semantic_kitti_yaml_name(root: Path, tmp_path: Path) -> None:
    copy = tmp_path / "kitti"
    shutil.copytree(root, copy)
    (copy / CONFIG_NAME).rename(copy / "semantic-kitti.yaml")
    assert len(SemanticKittiDataset(copy, split="valid")) == 1


def test_dataset_errors(root: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"sparse3d-data lidar.*data\.root"):
        SemanticKittiDataset(tmp_path / "nowhere")
    broken = tmp_path / "broken"
    shutil.copytree(root, broken)
    (broken / "sequences/00/labels/000001.label").unlink()
    with pytest.raises(FileNotFoundError, match=r"000001\.label.*missing"):
        SemanticKittiDataset(broken)
    shutil.copy(broken / "sequences/00/labels/000000.label", broken / "sequences/00/labels/000001.label")
    with pytest.raises(ValueError, match=r"000001\.label.*does not belong"):
        SemanticKittiDataset(broken)[1]
    with pytest.raises(ValueError, match="no sequences"):
        SemanticKittiDataset(root, split="test")
    (broken / CONFIG_NAME).unlink()
    with pytest.raises(FileNotFoundError, match="semantic-kitti.yaml"):
        SemanticKittiDataset(broken)
