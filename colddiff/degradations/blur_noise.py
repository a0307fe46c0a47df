"""Blur plus Gaussian noise: a "warm" degradation between cold diffusion (blur only) and hot diffusion (noise only).

In colddiff's ``[0, 1]`` units, with ``B_t`` a blur at level ``t``, ``alpha_bar_t`` a noise schedule and ``eps``
standard normal::

    D(x0, t) = 0.5 + sqrt(alpha_bar_t) (B_t x0 - 0.5) + sqrt(1 - alpha_bar_t) * 0.5 * eps              (1)

computed as ``sqrt(alpha_bar_t) B_t x0 + (1 - sqrt(alpha_bar_t)) * 0.5 + sqrt(1 - alpha_bar_t) * 0.5 * eps`` (the
blurs keep constant images, ``B_t 0.5 = 0.5``), which is exactly ``B_t x0`` where ``alpha_bar_t = 1`` and exactly
``0.5 + 0.5 eps`` (:class:`~colddiff.priors.GaussianNoisePrior`'s start state) where ``alpha_bar_t = 0``.

**Blurring Diffusion** (Hoogeboom & Salimans, arXiv 2209.05557).  In the paper's ``[-1, 1]`` units
``y = 2 x - 1`` and the orthonormal 2-D DCT-II ``u = V^T y``, the forward process is diagonal in frequency space::

    u_t = alpha_t d_t (.) u_0 + sigma_t eps_u,      d_t = (1 - d_min) exp(-lambda tau_t) + d_min                  (2)

with ``lambda_{k,l} = (pi k / H)^2 + (pi l / W)^2`` the eigenvalues of the (negative) Neumann Laplacian on the DCT-II
grid, ``tau_t = sigma_B(t)^2 / 2`` the dissipation time (the heat equation for a time ``tau`` blurs like a Gaussian of
standard deviation ``sqrt(2 tau)``), ``sigma_B(t) = sigma_B,max sin^2(pi t / 2)`` for the paper's ``t`` in ``[0, 1]``
(colddiff's level ``t`` is its ``t / T``) and a variance-preserving noise schedule ``alpha_t^2 + sigma_t^2 = 1``.
Since ``V`` is orthogonal, ``V eps_u`` is standard normal noise in pixel space, so (2) is (1) with
``B_t = V diag(d_t) V^T`` and ``sqrt(alpha_bar_t) = alpha_t``: ``blur="heat"`` implements this exactly, in closed form,
by one FFT of the half-sample-symmetric (DCT-II) extension of period ``2N`` per axis.
``d_min > 0`` keeps a fraction of every frequency (``B_t = (1 - d_min) G_tau + d_min I``), so ``B_t`` stays
invertible.  The paper's noise schedule, ``alpha_t^2 = sigmoid(-2 log tan(pi t / 2))``, is ``cos^2(pi t / 2)``: the
cosine schedule with offset ``cosine_s = 0`` (the paper clips its log-SNR to ``[-10, 10]``; colddiff ends at
``alpha_bar_T = 0``, pure noise).  ``d_min = 0`` and ``alpha_t = 1`` give the inverse heat dissipation model's forward
process (Rissanen et al., arXiv 2206.13397), ``u_t = exp(-lambda tau_t) u_0``, without its small added noise.

**Cold Diffusion's blur** (``blur="kernel"``): ``B_t`` is :class:`~colddiff.degradations.GaussianBlur` with the same
arguments, ``t`` sampled ``k x k`` Gaussian kernels in sequence (see its docstring for how it relates to the heat
equation: ``tau_t = sum_{i<t} sigma_i^2 / 2``; its ``reflect`` borders mirror about the edge pixels, the DCT-I's
extension, where the DCT-II above mirrors half a pixel further out).

**Blur-to-noise ratio** (Warm Diffusion, Hsueh et al., arXiv 2511.16904): ``heat_schedule="ratio"`` makes the blur
width a fixed multiple of the noise level, ``sigma_B(t) = r sqrt((1 - alpha_bar_t) / alpha_bar_t)``
(:func:`colddiff.schedules.blur_to_noise_sigmas`); ``r = 0`` is noise without blur, a large ``r`` blurs away
detail long before the noise drowns it.

**Sampling.** With ``reestimate=True`` the samplers re-estimate the noise from the current state and the predicted
clean image (:meth:`~colddiff.degradations.base.SignalNoise.update_params`)::

    eps_hat = (x_t - 0.5 - sqrt(alpha_bar_t) (B_t x0_hat - 0.5)) / (0.5 sqrt(1 - alpha_bar_t))                    (3)

so that Algorithm 2, ``x_{s'} = x_s - D(x0_hat, s) + D(x0_hat, s')``, becomes
``x_{s'} = D(x0_hat, s'; eps_hat)``: the deterministic DDIM sampler (Song et al., arXiv 2010.02502, eq. 12 with
``sigma_t = 0``) of process (2), frequency by frequency ``u_{s'} = alpha_{s'} d_{s'} u0_hat + sigma_{s'} eps_hat_u``.
With ``B_t = I`` it is :class:`~colddiff.degradations.GaussianNoise`'s DDIM; with ``alpha_bar_t = 1`` it is Algorithm 2
for the blur alone.  The samplers built on the frequency-wise form (2), Blurring Diffusion's ancestral step
(:func:`colddiff.sampling.ancestral_step`) and the multistep solvers, read ``d_t`` through
:meth:`BlurNoise.signal_spectrum` and filter with :meth:`BlurNoise.apply_spectrum`.
"""

from __future__ import annotations

import inspect
import math
import numbers
from typing import Literal

import torch
from torch import Tensor

from colddiff.degradations.base import Params, SignalNoise, check_image, check_odd_kernel_size
from colddiff.degradations.blur import (
    Border,
    _check_blur_size,
    _check_border,
    _forward_spectrum,
    _inverse_spectrum,
    blur_transfer,
)
from colddiff.degradations.mix import _per_sample
from colddiff.degradations.noise import NoiseParams
from colddiff.schedules import (
    SigmaSchedule,
    blur_to_noise_sigmas,
    check_level_sigmas,
    cosine_alpha_bar,
    cosine_logsnr_alpha_bar,
    log_blur_sigmas,
    sigma_schedule,
    sine_blur_sigmas,
)

__all__ = ["BlurNoise", "blur_noise", "heat_blur", "heat_transfer"]

BlurKind = Literal["heat", "kernel"]
HeatSchedule = Literal["sine", "ratio", "log"]
NoiseSchedule = Literal["cosine", "cosine-logsnr", "none"]


def _dct2_frequencies_squared(size: int, full: bool, device: torch.device) -> Tensor:
    """``omega^2`` on the FFT grid of the period-``2N`` symmetric extension: ``omega_k = pi min(k, 2N - k) / N``
    (``full``) or ``pi k / N``, ``k <= N`` (the ``rfft`` half).  These are the DCT-II frequencies."""
    k = torch.arange(2 * size if full else size + 1, dtype=torch.float64, device=device)
    if full:
        k = torch.minimum(k, 2 * size - k)
    return (math.pi * k / size) ** 2


def heat_transfer(level_sigmas: Tensor, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Per-level transfer functions ``exp(-tau_t omega^2)``, ``tau_t = sigma_t^2 / 2``, of the heat equation with
    Neumann borders on the DCT-II grid, along each axis of the period-``2N`` symmetric extension (float64).

    ``sigma = inf`` gives complete dissipation (1 at ``omega = 0``, 0 elsewhere).

    Shape:
        ``level_sigmas``: ``(L,)``; output ``(rows, cols)``: ``(L, 2 H)`` and ``(L, W + 1)``.
    """
    tau = level_sigmas.to(torch.float64)[:, None] ** 2 / 2

    def axis(omega2: Tensor) -> Tensor:
        return torch.where(omega2 > 0, torch.exp(-tau * omega2), torch.ones_like(tau * omega2))

    device = level_sigmas.device
    return axis(_dct2_frequencies_squared(height, True, device)), axis(_dct2_frequencies_squared(width, False, device))


def _heat_transfer2d(rows: Tensor, cols: Tensor, min_scale: float) -> Tensor:
    """``d = (1 - d_min) exp(-lambda tau) + d_min`` per sample: ``(B, 2H, W + 1)`` float64."""
    return (1.0 - min_scale) * rows[:, :, None] * cols[:, None, :] + min_scale


def _apply_transfer(x: Tensor, transfer: Tensor, border: str) -> Tensor:
    """``x`` filtered by per-sample real transfer functions on its (extended) FFT grid, in ``x``'s dtype."""
    spectrum, signal, compute = _forward_spectrum(x, border)
    return _inverse_spectrum(spectrum * transfer.to(compute)[:, None], signal, *x.shape[-2:]).to(x.dtype)


def _check_min_scale(min_scale: float, who: str) -> float:
    if isinstance(min_scale, bool) or not isinstance(min_scale, numbers.Real) or not 0 <= min_scale <= 1:
        raise ValueError(f"{who}: min_scale (d_min) must be a number in [0, 1], got {min_scale!r}")
    return float(min_scale)


def _same(value: object, default: object) -> bool:
    """Whether an argument still has its default (lists from a config compare equal to tuple defaults)."""
    if isinstance(value, (list, tuple)) and isinstance(default, (list, tuple)):
        return len(value) == len(default) and all(_same(v, d) for v, d in zip(value, default))
    return value == default


def _refuse_unused(who: str, unused: dict[str, tuple[object, object, str]]) -> None:
    """Raises when an argument that the chosen configuration does not use was set to something else than its default
    (``{name: (value, default, why it is unused)}``): a value that would be silently ignored is refused instead."""
    given = [f"{name}={value!r} ({why})" for name, (value, default, why) in unused.items()
             if not _same(value, default)]
    if given:
        raise ValueError(f"{who}: " + "; ".join(given) + ". Remove the argument or choose the setting that uses it")


def heat_blur(x: Tensor, blur_sigma: float | Tensor, min_scale: float = 0.0) -> Tensor:
    """Heat dissipation with Neumann (DCT-II) borders for the time ``blur_sigma^2 / 2``, Blurring Diffusion's
    ``V diag((1 - d_min) exp(-lambda tau) + d_min) V^T`` (arXiv 2209.05557), computed with one FFT.

    Args:
        x: images.
        blur_sigma: the equivalent Gaussian width in pixels (``>= 0``, ``inf`` allowed), a float or one per sample.
        min_scale: ``d_min``, the fraction of every frequency that is kept.

    Shape:
        ``x``: ``(B, C, H, W)``; ``blur_sigma``: float or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        The heat equation keeps the mean, smooths, and does nothing for a zero time:

        >>> x = torch.zeros(1, 1, 8, 8)
        >>> x[..., :4] = 1.0
        >>> y = heat_blur(x, 2.0)
        >>> round(y.mean().item(), 6), bool(y.max() < 1), torch.equal(heat_blur(x, 0.0), x)
        (0.5, True, True)
        >>> heat_blur(x, float("inf")).unique()  # complete dissipation: the mean
        tensor([0.5000])
    """
    who = "heat_blur"
    x = check_image(x, who, "x")
    min_scale = _check_min_scale(min_scale, who)
    sigma = torch.as_tensor(blur_sigma, dtype=torch.float64, device=x.device)
    if sigma.ndim == 0:
        sigma = sigma.expand(x.shape[0])
    if sigma.shape != (x.shape[0],) or torch.isnan(sigma).any() or (sigma < 0).any():
        raise ValueError(f"{who}: blur_sigma must be >= 0, a float or one per sample ({x.shape[0]},), got {sigma}")
    rows, cols = heat_transfer(sigma, *x.shape[-2:])
    y = _apply_transfer(x, _heat_transfer2d(rows, cols, min_scale), "symmetric")
    return torch.where((sigma == 0)[:, None, None, None], x, y)


def blur_noise(
    x: Tensor, noise: Tensor, alpha_bar: float | Tensor, blur_sigma: float | Tensor = 0.0, min_scale: float = 0.001
) -> Tensor:
    """Functional twin of :class:`BlurNoise` with the heat blur: equation (1) of :mod:`colddiff.degradations.blur_noise`
    with ``B = heat_blur(., blur_sigma, min_scale)``.

    Args:
        x: images in ``[0, 1]``.
        noise: standard normal noise of ``x``'s shape.
        alpha_bar: signal fraction, a float or one per sample, in ``[0, 1]``.
        blur_sigma: blur width (the heat equation's ``sqrt(2 tau)``), a float or one per sample; 0 for no blur
            (then this is :func:`~colddiff.degradations.functional.gaussian_noise` up to rounding).
        min_scale: ``d_min`` of the heat blur.

    Shape:
        ``x``, ``noise``: ``(B, C, H, W)``; ``alpha_bar``, ``blur_sigma``: float or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        No noise is the blur alone; no signal is pure noise, ``0.5 + 0.5 * noise``:

        >>> x, noise = torch.rand(2, 3, 8, 8), torch.randn(2, 3, 8, 8)
        >>> torch.equal(blur_noise(x, noise, 1.0, blur_sigma=1.5), heat_blur(x, 1.5, min_scale=0.001))
        True
        >>> torch.equal(blur_noise(x, noise, 0.0, blur_sigma=1.5), 0.5 + 0.5 * noise)
        True
    """
    who = "blur_noise"
    x = check_image(x, who, "x")
    if not isinstance(noise, Tensor) or noise.shape != x.shape:
        got = tuple(noise.shape) if isinstance(noise, Tensor) else type(noise).__name__
        raise ValueError(f"{who}: noise must have the shape of x {tuple(x.shape)}, got {got}")
    a = _per_sample(alpha_bar, x, who, "alpha_bar")
    return _mix(heat_blur(x, blur_sigma, min_scale), noise.to(x.dtype), a)


def _mix(blurred: Tensor, noise: Tensor, alpha_bar: Tensor) -> Tensor:
    """Equation (1) given ``B_t x0``: ``sqrt(a) B x0 + (1 - sqrt(a)) 0.5 + sqrt(1 - a) 0.5 noise``."""
    a = alpha_bar.to(blurred.dtype)[:, None, None, None]
    signal = a.sqrt()
    return signal * blurred + (1 - signal) * 0.5 + (0.5 * (1 - a).sqrt()) * noise


class BlurNoise(NoiseParams, SignalNoise):
    """Blur plus Gaussian noise (Blurring Diffusion's forward process, or Cold Diffusion's blur with noise):
    ``D(x0, t) = 0.5 + sqrt(alpha_bar_t) (B_t x0 - 0.5) + sqrt(1 - alpha_bar_t) * 0.5 * eps``.

    See :mod:`colddiff.degradations.blur_noise` for the equations and the papers.  The noise ``eps`` is the param
    ``"noise"``, as for :class:`~colddiff.degradations.GaussianNoise`, so :class:`~colddiff.priors.GaussianNoisePrior`
    serves as the generation prior: at ``alpha_bar_T = 0`` (the default schedules end there) ``D(x0, T)`` is pure
    noise, ``0.5 + 0.5 * eps``, whatever ``x0``.  With ``reestimate=True`` (default) Algorithm 2 is the deterministic
    DDIM sampler of the hybrid.

    Args:
        num_steps: ``T``.
        blur: ``"heat"``: Blurring Diffusion's heat dissipation in DCT space (Neumann borders), with per-level widths
            ``sigma_B(t)``; ``"kernel"``: :class:`~colddiff.degradations.GaussianBlur`'s iterated kernels, with its
            arguments ``kernel_size, sigmas, schedule, sigma, sigma_step, rate, border``.
        heat_schedule: for ``blur="heat"``: ``"sine"``, ``sigma_B(t) = heat_sigma_max sin^2(pi t / 2T)`` (Blurring
            Diffusion's), ``"ratio"``, ``sigma_B(t) = blur_to_noise * sqrt((1 - alpha_bar_t) / alpha_bar_t)``
            (Warm Diffusion's fixed blur-to-noise ratio), or ``"log"`` (Inverse Heat Dissipation's log-spaced widths).
        heat_sigma_max: ``sigma_B,max`` of the sine schedule, in pixels.
        blur_to_noise: the ratio of the ``"ratio"`` schedule (blur width in pixels per unit of noise level).
        heat_sigmas: explicit per-level widths ``sigma_B(t)`` (``T + 1`` values from 0; ``inf`` allowed); overrides
            ``heat_schedule``.  Only with ``blur="heat"``.
        min_scale: ``d_min`` of Blurring Diffusion's frequency scaling (``blur="heat"``).
        kernel_size, sigmas, schedule, sigma, sigma_step, rate, border: the per-step kernel blur of ``blur="kernel"``,
            as :class:`~colddiff.degradations.GaussianBlur` (``sigmas`` only with ``blur="kernel"``).
        alpha_bar: explicit per-level signal fractions (``T + 1`` values from 1); default cosine.
        cosine_s: offset of the cosine schedule (0 is Blurring Diffusion's ``cos^2(pi t / 2)``).
        reestimate: re-estimate the noise from ``x0_hat`` during sampling (default on: deterministic DDIM with
            Algorithm 2; off: the noise drawn for ``x_T`` is kept).
        channels: accepted channel count, or ``None`` for any.
        noise: the noise schedule when ``alpha_bar`` is not given: ``"cosine"`` (``cosine_s``; ends at
            ``alpha_bar_T = 0``), ``"cosine-logsnr"`` (Blurring Diffusion's: the cosine schedule with its log-SNR in
            ``logsnr_range``, :func:`~colddiff.schedules.cosine_logsnr_alpha_bar`), or ``"none"`` (the blur alone,
            ``alpha_bar = 1``: Inverse Heat Dissipation's forward process, whose small noise is added in training by
            the model's ``train_noise``).
        logsnr_range: ``(min, max)`` log-SNR of ``noise="cosine-logsnr"`` (the paper: ``(-10, 10)``).
        heat_sigma_min: the level-1 width of ``heat_schedule="log"`` (Inverse Heat Dissipation's log-spaced widths
            from ``heat_sigma_min`` to ``heat_sigma_max``, :func:`~colddiff.schedules.log_blur_sigmas`; their MNIST
            setting: 0.5 to 20 over 100 levels).

    An argument that the chosen setting does not use (``blur_to_noise`` under the sine schedule, a kernel argument
    with ``blur="heat"``, ``cosine_s`` with another noise schedule, ...) must keep its default: another value is
    refused with the reason rather than silently ignored.

    The defaults ``heat_sigma_max = 20`` and ``min_scale = 0.001`` are the values of Blurring Diffusion's
    pseudo-code.  ``alpha_bar`` set to ones gives the blur alone (``blur="kernel"``: exactly ``GaussianBlur``);
    ``heat_sigmas`` (or ``sigmas``) set to zeros gives the noise alone (``GaussianNoise`` up to rounding).

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        >>> op = BlurNoise(200, heat_schedule="ratio", blur_to_noise=1.0)
        >>> x0 = torch.rand(2, 3, 16, 16)
        >>> params = op.make_params(x0, torch.Generator().manual_seed(0))
        >>> torch.equal(op(x0, 0, params), x0), torch.equal(op.final_state(x0, params), 0.5 + 0.5 * params["noise"])
        (True, True)
    """


    def __init__(
        self,
        num_steps: int,
        blur: BlurKind = "heat",
        heat_schedule: HeatSchedule = "sine",
        heat_sigma_max: float = 20.0,
        blur_to_noise: float = 1.0,
        heat_sigmas: list[float] | None = None,
        min_scale: float = 0.001,
        kernel_size: int = 11,
        sigmas: list[float] | None = None,
        schedule: SigmaSchedule = "constant",
        sigma: float = 1.0,
        sigma_step: float | None = None,
        rate: float = 0.01,
        border: Border = "circular",
        alpha_bar: list[float] | None = None,
        cosine_s: float = 0.008,
        reestimate: bool = True,
        channels: int | None = None,
        noise: NoiseSchedule = "cosine",
        logsnr_range: tuple[float, float] = (-10.0, 10.0),
        heat_sigma_min: float = 0.5,
    ) -> None:
        super().__init__(num_steps, channels)
        who = type(self).__name__
        if blur not in ("heat", "kernel"):
            raise ValueError(f"{who}: blur must be 'heat' or 'kernel', got {blur!r}")
        if heat_schedule not in ("sine", "ratio", "log"):
            raise ValueError(f"{who}: heat_schedule must be 'sine', 'ratio' or 'log', got {heat_schedule!r}")
        if noise not in ("cosine", "cosine-logsnr", "none"):
            raise ValueError(f"{who}: noise must be 'cosine', 'cosine-logsnr' or 'none', got {noise!r}")
        _refuse_unused(who, self._unused_arguments(locals()))
        if noise != "cosine" and alpha_bar is not None:
            raise ValueError(f"{who}: give alpha_bar or noise={noise!r}, not both")
        if noise == "none":
            alpha_bar = [1.0] * (self.num_steps + 1)
        elif noise == "cosine-logsnr":
            alpha_bar = cosine_logsnr_alpha_bar(self.num_steps, *map(float, logsnr_range)).tolist()
        self.noise = noise
        if blur == "kernel" and heat_sigmas is not None:
            raise ValueError(f"{who}: heat_sigmas are the widths of blur='heat'; blur='kernel' takes sigmas")
        if blur == "heat" and sigmas is not None:
            raise ValueError(f"{who}: sigmas are the per-step kernels of blur='kernel'; blur='heat' takes heat_sigmas")
        self.blur = blur
        self.heat_schedule = heat_schedule
        self.min_scale = _check_min_scale(min_scale, who)
        self.reestimate = bool(reestimate)
        self.register_buffer("alpha_bar", self._alpha_bar(alpha_bar, cosine_s, who).float())
        if bool((self.alpha_bar == 1).all()):  # no noise at any level: the blur alone, deterministic (no params)
            self.param_keys = ()
        if blur == "heat":
            self.border = "symmetric"
            self.kernel_size = None
            if heat_sigmas is not None:
                widths = check_level_sigmas(heat_sigmas, self.num_steps, "heat_sigmas")
            elif heat_schedule == "sine":
                widths = sine_blur_sigmas(self.num_steps, heat_sigma_max)
            elif heat_schedule == "log":
                widths = log_blur_sigmas(self.num_steps, heat_sigma_min, heat_sigma_max)
            else:
                widths = blur_to_noise_sigmas(self.alpha_bar.double(), blur_to_noise)
            self.register_buffer("heat_sigmas", widths.float())
        else:
            self.border = _check_border(border, who)
            self.kernel_size = check_odd_kernel_size(kernel_size, who)
            schedule_values = sigma_schedule(self.num_steps, sigmas, schedule, sigma, sigma_step, rate)
            self.register_buffer("sigmas", schedule_values.float())

    @staticmethod
    def _unused_arguments(args: dict) -> dict[str, tuple[object, object, str]]:
        """The arguments that ``args`` (the constructor's) does not use, with their defaults and the reason."""
        unused: dict[str, tuple[object, object, str]] = {}
        defaults = {name: p.default for name, p in inspect.signature(BlurNoise.__init__).parameters.items()}

        def mark(names: tuple[str, ...], why: str) -> None:
            for name in names:
                unused.setdefault(name, (args[name], defaults[name], why))

        kernel_args = ("kernel_size", "schedule", "sigma", "sigma_step", "rate", "border")
        heat_args = ("heat_schedule", "heat_sigma_max", "blur_to_noise", "heat_sigma_min", "min_scale")
        if args["blur"] == "heat":
            mark(kernel_args, "a parameter of blur='kernel'; blur='heat' has Neumann borders and its own widths")
            if args["heat_sigmas"] is not None:
                mark(("heat_schedule", "heat_sigma_max", "blur_to_noise", "heat_sigma_min"),
                     "heat_sigmas gives the widths")
            else:
                schedule = args["heat_schedule"]
                if schedule != "ratio":
                    mark(("blur_to_noise",), f"only heat_schedule='ratio' uses it, got {schedule!r}")
                if schedule != "log":
                    mark(("heat_sigma_min",), f"only heat_schedule='log' uses it, got {schedule!r}")
                if schedule == "ratio":
                    mark(("heat_sigma_max",), "heat_schedule='ratio' uses blur_to_noise")
        else:
            mark(heat_args, "a parameter of blur='heat'")
            if args["sigmas"] is not None:
                mark(("schedule", "sigma", "sigma_step", "rate"), "sigmas gives the per-step kernels")
        if args["noise"] != "cosine" or args["alpha_bar"] is not None:
            mark(("cosine_s",), "only noise='cosine' without alpha_bar uses it")
        if args["noise"] != "cosine-logsnr":
            mark(("logsnr_range",), f"only noise='cosine-logsnr' uses it, got noise={args['noise']!r}")
        return unused

    def _alpha_bar(self, alpha_bar: list[float] | None, cosine_s: float, who: str) -> Tensor:
        if alpha_bar is None:
            return cosine_alpha_bar(self.num_steps, cosine_s)
        values = torch.as_tensor(alpha_bar, dtype=torch.float64).flatten()
        if values.numel() != self.num_steps + 1:
            raise ValueError(f"{who}: alpha_bar must have one value per level ({self.num_steps + 1}), "
                             f"got {values.numel()}")
        if not (values.isfinite().all() and values.min() >= 0 and values.max() <= 1) or values[0] != 1:
            raise ValueError(f"{who}: alpha_bar must lie in [0, 1] and start at 1, got {values.tolist()}")
        return values

    # ------------------------------------------------------------------ blur
    def check_image_size(self, height: int, width: int) -> None:
        if self.blur == "kernel":
            _check_blur_size(height, width, self.border, type(self).__name__)

    def transfer(self, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
        """Cached per-level transfer functions ``(rows, cols)`` of ``B_t`` along each axis (float64, on the FFT grid
        of the extended image) and a ``(T + 1,)`` bool table of the levels where ``B_t`` is the identity."""

        def build() -> tuple[Tensor, Tensor, Tensor]:
            if self.blur == "heat":
                rows, cols = heat_transfer(self.heat_sigmas.to(device), height, width)
            else:
                rows, cols = blur_transfer(self.sigmas.to(device), self.kernel_size, height, width, self.border)
            identity = (rows == 1).all(dim=1) & (cols == 1).all(dim=1)
            return rows, cols, identity

        return self._cached(("transfer", height, width, str(device)), build)

    def _transfer2d(self, rows: Tensor, cols: Tensor, t: Tensor) -> Tensor:
        r, c = rows.index_select(0, t), cols.index_select(0, t)
        if self.blur == "heat":
            return _heat_transfer2d(r, c, self.min_scale)
        return r[:, :, None] * c[:, None, :]

    def blurred(self, x: Tensor, t: Tensor) -> Tensor:
        """``B_t x`` (hot path, no checks); exactly ``x`` where ``B_t`` is the identity (level 0, no blur).

        Shape:
            ``x``: ``(B, C, H, W)``; ``t``: ``(B,)`` long; output: ``(B, C, H, W)``.
        """
        rows, cols, identity = self.transfer(x.shape[-2], x.shape[-1], x.device)
        y = _apply_transfer(x, self._transfer2d(rows, cols, t), self.border)
        return torch.where(identity.index_select(0, t)[:, None, None, None], x, y)

    # ------------------------------------------------------------------ signal and noise (SignalNoise)
    signal_is_identity = False

    def coefficients(self, t: Tensor) -> tuple[Tensor, Tensor]:
        """``alpha_t = sqrt(alpha_bar_t)``, ``sigma_t = sqrt(1 - alpha_bar_t)``; the signal operator is ``B_t``."""
        a = self.alpha_bar.index_select(0, t.to(self.alpha_bar.device)).double()
        return a.sqrt(), (1 - a).sqrt()

    def noise_of(self, params: Params) -> Tensor:
        if "noise" not in params:
            raise ValueError("BlurNoise: this instance is noise-free (alpha_bar = 1 at every level): it has no noise "
                             "image; train it with PredictX0")
        return params["noise"]

    def apply_signal(self, x: Tensor, t: Tensor) -> Tensor:
        """``B_t x`` (linear, so it applies to centred images as to ``[0, 1]`` ones)."""
        return self.blurred(x, t)

    def solve_signal(self, y: Tensor, t: Tensor, scale: Tensor, shift: Tensor) -> Tensor:
        """``(scale B_t + shift I)^-1 y``: one FFT, dividing by ``scale H_t + shift`` frequency by frequency (Blurring
        Diffusion's ``x0`` from ``eps`` is ``u0 = (u_t - sigma_t eps_u) / (alpha_t d_t)``, the case ``shift = 0``)."""
        rows, cols, _ = self.transfer(y.shape[-2], y.shape[-1], y.device)
        h = self._transfer2d(rows, cols, t)
        system = scale.double().to(h.device)[:, None, None] * h + shift.double().to(h.device)[:, None, None]
        return _apply_transfer(y, 1.0 / system, self.border)

    def signal_spectrum(self, t: Tensor, height: int, width: int) -> Tensor:
        """``B_t``'s transfer function on the FFT grid of the extended image (``(B, 2H, W + 1)`` for the heat blur's
        DCT-II extension): the heat blur's ``d_t = (1 - d_min) exp(-lambda tau_t) + d_min`` per frequency."""
        rows, cols, _ = self.transfer(height, width, t.device)
        return self._transfer2d(rows, cols, t)

    def apply_spectrum(self, x: Tensor, spectrum: Tensor) -> Tensor:
        return _apply_transfer(x, spectrum, self.border)

    def signal_nonnegative(self) -> bool:
        """The heat blur's transfer function is positive; the truncated kernel's can change sign."""
        return self.blur == "heat"

    def signal_invertible(self) -> bool:
        """The heat blur with ``d_min > 0`` keeps a fraction of every frequency; the kernel blur's transfer function
        (and the heat blur's with ``d_min = 0``) reaches zero."""
        return self.blur == "heat" and self.min_scale > 0

    # ------------------------------------------------------------------ degradation
    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        if not self.param_keys:  # noise-free: the blur alone (B_t is exactly the identity at level 0)
            return self.blurred(x0, t)
        y = _mix(self.blurred(x0, t), params["noise"].to(x0.dtype), self.alpha_bar.index_select(0, t))
        return torch.where(t[:, None, None, None] == 0, x0, y)

    def step_difference(self, x0: Tensor, t: Tensor, t_next: Tensor, params: Params) -> Tensor:
        """``D(x0, t_next) - D(x0, t)`` with one forward FFT: the blur terms share the spectrum of ``x0``."""
        rows, cols, _ = self.transfer(x0.shape[-2], x0.shape[-1], x0.device)
        a, a_next = self.alpha_bar.index_select(0, t).double(), self.alpha_bar.index_select(0, t_next).double()
        transfer = (a_next.sqrt()[:, None, None] * self._transfer2d(rows, cols, t_next)
                    - a.sqrt()[:, None, None] * self._transfer2d(rows, cols, t))
        blur_part = _apply_transfer(x0, transfer, self.border)
        a4, a4_next = a.to(x0.dtype)[:, None, None, None], a_next.to(x0.dtype)[:, None, None, None]
        constant = (a4.sqrt() - a4_next.sqrt()) * 0.5
        if not self.param_keys:  # noise-free
            return blur_part + constant
        noise = 0.5 * ((1 - a4_next).sqrt() - (1 - a4).sqrt()) * params["noise"].to(x0.dtype)
        return blur_part + constant + noise

    def extra_repr(self) -> str:
        if self.blur == "heat":
            blur = f"blur='heat', heat_schedule={self.heat_schedule!r}, min_scale={self.min_scale}"
        else:
            blur = f"blur='kernel', kernel_size={self.kernel_size}, border={self.border!r}"
        return f"num_steps={self.num_steps}, {blur}, reestimate={self.reestimate}"
