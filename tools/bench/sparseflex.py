"""``sparse3d-bench sparseflex``: sparse FlexiCubes extraction speed and memory, and remeshing fidelity.

Rows:

* **extract** -- a sphere (r = 0.35) and a torus (R = 0.3, r = 0.1) signed-distance band at ``R``³ cubes, built
  coarse-to-fine from the analytic SDF (64³ dense samples, then ×2 subdivisions keeping cubes within the band):
  :func:`sparse3d.kernels.flexicubes.extract_mesh` (inference, plain DMC weights) against scikit-image's
  ``marching_cubes`` on the dense ``(R+1)³`` float32 volume of the same SDF (the peer, ``peers`` extra), and our
  dense torch FlexiCubes (:func:`sparse3d.kernels.reference.flexicubes.flexicubes_dense`, the oracle) where it fits
  (``DENSE_MAX_RES``; the "torch ref" column). Both FlexiCubes versions must give the same vertex and face counts
  (asserted).
* **remesh** -- ``sparse3d-mesh`` of the generated test shapes (:mod:`sparse3d.datasets.synth.fit_shapes`) at
  ``R``³: F-score at 0.5 % and 1 % of the input's bounding-box diagonal against the input (100k samples per mesh,
  seed 0, point-to-surface distances: exact distance to the other mesh's triangles), whether an open input stays open and a closed one closed.

* **fit** -- :class:`~sparse3d.models.sparseflex.fit.SparseFlexFit` on the generated open sheet with holes, thin
  ring and cavity (24 outside cameras at 256², plus 14 inside cameras for the cavity), ``FIT_STEPS`` steps at
  ``R``³ from depth/normal/mask renders only: F-score (point-to-surface) against the target, open boundary kept,
  both cavity shells kept, wall time (set-up + steps), peak RSS. At ``R`` ≥ 512 only the sphere is fitted, for
  ``SECTION_FIT_STEPS`` steps, with frustum sections (α = 0.3) and without, for the peak memory of each.

``ours_peak_rss_mb`` is the working memory of the measured call (see :mod:`sparse3d.bench.common`); the fit rows
also give the process's absolute peak (``process_peak_rss_mb``).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch

from sparse3d.bench.common import BenchRecord, measure, override_sizes, prepare_run

__all__ = ["DEFAULT_SIZES", "QUICK_SIZES", "band_grid", "run_sparseflex_suite", "sphere_sdf", "torus_sdf"]

log = logging.getLogger("sparse3d.bench.sparseflex")

SUITE = "sparseflex"
DEFAULT_SIZES: dict[str, tuple[int, ...]] = {"extract": (256, 1024), "remesh": (256,), "fit": (256, 512)}
QUICK_SIZES: dict[str, tuple[int, ...]] = {"extract": (64,), "remesh": (32,), "fit": (32,)}
QUICK_MAX_REPEATS = 1
DENSE_MAX_RES = 256
"""Largest grid the dense torch FlexiCubes runs at (its memory grows with R³)."""
PEER_MAX_RES = 512
"""Largest grid scikit-image marching cubes runs at (a dense float32 (R+1)³ volume)."""
TARGETS = {256: "target ≤ 1 s", 1024: "target ≤ 15 s, ≤ 4 GB"}
REMESH_SHAPES = ("sphere", "thin", "cavity", "sheet", "bracket")
FIT_SHAPES = ("sheet", "thin", "cavity")
FIT_STEPS = 200
SECTION_FIT_STEPS = 30
"""Steps of the ≥ 512³ sphere fits (they compare peak memory with and without sections)."""
QUICK_FIT_STEPS = 4
SECTION_MIN_RES = 512
"""Fits at this resolution and above also run the sphere with and without frustum sections."""


def sphere_sdf(points: torch.Tensor, radius: float = 0.35) -> torch.Tensor:
    """Signed distance to a sphere at the origin (negative inside)."""
    return points.norm(dim=-1) - radius


def torus_sdf(points: torch.Tensor, major: float = 0.3, minor: float = 0.1) -> torch.Tensor:
    """Signed distance to a torus around the z axis (negative inside)."""
    q = torch.stack([points[..., :2].norm(dim=-1) - major, points[..., 2]], dim=-1)
    return q.norm(dim=-1) - minor


SHAPES: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"sphere": sphere_sdf, "torus": torus_sdf}


def _lattice(resolution: int) -> torch.Tensor:
    """((R+1)³, 3) vertex positions of an R³ grid on [-0.5, 0.5]³, x-major (vid = (x(R+1)+y)(R+1)+z)."""
    lin = torch.linspace(-0.5, 0.5, resolution + 1)
    return torch.stack(torch.meshgrid(lin, lin, lin, indexing="ij"), dim=-1).reshape(-1, 3)


def band_grid(sdf_fn: Callable[[torch.Tensor], torch.Tensor], resolution: int, coarse: int = 64) -> Any:
    """A sparse band of ``sdf_fn`` at ``resolution``³, refined from dense ``coarse``³ samples."""
    from sparse3d.models.sparseflex.structure import grid_from_sdf_volume, subdivide

    start = min(coarse, resolution)
    volume = sdf_fn(_lattice(start)).reshape(start + 1, start + 1, start + 1)
    grid = grid_from_sdf_volume(volume)
    while grid.resolution < resolution:
        if resolution % (grid.resolution * 2):
            raise ValueError(f"resolution {resolution} must be {start} times a power of two")
        grid = subdivide(grid, sdf_fn)
    return grid


def _peak_rss_total_mb() -> float:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _bench_extract(repeats: int, resolution: int) -> list[BenchRecord]:
    from sparse3d.kernels.flexicubes import extract_mesh

    records = []
    for shape, fn in SHAPES.items():
        t0 = time.perf_counter()
        grid = band_grid(fn, resolution)
        build_s = time.perf_counter() - t0
        cubes, sdf = grid.cube_coords, grid.sdf
        corners = (grid.corner_keys, grid.cube_corners)

        def ours(cubes: Any = cubes, sdf: Any = sdf, corners: Any = corners) -> Any:
            return extract_mesh(cubes, resolution, sdf, corners=corners)

        m = measure(ours, repeats, keep_result=True)
        mesh = m.result
        extra: dict[str, Any] = {"shape": shape, "cubes": int(len(cubes)), "faces": int(len(mesh.faces)),
                                 "vertices": int(len(mesh.vertices)), "build_s": build_s,
                                 "process_peak_rss_mb": _peak_rss_total_mb()}
        notes = [TARGETS.get(resolution, "")]
        if resolution <= DENSE_MAX_RES:
            from sparse3d.kernels.reference.flexicubes import flexicubes_dense

            dense_sdf = fn(_lattice(resolution)).float()
            md = measure(lambda d=dense_sdf: flexicubes_dense(d, resolution), 1, keep_result=True)
            dv, df, _ = md.result
            if (len(dv), len(df)) != (len(mesh.vertices), len(mesh.faces)):
                raise AssertionError(f"{shape} @ {resolution}: sparse {len(mesh.vertices)}/{len(mesh.faces)} vs "
                                     f"dense {len(dv)}/{len(df)} vertices/faces")
            extra.update(torch_ref_s=md.median_s, torch_ref_peak_rss_mb=md.peak_rss_mb, torch_ref="dense FlexiCubes (ours, torch)")
            del dense_sdf, md
        else:
            notes.append(f"dense FlexiCubes not run above {DENSE_MAX_RES}³")
        peer, peer_s = "scikit-image marching_cubes", None
        if resolution <= PEER_MAX_RES:
            try:
                from skimage.measure import marching_cubes
            except ImportError:
                notes.append("scikit-image not installed (pip install sparse3d[peers])")
            else:
                volume = fn(_lattice(resolution)).float().reshape((resolution + 1,) * 3).numpy()
                mp = measure(lambda v=volume: marching_cubes(v, 0.0), repeats)
                peer_s = mp.median_s
                extra["peer_peak_rss_mb"] = mp.peak_rss_mb
                del volume
        else:
            notes.append(f"marching cubes not run above {PEER_MAX_RES}³ (dense volume)")
        records.append(BenchRecord(SUITE, f"extract {shape}", resolution, m.median_s, peer, peer_s, m.peak_rss_mb,
                                   "; ".join(n for n in notes if n), extra))
        del grid, mesh, m
    return records


def _bench_remesh(repeats: int, resolution: int) -> list[BenchRecord]:
    import tempfile
    from pathlib import Path

    from sparse3d.datasets.synth.fit_shapes import write_fit_shapes
    from sparse3d.io.mesh import read_mesh
    from sparse3d.metrics.mesh import mesh_metrics
    from sparse3d.models.sparseflex.meshing import mesh_from_input

    records = []
    with tempfile.TemporaryDirectory(prefix="sparse3d-bench-") as tmp:
        paths = write_fit_shapes(Path(tmp), REMESH_SHAPES)
        for shape, path in paths.items():
            source = read_mesh(path)
            m = measure(lambda p=path: mesh_from_input(p, resolution), max(1, min(repeats, 2)), keep_result=True)
            result = m.result
            metrics = mesh_metrics(result.mesh, source, n_points=100_000, seed=0, distance="surface")
            open_in = len(source.boundary_edges()) > 0
            extra = {"shape": shape, "faces": int(len(result.mesh.faces)), "cubes": result.num_cubes,
                     "input_open": open_in, "output_open": result.boundary_edges > 0,
                     **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
            kept = "open stays open" if open_in else "closed stays closed"
            if open_in != extra["output_open"]:
                kept = "open input came out closed" if open_in else "closed input came out open"
            notes = (f"F@0.005 {metrics['fscore@0.005']:.4f}, F@0.01 {metrics['fscore@0.01']:.4f} (target F@0.005 "
                     f"≥ 0.99); {kept}; {result.num_cubes} cubes, {len(result.mesh.faces)} faces")
            records.append(BenchRecord(SUITE, f"remesh {shape}", resolution, m.median_s, None, None, m.peak_rss_mb,
                                       notes, extra))
    return records


def _fit_once(path: Any, resolution: int, steps: int, section_ratio: float, inside: int, size: int,
              init_normals: str) -> tuple[Any, Any, float, Any]:
    """Scene + fit; returns (method, scene, wall seconds, PeakRSS)."""
    from sparse3d.bench.common import PeakRSS
    from sparse3d.datasets.meshes import load_mesh_scene
    from sparse3d.models.sparseflex.fit import SparseFlexFit

    with PeakRSS() as rss:
        t0 = time.perf_counter()
        scene = load_mesh_scene(path, num_views=24, test_views=0, inside_views=inside, width=size, height=size)
        method = SparseFlexFit(resolution=resolution, section_ratio=section_ratio, init_normals=init_normals)
        method.setup(scene.inputs, steps, mesh=scene.mesh, normalization=scene.normalization)
        for step in range(steps):
            method.training_step(step)
        method.full_mesh()
        wall = time.perf_counter() - t0
    return method, scene, wall, rss


def _bench_fit(repeats: int, resolution: int, steps: int = FIT_STEPS, size: int = 256) -> list[BenchRecord]:
    import tempfile
    from pathlib import Path

    from sparse3d.bench.common import current_rss_mb
    from sparse3d.datasets.synth.fit_shapes import write_fit_shapes

    records = []
    with tempfile.TemporaryDirectory(prefix="sparse3d-bench-") as tmp:
        paths = write_fit_shapes(Path(tmp), (*FIT_SHAPES, "sphere"))
        runs: list[tuple[str, float]] = [(shape, 1.0) for shape in FIT_SHAPES]
        if resolution >= SECTION_MIN_RES:
            runs = [("sphere", 0.3), ("sphere", 1.0)]
            steps = min(steps, SECTION_FIT_STEPS)
        for shape, ratio in runs:
            base = current_rss_mb() or 0.0
            method, scene, wall, rss = _fit_once(paths[shape], resolution, steps, ratio,
                                                 14 if shape == "cavity" else 0, size,
                                                 "estimate" if shape == "sheet" else "camera")
            info = method.summary()
            metrics = info.get("mesh_metrics", {})
            extra: dict[str, Any] = {
                "shape": shape, "steps": steps, "section_ratio": ratio, "image_size": size,
                "cubes": info["num_cubes"], "faces": info["faces"], "boundary_edges": info["boundary_edges"],
                "target_boundary_edges": info["target_boundary_edges"],
                "process_peak_rss_mb": None if rss.peak_mb is None else base + rss.peak_mb,
                **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
            notes = [f"F@0.005 {metrics.get('fscore@0.005', 0.0):.4f} (point-to-surface; target ≥ 0.97)",
                     f"{steps} steps, {wall / 60.0:.1f} min (target ≤ 20 min at 256³)"]
            if info["target_boundary_edges"]:
                notes.append("open boundary kept" if info["boundary_edges"] else "open boundary LOST")
            if shape == "cavity":
                radii = np.linalg.norm(method.full_mesh().vertices.detach().numpy(), axis=1)
                target_r = np.linalg.norm(np.asarray(scene.mesh.vertices), axis=1)
                inner = int((np.abs(radii - target_r.min()) < 2.0 / resolution).sum())
                extra["inner_shell_vertices"] = inner
                notes.append("cavity kept" if inner > 100 else "cavity LOST")
            if ratio < 1.0:
                notes.append(f"frustum sections α = {ratio}")
            records.append(BenchRecord(SUITE, f"fit {shape}" + (f" α={ratio:g}" if resolution >= SECTION_MIN_RES
                                                               else ""), resolution, wall, None, None, rss.peak_mb,
                                       "; ".join(notes), extra))
            del method, scene
    return records


def run_sparseflex_suite(repeats: int = 5, quick: bool = False, device: str = "cpu",
                         sizes: Mapping[str, Any] | None = None) -> list[dict]:
    """Run the SparseFlex benchmarks and return their records (see :mod:`sparse3d.bench.common`).

    ``quick`` uses tiny grids, one repeat and a few fit steps (smoke runs); ``sizes`` maps ``extract`` / ``remesh``
    / ``fit`` to lists of resolutions (an empty list skips a family). Raises AssertionError when the sparse and dense FlexiCubes meshes
    differ in size.
    """
    dev = prepare_run(repeats, device)
    if dev.type != "cpu":
        raise ValueError("the sparseflex suite runs on the CPU (device=cpu)")
    repeats = min(repeats, QUICK_MAX_REPEATS) if quick else repeats
    plan = override_sizes(QUICK_SIZES if quick else DEFAULT_SIZES, sizes, tuple(DEFAULT_SIZES))
    records: list[BenchRecord] = []
    fit_steps = QUICK_FIT_STEPS if quick else FIT_STEPS
    benches: dict[str, Callable[[int, int], list[BenchRecord]]] = {
        "extract": _bench_extract,
        "remesh": _bench_remesh,
        "fit": lambda reps, res: _bench_fit(reps, res, fit_steps, 64 if quick else 256),
    }
    for family in plan:
        for size in plan[family]:
            if size < 2 or size & (size - 1):
                raise ValueError(f"sizes.{family}: resolutions must be powers of two >= 2, got {size}")
    for family, bench in benches.items():
        for size in plan[family]:
            t0 = time.perf_counter()
            new = bench(repeats, int(size))
            load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
            for r in new:
                r.extra["load_avg_1m"] = load  # other work on the machine slows every row: say how much there was
            log.info("sparseflex %s @ %d: %d records in %.1f s", family, size, len(new), time.perf_counter() - t0)
            records += new
    for r in records:
        r.extra.setdefault("repeats", repeats)
        r.extra.setdefault("torch_threads", torch.get_num_threads())
    return [r.to_dict() for r in records]


