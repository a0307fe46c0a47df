"""Layers shared by colddiff's U-Nets, and their common base class.

* :class:`UNetBase`: what both U-Nets share: argument checks, the size contract (sides divisible by
  ``2 ** (levels - 1)``), placing attention at given resolutions, and the mapping of ``[0, 1]`` images to the
  zero-centred ``[-1, 1]`` range both original networks were designed for (and back).
* Blocks: :class:`ConvNextBlock` (ConvNeXt with a time bias), :class:`ResBlock` (DDPM), :class:`LinearAttention`,
  :class:`FullAttention`, :class:`SinusoidalEmbedding`, :class:`ChannelLayerNorm`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from colddiff._checks import check_positive_int
from colddiff._config import RecordsInit

__all__ = [
    "UNetBase",
    "SinusoidalEmbedding",
    "ChannelLayerNorm",
    "group_norm",
    "ConvNextBlock",
    "ResBlock",
    "LinearAttention",
    "FullAttention",
    "Level",
]


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


def group_norm(channels: int) -> nn.GroupNorm:
    """GroupNorm with up to 32 groups (the largest divisor of ``channels`` not above 32), as DDPM."""
    return nn.GroupNorm(math.gcd(32, channels), channels, eps=1e-6)


class ConvNextBlock(nn.Module):
    """ConvNeXt block with an additive time bias (Liu et al., arXiv 2201.03545)."""

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
        self.norm1 = group_norm(dim)
        self.conv1 = nn.Conv2d(dim, dim_out, 3, padding=1)
        self.time = nn.Linear(time_dim, dim_out)
        self.norm2 = group_norm(dim_out)
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
        self.norm = ChannelLayerNorm(dim) if norm == "layer" else group_norm(dim)
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
        self.norm = group_norm(dim)
        self.q, self.k, self.v = (nn.Conv2d(dim, dim, 1) for _ in range(3))
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: Tensor) -> Tensor:
        _, _, height, width = x.shape
        h = self.norm(x)
        q, k, v = (rearrange(f(h), "b c x y -> b 1 (x y) c") for f in (self.q, self.k, self.v))
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b 1 (x y) c -> b c x y", x=height, y=width))


class Level(nn.Module):
    """Blocks (each optionally followed by attention) at one resolution."""

    def __init__(self, blocks: list[nn.Module], attentions: list[nn.Module]) -> None:
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions)


class UNetBase(RecordsInit, nn.Module):
    """What colddiff's U-Nets share; subclasses build their layers and implement :meth:`body`.

    It meets the network contract of :mod:`colddiff.nets` (``forward(x_t, t)`` on ``[0, 1]`` images,
    ``in_channels``/``out_channels``, ``check_input_size`` and ``size_multiple``).

    Args:
        in_channels, out_channels, dim, dim_mults, num_blocks, image_size, dropout: see the subclasses.
    """

    def __init__(self, in_channels: int, out_channels: int | None, dim: int, dim_mults: Sequence[int],
                 num_blocks: int, image_size: int | None, dropout: float) -> None:
        super().__init__()
        who = type(self).__name__
        check_positive_int(in_channels, "in_channels", who)
        check_positive_int(dim, "dim", who)
        check_positive_int(num_blocks, "num_blocks", who)
        if out_channels is not None:
            check_positive_int(out_channels, "out_channels", who)
        dim_mults = tuple(int(m) for m in dim_mults)
        if not dim_mults or min(dim_mults) <= 0:
            raise ValueError(f"{who}: dim_mults must be a non-empty sequence of positive ints, got {dim_mults}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"{who}: dropout must lie in [0, 1), got {dropout}")
        self.in_channels = in_channels
        self.out_channels = out_channels or in_channels
        self.dim_mults = dim_mults
        self.num_levels = len(dim_mults)
        #: image sides must be multiples of this (one halving per level after the first)
        self.size_multiple = 2 ** (self.num_levels - 1)
        self.image_size = image_size
        if image_size is not None:
            check_positive_int(image_size, "image_size", who)
            self.check_input_size(image_size, image_size)

    def levels_at(self, resolutions: Sequence[int] | None) -> set[int]:
        """The levels whose resolution (for inputs of ``image_size``) is in ``resolutions`` (``None``: all)."""
        if resolutions is None:
            return set(range(self.num_levels))
        resolutions = [int(r) for r in resolutions]
        if not resolutions:
            return set()
        who = type(self).__name__
        if self.image_size is None:
            raise ValueError(f"{who}: attention_resolutions need image_size to place them, got image_size=None")
        available = {self.image_size // 2**level: level for level in range(self.num_levels)}
        missing = [r for r in resolutions if r not in available]
        if missing:
            raise ValueError(
                f"{who}: attention_resolutions {missing} match no level; levels of a {self.image_size}px input "
                f"have resolutions {sorted(available, reverse=True)}"
            )
        return {available[r] for r in resolutions}

    def check_input_size(self, height: int, width: int) -> None:
        """Raise ``ValueError`` unless both sides are divisible by ``size_multiple = 2 ** (levels - 1)``."""
        m = self.size_multiple
        if height % m or width % m or min(height, width) < m:
            raise ValueError(
                f"{type(self).__name__}: image sides must be divisible by 2**{self.num_levels - 1} = {m} (one "
                f"halving per level after the first, dim_mults has {self.num_levels} levels), got {height}x{width}"
            )

    def body(self, h: Tensor, t: Tensor) -> Tensor:
        """The network on zero-centred inputs ``[-1, 1]``; returns its estimate of ``x0`` in the same units."""
        raise NotImplementedError

    def forward(self, x: Tensor, t: Tensor) -> Tensor:
        """``x0_hat = R(x_t, t)`` for images in ``[0, 1]`` and integer levels ``t`` of shape ``(B,)``.

        Shape:
            ``x``: ``(B, in_channels, H, W)``, ``H`` and ``W`` multiples of ``size_multiple``; ``t``: ``(B,)``;
            output: ``(B, out_channels, H, W)``.
        """
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"{type(self).__name__}: expected input (B, {self.in_channels}, H, W), "
                             f"got {tuple(x.shape)}")
        self.check_input_size(x.shape[-2], x.shape[-1])
        return (self.body(x * 2 - 1, t) + 1) * 0.5
