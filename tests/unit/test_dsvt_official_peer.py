"""The official-style DSVT input layer (the ``sparse3d-bench dsvt`` peer) against the set-partition oracle and
against our :class:`~sparse3d.models.dsvt.input_layer.DSVTInputLayer`.

The peer follows the official code's steps (``unique``, in-window counter, sort, dense ``W × window volume``
buffer, float64 Eq. 3); the oracle evaluates Eq. 3 per window from the paper. Agreement bit for bit on random
and adversarial voxel sets (one voxel, n = τ, τ + 1, a full window, several batch elements) is what makes the
benchmark a like-for-like comparison.
"""

from __future__ import annotations

import math

import pytest
import torch

from sparse3d.bench.dsvt import check_same_as_peer, lidar_pillar_coords
from sparse3d.bench.dsvt_official_peer import (
    OfficialInputLayer,
    dense_buffer_set_partition,
    inner_window_index,
    official_window_coords,
    set_voxel_mask,
)
from sparse3d.kernels.reference import set_partition as R
from sparse3d.kernels.set_partition import dsvt_stage_partitions
from sparse3d.models.dsvt.input_layer import DSVTInputLayer, pooling_index


def random_coords(n: int, shape: tuple[int, int, int], batches: int, seed: int) -> torch.Tensor:
    """``n`` distinct voxels (batch, z, y, x) in random order over ``batches`` batch elements."""
    X, Y, Z = shape
    g = torch.Generator().manual_seed(seed)
    per = X * Y * Z
    lin = torch.randperm(batches * per, generator=g)[:n]
    b, r = lin // per, lin % per
    x, y, z = r // (Y * Z), (r // Z) % Y, r % Z
    return torch.stack([b, z, y, x], dim=1).to(torch.int32)


def peer_partition(coords, shape, window, shift, tau):
    keys, in_win = official_window_coords(coords, shape, window, shift)
    inds = dense_buffer_set_partition(keys, in_win, window, tau)
    return inds, set_voxel_mask(inds), keys, in_win


def assert_matches_oracle(coords, shape, window, shift, tau):
    inds, mask, keys, in_win = peer_partition(coords, shape, window, shift, tau)
    ref = R.dynamic_set_partition(coords, shape, window, shift, tau)
    assert torch.equal(inds, ref.set_voxel_inds)
    assert torch.equal(mask, ref.set_voxel_mask)
    assert torch.equal(in_win.to(torch.int32), ref.windows.coords_in_win)
    assert torch.equal(torch.unique(keys), ref.windows.window_key)


# ------------------------------------------------------------------------------------ partition vs oracle
@pytest.mark.parametrize(
    ("n", "shape", "window", "shift", "tau", "batches", "seed"),
    [
        (300, (30, 26, 1), (6, 6, 1), (0, 0, 0), 7, 1, 0),
        (300, (30, 26, 1), (12, 12, 1), (6, 6, 0), 7, 2, 1),
        (900, (20, 18, 8), (5, 5, 8), (2, 2, 0), 9, 3, 2),  # 3-D windows, z shift dropped (Z == wz)
        (700, (16, 16, 12), (4, 4, 3), (2, 2, 1), 5, 2, 3),  # z shift applied
        (1500, (40, 40, 1), (12, 12, 1), (6, 6, 0), 36, 1, 4),  # DSVT-P windows and τ
    ],
)
def test_partition_matches_oracle_random(n, shape, window, shift, tau, batches, seed):
    assert_matches_oracle(random_coords(n, shape, batches, seed), shape, window, shift, tau)


def test_single_voxel():
    coords = torch.tensor([[0, 0, 5, 7]], dtype=torch.int32)
    inds, mask, _, _ = peer_partition(coords, (12, 12, 1), (4, 4, 1), (0, 0, 0), 6)
    assert torch.equal(inds, torch.zeros((2, 1, 6), dtype=torch.int64))  # every slot is voxel 0
    assert torch.equal(mask[:, 0, 0], torch.tensor([False, False])) and bool(mask[:, 0, 1:].all())
    assert_matches_oracle(coords, (12, 12, 1), (4, 4, 1), (2, 2, 0), 6)


@pytest.mark.parametrize("extra", [-1, 0, 1])
def test_window_of_tau_and_tau_plus_one_voxels(extra):
    tau = 8
    window = (4, 4, 1)
    cells = torch.randperm(16, generator=torch.Generator().manual_seed(extra + 5))[: tau + extra]
    coords = torch.stack([torch.zeros_like(cells), torch.zeros_like(cells), cells // 4, cells % 4], 1).int()
    inds, mask, _, _ = peer_partition(coords, (4, 4, 1), window, (0, 0, 0), tau)
    assert inds.shape == (2, 1 if extra <= 0 else 2, tau)
    assert int(mask.sum()) == 2 * (inds.shape[1] * tau - coords.shape[0])  # each repeat masked, per ordering
    for o in range(2):  # every voxel lands in a slot
        assert torch.equal(torch.unique(inds[o]), torch.arange(coords.shape[0]))
    assert_matches_oracle(coords, (4, 4, 1), window, (0, 0, 0), tau)


@pytest.mark.parametrize("tau", [1, 5, 16, 40])
def test_full_window_ranks_follow_both_orderings(tau):
    # a 4 x 4 window, every cell occupied, voxels in random order: sorty visits (y, x) row-major, sortx (x, y)
    perm = torch.randperm(16, generator=torch.Generator().manual_seed(tau))
    coords = torch.stack([torch.zeros(16), torch.zeros(16), perm // 4, perm % 4], 1).to(torch.int32)
    inds, _, _, _ = peer_partition(coords, (4, 4, 1), (4, 4, 1), (0, 0, 0), tau)
    voxel_of_cell = torch.empty(16, dtype=torch.int64)
    voxel_of_cell[perm] = torch.arange(16)
    sets = math.ceil(16 / tau)
    ranks = (torch.arange(sets * tau) * 16) // (sets * tau)
    y_major = voxel_of_cell.view(4, 4).flatten()  # cell id = y * 4 + x
    x_major = voxel_of_cell.view(4, 4).t().flatten()
    assert torch.equal(inds[0].flatten(), y_major[ranks])
    assert torch.equal(inds[1].flatten(), x_major[ranks])
    assert_matches_oracle(coords, (4, 4, 1), (4, 4, 1), (0, 0, 0), tau)


def test_batch_elements_never_share_a_window_and_empty_input():
    coords = torch.tensor([[0, 0, 1, 1], [1, 0, 1, 1], [3, 0, 1, 2]], dtype=torch.int32)
    inds, _, _, _ = peer_partition(coords, (8, 8, 1), (4, 4, 1), (0, 0, 0), 2)
    assert inds.shape == (2, 3, 2) and torch.equal(inds[0], torch.tensor([[0, 0], [1, 1], [2, 2]]))
    assert_matches_oracle(coords, (8, 8, 1), (4, 4, 1), (2, 2, 0), 2)
    empty = peer_partition(torch.zeros((0, 4), dtype=torch.int32), (8, 8, 1), (4, 4, 1), (0, 0, 0), 3)[0]
    assert empty.shape == (2, 0, 3)


def test_inner_window_index_is_a_permutation_per_window():
    win = torch.randint(0, 9, (500,), generator=torch.Generator().manual_seed(0))
    win = torch.unique(win, return_inverse=True)[1]
    inner = inner_window_index(win, int(win.max()) + 1)
    for w in range(int(win.max()) + 1):
        members = inner[win == w]
        assert torch.equal(torch.sort(members).values, torch.arange(members.numel()))


# ------------------------------------------------------------------------------------ whole layer vs ours
def _equal_stages(layer: DSVTInputLayer, coords: torch.Tensor) -> float:
    with torch.no_grad():
        ours, peer = layer(coords), OfficialInputLayer(layer)(coords)
    return check_same_as_peer(ours, peer), ours, peer


def test_dsvt_p_layer_matches_ours_on_lidar_pillars():
    torch.manual_seed(0)
    layer = DSVTInputLayer([[36, 4]], [[12, 12, 1]], [[6, 6, 0]], [32], grid_size=(96, 96, 1)).eval()
    for m in layer.modules():  # non-trivial BatchNorm statistics
        if isinstance(m, torch.nn.BatchNorm1d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    coords = lidar_pillar_coords(2500, grid=(96, 96), seed=3)
    diff, ours, peer = _equal_stages(layer, coords)
    assert diff <= 1e-5
    assert len(peer[0].pos_embeds) == 4 and peer[0].pos_embeds[0][1].shape == (2500, 32)


def test_multi_stage_voxel_layer_matches_ours_including_pooling():
    torch.manual_seed(1)
    shape = (24, 20, 8)
    layer = DSVTInputLayer([[9, 1], [6, 1]], [[6, 6, 8], [6, 6, 1]], [[3, 3, 0], [3, 3, 0]], [16, 16],
                           grid_size=shape, pooling_strides=[[1, 1, 8]]).eval()
    coords = random_coords(800, shape, 2, 7)
    diff, ours, peer = _equal_stages(layer, coords)
    assert diff <= 1e-5
    assert layer.posembed_layers[0][0][0].position_embedding_head[0].in_features == 3  # 3-D stage embeddings
    pool = pooling_index(coords, shape, (1, 1, 8))
    assert torch.equal(peer[0].pooled_of_voxel, pool.pooled_of_voxel)
    assert torch.equal(peer[0].pool_slot, pool.slot)
    assert torch.equal(peer[1].coords, ours[1].coords)


def test_check_same_as_peer_detects_a_wrong_set_or_embedding():
    layer = DSVTInputLayer([[6, 2]], [[4, 4, 1]], [[2, 2, 0]], [8], grid_size=(16, 16, 1)).eval()
    coords = random_coords(120, (16, 16, 1), 1, 0)
    _, ours, peer = _equal_stages(layer, coords)
    inds = peer[0].set_voxel_inds[1].clone()
    inds[1, 0, [0, 1]] = inds[1, 0, [1, 0]]
    if torch.equal(inds, peer[0].set_voxel_inds[1]):  # slots 0 and 1 held the same voxel: swap sets instead
        inds[1, [0, 1]] = inds[1, [1, 0]]
    with pytest.raises(AssertionError, match="set_voxel_inds"):
        check_same_as_peer(ours, [peer[0]._replace(set_voxel_inds=(peer[0].set_voxel_inds[0], inds))])
    embeds = [list(e) for e in peer[0].pos_embeds]
    embeds[1][0] = embeds[1][0] + 1e-3
    with pytest.raises(AssertionError, match="embeddings differ"):
        check_same_as_peer(ours, [peer[0]._replace(pos_embeds=[tuple(e) for e in embeds])])


def test_official_layer_refuses_fixed_indexing():
    layer = DSVTInputLayer([[6, 2]], [[4, 4, 1]], [[2, 2, 0]], [8], grid_size=(16, 16, 1), pos_embed_indexing="fixed")
    with pytest.raises(ValueError, match="official"):
        OfficialInputLayer(layer)


# ------------------------------------------------------------------------------------ synthetic pillars
def test_lidar_pillars_are_exact_distinct_and_denser_near_the_sensor():
    coords = lidar_pillar_coords(20_000, seed=0)
    assert coords.dtype == torch.int32 and coords.shape == (20_000, 4)
    assert int(coords[:, :2].abs().sum()) == 0
    assert coords[:, 2:].min() >= 0 and coords[:, 2:].max() < 468
    key = coords[:, 3].long() * 468 + coords[:, 2].long()
    assert torch.unique(key).numel() == 20_000 and bool((key[1:] > key[:-1]).all())  # distinct, sorted by (x, y)
    r = torch.hypot(coords[:, 2].double() - 233.5, coords[:, 3].double() - 233.5)
    near = float((r < 40).sum()) / (math.pi * (40**2 - 8**2))
    far = float(((r >= 150) & (r < 230)).sum()) / (math.pi * (230**2 - 150**2))
    assert near > 0.5 and far < 0.1 * near
    assert torch.equal(coords, lidar_pillar_coords(20_000, seed=0))
    # a Waymo frame of 24,629 pillars has 1,156 / 834 sets with 41 % / 18 % duplicate slots (DSVT-P windows)
    shift0, shift1 = dsvt_stage_partitions(lidar_pillar_coords(24_629), (468, 468, 1), (12, 12, 1), (6, 6, 0), 36)
    assert 1000 <= shift0.set_voxel_inds.shape[1] <= 1400 and 700 <= shift1.set_voxel_inds.shape[1] <= 1000
    assert 0.3 <= float(shift0.set_voxel_mask.float().mean()) <= 0.55
    assert 0.1 <= float(shift1.set_voxel_mask.float().mean()) <= 0.3
    with pytest.raises(ValueError, match="exceeds"):
        lidar_pillar_coords(500, grid=(16, 16))
