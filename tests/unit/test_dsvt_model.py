"""DSVT stages against independent oracles: per-voxel loops for the VFE, per-set attention over the unique
voxels for set attention, brute-force grouping for pooling and scatter, and permutation properties."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from sparse3d.models.detection.bev import BEVScatter, ResidualBEVBackbone
from sparse3d.models.dsvt.backbone import DSVT, AttentionPooling, SetAttention
from sparse3d.models.dsvt.input_layer import DSVTInputLayer, pooling_index
from sparse3d.models.dsvt.vfe import DynamicVFE

RANGE = [0.0, -6.4, -3.0, 12.8, 6.4, 1.0]


def _points(n: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    lo = torch.tensor(RANGE[:3] + [0.0])
    hi = torch.tensor(RANGE[3:] + [1.0])
    pts = lo + torch.rand(n, 4, generator=g) * (hi - lo)
    pts[: n // 10, :3] += 20.0  # some points out of range
    return pts


def test_vfe_matches_a_per_voxel_loop():
    torch.manual_seed(0)
    vfe = DynamicVFE(RANGE, [0.8, 0.8, 1.0], in_channels=4, filters=(16, 8)).eval()
    for m in vfe.modules():
        if isinstance(m, nn.BatchNorm1d):
            m.running_mean.uniform_(-0.2, 0.2)
            m.running_var.uniform_(0.5, 2.0)
    pts = _points(600)
    out = vfe(pts)
    # oracle: group points by voxel index with python dicts, evaluate the PFN stack voxel by voxel
    vs = torch.tensor([0.8, 0.8, 1.0])
    lo = torch.tensor(RANGE[:3])
    groups: dict[tuple[int, int, int], list[int]] = {}
    for i, p in enumerate(pts):
        idx = torch.floor((p[:3] - lo) / vs).to(torch.int64)
        if all(0 <= int(idx[a]) < out.grid_size[a] for a in range(3)):
            groups.setdefault((int(idx[0]), int(idx[1]), int(idx[2])), []).append(i)
    assert len(groups) == out.features.shape[0]
    row_of = {(int(c[3]), int(c[2]), int(c[1])): r for r, c in enumerate(out.coords)}
    l0, l1 = vfe.pfn_layers
    for key, members in groups.items():
        p = pts[members]
        centre = (torch.tensor(key, dtype=torch.float32) + 0.5) * vs + lo
        feats = torch.cat([p, p[:, :3] - p[:, :3].mean(0), p[:, :3] - centre], dim=1)
        h = torch.relu(l0.norm(l0.linear(feats)))
        h = torch.cat([h, h.max(0).values.expand_as(h)], dim=1)
        h = torch.relu(l1.norm(l1.linear(h))).max(0).values
        torch.testing.assert_close(out.features[row_of[key]], h, atol=1e-5, rtol=1e-5)


def test_vfe_is_invariant_to_point_order_and_routes_max_gradient_to_one_point():
    vfe = DynamicVFE(RANGE, [0.8, 0.8, 4.0], filters=(8, 8)).eval()
    pts = _points(400, seed=1)
    perm = torch.randperm(pts.shape[0])
    a, b = vfe(pts), vfe(pts[perm])
    assert torch.equal(a.coords, b.coords)
    torch.testing.assert_close(a.features, b.features)
    # two identical points in one voxel: the max of each channel is tied; the gradient goes to one of them
    twin = torch.tensor([[1.0, 0.1, -1.0, 0.5], [1.0, 0.1, -1.0, 0.5]], requires_grad=True)
    vfe(twin).features.sum().backward()
    assert twin.grad is not None and torch.isfinite(twin.grad).all()


def test_pooling_index_matches_brute_force_grouping():
    g = torch.Generator().manual_seed(3)
    coords = torch.unique(torch.stack([torch.randint(0, 2, (300,), generator=g), torch.randint(0, 16, (300,), generator=g),
                                       torch.randint(0, 9, (300,), generator=g), torch.randint(0, 7, (300,), generator=g)], 1),
                          dim=0).to(torch.int32)
    shape, stride = (7, 9, 16), (1, 2, 4)
    pool = pooling_index(coords, shape, stride)
    assert pool.spatial_shape == (7, 5, 4) and pool.volume == 8
    for i, (b, z, y, x) in enumerate(coords.tolist()):
        pb, pz, py, px = pool.coords[pool.pooled_of_voxel[i]].tolist()
        assert (pb, pz, py, px) == (b, z // 4, y // 2, x // 1)
        assert int(pool.slot[i]) == (x % 1) * 8 + (y % 2) * 4 + z % 4
    keys = [(b, x, y, z) for b, z, y, x in pool.coords.tolist()]
    assert keys == sorted(keys) and len(set(keys)) == len(keys)


def test_set_attention_equals_attention_over_each_sets_unique_voxels():
    torch.manual_seed(0)
    layer = DSVTInputLayer([[6, 1]], [[4, 4, 1]], [[2, 2, 0]], [16], grid_size=(13, 11, 1))
    g = torch.Generator().manual_seed(5)
    cells = torch.randperm(13 * 11, generator=g)[:70]
    coords = torch.stack([torch.zeros_like(cells), torch.zeros_like(cells), cells // 13, cells % 13], 1).to(torch.int32)
    stage = layer(coords)[0]
    attn = SetAttention(16, 4, 32).eval()
    src, pos = torch.randn(70, 16), torch.randn(70, 16)
    part = stage.partitions[0]
    inds, pad = part.set_voxel_inds[1], part.set_voxel_mask[1]
    out = attn(src, pos, inds, pad)
    for s in range(inds.shape[0]):
        members = torch.unique_consecutive(inds[s])
        q = (src[members] + pos[members])[None]
        a = attn.self_attn(q, q, src[members][None], need_weights=False)[0][0]
        x = attn.norm1(src[members] + a)
        x = attn.norm2(x + attn.linear2(nn.functional.gelu(attn.linear1(x))))
        torch.testing.assert_close(out[members], x, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("indexing", ["official", "fixed"])
def test_position_embedding_indexing(indexing):
    layer = DSVTInputLayer([[8, 2]], [[4, 4, 1]], [[2, 2, 0]], [8], grid_size=(12, 12, 1),
                           pos_embed_indexing=indexing).eval()
    cells = torch.arange(0, 144, 3)
    coords = torch.stack([torch.zeros_like(cells)] * 2 + [cells // 12, cells % 12], 1).to(torch.int32)
    stage = layer(coords)[0]
    for block in range(2):
        for encoder in range(2):
            shift = encoder if indexing == "official" else block % 2
            part = stage.partitions[shift]
            w = part.windows.window_shape
            zyx = part.windows.coords_in_win.to(torch.float32)
            xy = torch.stack([zyx[:, 2] - w[0] / 2, zyx[:, 1] - w[1] / 2], 1)
            expected = layer.posembed_layers[0][block][shift](xy)
            torch.testing.assert_close(stage.pos_embeds[block][encoder].dense(), expected)


def test_dsvt_output_is_equivariant_to_voxel_order():
    torch.manual_seed(0)
    grid = (20, 16, 8)
    model = DSVT(grid, [[8, 1], [8, 1]], [[5, 5, 8], [5, 5, 1]], [[2, 2, 0], [2, 2, 0]], [16, 16], [4, 4], [32, 32],
                 pooling_strides=[[1, 1, 8]]).eval()
    g = torch.Generator().manual_seed(2)
    cells = torch.randperm(20 * 16 * 8, generator=g)[:200]
    coords = torch.stack([torch.zeros_like(cells), cells // (20 * 16), (cells // 20) % 16, cells % 20], 1).to(torch.int32)
    feats = torch.randn(200, 16)
    out, out_coords = model(feats, coords)
    perm = torch.randperm(200, generator=g)
    out_p, out_coords_p = model(feats[perm], coords[perm])
    assert torch.equal(out_coords, out_coords_p)  # pooled voxels are ordered by key, not by input order
    torch.testing.assert_close(out, out_p, atol=1e-5, rtol=1e-5)
    assert model.output_shape == (20, 16, 1) and int(out_coords[:, 1].max()) == 0


def test_attention_pooling_uses_zero_filled_empty_slots():
    pool = AttentionPooling(4, volume=2, nhead=1).eval()
    coords = torch.tensor([[0, 0, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0]], dtype=torch.int32)
    index = pooling_index(coords, (1, 1, 4), (1, 1, 2))
    x = torch.tensor([[1.0, -1.0, 2.0, 0.5], [0.5, -2.0, 1.0, 3.0], [-1.0, -1.0, -1.0, -1.0]])
    out = pool(x, index)
    # third voxel pools alone: its partner slot is zeros, so the query is max(x, 0)
    grouped = torch.stack([x[2], torch.zeros(4)])
    q = grouped.max(0).values
    a = pool.self_attn(q[None, None], (grouped + pool.pos_embedding)[None], grouped[None], need_weights=False)[0][0, 0]
    torch.testing.assert_close(out[1], pool.norm(a + q))


def test_bev_scatter_places_each_voxel_at_its_row_and_column():
    scatter = BEVScatter((5, 4, 2), in_channels=3)
    coords = torch.tensor([[0, 0, 1, 2], [1, 1, 3, 4], [0, 1, 0, 0]], dtype=torch.int32)
    feats = torch.arange(9, dtype=torch.float32).reshape(3, 3) + 1
    bev = scatter(feats, coords, batch_size=2)
    assert bev.shape == (2, 6, 4, 5)
    dense = torch.zeros(2, 3, 2, 4, 5)
    for (b, z, y, x), f in zip(coords.tolist(), feats):
        dense[b, :, z, y, x] = f
    torch.testing.assert_close(bev, dense.reshape(2, 6, 4, 5))
    with pytest.raises(ValueError, match="exceed the BEV grid"):
        scatter(feats[:1], torch.tensor([[0, 0, 4, 0]], dtype=torch.int32), 1)


def test_bev_backbone_returns_to_one_stride_and_crops_odd_grids():
    net = ResidualBEVBackbone(8, [1, 1, 1], [1, 2, 2], [8, 8, 16], [1, 2, 4], [4, 4, 4]).eval()
    out = net(torch.randn(1, 8, 13, 11))
    assert out.shape == (1, 12, 13, 11) and net.out_stride == 1
    with pytest.raises(ValueError, match="one stride"):
        ResidualBEVBackbone(8, [1, 1], [1, 2], [8, 8], [1, 1], [4, 4])
    assert math.isclose(ResidualBEVBackbone(8, [1, 1], [2, 2], [8, 8], [1, 2], [4, 4]).out_stride, 2.0)


def test_embedding_on_distinct_positions_equals_the_per_voxel_mlp_in_training():
    from sparse3d.models.dsvt.input_layer import _PositionEmbedding

    torch.manual_seed(0)
    a, b = _PositionEmbedding(3, 16), _PositionEmbedding(3, 16)
    b.load_state_dict(a.state_dict())
    positions = torch.randn(7, 3)
    inverse = torch.randint(0, 7, (60,))
    inverse[:7] = torch.arange(7)
    counts = torch.bincount(inverse, minlength=7)
    w = torch.randn(60, 16)
    out_a = a.forward_distinct(positions, inverse, counts).dense()
    out_b = b(positions[inverse])
    torch.testing.assert_close(out_a, out_b, atol=1e-5, rtol=1e-5)
    (out_a * w).sum().backward()
    (out_b * w).sum().backward()
    for (name, pa), pb in zip(a.named_parameters(), b.parameters()):
        torch.testing.assert_close(pa.grad, pb.grad, atol=1e-4, rtol=1e-4, msg=name)
    for (name, sa), sb in zip(a.named_buffers(), b.buffers()):
        torch.testing.assert_close(sa.float(), sb.float(), atol=1e-6, rtol=1e-5, msg=name)
    a.eval(), b.eval()
    torch.testing.assert_close(a.forward_distinct(positions, inverse, counts).dense(), b(positions[inverse]))
