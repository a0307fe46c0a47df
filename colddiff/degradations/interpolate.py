"""The straight path from an image to its degraded observation: InDI's degradation, as an operator.

Inversion by Direct Iteration (InDI; Delbracio & Milanfar, arXiv 2303.11435) restores by walking the straight line
between the clean image ``x`` and its degraded observation ``y``::

    x_s = (1 - s) x + s y,        s = t / T in [0, 1]                                                    (InDI eq. 1)

with an optional small noise, ``x_s = (1 - s) x + s y + s eps_0 eta`` (their eq. 7 with a constant ``eps_t =
eps_0``), which is the same line towards the noisy observation ``y + eps_0 eta``.  ``y`` is the degradation
``target`` at its last level, ``target.final_state(x)``: any colddiff degradation (blur, JPEG, pixelation ...).
The restorer learns ``F(x_s, s) ~ E[x | x_s]`` (their analysis: the L2 loss) and their iteration from ``s`` to
``s - delta`` is ``x_{s - delta} = (delta / s) F(x_s, s) + (1 - delta / s) x_s`` (their Algorithm 1).  That is
exactly Cold Diffusion's Algorithm 2 on this path with the observation re-estimated from the current state,
``y_hat = (x_s - (1 - s) x0_hat) / s`` (``reestimate=True``, :meth:`Interpolation.update_params`):
``x_s - D(x0_hat, s) + D(x0_hat, s - delta) = x_s + delta (x0_hat - y_hat) = x_s + (delta / s)(x0_hat - x_s)``.
Restoring a given observation starts at ``x_T = y``; the first step re-estimates ``y_hat = x_T`` whatever params
were drawn.
"""

from __future__ import annotations

import numbers

import torch
from torch import Tensor

from colddiff._checks import randn
from colddiff.degradations.base import Degradation, Params

__all__ = ["Interpolation", "interpolate"]


def straight_line(x: Tensor, target: Tensor, s: Tensor) -> Tensor:
    """``(1 - s) x + s target``, and ``x`` itself where ``s = 0`` (hot path; ``s`` broadcasts, e.g. ``(B, 1, 1, 1)``):
    InDI's path towards an observation and the flow's towards noise (:class:`~colddiff.degradations.FlowNoise`)."""
    return torch.where(s == 0, x, (1 - s) * x + s * target.to(x.dtype))


def interpolate(x: Tensor, observation: Tensor, s: float | Tensor) -> Tensor:
    """Functional twin of :class:`Interpolation`: ``(1 - s) x + s observation`` (``x`` itself at ``s = 0``).

    Shape:
        ``x``, ``observation``: ``(B, C, H, W)``; ``s``: float or ``(B,)`` in ``[0, 1]``; output: ``(B, C, H, W)``.

    Example:
        >>> x, y = torch.zeros(1, 1, 2, 2), torch.ones(1, 1, 2, 2)
        >>> interpolate(x, y, 0.25).flatten().tolist(), torch.equal(interpolate(x, y, 0.0), x)
        ([0.25, 0.25, 0.25, 0.25], True)
    """
    from colddiff.degradations.mix import _per_sample

    return straight_line(x, observation, _per_sample(s, x, "interpolate", "s")[:, None, None, None])


class Interpolation(Degradation):
    """InDI's path ``D(x0, t) = (1 - s) x0 + s y``, ``s = t / T``, towards the observation ``y`` of ``target``.

    Args:
        num_steps: ``T``, the number of levels the path is cut into (InDI's ``1 / delta`` steps).
        target: the degradation whose final state is the observation, ``y = target.final_state(x0)`` (its random
            params, if any, are drawn with the same generator); default ``GaussianBlur(num_steps)``.
        noise_std: InDI's ``eps_0``: the observation is ``y + eps_0 eta`` (0: none).
        reestimate: re-estimate the observation from ``x0_hat`` while sampling (InDI's iteration); off: keep the
            drawn one.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        >>> from colddiff.degradations import GaussianBlur
        >>> op = Interpolation(4, GaussianBlur(10, kernel_size=5))
        >>> x0 = torch.rand(2, 1, 8, 8)
        >>> params = op.make_params(x0)
        >>> torch.allclose(op.final_state(x0, params), GaussianBlur(10, kernel_size=5).final_state(x0))
        True
    """

    param_keys = ("observation",)
    #: x0 under L2, drawing the last level a third of the time: InDI's ``F(x_s, s) ~ E[x | x_s]`` and its level draw
    #: (uniform on [0, 1] with a point mass at s = 1 of weight a / (1 + a), a = 0.5)
    default_objective_spec = ("x0", {"loss": "l2", "end_probability": 1 / 3})

    def __init__(self, num_steps: int, target: Degradation | None = None, noise_std: float = 0.0,
                 reestimate: bool = True) -> None:
        if target is None:
            from colddiff.degradations.blur import GaussianBlur

            target = GaussianBlur(num_steps)
        if not isinstance(target, Degradation):
            raise TypeError(f"Interpolation: target must be a colddiff Degradation, got {type(target).__name__}")
        if isinstance(noise_std, bool) or not isinstance(noise_std, numbers.Real) or not noise_std >= 0:
            raise ValueError(f"Interpolation: noise_std must be a number >= 0, got {noise_std!r}")
        super().__init__(num_steps, target.channels)
        self.target, self.noise_std, self.reestimate = target, float(noise_std), bool(reestimate)
        self.context_keys = target.context_keys

    def check_image_size(self, height: int, width: int) -> None:
        self.target.check_image_size(height, width)

    def make_params(self, x0: Tensor, generator: torch.Generator | None = None, **context: Tensor) -> Params:
        self._check_context(context)
        with torch.no_grad():
            y = self.target.final_state(x0, None, generator, **context)
        if self.noise_std > 0:
            y = y + self.noise_std * randn(tuple(y.shape), generator, y)
        return {"observation": y}

    def check_params(self, params, x: Tensor) -> Params:
        params = super().check_params(params, x)
        if params["observation"].shape != x.shape:
            raise ValueError(f"Interpolation: params['observation'] must have shape {tuple(x.shape)}, got "
                             f"{tuple(params['observation'].shape)}")
        return params

    def _s(self, t: Tensor, like: Tensor) -> Tensor:
        return (t.to(like.dtype) / self.num_steps)[:, None, None, None]

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        return straight_line(x0, params["observation"], self._s(t, x0))

    def update_params(self, x_t: Tensor, x0_hat: Tensor, t: Tensor, params: Params) -> Params:
        """With ``reestimate``: the observation that puts ``x0_hat`` at ``x_t`` on the line (kept at level 0)."""
        if not self.reestimate:
            return params
        s = self._s(t, x_t)
        estimate = (x_t - (1 - s) * x0_hat) / torch.where(s > 0, s, torch.ones_like(s))
        return {"observation": torch.where(s > 0, estimate, params["observation"].to(x_t.dtype))}

    def unknown_params_reason(self) -> str | None:
        return (f"{type(self).__name__}: every level is a blend with the observation y itself, which a given image "
                "does not reveal at any level but T; InDI restores an observation y from T (--level T, or the "
                "model's num_steps), where the first step re-estimates y = x_T")

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, noise_std={self.noise_std}, reestimate={self.reestimate}"
