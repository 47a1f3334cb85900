"""``sparse3d-bench dsvt_quality`` in quick mode (6 generated frames, both experiments, 2 steps each).

Oracles: the detection step is replaced by a perfect detector (the val frames' own labels with a score), whose
moderate AP R40 is known in closed form: the devkit samples one score threshold per true positive (at most 41), so
with n moderate objects of a class it is max(min(n, 41) - 1, 0) / 40 (1.0 from 41 objects on, 0.375 for 16); n is
counted here from the label files with the moderate rules (2-D height > 25 px, occlusion <= 1, truncation
<= 0.3). The training is the real ``sparse3d-train`` code (its step count and checkpoint are checked), the
bar is checked at its boundaries on constructed rows, and bad arguments fail before anything runs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparse3d.bench import available_suites
from sparse3d.bench.common import RECORD_FIELDS
from sparse3d.bench.dsvt_quality import (
    BAR_CAR_3D,
    BAR_CAR_BEV,
    BAR_MINUTES,
    BAR_TRAIN_FRAMES,
    BAR_VAL_FRAMES,
    CLASSES,
    DEFAULT_EXPERIMENTS,
    QUICK_SIZES,
    bar_met,
    run_dsvt_quality_suite,
)
from sparse3d.datasets.kitti import read_split
from sparse3d.io.kitti import read_label, write_label
from sparse3d.metrics.kitti_evaluator import KittiApEvaluator

pytestmark = pytest.mark.slow


def _perfect_detect(self: KittiApEvaluator, ids: list[str], output_dir: Path) -> Path:
    """The labels of each frame (classes scored by the suite) as predictions with score 1."""
    out = output_dir / "label_2"
    out.mkdir(parents=True, exist_ok=True)
    for frame in ids:
        gt = read_label(self.gt / "training" / "label_2" / f"{frame}.txt")
        keep = gt.select(np.isin(gt.name, CLASSES))
        keep.score = np.ones(len(keep), dtype=np.float32)
        write_label(out / f"{frame}.txt", keep)
    return out


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    work = tmp_path_factory.mktemp("dsvt_quality") / "work"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(KittiApEvaluator, "detect", _perfect_detect)
        records = run_dsvt_quality_suite(quick=True, val_fraction=0.5, work_dir=str(work))
    return work, records


def test_suite_is_registered() -> None:
    assert "dsvt_quality" in available_suites()


def test_records_train_each_experiment_and_read_the_ap_of_its_predictions(
        quick_run: tuple[Path, list[dict[str, Any]]]) -> None:
    work, records = quick_run
    kitti = work / "kitti"
    train, val = read_split(kitti, "train"), read_split(kitti, "val")
    assert len(train) + len(val) == QUICK_SIZES["frames"][0] and len(val) == 3
    assert [r["name"] for r in records] == list(DEFAULT_EXPERIMENTS)
    labels = [read_label(kitti / "training" / "label_2" / f"{f}.txt") for f in val]
    moderate = {cls: sum(int(np.count_nonzero((objs.name == cls) & (objs.bbox[:, 3] - objs.bbox[:, 1] > 25.0)
                                              & (objs.occluded <= 1) & (objs.truncated <= 0.3)))
                         for objs in labels) for cls in CLASSES}
    assert moderate["Car"] >= 2
    for r in records:
        assert all(k in r for k in RECORD_FIELDS)
        assert r["suite"] == "dsvt_quality" and r["steps"] == r["size"] == QUICK_SIZES["steps"][0]
        assert (r["train_frames"], r["val_frames"]) == (len(train), len(val))
        assert r["ours_s"] == r["train_s"] > 0 and r["eval_s"] > 0
        assert (work / "runs" / r["experiment"] / "train" / "checkpoints" / "last.ckpt").is_file()
        assert sorted(p.stem for p in (Path(r["eval_dir"]) / "label_2").glob("*.txt")) == sorted(val)
        for cls in CLASSES:
            for metric in ("bev", "3d"):
                value, n = r[f"{cls}_{metric}"], moderate[cls]
                assert value == pytest.approx(max(min(n, 41) - 1, 0) / 40), (r["name"], cls, metric, n, value)
    assert records[0]["bar_met"] is False  # 3 train / 3 val frames: far below the bar's data sizes
    assert "bar_met" not in records[1]  # the baseline is reported, not judged


def _row(**changes: Any) -> dict[str, Any]:
    row = {"train_frames": BAR_TRAIN_FRAMES, "val_frames": BAR_VAL_FRAMES, "train_s": 60.0 * BAR_MINUTES,
           "Car_bev": BAR_CAR_BEV, "Car_3d": BAR_CAR_3D}
    row.update(changes)
    return row


def test_bar_holds_at_its_boundaries_and_fails_just_past_each() -> None:
    assert bar_met(_row())
    for key, value in [("train_frames", BAR_TRAIN_FRAMES - 1), ("val_frames", BAR_VAL_FRAMES - 1),
                       ("train_s", 60.0 * BAR_MINUTES + 1), ("Car_bev", BAR_CAR_BEV - 1e-6),
                       ("Car_3d", BAR_CAR_3D - 1e-6), ("Car_3d", float("nan")), ("Car_bev", None)]:
        assert not bar_met(_row(**{key: value})), (key, value)


@pytest.mark.parametrize("kwargs, needle", [
    ({"experiments": []}, "experiments"),
    ({"experiments": ["dsvt_synth", "dsvt_synth"]}, "each experiment once"),
    ({"experiments": ["nosuch"]}, "nosuch"),
    ({"experiments": ["gs3d_spare"]}, "gs3d_spare"),
    ({"overrides": {"pointpillars_synth": ["trainer.max_steps=3"]}, "experiments": ["dsvt_synth"]},
     "overrides.pointpillars_synth"),
    ({"overrides": {"dsvt_synth": ["model.nope=1"]}}, "model.nope"),
    ({"val_fraction": 1.0}, "val_fraction"),
    ({"sizes": {"frames": [1]}}, "sizes.frames"),
    ({"sizes": {"steps": [2, 4]}}, "sizes.steps"),
    ({"sizes": {"epochs": [2]}}, "epochs"),
])
def test_bad_arguments_fail_before_anything_runs(tmp_path: Path, kwargs: dict[str, Any], needle: str) -> None:
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=needle):
        run_dsvt_quality_suite(quick=True, work_dir=str(work), **kwargs)
    assert not work.exists()


def test_work_dir_must_be_new_or_empty(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("x")
    with pytest.raises(ValueError, match="work_dir"):
        run_dsvt_quality_suite(quick=True, work_dir=str(tmp_path))
