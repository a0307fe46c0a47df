"""The time-conditioned restoration U-Net ``R(x_t, t) -> x0_hat``.

One class expresses both networks of the paper, chosen by ``block``:

* ``block="convnext"``: the ConvNeXt-block U-Net with linear attention used by the official code for MNIST,
  CelebA, AFHQ and all 128x128 generation (lucidrains' early ``denoising-diffusion-pytorch``): per level two ConvNeXt
  blocks (7x7 depthwise conv, time bias, channel LayerNorm, two 3x3 convs), residual pre-norm linear attention and
  one skip connection; 4x4 stride-2 convolutions down, 4x4 transposed convolutions up.  The original computed a
  full-resolution skip and never used it; here every level's skip is consumed (one more up level at full
  resolution, about 0.4 M parameters).  ``UNet(dim=64, dim_mults=(1, 2, 4, 8))`` has 57.0 M parameters at 3 channels
  (the paper's: 56.6 M).
* ``block="resnet"``: the DDPM U-Net of Ho et al. (2020) used for CIFAR-10: a 3x3 input convolution, per level
  ``num_blocks`` residual blocks (GroupNorm, SiLU, dropout, time projection) with a skip after each, self-attention at
  the chosen resolutions, ``num_blocks + 1`` up blocks per level, 3x3 stride-2 convolutions down, nearest + 3x3
  convolution up.  ``UNet(block="resnet", dim=128, dim_mults=(1, 2, 2, 2), num_blocks=2, attention_resolutions=(16,),
  dropout=0.1, image_size=32)`` has 35.7 M parameters.

The network maps images in ``[0, 1]`` to ``[-1, 1]`` on the way in and back on the way out, so its internals see
the zero-centred range both original networks were designed for.

Shape:
    ``x``: ``(B, C, H, W)`` with ``H`` and ``W`` divisible by ``2 ** (len(dim_mults) - 1)``; ``t``: ``(B,)`` levels;
    output: ``(B, out_channels, H, W)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from colddiff._config import RecordsInit

__all__ = ["UNet", "SinusoidalEmbedding"]

BlockType = Literal["convnext", "resnet"]
AttentionType = Literal["linear", "full", "none"]


class SinusoidalEmbedding(nn.Module):
    """Transformer sinusoidal embedding of (integer) levels. Shape: ``(B,)`` -> ``(B, dim)``."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        if dim < 4 or dim % 2:
            raise ValueError(f"the time embedding needs an even dim >= 4, got {dim}")
        half = dim // 2
        freqs = torch.exp(-math.log(10000) * torch.arange(half, dtype=torch.float32) / (half - 1))
        self.register_buffer("freqs", freqs, persistent=False)

    def forward(self, t: Tensor) -> Tensor:
        args = t.float()[:, None] * self.freqs[None, :]
        return torch.cat([args.sin(), args.cos()], dim=-1)


class ChannelLayerNorm(nn.Module):
    """LayerNorm over the channel axis of ``(B, C, H, W)`` (ConvNeXt's norm)."""

    def __init__(self, dim: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.g = nn.Parameter(torch.ones(1, dim, 1, 1))
        self.b = nn.Parameter(torch.zeros(1, dim, 1, 1))

    def forward(self, x: Tensor) -> Tensor:
        var, mean = torch.var_mean(x, dim=1, unbiased=False, keepdim=True)
        return (x - mean) * torch.rsqrt(var + self.eps) * self.g + self.b


def _group_norm(channels: int) -> nn.GroupNorm:
    groups = math.gcd(32, channels)
    return nn.GroupNorm(groups, channels, eps=1e-6)


class ConvNextBlock(nn.Module):
    """ConvNeXt block with an additive time bias (https://arxiv.org/abs/2201.03545)."""

    def __init__(self, dim: int, dim_out: int, time_dim: int | None, mult: int = 2, norm: bool = True,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.time = nn.Sequential(nn.GELU(), nn.Linear(time_dim, dim)) if time_dim else None
        self.depthwise = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.net = nn.Sequential(
            ChannelLayerNorm(dim) if norm else nn.Identity(),
            nn.Conv2d(dim, dim_out * mult, 3, padding=1),
            nn.GELU(),
            nn.Dropout(dropout) if dropout > 0 else nn.Identity(),
            nn.Conv2d(dim_out * mult, dim_out, 3, padding=1),
        )
        self.skip = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor | None) -> Tensor:
        h = self.depthwise(x)
        if self.time is not None:
            h = h + self.time(emb)[:, :, None, None]
        return self.net(h) + self.skip(x)


class ResBlock(nn.Module):
    """DDPM residual block: GN, SiLU, conv, + time projection, GN, SiLU, dropout, conv; 1x1 shortcut."""

    def __init__(self, dim: int, dim_out: int, time_dim: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.norm1 = _group_norm(dim)
        self.conv1 = nn.Conv2d(dim, dim_out, 3, padding=1)
        self.time = nn.Linear(time_dim, dim_out)
        self.norm2 = _group_norm(dim_out)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(dim_out, dim_out, 3, padding=1)
        self.skip = nn.Conv2d(dim, dim_out, 1) if dim != dim_out else nn.Identity()

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.time(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return h + self.skip(x)


class LinearAttention(nn.Module):
    """Linear attention (softmax over keys along positions, over queries along features), pre-normed, residual."""

    def __init__(self, dim: int, heads: int = 4, dim_head: int = 32, norm: str = "layer") -> None:
        super().__init__()
        self.heads, self.scale = heads, dim_head**-0.5
        hidden = heads * dim_head
        self.norm = ChannelLayerNorm(dim) if norm == "layer" else _group_norm(dim)
        self.to_qkv = nn.Conv2d(dim, hidden * 3, 1, bias=False)
        self.to_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.shape
        q, k, v = self.to_qkv(self.norm(x)).chunk(3, dim=1)
        q, k, v = (rearrange(a, "b (h c) x y -> b h c (x y)", h=self.heads) for a in (q, k, v))
        k = k.softmax(dim=-1)
        context = torch.einsum("bhdn,bhen->bhde", k, v)
        out = torch.einsum("bhde,bhdn->bhen", context, q * self.scale)
        out = rearrange(out, "b h c (x y) -> b (h c) x y", x=height, y=width)
        return x + self.to_out(out)


class FullAttention(nn.Module):
    """Single-head softmax self-attention over positions (DDPM's AttnBlock), pre-normed, residual."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = _group_norm(dim)
        self.q, self.k, self.v = (nn.Conv2d(dim, dim, 1) for _ in range(3))
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.shape
        h = self.norm(x)
        q, k, v = (rearrange(f(h), "b c x y -> b 1 (x y) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b 1 (x y) c -> b c x y", x=height, y=width))


class Downsample(nn.Module):
    def __init__(self, dim: int, block: str) -> None:
        super().__init__()
        self.block = block
        self.conv = nn.Conv2d(dim, dim, 4, 2, 1) if block == "convnext" else nn.Conv2d(dim, dim, 3, 2, 0)

    def forward(self, x: Tensor) -> Tensor:
        if self.block == "resnet":  # DDPM pads right/bottom only before a 3x3 stride-2 conv
            x = F.pad(x, (0, 1, 0, 1))
        return self.conv(x)


class Upsample(nn.Module):
    def __init__(self, dim: int, dim_out: int, block: str) -> None:
        super().__init__()
        self.block = block
        if block == "convnext":
            self.conv = nn.ConvTranspose2d(dim, dim_out, 4, 2, 1)
        else:
            self.conv = nn.Conv2d(dim, dim_out, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        if self.block == "resnet":
            x = F.interpolate(x, scale_factor=2.0, mode="nearest")
        return self.conv(x)


class _Level(nn.Module):
    """Blocks (each optionally followed by attention) at one resolution."""

    def __init__(self, blocks: list[nn.Module], attentions: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions)


class UNet(RecordsInit, nn.Module):
    """Time-conditioned U-Net ``forward(x_t, t) -> x0_hat`` (see the module docstring for the two layouts).

    Args:
        in_channels: image channels.
        out_channels: output channels (default ``in_channels``).
        dim: base width.
        dim_mults: width multiplier of each level (one level per entry; all but the last halve the resolution).
        num_blocks: blocks per level on the way down (``resnet``: ``num_blocks + 1`` on the way up; ``convnext``:
            ``num_blocks`` up and down).
        block: ``"convnext"`` or ``"resnet"``.
        attention: ``"linear"``, ``"full"`` (softmax) or ``"none"``; default ``linear`` for ``convnext``, ``full``
            for ``resnet``.
        attention_resolutions: resolutions (in pixels, for inputs of ``image_size``) that get attention; ``None``
            for every level (the ConvNeXt network).
        image_size: the training image size, which places ``attention_resolutions`` and is checked for
            divisibility.
        dropout: dropout probability inside blocks (the DDPM network: 0.1).
        time_dim: width of the time embedding (default ``dim`` for ``convnext``, ``4 * dim`` for ``resnet``).
        heads, dim_head: linear-attention heads.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int | None = None,
        dim: int = 64,
        dim_mults: Sequence[int] = (1, 2, 4, 8),
        num_blocks: int = 2,
        block: BlockType = "convnext",
        attention: AttentionType | None = None,
        attention_resolutions: Sequence[int] | None = None,
        image_size: int | None = None,
        dropout: float = 0.0,
        time_dim: int | None = None,
        heads: int = 4,
        dim_head: int = 32,
    ) -> None:
        super().__init__()
        if block not in ("convnext", "resnet"):
            raise ValueError(f"UNet: block must be 'convnext' or 'resnet', got {block!r}")
        attention = attention or ("linear" if block == "convnext" else "full")
        if attention not in ("linear", "full", "none"):
            raise ValueError(f"UNet: attention must be 'linear', 'full' or 'none', got {attention!r}")
        for name, value in (("in_channels", in_channels), ("dim", dim), ("num_blocks", num_blocks)):
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"UNet: {name} must be a positive int, got {value!r}")
        dim_mults = tuple(int(m) for m in dim_mults)
        if not dim_mults or min(dim_mults) <= 0:
            raise ValueError(f"UNet: dim_mults must be a non-empty sequence of positive ints, got {dim_mults}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"UNet: dropout must lie in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.block, self.attention = block, attention
        self.num_levels = len(dim_mults)
        self.divisor = 2 ** (self.num_levels - 1)
        self.image_size = image_size
        if image_size is not None:
            self.check_input_size(image_size, image_size)
        levels_with_attention = self._attention_levels(attention_resolutions, image_size)
        self.attention_levels = sorted(levels_with_attention)
        widths = [dim * m for m in dim_mults]
        time_dim = time_dim or (dim if block == "convnext" else 4 * dim)
        hidden = dim * 4
        self.time_mlp = nn.Sequential(
            SinusoidalEmbedding(dim), nn.Linear(dim, hidden),
            nn.GELU() if block == "convnext" else nn.SiLU(), nn.Linear(hidden, time_dim),
        )

        def make_block(c_in: int, c_out: int, first: bool = False) -> nn.Module:
            if block == "convnext":
                return ConvNextBlock(c_in, c_out, time_dim, norm=not first, dropout=dropout)
            return ResBlock(c_in, c_out, time_dim, dropout)

        def make_attention(c: int, level: int | None) -> nn.Module:
            """Attention for a level (``None``: the middle, which always gets it unless attention is off)."""
            if attention == "none" or (level is not None and level not in levels_with_attention):
                return nn.Identity()
            if attention == "linear":
                return LinearAttention(c, heads, dim_head, norm="layer" if block == "convnext" else "group")
            return FullAttention(c)

        # ---- down path
        self.conv_in = nn.Conv2d(in_channels, dim, 3, padding=1) if block == "resnet" else nn.Identity()
        c_prev = dim if block == "resnet" else in_channels
        self.downs, self.downsamples = nn.ModuleList(), nn.ModuleList()
        skip_channels: list[int] = [dim] if block == "resnet" else []
        for level, width in enumerate(widths):
            blocks, attns = [], []
            for i in range(num_blocks):
                blocks.append(make_block(c_prev, width, first=(level == 0 and i == 0)))
                c_prev = width
                if block == "resnet":
                    attns.append(make_attention(width, level))
                    skip_channels.append(width)
            if block == "convnext":
                attns.append(make_attention(width, level))
                skip_channels.append(width)
            self.downs.append(_Level(blocks, attns))
            last = level == self.num_levels - 1
            self.downsamples.append(nn.Identity() if last else Downsample(width, block))
            if block == "resnet" and not last:
                skip_channels.append(width)

        # ---- middle
        self.mid1 = make_block(c_prev, c_prev)
        self.mid_attn = make_attention(c_prev, None)
        self.mid2 = make_block(c_prev, c_prev)

        # ---- up path
        self.ups, self.upsamples = nn.ModuleList(), nn.ModuleList()
        for level in reversed(range(self.num_levels)):
            width = widths[level]
            blocks, attns = [], []
            if block == "resnet":
                for _ in range(num_blocks + 1):
                    blocks.append(make_block(c_prev + skip_channels.pop(), width))
                    attns.append(make_attention(width, level))
                    c_prev = width
                out = width
            else:
                out = widths[level - 1] if level > 0 else dim
                blocks.append(make_block(c_prev + skip_channels.pop(), out))
                for _ in range(num_blocks - 1):
                    blocks.append(make_block(out, out))
                attns.append(make_attention(out, level))
                c_prev = out
            self.ups.append(_Level(blocks, attns))
            self.upsamples.append(Upsample(c_prev, c_prev, block) if level > 0 else nn.Identity())

        # ---- output
        if block == "convnext":
            self.out = nn.Sequential(ConvNextBlock(c_prev, dim, None), nn.Conv2d(dim, self.out_channels, 1))
        else:
            self.out = nn.Sequential(_group_norm(c_prev), nn.SiLU(), nn.Conv2d(c_prev, self.out_channels, 3,
                                                                               padding=1))

    def _attention_levels(self, resolutions: Sequence[int] | None, image_size: int | None) -> set[int]:
        if resolutions is None:
            return set(range(self.num_levels))
        resolutions = [int(r) for r in resolutions]
        if not resolutions:
            return set()
        if image_size is None:
            raise ValueError("UNet: attention_resolutions need image_size to place them, got image_size=None")
        available = {image_size // 2**level: level for level in range(self.num_levels)}
        missing = [r for r in resolutions if r not in available]
        if missing:
            raise ValueError(
                f"UNet: attention_resolutions {missing} match no level; levels of a {image_size}px input have "
                f"resolutions {sorted(available, reverse=True)}"
            )
        return {available[r] for r in resolutions}

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless both sides are divisible by ``2 ** (levels - 1)``."""
        if height % self.divisor or width % self.divisor or min(height, width) < self.divisor:
            raise ValueError(
                f"UNet: image sides must be divisible by 2**{self.num_levels - 1} = {self.divisor} (one halving "
                f"per level after the first, dim_mults has {self.num_levels} levels), got {height}x{width}"
            )

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x0_hat = R(x_t, t)`` for images in ``[0, 1]`` and integer levels ``t`` of shape ``(B,)``."""
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"UNet: expected input (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        self.check_input_size(x.shape[-2], x.shape[-1])
        emb = self.time_mlp(t)
        h = self.conv_in(x * 2 - 1)
        skips = [h] if self.block == "resnet" else []
        for level, down in enumerate(self.downs):
            for i, blk in enumerate(down.blocks):
                h = blk(h, emb)
                if self.block == "resnet":
                    h = down.attentions[i](h)
                    skips.append(h)
            if self.block == "convnext":
                h = down.attentions[0](h)
                skips.append(h)
            if level < self.num_levels - 1:
                h = self.downsamples[level](h)
                if self.block == "resnet":
                    skips.append(h)
        h = self.mid2(self.mid_attn(self.mid1(h, emb)), emb)
        for up, upsample in zip(self.ups, self.upsamples):
            for i, blk in enumerate(up.blocks):
                if self.block == "resnet" or i == 0:
                    h = torch.cat([h, skips.pop()], dim=1)
                h = blk(h, emb)
                if self.block == "resnet":
                    h = up.attentions[i](h)
            if self.block == "convnext":
                h = up.attentions[0](h)
            h = upsample(h)
        if self.block == "convnext":
            h = self.out[0](h, None)
            h = self.out[1](h)
        else:
            h = self.out(h)
        return (h + 1) * 0.5
