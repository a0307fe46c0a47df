"""Input validation and random-draw helpers shared across colddiff (no Lightning, no heavy imports)."""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor


def check_positive_int(value: Any, name: str, who: str | None = None) -> int:
    """Validate a positive ``int`` (``bool`` is not an int here) and return it.

    Raises:
        TypeError: ``value`` is not an integer.
        ValueError: ``value <= 0``.
    """
    prefix = f"{who}: " if who else ""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{prefix}{name} must be a positive int, got {type(value).__name__} {value!r}")
    if value <= 0:
        raise ValueError(f"{prefix}{name} must be a positive int, got {value}")
    return int(value)


def check_num_steps(num_steps: Any) -> int:
    """Validate ``num_steps`` (``T``) and return it as an ``int``."""
    return check_positive_int(num_steps, "num_steps")


def check_per_step(values: Any, num_steps: int, name: str, *, allow_zero: bool = True) -> Tensor:
    """Validate a per-step schedule (one value per step, ``(T,)``) and return it as a float64 tensor."""
    try:
        tensor = torch.as_tensor(values, dtype=torch.float64).flatten().clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a sequence of {num_steps} numbers, got {values!r}") from err
    if tensor.numel() != num_steps:
        raise ValueError(f"{name} must have one value per step ({num_steps} values), got {tensor.numel()}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name} must be finite, got {tensor.tolist()}")
    low = tensor.min().item()
    if low < 0 or (not allow_zero and low == 0):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be {bound} at every step, got a minimum of {low}")
    return tensor


def as_pair(value: Any, name: str) -> tuple[int, int]:
    """``int`` or ``(h, w)`` to ``(h, w)`` (e.g. a tile size; the caller checks the range)."""
    if isinstance(value, numbers.Integral) and not isinstance(value, bool):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(
        isinstance(v, numbers.Integral) and not isinstance(v, bool) for v in value
    ):
        return int(value[0]), int(value[1])
    raise TypeError(f"{name} must be an int or a pair of ints (height, width), got {value!r}")


def randn(shape: tuple[int, ...], generator: torch.Generator | Sequence[torch.Generator] | None,
          like: Tensor) -> Tensor:
    """Standard normal draws on ``like``'s device and dtype, reproducible with a generator on any device.

    The draw happens on the generator's device (CPU generators give the same numbers whatever device the
    images are on) and is then moved.  ``generator`` may also be one generator per row (``shape[0]`` of them): row
    ``i`` then depends on its own generator alone, whatever rows are drawn with it.
    """
    if isinstance(generator, Sequence):
        if len(generator) != shape[0]:
            raise ValueError(f"one generator per row: expected {shape[0]} generators, got {len(generator)}")
        return torch.stack([randn(tuple(shape[1:]), g, like) for g in generator])
    device = generator.device if generator is not None else like.device
    return torch.randn(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def rand(shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Uniform ``[0, 1)`` draws, same device rules as :func:`randn`."""
    device = generator.device if generator is not None else like.device
    return torch.rand(shape, generator=generator, device=device, dtype=torch.float32).to(like.device, like.dtype)


def randint(high: int, shape: tuple[int, ...], generator: torch.Generator | None, like: Tensor) -> Tensor:
    """Uniform integers in ``[0, high)`` as a long tensor on ``like``'s device."""
    device = generator.device if generator is not None else like.device
    return torch.randint(high, shape, generator=generator, device=device).to(like.device)


class NonFiniteOutputError(ValueError):
    """A model produced NaN or infinite values where images were expected (nothing should be written from them)."""


def check_finite_output(images: Tensor, what: str = "images") -> Tensor:
    """Raise :class:`NonFiniteOutputError` if any of ``images`` (a batch ``(N, ...)``) holds NaN or infinite values.

    Saving such images would write their pixels as 0 (or 1) without a word; the error says how many are affected.
    Returns ``images`` unchanged.
    """
    flat = images.detach().reshape(len(images), -1) if images.ndim > 1 else images.detach().reshape(-1, 1)
    bad = ~torch.isfinite(flat).all(dim=1)
    count = int(bad.sum())
    if count:
        raise NonFiniteOutputError(
            f"the model produced NaN or infinite values in {count} of {len(flat)} {what}: its weights are corrupt or "
            "out of range (e.g. saved from a diverged run, or scaled by a huge factor); nothing was written")
    return images
