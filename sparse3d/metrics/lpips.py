"""LPIPS v0.1 with the AlexNet backbone, in plain torch, from user-provided weight files only.

Why re-declared: torchmetrics' LPIPS needs torchvision, and the ``lpips`` package downloads AlexNet through
torchvision at run time; neither works offline here. The backbone below uses torchvision's module indices so a
torchvision AlexNet state dict (``features.N.weight/bias``, e.g. ``alexnet-owt-7be5be79.pth``) loads with
``strict=True`` (its ``classifier.*`` keys are ignored), and the heads use the keys of the published v0.1
``alex.pth`` (``lin{i}.model.1.weight``). Nothing is vendored or downloaded: without both files LPIPS is *not
computed*; other weights are never substituted.

Formula (Zhang et al. 2018, v0.1): images in [0, 1] are mapped to [-1, 1], shifted/scaled per channel, passed
through AlexNet ``features``; at the outputs of the ReLUs 1, 4, 7, 9, 11 the features are unit-normalised over
channels (eps 1e-10), their squared difference is weighted by a 1x1 head without bias, averaged over space and
summed over the five taps.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

BACKBONE_ENV = "SPARSE3D_LPIPS_BACKBONE"
HEADS_ENV = "SPARSE3D_LPIPS_HEADS"

TAP_INDICES = (1, 4, 7, 9, 11)
TAP_CHANNELS = (64, 192, 384, 256, 256)
SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
EPS = 1e-10
MIN_SIZE = 31
"""Smallest input side for which every tap exists (conv 11/4 then two 3/2 max-pools)."""

# Published digests, recorded so reports can say whether the files are the reference ones. The heads digest is
# the SHA-256 of the official v0.1 heads file (richzhang/PerceptualSimilarity, lpips/weights/v0.1/alex.pth);
# torchvision's file name embeds the first 8 hex digits of its SHA-256 (torch.hub convention).
REFERENCE_HEADS_SHA256 = "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0"
REFERENCE_BACKBONE_SHA256_PREFIX = "7be5be79"

_HUB_HASH = re.compile(r"-([0-9a-f]{8,64})\.[A-Za-z]+$")


class AlexNetFeatures(nn.Module):
    """torchvision's ``AlexNet.features`` layer for layer (same indices, so the same state-dict keys)."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 64, kernel_size=11, stride=4, padding=2),  # 0
            nn.ReLU(),  # 1  tap
            nn.MaxPool2d(kernel_size=3, stride=2),  # 2
            nn.Conv2d(64, 192, kernel_size=5, padding=2),  # 3
            nn.ReLU(),  # 4  tap
            nn.MaxPool2d(kernel_size=3, stride=2),  # 5
            nn.Conv2d(192, 384, kernel_size=3, padding=1),  # 6
            nn.ReLU(),  # 7  tap
            nn.Conv2d(384, 256, kernel_size=3, padding=1),  # 8
            nn.ReLU(),  # 9  tap
            nn.Conv2d(256, 256, kernel_size=3, padding=1),  # 10
            nn.ReLU(),  # 11 tap
        )

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for index, layer in enumerate(self.features):
            x = layer(x)
            if index in TAP_INDICES:
                taps.append(x)
        return taps


class _Head(nn.Module):
    """One 1x1 linear head; index 0 stands where upstream has a Dropout (a no-op in eval) to keep keys."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))


class LinearHeads(nn.Module):
    """The five heads with the v0.1 key layout ``lin{i}.model.1.weight``."""

    def __init__(self) -> None:
        super().__init__()
        for i, channels in enumerate(TAP_CHANNELS):
            self.add_module(f"lin{i}", _Head(channels))

    def head(self, i: int) -> nn.Module:
        return getattr(self, f"lin{i}").model


def _load_state_dict(path: Path, what: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise FileNotFoundError(f"LPIPS {what} weights not found: {path}")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises several types for corrupt or non-torch files
        raise ValueError(f"{path}: cannot read LPIPS {what} weights as a torch state dict ({exc})") from None
    if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
        state = state["state_dict"]
    if not isinstance(state, Mapping) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: LPIPS {what} weights must be a state dict of tensors")
    return dict(state)


def _strict_load(module: nn.Module, state: Mapping[str, torch.Tensor], path: Path, what: str) -> None:
    expected = module.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{path}: not LPIPS {what} weights: missing keys {missing}, unexpected keys {unexpected}"
        )
    wrong = [
        f"{k}: {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if state[k].shape != v.shape
    ]
    if wrong:
        raise ValueError(f"{path}: LPIPS {what} weights have wrong shapes: {wrong}")
    module.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)


def load_backbone(module: AlexNetFeatures, path: str | Path) -> None:
    """Load a torchvision AlexNet state dict; ``classifier.*`` keys are dropped, all others must match."""
    p = Path(path)
    state = _load_state_dict(p, "backbone")
    state = {k: v for k, v in state.items() if not k.startswith("classifier.")}
    _strict_load(module, state, p, "backbone (torchvision AlexNet, keys features.N.weight/bias)")


def load_heads(module: LinearHeads, path: str | Path) -> None:
    """Load the v0.1 linear heads (keys ``lin{i}.model.1.weight``, shapes (1, C, 1, 1))."""
    p = Path(path)
    _strict_load(module, _load_state_dict(p, "heads"), p, "heads (v0.1 alex.pth, keys lin{i}.model.1.weight)")


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def check_hub_hash(path: str | Path, digest: str) -> None:
    """A file named like torch.hub's ``name-<hex>.pth`` must have a SHA-256 starting with ``<hex>``."""
    match = _HUB_HASH.search(Path(path).name)
    if match and not digest.startswith(match.group(1)):
        raise ValueError(
            f"{path}: SHA-256 {digest[:16]}... does not start with {match.group(1)} from the file name "
            "(corrupt file?)"
        )


class LPIPS(nn.Module):
    """LPIPS distance (AlexNet, v0.1). Build with :meth:`from_files`; call on NCHW tensors in [0, 1]."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone = AlexNetFeatures()
        self.heads = LinearHeads()
        self.register_buffer("shift", torch.tensor(SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(SCALE).view(1, 3, 1, 1), persistent=False)
        self.eval()
        self.requires_grad_(False)

    @classmethod
    def from_files(cls, backbone: str | Path, heads: str | Path, device: str | torch.device = "cpu") -> LPIPS:
        model = cls()
        load_backbone(model.backbone, backbone)
        load_heads(model.heads, heads)
        return model.to(device)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = (x * 2.0 - 1.0 - self.shift) / self.scale
        taps = self.backbone(x)
        return [t / (torch.sqrt((t * t).sum(dim=1, keepdim=True)) + EPS) for t in taps]

    def forward(self, pred: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
        """Per-image distances (N,) for NCHW inputs in [0, 1]."""
        if pred.shape != gt.shape or pred.ndim != 4 or pred.shape[1] != 3:
            raise ValueError(
                f"LPIPS takes two NCHW RGB batches of one shape, got {tuple(pred.shape)} and "
                f"{tuple(gt.shape)}"
            )
        if min(pred.shape[-2:]) < MIN_SIZE:
            raise ValueError(
                f"LPIPS (AlexNet) needs images of at least {MIN_SIZE}x{MIN_SIZE}, got "
                f"{pred.shape[-1]}x{pred.shape[-2]}"
            )
        total = pred.new_zeros(pred.shape[0])
        for i, (a, b) in enumerate(zip(self._features(pred), self._features(gt))):
            total = total + self.heads.head(i)((a - b) ** 2).mean(dim=(1, 2, 3))
        return total

    @torch.no_grad()
    def distance(self, pred: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor) -> torch.Tensor:
        """LPIPS of HWC (-> shape ()) or NHWC (-> (N,)) images in [0, 1], as float64 on the CPU."""
        p = torch.as_tensor(pred)
        g = torch.as_tensor(gt)
        if p.shape != g.shape:
            raise ValueError(
                f"pred shape {tuple(p.shape)} differs from gt shape {tuple(g.shape)} (never resized)"
            )
        if p.ndim not in (3, 4) or p.shape[-1] != 3:
            raise ValueError(f"LPIPS takes HWC or NHWC RGB images, got shape {tuple(p.shape)}")
        single = p.ndim == 3
        device = self.shift.device
        x = (p.unsqueeze(0) if single else p).permute(0, 3, 1, 2).to(device, torch.float32)
        y = (g.unsqueeze(0) if single else g).permute(0, 3, 1, 2).to(device, torch.float32)
        values = self(x, y).to("cpu", torch.float64)
        return values[0] if single else values


@dataclass(frozen=True)
class LpipsWeights:
    """Where the two weight files are, or ``None`` for both when LPIPS is not configured."""

    backbone: Path | None
    heads: Path | None

    @property
    def available(self) -> bool:
        return self.backbone is not None and self.heads is not None


def resolve_weights(backbone: str | Path | None = None, heads: str | Path | None = None) -> LpipsWeights:
    """Explicit paths win; otherwise ``$SPARSE3D_LPIPS_BACKBONE`` / ``$SPARSE3D_LPIPS_HEADS``.

    Neither given → LPIPS is not computed. Only one given, or a given file missing → error: the user asked for
    LPIPS and a silent skip would hide a typo.
    """
    chosen = []
    for value, env in ((backbone, BACKBONE_ENV), (heads, HEADS_ENV)):
        text = str(value).strip() if value is not None else os.environ.get(env, "").strip()
        chosen.append(Path(text).expanduser() if text else None)
    back, head = chosen
    if back is None and head is None:
        return LpipsWeights(None, None)
    if back is None or head is None:
        missing = (
            "backbone (lpips.backbone / $" + BACKBONE_ENV + ")"
            if back is None
            else "heads (lpips.heads / $" + HEADS_ENV + ")"
        )
        raise FileNotFoundError(
            f"LPIPS needs both the AlexNet backbone and the v0.1 heads; the {missing} is not set"
        )
    for path, what in (
        (back, "backbone (ImageNet AlexNet, torchvision format)"),
        (head, "heads (v0.1 alex.pth)"),
    ):
        if not path.is_file():
            raise FileNotFoundError(f"LPIPS {what} weights not found: {path}")
    return LpipsWeights(back, head)


def describe_weights(weights: LpipsWeights) -> dict[str, object]:
    """SHA-256 of both files and whether they are the published ones, for the evaluation report.

    Raises ``ValueError`` when a torch.hub-style file name's hash prefix contradicts the file's content.
    """
    if not weights.available:
        return {"computed": False}
    info: dict[str, object] = {"computed": True}
    for key, path in (("backbone", weights.backbone), ("heads", weights.heads)):
        digest = sha256_file(path)
        check_hub_hash(path, digest)
        info[key] = str(path)
        info[f"{key}_sha256"] = digest
    info["backbone_is_reference"] = str(info["backbone_sha256"]).startswith(REFERENCE_BACKBONE_SHA256_PREFIX)
    info["heads_is_reference"] = info["heads_sha256"] == REFERENCE_HEADS_SHA256
    return info
