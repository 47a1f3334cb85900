"""ONNX export of the DSVT blocks: ONNX Runtime against the PyTorch backbone's own forward, at two voxel counts
with one exported file (dynamic axes), an inference-only graph, and the errors a user can meet."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from sparse3d.models.dsvt.backbone import DSVT
from sparse3d.models.dsvt.export import (
    INPUT_NAMES,
    DSVTBlocks,
    dsvt_blocks_inputs,
    export_dsvt_blocks_onnx,
    run_onnx,
)

onnx = pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

GRID = (40, 36, 1)
C = 32


def _backbone(dropout: float = 0.2) -> DSVT:
    """A small DSVT-P (4 blocks, shifts 0, 1, 0, 1) with non-trivial norms and BatchNorm statistics, in train
    mode with dropout, so an export that forgot eval mode would differ from the eval-mode reference."""
    torch.manual_seed(0)
    model = DSVT(GRID, [[12, 4]], [[6, 6, 1]], [[3, 3, 0]], [C], [4], [64], dropout=dropout)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.3, 0.3)
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2.0)
    return model.train()


def _frame(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    cells = torch.randperm(GRID[0] * GRID[1], generator=g)[:n]
    zeros = torch.zeros_like(cells)
    coords = torch.stack([zeros, zeros, cells // GRID[0], cells % GRID[0]], 1).to(torch.int32)
    return torch.randn(n, C, generator=g), coords


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> tuple[DSVT, Path]:
    backbone = _backbone()
    features, coords = _frame(300, seed=1)
    path = export_dsvt_blocks_onnx(backbone, features, coords, tmp_path_factory.mktemp("onnx") / "blocks.onnx")
    assert backbone.training and all(m.training for m in backbone.modules())  # train/eval state restored
    return backbone, path


def test_onnx_runtime_matches_pytorch_at_two_voxel_counts_with_one_file(exported):
    backbone, path = exported
    shapes = []
    for n, seed in ((300, 1), (710, 2)):
        features, coords = _frame(n, seed)
        inputs = dsvt_blocks_inputs(backbone, features, coords)
        shapes.append((inputs["src"].shape[0], inputs["set_voxel_inds_tensor_shift_0"].shape[1],
                       inputs["set_voxel_inds_tensor_shift_1"].shape[1]))
        got = torch.from_numpy(run_onnx(path, inputs))
        backbone.eval()
        with torch.no_grad():
            expected, _ = backbone(features, coords)  # the backbone's own path: input layer + blocks
            wrapped = DSVTBlocks(backbone)(*inputs.values())
        backbone.train()
        assert got.shape == expected.shape == (n, C)
        assert float((got - expected).abs().max()) <= 1e-4
        torch.testing.assert_close(wrapped, expected, atol=1e-6, rtol=1e-6)
    # the second frame differs in N and in both set counts, so the file's axes really are dynamic
    assert all(a != b for a, b in zip(*shapes))


def test_exported_graph_is_inference_only_with_named_dynamic_inputs(exported):
    _, path = exported
    model = onnx.load(str(path))
    ops = {node.op_type for node in model.graph.node}
    assert not ops & {"Dropout", "BatchNormalization", "RandomUniform", "RandomUniformLike", "RandomNormal",
                      "RandomNormalLike", "Bernoulli"}, ops
    assert not any(attr.name == "training_mode" for node in model.graph.node for attr in node.attribute)
    assert "ScatterND" in ops  # scatter-back by index assignment
    assert model.opset_import[0].version == 14
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim] for i in model.graph.input}
    assert list(dims) == list(INPUT_NAMES)
    assert dims["src"] == ["N", C]
    assert dims["set_voxel_inds_tensor_shift_0"] == [2, "S_0", 12]
    assert dims["set_voxel_masks_tensor_shift_1"] == [2, "S_1", 12]
    assert dims["pos_embed_tensor"] == [4, 2, "N", C]


def test_run_onnx_rejects_a_misspelt_input(exported):
    backbone, path = exported
    inputs = dsvt_blocks_inputs(backbone, *_frame(50, seed=3))
    inputs["pos_embed"] = inputs.pop("pos_embed_tensor")
    with pytest.raises(ValueError, match="missing \\['pos_embed_tensor'\\], unexpected \\['pos_embed'\\]"):
        run_onnx(path, inputs)


def test_multi_stage_backbone_is_refused(tmp_path):
    model = DSVT((20, 16, 8), [[8, 1], [8, 1]], [[5, 5, 8], [5, 5, 1]], [[2, 2, 0], [2, 2, 0]], [16, 16], [4, 4],
                 [32, 32], pooling_strides=[[1, 1, 8]])
    coords = torch.tensor([[0, 1, 2, 3], [0, 4, 5, 6]], dtype=torch.int32)
    with pytest.raises(ValueError, match="only single-stage DSVT backbones .* 2 stages"):
        export_dsvt_blocks_onnx(model, torch.randn(2, 16), coords, tmp_path / "v.onnx")
    with pytest.raises(ValueError, match="only single-stage"):
        DSVTBlocks(model)
    assert not (tmp_path / "v.onnx").exists()


def test_missing_deploy_extra_says_how_to_install(tmp_path, monkeypatch):
    backbone = _backbone(dropout=0.0)
    features, coords = _frame(20, seed=4)
    inputs = {k: v.numpy() for k, v in dsvt_blocks_inputs(backbone, features, coords).items()}
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ImportError, match=r"'onnx' .*pip install sparse3d\[deploy\]"):
        export_dsvt_blocks_onnx(backbone, features, coords, tmp_path / "b.onnx")
    assert not (tmp_path / "b.onnx").exists()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(ImportError, match=r"'onnxruntime' .*pip install sparse3d\[deploy\]"):
        run_onnx(tmp_path / "b.onnx", inputs)
