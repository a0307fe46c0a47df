"""Restoring images of any size: padding to the network's multiple, and overlapping tiles blended without seams.

Both are wrappers around a restoration callable ``restore(x_t, t) -> x0_hat`` (the signature of
:mod:`colddiff.sampling`), so every sampler step and every level an estimator tries sees the same padding and the
same tiling::

    from colddiff.tiling import any_size
    restore = any_size(model.restore, multiple=model.network.divisor, tile=64, overlap=16)
    x0_hat = sample_improved(restore, model.degradation, x_t, t)

* :class:`PaddedRestore`: a fully convolutional network (the U-Net) works at any size whose sides are multiples of
  ``2 ** (levels - 1)``; other sizes are padded (reflect padding by default) to the next multiple, restored, and
  cropped back to the input's size.
* :class:`TiledRestore`: an image larger than ``tile`` is cut into overlapping tiles (at most ``tile`` pixels a
  side, neighbours sharing at least ``overlap`` pixels), every tile is restored (in batches), and the results are
  blended with a smooth weight window, normalised by the sum of the weights: a partition of unity, so a restorer that
  returns a constant gives that constant and the identity gives the input back (up to rounding).  The window rises
  as ``sin^2`` over the ``overlap`` pixels at a tile's inner sides and is flat elsewhere (also at the image border).

No Lightning; torch only.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor

from colddiff._checks import as_pair

__all__ = ["PadMode", "pad_to_multiple", "crop", "PaddedRestore", "TiledRestore", "tile_starts", "tile_window",
           "any_size"]

Restore = Callable[[Tensor, Tensor], Tensor]
PadMode = Literal["reflect", "replicate", "circular", "constant"]
_PAD_MODES = ("reflect", "replicate", "circular", "constant")


def _check_image(x: Any, who: str) -> Tensor:
    if not isinstance(x, Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{x.dtype} tensor of shape {tuple(x.shape)}" if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(f"{who}: x_t must be a floating (B, C, H, W) tensor, got {got}")
    return x


def _check_restore(restore: Any, who: str) -> Restore:
    if not callable(restore):
        raise TypeError(f"{who}: restore must be a callable restore(x_t, t) -> x0_hat, got {type(restore).__name__}")
    return restore


def _positive_pair(value: Any, name: str, who: str) -> tuple[int, int]:
    pair = as_pair(value, f"{who}: {name}")
    if min(pair) <= 0:
        raise ValueError(f"{who}: {name} must be positive, got {value!r}")
    return pair


def _source_index(size: int, before: int, after: int, mode: str, device: torch.device) -> Tensor:
    """For each position of the padded axis, the position of the input it copies."""
    i = torch.arange(-before, size + after, device=device)
    if mode == "circular":
        return i % size
    if mode == "replicate":
        return i.clamp(0, size - 1)
    period = 2 * (size - 1)  # reflect: the even periodic extension, edge pixels not repeated
    if period == 0:
        return torch.zeros_like(i)
    j = i % period
    return torch.where(j < size, j, period - j)


def pad_to_multiple(x: Tensor, multiple: int | tuple[int, int], mode: PadMode = "reflect",
                    value: float = 0.0) -> tuple[Tensor, tuple[int, int, int, int]]:
    """Pad the spatial sides of ``x`` up to the next multiple of ``multiple`` (split evenly, the extra pixel after).

    Args:
        x: images.
        multiple: an int or ``(height, width)`` multiples.
        mode: ``"reflect"`` (mirror without repeating the edge pixel, continued periodically when the pad is larger
            than the image), ``"replicate"``, ``"circular"`` (periodic) or ``"constant"`` (``value``).
        value: the fill value of ``"constant"``.

    Returns:
        The padded images (``x`` itself when no padding is needed) and the padding ``(top, bottom, left, right)``
        for :func:`crop`.

    Shape:
        ``x``: ``(B, C, H, W)``; output: ``(B, C, H', W')`` with ``H'``, ``W'`` the next multiples.
    """
    who = "pad_to_multiple"
    x = _check_image(x, who)
    mh, mw = _positive_pair(multiple, "multiple", who)
    if mode not in _PAD_MODES:
        raise ValueError(f"{who}: mode must be one of {_PAD_MODES}, got {mode!r}")
    height, width = x.shape[-2:]
    extra_h, extra_w = -height % mh, -width % mw
    top, left = extra_h // 2, extra_w // 2
    padding = (top, extra_h - top, left, extra_w - left)
    if not extra_h and not extra_w:
        return x, padding
    if mode == "constant":
        return F.pad(x, (padding[2], padding[3], padding[0], padding[1]), mode="constant", value=value), padding
    rows = _source_index(height, padding[0], padding[1], mode, x.device)
    cols = _source_index(width, padding[2], padding[3], mode, x.device)
    return x.index_select(-2, rows).index_select(-1, cols), padding


def crop(x: Tensor, padding: tuple[int, int, int, int]) -> Tensor:
    """Undo :func:`pad_to_multiple`: remove ``(top, bottom, left, right)`` pixels.

    Shape:
        ``x``: ``(B, C, H', W')``; output: ``(B, C, H' - top - bottom, W' - left - right)``.
    """
    top, bottom, left, right = padding
    return x[..., top: x.shape[-2] - bottom, left: x.shape[-1] - right]


class PaddedRestore:
    """``restore`` at any image size: pad to a multiple of ``multiple``, restore, crop back.

    Args:
        restore: ``restore(x_t, t) -> x0_hat`` of a fully convolutional network (e.g. ``model.restore``).
        multiple: what the network needs the sides to be multiples of, an int or ``(height, width)``; for the U-Net,
            ``2 ** (len(dim_mults) - 1)`` (``UNet.divisor``).
        mode: padding mode (see :func:`pad_to_multiple`); reflect continues the image without an edge.

    Shape:
        ``x_t``: ``(B, C, H, W)``, any ``H``, ``W``; ``t``: ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(self, restore: Restore, multiple: int | tuple[int, int], mode: PadMode = "reflect") -> None:
        who = type(self).__name__
        self.restore = _check_restore(restore, who)
        self.multiple = _positive_pair(multiple, "multiple", who)
        if mode not in _PAD_MODES:
            raise ValueError(f"{who}: mode must be one of {_PAD_MODES}, got {mode!r}")
        self.mode = mode

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        padded, padding = pad_to_multiple(x_t, self.multiple, self.mode)
        if padded is x_t:
            return self.restore(x_t, t)
        return crop(self.restore(padded, t), padding)

    def __repr__(self) -> str:
        return f"PaddedRestore(multiple={self.multiple}, mode={self.mode!r})"


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of length ``min(tile, size)`` covering ``0 .. size - 1`` with at least ``overlap``
    shared pixels between neighbours (stride ``tile - overlap``; the last tile ends at the border).

    Example:
        ``tile_starts(100, 40, 10) == [0, 30, 60]``.
    """
    if size <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((size - tile) / stride) + 1
    return [min(i * stride, size - tile) for i in range(count)]


def tile_window(length: int, ramp_before: int, ramp_after: int, dtype: torch.dtype = torch.float32,
                device: torch.device | str | None = None) -> Tensor:
    """1-D blending weights: ``sin^2`` rising over ``ramp_before`` pixels, flat 1, falling over ``ramp_after``.

    Every weight is positive (the ramp samples ``sin^2(pi/2 * (i + 0.5) / ramp)``), so every pixel a tile covers
    counts; two opposite ramps of the same length sum to exactly 1 (``sin^2 + cos^2``).

    Shape:
        output: ``(length,)``.
    """
    w = torch.ones(length, dtype=torch.float64)
    for ramp, index in ((ramp_before, torch.arange(min(ramp_before, length))),
                        (ramp_after, length - 1 - torch.arange(min(ramp_after, length)))):
        if ramp > 0:
            i = torch.arange(len(index), dtype=torch.float64)
            w[index] = w[index] * torch.sin(0.5 * math.pi * (i + 0.5) / ramp) ** 2
    return w.to(dtype=dtype, device=device)


class TiledRestore:
    """``restore`` on overlapping tiles, blended without seams (for images larger than ``tile``).

    Every tile of image ``b`` is restored at that image's level ``t[b]``; the tiles of all images go through
    ``restore`` in batches of ``batch_size`` tiles.  The result at each pixel is the weighted mean of the tiles that
    cover it, with the weights of :func:`tile_window` (ramps of ``overlap`` pixels on the sides a tile shares with
    a neighbour).  Images no larger than ``tile`` are passed to ``restore`` whole.

    The network sees each tile without its surroundings: the blend hides the borders, but structures larger than a
    tile are restored tile by tile.  Compose with :class:`PaddedRestore` (inside) when tiles at the image border may
    be smaller than a multiple the network needs; :func:`any_size` does both.

    Args:
        restore: ``restore(x_t, t) -> x0_hat``.
        tile: the largest tile, an int or ``(height, width)``.
        overlap: pixels shared by neighbouring tiles (an int or pair, ``0 <= overlap < tile``; default a quarter of
            the tile).  Larger overlaps blend more smoothly and cost more tiles.
        batch_size: tiles per ``restore`` call (default: all at once).

    Shape:
        ``x_t``: ``(B, C, H, W)``; ``t``: ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(self, restore: Restore, tile: int | tuple[int, int], overlap: int | tuple[int, int] | None = None,
                 batch_size: int | None = None) -> None:
        who = type(self).__name__
        self.restore = _check_restore(restore, who)
        self.tile = _positive_pair(tile, "tile", who)
        overlap_pair = (self.tile[0] // 4, self.tile[1] // 4) if overlap is None else as_pair(overlap,
                                                                                              f"{who}: overlap")
        for o, k in zip(overlap_pair, self.tile):
            if not 0 <= o < k:
                raise ValueError(f"{who}: overlap must satisfy 0 <= overlap < tile, got overlap {overlap!r} for tile "
                                 f"{tile!r}")
        self.overlap = overlap_pair
        if batch_size is not None and (isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral)
                                       or batch_size <= 0):
            raise ValueError(f"{who}: batch_size must be a positive int or None, got {batch_size!r}")
        self.batch_size = batch_size

    def layout(self, height: int, width: int) -> tuple[list[int], list[int], int, int]:
        """Tile starts along each axis and the tile size used for an image of ``height x width``."""
        th, tw = min(self.tile[0], height), min(self.tile[1], width)
        return (tile_starts(height, self.tile[0], self.overlap[0]), tile_starts(width, self.tile[1], self.overlap[1]),
                th, tw)

    def __call__(self, x_t: Tensor, t: Tensor) -> Tensor:
        who = type(self).__name__
        x_t = _check_image(x_t, who)
        batch, _, height, width = x_t.shape
        if not isinstance(t, Tensor) or t.shape not in ((batch,), ()):
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{who}: t must be a ({batch},) tensor of levels, got {got}")
        if height <= self.tile[0] and width <= self.tile[1]:
            return self.restore(x_t, t)
        rows, cols, th, tw = self.layout(height, width)
        # every tile of every image: (B, n, C, th, tw) -> (B * n, C, th, tw), image-major
        tiles = torch.stack([x_t[:, :, r: r + th, c: c + tw] for r in rows for c in cols], dim=1)
        per_image = tiles.shape[1]
        flat = tiles.flatten(0, 1)
        levels = t.expand(batch).repeat_interleave(per_image)
        step = self.batch_size or flat.shape[0]
        restored = torch.cat([self.restore(flat[i: i + step], levels[i: i + step])
                              for i in range(0, flat.shape[0], step)])
        restored = restored.view(batch, per_image, *restored.shape[1:])
        out = x_t.new_zeros(batch, restored.shape[2], height, width, dtype=restored.dtype)
        weight_sum = x_t.new_zeros(1, 1, height, width, dtype=restored.dtype)
        k = 0
        for r in rows:
            wy = tile_window(th, self.overlap[0] if r > 0 else 0, self.overlap[0] if r + th < height else 0,
                             restored.dtype, x_t.device)
            for c in cols:
                wx = tile_window(tw, self.overlap[1] if c > 0 else 0, self.overlap[1] if c + tw < width else 0,
                                 restored.dtype, x_t.device)
                w = wy[:, None] * wx[None, :]
                out[:, :, r: r + th, c: c + tw] += w * restored[:, k]
                weight_sum[:, :, r: r + th, c: c + tw] += w
                k += 1
        return out / weight_sum

    def __repr__(self) -> str:
        return f"TiledRestore(tile={self.tile}, overlap={self.overlap}, batch_size={self.batch_size})"


def any_size(restore: Restore, multiple: int | tuple[int, int] = 1, tile: int | tuple[int, int] | None = None,
             overlap: int | tuple[int, int] | None = None, batch_size: int | None = None,
             mode: PadMode = "reflect") -> Restore:
    """``restore`` for images of any size: tiles of at most ``tile`` pixels (when given), each padded to a multiple
    of ``multiple`` (when it is not 1).

    Returns:
        ``TiledRestore(PaddedRestore(restore, multiple, mode), tile, overlap, batch_size)``, with the parts that are
        not needed left out (``restore`` itself when neither is).
    """
    wrapped = restore if as_pair(multiple, "multiple") == (1, 1) else PaddedRestore(restore, multiple, mode)
    if tile is not None:
        wrapped = TiledRestore(wrapped, tile, overlap, batch_size)
    return _check_restore(wrapped, "any_size")
