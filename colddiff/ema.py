"""The exponential moving average of a network's weights (torch only): what validation, sampling and export use."""

from __future__ import annotations

import math

import torch
from torch import nn

__all__ = ["ema_update", "power_ema_gamma", "power_ema_decay"]


@torch.no_grad()
def ema_update(ema: nn.Module, live: nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * live`` for the parameters (``decay = 0``: a plain copy); buffers are
    copied.  One fused (``_foreach``) call over all parameters.

    The paper's schedule (decay 0.995 every 10 optimiser steps from step 2000, a plain copy before) is applied by
    :meth:`colddiff.module.ColdDiffusion.optimizer_step`.
    """
    ema_params, live_params = list(ema.parameters()), list(live.parameters())
    if decay == 0.0:
        torch._foreach_copy_(ema_params, live_params)
    else:
        torch._foreach_lerp_(ema_params, live_params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), live.buffers()):
        ema_buffer.copy_(buffer)


def power_ema_gamma(sigma_rel: float) -> float:
    """The exponent ``gamma`` of EDM2's power-function EMA with relative standard deviation ``sigma_rel`` (Karras et
    al., arXiv 2312.02696, eq. 3: ``sigma_rel = sqrt(gamma + 1) / ((gamma + 2) sqrt(gamma + 3))``, the width of the
    averaging profile ``tau^gamma`` over training as a fraction of its length), solved by bisection (the relation
    falls monotonically from 0.289 at ``gamma = -1`` toward 0).

    Example:
        >>> round(power_ema_gamma(0.05), 2), round(power_ema_gamma(0.10), 2)
        (16.97, 6.94)
    """
    if isinstance(sigma_rel, bool) or not isinstance(sigma_rel, (int, float)) or not 0 < sigma_rel < 0.28:
        raise ValueError(f"ema_sigma_rel must be a number in (0, 0.28) (EDM2 uses 0.05-0.15), got {sigma_rel!r}")

    def width(gamma: float) -> float:
        return math.sqrt(gamma + 1) / ((gamma + 2) * math.sqrt(gamma + 3))

    low, high = -0.999, 1.0
    while width(high) > sigma_rel:
        high *= 2
    for _ in range(100):
        middle = 0.5 * (low + high)
        low, high = (middle, high) if width(middle) > sigma_rel else (low, middle)
    return 0.5 * (low + high)


def power_ema_decay(step: int, gamma: float) -> float:
    """EDM2's power-function EMA decay after optimiser step ``step`` (1, 2, ...): ``beta = (1 - 1 / step)^(gamma + 1)``
    (arXiv 2312.02696, eq. 2), so that the average weighs the weights of step ``tau`` in proportion to ``tau^gamma``
    whatever the length of the run: a plain copy at step 1, then an average over a fixed fraction of training."""
    return (1.0 - 1.0 / step) ** (gamma + 1.0) if step > 1 else 0.0
