"""Score rendered test views against SpaRe ground truth: PSNR, PSNR-M, SSIM, SSIM-M, LPIPS, LPIPS-M.

The protocol is that of the AIM 2024 Sparse Neural Rendering Challenge on its SpaRe dataset (Nazarczuk et al.,
"AIM 2024 Sparse Neural Rendering Challenge: Dataset and Benchmark", ECCV Workshops 2024; data layout and
evaluation rules at https://sparebenchmark.github.io), whose scenes come from the synthetic SpaRe set and from
DTU (Jensen et al., "Large Scale Multi-view Stereopsis Evaluation", CVPR 2014). Where the challenge text leaves
a choice open, the choice made here is written into every result (:meth:`RenderEvaluation.protocol`):

* Predictions are a directory or a submission ``.zip`` holding ``<scene>/<image_filename(dataset, view,
  3)>`` for every scene and test view of the split; ground truth is read with :mod:`sparse3d.io.spare`
  (lighting 3).
* Before any metric is computed every expected file is checked: missing files, files that are not PNG, size
  mismatches and files that do not decode completely (zip or PNG CRC errors, truncation, more pixels than the
  cap) are all listed in one error, worded as ``sparse3d-spare check`` words them (both read and judge files
  with :mod:`sparse3d.spare.check`). Nothing is resized; alpha channels are dropped by the reader.
* Per image: PSNR, SSIM (Wang et al., IEEE TIP 2004) and LPIPS (Zhang et al., CVPR 2018) on the full frame.
  With a GT mask (``<scene>/masks/<stem>.png``): PSNR-M in the chosen mode
  (:data:`~sparse3d.metrics.image.PSNR_MASK_MODES`), SSIM-M and LPIPS-M on the crop to the GT mask's tight
  box (grown to 11 px for SSIM and 31 px for LPIPS when thinner, see :mod:`sparse3d.metrics.image`). Without
  a mask, or with an empty one, the -M metrics of that image are *not computed* (``None``).
* Per scene: mean over its images (the -M means over the images that have them). Per dataset: mean of
  the scene means, "Synthetic" and "DTU" separately, never mixed. A mean including an infinite PSNR is
  infinite.
* LPIPS needs two user files (AlexNet backbone + v0.1 heads); without them it is *not computed*.

Writers for these results (JSON, CSV, markdown) are in :mod:`sparse3d.spare.report`.
"""

from __future__ import annotations

import logging
import zipfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from sparse3d.io.images import decode_image, read_image, read_mask
from sparse3d.io.spare import (
    DATASETS,
    EVAL_LIGHTING,
    SpareScene,
    SplitEntry,
    image_filename,
    load_scene,
    read_split,
)
from sparse3d.metrics import image as M
from sparse3d.metrics.lpips import LPIPS, MIN_SIZE, describe_weights, resolve_weights
from sparse3d.spare.check import MemberError, image_header, read_file, read_member, verify_image
from sparse3d.utils.errors import UserError

log = logging.getLogger("sparse3d.spare.evaluation")

PathLike = str | Path
METRICS = ("psnr", "psnr_m", "ssim", "ssim_m", "lpips", "lpips_m")
"""Metric keys, in table order; every per-image, per-scene and per-dataset record has one field per key."""


@dataclass
class ImageScore:
    """Metrics of one rendered test view; ``None`` = not computed (no/empty mask, or no LPIPS weights)."""

    scene: str
    dataset: str
    view: int
    file: str
    width: int
    height: int
    psnr: float
    ssim: float
    lpips: float | None = None
    psnr_m: float | None = None
    ssim_m: float | None = None
    lpips_m: float | None = None
    mask_fraction: float | None = None
    bbox: tuple[int, int, int, int] | None = None  # (r0, r1, c0, c1) inclusive, tight box of the GT mask


@dataclass
class RenderEvaluation:
    """Everything a report needs: per image, per scene and per dataset numbers plus the protocol used."""

    images: list[ImageScore]
    scenes: dict[str, dict[str, Any]]
    datasets: dict[str, dict[str, Any]]
    psnr_mask_mode: str
    lpips: dict[str, Any]
    sources: dict[str, str] = field(default_factory=dict)

    def protocol(self) -> dict[str, Any]:
        return {
            "psnr": "10*log10(1/MSE), data range 1, all pixels and channels; identical images -> inf",
            "psnr_mask_mode": self.psnr_mask_mode,
            "ssim": "pytorch_msssim, gaussian window 11, sigma 1.5, K1 0.01, K2 0.03, data range 1, "
            "valid region (no padding)",
            "bbox": "tight box of the GT mask, grown to 11 px (SSIM-M) / 31 px (LPIPS-M) when thinner",
            "lpips": "AlexNet v0.1 linear heads, inputs mapped to [-1, 1]",
            "lighting": EVAL_LIGHTING,
            "scene_mean": "mean over the scene's images (-M: over images with a non-empty mask)",
            "dataset_mean": "mean of scene means, per dataset (Synthetic and DTU separately)",
        }


# ---------------------------------------------------------------------------------------------- predictions
class _Predictions:
    """Read-only view of a predictions directory or submission zip, addressed by ``scene/file`` names."""

    def __init__(self, root: Path, archive: zipfile.ZipFile | None) -> None:
        self.root = root
        self.archive = archive
        self.members = (
            {n for n in archive.namelist() if not n.endswith("/")} if archive is not None else set()
        )

    def location(self, name: str) -> str:
        return f"{self.root}:{name}" if self.archive is not None else str(self.root / name)

    def exists(self, name: str) -> bool:
        return name in self.members if self.archive is not None else (self.root / name).is_file()

    def read_bytes(self, name: str) -> bytes:
        """The file's bytes (zip CRC checked, size capped); :class:`~sparse3d.spare.check.MemberError` if not."""
        if self.archive is not None:
            return read_member(self.archive, name)
        return read_file(self.root / name)

    def read(self, name: str) -> np.ndarray:
        """The decoded image; UserError naming the archive and member (or the file) when it cannot be used."""
        try:
            return decode_image(self.read_bytes(name))
        except MemberError as exc:
            raise UserError(f"{self.location(name)}: {exc.message}") from None
        except ValueError as exc:
            raise UserError(f"{self.location(name)}: {exc}") from None

    def layout_hint(self, scenes: Sequence[str]) -> str:
        """Explain a common packaging mistake: scene folders inside one enclosing folder."""
        names = (
            self.members
            if self.archive is not None
            else {str(p.relative_to(self.root)) for p in self.root.rglob("*") if p.is_file()}
        )
        tops = {n.split("/", 1)[0] for n in names if "/" in n}
        if len(tops) == 1 and not (tops & set(scenes)):
            return f" (everything is inside {next(iter(tops))!r}/; scene folders must be at the top level)"
        return ""


@contextmanager
def _open_predictions(path: PathLike) -> Iterator[_Predictions]:
    p = Path(path).expanduser()
    if p.is_dir():
        yield _Predictions(p, None)
        return
    if not p.is_file():
        raise UserError(f"predictions not found: {p} (give a directory or a submission .zip)")
    if not zipfile.is_zipfile(p):
        raise UserError(f"{p}: predictions must be a directory or a .zip archive")
    try:
        archive = zipfile.ZipFile(p)
    except (zipfile.BadZipFile, OSError, EOFError) as exc:
        raise UserError(f"{p}: not a readable zip archive ({exc})") from None
    with archive:
        yield _Predictions(p, archive)


# ----------------------------------------------------------------------------------------------- evaluation
def _scene_entries(split: PathLike, data_root: Path) -> tuple[Path, dict[str, SplitEntry]]:
    split_path = Path(split).expanduser()
    if not split_path.is_file() and not split_path.is_absolute() and (data_root / split_path).is_file():
        split_path = data_root / split_path  # "split=Track1_split_development.json" next to the data
    return split_path, read_split(split_path)


def _check_predictions(
    preds: _Predictions, scenes: dict[str, SpareScene], entries: dict[str, SplitEntry]
) -> None:
    """Every expected file present, a PNG of the GT size that decodes completely; report all problems at once."""
    missing: list[str] = []
    problems: list[str] = []
    for name, entry in entries.items():
        width, height = scenes[name].cameras.width, scenes[name].cameras.height
        for view in entry.test_views:
            rel = f"{name}/{image_filename(entry.dataset, view, EVAL_LIGHTING)}"
            if not preds.exists(rel):
                missing.append(rel)
                continue
            try:
                data = preds.read_bytes(rel)
                info = image_header(data)
                if (info.width, info.height) != (width, height):
                    problems.append(
                        f"{rel}: size {info.width}x{info.height} differs from the ground truth {width}x{height} "
                        "(predictions are never resized)"
                    )
                    continue
                verify_image(data)
            except MemberError as exc:
                problems.append(f"{rel}: {exc.message}")
    if missing:
        hint = preds.layout_hint(list(entries))
        problems.insert(
            0, f"{len(missing)} missing prediction(s){hint}: " + ", ".join(missing)
        )
    if len(problems) == 1:
        raise UserError(f"cannot evaluate the predictions in {preds.root}: {problems[0]}")
    if problems:
        raise UserError(f"cannot evaluate the predictions in {preds.root}:\n  " + "\n  ".join(problems))


def _score_image(
    pred_np: np.ndarray,
    gt_np: np.ndarray,
    mask_np: np.ndarray | None,
    mode: str,
    lpips: LPIPS | None,
    device: torch.device,
) -> dict[str, Any]:
    pred, gt = torch.from_numpy(pred_np).to(device), torch.from_numpy(gt_np).to(device)
    out: dict[str, Any] = {"psnr": float(M.psnr(pred, gt)), "ssim": float(M.ssim(pred, gt))}
    if lpips is not None:
        out["lpips"] = float(lpips.distance(pred, gt))
    if mask_np is None or not mask_np.any():
        return out
    mask = torch.from_numpy(mask_np).to(device)
    box = M.mask_bbox(mask)
    out["bbox"] = box
    out["mask_fraction"] = float(mask_np.mean())
    out["psnr_m"] = float(M.psnr_masked(pred, gt, mask, mode=mode))
    out["ssim_m"] = float(M.ssim_bbox(pred, gt, mask))
    if lpips is not None:
        lbox = M.grow_bbox(box, MIN_SIZE, mask.shape[0], mask.shape[1])
        out["lpips_m"] = float(lpips.distance(M.crop(pred, lbox), M.crop(gt, lbox)))
    return out


def mean_present(values: Sequence[float | None]) -> float | None:
    """Mean of the values that are not ``None`` (not computed); ``None`` when there are none."""
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


def _aggregate(images: list[ImageScore], entries: dict[str, SplitEntry]) -> tuple[dict, dict]:
    scenes: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        rows = [im for im in images if im.scene == name]
        summary: dict[str, Any] = {
            "dataset": entry.dataset,
            "num_images": len(rows),
            "num_masked": sum(im.psnr_m is not None for im in rows),
        }
        summary.update({key: mean_present([getattr(im, key) for im in rows]) for key in METRICS})
        scenes[name] = summary
    datasets: dict[str, dict[str, Any]] = {}
    for dataset in DATASETS:
        members = {n: s for n, s in scenes.items() if s["dataset"] == dataset}
        if not members:
            continue
        summary = {
            "num_scenes": len(members),
            "num_images": sum(s["num_images"] for s in members.values()),
            "num_scenes_masked": sum(s["psnr_m"] is not None for s in members.values()),
            "scenes": list(members),
        }
        summary.update({key: mean_present([s[key] for s in members.values()]) for key in METRICS})
        datasets[dataset] = summary
    return scenes, datasets


def evaluate_rendering(
    pred: PathLike,
    data_root: PathLike,
    split: PathLike,
    *,
    psnr_mask_mode: str = "mask_pixels",
    lpips_backbone: PathLike | None = None,
    lpips_heads: PathLike | None = None,
    calibration_dir: PathLike | None = None,
    device: str | torch.device = "cpu",
    progress: bool = False,
) -> RenderEvaluation:
    """Score a predictions directory/zip against the ground truth of every scene in ``split``.

    LPIPS weights default to ``$SPARSE3D_LPIPS_BACKBONE`` / ``$SPARSE3D_LPIPS_HEADS``; without them
    LPIPS is not computed. Raises :class:`UserError` for anything the user can fix (missing files, sizes,
    bad weights).
    """
    if psnr_mask_mode not in M.PSNR_MASK_MODES:
        raise UserError(f"psnr_mask_mode must be one of {list(M.PSNR_MASK_MODES)}, got {psnr_mask_mode!r}")
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise UserError(f"data_root not found: {root}")
    split_path, entries = _scene_entries(split, root)
    torch_device = torch.device(device)
    weights = resolve_weights(lpips_backbone, lpips_heads)
    lpips_model: LPIPS | None = None
    try:
        lpips_info = describe_weights(weights)
        if weights.available:
            lpips_model = LPIPS.from_files(weights.backbone, weights.heads, device=torch_device)  # type: ignore[arg-type]
    except ValueError as exc:
        raise UserError(str(exc)) from None
    if lpips_info["computed"] and not (
        lpips_info["backbone_is_reference"] and lpips_info["heads_is_reference"]
    ):
        log.warning(
            "LPIPS weights differ from the published files (see results.json 'lpips'); numbers are not "
            "comparable with published LPIPS"
        )
    scenes = {
        name: load_scene(root, entry, calibration_dir=calibration_dir) for name, entry in entries.items()
    }

    images: list[ImageScore] = []
    with _open_predictions(pred) as preds:
        _check_predictions(preds, scenes, entries)
        jobs = [(name, view) for name, entry in entries.items() for view in entry.test_views]
        for name, view in tqdm(jobs, desc="evaluate", unit="img", disable=not progress):
            scene, entry = scenes[name], entries[name]
            rel = f"{name}/{image_filename(entry.dataset, view, EVAL_LIGHTING)}"
            gt_path = scene.image_path(view, EVAL_LIGHTING)
            if not gt_path.is_file():
                raise UserError(f"ground-truth image not found: {gt_path}")
            try:
                gt = read_image(gt_path)
            except ValueError as exc:
                raise UserError(str(exc)) from None
            if (gt.shape[1], gt.shape[0]) != (scene.cameras.width, scene.cameras.height):
                raise UserError(
                    f"{gt_path}: ground-truth size {gt.shape[1]}x{gt.shape[0]} differs from the scene's "
                    f"{scene.cameras.width}x{scene.cameras.height} (the size of most of its images)"
                )
            prediction = preds.read(rel)
            if prediction.shape != gt.shape:
                raise UserError(
                    f"{preds.location(rel)}: size {prediction.shape[1]}x{prediction.shape[0]} differs "
                    f"from the ground truth {gt.shape[1]}x{gt.shape[0]} ({gt_path})"
                )
            mask_path = scene.mask_path(view)
            try:
                mask = read_mask(mask_path) if mask_path is not None else None
            except ValueError as exc:
                raise UserError(str(exc)) from None
            if mask is not None and mask.shape != gt.shape[:2]:
                raise UserError(
                    f"{mask_path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from the "
                    f"ground-truth image {gt.shape[1]}x{gt.shape[0]}"
                )
            if mask is not None and not mask.any():
                log.warning("%s: empty object mask; -M metrics not computed for this view", mask_path)
            try:
                scores = _score_image(prediction, gt, mask, psnr_mask_mode, lpips_model, torch_device)
            except ValueError as exc:  # e.g. an image smaller than the SSIM window or the LPIPS minimum
                raise UserError(f"{preds.location(rel)}: {exc}") from None
            images.append(
                ImageScore(
                    scene=name,
                    dataset=entry.dataset,
                    view=view,
                    file=rel,
                    width=gt.shape[1],
                    height=gt.shape[0],
                    **scores,
                )
            )
    scene_summary, dataset_summary = _aggregate(images, entries)
    sources = {
        "pred": str(Path(pred).expanduser().resolve()),
        "data_root": str(root.resolve()),
        "split": str(split_path.resolve()),
    }
    return RenderEvaluation(images, scene_summary, dataset_summary, psnr_mask_mode, lpips_info, sources)
