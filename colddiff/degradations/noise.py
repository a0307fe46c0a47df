"""Gaussian noise, the "hot" diffusion baseline, as a degradation.

``D(x, t) = 0.5 + sqrt(alpha_bar_t) (x - 0.5) + sqrt(1 - alpha_bar_t) * 0.5 * noise`` with standard normal ``noise``:
the blend of :mod:`colddiff.degradations.mix` with the partner ``z = 0.5 + 0.5 * noise`` (``N(0, I)`` in the paper's
``[-1, 1]`` units).  Re-estimating the noise from ``x0_hat`` at every sampling step (``reestimate=True``) makes
Algorithm 2 deterministic DDIM (Song et al., arXiv 2010.02502, eq. 12 with ``sigma_t = 0``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from colddiff._checks import randn
from colddiff.degradations.base import Params, check_image
from colddiff.degradations.mix import _Blend, _blend, _per_sample

__all__ = ["GaussianNoise", "NoiseParams", "gaussian_noise"]


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
        return {"noise": randn(tuple(x0.shape), generator, x0)}

    def unknown_params_reason(self) -> str | None:
        return (f"{type(self).__name__}: the noise of a given image is unknown, and re-estimating it from the image "
                "(as the samplers do) explains every level exactly, so the residual cannot tell levels apart")

    def check_params(self, params, x: Tensor) -> Params:
        params = super().check_params(params, x)
        if params["noise"].shape != x.shape:
            raise ValueError(f"{type(self).__name__}: params['noise'] must have shape {tuple(x.shape)}, "
                             f"got {tuple(params['noise'].shape)}")
        return params


class GaussianNoise(NoiseParams, _Blend):
    """Gaussian noise, the "hot" diffusion baseline; ``D(x, T) = 0.5 + 0.5 * noise``.

    Args:
        num_steps: ``T`` (the paper: 200).
        alpha_bar: optional per-level signal fractions (``T + 1`` values from 1); default cosine.
        cosine_s: offset of the cosine schedule.
        reestimate: re-estimate the noise from ``x0_hat`` during sampling (default on: deterministic DDIM with
            Algorithm 2; off: the paper's fixed-noise variant).
        channels: accepted channel count, or ``None`` for any.

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
    ) -> None:
        super().__init__(num_steps, alpha_bar, cosine_s, reestimate, channels)

    def _partner(self, params: Params) -> Tensor:
        return 0.5 + 0.5 * params["noise"]

    def _params_from_partner(self, z: Tensor) -> Params:
        return {"noise": 2.0 * z - 1.0}
