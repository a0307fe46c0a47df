"""Schedules: plain functions returning float64 tensors.

Two kinds, named by what they index (see :mod:`colddiff.degradations.base` for the convention):

* **per-step** schedules have shape ``(T,)``: entry ``i`` parametrises step ``i``, which takes level ``i`` to
  level ``i + 1`` (blur and mask widths);
* **per-level** schedules have shape ``(T + 1,)``: entry ``t`` describes level ``t`` itself, entry 0 the clean
  image (cumulative signal ``alpha_bar``, remaining colour).
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

from colddiff._checks import check_num_steps, check_per_step

__all__ = [
    "SigmaSchedule",
    "constant",
    "linear",
    "exponential",
    "sigma_schedule",
    "cosine_alpha_bar",
    "linear_remaining",
    "level_linspace",
]

SigmaSchedule = Literal["constant", "linear", "exponential"]


def constant(num_steps: int, value: float) -> Tensor:
    """Per-step ``value`` at every step. Shape: ``(T,)``."""
    return torch.full((check_num_steps(num_steps),), float(value), dtype=torch.float64)


def linear(num_steps: int, start: float, step: float) -> Tensor:
    """Per-step ``start + step * i``. The paper's ``s * (i + 1)`` is ``linear(T, s, s)``. Shape: ``(T,)``."""
    i = torch.arange(check_num_steps(num_steps), dtype=torch.float64)
    return float(start) + float(step) * i


def exponential(num_steps: int, start: float, rate: float) -> Tensor:
    """Per-step ``start * exp(rate * i)``; the paper's ``exp(0.01 i)`` is ``exponential(T, 1, 0.01)``.

    Shape:
        ``(T,)``.
    """
    i = torch.arange(check_num_steps(num_steps), dtype=torch.float64)
    return float(start) * torch.exp(float(rate) * i)


def sigma_schedule(
    num_steps: int,
    sigmas: list[float] | Tensor | None = None,
    schedule: SigmaSchedule = "constant",
    sigma: float = 1.0,
    sigma_step: float | None = None,
    rate: float = 0.01,
    name: str = "sigmas",
) -> Tensor:
    """Per-step standard deviations, explicit or from a named schedule, validated (finite, ``>= 0``).

    Args:
        num_steps: ``T``.
        sigmas: explicit per-step values (``T`` of them); when given, the named schedule is not used.
        schedule: ``"constant"``: ``sigma``; ``"linear"``: ``sigma + sigma_step * i`` (``sigma_step`` defaults to
            ``sigma``, giving ``sigma * (i + 1)``); ``"exponential"``: ``sigma * exp(rate * i)``.
        sigma, sigma_step, rate: schedule parameters.
        name: the argument name used in error messages.

    Shape:
        ``(T,)``.
    """
    num_steps = check_num_steps(num_steps)
    if sigmas is not None:
        return check_per_step(sigmas, num_steps, name)
    if schedule == "constant":
        values = constant(num_steps, sigma)
    elif schedule == "linear":
        values = linear(num_steps, sigma, sigma if sigma_step is None else sigma_step)
    elif schedule == "exponential":
        values = exponential(num_steps, sigma, rate)
    else:
        raise ValueError(f"schedule must be one of 'constant', 'linear', 'exponential', got {schedule!r}")
    return check_per_step(values, num_steps, f"{name} (schedule {schedule!r})")


def cosine_alpha_bar(num_steps: int, s: float = 0.008) -> Tensor:
    """Cumulative signal fraction of the cosine schedule (Nichol & Dhariwal, 2021), ``1`` at level 0, ``0`` at ``T``.

    ``alpha_bar(t) = f(t) / f(0)``, ``f(t) = cos((t / T + s) / (1 + s) * pi / 2) ** 2``; the last level is set to
    exactly 0 so that ``x_T`` is the partner image (mixing) or pure noise.

    Shape:
        ``(T + 1,)``.
    """
    num_steps = check_num_steps(num_steps)
    if not s >= 0:
        raise ValueError(f"cosine schedule offset s must be >= 0, got {s}")
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    f = torch.cos((t + s) / (1 + s) * math.pi / 2) ** 2
    alpha_bar = (f / f[0]).clamp(0.0, 1.0)
    alpha_bar[0] = 1.0
    alpha_bar[-1] = 0.0
    return alpha_bar


def linear_remaining(num_steps: int) -> Tensor:
    """``1 - t / T``: the fraction of something (colour) left at level ``t``. Shape: ``(T + 1,)``."""
    num_steps = check_num_steps(num_steps)
    return 1.0 - torch.arange(num_steps + 1, dtype=torch.float64) / num_steps


def level_linspace(num_steps: int, start: float, end: float, clean: float) -> Tensor:
    """Per-level values ``clean`` at level 0, then ``start`` at level 1 rising/falling linearly to ``end`` at ``T``.

    This is the original implementation's ``torch.linspace(start, end, T)`` indexed by step, re-indexed by level.

    Shape:
        ``(T + 1,)``.
    """
    num_steps = check_num_steps(num_steps)
    values = torch.linspace(float(start), float(end), num_steps, dtype=torch.float64)
    return torch.cat([torch.tensor([float(clean)], dtype=torch.float64), values])
