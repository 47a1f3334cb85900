"""CoherentGS's implicit convolutional decoder: per-view offset maps from a fixed code, deep-image-prior style.

CoherentGS (Paliwal et al., ECCV 2024) predicts each input view's per-pixel depth (and opacity) offsets with a
convolutional generator in the manner of X-Fields (Bemana et al., SIGGRAPH Asia 2020): the input is a fixed
code per camera, the NeRF positional encoding of ``t = linspace(0, 1, V)`` (``num_freqs`` frequencies, sin and
cos: ``2 * num_freqs`` channels at 1 x 1); a 1 x 1 convolution, two CoordConv channels, then one level per
factor of two (bilinear x2 upsampling with aligned corners, one reflected row / column where the target size is
odd, 3 x 3 convolution with replicated borders + LeakyReLU(0.2)) and a final 3 x 3 convolution to
``out_channels``. Weights are initialised N(0, 0.02) with zero biases, so the offsets start near zero. Because
the convolutions are shared by all pixels, neighbouring pixels' offsets move together (the paper's single-view
coherence).

The level count follows the smaller side: ``L = bit_length(min(H, W)) - 1``; the generator starts at
``(H >> L, W >> L)`` (the code repeated there) and level ``k`` has size ``(H >> (L - k), W >> (L - k))``, so the
output is exactly ``H x W``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["ImplicitDecoder", "positional_encoding", "DEFAULT_WIDTHS"]

DEFAULT_WIDTHS: tuple[int, ...] = (16, 16, 16, 8, 8, 8, 4)
"""Per-level width multipliers of ``ngf`` (the last one repeats for further levels)."""


def positional_encoding(t: torch.Tensor, num_freqs: int = 10) -> torch.Tensor:
    """(N, 2 * num_freqs): ``[sin(2^k pi t) for k < num_freqs] + [cos(2^k pi t) for k < num_freqs]`` of (N,) ``t``."""
    if t.dim() != 1 or num_freqs < 1:
        raise ValueError(f"t must be (N,) and num_freqs >= 1, got {tuple(t.shape)} and {num_freqs}")
    freqs = (2.0 ** torch.arange(num_freqs, dtype=t.dtype, device=t.device)) * math.pi
    arg = t[:, None] * freqs[None]
    return torch.cat([torch.sin(arg), torch.cos(arg)], dim=1)


class ImplicitDecoder(nn.Module):
    """(V, out_channels, H, W) maps, one per camera code (see the module docstring).

    Args:
        num_views: V, the number of camera codes (``t = linspace(0, 1, V)``; 0.0 alone when V = 1).
        size: output ``(H, W)``.
        ngf: base width; level ``k`` has ``ngf * widths[k]`` channels.
        out_channels: channels of the output (CoherentGS: one per depth layer).
        num_freqs: positional-encoding frequencies of the code.
        widths: width multipliers per level (the last repeats).
    """

    def __init__(self, num_views: int, size: tuple[int, int], ngf: int, out_channels: int = 5, num_freqs: int = 10,
                 widths: Sequence[int] = DEFAULT_WIDTHS) -> None:
        super().__init__()
        h, w = int(size[0]), int(size[1])
        if num_views < 1 or h < 1 or w < 1 or ngf < 1 or out_channels < 1 or not widths or min(widths) < 1:
            raise ValueError(f"ImplicitDecoder needs num_views, size, ngf, out_channels >= 1 and positive widths; got "
                             f"{num_views}, {size}, {ngf}, {out_channels}, {list(widths)}")
        self.size = (h, w)
        self.levels = min(h, w).bit_length() - 1
        self.sizes = [(h >> (self.levels - k), w >> (self.levels - k)) for k in range(self.levels + 1)]
        t = torch.linspace(0.0, 1.0, num_views) if num_views > 1 else torch.zeros(1)
        self.register_buffer("code", positional_encoding(t, num_freqs)[:, :, None, None], persistent=False)
        mult = [int(widths[min(k, len(widths) - 1)]) for k in range(self.levels + 1)]
        self.head = nn.Conv2d(2 * num_freqs, ngf * mult[0], 1)
        c_in = ngf * mult[0] + 2
        self.blocks = nn.ModuleList()
        for k in range(1, self.levels + 1):
            self.blocks.append(nn.Conv2d(c_in, ngf * mult[k], 3, padding=1, padding_mode="replicate"))
            c_in = ngf * mult[k]
        self.tail = nn.Conv2d(c_in, out_channels, 3, padding=1, padding_mode="replicate")
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    @staticmethod
    def _coords(h: int, w: int, like: torch.Tensor) -> torch.Tensor:
        ys = torch.linspace(-1.0, 1.0, h, device=like.device, dtype=like.dtype) if h > 1 else like.new_zeros(1)
        xs = torch.linspace(-1.0, 1.0, w, device=like.device, dtype=like.dtype) if w > 1 else like.new_zeros(1)
        yy, xx = torch.meshgrid(ys, xs, indexing="ij")
        return torch.stack([xx, yy])[None].expand(like.shape[0], 2, h, w)

    def forward(self) -> torch.Tensor:
        h0, w0 = self.sizes[0]
        x = self.head(self.code).expand(-1, -1, h0, w0)
        x = torch.cat([x, self._coords(h0, w0, x)], dim=1)
        for k, conv in enumerate(self.blocks, start=1):
            (sh, sw), (th, tw) = self.sizes[k - 1], self.sizes[k]
            x = F.interpolate(x, size=(2 * sh, 2 * sw), mode="bilinear", align_corners=True)
            if th > 2 * sh or tw > 2 * sw:
                x = F.pad(x, (0, tw - 2 * sw, 0, th - 2 * sh), mode="reflect")
            x = F.leaky_relu(conv(x), 0.2)
        return self.tail(x)
