"""The DDPM U-Net of Ho et al. (arXiv 2006.11239), which the Cold Diffusion paper used for CIFAR-10.

A 3x3 input convolution; per level ``num_blocks`` residual blocks (GroupNorm, SiLU, dropout, time projection) with
a skip after each, self-attention at the chosen resolutions, ``num_blocks + 1`` up blocks per level; 3x3 stride-2
convolutions down (padded right/bottom), nearest upsampling + 3x3 convolution up.  The defaults are the paper's
CIFAR-10 network: ``DDPMUNet()`` (dim 128, multipliers (1, 2, 2, 2), attention at 16x16, dropout 0.1, 32x32
inputs) has 35.7 M parameters.

Shape:
    ``x``: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``2 ** (len(dim_mults) - 1)``; ``t``: ``(B,)`` levels;
    output: ``(B, out_channels, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from colddiff.nets.layers import (
    FullAttention,
    Level,
    LinearAttention,
    ResBlock,
    SinusoidalEmbedding,
    UNetBase,
    group_norm,
)

__all__ = ["DDPMUNet"]

AttentionType = Literal["linear", "full", "none"]


class DDPMUNet(UNetBase):
    """Time-conditioned DDPM U-Net ``forward(x_t, t) -> x0_hat`` (see the module docstring).

    Args:
        in_channels: image channels.
        out_channels: output channels (default ``in_channels``).
        dim: base width.
        dim_mults: width multiplier of each level (one level per entry; all but the last halve the resolution).
        num_blocks: residual blocks per level on the way down (``num_blocks + 1`` on the way up).
        attention: ``"full"`` (softmax, the paper's), ``"linear"`` or ``"none"``.
        attention_resolutions: resolutions (in pixels, for inputs of ``image_size``) that get attention; ``None``
            for every level.
        image_size: the training image size, which places ``attention_resolutions`` and is checked for
            divisibility.
        dropout: dropout probability inside blocks.
        time_dim: width of the time embedding (default ``4 * dim``).
        heads, dim_head: heads of linear attention (when chosen).
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        dim: int = 128,
        dim_mults: Sequence[int] = (1, 2, 2, 2),
        num_blocks: int = 2,
        attention: AttentionType = "full",
        attention_resolutions: Sequence[int] | None = (16,),
        image_size: int | None = 32,
        dropout: float = 0.1,
        time_dim: int | None = None,
        heads: int = 4,
        dim_head: int = 32,
    ) -> None:
        super().__init__(in_channels, out_channels, dim, dim_mults, num_blocks, image_size, dropout)
        if attention not in ("linear", "full", "none"):
            raise ValueError(f"DDPMUNet: attention must be 'linear', 'full' or 'none', got {attention!r}")
        self.attention = attention
        with_attention = self.levels_at(attention_resolutions)
        self.attention_levels = sorted(with_attention)
        widths = [dim * m for m in self.dim_mults]
        time_dim = time_dim or 4 * dim
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim * 4), nn.SiLU(),
                                      nn.Linear(dim * 4, time_dim))

        def make_attention(c: int, level: int | None) -> nn.Module:
            """Attention for a level (``None``: the middle, which always gets it unless attention is off)."""
            if attention == "none" or (level is not None and level not in with_attention):
                return nn.Identity()
            return LinearAttention(c, heads, dim_head, norm="group") if attention == "linear" else FullAttention(c)

        # ---- down path: a skip after the input convolution, after every block and after every downsampling
        self.conv_in = nn.Conv2d(in_channels, dim, 3, padding=1)
        c_prev = dim
        self.downs, self.downsamples = nn.ModuleList(), nn.ModuleList()
        skip_channels: list[int] = [dim]
        for level, width in enumerate(widths):
            blocks, attns = [], []
            for _ in range(num_blocks):
                blocks.append(ResBlock(c_prev, width, time_dim, dropout))
                attns.append(make_attention(width, level))
                skip_channels.append(width)
                c_prev = width
            self.downs.append(Level(blocks, attns))
            last = level == self.num_levels - 1
            self.downsamples.append(nn.Identity() if last else _Down(width))
            if not last:
                skip_channels.append(width)

        # ---- middle
        self.mid1 = ResBlock(c_prev, c_prev, time_dim, dropout)
        self.mid_attn = make_attention(c_prev, None)
        self.mid2 = ResBlock(c_prev, c_prev, time_dim, dropout)

        # ---- up path: num_blocks + 1 blocks per level, each consuming one skip
        self.ups, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            width = widths[level]
            blocks, attns = [], []
            for _ in range(num_blocks + 1):
                blocks.append(ResBlock(c_prev + skip_channels.pop(), width, time_dim, dropout))
                attns.append(make_attention(width, level))
                c_prev = width
            self.ups.append(Level(blocks, attns))
            self.upsamples.append(_Up(c_prev) if level > 0 else nn.Identity())

        self.out = nn.Sequential(group_norm(c_prev), nn.SiLU(), nn.Conv2d(c_prev, self.out_channels, 3, padding=1))

    def body(self, h: Tensor, t: Tensor) -> Tensor:
        emb = self.time_mlp(t)
        h = self.conv_in(h)
        skips = [h]
        for level, down in enumerate(self.downs):
            for block, attention in zip(down.blocks, down.attentions):
                h = attention(block(h, emb))
                skips.append(h)
            if level < self.num_levels - 1:
                h = self.downsamples[level](h)
                skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for up, upsample in zip(self.ups, self.upsamples):
            for block, attention in zip(up.blocks, up.attentions):
                h = attention(block(torch.cat([h, skips.pop()], dim=1), emb))
            h = upsample(h)
        return self.out(h)


class _Down(nn.Module):
    """3x3 stride-2 convolution after padding right and bottom by one (halves the resolution), as DDPM."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class _Up(nn.Module):
    """Nearest-neighbour upsampling by 2, then a 3x3 convolution."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))
