"""CUDA readiness of every Warp kernel module.

* Ahead-of-time compile of each module in ``sparse3d.kernels.KERNEL_MODULES`` for sm_80 and sm_90 cubins. This
  goes through NVRTC and needs no GPU, so CPU-only CI still catches kernels that do not compile for CUDA.
* On machines with a GPU: voxelize, segment reductions, kernel maps and sparse conv on ``cuda`` equal the CPU
  results (skipped elsewhere).
"""

from __future__ import annotations

import importlib
import pkgutil

import pytest
import torch
import warp as wp

from sparse3d.kernels import KERNEL_MODULES, runtime

CUDA = torch.cuda.is_available()


def test_kernel_module_list_is_complete():
    """Every module of the package that defines a Warp kernel is listed (and only those), so that a kernel
    family split over new modules cannot escape the AOT compile below."""
    import sparse3d.kernels as package

    defining = set()
    for info in pkgutil.walk_packages(package.__path__, prefix=f"{package.__name__}."):
        module = importlib.import_module(info.name)
        if any(isinstance(v, wp.Kernel) and v.module.name == info.name for v in vars(module).values()):
            defining.add(info.name)
    assert {"sparse3d.kernels.voxelize", "sparse3d.kernels.gaussian_composite"} <= defining
    assert set(KERNEL_MODULES) == defining
    assert len(set(KERNEL_MODULES)) == len(KERNEL_MODULES)


@pytest.mark.parametrize("name", KERNEL_MODULES)
def test_aot_compile_sm80_sm90(name, tmp_path):
    runtime.init()
    module = importlib.import_module(name)
    out_dir = tmp_path / name.rsplit(".", 1)[-1]
    wp.compile_aot_module(module, arch=[80, 90], use_ptx=False, module_dir=out_dir)
    for arch in (80, 90):
        cubins = sorted(out_dir.glob(f"*.sm{arch}.cubin"))
        assert len(cubins) == 1, (
            f"{name}: expected one sm{arch} cubin in {sorted(p.name for p in out_dir.iterdir())}"
        )
        data = cubins[0].read_bytes()
        assert len(data) > 0
        assert data[:4] == b"\x7fELF", f"{cubins[0].name} is not an ELF cubin"


# --------------------------------------------------------------------------------------------- GPU vs CPU
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_cuda_matches_cpu():
    from sparse3d.kernels import kernel_map as KM
    from sparse3d.kernels import segment as S
    from sparse3d.kernels.hashmap import VoxelHashTable, unique_keys_with_inverse
    from sparse3d.kernels.sparse_conv import sparse_conv
    from sparse3d.kernels.voxelize import voxelize

    g = torch.Generator().manual_seed(0)
    n = 50_000
    rng, size = (0.0, -20.0, -2.0, 40.0, 20.0, 2.0), (0.25, 0.25, 0.25)
    pts = torch.rand(n, 4, generator=g) * torch.tensor([44.0, 44.0, 4.4, 1.0]) - torch.tensor(
        [2.0, 22.0, 2.2, 0.0]
    )
    pts[::101, 0] = float("nan")
    batch = torch.randint(0, 2, (n,), generator=g, dtype=torch.int32)

    # voxelize (sort de-dup on CUDA)
    cpu = voxelize(pts, size, rng, batch)
    gpu = voxelize(pts.cuda(), size, rng, batch.cuda())
    assert gpu.coords.device.type == "cuda"
    for name in ("coords", "point_to_voxel", "counts"):
        assert torch.equal(getattr(gpu, name).cpu(), getattr(cpu, name)), name
    assert (gpu.num_nonfinite, gpu.num_out_of_range, gpu.grid_size) == (
        cpu.num_nonfinite,
        cpu.num_out_of_range,
        cpu.grid_size,
    )

    # hash table
    keys = torch.randint(0, 5000, (20_000,), generator=g)
    q = torch.randint(-2, 6000, (30_000,), generator=g)
    assert torch.equal(VoxelHashTable(keys.cuda()).query(q.cuda()).cpu(), VoxelHashTable(keys).query(q))
    for a, b in zip(unique_keys_with_inverse(keys.cuda()), unique_keys_with_inverse(keys)):
        assert torch.equal(a.cpu(), b)
    # occupancy-bitmap de-dup (one bitmap, real CUDA atomic_or) against the CPU sort
    for a, b in zip(unique_keys_with_inverse(keys.cuda(), 5000, "occupancy"), unique_keys_with_inverse(keys)):
        assert torch.equal(a.cpu(), b)

    # segment reductions and their gradients
    m = cpu.coords.shape[0]
    vals = torch.relu(torch.randn(n, 5, generator=g))
    ids = cpu.point_to_voxel
    for fn in (S.segment_sum, S.segment_mean):
        x_c, x_g = vals.clone().requires_grad_(True), vals.cuda().requires_grad_(True)
        oc, og = fn(x_c, ids, m), fn(x_g, ids.cuda(), m)
        torch.testing.assert_close(og.cpu(), oc, rtol=1e-5, atol=1e-5)
        gout = torch.randn(oc.shape, generator=g)
        (gc,) = torch.autograd.grad(oc, x_c, gout)
        (gg,) = torch.autograd.grad(og, x_g, gout.cuda())
        torch.testing.assert_close(gg.cpu(), gc)
    x_c, x_g = vals.clone().requires_grad_(True), vals.cuda().requires_grad_(True)
    (oc, ac), (og, ag) = S.segment_max(x_c, ids, m), S.segment_max(x_g, ids.cuda(), m)
    assert torch.equal(og.cpu(), oc) and torch.equal(ag.cpu(), ac)
    gout = torch.randn(oc.shape, generator=g)
    (gc,) = torch.autograd.grad(oc, x_c, gout)
    (gg,) = torch.autograd.grad(og, x_g, gout.cuda())
    assert torch.equal(gg.cpu(), gc)

    # kernel maps and sparse conv
    coords, grid = cpu.coords, cpu.grid_size
    maps = [
        (KM.submanifold_map(coords, grid, 3), KM.submanifold_map(coords.cuda(), grid, 3)),
        (KM.strided_map(coords, grid, 3, 2, 1), KM.strided_map(coords.cuda(), grid, 3, 2, 1)),
    ]
    for km_c, km_g in maps:
        assert tuple(km_g.out_grid) == tuple(km_c.out_grid)
        for name in ("out_coords", "nbr", "nbr_t"):
            assert torch.equal(getattr(km_g, name).cpu(), getattr(km_c, name)), name
        feats = torch.randn(m, 4, generator=g)
        w = torch.randn(27, 4, 8, generator=g) * 0.2
        f_c, w_c = feats.clone().requires_grad_(True), w.clone().requires_grad_(True)
        f_g, w_g = feats.cuda().requires_grad_(True), w.cuda().requires_grad_(True)
        out_c = sparse_conv(f_c, w_c, km_c.nbr, km_c.nbr_t)
        out_g = sparse_conv(f_g, w_g, km_g.nbr, km_g.nbr_t)
        torch.testing.assert_close(out_g.cpu(), out_c, rtol=1e-4, atol=1e-4)
        gout = torch.randn(out_c.shape, generator=g)
        grads_c = torch.autograd.grad(out_c, (f_c, w_c), gout)
        grads_g = torch.autograd.grad(out_g, (f_g, w_g), gout.cuda())
        for a, b in zip(grads_g, grads_c):
            torch.testing.assert_close(a.cpu(), b, rtol=1e-4, atol=1e-3)
