"""``sparse3d-bench splatting``: our Gaussian rasterizer (Warp projection, SH and compositing) against peers.

Rows, for every (resolution, Gaussian count) case:

* ``forward`` / ``forward+backward`` -- :func:`sparse3d.render.rasterize_gaussians` (Warp backend) vs the
  "torch-tiles" peer (:mod:`sparse3d.bench.torch_tiles`, a pure-PyTorch tile rasterizer with autograd, the
  form CPU ports of 3DGS take). Backward is the gradient of a fixed random weighting of the image w.r.t. means,
  quats, scales, opacities and SH coefficients. Every row checks, untimed, that both produced the same image
  (and, for backward, the same gradients) and writes the max differences into ``notes``.
* ``projection`` -- our Warp EWA projection vs gsplat's pure-torch ``_fully_fused_projection`` (+ its
  ``_quat_scale_to_covar_preci``), when gsplat imports on this machine.
* gsplat's CUDA ``rasterization`` is timed as ``gsplat_cuda_s`` when the run is on a CUDA device.

The scene: N Gaussians spread uniformly over the image plane at depths 2..8 in front of one camera
(focal length 0.9·width), log-normal scales sized so a typical Gaussian has a ~1.2 px standard deviation at
800×600 (so it covers a few pixels, like a trained 3DGS scene), opacities uniform in [0.05, 0.95], SH degree 3
(DC giving colours in [0, 1], higher bands ±0.1). The same physical scene is used at every resolution.

The peer's forward+backward keeps every tile's (Gaussians × 256 pixels) temporaries for autograd (8–12 GB
at 300k Gaussians). It runs when its estimate (pairs × 256 pixels × 60 bytes, the measured peak) fits the
memory available right before the row (``MemAvailable`` of ``/proc/meminfo``, via psutil) less a headroom
of max(1 GB, 10 %), so that it never risks an out-of-memory kill on a shared machine; otherwise it is skipped
and ``notes`` gives the estimate and the available memory. ``SPARSE3D_BENCH_PEER_MAX_GB``, when set, is an
extra cap.

Timings use torch's default intra-op threads for ours and the peer alike. On a CPU shared with other jobs,
OpenMP's spinning barriers make many-small-op code like the peer's backward erratic, so treat numbers from a
busy machine as indicative.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from sparse3d.bench.common import BenchRecord, Measurement, measure, prepare_run

log = logging.getLogger("sparse3d.bench.splatting")

SUITE = "splatting"
RESOLUTIONS: tuple[tuple[int, int], ...] = ((400, 300), (800, 600))
COUNTS: tuple[int, ...] = (50_000, 300_000)
QUICK_RESOLUTIONS: tuple[tuple[int, int], ...] = ((128, 96),)
QUICK_COUNTS: tuple[int, ...] = (2_000,)
QUICK_MAX_REPEATS = 1
SH_DEGREE = 3
REFERENCE_WIDTH = 800  # scales are chosen for this width
TYPICAL_SIGMA_PX = 1.2
PEER_BYTES_PER_PAIR_PIXEL = 60  # measured peak RSS of its fwd+bwd per (Gaussian, tile pixel): ~15 float32 tensors
# Agreement criteria. Two float32 implementations cannot agree pixel-for-pixel everywhere: when a Gaussian's
# alpha lands within rounding of the 1/255 cut-off (or T of the 1e-4 stop), one includes it and the other
# does not, changing that pixel by up to ~T/255. So a row MISMATCHes when more than IMAGE_MAX_FRAC of the
# pixels differ by over IMAGE_ATOL or the mean difference exceeds IMAGE_MEAN_ATOL; gradients are compared by
# relative L2 error, which a few flipped pairs barely move.
IMAGE_ATOL = 1e-4
IMAGE_MAX_FRAC = 1e-4
IMAGE_MEAN_ATOL = 1e-5
GRAD_REL_L2 = 1e-3


# ------------------------------------------------------------------------------------------------ scene
@dataclass
class Scene:
    """Rasterizer inputs of one benchmark case (one camera)."""

    means: torch.Tensor
    quats: torch.Tensor
    scales: torch.Tensor
    opacities: torch.Tensor
    sh: torch.Tensor
    viewmats: torch.Tensor
    Ks: torch.Tensor
    width: int
    height: int

    def params(self) -> tuple[torch.Tensor, ...]:
        return self.means, self.quats, self.scales, self.opacities, self.sh


def random_scene(n: int, width: int, height: int, seed: int = 0, device: str | torch.device = "cpu") -> Scene:
    """N Gaussians in front of an identity camera; see the module docstring for the distribution."""
    if n < 1 or width < 1 or height < 1:
        raise ValueError(f"n, width and height must be >= 1, got {n}, {width}, {height}")
    g = torch.Generator().manual_seed(seed)
    depth = 2.0 + 6.0 * torch.rand(n, generator=g)
    u, v = torch.rand(n, generator=g) - 0.5, (torch.rand(n, generator=g) - 0.5) * (height / width)
    f_ref = 0.9 * REFERENCE_WIDTH
    means = torch.stack([u / 0.9 * depth, v / 0.9 * depth, depth], 1)  # x/z = u / 0.9: uniform over the image
    sigma = TYPICAL_SIGMA_PX * depth / f_ref
    scales = sigma[:, None] * torch.exp(0.4 * torch.randn(n, 3, generator=g))
    quats = torch.randn(n, 4, generator=g)
    quats = quats / quats.norm(dim=1, keepdim=True)
    opacities = 0.05 + 0.9 * torch.rand(n, generator=g)
    sh = 0.1 * torch.randn(n, (SH_DEGREE + 1) ** 2, 3, generator=g)
    sh[:, 0] = (torch.rand(n, 3, generator=g) - 0.5) / 0.28209479177387814  # DC colour in [0, 1]
    f = 0.9 * width
    K = torch.tensor([[f, 0.0, width / 2], [0.0, f, height / 2], [0.0, 0.0, 1.0]])
    tensors = [t.to(device).contiguous() for t in (means, quats, scales, opacities, sh, torch.eye(4)[None], K[None])]
    return Scene(*tensors, width, height)


# ------------------------------------------------------------------------------------------------ helpers
def _max_abs(a: torch.Tensor, b: torch.Tensor) -> float:
    if a.shape != b.shape:
        return math.inf
    return float((a.detach().double().cpu() - b.detach().double().cpu()).abs().max()) if a.numel() else 0.0


def _max_rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|: agreement on one scale, insensitive to the quantity's units."""
    scale = float(b.detach().abs().max()) if b.numel() else 0.0
    return _max_abs(a, b) / scale if scale > 0 else _max_abs(a, b)


def _rel_l2(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b|| (float64)."""
    a64, b64 = a.detach().double().cpu(), b.detach().double().cpu()
    norm = float(b64.norm())
    return float((a64 - b64).norm()) / norm if norm > 0 else float((a64 - b64).norm())


def _image_agreement(ours: torch.Tensor, peer: torch.Tensor) -> tuple[dict[str, float], str]:
    """Max / mean |ours - peer| and the fraction of pixels off by more than IMAGE_ATOL, plus a note."""
    diff = (ours.detach().double().cpu() - peer.detach().double().cpu()).abs().amax(-1)
    stats = {"image_max_abs_diff": float(diff.max()), "image_mean_abs_diff": float(diff.mean()),
             "image_frac_over_1e-4": float((diff > IMAGE_ATOL).double().mean())}
    ok = stats["image_frac_over_1e-4"] <= IMAGE_MAX_FRAC and stats["image_mean_abs_diff"] <= IMAGE_MEAN_ATOL
    note = (f"image |ours − peer| max {stats['image_max_abs_diff']:.1e}, mean {stats['image_mean_abs_diff']:.1e}, "
            f"{int((diff > IMAGE_ATOL).sum())}/{diff.numel()} px > 1e-4" + ("" if ok else " MISMATCH"))
    return stats, note


def _join(*parts: str) -> str:
    return "; ".join(p for p in parts if p)


Rasterizer = Callable[..., tuple[torch.Tensor, torch.Tensor, dict[str, Any]]]


def _forward(raster: Rasterizer, scene: Scene) -> Callable[[], tuple[torch.Tensor, dict[str, Any]]]:
    def run() -> tuple[torch.Tensor, dict[str, Any]]:
        with torch.no_grad():
            img, _, meta = raster(*scene.params(), scene.viewmats, scene.Ks, scene.width, scene.height,
                                  sh_degree=SH_DEGREE)
        return img, meta

    return run


def _forward_backward(raster: Rasterizer, scene: Scene, weights: torch.Tensor) -> Callable[[], list[torch.Tensor]]:
    def run() -> list[torch.Tensor]:
        params = [p.detach().requires_grad_(True) for p in scene.params()]
        img, _, _ = raster(*params, scene.viewmats, scene.Ks, scene.width, scene.height, sh_degree=SH_DEGREE)
        (img * weights).sum().backward()
        return [p.grad for p in params]

    return run


def _gsplat_torch_status() -> tuple[Any, str]:
    """(gsplat's ``_torch_impl`` module or None, reason when None)."""
    try:
        import gsplat.cuda._torch_impl as impl
    except Exception as exc:  # noqa: BLE001 -- any import failure (missing, broken deps) is a reason to report
        return None, f"gsplat pure-torch projection unavailable: {type(exc).__name__}: {exc}"
    return impl, ""


# ------------------------------------------------------------------------------------------------ memory
def available_memory_gb() -> float | None:
    """Memory the system can give a new allocation without swapping (``MemAvailable``), in GiB; None if unknown."""
    try:
        import psutil

        return float(psutil.virtual_memory().available) / 2**30
    except Exception:  # noqa: BLE001 -- psutil missing or failing: fall back to /proc
        pass
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 2**20
    except (OSError, ValueError, IndexError):
        return None
    return None


def peer_memory_verdict(est_gb: float, available_gb: float | None, cap_gb: float | None) -> str:
    """Why the peer's forward+backward (needing ~``est_gb``) must be skipped, or "" when it may run.

    It may run when the estimate fits the available memory less a headroom of max(1 GB, 10 %) and, when the
    user set one, the ``SPARSE3D_BENCH_PEER_MAX_GB`` cap. With the available memory unknown only the cap
    applies, and without a cap the row is skipped rather than risking an out-of-memory kill.
    """
    need = f"~{est_gb:.1f} GB of autograd temporaries"
    if cap_gb is not None and est_gb > cap_gb:
        return f"{need} > SPARSE3D_BENCH_PEER_MAX_GB={cap_gb:g}"
    if available_gb is None:
        return "" if cap_gb is not None else f"{need}, available memory unknown (set SPARSE3D_BENCH_PEER_MAX_GB)"
    usable = available_gb - max(1.0, 0.1 * available_gb)
    if est_gb > usable:
        return f"{need} > {usable:.1f} GB usable ({available_gb:.1f} GB available less headroom)"
    return ""


def _peer_cap_gb() -> float | None:
    """``SPARSE3D_BENCH_PEER_MAX_GB`` as a positive number, None when unset; a bad value is a ValueError."""
    raw = os.environ.get("SPARSE3D_BENCH_PEER_MAX_GB", "").strip()
    if not raw:
        return None
    try:
        cap = float(raw)
    except ValueError:
        cap = math.nan
    if not (cap > 0 and math.isfinite(cap)):
        raise ValueError(f"SPARSE3D_BENCH_PEER_MAX_GB must be a positive number of GB, got {raw!r}")
    return cap


# ------------------------------------------------------------------------------------------------ rows
@dataclass
class _Run:
    repeats: int
    device: torch.device
    peer_max_gb: float | None

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def time(self, fn: Callable[[], Any], keep_result: bool = False) -> Measurement:
        gc.collect()
        return measure(fn, self.repeats, self.sync, keep_result=keep_result)


def _bench_case(run: _Run, n: int, width: int, height: int) -> list[BenchRecord]:
    from sparse3d.bench.torch_tiles import rasterize_torch_tiles
    from sparse3d.render.gaussians import rasterize_gaussians

    def ours(*args: Any, **kw: Any) -> Any:
        return rasterize_gaussians(*args, backend="warp", **kw)

    scene = random_scene(n, width, height, seed=n + width, device=run.device)
    size_label = f"{width}×{height}"
    extra_common = {"width": width, "height": height, "num_gaussians": n, "sh_degree": SH_DEGREE,
                    "size_unit": "Gaussians"}
    records: list[BenchRecord] = []

    # ---- forward
    fwd_ours = run.time(_forward(ours, scene), keep_result=True)
    fwd_peer = run.time(_forward(rasterize_torch_tiles, scene), keep_result=True)
    meta = fwd_peer.result[1]
    pairs = int(meta["n_isects"][0])
    visible = int((meta["radii"][0] > 0).all(-1).sum())
    img_stats, img_note = _image_agreement(fwd_ours.result[0], fwd_peer.result[0])
    scene_note = f"{visible} visible, {pairs} Gaussian-tile pairs, SH3"
    gsplat_s, gsplat_note = _gsplat_cuda_time(run, scene, backward=False)
    records.append(BenchRecord(
        SUITE, f"forward {size_label}", n, fwd_ours.median_s, "torch-tiles", fwd_peer.median_s,
        fwd_ours.peak_rss_mb, _join(scene_note, img_note, gsplat_note),
        {**extra_common, "peer_peak_rss_mb": fwd_peer.peak_rss_mb, **img_stats, "n_isects": pairs,
         "gsplat_cuda_s": gsplat_s},
    ))
    fwd_ours.result = fwd_peer.result = None

    # ---- forward + backward
    weights = torch.rand(1, height, width, 3, generator=torch.Generator().manual_seed(1)).to(run.device)
    fb_ours = run.time(_forward_backward(ours, scene, weights), keep_result=True)
    est_gb = pairs * 256 * PEER_BYTES_PER_PAIR_PIXEL / 2**30
    peer_s = peer_rss = None
    grad_diff: float | None = None
    grad_max_rel: float | None = None
    gc.collect()
    skip_reason = peer_memory_verdict(est_gb, available_memory_gb(), run.peer_max_gb)
    if skip_reason:
        peer_note = f"torch-tiles fwd+bwd skipped: {skip_reason}"
    else:
        fb_peer = run.time(_forward_backward(rasterize_torch_tiles, scene, weights), keep_result=True)
        peer_s, peer_rss = fb_peer.median_s, fb_peer.peak_rss_mb
        names = ("means", "quats", "scales", "opacities", "sh")
        rel = {k: _rel_l2(a, b) for k, a, b in zip(names, fb_ours.result, fb_peer.result)}
        grad_diff = max(rel.values())
        grad_max_rel = max(_max_rel(a, b) for a, b in zip(fb_ours.result, fb_peer.result))
        worst = max(rel, key=rel.get)  # type: ignore[arg-type]
        peer_note = (f"grads ‖ours − peer‖/‖peer‖ {grad_diff:.1e} (worst: {worst}), "
                     f"max |Δ|/max |peer| {grad_max_rel:.1e}" + ("" if grad_diff <= GRAD_REL_L2 else " MISMATCH"))
        fb_peer.result = None
    fb_ours.result = None
    gsplat_s, gsplat_note = _gsplat_cuda_time(run, scene, backward=True, weights=weights)
    records.append(BenchRecord(
        SUITE, f"forward+backward {size_label}", n, fb_ours.median_s, "torch-tiles" if peer_s else None, peer_s,
        fb_ours.peak_rss_mb, _join(scene_note, "loss = Σ random weights · image", peer_note, gsplat_note),
        {**extra_common, "peer_peak_rss_mb": peer_rss, "grad_rel_l2_diff": grad_diff, "grad_max_rel_diff": grad_max_rel, "n_isects": pairs,
         "gsplat_cuda_s": gsplat_s},
    ))
    return records


def _gsplat_cuda_time(
    run: _Run, scene: Scene, backward: bool, weights: torch.Tensor | None = None
) -> tuple[float | None, str]:
    """gsplat's CUDA rasterization time on a CUDA run, else None and the reason."""
    if run.device.type != "cuda":
        return None, "gsplat CUDA: no CUDA"
    try:
        import gsplat
    except Exception as exc:  # noqa: BLE001
        return None, f"gsplat CUDA: not importable ({type(exc).__name__})"

    def raster(*args: Any, **kw: Any) -> Any:
        return gsplat.rasterization(*args, **kw)

    fn = (_forward_backward(raster, scene, weights) if backward and weights is not None
          else _forward(raster, scene))
    return run.time(fn).median_s, "gsplat CUDA timed as gsplat_cuda_s"


def _bench_projection(run: _Run, n: int, width: int, height: int) -> BenchRecord:
    """Projection only (covariances + EWA + culling): ours vs gsplat's pure-torch implementation."""
    from sparse3d.kernels.gaussian_projection import project_gaussians

    scene = random_scene(n, width, height, seed=n + width, device=run.device)
    args = (scene.viewmats, scene.Ks, width, height)

    def ours() -> dict[str, torch.Tensor]:
        with torch.no_grad():
            return project_gaussians(scene.means, scene.quats, scene.scales, scene.opacities, *args,
                                     0.01, 1e10, 0.0, 0.3, False)

    m_ours = run.time(ours, keep_result=True)
    extra = {"width": width, "height": height, "num_gaussians": n, "size_unit": "Gaussians"}
    impl, reason = _gsplat_torch_status()
    if impl is None:
        return BenchRecord(SUITE, f"projection {width}×{height}", n, m_ours.median_s, None, None,
                           m_ours.peak_rss_mb, reason, extra)

    def peer() -> tuple[torch.Tensor, ...]:
        with torch.no_grad():
            covars, _ = impl._quat_scale_to_covar_preci(scene.quats, scene.scales, True, False, False)
            return impl._fully_fused_projection(scene.means, covars, *args)

    m_peer = run.time(peer, keep_result=True)
    radii, means2d, depths, conics, _ = m_peer.result
    mine = m_ours.result
    # gsplat's torch impl uses a fixed 3.33σ box (its CUDA kernel is opacity-aware, like ours), so compare the
    # geometry of the Gaussians both keep.
    both = (radii[0] > 0).all(-1) & (mine["radii"][0] > 0).all(-1)
    err = max(_max_abs(mine["means2d"][0][both], means2d[0][both]),
              _max_abs(mine["depths"][0][both], depths[0][both]),
              _max_rel(mine["conics"][0][both], conics[0][both]))
    note = (f"gsplat _torch_impl._fully_fused_projection + _quat_scale_to_covar_preci; {int(both.sum())} "
            f"Gaussians kept by both, max diff (means2d px, depth, conic rel) {err:.1e}"
            + ("" if err <= 1e-3 else " MISMATCH"))
    return BenchRecord(SUITE, f"projection {width}×{height}", n, m_ours.median_s, "gsplat torch projection",
                       m_peer.median_s, m_ours.peak_rss_mb, note,
                       {**extra, "peer_peak_rss_mb": m_peer.peak_rss_mb, "projection_max_diff": err})


# ------------------------------------------------------------------------------------------------ entry
def run_splatting_suite(repeats: int = 5, quick: bool = False, device: str = "cpu") -> list[dict]:
    """Run the splatting benchmarks; ``quick`` uses one 128×96 / 2k-Gaussian case and 1 repeat (< 60 s)."""
    peer_max_gb = _peer_cap_gb()
    dev = prepare_run(repeats, device)
    run = _Run(min(repeats, QUICK_MAX_REPEATS) if quick else repeats, dev, peer_max_gb)
    resolutions = QUICK_RESOLUTIONS if quick else RESOLUTIONS
    counts = QUICK_COUNTS if quick else COUNTS
    records: list[BenchRecord] = []
    for width, height in resolutions:
        for n in counts:
            t0 = time.perf_counter()
            records += _bench_case(run, n, width, height)
            log.info("splatting %dx%d, %d Gaussians: %.1f s", width, height, n, time.perf_counter() - t0)
    for n in counts:
        records.append(_bench_projection(run, n, *resolutions[-1]))
    for r in records:
        r.extra.setdefault("device", str(dev))
        r.extra.setdefault("repeats", run.repeats)
    return [r.to_dict() for r in records]
