"""The exponential moving average of a network's weights (torch only): what validation, sampling and export use."""

from __future__ import annotations

import torch
from torch import nn

__all__ = ["ema_update"]


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
