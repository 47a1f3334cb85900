"""``sparse3d-eval evaluator=render`` end to end on a hand-built SpaRe-layout data root.

The data root, split and predictions are written here with ``sparse3d.io.images.write_png`` and the
reader's naming helpers (no scene generator): two DTU scenes (one with masks, one without; one empty mask)
and one Synthetic scene (one prediction identical to its ground truth). Expected PSNR / PSNR-M values are
computed in the test from the 8-bit arrays, independently of the evaluator.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import subprocess
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import pytest
import torch

from sparse3d.io.images import write_mask, write_png
from sparse3d.io.spare import (
    SplitEntry,
    camera_filename,
    image_filename,
    mask_filename,
    write_projection_matrix,
    write_split,
)
from sparse3d.metrics import image as M
from sparse3d.spare.evaluation import evaluate_rendering
from sparse3d.utils.errors import UserError

RunCli = Callable[..., subprocess.CompletedProcess[str]]
H, W = 48, 64
INPUTS = (0, 1, 2)
TESTS = tuple(range(3, 13))
SCENES = {"scan1": ("DTU", True), "scan2": ("DTU", False), "Toy": ("Synthetic", True)}
EMPTY_MASK = ("scan1", 12)  # a view whose mask has no object pixels
IDENTICAL = ("Toy", 5)  # a prediction equal to its ground truth


def _projection(view: int) -> np.ndarray:
    """A camera on a ring around the origin looking at it (OpenCV axes), as P = K [R | t]."""
    angle = 2 * math.pi * view / 49
    centre = np.array([3 * math.cos(angle), 3 * math.sin(angle), 1.0])
    forward = -centre / np.linalg.norm(centre)
    right = np.cross(forward, [0.0, 0.0, 1.0])
    right /= np.linalg.norm(right)
    down = np.cross(forward, right)
    R = np.stack([right, down, forward])
    K = np.array([[50.0, 0, W / 2], [0, 50.0, H / 2], [0, 0, 1]])
    return K @ np.hstack([R, (-R @ centre)[:, None]])


def _gt_image(rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:H, 0:W] / W
    phase = rng.uniform(0, 6, size=3)
    base = np.stack(
        [np.sin(6 * xx + phase[0]), np.cos(4 * yy + phase[1]), np.sin(9 * xx * yy + phase[2])], -1
    )
    return np.clip(np.rint(255 * (0.5 + 0.3 * base) + rng.integers(-10, 11, size=(H, W, 3))), 0, 255).astype(
        np.uint8
    )


def _build(root: Path) -> dict[str, Any]:
    """Write GT scenes, split and predictions; return the arrays needed for the expected values."""
    rng = np.random.default_rng(0)
    data, preds = root / "data", root / "preds"
    arrays: dict[tuple[str, int], dict[str, Any]] = {}
    for scene, (dataset, has_masks) in SCENES.items():
        for view in INPUTS + TESTS:
            write_projection_matrix(data / scene / "cameras" / camera_filename(view), _projection(view))
        for view in TESTS:
            gt = _gt_image(rng)
            mask = np.zeros((H, W), dtype=bool)
            r0, c0 = int(rng.integers(2, 20)), int(rng.integers(2, 30))
            mask[r0 : r0 + 20, c0 : c0 + 25] = True
            if (scene, view) == EMPTY_MASK:
                mask[:] = False
            pred = gt.astype(np.int32)
            pred[mask] += rng.integers(-20, 21, size=(int(mask.sum()), 3))  # object errors
            pred[~mask] += rng.integers(-6, 7, size=(int((~mask).sum()), 3))  # background errors
            pred = np.clip(pred, 0, 255).astype(np.uint8)
            if (scene, view) == IDENTICAL:
                pred = gt.copy()
            name = image_filename(dataset, view, 3)
            write_png(data / scene / name, gt)
            write_png(preds / scene / name, pred)
            if has_masks:
                write_mask(data / scene / "masks" / mask_filename(dataset, view), mask)
            arrays[scene, view] = {
                "gt": gt,
                "pred": pred,
                "mask": mask if has_masks else None,
                "file": f"{scene}/{name}",
            }
    split = write_split(
        root / "split.json", [SplitEntry(s, INPUTS, TESTS, d) for s, (d, _) in SCENES.items()]
    )
    return {"data": data, "preds": preds, "split": split, "arrays": arrays}


def _expected(
    arrays: dict[tuple[str, int], dict[str, Any]], mode: str
) -> dict[tuple[str, int], dict[str, Any]]:
    out = {}
    for key, a in arrays.items():
        p, g = a["pred"].astype(np.float64) / 255, a["gt"].astype(np.float64) / 255
        sq = (p - g) ** 2
        psnr = math.inf if sq.sum() == 0 else -10 * math.log10(sq.mean())
        psnr_m = None
        if a["mask"] is not None and a["mask"].any():
            m = a["mask"]
            mse = sq[m].mean() if mode == "mask_pixels" else sq[m].sum() / sq.size
            psnr_m = math.inf if mse == 0 else -10 * math.log10(mse)
        out[key] = {"psnr": psnr, "psnr_m": psnr_m}
    return out


def _mean(values: list[float]) -> float:
    return float(np.mean(values))


@pytest.fixture(scope="module")
def bench(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return _build(tmp_path_factory.mktemp("render_eval"))


def _run_eval(
    run_cli: RunCli,
    bench: dict[str, Any],
    out: Path,
    pred: Path,
    *extra: str,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    return run_cli(
        [
            "sparse3d-eval",
            "evaluator=render",
            f"pred={pred}",
            f"data_root={bench['data']}",
            f"split={bench['split']}",
            f"paths.output_root={out}",
            "progress=false",
            "device=cpu",
            *extra,
        ],
        extra_env=env,
    )


def _run_dir(out: Path) -> Path:
    runs = list((out / "eval" / "render").iterdir())
    assert len(runs) == 1, runs
    return runs[0]


def _ok(result: subprocess.CompletedProcess[str]) -> None:
    assert result.returncode == 0, f"STDOUT:\n{result.stdout[-3000:]}\nSTDERR:\n{result.stderr[-3000:]}"


def _sections(markdown: str) -> dict[str, str]:
    return {part.split("\n", 1)[0].strip(): part for part in markdown.split("\n## ")[1:]}


def test_render_eval_directory_without_lpips(run_cli: RunCli, bench: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = _run_eval(
        run_cli, bench, out, bench["preds"], env={"SPARSE3D_LPIPS_BACKBONE": "", "SPARSE3D_LPIPS_HEADS": ""}
    )
    _ok(result)
    run = _run_dir(out)
    results = json.loads((run / "results.json").read_text())
    expected = _expected(bench["arrays"], "mask_pixels")

    # per image: PSNR / PSNR-M from the 8-bit arrays; SSIM / SSIM-M equal the library metrics on them
    images = {(im["scene"], im["view"]): im for im in results["images"]}
    assert len(images) == 30
    for key, want in expected.items():
        got, arr = images[key], bench["arrays"][key]
        assert got["file"] == arr["file"]
        if math.isinf(want["psnr"]):
            assert got["psnr"] == "inf" and got["ssim"] == pytest.approx(1.0, abs=1e-6)
        else:
            assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-4)
            assert got["ssim"] == pytest.approx(
                float(M.ssim(arr["pred"] / 255.0, arr["gt"] / 255.0)), abs=1e-5
            )
        assert got["lpips"] is None and got["lpips_m"] is None
        if want["psnr_m"] is None:
            assert got["psnr_m"] is None and got["ssim_m"] is None and got["bbox"] is None
        else:
            if math.isinf(want["psnr_m"]):
                assert got["psnr_m"] == "inf"
            else:
                assert got["psnr_m"] == pytest.approx(want["psnr_m"], abs=1e-4)
            assert tuple(got["bbox"]) == M.mask_bbox(arr["mask"])
            assert got["ssim_m"] == pytest.approx(
                float(M.ssim_bbox(arr["pred"] / 255.0, arr["gt"] / 255.0, arr["mask"])), abs=1e-5
            )

    # per scene and per dataset: DTU and Synthetic kept apart
    scene1 = [expected["scan1", v]["psnr"] for v in TESTS]
    scene2 = [expected["scan2", v]["psnr"] for v in TESTS]
    scene1_m = [expected["scan1", v]["psnr_m"] for v in TESTS if (("scan1", v) != EMPTY_MASK)]
    assert results["scenes"]["scan1"]["psnr"] == pytest.approx(_mean(scene1), abs=1e-4)
    assert results["scenes"]["scan1"]["psnr_m"] == pytest.approx(_mean(scene1_m), abs=1e-4)
    assert results["scenes"]["scan1"]["num_masked"] == 9
    assert results["scenes"]["scan2"]["psnr_m"] is None and results["scenes"]["scan2"]["num_masked"] == 0
    dtu, synth = results["datasets"]["DTU"], results["datasets"]["Synthetic"]
    assert dtu["scenes"] == ["scan1", "scan2"] and synth["scenes"] == ["Toy"]
    assert dtu["psnr"] == pytest.approx(_mean([_mean(scene1), _mean(scene2)]), abs=1e-4)
    assert dtu["psnr_m"] == pytest.approx(_mean(scene1_m), abs=1e-4) and dtu["num_scenes_masked"] == 1
    assert synth["psnr"] == "inf" and synth["num_images"] == 10  # one identical view makes the mean infinite
    assert results["protocol"]["psnr_mask_mode"] == "mask_pixels" and results["lpips"] == {"computed": False}

    # CSV: one row per image, empty cells for not computed, inf spelled out
    with (run / "per_image.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 30
    by_key = {(r["scene"], int(r["view"])): r for r in rows}
    assert by_key["scan2", 3]["psnr_m"] == "" and by_key["scan1", 3]["psnr_m"] != ""
    assert by_key[IDENTICAL]["psnr"] == "inf" and by_key[IDENTICAL]["dataset"] == "Synthetic"
    assert float(by_key["scan1", 4]["psnr"]) == pytest.approx(expected["scan1", 4]["psnr"], abs=1e-4)

    # markdown: modes named, per-dataset tables, not-computed cells
    markdown = (run / "results.md").read_text()
    assert markdown in result.stdout
    assert "PSNR-M mode: `mask_pixels`" in markdown and "LPIPS: not computed (no weights" in markdown
    sections = _sections(markdown)
    assert set(sections) == {"DTU", "Synthetic"}
    assert "| scan1 |" in sections["DTU"] and "| scan2 |" in sections["DTU"] and "Toy" not in sections["DTU"]
    assert "| Toy |" in sections["Synthetic"] and "scan" not in sections["Synthetic"]
    scan2_row = next(line for line in sections["DTU"].splitlines() if line.startswith("| scan2 |"))
    assert scan2_row.count("n/c") == 4  # PSNR-M, SSIM-M, LPIPS, LPIPS-M
    assert f"{dtu['psnr']:.2f}" in sections["DTU"] and "**inf**" in sections["Synthetic"]


def _random_lpips_files(root: Path) -> tuple[Path, Path]:
    """PLUMBING ONLY: random weights in torchvision / lpips key layouts (meaningless as a metric)."""
    g = torch.Generator().manual_seed(0)
    shapes = {
        0: (64, 3, 11, 11),
        3: (192, 64, 5, 5),
        6: (384, 192, 3, 3),
        8: (256, 384, 3, 3),
        10: (256, 256, 3, 3),
    }
    backbone = {}
    for i, s in shapes.items():
        backbone[f"features.{i}.weight"] = torch.randn(s, generator=g) * 0.05
        backbone[f"features.{i}.bias"] = torch.zeros(s[0])
    heads = {
        f"lin{i}.model.1.weight": torch.rand((1, c, 1, 1), generator=g)
        for i, c in enumerate((64, 192, 384, 256, 256))
    }
    torch.save(backbone, root / "alexnet_random.pth")
    torch.save(heads, root / "alex_random.pth")
    return root / "alexnet_random.pth", root / "alex_random.pth"


def test_render_eval_zip_with_lpips_and_masked_full(
    run_cli: RunCli, bench: dict[str, Any], tmp_path: Path
) -> None:
    """A submission zip (one prediction saved as RGBA), LPIPS from the environment, masked_full PSNR-M."""
    archive = tmp_path / "submission.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for key, arr in bench["arrays"].items():
            if key == ("scan1", 3):
                rgba = np.dstack([arr["pred"][..., ::-1], np.full((H, W), 77, np.uint8)])  # BGRA for OpenCV
                zf.writestr(arr["file"], cv2.imencode(".png", rgba)[1].tobytes())
            else:
                zf.write(bench["preds"] / arr["file"], arr["file"])
    backbone, heads = _random_lpips_files(tmp_path)
    out = tmp_path / "out"
    result = _run_eval(
        run_cli,
        bench,
        out,
        archive,
        "psnr_mask_mode=masked_full",
        env={"SPARSE3D_LPIPS_BACKBONE": str(backbone), "SPARSE3D_LPIPS_HEADS": str(heads)},
    )
    _ok(result)
    results = json.loads((_run_dir(out) / "results.json").read_text())
    expected = _expected(bench["arrays"], "masked_full")
    images = {(im["scene"], im["view"]): im for im in results["images"]}
    for key, want in expected.items():
        got = images[key]
        if not math.isinf(want["psnr"]):
            assert got["psnr"] == pytest.approx(want["psnr"], abs=1e-4)  # alpha dropped: same as the RGB file
            assert got["lpips"] > 0
        else:
            assert got["lpips"] == 0.0
        if want["psnr_m"] is not None and not math.isinf(want["psnr_m"]):
            assert got["psnr_m"] == pytest.approx(want["psnr_m"], abs=1e-4)
            assert got["lpips_m"] >= 0
    assert results["lpips"]["computed"] is True and results["lpips"]["heads_is_reference"] is False
    assert results["datasets"]["DTU"]["lpips"] > 0
    markdown = (_run_dir(out) / "results.md").read_text()
    assert "PSNR-M mode: `masked_full`" in markdown and "NON-REFERENCE weights" in markdown


def test_missing_predictions_are_listed_by_name(
    run_cli: RunCli, bench: dict[str, Any], tmp_path: Path
) -> None:
    preds = tmp_path / "preds"
    shutil.copytree(bench["preds"], preds)
    gone = [bench["arrays"]["scan2", 7]["file"], bench["arrays"]["Toy", 11]["file"]]
    for rel in gone:
        (preds / rel).unlink()
    result = _run_eval(run_cli, bench, tmp_path / "out", preds)
    assert result.returncode == 2, result.stderr
    assert "sparse3d-eval: error:" in result.stderr and "2 missing prediction(s)" in result.stderr
    for rel in gone:
        assert rel in result.stderr
    assert "Traceback" not in result.stderr


def test_size_mismatch_and_layout_errors(
    bench: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("SPARSE3D_LPIPS_BACKBONE", raising=False)
    monkeypatch.delenv("SPARSE3D_LPIPS_HEADS", raising=False)
    preds = tmp_path / "preds"
    shutil.copytree(bench["preds"], preds)
    rel = bench["arrays"]["Toy", 4]["file"]
    write_png(preds / rel, np.zeros((H, W + 2, 3), np.uint8))
    with pytest.raises(UserError, match=rf"{rel}: size {W + 2}x{H} differs from the ground truth {W}x{H}"):
        evaluate_rendering(preds, bench["data"], bench["split"])
    nested = tmp_path / "nested.zip"
    with zipfile.ZipFile(nested, "w") as zf:
        for arr in bench["arrays"].values():
            zf.write(bench["preds"] / arr["file"], f"submission/{arr['file']}")
    with pytest.raises(UserError, match="inside 'submission'/; scene folders must be at the top level"):
        evaluate_rendering(nested, bench["data"], bench["split"])
    with pytest.raises(UserError, match="psnr_mask_mode"):
        evaluate_rendering(bench["preds"], bench["data"], bench["split"], psnr_mask_mode="box")
    with pytest.raises(FileNotFoundError, match="heads"):
        evaluate_rendering(bench["preds"], bench["data"], bench["split"], lpips_backbone=tmp_path / "x.pth")


def test_render_evaluator_requires_its_inputs(hydra_compose: Callable[..., Any], tmp_path: Path) -> None:
    """evaluator=render needs pred, data_root and split (not ckpt_path); the message says which one is missing."""
    from hydra.errors import ConfigCompositionException, InstantiationException
    from hydra.utils import instantiate

    cfg = hydra_compose("eval", ["evaluator=render", f"pred={tmp_path}", f"paths.output_root={tmp_path}"])
    with pytest.raises(InstantiationException) as info:
        instantiate(cfg.evaluator)
    assert isinstance(info.value.__cause__, UserError) and "evaluator=render needs data_root=" in str(info.value.__cause__)
    with pytest.raises(ConfigCompositionException, match="evaluator"):
        hydra_compose("eval", ["evaluator=nope", f"paths.output_root={tmp_path}"])


def test_deprecated_task_spelling_still_works(run_cli: RunCli, bench: dict[str, Any], tmp_path: Path) -> None:
    result = run_cli(["sparse3d-eval", "task=render", f"pred={bench['preds']}", f"data_root={bench['data']}",
                      f"split={bench['split']}", f"paths.output_root={tmp_path}", "progress=false", "device=cpu"])
    assert result.returncode == 0, result.stderr
    assert "`task=render` is deprecated" in result.stderr and "use `evaluator=render`" in result.stderr
    assert (_run_dir(tmp_path) / "results.json").is_file()

