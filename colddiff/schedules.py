"""Schedules: plain functions returning float64 tensors.

Two kinds, named by what they index (see :mod:`colddiff.degradations.base` for the convention):

* **per-step** schedules have shape ``(T,)``: entry ``i`` parametrises step ``i``, which takes level ``i`` to
  level ``i + 1`` (blur and mask widths);
* **per-level** schedules have shape ``(T + 1,)``: entry ``t`` describes level ``t`` itself, entry 0 the clean
  image (cumulative signal ``alpha_bar``, remaining colour).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
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
    "ddpm_linear_alpha_bar",
    "linear_remaining",
    "level_linspace",
    "sine_blur_sigmas",
    "log_blur_sigmas",
    "cosine_logsnr_alpha_bar",
    "blur_to_noise_sigmas",
    "check_level_sigmas",
    "SeveritySchedule",
    "severity_schedule",
]

SigmaSchedule = Literal["constant", "linear", "exponential"]
SeveritySchedule = Literal["linear", "exponential"]


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


def ddpm_linear_alpha_bar(num_steps: int, beta_start: float = 1e-4, beta_end: float = 0.02) -> Tensor:
    """Cumulative signal fraction of DDPM's linear schedule (Ho et al., arXiv 2006.11239, sec. 4: ``beta_t`` linear
    from ``1e-4`` to ``0.02`` over ``T = 1000``): ``alpha_bar_t = prod_{s <= t} (1 - beta_s)``, ``1`` at level 0.

    For ``T != 1000`` both ends are scaled by ``1000 / T`` (Nichol & Dhariwal, arXiv 2102.09672, sec. 3.2), so the
    curve of ``alpha_bar`` over ``t / T`` stays about the same; ``beta`` is capped at 0.999.  At ``T = 1000``,
    ``alpha_bar_T = 4.04e-5``: some signal is left at every level, so ε-prediction is well posed.

    Shape:
        ``(T + 1,)``.
    """
    num_steps = check_num_steps(num_steps)
    if not 0 < beta_start <= beta_end < 1:
        raise ValueError(f"betas must satisfy 0 < beta_start <= beta_end < 1, got {beta_start}, {beta_end}")
    scale = 1000.0 / num_steps
    betas = torch.linspace(scale * beta_start, scale * beta_end, num_steps, dtype=torch.float64).clamp(max=0.999)
    return torch.cat([torch.ones(1, dtype=torch.float64), torch.cumprod(1 - betas, 0)])


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


def sine_blur_sigmas(num_steps: int, sigma_max: float) -> Tensor:
    """Per-level blur widths of Blurring Diffusion (Hoogeboom & Salimans, arXiv 2209.05557):
    ``sigma_B(t) = sigma_max * sin^2(pi t / (2 T))`` pixels, 0 at level 0 and ``sigma_max`` at ``T``.

    The heat equation run for the dissipation time ``tau_t = sigma_B(t)^2 / 2`` blurs like a Gaussian of standard
    deviation ``sigma_B(t)``.

    Shape:
        ``(T + 1,)``.
    """
    num_steps = check_num_steps(num_steps)
    if not (math.isfinite(sigma_max) and sigma_max >= 0):
        raise ValueError(f"sigma_max must be a finite number >= 0, got {sigma_max!r}")
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    sigmas = float(sigma_max) * torch.sin(t * math.pi / 2) ** 2
    sigmas[0] = 0.0
    return sigmas


def log_blur_sigmas(num_steps: int, sigma_min: float, sigma_max: float) -> Tensor:
    """Per-level blur widths of Inverse Heat Dissipation (Rissanen et al., arXiv 2206.13397; their code's
    ``exp(linspace(log sigma_min, log sigma_max, K))``): 0 at level 0, then log-spaced from ``sigma_min`` (level 1) to
    ``sigma_max`` (level ``T``), in pixels; the dissipation time is ``tau = sigma^2 / 2``.  Their MNIST setting:
    ``T = K = 100``, ``sigma_min = 0.5``, ``sigma_max = 20``.

    Shape:
        ``(T + 1,)``.
    """
    num_steps = check_num_steps(num_steps)
    if not (math.isfinite(sigma_min) and math.isfinite(sigma_max) and 0 < sigma_min <= sigma_max):
        raise ValueError(f"log blur widths need 0 < sigma_min <= sigma_max (finite), got {sigma_min!r}, {sigma_max!r}")
    widths = torch.exp(torch.linspace(math.log(sigma_min), math.log(sigma_max), num_steps, dtype=torch.float64))
    return torch.cat([torch.zeros(1, dtype=torch.float64), widths])


def cosine_logsnr_alpha_bar(num_steps: int, logsnr_min: float = -10.0, logsnr_max: float = 10.0) -> Tensor:
    """The cosine schedule with its log-SNR confined to ``[logsnr_min, logsnr_max]`` (Blurring Diffusion, Hoogeboom &
    Salimans, arXiv 2209.05557, their pseudo-code; Kingma et al.'s shifted cosine): ``alpha_bar(t) = cos^2(a t / T +
    b)`` with ``b = arctan(exp(-logsnr_max / 2))`` and ``a = arctan(exp(-logsnr_min / 2)) - b``, so that
    ``log(alpha_bar / (1 - alpha_bar))`` runs from ``logsnr_max`` to ``logsnr_min``.  Level 0 is the clean image
    (``alpha_bar_0 = 1``; the paper's ``t = 0`` keeps a log-SNR of 10, a difference of 5e-5).  Some signal is left at
    ``T`` (``alpha_bar_T = sigmoid(logsnr_min)``, 4.5e-5 for -10), so ε-prediction is well posed at every level.

    Shape:
        ``(T + 1,)``.
    """
    num_steps = check_num_steps(num_steps)
    if not (math.isfinite(logsnr_min) and math.isfinite(logsnr_max) and logsnr_min < logsnr_max):
        raise ValueError(f"need finite logsnr_min < logsnr_max, got {logsnr_min!r}, {logsnr_max!r}")
    b = math.atan(math.exp(-logsnr_max / 2))
    a = math.atan(math.exp(-logsnr_min / 2)) - b
    t = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
    alpha_bar = torch.cos(a * t + b) ** 2
    alpha_bar[0] = 1.0
    return alpha_bar


def blur_to_noise_sigmas(alpha_bar: Tensor, ratio: float) -> Tensor:
    """Per-level blur widths a fixed multiple of the noise level (Warm Diffusion's blur-to-noise ratio, arXiv
    2511.16904): ``sigma_B(t) = ratio * sqrt((1 - alpha_bar_t) / alpha_bar_t)`` pixels.

    ``sqrt((1 - alpha_bar) / alpha_bar)`` is the noise standard deviation relative to the signal, in the paper's
    ``[-1, 1]`` units (the ``sigma`` of variance-exploding / EDM diffusion); where ``alpha_bar = 0`` (pure noise) the
    width is ``inf`` (complete dissipation: the channel mean).

    Shape:
        ``alpha_bar``: ``(T + 1,)``; output: ``(T + 1,)`` float64.
    """
    if not (math.isfinite(ratio) and ratio >= 0):
        raise ValueError(f"the blur-to-noise ratio must be a finite number >= 0, got {ratio!r}")
    a = torch.as_tensor(alpha_bar, dtype=torch.float64)
    if ratio == 0:
        return torch.zeros_like(a)
    noise_level = torch.where(a > 0, ((1 - a) / a.clamp_min(1e-300)).sqrt(), torch.full_like(a, math.inf))
    return float(ratio) * noise_level


def check_level_sigmas(values: list[float] | Tensor, num_steps: int, name: str) -> Tensor:
    """Validate per-level blur widths: ``T + 1`` values, ``>= 0`` (``inf`` allowed: complete dissipation), starting
    at 0 (level 0 is the clean image).

    Shape:
        output: ``(T + 1,)`` float64.
    """
    try:
        tensor = torch.as_tensor(values, dtype=torch.float64).flatten().clone()
    except (TypeError, ValueError, RuntimeError) as err:
        raise TypeError(f"{name} must be a sequence of {num_steps + 1} numbers, got {values!r}") from err
    if tensor.numel() != num_steps + 1:
        raise ValueError(f"{name} must have one value per level ({num_steps + 1} values), got {tensor.numel()}")
    if torch.isnan(tensor).any() or (tensor < 0).any():
        raise ValueError(f"{name} must be >= 0 (inf allowed) at every level, got {tensor.tolist()}")
    if tensor[0] != 0:
        raise ValueError(f"{name} must start at 0 (level 0 is the clean image), got {tensor[0].item()}")
    return tensor


def level_values(value: float | Sequence[float] | Tensor, num_steps: int, name: str = "schedule") -> Tensor:
    """A per-level schedule of non-negative amounts (e.g. a noise standard deviation), from a number or a list.

    A number ``v`` gives ``0`` at level 0 and ``v`` at every level ``1 .. T``; a sequence must have ``T + 1``
    values (entry ``t`` for level ``t``).

    Shape:
        ``(T + 1,)`` float64.
    """
    num_steps = check_num_steps(num_steps)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        values = torch.full((num_steps + 1,), float(value), dtype=torch.float64)
        values[0] = 0.0
    else:
        try:
            values = torch.as_tensor(value, dtype=torch.float64).flatten().clone()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name} must be a number or {num_steps + 1} numbers (one per level), got {value!r}") \
                from err
        if values.numel() != num_steps + 1:
            raise ValueError(f"{name} must be a number or have one value per level ({num_steps + 1} values), "
                             f"got {values.numel()}")
    if not torch.isfinite(values).all() or values.min() < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {values.tolist()}")
    return values


def severity_schedule(
    num_steps: int,
    clean: float | None = None,
    end: float | None = None,
    schedule: SeveritySchedule = "linear",
    values: Sequence[float] | Tensor | None = None,
    name: str = "severity",
) -> Tensor:
    """Per-level severities of a transform: ``clean`` at level 0 (where the transform is the identity), ``end`` at
    level ``T``.

    * ``"linear"``: ``clean + (end - clean) * t / T``;
    * ``"exponential"``: ``clean * (end / clean) ** (t / T)``, evenly spaced in ``log`` (``clean`` and ``end``
      non-zero and of the same sign), for severities that act multiplicatively (a zoom factor, a kernel length);
    * ``values``: given, ``T + 1`` numbers, entry ``t`` for level ``t`` (``schedule``, ``clean`` and ``end`` are then
      not used).

    Shape:
        ``(T + 1,)`` float64.

    Example:
        >>> severity_schedule(4, clean=100.0, end=20.0).tolist()
        [100.0, 80.0, 60.0, 40.0, 20.0]
        >>> severity_schedule(2, clean=1.0, end=4.0, schedule="exponential").tolist()
        [1.0, 2.0, 4.0]
    """
    num_steps = check_num_steps(num_steps)
    if values is not None:
        try:
            tensor = torch.as_tensor(values, dtype=torch.float64).flatten().clone()
        except (TypeError, ValueError, RuntimeError) as err:
            raise TypeError(f"{name}: values must be {num_steps + 1} numbers (one per level), got {values!r}") from err
        if tensor.numel() != num_steps + 1:
            raise ValueError(f"{name}: values must have one value per level, level 0 included ({num_steps + 1} "
                             f"values), got {tensor.numel()}")
    else:
        if clean is None or end is None:
            raise ValueError(f"{name}: give clean and end (the severities at levels 0 and T) or values, got "
                             f"clean={clean!r}, end={end!r}")
        clean, end = float(clean), float(end)
        fraction = torch.arange(num_steps + 1, dtype=torch.float64) / num_steps
        if schedule == "linear":
            tensor = clean + (end - clean) * fraction
        elif schedule == "exponential":
            if clean == 0 or end == 0 or (clean > 0) != (end > 0):
                raise ValueError(f"{name}: an exponential schedule needs clean and end non-zero and of the same "
                                 f"sign, got clean={clean}, end={end}")
            tensor = clean * (end / clean) ** fraction
            tensor[-1] = end  # exactly the requested end, whatever the rounding of the power
        else:
            raise ValueError(f"{name}: schedule must be 'linear' or 'exponential', got {schedule!r}")
    if not torch.isfinite(tensor).all():
        raise ValueError(f"{name}: severities must be finite, got {tensor.tolist()}")
    return tensor
