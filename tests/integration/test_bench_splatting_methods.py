"""``sparse3d-bench splatting_methods`` in quick mode (2 tiny generated scenes, reprojection + gs3d, 4 steps): the
records have their fields, every scene's PSNR / PSNR-M / SSIM equal an independent recomputation from the PNGs
the suite wrote, the mean rows are the means of the scene rows, and bad arguments fail before anything runs.

Timings are not asserted (shared machines); only that the parts of a step add up to no more than the step.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from sparse3d.bench import available_suites
from sparse3d.bench.common import RECORD_FIELDS, write_json
from sparse3d.bench.splatting_methods import QUICK_SIZES, run_splatting_methods_suite
from sparse3d.io.images import read_image, read_mask
from sparse3d.io.spare import EVAL_LIGHTING, image_filename, load_scene, read_split, split_filename
from sparse3d.metrics.image import ssim

METHODS = ["reprojection", "gs3d"]
ROW_FIELDS = ("method", "scene", "dataset", "steps", "psnr", "psnr_m", "ssim", "num_gaussians", "train_s", "fit_s",
              "step_s")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[dict[str, Any]]]:
    work = tmp_path_factory.mktemp("splatting_methods") / "work"
    records = run_splatting_methods_suite(quick=True, methods=METHODS, work_dir=str(work))
    return work, records


def _scene_rows(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [r for r in records if r["scene"] != "mean"]


def test_suite_is_registered() -> None:
    assert "splatting_methods" in available_suites()


def test_records_have_their_fields(quick_run: tuple[Path, list[dict[str, Any]]], tmp_path: Path) -> None:
    work, records = quick_run
    scenes = list(read_split(work / "scenes" / split_filename(1, "development")))
    assert len(scenes) == QUICK_SIZES["scenes"][0] == 2
    rows = _scene_rows(records)
    assert [(r["scene"], r["method"]) for r in rows] == [(s, m) for s in scenes for m in METHODS]
    assert [r["name"] for r in records[len(rows):]] == [f"{m} mean" for m in METHODS]
    for r in records:
        assert all(k in r for k in (*RECORD_FIELDS, *ROW_FIELDS)), sorted(set(ROW_FIELDS) - set(r))
        assert r["suite"] == "splatting_methods" and (r["width"], r["height"]) == QUICK_SIZES["resolution"]
        assert not r.get("error")
    for r in rows:
        assert r["dataset"] in ("Synthetic", "DTU") and r["name"] == f"{r['method']} {r['scene']}"
        assert all(math.isfinite(r[k]) for k in ("psnr", "psnr_m", "ssim"))
        if r["method"] == "reprojection":  # nothing to train: no steps, no Gaussians, no step time
            assert r["steps"] == 0 and r["num_gaussians"] is None and r["step_s"] is None
            continue
        assert r["steps"] == r["size"] == QUICK_SIZES["steps"][0] and r["num_gaussians"] > 0
        assert r["ours_s"] == r["train_s"] > 0 and r["fit_s"] >= r["train_s"]
        parts = [r[f"step_{k}_s"] for k in ("rasterizer", "losses", "update")]
        assert all(p > 0 for p in parts)
        assert sum(parts) <= r["step_s"] * (1 + 1e-9)  # timed inside the loop's step time
        assert r["step_other_s"] == pytest.approx(r["step_s"] - sum(parts), abs=1e-12)
        assert r["step_s"] == pytest.approx(r["train_s"] / r["steps"])
    write_json(records, tmp_path / "methods.json")  # every record is valid JSON output


def test_scores_match_an_independent_recomputation(quick_run: tuple[Path, list[dict[str, Any]]]) -> None:
    """PSNR and PSNR-M in float64 numpy from the written 8-bit PNGs and the ground truth on disk; SSIM with
    :func:`sparse3d.metrics.image.ssim` on the same images."""
    work, records = quick_run
    root = work / "scenes"
    entries = read_split(root / split_filename(1, "development"))
    for r in _scene_rows(records):
        entry = entries[r["scene"]]
        scene = load_scene(root, entry)
        psnrs, psnrs_m, ssims = [], [], []
        for view in entry.test_views:
            pred = read_image(Path(r["render_dir"]) / image_filename(entry.dataset, view, EVAL_LIGHTING))
            gt = read_image(scene.image_path(view, EVAL_LIGHTING))
            mask_path = scene.mask_path(view)
            assert mask_path is not None
            mask = read_mask(mask_path).astype(bool)
            assert pred.shape == gt.shape == (*mask.shape, 3) == (QUICK_SIZES["resolution"][1],
                                                                  QUICK_SIZES["resolution"][0], 3)
            err = (pred.astype(np.float64) - gt.astype(np.float64)) ** 2
            psnrs.append(10 * math.log10(1.0 / err.mean()))
            psnrs_m.append(10 * math.log10(1.0 / err[mask].mean()))
            ssims.append(float(ssim(pred, gt)))
        assert r["psnr"] == pytest.approx(float(np.mean(psnrs)), abs=1e-3), r["name"]
        assert r["psnr_m"] == pytest.approx(float(np.mean(psnrs_m)), abs=1e-3), r["name"]
        assert r["ssim"] == pytest.approx(float(np.mean(ssims)), abs=1e-5), r["name"]


def test_mean_rows_are_means_of_the_scene_rows(quick_run: tuple[Path, list[dict[str, Any]]]) -> None:
    _, records = quick_run
    rows = _scene_rows(records)
    means = {r["method"]: r for r in records if r["scene"] == "mean"}
    for method, mean in means.items():
        mine = [r for r in rows if r["method"] == method]
        assert mean["num_scenes"] == len(mine) == 2 and mean["scenes"] == [r["scene"] for r in mine]
        for key in ("psnr", "psnr_m", "ssim", "train_s", "fit_s"):
            assert mean[key] == pytest.approx(float(np.mean([r[key] for r in mine]))), (method, key)
    gs3d = [r for r in rows if r["method"] == "gs3d"]
    reproj = [r for r in rows if r["method"] == "reprojection"]
    for key in ("psnr_m", "psnr", "ssim"):
        assert means["reprojection"][f"delta_{key}_vs_gs3d"] == pytest.approx(
            means["reprojection"][key] - means["gs3d"][key])
    assert means["gs3d"]["step_rasterizer_s"] == pytest.approx(np.mean([r["step_rasterizer_s"] for r in gs3d]))
    wins = sum(g["psnr_m"] > p["psnr_m"] for g, p in zip(gs3d, reproj, strict=True))
    assert means["gs3d"]["wins_vs_reprojection"] == wins and means["gs3d"]["scenes_vs_reprojection"] == 2
    assert f"PSNR-M above reprojection on {wins}/2 scenes" in means["gs3d"]["notes"]


@pytest.mark.parametrize("kwargs, needle", [
    ({"methods": ["gs3d", "nope"]}, "nope"),
    ({"methods": []}, "methods"),
    ({"sizes": {"frames": [2]}}, "frames"),
    ({"sizes": {"resolution": [64]}}, "resolution"),
    ({"sizes": {"steps": [4, 8]}}, "steps"),
    ({"methods": ["gs3d"], "overrides": {"rdggs": ["method.rdg_weight=0"]}}, "overrides.rdggs"),
    ({"methods": ["gs3d"], "overrides": {"gs3d": ["method.nope=1"]}}, "method.nope"),
    ({"methods": ["gs3d"], "overrides": {"gs3d": ["method.num_points=-5"]}}, "method gs3d"),
    ({"naming": "Blender"}, "naming"),
    ({"seed": -1}, "seed"),
])
def test_bad_arguments_fail_before_anything_runs(kwargs: dict[str, Any], needle: str, tmp_path: Path) -> None:
    work = tmp_path / "work"
    with pytest.raises(ValueError, match=needle.replace(".", r"\.")):
        run_splatting_methods_suite(quick=True, work_dir=str(work), **kwargs)
    assert not work.exists()


def test_work_dir_must_be_new_or_empty(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("an earlier run")
    with pytest.raises(ValueError, match="work_dir"):
        run_splatting_methods_suite(quick=True, methods=["gs3d"], work_dir=str(tmp_path))
