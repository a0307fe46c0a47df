"""Mixing with another image ("animorphosis"), and the blend that Gaussian noise shares with it.

Both blend the image with a partner ``z`` under a cumulative signal schedule ``alpha_bar`` (cosine by default)::

    D(x, t) = 0.5 + sqrt(alpha_bar_t) (x - 0.5) + sqrt(1 - alpha_bar_t) (z - 0.5)

This is the paper's ``sqrt(a) x + sqrt(1 - a) z`` written in colddiff's ``[0, 1]`` range: mapping ``[-1, 1]`` to
``[0, 1]`` is affine, so the formula gains the mid-grey centre.  For :class:`Mix` the partner is an image from
another dataset (``x_T = z``), passed as ``partner``; for :class:`~colddiff.degradations.GaussianNoise`
(:mod:`colddiff.degradations.noise`) it is ``z = 0.5 + 0.5 * noise`` with standard normal ``noise``, i.e. exactly
``N(0, I)`` in the paper's units.

With ``reestimate=True`` the samplers re-estimate the partner from the current state and the predicted clean image
at every step (:meth:`update_params`).  For noise this makes Algorithm 2 deterministic DDIM (``eta = 0``); with it
off, the noise is held fixed (the paper's "fixed noise" variant).
"""

from __future__ import annotations

import torch
from torch import Tensor

from colddiff.degradations.base import Params, SignalNoise, check_image
from colddiff.schedules import cosine_alpha_bar

__all__ = ["Mix", "mix"]


def _blend(x: Tensor, z: Tensor, alpha_bar: Tensor) -> Tensor:
    a = alpha_bar.to(x.dtype)[:, None, None, None]
    return 0.5 + a.sqrt() * (x - 0.5) + (1 - a).sqrt() * (z - 0.5)


def _per_sample(value: float | Tensor, x: Tensor, who: str, name: str) -> Tensor:
    v = torch.as_tensor(value, dtype=x.dtype, device=x.device)
    if v.ndim == 0:
        v = v.expand(x.shape[0])
    if v.shape != (x.shape[0],):
        raise ValueError(f"{who}: {name} must be a float or have shape ({x.shape[0]},), got {tuple(v.shape)}")
    if bool(((v < 0) | (v > 1)).any()):
        raise ValueError(f"{who}: {name} must lie in [0, 1], got {v.tolist()}")
    return v


def mix(x: Tensor, partner: Tensor, alpha_bar: float | Tensor) -> Tensor:
    """Functional twin of :class:`Mix`: keep ``alpha_bar`` of the image's signal and blend in ``partner``.

    Shape:
        ``x``, ``partner``: ``(B, C, H, W)``; ``alpha_bar``: float or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        ``alpha_bar = 1`` is the image, ``0`` the partner, and in between the blend keeps mid-grey fixed:

        >>> x, z = torch.full((1, 1, 2, 2), 0.9), torch.full((1, 1, 2, 2), 0.1)
        >>> torch.equal(mix(x, z, 1.0), x), torch.allclose(mix(x, z, 0.0), z)
        (True, True)
        >>> round(mix(x, z, 0.5)[0, 0, 0, 0].item(), 4)  # 0.5 + sqrt(0.5) (0.4 - 0.4)
        0.5
    """
    x = check_image(x, "mix", "x")
    partner = check_image(partner, "mix", "partner")
    if partner.shape != x.shape:
        raise ValueError(f"mix: partner must have the shape of x {tuple(x.shape)}, got {tuple(partner.shape)}")
    return _blend(x, partner.to(x.dtype), _per_sample(alpha_bar, x, "mix", "alpha_bar"))


class _Blend(SignalNoise):
    """Shared implementation of :class:`Mix` and :class:`GaussianNoise`: in the centred units of
    :class:`~colddiff.degradations.base.SignalNoise`, ``alpha_t = sqrt(alpha_bar_t)``, ``sigma_t =
    sqrt(1 - alpha_bar_t)``, ``A_t = I`` and ``z~ = 2 z - 1`` for the partner ``z``."""

    def __init__(
        self,
        num_steps: int,
        alpha_bar: list[float] | None = None,
        cosine_s: float = 0.008,
        reestimate: bool = False,
        channels: int | None = None,
    ) -> None:
        super().__init__(num_steps, channels)
        who = type(self).__name__
        if alpha_bar is None:
            values = cosine_alpha_bar(self.num_steps, cosine_s)
        else:
            values = torch.as_tensor(alpha_bar, dtype=torch.float64).flatten()
            if values.numel() != self.num_steps + 1:
                raise ValueError(
                    f"{who}: alpha_bar must have one value per level ({self.num_steps + 1}), got {values.numel()}"
                )
            if not (values.isfinite().all() and values.min() >= 0 and values.max() <= 1) or values[0] != 1:
                raise ValueError(f"{who}: alpha_bar must lie in [0, 1] and start at 1, got {values.tolist()}")
        self.reestimate = bool(reestimate)
        self.register_buffer("alpha_bar", values.float())

    def _partner(self, params: Params) -> Tensor:
        raise NotImplementedError

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        a = self.alpha_bar.index_select(0, t.to(self.alpha_bar.device)).double()
        return a.sqrt(), (1 - a).sqrt()

    def noise_of(self, params: Params) -> Tensor:
        return 2.0 * self._partner(params) - 1.0

    def _params_from_partner(self, z: Tensor) -> Params:
        raise NotImplementedError

    def params_from_noise(self, noise: Tensor) -> Params:
        return self._params_from_partner(0.5 + 0.5 * noise)

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        y = _blend(x0, self._partner(params).to(x0.dtype), self.alpha_bar.index_select(0, t))
        return torch.where(t[:, None, None, None] == 0, x0, y)

    def extra_repr(self) -> str:
        return f"num_steps={self.num_steps}, reestimate={self.reestimate}"


class Mix(_Blend):
    """Blend with a partner image from another dataset ("animorphosis"); ``D(x, T) = partner``.

    The partner is passed by the caller: ``D(x0, t, params={"partner": z})`` or ``D.make_params(x0, partner=z)``
    (the same name as in the data modules' batches, ``{"image": x0, "partner": z}``).

    Args:
        num_steps: ``T`` (the paper: 200).
        alpha_bar: optional per-level signal fractions (``T + 1`` values from 1); default cosine.
        cosine_s: offset of the cosine schedule.
        reestimate: re-estimate the partner from ``x0_hat`` during sampling.
        channels: accepted channel count, or ``None`` for any.

    Shape:
        ``x0``, ``partner``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.
    """

    param_keys = ("partner",)
    context_keys = ("partner",)
    noise_is_gaussian = False  # the partner is an image
    #: x0 under L1, as the cold paper trains animorphosis (the partner is an image, not noise)
    default_objective_spec = ("x0", {"loss": "l1"})

    def make_params(self, x0: Tensor, generator: torch.Generator | None = None, **context: Tensor) -> Params:
        self._check_context(context)
        partner = context.get("partner")
        if partner is None:
            raise ValueError(
                "Mix needs a partner image: pass params={'partner': z} to the call, or make_params(x0, partner=z), "
                f"with z of shape {tuple(x0.shape)} in [0, 1] (e.g. a batch of the source dataset)"
            )
        return self.check_params({"partner": partner}, x0)

    def check_params(self, params, x: Tensor) -> Params:
        params = super().check_params(params, x)
        partner = check_image(params["partner"], "Mix", "params['partner']")
        if partner.shape != x.shape:
            raise ValueError(f"Mix: the partner must have the shape of x0 {tuple(x.shape)}, got {tuple(partner.shape)}")
        return params

    def _partner(self, params: Params) -> Tensor:
        return params["partner"]

    def unknown_params_reason(self) -> str | None:
        return (f"{type(self).__name__}: undoing a mix needs the partner image that was mixed in, which a given image "
                "does not reveal")

    def _params_from_partner(self, z: Tensor) -> Params:
        return {"partner": z}
