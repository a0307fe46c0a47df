"""Desaturation: blend towards the grayscale image.

``D(x, t) = r_t x + (1 - r_t) gray(x)`` with ``r_t`` the colour remaining at level ``t`` (linear: ``1 - t / T``, so
the last step removes all colour).  Iterating per-step blends towards the channel mean gives exactly this, because
blending preserves the grayscale image.  ``grayscale="mean"`` is the paper's unweighted channel mean;
``grayscale="luma"`` uses ITU-R 601-2 weights and then agrees with ``torchvision``'s ``adjust_saturation(x, r_t)``.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from colddiff._checks import check_num_steps
from colddiff.degradations.base import LUMA_WEIGHTS, Degradation, Params, check_image
from colddiff.schedules import linear_remaining

__all__ = ["Desaturate", "desaturate", "grayscale"]

Grayscale = Literal["mean", "luma"]


def grayscale(x: Tensor, mode: Grayscale = "mean") -> Tensor:
    """One-channel gray image: the channel mean, or ITU-R 601-2 luma (3 channels). Shape: ``(B, 1, H, W)``."""
    if mode == "luma":
        weights = torch.tensor(LUMA_WEIGHTS, device=x.device, dtype=x.dtype)[None, :, None, None]
        return (x * weights).sum(dim=1, keepdim=True)
    return x.mean(dim=1, keepdim=True)


def _check_colour(x: Tensor, mode: str, who: str) -> None:
    if mode not in ("mean", "luma"):
        raise ValueError(f"{who}: grayscale must be 'mean' or 'luma', got {mode!r}")
    if mode == "luma" and x.shape[1] != 3:
        raise ValueError(f"{who}: luma grayscale needs RGB images (3 channels), got {x.shape[1]}")
    if x.shape[1] < 2:
        raise ValueError(f"{who}: desaturation needs colour images (at least 2 channels), got {x.shape[1]}")


def _apply_desaturate(x: Tensor, remaining: Tensor, mode: str) -> Tensor:
    r = remaining.to(x.dtype)[:, None, None, None]
    return r * x + (1 - r) * grayscale(x, mode)


def desaturate(x: Tensor, remaining: float | Tensor, grayscale: Grayscale = "mean") -> Tensor:
    """Functional twin of :class:`Desaturate`: keep a fraction ``remaining`` of the colour.

    Shape:
        ``x``: ``(B, C, H, W)``; ``remaining``: float or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        All colour kept is the image; none kept is its gray (the channel mean) in every channel:

        >>> x = torch.tensor([0.9, 0.3, 0.0]).reshape(1, 3, 1, 1).expand(1, 3, 2, 2)
        >>> torch.equal(desaturate(x, 1.0), x)
        True
        >>> desaturate(x, 0.0)[0, :, 0, 0]
        tensor([0.4000, 0.4000, 0.4000])
        >>> desaturate(x, 0.5)[0, :, 0, 0]
        tensor([0.6500, 0.3500, 0.2000])
    """
    who = "desaturate"
    x = check_image(x, who, "x")
    _check_colour(x, grayscale, who)
    r = torch.as_tensor(remaining, dtype=x.dtype, device=x.device)
    if r.ndim == 0:
        r = r.expand(x.shape[0])
    if r.shape != (x.shape[0],):
        raise ValueError(f"{who}: remaining must be a float or have shape ({x.shape[0]},), got {tuple(r.shape)}")
    return _apply_desaturate(x, r, grayscale)


class Desaturate(Degradation):
    """Desaturation ``D(x, t) = r_t x + (1 - r_t) gray(x)`` (deterministic).

    Args:
        num_steps: ``T`` (the paper: 20).
        remaining: optional per-level colour fractions (``T + 1`` values in ``[0, 1]``, the first equal to 1);
            default ``1 - t / T``.
        grayscale: ``"mean"`` (the paper) or ``"luma"``.
        channels: accepted channel count (default 3).

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(
        self,
        num_steps: int,
        remaining: list[float] | None = None,
        grayscale: Grayscale = "mean",
        channels: int | None = 3,
    ) -> None:
        super().__init__(num_steps, channels)
        who = type(self).__name__
        if grayscale not in ("mean", "luma"):
            raise ValueError(f"{who}: grayscale must be 'mean' or 'luma', got {grayscale!r}")
        if grayscale == "luma" and channels not in (None, 3):
            raise ValueError(f"{who}: luma grayscale needs channels=3, got {channels}")
        if remaining is None:
            values = linear_remaining(self.num_steps)
        else:
            values = torch.as_tensor(remaining, dtype=torch.float64).flatten()
            T = check_num_steps(num_steps)
            if values.numel() != T + 1:
                raise ValueError(f"{who}: remaining must have one value per level ({T + 1}), got {values.numel()}")
            if not (values.isfinite().all() and values.min() >= 0 and values.max() <= 1) or values[0] != 1:
                raise ValueError(f"{who}: remaining must lie in [0, 1] and start at 1, got {values.tolist()}")
        self.grayscale = grayscale
        self.register_buffer("remaining", values.float())

    def check_input(self, x, name: str = "x0") -> Tensor:
        x = super().check_input(x, name)
        _check_colour(x, self.grayscale, type(self).__name__)
        return x

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        y = _apply_desaturate(x0, self.remaining.index_select(0, t), self.grayscale)
        return torch.where(t[:, None, None, None] == 0, x0, y)

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, grayscale={self.grayscale!r}"
