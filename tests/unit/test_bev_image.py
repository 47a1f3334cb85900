"""The numpy/OpenCV BEV raster (:mod:`sparse3d.vis.bev`) and the detection task's TensorBoard images, checked
against hand-computed pixel positions; no Open3D involved."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from sparse3d.vis import colors as C
from sparse3d.vis.bev import BevGrid, bev_image

GT = np.array(np.rint(np.array(C.GT_BOX_COLOR) * 255), np.uint8)
PRED = np.array(np.rint(np.array(C.PRED_BOX_COLOR) * 255), np.uint8)
# 40 m x 40 m at 0.1 m: x in [0, 40) up the image, y in [-20, 20) right to left; 400 x 400 pixels
GRID = BevGrid((0.0, 40.0), (-20.0, 20.0), 0.1)


def _is(image: np.ndarray, row: int, col: int, color: np.ndarray, radius: int = 1) -> bool:
    patch = image[row - radius: row + radius + 1, col - radius: col + radius + 1]
    return bool(np.all(patch == color, axis=-1).any())


def test_grid_layout_by_hand() -> None:
    assert GRID.shape == (400, 400)
    # x = 39.95 (top row), y = 19.95 (leftmost column); x = 10, y = -5 -> row 300, col 250
    np.testing.assert_allclose(GRID.to_pixel(np.array([[39.95, 19.95], [10.0, -5.0]])), [[0.5, 0.5], [250, 300]])
    assert BevGrid.from_point_range([0, -40, -3, 70.4, 40, 1], 0.2).shape == (352, 400)
    with pytest.raises(ValueError, match="x_range"):
        BevGrid((1.0, 1.0), (0.0, 1.0))


def test_box_edges_and_heading_tick_where_hand_computed() -> None:
    # A car at x = 10, y = 0 facing +x, 4 m long, 2 m wide: front edge x = 12 (row 280), back edge x = 8 (row 320),
    # left side y = 1 (col 190), right side y = -1 (col 210); heading tick from (300, 200) up to (280, 200).
    image = bev_image(None, np.array([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]]), grid=GRID)
    assert image.shape == (400, 400, 3) and image.dtype == np.uint8
    for row, col in [(280, 200), (320, 200), (300, 190), (300, 210), (280, 192), (320, 208), (290, 200), (296, 200)]:
        assert _is(image, row, col, GT), (row, col)
    for row, col in [(300, 195), (300, 205), (310, 200), (275, 200), (325, 200)]:  # inside the box, off the tick; outside
        assert not _is(image, row, col, GT, radius=0), (row, col)
    assert np.all(image == GT, axis=-1).sum() < 4 * (40 + 20) + 30  # only the outline and the tick


def test_rotated_prediction_points_its_tick_to_the_left() -> None:
    # heading pi/2: the box's front faces +y, which is left in the image: the tick runs from col 200 to col 180
    image = bev_image(None, None, np.array([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, math.pi / 2]]), grid=GRID)
    assert _is(image, 300, 185, PRED) and _is(image, 300, 195, PRED)
    assert not _is(image, 300, 215, PRED, radius=0)  # no tick to the right of the centre
    assert _is(image, 290, 180, PRED) and _is(image, 310, 220, PRED)  # front and back edges (y = 2, y = -2)
    assert not np.all(image == GT, axis=-1).any()


def test_points_are_coloured_and_boxes_drawn_over_them() -> None:
    rng = np.random.default_rng(0)
    pts = np.concatenate([rng.uniform([0, -20, -2], [40, 20, 1], (5000, 3)), rng.uniform(0, 1, (5000, 1))], axis=1)
    pts = np.concatenate([pts, [[100.0, 0, 0, 0]]])  # outside the grid: dropped
    empty = bev_image(pts, grid=GRID)
    lit = empty.max(axis=-1) > 0
    assert 0.02 < lit.mean() < 0.05  # about one pixel per point (5000 of 160000)
    one = bev_image(np.array([[10.05, -5.05, 0.0, 1.0], [10.05, -5.05, 1.0, 0.0]]), grid=GRID)
    (rows, cols) = np.nonzero(one.max(axis=-1))
    assert rows.tolist() == [299] and cols.tolist() == [250]  # x in [10, 10.1), y in [-5.1, -5)
    assert not np.array_equal(bev_image(pts, grid=GRID, color="intensity"), empty)
    boxed = bev_image(pts, np.array([[10.0, 0.0, 0.0, 4.0, 2.0, 1.5, 0.0]]), grid=GRID, thickness=2)
    assert _is(boxed, 280, 200, GT, radius=0) and _is(boxed, 320, 200, GT, radius=0)
    with pytest.raises(ValueError, match="intensity"):
        bev_image(pts[:, :3], grid=GRID, color="intensity")


# ------------------------------------------------------------------------------------- detection task hook


def _task(val_images: int = 2) -> torch.nn.Module:
    from functools import partial

    from sparse3d.models.detection.bev import BEVScatter, ResidualBEVBackbone
    from sparse3d.models.detection.center_head import CenterHead
    from sparse3d.models.detection.task import DetectionTask
    from sparse3d.models.dsvt.vfe import DynamicVFE

    vfe = DynamicVFE(point_range=[0.0, -8.0, -3.0, 16.0, 8.0, 1.0], voxel_size=[0.5, 0.5, 4.0], in_channels=4,
                     filters=[8])
    return DetectionTask(["Car", "Pedestrian"], vfe, map_to_bev=partial(BEVScatter),
                         backbone_2d=partial(ResidualBEVBackbone, layer_nums=[1], layer_strides=[1], num_filters=[8],
                                             upsample_strides=[1], num_upsample_filters=[8]),
                         dense_head=partial(CenterHead, shared_channels=8, num_conv=1, iou_branch=False),
                         val_images=val_images)


def test_detection_task_draws_gt_and_detections_of_the_last_batch() -> None:
    from sparse3d.models.detection.center_head import Detections

    task = _task(val_images=1)
    task.eval()
    car = [8.0, 0.0, -1.0, 4.0, 2.0, 1.5, 0.0]  # grid x in [0, 16), 0.2 m pixels: front edge x = 10 -> row 30
    far = [3.0, 4.0, -1.0, 4.0, 2.0, 1.5, 0.0]
    batch = {
        "points": torch.tensor([[8.0, 0.0, -1.0, 0.5], [2.0, -6.0, -1.0, 0.5], [12.0, 6.0, 0.0, 0.5]]),
        "batch_idx": torch.tensor([0, 0, 1]), "batch_size": 2,
        "gt_boxes": [torch.tensor([car, far]), torch.tensor([far])],
        "gt_labels": [torch.tensor([0, -1]), torch.tensor([1])],
        "frame_id": ["000007", "000008"],
    }
    det_boxes = torch.tensor([[8.0, 0.0, -1.0, 3.0, 1.6, 1.5, math.pi / 2], [3.0, -4.0, -1.0, 2.0, 2.0, 1.5, 0.0]])
    detections = [Detections(det_boxes, torch.tensor([0.9, 0.1]), torch.tensor([0, 0])),
                  Detections(det_boxes[:0], torch.zeros(0), torch.zeros(0, dtype=torch.long))]
    task.forward = lambda b: detections  # the plumbing is under test, not the network
    task.validation_step(batch)
    images = task.validation_images()
    assert list(images) == ["bev/000007"]  # val_images=1: the first frame only
    image = images["bev/000007"]
    assert image.shape == (80, 80, 3) and image.dtype == np.float32 and 0.0 <= image.min() and image.max() <= 1.0
    grid = BevGrid((0.0, 16.0), (-8.0, 8.0), 0.2)
    expected = bev_image(np.array([[8.0, 0.0, -1.0], [2.0, -6.0, -1.0]]), np.array([car]), det_boxes[:1].numpy(),
                         grid=grid)  # frame 0's points; the ignored GT box (label -1) and the 0.1 score left out
    np.testing.assert_array_equal(np.rint(image * 255).astype(np.uint8), expected)
    as_u8 = np.rint(image * 255).astype(np.uint8)
    assert _is(as_u8, 30, 40, GT) and _is(as_u8, 50, 40, GT)  # GT front (x = 10) and back (x = 6) edges
    assert _is(as_u8, 40, 32, PRED)  # the prediction faces +y: its front edge at y = 1.5 (col 32.5)
    assert task.validation_images() == {}  # consumed


def test_trainer_writes_the_validation_images(toy, tmp_path: Path) -> None:
    from functools import partial

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from sparse3d.train import Trainer

    class Pictured(toy.LinearRegressor):
        def validation_images(self) -> dict[str, np.ndarray]:
            image = np.zeros((6, 5, 3), np.float32)
            image[1, 2] = [0.0, 1.0, 0.0]
            return {"bev/0": image}

    torch.manual_seed(0)
    trainer = Trainer({"device": "cpu", "progress": False, "log_every": 1, "max_steps": 4, "seed": 0, "val_every": 2},
                      tmp_path / "run")
    trainer.fit(Pictured(), toy.RegressionDataset(num_samples=8, seed=0), toy.RegressionDataset(num_samples=4, seed=1),
                optimizer=partial(torch.optim.SGD, lr=0.1), batch_size=4)
    events = EventAccumulator(str(tmp_path / "run" / "tb"), size_guidance={"images": 0})
    events.Reload()
    assert "val/bev/0" in events.Tags()["images"]
    logged = events.Images("val/bev/0")
    assert [e.step for e in logged] == [2, 4] and (logged[0].width, logged[0].height) == (5, 6)
    import cv2

    decoded = cv2.imdecode(np.frombuffer(logged[0].encoded_image_string, np.uint8), cv2.IMREAD_COLOR)[..., ::-1]
    assert decoded[1, 2].tolist() == [0, 255, 0] and decoded.sum() == 255
