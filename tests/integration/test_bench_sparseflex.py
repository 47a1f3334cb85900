"""``sparse3d-bench sparseflex`` on tiny grids: the suite is registered, its records are well formed, the sparse and
dense FlexiCubes agree (the suite asserts it), the band grid holds the analytic surface, and remeshing keeps closed
shapes closed and open ones open.

Timings are not asserted (shared machines).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sparse3d.bench import available_suites
from sparse3d.bench.common import RECORD_FIELDS
from sparse3d.bench.sparseflex import band_grid, run_sparseflex_suite, sphere_sdf, torus_sdf
from sparse3d.kernels.flexicubes import extract_mesh


def test_suite_is_registered() -> None:
    assert "sparseflex" in available_suites()


@pytest.mark.parametrize("fn, radius", [(sphere_sdf, 0.35), (torus_sdf, None)])
def test_band_grid_is_refined_around_the_surface(fn, radius) -> None:
    grid = band_grid(fn, 128, coarse=32)
    assert grid.resolution == 128
    centres = (grid.cube_coords.float() + 0.5) / 128 - 0.5
    assert bool((fn(centres).abs() <= 1.0 / 128 + 1e-6).all())  # band of one voxel around the surface
    mesh = extract_mesh(grid.cube_coords, 128, grid.sdf, corners=(grid.corner_keys, grid.cube_corners))
    values = fn(mesh.vertices)
    assert float(values.abs().max()) < 0.5 / 128  # dual vertices lie within half a voxel of the surface
    if radius is not None:
        assert float(torch.linalg.vector_norm(mesh.vertices, dim=1).sub(radius).abs().mean()) < 0.1 / 128


def test_quick_suite_records() -> None:
    records = run_sparseflex_suite(repeats=1, quick=True, sizes={"extract": [32], "remesh": [32], "fit": []})
    names = sorted(r["name"] for r in records)
    assert names == ["extract sphere", "extract torus", "remesh bracket", "remesh cavity", "remesh sheet",
                     "remesh sphere", "remesh thin"]
    for r in records:
        assert all(k in r for k in RECORD_FIELDS) and r["suite"] == "sparseflex" and r["ours_s"] > 0
    by = {r["name"]: r for r in records}
    for shape in ("sphere", "torus"):
        row = by[f"extract {shape}"]
        assert row["torch_ref_s"] > 0 and row["faces"] > 0 and row["cubes"] > 0
    assert by["remesh sheet"]["input_open"] and by["remesh sheet"]["output_open"]
    for shape in ("sphere", "cavity", "thin", "bracket"):
        assert not by[f"remesh {shape}"]["input_open"] and not by[f"remesh {shape}"]["output_open"]
    assert by["remesh sphere"]["fscore@0.01"] > 0.99 and by["remesh cavity"]["fscore@0.01"] > 0.99
    assert np.isfinite(by["remesh sheet"]["chamfer_l1"])


def test_quick_fit_rows_keep_the_open_rim_and_the_cavity() -> None:
    records = run_sparseflex_suite(repeats=1, quick=True, sizes={"extract": [], "remesh": [], "fit": [32]})
    by = {r["name"]: r for r in records}
    assert sorted(by) == ["fit cavity", "fit sheet", "fit thin"]
    for r in records:
        assert all(k in r for k in RECORD_FIELDS) and r["steps"] == 4 and r["process_peak_rss_mb"] > 0
    assert by["fit sheet"]["boundary_edges"] > 0 and by["fit sheet"]["target_boundary_edges"] > 0
    assert by["fit cavity"]["boundary_edges"] == 0 and by["fit cavity"]["inner_shell_vertices"] > 100
    assert by["fit cavity"]["fscore@0.01"] > 0.95


def test_bad_sizes_are_refused() -> None:
    with pytest.raises(ValueError, match="powers of two"):
        run_sparseflex_suite(repeats=1, quick=True, sizes={"extract": [48], "remesh": [], "fit": []})
    with pytest.raises(ValueError, match="unknown size family"):
        run_sparseflex_suite(repeats=1, quick=True, sizes={"vae": [32]})
