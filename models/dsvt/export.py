"""ONNX export of the DSVT transformer blocks, checked with ONNX Runtime.

As the official deployment tool of DSVT (Wang et al., CVPR 2023; ``tools/deploy.py`` of Haiyang-W/DSVT), only
the blocks of a single-stage (DSVT-P) backbone are exported: the blocks are unrolled (block ``k`` uses the sets
of shift ``k % 2``), set outputs go back to their voxels by plain index assignment, and the graph takes the
partition and the position embeddings as inputs. The VFE, the input layer (set partition and the position-
embedding MLPs), the BEV backbone and the head stay in PyTorch.

Graph inputs (``N`` voxels, ``S_i`` sets of shift ``i``, set size ``τ``, width ``C``; ``N`` and ``S_i`` are
dynamic axes, so one file serves every frame):

- ``src`` float32 (N, C): voxel features;
- ``set_voxel_inds_tensor_shift_{0,1}`` int64 (2, S_i, τ): voxel of each slot, per ordering (sorted by y, by x);
- ``set_voxel_masks_tensor_shift_{0,1}`` bool (2, S_i, τ): True where a slot repeats its left neighbour;
- ``pos_embed_tensor`` float32 (blocks, 2, N, C): the embedding fed to encoder ``i`` of block ``b``.

Output ``output`` float32 (N, C), equal to the features :class:`~sparse3d.models.dsvt.backbone.DSVT` returns.

The ``deploy`` extra (``pip install sparse3d[deploy]``) provides onnx and onnxruntime; they are imported only
when an export or a run is asked for.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import warnings
from collections.abc import Iterator, Mapping
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import torch
from torch import nn

from sparse3d.models.dsvt.backbone import DSVT

__all__ = ["INPUT_NAMES", "OUTPUT_NAME", "DSVTBlocks", "dsvt_blocks_inputs", "export_dsvt_blocks_onnx", "run_onnx"]

INPUT_NAMES = (
    "src",
    "set_voxel_inds_tensor_shift_0",
    "set_voxel_inds_tensor_shift_1",
    "set_voxel_masks_tensor_shift_0",
    "set_voxel_masks_tensor_shift_1",
    "pos_embed_tensor",
)
OUTPUT_NAME = "output"

_DYNAMIC_AXES: dict[str, dict[int, str]] = {
    "src": {0: "N"},
    "set_voxel_inds_tensor_shift_0": {1: "S_0"},
    "set_voxel_inds_tensor_shift_1": {1: "S_1"},
    "set_voxel_masks_tensor_shift_0": {1: "S_0"},
    "set_voxel_masks_tensor_shift_1": {1: "S_1"},
    "pos_embed_tensor": {2: "N"},
    OUTPUT_NAME: {0: "N"},
}


def _require(name: str) -> ModuleType:
    """Import ``name`` from the deploy extra, or say how to install it."""
    try:
        return importlib.import_module(name)
    except ImportError as err:
        raise ImportError(
            f"ONNX export and inference need the '{name}' package of the deploy extra: "
            f"pip install sparse3d[deploy]"
        ) from err


def _check_single_stage(backbone: Any) -> DSVT:
    if not isinstance(backbone, DSVT):
        raise ValueError(f"backbone must be a sparse3d DSVT module, got {type(backbone).__name__}")
    if backbone.num_stages != 1:
        raise ValueError(
            f"only single-stage DSVT backbones (DSVT-P) can be exported to ONNX, as with the official deploy "
            f"tool; this backbone has {backbone.num_stages} stages with attention pooling between them (DSVT-V)"
        )
    return backbone


@contextlib.contextmanager
def _eval_mode(module: nn.Module) -> Iterator[None]:
    """Run with every submodule in eval mode (no dropout, BatchNorm running statistics), then restore."""
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


class DSVTBlocks(nn.Module):
    """The blocks of a single-stage :class:`DSVT` as a module over plain tensors (the exported graph).

    Holds the backbone's own block and residual-norm modules (shared weights, not copies). ``forward`` takes the
    tensors named in :data:`INPUT_NAMES`, in that order, and returns the (N, C) voxel features.
    """

    def __init__(self, backbone: DSVT) -> None:
        super().__init__()
        backbone = _check_single_stage(backbone)
        self.blocks = backbone.stage_0
        self.norms = backbone.residual_norm_stage_0

    def forward(self, src: torch.Tensor, set_voxel_inds_tensor_shift_0: torch.Tensor,
                set_voxel_inds_tensor_shift_1: torch.Tensor, set_voxel_masks_tensor_shift_0: torch.Tensor,
                set_voxel_masks_tensor_shift_1: torch.Tensor, pos_embed_tensor: torch.Tensor) -> torch.Tensor:
        inds = (set_voxel_inds_tensor_shift_0, set_voxel_inds_tensor_shift_1)
        masks = (set_voxel_masks_tensor_shift_0, set_voxel_masks_tensor_shift_1)
        x = src
        for b, (block, norm) in enumerate(zip(self.blocks, self.norms)):
            shift = b % 2
            y = x
            for i, encoder in enumerate(block.encoder_list):
                y = encoder(y, pos_embed_tensor[b, i], inds[shift][i], masks[shift][i])
            x = norm(y + x)
        return x


def dsvt_blocks_inputs(backbone: DSVT, features: torch.Tensor, coords: torch.Tensor) -> dict[str, torch.Tensor]:
    """The graph inputs for voxels ``features`` (N, C) at ``coords`` (N, 4) int32, built by the input layer.

    The input layer runs in eval mode (position-embedding BatchNorm with its running statistics), as at
    inference; the backbone's train/eval state is left as it was.
    """
    backbone = _check_single_stage(backbone)
    if not isinstance(features, torch.Tensor) or features.dim() != 2 or features.shape[1] != backbone.out_channels:
        shape = tuple(features.shape) if isinstance(features, torch.Tensor) else type(features).__name__
        raise ValueError(f"features must be a (N, {backbone.out_channels}) tensor, got {shape}")
    if features.shape[0] == 0:
        raise ValueError("features must hold at least one voxel")
    if coords.shape[0] != features.shape[0]:
        raise ValueError(f"coords has {coords.shape[0]} rows but features has {features.shape[0]}")
    with _eval_mode(backbone), torch.no_grad():
        stage = backbone.input_layer(coords)[0]
    part0, part1 = stage.partitions
    pos = torch.stack([torch.stack([embed.dense() for embed in pair]) for pair in stage.pos_embeds])
    tensors = (features.detach().to(torch.float32), part0.set_voxel_inds.to(torch.int64),
               part1.set_voxel_inds.to(torch.int64), part0.set_voxel_mask.to(torch.bool),
               part1.set_voxel_mask.to(torch.bool), pos)
    return {name: t.contiguous() for name, t in zip(INPUT_NAMES, tensors)}


def export_dsvt_blocks_onnx(backbone: DSVT, features: torch.Tensor, coords: torch.Tensor,
                            path: str | os.PathLike[str], opset: int = 14) -> Path:
    """Export the blocks of a single-stage ``backbone`` to ONNX at ``path``; return the path.

    ``features`` / ``coords`` are one example frame (any voxel count: ``N`` and ``S_i`` are dynamic axes). The
    graph is traced in eval mode and validated with ``onnx.checker``; a failed export leaves no file behind.
    Raises ValueError for a multi-stage (DSVT-V) backbone and ImportError when the deploy extra is missing.
    """
    onnx = _require("onnx")
    backbone = _check_single_stage(backbone)
    inputs = dsvt_blocks_inputs(backbone, features, coords)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = DSVTBlocks(backbone)
    try:
        with _eval_mode(backbone), torch.no_grad(), warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx.*")
            warnings.filterwarnings("ignore", message=".*legacy TorchScript-based ONNX export.*")
            warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
            torch.onnx.export(
                wrapper, tuple(inputs.values()), str(out), dynamo=False, opset_version=int(opset),
                input_names=list(INPUT_NAMES), output_names=[OUTPUT_NAME], dynamic_axes=_DYNAMIC_AXES,
                do_constant_folding=True, training=torch.onnx.TrainingMode.EVAL,
            )
        onnx.checker.check_model(str(out))
    except BaseException:
        out.unlink(missing_ok=True)
        raise
    return out


def run_onnx(path: str | os.PathLike[str], inputs: Mapping[str, torch.Tensor | np.ndarray]) -> np.ndarray:
    """Run an exported block graph with ONNX Runtime on the CPU; ``inputs`` maps :data:`INPUT_NAMES` to arrays.

    Returns the (N, C) float32 output. Extra keys in ``inputs`` are an error, so a misspelt name is not
    silently ignored.
    """
    ort = _require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = [i.name for i in session.get_inputs()]
    missing = [n for n in expected if n not in inputs]
    extra = [n for n in inputs if n not in expected]
    if missing or extra:
        raise ValueError(f"inputs must be exactly {expected}; missing {missing}, unexpected {extra}")
    feed = {n: (v.detach().cpu().numpy() if isinstance(v, torch.Tensor) else np.asarray(v)) for n, v in inputs.items()}
    return session.run(None, feed)[0]
