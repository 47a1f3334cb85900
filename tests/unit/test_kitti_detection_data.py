"""The detection data path: global augmentations keep every point in its box, the KITTI Dataset draws its
augmentation from (seed, epoch, index), and detections convert back to the label rows they came from."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse3d.datasets.detection_augment import (
    GlobalAugment,
    flip_x,
    flip_y,
    in_range_masks,
    rotate_z,
    scale,
    translate,
)
from sparse3d.datasets.kitti import detections_to_objects, load_frame, read_split
from sparse3d.datasets.kitti_detection import KittiDetectionDataset, collate_detection
from sparse3d.datasets.synth.kitti import generate_kitti_frames
from sparse3d.geometry.boxes import points_in_boxes

RANGE = [0.0, -39.68, -3.0, 69.12, 39.68, 1.0]


@pytest.fixture(scope="module")
def kitti_root(tmp_path_factory: pytest.TempPathFactory):
    root = tmp_path_factory.mktemp("kitti")
    generate_kitti_frames(root=root, num_frames=4, val_fraction=0.5, seed=1, num_azimuth=700, progress=False)
    return root


def _scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    boxes = np.column_stack([rng.uniform(5, 40, 6), rng.uniform(-20, 20, 6), rng.uniform(-1, 0, 6),
                             rng.uniform(1, 5, 6), rng.uniform(0.5, 2, 6), rng.uniform(1, 2, 6),
                             rng.uniform(-np.pi, np.pi, 6)]).astype(np.float32)
    points = [rng.uniform([0, -25, -3, 0], [45, 25, 1, 1], (4000, 4))]
    for b in boxes:  # 50 points well inside each box
        local = rng.uniform(-0.45, 0.45, (50, 3)) * b[3:6]
        c, s = np.cos(b[6]), np.sin(b[6])
        xyz = np.column_stack([local[:, 0] * c - local[:, 1] * s, local[:, 0] * s + local[:, 1] * c, local[:, 2]]) + b[:3]
        points.append(np.column_stack([xyz, rng.uniform(0, 1, 50)]))
    return np.concatenate(points).astype(np.float32), boxes


@pytest.mark.parametrize("transform", [
    flip_x, flip_y, lambda p, b: rotate_z(p, b, 0.7), lambda p, b: scale(p, b, 1.04),
    lambda p, b: translate(p, b, (0.3, -0.2, 0.1)),
    lambda p, b: GlobalAugment(flip_y=True, translation_std=0.5)(p, b, np.random.default_rng(3)),
])
def test_augmentations_keep_each_point_in_its_box(transform):
    points, boxes = _scene()
    before = points_in_boxes(points, boxes)
    assert before.sum() > 20
    p2, b2 = transform(points, boxes)
    after = points_in_boxes(p2, b2)
    # a point exactly on a face may flip by float rounding; none is within 1e-4 m here by construction of uniforms
    assert np.array_equal(before, after)
    assert p2.shape == points.shape and np.array_equal(p2[:, 3], points[:, 3])
    # the heading keeps pointing at the same end of the object: the front-centre point moves with the scene
    def front(b: np.ndarray) -> np.ndarray:
        return b[:, :3] + 0.5 * b[:, 3:4] * np.column_stack([np.cos(b[:, 6]), np.sin(b[:, 6]), np.zeros(len(b))])

    moved, _ = transform(np.column_stack([front(boxes), np.zeros(len(boxes))]).astype(np.float32), boxes)
    np.testing.assert_allclose(moved[:, :3], front(b2), atol=1e-4)


def test_range_masks_keep_boxes_with_a_corner_inside():
    points = np.array([[1.0, 0.0, 0.0, 0.0], [-1.0, 0.0, 0.0, 0.0], [69.12, 0.0, 0.0, 0.0]], dtype=np.float32)
    boxes = np.array([[0.5, 0, 0, 2, 1, 1, 0], [-1.5, 0, 0, 2, 1, 1, 0], [-0.9, 0, 0, 2, 1, 1, 0]], dtype=np.float32)
    pts, bx = in_range_masks(points, boxes, RANGE)
    assert pts.tolist() == [True, False, False] and bx.tolist() == [True, False, True]


def test_dataset_draws_depend_on_seed_epoch_and_index_only(kitti_root):
    ds = KittiDetectionDataset(kitti_root, "train", ["Car", "Pedestrian", "Cyclist"], RANGE,
                               augment={"flip_x": True, "rotation": [-0.78, 0.78], "scaling": [0.95, 1.05]}, seed=7)
    first = ds[0]
    assert torch.equal(ds[1]["points"], ds[1]["points"]) and torch.equal(ds[0]["points"], first["points"])
    ds.set_epoch(1)
    assert not torch.equal(ds[0]["points"], first["points"])
    ds.set_epoch(0)
    assert torch.equal(ds[0]["points"], first["points"])
    plain = KittiDetectionDataset(kitti_root, "train", ["Car"], RANGE)
    item = plain[0]
    frame = load_frame(kitti_root, plain.frame_ids[0], fov_only=True)
    cars = frame.boxes[frame.names == "Car"]
    assert item["gt_labels"].tolist() == [0] * len(cars) and np.allclose(item["gt_boxes"].numpy(), cars)
    pts = item["points"].numpy()
    assert len(pts) == len(frame.points[np.all((frame.points[:, :3] >= RANGE[:3]) & (frame.points[:, :3] < RANGE[3:]), 1)])
    batch = collate_detection([plain[0], plain[1]])
    assert batch["batch_size"] == 2 and batch["points"].shape[0] == batch["batch_idx"].shape[0]
    assert batch["batch_idx"].tolist().count(1) == plain[1]["points"].shape[0]


def test_detections_convert_back_to_their_label_rows(kitti_root):
    fid = read_split(kitti_root, "val")[0]
    frame = load_frame(kitti_root, fid)
    assert len(frame.boxes) > 0
    objs = detections_to_objects(frame.boxes, np.ones(len(frame.boxes)), list(frame.names), frame.calib,
                                 frame.image_shape)
    labels = frame.objects.select(frame.objects.name != "DontCare")
    assert list(objs.name) == list(labels.name)
    np.testing.assert_allclose(objs.location, labels.location, atol=2e-2)  # label files carry 2 decimals
    np.testing.assert_allclose(objs.hwl, labels.hwl, atol=1e-2)
    dr = (objs.rotation_y - labels.rotation_y + np.pi) % (2 * np.pi) - np.pi
    assert np.abs(dr).max() < 2e-2
    # 2-D boxes: the projected 3-D box spans the labelled 2-D box (labels of generated data come from the same
    # projection, truncated to the image)
    np.testing.assert_allclose(objs.bbox, labels.bbox, atol=1.0)
