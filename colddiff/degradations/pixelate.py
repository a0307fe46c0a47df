"""Pixelation (super-resolution).

``D(x, t)`` area-downsamples the image to a per-level size ``(h_t, w_t)`` and upsamples it back with nearest
neighbours:

* ``schedule="halving"``: ``N / 2^t`` (factor 2 per step; the result is block-constant with exact ``2^t`` blocks, the
  paper's setting; image sizes must be divisible by ``2^T``).  Iterating the per-step operator gives the same
  images, because area-averaging a block-constant image averages its blocks;
* ``schedule="linear"``: ``N - t`` (one pixel per step, the original code's "Incremental" routine).  Sizes that do not
  divide the image give overlapping area windows (as ``F.interpolate(mode="area")``) and ``nearest-exact``
  upsampling.  This variant is defined directly at each level (the original composed the resamplings).

Each call is closed form for any per-sample ``t``: area averages are differences of an integral image (in float64,
exact to float32 rounding), gathered at integer window bounds, separably along each axis.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from colddiff.degradations.base import Degradation, Params, check_image

__all__ = ["Pixelate", "pixelate", "pixelate_sizes", "largest_num_steps"]

PixelSchedule = Literal["halving", "linear"]


def pixelate_sizes(size: int, num_steps: int, schedule: PixelSchedule) -> Tensor:
    """Low-resolution size at every level along one axis of length ``size``.

    Shape:
        output: ``(T + 1,)`` long, entry 0 equal to ``size``.
    """
    levels = torch.arange(num_steps + 1)
    if schedule == "halving":
        return torch.div(size, 2**levels, rounding_mode="floor")
    return size - levels


def largest_num_steps(height: int, width: int, schedule: PixelSchedule) -> int:
    """The largest ``T`` a ``height x width`` image allows: the halvings that divide both sides (``halving``), or
    one less than the shorter side (``linear``)."""
    if schedule == "halving":
        sides = int(height) | int(width)  # the lowest set bit of either side bounds the halvings
        return (sides & -sides).bit_length() - 1 if sides > 0 else 0
    return max(0, min(int(height), int(width)) - 1)


def _check_sizes(height: int, width: int, num_steps: int, schedule: PixelSchedule, who: str) -> None:
    largest = largest_num_steps(height, width, schedule)
    if num_steps <= largest:
        return
    allows = f"the largest num_steps a {height}x{width} image allows is {largest}" if largest else \
        f"a {height}x{width} image allows no pixelation step"
    if schedule == "halving":
        raise ValueError(
            f"{who}: halving pixelation with num_steps={num_steps} needs image sides divisible by "
            f"2**{num_steps} = {2**num_steps}, got {height}x{width}; {allows}"
        )
    raise ValueError(
        f"{who}: one-pixel-per-step pixelation with num_steps={num_steps} needs image sides larger than "
        f"{num_steps}, got {height}x{width}; {allows}"
    )


def _area_nearest_axis(x: Tensor, low: Tensor, dim: int) -> Tensor:
    """Area-downsample to ``low[b]`` then nearest-exact-upsample back, along spatial axis ``dim`` (-2 or -1).

    Shape:
        ``x``: ``(B, C, H, W)`` float64; ``low``: ``(B,)`` long.
    """
    n = x.shape[dim]
    pos = torch.arange(n, device=x.device)
    low = low[:, None]
    src = torch.minimum(((2 * pos + 1) * low) // (2 * n), low - 1)  # nearest-exact source index, in integers
    start = (src * n) // low  # adaptive pooling window [floor(i n / h), ceil((i + 1) n / h))
    end = -((-(src + 1) * n) // low)
    integral = torch.nn.functional.pad(torch.cumsum(x, dim=dim), (0, 0, 1, 0) if dim == -2 else (1, 0))
    batch, channels = x.shape[:2]
    if dim == -2:
        shape = (batch, channels, n, x.shape[-1])
        index_end = end[:, None, :, None].expand(shape)
        index_start = start[:, None, :, None].expand(shape)
        count = (end - start)[:, None, :, None]
    else:
        shape = (batch, channels, x.shape[-2], n)
        index_end = end[:, None, None, :].expand(shape)
        index_start = start[:, None, None, :].expand(shape)
        count = (end - start)[:, None, None, :]
    total = integral.gather(dim, index_end) - integral.gather(dim, index_start)
    return total / count


def _resample(x: Tensor, low_rows: Tensor, low_cols: Tensor) -> Tensor:
    """Per-sample area-down / nearest-up to ``(low_rows[b], low_cols[b])``, accumulated in float64."""
    accumulate = torch.float64 if x.device.type != "mps" else torch.float32  # MPS has no float64
    y = _area_nearest_axis(x.to(accumulate), low_rows, -2)
    return _area_nearest_axis(y, low_cols, -1).to(x.dtype)


def _apply_pixelate(x: Tensor, t: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
    y = _resample(x, rows.index_select(0, t), cols.index_select(0, t))
    return torch.where(t[:, None, None, None] == 0, x, y)


def pixelate(x: Tensor, size: int | tuple[int, int] | Tensor) -> Tensor:
    """Functional twin of :class:`Pixelate`: area-downsample to ``size`` and nearest-upsample back.

    Args:
        x: images.
        size: the low resolution, an int, ``(h, w)``, or one ``(h, w)`` per sample as a ``(B, 2)`` long tensor
            (``1 <= h <= H``, ``1 <= w <= W``).

    Shape:
        ``x``: ``(B, C, H, W)``; output: ``(B, C, H, W)``.

    Example:
        Each ``2 x 2`` block becomes its mean, at the input's size:

        >>> x = torch.arange(16.0).reshape(1, 1, 4, 4) / 16
        >>> y = pixelate(x, 2)
        >>> y.shape
        torch.Size([1, 1, 4, 4])
        >>> y[0, 0] * 16
        tensor([[ 2.5000,  2.5000,  4.5000,  4.5000],
                [ 2.5000,  2.5000,  4.5000,  4.5000],
                [10.5000, 10.5000, 12.5000, 12.5000],
                [10.5000, 10.5000, 12.5000, 12.5000]])
        >>> torch.equal(pixelate(x, 4), x)  # full resolution: nothing changes
        True
    """
    who = "pixelate"
    x = check_image(x, who, "x")
    batch, _, height, width = x.shape
    if isinstance(size, Tensor):
        if size.shape != (batch, 2) or size.is_floating_point():
            raise ValueError(f"{who}: a size tensor must be integer with shape ({batch}, 2), got {tuple(size.shape)}")
        sizes = size.to(device=x.device, dtype=torch.long)
    else:
        pair = (size, size) if isinstance(size, int) else tuple(size)
        if len(pair) != 2 or not all(isinstance(v, int) for v in pair):
            raise TypeError(f"{who}: size must be an int, a pair of ints or a (B, 2) tensor, got {size!r}")
        sizes = torch.tensor(pair, device=x.device).expand(batch, 2)
    if bool((sizes[:, 0] < 1).any() | (sizes[:, 0] > height).any() | (sizes[:, 1] < 1).any()
            | (sizes[:, 1] > width).any()):
        raise ValueError(f"{who}: sizes must lie in [1, {height}] x [1, {width}], got {sizes.tolist()}")
    return _resample(x, sizes[:, 0], sizes[:, 1])


class Pixelate(Degradation):
    """Pixelation ``D(x, t)``: nearest upsampling of the area-downsampled image at the level's size.

    Args:
        num_steps: ``T`` (the paper: 3 for 32 -> 4, 4 for 128 -> 8).
        schedule: ``"halving"`` (``N / 2^t``) or ``"linear"`` (``N - t``, one pixel per step).
        image_size: optional ``int`` or ``(h, w)``: validates at construction that the schedule fits that size.
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(
        self,
        num_steps: int,
        schedule: PixelSchedule = "halving",
        image_size: int | tuple[int, int] | None = None,
        channels: int | None = None,
    ) -> None:
        super().__init__(num_steps, channels)
        if schedule not in ("halving", "linear"):
            raise ValueError(f"Pixelate: schedule must be 'halving' or 'linear', got {schedule!r}")
        self.schedule = schedule
        if image_size is not None:
            size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
            self.check_image_size(*size)

    def check_image_size(self, height: int, width: int) -> None:
        _check_sizes(height, width, self.num_steps, self.schedule, type(self).__name__)

    def level_sizes(self, height: int, width: int) -> tuple[Tensor, Tensor]:
        """Low-resolution heights and widths per level, ``(T + 1,)`` each."""
        return (pixelate_sizes(height, self.num_steps, self.schedule),
                pixelate_sizes(width, self.num_steps, self.schedule))

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        height, width = x0.shape[-2:]
        self.check_image_size(height, width)  # samplers call degrade directly: no bare division by zero here
        rows, cols = self._cached(
            ("sizes", height, width, str(x0.device)),
            lambda: tuple(s.to(x0.device) for s in self.level_sizes(height, width)),
        )
        return _apply_pixelate(x0, t, rows, cols)

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, schedule={self.schedule!r}"
