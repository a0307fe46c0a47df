"""The ConvNeXt U-Net of the official Cold Diffusion code (MNIST, CelebA, AFHQ and all 128x128 generation).

It follows lucidrains' early ``denoising-diffusion-pytorch``: per level two ConvNeXt blocks (7x7 depthwise conv, time
bias, channel LayerNorm, two 3x3 convs), residual pre-norm linear attention and one skip connection; 4x4 stride-2
convolutions down, 4x4 transposed convolutions up.  The original computed a full-resolution skip and never used it;
here every level's skip is consumed (one more up level at full resolution, about 0.4 M parameters).
``ConvNeXtUNet(dim=64, dim_mults=(1, 2, 4, 8))`` has 57.0 M parameters at 3 channels (the paper's: 56.6 M).

Shape:
    ``x``: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``2 ** (len(dim_mults) - 1)``; ``t``: ``(B,)`` levels;
    output: ``(B, out_channels, H, W)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor, nn

from colddiff.nets.layers import (
    ConvNextBlock,
    FullAttention,
    Level,
    LinearAttention,
    SinusoidalEmbedding,
    UNetBase,
)

__all__ = ["ConvNeXtUNet"]

AttentionType = Literal["linear", "full", "none"]


class ConvNeXtUNet(UNetBase):
    """Time-conditioned ConvNeXt U-Net ``forward(x_t, t) -> x0_hat`` (see the module docstring).

    Args:
        in_channels: image channels.
        out_channels: output channels (default ``in_channels``).
        dim: base width.
        dim_mults: width multiplier of each level (one level per entry; all but the last halve the resolution).
        num_blocks: ConvNeXt blocks per level, down and up.
        attention: ``"linear"`` (the paper's), ``"full"`` (softmax) or ``"none"``.
        attention_resolutions: resolutions (in pixels, for inputs of ``image_size``) that get attention; ``None``
            for every level (the paper's).
        image_size: the training image size, which places ``attention_resolutions`` and is checked for
            divisibility.
        dropout: dropout probability inside blocks.
        time_dim: width of the time embedding (default ``dim``).
        heads, dim_head: linear-attention heads.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        num_blocks: int = 2,
        attention: AttentionType = "linear",
        attention_resolutions: Sequence[int] | None = None,
        image_size: int | None = None,
        dropout: float = 0.0,
        time_dim: int | None = None,
        heads: int = 4,
        dim_head: int = 32,
    ) -> None:
        super().__init__(in_channels, out_channels, dim, dim_mults, num_blocks, image_size, dropout)
        if attention not in ("linear", "full", "none"):
            raise ValueError(f"ConvNeXtUNet: attention must be 'linear', 'full' or 'none', got {attention!r}")
        self.attention = attention
        with_attention = self.levels_at(attention_resolutions)
        self.attention_levels = sorted(with_attention)
        widths = [dim * m for m in self.dim_mults]
        time_dim = time_dim or dim
        self.time_mlp = nn.Sequential(SinusoidalEmbedding(dim), nn.Linear(dim, dim * 4), nn.GELU(),
                                      nn.Linear(dim * 4, time_dim))

        def make_attention(c: int, level: int | None) -> nn.Module:
            """Attention for a level (``None``: the middle, which always gets it unless attention is off)."""
            if attention == "none" or (level is not None and level not in with_attention):
                return nn.Identity()
            return LinearAttention(c, heads, dim_head, norm="layer") if attention == "linear" else FullAttention(c)

        # ---- down path: blocks, attention, one skip per level, then a 4x4 stride-2 convolution
        c_prev = in_channels
        self.downs, self.downsamples = nn.ModuleList(), nn.ModuleList()
        skip_channels: list[int] = []
        for level, width in enumerate(widths):
            blocks = []
            for i in range(num_blocks):
                blocks.append(ConvNextBlock(c_prev, width, time_dim, norm=not (level == 0 and i == 0),
                                            dropout=dropout))
                c_prev = width
            self.downs.append(Level(blocks, [make_attention(width, level)]))
            skip_channels.append(width)
            last = level == self.num_levels - 1
            self.downsamples.append(nn.Identity() if last else _Down(width))

        # ---- middle
        self.mid1 = ConvNextBlock(c_prev, c_prev, time_dim, dropout=dropout)
        self.mid_attn = make_attention(c_prev, None)
        self.mid2 = ConvNextBlock(c_prev, c_prev, time_dim, dropout=dropout)

        # ---- up path: concatenate the level's skip, blocks, attention, then a 4x4 transposed convolution
        self.ups, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            out = widths[level - 1] if level > 0 else dim
            blocks = [ConvNextBlock(c_prev + skip_channels.pop(), out, time_dim, dropout=dropout)]
            blocks += [ConvNextBlock(out, out, time_dim, dropout=dropout) for _ in range(num_blocks - 1)]
            self.ups.append(Level(blocks, [make_attention(out, level)]))
            c_prev = out
            self.upsamples.append(_Up(c_prev) if level > 0 else nn.Identity())

        self.out = nn.Sequential(ConvNextBlock(c_prev, dim, None), nn.Conv2d(dim, self.out_channels, 1))

    def body(self, h: Tensor, t: Tensor) -> Tensor:
        emb = self.time_mlp(t)
        skips = []
        for level, down in enumerate(self.downs):
            for block in down.blocks:
                h = block(h, emb)
            h = down.attentions[0](h)
            skips.append(h)
            h = self.downsamples[level](h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for up, upsample in zip(self.ups, self.upsamples):
            h = torch.cat([h, skips.pop()], dim=1)
            for block in up.blocks:
                h = block(h, emb)
            h = upsample(up.attentions[0](h))
        return self.out[1](self.out[0](h, None))


class _Down(nn.Module):
    """4x4 stride-2 convolution (halves the resolution)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(dim, dim, 4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)


class _Up(nn.Module):
    """4x4 stride-2 transposed convolution (doubles the resolution)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.conv = nn.ConvTranspose2d(dim, dim, 4, 2, 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(x)
