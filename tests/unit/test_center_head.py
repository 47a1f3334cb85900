"""CenterPoint targets, losses and decoding against hand values and round trips."""

from __future__ import annotations

import math

import pytest
import torch

from sparse3d.models.detection.center_head import CenterHead, diou_loss_axis_aligned, focal_loss
from sparse3d.models.detection.center_targets import (
    BEVGrid,
    build_targets,
    decode_boxes,
    encode_boxes,
    gaussian_radius,
)

GRID = BEVGrid(x_min=0.0, y_min=-8.0, cell_x=0.4, cell_y=0.4, nx=40, ny=40)


def test_gaussian_radius_hand_value():
    # h = w = 10 cells, overlap 0.1:
    # r1 = (20 + sqrt(400 - 4·81.818)) / 2 = 14.264; r2 = (40 + sqrt(1600 - 16·90)) / 2 = 26.325;
    # r3 = (-4 + sqrt(16 + 16·0.1·90)) / 2 = (-4 + 12.649) / 2 = 4.3246 -> min = r3
    r = gaussian_radius(torch.tensor([10.0]), torch.tensor([10.0]), 0.1)
    assert math.isclose(float(r), (-4 + math.sqrt(160)) / 2, rel_tol=1e-6)


def test_encode_decode_round_trip():
    g = torch.Generator().manual_seed(0)
    boxes = torch.cat([torch.rand(50, 1, generator=g) * 16, torch.rand(50, 1, generator=g) * 16 - 8,
                       torch.rand(50, 1, generator=g) * 2 - 1, torch.rand(50, 3, generator=g) * 4 + 0.3,
                       torch.rand(50, 1, generator=g) * 2 * math.pi - math.pi], dim=1)
    code, cells = encode_boxes(boxes, GRID)
    assert ((code[:, :2] >= 0) & (code[:, :2] < 1)).all()
    torch.testing.assert_close(decode_boxes(code, cells, GRID), boxes, atol=1e-5, rtol=1e-5)


def test_heatmap_peaks_at_the_centre_cell_with_the_clamped_radius():
    boxes = torch.tensor([[4.1, 0.1, 0.0, 4.0, 1.6, 1.5, 0.3], [10.0, -4.0, 0.0, 0.6, 0.6, 1.7, 0.0],
                          [30.0, 0.0, 0.0, 4.0, 1.6, 1.5, 0.0]])  # the last centre is off the map
    labels = torch.tensor([0, 1, 0])
    t = build_targets([boxes], [labels], num_classes=2, grid=GRID)
    assert int(t.mask.sum()) == 2
    hm = t.heatmap[0]
    assert float(hm[0, 20, 10]) == 1.0 and float(hm[1, 10, 25]) == 1.0  # (y, x) cells of the two centres
    assert int((hm == 1).sum()) == 2
    # the pedestrian's radius: gaussian_radius(1.5, 1.5) < 2 cells, so min_radius 2 -> a 5×5 footprint
    assert int((hm[1] > 0).sum()) == 25
    sigma = 5 / 6
    assert math.isclose(float(hm[1, 10, 26]), math.exp(-1 / (2 * sigma * sigma)), rel_tol=1e-5)
    assert t.index[0, 0] == 20 * 40 + 10 and t.labels[0, :2].tolist() == [0, 1]


def test_focal_loss_hand_value():
    logits = torch.tensor([[[[0.0, 0.0]]]])
    target = torch.tensor([[[[1.0, 0.5]]]])
    p = 0.5
    expected = -(math.log(p) * (1 - p) ** 2) - (math.log(1 - p) * p**2 * 0.5**4)
    assert math.isclose(float(focal_loss(logits, target)), expected, rel_tol=1e-6)


def test_diou_loss_is_zero_for_equal_boxes_and_grows_with_distance():
    a = torch.tensor([[0.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]])
    b = torch.tensor([[3.0, 0.0, 0.0, 2.0, 2.0, 2.0, 0.0]])
    assert float(diou_loss_axis_aligned(a, a)) == pytest.approx(0.0, abs=1e-6)
    # disjoint: IoU 0, centre distance² 9, enclosing diagonal² 5² + 2² + 2² = 33
    assert float(diou_loss_axis_aligned(a, b)) == pytest.approx(1 + 9 / 33, rel=1e-6)


def _perfect_predictions(head: CenterHead, boxes: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    t = build_targets([boxes], [labels], head.num_classes, head.grid)
    n = head.grid.ny * head.grid.nx
    code = torch.zeros(1, 8, n)
    idx = t.index[0][t.mask[0]]
    code[0][:, idx] = t.code[0][t.mask[0]].T
    hm = torch.full((1, head.num_classes, n), -9.0)
    hm[0, t.labels[0][t.mask[0]], idx] = 4.0
    shape = (1, -1, head.grid.ny, head.grid.nx)
    return {"center": code[:, :2].reshape(shape), "center_z": code[:, 2:3].reshape(shape),
            "dim": code[:, 3:6].reshape(shape), "rot": code[:, 6:8].reshape(shape),
            "iou": torch.ones(1, 1, n).reshape(shape), "hm": hm.reshape(shape)}


def test_decoding_perfect_maps_gives_back_the_boxes_and_nms_drops_duplicates():
    head = CenterHead(8, num_classes=2, grid=GRID, nms_thresholds=[0.5, 0.5], rectifier=[0.5, 0.5])
    boxes = torch.tensor([[4.1, 0.1, -0.5, 4.0, 1.6, 1.5, 0.3], [10.0, -4.0, 0.2, 0.6, 0.6, 1.7, -1.0]])
    labels = torch.tensor([0, 1])
    dets = head.decode(_perfect_predictions(head, boxes, labels))[0]
    assert dets.labels.tolist() == [0, 1]
    torch.testing.assert_close(dets.boxes, boxes, atol=1e-5, rtol=1e-5)
    expected = torch.sigmoid(torch.tensor(4.0)) ** 0.5  # rectified with iou = 1
    torch.testing.assert_close(dets.scores, expected.expand(2))
    # a second car one cell away overlaps the first heavily: NMS keeps only the higher-scoring one
    preds = _perfect_predictions(head, torch.cat([boxes[:1], boxes[:1] + torch.tensor([0.4, 0, 0, 0, 0, 0, 0])]),
                                 torch.tensor([0, 0]))
    preds["hm"][0, 0, 20, 11] = 3.0
    dets = head.decode(preds)[0]
    assert dets.boxes.shape[0] == 1
    torch.testing.assert_close(dets.boxes[0], boxes[0], atol=1e-5, rtol=1e-5)


def test_loss_is_finite_and_falls_when_fitting_one_frame():
    torch.manual_seed(0)
    head = CenterHead(8, num_classes=1, grid=GRID)
    boxes = torch.tensor([[4.1, 0.1, -0.5, 4.0, 1.6, 1.5, 0.3]])
    t = build_targets([boxes], [torch.tensor([0])], 1, GRID)
    bev = torch.randn(1, 8, GRID.ny, GRID.nx)
    opt = torch.optim.Adam(head.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss, parts = head.loss(head(bev), t)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        assert set(parts) == {"hm_loss", "loc_loss", "iou_loss", "iou_reg_loss"}
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]
    with pytest.raises(ValueError, match="grid"):
        head(torch.randn(1, 8, 10, 10))
