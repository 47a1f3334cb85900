"""``sparse3d-bench kernels``: our Warp kernels against their torch references and the installed peers.

Everything runs in one process with the default thread counts (torch's intra-op pool, Warp's CPU launcher
and the peers' own OpenMP pools all use every core), so the numbers compare what a user gets out of the box.
Inputs are built once per size and are not part of any timing; every comparison also checks, untimed, that
ours and the reference (and, where the semantics match, the peer) computed the same thing, and says so in
``notes`` -- a fast wrong answer must not look like a win.

Families and the questions they answer:

* ``voxelize`` -- dynamic voxelisation of a LiDAR-like cloud (aggregated sweeps of 64-beam spins: rings,
  walls, 1/r density over ±75 m) vs the
  ``torch.unique`` reference, spconv's ``PointToVoxel`` and Open3D's ``voxel_down_sample`` (legacy and
  tensor API); the fastest installed peer is the headline peer.
* ``subm_conv`` -- 3×3×3 submanifold convolution, 32→32 channels, on voxels of a street-like surface scene in a
  ~200×200×40 grid: kernel map alone, map + conv, conv alone, conv forward + backward; vs the torch reference
  (dense index-volume map + torch gather-GEMM) and spconv's CPU ``SubMConv3d``.
* ``segment`` -- VFE-style max / mean pooling of per-point features into voxels vs the ``scatter_reduce``
  reference (and ``torch_scatter`` when installed).
* ``knn`` -- the 3 nearest other points of every point of a LiDAR-like cloud (the 3D Gaussian Splatting
  initial scale) vs the brute-force oracle and Open3D's k-d trees: ``KDTreeFlann`` queried point by point (its
  only query API) and the batched ``open3d.core.nns.NearestNeighborSearch``; the fastest is the headline peer.
  Beyond :data:`KNN_ORACLE_ROWS` points the oracle is timed on that many evenly spaced query rows and scaled
  to all rows (its cost is linear in them), which the notes say.
* ``cuda_compile=True`` adds one ``kernels-cuda-compile`` record per module of ``KERNEL_MODULES``: Warp's
  ahead-of-time CUDA compile for sm80 + sm90, which needs no GPU.
"""

from __future__ import annotations

import contextlib
import gc
import importlib
import importlib.util
import logging
import math
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from sparse3d.bench.common import (
    MATMUL_SIZE,
    BenchRecord,
    Measurement,
    matmul_gflops,
    measure,
    override_sizes,
    prepare_run,
)

log = logging.getLogger("sparse3d.bench.kernels")

SUITE = "kernels"
COMPILE_SUITE = "kernels-cuda-compile"

FAMILIES: tuple[str, ...] = ("voxelize", "subm_conv", "segment", "knn")
DEFAULT_SIZES: dict[str, tuple[int, ...]] = {
    "voxelize": (1_000_000, 4_000_000),  # points
    "subm_conv": (100_000,),  # voxels
    "segment": (1_000_000,),  # points
    "knn": (100_000,),  # points
}
QUICK_DIVISOR = 10
QUICK_MAX_REPEATS = 2

VOXEL_SIZE: tuple[float, float, float] = (0.1, 0.1, 0.15)
POINT_RANGE: tuple[float, ...] = (-75.2, -75.2, -2.0, 75.2, 75.2, 4.0)
MAX_POINTS_PER_VOXEL = 32  # spconv PointToVoxel's per-voxel point buffer (OpenPCDet's usual setting)

CONV_VOXEL_SIZE: tuple[float, float, float] = (0.4, 0.4, 0.15)
CONV_Z_RANGE: tuple[float, float] = (-2.0, 4.0)  # 40 voxels of 0.15 m
CONV_HALF_EXTENT_100K = 40.0  # metres: 200 x 200 x 40 grid at 100k voxels
CONV_CHANNELS = 32
SEGMENT_CHANNELS = 32
KNN_K = 3  # 3DGS: initial scale = RMS distance to the 3 nearest neighbours
KNN_ORACLE_ROWS = 2_000

SENSOR_HEIGHT = 1.73  # KITTI HDL-64E mount height: the road is at z = -1.73 in the LiDAR frame
POINTS_PER_SWEEP = 125_000  # about one HDL-64 spin
SWEEP_STEP_M = 1.5  # ego motion between aggregated sweeps (15 m/s at 10 Hz)
CUDA_ARCHS: tuple[int, ...] = (80, 90)


# ------------------------------------------------------------------------------------------------ inputs
def _single_scan(n: int, max_range: float, g: torch.Generator) -> torch.Tensor:
    """(n, 4) points of one 64-beam spin from a sensor at the origin (see :func:`lidar_like_cloud`)."""
    tan_e = torch.tan(torch.deg2rad(torch.linspace(-24.9, 2.0, 64)))
    sectors, run = 1440, 8
    kind = torch.rand(sectors // run, generator=g)
    near = 4.0 + 26.0 * torch.rand(sectors // run, generator=g)
    far = 30.0 + (max_range - 30.0) * torch.rand(sectors // run, generator=g)
    wall = torch.where(kind < 0.35, near, torch.where(kind < 0.8, far, torch.full_like(near, math.inf)))
    wall = wall.repeat_interleave(run) + 0.3 * torch.randn(sectors, generator=g)
    chunks: list[torch.Tensor] = []
    have = 0
    while have < n:
        m = int(1.6 * (n - have)) + 1024
        beam = torch.randint(64, (m,), generator=g)
        az = torch.rand(m, generator=g) * (2 * math.pi)
        sector = (az * (sectors / (2 * math.pi))).long().clamp_(max=sectors - 1)
        t = tan_e[beam]
        r_ground = torch.where(t < 0, SENSOR_HEIGHT / (-t).clamp(min=1e-6), torch.full_like(t, math.inf))
        r = torch.minimum(r_ground, wall[sector])
        keep = r <= max_range
        r, az, t = r[keep], az[keep], t[keep]
        r = r + 0.02 * torch.randn(r.shape, generator=g)
        z = r * t + 0.02 * torch.randn(r.shape, generator=g)
        chunks.append(torch.stack([r * torch.cos(az), r * torch.sin(az), z, torch.rand(r.shape, generator=g)], 1))
        have += chunks[-1].shape[0]
    return torch.cat(chunks)[:n] if chunks else torch.zeros(0, 4)


def lidar_like_cloud(
    n: int, max_range: float = 75.0, seed: int = 0, points_per_sweep: int = POINTS_PER_SWEEP
) -> torch.Tensor:
    """(n, 4) float32 points (x, y, z, intensity): aggregated sweeps of a 64-beam spinning LiDAR.

    Each sweep has beams at HDL-64 elevations (-24.9°..2°) hitting the road (z = -1.73) or a wall whose
    distance is piecewise constant over 2° azimuth sectors (near facades, far buildings or open sky), so it
    has the rings, vertical surfaces and 1/r density fall-off of a real scan. Like nuScenes-style multi-sweep
    input, ``ceil(n / points_per_sweep)`` sweeps from a sensor driving 1.5 m per sweep along x are expressed
    in the newest sweep's frame: the voxel count then grows with ``n`` as it does in practice instead of
    saturating on one scan's surfaces. Returns beyond ``max_range`` are discarded, as a sensor would; older
    sweeps reach past the voxel range, so some points fall outside it (counted, as in real data).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    g = torch.Generator().manual_seed(seed)
    sweeps = max(1, math.ceil(n / points_per_sweep))
    parts = []
    for k in range(sweeps):
        count = min(points_per_sweep, n - k * points_per_sweep)
        if count <= 0:
            break
        scan = _single_scan(count, max_range, g)
        scan[:, 0] -= (sweeps - 1 - k) * SWEEP_STEP_M
        parts.append(scan)
    return torch.cat(parts).to(torch.float32).contiguous() if parts else torch.zeros(0, 4)


def _keys_in_grid(xyz: torch.Tensor, lo: torch.Tensor, size: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Packed (x, y, z) voxel keys of the points inside the grid (plain torch; setup only)."""
    f = torch.floor((xyz - lo) / size).long()
    g = torch.tensor(grid)
    inside = ((f >= 0) & (f < g)).all(dim=1)
    f = f[inside]
    return torch.unique((f[:, 0] * grid[1] + f[:, 1]) * grid[2] + f[:, 2])


def surface_scene_coords(num_voxels: int, seed: int = 0) -> tuple[torch.Tensor, tuple[int, int, int]]:
    """Exactly ``num_voxels`` int32 (batch, z, y, x) coords of a street-like scene, and its grid (X, Y, Z).

    A gently undulating road plus randomly placed oriented boxes (cars, buildings), voxelised at 0.4×0.4×0.15 m:
    occupied voxels lie on 2-D surfaces, so a 3×3×3 neighbourhood holds a realistic ~9 active voxels, unlike
    uniformly random occupancy. The square extent scales with the voxel count so 100k voxels fill a
    200×200×40 grid; the last box is cut to hit the count exactly. Coords are sorted by (x, y, z), the order
    voxelisation emits.
    """
    if num_voxels < 1:
        raise ValueError(f"num_voxels must be >= 1, got {num_voxels}")
    g = torch.Generator().manual_seed(seed)
    vx, vy, vz = CONV_VOXEL_SIZE
    half = max(4.0, round(CONV_HALF_EXTENT_100K * math.sqrt(num_voxels / 100_000) / vx) * vx)
    grid = (round(2 * half / vx), round(2 * half / vy), round((CONV_Z_RANGE[1] - CONV_Z_RANGE[0]) / vz))
    if num_voxels > grid[0] * grid[1] * grid[2] // 4:
        raise ValueError(f"{num_voxels} voxels do not fit a sparse scene in grid {grid}")
    lo = torch.tensor([-half, -half, CONV_Z_RANGE[0]])
    size = torch.tensor(CONV_VOXEL_SIZE)

    def ground_z(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return -SENSOR_HEIGHT + 0.2 * torch.sin(x / 6.0) * torch.cos(y / 8.0)

    # Road: ~12 samples per 0.4 x 0.4 m cell covers every cell.
    n_ground = grid[0] * grid[1] * 12
    gx = (torch.rand(n_ground, generator=g) * 2 - 1) * half
    gy = (torch.rand(n_ground, generator=g) * 2 - 1) * half
    keys = _keys_in_grid(torch.stack([gx, gy, ground_z(gx, gy)], 1), lo, size, grid)
    if keys.numel() >= num_voxels:
        keys = keys[:num_voxels]
    for _ in range(10_000):
        if keys.numel() >= num_voxels:
            break
        cx, cy = ((torch.rand(2, generator=g) * 2 - 1) * half * 0.95).tolist()
        dx, dy = (1.5 + 10.5 * torch.rand(2, generator=g)).tolist()
        top = min(CONV_Z_RANGE[1] - 0.1, -SENSOR_HEIGHT + 1.2 + 4.3 * float(torch.rand(1, generator=g)))
        yaw = float(torch.rand(1, generator=g)) * math.pi
        base = float(ground_z(torch.tensor(cx), torch.tensor(cy)))
        height = top - base
        # Side faces ~150 samples/m^2 (~9 per 0.4 x 0.15 m voxel face), roof ~60/m^2 (~10 per cell).
        n_side = int(2 * (dx + dy) * height * 150)
        s = torch.rand(n_side, generator=g) * 2 * (dx + dy)  # position along the perimeter
        u = torch.where(s < dx, s - dx / 2, torch.where(s < dx + dy, torch.full_like(s, dx / 2),
                        torch.where(s < 2 * dx + dy, dx / 2 - (s - dx - dy), torch.full_like(s, -dx / 2))))
        v = torch.where(s < dx, torch.full_like(s, -dy / 2), torch.where(s < dx + dy, s - dx - dy / 2,
                        torch.where(s < 2 * dx + dy, torch.full_like(s, dy / 2), dy / 2 - (s - 2 * dx - dy))))
        w = base + torch.rand(n_side, generator=g) * height
        n_roof = int(dx * dy * 60)
        u = torch.cat([u, (torch.rand(n_roof, generator=g) - 0.5) * dx])
        v = torch.cat([v, (torch.rand(n_roof, generator=g) - 0.5) * dy])
        w = torch.cat([w, torch.full((n_roof,), top)])
        c, sn = math.cos(yaw), math.sin(yaw)
        xyz = torch.stack([cx + c * u - sn * v, cy + sn * u + c * v, w], 1)
        box_keys = _keys_in_grid(xyz, lo, size, grid)
        new = box_keys[~torch.isin(box_keys, keys)]
        need = num_voxels - keys.numel()
        keys = torch.cat([keys, new[:need]])
    if keys.numel() != num_voxels:
        raise RuntimeError(f"scene generator produced {keys.numel()} of {num_voxels} voxels")
    keys = torch.sort(keys).values
    iz = keys % grid[2]
    iy = (keys // grid[2]) % grid[1]
    ix = keys // (grid[2] * grid[1])
    coords = torch.stack([torch.zeros_like(ix), iz, iy, ix], dim=1).to(torch.int32).contiguous()
    return coords, grid


# ------------------------------------------------------------------------------------ torch references
def torch_gather_gemm(features: torch.Tensor, weight: torch.Tensor, nbr: torch.Tensor) -> torch.Tensor:
    """Plain-torch sparse conv on a kernel map: pad a zero row, gather (M, K·C_in), one matmul.

    Differentiable through torch autograd (the gather's backward is an ``index_put_`` accumulate), so it
    serves as the torch reference for forward and for forward + backward.
    """
    m_in, c_in = features.shape
    k, _, c_out = weight.shape
    padded = torch.cat([features, features.new_zeros(1, c_in)])
    idx = torch.where(nbr >= 0, nbr, m_in).long()
    cols = padded[idx].reshape(nbr.shape[0], k * c_in)
    return cols @ weight.reshape(k * c_in, c_out)


# ------------------------------------------------------------------------------------------------ helpers
@dataclass
class _Run:
    """Settings shared by every measurement of one suite run."""

    repeats: int
    device: torch.device
    check_runs: int = 5
    """Untimed extra peer calls checked against the reference (peers with flaky outputs)."""

    @property
    def on_cpu(self) -> bool:
        return self.device.type == "cpu"

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any], keep_result: bool = False, on_device: bool = True) -> Measurement:
        """Measure ``fn`` (synchronising the device when it runs our kernels there)."""
        gc.collect()
        return measure(fn, self.repeats, self.sync if on_device else None, keep_result=keep_result)


def _installed(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """Temporarily run torch (and libraries on its intra-op pool, like spconv CPU) on ``n`` threads."""
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def _max_err(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    if a.numel() == 0:
        return 0.0
    return float((a.detach().cpu().double() - b.detach().cpu().double()).abs().max())


def _close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-4) -> bool:
    """Max abs error within ``rtol`` of the reference's magnitude (float32 sums in different orders)."""
    scale = max(1.0, float(b.detach().abs().max())) if b.numel() else 1.0
    return _max_err(a, b) <= rtol * scale


def _check_note(ok: bool, what: str, detail: str = "") -> str:
    return f"matches {what}" if ok else f"MISMATCH vs {what}{': ' + detail if detail else ''}"


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


def _seconds(m: Measurement | None) -> float | None:
    return None if m is None else m.median_s


_PeerRun = tuple[str, Measurement | None, str, float | None]
"""(peer name, its measurement or None when not run, notes, its peak RSS increase)."""


def _headline_peer(peers: Sequence[_PeerRun]) -> tuple[str | None, float | None, float | None, str]:
    """The fastest timed peer as (name, seconds, peak RSS, note listing every timed peer), or the reasons none
    ran."""
    timed = [(name, m, rss) for name, m, _, rss in peers if m is not None]
    if not timed:
        return None, None, None, _join(*(f"{p[0]}: {p[2]}" for p in peers)) or "no peer installed"
    name, best, rss = min(timed, key=lambda p: p[1].median_s)
    others = ", ".join(f"{n} {m.median_s:.3g} s" for n, m, _ in timed)
    return name, best.median_s, rss, f"fastest peer of: {others}"


# ------------------------------------------------------------------------------------------- voxelize
def _bench_voxelize(run: _Run, n: int) -> list[BenchRecord]:
    """Ours vs the torch reference vs spconv PointToVoxel / Open3D voxel_down_sample on ``n`` points."""
    from sparse3d.kernels.reference.voxelize import voxelize as ref_voxelize
    from sparse3d.kernels.voxelize import voxelize

    points = lidar_like_cloud(n, seed=1)
    pts_dev = points.to(run.device)
    ours = run.time(lambda: voxelize(pts_dev, VOXEL_SIZE, POINT_RANGE), keep_result=True)
    out = ours.result
    num_voxels = int(out.coords.shape[0])
    ours.result = None
    common = {"size_unit": "points", "num_voxels": num_voxels}
    notes_ours = f"{num_voxels} voxels of 0.1×0.1×0.15 m; ours/ref return coords + point→voxel map + counts"

    ref: Measurement | None = None
    ref_note = ""
    if run.on_cpu:
        ref = run.time(lambda: ref_voxelize(points, VOXEL_SIZE, POINT_RANGE), keep_result=True, on_device=False)
        r = ref.result
        ok = (
            torch.equal(out.coords.cpu(), r.coords)
            and torch.equal(out.point_to_voxel.cpu(), r.point_to_voxel)
            and torch.equal(out.counts.cpu(), r.counts)
        )
        ref.result = None
        ref_note = _check_note(ok, "torch ref (coords, point→voxel, counts)")
    else:
        ref_note = "torch ref is CPU-only: not timed against a cuda run"
    del out

    peers: list[_PeerRun] = []  # (peer, time, notes, peer rss)
    if not run.on_cpu:
        note = "CPU peers are not compared with a cuda run"
        peers += [("spconv PointToVoxel", None, note, None), ("open3d voxel_down_sample", None, note, None)]
    else:
        peers.append(_voxelize_spconv(run, points, num_voxels))
        peers.extend(_voxelize_open3d(run, points))

    records: list[BenchRecord] = []
    main_peer, main_s, main_rss, main_note = _headline_peer(peers)
    records.append(
        BenchRecord(
            SUITE, "voxelize", n, ours.median_s, main_peer, main_s, ours.peak_rss_mb,
            _join(notes_ours, ref_note, main_note),
            {**common, "torch_ref_s": _seconds(ref), "torch_ref_peak_rss_mb": ref.peak_rss_mb if ref else None,
             "peer_peak_rss_mb": main_rss},
        )
    )
    for peer, m, note, rss in peers:
        records.append(
            BenchRecord(
                SUITE, f"voxelize vs {peer}", n, ours.median_s, peer, _seconds(m), ours.peak_rss_mb, note,
                {**common, "peer_peak_rss_mb": rss},
            )
        )
    return records


def _voxelize_spconv(run: _Run, points: torch.Tensor, num_voxels: int) -> _PeerRun:
    name = "spconv PointToVoxel"
    if not _installed("spconv"):
        return name, None, "spconv not installed", None
    from spconv.pytorch.utils import PointToVoxel

    gen = PointToVoxel(
        vsize_xyz=list(VOXEL_SIZE),
        coors_range_xyz=list(POINT_RANGE),
        num_point_features=points.shape[1],
        max_num_voxels=max(1, num_voxels),
        max_num_points_per_voxel=MAX_POINTS_PER_VOXEL,
        device=torch.device("cpu"),
    )
    m = run.time(lambda: gen(points), keep_result=True, on_device=False)
    voxels, coords, _ = m.result
    got = int(coords.shape[0])
    m.result = None
    del voxels, coords
    count_note = "same voxel count as ours" if got == num_voxels else f"MISMATCH: {got} voxels vs ours {num_voxels}"
    note = (
        f"different semantics: also gathers up to {MAX_POINTS_PER_VOXEL} points per voxel into a "
        f"(max_voxels, {MAX_POINTS_PER_VOXEL}, 4) buffer it zeroes each call (clear_voxels=True) and returns no "
        f"point→voxel map; max_num_voxels = our voxel count; {count_note}"
    )
    return name, m, note, m.peak_rss_mb


def _voxelize_open3d(run: _Run, points: torch.Tensor) -> list[_PeerRun]:
    legacy_name, tensor_name = "open3d voxel_down_sample (legacy)", "open3d.t voxel_down_sample"
    if not _installed("open3d"):
        return [(legacy_name, None, "open3d not installed", None), (tensor_name, None, "open3d not installed", None)]
    import numpy as np
    import open3d as o3d

    lo = torch.tensor(POINT_RANGE[:3])
    hi = torch.tensor(POINT_RANGE[3:])
    xyz = points[:, :3]
    inside = ((xyz >= lo) & (xyz < hi)).all(dim=1)
    # Open3D voxels are cubes: scale z by 0.1/0.15 so its 0.1 m cubes are our 0.1×0.1×0.15 m cells.
    scaled = (xyz[inside] * torch.tensor([1.0, 1.0, VOXEL_SIZE[0] / VOXEL_SIZE[2]])).numpy()
    common = (
        "different semantics: cube voxels (z pre-scaled by 2/3 to get 0.1×0.1×0.15 m cells), grid anchored at "
        "the cloud's min bound, returns one averaged point per voxel and no point→voxel map; "
        "input converted to Open3D's format outside the timing"
    )

    def legacy() -> tuple[Measurement, int]:
        pc = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(scaled.astype(np.float64)))
        m = run.time(lambda: pc.voxel_down_sample(VOXEL_SIZE[0]), keep_result=True, on_device=False)
        count = len(m.result.points)
        m.result = None
        return m, count

    def tensor_api() -> tuple[Measurement, int]:
        positions = o3d.core.Tensor(
            np.ascontiguousarray(scaled, dtype=np.float32), o3d.core.float32, o3d.core.Device("CPU:0")
        )
        pt = o3d.t.geometry.PointCloud(positions)
        m = run.time(lambda: pt.voxel_down_sample(VOXEL_SIZE[0]), keep_result=True, on_device=False)
        count = int(m.result.point.positions.shape[0])
        m.result = None
        return m, count

    out: list[_PeerRun] = []
    m, count = legacy()
    out.append((legacy_name, m, f"{common}; float64, {count} voxels", m.peak_rss_mb))
    m, count = tensor_api()
    out.append((tensor_name, m, f"{common}; float32, {count} voxels", m.peak_rss_mb))
    gc.collect()
    return out


# ------------------------------------------------------------------------------------------ subm conv
def _bench_subm_conv(run: _Run, num_voxels: int) -> list[BenchRecord]:
    """Kernel map, map + conv, conv alone and conv forward + backward of a 3×3×3 submanifold conv."""
    from sparse3d.kernels import kernel_map as km
    from sparse3d.kernels.reference import kernel_map as ref_km
    from sparse3d.kernels.reference.sparse_conv import conv_tiles_reference
    from sparse3d.kernels.sparse_conv import TILE_ROWS, conv_tiles, sparse_conv

    coords_cpu, grid = surface_scene_coords(num_voxels, seed=3)
    g = torch.Generator().manual_seed(4)
    c = CONV_CHANNELS
    feats_cpu = torch.randn(num_voxels, c, generator=g)
    weight_cpu = torch.randn(27, c, c, generator=g) / math.sqrt(27 * c)
    grad_cpu = torch.randn(num_voxels, c, generator=g)
    coords, feats, weight, grad = (t.to(run.device) for t in (coords_cpu, feats_cpu, weight_cpu, grad_cpu))
    gsize = f"grid {grid[0]}×{grid[1]}×{grid[2]}"
    common: dict[str, Any] = {"size_unit": "voxels", "channels": c, "grid_xyz": list(grid)}
    records: list[BenchRecord] = []

    # ---- kernel map alone
    kmap_m = run.time(lambda: km.submanifold_map(coords, grid, 3), keep_result=True)
    kmap = kmap_m.result
    kmap_m.result = None
    nbr, nbr_t, pairs = kmap.nbr, kmap.nbr_t, kmap.pairs
    active = int((nbr >= 0).sum())
    common["avg_neighbors"] = round(active / max(1, num_voxels), 2)
    conv_flops = 2.0 * active * c * c  # one pass: a C_in x C_out multiply-add per active pair
    ref_map: Measurement | None = None
    ref_kmap = None
    map_note = "torch ref is CPU-only: not timed against a cuda run"
    if run.on_cpu:
        ref_map = run.time(lambda: ref_km.submanifold_map(coords_cpu, grid, 3), keep_result=True, on_device=False)
        ref_kmap = ref_map.result
        ref_map.result = None
        ok = torch.equal(nbr.cpu(), ref_kmap.nbr) and torch.equal(nbr_t.cpu(), ref_kmap.nbr_t)
        map_note = _check_note(ok, "torch ref (nbr, nbr_t)")
    records.append(
        BenchRecord(
            SUITE, "subm_map k3 (kernel map)", num_voxels, kmap_m.median_s, None, None,
            kmap_m.peak_rss_mb,
            _join(f"{'dense index-volume' if km.use_dense_index(coords, grid) else 'hash-table'} map, {gsize}, "
                  f"{common['avg_neighbors']} active neighbours/voxel",
                  "torch ref: dense int64 index volume probed at 27 offsets", map_note,
                  "no peer: spconv builds its pairs inside the conv (see map+conv)"),
            {**common, "torch_ref_s": _seconds(ref_map),
             "torch_ref_peak_rss_mb": ref_map.peak_rss_mb if ref_map else None},
        )
    )

    # ---- the map's tiles for the CPU convolution kernel (built once per map, like spconv's indice pairs)
    tiles = tiles_t = None
    if run.on_cpu:
        tiles_m = run.time(lambda: conv_tiles(nbr), keep_result=True)
        tiles = tiles_m.result
        tiles_m.result = None
        tiles_t = kmap.tiles_t
        ref_tiles = conv_tiles_reference(nbr.cpu(), tiles.block_rows, TILE_ROWS)
        ok = all(
            torch.equal(tiles.inputs[b * tiles.block_capacity:int(tiles.block_ends[b])].long(), r_in)
            and torch.equal(tiles.outputs[b * tiles.block_capacity:int(tiles.block_ends[b])].long(), r_out)
            and torch.equal(tiles.offsets[b * tiles.block_capacity:int(tiles.block_ends[b])].long(), r_k)
            for b, (r_in, r_out, r_k) in enumerate(ref_tiles)
        )
        records.append(
            BenchRecord(
                SUITE, "subm_map k3 conv tiles (CPU)", num_voxels, tiles_m.median_s, None, None, tiles_m.peak_rss_mb,
                _join(f"{tiles.num_tiles} tiles of {TILE_ROWS} pairs in {tiles.num_blocks} blocks of "
                      f"{tiles.block_rows} rows", _check_note(ok, "per-block torch reference layout (untimed loop)"),
                      "no peer: spconv builds its pairs inside the conv (see map+conv)"),
                dict(common),
            )
        )

    # ---- spconv peer (forward only on CPU)
    spconv_full = spconv_conv = None
    spconv_note = "spconv not installed"
    if not run.on_cpu:
        spconv_note = "spconv CPU peer is not compared with a cuda run"
    elif _installed("spconv"):
        import spconv.pytorch as spconv

        layer = spconv.SubMConv3d(c, c, 3, bias=False, indice_key="bench")
        with torch.no_grad():
            # spconv weight layout (C_out, kz, ky, kx, C_in); ours (K, C_in, C_out) with K z-major.
            layer.weight.copy_(weight_cpu.reshape(3, 3, 3, c, c).permute(4, 0, 1, 2, 3))
        shape = [grid[2], grid[1], grid[0]]

        def spconv_full() -> torch.Tensor:
            return layer(spconv.SparseConvTensor(feats_cpu, coords_cpu, shape, 1)).features

        with torch.no_grad():
            cached = layer(spconv.SparseConvTensor(feats_cpu, coords_cpu, shape, 1))
        # The output carries the indice pairs under indice_key; feeding it back reuses them (conv alone).
        reuse_in = cached.replace_feature(feats_cpu)
        del cached

        def spconv_conv() -> torch.Tensor:
            return layer(reuse_in).features

        spconv_note = "spconv 2.x CPU SubMConv3d forward (its CPU build has no backward)"

    # ---- references: map + conv, conv alone, fwd + bwd
    ref_out = None
    with torch.no_grad():
        if run.on_cpu:
            assert ref_kmap is not None
            ref_out = torch_gather_gemm(feats_cpu, weight_cpu, ref_kmap.nbr)

        def ours_full() -> torch.Tensor:
            m = km.submanifold_map(coords, grid, 3)
            return sparse_conv(feats, weight, m.nbr, lambda: m.nbr_t, pairs=lambda: m.pairs, tiles=lambda: m.tiles)

        def ref_full() -> torch.Tensor:
            m = ref_km.submanifold_map(coords_cpu, grid, 3)
            return torch_gather_gemm(feats_cpu, weight_cpu, m.nbr)

        for label, ours_fn, ref_fn, peer_fn in (
            ("map+conv", ours_full, ref_full, spconv_full),
            ("conv only", lambda: sparse_conv(feats, weight, nbr, nbr_t, pairs=pairs, tiles=tiles),
             lambda: torch_gather_gemm(feats_cpu, weight_cpu, ref_kmap.nbr), spconv_conv),  # type: ignore[union-attr]
        ):
            ours_m = run.time(ours_fn, keep_result=True)
            ours_out = ours_m.result
            ours_m.result = None
            extra: dict[str, Any] = dict(common)
            notes = [f"3×3×3 submanifold, {c}→{c} ch, {gsize}",
                     "map built in the call (its CPU tiles too)" if label == "map+conv"
                     else "map, pair lists and CPU tiles prebuilt"]
            if ref_out is not None:
                ref_m = run.time(ref_fn, on_device=False)
                extra["torch_ref_s"] = ref_m.median_s
                extra["torch_ref_peak_rss_mb"] = ref_m.peak_rss_mb
                notes.append("torch ref: dense index-volume map + torch gather-GEMM" if label == "map+conv"
                             else "torch ref: torch gather-GEMM on the same map")
                notes.append(_check_note(_close(ours_out, ref_out), "torch ref", f"max err {_max_err(ours_out, ref_out):.2e}"))
            else:
                notes.append("torch ref is CPU-only: not timed against a cuda run")
            peer_name, peer_s = None, None
            if peer_fn is not None and ref_out is not None:
                peer_m = run.time(peer_fn, on_device=False)
                peer_name, peer_s = "spconv SubMConv3d (cpu)", peer_m.median_s
                extra["peer_peak_rss_mb"] = peer_m.peak_rss_mb
                bad, runs = _spconv_mismatches(peer_fn, ref_out, run.check_runs)
                with _torch_threads(1):
                    one = run.time(peer_fn, on_device=False)
                    bad1, runs1 = _spconv_mismatches(peer_fn, ref_out, run.check_runs)
                extra["peer_1thread_s"] = one.median_s
                extra["peer_wrong_runs"] = f"{bad}/{runs}"
                extra["peer_1thread_wrong_runs"] = f"{bad1}/{runs1}"
                notes.append(spconv_note)
                notes.append(
                    f"spconv output ≠ dense ref in {bad}/{runs} runs at {torch.get_num_threads()} threads "
                    f"(race in its CPU kernels, cf. traveller59/spconv#679), {bad1}/{runs1} at 1 thread "
                    f"({one.median_s:.3g} s)"
                )
            else:
                notes.append(spconv_note)
            notes.append(_conv_rate(extra, run, conv_flops, ours_m.median_s, peer_s,
                                    "including the map" if label == "map+conv" else ""))
            records.append(
                BenchRecord(SUITE, f"subm_conv k3 fwd ({label})", num_voxels, ours_m.median_s, peer_name, peer_s,
                            ours_m.peak_rss_mb, _join(*notes), extra)
            )
            del ours_out

    # ---- forward + backward on a prebuilt map
    f_ours = feats.clone().requires_grad_(True)
    w_ours = weight.clone().requires_grad_(True)

    def ours_fb() -> tuple[torch.Tensor, torch.Tensor]:
        f_ours.grad = None
        w_ours.grad = None
        sparse_conv(f_ours, w_ours, nbr, nbr_t, pairs=pairs, tiles=tiles, tiles_t=tiles_t).backward(grad)
        return f_ours.grad, w_ours.grad  # type: ignore[return-value]

    fb = run.time(ours_fb, keep_result=True)
    gf, gw = fb.result
    fb.result = None
    extra = dict(common)
    notes = [f"3×3×3 submanifold, {c}→{c} ch, grads w.r.t. features and weight, map, pairs and CPU tiles (of map and transpose) prebuilt"]
    if run.on_cpu:
        f_ref = feats_cpu.clone().requires_grad_(True)
        w_ref = weight_cpu.clone().requires_grad_(True)
        ref_nbr = ref_kmap.nbr  # type: ignore[union-attr]

        def ref_fb() -> tuple[torch.Tensor, torch.Tensor]:
            f_ref.grad = None
            w_ref.grad = None
            torch_gather_gemm(f_ref, w_ref, ref_nbr).backward(grad_cpu)
            return f_ref.grad, w_ref.grad  # type: ignore[return-value]

        ref_m = run.time(ref_fb, keep_result=True, on_device=False)
        rf, rw = ref_m.result
        ref_m.result = None
        extra["torch_ref_s"] = ref_m.median_s
        extra["torch_ref_peak_rss_mb"] = ref_m.peak_rss_mb
        ok = _close(gf, rf) and _close(gw, rw)
        notes.append("torch ref: torch gather-GEMM with autograd (index backward = index_put_ accumulate)")
        notes.append(_check_note(ok, "torch ref grads", f"max err {max(_max_err(gf, rf), _max_err(gw, rw)):.2e}"))
    else:
        notes.append("torch ref is CPU-only: not timed against a cuda run")
    notes.append(
        "no peer: spconv's CPU build cannot run backward (indice_conv_backward asserts CUDA)"
        if _installed("spconv") else "no peer: spconv not installed (and its CPU build has no backward)"
    )
    notes.append(_conv_rate(extra, run, 3 * conv_flops, fb.median_s, None, "three passes"))
    records.append(
        BenchRecord(SUITE, "subm_conv k3 fwd+bwd (conv only)", num_voxels, fb.median_s, None, None,
                    fb.peak_rss_mb, _join(*notes), extra)
    )
    return records


def _conv_rate(
    extra: dict[str, Any], run: _Run, flops: float, ours_s: float, peer_s: float | None, what: str
) -> str:
    """Record ours' (and the peer's) GFLOP/s beside the machine's matmul rate in ``extra``; returns the note.

    Only on a CPU run: the matmul rate is the host CPU's (:func:`sparse3d.bench.common.matmul_gflops`).
    """
    if not run.on_cpu:
        return ""
    machine = matmul_gflops()
    ours = flops / ours_s / 1e9
    extra["ours_gflops"] = ours
    extra["machine_matmul_gflops"] = machine
    note = (
        f"ours {ours:.1f} GFLOP/s{' (' + what + ')' if what else ''} = {100 * ours / machine:.0f} % of this "
        f"machine's torch {MATMUL_SIZE}² float32 matmul rate ({machine:.0f} GFLOP/s, {torch.get_num_threads()} threads)"
    )
    if peer_s is not None:
        extra["peer_gflops"] = flops / peer_s / 1e9
        note += f"; peer {extra['peer_gflops']:.1f} GFLOP/s"
    return note


def _spconv_mismatches(fn: Callable[[], torch.Tensor], ref: torch.Tensor, runs: int = 5) -> tuple[int, int]:
    """How many of ``runs`` spconv calls disagree with the dense reference (untimed)."""
    bad = 0
    with torch.no_grad():
        for _ in range(runs):
            if not _close(fn(), ref):
                bad += 1
    return bad, runs


# -------------------------------------------------------------------------------------------- segment
def _bench_segment(run: _Run, n: int) -> list[BenchRecord]:
    """VFE-style max / mean pooling of (n, C) point features into the voxels of a LiDAR-like cloud."""
    from sparse3d.kernels import segment as seg
    from sparse3d.kernels.reference import segment as ref_seg
    from sparse3d.kernels.reference.voxelize import voxelize as ref_voxelize

    points = lidar_like_cloud(n, seed=2)
    vox = ref_voxelize(points, VOXEL_SIZE, POINT_RANGE)
    ids_cpu = vox.point_to_voxel
    m = int(vox.coords.shape[0])
    c = SEGMENT_CHANNELS
    values_cpu = torch.randn(n, c, generator=torch.Generator().manual_seed(5))
    ids, values = ids_cpu.to(run.device), values_cpu.to(run.device)
    common = {"size_unit": "points", "channels": c, "num_segments": m}
    records: list[BenchRecord] = []
    ts = importlib.import_module("torch_scatter") if _installed("torch_scatter") else None
    valid = ids_cpu >= 0
    v_valid, i_valid = values_cpu[valid].contiguous(), ids_cpu[valid].contiguous()

    for op in ("max", "mean"):
        ours_fn = (lambda: seg.segment_max(values, ids, m)) if op == "max" else (lambda: seg.segment_mean(values, ids, m))
        ref_fn = (
            (lambda: ref_seg.segment_max(values_cpu, ids_cpu, m)) if op == "max"
            else (lambda: ref_seg.segment_mean(values_cpu, ids_cpu, m))
        )
        with torch.no_grad():
            ours_m = run.time(ours_fn, keep_result=True)
            out = ours_m.result
            ours_m.result = None
            extra: dict[str, Any] = dict(common)
            notes = [f"{n} points × {c} ch into {m} voxels (LiDAR-like cloud, 0.1×0.1×0.15 m)"]
            if run.on_cpu:
                ref_m = run.time(ref_fn, keep_result=True, on_device=False)
                ref = ref_m.result
                ref_m.result = None
                extra["torch_ref_s"] = ref_m.median_s
                extra["torch_ref_peak_rss_mb"] = ref_m.peak_rss_mb
                if op == "max":
                    ok = torch.equal(out[0].cpu(), ref[0]) and torch.equal(out[1].cpu(), ref[1])
                    notes.append("torch ref: two scatter_reduce passes (amax, then argmin row among ties)")
                    notes.append(_check_note(ok, "torch ref (max and argmax)"))
                else:
                    ok = _close(out, ref)
                    notes.append("torch ref: index_add + bincount")
                    notes.append(_check_note(ok, "torch ref", f"max err {_max_err(out, ref):.2e}"))
                del ref
            else:
                notes.append("torch ref is CPU-only: not timed against a cuda run")
            peer_name, peer_s = None, None
            if ts is None:
                notes.append("no peer: torch_scatter not installed")
            elif not run.on_cpu:
                notes.append("torch_scatter peer not run for a cuda run")
            else:
                peer_fn = (
                    (lambda: ts.scatter_max(v_valid, i_valid, dim=0, dim_size=m)) if op == "max"
                    else (lambda: ts.scatter_mean(v_valid, i_valid, dim=0, dim_size=m))
                )
                peer_m = run.time(peer_fn, on_device=False)
                peer_name, peer_s = f"torch_scatter scatter_{op}", peer_m.median_s
                extra["peer_peak_rss_mb"] = peer_m.peak_rss_mb
                notes.append("torch_scatter gets the dropped points filtered out beforehand (untimed)")
            del out
        records.append(
            BenchRecord(SUITE, f"segment_{op}", n, ours_m.median_s, peer_name, peer_s, ours_m.peak_rss_mb,
                        _join(*notes), extra)
        )
    return records


# ------------------------------------------------------------------------------------------------ knn
def _bench_knn(run: _Run, n: int) -> list[BenchRecord]:
    """The :data:`KNN_K` nearest other points of each of ``n`` LiDAR-like points: ours vs oracle vs Open3D."""
    from sparse3d.kernels.knn import knn_distances
    from sparse3d.kernels.reference.knn import knn_distances as ref_knn

    points = lidar_like_cloud(n, seed=6)[:, :3].contiguous()
    pts_dev = points.to(run.device)
    ours = run.time(lambda: knn_distances(pts_dev, KNN_K), keep_result=True)
    sqdist = ours.result[0].cpu()
    ours.result = None
    common: dict[str, Any] = {"size_unit": "points", "k": KNN_K}
    notes_ours = (f"{KNN_K} nearest other points of each point of a LiDAR-like cloud (1/r density, rings, walls); "
                  "ours returns squared distances + indices")

    ref_s: float | None = None
    ref_rss: float | None = None
    ref_note = "torch ref is CPU-only: not timed against a cuda run"
    if run.on_cpu:
        rows = torch.linspace(0, n - 1, KNN_ORACLE_ROWS).long() if n > KNN_ORACLE_ROWS else torch.arange(n)
        ref = run.time(lambda: ref_knn(points, KNN_K, rows), keep_result=True, on_device=False)
        ok = bool(torch.allclose(sqdist[rows], ref.result[0], rtol=1e-6, atol=0.0))
        ref.result = None
        scale = n / rows.numel()
        ref_s, ref_rss = ref.median_s * scale, ref.peak_rss_mb
        timed = "" if scale == 1 else (f", timed on {rows.numel()} evenly spaced query rows of {n} and scaled "
                                       f"×{scale:.4g} (its cost is linear in the rows)")
        ref_note = _join(f"torch ref: brute force over all pairs (float32, top-k){timed}",
                         _check_note(ok, "torch ref distances" + ("" if scale == 1 else " on those rows")))
        common["torch_ref_rows"] = rows.numel()

    peers: list[_PeerRun] = []
    if not run.on_cpu:
        note = "CPU peers are not compared with a cuda run"
        peers += [("open3d KDTreeFlann", None, note, None), ("open3d.core.nns knn_search", None, note, None)]
    else:
        peers.extend(_knn_open3d(run, points, sqdist))

    records: list[BenchRecord] = []
    main_peer, main_s, main_rss, main_note = _headline_peer(peers)
    name = f"knn k={KNN_K}"
    records.append(
        BenchRecord(SUITE, name, n, ours.median_s, main_peer, main_s, ours.peak_rss_mb,
                    _join(notes_ours, ref_note, main_note),
                    {**common, "torch_ref_s": ref_s, "torch_ref_peak_rss_mb": ref_rss, "peer_peak_rss_mb": main_rss})
    )
    for peer, m, note, rss in peers:
        records.append(
            BenchRecord(SUITE, f"{name} vs {peer}", n, ours.median_s, peer, _seconds(m), ours.peak_rss_mb, note,
                        {**common, "peer_peak_rss_mb": rss})
        )
    return records


def _knn_open3d(
    run: _Run, points: torch.Tensor, sqdist: torch.Tensor
) -> list[_PeerRun]:
    """Open3D's k-d trees on the same points, each checked against our distances (untimed)."""
    flann_name, nns_name = "open3d KDTreeFlann", "open3d.core.nns knn_search"
    if not _installed("open3d"):
        return [(flann_name, None, "open3d not installed", None), (nns_name, None, "open3d not installed", None)]
    import numpy as np
    import open3d as o3d

    n, k = points.shape[0], KNN_K
    xyz64 = points.double().numpy()
    xyz32 = np.ascontiguousarray(points.numpy())

    def flann() -> np.ndarray:
        tree = o3d.geometry.KDTreeFlann(o3d.geometry.PointCloud(o3d.utility.Vector3dVector(xyz64)))
        out = np.empty((n, k + 1))
        for i in range(n):
            out[i] = tree.search_knn_vector_3d(xyz64[i], k + 1)[2]
        return out

    def nns() -> np.ndarray:
        index = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(xyz32))
        index.knn_index()
        return index.knn_search(o3d.core.Tensor(xyz32), k + 1)[1].numpy()

    semantics = ("asked for k + 1 neighbours including the query (a duplicate may take its place: same "
                 "distances), the nearest dropped; builds its tree in the call, as ours builds its grids")
    out: list[_PeerRun] = []
    for name, fn, how in (
        (flann_name, flann, "legacy API: one Python call per query point (its only query API), float64"),
        (nns_name, nns, "tensor API: one batched call, float32, parallel"),
    ):
        m = run.time(fn, keep_result=True, on_device=False)
        theirs = torch.from_numpy(np.asarray(m.result, dtype=np.float64)[:, 1:])
        m.result = None
        ok = bool(torch.allclose(theirs, sqdist.double(), rtol=1e-5, atol=1e-12))
        out.append((name, m, _join(how, semantics, _check_note(ok, "ours (distances)")), m.peak_rss_mb))
    gc.collect()
    return out


# --------------------------------------------------------------------------------------- cuda compile
def cuda_compile_records(archs: Sequence[int] = CUDA_ARCHS) -> list[BenchRecord]:
    """Ahead-of-time CUDA compile (NVRTC, cubin) of every Warp kernel module, one record per module.

    Needs no GPU; proves the kernels compile for the archs we ship (sm80 = A100, sm90 = H100).
    """
    import warp as wp

    from sparse3d.kernels import KERNEL_MODULES
    from sparse3d.kernels.runtime import init

    init()
    tag = "+".join(f"sm{a}" for a in archs)
    records: list[BenchRecord] = []
    for name in KERNEL_MODULES:
        num_kernels: int | None = None
        t0 = time.perf_counter()
        try:
            module = importlib.import_module(name)
            num_kernels = len(wp.get_module(name).kernels)
            with tempfile.TemporaryDirectory(prefix="sparse3d-aot-") as tmp:
                t0 = time.perf_counter()
                paths = wp.compile_aot_module(module, arch=list(archs), use_ptx=False, module_dir=tmp)
                seconds = time.perf_counter() - t0
                missing = [str(p) for p in paths if not Path(p).is_file() or Path(p).stat().st_size == 0]
                if len(paths) != len(archs) or missing:
                    raise RuntimeError(f"expected {len(archs)} cubins, got {[Path(p).name for p in paths]}")
            ok, note = True, f"ok {tag}"
        except Exception as exc:  # noqa: BLE001 -- any compile failure becomes a failed record
            seconds = time.perf_counter() - t0
            ok, note = False, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"
        log.info("cuda compile %s: %s (%.1f s)", name, note, seconds)
        records.append(
            BenchRecord(COMPILE_SUITE, name, num_kernels, seconds, None, None, None, note,
                        {"size_unit": "kernels", "compile_ok": ok, "archs": list(archs)})
        )
    return records


# ------------------------------------------------------------------------------------------------ suite
def resolve_sizes(sizes: Mapping[str, Any] | None, quick: bool) -> dict[str, tuple[int, ...]]:
    """Sizes per family: defaults (÷10 when ``quick``) overridden by ``sizes`` (used as given)."""
    base = {k: tuple(max(1, v // QUICK_DIVISOR) if quick else v for v in vals) for k, vals in DEFAULT_SIZES.items()}
    return override_sizes(base, sizes, FAMILIES)


def run_kernels_suite(
    repeats: int = 5,
    quick: bool = False,
    device: str = "cpu",
    cuda_compile: bool = False,
    sizes: Mapping[str, Any] | None = None,
) -> list[dict]:
    """Run the kernel benchmarks and return their records (see :mod:`sparse3d.bench.common`).

    ``quick`` divides every default size by 10 and caps ``repeats`` at 2 (CI smoke runs); ``sizes`` maps
    ``voxelize`` / ``subm_conv`` / ``segment`` / ``knn`` to explicit sizes. ``device`` places our inputs (``cpu`` or
    ``cuda[:N]``); the torch references and the peers are CPU-only and are only timed on a ``cpu`` run.
    ``cuda_compile`` appends one AOT-compile record per Warp kernel module.
    """
    dev = prepare_run(repeats, device)
    run = _Run(min(repeats, QUICK_MAX_REPEATS) if quick else repeats, dev, check_runs=2 if quick else 5)
    plan = resolve_sizes(sizes, quick)
    records: list[BenchRecord] = []
    benches: dict[str, Callable[[_Run, int], list[BenchRecord]]] = {
        "voxelize": _bench_voxelize,
        "subm_conv": _bench_subm_conv,
        "segment": _bench_segment,
        "knn": _bench_knn,
    }
    for family in FAMILIES:
        for size in plan[family]:
            t0 = time.perf_counter()
            new = benches[family](run, size)
            log.info("%s @ %d: %d records in %.1f s", family, size, len(new), time.perf_counter() - t0)
            records += new
    if cuda_compile:
        records += cuda_compile_records()
    for r in records:
        r.extra.setdefault("device", str(dev))
        if r.suite == SUITE:
            r.extra.setdefault("repeats", run.repeats)
    return [r.to_dict() for r in records]
