"""Gaussian noise, the "hot" diffusion baseline, as a degradation.

``D(x, t) = 0.5 + sqrt(alpha_bar_t) (x - 0.5) + sqrt(1 - alpha_bar_t) * 0.5 * noise`` with standard normal ``noise``:
the blend of :mod:`colddiff.degradations.mix` with the partner ``z = 0.5 + 0.5 * noise`` (``N(0, I)`` in the paper's
``[-1, 1]`` units).  Re-estimating the noise from ``x0_hat`` at every sampling step (``reestimate=True``) makes
Algorithm 2 deterministic DDIM (Song et al., arXiv 2010.02502, eq. 12 with ``sigma_t = 0``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from colddiff._checks import check_num_steps, randn
from colddiff.degradations.base import Params, SignalNoise, check_image
from colddiff.degradations.interpolate import straight_line
from colddiff.degradations.mix import _Blend, _blend, _per_sample
from colddiff.schedules import ddpm_linear_alpha_bar

__all__ = ["GaussianNoise", "FlowNoise", "NoiseParams", "gaussian_noise", "flow_noise"]


def gaussian_noise(x: Tensor, noise: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """Functional twin of :class:`GaussianNoise`, ``noise`` standard normal.

    Shape:
        ``x``, ``noise``: ``(B, C, H, W)``; ``alpha_bar``: float or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        ``alpha_bar = 0`` is pure noise, ``0.5 + 0.5 * noise`` (standard normal in the paper's ``[-1, 1]`` units):

        >>> x, noise = torch.rand(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        >>> torch.allclose(gaussian_noise(x, noise, 0.0), 0.5 + 0.5 * noise)
        True
        >>> torch.equal(gaussian_noise(x, noise, 1.0), x)
        True
    """
    x = check_image(x, "gaussian_noise", "x")
    if not isinstance(noise, Tensor) or noise.shape != x.shape:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"gaussian_noise: noise must have the shape of x {tuple(x.shape)}, got {got}")
    return _blend(x, 0.5 + 0.5 * noise.to(x.dtype), _per_sample(alpha_bar, x, "gaussian_noise", "alpha_bar"))


class NoiseParams:
    """Mixin for operators whose randomness is one standard-normal image per sample: params ``{"noise": eps}``
    (the form :class:`~colddiff.priors.GaussianNoisePrior` draws)."""

    param_keys = ("noise",)

    def make_params(self, x0: Tensor, generator: torch.Generator | None = None, **context: Tensor) -> Params:
        self._check_context(context)
        return {"noise": randn(tuple(x0.shape), generator, x0)} if self.param_keys else {}

    def unknown_params_reason(self) -> str | None:
        if not self.param_keys:  # a noise-free instance (BlurNoise with alpha_bar = 1) is deterministic
            return None
        return (f"{type(self).__name__}: the noise of a given image is unknown, and re-estimating it from the image "
                "(as the samplers do) explains every level exactly, so the residual cannot tell levels apart")

    def check_params(self, params, x: Tensor) -> Params:
        params = super().check_params(params, x)
        if "noise" in params and params["noise"].shape != x.shape:
            raise ValueError(f"{type(self).__name__}: params['noise'] must have shape {tuple(x.shape)}, "
                             f"got {tuple(params['noise'].shape)}")
        return params


class GaussianNoise(NoiseParams, _Blend):
    """Gaussian noise, the "hot" diffusion baseline; ``D(x, T) = 0.5 + 0.5 * noise``.

    In the centred units of :class:`~colddiff.degradations.base.SignalNoise`: ``x~_t = sqrt(alpha_bar_t) x~0 +
    sqrt(1 - alpha_bar_t) eps``, DDPM's forward process (Ho et al., arXiv 2006.11239, eq. 4).  What a model learns
    by default (:func:`colddiff.objectives.default_objective`): ε under MSE with ``x0_hat``
    clipped, where every level keeps signal (``schedule="linear"``); v-prediction for the cosine schedule, whose
    last level has none.

    Args:
        num_steps: ``T`` (the paper: 200; DDPM: 1000).
        alpha_bar: optional per-level signal fractions (``T + 1`` values from 1); overrides ``schedule``.
        cosine_s: offset of the cosine schedule.
        reestimate: re-estimate the noise from ``x0_hat`` during sampling (default on: deterministic DDIM with
            Algorithm 2; off: the paper's fixed-noise variant).
        channels: accepted channel count, or ``None`` for any.
        schedule: ``"cosine"`` (Nichol & Dhariwal; ``alpha_bar_T = 0``) or ``"linear"`` (DDPM's betas,
            :func:`~colddiff.schedules.ddpm_linear_alpha_bar`).
        beta_start, beta_end: the linear schedule's betas at ``T = 1000`` (scaled by ``1000 / T`` otherwise).

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    def __init__(
        self,
        num_steps: int,
        alpha_bar: list[float] | None = None,
        cosine_s: float = 0.008,
        reestimate: bool = True,
        channels: int | None = None,
        schedule: Literal["cosine", "linear"] = "cosine",
        beta_start: float = 1e-4,
        beta_end: float = 0.02,
    ) -> None:
        if schedule not in ("cosine", "linear"):
            raise ValueError(f"GaussianNoise: schedule must be 'cosine' or 'linear', got {schedule!r}")
        if alpha_bar is not None and schedule != "cosine":
            raise ValueError(f"GaussianNoise: give alpha_bar or schedule={schedule!r}, not both")
        if schedule == "linear":
            alpha_bar = ddpm_linear_alpha_bar(check_num_steps(num_steps), beta_start, beta_end).tolist()
        super().__init__(num_steps, alpha_bar, cosine_s, reestimate, channels)
        self.schedule = schedule

    def _partner(self, params: Params) -> Tensor:
        return 0.5 + 0.5 * params["noise"]

    def _params_from_partner(self, z: Tensor) -> Params:
        return {"noise": 2.0 * z - 1.0}

    def noise_of(self, params: Params) -> Tensor:
        return params["noise"]


def flow_noise(x: Tensor, noise: Tensor, s: float | Tensor) -> Tensor:
    """Functional twin of :class:`FlowNoise`: the straight path ``0.5 + (1 - s)(x - 0.5) + s * 0.5 * noise``.

    Shape:
        ``x``, ``noise``: ``(B, C, H, W)``; ``s``: float or ``(B,)`` in ``[0, 1]``; output: ``(B, C, H, W)``.

    Example:
        ``s = 0`` is the image, ``s = 1`` pure noise, and in between the straight line:

        >>> x, noise = torch.rand(2, 1, 4, 4), torch.randn(2, 1, 4, 4)
        >>> torch.equal(flow_noise(x, noise, 0.0), x), torch.allclose(flow_noise(x, noise, 1.0), 0.5 + 0.5 * noise)
        (True, True)
        >>> torch.allclose(flow_noise(x, noise, 0.25), 0.75 * x + 0.25 * (0.5 + 0.5 * noise))
        True
    """
    x = check_image(x, "flow_noise", "x")
    if not isinstance(noise, Tensor) or noise.shape != x.shape:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"flow_noise: noise must have the shape of x {tuple(x.shape)}, got {got}")
    return straight_line(x, 0.5 + 0.5 * noise.to(x.dtype), _per_sample(s, x, "flow_noise", "s")[:, None, None, None])


class FlowNoise(NoiseParams, SignalNoise):
    """The straight path between the image and Gaussian noise: rectified flow / flow matching's interpolation.

    ``x~_s = (1 - s) x~0 + s eps`` in the paper's centred units (Liu et al., arXiv 2209.03003, eq. 1; Lipman et al.,
    arXiv 2210.02747, sec. 4.1 with ``sigma_min = 0``), at ``s = t / T`` for level ``t``: ``alpha_t = 1 - t / T``,
    ``sigma_t = t / T`` (not variance preserving), ``x_T`` is pure noise (:class:`~colddiff.priors.GaussianNoisePrior`).
    The default objective is their velocity ``u = eps - x~0`` under MSE
    (:class:`~colddiff.objectives.PredictVelocity`).  With the noise re-estimated from ``x0_hat`` (``reestimate``),
    Algorithm 2 from level ``s`` to ``s'`` is ``x~_{s'} = x~_s + (s' - s) u_hat``, ``u_hat = (x~_s - x~0_hat) / s``:
    exactly Euler's method on the flow's ODE ``dx~/ds = u``; ``sampler="heun"`` takes Heun's second-order step.

    Args:
        num_steps: ``T``, the number of levels the path is cut into (training draws them; sampling may skip).
        reestimate: re-estimate the noise from ``x0_hat`` during sampling (the Euler step); off: the noise drawn for
            ``x_T`` is kept.
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    #: the velocity under MSE, what rectified flow and flow matching train (not the ladder of
    #: :func:`colddiff.objectives.default_objective`, which would give v-prediction for this path)
    default_objective_spec = ("velocity", {"loss": "l2"})

    def __init__(self, num_steps: int, reestimate: bool = True, channels: int | None = None) -> None:
        super().__init__(num_steps, channels)
        self.reestimate = bool(reestimate)
        self.register_buffer("path", torch.arange(self.num_steps + 1, dtype=torch.float64).div(self.num_steps)
                             .float(), persistent=False)

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        s = t.to(device=self.path.device, dtype=torch.float64) / self.num_steps
        return 1 - s, s

    def noise_of(self, params: Params) -> Tensor:
        return params["noise"]

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        s = self.path.index_select(0, t).to(x0.dtype)[:, None, None, None]
        return straight_line(x0, 0.5 + 0.5 * params["noise"].to(x0.dtype), s)

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, reestimate={self.reestimate}"
