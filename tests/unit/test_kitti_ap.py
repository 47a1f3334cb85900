"""KITTI AP (:mod:`sparse3d.metrics.detection`) on hand-computed precision/recall cases.

Oracles: AP values derived by hand in the comments (devkit semantics: thresholds from true-positive scores at
41 recall positions, precision indexed by threshold, interpolated as the max over later thresholds); a literal
per-detection loop of the devkit's matching rules written here (for the vectorised per-threshold statistics);
and a shapely polygon IoU in the camera x-z plane (for the camera -> z-up box map used with the IoU kernels).

Scenes: ``_row`` places object ``k`` of a frame at its own 2-D column and its own 3-D spot, so objects never
overlap each other and a detection equal to a label overlaps only that label (IoU 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest
from shapely.geometry import Polygon

from sparse3d.io.kitti import KittiObjects, read_label
from sparse3d.metrics.detection import (
    DIFFICULTIES,
    METRICS,
    OVERLAP_SETS,
    FrameMatch,
    camera_to_zup_boxes,
    clean_frame,
    image_box_overlap,
    interpolated_ap,
    kernel_pair_ious,
    kitti_eval,
    match_scores,
    pr_statistics,
    recall_thresholds,
)

DIMS = {"Car": (1.5, 1.6, 3.9), "Van": (2.2, 1.9, 5.0), "Pedestrian": (1.7, 0.6, 0.8),
        "Person_sitting": (1.2, 0.6, 0.8), "Cyclist": (1.7, 0.6, 1.8), "Truck": (3.0, 2.5, 10.0),
        "DontCare": (-1.0, -1.0, -1.0)}


def _row(k: int, name: str = "Car", height: float = 60.0, occluded: int = 0, truncated: float = 0.0,
         alpha: float = 0.0, ry: float = 0.3, score: float | None = None, bbox: Sequence[float] | None = None
         ) -> dict[str, Any]:
    """Object ``k`` of a frame: 2-D box in column k (90 px wide), 3-D box 12 m apart from its neighbours."""
    x1 = 100.0 * k
    return {"name": name, "truncated": truncated, "occluded": occluded, "alpha": alpha,
            "bbox": list(bbox) if bbox is not None else [x1, 100.0, x1 + 90.0, 100.0 + height],
            "hwl": DIMS[name], "location": (-30.0 + 12.0 * k, 1.6, 40.0), "rotation_y": ry, "score": score}


def _objects(rows: Sequence[dict[str, Any]], scored: bool | None = None) -> KittiObjects:
    if scored is None:
        scored = bool(rows) and rows[0]["score"] is not None
    if not rows:
        return KittiObjects.empty(with_score=scored)
    return KittiObjects(
        name=np.array([r["name"] for r in rows]), truncated=[r["truncated"] for r in rows],
        occluded=[r["occluded"] for r in rows], alpha=[r["alpha"] for r in rows], bbox=[r["bbox"] for r in rows],
        hwl=[r["hwl"] for r in rows], location=[r["location"] for r in rows],
        rotation_y=[r["rotation_y"] for r in rows], score=[r["score"] for r in rows] if scored else None)


def _as_detection(row: dict[str, Any], score: float, **changes: Any) -> dict[str, Any]:
    return {**row, "score": score, **changes}


def _grid(num: int, name: str = "Car", per_frame: int = 10) -> list[list[dict[str, Any]]]:
    """``num`` easy objects spread over frames of ``per_frame`` objects."""
    frames = []
    for start in range(0, num, per_frame):
        frames.append([_row(k, name) for k in range(min(per_frame, num - start))])
    return frames


def _perfect(gt_frames: list[list[dict[str, Any]]], score_of: Any = None) -> list[list[dict[str, Any]]]:
    """A detection equal to every label, scores strictly decreasing in (frame, object) order: 1 - n/1000."""
    out, n = [], 0
    for frame in gt_frames:
        dets = []
        for row in frame:
            dets.append(_as_detection(row, 1.0 - n / 1000.0 if score_of is None else score_of(n)))
            n += 1
        out.append(dets)
    return out


def _eval(gt_frames: list[list[dict[str, Any]]], dt_frames: list[list[dict[str, Any]]], **kwargs: Any) -> Any:
    return kitti_eval([_objects(f, scored=False) for f in gt_frames],
                      [_objects(f, scored=True) for f in dt_frames], **kwargs)


def _all_values(result: Any, cls: str, metrics: Sequence[str] = METRICS) -> list[float]:
    return [result.get(cls, m, d, o, r) for m in metrics for d in DIFFICULTIES for o in OVERLAP_SETS
            for r in ("R40", "R11")]


# --------------------------------------------------------------------------------------------- 2-D overlaps
def test_image_box_overlap_hand_values() -> None:
    a = np.array([[0, 0, 10, 10], [0, 0, 10, 10], [0, 0, 10, 10]], dtype=np.float32)
    b = np.array([[5, 0, 15, 10], [10, 0, 20, 10], [2, 2, 4, 4]], dtype=np.float32)
    iou = image_box_overlap(a, b)
    # half-overlapping squares: 50 / (100 + 100 - 50); touching edges: 0; contained 2x2: 4 / 100
    assert iou[0, 0] == pytest.approx(1 / 3) and iou[1, 1] == 0.0 and iou[2, 2] == pytest.approx(0.04)
    ioa = image_box_overlap(a, b, criterion="ioa")
    assert ioa[0, 0] == pytest.approx(0.5) and ioa[2, 2] == pytest.approx(0.04)
    assert image_box_overlap(b[2:], a[:1], criterion="ioa")[0, 0] == pytest.approx(1.0)  # inside: IoA 1
    assert image_box_overlap(np.zeros((0, 4)), b).shape == (0, 3)


# ------------------------------------------------------------------------------------ camera -> z-up boxes
def _camera_polygon(loc: np.ndarray, hwl: np.ndarray, ry: float) -> Polygon:
    """Footprint in the camera (x, z) plane, from the devkit's corner formula: R_y(ry) @ (+-l/2, +-w/2)."""
    _, w, length = hwl
    corners = []
    for cx, cz in ((length / 2, w / 2), (length / 2, -w / 2), (-length / 2, -w / 2), (-length / 2, w / 2)):
        corners.append((math.cos(ry) * cx + math.sin(ry) * cz + loc[0], -math.sin(ry) * cx + math.cos(ry) * cz + loc[2]))
    return Polygon(corners)


def _matrix_ious(a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(N, M) BEV and 3-D IoU matrices from the pairwise kernel helper."""
    bev, iou3d = kernel_pair_ious(np.repeat(a, len(b), axis=0), np.tile(b, (len(a), 1)))
    return bev.reshape(len(a), len(b)), iou3d.reshape(len(a), len(b))


def _camera_ious(la: np.ndarray, da: np.ndarray, ra: np.ndarray, lb: np.ndarray, db: np.ndarray, rb: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray]:
    bev = np.zeros((len(la), len(lb)))
    iou3d = np.zeros_like(bev)
    for i in range(len(la)):
        for j in range(len(lb)):
            pa, pb = _camera_polygon(la[i], da[i], ra[i]), _camera_polygon(lb[j], db[j], rb[j])
            inter = pa.intersection(pb).area
            bev[i, j] = inter / (pa.area + pb.area - inter)
            # camera y points down: the box spans [y - h, y]
            dy = max(0.0, min(la[i][1], lb[j][1]) - max(la[i][1] - da[i][0], lb[j][1] - db[j][0]))
            va, vb = pa.area * da[i][0], pb.area * db[j][0]
            iou3d[i, j] = inter * dy / (va + vb - inter * dy)
    return bev, iou3d


def test_camera_to_zup_boxes_preserve_iou() -> None:
    rng = np.random.default_rng(3)
    n = 24
    loc = np.stack([rng.uniform(-2, 2, n), rng.uniform(0.5, 2.0, n), rng.uniform(8, 12, n)], 1)
    hwl = np.stack([rng.uniform(1.0, 2.0, n), rng.uniform(1.0, 2.5, n), rng.uniform(2.0, 5.0, n)], 1)
    ry = rng.uniform(-math.pi, math.pi, n)
    boxes = camera_to_zup_boxes(loc, hwl, ry)
    # the map itself: centre (z, -x, -y + h/2), dims (l, w, h), heading -(ry + pi/2)
    np.testing.assert_allclose(boxes[0], [loc[0, 2], -loc[0, 0], -loc[0, 1] + hwl[0, 0] / 2, hwl[0, 2], hwl[0, 1],
                                          hwl[0, 0], -(ry[0] + math.pi / 2)], rtol=1e-6)
    bev, iou3d = _matrix_ious(boxes[:12], boxes[12:])
    ref_bev, ref_3d = _camera_ious(loc[:12], hwl[:12], ry[:12], loc[12:], hwl[12:], ry[12:])
    assert (ref_bev > 0.05).sum() >= 10, "the random boxes should overlap often"
    np.testing.assert_allclose(bev, ref_bev, atol=2e-5)
    np.testing.assert_allclose(iou3d, ref_3d, atol=2e-5)


def test_camera_to_zup_boxes_are_lidar_boxes_of_an_ideal_calibration() -> None:
    """The calibration-free boxes are the LiDAR boxes of a calib whose LiDAR axes are the camera's (z, -x, -y),
    up to its translation, so both give the same IoUs."""
    boxes_mod = pytest.importorskip("sparse3d.geometry.boxes")
    from sparse3d.io.kitti import KittiCalib

    shift = np.array([0.3, -0.2, 1.1])  # camera position of the LiDAR origin
    lidar_to_cam = np.array([[0.0, -1, 0], [0, 0, -1], [1, 0, 0]])  # LiDAR (x fwd, y left, z up) -> camera
    calib = KittiCalib(P2=np.hstack([np.diag([700.0, 700.0, 1.0]), np.zeros((3, 1))]), R0_rect=np.eye(3),
                       Tr_velo_to_cam=np.hstack([lidar_to_cam, shift[:, None]]))
    rng = np.random.default_rng(5)
    n = 16
    loc = np.stack([rng.uniform(-2, 2, n), rng.uniform(0.5, 2.0, n), rng.uniform(8, 12, n)], 1)
    hwl = np.stack([rng.uniform(1.0, 2.0, n), rng.uniform(1.0, 2.5, n), rng.uniform(2.0, 5.0, n)], 1)
    ry = rng.uniform(-math.pi, math.pi, n)
    lidar = np.asarray(boxes_mod.camera_to_lidar_boxes(loc, hwl, ry, calib), dtype=np.float64)
    zup = camera_to_zup_boxes(loc, hwl, ry).astype(np.float64)
    np.testing.assert_allclose(lidar[:, :3], zup[:, :3] - lidar_to_cam.T @ shift, atol=1e-5)
    np.testing.assert_allclose(lidar[:, 3:6], zup[:, 3:6], atol=1e-6)
    np.testing.assert_allclose(np.cos(lidar[:, 6] - zup[:, 6]), 1.0, atol=1e-6)
    for got, want in zip(_matrix_ious(zup[:8], zup[8:]), _matrix_ious(lidar[:8], lidar[8:]), strict=True):
        np.testing.assert_allclose(got, want, atol=2e-5)


# ------------------------------------------------------------------------------------ recall thresholds
def test_recall_thresholds_hand_cases() -> None:
    # 3 objects, 3 true positives: each score is nearer its own recall step than the target -> all kept
    np.testing.assert_array_equal(recall_thresholds(np.array([0.7, 0.9, 0.8]), 3), [0.9, 0.8, 0.7])
    # 80 objects, 80 TPs (recall steps of 1/80, targets of 1/40): kept ranks 0 then every odd rank -> 41
    scores = 1.0 - np.arange(80) / 100.0
    kept = recall_thresholds(scores, 80)
    np.testing.assert_allclose(kept, scores[[0, *range(1, 80, 2)]])
    # 40 TPs out of 80 objects: ranks 0, 1, 3, ..., 39 -> 21 thresholds
    assert len(recall_thresholds(scores[:40], 80)) == 21
    assert len(recall_thresholds(np.zeros(0), 5)) == 0


def test_interpolated_ap() -> None:
    prec = np.zeros(41)
    prec[:3] = [0.5, 1.0, 0.25]
    # interpolated: [1, 1, 0.25, 0, ...] -> R40 = (1 + 0.25) / 40, R11 = (1 + 0) / 11 (positions 0, 4, ...)
    r40, r11 = interpolated_ap(prec)
    assert r40 == pytest.approx(1.25 / 40) and r11 == pytest.approx(1 / 11)
    np.testing.assert_array_equal(prec[:4], [1.0, 1.0, 0.25, 0.0])


# -------------------------------------------------------------------------------- hand-computed PR cases
def test_three_objects_show_the_devkit_recall_sampling() -> None:
    """3 Cars and a higher-scoring false positive: precision lives at only 3 of the 41 positions."""
    gt = [[_row(0), _row(1), _row(2)]]
    dt = [[_as_detection(_row(0), 0.9), _as_detection(_row(1), 0.8), _as_detection(_row(2), 0.7),
           _as_detection(_row(3), 0.95)]]  # row 3 is empty space: a false positive
    res = _eval(gt, dt, classes=("Car",))
    # thresholds 0.9, 0.8, 0.7 -> precision 1/2, 2/3, 3/4 (the FP at 0.95 always counts) -> interpolated
    # [3/4, 3/4, 3/4, 0, ..., 0]: R40 = 2 * 3/4 / 40, R11 = 3/4 / 11
    for metric in ("bbox", "bev", "3d", "aos"):
        assert res.get("Car", metric, "moderate") == pytest.approx(1.5 / 40)
        assert res.get("Car", metric, "moderate", recall="R11") == pytest.approx(0.75 / 11)
    perfect = _eval(gt, [dt[0][:3]], classes=("Car",))
    assert perfect.get("Car", "3d", "easy") == pytest.approx(2 / 40)  # 3 perfect TPs: positions 1, 2 only
    assert perfect.get("Car", "3d", "easy", recall="R11") == pytest.approx(1 / 11)


def test_half_recall_low_scoring_false_positives_do_not_count() -> None:
    """80 Cars, 40 found (TPs), 40 false positives all scoring below every TP."""
    gt = _grid(80)
    dt = _perfect(gt)
    n = 0
    for frame in dt:
        for k in range(len(frame)):
            if n >= 40:  # move the detection to empty space (column k + 10) and below every TP score
                frame[k] = _as_detection(_row(k + 10), 0.1 - n / 1000.0)
            n += 1
    res = _eval(gt, dt, classes=("Car",))
    # 21 thresholds (TP ranks 0, 1, 3, ..., 39 out of 80 objects), precision 1 at each (the FPs score lower):
    # R40 = 20 / 40 (positions 1..20), R11 = 6 / 11 (positions 0, 4, ..., 20)
    for metric in ("bbox", "bev", "3d"):
        assert res.get("Car", metric, "hard") == pytest.approx(0.5)
        assert res.get("Car", metric, "hard", recall="R11") == pytest.approx(6 / 11)


def test_false_positives_in_the_middle_of_the_ranking() -> None:
    """80 perfect Car detections (scores 1 - n/1000) plus 20 false positives scored between TP 39 and TP 40."""
    gt = _grid(80)
    dt = _perfect(gt)
    dt.append([_as_detection(_row(k), 0.9605 - k / 100000.0) for k in range(10)])  # an extra frame with no
    dt.append([_as_detection(_row(k), 0.9605 - (10 + k) / 100000.0) for k in range(10)])  # labels: 20 FPs
    gt += [[], []]
    res = _eval(gt, dt, classes=("Car",))
    # thresholds at TP ranks 0, 1, 3, ..., 79 (positions 0..40); position p >= 1 has rank 2p - 1.
    # Positions 0..20 (ranks <= 39, scores >= 0.961) exclude the FPs: precision 1.
    # Positions 21..40 (ranks 41..79) include all 20: precision (2p) / (2p + 20), rising to 80 / 100 at p = 40,
    # so interpolated 0.8 there. R40 = (20 * 1 + 20 * 0.8) / 40 = 0.9; R11 = (6 * 1 + 5 * 0.8) / 11 = 10 / 11.
    for metric in ("bbox", "bev", "3d", "aos"):
        assert res.get("Car", metric, "easy") == pytest.approx(0.9)
        assert res.get("Car", metric, "easy", recall="R11") == pytest.approx(10 / 11)
    assert res.num_gt[0].tolist() == [80, 80, 80]


def test_one_top_false_positive() -> None:
    """80 perfect Cars and one false positive scoring above all: precision t / (t + 1), increasing."""
    gt = _grid(80)
    dt = _perfect(gt)
    dt[0].append(_as_detection(_row(11), 2.0))
    res = _eval(gt, dt, classes=("Car",))
    # tp at the 41 thresholds: 1, 2, 4, ..., 80 -> interpolated precision 80/81 everywhere
    for value in _all_values(res, "Car", ("bbox", "bev", "3d")):
        assert value == pytest.approx(80 / 81)


def test_ground_truth_as_predictions_gives_ap_one(tmp_path: Any) -> None:
    """>= 41 valid objects per class; ignored ones (Van, Person_sitting, Truck, DontCare, hard-only) copied too."""
    gt: list[list[dict[str, Any]]] = []
    for cls in ("Car", "Pedestrian", "Cyclist"):
        gt += _grid(45, cls, per_frame=9)
    extras = [_row(9, "Van"), _row(10, "Person_sitting"), _row(11, "Truck"),
              _row(12, "Car", height=30.0, occluded=1), _row(13, "Pedestrian", truncated=0.45, occluded=2),
              _row(14, "Cyclist", occluded=3), _row(15, "Car", height=20.0),
              _row(16, "DontCare", alpha=-10.0, ry=-10.0, bbox=(1600, 100, 1700, 200))]
    for frame in gt[::3]:
        frame += [dict(r) for r in extras]
    scores = iter(np.linspace(0.99, 0.01, sum(len(f) for f in gt)))
    dt = [[_as_detection(r, float(next(scores)), alpha=r["alpha"] + 0.0) for r in frame] for frame in gt]
    res = _eval(gt, dt)
    assert res.aos_computed
    for cls in ("Car", "Pedestrian", "Cyclist"):
        assert res.num_gt[res.classes.index(cls)].tolist()[0] == 45
        np.testing.assert_allclose(_all_values(res, cls), 1.0, atol=1e-9)
    flat = res.flat()
    assert flat["Car/3d_R40/moderate"] == pytest.approx(1.0) and flat["Cyclist/bev_R11/hard/loose"] == pytest.approx(1.0)


def test_empty_predictions_and_absent_classes_give_zero() -> None:
    gt = _grid(45)
    res = _eval(gt, [[] for _ in gt])
    for cls in ("Car", "Pedestrian", "Cyclist"):
        assert _all_values(res, cls) == [0.0] * len(_all_values(res, cls))
    assert res.num_gt[1].tolist() == [0, 0, 0]
    # predictions without orientation (alpha -10 everywhere): AOS is not computed
    dt = _perfect(gt)
    for frame in dt:
        for det in frame:
            det["alpha"] = -10.0
    res = _eval(gt, dt, classes=("Car",))
    assert not res.aos_computed and math.isnan(res.get("Car", "aos", "easy"))
    assert res.get("Car", "3d", "easy") == pytest.approx(1.0)
    assert res.to_dict()["classes"]["Car"]["strict"]["aos"]["easy"]["AP_R40"] is None


# ----------------------------------------------------------------------------------------- ignore rules
def test_van_predicted_as_car_and_person_sitting_as_pedestrian_are_ignored() -> None:
    gt = _grid(80)
    gt[0].append(_row(11, "Van"))
    dt = _perfect(gt[:])
    dt[0][-1] = _as_detection(_row(11, "Van"), 2.0, name="Car")  # the top-scoring "Car" sits on the Van
    res = _eval(gt, dt, classes=("Car",))
    np.testing.assert_allclose(_all_values(res, "Car", ("bbox", "bev", "3d")), 1.0)
    # control: the same detection without the Van label is a false positive -> 80/81 (see the test above)
    gt[0].pop()
    assert _eval(gt, dt, classes=("Car",)).get("Car", "3d", "moderate") == pytest.approx(80 / 81)

    peds = _grid(80, "Pedestrian")
    peds[0].append(_row(11, "Person_sitting"))
    dt = _perfect(peds)
    dt[0][-1] = _as_detection(_row(11, "Person_sitting"), 2.0, name="Pedestrian")
    res = _eval(peds, dt, classes=("Pedestrian",))
    assert res.get("Pedestrian", "bev", "hard") == pytest.approx(1.0)
    # a Van does not excuse a Pedestrian detection, nor a Person_sitting a Cyclist one
    assert clean_frame(_objects([_row(0, "Van")]), _objects([]), "Pedestrian", 1)[0].tolist() == [-1]
    assert clean_frame(_objects([_row(0, "Person_sitting")]), _objects([]), "Cyclist", 1)[0].tolist() == [-1]


def test_detection_inside_dont_care_is_ignored_for_2d_only() -> None:
    gt = _grid(80)
    gt[0].append(_row(11, "DontCare", alpha=-10.0, ry=-10.0, bbox=(1090, 90, 1200, 170)))
    dt = _perfect(gt[:])
    dt[0].pop()
    dt[0].append(_as_detection(_row(11), 2.0))  # inside the DontCare box: IoA = 1 > 0.7
    res = _eval(gt, dt, classes=("Car",))
    # 2-D (and AOS, which uses the 2-D matching): not a false positive. BEV / 3-D: the devkit only applies
    # DontCare regions to the 2-D metric, so it is a false positive there -> 80/81.
    assert res.get("Car", "bbox", "moderate") == pytest.approx(1.0)
    assert res.get("Car", "aos", "moderate") == pytest.approx(1.0)
    assert res.get("Car", "bev", "moderate") == pytest.approx(80 / 81)
    assert res.get("Car", "3d", "moderate", "loose") == pytest.approx(80 / 81)
    # mostly outside the region (IoA 55/90 = 0.61 < 0.7): a false positive in 2-D too
    dt[0][-1] = _as_detection(_row(11, bbox=(1145, 100, 1235, 160)), 2.0)
    assert _eval(gt, dt, classes=("Car",)).get("Car", "bbox", "moderate") == pytest.approx(80 / 81)


def test_minimum_heights() -> None:
    gt = _grid(80)
    dt = _perfect(gt)
    # a 20 px false positive: below every minimum height -> ignored in all difficulties
    dt[0].append(_as_detection(_row(11, height=20.0), 2.0))
    res = _eval(gt, dt, classes=("Car",))
    np.testing.assert_allclose(_all_values(res, "Car", ("bbox", "bev", "3d")), 1.0)
    # 30 px: ignored for easy (< 40), a false positive for moderate and hard (>= 25)
    dt[0][-1] = _as_detection(_row(11, height=30.0), 2.0)
    res = _eval(gt, dt, classes=("Car",))
    assert res.get("Car", "3d", "easy") == pytest.approx(1.0)
    assert res.get("Car", "3d", "moderate") == pytest.approx(80 / 81) == res.get("Car", "3d", "hard")
    # ground truth exactly 40 px tall is not easy (the devkit filters height <= 40) but is moderate
    gt2 = _grid(80)
    gt2[0][0] = _row(0, height=40.0)
    ig, _, valid = clean_frame(_objects(gt2[0]), _objects([]), "Car", 0)
    assert ig[0] == 1 and valid == 9
    assert clean_frame(_objects(gt2[0]), _objects([]), "Car", 1)[2] == 10
    # a 30 px detection of an easy-ignored 30 px object: matched to an ignored object, so neither TP nor FP
    gt3 = _grid(80)
    gt3[0].append(_row(11, height=30.0))
    dt3 = _perfect(gt3)
    res = _eval(gt3, dt3, classes=("Car",))
    assert res.num_gt[0].tolist() == [80, 81, 81]
    np.testing.assert_allclose([res.get("Car", m, d) for m in ("bbox", "3d") for d in DIFFICULTIES], 1.0)


def test_bounds_read_from_label_text_as_the_devkit_reads_them(tmp_path: Any) -> None:
    """Truncation written "0.30" sits on the moderate bound (truncation <= 0.3) and the box from y 103.05 to 128.05
    just above the moderate height (> 25 px: 25.000000000000014 in doubles). Compared as the decimals of the file,
    as the devkit does, both objects are moderate; the reader's float32 values widened to float64 would put 0.3
    above 0.3 and the height at exactly 25.0 (both ignored)."""
    label = tmp_path / "000000.txt"
    label.write_text("Car 0.30 0 0.00 100.00 100.00 190.00 160.00 1.50 1.60 3.90 -5.00 1.60 40.00 0.30\n"
                     "Car 0.00 0 0.00 300.00 103.05 390.00 128.05 1.50 1.60 3.90 10.00 1.60 40.00 0.30\n")
    gt = read_label(label)
    assert float(np.float32(0.3)) > 0.3 and float(np.float32(128.05)) - float(np.float32(103.05)) == 25.0
    ignored, _, valid = clean_frame(gt, _objects([]), "Car", DIFFICULTIES.index("moderate"))
    assert ignored.tolist() == [0, 0] and valid == 2
    assert clean_frame(gt, _objects([]), "Car", DIFFICULTIES.index("easy"))[0].tolist() == [1, 1]  # 0.3 > 0.15, < 40 px


def test_aos_with_flipped_headings() -> None:
    gt = _grid(80)
    # every other detection (by score rank) flipped by pi: similarity (1 + cos pi) / 2 = 0
    dt = _perfect(gt)
    n = 0
    for frame in dt:
        for det in frame:
            det["alpha"] = math.pi if n % 2 else 0.0
            n += 1
    res = _eval(gt, dt, classes=("Car",))
    # tp at the thresholds: 1, 2, 4, ..., 80; unflipped among them: 1, 1, 2, 3, ..., 40 -> AOS 1, then 1/2:
    # interpolated [1, 1/2, ..., 1/2]: R40 = 1/2, R11 = (1 + 10 / 2) / 11
    assert res.get("Car", "bbox", "easy") == pytest.approx(1.0)
    assert res.get("Car", "aos", "easy") == pytest.approx(0.5)
    assert res.get("Car", "aos", "easy", recall="R11") == pytest.approx(6 / 11)
    # all turned by pi/2: similarity 1/2 for every TP -> AOS = AP / 2
    for frame in dt:
        for det in frame:
            det["alpha"] = math.pi / 2
    res = _eval(gt, dt, classes=("Car",))
    assert res.get("Car", "aos", "hard") == pytest.approx(0.5) == res.get("Car", "aos", "hard", recall="R11")


def test_overlap_thresholds_strict_and_loose() -> None:
    """Detections shifted along the car so the 3-D IoU is 0.6: a miss at 0.7, a hit at the loose 0.5."""
    gt = _grid(80)
    dt = _perfect(gt)
    for frame in dt:
        for det in frame:
            # ry = 0.3: the length axis runs along (cos ry, -sin ry) in the camera x-z plane; shifting by d
            # along it leaves an overlap of (l - d) / (l + d) = 0.6 for d = l / 4
            d = DIMS["Car"][2] / 4
            x, y, z = det["location"]
            det["location"] = (x + d * math.cos(0.3), y, z - d * math.sin(0.3))
    res = _eval(gt, dt, classes=("Car",))
    assert res.get("Car", "bbox", "easy") == pytest.approx(1.0)
    assert res.get("Car", "3d", "easy") == 0.0 and res.get("Car", "bev", "easy") == 0.0
    assert res.get("Car", "3d", "easy", "loose") == pytest.approx(1.0)
    assert res.get("Car", "bev", "moderate", "loose", "R11") == pytest.approx(1.0)
    np.testing.assert_allclose(res.overlaps[0], [[0.7, 0.7, 0.7], [0.7, 0.5, 0.5]])


# --------------------------------------------------------------------- vectorised statistics vs a loop
def _loop_statistics(ov: np.ndarray, ign_gt: np.ndarray, ign_dt: np.ndarray, scores: np.ndarray, thresh: float,
                     min_overlap: float, in_dc: np.ndarray, cos_sim: np.ndarray) -> tuple[int, int, int, float]:
    """The devkit's per-threshold matching written as a plain loop over objects and detections."""
    num_d, num_g = ov.shape
    assigned = [False] * num_d
    low = [scores[j] < thresh for j in range(num_d)]
    tp = fp = fn = 0
    sim = 0.0
    for i in range(num_g):
        if ign_gt[i] == -1:
            continue
        best, best_ov, took_ignored = -1, 0.0, False
        for j in range(num_d):
            if ign_dt[j] == -1 or assigned[j] or low[j] or not ov[j, i] > min_overlap:
                continue
            if ign_dt[j] == 0 and (ov[j, i] > best_ov or took_ignored):
                best, best_ov, took_ignored = j, ov[j, i], False
            elif ign_dt[j] == 1 and best == -1:
                best, took_ignored = j, True
        if best == -1:
            fn += ign_gt[i] == 0
        elif ign_gt[i] == 1 or ign_dt[best] == 1:
            assigned[best] = True
        else:
            tp += 1
            sim += cos_sim[best, i]
            assigned[best] = True
    for j in range(num_d):
        if not assigned[j] and ign_dt[j] == 0 and not low[j]:
            if in_dc[j]:
                assigned[j] = True
            else:
                fp += 1
    return tp, fp, fn, sim


def _loop_scores(ov: np.ndarray, ign_gt: np.ndarray, ign_dt: np.ndarray, scores: np.ndarray,
                 min_overlap: float) -> list[float]:
    assigned = [False] * len(scores)
    out = []
    for i in range(ov.shape[1]):
        if ign_gt[i] == -1:
            continue
        best, best_score = -1, -1e7
        for j in range(len(scores)):
            if ign_dt[j] != -1 and not assigned[j] and ov[j, i] > min_overlap and scores[j] > best_score:
                best, best_score = j, scores[j]
        if best >= 0:
            assigned[best] = True
            if ign_gt[i] == 0 and ign_dt[best] == 0:
                out.append(float(scores[best]))
    return out


def _random_frame(rng: np.random.Generator) -> FrameMatch:
    num_d, num_g = int(rng.integers(0, 9)), int(rng.integers(0, 7))
    ov = np.where(rng.random((num_d, num_g)) < 0.5, rng.choice([0.3, 0.5, 0.6, 0.8, 0.9], (num_d, num_g)), 0.0)
    return FrameMatch(ov, rng.choice([-1, 0, 0, 1], num_g).astype(np.int8), rng.choice([-1, 0, 0, 1], num_d).astype(np.int8),
                      rng.choice([0.2, 0.4, 0.6, 0.8], num_d),  # ties on purpose
                      rng.random(num_d) < 0.3, rng.random((num_d, num_g)))


@pytest.mark.parametrize("seed", range(6))
def test_batched_statistics_match_the_loop(seed: int) -> None:
    rng = np.random.default_rng(seed)
    frames = [_random_frame(rng) for _ in range(int(rng.integers(1, 12)))]
    thresholds = np.array([0.9, 0.8, 0.6, 0.5, 0.2, 0.0])
    for min_overlap in (0.5, 0.7):
        want_scores: list[float] = []
        want = np.zeros((len(thresholds), 4))
        for f in frames:
            want_scores += _loop_scores(f.overlaps, f.ignored_gt, f.ignored_dt, f.scores, min_overlap)
            for t, thresh in enumerate(thresholds):
                want[t] += _loop_statistics(f.overlaps, f.ignored_gt, f.ignored_dt, f.scores, thresh, min_overlap,
                                            f.in_dont_care, f.cos_similarity)
        for chunk in (1, 3, 256):  # padding and grouping must not change the sums
            np.testing.assert_allclose(pr_statistics(frames, thresholds, min_overlap, chunk=chunk), want)
            np.testing.assert_allclose(np.sort(match_scores(frames, min_overlap, chunk=chunk)), np.sort(want_scores))
    # without DontCare regions or orientation
    bare = [FrameMatch(f.overlaps, f.ignored_gt, f.ignored_dt, f.scores) for f in frames]
    got = pr_statistics(bare, thresholds, 0.5)
    assert (got[:, 3] == 0).all() and (got[:, 1] >= pr_statistics(frames, thresholds, 0.5)[:, 1]).all()


def test_kitti_eval_validates_arguments() -> None:
    with pytest.raises(ValueError, match="one entry per frame"):
        kitti_eval([_objects([_row(0)])], [])
    with pytest.raises(ValueError, match="no overlap thresholds for 'Tram'"):
        kitti_eval([], [], classes=("Tram",))


def test_markdown_and_json_tables() -> None:
    gt = _grid(80)
    dt = _perfect(gt)
    dt[0].append(_as_detection(_row(11), 2.0))
    res = _eval(gt, dt, classes=("Car", "Pedestrian"))
    tables = res.to_dict()
    assert tables["classes"]["Car"]["strict"]["3d"]["moderate"]["AP_R40"] == pytest.approx(80 / 81)
    assert tables["classes"]["Car"]["loose"]["iou"] == {"bbox": 0.7, "bev": 0.5, "3d": 0.5}
    assert tables["classes"]["Pedestrian"]["num_gt"] == {"easy": 0, "moderate": 0, "hard": 0}
    assert tables["mean_over_classes_moderate_strict"]["3d_R40"] == pytest.approx(80 / 81 / 2)
    md = res.to_markdown()
    assert f"| 3d | strict | 0.7 | {100 * 80 / 81:.2f} |" in md and "| bev | loose | 0.5 |" in md and "## Pedestrian" in md
    assert md.count("No ground-truth objects of this class") == 1 and "Fewer than 41" not in md  # Car has 80
