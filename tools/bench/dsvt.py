"""``sparse3d-bench dsvt``: DSVT-P speed on one LiDAR frame, against the official code's way of doing it.

Rows (all CPU inference: ``eval()`` and ``torch.no_grad()``, published DSVT-P sizes):

* **input layer** -- :class:`~sparse3d.models.dsvt.input_layer.DSVTInputLayer` (set partition for both shifts
  and both orderings, plus the 8 position-embedding MLPs) against
  :class:`~sparse3d.bench.dsvt_official_peer.OfficialInputLayer`, a vectorised torch version written the way
  the official code works (``unique``, sorts, the dense ``W × window volume`` buffer, every MLP on every voxel).
  Both run on the same module, so they share weights; the run fails unless the sets and masks are identical
  and the embeddings agree to :data:`EMBED_ATOL`.
* **set partition** -- the partition alone (Warp kernels vs the peer's dense-buffer partition), to show where
  the input layer's time goes.
* **backbone** -- the whole DSVT-P backbone forward (input layer + 4 blocks, C = 192) at a given voxel count.
* **frame** -- a per-stage table of the ``experiment=dsvt_kitti`` detector on one generated KITTI scan (VFE,
  input layer, blocks, BEV scatter, BEV backbone, head, decode, and the whole forward), each with its peak RSS.

Voxel sets for the input-layer and backbone rows are pillars on the Waymo DSVT-P grid (468 × 468 × 1,
0.32 m) drawn with LiDAR-like occupancy: nearly full near the sensor, thinning with range, clustered (see
:func:`lidar_pillar_coords`).
"""

from __future__ import annotations

import importlib.resources
import logging
import os
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from omegaconf import OmegaConf

from sparse3d.bench.common import BenchRecord, Measurement, measure, override_sizes, prepare_run
from sparse3d.bench.dsvt_official_peer import OfficialInputLayer, OfficialStage

__all__ = [
    "DSVT_P",
    "EMBED_ATOL",
    "check_same_as_peer",
    "dsvt_p_backbone",
    "kitti_scan",
    "kitti_detector",
    "lidar_pillar_coords",
    "run_dsvt_suite",
]

log = logging.getLogger("sparse3d.bench.dsvt")

SUITE = "dsvt"
PEER = "official-style torch"
EMBED_ATOL = 1e-5
"""Largest allowed |ours - peer| of a position embedding (same weights, same float32 inputs)."""

DSVT_P: dict[str, Any] = {
    "grid_size": (468, 468, 1),
    "set_info": [[36, 4]],
    "window_shape": [[12, 12, 1]],
    "shift_offset": [[6, 6, 0]],
    "d_model": [192],
    "nhead": [8],
    "dim_feedforward": [384],
}
"""Published Waymo DSVT-P backbone: 468 × 468 × 1 pillars of 0.32 m, τ = 36, 4 blocks, 12×12 / 24×24 windows."""

DEFAULT_SIZES: dict[str, tuple[int, ...]] = {
    "input_layer": (20_000, 100_000),
    "backbone": (20_000,),
    "frame": (2083,),
}
"""Voxel counts (``input_layer``, ``backbone``) and LiDAR azimuth steps of the KITTI scan (``frame``; 2083 is
the generator's HDL-64E default, about 120k points)."""
QUICK_SIZES: dict[str, tuple[int, ...]] = {"input_layer": (3_000,), "backbone": (2_000,), "frame": (128,)}
QUICK_MAX_REPEATS = 1
TARGETS: dict[str, dict[int, str]] = {
    "input_layer": {20_000: "target ≤ 40 ms", 100_000: "target ≤ 360 ms"},
    "backbone": {20_000: "target ≤ 1.5 s"},
}
"""The project's speed bars on a 2-core CPU; quoted in the notes of the matching rows."""


# ------------------------------------------------------------------------------------------------ inputs
def lidar_pillar_coords(num_voxels: int, grid: tuple[int, int] = (468, 468), seed: int = 0) -> torch.Tensor:
    """Exactly ``num_voxels`` distinct int32 (batch 0, z 0, y, x) pillars with LiDAR-like occupancy.

    The sensor sits at the grid centre and sees a disc of radius R = min(X, Y) / 2 cells (74.88 m on the Waymo
    grid), minus 8 cells around itself (the ego vehicle). A cell at distance r gets the weight
    ``r^-2 · exp(3 f - (2.34 r / R)^2)``: beam spacing, a smooth random field f (bicubic upsampling of
    ~23-cell tiles: structures and open ground, visible and occluded areas) and the loss of returns with range,
    times per-cell noise. ``num_voxels`` cells are drawn without replacement in proportion to the weights, so
    near cells saturate and far ones thin out. On the 468 × 468 grid, 24,629 pillars give 1,258 / 853 sets
    with 46 % / 20 % duplicate slots (τ = 36, DSVT-P windows), near a real Waymo frame of that size (1,156 /
    834 sets, 41 % / 18 %). Coords are sorted by (x, y), the order a voxeliser emits.
    """
    nx, ny = int(grid[0]), int(grid[1])
    if num_voxels < 1:
        raise ValueError(f"num_voxels must be >= 1, got {num_voxels}")
    g = torch.Generator().manual_seed(seed)
    ys, xs = torch.meshgrid(torch.arange(ny, dtype=torch.float64), torch.arange(nx, dtype=torch.float64),
                            indexing="ij")
    r = torch.hypot(xs - (nx - 1) / 2, ys - (ny - 1) / 2)
    radius = min(nx, ny) / 2
    tiles = max(2, round(max(nx, ny) / 23.4))
    coarse = torch.randn(1, 1, tiles, tiles, generator=g, dtype=torch.float64)
    field = torch.nn.functional.interpolate(coarse, size=(ny, nx), mode="bicubic", align_corners=False)[0, 0]
    weight = r.clamp(min=1.0).pow(-2.0) * torch.exp(3.0 * field - (2.34 * r / radius) ** 2)
    weight = weight * (0.5 + torch.rand(weight.shape, generator=g, dtype=torch.float64))
    weight[(r < 8) | (r > radius)] = 0
    available = int((weight > 0).sum())
    if num_voxels > available:
        raise ValueError(f"num_voxels = {num_voxels} exceeds the {available} visible cells of a {nx}×{ny} grid")
    flat = torch.multinomial(weight.flatten(), num_voxels, replacement=False, generator=g)
    x, y = flat % nx, flat // nx
    order = torch.argsort(x * ny + y)
    zeros = torch.zeros(num_voxels, dtype=torch.int64)
    return torch.stack([zeros, zeros, y[order], x[order]], dim=1).to(torch.int32)


def dsvt_p_backbone(channels: int | None = None, grid_size: tuple[int, int, int] | None = None,
                    seed: int = 0) -> torch.nn.Module:
    """The DSVT-P backbone (:data:`DSVT_P` sizes, xavier init from ``seed``) in eval mode."""
    from sparse3d.models.dsvt.backbone import DSVT

    torch.manual_seed(seed)
    cfg = dict(DSVT_P)
    if channels is not None:
        cfg.update(d_model=[channels], dim_feedforward=[2 * channels])
    if grid_size is not None:
        cfg["grid_size"] = grid_size
    model = DSVT(**cfg)
    # non-trivial BatchNorm statistics, so the embeddings test more than the affine init
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 2.0)
    return model.eval()


def kitti_scan(num_azimuth: int = 2083, seed: int = 0) -> np.ndarray:
    """Points (N, 4) of frame 0 of ``generate_kitti_frames(seed=seed, num_azimuth=num_azimuth)``: the same
    scene and scan, generated in memory without the camera image and labels."""
    from sparse3d.datasets.synth.kitti import LidarSpec, simulate_lidar
    from sparse3d.datasets.synth.kitti_scene import sample_kitti_scene

    rng = np.random.default_rng([int(seed), 0])
    scene = sample_kitti_scene(rng)
    points, _ = simulate_lidar(scene, rng, LidarSpec(num_azimuth=int(num_azimuth)))
    return points


def kitti_detector(seed: int = 0) -> torch.nn.Module:
    """The ``experiment=dsvt_kitti`` detector (``configs/model/dsvt_pillar.yaml`` over the KITTI data settings),
    randomly initialised from ``seed``, in eval mode; validation metrics left out."""
    from hydra.utils import instantiate

    configs = importlib.resources.files("sparse3d.configs")
    model = OmegaConf.create(configs.joinpath("model", "dsvt_pillar.yaml").read_text(encoding="utf-8"))
    data = OmegaConf.create(configs.joinpath("data", "synthetic_kitti.yaml").read_text(encoding="utf-8"))
    cfg = OmegaConf.create({
        "data": {k: data[k] for k in ("class_names", "point_features", "point_range")},
        "model": model,
    })
    cfg.model.metrics = None
    torch.manual_seed(seed)
    return instantiate(cfg.model).eval()


# ------------------------------------------------------------------------------------------------ checks
def check_same_as_peer(ours: list[Any], peer: list[OfficialStage]) -> float:
    """Raise AssertionError unless every stage's sets and masks are identical and the embeddings agree to
    :data:`EMBED_ATOL`; returns the largest embedding difference."""
    if len(ours) != len(peer):
        raise AssertionError(f"ours has {len(ours)} stages, the peer {len(peer)}")
    worst = 0.0
    for s, (o, p) in enumerate(zip(ours, peer)):
        for shift in range(2):
            part = o.partitions[shift]
            if not torch.equal(part.set_voxel_inds, p.set_voxel_inds[shift]):
                raise AssertionError(f"stage {s} shift {shift}: set_voxel_inds differ from the official-style peer")
            if not torch.equal(part.set_voxel_mask, p.set_voxel_masks[shift]):
                raise AssertionError(f"stage {s} shift {shift}: set_voxel_mask differs from the official-style peer")
        if len(o.pos_embeds) != len(p.pos_embeds):
            raise AssertionError(f"stage {s}: {len(o.pos_embeds)} blocks of embeddings vs {len(p.pos_embeds)}")
        for b, (pair, ep) in enumerate(zip(o.pos_embeds, p.pos_embeds)):
            eo = [embed.dense() for embed in pair]
            for e in range(2):
                if eo[e].shape != ep[e].shape:
                    raise AssertionError(f"stage {s} block {b} encoder {e}: embedding shape {tuple(eo[e].shape)} "
                                         f"vs {tuple(ep[e].shape)}")
                diff = float((eo[e] - ep[e]).abs().max()) if eo[e].numel() else 0.0
                if not diff <= EMBED_ATOL:
                    raise AssertionError(f"stage {s} block {b} encoder {e}: embeddings differ by {diff:.3g} "
                                         f"> {EMBED_ATOL}")
                worst = max(worst, diff)
    return worst


# ------------------------------------------------------------------------------------------------ rows
@dataclass
class _Run:
    repeats: int
    device: torch.device

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any], keep_result: bool = False) -> Measurement:
        def call() -> Any:
            with torch.no_grad():
                return fn()

        return measure(call, self.repeats, sync=self.sync if self.device.type == "cuda" else None,
                       keep_result=keep_result)


def _notes(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _bench_input_layer(run: _Run, n: int) -> list[BenchRecord]:
    """The full input layer and the partition alone, ours vs the official-style peer, on ``n`` pillars."""
    from sparse3d.kernels.set_partition import dsvt_stage_partitions

    coords = lidar_pillar_coords(n).to(run.device)
    layer = dsvt_p_backbone().input_layer.to(run.device)
    peer = OfficialInputLayer(layer)
    ours_m = run.time(lambda: layer(coords), keep_result=True)
    peer_m = run.time(lambda: peer(coords), keep_result=True)
    diff = check_same_as_peer(ours_m.result, peer_m.result)
    sets = [int(p.set_voxel_inds.shape[1]) for p in ours_m.result[0].partitions]
    tau = layer.set_info[0][0]
    dup = [float(p.set_voxel_mask[0].float().mean()) for p in ours_m.result[0].partitions]
    common = {"size_unit": "voxels", "num_sets_shift0": sets[0], "num_sets_shift1": sets[1],
              "pos_embed_max_abs_diff": diff, "sets_identical": True}
    shape, window, offset = layer.shapes[0], layer.window_shape[0], layer.shift_offset[0]
    geometry = (f"{shape[0]}×{shape[1]} grid, τ={tau}, windows {window[0]}×{window[1]} / "
                f"{2 * window[0]}×{2 * window[1]} (offset {offset[0]}), {sets[0]} + {sets[1]} sets, "
                f"{100 * dup[0]:.0f} % / {100 * dup[1]:.0f} % duplicate slots")
    rows = [BenchRecord(SUITE, "input layer (sets + 8 pos-embed MLPs)", n, ours_m.median_s, PEER, peer_m.median_s,
                        ours_m.peak_rss_mb,
                        _notes(TARGETS["input_layer"].get(n, ""), geometry,
                               f"same sets/masks, embeddings within {diff:.1e}; ours keeps one row per distinct window "
                               "position (gathered inside set attention), the peer materialises (N, C) per encoder"),
                        {**common, "peer_peak_rss_mb": peer_m.peak_rss_mb})]
    del ours_m, peer_m

    def ours_sets() -> Any:
        return dsvt_stage_partitions(coords, shape, window, offset, tau)

    def peer_sets() -> Any:
        return [peer.stage_sets(coords, shape, 0, shift) for shift in range(2)]

    o, p = run.time(ours_sets, keep_result=True), run.time(peer_sets, keep_result=True)
    for shift in range(2):
        if not (torch.equal(o.result[shift].set_voxel_inds, p.result[shift][0])
                and torch.equal(o.result[shift].set_voxel_mask, p.result[shift][1])):
            raise AssertionError(f"set partition shift {shift}: ours and the official-style peer differ")
    rows.append(BenchRecord(SUITE, "set partition (2 shifts × 2 orderings)", n, o.median_s, PEER, p.median_s,
                            o.peak_rss_mb, "Warp kernels + sorts vs unique + dense W×M buffer",
                            {**common, "peer_peak_rss_mb": p.peak_rss_mb}))
    return rows


def _bench_backbone(run: _Run, n: int) -> list[BenchRecord]:
    """DSVT-P backbone forward on ``n`` pillars with C = 192 random features (no peer: the official code needs
    CUDA ops)."""
    model = dsvt_p_backbone().to(run.device)
    coords = lidar_pillar_coords(n).to(run.device)
    feats = torch.randn(n, DSVT_P["d_model"][0], generator=torch.Generator().manual_seed(1)).to(run.device)
    m = run.time(lambda: model(feats, coords))
    notes = _notes(TARGETS["backbone"].get(n, ""), "4 blocks × 2 set-attention layers, C=192, 8 heads, FFN 384; "
                   "official code not runnable here (CUDA-only ops)")
    return [BenchRecord(SUITE, "DSVT-P backbone forward", n, m.median_s, None, None, m.peak_rss_mb, notes,
                        {"size_unit": "voxels"})]


def _run_blocks(backbone: torch.nn.Module, stages: list[Any], x: torch.Tensor) -> torch.Tensor:
    """The DSVT blocks (and poolings) on precomputed input-layer stages: the backbone forward minus the input
    layer, so both can be timed apart."""
    block_id = 0
    for s, stage in enumerate(stages):
        for b, (block, norm) in enumerate(zip(getattr(backbone, f"stage_{s}"),
                                              getattr(backbone, f"residual_norm_stage_{s}"))):
            x = norm(block(x, stage, block_id % 2, b) + x)
            block_id += 1
        if stage.pooling is not None:
            x = getattr(backbone, f"stage_{s}_reduction")(x, stage.pooling)
    return x


def _bench_frame(run: _Run, num_azimuth: int) -> list[BenchRecord]:
    """Per-stage latency and peak RSS of the ``dsvt_kitti`` detector on one generated KITTI scan."""
    model = kitti_detector().to(run.device)
    scan = torch.from_numpy(kitti_scan(num_azimuth)).to(run.device)
    num_points = int(scan.shape[0])
    batch = {"points": scan, "batch_idx": torch.zeros(num_points, dtype=torch.int32, device=run.device),
             "batch_size": 1}
    rows: list[BenchRecord] = []

    def stage(name: str, size: int, unit: str, fn: Callable[[], Any], notes: str = "") -> Any:
        m = run.time(fn, keep_result=True)
        what = "all stages" if name == "whole forward" else "a stage"
        notes = _notes(notes, f"{what} of the dsvt_kitti detector (no peer: the official code needs CUDA ops)")
        rows.append(BenchRecord(SUITE, f"frame: {name}", size, m.median_s, None, None, m.peak_rss_mb, notes,
                                {"size_unit": unit, "frame_points": num_points}))
        return m.result

    vox = stage("VFE (voxelise + PFN)", num_points, "points", lambda: model.vfe(batch["points"], batch["batch_idx"], 1))
    n = int(vox.coords.shape[0])
    in_range = f"{n} pillars on a {'×'.join(map(str, model.vfe.grid_size))} grid"
    backbone = model.backbone_3d
    stages = stage("DSVT input layer", n, "voxels", lambda: backbone.input_layer(vox.coords), in_range)
    feats = stage("DSVT blocks (4)", n, "voxels", lambda: _run_blocks(backbone, stages, vox.features))
    with torch.no_grad():
        full, coords = backbone(vox.features, vox.coords)
    if not torch.allclose(full, feats, atol=1e-5, rtol=1e-5):
        raise AssertionError("input layer + blocks timed apart do not reproduce the backbone forward")
    bev = stage("BEV scatter", n, "voxels", lambda: model.map_to_bev(feats, coords, 1))
    bev2 = stage("BEV backbone (2-D)", n, "voxels", lambda: model.backbone_2d(bev),
                 f"{tuple(bev.shape[-2:])} map, {bev.shape[1]} channels")
    maps = stage("CenterHead", n, "voxels", lambda: model.dense_head(bev2))
    dets = stage("decode + NMS", n, "voxels", lambda: model.dense_head.decode(maps),
                 "random weights: most cells pass the score threshold, so top-k and NMS run at their caps")
    stage("whole forward", num_points, "points", lambda: model(batch),
          f"{num_points} points, {n} pillars in range, {int(dets[0].boxes.shape[0])} boxes kept")
    return rows


# ------------------------------------------------------------------------------------------------ suite
def _load_average() -> float | None:
    """The host's 1-minute load average (None where unavailable): timings on 2 cores are only meaningful when it
    stays near or below the number of threads used, so every record carries it."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


FAMILIES: tuple[str, ...] = tuple(DEFAULT_SIZES)


def resolve_sizes(sizes: Mapping[str, Any] | None, quick: bool) -> dict[str, tuple[int, ...]]:
    """Sizes per row family: the defaults (or the quick ones) overridden by ``sizes`` (used as given)."""
    base = dict(QUICK_SIZES if quick else DEFAULT_SIZES)
    return override_sizes(base, sizes, FAMILIES)


def run_dsvt_suite(repeats: int = 5, quick: bool = False, device: str = "cpu",
                   sizes: Mapping[str, Any] | None = None) -> list[dict]:
    """Run the DSVT benchmarks and return their records (see :mod:`sparse3d.bench.common`).

    ``quick`` uses tiny sizes and one repeat (smoke runs); ``sizes`` maps ``input_layer`` / ``backbone`` (voxel
    counts) and ``frame`` (LiDAR azimuth steps of the KITTI scan) to explicit lists; an empty list skips a
    family. Raises AssertionError when ours and the official-style peer disagree.
    """
    dev = prepare_run(repeats, device)
    run = _Run(min(repeats, QUICK_MAX_REPEATS) if quick else repeats, dev)
    plan = resolve_sizes(sizes, quick)
    benches: dict[str, Callable[[_Run, int], list[BenchRecord]]] = {
        "input_layer": _bench_input_layer,
        "backbone": _bench_backbone,
        "frame": _bench_frame,
    }
    records: list[BenchRecord] = []
    for family in FAMILIES:
        for size in plan[family]:
            t0 = time.perf_counter()
            new = benches[family](run, size)
            load = _load_average()
            for r in new:
                r.extra["load_avg_1m"] = load
            log.info("dsvt %s @ %d: %d records in %.1f s", family, size, len(new), time.perf_counter() - t0)
            records += new
    for r in records:
        r.extra.setdefault("device", str(dev))
        r.extra.setdefault("repeats", run.repeats)
        r.extra.setdefault("torch_threads", torch.get_num_threads())
    return [r.to_dict() for r in records]
