"""Gaussian blur (deblurring, and generation by blur with a channel-mean end state).

Step ``i`` convolves with a normalised ``k x k`` Gaussian of standard deviation ``sigmas[i]`` (the outer product of
two normalised 1-D Gaussians), padding by ``(k - 1) / 2`` in the border mode; ``D(x, t)`` applies steps
``0 .. t-1`` in sequence.  Computed in closed form, whatever ``t``:

* **circular** borders: iterated circular convolutions are one circular convolution with the product of the
  kernels' transfer functions, i.e. one FFT, one product, one inverse FFT;
* **reflect** borders: reflect padding of a signal equals its even (mirror) periodic extension of period
  ``2N - 2``, and a symmetric kernel maps even signals to even signals, so the iterated reflect-padded blur is one
  circular convolution of the mirror-extended image, cropped back.

The transfer functions are separable, real (the kernels are symmetric) and precomputed in float64 as cumulative
products per level, cached per image size and device.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from colddiff.degradations.base import (
    Degradation,
    Params,
    check_image,
    check_levels,
    check_odd_kernel_size,
    observe_8bit,
)
from colddiff.schedules import SigmaSchedule, sigma_schedule

__all__ = ["GaussianBlur", "gaussian_blur", "gaussian_kernel1d", "blur_transfer"]

Border = Literal["circular", "reflect"]
_BORDERS = ("circular", "reflect")


def gaussian_kernel1d(sigmas: Tensor, kernel_size: int) -> Tensor:
    """Normalised 1-D Gaussian kernels, one per sigma (``sigma = 0`` gives the identity kernel).

    Shape:
        ``sigmas``: ``(T,)``; output: ``(T, kernel_size)``, same dtype as ``sigmas``.
    """
    radius = (kernel_size - 1) / 2
    x = torch.arange(kernel_size, dtype=sigmas.dtype, device=sigmas.device) - radius
    sig = sigmas[:, None]
    safe = torch.where(sig > 0, sig, torch.ones_like(sig))
    g = torch.exp(-(x**2) / (2 * safe**2))
    delta = (x == 0).to(sigmas.dtype).expand_as(g)
    g = torch.where(sig > 0, g, delta)
    return g / g.sum(dim=1, keepdim=True)


def _period(size: int, border: str) -> int:
    """Length of the circle an axis of ``size`` pixels lives on: ``N`` (circular), ``2N - 2`` (reflect: mirror about
    the edge pixels) or ``2N`` (symmetric: mirror half a pixel outside them, the DCT-II's extension)."""
    return {"circular": size, "reflect": 2 * size - 2, "symmetric": 2 * size}[border]


def _cumulative_transfer(kernels: Tensor, period: int) -> Tensor:
    """Cumulative products of the kernels' DFTs on a circle of length ``period``.

    Row ``t`` is the transfer function of ``t`` steps (row 0 is all ones).

    Shape:
        ``kernels``: ``(T, k)``; output: ``(T + 1, period)``.
    """
    num_steps, k = kernels.shape
    radius = (k - 1) // 2
    wrapped = kernels.new_zeros(num_steps, period)
    index = torch.arange(-radius, radius + 1, device=kernels.device) % period
    wrapped.index_add_(1, index, kernels)  # a kernel longer than the circle wraps around, as circular padding does
    transfer = torch.fft.fft(wrapped, dim=1).real  # symmetric kernels have real spectra
    ones = transfer.new_ones(1, period)
    return torch.cat([ones, torch.cumprod(transfer, dim=0)], dim=0)


def blur_transfer(sigmas: Tensor, kernel_size: int, height: int, width: int, border: Border) -> tuple[Tensor, Tensor]:
    """Per-level transfer functions of the iterated blur along each image axis (float64).

    Returns:
        ``(rows, cols)``: ``rows[t]`` is the transfer function along the height axis after ``t`` steps on the FFT
        grid of the (extended) image, ``cols[t]`` the same along the width axis restricted to the ``rfft`` half.

    Shape:
        ``rows``: ``(T + 1, P_h)``; ``cols``: ``(T + 1, P_w // 2 + 1)`` with ``P = N`` (circular) or
        ``2N - 2`` (reflect).
    """
    kernels = gaussian_kernel1d(sigmas.to(torch.float64), kernel_size)
    rows = _cumulative_transfer(kernels, _period(height, border))
    cols = _cumulative_transfer(kernels, _period(width, border))
    return rows, cols[:, : _period(width, border) // 2 + 1]


def _mirror_extend(x: Tensor) -> Tensor:
    """Even periodic extension of period ``2N - 2`` along both spatial axes (whole-sample symmetric, DCT-I)."""
    x = torch.cat([x, x.flip(-2)[..., 1:-1, :]], dim=-2)
    return torch.cat([x, x.flip(-1)[..., 1:-1]], dim=-1)


def _symmetric_extend(x: Tensor) -> Tensor:
    """Even periodic extension of period ``2N`` along both spatial axes (half-sample symmetric, DCT-II)."""
    x = torch.cat([x, x.flip(-2)], dim=-2)
    return torch.cat([x, x.flip(-1)], dim=-1)


def _forward_spectrum(x: Tensor, border: str) -> tuple[Tensor, Tensor, torch.dtype]:
    """The ``rfft2`` of the (mirror-extended, for reflect/symmetric borders) image in float32/64, the signal, and
    that dtype."""
    compute = x.dtype if x.dtype in (torch.float32, torch.float64) else torch.float32
    signal = x.to(compute)
    if border == "reflect":
        signal = _mirror_extend(signal)
    elif border == "symmetric":
        signal = _symmetric_extend(signal)
    return torch.fft.rfft2(signal), signal, compute


def _inverse_spectrum(spectrum: Tensor, signal: Tensor, height: int, width: int) -> Tensor:
    return torch.fft.irfft2(spectrum, s=signal.shape[-2:])[..., :height, :width]


def _transfer2d(rows: Tensor, cols: Tensor, t: Tensor) -> Tensor:
    """Per-sample separable transfer functions: ``(B, P_h, P_w // 2 + 1)`` float64."""
    return rows.index_select(0, t)[:, :, None] * cols.index_select(0, t)[:, None, :]


def _apply_blur(
    x: Tensor,
    t: Tensor,
    rows: Tensor,
    cols: Tensor,
    border: str,
    final_mean: bool,
    num_steps: int,
) -> Tensor:
    """The exact (unquantised) iterated blur at per-sample levels ``t``; level 0 returns ``x`` itself."""
    height, width = x.shape[-2:]
    spectrum, signal, compute = _forward_spectrum(x, border)
    y = _inverse_spectrum(spectrum * _transfer2d(rows, cols, t).to(compute)[:, None], signal, height, width)
    t4 = t[:, None, None, None]
    if final_mean:
        y = torch.where(t4 == num_steps, signal[..., :height, :width].mean(dim=(-2, -1), keepdim=True), y)
    return torch.where(t4 == 0, x, y.to(x.dtype))


def _blur_difference(x: Tensor, t: Tensor, t_next: Tensor, rows: Tensor, cols: Tensor, border: str) -> Tensor:
    """``D(x, t_next) - D(x, t)`` for plain blurs: one forward FFT, the difference of two transfer functions, one
    inverse FFT (levels 0 use the identity transfer function, exact up to FFT rounding)."""
    spectrum, signal, compute = _forward_spectrum(x, border)
    transfer = (_transfer2d(rows, cols, t_next) - _transfer2d(rows, cols, t)).to(compute)
    return _inverse_spectrum(spectrum * transfer[:, None], signal, *x.shape[-2:]).to(x.dtype)


def _check_border(border: str, who: str) -> str:
    if border not in _BORDERS:
        raise ValueError(f"{who}: border must be one of {_BORDERS}, got {border!r}")
    return border


def _check_blur_size(height: int, width: int, border: str, who: str) -> None:
    if border == "reflect" and min(height, width) < 2:
        raise ValueError(f"{who}: reflect borders need images of at least 2x2 pixels, got {height}x{width}")


def gaussian_blur(
    x: Tensor,
    t: int | Tensor,
    sigmas: Tensor | list[float],
    kernel_size: int,
    border: Border = "circular",
    final_mean: bool = False,
    quantize: bool = False,
) -> Tensor:
    """Functional twin of :class:`GaussianBlur`: ``t`` iterated Gaussian blurs in closed form.

    Args:
        x: images in ``[0, 1]``.
        t: levels (number of blur steps applied), an int or one per sample, ``0 <= t <= len(sigmas)``.
        sigmas: per-step standard deviations (``T`` values, ``>= 0``).
        kernel_size: odd kernel size ``k``; each step pads by ``(k - 1) / 2``.
        border: ``"circular"`` or ``"reflect"`` padding.
        final_mean: replace level ``T`` by the per-channel spatial mean of ``x``.
        quantize: return the observed form, rounded to 8 bits at levels ``t >= 1`` (as the module's call does).

    Shape:
        ``x``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        A blur keeps the image's mass (circular borders), level 0 is the image itself, and the last level of
        ``final_mean`` is the per-channel mean:

        >>> x = torch.zeros(1, 1, 5, 5)
        >>> x[..., 2, 2] = 1.0
        >>> y = gaussian_blur(x, 2, sigmas=[1.0, 1.0], kernel_size=3)
        >>> y.shape, round(y.sum().item(), 5), bool(y[0, 0, 2, 2] < 1)
        (torch.Size([1, 1, 5, 5]), 1.0, True)
        >>> torch.equal(gaussian_blur(x, 0, sigmas=[1.0, 1.0], kernel_size=3), x)
        True
        >>> gaussian_blur(x, 2, sigmas=[1.0, 1.0], kernel_size=3, final_mean=True).unique()
        tensor([0.0400])
    """
    who = "gaussian_blur"
    x = check_image(x, who, "x")
    kernel_size = check_odd_kernel_size(kernel_size, who)
    border = _check_border(border, who)
    sig = sigma_schedule(len(sigmas), sigmas=sigmas)
    t = check_levels(t, x, sig.numel(), who)
    _check_blur_size(x.shape[-2], x.shape[-1], border, who)
    rows, cols = blur_transfer(sig.to(x.device), kernel_size, x.shape[-2], x.shape[-1], border)
    return observe_8bit(_apply_blur(x, t, rows, cols, border, final_mean, sig.numel()), t, quantize)


class GaussianBlur(Degradation):
    """Iterated Gaussian blur ``D(x, t)``: ``t`` blur steps applied in sequence (deterministic).

    Args:
        num_steps: ``T``.
        kernel_size: odd kernel size ``k`` of every step.
        sigmas: explicit per-step standard deviations (``T`` values); overrides the named schedule.
        schedule: ``"constant"`` (``sigma``), ``"linear"`` (``sigma + sigma_step * i``; ``sigma_step`` defaults to
            ``sigma``, the paper's ``s * (i + 1)``) or ``"exponential"`` (``sigma * exp(rate * i)``).
        sigma, sigma_step, rate: schedule parameters.
        border: ``"circular"`` or ``"reflect"`` padding of every step.
        final_mean: replace the final state ``D(x, T)`` by the per-channel spatial mean (the paper's generation
            setting; start states are then constant images, sampleable from a prior over colours).
        quantize: the observed images (:meth:`degrade_input`, the module call, :meth:`final_state`: training inputs
            and start states) are rounded to 8 bits at ``t >= 1``, the paper's "discrete" generation setting.  The
            exact :meth:`degrade` that the samplers use is never rounded, as in the original code, which quantised
            only the training inputs.  colddiff rounds to the nearest level (``round(255 x) / 255``) where the
            original truncated (``int(255 x) / 255``, half a level too dark on average).
        channels: accepted channel count, or ``None`` for any.

    The iterated blur is a discretised heat equation: ``t`` steps of widths ``sigma_i`` act like the heat equation
    run for the dissipation time ``tau_t = sum_{i<t} sigma_i^2 / 2`` (transfer function ``exp(-tau_t omega^2)``), up to
    the sampling and truncation of the kernels: negligible for ``sigma_i >= 2`` and ``k >= 8 sigma_i``, while at
    ``sigma_i = 1`` the response at the Nyquist frequency is off by about ``exp(-pi^2 / 2) = 0.007`` per step.
    ``reflect`` borders mirror about the edge pixels (the even extension of period ``2N - 2``, diagonalised by the
    DCT-I), a Neumann (zero-flux) boundary; the heat dissipation of Rissanen et al. (arXiv 2206.13397) and Blurring
    Diffusion (arXiv 2209.05557) uses the DCT-II, whose mirror lies half a pixel outside the edge pixels (period
    ``2N``).  :class:`~colddiff.degradations.BlurNoise` implements that DCT-II form exactly.

    Shape:
        ``x0``: ``(B, C, H, W)``; ``t``: ``int`` or ``(B,)``; output: ``(B, C, H, W)``.

    Example:
        >>> blur = GaussianBlur(300, kernel_size=27, schedule="exponential", sigma=1.0, rate=0.01)
        >>> x0 = torch.rand(4, 3, 64, 64)
        >>> x_t = blur(x0, torch.tensor([0, 1, 150, 300]))
        >>> x_t.shape, torch.equal(x_t[0], x0[0]), bool(x_t[3].std() < x_t[1].std() < x0[1].std())
        (torch.Size([4, 3, 64, 64]), True, True)
    """

    def __init__(
        self,
        num_steps: int,
        kernel_size: int = 11,
        sigmas: list[float] | None = None,
        schedule: SigmaSchedule = "constant",
        sigma: float = 1.0,
        sigma_step: float | None = None,
        rate: float = 0.01,
        border: Border = "circular",
        final_mean: bool = False,
        quantize: bool = False,
        channels: int | None = None,
    ) -> None:
        super().__init__(num_steps, channels)
        who = type(self).__name__
        self.kernel_size = check_odd_kernel_size(kernel_size, who)
        self.border = _check_border(border, who)
        self.final_mean = bool(final_mean)
        self.quantize = bool(quantize)
        schedule_values = sigma_schedule(self.num_steps, sigmas, schedule, sigma, sigma_step, rate)
        if schedule_values.min() <= 0:  # a step with sigma 0 is the identity: a "blur" that trains on clean images
            raise ValueError(f"{who}: every step's sigma must be > 0 (a step with sigma 0 does not blur), got "
                             f"{schedule_values.tolist()[:8]}{' ...' if self.num_steps > 8 else ''}")
        self.register_buffer("sigmas", schedule_values.to(torch.float32))

    def check_image_size(self, height: int, width: int) -> None:
        _check_blur_size(height, width, self.border, type(self).__name__)

    def transfer(self, height: int, width: int, device: torch.device) -> tuple[Tensor, Tensor]:
        """Cached :func:`blur_transfer` for this image size and device."""
        return self._cached(
            ("transfer", height, width, str(device)),
            lambda: blur_transfer(self.sigmas.to(device), self.kernel_size, height, width, self.border),
        )

    def degrade(self, x0: Tensor, t: Tensor, params: Params) -> Tensor:
        """The exact ``D(x0, t)`` (never quantised; see :meth:`degrade_input` for the observed form)."""
        rows, cols = self.transfer(x0.shape[-2], x0.shape[-1], x0.device)
        return _apply_blur(x0, t, rows, cols, self.border, self.final_mean, self.num_steps)

    def observe(self, y: Tensor, t: Tensor) -> Tensor:
        """8-bit rounding at levels ``t >= 1`` when ``quantize`` (else the identity)."""
        return observe_8bit(y, t, self.quantize)

    def step_difference(self, x0: Tensor, t: Tensor, t_next: Tensor, params: Params) -> Tensor:
        if self.final_mean:  # the mean end state is not a transfer function
            return super().step_difference(x0, t, t_next, params)
        rows, cols = self.transfer(x0.shape[-2], x0.shape[-1], x0.device)
        return _blur_difference(x0, t, t_next, rows, cols, self.border)

    def extra_repr(self) -> str:
        return (
            f"num_steps={self.num_steps}, kernel_size={self.kernel_size}, border={self.border!r}, "
            f"final_mean={self.final_mean}, quantize={self.quantize}"
        )
